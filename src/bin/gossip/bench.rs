//! `gossip bench`: the seed round (or ACK latency under load) on loopback, against plain TCP;
//! progress on a terminal, per-round CSV and an SVG chart on request.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::ValueEnum;
use grpc_gossip::bench::cluster::GossipCluster;
use grpc_gossip::bench::latency::{ack_latency_under_load, LatencyWorkload};
use grpc_gossip::bench::tcp::{TcpCluster, TLS_NAME};
use grpc_gossip::bench::{
    peak_rss_bytes, reset_peak_rss, PayloadSource, RoundReport, Summary, Workload,
};
use grpc_gossip::transport::tls::CertificateAuthority;
use grpc_gossip::{Error, StreamFactory, TransportConfig};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::parse_size;

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

/// Arguments of `gossip bench`.
#[derive(clap::Args)]
pub(crate) struct BenchArgs {
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
    /// Payload bytes in flight to one neighbour (NodeConfig::peer_max_bytes); default: the
    /// node's default.
    #[arg(long, value_parser = parse_size)]
    peer_window: Option<usize>,
    /// Turn the priority lane off (NodeConfig::lane_max_bytes = 0): small messages then wait
    /// behind the bulk queued before them, as before the lane; to measure what it costs.
    #[arg(long)]
    no_lane: bool,
    /// Where payloads of more than 64 KiB come from: one SharedPayload in every message (sent
    /// without a copy to peers of ours), one buffer shared as plain Bytes (copied into each
    /// frame), each written into a fresh Vec before it is sent (then copied into its frame), or
    /// each written into a fresh PayloadBuf (sent without a copy).
    #[arg(long, value_enum, default_value = "shared")]
    payloads: Payloads,
    /// gRPC completion-queue threads shared by the benchmark's nodes (TransportConfig::cq_threads);
    /// default: 2.
    #[arg(long, value_parser = clap::value_parser!(u16).range(1..=64))]
    cq_threads: Option<u16>,
    /// Turn HTTP/2 BDP probing on (off by default on loopback, where the benchmark runs).
    #[arg(long)]
    bdp_probe: bool,
    /// Run the gossip nodes with mutual TLS (throw-away certificates), to measure its cost;
    /// with --baseline tcp the baseline runs over TLS 1.3 too (OpenSSL, AES-256-GCM: the
    /// suite gRPC negotiates between our nodes).
    #[arg(long)]
    tls: bool,
    /// Write each measured round's figures to FILE as CSV.
    #[arg(long, value_name = "FILE")]
    csv: Option<PathBuf>,
    /// Draw throughput per round and ACK latency percentiles to FILE (SVG).
    #[arg(long, value_name = "FILE.svg")]
    chart: Option<PathBuf>,
}

fn secs(d: Duration) -> f64 {
    d.as_secs_f64()
}

/// One measured round, as written to the CSV and drawn in the chart.
struct RoundRow {
    kind: &'static str,
    round: usize,
    seconds: f64,
    mib_per_s: f64,
    acked: usize,
    expected: usize,
    ack_ms: Option<[f64; 3]>,
}

impl RoundRow {
    fn of(kind: &'static str, round: usize, r: &RoundReport, w: &Workload) -> RoundRow {
        let ms = |q| r.ack_quantile(q).map(|d| secs(d) * 1e3);
        let ack_ms = match (ms(0.5), ms(0.99), ms(1.0)) {
            (Some(a), Some(b), Some(c)) => Some([a, b, c]),
            _ => None,
        };
        RoundRow {
            kind,
            round,
            seconds: secs(r.elapsed),
            mib_per_s: r.mib_per_s(w),
            acked: r.acked,
            expected: r.expected,
            ack_ms,
        }
    }
}

/// Round lines on stdout and, on a terminal, a progress bar on stderr (kept out of the way of
/// the lines, and hidden with `--json` or when stderr is not a terminal).
struct Progress {
    bar: ProgressBar,
}

