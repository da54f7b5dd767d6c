//! What changes a node's neighbours (connect, add, remove), shared by the application's calls
//! on [`Node`](super::Node) and the membership thread, which links to members on its own.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use crossbeam_channel::Sender;

use super::driver::Input;
use super::link::Links;
use super::supervisor::Notice;
use crate::error::Error;
use crate::id::{IdKind, NodeId};
use crate::limits::Limits;
use crate::manager::Event;
use crate::neighbor::{NeighborEvent, NeighborInfo};

/// A node's hold on its links, its manager's inbox and its supervisor.
pub(crate) struct Control {
    pub(crate) id: NodeId,
    pub(crate) links: Arc<Links>,
    /// The manager thread's inbox.
    pub(crate) inbox: Sender<Input>,
    pub(crate) supervisor: Sender<Notice>,
    pub(crate) connect_timeout: Duration,
    pub(crate) limits: Limits,
}

impl Control {
    pub(crate) fn check_open(&self) -> Result<(), Error> {
        if self.links.closed.load(Ordering::Acquire) {
            Err(Error::Shutdown)
        } else {
            Ok(())
        }
    }

    /// Refuses a neighbour this node cannot have: the node is shut down, or it is itself, or
    /// it could take no message at all.
    pub(crate) fn check_neighbor(&self, info: &NeighborInfo) -> Result<(), Error> {
        self.check_open()?;
        if info.node_hash == self.id.as_str() {
            return Err(Error::InvalidId {
                kind: IdKind::Node,
                reason: "a node cannot be its own neighbour".into(),
            });
        }
        if info.max_message == Some(0) {
            return Err(Error::Config {
                field: "max_message",
                reason: format!("neighbour {:?}: must be > 0", info.node_hash),
            });
        }
        Ok(())
    }

    /// Tells the manager what `peer` takes if it is an original node.
    pub(crate) fn set_neighbor_limit(
        &self,
        peer: &NodeId,
        max_message: Option<usize>,
    ) -> Result<(), Error> {
        let event = Event::NeighborLimit {
            peer: peer.clone(),
            max_message,
        };
        self.inbox
            .send(Input::Event(event))
            .map_err(|_| Error::Shutdown)
    }

    /// See [`Node::connect_to_neighbor`](super::Node::connect_to_neighbor).
    pub(crate) fn connect_to_neighbor(&self, info: NeighborInfo) -> Result<(), Error> {
        self.check_neighbor(&info)?;
        let neighbors = &self.links.neighbors;
        let known_before = neighbors.lookup(&info.node_hash);
        let peer = neighbors.add(info.clone())?;
        // Known before the link is up, so that nothing goes out over the peer's limit.
        self.set_neighbor_limit(&peer, info.max_message)?;
        match self
            .links
            .establish(&peer, &info.endpoint, self.connect_timeout)
        {
            Ok(()) => Ok(()),
            Err(e) => {
                // Leave the records as they were.
                match known_before {
                    Some((_, old)) => {
                        let online = old.online;
                        let limit = old.max_message;
                        neighbors.add(old)?;
                        neighbors.set_online(peer.as_str(), online && self.links.is_linked(&peer));
                        self.set_neighbor_limit(&peer, limit)?;
                    }
                    None => {
                        drop(neighbors.remove(&info.node_hash));
                        self.set_neighbor_limit(&peer, None)?;
                    }
                }
                Err(e)
            }
        }
    }

    /// See [`Node::connect_to_address`](super::Node::connect_to_address).
    pub(crate) fn connect_to_address(&self, endpoint: &str) -> Result<NodeId, Error> {
        let named = self.links.identify(endpoint, self.connect_timeout)?;
        let peer = NodeId::new(&named, &self.limits)?;
        if peer == self.id {
            return Err(Error::InvalidId {
                kind: IdKind::Node,
                reason: format!("{endpoint} is this node ({peer})"),
            });
        }
        self.connect_to_neighbor(NeighborInfo::new(peer.as_str(), endpoint))?;
        Ok(peer)
    }

    /// See [`Node::add_neighbor`](super::Node::add_neighbor).
    pub(crate) fn add_neighbor(&self, info: NeighborInfo) -> Result<(), Error> {
        self.check_neighbor(&info)?;
        let max_message = info.max_message;
        let peer = self.links.neighbors.add(info)?;
        self.set_neighbor_limit(&peer, max_message)?;
        self.inbox
            .send(Input::Event(Event::NeighborAdded { peer: peer.clone() }))
            .map_err(|_| Error::Shutdown)?;
        if !self.links.is_linked(&peer) {
            self.supervisor
                .send(Notice::Connect(peer))
                .map_err(|_| Error::Shutdown)?;
        }
        Ok(())
    }

    /// See [`Node::disconnect_neighbor`](super::Node::disconnect_neighbor).
    pub(crate) fn disconnect_neighbor(&self, node_hash: &str) -> Result<(), Error> {
        let (peer, _) = self
            .links
            .neighbors
            .lookup(node_hash)
            .ok_or_else(|| Error::UnknownNeighbor(node_hash.to_owned()))?;
        self.links.neighbors.remove(node_hash);
        self.links.forget(&peer);
        self.links
            .emit(NeighborEvent::Removed { peer: peer.clone() });
        self.inbox
            .send(Input::Event(Event::Disconnect { peer }))
            .map_err(|_| Error::Shutdown)
    }
}
