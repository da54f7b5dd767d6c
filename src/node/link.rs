//! Opening and tracking the outbound double streams of a node. Used by `Node` (the application
//! connects) and by the supervisor (the node reconnects).

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use crossbeam_channel::Sender;
use log::info;
use parking_lot::Mutex;

use super::members::MemberInput;
use crate::error::{ConnectFailure, Error};
use crate::id::NodeId;
use crate::manager::{StreamId, StreamKind};
use crate::neighbor::{NeighborEvent, NeighborManager};
use crate::proto::{GossipACK, GossipMessage};
use crate::transport::backend::Backend;
use crate::transport::factory::{ChannelLease, DoubleStream, Keepalive};
use crate::transport::threads::ThreadSet;
use crate::transport::{
    describe, first_within, outbox_stopping_reader, read_link, write_loop, Events, Features,
    LinkEnd, StreamEvent, Writer,
};

/// An outbound double stream: the lease on its channel (over gRPC) and the id of its
/// MessageStream.
struct Link {
    _lease: Option<ChannelLease>,
    messages: StreamId,
}

/// Neighbours known to be original Go nodes (their links announce no features): links to
/// them are dialled with the keepalive grpc-go's server accepts. The manager thread keeps it
/// up to date; the threads that dial read it.
#[derive(Default)]
pub(crate) struct Originals(Mutex<HashSet<NodeId>>);

impl Originals {
    /// Records what `peer` is; true if that changed.
    pub(crate) fn set(&self, peer: &NodeId, original: bool) -> bool {
        let mut set = self.0.lock();
        match original {
            true => set.insert(peer.clone()),
            false => set.remove(peer),
        }
    }

    /// How a link to `peer` should ping it.
    pub(crate) fn keepalive_for(&self, peer: &NodeId) -> Keepalive {
        match self.0.lock().contains(peer) {
            true => Keepalive::Original,
            false => Keepalive::Fast,
        }
    }
}

/// The outbound links of one node, and what opening one needs.
pub(crate) struct Links {
    pub(crate) originals: Arc<Originals>,
    pub(crate) id: NodeId,
    /// This node's listening address (where the in-memory network places its links).
    pub(crate) local_addr: SocketAddr,
    pub(crate) backend: Backend,
    /// Where the links' streams report (the manager thread's inbox).
    pub(crate) reports: Events,
    pub(crate) threads: Arc<ThreadSet>,
    pub(crate) stream_ids: Arc<AtomicU64>,
    pub(crate) neighbors: Arc<NeighborManager>,
    pub(crate) events: Sender<NeighborEvent>,
    /// Set at shutdown: connection attempts give up.
    pub(crate) closed: AtomicBool,
    table: Mutex<HashMap<NodeId, Link>>,
    /// One connection attempt at a time per neighbour (application or supervisor); attempts
    /// to different neighbours run side by side, so dead ones do not delay the others.
    connecting: Mutex<HashMap<NodeId, Arc<Mutex<()>>>>,
    /// The membership thread, told of links that break (when the node runs membership).
    pub(crate) members: OnceLock<Sender<MemberInput>>,
}

