//! `gossip node`: one node as a service. Commands on stdin, one event per line on stdout,
//! logs on stderr, metrics over HTTP; SIGTERM / Ctrl-C drains in-flight messages, then exits.

use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use crossbeam_channel::{select, unbounded, Receiver, RecvTimeoutError};
use grpc_gossip::broadcast::BroadcastCompletion;
use grpc_gossip::metrics::MetricsServer;
use grpc_gossip::{
    Completion, Delivery, Error, Message, NeighborEvent, NeighborInfo, Node, StreamFactory,
};
use log::{info, warn};

use crate::settings::{NodeArgs, Settings};

/// `gossip node --help`'s epilogue: the stdin and stdout formats.
pub const NODE_HELP: &str = "\
Stdin, one command per line (read once every peer is connected):
  PEER some text       send `some text` to neighbour PEER
  PEER @path/to/file   send the file's bytes to PEER
  * some text          broadcast `some text` to the whole cluster (multi-hop)
  (empty or #...)      nothing

Stdout, one line per event:
  listening id=.. addr=.. tls=on|off   metrics addr=..
  connected peer=.. addr=..
  sent hash=.. peer=..                 completed hash=.. peer=.. outcome=\"..\" attempts=.. elapsed_ms=..
  broadcast hash=.. origin=..          converged hash=.. reached=N missing=ID,ID elapsed_ms=..
  delivered from=.. hash=.. [origin=..] bytes=.. (text=\"..\" | file=PATH)
  neighbor peer=.. state=up|down|reconnecting|removed [reason=..]
  draining pending=N timeout_ms=..     stopped id=.. pending=N
  error ..

Every message sent ends in exactly one `completed` (or, for a broadcast, `converged`) line,
with outcome \"acked by PEER\", \"timed out\", or \"failed: <reason>\". Hashes are
ID-BOOT-SEQ, BOOT being the process's start time, so a restarted node never reuses one.

With --deliver-dir DIR, each delivered payload is written to DIR/FROM.HASH (through a temporary
file and a rename, so a reader never sees half a file).

Logs go to stderr, one line per event (--log-level, or RUST_LOG=debug for more).
Configuration: --config FILE.toml (see examples/node.toml); flags win over the file.
Memory: the process sets glibc malloc to keep blocks up to 16 MiB on the heap, trim past 32 MiB
and use 2 arenas, unless GLIBC_TUNABLES sets malloc tunables itself.";

/// One line of stdin, parsed.
enum StdinCommand {
    Send { target: String, payload: Bytes },
    Broadcast(Bytes),
}

fn parse_line(line: &str) -> Result<Option<StdinCommand>, String> {
    let line = line.trim_end_matches(['\r', '\n']);
    if line.trim().is_empty() || line.starts_with('#') {
        return Ok(None);
    }
    let (target, rest) = line.split_once(' ').unwrap_or((line, ""));
    let payload = match rest.strip_prefix('@') {
        Some(path) => Bytes::from(std::fs::read(path).map_err(|e| format!("{path}: {e}"))?),
        None => Bytes::copy_from_slice(rest.as_bytes()),
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

fn preview(payload: &[u8]) -> String {
    let text = String::from_utf8_lossy(&payload[..payload.len().min(64)]);
    text.replace(['\n', '\r', '\t'], " ")
}

/// A file name for a delivery: `FROM.HASH`, with anything but `[A-Za-z0-9_-]` percent-encoded
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

/// Writes `payload` to `dir/name` so that the file appears whole or not at all.
fn write_atomically(dir: &Path, name: &str, payload: &[u8]) -> std::io::Result<PathBuf> {
    let path = dir.join(name);
    let tmp = dir.join(format!(".{name}.tmp"));
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(payload)?;
    f.sync_all()?;
    std::fs::rename(&tmp, &path)?;
    Ok(path)
}

fn print_completion(c: &Completion) {
    println!(
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
    println!(
        "converged hash={} reached={} missing={} elapsed_ms={:.3}",
        c.id.hash,
        c.reached,
        missing.join(","),
        c.elapsed.as_secs_f64() * 1e3
    );
}

fn print_event(e: NeighborEvent) {
    match e {
        NeighborEvent::Up { peer } => println!("neighbor peer={peer} state=up"),
        NeighborEvent::Down { peer, reason } => {
            println!("neighbor peer={peer} state=down reason={reason:?}")
        }
        NeighborEvent::Reconnecting {
            peer,
            attempt,
            retry_in,
            error,
        } => println!(
            "neighbor peer={peer} state=reconnecting attempt={attempt} retry_in_ms={} error={error:?}",
            retry_in.as_millis()
        ),
        NeighborEvent::Removed { peer } => println!("neighbor peer={peer} state=removed"),
    }
}

/// Connects to each peer in the background, retrying with backoff until it is up (after that
/// the node keeps the link up itself). Each success is reported on the returned channel.
fn connect_all(
    node: &Arc<Node>,
    peers: &[(String, String)],
    quit: &Receiver<()>,
) -> (Receiver<()>, Vec<std::thread::JoinHandle<()>>) {
    let (connected_tx, connected_rx) = unbounded::<()>();
    let connectors = peers
        .iter()
        .cloned()
        .map(|(id, addr)| {
            let (node, quit, connected) = (node.clone(), quit.clone(), connected_tx.clone());
            std::thread::spawn(move || {
                let mut backoff = Duration::from_millis(200);
                loop {
                    match node.connect_to_neighbor(NeighborInfo::new(id.clone(), addr.clone())) {
                        Ok(()) => {
                            println!("connected peer={id} addr={addr}");
                            let _ = connected.send(());
                            return;
                        }
                        Err(Error::Shutdown) => return,
                        Err(e) => warn!("connect to {id} at {addr}: {e}; retrying in {backoff:?}"),
                    }
                    if quit.recv_timeout(backoff) != Err(RecvTimeoutError::Timeout) {
                        return;
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
            })
        })
        .collect();
    (connected_rx, connectors)
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

/// The running service: the node and what it owes.
struct Daemon {
    node: Arc<Node>,
    deliver_dir: Option<PathBuf>,
    /// Distinguishes this process's hashes from those of earlier runs with the same id.
    boot: u128,
    seq: u64,
    /// Messages and broadcasts sent whose completion has not been printed yet.
    pending: usize,
}

impl Daemon {
    fn next_hash(&mut self) -> String {
        self.seq += 1;
        format!("{}-{}-{}", self.node.id(), self.boot, self.seq)
    }

    fn command(&mut self, line: &str) {
        match parse_line(line) {
            Ok(None) => {}
            Err(e) => println!("error {e}"),
            Ok(Some(StdinCommand::Send { target, payload })) => {
                let hash = self.next_hash();
                match self.node.send_message(&target, Message::new(hash, payload)) {
                    Ok(key) => {
                        self.pending += 1;
                        println!("sent hash={} peer={}", key.hash, key.peer);
                    }
                    Err(e) => println!("error peer={target} {e}"),
                }
            }
            Ok(Some(StdinCommand::Broadcast(payload))) => {
                let hash = self.next_hash();
                match self.node.broadcast(Message::new(hash, payload)) {
                    Ok(id) => {
                        self.pending += 1;
                        println!("broadcast hash={} origin={}", id.hash, id.origin);
                    }
                    Err(e) => println!("error broadcast {e}"),
                }
            }
        }
    }

    fn deliver(&self, d: Delivery) {
        let origin = d
            .origin
            .as_ref()
            .map(|o| format!(" origin={o}"))
            .unwrap_or_default();
        let head = format!(
            "delivered from={} hash={}{origin} bytes={}",
            d.from,
            d.hash,
            d.payload.len()
        );
        match &self.deliver_dir {
            None => println!("{head} text={:?}", preview(&d.payload)),
            Some(dir) => {
                let name = delivery_file_name(d.from.as_str(), &d.hash);
                match write_atomically(dir, &name, &d.payload) {
                    Ok(path) => println!("{head} file={}", path.display()),
                    Err(e) => {
                        // The message is ACKed already; say loudly that its bytes are lost.
                        log::error!("delivery {} from {} not written: {e}", d.hash, d.from);
                        println!("{head} error={:?}", e.to_string());
                    }
                }
            }
        }
    }
}

/// Runs `gossip node` until stdin is done (with --exit-when-done) or a signal stops it.
pub fn run(args: NodeArgs) -> Result<ExitCode, Error> {
    let settings = Settings::resolve(args)?;
    crate::init_logging(&settings.log_level);
    let tls = settings.transport.tls.is_some();
    let node = Arc::new(
        Node::builder(settings.node.clone())
            .factory(StreamFactory::new(settings.transport.clone()))
            .start()?,
    );
    println!(
        "listening id={} addr={} tls={}",
        node.id(),
        node.local_addr(),
        if tls { "on" } else { "off" }
    );
    let _metrics = match &settings.metrics_addr {
        Some(addr) => {
            let server = MetricsServer::for_node(addr, node.clone())?;
            println!("metrics addr={}", server.local_addr());
            Some(server)
        }
        None => None,
    };

    let (signal_tx, signals) = unbounded::<()>();
    ctrlc::set_handler(move || {
        let _ = signal_tx.send(());
    })
    .map_err(|e| Error::Io(std::io::Error::other(e)))?;
    // Dropped on exit: wakes the connector threads.
    let (quit_tx, quit_rx) = crossbeam_channel::bounded::<()>(0);
    let (connected, connectors) = connect_all(&node, &settings.peers, &quit_rx);
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
    };
    let completions = node.completions();
    let broadcasts = node.broadcast_completions();
    let deliveries = node.deliveries();
    let events = node.events();
    let ticker = crossbeam_channel::tick(Duration::from_millis(100));
    let never = crossbeam_channel::never::<String>();
    let started = Instant::now();
    let mut stdin_open = true;
    let mut unconnected = settings.peers.len();
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
        // Commands wait until every peer is connected (so the first lines do not fail), and
        // stop with a drain.
        let input = if unconnected == 0 && drain_until.is_none() && stdin_open {
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
                println!(
                    "draining pending={} timeout_ms={}",
                    daemon.pending,
                    settings.drain_timeout.as_millis()
                );
                info!("draining {} in-flight messages (up to {:?})", daemon.pending, settings.drain_timeout);
            },
            recv(ticker) -> _ => {},
            recv(connected) -> _ => unconnected = unconnected.saturating_sub(1),
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
            },
            recv(events) -> e => if let Ok(e) = e { print_event(e) },
            recv(deliveries) -> d => if let Ok(d) = d { daemon.deliver(d) },
        }
    }
    info!("stopping after {:?}", started.elapsed());
    drop(quit_tx);
    node.shutdown();
    for c in connectors {
        let _ = c.join();
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
    println!("stopped id={} pending={}", node.id(), daemon.pending);
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
        let path = write_atomically(&dir, "a.b", b"payload").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"payload");
        let names: Vec<_> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("a.b")]);
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
