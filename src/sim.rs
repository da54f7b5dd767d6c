//! A deterministic simulator of the broadcast protocol: many [`BroadcastEngine`]s on a random
//! graph, joined by simulated links, with no gRPC and no threads.
//!
//! Each directed link is a FIFO pipe with a fixed latency (drawn per link) and a bandwidth, so a
//! 512 KiB payload takes longer than an ACK and frames on one link keep their order, as on a
//! stream. Frames may be lost (`loss`). Nodes may be killed while a broadcast spreads: a dead
//! node drops what reaches it and sends nothing, and its neighbours learn it after `detect`
//! (what keepalive does for a real node). Everything is driven by one seeded random generator,
//! so a run is reproducible.
//!
//! Per broadcast it reports reliability (fraction of the live nodes that delivered it), RMR
//! (relative message redundancy: payload copies received / nodes reached - 1), the hop count
//! of the last delivery, and whether the count the origin's converged ACKs gave equals the
//! number of nodes that delivered it. `gossip sim` runs it from the command line.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::time::{Duration, Instant};

use bytes::Bytes;
use serde::Serialize;

use crate::broadcast::{Action, BroadcastConfig, BroadcastEngine, BroadcastId, Event, Frame};
use crate::error::Error;
use crate::id::NodeId;
use crate::limits::Limits;
use crate::router::FanoutRouter;

/// What to simulate.
#[derive(Clone, Debug)]
pub struct SimConfig {
    /// Number of nodes.
    pub nodes: usize,
    /// Neighbours per node in the random graph (and the router's fanout for small payloads).
    pub fanout: usize,
    /// Payload size in bytes.
    pub payload: usize,
    /// Fraction of the nodes killed while the first measured broadcast spreads.
    pub kill: f64,
    /// Probability that a frame is lost on its link.
    pub loss: f64,
    /// Broadcasts before measuring, to let the lazy plane settle into a tree.
    pub warmup: usize,
    /// Broadcasts measured.
    pub broadcasts: usize,
    /// Seed of the random generator.
    pub seed: u64,
    /// Link latencies are drawn uniformly from this range.
    pub latency: (Duration, Duration),
    /// Bytes per second of each directed link.
    pub bandwidth: u64,
    /// Time for a node to notice that a neighbour died.
    pub detect: Duration,
    /// Timer resolution of the engines.
    pub tick: Duration,
    /// The protocol's settings.
    pub protocol: BroadcastConfig,
}

impl Default for SimConfig {
    fn default() -> Self {
        SimConfig {
            nodes: 1000,
            fanout: 3,
            payload: 512 * 1024,
            kill: 0.0,
            loss: 0.0,
            warmup: 10,
            broadcasts: 10,
            seed: 1,
            latency: (Duration::from_millis(1), Duration::from_millis(5)),
            bandwidth: 1 << 30,
            detect: Duration::from_millis(200),
            tick: Duration::from_millis(5),
            protocol: BroadcastConfig::default(),
        }
    }
}

/// The figures of one broadcast.
#[derive(Clone, Debug, Serialize)]
pub struct BroadcastReport {
    /// Its position in the run (warm-up broadcasts included).
    pub index: usize,
    /// Measured (not warm-up).
    pub measured: bool,
    /// Nodes alive when it had converged, the origin included.
    pub live: usize,
    /// Nodes other than the origin that delivered it (some may have died since).
    pub delivered: usize,
    /// Live nodes other than the origin that delivered it, over live nodes other than the origin.
    pub reliability: f64,
    /// Live nodes other than the origin that live links still join to it.
    pub reachable: usize,
    /// Live nodes other than the origin that delivered it, over `reachable`: what the graph
    /// left after the failures allowed.
    pub reachable_reliability: f64,
    /// Payload copies received by nodes (duplicates included).
    pub payload_copies: u64,
    /// Relative message redundancy: payload copies / nodes reached - 1.
    pub rmr: f64,
    /// Hops travelled by the delivery that travelled furthest.
    pub last_delivery_hop: u32,
    /// Simulated milliseconds from the broadcast until the last delivery.
    pub last_delivery_ms: f64,
    /// Simulated milliseconds from the broadcast until the origin's completion.
    pub converged_ms: f64,
    /// The count in the origin's completion.
    pub converged_count: u64,
    /// `converged_count` equals `delivered`.
    pub converged_count_exact: bool,
    /// Nodes the completion listed as missing.
    pub missing: usize,
    /// Nodes killed while it spread.
    pub killed: usize,
}

