//! The gRPC server of a node: accepts MessageStream, AckStream and Stream calls and hands each
//! to its own reader (and, where we answer, writer) thread.

use std::collections::HashMap;
use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crossbeam_channel::{unbounded, Sender};
use futures::executor::block_on;
use futures::future::{self, Either};
use futures::StreamExt;
use futures_timer::Delay;
use grpcio::{
    ChannelBuilder, DuplexSink, RequestStream, RpcContext, RpcStatus, RpcStatusCode, Server,
    ServerBuilder, ServerCredentials,
};
use log::warn;
use parking_lot::Mutex;

use super::factory::StreamFactory;
use super::threads::{ReadGate, ThreadSet};
use super::tls;
use super::{
    forward, read_loop, write_loop, Features, FrameSink, InboundFrame, StreamEnd, Verdict, Writer,
    EXPECTED_ID_HEADER, FEATURES_HEADER, NODE_ID_HEADER,
};
use crate::config::Limits;
use crate::error::Error;
use crate::id::NodeId;
use crate::manager::{Event, StreamId, StreamKind};
use crate::node::driver::Input;
use crate::proto::{create_gossip, Gossip, GossipACK, GossipMessage};

/// What the server's handlers need from their node.
pub(crate) struct Context {
    pub(crate) local: NodeId,
    pub(crate) limits: Limits,
    pub(crate) inbox: Sender<Input>,
    pub(crate) stream_ids: Arc<AtomicU64>,
    pub(crate) threads: Arc<ThreadSet>,
    pub(crate) gate: Arc<ReadGate>,
    pub(crate) guards: StreamGuards,
    pub(crate) handshake_timeout: Duration,
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
}

/// Releases a stream's place under the caps when it ends.
enum Place<'a> {
    Unidentified(&'a StreamGuards),
    Peer(&'a StreamGuards, NodeId),
}

impl Drop for Place<'_> {
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
    ) -> StreamGuards {
        StreamGuards {
            per_peer: Mutex::new(HashMap::new()),
            max_per_peer,
            total: AtomicUsize::new(0),
            max_total,
            unidentified: AtomicUsize::new(0),
            max_unidentified,
        }
    }

    fn unidentified(&self) -> Option<Place<'_>> {
        let n = self.unidentified.fetch_add(1, Ordering::AcqRel);
        let place = Place::Unidentified(self);
        (n < self.max_unidentified).then_some(place)
    }

    fn peer(&self, peer: &NodeId) -> Result<Place<'_>, String> {
        let mut map = self.per_peer.lock();
        if self.total.load(Ordering::Acquire) >= self.max_total {
            return Err(format!("{} streams open, the limit", self.max_total));
        }
        let n = map.entry(peer.clone()).or_default();
        if *n >= self.max_per_peer {
            return Err(format!(
                "{peer} already has {} streams open",
                self.max_per_peer
            ));
        }
        *n += 1;
        self.total.fetch_add(1, Ordering::AcqRel);
        Ok(Place::Peer(self, peer.clone()))
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
        let g = StreamGuards::new(2, 3, 1);
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
        .tune(ChannelBuilder::new(factory.env().clone()), listen)
        .reuse_port(false)
        .build_args();
    let mut server = ServerBuilder::new(factory.env().clone())
        .channel_args(args)
        .register_service(create_gossip(GossipService { ctx }))
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
fn header_id(ctx: &RpcContext) -> Option<Result<String, String>> {
    ctx.request_headers()
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(NODE_ID_HEADER))
        .map(|(_, v)| {
            String::from_utf8(v.to_vec()).map_err(|_| format!("{NODE_ID_HEADER} is not UTF-8"))
        })
}

/// The id the client expects this node to have (header `gossip-expect-id`), if it said.
fn expected_id(ctx: &RpcContext) -> Option<String> {
    ctx.request_headers()
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(EXPECTED_ID_HEADER))
        .map(|(_, v)| String::from_utf8_lossy(v).into_owned())
}

