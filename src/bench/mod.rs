//! The seed benchmark, shared by `gossip bench` and the criterion benches: a full mesh of nodes
//! on loopback, each sending `messages_per_peer` payloads to every other node (serial per
//! neighbour, parallel across neighbours); a round ends when every completion has arrived.
//!
//! [`tcp`] runs the same workload over plain blocking TCP, as a measure of what the wire allows
//! on the machine at hand.

pub mod cluster;
pub mod latency;
pub mod tcp;

use std::time::Duration;

/// The shape of one benchmark round.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Workload {
    /// Nodes in the full mesh (at least 2).
    pub nodes: usize,
    /// Messages each node sends to each other node per round.
    pub messages_per_peer: usize,
    /// Payload size of every message, in bytes.
    pub payload_bytes: usize,
    /// Store slots per node.
    pub slots: usize,
    /// Store TTL per node.
    pub ttl: Duration,
    /// Payload bytes in flight to one neighbour (`NodeConfig::peer_max_bytes`).
    pub peer_max_bytes: usize,
    /// Largest message that takes the priority lane (`NodeConfig::lane_max_bytes`; 0: off).
    pub lane_max_bytes: usize,
    /// Where each message's payload comes from.
    pub payloads: PayloadSource,
}

/// Where the benchmark's payloads come from. Payloads of 64 KiB or less (which share gRPC
/// messages with others) are always [`Shared`](PayloadSource::Shared).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum PayloadSource {
    /// One [`SharedPayload`](crate::SharedPayload), in every message: encoded once and sent
    /// without a copy, as the TCP baseline writes one buffer again and again.
    #[default]
    Shared,
    /// One buffer shared by every message as plain `Bytes`, which protobuf copies into each
    /// frame (the default until 2026-12-08).
    SharedBytes,
    /// Each payload written into a fresh `Vec` just before it is sent, then sent as `Bytes`:
    /// an application producing its data, then one copy into the frame.
    Fresh,
    /// Each payload written into a fresh [`PayloadBuf`](crate::PayloadBuf) just before it is
    /// sent: the same production, and no copy after it.
    Framed,
}

/// A payload of `len` bytes of `fill`, written where it is sent from (no second buffer, even
/// for a moment: the 64 MiB shape's peak memory counts it).
pub(crate) fn shared_payload(len: usize, fill: u8) -> crate::SharedPayload {
    let mut buf = crate::PayloadBuf::with_capacity(len);
    buf.resize(len, fill);
    crate::SharedPayload::from(buf)
}

impl PayloadSource {
    /// Message `hash` from `node` with a payload of `shared`'s length: `shared` itself (as it
    /// is or as plain `Bytes`), or one produced for the message.
    pub(crate) fn message(
        self,
        node: &crate::Node,
        hash: String,
        shared: &crate::SharedPayload,
    ) -> crate::Message {
        use crate::{Message, PayloadBuf};
        match self {
            PayloadSource::Shared => Message::shared(hash, shared),
            PayloadSource::SharedBytes => Message::new(hash, shared.payload()),
            PayloadSource::Fresh => Message::new(hash, vec![0x5a; shared.len()]),
            // Written where it will be sent from.
            PayloadSource::Framed => {
                let mut buf = PayloadBuf::with_capacity(shared.len());
                buf.resize(shared.len(), 0x5a);
                node.message(hash, buf)
            }
        }
    }
}

impl Default for Workload {
    /// The seed's parameters: 4 nodes, 30 messages of 512 KiB per directed pair, 200 slots,
    /// 120 s TTL.
    fn default() -> Self {
        Workload {
            nodes: 4,
            messages_per_peer: 30,
            payload_bytes: 512 * 1024,
            slots: 200,
            ttl: Duration::from_secs(120),
            peer_max_bytes: crate::NodeConfig::new("", "").peer_max_bytes,
            lane_max_bytes: crate::config::DEFAULT_LANE_MAX_BYTES,
            payloads: PayloadSource::Shared,
        }
    }
}

