//! Deterministic tests of the message state machine: no threads, no network.

use super::*;
use crate::message::Outcome;
use std::collections::HashMap;

const OUT_MSG: StreamId = StreamId(1);
const OUT_ACK: StreamId = StreamId(2);
const IN_MSG: StreamId = StreamId(3);
const IN_ACK: StreamId = StreamId(4);
const SINGLE: StreamId = StreamId(5);
const IN_MSG2: StreamId = StreamId(6);

fn id(s: &str) -> NodeId {
    NodeId::new(s, &Limits::default()).unwrap()
}

fn key(peer: &str, hash: &str) -> MessageKey {
    MessageKey {
        peer: id(peer),
        hash: hash.into(),
    }
}

struct Harness {
    m: MessageManager,
    now: Instant,
}

impl Harness {
    fn new(slots: usize) -> Harness {
        let store = Arc::new(SlotStore::new(slots, Duration::from_secs(10)));
        Harness {
            m: MessageManager::new(
                id("a"),
                store,
                Limits::default(),
                Arc::default(),
                Duration::from_secs(5),
            ),
            now: Instant::now(),
        }
    }

    fn run(&mut self, e: Event) -> Vec<Action> {
        let mut out = Vec::new();
        self.m.handle(e, self.now, &mut out);
        out
    }

    fn open(&mut self, stream: StreamId, peer: &str, kind: StreamKind) -> Vec<Action> {
        self.run(Event::StreamOpened {
            stream,
            peer: id(peer),
            kind,
        })
    }

    fn link(&mut self, peer: &str) {
        self.open(OUT_MSG, peer, StreamKind::OutboundMessages);
        self.open(OUT_ACK, peer, StreamKind::OutboundAcks);
    }

    fn send(&mut self, peer: &str, hash: &str) -> Vec<Action> {
        let k = key(peer, hash);
        self.m
            .store()
            .reserve(&k, 7, self.now, crate::store::Wait::No)
            .unwrap();
        self.run(Event::Send {
            key: k,
            payload: Bytes::from_static(b"payload"),
            frame: None,
        })
    }

    fn ack(&mut self, stream: StreamId, from: &str, hash: &str, status: AckStatus) -> Vec<Action> {
        self.run(Event::AckReceived {
            stream,
            ack: WireAck {
                hash: hash.into(),
                from: from.into(),
                status,
                detail: "because".into(),
            },
        })
    }

    fn receive(&mut self, stream: StreamId, from: &str, hash: &str) -> Vec<Action> {
        self.run(Event::MessageReceived {
            stream,
            message: WireMessage::whole(hash.into(), from.into(), Bytes::from_static(b"hi")),
        })
    }
}

fn completions(actions: &[Action]) -> Vec<(String, Outcome)> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Complete(c) => Some((c.key.hash.clone(), c.outcome.clone())),
            _ => None,
        })
        .collect()
}

fn ack_routes(actions: &[Action]) -> Vec<(StreamId, AckStatus)> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::SendAck { stream, ack } => Some((*stream, ack.status)),
            _ => None,
        })
        .collect()
}

#[test]
fn send_then_ack_completes_once() {
    let mut h = Harness::new(4);
    h.link("b");
    let out = h.send("b", "m1");
    assert!(
        matches!(&out[..], [Action::Transmit { stream: OUT_MSG, message, .. }]
        if message.hash == "m1" && message.from == "a")
    );
    h.now += Duration::from_millis(5);
    let out = h.ack(OUT_ACK, "b", "m1", AckStatus::Received);
    match &out[..] {
        [Action::Complete(c)] => {
            assert_eq!(c.key, key("b", "m1"));
            assert_eq!(
                c.outcome,
                Outcome::Acked {
                    by: id("b"),
                    duplicate: false
                }
            );
            assert_eq!(c.elapsed, Duration::from_millis(5));
        }
        other => panic!("{other:?}"),
    }
    // A second ACK (e.g. after a retransmission) completes nothing.
    assert!(h.ack(IN_ACK, "b", "m1", AckStatus::Duplicate).is_empty());
    assert_eq!(h.m.store().in_flight(), 0);
}

#[test]
fn acks_are_accepted_from_either_direction() {
    let mut h = Harness::new(4);
    h.link("b");
    h.open(IN_ACK, "b", StreamKind::InboundAcks);
    h.send("b", "1");
    h.send("b", "2");
    // One ACK on the response side of our AckStream, one on the AckStream b opened to us.
    assert_eq!(
        completions(&h.ack(OUT_ACK, "b", "1", AckStatus::Received)).len(),
        1
    );
    assert_eq!(
        completions(&h.ack(IN_ACK, "b", "2", AckStatus::Received)).len(),
        1
    );
}

#[test]
fn send_without_link_fails_at_once() {
    let mut h = Harness::new(4);
    let out = h.send("nobody", "m1");
    assert_eq!(
        completions(&out),
        [("m1".into(), Outcome::Failed(FailReason::NotConnected))]
    );
    assert_eq!(h.m.store().in_flight(), 0);
}

#[test]
fn duplicates_are_delivered_once_and_acked_every_time() {
    let mut h = Harness::new(4);
    h.link("b");
    h.open(IN_MSG, "b", StreamKind::InboundMessages);
    let first = h.receive(IN_MSG, "b", "x");
    assert!(matches!(&first[0], Action::Deliver(d) if d.hash == "x" && d.from == id("b")));
    assert_eq!(ack_routes(&first), [(OUT_ACK, AckStatus::Received)]);
    let again = h.receive(IN_MSG, "b", "x");
    assert!(!again.iter().any(|a| matches!(a, Action::Deliver(_))));
    assert_eq!(ack_routes(&again), [(OUT_ACK, AckStatus::Duplicate)]);
}

