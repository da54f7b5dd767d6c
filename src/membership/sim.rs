//! Thousands of [`HyParView`] machines in one process, for `gossip sim --membership`: nodes join
//! through one seed, a fraction of them crash at once and as many new ones join, and shuffle
//! rounds heal the overlay. Messages are delivered in order of sending; a message to a crashed
//! node fails back to its sender, as a dial would; a crash is seen at once by the crashed
//! node's neighbours, as a broken link is. Node ids are small integers, so 10,000 nodes take a
//! few MiB.

use std::collections::VecDeque;

use serde::Serialize;

use super::{HyParView, In, Message, Out, ViewConfig};
use crate::error::Error;

/// What to simulate.
#[derive(Clone, Debug)]
pub struct MembershipSimConfig {
    /// Nodes that join before the crash (node 0 is the seed all join through).
    pub nodes: usize,
    /// Fraction of them that crash at once; as many new nodes join afterwards.
    pub churn: f64,
    /// Shuffle rounds after the joins, before the crash, to let the views mix.
    pub settle_rounds: usize,
    /// Most shuffle rounds waited for the overlay to heal after the crash.
    pub max_rounds: usize,
    /// Origins of the flood that measures reliability (the lowest counts).
    pub origins: usize,
    /// View sizes and walks.
    pub views: ViewConfig,
    /// Seed of every random choice.
    pub seed: u64,
}

impl Default for MembershipSimConfig {
    fn default() -> MembershipSimConfig {
        MembershipSimConfig {
            nodes: 1000,
            churn: 0.2,
            settle_rounds: 5,
            max_rounds: 50,
            origins: 10,
            views: ViewConfig::default(),
            seed: 1,
        }
    }
}

/// What the simulation found.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct MembershipSimReport {
    /// Nodes that joined before the crash.
    pub nodes: usize,
    /// Of them, crashed at once.
    pub crashed: usize,
    /// New nodes that joined after the crash.
    pub joined_after: usize,
    /// Nodes alive at the end.
    pub live: usize,
    /// Connected components of the active-view graph among live nodes, at the end.
    pub components: usize,
    /// Components right after the crash, before any repair.
    pub components_after_crash: usize,
    /// The largest active view of a live node (never above the configured size).
    pub max_active_view: usize,
    /// The smallest active view of a live node.
    pub min_active_view: usize,
    /// The configured active view size.
    pub active_view: usize,
    /// The lowest fraction of live nodes that a flood over the active views (every node pushes
    /// to all its neighbours, as the eager plane of a broadcast does) reaches, over
    /// `origins` random origins, at the end.
    pub reliability: f64,
    /// The same right after the crash.
    pub reliability_after_crash: f64,
    /// Shuffle rounds from the crash until one component and reliability 1.0; `None` if that
    /// did not happen within `max_rounds`.
    pub rounds_to_heal: Option<usize>,
    /// Messages per live node per shuffle round once healed (steady state), and per second at
    /// the configured shuffle period.
    pub messages_per_node_per_round: f64,
    /// The same per second.
    pub messages_per_node_per_second: f64,
    /// Active links that are not symmetric (one side holds the other, not the reverse), at the
    /// end.
    pub asymmetric_links: usize,
}

struct Cluster {
    nodes: Vec<HyParView<u32>>,
    alive: Vec<bool>,
    queue: VecDeque<(u32, u32, Message<u32>)>,
    out: Vec<Out<u32>>,
    delivered: u64,
}

impl Cluster {
    fn add(&mut self, views: &ViewConfig, seed: u64) -> u32 {
        let id = self.nodes.len() as u32;
        let node_seed = seed ^ (u64::from(id) + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        self.nodes
            .push(HyParView::new(id, views.clone(), node_seed));
        self.alive.push(true);
        id
    }

    fn input(&mut self, at: u32, input: In<u32>) {
        let mut out = std::mem::take(&mut self.out);
        self.nodes[at as usize].handle(input, &mut out);
        for o in out.drain(..) {
            if let Out::Send { to, message } = o {
                self.queue.push_back((at, to, message));
            }
        }
        self.out = out;
    }

    /// Delivers until nothing is in flight; a message to a crashed node fails back to its
    /// sender.
    fn drain(&mut self) -> Result<(), Error> {
        let limit = 1000 * self.nodes.len() as u64 + 1_000_000;
        let mut steps = 0u64;
        while let Some((from, to, message)) = self.queue.pop_front() {
            steps += 1;
            if steps > limit {
                return Err(Error::Config {
                    field: "sim.membership",
                    reason: format!("no quiescence after {limit} messages"),
                });
            }
            if !self.alive[to as usize] {
                if self.alive[from as usize] {
                    self.input(from, In::Failed(to));
                }
                continue;
            }
            self.delivered += 1;
            self.input(to, In::Received { from, message });
        }
        Ok(())
    }

    fn live(&self) -> impl Iterator<Item = u32> + '_ {
        (0..self.nodes.len() as u32).filter(|&i| self.alive[i as usize])
    }

    fn shuffle_round(&mut self) -> Result<(), Error> {
        let live: Vec<u32> = self.live().collect();
        for i in live {
            self.input(i, In::Shuffle);
        }
        self.drain()
    }

    /// Connected components of the undirected active-view graph among live nodes.
    fn components(&self) -> usize {
        let n = self.nodes.len();
        let mut parent: Vec<usize> = (0..n).collect();
        fn find(parent: &mut [usize], mut x: usize) -> usize {
            while parent[x] != x {
                parent[x] = parent[parent[x]];
                x = parent[x];
            }
            x
        }
        for i in self.live() {
            for &j in self.nodes[i as usize].active() {
                if self.alive[j as usize] {
                    let (a, b) = (find(&mut parent, i as usize), find(&mut parent, j as usize));
                    parent[a] = b;
                }
            }
        }
        let mut roots: Vec<usize> = self.live().map(|i| find(&mut parent, i as usize)).collect();
        roots.sort_unstable();
        roots.dedup();
        roots.len()
    }

