//! The message-manager thread: owns the [`MessageManager`], reads its inbox, and carries out the
//! actions (frames to writer threads, deliveries, completions). It never blocks on anything but
//! its inbox, so no reader, writer or application thread can wedge it.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender, TrySendError};
use log::warn;

use super::link::Links;
use super::supervisor::Notice;
use crate::id::NodeId;
use crate::manager::{Action, Event, MessageManager, StreamId, StreamKind, WireAck};
use crate::message::{Completion, Delivery};
use crate::proto::{GossipACK, GossipMessage};
use crate::stats::{bump, Counters};
use crate::transport::batch::pack;
use crate::transport::threads::ReadGate;
use crate::transport::Writer;

/// What the manager thread's inbox carries.
pub(crate) enum Input {
    /// An event for the state machine.
    Event(Event),
    /// A stream is up: remember its writer, then tell the state machine.
    Open {
        stream: StreamId,
        peer: NodeId,
        kind: StreamKind,
        writer: Option<Writer>,
        /// The peer listed the `batch` feature when it opened this stream (inbound only).
        batch: bool,
    },
    /// Stop: fail what is in flight, close every writer, exit.
    Shutdown,
}

/// Deliveries and ACKs held back, in order, while the application's delivery queue is full.
pub(crate) enum Held {
    Deliver(Delivery),
    Ack { stream: StreamId, ack: WireAck },
}

/// Everything the manager thread owns.
pub(crate) struct Driver {
    pub(crate) manager: MessageManager,
    pub(crate) inbox: Receiver<Input>,
    pub(crate) completions: Sender<Completion>,
    /// `None`: deliveries are discarded (`Deliveries::Discard`).
    pub(crate) deliveries: Option<Sender<Delivery>>,
    pub(crate) gate: Arc<ReadGate>,
    pub(crate) links: Arc<Links>,
    pub(crate) supervisor: Sender<Notice>,
    pub(crate) tick: Duration,
    pub(crate) max_queued_acks: usize,
    pub(crate) counters: Arc<Counters>,
    pub(crate) writers: HashMap<StreamId, Writer>,
    pub(crate) held: VecDeque<Held>,
    pub(crate) actions: Vec<Action>,
    /// Bytes of frames packed into one gRPC message for peers that understand batches.
    pub(crate) batch_budget: usize,
    /// Whether each peer understands batches, from the streams it opened to us (latest wins).
    pub(crate) batching: HashMap<NodeId, bool>,
    /// Per writer stream: its peer, and whether the peer announced batches on this stream.
    pub(crate) stream_peers: HashMap<StreamId, (NodeId, bool)>,
    /// Frames produced during the current wake-up, per stream, in order; sent at its end.
    pub(crate) pending_messages: HashMap<StreamId, Vec<GossipMessage>>,
    pub(crate) pending_acks: HashMap<StreamId, Vec<GossipACK>>,
}

/// Inputs handled per wake-up before checking timers, so a flood cannot starve TTL checks.
const BATCH: usize = 256;
/// How often held deliveries are retried while the application's queue is full.
const HELD_RETRY: Duration = Duration::from_millis(1);

