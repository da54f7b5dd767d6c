//! Prometheus metrics: a [`NodeCollector`] that turns a node's [`Metrics`] into Prometheus
//! families at scrape time, and a small HTTP server (`MetricsServer`, feature `metrics-server`)
//! that serves them as text on `GET /metrics`.
//!
//! Nothing is kept twice: the node's own atomics are read when Prometheus scrapes, so metrics
//! cost nothing between scrapes. Every family carries a `node` label; per-peer families add a
//! `peer` label (at most [`MAX_COUNTED_PEERS`](crate::stats::MAX_COUNTED_PEERS) peers, the rest
//! summed under [`OTHER_PEERS`](crate::stats::OTHER_PEERS)).
//!
//! | family | type | labels | what |
//! |---|---|---|---|
//! | `gossip_messages_sent_total` | counter | peer | messages written to the peer's stream (retransmissions and broadcast payloads included) |
//! | `gossip_bytes_sent_total` | counter | peer | payload bytes of those |
//! | `gossip_messages_received_total` | counter | peer | messages and broadcast payloads received (duplicates included) |
//! | `gossip_bytes_received_total` | counter | peer | payload bytes of those |
//! | `gossip_messages_delivered_total` | counter | peer | messages handed to the application |
//! | `gossip_completions_total` | counter | peer, outcome | completions: `acked`, `timed_out`, `failed` |
//! | `gossip_retransmissions_total` | counter | | transmissions that repeated an earlier one |
//! | `gossip_duplicates_total` | counter | | received duplicates (ACKed, not delivered) |
//! | `gossip_rejected_total` | counter | | received frames refused |
//! | `gossip_unknown_acks_total` | counter | | ACKs for messages not in flight |
//! | `gossip_stalls_total` | counter | | links torn down for not acknowledging |
//! | `gossip_acks_dropped_total` | counter | reason | ACKs dropped: `stream_closed`, `unrouted` |
//! | `gossip_refusals_total` | counter | reason | refused for want of room: `partial_budget` (a chunked message, sent again later), `broadcast_budget` (a broadcast, counted missing), `writer_backlog` (a broadcast frame not queued for a slow reader), `original_limit` (a broadcast payload larger than an original neighbour takes, counted missing), `peer_streams` / `inbound_streams` / `unidentified_streams` (an incoming call over `max_streams_per_peer` / `max_inbound_streams` / `max_unidentified_streams`, ended with `RESOURCE_EXHAUSTED`) |
//! | `gossip_partial_bytes` | gauge | | bytes of partly received (chunked) messages held, as announced |
//! | `gossip_deliveries_declined_total` | counter | | deliveries the application declined or dropped unconfirmed (sent again by their senders) |
//! | `gossip_retry_answers_total` | counter | | `Retry` answers to our messages (sent again later) |
//! | `gossip_awaiting_confirmation` | gauge | | deliveries waiting for the application's confirmation |
//! | `gossip_broadcasts_started_total` | counter | | broadcasts this node started |
//! | `gossip_broadcasts_completed_total` | counter | result | this node's broadcasts completed: `converged` (every offer answered) or `incomplete` (subtrees missing) |
//! | `gossip_broadcast_reached_total` | counter | | nodes reached, summed over completed broadcasts |
//! | `gossip_broadcast_missing_total` | counter | | nodes reported missing, summed over completed broadcasts |
//! | `gossip_broadcast_duplicate_payloads_total` | counter | | broadcast payload copies received and not delivered (already had them) |
//! | `gossip_membership_frames_total` | counter | result | membership frames: `sent`, `received`, `dropped` (no link, or a peer that does not speak it), `refused` (malformed) |
//! | `gossip_slots_in_use` / `gossip_slots` | gauge | | messages in flight / store capacity |
//! | `gossip_peer_online` | gauge | peer | 1 while the double stream to the neighbour is up |
//! | `gossip_neighbors_online` | gauge | | neighbours up |
//! | `gossip_queue_depth` | gauge | queue | `deliveries`, `completions`, `broadcast_completions`, `inbox` |
//! | `gossip_ack_latency_seconds` | histogram | | send-to-ACK time of `Acked` messages |

use std::collections::HashMap;
use std::sync::Arc;

