//! `MessageManager`: the state machine of every message, free of threads and of gRPC.
//!
//! It is fed [`Event`]s ("the application sends M to P", "a frame arrived on stream S", "stream
//! S closed", "tick") with the current time, and answers with [`Action`]s ("write this frame on
//! stream S", "deliver", "complete"). The node runs it on one thread and carries the actions out;
//! tests drive it directly, deterministically.
//!
//! Invariants it keeps (and its tests check):
//! - every message that enters with [`Event::Send`] gets exactly one [`Action::Complete`];
//! - a message whose link breaks before its ACK stays outstanding, in send order, and is sent
//!   again when the link is back; it fails only when its TTL runs out, the neighbour is removed
//!   or the node shuts down;
//! - a (sender, hash) pair is delivered at most once within the TTL, and ACKed every time;
//! - ACKs go to the sender over our own outbound AckStream to it when we have one, otherwise on
//!   the response side of an AckStream it opened to us, otherwise (single-stream mode) back on
//!   the stream the message came on; an ACK with no route yet waits (bounded) for one.

use std::collections::{HashMap, VecDeque};
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use log::{debug, warn};

use crate::id::{validate_id, IdKind, NodeId};
use crate::limits::Limits;
use crate::message::{Completion, Delivery, FailReason, MessageKey, Outcome};
use crate::payload::EncodedFrame;
use crate::stats::{add, bump, Counters};
use crate::store::{SlotStore, Tracked};
use reassembly::{Reassembler, Reassembly};
use seen::SeenCache;

mod reassembly;
mod recycle;
mod seen;

/// Identifies one gRPC stream of this node (unique for the node's lifetime).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct StreamId(pub u64);

/// A map keyed by [`StreamId`]. The node numbers its streams itself, so no peer chooses these
/// keys and a flood-resistant hasher (SipHash, std's default) buys nothing here; these maps
/// are looked up several times per message on the manager thread, so theirs is a multiply.
pub(crate) type StreamMap<V> = HashMap<StreamId, V, BuildHasherDefault<StreamIdHasher>>;

/// The hasher of [`StreamMap`]: Fibonacci hashing of the stream number.
#[derive(Debug, Default)]
pub(crate) struct StreamIdHasher(u64);

impl Hasher for StreamIdHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        // Not reached for a `StreamId` (it hashes as one `u64`); correct for anything else.
        for b in bytes {
            self.write_u64(u64::from(*b));
        }
    }

    fn write_u64(&mut self, v: u64) {
        self.0 = (self.0.rotate_left(5) ^ v).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    }
}

/// What a stream is, seen from this node.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum StreamKind {
    /// MessageStream we opened to a neighbour: our payloads go out on it.
    OutboundMessages,
    /// AckStream we opened to a neighbour: our ACKs to it go out, its ACKs may come back.
    OutboundAcks,
    /// MessageStream a peer opened to us: its payloads come in.
    InboundMessages,
    /// MessageStream an original node opened to us (one without the `gossip-node-id`
    /// header): its payloads come in. A message refused from it gets no answer, since an
    /// original reads any ACK, `ACK_REJECTED` included, as delivered; the refusal is logged
    /// and counted here, and the message never completes on its side.
    InboundOriginalMessages,
    /// AckStream a peer opened to us: its ACKs come in; ACKs to it may go back.
    InboundAcks,
    /// AckStream an original node opened to us (one without the `gossip-node-id` header): its
    /// ACKs come in, but it never reads the other direction, so ACKs to it never go there;
    /// they go on our own link to it, and wait for one.
    InboundOriginalAcks,
    /// Single-stream call a peer opened to us: its payloads in, their ACKs back out.
    InboundSingle,
}

/// A payload frame as the manager sees it (the wire's `GossipMessage`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WireMessage {
    /// Message hash.
    pub hash: String,
    /// Sender id (`from_hash`); may be empty from minimal clients.
    pub from: String,
    /// Payload (of the whole message, or of one chunk).
    pub payload: Bytes,
    /// A chunk: the size of the whole message (0: not chunked).
    pub total: u64,
    /// A chunk: where this piece starts in the whole message.
    pub offset: u64,
}

impl WireMessage {
    /// A whole (not chunked) message.
    pub fn whole(hash: String, from: String, payload: Bytes) -> WireMessage {
        WireMessage {
            hash,
            from,
            payload,
            total: 0,
            offset: 0,
        }
    }
}

/// What a receiver did with a message (the wire's `AckStatus`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AckStatus {
    /// Received and delivered.
    Received,
    /// Received before; not delivered again.
    Duplicate,
    /// Refused; see the ACK's detail.
    Rejected,
    /// Received; the receiving application has not confirmed it yet (acknowledged
    /// deliveries). A sign of life, not an outcome.
    Pending,
    /// Not taken this time; send it again later. See the ACK's detail.
    Retry,
}

/// An acknowledgement as the manager sees it (the wire's `GossipACK`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WireAck {
    /// Hash of the acknowledged message.
    pub hash: String,
    /// Id of the acknowledging node.
    pub from: String,
    /// Outcome at the receiver.
    pub status: AckStatus,
    /// Reason, for `Rejected`.
    pub detail: String,
}

pub use crate::limits::ORIGINAL_LIMIT;

/// (Sender, hash) pairs the seen-cache remembers unless told otherwise
/// ([`MessageManager::with_seen_capacity`]; a node takes `NodeConfig::seen_capacity`).
pub const DEFAULT_SEEN_CAPACITY: usize = 1 << 16;

/// The size of a plain message frame as protobuf encodes it (hash, sender, payload).
pub fn encoded_len(hash: &str, from: &str, payload: usize) -> usize {
    let field = |len: usize| match len {
        0 => 0,
        _ => 1 + varint_len(len as u64) + len,
    };
    field(hash.len()) + field(from.len()) + field(payload)
}

fn varint_len(mut v: u64) -> usize {
    let mut n = 1;
    while v >= 0x80 {
        v >>= 7;
        n += 1;
    }
    n
}

