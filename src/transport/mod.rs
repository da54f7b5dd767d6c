//! The gRPC side of a node, kept thin: it opens and accepts streams, reads and writes frames,
//! and reports what happens on each stream as a `StreamEvent` to an `EventSink`. It knows
//! nothing of the node: what a frame means, and where it goes, is decided above it.
//!
//! Per stream there is one blocking **reader thread** (`futures::executor::block_on` on the
//! grpcio stream) and, where we write, one **writer thread** fed by a crossbeam channel. Both
//! report to the sink; the node's sink is its manager thread's inbox.

pub(crate) mod backend;
pub(crate) mod batch;
pub mod factory;
pub(crate) mod frame;
pub(crate) mod inbound;
pub(crate) mod lane;
pub mod memory;
pub(crate) mod server;
pub(crate) mod threads;
pub mod tls;
pub(crate) mod wire;

use crossbeam_channel::{Receiver, Sender};
use futures::executor::block_on;
use futures::{Sink, SinkExt, Stream, StreamExt};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use grpcio::{ClientDuplexSender, DuplexSink, RpcStatus, WriteFlags};

use crate::id::NodeId;
use crate::id::{validate_id, IdKind};
use crate::limits::Limits;
use crate::manager::{StreamId, StreamKind};
use crate::proto::{self, GossipACK, GossipMessage};
use lane::{Lane, Lanes};
use threads::ReadGate;

/// Request metadata header in which our nodes send their id when they open a stream.
pub const NODE_ID_HEADER: &str = "gossip-node-id";

/// Request metadata header in which our nodes name the node they mean to reach when they open
/// a stream; a node of ours with another id refuses the stream (`FAILED_PRECONDITION`, saying
/// its own id), so that a wrong address never delivers messages to the wrong node. Original
/// nodes ignore it.
pub const EXPECTED_ID_HEADER: &str = "gossip-expect-id";

/// Request metadata header in which our nodes list the protocol extensions they understand
/// (comma-separated). Extensions an original node would misread are only sent to peers that
/// listed them.
pub const FEATURES_HEADER: &str = "gossip-features";

/// Feature: several messages (or ACKs) in one gRPC message, in the `batch` fields.
pub const FEATURE_BATCH: &str = "batch";

/// Feature: multi-hop broadcast frames (kinds BROADCAST, IHAVE, GRAFT and broadcast ACKs).
pub const FEATURE_BROADCAST: &str = "broadcast";

/// Feature: messages split into chunks (`total_bytes` / `offset`).
pub const FEATURE_CHUNK: &str = "chunk";

/// Feature: the ACK statuses `ACK_PENDING` and `ACK_RETRY` (acknowledged deliveries: "the
/// application has not confirmed it yet" and "not taken, send it again later").
pub const FEATURE_CONFIRM: &str = "confirm";

/// Feature: the sender may put small frames ahead of bulk payloads queued before them (the
/// priority lane, see `NodeConfig::lane_max_bytes`); order holds within each lane. Sends to a
/// peer that did not list it keep one order.
pub const FEATURE_LANE: &str = "lane";
/// Feature token: the peer takes membership frames (`FrameKind::MEMBERSHIP`: partial views and
/// the member list, see [`crate::membership`]).
pub const FEATURE_MEMBERSHIP: &str = "membership";

/// Feature: a frame's payload may come as the next gRPC message on the stream
/// (`payload_follows`), so a payload shared by many messages is encoded once
/// ([`SharedPayload`](crate::SharedPayload)).
pub const FEATURE_TAIL: &str = "tail";

/// Protocol extensions a peer understands, as listed in [`FEATURES_HEADER`] (or in the
/// `features` field of the handshake ACK our nodes answer with).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Features {
    /// [`FEATURE_BATCH`].
    pub batch: bool,
    /// [`FEATURE_BROADCAST`].
    pub broadcast: bool,
    /// [`FEATURE_CHUNK`].
    pub chunk: bool,
    /// [`FEATURE_CONFIRM`].
    pub confirm: bool,
    /// [`FEATURE_LANE`].
    pub lane: bool,
    /// [`FEATURE_MEMBERSHIP`].
    pub membership: bool,
    /// [`FEATURE_TAIL`].
    pub tail: bool,
}

impl Features {
    /// What this implementation understands.
    pub const ALL: Features = Features {
        batch: true,
        broadcast: true,
        chunk: true,
        confirm: true,
        lane: true,
        membership: true,
        tail: true,
    };

    /// Parses a comma-separated list; unknown names are ignored.
    pub fn parse(list: &str) -> Features {
        let mut f = Features::default();
        for name in list.split(',').map(str::trim) {
            match name {
                FEATURE_BATCH => f.batch = true,
                FEATURE_BROADCAST => f.broadcast = true,
                FEATURE_CHUNK => f.chunk = true,
                FEATURE_CONFIRM => f.confirm = true,
                FEATURE_LANE => f.lane = true,
                FEATURE_MEMBERSHIP => f.membership = true,
                FEATURE_TAIL => f.tail = true,
                _ => {}
            }
        }
        f
    }

