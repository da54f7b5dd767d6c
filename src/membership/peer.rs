//! A member as the node's membership machine knows it: an id and where to reach it.

use std::hash::{Hash, Hasher};

use crate::id::NodeId;

/// A member of the cluster: its id, and the address (`HOST:PORT`) it said it is reached at.
///
/// Two peers are the same member when their ids are equal, whatever their addresses: a member
/// that restarts elsewhere stays one member, and its newer address replaces the older one.
#[derive(Clone, Debug)]
pub struct Peer {
    /// Its node id.
    pub id: NodeId,
    /// Where it listens.
    pub addr: String,
}

impl Peer {
    /// A peer named `id`, reached at `addr`.
    pub fn new(id: NodeId, addr: impl Into<String>) -> Peer {
        Peer {
            id,
            addr: addr.into(),
        }
    }
}

impl PartialEq for Peer {
    fn eq(&self, other: &Peer) -> bool {
        self.id == other.id
    }
}

impl Eq for Peer {}

impl Hash for Peer {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.id.hash(state);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::limits::Limits;

    #[test]
    fn a_peer_is_its_id_wherever_it_listens() {
        let id = NodeId::new("a", &Limits::default()).unwrap();
        let here = Peer::new(id.clone(), "127.0.0.1:1");
        let there = Peer::new(id, "10.0.0.1:2");
        assert_eq!(here, there);
        let digest = |p: &Peer| {
            let mut h = std::collections::hash_map::DefaultHasher::new();
            p.hash(&mut h);
            h.finish()
        };
        assert_eq!(digest(&here), digest(&there));
    }
}