/// Inputs of the state machine.
#[derive(Debug)]
pub enum Event {
    /// The application sends a message; its slot is already reserved in the store.
    Send {
        /// Target and hash.
        key: MessageKey,
        /// Payload.
        payload: Bytes,
        /// The message's encoded frame, if it has one (`payload` is a view into it): every
        /// whole transmission sends it as it is.
        frame: Option<EncodedFrame>,
    },
    /// A stream is up and its peer is known.
    StreamOpened {
        /// The stream.
        stream: StreamId,
        /// Who is at the other end.
        peer: NodeId,
        /// What the stream is.
        kind: StreamKind,
    },
    /// A stream ended (error, peer closed it, or we closed it).
    StreamClosed {
        /// The stream.
        stream: StreamId,
        /// Why, for logs and completions.
        reason: String,
    },
    /// A payload frame arrived.
    MessageReceived {
        /// The stream it came on.
        stream: StreamId,
        /// The frame.
        message: WireMessage,
    },
    /// An ACK arrived.
    AckReceived {
        /// The stream it came on.
        stream: StreamId,
        /// The ACK.
        ack: WireAck,
    },
    /// The application added a neighbour whose link is still being established: messages to
    /// it wait for the link (within their TTL) instead of failing as not connected.
    NeighborAdded {
        /// The neighbour.
        peer: NodeId,
    },
    /// The largest message, encoded, that neighbour `peer` takes if it turns out to be an
    /// original node (a peer without the `chunk` feature), as the application configured it
    /// ([`NeighborInfo::max_message`](crate::NeighborInfo::max_message)); `None`: the node's
    /// default (see [`MessageManager::with_original_limit`]). Kept until the neighbour is
    /// removed.
    NeighborLimit {
        /// The neighbour.
        peer: NodeId,
        /// Its limit, if configured.
        max_message: Option<usize>,
    },
    /// The application removed a neighbour.
    Disconnect {
        /// The neighbour.
        peer: NodeId,
    },
    /// What a peer understands became known.
    PeerFeatures {
        /// The peer.
        peer: NodeId,
        /// It announced the `chunk` feature: it takes chunked messages.
        chunk: bool,
        /// It announced the `confirm` feature: it understands `Pending` and `Retry` ACKs.
        confirm: bool,
    },
    /// The application answered for a delivery that needed confirmation (acknowledged
    /// deliveries, see [`MessageManager::with_confirmed_deliveries`]).
    Settled {
        /// Who sent the message.
        from: NodeId,
        /// Its hash.
        hash: String,
        /// Confirmed: ACK it. Declined (or dropped): ask the sender to send it again.
        taken: bool,
    },
    /// The node replaces its link to `peer` (to dial it again differently): the link is
    /// closed and reported down; messages outstanding on it (the node waits until there are
    /// none) would go out again on the next one.
    ReplaceLink {
        /// The neighbour.
        peer: NodeId,
        /// Why, for logs.
        reason: String,
    },
    /// Time passed: check TTLs.
    Tick,
    /// The node stops: everything in flight fails.
    Shutdown,
}

/// Outputs of the state machine, carried out by the node in order.
#[derive(Debug, PartialEq)]
pub enum Action {
    /// Write a payload frame on a stream.
    Transmit {
        /// The stream.
        stream: StreamId,
        /// The frame.
        message: WireMessage,
        /// `message` already encoded (shared, not copied), when the application's message
        /// came with its frame (see [`crate::payload`]); or only its payload, encoded alone
        /// (a shared payload's tail), to go after a header where the peer takes that.
        frame: Option<EncodedFrame>,
    },
    /// Write an ACK on a stream.
    SendAck {
        /// The stream.
        stream: StreamId,
        /// The ACK.
        ack: WireAck,
    },
    /// Hand a message to the application.
    Deliver(Delivery),
    /// A sent message is finished.
    Complete(Completion),
    /// Close a stream (its link is torn down).
    CloseStream(StreamId),
    /// An ACK arrived for a message this manager is not tracking (late, bogus, or the answer
    /// of an original node to a broadcast it was sent as a plain message).
    UntrackedAck {
        /// Who sent it.
        peer: NodeId,
        /// The hash it acknowledges.
        hash: String,
    },
    /// Nothing is kept for this peer any more (no stream, not a neighbour, nothing in flight
    /// or waiting): whatever the node keeps beside the manager for it can go too. So ids that
    /// a client merely claimed leave no state behind.
    Forget {
        /// The peer.
        peer: NodeId,
    },
    /// The outbound double stream to a neighbour is gone.
    LinkDown {
        /// The neighbour.
        peer: NodeId,
        /// The link's MessageStream (so a newer link to the same peer is left alone).
        stream: StreamId,
        /// Why.
        reason: String,
    },
}

#[derive(Default, Debug)]
struct PeerStreams {
    out_messages: Option<StreamId>,
    out_acks: Option<StreamId>,
    /// AckStreams the peer opened to us, oldest first; ACKs go back on the newest. Several can
    /// be open at once (a reconnection, or another client under the same id); none is closed
    /// on account of another, so that claiming an id cannot cut off the real peer.
    in_acks: Vec<StreamId>,
    /// The application removed this neighbour: sends to it fail until it is connected again.
    removed: bool,
    /// Last sign of life while messages are outstanding: an ACK, the link coming up, or the
    /// first message after a quiet spell. The stall check measures from here.
    last_progress: Option<Instant>,
    /// How many outstanding messages (from the front) went out on the current link.
    sent_on_link: usize,
    /// Whether the peer takes chunked messages; `None` until it is known.
    chunking: Option<bool>,
    /// The largest encoded message the peer took to be too large, less one: learned from a
    /// `RESOURCE_EXHAUSTED` that ended our MessageStream to it.
    receive_limit: Option<usize>,
    /// Whether the peer understands `Pending` and `Retry` ACKs.
    confirm: bool,
    /// When a warning about this peer was last logged, and how many were held back since.
    warned: Option<Instant>,
    quiet: u64,
    /// Streams of this peer registered now, of every kind.
    streams: usize,
    /// A neighbour of ours (we link to it, or the application added it): kept while its link
    /// is down.
    neighbor: bool,
}

/// A message sent to a peer and not yet completed, kept for retransmission.
#[derive(Debug)]
struct Outstanding {
    hash: String,
    payload: Bytes,
    /// Its encoded frame, sent again as it is by every whole transmission.
    frame: Option<EncodedFrame>,
    /// Transmissions so far (0 while it waits for the link).
    attempts: u32,
    /// The receiver answered `Pending`: it has the message and waits for its application, so
    /// the silence that follows is not a stall.
    held: bool,
    /// The receiver answered `Retry`: send it again at this time (on the current link).
    retry_at: Option<Instant>,
    /// `Retry` answers so far, for the backoff.
    retries: u32,
}

/// Messages received that wait for the application's confirmation (acknowledged deliveries),
/// per sender.
#[derive(Debug)]
struct Awaiting {
    /// Hash -> the stream its last copy came on (where a single-stream ACK goes back).
    entries: HashMap<String, (StreamKind, StreamId)>,
    /// When the sender was last told `Pending`.
    told: Instant,
}

/// How often a sender is reminded that messages still wait for the application here, so its
/// stall check (`NodeConfig::ack_timeout`, 5 s by default) sees a live peer.
const PENDING_REMINDER: Duration = Duration::from_millis(500);
/// First delay before a message answered with `Retry` goes again; it doubles per `Retry` up
/// to [`RETRY_MAX`].
const RETRY_FIRST: Duration = Duration::from_millis(100);
const RETRY_MAX: Duration = Duration::from_secs(5);

/// At most one warning per peer and kind of trouble in this interval (see `warn_limited`).
const WARN_EVERY: Duration = Duration::from_secs(10);

/// ACKs waiting for a route to their target, per target at most this many.
const UNROUTED_ACKS_PER_PEER: usize = 4096;