    /// Whether any feature is listed.
    pub fn any(self) -> bool {
        let Features {
            batch,
            broadcast,
            chunk,
            confirm,
            lane,
            membership,
            tail,
        } = self;
        batch || broadcast || chunk || confirm || lane || membership || tail
    }

    /// The comma-separated list.
    pub fn header_value(self) -> String {
        [
            (self.batch, FEATURE_BATCH),
            (self.broadcast, FEATURE_BROADCAST),
            (self.chunk, FEATURE_CHUNK),
            (self.confirm, FEATURE_CONFIRM),
            (self.lane, FEATURE_LANE),
            (self.membership, FEATURE_MEMBERSHIP),
            (self.tail, FEATURE_TAIL),
        ]
        .iter()
        .filter(|(on, _)| *on)
        .map(|(_, name)| *name)
        .collect::<Vec<_>>()
        .join(",")
    }
}

/// The sending half of a stream's writer thread.
pub(crate) enum Writer {
    /// A MessageStream writer.
    Messages(Outbox<frame::OutFrame>),
    /// An AckStream (or single-stream response) writer.
    Acks(Outbox<GossipACK>),
}

/// What waits for a writer thread: frames and bytes handed over and not yet taken by gRPC, and
/// when the writer last made progress. So the node can bound each queue and tell a peer that
/// stopped reading (its writes block on flow control) from one that is merely busy.
#[derive(Debug)]
pub(crate) struct Backlog {
    frames: AtomicUsize,
    bytes: AtomicUsize,
    /// The last write that completed, or when the queue last became non-empty.
    progress: parking_lot::Mutex<Instant>,
}

impl Backlog {
    fn new() -> Backlog {
        Backlog {
            frames: AtomicUsize::new(0),
            bytes: AtomicUsize::new(0),
            progress: parking_lot::Mutex::new(Instant::now()),
        }
    }

    /// Frames waiting.
    pub(crate) fn frames(&self) -> usize {
        self.frames.load(Ordering::Acquire)
    }

    /// Payload and id bytes waiting.
    pub(crate) fn bytes(&self) -> usize {
        self.bytes.load(Ordering::Acquire)
    }

    /// How long frames have waited without any write completing; zero when none wait.
    pub(crate) fn stuck_for(&self, now: Instant) -> Duration {
        if self.frames() == 0 {
            return Duration::ZERO;
        }
        now.saturating_duration_since(*self.progress.lock())
    }

    /// How long since the last write completed, when nothing waits (zero otherwise): whatever
    /// was written has had that long to leave for the wire.
    pub(crate) fn idle_for(&self, now: Instant) -> Duration {
        if self.frames() != 0 {
            return Duration::ZERO;
        }
        now.saturating_duration_since(*self.progress.lock())
    }

    fn added(&self, frames: usize, bytes: usize) {
        if self.frames.fetch_add(frames, Ordering::AcqRel) == 0 {
            *self.progress.lock() = Instant::now();
        }
        self.bytes.fetch_add(bytes, Ordering::AcqRel);
    }

    fn written(&self, frames: usize, bytes: usize) {
        *self.progress.lock() = Instant::now();
        self.frames.fetch_sub(frames, Ordering::AcqRel);
        self.bytes.fetch_sub(bytes, Ordering::AcqRel);
    }
}

/// The sending half of a writer's queue, counting what it hands over.
#[derive(Debug)]
pub(crate) struct Outbox<T> {
    tx: Sender<(Lane, T)>,
    backlog: Arc<Backlog>,
    /// Dropped with the outbox: tells the stream's reader to cancel the call, which also
    /// frees a writer stuck in a write that flow control holds.
    _stop_reader: Option<futures::channel::oneshot::Sender<()>>,
}

/// The receiving half, held by the writer thread.
pub(crate) struct Inbox<T> {
    rx: Receiver<(Lane, T)>,
    backlog: Arc<Backlog>,
}

/// A writer's queue: unbounded as a channel, bounded by the node through [`Backlog`].
pub(crate) fn outbox<T>() -> (Outbox<T>, Inbox<T>) {
    let (tx, rx) = crossbeam_channel::unbounded();
    let backlog = Arc::new(Backlog::new());
    (
        Outbox {
            tx,
            backlog: backlog.clone(),
            _stop_reader: None,
        },
        Inbox { rx, backlog },
    )
}

/// A writer's queue whose dropping also stops the stream's reader (see [`read_loop`]).
pub(crate) fn outbox_stopping_reader<T>() -> (Outbox<T>, Inbox<T>, ReaderStop) {
    let (mut out, inbox) = outbox();
    let (tx, rx) = futures::channel::oneshot::channel();
    out._stop_reader = Some(tx);
    (out, inbox, rx)
}

