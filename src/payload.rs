//! Payloads that become wire frames without a copy.
//!
//! A MessageStream frame is one contiguous gRPC message: protobuf's header (the hash, the
//! sender, the payload's tag and length) and then the payload. grpcio hands a `Vec<u8>` whose
//! length equals its capacity to gRPC without copying it (`GrpcSlice::from`), so a payload
//! written behind enough free room for that header becomes a frame in place: the header is
//! written right-aligned into the room, and whatever room is left over in front is filled so
//! the whole buffer stays one valid message (see [`EncodedFrame`]). [`PayloadBuf`] is that
//! buffer; [`Node::message`](crate::Node::message) turns one into a [`Message`](crate::Message).
//!
//! The frame stays with the message until it completes, so a retransmission resends it (a
//! reference count) instead of encoding it again. A payload given as plain `Bytes` is encoded
//! by protobuf in the writer thread, one copy per transmission, as are payloads of 64 KiB or
//! less, which share gRPC messages with others.
//!
//! A frame that names its message serves that message only. A [`SharedPayload`] is framed for
//! none: the room in front takes only the payload's tag and length, so it decodes as a
//! `GossipMessage` holding the payload alone (a tail), and any number of messages send it
//! after a header of their own (`payload_follows`, see `crate::transport::frame`).

use std::io;
use std::ops::{Deref, DerefMut, Range};

use bytes::Bytes;
use grpcio::GrpcSlice;

/// The room a [`PayloadBuf`] keeps in front of its payload for the frame header: enough for
/// the hash and the sender id of up to about 60 bytes each. A frame whose ids need more is
/// still sent, with one copy.
pub const HEADROOM: usize = 128;

/// Payloads larger than this travel alone in a gRPC message (never batched with others), so
/// only those are framed in place; smaller ones are encoded together with others anyway.
pub(crate) const FRAME_ALONE_MIN: usize = 64 * 1024;

/// `GossipMessage` field numbers and wire types, as `proto/gossip.proto` defines them.
const TAG_HASH: u8 = (1 << 3) | 2;
const TAG_FROM: u8 = (2 << 3) | 2;
const TAG_PAYLOAD: u8 = (3 << 3) | 2;
/// Field 24 (`padding`), length-delimited: a two-byte tag.
const TAG_PADDING: [u8; 2] = [(24 << 3 | 2) as u8 | 0x80, (24 << 3 | 2) >> 7];

/// A payload buffer with room for the frame header in front, for sends without a copy.
///
/// Write the payload into it (it derefs to the payload bytes, implements [`io::Write`], and
/// has [`extend_from_slice`](PayloadBuf::extend_from_slice) and
/// [`resize`](PayloadBuf::resize)), then make a message of it with
/// [`Node::message`](crate::Node::message). Allocate it with the payload's final size where
/// you know it: a buffer whose capacity exceeds its length is shrunk when it becomes a frame
/// (a `realloc`, which glibc does in place when shrinking).
///
/// ```
/// use std::io::Write;
/// let mut buf = grpc_gossip::PayloadBuf::with_capacity(11);
/// buf.write_all(b"hello world").unwrap();
/// assert_eq!(&buf[..], b"hello world");
/// ```
#[derive(Clone, PartialEq, Eq)]
pub struct PayloadBuf {
    /// `HEADROOM` zero bytes, then the payload.
    buf: Vec<u8>,
}

impl std::fmt::Debug for PayloadBuf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PayloadBuf")
            .field("len", &self.len())
            .finish_non_exhaustive()
    }
}

impl Default for PayloadBuf {
    fn default() -> Self {
        PayloadBuf::with_capacity(0)
    }
}

impl PayloadBuf {
    /// An empty payload with room for `capacity` bytes (plus the header room) allocated.
    pub fn with_capacity(capacity: usize) -> PayloadBuf {
        let mut buf = Vec::with_capacity(HEADROOM.saturating_add(capacity));
        buf.resize(HEADROOM, 0);
        PayloadBuf { buf }
    }

    /// An empty payload.
    pub fn new() -> PayloadBuf {
        PayloadBuf::default()
    }

    /// The payload's length.
    pub fn len(&self) -> usize {
        self.buf.len() - HEADROOM
    }

