//! Helpers shared by the integration tests.
#![allow(dead_code)]

pub(crate) mod proxy;
pub(crate) mod silent;

use std::sync::Arc;
use std::time::Duration;

use crossbeam_channel::Receiver;
use grpc_gossip::{
    Completion, Deliveries, MemoryNetwork, NeighborInfo, Node, NodeBuilder, NodeConfig,
    StreamFactory, TransportConfig,
};

/// Generous: tests check behaviour, not speed.
pub(crate) const PATIENCE: Duration = Duration::from_secs(60);

pub(crate) fn factory() -> Arc<StreamFactory> {
    StreamFactory::new(TransportConfig::default())
}

pub(crate) fn config(id: &str) -> NodeConfig {
    let mut c = NodeConfig::new(id, "127.0.0.1:0");
    c.deliveries = Deliveries::Queue(1 << 16);
    c
}

/// Where a test's nodes run: loopback gRPC (a factory) or an in-memory network.
pub(crate) trait Transport {
    /// A builder for a node on this transport.
    fn builder(&self, config: NodeConfig) -> NodeBuilder;
}

impl Transport for Arc<StreamFactory> {
    fn builder(&self, config: NodeConfig) -> NodeBuilder {
        Node::builder(config).factory(self.clone())
    }
}

impl Transport for MemoryNetwork {
    fn builder(&self, config: NodeConfig) -> NodeBuilder {
        Node::builder(config).memory(self)
    }
}

pub(crate) fn start(id: &str, on: &dyn Transport) -> Node {
    start_with(config(id), on)
}

pub(crate) fn start_with(config: NodeConfig, on: &dyn Transport) -> Node {
    on.builder(config).start().expect("node starts")
}

