//! `StreamFactory` (the seed's DoubleStreamFactory): shared by all nodes of a process, it owns
//! gRPC's completion queues, keeps one channel per endpoint, opens double streams on them and
//! closes channels nobody has used for a while. With TLS, a channel is kept per (neighbour id,
//! endpoint), because the neighbour's id is the name its certificate must carry.

use std::collections::HashMap;
use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock, Weak};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{bounded, RecvTimeoutError, Sender};
use futures::executor::block_on;
use grpcio::{CallOption, Channel, ChannelBuilder, EnvBuilder, Environment, MetadataBuilder};
use parking_lot::Mutex;

use super::frame::{OutFrame, MESSAGE_STREAM};
use super::{
    Features, OutboundSink, OutboundStream, EXPECTED_ID_HEADER, FEATURES_HEADER, NODE_ID_HEADER,
};
use crate::config::TransportConfig;
use crate::error::{ConnectFailure, Error};
use crate::id::NodeId;
use crate::proto::{GossipACK, GossipClient, GossipMessage};

struct ChannelEntry {
    channel: Channel,
    users: usize,
    idle_since: Option<Instant>,
}

/// How a channel pings its peer to find out that a connection died.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Keepalive {
    /// A node of ours (or one not known yet): every `keepalive_time`, idle or not.
    Fast,
    /// An original Go node: within grpc-go's default policy (`original_keepalive_time`,
    /// only while streams are open).
    Original,
}

/// Creates and reuses the gRPC connections of every node in the process.
pub struct StreamFactory {
    env: Arc<Environment>,
    config: TransportConfig,
    /// By channel key: the endpoint, or `id@endpoint` with TLS.
    channels: Mutex<HashMap<String, ChannelEntry>>,
    janitor: Mutex<Option<(Sender<()>, JoinHandle<()>)>>,
}

impl std::fmt::Debug for StreamFactory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StreamFactory")
            .field("config", &self.config)
            .field("channels", &self.channels.lock().len())
            .finish_non_exhaustive()
    }
}

/// A double stream to one neighbour: the two client calls, and (over gRPC) the lease that
/// keeps their channel open.
pub(crate) struct DoubleStream {
    pub(crate) messages: (OutboundSink<OutFrame>, OutboundStream<GossipMessage>),
    pub(crate) acks: (OutboundSink<GossipACK>, OutboundStream<GossipACK>),
    pub(crate) lease: Option<ChannelLease>,
}

/// Keeps a channel in use; when the last lease of a channel drops, its idle time starts.
pub(crate) struct ChannelLease {
    factory: Arc<StreamFactory>,
    key: String,
}

impl Drop for ChannelLease {
    fn drop(&mut self) {
        let mut channels = self.factory.channels.lock();
        if let Some(entry) = channels.get_mut(&self.key) {
            entry.users = entry.users.saturating_sub(1);
            if entry.users == 0 {
                entry.idle_since = Some(Instant::now());
            }
        }
    }
}

impl StreamFactory {
    /// A factory with its own gRPC environment.
    pub fn new(config: TransportConfig) -> Arc<StreamFactory> {
        let env = Arc::new(
            EnvBuilder::new()
                .cq_count(config.cq_threads.max(1))
                .name_prefix("gossip-grpc")
                .build(),
        );
        let factory = Arc::new(StreamFactory {
            env,
            config,
            channels: Mutex::new(HashMap::new()),
            janitor: Mutex::new(None),
        });
        factory.start_janitor();
        factory
    }

    /// The process-wide factory with default settings, created on first use. Nodes started
    /// with [`Node::start`](crate::Node::start) share it.
    pub fn shared() -> Arc<StreamFactory> {
        static SHARED: OnceLock<Arc<StreamFactory>> = OnceLock::new();
        SHARED
            .get_or_init(|| StreamFactory::new(TransportConfig::default()))
            .clone()
    }

