//! `Node` (the seed's DoubleStreamNode): the public handle that ties the parts together.

pub(crate) mod driver;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{bounded, unbounded, Receiver, Sender};
use futures::executor::block_on;
use grpcio::Server;
use log::info;
use parking_lot::Mutex;

use crate::config::{Deliveries, NodeConfig};
use crate::error::Error;
use crate::id::{validate_id, IdKind, NodeId};
use crate::manager::{Event, MessageManager, StreamId, StreamKind};
use crate::message::{Completion, Delivery, Message, MessageKey};
use crate::neighbor::{MemoryNeighborStore, NeighborInfo, NeighborManager, NeighborStore};
use crate::router::{Candidate, FanoutRouter, Router};
use crate::stats::{Counters, Stats};
use crate::store::{SlotStore, Wait};
use crate::transport::factory::{DoubleStream, StreamFactory};
use crate::transport::server::{self, Context};
use crate::transport::threads::{ReadGate, ThreadSet};
use crate::transport::{read_loop, write_loop, Writer};
use driver::{Driver, Input, Link};

/// How many inputs may wait for the manager thread before readers and senders block.
const INBOX_CAPACITY: usize = 256;

/// Builds a [`Node`] with parts other than the defaults.
pub struct NodeBuilder {
    config: NodeConfig,
    factory: Option<Arc<StreamFactory>>,
    neighbor_store: Option<Box<dyn NeighborStore>>,
    router: Option<Box<dyn Router>>,
}

impl NodeBuilder {
    /// Use this factory instead of the process-wide [`StreamFactory::shared`].
    pub fn factory(mut self, factory: Arc<StreamFactory>) -> Self {
        self.factory = Some(factory);
        self
    }

    /// Keep neighbour records in `store` instead of a [`MemoryNeighborStore`].
    pub fn neighbor_store(mut self, store: Box<dyn NeighborStore>) -> Self {
        self.neighbor_store = Some(store);
        self
    }

    /// Choose broadcast targets with `router` instead of `FanoutRouter::default()`.
    pub fn router(mut self, router: Box<dyn Router>) -> Self {
        self.router = Some(router);
        self
    }

    /// Validates the configuration, starts the server and the manager thread.
    pub fn start(self) -> Result<Node, Error> {
        Node::start_parts(self)
    }
}

