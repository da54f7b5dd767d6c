//! Counters a node keeps, readable at any time through [`Node::stats`](crate::Node::stats)
//! and, with per-peer figures, queue depths and the ACK latency histogram, through
//! [`Node::metrics`](crate::Node::metrics).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::RwLock;

use crate::id::NodeId;

/// Peers counted one by one; traffic with any further peer is summed under
/// [`OTHER_PEERS`], so that a node talking to many short-lived peers keeps bounded memory
/// (and a metrics scrape of bounded size).
pub const MAX_COUNTED_PEERS: usize = 1024;

/// The label under which peers beyond [`MAX_COUNTED_PEERS`] are counted together.
pub const OTHER_PEERS: &str = "_other";

/// Upper bounds (seconds) of the ACK latency histogram's buckets; the last bucket is unbounded.
pub const ACK_LATENCY_BUCKETS: [f64; 16] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
    60.0,
];

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
    pub(crate) declined: AtomicU64,
    pub(crate) refused_busy: AtomicU64,
    pub(crate) refused_broadcast: AtomicU64,
    pub(crate) broadcast_frames_dropped: AtomicU64,
    pub(crate) broadcast_frames_too_large: AtomicU64,
    pub(crate) membership_frames_sent: AtomicU64,
    pub(crate) membership_frames_received: AtomicU64,
    pub(crate) membership_frames_dropped: AtomicU64,
    pub(crate) membership_frames_refused: AtomicU64,
    pub(crate) refused_peer_streams: AtomicU64,
    pub(crate) refused_inbound_streams: AtomicU64,
    pub(crate) refused_unidentified_streams: AtomicU64,
    pub(crate) partial_bytes: AtomicU64,
    pub(crate) retry_answers: AtomicU64,
    pub(crate) awaiting_confirmation: AtomicU64,
    pub(crate) broadcast_payloads_received: AtomicU64,
    pub(crate) broadcast_bytes_received: AtomicU64,
    pub(crate) broadcast_delivered: AtomicU64,
    pub(crate) broadcasts_started: AtomicU64,
    pub(crate) broadcasts_converged: AtomicU64,
    pub(crate) broadcasts_incomplete: AtomicU64,
    pub(crate) broadcast_reached: AtomicU64,
    pub(crate) broadcast_missing: AtomicU64,
    pub(crate) ack_latency: LatencyHistogram,
    pub(crate) peers: PeerTable,
}

/// Counters of the traffic with one peer.
#[derive(Default, Debug)]
pub(crate) struct PeerCounters {
    pub(crate) sent: AtomicU64,
    pub(crate) bytes_sent: AtomicU64,
    pub(crate) acked: AtomicU64,
    pub(crate) timed_out: AtomicU64,
    pub(crate) failed: AtomicU64,
    pub(crate) received: AtomicU64,
    pub(crate) bytes_received: AtomicU64,
    pub(crate) delivered: AtomicU64,
}

/// Per-peer counters, at most [`MAX_COUNTED_PEERS`] of them plus the overflow bucket.
#[derive(Default, Debug)]
pub(crate) struct PeerTable {
    peers: RwLock<HashMap<NodeId, Arc<PeerCounters>>>,
    other: Arc<PeerCounters>,
}

impl PeerTable {
    /// The counters of `peer` (created on first use, or the overflow bucket once the table is
    /// full).
    pub(crate) fn of(&self, peer: &NodeId) -> Arc<PeerCounters> {
        if let Some(c) = self.peers.read().get(peer) {
            return c.clone();
        }
        let mut peers = self.peers.write();
        if peers.len() >= MAX_COUNTED_PEERS && !peers.contains_key(peer) {
            return self.other.clone();
        }
        peers.entry(peer.clone()).or_default().clone()
    }

    fn snapshot(&self) -> Vec<PeerStats> {
        let load = |peer: &str, c: &PeerCounters| {
            let g = |a: &AtomicU64| a.load(Relaxed);
            PeerStats {
                peer: peer.to_owned(),
                sent: g(&c.sent),
                bytes_sent: g(&c.bytes_sent),
                acked: g(&c.acked),
                timed_out: g(&c.timed_out),
                failed: g(&c.failed),
                received: g(&c.received),
                bytes_received: g(&c.bytes_received),
                delivered: g(&c.delivered),
                online: false,
            }
        };
        let peers = self.peers.read();
        let mut out: Vec<PeerStats> = peers.iter().map(|(p, c)| load(p.as_str(), c)).collect();
        out.sort_by(|a, b| a.peer.cmp(&b.peer));
        if peers.len() >= MAX_COUNTED_PEERS {
            out.push(load(OTHER_PEERS, &self.other));
        }
        out
    }
}

/// A histogram with fixed buckets ([`ACK_LATENCY_BUCKETS`]), updated with relaxed atomics.
#[derive(Debug, Default)]
pub(crate) struct LatencyHistogram {
    /// One count per bucket, plus the unbounded one.
    buckets: [AtomicU64; ACK_LATENCY_BUCKETS.len() + 1],
    sum_micros: AtomicU64,
}

