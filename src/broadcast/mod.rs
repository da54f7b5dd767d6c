//! Multi-hop broadcast whose ACKs converge back to the origin, with a lazy payload plane.
//!
//! [`BroadcastEngine`] is a pure state machine, like [`MessageManager`](crate::MessageManager):
//! it is fed [`Event`]s (the application broadcasts, a frame arrived from a neighbour, a
//! neighbour came up or went down, time passed) and answers [`Action`]s (send this frame to that
//! neighbour, deliver, complete). The node runs one per node on its manager thread; the
//! simulator ([`crate::sim`]) runs a thousand of them over simulated links. ALGORITHM.md
//! explains the protocol; in short:
//!
//! - **Dissemination.** A node that receives a broadcast's payload for the first time delivers
//!   it, remembers the sender as its *parent*, and offers it to every other neighbour: the
//!   payload itself to *eager* neighbours, a digest (IHAVE) to *lazy* ones. A hop limit bounds
//!   the spread; the seen state drops duplicates.
//! - **Convergence.** Every offer is answered exactly once. A duplicate payload or an IHAVE for
//!   something the node already has is answered at once as a duplicate. The first payload is
//!   answered only when the node's own offers have been answered or have run out of time, with
//!   the number of nodes below it that delivered the message (itself included) and the
//!   neighbours that never answered. So ACKs flow back along the dissemination tree, merging on
//!   the way, and the origin's completion says how many nodes the broadcast reached.
//! - **Lazy plane** (Plumtree). Payloads of at least
//!   [`BroadcastConfig::lazy_threshold`] bytes travel eagerly only along tree links: a node
//!   that gets a duplicate payload answers with `prune`, and both ends make that link lazy. A
//!   node that hears IHAVE but gets no payload within [`BroadcastConfig::graft_timeout`] asks
//!   for it (GRAFT), which makes the link eager again: the tree repairs itself. Smaller payloads
//!   go eagerly to the neighbours the [`Router`](crate::Router) picks (at most `fanout`), IHAVE to the others.
//! - **Deadlines.** The origin gives a broadcast [`BroadcastConfig::deadline`]; each frame
//!   carries the time its receiver has left to answer, and each hop keeps
//!   [`BroadcastConfig::hop_margin`] of it for its own answer to travel back. So every subtree
//!   answers before its parent must, and a dead or silent node only costs its parent's wait.

mod engine;
#[cfg(test)]
mod tests;

use std::fmt;
use std::time::Duration;

use bytes::Bytes;

use crate::id::NodeId;

pub use engine::BroadcastEngine;

/// Names a broadcast cluster-wide: the node that started it and the hash it chose.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BroadcastId {
    /// The node that started the broadcast.
    pub origin: NodeId,
    /// The hash the origin gave it.
    pub hash: String,
}

impl fmt::Display for BroadcastId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.origin, self.hash)
    }
}

/// Tuning of the broadcast protocol.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BroadcastConfig {
    /// Eager pushes per hop for payloads below `lazy_threshold` (the router picks them).
    pub fanout: usize,
    /// Payloads of at least this many bytes use the lazy plane (eager only along the tree).
    pub lazy_threshold: usize,
    /// Hops a broadcast may travel from its origin.
    pub hop_limit: u32,
    /// Time the origin gives a broadcast to converge (default 10 s, a twelfth of the default
    /// TTL). A node caps it at its store's TTL.
    pub deadline: Duration,
    /// Time each hop keeps for its own ACK to travel back to its parent.
    pub hop_margin: Duration,
    /// How long a node that heard IHAVE waits for the payload before it asks (GRAFT).
    pub graft_timeout: Duration,
    /// At most this many missing node ids are listed in one ACK (and one completion).
    pub max_missing: usize,
    /// How long a node keeps a broadcast's payload after its own ACK, to answer late GRAFTs.
    pub linger: Duration,
    /// How long a finished broadcast is remembered, so that late copies are known duplicates.
    pub remember: Duration,
    /// At most this many broadcasts are tracked at once; beyond it new ones are refused (at
    /// the origin) or dropped unanswered (elsewhere), and the oldest finished ones are forgotten
    /// first.
    pub max_tracked: usize,
    /// Payload bytes of broadcasts a node holds at once (until each finishes and lingers).
    /// Beyond it a new broadcast is refused: with [`Error::BroadcastBudget`](crate::Error) at
    /// the origin, with a refusal that counts as missing elsewhere. Default 1 GiB.
    pub max_held_bytes: usize,
}

impl Default for BroadcastConfig {
    fn default() -> Self {
        BroadcastConfig {
            fanout: 6,
            lazy_threshold: 64 * 1024,
            hop_limit: 64,
            deadline: Duration::from_secs(10),
            hop_margin: Duration::from_millis(100),
            graft_timeout: Duration::from_millis(250),
            max_missing: 64,
            linger: Duration::from_secs(2),
            remember: Duration::from_secs(60),
            max_tracked: 4096,
            max_held_bytes: 1 << 30,
        }
    }
}

