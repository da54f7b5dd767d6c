//! The node core: everything a node decides, as a state machine that never touches a thread,
//! a channel or a socket. It owns the [`MessageManager`], the [`BroadcastEngine`], the table
//! of what each peer understands, the deliveries held while the application is busy, and the
//! link-down bookkeeping. The manager thread ([`super::driver`]) feeds it [`In`]puts with the
//! time, and it acts on the world only through the [`World`] trait, so that the tests at the
//! bottom drive it deterministically with a recording world.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use log::{debug, warn};

use super::supervisor::Notice;
use crate::broadcast::{self, BroadcastCompletion, BroadcastEngine, BroadcastId, Frame};
use crate::error::Error;
use crate::id::NodeId;
use crate::limits::Limits;
use crate::manager::{Action, Event, MessageManager, StreamId, StreamKind, StreamMap};
use crate::message::{Completion, Delivery, Settlement};
use crate::payload::EncodedFrame;
use crate::proto::{FrameKind, GossipACK, GossipMessage};
use crate::stats::{add, bump, Counters};
use crate::transport::frame::OutFrame;
use crate::transport::lane::Lane;
use crate::transport::{wire, Features};
use tails::BroadcastTails;

/// How long broadcast frames wait for a new link's handshake before the peer is taken to be an
/// original node, which does not answer with its features.
const FEATURES_WAIT: Duration = Duration::from_secs(2);
/// Broadcast frames held per peer while its features are unknown; more are dropped (their
/// offers then count as missing).
const UNRESOLVED_FRAMES: usize = 4096;
/// A broadcast frame is not queued for a neighbour whose writer already holds this many bytes
/// or frames (direct messages are bounded by the neighbour's share of the store instead).
const BROADCAST_BACKLOG_BYTES: usize = 64 * 1024 * 1024;
const BROADCAST_BACKLOG_FRAMES: usize = 16 * 1024;
/// Membership frames held per member for a link that is not registered yet (a dial that has
/// just finished hands its streams to this thread a moment later), and for how long.
const HELD_MEMBERSHIP_FRAMES: usize = 64;
const HELD_MEMBERSHIP_PEERS: usize = 256;
const HELD_MEMBERSHIP_WAIT: Duration = Duration::from_secs(5);
/// A link is replaced only after nothing was written on it for this long.
const REDIAL_QUIET: Duration = Duration::from_secs(1);

/// A received frame, by what handles it.
pub(crate) enum Received {
    /// A direct message or its ACK: the manager's.
    Manager(Event),
    /// A broadcast frame (kind BROADCAST, IHAVE or GRAFT): the broadcast engine's; with its
    /// payload's buffer framed as a tail, where the reader read it into one.
    BroadcastMessage(GossipMessage, Option<EncodedFrame>),
    /// A broadcast ACK: the broadcast engine's.
    BroadcastAck(GossipACK),
    /// A membership frame (kind MEMBERSHIP): the membership thread's.
    Membership(GossipMessage),
    /// The handshake ACK on one of our outbound AckStreams: what the peer understands, and
    /// who it is.
    Hello { features: Features, from: String },
}

impl Received {
    /// Where a message frame that arrived on `stream` goes (`tail`: its payload's buffer as a
    /// tail, which only a relay uses).
    pub(crate) fn message(
        stream: StreamId,
        message: GossipMessage,
        tail: Option<EncodedFrame>,
    ) -> Received {
        if message.kind == FrameKind::DIRECT {
            Received::Manager(Event::MessageReceived {
                stream,
                message: message.into(),
            })
        } else if message.kind == FrameKind::MEMBERSHIP {
            Received::Membership(message)
        } else {
            Received::BroadcastMessage(message, tail)
        }
    }

    /// Where an ACK frame that arrived on `stream` goes.
    pub(crate) fn ack(stream: StreamId, ack: GossipACK) -> Received {
        if ack.broadcast {
            Received::BroadcastAck(ack)
        } else if ack.hash.is_empty() && !ack.features.is_empty() {
            Received::Hello {
                features: Features::parse(&ack.features),
                from: ack.from_hash,
            }
        } else {
            Received::Manager(Event::AckReceived {
                stream,
                ack: ack.into(),
            })
        }
    }
}

/// What the core is told. Time comes with every input (see [`NodeCore::handle`]).
pub(crate) enum In {
    /// An event for the message manager (from the application or the supervisor).
    Event(Event),
    /// A stream is up; `writes`: it has a writer the core may send on.
    Opened {
        stream: StreamId,
        peer: NodeId,
        kind: StreamKind,
        writes: bool,
        features: Features,
    },
    /// A frame arrived on a stream.
    Frame { stream: StreamId, frame: Received },
    /// A stream ended.
    Closed { stream: StreamId, reason: String },
    /// The application answered for a delivery.
    Settled(Settlement),
    /// The membership thread sends `payload` (a `MembershipFrame`) to `peer`, over our link
    /// to it; without one it is dropped (the membership protocol repairs losses).
    Membership { peer: NodeId, payload: Bytes },
    /// Whether our link to `peer` is an extra one (membership's, for a member outside the
    /// active view, or a message's to a member): broadcasts run over the active view and the
    /// static neighbours only, never over links that close when idle.
    Extra { peer: NodeId, extra: bool },
    /// The periodic timer: TTLs, retransmissions, stalled writers, overdue handshakes.
    Tick,
    /// Room may have come in the application's queue: hand on what was held.
    Room,
    /// The node stops: what is in flight fails.
    Shutdown,
}

