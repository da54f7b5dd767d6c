//! Configuration of a node, its limits and its gRPC transport.
// The link resolves only where the feature builds the module.
#![cfg_attr(
    feature = "config-file",
    doc = "With the feature `config-file`, [`file`](mod@file) reads them from an operator's file."
)]
#![cfg_attr(
    not(feature = "config-file"),
    doc = "With the feature `config-file`, `file` reads them from an operator's file."
)]

use std::time::Duration;

#[cfg(feature = "config-file")]
pub mod file;

use crate::backoff::Backoff;
use crate::broadcast::BroadcastConfig;
use crate::error::Error;
pub use crate::limits::Limits;
use crate::transport::tls::TlsConfig;

/// What a node does with the messages it receives.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Deliveries {
    /// Hand each message (once) to [`Node::deliveries`](crate::Node::deliveries), through a queue
    /// of at most this many messages. While the queue is full the node stops reading from its
    /// peers' MessageStreams and withholds ACKs, so senders slow down instead of memory growing.
    /// The queue's slots are allocated when the node starts, about 160 bytes each (DHAT counted
    /// 10.5 MB per node for 65,536), besides the payloads they come to hold.
    Queue(usize),
    /// Acknowledged deliveries: hand each message to
    /// [`Node::deliveries`](crate::Node::deliveries) and ACK it only when the application calls
    /// [`Delivery::confirm`](crate::Delivery::confirm), so an ACK means the application has
    /// it, even if this process crashes a moment later. At most this many deliveries wait
    /// unconfirmed (in the queue or in the application's hands); beyond that the node stops
    /// reading payloads, which slows the senders down. A delivery dropped unconfirmed is sent
    /// again by its sender (within its TTL). Broadcast deliveries need no confirmation. As for
    /// `Queue`, the queue's slots are allocated when the node starts.
    Confirmed(usize),
    /// ACK received messages without handing them to the application (they are counted in
    /// [`Stats`](crate::Stats)). For nodes that only send, and for benchmarks.
    Discard,
}

/// Configuration of one [`Node`](crate::Node).
#[derive(Clone, Debug)]
pub struct NodeConfig {
    /// This node's id (`NodeHash`).
    pub id: String,
    /// Address the gRPC server listens on, e.g. `127.0.0.1:0` (port 0 picks a free port).
    pub listen: String,
    /// How many messages may be in flight (sent and not yet completed) at once.
    pub slots: usize,
    /// How long a message may wait for its ACK before it completes as `TimedOut`. Also how long
    /// the seen-cache remembers a received hash.
    pub ttl: Duration,
    /// Size limits.
    pub limits: Limits,
    /// What to do with received messages.
    pub deliveries: Deliveries,
    /// Most (sender, hash) pairs the seen-cache remembers for de-duplication.
    pub seen_capacity: usize,
    /// How often the manager checks TTLs.
    pub tick: Duration,
    /// How long `connect_to_neighbor` (and each reconnection attempt) waits for the
    /// neighbour's endpoint to accept.
    pub connect_timeout: Duration,
    /// A neighbour with messages outstanding that sends no ACK for this long is treated as a
    /// broken link: reconnected, and its messages sent again. Must exceed the time the largest
    /// message takes to cross the slowest link.
    pub ack_timeout: Duration,
    /// Delays between reconnection attempts after a link breaks.
    pub reconnect: Backoff,
    /// Most messages in flight to one neighbour (at most `slots`).
    pub peer_max_messages: usize,
    /// Most payload bytes in flight to one neighbour.
    pub peer_max_bytes: usize,
    /// Most streams one peer may have open to this node at once; more are refused with
    /// `RESOURCE_EXHAUSTED`.
    pub max_streams_per_peer: usize,
    /// Most incoming streams of all peers together; more are refused with
    /// `RESOURCE_EXHAUSTED`.
    pub max_inbound_streams: usize,
    /// Most incoming streams still waiting for their first frame (peers without the
    /// `gossip-node-id` header, such as original nodes, which open their streams when they
    /// connect and send on them when they have something to say); more are refused with
    /// `RESOURCE_EXHAUSTED`. Such a stream may wait as long as it likes: it costs no thread
    /// until its first frame names its sender, and streams that have named theirs are never
    /// displaced by new ones.
    pub max_unidentified_streams: usize,
    /// Most ACKs queued for one stream whose reader has stopped reading them; further ACKs to
    /// it are dropped (and counted): its sender will retransmit and be ACKed again.
    pub max_queued_acks: usize,
    /// Messages larger than this travel in chunks of this size (at most
    /// `limits.max_payload_bytes`) to peers that announced the `chunk` feature, and are
    /// reassembled and ACKed as one message.
    pub chunk_bytes: usize,
    /// The largest message (encoded as one gRPC message) an original Go node takes: grpc-go's
    /// default receive limit, 4 MiB. A larger message to a neighbour without the `chunk`
    /// feature fails at once as `FailReason::TooLarge` instead of being refused over and over;
    /// while a new link's features are unknown, such a message waits for them. A neighbour's
    /// own [`NeighborInfo::max_message`](crate::NeighborInfo::max_message) replaces it for
    /// that neighbour.
    pub original_max_message_bytes: usize,
    /// The priority lane: a message of at most this many payload bytes (sent whole, not in
    /// chunks), and every control frame of the broadcast protocol, goes out ahead of the
    /// larger messages already queued to the same neighbour, so that it never waits behind
    /// bulk. Sends to one neighbour keep their order *within each lane*: a small message may
    /// overtake a larger one sent before it. 0 turns the lane off (one order for everything).
    /// Only to neighbours that announced the `lane` feature; original nodes get one order.
    pub lane_max_bytes: usize,
    /// Multi-hop broadcast: fanout, lazy-plane threshold, hop limit, deadlines.
    pub broadcast: BroadcastConfig,
    /// Clusters that assemble themselves: `Some` runs membership (partial views, the member
    /// list, joining through seeds; see [`crate::membership`]). `None` (the default): the
    /// neighbours are the application's alone.
    pub membership: Option<MembershipConfig>,
}