/// The message state machine. See the module docs.
pub struct MessageManager {
    local: NodeId,
    store: Arc<SlotStore>,
    limits: Limits,
    counters: Arc<Counters>,
    ack_timeout: Duration,
    streams: StreamMap<(NodeId, StreamKind)>,
    peers: HashMap<NodeId, PeerStreams>,
    outstanding: HashMap<NodeId, VecDeque<Outstanding>>,
    unrouted: HashMap<NodeId, VecDeque<(Instant, WireAck)>>,
    chunk_bytes: usize,
    /// The largest encoded message an original node (a peer without the `chunk` feature)
    /// takes; see [`MessageManager::with_original_limit`].
    original_limit: usize,
    /// Limits configured per neighbour, in place of `original_limit` ([`Event::NeighborLimit`]).
    neighbor_limits: HashMap<NodeId, usize>,
    reassembler: Reassembler,
    /// What arrived lately, for de-duplication.
    seen: SeenCache,
    /// Acknowledged deliveries: ACK only on [`Event::Settled`].
    confirmed: bool,
    awaiting: HashMap<NodeId, Awaiting>,
}

impl std::fmt::Debug for MessageManager {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MessageManager")
            .field("local", &self.local)
            .field("streams", &self.streams.len())
            .field("peers", &self.peers.len())
            .finish_non_exhaustive()
    }
}

impl MessageManager {
    /// A manager for node `local`, tracking messages in `store`. A linked peer with messages
    /// outstanding that shows no progress (no ACK) for `ack_timeout` is treated as a broken
    /// link: torn down, reconnected, and its messages sent again.
    pub fn new(
        local: NodeId,
        store: Arc<SlotStore>,
        limits: Limits,
        counters: Arc<Counters>,
        ack_timeout: Duration,
    ) -> MessageManager {
        MessageManager {
            reassembler: Reassembler::new(&limits),
            seen: SeenCache::new(DEFAULT_SEEN_CAPACITY, store.ttl()),
            local,
            store,
            limits,
            counters,
            ack_timeout,
            streams: StreamMap::default(),
            peers: HashMap::new(),
            outstanding: HashMap::new(),
            unrouted: HashMap::new(),
            chunk_bytes: 1024 * 1024,
            original_limit: ORIGINAL_LIMIT,
            neighbor_limits: HashMap::new(),
            confirmed: false,
            awaiting: HashMap::new(),
        }
    }

    /// Acknowledged deliveries: a received message is delivered and then waits for
    /// [`Event::Settled`]; only a confirmation records it as seen and ACKs it. Meanwhile a
    /// retransmission of it is neither delivered again nor ACKed, and senders that understand
    /// it are told `Pending` (so their stall check sees a live peer); a decline tells them
    /// `Retry`.
    pub fn with_confirmed_deliveries(mut self) -> MessageManager {
        self.confirmed = true;
        self
    }

    /// Received messages waiting for the application's confirmation.
    pub fn awaiting_confirmation(&self) -> usize {
        self.awaiting.values().map(|a| a.entries.len()).sum()
    }

    /// The largest message, encoded, that a peer without the `chunk` feature (an original Go
    /// node) takes: larger ones to it fail at once as [`FailReason::TooLarge`], and wait for
    /// the peer's features while they are unknown. Default [`ORIGINAL_LIMIT`] (grpc-go's).
    pub fn with_original_limit(mut self, bytes: usize) -> MessageManager {
        self.original_limit = bytes;
        self
    }

    /// The seen-cache remembers at most `pairs` (sender, hash) pairs (each for the store's TTL);
    /// default [`DEFAULT_SEEN_CAPACITY`].
    pub fn with_seen_capacity(mut self, pairs: usize) -> MessageManager {
        self.seen = SeenCache::new(pairs, self.store.ttl());
        self
    }

    /// Whether `hash` from `from` arrived within the TTL (it would be ACKed, not delivered).
    pub fn has_seen(&self, from: &NodeId, hash: &str, now: Instant) -> bool {
        self.seen.contains(from, hash, now)
    }

    /// (Sender, hash) pairs the seen-cache remembers now.
    pub fn seen_len(&self) -> usize {
        self.seen.len()
    }

    /// Messages larger than `bytes` go in chunks of `bytes` to peers that take them.
    pub fn with_chunk_bytes(mut self, bytes: usize) -> MessageManager {
        self.chunk_bytes = bytes.max(1);
        self
    }

    /// Messages outstanding (sent or waiting for the link, not completed) to `peer`.
    pub fn outstanding_to(&self, peer: &NodeId) -> usize {
        self.outstanding.get(peer).map_or(0, VecDeque::len)
    }

    /// The largest frame, encoded, that `peer` takes whole, if it is known to be an original
    /// node (no `chunk` feature): its configured or default limit, or the smaller one it
    /// taught us with `RESOURCE_EXHAUSTED`. `None` for our own nodes and peers whose features
    /// are not known yet.
    pub fn original_limit_of(&self, peer: &NodeId) -> Option<usize> {
        let entry = self.peers.get(peer)?;
        (entry.chunking == Some(false)).then(|| {
            limit_of(&self.neighbor_limits, self.original_limit, peer)
                .min(entry.receive_limit.unwrap_or(usize::MAX))
        })
    }

    /// The store this manager completes messages in.
    pub fn store(&self) -> &Arc<SlotStore> {
        &self.store
    }

    /// The peer at the other end of `stream`, and what the stream is.
    pub fn stream_peer(&self, stream: StreamId) -> Option<&(NodeId, StreamKind)> {
        self.streams.get(&stream)
    }

    /// Our outbound MessageStream to `peer`, if the link is up.
    pub fn message_stream_to(&self, peer: &NodeId) -> Option<StreamId> {
        self.peers.get(peer).and_then(|p| p.out_messages)
    }

    /// Where an ACK to `peer` goes: our outbound AckStream to it, else the newest AckStream it
    /// opened to us.
    pub fn ack_stream_to(&self, peer: &NodeId) -> Option<StreamId> {
        self.peers
            .get(peer)
            .and_then(|p| p.out_acks.or(p.in_acks.last().copied()))
    }

    /// Whether we have an outbound MessageStream to `peer`.
    pub fn is_linked(&self, peer: &NodeId) -> bool {
        self.peers
            .get(peer)
            .is_some_and(|p| p.out_messages.is_some())
    }