/// What waits for one stream's writer.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Load {
    /// Frames handed to the writer and not yet taken by gRPC.
    pub(crate) queued: usize,
    /// Their bytes.
    pub(crate) bytes: usize,
    /// Frames produced in this wake-up and not handed over yet.
    pub(crate) pending: usize,
    /// How long queued frames have waited without a write completing (zero when none wait).
    pub(crate) stuck_for: Duration,
    /// How long since the last write completed, when nothing is queued (zero otherwise).
    pub(crate) idle_for: Duration,
}

/// What became of a delivery offered to the application.
pub(crate) enum Offer {
    /// The application has it.
    Taken,
    /// Its queue is full: given back, to be held.
    Full(Delivery),
    /// Its queue is gone: dropped.
    Closed,
}

/// Everything the core does to the world. The manager thread implements it over writer
/// threads and channels; the tests below, by recording.
pub(crate) trait World {
    /// Queues a message frame for `stream`'s writer, in `lane` (handed over at the end of the
    /// wake-up).
    fn send_message(&mut self, stream: StreamId, frame: OutFrame, lane: Lane);
    /// Queues an ACK frame for `stream`'s writer.
    fn send_ack(&mut self, stream: StreamId, ack: GossipACK);
    /// What waits for `stream`'s writer; `None` without one.
    fn load(&self, stream: StreamId, now: Instant) -> Option<Load>;
    /// Drops `stream`'s writer (which ends its call) and what was queued for it.
    fn close(&mut self, stream: StreamId);
    /// Offers a delivery to the application, with a receipt it must answer when `confirm`.
    fn deliver(&mut self, delivery: Delivery, confirm: bool) -> Offer;
    /// Opens or closes the read gate: while it is closed, stream readers stop reading.
    fn set_read_gate(&mut self, open: bool);
    /// A message sent by the application completed.
    fn complete(&mut self, completion: Completion);
    /// A broadcast started here completed.
    fn complete_broadcast(&mut self, completion: BroadcastCompletion);
    /// Tells the supervisor (reconnections, backoff).
    fn notify(&mut self, notice: Notice);
    /// Records whether `peer` is an original node, for the threads that dial it.
    fn set_original(&mut self, peer: &NodeId, original: bool);
    /// Hands a membership frame from `from` to the membership thread (dropped if the node runs
    /// none).
    fn membership(&mut self, from: NodeId, payload: Bytes);
}

/// Deliveries and ACKs held back, in order, while the application's delivery queue is full.
enum Held {
    Deliver(Delivery),
    Ack { stream: StreamId, ack: GossipACK },
}

/// What the core runs with, apart from its two protocol machines.
pub(crate) struct CoreSettings {
    /// Limits of frames a peer sends.
    pub(crate) limits: Limits,
    /// Whether deliveries go to the application at all (`Deliveries::Discard`: no).
    pub(crate) delivering: bool,
    /// Acknowledged deliveries: how many may wait for the application's answer at once.
    pub(crate) confirm_limit: Option<usize>,
    /// A peer whose writer takes nothing for this long has stopped reading.
    pub(crate) ack_timeout: Duration,
    /// ACKs queued per stream beyond which more are dropped.
    pub(crate) max_queued_acks: usize,
    /// Whole messages of at most this many payload bytes, and control frames, take the
    /// priority lane to peers that announced it; 0: no lane.
    pub(crate) lane_max_bytes: usize,
}

/// The node's decisions (see the module docs).
pub(crate) struct NodeCore {
    manager: MessageManager,
    broadcast: BroadcastEngine,
    local: NodeId,
    settings: CoreSettings,
    counters: Arc<Counters>,
    /// The time of the input being handled.
    now: Instant,
    /// Receipts handed out and not yet answered.
    unsettled: usize,
    held: VecDeque<Held>,
    actions: Vec<Action>,
    broadcast_actions: Vec<broadcast::Action>,
    /// What each peer understands, from the streams it opened to us or its handshake ACK
    /// (latest wins).
    features: HashMap<NodeId, Features>,
    /// Broadcast frames for linked peers whose features are not known yet, held until the
    /// handshake tells (or [`FEATURES_WAIT`] passes, after which the peer counts as an original
    /// node).
    unresolved: HashMap<NodeId, (Instant, Vec<Frame>)>,
    /// Per stream we write on: its peer, and the features the peer announced on this stream.
    writable: StreamMap<(NodeId, Features)>,
    /// Peers whose features came from the handshake on our own link to them: what a stream
    /// claiming their id announces does not override that (without TLS anyone can claim an id).
    heard_hello: HashSet<NodeId>,
    /// Peers that answered (a handshake or an ACK) since their link last went down; the
    /// supervisor is told once per link, so that its backoff starts over.
    proven: HashSet<NodeId>,
    /// Neighbours known to be original nodes (the world keeps a copy for the dialling threads).
    originals: HashSet<NodeId>,
    /// Our links that were dialled with our fast keepalive (the peer was not known to be an
    /// original then), by peer: their MessageStream.
    fast_links: HashMap<NodeId, StreamId>,
    /// Links found to go to an original node with a keepalive it refuses: replaced (dialled
    /// again with one it accepts) as soon as nothing is outstanding on them.
    redial: HashSet<NodeId>,
    /// Membership frames for members whose link is not registered yet, since when.
    membership_held: HashMap<NodeId, (Instant, Vec<Bytes>)>,
    /// Per stream, the small messages sent in bulk (before the peer's lane was known) that
    /// have not completed: see [`NodeCore::transmit`].
    small_in_bulk: StreamMap<HashSet<String>>,
    /// Per stream, small messages that wait for those (see [`NodeCore::transmit`]).
    held_small: StreamMap<VecDeque<OutFrame>>,
    /// Peers whose links are extra ones (see [`In::Extra`]): not broadcast neighbours.
    extra: HashSet<NodeId>,
    /// Broadcast payloads' shared tails, for neighbours that take them.
    tails: BroadcastTails,
}