    /// Whether the payload is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Appends `bytes` to the payload.
    pub fn extend_from_slice(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// Resizes the payload to `len` bytes, filling new ones with `value`.
    pub fn resize(&mut self, len: usize, value: u8) {
        self.buf.resize(HEADROOM.saturating_add(len), value);
    }

    /// Empties the payload, keeping its allocation.
    pub fn clear(&mut self) {
        self.buf.truncate(HEADROOM);
    }

    /// The payload as `Bytes`, without a copy (the room in front stays allocated with it).
    pub fn into_bytes(self) -> Bytes {
        Bytes::from(self.buf).slice(HEADROOM..)
    }

    /// The frame of message `hash` from `from` with this payload: written in place when the
    /// header fits the room in front, else copied into a new buffer.
    pub(crate) fn into_frame(self, hash: &str, from: &str) -> EncodedFrame {
        let mut buf = self.buf;
        let payload_len = buf.len() - HEADROOM;
        match filler_for(HEADROOM, hash, from, payload_len) {
            Some(filler) => {
                let layout = fill_header(&mut buf[..HEADROOM], hash, from, payload_len, filler);
                buf.shrink_to_fit();
                EncodedFrame::from_vec(buf, layout)
            }
            None => EncodedFrame::encode(hash, from, &buf[HEADROOM..]),
        }
    }
}

/// A payload encoded once, to be sent in many messages without a copy.
///
/// A [`PayloadBuf`] frames its payload for one message (the header names the hash). A
/// `SharedPayload` frames it for none: on the wire it is the second of two gRPC messages, after
/// each message's own small header (`payload_follows`, feature `tail`). Sending one buffer to
/// many neighbours, or many times, then moves it from memory to gRPC by reference counts only;
/// a plain `Bytes` payload shared the same way is copied into every frame.
///
/// Make messages of it with [`Message::shared`](crate::Message::shared). A peer that did not
/// announce the `tail` feature (an original node) gets the usual one-frame encoding, one copy
/// per transmission, as do payloads of 64 KiB or less (which share gRPC messages with others)
/// and the chunks of messages too large to go whole.
///
/// ```
/// let mut buf = grpc_gossip::PayloadBuf::with_capacity(100_000);
/// buf.resize(100_000, 7);
/// let shared = grpc_gossip::SharedPayload::from(buf);
/// let a = grpc_gossip::Message::shared("m-1", &shared);
/// let b = grpc_gossip::Message::shared("m-2", &shared);
/// // The same bytes in memory, not copies.
/// assert_eq!(a.payload.as_ptr(), b.payload.as_ptr());
/// assert_eq!(shared.len(), 100_000);
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SharedPayload {
    /// The payload as a `GossipMessage` holding only it (`is_tail`).
    frame: EncodedFrame,
    /// The payload, a view into `frame` made once (each clone is a reference count).
    payload: Bytes,
}

impl SharedPayload {
    fn new(frame: EncodedFrame) -> SharedPayload {
        SharedPayload {
            payload: frame.payload(),
            frame,
        }
    }

    /// The payload, a view into the encoded frame (no copy).
    pub fn payload(&self) -> Bytes {
        self.payload.clone()
    }

    /// The payload's length.
    pub fn len(&self) -> usize {
        self.frame.layout.payload.len()
    }

    /// Whether the payload is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The encoded frame every message carrying this payload sends after its header.
    pub(crate) fn frame(&self) -> &EncodedFrame {
        &self.frame
    }
}

/// One payload's tail, encoded by the first writer that needs it and shared by the rest: a
/// broadcast payload forwarded to several neighbours is copied once, in a writer thread (not
/// once per neighbour, and never on the manager thread that ACKs wait on).
#[derive(Debug, Default)]
pub(crate) struct LazyTail(std::sync::OnceLock<EncodedFrame>);

impl LazyTail {
    /// A tail encoded already (an origin's [`SharedPayload`]).
    pub(crate) fn ready(frame: EncodedFrame) -> LazyTail {
        LazyTail(std::sync::OnceLock::from(frame))
    }

