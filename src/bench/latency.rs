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
    /// Time from one probe's send to the next's (a probe is sent only once the previous one is
    /// acknowledged).
    pub probe_interval: Duration,
    /// Payload of the saturating messages, in bytes.
    pub bulk_bytes: usize,
    /// Store slots per node (bounds the bulk in flight).
    pub slots: usize,
    /// Payload bytes in flight to one neighbour (`NodeConfig::peer_max_bytes`).
    pub peer_max_bytes: usize,
    /// Largest message that takes the priority lane (`NodeConfig::lane_max_bytes`; 0: off).
    pub lane_max_bytes: usize,
    /// Where the saturating messages' payloads come from.
    pub bulk_payloads: super::PayloadSource,
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
            peer_max_bytes: NodeConfig::new("", "").peer_max_bytes,
            lane_max_bytes: crate::config::DEFAULT_LANE_MAX_BYTES,
            bulk_payloads: super::PayloadSource::Shared,
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

/// Two nodes on loopback with bulk traffic running both ways, ready to time probes.
pub struct LoadedPair {
    a: Arc<Node>,
    b: Arc<Node>,
    stop: Arc<AtomicBool>,
    threads: Vec<std::thread::JoinHandle<()>>,
    probe: Bytes,
    bulk_bytes: usize,
    bulk_done: u64,
    next_probe: u64,
}

impl std::fmt::Debug for LoadedPair {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoadedPair")
            .field("a", &self.a.id())
            .field("b", &self.b.id())
            .field("bulk_bytes", &self.bulk_bytes)
            .finish_non_exhaustive()
    }
}

impl LoadedPair {
    /// Starts nodes `a` and `b` sharing `factory`, links them both ways, and starts one thread
    /// per direction sending `w.bulk_bytes` messages as fast as the slots allow.
    pub fn start(w: &LatencyWorkload, factory: Arc<StreamFactory>) -> Result<LoadedPair, Error> {
        let start = |id: &str| {
            let mut c = NodeConfig::new(id, "127.0.0.1:0");
            c.slots = w.slots;
            c.peer_max_messages = w.slots;
            c.peer_max_bytes = w.peer_max_bytes;
            c.lane_max_bytes = w.lane_max_bytes;
            c.deliveries = Deliveries::Discard;
            c.limits.max_payload_bytes = c.limits.max_payload_bytes.max(w.bulk_bytes);
            Node::builder(c)
                .factory(factory.clone())
                .start()
                .map(Arc::new)
        };
        let (a, b) = (start("a")?, start("b")?);
        for (x, y) in [(&a, &b), (&b, &a)] {
            x.connect_to_neighbor(NeighborInfo::new(
                y.id().as_str(),
                y.local_addr().to_string(),
            ))?;
        }
        let stop = Arc::new(AtomicBool::new(false));
        let bulk = super::shared_payload(w.bulk_bytes, 0x42);
        let source = w.bulk_payloads;
        let mut threads = Vec::new();
        for (from, to) in [(a.clone(), "b"), (b.clone(), "a")] {
            let (bulk, stop) = (bulk.clone(), stop.clone());
            threads.push(std::thread::spawn(move || {
                for k in 0.. {
                    if stop.load(Ordering::Acquire) {
                        return;
                    }
                    let msg = source.message(&from, format!("bulk-{k}"), &bulk);
                    if from.send_message(to, msg).is_err() {
                        return;
                    }
                }
            }));
        }
        // b's completions are read only so that they do not pile up.
        let (b_done, stop_ref) = (b.completions(), stop.clone());
        threads.push(std::thread::spawn(move || {
            while !stop_ref.load(Ordering::Acquire) {
                let _ = b_done.recv_timeout(Duration::from_millis(50));
            }
        }));
        Ok(LoadedPair {
            a,
            b,
            stop,
            threads,
            probe: Bytes::from(vec![7u8; w.probe_bytes]),
            bulk_bytes: w.bulk_bytes,
            bulk_done: 0,
            next_probe: 0,
        })
    }

    /// Sends one probe from a to b and returns its send-to-ACK time.
    pub fn probe(&mut self) -> Result<Duration, Error> {
        let hash = format!("probe-{}", self.next_probe);
        self.next_probe += 1;
        self.a
            .send_message("b", Message::new(hash.clone(), self.probe.clone()))?;
        let done = self.a.completions();
        loop {
            let c = done
                .recv_timeout(Duration::from_secs(60))
                .map_err(|_| Error::Timeout(Duration::from_secs(60)))?;
            if !c.is_acked() {
                return Err(Error::Config {
                    field: "ack-latency",
                    reason: format!("{} was not acknowledged: {}", c.key, c.outcome),
                });
            }
            if c.key.hash == hash {
                return Ok(c.elapsed);
            }
            self.bulk_done += 1;
        }
    }

    /// Bulk payload bytes a has seen acknowledged so far.
    pub fn bulk_bytes_acked(&self) -> u64 {
        self.bulk_done * self.bulk_bytes as u64
    }

    /// Stops the bulk traffic and both nodes (bulk still in flight completes as `Failed`).
    pub fn stop(self) {
        self.stop.store(true, Ordering::Release);
        // Shutting down unblocks senders waiting for slots.
        self.a.shutdown();
        self.b.shutdown();
        for t in self.threads {
            let _ = t.join();
        }
    }
}

/// Runs the measurement on two fresh nodes on loopback sharing `factory`: `w.probes` probes,
/// one per `w.probe_interval` (or as soon as the previous one is acknowledged, if later).
pub fn ack_latency_under_load(
    w: &LatencyWorkload,
    factory: Arc<StreamFactory>,
) -> Result<LatencyReport, Error> {
    let mut pair = LoadedPair::start(w, factory)?;
    // Let the load build up before timing anything.
    std::thread::sleep(Duration::from_millis(200));
    let started = Instant::now();
    let mut samples = Vec::with_capacity(w.probes);
    let result = (|| {
        for _ in 0..w.probes {
            let next = Instant::now() + w.probe_interval;
            samples.push(pair.probe()?);
            std::thread::sleep(next.saturating_duration_since(Instant::now()));
        }
        Ok::<(), Error>(())
    })();
    let elapsed = started.elapsed();
    let bulk = pair.bulk_bytes_acked();
    pair.stop();
    result?;
    samples.sort();
    Ok(LatencyReport {
        samples,
        // Both directions move about the same; count a's side twice.
        bulk_mib_per_s: 2.0 * bulk as f64 / (1024.0 * 1024.0) / elapsed.as_secs_f64(),
    })
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
