//! The reconnect supervisor of a node: when a link breaks, it updates the neighbour records
//! (calling the application's `NeighborStore`, off the manager thread) and retries the neighbour with
//! exponential backoff and jitter until the link is back, the neighbour is removed, or the node
//! stops. Each attempt runs on a short-lived thread of its own, so one unreachable neighbour
//! never delays the others.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};
use log::debug;

use super::link::Links;
use crate::backoff::Backoff;
use crate::error::Error;
use crate::id::NodeId;
use crate::manager::StreamId;
use crate::neighbor::NeighborEvent;

/// What the supervisor is told.
pub(crate) enum Notice {
    /// The link to this neighbour broke: the link whose MessageStream is `stream` (a newer
    /// link to the same peer is left alone).
    LinkDown {
        peer: NodeId,
        stream: StreamId,
        reason: String,
    },
    /// The application added this neighbour: connect now, and keep trying with backoff.
    Connect(NodeId),
    /// The neighbour answered on its current link (a handshake or an ACK): the link works, so
    /// the next failure starts the backoff over.
    Progress(NodeId),
    /// An attempt finished.
    Attempted {
        peer: NodeId,
        result: Result<(), String>,
    },
    /// The node stops.
    Stop,
}

/// Where the supervisor stands with one neighbour.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Phase {
    /// The next attempt is due then.
    Waiting(Instant),
    /// An attempt is running; `broke`: the link it opened has already gone down.
    Attempting { broke: bool },
    /// A link is up since then, and has not shown progress yet: if it fails before it does
    /// (or before the maximum backoff interval), the backoff keeps growing.
    Probation(Instant),
}

/// A neighbour whose link is down, or up and not yet proven.
struct Pending {
    /// Attempts (or unproven links) failed so far.
    failures: u32,
    phase: Phase,
}

/// The backoff bookkeeping of every neighbour, apart from threads and channels so that it is
/// tested on its own.
struct Schedule {
    backoff: Backoff,
    pending: HashMap<NodeId, Pending>,
}

impl Schedule {
    /// The link to `peer` broke at `now`: schedules the next attempt. A link that broke before
    /// it proved itself counts as one more failure.
    fn link_down(&mut self, peer: NodeId, now: Instant, rng: &mut fastrand::Rng) {
        let failures = match self.pending.get_mut(&peer) {
            Some(p) => match p.phase {
                Phase::Probation(since)
                    if now.saturating_duration_since(since) < self.backoff.max =>
                {
                    p.failures + 1
                }
                Phase::Probation(_) => 0,
                // Already scheduled: that schedule stands.
                Phase::Waiting(_) => return,
                // The attempt's own link broke before it reported: it failed.
                Phase::Attempting { .. } => {
                    p.phase = Phase::Attempting { broke: true };
                    return;
                }
            },
            None => 0,
        };
        let delay = self.backoff.delay(failures, rng);
        self.pending.insert(
            peer,
            Pending {
                failures,
                phase: Phase::Waiting(now + delay),
            },
        );
    }

    /// An attempt to reach `peer` ended; on failure, which failure it is and the delay before
    /// the next attempt.
    fn attempted(
        &mut self,
        peer: &NodeId,
        ok: bool,
        now: Instant,
        rng: &mut fastrand::Rng,
    ) -> Option<(u32, Duration)> {
        let p = self.pending.get_mut(peer)?;
        let broke = matches!(p.phase, Phase::Attempting { broke: true });
        if ok && !broke {
            p.phase = Phase::Probation(now);
            return None;
        }
        p.failures += 1;
        let retry_in = self.backoff.delay(p.failures, rng);
        p.phase = Phase::Waiting(now + retry_in);
        Some((p.failures, retry_in))
    }

    /// A new neighbour: its first attempt is due now (unless one is already scheduled).
    fn connect(&mut self, peer: NodeId, now: Instant) {
        self.pending.entry(peer).or_insert(Pending {
            failures: 0,
            phase: Phase::Waiting(now),
        });
    }

    /// `peer` answered on its link: forget its failures.
    fn progress(&mut self, peer: &NodeId) {
        if matches!(
            self.pending.get(peer).map(|p| p.phase),
            Some(Phase::Probation(_))
        ) {
            self.pending.remove(peer);
        }
    }

    /// The earliest due attempt.
    fn next_due(&self) -> Option<Instant> {
        self.pending
            .values()
            .filter_map(|p| match p.phase {
                Phase::Waiting(t) => Some(t),
                _ => None,
            })
            .min()
    }

    /// The neighbours whose attempt is due at `now`, marked as attempting. Links on probation
    /// for longer than the maximum interval have proved themselves and are forgotten.
    fn due(&mut self, now: Instant) -> Vec<NodeId> {
        let max = self.backoff.max;
        self.pending.retain(|_, p| {
            !matches!(p.phase, Phase::Probation(since) if now.saturating_duration_since(since) >= max)
        });
        let mut due = Vec::new();
        for (peer, p) in &mut self.pending {
            if matches!(p.phase, Phase::Waiting(t) if t <= now) {
                p.phase = Phase::Attempting { broke: false };
                due.push(peer.clone());
            }
        }
        due
    }
}

pub(crate) struct Supervisor {
    pub(crate) links: Arc<Links>,
    pub(crate) notices: Receiver<Notice>,
    pub(crate) reply: Sender<Notice>,
    pub(crate) backoff: Backoff,
    pub(crate) connect_timeout: Duration,
    pub(crate) rng: fastrand::Rng,
}