impl Progress {
    fn new(total: usize, quiet: bool) -> Progress {
        let bar = if quiet || !std::io::stderr().is_terminal() {
            ProgressBar::hidden()
        } else {
            let bar =
                ProgressBar::with_draw_target(Some(total as u64), ProgressDrawTarget::stderr());
            if let Ok(style) =
                ProgressStyle::with_template("{msg:>8} [{bar:30}] {pos}/{len} rounds, {elapsed}")
            {
                bar.set_style(style.progress_chars("=> "));
            }
            bar
        };
        Progress { bar }
    }

    fn start(&self, kind: &str) {
        self.bar.set_message(kind.to_owned());
    }

    fn line(&self, text: String) {
        self.bar.suspend(|| println!("{text}"));
    }

    fn round(&self, kind: &str, round: usize, r: &RoundReport, w: &Workload) {
        self.bar.inc(1);
        let mut text = format!(
            "{kind:6} round {round:3}: {:8.4} s  {:9.1} MiB/s  acked {}/{}",
            secs(r.elapsed),
            r.mib_per_s(w),
            r.acked,
            r.expected
        );
        if let (Some(p50), Some(p99)) = (r.ack_quantile(0.5), r.ack_quantile(0.99)) {
            text += &format!(
                "  ACK p50 {:.1} ms p99 {:.1} ms",
                secs(p50) * 1e3,
                secs(p99) * 1e3
            );
        }
        for p in &r.problems {
            text += &format!("\n    {p}");
        }
        self.line(text);
    }

    fn finish(&self) {
        self.bar.finish_and_clear();
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
    kind: &'static str,
    args: &BenchArgs,
    w: &Workload,
    progress: &Progress,
    rows: &mut Vec<RoundRow>,
    mut run: impl FnMut(usize) -> RoundReport,
) -> Vec<RoundReport> {
    progress.start(kind);
    for i in 0..args.warmup {
        let r = run(i);
        if !args.json || !r.all_acked() {
            progress.round(kind, i, &r, w);
        } else {
            progress.bar.inc(1);
        }
    }
    (0..args.rounds)
        .map(|i| {
            let r = run(args.warmup + i);
            progress.round(kind, i + 1, &r, w);
            rows.push(RoundRow::of(kind, i + 1, &r, w));
            r
        })
        .collect()
}

fn write_csv(path: &std::path::Path, rows: &[RoundRow]) -> Result<(), Error> {
    let mut text = String::from(
        "kind,round,seconds,mib_per_s,acked,expected,ack_p50_ms,ack_p99_ms,ack_max_ms\n",
    );
    for r in rows {
        let ack = match r.ack_ms {
            Some([p50, p99, max]) => format!("{p50:.3},{p99:.3},{max:.3}"),
            None => ",,".into(),
        };
        text += &format!(
            "{},{},{:.6},{:.1},{},{},{ack}\n",
            r.kind, r.round, r.seconds, r.mib_per_s, r.acked, r.expected
        );
    }
    std::fs::write(path, text).map_err(|e| {
        Error::Io(std::io::Error::new(
            e.kind(),
            format!("{}: {e}", path.display()),
        ))
    })
}

/// One line of a chart panel: a label, a colour and (round, value) points.
type Line = (&'static str, plotters::style::RGBColor, Vec<(usize, f64)>);

/// Draws one panel: `lines` against the round number, with a legend.
fn panel<DB: plotters::prelude::DrawingBackend>(
    area: &plotters::prelude::DrawingArea<DB, plotters::coord::Shift>,
    caption: &str,
    y_desc: &str,
    rounds: usize,
    lines: Vec<Line>,
) -> Result<(), String> {
    use plotters::prelude::*;
    let err = |e: DrawingAreaErrorKind<DB::ErrorType>| e.to_string();
    let y_max = lines
        .iter()
        .flat_map(|(_, _, points)| points.iter().map(|p| p.1))
        .fold(1.0, f64::max)
        * 1.4; // headroom above the lines for the legend
    let mut chart = ChartBuilder::on(area)
        .margin(12)
        .x_label_area_size(36)
        .y_label_area_size(60)
        .caption(caption, ("sans-serif", 16))
        .build_cartesian_2d(1usize..rounds, 0.0..y_max)
        .map_err(err)?;
    chart
        .configure_mesh()
        .x_desc("round")
        .y_desc(y_desc)
        .draw()
        .map_err(err)?;
    for (label, color, points) in lines.into_iter().filter(|l| !l.2.is_empty()) {
        chart
            .draw_series(LineSeries::new(points, color.stroke_width(2)))
            .map_err(err)?
            .label(label)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color));
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperRight)
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()
        .map_err(err)
}

