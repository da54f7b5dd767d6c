//! `SlotStore`: the seed's TTL storage. It bounds how many messages are in flight and
//! remembers when each must complete. (The seen-cache that de-duplicates received messages is
//! the manager's own, `manager/seen.rs`: only the manager thread uses it.)
//!
//! Application threads reserve slots here directly (so a full store blocks the caller, not the
//! manager); the manager thread completes and expires entries. Both sides take a
//! `parking_lot` mutex for O(log n) work at most.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex};

use crate::error::Error;
use crate::id::NodeId;
use crate::message::MessageKey;

/// How a reservation waits when every slot is busy.
#[derive(Clone, Copy, Debug)]
pub enum Wait {
    /// Return [`Error::Full`] at once.
    No,
    /// Wait until a slot frees (or the store closes).
    Forever,
    /// Wait at most until this instant, then return [`Error::Full`].
    Until(Instant),
}

/// What the store remembers of one in-flight message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Tracked {
    /// When the application handed it over.
    pub sent_at: Instant,
    /// When it times out.
    pub deadline: Instant,
    /// Payload bytes it holds.
    pub bytes: usize,
    seq: u64,
}

/// How much one neighbour may hold of the store, so that a slow or stuck neighbour cannot take
/// every slot (or unbounded memory) from the others.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PeerLimit {
    /// Messages in flight to one neighbour.
    pub messages: usize,
    /// Payload bytes in flight to one neighbour (a single larger message is still let through
    /// when nothing else is in flight to it).
    pub bytes: usize,
}

#[derive(Default, Clone, Copy)]
struct PeerLoad {
    messages: usize,
    bytes: usize,
}

struct Slots {
    in_flight: HashMap<MessageKey, Tracked>,
    per_peer: HashMap<NodeId, PeerLoad>,
    /// Deadline order; `seq` keeps equal deadlines distinct.
    expiry: BTreeMap<(Instant, u64), MessageKey>,
    next_seq: u64,
    closed: bool,
}

impl Slots {
    fn release(&mut self, peer: &NodeId, bytes: usize) {
        if let Some(load) = self.per_peer.get_mut(peer) {
            load.messages = load.messages.saturating_sub(1);
            load.bytes = load.bytes.saturating_sub(bytes);
            if load.messages == 0 {
                self.per_peer.remove(peer);
            }
        }
    }
}

/// The mutex-guarded store of in-flight messages (at most `slots`, each for at most `ttl`).
pub struct SlotStore {
    slots: usize,
    peer_limit: PeerLimit,
    ttl: Duration,
    state: Mutex<Slots>,
    slot_freed: Condvar,
}

impl std::fmt::Debug for SlotStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SlotStore")
            .field("slots", &self.slots)
            .field("ttl", &self.ttl)
            .finish_non_exhaustive()
    }
}

impl SlotStore {
    /// A store with `slots` slots whose entries live at most `ttl`. No per-neighbour limit
    /// beyond `slots`.
    pub fn new(slots: usize, ttl: Duration) -> SlotStore {
        let unlimited = PeerLimit {
            messages: slots,
            bytes: usize::MAX,
        };
        SlotStore::with_peer_limit(slots, unlimited, ttl)
    }

    /// Like [`new`](SlotStore::new), with a limit per neighbour.
    pub fn with_peer_limit(slots: usize, peer_limit: PeerLimit, ttl: Duration) -> SlotStore {
        SlotStore {
            slots,
            peer_limit,
            ttl,
            state: Mutex::new(Slots {
                per_peer: HashMap::new(),
                in_flight: HashMap::with_capacity(slots),
                expiry: BTreeMap::new(),
                next_seq: 0,
                closed: false,
            }),
            slot_freed: Condvar::new(),
        }
    }

    /// Number of slots.
    pub fn slots(&self) -> usize {
        self.slots
    }

    /// The TTL of an entry.
    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    /// Messages in flight now.
    pub fn in_flight(&self) -> usize {
        self.state.lock().in_flight.len()
    }

    /// Takes a slot for `key` (a message of `bytes` payload bytes), waiting as `wait` says
    /// while all slots, or the neighbour's share, are busy.
    ///
    /// Errors: [`Error::Full`] (no slot in time), [`Error::PeerFull`] (the neighbour's share is
    /// used up), [`Error::AlreadyInFlight`] (same key not yet completed), [`Error::Shutdown`]
    /// (store closed).
    pub fn reserve(
        &self,
        key: &MessageKey,
        bytes: usize,
        now: Instant,
        wait: Wait,
    ) -> Result<Tracked, Error> {
        let mut state = self.state.lock();
        loop {
            if state.closed {
                return Err(Error::Shutdown);
            }
            if state.in_flight.contains_key(key) {
                return Err(Error::AlreadyInFlight {
                    peer: key.peer.to_string(),
                    hash: key.hash.clone(),
                });
            }
            let load = state.per_peer.get(&key.peer).copied().unwrap_or_default();
            let peer_ok = load.messages < self.peer_limit.messages
                && (load.messages == 0
                    || load.bytes.saturating_add(bytes) <= self.peer_limit.bytes);
            let full = if state.in_flight.len() >= self.slots {
                Error::Full { slots: self.slots }
            } else if !peer_ok {
                Error::PeerFull {
                    peer: key.peer.to_string(),
                    messages: load.messages,
                    bytes: load.bytes,
                }
            } else {
                break;
            };
            match wait {
                Wait::No => return Err(full),
                Wait::Forever => self.slot_freed.wait(&mut state),
                Wait::Until(t) => {
                    if self.slot_freed.wait_until(&mut state, t).timed_out() {
                        return Err(full);
                    }
                }
            }
        }
        let seq = state.next_seq;
        state.next_seq += 1;
        let tracked = Tracked {
            sent_at: now,
            deadline: now + self.ttl,
            bytes,
            seq,
        };
        state.expiry.insert((tracked.deadline, seq), key.clone());
        state.in_flight.insert(key.clone(), tracked.clone());
        let load = state.per_peer.entry(key.peer.clone()).or_default();
        load.messages += 1;
        load.bytes += bytes;
        Ok(tracked)
    }

