//! The gRPC side of a node, kept thin: it turns frames into manager events and actions into
//! frames, and nothing else.
//!
//! Per stream there is one blocking **reader thread** (`futures::executor::block_on` on the
//! grpcio stream) and, where we write, one **writer thread** fed by a crossbeam channel. Both
//! talk to the node's manager thread through its inbox.

pub mod factory;
pub(crate) mod server;
pub(crate) mod threads;

use crossbeam_channel::{Receiver, Sender};
use futures::executor::block_on;
use futures::{Sink, SinkExt, Stream, StreamExt};
use std::sync::Arc;

use grpcio::{ClientDuplexSender, DuplexSink, RpcStatus, WriteFlags};

use crate::manager::{AckStatus, Event, StreamId, WireAck, WireMessage};
use crate::node::driver::Input;
use crate::proto::{self, GossipACK, GossipMessage};
use threads::ReadGate;

/// Request metadata header in which our nodes send their id when they open a stream.
pub const NODE_ID_HEADER: &str = "gossip-node-id";

/// The sending half of a stream's writer thread.
pub(crate) enum Writer {
    /// A MessageStream writer.
    Messages(Sender<GossipMessage>),
    /// An AckStream (or single-stream response) writer.
    Acks(Sender<GossipACK>),
}

impl From<WireMessage> for GossipMessage {
    fn from(m: WireMessage) -> Self {
        let mut g = GossipMessage::new();
        g.hash = m.hash;
        g.from_hash = m.from;
        g.payload = m.payload;
        g
    }
}

impl From<WireAck> for GossipACK {
    fn from(a: WireAck) -> Self {
        let mut g = GossipACK::new();
        g.hash = a.hash;
        g.from_hash = a.from;
        g.status = match a.status {
            AckStatus::Received => proto::AckStatus::ACK_RECEIVED,
            AckStatus::Duplicate => proto::AckStatus::ACK_DUPLICATE,
            AckStatus::Rejected => proto::AckStatus::ACK_REJECTED,
        };
        g.detail = a.detail;
        g
    }
}

/// A frame that can arrive on a stream.
pub(crate) trait InboundFrame: Send + 'static {
    /// The `from_hash` it carries.
    fn sender(&self) -> &str;
    /// The manager event for it.
    fn into_event(self, stream: StreamId) -> Event;
}

impl InboundFrame for GossipMessage {
    fn sender(&self) -> &str {
        &self.from_hash
    }

    fn into_event(mut self, stream: StreamId) -> Event {
        Event::MessageReceived {
            stream,
            message: WireMessage {
                hash: std::mem::take(&mut self.hash),
                from: std::mem::take(&mut self.from_hash),
                payload: std::mem::take(&mut self.payload),
            },
        }
    }
}

impl InboundFrame for GossipACK {
    fn sender(&self) -> &str {
        &self.from_hash
    }

    fn into_event(mut self, stream: StreamId) -> Event {
        Event::AckReceived {
            stream,
            ack: WireAck {
                hash: std::mem::take(&mut self.hash),
                from: std::mem::take(&mut self.from_hash),
                status: match self.status {
                    proto::AckStatus::ACK_RECEIVED => AckStatus::Received,
                    proto::AckStatus::ACK_DUPLICATE => AckStatus::Duplicate,
                    proto::AckStatus::ACK_REJECTED => AckStatus::Rejected,
                },
                detail: std::mem::take(&mut self.detail),
            },
        }
    }
}

/// Why a stream's reader stopped.
pub(crate) struct StreamEnd {
    /// For logs and the manager.
    pub(crate) reason: String,
    /// The peer sent bytes that are not a valid frame.
    pub(crate) malformed: bool,
}

impl StreamEnd {
    fn from_error(e: grpcio::Error) -> StreamEnd {
        let malformed = matches!(e, grpcio::Error::Codec(_));
        StreamEnd {
            reason: if malformed {
                format!("malformed frame: {e}")
            } else {
                e.to_string()
            },
            malformed,
        }
    }

    fn closed(reason: &str) -> StreamEnd {
        StreamEnd {
            reason: reason.to_owned(),
            malformed: false,
        }
    }
}

/// Reads frames until the stream ends, forwarding each to the manager. Waits at `gate` (if any)
/// before each read. Returns why the stream ended.
pub(crate) fn read_loop<S, T>(
    stream: &mut S,
    id: StreamId,
    inbox: &Sender<Input>,
    gate: Option<&ReadGate>,
) -> StreamEnd
where
    S: Stream<Item = grpcio::Result<T>> + Unpin,
    T: InboundFrame,
{
    loop {
        if let Some(g) = gate {
            g.wait_open();
        }
        match block_on(stream.next()) {
            Some(Ok(frame)) => {
                if inbox.send(Input::Event(frame.into_event(id))).is_err() {
                    return StreamEnd::closed("node stopped");
                }
            }
            Some(Err(e)) => return StreamEnd::from_error(e),
            None => return StreamEnd::closed("closed by peer"),
        }
    }
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

/// Writes every frame from `frames` to `sink`, batching what is queued and flushing when the
/// queue is empty. Ends when `frames` is closed (the node dropped the writer) or a write fails
/// (reported to the manager as the stream closing).
pub(crate) fn write_loop<T, K>(
    mut sink: K,
    frames: Receiver<T>,
    id: StreamId,
    inbox: &Sender<Input>,
    verdict: Option<Arc<Verdict>>,
) where
    K: FrameSink<T>,
{
    let failure = loop {
        let Ok(first) = frames.recv() else {
            break None;
        };
        let mut result = block_on(sink.feed((first, WriteFlags::default())));
        while result.is_ok() {
            match frames.try_recv() {
                Ok(next) => result = block_on(sink.feed((next, WriteFlags::default()))),
                Err(_) => break,
            }
        }
        if let Err(e) = result.and_then(|()| block_on(sink.flush())) {
            break Some(e.to_string());
        }
    };
    if let Some(reason) = failure {
        let _ = inbox.send(Input::Event(Event::StreamClosed {
            stream: id,
            reason: format!("write failed: {reason}"),
        }));
    }
    sink.finish(verdict.as_ref().and_then(|v| v.take()));
    if let Some(v) = verdict {
        v.finished();
    }
}