impl Supervisor {
    pub(crate) fn run(mut self) {
        let mut schedule = Schedule {
            backoff: self.backoff.clone(),
            pending: HashMap::new(),
        };
        loop {
            let notice = match schedule.next_due() {
                Some(due) => self.notices.recv_deadline(due),
                None => self
                    .notices
                    .recv()
                    .map_err(|_| RecvTimeoutError::Disconnected),
            };
            let now = Instant::now();
            match notice {
                Ok(Notice::LinkDown {
                    peer,
                    stream,
                    reason,
                }) => {
                    // Records and events first (the application's store may take its time
                    // here, on this thread rather than the manager's).
                    if self.links.link_down(&peer, stream, &reason) {
                        schedule.link_down(peer, now, &mut self.rng);
                    }
                }
                Ok(Notice::Progress(peer)) => schedule.progress(&peer),
                Ok(Notice::Connect(peer)) => schedule.connect(peer, now),
                Ok(Notice::Attempted { peer, result }) => {
                    let ok = result.is_ok();
                    if let Some((attempt, retry_in)) =
                        schedule.attempted(&peer, ok, now, &mut self.rng)
                    {
                        let error = result
                            .err()
                            .unwrap_or_else(|| "the new link broke at once".to_owned());
                        debug!(
                            "{}: reconnect to {peer} failed ({error}); retry in {retry_in:?}",
                            self.links.id
                        );
                        self.links.emit(NeighborEvent::Reconnecting {
                            peer,
                            attempt,
                            retry_in,
                            error,
                        });
                    }
                }
                Ok(Notice::Stop) | Err(RecvTimeoutError::Disconnected) => return,
                Err(RecvTimeoutError::Timeout) => {}
            }
            for peer in schedule.due(Instant::now()) {
                match self.links.neighbors.lookup(peer.as_str()) {
                    Some((_, info)) if !self.links.is_linked(&peer) => {
                        self.attempt(peer, info.endpoint)
                    }
                    // Removed by the application, or already reconnected by it.
                    _ => {
                        schedule.pending.remove(&peer);
                    }
                }
            }
        }
    }

    fn attempt(&self, peer: NodeId, endpoint: String) {
        let links = self.links.clone();
        let reply = self.reply.clone();
        let timeout = self.connect_timeout;
        let name = format!("gossip-re-{}", links.id);
        let who = peer.clone();
        let spawned = self.links.threads.spawn(name, move || {
            let result = match links.establish(&who, &endpoint, timeout) {
                Ok(()) => Ok(()),
                Err(Error::Shutdown) => return,
                Err(e) => Err(e.to_string()),
            };
            let _ = reply.send(Notice::Attempted { peer: who, result });
        });
        if let Err(e) = spawned {
            let _ = self.reply.send(Notice::Attempted {
                peer,
                result: Err(e.to_string()),
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::limits::Limits;

    fn schedule() -> Schedule {
        Schedule {
            backoff: Backoff::default(),
            pending: HashMap::new(),
        }
    }

    fn peer() -> NodeId {
        NodeId::new("b", &Limits::default()).unwrap()
    }

    /// Runs the next attempt: it opens a link at once.
    fn attempt_opens(s: &mut Schedule, now: &mut Instant, rng: &mut fastrand::Rng) -> Duration {
        let due = s.next_due().expect("an attempt is scheduled");
        let waited = due.saturating_duration_since(*now);
        *now = due;
        assert_eq!(s.due(*now), [peer()]);
        assert_eq!(s.attempted(&peer(), true, *now, rng), None);
        waited
    }

    #[test]
    fn links_that_fail_at_once_keep_the_backoff_growing() {
        // An impostor or a peer that refuses what we send: every link opens, then breaks.
        let mut s = schedule();
        let mut rng = fastrand::Rng::with_seed(1);
        let mut now = Instant::now();
        let start = now;
        s.link_down(peer(), now, &mut rng);
        let mut attempts = 0;
        while s.next_due().unwrap() < start + Duration::from_secs(10) {
            attempt_opens(&mut s, &mut now, &mut rng);
            attempts += 1;
            s.link_down(peer(), now, &mut rng);
        }
        // 50+100+...+3,200 ms at the least before the 7th: never more than 7 in 10 s.
        assert!(attempts <= 7, "{attempts} attempts in 10 s");
        assert_eq!(s.pending[&peer()].failures, attempts);
    }

    #[test]
    fn progress_or_a_long_life_starts_the_backoff_over() {
        let mut s = schedule();
        let mut rng = fastrand::Rng::with_seed(2);
        let mut now = Instant::now();
        for _ in 0..5 {
            s.link_down(peer(), now, &mut rng);
            attempt_opens(&mut s, &mut now, &mut rng);
        }
        // The peer answers: the next failure is a first one again.
        s.progress(&peer());
        s.link_down(peer(), now, &mut rng);
        assert!(attempt_opens(&mut s, &mut now, &mut rng) <= Backoff::default().base(0));

        // Or the link stays up longer than the longest interval.
        for _ in 0..5 {
            s.link_down(peer(), now, &mut rng);
            attempt_opens(&mut s, &mut now, &mut rng);
        }
        now += Backoff::default().max;
        s.link_down(peer(), now, &mut rng);
        assert_eq!(s.pending[&peer()].failures, 0);
    }

    #[test]
    fn a_link_that_breaks_before_its_attempt_reports_is_a_failure() {
        let mut s = schedule();
        let mut rng = fastrand::Rng::with_seed(3);
        let now = Instant::now();
        s.link_down(peer(), now, &mut rng);
        let due = s.next_due().unwrap();
        assert_eq!(s.due(due), [peer()]);
        s.link_down(peer(), due, &mut rng); // the new link's LinkDown overtakes the report
        let next = s.attempted(&peer(), true, due, &mut rng);
        assert!(matches!(next, Some((1, _))), "{next:?}");
        assert!(s.next_due().is_some(), "another attempt is scheduled");
    }
}
