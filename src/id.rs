//! Node ids and message hashes: cheap to clone, validated at every boundary.

use std::borrow::Borrow;
use std::fmt;
use std::sync::Arc;

use crate::error::Error;
pub use crate::error::IdKind;
use crate::limits::Limits;

/// The unique id of a node (the seed's `NodeHash`).
///
/// Cloning is a reference-count increment: ids travel with every event and completion.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NodeId(Arc<str>);

impl NodeId {
    /// Makes an id after checking it against `limits` (non-empty, at most
    /// [`Limits::max_id_bytes`] bytes).
    pub fn new(id: &str, limits: &Limits) -> Result<NodeId, Error> {
        validate_id(IdKind::Node, id, limits)?;
        Ok(NodeId(Arc::from(id)))
    }

    /// The id as a string slice.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}

impl Borrow<str> for NodeId {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl AsRef<str> for NodeId {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

/// Checks an id or hash: non-empty and at most `limits.max_id_bytes` bytes.
pub fn validate_id(kind: IdKind, id: &str, limits: &Limits) -> Result<(), Error> {
    if id.is_empty() {
        return Err(Error::InvalidId {
            kind,
            reason: "empty".into(),
        });
    }
    if id.len() > limits.max_id_bytes {
        return Err(Error::InvalidId {
            kind,
            reason: format!("{} bytes, limit {}", id.len(), limits.max_id_bytes),
        });
    }
    Ok(())
}

/// Whether `id` uses only the characters this crate allows in the ids of its own nodes:
/// ASCII letters, digits, `.`, `_` and `-` (what a DNS name, and so a TLS certificate's name,
/// can hold, and what needs no quoting in a log or an output line). Ids received from original
/// nodes are not held to this; they are quoted where they are printed.
pub fn is_plain_id(id: &str) -> bool {
    !id.is_empty()
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// Checks the id of one of our own nodes: [`validate_id`], and only the characters of
/// [`is_plain_id`].
pub fn validate_own_id(id: &str, limits: &Limits) -> Result<(), Error> {
    validate_id(IdKind::Node, id, limits)?;
    if !is_plain_id(id) {
        return Err(Error::InvalidId {
            kind: IdKind::Node,
            reason: format!("{id:?}: use only ASCII letters, digits, '.', '_' and '-'"),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_checked() {
        let limits = Limits::default();
        assert!(NodeId::new("node-1", &limits).is_ok());
        assert!(matches!(
            NodeId::new("", &limits),
            Err(Error::InvalidId {
                kind: IdKind::Node,
                ..
            })
        ));
        let long = "x".repeat(limits.max_id_bytes + 1);
        assert!(matches!(
            validate_id(IdKind::Message, &long, &limits),
            Err(Error::InvalidId {
                kind: IdKind::Message,
                ..
            })
        ));
    }

    #[test]
    fn own_ids_use_a_plain_character_set() {
        let limits = Limits::default();
        for good in ["n1", "node-1.eu_west", "A.b-C_9"] {
            assert!(validate_own_id(good, &limits).is_ok(), "{good}");
        }
        for bad in ["a b", "a=b", "a,b", "é", "a\n", "a/b", ""] {
            assert!(validate_own_id(bad, &limits).is_err(), "{bad:?}");
        }
        // Ids of others (original nodes) are only held to length.
        assert!(NodeId::new("a b", &limits).is_ok());
    }
}
