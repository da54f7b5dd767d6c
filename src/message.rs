//! What the application hands to a node and what it gets back.

use std::fmt;
use std::time::Duration;

use bytes::Bytes;

use crate::id::NodeId;
use crate::payload::{EncodedFrame, PayloadBuf, SharedPayload, FRAME_ALONE_MIN};

/// A message to send: a hash (its unique id, chosen by the application) and a payload.
///
/// A message made by [`Node::message`](crate::Node::message) from a
/// [`PayloadBuf`] also carries its encoded frame, so sending it copies no
/// payload bytes; so does one made by [`Message::shared`] from a [`SharedPayload`], which many
/// messages send without copying it. Changing `payload` afterwards (or the `hash` of a
/// `PayloadBuf`'s message, whose frame names it) is allowed: the frame no longer matches and
/// the message is encoded as any other.
#[derive(Clone, Debug)]
pub struct Message {
    /// Unique id of the message. Resending the same hash to the same neighbour is how a
    /// retransmission is recognised: the receiver delivers it once and ACKs it again.
    pub hash: String,
    /// The payload. `Bytes` is reference-counted: sending one buffer to many neighbours does not
    /// copy it.
    pub payload: Bytes,
    /// The frame `payload` lives in, encoded for `hash` (see [`crate::payload`]).
    frame: Option<EncodedFrame>,
}

impl PartialEq for Message {
    fn eq(&self, other: &Message) -> bool {
        self.hash == other.hash && self.payload == other.payload
    }
}

impl Eq for Message {}

impl Message {
    /// A message with the given hash and payload.
    pub fn new(hash: impl Into<String>, payload: impl Into<Bytes>) -> Message {
        Message {
            hash: hash.into(),
            payload: payload.into(),
            frame: None,
        }
    }

    /// A message whose payload is written in `buf`, framed in place as sent by `from`. A
    /// payload small enough to share gRPC messages with others is encoded with them, so it
    /// is not framed alone (its bytes stay where they are).
    pub(crate) fn framed(hash: String, buf: PayloadBuf, from: &str) -> Message {
        if buf.len() <= FRAME_ALONE_MIN {
            return Message::new(hash, buf.into_bytes());
        }
        let frame = buf.into_frame(&hash, from);
        Message {
            hash,
            payload: frame.payload(),
            frame: Some(frame),
        }
    }

    /// A message carrying `payload`, which many messages may share: each sends its own
    /// header, then the payload's one encoded frame (see [`SharedPayload`]). A payload small
    /// enough to share gRPC messages with others is encoded with them.
    pub fn shared(hash: impl Into<String>, payload: &SharedPayload) -> Message {
        let frame = payload.frame();
        Message {
            hash: hash.into(),
            payload: payload.payload(),
            frame: (payload.len() > FRAME_ALONE_MIN).then(|| frame.clone()),
        }
    }

    /// The message's frame as sent by `from`, when it still matches the hash and payload (a
    /// [`SharedPayload`]'s frame matches any hash and sender).
    /// A message without one (a plain `Bytes` payload) is encoded by protobuf in the writer
    /// thread, one copy per transmission: encoding it here instead would give every message
    /// its own copy for as long as it is in flight, where messages that share one payload
    /// hold it once.
    pub(crate) fn take_frame(&mut self, from: &str) -> Option<EncodedFrame> {
        let fits = |f: &EncodedFrame| {
            f.holds(&self.payload) && (f.is_tail() || f.is_for(&self.hash, from))
        };
        self.frame.take().filter(fits)
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
///
/// With [`Deliveries::Confirmed`](crate::Deliveries::Confirmed) the sender gets its ACK only
/// when the application calls [`confirm`](Delivery::confirm): that is the promise that the
/// application has the message (stored it, acted on it). Dropping a delivery without confirming
/// it (or calling [`decline`](Delivery::decline)) means "not taken": the sender learns it and
/// sends the message again later, within its TTL. With [`Deliveries::Queue`](crate::Deliveries)
/// the node ACKs on arrival and `confirm` does nothing.
#[derive(Debug)]
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
    /// Set when the node waits for the application's confirmation before it ACKs.
    receipt: Option<Receipt>,
}

impl Delivery {
    /// A delivery that needs no confirmation.
    pub(crate) fn new(
        from: NodeId,
        hash: String,
        payload: Bytes,
        origin: Option<NodeId>,
    ) -> Delivery {
        Delivery {
            from,
            hash,
            payload,
            origin,
            receipt: None,
        }
    }

