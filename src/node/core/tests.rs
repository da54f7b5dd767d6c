//! The node core driven deterministically: a recording world, a clock that moves only when a
//! test moves it, no threads and no network.

use super::*;
use crate::broadcast::BroadcastConfig;
use crate::manager::WireMessage;
use crate::router::FanoutRouter;
use crate::store::SlotStore;
use protobuf::Message as _;

const OUT_MSG: StreamId = StreamId(1);
const OUT_ACK: StreamId = StreamId(2);
const IN_MSG: StreamId = StreamId(3);
const IN_ACK: StreamId = StreamId(4);

fn id(s: &str) -> NodeId {
    NodeId::new(s, &Limits::default()).unwrap()
}

/// A world that records what the core does to it; writers are the streams it was told of,
/// each with the load a test gives it.
#[derive(Default)]
struct Recorder {
    loads: HashMap<StreamId, Load>,
    messages: Vec<(StreamId, GossipMessage)>,
    /// The lane of each of `messages`.
    lanes: Vec<Lane>,
    /// Whether each of `messages` went with a shared payload's tail.
    tails: Vec<bool>,
    /// The tail each of `messages` shares with others, if any.
    lazy_tails: Vec<Option<Arc<crate::payload::LazyTail>>>,
    acks: Vec<(StreamId, GossipACK)>,
    closed: Vec<StreamId>,
    /// How many more deliveries the application takes.
    room: usize,
    delivered: Vec<Delivery>,
    gate_open: Option<bool>,
    completions: Vec<Completion>,
    notices: Vec<Notice>,
    originals: HashMap<NodeId, bool>,
    membership: Vec<(NodeId, Bytes)>,
}

impl World for Recorder {
    fn send_message(&mut self, stream: StreamId, frame: OutFrame, lane: Lane) {
        let tail = frame.encoded.as_ref().is_some_and(|e| e.is_tail());
        if let Some(encoded) = &frame.encoded {
            // What goes on the wire instead of `message` must say the same (a tail: its
            // payload, after a header of the message's own).
            let wire = GossipMessage::parse_from_bytes(encoded.as_slice()).unwrap();
            let (hash, from) = match tail {
                true => ("", ""),
                false => (
                    frame.message.hash.as_str(),
                    frame.message.from_hash.as_str(),
                ),
            };
            assert_eq!(
                (wire.hash.as_str(), wire.from_hash.as_str(), &wire.payload),
                (hash, from, &frame.message.payload)
            );
        }
        self.tails.push(tail);
        self.lazy_tails.push(frame.lazy_tail.clone());
        self.lanes.push(lane);
        self.messages.push((stream, frame.message));
    }
    fn send_ack(&mut self, stream: StreamId, ack: GossipACK) {
        self.acks.push((stream, ack));
    }
    fn load(&self, stream: StreamId, _now: Instant) -> Option<Load> {
        self.loads.get(&stream).copied()
    }
    fn close(&mut self, stream: StreamId) {
        self.loads.remove(&stream);
        self.closed.push(stream);
    }
    fn deliver(&mut self, delivery: Delivery, _confirm: bool) -> Offer {
        if self.room == 0 {
            return Offer::Full(delivery);
        }
        self.room -= 1;
        self.delivered.push(delivery);
        Offer::Taken
    }
    fn set_read_gate(&mut self, open: bool) {
        self.gate_open = Some(open);
    }
    fn complete(&mut self, completion: Completion) {
        self.completions.push(completion);
    }
    fn complete_broadcast(&mut self, _completion: BroadcastCompletion) {}
    fn notify(&mut self, notice: Notice) {
        self.notices.push(notice);
    }
    fn set_original(&mut self, peer: &NodeId, original: bool) {
        self.originals.insert(peer.clone(), original);
    }
    fn membership(&mut self, from: NodeId, payload: Bytes) {
        self.membership.push((from, payload));
    }
}

struct Harness {
    core: NodeCore,
    world: Recorder,
    now: Instant,
    counters: Arc<Counters>,
}