    /// The tail of `payload`, encoded now if nobody has yet. Every caller passes the same
    /// payload (the cache that hands this out keys it by the payload's buffer); one whose
    /// length does not match gets `None`, and is encoded whole.
    pub(crate) fn get_or_encode(&self, payload: &[u8]) -> Option<&EncodedFrame> {
        let tail = self.0.get_or_init(|| EncodedFrame::encode("", "", payload));
        (tail.layout.payload.len() == payload.len()).then_some(tail)
    }
}

impl From<PayloadBuf> for SharedPayload {
    /// Frames the buffer in place: its room in front takes the payload's tag and length.
    fn from(buf: PayloadBuf) -> SharedPayload {
        SharedPayload::new(buf.into_frame("", ""))
    }
}

impl From<&[u8]> for SharedPayload {
    /// A shared payload holding a copy of `bytes` (the only copy it is ever sent with).
    fn from(bytes: &[u8]) -> SharedPayload {
        SharedPayload::new(EncodedFrame::encode("", "", bytes))
    }
}

impl Deref for PayloadBuf {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        &self.buf[HEADROOM..]
    }
}

impl DerefMut for PayloadBuf {
    fn deref_mut(&mut self) -> &mut [u8] {
        &mut self.buf[HEADROOM..]
    }
}

impl io::Write for PayloadBuf {
    fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
        self.buf.extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl From<&[u8]> for PayloadBuf {
    /// A payload buffer holding a copy of `bytes`.
    fn from(bytes: &[u8]) -> PayloadBuf {
        let mut buf = PayloadBuf::with_capacity(bytes.len());
        buf.extend_from_slice(bytes);
        buf
    }
}

/// Where the parts of a frame's header lie in it.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Layout {
    hash: Range<usize>,
    from: Range<usize>,
    payload: Range<usize>,
}

/// A whole message's MessageStream frame, encoded (opaque outside this crate): one gRPC slice whose clones are reference
/// counts, so every transmission of the message sends the same bytes without copying them.
///
/// It decodes as the `GossipMessage { hash, from_hash, payload }` it was made from, for any
/// protobuf decoder: the header may start with a `padding` field (number 24, which original
/// nodes skip as unknown) or carry the payload's length as a varint one or two bytes longer
/// than needed, which the protobuf encoding allows.
#[derive(Clone)]
pub struct EncodedFrame {
    slice: GrpcSlice,
    layout: Layout,
}

impl std::fmt::Debug for EncodedFrame {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EncodedFrame")
            .field("len", &self.slice.len())
            .field("payload", &self.layout.payload)
            .finish()
    }
}

impl PartialEq for EncodedFrame {
    fn eq(&self, other: &EncodedFrame) -> bool {
        self.as_slice() == other.as_slice()
    }
}

impl Eq for EncodedFrame {}

/// Keeps a gRPC slice alive under a `Bytes` view of it.
struct SliceOwner(GrpcSlice);

impl AsRef<[u8]> for SliceOwner {
    fn as_ref(&self) -> &[u8] {
        self.0.as_slice()
    }
}

impl EncodedFrame {
    /// Encodes the frame of `hash` from `from` carrying a copy of `payload`.
    pub(crate) fn encode(hash: &str, from: &str, payload: &[u8]) -> EncodedFrame {
        let header_len = header_len(hash, from, payload.len());
        let mut buf = Vec::with_capacity(header_len + payload.len());
        buf.resize(header_len, 0);
        let layout = fill_header(&mut buf, hash, from, payload.len(), Filler::None);
        buf.extend_from_slice(payload);
        EncodedFrame::from_vec(buf, layout)
    }

    fn from_vec(buf: Vec<u8>, layout: Layout) -> EncodedFrame {
        // With `len == capacity` gRPC takes the allocation over; otherwise it copies.
        EncodedFrame {
            slice: GrpcSlice::from(buf),
            layout,
        }
    }

    /// The encoded size in bytes.
    pub(crate) fn len(&self) -> usize {
        self.slice.len()
    }

    /// The encoded bytes.
    pub(crate) fn as_slice(&self) -> &[u8] {
        self.slice.as_slice()
    }

    /// The encoded bytes as `Bytes`, shared.
    pub(crate) fn to_bytes(&self) -> Bytes {
        Bytes::from_owner(SliceOwner(self.slice.clone()))
    }

    /// The gRPC slice, shared.
    pub(crate) fn grpc_slice(&self) -> GrpcSlice {
        self.slice.clone()
    }

    /// The payload, as a view into the frame.
    pub(crate) fn payload(&self) -> Bytes {
        self.to_bytes().slice(self.layout.payload.clone())
    }

    /// Whether `payload` is this frame's own payload (the same bytes in memory, not a copy).
    pub(crate) fn holds(&self, payload: &Bytes) -> bool {
        let own = &self.as_slice()[self.layout.payload.clone()];
        own.as_ptr() == payload.as_ptr() && own.len() == payload.len()
    }

