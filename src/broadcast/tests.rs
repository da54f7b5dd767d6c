//! The engine on small graphs, frames passed by hand in FIFO order: exact counts, duplicates,
//! silent subtrees, links going down and the lazy plane. (`crate::sim` covers large random
//! graphs with latencies and loss.)

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::time::{Duration, Instant};

use bytes::Bytes;

use super::*;
use crate::error::Error;
use crate::limits::Limits;
use crate::router::FanoutRouter;

fn node(s: &str) -> NodeId {
    NodeId::new(s, &Limits::default()).unwrap()
}

/// Engines joined by instant links, frames delivered one at a time in the order they were sent.
struct Net {
    engines: BTreeMap<NodeId, BroadcastEngine>,
    queue: VecDeque<(NodeId, NodeId, Frame)>,
    /// Nodes whose incoming frames are dropped (alive for their neighbours, but silent).
    silent: BTreeSet<NodeId>,
    deliveries: Vec<(NodeId, BroadcastId, u32)>,
    completions: Vec<(NodeId, BroadcastCompletion)>,
    /// Payload frames sent so far.
    payloads: usize,
    start: Instant,
    now: Instant,
}

impl Net {
    fn new(names: &[&str], links: &[(&str, &str)]) -> Net {
        let mut engines: BTreeMap<NodeId, BroadcastEngine> = names
            .iter()
            .map(|n| {
                let e = BroadcastEngine::new(
                    node(n),
                    BroadcastConfig::default(),
                    Box::new(FanoutRouter::default()),
                );
                (node(n), e)
            })
            .collect();
        let now = Instant::now();
        let mut out = Vec::new();
        for (x, y) in links {
            for (from, to) in [(x, y), (y, x)] {
                let up = Event::NeighborUp {
                    peer: node(to),
                    plain: false,
                };
                engines
                    .get_mut(&node(from))
                    .unwrap()
                    .handle(up, now, &mut out);
            }
        }
        assert!(out.is_empty());
        Net {
            engines,
            queue: VecDeque::new(),
            silent: BTreeSet::new(),
            deliveries: Vec::new(),
            completions: Vec::new(),
            payloads: 0,
            start: now,
            now,
        }
    }

    fn apply(&mut self, at: &NodeId, actions: Vec<Action>) {
        for a in actions {
            match a {
                Action::Send { to, frame } => {
                    if matches!(frame, Frame::Payload { .. }) {
                        self.payloads += 1;
                    }
                    self.queue.push_back((at.clone(), to, frame));
                }
                Action::Deliver { id, hops, .. } => self.deliveries.push((at.clone(), id, hops)),
                Action::Complete(c) => self.completions.push((at.clone(), c)),
            }
        }
    }

    fn handle(&mut self, at: &str, event: Event) {
        let mut out = Vec::new();
        let at = node(at);
        self.engines
            .get_mut(&at)
            .unwrap()
            .handle(event, self.now, &mut out);
        self.apply(&at, out);
    }

    fn broadcast(&mut self, origin: &str, hash: &str, payload: Bytes) -> BroadcastId {
        let mut out = Vec::new();
        let at = node(origin);
        let id = self
            .engines
            .get_mut(&at)
            .unwrap()
            .start(hash.into(), payload, self.now, &mut out)
            .unwrap();
        self.apply(&at, out);
        id
    }

    /// Delivers queued frames until none is left.
    fn pump(&mut self) {
        while let Some((from, to, frame)) = self.queue.pop_front() {
            if self.silent.contains(&to) {
                continue;
            }
            self.handle(to.as_str(), Event::Received { from, frame });
        }
    }

    /// Moves time on by `d` and ticks every engine, then pumps.
    fn advance(&mut self, d: Duration) {
        self.now += d;
        let names: Vec<NodeId> = self.engines.keys().cloned().collect();
        for n in names {
            self.handle(n.as_str(), Event::Tick);
        }
        self.pump();
    }

    fn delivered_at(&self, n: &str) -> Vec<u32> {
        let n = node(n);
        self.deliveries
            .iter()
            .filter(|(at, _, _)| *at == n)
            .map(|(_, _, hops)| *hops)
            .collect()
    }

    fn only_completion(&self) -> &BroadcastCompletion {
        assert_eq!(self.completions.len(), 1, "{:?}", self.completions);
        &self.completions[0].1
    }
}

fn small() -> Bytes {
    Bytes::from_static(b"hello")
}

#[test]
fn a_line_converges_with_an_exact_count_and_hop_numbers() {
    let mut net = Net::new(&["a", "b", "c"], &[("a", "b"), ("b", "c")]);
    net.broadcast("a", "h1", small());
    net.pump();
    assert_eq!(net.delivered_at("b"), vec![1]);
    assert_eq!(net.delivered_at("c"), vec![2]);
    assert!(
        net.delivered_at("a").is_empty(),
        "the origin does not deliver"
    );
    let done = net.only_completion();
    assert_eq!(done.reached, 2);
    assert!(done.is_complete());
}