/// Resolves when the stream's outbox is dropped: the node is done with the stream.
pub(crate) type ReaderStop = futures::channel::oneshot::Receiver<()>;

impl<T: batch::Batchable> Outbox<T> {
    /// Hands a frame (with what it carries) to the writer, in `lane`; false once the writer is
    /// gone.
    pub(crate) fn send(&self, frame: T, lane: Lane) -> bool {
        let (frames, bytes) = frame.weight();
        self.backlog.added(frames, bytes);
        if self.tx.send((lane, frame)).is_err() {
            self.backlog.written(frames, bytes);
            return false;
        }
        true
    }

    /// What waits in this queue.
    pub(crate) fn backlog(&self) -> &Backlog {
        &self.backlog
    }
}

/// What happens on a stream, as the transport reports it.
pub(crate) enum StreamEvent {
    /// A stream is up; `writer` is its queue where we write on it.
    Opened {
        stream: StreamId,
        peer: NodeId,
        kind: StreamKind,
        writer: Option<Writer>,
        /// The features the peer listed when it opened this stream (inbound only).
        features: Features,
    },
    /// A message frame arrived (one item: a batch is reported item by item, in order).
    Message {
        stream: StreamId,
        message: GossipMessage,
        /// Its payload's buffer, framed as a tail, where it was read into one (see
        /// [`inbound`]): what a relay sends on.
        tail: Option<crate::payload::EncodedFrame>,
    },
    /// An ACK frame arrived (one item, as for messages).
    Ack { stream: StreamId, ack: GossipACK },
    /// The stream ended, or could not be started, for `reason`.
    Closed { stream: StreamId, reason: String },
}

/// Where the transport reports its [`StreamEvent`]s, from any of its threads.
pub(crate) trait EventSink: Send + Sync {
    /// Hands `event` on; false once nobody listens (the node has stopped), which ends the
    /// reporting thread's stream.
    fn report(&self, event: StreamEvent) -> bool;
}

/// A sink shared by the transport's threads.
pub(crate) type Events = Arc<dyn EventSink>;

/// A frame that can arrive on a stream.
pub(crate) trait InboundFrame: Send + 'static {
    /// The `from_hash` it carries.
    fn sender(&self) -> &str;
    /// The frames carried in its `batch` field (taken out, in order). Batches do not nest:
    /// what an item carries in its own `batch` field is dropped.
    fn take_batch(&mut self) -> Vec<Self>
    where
        Self: Sized;
    /// The event that reports it, arrived on `stream`.
    fn into_stream_event(self, stream: StreamId) -> StreamEvent;
    /// Why this frame (or one it carries) cannot be answered at all, if so: a payload without
    /// a valid hash has nothing an ACK could name.
    fn unanswerable(&self, limits: &Limits) -> Option<String>;
    /// Whether its payload comes as the next gRPC message on the stream (`payload_follows`);
    /// an error where a frame says so that cannot (it has a payload, a batch or a chunk of its
    /// own, or is batched).
    fn wants_tail(&self) -> Result<bool, String> {
        Ok(false)
    }
    /// Takes the payload of `tail`, the gRPC message after it; why not, if `tail` holds more
    /// than a payload.
    fn join_tail(&mut self, tail: Self) -> Result<(), String>
    where
        Self: Sized,
    {
        drop(tail);
        Err("this stream carries no payloads".into())
    }
}

/// Reports a received frame, and the frames batched in it, in order; false once the sink no
/// longer listens.
pub(crate) fn forward<T: InboundFrame>(mut frame: T, id: StreamId, events: &dyn EventSink) -> bool {
    let rest = frame.take_batch();
    if !events.report(frame.into_stream_event(id)) {
        return false;
    }
    for mut item in rest {
        drop(item.take_batch());
        if !events.report(item.into_stream_event(id)) {
            return false;
        }
    }
    true
}

impl InboundFrame for GossipMessage {
    fn sender(&self) -> &str {
        &self.from_hash
    }

    fn unanswerable(&self, limits: &Limits) -> Option<String> {
        std::iter::once(self)
            .chain(self.batch.iter())
            .filter(|m| m.kind == proto::FrameKind::DIRECT)
            .find_map(|m| validate_id(IdKind::Message, &m.hash, limits).err())
            .map(|e| format!("a message frame whose hash cannot be acknowledged: {e}"))
    }

    fn take_batch(&mut self) -> Vec<Self> {
        GossipMessage::take_batch(self).into_vec()
    }

    fn wants_tail(&self) -> Result<bool, String> {
        if self.batch.iter().any(|m| m.payload_follows) {
            return Err("a batched frame says its payload follows".into());
        }
        let alone = self.payload.is_empty() && self.batch.is_empty() && self.total_bytes == 0;
        match (self.payload_follows, alone) {
            (true, false) => Err("a frame says its payload follows, but it has a payload, a \
                 batch or a chunk of its own"
                .into()),
            (follows, _) => Ok(follows),
        }
    }

