//! `gossip node`: one node as a service. Commands on stdin, one event per line on stdout,
//! logs on stderr, metrics over HTTP; SIGTERM / Ctrl-C drains in-flight messages, then exits.

use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crossbeam_channel::{select, unbounded, Receiver};
use grpc_gossip::broadcast::BroadcastCompletion;
use grpc_gossip::metrics::MetricsServer;
use grpc_gossip::{
    Completion, Delivery, Error, Message, NeighborEvent, Node, PayloadBuf, StreamFactory,
};
use log::{info, warn};
use std::collections::{HashMap, VecDeque};

use crate::settings::{NodeArgs, Settings};

/// `gossip node --help`'s epilogue: the stdin and stdout formats.
pub(crate) const NODE_HELP: &str = "\
Stdin, one command per line (read at once; messages to a peer that is not up yet wait for it):
  PEER some text       send `some text` to neighbour PEER
  PEER @path/to/file   send the file's bytes to PEER
  * some text          broadcast `some text` to the whole cluster (multi-hop); right after
                       start it waits until each --peer has come up once (at most the
                       connect timeout)
  (empty or #...)      nothing
While a peer's share of slots is full, its commands wait in a queue of up to 1024 per peer
(`error peer=.. queue full` beyond); commands to an unknown peer get `error peer=..` at once.

Stdout, one line per event (with --timestamps, each starts with its RFC 3339 UTC time):
  listening id=.. addr=.. tls=on|off   metrics addr=..
  connected peer=.. addr=..
  dialling addr=.. attempt=N retry_in_ms=.. error=\"..\"   (a --peer HOST:PORT not answering yet)
  sent hash=.. peer=..                 completed hash=.. peer=.. outcome=\"..\" attempts=.. elapsed_ms=..
  broadcast hash=.. origin=..          converged hash=.. reached=N missing=ID,ID elapsed_ms=..
  delivered from=.. hash=.. [origin=..] bytes=.. (text=\"..\" | file=PATH)
  neighbor peer=.. state=up|down|reconnecting|removed [reason=..]
  member id=.. addr=.. state=joined|suspected|failed|left incarnation=N   (--join, --membership)
  draining pending=N timeout_ms=..     stopped id=.. pending=N
  error ..

A message received is ACKed only once its `delivered` line is written (with --deliver-dir,
once its file is on disk): at most 64 wait for that at a time.

Every message sent ends in exactly one `completed` (or, for a broadcast, `converged`) line,
with outcome \"acked by PEER\", \"timed out\", or \"failed: <reason>\". Hashes are
ID-BOOT-SEQ, BOOT being the process's start time, so a restarted node never reuses one.

With --deliver-dir DIR, each delivered payload is written to DIR/ORIGIN.HASH (ORIGIN: the
sender, or the node that started a broadcast) through a temporary file that is synced, renamed
and its directory synced; only then is the message ACKed, so a message its sender saw ACKed is
on disk even if this process is killed. A message delivered but not yet ACKed when the process
died is sent again and written again under the same name. Temporary files left by a crash are
removed at start.

Logs go to stderr, one line per event (--log-level, or RUST_LOG=debug for more).
Configuration: --config FILE.toml (see examples/node.toml); flags win over the file.
Memory: the process sets glibc malloc to keep blocks up to 16 MiB on the heap, trim past 32 MiB
and use 2 arenas, unless GLIBC_TUNABLES sets malloc tunables itself.";

/// Set by `--timestamps`: stdout lines start with their time.
static TIMESTAMPS: AtomicBool = AtomicBool::new(false);

/// Prints one stdout line, with its RFC 3339 time first under `--timestamps`.
macro_rules! say {
    ($($arg:tt)*) => {{
        let line = format!($($arg)*);
        if TIMESTAMPS.load(std::sync::atomic::Ordering::Relaxed) {
            println!("{} {line}", humantime::format_rfc3339_millis(SystemTime::now()));
        } else {
            println!("{line}");
        }
    }};
}

/// One line of stdin, parsed.
enum StdinCommand {
    Send { target: String, payload: PayloadBuf },
    Broadcast(PayloadBuf),
}

/// A file's contents, read straight into a payload buffer (sent from there without a copy).
fn read_payload(path: &str) -> std::io::Result<PayloadBuf> {
    use std::io::Read;
    let mut file = std::fs::File::open(path)?;
    let len = usize::try_from(file.metadata()?.len()).unwrap_or(usize::MAX);
    let mut buf = PayloadBuf::with_capacity(len);
    buf.resize(len, 0);
    file.read_exact(&mut buf)?;
    // A file that grew since its size was read: the rest too.
    let mut rest = Vec::new();
    file.read_to_end(&mut rest)?;
    buf.extend_from_slice(&rest);
    Ok(buf)
}

fn parse_line(line: &str) -> Result<Option<StdinCommand>, String> {
    let line = line.trim_end_matches(['\r', '\n']);
    if line.trim().is_empty() || line.starts_with('#') {
        return Ok(None);
    }
    let (target, rest) = line.split_once(' ').unwrap_or((line, ""));
    let payload = match rest.strip_prefix('@') {
        Some(path) => read_payload(path).map_err(|e| format!("{path}: {e}"))?,
        None => PayloadBuf::from(rest.as_bytes()),
    };
    Ok(Some(if target == "*" {
        StdinCommand::Broadcast(payload)
    } else {
        StdinCommand::Send {
            target: target.to_owned(),
            payload,
        }
    }))
}

/// An id or hash as printed: as it is when it holds only plain characters, quoted (with
/// escapes) otherwise, so that an original node's id with spaces cannot split a line's fields.
fn shown(id: &str) -> std::borrow::Cow<'_, str> {
    if grpc_gossip::id::is_plain_id(id) {
        id.into()
    } else {
        format!("{id:?}").into()
    }
}

fn preview(payload: &[u8]) -> String {
    let text = String::from_utf8_lossy(&payload[..payload.len().min(64)]);
    text.replace(['\n', '\r', '\t'], " ")
}

/// A file name for a delivery: `ORIGIN.HASH`, with anything but `[A-Za-z0-9_-]` percent-encoded
/// (so no id or hash can reach outside the directory).
fn delivery_file_name(from: &str, hash: &str) -> String {
    let encode = |s: &str| {
        s.bytes()
            .map(|b| match b {
                b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'_' | b'-' => (b as char).to_string(),
                _ => format!("%{b:02X}"),
            })
            .collect::<String>()
    };
    format!("{}.{}", encode(from), encode(hash))
}

/// Temporary files are `.NAME.tmp`; real deliveries never start with a dot.
const TMP_SUFFIX: &str = ".tmp";

/// Writes `payload` to `dir/name` so that the file appears whole or not at all, and is on disk
/// (as far as `fsync` promises) when this returns: file synced, renamed, directory synced.
fn write_durably(dir: &Path, name: &str, payload: &[u8]) -> std::io::Result<PathBuf> {
    let path = dir.join(name);
    let tmp = dir.join(format!(".{name}{TMP_SUFFIX}"));
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(payload)?;
    f.sync_all()?;
    drop(f);
    std::fs::rename(&tmp, &path)?;
    // The rename is durable only once the directory entry is.
    std::fs::File::open(dir)?.sync_all()?;
    Ok(path)
}

/// Removes the temporary files a killed process left in `dir`; returns how many.
fn remove_stale_temporaries(dir: &Path) -> std::io::Result<usize> {
    let mut removed = 0;
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if name.starts_with('.') && name.ends_with(TMP_SUFFIX) && entry.file_type()?.is_file() {
            std::fs::remove_file(entry.path())?;
            removed += 1;
        }
    }
    Ok(removed)
}