impl LatencyHistogram {
    pub(crate) fn record(&self, d: Duration) {
        let s = d.as_secs_f64();
        let i = ACK_LATENCY_BUCKETS.partition_point(|&bound| bound < s);
        self.buckets[i].fetch_add(1, Relaxed);
        let micros = u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
        self.sum_micros.fetch_add(micros, Relaxed);
    }

    fn snapshot(&self) -> Histogram {
        Histogram {
            bounds: ACK_LATENCY_BUCKETS.to_vec(),
            counts: self.buckets.iter().map(|b| b.load(Relaxed)).collect(),
            sum_seconds: self.sum_micros.load(Relaxed) as f64 / 1e6,
        }
    }
}

/// A snapshot of a histogram.
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize)]
pub struct Histogram {
    /// Upper bounds (inclusive) of the buckets, in seconds, ascending.
    pub bounds: Vec<f64>,
    /// Observations per bucket (not cumulative): one more than `bounds`, the last for
    /// observations above every bound.
    pub counts: Vec<u64>,
    /// Sum of all observations, in seconds.
    pub sum_seconds: f64,
}

impl Histogram {
    /// Number of observations.
    pub fn count(&self) -> u64 {
        self.counts.iter().sum()
    }
}

/// Traffic with one peer (or with [`OTHER_PEERS`]), as counted by this node.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct PeerStats {
    /// The peer's id, or [`OTHER_PEERS`].
    pub peer: String,
    /// Messages handed to the peer's stream (retransmissions included).
    pub sent: u64,
    /// Payload bytes of those messages.
    pub bytes_sent: u64,
    /// Messages to the peer completed `Acked`.
    pub acked: u64,
    /// Messages to the peer completed `TimedOut`.
    pub timed_out: u64,
    /// Messages to the peer completed `Failed`.
    pub failed: u64,
    /// Messages received from the peer (duplicates included).
    pub received: u64,
    /// Payload bytes received from the peer.
    pub bytes_received: u64,
    /// Messages from the peer handed to the application.
    pub delivered: u64,
    /// Whether the double stream to the peer is up now (a neighbour's state).
    pub online: bool,
}

/// Lengths of the queues between the node's threads and the application.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct QueueDepths {
    /// Deliveries waiting for the application to take them.
    pub deliveries: u64,
    /// Completions waiting for the application to take them.
    pub completions: u64,
    /// Broadcast completions waiting for the application to take them.
    pub broadcast_completions: u64,
    /// Inputs (frames, sends, events) waiting for the node's manager thread.
    pub inbox: u64,
}

