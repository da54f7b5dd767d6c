//! Broadcast payloads encoded once for all the neighbours they go to.
//!
//! A broadcast payload goes to every eager neighbour, and again to any that grafts it. Encoded
//! with each frame, that is one copy per neighbour; as a shared tail (feature `tail`), one
//! copy for all of them, made by the first writer that sends it ([`LazyTail`]), or none for an
//! origin's [`SharedPayload`](crate::SharedPayload). This cache hands every frame of the same
//! payload the same tail. It is a cache only: a payload it does not hold (too large for it, or
//! evicted) goes as before, encoded with each frame.

use std::collections::VecDeque;
use std::sync::Arc;

use bytes::Bytes;

use crate::payload::{EncodedFrame, LazyTail, FRAME_ALONE_MIN};

/// Payload bytes whose tails are kept (each tail is a copy of its payload, once encoded).
pub(super) const TAIL_CACHE_BYTES: usize = 32 << 20;
/// Payloads whose tails are kept.
pub(super) const TAIL_CACHE_ENTRIES: usize = 16;

/// The tails of the broadcast payloads sent lately, oldest first.
#[derive(Default)]
pub(super) struct BroadcastTails {
    /// Each payload (the very buffer: it is found by address, and kept so that the address
    /// cannot be reused by another payload while it is here) and its tail.
    entries: VecDeque<(Bytes, Arc<LazyTail>)>,
    bytes: usize,
}

impl BroadcastTails {
    /// The tail shared by every frame of `payload` (these bytes in memory, not equal ones),
    /// if the payload travels alone in a gRPC message and fits the cache.
    pub(super) fn of(&mut self, payload: &Bytes) -> Option<Arc<LazyTail>> {
        if payload.len() <= FRAME_ALONE_MIN || payload.len() > TAIL_CACHE_BYTES {
            return None;
        }
        let same = |(held, _): &&(Bytes, Arc<LazyTail>)| {
            held.as_ptr() == payload.as_ptr() && held.len() == payload.len()
        };
        if let Some((_, tail)) = self.entries.iter().find(same) {
            return Some(tail.clone());
        }
        let tail = Arc::new(LazyTail::default());
        self.insert(payload.clone(), tail.clone());
        Some(tail)
    }

    /// Remembers an origin's own encoded tail for `payload` (a view into it).
    pub(super) fn insert_ready(&mut self, payload: Bytes, tail: EncodedFrame) {
        if payload.len() > FRAME_ALONE_MIN && payload.len() <= TAIL_CACHE_BYTES {
            self.insert(payload, Arc::new(LazyTail::ready(tail)));
        }
    }

    fn insert(&mut self, payload: Bytes, tail: Arc<LazyTail>) {
        self.bytes += payload.len();
        self.entries.push_back((payload, tail));
        while self.bytes > TAIL_CACHE_BYTES || self.entries.len() > TAIL_CACHE_ENTRIES {
            let Some((old, _)) = self.entries.pop_front() else {
                break;
            };
            self.bytes -= old.len();
        }
    }

    /// Payloads held.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.entries.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn payload(len: usize) -> Bytes {
        Bytes::from(vec![5u8; len])
    }

    #[test]
    fn frames_of_one_payload_share_one_tail_encoded_once() {
        let mut tails = BroadcastTails::default();
        let p = payload(FRAME_ALONE_MIN + 1);
        let a = tails.of(&p).unwrap();
        let b = tails.of(&p.clone()).unwrap();
        assert!(Arc::ptr_eq(&a, &b));
        let first = a.get_or_encode(&p).unwrap().as_slice().as_ptr();
        assert_eq!(b.get_or_encode(&p).unwrap().as_slice().as_ptr(), first);
        // Equal bytes elsewhere are another payload.
        let other = tails.of(&payload(FRAME_ALONE_MIN + 1)).unwrap();
        assert!(!Arc::ptr_eq(&a, &other));
        // Small payloads share gRPC messages with others: no tail.
        assert!(tails.of(&payload(100)).is_none());
    }

    #[test]
    fn the_cache_keeps_to_its_bounds_and_forgets_the_oldest() {
        let mut tails = BroadcastTails::default();
        let len = TAIL_CACHE_BYTES / 4;
        let held: Vec<Bytes> = (0..6).map(|_| payload(len)).collect();
        let first = tails.of(&held[0]).unwrap();
        for p in &held[1..] {
            tails.of(p);
        }
        assert_eq!(tails.len(), 4);
        assert!(tails.bytes <= TAIL_CACHE_BYTES);
        // The first was evicted: asked again, it gets a new tail (frames still holding the old
        // one keep it).
        assert!(!Arc::ptr_eq(&first, &tails.of(&held[0]).unwrap()));
        for _ in 0..2 * TAIL_CACHE_ENTRIES {
            tails.of(&payload(FRAME_ALONE_MIN + 1));
        }
        assert_eq!(tails.len(), TAIL_CACHE_ENTRIES);
        assert!(tails.of(&payload(TAIL_CACHE_BYTES + 1)).is_none());
    }

    #[test]
    fn an_origins_own_tail_is_used_as_it_is() {
        let shared = crate::SharedPayload::from(&vec![1u8; FRAME_ALONE_MIN + 1][..]);
        let mut tails = BroadcastTails::default();
        tails.insert_ready(shared.payload(), shared.frame().clone());
        let tail = tails.of(&shared.payload()).unwrap();
        let encoded = tail.get_or_encode(&shared.payload()).unwrap();
        assert_eq!(
            encoded.as_slice().as_ptr(),
            shared.frame().as_slice().as_ptr()
        );
    }
}
