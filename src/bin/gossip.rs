//! `gossip`: run the seed benchmark, or run one node as a process.

use std::io::BufRead;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use clap::{Parser, Subcommand, ValueEnum};
use crossbeam_channel::{select, unbounded, RecvTimeoutError};
use grpc_gossip::bench::cluster::GossipCluster;
use grpc_gossip::bench::latency::{ack_latency_under_load, LatencyWorkload};
use grpc_gossip::bench::tcp::TcpCluster;
use grpc_gossip::bench::{peak_rss_bytes, reset_peak_rss, RoundReport, Summary, Workload};
use grpc_gossip::{
    Message, NeighborEvent, NeighborInfo, Node, NodeConfig, StreamFactory, TransportConfig,
};
use log::{info, warn};

#[derive(Parser)]
#[command(
    name = "gossip",
    version,
    about = "Large-message gossip over gRPC double streams"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a benchmark in-process on loopback: by default the seed round (a full mesh of nodes,
    /// each sending MESSAGES payloads to every other node; every message must be ACKed), or
    /// `--mode ack-latency`.
    Bench(BenchArgs),
    /// Run one node: connect to its peers, send what stdin says, print events on stdout.
    /// Stops cleanly on Ctrl-C / SIGTERM.
    #[command(after_help = NODE_HELP)]
    Node(NodeArgs),
    /// Simulate broadcasts on a random graph of many nodes (the protocol core over simulated
    /// links: no gRPC, deterministic for a seed) and report reliability, RMR, last-delivery hop
    /// and whether the origin's converged ACK count is exact.
    Sim(SimArgs),
}

#[derive(clap::Args)]
struct SimArgs {
    /// Nodes in the graph.
    #[arg(long, default_value_t = 1000)]
    nodes: usize,
    /// Neighbours per node (and eager pushes per hop for small payloads).
    #[arg(long, default_value_t = 3)]
    fanout: usize,
    /// Fraction of the nodes killed while the first measured broadcast spreads (e.g. 0.1).
    #[arg(long, default_value_t = 0.0)]
    kill: f64,
    /// Probability that a frame is lost on its link.
    #[arg(long, default_value_t = 0.0)]
    loss: f64,
    /// Payload size (e.g. 512KiB; at least 64KiB uses the lazy plane).
    #[arg(long, default_value = "512KiB", value_parser = parse_size)]
    payload: usize,
    /// Broadcasts before measuring (they let the lazy plane settle into a tree).
    #[arg(long, default_value_t = 10)]
    warmup: usize,
    /// Broadcasts measured.
    #[arg(long, default_value_t = 10)]
    broadcasts: usize,
    /// Seed of the random graph, latencies, origins and failures.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Print each broadcast's figures too.
    #[arg(long)]
    verbose: bool,
    /// Print one JSON object with the results as the last line.
    #[arg(long)]
    json: bool,
}

