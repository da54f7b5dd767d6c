//! Clusters that assemble themselves: nodes started with membership join through one seed,
//! learn every member, broadcast over their active views, and see members that leave or are
//! cut off (on the in-memory network, a cut from every other node stands for a crash; the
//! `cli` suite kills real processes).

use std::time::{Duration, Instant};

use crate::common::*;
use grpc_gossip::membership::{MemberInfo, MemberState};
use grpc_gossip::{Error, MembershipConfig, Message, Node, NodeConfig};

const N: usize = 8;

fn member_config(id: &str, seeds: &[String]) -> NodeConfig {
    let mut c = config(id);
    let mut m = MembershipConfig::with_seeds(seeds.iter().cloned());
    m.views.active = 3;
    m.views.passive = 10;
    m.views.shuffle_period = Duration::from_millis(300);
    m.list.suspect_timeout = Duration::from_secs(3);
    m.idle_link = Duration::from_secs(1);
    c.membership = Some(m);
    c.connect_timeout = Duration::from_secs(2);
    c
}

/// `n` nodes: the first is the seed, the others join through its address alone.
fn cluster(on: &dyn Transport, n: usize) -> Vec<Node> {
    cluster_with(on, n, |_| {})
}

/// [`cluster`], each node's config changed by `tweak` first.
fn cluster_with(on: &dyn Transport, n: usize, tweak: impl Fn(&mut NodeConfig)) -> Vec<Node> {
    let config = |id: &str, seeds: &[String]| {
        let mut c = member_config(id, seeds);
        tweak(&mut c);
        c
    };
    let seed = start_with(config("m00", &[]), on);
    let addr = vec![seed.local_addr().to_string()];
    let mut nodes = vec![seed];
    for i in 1..n {
        nodes.push(start_with(config(&format!("m{i:02}"), &addr), on));
    }
    nodes
}