impl NodeCore {
    /// A core around its two protocol machines.
    pub(crate) fn new(
        local: NodeId,
        manager: MessageManager,
        broadcast: BroadcastEngine,
        settings: CoreSettings,
        counters: Arc<Counters>,
    ) -> NodeCore {
        NodeCore {
            local,
            manager,
            broadcast,
            settings,
            counters,
            now: Instant::now(),
            unsettled: 0,
            held: VecDeque::new(),
            actions: Vec::new(),
            broadcast_actions: Vec::new(),
            features: HashMap::new(),
            unresolved: HashMap::new(),
            writable: StreamMap::default(),
            heard_hello: HashSet::new(),
            proven: HashSet::new(),
            originals: HashSet::new(),
            fast_links: HashMap::new(),
            redial: HashSet::new(),
            tails: BroadcastTails::default(),
            membership_held: HashMap::new(),
            small_in_bulk: StreamMap::default(),
            held_small: StreamMap::default(),
            extra: HashSet::new(),
        }
    }

    /// Handles one input at `now`, acting on `world`.
    pub(crate) fn handle(&mut self, input: In, now: Instant, world: &mut impl World) {
        self.now = now;
        match input {
            In::Event(event) => {
                if let Event::Disconnect { peer } = &event {
                    let peer = peer.clone();
                    self.broadcast_step(broadcast::Event::NeighborRemoved { peer }, world);
                }
                self.step(event, world)
            }
            In::Opened {
                stream,
                peer,
                kind,
                writes,
                features,
            } => self.opened(stream, peer, kind, writes, features, world),
            In::Frame { stream, frame } => self.received(stream, frame, world),
            In::Closed { stream, reason } => {
                // Its writer has nothing left to do; dropping the queue ends it.
                self.forget_writer(stream, world);
                self.step(Event::StreamClosed { stream, reason }, world)
            }
            In::Settled(settled) => self.settle(settled, world),
            In::Membership { peer, payload } => self.send_membership(peer, payload, world),
            In::Extra { peer, extra } => self.set_extra(peer, extra, world),
            In::Tick => {
                self.step(Event::Tick, world);
                self.check_writers(world);
                self.resolve_overdue(world);
                let now = self.now;
                let counters = &self.counters;
                self.membership_held.retain(|_, (since, held)| {
                    let keep = now.saturating_duration_since(*since) < HELD_MEMBERSHIP_WAIT;
                    if !keep {
                        add(&counters.membership_frames_dropped, held.len());
                    }
                    keep
                });
                self.redial_idle(world);
                self.broadcast_step(broadcast::Event::Tick, world);
            }
            In::Room => {}
            In::Shutdown => {
                self.step(Event::Shutdown, world);
                return;
            }
        }
        if !self.held.is_empty() {
            self.release_held(world);
        }
    }

    /// Starts a broadcast from this node (`Node::broadcast` has checked the hash and size).
    /// `tail`: the payload's own encoded tail, when the application gave a
    /// [`SharedPayload`](crate::SharedPayload).
    pub(crate) fn start_broadcast(
        &mut self,
        hash: String,
        payload: Bytes,
        tail: Option<EncodedFrame>,
        now: Instant,
        world: &mut impl World,
    ) -> Result<BroadcastId, Error> {
        self.now = now;
        if let Some(tail) = tail.filter(|t| t.is_tail() && t.holds(&payload)) {
            self.tails.insert_ready(payload.clone(), tail);
        }
        let result = self.run_broadcast(
            |engine, now, out| engine.start(hash, payload, now, out),
            world,
        );
        if result.is_ok() {
            bump(&self.counters.broadcasts_started);
        }
        result
    }

    /// Whether the first held delivery waits for room in the application's queue (rather than
    /// for answers to those already handed over, which arrive as settlements).
    pub(crate) fn waits_for_room(&self) -> bool {
        match self.held.front() {
            Some(Held::Deliver(d)) => {
                let confirm = self.settings.confirm_limit.filter(|_| d.origin.is_none());
                confirm.is_none_or(|limit| self.unsettled < limit)
            }
            _ => false,
        }
    }

    /// Whether frames for `stream` may be packed: its peer understands batches.
    pub(crate) fn batches(&self, stream: StreamId) -> bool {
        self.writable
            .get(&stream)
            .is_some_and(|(peer, announced)| announced.batch || self.peer_features(peer).batch)
    }