    fn join_tail(&mut self, mut tail: Self) -> Result<(), String> {
        let payload = std::mem::take(&mut tail.payload);
        tail.padding = bytes::Bytes::new();
        if protobuf::Message::compute_size(&tail) != 0 {
            return Err(
                "the frame after a header that says its payload follows holds more \
                 than a payload"
                    .into(),
            );
        }
        self.payload = payload;
        self.payload_follows = false;
        Ok(())
    }

    fn into_stream_event(self, stream: StreamId) -> StreamEvent {
        StreamEvent::Message {
            stream,
            message: self,
            tail: None,
        }
    }
}

impl InboundFrame for inbound::InMessage {
    fn sender(&self) -> &str {
        &self.message.from_hash
    }

    fn unanswerable(&self, limits: &Limits) -> Option<String> {
        self.message.unanswerable(limits)
    }

    fn take_batch(&mut self) -> Vec<Self> {
        let items = GossipMessage::take_batch(&mut self.message).into_vec();
        items.into_iter().map(inbound::InMessage::from).collect()
    }

    fn wants_tail(&self) -> Result<bool, String> {
        self.message.wants_tail()
    }

    fn join_tail(&mut self, tail: Self) -> Result<(), String> {
        self.message.join_tail(tail.message)?;
        self.tail = tail.tail;
        Ok(())
    }

    fn into_stream_event(self, stream: StreamId) -> StreamEvent {
        StreamEvent::Message {
            stream,
            message: self.message,
            tail: self.tail,
        }
    }
}

impl InboundFrame for GossipACK {
    fn sender(&self) -> &str {
        &self.from_hash
    }

    fn unanswerable(&self, _: &Limits) -> Option<String> {
        None // an ACK answers; a bad one is counted and ignored by the manager
    }

    fn take_batch(&mut self) -> Vec<Self> {
        GossipACK::take_batch(self).into_vec()
    }

    fn into_stream_event(self, stream: StreamId) -> StreamEvent {
        StreamEvent::Ack { stream, ack: self }
    }
}

/// The reason of a stream whose peer ended it (or, on a server stream, whose call gRPC ended
/// under us just before; see [`StreamEnd::cancelled`]).
pub(crate) const CLOSED_BY_PEER: &str = "closed by peer";

/// Why a stream's reader stopped.
pub(crate) struct StreamEnd {
    /// For logs and the manager.
    pub(crate) reason: String,
    /// The peer sent bytes that are not a valid frame.
    pub(crate) malformed: bool,
    /// The call was over before its stream ended (grpcio's `RpcFinished` without a status).
    /// On a server stream that means it was cancelled under us: by the peer, by its
    /// connection dropping, or by gRPC refusing a message over the server's receive limit,
    /// which never reaches us as a frame.
    pub(crate) cancelled: bool,
}

impl StreamEnd {
    pub(crate) fn from_error(e: grpcio::Error) -> StreamEnd {
        let malformed = matches!(e, grpcio::Error::Codec(_));
        StreamEnd {
            reason: if malformed {
                format!("malformed frame: {e}")
            } else {
                describe(&e)
            },
            malformed,
            cancelled: matches!(e, grpcio::Error::RpcFinished(None)),
        }
    }

    pub(crate) fn closed(reason: &str) -> StreamEnd {
        StreamEnd {
            reason: reason.to_owned(),
            malformed: false,
            cancelled: false,
        }
    }

    /// A frame that cannot be answered ended the call.
    pub(crate) fn malformed(reason: String) -> StreamEnd {
        StreamEnd {
            reason,
            malformed: true,
            cancelled: false,
        }
    }
}

/// Reads frames until the stream ends, reporting each to `events`. Waits at `gate` (if any)
/// before each read. Returns why the stream ended.
///
/// With `strict` (a peer that announced our features), a frame that cannot be answered ends the
/// call as malformed (`INVALID_ARGUMENT` with the reason) instead of vanishing without an
/// answer; an original node, which never reopens a closed stream, gets it refused alone by the
/// manager.
///
/// With `stop`, the loop also ends (as "closed by this node") once the node drops the stream's
/// outbox, so that the caller can cancel the call.
pub(crate) fn read_loop<S, T>(
    stream: &mut S,
    id: StreamId,
    events: &dyn EventSink,
    gate: Option<&ReadGate>,
    strict: Option<&Limits>,
    stop: Option<&mut ReaderStop>,
) -> StreamEnd
where
    S: Stream<Item = grpcio::Result<T>> + Unpin,
    T: InboundFrame,
{
    block_on(read_frames(stream, id, events, gate, strict, stop))
}