fn print_completion(c: &Completion) {
    say!(
        "completed hash={} peer={} outcome={:?} attempts={} elapsed_ms={:.3}",
        c.key.hash,
        c.key.peer,
        c.outcome.to_string(),
        c.attempts,
        c.elapsed.as_secs_f64() * 1e3
    );
}

fn print_convergence(c: &BroadcastCompletion) {
    let missing: Vec<&str> = c.missing.iter().map(|m| m.as_str()).collect();
    say!(
        "converged hash={} reached={} missing={} elapsed_ms={:.3}",
        c.id.hash,
        c.reached,
        missing.join(","),
        c.elapsed.as_secs_f64() * 1e3
    );
}

fn print_event(e: NeighborEvent) {
    match e {
        NeighborEvent::Up { peer } => say!("neighbor peer={peer} state=up"),
        NeighborEvent::Down { peer, reason } => {
            say!("neighbor peer={peer} state=down reason={reason:?}")
        }
        NeighborEvent::Reconnecting {
            peer,
            attempt,
            retry_in,
            error,
        } => say!(
            "neighbor peer={peer} state=reconnecting attempt={attempt} retry_in_ms={} error={error:?}",
            retry_in.as_millis()
        ),
        NeighborEvent::Removed { peer } => say!("neighbor peer={peer} state=removed"),
    }
}

