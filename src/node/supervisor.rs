//! The reconnect supervisor of a node: when a link breaks, it retries the neighbour with
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
use crate::neighbor::NeighborEvent;

/// What the supervisor is told.
pub(crate) enum Notice {
    /// The link to this neighbour broke.
    LinkDown(NodeId),
    /// An attempt finished.
    Attempted {
        peer: NodeId,
        result: Result<(), String>,
    },
    /// The node stops.
    Stop,
}

struct Pending {
    /// Attempts failed so far.
    failures: u32,
    /// When the next attempt is due; `None` while one is running.
    due: Option<Instant>,
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
        let mut pending: HashMap<NodeId, Pending> = HashMap::new();
        loop {
            let next_due = pending.values().filter_map(|p| p.due).min();
            let notice = match next_due {
                Some(due) => self.notices.recv_deadline(due),
                None => self
                    .notices
                    .recv()
                    .map_err(|_| RecvTimeoutError::Disconnected),
            };
            match notice {
                Ok(Notice::LinkDown(peer)) => {
                    let delay = self.backoff.delay(0, &mut self.rng);
                    pending.entry(peer).or_insert(Pending {
                        failures: 0,
                        due: Some(Instant::now() + delay),
                    });
                }
                Ok(Notice::Attempted { peer, result }) => {
                    match result {
                        Ok(()) => {
                            pending.remove(&peer);
                        }
                        Err(error) => {
                            if let Some(p) = pending.get_mut(&peer) {
                                p.failures += 1;
                                let retry_in = self.backoff.delay(p.failures, &mut self.rng);
                                p.due = Some(Instant::now() + retry_in);
                                debug!("{}: reconnect to {peer} failed ({error}); retry in {retry_in:?}", self.links.id);
                                self.links.emit(NeighborEvent::Reconnecting {
                                    peer,
                                    attempt: p.failures,
                                    retry_in,
                                    error,
                                });
                            }
                        }
                    }
                }
                Ok(Notice::Stop) | Err(RecvTimeoutError::Disconnected) => return,
                Err(RecvTimeoutError::Timeout) => {}
            }
            let now = Instant::now();
            let due: Vec<NodeId> = pending
                .iter()
                .filter(|(_, p)| p.due.is_some_and(|t| t <= now))
                .map(|(peer, _)| peer.clone())
                .collect();
            for peer in due {
                let endpoint = match self.links.neighbors.lookup(peer.as_str()) {
                    Some((_, info)) if !self.links.is_linked(&peer) => info.endpoint,
                    // Removed by the application, or already reconnected by it.
                    _ => {
                        pending.remove(&peer);
                        continue;
                    }
                };
                if let Some(p) = pending.get_mut(&peer) {
                    p.due = None;
                }
                self.attempt(peer, endpoint);
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
