//! What an operator of `gossip node` sees when things are wrong: commands never wait for a
//! peer, a wrong address is named and retried with a growing backoff, bad ids and taken ports
//! are refused with the flag and the address, and the health endpoints, timestamps and version
//! say what they should.

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use super::{addr_in, free_port, node_process, read_until, GOSSIP};

#[test]
fn commands_to_a_down_peer_are_accepted_at_once() {
    let down = free_port(); // nothing listens there
    let mut a = node_process(&["--id", "a", "--peer", &format!("down=127.0.0.1:{down}")]);
    let mut lines = BufReader::new(a.stdout.take().unwrap()).lines();
    read_until(&mut lines, |l| l.starts_with("listening "));
    let mut stdin = a.stdin.take().unwrap();
    let asked = Instant::now();
    writeln!(stdin, "down hello").unwrap();
    writeln!(stdin, "nobody hello").unwrap();
    let seen = read_until(&mut lines, |l| l.starts_with("sent "));
    let took = asked.elapsed();
    eprintln!("`sent` line {took:?} after the command");
    assert!(took < Duration::from_secs(2), "{took:?}: {seen:?}");
    let seen = read_until(&mut lines, |l| l.starts_with("error "));
    assert!(
        seen.last().unwrap().contains("peer=nobody"),
        "an unknown peer gets an error line: {seen:?}"
    );
    // Meanwhile the node keeps trying, saying why each attempt failed.
    let seen = read_until(&mut lines, |l| l.contains("state=reconnecting"));
    assert!(seen.last().unwrap().contains("refused"), "{seen:?}");
    a.kill().unwrap();
    a.wait().unwrap();
}

#[test]
fn a_wrong_address_is_named_and_retried_with_a_growing_backoff() {
    let pr = free_port();
    let listen_r = format!("127.0.0.1:{pr}");
    let mut r = node_process(&["--id", "r", "--listen", &listen_r]);
    let mut r_lines = BufReader::new(r.stdout.take().unwrap()).lines();
    read_until(&mut r_lines, |l| l.starts_with("listening "));
    // `q` is configured where `r` listens: every link opens, then `r` refuses it.
    let mut a = node_process(&["--id", "a", "--peer", &format!("q={listen_r}")]);
    let mut lines = BufReader::new(a.stdout.take().unwrap()).lines();
    let watch = Duration::from_secs(10);
    let started = Instant::now();
    let (tx, rx) = crossbeam_channel::unbounded();
    std::thread::spawn(move || {
        for line in lines.by_ref().map_while(Result::ok) {
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    let mut ups = 0;
    let mut reason = None;
    while let Some(left) = watch.checked_sub(started.elapsed()) {
        let Ok(line) = rx.recv_timeout(left) else {
            break;
        };
        if line.starts_with("neighbor peer=q state=up") {
            ups += 1;
        }
        if line.starts_with("neighbor peer=q state=down") {
            reason.get_or_insert(line);
        }
    }
    a.kill().unwrap();
    a.wait().unwrap();
    r.kill().unwrap();
    r.wait().unwrap();
    let reason = reason.expect("the link went down");
    assert!(
        reason.contains(r#"this is node \"r\", not \"q\""#),
        "{reason}"
    );
    eprintln!("{ups} attempts in {watch:?}");
    assert!((1..=7).contains(&ups), "{ups} attempts in {watch:?}");
}

/// Runs `gossip node` with `args`, expecting it to refuse to start; returns its stderr.
fn refused(args: &[&str]) -> String {
    let out = Command::new(GOSSIP)
        .arg("node")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(!out.status.success(), "{args:?} started");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn bad_ids_and_taken_ports_are_refused_naming_the_flag_and_the_address() {
    let err = refused(&["--id", "a b"]);
    assert!(
        err.contains("id (--id)") && err.contains("letters"),
        "{err}"
    );

    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let err = refused(&["--id", "a", "--listen", &addr]);
    assert!(
        err.contains(&format!(
            "cannot listen on {addr} (the node's gRPC server, `listen`)"
        )),
        "{err}"
    );
    assert!(
        !err.contains("grpc_") && err.lines().count() < 5,
        "no gRPC internals: {err}"
    );
    let err = refused(&["--id", "a", "--metrics-addr", &addr]);
    assert!(
        err.contains(&format!("cannot listen on {addr} (the metrics server")),
        "{err}"
    );
}

/// `GET path` on `addr`: (status, body).
pub(super) fn http_get(addr: &str, path: &str) -> (u16, String) {
    use std::io::Read;
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    write!(s, "GET {path} HTTP/1.0\r\nHost: x\r\n\r\n").unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).unwrap();
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = text.split("\r\n\r\n").nth(1).unwrap_or_default().to_owned();
    (status, body)
}

#[test]
fn health_endpoints_timestamps_and_version() {
    let down = free_port();
    let mut a = node_process(&[
        "--id",
        "a",
        "--metrics-addr",
        "127.0.0.1:0",
        "--timestamps",
        "--peer",
        &format!("b=127.0.0.1:{down}"),
    ]);
    let mut lines = BufReader::new(a.stdout.take().unwrap()).lines();
    let seen = read_until(&mut lines, |l| l.contains(" metrics addr="));
    let first = &seen[0];
    let (time, rest) = first.split_once(' ').unwrap();
    assert!(rest.starts_with("listening id=a"), "{first}");
    assert!(
        humantime::parse_rfc3339(time).is_ok(),
        "an RFC 3339 time first: {first}"
    );
    let metrics = addr_in(seen.last().unwrap());
    assert_eq!(http_get(&metrics, "/healthz").0, 200);
    // Its only neighbour is down: alive, not ready.
    let (status, body) = http_get(&metrics, "/readyz");
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("none of 1 neighbours"), "{body}");
    let (status, body) = http_get(&metrics, "/metrics");
    assert_eq!(status, 200);
    for family in [
        "gossip_broadcasts_started_total",
        "gossip_broadcasts_completed_total",
        "gossip_deliveries_declined_total",
    ] {
        assert!(body.contains(family), "{family} missing");
    }
    a.kill().unwrap();
    a.wait().unwrap();

    let out = Command::new(GOSSIP).arg("--version").output().unwrap();
    let version = String::from_utf8_lossy(&out.stdout);
    assert!(
        version.contains("commit ") && version.contains("features"),
        "{version}"
    );
}