    /// Removes `key` (it completed) and frees its slot; `None` if it was not in flight.
    pub fn complete(&self, key: &MessageKey) -> Option<Tracked> {
        let mut state = self.state.lock();
        let tracked = state.in_flight.remove(key)?;
        state.expiry.remove(&(tracked.deadline, tracked.seq));
        state.release(&key.peer, tracked.bytes);
        drop(state);
        // Waiters wait for different things (any slot, or a given neighbour's share).
        self.slot_freed.notify_all();
        Some(tracked)
    }

    /// Removes and returns every entry whose deadline is at or before `now`.
    pub fn expire(&self, now: Instant) -> Vec<(MessageKey, Tracked)> {
        let mut state = self.state.lock();
        let mut out = Vec::new();
        while let Some(entry) = state.expiry.first_entry() {
            if entry.key().0 > now {
                break;
            }
            let key = entry.remove();
            if let Some(t) = state.in_flight.remove(&key) {
                state.release(&key.peer, t.bytes);
                out.push((key, t));
            }
        }
        drop(state);
        if !out.is_empty() {
            self.slot_freed.notify_all();
        }
        out
    }

    /// Messages in flight per target neighbour.
    pub fn in_flight_by_peer(&self) -> HashMap<NodeId, usize> {
        let state = self.state.lock();
        state
            .per_peer
            .iter()
            .map(|(peer, load)| (peer.clone(), load.messages))
            .collect()
    }

    /// Removes and returns every in-flight entry addressed to `peer`.
    pub fn remove_peer(&self, peer: &NodeId) -> Vec<(MessageKey, Tracked)> {
        self.remove_where(|k| &k.peer == peer)
    }

    /// Closes the store: pending and future reservations fail with [`Error::Shutdown`]; returns
    /// what was in flight.
    pub fn close(&self) -> Vec<(MessageKey, Tracked)> {
        self.state.lock().closed = true;
        let out = self.remove_where(|_| true);
        self.slot_freed.notify_all();
        out
    }

