//! Messaging between real nodes: the seed's tests and the semantics users rely on (exactly one
//! completion, order, dedup, ACK routing, limits). The tests in `on_both!` run twice, over
//! loopback gRPC (`::grpc`) and over the in-memory network (`::memory`); the others need a
//! real gRPC client or socket.

use std::collections::HashSet;
use std::time::Duration;

use crate::common::*;
use bytes::Bytes;
use grpc_gossip::{ConnectFailure, Error, FailReason, Message, Outcome};

on_both! {
    /// The seed's `TwoNodesBasicCommunication`: 15,000 small messages, all ACKed, each
    /// delivered once.
    fn two_nodes_basic_communication(on) {
        let a = start("a", on);
        let b = start("b", on);
        connect(&a, &b);
        connect(&b, &a);
        const N: usize = 15_000;
        let sender = std::thread::scope(|s| {
            let h = s.spawn(|| {
                for i in 0..N {
                    a.send_message("b", Message::new(format!("m{i}"), format!("payload {i}")))
                        .unwrap();
                }
            });
            let done = collect(&a.completions(), N);
            h.join().unwrap();
            done
        });
        assert!(sender.iter().all(|c| c.is_acked()), "every message ACKed");
        let deliveries = b.deliveries();
        let mut seen = HashSet::new();
        for _ in 0..N {
            let d = deliveries.recv_timeout(PATIENCE).unwrap();
            assert_eq!(d.from.as_str(), "a");
            // Sends to one neighbour keep their order.
            assert_eq!(d.hash, format!("m{}", seen.len()));
            assert!(seen.insert(d.hash));
        }
        assert_quiet(&deliveries);
        assert_eq!(a.stats().acked, N as u64);
        assert_eq!(b.stats().delivered, N as u64);
    }
}

on_both! {
    fn bidirectional_sends(on) {
        let a = start("a", on);
        let b = start("b", on);
        connect(&a, &b);
        connect(&b, &a);
        std::thread::scope(|s| {
            for (from, to) in [(&a, "b"), (&b, "a")] {
                s.spawn(move || {
                    for i in 0..500 {
                        from.send_message(to, Message::new(format!("{i}"), vec![7u8; 1024]))
                            .unwrap();
                    }
                });
            }
        });
        for n in [&a, &b] {
            assert!(collect(&n.completions(), 500).iter().all(|c| c.is_acked()));
        }
        // Every send of each side is ACKed, and a receiver counts a delivery before it ACKs.
        for n in [&a, &b] {
            assert_eq!(n.stats().delivered, 500);
        }
    }
}

/// One full seed round: 4 nodes, full mesh, 30 x 512 KiB per directed pair, all 360 ACKed.
#[test]
fn seed_round_four_nodes() {
    use grpc_gossip::bench::{cluster::GossipCluster, Workload};
    let w = Workload::default();
    let cluster = GossipCluster::start(&w, factory()).unwrap();
    let report = cluster.run_round(0);
    assert_eq!(report.expected, 360);
    assert!(report.all_acked(), "problems: {:?}", report.problems);
    for node in cluster.nodes() {
        assert_eq!(node.stats().delivered, 90);
        assert_eq!(node.stats().in_flight, 0);
    }
    cluster.shutdown();
}

on_both! {
    fn duplicate_hash_is_delivered_once_and_acked_again(on) {
        let a = start("a", on);
        let b = start("b", on);
        connect(&a, &b);
        connect(&b, &a);
        let done = a.completions();
        a.send_message("b", Message::new("same", "x")).unwrap();
        let first = collect(&done, 1).remove(0);
        assert_eq!(
            first.outcome,
            Outcome::Acked {
                by: b.id().clone(),
                duplicate: false
            }
        );
        // A retransmission of the same hash: ACKed again, as a duplicate, not delivered again.
        a.send_message("b", Message::new("same", "x")).unwrap();
        let second = collect(&done, 1).remove(0);
        assert_eq!(
            second.outcome,
            Outcome::Acked {
                by: b.id().clone(),
                duplicate: true
            }
        );
        let deliveries = b.deliveries();
        assert_eq!(deliveries.recv_timeout(PATIENCE).unwrap().hash, "same");
        assert_quiet(&deliveries);
    }
}

on_both! {
    /// b has no link to a: its ACKs go back on the response side of the AckStream a opened.
    fn one_way_link_gets_acks_on_the_response_side(on) {
        let a = start("a", on);
        let b = start("b", on);
        connect(&a, &b);
        for i in 0..100 {
            a.send_message("b", Message::new(format!("{i}"), "hi"))
                .unwrap();
        }
        assert!(collect(&a.completions(), 100).iter().all(|c| c.is_acked()));
    }
}

