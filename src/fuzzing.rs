//! Received bytes through the whole protocol core, for coverage-guided fuzzing (feature
//! `fuzzing`; the target is in `fuzz/`, see its README).
//!
//! [`run`] reads its input as a script for one node with three peers and feeds it, step by
//! step, through what the node does with bytes a peer sent: protobuf decoding (and our
//! servers' decoder of large frames, which must agree with it), headers joined with the
//! payloads that follow them, batch unpacking, the routing between plain messages, broadcast
//! frames and handshakes, the conversions in `transport::wire`, the [`MessageManager`]
//! (reassembly, seen-cache, acknowledged deliveries), the [`BroadcastEngine`], and membership
//! frames through their decoding into the [`Membership`] machine. Only the threads and sockets
//! are left out. The limits are small so that a short input reaches every budget.
//!
//! After every step it checks the bounds the node promises whatever a peer sends, and panics
//! (a crash, for the fuzzer) when one is broken:
//! - partly received messages hold at most [`Limits::partial_bytes`], and each peer at most
//!   [`Limits::peer_partial_bytes`];
//! - broadcasts hold at most [`BroadcastConfig::max_held_bytes`] of payload and are at most
//!   [`BroadcastConfig::max_tracked`];
//! - nothing delivered is larger than [`Limits::max_message_bytes`], nothing transmitted
//!   larger than [`Limits::max_payload_bytes`];
//! - the manager keeps state only for peers that have streams, and no frame makes it
//!   remember a peer id that no stream belongs to;
//! - the membership views stay within their sizes and the member list within its bound.
//!
//! The script is a sequence of steps, each `[op, arg, len, len bytes...]` (a short tail is
//! read as if padded with zeros). `op % 8` picks the step:
//!
//! | op | step |
//! |----|------|
//! | 0 | the bytes arrive on peer `arg % 3`'s MessageStream (a `GossipMessage`, decoded by our server's decoder and by protobuf, which must agree; a header whose payload follows waits for the next) |
//! | 1 | the bytes arrive as a `GossipACK`, on the peer's AckStream (or, odd `arg / 3`, on our outbound AckStream to it) |
//! | 2 | `arg * 10` ms pass, then a timer tick |
//! | 3 | the peer's inbound streams end and it opens new ones (odd `arg / 3`: our link to it too) |
//! | 4 | the application answers the oldest unconfirmed delivery (even `arg`: confirms) |
//! | 5 | the application sends `arg` bytes, hash = the bytes, to peer `arg % 2` |
//! | 6 | the application broadcasts `arg` bytes, hash = the bytes |
//! | 7 | the peer's features change (`arg / 3` bit 0: chunk, bit 1: confirm) |
//!
//! Peers `p0` and `p1` are linked neighbours (`p0` speaks our extensions, `p1` is an original
//! node, whose streams carry no id header); `p2` is a client (with the header, without our
//! features) that only opens streams to us.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use protobuf::Message as _;

use crate::broadcast::{self, BroadcastConfig, BroadcastEngine, Frame};
use crate::id::NodeId;
use crate::limits::Limits;
use crate::manager::{Action, Event, MessageManager, StreamId, StreamKind};
use crate::membership::{self, ListConfig, Membership, MembershipIn, Peer, ViewConfig};
use crate::message::MessageKey;
use crate::node::core::Received;
use crate::node::driver::Input;
use crate::proto::{AckStatus, FrameKind, GossipACK, GossipMessage};
use crate::router::FanoutRouter;
use crate::store::{SlotStore, Wait};
use crate::transport::{forward, wire, Features, InboundFrame, StreamEvent};

/// The limits of the node under test: small, so short inputs reach them.
pub fn limits() -> Limits {
    Limits {
        max_payload_bytes: 64,
        max_id_bytes: 16,
        max_message_bytes: 256,
        partial_bytes: 512,
        peer_partial_bytes: 256,
    }
}

/// The broadcast settings of the node under test: small budgets, short timers.
pub fn broadcast_config() -> BroadcastConfig {
    BroadcastConfig {
        max_held_bytes: 256,
        max_tracked: 8,
        max_missing: 4,
        lazy_threshold: 32,
        deadline: Duration::from_secs(2),
        linger: Duration::from_millis(500),
        remember: Duration::from_secs(1),
        ..BroadcastConfig::default()
    }
}

const PEERS: usize = 3;
/// Peers that are linked neighbours (the others only open streams to us).
const LINKED: usize = 2;

