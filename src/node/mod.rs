//! `Node` (the seed's DoubleStreamNode): the public handle that ties the parts together.

mod control;
pub(crate) mod core;
pub(crate) mod driver;
mod link;
mod members;
mod supervisor;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{bounded, unbounded, Receiver, Sender};
use log::info;
use parking_lot::Mutex;

use self::core::{CoreSettings, NodeCore};
use crate::broadcast::{BroadcastCompletion, BroadcastEngine, BroadcastId};
use crate::config::MembershipConfig;
use crate::config::{Deliveries, NodeConfig};
use crate::error::Error;
use crate::id::{validate_id, IdKind, NodeId};
use crate::manager::{Event, MessageManager, StreamMap};
use crate::membership::{MemberInfo, MemberState, Membership, Peer};
use crate::message::{Completion, Delivery, Message, MessageKey};
use crate::neighbor::{
    MemoryNeighborStore, NeighborEvent, NeighborInfo, NeighborManager, NeighborStore,
};
use crate::payload::PayloadBuf;
use crate::router::{FanoutRouter, Router};
use crate::stats::{Counters, Metrics, PeerStats, QueueDepths, Stats};
use crate::store::{PeerLimit, SlotStore, Wait};
use crate::transport::backend::{Backend, Listener};
use crate::transport::factory::StreamFactory;
use crate::transport::memory::MemoryNetwork;
use crate::transport::server::{self, Context};
use crate::transport::threads::{ReadGate, ThreadSet};
use crate::transport::Events;
use control::Control;
use driver::{Driver, Input, Io};
use link::Links;
use members::{MemberInput, Members, MEMBER_INBOX};
use supervisor::{Notice, Supervisor};

/// The broadcast settings a node runs with: a broadcast never outlives the store's TTL, the
/// time a message may be tracked.
fn broadcast_config(config: &NodeConfig) -> crate::broadcast::BroadcastConfig {
    let mut b = config.broadcast.clone();
    b.deadline = b.deadline.min(config.ttl);
    b
}

/// How many inputs may wait for the manager thread before readers and senders block.
const INBOX_CAPACITY: usize = 256;
/// Neighbour events kept for the application before new ones are dropped.
const EVENTS_CAPACITY: usize = 1024;

/// Builds a [`Node`] with parts other than the defaults.
pub struct NodeBuilder {
    config: NodeConfig,
    factory: Option<Arc<StreamFactory>>,
    memory: Option<MemoryNetwork>,
    neighbor_store: Option<Box<dyn NeighborStore>>,
    router: Option<Box<dyn Router>>,
}

impl std::fmt::Debug for NodeBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeBuilder")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl NodeBuilder {
    /// Use this factory instead of the process-wide [`StreamFactory::shared`].
    pub fn factory(mut self, factory: Arc<StreamFactory>) -> Self {
        self.factory = Some(factory);
        self
    }

    /// Run on the in-memory `network` instead of gRPC: the same node, its streams channels
    /// inside this process (for tests; see [`MemoryNetwork`]). Replaces any factory.
    pub fn memory(mut self, network: &MemoryNetwork) -> Self {
        self.memory = Some(network.clone());
        self
    }

    /// Keep neighbour records in `store` instead of a [`MemoryNeighborStore`].
    pub fn neighbor_store(mut self, store: Box<dyn NeighborStore>) -> Self {
        self.neighbor_store = Some(store);
        self
    }

    /// Choose the eager targets of small broadcasts with `router` instead of a
    /// [`FanoutRouter`] with [`BroadcastConfig::fanout`](crate::broadcast::BroadcastConfig).
    pub fn router(mut self, router: Box<dyn Router>) -> Self {
        self.router = Some(router);
        self
    }

    /// Validates the configuration, starts the server, the manager and the supervisor.
    pub fn start(self) -> Result<Node, Error> {
        Node::start_parts(self)
    }
}

/// The threads a running node owns directly.
struct Running {
    listener: Listener,
    manager: JoinHandle<Receiver<Input>>,
    supervisor: JoinHandle<()>,
    supervisor_tx: Sender<Notice>,
    members: Option<JoinHandle<()>>,
}