on_both! {
    fn oversized_message_is_refused_and_nothing_else_is_harmed(on) {
        let mut ca = config("a");
        ca.limits.max_payload_bytes = 1024 * 1024;
        // Without chunks (the whole-message limit equal to one frame's).
        ca.limits.max_message_bytes = 1024 * 1024;
        let a = start_with(ca, on);
        let b = start("b", on);
        connect(&a, &b);
        let too_big = Message::new("big", vec![0u8; 1024 * 1024 + 1]);
        match a.send_message("b", too_big) {
            Err(Error::TooLarge { size, limit }) => {
                assert_eq!((size, limit), (1024 * 1024 + 1, 1024 * 1024));
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            a.send_message("b", Message::new("", "x")),
            Err(Error::InvalidId { .. })
        ));
        assert!(matches!(
            a.send_message("b", Message::new("h".repeat(10_000), "x")),
            Err(Error::InvalidId { .. })
        ));
        assert!(matches!(
            a.send_message("nobody", Message::new("x", "x")),
            Err(Error::UnknownNeighbor(_))
        ));
        // The limit itself is fine, and the link still works.
        a.send_message("b", Message::new("ok", vec![1u8; 1024 * 1024]))
            .unwrap();
        assert!(collect(&a.completions(), 1)[0].is_acked());
        assert_eq!(a.stats().sent, 1, "nothing was half-sent");
    }
}

on_both! {
    fn try_send_reports_full_and_send_waits(on) {
        let mut ca = config("a");
        ca.slots = 2;
        let a = start_with(ca, on);
        let b = start("b", on);
        connect(&a, &b);
        let payload = Bytes::from(vec![0u8; 16]);
        // A tight loop outruns the ACKs' round trip, so two slots fill up.
        let mut full = false;
        for i in 0..10_000 {
            match a.try_send_message("b", Message::new(format!("{i}"), payload.clone())) {
                Ok(_) => {}
                Err(Error::Full { slots: 2 }) => {
                    full = true;
                    break;
                }
                Err(e) => panic!("{e}"),
            }
        }
        assert!(full, "a 2-slot store must fill up under a tight loop");
        // A bounded wait ends with Full or succeeds once a slot frees; either way it returns.
        let r = a.send_message_timeout("b", Message::new("late", payload), Duration::from_secs(30));
        assert!(r.is_ok() || matches!(r, Err(Error::Full { .. })));
    }
}

#[test]
fn single_stream_mode_and_plain_client() {
    use futures::executor::block_on;
    use futures::SinkExt;
    use grpc_gossip::proto::{GossipACK, GossipClient, GossipMessage};
    use grpcio::{CallOption, ChannelBuilder, MetadataBuilder, WriteFlags};

    let f = factory();
    let b = start("b", &f);
    let channel = ChannelBuilder::new(f.env().clone()).connect(&b.local_addr().to_string());
    let client = GossipClient::new(channel);

    // Single-stream mode: messages in, ACKs out on the same call; identity from from_hash.
    let (mut tx, mut rx) = client.stream().unwrap();
    for i in 0..3 {
        let mut m = GossipMessage::new();
        m.hash = format!("s{i}");
        m.from_hash = "script".into();
        m.payload = Bytes::from_static(b"hello");
        block_on(tx.send((m, WriteFlags::default()))).unwrap();
    }
    for i in 0..3 {
        let ack: GossipACK = next_within(&mut rx, "an ACK on the Stream call")
            .unwrap()
            .unwrap();
        assert_eq!(ack.hash, format!("s{i}"));
        assert_eq!(ack.from_hash, "b");
    }
    block_on(tx.close()).unwrap();

    // A plain client with no server of its own: header identity, messages on a MessageStream,
    // ACKs on the response side of its AckStream.
    let opt = || {
        let mut md = MetadataBuilder::new();
        md.add_str("gossip-node-id", "tool").unwrap();
        CallOption::default().headers(md.build())
    };
    let (mut acks_tx, mut acks_rx) = client.ack_stream_opt(opt()).unwrap();
    let (mut msgs_tx, _msgs_rx) = client.message_stream_opt(opt()).unwrap();
    for i in 0..5 {
        let mut m = GossipMessage::new();
        m.hash = format!("t{i}");
        m.payload = Bytes::from_static(b"x");
        block_on(msgs_tx.send((m, WriteFlags::default()))).unwrap();
    }
    let mut got: Vec<String> = (0..5)
        .map(|_| next_within(&mut acks_rx, "an ACK").unwrap().unwrap().hash)
        .collect();
    got.sort();
    assert_eq!(got, ["t0", "t1", "t2", "t3", "t4"]);
    let froms: Vec<String> = (0..8)
        .map(|_| {
            b.deliveries()
                .recv_timeout(PATIENCE)
                .unwrap()
                .from
                .to_string()
        })
        .collect();
    assert_eq!(froms.iter().filter(|f| *f == "script").count(), 3);
    assert_eq!(froms.iter().filter(|f| *f == "tool").count(), 5);
    block_on(msgs_tx.close()).unwrap();
    block_on(acks_tx.close()).unwrap();
}