/// Two panels: MiB/s per round (gossip and, if run, TCP), and gossip's ACK latency
/// p50/p99/max per round.
fn draw_chart(path: &std::path::Path, rows: &[RoundRow], title: &str) -> Result<(), Error> {
    use plotters::prelude::*;
    let chart_err =
        |e: String| Error::Io(std::io::Error::other(format!("{}: {e}", path.display())));
    let rounds = rows.iter().map(|r| r.round).max().unwrap_or(1).max(2);
    let root = SVGBackend::new(path, (960, 720)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| chart_err(e.to_string()))?;
    let root = root
        .titled(title, ("sans-serif", 20))
        .map_err(|e| chart_err(e.to_string()))?;
    let (top, bottom) = root.split_vertically(360);
    let throughput = |kind| {
        rows.iter()
            .filter(|r| r.kind == kind)
            .map(|r| (r.round, r.mib_per_s))
            .collect()
    };
    panel(
        &top,
        "throughput per round",
        "MiB/s",
        rounds,
        vec![
            ("gossip", BLUE, throughput("gossip")),
            ("tcp", RED, throughput("tcp")),
        ],
    )
    .map_err(chart_err)?;
    let latency = |i: usize| {
        rows.iter()
            .filter_map(|r| r.ack_ms.map(|a| (r.round, a[i])))
            .collect()
    };
    panel(
        &bottom,
        "gossip send-to-ACK latency per round",
        "ms",
        rounds,
        vec![
            ("p50", GREEN, latency(0)),
            ("p99", MAGENTA, latency(1)),
            ("max", BLACK, latency(2)),
        ],
    )
    .map_err(chart_err)?;
    root.present().map_err(|e| chart_err(e.to_string()))
}