impl Harness {
    fn new() -> Harness {
        Harness::with_chunk_bytes(2048)
    }

    fn with_chunk_bytes(chunk_bytes: usize) -> Harness {
        let counters = Arc::new(Counters::default());
        let store = Arc::new(SlotStore::new(16, Duration::from_secs(30)));
        let manager = MessageManager::new(
            id("a"),
            store,
            Limits::default(),
            counters.clone(),
            Duration::from_secs(5),
        )
        .with_chunk_bytes(chunk_bytes);
        let broadcast = BroadcastEngine::new(
            id("a"),
            BroadcastConfig::default(),
            Box::new(FanoutRouter::new(4)),
        );
        let settings = CoreSettings {
            limits: Limits::default(),
            delivering: true,
            confirm_limit: None,
            ack_timeout: Duration::from_secs(5),
            max_queued_acks: 8,
            lane_max_bytes: 1024,
        };
        let core = NodeCore::new(id("a"), manager, broadcast, settings, counters.clone());
        Harness {
            core,
            world: Recorder {
                room: usize::MAX,
                ..Recorder::default()
            },
            now: Instant::now(),
            counters,
        }
    }

    fn input(&mut self, input: In) {
        self.core.handle(input, self.now, &mut self.world);
    }

    fn open(&mut self, stream: StreamId, peer: &str, kind: StreamKind, features: Features) {
        self.world.loads.insert(stream, Load::default());
        self.input(In::Opened {
            stream,
            peer: id(peer),
            kind,
            writes: true,
            features,
        });
    }

    /// Our link to `peer`: its MessageStream and AckStream (features come by handshake).
    fn link(&mut self, peer: &str) {
        self.open(
            OUT_MSG,
            peer,
            StreamKind::OutboundMessages,
            Features::default(),
        );
        self.open(OUT_ACK, peer, StreamKind::OutboundAcks, Features::default());
    }

    fn hello(&mut self, from: &str, features: Features) {
        self.hello_on(OUT_ACK, from, features);
    }

    /// Our link to `peer` on streams `stream` (messages) and `stream + 1` (ACKs), and its
    /// handshake saying `features`.
    fn link_on(&mut self, peer: &str, stream: u64, features: Features) {
        let (messages, acks) = (StreamId(stream), StreamId(stream + 1));
        self.open(
            messages,
            peer,
            StreamKind::OutboundMessages,
            Features::default(),
        );
        self.open(acks, peer, StreamKind::OutboundAcks, Features::default());
        self.hello_on(acks, peer, features);
    }

    /// `peer`'s handshake on our AckStream `stream` to it.
    fn hello_on(&mut self, stream: StreamId, from: &str, features: Features) {
        let mut ack = GossipACK::new();
        ack.from_hash = from.into();
        ack.features = features.header_value();
        self.input(In::Frame {
            stream,
            frame: Received::ack(stream, ack),
        });
    }

    fn receive(&mut self, stream: StreamId, from: &str, hash: &str) {
        let message = WireMessage::whole(hash.into(), from.into(), Bytes::from_static(b"hi"));
        self.input(In::Frame {
            stream,
            frame: Received::Manager(Event::MessageReceived { stream, message }),
        });
    }

    /// The application sends `size` bytes to `peer`.
    fn send(&mut self, peer: &str, hash: &str, size: usize) {
        let key = crate::message::MessageKey {
            peer: id(peer),
            hash: hash.into(),
        };
        let store = self.core.manager.store().clone();
        store
            .reserve(&key, size, self.now, crate::store::Wait::No)
            .unwrap();
        let payload = Bytes::from(vec![7u8; size]);
        self.input(In::Event(Event::Send {
            key,
            payload,
            frame: None,
        }));
    }

    /// Sends `message` to `peer` as the node does, its frame with it.
    fn send_message(&mut self, peer: &str, mut message: crate::Message) {
        let key = crate::message::MessageKey {
            peer: id(peer),
            hash: message.hash.clone(),
        };
        let store = self.core.manager.store().clone();
        let size = message.payload.len();
        store
            .reserve(&key, size, self.now, crate::store::Wait::No)
            .unwrap();
        let frame = message.take_frame("a");
        self.input(In::Event(Event::Send {
            key,
            payload: message.payload,
            frame,
        }));
    }