#[test]
fn ack_route_prefers_our_own_link_then_their_ack_stream() {
    let mut h = Harness::new(4);
    h.open(IN_MSG, "c", StreamKind::InboundMessages);
    h.open(IN_ACK, "c", StreamKind::InboundAcks);
    // No link of ours to c: answer on the response side of c's AckStream.
    assert_eq!(
        ack_routes(&h.receive(IN_MSG, "c", "1")),
        [(IN_ACK, AckStatus::Received)]
    );
    // Once we have our own AckStream to c, use it (what the original Go nodes expect).
    h.open(OUT_MSG, "c", StreamKind::OutboundMessages);
    h.open(OUT_ACK, "c", StreamKind::OutboundAcks);
    assert_eq!(
        ack_routes(&h.receive(IN_MSG, "c", "2")),
        [(OUT_ACK, AckStatus::Received)]
    );
}

#[test]
fn a_second_ack_stream_under_the_same_id_closes_nothing() {
    let mut h = Harness::new(4);
    h.open(IN_MSG, "c", StreamKind::InboundMessages);
    assert!(h.open(IN_ACK, "c", StreamKind::InboundAcks).is_empty());
    // Someone else claiming "c" opens another AckStream: the first one stays open.
    assert!(h
        .open(StreamId(30), "c", StreamKind::InboundAcks)
        .is_empty());
    assert_eq!(
        ack_routes(&h.receive(IN_MSG, "c", "1")),
        [(StreamId(30), AckStatus::Received)]
    );
    // When the newest closes, ACKs go back on the one still open.
    h.run(Event::StreamClosed {
        stream: StreamId(30),
        reason: "gone".into(),
    });
    assert_eq!(
        ack_routes(&h.receive(IN_MSG, "c", "2")),
        [(IN_ACK, AckStatus::Received)]
    );
}

#[test]
fn single_stream_acks_go_back_on_the_same_call() {
    let mut h = Harness::new(4);
    h.link("d");
    h.open(SINGLE, "d", StreamKind::InboundSingle);
    assert_eq!(
        ack_routes(&h.receive(SINGLE, "d", "1")),
        [(SINGLE, AckStatus::Received)]
    );
}

#[test]
fn ack_without_route_waits_for_one_then_expires() {
    let mut h = Harness::new(4);
    h.open(IN_MSG, "e", StreamKind::InboundMessages);
    let out = h.receive(IN_MSG, "e", "1");
    assert!(ack_routes(&out).is_empty(), "no route yet");
    let opened = h.open(IN_ACK, "e", StreamKind::InboundAcks);
    assert_eq!(ack_routes(&opened), [(IN_ACK, AckStatus::Received)]);

    h.open(IN_MSG, "f", StreamKind::InboundMessages);
    h.receive(IN_MSG, "f", "1");
    h.now += Duration::from_secs(11);
    h.run(Event::Tick);
    assert!(ack_routes(&h.open(StreamId(9), "f", StreamKind::InboundAcks)).is_empty());
}

#[test]
fn mismatched_sender_is_rejected_and_rejection_fails_the_send() {
    let mut h = Harness::new(4);
    h.link("b");
    h.open(IN_MSG, "b", StreamKind::InboundMessages);
    let out = h.receive(IN_MSG, "mallory", "1");
    assert!(!out.iter().any(|a| matches!(a, Action::Deliver(_))));
    assert_eq!(ack_routes(&out), [(OUT_ACK, AckStatus::Rejected)]);

    h.send("b", "m");
    let out = h.ack(OUT_ACK, "b", "m", AckStatus::Rejected);
    assert_eq!(
        completions(&out),
        [(
            "m".into(),
            Outcome::Failed(FailReason::Rejected("because".into()))
        )]
    );
}

#[test]
fn empty_hash_is_dropped_without_ack() {
    let mut h = Harness::new(4);
    h.link("b");
    h.open(IN_MSG, "b", StreamKind::InboundMessages);
    assert!(h.receive(IN_MSG, "b", "").is_empty());
}

#[test]
fn ttl_expiry_times_out_and_late_ack_is_ignored() {
    let mut h = Harness::new(4);
    h.link("b");
    h.send("b", "slow");
    h.now += Duration::from_secs(9);
    assert!(completions(&h.run(Event::Tick)).is_empty());
    h.now += Duration::from_secs(1);
    assert_eq!(
        completions(&h.run(Event::Tick)),
        [("slow".into(), Outcome::TimedOut)]
    );
    assert!(h.ack(OUT_ACK, "b", "slow", AckStatus::Received).is_empty());
}

fn transmitted(actions: &[Action]) -> Vec<(StreamId, String)> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Transmit {
                stream, message, ..
            } => Some((*stream, message.hash.clone())),
            _ => None,
        })
        .collect()
}

