//! What our MessageStream writers send: a frame as a protobuf message, or already encoded.
//!
//! gRPC's generated client encodes every request with protobuf into a fresh slice, a copy of
//! the payload. Our outbound MessageStream is opened with a method of our own instead
//! ([`MESSAGE_STREAM`]): its serializer hands gRPC the frame's own slice when the message was
//! encoded beforehand (see [`crate::payload`]), a reference count and no copy, and encodes
//! with protobuf as before otherwise. On the wire both are the same `GossipMessage`, so the
//! peer (ours or an original node) reads them alike.
//!
//! A payload shared by many messages ([`SharedPayload`](crate::SharedPayload)) is encoded
//! once, alone; each message then goes out as two gRPC messages back to back, its own header
//! (`payload_follows`) and that shared tail, to peers that announced the `tail` feature. The
//! reader puts the two together again before anything else sees them.

use std::sync::Arc;

use bytes::Bytes;
use grpcio::{GrpcSlice, Marshaller, MessageReader, Method, MethodType};
use protobuf::Message as _;

use crate::payload::{EncodedFrame, LazyTail};
use crate::proto::{GossipACK, GossipMessage};

use super::batch::Batchable;

/// An outbound MessageStream frame. `message` is always complete (the node reads its hash and
/// sizes); `encoded`, when present, is the same frame as bytes, which the writer sends instead
/// of encoding `message`, or the payload's tail alone; `lazy_tail`, where `encoded` is not
/// set, the payload's tail shared with other frames of the same payload, encoded by whichever
/// writer comes first.
#[derive(Debug)]
pub(crate) struct OutFrame {
    pub(crate) message: GossipMessage,
    pub(crate) encoded: Option<EncodedFrame>,
    pub(crate) lazy_tail: Option<Arc<LazyTail>>,
}

impl From<GossipMessage> for OutFrame {
    fn from(message: GossipMessage) -> OutFrame {
        OutFrame::new(message, None)
    }
}

impl OutFrame {
    /// `message`, sent as it is or as `encoded`.
    pub(crate) fn new(message: GossipMessage, encoded: Option<EncodedFrame>) -> OutFrame {
        OutFrame {
            message,
            encoded,
            lazy_tail: None,
        }
    }

    /// The tail its payload goes in, if it goes apart from its header.
    fn tail(&self) -> Option<EncodedFrame> {
        if let Some(encoded) = &self.encoded {
            return encoded.is_tail().then(|| encoded.clone());
        }
        let m = &self.message;
        // Only a payload that travels alone: not a batch, not a chunk, not empty.
        let alone = m.batch.is_empty() && m.total_bytes == 0 && !m.payload.is_empty();
        let lazy = self.lazy_tail.as_ref().filter(|_| alone)?;
        lazy.get_or_encode(&m.payload).cloned()
    }
}

impl Batchable for OutFrame {
    fn cost(&self) -> usize {
        self.message.cost()
    }

    fn carry(&mut self, item: Self) {
        // A frame that carries others is no longer the one that was encoded.
        self.encoded = None;
        self.lazy_tail = None;
        self.message.carry(item.message);
    }

    fn weight(&self) -> (usize, usize) {
        self.message.weight()
    }

    /// Itself; or, for a shared payload's tail, a header that says `payload_follows` and then
    /// the tail.
    fn into_pieces(self) -> (OutFrame, Option<OutFrame>) {
        match self.tail() {
            Some(tail) => {
                let mut header = self.message;
                header.payload = Bytes::new();
                header.payload_follows = true;
                let tail = OutFrame::new(GossipMessage::new(), Some(tail));
                (OutFrame::from(header), Some(tail))
            }
            None => (OutFrame::new(self.message, self.encoded), None),
        }
    }
}

fn serialize(frame: &OutFrame, out: &mut GrpcSlice) -> grpcio::Result<()> {
    match &frame.encoded {
        // A tail goes alone only as the second piece (no hash of its own); a frame that still
        // names its message is encoded whole, so a tail never stands in for one.
        Some(encoded) if !encoded.is_tail() || frame.message.hash.is_empty() => {
            *out = encoded.grpc_slice();
            Ok(())
        }
        _ => grpcio::pb_ser(&frame.message, out),
    }
}

fn deserialize(reader: MessageReader) -> grpcio::Result<OutFrame> {
    grpcio::pb_de::<GossipMessage>(reader).map(OutFrame::from)
}

/// Encodes and decodes `T` with protobuf, as generated code does.
pub(crate) const fn protobuf_marshaller<T: protobuf::Message>() -> Marshaller<T> {
    Marshaller {
        ser: grpcio::pb_ser,
        de: grpcio::pb_de,
    }
}

/// A duplex method of the Gossip service, its requests through `requests`, its responses
/// through protobuf.
pub(crate) const fn duplex<Req, Resp: protobuf::Message>(
    name: &'static str,
    requests: Marshaller<Req>,
) -> Method<Req, Resp> {
    Method {
        ty: MethodType::Duplex,
        name,
        req_mar: requests,
        resp_mar: protobuf_marshaller(),
    }
}

/// `gossip_rpc.Gossip/MessageStream` as our clients call it: requests are [`OutFrame`]s, the
/// (unused) responses `GossipMessage`s as generated.
pub(crate) const MESSAGE_STREAM: Method<OutFrame, GossipMessage> = duplex(
    "/gossip_rpc.Gossip/MessageStream",
    Marshaller {
        ser: serialize,
        de: deserialize,
    },
);

/// A frame's bytes on the wire, for the in-memory transport (which carries bytes, as gRPC
/// does, so that both paths decode what was encoded).
pub(crate) trait Encode {
    /// The encoded frame.
    fn to_wire(&self) -> protobuf::ProtobufResult<Bytes>;
}