    /// A stream is up: remember that we write on it, then tell the state machines.
    fn opened(
        &mut self,
        stream: StreamId,
        peer: NodeId,
        kind: StreamKind,
        writes: bool,
        features: Features,
        world: &mut impl World,
    ) {
        let inbound = matches!(
            kind,
            StreamKind::InboundMessages
                | StreamKind::InboundOriginalMessages
                | StreamKind::InboundAcks
                | StreamKind::InboundOriginalAcks
                | StreamKind::InboundSingle
        );
        if writes {
            self.writable.insert(stream, (peer.clone(), features));
        }
        if kind == StreamKind::InboundAcks && features.any() {
            // Tell the peer what we understand, so that it knows even if we never open
            // streams to it.
            let mut hello = GossipACK::new();
            hello.from_hash = self.local.to_string();
            hello.features = Features::ALL.header_value();
            world.send_ack(stream, hello);
        }
        self.step(
            Event::StreamOpened {
                stream,
                peer: peer.clone(),
                kind,
            },
            world,
        );
        if inbound {
            if !self.heard_hello.contains(&peer) {
                self.learn_features(peer, features, world);
            }
        } else if kind == StreamKind::OutboundMessages {
            if !self.originals.contains(&peer) {
                // Dialled with our fast keepalive.
                self.fast_links.insert(peer.clone(), stream);
            }
            if !self.features.contains_key(&peer) {
                // Wait for the handshake, or find out that there is none.
                let now = self.now;
                self.unresolved
                    .entry(peer.clone())
                    .or_insert_with(|| (now, Vec::new()));
            }
            // Unknown features: taken as ours until the handshake says otherwise; the
            // frames wait for it (see `unresolved`).
            let plain = self.features.get(&peer).is_some_and(|f| !f.broadcast);
            self.flush_membership(&peer, world);
            if !self.extra.contains(&peer) {
                self.broadcast_step(broadcast::Event::NeighborUp { peer, plain }, world);
            }
        }
    }

    /// A frame arrived on `stream`.
    fn received(&mut self, stream: StreamId, frame: Received, world: &mut impl World) {
        match frame {
            Received::Manager(event) => {
                if matches!(event, Event::AckReceived { .. }) {
                    self.prove(stream, world);
                }
                self.step(event, world)
            }
            Received::BroadcastMessage(message, tail) => {
                self.on_broadcast_message(stream, message, tail, world)
            }
            Received::BroadcastAck(ack) => self.on_broadcast_ack(stream, ack, world),
            Received::Membership(message) => {
                // The sender is the stream's peer, whatever the frame says.
                if let Some((peer, _)) = self.manager.stream_peer(stream) {
                    bump(&self.counters.membership_frames_received);
                    world.membership(peer.clone(), message.payload);
                }
            }
            Received::Hello { features, from } => self.hello(stream, features, from, world),
        }
    }

    /// The handshake ACK on one of our outbound AckStreams.
    fn hello(
        &mut self,
        stream: StreamId,
        features: Features,
        from: String,
        world: &mut impl World,
    ) {
        let Some((peer, _)) = self.writable.get(&stream) else {
            return;
        };
        let peer = peer.clone();
        if !from.is_empty() && from != peer.as_str() {
            // Our own nodes refuse a stream meant for another id; this catches one that did
            // not (an older version): the link is not the peer's.
            let reason = format!("the node there is {from:?}, not {:?}", peer.as_str());
            warn!("{}: link to {peer}: {reason}", self.local);
            self.forget_writer(stream, world);
            self.step(Event::StreamClosed { stream, reason }, world);
            return;
        }
        self.prove(stream, world);
        self.heard_hello.insert(peer.clone());
        self.learn_features(peer, features, world);
    }

    /// The application answered for a delivery: the manager ACKs it or asks for it again.
    fn settle(&mut self, settled: Settlement, world: &mut impl World) {
        self.unsettled = self.unsettled.saturating_sub(1);
        self.step(
            Event::Settled {
                from: settled.from,
                hash: settled.hash,
                taken: settled.taken,
            },
            world,
        );
        self.publish_awaiting();
    }

    /// Updates the gauge of deliveries waiting for the application's confirmation.
    fn publish_awaiting(&self) {
        self.counters.awaiting_confirmation.store(
            self.manager.awaiting_confirmation() as u64,
            Ordering::Relaxed,
        );
    }

    /// Takes down a link whose peer stopped reading: frames wait in its MessageStream writer
    /// and none has been taken for `ack_timeout` (gRPC flow control holds them). Covers what the
    /// ACK stall check cannot see, e.g. broadcast frames to a peer with no message outstanding.
    fn check_writers(&mut self, world: &mut impl World) {
        let now = self.now;
        let stuck: Vec<(StreamId, NodeId, Duration)> = self
            .writable
            .keys()
            .filter_map(|stream| match self.manager.stream_peer(*stream) {
                Some((peer, StreamKind::OutboundMessages)) => {
                    let waited = world.load(*stream, now)?.stuck_for;
                    Some((*stream, peer.clone(), waited))
                }
                _ => None,
            })
            .filter(|(_, _, waited)| *waited >= self.settings.ack_timeout)
            .collect();
        for (stream, peer, waited) in stuck {
            bump(&self.counters.stalls);
            warn!(
                "{}: {peer} has taken nothing from us for {waited:?}; reconnecting",
                self.local
            );
            let reason = format!("peer stopped reading for {waited:?}");
            // As for any stream that ends: its writer goes (the thread follows once gRPC lets
            // go of the blocked write: the call or the connection ends).
            self.forget_writer(stream, world);
            self.step(Event::StreamClosed { stream, reason }, world);
        }
    }

    /// The peer at the other end of `stream` answered: its link works.
    fn prove(&mut self, stream: StreamId, world: &mut impl World) {
        let Some((peer, _)) = self.manager.stream_peer(stream) else {
            return;
        };
        if !self.proven.contains(peer) {
            let peer = peer.clone();
            self.proven.insert(peer.clone());
            world.notify(Notice::Progress(peer));
        }
    }

    fn peer_features(&self, peer: &NodeId) -> Features {
        self.features.get(peer).copied().unwrap_or_default()
    }

