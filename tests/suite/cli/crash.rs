//! An ACK is a promise across crashes: a receiver writing to `--deliver-dir` is SIGKILLed again
//! and again while multi-MiB messages flow to it; every message its sender saw ACKed must be in
//! the inbox, byte for byte, and in the end every message is ACKed exactly once on the sender.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::{free_port, signal, temp_dir, GOSSIP};

const MESSAGES: usize = 120;
const SIZE: usize = 2 << 20;
const KILLS: usize = 5;

/// Message `i`'s bytes: distinct per message, so a mixed-up file is caught.
fn payload(i: usize) -> Vec<u8> {
    let mut x = 0x9E37_79B9_7F4A_7C15u64 ^ (i as u64 + 1);
    let mut out = Vec::with_capacity(SIZE);
    while out.len() < SIZE {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(SIZE);
    out
}

/// A node config: fast reconnection, so that each restart is noticed within a second.
fn config(dir: &Path, id: &str, listen: &str, peers: &[(&str, &str)]) -> PathBuf {
    let mut text = format!("id = {id:?}\nlisten = {listen:?}\nlog_level = \"info\"\n");
    for (peer, addr) in peers {
        text += &format!("[[peers]]\nid = {peer:?}\nendpoint = {addr:?}\n");
    }
    text += "[store]\nttl = \"150s\"\n";
    text += "[connection]\nreconnect_initial = \"50ms\"\nreconnect_max = \"500ms\"\n";
    let path = dir.join(format!("{id}.toml"));
    std::fs::write(&path, text).unwrap();
    path
}

/// Starts run `run` of a receiver, its stderr in `dir/r-RUN.log` for a failure's post-mortem.
fn start_logged(mut command: Command, dir: &Path, run: usize) -> Child {
    let log = std::fs::File::create(dir.join(format!("r-{run}.log"))).unwrap();
    command
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("start the receiver")
}

fn files_in(inbox: &Path) -> Vec<String> {
    std::fs::read_dir(inbox)
        .map(|d| {
            d.map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

fn delivered_count(inbox: &Path) -> usize {
    files_in(inbox)
        .iter()
        .filter(|n| !n.starts_with('.'))
        .count()
}

/// What differs between the two receivers under test.
struct Receiver<'a> {
    /// Starts it (run `n`: the n-th start).
    spawn: &'a dyn Fn(usize) -> Child,
    /// Messages it has stored so far (a progress measure for choosing when to kill).
    stored: &'a dyn Fn() -> usize,
}

/// Sends `MESSAGES` distinct payloads from a `gossip node` to the receiver, SIGKILLing the
/// receiver `KILLS` times along the way; returns each message's hash (by index) once every
/// message has been ACKed exactly once.
fn send_through_crashes(dir: &Path, listen_r: &str, receiver: Receiver<'_>) -> Vec<String> {
    let sources = dir.join("src");
    std::fs::create_dir_all(&sources).unwrap();
    for i in 0..MESSAGES {
        std::fs::write(sources.join(format!("{i}.bin")), payload(i)).unwrap();
    }
    let listen_s = format!("127.0.0.1:{}", free_port());
    let s_config = config(dir, "s", &listen_s, &[("r", listen_r)]);

    let mut r = (receiver.spawn)(0);
    let s_log = std::fs::File::create(dir.join("s.log")).unwrap();
    let mut s = Command::new(GOSSIP)
        .arg("node")
        .arg("--config")
        .arg(&s_config)
        .arg("--exit-when-done")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(s_log)
        .spawn()
        .expect("start the sender");
    {
        let mut stdin = s.stdin.take().unwrap();
        for i in 0..MESSAGES {
            writeln!(stdin, "r @{}", sources.join(format!("{i}.bin")).display()).unwrap();
        }
    } // stdin closed: the sender exits once every message has completed
    let stdout = BufReader::new(s.stdout.take().unwrap());
    let reader = std::thread::spawn(move || stdout.lines().map_while(Result::ok).collect());

    // Kill the receiver whenever it has stored a few more messages, at varying moments.
    let mut killed = 0;
    let deadline = Instant::now() + Duration::from_secs(120);
    while killed < KILLS && Instant::now() < deadline {
        let want = (receiver.stored)() + 8 + 3 * killed;
        while (receiver.stored)() < want.min(MESSAGES) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        std::thread::sleep(Duration::from_millis(7 * killed as u64));
        r.kill().unwrap(); // SIGKILL
        r.wait().unwrap();
        killed += 1;
        r = (receiver.spawn)(killed);
    }
    assert_eq!(
        killed, KILLS,
        "the receiver made too little progress to be killed"
    );

    let finished = Instant::now() + Duration::from_secs(150);
    let status = loop {
        if let Some(status) = s.try_wait().unwrap() {
            break status;
        }
        assert!(
            Instant::now() < finished,
            "the sender did not finish; see {dir:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success());
    let lines: Vec<String> = reader.join().unwrap();
    // Stopped cleanly this time, so no write is cut short.
    signal(&r, "-TERM");
    r.wait().unwrap();

    // Which hash each command got (sent lines come in command order), and how each ended.
    let field = |line: &str, name: &str| {
        line.split(' ')
            .find_map(|w| w.strip_prefix(&format!("{name}=")).map(str::to_owned))
    };
    let hashes: Vec<String> = lines
        .iter()
        .filter(|l| l.starts_with("sent "))
        .filter_map(|l| field(l, "hash"))
        .collect();
    assert_eq!(hashes.len(), MESSAGES, "{lines:?}");
    let mut outcomes: HashMap<String, Vec<String>> = HashMap::new();
    for l in lines.iter().filter(|l| l.starts_with("completed ")) {
        let outcome = l.split("outcome=").nth(1).unwrap_or_default().to_owned();
        outcomes
            .entry(field(l, "hash").unwrap())
            .or_default()
            .push(outcome);
    }
    for (i, hash) in hashes.iter().enumerate() {
        let ends = outcomes.get(hash).cloned().unwrap_or_default();
        assert_eq!(ends.len(), 1, "message {i} ({hash}): {ends:?}");
        assert!(ends[0].starts_with("\"acked by r"), "message {i}: {ends:?}");
    }
    let resent = lines
        .iter()
        .filter(|l| l.starts_with("completed ") && !l.contains(" attempts=1 "))
        .count();
    eprintln!("{KILLS} kills; {resent} of {MESSAGES} messages needed more than one attempt");
    hashes
}

#[test]
fn sigkilled_deliver_dir_receiver_loses_nothing_it_acked() {
    let dir = temp_dir("crash");
    let inbox = dir.join("inbox");
    let listen_r = format!("127.0.0.1:{}", free_port());
    let r_config = config(&dir, "r", &listen_r, &[]);
    let spawn = |run: usize| {
        let mut node = Command::new(GOSSIP);
        node.arg("node")
            .arg("--config")
            .arg(&r_config)
            .arg("--deliver-dir")
            .arg(&inbox)
            .stdin(Stdio::piped()); // kept open: the node runs until killed
        start_logged(node, &dir, run)
    };
    let stored = || delivered_count(&inbox);
    let hashes = send_through_crashes(
        &dir,
        &listen_r,
        Receiver {
            spawn: &spawn,
            stored: &stored,
        },
    );
    for (i, hash) in hashes.iter().enumerate() {
        // ACKed, so on disk and whole.
        let file = inbox.join(format!("s.{hash}"));
        let got = std::fs::read(&file).unwrap_or_else(|e| panic!("{file:?}: {e}"));
        assert!(
            got == payload(i),
            "message {i}: {file:?} differs from what was sent"
        );
    }
    // Copies delivered twice (written, killed before the ACK left) went to the same name; and
    // the temporary files of killed writes were cleaned at the next start.
    let mut names = files_in(&inbox);
    names.sort();
    assert_eq!(names.len(), MESSAGES, "{names:?}");
    std::fs::remove_dir_all(&dir).unwrap();
}

/// `examples/durable_receiver`, built by `cargo test` beside this test's binary.
fn durable_receiver() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let profile = exe.parent().and_then(Path::parent).unwrap();
    profile.join("examples").join("durable_receiver")
}

/// The journal's records, in order: (key, payload).
fn journal(path: &Path) -> Vec<(String, Vec<u8>)> {
    let bytes = std::fs::read(path).unwrap_or_default();
    let mut out = Vec::new();
    let mut at = 0;
    while at + 4 <= bytes.len() {
        let n = u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap()) as usize;
        let Some(key) = bytes.get(at + 4..at + 4 + n) else {
            break;
        };
        let p = at + 4 + n;
        let Some(len) = bytes.get(p..p + 8) else {
            break;
        };
        let len = u64::from_le_bytes(len.try_into().unwrap()) as usize;
        let Some(payload) = bytes.get(p + 8..p + 8 + len) else {
            break;
        };
        out.push((String::from_utf8(key.to_vec()).unwrap(), payload.to_vec()));
        at = p + 8 + len;
    }
    out
}

#[test]
fn sigkilled_library_receiver_loses_nothing_it_acked() {
    let dir = temp_dir("crash-lib");
    let path = dir.join("r.journal");
    let listen_r = format!("127.0.0.1:{}", free_port());
    let bin = durable_receiver();
    assert!(bin.exists(), "{bin:?} (cargo test builds the examples)");
    let spawn = |run: usize| {
        let mut receiver = Command::new(&bin);
        receiver.args(["r", &listen_r]).arg(&path);
        start_logged(receiver, &dir, run)
    };
    let stored = || journal(&path).len();
    let hashes = send_through_crashes(
        &dir,
        &listen_r,
        Receiver {
            spawn: &spawn,
            stored: &stored,
        },
    );
    let records = journal(&path);
    let by_key: HashMap<&str, &Vec<u8>> = records.iter().map(|(k, p)| (k.as_str(), p)).collect();
    // The receiver de-duplicates by sender and hash: each message once, whole.
    assert_eq!(records.len(), MESSAGES, "one record per message");
    for (i, hash) in hashes.iter().enumerate() {
        let key = format!("s.{hash}");
        let got = by_key
            .get(key.as_str())
            .unwrap_or_else(|| panic!("{key} not stored"));
        assert!(
            **got == payload(i),
            "message {i} differs from what was sent"
        );
    }
    std::fs::remove_dir_all(&dir).unwrap();
}
