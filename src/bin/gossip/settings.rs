//! `gossip node`'s configuration: a TOML file (`--config`) and flags, flags winning, checked
//! at start with errors that name the field. `examples/node.toml` documents every key.

use std::net::ToSocketAddrs;
use std::path::{Path, PathBuf};
use std::time::Duration;

use grpc_gossip::config::file::{duration_of, Key, NodeFile, Parse, TlsFiles, KEYS as NODE_KEYS};
use grpc_gossip::transport::tls::TlsConfig;
use grpc_gossip::{Deliveries, Error, MembershipConfig, NeighborInfo, NodeConfig, TransportConfig};
use serde::de::{Deserializer, MapAccess, Visitor};
use serde::Deserialize;

use crate::parse_size;

/// How many delivered messages may wait to be printed or written to `deliver_dir` (each is
/// held in memory until then, and only then ACKed).
pub(crate) const UNCONFIRMED_DELIVERIES: usize = 64;

/// Arguments of `gossip node`. Each one overrides the same setting of the `--config` file.
#[derive(clap::Args, Default)]
pub(crate) struct NodeArgs {
    /// TOML configuration file (see examples/node.toml); flags override its settings.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// This node's id (with TLS: the DNS name its certificate carries).
    #[arg(long)]
    pub id: Option<String>,
    /// Address to listen on [default: 127.0.0.1:0; port 0 picks one, printed at start].
    #[arg(long)]
    pub listen: Option<String>,
    /// A neighbour as ID=HOST:PORT, or HOST:PORT alone to learn its id from its handshake
    /// (plaintext only; an original Go node must be named); repeat for each. Replaces the
    /// file's peers. Connection is retried until it is up.
    #[arg(long = "peer", value_name = "[ID=]HOST:PORT", value_parser = parse_peer)]
    pub peers: Vec<(Option<String>, String)>,
    /// Join a cluster through these seeds: HOST:PORT (a name may resolve to several
    /// addresses, each tried) or ID=HOST:PORT, comma-separated or repeated. Retried with
    /// backoff until one answers; a seed that is this node is skipped. Turns membership on.
    #[arg(long, value_name = "[ID=]HOST:PORT", value_delimiter = ',')]
    pub join: Vec<String>,
    /// Run membership without joining anyone: this node is the first member, the others
    /// --join through it.
    #[arg(long)]
    pub membership: bool,
    /// The address other members reach this node at [default: the listening address].
    #[arg(long, value_name = "HOST:PORT")]
    pub advertise: Option<String>,
    /// Members in the active view (the links membership holds) [default: 5].
    #[arg(long, value_name = "N")]
    pub active_view: Option<usize>,
    /// Members in the passive view (known, to repair the active one) [default: 30].
    #[arg(long, value_name = "N")]
    pub passive_view: Option<usize>,
    /// How often the views are shuffled and the member list compared with a random member
    /// [default: 10s].
    #[arg(long, value_parser = humantime::parse_duration)]
    pub shuffle_period: Option<Duration>,
    /// A member suspected by one member alone fails after this long unless it refutes
    /// [default: 10s].
    #[arg(long, value_parser = humantime::parse_duration)]
    pub suspect_timeout: Option<Duration>,
    /// Store slots (messages in flight at once) [default: 200].
    #[arg(long)]
    pub slots: Option<usize>,
    /// Store TTL: how long a message waits for its ACK [default: 120s].
    #[arg(long, value_parser = humantime::parse_duration)]
    pub ttl: Option<Duration>,
    /// Largest payload sent or accepted [default: 64MiB].
    #[arg(long, value_parser = parse_size)]
    pub max_payload: Option<usize>,
    /// Serve Prometheus metrics on http://ADDR/metrics.
    #[arg(long, value_name = "ADDR")]
    pub metrics_addr: Option<String>,
    /// Log level (error, warn, info, debug, trace) [default: info]; RUST_LOG overrides it.
    #[arg(long)]
    pub log_level: Option<String>,
    /// On SIGTERM / Ctrl-C, wait up to this long for in-flight messages to complete
    /// [default: 10s]; a second signal stops at once.
    #[arg(long, value_parser = humantime::parse_duration)]
    pub drain_timeout: Option<Duration>,
    /// Write each delivered payload to DIR/ORIGIN.HASH (synced) and ACK it only then, instead
    /// of a text preview on stdout.
    #[arg(long, value_name = "DIR")]
    pub deliver_dir: Option<PathBuf>,
    /// CA certificate (PEM) that peers' certificates must chain to; with --tls-cert and
    /// --tls-key turns mutual TLS on.
    #[arg(long, value_name = "FILE")]
    pub tls_ca: Option<PathBuf>,
    /// This node's certificate (PEM), its SAN being the node id.
    #[arg(long, value_name = "FILE")]
    pub tls_cert: Option<PathBuf>,
    /// This node's private key (PEM).
    #[arg(long, value_name = "FILE")]
    pub tls_key: Option<PathBuf>,
    /// Exit once stdin is closed and every message sent has completed.
    #[arg(long)]
    pub exit_when_done: bool,
    /// Start every stdout line with its RFC 3339 time (UTC, milliseconds).
    #[arg(long)]
    pub timestamps: bool,
}

