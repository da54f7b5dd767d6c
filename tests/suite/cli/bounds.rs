//! More bounds against hostile peers, each on a separate `gossip node` process (so that its
//! memory and threads are its own): broadcasts beyond the byte budget are refused, incoming
//! calls beyond the stream caps are refused before a thread is spent on them, and in both
//! cases the node comes back to its size once the attacker leaves while a good peer is served
//! all along. (`budgets.rs` has the same for partly received messages.)

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::executor::block_on;
use futures::{SinkExt, StreamExt};
use grpc_gossip::proto::{AckStatus, FrameKind, GossipClient, GossipMessage};
use grpc_gossip::{Limits, Message, NeighborInfo, Node, NodeConfig, StreamFactory};
use grpcio::{CallOption, ChannelBuilder, MetadataBuilder, RpcStatusCode, WriteFlags};

use super::budgets::{refusals, rss, settled_rss, start_receiver, MIB};
use super::{silent, temp_dir};

/// Headers of a client that claims `id` and announces `features`.
fn claiming(id: &str, features: &str) -> CallOption {
    let mut md = MetadataBuilder::new();
    md.add_str("gossip-node-id", id).unwrap();
    md.add_str("gossip-features", features).unwrap();
    CallOption::default().headers(md.build())
}

/// The threads of process `pid`.
fn threads(pid: u32) -> usize {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("Threads:"))
        .and_then(|v| v.trim().parse().ok())
        .expect("Threads")
}

/// A node of ours in this process, linked to `r` and proven with one ACKed message.
fn good_peer(listen: &str) -> Node {
    let mut c = NodeConfig::new("good", "127.0.0.1:0");
    c.limits = Limits {
        max_payload_bytes: MIB,
        ..Limits::default()
    };
    let good = Node::builder(c)
        .factory(StreamFactory::shared())
        .start()
        .unwrap();
    good.connect_to_neighbor(NeighborInfo::new("r", listen))
        .unwrap();
    send_and_wait(&good, "warm-up");
    good
}

/// Sends a 64 KiB message to `r` and asserts that it is ACKed.
fn send_and_wait(good: &Node, hash: &str) {
    good.send_message("r", Message::new(hash, vec![1u8; 64 * 1024]))
        .unwrap();
    let done = good
        .completions()
        .recv_timeout(Duration::from_secs(60))
        .unwrap();
    assert_eq!(done.key.hash, hash);
    assert!(done.is_acked(), "{done:?}");
}

fn client(listen: &str) -> GossipClient {
    let env = Arc::new(grpcio::EnvBuilder::new().cq_count(1).build());
    let channel = ChannelBuilder::new(env)
        .max_send_message_len(4 * MIB as i32)
        .connect(listen);
    GossipClient::new(channel)
}

