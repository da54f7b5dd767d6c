//! The manager thread: reads its inbox, hands each input to the [`NodeCore`] with the time,
//! and carries out what the core decides (frames to writer threads, deliveries, completions,
//! notices to the supervisor) through its [`World`]. It never blocks on anything but its
//! inbox, so no reader, writer or application thread can wedge it.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use crossbeam_channel::{Receiver, Select, Sender, TryRecvError, TrySendError};

use super::core::{In, Load, NodeCore, Offer, Received, World};
use super::link::Originals;
use super::members::MemberInput;
use super::supervisor::Notice;
use crate::broadcast::{BroadcastCompletion, BroadcastId};
use crate::error::Error;
use crate::id::NodeId;
use crate::manager::{Event, StreamId, StreamMap};
use crate::message::{Completion, Delivery, Receipt, Settlement};
use crate::payload::EncodedFrame;
use crate::proto::GossipACK;
use crate::transport::batch::{pack, Batchable};
use crate::transport::frame::OutFrame;
use crate::transport::lane::Lane;
use crate::transport::threads::ReadGate;
use crate::transport::{EventSink, Outbox, StreamEvent, Writer};

/// What the manager thread's inbox carries.
pub(crate) enum Input {
    /// An event for the state machine.
    Event(Event),
    /// What the transport reports of a stream.
    Stream(StreamEvent),
    /// The application starts a broadcast.
    Broadcast {
        hash: String,
        payload: Bytes,
        /// The payload's encoded tail, from a `SharedPayload`.
        tail: Option<EncodedFrame>,
        reply: Sender<Result<BroadcastId, Error>>,
    },
    /// The membership thread sends a frame to a member.
    Membership { peer: NodeId, payload: Bytes },
    /// Whether the link to a member is an extra one (see `core::In::Extra`).
    Extra { peer: NodeId, extra: bool },
    /// Stop: fail what is in flight, close every writer, exit.
    Shutdown,
}

/// The transport's threads report into the manager thread's inbox.
impl EventSink for Sender<Input> {
    fn report(&self, event: StreamEvent) -> bool {
        self.send(Input::Stream(event)).is_ok()
    }
}

/// The manager thread: moves inputs into the [`NodeCore`] and what it decides out to the
/// writers, the application and the supervisor.
pub(crate) struct Driver {
    core: NodeCore,
    inbox: Receiver<Input>,
    /// Where the application's answers to deliveries arrive.
    settlements: Receiver<Settlement>,
    tick: Duration,
    io: Io,
}

/// The world as the core sees it (see [`World`]): writer queues, the application's channels,
/// the supervisor and the read gate.
pub(crate) struct Io {
    pub(crate) writers: StreamMap<Writer>,
    /// Frames produced during the current wake-up, per stream and lane, in order; handed over
    /// at its end, packed where the peer understands batches.
    pub(crate) pending_messages: StreamMap<ByLane<OutFrame>>,
    pub(crate) pending_acks: StreamMap<Vec<GossipACK>>,
    /// Bytes of frames packed into one gRPC message for peers that understand batches.
    pub(crate) batch_budget: usize,
    pub(crate) completions: Sender<Completion>,
    pub(crate) broadcast_completions: Sender<BroadcastCompletion>,
    /// `None`: deliveries are discarded (`Deliveries::Discard`).
    pub(crate) deliveries: Option<Sender<Delivery>>,
    /// Where receipts send the application's answers.
    pub(crate) settlement_tx: Sender<Settlement>,
    pub(crate) gate: Arc<ReadGate>,
    pub(crate) supervisor: Sender<Notice>,
    /// Neighbours known to be original nodes, shared with the threads that dial links.
    pub(crate) originals: Arc<Originals>,
    /// The membership thread's inbox, when the node runs membership.
    pub(crate) members: Option<Sender<MemberInput>>,
}

/// A stream's frames of one wake-up, kept apart by lane so that each lane is packed on its own.
pub(crate) struct ByLane<T> {
    priority: Vec<T>,
    bulk: Vec<T>,
}

impl<T> Default for ByLane<T> {
    fn default() -> Self {
        ByLane {
            priority: Vec::new(),
            bulk: Vec::new(),
        }
    }
}

impl<T> ByLane<T> {
    fn len(&self) -> usize {
        self.priority.len() + self.bulk.len()
    }
}

/// Inputs handled per wake-up before checking timers, so a flood cannot starve TTL checks.
const BATCH: usize = 256;