use prometheus::core::{Collector, Desc};
use prometheus::proto::{
    Bucket, Counter, Gauge, Histogram, LabelPair, Metric, MetricFamily, MetricType,
};
use prometheus::{Encoder, Registry, TextEncoder};

use crate::error::Error;
use crate::node::Node;
use crate::stats::Metrics;

#[cfg(feature = "metrics-server")]
mod server;
#[cfg(feature = "metrics-server")]
pub use server::{MetricsServer, Readiness};

/// One family: name, help, type and variable labels.
struct Family {
    name: &'static str,
    help: &'static str,
    kind: MetricType,
    labels: &'static [&'static str],
}

const fn family(
    name: &'static str,
    help: &'static str,
    kind: MetricType,
    labels: &'static [&'static str],
) -> Family {
    Family {
        name,
        help,
        kind,
        labels,
    }
}

use MetricType::{COUNTER, GAUGE, HISTOGRAM};

const FAMILIES: &[Family] = &[
    family(
        "gossip_messages_sent_total",
        "Messages written to a peer's stream (retransmissions and broadcast payloads included).",
        COUNTER,
        &["peer"],
    ),
    family(
        "gossip_bytes_sent_total",
        "Payload bytes written to a peer's stream.",
        COUNTER,
        &["peer"],
    ),
    family(
        "gossip_messages_received_total",
        "Messages and broadcast payloads received from a peer (duplicates included).",
        COUNTER,
        &["peer"],
    ),
    family(
        "gossip_bytes_received_total",
        "Payload bytes received from a peer.",
        COUNTER,
        &["peer"],
    ),
    family(
        "gossip_messages_delivered_total",
        "Messages from a peer handed to the application.",
        COUNTER,
        &["peer"],
    ),
    family(
        "gossip_completions_total",
        "Messages to a peer completed, by outcome.",
        COUNTER,
        &["peer", "outcome"],
    ),
    family(
        "gossip_retransmissions_total",
        "Transmissions that repeated an earlier one after a link came back.",
        COUNTER,
        &[],
    ),
    family(
        "gossip_duplicates_total",
        "Received messages that were duplicates (ACKed, not delivered again).",
        COUNTER,
        &[],
    ),
    family(
        "gossip_broadcasts_started_total",
        "Broadcasts this node started.",
        COUNTER,
        &[],
    ),
    family(
        "gossip_broadcasts_completed_total",
        "Broadcasts of this node completed: converged (every offer answered) or incomplete.",
        COUNTER,
        &["result"],
    ),
    family(
        "gossip_membership_frames_total",
        "Membership frames: sent, received, dropped (no link) or refused (malformed).",
        COUNTER,
        &["result"],
    ),
    family(
        "gossip_broadcast_reached_total",
        "Nodes reached, summed over this node's completed broadcasts.",
        COUNTER,
        &[],
    ),
    family(
        "gossip_broadcast_missing_total",
        "Nodes reported missing, summed over this node's completed broadcasts.",
        COUNTER,
        &[],
    ),
    family(
        "gossip_broadcast_duplicate_payloads_total",
        "Broadcast payload copies received and not delivered (this node already had them).",
        COUNTER,
        &[],
    ),
    family(
        "gossip_refusals_total",
        "Messages and broadcasts refused for want of room, by budget.",
        COUNTER,
        &["reason"],
    ),
    family(
        "gossip_partial_bytes",
        "Bytes of partly received (chunked) messages held, as announced by their senders.",
        GAUGE,
        &[],
    ),
    family(
        "gossip_deliveries_declined_total",
        "Deliveries the application declined or dropped unconfirmed; their senders send them again.",
        COUNTER,
        &[],
    ),
    family(
        "gossip_retry_answers_total",
        "Retry answers to our messages: the receiver did not take them now; sent again later.",
        COUNTER,
        &[],
    ),
    family(
        "gossip_awaiting_confirmation",
        "Deliveries waiting for the application's confirmation.",
        GAUGE,
        &[],
    ),
    family(
        "gossip_rejected_total",
        "Received frames refused (malformed, too large, wrong sender).",
        COUNTER,
        &[],
    ),
    family(
        "gossip_unknown_acks_total",
        "ACKs for messages not in flight (late, duplicated or bogus).",
        COUNTER,
        &[],
    ),
    family(
        "gossip_stalls_total",
        "Links torn down because their peer stopped acknowledging.",
        COUNTER,
        &[],
    ),
    family(
        "gossip_acks_dropped_total",
        "ACKs dropped, by reason.",
        COUNTER,
        &["reason"],
    ),
    family(
        "gossip_slots_in_use",
        "Messages in flight (store slots in use).",
        GAUGE,
        &[],
    ),
    family("gossip_slots", "Store slots.", GAUGE, &[]),
    family(
        "gossip_peer_online",
        "1 while the double stream to the neighbour is up.",
        GAUGE,
        &["peer"],
    ),
    family(
        "gossip_neighbors_online",
        "Neighbours whose double stream is up.",
        GAUGE,
        &[],
    ),
    family(
        "gossip_queue_depth",
        "Items waiting in a queue between the node's threads and the application.",
        GAUGE,
        &["queue"],
    ),
    family(
        "gossip_ack_latency_seconds",
        "Send-to-ACK time of messages completed Acked.",
        HISTOGRAM,
        &[],
    ),
];

