//! Thousands of [`HyParView`] machines in one process, for `gossip sim --membership`: nodes join
//! through one seed, a fraction of them crash at once and as many new ones join, and shuffle
//! rounds heal the overlay. Messages are delivered in order of sending; a message to a crashed
//! node fails back to its sender, as a dial would; a crash is seen at once by the crashed
//! node's neighbours, as a broken link is. Node ids are small integers.
//!
//! Each node also keeps a [`MemberList`]. An update a node originates (its join, a suspicion,
//! a refutation) reaches every live node of its component of the active-view graph, as a
//! broadcast over the views does; a joining node is given its contact's list; every few rounds
//! each node and a random neighbour merge each other's lists (push-pull anti-entropy), which is how
//! the parts of a split overlay learn what they missed; and every round it probes one member it
//! believes up (SWIM's ping), which is how a member whose neighbours all crashed with it is
//! found. A round is one shuffle period.

use std::collections::VecDeque;

use serde::Serialize;

use std::time::{Duration, Instant};

use super::{HyParView, In, ListConfig, MemberList, Message, Out, Update, ViewConfig};
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
    /// Every this many rounds each node and a random neighbour merge each other's whole lists
    /// (push-pull anti-entropy; memberlist's runs every 30 s, three shuffle periods).
    pub anti_entropy_every: usize,
    /// View sizes and walks.
    pub views: ViewConfig,
    /// How the member lists decide (the suspicion timeout counts in shuffle periods).
    pub list: ListConfig,
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
            anti_entropy_every: 3,
            views: ViewConfig::default(),
            list: ListConfig::default(),
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
    /// Whether every live node's list of live members is exactly the live set, at the end.
    pub members_converged: bool,
    /// Shuffle rounds from the crash until the lists converged; `None` if not within
    /// `max_rounds`.
    pub rounds_to_converge: Option<usize>,
    /// Members each list holds at the end (failed ones included).
    pub list_entries: usize,
    /// Anti-entropy exchanges in which the two digests differed (the others send 64 bucket
    /// digests and nothing else), from the crash on.
    pub anti_entropy_exchanges: u64,
    /// List entries those exchanges sent, both ways together.
    pub anti_entropy_entries: u64,
}

struct Cluster {
    nodes: Vec<HyParView<u32>>,
    lists: Vec<MemberList<u32>>,
    list_config: ListConfig,
    /// Updates originated and not yet delivered: (origin, update).
    floods: Vec<(u32, Update<u32>)>,
    now: Instant,
    alive: Vec<bool>,
    queue: VecDeque<(u32, u32, Message<u32>)>,
    out: Vec<Out<u32>>,
    delivered: u64,
    /// Anti-entropy exchanges whose digests differed, and the entries they sent.
    exchanged: u64,
    exchanged_entries: u64,
}

