//! The broadcast state machine. See the module docs of [`crate::broadcast`].

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::time::{Duration, Instant};

use bytes::Bytes;
use log::debug;

use super::{
    Action, BroadcastAck, BroadcastCompletion, BroadcastConfig, BroadcastId, Event, Frame,
};
use crate::error::Error;
use crate::id::NodeId;
use crate::router::{Candidate, Router};

/// A neighbour as the engine sees it.
#[derive(Debug, Clone, Copy)]
struct Neighbor {
    /// Speaks only the original protocol: gets payloads as plain messages, never forwards.
    plain: bool,
    /// Payloads go to it as IHAVE only (pruned); cleared by a GRAFT either way.
    lazy: bool,
    /// Its link is up. A neighbour whose link is down stays known: broadcasts count it as
    /// missing until it is back or removed.
    up: bool,
}

/// An offer we made (payload or IHAVE) that has not been answered yet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Offer {
    Payload,
    Digest,
}

/// An IHAVE we heard before we had the payload.
#[derive(Debug)]
struct Heard {
    from: NodeId,
    budget: Duration,
    at: Instant,
}

/// One broadcast, at one node.
#[derive(Debug)]
struct Tracked {
    /// Kept until `linger` after our answer, for late GRAFTs.
    payload: Option<Bytes>,
    /// We delivered it (or started it).
    delivered: bool,
    /// Whom we answer when our offers have converged; `None` at the origin.
    parent: Option<NodeId>,
    /// Our distance from the origin.
    depth: u32,
    hop_limit: u32,
    started: Instant,
    /// When our answer is due at our parent (the origin: when it completes at the latest).
    deadline: Instant,
    /// Offers still unanswered.
    pending: BTreeMap<NodeId, Offer>,
    /// Neighbours known to have it (they sent it or offered it to us).
    has: BTreeSet<NodeId>,
    /// Delivered nodes of ours reported by answered offers (ourselves not included).
    reached: u64,
    /// Original nodes that ACKed a plain copy, here or in the subtrees that answered.
    originals: BTreeSet<NodeId>,
    missing: BTreeSet<NodeId>,
    /// IHAVEs heard before the payload; answered once we have it.
    heard: Vec<Heard>,
    /// Index in `heard` of the next neighbour to GRAFT from.
    next_graft: usize,
    graft_at: Option<Instant>,
    /// When we answered our parent (or completed); `None` while converging.
    finished: Option<Instant>,
}

impl Tracked {
    fn new(now: Instant) -> Tracked {
        Tracked {
            payload: None,
            delivered: false,
            parent: None,
            depth: 0,
            hop_limit: 0,
            started: now,
            deadline: now,
            pending: BTreeMap::new(),
            has: BTreeSet::new(),
            reached: 0,
            originals: BTreeSet::new(),
            missing: BTreeSet::new(),
            heard: Vec::new(),
            next_graft: 0,
            graft_at: None,
            finished: None,
        }
    }

    /// Until when answers to our offers are still useful to us.
    fn wait_until(&self, margin: Duration) -> Instant {
        self.deadline
            .checked_sub(margin / 2)
            .unwrap_or(self.deadline)
    }
}

/// The broadcast state machine of one node. See the module docs.
pub struct BroadcastEngine {
    local: NodeId,
    pub(super) config: BroadcastConfig,
    router: Box<dyn Router>,
    neighbors: BTreeMap<NodeId, Neighbor>,
    tracked: HashMap<BroadcastId, Tracked>,
    /// The origins of tracked broadcasts by hash: an original neighbour's plain ACK names only
    /// the hash, and a lookup must not scan every tracked broadcast (bogus ACKs are cheap).
    pub(super) origins: HashMap<String, BTreeSet<NodeId>>,
    /// Finished broadcasts, oldest first, for forgetting.
    finished: VecDeque<(Instant, BroadcastId)>,
    /// Offers outstanding per neighbour: the router's cost.
    load: HashMap<NodeId, u64>,
}

impl std::fmt::Debug for BroadcastEngine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BroadcastEngine")
            .field("local", &self.local)
            .field("neighbors", &self.neighbors.len())
            .field("tracked", &self.tracked.len())
            .finish_non_exhaustive()
    }
}