/// One peer's streams, as the node sees them.
#[derive(Clone, Copy)]
struct Streams {
    inbound_messages: StreamId,
    inbound_acks: StreamId,
    /// Our link to it, for neighbours.
    outbound: Option<(StreamId, StreamId)>,
}

/// What a script made the node do, for tests that check a script walks the path it means to.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Report {
    /// Direct messages handed to the application.
    pub delivered: usize,
    /// ACKs the node sent, by status: received, duplicate, rejected, pending, retry.
    pub acks: [usize; 5],
    /// Broadcasts handed to the application.
    pub broadcasts_delivered: usize,
    /// Broadcast answers that refused a broadcast (no room in the byte budget).
    pub broadcasts_refused: usize,
    /// Sent messages that finished (any outcome).
    pub completed: usize,
    /// Calls ended because a peer that speaks our extensions sent a frame that cannot be
    /// answered.
    pub calls_ended: usize,
    /// Membership frames that decoded and reached the membership machine.
    pub membership_frames: usize,
}

/// The member list's bound in the harness: small, so that a short input reaches it.
const MEMBERS: usize = 16;

fn membership_views() -> ViewConfig {
    ViewConfig {
        active: 2,
        passive: 4,
        ..ViewConfig::default()
    }
}

/// The kinds of the streams peer `i` opens to us: `p1` is an original node (no id header).
fn inbound_kinds(i: usize) -> (StreamKind, StreamKind) {
    match i {
        1 => (
            StreamKind::InboundOriginalMessages,
            StreamKind::InboundOriginalAcks,
        ),
        _ => (StreamKind::InboundMessages, StreamKind::InboundAcks),
    }
}

/// The node under test and its peers.
struct Harness {
    report: Report,
    manager: MessageManager,
    engine: BroadcastEngine,
    limits: Limits,
    peers: Vec<NodeId>,
    streams: Vec<Streams>,
    /// Whether each peer announced our extensions (its broken frames end its call).
    features: Vec<Features>,
    next_stream: u64,
    now: Instant,
    /// Deliveries handed over and not answered yet: sender and hash.
    unconfirmed: VecDeque<(NodeId, String)>,
    actions: Vec<Action>,
    broadcast_actions: Vec<broadcast::Action>,
    membership: Membership,
    /// Per peer, a header whose payload is the next frame on its MessageStream.
    headers: Vec<Option<GossipMessage>>,
}

/// Runs `script` (see the module docs); panics if a bound is broken.
pub fn run(script: &[u8]) -> Report {
    let mut h = Harness::new();
    let mut rest = script;
    while let [op, arg, len, tail @ ..] = rest {
        let n = (*len as usize).min(tail.len());
        let (bytes, next) = tail.split_at(n);
        h.step(*op, *arg, bytes);
        h.check();
        rest = next;
    }
    h.manager_step(Event::Shutdown);
    h.check();
    h.report
}

impl Harness {
    fn new() -> Harness {
        let limits = limits();
        let local = NodeId::new("me", &limits).expect("a valid id");
        let store = Arc::new(SlotStore::new(8, Duration::from_secs(5)));
        let manager = MessageManager::new(
            local.clone(),
            store,
            limits.clone(),
            Arc::default(),
            Duration::from_secs(1),
        )
        .with_confirmed_deliveries()
        .with_chunk_bytes(48);
        let local_peer = local.clone();
        let engine =
            BroadcastEngine::new(local, broadcast_config(), Box::new(FanoutRouter::default()));
        let mut h = Harness {
            report: Report::default(),
            manager,
            engine,
            peers: (0..PEERS)
                .map(|i| NodeId::new(&format!("p{i}"), &limits).expect("a valid id"))
                .collect(),
            limits,
            streams: Vec::new(),
            features: vec![Features::ALL, Features::default(), Features::default()],
            next_stream: 1,
            now: Instant::now(),
            unconfirmed: VecDeque::new(),
            headers: vec![None; PEERS],
            actions: Vec::new(),
            broadcast_actions: Vec::new(),
            membership: Membership::new(
                Peer::new(local_peer, "me:1"),
                1,
                membership_views(),
                ListConfig {
                    max_members: MEMBERS,
                    ..ListConfig::default()
                },
                1,
            ),
        };
        for i in 0..PEERS {
            let (messages, acks) = inbound_kinds(i);
            let inbound_messages = h.open(i, messages);
            let inbound_acks = h.open(i, acks);
            h.streams.push(Streams {
                inbound_messages,
                inbound_acks,
                outbound: None,
            });
            if i < LINKED {
                h.link(i);
            }
        }
        h
    }

