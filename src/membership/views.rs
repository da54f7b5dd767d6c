//! The HyParView state machine (see the module docs of [`super`]).

use std::fmt::Debug;

use super::{In, Message, Out, ViewConfig};

/// One node's active and passive views.
#[derive(Debug)]
pub struct HyParView<P> {
    me: P,
    config: ViewConfig,
    active: Vec<P>,
    passive: Vec<P>,
    /// Passive peers asked to become neighbours, not answered yet.
    pending: Vec<P>,
    /// The peers we sent in our last shuffle: replaced first when its reply comes.
    shuffled: Vec<P>,
    rng: fastrand::Rng,
}

impl<P: Clone + PartialEq + Debug> HyParView<P> {
    /// A node `me` with empty views; `seed` makes its random choices repeatable. Views of size
    /// zero are taken as one.
    pub fn new(me: P, mut config: ViewConfig, seed: u64) -> HyParView<P> {
        config.active = config.active.max(1);
        config.passive = config.passive.max(1);
        HyParView {
            me,
            active: Vec::with_capacity(config.active + 1),
            passive: Vec::with_capacity(config.passive + 1),
            config,
            pending: Vec::new(),
            shuffled: Vec::new(),
            rng: fastrand::Rng::with_seed(seed),
        }
    }

    /// The active view: the peers this node holds links to.
    pub fn active(&self) -> &[P] {
        &self.active
    }

    /// The passive view: peers known, to repair the active view.
    pub fn passive(&self) -> &[P] {
        &self.passive
    }

    /// The configuration.
    pub fn config(&self) -> &ViewConfig {
        &self.config
    }

    /// Handles one input; what it asks for is appended to `out`.
    pub fn handle(&mut self, input: In<P>, out: &mut Vec<Out<P>>) {
        match input {
            In::Join(contact) => {
                if contact != self.me {
                    self.add_active(contact.clone(), out);
                    send(out, contact, Message::Join);
                }
            }
            In::Received { from, message } => self.received(from, message, out),
            In::Failed(peer) => {
                if let Some(i) = self.active.iter().position(|p| *p == peer) {
                    self.active.swap_remove(i);
                    out.push(Out::NeighborDown(peer.clone()));
                }
                // A peer that cannot be reached is no repair candidate either.
                self.passive.retain(|p| *p != peer);
                self.pending.retain(|p| *p != peer);
                self.refill(out);
            }
            In::Shuffle => {
                self.refill(out);
                self.shuffle(out);
            }
            In::Swap(peer) => {
                let full = self.active.len() >= self.config.active;
                let known = self.active.contains(&peer) || self.pending.contains(&peer);
                if full && !known && peer != self.me {
                    // Room first: the spare hears of it before the one it is handed to does.
                    let spare = self.drop_active(None, out);
                    self.pending.push(peer.clone());
                    send(out, peer, Message::Swap { spare });
                }
            }
        }
    }

    /// Whether to swap a neighbour at this shuffle ([`ViewConfig::swap_every`]): a full
    /// active view, one chance in `swap_every`.
    pub fn swap_due(&mut self) -> bool {
        let every = self.config.swap_every;
        self.active.len() >= self.config.active && every > 0 && self.rng.u32(..every) == 0
    }

