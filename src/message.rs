//! What the application hands to a node and what it gets back.

use std::fmt;
use std::time::Duration;

use bytes::Bytes;

use crate::id::NodeId;

/// A message to send: a hash (its unique id, chosen by the application) and a payload.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Message {
    /// Unique id of the message. Resending the same hash to the same neighbour is how a
    /// retransmission is recognised: the receiver delivers it once and ACKs it again.
    pub hash: String,
    /// The payload. `Bytes` is reference-counted: sending one buffer to many neighbours does not
    /// copy it.
    pub payload: Bytes,
}

impl Message {
    /// A message with the given hash and payload.
    pub fn new(hash: impl Into<String>, payload: impl Into<Bytes>) -> Message {
        Message {
            hash: hash.into(),
            payload: payload.into(),
        }
    }
}

/// Identifies one sent message: the neighbour it went to and its hash.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MessageKey {
    /// The neighbour the message was sent to.
    pub peer: NodeId,
    /// The message hash.
    pub hash: String,
}

impl fmt::Display for MessageKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}@{}", self.hash, self.peer)
    }
}

/// A message this node received, handed to the application once per (sender, hash).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Delivery {
    /// The neighbour (or client) that sent it.
    pub from: NodeId,
    /// The message hash.
    pub hash: String,
    /// The payload.
    pub payload: Bytes,
    /// For a broadcast: the node that started it (`from` is the neighbour that forwarded it).
    /// `None` for a message sent to this node.
    pub origin: Option<NodeId>,
}

/// The one completion every sent message gets.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Completion {
    /// Which message.
    pub key: MessageKey,
    /// How it ended.
    pub outcome: Outcome,
    /// Time from the send call to the completion.
    pub elapsed: Duration,
    /// How many times the message was transmitted (more than 1 after retransmissions; 0 if
    /// it never got onto a link).
    pub attempts: u32,
}

impl Completion {
    /// True if the message was acknowledged by its target.
    pub fn is_acked(&self) -> bool {
        matches!(self.outcome, Outcome::Acked { .. })
    }
}

/// How a sent message ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The target acknowledged it.
    Acked {
        /// The node that sent the ACK.
        by: NodeId,
        /// The target had already received this hash before (a retransmission); it did not
        /// deliver it again.
        duplicate: bool,
    },
    /// No ACK arrived within the TTL.
    TimedOut,
    /// The message could not be delivered; the reason says why.
    Failed(FailReason),
}

/// Why a message failed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FailReason {
    /// The target is not (or no longer) a neighbour with an open double stream.
    NotConnected,
    /// The application disconnected the neighbour while the message was in flight.
    Disconnected,
    /// The receiver refused the message; its reason.
    Rejected(String),
    /// The node shut down while the message was in flight.
    Shutdown,
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Outcome::Acked {
                by,
                duplicate: false,
            } => write!(f, "acked by {by}"),
            Outcome::Acked {
                by,
                duplicate: true,
            } => write!(f, "acked by {by} (duplicate)"),
            Outcome::TimedOut => f.write_str("timed out"),
            Outcome::Failed(r) => write!(f, "failed: {r}"),
        }
    }
}

impl fmt::Display for FailReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FailReason::NotConnected => f.write_str("neighbour not connected"),
            FailReason::Disconnected => f.write_str("neighbour disconnected"),
            FailReason::Rejected(why) => write!(f, "rejected by receiver: {why}"),
            FailReason::Shutdown => f.write_str("node shut down"),
        }
    }
}
