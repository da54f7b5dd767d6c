//! [`Limits`]: the sizes a node sends or accepts, below everything else (ids, the manager, the
//! configuration) so that each of them can check its input against them.

use crate::error::Error;

/// grpc-go's default receive limit (4 MiB), on the encoded message: what an original Go node
/// takes unless configured otherwise.
pub const ORIGINAL_LIMIT: usize = 4 * 1024 * 1024;

/// Size limits applied to everything a node sends or accepts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Largest payload of one message, in bytes. Larger sends are refused before anything is
    /// sent; larger frames from peers are refused by gRPC with `RESOURCE_EXHAUSTED`.
    pub max_payload_bytes: usize,
    /// Longest node id or message hash, in bytes.
    pub max_id_bytes: usize,
    /// Largest message sent or accepted in chunks (see
    /// [`NodeConfig::chunk_bytes`](crate::NodeConfig::chunk_bytes)), in bytes.
    /// A receiver holds at most one partly received message per stream.
    pub max_message_bytes: usize,
    /// Bytes of partly received (chunked) messages a node holds at once, from all peers
    /// together: a message's announced size is charged when its first chunk arrives and
    /// released when it completes or is abandoned. A message beyond it is refused with "retry
    /// later" (`ACK_RETRY`; `ACK_REJECTED` to a peer without the `confirm` feature) and its
    /// chunks are dropped; the sender sends it again later. Default 1 GiB: room for one
    /// largest message.
    pub partial_bytes: usize,
    /// The share of [`partial_bytes`](Limits::partial_bytes) one peer may hold. Default: all
    /// of it. At least `max_message_bytes`, so that a largest message can always arrive.
    pub peer_partial_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_payload_bytes: 64 * 1024 * 1024,
            max_id_bytes: 256,
            max_message_bytes: 1 << 30,
            partial_bytes: 1 << 30,
            peer_partial_bytes: 1 << 30,
        }
    }
}

impl Limits {
    /// The gRPC message-size limit that fits one frame of the largest allowed payload with the
    /// largest allowed ids (plus protobuf tags and lengths).
    pub fn grpc_message_limit(&self) -> usize {
        self.max_payload_bytes
            .saturating_add(4 * self.max_id_bytes)
            .saturating_add(64)
    }

    /// Checks the limits against what gRPC can carry (an `i32` length).
    pub fn validate(&self) -> Result<(), Error> {
        if self.max_payload_bytes == 0 {
            return Err(Error::Config {
                field: "max_payload_bytes",
                reason: "must be > 0".into(),
            });
        }
        if self.max_id_bytes == 0 {
            return Err(Error::Config {
                field: "max_id_bytes",
                reason: "must be > 0".into(),
            });
        }
        if self.max_message_bytes < self.max_payload_bytes {
            return Err(Error::Config {
                field: "max_message_bytes",
                reason: "must be at least max_payload_bytes".into(),
            });
        }
        if self.peer_partial_bytes < self.max_message_bytes {
            return Err(Error::Config {
                field: "peer_partial_bytes",
                reason: format!(
                    "{} is below max_message_bytes ({}): a largest message could never arrive",
                    self.peer_partial_bytes, self.max_message_bytes
                ),
            });
        }
        if self.partial_bytes < self.peer_partial_bytes {
            return Err(Error::Config {
                field: "partial_bytes",
                reason: "must be at least peer_partial_bytes".into(),
            });
        }
        if self.grpc_message_limit() > i32::MAX as usize {
            return Err(Error::Config {
                field: "max_payload_bytes",
                reason: format!("must leave room for a frame below {} bytes", i32::MAX),
            });
        }
        Ok(())
    }
}