    fn broadcast(&mut self, hash: &str) {
        let payload = Bytes::from_static(b"to everyone");
        let started =
            self.core
                .start_broadcast(hash.into(), payload, None, self.now, &mut self.world);
        started.unwrap();
    }

    fn advance(&mut self, by: Duration) {
        self.now += by;
        self.input(In::Tick);
    }
}

#[test]
fn broadcast_frames_wait_for_the_handshake_then_go_in_our_form() {
    let mut h = Harness::new();
    h.link("b");
    h.broadcast("x");
    assert!(
        h.world.messages.is_empty(),
        "features unknown: the frame waits"
    );
    h.hello("b", Features::ALL);
    assert_eq!(h.world.messages.len(), 1);
    let (stream, frame) = &h.world.messages[0];
    assert_eq!(*stream, OUT_MSG);
    assert_eq!(frame.kind, FrameKind::BROADCAST);
    assert!(matches!(&h.world.notices[..], [Notice::Progress(p)] if p.as_str() == "b"));
    assert!(h.world.originals.get(&id("b")) != Some(&true));
}

#[test]
fn a_broadcast_payload_goes_to_every_neighbour_as_one_shared_tail() {
    let mut h = Harness::with_chunk_bytes(1 << 20);
    let peers = [
        ("b", 10, Features::ALL),
        ("c", 12, Features::ALL),
        (
            "d",
            14,
            Features {
                tail: false,
                ..Features::ALL
            },
        ),
    ];
    for (peer, stream, features) in peers {
        h.link_on(peer, stream, features);
    }
    let payload = Bytes::from(vec![4u8; 100_000]);
    let started = h
        .core
        .start_broadcast("big".into(), payload.clone(), None, h.now, &mut h.world);
    started.unwrap();
    let to = |h: &Harness, stream: u64| {
        let at = h
            .world
            .messages
            .iter()
            .position(|(s, _)| *s == StreamId(stream));
        h.world.lazy_tails[at.expect("a frame to each neighbour")].clone()
    };
    let (b, c) = (to(&h, 10).unwrap(), to(&h, 12).unwrap());
    assert!(Arc::ptr_eq(&b, &c), "one tail for both");
    assert!(to(&h, 14).is_none(), "d does not take tails");
    // Encoded once, by whichever writer comes first, and the same bytes for the other.
    let first = b.get_or_encode(&payload).unwrap().as_slice().as_ptr();
    assert_eq!(
        c.get_or_encode(&payload).unwrap().as_slice().as_ptr(),
        first
    );

    // An origin's SharedPayload is the tail itself: no copy at all.
    let shared = crate::SharedPayload::from(&vec![6u8; 100_000][..]);
    let tail = Some(shared.frame().clone());
    let started = h
        .core
        .start_broadcast("own".into(), shared.payload(), tail, h.now, &mut h.world);
    started.unwrap();
    let to_b = h
        .world
        .messages
        .iter()
        .rposition(|(s, _)| *s == StreamId(10));
    assert_eq!(h.world.messages[to_b.unwrap()].1.hash, "own");
    let own = h.world.lazy_tails[to_b.unwrap()].clone().unwrap();
    let sent = own.get_or_encode(&shared.payload()).unwrap();
    assert_eq!(sent.as_slice().as_ptr(), shared.frame().as_slice().as_ptr());
}

