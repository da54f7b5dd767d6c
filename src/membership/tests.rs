//! The view machine driven by hand, and small simulated clusters.

use super::sim::{self, MembershipSimConfig};
use super::*;

fn small() -> ViewConfig {
    ViewConfig {
        active: 2,
        passive: 3,
        ..ViewConfig::default()
    }
}

fn sends(out: &[Out<u32>]) -> Vec<(u32, Message<u32>)> {
    out.iter()
        .filter_map(|o| match o {
            Out::Send { to, message } => Some((*to, message.clone())),
            _ => None,
        })
        .collect()
}

fn received(node: &mut HyParView<u32>, from: u32, message: Message<u32>) -> Vec<Out<u32>> {
    let mut out = Vec::new();
    node.handle(In::Received { from, message }, &mut out);
    out
}

#[test]
fn a_joiner_and_its_contact_take_each_other_in_and_the_contact_starts_walks() {
    let mut joiner = HyParView::new(9, small(), 1);
    let mut out = Vec::new();
    joiner.handle(In::Join(0), &mut out);
    assert_eq!(joiner.active(), [0]);
    assert_eq!(sends(&out), [(0, Message::Join)]);

    let mut contact = HyParView::new(0, small(), 2);
    received(&mut contact, 1, Message::Neighbor { high: true });
    let out = received(&mut contact, 9, Message::Join);
    assert_eq!(contact.active(), [1, 9]);
    assert!(out.contains(&Out::NeighborUp(9)));
    let walks = sends(&out);
    assert_eq!(
        walks,
        [(
            1,
            Message::ForwardJoin {
                joiner: 9,
                ttl: ViewConfig::default().active_walk
            }
        )]
    );
}

#[test]
fn a_walk_ends_where_it_runs_out_and_the_joiner_is_asked_in_with_high_priority() {
    let mut node = HyParView::new(5, small(), 3);
    received(&mut node, 1, Message::Neighbor { high: true });
    let out = received(&mut node, 1, Message::ForwardJoin { joiner: 9, ttl: 0 });
    assert!(node.active().contains(&9));
    assert_eq!(sends(&out), [(9, Message::Neighbor { high: true })]);
}

#[test]
fn a_walk_with_hops_left_goes_on_and_leaves_the_joiner_in_the_passive_view_at_the_mark() {
    let mut node = HyParView::new(5, small(), 4);
    received(&mut node, 1, Message::Neighbor { high: true });
    received(&mut node, 2, Message::Neighbor { high: true });
    let ttl = ViewConfig::default().passive_walk;
    let out = received(&mut node, 1, Message::ForwardJoin { joiner: 9, ttl });
    assert_eq!(
        sends(&out),
        [(
            2,
            Message::ForwardJoin {
                joiner: 9,
                ttl: ttl - 1
            }
        )]
    );
    assert_eq!(node.passive(), [9]);
    assert!(!node.active().contains(&9));
}

#[test]
fn a_full_active_view_drops_a_neighbour_into_the_passive_view_and_tells_it() {
    let mut node = HyParView::new(5, small(), 5);
    received(&mut node, 1, Message::Neighbor { high: true });
    received(&mut node, 2, Message::Neighbor { high: true });
    let out = received(&mut node, 3, Message::Neighbor { high: true });
    assert_eq!(node.active().len(), 2, "the bound holds");
    assert!(node.active().contains(&3));
    let dropped: Vec<u32> = sends(&out)
        .into_iter()
        .filter(|(_, m)| *m == Message::Disconnect)
        .map(|(to, _)| to)
        .collect();
    assert_eq!(dropped.len(), 1);
    assert!(node.passive().contains(&dropped[0]));
    assert!(out.contains(&Out::NeighborDown(dropped[0])));
    // A low-priority request to a full view is refused; the asker is remembered.
    let out = received(&mut node, 4, Message::Neighbor { high: false });
    assert_eq!(
        sends(&out),
        [(4, Message::NeighborReply { accepted: false })]
    );
    assert!(node.passive().contains(&4));
}

#[test]
fn a_failed_neighbour_is_replaced_from_the_passive_view() {
    let mut node = HyParView::new(5, small(), 6);
    received(&mut node, 1, Message::Neighbor { high: true });
    received(&mut node, 2, Message::Neighbor { high: true });
    received(&mut node, 3, Message::Neighbor { high: true }); // drops 1 or 2 to passive
    let gone = node.active()[0];
    let mut out = Vec::new();
    node.handle(In::Failed(gone), &mut out);
    assert!(!node.active().contains(&gone));
    assert!(
        !node.passive().contains(&gone),
        "a failed peer is no candidate"
    );
    let [(asked, Message::Neighbor { high: false })] = sends(&out)[..] else {
        panic!("expected one low-priority request, got {:?}", sends(&out));
    };
    received(&mut node, asked, Message::NeighborReply { accepted: true });
    assert!(node.active().contains(&asked));
    assert_eq!(node.active().len(), 2);
}

