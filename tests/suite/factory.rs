//! The `StreamFactory` is shared by the nodes of a process: one gRPC channel per endpoint,
//! reused across nodes, closed once idle for longer than its TTL.

use std::time::{Duration, Instant};

use crate::common::*;
use grpc_gossip::{Error, NodeConfig, StreamFactory, TransportConfig};

#[test]
fn one_channel_per_endpoint_closed_when_idle() {
    let f = StreamFactory::new(TransportConfig {
        idle_channel_ttl: Duration::from_millis(300),
        ..Default::default()
    });
    let hub = start("hub", &f);
    let a = start("a", &f);
    let b = start("b", &f);
    connect(&a, &hub);
    connect(&b, &hub);
    assert_eq!(
        f.open_channels(),
        1,
        "a and b share the channel to hub's endpoint"
    );
    connect(&hub, &a);
    assert_eq!(f.open_channels(), 2);

    a.disconnect_neighbor("hub").unwrap();
    b.disconnect_neighbor("hub").unwrap();
    hub.disconnect_neighbor("a").unwrap();
    let deadline = Instant::now() + PATIENCE;
    while f.open_channels() > 0 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(
        f.open_channels(),
        0,
        "idle channels are closed after the TTL"
    );

    // And a new connection opens a fresh one.
    connect(&a, &hub);
    assert_eq!(f.open_channels(), 1);
}

#[test]
fn node_limit_above_the_factory_limit_is_a_config_error() {
    let f = factory();
    let mut c = NodeConfig::new("big", "127.0.0.1:0");
    c.limits.max_payload_bytes = f.config().max_grpc_message_bytes;
    match grpc_gossip::Node::builder(c).factory(f).start() {
        Err(Error::Config { field, .. }) => assert_eq!(field, "limits.max_payload_bytes"),
        Err(e) => panic!("{e}"),
        Ok(_) => panic!("must refuse"),
    }
}

#[test]
fn listening_on_a_taken_port_is_a_bind_error() {
    let f = factory();
    let a = start("a", &f);
    let mut c = NodeConfig::new("b", a.local_addr().to_string());
    c.slots = 4;
    match grpc_gossip::Node::builder(c).factory(f).start() {
        Err(Error::Bind { .. }) => {}
        Err(e) => panic!("{e}"),
        Ok(_) => panic!("port is taken"),
    }
}