    /// Whether this frame holds a payload alone, for any message: a [`SharedPayload`]'s, sent
    /// after a header that says `payload_follows`.
    pub(crate) fn is_tail(&self) -> bool {
        self.layout.hash.is_empty() && self.layout.from.is_empty()
    }

    /// Whether this is the frame of message `hash` sent by `from`.
    pub(crate) fn is_for(&self, hash: &str, from: &str) -> bool {
        let bytes = self.as_slice();
        &bytes[self.layout.hash.clone()] == hash.as_bytes()
            && &bytes[self.layout.from.clone()] == from.as_bytes()
    }
}

fn varint_len(mut v: u64) -> usize {
    let mut n = 1;
    while v >= 0x80 {
        v >>= 7;
        n += 1;
    }
    n
}

/// The length of a string field with `len` bytes of content (0 when empty: proto3 omits it).
fn string_field_len(len: usize) -> usize {
    match len {
        0 => 0,
        n => 1 + varint_len(n as u64) + n,
    }
}

/// The header's size with no filler: the two ids and the payload's tag and length.
fn header_len(hash: &str, from: &str, payload_len: usize) -> usize {
    string_field_len(hash.len()) + string_field_len(from.len()) + 1 + varint_len(payload_len as u64)
}

/// Writes `v` as a varint of exactly `width` bytes (at least its minimal length, at most 10).
fn put_varint(out: &mut [u8], mut v: u64, width: usize) -> usize {
    for byte in out.iter_mut().take(width - 1) {
        *byte = (v as u8 & 0x7f) | 0x80;
        v >>= 7;
    }
    out[width - 1] = v as u8;
    width
}

/// What fills a header's spare room in front of the ids.
#[derive(Clone, Copy)]
enum Filler {
    None,
    /// The payload's length varint, this many bytes longer than it needs to be (1 or 2).
    Stretch(usize),
    /// A `padding` field of this many bytes in all (at least 3: tag, length, zeros).
    Padding(usize),
}

/// How `room` bytes hold the header of a payload of `payload_len` bytes, or `None` if they
/// cannot.
fn filler_for(room: usize, hash: &str, from: &str, payload_len: usize) -> Option<Filler> {
    let spare = room.checked_sub(header_len(hash, from, payload_len))?;
    match spare {
        0 => Some(Filler::None),
        // A varint is at most 10 bytes; a payload length needs at most 5 of them.
        1 | 2 if varint_len(payload_len as u64) + spare <= 10 => Some(Filler::Stretch(spare)),
        // The padding's one-byte length holds up to 127.
        3..=130 => Some(Filler::Padding(spare)),
        _ => None,
    }
}