impl BroadcastEngine {
    /// An engine for node `local`; `router` picks eager targets for small payloads.
    pub fn new(local: NodeId, config: BroadcastConfig, router: Box<dyn Router>) -> Self {
        BroadcastEngine {
            local,
            config,
            router,
            neighbors: BTreeMap::new(),
            tracked: HashMap::new(),
            origins: HashMap::new(),
            finished: VecDeque::new(),
            load: HashMap::new(),
        }
    }

    /// The configuration.
    pub fn config(&self) -> &BroadcastConfig {
        &self.config
    }

    /// Broadcasts tracked now (converging, lingering or remembered).
    pub fn tracked(&self) -> usize {
        self.tracked.len()
    }

    /// Neighbours that currently get payloads eagerly (tree links, for large payloads).
    pub fn eager_neighbors(&self) -> Vec<NodeId> {
        self.neighbors
            .iter()
            .filter(|(_, n)| !n.lazy)
            .map(|(p, _)| p.clone())
            .collect()
    }

    /// Starts a broadcast (what [`Event::Broadcast`] does), refusing a hash this node has
    /// already used within [`BroadcastConfig::remember`] or a full table.
    pub fn start(
        &mut self,
        hash: String,
        payload: Bytes,
        now: Instant,
        out: &mut Vec<Action>,
    ) -> Result<BroadcastId, Error> {
        let id = BroadcastId {
            origin: self.local.clone(),
            hash,
        };
        if self.tracked.contains_key(&id) {
            return Err(Error::DuplicateBroadcast(id.hash));
        }
        self.make_room();
        if self.tracked.len() >= self.config.max_tracked {
            return Err(Error::TooManyBroadcasts(self.config.max_tracked));
        }
        if let Err(held) = self.room_for(payload.len()) {
            return Err(Error::BroadcastBudget {
                held,
                limit: self.config.max_held_bytes,
            });
        }
        let mut t = Tracked::new(now);
        t.payload = Some(payload);
        t.delivered = true;
        t.hop_limit = self.config.hop_limit;
        t.deadline = now + self.config.deadline;
        self.track(id.clone(), t);
        self.forward(&id, now, out);
        Ok(id)
    }

    /// Feeds one event; appends the resulting actions to `out`.
    pub fn handle(&mut self, event: Event, now: Instant, out: &mut Vec<Action>) {
        match event {
            Event::Broadcast { hash, payload } => {
                if let Err(e) = self.start(hash, payload, now, out) {
                    debug!("{}: broadcast refused: {e}", self.local);
                }
            }
            Event::Received { from, frame } => self.on_frame(from, frame, now, out),
            Event::PlainAck { from, hash } => self.on_plain_ack(from, hash, now, out),
            Event::NeighborUp { peer, plain } => {
                let n = Neighbor {
                    plain,
                    lazy: false,
                    up: true,
                };
                self.neighbors.insert(peer, n);
            }
            Event::NeighborDown { peer } => {
                if let Some(n) = self.neighbors.get_mut(&peer) {
                    n.up = false;
                }
                self.on_neighbor_down(peer, now, out);
            }
            Event::NeighborRemoved { peer } => {
                self.neighbors.remove(&peer);
                self.on_neighbor_down(peer, now, out);
            }
            Event::Tick => self.on_tick(now, out),
        }
    }

    fn on_frame(&mut self, from: NodeId, frame: Frame, now: Instant, out: &mut Vec<Action>) {
        match frame {
            Frame::Payload {
                id,
                hops,
                hop_limit,
                budget,
                payload,
            } => self.on_payload(from, id, hops, hop_limit, budget, payload, now, out),
            Frame::IHave { id, budget, .. } => self.on_ihave(from, id, budget, now, out),
            Frame::Graft { id } => self.on_graft(from, id, now, out),
            Frame::Ack(ack) => self.on_ack(from, ack, now, out),
        }
    }

    fn is_large(&self, payload: &Bytes) -> bool {
        payload.len() >= self.config.lazy_threshold
    }

