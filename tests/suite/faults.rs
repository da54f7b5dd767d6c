//! Fault tests on loopback: links cut under load, a peer that never ACKs, a peer restarted on
//! the same address, a whole cluster shut down while sending. Every time the invariant holds:
//! completions = messages sent, no delivery twice, nothing left in flight. Those in `on_both!`
//! also run on the in-memory network; `memory.rs` cuts and silences its links.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use crate::common::proxy::Proxy;
use crate::common::*;
use bytes::Bytes;
use grpc_gossip::{Error, FailReason, Message, NeighborEvent, NeighborInfo, Outcome};

/// Nodes a and b, each linked to the other; a reaches b through a proxy that can break the link.
fn linked_through_proxy(
    f: &std::sync::Arc<grpc_gossip::StreamFactory>,
    a_config: grpc_gossip::NodeConfig,
) -> (grpc_gossip::Node, grpc_gossip::Node, Proxy) {
    let a = start_with(a_config, f);
    let b = start("b", f);
    let proxy = Proxy::start(b.local_addr());
    a.connect_to_neighbor(NeighborInfo::new("b", proxy.addr().to_string()))
        .unwrap();
    connect(&b, &a);
    (a, b, proxy)
}

fn wait_until(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + PATIENCE;
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Cut the connection under a stream of 512 KiB messages, keep it cut, restore it: every
/// message ends `Acked`, each is delivered once, and some were sent again.
#[test]
fn link_cut_under_load_then_restored() {
    let f = factory();
    let mut ca = config("a");
    ca.slots = 32;
    let (a, b, proxy) = linked_through_proxy(&f, ca);
    const N: usize = 300;
    let payload = Bytes::from(vec![0xab; 512 * 1024]);
    let outage = Duration::from_millis(700);
    let (completions, seen) = survive_a_cut(
        &a,
        &b,
        N,
        payload,
        outage,
        || proxy.cut(),
        || proxy.restore(),
    );
    assert_eq!(completions.len(), N);
    assert!(a.stats().retransmitted > 0);
    assert!(
        seen.iter()
            .filter(|e| matches!(e, NeighborEvent::Up { .. }))
            .count()
            >= 2,
        "{seen:?}"
    );
}

/// A peer that accepts the streams, reads everything and never ACKs: the node notices the
/// stall, reconnects, sends again, and finally times the messages out, with their attempts.
#[test]
fn peer_that_never_acks() {
    let f = factory();
    let (mut server, addr) = crate::common::silent::start(&f);
    let mut ca = config("a");
    ca.ttl = Duration::from_secs(3);
    ca.ack_timeout = Duration::from_millis(500);
    let a = start_with(ca, &f);
    a.connect_to_neighbor(NeighborInfo::new("silent", addr))
        .unwrap();
    for i in 0..3 {
        a.send_message("silent", Message::new(format!("{i}"), "hello?"))
            .unwrap();
    }
    for c in collect(&a.completions(), 3) {
        assert_eq!(c.outcome, Outcome::TimedOut);
        assert!(c.attempts >= 2, "sent again after the stall: {c:?}");
    }
    let stats = a.stats();
    assert!(stats.stalls >= 1, "{stats:?}");
    assert!(stats.retransmitted >= 3, "{stats:?}");
    assert_eq!(stats.in_flight, 0);
    a.shutdown();
    let _ = futures::executor::block_on(server.shutdown());
}

/// A peer that stops reading what we send (its streams are accepted, never read): broadcasts
/// to it are no message outstanding, so only the writer can tell. Its link is taken down after
/// `ack_timeout` without progress, and its queue does not grow past its bound meanwhile.
#[test]
fn a_peer_that_stops_reading_is_taken_down() {
    let f = factory();
    let (mut server, addr) = crate::common::silent::start_deaf(&f);
    let mut ca = config("a");
    ca.ack_timeout = Duration::from_millis(500);
    let a = start_with(ca, &f);
    let threads = a.stream_threads();
    a.connect_to_neighbor(NeighborInfo::new("deaf", addr))
        .unwrap();
    let payload = bytes::Bytes::from(vec![0u8; 512 * 1024]);
    for i in 0..40 {
        a.broadcast(Message::new(format!("b{i}"), payload.clone()))
            .unwrap();
    }
    let reason = first_event(&a.events(), |e| match e {
        grpc_gossip::NeighborEvent::Down { reason, .. } => Some(reason),
        _ => None,
    });
    assert!(reason.contains("stopped reading"), "{reason}");
    assert!(a.stats().stalls >= 1);
    // Once the neighbour is removed, no thread stays stuck in a write: the calls are cancelled.
    a.disconnect_neighbor("deaf").unwrap();
    let deadline = Instant::now() + PATIENCE;
    while a.stream_threads() > threads && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(a.stream_threads(), threads, "stream threads released");
    a.shutdown();
    let _ = futures::executor::block_on(server.shutdown());
}

/// A neighbour that never ACKs fills its own share of the store, not everyone's: sends to it
/// block (or fail with `PeerFull`), sends to the others go on.
#[test]
fn a_stuck_neighbour_does_not_block_the_others() {
    let f = factory();
    let (mut server, addr) = crate::common::silent::start(&f);
    let mut ca = config("a");
    ca.slots = 32;
    ca.peer_max_messages = 8;
    ca.ack_timeout = Duration::from_secs(60);
    let a = start_with(ca, &f);
    let b = start("b", &f);
    a.connect_to_neighbor(NeighborInfo::new("stuck", addr))
        .unwrap();
    connect(&a, &b);
    for i in 0..8 {
        a.try_send_message("stuck", Message::new(format!("s{i}"), vec![0u8; 1024]))
            .unwrap();
    }
    match a.try_send_message("stuck", Message::new("one-more", "x")) {
        Err(Error::PeerFull {
            peer, messages: 8, ..
        }) => assert_eq!(peer, "stuck"),
        other => panic!("{other:?}"),
    }
    // A blocking send to it waits, then gives up with the same clear error.
    let r = a.send_message_timeout(
        "stuck",
        Message::new("waits", "x"),
        Duration::from_millis(200),
    );
    assert!(matches!(r, Err(Error::PeerFull { .. })), "{r:?}");
    // Meanwhile everyone else is served.
    for i in 0..200 {
        a.send_message("b", Message::new(format!("b{i}"), vec![1u8; 1024]))
            .unwrap();
    }
    let done = collect(&a.completions(), 200);
    assert!(done
        .iter()
        .all(|c| c.is_acked() && c.key.peer.as_str() == "b"));
    assert_eq!(
        a.stats().in_flight,
        8,
        "the stuck neighbour's messages are still tracked"
    );
    a.shutdown();
    assert_eq!(
        collect(&a.completions(), 8).len(),
        8,
        "and complete at shutdown"
    );
    let _ = futures::executor::block_on(server.shutdown());
}

on_both! {
    /// The receiver goes away and a new one starts on the same address: messages sent meanwhile
    /// wait, and reach the new incarnation once the node has reconnected on its own.
    fn peer_restarted_on_the_same_address(on) {
        let a = start("a", on);
        let b = start("b", on);
        let addr = b.local_addr();
        connect(&a, &b);
        for i in 0..10 {
            a.send_message("b", Message::new(format!("before-{i}"), "x"))
                .unwrap();
        }
        assert!(collect(&a.completions(), 10).iter().all(|c| c.is_acked()));
        b.shutdown();
        drop(b);
        wait_until("a to notice b is gone", || !a.neighbors()[0].online);
        for i in 0..10 {
            a.send_message("b", Message::new(format!("during-{i}"), vec![1u8; 100_000]))
                .unwrap();
        }
        let mut cb = config("b");
        cb.listen = addr.to_string();
        let b2 = start_with(cb, on);
        let done = collect(&a.completions(), 10);
        assert!(done.iter().all(|c| c.is_acked()), "{done:?}");
        let got: HashSet<String> = (0..10)
            .map(|_| b2.deliveries().recv_timeout(PATIENCE).unwrap().hash)
            .collect();
        assert_eq!(got.len(), 10);
        assert!(a.neighbors()[0].online);
    }
}

on_both! {
    /// Every node of a full mesh shuts down while all of them are sending 512 KiB messages: every
    /// accepted send completes exactly once, as `Acked` or `Failed(Shutdown)`.
    fn whole_cluster_shut_down_while_sending(on) {
        let nodes: Vec<_> = (0..4).map(|i| start(&format!("n{i}"), on)).collect();
        mesh(&nodes);
        let payload = Bytes::from(vec![3u8; 512 * 1024]);
        let accepted: Vec<usize> = std::thread::scope(|s| {
            let mut senders = Vec::new();
            for (i, node) in nodes.iter().enumerate() {
                let payload = payload.clone();
                senders.push(s.spawn(move || {
                    let mut ok = 0;
                    for k in 0.. {
                        let target = format!("n{}", (i + 1 + k % 3) % 4);
                        match node.send_message(&target, Message::new(format!("{k}"), payload.clone()))
                        {
                            Ok(_) => ok += 1,
                            Err(Error::Shutdown) => break,
                            Err(e) => panic!("{e}"),
                        }
                    }
                    ok
                }));
            }
            std::thread::sleep(Duration::from_millis(400));
            for node in &nodes {
                s.spawn(move || node.shutdown());
            }
            senders.into_iter().map(|h| h.join().unwrap()).collect()
        });
        for (node, n) in nodes.iter().zip(accepted) {
            let done = collect(&node.completions(), n);
            for c in &done {
                assert!(
                    c.is_acked() || c.outcome == Outcome::Failed(FailReason::Shutdown),
                    "{c:?}"
                );
            }
            assert_quiet(&node.completions());
            assert_eq!(node.stats().in_flight, 0);
            assert_eq!(node.stream_threads(), 0);
        }
    }
}

/// A receiver process is killed (SIGKILL, no shutdown) while messages stream to it, then
/// restarted on the same address. Every message ends `Acked` after retransmission, none is
/// missing, and no incarnation delivers a message twice. (Across the crash a message can be
/// delivered once by each incarnation: the seen-cache lives in memory.)
#[test]
fn receiver_process_killed_and_restarted() {
    use std::io::{BufRead, BufReader};
    use std::process::{Child, Command, Stdio};

    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let spawn_b = || -> (Child, crossbeam_channel::Receiver<String>) {
        let mut child = Command::new(env!("CARGO_BIN_EXE_gossip"))
            .args([
                "node",
                "--id",
                "b",
                "--listen",
                &format!("127.0.0.1:{port}"),
            ])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let (tx, rx) = crossbeam_channel::unbounded();
        let out = child.stdout.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        let first = rx.recv_timeout(PATIENCE).expect("b starts");
        assert!(first.starts_with("listening"), "{first}");
        (child, rx)
    };
    let delivered = |lines: &crossbeam_channel::Receiver<String>| -> Vec<String> {
        lines
            .try_iter()
            .filter(|l| l.starts_with("delivered"))
            .filter_map(|l| {
                l.split(' ')
                    .find_map(|w| w.strip_prefix("hash="))
                    .map(String::from)
            })
            .collect()
    };

    let f = factory();
    let a = start("a", &f);
    let (mut b1, b1_lines) = spawn_b();
    a.connect_to_neighbor(NeighborInfo::new("b", format!("127.0.0.1:{port}")))
        .unwrap();
    const N: usize = 200;
    let payload = Bytes::from(vec![5u8; 64 * 1024]);
    let (done, b2) = std::thread::scope(|s| {
        s.spawn(|| {
            for i in 0..N {
                a.send_message("b", Message::new(format!("m{i}"), payload.clone()))
                    .unwrap();
                std::thread::sleep(Duration::from_millis(2));
            }
        });
        let completions = a.completions();
        let mut done = Vec::new();
        while done.len() < 50 {
            done.push(completions.recv_timeout(PATIENCE).unwrap());
        }
        b1.kill().unwrap(); // SIGKILL: no shutdown, no goodbye
        b1.wait().unwrap();
        std::thread::sleep(Duration::from_millis(300));
        let b2 = spawn_b();
        while done.len() < N {
            done.push(completions.recv_timeout(PATIENCE).unwrap());
        }
        (done, b2)
    });
    let (mut b2, b2_lines) = b2;
    assert!(
        done.iter().all(|c| c.is_acked()),
        "{:?}",
        done.iter().find(|c| !c.is_acked())
    );
    // Give b2 a moment to print what it delivered, then stop it cleanly.
    std::thread::sleep(Duration::from_millis(300));
    let first = delivered(&b1_lines);
    let second = delivered(&b2_lines);
    for (name, hashes) in [("first", &first), ("second", &second)] {
        let unique: HashSet<&String> = hashes.iter().collect();
        assert_eq!(
            unique.len(),
            hashes.len(),
            "{name} incarnation delivered a message twice"
        );
    }
    let all: HashSet<&String> = first.iter().chain(second.iter()).collect();
    assert_eq!(all.len(), N, "every message reached b");
    let _ = Command::new("kill")
        .args(["-TERM", &b2.id().to_string()])
        .status();
    assert!(b2.wait().unwrap().success());
}

/// The connection goes silent (packets vanish; no FIN, no RST): HTTP/2 keepalive notices within
/// about keepalive_time + keepalive_timeout, the node reconnects, and what was swallowed is sent
/// again.
#[test]
fn silently_dead_connection_is_noticed_by_keepalive() {
    let f = grpc_gossip::StreamFactory::new(grpc_gossip::TransportConfig {
        keepalive_time: Duration::from_millis(500),
        keepalive_timeout: Duration::from_millis(500),
        ..Default::default()
    });
    let mut ca = config("a");
    ca.ack_timeout = Duration::from_secs(60); // so that only keepalive can notice
    let (a, b, proxy) = linked_through_proxy(&f, ca);
    let events = a.events();
    assert!(matches!(
        events.recv_timeout(PATIENCE).unwrap(),
        NeighborEvent::Up { .. }
    ));
    proxy.freeze();
    let frozen_at = Instant::now();
    for i in 0..5 {
        a.send_message("b", Message::new(format!("m{i}"), vec![7u8; 1000]))
            .unwrap();
    }
    let down = loop {
        match events.recv_timeout(PATIENCE).expect("keepalive notices") {
            NeighborEvent::Down { reason, .. } => break reason,
            _ => continue,
        }
    };
    let noticed = frozen_at.elapsed();
    assert!(
        noticed < Duration::from_secs(15),
        "noticed after {noticed:?}: {down}"
    );
    proxy.thaw();
    let done = collect(&a.completions(), 5);
    assert!(done.iter().all(|c| c.is_acked()), "{done:?}");
    assert!(
        done.iter().any(|c| c.attempts > 1),
        "the swallowed messages were sent again"
    );
    let got: HashSet<String> = (0..5)
        .map(|_| b.deliveries().recv_timeout(PATIENCE).unwrap().hash)
        .collect();
    assert_eq!(got.len(), 5);
}

/// An application `NeighborStore` that takes its time (a database, say) when a link goes down.
struct SlowStore {
    inner: grpc_gossip::MemoryNeighborStore,
    delay: Duration,
}

impl grpc_gossip::NeighborStore for SlowStore {
    fn upsert(&self, info: grpc_gossip::NeighborInfo) {
        self.inner.upsert(info)
    }
    fn get(&self, node_hash: &str) -> Option<grpc_gossip::NeighborInfo> {
        self.inner.get(node_hash)
    }
    fn remove(&self, node_hash: &str) -> Option<grpc_gossip::NeighborInfo> {
        self.inner.remove(node_hash)
    }
    fn set_online(&self, node_hash: &str, online: bool) -> bool {
        if !online {
            std::thread::sleep(self.delay);
        }
        self.inner.set_online(node_hash, online)
    }
    fn list(&self) -> Vec<grpc_gossip::NeighborInfo> {
        self.inner.list()
    }
}

/// The application's store is called off the manager thread: while it blocks on a link that
/// went down, messages from other peers are still delivered and ACKed.
#[test]
fn a_slow_neighbor_store_does_not_hold_up_messages() {
    let f = factory();
    let store = SlowStore {
        inner: Default::default(),
        delay: Duration::from_secs(4),
    };
    let a = grpc_gossip::Node::builder(config("a"))
        .factory(f.clone())
        .neighbor_store(Box::new(store))
        .start()
        .unwrap();
    let b = start("b", &f);
    let c = start("c", &f);
    connect(&a, &b);
    connect(&c, &a);
    // b goes away: a's link to it goes down at once (its streams end), and the store blocks
    // on it for 4 s (the `Down` event comes after the store, so it cannot be waited for here).
    b.shutdown();
    std::thread::sleep(Duration::from_millis(500));
    let sent = std::time::Instant::now();
    c.send_message("a", Message::new("meanwhile", "x")).unwrap();
    let done = c.completions().recv_timeout(PATIENCE).unwrap();
    assert!(done.is_acked(), "{done:?}");
    assert!(
        sent.elapsed() < Duration::from_secs(3),
        "ACKed in {:?} while the store blocked for 4 s",
        sent.elapsed()
    );
}