impl Cluster {
    fn add(&mut self, views: &ViewConfig, seed: u64) -> u32 {
        let id = self.nodes.len() as u32;
        let node_seed = seed ^ (u64::from(id) + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        self.nodes
            .push(HyParView::new(id, views.clone(), node_seed));
        let list = MemberList::new(id, 1, self.list_config.clone());
        self.floods.push((id, list.me()));
        self.lists.push(list);
        self.alive.push(true);
        id
    }

    /// Merges `updates` into `at`'s list; what it originates in answer is flooded later.
    fn merge(&mut self, at: u32, updates: impl IntoIterator<Item = Update<u32>>) {
        let (mut spread, mut events) = (Vec::new(), Vec::new());
        let list = &mut self.lists[at as usize];
        for u in updates {
            list.merge(u, self.now, &mut spread, &mut events);
        }
        self.floods.extend(spread.into_iter().map(|u| (at, u)));
    }

    /// `at` lost its link to `peer`: its view repairs, its list suspects.
    fn failed(&mut self, at: u32, peer: u32) {
        self.input(at, In::Failed(peer));
        self.suspect(at, peer);
    }

    /// `at`'s list suspects `peer`; the suspicion is flooded later.
    fn suspect(&mut self, at: u32, peer: u32) {
        let (mut spread, mut events) = (Vec::new(), Vec::new());
        self.lists[at as usize].unreachable(&peer, self.now, &mut spread, &mut events);
        self.floods.extend(spread.into_iter().map(|u| (at, u)));
    }

    /// Delivers every originated update to the live nodes of its origin's component, until
    /// no more are originated.
    fn flood(&mut self) {
        while !self.floods.is_empty() {
            let floods = std::mem::take(&mut self.floods);
            let (mut spread, mut events) = (Vec::new(), Vec::new());
            let roots = self.roots();
            let mut by_root: std::collections::HashMap<usize, Vec<u32>> = Default::default();
            for i in self.live() {
                by_root.entry(roots[i as usize]).or_default().push(i);
            }
            for (origin, update) in floods {
                if !self.alive[origin as usize] {
                    continue;
                }
                let Some(members) = by_root.get(&roots[origin as usize]) else {
                    continue;
                };
                for &i in members {
                    if i != origin {
                        let list = &mut self.lists[i as usize];
                        list.merge(update.clone(), self.now, &mut spread, &mut events);
                        self.floods.extend(spread.drain(..).map(|u| (i, u)));
                        events.clear();
                    }
                }
            }
        }
    }

    /// Every live node and one random live neighbour of it merge each other's lists
    /// (push-pull).
    fn anti_entropy(&mut self, rng: &mut fastrand::Rng) {
        for i in self.live().collect::<Vec<_>>() {
            let peers: Vec<u32> = self.nodes[i as usize]
                .active()
                .iter()
                .copied()
                .filter(|j| self.alive[*j as usize])
                .collect();
            if peers.is_empty() {
                continue;
            }
            let j = peers[rng.usize(..peers.len())];
            // Digests first: only the buckets in which the lists differ travel.
            let mask = self.lists[i as usize]
                .digest()
                .differs(self.lists[j as usize].digest());
            if mask == 0 {
                continue;
            }
            self.exchanged += 1;
            let theirs = self.lists[j as usize].snapshot_of(mask);
            self.exchanged_entries += theirs.len() as u64;
            self.merge(i, theirs);
            let ours = self.lists[i as usize].snapshot_of(mask);
            self.exchanged_entries += ours.len() as u64;
            self.merge(j, ours);
        }
    }

    /// Every live node probes one member it believes up, picked at random (SWIM's ping): a
    /// member that every neighbour lost at once is found this way.
    fn probe(&mut self, rng: &mut fastrand::Rng) {
        let n = self.nodes.len() as u32;
        for i in self.live().collect::<Vec<_>>() {
            // A few draws find a member the list holds up; ids are dense.
            for _ in 0..4 {
                let p = rng.u32(..n);
                let up = self.lists[i as usize].get(&p).is_some_and(|m| {
                    matches!(
                        m.state,
                        super::MemberState::Joined | super::MemberState::Suspected
                    )
                });
                if p != i && up {
                    if !self.alive[p as usize] {
                        self.suspect(i, p);
                    }
                    break;
                }
            }
        }
    }

    /// Suspicions time out.
    fn tick_lists(&mut self) {
        for i in self.live().collect::<Vec<_>>() {
            let mut events = Vec::new();
            self.lists[i as usize].tick(self.now, &mut events);
        }
    }

    /// Whether every live node's live members are the live nodes, by their live digests (a
    /// false yes needs a 64-bit hash collision): cheap enough to ask every round, where
    /// walking 10,000 lists of 10,000 is not.
    fn converged_by_digest(&self) -> bool {
        let live: Vec<u32> = self.live().collect();
        let expected = super::live_digest_of(live.iter());
        live.iter()
            .all(|&i| self.lists[i as usize].live_digest() == expected)
    }

    /// Whether every live node's live members are exactly the live nodes, entry by entry.
    fn converged(&self) -> bool {
        let live: Vec<u32> = self.live().collect();
        live.iter().all(|&i| {
            let list = &self.lists[i as usize];
            list.live().count() == live.len() && list.live().all(|p| self.alive[*p as usize])
        })
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
                    self.failed(from, to);
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

    /// Every live node shuffles, and swaps a neighbour when that is due, for a member its
    /// list holds up (as [`super::Membership`] does).
    fn shuffle_round(&mut self, rng: &mut fastrand::Rng) -> Result<(), Error> {
        let live: Vec<u32> = self.live().collect();
        for i in live {
            self.input(i, In::Shuffle);
            if self.nodes[i as usize].swap_due() {
                let active = self.nodes[i as usize].active();
                let mut up: Vec<u32> = self.lists[i as usize]
                    .live()
                    .copied()
                    .filter(|p| *p != i && !active.contains(p))
                    .collect();
                // The list's order is a hash map's: sorted, the run is repeatable.
                up.sort_unstable();
                if !up.is_empty() {
                    self.input(i, In::Swap(up[rng.usize(..up.len())]));
                }
            }
        }
        self.drain()
    }

    /// Connected components of the undirected active-view graph among live nodes.
    fn components(&self) -> usize {
        let roots = self.roots();
        let mut roots: Vec<usize> = self.live().map(|i| roots[i as usize]).collect();
        roots.sort_unstable();
        roots.dedup();
        roots.len()
    }

    /// Per node, its component's root in the undirected active-view graph among live nodes.
    fn roots(&self) -> Vec<usize> {
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
        (0..n).map(|i| find(&mut parent, i)).collect()
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
    let period = cfg.views.shuffle_period.max(Duration::from_millis(1));
    let mut c = Cluster {
        nodes: Vec::with_capacity(cfg.nodes * 2),
        lists: Vec::with_capacity(cfg.nodes * 2),
        list_config: cfg.list.clone(),
        floods: Vec::new(),
        now: Instant::now(),
        alive: Vec::with_capacity(cfg.nodes * 2),
        queue: VecDeque::new(),
        out: Vec::new(),
        delivered: 0,
        exchanged: 0,
        exchanged_entries: 0,
    };
    c.add(&cfg.views, cfg.seed);
    c.floods.clear();
    for i in 1..cfg.nodes {
        join(&mut c, &cfg.views, cfg.seed, 0)?;
        if i % JOIN_BATCH == 0 {
            c.flood();
        }
    }
    c.flood();
    for _ in 0..cfg.settle_rounds {
        c.now += period;
        c.shuffle_round(&mut rng)?;
        c.flood();
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
            c.failed(i, j);
        }
    }
    let components_after_crash = c.components();
    let reliability_after_crash = c.reliability(cfg.origins, &mut rng);
    c.drain()?;
    c.flood();
    for _ in 0..crashed {
        let Some(contact) = c.contact(&mut rng) else {
            break;
        };
        join(&mut c, &cfg.views, cfg.seed, contact)?;
    }
    c.flood();

    let (mut rounds_to_heal, mut rounds_to_converge) = (None, None);
    for round in 1..=cfg.max_rounds {
        c.now += period;
        c.shuffle_round(&mut rng)?;
        c.tick_lists();
        c.probe(&mut rng);
        if round % cfg.anti_entropy_every.max(1) == 0 {
            c.anti_entropy(&mut rng);
        }
        c.flood();
        if rounds_to_heal.is_none()
            && c.components() == 1
            && c.reliability(cfg.origins, &mut rng) >= 1.0
        {
            rounds_to_heal = Some(round);
        }
        if rounds_to_converge.is_none() && c.converged_by_digest() {
            rounds_to_converge = Some(round);
        }
        if rounds_to_heal.is_some() && rounds_to_converge.is_some() {
            break;
        }
    }
    // Steady state: what the views cost per node and round once healed.
    let before = c.delivered;
    let steady = 3;
    for _ in 0..steady {
        c.now += period;
        c.shuffle_round(&mut rng)?;
        c.flood();
    }
    let live = c.live().count();
    let per_round = (c.delivered - before) as f64 / (steady as f64 * live.max(1) as f64);
    let period = period.as_secs_f64();
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
        members_converged: c.converged(),
        rounds_to_converge,
        anti_entropy_exchanges: c.exchanged,
        anti_entropy_entries: c.exchanged_entries,
        list_entries: c
            .lists
            .iter()
            .map(|l| l.members().count())
            .max()
            .unwrap_or(0),
    })
}

/// Joins announced together: their announcements are delivered after this many joins (a
/// component computation per delivery is what costs).
const JOIN_BATCH: usize = 100;

/// A new node joins through `contact`: its view, then the lists (the joiner gets its
/// contact's, the contact learns the joiner); the announcement goes out with the next delivery
/// of updates.
fn join(c: &mut Cluster, views: &ViewConfig, seed: u64, contact: u32) -> Result<u32, Error> {
    let id = c.add(views, seed);
    c.input(id, In::Join(contact));
    c.drain()?;
    let snapshot = c.lists[contact as usize].snapshot();
    c.merge(id, snapshot);
    // The contact knows its joiner at once, whatever becomes of the announcement.
    let joiner = c.lists[id as usize].me();
    c.merge(contact, [joiner]);
    Ok(id)
}