    #[allow(clippy::too_many_arguments)]
    fn on_payload(
        &mut self,
        from: NodeId,
        id: BroadcastId,
        hops: u32,
        hop_limit: u32,
        budget: Duration,
        payload: Bytes,
        now: Instant,
        out: &mut Vec<Action>,
    ) {
        // A peer's numbers are taken up to ours: nobody makes us hold a broadcast longer, or
        // send it farther, than we would our own.
        let hop_limit = hop_limit.min(self.config.hop_limit);
        let budget = budget.min(self.config.deadline);
        let large = self.is_large(&payload);
        if self.tracked.get(&id).is_some_and(|t| t.delivered) {
            // A duplicate: answer at once; for large payloads the link leaves the tree.
            if let Some(t) = self.tracked.get_mut(&id) {
                t.has.insert(from.clone());
            }
            if large {
                self.set_lazy(&from, true);
            }
            let ack = self.duplicate_ack(id, large);
            out.push(Action::Send {
                to: from,
                frame: Frame::Ack(ack),
            });
            return;
        }
        if let Err(held) = self.room_for(payload.len()) {
            let why = format!(
                "busy: broadcast payloads held here take {held} of {} bytes",
                self.config.max_held_bytes
            );
            debug!("{}: broadcast {id} from {from} refused: {why}", self.local);
            let mut ack = self.duplicate_ack(id, false);
            ack.refused = Some(why);
            out.push(Action::Send {
                to: from,
                frame: Frame::Ack(ack),
            });
            return;
        }
        if !self.tracked.contains_key(&id) {
            self.make_room();
            if self.tracked.len() >= self.config.max_tracked {
                debug!("{}: broadcast {id} dropped: table full", self.local);
                return;
            }
            self.track(id.clone(), Tracked::new(now));
        }
        let Some(t) = self.tracked.get_mut(&id) else {
            return;
        };
        t.payload = Some(payload.clone());
        t.delivered = true;
        t.parent = Some(from.clone());
        t.depth = hops.saturating_add(1);
        t.hop_limit = hop_limit;
        t.started = now;
        t.deadline = now + budget;
        t.graft_at = None;
        t.has.insert(from.clone());
        // Everyone who offered it to us before now gets its answer: we have it.
        let heard: Vec<NodeId> = t
            .heard
            .drain(..)
            .map(|h| h.from)
            .filter(|p| *p != from)
            .collect();
        let depth = t.depth;
        out.push(Action::Deliver {
            id: id.clone(),
            from,
            hops: depth,
            payload,
        });
        for peer in heard {
            let ack = self.duplicate_ack(id.clone(), false);
            out.push(Action::Send {
                to: peer,
                frame: Frame::Ack(ack),
            });
        }
        self.forward(&id, now, out);
    }

    fn on_ihave(
        &mut self,
        from: NodeId,
        id: BroadcastId,
        budget: Duration,
        now: Instant,
        out: &mut Vec<Action>,
    ) {
        let budget = budget.min(self.config.deadline);
        if !self.tracked.contains_key(&id) {
            self.make_room();
            if self.tracked.len() >= self.config.max_tracked {
                return;
            }
            self.track(id.clone(), Tracked::new(now));
        }
        let graft_timeout = self.config.graft_timeout;
        let Some(t) = self.tracked.get_mut(&id) else {
            return;
        };
        t.has.insert(from.clone());
        if t.delivered {
            let ack = self.duplicate_ack(id, false);
            out.push(Action::Send {
                to: from,
                frame: Frame::Ack(ack),
            });
            return;
        }
        t.heard.push(Heard {
            from,
            budget,
            at: now,
        });
        if t.graft_at.is_none() {
            t.graft_at = Some(now + graft_timeout);
        }
    }

    fn on_graft(&mut self, from: NodeId, id: BroadcastId, now: Instant, out: &mut Vec<Action>) {
        self.set_lazy(&from, false);
        let margin = self.config.hop_margin;
        let Some(t) = self.tracked.get_mut(&id) else {
            return;
        };
        let Some(payload) = t.payload.clone() else {
            return; // we cannot serve it; the asker tries whoever else offered it
        };
        if t.finished.is_none() {
            t.pending.insert(from.clone(), Offer::Payload);
        }
        let budget = t
            .wait_until(margin)
            .saturating_duration_since(now)
            .saturating_sub(margin / 2);
        let frame = Frame::Payload {
            id,
            hops: t.depth,
            hop_limit: t.hop_limit,
            budget,
            payload,
        };
        out.push(Action::Send { to: from, frame });
    }