#[test]
fn a_node_alone_asks_with_high_priority_and_tries_the_next_when_refused_or_unreachable() {
    let mut node = HyParView::new(5, small(), 7);
    received(&mut node, 1, Message::Neighbor { high: true });
    // Each time its last neighbour leaves, the node asks at once, not at its next shuffle.
    let mut out = received(&mut node, 1, Message::Disconnect);
    received(&mut node, 2, Message::Neighbor { high: false });
    out.extend(received(&mut node, 2, Message::Disconnect));
    assert!(node.active().is_empty());
    let asked: Vec<(u32, Message<u32>)> = sends(&out);
    assert_eq!(asked.len(), 2, "asks as many as it lacks: {asked:?}");
    assert!(asked
        .iter()
        .all(|(_, m)| *m == Message::Neighbor { high: true }));
    let mut out = Vec::new();
    node.handle(In::Failed(1), &mut out);
    assert!(!node.passive().contains(&1));
    received(&mut node, 2, Message::NeighborReply { accepted: true });
    assert_eq!(node.active(), [2]);
}

/// A node whose view holds `peers`, each taken in with high priority.
fn full_node(me: u32, peers: &[u32], seed: u64) -> HyParView<u32> {
    let config = ViewConfig {
        active: peers.len(),
        ..ViewConfig::default()
    };
    let mut node = HyParView::new(me, config, seed);
    for &p in peers {
        received(&mut node, p, Message::Neighbor { high: true });
    }
    assert_eq!(node.active().len(), peers.len());
    node
}

#[test]
fn a_swap_crosses_two_links_and_every_view_keeps_its_size() {
    // Two full parts: a with 1, 2, 3 and b with 4, 5, 6.
    let mut a = full_node(0, &[1, 2, 3], 3);
    let mut b = full_node(9, &[4, 5, 6], 4);
    let mut out = Vec::new();
    a.handle(In::Swap(9), &mut out);
    // a drops a neighbour first, tells it, and hands it to b.
    let sent = sends(&out);
    let [(spare, Message::Disconnect), (9, Message::Swap { spare: handed })] = sent[..] else {
        panic!("{sent:?}");
    };
    assert_eq!(spare, handed);
    assert!([1, 2, 3].contains(&spare));
    assert_eq!(a.active().len(), 2);
    assert!(a.passive().contains(&spare));

    let out = received(&mut b, 0, Message::Swap { spare });
    let sent = sends(&out);
    // b drops one of its own, hands it the spare (a walk that ends there), takes a in.
    let ours = match sent[..] {
        [(y, Message::Disconnect), (y2, Message::ForwardJoin { joiner, ttl: 0 }), (0, Message::NeighborReply { accepted: true })]
            if y == y2 && joiner == spare =>
        {
            y
        }
        _ => panic!("{sent:?}"),
    };
    assert!([4, 5, 6].contains(&ours));
    assert!(b.active().contains(&0) && b.active().len() == 3);

    received(&mut a, 9, Message::NeighborReply { accepted: true });
    assert!(a.active().contains(&9) && a.active().len() == 3);

    // The one b dropped takes the spare in, and the spare it: both full again.
    let mut y = full_node(ours, &[9, 40, 41], 5);
    received(&mut y, 9, Message::Disconnect);
    let out = received(
        &mut y,
        9,
        Message::ForwardJoin {
            joiner: spare,
            ttl: 0,
        },
    );
    assert_eq!(sends(&out), [(spare, Message::Neighbor { high: true })]);
    assert!(y.active().contains(&spare) && y.active().len() == 3);
}

#[test]
fn a_swap_is_asked_only_of_a_full_view_for_a_member_outside_it() {
    let mut a = full_node(0, &[1, 2, 3], 3);
    let mut out = Vec::new();
    a.handle(In::Swap(2), &mut out);
    a.handle(In::Swap(0), &mut out);
    assert!(out.is_empty(), "a neighbour or itself: {out:?}");
    a.handle(In::Swap(7), &mut out);
    out.clear();
    a.handle(In::Swap(7), &mut out);
    assert!(out.is_empty(), "asked already: {out:?}");
    // Not full: nothing to swap (a refill asks instead).
    let mut c = full_node(0, &[1, 2], 3);
    received(&mut c, 2, Message::Disconnect);
    c.handle(In::Swap(7), &mut out);
    assert!(out.is_empty(), "{out:?}");
    // A receiver with room takes the sender in and drops nobody.
    let mut d = full_node(8, &[1], 1);
    let d_config = d.config().clone();
    assert_eq!(d_config.active, 1);
    received(&mut d, 1, Message::Disconnect);
    let out = received(&mut d, 0, Message::Swap { spare: 3 });
    assert_eq!(
        sends(&out),
        [(0, Message::NeighborReply { accepted: true })]
    );
    assert_eq!(d.active(), [0]);
}