    /// Records what `peer` understands; if that changes whether it speaks the broadcast
    /// protocol and we have a link to it, the engine learns it.
    fn learn_features(&mut self, peer: NodeId, features: Features, world: &mut impl World) {
        let before = self.features.insert(peer.clone(), features);
        let original = !features.any();
        let changed = match original {
            true => self.originals.insert(peer.clone()),
            false => self.originals.remove(&peer),
        };
        if changed {
            world.set_original(&peer, original);
        }
        if original && self.fast_links.contains_key(&peer) {
            // Its server would answer our pings with GOAWAY too_many_pings within seconds.
            self.redial.insert(peer.clone());
        } else if !original {
            self.redial.remove(&peer);
        }
        if before.is_none_or(|b| b.chunk != features.chunk || b.confirm != features.confirm) {
            let event = Event::PeerFeatures {
                peer: peer.clone(),
                chunk: features.chunk,
                confirm: features.confirm,
            };
            self.step(event, world);
        }
        let changed = before.is_none_or(|b| b.broadcast != features.broadcast);
        let linked = self.manager.message_stream_to(&peer).is_some() && !self.extra.contains(&peer);
        if changed && !features.broadcast && linked {
            let event = broadcast::Event::NeighborUp {
                peer: peer.clone(),
                plain: true,
            };
            self.broadcast_step(event, world);
        }
        if let Some((_, frames)) = self.unresolved.remove(&peer) {
            for frame in frames {
                self.send_frame(peer.clone(), frame, world);
            }
        }
        self.flush_membership(&peer, world);
    }

    /// Replaces the fast-keepalive links to original nodes that have nothing outstanding or
    /// queued, so that nothing is sent twice; a busy one is replaced when it falls idle (or
    /// when the peer closes it, after which it is dialled the right way anyway).
    fn redial_idle(&mut self, world: &mut impl World) {
        let idle: Vec<NodeId> = self
            .redial
            .iter()
            .filter(|peer| self.manager.outstanding_to(peer) == 0 && self.link_quiet(peer, world))
            .cloned()
            .collect();
        for peer in idle {
            self.redial.remove(&peer);
            self.fast_links.remove(&peer);
            let reason = "an original node: dialling again with a keepalive it accepts".into();
            self.step(Event::ReplaceLink { peer, reason }, world);
        }
    }

    /// Whether nothing waits to go out on our link to `peer`, and nothing went out lately
    /// (closing a call may drop what gRPC has not put on the wire yet, and an original never
    /// sends a message again to get a lost ACK).
    fn link_quiet(&self, peer: &NodeId, world: &impl World) -> bool {
        let streams = [
            self.manager.message_stream_to(peer),
            self.manager.ack_stream_to(peer),
        ];
        streams.into_iter().flatten().all(|stream| {
            world.load(stream, self.now).is_none_or(|load| {
                load.pending == 0 && load.queued == 0 && load.idle_for >= REDIAL_QUIET
            })
        })
    }

    /// Peers whose handshake never came are original nodes.
    fn resolve_overdue(&mut self, world: &mut impl World) {
        let now = self.now;
        let overdue: Vec<NodeId> = self
            .unresolved
            .iter()
            .filter(|(_, (since, _))| now.saturating_duration_since(*since) >= FEATURES_WAIT)
            .map(|(peer, _)| peer.clone())
            .collect();
        for peer in overdue {
            if self.manager.message_stream_to(&peer).is_none() {
                // The link went down before the handshake: nothing learned, nothing to send.
                self.unresolved.remove(&peer);
                continue;
            }
            debug!("{}: no features from {peer}; an original node", self.local);
            self.learn_features(peer, Features::default(), world);
        }
    }

    /// Queues a broadcast frame for `to`'s MessageStream, in the form its features call for.
    fn send_frame(&mut self, to: NodeId, frame: Frame, world: &mut impl World) {
        let Some(stream) = self.manager.message_stream_to(&to) else {
            return; // the link is down; the engine hears of it and counts it missing
        };
        if !self.writable.contains_key(&stream) {
            return;
        }
        let Some(load) = world.load(stream, self.now) else {
            return;
        };
        if load.bytes >= BROADCAST_BACKLOG_BYTES || load.queued >= BROADCAST_BACKLOG_FRAMES {
            // The peer reads slower than broadcasts come: they wait no further. Offers count
            // as missing at their deadline; if it stops reading altogether, the stall check
            // takes the link down.
            bump(&self.counters.broadcast_frames_dropped);
            return;
        }
        let Some(features) = self.features.get(&to).copied() else {
            let now = self.now;
            let (_, held) = self
                .unresolved
                .entry(to)
                .or_insert_with(|| (now, Vec::new()));
            if held.len() < UNRESOLVED_FRAMES {
                held.push(frame);
            }
            return;
        };
        let Some(message) = wire::message_of(&self.local, frame, !features.broadcast) else {
            return;
        };
        if let Some(limit) = self.manager.original_limit_of(&to) {
            let encoded = protobuf::Message::compute_size(&message) as usize;
            if encoded > limit {
                // It would be refused with RESOURCE_EXHAUSTED and take the link (and
                // everything in flight on it) down; the engine counts it missing instead.
                bump(&self.counters.broadcast_frames_too_large);
                return warn!(
                    "{}: broadcast {} not sent to {to}: {encoded} bytes encoded, and it \
                     takes at most {limit} (an original node's gRPC receive limit)",
                    self.local, message.hash
                );
            }
        }
        if !message.payload.is_empty() {
            let counted = self.counters.peers.of(&to);
            bump(&self.counters.sent);
            add(&self.counters.bytes_sent, message.payload.len());
            bump(&counted.sent);
            add(&counted.bytes_sent, message.payload.len());
        }
        let lane = self.lane_of(&to, &message);
        let mut frame = OutFrame::from(message);
        if features.tail && frame.message.kind == FrameKind::BROADCAST {
            frame.lazy_tail = self.tails.of(&frame.message.payload);
        }
        world.send_message(stream, frame, lane);
    }