#[test]
fn link_loss_keeps_messages_and_the_next_link_sends_them_again_in_order() {
    let mut h = Harness::new(8);
    h.link("b");
    for m in ["1", "2", "3"] {
        h.send("b", m);
    }
    h.ack(OUT_ACK, "b", "2", AckStatus::Received);
    let out = h.run(Event::StreamClosed {
        stream: OUT_MSG,
        reason: "reset".into(),
    });
    assert!(out.contains(&Action::CloseStream(OUT_ACK)));
    assert!(out
        .iter()
        .any(|a| matches!(a, Action::LinkDown { peer, stream: OUT_MSG, .. } if *peer == id("b"))));
    assert!(completions(&out).is_empty(), "nothing fails on a link loss");
    assert!(!h.m.is_linked(&id("b")));

    // Sent while the link is down: waits.
    assert!(h.send("b", "4").is_empty());
    assert_eq!(h.m.outstanding_to(&id("b")), 3);

    // The next link gets everything unacknowledged, in send order.
    let out = h.open(StreamId(20), "b", StreamKind::OutboundMessages);
    let again: Vec<String> = transmitted(&out).into_iter().map(|(_, m)| m).collect();
    assert_eq!(again, ["1", "3", "4"]);
    h.open(StreamId(21), "b", StreamKind::OutboundAcks);
    let done = h.ack(StreamId(21), "b", "1", AckStatus::Duplicate);
    match &done[..] {
        [Action::Complete(c)] => {
            assert_eq!(c.attempts, 2, "sent, lost, sent again");
            assert!(matches!(
                c.outcome,
                Outcome::Acked {
                    duplicate: true,
                    ..
                }
            ));
        }
        other => panic!("{other:?}"),
    }
    match &h.ack(StreamId(21), "b", "4", AckStatus::Received)[..] {
        [Action::Complete(c)] => assert_eq!(c.attempts, 1, "first sent on the new link"),
        other => panic!("{other:?}"),
    }
}

