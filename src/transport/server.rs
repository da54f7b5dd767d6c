//! The gRPC server of a node: accepts MessageStream, AckStream and Stream calls and hands each
//! to its own reader (and, where we answer, writer) thread.

use std::collections::HashMap;
use std::net::{SocketAddr, ToSocketAddrs};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::{FutureExt, Sink, Stream, StreamExt};
use grpcio::{
    ChannelBuilder, DuplexSink, RequestStream, RpcContext, RpcStatus, RpcStatusCode, Server,
    ServerBuilder, ServerCredentials, WriteFlags,
};
use log::{debug, warn};
use parking_lot::Mutex;

use super::batch::Batchable;
use super::factory::{Keepalive, StreamFactory};
use super::inbound;
use super::threads::{ReadGate, ThreadSet};
use super::tls;
use super::{
    forward, outbox, read_loop, write_loop, Events, Features, FrameSink, InboundFrame, Outbox,
    StreamEnd, StreamEvent, Verdict, Writer, CLOSED_BY_PEER, EXPECTED_ID_HEADER, FEATURES_HEADER,
    NODE_ID_HEADER,
};
use crate::error::Error;
use crate::id::NodeId;
use crate::limits::Limits;
use crate::manager::{StreamId, StreamKind};
use crate::proto::{GossipACK, GossipMessage};
use crate::stats::{bump, Counters};

/// What the server's handlers need from their node.
pub(crate) struct Context {
    pub(crate) local: NodeId,
    pub(crate) limits: Limits,
    /// The largest gRPC message the server takes (the factory's
    /// [`TransportConfig::max_grpc_message_bytes`](crate::TransportConfig::max_grpc_message_bytes)):
    /// gRPC refuses larger ones itself.
    pub(crate) receive_limit: usize,
    /// Where the streams' events go.
    pub(crate) events: Events,
    pub(crate) stream_ids: Arc<AtomicU64>,
    pub(crate) threads: Arc<ThreadSet>,
    pub(crate) gate: Arc<ReadGate>,
    pub(crate) guards: Arc<StreamGuards>,
    /// Whether the server requires client certificates; then a peer's claimed id must be one
    /// of its certificate's names.
    pub(crate) tls: bool,
}

/// Caps on incoming streams, so that no client can tie up unbounded threads.
pub(crate) struct StreamGuards {
    per_peer: Mutex<HashMap<NodeId, usize>>,
    max_per_peer: usize,
    /// Identified streams of all peers together (a client could invent many ids).
    total: AtomicUsize,
    max_total: usize,
    unidentified: AtomicUsize,
    max_unidentified: usize,
    /// Where refusals are counted, by cap.
    counters: Arc<Counters>,
}

/// Releases a stream's place under the caps when it ends.
enum Place {
    Unidentified(Arc<StreamGuards>),
    Peer(Arc<StreamGuards>, NodeId),
}

impl Drop for Place {
    fn drop(&mut self) {
        match self {
            Place::Unidentified(g) => {
                g.unidentified.fetch_sub(1, Ordering::AcqRel);
            }
            Place::Peer(g, peer) => {
                g.total.fetch_sub(1, Ordering::AcqRel);
                let mut map = g.per_peer.lock();
                if let Some(n) = map.get_mut(peer) {
                    *n -= 1;
                    if *n == 0 {
                        map.remove(peer);
                    }
                }
            }
        }
    }
}

impl StreamGuards {
    pub(crate) fn new(
        max_per_peer: usize,
        max_total: usize,
        max_unidentified: usize,
        counters: Arc<Counters>,
    ) -> StreamGuards {
        StreamGuards {
            counters,
            per_peer: Mutex::new(HashMap::new()),
            max_per_peer,
            total: AtomicUsize::new(0),
            max_total,
            unidentified: AtomicUsize::new(0),
            max_unidentified,
        }
    }