    fn on_ack(&mut self, from: NodeId, ack: BroadcastAck, now: Instant, out: &mut Vec<Action>) {
        if ack.prune {
            self.set_lazy(&from, true);
        }
        let max_missing = self.config.max_missing;
        let Some(t) = self.tracked.get_mut(&ack.id) else {
            return;
        };
        if t.finished.is_some() || t.pending.remove(&from).is_none() {
            return; // late, or an answer to an offer we never made
        }
        unload(&mut self.load, &from);
        if ack.refused.is_some() {
            // It does not have it, and will not forward it: its subtree is missing.
            if t.missing.len() < max_missing {
                t.missing.insert(from);
            }
        } else {
            t.has.insert(from);
        }
        if ack.first {
            t.reached = t.reached.saturating_add(ack.reached);
            for o in ack.originals {
                if t.originals.len() >= max_missing {
                    break;
                }
                t.originals.insert(o);
            }
            for m in ack.missing {
                if t.missing.len() >= max_missing {
                    break;
                }
                t.missing.insert(m);
            }
        }
        if t.pending.is_empty() {
            self.finish(&ack.id, now, out);
        }
    }

    fn on_plain_ack(&mut self, from: NodeId, hash: String, now: Instant, out: &mut Vec<Action>) {
        // A plain neighbour was sent the payload under the broadcast's hash; which origin's
        // broadcast it answers is the one that has an offer pending to it.
        let id = self
            .origins
            .get(&hash)
            .into_iter()
            .flatten()
            .map(|origin| BroadcastId {
                origin: origin.clone(),
                hash: hash.clone(),
            })
            .find(|id| {
                self.tracked
                    .get(id)
                    .is_some_and(|t| t.pending.contains_key(&from))
            });
        if let Some(id) = id {
            // Counted by name: it may ACK copies from several of our nodes.
            let ack = BroadcastAck {
                id,
                first: true,
                reached: 0,
                originals: vec![from.clone()],
                missing: Vec::new(),
                prune: false,
                refused: None,
            };
            self.on_ack(from, ack, now, out);
        }
    }

    fn on_neighbor_down(&mut self, peer: NodeId, now: Instant, out: &mut Vec<Action>) {
        self.load.remove(&peer);
        let max_missing = self.config.max_missing;
        let mut done = Vec::new();
        for (id, t) in &mut self.tracked {
            if t.finished.is_none() && t.pending.remove(&peer).is_some() {
                if t.missing.len() < max_missing {
                    t.missing.insert(peer.clone());
                }
                if t.pending.is_empty() && t.delivered {
                    done.push(id.clone());
                }
            }
        }
        done.sort();
        for id in done {
            self.finish(&id, now, out);
        }
    }

    fn on_tick(&mut self, now: Instant, out: &mut Vec<Action>) {
        let margin = self.config.hop_margin;
        let graft_timeout = self.config.graft_timeout;
        let max_missing = self.config.max_missing;
        let mut expired = Vec::new();
        let mut grafts = Vec::new();
        for (id, t) in &mut self.tracked {
            if t.finished.is_some() {
                continue;
            }
            if t.delivered {
                if now >= t.wait_until(margin) {
                    for (peer, _) in std::mem::take(&mut t.pending) {
                        unload(&mut self.load, &peer);
                        if t.missing.len() < max_missing {
                            t.missing.insert(peer);
                        }
                    }
                    expired.push(id.clone());
                }
                continue;
            }
            // Heard of it, no payload yet: ask the next neighbour that offered it.
            if t.graft_at.is_some_and(|at| now >= at) {
                match t.heard.get(t.next_graft) {
                    Some(h) if now.saturating_duration_since(h.at) < h.budget => {
                        grafts.push((id.clone(), h.from.clone()));
                        t.next_graft += 1;
                        t.graft_at = Some(now + graft_timeout);
                    }
                    Some(_) => {
                        t.next_graft += 1;
                        t.graft_at = Some(now);
                    }
                    None => t.graft_at = None,
                }
            }
        }
        expired.sort();
        for id in expired {
            self.finish(&id, now, out);
        }
        grafts.sort();
        for (id, peer) in grafts {
            self.set_lazy(&peer, false);
            out.push(Action::Send {
                to: peer,
                frame: Frame::Graft { id },
            });
        }
        self.forget(now);
    }

