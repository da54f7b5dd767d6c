//! What our MessageStream writers send: a frame as a protobuf message, or already encoded.
//!
//! gRPC's generated client encodes every request with protobuf into a fresh slice, a copy of
//! the payload. Our outbound MessageStream is opened with a method of our own instead
//! ([`MESSAGE_STREAM`]): its serializer hands gRPC the frame's own slice when the message was
//! encoded beforehand (see [`crate::payload`]), a reference count and no copy, and encodes
//! with protobuf as before otherwise. On the wire both are the same `GossipMessage`, so the
//! peer (ours or an original node) reads them alike.

use bytes::Bytes;
use grpcio::{GrpcSlice, Marshaller, MessageReader, Method, MethodType};
use protobuf::Message as _;

use crate::payload::EncodedFrame;
use crate::proto::{GossipACK, GossipMessage};

use super::batch::Batchable;

/// An outbound MessageStream frame. `message` is always complete (the node reads its hash and
/// sizes); `encoded`, when present, is the same frame as bytes, which the writer sends instead
/// of encoding `message`.
#[derive(Debug)]
pub(crate) struct OutFrame {
    pub(crate) message: GossipMessage,
    pub(crate) encoded: Option<EncodedFrame>,
}

impl From<GossipMessage> for OutFrame {
    fn from(message: GossipMessage) -> OutFrame {
        OutFrame {
            message,
            encoded: None,
        }
    }
}

impl Batchable for OutFrame {
    fn cost(&self) -> usize {
        self.message.cost()
    }

    fn carry(&mut self, item: Self) {
        // A frame that carries others is no longer the one that was encoded.
        self.encoded = None;
        self.message.carry(item.message);
    }

    fn weight(&self) -> (usize, usize) {
        self.message.weight()
    }
}

fn serialize(frame: &OutFrame, out: &mut GrpcSlice) -> grpcio::Result<()> {
    match &frame.encoded {
        Some(encoded) => {
            *out = encoded.grpc_slice();
            Ok(())
        }
        None => grpcio::pb_ser(&frame.message, out),
    }
}

fn deserialize(reader: MessageReader) -> grpcio::Result<OutFrame> {
    grpcio::pb_de::<GossipMessage>(reader).map(OutFrame::from)
}

/// `gossip_rpc.Gossip/MessageStream` as our clients call it: requests are [`OutFrame`]s, the
/// (unused) responses `GossipMessage`s as generated.
pub(crate) const MESSAGE_STREAM: Method<OutFrame, GossipMessage> = Method {
    ty: MethodType::Duplex,
    name: "/gossip_rpc.Gossip/MessageStream",
    req_mar: Marshaller {
        ser: serialize,
        de: deserialize,
    },
    resp_mar: Marshaller {
        ser: grpcio::pb_ser,
        de: grpcio::pb_de,
    },
};

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
            Some(encoded) => Ok(encoded.to_bytes()),
            None => self.message.to_wire(),
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
        let encoded = OutFrame {
            message: message.clone(),
            encoded: Some(framed.clone()),
        };
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
    fn a_frame_that_carries_others_is_encoded_again() {
        let framed = PayloadBuf::from(&b"x"[..]).into_frame("h1", "a");
        let mut head = OutFrame {
            message: GossipMessage::new(),
            encoded: Some(framed),
        };
        head.carry(OutFrame::from(GossipMessage::new()));
        assert!(head.encoded.is_none());
        assert_eq!(head.message.batch.len(), 1);
    }
}
