//! The seen-cache: which (sender, hash) pairs arrived lately, so that a retransmission is ACKed
//! again but delivered once. Only the manager uses it, so it is plain data, no lock.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use crate::id::NodeId;

/// Recently seen (sender, hash) pairs: at most `capacity`, each for at most `ttl` (the store's,
/// as long as a sender retransmits).
#[derive(Debug)]
pub(crate) struct SeenCache {
    capacity: usize,
    ttl: Duration,
    entries: HashMap<(NodeId, String), Instant>,
    /// Arrival order, for eviction.
    order: VecDeque<(Instant, NodeId, String)>,
}

impl SeenCache {
    /// An empty cache.
    pub(crate) fn new(capacity: usize, ttl: Duration) -> SeenCache {
        SeenCache {
            capacity,
            ttl,
            entries: HashMap::new(),
            order: VecDeque::new(),
        }
    }

    /// Records that `hash` arrived from `from`; true the first time (within the TTL and the
    /// cache's capacity), false for a duplicate.
    pub(crate) fn observe(&mut self, from: &NodeId, hash: &str, now: Instant) -> bool {
        self.evict(now);
        let key = (from.clone(), hash.to_owned());
        if self.entries.contains_key(&key) {
            return false;
        }
        self.entries.insert(key.clone(), now);
        self.order.push_back((now, key.0, key.1));
        self.evict(now);
        true
    }

    /// Whether `hash` from `from` was seen within the TTL, without recording it.
    pub(crate) fn contains(&self, from: &NodeId, hash: &str, now: Instant) -> bool {
        let key = (from.clone(), hash.to_owned());
        self.entries
            .get(&key)
            .is_some_and(|at| now.saturating_duration_since(*at) < self.ttl)
    }

    /// Pairs remembered now.
    pub(crate) fn len(&self) -> usize {
        self.entries.len()
    }

    fn evict(&mut self, now: Instant) {
        while let Some((at, _, _)) = self.order.front() {
            let expired = now.saturating_duration_since(*at) >= self.ttl;
            if !(expired || self.order.len() > self.capacity) {
                break;
            }
            if let Some((_, from, hash)) = self.order.pop_front() {
                self.entries.remove(&(from, hash));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::limits::Limits;

    #[test]
    fn dedups_and_is_bounded() {
        let mut seen = SeenCache::new(3, Duration::from_secs(10));
        let a = NodeId::new("a", &Limits::default()).unwrap();
        let b = NodeId::new("b", &Limits::default()).unwrap();
        let t0 = Instant::now();
        assert!(seen.observe(&a, "h1", t0));
        assert!(!seen.observe(&a, "h1", t0), "duplicate");
        assert!(seen.contains(&a, "h1", t0));
        assert!(seen.observe(&b, "h1", t0), "other sender, other message");
        assert!(seen.observe(&a, "h2", t0));
        assert!(seen.observe(&a, "h3", t0));
        assert_eq!(seen.len(), 3, "capacity bounds the cache");
        // After the TTL everything is forgotten.
        let later = t0 + Duration::from_secs(11);
        assert!(!seen.contains(&a, "h3", later));
        assert!(seen.observe(&a, "h3", later));
        assert_eq!(seen.len(), 1);
    }
}