#[test]
fn a_relay_forwards_a_broadcast_payload_from_the_buffer_it_arrived_in() {
    let mut h = Harness::with_chunk_bytes(1 << 20);
    for (peer, stream) in [("b", 10), ("c", 12), ("d", 14)] {
        h.link_on(peer, stream, Features::ALL);
    }
    h.open(
        StreamId(30),
        "b",
        StreamKind::InboundMessages,
        Features::ALL,
    );
    // As our server's reader hands it over: the payload a view into its tail.
    let mut buf = crate::PayloadBuf::new();
    buf.extend_from_slice(&[3u8; 100_000]);
    let shared = crate::SharedPayload::from(buf);
    let mut m = GossipMessage::new();
    m.kind = FrameKind::BROADCAST;
    m.hash = "x".into();
    m.origin = "o".into();
    m.from_hash = "b".into();
    m.hop_limit = 8;
    m.budget_ms = 5000;
    m.payload = shared.payload();
    let tail = Some(shared.frame().clone());
    h.input(In::Frame {
        stream: StreamId(30),
        frame: Received::message(StreamId(30), m, tail),
    });
    assert_eq!(h.world.delivered.len(), 1);
    let forwarded: Vec<_> = (h.world.messages.iter().zip(&h.world.lazy_tails))
        .filter(|((_, m), _)| m.kind == FrameKind::BROADCAST && !m.payload.is_empty())
        .map(|((stream, _), tail)| (*stream, tail.clone().expect("a tail")))
        .collect();
    let streams: Vec<_> = forwarded.iter().map(|(s, _)| *s).collect();
    assert!(streams.contains(&StreamId(12)) && streams.contains(&StreamId(14)));
    for (_, tail) in &forwarded {
        let sent = tail.get_or_encode(&shared.payload()).unwrap();
        assert_eq!(
            sent.as_slice().as_ptr(),
            shared.frame().as_slice().as_ptr(),
            "no copy"
        );
    }
}

#[test]
fn a_link_without_a_handshake_is_an_original_node_after_the_wait() {
    let mut h = Harness::new();
    h.link("b");
    h.broadcast("x");
    h.advance(FEATURES_WAIT / 2);
    assert!(
        h.world.messages.is_empty(),
        "still waiting for the handshake"
    );
    h.advance(FEATURES_WAIT);
    assert_eq!(h.world.originals.get(&id("b")), Some(&true));
    // An original takes a broadcast as a plain message.
    let frames: Vec<_> = h.world.messages.iter().map(|(_, m)| m.kind).collect();
    assert_eq!(frames, [FrameKind::DIRECT]);
    // It was dialled with our fast keepalive, which it refuses: once the link is quiet (the
    // frame sent, its ACK back, nothing written for a while), it is dialled again.
    let hash = h.world.messages[0].1.hash.clone();
    let mut ack = GossipACK::new();
    ack.hash = hash;
    ack.from_hash = "b".into();
    h.input(In::Frame {
        stream: OUT_ACK,
        frame: Received::ack(OUT_ACK, ack),
    });
    h.world.loads.insert(
        OUT_MSG,
        Load {
            idle_for: REDIAL_QUIET,
            ..Load::default()
        },
    );
    h.world.loads.insert(
        OUT_ACK,
        Load {
            idle_for: REDIAL_QUIET,
            ..Load::default()
        },
    );
    h.advance(Duration::from_millis(50));
    let down = h.world.notices.iter().any(
        |n| matches!(n, Notice::LinkDown { peer, reason, .. } if peer.as_str() == "b" && reason.contains("original")),
    );
    assert!(down, "{:?}", h.world.notices.len());
}

#[test]
fn a_handshake_from_another_id_takes_the_link_down() {
    let mut h = Harness::new();
    h.link("b");
    h.hello("impostor", Features::ALL);
    assert!(h.world.closed.contains(&OUT_ACK));
    let down = h
        .world
        .notices
        .iter()
        .any(|n| matches!(n, Notice::LinkDown { reason, .. } if reason.contains("impostor")));
    assert!(down);
}