/// [`read_loop`] as a future, so that one thread can read several streams (the two of an
/// outbound link, see [`read_link`]). A closed `gate` blocks the thread, so several streams
/// share a thread only without one.
pub(crate) async fn read_frames<S, T>(
    stream: &mut S,
    id: StreamId,
    events: &dyn EventSink,
    gate: Option<&ReadGate>,
    strict: Option<&Limits>,
    mut stop: Option<&mut ReaderStop>,
) -> StreamEnd
where
    S: Stream<Item = grpcio::Result<T>> + Unpin,
    T: InboundFrame,
{
    let stopped = || StreamEnd::closed("closed by this node");
    loop {
        if let Some(g) = gate {
            g.wait_open();
        }
        let Some(next) = next_unless_stopped(stream, stop.as_deref_mut()).await else {
            return stopped();
        };
        match next {
            Some(Ok(mut frame)) => {
                // A header whose payload follows is read together with it: the manager gets
                // whole frames, and a tail cannot be taken for a frame of its own.
                match frame.wants_tail() {
                    Err(reason) => return StreamEnd::malformed(reason),
                    Ok(false) => {}
                    Ok(true) => match next_unless_stopped(stream, stop.as_deref_mut()).await {
                        None => return stopped(),
                        Some(Some(Ok(tail))) => {
                            if let Err(reason) = frame.join_tail(tail) {
                                return StreamEnd::malformed(reason);
                            }
                        }
                        Some(Some(Err(e))) => return StreamEnd::from_error(e),
                        Some(None) => return StreamEnd::closed(CLOSED_BY_PEER),
                    },
                }
                if let Some(reason) = strict.and_then(|limits| frame.unanswerable(limits)) {
                    return StreamEnd::malformed(reason);
                }
                if !forward(frame, id, events) {
                    return StreamEnd::closed("node stopped");
                }
            }
            Some(Err(e)) => return StreamEnd::from_error(e),
            None => return StreamEnd::closed(CLOSED_BY_PEER),
        }
    }
}

/// The stream's next item, or `None` once `stop` (if any) resolves first.
async fn next_unless_stopped<S: Stream + Unpin>(
    stream: &mut S,
    stop: Option<&mut ReaderStop>,
) -> Option<Option<S::Item>> {
    match stop {
        Some(stop) => match futures::future::select(stream.next(), stop).await {
            futures::future::Either::Left((next, _)) => Some(next),
            futures::future::Either::Right(_) => None,
        },
        None => Some(stream.next().await),
    }
}

/// One end of an outbound link for [`read_link`]: the call's incoming half, what stops it
/// (the outbox being dropped) and its id.
pub(crate) type LinkEnd<T> = (OutboundStream<T>, ReaderStop, StreamId);

/// Reads both streams of an outbound link on the calling thread, until both have ended: each
/// one's end is reported (as `Closed`) and its call cancelled as soon as it ends, whatever
/// the other does. One thread per link instead of one per stream: the server never writes on
/// our MessageStream, so its reading is mostly waiting for the end.
pub(crate) fn read_link(
    messages: LinkEnd<GossipMessage>,
    acks: LinkEnd<GossipACK>,
    events: &dyn EventSink,
) {
    block_on(futures::future::join(
        read_outbound(messages, events),
        read_outbound(acks, events),
    ));
}

async fn read_outbound<T>(end: LinkEnd<T>, events: &dyn EventSink)
where
    T: InboundFrame + protobuf::Message,
{
    let (mut stream, mut stop, id) = end;
    let end = read_frames(&mut stream, id, events, None, None, Some(&mut stop)).await;
    stream.cancel();
    events.report(StreamEvent::Closed {
        stream: id,
        reason: end.reason,
    });
}

/// The first item of `stream` within `timeout`: `None` if none came in time, `Some(None)` if
/// the stream ended first. The timer is a short-lived thread that leaves as soon as the item
/// comes.
pub(crate) fn first_within<S: Stream + Unpin>(
    stream: &mut S,
    timeout: Duration,
) -> Option<Option<S::Item>> {
    let (expired_tx, expired) = futures::channel::oneshot::channel::<()>();
    let (done, done_rx) = crossbeam_channel::bounded::<()>(0);
    let timer = std::thread::Builder::new()
        .name("gossip-timer".into())
        .spawn(move || {
            if let Err(crossbeam_channel::RecvTimeoutError::Timeout) = done_rx.recv_timeout(timeout)
            {
                let _ = expired_tx.send(());
            }
        });
    if let Err(e) = timer {
        // Waiting without a timer could wait for ever on a peer that never answers.
        log::warn!("cannot start a timer thread ({e}): not waiting");
        return None;
    }
    let first = match block_on(futures::future::select(stream.next(), expired)) {
        futures::future::Either::Left((item, _)) => Some(item),
        futures::future::Either::Right(_) => None,
    };
    drop(done);
    first
}

/// How a server stream ends: the status (when not OK) set by its reader, and a signal from the
/// writer that it has ended the call. The reader keeps the request stream alive until then,
/// because dropping it would cancel the call before the status goes out.
#[derive(Default)]
pub(crate) struct Verdict {
    status: parking_lot::Mutex<Option<RpcStatus>>,
    finished: parking_lot::Mutex<bool>,
    changed: parking_lot::Condvar,
}