impl Workload {
    /// Messages (and completions) per round: nodes x (nodes - 1) x messages_per_peer.
    pub fn messages_per_round(&self) -> usize {
        self.nodes * self.nodes.saturating_sub(1) * self.messages_per_peer
    }

    /// Payload bytes moved per round.
    pub fn bytes_per_round(&self) -> u64 {
        self.messages_per_round() as u64 * self.payload_bytes as u64
    }
}

/// The result of one round.
#[derive(Clone, Debug)]
pub struct RoundReport {
    /// From the first send to the last completion.
    pub elapsed: Duration,
    /// Completions that were `Acked`.
    pub acked: usize,
    /// Messages the round should have completed.
    pub expected: usize,
    /// A description of each message that was not acknowledged (send errors, failures, timeouts,
    /// missing completions), at most 20.
    pub problems: Vec<String>,
    /// Send-to-ACK time of each acknowledged message, sorted (empty where it is not measured:
    /// the TCP baseline writes all frames before reading any ACK).
    pub ack_latencies: Vec<Duration>,
}

impl RoundReport {
    /// The `q`-quantile (0..=1, nearest rank) of the ACK latencies, if any were measured.
    pub fn ack_quantile(&self, q: f64) -> Option<Duration> {
        let n = self.ack_latencies.len();
        if n == 0 {
            return None;
        }
        let rank = ((q.clamp(0.0, 1.0) * n as f64).ceil() as usize).clamp(1, n);
        Some(self.ack_latencies[rank - 1])
    }

    /// Payload throughput of the round in MiB/s.
    pub fn mib_per_s(&self, workload: &Workload) -> f64 {
        workload.bytes_per_round() as f64 / (1024.0 * 1024.0) / self.elapsed.as_secs_f64()
    }

    /// True when every expected message was acknowledged.
    pub fn all_acked(&self) -> bool {
        self.acked == self.expected
    }
}

/// Minimum, median and maximum of a set of durations.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Summary {
    /// Smallest.
    pub min: Duration,
    /// Median (mean of the two middle values for an even count).
    pub median: Duration,
    /// Largest.
    pub max: Duration,
}

impl Summary {
    /// Summarises `samples`; `None` if empty.
    pub fn of(samples: &[Duration]) -> Option<Summary> {
        let mut v = samples.to_vec();
        v.sort();
        let n = v.len();
        let median = match n {
            0 => return None,
            _ if n % 2 == 1 => v[n / 2],
            _ => (v[n / 2 - 1] + v[n / 2]) / 2,
        };
        Some(Summary {
            min: v[0],
            median,
            max: v[n - 1],
        })
    }
}

/// Peak resident memory of this process so far (`VmHWM`), in bytes; `None` off Linux.
pub fn peak_rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// Resets the peak-memory mark so that [`peak_rss_bytes`] measures from now on; false where
/// the kernel does not allow it.
pub fn reset_peak_rss() -> bool {
    std::fs::write("/proc/self/clear_refs", "5").is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seed_defaults() {
        let w = Workload::default();
        assert_eq!(w.messages_per_round(), 360);
        assert_eq!(w.bytes_per_round(), 180 * 1024 * 1024);
    }

    #[test]
    fn summary_of_samples() {
        let ms = Duration::from_millis;
        let s = Summary::of(&[ms(3), ms(1), ms(2)]).unwrap();
        assert_eq!((s.min, s.median, s.max), (ms(1), ms(2), ms(3)));
        assert_eq!(Summary::of(&[ms(1), ms(3)]).unwrap().median, ms(2));
        assert!(Summary::of(&[]).is_none());
    }

    #[test]
    fn peak_rss_is_readable_on_linux() {
        if cfg!(target_os = "linux") {
            assert!(peak_rss_bytes().unwrap() > 0);
        }
    }
}