/// What woke the manager thread.
enum Wake {
    /// Inputs are waiting (or the inbox closed).
    Inputs,
    /// The application answered a delivery.
    Settlement,
    /// The application's delivery queue has room for the first held delivery.
    Room,
    /// Nothing came before the next timer.
    Timer,
}

impl Driver {
    /// A manager thread's work, not started yet.
    pub(crate) fn new(
        core: NodeCore,
        inbox: Receiver<Input>,
        settlements: Receiver<Settlement>,
        tick: Duration,
        io: Io,
    ) -> Driver {
        Driver {
            core,
            inbox,
            settlements,
            tick,
            io,
        }
    }

    /// Runs until shutdown; returns the inbox, since stream threads that were starting may
    /// still send to it (see `Node::shutdown`).
    pub(crate) fn run(mut self) -> Receiver<Input> {
        let mut next_tick = Instant::now() + self.tick;
        'run: loop {
            let wait = next_tick.saturating_duration_since(Instant::now());
            match self.wait(wait) {
                Wake::Inputs => {
                    for _ in 0..BATCH {
                        match self.inbox.try_recv() {
                            Ok(input) => {
                                if !self.accept(input) {
                                    break 'run;
                                }
                            }
                            Err(TryRecvError::Empty) => break,
                            Err(TryRecvError::Disconnected) => break 'run,
                        }
                    }
                }
                Wake::Room => self.core.handle(In::Room, Instant::now(), &mut self.io),
                // Answers are taken below; the timer is checked below.
                Wake::Settlement | Wake::Timer => {}
            }
            // Answers are few (at most `confirm_limit` outstanding) and cheap: take them all.
            while let Ok(settled) = self.settlements.try_recv() {
                self.core
                    .handle(In::Settled(settled), Instant::now(), &mut self.io);
            }
            let now = Instant::now();
            if now >= next_tick {
                self.core.handle(In::Tick, now, &mut self.io);
                next_tick = now + self.tick;
            }
            self.io.flush(&self.core);
        }
        self.core.handle(In::Shutdown, Instant::now(), &mut self.io);
        // What this last wake-up queued (a leaving node's goodbyes come just before the
        // shutdown, often in the same wake-up) goes to the writers, which write all they hold
        // before they end.
        self.io.flush(&self.core);
        // Dropping the writers' channels ends every writer thread, which closes its call.
        self.io.writers.clear();
        self.io.gate.release();
        self.inbox
    }

    /// Sleeps until an input, an answer from the application, room for a held delivery, or
    /// `timeout`. Nothing polls: a full delivery queue is waited on like any channel.
    fn wait(&self, timeout: Duration) -> Wake {
        let mut select = Select::new();
        let inputs = select.recv(&self.inbox);
        let settlements = select.recv(&self.settlements);
        let room = match &self.io.deliveries {
            Some(tx) if self.core.waits_for_room() => Some(select.send(tx)),
            _ => None,
        };
        match select.ready_timeout(timeout) {
            Ok(i) if i == inputs => Wake::Inputs,
            Ok(i) if i == settlements => Wake::Settlement,
            Ok(i) if Some(i) == room => Wake::Room,
            _ => Wake::Timer,
        }
    }

    /// Hands one input to the core; false when the node must stop.
    fn accept(&mut self, input: Input) -> bool {
        let now = Instant::now();
        let input = match input {
            Input::Event(event) => In::Event(event),
            Input::Stream(StreamEvent::Opened {
                stream,
                peer,
                kind,
                writer,
                features,
            }) => {
                let writes = writer.is_some();
                if let Some(w) = writer {
                    self.io.writers.insert(stream, w);
                }
                In::Opened {
                    stream,
                    peer,
                    kind,
                    writes,
                    features,
                }
            }
            Input::Stream(StreamEvent::Message {
                stream,
                message,
                tail,
            }) => In::Frame {
                stream,
                frame: Received::message(stream, message, tail),
            },
            Input::Stream(StreamEvent::Ack { stream, ack }) => In::Frame {
                stream,
                frame: Received::ack(stream, ack),
            },
            Input::Stream(StreamEvent::Closed { stream, reason }) => In::Closed { stream, reason },
            Input::Broadcast {
                hash,
                payload,
                tail,
                reply,
            } => {
                let result = self
                    .core
                    .start_broadcast(hash, payload, tail, now, &mut self.io);
                let _ = reply.send(result);
                return true;
            }
            Input::Membership { peer, payload } => In::Membership { peer, payload },
            Input::Extra { peer, extra } => In::Extra { peer, extra },
            Input::Shutdown => return false,
        };
        self.core.handle(input, now, &mut self.io);
        true
    }
}

