//! Partial views for clusters that assemble themselves: HyParView (Leitão, Pereira, Rodrigues,
//! DSN 2007) as a state machine that never touches a socket, beside the message manager and
//! the broadcast engine.
//!
//! Each node keeps a small, symmetric **active view** (the peers it holds links to, and over
//! which broadcasts run) and a larger **passive view** (peers it knows of, to repair the active
//! one). A node joins by sending [`Message::Join`] to any member; the contact takes it into its
//! active view and starts random walks ([`Message::ForwardJoin`]) that end by adding the joiner
//! to other active views, and leave it in passive views on the way. When an active link fails,
//! a node asks a passive peer to become a neighbour ([`Message::Neighbor`]; with high priority
//! when it has no neighbour left, which is never refused). A periodic shuffle
//! ([`Message::Shuffle`]) walks a sample of each view to a random node and swaps it for a sample
//! of that node's passive view, so passive views stay fresh and mixed.
//!
//! One addition to the paper: views that have all filled never change without a failure, so
//! an overlay that settled into two parts (with 8 nodes and active views of 3, two 4-cliques
//! do, about one cluster in 80) would stay split while every member list is complete. Now
//! and then ([`ViewConfig::swap_every`]) a node with a full view takes a random member in
//! place of a random neighbour, and the member hands the dropped neighbour one of its own
//! ([`Message::Swap`]): two links cross where two were, every degree stays, and parts join.
//!
//! The machine is driven by [`In`]puts and answers with [`Out`]puts, like the other cores; the
//! node (or [`sim`], which runs thousands of them) carries them out. It is generic over the
//! peer's identity so the simulator can use small integers. Threads and connections per node
//! are then bounded by [`ViewConfig::active`], whatever the cluster size.
//!
//! A running node carries these messages over its links as `MEMBERSHIP` frames ([`frame`]),
//! to peers that announce the `membership` feature, and keeps a [`MemberList`] beside the views
//! ([`Membership`] drives both); `gossip node --join` and [`crate::Node::join`] start it.

pub mod frame;
mod list;
mod machine;
mod peer;
mod views;

pub mod sim;

#[cfg(test)]
mod tests;

use std::time::Duration;

pub use frame::Frame;
pub use list::{
    live_digest_of, Digest, ListConfig, Member, MemberEvent, MemberList, MemberState, Update,
    DIGEST_BUCKETS,
};
pub use machine::{Membership, MembershipIn, MembershipOut};
pub use peer::Peer;
pub use views::HyParView;

/// The sizes and walk lengths of the views.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ViewConfig {
    /// Peers in the active view (the links): default 5 (log10 of 10,000 nodes + 1, the paper's
    /// log(n) + c).
    pub active: usize,
    /// Peers in the passive view: default 30 (the paper's k(log(n) + c) with k = 6).
    pub passive: usize,
    /// Active random walk length: hops a [`Message::ForwardJoin`] takes (default 6).
    pub active_walk: u32,
    /// Passive random walk length: where, counting down, a walk also leaves the joiner in the
    /// passive view (default 3).
    pub passive_walk: u32,
    /// Peers of the active view sent in a shuffle (default 3).
    pub shuffle_active: usize,
    /// Peers of the passive view sent in a shuffle (default 4).
    pub shuffle_passive: usize,
    /// Hops a shuffle walks (default 6, as the active walk).
    pub shuffle_walk: u32,
    /// How often a node shuffles ([`In::Shuffle`] is the node's timer): default 10 s.
    pub shuffle_period: Duration,
    /// On average once every this many shuffles, a node whose active view is full swaps one
    /// neighbour for a member outside its view ([`In::Swap`]); 0 never (default 50). Without
    /// it, two parts of an overlay whose views have all filled stay apart for good.
    pub swap_every: u32,
}