const NODE_HELP: &str = "\
Stdin, one command per line:
  PEER some text       send `some text` to neighbour PEER
  PEER @path/to/file   send the file's bytes to PEER
  * some text          broadcast `some text` to the whole cluster (multi-hop)
  (empty or #...)      nothing

Stdout, one line per event:
  listening id=.. addr=..        connected peer=.. addr=..
  sent hash=.. peer=..           completed hash=.. peer=.. outcome=\"..\" attempts=.. elapsed_ms=..
  broadcast hash=.. origin=..    converged hash=.. reached=N missing=ID,ID elapsed_ms=..
  delivered from=.. hash=.. [origin=..] bytes=.. text=\"..\"
  neighbor peer=.. state=up|down|reconnecting|removed [reason=..]
  error ..                       stopped id=..

Logs go to stderr (RUST_LOG=debug for more).";

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Mode {
    /// The seed round: a full mesh, every node sending to every other.
    Seed,
    /// ACK round-trip time of small messages while PAYLOAD-sized messages saturate two nodes
    /// in both directions.
    AckLatency,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Baseline {
    /// The same workload over plain loopback TCP (length-prefixed frames, one ACK per message).
    Tcp,
}

#[derive(clap::Args)]
struct BenchArgs {
    /// What to measure.
    #[arg(long, value_enum, default_value_t = Mode::Seed)]
    mode: Mode,
    /// Small messages timed (ack-latency mode).
    #[arg(long, default_value_t = 500)]
    probes: usize,
    /// Nodes in the full mesh.
    #[arg(long, default_value_t = 4)]
    nodes: usize,
    /// Messages each node sends to each other node per round.
    #[arg(long, default_value_t = 30)]
    messages: usize,
    /// Payload size (e.g. 512KiB, 4MiB).
    #[arg(long, default_value = "512KiB", value_parser = parse_size)]
    payload: usize,
    /// Measured rounds.
    #[arg(long, default_value_t = 5)]
    rounds: usize,
    /// Unmeasured rounds run first (connection set-up, allocator warm-up).
    #[arg(long, default_value_t = 1)]
    warmup: usize,
    /// Store slots per node.
    #[arg(long, default_value_t = 200)]
    slots: usize,
    /// Store TTL per node (e.g. 120s).
    #[arg(long, default_value = "120s", value_parser = humantime::parse_duration)]
    ttl: Duration,
    /// Also run the workload over this baseline and print the ratio.
    #[arg(long, value_enum)]
    baseline: Option<Baseline>,
    /// Print one JSON object with the results as the last line.
    #[arg(long)]
    json: bool,
    /// HTTP/2 initial stream window (e.g. 1MiB); default: gRPC's.
    #[arg(long, value_parser = parse_size)]
    stream_window: Option<usize>,
    /// Largest HTTP/2 frame (e.g. 64KiB, at most 16MiB - 1); default: 1MiB.
    #[arg(long, value_parser = parse_size)]
    max_frame: Option<usize>,
    /// Turn HTTP/2 BDP probing on (off by default).
    #[arg(long)]
    bdp_probe: bool,
}

#[derive(clap::Args)]
struct NodeArgs {
    /// This node's id.
    #[arg(long)]
    id: String,
    /// Address to listen on (port 0 picks one; the bound address is logged).
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: String,
    /// A neighbour as ID=HOST:PORT; repeat for each. Connection is retried until it is up;
    /// stdin is read once every peer is connected.
    #[arg(long = "peer", value_parser = parse_peer)]
    peers: Vec<(String, String)>,
    /// Store slots.
    #[arg(long, default_value_t = 200)]
    slots: usize,
    /// Store TTL (e.g. 120s).
    #[arg(long, default_value = "120s", value_parser = humantime::parse_duration)]
    ttl: Duration,
    /// Largest payload sent or accepted (e.g. 64MiB).
    #[arg(long, default_value = "64MiB", value_parser = parse_size)]
    max_payload: usize,
    /// Exit once stdin is closed and every message sent has completed.
    #[arg(long)]
    exit_when_done: bool,
}

fn parse_size(s: &str) -> Result<usize, String> {
    let size: bytesize::ByteSize = s.trim().parse().map_err(|e| format!("{s:?}: {e}"))?;
    usize::try_from(size.as_u64()).map_err(|_| format!("{s:?} is too large"))
}

fn parse_peer(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((id, addr)) if !id.is_empty() && !addr.is_empty() => Ok((id.into(), addr.into())),
        _ => Err(format!("{s:?}: expected ID=HOST:PORT")),
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let default_level = match cli.command {
        Command::Bench(_) => "warn",
        Command::Node(_) => "info",
        Command::Sim(_) => "warn",
    };
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or(default_level))
        .init();
    let result = match cli.command {
        Command::Bench(args) => bench(args),
        Command::Node(args) => node(args),
        Command::Sim(args) => sim(args),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("gossip: {e}");
            ExitCode::FAILURE
        }
    }
}