#[test]
fn duplicates_are_answered_but_neither_delivered_nor_counted_twice() {
    let mut net = Net::new(&["a", "b", "c"], &[("a", "b"), ("b", "c"), ("a", "c")]);
    net.broadcast("a", "h1", small());
    net.pump();
    assert_eq!(net.delivered_at("b").len(), 1);
    assert_eq!(net.delivered_at("c").len(), 1);
    let done = net.only_completion();
    assert_eq!(done.reached, 2, "b and c, each once");
    assert!(done.is_complete());
}

#[test]
fn a_silent_subtree_is_reported_missing_at_the_deadline() {
    let mut net = Net::new(&["a", "b", "c"], &[("a", "b"), ("b", "c")]);
    net.silent.insert(node("c"));
    net.broadcast("a", "h1", small());
    net.pump();
    assert!(net.completions.is_empty(), "a waits for b, b waits for c");
    // Ticks as a node makes them: b's wait ends a margin before a's, so its answer (c
    // missing) reaches a in time.
    let step = Duration::from_millis(10);
    while net.completions.is_empty() {
        assert!(net.now.duration_since(net.start) <= BroadcastConfig::default().deadline);
        net.advance(step);
    }
    let done = net.only_completion();
    assert_eq!(done.reached, 1, "only b answered for its subtree");
    assert_eq!(done.missing, vec![node("c")]);
}

#[test]
fn a_neighbour_going_down_counts_as_missing_at_once() {
    let mut net = Net::new(&["a", "b", "c"], &[("a", "b"), ("a", "c")]);
    net.silent.insert(node("c"));
    net.broadcast("a", "h1", small());
    net.pump();
    assert!(net.completions.is_empty());
    net.handle("a", Event::NeighborDown { peer: node("c") });
    let done = net.only_completion();
    assert_eq!(done.reached, 1);
    assert_eq!(done.missing, vec![node("c")]);
}

#[test]
fn an_origin_refuses_a_hash_it_still_tracks() {
    let mut net = Net::new(&["a", "b"], &[("a", "b")]);
    net.broadcast("a", "h1", small());
    net.pump();
    let mut out = Vec::new();
    let again =
        net.engines
            .get_mut(&node("a"))
            .unwrap()
            .start("h1".into(), small(), net.now, &mut out);
    assert!(matches!(again, Err(Error::DuplicateBroadcast(h)) if h == "h1"));
    assert!(out.is_empty());
}

#[test]
fn large_payloads_settle_into_a_tree() {
    let names = ["a", "b", "c", "d"];
    let links: Vec<(&str, &str)> = names
        .iter()
        .enumerate()
        .flat_map(|(i, x)| names[i + 1..].iter().map(move |y| (*x, *y)))
        .collect();
    let mut net = Net::new(&names, &links);
    let large = Bytes::from(vec![7u8; BroadcastConfig::default().lazy_threshold]);
    // The first broadcast floods the full mesh; its duplicates prune links.
    net.broadcast("a", "warm-up", large.clone());
    net.pump();
    let flooded = net.payloads;
    assert!(flooded > names.len() - 1, "{flooded} payload frames");
    net.payloads = 0;
    net.broadcast("a", "h2", large);
    net.pump();
    // Then one payload per node reached, digests for the rest; the count stays exact.
    assert_eq!(net.payloads, names.len() - 1);
    let done = &net.completions.last().unwrap().1;
    assert_eq!(done.reached, 3);
    assert!(done.is_complete());
    for n in ["b", "c", "d"] {
        assert_eq!(net.delivered_at(n).len(), 2, "{n}: each broadcast once");
    }
}

#[test]
fn payloads_beyond_the_byte_budget_are_refused_and_counted_missing() {
    // b holds at most 8 payload bytes. h1 stays held there (c is silent, so h1 is still
    // converging); h2 is refused meanwhile, and its origin counts b as missing.
    let mut net = Net::new(&["a", "b", "c"], &[("a", "b"), ("b", "c")]);
    net.engines
        .get_mut(&node("b"))
        .unwrap()
        .config
        .max_held_bytes = 8;
    net.silent.insert(node("c"));
    let payload = Bytes::from_static(b"12345678");
    net.broadcast("a", "h1", payload.clone());
    net.pump();
    net.broadcast("a", "h2", payload.clone());
    net.pump();
    assert_eq!(net.delivered_at("b"), vec![1], "h2 not delivered at b");
    let completed = |net: &Net, hash: &str| {
        net.completions
            .iter()
            .map(|(_, c)| c)
            .find(|c| c.id.hash == hash)
            .cloned()
    };
    let h2 = completed(&net, "h2").expect("h2 completed at once");
    assert_eq!((h2.reached, h2.missing), (0, vec![node("b")]));
    // At the node itself, the same budget refuses the call.
    let b = net.engines.get_mut(&node("b")).unwrap();
    let mut out = Vec::new();
    let refused = b.start("own".into(), payload, net.now, &mut out);
    assert!(
        matches!(refused, Err(Error::BroadcastBudget { held: 8, limit: 8 })),
        "{refused:?}"
    );
    // Once h1 is over (c counted missing), its payload may go: there is room again.
    net.advance(Duration::from_secs(11));
    assert!(completed(&net, "h1").is_some());
    net.broadcast("a", "h3", Bytes::from_static(b"12345678"));
    net.pump();
    assert_eq!(net.delivered_at("b"), vec![1, 1]);
}