/// Defines a test run twice, as `NAME::grpc` (loopback gRPC) and `NAME::memory` (the in-memory
/// network): `on_both! { fn NAME(on) { ... } }`, where `on: &dyn Transport` starts the nodes.
macro_rules! on_both {
    ($(#[$attr:meta])* fn $name:ident($on:ident) $body:block) => {
        $(#[$attr])*
        mod $name {
            #[allow(unused_imports)]
            use super::*;

            fn run($on: &dyn $crate::common::Transport) $body

            #[test]
            fn grpc() {
                run(&$crate::common::factory())
            }

            #[test]
            fn memory() {
                run(&grpc_gossip::MemoryNetwork::new())
            }
        }
    };
}
pub(crate) use on_both;

pub(crate) fn connect(a: &Node, b: &Node) {
    a.connect_to_neighbor(NeighborInfo::new(
        b.id().as_str(),
        b.local_addr().to_string(),
    ))
    .expect("connect");
}

pub(crate) fn mesh(nodes: &[Node]) {
    for a in nodes {
        for b in nodes {
            if a.id() != b.id() {
                connect(a, b);
            }
        }
    }
}

/// Receives exactly `n` completions (panics if they do not come within `PATIENCE`).
pub(crate) fn collect(rx: &Receiver<Completion>, n: usize) -> Vec<Completion> {
    (0..n)
        .map(|i| {
            rx.recv_timeout(PATIENCE)
                .unwrap_or_else(|_| panic!("completion {i} of {n} did not arrive"))
        })
        .collect()
}

/// Streams `n` messages of `payload` from `a` to its neighbour "b", calls `cut` once 60 have
/// completed, waits `outage`, calls `restore`, and checks what a cut link must leave: every
/// message `Acked`, some sent again (the cut caught them in flight), the link reported down,
/// each message delivered to `b` exactly once, nothing left in flight. Returns the
/// completions and the neighbour events `a` reported meanwhile.
pub(crate) fn survive_a_cut(
    a: &Node,
    b: &Node,
    n: usize,
    payload: bytes::Bytes,
    outage: Duration,
    cut: impl FnOnce(),
    restore: impl FnOnce(),
) -> (Vec<Completion>, Vec<grpc_gossip::NeighborEvent>) {
    use grpc_gossip::{Message, NeighborEvent};
    let events = a.events();
    let completions = std::thread::scope(|s| {
        let sender = s.spawn(|| {
            for i in 0..n {
                a.send_message("b", Message::new(format!("m{i}"), payload.clone()))
                    .unwrap();
            }
        });
        let done = a.completions();
        let mut got = collect(&done, 60);
        cut();
        std::thread::sleep(outage);
        restore();
        got.extend(collect(&done, n - 60));
        sender.join().unwrap();
        got
    });
    assert!(
        completions.iter().all(|c| c.is_acked()),
        "{:?}",
        completions.iter().find(|c| !c.is_acked())
    );
    assert!(
        completions.iter().any(|c| c.attempts > 1),
        "the cut caught messages in flight"
    );
    let seen: Vec<NeighborEvent> = events.try_iter().collect();
    assert!(
        seen.iter().any(|e| matches!(e, NeighborEvent::Down { .. })),
        "{seen:?}"
    );
    let deliveries = b.deliveries();
    let mut hashes = std::collections::HashSet::new();
    for _ in 0..n {
        let d = deliveries.recv_timeout(PATIENCE).unwrap();
        assert!(hashes.insert(d.hash.clone()), "{} delivered twice", d.hash);
    }
    assert_quiet(&deliveries);
    assert_eq!(a.stats().in_flight, 0);
    (completions, seen)
}

/// Asserts that nothing more arrives for a short while (exactly-once checks).
pub(crate) fn assert_quiet<T: std::fmt::Debug>(rx: &Receiver<T>) {
    if let Ok(extra) = rx.recv_timeout(Duration::from_millis(300)) {
        panic!("unexpected extra item: {extra:?}");
    }
}

/// The next item of a gRPC response stream, or a panic naming `what` if none comes within
/// [`PATIENCE`]: a lost answer fails its test instead of hanging the suite.
pub(crate) fn next_within<S>(stream: &mut S, what: &str) -> Option<S::Item>
where
    S: futures::Stream + Unpin,
{
    use futures::StreamExt;
    match futures::executor::block_on(futures::future::select(
        stream.next(),
        futures_timer::Delay::new(PATIENCE),
    )) {
        futures::future::Either::Left((item, _)) => item,
        futures::future::Either::Right(_) => panic!("{what} did not come within {PATIENCE:?}"),
    }
}

/// Threads of this process, from /proc.
pub(crate) fn thread_count() -> usize {
    std::fs::read_dir("/proc/self/task")
        .map(|d| d.count())
        .unwrap_or(0)
}

/// Waits (up to [`PATIENCE`]) for the first neighbour event that `pick` maps to a value.
pub(crate) fn first_event<T>(
    events: &Receiver<grpc_gossip::NeighborEvent>,
    mut pick: impl FnMut(grpc_gossip::NeighborEvent) -> Option<T>,
) -> T {
    loop {
        let event = events.recv_timeout(PATIENCE).expect("a neighbour event");
        if let Some(value) = pick(event) {
            return value;
        }
    }
}

/// Runs the test at `path` in this binary (e.g. `shutdown::no_thread_is_left_after_shutdown`)
/// alone in a child process, for checks of process-wide state (the thread count) that the
/// tests running beside it would disturb. Returns true in that child, where the caller goes on
/// with its checks, and false in the parent once the child has passed.
pub(crate) fn in_own_process(path: &str) -> bool {
    const ALONE: &str = "GOSSIP_TEST_ALONE";
    if std::env::var_os(ALONE).is_some() {
        return true;
    }
    let exe = std::env::current_exe().expect("the test binary");
    let out = std::process::Command::new(exe)
        .args([path, "--exact", "--nocapture", "--test-threads", "1"])
        .env(ALONE, "1")
        .output()
        .expect("the test binary runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("test result: ok. 1 passed"),
        "{path} alone: {}\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    false
}
