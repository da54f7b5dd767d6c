//! The membership thread of a node that runs membership ([`NodeConfig::membership`]): it feeds
//! the [`Membership`] machine what arrives (frames, links that break, dials that fail, its
//! timers) and carries out what the machine asks, over the node's own links:
//!
//! - a member of the active view gets a link, dialled like a neighbour the application adds
//!   (`connect_to_neighbor`), and loses it when it leaves the view; such links are not
//!   reconnected: a broken one is a failure the machine hears of;
//! - a frame for a member without a link (a neighbour request, a shuffle reply, a probe) opens
//!   an extra link, at most [`MembershipConfig::max_extra_links`] at once, closed after
//!   [`MembershipConfig::idle_link`] unused;
//! - static neighbours (`--peer`, `add_neighbor`) carry frames when members, and are never
//!   dialled or closed here.
//!
//! The thread never blocks the manager thread: frames arrive through a bounded queue the
//! manager only tries to fill, and dials run on threads of their own.
//!
//! [`NodeConfig::membership`]: crate::NodeConfig::membership

use std::collections::HashMap;
use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};
use log::{debug, info, warn};
use parking_lot::Mutex;

use super::control::Control;
use super::driver::Input;
use crate::backoff::Backoff;
use crate::config::MembershipConfig;
use crate::error::Error;
use crate::id::NodeId;
use crate::membership::{frame, Frame, MemberInfo, Membership, MembershipIn, MembershipOut, Peer};
use crate::neighbor::{NeighborEvent, NeighborInfo};
use crate::stats::{bump, Counters};
use crate::store::SlotStore;

/// Frames waiting for the membership thread beyond which the manager drops more.
pub(crate) const MEMBER_INBOX: usize = 4096;
/// Frames held per member while its link is being dialled.
const QUEUED_PER_DIAL: usize = 64;
/// How often suspicions are checked and idle links closed.
const TICK: Duration = Duration::from_secs(1);

/// What the membership thread is told.
pub(crate) enum MemberInput {
    /// A membership frame arrived from `from`.
    Frame { from: NodeId, payload: Bytes },
    /// A neighbour event of the node's links (a link that broke).
    Link(NeighborEvent),
    /// A dial this thread asked for finished.
    Dialled {
        peer: Peer,
        result: Result<(), String>,
    },
    /// Join through these seeds (`[ID=]HOST:PORT`), retrying while none answers.
    Seeds(Vec<String>),
    /// A join attempt found a seed (or only this node, or nobody).
    Found(Result<Option<Peer>, String>),
    /// Leave the cluster; answered once the leave has been handed to the links.
    Leave(Sender<()>),
    /// The node stops.
    Stop,
}

/// One member this thread holds (or is opening) a link to.
struct Held {
    /// The dial finished and the link is up.
    up: bool,
    /// In the active view (else an extra link, closed once idle).
    active: bool,
    /// Dialled here (false: a static neighbour, which is never closed here).
    ours: bool,
    /// Frames waiting for the dial.
    queued: Vec<Frame>,
    last_used: Instant,
}

/// The membership thread (see the module docs).
pub(crate) struct Members {
    pub(crate) machine: Arc<Mutex<Membership>>,
    pub(crate) me: Peer,
    pub(crate) config: MembershipConfig,
    pub(crate) inbox: Receiver<MemberInput>,
    pub(crate) reply: Sender<MemberInput>,
    pub(crate) control: Arc<Control>,
    pub(crate) counters: Arc<Counters>,
    /// The application's membership events (dropped when it does not read them).
    pub(crate) events: Sender<MemberInfo>,
    pub(crate) backoff: Backoff,
    pub(crate) rng: fastrand::Rng,
    /// What is in flight to whom: a link with messages in flight is never closed here.
    pub(crate) store: Arc<SlotStore>,
    /// Links the application's messages to members opened (see `Node::send_message`), and
    /// when each was last busy.
    pub(crate) direct: Arc<Mutex<HashMap<NodeId, Instant>>>,
}

/// Where the thread stands with joining.
struct Joining {
    seeds: Vec<String>,
    /// An attempt is running.
    running: bool,
    /// Attempts failed in a row.
    failures: u32,
    next: Instant,
}