/// A whole run: every broadcast, and a summary of the measured ones.
#[derive(Clone, Debug, Serialize)]
pub struct SimReport {
    /// Nodes.
    pub nodes: usize,
    /// Neighbours per node.
    pub fanout: usize,
    /// Payload bytes.
    pub payload: usize,
    /// Fraction killed.
    pub kill: f64,
    /// Seed.
    pub seed: u64,
    /// Lowest reliability among the measured broadcasts.
    pub reliability: f64,
    /// Mean reliability of the measured broadcasts.
    pub reliability_mean: f64,
    /// Mean RMR of the measured broadcasts.
    pub rmr: f64,
    /// Highest last-delivery hop among the measured broadcasts.
    pub last_delivery_hop: u32,
    /// Lowest reachable reliability among the measured broadcasts.
    pub reachable_reliability: f64,
    /// Every measured broadcast's converged count was exact.
    pub converged_count_exact: bool,
    /// Measured broadcasts whose converged count was exact.
    pub exact_broadcasts: usize,
    /// Measured broadcasts.
    pub measured: usize,
    /// Every broadcast, warm-up included.
    pub broadcasts: Vec<BroadcastReport>,
}

/// Something that happens at a simulated time.
#[derive(Debug)]
enum Happening {
    Arrive {
        to: usize,
        from: usize,
        frame: Frame,
    },
    Down {
        at: usize,
        peer: usize,
    },
    Kill(usize),
    Tick,
}

struct World {
    cfg: SimConfig,
    ids: Vec<NodeId>,
    index: HashMap<NodeId, usize>,
    engines: Vec<BroadcastEngine>,
    alive: Vec<bool>,
    adjacency: Vec<Vec<usize>>,
    latency: HashMap<(usize, usize), Duration>,
    /// When each directed link is free again.
    link_free: HashMap<(usize, usize), Duration>,
    queue: BTreeMap<(Duration, u64), Happening>,
    seq: u64,
    /// Non-tick happenings queued.
    busy: usize,
    now: Duration,
    base: Instant,
    rng: fastrand::Rng,
}