    /// The lane of `message` to `peer`: priority for control frames and whole messages of at
    /// most `lane_max_bytes`, where the lane is on and the peer announced it. Chunks of a large
    /// message are bulk, even its short last one, so that they arrive in order.
    /// Sends a membership frame over our link to `peer` once the peer has said it speaks
    /// membership: until its link is registered and its features are known the frame waits
    /// (see [`HELD_MEMBERSHIP_WAIT`]); to a peer that does not, it is dropped.
    fn send_membership(&mut self, peer: NodeId, payload: Bytes, world: &mut impl World) {
        let features = self.features.get(&peer).copied();
        if features.is_some_and(|f| !f.membership) {
            bump(&self.counters.membership_frames_dropped);
            return debug!("{}: {peer} does not speak membership", self.local);
        }
        let stream = self
            .manager
            .message_stream_to(&peer)
            .filter(|s| self.writable.contains_key(s) && features.is_some());
        let Some(stream) = stream else {
            let now = self.now;
            let room = self.membership_held.len() < HELD_MEMBERSHIP_PEERS
                || self.membership_held.contains_key(&peer);
            let held = match room {
                true => Some(
                    &mut self
                        .membership_held
                        .entry(peer.clone())
                        .or_insert((now, Vec::new()))
                        .1,
                ),
                false => None,
            };
            match held {
                Some(held) if held.len() < HELD_MEMBERSHIP_FRAMES => held.push(payload),
                _ => {
                    bump(&self.counters.membership_frames_dropped);
                    debug!(
                        "{}: membership frame to {peer} dropped: no link",
                        self.local
                    );
                }
            }
            return;
        };
        let mut message = GossipMessage::new();
        message.kind = FrameKind::MEMBERSHIP;
        message.from_hash = self.local.to_string();
        message.payload = payload;
        let lane = self.lane_of(&peer, &message);
        bump(&self.counters.membership_frames_sent);
        world.send_message(stream, message.into(), lane);
    }

    /// Marks our link to `peer` as extra (no broadcasts over it) or not; a link that is up
    /// joins or leaves the broadcast engine's neighbours at once.
    fn set_extra(&mut self, peer: NodeId, extra: bool, world: &mut impl World) {
        let changed = match extra {
            true => self.extra.insert(peer.clone()),
            false => self.extra.remove(&peer),
        };
        if !changed || self.manager.message_stream_to(&peer).is_none() {
            return;
        }
        let event = match extra {
            true => broadcast::Event::NeighborRemoved { peer },
            false => {
                let plain = self.features.get(&peer).is_some_and(|f| !f.broadcast);
                broadcast::Event::NeighborUp { peer, plain }
            }
        };
        self.broadcast_step(event, world);
    }

    /// Sends the membership frames held for `peer`, now that its link or its features came.
    fn flush_membership(&mut self, peer: &NodeId, world: &mut impl World) {
        let ready = self.features.contains_key(peer)
            && (self.manager.message_stream_to(peer))
                .is_some_and(|s| self.writable.contains_key(&s));
        if !ready {
            return;
        }
        if let Some((_, held)) = self.membership_held.remove(peer) {
            for payload in held {
                self.send_membership(peer.clone(), payload, world);
            }
        }
    }

    /// Queues a message of the application for `stream`, in its lane ([`lane_of`]), keeping
    /// small messages in order among themselves across the peer's handshake: those sent before
    /// it went to bulk (the lane was not known yet), so later small ones wait here, not in
    /// bulk, until those have completed, and then take the lane in order.
    ///
    /// [`lane_of`]: Self::lane_of
    fn transmit(
        &mut self,
        stream: StreamId,
        peer: &NodeId,
        frame: OutFrame,
        world: &mut impl World,
    ) {
        let message = &frame.message;
        let small =
            message.total_bytes == 0 && message.payload.len() <= self.settings.lane_max_bytes;
        let mut lane = self.lane_of(peer, message);
        if let (Lane::Priority, Some(waiting)) = (lane, self.small_in_bulk.get(&stream)) {
            if !waiting.contains(&message.hash) {
                let held = self.held_small.entry(stream).or_default();
                held.push_back(frame);
                return;
            }
            // Sent again (asked to retry) while it is one of those waited for: it must not
            // wait for itself, and goes where it went before.
            lane = Lane::Bulk;
        }
        let unknown = !self.features.contains_key(peer);
        if lane == Lane::Bulk && small && unknown && self.settings.lane_max_bytes > 0 {
            let waiting = self.small_in_bulk.entry(stream).or_default();
            waiting.insert(message.hash.clone());
        }
        world.send_message(stream, frame, lane);
    }

    /// A message completed: once no small message sent in bulk before the handshake is left
    /// on a stream, the small ones held behind them go out in the lane, in order.
    fn completed_in_bulk(&mut self, completion: &Completion, world: &mut impl World) {
        let mut drained = Vec::new();
        self.small_in_bulk.retain(|stream, waiting| {
            waiting.remove(&completion.key.hash);
            if waiting.is_empty() {
                drained.push(*stream);
            }
            !waiting.is_empty()
        });
        for stream in drained {
            let held = self.held_small.remove(&stream).unwrap_or_default();
            for message in held {
                world.send_message(stream, message, Lane::Priority);
            }
        }
    }