/// Membership from the file's `[membership]` (`base`) and the flags over it: on with the
/// section, --join or --membership.
fn membership(
    args: &NodeArgs,
    base: Option<MembershipConfig>,
) -> Result<Option<MembershipConfig>, Error> {
    let tuned = args.advertise.is_some()
        || args.active_view.is_some()
        || args.passive_view.is_some()
        || args.shuffle_period.is_some()
        || args.suspect_timeout.is_some();
    if args.join.is_empty() && !args.membership && base.is_none() {
        if tuned {
            return Err(invalid(
                "membership",
                "--advertise, --active-view, --passive-view, --shuffle-period and \
                 --suspect-timeout need --join, --membership or a [membership] section",
            ));
        }
        return Ok(None);
    }
    let mut m = base.unwrap_or_default();
    if !args.join.is_empty() {
        m.seeds = args.join.clone();
    }
    if args.advertise.is_some() {
        m.advertise = args.advertise.clone();
    }
    if let Some(n) = args.active_view {
        m.views.active = n;
    }
    if let Some(n) = args.passive_view {
        m.views.passive = n;
    }
    if let Some(d) = args.shuffle_period {
        m.views.shuffle_period = d;
    }
    if let Some(d) = args.suspect_timeout {
        m.list.suspect_timeout = d;
    }
    Ok(Some(m))
}

fn parse_peer(s: &str) -> Result<(Option<String>, String), String> {
    match s.split_once('=') {
        Some((id, addr)) if !id.is_empty() && !addr.is_empty() => {
            Ok((Some(id.into()), addr.into()))
        }
        None if !s.is_empty() => Ok((None, s.into())),
        _ => Err(format!("{s:?}: expected ID=HOST:PORT or HOST:PORT")),
    }
}

/// The configuration file: the node's keys ([`NodeFile`], read straight into the library's
/// configuration) and the four of the process. Unknown keys are refused by name, so that a
/// misspelt setting is not silently ignored.
#[derive(Default, Debug)]
struct FileConfig {
    node: NodeFile,
    log_level: Option<String>,
    metrics_addr: Option<String>,
    drain_timeout: Option<Duration>,
    deliver_dir: Option<PathBuf>,
}

/// The keys `gossip node` adds to the node's.
const PROCESS_KEYS: &[&str] = &["log_level", "metrics_addr", "drain_timeout", "deliver_dir"];

impl<'de> Deserialize<'de> for FileConfig {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<FileConfig, D::Error> {
        struct Top;
        impl<'de> Visitor<'de> for Top {
            type Value = FileConfig;

            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a gossip node configuration")
            }

            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<FileConfig, A::Error> {
                let mut file = FileConfig::default();
                let key_of = Key {
                    known: NODE_KEYS,
                    also: PROCESS_KEYS,
                    section: "",
                };
                while let Some(key) = map.next_key_seed(key_of.clone())? {
                    match key.as_str() {
                        "log_level" => file.log_level = Some(map.next_value()?),
                        "metrics_addr" => file.metrics_addr = Some(map.next_value()?),
                        "deliver_dir" => file.deliver_dir = Some(map.next_value()?),
                        "drain_timeout" => {
                            let key = "drain_timeout";
                            let seed = Parse {
                                key,
                                parse: duration_of,
                            };
                            file.drain_timeout = Some(map.next_value_seed(seed)?);
                        }
                        // `Key` lets through only ours and the node's.
                        _ => {
                            file.node.take(&key, &mut map)?;
                        }
                    }
                }
                Ok(file)
            }
        }
        deserializer.deserialize_map(Top)
    }
}