#[test]
fn an_ack_waits_behind_a_held_delivery_and_follows_it_in_order() {
    let mut h = Harness::new();
    h.link("b");
    h.hello("b", Features::ALL);
    h.open(IN_MSG, "b", StreamKind::InboundMessages, Features::ALL);
    h.world.room = 1;
    h.receive(IN_MSG, "b", "m1");
    assert_eq!(h.world.delivered.len(), 1);
    let acks_after_first = h.world.acks.len();
    assert_eq!(acks_after_first, 1, "the first is ACKed at once");
    // The application's queue is full: the next delivery is held, reading stops, and so does
    // its ACK; the one after waits behind it.
    h.receive(IN_MSG, "b", "m2");
    h.receive(IN_MSG, "b", "m3");
    assert_eq!(h.world.delivered.len(), 1);
    assert_eq!(h.world.gate_open, Some(false));
    assert!(h.core.waits_for_room());
    // While held, no ACK for m2 or m3 goes out (an ACK means the application has it).
    assert_eq!(h.world.acks.len(), acks_after_first);
    h.world.room = 8;
    h.input(In::Room);
    let hashes: Vec<_> = h.world.delivered.iter().map(|d| d.hash.as_str()).collect();
    assert_eq!(hashes, ["m1", "m2", "m3"]);
    let acked: Vec<_> = h.world.acks.iter().map(|(_, a)| a.hash.as_str()).collect();
    assert_eq!(acked, ["m1", "m2", "m3"]);
    assert_eq!(h.world.gate_open, Some(true));
    assert!(!h.core.waits_for_room());
}

#[test]
fn a_closed_message_stream_is_a_link_down_for_the_supervisor() {
    let mut h = Harness::new();
    h.link("b");
    h.hello("b", Features::ALL);
    h.input(In::Closed {
        stream: OUT_MSG,
        reason: "connection reset".into(),
    });
    assert!(h.world.closed.contains(&OUT_MSG));
    let down = h.world.notices.iter().any(|n| {
        matches!(n, Notice::LinkDown { peer, stream, reason }
            if peer.as_str() == "b" && *stream == OUT_MSG && reason.contains("reset"))
    });
    assert!(down);
    // The next link must prove itself again before the supervisor's backoff starts over.
    h.link("b");
    h.hello("b", Features::ALL);
    let progress = h
        .world
        .notices
        .iter()
        .filter(|n| matches!(n, Notice::Progress(_)))
        .count();
    assert_eq!(progress, 2);
}

#[test]
fn a_writer_that_takes_nothing_for_the_ack_timeout_is_a_stalled_link() {
    let mut h = Harness::new();
    h.link("b");
    h.hello("b", Features::ALL);
    h.world.loads.insert(
        OUT_MSG,
        Load {
            queued: 3,
            bytes: 300,
            stuck_for: Duration::from_secs(4),
            ..Load::default()
        },
    );
    h.advance(Duration::from_millis(50));
    assert!(
        h.world.closed.is_empty(),
        "4 s is under the 5 s ACK timeout"
    );
    h.world.loads.get_mut(&OUT_MSG).unwrap().stuck_for = Duration::from_secs(5);
    h.advance(Duration::from_millis(50));
    // The link goes, both its streams, and the supervisor hears why.
    assert_eq!(h.world.closed, [OUT_MSG, OUT_ACK]);
    assert_eq!(h.counters.stalls.load(Ordering::Relaxed), 1);
    let down = h.world.notices.iter().any(
        |n| matches!(n, Notice::LinkDown { reason, .. } if reason.contains("stopped reading")),
    );
    assert!(down);
}

#[test]
fn acks_beyond_the_queue_bound_are_dropped_and_counted() {
    let mut h = Harness::new();
    h.link("b");
    h.hello("b", Features::ALL);
    h.open(IN_MSG, "b", StreamKind::InboundMessages, Features::ALL);
    h.open(IN_ACK, "b", StreamKind::InboundAcks, Features::ALL);
    let acks_before = h.world.acks.len();
    // The ACK route for b is full: 8 frames wait (the bound in these tests).
    for stream in [OUT_ACK, IN_ACK] {
        h.world.loads.insert(
            stream,
            Load {
                queued: 8,
                ..Load::default()
            },
        );
    }
    h.receive(IN_MSG, "b", "m1");
    assert_eq!(h.world.delivered.len(), 1, "delivered all the same");
    assert_eq!(h.world.acks.len(), acks_before, "no room for its ACK");
    assert_eq!(h.counters.acks_dropped.load(Ordering::Relaxed), 1);
}

