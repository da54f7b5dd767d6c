//! Link faults on the in-memory network, which needs no proxy to cut, black-hole or delay a
//! link: every message still ends exactly once, is delivered at most once, and nothing is
//! left in flight.

use std::time::Duration;

use crate::common::*;
use bytes::Bytes;
use grpc_gossip::{Error, MemoryNetwork, Message, NeighborEvent, Outcome};

/// Cut a and b apart under a stream of 256 KiB messages, keep them apart, restore the link:
/// every message ends `Acked`, each is delivered once, some were sent again, and the link
/// came down and up again. (A 20 ms route keeps frames in flight, so the cut loses some.)
#[test]
fn a_cut_under_load_loses_nothing() {
    let net = MemoryNetwork::new();
    let mut ca = config("a");
    ca.slots = 32;
    ca.reconnect.initial = Duration::from_millis(20);
    let a = start_with(ca, &net);
    let b = start("b", &net);
    connect(&a, &b);
    connect(&b, &a);
    net.delay(a.local_addr(), b.local_addr(), Duration::from_millis(20));
    let payload = Bytes::from(vec![0xcd; 256 * 1024]);
    let (a_at, b_at) = (a.local_addr(), b.local_addr());
    survive_a_cut(
        &a,
        &b,
        300,
        payload,
        Duration::from_millis(500),
        || net.cut(a_at, b_at),
        || net.restore(a_at, b_at), // the delay too
    );
}

/// A black-holed link (frames vanish, nothing is said): the sender sees no progress within
/// `ack_timeout`, takes the link down and keeps trying to reconnect; once the route is back,
/// the messages go again and are ACKed, delivered once each.
#[test]
fn a_silenced_link_is_noticed_and_its_messages_go_again() {
    let net = MemoryNetwork::new();
    let mut ca = config("a");
    ca.ack_timeout = Duration::from_millis(300);
    ca.connect_timeout = Duration::from_millis(200);
    ca.reconnect.initial = Duration::from_millis(20);
    ca.reconnect.max = Duration::from_millis(100);
    let a = start_with(ca, &net);
    let b = start("b", &net);
    connect(&a, &b);
    a.send_message("b", Message::new("before", "x")).unwrap();
    assert!(collect(&a.completions(), 1)[0].is_acked());

    net.silence(a.local_addr(), b.local_addr());
    for i in 0..5 {
        a.send_message("b", Message::new(format!("m{i}"), "into the void"))
            .unwrap();
    }
    let events = a.events();
    let down = first_event(&events, |e| match e {
        NeighborEvent::Down { reason, .. } => Some(reason),
        _ => None,
    });
    assert!(down.contains("no ACK for"), "{down}");
    // While silent, reconnecting times out.
    let failure = first_event(&events, |e| match e {
        NeighborEvent::Reconnecting { error, .. } if !error.is_empty() => Some(error),
        _ => None,
    });
    assert!(failure.contains("no answer within"), "{failure}");
    assert!(
        a.completions().try_recv().is_err(),
        "nothing ends while the TTL runs"
    );

    net.restore(a.local_addr(), b.local_addr());
    for c in collect(&a.completions(), 5) {
        assert!(c.is_acked(), "{c:?}");
        assert!(c.attempts >= 2, "sent again after the silence: {c:?}");
    }
    let deliveries = b.deliveries();
    let mut got: Vec<String> = (0..6)
        .map(|_| deliveries.recv_timeout(PATIENCE).unwrap().hash)
        .collect();
    got.sort();
    assert_eq!(got, ["before", "m0", "m1", "m2", "m3", "m4"]);
    assert_quiet(&deliveries);
    assert!(a.stats().stalls >= 1);
}

/// A cut link refuses new connections at once, saying so; a node's address is its own in
/// the network, and a node whose frames could exceed the network's limit is refused at start.
#[test]
fn addresses_refusals_and_limits() {
    let net = MemoryNetwork::with_max_message_bytes(64 * 1024);
    let mut small = config("a");
    small.limits.max_payload_bytes = 32 * 1024;
    small.limits.max_message_bytes = 32 * 1024;
    let a = start_with(small.clone(), &net);
    let mut cb = small.clone();
    cb.id = "b".into();
    let b = start_with(cb, &net);
    assert_ne!(a.local_addr(), b.local_addr());

    let mut taken = small.clone();
    taken.id = "c".into();
    taken.listen = a.local_addr().to_string();
    match net_start(&net, taken) {
        Err(Error::Bind { reason, .. }) => assert!(reason.contains("in use"), "{reason}"),
        other => panic!("{other:?}"),
    }
    match net_start(&net, config("big")) {
        Err(Error::Config { field, .. }) => assert_eq!(field, "limits.max_payload_bytes"),
        other => panic!("{other:?}"),
    }

    net.cut(a.local_addr(), b.local_addr());
    match a.connect_to_neighbor(grpc_gossip::NeighborInfo::new(
        "b",
        b.local_addr().to_string(),
    )) {
        Err(Error::Connect { reason, .. }) => assert!(reason.contains("cut"), "{reason}"),
        other => panic!("{other:?}"),
    }
    net.restore(a.local_addr(), b.local_addr());
    connect(&a, &b);
    a.send_message("b", Message::new("fits", vec![1u8; 32 * 1024]))
        .unwrap();
    let done = collect(&a.completions(), 1).remove(0);
    assert_eq!(
        done.outcome,
        Outcome::Acked {
            by: b.id().clone(),
            duplicate: false
        }
    );
}

fn net_start(
    net: &MemoryNetwork,
    config: grpc_gossip::NodeConfig,
) -> Result<grpc_gossip::Node, Error> {
    grpc_gossip::Node::builder(config).memory(net).start()
}

/// A long route (150 ms each way, set while the link is up): nothing changes but the time
/// things take. Every message is ACKed a round trip after it was sent, and delivered once, in
/// order.
#[test]
fn a_delayed_link_delivers_everything_in_order_a_round_trip_later() {
    let net = MemoryNetwork::new();
    let a = start("a", &net);
    let b = start("b", &net);
    connect(&a, &b);
    connect(&b, &a);
    net.delay(a.local_addr(), b.local_addr(), Duration::from_millis(150));
    for i in 0..50 {
        a.send_message("b", Message::new(format!("m{i}"), vec![0u8; 10_000]))
            .unwrap();
    }
    for c in collect(&a.completions(), 50) {
        assert!(c.is_acked(), "{c:?}");
        assert!(
            c.elapsed >= Duration::from_millis(300),
            "a round trip: {c:?}"
        );
    }
    let deliveries = b.deliveries();
    for i in 0..50 {
        assert_eq!(
            deliveries.recv_timeout(PATIENCE).unwrap().hash,
            format!("m{i}")
        );
    }
    assert_quiet(&deliveries);
    assert_eq!(a.stats().stalls, 0, "a slow route is not a dead link");
}