#[test]
fn ttl_runs_out_while_the_link_is_down() {
    let mut h = Harness::new(8);
    h.link("b");
    h.send("b", "1");
    h.run(Event::StreamClosed {
        stream: OUT_MSG,
        reason: "reset".into(),
    });
    h.now += Duration::from_secs(10);
    match &h.run(Event::Tick)[..] {
        [Action::Complete(c)] => {
            assert_eq!(c.outcome, Outcome::TimedOut);
            assert_eq!(c.attempts, 1);
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(h.m.outstanding_to(&id("b")), 0);
}

#[test]
fn a_peer_that_stops_acking_is_torn_down() {
    let mut h = Harness::new(8);
    h.link("b");
    h.send("b", "1");
    h.now += Duration::from_secs(4);
    assert!(h.run(Event::Tick).is_empty());
    h.send("b", "2");
    h.ack(OUT_ACK, "b", "1", AckStatus::Received); // progress resets the clock
    h.now += Duration::from_secs(4);
    assert!(h.run(Event::Tick).is_empty());
    h.now += Duration::from_secs(1);
    let out = h.run(Event::Tick);
    assert!(out.contains(&Action::CloseStream(OUT_MSG)));
    assert!(out.contains(&Action::CloseStream(OUT_ACK)));
    assert!(out.iter().any(|a| matches!(a, Action::LinkDown { .. })));
    assert!(completions(&out).is_empty());
    // An idle link (nothing outstanding) is never "stalled".
    let mut idle = Harness::new(8);
    idle.link("b");
    idle.now += Duration::from_secs(60);
    assert!(idle.run(Event::Tick).is_empty());
}

#[test]
fn superseded_stream_closing_does_not_break_the_new_one() {
    let mut h = Harness::new(4);
    h.link("b");
    let out = h.open(StreamId(7), "b", StreamKind::OutboundMessages);
    assert_eq!(out, [Action::CloseStream(OUT_MSG)]);
    let out = h.run(Event::StreamClosed {
        stream: OUT_MSG,
        reason: "replaced".into(),
    });
    assert!(out.is_empty());
    assert!(h.m.is_linked(&id("b")));
}

#[test]
fn disconnect_and_shutdown_fail_what_is_in_flight() {
    let mut h = Harness::new(8);
    h.link("b");
    h.open(StreamId(11), "c", StreamKind::OutboundMessages);
    h.send("b", "1");
    h.send("c", "2");
    let out = h.run(Event::Disconnect { peer: id("b") });
    assert_eq!(
        completions(&out),
        [("1".into(), Outcome::Failed(FailReason::Disconnected))]
    );
    assert!(out.contains(&Action::CloseStream(OUT_MSG)));
    let out = h.run(Event::Shutdown);
    assert_eq!(
        completions(&out),
        [("2".into(), Outcome::Failed(FailReason::Shutdown))]
    );
    // After a disconnect, sends to b fail until it is connected again.
    let mut h = Harness::new(8);
    h.link("b");
    h.run(Event::Disconnect { peer: id("b") });
    assert_eq!(
        completions(&h.send("b", "x")),
        [("x".into(), Outcome::Failed(FailReason::NotConnected))]
    );
}

#[test]
fn ack_claiming_another_sender_is_ignored() {
    let mut h = Harness::new(4);
    h.link("b");
    h.send("b", "1");
    assert!(h
        .ack(OUT_ACK, "mallory", "1", AckStatus::Received)
        .is_empty());
    assert_eq!(h.m.store().in_flight(), 1);
}

mod property {
    //! For any interleaving of sends, ACKs (right, duplicated, bogus), link losses,
    //! reconnections, disconnects and ticks: exactly one completion per send, and the store
    //! never holds more than its slots.
    use super::*;
    use proptest::prelude::*;

    #[derive(Clone, Debug)]
    enum Op {
        Send(u8),
        AckLatest(u8, bool),
        AckBogus(u8),
        LinkUp(u8),
        LinkLost(u8),
        Disconnect(u8),
        Advance(u8),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            4 => (0u8..3).prop_map(Op::Send),
            4 => ((0u8..3), any::<bool>()).prop_map(|(p, d)| Op::AckLatest(p, d)),
            1 => (0u8..3).prop_map(Op::AckBogus),
            2 => (0u8..3).prop_map(Op::LinkUp),
            1 => (0u8..3).prop_map(Op::LinkLost),
            1 => (0u8..3).prop_map(Op::Disconnect),
            1 => (0u8..30).prop_map(Op::Advance),
        ]
    }

    proptest! {
        #[test]
        fn exactly_one_completion_per_send(ops in prop::collection::vec(op(), 1..200)) {
            const SLOTS: usize = 5;
            let mut h = Harness::new(SLOTS);
            let peers = ["p0", "p1", "p2"];
            let mut next_stream = 100u64;
            let mut out_streams: HashMap<u8, (StreamId, StreamId)> = HashMap::new();
            let mut sent: Vec<MessageKey> = Vec::new();
            let mut completed: HashMap<MessageKey, usize> = HashMap::new();
            let mut seq = 0u32;
            for op in ops {
                let actions = match op {
                    Op::Send(p) => {
                        seq += 1;
                        let k = key(peers[p as usize], &format!("m{seq}"));
                        match h.m.store().reserve(&k, 7, h.now, crate::store::Wait::No) {
                            Ok(_) => {
                                sent.push(k.clone());
                                h.run(Event::Send { key: k, payload: Bytes::new(), frame: None })
                            }
                            Err(_) => Vec::new(),
                        }
                    }
                    Op::AckLatest(p, dup) => {
                        let peer = peers[p as usize];
                        let last = sent.iter().rev().find(|k| k.peer.as_str() == peer).cloned();
                        match (last, out_streams.get(&p)) {
                            (Some(k), Some(&(_, ack_stream))) => {
                                let st = if dup { AckStatus::Duplicate } else { AckStatus::Received };
                                h.ack(ack_stream, peer, &k.hash, st)
                            }
                            _ => Vec::new(),
                        }
                    }
                    Op::AckBogus(p) => match out_streams.get(&p) {
                        Some(&(_, s)) => h.ack(s, peers[p as usize], "never-sent", AckStatus::Received),
                        None => Vec::new(),
                    },
                    Op::LinkUp(p) => {
                        let (m, a) = (StreamId(next_stream), StreamId(next_stream + 1));
                        next_stream += 2;
                        out_streams.insert(p, (m, a));
                        let mut v = h.open(m, peers[p as usize], StreamKind::OutboundMessages);
                        v.extend(h.open(a, peers[p as usize], StreamKind::OutboundAcks));
                        v
                    }
                    Op::LinkLost(p) => match out_streams.remove(&p) {
                        Some((m, _)) => h.run(Event::StreamClosed { stream: m, reason: "cut".into() }),
                        None => Vec::new(),
                    },
                    Op::Disconnect(p) => {
                        out_streams.remove(&p);
                        h.run(Event::Disconnect { peer: id(peers[p as usize]) })
                    }
                    Op::Advance(s) => {
                        h.now += Duration::from_millis(u64::from(s) * 200);
                        h.run(Event::Tick)
                    }
                };
                for a in actions {
                    if let Action::Complete(c) = a {
                        *completed.entry(c.key).or_default() += 1;
                    }
                }
                prop_assert!(h.m.store().in_flight() <= SLOTS);
            }
            for a in h.run(Event::Shutdown) {
                if let Action::Complete(c) = a {
                    *completed.entry(c.key).or_default() += 1;
                }
            }
            prop_assert_eq!(completed.len(), sent.len());
            for k in &sent {
                prop_assert_eq!(completed.get(k).copied(), Some(1), "{}", k);
            }
        }
    }
}

/// A manager whose frames carry at most 8 payload bytes and whose messages at most 64.
fn small_frames(name: &str) -> MessageManager {
    let limits = Limits {
        max_payload_bytes: 8,
        max_id_bytes: 64,
        max_message_bytes: 64,
        partial_bytes: 64,
        peer_partial_bytes: 64,
    };
    let store = Arc::new(SlotStore::new(4, Duration::from_secs(10)));
    MessageManager::new(
        id(name),
        store,
        limits,
        Arc::default(),
        Duration::from_secs(5),
    )
}

/// A message bigger than one frame waits until the peer's support for chunks is known, then
/// goes as in-order slices of one buffer; the receiver reassembles it and ACKs it once.
#[test]
fn chunked_messages_wait_for_the_feature_and_reassemble() {
    let mut a = small_frames("a").with_chunk_bytes(4);
    let now = Instant::now();
    let mut out = Vec::new();
    for (s, kind) in [
        (OUT_MSG, StreamKind::OutboundMessages),
        (OUT_ACK, StreamKind::OutboundAcks),
    ] {
        a.handle(
            Event::StreamOpened {
                stream: s,
                peer: id("b"),
                kind,
            },
            now,
            &mut out,
        );
    }
    let k = key("b", "big");
    a.store()
        .reserve(&k, 10, now, crate::store::Wait::No)
        .unwrap();
    let payload = Bytes::from_static(b"0123456789");
    a.handle(
        Event::Send {
            key: k,
            payload: payload.clone(),
            frame: None,
        },
        now,
        &mut out,
    );
    assert!(out.is_empty(), "waits for the peer's features: {out:?}");
    a.handle(
        Event::PeerFeatures {
            peer: id("b"),
            chunk: true,
            confirm: false,
        },
        now,
        &mut out,
    );
    let chunks: Vec<WireMessage> = out
        .drain(..)
        .map(|x| match x {
            Action::Transmit { message, .. } => message,
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(
        chunks
            .iter()
            .map(|c| (c.offset, c.payload.len()))
            .collect::<Vec<_>>(),
        [(0, 4), (4, 4), (8, 2)]
    );

    // The receiver: chunks in order make one delivery and one ACK.
    let mut b = small_frames("b");
    b.handle(
        Event::StreamOpened {
            stream: IN_MSG,
            peer: id("a"),
            kind: StreamKind::InboundMessages,
        },
        now,
        &mut out,
    );
    b.handle(
        Event::StreamOpened {
            stream: IN_ACK,
            peer: id("a"),
            kind: StreamKind::InboundAcks,
        },
        now,
        &mut out,
    );
    for c in chunks.iter().cloned() {
        b.handle(
            Event::MessageReceived {
                stream: IN_MSG,
                message: c,
            },
            now,
            &mut out,
        );
    }
    let delivered: Vec<&Bytes> = out
        .iter()
        .filter_map(|x| match x {
            Action::Deliver(d) => Some(&d.payload),
            _ => None,
        })
        .collect();
    assert_eq!(delivered, [&payload]);
    assert_eq!(ack_routes(&out).len(), 1, "one ACK for the whole message");
    out.clear();

    // A chunk out of place is refused with a reason, and nothing is delivered.
    b.handle(
        Event::MessageReceived {
            stream: IN_MSG,
            message: chunks[1].clone(),
        },
        now,
        &mut out,
    );
    assert!(!out.iter().any(|x| matches!(x, Action::Deliver(_))));
    assert_eq!(ack_routes(&out), [(IN_ACK, AckStatus::Rejected)]);
}

/// A reassembled message's buffer comes back once the application drops the payload, the
/// next message of its size is put together in it (with none of the old bytes), and an idle
/// node frees it.
#[test]
fn a_delivered_messages_buffer_is_used_again_and_freed_when_idle() {
    let mut b = small_frames("b");
    let now = Instant::now();
    let mut out = Vec::new();
    b.handle(
        Event::StreamOpened {
            stream: IN_MSG,
            peer: id("a"),
            kind: StreamKind::InboundMessages,
        },
        now,
        &mut out,
    );
    let receive = |b: &mut MessageManager, hash: &str, body: &'static [u8]| {
        let mut out = Vec::new();
        for start in (0..body.len()).step_by(4) {
            let end = (start + 4).min(body.len());
            let message = WireMessage {
                hash: hash.into(),
                from: "a".into(),
                payload: Bytes::from_static(&body[start..end]),
                total: body.len() as u64,
                offset: start as u64,
            };
            b.handle(
                Event::MessageReceived {
                    stream: IN_MSG,
                    message,
                },
                now,
                &mut out,
            );
        }
        let mut delivered = out.into_iter().filter_map(|x| match x {
            Action::Deliver(d) => Some(d.payload),
            _ => None,
        });
        let payload = delivered.next().expect("delivered");
        assert!(delivered.next().is_none());
        payload
    };
    let first = receive(&mut b, "one", b"0123456789");
    let at = first.as_ptr();
    assert_eq!(b.recycled_bytes(), 0, "the application holds it");
    drop(first);
    assert_eq!(b.recycled_bytes(), 10);
    let second = receive(&mut b, "two", b"abcdefghij");
    assert_eq!(&second[..], b"abcdefghij");
    assert_eq!(second.as_ptr(), at, "put together in the same buffer");
    assert_eq!(b.recycled_bytes(), 0);
    drop(second);
    b.handle(Event::Tick, now + Duration::from_secs(60), &mut out);
    assert_eq!(b.recycled_bytes(), 0, "freed after waiting idle");
}

/// A peer known not to take chunks gets an oversize message refused, not sent.
#[test]
fn oversize_messages_to_peers_without_chunks_fail_with_a_reason() {
    let mut a = small_frames("a");
    let now = Instant::now();
    let mut out = Vec::new();
    a.handle(
        Event::StreamOpened {
            stream: OUT_MSG,
            peer: id("b"),
            kind: StreamKind::OutboundMessages,
        },
        now,
        &mut out,
    );
    a.handle(
        Event::PeerFeatures {
            peer: id("b"),
            chunk: false,
            confirm: false,
        },
        now,
        &mut out,
    );
    let k = key("b", "big");
    a.store()
        .reserve(&k, 10, now, crate::store::Wait::No)
        .unwrap();
    a.handle(
        Event::Send {
            key: k,
            payload: Bytes::from_static(b"0123456789"),
            frame: None,
        },
        now,
        &mut out,
    );
    match &completions(&out)[..] {
        [(hash, Outcome::Failed(FailReason::Rejected(why)))] => {
            assert_eq!(hash, "big");
            assert!(why.contains("chunked"), "{why}");
        }
        other => panic!("{other:?}"),
    }
}

// Acknowledged deliveries: the receiver's side.

impl Harness {
    fn confirming() -> Harness {
        let mut h = Harness::new(4);
        h.m.confirmed = true;
        h
    }

    fn features(&mut self, peer: &str, confirm: bool) -> Vec<Action> {
        self.run(Event::PeerFeatures {
            peer: id(peer),
            chunk: true,
            confirm,
        })
    }

    fn settle(&mut self, from: &str, hash: &str, taken: bool) -> Vec<Action> {
        self.run(Event::Settled {
            from: id(from),
            hash: hash.into(),
            taken,
        })
    }
}

fn delivered(actions: &[Action]) -> usize {
    actions
        .iter()
        .filter(|a| matches!(a, Action::Deliver(_)))
        .count()
}

#[test]
fn confirmed_delivery_acks_only_on_confirmation() {
    let mut h = Harness::confirming();
    h.open(IN_MSG, "b", StreamKind::InboundMessages);
    h.open(IN_ACK, "b", StreamKind::InboundAcks);
    h.features("b", true);
    let out = h.receive(IN_MSG, "b", "x");
    assert_eq!(delivered(&out), 1);
    assert_eq!(ack_routes(&out), [(IN_ACK, AckStatus::Pending)]);
    assert_eq!(h.m.awaiting_confirmation(), 1);
    // Not seen yet: the seen-cache learns it on confirmation only.
    assert!(!h.m.has_seen(&id("b"), "x", h.now));

    // A retransmission while it waits: neither delivered again nor ACKed as a duplicate.
    let again = h.receive(IN_MSG, "b", "x");
    assert_eq!(delivered(&again), 0);
    assert_eq!(ack_routes(&again), [(IN_ACK, AckStatus::Pending)]);

    let out = h.settle("b", "x", true);
    assert_eq!(ack_routes(&out), [(IN_ACK, AckStatus::Received)]);
    assert_eq!(h.m.awaiting_confirmation(), 0);
    assert!(h.m.has_seen(&id("b"), "x", h.now));

    // After the confirmation a copy is a duplicate, ACKed as such.
    let late = h.receive(IN_MSG, "b", "x");
    assert_eq!(delivered(&late), 0);
    assert_eq!(ack_routes(&late), [(IN_ACK, AckStatus::Duplicate)]);
    // A second answer for the same delivery changes nothing.
    assert!(h.settle("b", "x", true).is_empty());
}

#[test]
fn declined_delivery_asks_for_it_again_and_delivers_the_next_copy() {
    let mut h = Harness::confirming();
    h.open(IN_MSG, "b", StreamKind::InboundMessages);
    h.open(IN_ACK, "b", StreamKind::InboundAcks);
    h.features("b", true);
    h.receive(IN_MSG, "b", "x");
    let out = h.settle("b", "x", false);
    assert_eq!(ack_routes(&out), [(IN_ACK, AckStatus::Retry)]);
    assert!(!h.m.has_seen(&id("b"), "x", h.now));
    // The next copy is a new delivery.
    let out = h.receive(IN_MSG, "b", "x");
    assert_eq!(delivered(&out), 1);
}

#[test]
fn original_peers_get_no_interim_answers() {
    // A peer without the `confirm` feature would read Pending or Retry as a plain ACK.
    let mut h = Harness::confirming();
    h.open(IN_MSG, "go", StreamKind::InboundMessages);
    h.open(IN_ACK, "go", StreamKind::InboundAcks);
    h.features("go", false);
    let out = h.receive(IN_MSG, "go", "x");
    assert_eq!(delivered(&out), 1);
    assert!(ack_routes(&out).is_empty(), "{out:?}");
    h.now += Duration::from_secs(2);
    assert!(ack_routes(&h.run(Event::Tick)).is_empty());
    // Declined: no ACK at all, so the original retransmits after its own timeout.
    assert!(ack_routes(&h.settle("go", "x", false)).is_empty());
    h.receive(IN_MSG, "go", "x");
    let out = h.settle("go", "x", true);
    assert_eq!(ack_routes(&out), [(IN_ACK, AckStatus::Received)]);
}

#[test]
fn single_stream_confirmation_goes_back_on_the_stream_of_the_last_copy() {
    let mut h = Harness::confirming();
    h.open(SINGLE, "c", StreamKind::InboundSingle);
    h.receive(SINGLE, "c", "x");
    let out = h.settle("c", "x", true);
    assert_eq!(ack_routes(&out), [(SINGLE, AckStatus::Received)]);
}

#[test]
fn waiting_senders_are_reminded() {
    let mut h = Harness::confirming();
    h.open(IN_MSG, "b", StreamKind::InboundMessages);
    h.open(IN_ACK, "b", StreamKind::InboundAcks);
    h.features("b", true);
    h.receive(IN_MSG, "b", "x");
    h.receive(IN_MSG, "b", "y");
    assert!(ack_routes(&h.run(Event::Tick)).is_empty(), "not yet");
    h.now += PENDING_REMINDER;
    // One reminder per sender, whatever the number of messages waiting.
    assert_eq!(
        ack_routes(&h.run(Event::Tick)),
        [(IN_ACK, AckStatus::Pending)]
    );
    h.settle("b", "x", true);
    h.settle("b", "y", true);
    h.now += PENDING_REMINDER;
    assert!(ack_routes(&h.run(Event::Tick)).is_empty());
}

// Acknowledged deliveries: the sender's side.

#[test]
fn pending_keeps_the_link_and_retry_sends_again_later() {
    let mut h = Harness::new(4);
    h.link("b");
    h.send("b", "m1");
    // Pending: not completed, and the silence that follows is no stall.
    let out = h.ack(OUT_ACK, "b", "m1", AckStatus::Pending);
    assert!(completions(&out).is_empty());
    h.now += Duration::from_secs(6);
    let out = h.run(Event::Tick);
    assert!(
        !out.iter().any(|a| matches!(a, Action::LinkDown { .. })),
        "{out:?}"
    );
    // Retry: sent again after the delay, on the same link, and then acknowledged.
    let out = h.ack(OUT_ACK, "b", "m1", AckStatus::Retry);
    assert!(completions(&out).is_empty());
    assert!(h.run(Event::Tick).is_empty(), "not before the delay");
    h.now += RETRY_FIRST;
    let out = h.run(Event::Tick);
    let resent: Vec<_> = out
        .iter()
        .filter(
            |a| matches!(a, Action::Transmit { stream: OUT_MSG, message, .. } if message.hash == "m1"),
        )
        .collect();
    assert_eq!(resent.len(), 1, "{out:?}");
    let out = h.ack(OUT_ACK, "b", "m1", AckStatus::Received);
    let done = out
        .iter()
        .find_map(|a| match a {
            Action::Complete(c) => Some(c),
            _ => None,
        })
        .expect("completed");
    assert!(done.is_acked());
    assert_eq!(done.attempts, 2);
}

#[test]
fn retry_delays_grow_and_the_ttl_still_ends_the_message() {
    let mut h = Harness::new(4);
    h.link("b");
    h.send("b", "m1");
    let mut delays = Vec::new();
    for _ in 0..4 {
        h.ack(OUT_ACK, "b", "m1", AckStatus::Retry);
        let start = h.now;
        loop {
            h.now += Duration::from_millis(50);
            if h.run(Event::Tick)
                .iter()
                .any(|a| matches!(a, Action::Transmit { .. }))
            {
                break;
            }
        }
        delays.push(h.now - start);
    }
    assert!(delays.windows(2).all(|w| w[1] > w[0]), "{delays:?}");
    h.ack(OUT_ACK, "b", "m1", AckStatus::Retry);
    h.now += Duration::from_secs(11);
    let out = h.run(Event::Tick);
    assert_eq!(completions(&out), [("m1".to_owned(), Outcome::TimedOut)]);
}

#[test]
fn interim_answers_for_untracked_messages_are_ignored() {
    let mut h = Harness::new(4);
    h.link("b");
    for status in [AckStatus::Pending, AckStatus::Retry] {
        let out = h.ack(OUT_ACK, "b", "nope", status);
        assert!(out.is_empty(), "{out:?}");
    }
}

#[test]
fn claimed_ids_leave_no_state_behind_but_neighbours_stay() {
    let mut h = Harness::new(4);
    // A client that claims an id, opens streams, sends a message and leaves.
    h.open(IN_MSG, "passer-by", StreamKind::InboundMessages);
    h.open(IN_ACK, "passer-by", StreamKind::InboundAcks);
    h.receive(IN_MSG, "passer-by", "x");
    let closed = |h: &mut Harness, stream| {
        h.run(Event::StreamClosed {
            stream,
            reason: "gone".into(),
        })
    };
    assert!(closed(&mut h, IN_MSG).is_empty(), "one stream left");
    let out = closed(&mut h, IN_ACK);
    assert!(
        matches!(&out[..], [Action::Forget { peer }] if *peer == id("passer-by")),
        "{out:?}"
    );
    assert_eq!(h.m.known_peers(), 0);

    // A neighbour whose link breaks is kept: messages to it wait for the link.
    h.link("b");
    h.run(Event::StreamClosed {
        stream: OUT_MSG,
        reason: "cut".into(),
    });
    assert_eq!(h.m.known_peers(), 1);
    let out = h.send("b", "waits");
    assert!(completions(&out).is_empty(), "{out:?}");
    // Removed by the application: gone once its message has failed.
    let out = h.run(Event::Disconnect { peer: id("b") });
    assert!(
        out.iter().any(|a| matches!(a, Action::Forget { .. })),
        "{out:?}"
    );
    assert_eq!(h.m.known_peers(), 0);
}

// What an original node takes: its receive limit.

impl Harness {
    /// A harness whose originals take messages of at most 100 bytes, encoded.
    fn with_original_limit() -> Harness {
        let mut h = Harness::new(8);
        h.m.original_limit = 100;
        h
    }

    fn send_sized(&mut self, peer: &str, hash: &str, size: usize) -> Vec<Action> {
        let k = key(peer, hash);
        self.m
            .store()
            .reserve(&k, size, self.now, crate::store::Wait::No)
            .unwrap();
        self.run(Event::Send {
            key: k,
            payload: Bytes::from(vec![1u8; size]),
            frame: None,
        })
    }

    fn original(&mut self, peer: &str) -> Vec<Action> {
        self.run(Event::PeerFeatures {
            peer: id(peer),
            chunk: false,
            confirm: false,
        })
    }
}

fn too_large(outcome: &Outcome) -> bool {
    matches!(outcome, Outcome::Failed(FailReason::TooLarge(_)))
}

#[test]
fn a_message_over_an_originals_limit_fails_at_once_and_the_rest_go() {
    let mut h = Harness::with_original_limit();
    h.link("b");
    h.original("b");
    // 3 (hash) + 3 (sender) + 2 + 95 bytes encoded: over 100.
    let out = h.send_sized("b", "big", 95);
    match &completions(&out)[..] {
        [(hash, outcome)] => assert!(hash == "big" && too_large(outcome), "{outcome:?}"),
        other => panic!("{other:?}"),
    }
    assert!(transmitted(&out).is_empty());
    let out = h.send_sized("b", "fits", 80);
    assert_eq!(transmitted(&out), [(OUT_MSG, "fits".to_owned())]);
}

#[test]
fn a_message_an_original_could_not_take_waits_for_the_peers_features() {
    let mut h = Harness::with_original_limit();
    h.link("b");
    assert!(h.send_sized("b", "big", 95).is_empty(), "waits");
    // Ours: it goes (whole, as it is below the chunk size).
    let out = h.run(Event::PeerFeatures {
        peer: id("b"),
        chunk: true,
        confirm: false,
    });
    assert_eq!(transmitted(&out), [(OUT_MSG, "big".to_owned())]);

    let mut h = Harness::with_original_limit();
    h.link("c");
    assert!(h.send_sized("c", "big", 95).is_empty(), "waits");
    // An original: it fails, without being sent.
    let out = h.original("c");
    assert!(transmitted(&out).is_empty());
    assert!(matches!(&completions(&out)[..], [(_, o)] if too_large(o)));
}

#[test]
fn resource_exhausted_from_an_original_fails_the_largest_message_and_teaches_its_limit() {
    let mut h = Harness::new(8);
    h.link("b");
    h.original("b");
    h.send_sized("b", "small", 10);
    h.send_sized("b", "large", 3000);
    let out = h.run(Event::StreamClosed {
        stream: OUT_MSG,
        reason: "8-RESOURCE_EXHAUSTED: grpc: received message larger than max (3010 vs. 2000)"
            .into(),
    });
    match &completions(&out)[..] {
        [(hash, outcome)] => assert!(hash == "large" && too_large(outcome), "{outcome:?}"),
        other => panic!("{other:?}"),
    }
    // The link is down; on the next one the small message goes again, and a message as large
    // as the refused one fails at once.
    assert!(out.iter().any(|a| matches!(a, Action::LinkDown { .. })));
    let out = {
        h.link("b");
        h.send_sized("b", "large-again", 3000)
    };
    assert!(matches!(&completions(&out)[..], [(_, o)] if too_large(o)));
    assert_eq!(
        h.m.outstanding_to(&id("b")),
        1,
        "the small one waits for its ACK"
    );
}

#[test]
fn a_neighbours_configured_limit_replaces_the_default_for_it_alone() {
    let mut h = Harness::with_original_limit();
    h.run(Event::NeighborLimit {
        peer: id("b"),
        max_message: Some(300),
    });
    h.link("b");
    h.original("b");
    // 3 + 3 + 3 + 195 bytes encoded: over the default 100, within b's 300.
    let out = h.send_sized("b", "mid", 195);
    assert_eq!(transmitted(&out), [(OUT_MSG, "mid".to_owned())]);
    assert!(completions(&out).is_empty());
    assert_eq!(h.m.original_limit_of(&id("b")), Some(300));
    // c has no limit of its own: the default holds.
    let mut other = Harness::with_original_limit();
    other.link("c");
    other.original("c");
    let out = other.send_sized("c", "mid", 195);
    assert!(
        matches!(&completions(&out)[..], [(_, o)] if too_large(o)),
        "{out:?}"
    );
    assert_eq!(other.m.original_limit_of(&id("c")), Some(100));
    // Over b's own limit: fails at once, with the limit in the reason.
    let out = h.send_sized("b", "huge", 400);
    match &completions(&out)[..] {
        [(_, Outcome::Failed(FailReason::TooLarge(why)))] => assert!(why.contains("300"), "{why}"),
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_lower_configured_limit_fails_what_the_default_would_have_sent() {
    let mut h = Harness::new(8);
    h.run(Event::NeighborLimit {
        peer: id("b"),
        max_message: Some(50),
    });
    h.link("b");
    // Until b's features are known, what it could not take as an original waits...
    assert!(h.send_sized("b", "m", 60).is_empty());
    // ...and fails once b turns out to be one.
    let out = h.original("b");
    assert!(transmitted(&out).is_empty());
    assert!(
        matches!(&completions(&out)[..], [(_, o)] if too_large(o)),
        "{out:?}"
    );
    // Removing the neighbour forgets its limit.
    h.run(Event::Disconnect { peer: id("b") });
    assert!(h.m.neighbor_limits.is_empty());
}

#[test]
fn a_retry_to_a_peer_that_no_longer_takes_chunks_fails_instead_of_going_whole() {
    // Found by the fuzzer: a message sent in chunks, asked again (`Retry`), then the peer
    // reconnects without the `chunk` feature.
    let mut h = Harness::new(8);
    h.m.chunk_bytes = 4;
    h.m.limits.max_payload_bytes = 8;
    h.link("b");
    h.run(Event::PeerFeatures {
        peer: id("b"),
        chunk: true,
        confirm: true,
    });
    assert_eq!(transmitted(&h.send_sized("b", "m", 10)).len(), 3);
    h.ack(OUT_ACK, "b", "m", AckStatus::Retry);
    h.original("b");
    h.now += Duration::from_secs(1);
    let out = h.run(Event::Tick);
    assert!(transmitted(&out).is_empty(), "{out:?}");
    assert!(
        matches!(&completions(&out)[..], [(_, Outcome::Failed(_))]),
        "{out:?}"
    );
}

#[test]
fn a_refusal_is_not_sent_to_an_original_which_would_read_it_as_delivered() {
    let mut h = Harness::new(4);
    h.m.limits.max_payload_bytes = 1;
    h.open(IN_MSG, "go", StreamKind::InboundOriginalMessages);
    h.link("go");
    // "hi" is over the 1-byte limit: refused, counted, and not answered at all.
    let out = h.receive(IN_MSG, "go", "m1");
    assert!(ack_routes(&out).is_empty(), "{out:?}");
    assert!(!out.iter().any(|a| matches!(a, Action::Deliver(_))));
    assert_eq!(
        h.m.counters
            .rejected
            .load(std::sync::atomic::Ordering::Relaxed),
        1
    );
    // The same from a client that reads our answers gets ACK_REJECTED.
    h.open(IN_ACK, "c", StreamKind::InboundAcks);
    h.open(IN_MSG2, "c", StreamKind::InboundMessages);
    let out = h.receive(IN_MSG2, "c", "m2");
    assert_eq!(ack_routes(&out), [(IN_ACK, AckStatus::Rejected)]);
}