impl Driver {
    pub(crate) fn run(mut self) {
        let mut next_tick = Instant::now() + self.tick;
        'run: loop {
            let mut wait = next_tick.saturating_duration_since(Instant::now());
            if !self.held.is_empty() {
                wait = wait.min(HELD_RETRY);
            }
            match self.inbox.recv_timeout(wait) {
                Ok(input) => {
                    if !self.accept(input) {
                        break 'run;
                    }
                    for _ in 1..BATCH {
                        let Ok(input) = self.inbox.try_recv() else {
                            break;
                        };
                        if !self.accept(input) {
                            break 'run;
                        }
                    }
                }
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => break 'run,
            }
            let now = Instant::now();
            if now >= next_tick {
                self.step(Event::Tick);
                next_tick = now + self.tick;
            }
            if !self.held.is_empty() {
                self.release_held();
            }
            self.flush();
        }
        self.step(Event::Shutdown);
        // Dropping the writers' channels ends every writer thread, which closes its call.
        self.writers.clear();
        self.gate.release();
    }

    /// Handles one input; false when the node must stop.
    fn accept(&mut self, input: Input) -> bool {
        match input {
            Input::Event(event) => {
                if let Event::StreamClosed { stream, .. } = &event {
                    // Its writer has nothing left to do; dropping the queue ends it.
                    self.forget_writer(*stream);
                }
                self.step(event)
            }
            Input::Open {
                stream,
                peer,
                kind,
                writer,
                batch,
            } => {
                if matches!(
                    kind,
                    StreamKind::InboundMessages
                        | StreamKind::InboundAcks
                        | StreamKind::InboundSingle
                ) {
                    self.batching.insert(peer.clone(), batch);
                }
                if let Some(w) = writer {
                    self.writers.insert(stream, w);
                    self.stream_peers.insert(stream, (peer.clone(), batch));
                }
                self.step(Event::StreamOpened { stream, peer, kind });
            }
            Input::Shutdown => return false,
        }
        true
    }

    fn step(&mut self, event: Event) {
        let mut actions = std::mem::take(&mut self.actions);
        self.manager.handle(event, Instant::now(), &mut actions);
        for action in actions.drain(..) {
            self.execute(action);
        }
        self.actions = actions;
    }

    fn execute(&mut self, action: Action) {
        match action {
            Action::Transmit { stream, message } => {
                // A missing writer means its stream is closing; the message stays outstanding
                // in the manager and goes out again on the next link.
                if self.writers.contains_key(&stream) {
                    self.pending_messages
                        .entry(stream)
                        .or_default()
                        .push(message.into());
                }
            }
            Action::SendAck { stream, ack } => {
                if self.held.is_empty() {
                    self.send_ack(stream, ack);
                } else {
                    self.held.push_back(Held::Ack { stream, ack });
                }
            }
            Action::Deliver(delivery) => {
                if self.deliveries.is_some() {
                    if self.held.is_empty() {
                        self.deliver(delivery);
                    } else {
                        self.held.push_back(Held::Deliver(delivery));
                    }
                }
            }
            Action::Complete(completion) => {
                // The node keeps a receiver, so this cannot fail while the node exists.
                let _ = self.completions.send(completion);
            }
            Action::CloseStream(stream) => self.forget_writer(stream),
            Action::LinkDown {
                peer,
                stream,
                reason,
            } => {
                if self.links.link_down(&peer, stream, &reason) {
                    let _ = self.supervisor.send(Notice::LinkDown(peer));
                }
            }
        }
    }

    fn send_ack(&mut self, stream: StreamId, ack: WireAck) {
        let Some(Writer::Acks(tx)) = self.writers.get(&stream) else {
            return;
        };
        let pending = self.pending_acks.entry(stream).or_default();
        if tx.len() + pending.len() >= self.max_queued_acks {
            // The peer is not reading its ACKs; it will retransmit and be ACKed again.
            bump(&self.counters.acks_dropped);
            if tx.len() + pending.len() == self.max_queued_acks {
                warn!("ACK queue of stream {stream:?} is full; dropping ACKs");
            }
            return;
        }
        pending.push(ack.into());
    }

    fn forget_writer(&mut self, stream: StreamId) {
        self.writers.remove(&stream);
        self.stream_peers.remove(&stream);
        self.pending_messages.remove(&stream);
        self.pending_acks.remove(&stream);
    }

    /// Whether frames for `stream` may be packed: its peer understands batches.
    fn batches(&self, stream: StreamId) -> bool {
        self.stream_peers
            .get(&stream)
            .is_some_and(|(peer, announced)| {
                *announced || self.batching.get(peer).copied().unwrap_or(false)
            })
    }

    /// Hands this wake-up's frames to the writers: packed for peers that understand batches,
    /// one by one for the others.
    fn flush(&mut self) {
        let budget = self.batch_budget;
        for (stream, frames) in std::mem::take(&mut self.pending_messages) {
            let batches = self.batches(stream);
            if let Some(Writer::Messages(tx)) = self.writers.get(&stream) {
                if batches {
                    pack(frames, budget, |f| drop(tx.send(f)));
                } else {
                    frames.into_iter().for_each(|f| drop(tx.send(f)));
                }
            }
        }
        for (stream, frames) in std::mem::take(&mut self.pending_acks) {
            let batches = self.batches(stream);
            if let Some(Writer::Acks(tx)) = self.writers.get(&stream) {
                if batches {
                    pack(frames, budget, |f| drop(tx.send(f)));
                } else {
                    frames.into_iter().for_each(|f| drop(tx.send(f)));
                }
            }
        }
    }

    /// Hands a delivery to the application, or holds it (and closes the read gate) if the
    /// application's queue is full.
    fn deliver(&mut self, delivery: Delivery) {
        let Some(tx) = &self.deliveries else { return };
        match tx.try_send(delivery) {
            Ok(()) => {}
            Err(TrySendError::Full(d)) => {
                self.held.push_back(Held::Deliver(d));
                self.gate.set_open(false);
            }
            Err(TrySendError::Disconnected(_)) => {
                warn!("delivery queue closed; message dropped");
            }
        }
    }

    fn release_held(&mut self) {
        while let Some(held) = self.held.pop_front() {
            match held {
                Held::Ack { stream, ack } => self.send_ack(stream, ack),
                Held::Deliver(d) => {
                    let Some(tx) = &self.deliveries else { continue };
                    if let Err(TrySendError::Full(d)) = tx.try_send(d) {
                        self.held.push_front(Held::Deliver(d));
                        return;
                    }
                }
            }
        }
        self.gate.set_open(true);
    }
}