/// Everything `gossip node` runs with, checked.
#[derive(Debug)]
pub(crate) struct Settings {
    /// The node's configuration.
    pub node: NodeConfig,
    /// Its transport (TLS among it).
    pub transport: TransportConfig,
    /// Neighbours.
    pub peers: Vec<NeighborInfo>,
    /// Neighbours given by address alone (`--peer HOST:PORT`): their ids come from their
    /// handshakes.
    pub peers_by_address: Vec<String>,
    /// Where to serve metrics.
    pub metrics_addr: Option<String>,
    /// Log filter.
    pub log_level: String,
    /// How long a drain may take.
    pub drain_timeout: Duration,
    /// Where deliveries are written as files.
    pub deliver_dir: Option<PathBuf>,
    /// Exit once stdin is closed and everything sent has completed.
    pub exit_when_done: bool,
    /// Prefix stdout lines with their time.
    pub timestamps: bool,
}

/// Renames a library configuration error's field to the flag and key an operator sets.
fn as_operator_key(e: Error) -> Error {
    let Error::Config { field, reason } = e else {
        return e;
    };
    let field = match field {
        "id" => "id (--id)",
        "slots" => "store.slots (--slots)",
        "ttl" => "store.ttl (--ttl)",
        "max_payload_bytes" | "limits.max_payload_bytes" => "limits.max_payload (--max-payload)",
        "max_message_bytes" => "limits.max_message",
        "partial_bytes" => "limits.partial_budget",
        "peer_partial_bytes" => "limits.peer_partial_budget",
        "peer_max_messages" => "limits.peer_max_messages",
        "peer_max_bytes" => "limits.peer_max_bytes",
        "max_inbound_streams" => "limits.max_inbound_streams",
        "original_max_message_bytes" => "limits.original_max_message",
        "max_streams_per_peer" => "limits.max_streams_per_peer",
        "broadcast.max_held_bytes" | "max_held_bytes" => "broadcast.held_budget",
        "connect_timeout" => "connection.connect_timeout",
        "ack_timeout" => "connection.ack_timeout",
        "reconnect.max" => "connection.reconnect_max",
        other => other,
    };
    Error::Config { field, reason }
}

fn invalid(field: &'static str, reason: impl Into<String>) -> Error {
    Error::Config {
        field,
        reason: reason.into(),
    }
}

/// Reads and parses the configuration file.
fn read_file(path: &Path) -> Result<FileConfig, Error> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| invalid("config", format!("{}: {e}", path.display())))?;
    // toml's message names the offending key and shows the line.
    toml::from_str(&text).map_err(|e| invalid("config", format!("{}: {e}", path.display())))
}

impl Settings {
    /// Merges the file named by `--config` (if any) with the flags, flags winning, and checks
    /// the result.
    pub(crate) fn resolve(args: NodeArgs) -> Result<Settings, Error> {
        let file = match &args.config {
            Some(path) => read_file(path)?,
            None => FileConfig::default(),
        };
        Settings::merge(args, file)
    }