    fn step(&mut self, op: u8, arg: u8, bytes: &[u8]) {
        let peer = arg as usize % PEERS;
        let flag = (arg / PEERS as u8) & 1 == 1;
        match op % 8 {
            0 => self.message_bytes(peer, bytes),
            1 => {
                if let Ok(ack) = GossipACK::parse_from_bytes(bytes) {
                    let stream = match self.streams[peer].outbound {
                        Some((_, acks)) if flag => acks,
                        _ => self.streams[peer].inbound_acks,
                    };
                    self.received(peer, stream, ack);
                }
            }
            2 => {
                self.now += Duration::from_millis(u64::from(arg) * 10);
                self.manager_step(Event::Tick);
                self.engine_step(broadcast::Event::Tick);
            }
            3 => {
                self.reopen(peer);
                if flag && peer < LINKED {
                    self.unlink(peer);
                    self.link(peer);
                }
            }
            4 => {
                if let Some((from, hash)) = self.unconfirmed.pop_front() {
                    let taken = arg.is_multiple_of(2);
                    self.manager_step(Event::Settled { from, hash, taken });
                }
            }
            5 => {
                let key = MessageKey {
                    peer: self.peers[arg as usize % LINKED].clone(),
                    hash: String::from_utf8_lossy(bytes).into_owned(),
                };
                let size = arg as usize;
                if crate::id::validate_id(crate::id::IdKind::Message, &key.hash, &self.limits)
                    .is_ok()
                    && self
                        .manager
                        .store()
                        .reserve(&key, size, self.now, Wait::No)
                        .is_ok()
                {
                    let payload = Bytes::from(vec![arg; size]);
                    self.manager_step(Event::Send {
                        key,
                        payload,
                        frame: None,
                    });
                }
            }
            6 => {
                let hash = String::from_utf8_lossy(bytes).into_owned();
                if crate::id::validate_id(crate::id::IdKind::Message, &hash, &self.limits).is_ok() {
                    let payload = Bytes::from(vec![arg; arg as usize % 96]);
                    self.engine_step(broadcast::Event::Broadcast { hash, payload });
                }
            }
            _ => {
                let bits = arg / PEERS as u8;
                self.features[peer] = Features {
                    chunk: bits & 1 == 1,
                    confirm: bits & 2 == 2,
                    ..Features::ALL
                };
                self.manager_step(Event::PeerFeatures {
                    peer: self.peers[peer].clone(),
                    chunk: bits & 1 == 1,
                    confirm: bits & 2 == 2,
                });
            }
        }
    }

    /// What the node does with a decoded frame from `peer` on `stream`: a frame that cannot be
    /// answered ends the call of a peer that speaks our extensions (and the peer opens a new
    /// one); otherwise it and the frames batched in it go where the manager thread sends them.
    fn received<T: InboundFrame>(&mut self, peer: usize, stream: StreamId, frame: T) {
        if self.features[peer].any() && frame.unanswerable(&self.limits).is_some() {
            self.report.calls_ended += 1;
            self.reopen(peer);
            return;
        }
        // The reader's own hand-over, into a channel of our own.
        let (tx, rx) = crossbeam_channel::unbounded();
        forward(frame, stream, &tx);
        drop(tx);
        for input in rx {
            self.route(peer, input);
        }
    }

    fn route(&mut self, peer: usize, input: Input) {
        let from = self.peers[peer].clone();
        let received = match input {
            Input::Stream(StreamEvent::Message {
                stream,
                message,
                tail,
            }) => Received::message(stream, message, tail),
            Input::Stream(StreamEvent::Ack { stream, ack }) => Received::ack(stream, ack),
            // A reader reports nothing else for a frame.
            _ => return,
        };
        match received {
            Received::Manager(event) => self.manager_step(event),
            Received::BroadcastMessage(message, _) => {
                if !message.from_hash.is_empty() && message.from_hash != from.as_str() {
                    return;
                }
                if let Ok(frame) = wire::frame_of(message, &self.limits) {
                    self.engine_step(broadcast::Event::Received { from, frame });
                }
            }
            Received::BroadcastAck(ack) => {
                if !ack.from_hash.is_empty() && ack.from_hash != from.as_str() {
                    return;
                }
                let max_missing = self.engine.config().max_missing;
                if let Ok(ack) = wire::broadcast_ack_of(ack, &self.limits, max_missing) {
                    let frame = Frame::Ack(ack);
                    self.engine_step(broadcast::Event::Received { from, frame });
                }
            }
            Received::Membership(message) => {
                if let Ok((addr, frame)) = membership::frame::decode(&message.payload, &self.limits)
                {
                    self.report.membership_frames += 1;
                    let from = Peer::new(from, addr);
                    let mut out = Vec::new();
                    self.membership
                        .handle(MembershipIn::Frame { from, frame }, self.now, &mut out);
                }
            }
            Received::Hello { features, .. } => {
                self.features[peer] = features;
                self.manager_step(Event::PeerFeatures {
                    peer: from,
                    chunk: features.chunk,
                    confirm: features.confirm,
                });
            }
        }
    }