/// A frame of the broadcast protocol, between two neighbours.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Frame {
    /// The payload (wire: `GossipMessage` with kind BROADCAST).
    Payload {
        /// Which broadcast.
        id: BroadcastId,
        /// Hops travelled before this one (0 from the origin).
        hops: u32,
        /// The origin's hop limit.
        hop_limit: u32,
        /// Time the receiver has to answer.
        budget: Duration,
        /// The payload.
        payload: Bytes,
    },
    /// A digest: "I have it" (wire: kind IHAVE, no payload).
    IHave {
        /// Which broadcast.
        id: BroadcastId,
        /// Hops travelled before this one.
        hops: u32,
        /// The origin's hop limit.
        hop_limit: u32,
        /// Time the receiver has to answer.
        budget: Duration,
    },
    /// "Send me the payload" (wire: kind GRAFT).
    Graft {
        /// Which broadcast.
        id: BroadcastId,
    },
    /// The answer to a Payload or IHave (wire: `GossipACK` with `broadcast` set).
    Ack(BroadcastAck),
}

/// The one answer each offer (payload or IHAVE) gets.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BroadcastAck {
    /// Which broadcast.
    pub id: BroadcastId,
    /// `false`: the answering node had it already (a duplicate), `reached` is 0.
    pub first: bool,
    /// Nodes of ours in the answering subtree that delivered it, the answering node included.
    pub reached: u64,
    /// Original nodes in the answering subtree that ACKed a plain copy (at most
    /// `max_missing` of them are listed). An original may be offered the broadcast by several
    /// of our nodes and ACKs every copy; as a set it counts once where the answers meet.
    pub originals: Vec<NodeId>,
    /// Nodes of the subtree that were offered it and did not answer in time.
    pub missing: Vec<NodeId>,
    /// With a duplicate: make the link lazy (Plumtree PRUNE).
    pub prune: bool,
    /// The answering node refused the broadcast (it holds too many payload bytes); why. It
    /// counts as missing where it was offered.
    pub refused: Option<String>,
}

/// Inputs of the engine.
#[derive(Debug)]
pub enum Event {
    /// The application starts a broadcast.
    Broadcast {
        /// Its hash (unique among this node's broadcasts).
        hash: String,
        /// The payload.
        payload: Bytes,
    },
    /// A frame arrived from a neighbour.
    Received {
        /// The neighbour.
        from: NodeId,
        /// The frame.
        frame: Frame,
    },
    /// A neighbour that does not speak this protocol (an original node) ACKed `hash`, which we
    /// sent it as a plain message.
    PlainAck {
        /// The neighbour.
        from: NodeId,
        /// The message hash.
        hash: String,
    },
    /// A neighbour can be sent to. `plain`: it does not speak this protocol, so it gets
    /// broadcasts as plain messages and never forwards them.
    NeighborUp {
        /// The neighbour.
        peer: NodeId,
        /// It is an original node (or does not announce `broadcast`).
        plain: bool,
    },
    /// A neighbour's link is down: what it was offered counts as missing, and so do the
    /// broadcasts that would be offered to it until it is up again.
    NeighborDown {
        /// The neighbour.
        peer: NodeId,
    },
    /// The application removed a neighbour: it is forgotten.
    NeighborRemoved {
        /// The neighbour.
        peer: NodeId,
    },
    /// Time passed: grafts and deadlines.
    Tick,
}

/// Outputs of the engine, carried out in order.
#[derive(Debug, PartialEq)]
pub enum Action {
    /// Send a frame to a neighbour. To a plain neighbour, only `Payload` is sent, as a plain
    /// message; its ACK comes back as [`Event::PlainAck`].
    Send {
        /// The neighbour.
        to: NodeId,
        /// The frame.
        frame: Frame,
    },
    /// Hand a broadcast to the application (once per broadcast).
    Deliver {
        /// Which broadcast.
        id: BroadcastId,
        /// The neighbour it came from.
        from: NodeId,
        /// Hops it travelled to get here (1: from the origin).
        hops: u32,
        /// The payload.
        payload: Bytes,
    },
    /// A broadcast this node started has converged.
    Complete(BroadcastCompletion),
}

/// How a broadcast went, as its origin learns it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BroadcastCompletion {
    /// Which broadcast.
    pub id: BroadcastId,
    /// Nodes that delivered it (the origin not included), as their ACKs reported: ours by
    /// count, original nodes by name, so that an original sent a copy by several of our nodes
    /// counts once (up to [`BroadcastConfig::max_missing`] originals per answer).
    pub reached: u64,
    /// Nodes that were offered it and did not answer before the deadline (at most
    /// [`BroadcastConfig::max_missing`] listed).
    pub missing: Vec<NodeId>,
    /// Time from the broadcast call to convergence.
    pub elapsed: Duration,
}

impl BroadcastCompletion {
    /// Every offer was answered: no subtree timed out or lost its link.
    pub fn is_complete(&self) -> bool {
        self.missing.is_empty()
    }
}