impl Verdict {
    pub(crate) fn set(&self, status: Option<RpcStatus>) {
        *self.status.lock() = status;
    }

    fn take(&self) -> Option<RpcStatus> {
        self.status.lock().take()
    }

    fn finished(&self) {
        *self.finished.lock() = true;
        self.changed.notify_all();
    }

    /// Waits (at most `limit`) until the writer has ended the call.
    pub(crate) fn wait_finished(&self, limit: std::time::Duration) {
        let mut done = self.finished.lock();
        let deadline = std::time::Instant::now() + limit;
        while !*done {
            if self.changed.wait_until(&mut done, deadline).timed_out() {
                return;
            }
        }
    }
}

/// A grpcio sink we write frames to, and how to end it.
pub(crate) trait FrameSink<T>:
    Sink<(T, WriteFlags), Error = grpcio::Error> + Unpin + Send
{
    /// Ends the call from our side: with `status` if given (server side), else normally.
    fn finish(self, status: Option<RpcStatus>);
}

impl<T: Send> FrameSink<T> for ClientDuplexSender<T> {
    fn finish(mut self, _: Option<RpcStatus>) {
        // Cancelling ends both directions at once, so the reader thread wakes and exits even
        // if the peer never answers.
        self.cancel();
    }
}

impl<T: Send> FrameSink<T> for DuplexSink<T> {
    fn finish(mut self, status: Option<RpcStatus>) {
        let _ = match status {
            Some(s) => block_on(self.fail(s)),
            None => block_on(SinkExt::close(&mut self)),
        };
    }
}

/// The sending half of one of our outbound calls, over gRPC or in memory.
pub(crate) enum OutboundSink<T> {
    Grpc(ClientDuplexSender<T>),
    Memory(memory::FrameWriter<T>),
}

/// The receiving half of one of our outbound calls, over gRPC or in memory.
pub(crate) enum OutboundStream<T> {
    Grpc(grpcio::ClientDuplexReceiver<T>),
    Memory(memory::FrameReader<T>),
}

impl<T> OutboundStream<T> {
    /// Ends the call (both directions) from our side.
    pub(crate) fn cancel(&mut self) {
        match self {
            OutboundStream::Grpc(s) => s.cancel(),
            OutboundStream::Memory(s) => s.cancel(),
        }
    }
}

impl<T: protobuf::Message> Stream for OutboundStream<T> {
    type Item = grpcio::Result<T>;

    fn poll_next(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Self::Item>> {
        match self.get_mut() {
            OutboundStream::Grpc(s) => s.poll_next_unpin(cx),
            OutboundStream::Memory(s) => s.poll_next_unpin(cx),
        }
    }
}

impl<T: frame::Encode + Send> Sink<(T, WriteFlags)> for OutboundSink<T> {
    type Error = grpcio::Error;

    fn poll_ready(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        match self.get_mut() {
            OutboundSink::Grpc(s) => s.poll_ready_unpin(cx),
            OutboundSink::Memory(s) => s.poll_ready_unpin(cx),
        }
    }

    fn start_send(
        self: std::pin::Pin<&mut Self>,
        item: (T, WriteFlags),
    ) -> Result<(), Self::Error> {
        match self.get_mut() {
            OutboundSink::Grpc(s) => s.start_send_unpin(item),
            OutboundSink::Memory(s) => s.start_send_unpin(item),
        }
    }

    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        match self.get_mut() {
            OutboundSink::Grpc(s) => s.poll_flush_unpin(cx),
            OutboundSink::Memory(s) => s.poll_flush_unpin(cx),
        }
    }

    fn poll_close(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        match self.get_mut() {
            OutboundSink::Grpc(s) => s.poll_close_unpin(cx),
            OutboundSink::Memory(s) => s.poll_close_unpin(cx),
        }
    }
}

impl<T: frame::Encode + Send> FrameSink<T> for OutboundSink<T> {
    fn finish(self, status: Option<RpcStatus>) {
        match self {
            OutboundSink::Grpc(s) => s.finish(status),
            OutboundSink::Memory(s) => s.finish(status),
        }
    }
}

/// A gRPC error in words: the peer's status code and message as it sent them (so that a
/// refusal such as `FAILED_PRECONDITION: this is node "r", not "q"` reads as written).
pub(crate) fn describe(e: &grpcio::Error) -> String {
    match e {
        grpcio::Error::RpcFailure(status) | grpcio::Error::RpcFinished(Some(status)) => {
            format!("{:?}: {}", status.code(), status.message())
        }
        other => other.to_string(),
    }
}

