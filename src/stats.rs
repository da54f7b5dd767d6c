//! Counters a node keeps, readable at any time through [`Node::stats`](crate::Node::stats).

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

/// Live counters, updated with relaxed atomics by the node's threads.
#[derive(Default, Debug)]
pub struct Counters {
    pub(crate) sent: AtomicU64,
    pub(crate) bytes_sent: AtomicU64,
    pub(crate) acked: AtomicU64,
    pub(crate) timed_out: AtomicU64,
    pub(crate) failed: AtomicU64,
    pub(crate) received: AtomicU64,
    pub(crate) bytes_received: AtomicU64,
    pub(crate) delivered: AtomicU64,
    pub(crate) duplicates: AtomicU64,
    pub(crate) rejected: AtomicU64,
    pub(crate) unknown_acks: AtomicU64,
    pub(crate) unrouted_acks_dropped: AtomicU64,
    pub(crate) retransmitted: AtomicU64,
    pub(crate) stalls: AtomicU64,
    pub(crate) acks_dropped: AtomicU64,
    pub(crate) broadcast_payloads_received: AtomicU64,
    pub(crate) broadcast_bytes_received: AtomicU64,
}

pub(crate) fn bump(counter: &AtomicU64) {
    counter.fetch_add(1, Relaxed);
}

pub(crate) fn add(counter: &AtomicU64, n: usize) {
    counter.fetch_add(n as u64, Relaxed);
}

/// A snapshot of a node's counters and gauges.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct Stats {
    /// Messages handed to a stream for sending.
    pub sent: u64,
    /// Payload bytes of those messages.
    pub bytes_sent: u64,
    /// Completions `Acked`.
    pub acked: u64,
    /// Completions `TimedOut`.
    pub timed_out: u64,
    /// Completions `Failed`.
    pub failed: u64,
    /// Messages received (duplicates included).
    pub received: u64,
    /// Payload bytes received.
    pub bytes_received: u64,
    /// Messages handed to the application (or discarded, with `Deliveries::Discard`).
    pub delivered: u64,
    /// Received messages that were duplicates (ACKed, not delivered again).
    pub duplicates: u64,
    /// Received messages refused (malformed, too large, wrong sender).
    pub rejected: u64,
    /// ACKs for messages not in flight (late, duplicated or bogus).
    pub unknown_acks: u64,
    /// ACKs dropped because no stream back to their target appeared within the TTL.
    pub unrouted_acks_dropped: u64,
    /// Transmissions that repeated an earlier one (after a link came back).
    pub retransmitted: u64,
    /// Links torn down because their peer stopped acknowledging.
    pub stalls: u64,
    /// ACKs dropped because the stream they were for had stopped reading.
    pub acks_dropped: u64,
    /// Broadcast payload frames received (duplicates included).
    pub broadcast_payloads_received: u64,
    /// Payload bytes of those frames.
    pub broadcast_bytes_received: u64,
    /// Messages in flight now (slots in use).
    pub in_flight: u64,
    /// Slots of the store.
    pub slots: u64,
    /// Neighbours whose double stream is up.
    pub neighbors_online: u64,
}

impl Counters {
    /// Copies the counters into a [`Stats`] (gauges left at zero).
    pub fn snapshot(&self) -> Stats {
        let g = |c: &AtomicU64| c.load(Relaxed);
        Stats {
            sent: g(&self.sent),
            bytes_sent: g(&self.bytes_sent),
            acked: g(&self.acked),
            timed_out: g(&self.timed_out),
            failed: g(&self.failed),
            received: g(&self.received),
            bytes_received: g(&self.bytes_received),
            delivered: g(&self.delivered),
            duplicates: g(&self.duplicates),
            rejected: g(&self.rejected),
            unknown_acks: g(&self.unknown_acks),
            unrouted_acks_dropped: g(&self.unrouted_acks_dropped),
            retransmitted: g(&self.retransmitted),
            stalls: g(&self.stalls),
            acks_dropped: g(&self.acks_dropped),
            broadcast_payloads_received: g(&self.broadcast_payloads_received),
            broadcast_bytes_received: g(&self.broadcast_bytes_received),
            ..Stats::default()
        }
    }
}