    /// The transport settings.
    pub fn config(&self) -> &TransportConfig {
        &self.config
    }

    /// The gRPC environment (completion queues) of this factory.
    pub fn env(&self) -> &Arc<Environment> {
        &self.env
    }

    /// Channels open now (in use or idle).
    pub fn open_channels(&self) -> usize {
        self.channels.lock().len()
    }

    /// Closes channels that have had no stream for longer than the idle TTL; returns how many.
    /// A background thread calls this periodically.
    pub fn close_idle(&self) -> usize {
        let ttl = self.config.idle_channel_ttl;
        let now = Instant::now();
        let mut channels = self.channels.lock();
        let before = channels.len();
        channels.retain(|_, e| e.idle_since.is_none_or(|t| now.duration_since(t) < ttl));
        before - channels.len()
    }

    /// Applies the transport settings to a channel to, or a server listening on, `address`;
    /// `keepalive` says how the far end takes pings.
    pub(crate) fn tune(
        &self,
        mut b: ChannelBuilder,
        address: &str,
        keepalive: Keepalive,
    ) -> ChannelBuilder {
        let max = i32::try_from(self.config.max_grpc_message_bytes).unwrap_or(i32::MAX);
        b = b
            .max_receive_message_len(max)
            .max_send_message_len(max)
            .http2_bdp_probe(self.config.bdp_probe_for(address));
        b = match keepalive {
            Keepalive::Fast => {
                let every = self.config.keepalive_time;
                // Find dead connections (a peer that vanished without closing) within seconds,
                // idle links included (their streams stay open), and let peers ping us as
                // often as they like: an original's client pings every minute, ours every
                // `keepalive_time`. A channel without calls (a replaced link's, until it is
                // closed as idle) does not ping: an original would count that against us.
                b.keepalive_time(every)
                    .keepalive_timeout(self.config.keepalive_timeout)
                    .keepalive_permit_without_calls(false)
                    .http2_max_pings_without_data(0)
                    .http2_min_sent_ping_interval_without_data(every)
                    .http2_min_recv_ping_interval_without_data(every / 2)
                    .http2_max_ping_strikes(0)
            }
            Keepalive::Original => {
                // grpc-go's default server policy: no pings without streams, none more often
                // than every 5 minutes (else GOAWAY too_many_pings).
                let every = self.config.original_keepalive_time;
                b.keepalive_time(every)
                    .keepalive_timeout(self.config.keepalive_timeout)
                    .keepalive_permit_without_calls(false)
                    .http2_max_pings_without_data(0)
                    .http2_min_sent_ping_interval_without_data(every)
            }
        };
        if let Some(w) = self.config.stream_window_bytes {
            b = b.stream_initial_window_size(i32::try_from(w).unwrap_or(i32::MAX));
        }
        if let Some(f) = self.config.http2_max_frame_bytes {
            b = b.http2_max_frame_size(i32::try_from(f).unwrap_or(i32::MAX));
        }
        b
    }

    /// A channel to `endpoint` (for `peer`, whose id a TLS channel checks; plaintext channels
    /// are shared by endpoint, so they need none).
    fn lease(
        self: &Arc<Self>,
        endpoint: &str,
        peer: Option<&NodeId>,
        keepalive: Keepalive,
    ) -> (Channel, ChannelLease) {
        let tls_name = peer.filter(|_| self.config.tls.is_some());
        let mut key = match tls_name {
            Some(peer) => format!("{peer}@{endpoint}"),
            None => endpoint.to_owned(),
        };
        if keepalive == Keepalive::Original {
            // Its own connection: the keepalive is a property of the channel.
            key.push_str(" (original)");
        }
        let mut channels = self.channels.lock();
        let entry = channels.entry(key.clone()).or_insert_with(|| {
            let mut builder = ChannelBuilder::new(self.env.clone())
                .initial_reconnect_backoff(Duration::from_millis(100))
                .max_reconnect_backoff(Duration::from_secs(2));
            if let (Some(tls), Some(peer)) = (&self.config.tls, tls_name) {
                // The server must prove it is `peer`, whatever address it was reached at.
                builder = builder
                    .set_credentials(tls.channel_credentials())
                    .override_ssl_target(peer.as_str());
            }
            ChannelEntry {
                channel: self.tune(builder, endpoint, keepalive).connect(endpoint),
                users: 0,
                idle_since: None,
            }
        });
        entry.users += 1;
        entry.idle_since = None;
        let channel = entry.channel.clone();
        drop(channels);
        (
            channel,
            ChannelLease {
                factory: self.clone(),
                key,
            },
        )
    }