/// A Prometheus [`Collector`] reading a node's [`Metrics`] at each scrape.
pub struct NodeCollector {
    source: Box<dyn Fn() -> Metrics + Send + Sync>,
    descs: Vec<Desc>,
    node: String,
}

impl std::fmt::Debug for NodeCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeCollector")
            .field("node", &self.node)
            .finish_non_exhaustive()
    }
}

impl NodeCollector {
    /// A collector for `node`.
    pub fn new(node: Arc<Node>) -> Result<NodeCollector, Error> {
        let id = node.id().to_string();
        NodeCollector::from_source(id, move || node.metrics())
    }

    /// A collector for any source of [`Metrics`] (e.g. a node held some other way), labelled
    /// `node="<node>"`.
    pub fn from_source(
        node: impl Into<String>,
        source: impl Fn() -> Metrics + Send + Sync + 'static,
    ) -> Result<NodeCollector, Error> {
        let node = node.into();
        let const_labels = HashMap::from([("node".to_owned(), node.clone())]);
        let descs = FAMILIES
            .iter()
            .map(|f| {
                Desc::new(
                    f.name.into(),
                    f.help.into(),
                    f.labels.iter().map(|l| l.to_string()).collect(),
                    const_labels.clone(),
                )
                .map_err(|e| prometheus_error("metric description", e))
            })
            .collect::<Result<_, _>>()?;
        Ok(NodeCollector {
            source: Box::new(source),
            descs,
            node,
        })
    }

    fn metric(&self, labels: &[(&str, &str)]) -> Metric {
        let mut pairs: Vec<LabelPair> = std::iter::once(("node", self.node.as_str()))
            .chain(labels.iter().copied())
            .map(|(name, value)| {
                let mut p = LabelPair::default();
                p.set_name(name.to_owned());
                p.set_value(value.to_owned());
                p
            })
            .collect();
        pairs.sort_by(|a, b| a.get_name().cmp(b.get_name()));
        let mut m = Metric::default();
        m.set_label(pairs);
        m
    }

    fn counter(&self, labels: &[(&str, &str)], value: u64) -> Metric {
        let mut c = Counter::default();
        c.set_value(value as f64);
        let mut m = self.metric(labels);
        m.set_counter(c);
        m
    }

    fn gauge(&self, labels: &[(&str, &str)], value: u64) -> Metric {
        let mut g = Gauge::default();
        g.set_value(value as f64);
        let mut m = self.metric(labels);
        m.set_gauge(g);
        m
    }

