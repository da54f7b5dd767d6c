//! `gossip node`'s configuration: a TOML file (`--config`) and flags, flags winning, checked
//! at start with errors that name the field. `examples/node.toml` documents every key.

use std::net::ToSocketAddrs;
use std::path::{Path, PathBuf};
use std::time::Duration;

use grpc_gossip::transport::tls::TlsConfig;
use grpc_gossip::{Deliveries, Error, NeighborInfo, NodeConfig, TransportConfig};
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
    /// A neighbour as ID=HOST:PORT; repeat for each. Replaces the file's peers. Connection is
    /// retried until it is up; stdin is read once every peer is connected.
    #[arg(long = "peer", value_name = "ID=HOST:PORT", value_parser = parse_peer)]
    pub peers: Vec<(String, String)>,
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

fn parse_peer(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((id, addr)) if !id.is_empty() && !addr.is_empty() => Ok((id.into(), addr.into())),
        _ => Err(format!("{s:?}: expected ID=HOST:PORT")),
    }
}

/// The configuration file. Unknown keys are refused, so that a misspelt setting is not
/// silently ignored.
#[derive(Deserialize, Default, Debug)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    id: Option<String>,
    listen: Option<String>,
    log_level: Option<String>,
    metrics_addr: Option<String>,
    drain_timeout: Option<String>,
    deliver_dir: Option<PathBuf>,
    #[serde(default)]
    peers: Vec<FilePeer>,
    #[serde(default)]
    store: FileStore,
    #[serde(default)]
    limits: FileLimits,
    #[serde(default)]
    connection: FileConnection,
    #[serde(default)]
    broadcast: FileBroadcast,
    tls: Option<FileTls>,
}

#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
struct FilePeer {
    id: String,
    endpoint: String,
    /// What it takes in one gRPC message if it is an original Go node.
    max_message: Option<Size>,
}

#[derive(Deserialize, Default, Debug)]
#[serde(deny_unknown_fields)]
struct FileStore {
    slots: Option<usize>,
    ttl: Option<String>,
}

/// A size: a number of bytes, or text such as "64MiB".
#[derive(Deserialize, Debug, Clone)]
#[serde(untagged)]
enum Size {
    Bytes(u64),
    Text(String),
}

#[derive(Deserialize, Default, Debug)]
#[serde(deny_unknown_fields)]
struct FileLimits {
    max_payload: Option<Size>,
    max_message: Option<Size>,
    partial_budget: Option<Size>,
    peer_partial_budget: Option<Size>,
    peer_max_messages: Option<usize>,
    peer_max_bytes: Option<Size>,
    max_inbound_streams: Option<usize>,
    max_streams_per_peer: Option<usize>,
    original_max_message: Option<Size>,
}

#[derive(Deserialize, Default, Debug)]
#[serde(deny_unknown_fields)]
struct FileBroadcast {
    held_budget: Option<Size>,
}

#[derive(Deserialize, Default, Debug)]
#[serde(deny_unknown_fields)]
struct FileConnection {
    connect_timeout: Option<String>,
    ack_timeout: Option<String>,
    keepalive_time: Option<String>,
    keepalive_timeout: Option<String>,
    original_keepalive: Option<String>,
    reconnect_initial: Option<String>,
    reconnect_max: Option<String>,
    stream_window: Option<Size>,
    bdp_probe: Option<bool>,
}