/// Runs a simulation.
pub fn run(cfg: SimConfig) -> Result<SimReport, Error> {
    if cfg.nodes < 2 || cfg.fanout == 0 || cfg.fanout >= cfg.nodes {
        return Err(Error::Config {
            field: "sim.nodes/fanout",
            reason: format!(
                "need at least 2 nodes and 0 < fanout < nodes (got {} nodes, fanout {})",
                cfg.nodes, cfg.fanout
            ),
        });
    }
    if !(0.0..1.0).contains(&cfg.kill) || !(0.0..1.0).contains(&cfg.loss) {
        return Err(Error::Config {
            field: "sim.kill/loss",
            reason: "must be in [0, 1)".into(),
        });
    }
    let mut world = World::new(cfg)?;
    let payload = Bytes::from(vec![0xA5u8; world.cfg.payload]);
    let total = world.cfg.warmup + world.cfg.broadcasts;
    let mut reports = Vec::with_capacity(total);
    let mut spread_ms = Vec::new();
    for index in 0..total {
        let measured = index >= world.cfg.warmup;
        let kill_now = measured && index == world.cfg.warmup && world.cfg.kill > 0.0;
        let window = if spread_ms.is_empty() {
            Duration::from_millis(50)
        } else {
            Duration::from_secs_f64(spread_ms.iter().sum::<f64>() / spread_ms.len() as f64 / 1000.0)
        };
        let report = world.broadcast(index, measured, &payload, kill_now, window)?;
        if !measured {
            spread_ms.push(report.last_delivery_ms);
        }
        reports.push(report);
    }
    let measured: Vec<&BroadcastReport> = reports.iter().filter(|r| r.measured).collect();
    let n = measured.len().max(1) as f64;
    Ok(SimReport {
        nodes: world.cfg.nodes,
        fanout: world.cfg.fanout,
        payload: world.cfg.payload,
        kill: world.cfg.kill,
        seed: world.cfg.seed,
        reliability: measured.iter().map(|r| r.reliability).fold(1.0, f64::min),
        reliability_mean: measured.iter().map(|r| r.reliability).sum::<f64>() / n,
        rmr: measured.iter().map(|r| r.rmr).sum::<f64>() / n,
        reachable_reliability: measured
            .iter()
            .map(|r| r.reachable_reliability)
            .fold(1.0, f64::min),
        last_delivery_hop: measured
            .iter()
            .map(|r| r.last_delivery_hop)
            .max()
            .unwrap_or(0),
        converged_count_exact: measured.iter().all(|r| r.converged_count_exact),
        exact_broadcasts: measured.iter().filter(|r| r.converged_count_exact).count(),
        measured: measured.len(),
        broadcasts: reports,
    })
}

impl World {
    fn new(cfg: SimConfig) -> Result<World, Error> {
        let mut rng = fastrand::Rng::with_seed(cfg.seed);
        let limits = Limits::default();
        let ids = (0..cfg.nodes)
            .map(|i| NodeId::new(&format!("n{i}"), &limits))
            .collect::<Result<Vec<_>, _>>()?;
        let adjacency = random_graph(cfg.nodes, cfg.fanout, &mut rng);
        let mut latency = HashMap::new();
        let (lo, hi) = cfg.latency;
        for (a, peers) in adjacency.iter().enumerate() {
            for &b in peers {
                if a < b {
                    let span = hi.saturating_sub(lo).as_micros() as u64;
                    let l = lo + Duration::from_micros(rng.u64(0..=span));
                    latency.insert((a, b), l);
                    latency.insert((b, a), l);
                }
            }
        }
        let base = Instant::now();
        let mut engines = Vec::with_capacity(cfg.nodes);
        for (i, id) in ids.iter().enumerate() {
            let router = Box::new(FanoutRouter::new(cfg.fanout));
            let mut e = BroadcastEngine::new(id.clone(), cfg.protocol.clone(), router);
            let mut sink = Vec::new();
            for &peer in &adjacency[i] {
                let up = Event::NeighborUp {
                    peer: ids[peer].clone(),
                    plain: false,
                };
                e.handle(up, base, &mut sink);
            }
            engines.push(e);
        }
        let index = ids
            .iter()
            .cloned()
            .enumerate()
            .map(|(i, id)| (id, i))
            .collect();
        Ok(World {
            alive: vec![true; cfg.nodes],
            cfg,
            ids,
            index,
            engines,
            adjacency,
            latency,
            link_free: HashMap::new(),
            queue: BTreeMap::new(),
            seq: 0,
            busy: 0,
            now: Duration::ZERO,
            base,
            rng,
        })
    }

    /// Live nodes other than `origin` joined to it by live nodes.
    fn reachable_from(&self, origin: usize) -> usize {
        let mut seen = vec![false; self.cfg.nodes];
        seen[origin] = true;
        let mut queue = VecDeque::from([origin]);
        let mut count = 0;
        while let Some(n) = queue.pop_front() {
            for &m in &self.adjacency[n] {
                if self.alive[m] && !seen[m] {
                    seen[m] = true;
                    count += 1;
                    queue.push_back(m);
                }
            }
        }
        count
    }

