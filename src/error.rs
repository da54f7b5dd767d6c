//! The crate's error type: one variant per thing a caller can act on.

use std::time::Duration;

/// Errors returned by the public API.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// An id or hash is empty or longer than the configured limit.
    #[error("invalid {kind}: {reason}")]
    InvalidId {
        /// What the id names.
        kind: IdKind,
        /// Why it was refused.
        reason: String,
    },
    /// A payload is larger than [`Limits::max_payload_bytes`](crate::Limits::max_payload_bytes).
    /// Nothing was sent.
    #[error("message too large: {size} bytes, limit {limit}")]
    TooLarge {
        /// The payload's size in bytes.
        size: usize,
        /// The configured limit in bytes.
        limit: usize,
    },
    /// All slots of the store are busy (only from the non-blocking send, or when a blocking
    /// send's wait ran out).
    #[error("all {slots} slots are busy")]
    Full {
        /// The number of slots of the store.
        slots: usize,
    },
    /// The neighbour's share of the store (messages or bytes in flight to it) is used up: it
    /// is slow or unreachable. Sends to other neighbours are not affected.
    #[error("neighbour {peer:?} has {messages} messages ({bytes} bytes) in flight, its limit")]
    PeerFull {
        /// The neighbour.
        peer: String,
        /// Messages in flight to it.
        messages: usize,
        /// Payload bytes in flight to it.
        bytes: usize,
    },
    /// A message with the same hash to the same neighbour is still in flight.
    #[error("message {hash:?} to {peer} is already in flight")]
    AlreadyInFlight {
        /// The target neighbour.
        peer: String,
        /// The message hash.
        hash: String,
    },
    /// This node already started a broadcast with this hash, recently enough that it is still
    /// remembered. Nothing was sent.
    #[error("broadcast {0:?} was already started by this node")]
    DuplicateBroadcast(String),
    /// Too many broadcasts are being tracked at once
    /// ([`BroadcastConfig::max_tracked`](crate::broadcast::BroadcastConfig::max_tracked)).
    /// Nothing was sent.
    #[error("too many broadcasts in flight ({0})")]
    TooManyBroadcasts(usize),
    /// The broadcast payloads this node holds would exceed
    /// [`BroadcastConfig::max_held_bytes`](crate::broadcast::BroadcastConfig). Nothing was sent.
    #[error("broadcast payloads held take {held} of {limit} bytes; try again later")]
    BroadcastBudget {
        /// Payload bytes held now.
        held: usize,
        /// The budget.
        limit: usize,
    },
    /// The target is not a neighbour of this node (nor, with membership, a member believed up).
    #[error("unknown neighbour {0:?}")]
    UnknownNeighbor(String),
    /// A message to a member that is not a neighbour needs a link of its own, and as many such
    /// links as allowed ([`MembershipConfig::max_extra_links`](crate::MembershipConfig)) are
    /// open; they close once idle. Nothing was sent.
    #[error("{limit} links to members that are not neighbours are open already; try again later")]
    MemberLinks {
        /// The limit.
        limit: usize,
    },
    /// Connecting to a neighbour's endpoint failed.
    #[error("cannot connect to {endpoint}: {kind}: {reason}")]
    Connect {
        /// The endpoint that was dialled.
        endpoint: String,
        /// Which kind of failure, for a caller to act on.
        kind: ConnectFailure,
        /// What went wrong, in words.
        reason: String,
    },
    /// The node could not listen on an address.
    #[error("cannot listen on {addr} ({purpose}): {reason}")]
    Bind {
        /// The requested listen address.
        addr: String,
        /// What the address is for, and where it is set (e.g. "gRPC, `listen`").
        purpose: &'static str,
        /// What went wrong.
        reason: String,
    },
    /// A configuration value is out of range.
    #[error("invalid configuration: {field}: {reason}")]
    Config {
        /// The offending field.
        field: &'static str,
        /// Why it was refused.
        reason: String,
    },
    /// The node is shutting down or has shut down.
    #[error("node is shut down")]
    Shutdown,
    /// A gRPC call failed.
    #[error("gRPC: {0}")]
    Grpc(#[from] grpcio::Error),
    /// An I/O error (benchmarks, the TCP baseline, the CLI).
    #[error("I/O: {0}")]
    Io(#[from] std::io::Error),
    /// Waiting for something took longer than allowed.
    #[error("timed out after {0:?}")]
    Timeout(Duration),
}

/// Why a connection to a neighbour failed, so that a typo, a peer that is down and a
/// certificate problem can be told apart. (Another node at the address is no connect failure:
/// the connection opens, that node refuses our streams saying who it is, and the link goes down
/// with that reason, see [`NeighborEvent::Down`](crate::NeighborEvent).)
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConnectFailure {
    /// The endpoint is not a valid `HOST:PORT`, or its name does not resolve.
    Unresolvable,
    /// Nothing listens there: the connection was refused (reported at once).
    Refused,
    /// No answer within the connect timeout (the host is down or a firewall drops packets).
    Timeout,
    /// TCP connects but the gRPC handshake never completes: a TLS node dialled in plaintext
    /// or the reverse, or (with TLS) a certificate one side does not accept.
    Handshake,
}

impl std::fmt::Display for ConnectFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ConnectFailure::Unresolvable => "unresolvable",
            ConnectFailure::Refused => "refused",
            ConnectFailure::Timeout => "timed out",
            ConnectFailure::Handshake => "handshake failed",
        })
    }
}

/// What an id names, for error messages.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IdKind {
    /// A node id (`NodeHash`, `from_hash`).
    Node,
    /// A message hash.
    Message,
}

impl std::fmt::Display for IdKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            IdKind::Node => "node id",
            IdKind::Message => "message hash",
        })
    }
}