    fn unidentified(self: &Arc<Self>) -> Option<Place> {
        let n = self.unidentified.fetch_add(1, Ordering::AcqRel);
        let place = Place::Unidentified(self.clone());
        if n >= self.max_unidentified {
            bump(&self.counters.refused_unidentified_streams);
        }
        (n < self.max_unidentified).then_some(place)
    }

    fn peer(self: &Arc<Self>, peer: &NodeId) -> Result<Place, String> {
        let mut map = self.per_peer.lock();
        if self.total.load(Ordering::Acquire) >= self.max_total {
            bump(&self.counters.refused_inbound_streams);
            return Err(format!("{} streams open, the limit", self.max_total));
        }
        let n = map.entry(peer.clone()).or_default();
        if *n >= self.max_per_peer {
            bump(&self.counters.refused_peer_streams);
            return Err(format!(
                "{peer} already has {} streams open",
                self.max_per_peer
            ));
        }
        *n += 1;
        self.total.fetch_add(1, Ordering::AcqRel);
        Ok(Place::Peer(self.clone(), peer.clone()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(s: &str) -> NodeId {
        NodeId::new(s, &Limits::default()).unwrap()
    }

    #[test]
    fn caps_per_peer_in_total_and_unidentified_and_releases_on_drop() {
        let g = Arc::new(StreamGuards::new(2, 3, 1, Arc::default()));
        let a1 = g.peer(&id("a")).unwrap();
        let _a2 = g.peer(&id("a")).unwrap();
        assert!(g.peer(&id("a")).is_err(), "per peer");
        let _b1 = g.peer(&id("b")).unwrap();
        assert!(g.peer(&id("c")).is_err(), "in total, whatever the id");
        drop(a1);
        assert!(g.peer(&id("c")).is_ok(), "released on drop");
        let u = g.unidentified().unwrap();
        assert!(g.unidentified().is_none());
        drop(u);
        assert!(g.unidentified().is_some());
    }
}

/// The grpcio service; cloned per completion queue.
#[derive(Clone)]
pub(crate) struct GossipService {
    ctx: Arc<Context>,
}

/// Starts a node's server on `listen`; returns it with the address it bound.
pub(crate) fn start(
    listen: &str,
    factory: &StreamFactory,
    ctx: Arc<Context>,
) -> Result<(Server, SocketAddr), Error> {
    let bind_err = |reason: String| Error::Bind {
        addr: listen.to_owned(),
        purpose: "the node's gRPC server, `listen`",
        reason,
    };
    let addr = listen
        .to_socket_addrs()
        .map_err(|e| bind_err(e.to_string()))?
        .next()
        .ok_or_else(|| bind_err("address resolves to nothing".into()))?;
    let ip = addr.ip();
    if addr.port() != 0 {
        // Asked of the OS first: gRPC's own error for a taken port is a blob of its internals.
        if let Err(e) = std::net::TcpListener::bind(addr) {
            return Err(bind_err(e.to_string()));
        }
    }
    // gRPC sets SO_REUSEPORT by default: two nodes could then share a port and split its
    // connections between them. A taken port must be an error instead.
    let args = factory
        .tune(
            ChannelBuilder::new(factory.env().clone()),
            listen,
            Keepalive::Fast,
        )
        .reuse_port(false)
        .build_args();
    let mut server = ServerBuilder::new(factory.env().clone())
        .channel_args(args)
        .register_service(gossip_service(GossipService { ctx }))
        .build()
        .map_err(|e| bind_err(e.to_string()))?;
    let credentials = match &factory.config().tls {
        Some(t) => t.server_credentials(),
        None => {
            // Plaintext on loopback is local testing; anywhere else it deserves a warning.
            let level = if ip.is_loopback() {
                log::Level::Info
            } else {
                log::Level::Warn
            };
            log::log!(
                level,
                "{listen}: listening in PLAINTEXT: peers are neither encrypted nor authenticated"
            );
            ServerCredentials::insecure()
        }
    };
    let port = server
        .add_listening_port(listen, credentials)
        .map_err(|e| bind_err(e.to_string()))?;
    server.start();
    Ok((server, SocketAddr::new(ip, port)))
}

/// The id a client announced in its request headers: `None` without the header, `Err` if the
/// header is not UTF-8.
fn header_id(ctx: &RpcContext<'_>) -> Option<Result<String, String>> {
    ctx.request_headers()
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(NODE_ID_HEADER))
        .map(|(_, v)| {
            String::from_utf8(v.to_vec()).map_err(|_| format!("{NODE_ID_HEADER} is not UTF-8"))
        })
}

/// The id the client expects this node to have (header `gossip-expect-id`), if it said.
fn expected_id(ctx: &RpcContext<'_>) -> Option<String> {
    ctx.request_headers()
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(EXPECTED_ID_HEADER))
        .map(|(_, v)| String::from_utf8_lossy(v).into_owned())
}

/// The features the client listed in its request headers.
fn announced_features(ctx: &RpcContext<'_>) -> Features {
    let mut all = Features::default();
    for (_, v) in ctx
        .request_headers()
        .iter()
        .filter(|(k, _)| k.eq_ignore_ascii_case(FEATURES_HEADER))
    {
        if let Ok(list) = std::str::from_utf8(v) {
            let f = Features::parse(list);
            all.batch |= f.batch;
            all.broadcast |= f.broadcast;
            all.chunk |= f.chunk;
            all.confirm |= f.confirm;
        }
    }
    all
}

/// Why an inbound call is refused: the status it ends with.
type Refusal = (RpcStatusCode, String);

/// Where an inbound call stands once its request headers are read.
enum Admission {
    /// It named a valid id and has its place under the caps.
    Identified(NodeId, Place),
    /// It named none: its first frame will, whenever it comes; meanwhile it holds one of the
    /// places for streams that have not identified themselves.
    Unidentified(Place),
}

/// Checks a claimed id: valid, certified when TLS is on, and within the stream caps.
fn admit(
    ctx: &Context,
    claimed: &str,
    names: Option<&[String]>,
) -> Result<(NodeId, Place), Refusal> {
    let peer = NodeId::new(claimed, &ctx.limits)
        .map_err(|e| (RpcStatusCode::INVALID_ARGUMENT, format!("sender id: {e}")))?;
    if ctx.tls {
        match names {
            Some(names) if tls::certifies(names, peer.as_str()) => {}
            Some(names) => {
                let why = format!(
                    "claims to be {peer:?} but its certificate is for {}",
                    names.join(",")
                );
                return Err((RpcStatusCode::PERMISSION_DENIED, why));
            }
            None => {
                let why = "no verified client certificate".to_owned();
                return Err((RpcStatusCode::UNAUTHENTICATED, why));
            }
        }
    }
    let place = ctx
        .guards
        .peer(&peer)
        .map_err(|why| (RpcStatusCode::RESOURCE_EXHAUSTED, why))?;
    Ok((peer, place))
}

/// What the request headers alone decide, before any thread is spent on the call.
fn admission(ctx: &Context, caller: &Caller) -> Result<Admission, Refusal> {
    if let Some(expected) = caller
        .expected
        .as_ref()
        .filter(|e| *e != ctx.local.as_str())
    {
        // A dialler configured with the wrong address: say who is here, before any of its
        // messages could be delivered to the wrong node.
        let why = format!("this is node {:?}, not {expected:?}", ctx.local.as_str());
        return Err((RpcStatusCode::FAILED_PRECONDITION, why));
    }
    match &caller.header {
        Some(Ok(id)) => {
            let (peer, place) = admit(ctx, id, caller.names.as_deref())?;
            Ok(Admission::Identified(peer, place))
        }
        Some(Err(why)) => Err((RpcStatusCode::INVALID_ARGUMENT, why.clone())),
        None => match ctx.guards.unidentified() {
            Some(place) => Ok(Admission::Unidentified(place)),
            None => Err((
                RpcStatusCode::RESOURCE_EXHAUSTED,
                "too many streams waiting to identify themselves".to_owned(),
            )),
        },
    }
}

impl GossipService {
    /// Serves one inbound call: what its headers decide (expected id, claimed id, TLS names,
    /// stream caps) is checked here, and a refusal costs no thread; an admitted call gets a
    /// thread of its own that learns who an unnamed peer is (the first frame's `from_hash`),
    /// registers the stream, starts a writer if we answer on it, and reads until the call ends.
    fn accept<In, Out>(
        &self,
        rpc: &RpcContext<'_>,
        kind: StreamKind,
        requests: RequestStream<In>,
        sink: DuplexSink<Out>,
        writer: Option<fn(Outbox<Out>) -> Writer>,
    ) where
        In: InboundFrame,
        Out: Send + Batchable + 'static,
    {
        let ctx = self.ctx.clone();
        let caller = Caller {
            header: header_id(rpc),
            expected: expected_id(rpc),
            features: announced_features(rpc),
            names: tls::peer_names(rpc),
            addr: rpc.peer(),
        };
        let admitted = match admission(&ctx, &caller) {
            Ok(admitted) => admitted,
            Err((code, why)) => {
                warn!(
                    "{}: refused {kind:?} from {}: {why}",
                    ctx.local, caller.addr
                );
                // Ended on the completion queue: no thread waits for it. The request stream
                // lives until the status is out: dropping it would cancel the call first.
                let failing = sink.fail(RpcStatus::with_message(code, why));
                rpc.spawn(async move {
                    let _ = failing.await;
                    drop(requests);
                });
                return;
            }
        };
        let who = match admitted {
            Admission::Identified(peer, place) => Who::Known(peer, place),
            Admission::Unidentified(waiting) => {
                // An idle stream without the header (an original node's, until it has
                // something to send) costs no thread and has no deadline: its first frame is
                // awaited on the completion queue, holding one of the places for such streams.
                rpc.spawn(async move {
                    let mut requests = requests;
                    let first = requests.next().await;
                    drop(waiting);
                    match first {
                        Some(Ok(frame)) => {
                            let who = Who::FirstFrame(frame);
                            spawn_serving(ctx, kind, caller, who, requests, sink, writer);
                        }
                        Some(Err(e)) => {
                            let status = first_frame_failed(&ctx, kind, &caller.addr, e);
                            let _ = sink.fail(status).await;
                            drop(requests);
                        }
                        // The caller ended the call without a word, or gRPC cancelled it
                        // (a first frame over our limit) and says so only a moment later:
                        // no waiting here on the completion queue, so only what is known now.
                        None => {
                            let mut sink = sink;
                            if sink.finished_under_us(Duration::ZERO) {
                                let reason = cancelled_reason(ctx.receive_limit);
                                warn!("{}: {kind:?} from {}: {reason}", ctx.local, caller.addr);
                            } else {
                                debug!("{}: {kind:?} from {} ended", ctx.local, caller.addr);
                            }
                        }
                    }
                });
                return;
            }
        };
        spawn_serving(ctx, kind, caller, who, requests, sink, writer);
    }
}

/// A call without the id header whose first frame failed to arrive: logged, and the status
/// to end it with.
fn first_frame_failed(ctx: &Context, kind: StreamKind, addr: &str, e: grpcio::Error) -> RpcStatus {
    let mut end = StreamEnd::from_error(e);
    if end.cancelled {
        end.reason = cancelled_reason(ctx.receive_limit);
    }
    warn!("{}: {kind:?} from {addr}: {}", ctx.local, end.reason);
    RpcStatus::with_message(RpcStatusCode::INVALID_ARGUMENT, end.reason)
}

/// Why a server stream ended when gRPC finished its call under us. gRPC refuses a message over
/// the server's receive limit itself (`RESOURCE_EXHAUSTED` to the sender) and cancels the
/// call: it never reaches us as a frame, so this is all we can tell.
fn cancelled_reason(receive_limit: usize) -> String {
    format!(
        "cancelled under us: the peer cancelled it, its connection dropped, or it sent a \
         message over this node's gRPC receive limit ({receive_limit} bytes encoded, \
         TransportConfig::max_grpc_message_bytes), which gRPC refused with RESOURCE_EXHAUSTED"
    )
}

/// The answering side of an inbound call, as `serve` uses it: gRPC's `DuplexSink`, or the
/// in-memory transport's.
pub(crate) trait ServerSink<Out>: FrameSink<Out> + 'static {
    /// Lets the transport coalesce writes (gRPC's buffer hint).
    fn enhance_batch(&mut self);
    /// Whether the call (which we have not ended) is finished under us within `within`: then
    /// it was cancelled. A call whose client merely half-closed stays open until we answer.
    fn finished_under_us(&mut self, within: Duration) -> bool;
}

