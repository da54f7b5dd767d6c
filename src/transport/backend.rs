//! The one choice a node makes about its transport: gRPC (the product), or an in-memory
//! network (tests of the real node without sockets). Everything else is shared.

use std::net::SocketAddr;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

use futures::executor::block_on;

use super::factory::{DoubleStream, Keepalive, StreamFactory};
use super::memory::{MemoryListener, MemoryNetwork};
use super::server::{self, Context};
use crate::error::Error;
use crate::id::NodeId;

/// Where a node's streams run.
#[derive(Clone)]
pub(crate) enum Backend {
    Grpc(Arc<StreamFactory>),
    Memory(MemoryNetwork),
}

/// A node's listening end; [`shutdown`](Listener::shutdown) ends every inbound call.
pub(crate) enum Listener {
    Grpc(grpcio::Server),
    Memory(MemoryListener),
}

impl Backend {
    /// The largest encoded frame a receiver takes (gRPC's receive limit).
    pub(crate) fn max_message_bytes(&self) -> usize {
        match self {
            Backend::Grpc(f) => f.config().max_grpc_message_bytes,
            Backend::Memory(n) => n.max_message_bytes(),
        }
    }

    /// Whether peers must present certificates.
    pub(crate) fn tls(&self) -> bool {
        match self {
            Backend::Grpc(f) => f.config().tls.is_some(),
            Backend::Memory(_) => false,
        }
    }

    /// Starts listening at `listen` for calls to `ctx`'s node.
    pub(crate) fn listen(
        &self,
        listen: &str,
        ctx: Arc<Context>,
    ) -> Result<(Listener, SocketAddr), Error> {
        match self {
            Backend::Grpc(f) => {
                server::start(listen, f, ctx).map(|(s, addr)| (Listener::Grpc(s), addr))
            }
            Backend::Memory(n) => n
                .listen(listen, ctx)
                .map(|(l, addr)| (Listener::Memory(l), addr)),
        }
    }

    /// Opens the double stream from the node at `from` (`local`) to `peer` at `endpoint`; to
    /// whoever answers there when `peer` is `None` (its handshake says who it is).
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn open(
        &self,
        from: SocketAddr,
        endpoint: &str,
        peer: Option<&NodeId>,
        local: &NodeId,
        keepalive: Keepalive,
        timeout: Duration,
        cancel: &AtomicBool,
    ) -> Result<DoubleStream, Error> {
        match self {
            Backend::Grpc(f) => f.open(endpoint, peer, local, keepalive, timeout, cancel),
            Backend::Memory(n) => n.dial(from, endpoint, peer, local, timeout, cancel),
        }
    }
}

impl Listener {
    /// Takes no new calls and ends those in progress; returns once they are ended.
    pub(crate) fn shutdown(&mut self) {
        match self {
            Listener::Grpc(server) => {
                let stopping = server.shutdown();
                server.cancel_all_calls();
                let _ = block_on(stopping);
            }
            Listener::Memory(listener) => listener.shutdown(),
        }
    }
}
