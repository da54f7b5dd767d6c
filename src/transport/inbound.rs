//! What our servers' MessageStream readers receive: large payloads read into buffers that can
//! be sent on as they are.
//!
//! gRPC's generated server decodes a `GossipMessage` with protobuf, which copies the payload out
//! of gRPC's slices into a `Bytes` of its own. That copy is the one a contiguous payload needs;
//! but a relay that forwards a broadcast payload then copies it again into every frame it sends
//! on. Our MessageStream method ([`MESSAGE_STREAM`]) decodes a gRPC message of more than 64 KiB
//! itself: its payload goes into a buffer with room in front ([`PayloadBuf`]), framed in place
//! as a tail ([`SharedPayload`]), and everything else is decoded by protobuf as before. The
//! payload is the same bytes, copied once as before; the relay forwards the tail itself (see
//! `crate::node::core`, broadcast tails). Smaller messages, which share gRPC messages with
//! others anyway, are decoded by protobuf alone.

use std::io::{self, BufRead};

use grpcio::{Marshaller, MessageReader, Method};
use protobuf::Message as _;

use crate::payload::{EncodedFrame, PayloadBuf, SharedPayload, FRAME_ALONE_MIN};
use crate::proto::{GossipACK, GossipMessage};

use super::frame::{duplex, protobuf_marshaller};

/// A message frame as our servers receive it: the message, and for a payload read into a tail,
/// that tail (the message's `payload` is a view into it).
#[derive(Debug, Default)]
pub(crate) struct InMessage {
    pub(crate) message: GossipMessage,
    pub(crate) tail: Option<EncodedFrame>,
}

impl From<GossipMessage> for InMessage {
    fn from(message: GossipMessage) -> InMessage {
        InMessage {
            message,
            tail: None,
        }
    }
}

/// `GossipMessage.payload`'s field number.
const PAYLOAD_FIELD: u64 = 3;

/// A length-delimited field other than the payload up to this size is copied aside with the
/// ids; a larger one (a batch of small messages, most likely) means the message is not one
/// large payload, and protobuf reads the rest of it straight from gRPC's slices, as before.
const SMALL_FIELD: usize = 4096;

fn codec(what: impl std::fmt::Display) -> grpcio::Error {
    grpcio::Error::Codec(format!("malformed message frame: {what}").into())
}

/// Reads a varint, appending its bytes to `raw`; `None` at the end of the input (before its
/// first byte).
fn varint(reader: &mut impl BufRead, raw: &mut Vec<u8>) -> io::Result<Option<u64>> {
    let mut value = 0u64;
    for i in 0..10 {
        let byte = match reader.fill_buf()?.first() {
            Some(b) => *b,
            None if i == 0 => return Ok(None),
            None => return Err(io::ErrorKind::UnexpectedEof.into()),
        };
        reader.consume(1);
        raw.push(byte);
        value |= u64::from(byte & 0x7f) << (7 * i);
        if byte & 0x80 == 0 {
            return Ok(Some(value));
        }
    }
    Err(io::Error::new(
        io::ErrorKind::InvalidData,
        "varint too long",
    ))
}