fn sim(args: SimArgs) -> Result<ExitCode, grpc_gossip::Error> {
    let cfg = grpc_gossip::sim::SimConfig {
        nodes: args.nodes,
        fanout: args.fanout,
        payload: args.payload,
        kill: args.kill,
        loss: args.loss,
        warmup: args.warmup,
        broadcasts: args.broadcasts.max(1),
        seed: args.seed,
        ..Default::default()
    };
    println!(
        "simulating {} nodes, {} neighbours each, {} B payloads, {:.0}% killed, {:.1}% loss: {} warm-up + {} measured broadcasts",
        cfg.nodes,
        cfg.fanout,
        cfg.payload,
        cfg.kill * 100.0,
        cfg.loss * 100.0,
        cfg.warmup,
        cfg.broadcasts
    );
    let r = grpc_gossip::sim::run(cfg)?;
    for b in r.broadcasts.iter().filter(|b| args.verbose || b.killed > 0) {
        println!(
            "broadcast {:3}{}: reliability {:.4}  rmr {:.3}  last hop {:2}  delivered {} ({:.1} ms)  converged {} in {:.1} ms{}  missing {}  killed {}",
            b.index,
            if b.measured { "" } else { " (warm-up)" },
            b.reliability,
            b.rmr,
            b.last_delivery_hop,
            b.delivered,
            b.last_delivery_ms,
            b.converged_count,
            b.converged_ms,
            if b.converged_count_exact { " (exact)" } else { " (NOT exact)" },
            b.missing,
            b.killed
        );
    }
    println!(
        "measured {}: reliability min {:.4} mean {:.4} (of reachable nodes: min {:.4})  rmr {:.3}  last-delivery hop {}  converged count exact in {}/{}",
        r.measured,
        r.reliability,
        r.reliability_mean,
        r.reachable_reliability,
        r.rmr,
        r.last_delivery_hop,
        r.exact_broadcasts,
        r.measured
    );
    if args.json {
        let out = serde_json::json!({
            "nodes": r.nodes,
            "fanout": r.fanout,
            "payload": r.payload,
            "kill": r.kill,
            "seed": r.seed,
            "reliability": r.reliability,
            "reliability_mean": r.reliability_mean,
            "reachable_reliability": r.reachable_reliability,
            "rmr": r.rmr,
            "last_delivery_hop": r.last_delivery_hop,
            "converged_count_exact": r.converged_count_exact,
            "exact_broadcasts": r.exact_broadcasts,
            "measured": r.measured,
        });
        println!("{out}");
    }
    Ok(ExitCode::SUCCESS)
}

fn secs(d: Duration) -> f64 {
    d.as_secs_f64()
}

fn print_round(kind: &str, round: usize, r: &RoundReport, w: &Workload) {
    println!(
        "{kind:6} round {round:3}: {:8.4} s  {:9.1} MiB/s  acked {}/{}",
        secs(r.elapsed),
        r.mib_per_s(w),
        r.acked,
        r.expected
    );
    for p in &r.problems {
        println!("    {p}");
    }
}

fn print_summary(kind: &str, s: &Summary, w: &Workload) {
    let mib = w.bytes_per_round() as f64 / (1024.0 * 1024.0);
    println!(
        "{kind:6} min {:.4} s  median {:.4} s  max {:.4} s  ({:.1} MiB/s at the median)",
        secs(s.min),
        secs(s.median),
        secs(s.max),
        mib / secs(s.median)
    );
}

/// Runs warm-up and measured rounds; returns the measured reports.
fn rounds(
    kind: &str,
    args: &BenchArgs,
    w: &Workload,
    mut run: impl FnMut(usize) -> RoundReport,
) -> Vec<RoundReport> {
    for i in 0..args.warmup {
        let r = run(i);
        if !args.json || !r.all_acked() {
            print_round(kind, i, &r, w);
        }
    }
    (0..args.rounds)
        .map(|i| {
            let r = run(args.warmup + i);
            print_round(kind, i + 1, &r, w);
            r
        })
        .collect()
}

fn ack_latency(
    args: &BenchArgs,
    factory: Arc<StreamFactory>,
) -> Result<ExitCode, grpc_gossip::Error> {
    let w = LatencyWorkload {
        probes: args.probes.max(1),
        bulk_bytes: args.payload,
        slots: args.slots,
        ..LatencyWorkload::default()
    };
    println!(
        "ack latency under load: {} probes of {} B, one at a time (at most one per {:?}), while {} B messages saturate two nodes both ways",
        w.probes, w.probe_bytes, w.probe_interval, w.bulk_bytes
    );
    let r = ack_latency_under_load(&w, factory)?;
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    let (p50, p99, max) = (r.quantile(0.5), r.quantile(0.99), r.quantile(1.0));
    println!(
        "probe send-to-ACK: p50 {:.3} ms  p99 {:.3} ms  max {:.3} ms  (bulk {:.1} MiB/s meanwhile)",
        ms(p50),
        ms(p99),
        ms(max),
        r.bulk_mib_per_s
    );
    if args.json {
        let out = serde_json::json!({
            "mode": "ack-latency",
            "probes": r.samples.len(),
            "probe_bytes": w.probe_bytes,
            "bulk_bytes": w.bulk_bytes,
            "p50_ms": ms(p50),
            "p99_ms": ms(p99),
            "max_ms": ms(max),
            "bulk_mib_per_s": r.bulk_mib_per_s,
        });
        println!("{out}");
    }
    Ok(ExitCode::SUCCESS)
}