#[test]
fn a_peers_hop_limit_and_budget_are_taken_up_to_ours() {
    let mut net = Net::new(&["a", "b", "c"], &[("a", "b"), ("b", "c")]);
    let id = BroadcastId {
        origin: node("a"),
        hash: "greedy".into(),
    };
    // A peer asks for a month and a million hops.
    net.handle(
        "b",
        Event::Received {
            from: node("a"),
            frame: Frame::Payload {
                id,
                hops: 0,
                hop_limit: 1_000_000,
                budget: Duration::from_secs(30 * 24 * 3600),
                payload: small(),
            },
        },
    );
    let forwarded = net
        .queue
        .iter()
        .find_map(|(_, to, f)| match f {
            Frame::Payload {
                hop_limit, budget, ..
            } if *to == node("c") => Some((*hop_limit, *budget)),
            _ => None,
        })
        .expect("forwarded to c");
    let ours = BroadcastConfig::default();
    assert_eq!(forwarded.0, ours.hop_limit);
    assert!(forwarded.1 <= ours.deadline, "{:?}", forwarded.1);
}

#[test]
fn plain_acks_find_their_broadcast_by_hash_and_the_index_empties() {
    // An original neighbour answers a broadcast with a plain ACK naming only the hash.
    let mut net = Net::new(&["a", "b"], &[]);
    let mut out = Vec::new();
    let a = net.engines.get_mut(&node("a")).unwrap();
    let up = Event::NeighborUp {
        peer: node("go"),
        plain: true,
    };
    a.handle(up, net.now, &mut out);
    a.start("h".into(), small(), net.now, &mut out).unwrap();
    assert!(out
        .iter()
        .any(|x| matches!(x, Action::Send { to, .. } if *to == node("go"))));
    out.clear();
    // A plain ACK for a hash nobody broadcast, then the real one.
    for hash in ["bogus", "h"] {
        let ack = Event::PlainAck {
            from: node("go"),
            hash: hash.into(),
        };
        a.handle(ack, net.now, &mut out);
    }
    assert!(
        matches!(&out[..], [Action::Complete(c)] if c.reached == 1 && c.id.hash == "h"),
        "{out:?}"
    );
    // Forgotten after `remember`, index included.
    let later = net.now + BroadcastConfig::default().remember + Duration::from_secs(1);
    a.handle(Event::Tick, later, &mut out);
    assert!(a.origins.is_empty() && a.tracked_len() == 0);
}

#[test]
fn an_original_offered_a_broadcast_by_two_of_our_nodes_counts_once() {
    // A triangle: a and b are ours, go is an original linked to both. It gets a plain copy
    // from each and ACKs both.
    let mut net = Net::new(&["a", "b"], &[("a", "b")]);
    let mut sent_to_go = Vec::new();
    for n in ["a", "b"] {
        let up = Event::NeighborUp {
            peer: node("go"),
            plain: true,
        };
        net.engines
            .get_mut(&node(n))
            .unwrap()
            .handle(up, net.now, &mut sent_to_go);
    }
    let mut out = Vec::new();
    let a = net.engines.get_mut(&node("a")).unwrap();
    a.start("h".into(), small(), net.now, &mut out).unwrap();
    // Deliver frames between a and b; answer each plain copy to go with its plain ACK.
    let mut queue: Vec<(NodeId, Action)> = out.into_iter().map(|x| (node("a"), x)).collect();
    let mut completion = None;
    let mut copies_to_go = 0;
    while let Some((at, action)) = queue.pop() {
        let mut out = Vec::new();
        match action {
            Action::Send { to, frame } if to == node("go") => {
                assert!(matches!(frame, Frame::Payload { .. }));
                copies_to_go += 1;
                let ack = Event::PlainAck {
                    from: node("go"),
                    hash: "h".into(),
                };
                net.engines
                    .get_mut(&at)
                    .unwrap()
                    .handle(ack, net.now, &mut out);
                queue.extend(out.into_iter().map(|x| (at.clone(), x)));
            }
            Action::Send { to, frame } => {
                let event = Event::Received {
                    from: at.clone(),
                    frame,
                };
                net.engines
                    .get_mut(&to)
                    .unwrap()
                    .handle(event, net.now, &mut out);
                queue.extend(out.into_iter().map(|x| (to.clone(), x)));
            }
            Action::Complete(c) => completion = Some(c),
            Action::Deliver { .. } => {}
        }
    }
    assert_eq!(copies_to_go, 2, "both of ours offer it to the original");
    let c = completion.expect("completes");
    assert_eq!(c.reached, 2, "b and go, each once: {c:?}");
    assert!(c.missing.is_empty(), "{c:?}");
}
