//! One node's membership: its [`HyParView`] views and its [`MemberList`] together, as the
//! state machine a running node drives (the simulator drives the two parts on their own).
//!
//! It is told what arrives and what fails ([`MembershipIn`]) and answers with what to do
//! ([`MembershipOut`]); the node's membership thread carries that out over real links.
//!
//! Beside HyParView it does three things:
//! - **relays updates**: an update that is news to the list (see [`MemberList::merge`]) goes
//!   on to every active neighbour but the one it came from, so a join, a suspicion, a
//!   refutation or a leave floods the active-view graph once;
//! - **anti-entropy**: every shuffle period it sends its list's [`Digest`] to a random
//!   neighbour and to a random member outside its active view believed up; the receiver
//!   answers with its entries of the buckets that differ and asks for ours. That repairs what
//!   a flood missed, gives a joining node the list (its first digest goes to its contact), and
//!   probes members that are not neighbours: one that cannot be reached is suspected, as one
//!   whose link breaks is; now and then ([`ViewConfig::swap_every`]) that member is also taken
//!   into a full active view in place of a random neighbour, which joins an overlay that
//!   settled into parts;
//! - **failure**: a link that breaks, or a member that cannot be reached, is suspected by this
//!   node; the list fails it on a second member's confirmation or after its timeout.

use std::time::Instant;

use super::frame::{Frame, MAX_UPDATES};
use super::{
    HyParView, In, ListConfig, Member, MemberEvent, MemberList, MemberState, Message, Out, Peer,
    Update, ViewConfig,
};

/// What a node's [`Membership`] is told.
#[derive(Clone, Debug)]
pub enum MembershipIn {
    /// Join through `Peer` (a seed whose id its handshake told).
    Join(Peer),
    /// A frame from `from` (its id is the stream's, its address the frame's).
    Frame {
        /// The sender.
        from: Peer,
        /// What it sent.
        frame: Frame,
    },
    /// The link to `Peer` broke, or it could not be reached.
    Unreachable(Peer),
    /// The one-second timer: suspicion timeouts.
    Tick,
    /// The shuffle timer ([`ViewConfig::shuffle_period`]): a shuffle and an anti-entropy round.
    Shuffle,
    /// This node leaves the cluster.
    Leave,
}

/// What a node's [`Membership`] asks for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MembershipOut {
    /// Send `frame` to `to`, over its link or one opened for the purpose.
    Send {
        /// The recipient.
        to: Peer,
        /// The frame.
        frame: Frame,
    },
    /// `Peer` entered the active view: hold a link to it.
    Link(Peer),
    /// `Peer` left the active view: its link may close once idle.
    Unlink(Peer),
    /// A member changed, for the application.
    Changed(Member<Peer>),
}

/// One node's views and member list (see the module docs).
#[derive(Debug)]
pub struct Membership {
    views: HyParView<Peer>,
    list: MemberList<Peer>,
    rng: fastrand::Rng,
    view_out: Vec<Out<Peer>>,
    spread: Vec<Update<Peer>>,
    events: Vec<MemberEvent<Peer>>,
}

impl Membership {
    /// Node `me` at `incarnation` (higher than in any earlier life of the same id: the clock's
    /// seconds do), with empty views; `seed` makes its random choices repeatable.
    pub fn new(
        me: Peer,
        incarnation: u32,
        views: ViewConfig,
        list: ListConfig,
        seed: u64,
    ) -> Membership {
        Membership {
            views: HyParView::new(me.clone(), views, seed),
            list: MemberList::new(me, incarnation, list),
            rng: fastrand::Rng::with_seed(seed ^ 0x9e37_79b9_7f4a_7c15),
            view_out: Vec::new(),
            spread: Vec::new(),
            events: Vec::new(),
        }
    }

    /// The views.
    pub fn views(&self) -> &HyParView<Peer> {
        &self.views
    }

    /// The member list.
    pub fn list(&self) -> &MemberList<Peer> {
        &self.list
    }

