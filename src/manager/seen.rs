//! The seen-cache: which (sender, hash) pairs arrived lately, so that a retransmission is ACKed
//! again but delivered once. Only the manager uses it, so it is plain data, no lock.

use std::collections::hash_map::Entry;
use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::id::NodeId;

/// Recently seen (sender, hash) pairs: at most `capacity`, each for at most `ttl` (the store's,
/// as long as a sender retransmits).
///
/// Per message it allocates the hash once (shared by the map and the eviction order) and
/// looks it up once: this runs on the manager thread for every message received.
#[derive(Debug)]
pub(crate) struct SeenCache {
    capacity: usize,
    ttl: Duration,
    /// By sender, then by hash: when it arrived.
    entries: HashMap<NodeId, HashMap<Arc<str>, Instant>>,
    /// Arrival order, for eviction.
    order: VecDeque<(Instant, NodeId, Arc<str>)>,
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
        let by_hash = self.entries.entry(from.clone()).or_default();
        let key: Arc<str> = Arc::from(hash);
        match by_hash.entry(key.clone()) {
            Entry::Occupied(_) => return false,
            Entry::Vacant(v) => {
                v.insert(now);
            }
        }
        self.order.push_back((now, from.clone(), key));
        self.evict(now);
        true
    }

    /// Whether `hash` from `from` was seen within the TTL, without recording it.
    pub(crate) fn contains(&self, from: &NodeId, hash: &str, now: Instant) -> bool {
        self.entries
            .get(from)
            .and_then(|by_hash| by_hash.get(hash))
            .is_some_and(|at| now.saturating_duration_since(*at) < self.ttl)
    }

    /// Pairs held.
    pub(crate) fn len(&self) -> usize {
        self.order.len()
    }

    fn evict(&mut self, now: Instant) {
        while let Some((at, _, _)) = self.order.front() {
            let expired = now.saturating_duration_since(*at) >= self.ttl;
            if !(expired || self.order.len() > self.capacity) {
                break;
            }
            let Some((_, from, hash)) = self.order.pop_front() else {
                break;
            };
            if let Some(by_hash) = self.entries.get_mut(&from) {
                by_hash.remove(&hash);
                if by_hash.is_empty() {
                    self.entries.remove(&from);
                }
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

    #[test]
    fn a_sender_whose_pairs_all_expired_takes_no_room() {
        let mut seen = SeenCache::new(100, Duration::from_secs(1));
        let t0 = Instant::now();
        for i in 0..50 {
            let sender = NodeId::new(&format!("s{i}"), &Limits::default()).unwrap();
            assert!(seen.observe(&sender, "h", t0));
        }
        assert_eq!(seen.entries.len(), 50);
        let c = NodeId::new("c", &Limits::default()).unwrap();
        assert!(seen.observe(&c, "h", t0 + Duration::from_secs(2)));
        // Only the one sender seen since is left, in the map and in the eviction order.
        assert_eq!(seen.entries.len(), 1);
        assert_eq!(seen.len(), 1);
        assert!(!seen.contains(&NodeId::new("s0", &Limits::default()).unwrap(), "h", t0));
    }
}