impl Members {
    /// Runs until [`MemberInput::Stop`] (or the node is gone).
    pub(crate) fn run(mut self) {
        let mut held: HashMap<NodeId, Held> = HashMap::new();
        let mut joining = Joining {
            seeds: self.config.seeds.clone(),
            running: false,
            failures: 0,
            next: Instant::now(),
        };
        let mut next_tick = Instant::now() + TICK;
        let mut next_shuffle = Instant::now() + self.config.views.shuffle_period;
        let mut out = Vec::new();
        loop {
            let due = next_tick.min(next_shuffle).min(match joining.running {
                false if !joining.seeds.is_empty() => joining.next,
                _ => next_tick,
            });
            let input = self.inbox.recv_deadline(due);
            let now = Instant::now();
            match input {
                Ok(MemberInput::Frame { from, payload }) => {
                    match frame::decode(&payload, &self.control.limits) {
                        Ok((addr, frame)) => {
                            let from = Peer::new(from, addr);
                            self.step(MembershipIn::Frame { from, frame }, now, &mut out);
                        }
                        Err(reason) => {
                            bump(&self.counters.membership_frames_refused);
                            warn!(
                                "{}: membership frame from {from} refused: {reason}",
                                self.me.id
                            );
                        }
                    }
                }
                Ok(MemberInput::Link(NeighborEvent::Down { peer, reason })) => {
                    if let Some(h) = held.remove(&peer) {
                        debug!("{}: link to member {peer} broke: {reason}", self.me.id);
                        if h.ours {
                            // Not reconnected: the machine repairs the view instead.
                            self.close(&peer);
                        }
                        let p = self.peer_of(&peer);
                        self.step(MembershipIn::Unreachable(p), now, &mut out);
                    }
                }
                Ok(MemberInput::Link(_)) => {}
                Ok(MemberInput::Dialled { peer, result }) => match (held.get_mut(&peer.id), result)
                {
                    (Some(h), Ok(())) => {
                        h.up = true;
                        h.last_used = now;
                        for f in std::mem::take(&mut h.queued) {
                            self.send_now(&peer.id, &f);
                        }
                    }
                    (None, Ok(())) => {
                        // Given up on meanwhile.
                        self.close(&peer.id);
                    }
                    (_, Err(reason)) => {
                        held.remove(&peer.id);
                        self.mark(&peer.id, false);
                        debug!("{}: member {} unreachable: {reason}", self.me.id, peer.id);
                        self.step(MembershipIn::Unreachable(peer), now, &mut out);
                    }
                },
                Ok(MemberInput::Seeds(seeds)) => {
                    joining.seeds = seeds;
                    joining.failures = 0;
                    joining.next = now;
                }
                Ok(MemberInput::Found(found)) => {
                    joining.running = false;
                    match found {
                        Ok(Some(seed)) => {
                            joining.failures = 0;
                            info!(
                                "{}: joining through {} at {}",
                                self.me.id, seed.id, seed.addr
                            );
                            self.step(MembershipIn::Join(seed), now, &mut out);
                        }
                        Ok(None) => {
                            // Every seed is this node: it is the first member.
                            joining.seeds.clear();
                        }
                        Err(reason) => {
                            let retry_in = self.backoff.delay(joining.failures, &mut self.rng);
                            joining.failures += 1;
                            joining.next = now + retry_in;
                            warn!(
                                "{}: no seed answered ({reason}); retry in {retry_in:?}",
                                self.me.id
                            );
                        }
                    }
                }
                Ok(MemberInput::Leave(done)) => {
                    self.step(MembershipIn::Leave, now, &mut out);
                    self.carry_out(&mut out, &mut held, now);
                    let _ = done.send(());
                    continue;
                }
                Ok(MemberInput::Stop) | Err(RecvTimeoutError::Disconnected) => return,
                Err(RecvTimeoutError::Timeout) => {}
            }
            if now >= next_tick {
                next_tick = now + TICK;
                self.step(MembershipIn::Tick, now, &mut out);
                self.close_idle(&mut held, now);
            }
            if now >= next_shuffle {
                next_shuffle = now + self.config.views.shuffle_period;
                self.step(MembershipIn::Shuffle, now, &mut out);
                let alone = self.machine.lock().views().active().is_empty();
                if alone && !joining.running && joining.next > now {
                    // Cut off (every neighbour gone, none to promote): through the seeds again.
                    joining.next = now;
                }
            }
            let alone = self.machine.lock().views().active().is_empty();
            if alone && !joining.running && !joining.seeds.is_empty() && now >= joining.next {
                joining.running = true;
                self.find_seed(joining.seeds.clone());
            }
            self.carry_out(&mut out, &mut held, now);
        }
    }