    fn at(&mut self, when: Duration, what: Happening) {
        if !matches!(what, Happening::Tick) {
            self.busy += 1;
        }
        self.seq += 1;
        self.queue.insert((when, self.seq), what);
    }

    fn frame_bytes(frame: &Frame) -> u64 {
        match frame {
            Frame::Payload { payload, .. } => payload.len() as u64 + 64,
            Frame::IHave { .. } | Frame::Graft { .. } => 64,
            Frame::Ack(a) => 64 + 16 * a.missing.len() as u64,
        }
    }

    /// Puts a frame on the link `from -> to`: after the frames before it, its transfer time
    /// and the link's latency.
    fn send(&mut self, from: usize, to: usize, frame: Frame) {
        if self.cfg.loss > 0.0 && self.rng.f64() < self.cfg.loss {
            return;
        }
        let transfer =
            Duration::from_secs_f64(Self::frame_bytes(&frame) as f64 / self.cfg.bandwidth as f64);
        let free = self.link_free.entry((from, to)).or_default();
        let start = (*free).max(self.now);
        *free = start + transfer;
        let arrive = start + transfer + self.latency.get(&(from, to)).copied().unwrap_or_default();
        self.at(arrive, Happening::Arrive { to, from, frame });
    }

    /// Carries out one engine's actions; records deliveries and completions of `id`.
    fn apply(&mut self, node: usize, actions: Vec<Action>, watch: &mut Watch) {
        for action in actions {
            match action {
                Action::Send { to, frame } => {
                    if let Some(&to) = self.index.get(&to) {
                        self.send(node, to, frame);
                    }
                }
                Action::Deliver { id, hops, .. } => {
                    if id == watch.id {
                        watch.delivered.insert(node);
                        watch.last_hop = watch.last_hop.max(hops);
                        watch.last_delivery = self.now;
                    }
                }
                Action::Complete(c) => {
                    if c.id == watch.id {
                        watch.completion = Some((c.reached, c.missing.len(), self.now));
                    }
                }
            }
        }
    }