    /// Makes the node wait for [`confirm`](Delivery::confirm) before it ACKs.
    pub(crate) fn with_receipt(mut self, receipt: Receipt) -> Delivery {
        self.receipt = Some(receipt);
        self
    }

    /// Drops the receipt without answering (the delivery never reached the application).
    pub(crate) fn forget_receipt(&mut self) {
        if let Some(mut receipt) = self.receipt.take() {
            receipt.settled = true;
        }
    }

    /// Whether the sender's ACK waits for [`confirm`](Delivery::confirm) (acknowledged
    /// deliveries of direct messages). False for broadcasts and in the automatic modes.
    pub fn needs_confirmation(&self) -> bool {
        self.receipt.is_some()
    }

    /// The application has the message: the node records it as seen and ACKs it. Call it only
    /// once the message is safe by the application's standard (written and synced, committed,
    /// processed), because after the ACK the sender forgets it. Does nothing for deliveries
    /// that need no confirmation.
    pub fn confirm(mut self) {
        if let Some(receipt) = self.receipt.take() {
            receipt.settle(true);
        }
    }

    /// The application does not take the message now: the sender is told to send it again
    /// later (a peer without the `confirm` feature gets no ACK and retransmits after its own
    /// timeout). Dropping an unconfirmed delivery does the same.
    pub fn decline(mut self) {
        if let Some(receipt) = self.receipt.take() {
            receipt.settle(false);
        }
    }
}

impl PartialEq for Delivery {
    /// Compares what was delivered; whether it awaits confirmation does not count.
    fn eq(&self, other: &Delivery) -> bool {
        self.from == other.from
            && self.hash == other.hash
            && self.payload == other.payload
            && self.origin == other.origin
    }
}

impl Eq for Delivery {}

/// The application's answer about one delivery that needed confirmation.
#[derive(Debug)]
pub(crate) struct Settlement {
    pub(crate) from: NodeId,
    pub(crate) hash: String,
    /// Confirmed (true) or declined / dropped (false).
    pub(crate) taken: bool,
}

/// Sends the application's answer back to the node exactly once: on `settle`, or as a decline
/// when dropped unsettled.
#[derive(Debug)]
pub(crate) struct Receipt {
    tx: crossbeam_channel::Sender<Settlement>,
    from: NodeId,
    hash: String,
    settled: bool,
}

impl Receipt {
    pub(crate) fn new(
        tx: crossbeam_channel::Sender<Settlement>,
        from: NodeId,
        hash: String,
    ) -> Receipt {
        Receipt {
            tx,
            from,
            hash,
            settled: false,
        }
    }

    fn settle(mut self, taken: bool) {
        self.send(taken);
    }

    fn send(&mut self, taken: bool) {
        if self.settled {
            return;
        }
        self.settled = true;
        // The channel is unbounded (receipts are bounded by `Deliveries::Confirmed`), so this
        // never blocks; it fails only once the node is gone, when nothing waits for it.
        let _ = self.tx.send(Settlement {
            from: self.from.clone(),
            hash: std::mem::take(&mut self.hash),
            taken,
        });
    }
}

impl Drop for Receipt {
    fn drop(&mut self) {
        self.send(false);
    }
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
    /// The message is larger than the receiver takes (an original Go node's receive limit,
    /// as configured or as it told us with `RESOURCE_EXHAUSTED`); why. Final: sending it again
    /// would not help.
    TooLarge(String),
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
            FailReason::TooLarge(why) => write!(f, "too large for the receiver: {why}"),
            FailReason::Shutdown => f.write_str("node shut down"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_of_one_shared_payload_carry_its_frame_for_any_hash() {
        let big = SharedPayload::from(&vec![1u8; FRAME_ALONE_MIN + 1][..]);
        let mut a = Message::shared("a", &big);
        let mut b = Message::shared("b", &big);
        assert_eq!(a.payload.as_ptr(), b.payload.as_ptr());
        assert!(a.take_frame("n1").is_some_and(|f| f.is_tail()));
        // The hash may change: a tail names no message.
        b.hash = "b2".into();
        assert!(b.take_frame("n2").is_some());
        // A new payload does not match it.
        let mut c = Message::shared("c", &big);
        c.payload = Bytes::from_static(b"other");
        assert!(c.take_frame("n1").is_none());
        // Small payloads share gRPC messages with others and keep no frame.
        let small = SharedPayload::from(&b"tiny"[..]);
        let mut d = Message::shared("d", &small);
        assert_eq!(&d.payload[..], b"tiny");
        assert!(d.take_frame("n1").is_none());
    }
}