    fn lane_of(&self, peer: &NodeId, message: &GossipMessage) -> Lane {
        let small =
            message.total_bytes == 0 && message.payload.len() <= self.settings.lane_max_bytes;
        match self.settings.lane_max_bytes > 0 && small && self.peer_features(peer).lane {
            true => Lane::Priority,
            false => Lane::Bulk,
        }
    }

    fn on_broadcast_message(
        &mut self,
        stream: StreamId,
        message: GossipMessage,
        tail: Option<EncodedFrame>,
        world: &mut impl World,
    ) {
        let Some((peer, _)) = self.manager.stream_peer(stream).cloned() else {
            return;
        };
        if !message.from_hash.is_empty() && message.from_hash != peer.as_str() {
            bump(&self.counters.rejected);
            return warn!(
                "{}: broadcast frame claiming to be from {:?} on {}'s stream dropped",
                self.local, message.from_hash, peer
            );
        }
        match wire::frame_of(message, &self.settings.limits) {
            Ok(frame) => {
                if let Frame::Payload { payload, .. } = &frame {
                    // What the engine forwards goes on from the buffer it arrived in.
                    if let Some(tail) = tail.filter(|t| t.is_tail() && t.holds(payload)) {
                        self.tails.insert_ready(payload.clone(), tail);
                    }
                    let counted = self.counters.peers.of(&peer);
                    bump(&self.counters.broadcast_payloads_received);
                    add(&self.counters.broadcast_bytes_received, payload.len());
                    bump(&counted.received);
                    add(&counted.bytes_received, payload.len());
                }
                self.broadcast_step(broadcast::Event::Received { from: peer, frame }, world);
            }
            Err(why) => {
                bump(&self.counters.rejected);
                warn!("{}: broadcast frame from {peer} dropped: {why}", self.local);
            }
        }
    }

    fn on_broadcast_ack(&mut self, stream: StreamId, ack: GossipACK, world: &mut impl World) {
        let Some((peer, _)) = self.manager.stream_peer(stream).cloned() else {
            return;
        };
        if !ack.from_hash.is_empty() && ack.from_hash != peer.as_str() {
            bump(&self.counters.unknown_acks);
            return;
        }
        let max_missing = self.broadcast.config().max_missing;
        match wire::broadcast_ack_of(ack, &self.settings.limits, max_missing) {
            Ok(ack) => {
                let frame = Frame::Ack(ack);
                self.broadcast_step(broadcast::Event::Received { from: peer, frame }, world);
            }
            Err(why) => debug!("{}: broadcast ACK from {peer} ignored: {why}", self.local),
        }
    }

    fn broadcast_step(&mut self, event: broadcast::Event, world: &mut impl World) {
        self.run_broadcast(|engine, now, out| engine.handle(event, now, out), world);
    }

    /// Runs `f` on the broadcast engine and carries out the actions it produced.
    fn run_broadcast<R>(
        &mut self,
        f: impl FnOnce(&mut BroadcastEngine, Instant, &mut Vec<broadcast::Action>) -> R,
        world: &mut impl World,
    ) -> R {
        let mut out = std::mem::take(&mut self.broadcast_actions);
        let result = f(&mut self.broadcast, self.now, &mut out);
        for action in out.drain(..) {
            self.broadcast_execute(action, world);
        }
        self.broadcast_actions = out;
        result
    }

    fn broadcast_execute(&mut self, action: broadcast::Action, world: &mut impl World) {
        match action {
            broadcast::Action::Send {
                to,
                frame: Frame::Ack(ack),
            } => {
                if ack.refused.is_some() {
                    bump(&self.counters.refused_broadcast);
                }
                // Without a route the answer is lost; the parent counts us missing.
                match self.manager.ack_stream_to(&to) {
                    Some(stream) => {
                        let ack = wire::ack_of(&self.local, ack);
                        self.queue_ack(stream, ack, world);
                    }
                    None => debug!("{}: no route for a broadcast ACK to {to}", self.local),
                }
            }
            broadcast::Action::Send { to, frame } => self.send_frame(to, frame, world),
            broadcast::Action::Deliver {
                id, from, payload, ..
            } => {
                bump(&self.counters.delivered);
                bump(&self.counters.broadcast_delivered);
                bump(&self.counters.peers.of(&from).delivered);
                let delivery = Delivery::new(from, id.hash, payload, Some(id.origin));
                self.offer(delivery, world);
            }
            broadcast::Action::Complete(c) => {
                let counters = &self.counters;
                match c.missing.is_empty() {
                    true => bump(&counters.broadcasts_converged),
                    false => bump(&counters.broadcasts_incomplete),
                }
                add(&counters.broadcast_reached, c.reached as usize);
                add(&counters.broadcast_missing, c.missing.len());
                world.complete_broadcast(c);
            }
        }
    }

    fn step(&mut self, event: Event, world: &mut impl World) {
        let mut actions = std::mem::take(&mut self.actions);
        self.manager.handle(event, self.now, &mut actions);
        for action in actions.drain(..) {
            self.execute(action, world);
        }
        self.actions = actions;
    }