    fn remove_where(&self, pred: impl Fn(&MessageKey) -> bool) -> Vec<(MessageKey, Tracked)> {
        let mut state = self.state.lock();
        let keys: Vec<MessageKey> = state
            .in_flight
            .keys()
            .filter(|k| pred(k))
            .cloned()
            .collect();
        let mut out = Vec::with_capacity(keys.len());
        for key in keys {
            if let Some(t) = state.in_flight.remove(&key) {
                state.expiry.remove(&(t.deadline, t.seq));
                state.release(&key.peer, t.bytes);
                out.push((key, t));
            }
        }
        drop(state);
        if !out.is_empty() {
            self.slot_freed.notify_all();
        }
        // Sent order, so completions come out in the order the messages went in.
        out.sort_by_key(|(_, t)| t.seq);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::limits::Limits;
    use std::sync::Arc;

    /// Reserves a slot for a one-byte message.
    fn take(
        store: &SlotStore,
        key: &MessageKey,
        now: Instant,
        wait: Wait,
    ) -> Result<Tracked, Error> {
        store.reserve(key, 1, now, wait)
    }

    fn key(peer: &str, hash: &str) -> MessageKey {
        MessageKey {
            peer: NodeId::new(peer, &Limits::default()).unwrap(),
            hash: hash.into(),
        }
    }

    #[test]
    fn slots_bound_in_flight_and_free_on_complete() {
        let store = SlotStore::new(2, Duration::from_secs(10));
        let now = Instant::now();
        take(&store, &key("b", "1"), now, Wait::No).unwrap();
        take(&store, &key("b", "2"), now, Wait::No).unwrap();
        assert!(matches!(
            take(&store, &key("b", "3"), now, Wait::No),
            Err(Error::Full { slots: 2 })
        ));
        assert!(store.complete(&key("b", "1")).is_some());
        assert!(store.complete(&key("b", "1")).is_none(), "completes once");
        take(&store, &key("b", "3"), now, Wait::No).unwrap();
        assert_eq!(store.in_flight(), 2);
    }

    #[test]
    fn same_key_twice_is_refused() {
        let store = SlotStore::new(4, Duration::from_secs(10));
        let now = Instant::now();
        take(&store, &key("b", "1"), now, Wait::No).unwrap();
        assert!(matches!(
            take(&store, &key("b", "1"), now, Wait::No),
            Err(Error::AlreadyInFlight { .. })
        ));
        // Same hash to another neighbour is a different message.
        take(&store, &key("c", "1"), now, Wait::No).unwrap();
    }

    #[test]
    fn blocked_reserve_wakes_when_a_slot_frees() {
        let store = Arc::new(SlotStore::new(1, Duration::from_secs(10)));
        take(&store, &key("b", "1"), Instant::now(), Wait::No).unwrap();
        let s2 = store.clone();
        let waiter =
            std::thread::spawn(move || take(&s2, &key("b", "2"), Instant::now(), Wait::Forever));
        std::thread::sleep(Duration::from_millis(50));
        assert!(!waiter.is_finished(), "must wait while full");
        store.complete(&key("b", "1"));
        assert!(waiter.join().unwrap().is_ok());
    }

    #[test]
    fn bounded_wait_gives_full() {
        let store = SlotStore::new(1, Duration::from_secs(10));
        take(&store, &key("b", "1"), Instant::now(), Wait::No).unwrap();
        let until = Instant::now() + Duration::from_millis(20);
        assert!(matches!(
            take(&store, &key("b", "2"), Instant::now(), Wait::Until(until)),
            Err(Error::Full { .. })
        ));
    }

    #[test]
    fn close_wakes_waiters_and_returns_everything() {
        let store = Arc::new(SlotStore::new(1, Duration::from_secs(10)));
        take(&store, &key("b", "1"), Instant::now(), Wait::No).unwrap();
        let s2 = store.clone();
        let waiter =
            std::thread::spawn(move || take(&s2, &key("b", "2"), Instant::now(), Wait::Forever));
        std::thread::sleep(Duration::from_millis(20));
        let pending = store.close();
        assert_eq!(pending.len(), 1);
        assert!(matches!(waiter.join().unwrap(), Err(Error::Shutdown)));
        assert!(matches!(
            take(&store, &key("b", "3"), Instant::now(), Wait::No),
            Err(Error::Shutdown)
        ));
    }

    #[test]
    fn ttl_expiry_in_deadline_order() {
        let store = SlotStore::new(8, Duration::from_secs(10));
        let t0 = Instant::now();
        take(&store, &key("b", "1"), t0, Wait::No).unwrap();
        take(
            &store,
            &key("b", "2"),
            t0 + Duration::from_secs(1),
            Wait::No,
        )
        .unwrap();
        assert!(store.expire(t0 + Duration::from_secs(9)).is_empty());
        let first = store.expire(t0 + Duration::from_secs(10));
        assert_eq!(first.len(), 1);
        assert_eq!(first[0].0.hash, "1");
        store.complete(&key("b", "2"));
        assert!(store.expire(t0 + Duration::from_secs(60)).is_empty());
        assert_eq!(store.in_flight(), 0);
    }

    #[test]
    fn remove_peer_keeps_send_order() {
        let store = SlotStore::new(8, Duration::from_secs(10));
        let now = Instant::now();
        for h in ["3", "1", "2"] {
            take(&store, &key("b", h), now, Wait::No).unwrap();
        }
        take(&store, &key("c", "9"), now, Wait::No).unwrap();
        let gone: Vec<String> = store
            .remove_peer(&key("b", "").peer)
            .into_iter()
            .map(|(k, _)| k.hash)
            .collect();
        assert_eq!(gone, ["3", "1", "2"]);
        assert_eq!(store.in_flight(), 1);
    }

    #[test]
    fn one_neighbour_cannot_take_every_slot_or_unbounded_bytes() {
        let limit = PeerLimit {
            messages: 2,
            bytes: 100,
        };
        let store = SlotStore::with_peer_limit(4, limit, Duration::from_secs(10));
        let now = Instant::now();
        store.reserve(&key("slow", "1"), 10, now, Wait::No).unwrap();
        store.reserve(&key("slow", "2"), 10, now, Wait::No).unwrap();
        assert!(matches!(
            store.reserve(&key("slow", "3"), 10, now, Wait::No),
            Err(Error::PeerFull { messages: 2, .. })
        ));
        // Others still get slots.
        store.reserve(&key("fast", "1"), 60, now, Wait::No).unwrap();
        assert!(matches!(
            store.reserve(&key("fast", "2"), 60, now, Wait::No),
            Err(Error::PeerFull { bytes: 60, .. })
        ));
        // A single message larger than the byte share passes when nothing else is in flight.
        store
            .reserve(&key("big", "1"), 1000, now, Wait::No)
            .unwrap();
        store.complete(&key("slow", "1"));
        store.reserve(&key("slow", "3"), 10, now, Wait::No).unwrap();
        assert_eq!(
            store.in_flight_by_peer().get(&key("slow", "").peer),
            Some(&2)
        );
    }
}