impl Io {
    /// Hands this wake-up's frames to the writers: packed for peers that understand batches,
    /// one by one for the others.
    fn flush(&mut self, core: &NodeCore) {
        let budget = self.batch_budget;
        // Drained, not taken: the maps keep their room for the next wake-up.
        for (stream, frames) in self.pending_messages.drain() {
            if let Some(Writer::Messages(tx)) = self.writers.get(&stream) {
                let budget = core.batches(stream).then_some(budget);
                hand_over(tx, frames.priority, Lane::Priority, budget);
                hand_over(tx, frames.bulk, Lane::Bulk, budget);
            }
        }
        for (stream, frames) in self.pending_acks.drain() {
            if let Some(Writer::Acks(tx)) = self.writers.get(&stream) {
                let budget = core.batches(stream).then_some(budget);
                hand_over(tx, frames, Lane::Bulk, budget);
            }
        }
    }
}

impl World for Io {
    fn send_message(&mut self, stream: StreamId, frame: OutFrame, lane: Lane) {
        let queued = self.pending_messages.entry(stream).or_default();
        match lane {
            Lane::Priority => queued.priority.push(frame),
            Lane::Bulk => queued.bulk.push(frame),
        }
    }

    fn send_ack(&mut self, stream: StreamId, ack: GossipACK) {
        self.pending_acks.entry(stream).or_default().push(ack);
    }

    fn load(&self, stream: StreamId, now: Instant) -> Option<Load> {
        let (backlog, pending) = match self.writers.get(&stream)? {
            Writer::Messages(tx) => (
                tx.backlog(),
                self.pending_messages.get(&stream).map(ByLane::len),
            ),
            Writer::Acks(tx) => (tx.backlog(), self.pending_acks.get(&stream).map(Vec::len)),
        };
        Some(Load {
            queued: backlog.frames(),
            bytes: backlog.bytes(),
            pending: pending.unwrap_or(0),
            stuck_for: backlog.stuck_for(now),
            idle_for: backlog.idle_for(now),
        })
    }

    fn close(&mut self, stream: StreamId) {
        self.writers.remove(&stream);
        self.pending_messages.remove(&stream);
        self.pending_acks.remove(&stream);
    }

    fn deliver(&mut self, delivery: Delivery, confirm: bool) -> Offer {
        let Some(tx) = &self.deliveries else {
            return Offer::Closed;
        };
        let delivery = match confirm {
            true => {
                let receipt = Receipt::new(
                    self.settlement_tx.clone(),
                    delivery.from.clone(),
                    delivery.hash.clone(),
                );
                delivery.with_receipt(receipt)
            }
            false => delivery,
        };
        match tx.try_send(delivery) {
            Ok(()) => Offer::Taken,
            Err(TrySendError::Full(mut d)) => {
                // Not handed over: no answer is owed yet.
                d.forget_receipt();
                Offer::Full(d)
            }
            Err(TrySendError::Disconnected(mut d)) => {
                d.forget_receipt();
                Offer::Closed
            }
        }
    }

    fn set_read_gate(&mut self, open: bool) {
        self.gate.set_open(open);
    }

    fn complete(&mut self, completion: Completion) {
        // The node keeps a receiver, so this cannot fail while the node exists.
        let _ = self.completions.send(completion);
    }

    fn complete_broadcast(&mut self, completion: BroadcastCompletion) {
        let _ = self.broadcast_completions.send(completion);
    }

    fn notify(&mut self, notice: Notice) {
        let _ = self.supervisor.send(notice);
    }

    fn set_original(&mut self, peer: &NodeId, original: bool) {
        self.originals.set(peer, original);
    }

    fn membership(&mut self, from: NodeId, payload: Bytes) {
        if let Some(tx) = &self.members {
            // Never waits: a membership thread that falls behind loses frames, which the
            // protocol repairs, rather than stalling every link.
            let _ = tx.try_send(MemberInput::Frame { from, payload });
        }
    }
}

/// Sends `frames` to a writer's `lane`: packed into gRPC messages of at most `batch_budget`
/// bytes when given (the peer understands batches), one by one otherwise.
fn hand_over<T: Batchable>(
    tx: &Outbox<T>,
    frames: Vec<T>,
    lane: Lane,
    batch_budget: Option<usize>,
) {
    // A closed writer means its stream is ending; what it carried is retransmitted or counted.
    match batch_budget {
        Some(budget) => pack(frames, budget, |f| {
            tx.send(f, lane);
        }),
        None => frames.into_iter().for_each(|f| {
            tx.send(f, lane);
        }),
    }
}
