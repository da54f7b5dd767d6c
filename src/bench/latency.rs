//! ACK latency under load: how long a small message waits for its ACK while large messages
//! saturate the same pair of nodes in both directions. The point of the double stream is that
//! ACKs do not queue behind payload; this measures whether they do.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;

use crate::config::{Deliveries, NodeConfig};
use crate::error::Error;
use crate::message::Message;
use crate::neighbor::NeighborInfo;
use crate::node::Node;
use crate::transport::factory::StreamFactory;

/// The shape of the measurement.
#[derive(Clone, Debug)]
pub struct LatencyWorkload {
    /// Small messages timed.
    pub probes: usize,
    /// Payload of each probe, in bytes.
    pub probe_bytes: usize,
    /// Pause between probes.
    pub probe_interval: Duration,
    /// Payload of the saturating messages, in bytes.
    pub bulk_bytes: usize,
    /// Store slots per node (bounds the bulk in flight).
    pub slots: usize,
}

impl Default for LatencyWorkload {
    /// 500 probes of 64 B, one per millisecond, under 512 KiB messages both ways, 200 slots.
    fn default() -> Self {
        LatencyWorkload {
            probes: 500,
            probe_bytes: 64,
            probe_interval: Duration::from_millis(1),
            bulk_bytes: 512 * 1024,
            slots: 200,
        }
    }
}

/// What was measured.
#[derive(Clone, Debug)]
pub struct LatencyReport {
    /// Send-to-ACK time of every probe, sorted.
    pub samples: Vec<Duration>,
    /// Bulk payload moved per second (both directions together) while probing, in MiB/s.
    pub bulk_mib_per_s: f64,
}

impl LatencyReport {
    /// The `q`-quantile (0 < q <= 1) of the probe latencies (nearest rank).
    pub fn quantile(&self, q: f64) -> Duration {
        if self.samples.is_empty() {
            return Duration::ZERO;
        }
        let rank = (q * self.samples.len() as f64).ceil() as usize;
        self.samples[rank.clamp(1, self.samples.len()) - 1]
    }
}

/// Runs the measurement on two fresh nodes on loopback sharing `factory`.
pub fn ack_latency_under_load(
    w: &LatencyWorkload,
    factory: Arc<StreamFactory>,
) -> Result<LatencyReport, Error> {
    let start = |id: &str| {
        let mut c = NodeConfig::new(id, "127.0.0.1:0");
        c.slots = w.slots;
        c.peer_max_messages = w.slots;
        c.deliveries = Deliveries::Discard;
        c.limits.max_payload_bytes = c.limits.max_payload_bytes.max(w.bulk_bytes);
        Node::builder(c).factory(factory.clone()).start()
    };
    let (a, b) = (start("a")?, start("b")?);
    for (x, y) in [(&a, &b), (&b, &a)] {
        x.connect_to_neighbor(NeighborInfo::new(
            y.id().as_str(),
            y.local_addr().to_string(),
        ))?;
    }
    let bulk = Bytes::from(vec![0x42; w.bulk_bytes]);
    let stop = AtomicBool::new(false);
    let result = std::thread::scope(|s| -> Result<LatencyReport, Error> {
        // Saturate both directions; each sender blocks while its slots are busy.
        for (from, to) in [(&a, "b"), (&b, "a")] {
            let (bulk, stop) = (&bulk, &stop);
            s.spawn(move || {
                for k in 0.. {
                    if stop.load(Ordering::Acquire) {
                        return;
                    }
                    let msg = Message::new(format!("bulk-{k}"), bulk.clone());
                    if from.send_message(to, msg).is_err() {
                        return;
                    }
                }
            });
        }
        // b's completions are read only to keep its slots turning over.
        let b_done = b.completions();
        let stop_ref = &stop;
        s.spawn(move || {
            while !stop_ref.load(Ordering::Acquire) {
                let _ = b_done.recv_timeout(Duration::from_millis(50));
            }
        });
        // Let the load build up before timing anything.
        std::thread::sleep(Duration::from_millis(200));
        let probe = Bytes::from(vec![7u8; w.probe_bytes]);
        let a_done = a.completions();
        let started = Instant::now();
        let mut bulk_bytes = 0u64;
        let mut samples = Vec::with_capacity(w.probes);
        let mut sent = 0;
        let mut next_probe = Instant::now();
        while samples.len() < w.probes {
            if sent < w.probes && Instant::now() >= next_probe {
                a.send_message("b", Message::new(format!("probe-{sent}"), probe.clone()))?;
                sent += 1;
                next_probe += w.probe_interval;
            }
            let wait = next_probe.saturating_duration_since(Instant::now());
            if let Ok(c) = a_done.recv_timeout(wait.max(Duration::from_micros(100))) {
                if !c.is_acked() {
                    return Err(Error::Config {
                        field: "ack-latency",
                        reason: format!("{} was not acknowledged: {}", c.key, c.outcome),
                    });
                }
                if c.key.hash.starts_with("probe-") {
                    samples.push(c.elapsed);
                } else {
                    bulk_bytes += w.bulk_bytes as u64;
                }
            }
        }
        let elapsed = started.elapsed();
        stop.store(true, Ordering::Release);
        samples.sort();
        Ok(LatencyReport {
            samples,
            // Both directions move about the same; count a's side twice.
            bulk_mib_per_s: 2.0 * bulk_bytes as f64 / (1024.0 * 1024.0) / elapsed.as_secs_f64(),
        })
    });
    // Shutting down completes whatever bulk is still in flight (as Failed(Shutdown)) and
    // unblocks the senders.
    a.shutdown();
    b.shutdown();
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_quantiles() {
        let ms = Duration::from_millis;
        let r = LatencyReport {
            samples: (1..=100).map(ms).collect(),
            bulk_mib_per_s: 0.0,
        };
        assert_eq!(r.quantile(0.5), ms(50));
        assert_eq!(r.quantile(0.99), ms(99));
        assert_eq!(r.quantile(1.0), ms(100));
        let empty = LatencyReport {
            samples: vec![],
            bulk_mib_per_s: 0.0,
        };
        assert_eq!(empty.quantile(0.5), Duration::ZERO);
    }
}