#[test]
fn an_inbound_ack_stream_is_greeted_with_our_features() {
    let mut h = Harness::new();
    h.open(IN_ACK, "c", StreamKind::InboundAcks, Features::ALL);
    let [(stream, hello)] = &h.world.acks[..] else {
        panic!("one hello expected, got {}", h.world.acks.len());
    };
    assert_eq!(*stream, IN_ACK);
    assert_eq!(hello.from_hash, "a");
    assert_eq!(Features::parse(&hello.features), Features::ALL);
    // A header-less (original) AckStream gets none: an original would take it for an ACK.
    h.open(
        StreamId(9),
        "d",
        StreamKind::InboundAcks,
        Features::default(),
    );
    assert_eq!(h.world.acks.len(), 1);
}

#[test]
fn small_messages_take_the_priority_lane_to_peers_that_announced_it() {
    let mut h = Harness::new();
    h.link("b");
    h.hello("b", Features::ALL);
    // lane_max_bytes is 1 KiB and chunks are 2 KiB: 3,000 B go as 2,048 + 952, both bulk.
    h.send("b", "big", 1500);
    h.send("b", "small", 1024);
    h.send("b", "chunked", 3000);
    h.broadcast("x");
    let sent: Vec<_> = h
        .world
        .messages
        .iter()
        .map(|(_, m)| m.hash.as_str())
        .collect();
    assert_eq!(sent, ["big", "small", "chunked", "chunked", "x"]);
    use Lane::{Bulk, Priority};
    assert_eq!(h.world.lanes, [Bulk, Priority, Bulk, Bulk, Priority]);
    assert_eq!(h.world.messages[3].1.payload.len(), 952);
}

#[test]
fn a_shared_payload_goes_as_a_tail_only_to_peers_that_take_tails() {
    let shared = crate::SharedPayload::from(&vec![3u8; 100_000][..]);
    let mut h = Harness::with_chunk_bytes(1 << 20);
    h.link("b");
    h.hello("b", Features::ALL);
    h.send_message("b", crate::Message::shared("m1", &shared));
    h.send_message("b", crate::Message::shared("m2", &shared));
    assert_eq!(h.world.tails, [true, true]);
    let hashes: Vec<_> = h.world.messages.iter().map(|(_, m)| &m.hash).collect();
    assert_eq!(hashes, ["m1", "m2"]);
    // One without the feature gets each message encoded whole.
    let without = Features {
        tail: false,
        ..Features::ALL
    };
    let mut h = Harness::with_chunk_bytes(1 << 20);
    h.link("c");
    h.hello("c", without);
    h.send_message("c", crate::Message::shared("m1", &shared));
    assert_eq!(h.world.tails, [false]);
    assert_eq!(h.world.messages[0].1.payload, shared.payload());
    // A message too large to go whole goes in chunks, each encoded with its piece.
    let mut h = Harness::new();
    h.link("b");
    h.hello("b", Features::ALL);
    h.send_message("b", crate::Message::shared("m1", &shared));
    assert_eq!(h.world.tails.len(), 100_000usize.div_ceil(2048));
    assert!(h.world.tails.iter().all(|t| !t));
}

#[test]
fn without_the_feature_or_with_the_lane_off_everything_is_bulk() {
    let without = Features {
        lane: false,
        ..Features::ALL
    };
    let mut h = Harness::new();
    h.link("b");
    h.hello("b", without);
    h.send("b", "small", 10);
    h.broadcast("x");
    assert_eq!(h.world.lanes, [Lane::Bulk, Lane::Bulk]);

    let mut h = Harness::new();
    h.core.settings.lane_max_bytes = 0;
    h.link("b");
    h.hello("b", Features::ALL);
    h.send("b", "small", 10);
    h.broadcast("x");
    assert_eq!(h.world.lanes, [Lane::Bulk, Lane::Bulk]);
}

