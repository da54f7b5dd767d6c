//! Who the neighbours are: `NeighborInfo`, the `NeighborStore` trait with its in-memory default,
//! and the `NeighborManager` a node uses.

use std::collections::HashMap;
use std::time::Duration;

use parking_lot::RwLock;

use crate::error::Error;
use crate::id::NodeId;
use crate::limits::Limits;

/// A neighbour record, as in the seed: its id, its gRPC endpoint and whether it is online.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct NeighborInfo {
    /// The neighbour's node id (`NodeHash`).
    pub node_hash: String,
    /// Its gRPC address, e.g. `127.0.0.1:51000`.
    pub endpoint: String,
    /// Whether our double stream to it is up. Set by the node; the value passed to
    /// [`Node::connect_to_neighbor`](crate::Node::connect_to_neighbor) is ignored.
    pub online: bool,
    /// The largest message, encoded, that this neighbour takes in one gRPC message if it is
    /// an original Go node (its server's `MaxRecvMsgSize`); `None`:
    /// [`NodeConfig::original_max_message_bytes`](crate::NodeConfig::original_max_message_bytes)
    /// (grpc-go's 4 MiB by default). Larger messages to it fail at once as
    /// [`FailReason::TooLarge`](crate::FailReason::TooLarge). Our own nodes take messages in
    /// chunks, so it does not apply to them.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_message: Option<usize>,
}

impl NeighborInfo {
    /// A neighbour record (offline until connected).
    pub fn new(node_hash: impl Into<String>, endpoint: impl Into<String>) -> NeighborInfo {
        NeighborInfo {
            node_hash: node_hash.into(),
            endpoint: endpoint.into(),
            online: false,
            max_message: None,
        }
    }

    /// Sets [`max_message`](NeighborInfo::max_message): what this neighbour takes if it is an
    /// original node.
    pub fn with_max_message(mut self, bytes: usize) -> NeighborInfo {
        self.max_message = Some(bytes);
        self
    }
}

/// A change in a neighbour's state, from [`Node::events`](crate::Node::events).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NeighborEvent {
    /// The double stream to the neighbour is up (first connection or reconnection).
    Up {
        /// The neighbour.
        peer: NodeId,
    },
    /// The double stream broke (stream error, dead connection, or no ACK progress). The node
    /// reconnects on its own; messages outstanding to the neighbour are sent again then.
    Down {
        /// The neighbour.
        peer: NodeId,
        /// Why.
        reason: String,
    },
    /// A reconnection attempt failed; the next one follows after `retry_in`.
    Reconnecting {
        /// The neighbour.
        peer: NodeId,
        /// Attempts failed so far.
        attempt: u32,
        /// Delay before the next attempt.
        retry_in: Duration,
        /// Why the attempt failed.
        error: String,
    },
    /// The application removed the neighbour.
    Removed {
        /// The neighbour.
        peer: NodeId,
    },
}

/// Where neighbour records live. Implement it to keep them elsewhere (a file, a registry).
pub trait NeighborStore: Send + Sync {
    /// Inserts or replaces the record of `info.node_hash`.
    fn upsert(&self, info: NeighborInfo);
    /// The record of `node_hash`.
    fn get(&self, node_hash: &str) -> Option<NeighborInfo>;
    /// Removes and returns the record of `node_hash`.
    fn remove(&self, node_hash: &str) -> Option<NeighborInfo>;
    /// Sets the online flag; false if there is no such neighbour.
    fn set_online(&self, node_hash: &str, online: bool) -> bool;
    /// All records, sorted by id.
    fn list(&self) -> Vec<NeighborInfo>;
    /// Whether there is a record of `node_hash` (asked on every send: a store that can answer
    /// without building the record should).
    fn contains(&self, node_hash: &str) -> bool {
        self.get(node_hash).is_some()
    }
}

/// The default [`NeighborStore`]: a map behind a read-write lock.
#[derive(Default, Debug)]
pub struct MemoryNeighborStore {
    map: RwLock<HashMap<String, NeighborInfo>>,
}

impl NeighborStore for MemoryNeighborStore {
    fn upsert(&self, info: NeighborInfo) {
        self.map.write().insert(info.node_hash.clone(), info);
    }

    fn get(&self, node_hash: &str) -> Option<NeighborInfo> {
        self.map.read().get(node_hash).cloned()
    }

    fn contains(&self, node_hash: &str) -> bool {
        self.map.read().contains_key(node_hash)
    }

    fn remove(&self, node_hash: &str) -> Option<NeighborInfo> {
        self.map.write().remove(node_hash)
    }

    fn set_online(&self, node_hash: &str, online: bool) -> bool {
        match self.map.write().get_mut(node_hash) {
            Some(info) => {
                info.online = online;
                true
            }
            None => false,
        }
    }

    fn list(&self) -> Vec<NeighborInfo> {
        let mut v: Vec<NeighborInfo> = self.map.read().values().cloned().collect();
        v.sort_by(|a, b| a.node_hash.cmp(&b.node_hash));
        v
    }
}

