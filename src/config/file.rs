//! A node's settings as an operator writes them (feature `config-file`): the TOML layout of
//! `gossip node --config` (`examples/node.toml`), read straight into [`NodeConfig`],
//! [`TransportConfig`] and the neighbours' [`NeighborInfo`]. Each key is named once, in
//! [`NodeFile::take`]'s table, beside the field it sets; sizes are bytes or text such as
//! `"64MiB"`, durations text such as `"30s"`, and unknown keys are refused by name.
//!
//! ```
//! use grpc_gossip::config::file::NodeFile;
//!
//! let file: NodeFile = toml::from_str(r#"
//!     id = "n1"
//!     listen = "0.0.0.0:7000"
//!     [store]
//!     slots = 50
//!     ttl = "30s"
//!     [[peers]]
//!     id = "n2"
//!     endpoint = "10.0.0.2:7000"
//! "#).unwrap();
//! let (node, transport) = file.configs();
//! assert_eq!(node.slots, 50);
//! assert_eq!(transport.max_grpc_message_bytes, node.limits.grpc_message_limit());
//!
//! let err = toml::from_str::<NodeFile>("[store]\nttl = \"soon\"").unwrap_err();
//! assert!(err.to_string().contains("store.ttl"), "{err}");
//! ```
//!
//! A program with keys of its own (as `gossip node` has `log_level`) reads the top level
//! itself and hands every other key to [`NodeFile::take`].

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, Visitor};
use serde::Deserialize;

use super::{NodeConfig, TransportConfig};
use crate::neighbor::NeighborInfo;

/// The top-level keys [`NodeFile::take`] knows.
pub const KEYS: &[&str] = &[
    "id",
    "listen",
    "peers",
    "store",
    "limits",
    "connection",
    "broadcast",
    "membership",
    "tls",
];

/// The TLS files named by the `[tls]` section (read and checked by
/// [`TlsConfig::from_files`](crate::transport::tls::TlsConfig::from_files)).
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsFiles {
    /// The CA certificate (PEM) peers' certificates must chain to.
    pub ca: PathBuf,
    /// This node's certificate (PEM).
    pub cert: PathBuf,
    /// This node's private key (PEM).
    pub key: PathBuf,
}

/// What a configuration file sets. Settings it leaves out keep their defaults; `node.id` is
/// empty and `node.listen` is `127.0.0.1:0` unless it names them.
#[derive(Clone, Debug)]
pub struct NodeFile {
    /// The node's configuration.
    pub node: NodeConfig,
    /// Transport settings; its gRPC message limit follows `node.limits` (see
    /// [`NodeFile::configs`]).
    pub transport: TransportConfig,
    /// The `[[peers]]`.
    pub peers: Vec<NeighborInfo>,
    /// The `[tls]` section.
    pub tls: Option<TlsFiles>,
    /// Whether the file set `limits.peer_max_messages` (otherwise it follows `store.slots`).
    peer_max_messages_set: bool,
}

impl Default for NodeFile {
    fn default() -> NodeFile {
        let node = NodeConfig::new("", "127.0.0.1:0");
        NodeFile {
            transport: TransportConfig::for_limits(&node.limits),
            node,
            peers: Vec::new(),
            tls: None,
            peer_max_messages_set: false,
        }
    }
}

/// A size: a number of bytes, or text such as "64MiB".
#[derive(Deserialize)]
#[serde(untagged)]
enum Size {
    Bytes(u64),
    Text(String),
}

/// Parses a size such as `"64MiB"`, `"512 KiB"` or `"1048576"`.
pub fn parse_size(text: &str) -> Result<usize, String> {
    let size: bytesize::ByteSize = text.trim().parse().map_err(|e| format!("{text:?}: {e}"))?;
    usize::try_from(size.as_u64()).map_err(|_| format!("{text:?} is too large"))
}

/// Reads a value as `V` and turns it into `T` with `parse`, failing with `key` named. The
/// parse runs inside the deserializer, so that a format that knows where values are (toml)
/// points at this one.
#[derive(Debug)]
pub struct Parse<'k, V, T> {
    /// The key, for the message.
    pub key: &'k str,
    /// From what the format holds to the setting.
    pub parse: fn(V) -> Result<T, String>,
}