    fn execute(&mut self, action: Action, world: &mut impl World) {
        match action {
            Action::Transmit {
                stream,
                message,
                frame,
            } => {
                // A missing writer means its stream is closing; the message stays outstanding
                // in the manager and goes out again on the next link.
                if self.writable.contains_key(&stream) {
                    let peer = self
                        .manager
                        .stream_peer(stream)
                        .map(|(peer, _)| peer.clone());
                    // A shared payload's tail only to a peer known to put it back together;
                    // any other gets the message encoded whole.
                    let takes_tail = peer.as_ref().is_some_and(|p| self.peer_features(p).tail);
                    let frame =
                        OutFrame::new(message.into(), frame.filter(|f| !f.is_tail() || takes_tail));
                    match peer {
                        Some(peer) => self.transmit(stream, &peer, frame, world),
                        None => world.send_message(stream, frame, Lane::Bulk),
                    }
                }
            }
            Action::SendAck { stream, ack } => self.queue_ack(stream, ack.into(), world),
            Action::Deliver(delivery) => self.offer(delivery, world),
            Action::UntrackedAck { peer, hash } => {
                let event = broadcast::Event::PlainAck { from: peer, hash };
                self.broadcast_step(event, world);
            }
            Action::Complete(completion) => {
                if !self.small_in_bulk.is_empty() {
                    self.completed_in_bulk(&completion, world);
                }
                world.complete(completion)
            }
            Action::CloseStream(stream) => self.forget_writer(stream, world),
            Action::Forget { peer } => {
                self.features.remove(&peer);
                self.heard_hello.remove(&peer);
                self.unresolved.remove(&peer);
                self.proven.remove(&peer);
            }
            Action::LinkDown {
                peer,
                stream,
                reason,
            } => {
                if self.fast_links.get(&peer) == Some(&stream) {
                    self.fast_links.remove(&peer);
                    self.redial.remove(&peer);
                }
                let event = broadcast::Event::NeighborDown { peer: peer.clone() };
                self.broadcast_step(event, world);
                self.proven.remove(&peer);
                self.heard_hello.remove(&peer);
                // The supervisor updates the records (the application's `NeighborStore` may
                // block there, not here) and reconnects.
                world.notify(Notice::LinkDown {
                    peer,
                    stream,
                    reason,
                });
            }
        }
    }

    /// Sends an ACK now, or after the deliveries held before it. (With acknowledged
    /// deliveries an ACK never runs ahead of its delivery: it waits for the confirmation.)
    fn queue_ack(&mut self, stream: StreamId, ack: GossipACK, world: &mut impl World) {
        if self.held.is_empty() || self.settings.confirm_limit.is_some() {
            self.send_ack(stream, ack, world);
        } else {
            self.held.push_back(Held::Ack { stream, ack });
        }
    }

    /// Hands a delivery on now, or after those held before it.
    fn offer(&mut self, delivery: Delivery, world: &mut impl World) {
        if self.settings.delivering {
            if self.held.is_empty() {
                self.deliver(delivery, world);
            } else {
                self.held.push_back(Held::Deliver(delivery));
            }
        }
    }

    fn send_ack(&mut self, stream: StreamId, ack: GossipACK, world: &mut impl World) {
        if !self.writable.contains_key(&stream) {
            return;
        }
        let Some(load) = world.load(stream, self.now) else {
            return;
        };
        let waiting = load.queued + load.pending;
        let max = self.settings.max_queued_acks;
        if waiting >= max {
            // The peer is not reading its ACKs; it will retransmit and be ACKed again.
            bump(&self.counters.acks_dropped);
            if waiting == max {
                warn!("ACK queue of stream {stream:?} is full; dropping ACKs");
            }
            return;
        }
        world.send_ack(stream, ack);
    }

    fn forget_writer(&mut self, stream: StreamId, world: &mut impl World) {
        self.writable.remove(&stream);
        self.small_in_bulk.remove(&stream);
        // What waited here is still outstanding in the manager: it goes out on the next link.
        self.held_small.remove(&stream);
        world.close(stream);
    }

    /// Hands a delivery to the application, or holds it (and closes the read gate) if the
    /// application's queue is full or enough deliveries wait for its confirmation.
    fn deliver(&mut self, delivery: Delivery, world: &mut impl World) {
        if let Some(d) = self.try_deliver(delivery, world) {
            self.held.push_back(Held::Deliver(d));
            world.set_read_gate(false);
        }
    }

    /// Hands a delivery over, with a receipt when the application must confirm it; gives it
    /// back when there is no room.
    fn try_deliver(&mut self, delivery: Delivery, world: &mut impl World) -> Option<Delivery> {
        // Broadcasts are counted where they are delivered; only direct messages wait.
        let confirm = self
            .settings
            .confirm_limit
            .filter(|_| delivery.origin.is_none());
        if confirm.is_some_and(|limit| self.unsettled >= limit) {
            return Some(delivery);
        }
        match world.deliver(delivery, confirm.is_some()) {
            Offer::Taken => {
                if confirm.is_some() {
                    self.unsettled += 1;
                    self.publish_awaiting();
                }
                None
            }
            Offer::Full(d) => Some(d),
            Offer::Closed => {
                warn!("delivery queue closed; message dropped");
                None
            }
        }
    }

    fn release_held(&mut self, world: &mut impl World) {
        while let Some(held) = self.held.pop_front() {
            match held {
                Held::Ack { stream, ack } => self.send_ack(stream, ack, world),
                Held::Deliver(d) => {
                    if let Some(d) = self.try_deliver(d, world) {
                        self.held.push_front(Held::Deliver(d));
                        return;
                    }
                }
            }
        }
        world.set_read_gate(true);
    }
}

#[cfg(test)]
mod tests;

mod tails;