fn bench(args: BenchArgs) -> Result<ExitCode, grpc_gossip::Error> {
    let w = Workload {
        nodes: args.nodes,
        messages_per_peer: args.messages,
        payload_bytes: args.payload,
        slots: args.slots,
        ttl: args.ttl,
    };
    if args.rounds == 0 {
        return Err(grpc_gossip::Error::Config {
            field: "rounds",
            reason: "must be > 0".into(),
        });
    }
    if args.mode == Mode::AckLatency {
        let mut limits = grpc_gossip::Limits::default();
        limits.max_payload_bytes = limits.max_payload_bytes.max(w.payload_bytes);
        let transport = TransportConfig {
            max_grpc_message_bytes: limits.grpc_message_limit(),
            ..Default::default()
        };
        return ack_latency(&args, StreamFactory::new(transport));
    }
    println!(
        "seed benchmark: {} nodes, {} x {} B per directed pair, {} messages ({:.1} MiB) per round",
        w.nodes,
        w.messages_per_peer,
        w.payload_bytes,
        w.messages_per_round(),
        w.bytes_per_round() as f64 / (1024.0 * 1024.0)
    );
    reset_peak_rss();
    let mut limits = grpc_gossip::Limits::default();
    limits.max_payload_bytes = limits.max_payload_bytes.max(w.payload_bytes);
    let as_u32 = |field: &'static str, v: usize| {
        u32::try_from(v).map_err(|_| grpc_gossip::Error::Config {
            field,
            reason: format!("{v} is too large"),
        })
    };
    let transport = TransportConfig {
        max_grpc_message_bytes: limits.grpc_message_limit(),
        http2_bdp_probe: args.bdp_probe,
        stream_window_bytes: args
            .stream_window
            .map(|v| as_u32("stream-window", v))
            .transpose()?,
        ..Default::default()
    };
    let mut transport = transport;
    if let Some(frame) = args.max_frame {
        transport.http2_max_frame_bytes = Some(as_u32("max-frame", frame)?);
    }
    let factory = StreamFactory::new(transport);
    let cluster = GossipCluster::start(&w, factory)?;
    let gossip = rounds("gossip", &args, &w, |i| cluster.run_round(i));
    cluster.shutdown();
    let peak = peak_rss_bytes();
    let times: Vec<Duration> = gossip.iter().map(|r| r.elapsed).collect();
    let summary = Summary::of(&times).ok_or(grpc_gossip::Error::Shutdown)?;
    print_summary("gossip", &summary, &w);
    if let Some(p) = peak {
        println!(
            "peak memory (RSS) of the gossip run: {:.1} MiB",
            p as f64 / (1024.0 * 1024.0)
        );
    }

    let tcp = match args.baseline {
        Some(Baseline::Tcp) => {
            let cluster = TcpCluster::start(&w)?;
            let reports = rounds("tcp", &args, &w, |i| cluster.run_round(i));
            let times: Vec<Duration> = reports.iter().map(|r| r.elapsed).collect();
            let s = Summary::of(&times).ok_or(grpc_gossip::Error::Shutdown)?;
            print_summary("tcp", &s, &w);
            println!(
                "ratio gossip/tcp (medians): {:.2}",
                secs(summary.median) / secs(s.median)
            );
            Some(s)
        }
        None => None,
    };

    let acked: usize = gossip.iter().map(|r| r.acked).sum();
    let expected: usize = gossip.iter().map(|r| r.expected).sum();
    if args.json {
        let mib = w.bytes_per_round() as f64 / (1024.0 * 1024.0);
        let mut out = serde_json::json!({
            "nodes": w.nodes,
            "messages_per_peer": w.messages_per_peer,
            "payload_bytes": w.payload_bytes,
            "rounds": args.rounds,
            "round_s": times.iter().map(|d| secs(*d)).collect::<Vec<_>>(),
            "median_s": secs(summary.median),
            "min_s": secs(summary.min),
            "max_s": secs(summary.max),
            "mib_per_s": mib / secs(summary.median),
            "acked": acked,
            "expected": expected,
            "peak_rss_bytes": peak,
        });
        if let Some(s) = tcp {
            out["tcp_median_s"] = secs(s.median).into();
            out["tcp_min_s"] = secs(s.min).into();
            out["tcp_max_s"] = secs(s.max).into();
            out["ratio"] = (secs(summary.median) / secs(s.median)).into();
        }
        println!("{out}");
    }
    if acked == expected {
        Ok(ExitCode::SUCCESS)
    } else {
        eprintln!("gossip: ACK incomplete: received {acked} / {expected}");
        Ok(ExitCode::FAILURE)
    }
}