    /// Feeds one event; appends the resulting actions to `out`.
    pub fn handle(&mut self, event: Event, now: Instant, out: &mut Vec<Action>) {
        match event {
            Event::Send {
                key,
                payload,
                frame,
            } => self.on_send(key, payload, frame, now, out),
            Event::StreamOpened { stream, peer, kind } => {
                self.on_stream_opened(stream, peer, kind, now, out)
            }
            Event::StreamClosed { stream, reason } => {
                self.on_stream_closed(stream, reason, now, out)
            }
            Event::MessageReceived { stream, message } => {
                self.on_message(stream, message, now, out)
            }
            Event::AckReceived { stream, ack } => self.on_ack(stream, ack, now, out),
            Event::Disconnect { peer } => self.on_disconnect(peer, now, out),
            Event::NeighborAdded { peer } => {
                let entry = self.peers.entry(peer).or_default();
                entry.removed = false;
                entry.neighbor = true;
            }
            Event::NeighborLimit { peer, max_message } => {
                match max_message {
                    Some(bytes) => self.neighbor_limits.insert(peer.clone(), bytes),
                    None => self.neighbor_limits.remove(&peer),
                };
                // Messages that waited for the peer's features may fit (or fail) now.
                self.pump(&peer, now, out);
            }
            Event::PeerFeatures {
                peer,
                chunk,
                confirm,
            } => {
                let entry = self.peers.entry(peer.clone()).or_default();
                entry.chunking = Some(chunk);
                entry.confirm = confirm;
                self.pump(&peer, now, out);
            }
            Event::Settled { from, hash, taken } => self.on_settled(from, hash, taken, now, out),
            Event::ReplaceLink { peer, reason } => self.tear_down_link(&peer, reason, out),
            Event::Tick => self.on_tick(now, out),
            Event::Shutdown => {
                for (key, t) in self.store.close() {
                    self.complete(key, t, Outcome::Failed(FailReason::Shutdown), now, out);
                }
            }
        }
    }

    /// Forgets the outstanding copy of `key`; returns how many times it was transmitted.
    fn take_outstanding(&mut self, key: &MessageKey) -> u32 {
        let Some(queue) = self.outstanding.get_mut(&key.peer) else {
            return 0;
        };
        let Some(pos) = queue.iter().position(|o| o.hash == key.hash) else {
            return 0;
        };
        let attempts = queue.remove(pos).map_or(0, |o| o.attempts);
        if queue.is_empty() {
            self.outstanding.remove(&key.peer);
        }
        if let Some(entry) = self.peers.get_mut(&key.peer) {
            if pos < entry.sent_on_link {
                entry.sent_on_link -= 1;
            }
        }
        attempts
    }

    fn complete(
        &mut self,
        key: MessageKey,
        tracked: Tracked,
        outcome: Outcome,
        now: Instant,
        out: &mut Vec<Action>,
    ) {
        let attempts = self.take_outstanding(&key);
        let elapsed = now.saturating_duration_since(tracked.sent_at);
        let peer = self.counters.peers.of(&key.peer);
        match &outcome {
            Outcome::Acked { .. } => {
                bump(&self.counters.acked);
                bump(&peer.acked);
                self.counters.ack_latency.record(elapsed);
            }
            Outcome::TimedOut => {
                bump(&self.counters.timed_out);
                bump(&peer.timed_out);
            }
            Outcome::Failed(_) => {
                bump(&self.counters.failed);
                bump(&peer.failed);
            }
        }
        out.push(Action::Complete(Completion {
            key,
            outcome,
            elapsed,
            attempts,
        }));
    }

    fn on_send(
        &mut self,
        key: MessageKey,
        payload: Bytes,
        frame: Option<EncodedFrame>,
        now: Instant,
        out: &mut Vec<Action>,
    ) {
        let Some(entry) = self.peers.get_mut(&key.peer).filter(|p| !p.removed) else {
            if let Some(t) = self.store.complete(&key) {
                self.complete(key, t, Outcome::Failed(FailReason::NotConnected), now, out);
            }
            return;
        };
        let queue = self.outstanding.entry(key.peer.clone()).or_default();
        if queue.is_empty() {
            entry.last_progress = Some(now);
        }
        queue.push_back(Outstanding {
            hash: key.hash,
            payload,
            frame,
            attempts: 0,
            held: false,
            retry_at: None,
            retries: 0,
        });
        // If the link is down, the message waits and goes out when it is back.
        self.pump(&key.peer, now, out);
    }

    /// Transmits, in send order, the outstanding messages to `peer` that have not gone out on
    /// its current link. A message too large for one frame goes in chunks; while the peer's
    /// support for chunks is unknown it (and what follows it) waits, and a peer without it
    /// gets the message refused.
    fn pump(&mut self, peer: &NodeId, now: Instant, out: &mut Vec<Action>) {
        let Some(route) = self.route_to(peer) else {
            return;
        };
        let (Some(entry), Some(queue)) = (self.peers.get_mut(peer), self.outstanding.get_mut(peer))
        else {
            return;
        };
        let original_limit = limit_of(&self.neighbor_limits, self.original_limit, peer);
        let mut refused = Vec::new();
        while let Some(o) = queue.get_mut(entry.sent_on_link) {
            match fit(o, entry, &self.limits, original_limit, &self.local) {
                Fit::Send => {
                    let limit = whole_limit(entry, original_limit).unwrap_or(usize::MAX);
                    transmit(o, &route, limit, out)
                }
                Fit::Wait => break,
                Fit::Fail(reason) => refused.push((o.hash.clone(), reason)),
            }
            entry.sent_on_link += 1;
        }
        self.fail_all(peer, refused, now, out);
    }

    /// Fails the messages to `peer` that it cannot take, each with its reason.
    fn fail_all(
        &mut self,
        peer: &NodeId,
        refused: Vec<(String, FailReason)>,
        now: Instant,
        out: &mut Vec<Action>,
    ) {
        for (hash, reason) in refused {
            let key = MessageKey {
                peer: peer.clone(),
                hash,
            };
            if let Some(t) = self.store.complete(&key) {
                self.complete(key, t, Outcome::Failed(reason), now, out);
            }
        }
    }

    /// Where `peer`'s messages go now; `None` while its link is down.
    fn route_to(&self, peer: &NodeId) -> Option<Route> {
        let entry = self.peers.get(peer)?;
        Some(Route {
            stream: entry.out_messages?,
            chunking: entry.chunking,
            chunk_bytes: self.chunk_bytes,
            from: self.local.to_string(),
            counters: self.counters.clone(),
            peer: self.counters.peers.of(peer),
        })
    }

    /// Sends again, on the current link, the messages to `peer` whose `Retry` delay is over.
    fn retry_due(&mut self, peer: &NodeId, now: Instant, out: &mut Vec<Action>) {
        let Some(route) = self.route_to(peer) else {
            return;
        };
        let (Some(entry), Some(queue)) = (self.peers.get(peer), self.outstanding.get_mut(peer))
        else {
            return;
        };
        let original_limit = limit_of(&self.neighbor_limits, self.original_limit, peer);
        let mut refused = Vec::new();
        for o in queue.iter_mut().take(entry.sent_on_link) {
            if o.retry_at.is_some_and(|t| t <= now) {
                // What the peer takes may have changed since (it reconnected as another
                // version).
                match fit(o, entry, &self.limits, original_limit, &self.local) {
                    Fit::Send => {
                        let limit = whole_limit(entry, original_limit).unwrap_or(usize::MAX);
                        transmit(o, &route, limit, out)
                    }
                    Fit::Wait => {}
                    Fit::Fail(reason) => refused.push((o.hash.clone(), reason)),
                }
            }
        }
        self.fail_all(peer, refused, now, out);
    }