/// What a node that runs membership keeps of it.
struct MembersHandle {
    machine: Arc<Mutex<Membership>>,
    /// Links opened for messages to members that are not neighbours, and when each was last
    /// busy (the membership thread closes them once idle).
    direct: Arc<Mutex<HashMap<NodeId, Instant>>>,
    max_direct: usize,
    inbox: Sender<MemberInput>,
    events: Receiver<MemberInfo>,
}

/// A running node: a gRPC server, a manager thread, a reconnect supervisor, and a double stream
/// per neighbour.
///
/// `Node` is `Send + Sync`: share it (`&Node` in scoped threads, or an `Arc`) to send from many
/// threads. Dropping it shuts it down.
pub struct Node {
    id: NodeId,
    config: NodeConfig,
    local_addr: SocketAddr,
    store: Arc<SlotStore>,
    counters: Arc<Counters>,
    links: Arc<Links>,
    control: Arc<Control>,
    members: Option<MembersHandle>,
    /// The manager thread's inbox.
    inbox: Sender<Input>,
    broadcast_completions: Receiver<BroadcastCompletion>,
    gate: Arc<ReadGate>,
    completions: Receiver<Completion>,
    deliveries: Receiver<Delivery>,
    events: Receiver<NeighborEvent>,
    /// Keeps the delivery channel connected when deliveries are discarded.
    _delivery_tx: Option<Sender<Delivery>>,
    running: Mutex<Option<Running>>,
}

impl std::fmt::Debug for Node {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Node")
            .field("id", &self.id)
            .field("local_addr", &self.local_addr)
            .finish_non_exhaustive()
    }
}

impl Node {
    /// Starts a node with default parts, sharing the process-wide [`StreamFactory`].
    pub fn start(config: NodeConfig) -> Result<Node, Error> {
        Node::builder(config).start()
    }

    /// A builder, to choose the factory, neighbour store or router.
    pub fn builder(config: NodeConfig) -> NodeBuilder {
        NodeBuilder {
            config,
            factory: None,
            memory: None,
            neighbor_store: None,
            router: None,
        }
    }