/// Waits until every node in `nodes` lists exactly `want` (id, state) pairs for the ids it
/// names, or panics with what each lists.
fn wait_for(nodes: &[&Node], what: &str, want: impl Fn(&[MemberInfo]) -> bool) {
    let deadline = Instant::now() + PATIENCE;
    loop {
        if nodes.iter().all(|n| want(&n.members())) {
            return;
        }
        if Instant::now() > deadline {
            let lists: Vec<String> = nodes
                .iter()
                .map(|n| {
                    let m: Vec<String> = n
                        .members()
                        .iter()
                        .map(|m| format!("{}:{}", m.id, m.state.name()))
                        .collect();
                    format!("{} [{}] active {:?}", n.id(), m.join(" "), n.active_view())
                })
                .collect();
            panic!("{what}: not within {PATIENCE:?}:\n{}", lists.join("\n"));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn all_joined(n: usize) -> impl Fn(&[MemberInfo]) -> bool {
    move |m: &[MemberInfo]| m.len() == n && m.iter().all(|m| m.state == MemberState::Joined)
}

/// Waits until the links of the active views (the ones broadcasts run over) reach every node
/// of `nodes` from `from`: the lists converge faster than the last links come up.
fn wait_for_overlay(from: &Node, nodes: &[&Node]) {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let mut reached = vec![from.id().clone()];
        let mut i = 0;
        while i < reached.len() {
            if let Some(n) = nodes.iter().find(|n| *n.id() == reached[i]) {
                let online: Vec<_> = n.neighbors().into_iter().filter(|x| x.online).collect();
                for peer in n.active_view() {
                    let up = online.iter().any(|x| x.node_hash == peer.as_str());
                    if up && !reached.contains(&peer) {
                        reached.push(peer);
                    }
                }
            }
            i += 1;
        }
        if nodes.iter().all(|n| reached.contains(n.id())) {
            // Each side's streams, and so its features, are seen a moment later.
            std::thread::sleep(Duration::from_millis(300));
            return;
        }
        if Instant::now() > deadline {
            let views: Vec<String> = (nodes.iter())
                .map(|n| {
                    let online: Vec<String> = (n.neighbors().into_iter())
                        .filter(|x| x.online)
                        .map(|x| x.node_hash.to_string())
                        .collect();
                    format!("{} active {:?} online {online:?}", n.id(), n.active_view())
                })
                .collect();
            panic!(
                "the active views never linked everyone: reached {reached:?}\n{}",
                views.join("\n")
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A broadcast from `from` and how many nodes it reached.
fn broadcast_reach(from: &Node, hash: &str) -> u64 {
    let done = from.broadcast_completions();
    from.broadcast(Message::new(hash, "to everyone")).unwrap();
    let c = done.recv_timeout(PATIENCE).expect("broadcast converges");
    c.reached
}

on_both! {
    fn nodes_that_join_through_one_seed_list_every_member_and_broadcast_to_all(on) {
        let nodes = cluster(on, N);
        let refs: Vec<&Node> = nodes.iter().collect();
        wait_for(&refs, "every list holds every member", all_joined(N));
        for n in &nodes {
            let active = n.active_view();
            assert!((1..=3).contains(&active.len()), "{}: {active:?}", n.id());
            let me = n.members().into_iter().find(|m| m.id == *n.id()).unwrap();
            assert_eq!(me.addr, n.local_addr().to_string());
        }
        wait_for_overlay(&nodes[5], &refs);
        assert_eq!(broadcast_reach(&nodes[5], "b1"), (N - 1) as u64);
        // Every one delivers it once.
        for n in nodes.iter().filter(|n| n.id() != nodes[5].id()) {
            let d = n.deliveries().recv_timeout(PATIENCE).unwrap();
            assert_eq!(d.hash, "b1");
        }
    }
}

on_both! {
    /// Swaps on the real path (frames, links, replies): with one at every shuffle, views
    /// change all the time, never grow past their size, and still link every node.
    fn nodes_that_swap_at_every_shuffle_keep_their_views_bounded_and_linked(on) {
        let nodes = cluster_with(on, N, |c| {
            if let Some(m) = c.membership.as_mut() {
                m.views.swap_every = 1;
            }
        });
        let refs: Vec<&Node> = nodes.iter().collect();
        wait_for(&refs, "every list holds every member", all_joined(N));
        let before: Vec<Vec<_>> = nodes.iter().map(|n| n.active_view()).collect();
        // Views change: a swap replaces a neighbour without a failure or a join.
        let deadline = Instant::now() + PATIENCE;
        let mut changed = 0;
        while changed < N / 2 {
            assert!(Instant::now() < deadline, "views never swapped: {before:?}");
            std::thread::sleep(Duration::from_millis(100));
            changed = 0;
            for (n, was) in nodes.iter().zip(&before) {
                let now = n.active_view();
                assert!(now.len() <= 3, "{}: {now:?}", n.id());
                if now.iter().any(|p| !was.contains(p)) {
                    changed += 1;
                }
            }
        }
        wait_for_overlay(&nodes[0], &refs);
        wait_for(&refs, "every list still holds every member", all_joined(N));
    }
}

on_both! {
    fn a_member_that_shuts_down_is_listed_as_left(on) {
        let nodes = cluster(on, 5);
        let refs: Vec<&Node> = nodes.iter().collect();
        wait_for(&refs, "every list holds every member", all_joined(5));
        let events = nodes[0].member_events();
        nodes[3].shutdown();
        let gone = nodes[3].id().clone();
        let rest: Vec<&Node> = nodes.iter().filter(|n| *n.id() != gone).collect();
        wait_for(&rest, "the node that shut down is listed as left", |m| {
            m.iter().any(|m| m.id == gone && m.state == MemberState::Left)
        });
        let heard = events
            .try_iter()
            .any(|e| e.id == gone && e.state == MemberState::Left);
        assert!(heard, "the event tells it");
        wait_for_overlay(rest[0], &rest);
        assert_eq!(broadcast_reach(rest[0], "after"), 3);
    }
}

on_both! {
    fn a_message_to_a_member_that_is_not_a_neighbour_gets_a_link_of_its_own(on) {
        let nodes = cluster(on, N);
        let refs: Vec<&Node> = nodes.iter().collect();
        wait_for(&refs, "every list holds every member", all_joined(N));
        let linked = |a: &Node, b: &Node| a.neighbors().iter().any(|n| n.node_hash == b.id().as_str());
        // A pair with no link between them (active views hold 3 of 8).
        let (a, b) = nodes
            .iter()
            .flat_map(|a| nodes.iter().map(move |b| (a, b)))
            .find(|(a, b)| a.id() != b.id() && !linked(a, b))
            .expect("some pair is not linked");
        a.send_message(b.id(), Message::new("direct-1", "to a member")).unwrap();
        let done = a.completions().recv_timeout(PATIENCE).unwrap();
        assert!(done.is_acked(), "{done:?}");
        let got = b.deliveries().recv_timeout(PATIENCE).unwrap();
        assert_eq!(&got.payload[..], b"to a member");
        // Idle, the link closes again (unless the views took it in meanwhile). Membership's
        // own probes may hold an extra link to the same member open a while longer.
        let deadline = Instant::now() + 2 * PATIENCE;
        while linked(a, b) && !a.active_view().contains(b.id()) {
            assert!(Instant::now() < deadline, "the idle link to {} stays", b.id());
            std::thread::sleep(Duration::from_millis(50));
        }
        // A name that is no member is still an unknown neighbour.
        match a.send_message("nobody", Message::new("x", "y")) {
            Err(Error::UnknownNeighbor(n)) => assert_eq!(n, "nobody"),
            other => panic!("{other:?}"),
        }
    }
}

/// A node cut off from every other, as if it had crashed: the others fail it (each of its
/// neighbours suspects it, a second confirms), repair their views, and broadcasts reach the
/// rest exactly.
#[test]
fn a_member_cut_off_from_everyone_is_failed_and_the_rest_still_reached() {
    let net = grpc_gossip::MemoryNetwork::new();
    let nodes = cluster(&net, N);
    let refs: Vec<&Node> = nodes.iter().collect();
    wait_for(&refs, "every list holds every member", all_joined(N));
    let lost = [2, 6];
    for &i in &lost {
        for (j, other) in nodes.iter().enumerate() {
            if j != i {
                net.cut(nodes[i].local_addr(), other.local_addr());
            }
        }
    }
    let lost_ids: Vec<_> = lost.iter().map(|&i| nodes[i].id().clone()).collect();
    let rest: Vec<&Node> = (0..N)
        .filter(|i| !lost.contains(i))
        .map(|i| &nodes[i])
        .collect();
    wait_for(&rest, "the cut-off nodes are failed everywhere", |m| {
        lost_ids.iter().all(|id| {
            m.iter()
                .any(|m| m.id == *id && m.state == MemberState::Failed)
        })
    });
    for n in &rest {
        for id in &lost_ids {
            assert!(
                !n.active_view().contains(id),
                "{} still links to {id}",
                n.id()
            );
        }
    }
    // The views heal before the next broadcast reaches everyone left.
    let deadline = Instant::now() + PATIENCE;
    while rest.iter().any(|n| n.active_view().is_empty()) {
        assert!(Instant::now() < deadline, "a node stays cut off");
        std::thread::sleep(Duration::from_millis(50));
    }
    wait_for_overlay(rest[0], &rest);
    assert_eq!(broadcast_reach(rest[0], "after-crash"), (N - 3) as u64);
}

#[test]
fn join_without_membership_is_refused_and_bad_seeds_are_named() {
    let net = grpc_gossip::MemoryNetwork::new();
    let plain = start_with(config("plain"), &net);
    match plain.join(&["127.0.0.1:1"]) {
        Err(Error::Config { field, .. }) => assert_eq!(field, "membership"),
        other => panic!("{other:?}"),
    }
    assert!(plain.members().is_empty());
    let bad = member_config("bad", &["no-port".to_owned()]);
    match Node::builder(bad).memory(&net).start() {
        Err(Error::Config { field, reason }) => {
            assert_eq!(field, "membership.seeds");
            assert!(reason.contains("no-port"), "{reason}");
        }
        other => panic!("{other:?}"),
    }
    let mut open = member_config("open", &[]);
    open.listen = "0.0.0.0:0".into();
    match Node::builder(open).memory(&net).start() {
        Err(Error::Config { field, .. }) => assert_eq!(field, "membership.advertise"),
        other => panic!("{other:?}"),
    }
}

/// A seed that is not up yet: the joining node keeps trying, and joins once it answers.
#[test]
fn a_node_keeps_trying_its_seeds_until_one_answers() {
    let net = grpc_gossip::MemoryNetwork::new();
    let seed = start_with(member_config("seed", &[]), &net);
    let addr = seed.local_addr();
    let other = start_with(config("other"), &net);
    // Cut first: the joiner's attempts fail until the cut is restored.
    let joiner = start_with(member_config("joiner", &[addr.to_string()]), &net);
    net.cut(joiner.local_addr(), addr);
    std::thread::sleep(Duration::from_millis(800));
    assert_eq!(joiner.members().len(), 1, "{:?}", joiner.members());
    net.restore(joiner.local_addr(), addr);
    wait_for(&[&seed, &joiner], "the joiner joins", all_joined(2));
    drop(other);
}
