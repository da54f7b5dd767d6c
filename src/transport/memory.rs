//! An in-memory transport: a node's calls as channels inside one process, for tests of the
//! real node (manager, broadcast engine, driver, supervisor) at scales and speeds that
//! loopback gRPC cannot reach, and with faults that need no proxy.
//!
//! Everything above the call is the product's own code: the same admission (ids, expected id,
//! stream caps), the same reader and writer threads, the same events. Below it, each call is a
//! pair of bounded channels of **encoded** frames: a frame is serialized with protobuf exactly
//! as on the wire and parsed on the other side, so a frame that would not survive gRPC does
//! not survive here either. A frame over the receiver's limit ends the call as gRPC does
//! (`RESOURCE_EXHAUSTED` to the sender, a cancelled call to the receiver). A full channel
//! makes its writer wait, as HTTP/2 flow control would.
//!
//! Faults are set per pair of node addresses: [`MemoryNetwork::cut`] ends every call between
//! them at once, losing what was in flight (`UNAVAILABLE`), and refuses new ones until
//! [`MemoryNetwork::restore`];
//! [`MemoryNetwork::silence`] lets frames vanish without a word (a black-holed route) and
//! makes new calls wait out their connect timeout; [`MemoryNetwork::delay`] holds every frame
//! for a while before its reader sees it (a long route). There is no TLS here.

use std::collections::{HashMap, VecDeque};
use std::marker::PhantomData;
use std::net::{SocketAddr, ToSocketAddrs};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};
use std::task::{Context as TaskContext, Poll, Waker};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::{Sink, Stream};
use grpcio::{RpcStatus, RpcStatusCode, WriteFlags};
use parking_lot::Mutex;

use super::factory::{resolve, DoubleStream};
use super::frame::{Encode, OutFrame};
use super::server::{accept_call, Caller, Context, ServerSink};
use super::{Features, FrameSink, OutboundSink, OutboundStream, Writer};
use crate::config::TransportConfig;
use crate::error::{ConnectFailure, Error};
use crate::id::NodeId;
use crate::manager::StreamKind;
use crate::proto::{GossipACK, GossipMessage};

/// Frames in flight per direction of a call before its writer waits.
const WINDOW: usize = 64;

/// A network of nodes inside this process. Cheap to clone: clones are the same network.
///
/// Start nodes on it with [`NodeBuilder::memory`](crate::NodeBuilder::memory); they listen on
/// the address their configuration gives (port 0 picks a free one in this network, no socket
/// is opened) and reach each other by those addresses.
///
/// ```
/// use grpc_gossip::{MemoryNetwork, Message, NeighborInfo, Node, NodeConfig};
///
/// # fn main() -> Result<(), grpc_gossip::Error> {
/// let net = MemoryNetwork::new();
/// let a = Node::builder(NodeConfig::new("a", "127.0.0.1:0")).memory(&net).start()?;
/// let b = Node::builder(NodeConfig::new("b", "127.0.0.1:0")).memory(&net).start()?;
/// a.connect_to_neighbor(NeighborInfo::new("b", b.local_addr().to_string()))?;
/// net.cut(a.local_addr(), b.local_addr()); // the link goes down; a keeps reconnecting
/// a.send_message("b", Message::new("m1", "waits for the link"))?;
/// net.restore(a.local_addr(), b.local_addr());
/// assert!(a.completions().recv().unwrap().is_acked());
/// assert_eq!(&b.deliveries().recv().unwrap().payload[..], b"waits for the link");
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct MemoryNetwork {
    net: Arc<Net>,
}

impl std::fmt::Debug for MemoryNetwork {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let state = self.net.state.lock();
        f.debug_struct("MemoryNetwork")
            .field("nodes", &state.listeners.len())
            .field("faults", &state.faults.len())
            .field("max_message_bytes", &self.net.max_message_bytes)
            .finish()
    }
}

impl Default for MemoryNetwork {
    fn default() -> Self {
        MemoryNetwork::new()
    }
}

struct Net {
    state: Mutex<State>,
    /// The largest encoded frame a receiver takes, as gRPC's receive limit.
    max_message_bytes: usize,
}

