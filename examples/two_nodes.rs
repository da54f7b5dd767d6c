//! Two nodes on loopback: connect, send a few messages, read their completions and deliveries.
//!
//! Run with `cargo run --release --example two_nodes`.

use std::time::Duration;

use grpc_gossip::{Message, NeighborInfo, Node, NodeConfig, Outcome};

fn main() -> Result<(), grpc_gossip::Error> {
    let alice = Node::start(NodeConfig::new("alice", "127.0.0.1:0"))?;
    let bob = Node::start(NodeConfig::new("bob", "127.0.0.1:0"))?;

    // Each side opens its double stream (MessageStream + AckStream) to the other.
    alice.connect_to_neighbor(NeighborInfo::new("bob", bob.local_addr().to_string()))?;
    bob.connect_to_neighbor(NeighborInfo::new("alice", alice.local_addr().to_string()))?;

    for i in 0..3 {
        let key = alice.send_message(
            "bob",
            Message::new(format!("greeting-{i}"), format!("hello #{i}")),
        )?;
        println!("sent {key}");
    }
    // A large one: 8 MiB in one message.
    alice.send_message("bob", Message::new("big", vec![42u8; 8 << 20]))?;

    let completions = alice.completions();
    for _ in 0..4 {
        let c = completions
            .recv_timeout(Duration::from_secs(30))
            .expect("every message completes");
        match &c.outcome {
            Outcome::Acked { by, .. } => {
                println!("{} acked by {by} in {:?}", c.key.hash, c.elapsed)
            }
            other => println!("{} ended: {other}", c.key.hash),
        }
    }
    for d in bob.deliveries().try_iter() {
        println!(
            "bob got {} ({} bytes) from {}",
            d.hash,
            d.payload.len(),
            d.from
        );
    }
    println!("alice: {:?}", alice.stats());
    alice.shutdown();
    bob.shutdown();
    Ok(())
}