#[test]
fn peer_over_the_grpc_limit_gets_resource_exhausted() {
    use futures::executor::block_on;
    use futures::{SinkExt, StreamExt};
    use grpc_gossip::proto::{GossipClient, GossipMessage};
    use grpcio::{ChannelBuilder, RpcStatusCode, WriteFlags};

    let f = grpc_gossip::StreamFactory::new(grpc_gossip::TransportConfig {
        max_grpc_message_bytes: 256 * 1024,
        ..Default::default()
    });
    let mut cb = config("b");
    cb.limits.max_payload_bytes = 128 * 1024;
    let b = start_with(cb, &f);
    let mut ca = config("a");
    ca.limits.max_payload_bytes = 128 * 1024;
    let a = start_with(ca, &f);
    connect(&a, &b);
    // A raw client that allows itself to send far more than b accepts.
    let channel = ChannelBuilder::new(f.env().clone())
        .max_send_message_len(64 * 1024 * 1024)
        .connect(&b.local_addr().to_string());
    let client = GossipClient::new(channel);
    let (mut tx, mut rx) = client.stream().unwrap();
    let mut m = GossipMessage::new();
    m.hash = "huge".into();
    m.from_hash = "raw".into();
    m.payload = Bytes::from(vec![0u8; 1024 * 1024]);
    let _ = block_on(tx.send((m, WriteFlags::default())));
    match block_on(rx.next()) {
        Some(Err(grpcio::Error::RpcFailure(status))) => {
            assert_eq!(status.code(), RpcStatusCode::RESOURCE_EXHAUSTED)
        }
        other => panic!("expected RESOURCE_EXHAUSTED, got {other:?}"),
    }
    // b keeps serving everyone else.
    a.send_message("b", Message::new("fine", vec![0u8; 1000]))
        .unwrap();
    assert!(collect(&a.completions(), 1)[0].is_acked());
    assert_eq!(b.deliveries().recv_timeout(PATIENCE).unwrap().hash, "fine");
}

on_both! {
    fn disconnect_with_messages_in_flight_completes_every_one(on) {
        let a = start("a", on);
        let b = start("b", on);
        connect(&a, &b);
        let payload = Bytes::from(vec![0u8; 256 * 1024]);
        let mut sent = 0;
        for i in 0..50 {
            if a.send_message("b", Message::new(format!("{i}"), payload.clone()))
                .is_ok()
            {
                sent += 1;
            }
        }
        a.disconnect_neighbor("b").unwrap();
        let done = collect(&a.completions(), sent);
        for c in &done {
            assert!(
                c.is_acked() || c.outcome == Outcome::Failed(FailReason::Disconnected),
                "{c:?}"
            );
        }
        assert_quiet(&a.completions());
        assert!(matches!(
            a.send_message("b", Message::new("after", "x")),
            Err(Error::UnknownNeighbor(_))
        ));
        // Removed for good: no reconnection brings it back.
        std::thread::sleep(Duration::from_millis(500));
        assert!(a.neighbors().is_empty());
    }
}

on_both! {
    fn peer_gone_for_good_times_out_its_messages_with_attempts(on) {
        let mut ca = config("a");
        ca.ttl = Duration::from_secs(2);
        let a = start_with(ca, on);
        let b = start("b", on);
        connect(&a, &b);
        let events = a.events();
        assert!(matches!(
            events.recv_timeout(PATIENCE).unwrap(),
            grpc_gossip::NeighborEvent::Up { .. }
        ));
        b.shutdown();
        // The link loss is noticed and reported; the node starts reconnecting on its own.
        match events.recv_timeout(PATIENCE).unwrap() {
            grpc_gossip::NeighborEvent::Down { peer, .. } => assert_eq!(peer.as_str(), "b"),
            other => panic!("{other:?}"),
        }
        assert!(!a.neighbors()[0].online);
        assert!(matches!(
            events.recv_timeout(PATIENCE).unwrap(),
            grpc_gossip::NeighborEvent::Reconnecting { attempt: 1, .. }
        ));
        // Sends are still accepted: they wait for the link, within their TTL.
        for i in 0..3 {
            a.send_message("b", Message::new(format!("{i}"), "x"))
                .unwrap();
        }
        for c in collect(&a.completions(), 3) {
            assert_eq!(c.outcome, Outcome::TimedOut, "{c:?}");
            assert_eq!(c.attempts, 0, "never got onto a link");
        }
    }
}

