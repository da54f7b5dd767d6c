//! Criterion benchmarks of the seed: `MultiNodeLargeMessage` (the full round),
//! `TwoNodesMessaging` (one small message and its ACK) and `BidirectionalMessaging` (two nodes
//! sending to each other at once). Sample sizes keep the whole run to a few minutes.

use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use grpc_gossip::bench::cluster::GossipCluster;
use grpc_gossip::bench::Workload;
use grpc_gossip::{
    Deliveries, Message, NeighborInfo, Node, NodeConfig, StreamFactory, TransportConfig,
};

fn pair(factory: &Arc<StreamFactory>) -> (Node, Node) {
    let start = |id: &str| {
        let mut c = NodeConfig::new(id, "127.0.0.1:0");
        c.deliveries = Deliveries::Discard;
        Node::builder(c)
            .factory(factory.clone())
            .start()
            .expect("node")
    };
    let (a, b) = (start("a"), start("b"));
    for (x, y) in [(&a, &b), (&b, &a)] {
        x.connect_to_neighbor(NeighborInfo::new(
            y.id().as_str(),
            y.local_addr().to_string(),
        ))
        .expect("connect");
    }
    (a, b)
}

fn multi_node_large_message(c: &mut Criterion) {
    let w = Workload::default();
    let cluster =
        GossipCluster::start(&w, StreamFactory::new(TransportConfig::default())).expect("cluster");
    let mut group = c.benchmark_group("MultiNodeLargeMessage");
    group
        .sample_size(10)
        .measurement_time(Duration::from_secs(10));
    group.throughput(Throughput::Bytes(w.bytes_per_round()));
    let mut round = 0;
    group.bench_function("4 nodes x 30 x 512KiB", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                round += 1;
                let r = cluster.run_round(round);
                assert!(
                    r.all_acked(),
                    "ACK incomplete: {} / {}: {:?}",
                    r.acked,
                    r.expected,
                    r.problems
                );
                total += r.elapsed;
            }
            total
        })
    });
    group.finish();
    cluster.shutdown();
}

fn two_nodes_messaging(c: &mut Criterion) {
    let factory = StreamFactory::new(TransportConfig::default());
    let (a, b) = pair(&factory);
    let done = a.completions();
    let mut i = 0u64;
    c.bench_function("TwoNodesMessaging (send 64 B, wait for its ACK)", |bench| {
        bench.iter(|| {
            i += 1;
            a.send_message(
                "b",
                Message::new(
                    format!("m{i}"),
                    &b"0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"[..],
                ),
            )
            .expect("send");
            let c = done.recv().expect("completion");
            assert!(c.is_acked());
        })
    });
    a.shutdown();
    b.shutdown();
}

fn bidirectional_messaging(c: &mut Criterion) {
    const BATCH: usize = 200;
    let factory = StreamFactory::new(TransportConfig::default());
    let (a, b) = pair(&factory);
    let payload = bytes::Bytes::from(vec![1u8; 1024]);
    let mut round = 0u64;
    let mut group = c.benchmark_group("BidirectionalMessaging");
    group.throughput(Throughput::Elements(2 * BATCH as u64));
    group.bench_function("2 x 200 x 1KiB, both ways at once", |bench| {
        bench.iter_custom(|iters| {
            let start = Instant::now();
            for _ in 0..iters {
                round += 1;
                std::thread::scope(|s| {
                    for (from, to) in [(&a, "b"), (&b, "a")] {
                        let payload = payload.clone();
                        s.spawn(move || {
                            for k in 0..BATCH {
                                from.send_message(
                                    to,
                                    Message::new(format!("r{round}-{k}"), payload.clone()),
                                )
                                .expect("send");
                            }
                            let done = from.completions();
                            for _ in 0..BATCH {
                                assert!(done.recv().expect("completion").is_acked());
                            }
                        });
                    }
                });
            }
            start.elapsed()
        })
    });
    group.finish();
    a.shutdown();
    b.shutdown();
}

/// Send-to-ACK time of one small message while 512 KiB messages saturate the same two nodes in
/// both directions (the `gossip bench --mode ack-latency` measurement, as a criterion bench).
fn ack_latency_under_load(c: &mut Criterion) {
    use grpc_gossip::bench::latency::{LatencyWorkload, LoadedPair};
    let w = LatencyWorkload::default();
    let mut pair =
        LoadedPair::start(&w, StreamFactory::new(TransportConfig::default())).expect("pair");
    let mut group = c.benchmark_group("AckLatencyUnderLoad");
    group
        .sample_size(20)
        .measurement_time(Duration::from_secs(10));
    group.bench_function("64 B probe, 512KiB both ways, 200 slots", |bench| {
        bench.iter_custom(|iters| (0..iters).map(|_| pair.probe().expect("probe")).sum())
    });
    group.finish();
    pair.stop();
}

criterion_group!(
    benches,
    multi_node_large_message,
    two_nodes_messaging,
    bidirectional_messaging,
    ack_latency_under_load
);
criterion_main!(benches);