#[derive(Default)]
struct State {
    next_port: u16,
    listeners: HashMap<SocketAddr, Arc<Context>>,
    faults: HashMap<(SocketAddr, SocketAddr), Fault>,
    /// One-way delay of each frame, per link.
    delays: HashMap<(SocketAddr, SocketAddr), Duration>,
    calls: Vec<Weak<Call>>,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Fault {
    Cut,
    Silent,
}

/// The key of the link between two addresses, whichever side dialled.
fn link(a: SocketAddr, b: SocketAddr) -> (SocketAddr, SocketAddr) {
    if a <= b {
        (a, b)
    } else {
        (b, a)
    }
}

impl MemoryNetwork {
    /// An empty network whose receivers take frames of up to
    /// [`TransportConfig::max_grpc_message_bytes`]'s default, as gRPC nodes do.
    pub fn new() -> MemoryNetwork {
        MemoryNetwork::with_max_message_bytes(TransportConfig::default().max_grpc_message_bytes)
    }

    /// An empty network whose receivers take encoded frames of up to `max` bytes.
    pub fn with_max_message_bytes(max: usize) -> MemoryNetwork {
        MemoryNetwork {
            net: Arc::new(Net {
                state: Mutex::new(State {
                    next_port: 1,
                    ..State::default()
                }),
                max_message_bytes: max,
            }),
        }
    }

    /// The largest encoded frame a receiver takes.
    pub fn max_message_bytes(&self) -> usize {
        self.net.max_message_bytes
    }

    /// Cuts the link between the nodes at `a` and `b`: every call between them ends now, as
    /// when a connection breaks (the frames in flight are lost; `UNAVAILABLE` to the caller,
    /// cancelled for the callee), and new ones are refused, until [`restore`](Self::restore).
    pub fn cut(&self, a: SocketAddr, b: SocketAddr) {
        let calls = {
            let mut state = self.net.state.lock();
            state.faults.insert(link(a, b), Fault::Cut);
            state.live_calls(|c| link(c.from, c.to) == link(a, b))
        };
        for call in calls {
            call.break_off(Ended::cut("link cut"));
        }
    }

    /// Silences the link between `a` and `b`: frames either way vanish, and new calls wait
    /// out their connect timeout, until [`restore`](Self::restore). Nothing tells either side.
    pub fn silence(&self, a: SocketAddr, b: SocketAddr) {
        self.net
            .state
            .lock()
            .faults
            .insert(link(a, b), Fault::Silent);
    }

    /// Delays every frame between `a` and `b`, either way, by `one_way` from when it is sent
    /// (order is kept; calls already open are affected too), until [`restore`](Self::restore).
    /// A reader waiting for a delayed frame is woken by a short-lived timer thread.
    pub fn delay(&self, a: SocketAddr, b: SocketAddr, one_way: Duration) {
        self.net.state.lock().delays.insert(link(a, b), one_way);
    }

    /// Undoes [`cut`](Self::cut), [`silence`](Self::silence) and [`delay`](Self::delay)
    /// between `a` and `b`.
    pub fn restore(&self, a: SocketAddr, b: SocketAddr) {
        let mut state = self.net.state.lock();
        state.faults.remove(&link(a, b));
        state.delays.remove(&link(a, b));
    }

    /// Listens at `listen` (a port of 0 picks a free one) for calls to `ctx`'s node.
    pub(crate) fn listen(
        &self,
        listen: &str,
        ctx: Arc<Context>,
    ) -> Result<(MemoryListener, SocketAddr), Error> {
        let bind_err = |reason: String| Error::Bind {
            addr: listen.to_owned(),
            purpose: "the node's in-memory listener, `listen`",
            reason,
        };
        let mut addr = listen
            .to_socket_addrs()
            .map_err(|e| bind_err(e.to_string()))?
            .next()
            .ok_or_else(|| bind_err("address resolves to nothing".into()))?;
        let mut state = self.net.state.lock();
        if addr.port() == 0 {
            loop {
                let port = state.next_port;
                state.next_port = state.next_port.checked_add(1).unwrap_or(1);
                let candidate = SocketAddr::new(addr.ip(), port);
                if !state.listeners.contains_key(&candidate) {
                    addr = candidate;
                    break;
                }
                if state.listeners.len() >= usize::from(u16::MAX) {
                    return Err(bind_err("no free port left in this network".into()));
                }
            }
        } else if state.listeners.contains_key(&addr) {
            return Err(bind_err("address in use in this network".into()));
        }
        state.listeners.insert(addr, ctx);
        Ok((
            MemoryListener {
                net: self.net.clone(),
                addr,
                stopped: AtomicBool::new(false),
            },
            addr,
        ))
    }

