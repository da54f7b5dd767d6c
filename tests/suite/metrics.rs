//! The Prometheus endpoint, scraped over HTTP while two real nodes exchange messages: per-peer
//! counters, completions by outcome, online state and the ACK latency histogram agree with what
//! the nodes did.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::common::*;
use bytes::Bytes;
use grpc_gossip::metrics::MetricsServer;
use grpc_gossip::{Message, Outcome};

fn scrape(addr: SocketAddr) -> String {
    let mut s = TcpStream::connect(addr).expect("connect to the metrics server");
    write!(s, "GET /metrics HTTP/1.0\r\nHost: test\r\n\r\n").unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    assert!(
        out.starts_with("HTTP/1.0 200") || out.starts_with("HTTP/1.1 200"),
        "{out}"
    );
    out
}

/// The value of the sample whose name and labels are exactly `series`.
fn value(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("no sample {series} in:\n{text}"))
}

#[test]
fn scraped_metrics_follow_a_run() {
    let f = factory();
    let a = Arc::new(start("ma", &f));
    let b = Arc::new(start("mb", &f));
    connect(&a, &b);
    connect(&b, &a);
    let server = MetricsServer::for_node("127.0.0.1:0", a.clone()).expect("metrics server");
    let addr = server.local_addr();

    let deadline = Instant::now() + PATIENCE;
    while value(&scrape(addr), r#"gossip_peer_online{node="ma",peer="mb"}"#) != 1.0 {
        assert!(Instant::now() < deadline, "mb shows online");
        std::thread::sleep(Duration::from_millis(20));
    }

    const N: usize = 20;
    let completions = a.completions();
    let payload = Bytes::from(vec![7u8; 1000]);
    for i in 0..N {
        a.send_message("mb", Message::new(format!("m{i}"), payload.clone()))
            .unwrap();
    }
    // Scrape while the run goes on, then once everything is done.
    let during = scrape(addr);
    assert!(
        during.contains("gossip_slots_in_use{node=\"ma\"}"),
        "{during}"
    );
    let done = collect(&completions, N);
    assert!(done
        .iter()
        .all(|c| matches!(c.outcome, Outcome::Acked { .. })));
    b.send_message("ma", Message::new("back", Bytes::from_static(b"hey")))
        .unwrap();
    let d = a.deliveries().recv_timeout(PATIENCE).expect("delivery");
    assert_eq!(d.hash, "back");

    let text = scrape(addr);
    let peer = r#"node="ma",peer="mb""#;
    assert_eq!(
        value(&text, &format!("gossip_messages_sent_total{{{peer}}}")),
        N as f64
    );
    assert_eq!(
        value(&text, &format!("gossip_bytes_sent_total{{{peer}}}")),
        (N * 1000) as f64
    );
    assert_eq!(
        value(
            &text,
            r#"gossip_completions_total{node="ma",outcome="acked",peer="mb"}"#
        ),
        N as f64
    );
    assert_eq!(
        value(
            &text,
            r#"gossip_completions_total{node="ma",outcome="failed",peer="mb"}"#
        ),
        0.0
    );
    assert_eq!(
        value(&text, &format!("gossip_messages_received_total{{{peer}}}")),
        1.0
    );
    assert_eq!(
        value(&text, &format!("gossip_messages_delivered_total{{{peer}}}")),
        1.0
    );
    assert_eq!(
        value(&text, &format!("gossip_bytes_received_total{{{peer}}}")),
        3.0
    );
    assert_eq!(
        value(&text, r#"gossip_ack_latency_seconds_count{node="ma"}"#),
        N as f64
    );
    assert_eq!(
        value(
            &text,
            r#"gossip_ack_latency_seconds_bucket{node="ma",le="+Inf"}"#
        ),
        N as f64
    );
    assert_eq!(value(&text, r#"gossip_slots_in_use{node="ma"}"#), 0.0);
    assert_eq!(value(&text, r#"gossip_neighbors_online{node="ma"}"#), 1.0);
    assert_eq!(
        value(&text, r#"gossip_queue_depth{node="ma",queue="deliveries"}"#),
        0.0
    );

    // A peer going away shows as offline.
    b.shutdown();
    let deadline = Instant::now() + PATIENCE;
    while value(&scrape(addr), &format!("gossip_peer_online{{{peer}}}")) != 0.0 {
        assert!(Instant::now() < deadline, "mb shows offline");
        std::thread::sleep(Duration::from_millis(50));
    }
    // Dropped, the server closes its port (its accept thread notices within moments).
    drop(server);
    let deadline = Instant::now() + PATIENCE;
    while TcpStream::connect(addr).is_ok() {
        assert!(Instant::now() < deadline, "the server stops when dropped");
        std::thread::sleep(Duration::from_millis(50));
    }
}
