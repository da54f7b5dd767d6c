//! Chunked messages put back together, within a byte budget.
//!
//! Chunks of one message arrive in order on one stream, so each stream holds at most one
//! partly received message. Its announced size is charged against a node-wide budget, and
//! against the sending peer's share of it, when its first chunk arrives (the buffer is then
//! reserved at its final size, which avoids copies); the charge is released when the message
//! completes, is abandoned, or its stream ends. A message that does not fit is refused as a
//! whole ("busy, retry later"), and its later chunks on that stream are dropped without an
//! answer, so that the sender hears once and the other messages on the stream carry on.
//!
//! The buffers come from a [`Recycler`]: a delivered message's buffer is used again for a
//! later one once the application drops it, so large messages do not fault in fresh pages.

use std::collections::HashMap;
use std::time::Instant;

use super::recycle::Recycler;
use super::{StreamId, StreamMap, WireMessage};
use crate::id::NodeId;
use crate::limits::Limits;

/// A chunked message being received on one stream.
#[derive(Debug)]
struct Partial {
    peer: NodeId,
    hash: String,
    total: u64,
    /// Bytes charged against the budgets (the announced size).
    charged: usize,
    buf: Vec<u8>,
}

/// What a chunk did.
#[derive(Debug, PartialEq)]
pub(super) enum Reassembly {
    /// More chunks to come.
    Incomplete,
    /// The whole message.
    Complete(WireMessage),
    /// The chunk does not fit its message; message `hash` is refused for `reason` (final).
    Invalid { hash: String, reason: String },
    /// No room in the budget for message `hash` now: refused, to be sent again later.
    Busy { hash: String, reason: String },
    /// A later chunk of a message refused as busy: dropped, already answered.
    Dropped,
}

/// The partly received messages of one node. See the module docs.
#[derive(Debug)]
pub(super) struct Reassembler {
    max_message: u64,
    budget: usize,
    share: usize,
    used: usize,
    by_peer: HashMap<NodeId, usize>,
    partial: StreamMap<Partial>,
    /// Per stream, the hash of the message refused as busy, whose later chunks are dropped.
    refused: StreamMap<String>,
    buffers: Recycler,
}

/// The most bytes of free buffers a node keeps for reassembly (at most its budget for
/// partly received messages): four 64 MiB messages' worth.
const MAX_RECYCLED_BYTES: usize = 256 * 1024 * 1024;

impl Reassembler {
    pub(super) fn new(limits: &Limits) -> Reassembler {
        Reassembler {
            max_message: limits.max_message_bytes as u64,
            budget: limits.partial_bytes,
            share: limits.peer_partial_bytes,
            used: 0,
            by_peer: HashMap::new(),
            partial: StreamMap::default(),
            refused: StreamMap::default(),
            buffers: Recycler::new(limits.partial_bytes.min(MAX_RECYCLED_BYTES)),
        }
    }

    /// Frees the recycled buffers that have waited too long for a message.
    pub(super) fn trim(&self, now: Instant) {
        self.buffers.trim(now);
    }

    /// Bytes of free buffers kept for later messages.
    pub(super) fn recycled_bytes(&self) -> usize {
        self.buffers.held_bytes()
    }

    /// Bytes charged now, by all peers together.
    pub(super) fn held_bytes(&self) -> usize {
        self.used
    }

    /// Bytes charged now to `peer`.
    pub(super) fn held_bytes_of(&self, peer: &NodeId) -> usize {
        self.by_peer.get(peer).copied().unwrap_or(0)
    }

    /// Adds a chunk that arrived from `peer` on `stream`. A chunk at offset 0 starts a new
    /// message there (a retransmission after a reconnection starts over).
    pub(super) fn add(
        &mut self,
        stream: StreamId,
        peer: &NodeId,
        chunk: WireMessage,
    ) -> Reassembly {
        if chunk.total > self.max_message {
            self.abandon(stream);
            let reason = format!(
                "message of {} bytes exceeds the limit of {}",
                chunk.total, self.max_message
            );
            return Reassembly::Invalid {
                hash: chunk.hash,
                reason,
            };
        }
        if chunk.offset == 0 {
            self.abandon(stream);
            self.refused.remove(&stream);
            // Fits in usize: it is at most `max_message`, a usize.
            let total = usize::try_from(chunk.total).unwrap_or(usize::MAX);
            let peer_used = self.by_peer.get(peer).copied().unwrap_or(0);
            if self.used.saturating_add(total) > self.budget
                || peer_used.saturating_add(total) > self.share
            {
                let reason = format!(
                    "busy: partly received messages hold {} of {} bytes ({} of its share of {} \
                     from this peer); send it again later",
                    self.used, self.budget, peer_used, self.share
                );
                self.refused.insert(stream, chunk.hash.clone());
                return Reassembly::Busy {
                    hash: chunk.hash,
                    reason,
                };
            }
            self.used += total;
            *self.by_peer.entry(peer.clone()).or_default() += total;
            // Reserved up front (growing by doubling would copy the message and hold it
            // twice), in a buffer used before if one fits.
            let partial = Partial {
                peer: peer.clone(),
                hash: chunk.hash.clone(),
                total: chunk.total,
                charged: total,
                buf: self.buffers.take(total, Instant::now()),
            };
            self.partial.insert(stream, partial);
        }
        let Some(p) = self.partial.get_mut(&stream) else {
            if self.refused.get(&stream) == Some(&chunk.hash) {
                return Reassembly::Dropped;
            }
            let reason = format!("chunk at offset {} without its start", chunk.offset);
            return Reassembly::Invalid {
                hash: chunk.hash,
                reason,
            };
        };
        let fits = p.hash == chunk.hash
            && p.total == chunk.total
            && p.buf.len() as u64 == chunk.offset
            && chunk.offset + chunk.payload.len() as u64 <= chunk.total;
        if !fits {
            let reason = format!(
                "chunk of {:?} at offset {} (of {}) does not follow {} bytes of {:?}",
                chunk.hash,
                chunk.offset,
                chunk.total,
                p.buf.len(),
                p.hash
            );
            self.abandon(stream);
            return Reassembly::Invalid {
                hash: chunk.hash,
                reason,
            };
        }
        p.buf.extend_from_slice(&chunk.payload);
        if (p.buf.len() as u64) < p.total {
            return Reassembly::Incomplete;
        }
        match self.take(stream) {
            Some(done) => {
                let payload = self.buffers.freeze(done.buf);
                Reassembly::Complete(WireMessage::whole(done.hash, chunk.from, payload))
            }
            None => Reassembly::Incomplete,
        }
    }