    fn step(&self, input: MembershipIn, now: Instant, out: &mut Vec<MembershipOut>) {
        self.machine.lock().handle(input, now, out);
    }

    /// The member `id` as the list knows it (its address), or with no address.
    fn peer_of(&self, id: &NodeId) -> Peer {
        let machine = self.machine.lock();
        let probe = Peer::new(id.clone(), "-");
        match machine.list().get(&probe) {
            Some(m) => m.id,
            None => probe,
        }
    }

    fn carry_out(
        &mut self,
        out: &mut Vec<MembershipOut>,
        held: &mut HashMap<NodeId, Held>,
        now: Instant,
    ) {
        for o in out.drain(..) {
            match o {
                MembershipOut::Send { to, frame } => self.send(to, frame, held, now),
                MembershipOut::Link(p) => match held.get_mut(&p.id) {
                    Some(h) => {
                        h.active = true;
                        if h.ours {
                            self.mark(&p.id, false);
                        }
                    }
                    None => self.hold(p, true, None, held, now),
                },
                MembershipOut::Unlink(p) => {
                    if let Some(h) = held.get_mut(&p.id) {
                        h.active = false;
                        h.last_used = now;
                        match h.ours {
                            // An extra link until it closes: no broadcasts over it.
                            true => self.mark(&p.id, true),
                            false => drop(held.remove(&p.id)),
                        }
                    }
                }
                MembershipOut::Changed(member) => {
                    let info = MemberInfo::from(member);
                    info!(
                        "{}: member {} at {} is {:?} (incarnation {})",
                        self.me.id, info.id, info.addr, info.state, info.incarnation
                    );
                    let _ = self.events.try_send(info);
                }
            }
        }
    }

    fn send(&mut self, to: Peer, frame: Frame, held: &mut HashMap<NodeId, Held>, now: Instant) {
        if to == self.me {
            return;
        }
        match held.get_mut(&to.id) {
            Some(h) if h.up => {
                h.last_used = now;
                self.send_now(&to.id, &frame);
            }
            Some(h) => {
                if h.queued.len() < QUEUED_PER_DIAL {
                    h.queued.push(frame);
                }
            }
            None => {
                let extra = held.values().filter(|h| !h.active && h.ours).count();
                if extra < self.config.max_extra_links || self.control.links.is_linked(&to.id) {
                    self.hold(to, false, Some(frame), held, now);
                } else {
                    bump(&self.counters.membership_frames_dropped);
                    debug!(
                        "{}: no room for a link to {}: frame dropped",
                        self.me.id, to.id
                    );
                }
            }
        }
    }

    /// Starts holding a link to `p`: a static neighbour's is used as it is, anyone else is
    /// dialled.
    fn hold(
        &mut self,
        p: Peer,
        active: bool,
        first: Option<Frame>,
        held: &mut HashMap<NodeId, Held>,
        now: Instant,
    ) {
        let linked = self.control.links.is_linked(&p.id);
        // A link the application's messages opened is ours to close too, unlike a static
        // neighbour's.
        let direct = self.direct.lock().contains_key(&p.id);
        if !linked || direct {
            // Told before the dial, so the link comes up as what it is.
            self.mark(&p.id, !active);
        }
        held.insert(
            p.id.clone(),
            Held {
                up: linked,
                active,
                ours: !linked || direct,
                queued: match linked {
                    true => Vec::new(),
                    false => first.iter().cloned().collect(),
                },
                last_used: now,
            },
        );
        if linked {
            if let Some(f) = first {
                self.send_now(&p.id, &f);
            }
            return;
        }
        let control = self.control.clone();
        let reply = self.reply.clone();
        let peer = p.clone();
        let spawned =
            self.control
                .links
                .threads
                .spawn(format!("gossip-dial-{}", self.me.id), move || {
                    let info = NeighborInfo::new(peer.id.as_str(), peer.addr.as_str());
                    let result = match control.connect_to_neighbor(info) {
                        Ok(()) => Ok(()),
                        Err(Error::Shutdown) => return,
                        Err(e) => Err(e.to_string()),
                    };
                    let _ = reply.send(MemberInput::Dialled { peer, result });
                });
        if let Err(e) = spawned {
            let _ = self.reply.send(MemberInput::Dialled {
                peer: p,
                result: Err(e.to_string()),
            });
        }
    }