    /// Handles one input at `now`; what it asks for is appended to `out`.
    pub fn handle(&mut self, input: MembershipIn, now: Instant, out: &mut Vec<MembershipOut>) {
        let mut relay_except = None;
        match input {
            MembershipIn::Join(contact) => {
                self.views
                    .handle(In::Join(contact.clone()), &mut self.view_out);
                // Our entry and the contact's list, both ways.
                self.send_digest(contact, out);
            }
            MembershipIn::Frame { from, frame } => match frame {
                Frame::View(message) => {
                    self.views.handle(
                        In::Received {
                            from: from.clone(),
                            message,
                        },
                        &mut self.view_out,
                    );
                }
                Frame::Updates { updates, want } => {
                    let mut news = Vec::new();
                    for u in updates {
                        if self
                            .list
                            .merge(u.clone(), now, &mut self.spread, &mut self.events)
                        {
                            news.push(u);
                        }
                    }
                    if want != 0 {
                        self.send_updates(&from, self.list.snapshot_of(want), 0, out);
                    }
                    self.spread.extend(news);
                    relay_except = Some(from);
                }
                Frame::Digest(digest) => {
                    let mask = self.list.digest().differs(&digest);
                    if mask != 0 {
                        self.send_updates(&from, self.list.snapshot_of(mask), mask, out);
                    }
                }
            },
            MembershipIn::Unreachable(peer) => {
                self.views
                    .handle(In::Failed(peer.clone()), &mut self.view_out);
                self.list
                    .unreachable(&peer, now, &mut self.spread, &mut self.events);
            }
            MembershipIn::Tick => self.list.tick(now, &mut self.events),
            MembershipIn::Shuffle => {
                self.views.handle(In::Shuffle, &mut self.view_out);
                // Anti-entropy with a neighbour (cheap: its link is up), and with a member
                // outside the view, which probes it too.
                let active = self.views.active();
                if !active.is_empty() {
                    let neighbour = active[self.rng.usize(..active.len())].clone();
                    self.send_digest(neighbour, out);
                }
                if let Some(peer) = self.random_member() {
                    if self.views.swap_due() {
                        self.views
                            .handle(In::Swap(peer.clone()), &mut self.view_out);
                    }
                    self.send_digest(peer, out);
                }
            }
            MembershipIn::Leave => {
                let left = self.list.leave();
                self.spread.push(left);
                // The leave first, then the goodbyes: a neighbour that takes the
                // `Disconnect` first drops the link, and the leave behind it on that link
                // can be lost, leaving the member to be failed instead.
                self.settle(None, out);
                for p in self.views.active().to_vec() {
                    out.push(MembershipOut::Send {
                        to: p,
                        frame: Frame::View(Message::Disconnect),
                    });
                }
            }
        }
        self.settle(relay_except, out);
    }

    /// Turns what the two parts asked for into outputs: view messages and link changes, the
    /// updates to flood, the application's events; a member found failed or gone leaves the
    /// views too.
    fn settle(&mut self, relay_except: Option<Peer>, out: &mut Vec<MembershipOut>) {
        loop {
            for o in self.view_out.drain(..) {
                out.push(match o {
                    Out::Send { to, message } => MembershipOut::Send {
                        to,
                        frame: Frame::View(message),
                    },
                    Out::NeighborUp(p) => MembershipOut::Link(p),
                    Out::NeighborDown(p) => MembershipOut::Unlink(p),
                });
            }
            let mut gone = Vec::new();
            for e in self.events.drain(..) {
                if matches!(e.member.state, MemberState::Failed | MemberState::Left) {
                    gone.push(e.member.id.clone());
                }
                out.push(MembershipOut::Changed(e.member));
            }
            for p in gone {
                self.views.handle(In::Failed(p), &mut self.view_out);
            }
            if self.view_out.is_empty() {
                break;
            }
        }
        if !self.spread.is_empty() {
            let spread = std::mem::take(&mut self.spread);
            for p in self.views.active().to_vec() {
                if Some(&p) != relay_except.as_ref() {
                    self.send_updates(&p, spread.clone(), 0, out);
                }
            }
        }
    }

    fn send_updates(
        &self,
        to: &Peer,
        updates: Vec<Update<Peer>>,
        want: u64,
        out: &mut Vec<MembershipOut>,
    ) {
        let mut chunks = updates.chunks(MAX_UPDATES).peekable();
        if chunks.peek().is_none() && want != 0 {
            // Nothing of ours there, but we still want theirs.
            out.push(MembershipOut::Send {
                to: to.clone(),
                frame: Frame::Updates {
                    updates: Vec::new(),
                    want,
                },
            });
        }
        while let Some(chunk) = chunks.next() {
            let last = chunks.peek().is_none();
            out.push(MembershipOut::Send {
                to: to.clone(),
                frame: Frame::Updates {
                    updates: chunk.to_vec(),
                    want: if last { want } else { 0 },
                },
            });
        }
    }