    /// The lowest share of live nodes a flood over active views reaches from `origins`
    /// random live origins.
    fn reliability(&self, origins: usize, rng: &mut fastrand::Rng) -> f64 {
        let live: Vec<u32> = self.live().collect();
        if live.is_empty() {
            return 0.0;
        }
        let mut lowest = 1.0f64;
        for _ in 0..origins.max(1) {
            let origin = live[rng.usize(..live.len())];
            let mut seen = vec![false; self.nodes.len()];
            let mut frontier = vec![origin];
            seen[origin as usize] = true;
            let mut reached = 1usize;
            while let Some(i) = frontier.pop() {
                for &j in self.nodes[i as usize].active() {
                    if self.alive[j as usize] && !seen[j as usize] {
                        seen[j as usize] = true;
                        reached += 1;
                        frontier.push(j);
                    }
                }
            }
            lowest = lowest.min(reached as f64 / live.len() as f64);
        }
        lowest
    }

    fn active_sizes(&self) -> (usize, usize) {
        let sizes = self.live().map(|i| self.nodes[i as usize].active().len());
        sizes.fold((usize::MAX, 0), |(lo, hi), s| (lo.min(s), hi.max(s)))
    }

    fn asymmetric_links(&self) -> usize {
        let mut n = 0;
        for i in self.live() {
            for &j in self.nodes[i as usize].active() {
                if self.alive[j as usize] && !self.nodes[j as usize].active().contains(&i) {
                    n += 1;
                }
            }
        }
        n
    }

    /// A live node to join through: the seed while it lives.
    fn contact(&self, rng: &mut fastrand::Rng) -> Option<u32> {
        if self.alive[0] {
            return Some(0);
        }
        let live: Vec<u32> = self.live().collect();
        (!live.is_empty()).then(|| live[rng.usize(..live.len())])
    }
}

/// Runs the simulation described by `cfg`.
pub fn run(cfg: &MembershipSimConfig) -> Result<MembershipSimReport, Error> {
    if cfg.nodes < 2 || !(0.0..1.0).contains(&cfg.churn) {
        return Err(Error::Config {
            field: "sim.membership",
            reason: format!(
                "need at least 2 nodes and 0 <= churn < 1 (got {} nodes, churn {})",
                cfg.nodes, cfg.churn
            ),
        });
    }
    let mut rng = fastrand::Rng::with_seed(cfg.seed);
    let mut c = Cluster {
        nodes: Vec::with_capacity(cfg.nodes * 2),
        alive: Vec::with_capacity(cfg.nodes * 2),
        queue: VecDeque::new(),
        out: Vec::new(),
        delivered: 0,
    };
    c.add(&cfg.views, cfg.seed);
    for _ in 1..cfg.nodes {
        let id = c.add(&cfg.views, cfg.seed);
        c.input(id, In::Join(0));
        c.drain()?;
    }
    for _ in 0..cfg.settle_rounds {
        c.shuffle_round()?;
    }

    // The crash: at once, and seen at once by the crashed nodes' neighbours.
    let crashed = ((cfg.nodes as f64) * cfg.churn).round() as usize;
    let mut ids: Vec<u32> = (0..cfg.nodes as u32).collect();
    rng.shuffle(&mut ids);
    let dead: Vec<u32> = ids[..crashed].to_vec();
    for &d in &dead {
        c.alive[d as usize] = false;
    }
    for i in c.live().collect::<Vec<_>>() {
        let lost: Vec<u32> = c.nodes[i as usize]
            .active()
            .iter()
            .copied()
            .filter(|j| !c.alive[*j as usize])
            .collect();
        for j in lost {
            c.input(i, In::Failed(j));
        }
    }
    let components_after_crash = c.components();
    let reliability_after_crash = c.reliability(cfg.origins, &mut rng);
    c.drain()?;
    for _ in 0..crashed {
        let Some(contact) = c.contact(&mut rng) else {
            break;
        };
        let id = c.add(&cfg.views, cfg.seed);
        c.input(id, In::Join(contact));
        c.drain()?;
    }

    let mut rounds_to_heal = None;
    for round in 1..=cfg.max_rounds {
        c.shuffle_round()?;
        if c.components() == 1 && c.reliability(cfg.origins, &mut rng) >= 1.0 {
            rounds_to_heal = Some(round);
            break;
        }
    }
    // Steady state: what the views cost per node and round once healed.
    let before = c.delivered;
    let steady = 3;
    for _ in 0..steady {
        c.shuffle_round()?;
    }
    let live = c.live().count();
    let per_round = (c.delivered - before) as f64 / (steady as f64 * live.max(1) as f64);
    let period = cfg
        .views
        .shuffle_period
        .as_secs_f64()
        .max(f64::MIN_POSITIVE);
    let (min_active_view, max_active_view) = c.active_sizes();
    Ok(MembershipSimReport {
        nodes: cfg.nodes,
        crashed,
        joined_after: c.nodes.len() - cfg.nodes,
        live,
        components: c.components(),
        components_after_crash,
        max_active_view,
        min_active_view,
        active_view: cfg.views.active,
        reliability: c.reliability(cfg.origins, &mut rng),
        reliability_after_crash,
        rounds_to_heal,
        messages_per_node_per_round: per_round,
        messages_per_node_per_second: per_round / period,
        asymmetric_links: c.asymmetric_links(),
    })
}
