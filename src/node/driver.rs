//! The message-manager thread: owns the [`MessageManager`], reads its inbox, and carries out the
//! actions (frames to writer threads, deliveries, completions). It never blocks on anything but
//! its inbox, so no reader, writer or application thread can wedge it.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use crossbeam_channel::{Receiver, Select, Sender, TryRecvError, TrySendError};
use log::{debug, warn};

use super::link::Originals;
use super::supervisor::Notice;
use crate::broadcast::{self, BroadcastCompletion, BroadcastEngine, BroadcastId, Frame};
use crate::error::Error;
use crate::id::NodeId;
use crate::limits::Limits;
use crate::manager::{Action, Event, MessageManager, StreamId, StreamKind};
use crate::message::{Completion, Delivery, Receipt, Settlement};
use crate::proto::{FrameKind, GossipACK, GossipMessage};
use crate::stats::{add, bump, Counters};
use crate::transport::batch::{pack, Batchable};
use crate::transport::factory::Keepalive;
use crate::transport::threads::ReadGate;
use crate::transport::{wire, EventSink, Features, Outbox, StreamEvent, Writer};

/// What the manager thread's inbox carries.
pub(crate) enum Input {
    /// An event for the state machine.
    Event(Event),
    /// What the transport reports of a stream.
    Stream(StreamEvent),
    /// The application starts a broadcast.
    Broadcast {
        hash: String,
        payload: Bytes,
        reply: Sender<Result<BroadcastId, Error>>,
    },
    /// Stop: fail what is in flight, close every writer, exit.
    Shutdown,
}

/// The transport's threads report into the manager thread's inbox.
impl EventSink for Sender<Input> {
    fn report(&self, event: StreamEvent) -> bool {
        self.send(Input::Stream(event)).is_ok()
    }
}

/// A received frame, by what handles it.
pub(crate) enum Received {
    /// A direct message or its ACK: the manager's.
    Manager(Event),
    /// A broadcast frame (kind BROADCAST, IHAVE or GRAFT): the broadcast engine's.
    BroadcastMessage(GossipMessage),
    /// A broadcast ACK: the broadcast engine's.
    BroadcastAck(GossipACK),
    /// The handshake ACK on one of our outbound AckStreams: what the peer understands, and
    /// who it is.
    Hello { features: Features, from: String },
}