/// Each way a connection fails has its own kind, and the OS's answers come at once instead of
/// after the whole connect timeout.
#[test]
fn connect_failures_are_classified_and_fast_when_the_os_says_so() {
    let f = factory();
    let mut c = config("a");
    c.connect_timeout = Duration::from_secs(30);
    let a = start_with(c, &f);
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let kind_of = |endpoint: String| {
        let started = std::time::Instant::now();
        let r = a.connect_to_neighbor(grpc_gossip::NeighborInfo::new("x", endpoint));
        let took = started.elapsed();
        match r {
            Err(Error::Connect { kind, .. }) => (kind, took),
            other => panic!("{other:?}"),
        }
    };
    let (kind, took) = kind_of(format!("127.0.0.1:{port}"));
    assert_eq!(kind, ConnectFailure::Refused);
    assert!(
        took < Duration::from_secs(20),
        "refused at once, took {took:?}"
    );
    let (kind, took) = kind_of("no-such-host.invalid:7001".into());
    assert_eq!(kind, ConnectFailure::Unresolvable);
    assert!(took < Duration::from_secs(20), "took {took:?}");
    let (kind, _) = kind_of("not an address".into());
    assert_eq!(kind, ConnectFailure::Unresolvable);
    assert!(
        a.neighbors().is_empty(),
        "a failed connect leaves no record"
    );
}

on_both! {
    /// `add_neighbor` returns at once; the node keeps trying, reports each failure, and a message
    /// sent meanwhile waits for the link and is delivered once the neighbour comes up.
    fn add_neighbor_connects_in_the_background(on) {
        let mut c = config("a");
        c.reconnect.initial = Duration::from_millis(20);
        c.reconnect.max = Duration::from_millis(200);
        let a = start_with(c, on);
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let started = std::time::Instant::now();
        a.add_neighbor(grpc_gossip::NeighborInfo::new(
            "b",
            format!("127.0.0.1:{port}"),
        ))
        .unwrap();
        a.send_message("b", Message::new("early", "waits for b"))
            .unwrap();
        assert!(started.elapsed() < Duration::from_secs(5));
        let failure = first_event(&a.events(), |e| match e {
            grpc_gossip::NeighborEvent::Reconnecting { error, .. } => Some(error),
            _ => None,
        });
        assert!(failure.contains("refused"), "{failure}");
        // b comes up at that address: the link follows, and so does the message.
        let mut cb = config("b");
        cb.listen = format!("127.0.0.1:{port}");
        let b = start_with(cb, on);
        let done = a
            .completions()
            .recv_timeout(PATIENCE)
            .expect("a completion");
        assert!(done.is_acked(), "{done:?}");
        let got = b.deliveries().recv_timeout(PATIENCE).expect("delivered");
        assert_eq!(got.hash, "early");
    }
}

on_both! {
    /// A neighbour configured at the address of another node: that node refuses the streams,
    /// saying who it is, and delivers nothing meant for the configured one.
    fn a_wrong_address_never_delivers_to_the_wrong_node(on) {
        let a = start("a", on);
        let r = start("r", on);
        // `q` is expected at r's address.
        let _ = a.connect_to_neighbor(grpc_gossip::NeighborInfo::new(
            "q",
            r.local_addr().to_string(),
        ));
        let _ = a.send_message("q", Message::new("for-q", "not for r"));
        let reason = first_event(&a.events(), |e| match e {
            grpc_gossip::NeighborEvent::Down { reason, .. } => Some(reason),
            _ => None,
        });
        assert!(reason.contains("this is node \"r\", not \"q\""), "{reason}");
        std::thread::sleep(Duration::from_millis(300));
        assert_eq!(r.stats().delivered, 0);
        assert!(r.deliveries().try_recv().is_err());
    }
}