    fn broadcast(
        &mut self,
        index: usize,
        measured: bool,
        payload: &Bytes,
        kill: bool,
        window: Duration,
    ) -> Result<BroadcastReport, Error> {
        let live: Vec<usize> = (0..self.cfg.nodes).filter(|&i| self.alive[i]).collect();
        let origin = live[self.rng.usize(..live.len())];
        let start = self.now;
        let mut killed = 0;
        if kill {
            let want = (self.cfg.kill * self.cfg.nodes as f64).round() as usize;
            let mut victims: Vec<usize> = live.iter().copied().filter(|&i| i != origin).collect();
            self.rng.shuffle(&mut victims);
            for v in victims.into_iter().take(want) {
                let after = self.rng.u64(0..=window.as_micros() as u64);
                self.at(start + Duration::from_micros(after), Happening::Kill(v));
                killed += 1;
            }
        }
        let hash = format!("b{index}");
        let mut watch = Watch {
            id: BroadcastId {
                origin: self.ids[origin].clone(),
                hash: hash.clone(),
            },
            delivered: BTreeSet::new(),
            copies: 0,
            last_hop: 0,
            last_delivery: start,
            completion: None,
        };
        let mut out = Vec::new();
        let now = self.base + self.now;
        self.engines[origin].start(hash, payload.clone(), now, &mut out)?;
        self.apply(origin, out, &mut watch);
        self.at(self.now + self.cfg.tick, Happening::Tick);
        // Run until the origin has its completion and nothing but timers is left.
        while let Some(((when, _), what)) = self.queue.pop_first() {
            self.now = when;
            let now = self.base + when;
            match what {
                Happening::Tick => {
                    for node in 0..self.cfg.nodes {
                        if self.alive[node] {
                            let mut out = Vec::new();
                            self.engines[node].handle(Event::Tick, now, &mut out);
                            self.apply(node, out, &mut watch);
                        }
                    }
                    if watch.completion.is_none() || self.busy > 0 {
                        self.at(when + self.cfg.tick, Happening::Tick);
                    }
                    continue;
                }
                Happening::Arrive { to, from, frame } => {
                    self.busy -= 1;
                    if !self.alive[to] {
                        continue;
                    }
                    if matches!(&frame, Frame::Payload { id, .. } if *id == watch.id) {
                        watch.copies += 1;
                    }
                    let mut out = Vec::new();
                    let event = Event::Received {
                        from: self.ids[from].clone(),
                        frame,
                    };
                    self.engines[to].handle(event, now, &mut out);
                    self.apply(to, out, &mut watch);
                }
                Happening::Down { at, peer } => {
                    self.busy -= 1;
                    if self.alive[at] {
                        let mut out = Vec::new();
                        let event = Event::NeighborDown {
                            peer: self.ids[peer].clone(),
                        };
                        self.engines[at].handle(event, now, &mut out);
                        self.apply(at, out, &mut watch);
                    }
                }
                Happening::Kill(node) => {
                    self.busy -= 1;
                    self.alive[node] = false;
                    let peers = self.adjacency[node].clone();
                    for at in peers {
                        self.at(when + self.cfg.detect, Happening::Down { at, peer: node });
                    }
                }
            }
        }
        let Some((reached, missing, done)) = watch.completion else {
            return Err(Error::Config {
                field: "sim",
                reason: format!("broadcast {index} never converged (a bug)"),
            });
        };
        let live_now = self.alive.iter().filter(|a| **a).count();
        let delivered_live = watch.delivered.iter().filter(|&&n| self.alive[n]).count();
        let delivered = watch.delivered.len();
        let reachable = self.reachable_from(origin);
        let reached_of_reachable = watch
            .delivered
            .iter()
            .filter(|&&n| self.alive[n])
            .count()
            .min(reachable);
        let ms = |d: Duration| d.saturating_sub(start).as_secs_f64() * 1000.0;
        Ok(BroadcastReport {
            index,
            measured,
            live: live_now,
            delivered,
            reliability: if live_now > 1 {
                delivered_live as f64 / (live_now - 1) as f64
            } else {
                1.0
            },
            reachable,
            reachable_reliability: if reachable > 0 {
                reached_of_reachable as f64 / reachable as f64
            } else {
                1.0
            },
            payload_copies: watch.copies,
            rmr: if delivered > 0 {
                watch.copies as f64 / delivered as f64 - 1.0
            } else {
                0.0
            },
            last_delivery_hop: watch.last_hop,
            last_delivery_ms: ms(watch.last_delivery),
            converged_ms: ms(done),
            converged_count: reached,
            converged_count_exact: reached == delivered as u64,
            missing,
            killed,
        })
    }
}

/// What we record about the broadcast being run.
struct Watch {
    id: BroadcastId,
    delivered: BTreeSet<usize>,
    copies: u64,
    last_hop: u32,
    last_delivery: Duration,
    completion: Option<(u64, usize, Duration)>,
}

