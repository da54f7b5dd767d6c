//! A full mesh of real [`Node`]s on loopback running the seed workload.

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::{shared_payload, PayloadSource, RoundReport, Workload};
use crate::config::{Deliveries, NodeConfig};
use crate::error::Error;
use crate::message::Outcome;
use crate::neighbor::NeighborInfo;
use crate::node::Node;
use crate::payload::{SharedPayload, FRAME_ALONE_MIN};
use crate::transport::factory::StreamFactory;

/// Most problems listed in a [`RoundReport`].
const MAX_PROBLEMS: usize = 20;

/// Nodes `node-0` .. `node-{n-1}`, connected in a full mesh.
pub struct GossipCluster {
    nodes: Vec<Node>,
    workload: Workload,
    /// The one payload of `PayloadSource::Shared` (and `SharedBytes`).
    payload: SharedPayload,
}

impl std::fmt::Debug for GossipCluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GossipCluster")
            .field("nodes", &self.nodes.len())
            .field("workload", &self.workload)
            .finish_non_exhaustive()
    }
}

impl GossipCluster {
    /// Starts `workload.nodes` nodes on `127.0.0.1:0` sharing `factory`, and connects every
    /// node to every other. Received payloads are discarded (the benchmark reads completions
    /// only).
    pub fn start(workload: &Workload, factory: Arc<StreamFactory>) -> Result<GossipCluster, Error> {
        GossipCluster::start_with(workload, |_| Ok(factory.clone()))
    }

    /// As [`start`](GossipCluster::start), with the factory of each node (by id) from
    /// `factory_for`: with TLS, each node needs one holding its own certificate.
    pub fn start_with(
        workload: &Workload,
        factory_for: impl Fn(&str) -> Result<Arc<StreamFactory>, Error>,
    ) -> Result<GossipCluster, Error> {
        if workload.nodes < 2 {
            return Err(Error::Config {
                field: "nodes",
                reason: "need at least 2".into(),
            });
        }
        let mut nodes = Vec::with_capacity(workload.nodes);
        for i in 0..workload.nodes {
            let id = format!("node-{i}");
            let factory = factory_for(&id)?;
            let mut config = NodeConfig::new(id, "127.0.0.1:0");
            config.slots = workload.slots;
            config.peer_max_bytes = workload.peer_max_bytes;
            config.lane_max_bytes = workload.lane_max_bytes;
            config.ttl = workload.ttl;
            config.deliveries = Deliveries::Discard;
            config.limits.max_payload_bytes =
                config.limits.max_payload_bytes.max(workload.payload_bytes);
            nodes.push(Node::builder(config).factory(factory.clone()).start()?);
        }
        for a in &nodes {
            for b in &nodes {
                if a.id() != b.id() {
                    a.connect_to_neighbor(NeighborInfo::new(
                        b.id().as_str(),
                        b.local_addr().to_string(),
                    ))?;
                }
            }
        }
        Ok(GossipCluster {
            nodes,
            workload: workload.clone(),
            payload: shared_payload(workload.payload_bytes, 0x5a),
        })
    }

    /// The nodes.
    pub fn nodes(&self) -> &[Node] {
        &self.nodes
    }

    /// Runs one round; `round` makes the hashes unique across rounds.
    pub fn run_round(&self, round: usize) -> RoundReport {
        let w = &self.workload;
        let start = Instant::now();
        let mut problems = Vec::new();
        // Per node: how many sends were accepted (each owes one completion).
        let accepted: Vec<usize> = std::thread::scope(|s| {
            let mut senders = Vec::new();
            for (i, node) in self.nodes.iter().enumerate() {
                for (j, peer) in self.nodes.iter().enumerate() {
                    if i == j {
                        continue;
                    }
                    let payload = &self.payload;
                    let source = match payload.len() > FRAME_ALONE_MIN {
                        true => w.payloads,
                        false => PayloadSource::Shared,
                    };
                    senders.push((
                        i,
                        s.spawn(move || {
                            let mut ok = 0;
                            let mut errors = Vec::new();
                            for k in 0..w.messages_per_peer {
                                let hash = format!("r{round}-{i}-{j}-{k}");
                                let msg = source.message(node, hash, payload);
                                match node.send_message(peer.id().as_str(), msg) {
                                    Ok(_) => ok += 1,
                                    Err(e) => errors.push(format!("send {i}->{j} #{k}: {e}")),
                                }
                            }
                            (ok, errors)
                        }),
                    ));
                }
            }
            let mut accepted = vec![0; self.nodes.len()];
            for (i, handle) in senders {
                let (ok, errors) = handle.join().unwrap_or((0, vec!["sender panicked".into()]));
                accepted[i] += ok;
                problems.extend(errors);
            }
            accepted
        });
        let mut acked = 0;
        let mut ack_latencies = Vec::with_capacity(w.messages_per_round());
        let deadline = start + w.ttl + Duration::from_secs(10);
        for (node, owed) in self.nodes.iter().zip(accepted) {
            let completions = node.completions();
            for _ in 0..owed {
                match completions.recv_deadline(deadline) {
                    Ok(c) if matches!(c.outcome, Outcome::Acked { .. }) => {
                        acked += 1;
                        ack_latencies.push(c.elapsed);
                    }
                    Ok(c) => problems.push(format!("{}: {}", c.key, c.outcome)),
                    Err(_) => {
                        problems.push(format!("{}: completion missing", node.id()));
                        break;
                    }
                }
            }
        }
        let elapsed = start.elapsed();
        problems.truncate(MAX_PROBLEMS);
        ack_latencies.sort();
        RoundReport {
            elapsed,
            acked,
            expected: w.messages_per_round(),
            problems,
            ack_latencies,
        }
    }

    /// Shuts every node down.
    pub fn shutdown(self) {
        for node in &self.nodes {
            node.shutdown();
        }
    }
}