    fn start_parts(parts: NodeBuilder) -> Result<Node, Error> {
        let NodeBuilder {
            config,
            factory,
            memory,
            neighbor_store,
            router,
        } = parts;
        config.validate()?;
        let backend = match memory {
            Some(network) => Backend::Memory(network),
            None => Backend::Grpc(factory.unwrap_or_else(StreamFactory::shared)),
        };
        if let Backend::Grpc(factory) = &backend {
            if let Some(tls) = &factory.config().tls {
                tls.check_for(&config.id)?;
            }
        }
        let advertise = (config.membership.as_ref())
            .map(|m| advertised(m, &config.listen))
            .transpose()?
            .flatten();
        let needed = config.limits.grpc_message_limit();
        let receive_limit = backend.max_message_bytes();
        if needed > receive_limit {
            return Err(Error::Config {
                field: "limits.max_payload_bytes",
                reason: format!(
                    "frames of up to {needed} bytes exceed the factory's gRPC limit of \
                     {receive_limit} bytes; use a StreamFactory with \
                     TransportConfig::for_limits(&config.limits) (or \
                     max_grpc_message_bytes >= {needed})"
                ),
            });
        }
        let id = NodeId::new(&config.id, &config.limits)?;
        let peer_limit = PeerLimit {
            messages: config.peer_max_messages,
            bytes: config.peer_max_bytes,
        };
        let store = Arc::new(SlotStore::with_peer_limit(
            config.slots,
            peer_limit,
            config.ttl,
        ));
        let counters = Arc::new(Counters::default());
        let neighbors = Arc::new(NeighborManager::new(
            neighbor_store.unwrap_or_else(|| Box::<MemoryNeighborStore>::default()),
            config.limits.clone(),
        ));
        let threads = Arc::new(ThreadSet::default());
        let gate = Arc::new(ReadGate::default());
        let stream_ids = Arc::new(AtomicU64::new(1));
        let (inbox, inbox_rx) = bounded(INBOX_CAPACITY);
        let (completion_tx, completions) = unbounded();
        let (broadcast_tx, broadcast_completions) = unbounded();
        let (events_tx, events) = bounded(EVENTS_CAPACITY);
        let (delivery_tx, deliveries) = match config.deliveries {
            Deliveries::Queue(n) | Deliveries::Confirmed(n) => bounded(n),
            Deliveries::Discard => bounded(0),
        };
        // The transport reports into the manager thread's inbox.
        let reports: Events = Arc::new(inbox.clone());
        let ctx = Arc::new(Context {
            local: id.clone(),
            limits: config.limits.clone(),
            receive_limit,
            events: reports.clone(),
            stream_ids: stream_ids.clone(),
            threads: threads.clone(),
            gate: gate.clone(),
            guards: Arc::new(server::StreamGuards::new(
                config.max_streams_per_peer,
                config.max_inbound_streams,
                config.max_unidentified_streams,
                counters.clone(),
            )),
            tls: backend.tls(),
        });
        let (listener, local_addr) = backend.listen(&config.listen, ctx)?;
        let member_channel = config.membership.as_ref().map(|_| bounded(MEMBER_INBOX));
        let links = Arc::new(Links::new(
            id.clone(),
            local_addr,
            backend,
            reports,
            threads,
            stream_ids,
            neighbors,
            events_tx,
        ));

        let (driver_deliveries, keep_tx) = match config.deliveries {
            Deliveries::Queue(_) | Deliveries::Confirmed(_) => (Some(delivery_tx), None),
            Deliveries::Discard => (None, Some(delivery_tx)),
        };
        let confirm_limit = match config.deliveries {
            Deliveries::Confirmed(n) => Some(n),
            _ => None,
        };
        let mut manager = MessageManager::new(
            id.clone(),
            store.clone(),
            config.limits.clone(),
            counters.clone(),
            config.ack_timeout,
        )
        .with_seen_capacity(config.seen_capacity)
        .with_chunk_bytes(config.chunk_bytes.min(config.limits.max_payload_bytes))
        .with_original_limit(config.original_max_message_bytes);
        if confirm_limit.is_some() {
            manager = manager.with_confirmed_deliveries();
        }
        let (settlement_tx, settlements) = unbounded();
        let (supervisor_tx, supervisor_rx) = unbounded();
        let broadcast = BroadcastEngine::new(
            id.clone(),
            broadcast_config(&config),
            router.unwrap_or_else(|| Box::new(FanoutRouter::new(config.broadcast.fanout))),
        );
        let settings = CoreSettings {
            limits: config.limits.clone(),
            delivering: driver_deliveries.is_some(),
            confirm_limit,
            ack_timeout: config.ack_timeout,
            max_queued_acks: config.max_queued_acks,
            lane_max_bytes: config.lane_max_bytes,
        };
        let core = NodeCore::new(id.clone(), manager, broadcast, settings, counters.clone());
        let io = Io {
            writers: StreamMap::default(),
            pending_messages: StreamMap::default(),
            pending_acks: StreamMap::default(),
            // Half the gRPC limit leaves room for the ids and tags of every item.
            batch_budget: (receive_limit / 2).min(256 * 1024),
            completions: completion_tx,
            broadcast_completions: broadcast_tx,
            deliveries: driver_deliveries,
            settlement_tx,
            gate: gate.clone(),
            supervisor: supervisor_tx.clone(),
            originals: links.originals.clone(),
            members: member_channel.as_ref().map(|(tx, _)| tx.clone()),
        };
        let driver = Driver::new(core, inbox_rx, settlements, config.tick, io);
        let supervisor = Supervisor {
            links: links.clone(),
            notices: supervisor_rx,
            reply: supervisor_tx.clone(),
            backoff: config.reconnect.clone(),
            connect_timeout: config.connect_timeout,
            // Seeded per node and per start, so nodes do not share a jitter sequence.
            rng: fastrand::Rng::with_seed(seed_for(&id)),
        };
        let control = Arc::new(Control {
            id: id.clone(),
            links: links.clone(),
            inbox: inbox.clone(),
            supervisor: supervisor_tx.clone(),
            connect_timeout: config.connect_timeout,
            limits: config.limits.clone(),
        });
        let manager = std::thread::Builder::new()
            .name(format!("gossip-mgr-{id}"))
            .spawn(move || driver.run())?;
        let supervisor = std::thread::Builder::new()
            .name(format!("gossip-sup-{id}"))
            .spawn(move || supervisor.run())?;
        let (members, members_thread) = match (&config.membership, member_channel) {
            (Some(m), Some((tx, rx))) => {
                let addr = advertise.unwrap_or_else(|| local_addr.to_string());
                let me = Peer::new(id.clone(), addr);
                let machine = Arc::new(Mutex::new(Membership::new(
                    me.clone(),
                    incarnation_now(),
                    m.views.clone(),
                    m.list.clone(),
                    seed_for(&id),
                )));
                let (events_tx, events) = bounded(EVENTS_CAPACITY);
                let direct = Arc::new(Mutex::new(HashMap::new()));
                let _ = links.members.set(tx.clone());
                let runtime = Members {
                    machine: machine.clone(),
                    me,
                    config: m.clone(),
                    inbox: rx,
                    reply: tx.clone(),
                    control: control.clone(),
                    counters: counters.clone(),
                    events: events_tx,
                    backoff: config.reconnect.clone(),
                    rng: fastrand::Rng::with_seed(seed_for(&id)),
                    store: store.clone(),
                    direct: direct.clone(),
                };
                let thread = std::thread::Builder::new()
                    .name(format!("gossip-mem-{id}"))
                    .spawn(move || runtime.run())?;
                let handle = MembersHandle {
                    machine,
                    direct,
                    max_direct: m.max_extra_links,
                    inbox: tx,
                    events,
                };
                (Some(handle), Some(thread))
            }
            _ => (None, None),
        };
        info!("node {id} listening on {local_addr}");
        Ok(Node {
            id,
            config,
            local_addr,
            store,
            counters,
            links,
            control,
            members,
            inbox,
            broadcast_completions,
            gate,
            completions,
            deliveries,
            events,
            _delivery_tx: keep_tx,
            running: Mutex::new(Some(Running {
                listener,
                manager,
                supervisor,
                supervisor_tx,
                members: members_thread,
            })),
        })
    }

