//! # grpc-gossip
//!
//! Large messages between many nodes over **gRPC bidirectional streams**, for Rust programs
//! that use plain threads. A re-creation of the Go "double-stream" gossip system: every node
//! opens, to each neighbour, a **MessageStream** for payloads and an **AckStream** for
//! acknowledgements, and tracks every message it sends until its ACK arrives, it times out, or
//! it fails for a stated reason. Exactly one [`Completion`] per message; nothing is lost
//! silently.
//!
//! ```
//! use grpc_gossip::{Message, NeighborInfo, Node, NodeConfig};
//!
//! # fn main() -> Result<(), grpc_gossip::Error> {
//! let a = Node::start(NodeConfig::new("a", "127.0.0.1:0"))?;
//! let b = Node::start(NodeConfig::new("b", "127.0.0.1:0"))?;
//! a.connect_to_neighbor(NeighborInfo::new("b", b.local_addr().to_string()))?;
//!
//! a.send_message("b", Message::new("hello-1", &b"hello"[..]))?;
//! let done = a.completions().recv().expect("one completion per message");
//! assert!(done.is_acked());
//! let got = b.deliveries().recv().expect("delivered once");
//! assert_eq!(&got.payload[..], b"hello");
//! # Ok(()) }
//! ```
//!
//! ## Design
//!
//! The protocol logic never touches a socket. [`MessageManager`] is a state machine: it is fed
//! [`manager::Event`]s (the application sends M to P, a frame arrived, a stream closed, time
//! passed) and answers [`manager::Action`]s (write this frame, deliver, complete). It is tested
//! deterministically, without a network. [`SlotStore`] bounds how many messages are in flight
//! and for how long, and remembers what was seen for de-duplication.
//!
//! [`Node::broadcast`] reaches the whole cluster through [`broadcast::BroadcastEngine`], another
//! pure state machine: multi-hop dissemination whose ACKs converge back to the origin with the
//! number of nodes reached, and a Plumtree-style lazy plane that sends large payloads only along
//! a spanning tree. [`Router`] picks eager targets for small ones. [`sim`] runs a thousand
//! engines over simulated links, deterministically. Messages larger than one frame travel in
//! chunks and are reassembled and ACKed as one.
//!
//! The gRPC transport is thin. [`StreamFactory`] (shared by the nodes of a process) keeps one
//! channel per endpoint and opens double streams. Per stream, a blocking reader thread and,
//! where we write, a writer thread talk to one **manager thread** through crossbeam channels.
//! The manager thread never blocks on anything but its inbox. The transport knows nothing of
//! the node: it reports what happens on each stream, and the node decides what a frame means.
//! The same node runs on a [`MemoryNetwork`] ([`NodeBuilder::memory`]): calls become
//! in-process pipes of encoded frames, links can be cut or silenced, and a hundred nodes fit in
//! one test. Backpressure is explicit: a full
//! store blocks `send_message` (or `try_send_message` returns [`Error::Full`]), and a full
//! delivery queue pauses the payload readers, so gRPC flow control slows the senders down.
//!
//! Links heal on their own: a broken stream, a connection that keepalive finds dead, or a
//! neighbour that stops ACKing brings its link down; the node reconnects with jittered
//! exponential backoff ([`Backoff`], which starts over only once a link has proved itself) and
//! sends every unacknowledged message again, in order. [`Node::events`] reports it.
//! [`Node::add_neighbor`] lets the node make the first connection the same way, in the
//! background; [`Node::connect_to_neighbor`] dials at once and says why it failed
//! ([`ConnectFailure`]). A message fails only when its TTL runs out, its neighbour is removed,
//! or the node shuts down.
//!
//! ## Clusters that assemble themselves
//!
//! With [`NodeConfig::membership`] a node joins through seeds given by address
//! ([`MembershipConfig::seeds`], [`Node::join`]) and the cluster builds its own overlay: the
//! [`membership::Membership`] machine (HyParView partial views and a member list with
//! confirmed failures, sans IO like the other cores) runs on a thread of its own and links the
//! node to a small active view, whatever the cluster's size. [`Node::members`] lists every
//! member with its state, [`Node::member_events`] tells each change.
//!
//! ## Acknowledged deliveries
//!
//! By default a node ACKs a message once it is queued for the application. With
//! [`Deliveries::Confirmed`] the ACK waits for [`Delivery::confirm`], so an ACK means the
//! application has the message, even if the process crashes right after; a delivery dropped
//! unconfirmed (or [`Delivery::decline`]d) is sent again by its sender. The receiver tells
//! senders that understand it `ACK_PENDING` meanwhile, so a slow application never looks like
//! a dead link, and `ACK_RETRY` for a decline. `examples/durable_receiver.rs` stores messages
//! in an fsync'ed journal this way; `gossip node --deliver-dir` writes files.
//!
//! ACK routing follows the original: the receiver of a message from X ACKs over its own
//! outbound AckStream to X when it has one, otherwise on the response side of the AckStream X
//! opened to it, and in single-stream mode back on the same call.
//!
//! The wire protocol (`proto/gossip.proto`) keeps the original's package, service, methods and
//! field numbers; what we add uses new field numbers that an original node ignores.
//!
//! ## Operating
//!
//! [`TransportConfig::tls`] turns on mutual TLS: peers must hold a certificate from the cluster
//! CA whose subject alternative name is the id they claim ([`transport::tls`], which can also
//! make the CA and the certificates with the feature `certs`). [`Node::metrics`] snapshots
//! per-peer traffic, completions by outcome, queue depths and an ACK latency histogram;
//! `metrics::MetricsServer` (feature `metrics-server`) serves them to Prometheus. The
//! `gossip node` binary (feature `cli`) wraps all of it as a service.
//!
//! ## Performance
//!
//! Each payload is copied once in user space on each side (into gRPC's send slice, out of its
//! receive slices) and shared by reference everywhere else. HTTP/2 BDP probing is on for
//! addresses that are not loopback ([`TransportConfig::http2_bdp_probe`]), where it lets one
//! connection fill a long link. glibc's default malloc maps and zeroes every payload-sized
//! block afresh; the `gossip` binary avoids that with `mallopt`, and a program embedding this
//! library gets the same (about 20% on the seed benchmark) by starting with
//! `GLIBC_TUNABLES=glibc.malloc.mmap_threshold=16777216:glibc.malloc.trim_threshold=33554432:glibc.malloc.arena_max=2`.
//! Figures and profiles: `docs/performance.md`.
#![deny(missing_docs)]
#![forbid(unsafe_code)]