/// How a node joins a cluster and keeps its membership ([`NodeConfig::membership`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MembershipConfig {
    /// Where to join: `HOST:PORT` (a name may resolve to several addresses, each tried) or
    /// `ID=HOST:PORT`. Tried in turn, with backoff ([`NodeConfig::reconnect`]) while none
    /// answers, and again whenever the node finds itself without a neighbour. Seeds that are
    /// this node itself are skipped; empty (or only this node): it is the first member, and
    /// the others join through it.
    pub seeds: Vec<String>,
    /// The address other members reach this node at; `None`: the listening address, which
    /// must then name a host (not `0.0.0.0` or `[::]`).
    pub advertise: Option<String>,
    /// Sizes of the active and passive views, walk lengths, shuffle period (default: 5 and 30
    /// members, a shuffle every 10 s).
    pub views: crate::membership::ViewConfig,
    /// Confirmations and the suspicion timeout of the member list (default: 2 members, 10 s),
    /// and its bound (100,000 members).
    pub list: crate::membership::ListConfig,
    /// Links to members outside the active view (neighbour requests, shuffle replies, probes)
    /// at most at once; more frames for such members wait for the next round (default 8).
    pub max_extra_links: usize,
    /// Such a link is closed after this long without a frame sent on it (default 5 s).
    pub idle_link: Duration,
}

impl Default for MembershipConfig {
    fn default() -> MembershipConfig {
        MembershipConfig {
            seeds: Vec::new(),
            advertise: None,
            views: crate::membership::ViewConfig::default(),
            list: crate::membership::ListConfig::default(),
            max_extra_links: 8,
            idle_link: Duration::from_secs(5),
        }
    }
}

impl MembershipConfig {
    /// Membership joining through `seeds`, the rest default.
    pub fn with_seeds<S: Into<String>>(seeds: impl IntoIterator<Item = S>) -> MembershipConfig {
        MembershipConfig {
            seeds: seeds.into_iter().map(Into::into).collect(),
            ..MembershipConfig::default()
        }
    }
}

/// The default [`NodeConfig::lane_max_bytes`]: 64 KiB.
pub const DEFAULT_LANE_MAX_BYTES: usize = 64 * 1024;

impl NodeConfig {
    /// The seed's defaults (200 slots, 120 s TTL) for a node called `id` listening on `listen`.
    pub fn new(id: impl Into<String>, listen: impl Into<String>) -> NodeConfig {
        NodeConfig {
            id: id.into(),
            listen: listen.into(),
            slots: 200,
            ttl: Duration::from_secs(120),
            limits: Limits::default(),
            deliveries: Deliveries::Queue(1024),
            seen_capacity: crate::manager::DEFAULT_SEEN_CAPACITY,
            tick: Duration::from_millis(50),
            connect_timeout: Duration::from_secs(5),
            ack_timeout: Duration::from_secs(5),
            reconnect: Backoff::default(),
            peer_max_messages: 200,
            peer_max_bytes: 256 * 1024 * 1024,
            max_streams_per_peer: 16,
            max_inbound_streams: 4096,
            max_unidentified_streams: 64,
            max_queued_acks: 1 << 16,
            chunk_bytes: 1024 * 1024,
            original_max_message_bytes: crate::limits::ORIGINAL_LIMIT,
            lane_max_bytes: DEFAULT_LANE_MAX_BYTES,
            broadcast: BroadcastConfig::default(),
            membership: None,
        }
    }