    /// This node's id.
    pub fn id(&self) -> &NodeId {
        &self.id
    }

    /// A message whose payload the application wrote into `payload`, framed in place for
    /// this node: sending it (to any neighbour, and again on a retransmission) copies none of
    /// its bytes in user space. Its `payload` field is a view of the bytes written.
    ///
    /// ```no_run
    /// # fn f(node: &grpc_gossip::Node) -> Result<(), grpc_gossip::Error> {
    /// use std::io::Write;
    /// let mut buf = grpc_gossip::PayloadBuf::with_capacity(4096);
    /// buf.write_all(&[0x5a; 4096]).expect("writing to memory");
    /// node.send_message("peer-1", node.message("m-1", buf))?;
    /// # Ok(()) }
    /// ```
    pub fn message(&self, hash: impl Into<String>, payload: PayloadBuf) -> Message {
        Message::framed(hash.into(), payload, self.id.as_str())
    }

    /// The address the server is bound to (with the real port when 0 was asked for).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The configuration the node runs with.
    pub fn config(&self) -> &NodeConfig {
        &self.config
    }

    /// Every completion of a message this node sent (the seed's `CompleteChan`). Each message
    /// sent gets exactly one. Receivers are clones of one channel: each completion goes to one
    /// of them. Completions wait in the channel until read, so read them.
    pub fn completions(&self) -> Receiver<Completion> {
        self.completions.clone()
    }

    /// Messages received from peers, each (sender, hash) once. Bounded by
    /// [`Deliveries::Queue`] (or [`Deliveries::Confirmed`], which also counts the deliveries
    /// the application holds unconfirmed); while full, the node reads no more payloads. Never
    /// yields with [`Deliveries::Discard`].
    pub fn deliveries(&self) -> Receiver<Delivery> {
        self.deliveries.clone()
    }

    /// Neighbour state changes: up, down (with the reason), reconnection attempts, removed.
    /// At most 1,024 wait here; when the application does not read them, newer ones are
    /// dropped ([`neighbors`](Node::neighbors) always has the current state).
    pub fn events(&self) -> Receiver<NeighborEvent> {
        self.events.clone()
    }

    /// The neighbour records, with their current online state.
    pub fn neighbors(&self) -> Vec<NeighborInfo> {
        self.links.neighbors.list()
    }

    /// Whether the node is ready for traffic: it is running (listening) and linked to at least
    /// one neighbour, or has none. `Err` says why not. Served as `/readyz` by
    /// `metrics::MetricsServer::for_node` (feature `metrics-server`).
    pub fn readiness(&self) -> Result<(), String> {
        if self.control.check_open().is_err() {
            return Err("shut down".into());
        }
        let neighbors = self.neighbors();
        if !neighbors.is_empty() && !neighbors.iter().any(|n| n.online) {
            return Err(format!(
                "none of {} neighbours is linked yet",
                neighbors.len()
            ));
        }
        Ok(())
    }