/// The `batch` extension on the wire: a peer that announces it gets merged ACKs and may send
/// several messages in one gRPC message; one that does not never sees a batch.
#[test]
fn batches_only_for_peers_that_announce_them() {
    use futures::executor::block_on;
    use futures::SinkExt;
    use grpc_gossip::proto::{GossipClient, GossipMessage};
    use grpcio::{CallOption, ChannelBuilder, MetadataBuilder, WriteFlags};

    let f = factory();
    let b = start("b", &f);
    let channel = ChannelBuilder::new(f.env().clone()).connect(&b.local_addr().to_string());
    let client = GossipClient::new(channel);
    let opt = |id: &str, features: Option<&str>| {
        let mut md = MetadataBuilder::new();
        md.add_str("gossip-node-id", id).unwrap();
        if let Some(f) = features {
            md.add_str("gossip-features", f).unwrap();
        }
        CallOption::default().headers(md.build())
    };
    const N: usize = 2000;
    for (id, features) in [("modern", Some("batch")), ("original", None)] {
        let (_acks_tx, mut acks_rx) = client.ack_stream_opt(opt(id, features)).unwrap();
        let (mut tx, _rx) = client.message_stream_opt(opt(id, features)).unwrap();
        // Sent packed: one gRPC message carrying N messages (a modern peer may do this).
        let mut head = GossipMessage::new();
        head.hash = format!("{id}-0");
        for i in 1..N {
            let mut m = GossipMessage::new();
            m.hash = format!("{id}-{i}");
            m.payload = Bytes::from_static(b"x");
            head.batch.push(m);
        }
        block_on(tx.send((head, WriteFlags::default()))).unwrap();
        let (mut acked, mut frames, mut merged) = (0, 0, false);
        while acked < N {
            let ack = next_within(&mut acks_rx, "a batched ACK").unwrap().unwrap();
            frames += 1;
            merged |= !ack.batch.is_empty();
            acked += ack.batch.len();
            if ack.hash.is_empty() && !ack.features.is_empty() {
                // The handshake that answers a client announcing features (ACKs may ride in
                // its batch, like in any other ACK's).
                assert!(
                    features.is_some(),
                    "{id}: handshake only for feature clients"
                );
            } else {
                acked += 1;
            }
        }
        assert_eq!(acked, N, "{id}");
        if features.is_some() {
            assert!(
                merged && frames < N,
                "{id}: ACKs merged into {frames} frames"
            );
        } else {
            assert!(!merged && frames == N, "{id}: never a batch");
        }
    }
    // Both peers' messages were unpacked and delivered, in order.
    let got: Vec<String> = (0..2 * N)
        .map(|_| b.deliveries().recv_timeout(PATIENCE).unwrap().hash)
        .collect();
    for id in ["modern", "original"] {
        let mine: Vec<&String> = got.iter().filter(|h| h.starts_with(id)).collect();
        assert_eq!(mine.len(), N);
        assert!(mine
            .iter()
            .enumerate()
            .all(|(i, h)| **h == format!("{id}-{i}")));
    }
}

on_both! {
    /// A message larger than one frame's limit travels in chunks and arrives whole, ACKed once.
    fn large_messages_travel_in_chunks(on) {
        let mut ca = config("a");
        ca.peer_max_bytes = 1 << 30;
        let a = start_with(ca, on);
        let b = start("b", on);
        connect(&a, &b);
        connect(&b, &a);
        let size = 100 * 1024 * 1024; // above the 64 MiB frame limit
        let payload: Bytes = (0..size)
            .map(|i| (i % 251) as u8)
            .collect::<Vec<u8>>()
            .into();
        a.send_message("b", Message::new("big", payload.clone()))
            .unwrap();
        let done = a.completions().recv_timeout(PATIENCE).unwrap();
        assert!(done.is_acked(), "{done:?}");
        assert_eq!(done.attempts, 1);
        let got = b.deliveries().recv_timeout(PATIENCE).unwrap();
        assert_eq!(got.hash, "big");
        assert!(got.payload == payload, "the same bytes, in order");
        assert_quiet(&b.deliveries());
        assert_eq!(b.stats().received, 1, "one message, however many chunks");
    }
}