    fn send_digest(&self, to: Peer, out: &mut Vec<MembershipOut>) {
        out.push(MembershipOut::Send {
            to,
            frame: Frame::Digest(Box::new(self.list.digest().clone())),
        });
    }

    /// A member believed up, other than this node and its neighbours, picked at random.
    fn random_member(&mut self) -> Option<Peer> {
        let me = &self.list.me().member.id;
        let active = self.views.active();
        let up: Vec<&Peer> = self
            .list
            .live()
            .filter(|p| *p != me && !active.contains(p))
            .collect();
        match up.len() {
            0 => None,
            n => Some(up[self.rng.usize(..n)].clone()),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;
    use std::time::Duration;

    use super::*;
    use crate::id::NodeId;
    use crate::limits::Limits;

    /// `n` machines, messages delivered in order of sending through their wire form; a frame
    /// to a crashed node fails back to its sender as a dial would, and a crash is seen at once
    /// by the nodes whose active views hold it, as a broken link is.
    struct Net {
        nodes: Vec<Membership>,
        alive: Vec<bool>,
        queue: VecDeque<(usize, MembershipOut)>,
        now: Instant,
        changes: Vec<Vec<Member<Peer>>>,
    }

    fn peer(i: usize) -> Peer {
        Peer::new(
            NodeId::new(&format!("n{i}"), &Limits::default()).unwrap(),
            format!("10.0.0.{i}:7000"),
        )
    }

    fn index(p: &Peer) -> usize {
        p.id.as_str()[1..].parse().unwrap()
    }

    impl Net {
        fn new(n: usize) -> Net {
            let views = ViewConfig {
                active: 3,
                passive: 8,
                ..ViewConfig::default()
            };
            let list = ListConfig {
                suspect_timeout: Duration::from_secs(5),
                ..ListConfig::default()
            };
            Net {
                nodes: (0..n)
                    .map(|i| Membership::new(peer(i), 1, views.clone(), list.clone(), i as u64))
                    .collect(),
                alive: vec![true; n],
                queue: VecDeque::new(),
                now: Instant::now(),
                changes: vec![Vec::new(); n],
            }
        }

        fn input(&mut self, at: usize, input: MembershipIn) {
            let mut out = Vec::new();
            self.nodes[at].handle(input, self.now, &mut out);
            self.queue.extend(out.into_iter().map(|o| (at, o)));
        }

        fn run(&mut self) {
            let mut steps = 0;
            while let Some((at, o)) = self.queue.pop_front() {
                steps += 1;
                assert!(steps < 1_000_000, "the machines never settle");
                if !self.alive[at] {
                    continue;
                }
                match o {
                    MembershipOut::Send { to, frame } => {
                        let j = index(&to);
                        if !self.alive[j] {
                            self.input(at, MembershipIn::Unreachable(to));
                            continue;
                        }
                        // Through the wire form, as between real nodes.
                        let bytes = super::super::frame::encode(&frame, &peer(at).addr);
                        let (addr, frame) =
                            super::super::frame::decode(&bytes, &Limits::default()).unwrap();
                        let from = Peer::new(peer(at).id, addr);
                        self.input(j, MembershipIn::Frame { from, frame });
                    }
                    MembershipOut::Link(p) if !self.alive[index(&p)] => {
                        self.input(at, MembershipIn::Unreachable(p));
                    }
                    MembershipOut::Changed(m) => self.changes[at].push(m),
                    _ => {}
                }
            }
        }

        fn rounds(&mut self, n: usize) {
            for _ in 0..n {
                self.now += Duration::from_secs(1);
                for i in 0..self.nodes.len() {
                    if self.alive[i] {
                        self.input(i, MembershipIn::Tick);
                        self.input(i, MembershipIn::Shuffle);
                    }
                }
                self.run();
            }
        }

        fn crash(&mut self, i: usize) {
            self.alive[i] = false;
            for j in 0..self.nodes.len() {
                if self.alive[j] && self.nodes[j].views().active().contains(&peer(i)) {
                    self.input(j, MembershipIn::Unreachable(peer(i)));
                }
            }
            self.run();
        }

        fn state_of(&self, at: usize, of: usize) -> Option<MemberState> {
            self.nodes[at].list().get(&peer(of)).map(|m| m.state)
        }
    }

    fn joined(n: usize) -> Net {
        let mut net = Net::new(n);
        for i in 1..n {
            net.input(i, MembershipIn::Join(peer(0)));
            net.run();
        }
        net
    }

    #[test]
    fn nodes_that_join_through_one_seed_all_learn_every_member() {
        let mut net = joined(20);
        net.rounds(3);
        for i in 0..20 {
            let active = net.nodes[i].views().active().len();
            assert!((1..=3).contains(&active), "node {i}: {active} neighbours");
            for j in 0..20 {
                assert_eq!(net.state_of(i, j), Some(MemberState::Joined), "{i} of {j}");
            }
        }
        // The application heard of each other member joining.
        let heard: Vec<usize> = net.changes[5]
            .iter()
            .filter(|m| m.state == MemberState::Joined)
            .map(|m| index(&m.id))
            .collect();
        assert!(heard.len() >= 19, "{heard:?}");
    }

    #[test]
    fn a_crash_seen_by_two_members_fails_it_everywhere_and_the_views_heal() {
        let mut net = joined(20);
        net.rounds(3);
        for i in [3, 7, 11] {
            net.crash(i);
        }
        net.rounds(10);
        for i in (0..20).filter(|i| net.alive[*i]) {
            for j in [3, 7, 11] {
                assert_eq!(net.state_of(i, j), Some(MemberState::Failed), "{i} of {j}");
                assert!(!net.nodes[i].views().active().contains(&peer(j)));
            }
            assert!(
                !net.nodes[i].views().active().is_empty(),
                "node {i} cut off"
            );
        }
    }

    #[test]
    fn a_member_falsely_suspected_refutes_with_a_higher_incarnation() {
        let mut net = joined(6);
        net.rounds(2);
        // Node 1 loses its link to node 2, which is alive.
        net.input(1, MembershipIn::Unreachable(peer(2)));
        net.run();
        net.rounds(8);
        for i in 0..6 {
            let m = net.nodes[i].list().get(&peer(2)).unwrap();
            assert_eq!(m.state, MemberState::Joined, "node {i}");
            assert!(m.incarnation > 1, "node {i}: incarnation {}", m.incarnation);
        }
    }

    #[test]
    fn a_member_that_leaves_is_listed_as_left() {
        let mut net = joined(6);
        net.rounds(2);
        net.input(4, MembershipIn::Leave);
        net.run();
        net.alive[4] = false;
        net.rounds(3);
        for i in (0..6).filter(|i| *i != 4) {
            assert_eq!(net.state_of(i, 4), Some(MemberState::Left), "node {i}");
        }
    }

    #[test]
    fn a_leaving_node_tells_each_neighbour_of_its_leave_before_it_disconnects() {
        let mut net = joined(6);
        net.rounds(2);
        let neighbours = net.nodes[4].views().active().to_vec();
        assert!(!neighbours.is_empty());
        let mut out = Vec::new();
        net.nodes[4].handle(MembershipIn::Leave, net.now, &mut out);
        for n in &neighbours {
            let to_n: Vec<&Frame> = (out.iter())
                .filter_map(|o| match o {
                    MembershipOut::Send { to, frame } if to == n => Some(frame),
                    _ => None,
                })
                .collect();
            let leave = to_n.iter().position(|f| {
                matches!(f, Frame::Updates { updates, .. }
                    if updates.iter().any(|u| u.member.state == MemberState::Left))
            });
            let bye = (to_n.iter()).position(|f| matches!(f, Frame::View(Message::Disconnect)));
            // A link is dropped on its Disconnect: what follows it on that link may be lost.
            match (leave, bye) {
                (Some(l), Some(b)) => assert!(l < b, "{}: {to_n:?}", n.id),
                _ => panic!("{}: {to_n:?}", n.id),
            }
        }
    }

    #[test]
    fn a_list_grows_no_further_than_its_bound() {
        let list = ListConfig {
            max_members: 10,
            ..ListConfig::default()
        };
        let mut m = Membership::new(peer(0), 1, ViewConfig::default(), list, 1);
        let updates = (1..100)
            .map(|i| Update {
                member: Member {
                    id: peer(i),
                    incarnation: 1,
                    state: MemberState::Joined,
                },
                reporter: None,
            })
            .collect();
        let mut out = Vec::new();
        m.handle(
            MembershipIn::Frame {
                from: peer(1),
                frame: Frame::Updates { updates, want: 0 },
            },
            Instant::now(),
            &mut out,
        );
        assert_eq!(m.list().len(), 10);
    }
}