    /// A snapshot of the node's counters.
    pub fn stats(&self) -> Stats {
        let mut s = self.counters.snapshot();
        s.in_flight = self.store.in_flight() as u64;
        s.slots = self.store.slots() as u64;
        s.neighbors_online = self.neighbors().iter().filter(|n| n.online).count() as u64;
        s
    }

    /// Everything the node measures, for monitoring: node-wide counters, per-peer traffic with
    /// each neighbour's online state, queue depths and the ACK latency histogram. Serve it to
    /// Prometheus with `metrics::MetricsServer` (feature `metrics-server`).
    pub fn metrics(&self) -> Metrics {
        let neighbors = self.neighbors();
        let mut peers = self.counters.peer_snapshot();
        for n in &neighbors {
            match peers.iter_mut().find(|p| p.peer == n.node_hash) {
                Some(p) => p.online = n.online,
                None => peers.push(PeerStats {
                    peer: n.node_hash.clone(),
                    online: n.online,
                    ..PeerStats::default()
                }),
            }
        }
        peers.sort_by(|a, b| a.peer.cmp(&b.peer));
        Metrics {
            node: self.id.to_string(),
            stats: self.stats(),
            peers,
            ack_latency: self.counters.ack_latency_snapshot(),
            queues: QueueDepths {
                deliveries: self.deliveries.len() as u64,
                completions: self.completions.len() as u64,
                broadcast_completions: self.broadcast_completions.len() as u64,
                inbox: self.inbox.len() as u64,
            },
        }
    }

    /// Connects to a neighbour: opens (or reuses) the double stream to `info.endpoint` and
    /// starts its reader and writer threads. Waits up to `NodeConfig::connect_timeout` for the
    /// endpoint to accept. Once connected, the node keeps the link up on its own: a broken
    /// link is reconnected with backoff until [`disconnect_neighbor`](Node::disconnect_neighbor).
    pub fn connect_to_neighbor(&self, info: NeighborInfo) -> Result<(), Error> {
        self.control.connect_to_neighbor(info)
    }

    /// Connects to whoever listens at `endpoint` (`HOST:PORT`), learning its id from the
    /// handshake our nodes answer a new link with, and returns that id: from then on it is a
    /// neighbour as after [`connect_to_neighbor`](Node::connect_to_neighbor) with that id, kept
    /// up and reconnected the same way. For a seed whose id is not known in advance.
    ///
    /// One attempt, within `NodeConfig::connect_timeout` for the handshake and as much again
    /// for the link. Errors: [`Error::Connect`] as for `connect_to_neighbor`, with
    /// [`ConnectFailure::Handshake`](crate::ConnectFailure::Handshake) when no handshake came
    /// (an original Go node sends none: give its id), [`Error::InvalidId`] when the handshake
    /// names this node itself or an invalid id, and [`Error::Config`] with TLS, where a
    /// neighbour is dialled by its id because its certificate is checked against it.
    ///
    /// ```no_run
    /// # use grpc_gossip::{Node, NodeConfig};
    /// let node = Node::builder(NodeConfig::new("a", "127.0.0.1:0")).start()?;
    /// let seed = node.connect_to_address("seed.example:7000")?;
    /// println!("linked to {seed}");
    /// # Ok::<(), grpc_gossip::Error>(())
    /// ```
    pub fn connect_to_address(&self, endpoint: &str) -> Result<NodeId, Error> {
        self.control.connect_to_address(endpoint)
    }

    /// Adds a neighbour and returns at once: the node connects to `info.endpoint` in the
    /// background and keeps retrying with backoff ([`NodeConfig::reconnect`]) until the link is
    /// up, then keeps it up as after [`connect_to_neighbor`](Node::connect_to_neighbor).
    /// [`events`](Node::events) reports each failed attempt with its reason
    /// ([`NeighborEvent::Reconnecting`]) and the link coming up. Messages sent to the
    /// neighbour meanwhile wait for the link, within their TTL.
    ///
    /// Errors: the node is shut down, or `info` is invalid (its id is this node's, or not a
    /// valid id). An endpoint that cannot be reached is no error here: the node keeps trying.
    pub fn add_neighbor(&self, info: NeighborInfo) -> Result<(), Error> {
        self.control.add_neighbor(info)
    }