    /// Opens a MessageStream and an AckStream from the node at `from` to `peer` at `endpoint`,
    /// as [`StreamFactory::open`](super::factory::StreamFactory) does over gRPC.
    pub(crate) fn dial(
        &self,
        from: SocketAddr,
        endpoint: &str,
        peer: Option<&NodeId>,
        local: &NodeId,
        timeout: Duration,
        cancel: &AtomicBool,
    ) -> Result<DoubleStream, Error> {
        let fail = |kind, reason: String| Error::Connect {
            endpoint: endpoint.to_owned(),
            kind,
            reason,
        };
        let to = resolve(endpoint)?[0];
        let deadline = Instant::now() + timeout;
        let ctx = loop {
            if cancel.load(Ordering::Acquire) {
                return Err(Error::Shutdown);
            }
            {
                let state = self.net.state.lock();
                match state.faults.get(&link(from, to)) {
                    Some(Fault::Cut) => {
                        return Err(fail(ConnectFailure::Refused, "link cut".into()));
                    }
                    Some(Fault::Silent) => {}
                    None => match state.listeners.get(&to) {
                        Some(ctx) => break ctx.clone(),
                        None => {
                            let why = "nothing listens there (in-memory network)".into();
                            return Err(fail(ConnectFailure::Refused, why));
                        }
                    },
                }
            }
            let now = Instant::now();
            if now >= deadline {
                let why = format!("no answer within {timeout:?}");
                return Err(fail(ConnectFailure::Timeout, why));
            }
            std::thread::sleep((deadline - now).min(Duration::from_millis(10)));
        };
        let caller = || Caller {
            header: Some(Ok(local.to_string())),
            expected: peer.map(NodeId::to_string),
            features: Features::ALL,
            names: None,
            addr: from.to_string(),
        };
        let (messages, requests, sink) =
            self.call::<OutFrame, GossipMessage, GossipMessage>(from, to);
        accept_call(
            ctx.clone(),
            StreamKind::InboundMessages,
            caller(),
            requests,
            sink,
            None,
        );
        let (acks, requests, sink) = self.call::<GossipACK, GossipACK, GossipACK>(from, to);
        accept_call(
            ctx,
            StreamKind::InboundAcks,
            caller(),
            requests,
            sink,
            Some(Writer::Acks),
        );
        Ok(DoubleStream {
            messages: (
                OutboundSink::Memory(messages.0),
                OutboundStream::Memory(messages.1),
            ),
            acks: (OutboundSink::Memory(acks.0), OutboundStream::Memory(acks.1)),
            lease: None,
        })
    }