#[test]
fn simulated_small_clusters_whose_views_filled_apart_are_joined_by_swaps() {
    // With 8 nodes and views of 3, some clusters settle into two full 4-cliques: every
    // view is full, so nothing repairs them without swaps.
    let run = |seed: u64, swap_every: u32| {
        let cfg = MembershipSimConfig {
            nodes: 8,
            churn: 0.0,
            settle_rounds: 5,
            max_rounds: 60,
            views: ViewConfig {
                active: 3,
                passive: 10,
                swap_every,
                ..ViewConfig::default()
            },
            seed,
            ..MembershipSimConfig::default()
        };
        sim::run(&cfg).unwrap()
    };
    let split: Vec<u64> = (0..400).filter(|&s| run(s, 0).components > 1).collect();
    assert!(!split.is_empty(), "some runs split without swaps");
    for seed in 0..400 {
        let r = run(seed, ViewConfig::default().swap_every);
        assert!(r.rounds_to_heal.is_some(), "seed {seed}: {r:?}");
        assert!(r.max_active_view <= 3, "seed {seed}: {r:?}");
    }
}

#[test]
fn a_shuffle_walks_then_swaps_samples_of_the_views() {
    let config = ViewConfig {
        active: 3,
        passive: 4,
        ..ViewConfig::default()
    };
    let mut a = HyParView::new(0, config.clone(), 8);
    for p in [1, 2] {
        received(&mut a, p, Message::Neighbor { high: true });
    }
    received(&mut a, 7, Message::Neighbor { high: false });
    received(&mut a, 7, Message::Disconnect); // 7 now in a's passive view
    let mut out = Vec::new();
    a.handle(In::Shuffle, &mut out);
    let shuffles: Vec<(u32, Message<u32>)> = sends(&out)
        .into_iter()
        .filter(|(_, m)| matches!(m, Message::Shuffle { .. }))
        .collect();
    let [(to, Message::Shuffle { origin, ttl, peers })] = &shuffles[..] else {
        panic!("one shuffle expected: {shuffles:?}");
    };
    assert_eq!((*origin, *ttl), (0, config.shuffle_walk));
    assert!(peers.contains(&0) && peers.contains(&7));
    assert!([1, 2].contains(to));

    // Where it ends (one hop left), the receiver answers the origin from its passive view and
    // keeps what it was sent.
    let mut b = HyParView::new(4, config, 9);
    received(&mut b, 20, Message::Neighbor { high: false });
    received(&mut b, 20, Message::Disconnect);
    let out = received(
        &mut b,
        1,
        Message::Shuffle {
            origin: 0,
            ttl: 1,
            peers: vec![0, 7],
        },
    );
    assert_eq!(
        sends(&out),
        [(0, Message::ShuffleReply { peers: vec![20] })]
    );
    assert!(b.passive().contains(&0) && b.passive().contains(&7));
    received(&mut a, 4, Message::ShuffleReply { peers: vec![20] });
    assert!(a.passive().contains(&20));
}

#[test]
fn a_simulated_cluster_heals_after_a_fifth_crashes() {
    let cfg = MembershipSimConfig {
        nodes: 300,
        churn: 0.2,
        ..MembershipSimConfig::default()
    };
    let report = sim::run(&cfg).unwrap();
    assert_eq!(report.crashed, 60);
    assert_eq!(report.joined_after, 60);
    assert_eq!(report.live, 300);
    assert_eq!(report.components, 1, "{report:?}");
    assert_eq!(report.reliability, 1.0, "{report:?}");
    assert!(report.rounds_to_heal.is_some(), "{report:?}");
    assert!(report.max_active_view <= cfg.views.active);
    assert!(report.min_active_view >= 1);
    assert!(report.members_converged, "{report:?}");
    assert_eq!(
        report.list_entries, 360,
        "the 300 first, and the 60 joined after"
    );
}