#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
struct FileTls {
    ca: PathBuf,
    cert: PathBuf,
    key: PathBuf,
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

fn duration(field: &'static str, text: &Option<String>) -> Result<Option<Duration>, Error> {
    text.as_deref()
        .map(|t| humantime::parse_duration(t).map_err(|e| invalid(field, format!("{t:?}: {e}"))))
        .transpose()
}

fn size(field: &'static str, value: &Option<Size>) -> Result<Option<usize>, Error> {
    match value {
        None => Ok(None),
        Some(Size::Bytes(n)) => usize::try_from(*n)
            .map(Some)
            .map_err(|_| invalid(field, format!("{n} is too large"))),
        Some(Size::Text(t)) => parse_size(t).map(Some).map_err(|e| invalid(field, e)),
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
        let tls_config = tls(&args, file.tls)?;
        let id = args
            .id
            .or(file.id)
            .ok_or_else(|| invalid("id", "is required (--id or `id` in the file)"))?;
        let listen = args
            .listen
            .or(file.listen)
            .unwrap_or_else(|| "127.0.0.1:0".into());
        let mut node = NodeConfig::new(id, listen);
        if let Some(slots) = args.slots.or(file.store.slots) {
            node.slots = slots;
            node.peer_max_messages = node.peer_max_messages.min(slots);
        }
        if let Some(ttl) = args.ttl.or(duration("store.ttl", &file.store.ttl)?) {
            node.ttl = ttl;
        }
        if let Some(max) = args
            .max_payload
            .or(size("limits.max_payload", &file.limits.max_payload)?)
        {
            node.limits.max_payload_bytes = max;
        }
        let limits = &file.limits;
        if let Some(n) = size("limits.max_message", &limits.max_message)? {
            node.limits.max_message_bytes = n;
        }
        if let Some(n) = size("limits.partial_budget", &limits.partial_budget)? {
            node.limits.partial_bytes = n;
            // The share defaults to the whole budget.
            node.limits.peer_partial_bytes = n;
        }
        if let Some(n) = size("limits.peer_partial_budget", &limits.peer_partial_budget)? {
            node.limits.peer_partial_bytes = n;
        }
        if let Some(n) = file.limits.peer_max_messages {
            node.peer_max_messages = n;
        }
        if let Some(n) = size("limits.peer_max_bytes", &file.limits.peer_max_bytes)? {
            node.peer_max_bytes = n;
        }
        if let Some(n) = size("limits.original_max_message", &limits.original_max_message)? {
            node.original_max_message_bytes = n;
        }
        if let Some(n) = file.limits.max_inbound_streams {
            node.max_inbound_streams = n;
        }
        if let Some(n) = file.limits.max_streams_per_peer {
            node.max_streams_per_peer = n;
        }
        if let Some(n) = size("broadcast.held_budget", &file.broadcast.held_budget)? {
            node.broadcast.max_held_bytes = n;
        }
        let c = &file.connection;
        if let Some(d) = duration("connection.connect_timeout", &c.connect_timeout)? {
            node.connect_timeout = d;
        }
        if let Some(d) = duration("connection.ack_timeout", &c.ack_timeout)? {
            node.ack_timeout = d;
        }
        if let Some(d) = duration("connection.reconnect_initial", &c.reconnect_initial)? {
            node.reconnect.initial = d;
        }
        if let Some(d) = duration("connection.reconnect_max", &c.reconnect_max)? {
            node.reconnect.max = d;
        }
        node.validate().map_err(as_operator_key)?;

        let mut transport = TransportConfig::for_limits(&node.limits);
        if let Some(d) = duration("connection.keepalive_time", &c.keepalive_time)? {
            transport.keepalive_time = d;
        }
        if let Some(d) = duration("connection.keepalive_timeout", &c.keepalive_timeout)? {
            transport.keepalive_timeout = d;
        }
        if let Some(d) = duration("connection.original_keepalive", &c.original_keepalive)? {
            transport.original_keepalive_time = d;
        }
        if let Some(w) = size("connection.stream_window", &c.stream_window)? {
            let w = u32::try_from(w)
                .ok()
                .filter(|w| (65_535..=i32::MAX as u32).contains(w))
                .ok_or_else(|| {
                    invalid(
                        "connection.stream_window",
                        format!("{w} is outside 64KiB - 1 ..= 2GiB - 1"),
                    )
                })?;
            transport.stream_window_bytes = Some(w);
        }
        if let Some(probe) = c.bdp_probe {
            transport.http2_bdp_probe = Some(probe);
        }
        for (field, d) in [
            ("connection.keepalive_time", transport.keepalive_time),
            ("connection.keepalive_timeout", transport.keepalive_timeout),
            (
                "connection.original_keepalive",
                transport.original_keepalive_time,
            ),
        ] {
            if d.is_zero() {
                return Err(invalid(field, "must be > 0"));
            }
        }
        transport.tls = tls_config;

        let peers = if args.peers.is_empty() {
            let mut peers = Vec::new();
            for p in file.peers {
                let mut info = NeighborInfo::new(p.id, p.endpoint);
                info.max_message = size("peers.max_message", &p.max_message)?;
                if info.max_message == Some(0) {
                    let why = format!("peer {:?}: must be > 0", info.node_hash);
                    return Err(invalid("peers.max_message", why));
                }
                peers.push(info);
            }
            peers
        } else {
            let peers = args.peers.into_iter();
            peers
                .map(|(id, addr)| NeighborInfo::new(id, addr))
                .collect()
        };
        check_peers(&node.id, &peers)?;

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
            .or(duration("drain_timeout", &file.drain_timeout)?)
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
fn tls(args: &NodeArgs, file: Option<FileTls>) -> Result<Option<TlsConfig>, Error> {
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
        let file = FileConfig { tls: None, ..file };
        let s = Settings::merge(NodeArgs::default(), file).unwrap();
        assert_eq!(s.node.id, "n1");
        assert_eq!(s.peers.len(), 2);
        assert_eq!(s.peers[0].max_message, None);
        assert_eq!(s.peers[1].max_message, Some(16 << 20));
        assert_eq!(s.node.limits.max_payload_bytes, 64 << 20);
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
            peers: vec![("c".into(), "127.0.0.1:7002".into())],
            ..NodeArgs::default()
        };
        let s = Settings::merge(args, file).unwrap();
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

    #[test]
    fn bad_values_name_their_field() {
        let with = |text: &str| Settings::merge(NodeArgs::default(), parse(text).unwrap());
        assert_eq!(field_of(with("listen = \"x\"")), "id");
        assert_eq!(
            field_of(with("id = \"a\"\n[store]\nslots = 0")),
            "store.slots (--slots)"
        );
        assert_eq!(field_of(with("id = \"a b\"")), "id (--id)");
        assert_eq!(
            field_of(with("id = \"a\"\n[store]\nttl = \"soon\"")),
            "store.ttl"
        );
        assert_eq!(
            field_of(with("id = \"a\"\n[limits]\nmax_payload = \"lots\"")),
            "limits.max_payload"
        );
        assert_eq!(
            field_of(with(
                "id = \"a\"\n[[peers]]\nid = \"b\"\nendpoint = \"nowhere\""
            )),
            "peers.endpoint"
        );
        assert_eq!(
            field_of(with(
                "id = \"a\"\n[[peers]]\nid = \"a\"\nendpoint = \"h:1\""
            )),
            "peers.id"
        );
        assert_eq!(
            field_of(with(
                "id = \"a\"\n[[peers]]\nid = \"b\"\nendpoint = \"h:1\"\nmax_message = 0"
            )),
            "peers.max_message"
        );
        assert_eq!(
            field_of(with(
                "id = \"a\"\n[[peers]]\nid = \"b\"\nendpoint = \"h:1\"\nmax_message = \"big\""
            )),
            "peers.max_message"
        );
        assert_eq!(
            field_of(with("id = \"a\"\nlog_level = \"loud\"")),
            "log_level"
        );
        assert_eq!(
            field_of(with("id = \"a\"\n[connection]\nkeepalive_time = \"0s\"")),
            "connection.keepalive_time"
        );
        assert_eq!(
            field_of(with("id = \"a\"\n[connection]\nstream_window = \"1KiB\"")),
            "connection.stream_window"
        );
        assert_eq!(
            field_of(with(
                "id = \"a\"\n[tls]\nca = \"/nonexistent/ca.pem\"\ncert = \"c\"\nkey = \"k\""
            )),
            "tls.ca"
        );
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