    fn merge(args: NodeArgs, file: FileConfig) -> Result<Settings, Error> {
        let membership_config = membership(&args, file.node.node.membership.clone())?;
        let tls_config = tls(&args, file.node.tls.clone())?;
        let sets_peer_max_messages = file.node.sets_peer_max_messages();
        let (mut node, mut transport) = file.node.configs();
        // Flags win over the file.
        if let Some(id) = args.id {
            node.id = id;
        }
        if node.id.is_empty() {
            return Err(invalid("id", "is required (--id or `id` in the file)"));
        }
        if let Some(listen) = args.listen {
            node.listen = listen;
        }
        if let Some(slots) = args.slots {
            node.slots = slots;
            if !sets_peer_max_messages {
                let default = NodeConfig::new("", "").peer_max_messages;
                node.peer_max_messages = default.min(slots);
            }
        }
        if let Some(ttl) = args.ttl {
            node.ttl = ttl;
        }
        if let Some(max) = args.max_payload {
            node.limits.max_payload_bytes = max;
        }
        node.validate().map_err(as_operator_key)?;
        // The gRPC message limit follows the limits, flags among them.
        transport.max_grpc_message_bytes = node.limits.grpc_message_limit();
        transport.tls = tls_config;

        let (peers, peers_by_address) = if args.peers.is_empty() {
            (file.node.peers, Vec::new())
        } else {
            let (named, by_address): (Vec<_>, Vec<_>) =
                args.peers.into_iter().partition(|(id, _)| id.is_some());
            let named = named
                .into_iter()
                .filter_map(|(id, addr)| id.map(|id| NeighborInfo::new(id, addr)))
                .collect();
            (
                named,
                by_address.into_iter().map(|(_, addr)| addr).collect(),
            )
        };
        check_peers(&node.id, &peers)?;
        node.membership = membership_config;
        if let Some(m) = &node.membership {
            let by_address = m.seeds.iter().find(|s| !s.contains('='));
            if let (Some(seed), Some(_)) = (by_address, &transport.tls) {
                return Err(invalid(
                    "join",
                    format!(
                        "{seed}: with TLS a seed is dialled by its id (--join ID={seed}), \
                         which its certificate must carry"
                    ),
                ));
            }
        }
        node.validate().map_err(as_operator_key)?;
        if let (Some(addr), Some(_)) = (peers_by_address.first(), &transport.tls) {
            return Err(invalid(
                "peer",
                format!(
                    "{addr}: with TLS a neighbour is dialled by its id (--peer ID={addr}), \
                     which its certificate must carry"
                ),
            ));
        }

        let metrics_addr = args.metrics_addr.or(file.metrics_addr);
        if let Some(addr) = &metrics_addr {
            addr.to_socket_addrs()
                .map_err(|e| invalid("metrics_addr", format!("{addr:?}: {e}")))?;
        }
        let log_level = args
            .log_level
            .or(file.log_level)
            .unwrap_or_else(|| "info".into());
        check_log_level(&log_level)?;
        let drain_timeout = args
            .drain_timeout
            .or(file.drain_timeout)
            .unwrap_or(Duration::from_secs(10));
        let deliver_dir = args.deliver_dir.or(file.deliver_dir);
        if let Some(dir) = &deliver_dir {
            std::fs::create_dir_all(dir)
                .map_err(|e| invalid("deliver_dir", format!("{}: {e}", dir.display())))?;
        }
        // A message is ACKed only once it is printed (or, with deliver_dir, on disk).
        node.deliveries = Deliveries::Confirmed(UNCONFIRMED_DELIVERIES);
        Ok(Settings {
            node,
            transport,
            peers,
            peers_by_address,
            metrics_addr,
            log_level,
            drain_timeout,
            deliver_dir,
            exit_when_done: args.exit_when_done,
            timestamps: args.timestamps,
        })
    }
}

/// TLS from the flags (all three, each overriding the file's) or the `[tls]` section.
fn tls(args: &NodeArgs, file: Option<TlsFiles>) -> Result<Option<TlsConfig>, Error> {
    let (ca, cert, key) = match file {
        Some(f) => (Some(f.ca), Some(f.cert), Some(f.key)),
        None => (None, None, None),
    };
    let ca = args.tls_ca.clone().or(ca);
    let cert = args.tls_cert.clone().or(cert);
    let key = args.tls_key.clone().or(key);
    match (ca, cert, key) {
        (None, None, None) => Ok(None),
        (Some(ca), Some(cert), Some(key)) => TlsConfig::from_files(ca, cert, key).map(Some),
        (ca, cert, _) => {
            let missing = if ca.is_none() {
                "tls.ca"
            } else if cert.is_none() {
                "tls.cert"
            } else {
                "tls.key"
            };
            Err(invalid(
                missing,
                "is required with TLS (set tls.ca, tls.cert and tls.key together)",
            ))
        }
    }
}

fn check_peers(local: &str, peers: &[NeighborInfo]) -> Result<(), Error> {
    let mut seen = std::collections::HashSet::new();
    for (i, peer) in peers.iter().enumerate() {
        let (id, endpoint) = (&peer.node_hash, &peer.endpoint);
        if id.is_empty() {
            return Err(invalid(
                "peers.id",
                format!("peer #{} has an empty id", i + 1),
            ));
        }
        if id == local {
            return Err(invalid("peers.id", format!("{id:?} is this node's own id")));
        }
        if !seen.insert(id) {
            return Err(invalid("peers.id", format!("{id:?} is listed twice")));
        }
        let port = endpoint.rsplit_once(':').map(|(_, p)| p.parse::<u16>());
        if !matches!(port, Some(Ok(p)) if p > 0) {
            return Err(invalid(
                "peers.endpoint",
                format!("{endpoint:?} (peer {id:?}) is not HOST:PORT"),
            ));
        }
    }
    Ok(())
}