    /// Removes a neighbour: closes its double stream and stops reconnecting to it; messages in
    /// flight to it complete as `Failed(Disconnected)`. The neighbour is named by its id as
    /// a `&str` or a [`&NodeId`](NodeId).
    pub fn disconnect_neighbor(&self, node_hash: impl AsRef<str>) -> Result<(), Error> {
        self.control.disconnect_neighbor(node_hash.as_ref())
    }

    /// Sends `message` to neighbour `target`, waiting while all slots (or the neighbour's
    /// share) are busy. Returns the message's key; its outcome arrives on
    /// [`completions`](Node::completions). If the link to `target` is down, the message waits
    /// for the reconnection (within its TTL).
    ///
    /// Errors (nothing was sent, no completion will come): invalid hash, payload too large,
    /// unknown neighbour, same hash to the same neighbour still in flight, shutdown.
    ///
    /// `target` is the neighbour's id as a `&str` or a [`&NodeId`](NodeId) (as in
    /// [`Delivery::from`] or [`Node::id`]).
    pub fn send_message(
        &self,
        target: impl AsRef<str>,
        message: Message,
    ) -> Result<MessageKey, Error> {
        self.send(target.as_ref(), message, Wait::Forever)
    }

    /// Like [`send_message`](Node::send_message) but returns [`Error::Full`] or
    /// [`Error::PeerFull`] at once instead of waiting.
    pub fn try_send_message(
        &self,
        target: impl AsRef<str>,
        message: Message,
    ) -> Result<MessageKey, Error> {
        self.send(target.as_ref(), message, Wait::No)
    }

    /// Like [`send_message`](Node::send_message) but waits at most `timeout` for a slot.
    pub fn send_message_timeout(
        &self,
        target: impl AsRef<str>,
        message: Message,
        timeout: Duration,
    ) -> Result<MessageKey, Error> {
        self.send(
            target.as_ref(),
            message,
            Wait::Until(Instant::now() + timeout),
        )
    }

    /// Refuses, before anything is sent, a message this node cannot send: the node is shut
    /// down, the hash is invalid, or the payload is over `limit` bytes.
    fn check_outgoing(&self, message: &Message, limit: usize) -> Result<(), Error> {
        self.control.check_open()?;
        validate_id(IdKind::Message, &message.hash, &self.config.limits)?;
        if message.payload.len() > limit {
            return Err(Error::TooLarge {
                size: message.payload.len(),
                limit,
            });
        }
        Ok(())
    }

    fn send(&self, target: &str, mut message: Message, wait: Wait) -> Result<MessageKey, Error> {
        // Beyond one frame's limit it goes in chunks.
        self.check_outgoing(&message, self.config.limits.max_message_bytes)?;
        let peer = match self.links.neighbors.id_of(target) {
            Some(peer) => peer,
            None => self.link_to_member(target)?,
        };
        // A message framed in place keeps its frame: every whole transmission sends it.
        let frame = message.take_frame(self.id.as_str());
        let key = MessageKey {
            peer,
            hash: message.hash,
        };
        self.store
            .reserve(&key, message.payload.len(), Instant::now(), wait)?;
        let event = Event::Send {
            key: key.clone(),
            payload: message.payload,
            frame,
        };
        if self.inbox.send(Input::Event(event)).is_err() {
            // The manager is gone. If shutdown already failed the message, its completion
            // stands; otherwise it was never sent.
            if self.store.complete(&key).is_some() {
                return Err(Error::Shutdown);
            }
        }
        Ok(key)
    }

