//! The gRPC server of a node: accepts MessageStream, AckStream and Stream calls and hands each
//! to its own reader (and, where we answer, writer) thread.

use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use crossbeam_channel::{unbounded, Sender};
use futures::executor::block_on;
use futures::StreamExt;
use grpcio::{
    ChannelBuilder, DuplexSink, RequestStream, RpcContext, RpcStatus, RpcStatusCode, Server,
    ServerBuilder, ServerCredentials,
};
use log::warn;

use super::factory::StreamFactory;
use super::threads::{ReadGate, ThreadSet};
use super::{read_loop, write_loop, FrameSink, InboundFrame, Writer, NODE_ID_HEADER};
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
        reason,
    };
    let ip = listen
        .to_socket_addrs()
        .map_err(|e| bind_err(e.to_string()))?
        .next()
        .ok_or_else(|| bind_err("address resolves to nothing".into()))?
        .ip();
    // gRPC sets SO_REUSEPORT by default: two nodes could then share a port and split its
    // connections between them. A taken port must be an error instead.
    let args = factory
        .tune(ChannelBuilder::new(factory.env().clone()))
        .reuse_port(false)
        .build_args();
    let mut server = ServerBuilder::new(factory.env().clone())
        .channel_args(args)
        .register_service(create_gossip(GossipService { ctx }))
        .build()
        .map_err(|e| bind_err(e.to_string()))?;
    let port = server
        .add_listening_port(listen, ServerCredentials::insecure())
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
        let header = header_id(rpc);
        let peer_addr = rpc.peer();
        let name = format!("gossip-in-{}", ctx.local);
        let run = move || serve(ctx, kind, header, peer_addr, requests, sink, writer);
        if let Err(e) = self.ctx.threads.spawn(name, run) {
            // The call is dropped (and so cancelled) with the closure.
            warn!("{}: cannot start a stream thread: {e}", self.ctx.local);
        }
    }
}

fn serve<In, Out>(
    ctx: Arc<Context>,
    kind: StreamKind,
    header: Option<Result<String, String>>,
    peer_addr: String,
    mut requests: RequestStream<In>,
    sink: DuplexSink<Out>,
    writer: Option<fn(Sender<Out>) -> Writer>,
) where
    In: InboundFrame,
    Out: Send + 'static,
    DuplexSink<Out>: FrameSink<Out>,
{
    let refuse = |sink: DuplexSink<Out>, why: String| {
        warn!("{}: refused {kind:?} from {peer_addr}: {why}", ctx.local);
        let _ = block_on(sink.fail(RpcStatus::with_message(
            RpcStatusCode::INVALID_ARGUMENT,
            why,
        )));
    };
    // Who is at the other end.
    let (claimed, first) = match header {
        Some(Ok(id)) => (id, None),
        Some(Err(why)) => return refuse(sink, why),
        None => match block_on(requests.next()) {
            Some(Ok(frame)) => (frame.sender().to_owned(), Some(frame)),
            Some(Err(e)) => return warn!("{}: {kind:?} from {peer_addr} failed: {e}", ctx.local),
            None => return,
        },
    };
    let peer = match NodeId::new(&claimed, &ctx.limits) {
        Ok(p) => p,
        Err(e) => return refuse(sink, format!("sender id: {e}")),
    };
    let stream = StreamId(ctx.stream_ids.fetch_add(1, Ordering::Relaxed));
    let (writer, held_sink) = match writer {
        Some(make) => {
            let mut sink = sink;
            sink.enhance_batch(true);
            let (tx, rx) = unbounded();
            let inbox = ctx.inbox.clone();
            let spawned = ctx
                .threads
                .spawn(format!("gossip-out-{}", ctx.local), move || {
                    write_loop(sink, rx, stream, &inbox)
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
    };
    if ctx.inbox.send(open).is_err() {
        return;
    }
    if let Some(frame) = first {
        if ctx
            .inbox
            .send(Input::Event(frame.into_event(stream)))
            .is_err()
        {
            return;
        }
    }
    let gate = matches!(
        kind,
        StreamKind::InboundMessages | StreamKind::InboundSingle
    )
    .then_some(&*ctx.gate);
    let reason = read_loop(requests, stream, &ctx.inbox, gate);
    let _ = ctx
        .inbox
        .send(Input::Event(Event::StreamClosed { stream, reason }));
    if let Some(sink) = held_sink {
        sink.finish();
    }
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