    fn open(&mut self, peer: usize, kind: StreamKind) -> StreamId {
        let stream = StreamId(self.next_stream);
        self.next_stream += 1;
        let peer = self.peers[peer].clone();
        self.manager_step(Event::StreamOpened { stream, peer, kind });
        stream
    }

    fn close(&mut self, stream: StreamId) {
        let reason = "closed by the fuzzer".to_owned();
        self.manager_step(Event::StreamClosed { stream, reason });
    }

    /// The peer's inbound calls end and it opens new ones.
    /// Bytes on the peer's MessageStream, as our server's reader takes them: decoded (by our
    /// own decoder, which must read exactly what protobuf reads), and a header whose payload
    /// follows held until the peer's next frame, which must be that payload.
    fn message_bytes(&mut self, peer: usize, bytes: &[u8]) {
        let ours = crate::transport::inbound::decode(bytes);
        let Ok(message) = GossipMessage::parse_from_bytes(bytes) else {
            assert!(ours.is_err(), "our decoder took what protobuf refuses");
            return;
        };
        // Groups (wire types 3 and 4), which protobuf skips, are all it may refuse besides.
        if let Ok(ours) = ours {
            assert_eq!(
                ours.message, message,
                "our decoder read other than protobuf"
            );
        }
        let stream = self.streams[peer].inbound_messages;
        let joined = match self.headers[peer].take() {
            Some(mut header) => header.join_tail(message).map(|()| Some(header)),
            None => match message.wants_tail() {
                Ok(true) => {
                    self.headers[peer] = Some(message);
                    Ok(None)
                }
                Ok(false) => Ok(Some(message)),
                Err(why) => Err(why),
            },
        };
        match joined {
            Ok(Some(frame)) => self.received(peer, stream, frame),
            Ok(None) => {}
            // The reader ends the call as malformed; the peer opens a new one.
            Err(_) => {
                self.report.calls_ended += 1;
                self.reopen(peer);
            }
        }
    }

    fn reopen(&mut self, peer: usize) {
        self.headers[peer] = None;
        let Streams {
            inbound_messages,
            inbound_acks,
            ..
        } = self.streams[peer];
        self.close(inbound_messages);
        self.close(inbound_acks);
        let (messages, acks) = inbound_kinds(peer);
        self.streams[peer].inbound_messages = self.open(peer, messages);
        self.streams[peer].inbound_acks = self.open(peer, acks);
    }

    fn link(&mut self, peer: usize) {
        let messages = self.open(peer, StreamKind::OutboundMessages);
        let acks = self.open(peer, StreamKind::OutboundAcks);
        self.streams[peer].outbound = Some((messages, acks));
        let features = self.features[peer];
        self.manager_step(Event::PeerFeatures {
            peer: self.peers[peer].clone(),
            chunk: features.chunk,
            confirm: features.confirm,
        });
        self.engine_step(broadcast::Event::NeighborUp {
            peer: self.peers[peer].clone(),
            plain: !features.broadcast,
        });
    }

    fn unlink(&mut self, peer: usize) {
        if let Some((messages, acks)) = self.streams[peer].outbound.take() {
            self.close(messages);
            self.close(acks);
        }
    }

    fn manager_step(&mut self, event: Event) {
        let mut out = std::mem::take(&mut self.actions);
        self.manager.handle(event, self.now, &mut out);
        for action in out.drain(..) {
            match action {
                Action::Deliver(d) => {
                    assert!(
                        d.payload.len() <= self.limits.max_message_bytes,
                        "delivered {} bytes, over max_message_bytes",
                        d.payload.len()
                    );
                    assert!(self.peers.contains(&d.from), "delivered from {}", d.from);
                    self.unconfirmed.push_back((d.from.clone(), d.hash.clone()));
                    self.report.delivered += 1;
                }
                Action::Transmit { message, .. } => assert!(
                    message.payload.len() <= self.limits.max_payload_bytes,
                    "transmitted a frame of {} bytes",
                    message.payload.len()
                ),
                Action::LinkDown { peer, .. } => {
                    self.engine_step(broadcast::Event::NeighborDown { peer })
                }
                Action::UntrackedAck { peer, hash } => {
                    self.engine_step(broadcast::Event::PlainAck { from: peer, hash })
                }
                Action::SendAck { ack, .. } => self.report.acks[ack.status as usize] += 1,
                Action::Complete(_) => self.report.completed += 1,
                Action::CloseStream(_) | Action::Forget { .. } => {}
            }
        }
        self.actions = out;
    }