/// A connected random graph in which every node has `degree` neighbours, or close to it: pairs
/// are drawn at random among nodes still short of neighbours; components left apart at the end
/// are joined by one extra edge each.
pub fn random_graph(nodes: usize, degree: usize, rng: &mut fastrand::Rng) -> Vec<Vec<usize>> {
    let mut adj: Vec<BTreeSet<usize>> = vec![BTreeSet::new(); nodes];
    let mut open: Vec<usize> = (0..nodes).collect();
    let mut stuck = 0;
    while open.len() > 1 && stuck < 100 {
        let a = open[rng.usize(..open.len())];
        let b = open[rng.usize(..open.len())];
        if a == b || adj[a].contains(&b) {
            stuck += 1;
            continue;
        }
        stuck = 0;
        adj[a].insert(b);
        adj[b].insert(a);
        open.retain(|&n| adj[n].len() < degree);
    }
    // Join components to the first one.
    let mut component = vec![usize::MAX; nodes];
    let mut roots = Vec::new();
    for start in 0..nodes {
        if component[start] != usize::MAX {
            continue;
        }
        roots.push(start);
        let mut queue = VecDeque::from([start]);
        component[start] = start;
        while let Some(n) = queue.pop_front() {
            for &m in &adj[n] {
                if component[m] == usize::MAX {
                    component[m] = start;
                    queue.push_back(m);
                }
            }
        }
    }
    for pair in roots.windows(2) {
        adj[pair[0]].insert(pair[1]);
        adj[pair[1]].insert(pair[0]);
    }
    adj.into_iter().map(|s| s.into_iter().collect()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn small(nodes: usize, fanout: usize) -> SimConfig {
        SimConfig {
            nodes,
            fanout,
            warmup: 3,
            broadcasts: 3,
            ..SimConfig::default()
        }
    }

    #[test]
    fn graph_is_connected_and_near_regular() {
        let mut rng = fastrand::Rng::with_seed(7);
        let g = random_graph(200, 3, &mut rng);
        let mut seen = [false; 200];
        let mut queue = VecDeque::from([0]);
        seen[0] = true;
        while let Some(n) = queue.pop_front() {
            for &m in &g[n] {
                assert!(g[m].contains(&n), "edges are symmetric");
                if !seen[m] {
                    seen[m] = true;
                    queue.push_back(m);
                }
            }
        }
        assert!(seen.iter().all(|s| *s));
        let edges: usize = g.iter().map(Vec::len).sum();
        assert!(edges >= 200 * 3 - 10, "about 3 neighbours each: {edges}");
    }

    #[test]
    fn no_failures_reach_everyone_with_exact_counts() {
        let r = run(small(200, 3)).unwrap();
        for b in &r.broadcasts {
            assert_eq!(b.reliability, 1.0, "{b:?}");
            assert!(b.converged_count_exact, "{b:?}");
            assert_eq!(b.converged_count, 199);
            assert_eq!(b.missing, 0);
        }
    }

    #[test]
    fn large_payloads_settle_into_a_tree() {
        let r = run(small(200, 4)).unwrap();
        let first = &r.broadcasts[0];
        assert!(first.rmr > 1.0, "the first broadcast floods: {first:?}");
        assert!(r.rmr <= 0.1, "steady state is a tree: {}", r.rmr);
    }

    #[test]
    fn small_payloads_flood_and_still_converge() {
        let mut cfg = small(100, 3);
        cfg.payload = 1024;
        let r = run(cfg).unwrap();
        assert_eq!(r.reliability, 1.0);
        assert!(r.converged_count_exact);
    }

    #[test]
    fn killed_nodes_are_reported_missing() {
        let mut cfg = small(200, 4);
        cfg.kill = 0.1;
        let r = run(cfg).unwrap();
        let hit = r.broadcasts.iter().find(|b| b.killed > 0).unwrap();
        assert!(hit.missing > 0, "{hit:?}");
        assert!(r.reliability >= 0.95, "{}", r.reliability);
        // After the failures are detected, later broadcasts are exact again.
        let last = r.broadcasts.last().unwrap();
        assert!(last.converged_count_exact, "{last:?}");
    }

    #[test]
    fn runs_are_reproducible() {
        let a = run(small(100, 3)).unwrap();
        let b = run(small(100, 3)).unwrap();
        let key = |r: &SimReport| {
            r.broadcasts
                .iter()
                .map(|b| (b.payload_copies, b.last_delivery_hop, b.converged_count))
                .collect::<Vec<_>>()
        };
        assert_eq!(key(&a), key(&b));
    }
}