    /// `stream` ended: what it held is dropped and released.
    pub(super) fn close(&mut self, stream: StreamId) {
        self.abandon(stream);
        self.refused.remove(&stream);
    }

    fn abandon(&mut self, stream: StreamId) {
        if let Some(p) = self.take(stream) {
            self.buffers.put_back(p.buf, Instant::now());
        }
    }

    /// Removes the partial message of `stream` and releases its charge.
    fn take(&mut self, stream: StreamId) -> Option<Partial> {
        let p = self.partial.remove(&stream)?;
        self.used -= p.charged;
        if let Some(n) = self.by_peer.get_mut(&p.peer) {
            *n -= p.charged;
            if *n == 0 {
                self.by_peer.remove(&p.peer);
            }
        }
        Some(p)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn limits(budget: usize, share: usize) -> Limits {
        Limits {
            max_payload_bytes: 4,
            max_id_bytes: 16,
            max_message_bytes: 10,
            partial_bytes: budget,
            peer_partial_bytes: share,
        }
    }

    fn id(s: &str) -> NodeId {
        NodeId::new(s, &Limits::default()).unwrap()
    }

    fn chunk(hash: &str, total: u64, offset: u64, bytes: &'static [u8]) -> WireMessage {
        WireMessage {
            hash: hash.into(),
            from: String::new(),
            payload: Bytes::from_static(bytes),
            total,
            offset,
        }
    }

    #[test]
    fn the_budget_refuses_whole_messages_and_releases_what_ends() {
        let mut r = Reassembler::new(&limits(20, 10));
        let (a, b) = (id("a"), id("b"));
        let (s1, s2, s3) = (StreamId(1), StreamId(2), StreamId(3));
        assert_eq!(
            r.add(s1, &a, chunk("x", 10, 0, b"0123")),
            Reassembly::Incomplete
        );
        // a's share (10) is used up; b still has room in the node's budget.
        assert!(matches!(
            r.add(s2, &a, chunk("y", 10, 0, b"0123")),
            Reassembly::Busy { .. }
        ));
        assert_eq!(
            r.add(s2, &a, chunk("y", 10, 4, b"4567")),
            Reassembly::Dropped
        );
        assert_eq!(
            r.add(s3, &b, chunk("z", 10, 0, b"0123")),
            Reassembly::Incomplete
        );
        assert_eq!(r.held_bytes(), 20);
        // The node's budget is full now, for anyone.
        assert!(matches!(
            r.add(StreamId(4), &id("c"), chunk("w", 1, 0, b"0")),
            Reassembly::Busy { .. }
        ));
        // Completing x releases a's share; a stream ending releases z.
        r.add(s1, &a, chunk("x", 10, 4, b"4567"));
        let done = r.add(s1, &a, chunk("x", 10, 8, b"89"));
        assert!(matches!(&done, Reassembly::Complete(m) if &m.payload[..] == b"0123456789"));
        r.close(s3);
        assert_eq!(r.held_bytes(), 0);
        // y, sent again from its start, now fits.
        assert_eq!(
            r.add(s2, &a, chunk("y", 10, 0, b"0123")),
            Reassembly::Incomplete
        );
    }

    #[test]
    fn a_chunk_out_of_place_abandons_its_message() {
        let mut r = Reassembler::new(&limits(10, 10));
        let a = id("a");
        r.add(StreamId(1), &a, chunk("x", 10, 0, b"0123"));
        assert!(matches!(
            r.add(StreamId(1), &a, chunk("x", 10, 6, b"67")),
            Reassembly::Invalid { .. }
        ));
        assert_eq!(r.held_bytes(), 0);
        assert!(matches!(
            r.add(StreamId(1), &a, chunk("q", 10, 4, b"45")),
            Reassembly::Invalid { .. }
        ));
        assert!(matches!(
            r.add(StreamId(1), &a, chunk("big", 11, 0, b"0")),
            Reassembly::Invalid { .. }
        ));
    }
}