impl Received {
    /// Where a message frame that arrived on `stream` goes.
    pub(crate) fn message(stream: StreamId, message: GossipMessage) -> Received {
        if message.kind == FrameKind::DIRECT {
            Received::Manager(Event::MessageReceived {
                stream,
                message: message.into(),
            })
        } else {
            Received::BroadcastMessage(message)
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

/// Deliveries and ACKs held back, in order, while the application's delivery queue is full.
pub(crate) enum Held {
    Deliver(Delivery),
    Ack { stream: StreamId, ack: GossipACK },
}

/// Everything the manager thread owns.
pub(crate) struct Driver {
    pub(crate) manager: MessageManager,
    pub(crate) broadcast: BroadcastEngine,
    pub(crate) broadcast_completions: Sender<BroadcastCompletion>,
    pub(crate) local: NodeId,
    pub(crate) limits: Limits,
    pub(crate) inbox: Receiver<Input>,
    pub(crate) completions: Sender<Completion>,
    /// `None`: deliveries are discarded (`Deliveries::Discard`).
    pub(crate) deliveries: Option<Sender<Delivery>>,
    /// Acknowledged deliveries: how many may wait for the application's answer at once.
    pub(crate) confirm_limit: Option<usize>,
    /// Receipts handed out and not yet answered.
    pub(crate) unsettled: usize,
    /// Where receipts send the application's answers, and where they arrive.
    pub(crate) settlement_tx: Sender<Settlement>,
    pub(crate) settlements: Receiver<Settlement>,
    pub(crate) gate: Arc<ReadGate>,
    pub(crate) supervisor: Sender<Notice>,
    pub(crate) tick: Duration,
    /// A peer whose writer takes nothing for this long has stopped reading.
    pub(crate) ack_timeout: Duration,
    pub(crate) max_queued_acks: usize,
    pub(crate) counters: Arc<Counters>,
    pub(crate) writers: HashMap<StreamId, Writer>,
    pub(crate) held: VecDeque<Held>,
    pub(crate) actions: Vec<Action>,
    pub(crate) broadcast_actions: Vec<broadcast::Action>,
    /// Bytes of frames packed into one gRPC message for peers that understand batches.
    pub(crate) batch_budget: usize,
    /// What each peer understands, from the streams it opened to us or its handshake ACK
    /// (latest wins).
    pub(crate) features: HashMap<NodeId, Features>,
    /// Broadcast frames for linked peers whose features are not known yet, held until the
    /// handshake tells (or [`FEATURES_WAIT`] passes, after which the peer counts as an original
    /// node).
    pub(crate) unresolved: HashMap<NodeId, (Instant, Vec<Frame>)>,
    /// Per writer stream: its peer, and the features the peer announced on this stream.
    pub(crate) stream_peers: HashMap<StreamId, (NodeId, Features)>,
    /// Frames produced during the current wake-up, per stream, in order; sent at its end.
    pub(crate) pending_messages: HashMap<StreamId, Vec<GossipMessage>>,
    pub(crate) pending_acks: HashMap<StreamId, Vec<GossipACK>>,
    /// Peers whose features came from the handshake on our own link to them: what a stream
    /// claiming their id announces does not override that (without TLS anyone can claim an id).
    pub(crate) heard_hello: HashSet<NodeId>,
    /// Peers that answered (a handshake or an ACK) since their link last went down; the
    /// supervisor is told once per link, so that its backoff starts over.
    pub(crate) proven: HashSet<NodeId>,
    /// Neighbours known to be original nodes, shared with the threads that dial links.
    pub(crate) originals: Arc<Originals>,
    /// Our links that were dialled with our fast keepalive (the peer was not known to be an
    /// original then), by peer: their MessageStream.
    pub(crate) fast_links: HashMap<NodeId, StreamId>,
    /// Links found to go to an original node with a keepalive it refuses: replaced (dialled
    /// again with one it accepts) as soon as nothing is outstanding on them.
    pub(crate) redial: HashSet<NodeId>,
}

/// Inputs handled per wake-up before checking timers, so a flood cannot starve TTL checks.
const BATCH: usize = 256;
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
/// A link is replaced only after nothing was written on it for this long.
const REDIAL_QUIET: Duration = Duration::from_secs(1);

/// What woke the manager thread.
enum Wake {
    /// Inputs are waiting (or the inbox closed).
    Inputs,
    /// The application answered a delivery.
    Settlement,
    /// The application's delivery queue has room for the first held delivery.
    Room,
    /// Nothing came before the next timer.
    Timer,
}

impl Driver {
    /// Runs until shutdown; returns the inbox, since stream threads that were starting may
    /// still send to it (see `Node::shutdown`).
    pub(crate) fn run(mut self) -> Receiver<Input> {
        let mut next_tick = Instant::now() + self.tick;
        'run: loop {
            let wait = next_tick.saturating_duration_since(Instant::now());
            match self.wait(wait) {
                Wake::Inputs => {
                    for _ in 0..BATCH {
                        match self.inbox.try_recv() {
                            Ok(input) => {
                                if !self.accept(input) {
                                    break 'run;
                                }
                            }
                            Err(TryRecvError::Empty) => break,
                            Err(TryRecvError::Disconnected) => break 'run,
                        }
                    }
                }
                // Room in the application's queue (or a timer): the held deliveries go below.
                Wake::Settlement | Wake::Room | Wake::Timer => {}
            }
            // Answers are few (at most `confirm_limit` outstanding) and cheap: take them all.
            while let Ok(settled) = self.settlements.try_recv() {
                self.settle(settled);
            }
            let now = Instant::now();
            if now >= next_tick {
                self.step(Event::Tick);
                self.check_writers(now);
                self.resolve_overdue(now);
                self.redial_idle(now);
                self.broadcast_step(broadcast::Event::Tick);
                next_tick = now + self.tick;
            }
            if !self.held.is_empty() {
                self.release_held();
            }
            self.flush();
        }
        self.step(Event::Shutdown);
        // Dropping the writers' channels ends every writer thread, which closes its call.
        self.writers.clear();
        self.gate.release();
        self.inbox
    }

    /// Sleeps until an input, an answer from the application, room for a held delivery, or
    /// `timeout`. Nothing polls: a full delivery queue is waited on like any channel.
    fn wait(&self, timeout: Duration) -> Wake {
        let mut select = Select::new();
        let inputs = select.recv(&self.inbox);
        let settlements = select.recv(&self.settlements);
        let room = match &self.deliveries {
            Some(tx) if self.waits_for_room() => Some(select.send(tx)),
            _ => None,
        };
        match select.ready_timeout(timeout) {
            Ok(i) if i == inputs => Wake::Inputs,
            Ok(i) if i == settlements => Wake::Settlement,
            Ok(i) if Some(i) == room => Wake::Room,
            _ => Wake::Timer,
        }
    }

    /// Whether the first held delivery waits for room in the application's queue (rather than
    /// for answers to those already handed over, which arrive as settlements).
    fn waits_for_room(&self) -> bool {
        match self.held.front() {
            Some(Held::Deliver(d)) => {
                let confirm = self.confirm_limit.filter(|_| d.origin.is_none());
                confirm.is_none_or(|limit| self.unsettled < limit)
            }
            _ => false,
        }
    }

    /// Handles one input; false when the node must stop.
    fn accept(&mut self, input: Input) -> bool {
        match input {
            Input::Event(event) => {
                if let Event::Disconnect { peer } = &event {
                    let peer = peer.clone();
                    self.broadcast_step(broadcast::Event::NeighborRemoved { peer });
                }
                self.step(event)
            }
            Input::Stream(StreamEvent::Opened {
                stream,
                peer,
                kind,
                writer,
                features,
            }) => self.opened(stream, peer, kind, writer, features),
            Input::Stream(StreamEvent::Message { stream, message }) => {
                self.received(stream, Received::message(stream, message))
            }
            Input::Stream(StreamEvent::Ack { stream, ack }) => {
                self.received(stream, Received::ack(stream, ack))
            }
            Input::Stream(StreamEvent::Closed { stream, reason }) => {
                // Its writer has nothing left to do; dropping the queue ends it.
                self.forget_writer(stream);
                self.step(Event::StreamClosed { stream, reason })
            }
            Input::Broadcast {
                hash,
                payload,
                reply,
            } => {
                // `Node::broadcast` has checked the hash and size.
                let result =
                    self.run_broadcast(|engine, now, out| engine.start(hash, payload, now, out));
                if result.is_ok() {
                    bump(&self.counters.broadcasts_started);
                }
                let _ = reply.send(result);
            }
            Input::Shutdown => return false,
        }
        true
    }

    /// A stream is up: remember its writer, then tell the state machine.
    fn opened(
        &mut self,
        stream: StreamId,
        peer: NodeId,
        kind: StreamKind,
        writer: Option<Writer>,
        features: Features,
    ) {
        let inbound = matches!(
            kind,
            StreamKind::InboundMessages
                | StreamKind::InboundOriginalMessages
                | StreamKind::InboundAcks
                | StreamKind::InboundOriginalAcks
                | StreamKind::InboundSingle
        );
        if let Some(w) = writer {
            self.writers.insert(stream, w);
            self.stream_peers.insert(stream, (peer.clone(), features));
        }
        if kind == StreamKind::InboundAcks && features.any() {
            // Tell the peer what we understand, so that it knows even if we never open
            // streams to it.
            let mut hello = GossipACK::new();
            hello.from_hash = self.local.to_string();
            hello.features = Features::ALL.header_value();
            self.pending_acks.entry(stream).or_default().push(hello);
        }
        self.step(Event::StreamOpened {
            stream,
            peer: peer.clone(),
            kind,
        });
        if inbound {
            if !self.heard_hello.contains(&peer) {
                self.learn_features(peer, features);
            }
        } else if kind == StreamKind::OutboundMessages {
            if self.originals.keepalive_for(&peer) == Keepalive::Fast {
                self.fast_links.insert(peer.clone(), stream);
            }
            if !self.features.contains_key(&peer) {
                // Wait for the handshake, or find out that there is none.
                self.unresolved
                    .entry(peer.clone())
                    .or_insert_with(|| (Instant::now(), Vec::new()));
            }
            // Unknown features: taken as ours until the handshake says otherwise; the
            // frames wait for it (see `unresolved`).
            let plain = self.features.get(&peer).is_some_and(|f| !f.broadcast);
            self.broadcast_step(broadcast::Event::NeighborUp { peer, plain });
        }
    }

    /// A frame arrived on `stream`.
    fn received(&mut self, stream: StreamId, frame: Received) {
        match frame {
            Received::Manager(event) => {
                if matches!(event, Event::AckReceived { .. }) {
                    self.prove(stream);
                }
                self.step(event)
            }
            Received::BroadcastMessage(message) => self.on_broadcast_message(stream, message),
            Received::BroadcastAck(ack) => self.on_broadcast_ack(stream, ack),
            Received::Hello { features, from } => self.hello(stream, features, from),
        }
    }

    /// The handshake ACK on one of our outbound AckStreams.
    fn hello(&mut self, stream: StreamId, features: Features, from: String) {
        let Some((peer, _)) = self.stream_peers.get(&stream) else {
            return;
        };
        let peer = peer.clone();
        if !from.is_empty() && from != peer.as_str() {
            // Our own nodes refuse a stream meant for another id; this catches one that did
            // not (an older version): the link is not the peer's.
            let reason = format!("the node there is {from:?}, not {:?}", peer.as_str());
            warn!("{}: link to {peer}: {reason}", self.local);
            self.forget_writer(stream);
            self.step(Event::StreamClosed { stream, reason });
            return;
        }
        self.prove(stream);
        self.heard_hello.insert(peer.clone());
        self.learn_features(peer, features);
    }

    /// The application answered for a delivery: the manager ACKs it or asks for it again.
    fn settle(&mut self, settled: Settlement) {
        self.unsettled = self.unsettled.saturating_sub(1);
        self.step(Event::Settled {
            from: settled.from,
            hash: settled.hash,
            taken: settled.taken,
        });
        self.publish_awaiting();
    }

    /// Updates the gauge of deliveries waiting for the application's confirmation.
    fn publish_awaiting(&self) {
        self.counters.awaiting_confirmation.store(
            self.manager.awaiting_confirmation() as u64,
            std::sync::atomic::Ordering::Relaxed,
        );
    }

    /// Takes down a link whose peer stopped reading: frames wait in its MessageStream writer
    /// and none has been taken for `ack_timeout` (gRPC flow control holds them). Covers what the
    /// ACK stall check cannot see, e.g. broadcast frames to a peer with no message outstanding.
    fn check_writers(&mut self, now: Instant) {
        let stuck: Vec<(StreamId, Duration)> = self
            .writers
            .iter()
            .filter_map(|(stream, w)| match w {
                Writer::Messages(out) => Some((*stream, out.backlog().stuck_for(now))),
                Writer::Acks(_) => None,
            })
            .filter(|(_, waited)| *waited >= self.ack_timeout)
            .collect();
        for (stream, waited) in stuck {
            let Some((peer, StreamKind::OutboundMessages)) =
                self.manager.stream_peer(stream).cloned()
            else {
                continue;
            };
            bump(&self.counters.stalls);
            warn!(
                "{}: {peer} has taken nothing from us for {waited:?}; reconnecting",
                self.local
            );
            let reason = format!("peer stopped reading for {waited:?}");
            // As for any stream that ends: its writer goes (the thread follows once gRPC lets
            // go of the blocked write: the call or the connection ends).
            self.forget_writer(stream);
            self.step(Event::StreamClosed { stream, reason });
        }
    }

    /// The peer at the other end of `stream` answered: its link works.
    fn prove(&mut self, stream: StreamId) {
        let Some((peer, _)) = self.manager.stream_peer(stream) else {
            return;
        };
        if !self.proven.contains(peer) {
            let peer = peer.clone();
            self.proven.insert(peer.clone());
            let _ = self.supervisor.send(Notice::Progress(peer));
        }
    }

    fn peer_features(&self, peer: &NodeId) -> Features {
        self.features.get(peer).copied().unwrap_or_default()
    }

    /// Records what `peer` understands; if that changes whether it speaks the broadcast
    /// protocol and we have a link to it, the engine learns it.
    fn learn_features(&mut self, peer: NodeId, features: Features) {
        let before = self.features.insert(peer.clone(), features);
        let original = !features.any();
        self.originals.set(&peer, original);
        if original && self.fast_links.contains_key(&peer) {
            // Its server would answer our pings with GOAWAY too_many_pings within seconds.
            self.redial.insert(peer.clone());
        } else if !original {
            self.redial.remove(&peer);
        }
        if before.is_none_or(|b| b.chunk != features.chunk || b.confirm != features.confirm) {
            self.step(Event::PeerFeatures {
                peer: peer.clone(),
                chunk: features.chunk,
                confirm: features.confirm,
            });
        }
        let changed = before.is_none_or(|b| b.broadcast != features.broadcast);
        if changed && !features.broadcast && self.manager.message_stream_to(&peer).is_some() {
            self.broadcast_step(broadcast::Event::NeighborUp {
                peer: peer.clone(),
                plain: true,
            });
        }
        if let Some((_, frames)) = self.unresolved.remove(&peer) {
            for frame in frames {
                self.send_frame(peer.clone(), frame);
            }
        }
    }

    /// Replaces the fast-keepalive links to original nodes that have nothing outstanding or
    /// queued, so that nothing is sent twice; a busy one is replaced when it falls idle (or
    /// when the peer closes it, after which it is dialled the right way anyway).
    fn redial_idle(&mut self, now: Instant) {
        let idle: Vec<NodeId> = self
            .redial
            .iter()
            .filter(|peer| self.manager.outstanding_to(peer) == 0 && self.link_quiet(peer, now))
            .cloned()
            .collect();
        for peer in idle {
            self.redial.remove(&peer);
            self.fast_links.remove(&peer);
            let reason = "an original node: dialling again with a keepalive it accepts".into();
            self.step(Event::ReplaceLink { peer, reason });
        }
    }

    /// Whether nothing waits to go out on our link to `peer`, and nothing went out lately
    /// (closing a call may drop what gRPC has not put on the wire yet, and an original never
    /// sends a message again to get a lost ACK).
    fn link_quiet(&self, peer: &NodeId, now: Instant) -> bool {
        let streams = [
            self.manager.message_stream_to(peer),
            self.manager.ack_stream_to(peer),
        ];
        streams.into_iter().flatten().all(|stream| {
            let pending = self
                .pending_messages
                .get(&stream)
                .is_some_and(|f| !f.is_empty())
                || self
                    .pending_acks
                    .get(&stream)
                    .is_some_and(|f| !f.is_empty());
            let quiet = match self.writers.get(&stream) {
                Some(Writer::Messages(tx)) => tx.backlog().quiet_for(REDIAL_QUIET, now),
                Some(Writer::Acks(tx)) => tx.backlog().quiet_for(REDIAL_QUIET, now),
                None => true,
            };
            !pending && quiet
        })
    }

    /// Peers whose handshake never came are original nodes.
    fn resolve_overdue(&mut self, now: Instant) {
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
            self.learn_features(peer, Features::default());
        }
    }

    /// Writes a broadcast frame (not an ACK) to `to` on our link, in the form it understands.
    fn send_frame(&mut self, to: NodeId, frame: Frame) {
        let Some(stream) = self.manager.message_stream_to(&to) else {
            return; // the link is down; the engine hears of it and counts it missing
        };
        let Some(Writer::Messages(writer)) = self.writers.get(&stream) else {
            return;
        };
        let backlog = writer.backlog();
        if backlog.bytes() >= BROADCAST_BACKLOG_BYTES
            || backlog.frames() >= BROADCAST_BACKLOG_FRAMES
        {
            // The peer reads slower than broadcasts come: they wait no further. Offers count
            // as missing at their deadline; if it stops reading altogether, the stall check
            // takes the link down.
            bump(&self.counters.broadcast_frames_dropped);
            return;
        }
        let Some(features) = self.features.get(&to).copied() else {
            let (_, held) = self
                .unresolved
                .entry(to)
                .or_insert_with(|| (Instant::now(), Vec::new()));
            if held.len() < UNRESOLVED_FRAMES {
                held.push(frame);
            }
            return;
        };
        if let Some(message) = wire::message_of(&self.local, frame, !features.broadcast) {
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
            self.pending_messages
                .entry(stream)
                .or_default()
                .push(message);
        }
    }

    fn on_broadcast_message(&mut self, stream: StreamId, message: GossipMessage) {
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
        match wire::frame_of(message, &self.limits) {
            Ok(frame) => {
                if let Frame::Payload { payload, .. } = &frame {
                    let counted = self.counters.peers.of(&peer);
                    bump(&self.counters.broadcast_payloads_received);
                    add(&self.counters.broadcast_bytes_received, payload.len());
                    bump(&counted.received);
                    add(&counted.bytes_received, payload.len());
                }
                self.broadcast_step(broadcast::Event::Received { from: peer, frame });
            }
            Err(why) => {
                bump(&self.counters.rejected);
                warn!("{}: broadcast frame from {peer} dropped: {why}", self.local);
            }
        }
    }

    fn on_broadcast_ack(&mut self, stream: StreamId, ack: GossipACK) {
        let Some((peer, _)) = self.manager.stream_peer(stream).cloned() else {
            return;
        };
        if !ack.from_hash.is_empty() && ack.from_hash != peer.as_str() {
            bump(&self.counters.unknown_acks);
            return;
        }
        let max_missing = self.broadcast.config().max_missing;
        match wire::broadcast_ack_of(ack, &self.limits, max_missing) {
            Ok(ack) => {
                let frame = Frame::Ack(ack);
                self.broadcast_step(broadcast::Event::Received { from: peer, frame });
            }
            Err(why) => debug!("{}: broadcast ACK from {peer} ignored: {why}", self.local),
        }
    }

    fn broadcast_step(&mut self, event: broadcast::Event) {
        self.run_broadcast(|engine, now, out| engine.handle(event, now, out));
    }

    /// Runs `f` on the broadcast engine and carries out the actions it produced.
    fn run_broadcast<R>(
        &mut self,
        f: impl FnOnce(&mut BroadcastEngine, Instant, &mut Vec<broadcast::Action>) -> R,
    ) -> R {
        let mut out = std::mem::take(&mut self.broadcast_actions);
        let result = f(&mut self.broadcast, Instant::now(), &mut out);
        for action in out.drain(..) {
            self.broadcast_execute(action);
        }
        self.broadcast_actions = out;
        result
    }

    fn broadcast_execute(&mut self, action: broadcast::Action) {
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
                        self.queue_ack(stream, ack);
                    }
                    None => debug!("{}: no route for a broadcast ACK to {to}", self.local),
                }
            }
            broadcast::Action::Send { to, frame } => self.send_frame(to, frame),
            broadcast::Action::Deliver {
                id, from, payload, ..
            } => {
                bump(&self.counters.delivered);
                bump(&self.counters.broadcast_delivered);
                bump(&self.counters.peers.of(&from).delivered);
                self.offer(Delivery::new(from, id.hash, payload, Some(id.origin)));
            }
            broadcast::Action::Complete(c) => {
                let counters = &self.counters;
                match c.missing.is_empty() {
                    true => bump(&counters.broadcasts_converged),
                    false => bump(&counters.broadcasts_incomplete),
                }
                add(&counters.broadcast_reached, c.reached as usize);
                add(&counters.broadcast_missing, c.missing.len());
                // The node keeps a receiver, so this cannot fail while the node exists.
                let _ = self.broadcast_completions.send(c);
            }
        }
    }

    fn step(&mut self, event: Event) {
        let mut actions = std::mem::take(&mut self.actions);
        self.manager.handle(event, Instant::now(), &mut actions);
        for action in actions.drain(..) {
            self.execute(action);
        }
        self.actions = actions;
    }

    fn execute(&mut self, action: Action) {
        match action {
            Action::Transmit { stream, message } => {
                // A missing writer means its stream is closing; the message stays outstanding
                // in the manager and goes out again on the next link.
                if self.writers.contains_key(&stream) {
                    self.pending_messages
                        .entry(stream)
                        .or_default()
                        .push(message.into());
                }
            }
            Action::SendAck { stream, ack } => self.queue_ack(stream, ack.into()),
            Action::Deliver(delivery) => self.offer(delivery),
            Action::UntrackedAck { peer, hash } => {
                self.broadcast_step(broadcast::Event::PlainAck { from: peer, hash });
            }
            Action::Complete(completion) => {
                // The node keeps a receiver, so this cannot fail while the node exists.
                let _ = self.completions.send(completion);
            }
            Action::CloseStream(stream) => self.forget_writer(stream),
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
                self.broadcast_step(broadcast::Event::NeighborDown { peer: peer.clone() });
                self.proven.remove(&peer);
                self.heard_hello.remove(&peer);
                // The supervisor updates the records (the application's `NeighborStore` may
                // block there, not here) and reconnects.
                let _ = self.supervisor.send(Notice::LinkDown {
                    peer,
                    stream,
                    reason,
                });
            }
        }
    }

    /// Sends an ACK now, or after the deliveries held before it. (With acknowledged
    /// deliveries an ACK never runs ahead of its delivery: it waits for the confirmation.)
    fn queue_ack(&mut self, stream: StreamId, ack: GossipACK) {
        if self.held.is_empty() || self.confirm_limit.is_some() {
            self.send_ack(stream, ack);
        } else {
            self.held.push_back(Held::Ack { stream, ack });
        }
    }

    /// Hands a delivery on now, or after those held before it.
    fn offer(&mut self, delivery: Delivery) {
        if self.deliveries.is_some() {
            if self.held.is_empty() {
                self.deliver(delivery);
            } else {
                self.held.push_back(Held::Deliver(delivery));
            }
        }
    }

    fn send_ack(&mut self, stream: StreamId, ack: GossipACK) {
        let Some(Writer::Acks(tx)) = self.writers.get(&stream) else {
            return;
        };
        let queued = tx.backlog().frames();
        let pending = self.pending_acks.entry(stream).or_default();
        if queued + pending.len() >= self.max_queued_acks {
            // The peer is not reading its ACKs; it will retransmit and be ACKed again.
            bump(&self.counters.acks_dropped);
            if queued + pending.len() == self.max_queued_acks {
                warn!("ACK queue of stream {stream:?} is full; dropping ACKs");
            }
            return;
        }
        pending.push(ack);
    }

    fn forget_writer(&mut self, stream: StreamId) {
        self.writers.remove(&stream);
        self.stream_peers.remove(&stream);
        self.pending_messages.remove(&stream);
        self.pending_acks.remove(&stream);
    }

    /// Whether frames for `stream` may be packed: its peer understands batches.
    fn batches(&self, stream: StreamId) -> bool {
        self.stream_peers
            .get(&stream)
            .is_some_and(|(peer, announced)| announced.batch || self.peer_features(peer).batch)
    }

    /// Hands this wake-up's frames to the writers: packed for peers that understand batches,
    /// one by one for the others.
    fn flush(&mut self) {
        let budget = self.batch_budget;
        for (stream, frames) in std::mem::take(&mut self.pending_messages) {
            if let Some(Writer::Messages(tx)) = self.writers.get(&stream) {
                hand_over(tx, frames, self.batches(stream).then_some(budget));
            }
        }
        for (stream, frames) in std::mem::take(&mut self.pending_acks) {
            if let Some(Writer::Acks(tx)) = self.writers.get(&stream) {
                hand_over(tx, frames, self.batches(stream).then_some(budget));
            }
        }
    }

    /// Hands a delivery to the application, or holds it (and closes the read gate) if the
    /// application's queue is full or enough deliveries wait for its confirmation.
    fn deliver(&mut self, delivery: Delivery) {
        if let Some(d) = self.try_deliver(delivery) {
            self.held.push_back(Held::Deliver(d));
            self.gate.set_open(false);
        }
    }

    /// Hands a delivery over, with a receipt when the application must confirm it; gives it
    /// back when there is no room.
    fn try_deliver(&mut self, delivery: Delivery) -> Option<Delivery> {
        let Some(tx) = &self.deliveries else {
            return None;
        };
        // Broadcasts are counted where they are delivered; only direct messages wait.
        let confirm = self.confirm_limit.filter(|_| delivery.origin.is_none());
        if confirm.is_some_and(|limit| self.unsettled >= limit) {
            return Some(delivery);
        }
        let delivery = match confirm {
            Some(_) => {
                let receipt = Receipt::new(
                    self.settlement_tx.clone(),
                    delivery.from.clone(),
                    delivery.hash.clone(),
                );
                delivery.with_receipt(receipt)
            }
            None => delivery,
        };
        match tx.try_send(delivery) {
            Ok(()) => {
                if confirm.is_some() {
                    self.unsettled += 1;
                    self.publish_awaiting();
                }
                None
            }
            Err(TrySendError::Full(mut d)) => {
                // Not handed over: no answer is owed yet.
                d.forget_receipt();
                Some(d)
            }
            Err(TrySendError::Disconnected(mut d)) => {
                d.forget_receipt();
                warn!("delivery queue closed; message dropped");
                None
            }
        }
    }

    fn release_held(&mut self) {
        while let Some(held) = self.held.pop_front() {
            match held {
                Held::Ack { stream, ack } => self.send_ack(stream, ack),
                Held::Deliver(d) => {
                    if let Some(d) = self.try_deliver(d) {
                        self.held.push_front(Held::Deliver(d));
                        return;
                    }
                }
            }
        }
        self.gate.set_open(true);
    }
}

/// Sends `frames` to a writer: packed into gRPC messages of at most `batch_budget` bytes when
/// given (the peer understands batches), one by one otherwise.
fn hand_over<T: Batchable>(tx: &Outbox<T>, frames: Vec<T>, batch_budget: Option<usize>) {
    // A closed writer means its stream is ending; what it carried is retransmitted or counted.
    match batch_budget {
        Some(budget) => pack(frames, budget, |f| {
            tx.send(f);
        }),
        None => frames.into_iter().for_each(|f| {
            tx.send(f);
        }),
    }
}
