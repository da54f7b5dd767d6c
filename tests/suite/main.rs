//! The integration tests, as one binary so that gRPC's C core is linked once.
//!
//! Each module is one suite: nodes over loopback gRPC in this process (`messaging`,
//! `broadcast`, `faults`, `hostile`, `shutdown`, `tls`, `metrics`, `factory`), nodes on the
//! in-memory network (`memory`, and every `messaging`, `broadcast` and `membership` test
//! written with `on_both!`, which runs once on each transport), and `gossip` processes (`cli`, and `interop`
//! with original Go nodes, which needs `bash tests/interop/run.sh`). Run one with
//! `cargo test --release --features cli --test suite messaging::` (the suite needs the `gossip`
//! binary, so the `cli` feature).

// A test's unwrap is its assertion.
#![allow(clippy::unwrap_used)]

mod common;

mod broadcast;
mod cli;
mod factory;
mod faults;
mod hostile;
mod interop;
mod membership;
mod memory;
mod messaging;
mod metrics;
mod shutdown;
mod tls;