    fn on_stream_opened(
        &mut self,
        stream: StreamId,
        peer: NodeId,
        kind: StreamKind,
        now: Instant,
        out: &mut Vec<Action>,
    ) {
        debug!(
            "{}: stream {:?} {:?} with {}",
            self.local, stream, kind, peer
        );
        let new = self.streams.insert(stream, (peer.clone(), kind)).is_none();
        let entry = self.peers.entry(peer.clone()).or_default();
        if new {
            entry.streams += 1;
        }
        let replaced = match kind {
            StreamKind::OutboundMessages => entry.out_messages.replace(stream),
            StreamKind::OutboundAcks => entry.out_acks.replace(stream),
            StreamKind::InboundAcks => {
                entry.in_acks.push(stream);
                None
            }
            StreamKind::InboundMessages
            | StreamKind::InboundOriginalMessages
            | StreamKind::InboundSingle
            | StreamKind::InboundOriginalAcks => None,
        };
        if let Some(old) = replaced.filter(|old| *old != stream) {
            // Our own newer stream of the same kind supersedes the old one.
            out.push(Action::CloseStream(old));
        }
        if kind == StreamKind::OutboundMessages {
            entry.removed = false;
            entry.neighbor = true;
            entry.last_progress = Some(now);
            entry.sent_on_link = 0;
            // Everything not yet acknowledged goes (again) on the new link, in send order.
            self.pump(&peer, now, out);
        }
        if matches!(kind, StreamKind::OutboundAcks | StreamKind::InboundAcks) {
            if let Some(waiting) = self.unrouted.remove(&peer) {
                for (_, ack) in waiting {
                    out.push(Action::SendAck { stream, ack });
                }
            }
        }
    }

    fn on_stream_closed(
        &mut self,
        stream: StreamId,
        reason: String,
        now: Instant,
        out: &mut Vec<Action>,
    ) {
        self.reassembler.close(stream);
        self.publish_partial();
        let Some((peer, kind)) = self.unregister(stream) else {
            return;
        };
        debug!(
            "{}: stream {:?} {:?} with {} closed: {}",
            self.local, stream, kind, peer, reason
        );
        let Some(entry) = self.peers.get_mut(&peer) else {
            return;
        };
        let slot = match kind {
            StreamKind::OutboundMessages => Some(&mut entry.out_messages),
            StreamKind::OutboundAcks => Some(&mut entry.out_acks),
            StreamKind::InboundAcks => {
                entry.in_acks.retain(|s| *s != stream);
                None
            }
            StreamKind::InboundMessages
            | StreamKind::InboundOriginalMessages
            | StreamKind::InboundSingle
            | StreamKind::InboundOriginalAcks => None,
        };
        // The outbound double stream lives and dies as one link (an old, superseded stream
        // takes nothing with it).
        if slot.is_some_and(|slot| *slot == Some(stream)) {
            if kind == StreamKind::OutboundMessages && reason.contains("RESOURCE_EXHAUSTED") {
                self.too_large_for(&peer, &reason, now, out);
            }
            self.tear_down_link(&peer, reason, out);
        }
        self.prune(&peer, out);
    }

    /// The peer ended our MessageStream with `RESOURCE_EXHAUSTED`: a message was larger than
    /// it takes (an original node's gRPC receive limit). The largest one sent on the link is
    /// taken to be it: it fails as too large (sending it again would only be refused again)
    /// and the peer's limit is learned from it, so larger ones fail at once; the others go out
    /// again on the next link.
    fn too_large_for(&mut self, peer: &NodeId, reason: &str, now: Instant, out: &mut Vec<Action>) {
        let (Some(entry), Some(queue)) = (self.peers.get_mut(peer), self.outstanding.get(peer))
        else {
            return;
        };
        if entry.chunking == Some(true) {
            return; // ours: they answer "busy" with an ACK, never with this status
        }
        let local = self.local.as_str();
        let largest = queue
            .iter()
            .take(entry.sent_on_link)
            .map(|o| (encoded_len(&o.hash, local, o.payload.len()), o.hash.clone()))
            .max();
        let Some((encoded, hash)) = largest else {
            return;
        };
        let limit = encoded.saturating_sub(1);
        entry.receive_limit = Some(entry.receive_limit.map_or(limit, |l| l.min(limit)));
        let key = MessageKey {
            peer: peer.clone(),
            hash,
        };
        if let Some(t) = self.store.complete(&key) {
            let why = format!("{peer} refused {encoded} bytes encoded: {reason}");
            warn!("{}: message {} to {peer}: {why}", self.local, key.hash);
            self.complete(key, t, Outcome::Failed(FailReason::TooLarge(why)), now, out);
        }
    }

    /// Forgets a stream; returns whose it was and what it was.
    fn unregister(&mut self, stream: StreamId) -> Option<(NodeId, StreamKind)> {
        let (peer, kind) = self.streams.remove(&stream)?;
        if let Some(entry) = self.peers.get_mut(&peer) {
            entry.streams = entry.streams.saturating_sub(1);
        }
        Some((peer, kind))
    }

    /// Drops what is kept for `peer` once nothing needs it: no stream, not a neighbour,
    /// nothing outstanding to it or waiting for the application from it.
    fn prune(&mut self, peer: &NodeId, out: &mut Vec<Action>) {
        let idle = self
            .peers
            .get(peer)
            .is_some_and(|e| e.streams == 0 && !e.neighbor)
            && !self.outstanding.contains_key(peer)
            && !self.awaiting.contains_key(peer);
        if idle {
            self.peers.remove(peer);
            out.push(Action::Forget { peer: peer.clone() });
        }
    }

    /// Bytes of partly received chunked messages charged against
    /// [`Limits::partial_bytes`] now (each message's announced size).
    pub fn partial_bytes(&self) -> usize {
        self.reassembler.held_bytes()
    }

    /// Bytes of free buffers kept to put later chunked messages together in: buffers of
    /// delivered messages the application has dropped, freed after two idle seconds.
    pub fn recycled_bytes(&self) -> usize {
        self.reassembler.recycled_bytes()
    }

    /// Bytes of partly received chunked messages charged to `peer` now (its share is
    /// [`Limits::peer_partial_bytes`]).
    pub fn partial_bytes_of(&self, peer: &NodeId) -> usize {
        self.reassembler.held_bytes_of(peer)
    }

    /// Peers the manager keeps state for now.
    pub fn known_peers(&self) -> usize {
        self.peers.len()
    }

    /// Closes both outbound streams to `peer` and reports the link down. Outstanding messages
    /// stay, to be sent again on the next link.
    fn tear_down_link(&mut self, peer: &NodeId, reason: String, out: &mut Vec<Action>) {
        let Some(entry) = self.peers.get_mut(peer) else {
            return;
        };
        let messages = entry.out_messages.take();
        let acks = entry.out_acks.take();
        for s in [messages, acks].into_iter().flatten() {
            if self.unregister(s).is_some() {
                out.push(Action::CloseStream(s));
            }
        }
        if let Some(stream) = messages {
            out.push(Action::LinkDown {
                peer: peer.clone(),
                stream,
                reason,
            });
        }
    }