    /// A new call from `from` to `to`: the caller's two halves and the callee's two halves.
    #[allow(clippy::type_complexity)]
    fn call<Out, Req, Resp>(
        &self,
        from: SocketAddr,
        to: SocketAddr,
    ) -> (
        (FrameWriter<Out>, FrameReader<Resp>),
        FrameReader<Req>,
        FrameWriter<Resp>,
    ) {
        let call = Arc::new(Call {
            from,
            to,
            net: Arc::downgrade(&self.net),
            ended: Mutex::new(None),
            requests: Pipe::default(),
            responses: Pipe::default(),
        });
        {
            let mut state = self.net.state.lock();
            state.calls.retain(|c| c.strong_count() > 0);
            state.calls.push(Arc::downgrade(&call));
        }
        let limit = self.net.max_message_bytes;
        (
            (
                FrameWriter::new(&call, Side::Caller, limit),
                FrameReader::new(&call, Side::Caller),
            ),
            FrameReader::new(&call, Side::Callee),
            FrameWriter::new(&call, Side::Callee, limit),
        )
    }
}

impl State {
    fn live_calls(&mut self, pick: impl Fn(&Call) -> bool) -> Vec<Arc<Call>> {
        self.calls.retain(|c| c.strong_count() > 0);
        self.calls
            .iter()
            .filter_map(Weak::upgrade)
            .filter(|c| pick(c))
            .collect()
    }
}

/// A node's place in the network; dropping it (or [`shutdown`](Self::shutdown)) ends every
/// call to it.
pub(crate) struct MemoryListener {
    net: Arc<Net>,
    addr: SocketAddr,
    stopped: AtomicBool,
}

impl MemoryListener {
    /// Takes no new calls and ends those to this node as broken connections (`UNAVAILABLE` to
    /// their callers; frames in flight are lost).
    pub(crate) fn shutdown(&self) {
        if self.stopped.swap(true, Ordering::AcqRel) {
            return;
        }
        let calls = {
            let mut state = self.net.state.lock();
            state.listeners.remove(&self.addr);
            let to = self.addr;
            state.live_calls(|c| c.to == to)
        };
        for call in calls {
            call.break_off(Ended::cut("the node shut down"));
        }
    }
}

impl Drop for MemoryListener {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// How a call ended, as each side reads it once the frames in flight are read.
#[derive(Clone)]
struct Ended {
    /// The status the caller's response stream ends with (OK: a plain end).
    caller: RpcStatus,
    /// Whether the callee's request stream reads as cancelled (else as a plain end).
    callee_cancelled: bool,
}

impl Ended {
    fn cut(why: &str) -> Ended {
        Ended {
            caller: RpcStatus::with_message(RpcStatusCode::UNAVAILABLE, why.to_owned()),
            callee_cancelled: true,
        }
    }

    fn cancelled() -> Ended {
        Ended {
            caller: RpcStatus::with_message(RpcStatusCode::CANCELLED, "cancelled".into()),
            callee_cancelled: true,
        }
    }
}

/// One call: its two directions and how it ended.
struct Call {
    from: SocketAddr,
    to: SocketAddr,
    net: Weak<Net>,
    ended: Mutex<Option<Ended>>,
    /// Caller to callee.
    requests: Pipe,
    /// Callee to caller.
    responses: Pipe,
}

/// One direction of a call: encoded frames in flight, at most [`WINDOW`] of them.
#[derive(Default)]
struct Pipe(Arc<Mutex<PipeState>>);

#[derive(Default)]
struct PipeState {
    /// Each frame with when its reader may have it (frames keep their order).
    frames: VecDeque<(Instant, Bytes)>,
    closed: bool,
    /// Each direction has one writer and one reader, so one waker each.
    reader: Option<Waker>,
    writer: Option<Waker>,
    /// When a timer thread will wake the reader for a delayed frame, if one is set.
    timer: Option<Instant>,
}

impl Pipe {
    /// Ready once there is room (true) or the pipe is closed (false).
    fn poll_room(&self, cx: &mut TaskContext<'_>) -> Poll<bool> {
        let mut p = self.0.lock();
        if p.closed {
            Poll::Ready(false)
        } else if p.frames.len() < WINDOW {
            Poll::Ready(true)
        } else {
            p.writer = Some(cx.waker().clone());
            Poll::Pending
        }
    }

    /// False if the pipe is closed.
    fn push(&self, frame: Bytes, due: Instant) -> bool {
        let mut p = self.0.lock();
        if p.closed {
            return false;
        }
        p.frames.push_back((due, frame));
        let reader = p.reader.take();
        drop(p);
        if let Some(w) = reader {
            w.wake();
        }
        true
    }