    /// Offers the payload of `id` to every neighbour that may not have it, or finishes at
    /// once when there is nobody to offer it to.
    fn forward(&mut self, id: &BroadcastId, now: Instant, out: &mut Vec<Action>) {
        let margin = self.config.hop_margin;
        let Some(t) = self.tracked.get(id) else {
            return;
        };
        let Some(payload) = t.payload.clone() else {
            return;
        };
        let wait_until = t.wait_until(margin);
        let budget = wait_until
            .saturating_duration_since(now)
            .saturating_sub(margin / 2);
        let may_forward = t.depth < t.hop_limit;
        // Too little time left to wait for answers (a late GRAFT): the offers still go out,
        // for reliability, but we answer at once and count only ourselves.
        let (budget, wait) = if budget >= margin {
            (budget, true)
        } else {
            (Duration::ZERO, false)
        };
        let large = self.is_large(&payload);
        let (others, down): (Vec<(NodeId, Neighbor)>, Vec<_>) = self
            .neighbors
            .iter()
            .filter(|(p, _)| t.parent.as_ref() != Some(*p) && !t.has.contains(*p))
            .map(|(p, n)| (p.clone(), *n))
            .partition(|(_, n)| n.up);
        let eager: BTreeSet<NodeId> = if large {
            others
                .iter()
                .filter(|(_, n)| n.plain || !n.lazy)
                .map(|(p, _)| p.clone())
                .collect()
        } else {
            let candidates: Vec<Candidate> = others
                .iter()
                .filter(|(_, n)| !n.plain)
                .map(|(p, _)| Candidate {
                    peer: p.clone(),
                    cost: self.load.get(p).copied().unwrap_or(0),
                    has_message: false,
                })
                .collect();
            let mut picked: BTreeSet<NodeId> = self
                .router
                .route(&candidates)
                .into_iter()
                .take(self.config.fanout)
                .collect();
            picked.extend(
                others
                    .iter()
                    .filter(|(_, n)| n.plain)
                    .map(|(p, _)| p.clone()),
            );
            picked
        };
        let hops = t.depth;
        let hop_limit = t.hop_limit;
        let mut offers = Vec::new();
        if may_forward {
            for (peer, n) in &others {
                if eager.contains(peer) {
                    offers.push((peer.clone(), Offer::Payload));
                } else if !n.plain {
                    offers.push((peer.clone(), Offer::Digest));
                }
            }
        }
        for (peer, offer) in &offers {
            *self.load.entry(peer.clone()).or_default() += 1;
            let frame = match offer {
                Offer::Payload => Frame::Payload {
                    id: id.clone(),
                    hops,
                    hop_limit,
                    budget,
                    payload: payload.clone(),
                },
                Offer::Digest => Frame::IHave {
                    id: id.clone(),
                    hops,
                    hop_limit,
                    budget,
                },
            };
            out.push(Action::Send {
                to: peer.clone(),
                frame,
            });
        }
        let empty = offers.is_empty() || !wait;
        let max_missing = self.config.max_missing;
        if let Some(t) = self.tracked.get_mut(id) {
            // Neighbours we cannot reach now are missing from the start.
            for (peer, _) in down {
                if t.missing.len() < max_missing {
                    t.missing.insert(peer);
                }
            }
        }
        if wait {
            if let Some(t) = self.tracked.get_mut(id) {
                t.pending.extend(offers);
            }
        } else {
            for (peer, _) in &offers {
                unload(&mut self.load, peer);
            }
        }
        if empty {
            self.finish(id, now, out);
        }
    }

    /// Our offers have converged (or run out of time): answer our parent, or complete.
    fn finish(&mut self, id: &BroadcastId, now: Instant, out: &mut Vec<Action>) {
        let Some(t) = self.tracked.get_mut(id) else {
            return;
        };
        if t.finished.is_some() {
            return;
        }
        t.finished = Some(now);
        for peer in std::mem::take(&mut t.pending).into_keys() {
            unload(&mut self.load, &peer);
        }
        // An original that one of our nodes could not reach may have ACKed another's copy.
        let missing: Vec<NodeId> = t.missing.difference(&t.originals).cloned().collect();
        match t.parent.clone() {
            None => out.push(Action::Complete(BroadcastCompletion {
                id: id.clone(),
                reached: t.reached.saturating_add(t.originals.len() as u64),
                missing,
                elapsed: now.saturating_duration_since(t.started),
            })),
            Some(parent) => {
                let ack = BroadcastAck {
                    id: id.clone(),
                    first: true,
                    reached: t.reached.saturating_add(1),
                    originals: t.originals.iter().cloned().collect(),
                    missing,
                    prune: false,
                    refused: None,
                };
                out.push(Action::Send {
                    to: parent,
                    frame: Frame::Ack(ack),
                });
            }
        }
        self.finished.push_back((now, id.clone()));
    }