/// Writes every frame from `frames` to `sink`, priority lane first (see [`lane`]), flushing
/// when nothing waits. Ends when `frames` is closed (the node dropped the writer) and what it
/// held is written, or when a write fails (reported to `events` as the stream closing).
pub(crate) fn write_loop<T, K>(
    mut sink: K,
    frames: Inbox<T>,
    id: StreamId,
    events: &dyn EventSink,
    verdict: Option<Arc<Verdict>>,
) where
    K: FrameSink<T>,
    T: batch::Batchable,
{
    let backlog = frames.backlog;
    let frames = frames.rx;
    // Writes one frame (its pieces back to back, the first held for the second); counts it out
    // of the backlog once gRPC has taken it.
    let write = |sink: &mut K, frame: T| {
        let (n, bytes) = frame.weight();
        let result = match frame.into_pieces() {
            (whole, None) => block_on(sink.feed((whole, WriteFlags::default()))),
            (header, Some(tail)) => {
                block_on(sink.feed((header, WriteFlags::default().buffer_hint(true))))
                    .and_then(|()| block_on(sink.feed((tail, WriteFlags::default()))))
            }
        };
        if result.is_ok() {
            backlog.written(n, bytes);
        }
        result
    };
    // Frames taken off the channel and not written yet. Everything waiting is taken before
    // each write, so a priority frame queued behind bulk ones is the next to go.
    let mut lanes = Lanes::new();
    let failure = loop {
        if lanes.is_empty() {
            match frames.recv() {
                Ok((lane, frame)) => lanes.push(lane, frame),
                Err(_) => break None,
            }
        }
        let mut result = Ok(());
        while result.is_ok() {
            while let Ok((lane, frame)) = frames.try_recv() {
                lanes.push(lane, frame);
            }
            match lanes.pop() {
                Some(frame) => result = write(&mut sink, frame),
                None => break,
            }
        }
        if let Err(e) = result.and_then(|()| block_on(sink.flush())) {
            break Some(describe(&e));
        }
    };
    if let Some(reason) = failure {
        events.report(StreamEvent::Closed {
            stream: id,
            reason: format!("write failed: {reason}"),
        });
    }
    sink.finish(verdict.as_ref().and_then(|v| v.take()));
    if let Some(v) = verdict {
        v.finished();
    }
}

#[cfg(test)]
mod tests {
    //! The path from received bytes to manager events, fed arbitrary input: it never panics,
    //! and whatever decodes is handled by the state machine without breaking its rules.
    use super::*;
    use crate::limits::Limits;
    use crate::manager::{AckStatus, Action, Event, MessageManager, WireAck};
    use crate::store::SlotStore;
    use proptest::prelude::*;
    use protobuf::Message as _;
    use std::time::{Duration, Instant};

    fn manager() -> MessageManager {
        let store = Arc::new(SlotStore::new(8, Duration::from_secs(10)));
        let limits = Limits {
            max_payload_bytes: 64,
            max_id_bytes: 16,
            max_message_bytes: 1024,
            ..Limits::default()
        };
        let me = crate::id::NodeId::new("me", &limits).unwrap();
        let mut m = MessageManager::new(me, store, limits, Arc::default(), Duration::from_secs(5));
        let peer = crate::id::NodeId::new("peer", &Limits::default()).unwrap();
        let mut out = Vec::new();
        for (id, kind) in [
            (1, StreamKind::InboundMessages),
            (2, StreamKind::InboundAcks),
        ] {
            let event = Event::StreamOpened {
                stream: StreamId(id),
                peer: peer.clone(),
                kind,
            };
            m.handle(event, Instant::now(), &mut out);
        }
        m
    }

    fn feed(m: &mut MessageManager, bytes: &[u8], out: &mut Vec<Action>) {
        if let Ok(msg) = GossipMessage::parse_from_bytes(bytes) {
            let event = Event::MessageReceived {
                stream: StreamId(1),
                message: msg.into(),
            };
            m.handle(event, Instant::now(), out);
        }
        if let Ok(ack) = GossipACK::parse_from_bytes(bytes) {
            let event = Event::AckReceived {
                stream: StreamId(2),
                ack: ack.into(),
            };
            m.handle(event, Instant::now(), out);
        }
    }

    /// Collects what a reader reports.
    #[derive(Default)]
    struct Collect(parking_lot::Mutex<Vec<GossipMessage>>);

    impl EventSink for Collect {
        fn report(&self, event: StreamEvent) -> bool {
            if let StreamEvent::Message { message, .. } = event {
                self.0.lock().push(message);
            }
            true
        }
    }

    /// What a reader makes of `frames` arriving on one stream, and how it ends.
    fn read_all(frames: Vec<GossipMessage>) -> (Vec<GossipMessage>, StreamEnd) {
        let mut stream = futures::stream::iter(frames.into_iter().map(Ok::<_, grpcio::Error>));
        let sink = Collect::default();
        let end = read_loop(&mut stream, StreamId(1), &sink, None, None, None);
        (sink.0.into_inner(), end)
    }

    fn header(hash: &str) -> GossipMessage {
        let mut m = GossipMessage::new();
        m.hash = hash.into();
        m.from_hash = "peer".into();
        m.payload_follows = true;
        m
    }