impl Links {
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        id: NodeId,
        local_addr: SocketAddr,
        backend: Backend,
        reports: Events,
        threads: Arc<ThreadSet>,
        stream_ids: Arc<AtomicU64>,
        neighbors: Arc<NeighborManager>,
        events: Sender<NeighborEvent>,
    ) -> Links {
        Links {
            originals: Arc::default(),
            id,
            local_addr,
            backend,
            reports,
            threads,
            stream_ids,
            neighbors,
            events,
            closed: AtomicBool::new(false),
            table: Mutex::new(HashMap::new()),
            connecting: Mutex::new(HashMap::new()),
            members: OnceLock::new(),
        }
    }

    pub(crate) fn next_stream_id(&self) -> StreamId {
        StreamId(self.stream_ids.fetch_add(1, Ordering::Relaxed))
    }

    /// Reports a neighbour event; if the application does not read them and the queue is full,
    /// the event is dropped (the neighbour records still tell the current state).
    pub(crate) fn emit(&self, event: NeighborEvent) {
        if let (Some(members), NeighborEvent::Down { .. }) = (self.members.get(), &event) {
            // Queued, never waited for (this runs on the supervisor's thread).
            let _ = members.try_send(MemberInput::Link(event.clone()));
        }
        let _ = self.events.try_send(event);
    }

    pub(crate) fn is_linked(&self, peer: &NodeId) -> bool {
        self.table.lock().contains_key(peer)
    }

    /// Forgets the link to `peer` (the application removed it).
    pub(crate) fn forget(&self, peer: &NodeId) {
        self.table.lock().remove(peer);
    }

    /// Forgets every link (shutdown).
    pub(crate) fn clear(&self) {
        self.table.lock().clear();
    }

    /// The link to `peer` whose MessageStream is `stream` broke. False if that link was
    /// already replaced or removed (nothing to do).
    pub(crate) fn link_down(&self, peer: &NodeId, stream: StreamId, reason: &str) -> bool {
        let mut table = self.table.lock();
        if table.get(peer).is_none_or(|l| l.messages != stream) {
            return false;
        }
        table.remove(peer);
        drop(table);
        self.neighbors.set_online(peer.as_str(), false);
        info!("{}: link to {peer} down: {reason}", self.id);
        self.emit(NeighborEvent::Down {
            peer: peer.clone(),
            reason: reason.to_owned(),
        });
        true
    }

    /// Opens the double stream to `peer` at `endpoint` (waiting up to `timeout`), registers
    /// it with the manager and starts its threads. Does nothing if a link is already up.
    pub(crate) fn establish(
        &self,
        peer: &NodeId,
        endpoint: &str,
        timeout: Duration,
    ) -> Result<(), Error> {
        let turn = self
            .connecting
            .lock()
            .entry(peer.clone())
            .or_default()
            .clone();
        let result = {
            let _one_at_a_time = turn.lock();
            self.establish_now(peer, endpoint, timeout)
        };
        // Forget the lock once nobody else waits on it, so the map stays as small as the set of
        // neighbours being connected.
        let mut connecting = self.connecting.lock();
        if Arc::strong_count(&turn) == 2 {
            connecting.remove(peer);
        }
        result
    }

    fn establish_now(&self, peer: &NodeId, endpoint: &str, timeout: Duration) -> Result<(), Error> {
        if self.is_linked(peer) {
            return Ok(());
        }
        let keepalive = self.originals.keepalive_for(peer);
        let double = self.backend.open(
            self.local_addr,
            endpoint,
            Some(peer),
            &self.id,
            keepalive,
            timeout,
            &self.closed,
        )?;
        if self.closed.load(Ordering::Acquire) {
            return Err(Error::Shutdown);
        }
        self.start(peer, double)?;
        self.neighbors.set_online(peer.as_str(), true);
        info!("{} linked to {} at {}", self.id, peer, endpoint);
        self.emit(NeighborEvent::Up { peer: peer.clone() });
        Ok(())
    }

    /// Who listens at `endpoint`, by the id its handshake names: opens a double stream without
    /// naming the peer, waits (within `timeout` in all) for the handshake ACK our nodes answer
    /// an AckStream with, and closes the streams again. An original Go node sends none.
    pub(crate) fn identify(&self, endpoint: &str, timeout: Duration) -> Result<String, Error> {
        let deadline = Instant::now() + timeout;
        let double = self.backend.open(
            self.local_addr,
            endpoint,
            None,
            &self.id,
            Keepalive::Fast,
            timeout,
            &self.closed,
        )?;
        let DoubleStream {
            messages: (_msg_sink, mut msg_stream),
            acks: (_ack_sink, mut ack_stream),
            lease: _lease,
        } = double;
        let left = deadline.saturating_duration_since(Instant::now());
        let first = first_within(&mut ack_stream, left);
        // Done with both calls, whatever came: cancelling ends them at both ends.
        msg_stream.cancel();
        ack_stream.cancel();
        let fail = |reason: String| Error::Connect {
            endpoint: endpoint.to_owned(),
            kind: ConnectFailure::Handshake,
            reason,
        };
        match first {
            Some(Some(Ok(ack))) if ack.hash.is_empty() && !ack.from_hash.is_empty() => {
                Ok(ack.from_hash)
            }
            Some(Some(Ok(_))) => Err(fail("answered without a handshake".into())),
            Some(Some(Err(e))) => Err(fail(describe(&e))),
            Some(None) => Err(fail("closed the call without a handshake".into())),
            None => Err(fail(format!(
                "no handshake within {timeout:?}: an original Go node sends none (name it: \
                 ID=HOST:PORT)"
            ))),
        }
    }

    /// Starts the reader thread of an outbound link (both its streams, see [`read_link`]); it
    /// reports each stream's end, and cancels a call once the node drops its outbox (`stop`),
    /// which also frees a writer held in a write by flow control.
    fn spawn_reader(
        &self,
        name: String,
        messages: LinkEnd<GossipMessage>,
        acks: LinkEnd<GossipACK>,
    ) -> Result<(), Error> {
        let events = self.reports.clone();
        self.threads
            .spawn(name, move || read_link(messages, acks, &*events))
    }

    /// Registers the two streams of a double stream with the manager and starts their threads.
    fn start(&self, peer: &NodeId, double: DoubleStream) -> Result<(), Error> {
        let DoubleStream {
            messages: (msg_sink, msg_stream),
            acks: (ack_sink, ack_stream),
            lease,
        } = double;
        let (msg_id, ack_id) = (self.next_stream_id(), self.next_stream_id());
        let (msg_tx, msg_rx, msg_stop) = outbox_stopping_reader();
        let (ack_tx, ack_rx, ack_stop) = outbox_stopping_reader();
        // The link is recorded before the manager hears of it, so that a failure it reports
        // finds the link to take down.
        self.table.lock().insert(
            peer.clone(),
            Link {
                _lease: lease,
                messages: msg_id,
            },
        );
        let opens = [
            (
                msg_id,
                StreamKind::OutboundMessages,
                Writer::Messages(msg_tx),
            ),
            (ack_id, StreamKind::OutboundAcks, Writer::Acks(ack_tx)),
        ];
        for (stream, kind, writer) in opens {
            let open = StreamEvent::Opened {
                stream,
                peer: peer.clone(),
                kind,
                writer: Some(writer),
                // What the peer understands is learned from the streams it opens to us, or from
                // the handshake ACK it answers our AckStream with.
                features: Features::default(),
            };
            if !self.reports.report(open) {
                self.table.lock().remove(peer);
                return Err(Error::Shutdown);
            }
        }
        let tag = format!("{}>{}", self.id, peer);
        let spawn_all = || -> Result<(), Error> {
            let events = self.reports.clone();
            self.threads.spawn(format!("gossip-w-{tag}"), move || {
                write_loop(msg_sink, msg_rx, msg_id, &*events, None)
            })?;
            let events = self.reports.clone();
            self.threads.spawn(format!("gossip-w-{tag}"), move || {
                write_loop(ack_sink, ack_rx, ack_id, &*events, None)
            })?;
            self.spawn_reader(
                format!("gossip-r-{tag}"),
                (msg_stream, msg_stop, msg_id),
                (ack_stream, ack_stop, ack_id),
            )
        };
        if let Err(e) = spawn_all() {
            // Whatever did start is torn down with the link.
            self.reports.report(StreamEvent::Closed {
                stream: msg_id,
                reason: format!("cannot start stream threads: {e}"),
            });
            return Err(e);
        }
        Ok(())
    }
}