/// Stdin's lines, read on a thread of their own; the channel closes at end of input.
fn stdin_lines() -> Receiver<String> {
    let (tx, rx) = unbounded::<String>();
    std::thread::spawn(move || {
        for line in std::io::stdin().lock().lines() {
            let Ok(line) = line else { return };
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    rx
}

/// Dials a `--peer HOST:PORT` until whoever listens there answers with its handshake, with
/// backoff; from then on the node keeps the link up as for any neighbour. Stops for good on an
/// answer that can never become a link (the address is this node's) or at shutdown.
fn dial_by_address(node: &Node, addr: &str, backoff: &grpc_gossip::Backoff) {
    let mut rng = fastrand::Rng::new();
    for attempt in 0u32.. {
        match node.connect_to_address(addr) {
            Ok(peer) => return say!("connected peer={peer} addr={addr}"),
            Err(Error::Shutdown) => return,
            Err(e @ Error::InvalidId { .. }) => return say!("error addr={addr} {e}"),
            Err(e) => {
                let wait = backoff.delay(attempt, &mut rng);
                say!(
                    "dialling addr={addr} attempt={} retry_in_ms={} error={:?}",
                    attempt + 1,
                    wait.as_millis(),
                    e.to_string()
                );
                std::thread::sleep(wait);
            }
        }
    }
}

/// Commands that may wait per peer while its slots are busy.
const PEER_COMMAND_QUEUE: usize = 1024;

/// The running service: the node and what it owes.
struct Daemon {
    node: Arc<Node>,
    deliver_dir: Option<PathBuf>,
    /// Distinguishes this process's hashes from those of earlier runs with the same id.
    boot: u128,
    seq: u64,
    /// Messages and broadcasts sent (or queued) whose completion has not been printed yet.
    pending: usize,
    /// Per peer, messages waiting for a free slot, in command order.
    queued: HashMap<String, VecDeque<Message>>,
    /// Configured peers not reached yet: `connected` is printed the first time each comes up.
    unreached: HashMap<String, String>,
    /// Broadcasts given before the configured peers were up, and until when they may wait.
    held_broadcasts: VecDeque<Message>,
    broadcast_grace: Instant,
}

impl Daemon {
    fn next_hash(&mut self) -> String {
        self.seq += 1;
        format!("{}-{}-{}", self.node.id(), self.boot, self.seq)
    }

    fn command(&mut self, line: &str) {
        match parse_line(line) {
            Ok(None) => {}
            Err(e) => say!("error {e}"),
            Ok(Some(StdinCommand::Send { target, payload })) => {
                let hash = self.next_hash();
                let message = self.node.message(hash, payload);
                let queue = self.queued.entry(target.clone()).or_default();
                if !queue.is_empty() {
                    // Behind earlier commands to the same peer, to keep their order.
                    if queue.len() >= PEER_COMMAND_QUEUE {
                        return say!(
                            "error peer={target} queue full ({PEER_COMMAND_QUEUE} commands wait)"
                        );
                    }
                    queue.push_back(message);
                    self.pending += 1;
                    return;
                }
                match self.node.try_send_message(&target, message.clone()) {
                    Ok(key) => {
                        self.pending += 1;
                        say!("sent hash={} peer={}", key.hash, key.peer);
                    }
                    Err(Error::Full { .. } | Error::PeerFull { .. }) => {
                        queue.push_back(message);
                        self.pending += 1;
                    }
                    Err(e) => say!("error peer={target} {e}"),
                }
            }
            Ok(Some(StdinCommand::Broadcast(payload))) => {
                let message = Message::new(self.next_hash(), payload.into_bytes());
                if self.broadcasts_held() || !self.held_broadcasts.is_empty() {
                    if self.held_broadcasts.len() >= PEER_COMMAND_QUEUE {
                        return say!("error broadcast queue full ({PEER_COMMAND_QUEUE} wait)");
                    }
                    self.pending += 1;
                    return self.held_broadcasts.push_back(message);
                }
                self.pending += 1;
                self.start_broadcast(message);
            }
        }
    }

    /// Whether broadcasts still wait for the configured peers: until each has come up once,
    /// or the start-up grace (the connect timeout) has passed, so that a broadcast given right
    /// at start reaches the cluster rather than no one.
    fn broadcasts_held(&self) -> bool {
        !self.unreached.is_empty() && Instant::now() < self.broadcast_grace
    }

    fn start_broadcast(&mut self, message: Message) {
        match self.node.broadcast(message) {
            Ok(id) => say!("broadcast hash={} origin={}", id.hash, id.origin),
            Err(e) => {
                self.pending = self.pending.saturating_sub(1);
                say!("error broadcast {e}")
            }
        }
    }

    /// Hands queued messages to the node while their peers have free slots, and held
    /// broadcasts once the peers are up.
    fn send_queued(&mut self) {
        if !self.broadcasts_held() {
            while let Some(message) = self.held_broadcasts.pop_front() {
                self.start_broadcast(message);
            }
        }
        for (target, queue) in &mut self.queued {
            while let Some(message) = queue.front() {
                match self.node.try_send_message(target, message.clone()) {
                    Ok(key) => say!("sent hash={} peer={}", key.hash, key.peer),
                    Err(Error::Full { .. } | Error::PeerFull { .. }) => break,
                    Err(e) => {
                        self.pending = self.pending.saturating_sub(1);
                        say!("error peer={target} {e}");
                    }
                }
                queue.pop_front();
            }
        }
        self.queued.retain(|_, q| !q.is_empty());
    }

    /// Prints `connected` the first time a configured peer comes up.
    fn event(&mut self, e: NeighborEvent) {
        let mut reached = false;
        if let NeighborEvent::Up { peer } = &e {
            if let Some(addr) = self.unreached.remove(peer.as_str()) {
                say!("connected peer={peer} addr={addr}");
                reached = true;
            }
        }
        print_event(e);
        if reached {
            self.send_queued();
        }
    }

    /// Prints (or writes) a delivery, then confirms it: with --deliver-dir only once its file
    /// is on disk, so that the ACK means the bytes are safe.
    fn deliver(&self, d: Delivery) {
        let origin = d
            .origin
            .as_ref()
            .map(|o| format!(" origin={}", shown(o.as_str())))
            .unwrap_or_default();
        let head = format!(
            "delivered from={} hash={}{origin} bytes={}",
            shown(d.from.as_str()),
            shown(&d.hash),
            d.payload.len()
        );
        match &self.deliver_dir {
            None => {
                say!("{head} text={:?}", preview(&d.payload));
                d.confirm();
            }
            Some(dir) => {
                let origin = d.origin.as_ref().unwrap_or(&d.from);
                let name = delivery_file_name(origin.as_str(), &d.hash);
                match write_durably(dir, &name, &d.payload) {
                    Ok(path) => {
                        d.confirm();
                        say!("{head} file={}", path.display());
                    }
                    Err(e) => {
                        // Not confirmed: the sender is asked to send it again later.
                        log::error!(
                            "delivery {} from {} not written, not ACKed: {e}",
                            d.hash,
                            d.from
                        );
                        say!("{head} error={:?}", e.to_string());
                        d.decline();
                    }
                }
            }
        }
    }
}

/// Runs `gossip node` until stdin is done (with --exit-when-done) or a signal stops it.
pub(crate) fn run(args: NodeArgs) -> Result<ExitCode, Error> {
    let settings = Settings::resolve(args)?;
    crate::init_logging(&settings.log_level);
    TIMESTAMPS.store(settings.timestamps, std::sync::atomic::Ordering::Relaxed);
    if let Some(dir) = &settings.deliver_dir {
        match remove_stale_temporaries(dir) {
            Ok(0) => {}
            Ok(n) => info!("removed {n} temporary files left in {}", dir.display()),
            Err(e) => warn!("could not clean {}: {e}", dir.display()),
        }
    }
    let tls = settings.transport.tls.is_some();
    let node = Arc::new(
        Node::builder(settings.node.clone())
            .factory(StreamFactory::new(settings.transport.clone()))
            .start()?,
    );
    say!(
        "listening id={} addr={} tls={}",
        node.id(),
        node.local_addr(),
        if tls { "on" } else { "off" }
    );
    let _metrics = match &settings.metrics_addr {
        Some(addr) => {
            let server = MetricsServer::for_node(addr, node.clone())?;
            say!("metrics addr={}", server.local_addr());
            Some(server)
        }
        None => None,
    };

    let (signal_tx, signals) = unbounded::<()>();
    ctrlc::set_handler(move || {
        let _ = signal_tx.send(());
    })
    .map_err(|e| Error::Io(std::io::Error::other(e)))?;
    // The node connects in the background and keeps retrying; commands need not wait.
    for peer in &settings.peers {
        node.add_neighbor(peer.clone())?;
    }
    for addr in &settings.peers_by_address {
        let (node, addr, backoff) = (node.clone(), addr.clone(), settings.node.reconnect.clone());
        std::thread::Builder::new()
            .name(format!("gossip-dial-{addr}"))
            .spawn(move || dial_by_address(&node, &addr, &backoff))
            .map_err(Error::Io)?;
    }
    let lines = stdin_lines();

    let boot = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis())
        .unwrap_or(0);
    let mut daemon = Daemon {
        node: node.clone(),
        deliver_dir: settings.deliver_dir.clone(),
        boot,
        seq: 0,
        pending: 0,
        queued: HashMap::new(),
        unreached: (settings.peers.iter())
            .map(|p| (p.node_hash.clone(), p.endpoint.clone()))
            .collect(),
        held_broadcasts: VecDeque::new(),
        broadcast_grace: Instant::now() + settings.node.connect_timeout,
    };
    let completions = node.completions();
    let broadcasts = node.broadcast_completions();
    let deliveries = node.deliveries();
    let events = node.events();
    let member_events = node.member_events();
    let ticker = crossbeam_channel::tick(Duration::from_millis(100));
    let never = crossbeam_channel::never::<String>();
    let started = Instant::now();
    let mut stdin_open = true;
    // Set by the first signal: stop taking commands, finish what is in flight by then.
    let mut drain_until: Option<Instant> = None;
    loop {
        let done = drain_until.is_some() || (settings.exit_when_done && !stdin_open);
        if done && daemon.pending == 0 {
            break;
        }
        if drain_until.is_some_and(|t| Instant::now() >= t) {
            warn!(
                "drain deadline passed with {} messages in flight; they complete as failed",
                daemon.pending
            );
            break;
        }
        // Commands stop with a drain.
        let input = if drain_until.is_none() && stdin_open {
            &lines
        } else {
            &never
        };
        select! {
            recv(signals) -> _ => {
                if drain_until.is_some() {
                    warn!("second signal: stopping now");
                    break;
                }
                drain_until = Some(Instant::now() + settings.drain_timeout);
                say!(
                    "draining pending={} timeout_ms={}",
                    daemon.pending,
                    settings.drain_timeout.as_millis()
                );
                info!("draining {} in-flight messages (up to {:?})", daemon.pending, settings.drain_timeout);
            },
            recv(ticker) -> _ => daemon.send_queued(),
            recv(input) -> line => match line {
                Ok(line) => daemon.command(&line),
                Err(_) => stdin_open = false,
            },
            recv(broadcasts) -> c => if let Ok(c) = c {
                daemon.pending = daemon.pending.saturating_sub(1);
                print_convergence(&c);
            },
            recv(completions) -> c => if let Ok(c) = c {
                daemon.pending = daemon.pending.saturating_sub(1);
                print_completion(&c);
                daemon.send_queued();
            },
            recv(events) -> e => if let Ok(e) = e { daemon.event(e) },
            recv(member_events) -> m => if let Ok(m) = m {
                say!(
                    "member id={} addr={} state={} incarnation={}",
                    shown(m.id.as_str()),
                    m.addr,
                    m.state.name(),
                    m.incarnation
                );
            },
            recv(deliveries) -> d => if let Ok(d) = d { daemon.deliver(d) },
        }
    }
    info!("stopping after {:?}", started.elapsed());
    node.shutdown();
    // Commands still queued were never sent.
    for message in std::mem::take(&mut daemon.held_broadcasts) {
        daemon.pending = daemon.pending.saturating_sub(1);
        say!(
            "error broadcast hash={} not sent: node stopped",
            message.hash
        );
    }
    for (target, queue) in std::mem::take(&mut daemon.queued) {
        for message in queue {
            daemon.pending = daemon.pending.saturating_sub(1);
            say!(
                "error peer={target} hash={} not sent: node stopped",
                message.hash
            );
        }
    }
    // What the shutdown itself completed (messages still in flight fail, saying why).
    for c in completions.try_iter() {
        daemon.pending = daemon.pending.saturating_sub(1);
        print_completion(&c);
    }
    for c in broadcasts.try_iter() {
        daemon.pending = daemon.pending.saturating_sub(1);
        print_convergence(&c);
    }
    for d in deliveries.try_iter() {
        daemon.deliver(d);
    }
    say!("stopped id={} pending={}", node.id(), daemon.pending);
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delivery_file_names_stay_in_their_directory() {
        assert_eq!(delivery_file_name("n1", "n2-5-1"), "n1.n2-5-1");
        assert_eq!(
            delivery_file_name("a", "../../etc/x"),
            "a.%2E%2E%2F%2E%2E%2Fetc%2Fx"
        );
        assert!(!delivery_file_name("/", ".").contains('/'));
    }

    #[test]
    fn files_appear_whole() {
        let dir = std::env::temp_dir().join(format!("gossip-deliver-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = write_durably(&dir, "a.b", b"payload").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"payload");
        let names = |dir: &Path| {
            let mut names: Vec<_> = std::fs::read_dir(dir)
                .unwrap()
                .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect();
            names.sort();
            names
        };
        assert_eq!(names(&dir), ["a.b"]);
        // What a process killed mid-write leaves behind is removed; deliveries stay.
        std::fs::write(dir.join(".a.c.tmp"), b"half").unwrap();
        std::fs::write(dir.join("notes.tmp"), b"not ours").unwrap();
        assert_eq!(remove_stale_temporaries(&dir).unwrap(), 1);
        assert_eq!(names(&dir), ["a.b", "notes.tmp"]);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn stdin_commands_parse() {
        assert!(parse_line("").unwrap().is_none());
        assert!(parse_line("# note").unwrap().is_none());
        match parse_line("b hello there").unwrap() {
            Some(StdinCommand::Send { target, payload }) => {
                assert_eq!((target.as_str(), &payload[..]), ("b", &b"hello there"[..]))
            }
            _ => panic!("a send"),
        }
        assert!(matches!(
            parse_line("* all").unwrap(),
            Some(StdinCommand::Broadcast(p)) if &p[..] == b"all"
        ));
        assert!(parse_line("b @/nonexistent/file").is_err());
    }
}