impl<'de, V: Deserialize<'de>, T> DeserializeSeed<'de> for Parse<'_, V, T> {
    type Value = T;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<T, D::Error> {
        let v = V::deserialize(deserializer)
            .map_err(|e| de::Error::custom(format!("{}: {e}", self.key)))?;
        (self.parse)(v).map_err(|e| de::Error::custom(format!("{}: {e}", self.key)))
    }
}

fn parsed<'de, V: Deserialize<'de>, T, A: MapAccess<'de>>(
    map: &mut A,
    key: &str,
    parse: fn(V) -> Result<T, String>,
) -> Result<T, A::Error> {
    map.next_value_seed(Parse { key, parse })
}

/// Reads the value at hand as `T`, with errors that name `key`.
fn value<'de, T: Deserialize<'de>, A: MapAccess<'de>>(
    map: &mut A,
    key: &str,
) -> Result<T, A::Error> {
    parsed(map, key, Ok)
}

fn bytes_of(size: Size) -> Result<usize, String> {
    match size {
        Size::Bytes(n) => usize::try_from(n).map_err(|_| format!("{n} is too large")),
        Size::Text(t) => parse_size(&t),
    }
}

/// Parses a duration such as `"30s"` or `"2m 30s"`.
pub fn duration_of(text: String) -> Result<Duration, String> {
    humantime::parse_duration(&text).map_err(|e| format!("{text:?}: {e}"))
}

fn size<'de, A: MapAccess<'de>>(map: &mut A, key: &str) -> Result<usize, A::Error> {
    parsed(map, key, bytes_of)
}

fn duration<'de, A: MapAccess<'de>>(map: &mut A, key: &str) -> Result<Duration, A::Error> {
    parsed(map, key, duration_of)
}

/// A duration that must be more than zero.
fn positive<'de, A: MapAccess<'de>>(map: &mut A, key: &str) -> Result<Duration, A::Error> {
    parsed(map, key, |text| match duration_of(text)? {
        d if d.is_zero() => Err("must be > 0".into()),
        d => Ok(d),
    })
}

/// A key that is one of `known` (or of `also`); any other is refused where it stands, naming
/// it and the keys there are.
#[derive(Clone, Debug)]
pub struct Key {
    /// The keys expected here.
    pub known: &'static [&'static str],
    /// More keys expected here (a program's own, beside [`KEYS`]).
    pub also: &'static [&'static str],
    /// The section, for the message (`""` at the top).
    pub section: &'static str,
}

impl<'de> DeserializeSeed<'de> for Key {
    type Value = String;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<String, D::Error> {
        let key = String::deserialize(deserializer)?;
        let k = key.as_str();
        if self.known.contains(&k) || self.also.contains(&k) {
            return Ok(key);
        }
        let expected: Vec<&str> = self.known.iter().chain(self.also).copied().collect();
        let name = match self.section {
            "" => key.clone(),
            section => format!("{section}.{key}"),
        };
        Err(de::Error::custom(format!(
            "unknown key `{name}`, expected one of {}",
            expected.join(", ")
        )))
    }
}

impl NodeFile {
    /// Takes the value of the top-level `key` if it is one of the node's ([`KEYS`]): true if
    /// it was, false (value untouched) if not.
    pub fn take<'de, A: MapAccess<'de>>(
        &mut self,
        key: &str,
        map: &mut A,
    ) -> Result<bool, A::Error> {
        match key {
            "id" => self.node.id = value(map, key)?,
            "listen" => self.node.listen = value(map, key)?,
            "tls" => self.tls = Some(value(map, key)?),
            "peers" => {
                // Errors name the field (`peers.max_message`) themselves.
                for peer in map.next_value::<Vec<FilePeer>>()? {
                    let mut info = NeighborInfo::new(peer.id, peer.endpoint);
                    info.max_message = peer.max_message;
                    self.peers.push(info);
                }
            }
            "store" | "limits" | "connection" | "broadcast" | "membership" => {
                if key == "membership" {
                    // The section turns membership on, even empty (the first member).
                    self.node.membership.get_or_insert_with(Default::default);
                }
                let section = Section {
                    file: self,
                    name: match key {
                        "store" => "store",
                        "limits" => "limits",
                        "connection" => "connection",
                        "membership" => "membership",
                        _ => "broadcast",
                    },
                };
                map.next_value_seed(section)?;
            }
            _ => return Ok(false),
        }
        Ok(true)
    }