    /// Checks every field; the error names the first bad one.
    pub fn validate(&self) -> Result<(), Error> {
        self.limits.validate()?;
        crate::id::validate_own_id(&self.id, &self.limits).map_err(|e| Error::Config {
            field: "id",
            reason: e.to_string(),
        })?;
        let positive = |field: &'static str, ok: bool| {
            if ok {
                Ok(())
            } else {
                Err(Error::Config {
                    field,
                    reason: "must be > 0".into(),
                })
            }
        };
        positive("slots", self.slots > 0)?;
        positive("ttl", !self.ttl.is_zero())?;
        positive("seen_capacity", self.seen_capacity > 0)?;
        positive("tick", !self.tick.is_zero())?;
        positive("connect_timeout", !self.connect_timeout.is_zero())?;
        positive("ack_timeout", !self.ack_timeout.is_zero())?;
        positive("peer_max_messages", self.peer_max_messages > 0)?;
        positive("peer_max_bytes", self.peer_max_bytes > 0)?;
        positive("reconnect.max", !self.reconnect.max.is_zero())?;
        positive("max_streams_per_peer", self.max_streams_per_peer > 0)?;
        positive("max_inbound_streams", self.max_inbound_streams > 0)?;
        positive(
            "max_unidentified_streams",
            self.max_unidentified_streams > 0,
        )?;
        positive("max_queued_acks", self.max_queued_acks > 0)?;
        if let Deliveries::Queue(n) | Deliveries::Confirmed(n) = self.deliveries {
            positive("deliveries", n > 0)?;
        }
        positive("chunk_bytes", self.chunk_bytes > 0)?;
        positive(
            "original_max_message_bytes",
            self.original_max_message_bytes > 0,
        )?;
        let b = &self.broadcast;
        positive("broadcast.fanout", b.fanout > 0)?;
        positive("broadcast.hop_limit", b.hop_limit > 0)?;
        positive("broadcast.max_tracked", b.max_tracked > 0)?;
        positive("broadcast.max_held_bytes", b.max_held_bytes > 0)?;
        positive("broadcast.graft_timeout", !b.graft_timeout.is_zero())?;
        if b.deadline <= b.hop_margin {
            return Err(Error::Config {
                field: "broadcast.deadline",
                reason: format!("must exceed broadcast.hop_margin ({:?})", b.hop_margin),
            });
        }
        if let Some(m) = &self.membership {
            positive("membership.views.active", m.views.active > 0)?;
            positive("membership.views.passive", m.views.passive > 0)?;
            positive(
                "membership.views.shuffle_period",
                !m.views.shuffle_period.is_zero(),
            )?;
            positive("membership.list.confirmations", m.list.confirmations > 0)?;
            positive("membership.list.max_members", m.list.max_members > 1)?;
            positive("membership.idle_link", !m.idle_link.is_zero())?;
            for seed in &m.seeds {
                let endpoint = seed.split_once('=').map_or(seed.as_str(), |(_, e)| e);
                if endpoint
                    .rsplit_once(':')
                    .is_none_or(|(h, p)| h.is_empty() || p.parse::<u16>().is_err())
                {
                    return Err(Error::Config {
                        field: "membership.seeds",
                        reason: format!("{seed:?}: expected HOST:PORT or ID=HOST:PORT"),
                    });
                }
            }
        }
        Ok(())
    }
}

/// Settings of the gRPC channels a [`StreamFactory`](crate::StreamFactory) opens, and of the
/// servers of the nodes that use it.
#[derive(Clone, Debug)]
pub struct TransportConfig {
    /// Completion-queue threads of gRPC's C core shared by all nodes of the factory.
    pub cq_threads: usize,
    /// Largest gRPC message accepted or sent (see [`Limits::grpc_message_limit`]).
    pub max_grpc_message_bytes: usize,
    /// HTTP/2 BDP probing, which grows the flow-control windows to the link's
    /// bandwidth-delay product. `None` (default): on for connections and listeners that are
    /// not on loopback, off on loopback. On a 100 ms link it moved a 16 MiB message in 1.4 s
    /// instead of 2.3 s; on loopback it made the seed round about 35% slower and doubled peak
    /// memory (docs/performance.md).
    pub http2_bdp_probe: Option<bool>,
    /// Initial HTTP/2 stream window in bytes (`None`: gRPC's default).
    pub stream_window_bytes: Option<u32>,
    /// Largest HTTP/2 frame in bytes (`None`: gRPC's default, 16 KiB). Default 1 MiB: on the
    /// seed benchmark it cut the round time by about 10% against gRPC's default.
    pub http2_max_frame_bytes: Option<u32>,
    /// How long a channel with no open streams is kept before it is closed.
    pub idle_channel_ttl: Duration,
    /// HTTP/2 keepalive: ping a connection after this long without traffic...
    pub keepalive_time: Duration,
    /// ...and declare it dead if the ping is not answered within this long. A dead TCP
    /// connection is so noticed within about `keepalive_time + keepalive_timeout`. This is
    /// for links to nodes of ours (and our server); see `original_keepalive_time`.
    pub keepalive_timeout: Duration,
    /// HTTP/2 keepalive toward original Go nodes (peers that announce no features): grpc-go's
    /// default server policy answers pings more frequent than every 5 minutes with `GOAWAY
    /// too_many_pings`, so links to them ping this rarely (default 6 minutes), and only while
    /// they have streams. A dead link to an original is still noticed within `ack_timeout`
    /// while messages to it are outstanding (the stall check).
    pub original_keepalive_time: Duration,
    /// TLS with mutual authentication for every channel and server of the factory (`None`:
    /// plaintext, logged as such when a node starts listening). The certificate is the
    /// nodes' identity, so nodes with different ids need factories of their own.
    pub tls: Option<TlsConfig>,
}

