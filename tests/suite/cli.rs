//! The `gossip` binary: the benchmark's JSON contract and two node processes talking.

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

mod bounds;
mod budgets;
mod cluster;
mod crash;
mod operations;
use crate::common::silent;

const GOSSIP: &str = env!("CARGO_BIN_EXE_gossip");

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A `gossip node` process with `args`, its stdin and stdout piped.
fn node_process(args: &[&str]) -> std::process::Child {
    Command::new(GOSSIP)
        .arg("node")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start gossip node")
}

#[test]
fn bench_json_has_the_documented_fields() {
    let out = Command::new(GOSSIP)
        .args([
            "bench",
            "--nodes",
            "3",
            "--messages",
            "5",
            "--payload",
            "64KiB",
            "--rounds",
            "2",
            "--warmup",
            "0",
            "--baseline",
            "tcp",
            "--json",
        ])
        .output()
        .expect("run gossip bench");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8(out.stdout).unwrap();
    let last = stdout.lines().last().expect("output");
    let v: serde_json::Value = serde_json::from_str(last).expect("last line is JSON");
    for key in [
        "median_s",
        "min_s",
        "max_s",
        "mib_per_s",
        "acked",
        "expected",
        "peak_rss_bytes",
        "tcp_median_s",
        "ratio",
    ] {
        assert!(v.get(key).is_some(), "missing {key} in {last}");
    }
    assert_eq!(v["expected"], 2 * 3 * 2 * 5);
    assert_eq!(v["acked"], v["expected"]);
    assert!(v["median_s"].as_f64().unwrap() > 0.0);
}