/// One line of stdin, parsed.
enum StdinCommand {
    Send { target: String, payload: Bytes },
    Broadcast(Bytes),
}

fn parse_line(line: &str) -> Result<Option<StdinCommand>, String> {
    let line = line.trim_end_matches(['\r', '\n']);
    if line.trim().is_empty() || line.starts_with('#') {
        return Ok(None);
    }
    let (target, rest) = line.split_once(' ').unwrap_or((line, ""));
    let payload = match rest.strip_prefix('@') {
        Some(path) => Bytes::from(std::fs::read(path).map_err(|e| format!("{path}: {e}"))?),
        None => Bytes::copy_from_slice(rest.as_bytes()),
    };
    Ok(Some(if target == "*" {
        StdinCommand::Broadcast(payload)
    } else {
        StdinCommand::Send {
            target: target.to_owned(),
            payload,
        }
    }))
}

fn preview(payload: &[u8]) -> String {
    let text = String::from_utf8_lossy(&payload[..payload.len().min(64)]);
    text.replace(['\n', '\r', '\t'], " ")
}

fn node(args: NodeArgs) -> Result<ExitCode, grpc_gossip::Error> {
    let mut config = NodeConfig::new(args.id.clone(), args.listen.clone());
    config.slots = args.slots;
    config.ttl = args.ttl;
    config.limits.max_payload_bytes = args.max_payload;
    let transport = TransportConfig {
        max_grpc_message_bytes: config.limits.grpc_message_limit(),
        ..Default::default()
    };
    let node = Arc::new(
        Node::builder(config)
            .factory(StreamFactory::new(transport))
            .start()?,
    );
    println!("listening id={} addr={}", node.id(), node.local_addr());

    let (stop_tx, stop_rx) = unbounded::<()>();
    let signal_tx = stop_tx.clone();
    // Dropped on exit: wakes the connector threads.
    let (quit_tx, quit_rx) = crossbeam_channel::bounded::<()>(0);
    ctrlc::set_handler(move || {
        let _ = signal_tx.send(());
    })
    .map_err(|e| grpc_gossip::Error::Io(std::io::Error::other(e)))?;

    // Connect to every peer in the background, retrying with backoff until it is up.
    let (connected_tx, connected_rx) = unbounded::<()>();
    let mut connectors = Vec::new();
    for (id, addr) in args.peers.clone() {
        let node = node.clone();
        let quit = quit_rx.clone();
        let connected = connected_tx.clone();
        connectors.push(std::thread::spawn(move || {
            let mut backoff = Duration::from_millis(200);
            loop {
                match node.connect_to_neighbor(NeighborInfo::new(id.clone(), addr.clone())) {
                    Ok(()) => {
                        println!("connected peer={id} addr={addr}");
                        let _ = connected.send(());
                        return;
                    }
                    Err(grpc_gossip::Error::Shutdown) => return,
                    Err(e) => warn!("connect to {id} at {addr}: {e}; retrying in {backoff:?}"),
                }
                if quit.recv_timeout(backoff) != Err(RecvTimeoutError::Timeout) {
                    return;
                }
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        }));
    }

    let (line_tx, line_rx) = unbounded::<String>();
    std::thread::spawn(move || {
        for line in std::io::stdin().lock().lines() {
            match line {
                Ok(l) => {
                    if line_tx.send(l).is_err() {
                        return;
                    }
                }
                Err(_) => return,
            }
        }
    });

    let completions = node.completions();
    let broadcasts = node.broadcast_completions();
    let deliveries = node.deliveries();
    let events = node.events();
    let mut seq = 0u64;
    let mut pending = 0usize;
    let mut stdin_open = true;
    let started = Instant::now();
    // Commands are read once every peer is connected, so the first lines do not fail.
    let mut unconnected = args.peers.len();
    let never = crossbeam_channel::never::<String>();
    loop {
        let lines = if unconnected == 0 { &line_rx } else { &never };
        if args.exit_when_done && !stdin_open && pending == 0 {
            break;
        }
        select! {
            recv(stop_rx) -> _ => break,
            recv(connected_rx) -> _ => unconnected = unconnected.saturating_sub(1),
            recv(lines) -> line => match line {
                Err(_) => { stdin_open = false; }
                Ok(line) => match parse_line(&line) {
                    Ok(None) => {}
                    Err(e) => println!("error {e}"),
                    Ok(Some(cmd)) => {
                        let send = |target: &str, payload: Bytes, seq: &mut u64| {
                            *seq += 1;
                            let hash = format!("{}-{}", node.id(), seq);
                            node.send_message(target, Message::new(hash, payload))
                        };
                        match cmd {
                            StdinCommand::Send { target, payload } => {
                                match send(&target, payload, &mut seq) {
                                    Ok(key) => { pending += 1; println!("sent hash={} peer={}", key.hash, key.peer); }
                                    Err(e) => println!("error peer={target} {e}"),
                                }
                            }
                            StdinCommand::Broadcast(payload) => {
                                seq += 1;
                                let hash = format!("{}-{}", node.id(), seq);
                                match node.broadcast(Message::new(hash, payload)) {
                                    Ok(id) => { pending += 1; println!("broadcast hash={} origin={}", id.hash, id.origin); }
                                    Err(e) => println!("error broadcast {e}"),
                                }
                            }
                        }
                    }
                }
            },
            recv(broadcasts) -> c => if let Ok(c) = c {
                pending = pending.saturating_sub(1);
                let missing: Vec<&str> = c.missing.iter().map(|m| m.as_str()).collect();
                println!(
                    "converged hash={} reached={} missing={} elapsed_ms={:.3}",
                    c.id.hash, c.reached, missing.join(","), c.elapsed.as_secs_f64() * 1e3
                );
            },
            recv(completions) -> c => if let Ok(c) = c {
                pending = pending.saturating_sub(1);
                println!(
                    "completed hash={} peer={} outcome={:?} attempts={} elapsed_ms={:.3}",
                    c.key.hash, c.key.peer, c.outcome.to_string(), c.attempts, c.elapsed.as_secs_f64() * 1e3
                );
            },
            recv(events) -> e => if let Ok(e) = e {
                match e {
                    NeighborEvent::Up { peer } => println!("neighbor peer={peer} state=up"),
                    NeighborEvent::Down { peer, reason } => {
                        println!("neighbor peer={peer} state=down reason={reason:?}")
                    }
                    NeighborEvent::Reconnecting { peer, attempt, retry_in, error } => println!(
                        "neighbor peer={peer} state=reconnecting attempt={attempt} retry_in_ms={} error={error:?}",
                        retry_in.as_millis()
                    ),
                    NeighborEvent::Removed { peer } => println!("neighbor peer={peer} state=removed"),
                }
            },
            recv(deliveries) -> d => if let Ok(d) = d {
                let origin = d.origin.as_ref().map(|o| format!(" origin={o}")).unwrap_or_default();
                println!(
                    "delivered from={} hash={}{origin} bytes={} text={:?}",
                    d.from, d.hash, d.payload.len(), preview(&d.payload)
                );
            },
        }
    }
    info!("stopping after {:?}", started.elapsed());
    drop(stop_tx);
    drop(quit_tx);
    node.shutdown();
    for c in connectors {
        let _ = c.join();
    }
    // Completions produced by the shutdown itself (messages still in flight).
    for c in completions.try_iter() {
        println!(
            "completed hash={} peer={} outcome={:?} elapsed_ms={:.3}",
            c.key.hash,
            c.key.peer,
            c.outcome.to_string(),
            c.elapsed.as_secs_f64() * 1e3
        );
    }
    println!("stopped id={}", node.id());
    Ok(ExitCode::SUCCESS)
}