    fn received(&mut self, from: P, message: Message<P>, out: &mut Vec<Out<P>>) {
        if from == self.me {
            return;
        }
        match message {
            Message::Join => {
                self.add_active(from.clone(), out);
                let others: Vec<P> = self
                    .active
                    .iter()
                    .filter(|p| **p != from)
                    .cloned()
                    .collect();
                for q in others {
                    let walk = Message::ForwardJoin {
                        joiner: from.clone(),
                        ttl: self.config.active_walk,
                    };
                    send(out, q, walk);
                }
            }
            Message::ForwardJoin { joiner, ttl } => self.forward_join(from, joiner, ttl, out),
            Message::Neighbor { high } => {
                let accepted = high || self.active.len() < self.config.active;
                if accepted {
                    self.add_active(from.clone(), out);
                } else {
                    self.add_passive(from.clone());
                }
                send(out, from, Message::NeighborReply { accepted });
            }
            Message::Swap { spare } => {
                if !self.active.contains(&from) {
                    if self.active.len() >= self.config.active {
                        let ours = self.drop_active(Some(&spare), out);
                        if ours != spare && spare != self.me {
                            // A walk that ends at once: `ours` takes the spare in and asks it
                            // with high priority, as at the end of a join's walk.
                            let walk = Message::ForwardJoin {
                                joiner: spare,
                                ttl: 0,
                            };
                            send(out, ours, walk);
                        }
                    }
                    self.add_active(from.clone(), out);
                }
                send(out, from, Message::NeighborReply { accepted: true });
            }
            Message::NeighborReply { accepted } => {
                self.pending.retain(|p| *p != from);
                // A refusal is tried again at the next shuffle tick, not now: asking the
                // same full peers at once would only be refused again.
                if accepted {
                    self.add_active(from, out);
                }
            }
            Message::Disconnect => {
                if let Some(i) = self.active.iter().position(|p| *p == from) {
                    self.active.swap_remove(i);
                    out.push(Out::NeighborDown(from.clone()));
                    self.add_passive(from);
                    if self.active.is_empty() {
                        // Alone now: ask at once, with high priority, not at the next shuffle.
                        self.refill(out);
                    }
                }
            }
            Message::Shuffle { origin, ttl, peers } => {
                let next = match ttl > 1 && self.active.len() > 1 {
                    true => self.random_active_except(&[&from, &origin]),
                    false => None,
                };
                match next {
                    Some(q) => {
                        let walk = Message::Shuffle {
                            origin,
                            ttl: ttl - 1,
                            peers,
                        };
                        send(out, q, walk);
                    }
                    None if origin != self.me => {
                        let reply = self.sample_passive(peers.len());
                        send(
                            out,
                            origin,
                            Message::ShuffleReply {
                                peers: reply.clone(),
                            },
                        );
                        self.integrate(peers, &reply);
                    }
                    None => {}
                }
            }
            Message::ShuffleReply { peers } => {
                let sent = std::mem::take(&mut self.shuffled);
                self.integrate(peers, &sent);
            }
        }
    }

    /// A join's random walk arrived: it ends here (the joiner becomes a neighbour) or goes on.
    fn forward_join(&mut self, from: P, joiner: P, ttl: u32, out: &mut Vec<Out<P>>) {
        if joiner == self.me {
            return;
        }
        let next = match ttl == 0 || self.active.len() <= 1 {
            true => None,
            false => self.random_active_except(&[&from, &joiner]),
        };
        match next {
            None => {
                if !self.active.contains(&joiner) {
                    self.add_active(joiner.clone(), out);
                    // The joiner takes us in too: a high-priority request is never refused.
                    send(out, joiner, Message::Neighbor { high: true });
                }
            }
            Some(q) => {
                if ttl == self.config.passive_walk {
                    self.add_passive(joiner.clone());
                }
                let walk = Message::ForwardJoin {
                    joiner,
                    ttl: ttl.saturating_sub(1),
                };
                send(out, q, walk);
            }
        }
    }

    /// Starts a shuffle with a random neighbour.
    fn shuffle(&mut self, out: &mut Vec<Out<P>>) {
        let Some(q) = self.random_active_except(&[]) else {
            return;
        };
        let mut peers = vec![self.me.clone()];
        let mut others: Vec<P> = self.active.iter().filter(|p| **p != q).cloned().collect();
        self.rng.shuffle(&mut others);
        others.truncate(self.config.shuffle_active);
        peers.extend(others);
        peers.extend(self.sample_passive(self.config.shuffle_passive));
        self.shuffled = peers[1..].to_vec();
        let walk = Message::Shuffle {
            origin: self.me.clone(),
            ttl: self.config.shuffle_walk,
            peers,
        };
        send(out, q, walk);
    }