on_both! {
    /// Payloads written into `PayloadBuf`s (framed in place), large plain ones (encoded once
    /// when sent) and messages whose frame no longer matches them all arrive with their
    /// bytes; one declined by the receiver goes again, from the same frame.
    fn payloads_framed_in_place_arrive_intact_and_go_again_as_they_are(on) {
        use std::io::Write;
        let a = start("a", on);
        let mut cb = config("b");
        cb.deliveries = grpc_gossip::Deliveries::Confirmed(8);
        let b = start_with(cb, on);
        connect(&a, &b);
        let pattern = |seed: usize, len: usize| -> Vec<u8> {
            (0..len).map(|i| ((i * 7 + seed) % 251) as u8).collect()
        };
        let mut expected = Vec::new();
        // Framed in place, with 4, 3, 2, 1 and 0 bytes of header room to spare, and 1 short.
        for (i, hash_len) in [1usize, 40, 115, 116, 117, 118, 119, 120].iter().enumerate() {
            let hash = format!("{i}{}", "h".repeat(hash_len - 1));
            let body = pattern(i, 100_000 + i);
            let mut buf = grpc_gossip::PayloadBuf::with_capacity(body.len());
            buf.write_all(&body).unwrap();
            a.send_message("b", a.message(hash.clone(), buf)).unwrap();
            expected.push((hash, body));
        }
        // An id too long for the header room: still sent, with a copy.
        let long = "L".repeat(200);
        let body = pattern(50, 70_000);
        let buf = grpc_gossip::PayloadBuf::from(&body[..]);
        a.send_message("b", a.message(long.clone(), buf)).unwrap();
        expected.push((long, body));
        // Plain `Bytes`, large and small (encoded by protobuf in the writer).
        for (hash, len) in [("plain-big", 300_000), ("plain-small", 100)] {
            let body = pattern(60, len);
            a.send_message("b", Message::new(hash, body.clone())).unwrap();
            expected.push((hash.to_owned(), body));
        }
        // Framed, then changed by the application: the frame no longer matches, so neither
        // the old hash nor the old bytes may go out.
        let mut changed = a.message("stale", grpc_gossip::PayloadBuf::from(&pattern(70, 90_000)[..]));
        changed.hash = "renamed".into();
        let body = pattern(71, 80_000);
        changed.payload = body.clone().into();
        a.send_message("b", changed).unwrap();
        expected.push(("renamed".to_owned(), body));

        let deliveries = b.deliveries();
        let mut got = std::collections::HashMap::new();
        let mut declined = false;
        while got.len() < expected.len() {
            let d = deliveries.recv_timeout(PATIENCE).expect("a delivery");
            if !declined && d.hash.starts_with('0') {
                // Not taken: the sender resends it.
                declined = true;
                d.decline();
                continue;
            }
            assert!(got.insert(d.hash.clone(), d.payload.clone()).is_none(), "{} twice", d.hash);
            d.confirm();
        }
        for (hash, body) in &expected {
            let payload = got.get(hash).unwrap_or_else(|| panic!("{hash} not delivered"));
            assert!(payload[..] == body[..], "{hash}: the bytes written");
        }
        let done = collect(&a.completions(), expected.len());
        assert!(done.iter().all(|c| c.is_acked()), "{done:?}");
        let again = done.iter().find(|c| c.key.hash.starts_with('0')).unwrap();
        assert_eq!(again.attempts, 2, "{again:?}");
        assert_quiet(&deliveries);
    }
}

on_both! {
    /// One `SharedPayload` in many messages, to two neighbours: each message goes as its own
    /// header and the one shared tail, and arrives whole; one declined goes again from the
    /// same tail; a small shared payload (batched with others) arrives too.
    fn one_shared_payload_in_many_messages_arrives_whole_in_each(on) {
        let a = start("a", on);
        let mut cb = config("b");
        cb.deliveries = grpc_gossip::Deliveries::Confirmed(8);
        let b = start_with(cb, on);
        let c = start("c", on);
        connect(&a, &b);
        connect(&a, &c);
        let body: Vec<u8> = (0..300_000).map(|i| (i * 13 % 251) as u8).collect();
        let mut buf = grpc_gossip::PayloadBuf::with_capacity(body.len());
        buf.extend_from_slice(&body);
        let shared = grpc_gossip::SharedPayload::from(buf);
        let small = grpc_gossip::SharedPayload::from(&b"small and shared"[..]);
        for peer in ["b", "c"] {
            for i in 0..5 {
                a.send_message(peer, Message::shared(format!("s{i}"), &shared)).unwrap();
            }
            a.send_message(peer, Message::shared("tiny", &small)).unwrap();
        }
        let mut declined = false;
        for (node, peer) in [(&b, "b"), (&c, "c")] {
            let deliveries = node.deliveries();
            let mut got = std::collections::BTreeSet::new();
            while got.len() < 6 {
                let d = deliveries.recv_timeout(PATIENCE).expect("a delivery");
                assert_eq!(d.from.as_str(), "a");
                match d.hash.as_str() {
                    "tiny" => assert_eq!(&d.payload[..], b"small and shared"),
                    hash => assert!(d.payload[..] == body[..], "{peer} {hash}: the bytes sent"),
                }
                if peer == "b" && !declined && d.hash == "s2" {
                    declined = true;
                    d.decline();
                    continue;
                }
                assert!(got.insert(d.hash.clone()), "{peer}: {} twice", d.hash);
                d.confirm();
            }
            assert_quiet(&deliveries);
        }
        let done = collect(&a.completions(), 12);
        assert!(done.iter().all(|c| c.is_acked()), "{done:?}");
        let again = done
            .iter()
            .find(|c| c.key.hash == "s2" && c.key.peer.as_str() == "b")
            .unwrap();
        assert_eq!(again.attempts, 2, "{again:?}");
    }
}