    /// A shared payload's tail as it arrives (with the padding of a frame made in place).
    fn tail(payload: &[u8]) -> GossipMessage {
        let mut buf = crate::PayloadBuf::new();
        buf.extend_from_slice(payload);
        let shared = crate::SharedPayload::from(buf);
        GossipMessage::parse_from_bytes(shared.frame().as_slice()).unwrap()
    }

    #[test]
    fn a_header_and_the_payload_after_it_arrive_as_one_frame() {
        let mut plain = GossipMessage::new();
        plain.hash = "m3".into();
        plain.payload = bytes::Bytes::from_static(b"own");
        let frames = vec![
            header("m1"),
            tail(b"one"),
            header("m2"),
            tail(b"two"),
            plain,
        ];
        let (got, end) = read_all(frames);
        let got: Vec<_> = got
            .iter()
            .map(|m| (m.hash.as_str(), &m.payload[..], m.payload_follows))
            .collect();
        let own: &[u8] = b"own";
        assert_eq!(
            got,
            [
                ("m1", &b"one"[..], false),
                ("m2", b"two", false),
                ("m3", own, false)
            ]
        );
        assert!(!end.malformed);
        assert_eq!(end.reason, CLOSED_BY_PEER);
    }

    #[test]
    fn a_header_without_its_payload_or_a_payload_out_of_place_ends_the_stream() {
        let mut with_payload = header("m1");
        with_payload.payload = bytes::Bytes::from_static(b"x");
        let mut carrier = GossipMessage::new();
        carrier.hash = "m0".into();
        carrier.batch.push(header("m1"));
        let mut chunk = header("m1");
        chunk.total_bytes = 10;
        let mut tail_with_hash = tail(b"p");
        tail_with_hash.hash = "m9".into();
        for frames in [
            vec![header("m1"), header("m2"), tail(b"p")],
            vec![header("m1"), tail_with_hash],
            vec![with_payload, tail(b"p")],
            vec![carrier, tail(b"p")],
            vec![chunk, tail(b"p")],
        ] {
            let (got, end) = read_all(frames);
            assert!(got.is_empty(), "nothing of it is reported");
            assert!(end.malformed, "{}", end.reason);
        }
        // The stream ending between the two: nothing reported, not a frame.
        let (got, end) = read_all(vec![header("m1")]);
        assert!(got.is_empty());
        assert!(!end.malformed);
    }

    /// Frames that decode, with hashes from a small set so duplicates are common.
    fn frame() -> impl Strategy<Value = Vec<u8>> {
        (
            0u8..4,
            "[a-z]{0,3}",
            proptest::collection::vec(any::<u8>(), 0..100),
        )
            .prop_map(|(h, from, payload)| {
                let mut m = GossipMessage::new();
                m.hash = if h == 0 {
                    String::new()
                } else {
                    format!("h{h}")
                };
                m.from_hash = from;
                m.payload = bytes::Bytes::from(payload);
                m.write_to_bytes().unwrap()
            })
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(inputs in proptest::collection::vec(
            proptest::collection::vec(any::<u8>(), 0..200), 1..50)) {
            let mut m = manager();
            let mut out = Vec::new();
            for bytes in &inputs {
                feed(&mut m, bytes, &mut out);
            }
        }

        #[test]
        fn decoded_frames_are_delivered_at_most_once_and_acked_or_rejected(
            frames in proptest::collection::vec(frame(), 1..60)) {
            let mut m = manager();
            let mut out = Vec::new();
            let mut delivered = std::collections::HashSet::new();
            for bytes in &frames {
                out.clear();
                feed(&mut m, bytes, &mut out);
                let decoded = GossipMessage::parse_from_bytes(bytes).unwrap();
                for a in &out {
                    if let Action::Deliver(d) = a {
                        prop_assert!(delivered.insert(d.hash.clone()), "{} delivered twice", d.hash);
                        prop_assert!(d.payload.len() <= 64);
                    }
                }
                // A bad sender or oversized payload is never delivered, and is rejected; every
                // frame with a hash is answered on the peer's AckStream.
                let bad = (!decoded.from_hash.is_empty() && decoded.from_hash != "peer")
                    || decoded.payload.len() > 64;
                if bad || decoded.hash.is_empty() {
                    prop_assert!(!out.iter().any(|a| matches!(a, Action::Deliver(_))));
                }
                let acks: Vec<&WireAck> = out
                    .iter()
                    .filter_map(|a| match a {
                        Action::SendAck { stream: StreamId(2), ack } => Some(ack),
                        _ => None,
                    })
                    .collect();
                if decoded.hash.is_empty() {
                    prop_assert!(acks.is_empty());
                } else {
                    prop_assert_eq!(acks.len(), 1);
                    prop_assert_eq!(&acks[0].hash, &decoded.hash);
                    prop_assert_eq!(acks[0].status == AckStatus::Rejected, bad);
                }
            }
        }
    }
}