impl<Out: Send + 'static> ServerSink<Out> for DuplexSink<Out> {
    fn enhance_batch(&mut self) {
        DuplexSink::enhance_batch(self, true);
    }

    fn finished_under_us(&mut self, within: Duration) -> bool {
        let deadline = Instant::now() + within;
        loop {
            let mut ready = futures::future::poll_fn(|cx| {
                <DuplexSink<Out> as Sink<(Out, WriteFlags)>>::poll_ready(Pin::new(&mut *self), cx)
            });
            // A finished call answers `RemoteStopped`; a live one is ready for writes.
            if matches!((&mut ready).now_or_never(), Some(Err(_))) {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

/// Who an admitted call is from: known from its headers, or to be learnt from its first frame.
enum Who<In> {
    Known(NodeId, Place),
    FirstFrame(In),
}

/// Gives an admitted call its thread.
fn spawn_serving<In, Out, R, K>(
    ctx: Arc<Context>,
    kind: StreamKind,
    caller: Caller,
    who: Who<In>,
    requests: R,
    sink: K,
    writer: Option<fn(Outbox<Out>) -> Writer>,
) where
    In: InboundFrame,
    Out: Send + Batchable + 'static,
    R: Stream<Item = grpcio::Result<In>> + Unpin + Send + 'static,
    K: ServerSink<Out>,
{
    let name = format!("gossip-in-{}", ctx.local);
    let threads = ctx.threads.clone();
    let local = ctx.local.clone();
    let run = move || serve(ctx, kind, caller, who, requests, sink, writer);
    if let Err(e) = threads.spawn(name, run) {
        // The call is dropped (and so cancelled) with the closure.
        warn!("{local}: cannot start a stream thread: {e}");
    }
}

/// What the request of an inbound call says about its caller.
pub(crate) struct Caller {
    /// The id it announced (`gossip-node-id`), if any.
    pub(crate) header: Option<Result<String, String>>,
    /// The id it means to reach (`gossip-expect-id`), if it said.
    pub(crate) expected: Option<String>,
    pub(crate) features: Features,
    /// With TLS: the names its certificate holds.
    pub(crate) names: Option<Vec<String>>,
    /// Its address, for logs.
    pub(crate) addr: String,
}

fn serve<In, Out, R, K>(
    ctx: Arc<Context>,
    kind: StreamKind,
    caller: Caller,
    who: Who<In>,
    mut requests: R,
    sink: K,
    writer: Option<fn(Outbox<Out>) -> Writer>,
) where
    In: InboundFrame,
    Out: Send + Batchable + 'static,
    R: Stream<Item = grpcio::Result<In>> + Unpin + Send + 'static,
    K: ServerSink<Out>,
{
    let Caller {
        features,
        names,
        addr: peer_addr,
        ..
    } = caller;
    let refuse = |sink: K, (code, why): Refusal| {
        warn!("{}: refused {kind:?} from {peer_addr}: {why}", ctx.local);
        sink.finish(Some(RpcStatus::with_message(code, why)));
    };
    // An original node (no header) never reads what we would write back on its AckStream:
    // ACKs to it go on our own link, and its AckStream needs no writer.
    // And it reads any ACK as a delivery, so what we refuse from it goes unanswered.
    let (kind, writer) = match (&who, kind) {
        (Who::FirstFrame(_), StreamKind::InboundAcks) => (StreamKind::InboundOriginalAcks, None),
        (Who::FirstFrame(_), StreamKind::InboundMessages) => {
            (StreamKind::InboundOriginalMessages, writer)
        }
        _ => (kind, writer),
    };
    // Who is at the other end: the header, or else the first frame.
    let (peer, _place, first) = match who {
        Who::Known(peer, place) => (peer, place, None),
        Who::FirstFrame(frame) => match admit(&ctx, frame.sender(), names.as_deref()) {
            Ok((peer, place)) => (peer, place, Some(frame)),
            Err(refusal) => return refuse(sink, refusal),
        },
    };
    let stream = StreamId(ctx.stream_ids.fetch_add(1, Ordering::Relaxed));
    let verdict: Arc<Verdict> = Arc::default();
    let (writer, mut held_sink) = match writer {
        Some(make) => {
            let mut sink = sink;
            sink.enhance_batch();
            let (tx, rx) = outbox();
            let events = ctx.events.clone();
            let verdict = verdict.clone();
            let spawned = ctx
                .threads
                .spawn(format!("gossip-out-{}", ctx.local), move || {
                    write_loop(sink, rx, stream, &*events, Some(verdict))
                });
            if let Err(e) = spawned {
                return warn!("{}: cannot start a writer thread: {e}", ctx.local);
            }
            (Some(make(tx)), None)
        }
        None => (None, Some(sink)),
    };
    let open = StreamEvent::Opened {
        stream,
        peer: peer.clone(),
        kind,
        writer,
        features,
    };
    if !ctx.events.report(open) {
        return;
    }
    // A peer that speaks our extensions gets a protocol violation back as a status.
    let strict = features.any().then_some(&ctx.limits);
    let mut end = None;
    if let Some(frame) = first {
        match strict.and_then(|limits| frame.unanswerable(limits)) {
            Some(reason) => end = Some(StreamEnd::malformed(reason)),
            None if !forward(frame, stream, &*ctx.events) => return,
            None => {}
        }
    }
    let gate = matches!(
        kind,
        StreamKind::InboundMessages
            | StreamKind::InboundOriginalMessages
            | StreamKind::InboundSingle
    )
    .then_some(&*ctx.gate);
    let mut end = match end {
        Some(end) => end,
        None => read_loop(&mut requests, stream, &*ctx.events, gate, strict, None),
    };
    let original = matches!(
        kind,
        StreamKind::InboundOriginalMessages | StreamKind::InboundOriginalAcks
    );
    if original && !end.cancelled && end.reason == CLOSED_BY_PEER {
        // gRPC ends the request stream and the call as two completions: a cancelled call may
        // read as a plain end of the stream first.
        if let Some(sink) = held_sink.as_mut() {
            end.cancelled = sink.finished_under_us(Duration::from_millis(200));
        }
    }
    if end.cancelled {
        end.reason = cancelled_reason(ctx.receive_limit);
    }
    if original {
        // An original opens its streams once, when it connects: without this one it can no
        // longer send (or ACK) to us, so the operator hears of it whatever the cause.
        warn!(
            "{}: {kind:?} from {peer} at {peer_addr} ended: {}; an original node does not open \
             it again until it connects to this node anew",
            ctx.local, end.reason
        );
    }
    let status = end.malformed.then(|| {
        warn!("{}: {kind:?} from {peer_addr}: {}", ctx.local, end.reason);
        RpcStatus::with_message(RpcStatusCode::INVALID_ARGUMENT, end.reason.clone())
    });
    // Whoever owns the sink ends the call with this status...
    verdict.set(status.clone());
    ctx.events.report(StreamEvent::Closed {
        stream,
        reason: end.reason,
    });
    match held_sink {
        Some(sink) => sink.finish(status),
        // ...and the request stream lives until then: dropping it cancels the call.
        None => verdict.wait_finished(Duration::from_secs(5)),
    }
    drop(requests);
}

/// The Gossip service: our own MessageStream method, which reads large payloads into buffers
/// a relay sends on (see [`inbound`]), and the other two as generated.
fn gossip_service(service: GossipService) -> grpcio::Service {
    let (mut messages, mut acks, mut single) = (service.clone(), service.clone(), service);
    grpcio::ServiceBuilder::new()
        .add_duplex_streaming_handler(&inbound::MESSAGE_STREAM, move |ctx, req, sink| {
            messages.message_stream(ctx, req, sink)
        })
        .add_duplex_streaming_handler(&inbound::ACK_STREAM, move |ctx, req, sink| {
            acks.ack_stream(ctx, req, sink)
        })
        .add_duplex_streaming_handler(&inbound::SINGLE_STREAM, move |ctx, req, sink| {
            single.stream(ctx, req, sink)
        })
        .build()
}

impl GossipService {
    fn message_stream(
        &mut self,
        ctx: RpcContext<'_>,
        stream: RequestStream<inbound::InMessage>,
        sink: DuplexSink<GossipMessage>,
    ) {
        self.accept(&ctx, StreamKind::InboundMessages, stream, sink, None);
    }

    fn ack_stream(
        &mut self,
        ctx: RpcContext<'_>,
        stream: RequestStream<GossipACK>,
        sink: DuplexSink<GossipACK>,
    ) {
        self.accept(
            &ctx,
            StreamKind::InboundAcks,
            stream,
            sink,
            Some(Writer::Acks),
        );
    }

    fn stream(
        &mut self,
        ctx: RpcContext<'_>,
        stream: RequestStream<GossipMessage>,
        sink: DuplexSink<GossipACK>,
    ) {
        self.accept(
            &ctx,
            StreamKind::InboundSingle,
            stream,
            sink,
            Some(Writer::Acks),
        );
    }
}

/// Serves one inbound call of a transport without a completion queue (the in-memory one):
/// the same admission as gRPC's calls get, a refusal answered at once on the calling thread,
/// and a call without the id header waiting for its first frame on a thread of its own.
pub(crate) fn accept_call<In, Out, R, K>(
    ctx: Arc<Context>,
    kind: StreamKind,
    caller: Caller,
    mut requests: R,
    sink: K,
    writer: Option<fn(Outbox<Out>) -> Writer>,
) where
    In: InboundFrame,
    Out: Send + Batchable + 'static,
    R: Stream<Item = grpcio::Result<In>> + Unpin + Send + 'static,
    K: ServerSink<Out>,
{
    let who = match admission(&ctx, &caller) {
        Ok(Admission::Identified(peer, place)) => Who::Known(peer, place),
        Ok(Admission::Unidentified(waiting)) => {
            let name = format!("gossip-in-{}", ctx.local);
            let threads = ctx.threads.clone();
            let local = ctx.local.clone();
            let wait = move || {
                let first = futures::executor::block_on(requests.next());
                drop(waiting);
                match first {
                    Some(Ok(frame)) => {
                        let who = Who::FirstFrame(frame);
                        serve(ctx, kind, caller, who, requests, sink, writer);
                    }
                    Some(Err(e)) => {
                        let status = first_frame_failed(&ctx, kind, &caller.addr, e);
                        sink.finish(Some(status));
                    }
                    None => debug!("{}: {kind:?} from {} ended", ctx.local, caller.addr),
                }
            };
            if let Err(e) = threads.spawn(name, wait) {
                warn!("{local}: cannot start a stream thread: {e}");
            }
            return;
        }
        Err((code, why)) => {
            warn!(
                "{}: refused {kind:?} from {}: {why}",
                ctx.local, caller.addr
            );
            sink.finish(Some(RpcStatus::with_message(code, why)));
            return;
        }
    };
    spawn_serving(ctx, kind, caller, who, requests, sink, writer);
}