    /// Broadcasts `message` to the whole cluster: to the neighbours that the lazy plane (large
    /// payloads) or the router (small ones) picks, who deliver it once and forward it to theirs,
    /// up to the hop limit. Returns its id at once; when the ACKs have converged back here (or
    /// the deadline, [`BroadcastConfig::deadline`](crate::broadcast::BroadcastConfig), has
    /// passed), one [`BroadcastCompletion`] arrives on
    /// [`broadcast_completions`](Node::broadcast_completions) saying how many nodes delivered
    /// it and which neighbours' subtrees did not answer. The origin does not deliver its own
    /// broadcast. Original (Go) neighbours get it as a plain message and count as one node.
    ///
    /// Errors (nothing was sent, no completion will come): invalid hash, payload too large,
    /// hash already used by a recent broadcast of this node, too many broadcasts tracked,
    /// shutdown.
    pub fn broadcast(&self, mut message: Message) -> Result<BroadcastId, Error> {
        // Broadcast payloads travel whole: one frame each.
        self.check_outgoing(&message, self.config.limits.max_payload_bytes)?;
        let (reply, answer) = bounded(1);
        // A frame made for one message names it; only a shared payload's serves a broadcast.
        let tail = message.take_frame(self.id.as_str()).filter(|f| f.is_tail());
        let input = Input::Broadcast {
            hash: message.hash,
            payload: message.payload,
            tail,
            reply,
        };
        self.inbox.send(input).map_err(|_| Error::Shutdown)?;
        answer.recv().map_err(|_| Error::Shutdown)?
    }

    /// Joins the cluster through `seeds` (`HOST:PORT`, a name that may resolve to several
    /// addresses, or `ID=HOST:PORT`), replacing [`MembershipConfig::seeds`]. Returns at once:
    /// the node tries the seeds in turn, with backoff while none answers, and
    /// [`member_events`](Node::member_events) tells as the members become known.
    ///
    /// Errors: [`Error::Config`] when the node was started without
    /// [`NodeConfig::membership`]; [`Error::Shutdown`].
    pub fn join<S: AsRef<str>>(&self, seeds: &[S]) -> Result<(), Error> {
        let handle = self.members_handle()?;
        let seeds = seeds.iter().map(|s| s.as_ref().to_owned()).collect();
        handle
            .inbox
            .send(MemberInput::Seeds(seeds))
            .map_err(|_| Error::Shutdown)
    }

    /// Every member this node knows of, itself included, sorted by id: empty when the node
    /// runs no membership. Members that failed or left stay listed with that state.
    pub fn members(&self) -> Vec<MemberInfo> {
        let Some(handle) = &self.members else {
            return Vec::new();
        };
        let mut members: Vec<MemberInfo> = handle
            .machine
            .lock()
            .list()
            .members()
            .map(MemberInfo::from)
            .collect();
        members.sort_by(|a, b| a.id.cmp(&b.id));
        members
    }

    /// The active view: the members this node holds links to for membership (and over
    /// which its broadcasts run, beside any static neighbours). Empty without membership.
    pub fn active_view(&self) -> Vec<NodeId> {
        match &self.members {
            Some(handle) => handle
                .machine
                .lock()
                .views()
                .active()
                .iter()
                .map(|p| p.id.clone())
                .collect(),
            None => Vec::new(),
        }
    }

    /// Each change of a member, as it happens (a member joined, is suspected, failed, left;
    /// its incarnation rose). A bounded queue: events the application does not read in time
    /// are dropped ([`members`](Node::members) always tells the current state). Never yields
    /// anything without membership.
    pub fn member_events(&self) -> Receiver<MemberInfo> {
        match &self.members {
            Some(handle) => handle.events.clone(),
            None => crossbeam_channel::never(),
        }
    }

    /// A message to a member that is not a neighbour: the member gets a link of its own,
    /// opened in the background as for [`add_neighbor`](Node::add_neighbor), and closed by the
    /// membership thread once nothing is in flight to it for `MembershipConfig::idle_link`.
    fn link_to_member(&self, target: &str) -> Result<NodeId, Error> {
        let unknown = || Error::UnknownNeighbor(target.to_owned());
        let handle = self.members.as_ref().ok_or_else(unknown)?;
        let id = NodeId::new(target, &self.config.limits).map_err(|_| unknown())?;
        let member = handle
            .machine
            .lock()
            .list()
            .get(&Peer::new(id.clone(), "-"))
            .filter(|m| matches!(m.state, MemberState::Joined | MemberState::Suspected))
            .filter(|_| id != self.id)
            .ok_or_else(unknown)?;
        let mut direct = handle.direct.lock();
        if !direct.contains_key(&id) && direct.len() >= handle.max_direct {
            return Err(Error::MemberLinks {
                limit: handle.max_direct,
            });
        }
        // Not a broadcast neighbour: told before the link comes up.
        let extra = Input::Extra {
            peer: id.clone(),
            extra: true,
        };
        self.inbox.send(extra).map_err(|_| Error::Shutdown)?;
        self.control
            .add_neighbor(NeighborInfo::new(id.as_str(), member.id.addr.as_str()))?;
        direct.insert(id.clone(), Instant::now());
        Ok(id)
    }