    fn on_disconnect(&mut self, peer: NodeId, now: Instant, out: &mut Vec<Action>) {
        let mut closing = Vec::new();
        if let Some(entry) = self.peers.get_mut(&peer) {
            entry.removed = true;
            entry.neighbor = false;
            closing.extend([entry.out_messages.take(), entry.out_acks.take()]);
        }
        for s in closing.into_iter().flatten() {
            self.unregister(s);
            out.push(Action::CloseStream(s));
        }
        self.neighbor_limits.remove(&peer);
        for (key, t) in self.store.remove_peer(&peer) {
            self.complete(key, t, Outcome::Failed(FailReason::Disconnected), now, out);
        }
        self.prune(&peer, out);
    }

    fn on_message(
        &mut self,
        stream: StreamId,
        message: WireMessage,
        now: Instant,
        out: &mut Vec<Action>,
    ) {
        let Some((peer, kind)) = self.streams.get(&stream).cloned() else {
            warn!(
                "{}: frame on unregistered stream {:?} dropped",
                self.local, stream
            );
            return;
        };
        let counted = self.counters.peers.of(&peer);
        add(&self.counters.bytes_received, message.payload.len());
        add(&counted.bytes_received, message.payload.len());
        if let Err(e) = validate_id(IdKind::Message, &message.hash, &self.limits) {
            // Without a usable hash there is nothing to ACK; the sender's TTL will tell it. (A
            // peer that announced our features has had its call ended by the transport.)
            bump(&self.counters.rejected);
            self.warn_limited(&peer, now, || format!("frame from {peer} dropped: {e}"));
            return;
        }
        let mut message = message;
        let mut rejection = None;
        let chunked = message.total > 0;
        if chunked {
            let added = self.reassembler.add(stream, &peer, message);
            self.publish_partial();
            match added {
                Reassembly::Incomplete | Reassembly::Dropped => return,
                Reassembly::Complete(whole) => message = whole,
                Reassembly::Invalid { hash, reason } => {
                    // Answer for the hash, so the sender learns why rather than timing out.
                    message = WireMessage::whole(hash, String::new(), Bytes::new());
                    rejection = Some(reason);
                }
                Reassembly::Busy { hash, reason } => {
                    return self.refuse_busy(&peer, kind, stream, hash, reason, now, out);
                }
            }
        }
        bump(&self.counters.received);
        bump(&counted.received);
        let rejection = if rejection.is_some() {
            rejection
        } else if !message.from.is_empty() && message.from != peer.as_str() {
            Some(format!(
                "from_hash {:?} does not match the stream's sender {:?}",
                message.from,
                peer.as_str()
            ))
        } else if !chunked && message.payload.len() > self.limits.max_payload_bytes {
            Some(format!(
                "payload of {} bytes exceeds the limit of {}",
                message.payload.len(),
                self.limits.max_payload_bytes
            ))
        } else {
            None
        };
        if rejection.is_none() && self.confirmed {
            return self.on_message_to_confirm(peer, kind, stream, message, now, out);
        }
        let (status, detail) = match rejection {
            Some(why) => {
                bump(&self.counters.rejected);
                warn!(
                    "{}: message {:?} from {} rejected: {}",
                    self.local, message.hash, peer, why
                );
                (AckStatus::Rejected, why)
            }
            None if self.seen.observe(&peer, &message.hash, now) => {
                bump(&self.counters.delivered);
                bump(&counted.delivered);
                out.push(Action::Deliver(Delivery::new(
                    peer.clone(),
                    message.hash.clone(),
                    message.payload,
                    None,
                )));
                (AckStatus::Received, String::new())
            }
            None => {
                bump(&self.counters.duplicates);
                (AckStatus::Duplicate, String::new())
            }
        };
        if status == AckStatus::Rejected && kind == StreamKind::InboundOriginalMessages {
            warn!(
                "{}: refusal of {:?} not sent to {peer}: an original node takes any ACK for a \
                 delivery",
                self.local, message.hash
            );
            return;
        }
        let ack = WireAck {
            hash: message.hash,
            from: self.local.to_string(),
            status,
            detail,
        };
        self.route_ack(&peer, kind, stream, ack, now, out);
    }

    fn publish_partial(&self) {
        let held = self.reassembler.held_bytes() as u64;
        self.counters
            .partial_bytes
            .store(held, std::sync::atomic::Ordering::Relaxed);
    }

    /// A message refused for want of room now: "retry later" to a peer that understands it,
    /// a final refusal to one that does not (it would read an unknown status as received).
    #[allow(clippy::too_many_arguments)]
    fn refuse_busy(
        &mut self,
        peer: &NodeId,
        kind: StreamKind,
        stream: StreamId,
        hash: String,
        reason: String,
        now: Instant,
        out: &mut Vec<Action>,
    ) {
        bump(&self.counters.refused_busy);
        self.warn_limited(peer, now, || {
            format!("message {hash:?} from {peer} refused: {reason}")
        });
        let understands = self.peers.get(peer).is_some_and(|p| p.confirm);
        let status = if understands {
            AckStatus::Retry
        } else {
            AckStatus::Rejected
        };
        let ack = self.ack(hash, status, reason);
        self.route_ack(peer, kind, stream, ack, now, out);
    }

    /// Logs a warning about `peer` unless one was logged in the last [`WARN_EVERY`]: a peer
    /// that repeats a refused pattern costs one log line per interval, not one per frame.
    fn warn_limited(&mut self, peer: &NodeId, now: Instant, line: impl FnOnce() -> String) {
        let entry = self.peers.entry(peer.clone()).or_default();
        if entry
            .warned
            .is_some_and(|t| now.saturating_duration_since(t) < WARN_EVERY)
        {
            entry.quiet += 1;
            return;
        }
        let quiet = std::mem::take(&mut entry.quiet);
        entry.warned = Some(now);
        if quiet > 0 {
            warn!(
                "{}: {} ({quiet} more like it not logged)",
                self.local,
                line()
            );
        } else {
            warn!("{}: {}", self.local, line());
        }
    }

    /// A valid message under acknowledged deliveries: a duplicate of a confirmed one is ACKed
    /// as such; a copy of one still waiting for the application only refreshes where its ACK
    /// goes; a new one is delivered and waits. The seen-cache learns it on confirmation.
    fn on_message_to_confirm(
        &mut self,
        peer: NodeId,
        kind: StreamKind,
        stream: StreamId,
        message: WireMessage,
        now: Instant,
        out: &mut Vec<Action>,
    ) {
        if self.seen.contains(&peer, &message.hash, now) {
            bump(&self.counters.duplicates);
            let ack = self.ack(message.hash, AckStatus::Duplicate, String::new());
            return self.route_ack(&peer, kind, stream, ack, now, out);
        }
        let waiting = self
            .awaiting
            .entry(peer.clone())
            .or_insert_with(|| Awaiting {
                entries: HashMap::new(),
                told: now,
            });
        let first = waiting
            .entries
            .insert(message.hash.clone(), (kind, stream))
            .is_none();
        if first {
            let counted = self.counters.peers.of(&peer);
            bump(&self.counters.delivered);
            bump(&counted.delivered);
            out.push(Action::Deliver(Delivery::new(
                peer.clone(),
                message.hash.clone(),
                message.payload,
                None,
            )));
        } else {
            bump(&self.counters.duplicates);
        }
        waiting.told = now;
        self.tell_pending(&peer, kind, stream, message.hash, now, out);
    }

