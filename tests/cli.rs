//! The `gossip` binary: the benchmark's JSON contract and two node processes talking.

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const GOSSIP: &str = env!("CARGO_BIN_EXE_gossip");

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
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
    let mut b = Command::new(GOSSIP)
        .args(["node", "--id", "b", "--listen", &format!("127.0.0.1:{pb}")])
        .args(["--peer", &format!("a=127.0.0.1:{pa}")])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut a = Command::new(GOSSIP)
        .args(["node", "--id", "a", "--listen", &format!("127.0.0.1:{pa}")])
        .args(["--peer", &format!("b=127.0.0.1:{pb}"), "--exit-when-done"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
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
    assert!(rest.iter().any(|l| l == "stopped id=b"), "{rest:?}");
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