    /// The next frame; `None` once the pipe is closed and empty.
    fn poll_pop(&self, cx: &mut TaskContext<'_>) -> Poll<Option<Bytes>> {
        let mut p = self.0.lock();
        let now = Instant::now();
        if p.timer.is_some_and(|t| t <= now) {
            p.timer = None;
        }
        match p.frames.front() {
            Some((due, _)) if *due <= now => {
                let frame = p.frames.pop_front().map(|(_, f)| f);
                let writer = p.writer.take();
                drop(p);
                if let Some(w) = writer {
                    w.wake();
                }
                return Poll::Ready(frame);
            }
            Some((due, _)) => {
                // A delayed frame: a timer wakes the reader when it is due (one timer at a
                // time per pipe; only delayed links start any).
                let due = *due;
                p.reader = Some(cx.waker().clone());
                if p.timer.is_none_or(|t| t > due) {
                    p.timer = Some(due);
                    // It wakes whoever reads then, not whoever set it.
                    let state = self.0.clone();
                    std::thread::spawn(move || {
                        std::thread::sleep(due.saturating_duration_since(Instant::now()));
                        let reader = {
                            let mut p = state.lock();
                            if p.timer == Some(due) {
                                p.timer = None;
                            }
                            p.reader.take()
                        };
                        if let Some(w) = reader {
                            w.wake();
                        }
                    });
                }
                return Poll::Pending;
            }
            None => {}
        }
        if p.closed {
            return Poll::Ready(None);
        }
        p.reader = Some(cx.waker().clone());
        Poll::Pending
    }

    /// Takes no more frames; what is in flight can still be read, unless `lose_in_flight`.
    /// Wakes both ends.
    fn close(&self, lose_in_flight: bool) {
        let mut p = self.0.lock();
        p.closed = true;
        if lose_in_flight {
            p.frames.clear();
        }
        let wakers = [p.reader.take(), p.writer.take()];
        drop(p);
        for w in wakers.into_iter().flatten() {
            w.wake();
        }
    }
}

impl Call {
    /// Ends the call (the first end wins): both directions close, and their readers read what
    /// was in flight, then the end.
    fn end(&self, how: Ended) {
        self.end_with(how, false);
    }

    /// Ends the call as a broken connection does: what was in flight is lost.
    fn break_off(&self, how: Ended) {
        self.end_with(how, true);
    }

    fn end_with(&self, how: Ended, lose_in_flight: bool) {
        {
            let mut ended = self.ended.lock();
            if ended.is_some() {
                return;
            }
            *ended = Some(how);
        }
        self.requests.close(lose_in_flight);
        self.responses.close(lose_in_flight);
    }

    fn ended(&self) -> Option<Ended> {
        self.ended.lock().clone()
    }