    fn engine_step(&mut self, event: broadcast::Event) {
        let mut out = std::mem::take(&mut self.broadcast_actions);
        self.engine.handle(event, self.now, &mut out);
        for action in out.drain(..) {
            match &action {
                broadcast::Action::Deliver { payload, .. } => {
                    assert!(payload.len() <= self.limits.max_payload_bytes);
                    self.report.broadcasts_delivered += 1;
                }
                broadcast::Action::Send {
                    frame: Frame::Ack(ack),
                    ..
                } if ack.refused.is_some() => self.report.broadcasts_refused += 1,
                _ => {}
            }
        }
        self.broadcast_actions = out;
    }

    /// The bounds of the module docs.
    fn check(&self) {
        let partial = self.manager.partial_bytes();
        assert!(
            partial <= self.limits.partial_bytes,
            "partly received messages hold {partial} bytes, over the budget"
        );
        for peer in &self.peers {
            let share = self.manager.partial_bytes_of(peer);
            assert!(
                share <= self.limits.peer_partial_bytes,
                "{peer}'s partly received messages hold {share} bytes, over its share"
            );
        }
        let config = self.engine.config();
        let held = self.engine.held_bytes();
        assert!(
            held <= config.max_held_bytes,
            "broadcasts hold {held} payload bytes, over the budget"
        );
        assert!(self.engine.tracked_len() <= config.max_tracked);
        assert!(self.manager.known_peers() <= PEERS);
        let views = membership_views();
        assert!(self.membership.views().active().len() <= views.active);
        assert!(self.membership.views().passive().len() <= views.passive);
        assert!(self.membership.list().len() <= MEMBERS);
    }
}

/// Builds scripts for [`run`] step by step: the seeds of the fuzzing corpus, and tests.
#[derive(Default, Clone, Debug)]
pub struct Script(Vec<u8>);

impl Script {
    /// An empty script.
    pub fn new() -> Script {
        Script::default()
    }

    fn push(mut self, op: u8, arg: u8, bytes: &[u8]) -> Script {
        let len = u8::try_from(bytes.len()).expect("a step carries at most 255 bytes");
        self.0.extend_from_slice(&[op, arg, len]);
        self.0.extend_from_slice(bytes);
        self
    }

    /// `message` arrives on peer `peer`'s MessageStream.
    pub fn message(self, peer: u8, message: &GossipMessage) -> Script {
        let bytes = message.write_to_bytes().expect("encodable");
        self.push(0, peer, &bytes)
    }

    /// `ack` arrives from peer `peer`: on our outbound AckStream to it when `outbound`, else on
    /// the AckStream it opened to us.
    pub fn ack(self, peer: u8, outbound: bool, ack: &GossipACK) -> Script {
        let bytes = ack.write_to_bytes().expect("encodable");
        self.push(1, peer + if outbound { PEERS as u8 } else { 0 }, &bytes)
    }

    /// `tens_of_ms` times 10 ms pass, then a timer tick.
    pub fn tick(self, tens_of_ms: u8) -> Script {
        self.push(2, tens_of_ms, &[])
    }

    /// Peer `peer`'s inbound streams end and it opens new ones (and our link to it too,
    /// with `link`).
    pub fn reopen(self, peer: u8, link: bool) -> Script {
        self.push(3, peer + if link { PEERS as u8 } else { 0 }, &[])
    }

    /// The application confirms (or declines) the oldest unanswered delivery.
    pub fn settle(self, confirm: bool) -> Script {
        self.push(4, u8::from(!confirm), &[])
    }

    /// The application sends `size` bytes as `hash`; the peer is `size % 2`.
    pub fn send(self, size: u8, hash: &str) -> Script {
        self.push(5, size, hash.as_bytes())
    }

    /// The application broadcasts `size % 96` bytes as `hash`.
    pub fn broadcast(self, size: u8, hash: &str) -> Script {
        self.push(6, size, hash.as_bytes())
    }