#[test]
fn held_broadcasts_stay_within_their_byte_budget() {
    const BUDGET: usize = 16 * MIB;
    const SENT: usize = 128;
    let dir = temp_dir("bounds-broadcast");
    // A neighbour that reads and never answers keeps every broadcast converging (held) until
    // its deadline; without one they would finish at once and only linger, and lingering
    // payloads give way to new broadcasts.
    let (mut quiet, quiet_addr) = silent::start(&StreamFactory::shared());
    let (r, listen, metrics) = start_receiver(
        &dir,
        &format!(
            "[broadcast]\nheld_budget = \"16MiB\"\n[[peers]]\nid = \"quiet\"\n\
             endpoint = {quiet_addr:?}\n"
        ),
    );
    let pid = r.0.id();
    let good = good_peer(&listen);
    // Past the wait for the quiet neighbour's handshake, after which it counts as an original.
    std::thread::sleep(Duration::from_millis(2500));
    let before = rss(pid);

    // An attacker starts 128 broadcasts of 1 MiB (8 times the budget) as fast as it can,
    // each with the largest hop limit and time budget the wire allows.
    let features = "batch,broadcast,chunk,confirm";
    let client = client(&listen);
    let (_acks, mut answers) = client.ack_stream_opt(claiming("evil", features)).unwrap();
    let (mut messages, _message_answers) = client
        .message_stream_opt(claiming("evil", features))
        .unwrap();
    let payload = Bytes::from(vec![7u8; MIB]);
    for i in 0..SENT {
        let mut m = GossipMessage::new();
        m.kind = FrameKind::BROADCAST;
        m.origin = "evil".into();
        m.from_hash = "evil".into();
        m.hash = format!("b{i}");
        m.hop_limit = u32::MAX;
        m.budget_ms = u32::MAX;
        m.payload = payload.clone();
        block_on(messages.send((m, WriteFlags::default()))).unwrap();
    }
    // Every broadcast is answered: refused with the reason at once, or taken (answered when it
    // times out at the quiet neighbour, within our own 10 s deadline).
    let (mut taken, mut refused) = (0, 0);
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut during = 0;
    while taken + refused < SENT {
        let left = deadline.saturating_duration_since(Instant::now());
        let next = block_on(futures::future::select(
            answers.next(),
            futures_timer::Delay::new(left),
        ));
        let futures::future::Either::Left((Some(Ok(ack)), _)) = next else {
            break;
        };
        if refused == 0 && ack.status == AckStatus::ACK_REJECTED {
            // The budget is full now: the node holds what it will hold.
            during = rss(pid);
        }
        let mut ack = ack;
        // Answers to a peer that announced `batch` come packed.
        let batch = ack.take_batch().into_vec();
        for ack in std::iter::once(ack).chain(batch).filter(|a| a.broadcast) {
            match ack.status {
                AckStatus::ACK_REJECTED => {
                    assert!(ack.detail.contains("payloads held"), "{}", ack.detail);
                    refused += 1;
                }
                _ => taken += 1,
            }
        }
    }
    if taken + refused < SENT {
        let (_, text) = super::operations::http_get(&metrics, "/metrics");
        let counted: Vec<&str> = text
            .lines()
            .filter(|l| !l.starts_with('#') && !l.ends_with(" 0"))
            .collect();
        panic!(
            "{taken} taken + {refused} refused of {SENT} answered; the node counted:\n{}",
            counted.join("\n")
        );
    }
    assert!(refused > 0, "{taken} taken, none refused");

    // A good peer is served meanwhile.
    send_and_wait(&good, "during");
    let margin = 48 * MIB;
    eprintln!(
        "RSS before {} MiB, under attack {} MiB ({SENT} broadcasts of 1 MiB: {taken} taken, \
         {refused} refused; budget {} MiB)",
        before / MIB,
        during / MIB,
        BUDGET / MIB
    );
    assert!(
        during < before + BUDGET + margin,
        "RSS {during} under attack, {before} before"
    );
    assert!(refusals(&metrics, "broadcast_budget") >= refused as u64);

    drop((messages, answers, client));
    let after = settled_rss(pid, before);
    eprintln!("RSS after the attack {} MiB", after / MIB);
    assert!(
        after < before + 64 * MIB,
        "RSS {after} after, {before} before"
    );
    send_and_wait(&good, "after");
    good.shutdown();
    drop(r);
    let _ = block_on(quiet.shutdown());
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn calls_beyond_the_stream_caps_are_refused_without_a_thread() {
    const PER_PEER: usize = 4;
    const TOTAL: usize = 32;
    const IDS: usize = 16;
    const CALLS: usize = 8;
    let dir = temp_dir("bounds-streams");
    let (r, listen, metrics) = start_receiver(
        &dir,
        &format!("max_streams_per_peer = {PER_PEER}\nmax_inbound_streams = {TOTAL}\n"),
    );
    let pid = r.0.id();
    // The good peer's link holds two of the places.
    let good = good_peer(&listen);
    std::thread::sleep(Duration::from_millis(500));
    let (threads_before, rss_before) = (threads(pid), rss(pid));

    // 16 claimed ids open 8 AckStreams each (4 times the node-wide cap), over two
    // connections, and hold them.
    let clients = [client(&listen), client(&listen)];
    let mut calls = Vec::new();
    for i in 0..IDS {
        for _ in 0..CALLS {
            let id = format!("evil-{i}");
            let c = &clients[i % 2];
            calls.push(c.ack_stream_opt(claiming(&id, "confirm")).unwrap());
        }
    }
    let mut refused = 0;
    for (_, answers) in &mut calls {
        let next = block_on(futures::future::select(
            answers.next(),
            futures_timer::Delay::new(Duration::from_secs(2)),
        ));
        if let futures::future::Either::Left((Some(Err(grpcio::Error::RpcFailure(s))), _)) = next {
            assert_eq!(s.code(), RpcStatusCode::RESOURCE_EXHAUSTED, "{s:?}");
            refused += 1;
        }
    }
    let admitted = TOTAL - 2;
    assert_eq!(
        refused,
        IDS * CALLS - admitted,
        "all beyond the caps refused"
    );
    let by_peer = refusals(&metrics, "peer_streams");
    let in_all = refusals(&metrics, "inbound_streams");
    assert!(by_peer > 0 && in_all > 0, "{by_peer} + {in_all}");
    assert_eq!((by_peer + in_all) as usize, refused);

    send_and_wait(&good, "during");
    let (threads_during, rss_during) = (threads(pid), rss(pid));
    eprintln!(
        "threads before {threads_before}, under attack {threads_during} ({} calls, {admitted} \
         admitted); RSS {} -> {} MiB",
        IDS * CALLS,
        rss_before / MIB,
        rss_during / MIB
    );
    // At most a reader and a writer per admitted call, and a few of gRPC's own.
    assert!(
        threads_during <= threads_before + 2 * admitted + 8,
        "{threads_during} threads under attack, {threads_before} before"
    );
    assert!(rss_during < rss_before + 64 * MIB);

    drop(calls);
    drop(clients);
    let deadline = Instant::now() + Duration::from_secs(10);
    while threads(pid) > threads_before + 2 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    let threads_after = threads(pid);
    assert!(
        threads_after <= threads_before + 2,
        "{threads_after} threads after, {threads_before} before"
    );
    assert!(settled_rss(pid, rss_before) < rss_before + 64 * MIB);
    // The places are free again: a new peer is admitted.
    send_and_wait(&good, "after");
    good.shutdown();
    drop(r);
    std::fs::remove_dir_all(&dir).unwrap();
}