    /// Opens a MessageStream and an AckStream to neighbour `peer` at `endpoint`, announcing
    /// `local` in the `gossip-node-id` header, on a channel whose pings suit `keepalive`.
    /// Waits up to `timeout` for the endpoint to accept, giving up early (with
    /// [`Error::Shutdown`]) once `cancel` is set. Without `peer`, to whoever answers there
    /// (plaintext only: with TLS the peer's certificate is checked against its id).
    pub(crate) fn open(
        self: &Arc<Self>,
        endpoint: &str,
        peer: Option<&NodeId>,
        local: &NodeId,
        keepalive: Keepalive,
        timeout: Duration,
        cancel: &AtomicBool,
    ) -> Result<DoubleStream, Error> {
        let fail = |kind, reason: String| Error::Connect {
            endpoint: endpoint.to_owned(),
            kind,
            reason,
        };
        let peer = match (peer, &self.config.tls) {
            (Some(peer), _) => Some(peer),
            (None, None) => None,
            (None, Some(_)) => {
                return Err(Error::Config {
                    field: "peer",
                    reason: format!(
                        "{endpoint}: with TLS a neighbour is dialled by its id (ID=HOST:PORT), \
                         which its certificate must carry"
                    ),
                })
            }
        };
        // Resolved here first: a name that does not resolve fails at once, with its reason,
        // where gRPC would only keep retrying.
        let addrs = resolve(endpoint)?;
        let (channel, lease) = self.lease(endpoint, peer, keepalive);
        let deadline = Instant::now() + timeout;
        // Whether a plain TCP connection succeeds, asked once gRPC has not connected at once:
        // it tells a refused port (fail now) from a handshake that does not complete.
        let mut tcp: Option<bool> = None;
        loop {
            if cancel.load(Ordering::Acquire) {
                return Err(Error::Shutdown);
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(match (tcp, &self.config.tls) {
                    (Some(true), Some(_)) => fail(
                        ConnectFailure::Handshake,
                        format!(
                            "TCP connects but the TLS handshake did not complete within \
                             {timeout:?}: is the peer running TLS, is its certificate for \
                             {:?} and signed by our CA, and does it trust ours?",
                            peer.map_or("", NodeId::as_str)
                        ),
                    ),
                    (Some(true), None) => fail(
                        ConnectFailure::Handshake,
                        format!(
                            "TCP connects but no gRPC connection within {timeout:?}: is the \
                             peer a gossip node in plaintext (not TLS)?"
                        ),
                    ),
                    _ => fail(
                        ConnectFailure::Timeout,
                        format!("no answer within {timeout:?}"),
                    ),
                });
            }
            // Short slices, so that a shutdown does not wait for a whole connect timeout.
            let slice = (deadline - now).min(Duration::from_millis(100));
            if block_on(channel.wait_for_connected(slice)) {
                break;
            }
            if tcp.is_none() {
                // At most a second, so that a shutdown is not held up for long.
                let left = deadline.saturating_duration_since(Instant::now());
                match tcp_probe(&addrs, left.min(Duration::from_secs(1))) {
                    Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
                        return Err(fail(ConnectFailure::Refused, e.to_string()))
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::TimedOut => tcp = Some(false),
                    Err(e) => {
                        log::debug!("probe of {endpoint}: {e}");
                        tcp = Some(false)
                    }
                    Ok(()) => tcp = Some(true),
                }
            }
        }
        let client = GossipClient::new(channel);
        let options = || -> Result<CallOption, Error> {
            let mut headers = MetadataBuilder::new();
            headers.add_str(NODE_ID_HEADER, local.as_str())?;
            headers.add_str(FEATURES_HEADER, &Features::ALL.header_value())?;
            if let Some(peer) = peer {
                headers.add_str(EXPECTED_ID_HEADER, peer.as_str())?;
            }
            Ok(CallOption::default().headers(headers.build()))
        };
        // Our own method for the MessageStream: frames encoded beforehand go out uncopied.
        let mut messages = client
            .client
            .duplex_streaming(&MESSAGE_STREAM, options()?)?;
        let mut acks = client.ack_stream_opt(options()?)?;
        messages.0.enhance_batch(true);
        acks.0.enhance_batch(true);
        Ok(DoubleStream {
            messages: (
                OutboundSink::Grpc(messages.0),
                OutboundStream::Grpc(messages.1),
            ),
            acks: (OutboundSink::Grpc(acks.0), OutboundStream::Grpc(acks.1)),
            lease: Some(lease),
        })
    }