    /// Peer `peer` now announces (or not) the `chunk` and `confirm` features.
    pub fn features(self, peer: u8, chunk: bool, confirm: bool) -> Script {
        let bits = u8::from(chunk) | u8::from(confirm) << 1;
        self.push(7, peer + bits * PEERS as u8, &[])
    }

    /// The script's bytes.
    pub fn into_bytes(self) -> Vec<u8> {
        self.0
    }
}

/// A direct frame: `hash` from `from`, chunk `offset..offset+len` of a `total`-byte message
/// (`total` 0: a whole message).
fn direct(hash: &str, from: &str, total: u64, offset: u64, len: usize) -> GossipMessage {
    let mut m = GossipMessage::new();
    m.hash = hash.into();
    m.from_hash = from.into();
    m.total_bytes = total;
    m.offset = offset;
    m.payload = Bytes::from(vec![7; len]);
    m
}

/// A broadcast frame of `kind` started by `origin`, with the hop limit and budget as sent.
fn broadcast_frame(kind: FrameKind, origin: &str, hash: &str, len: usize) -> GossipMessage {
    let mut m = GossipMessage::new();
    m.kind = kind;
    m.origin = origin.into();
    m.hash = hash.into();
    m.hop_limit = u32::MAX;
    m.budget_ms = u32::MAX;
    m.payload = Bytes::from(vec![9; len]);
    m
}

/// A `MEMBERSHIP` frame carrying `frame`, from a sender reached at `addr`.
fn membership_frame(frame: &membership::Frame, addr: &str) -> GossipMessage {
    let mut m = GossipMessage::new();
    m.kind = FrameKind::MEMBERSHIP;
    m.payload = membership::frame::encode(frame, addr);
    m
}

fn ack_of(hash: &str, from: &str, status: AckStatus) -> GossipACK {
    let mut a = GossipACK::new();
    a.hash = hash.into();
    a.from_hash = from.into();
    a.status = status;
    a
}