    /// The samples of one family, from a snapshot.
    fn samples(&self, name: &str, m: &Metrics) -> Vec<Metric> {
        let s = &m.stats;
        let per_peer = |value: fn(&crate::stats::PeerStats) -> u64| -> Vec<Metric> {
            m.peers
                .iter()
                .map(|p| self.counter(&[("peer", &p.peer)], value(p)))
                .collect()
        };
        match name {
            "gossip_messages_sent_total" => per_peer(|p| p.sent),
            "gossip_bytes_sent_total" => per_peer(|p| p.bytes_sent),
            "gossip_messages_received_total" => per_peer(|p| p.received),
            "gossip_bytes_received_total" => per_peer(|p| p.bytes_received),
            "gossip_messages_delivered_total" => per_peer(|p| p.delivered),
            "gossip_completions_total" => m
                .peers
                .iter()
                .flat_map(|p| {
                    [
                        ("acked", p.acked),
                        ("timed_out", p.timed_out),
                        ("failed", p.failed),
                    ]
                    .map(|(outcome, n)| self.counter(&[("peer", &p.peer), ("outcome", outcome)], n))
                })
                .collect(),
            "gossip_retransmissions_total" => vec![self.counter(&[], s.retransmitted)],
            "gossip_duplicates_total" => vec![self.counter(&[], s.duplicates)],
            "gossip_rejected_total" => vec![self.counter(&[], s.rejected)],
            "gossip_deliveries_declined_total" => vec![self.counter(&[], s.declined)],
            "gossip_refusals_total" => vec![
                self.counter(&[("reason", "partial_budget")], s.refused_busy),
                self.counter(&[("reason", "broadcast_budget")], s.refused_broadcast),
                self.counter(&[("reason", "writer_backlog")], s.broadcast_frames_dropped),
                self.counter(
                    &[("reason", "original_limit")],
                    s.broadcast_frames_too_large,
                ),
                self.counter(&[("reason", "peer_streams")], s.refused_peer_streams),
                self.counter(&[("reason", "inbound_streams")], s.refused_inbound_streams),
                self.counter(
                    &[("reason", "unidentified_streams")],
                    s.refused_unidentified_streams,
                ),
            ],
            "gossip_partial_bytes" => vec![self.gauge(&[], s.partial_bytes)],
            "gossip_broadcasts_started_total" => vec![self.counter(&[], s.broadcasts_started)],
            "gossip_broadcasts_completed_total" => vec![
                self.counter(&[("result", "converged")], s.broadcasts_converged),
                self.counter(&[("result", "incomplete")], s.broadcasts_incomplete),
            ],
            "gossip_membership_frames_total" => vec![
                self.counter(&[("result", "sent")], s.membership_frames_sent),
                self.counter(&[("result", "received")], s.membership_frames_received),
                self.counter(&[("result", "dropped")], s.membership_frames_dropped),
                self.counter(&[("result", "refused")], s.membership_frames_refused),
            ],
            "gossip_broadcast_reached_total" => vec![self.counter(&[], s.broadcast_reached)],
            "gossip_broadcast_missing_total" => vec![self.counter(&[], s.broadcast_missing)],
            "gossip_broadcast_duplicate_payloads_total" => {
                vec![self.counter(&[], s.broadcast_duplicate_payloads)]
            }
            "gossip_retry_answers_total" => vec![self.counter(&[], s.retry_answers)],
            "gossip_awaiting_confirmation" => vec![self.gauge(&[], s.awaiting_confirmation)],
            "gossip_unknown_acks_total" => vec![self.counter(&[], s.unknown_acks)],
            "gossip_stalls_total" => vec![self.counter(&[], s.stalls)],
            "gossip_acks_dropped_total" => vec![
                self.counter(&[("reason", "stream_closed")], s.acks_dropped),
                self.counter(&[("reason", "unrouted")], s.unrouted_acks_dropped),
            ],
            "gossip_slots_in_use" => vec![self.gauge(&[], s.in_flight)],
            "gossip_slots" => vec![self.gauge(&[], s.slots)],
            "gossip_peer_online" => m
                .peers
                .iter()
                .map(|p| self.gauge(&[("peer", &p.peer)], u64::from(p.online)))
                .collect(),
            "gossip_neighbors_online" => vec![self.gauge(&[], s.neighbors_online)],
            "gossip_queue_depth" => [
                ("deliveries", m.queues.deliveries),
                ("completions", m.queues.completions),
                ("broadcast_completions", m.queues.broadcast_completions),
                ("inbox", m.queues.inbox),
            ]
            .iter()
            .map(|(queue, n)| self.gauge(&[("queue", queue)], *n))
            .collect(),
            "gossip_ack_latency_seconds" => {
                let h = &m.ack_latency;
                let mut cumulative = 0;
                let buckets = h
                    .bounds
                    .iter()
                    .zip(&h.counts)
                    .map(|(bound, n)| {
                        cumulative += n;
                        let mut b = Bucket::default();
                        b.set_upper_bound(*bound);
                        b.set_cumulative_count(cumulative);
                        b
                    })
                    .collect();
                let mut hist = Histogram::default();
                hist.set_bucket(buckets);
                hist.set_sample_count(h.count());
                hist.set_sample_sum(h.sum_seconds);
                let mut metric = self.metric(&[]);
                metric.set_histogram(hist);
                vec![metric]
            }
            _ => Vec::new(),
        }
    }
}