    fn members_handle(&self) -> Result<&MembersHandle, Error> {
        self.control.check_open()?;
        self.members.as_ref().ok_or_else(|| Error::Config {
            field: "membership",
            reason: "the node was started without NodeConfig::membership".into(),
        })
    }

    /// The completion of every broadcast this node started: exactly one each.
    pub fn broadcast_completions(&self) -> Receiver<BroadcastCompletion> {
        self.broadcast_completions.clone()
    }

    /// Number of threads this node has running besides its manager and supervisor threads
    /// (readers, writers, server stream threads, reconnection attempts).
    pub fn stream_threads(&self) -> usize {
        self.links.threads.live()
    }

    /// Stops the node: the server stops accepting and cancels its calls, every message in
    /// flight completes as `Failed(Shutdown)`, every stream is closed, reconnection stops and
    /// every thread of the node is joined. Idempotent; also done on drop.
    pub fn shutdown(&self) {
        let Some(running) = self.running.lock().take() else {
            return;
        };
        let Running {
            mut listener,
            manager,
            supervisor,
            supervisor_tx,
            members,
        } = running;
        if let (Some(handle), Some(thread)) = (&self.members, members) {
            // A graceful leave: the members hear it now rather than suspect us later.
            let (done, left) = bounded(1);
            if handle.inbox.send(MemberInput::Leave(done)).is_ok() {
                let _ = left.recv_timeout(LEAVE_WAIT);
            }
            let _ = handle.inbox.send(MemberInput::Stop);
            if thread.join().is_err() {
                log::error!("{}: membership thread panicked", self.id);
            }
        }
        self.links.closed.store(true, Ordering::Release);
        listener.shutdown();
        let _ = self.inbox.send(Input::Shutdown);
        let inbox = manager.join();
        if inbox.is_err() {
            log::error!("{}: manager thread panicked", self.id);
        }
        let _ = supervisor_tx.send(Notice::Stop);
        if supervisor.join().is_err() {
            log::error!("{}: supervisor thread panicked", self.id);
        }
        self.gate.release();
        // A stream thread that was starting may still hand the inbox a writer's channel (an
        // `Open`): nobody reads it any more, and its writer would wait for it forever. So the
        // inbox is emptied until every stream thread has been joined.
        let joined = AtomicBool::new(false);
        std::thread::scope(|s| {
            if let Ok(inbox) = &inbox {
                s.spawn(|| {
                    while !joined.load(Ordering::Acquire) {
                        if let Ok(input) = inbox.recv_timeout(Duration::from_millis(10)) {
                            drop(input);
                        }
                    }
                    while inbox.try_recv().is_ok() {}
                });
            }
            self.links.threads.join_all();
            joined.store(true, Ordering::Release);
        });
        self.links.clear();
        for n in self.neighbors() {
            self.links.neighbors.set_online(&n.node_hash, false);
        }
        info!("node {} shut down", self.id);
    }
}

/// How long a shutdown waits for the membership thread to hand its leave to the links.
const LEAVE_WAIT: Duration = Duration::from_secs(1);

/// The address a node that runs membership announces.
fn advertised(m: &MembershipConfig, listen: &str) -> Result<Option<String>, Error> {
    match &m.advertise {
        Some(a) => Ok(Some(a.clone())),
        None => match listen.parse::<SocketAddr>() {
            Ok(a) if a.ip().is_unspecified() => Err(Error::Config {
                field: "membership.advertise",
                reason: format!(
                    "the node listens on {listen}, which other members cannot dial: give the \
                     address they reach it at"
                ),
            }),
            // Port 0 or a name: known once listening.
            _ => Ok(None),
        },
    }
}

/// A membership incarnation for a node starting now: the clock's seconds, so that a restart
/// overrides what the cluster remembers of the life before.
fn incarnation_now() -> u32 {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    u32::try_from(secs).unwrap_or(u32::MAX)
}

/// A jitter seed that differs between nodes and between runs.
fn seed_for(id: &NodeId) -> u64 {
    use std::hash::{BuildHasher, Hash, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    id.hash(&mut h);
    Instant::now().hash(&mut h);
    h.finish()
}

impl Drop for Node {
    fn drop(&mut self) {
        self.shutdown();
    }
}