on_both! {
    /// Acknowledged deliveries over gRPC: the ACK waits for the application's confirmation; a
    /// slow application does not look like a dead link; a declined delivery comes again.
    fn confirmed_deliveries_ack_when_the_application_says_so(on) {
        let mut ca = config("a");
        // Far shorter than the application takes to confirm: the receiver's `Pending` answers
        // must keep the link up.
        ca.ack_timeout = Duration::from_millis(300);
        let a = start_with(ca, on);
        let mut cb = config("b");
        cb.deliveries = grpc_gossip::Deliveries::Confirmed(2);
        let b = start_with(cb, on);
        connect(&a, &b);
        for i in 0..3 {
            a.send_message("b", Message::new(format!("m{i}"), "x"))
                .unwrap();
        }
        let deliveries = b.deliveries();
        let first = deliveries.recv_timeout(PATIENCE).expect("delivered");
        let second = deliveries.recv_timeout(PATIENCE).expect("delivered");
        assert!(first.needs_confirmation() && second.needs_confirmation());
        // At most two wait unconfirmed: the third is held back.
        assert!(deliveries.recv_timeout(Duration::from_millis(300)).is_err());
        std::thread::sleep(Duration::from_secs(1));
        assert!(
            a.completions().try_recv().is_err(),
            "no ACK before confirmation"
        );
        assert_eq!(a.stats().stalls, 0, "a slow application is not a dead link");
        assert_eq!(b.stats().awaiting_confirmation, 2);

        first.confirm();
        let done = a
            .completions()
            .recv_timeout(PATIENCE)
            .expect("a completion");
        assert_eq!((done.key.hash.as_str(), done.attempts), ("m0", 1));
        assert!(done.is_acked());

        // Declined (dropped unconfirmed): the sender is asked to send it again, and it comes back.
        assert_eq!(second.hash, "m1");
        drop(second);
        let mut seen = Vec::new();
        while seen.len() < 2 {
            let d = deliveries.recv_timeout(PATIENCE).expect("delivered");
            seen.push(d.hash.clone());
            d.confirm();
        }
        seen.sort();
        assert_eq!(seen, ["m1", "m2"]);
        let mut rest = collect(&a.completions(), 2);
        rest.sort_by(|x, y| x.key.hash.cmp(&y.key.hash));
        assert!(rest.iter().all(|c| c.is_acked()), "{rest:?}");
        assert_eq!(rest[0].attempts, 2, "m1 went twice: {:?}", rest[0]);
        assert_eq!(b.stats().declined, 1);
        assert!(a.stats().retry_answers >= 1);
        assert_eq!(a.stats().stalls, 0);
    }
}

/// Without TLS anyone can claim an id: a stream that claims to be `b` and announces no
/// features must not make `a` treat `b` as an original node (no broadcasts, no chunks).
#[test]
fn a_claimed_id_cannot_downgrade_a_linked_peer() {
    use futures::executor::block_on;
    use futures::SinkExt;
    let f = factory();
    let a = start("a", &f);
    let b = start("b", &f);
    connect(&a, &b);
    connect(&b, &a);
    // Both links up and answered: a knows what b understands from b's handshake.
    a.send_message("b", Message::new("ready", "x")).unwrap();
    assert!(a.completions().recv_timeout(PATIENCE).unwrap().is_acked());
    b.deliveries().recv_timeout(PATIENCE).unwrap();

    let channel = grpcio::ChannelBuilder::new(f.env().clone()).connect(&a.local_addr().to_string());
    let client = grpc_gossip::proto::GossipClient::new(channel);
    let mut md = grpcio::MetadataBuilder::new();
    md.add_str("gossip-node-id", "b").unwrap();
    let call = grpcio::CallOption::default().headers(md.build());
    let (mut tx, _rx) = client.message_stream_opt(call).unwrap();
    let mut m = grpc_gossip::proto::GossipMessage::new();
    m.hash = "from-impostor".into();
    m.from_hash = "b".into();
    block_on(tx.send((m, grpcio::WriteFlags::default()))).unwrap();
    let d = a.deliveries().recv_timeout(PATIENCE).unwrap();
    assert_eq!(d.hash, "from-impostor");

    a.broadcast(Message::new("news", "for everyone")).unwrap();
    let got = b.deliveries().recv_timeout(PATIENCE).unwrap();
    assert_eq!(got.hash, "news");
    assert_eq!(
        got.origin.as_ref().map(|o| o.as_str()),
        Some("a"),
        "still a broadcast, not a plain message"
    );
}

/// A neighbour's own receive limit (for an original node) must leave room for a message.
#[test]
fn a_neighbour_that_could_take_nothing_is_refused() {
    let f = factory();
    let a = start("a", &f);
    let info = grpc_gossip::NeighborInfo::new("b", "127.0.0.1:1").with_max_message(0);
    for result in [a.add_neighbor(info.clone()), a.connect_to_neighbor(info)] {
        match result {
            Err(Error::Config { field, .. }) => assert_eq!(field, "max_message"),
            other => panic!("{other:?}"),
        }
    }
    assert!(a.neighbors().is_empty());
}