    /// Tells `peer` (if it understands it) that `hash` waits for the application.
    fn tell_pending(
        &mut self,
        peer: &NodeId,
        kind: StreamKind,
        stream: StreamId,
        hash: String,
        now: Instant,
        out: &mut Vec<Action>,
    ) {
        let understands = self.peers.get(peer).is_some_and(|p| p.confirm);
        if !understands {
            return;
        }
        // Routed like any ACK: it waits (bounded) for a route if the peer's AckStream is not
        // registered yet, so that the first sign of life is not lost to a race.
        let ack = self.ack(hash, AckStatus::Pending, String::new());
        self.route_ack(peer, kind, stream, ack, now, out);
    }

    fn ack(&self, hash: String, status: AckStatus, detail: String) -> WireAck {
        WireAck {
            hash,
            from: self.local.to_string(),
            status,
            detail,
        }
    }

    /// The application confirmed or declined a delivery.
    fn on_settled(
        &mut self,
        from: NodeId,
        hash: String,
        taken: bool,
        now: Instant,
        out: &mut Vec<Action>,
    ) {
        let Some(waiting) = self.awaiting.get_mut(&from) else {
            return;
        };
        let Some((kind, stream)) = waiting.entries.remove(&hash) else {
            return;
        };
        if waiting.entries.is_empty() {
            self.awaiting.remove(&from);
        }
        if taken {
            self.seen.observe(&from, &hash, now);
            let ack = self.ack(hash, AckStatus::Received, String::new());
            self.route_ack(&from, kind, stream, ack, now, out);
        } else {
            bump(&self.counters.declined);
            let understands = self.peers.get(&from).is_some_and(|p| p.confirm);
            if understands {
                let why = "not taken by the receiving application; send it again later".to_owned();
                let ack = self.ack(hash, AckStatus::Retry, why);
                self.route_ack(&from, kind, stream, ack, now, out);
            }
            // An original peer gets no ACK and sends it again after its own timeout.
        }
        // A client whose streams ended while the application held its message.
        self.prune(&from, out);
    }

    /// Reminds each sender with messages waiting for the application here that they wait, so
    /// that a slow application does not look like a dead link.
    fn remind_pending(&mut self, now: Instant, out: &mut Vec<Action>) {
        let due: Vec<(NodeId, String, StreamKind, StreamId)> = self
            .awaiting
            .iter_mut()
            .filter(|(_, w)| now.saturating_duration_since(w.told) >= PENDING_REMINDER)
            .filter_map(|(peer, w)| {
                w.told = now;
                // One per sender is enough: any answer counts as progress there.
                let (hash, (kind, stream)) = w.entries.iter().next()?;
                Some((peer.clone(), hash.clone(), *kind, *stream))
            })
            .collect();
        for (peer, hash, kind, stream) in due {
            self.tell_pending(&peer, kind, stream, hash, now, out);
        }
    }

    fn route_ack(
        &mut self,
        peer: &NodeId,
        kind: StreamKind,
        came_on: StreamId,
        ack: WireAck,
        now: Instant,
        out: &mut Vec<Action>,
    ) {
        if kind == StreamKind::InboundSingle {
            out.push(Action::SendAck {
                stream: came_on,
                ack,
            });
            return;
        }
        match self.ack_stream_to(peer) {
            Some(stream) => out.push(Action::SendAck { stream, ack }),
            None => {
                let queue = self.unrouted.entry(peer.clone()).or_default();
                if queue.is_empty() {
                    let neighbor = self.peers.get(peer).is_some_and(|e| e.neighbor);
                    if !neighbor {
                        // An original node reads ACKs only on the AckStream we open to it, and
                        // we open one only to a neighbour.
                        warn!(
                            "{}: ACKs to {peer} wait for a link to it (it reads none on the \
                             streams it opened; add it as a neighbour), and expire with the TTL",
                            self.local
                        );
                    }
                }
                if queue.len() >= UNROUTED_ACKS_PER_PEER {
                    queue.pop_front();
                    bump(&self.counters.unrouted_acks_dropped);
                    warn!(
                        "{}: too many ACKs waiting for a route to {}",
                        self.local, peer
                    );
                }
                queue.push_back((now, ack));
            }
        }
    }

    fn on_ack(&mut self, stream: StreamId, ack: WireAck, now: Instant, out: &mut Vec<Action>) {
        let Some((peer, _)) = self.streams.get(&stream).cloned() else {
            return;
        };
        if !ack.from.is_empty() && ack.from != peer.as_str() {
            bump(&self.counters.unknown_acks);
            warn!(
                "{}: ACK for {:?} claims to be from {:?} on {}'s stream; ignored",
                self.local, ack.hash, ack.from, peer
            );
            return;
        }
        if matches!(ack.status, AckStatus::Pending | AckStatus::Retry) {
            return self.on_interim_ack(peer, ack, now);
        }
        let key = MessageKey {
            peer: peer.clone(),
            hash: ack.hash,
        };
        let Some(tracked) = self.store.complete(&key) else {
            bump(&self.counters.unknown_acks);
            debug!("{}: ACK for {} not in flight", self.local, key);
            if ack.status != AckStatus::Rejected {
                out.push(Action::UntrackedAck {
                    peer: key.peer,
                    hash: key.hash,
                });
            }
            return;
        };
        if let Some(entry) = self.peers.get_mut(&peer) {
            entry.last_progress = Some(now);
        }
        let outcome = match ack.status {
            AckStatus::Received => Outcome::Acked {
                by: peer,
                duplicate: false,
            },
            AckStatus::Duplicate => Outcome::Acked {
                by: peer,
                duplicate: true,
            },
            AckStatus::Rejected => Outcome::Failed(FailReason::Rejected(ack.detail)),
            // Handled above: not outcomes.
            AckStatus::Pending | AckStatus::Retry => return,
        };
        self.complete(key, tracked, outcome, now, out);
    }

