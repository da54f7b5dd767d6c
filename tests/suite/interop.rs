//! Original Go nodes (`../shared/seed-go`, run by our driver in `tests/interop/driver`) and
//! `gossip node` processes in one cluster, over loopback.
//!
//! Needs the driver built by `tests/interop/build.sh`, named by `GOSSIP_GO_DRIVER`;
//! `bash tests/interop/run.sh` builds it and runs this suite (CI does). Without it each test
//! prints why and passes without checking anything.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc::{channel, Receiver};
use std::time::{Duration, Instant};

const GOSSIP: &str = env!("CARGO_BIN_EXE_gossip");
const PATIENCE: Duration = Duration::from_secs(60);

/// The driver, or `None` (with the reason printed) when it was not built.
fn driver() -> Option<PathBuf> {
    match std::env::var_os("GOSSIP_GO_DRIVER") {
        Some(path) => Some(PathBuf::from(path)),
        None => {
            eprintln!("skipped: GOSSIP_GO_DRIVER is not set; run `bash tests/interop/run.sh`");
            None
        }
    }
}

/// A child process driven through stdin, its stdout read line by line. Killed when dropped.
struct Proc {
    child: Child,
    stdin: ChildStdin,
    lines: Receiver<String>,
    /// Every line read so far.
    seen: Vec<String>,
}

