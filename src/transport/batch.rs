//! Packing several frames into one gRPC message (the `batch` extension).
//!
//! Each gRPC write costs a completion-queue round trip, so a stream that carries many small
//! frames is limited by writes, not bytes. To peers that announced the `batch` feature, the
//! manager thread sends what it has queued for one stream in one wake-up as few gRPC messages as
//! the budget allows: the first frame carries the others in its `batch` field, in order. Large
//! frames always travel alone, so batching never delays a big payload or makes a frame larger
//! than the gRPC limit.

use crate::proto::{GossipACK, GossipMessage};

/// Most frames carried in one gRPC message.
const MAX_ITEMS: usize = 1024;

/// A frame that can carry others.
pub(crate) trait Batchable: Sized {
    /// Bytes it adds to a gRPC message (payload, ids, and room for tags and lengths).
    fn cost(&self) -> usize;
    /// Appends `item` to the frames this one carries.
    fn carry(&mut self, item: Self);
    /// Frames it holds (itself and those it carries) and their cost, for queue accounting.
    fn weight(&self) -> (usize, usize);
    /// The gRPC messages it goes out as, in order: itself, and the one that must follow it at
    /// once, if any (a shared payload after its header, see `frame::OutFrame`).
    fn into_pieces(self) -> (Self, Option<Self>) {
        (self, None)
    }
}

impl Batchable for GossipMessage {
    fn cost(&self) -> usize {
        self.payload.len() + self.hash.len() + self.from_hash.len() + 16
    }

    fn carry(&mut self, item: Self) {
        self.batch.push(item);
    }

    fn weight(&self) -> (usize, usize) {
        let carried: usize = self.batch.iter().map(Batchable::cost).sum();
        (1 + self.batch.len(), self.cost() + carried)
    }
}

impl Batchable for GossipACK {
    fn cost(&self) -> usize {
        self.hash.len() + self.from_hash.len() + self.detail.len() + 16
    }

    fn carry(&mut self, item: Self) {
        self.batch.push(item);
    }

    fn weight(&self) -> (usize, usize) {
        let carried: usize = self.batch.iter().map(Batchable::cost).sum();
        (1 + self.batch.len(), self.cost() + carried)
    }
}

/// Packs `frames` (in order) into as few frames as `budget` bytes per gRPC message allow, and
/// hands each to `out`. Frames costing more than a quarter of the budget travel alone.
pub(crate) fn pack<T: Batchable>(frames: Vec<T>, budget: usize, mut out: impl FnMut(T)) {
    let small = |cost: usize| cost <= budget / 4;
    // The frame being filled (if it is small enough to carry others), the bytes it holds, and
    // how many frames it holds.
    let mut head: Option<(T, usize, usize)> = None;
    for frame in frames {
        let cost = frame.cost();
        match head.as_mut() {
            Some((h, used, items))
                if small(cost) && *used + cost <= budget && *items < MAX_ITEMS =>
            {
                h.carry(frame);
                *used += cost;
                *items += 1;
            }
            _ => {
                if let Some((h, _, _)) = head.take() {
                    out(h);
                }
                if small(cost) {
                    head = Some((frame, cost, 1));
                } else {
                    out(frame); // big frames travel alone
                }
            }
        }
    }
    if let Some((h, _, _)) = head {
        out(h);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn msg(hash: &str, size: usize) -> GossipMessage {
        let mut m = GossipMessage::new();
        m.hash = hash.into();
        m.payload = Bytes::from(vec![0u8; size]);
        m
    }

    /// The hashes of each packed frame, head first.
    fn packed(frames: Vec<GossipMessage>, budget: usize) -> Vec<Vec<String>> {
        let mut out = Vec::new();
        pack(frames, budget, |m: GossipMessage| {
            let mut hashes = vec![m.hash.clone()];
            hashes.extend(m.batch.iter().map(|b| b.hash.clone()));
            out.push(hashes);
        });
        out
    }

    #[test]
    fn small_frames_share_a_message_in_order() {
        let frames = (0..5).map(|i| msg(&format!("m{i}"), 10)).collect();
        assert_eq!(packed(frames, 1000), [["m0", "m1", "m2", "m3", "m4"]]);
    }

    #[test]
    fn the_budget_splits_and_big_frames_travel_alone() {
        let frames = vec![
            msg("a", 100),
            msg("b", 100),
            msg("big", 600),
            msg("c", 100),
            msg("d", 100),
            msg("e", 100),
            msg("f", 100),
            msg("g", 100),
        ];
        // Each 100-byte message costs 117; with a budget of 560, "small" is at most 140 and
        // four fit (468), a fifth would not (585).
        assert_eq!(
            packed(frames, 560),
            [
                vec!["a", "b"],
                vec!["big"],
                vec!["c", "d", "e", "f"],
                vec!["g"],
            ]
        );
    }

    #[test]
    fn nothing_in_nothing_out_and_acks_pack_too() {
        assert!(packed(Vec::new(), 1000).is_empty());
        let acks: Vec<GossipACK> = (0..3)
            .map(|i| {
                let mut a = GossipACK::new();
                a.hash = format!("h{i}");
                a
            })
            .collect();
        let mut out = Vec::new();
        pack(acks, 1000, |a: GossipACK| out.push(a));
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].batch.len(), 2);
    }

    #[test]
    fn item_count_is_bounded() {
        let frames = (0..2500).map(|i| msg(&format!("{i}"), 0)).collect();
        let out = packed(frames, usize::MAX / 2);
        assert_eq!(out.len(), 3);
        assert_eq!(out[0].len(), MAX_ITEMS);
        assert_eq!(out.iter().map(Vec::len).sum::<usize>(), 2500);
        assert_eq!(out[2][0], "2048", "order kept across messages");
    }
}
