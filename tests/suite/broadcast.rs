//! Multi-hop broadcast between real nodes, each test over loopback gRPC and over the in-memory
//! network: every live node delivers each broadcast exactly once, and the origin's converged
//! count equals the number that did. And a cluster of 100 nodes in memory.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use crate::common::*;
use bytes::Bytes;
use grpc_gossip::broadcast::BroadcastCompletion;
use grpc_gossip::{Message, Node};

const N: usize = 16;

/// Starts `n` nodes and links every edge both ways; waits until every link is up.
fn cluster(on: &dyn Transport, n: usize, edges: &[(usize, usize)]) -> Vec<Node> {
    let nodes: Vec<Node> = (0..n).map(|i| start(&format!("n{i:02}"), on)).collect();
    let mut degree = vec![0u64; n];
    for &(a, b) in edges {
        connect(&nodes[a], &nodes[b]);
        connect(&nodes[b], &nodes[a]);
        degree[a] += 1;
        degree[b] += 1;
    }
    let deadline = Instant::now() + PATIENCE;
    for (node, want) in nodes.iter().zip(degree) {
        while node.stats().neighbors_online < want {
            assert!(Instant::now() < deadline, "links of {} come up", node.id());
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    // Let each side see the other's streams (and so its features).
    std::thread::sleep(Duration::from_millis(300));
    nodes
}

fn line(n: usize) -> Vec<(usize, usize)> {
    (1..n).map(|i| (i - 1, i)).collect()
}

fn ring(n: usize) -> Vec<(usize, usize)> {
    let mut e = line(n);
    e.push((n - 1, 0));
    e
}

fn star(n: usize) -> Vec<(usize, usize)> {
    (1..n).map(|i| (0, i)).collect()
}

fn random(n: usize, degree: usize, seed: u64) -> Vec<(usize, usize)> {
    let mut rng = fastrand::Rng::with_seed(seed);
    let g = grpc_gossip::sim::random_graph(n, degree, &mut rng);
    let mut edges = Vec::new();
    for (a, peers) in g.iter().enumerate() {
        edges.extend(peers.iter().filter(|&&b| a < b).map(|&b| (a, b)));
    }
    edges
}

/// Broadcasts from `origin` and waits for its completion.
fn broadcast(nodes: &[Node], origin: usize, hash: &str, payload: Bytes) -> BroadcastCompletion {
    broadcast_message(nodes, origin, Message::new(hash, payload))
}

/// Broadcasts `message` from `origin` and waits for its completion.
fn broadcast_message(nodes: &[Node], origin: usize, message: Message) -> BroadcastCompletion {
    let o = &nodes[origin];
    let id = o.broadcast(message).expect("broadcast starts");
    let done = o
        .broadcast_completions()
        .recv_timeout(PATIENCE)
        .expect("the broadcast converges");
    assert_eq!(done.id, id);
    done
}

/// Per node, the broadcasts it delivered (hash -> times), after waiting for stragglers.
fn delivered(nodes: &[Node]) -> Vec<BTreeMap<String, usize>> {
    delivered_payloads(nodes)
        .into_iter()
        .map(|seen| seen.into_iter().map(|(h, p)| (h, p.len())).collect())
        .collect()
}

/// Per node, the payloads of the broadcasts it delivered (hash -> each delivery's), after
/// waiting for stragglers.
fn delivered_payloads(nodes: &[Node]) -> Vec<BTreeMap<String, Vec<Bytes>>> {
    std::thread::sleep(Duration::from_millis(300));
    nodes
        .iter()
        .map(|n| {
            let mut seen = BTreeMap::<String, Vec<Bytes>>::new();
            for d in n.deliveries().try_iter() {
                assert!(d.origin.is_some(), "delivered as a broadcast: {d:?}");
                seen.entry(d.hash).or_default().push(d.payload);
            }
            seen
        })
        .collect()
}

/// Three broadcasts from different origins (small and large payloads, one of them a shared
/// payload): each converges with an exact count and reaches every other node exactly once, with
/// its bytes.
fn every_node_exactly_once(on: &dyn Transport, edges: Vec<(usize, usize)>) {
    let nodes = cluster(on, N, &edges);
    let pattern = |seed: usize| -> Bytes {
        (0..512 * 1024)
            .map(|i| ((i * 31 + seed) % 251) as u8)
            .collect::<Vec<u8>>()
            .into()
    };
    let shared = grpc_gossip::SharedPayload::from(&pattern(9)[..]);
    let cases = [
        (0, "small", Bytes::from_static(b"hello, cluster")),
        (N / 2, "large", pattern(7)),
        (N - 1, "large-again", shared.payload()),
    ];
    for (origin, hash, payload) in &cases {
        let message = match *hash {
            "large-again" => Message::shared(*hash, &shared),
            _ => Message::new(*hash, payload.clone()),
        };
        let done = broadcast_message(&nodes, *origin, message);
        assert_eq!(done.reached, (N - 1) as u64, "{hash}: {done:?}");
        assert!(done.is_complete(), "{hash}: {done:?}");
    }
    let got = delivered_payloads(&nodes);
    for seen in &got {
        for (_, hash, payload) in &cases {
            for p in seen.get(*hash).into_iter().flatten() {
                assert!(p == payload, "{hash}: the bytes broadcast");
            }
        }
    }
    for (i, seen) in got.iter().enumerate() {
        for (origin, hash, _) in &cases {
            let times = seen.get(*hash).map_or(0, Vec::len);
            let want = usize::from(i != *origin);
            assert_eq!(times, want, "node {i}, broadcast {hash}: {seen:?}");
        }
    }
}

on_both! {
    fn line_of_16(on) {
        every_node_exactly_once(on, line(N));
    }
}

on_both! {
    fn ring_of_16(on) {
        every_node_exactly_once(on, ring(N));
    }
}

on_both! {
    fn star_of_16(on) {
        every_node_exactly_once(on, star(N));
    }
}

on_both! {
    fn random_graph_of_16(on) {
        every_node_exactly_once(on, random(N, 3, 11));
    }
}

on_both! {
    /// Nodes die just before a broadcast, before their neighbours have noticed: the count is
    /// exact for the nodes that got it and the dead are reported missing. Once the failures are
    /// known, later broadcasts say the same.
    fn killed_nodes_are_reported_missing_and_the_count_stays_exact(on) {
        // A ring with chords stays connected without any two of its nodes.
        let mut edges = ring(N);
        edges.extend((0..N / 2).map(|i| (i, i + N / 2)));
        let nodes = cluster(on, N, &edges);
        let victims = [3usize, 10];
        for v in victims {
            nodes[v].shutdown();
        }
        for (round, hash) in ["after-kill", "later"].into_iter().enumerate() {
            let done = broadcast(&nodes, 0, hash, Bytes::from(vec![1u8; 128 * 1024]));
            let got = delivered(&nodes);
            let reached: Vec<usize> = (1..N).filter(|i| got[*i].contains_key(hash)).collect();
            assert_eq!(
                done.reached,
                reached.len() as u64,
                "round {round}: count equals deliveries"
            );
            assert_eq!(
                reached.len(),
                N - 1 - victims.len(),
                "every live node got it"
            );
            for i in &reached {
                assert_eq!(got[*i][hash], 1, "exactly once");
            }
            let missing: BTreeSet<&str> = done.missing.iter().map(|m| m.as_str()).collect();
            assert_eq!(
                missing,
                BTreeSet::from(["n03", "n10"]),
                "round {round}: the dead are missing"
            );
            if round == 0 {
                // Let every neighbour notice the failures before the next round.
                for v in victims {
                    for (a, b) in &edges {
                        let other = if *a == v {
                            *b
                        } else if *b == v {
                            *a
                        } else {
                            continue;
                        };
                        let events = nodes[other].events();
                        let deadline = Instant::now() + PATIENCE;
                        while nodes[other]
                            .neighbors()
                            .iter()
                            .any(|n| n.node_hash == nodes[v].id().as_str() && n.online)
                        {
                            assert!(Instant::now() < deadline, "failure noticed");
                            let _ = events.recv_timeout(Duration::from_millis(50));
                        }
                    }
                }
            }
        }
    }
}

on_both! {
    /// The lazy plane on a real cluster: after the first broadcasts have pruned the redundant
    /// links of a full mesh of 8, a 512 KiB broadcast moves about one payload per receiving node.
    fn large_payloads_settle_into_a_tree_on_a_full_mesh(on) {
        const NODES: usize = 8;
        let edges: Vec<(usize, usize)> = (0..NODES)
            .flat_map(|a| (a + 1..NODES).map(move |b| (a, b)))
            .collect();
        let nodes = cluster(on, NODES, &edges);
        let payload = Bytes::from(vec![3u8; 512 * 1024]);
        let bytes = |nodes: &[Node]| -> u64 {
            nodes
                .iter()
                .map(|n| n.stats().broadcast_bytes_received)
                .sum()
        };
        for i in 0..5 {
            let done = broadcast(&nodes, i % NODES, &format!("warm{i}"), payload.clone());
            assert_eq!(done.reached, (NODES - 1) as u64);
        }
        let before = bytes(&nodes);
        const MEASURED: usize = 10;
        for i in 0..MEASURED {
            let done = broadcast(&nodes, i % NODES, &format!("m{i}"), payload.clone());
            assert_eq!(done.reached, (NODES - 1) as u64);
        }
        std::thread::sleep(Duration::from_millis(300));
        let moved = (bytes(&nodes) - before) as f64;
        let ideal = (MEASURED * (NODES - 1) * payload.len()) as f64;
        let ratio = moved / ideal;
        println!("payload bytes received / (receivers x payload): {ratio:.3}");
        assert!(ratio <= 1.2, "the eager links form a tree: {ratio:.3}");
    }
}

/// A hundred real nodes in this process on the in-memory network (no sockets, the product's
/// own threads and protocol): on a random graph of degree 4, broadcasts from three origins
/// reach every other node exactly once with exact counts, and a direct message along every
/// link is ACKed.
#[test]
fn a_hundred_nodes_in_memory() {
    const NODES: usize = 100;
    let started = Instant::now();
    let net = grpc_gossip::MemoryNetwork::new();
    let edges = random(NODES, 4, 7);
    let nodes = cluster(&net, NODES, &edges);
    let up = started.elapsed();
    let cases = [
        (0, "small", Bytes::from_static(b"hello, hundred")),
        (NODES / 2, "large", Bytes::from(vec![5u8; 256 * 1024])),
        (NODES - 1, "last", Bytes::from(vec![6u8; 4 * 1024])),
    ];
    for (origin, hash, payload) in &cases {
        let done = broadcast(&nodes, *origin, hash, payload.clone());
        assert_eq!(done.reached, (NODES - 1) as u64, "{hash}: {done:?}");
        assert!(done.is_complete(), "{hash}: {done:?}");
    }
    let got = delivered(&nodes);
    for (i, seen) in got.iter().enumerate() {
        for (origin, hash, _) in &cases {
            let want = usize::from(i != *origin);
            assert_eq!(
                seen.get(*hash).copied().unwrap_or(0),
                want,
                "node {i}: {hash}"
            );
        }
    }
    for &(a, b) in &edges {
        nodes[a]
            .send_message(
                nodes[b].id(),
                Message::new(format!("{a}-{b}"), "along the link"),
            )
            .unwrap();
    }
    let mut per_sender = vec![0usize; NODES];
    for &(a, _) in &edges {
        per_sender[a] += 1;
    }
    for (node, n) in nodes.iter().zip(per_sender) {
        assert!(collect(&node.completions(), n).iter().all(|c| c.is_acked()));
    }
    println!(
        "100 nodes: linked in {up:?}, everything done in {:?}",
        started.elapsed()
    );
    drop(nodes);
}