fn check_log_level(level: &str) -> Result<(), Error> {
    // A filter like "info,grpc_gossip=debug" is fine too: check each directive's level.
    for directive in level.split(',') {
        let lvl = directive.rsplit('=').next().unwrap_or("").trim();
        if lvl.parse::<log::LevelFilter>().is_err() {
            return Err(invalid(
                "log_level",
                format!("{lvl:?} is not one of off, error, warn, info, debug, trace"),
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<FileConfig, toml::de::Error> {
        toml::from_str(text)
    }

    fn field_of(r: Result<Settings, Error>) -> &'static str {
        match r {
            Err(Error::Config { field, .. }) => field,
            other => panic!("expected a config error, got {other:?}"),
        }
    }

    #[test]
    fn the_example_file_parses_and_validates() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/node.toml");
        let file = read_file(&path).unwrap();
        // The example's TLS files live elsewhere; everything else must hold.
        let mut file = file;
        file.node.tls = None;
        let s = Settings::merge(NodeArgs::default(), file).unwrap();
        assert_eq!(s.node.id, "n1");
        assert_eq!(s.peers.len(), 2);
        assert_eq!(s.peers[0].max_message, None);
        assert_eq!(s.peers[1].max_message, Some(16 << 20));
        assert_eq!(s.node.limits.max_payload_bytes, 64 << 20);
    }

    #[test]
    fn membership_comes_from_the_section_and_the_flags_over_it() {
        let file =
            parse("id = \"a\"\n[membership]\njoin = [\"seed:1\"]\nactive_view = 4\n").unwrap();
        let args = NodeArgs {
            join: vec!["other:2".into()],
            passive_view: Some(12),
            ..NodeArgs::default()
        };
        let m = Settings::merge(args, file)
            .unwrap()
            .node
            .membership
            .unwrap();
        assert_eq!(m.seeds, ["other:2"]);
        assert_eq!((m.views.active, m.views.passive), (4, 12));
        let plain = parse("id = \"a\"").unwrap();
        assert!(Settings::merge(NodeArgs::default(), plain)
            .unwrap()
            .node
            .membership
            .is_none());
        let lonely = NodeArgs {
            id: Some("a".into()),
            advertise: Some("10.0.0.1:1".into()),
            ..NodeArgs::default()
        };
        assert_eq!(
            field_of(Settings::merge(lonely, FileConfig::default())),
            "membership"
        );
        let first = NodeArgs {
            id: Some("a".into()),
            membership: true,
            ..NodeArgs::default()
        };
        let m = Settings::merge(first, FileConfig::default())
            .unwrap()
            .node
            .membership;
        assert!(m.unwrap().seeds.is_empty());
    }

    #[test]
    fn flags_win_over_the_file() {
        let file = parse(
            r#"
            id = "from-file"
            listen = "127.0.0.1:7000"
            [store]
            slots = 50
            ttl = "30s"
            [[peers]]
            id = "b"
            endpoint = "127.0.0.1:7001"
            "#,
        )
        .unwrap();
        let args = NodeArgs {
            id: Some("from-flag".into()),
            ttl: Some(Duration::from_secs(5)),
            peers: vec![
                (Some("c".into()), "127.0.0.1:7002".into()),
                (None, "seed.example:7003".into()),
            ],
            ..NodeArgs::default()
        };
        let s = Settings::merge(args, file).unwrap();
        assert_eq!(s.peers_by_address, ["seed.example:7003"]);
        assert_eq!(s.node.id, "from-flag");
        assert_eq!(s.node.listen, "127.0.0.1:7000");
        assert_eq!(s.node.slots, 50);
        assert_eq!(s.node.ttl, Duration::from_secs(5));
        assert_eq!(s.peers, vec![NeighborInfo::new("c", "127.0.0.1:7002")]);
    }

    #[test]
    fn http2_settings_reach_the_transport() {
        let file = parse("id = \"a\"\n[connection]\nbdp_probe = false\nstream_window = \"8MiB\"\n");
        let s = Settings::merge(NodeArgs::default(), file.unwrap()).unwrap();
        assert_eq!(s.transport.http2_bdp_probe, Some(false));
        assert_eq!(s.transport.stream_window_bytes, Some(8 << 20));
        let s = Settings::merge(NodeArgs::default(), parse("id = \"a\"").unwrap()).unwrap();
        assert_eq!(s.transport.http2_bdp_probe, None, "auto unless set");
    }

    #[test]
    fn stream_caps_and_the_broadcast_budget_reach_the_node() {
        let file = parse(
            "id = \"a\"\n[limits]\nmax_inbound_streams = 32\nmax_streams_per_peer = 4\n\
             [broadcast]\nheld_budget = \"16MiB\"\n",
        );
        let s = Settings::merge(NodeArgs::default(), file.unwrap()).unwrap();
        assert_eq!(s.node.max_inbound_streams, 32);
        assert_eq!(s.node.max_streams_per_peer, 4);
        assert_eq!(s.node.broadcast.max_held_bytes, 16 << 20);
        let with = |text: &str| Settings::merge(NodeArgs::default(), parse(text).unwrap());
        assert_eq!(
            field_of(with("id = \"a\"\n[broadcast]\nheld_budget = 0")),
            "broadcast.held_budget"
        );
        assert_eq!(
            field_of(with("id = \"a\"\n[limits]\nmax_inbound_streams = 0")),
            "limits.max_inbound_streams"
        );
    }

    #[test]
    fn unknown_keys_are_refused_by_name() {
        let err = parse("id = \"a\"\n[store]\nsltos = 5\n").unwrap_err();
        assert!(err.to_string().contains("sltos"), "{err}");
    }

    /// What a file's error names: the field of a configuration error, or the whole message
    /// of a parse error (which names the key, and the line).
    fn named(text: &str) -> String {
        match parse(text) {
            Ok(file) => field_of(Settings::merge(NodeArgs::default(), file)).to_string(),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn bad_values_name_their_field() {
        for (text, key) in [
            ("listen = \"x\"", "id"),
            ("id = \"a\"\n[store]\nslots = 0", "store.slots (--slots)"),
            ("id = \"a b\"", "id (--id)"),
            ("id = \"a\"\n[store]\nttl = \"soon\"", "store.ttl"),
            (
                "id = \"a\"\n[limits]\nmax_payload = \"lots\"",
                "limits.max_payload",
            ),
            (
                "id = \"a\"\n[[peers]]\nid = \"b\"\nendpoint = \"nowhere\"",
                "peers.endpoint",
            ),
            (
                "id = \"a\"\n[[peers]]\nid = \"a\"\nendpoint = \"h:1\"",
                "peers.id",
            ),
            (
                "id = \"a\"\n[[peers]]\nid = \"b\"\nendpoint = \"h:1\"\nmax_message = 0",
                "peers.max_message",
            ),
            (
                "id = \"a\"\n[[peers]]\nid = \"b\"\nendpoint = \"h:1\"\nmax_message = \"big\"",
                "peers.max_message",
            ),
            ("id = \"a\"\nlog_level = \"loud\"", "log_level"),
            ("id = \"a\"\ndrain_timeout = \"later\"", "drain_timeout"),
            (
                "id = \"a\"\n[connection]\nkeepalive_time = \"0s\"",
                "connection.keepalive_time",
            ),
            (
                "id = \"a\"\n[connection]\nstream_window = \"1KiB\"",
                "connection.stream_window",
            ),
            (
                "id = \"a\"\n[tls]\nca = \"/nonexistent/ca.pem\"\ncert = \"c\"\nkey = \"k\"",
                "tls.ca",
            ),
        ] {
            let named = named(text);
            assert!(named.contains(key), "{text:?}: {named}");
        }
        let half_tls = NodeArgs {
            id: Some("a".into()),
            tls_ca: Some("/x".into()),
            ..NodeArgs::default()
        };
        assert_eq!(
            field_of(Settings::merge(half_tls, FileConfig::default())),
            "tls.cert"
        );
    }

    #[test]
    fn flag_slots_bound_the_per_peer_share_unless_the_file_sets_it() {
        let args = || NodeArgs {
            slots: Some(100),
            ..NodeArgs::default()
        };
        let s = Settings::merge(args(), parse("id = \"a\"\n[store]\nslots = 50").unwrap());
        assert_eq!(s.unwrap().node.peer_max_messages, 100);
        let text = "id = \"a\"\n[limits]\npeer_max_messages = 30";
        let s = Settings::merge(args(), parse(text).unwrap()).unwrap();
        assert_eq!((s.node.slots, s.node.peer_max_messages), (100, 30));
    }

    #[test]
    fn sizes_are_numbers_or_text() {
        let s = Settings::merge(
            NodeArgs::default(),
            parse("id = \"a\"\n[limits]\nmax_payload = 1048576\npeer_max_bytes = \"8MiB\"")
                .unwrap(),
        )
        .unwrap();
        assert_eq!(s.node.limits.max_payload_bytes, 1 << 20);
        assert_eq!(s.node.peer_max_bytes, 8 << 20);
    }
}