    fn start_janitor(self: &Arc<Self>) {
        let (stop_tx, stop_rx) = bounded::<()>(0);
        let weak: Weak<StreamFactory> = Arc::downgrade(self);
        let period = (self.config.idle_channel_ttl / 2)
            .clamp(Duration::from_millis(100), Duration::from_secs(30));
        let spawned = std::thread::Builder::new()
            .name("gossip-factory".into())
            .spawn(move || loop {
                match stop_rx.recv_timeout(period) {
                    Err(RecvTimeoutError::Timeout) => match weak.upgrade() {
                        Some(factory) => {
                            factory.close_idle();
                        }
                        None => return,
                    },
                    _ => return,
                }
            });
        match spawned {
            Ok(handle) => *self.janitor.lock() = Some((stop_tx, handle)),
            // Without the janitor, idle channels are still closed by `close_idle` callers.
            Err(e) => log::warn!("cannot start the channel janitor thread: {e}"),
        }
    }
}

/// Opens (and closes) one TCP connection to the first of `addrs` that accepts; the error of
/// the last one otherwise.
/// The addresses of `endpoint` (`host:port`; never empty), or why it has none
/// ([`ConnectFailure::Unresolvable`]).
pub(crate) fn resolve(endpoint: &str) -> Result<Vec<SocketAddr>, Error> {
    let unresolvable = |reason: String| Error::Connect {
        endpoint: endpoint.to_owned(),
        kind: ConnectFailure::Unresolvable,
        reason,
    };
    let addrs: Vec<SocketAddr> = endpoint
        .to_socket_addrs()
        .map_err(|e| unresolvable(e.to_string()))?
        .collect();
    if addrs.is_empty() {
        return Err(unresolvable("no address".into()));
    }
    Ok(addrs)
}

fn tcp_probe(addrs: &[SocketAddr], timeout: Duration) -> std::io::Result<()> {
    let mut last = std::io::Error::new(std::io::ErrorKind::TimedOut, "no time left to connect");
    let each = timeout.max(Duration::from_millis(1));
    for addr in addrs {
        match std::net::TcpStream::connect_timeout(addr, each) {
            Ok(_) => return Ok(()),
            Err(e) => last = e,
        }
    }
    Err(last)
}

impl Drop for StreamFactory {
    fn drop(&mut self) {
        if let Some((stop, handle)) = self.janitor.lock().take() {
            drop(stop);
            // The janitor itself may hold the last reference for a moment; it exits on its own.
            if handle.thread().id() != std::thread::current().id() {
                let _ = handle.join();
            }
        }
    }
}