impl TransportConfig {
    /// Whether BDP probing is on for a connection to, or a listener on, `address`
    /// (`host:port`): as configured, else off exactly when the host is a loopback address or
    /// `localhost`.
    pub fn bdp_probe_for(&self, address: &str) -> bool {
        self.http2_bdp_probe
            .unwrap_or_else(|| !is_loopback(address))
    }
}

/// Whether `address` (`host:port`, `[v6]:port` or a bare host) names this machine's loopback,
/// without resolving names (only `localhost` is known by name).
fn is_loopback(address: &str) -> bool {
    if let Ok(a) = address.parse::<std::net::SocketAddr>() {
        return a.ip().is_loopback();
    }
    if let Ok(ip) = address.parse::<std::net::IpAddr>() {
        return ip.is_loopback();
    }
    let host = address
        .rsplit_once(':')
        .map_or(address, |(h, _)| h)
        .trim_start_matches('[')
        .trim_end_matches(']');
    host.eq_ignore_ascii_case("localhost")
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

impl TransportConfig {
    /// The defaults, with a gRPC message limit that fits the frames of nodes with `limits`
    /// ([`Limits::grpc_message_limit`]): what a factory for such nodes needs.
    pub fn for_limits(limits: &Limits) -> TransportConfig {
        TransportConfig {
            max_grpc_message_bytes: limits.grpc_message_limit(),
            ..TransportConfig::default()
        }
    }
}

impl Default for TransportConfig {
    fn default() -> Self {
        TransportConfig {
            cq_threads: 2,
            max_grpc_message_bytes: Limits::default().grpc_message_limit(),
            http2_bdp_probe: None,
            stream_window_bytes: None,
            http2_max_frame_bytes: Some(1024 * 1024),
            idle_channel_ttl: Duration::from_secs(60),
            keepalive_time: Duration::from_secs(2),
            keepalive_timeout: Duration::from_secs(2),
            original_keepalive_time: Duration::from_secs(6 * 60),
            tls: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_seed_like() {
        let c = NodeConfig::new("node-0", "127.0.0.1:0");
        c.validate().unwrap();
        assert_eq!(c.slots, 200);
        assert_eq!(c.ttl, Duration::from_secs(120));
        assert!(c.limits.max_payload_bytes >= 64 * 1024 * 1024);
    }

    #[test]
    fn bdp_probing_is_off_on_loopback_only_unless_set() {
        let mut t = TransportConfig::default();
        for local in [
            "127.0.0.1:7000",
            "[::1]:7000",
            "localhost:7000",
            "LOCALHOST",
            "::1",
        ] {
            assert!(!t.bdp_probe_for(local), "{local}");
        }
        for remote in [
            "10.0.0.1:7000",
            "[fe80::1]:7000",
            "node-3.example:7000",
            "0.0.0.0:7000",
        ] {
            assert!(t.bdp_probe_for(remote), "{remote}");
        }
        t.http2_bdp_probe = Some(true);
        assert!(t.bdp_probe_for("127.0.0.1:1"));
        t.http2_bdp_probe = Some(false);
        assert!(!t.bdp_probe_for("10.0.0.1:1"));
    }

    #[test]
    fn bad_fields_are_named() {
        let mut c = NodeConfig::new("node-0", "127.0.0.1:0");
        c.slots = 0;
        match c.validate() {
            Err(Error::Config { field, .. }) => assert_eq!(field, "slots"),
            other => panic!("{other:?}"),
        }
        let mut c = NodeConfig::new("", "127.0.0.1:0");
        c.slots = 1;
        assert!(matches!(
            c.validate(),
            Err(Error::Config { field: "id", .. })
        ));
        let mut c = NodeConfig::new("a", "x");
        c.limits.max_payload_bytes = usize::MAX;
        assert!(c.validate().is_err());
    }
}