pub mod backoff;
pub mod bench;
pub mod broadcast;
pub mod config;
pub mod error;
#[cfg(any(test, feature = "fuzzing"))]
pub mod fuzzing;
pub mod id;
mod limits;
pub mod manager;
pub mod membership;
pub mod message;
pub mod metrics;
pub mod neighbor;
mod node;
pub mod payload;
pub mod proto;
pub mod router;
pub mod sim;
pub mod stats;
pub mod store;
pub mod transport;

pub use backoff::Backoff;
pub use broadcast::{BroadcastCompletion, BroadcastConfig, BroadcastId};
pub use config::{Deliveries, Limits, MembershipConfig, NodeConfig, TransportConfig};
pub use error::{ConnectFailure, Error};
pub use id::NodeId;
pub use manager::MessageManager;
pub use message::{Completion, Delivery, FailReason, Message, MessageKey, Outcome};
pub use neighbor::{
    MemoryNeighborStore, NeighborEvent, NeighborInfo, NeighborManager, NeighborStore,
};
pub use node::{Node, NodeBuilder};
pub use payload::{PayloadBuf, SharedPayload};
pub use router::{FanoutRouter, Router};
pub use stats::{Metrics, Stats};
pub use store::SlotStore;
pub use transport::factory::StreamFactory;
pub use transport::memory::MemoryNetwork;