/// A running node: a gRPC server, a manager thread, and a double stream per neighbour.
///
/// `Node` is `Send + Sync`: share it (`&Node` in scoped threads, or an `Arc`) to send from many
/// threads. Dropping it shuts it down.
pub struct Node {
    id: NodeId,
    config: NodeConfig,
    local_addr: SocketAddr,
    factory: Arc<StreamFactory>,
    store: Arc<SlotStore>,
    counters: Arc<Counters>,
    neighbors: Arc<NeighborManager>,
    router: Box<dyn Router>,
    links: Arc<Mutex<HashMap<NodeId, Link>>>,
    connecting: Mutex<()>,
    inbox: Sender<Input>,
    threads: Arc<ThreadSet>,
    stream_ids: Arc<AtomicU64>,
    gate: Arc<ReadGate>,
    completions: Receiver<Completion>,
    deliveries: Receiver<Delivery>,
    /// Keeps the delivery channel connected when deliveries are discarded.
    _delivery_tx: Option<Sender<Delivery>>,
    closed: AtomicBool,
    running: Mutex<Option<(Server, JoinHandle<()>)>>,
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
            neighbor_store: None,
            router: None,
        }
    }

    fn start_parts(parts: NodeBuilder) -> Result<Node, Error> {
        let NodeBuilder {
            config,
            factory,
            neighbor_store,
            router,
        } = parts;
        config.validate()?;
        let factory = factory.unwrap_or_else(StreamFactory::shared);
        let needed = config.limits.grpc_message_limit();
        if needed > factory.config().max_grpc_message_bytes {
            return Err(Error::Config {
                field: "limits.max_payload_bytes",
                reason: format!(
                    "frames of up to {needed} bytes exceed the factory's gRPC limit of {} bytes; \
                     use a StreamFactory with TransportConfig::max_grpc_message_bytes >= {needed}",
                    factory.config().max_grpc_message_bytes
                ),
            });
        }
        let id = NodeId::new(&config.id, &config.limits)?;
        let store = Arc::new(SlotStore::new(
            config.slots,
            config.ttl,
            config.seen_capacity,
        ));
        let counters = Arc::new(Counters::default());
        let neighbors = Arc::new(NeighborManager::new(
            neighbor_store.unwrap_or_else(|| Box::<MemoryNeighborStore>::default()),
            config.limits.clone(),
        ));
        let threads = Arc::new(ThreadSet::default());
        let gate = Arc::new(ReadGate::default());
        let stream_ids = Arc::new(AtomicU64::new(1));
        let links = Arc::new(Mutex::new(HashMap::new()));
        let (inbox, inbox_rx) = bounded(INBOX_CAPACITY);
        let (completion_tx, completions) = unbounded();
        let (delivery_tx, deliveries) = match config.deliveries {
            Deliveries::Queue(n) => bounded(n),
            Deliveries::Discard => bounded(0),
        };

        let ctx = Arc::new(Context {
            local: id.clone(),
            limits: config.limits.clone(),
            inbox: inbox.clone(),
            stream_ids: stream_ids.clone(),
            threads: threads.clone(),
            gate: gate.clone(),
        });
        let (server, local_addr) = server::start(&config.listen, &factory, ctx)?;

        let (driver_deliveries, keep_tx) = match config.deliveries {
            Deliveries::Queue(_) => (Some(delivery_tx), None),
            Deliveries::Discard => (None, Some(delivery_tx)),
        };
        let driver = Driver {
            manager: MessageManager::new(
                id.clone(),
                store.clone(),
                config.limits.clone(),
                counters.clone(),
            ),
            inbox: inbox_rx,
            completions: completion_tx,
            deliveries: driver_deliveries,
            gate: gate.clone(),
            neighbors: neighbors.clone(),
            links: links.clone(),
            tick: config.tick,
            writers: HashMap::new(),
            held: Default::default(),
            actions: Vec::new(),
        };
        let manager = std::thread::Builder::new()
            .name(format!("gossip-mgr-{id}"))
            .spawn(move || driver.run())?;
        info!("node {id} listening on {local_addr}");
        Ok(Node {
            id,
            config,
            local_addr,
            factory,
            store,
            counters,
            neighbors,
            router: router.unwrap_or_else(|| Box::new(FanoutRouter::default())),
            links,
            connecting: Mutex::new(()),
            inbox,
            threads,
            stream_ids,
            gate,
            completions,
            deliveries,
            _delivery_tx: keep_tx,
            closed: AtomicBool::new(false),
            running: Mutex::new(Some((server, manager))),
        })
    }

    /// This node's id.
    pub fn id(&self) -> &NodeId {
        &self.id
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
    /// [`Deliveries::Queue`]; while full, the node reads no more payloads. Never yields with
    /// [`Deliveries::Discard`].
    pub fn deliveries(&self) -> Receiver<Delivery> {
        self.deliveries.clone()
    }

    /// The neighbour records.
    pub fn neighbors(&self) -> Vec<NeighborInfo> {
        self.neighbors.list()
    }

    /// A snapshot of the node's counters.
    pub fn stats(&self) -> Stats {
        let mut s = self.counters.snapshot();
        s.in_flight = self.store.in_flight() as u64;
        s.slots = self.store.slots() as u64;
        s.neighbors_online = self.neighbors.list().iter().filter(|n| n.online).count() as u64;
        s
    }

    fn check_open(&self) -> Result<(), Error> {
        if self.closed.load(Ordering::Acquire) {
            Err(Error::Shutdown)
        } else {
            Ok(())
        }
    }

    /// Connects to a neighbour: opens (or reuses) the double stream to `info.endpoint` and
    /// starts its reader and writer threads. Waits up to `NodeConfig::connect_timeout` for the
    /// endpoint to accept.
    pub fn connect_to_neighbor(&self, info: NeighborInfo) -> Result<(), Error> {
        self.check_open()?;
        if info.node_hash == self.id.as_str() {
            return Err(Error::InvalidId {
                kind: IdKind::Node,
                reason: "a node cannot be its own neighbour".into(),
            });
        }
        let _one_at_a_time = self.connecting.lock();
        let known_before = self.neighbors.lookup(&info.node_hash);
        let peer = self.neighbors.add(info.clone())?;
        if self.links.lock().contains_key(&peer) {
            self.neighbors.set_online(peer.as_str(), true);
            return Ok(());
        }
        let double = match self
            .factory
            .open(&info.endpoint, &self.id, self.config.connect_timeout)
        {
            Ok(d) => d,
            Err(e) => {
                match known_before {
                    Some((_, old)) => self.neighbors.add(old).map(|_| ())?,
                    None => drop(self.neighbors.remove(&info.node_hash)),
                }
                return Err(e);
            }
        };
        let messages = self.start_link(&peer, double)?;
        let _ = messages;
        self.neighbors.set_online(peer.as_str(), true);
        info!("{} connected to {} at {}", self.id, peer, info.endpoint);
        Ok(())
    }

    /// Registers the two streams of a double stream with the manager and starts their threads.
    fn start_link(&self, peer: &NodeId, double: DoubleStream) -> Result<StreamId, Error> {
        let DoubleStream {
            messages: (msg_sink, msg_stream),
            acks: (ack_sink, ack_stream),
            lease,
        } = double;
        let next = || StreamId(self.stream_ids.fetch_add(1, Ordering::Relaxed));
        let (msg_id, ack_id) = (next(), next());
        let (msg_tx, msg_rx) = unbounded();
        let (ack_tx, ack_rx) = unbounded();
        let opens = [
            (
                msg_id,
                StreamKind::OutboundMessages,
                Writer::Messages(msg_tx),
            ),
            (ack_id, StreamKind::OutboundAcks, Writer::Acks(ack_tx)),
        ];
        for (stream, kind, writer) in opens {
            let open = Input::Open {
                stream,
                peer: peer.clone(),
                kind,
                writer: Some(writer),
            };
            self.inbox.send(open).map_err(|_| Error::Shutdown)?;
        }
        self.links.lock().insert(
            peer.clone(),
            Link {
                _lease: lease,
                messages: msg_id,
            },
        );
        let tag = format!("{}>{}", self.id, peer);
        let spawn_all = || -> Result<(), Error> {
            let inbox = self.inbox.clone();
            self.threads.spawn(format!("gossip-w-{tag}"), move || {
                write_loop(msg_sink, msg_rx, msg_id, &inbox)
            })?;
            let inbox = self.inbox.clone();
            self.threads.spawn(format!("gossip-w-{tag}"), move || {
                write_loop(ack_sink, ack_rx, ack_id, &inbox)
            })?;
            let inbox = self.inbox.clone();
            self.threads.spawn(format!("gossip-r-{tag}"), move || {
                let reason = read_loop(msg_stream, msg_id, &inbox, None);
                let _ = inbox.send(Input::Event(Event::StreamClosed {
                    stream: msg_id,
                    reason,
                }));
            })?;
            let inbox = self.inbox.clone();
            self.threads.spawn(format!("gossip-r-{tag}"), move || {
                let reason = read_loop(ack_stream, ack_id, &inbox, None);
                let _ = inbox.send(Input::Event(Event::StreamClosed {
                    stream: ack_id,
                    reason,
                }));
            })
        };
        if let Err(e) = spawn_all() {
            // Whatever did start is torn down with the link.
            let _ = self.inbox.send(Input::Event(Event::StreamClosed {
                stream: msg_id,
                reason: format!("cannot start stream threads: {e}"),
            }));
            return Err(e);
        }
        Ok(msg_id)
    }

    /// Removes a neighbour: closes its double stream; messages in flight to it complete as
    /// `Failed(Disconnected)`.
    pub fn disconnect_neighbor(&self, node_hash: &str) -> Result<(), Error> {
        let (peer, _) = self
            .neighbors
            .lookup(node_hash)
            .ok_or_else(|| Error::UnknownNeighbor(node_hash.to_owned()))?;
        self.neighbors.remove(node_hash);
        self.links.lock().remove(&peer);
        self.inbox
            .send(Input::Event(Event::Disconnect { peer }))
            .map_err(|_| Error::Shutdown)
    }

    /// Sends `message` to neighbour `target`, waiting while all slots are busy. Returns the
    /// message's key; its outcome arrives on [`completions`](Node::completions).
    ///
    /// Errors (nothing was sent, no completion will come): invalid hash, payload too large,
    /// unknown or offline neighbour, same hash to the same neighbour still in flight, shutdown.
    pub fn send_message(&self, target: &str, message: Message) -> Result<MessageKey, Error> {
        self.send(target, message, Wait::Forever)
    }

    /// Like [`send_message`](Node::send_message) but returns [`Error::Full`] at once instead of
    /// waiting for a slot.
    pub fn try_send_message(&self, target: &str, message: Message) -> Result<MessageKey, Error> {
        self.send(target, message, Wait::No)
    }

    /// Like [`send_message`](Node::send_message) but waits at most `timeout` for a slot.
    pub fn send_message_timeout(
        &self,
        target: &str,
        message: Message,
        timeout: Duration,
    ) -> Result<MessageKey, Error> {
        self.send(target, message, Wait::Until(Instant::now() + timeout))
    }

    fn send(&self, target: &str, message: Message, wait: Wait) -> Result<MessageKey, Error> {
        self.check_open()?;
        validate_id(IdKind::Message, &message.hash, &self.config.limits)?;
        let limit = self.config.limits.max_payload_bytes;
        if message.payload.len() > limit {
            return Err(Error::TooLarge {
                size: message.payload.len(),
                limit,
            });
        }
        let (peer, info) = self
            .neighbors
            .lookup(target)
            .ok_or_else(|| Error::UnknownNeighbor(target.to_owned()))?;
        if !info.online {
            return Err(Error::NeighborOffline(target.to_owned()));
        }
        let key = MessageKey {
            peer,
            hash: message.hash,
        };
        self.store.reserve(&key, Instant::now(), wait)?;
        let event = Event::Send {
            key: key.clone(),
            payload: message.payload,
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

    /// Sends `message` to the neighbours the router picks (by default all online ones, those
    /// with the fewest messages in flight first). Returns one result per chosen neighbour;
    /// each `Ok` key gets its own completion.
    pub fn broadcast(&self, message: Message) -> Vec<(NodeId, Result<MessageKey, Error>)> {
        let load = self.store.in_flight_by_peer();
        let candidates: Vec<Candidate> = self
            .neighbors
            .list()
            .into_iter()
            .filter(|n| n.online)
            .filter_map(|n| self.neighbors.lookup(&n.node_hash))
            .map(|(peer, _)| Candidate {
                cost: load.get(&peer).copied().unwrap_or(0) as u64,
                peer,
                has_message: false,
            })
            .collect();
        self.router
            .route(&candidates)
            .into_iter()
            .map(|peer| {
                let result = self.send_message(peer.as_str(), message.clone());
                (peer, result)
            })
            .collect()
    }

    /// Number of threads this node has running besides its manager thread (readers, writers,
    /// server stream threads).
    pub fn stream_threads(&self) -> usize {
        self.threads.live()
    }

    /// Stops the node: the server stops accepting and cancels its calls, every message in
    /// flight completes as `Failed(Shutdown)`, every stream is closed and every thread of the
    /// node is joined. Idempotent; also done on drop.
    pub fn shutdown(&self) {
        let Some((mut server, manager)) = self.running.lock().take() else {
            return;
        };
        self.closed.store(true, Ordering::Release);
        let stopping = server.shutdown();
        server.cancel_all_calls();
        let _ = block_on(stopping);
        let _ = self.inbox.send(Input::Shutdown);
        if manager.join().is_err() {
            log::error!("{}: manager thread panicked", self.id);
        }
        self.gate.release();
        self.threads.join_all();
        self.links.lock().clear();
        for n in self.neighbors.list() {
            self.neighbors.set_online(&n.node_hash, false);
        }
        info!("node {} shut down", self.id);
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.shutdown();
    }
}