    /// `Pending` (the receiver has it, its application has not confirmed yet) or `Retry` (not
    /// taken, send it again later): both show a live peer; neither completes the message.
    fn on_interim_ack(&mut self, peer: NodeId, ack: WireAck, now: Instant) {
        let Some(entry) = self.peers.get_mut(&peer) else {
            return;
        };
        let Some(o) = self
            .outstanding
            .get_mut(&peer)
            .and_then(|q| q.iter_mut().find(|o| o.hash == ack.hash))
        else {
            debug!(
                "{}: {:?} ACK for {:?} not in flight",
                self.local, ack.status, ack.hash
            );
            return;
        };
        entry.last_progress = Some(now);
        if ack.status == AckStatus::Pending {
            o.held = true;
            return;
        }
        bump(&self.counters.retry_answers);
        let delay = RETRY_FIRST
            .saturating_mul(1 << o.retries.min(16))
            .min(RETRY_MAX);
        o.retries = o.retries.saturating_add(1);
        o.held = false;
        o.retry_at = Some(now + delay);
        debug!(
            "{}: {peer} asks to send {:?} again ({}); in {delay:?}",
            self.local, o.hash, ack.detail
        );
    }

    fn on_tick(&mut self, now: Instant, out: &mut Vec<Action>) {
        self.reassembler.trim(now);
        for (key, t) in self.store.expire(now) {
            self.complete(key, t, Outcome::TimedOut, now, out);
        }
        // Messages the receiver holds for its application, or told us to send later, are not
        // owed an answer now: only the others can show a stall.
        let stalled: Vec<NodeId> = self
            .peers
            .iter()
            .filter(|(peer, p)| {
                p.out_messages.is_some()
                    && self
                        .outstanding
                        .get(*peer)
                        .is_some_and(|q| q.iter().any(|o| !o.held && o.retry_at.is_none()))
                    && p.last_progress
                        .is_some_and(|t| now.saturating_duration_since(t) >= self.ack_timeout)
            })
            .map(|(peer, _)| peer.clone())
            .collect();
        for peer in stalled {
            bump(&self.counters.stalls);
            warn!(
                "{}: no ACK from {} for {:?}; reconnecting",
                self.local, peer, self.ack_timeout
            );
            let reason = format!("no ACK for {:?}", self.ack_timeout);
            self.tear_down_link(&peer, reason, out);
        }
        let retrying: Vec<NodeId> = self
            .outstanding
            .iter()
            .filter(|(_, q)| q.iter().any(|o| o.retry_at.is_some_and(|t| t <= now)))
            .map(|(peer, _)| peer.clone())
            .collect();
        for peer in retrying {
            self.retry_due(&peer, now, out);
        }
        self.remind_pending(now, out);
        let ttl: Duration = self.store.ttl();
        let counters = &self.counters;
        self.unrouted.retain(|_, queue| {
            while queue
                .front()
                .is_some_and(|(at, _)| now.saturating_duration_since(*at) >= ttl)
            {
                queue.pop_front();
                bump(&counters.unrouted_acks_dropped);
            }
            !queue.is_empty()
        });
    }
}

/// Where and how a peer's messages go out: its current MessageStream and whether it takes
/// chunks, with our id for `from_hash` and the counters to charge.
struct Route {
    stream: StreamId,
    chunking: Option<bool>,
    chunk_bytes: usize,
    from: String,
    counters: Arc<Counters>,
    peer: Arc<crate::stats::PeerCounters>,
}

/// Puts one outstanding message on the route's stream: whole, or in chunks to a peer that
/// takes them. Counts the transmission and forgets any earlier `Pending` / `Retry` answer.
///
/// The message's encoded frame goes as it is unless its filler would take it over `limit`,
/// the largest frame the peer takes (then protobuf encodes it without filler).
fn transmit(o: &mut Outstanding, route: &Route, limit: usize, out: &mut Vec<Action>) {
    let counters = &route.counters;
    if o.attempts > 0 {
        bump(&counters.retransmitted);
    }
    o.attempts += 1;
    o.held = false;
    o.retry_at = None;
    bump(&counters.sent);
    add(&counters.bytes_sent, o.payload.len());
    bump(&route.peer.sent);
    add(&route.peer.bytes_sent, o.payload.len());
    let from = route.from.clone();
    let len = o.payload.len();
    let stream = route.stream;
    if route.chunking == Some(true) && len > route.chunk_bytes {
        // Slices of one buffer: no copy.
        for start in (0..len).step_by(route.chunk_bytes) {
            let end = (start + route.chunk_bytes).min(len);
            out.push(Action::Transmit {
                stream,
                frame: None,
                message: WireMessage {
                    hash: o.hash.clone(),
                    from: from.clone(),
                    payload: o.payload.slice(start..end),
                    total: len as u64,
                    offset: start as u64,
                },
            });
        }
    } else {
        // A shared payload's frame (a tail) goes after a header of its own; whether the peer
        // takes tails is the node's to check, which knows its features.
        let frame = (o.frame.as_ref())
            .filter(|f| (f.is_tail() || f.is_for(&o.hash, &from)) && f.len() <= limit)
            .cloned();
        let message = WireMessage::whole(o.hash.clone(), from, o.payload.clone());
        out.push(Action::Transmit {
            stream,
            message,
            frame,
        });
    }
}

/// Whether an outstanding message can go to a peer now.
enum Fit {
    Send,
    /// Not before the peer's features are known.
    Wait,
    /// Never: the peer cannot take it.
    Fail(FailReason),
}

/// The largest encoded message `peer` takes if it is an original node: its configured limit,
/// or the node's default.
fn limit_of(configured: &HashMap<NodeId, usize>, default: usize, peer: &NodeId) -> usize {
    configured.get(peer).copied().unwrap_or(default)
}

/// The largest whole frame the peer of `entry` is known to take, if it has a limit we must
/// respect: an original's (or the one it taught us).
fn whole_limit(entry: &PeerStreams, original_limit: usize) -> Option<usize> {
    match entry.chunking {
        Some(true) => None,
        Some(false) => Some(original_limit.min(entry.receive_limit.unwrap_or(usize::MAX))),
        None => entry.receive_limit,
    }
}

/// What the peer of `entry` can take of `o`: in chunks if it takes them; whole up to an
/// original's limit (or the one it taught us) otherwise.
fn fit(
    o: &Outstanding,
    entry: &PeerStreams,
    limits: &Limits,
    original_limit: usize,
    local: &NodeId,
) -> Fit {
    let oversize = o.payload.len() > limits.max_payload_bytes;
    let encoded = encoded_len(&o.hash, local.as_str(), o.payload.len());
    if let Some(limit) = whole_limit(entry, original_limit).filter(|limit| encoded > *limit) {
        return Fit::Fail(FailReason::TooLarge(format!(
            "{encoded} bytes encoded, and the peer takes at most {limit} (an original node's \
             gRPC receive limit)"
        )));
    }
    match entry.chunking {
        // Until the peer's features are known, a message that an original could not take
        // waits (it goes in chunks, or fails, once they are).
        None if oversize || encoded > original_limit => Fit::Wait,
        Some(false) if oversize => Fit::Fail(FailReason::Rejected(format!(
            "message larger than {} bytes, and the peer does not take chunked messages",
            limits.max_payload_bytes
        ))),
        _ => Fit::Send,
    }
}

#[cfg(test)]
mod tests;
