//! A test-style program on the in-memory network: a hundred real nodes in one process, no
//! sockets; a broadcast reaches everyone, and a link is cut and restored under a message.
//!
//! Run with `cargo run --release --example in_memory`.

use std::time::{Duration, Instant};

use grpc_gossip::{MemoryNetwork, Message, NeighborInfo, Node, NodeConfig};

fn main() -> Result<(), grpc_gossip::Error> {
    let started = Instant::now();
    let net = MemoryNetwork::new();
    let nodes = (0..100)
        .map(|i| {
            Node::builder(NodeConfig::new(format!("n{i}"), "127.0.0.1:0"))
                .memory(&net)
                .start()
        })
        .collect::<Result<Vec<Node>, _>>()?;
    // A ring with chords, each link both ways.
    for i in 0..nodes.len() {
        for j in [(i + 1) % nodes.len(), (i + 17) % nodes.len()] {
            for (from, to) in [(i, j), (j, i)] {
                let peer = &nodes[to];
                let info = NeighborInfo::new(peer.id().as_str(), peer.local_addr().to_string());
                nodes[from].connect_to_neighbor(info)?;
            }
        }
    }
    println!("100 nodes linked in {:?}", started.elapsed());

    nodes[42].broadcast(Message::new("news", "for everyone"))?;
    let converged = nodes[42]
        .broadcast_completions()
        .recv_timeout(Duration::from_secs(30))
        .expect("the broadcast converges");
    println!(
        "broadcast reached {} of 99 (missing {:?}) in {:?}",
        converged.reached,
        converged.missing,
        started.elapsed()
    );

    let (a, b) = (&nodes[0], &nodes[1]);
    net.cut(a.local_addr(), b.local_addr()); // the link goes down; a keeps reconnecting
    a.send_message(b.id(), Message::new("m1", "waits for the link"))?;
    std::thread::sleep(Duration::from_millis(200));
    net.restore(a.local_addr(), b.local_addr());
    let done = a
        .completions()
        .recv_timeout(Duration::from_secs(30))
        .expect("one completion");
    println!(
        "m1 after the cut: {} ({} attempts)",
        done.outcome, done.attempts
    );
    Ok(())
}