    fn duplicate_ack(&self, id: BroadcastId, prune: bool) -> BroadcastAck {
        BroadcastAck {
            id,
            first: false,
            reached: 0,
            originals: Vec::new(),
            missing: Vec::new(),
            prune,
            refused: None,
        }
    }

    /// Broadcasts tracked now (converging, or finished and remembered).
    pub fn tracked_len(&self) -> usize {
        self.tracked.len()
    }

    /// Payload bytes held now, by every tracked broadcast.
    pub fn held_bytes(&self) -> usize {
        self.tracked
            .values()
            .filter_map(|t| t.payload.as_ref())
            .map(Bytes::len)
            .sum()
    }

    /// Whether `more` payload bytes fit the budget; `Err` with what is held when not. Payloads
    /// that only linger for late GRAFTs are given up first.
    fn room_for(&mut self, more: usize) -> Result<(), usize> {
        let limit = self.config.max_held_bytes;
        let mut held = self.held_bytes();
        if held.saturating_add(more) <= limit {
            return Ok(());
        }
        for (_, id) in &self.finished {
            if let Some(payload) = self.tracked.get_mut(id).and_then(|t| t.payload.take()) {
                held -= payload.len();
                if held.saturating_add(more) <= limit {
                    return Ok(());
                }
            }
        }
        Err(held)
    }

    fn set_lazy(&mut self, peer: &NodeId, lazy: bool) {
        if let Some(n) = self.neighbors.get_mut(peer) {
            if !n.plain {
                n.lazy = lazy;
            }
        }
    }

    /// Drops payloads kept past `linger` and broadcasts finished longer than `remember` ago;
    /// also broadcasts only heard of (never delivered) once their offers have run out.
    fn forget(&mut self, now: Instant) {
        let linger = self.config.linger;
        let remember = self.config.remember;
        for (at, id) in &self.finished {
            if now.saturating_duration_since(*at) < linger {
                break;
            }
            if let Some(t) = self.tracked.get_mut(id) {
                t.payload = None;
            }
        }
        while let Some((at, _)) = self.finished.front() {
            if now.saturating_duration_since(*at) < remember {
                break;
            }
            if let Some((_, id)) = self.finished.pop_front() {
                self.untrack(&id);
            }
        }
        let stale: Vec<BroadcastId> = self
            .tracked
            .iter()
            .filter(|(_, t)| {
                !t.delivered
                    && !t
                        .heard
                        .iter()
                        .any(|h| now.saturating_duration_since(h.at) < h.budget.max(remember))
            })
            .map(|(id, _)| id.clone())
            .collect();
        for id in stale {
            self.untrack(&id);
        }
    }

    fn track(&mut self, id: BroadcastId, t: Tracked) {
        self.origins
            .entry(id.hash.clone())
            .or_default()
            .insert(id.origin.clone());
        self.tracked.insert(id, t);
    }

    fn untrack(&mut self, id: &BroadcastId) {
        self.tracked.remove(id);
        if let Some(origins) = self.origins.get_mut(&id.hash) {
            origins.remove(&id.origin);
            if origins.is_empty() {
                self.origins.remove(&id.hash);
            }
        }
    }

    /// Forgets the oldest finished broadcasts while the table is full.
    fn make_room(&mut self) {
        while self.tracked.len() >= self.config.max_tracked {
            let Some((_, id)) = self.finished.pop_front() else {
                break;
            };
            self.untrack(&id);
        }
    }
}

fn unload(load: &mut HashMap<NodeId, u64>, peer: &NodeId) {
    if let Some(n) = load.get_mut(peer) {
        *n = n.saturating_sub(1);
    }
}
