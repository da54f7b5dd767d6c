//! The priority lane of a writer: small frames go out ahead of bulk payloads queued to the
//! same stream, so that a 64 B message (or a GRAFT) never waits behind megabytes of others.
//!
//! The node classes each frame when it queues it ([`Lane`]); the writer thread keeps the
//! classes in two queues and always writes the priority one first, except that after
//! [`BULK_TURN_BYTES`] of priority frames written while bulk waits, one bulk frame goes: a
//! flood of small frames slows bulk down, it never stops it. Order holds within each lane.

use std::collections::VecDeque;

use super::batch::Batchable;

/// Which queue of a writer a frame joins.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Lane {
    /// Small messages and control frames: written first.
    Priority,
    /// Everything else, in the order it was queued.
    Bulk,
}

/// Priority bytes written in a row while bulk frames wait, before one bulk frame gets its turn.
pub(crate) const BULK_TURN_BYTES: usize = 1024 * 1024;

/// A writer's two queues.
pub(crate) struct Lanes<T> {
    priority: VecDeque<T>,
    bulk: VecDeque<T>,
    /// Priority bytes written since bulk last had its turn (or had nothing waiting).
    run: usize,
}

impl<T: Batchable> Lanes<T> {
    /// Empty queues.
    pub(crate) fn new() -> Lanes<T> {
        Lanes {
            priority: VecDeque::new(),
            bulk: VecDeque::new(),
            run: 0,
        }
    }

    /// Queues `frame` at the end of `lane`.
    pub(crate) fn push(&mut self, lane: Lane, frame: T) {
        match lane {
            Lane::Priority => self.priority.push_back(frame),
            Lane::Bulk => self.bulk.push_back(frame),
        }
    }

    /// Whether nothing waits.
    pub(crate) fn is_empty(&self) -> bool {
        self.priority.is_empty() && self.bulk.is_empty()
    }

    /// The frame to write next: the oldest priority frame, unless bulk is owed its turn.
    pub(crate) fn pop(&mut self) -> Option<T> {
        if self.bulk.is_empty() {
            self.run = 0;
        }
        let bulk_turn = self.priority.is_empty() || self.run >= BULK_TURN_BYTES;
        if bulk_turn {
            if let Some(frame) = self.bulk.pop_front() {
                self.run = 0;
                return Some(frame);
            }
        }
        let frame = self.priority.pop_front()?;
        self.run = self.run.saturating_add(frame.weight().1);
        Some(frame)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::GossipMessage;
    use bytes::Bytes;

    fn frame(hash: &str, size: usize) -> GossipMessage {
        let mut m = GossipMessage::new();
        m.hash = hash.into();
        m.payload = Bytes::from(vec![0u8; size]);
        m
    }

    fn drain(lanes: &mut Lanes<GossipMessage>) -> Vec<String> {
        std::iter::from_fn(|| lanes.pop()).map(|m| m.hash).collect()
    }

    #[test]
    fn priority_frames_overtake_bulk_and_each_lane_keeps_its_order() {
        let mut lanes = Lanes::new();
        lanes.push(Lane::Bulk, frame("b1", 512 * 1024));
        lanes.push(Lane::Bulk, frame("b2", 512 * 1024));
        lanes.push(Lane::Priority, frame("p1", 64));
        lanes.push(Lane::Bulk, frame("b3", 512 * 1024));
        lanes.push(Lane::Priority, frame("p2", 64));
        assert_eq!(drain(&mut lanes), ["p1", "p2", "b1", "b2", "b3"]);
        assert!(lanes.is_empty());
    }

    #[test]
    fn bulk_alone_is_first_in_first_out() {
        let mut lanes = Lanes::new();
        for i in 0..5 {
            lanes.push(Lane::Bulk, frame(&format!("b{i}"), 10));
        }
        assert_eq!(drain(&mut lanes), ["b0", "b1", "b2", "b3", "b4"]);
    }

    #[test]
    fn a_flood_of_priority_frames_leaves_bulk_a_turn_per_mebibyte() {
        let mut lanes = Lanes::new();
        lanes.push(Lane::Bulk, frame("b1", 1024));
        lanes.push(Lane::Bulk, frame("b2", 1024));
        // 3 MiB of priority frames of 256 KiB each (batches of small messages).
        for i in 0..12 {
            lanes.push(Lane::Priority, frame(&format!("p{i}"), 256 * 1024));
        }
        let order = drain(&mut lanes);
        let at = |h: &str| order.iter().position(|x| x == h).unwrap_or(usize::MAX);
        // Four priority frames (1 MiB and a little: the ids count too) go before each bulk one.
        assert_eq!(at("b1"), 4);
        assert_eq!(at("b2"), 9);
        assert_eq!(order.len(), 14);
    }

    #[test]
    fn the_turn_counts_only_while_bulk_waits() {
        let mut lanes = Lanes::new();
        // Priority frames written with no bulk waiting do not use up bulk's patience...
        for i in 0..8 {
            lanes.push(Lane::Priority, frame(&format!("early{i}"), 256 * 1024));
            assert!(lanes.pop().is_some());
        }
        // ...so a bulk frame queued now still lets the next priority frames go first.
        lanes.push(Lane::Bulk, frame("b", 1024));
        lanes.push(Lane::Priority, frame("p", 64));
        assert_eq!(drain(&mut lanes), ["p", "b"]);
    }
}