#[test]
fn a_simulated_cluster_heals_after_half_crashes() {
    let cfg = MembershipSimConfig {
        nodes: 300,
        churn: 0.5,
        seed: 2,
        ..MembershipSimConfig::default()
    };
    let report = sim::run(&cfg).unwrap();
    assert_eq!(report.components, 1, "{report:?}");
    assert_eq!(report.reliability, 1.0, "{report:?}");
    assert!(report.max_active_view <= cfg.views.active);
    assert!(report.members_converged, "{report:?}");
}

#[test]
fn the_simulation_is_repeatable() {
    let cfg = MembershipSimConfig {
        nodes: 100,
        ..MembershipSimConfig::default()
    };
    assert_eq!(sim::run(&cfg).unwrap(), sim::run(&cfg).unwrap());
}

mod list {
    use super::super::*;
    use std::time::Instant;

    fn update(id: u32, incarnation: u32, state: MemberState, reporter: Option<u32>) -> Update<u32> {
        Update {
            member: Member {
                id,
                incarnation,
                state,
            },
            reporter,
        }
    }

    fn merge(
        list: &mut MemberList<u32>,
        u: Update<u32>,
        now: Instant,
    ) -> (Vec<Update<u32>>, Vec<MemberEvent<u32>>) {
        let (mut spread, mut events) = (Vec::new(), Vec::new());
        list.merge(u, now, &mut spread, &mut events);
        (spread, events)
    }

    fn state_of(list: &MemberList<u32>, id: u32) -> Option<MemberState> {
        list.get(&id).map(|m| m.state)
    }

    #[test]
    fn one_suspicion_is_not_enough_two_reporters_fail_a_member_at_once() {
        let now = Instant::now();
        let mut list = MemberList::new(0, 1, ListConfig::default());
        merge(&mut list, update(7, 1, MemberState::Joined, None), now);
        let (_, events) = merge(
            &mut list,
            update(7, 1, MemberState::Suspected, Some(1)),
            now,
        );
        assert_eq!(state_of(&list, 7), Some(MemberState::Suspected));
        assert_eq!(events.len(), 1);
        // The same reporter again counts once.
        merge(
            &mut list,
            update(7, 1, MemberState::Suspected, Some(1)),
            now,
        );
        assert_eq!(state_of(&list, 7), Some(MemberState::Suspected));
        let (_, events) = merge(
            &mut list,
            update(7, 1, MemberState::Suspected, Some(2)),
            now,
        );
        assert_eq!(state_of(&list, 7), Some(MemberState::Failed));
        assert_eq!(events[0].member.state, MemberState::Failed);
        assert_eq!(list.live().copied().collect::<Vec<_>>(), [0]);
    }

    #[test]
    fn a_lone_suspicion_fails_the_member_after_the_timeout_unless_refuted() {
        let now = Instant::now();
        let config = ListConfig::default();
        let mut list = MemberList::new(0, 1, config.clone());
        merge(&mut list, update(7, 1, MemberState::Joined, None), now);
        merge(&mut list, update(8, 1, MemberState::Joined, None), now);
        let (mut spread, mut events) = (Vec::new(), Vec::new());
        list.unreachable(&7, now, &mut spread, &mut events);
        list.unreachable(&8, now, &mut spread, &mut events);
        assert_eq!(
            spread.len(),
            2,
            "our suspicions go out for the others to count"
        );
        // 8 refutes with a higher incarnation before the timeout.
        merge(&mut list, update(8, 2, MemberState::Joined, None), now);
        let mut events = Vec::new();
        list.tick(now + config.suspect_timeout / 2, &mut events);
        assert_eq!(state_of(&list, 7), Some(MemberState::Suspected));
        list.tick(now + config.suspect_timeout, &mut events);
        assert_eq!(state_of(&list, 7), Some(MemberState::Failed));
        assert_eq!(state_of(&list, 8), Some(MemberState::Joined));
        // A late confirmation of 8's old incarnation changes nothing.
        merge(
            &mut list,
            update(8, 1, MemberState::Suspected, Some(3)),
            now,
        );
        merge(
            &mut list,
            update(8, 1, MemberState::Suspected, Some(4)),
            now,
        );
        assert_eq!(state_of(&list, 8), Some(MemberState::Joined));
    }

    #[test]
    fn a_live_member_refutes_a_suspicion_of_itself_with_a_higher_incarnation() {
        let now = Instant::now();
        let mut list = MemberList::new(0, 5, ListConfig::default());
        let (spread, _) = merge(
            &mut list,
            update(0, 5, MemberState::Suspected, Some(1)),
            now,
        );
        assert_eq!(spread, [update(0, 6, MemberState::Joined, None)]);
        // An older accusation needs no answer.
        let (spread, _) = merge(&mut list, update(0, 3, MemberState::Failed, None), now);
        assert!(spread.is_empty());
    }