/// Sends 100 messages of 1 MiB from `a` to `b`, then one of 64 B; returns where the small one
/// came among `b`'s 101 deliveries (0: first), once every message is ACKed.
fn position_of_a_small_message_after_bulk(lane_max_bytes: usize, on: &dyn Transport) -> usize {
    const BULK: usize = 100;
    let node = |id: &str| {
        let mut c = config(id);
        c.lane_max_bytes = lane_max_bytes;
        start_with(c, on)
    };
    let a = node("a");
    let b = node("b");
    connect(&a, &b);
    connect(&b, &a);
    // One exchange first: its ACK comes after `b`'s features, and only to a peer that
    // announced the lane does a small message take it.
    a.send_message("b", Message::new("hello", "hi")).unwrap();
    assert!(collect(&a.completions(), 1)[0].is_acked());
    assert_eq!(b.deliveries().recv_timeout(PATIENCE).unwrap().hash, "hello");
    let big = Bytes::from(vec![7u8; 1024 * 1024]);
    for i in 0..BULK {
        a.send_message("b", Message::new(format!("bulk{i}"), big.clone()))
            .unwrap();
    }
    a.send_message("b", Message::new("small", vec![1u8; 64]))
        .unwrap();
    let done = collect(&a.completions(), BULK + 1);
    assert!(done.iter().all(|c| c.is_acked()), "every message ACKed");
    let deliveries = b.deliveries();
    let order: Vec<String> = (0..=BULK)
        .map(|_| deliveries.recv_timeout(PATIENCE).unwrap().hash)
        .collect();
    let bulk: Vec<String> = order
        .iter()
        .filter(|h| h.starts_with("bulk"))
        .cloned()
        .collect();
    let expected: Vec<String> = (0..BULK).map(|i| format!("bulk{i}")).collect();
    assert_eq!(bulk, expected, "bulk keeps its order");
    order.iter().position(|h| h == "small").unwrap()
}

on_both! {
    /// The priority lane: a small message sent after 100 MiB of bulk to the same neighbour
    /// does not wait for it (it overtakes most of it), and the bulk keeps its own order.
    fn a_small_message_overtakes_the_bulk_queued_before_it(on) {
        let at = position_of_a_small_message_after_bulk(grpc_gossip::config::DEFAULT_LANE_MAX_BYTES, on);
        assert!(at < 50, "the small message came {at}th of 101");
    }
}

on_both! {
    /// With the lane off, sends to one neighbour keep one order: the small message comes last.
    fn without_the_lane_a_small_message_waits_its_turn(on) {
        assert_eq!(position_of_a_small_message_after_bulk(0, on), 100);
    }
}

on_both! {
    /// A neighbour reached by its address alone: its handshake names it, and from then on it
    /// is a neighbour like any other, both ways.
    fn a_neighbour_is_reached_by_its_address_alone(on) {
        let a = start("a", on);
        let b = start("b", on);
        let id = a
            .connect_to_address(&b.local_addr().to_string())
            .expect("b answers with its id");
        assert_eq!(id.as_str(), "b");
        assert!(a.neighbors().iter().any(|n| n.node_hash == "b" && n.online));
        connect(&b, &a);
        a.send_message("b", Message::new("by-address", "hello"))
            .unwrap();
        assert!(collect(&a.completions(), 1)[0].is_acked());
        let d = b.deliveries().recv_timeout(PATIENCE).unwrap();
        assert_eq!((d.from.as_str(), d.hash.as_str()), ("a", "by-address"));
        // Twice is the same neighbour, not a second link.
        assert_eq!(a.connect_to_address(&b.local_addr().to_string()).unwrap(), id);
        assert_eq!(a.neighbors().len(), 1);
    }
}

on_both! {
    /// Its own address is refused by name; nothing is added.
    fn its_own_address_is_refused(on) {
        let a = start("a", on);
        let err = a
            .connect_to_address(&a.local_addr().to_string())
            .unwrap_err();
        assert!(matches!(&err, Error::InvalidId { reason, .. } if reason.contains("is this node")), "{err}");
        assert!(a.neighbors().is_empty());
    }
}

/// A peer that never sends the handshake (as an original Go node does not) is refused with
/// the reason, within the connect timeout; nothing is added.
#[test]
fn an_address_without_a_handshake_is_refused_with_the_reason() {
    let f = factory();
    let (mut server, addr) = crate::common::silent::start(&f);
    let mut c = config("a");
    c.connect_timeout = Duration::from_millis(1500);
    let a = start_with(c, &f);
    let started = std::time::Instant::now();
    let err = a.connect_to_address(&addr).unwrap_err();
    assert!(
        matches!(&err, Error::Connect { kind: ConnectFailure::Handshake, reason, .. } if reason.contains("no handshake within") && reason.contains("ID=HOST:PORT")),
        "{err}"
    );
    assert!(started.elapsed() < Duration::from_secs(10));
    assert!(a.neighbors().is_empty());
    let _ = futures::executor::block_on(server.shutdown());
}