impl Proc {
    fn start(mut command: Command, stderr: &Path) -> Proc {
        let mut child = command
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(stderr).unwrap())
            .spawn()
            .expect("start");
        let stdin = child.stdin.take().unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, lines) = channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Proc {
            child,
            stdin,
            lines,
            seen: Vec::new(),
        }
    }

    fn say(&mut self, line: &str) {
        writeln!(self.stdin, "{line}").unwrap();
        self.stdin.flush().unwrap();
    }

    /// Reads lines until one satisfies `pred`; returns it.
    fn wait_for(&mut self, what: &str, pred: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + PATIENCE;
        if let Some(l) = self.seen.iter().find(|l| pred(l)) {
            return l.clone();
        }
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    self.seen.push(line.clone());
                    if pred(&line) {
                        return line;
                    }
                }
                Err(_) => panic!(
                    "no {what} within {PATIENCE:?}; seen:\n{}",
                    self.seen.join("\n")
                ),
            }
        }
    }

    /// Reads lines until `n` of the lines seen satisfy `pred`.
    fn wait_count(&mut self, what: &str, n: usize, pred: impl Fn(&str) -> bool) {
        let deadline = Instant::now() + PATIENCE;
        while self.seen.iter().filter(|l| pred(l)).count() < n {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => self.seen.push(line),
                Err(_) => {
                    let got = self.seen.iter().filter(|l| pred(l)).count();
                    panic!("{got} of {n} {what} within {PATIENCE:?}");
                }
            }
        }
    }

    /// Reads what comes within `d`.
    fn drain_for(&mut self, d: Duration) {
        let deadline = Instant::now() + d;
        while let Some(left) = deadline.checked_duration_since(Instant::now()) {
            match self.lines.recv_timeout(left) {
                Ok(line) => self.seen.push(line),
                Err(_) => break,
            }
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The driver's payload for `hash`: byte i is `hash[i % len] ^ i`.
fn go_payload(hash: &str, size: usize) -> Vec<u8> {
    let h = hash.as_bytes();
    (0..size).map(|i| h[i % h.len()] ^ (i as u8)).collect()
}

/// 64-bit FNV-1a, as the driver reports received payloads.
fn fnv1a(bytes: &[u8]) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    format!("{h:016x}")
}

/// The value of `key=` in a `gossip node` output line.
fn field<'a>(line: &'a str, key: &str) -> &'a str {
    let start = line
        .find(&format!("{key}="))
        .unwrap_or_else(|| panic!("no {key} in {line}"))
        + key.len()
        + 1;
    let rest = &line[start..];
    match rest.strip_prefix('"') {
        Some(quoted) => &quoted[..quoted.find('"').unwrap()],
        None => rest.split(' ').next().unwrap(),
    }
}

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("gossip-interop-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// An original node called `id`; returns it and its address.
fn start_go(driver: &Path, dir: &Path, id: &str) -> (Proc, String) {
    start_go_with(driver, dir, id, &[])
}

/// An original node called `id` with the driver's `args`; returns it and its address.
fn start_go_with(driver: &Path, dir: &Path, id: &str, args: &[&str]) -> (Proc, String) {
    let mut c = Command::new(driver);
    // The original's logger writes a file named after the node in its working directory.
    c.args(["-id", id, "-listen", "127.0.0.1:0"])
        .args(args)
        .current_dir(dir);
    let mut go = Proc::start(c, &dir.join(format!("{id}.log")));
    let line = go.wait_for("listening", |l| l.starts_with("listening "));
    let addr = line["listening ".len()..].to_owned();
    (go, addr)
}

/// A `gossip node` called `id` with `args`; returns it and its address.
fn start_ours(dir: &Path, id: &str, args: &[&str]) -> (Proc, String) {
    let mut c = Command::new(GOSSIP);
    c.args(["node", "--id", id, "--listen", "127.0.0.1:0"])
        .args(args);
    let mut node = Proc::start(c, &dir.join(format!("{id}.log")));
    let line = node.wait_for("listening", |l| l.starts_with("listening "));
    let addr = field(&line, "addr").to_owned();
    (node, addr)
}

/// An original node "go" and a `gossip node` "r" (with `args`), linked both ways.
fn original_and_ours(driver: &Path, dir: &Path, args: &[&str]) -> (Proc, Proc) {
    let (mut go, go_addr) = start_go(driver, dir, "go");
    let peer = format!("go={go_addr}");
    let args: Vec<&str> = ["--peer", peer.as_str()]
        .into_iter()
        .chain(args.iter().copied())
        .collect();
    let (mut r, r_addr) = start_ours(dir, "r", &args);
    r.wait_for("link", |l| l == "neighbor peer=go state=up");
    go.say(&format!("connect r {r_addr}"));
    go.wait_for("connected", |l| l == "connected r");
    (go, r)
}

/// Messages both ways: every one delivered once with its bytes, every one ACKed once.
fn exchange(r: &mut Proc, go: &mut Proc, inbox: &Path, round: &str, n: usize) {
    let sent_before = r.seen.iter().filter(|l| l.starts_with("sent ")).count();
    for i in 0..n {
        r.say(&format!("go {round}-r{i}"));
        go.say(&format!("send r {round}-g{i} 1000"));
    }
    // Ours to the original: each ACKed once, each received once with its bytes.
    let acked = |l: &str| l.starts_with("completed ") && l.contains("outcome=\"acked by go\"");
    r.wait_count("ACKs from the original", sent_before + n, acked);
    let sent: Vec<(String, String)> = r
        .seen
        .iter()
        .filter(|l| l.starts_with("sent "))
        .skip(sent_before)
        .map(|l| field(l, "hash").to_owned())
        .zip((0..n).map(|i| format!("{round}-r{i}")))
        .collect();
    assert_eq!(sent.len(), n);
    let hashes: Vec<String> = sent
        .iter()
        .map(|(h, _)| format!("received r {h} "))
        .collect();
    go.wait_count("messages at the original", n, |l| {
        hashes.iter().any(|h| l.starts_with(h.as_str()))
    });
    for (hash, text) in &sent {
        let got: Vec<&String> = go
            .seen
            .iter()
            .filter(|l| l.starts_with(&format!("received r {hash} ")))
            .collect();
        assert_eq!(got.len(), 1, "{hash} received {} times", got.len());
        let expected = format!(
            "received r {hash} {} {}",
            text.len(),
            fnv1a(text.as_bytes())
        );
        assert_eq!(got[0], &expected);
    }
    // The original's to ours: each delivered (written) with its bytes, each ACKed once at the
    // original (its CompleteChan).
    go.wait_count("ACKs at the original", n, |l| {
        l.starts_with(&format!("acked {round}-g"))
    });
    for i in 0..n {
        let hash = format!("{round}-g{i}");
        let acks = go
            .seen
            .iter()
            .filter(|l| **l == format!("acked {hash}"))
            .count();
        assert_eq!(acks, 1, "{hash} ACKed {acks} times at the original");
        let bytes = std::fs::read(inbox.join(format!("go.{hash}"))).unwrap();
        assert_eq!(bytes, go_payload(&hash, 1000), "{hash}");
    }
}

#[test]
fn both_ways_through_an_idle_minute() {
    let Some(driver) = driver() else { return };
    let dir = temp_dir("idle");
    let inbox = dir.join("inbox");
    let (mut go, mut r) =
        original_and_ours(&driver, &dir, &["--deliver-dir", inbox.to_str().unwrap()]);

    exchange(&mut r, &mut go, &inbox, "a", 50);
    // A quiet minute: the links to and from the original stay up (no ping storm, no idle
    // deadline on its streams).
    r.drain_for(Duration::from_secs(60));
    exchange(&mut r, &mut go, &inbox, "b", 10);

    let downs: Vec<&String> = r
        .seen
        .iter()
        .filter(|l| l.starts_with("neighbor peer=go state=down"))
        .collect();
    // At most the one replacement of the first link, dialled before the peer was known to
    // be an original, by one with a keepalive it accepts.
    assert!(downs.len() <= 1, "{downs:?}");
    for d in downs {
        assert!(d.contains("an original node"), "{d}");
    }
    let log = std::fs::read_to_string(dir.join("r.log")).unwrap();
    assert!(!log.contains("too_many_pings"), "{log}");
    let go_log = std::fs::read_to_string(dir.join("go.log")).unwrap();
    assert!(
        !go_log.contains("Stream closed, stopping AckWriter"),
        "{go_log}"
    );
    drop((r, go));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_message_over_an_originals_limit_fails_once_and_the_rest_go_on() {
    let Some(driver) = driver() else { return };
    let dir = temp_dir("limit");
    let inbox = dir.join("inbox");
    let (mut go, mut r) =
        original_and_ours(&driver, &dir, &["--deliver-dir", inbox.to_str().unwrap()]);

    // grpc-go takes at most 4 MiB per gRPC message, counted encoded: a payload of 4 MiB is
    // already over it, one of 4 MiB less 100 bytes is not.
    let sizes = [
        ("over", 5 << 20),
        ("exact", 4 << 20),
        ("under", (4 << 20) - 100),
    ];
    let sent = files_to_go(&mut r, &dir, &sizes, b'x');
    assert_eq!(sent.too_large.len(), 2, "{:#?}", sent.completed);
    for l in &sent.too_large {
        assert!(field(l, "attempts") == "0", "never sent: {l}");
    }
    assert_eq!(sent.acked, 4, "{:#?}", sent.completed);
    // No storm: the link went down only to be dialled with the original's keepalive, and
    // the original refused nothing.
    r.drain_for(Duration::from_secs(1));
    assert!(
        !r.seen
            .iter()
            .any(|l| l.contains("state=down") && !l.contains("an original node")),
        "{:#?}",
        r.seen
    );
    let go_log = std::fs::read_to_string(dir.join("go.log")).unwrap();
    assert!(!go_log.contains("ResourceExhausted"), "{go_log}");

    // The other way, 4.5 MiB from the original: we take it (our limit is 64 MiB).
    go.say("send r big-from-go 4718592");
    go.wait_for("ACK at the original", |l| l == "acked big-from-go");
    let bytes = std::fs::read(inbox.join("go.big-from-go")).unwrap();
    assert_eq!(bytes, go_payload("big-from-go", 4_718_592));
    drop((r, go));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn acks_to_an_original_wait_for_our_link_to_it_and_all_arrive() {
    let Some(driver) = driver() else { return };
    let dir = temp_dir("acks");
    let inbox = dir.join("inbox");
    // The original will listen here; our node's first attempts find nothing, and it retries
    // every 3 s.
    let port = free_port();
    let config = dir.join("r.toml");
    std::fs::write(
        &config,
        format!(
            "[[peers]]\nid = \"go\"\nendpoint = \"127.0.0.1:{port}\"\n[connection]\n\
             reconnect_initial = \"3s\"\nreconnect_max = \"3s\"\n"
        ),
    )
    .unwrap();
    let config = config.to_str().unwrap().to_owned();
    let (mut r, r_addr) = start_ours(
        &dir,
        "r",
        &[
            "--config",
            &config,
            "--deliver-dir",
            inbox.to_str().unwrap(),
        ],
    );
    let mut c = Command::new(&driver);
    c.args(["-id", "go", "-listen", &format!("127.0.0.1:{port}")])
        .current_dir(&dir);
    let mut go = Proc::start(c, &dir.join("go.log"));
    go.wait_for("listening", |l| l.starts_with("listening "));
    // The original dials us and sends at once, before our link to it is up: its ACKs must
    // not go to its own AckStream, which it never reads.
    go.say(&format!("connect r {r_addr}"));
    for i in 0..10 {
        go.say(&format!("send r early-{i} 100"));
    }
    go.wait_count("ACKs at the original", 10, |l| {
        l.starts_with("acked early-")
    });
    for i in 0..10 {
        let acks = go
            .seen
            .iter()
            .filter(|l| **l == format!("acked early-{i}"))
            .count();
        assert_eq!(acks, 1, "early-{i} ACKed {acks} times");
        assert!(inbox.join(format!("go.early-{i}")).exists());
    }
    r.wait_for("link", |l| l == "neighbor peer=go state=up");
    drop((r, go));
    let _ = std::fs::remove_dir_all(&dir);
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Broadcasts from `a` and returns its `converged` line.
fn broadcast_from(a: &mut Proc, text: &str) -> String {
    let started = |l: &str| l.starts_with("broadcast hash=");
    let before = a.seen.iter().filter(|l| started(l)).count();
    a.say(&format!("* {text}"));
    a.wait_count("broadcast", before + 1, started);
    let line = a.seen.iter().filter(|l| started(l)).nth(before).cloned();
    let hash = field(&line.unwrap(), "hash").to_owned();
    a.wait_for("convergence", |l| {
        l.starts_with(&format!("converged hash={hash} "))
    })
}

#[test]
fn broadcasts_in_mixed_clusters_count_each_node_once() {
    let Some(driver) = driver() else { return };
    let dir = temp_dir("mixed");
    let (mut go, go_addr) = start_go(&driver, &dir, "go");
    let (pa, pb) = (free_port(), free_port());
    let (addr_a, addr_b) = (format!("127.0.0.1:{pa}"), format!("127.0.0.1:{pb}"));
    let start = |id: &str, listen: &str, peers: &[String]| {
        let mut c = Command::new(GOSSIP);
        c.args(["node", "--id", id, "--listen", listen]);
        for p in peers {
            c.args(["--peer", p]);
        }
        let mut node = Proc::start(c, &dir.join(format!("{id}.log")));
        node.wait_for("listening", |l| l.starts_with("listening "));
        node
    };
    // A triangle: a and b are ours, both linked to the original, which links back to both.
    let mut a = start(
        "a",
        &addr_a,
        &[format!("b={addr_b}"), format!("go={go_addr}")],
    );
    let mut b = start(
        "b",
        &addr_b,
        &[format!("a={addr_a}"), format!("go={go_addr}")],
    );
    for n in [&mut a, &mut b] {
        n.wait_count("links", 2, |l| l.ends_with("state=up"));
    }
    for (id, addr) in [("a", &addr_a), ("b", &addr_b)] {
        go.say(&format!("connect {id} {addr}"));
        go.wait_for("connected", |l| l == format!("connected {id}"));
    }
    // Past the wait for the original's handshake, which never comes.
    std::thread::sleep(Duration::from_secs(3));
    let converged = broadcast_from(&mut a, "to-the-triangle");
    assert_eq!(
        field(&converged, "reached"),
        "2",
        "b and go once: {converged}"
    );
    assert_eq!(field(&converged, "missing"), "", "{converged}");
    let hash = field(
        a.seen
            .iter()
            .find(|l| l.starts_with("broadcast hash="))
            .unwrap(),
        "hash",
    )
    .to_owned();
    // The original got a copy from each of ours (it never forwards), and ACKed both.
    go.wait_count("copies at the original", 2, |l| {
        l.starts_with("received ") && l.contains(&format!(" {hash} "))
    });
    b.wait_for("delivery at b", |l| {
        l.starts_with("delivered ") && l.contains("origin=a")
    });
    drop((a, b));

    // A line: c - d - go. The original is reached through d only.
    let (pc, pd) = (free_port(), free_port());
    let (addr_c, addr_d) = (format!("127.0.0.1:{pc}"), format!("127.0.0.1:{pd}"));
    let mut c = start("c", &addr_c, &[format!("d={addr_d}")]);
    let mut d = start(
        "d",
        &addr_d,
        &[format!("c={addr_c}"), format!("go={go_addr}")],
    );
    c.wait_for("link", |l| l == "neighbor peer=d state=up");
    d.wait_count("links", 2, |l| l.ends_with("state=up"));
    go.say(&format!("connect d {addr_d}"));
    go.wait_for("connected", |l| l == "connected d");
    std::thread::sleep(Duration::from_secs(3));
    let converged = broadcast_from(&mut c, "down-the-line");
    assert_eq!(field(&converged, "reached"), "2", "d and go: {converged}");
    assert_eq!(field(&converged, "missing"), "", "{converged}");
    drop((c, d, go));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_message_we_refuse_from_an_original_is_not_acked_as_if_delivered() {
    let Some(driver) = driver() else { return };
    let dir = temp_dir("refusal");
    let (mut go, r) = original_and_ours(&driver, &dir, &["--max-payload", "1048576"]);
    // Over our payload limit, within gRPC's: refused by the node, not by gRPC.
    go.say("send r over 1048676");
    go.say("send r fine 1000");
    go.wait_for("ACK at the original", |l| l == "acked fine");
    go.drain_for(Duration::from_secs(1));
    assert!(!go.seen.iter().any(|l| l == "acked over"), "{:#?}", go.seen);
    let log = std::fs::read_to_string(dir.join("r.log")).unwrap();
    assert!(log.contains("refusal of \"over\" not sent to go"), "{log}");
    // Far over it: gRPC refuses the frame itself (RESOURCE_EXHAUSTED to the original) and
    // cancels the call; the frame never reaches the node, but the lost stream is logged.
    go.say("send r huge 2097152");
    let line = wait_for_log(&dir.join("r.log"), "InboundOriginalMessages from go at");
    assert!(
        line.contains("over this node's gRPC receive limit (1049664 bytes encoded"),
        "{line}"
    );
    go.drain_for(Duration::from_secs(1));
    assert!(!go.seen.iter().any(|l| l == "acked huge"), "{:#?}", go.seen);
    drop((r, go));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn an_original_configured_for_larger_messages_gets_them_when_its_entry_says_so() {
    let Some(driver) = driver() else { return };
    let dir = temp_dir("peer-limit");
    let inbox = dir.join("inbox");
    // An original whose operator raised grpc-go's receive limit to 8 MiB...
    let (mut go, go_addr) = start_go_with(&driver, &dir, "go", &["-max-recv", "8388608"]);
    // ...and its [[peers]] entry saying so.
    let config = dir.join("r.toml");
    let toml = format!(
        "id = \"r\"\n[[peers]]\nid = \"go\"\nendpoint = \"{go_addr}\"\nmax_message = \"8MiB\"\n"
    );
    std::fs::write(&config, toml).unwrap();
    let (mut r, r_addr) = start_ours(
        &dir,
        "r",
        &[
            "--config",
            config.to_str().unwrap(),
            "--deliver-dir",
            inbox.to_str().unwrap(),
        ],
    );
    r.wait_for("link", |l| l == "neighbor peer=go state=up");
    go.say(&format!("connect r {r_addr}"));
    go.wait_for("connected", |l| l == "connected r");

    // 6 MiB: over grpc-go's default, within this original's 8 MiB; 9 MiB: over both.
    let sent = files_to_go(&mut r, &dir, &[("six", 6 << 20), ("nine", 9 << 20)], b'y');
    let failed = &sent.too_large;
    assert_eq!(failed.len(), 1, "only the 9 MiB one: {:#?}", sent.completed);
    assert!(
        field(&failed[0], "attempts") == "0" && failed[0].contains("8388608"),
        "never sent, with the peer's own limit: {}",
        failed[0]
    );
    assert_eq!(sent.acked, 3, "{:#?}", sent.completed);
    // The 6 MiB one arrived whole, once, and the original refused nothing.
    let six = go.wait_for("the 6 MiB message", |l| {
        l.starts_with("received r ") && field_at(l, 3) == "6291456"
    });
    assert_eq!(field_at(&six, 4), fnv1a(&vec![b'y'; 6 << 20]), "{six}");
    let go_log = std::fs::read_to_string(dir.join("go.log")).unwrap();
    assert!(!go_log.contains("ResourceExhausted"), "{go_log}");
    drop((r, go));
    let _ = std::fs::remove_dir_all(&dir);
}

/// The `i`th word of a line.
fn field_at(line: &str, i: usize) -> &str {
    line.split_whitespace().nth(i).unwrap_or("")
}

/// The first line of the log at `path` that contains `needle`, waiting up to 30 s for it.
fn wait_for_log(path: &Path, needle: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let log = std::fs::read_to_string(path).unwrap_or_default();
        if let Some(line) = log.lines().find(|l| l.contains(needle)) {
            return line.to_owned();
        }
        assert!(Instant::now() < deadline, "no {needle:?} in {log}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn a_broadcast_larger_than_an_original_takes_is_not_sent_to_it_and_counts_it_missing() {
    let Some(driver) = driver() else { return };
    let dir = temp_dir("broadcast-limit");
    let (mut go, mut r) = original_and_ours(&driver, &dir, &[]);
    // Let the link to the original be replaced first (it is dialled again once known).
    std::thread::sleep(Duration::from_secs(3));
    let big = dir.join("big");
    std::fs::write(&big, vec![b'z'; 6 << 20]).unwrap();
    let converged = broadcast_from(&mut r, &format!("@{}", big.display()));
    assert_eq!(field(&converged, "reached"), "0", "{converged}");
    assert_eq!(field(&converged, "missing"), "go", "{converged}");
    let log = std::fs::read_to_string(dir.join("r.log")).unwrap();
    assert!(log.contains("not sent to go: 6291"), "{log}");
    // The link stayed up, and a small broadcast still reaches the original.
    let converged = broadcast_from(&mut r, "small-after");
    assert_eq!(field(&converged, "missing"), "", "{converged}");
    go.wait_for("the small broadcast", |l| {
        l.starts_with("received r ") && l.contains(" 11 ")
    });
    assert!(
        !r.seen
            .iter()
            .any(|l| l.contains("state=down") && !l.contains("an original node")),
        "{:#?}",
        r.seen
    );
    let go_log = std::fs::read_to_string(dir.join("go.log")).unwrap();
    assert!(!go_log.contains("ResourceExhausted"), "{go_log}");
    drop((r, go));
    let _ = std::fs::remove_dir_all(&dir);
}

/// The completions of messages `files_to_go` sent.
struct Sent {
    completed: Vec<String>,
    /// Those that failed as too large for the original.
    too_large: Vec<String>,
    /// How many the original ACKed.
    acked: usize,
}

/// Sends from `r` to the original "go" a file of each size in `sizes` (filled with `fill`),
/// each followed by a short text, and waits for the completions of all of them.
fn files_to_go(r: &mut Proc, dir: &Path, sizes: &[(&str, usize)], fill: u8) -> Sent {
    let done = |l: &str| l.starts_with("completed ");
    let before = r.seen.iter().filter(|l| done(l)).count();
    for (name, size) in sizes {
        let path = dir.join(name);
        std::fs::write(&path, vec![fill; *size]).unwrap();
        r.say(&format!("go @{}", path.display()));
        r.say(&format!("go after-{name}"));
    }
    r.wait_count("completions", before + 2 * sizes.len(), done);
    let completed: Vec<String> = (r.seen.iter().filter(|l| done(l)).skip(before))
        .cloned()
        .collect();
    let too_large = (completed.iter())
        .filter(|l| l.contains("too large for the receiver"))
        .cloned()
        .collect();
    let acked = (completed.iter())
        .filter(|l| l.contains("outcome=\"acked by go\""))
        .count();
    Sent {
        completed,
        too_large,
        acked,
    }
}

/// An original node sends no handshake, so it cannot be reached by its address alone: the
/// attempt fails with the reason and how to name it, and naming it works.
#[test]
fn an_original_is_not_reached_by_address_alone_but_by_its_id() {
    let Some(driver) = driver() else { return };
    let dir = temp_dir("by-address");
    let (_go, go_addr) = start_go(&driver, &dir, "go");
    let mut config = grpc_gossip::NodeConfig::new("r", "127.0.0.1:0");
    config.connect_timeout = Duration::from_secs(2);
    let r = grpc_gossip::Node::builder(config).start().unwrap();
    let err = r.connect_to_address(&go_addr).unwrap_err();
    assert!(
        matches!(&err, grpc_gossip::Error::Connect { kind: grpc_gossip::ConnectFailure::Handshake, reason, .. } if reason.contains("original")),
        "{err}"
    );
    assert!(r.neighbors().is_empty());
    r.connect_to_neighbor(grpc_gossip::NeighborInfo::new("go", go_addr))
        .expect("by its id");
    r.shutdown();
    let _ = std::fs::remove_dir_all(&dir);
}
