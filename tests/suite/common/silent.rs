//! A gRPC peer that accepts every stream, reads everything and never answers: a neighbour
//! that is alive but never ACKs.

use std::sync::Arc;

use futures::executor::block_on;
use futures::StreamExt;
use grpc_gossip::proto::{create_gossip, Gossip, GossipACK, GossipMessage};
use grpc_gossip::StreamFactory;
use grpcio::{DuplexSink, RequestStream, RpcContext, Server, ServerBuilder, ServerCredentials};

#[derive(Clone)]
struct Silent;

fn drain<T: Send + 'static, U: Send + 'static>(s: RequestStream<T>, sink: DuplexSink<U>) {
    std::thread::spawn(move || {
        let mut s = s;
        while let Some(Ok(_)) = block_on(s.next()) {}
        drop(sink);
    });
}

impl Gossip for Silent {
    fn message_stream(
        &mut self,
        _: RpcContext<'_>,
        s: RequestStream<GossipMessage>,
        k: DuplexSink<GossipMessage>,
    ) {
        drain(s, k)
    }
    fn ack_stream(
        &mut self,
        _: RpcContext<'_>,
        s: RequestStream<GossipACK>,
        k: DuplexSink<GossipACK>,
    ) {
        drain(s, k)
    }
    fn stream(
        &mut self,
        _: RpcContext<'_>,
        s: RequestStream<GossipMessage>,
        k: DuplexSink<GossipACK>,
    ) {
        drain(s, k)
    }
}

/// Starts the silent peer; returns the server (stop it with `shutdown`) and its address.
pub(crate) fn start(factory: &Arc<StreamFactory>) -> (Server, String) {
    serve(factory, Silent)
}

/// Serves `service` on a free loopback port.
fn serve(
    factory: &Arc<StreamFactory>,
    service: impl Gossip + Clone + Send + 'static,
) -> (Server, String) {
    let mut server = ServerBuilder::new(factory.env().clone())
        .register_service(create_gossip(service))
        .build()
        .unwrap();
    let port = server
        .add_listening_port("127.0.0.1:0", ServerCredentials::insecure())
        .unwrap();
    server.start();
    (server, format!("127.0.0.1:{port}"))
}

/// A gRPC peer that accepts every stream and never reads from it: what a stuck or hostile
/// neighbour looks like to its writer (flow control stops taking our frames).
#[derive(Clone, Default)]
struct Deaf {
    /// The calls, held open and never polled.
    held: Arc<parking_lot::Mutex<Vec<Box<dyn std::any::Any + Send>>>>,
}

impl Deaf {
    fn hold<T: Send + 'static, U: Send + 'static>(&self, s: RequestStream<T>, k: DuplexSink<U>) {
        self.held.lock().push(Box::new((s, k)));
    }
}

impl Gossip for Deaf {
    fn message_stream(
        &mut self,
        _: RpcContext<'_>,
        s: RequestStream<GossipMessage>,
        k: DuplexSink<GossipMessage>,
    ) {
        self.hold(s, k)
    }
    fn ack_stream(
        &mut self,
        _: RpcContext<'_>,
        s: RequestStream<GossipACK>,
        k: DuplexSink<GossipACK>,
    ) {
        self.hold(s, k)
    }
    fn stream(
        &mut self,
        _: RpcContext<'_>,
        s: RequestStream<GossipMessage>,
        k: DuplexSink<GossipACK>,
    ) {
        self.hold(s, k)
    }
}

/// Starts the deaf peer; returns the server (stop it with `shutdown`) and its address.
pub(crate) fn start_deaf(factory: &Arc<StreamFactory>) -> (Server, String) {
    serve(factory, Deaf::default())
}