    /// Sets the setting `section.key` from the value at hand; false if there is none such.
    fn set<'de, A: MapAccess<'de>>(
        &mut self,
        section: &str,
        key: &str,
        map: &mut A,
    ) -> Result<bool, A::Error> {
        let name = format!("{section}.{key}");
        let (node, transport) = (&mut self.node, &mut self.transport);
        let n = &name;
        match (section, key) {
            ("store", "slots") => {
                node.slots = value(map, n)?;
                if !self.peer_max_messages_set {
                    node.peer_max_messages = NodeConfig::new("", "").peer_max_messages;
                    node.peer_max_messages = node.peer_max_messages.min(node.slots);
                }
            }
            ("store", "ttl") => node.ttl = duration(map, n)?,
            ("limits", "max_payload") => node.limits.max_payload_bytes = size(map, n)?,
            ("limits", "max_message") => node.limits.max_message_bytes = size(map, n)?,
            ("limits", "partial_budget") => {
                node.limits.partial_bytes = size(map, n)?;
                // The share defaults to the whole budget.
                node.limits.peer_partial_bytes = node.limits.partial_bytes;
            }
            ("limits", "peer_partial_budget") => node.limits.peer_partial_bytes = size(map, n)?,
            ("limits", "peer_max_messages") => {
                node.peer_max_messages = value(map, n)?;
                self.peer_max_messages_set = true;
            }
            ("limits", "peer_max_bytes") => node.peer_max_bytes = size(map, n)?,
            ("limits", "max_inbound_streams") => node.max_inbound_streams = value(map, n)?,
            ("limits", "max_streams_per_peer") => node.max_streams_per_peer = value(map, n)?,
            ("limits", "original_max_message") => node.original_max_message_bytes = size(map, n)?,
            ("broadcast", "held_budget") => node.broadcast.max_held_bytes = size(map, n)?,
            ("connection", "connect_timeout") => node.connect_timeout = duration(map, n)?,
            ("connection", "ack_timeout") => node.ack_timeout = duration(map, n)?,
            ("connection", "reconnect_initial") => node.reconnect.initial = duration(map, n)?,
            ("connection", "reconnect_max") => node.reconnect.max = duration(map, n)?,
            ("connection", "keepalive_time") => transport.keepalive_time = positive(map, n)?,
            ("connection", "keepalive_timeout") => transport.keepalive_timeout = positive(map, n)?,
            ("connection", "original_keepalive") => {
                transport.original_keepalive_time = positive(map, n)?
            }
            ("connection", "stream_window") => {
                let window = parsed(map, n, |size| {
                    let w = bytes_of(size)?;
                    u32::try_from(w)
                        .ok()
                        .filter(|w| (65_535..=i32::MAX as u32).contains(w))
                        .ok_or_else(|| format!("{w} is outside 64KiB - 1 ..= 2GiB - 1"))
                })?;
                transport.stream_window_bytes = Some(window);
            }
            ("connection", "bdp_probe") => transport.http2_bdp_probe = Some(value(map, n)?),
            ("connection", "lane_max_bytes") => node.lane_max_bytes = size(map, n)?,
            ("membership", _) => {
                let m = node.membership.get_or_insert_with(Default::default);
                match key {
                    "join" => m.seeds = value(map, n)?,
                    "advertise" => m.advertise = Some(value(map, n)?),
                    "active_view" => m.views.active = value(map, n)?,
                    "passive_view" => m.views.passive = value(map, n)?,
                    "shuffle_period" => m.views.shuffle_period = positive(map, n)?,
                    "swap_every" => m.views.swap_every = value(map, n)?,
                    "suspect_timeout" => m.list.suspect_timeout = positive(map, n)?,
                    "confirmations" => m.list.confirmations = value(map, n)?,
                    "max_members" => m.list.max_members = value(map, n)?,
                    "max_extra_links" => m.max_extra_links = value(map, n)?,
                    "idle_link" => m.idle_link = positive(map, n)?,
                    _ => return Ok(false),
                }
            }
            _ => return Ok(false),
        }
        Ok(true)
    }