#[test]
fn membership_frames_wait_for_the_handshake_and_go_only_to_peers_that_speak_it() {
    let mut h = Harness::new();
    h.link("b");
    let frame = Bytes::from_static(b"view");
    h.input(In::Membership {
        peer: id("b"),
        payload: frame.clone(),
    });
    assert!(
        h.world.messages.is_empty(),
        "held until b says what it speaks"
    );
    h.hello("b", Features::ALL);
    assert_eq!(h.world.messages.len(), 1);
    let (stream, sent) = &h.world.messages[0];
    assert_eq!(*stream, OUT_MSG);
    assert_eq!(sent.kind, FrameKind::MEMBERSHIP);
    assert_eq!((sent.from_hash.as_str(), &sent.payload), ("a", &frame));
    // A peer without the feature gets none, and it is counted.
    let mut h = Harness::new();
    h.link("c");
    let without = Features {
        membership: false,
        ..Features::ALL
    };
    h.hello("c", without);
    h.input(In::Membership {
        peer: id("c"),
        payload: frame.clone(),
    });
    assert!(h.world.messages.is_empty());
    assert_eq!(h.counters.snapshot().membership_frames_dropped, 1);
    // Nor does a peer we have no link to, after the wait.
    h.input(In::Membership {
        peer: id("nobody"),
        payload: frame,
    });
    h.advance(Duration::from_secs(6));
    assert!(h.world.messages.is_empty());
    assert_eq!(h.counters.snapshot().membership_frames_dropped, 2);
}

#[test]
fn a_membership_frame_is_the_stream_peers_whatever_it_says() {
    let mut h = Harness::new();
    h.open(
        StreamId(40),
        "b",
        StreamKind::InboundMessages,
        Features::ALL,
    );
    let mut m = GossipMessage::new();
    m.kind = FrameKind::MEMBERSHIP;
    m.from_hash = "someone-else".into();
    m.payload = Bytes::from_static(b"frame");
    h.input(In::Frame {
        stream: StreamId(40),
        frame: Received::message(StreamId(40), m, None),
    });
    assert_eq!(h.world.membership.len(), 1);
    assert_eq!(h.world.membership[0].0, id("b"));
    assert_eq!(&h.world.membership[0].1[..], b"frame");
    assert!(h.world.delivered.is_empty(), "never a delivery");
}

#[test]
fn small_messages_sent_before_the_handshake_are_not_overtaken_by_later_small_ones() {
    let mut h = Harness::new();
    h.link("b");
    // Before the handshake the lane is not known: bulk.
    h.send("b", "early", 10);
    h.hello("b", Features::ALL);
    // "early" is not ACKed yet: "later" waits for it (in bulk it would wait behind any bulk).
    h.send("b", "later", 10);
    assert_eq!(h.world.messages.len(), 1);
    let ack = |hash: &str| {
        let mut a = GossipACK::new();
        a.hash = hash.into();
        a.from_hash = "b".into();
        a
    };
    h.send("b", "still", 10);
    assert_eq!(h.world.messages.len(), 1);
    // "early" completes: the two that waited go out in the lane, in order.
    h.input(In::Frame {
        stream: OUT_ACK,
        frame: Received::ack(OUT_ACK, ack("early")),
    });
    assert_eq!(h.world.messages.len(), 3);
    h.input(In::Frame {
        stream: OUT_ACK,
        frame: Received::ack(OUT_ACK, ack("later")),
    });
    h.input(In::Frame {
        stream: OUT_ACK,
        frame: Received::ack(OUT_ACK, ack("still")),
    });
    h.send("b", "next", 10);
    use Lane::{Bulk, Priority};
    let sent: Vec<&str> = h
        .world
        .messages
        .iter()
        .map(|(_, m)| m.hash.as_str())
        .collect();
    assert_eq!(sent, ["early", "later", "still", "next"]);
    assert_eq!(h.world.lanes, [Bulk, Priority, Priority, Priority]);
    assert_eq!(h.world.completions.len(), 3);
}
