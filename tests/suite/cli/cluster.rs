//! A cluster that assembles itself, as real processes: `gossip node --join SEED` only, then
//! SIGKILL a third of them, then restart half of those. Every list must show every member, then
//! the killed ones failed, then the restarted ones joined again; each broadcast must reach
//! exactly the live nodes; and threads per process stay bounded by the active view.
//!
//! `GOSSIP_CLUSTER_NODES` sets the size (default 12; the README's figures are from 30).

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::{signal, GOSSIP};

const PATIENCE: Duration = Duration::from_secs(60);

/// What one process printed, as it prints it.
#[derive(Default)]
struct Seen {
    /// Member id to its last state.
    members: HashMap<String, String>,
    /// `reached=` of each `converged` line, by hash.
    converged: HashMap<String, u64>,
    /// Every line, for the report of a failure.
    lines: Vec<String>,
}

struct Member {
    id: String,
    addr: String,
    child: Child,
    stdin: ChildStdin,
    seen: Arc<Mutex<Seen>>,
}

/// Starts node `id` on a port of its choosing (a port picked beforehand may be taken by then:
/// thirty processes open many connections), joining through `seed` (itself when `None`).
fn start(id: &str, seed: Option<&str>) -> Member {
    let join = match seed {
        Some(seed) => vec!["--join", seed],
        None => vec!["--membership"],
    };
    let mut child = Command::new(GOSSIP)
        .args(["node", "--id", id, "--listen", "127.0.0.1:0"])
        .args(join)
        .args(["--shuffle-period", "1s", "--suspect-timeout", "5s"])
        .args(["--log-level", "warn"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start gossip node");
    let stdin = child.stdin.take().unwrap();
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    let mut first = String::new();
    stdout.read_line(&mut first).unwrap();
    assert!(first.starts_with("listening "), "{id}: {first:?}");
    let addr = super::addr_in(first.trim_end());
    let seen = Arc::new(Mutex::new(Seen::default()));
    let record = seen.clone();
    std::thread::spawn(move || {
        for line in stdout.lines().map_while(Result::ok) {
            let field = |name: &str| {
                line.split(' ')
                    .find_map(|f| f.strip_prefix(name))
                    .map(str::to_owned)
            };
            let mut seen = record.lock().unwrap();
            seen.lines.push(line.clone());
            if line.starts_with("member ") {
                if let (Some(id), Some(state)) = (field("id="), field("state=")) {
                    seen.members.insert(id, state);
                }
            } else if line.starts_with("converged ") {
                if let (Some(hash), Some(reached)) = (field("hash="), field("reached=")) {
                    seen.converged.insert(hash, reached.parse().unwrap());
                }
            }
        }
    });
    Member {
        id: id.to_owned(),
        addr,
        child,
        stdin,
        seen,
    }
}

/// Waits until every member in `live` satisfies `want` about what it has seen (given its own
/// id and that).
fn wait_until(live: &[&Member], what: &str, want: impl Fn(&str, &Seen) -> bool) -> Duration {
    let started = Instant::now();
    loop {
        if live.iter().all(|m| want(&m.id, &m.seen.lock().unwrap())) {
            return started.elapsed();
        }
        if started.elapsed() > PATIENCE {
            let report: Vec<String> = live
                .iter()
                .map(|m| {
                    let seen = m.seen.lock().unwrap();
                    let mut states: Vec<_> = seen.members.iter().collect();
                    states.sort();
                    format!("{}: {states:?}", m.id)
                })
                .collect();
            panic!("{what}: not within {PATIENCE:?}\n{}", report.join("\n"));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Broadcasts from `from` and returns how many nodes its `converged` line says it reached.
fn broadcast(from: &mut Member, hash_hint: &str) -> u64 {
    let before = from.seen.lock().unwrap().converged.len();
    writeln!(from.stdin, "* {hash_hint}").unwrap();
    let started = Instant::now();
    loop {
        {
            let seen = from.seen.lock().unwrap();
            if seen.converged.len() > before {
                // The newest hash is the one with the highest sequence number.
                let last = seen
                    .converged
                    .iter()
                    .max_by_key(|(h, _)| h.rsplit('-').next().unwrap().parse::<u64>().unwrap());
                let (hash, reached) = last.unwrap();
                let line = seen.lines.iter().rev().find(|l| l.contains(hash.as_str()));
                eprintln!("{}: {}", from.id, line.map_or("", String::as_str));
                return *reached;
            }
        }
        assert!(
            started.elapsed() < PATIENCE,
            "{hash_hint}: no converged line"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn threads_of(m: &Member) -> usize {
    let status = std::fs::read_to_string(format!("/proc/{}/status", m.child.id())).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("Threads:"))
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}

/// Every one of `ids` but the node itself (which prints no line about itself) is in `state`.
fn all_in(state: &'static str, ids: Vec<String>) -> impl Fn(&str, &Seen) -> bool {
    move |me: &str, seen: &Seen| {
        ids.iter()
            .filter(|id| *id != me)
            .all(|id| seen.members.get(id).map(String::as_str) == Some(state))
    }
}

#[test]
fn processes_that_join_through_one_seed_survive_a_third_killed() {
    let n: usize = std::env::var("GOSSIP_CLUSTER_NODES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(12);
    let killed = n / 3;
    let restarted = killed / 2;
    let ids: Vec<String> = (0..n).map(|i| format!("c{i:02}")).collect();
    let mut nodes = vec![start(&ids[0], None)];
    let seed = nodes[0].addr.clone();
    nodes.extend(ids[1..].iter().map(|id| start(id, Some(&seed))));

    let t = wait_until(
        &nodes.iter().collect::<Vec<_>>(),
        "every node lists every other as joined",
        all_in("joined", ids.clone()),
    );
    eprintln!("{n} processes: every list complete {t:?} after the last start");
    // The lists converge faster than the last links of the active views come up.
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(broadcast(&mut nodes[1], "everyone"), (n - 1) as u64);
    let threads: Vec<usize> = nodes.iter().map(threads_of).collect();
    eprintln!("threads per process: {threads:?}");

    // SIGKILL the last third (never the seed or the broadcaster).
    let dead: Vec<String> = ids[n - killed..].to_vec();
    for m in &nodes[n - killed..] {
        signal(&m.child, "-KILL");
    }
    for m in &mut nodes[n - killed..] {
        m.child.wait().unwrap();
    }
    let t = wait_until(
        &nodes[..n - killed].iter().collect::<Vec<_>>(),
        "every live node lists the killed ones as failed",
        all_in("failed", dead.clone()),
    );
    eprintln!("{killed} killed: every list shows them failed after {t:?}");
    // The views heal within a few shuffle periods; a broadcast reaches exactly the living.
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(
        broadcast(&mut nodes[1], "survivors"),
        (n - killed - 1) as u64
    );

    // Restart half of them, same ids (on new ports): a new incarnation overrides the failure,
    // and the new address the old one.
    let back: Vec<String> = dead[..restarted].to_vec();
    for i in n - killed..n - killed + restarted {
        nodes[i] = start(&ids[i], Some(&seed));
    }
    let live_count = n - killed + restarted;
    let t = wait_until(
        &nodes[..live_count].iter().collect::<Vec<_>>(),
        "every live node lists the restarted ones as joined",
        all_in("joined", back),
    );
    eprintln!("{restarted} restarted: every list shows them joined after {t:?}");
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(broadcast(&mut nodes[1], "again"), (live_count - 1) as u64);
    let threads: Vec<usize> = nodes[..live_count].iter().map(threads_of).collect();
    eprintln!("threads per process after the churn: {threads:?}");

    for m in &mut nodes[..live_count] {
        signal(&m.child, "-TERM");
    }
    for m in &mut nodes[..live_count] {
        assert!(m.child.wait().unwrap().success(), "{} exits cleanly", m.id);
    }
}