    /// Tells the node core whether the link to `peer` is an extra one (no broadcasts).
    fn mark(&self, peer: &NodeId, extra: bool) {
        let peer = peer.clone();
        let _ = self.control.inbox.send(Input::Extra { peer, extra });
    }

    /// Closes a link this thread opened.
    fn close(&self, peer: &NodeId) {
        let _ = self.control.disconnect_neighbor(peer.as_str());
        self.mark(peer, false);
    }

    fn send_now(&self, to: &NodeId, frame: &Frame) {
        let payload = frame::encode(frame, &self.me.addr);
        let _ = self.control.inbox.send(Input::Membership {
            peer: to.clone(),
            payload,
        });
    }

    /// Closes the extra links nothing was sent on for [`MembershipConfig::idle_link`], and the
    /// links opened for the application's messages once nothing has been in flight on them for
    /// as long; never one with messages in flight, nor one the other kind still uses.
    fn close_idle(&self, held: &mut HashMap<NodeId, Held>, now: Instant) {
        let idle = self.config.idle_link;
        let in_flight = self.store.in_flight_by_peer();
        let busy = |id: &NodeId| in_flight.get(id).is_some_and(|n| *n > 0);
        let mut direct = self.direct.lock();
        let done: Vec<NodeId> = held
            .iter()
            .filter(|(id, h)| {
                h.ours
                    && h.up
                    && !h.active
                    && now.saturating_duration_since(h.last_used) >= idle
                    && !busy(id)
                    && !direct.contains_key(*id)
            })
            .map(|(id, _)| id.clone())
            .collect();
        for id in done {
            held.remove(&id);
            self.close(&id);
        }
        direct.retain(|id, last| {
            if busy(id) {
                *last = now;
            }
            let keep = now.saturating_duration_since(*last) < idle;
            // One membership also holds is left to it.
            if !keep && !held.contains_key(id) {
                debug!("{}: closing the idle link to member {id}", self.me.id);
                self.close(id);
            }
            keep
        });
    }

    /// Looks for a seed on a thread of its own (dials take time): the first that answers with
    /// an id other than ours.
    fn find_seed(&self, seeds: Vec<String>) {
        let control = self.control.clone();
        let reply = self.reply.clone();
        let me = self.me.id.clone();
        let spawned = self
            .control
            .links
            .threads
            .spawn(format!("gossip-join-{me}"), move || {
                let found = find_seed(&control, &me, &seeds);
                let _ = reply.send(MemberInput::Found(found));
            });
        if let Err(e) = spawned {
            let _ = self.reply.send(MemberInput::Found(Err(e.to_string())));
        }
    }
}

/// Tries each seed in turn, each address a name resolves to in turn: `Ok(None)` when the only
/// answers came from this node itself.
fn find_seed(control: &Control, me: &NodeId, seeds: &[String]) -> Result<Option<Peer>, String> {
    let mut errors = Vec::new();
    let mut only_me = false;
    for seed in seeds {
        let (named, endpoint) = match seed.split_once('=') {
            Some((id, endpoint)) => (Some(id), endpoint),
            None => (None, seed.as_str()),
        };
        if let Some(id) = named {
            match NodeId::new(id, &control.limits) {
                Ok(id) if id == *me => only_me = true,
                Ok(id) => return Ok(Some(Peer::new(id, endpoint))),
                Err(e) => errors.push(format!("{seed}: {e}")),
            }
            continue;
        }
        let addrs: Vec<SocketAddr> = match endpoint.parse::<SocketAddr>() {
            Ok(a) => vec![a],
            Err(_) => match endpoint.to_socket_addrs() {
                Ok(a) => a.collect(),
                Err(e) => {
                    errors.push(format!("{seed}: {e}"));
                    continue;
                }
            },
        };
        for addr in addrs {
            let addr = addr.to_string();
            match control.links.identify(&addr, control.connect_timeout) {
                Ok(id) => match NodeId::new(&id, &control.limits) {
                    Ok(id) if id == *me => only_me = true,
                    Ok(id) => return Ok(Some(Peer::new(id, addr))),
                    Err(e) => errors.push(format!("{addr}: {e}")),
                },
                Err(Error::Shutdown) => return Err("the node stops".into()),
                Err(e) => errors.push(format!("{addr}: {e}")),
            }
        }
    }
    match (only_me, errors.is_empty()) {
        (true, _) | (false, true) => Ok(None),
        (false, false) => Err(errors.join("; ")),
    }
}