/// Hands the next `len` bytes of `reader` to `put`, slice by slice, as gRPC holds them.
fn take(reader: &mut impl BufRead, mut len: usize, mut put: impl FnMut(&[u8])) -> io::Result<()> {
    while len > 0 {
        let chunk = reader.fill_buf()?;
        if chunk.is_empty() {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        let n = chunk.len().min(len);
        put(&chunk[..n]);
        reader.consume(n);
        len -= n;
    }
    Ok(())
}

/// Decodes a whole gRPC message of `len` bytes: every field but the payload into a small buffer
/// that protobuf decodes, the payload into a tail of its own.
fn decode_with_tail(reader: &mut impl BufRead, len: usize) -> grpcio::Result<InMessage> {
    let mut rest = Vec::new();
    let mut payload: Option<PayloadBuf> = None;
    let mut scratch = Vec::new();
    loop {
        let start = rest.len();
        let Some(key) = varint(reader, &mut rest).map_err(codec)? else {
            break;
        };
        let (field, wire) = (key >> 3, key & 7);
        match wire {
            0 => {
                varint(reader, &mut rest)
                    .map_err(codec)?
                    .ok_or_else(|| codec("truncated varint"))?;
            }
            1 | 5 => {
                let n = if wire == 1 { 8 } else { 4 };
                take(reader, n, |b| rest.extend_from_slice(b)).map_err(codec)?;
            }
            2 => {
                scratch.clear();
                let n = varint(reader, &mut scratch)
                    .map_err(codec)?
                    .ok_or_else(|| codec("truncated length"))?;
                // No field is longer than the message it is in.
                let n = usize::try_from(n)
                    .ok()
                    .filter(|n| *n <= len)
                    .ok_or_else(|| codec("a field longer than its message"))?;
                if field == PAYLOAD_FIELD {
                    rest.truncate(start);
                    let mut buf = PayloadBuf::with_capacity(n);
                    take(reader, n, |b| buf.extend_from_slice(b)).map_err(codec)?;
                    // A repeated payload field: the last one counts, as for protobuf.
                    payload = Some(buf);
                } else if n <= SMALL_FIELD {
                    rest.extend_from_slice(&scratch);
                    take(reader, n, |b| rest.extend_from_slice(b)).map_err(codec)?;
                } else {
                    // What came before, then this field's key and length and all that
                    // follows, merged as protobuf merges concatenated messages.
                    let mut message =
                        GossipMessage::parse_from_bytes(&rest[..start]).map_err(codec)?;
                    let mut pending = rest.split_off(start);
                    pending.extend_from_slice(&scratch);
                    let mut remainder = io::Read::chain(&pending[..], reader);
                    let mut input =
                        protobuf::CodedInputStream::from_buffered_reader(&mut remainder);
                    message.merge_from(&mut input).map_err(codec)?;
                    // A payload read earlier stands unless a later one replaced it.
                    let payload = payload.filter(|_| message.payload.is_empty());
                    return Ok(with_tail(message, payload));
                }
            }
            other => return Err(codec(format!("wire type {other}"))),
        }
    }
    let message = GossipMessage::parse_from_bytes(&rest).map_err(codec)?;
    Ok(with_tail(message, payload))
}

/// `message` with the payload read into `payload`, if any, as its payload, and as its tail
/// where it is large enough to travel alone (a smaller one is batched when sent on).
fn with_tail(mut message: GossipMessage, payload: Option<PayloadBuf>) -> InMessage {
    let tail = match payload {
        Some(buf) if buf.len() > FRAME_ALONE_MIN => {
            let shared = SharedPayload::from(buf);
            message.payload = shared.payload();
            Some(shared.frame().clone())
        }
        Some(buf) => {
            message.payload = buf.into_bytes();
            None
        }
        None => None,
    };
    InMessage { message, tail }
}

/// Decodes `bytes` as a large message is decoded (whatever their size): the fuzz harness
/// holds it against protobuf's decoding.
#[cfg(any(test, feature = "fuzzing"))]
pub(crate) fn decode(bytes: &[u8]) -> grpcio::Result<InMessage> {
    decode_with_tail(&mut &bytes[..], bytes.len())
}

fn deserialize(mut reader: MessageReader) -> grpcio::Result<InMessage> {
    let len = reader.len();
    if len <= FRAME_ALONE_MIN {
        return grpcio::pb_de::<GossipMessage>(reader).map(InMessage::from);
    }
    decode_with_tail(&mut reader, len)
}

fn serialize(message: &InMessage, out: &mut grpcio::GrpcSlice) -> grpcio::Result<()> {
    grpcio::pb_ser(&message.message, out)
}

/// `gossip_rpc.Gossip/MessageStream` as our servers take it: requests are [`InMessage`]s, the
/// (unused) responses `GossipMessage`s as generated.
pub(crate) const MESSAGE_STREAM: Method<InMessage, GossipMessage> = duplex(
    "/gossip_rpc.Gossip/MessageStream",
    Marshaller {
        ser: serialize,
        de: deserialize,
    },
);

/// `gossip_rpc.Gossip/AckStream`, as generated.
pub(crate) const ACK_STREAM: Method<GossipACK, GossipACK> =
    duplex("/gossip_rpc.Gossip/AckStream", protobuf_marshaller());

/// `gossip_rpc.Gossip/Stream` (the original's single stream), as generated.
pub(crate) const SINGLE_STREAM: Method<GossipMessage, GossipACK> =
    duplex("/gossip_rpc.Gossip/Stream", protobuf_marshaller());

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use proptest::prelude::*;

    fn message(hash: &str, payload: Vec<u8>) -> GossipMessage {
        let mut m = GossipMessage::new();
        m.hash = hash.into();
        m.from_hash = "peer".into();
        m.payload = Bytes::from(payload);
        m
    }

    #[test]
    fn a_large_payload_arrives_in_a_tail_and_the_rest_as_protobuf_reads_it() {
        let mut m = message("h", (0..200_000).map(|i| i as u8).collect());
        m.kind = crate::proto::FrameKind::BROADCAST;
        m.origin = "o".into();
        m.hops = 3;
        m.total_bytes = 0;
        let bytes = m.write_to_bytes().unwrap();
        let got = decode(&bytes).unwrap();
        assert_eq!(got.message, m);
        let tail = got.tail.expect("a tail");
        assert!(tail.is_tail() && tail.holds(&got.message.payload));
        // The tail is itself a message holding the payload alone.
        let alone = GossipMessage::parse_from_bytes(tail.as_slice()).unwrap();
        assert_eq!(alone.payload, m.payload);
    }

    #[test]
    fn frames_with_fields_in_any_order_or_repeated_decode_as_protobuf_decodes_them() {
        let a = message("a", vec![1; 70_000]).write_to_bytes().unwrap();
        let b = message("b", vec![2; 80_000]).write_to_bytes().unwrap();
        // Concatenated messages merge: the last scalar and the last payload win.
        let both = [a.clone(), b].concat();
        let got = decode(&both).unwrap();
        assert_eq!(got.message, GossipMessage::parse_from_bytes(&both).unwrap());
        assert_eq!(got.message.payload.len(), 80_000);
        // No payload at all: no tail.
        let plain = message("c", Vec::new()).write_to_bytes().unwrap();
        assert!(decode(&plain).unwrap().tail.is_none());
    }

    #[test]
    fn a_batch_of_small_messages_is_read_by_protobuf_from_where_it_starts() {
        let mut carrier = message("a", vec![1; 10]);
        for i in 0..100 {
            carrier
                .batch
                .push(message(&format!("b{i}"), vec![i as u8; 1000]));
        }
        carrier.kind = crate::proto::FrameKind::BROADCAST;
        let bytes = carrier.write_to_bytes().unwrap();
        assert!(bytes.len() > FRAME_ALONE_MIN);
        let got = decode(&bytes).unwrap();
        assert_eq!(got.message, carrier);
        // A large payload before the batch keeps its tail.
        let mut big = message("c", vec![2; 70_000]);
        big.batch.push(message("d", vec![3; 5000]));
        let got = decode(&big.write_to_bytes().unwrap()).unwrap();
        assert_eq!(got.message, big);
        assert!(got.tail.is_some_and(|t| t.holds(&got.message.payload)));
    }

    #[test]
    fn truncated_or_impossible_frames_are_refused() {
        let bytes = message("a", vec![1; 70_000]).write_to_bytes().unwrap();
        for cut in [1, 2, 10, bytes.len() - 1] {
            assert!(decode(&bytes[..cut]).is_err(), "cut at {cut}");
        }
        // A payload longer than the message; a group (wire type 3); an endless varint.
        assert!(decode(&[0x1a, 0xff, 0xff, 0xff, 0x0f, 1, 2]).is_err());
        assert!(decode(&[0x1b]).is_err());
        assert!(decode(&[0x08; 12]).is_err());
    }

    proptest! {
        #[test]
        fn messages_of_any_shape_decode_as_protobuf_decodes_them(
            payloads in proptest::collection::vec(0usize..9000, 1..4),
            batch in proptest::collection::vec(0usize..6000, 0..4),
            order in any::<bool>(),
        ) {
            // One or more messages concatenated (protobuf merges them), payloads and batch
            // items on both sides of SMALL_FIELD.
            let mut bytes = Vec::new();
            for (i, len) in payloads.iter().enumerate() {
                let mut m = message(&format!("m{i}"), vec![i as u8; *len]);
                for (j, item) in batch.iter().enumerate() {
                    m.batch.push(message(&format!("i{j}"), vec![j as u8; *item]));
                }
                if order {
                    m.hops = i as u32;
                }
                bytes.extend(m.write_to_bytes().unwrap());
            }
            let expected = GossipMessage::parse_from_bytes(&bytes).unwrap();
            let got = decode(&bytes).unwrap();
            prop_assert_eq!(&got.message, &expected);
            if let Some(tail) = got.tail {
                prop_assert!(tail.holds(&got.message.payload));
            }
        }

        #[test]
        fn any_bytes_decode_as_protobuf_decodes_them_or_are_refused(
            bytes in proptest::collection::vec(any::<u8>(), 0..300),
            payload in 0usize..3,
        ) {
            // Some inputs carry a valid payload field of a few bytes after the noise.
            let mut input = bytes.clone();
            if payload > 0 {
                input.extend_from_slice(&[0x1a, payload as u8]);
                input.extend(std::iter::repeat_n(7u8, payload));
            }
            let ours = decode(&input);
            match GossipMessage::parse_from_bytes(&input) {
                Ok(expected) => {
                    // Groups protobuf skips in unknown fields are the one thing we refuse.
                    if let Ok(got) = ours {
                        prop_assert_eq!(&got.message.payload, &expected.payload);
                        let mut got = got.message;
                        let mut expected = expected;
                        got.payload = Bytes::new();
                        expected.payload = Bytes::new();
                        prop_assert_eq!(got.write_to_bytes().unwrap(), expected.write_to_bytes().unwrap());
                    }
                }
                Err(_) => prop_assert!(ours.is_err()),
            }
        }
    }
}