impl Default for ViewConfig {
    fn default() -> ViewConfig {
        ViewConfig {
            active: 5,
            passive: 30,
            active_walk: 6,
            passive_walk: 3,
            shuffle_active: 3,
            shuffle_passive: 4,
            shuffle_walk: 6,
            shuffle_period: Duration::from_secs(10),
            swap_every: 50,
        }
    }
}

/// What nodes send each other to keep their views.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Message<P> {
    /// "Take me in": sent by a joining node to its contact.
    Join,
    /// A random walk that adds `joiner` to an active view where it ends.
    ForwardJoin {
        /// The node that joins.
        joiner: P,
        /// Hops left.
        ttl: u32,
    },
    /// "Be my neighbour"; `high` when the sender has no neighbour at all (never refused).
    Neighbor {
        /// Priority.
        high: bool,
    },
    /// "Take me in in place of one of yours": a node with a full active view asks a member
    /// outside it ([`In::Swap`]), having dropped `spare` to make room. Never refused; a full
    /// receiver drops a random neighbour of its own and hands it `spare` (a
    /// [`Message::ForwardJoin`] that ends there), so every degree stays as it was. On the wire
    /// a high-priority `NEIGHBOR` that carries `spare`.
    Swap {
        /// The neighbour the sender dropped.
        spare: P,
    },
    /// The answer to [`Message::Neighbor`] and [`Message::Swap`].
    NeighborReply {
        /// Whether the sender took us into its active view.
        accepted: bool,
    },
    /// "You are no longer in my active view" (the link may close).
    Disconnect,
    /// A sample of `origin`'s views, walking `ttl` more hops.
    Shuffle {
        /// The node that started the shuffle (the reply goes to it).
        origin: P,
        /// Hops left.
        ttl: u32,
        /// The sample: `origin` and peers of its views.
        peers: Vec<P>,
    },
    /// A sample of the passive view of the node where a shuffle ended.
    ShuffleReply {
        /// The sample.
        peers: Vec<P>,
    },
}

/// What the view machine is told.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum In<P> {
    /// Join the cluster through `contact`.
    Join(P),
    /// A message arrived from `from`.
    Received {
        /// Its sender.
        from: P,
        /// The message.
        message: Message<P>,
    },
    /// The link to `peer` failed, or `peer` could not be reached at all.
    Failed(P),
    /// The shuffle timer ([`ViewConfig::shuffle_period`]) fired.
    Shuffle,
    /// Take `P` in, though the active view is full, in place of a random neighbour (see
    /// [`Message::Swap`]). Given when [`HyParView::swap_due`] says so, with a member outside
    /// the views picked at random from the member list; ignored when the view is not full
    /// (refilling covers that) or `P` is already a neighbour or asked.
    Swap(P),
}

/// What the view machine asks for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Out<P> {
    /// Send `message` to `to` (over its link, or a short-lived one if it has none).
    Send {
        /// The recipient.
        to: P,
        /// The message.
        message: Message<P>,
    },
    /// `peer` entered the active view: hold a link to it (broadcasts run over it).
    NeighborUp(P),
    /// `peer` left the active view: its link may close.
    NeighborDown(P),
}

/// A member as [`Node::members`](crate::Node::members) and
/// [`Node::member_events`](crate::Node::member_events) show it.
///
/// ```
/// # use grpc_gossip::membership::{MemberInfo, MemberState};
/// fn report(m: &MemberInfo) -> String {
///     format!("member id={} addr={} state={}", m.id, m.addr, m.state.name())
/// }
/// # let _ = report;
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MemberInfo {
    /// Its node id.
    pub id: crate::NodeId,
    /// The address it is reached at (the one it announced).
    pub addr: String,
    /// Its incarnation: raised by each restart and by each refuted suspicion.
    pub incarnation: u32,
    /// What it is, as far as this node knows.
    pub state: MemberState,
}

impl From<Member<Peer>> for MemberInfo {
    fn from(m: Member<Peer>) -> MemberInfo {
        MemberInfo {
            id: m.id.id,
            addr: m.id.addr,
            incarnation: m.incarnation,
            state: m.state,
        }
    }
}