/// Scripts that walk the main paths (chunked messages and their budgets, acknowledged
/// deliveries, broadcasts and their budget, batches, broken frames): the fuzzer's seeds.
pub fn seeds() -> Vec<(&'static str, Vec<u8>)> {
    let chunked = (0..4).fold(Script::new(), |s, i| {
        s.message(0, &direct("m1", "p0", 200, i * 50, 50))
    });
    let chunked = chunked.settle(true).tick(10);

    // Three peers each start a message of the largest size: the third does not fit.
    let budget = (0..3)
        .fold(Script::new(), |s, p| {
            s.message(p, &direct("big", &format!("p{p}"), 256, 0, 60))
        })
        .message(2, &direct("big", "p2", 256, 60, 60))
        .tick(50)
        .reopen(0, false)
        .message(1, &direct("small", "p1", 0, 0, 20))
        .settle(false)
        .settle(true);

    let hops = broadcast_frame(FrameKind::BROADCAST, "p0", "b1", 60);
    let broadcasts = (0..6)
        .fold(Script::new(), |s, i| {
            let frame = broadcast_frame(FrameKind::BROADCAST, "p0", &format!("b{i}"), 60);
            s.message(0, &frame)
        })
        .message(1, &hops)
        .message(1, &broadcast_frame(FrameKind::IHAVE, "p2", "b9", 0))
        .message(0, &broadcast_frame(FrameKind::GRAFT, "me", "b1", 0))
        .tick(100)
        .tick(255);

    let mut refused = ack_of("x", "p0", AckStatus::ACK_REJECTED);
    refused.broadcast = true;
    refused.origin = "me".into();
    refused.detail = "too much held".into();
    let sending = Script::new()
        .send(10, "s1")
        .send(11, "s2")
        .send(200, "s3")
        .ack(0, true, &ack_of("s1", "p0", AckStatus::ACK_PENDING))
        .ack(0, true, &ack_of("s1", "p0", AckStatus::ACK_RETRY))
        .tick(20)
        .ack(0, true, &ack_of("s1", "p0", AckStatus::ACK_RECEIVED))
        .ack(1, true, &ack_of("s2", "p1", AckStatus::ACK_DUPLICATE))
        .broadcast(40, "x")
        .ack(0, true, &refused)
        .reopen(0, true)
        .tick(255);

    let mut batch = direct("", "p0", 0, 0, 0);
    batch.batch = (0..3)
        .map(|i| direct(&format!("a{i}"), "p0", 0, 0, 10))
        .collect();
    let hostile = Script::new()
        .message(0, &batch)
        .message(0, &direct("", "p0", 0, 0, 5))
        .message(1, &direct("", "p1", 0, 0, 5))
        .message(2, &direct("h", "someone-else", 0, 0, 5))
        .message(2, &direct("h", "p2", 1000, 0, 5))
        .features(1, true, true)
        .message(1, &direct("c", "p1", 100, 0, 60))
        .message(1, &direct("c", "p1", 100, 70, 30));

    // Membership: a join, a walk, a neighbour request, and updates past the list's bound.
    let member = |i: usize| {
        let id = NodeId::new(&format!("m{i}"), &limits()).expect("a valid id");
        membership::Peer::new(id, format!("h{i}:1"))
    };
    let updates = |from: usize| membership::Frame::Updates {
        updates: (from..from + 9)
            .map(|i| membership::Update {
                member: membership::Member {
                    id: member(i),
                    incarnation: 1,
                    state: membership::MemberState::Joined,
                },
                reporter: None,
            })
            .collect(),
        want: 1,
    };
    let view = membership::Frame::View;
    let members = Script::new()
        .message(
            0,
            &membership_frame(&view(membership::Message::Join), "p0:1"),
        )
        .message(
            1,
            &membership_frame(
                &view(membership::Message::ForwardJoin {
                    joiner: member(1),
                    ttl: 3,
                }),
                "p1:1",
            ),
        )
        .message(
            2,
            &membership_frame(&view(membership::Message::Neighbor { high: true }), "p2:1"),
        )
        .message(
            0,
            &membership_frame(
                &view(membership::Message::Swap { spare: member(2) }),
                "p0:1",
            ),
        )
        .message(0, &membership_frame(&updates(0), "p0:1"))
        .message(1, &membership_frame(&updates(9), "p1:1"));

    // A header and its payload in two frames; a header followed by a frame that is not a
    // payload alone; a header cut off by the stream's end.
    let header = |hash: &str| {
        let mut m = GossipMessage::new();
        m.hash = hash.into();
        m.from_hash = "p0".into();
        m.payload_follows = true;
        m
    };
    let mut tail = GossipMessage::new();
    tail.payload = Bytes::from(vec![5u8; 40]);
    let tails = Script::new()
        .message(0, &header("t1"))
        .message(0, &tail)
        .message(0, &header("t2"))
        .message(0, &header("t3"))
        .message(0, &header("t4"))
        .reopen(0, false)
        .message(0, &tail)
        .settle(true);

    vec![
        ("chunked", chunked.into_bytes()),
        ("budget", budget.into_bytes()),
        ("broadcasts", broadcasts.into_bytes()),
        ("sending", sending.into_bytes()),
        ("hostile", hostile.into_bytes()),
        ("membership", members.into_bytes()),
        ("tails", tails.into_bytes()),
    ]
}

#[cfg(test)]
mod tests {
    //! The committed fuzzing corpus, replayed on every test run, and random scripts.
    use super::*;
    use proptest::prelude::*;

    fn seed(name: &str) -> Report {
        let (_, script) = seeds().into_iter().find(|(n, _)| *n == name).unwrap();
        run(&script)
    }

    #[test]
    fn a_chunked_message_is_delivered_once_and_acked_on_confirmation() {
        let r = seed("chunked");
        assert_eq!(r.delivered, 1);
        // A pending answer while it waits for the application, then the ACK.
        assert_eq!(r.acks, [1, 0, 0, 1, 0]);
    }

    #[test]
    fn the_third_largest_message_does_not_fit_and_is_asked_again() {
        let r = seed("budget");
        // Two of the three started messages fit; p2's (a client without the `confirm`
        // feature) is refused as a whole, the small message is declined once and confirmed.
        assert_eq!(r.acks[2], 1, "{r:?}");
        assert_eq!(r.delivered, 1, "{r:?}");
    }

    #[test]
    fn broadcasts_beyond_the_byte_budget_are_refused() {
        let r = seed("broadcasts");
        // 256 bytes hold four payloads of 60: the fifth and sixth are refused.
        assert_eq!(r.broadcasts_delivered, 4, "{r:?}");
        assert!(r.broadcasts_refused >= 2, "{r:?}");
    }

    #[test]
    fn membership_frames_reach_the_machine_and_the_list_keeps_its_bound() {
        let r = seed("membership");
        assert_eq!(r.membership_frames, 6, "{r:?}");
    }