fn ack_latency(
    args: &BenchArgs,
    factory: Arc<StreamFactory>,
) -> Result<ExitCode, grpc_gossip::Error> {
    let w = LatencyWorkload {
        probes: args.probes.max(1),
        bulk_bytes: args.payload,
        slots: args.slots,
        peer_max_bytes: args
            .peer_window
            .unwrap_or(LatencyWorkload::default().peer_max_bytes),
        lane_max_bytes: lane_max_bytes(args),
        bulk_payloads: args.payloads.into(),
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

/// `--payloads`.
#[derive(Clone, Copy, Debug, ValueEnum)]
pub(crate) enum Payloads {
    /// One SharedPayload in every message.
    Shared,
    /// One Bytes buffer in every message.
    Bytes,
    /// A fresh Vec per message, copied into its frame.
    Fresh,
    /// A fresh PayloadBuf per message, framed in place.
    Framed,
}

impl From<Payloads> for PayloadSource {
    fn from(payloads: Payloads) -> PayloadSource {
        match payloads {
            Payloads::Shared => PayloadSource::Shared,
            Payloads::Bytes => PayloadSource::SharedBytes,
            Payloads::Fresh => PayloadSource::Fresh,
            Payloads::Framed => PayloadSource::Framed,
        }
    }
}

/// The nodes' `lane_max_bytes`: the default, or 0 with `--no-lane`.
fn lane_max_bytes(args: &BenchArgs) -> usize {
    match args.no_lane {
        true => 0,
        false => grpc_gossip::config::DEFAULT_LANE_MAX_BYTES,
    }
}

/// Runs the benchmark `args` asks for and prints its figures.
pub(crate) fn run(args: BenchArgs) -> Result<ExitCode, grpc_gossip::Error> {
    let w = Workload {
        nodes: args.nodes,
        messages_per_peer: args.messages,
        payload_bytes: args.payload,
        slots: args.slots,
        ttl: args.ttl,
        peer_max_bytes: args
            .peer_window
            .unwrap_or(Workload::default().peer_max_bytes),
        lane_max_bytes: lane_max_bytes(&args),
        payloads: args.payloads.into(),
    };
    if args.rounds == 0 {
        return Err(grpc_gossip::Error::Config {
            field: "rounds",
            reason: "must be > 0".into(),
        });
    }
    // The nodes take the workload's payloads in one frame; the factory fits their frames.
    let mut limits = grpc_gossip::Limits::default();
    limits.max_payload_bytes = limits.max_payload_bytes.max(w.payload_bytes);
    let as_u32 = |field: &'static str, v: usize| {
        u32::try_from(v).map_err(|_| grpc_gossip::Error::Config {
            field,
            reason: format!("{v} is too large"),
        })
    };
    let mut transport = TransportConfig {
        http2_bdp_probe: args.bdp_probe.then_some(true),
        stream_window_bytes: args
            .stream_window
            .map(|v| as_u32("stream-window", v))
            .transpose()?,
        ..TransportConfig::for_limits(&limits)
    };
    if let Some(n) = args.cq_threads {
        transport.cq_threads = usize::from(n);
    }
    if let Some(frame) = args.max_frame {
        transport.http2_max_frame_bytes = Some(as_u32("max-frame", frame)?);
    }
    if args.mode == Mode::AckLatency {
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
    let ca = match args.tls {
        true => Some(CertificateAuthority::generate("gossip bench CA")?),
        false => None,
    };
    let cluster = if let Some(ca) = &ca {
        // Each node holds its own certificate, so each gets its own factory.
        GossipCluster::start_with(&w, |id| {
            Ok(StreamFactory::new(TransportConfig {
                tls: Some(ca.node_config(id)?),
                ..transport.clone()
            }))
        })?
    } else {
        GossipCluster::start(&w, StreamFactory::new(transport))?
    };
    if args.tls {
        println!("gossip nodes use mutual TLS");
    }
    let per_kind = args.warmup + args.rounds;
    let kinds = if args.baseline.is_some() { 2 } else { 1 };
    let progress = Progress::new(per_kind * kinds, args.json);
    let mut rows = Vec::new();
    let gossip = rounds("gossip", &args, &w, &progress, &mut rows, |i| {
        cluster.run_round(i)
    });
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
            // With --tls the baseline is encrypted too: same suite, same library.
            let cluster = match &ca {
                Some(ca) => {
                    println!("the TCP baseline uses mutual TLS 1.3 (OpenSSL, AES-256-GCM)");
                    TcpCluster::start_tls(&w, &ca.node_config(TLS_NAME)?)?
                }
                None => TcpCluster::start(&w)?,
            };
            let reports = rounds("tcp", &args, &w, &progress, &mut rows, |i| {
                cluster.run_round(i)
            });
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

    progress.finish();
    if let Some(path) = &args.csv {
        write_csv(path, &rows)?;
        println!("per-round figures: {}", path.display());
    }
    if let Some(path) = &args.chart {
        let title = format!(
            "gossip bench: {} nodes, {} x {} B per pair{}",
            w.nodes,
            w.messages_per_peer,
            w.payload_bytes,
            if args.tls { ", TLS" } else { "" }
        );
        draw_chart(path, &rows, &title)?;
        println!("chart: {}", path.display());
    }
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
            "tls": args.tls,
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