impl Encode for GossipMessage {
    fn to_wire(&self) -> protobuf::ProtobufResult<Bytes> {
        self.write_to_bytes().map(Bytes::from)
    }
}

impl Encode for GossipACK {
    fn to_wire(&self) -> protobuf::ProtobufResult<Bytes> {
        self.write_to_bytes().map(Bytes::from)
    }
}

impl Encode for OutFrame {
    fn to_wire(&self) -> protobuf::ProtobufResult<Bytes> {
        match &self.encoded {
            Some(encoded) if !encoded.is_tail() || self.message.hash.is_empty() => {
                Ok(encoded.to_bytes())
            }
            _ => self.message.to_wire(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::payload::PayloadBuf;

    fn decoded(frame: &OutFrame) -> GossipMessage {
        GossipMessage::parse_from_carllerche_bytes(&frame.to_wire().unwrap()).unwrap()
    }

    #[test]
    fn an_encoded_frame_goes_out_as_it_is_and_a_plain_one_through_protobuf() {
        let framed = PayloadBuf::from(&[1u8, 2, 3][..]).into_frame("h", "a");
        let mut message = GossipMessage::new();
        message.hash = "h".into();
        message.from_hash = "a".into();
        message.payload = framed.payload();
        let plain = OutFrame::from(message.clone());
        let encoded = OutFrame::new(message.clone(), Some(framed.clone()));
        let mut slice = GrpcSlice::default();
        serialize(&encoded, &mut slice).unwrap();
        // The very bytes of the frame: a reference, not a copy.
        assert_eq!(slice.as_slice().as_ptr(), framed.as_slice().as_ptr());
        serialize(&plain, &mut slice).unwrap();
        assert_eq!(slice.as_slice(), &message.write_to_bytes().unwrap()[..]);
        assert_eq!(decoded(&encoded).payload, decoded(&plain).payload);
        assert_eq!(decoded(&encoded).hash, "h");
    }

    #[test]
    fn a_shared_payload_goes_as_a_header_then_the_same_tail_for_every_message() {
        let shared = crate::SharedPayload::from(PayloadBuf::from(&[9u8; 1000][..]));
        let frame_of = |hash: &str| {
            let mut message = GossipMessage::new();
            message.hash = hash.into();
            message.from_hash = "a".into();
            message.payload = shared.payload();
            OutFrame::new(message, Some(shared.frame().clone()))
        };
        let mut tails = Vec::new();
        for hash in ["m1", "m2"] {
            let (header, tail) = frame_of(hash).into_pieces();
            let tail = tail.expect("a tail follows");
            let header = decoded(&header);
            assert_eq!(
                (header.hash.as_str(), header.from_hash.as_str()),
                (hash, "a")
            );
            assert!(header.payload_follows && header.payload.is_empty());
            let mut slice = GrpcSlice::default();
            serialize(&tail, &mut slice).unwrap();
            assert_eq!(decoded(&tail).payload, shared.payload());
            tails.push(slice.as_slice().as_ptr());
        }
        // Both messages send the one encoded payload: no copy.
        assert_eq!(tails[0], tails[1]);
        assert_eq!(tails[0], shared.frame().as_slice().as_ptr());
        // Not split (never by our writers, but if so), a tail is no message: it is encoded whole.
        let mut slice = GrpcSlice::default();
        serialize(&frame_of("m3"), &mut slice).unwrap();
        let whole = GossipMessage::parse_from_bytes(slice.as_slice()).unwrap();
        assert_eq!(
            (whole.hash.as_str(), &whole.payload),
            ("m3", &shared.payload())
        );
        assert!(!whole.payload_follows);
        // A frame of its own goes whole, in one piece.
        let own = PayloadBuf::from(&[1u8][..]).into_frame("h", "a");
        let frame = OutFrame::new(GossipMessage::new(), Some(own));
        assert!(frame.into_pieces().1.is_none());
    }

    #[test]
    fn frames_that_share_a_lazy_tail_send_one_encoding_of_it() {
        let payload = Bytes::from(vec![8u8; 2000]);
        let lazy = Arc::new(LazyTail::default());
        let frame_of = |hash: &str| {
            let mut message = GossipMessage::new();
            message.hash = hash.into();
            message.payload = payload.clone();
            let mut frame = OutFrame::from(message);
            frame.lazy_tail = Some(lazy.clone());
            frame
        };
        let mut sent = Vec::new();
        for hash in ["b1", "b2"] {
            let (header, tail) = frame_of(hash).into_pieces();
            assert!(decoded(&header).payload_follows);
            let mut slice = GrpcSlice::default();
            serialize(&tail.expect("a tail"), &mut slice).unwrap();
            assert_eq!(
                &GossipMessage::parse_from_bytes(slice.as_slice())
                    .unwrap()
                    .payload,
                &payload
            );
            sent.push(slice.as_slice().as_ptr());
        }
        assert_eq!(sent[0], sent[1]);
        // Carrying others, it is one gRPC message again.
        let mut carrier = frame_of("b3");
        carrier.carry(OutFrame::from(GossipMessage::new()));
        let (whole, tail) = carrier.into_pieces();
        assert!(tail.is_none() && !decoded(&whole).payload_follows);
    }

    #[test]
    fn a_frame_that_carries_others_is_encoded_again() {
        let framed = PayloadBuf::from(&b"x"[..]).into_frame("h1", "a");
        let mut head = OutFrame::new(GossipMessage::new(), Some(framed));
        head.carry(OutFrame::from(GossipMessage::new()));
        assert!(head.encoded.is_none());
        assert_eq!(head.message.batch.len(), 1);
    }
}