    /// Writes the seed scripts into the committed corpus (run with `--ignored` after adding
    /// one; the fuzz crate's `seeds` binary does the same for an empty corpus).
    #[test]
    #[ignore]
    fn write_the_seeds_into_the_corpus() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus/received");
        for (name, script) in seeds() {
            std::fs::write(dir.join(format!("seed-{name}")), script).unwrap();
        }
    }

    #[test]
    fn a_header_and_its_payload_are_one_message_and_anything_else_ends_the_call() {
        let r = seed("tails");
        // t1 is delivered whole; t2 followed by a header, and a payload with no header
        // before it, each end the call.
        assert_eq!(r.delivered, 1, "{r:?}");
        assert_eq!(r.calls_ended, 2, "{r:?}");
    }

    #[test]
    fn sent_messages_finish() {
        let r = seed("sending");
        assert!(r.completed >= 2, "{r:?}");
    }

    #[test]
    fn frames_without_a_hash_end_the_call_of_a_peer_that_speaks_our_extensions() {
        let r = seed("hostile");
        assert_eq!(r.calls_ended, 2, "{r:?}");
    }

    #[test]
    fn the_corpus_keeps_every_bound() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus/received");
        let mut seen = 0;
        for entry in std::fs::read_dir(&dir).expect("the corpus is committed") {
            let path = entry.expect("a corpus entry").path();
            run(&std::fs::read(&path).expect("a corpus file"));
            seen += 1;
        }
        assert!(seen > 0, "no corpus in {}", dir.display());
    }

    /// One step of a well-formed script: frames that decode, from peers that may lie about
    /// sizes and offsets, mixed with everything else a node sees.
    fn step() -> impl Strategy<Value = Script> {
        let hash = "[a-d]{1,2}";
        prop_oneof![
            // A chunk of a message whose announced size may exceed every bound.
            (
                0u8..3,
                hash,
                prop_oneof![Just(0u64), 150u64..=256, 1u64..600],
                prop_oneof![3 => Just(0u64), 1 => 0u64..600],
                0usize..64
            )
                .prop_map(|(peer, hash, total, offset, len)| {
                    let from = format!("p{peer}");
                    Script::new().message(peer, &direct(&hash, &from, total, offset, len))
                }),
            // A broadcast payload, IHAVE or GRAFT with any origin.
            (0u8..3, 0u8..4, hash, 0usize..64).prop_map(|(peer, kind, hash, len)| {
                let kind = [
                    FrameKind::BROADCAST,
                    FrameKind::IHAVE,
                    FrameKind::GRAFT,
                    FrameKind::DIRECT,
                ][kind as usize];
                let origin = ["p0", "p1", "p2", "me"][len % 4];
                Script::new().message(peer, &broadcast_frame(kind, origin, &hash, len))
            }),
            // An ACK of any status, plain or for a broadcast, on either AckStream.
            (0u8..3, any::<bool>(), hash, 0u8..5, any::<bool>()).prop_map(
                |(peer, outbound, hash, status, broadcast)| {
                    let status = [
                        AckStatus::ACK_RECEIVED,
                        AckStatus::ACK_DUPLICATE,
                        AckStatus::ACK_REJECTED,
                        AckStatus::ACK_PENDING,
                        AckStatus::ACK_RETRY,
                    ][status as usize];
                    let mut ack = ack_of(&hash, &format!("p{peer}"), status);
                    ack.broadcast = broadcast;
                    ack.origin = "me".into();
                    Script::new().ack(peer, outbound, &ack)
                }
            ),
            any::<u8>().prop_map(|t| Script::new().tick(t)),
            (0u8..3, any::<bool>()).prop_map(|(p, link)| Script::new().reopen(p, link)),
            any::<bool>().prop_map(|c| Script::new().settle(c)),
            (any::<u8>(), hash).prop_map(|(size, hash)| Script::new().send(size, &hash)),
            (any::<u8>(), hash).prop_map(|(size, hash)| Script::new().broadcast(size, &hash)),
            (0u8..3, any::<bool>(), any::<bool>())
                .prop_map(|(p, chunk, confirm)| Script::new().features(p, chunk, confirm)),
        ]
    }

    proptest! {
        #[test]
        fn random_scripts_keep_every_bound(script in proptest::collection::vec(any::<u8>(), 0..2048)) {
            run(&script);
        }

        #[test]
        fn well_formed_scripts_keep_every_bound(steps in proptest::collection::vec(step(), 1..200)) {
            let script: Vec<u8> = steps.into_iter().flat_map(Script::into_bytes).collect();
            run(&script);
        }
    }
}