#[test]
fn bad_bench_arguments_are_refused() {
    let out = Command::new(GOSSIP)
        .args(["bench", "--payload", "lots"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("lots"));
}

#[test]
fn two_node_processes_exchange_messages() {
    let (pa, pb) = (free_port(), free_port());
    let (listen_a, listen_b) = (format!("127.0.0.1:{pa}"), format!("127.0.0.1:{pb}"));
    let mut b = node_process(&[
        "--id",
        "b",
        "--listen",
        &listen_b,
        "--peer",
        &format!("a={listen_a}"),
    ]);
    let mut a = node_process(&[
        "--id",
        "a",
        "--listen",
        &listen_a,
        "--peer",
        &format!("b={listen_b}"),
        "--exit-when-done",
    ]);
    {
        let mut stdin = a.stdin.take().unwrap();
        writeln!(stdin, "b hello there").unwrap();
        writeln!(stdin, "* to everyone").unwrap();
        writeln!(stdin, "nobody lost").unwrap();
    } // closing stdin: a exits once its messages complete
    let a_out = a.wait_with_output().unwrap();
    assert!(a_out.status.success());
    let a_text = String::from_utf8(a_out.stdout).unwrap();
    assert_eq!(
        a_text.matches("outcome=\"acked by b\"").count(),
        1,
        "{a_text}"
    );
    assert!(a_text.contains("reached=1 missing= "), "{a_text}");
    assert!(a_text.contains("error peer=nobody"), "{a_text}");

    // b printed both deliveries; read until we have them, then stop it with SIGTERM.
    let mut lines = BufReader::new(b.stdout.take().unwrap()).lines();
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut delivered = Vec::new();
    while delivered.len() < 2 && Instant::now() < deadline {
        match lines.next() {
            Some(Ok(l)) if l.starts_with("delivered") => delivered.push(l),
            Some(Ok(_)) => {}
            _ => break,
        }
    }
    assert!(
        delivered[0].contains("text=\"hello there\""),
        "{delivered:?}"
    );
    assert!(
        delivered[1].contains("origin=a") && delivered[1].contains("text=\"to everyone\""),
        "{delivered:?}"
    );
    let status = Command::new("kill")
        .args(["-TERM", &b.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let code = b.wait().unwrap();
    assert!(code.success(), "b exits cleanly on SIGTERM: {code:?}");
    let rest: Vec<String> = lines.map_while(Result::ok).collect();
    assert!(
        rest.iter().any(|l| l == "stopped id=b pending=0"),
        "{rest:?}"
    );
}

/// `--peer HOST:PORT` without an id: the node keeps dialling until something answers there,
/// learns the neighbour's id from its handshake and then talks to it by that id.
#[test]
fn a_peer_given_by_address_alone_is_dialled_until_it_answers() {
    let pb = free_port();
    let listen_b = format!("127.0.0.1:{pb}");
    let mut a = node_process(&["--id", "a", "--peer", &listen_b, "--exit-when-done"]);
    let mut lines = BufReader::new(a.stdout.take().unwrap()).lines();
    // Nothing listens there yet: a says so, and tries again.
    read_until(&mut lines, |l| {
        l.starts_with(&format!("dialling addr={listen_b} attempt=1 "))
    });
    let mut b = node_process(&["--id", "b", "--listen", &listen_b]);
    let seen = read_until(&mut lines, |l| l.starts_with("connected "));
    assert_eq!(
        seen.last().map(String::as_str),
        Some(format!("connected peer=b addr={listen_b}").as_str()),
        "{seen:?}"
    );
    {
        let mut stdin = a.stdin.take().unwrap();
        writeln!(stdin, "b found you").unwrap();
    } // closing stdin: a exits once its message completes
    let rest: Vec<String> = lines.map_while(Result::ok).collect();
    assert!(
        rest.iter().any(|l| l.contains("outcome=\"acked by b\"")),
        "{rest:?}"
    );
    assert!(a.wait().unwrap().success());
    signal(&b, "-TERM");
    assert!(b.wait().unwrap().success());
}

fn temp_dir(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("gossip-cli-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn signal(child: &std::process::Child, sig: &str) {
    let status = Command::new("kill")
        .args([sig, &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
}

/// The address an output line gives (`... addr=HOST:PORT`).
fn addr_in(line: &str) -> String {
    let addr = line.split("addr=").nth(1).expect("an addr= field");
    addr.split(' ').next().unwrap_or(addr).to_owned()
}

/// Reads lines until one satisfies `want`; returns every line read.
fn read_until(
    lines: &mut impl Iterator<Item = std::io::Result<String>>,
    want: impl Fn(&str) -> bool,
) -> Vec<String> {
    let mut seen = Vec::new();
    for line in lines.map_while(Result::ok) {
        let done = want(&line);
        seen.push(line);
        if done {
            return seen;
        }
    }
    panic!("stream ended before the line we wait for: {seen:?}");
}

#[test]
fn sigterm_drains_then_fails_what_cannot_finish_and_exits_zero() {
    let (pa, pb) = (free_port(), free_port());
    let dir = temp_dir("drain");
    let config = dir.join("a.toml");
    std::fs::write(
        &config,
        format!(
            "id = \"a\"\nlisten = \"127.0.0.1:{pa}\"\ndrain_timeout = \"1s\"\n\
             [[peers]]\nid = \"b\"\nendpoint = \"127.0.0.1:{pb}\"\n"
        ),
    )
    .unwrap();
    let inbox = dir.join("inbox");
    let mut b = node_process(&[
        "--id",
        "b",
        "--listen",
        &format!("127.0.0.1:{pb}"),
        "--deliver-dir",
        inbox.to_str().unwrap(),
    ]);
    let mut a = node_process(&["--config", config.to_str().unwrap()]);
    let mut a_in = a.stdin.take().unwrap();
    let mut a_lines = BufReader::new(a.stdout.take().unwrap()).lines();
    let mut b_lines = BufReader::new(b.stdout.take().unwrap()).lines();
    writeln!(a_in, "b first").unwrap();
    read_until(&mut a_lines, |l| {
        l.starts_with("completed") && l.contains("acked by b")
    });
    // b's delivery went to a file, written whole.
    let delivered = read_until(&mut b_lines, |l| l.starts_with("delivered"));
    let line = delivered.last().unwrap();
    let file = line.split("file=").nth(1).expect("a file= field");
    assert_eq!(std::fs::read(file).unwrap(), b"first");

    // Frozen, b ACKs nothing: a's next message cannot finish within the drain.
    signal(&b, "-STOP");
    let stopped = || {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", b.id())).unwrap_or_default();
        // The state follows the parenthesised command name.
        stat.rsplit(')')
            .next()
            .map(|s| s.trim_start().starts_with('T'))
            == Some(true)
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    while !stopped() {
        assert!(Instant::now() < deadline, "b stops");
        std::thread::sleep(Duration::from_millis(10));
    }
    writeln!(a_in, "b second").unwrap();
    read_until(&mut a_lines, |l| l.starts_with("sent"));
    signal(&a, "-TERM");
    let rest = read_until(&mut a_lines, |l| l.starts_with("stopped"));
    assert!(
        rest.iter()
            .any(|l| l == "draining pending=1 timeout_ms=1000"),
        "{rest:?}"
    );
    assert!(
        rest.iter()
            .any(|l| l.starts_with("completed") && l.contains("outcome=\"failed: ")),
        "the undelivered message fails with a reason: {rest:?}"
    );
    assert_eq!(rest.last().unwrap(), "stopped id=a pending=0");
    assert!(a.wait().unwrap().success(), "exit 0 after a drain");
    signal(&b, "-CONT");
    signal(&b, "-TERM");
    assert!(b.wait().unwrap().success());
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_bad_config_file_is_refused_naming_the_field() {
    let dir = temp_dir("config");
    let run = |text: &str| {
        let path = dir.join("node.toml");
        std::fs::write(&path, text).unwrap();
        let out = Command::new(GOSSIP)
            .args(["node", "--config", path.to_str().unwrap()])
            .stdin(Stdio::null())
            .output()
            .unwrap();
        assert!(!out.status.success(), "{text}");
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    assert!(run("id = \"a\"\n[store]\nsltos = 5\n").contains("sltos"));
    assert!(run("id = \"a\"\n[store]\nttl = \"soon\"\n").contains("store.ttl"));
    assert!(
        run("id = \"a\"\n[tls]\nca = \"/nonexistent\"\ncert = \"x\"\nkey = \"y\"\n")
            .contains("tls.ca")
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn certs_makes_a_ca_once_and_a_certificate_per_node() {
    let dir = temp_dir("certs");
    let certs = |ids: &str| {
        let out = Command::new(GOSSIP)
            .args(["certs", "--out", dir.to_str().unwrap(), "--ids", ids])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    };
    assert!(certs("n1,n2").contains("new CA"));
    let ca = std::fs::read(dir.join("ca.pem")).unwrap();
    assert!(certs("n3").contains("reusing CA"));
    assert_eq!(
        std::fs::read(dir.join("ca.pem")).unwrap(),
        ca,
        "the CA is kept"
    );
    for f in ["n1.pem", "n1.key", "n2.pem", "n3.pem", "n3.key"] {
        assert!(dir.join(f).exists(), "{f}");
    }
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(dir.join("n3.key"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600, "keys are private");
    let bad = Command::new(GOSSIP)
        .args(["certs", "--out", dir.to_str().unwrap(), "--ids", "bad_id"])
        .output()
        .unwrap();
    assert!(!bad.status.success());
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn bench_with_tls_writes_csv_and_chart() {
    let dir = temp_dir("bench");
    let (csv, svg) = (dir.join("rounds.csv"), dir.join("chart.svg"));
    let out = Command::new(GOSSIP)
        .args([
            "bench",
            "--nodes",
            "2",
            "--messages",
            "4",
            "--payload",
            "16KiB",
        ])
        .args([
            "--rounds",
            "3",
            "--warmup",
            "0",
            "--baseline",
            "tcp",
            "--tls",
        ])
        .args([
            "--csv",
            csv.to_str().unwrap(),
            "--chart",
            svg.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Not a terminal: no progress bar on stderr.
    assert!(
        out.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = std::fs::read_to_string(&csv).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert!(lines[0].starts_with("kind,round,seconds,mib_per_s,acked,expected,ack_p50_ms"));
    assert_eq!(lines.len(), 1 + 3 + 3, "{text}");
    let gossip: Vec<&str> = lines[1].split(',').collect();
    assert_eq!((gossip[0], gossip[4], gossip[5]), ("gossip", "8", "8"));
    assert!(gossip[6].parse::<f64>().unwrap() > 0.0, "ACK p50 measured");
    assert!(lines[4].starts_with("tcp,1,"), "{text}");
    let chart = std::fs::read_to_string(&svg).unwrap();
    assert!(chart.contains("<svg") && chart.contains("throughput per round"));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn ack_latency_mode_reports_percentiles() {
    let out = Command::new(GOSSIP)
        .args([
            "bench",
            "--mode",
            "ack-latency",
            "--probes",
            "20",
            "--payload",
            "64KiB",
            "--slots",
            "8",
            "--json",
        ])
        .output()
        .expect("run gossip bench --mode ack-latency");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8(out.stdout).unwrap();
    let v: serde_json::Value = serde_json::from_str(stdout.lines().last().unwrap()).unwrap();
    assert_eq!(v["probes"], 20);
    let (p50, p99, max) = (
        v["p50_ms"].as_f64().unwrap(),
        v["p99_ms"].as_f64().unwrap(),
        v["max_ms"].as_f64().unwrap(),
    );
    assert!(0.0 < p50 && p50 <= p99 && p99 <= max, "{v}");
    assert!(v["bulk_mib_per_s"].as_f64().unwrap() > 0.0);
}