    /// The node's and the transport's configuration, the transport's gRPC message limit
    /// derived from the node's limits (as [`TransportConfig::for_limits`] does).
    pub fn configs(&self) -> (NodeConfig, TransportConfig) {
        let mut transport = self.transport.clone();
        transport.max_grpc_message_bytes = self.node.limits.grpc_message_limit();
        (self.node.clone(), transport)
    }

    /// Whether the file set `limits.peer_max_messages` (if not, it follows the slots, as
    /// [`NodeConfig::new`]'s default does).
    pub fn sets_peer_max_messages(&self) -> bool {
        self.peer_max_messages_set
    }
}

/// One `[[peers]]` entry.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FilePeer {
    id: String,
    endpoint: String,
    /// What it takes in one gRPC message if it is an original Go node.
    #[serde(default, deserialize_with = "peer_max_message")]
    max_message: Option<usize>,
}

/// `peers.max_message`: a size, more than zero.
fn peer_max_message<'de, D: Deserializer<'de>>(d: D) -> Result<Option<usize>, D::Error> {
    let seed = Parse {
        key: "peers.max_message",
        parse: |size| match bytes_of(size)? {
            0 => Err("must be > 0".into()),
            n => Ok(n),
        },
    };
    seed.deserialize(d).map(Some)
}

/// Reads one section's keys into the file's configuration.
struct Section<'a> {
    file: &'a mut NodeFile,
    name: &'static str,
}

impl<'de> DeserializeSeed<'de> for Section<'_> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for Section<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "the [{}] section", self.name)
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let key_of = Key {
            known: section_keys(self.name),
            also: &[],
            section: self.name,
        };
        while let Some(key) = map.next_key_seed(key_of.clone())? {
            // Every key `Key` lets through has a setter.
            self.file.set(self.name, &key, &mut map)?;
        }
        Ok(())
    }
}

/// The keys of a section, for the message that refuses an unknown one.
fn section_keys(section: &str) -> &'static [&'static str] {
    match section {
        "store" => &["slots", "ttl"],
        "limits" => &[
            "max_payload",
            "max_message",
            "partial_budget",
            "peer_partial_budget",
            "peer_max_messages",
            "peer_max_bytes",
            "max_inbound_streams",
            "max_streams_per_peer",
            "original_max_message",
        ],
        "connection" => &[
            "connect_timeout",
            "ack_timeout",
            "reconnect_initial",
            "reconnect_max",
            "keepalive_time",
            "keepalive_timeout",
            "original_keepalive",
            "stream_window",
            "bdp_probe",
            "lane_max_bytes",
        ],
        "membership" => &[
            "join",
            "advertise",
            "active_view",
            "passive_view",
            "shuffle_period",
            "swap_every",
            "suspect_timeout",
            "confirmations",
            "max_members",
            "max_extra_links",
            "idle_link",
        ],
        _ => &["held_budget"],
    }
}

/// A file with only the node's keys ([`KEYS`]); any other key is refused.
impl<'de> Deserialize<'de> for NodeFile {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<NodeFile, D::Error> {
        struct Top;
        impl<'de> Visitor<'de> for Top {
            type Value = NodeFile;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a node's configuration")
            }

            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<NodeFile, A::Error> {
                let mut file = NodeFile::default();
                let key_of = Key {
                    known: KEYS,
                    also: &[],
                    section: "",
                };
                while let Some(key) = map.next_key_seed(key_of.clone())? {
                    file.take(&key, &mut map)?;
                }
                Ok(file)
            }
        }
        deserializer.deserialize_map(Top)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<NodeFile, String> {
        toml::from_str(text).map_err(|e| e.to_string())
    }