/// A node's view of its neighbours: validated ids over a [`NeighborStore`].
pub struct NeighborManager {
    store: Box<dyn NeighborStore>,
    ids: RwLock<HashMap<String, NodeId>>,
    limits: Limits,
}

impl std::fmt::Debug for NeighborManager {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NeighborManager")
            .field("neighbors", &self.ids.read().len())
            .finish_non_exhaustive()
    }
}

impl NeighborManager {
    /// A manager over `store`, validating ids against `limits`.
    pub fn new(store: Box<dyn NeighborStore>, limits: Limits) -> NeighborManager {
        NeighborManager {
            store,
            ids: RwLock::new(HashMap::new()),
            limits,
        }
    }

    /// Adds or updates a neighbour; returns its id. The record starts offline.
    pub fn add(&self, mut info: NeighborInfo) -> Result<NodeId, Error> {
        let id = NodeId::new(&info.node_hash, &self.limits)?;
        if info.endpoint.is_empty() {
            return Err(Error::Connect {
                endpoint: info.endpoint,
                kind: crate::error::ConnectFailure::Unresolvable,
                reason: "empty endpoint".into(),
            });
        }
        info.online = false;
        self.store.upsert(info);
        self.ids.write().insert(id.as_str().to_owned(), id.clone());
        Ok(id)
    }

    /// The id and record of a neighbour.
    pub fn lookup(&self, node_hash: &str) -> Option<(NodeId, NeighborInfo)> {
        let id = self.ids.read().get(node_hash).cloned()?;
        Some((id, self.store.get(node_hash)?))
    }

    /// The id of neighbour `node_hash`, if it is one (without copying its record).
    pub fn id_of(&self, node_hash: &str) -> Option<NodeId> {
        let id = self.ids.read().get(node_hash).cloned()?;
        self.store.contains(node_hash).then_some(id)
    }

    /// Removes a neighbour.
    pub fn remove(&self, node_hash: &str) -> Option<NeighborInfo> {
        self.ids.write().remove(node_hash);
        self.store.remove(node_hash)
    }

    /// Marks a neighbour online or offline.
    pub fn set_online(&self, node_hash: &str, online: bool) -> bool {
        self.store.set_online(node_hash, online)
    }

    /// All neighbour records.
    pub fn list(&self) -> Vec<NeighborInfo> {
        self.store.list()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_store_round_trip() {
        let m = NeighborManager::new(Box::<MemoryNeighborStore>::default(), Limits::default());
        let mut info = NeighborInfo::new("b", "127.0.0.1:1");
        info.online = true;
        let id = m.add(info).unwrap();
        assert_eq!(id.as_str(), "b");
        let (_, rec) = m.lookup("b").unwrap();
        assert!(!rec.online, "starts offline whatever the caller said");
        assert!(m.set_online("b", true));
        assert!(m.lookup("b").unwrap().1.online);
        assert!(!m.set_online("zz", true));
        m.add(NeighborInfo::new("a", "127.0.0.1:2")).unwrap();
        let ids: Vec<String> = m.list().into_iter().map(|n| n.node_hash).collect();
        assert_eq!(ids, ["a", "b"]);
        assert_eq!(m.id_of("b").as_ref(), Some(&id));
        assert!(m.remove("b").is_some());
        assert!(m.lookup("b").is_none());
        assert!(m.id_of("b").is_none());
    }

    /// A store with only the required methods: `contains` falls back to `get`.
    struct Plain(MemoryNeighborStore);

    impl NeighborStore for Plain {
        fn upsert(&self, info: NeighborInfo) {
            self.0.upsert(info)
        }
        fn get(&self, node_hash: &str) -> Option<NeighborInfo> {
            self.0.get(node_hash)
        }
        fn remove(&self, node_hash: &str) -> Option<NeighborInfo> {
            self.0.remove(node_hash)
        }
        fn set_online(&self, node_hash: &str, online: bool) -> bool {
            self.0.set_online(node_hash, online)
        }
        fn list(&self) -> Vec<NeighborInfo> {
            self.0.list()
        }
    }

    #[test]
    fn a_neighbour_is_found_by_id_with_or_without_the_stores_own_contains() {
        let plain = Plain(MemoryNeighborStore::default());
        plain.upsert(NeighborInfo::new("c", "127.0.0.1:3"));
        assert!(plain.contains("c") && !plain.contains("d"));
        let m = NeighborManager::new(Box::new(plain), Limits::default());
        m.add(NeighborInfo::new("e", "127.0.0.1:4")).unwrap();
        assert_eq!(m.id_of("e").unwrap().as_str(), "e");
        // Known to the store but never added through the manager: not a neighbour id yet.
        assert!(m.id_of("c").is_none());
    }

    #[test]
    fn bad_records_are_refused() {
        let m = NeighborManager::new(Box::<MemoryNeighborStore>::default(), Limits::default());
        assert!(matches!(
            m.add(NeighborInfo::new("", "x:1")),
            Err(Error::InvalidId { .. })
        ));
        assert!(matches!(
            m.add(NeighborInfo::new("b", "")),
            Err(Error::Connect { .. })
        ));
    }
}