    #[test]
    fn a_restarted_member_comes_back_with_a_higher_incarnation_and_leaving_is_final_for_one() {
        let now = Instant::now();
        let mut list = MemberList::new(0, 1, ListConfig::default());
        merge(&mut list, update(7, 1, MemberState::Failed, None), now);
        merge(&mut list, update(7, 1, MemberState::Joined, None), now);
        assert_eq!(
            state_of(&list, 7),
            Some(MemberState::Failed),
            "same life: still failed"
        );
        merge(&mut list, update(7, 2, MemberState::Joined, None), now);
        assert_eq!(state_of(&list, 7), Some(MemberState::Joined));
        merge(&mut list, update(7, 2, MemberState::Left, None), now);
        assert_eq!(state_of(&list, 7), Some(MemberState::Left));
        let mut me = MemberList::new(9, 4, ListConfig::default());
        assert_eq!(me.leave(), update(9, 4, MemberState::Left, None));
        assert_eq!(me.live().count(), 0);
    }

    #[test]
    fn a_snapshot_carries_everything_known() {
        let now = Instant::now();
        let mut a = MemberList::new(0, 1, ListConfig::default());
        for (id, state) in [(1, MemberState::Joined), (2, MemberState::Failed)] {
            merge(&mut a, update(id, 1, state, None), now);
        }
        let mut b = MemberList::new(3, 1, ListConfig::default());
        for u in a.snapshot() {
            merge(&mut b, u, now);
        }
        let mut live: Vec<u32> = b.live().copied().collect();
        live.sort();
        assert_eq!(live, [0, 1, 3]);
        assert_eq!(state_of(&b, 2), Some(MemberState::Failed));
    }

    #[test]
    fn digests_agree_when_the_lists_do_and_name_the_buckets_that_differ() {
        let now = Instant::now();
        let mut a = MemberList::new(0, 1, ListConfig::default());
        let mut b = MemberList::new(1, 1, ListConfig::default());
        assert_ne!(a.digest(), b.digest());
        for id in 2..200 {
            merge(&mut a, update(id, 1, MemberState::Joined, None), now);
            merge(&mut b, update(id, 1, MemberState::Joined, None), now);
        }
        merge(&mut a, b.me(), now);
        merge(&mut b, a.me(), now);
        // The same entries, merged in another order: the same digest.
        assert_eq!(a.digest().differs(b.digest()), 0);

        // One member changes in `a` only: one bucket differs, and it holds that member.
        merge(&mut a, update(77, 2, MemberState::Joined, None), now);
        let mask = a.digest().differs(b.digest());
        assert_eq!(mask.count_ones(), 1);
        let sent = a.snapshot_of(mask);
        assert!(sent.iter().any(|u| u.member.id == 77));
        assert!(sent.len() < 20, "a bucket, not the list: {}", sent.len());
        // Sending that bucket brings `b` level, and back to an equal digest.
        for u in sent {
            merge(&mut b, u, now);
        }
        assert_eq!(a.digest().differs(b.digest()), 0);

        // A failure and a leave change the digest too.
        let before = a.digest().clone();
        merge(&mut a, update(5, 1, MemberState::Failed, None), now);
        assert_ne!(*a.digest(), before);
        let mut c = MemberList::new(0, 1, ListConfig::default());
        let left = c.digest().clone();
        c.leave();
        assert_ne!(*c.digest(), left);
    }

    #[test]
    fn the_live_digest_follows_who_is_up() {
        let now = Instant::now();
        let mut a = MemberList::new(0, 1, ListConfig::default());
        assert_eq!(a.live_digest(), live_digest_of(&[0]));
        for id in 1..5 {
            merge(&mut a, update(id, 1, MemberState::Joined, None), now);
        }
        assert_eq!(a.live_digest(), live_digest_of(&[0, 1, 2, 3, 4]));
        // Suspected is still up; failed and left are not; a new incarnation is up again.
        merge(&mut a, update(2, 1, MemberState::Suspected, Some(9)), now);
        assert_eq!(a.live_digest(), live_digest_of(&[0, 1, 2, 3, 4]));
        merge(&mut a, update(2, 1, MemberState::Failed, None), now);
        merge(&mut a, update(3, 1, MemberState::Left, None), now);
        assert_eq!(a.live_digest(), live_digest_of(&[4, 1, 0]));
        merge(&mut a, update(2, 2, MemberState::Joined, None), now);
        assert_eq!(a.live_digest(), live_digest_of(&[0, 1, 2, 4]));
        a.leave();
        assert_eq!(a.live_digest(), live_digest_of(&[1, 2, 4]));
    }
}