    /// What happens now to a frame sent on this call: `None` if it vanishes, else when its
    /// reader may have it.
    fn due(&self) -> Option<Instant> {
        let now = Instant::now();
        let Some(net) = self.net.upgrade() else {
            return Some(now);
        };
        let state = net.state.lock();
        let key = link(self.from, self.to);
        if state.faults.get(&key) == Some(&Fault::Silent) {
            return None;
        }
        Some(state.delays.get(&key).map_or(now, |d| now + *d))
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Side {
    /// The node that dialled.
    Caller,
    /// The node that was dialled.
    Callee,
}

/// Writes frames on one direction of a call.
pub(crate) struct FrameWriter<T> {
    call: Arc<Call>,
    side: Side,
    limit: usize,
    finished: bool,
    _frames: PhantomData<fn(T)>,
}

impl<T> FrameWriter<T> {
    fn new(call: &Arc<Call>, side: Side, limit: usize) -> FrameWriter<T> {
        FrameWriter {
            call: call.clone(),
            side,
            limit,
            finished: false,
            _frames: PhantomData,
        }
    }

    fn pipe(&self) -> &Pipe {
        match self.side {
            Side::Caller => &self.call.requests,
            Side::Callee => &self.call.responses,
        }
    }

    fn closed_error(&self) -> grpcio::Error {
        match self.call.ended() {
            Some(e) if self.side == Side::Caller => grpcio::Error::RpcFinished(Some(e.caller)),
            _ => grpcio::Error::RemoteStopped,
        }
    }
}

impl<T: Encode> Sink<(T, WriteFlags)> for FrameWriter<T> {
    type Error = grpcio::Error;

    fn poll_ready(self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<Result<(), Self::Error>> {
        match self.pipe().poll_room(cx) {
            Poll::Ready(true) => Poll::Ready(Ok(())),
            Poll::Ready(false) => Poll::Ready(Err(self.closed_error())),
            Poll::Pending => Poll::Pending,
        }
    }

    fn start_send(self: Pin<&mut Self>, (frame, _): (T, WriteFlags)) -> Result<(), Self::Error> {
        let bytes = frame
            .to_wire()
            .map_err(|e| grpcio::Error::Codec(Box::new(e)))?;
        if bytes.len() > self.limit {
            // As gRPC: the receiver's core refuses it and the call ends; the sender learns it
            // from the call's status.
            let why = format!(
                "Received message larger than max ({} vs. {})",
                bytes.len(),
                self.limit
            );
            self.call.end(Ended {
                caller: RpcStatus::with_message(RpcStatusCode::RESOURCE_EXHAUSTED, why),
                callee_cancelled: true,
            });
            return Ok(());
        }
        let Some(due) = self.call.due() else {
            return Ok(()); // silenced: it vanishes
        };
        if self.pipe().push(bytes, due) {
            Ok(())
        } else {
            Err(self.closed_error())
        }
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut TaskContext<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn poll_close(
        mut self: Pin<&mut Self>,
        _: &mut TaskContext<'_>,
    ) -> Poll<Result<(), Self::Error>> {
        match self.side {
            // The caller is done sending; the callee may still answer.
            Side::Caller => self.call.requests.close(false),
            Side::Callee => {
                self.finished = true;
                self.call.end(Ended {
                    caller: RpcStatus::ok(),
                    callee_cancelled: false,
                });
            }
        }
        Poll::Ready(Ok(()))
    }
}

impl<T: Encode + Send> FrameSink<T> for FrameWriter<T> {
    fn finish(mut self, status: Option<RpcStatus>) {
        self.finished = true;
        match self.side {
            // As gRPC's cancel: both directions end at once.
            Side::Caller => self.call.end(Ended::cancelled()),
            Side::Callee => self.call.end(Ended {
                caller: status.unwrap_or_else(RpcStatus::ok),
                callee_cancelled: false,
            }),
        }
    }
}

impl<T: Encode + Send + 'static> ServerSink<T> for FrameWriter<T> {
    fn enhance_batch(&mut self) {}

    fn finished_under_us(&mut self, within: Duration) -> bool {
        let deadline = Instant::now() + within;
        loop {
            if self.call.ended().is_some() {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

impl<T> Drop for FrameWriter<T> {
    fn drop(&mut self) {
        // A callee's answer dropped unfinished cancels the call, as gRPC's does.
        if self.side == Side::Callee && !self.finished {
            self.call.end(Ended::cancelled());
        }
    }
}

/// Reads frames from one direction of a call.
pub(crate) struct FrameReader<T> {
    call: Arc<Call>,
    side: Side,
    done: bool,
    _frames: PhantomData<fn() -> T>,
}

impl<T> FrameReader<T> {
    fn new(call: &Arc<Call>, side: Side) -> FrameReader<T> {
        FrameReader {
            call: call.clone(),
            side,
            done: false,
            _frames: PhantomData,
        }
    }

    /// Ends the call from the reading side (the caller's cancel).
    pub(crate) fn cancel(&mut self) {
        self.call.end(Ended::cancelled());
    }
}

impl<T: protobuf::Message> Stream for FrameReader<T> {
    type Item = grpcio::Result<T>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<Option<Self::Item>> {
        if self.done {
            return Poll::Ready(None);
        }
        let pipe = match self.side {
            Side::Caller => &self.call.responses,
            Side::Callee => &self.call.requests,
        };
        match pipe.poll_pop(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(Some(bytes)) => Poll::Ready(Some(
                protobuf::Message::parse_from_carllerche_bytes(&bytes)
                    .map_err(|e| grpcio::Error::Codec(Box::new(e))),
            )),
            Poll::Ready(None) => {
                self.done = true;
                let ended = self.call.ended();
                Poll::Ready(match (self.side, ended) {
                    (Side::Caller, Some(e)) if e.caller.code() != RpcStatusCode::OK => {
                        Some(Err(grpcio::Error::RpcFailure(e.caller)))
                    }
                    (Side::Callee, Some(e)) if e.callee_cancelled => {
                        Some(Err(grpcio::Error::RpcFinished(None)))
                    }
                    _ => None,
                })
            }
        }
    }
}

impl<T> Drop for FrameReader<T> {
    fn drop(&mut self) {
        // Dropping either side's reader before the call ended cancels it, as in gRPC.
        if self.call.ended().is_none() {
            self.call.end(Ended::cancelled());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::executor::block_on;
    use futures::{FutureExt, SinkExt, StreamExt};

    fn addr(port: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], port))
    }

    fn message(hash: &str, payload: &[u8]) -> GossipMessage {
        let mut m = GossipMessage::new();
        m.hash = hash.into();
        m.payload = Bytes::copy_from_slice(payload);
        m
    }

    fn send<T: Encode>(w: &mut FrameWriter<T>, frame: T) -> grpcio::Result<()> {
        block_on(w.send((frame, WriteFlags::default())))
    }

    fn code<T: std::fmt::Debug>(r: Option<grpcio::Result<T>>) -> RpcStatusCode {
        match r {
            Some(Err(grpcio::Error::RpcFailure(s))) => s.code(),
            other => panic!("expected a failed call, got {other:?}"),
        }
    }

    #[test]
    fn frames_round_trip_the_encoding_in_order() {
        let net = MemoryNetwork::new();
        let ((mut tx, _rx), mut requests, _sink) =
            net.call::<GossipMessage, GossipMessage, GossipACK>(addr(1), addr(2));
        send(&mut tx, message("one", b"first")).unwrap();
        send(&mut tx, message("two", &[7u8; 100_000])).unwrap();
        let first = block_on(requests.next()).unwrap().unwrap();
        assert_eq!(
            (first.hash.as_str(), &first.payload[..]),
            ("one", &b"first"[..])
        );
        let second = block_on(requests.next()).unwrap().unwrap();
        assert_eq!(second.payload.len(), 100_000);
    }

    #[test]
    fn a_frame_over_the_limit_ends_the_call_as_grpc_does() {
        let net = MemoryNetwork::with_max_message_bytes(1024);
        let ((mut tx, mut rx), mut requests, _sink) =
            net.call::<GossipMessage, GossipMessage, GossipACK>(addr(1), addr(2));
        send(&mut tx, message("ok", &[1u8; 100])).unwrap();
        send(&mut tx, message("big", &[1u8; 2000])).unwrap();
        // What was sent before still arrives; then the callee reads a cancelled call...
        assert_eq!(block_on(requests.next()).unwrap().unwrap().hash, "ok");
        assert!(matches!(
            block_on(requests.next()),
            Some(Err(grpcio::Error::RpcFinished(None)))
        ));
        // ...and the caller its status.
        assert_eq!(code(block_on(rx.next())), RpcStatusCode::RESOURCE_EXHAUSTED);
        assert!(send(&mut tx, message("after", b"x")).is_err());
    }

    #[test]
    fn the_callee_ends_with_a_status_or_plainly() {
        let net = MemoryNetwork::new();
        let ((_tx, mut rx), _requests, mut sink) =
            net.call::<GossipACK, GossipACK, GossipACK>(addr(1), addr(2));
        let mut ack = GossipACK::new();
        ack.hash = "h".into();
        send(&mut sink, ack).unwrap();
        let status = RpcStatus::with_message(RpcStatusCode::FAILED_PRECONDITION, "no".into());
        sink.finish(Some(status));
        assert_eq!(block_on(rx.next()).unwrap().unwrap().hash, "h");
        assert_eq!(
            code(block_on(rx.next())),
            RpcStatusCode::FAILED_PRECONDITION
        );
        assert!(block_on(rx.next()).is_none());

        let ((_tx, mut rx), _requests, sink) =
            net.call::<GossipACK, GossipACK, GossipACK>(addr(1), addr(2));
        sink.finish(None);
        assert!(block_on(rx.next()).is_none(), "OK reads as a plain end");
    }

    #[test]
    fn a_half_close_is_a_plain_end_and_the_answers_still_flow() {
        let net = MemoryNetwork::new();
        let ((mut tx, mut rx), mut requests, mut sink) =
            net.call::<GossipACK, GossipACK, GossipACK>(addr(1), addr(2));
        block_on(SinkExt::close(&mut tx)).unwrap();
        assert!(block_on(requests.next()).is_none());
        let mut ack = GossipACK::new();
        ack.hash = "late".into();
        send(&mut sink, ack).unwrap();
        assert_eq!(block_on(rx.next()).unwrap().unwrap().hash, "late");
    }

    #[test]
    fn a_full_window_makes_the_writer_wait_until_the_reader_reads() {
        let net = MemoryNetwork::new();
        let ((mut tx, _rx), mut requests, _sink) =
            net.call::<GossipMessage, GossipMessage, GossipACK>(addr(1), addr(2));
        for i in 0..WINDOW {
            send(&mut tx, message(&i.to_string(), b"x")).unwrap();
        }
        let mut ready = futures::future::poll_fn(|cx| tx.poll_ready_unpin(cx));
        assert!(
            (&mut ready).now_or_never().is_none(),
            "waits on a full window"
        );
        block_on(requests.next()).unwrap().unwrap();
        assert!(matches!(block_on(ready), Ok(())));
    }

    #[test]
    fn a_cut_ends_both_sides_and_a_silence_swallows_frames() {
        let net = MemoryNetwork::new();
        let ((mut tx, mut rx), mut requests, _sink) =
            net.call::<GossipMessage, GossipMessage, GossipACK>(addr(1), addr(2));
        net.silence(addr(2), addr(1));
        send(&mut tx, message("lost", b"x")).unwrap();
        assert!(requests.next().now_or_never().is_none(), "nothing arrives");
        net.restore(addr(1), addr(2));
        send(&mut tx, message("found", b"x")).unwrap();
        assert_eq!(block_on(requests.next()).unwrap().unwrap().hash, "found");

        send(&mut tx, message("in flight", b"x")).unwrap();
        net.cut(addr(1), addr(2));
        assert_eq!(code(block_on(rx.next())), RpcStatusCode::UNAVAILABLE);
        // What was in flight is lost, as on a broken connection.
        assert!(matches!(
            block_on(requests.next()),
            Some(Err(grpcio::Error::RpcFinished(None)))
        ));
        assert!(send(&mut tx, message("after", b"x")).is_err());
    }

    #[test]
    fn a_delayed_link_holds_each_frame_and_keeps_the_order() {
        let net = MemoryNetwork::new();
        net.delay(addr(1), addr(2), Duration::from_millis(150));
        let ((mut tx, _rx), mut requests, _sink) =
            net.call::<GossipMessage, GossipMessage, GossipACK>(addr(1), addr(2));
        let sent = Instant::now();
        for i in 0..3 {
            send(&mut tx, message(&i.to_string(), b"x")).unwrap();
        }
        assert!(
            requests.next().now_or_never().is_none(),
            "not before its time"
        );
        for i in 0..3 {
            assert_eq!(
                block_on(requests.next()).unwrap().unwrap().hash,
                i.to_string()
            );
        }
        assert!(sent.elapsed() >= Duration::from_millis(150));
        // Restored: at once again.
        net.restore(addr(1), addr(2));
        send(&mut tx, message("now", b"x")).unwrap();
        assert!(requests.next().now_or_never().is_some());
    }

    #[test]
    fn dropping_a_reader_cancels_its_call() {
        let net = MemoryNetwork::new();
        let ((_tx, rx), mut requests, _sink) =
            net.call::<GossipMessage, GossipMessage, GossipACK>(addr(1), addr(2));
        drop(rx);
        assert!(matches!(
            block_on(requests.next()),
            Some(Err(grpcio::Error::RpcFinished(None)))
        ));
    }
}