impl Collector for NodeCollector {
    fn desc(&self) -> Vec<&Desc> {
        self.descs.iter().collect()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        let snapshot = (self.source)();
        FAMILIES
            .iter()
            .map(|f| {
                let mut family = MetricFamily::default();
                family.set_name(f.name.to_owned());
                family.set_help(f.help.to_owned());
                family.set_field_type(f.kind);
                family.set_metric(self.samples(f.name, &snapshot));
                family
            })
            .filter(|f| !f.get_metric().is_empty())
            .collect()
    }
}

fn prometheus_error(what: &str, e: prometheus::Error) -> Error {
    Error::Io(std::io::Error::other(format!("{what}: {e}")))
}

/// Encodes everything `registry` gathers in Prometheus' text format.
pub fn render(registry: &Registry) -> Result<String, Error> {
    let mut buf = Vec::new();
    TextEncoder::new()
        .encode(&registry.gather(), &mut buf)
        .map_err(|e| prometheus_error("encoding metrics", e))?;
    String::from_utf8(buf).map_err(|e| Error::Io(std::io::Error::other(e)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stats::{Histogram, PeerStats, QueueDepths, Stats, ACK_LATENCY_BUCKETS};

    pub(super) fn sample() -> Metrics {
        let mut counts = vec![0; ACK_LATENCY_BUCKETS.len() + 1];
        counts[2] = 3;
        counts[5] = 1;
        Metrics {
            node: "n1".into(),
            stats: Stats {
                retransmitted: 4,
                in_flight: 7,
                slots: 200,
                ..Stats::default()
            },
            peers: vec![PeerStats {
                peer: "n2".into(),
                sent: 10,
                acked: 9,
                failed: 1,
                online: true,
                ..PeerStats::default()
            }],
            ack_latency: Histogram {
                bounds: ACK_LATENCY_BUCKETS.to_vec(),
                counts,
                sum_seconds: 0.05,
            },
            queues: QueueDepths {
                inbox: 2,
                ..QueueDepths::default()
            },
        }
    }

    #[test]
    fn text_exposition_has_every_family_with_labels() {
        let registry = Registry::new();
        let collector = NodeCollector::from_source("n1", sample).unwrap();
        registry.register(Box::new(collector)).unwrap();
        let text = render(&registry).unwrap();
        for line in [
            r#"gossip_messages_sent_total{node="n1",peer="n2"} 10"#,
            r#"gossip_completions_total{node="n1",outcome="acked",peer="n2"} 9"#,
            r#"gossip_completions_total{node="n1",outcome="failed",peer="n2"} 1"#,
            r#"gossip_retransmissions_total{node="n1"} 4"#,
            r#"gossip_slots_in_use{node="n1"} 7"#,
            r#"gossip_peer_online{node="n1",peer="n2"} 1"#,
            r#"gossip_queue_depth{node="n1",queue="inbox"} 2"#,
            r#"gossip_ack_latency_seconds_bucket{node="n1",le="0.0025"} 3"#,
            r#"gossip_ack_latency_seconds_bucket{node="n1",le="0.025"} 4"#,
            r#"gossip_ack_latency_seconds_bucket{node="n1",le="+Inf"} 4"#,
            r#"gossip_ack_latency_seconds_count{node="n1"} 4"#,
            "# TYPE gossip_ack_latency_seconds histogram",
            "# TYPE gossip_bytes_sent_total counter",
        ] {
            assert!(text.contains(line), "missing {line:?} in:\n{text}");
        }
        for f in FAMILIES {
            assert!(text.contains(&format!("# HELP {} ", f.name)), "{}", f.name);
        }
    }
}