/// Fills all of `out` (sized for `filler`) with the header of a payload of `payload_len`
/// bytes that follows it: filler, the hash, the sender, the payload's tag and length.
fn fill_header(
    out: &mut [u8],
    hash: &str,
    from: &str,
    payload_len: usize,
    filler: Filler,
) -> Layout {
    let mut at = 0;
    let mut stretch = 0;
    match filler {
        Filler::None => {}
        Filler::Stretch(n) => stretch = n,
        Filler::Padding(n) => {
            out[..2].copy_from_slice(&TAG_PADDING);
            out[2] = (n - 3) as u8;
            out[3..n].fill(0);
            at = n;
        }
    }
    let mut string = |at: &mut usize, tag: u8, value: &str| -> Range<usize> {
        if value.is_empty() {
            return *at..*at;
        }
        out[*at] = tag;
        *at += 1;
        let width = varint_len(value.len() as u64);
        *at += put_varint(&mut out[*at..], value.len() as u64, width);
        let start = *at;
        out[start..start + value.len()].copy_from_slice(value.as_bytes());
        *at += value.len();
        start..*at
    };
    let hash_range = string(&mut at, TAG_HASH, hash);
    let from_range = string(&mut at, TAG_FROM, from);
    out[at] = TAG_PAYLOAD;
    at += 1;
    let width = varint_len(payload_len as u64) + stretch;
    at += put_varint(&mut out[at..], payload_len as u64, width);
    debug_assert_eq!(at, out.len());
    Layout {
        hash: hash_range,
        from: from_range,
        payload: at..at + payload_len,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::GossipMessage;
    use protobuf::Message as _;

    fn decode(frame: &EncodedFrame) -> GossipMessage {
        GossipMessage::parse_from_bytes(frame.as_slice()).unwrap()
    }

    #[test]
    fn a_framed_payload_decodes_as_the_message_for_every_header_size() {
        // Every amount of spare room, 0 to all of it, and ids up to more than fits.
        for hash_len in 0..=HEADROOM {
            let hash = "h".repeat(hash_len);
            for (from, payload_len) in [("", 0), ("node-7", 5), ("n", 200), ("a-b", 70_000)] {
                let payload: Vec<u8> = (0..payload_len).map(|i| i as u8).collect();
                let buf = PayloadBuf::from(&payload[..]);
                let frame = buf.into_frame(&hash, from);
                let m = decode(&frame);
                assert_eq!(m.hash, hash);
                assert_eq!(m.from_hash, from);
                assert_eq!(&m.payload[..], &payload[..]);
                assert!(m.padding.iter().all(|b| *b == 0));
                assert!(frame.is_for(&hash, from));
                assert!(!frame.is_for(&hash, "other"));
                let view = frame.payload();
                assert_eq!(&view[..], &payload[..]);
                assert!(frame.holds(&view));
                assert!(!frame.holds(&Bytes::copy_from_slice(&payload)) || payload.is_empty());
            }
        }
    }

    #[test]
    fn a_header_that_fits_is_written_in_place() {
        let mut buf = PayloadBuf::with_capacity(1000);
        buf.resize(1000, 0x5a);
        let at = buf.as_ptr();
        let frame = buf.into_frame("r1-0-1-2", "node-0");
        // The payload stayed where the application wrote it.
        assert_eq!(frame.payload().as_ptr(), at);
        assert_eq!(frame.as_slice().len(), HEADROOM + 1000);
    }

    #[test]
    fn copied_frames_match_protobuf_byte_for_byte() {
        for (hash, from, len) in [
            ("h", "f", 3),
            ("", "", 0),
            ("x".repeat(300).as_str(), "y", 1 << 20),
        ] {
            let payload = vec![7u8; len];
            let frame = EncodedFrame::encode(hash, from, &payload);
            let mut m = GossipMessage::new();
            m.hash = hash.into();
            m.from_hash = from.into();
            m.payload = Bytes::from(payload.clone());
            let mut expected = m.write_to_bytes().unwrap();
            if len == 0 {
                // proto3 omits an empty payload; the frame names it (decoders accept both).
                expected.extend_from_slice(&[TAG_PAYLOAD, 0]);
            }
            assert_eq!(frame.as_slice(), &expected[..]);
            assert_eq!(decode(&frame).payload, m.payload);
        }
    }

    #[test]
    fn a_shared_payload_is_a_frame_that_holds_only_the_payload() {
        for len in [0, 5, 200, 70_000] {
            let payload: Vec<u8> = (0..len).map(|i| i as u8).collect();
            let buf = PayloadBuf::from(&payload[..]);
            for shared in [SharedPayload::from(buf), SharedPayload::from(&payload[..])] {
                let mut m = decode(shared.frame());
                assert_eq!(&m.payload[..], &payload[..]);
                assert_eq!(shared.len(), len);
                assert!(shared.frame().is_tail());
                // Nothing but the payload (and the filler in front).
                m.payload = Bytes::new();
                m.padding = Bytes::new();
                assert_eq!(m.compute_size(), 0);
                assert!(shared.frame().holds(&shared.payload()));
            }
        }
        // Framed in place: the payload stays where it was written.
        let mut buf = PayloadBuf::with_capacity(1000);
        buf.resize(1000, 1);
        let at = buf.as_ptr();
        assert_eq!(SharedPayload::from(buf).payload().as_ptr(), at);
        // A message's own frame is not a tail.
        assert!(!PayloadBuf::from(&b"x"[..]).into_frame("h", "a").is_tail());
    }

    #[test]
    fn writing_into_the_buffer() {
        use std::io::Write;
        let mut buf = PayloadBuf::new();
        assert!(buf.is_empty());
        buf.write_all(b"abc").unwrap();
        buf.extend_from_slice(b"def");
        buf[0] = b'A';
        assert_eq!(&buf[..], b"Abcdef");
        buf.clear();
        assert_eq!(buf.len(), 0);
    }
}