    /// Asks passive peers to become neighbours while the active view (with the requests
    /// outstanding) is below its size; with high priority when there is no neighbour at all.
    fn refill(&mut self, out: &mut Vec<Out<P>>) {
        while self.active.len() + self.pending.len() < self.config.active {
            let candidates: Vec<usize> = (0..self.passive.len())
                .filter(|&i| !self.pending.contains(&self.passive[i]))
                .collect();
            if candidates.is_empty() {
                return;
            }
            let p = self.passive[candidates[self.rng.usize(..candidates.len())]].clone();
            self.pending.push(p.clone());
            let high = self.active.is_empty();
            send(out, p, Message::Neighbor { high });
        }
    }

    /// Takes `p` into the active view, dropping a random neighbour if it is full.
    fn add_active(&mut self, p: P, out: &mut Vec<Out<P>>) {
        if p == self.me || self.active.contains(&p) {
            return;
        }
        if self.active.len() >= self.config.active {
            self.drop_active(None, out);
        }
        self.passive.retain(|q| *q != p);
        self.pending.retain(|q| *q != p);
        self.active.push(p.clone());
        out.push(Out::NeighborUp(p));
    }

    /// Drops a random neighbour (other than `keep`, if there is another), tells it, and keeps
    /// it in the passive view; the active view is not empty.
    fn drop_active(&mut self, keep: Option<&P>, out: &mut Vec<Out<P>>) -> P {
        let candidates: Vec<usize> = (0..self.active.len())
            .filter(|&i| Some(&self.active[i]) != keep)
            .collect();
        let i = match candidates.len() {
            0 => 0,
            n => candidates[self.rng.usize(..n)],
        };
        let dropped = self.active.swap_remove(i);
        send(out, dropped.clone(), Message::Disconnect);
        out.push(Out::NeighborDown(dropped.clone()));
        self.add_passive(dropped.clone());
        dropped
    }

    /// Remembers `p` in the passive view, forgetting a random one if it is full.
    fn add_passive(&mut self, p: P) {
        if p == self.me || self.active.contains(&p) || self.passive.contains(&p) {
            return;
        }
        if self.passive.len() >= self.config.passive {
            self.passive
                .swap_remove(self.rng.usize(..self.passive.len()));
        }
        self.passive.push(p);
    }

    /// Takes the peers of a shuffle into the passive view; when it is full, those we `sent`
    /// the other side go first, then random ones.
    fn integrate(&mut self, peers: Vec<P>, sent: &[P]) {
        let mut evictable: Vec<P> = sent.to_vec();
        for p in peers {
            if p == self.me || self.active.contains(&p) || self.passive.contains(&p) {
                continue;
            }
            if self.passive.len() >= self.config.passive {
                let i = loop {
                    match evictable.pop() {
                        Some(e) => {
                            if let Some(i) = self.passive.iter().position(|q| *q == e) {
                                break i;
                            }
                        }
                        None => break self.rng.usize(..self.passive.len()),
                    }
                };
                self.passive.swap_remove(i);
            }
            self.passive.push(p);
        }
    }

    fn sample_passive(&mut self, n: usize) -> Vec<P> {
        let mut sample = self.passive.clone();
        self.rng.shuffle(&mut sample);
        sample.truncate(n);
        sample
    }

    fn random_active_except(&mut self, except: &[&P]) -> Option<P> {
        let candidates: Vec<&P> = self.active.iter().filter(|p| !except.contains(p)).collect();
        match candidates.len() {
            0 => None,
            n => Some(candidates[self.rng.usize(..n)].clone()),
        }
    }
}

fn send<P>(out: &mut Vec<Out<P>>, to: P, message: Message<P>) {
    out.push(Out::Send { to, message });
}