    #[test]
    fn every_section_reaches_its_field() {
        let file = parse(
            r#"
            id = "a"
            listen = "127.0.0.1:7000"
            [store]
            slots = 50
            ttl = "30s"
            [limits]
            max_payload = "1MiB"
            partial_budget = "8MiB"
            peer_max_bytes = 4096
            max_streams_per_peer = 4
            [connection]
            ack_timeout = "3s"
            keepalive_time = "20s"
            stream_window = "8MiB"
            bdp_probe = false
            lane_max_bytes = "16KiB"
            [broadcast]
            held_budget = "16MiB"
            [membership]
            join = ["seed.example:7000", "b=10.0.0.2:7000"]
            advertise = "10.0.0.1:7000"
            active_view = 4
            passive_view = 20
            shuffle_period = "2s"
            swap_every = 4
            suspect_timeout = "4s"
            confirmations = 3
            max_members = 500
            max_extra_links = 2
            idle_link = "1s"
            [tls]
            ca = "ca.pem"
            cert = "a.pem"
            key = "a.key"
            "#,
        )
        .unwrap();
        let (node, transport) = file.configs();
        assert_eq!(
            (node.id.as_str(), node.listen.as_str()),
            ("a", "127.0.0.1:7000")
        );
        assert_eq!((node.slots, node.ttl), (50, Duration::from_secs(30)));
        assert_eq!(node.peer_max_messages, 50, "follows the slots");
        assert_eq!(node.limits.max_payload_bytes, 1 << 20);
        assert_eq!(
            node.limits.peer_partial_bytes,
            8 << 20,
            "the share follows the budget"
        );
        assert_eq!(node.peer_max_bytes, 4096);
        assert_eq!(node.max_streams_per_peer, 4);
        assert_eq!(node.ack_timeout, Duration::from_secs(3));
        assert_eq!(node.broadcast.max_held_bytes, 16 << 20);
        assert_eq!(transport.keepalive_time, Duration::from_secs(20));
        assert_eq!(transport.stream_window_bytes, Some(8 << 20));
        assert_eq!(transport.http2_bdp_probe, Some(false));
        assert_eq!(node.lane_max_bytes, 16 << 10);
        let m = node.membership.clone().unwrap();
        assert_eq!(m.seeds, ["seed.example:7000", "b=10.0.0.2:7000"]);
        assert_eq!(m.advertise.as_deref(), Some("10.0.0.1:7000"));
        assert_eq!((m.views.active, m.views.passive), (4, 20));
        assert_eq!(m.views.shuffle_period, Duration::from_secs(2));
        assert_eq!(m.views.swap_every, 4);
        assert_eq!(m.list.suspect_timeout, Duration::from_secs(4));
        assert_eq!((m.list.confirmations, m.list.max_members), (3, 500));
        assert_eq!(
            (m.max_extra_links, m.idle_link),
            (2, Duration::from_secs(1))
        );
        assert_eq!(
            transport.max_grpc_message_bytes,
            node.limits.grpc_message_limit()
        );
        assert_eq!(file.tls.unwrap().key, PathBuf::from("a.key"));
    }

    #[test]
    fn unknown_keys_and_bad_values_are_refused_by_name() {
        for (text, named) in [
            ("[store]\nsltos = 5", "store.sltos"),
            ("colour = \"blue\"", "colour"),
            ("[store]\nttl = \"soon\"", "store.ttl"),
            ("[limits]\nmax_payload = \"lots\"", "limits.max_payload"),
            (
                "[connection]\nkeepalive_time = \"0s\"",
                "connection.keepalive_time",
            ),
            (
                "[connection]\nstream_window = \"1KiB\"",
                "connection.stream_window",
            ),
            (
                "[[peers]]\nid = \"b\"\nendpoint = \"h:1\"\nmax_message = 0",
                "peers.max_message",
            ),
            ("[tls]\nca = \"x\"", "missing field `cert`"),
            ("[membership]\nactive = 3", "membership.active"),
            (
                "[membership]\nshuffle_period = \"0s\"",
                "membership.shuffle_period",
            ),
        ] {
            let err = parse(text).unwrap_err();
            assert!(err.contains(named), "{text:?}: {err}");
        }
    }
}