/// Everything a node measures, for monitoring: see [`crate::metrics`] for the Prometheus
/// exposition.
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize)]
pub struct Metrics {
    /// The node's id.
    pub node: String,
    /// Node-wide counters and gauges.
    pub stats: Stats,
    /// Per-peer traffic, sorted by peer, with neighbours' online state.
    pub peers: Vec<PeerStats>,
    /// Send-to-ACK time of messages completed `Acked`.
    pub ack_latency: Histogram,
    /// Queue lengths now.
    pub queues: QueueDepths,
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
    /// Deliveries the application declined or dropped without confirming (acknowledged
    /// deliveries); their senders were asked to send them again.
    pub declined: u64,
    /// Messages refused for want of room (the partly received messages' byte budget): told
    /// to retry later.
    pub refused_busy: u64,
    /// Broadcasts refused because their payloads would exceed the broadcast byte budget
    /// (`BroadcastConfig::max_held_bytes`); they count as missing at the node that offered them.
    pub refused_broadcast: u64,
    /// Broadcast frames not queued for a neighbour whose writer already held too much (it
    /// reads slower than broadcasts come); their offers count as missing.
    pub broadcast_frames_dropped: u64,
    /// Broadcast payloads not sent to an original neighbour because they are larger than it
    /// takes ([`NeighborInfo::max_message`](crate::NeighborInfo::max_message)); their offers
    /// count as missing.
    pub broadcast_frames_too_large: u64,
    /// Membership frames (views and member list, see [`crate::membership`]) sent.
    pub membership_frames_sent: u64,
    /// Membership frames received.
    pub membership_frames_received: u64,
    /// Membership frames not sent: no link to the member, or one that does not speak it.
    pub membership_frames_dropped: u64,
    /// Membership frames from peers refused as malformed (logged with the reason).
    pub membership_frames_refused: u64,
    /// Incoming calls refused because their peer id had `max_streams_per_peer` streams open.
    pub refused_peer_streams: u64,
    /// Incoming calls refused because `max_inbound_streams` streams were open in all.
    pub refused_inbound_streams: u64,
    /// Incoming calls without an id refused because `max_unidentified_streams` were waiting
    /// for their first frame.
    pub refused_unidentified_streams: u64,
    /// Bytes of partly received (chunked) messages held now, as announced by their senders.
    pub partial_bytes: u64,
    /// `Retry` answers received: messages of ours a receiver did not take, sent again later.
    pub retry_answers: u64,
    /// Deliveries waiting for the application's confirmation now (acknowledged deliveries).
    pub awaiting_confirmation: u64,
    /// Broadcast payload frames received (duplicates included).
    pub broadcast_payloads_received: u64,
    /// Payload bytes of those frames.
    pub broadcast_bytes_received: u64,
    /// Broadcast payload frames received that were not delivered: copies of broadcasts this
    /// node already had (or started). Refused payloads are in `refused_broadcast` instead.
    pub broadcast_duplicate_payloads: u64,
    /// Broadcasts this node started.
    pub broadcasts_started: u64,
    /// Broadcasts of this node that completed with every offer answered.
    pub broadcasts_converged: u64,
    /// Broadcasts of this node that completed with subtrees missing (deadline or lost links).
    pub broadcasts_incomplete: u64,
    /// Nodes reached, summed over this node's completed broadcasts.
    pub broadcast_reached: u64,
    /// Nodes reported missing, summed over this node's completed broadcasts.
    pub broadcast_missing: u64,
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
            declined: g(&self.declined),
            refused_busy: g(&self.refused_busy),
            refused_broadcast: g(&self.refused_broadcast),
            broadcast_frames_dropped: g(&self.broadcast_frames_dropped),
            broadcast_frames_too_large: g(&self.broadcast_frames_too_large),
            membership_frames_sent: g(&self.membership_frames_sent),
            membership_frames_received: g(&self.membership_frames_received),
            membership_frames_dropped: g(&self.membership_frames_dropped),
            membership_frames_refused: g(&self.membership_frames_refused),
            refused_peer_streams: g(&self.refused_peer_streams),
            refused_inbound_streams: g(&self.refused_inbound_streams),
            refused_unidentified_streams: g(&self.refused_unidentified_streams),
            partial_bytes: g(&self.partial_bytes),
            retry_answers: g(&self.retry_answers),
            awaiting_confirmation: g(&self.awaiting_confirmation),
            broadcast_payloads_received: g(&self.broadcast_payloads_received),
            broadcast_bytes_received: g(&self.broadcast_bytes_received),
            broadcast_duplicate_payloads: g(&self.broadcast_payloads_received)
                .saturating_sub(g(&self.broadcast_delivered))
                .saturating_sub(g(&self.refused_broadcast)),
            broadcasts_started: g(&self.broadcasts_started),
            broadcasts_converged: g(&self.broadcasts_converged),
            broadcasts_incomplete: g(&self.broadcasts_incomplete),
            broadcast_reached: g(&self.broadcast_reached),
            broadcast_missing: g(&self.broadcast_missing),
            ..Stats::default()
        }
    }

    /// Per-peer counters, sorted by peer (neighbours' online state left false).
    pub(crate) fn peer_snapshot(&self) -> Vec<PeerStats> {
        self.peers.snapshot()
    }

    /// The ACK latency histogram.
    pub(crate) fn ack_latency_snapshot(&self) -> Histogram {
        self.ack_latency.snapshot()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::limits::Limits;

    #[test]
    fn latency_lands_in_the_first_bucket_that_holds_it() {
        let h = LatencyHistogram::default();
        h.record(Duration::from_micros(500)); // exactly on the first bound
        h.record(Duration::from_millis(3));
        h.record(Duration::from_secs(3600));
        let s = h.snapshot();
        assert_eq!(s.counts.len(), ACK_LATENCY_BUCKETS.len() + 1);
        assert_eq!(s.counts[0], 1);
        assert_eq!(s.counts[3], 1, "3 ms is within (2.5 ms, 5 ms]");
        assert_eq!(*s.counts.last().unwrap(), 1);
        assert_eq!(s.count(), 3);
        assert!((s.sum_seconds - 3600.0035).abs() < 1e-6);
    }

    #[test]
    fn peers_beyond_the_cap_share_one_bucket() {
        let table = PeerTable::default();
        let limits = Limits::default();
        for i in 0..MAX_COUNTED_PEERS + 10 {
            let peer = NodeId::new(&format!("p{i}"), &limits).unwrap();
            bump(&table.of(&peer).sent);
        }
        let again = NodeId::new("p0", &limits).unwrap();
        bump(&table.of(&again).sent);
        let snap = table.snapshot();
        assert_eq!(snap.len(), MAX_COUNTED_PEERS + 1);
        let other = snap.last().unwrap();
        assert_eq!((other.peer.as_str(), other.sent), (OTHER_PEERS, 10));
        let p0 = snap.iter().find(|p| p.peer == "p0").unwrap();
        assert_eq!(p0.sent, 2);
    }
}