/// The features the client listed in its request headers.
fn announced_features(ctx: &RpcContext) -> Features {
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

impl GossipService {
    /// Serves one inbound call on a thread of its own: learns who the peer is (header, or the
    /// first frame's `from_hash`), registers the stream, starts a writer if we answer on it,
    /// and reads until the call ends.
    fn accept<In, Out>(
        &self,
        rpc: &RpcContext,
        kind: StreamKind,
        requests: RequestStream<In>,
        sink: DuplexSink<Out>,
        writer: Option<fn(Sender<Out>) -> Writer>,
    ) where
        In: InboundFrame,
        Out: Send + 'static,
        DuplexSink<Out>: FrameSink<Out>,
    {
        let ctx = self.ctx.clone();
        let expected = expected_id(rpc);
        let header = header_id(rpc);
        let features = announced_features(rpc);
        let names = tls::peer_names(rpc);
        let peer_addr = rpc.peer();
        let name = format!("gossip-in-{}", ctx.local);
        let run = move || {
            let caller = Caller {
                header,
                expected,
                features,
                names,
                addr: peer_addr,
            };
            serve(ctx, kind, caller, requests, sink, writer)
        };
        if let Err(e) = self.ctx.threads.spawn(name, run) {
            // The call is dropped (and so cancelled) with the closure.
            warn!("{}: cannot start a stream thread: {e}", self.ctx.local);
        }
    }
}

/// What the request of an inbound call says about its caller.
struct Caller {
    /// The id it announced (`gossip-node-id`), if any.
    header: Option<Result<String, String>>,
    /// The id it means to reach (`gossip-expect-id`), if it said.
    expected: Option<String>,
    features: Features,
    /// With TLS: the names its certificate holds.
    names: Option<Vec<String>>,
    /// Its address, for logs.
    addr: String,
}

fn serve<In, Out>(
    ctx: Arc<Context>,
    kind: StreamKind,
    caller: Caller,
    mut requests: RequestStream<In>,
    sink: DuplexSink<Out>,
    writer: Option<fn(Sender<Out>) -> Writer>,
) where
    In: InboundFrame,
    Out: Send + 'static,
    DuplexSink<Out>: FrameSink<Out>,
{
    let Caller {
        header,
        expected,
        features,
        names,
        addr: peer_addr,
    } = caller;
    let refuse = |sink: DuplexSink<Out>, code: RpcStatusCode, why: String| {
        warn!("{}: refused {kind:?} from {peer_addr}: {why}", ctx.local);
        sink.finish(Some(RpcStatus::with_message(code, why)));
    };
    if let Some(expected) = expected.filter(|e| e != ctx.local.as_str()) {
        // A dialler configured with the wrong address: say who is here, before any of its
        // messages could be delivered to the wrong node.
        let why = format!("this is node {:?}, not {expected:?}", ctx.local.as_str());
        return refuse(sink, RpcStatusCode::FAILED_PRECONDITION, why);
    }
    // Who is at the other end: the header, or else the first frame (within a deadline).
    let (claimed, first) = match header {
        Some(Ok(id)) => (id, None),
        Some(Err(why)) => return refuse(sink, RpcStatusCode::INVALID_ARGUMENT, why),
        None => {
            let Some(_waiting) = ctx.guards.unidentified() else {
                let why = "too many streams waiting to identify themselves".to_owned();
                return refuse(sink, RpcStatusCode::RESOURCE_EXHAUSTED, why);
            };
            let timeout = Delay::new(ctx.handshake_timeout);
            match block_on(future::select(requests.next(), timeout)) {
                Either::Left((Some(Ok(frame)), _)) => (frame.sender().to_owned(), Some(frame)),
                Either::Left((Some(Err(e)), _)) => {
                    let end = StreamEnd::from_error(e);
                    return refuse(sink, RpcStatusCode::INVALID_ARGUMENT, end.reason);
                }
                Either::Left((None, _)) => return,
                Either::Right(_) => {
                    let why = format!("no frame within {:?}", ctx.handshake_timeout);
                    return refuse(sink, RpcStatusCode::DEADLINE_EXCEEDED, why);
                }
            }
        }
    };
    let peer = match NodeId::new(&claimed, &ctx.limits) {
        Ok(p) => p,
        Err(e) => {
            let why = format!("sender id: {e}");
            return refuse(sink, RpcStatusCode::INVALID_ARGUMENT, why);
        }
    };
    if ctx.tls {
        match &names {
            Some(names) if tls::certifies(names, peer.as_str()) => {}
            Some(names) => {
                let why = format!(
                    "claims to be {peer:?} but its certificate is for {}",
                    names.join(",")
                );
                return refuse(sink, RpcStatusCode::PERMISSION_DENIED, why);
            }
            None => {
                let why = "no verified client certificate".to_owned();
                return refuse(sink, RpcStatusCode::UNAUTHENTICATED, why);
            }
        }
    }
    let _place = match ctx.guards.peer(&peer) {
        Ok(place) => place,
        Err(why) => return refuse(sink, RpcStatusCode::RESOURCE_EXHAUSTED, why),
    };
    let stream = StreamId(ctx.stream_ids.fetch_add(1, Ordering::Relaxed));
    let verdict: Arc<Verdict> = Arc::default();
    let (writer, held_sink) = match writer {
        Some(make) => {
            let mut sink = sink;
            sink.enhance_batch(true);
            let (tx, rx) = unbounded();
            let inbox = ctx.inbox.clone();
            let verdict = verdict.clone();
            let spawned = ctx
                .threads
                .spawn(format!("gossip-out-{}", ctx.local), move || {
                    write_loop(sink, rx, stream, &inbox, Some(verdict))
                });
            if let Err(e) = spawned {
                return warn!("{}: cannot start a writer thread: {e}", ctx.local);
            }
            (Some(make(tx)), None)
        }
        None => (None, Some(sink)),
    };
    let open = Input::Open {
        stream,
        peer,
        kind,
        writer,
        features,
    };
    if ctx.inbox.send(open).is_err() {
        return;
    }
    // A peer that speaks our extensions gets a protocol violation back as a status.
    let strict = features.any().then_some(&ctx.limits);
    let mut end = None;
    if let Some(frame) = first {
        match strict.and_then(|limits| frame.unanswerable(limits)) {
            Some(reason) => {
                end = Some(StreamEnd {
                    reason,
                    malformed: true,
                })
            }
            None if !forward(frame, stream, &ctx.inbox) => return,
            None => {}
        }
    }
    let gate = matches!(
        kind,
        StreamKind::InboundMessages | StreamKind::InboundSingle
    )
    .then_some(&*ctx.gate);
    let end = match end {
        Some(end) => end,
        None => read_loop(&mut requests, stream, &ctx.inbox, gate, strict),
    };
    let status = end.malformed.then(|| {
        warn!("{}: {kind:?} from {peer_addr}: {}", ctx.local, end.reason);
        RpcStatus::with_message(RpcStatusCode::INVALID_ARGUMENT, end.reason.clone())
    });
    // Whoever owns the sink ends the call with this status...
    verdict.set(status.clone());
    let _ = ctx.inbox.send(Input::Event(Event::StreamClosed {
        stream,
        reason: end.reason,
    }));
    match held_sink {
        Some(sink) => sink.finish(status),
        // ...and the request stream lives until then: dropping it cancels the call.
        None => verdict.wait_finished(Duration::from_secs(5)),
    }
    drop(requests);
}

impl Gossip for GossipService {
    fn message_stream(
        &mut self,
        ctx: RpcContext,
        stream: RequestStream<GossipMessage>,
        sink: DuplexSink<GossipMessage>,
    ) {
        self.accept(&ctx, StreamKind::InboundMessages, stream, sink, None);
    }

    fn ack_stream(
        &mut self,
        ctx: RpcContext,
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
        ctx: RpcContext,
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
