//! `gossip sim`: broadcasts on a large simulated graph (the protocol core, no gRPC), or with
//! `--membership`, partial views (HyParView) that assemble and heal the overlay.

use std::process::ExitCode;

use crate::parse_size;

/// Arguments of `gossip sim`.
#[derive(clap::Args)]
pub(crate) struct SimArgs {
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
    /// Simulate the partial views instead: --nodes join through one seed, then --churn of them
    /// crash at once and as many new ones join, and shuffle rounds heal the overlay.
    #[arg(long)]
    membership: bool,
    /// With --membership: the fraction of nodes that crash at once (e.g. 0.2).
    #[arg(long, default_value_t = 0.2)]
    churn: f64,
    /// With --membership: peers in the active view (the links).
    #[arg(long, default_value_t = 5)]
    active_view: usize,
    /// With --membership: peers in the passive view.
    #[arg(long, default_value_t = 30)]
    passive_view: usize,
    /// With --membership: a node with a full active view swaps a neighbour on average once
    /// every this many shuffles (0: never).
    #[arg(long, default_value_t = 50)]
    swap_every: u32,
}

/// `gossip sim --membership`.
fn membership(args: &SimArgs) -> Result<ExitCode, grpc_gossip::Error> {
    use grpc_gossip::membership::sim::{self, MembershipSimConfig};
    use grpc_gossip::membership::ViewConfig;
    let cfg = MembershipSimConfig {
        nodes: args.nodes,
        churn: args.churn,
        seed: args.seed,
        views: ViewConfig {
            active: args.active_view,
            passive: args.passive_view,
            swap_every: args.swap_every,
            ..ViewConfig::default()
        },
        ..MembershipSimConfig::default()
    };
    println!(
        "simulating {} nodes joining through one seed (active view {}, passive {}), then {:.0}% \
         crashing at once and as many joining",
        cfg.nodes,
        cfg.views.active,
        cfg.views.passive,
        cfg.churn * 100.0
    );
    let started = std::time::Instant::now();
    let r = sim::run(&cfg)?;
    println!(
        "after the crash: {} components, flood reaches {:.4} of the live nodes",
        r.components_after_crash, r.reliability_after_crash
    );
    let healed = match r.rounds_to_heal {
        Some(n) => format!("healed in {n} shuffle rounds"),
        None => format!("NOT healed within {} shuffle rounds", cfg.max_rounds),
    };
    println!(
        "{healed}: {} live nodes, {} component(s), reliability {:.4}, active views {}..={} \
         (bound {}), {} asymmetric links, {:.1} messages per node per round ({:.2}/s); {:.1} s",
        r.live,
        r.components,
        r.reliability,
        r.min_active_view,
        r.max_active_view,
        r.active_view,
        r.asymmetric_links,
        r.messages_per_node_per_round,
        r.messages_per_node_per_second,
        started.elapsed().as_secs_f64()
    );
    match r.rounds_to_converge {
        Some(n) => println!(
            "member lists converged in {n} shuffle rounds ({} entries each, failed ones included)",
            r.list_entries
        ),
        None => println!(
            "member lists NOT converged within {} shuffle rounds",
            cfg.max_rounds
        ),
    }
    println!(
        "anti-entropy: {} exchanges found their digests differing and sent {} entries",
        r.anti_entropy_exchanges, r.anti_entropy_entries
    );
    if args.json {
        println!("{}", serde_json::to_string(&r).unwrap_or_default());
    }
    Ok(
        match r.components == 1 && r.reliability >= 1.0 && r.members_converged {
            true => ExitCode::SUCCESS,
            false => ExitCode::FAILURE,
        },
    )
}

/// Runs the simulation and prints its figures.
pub(crate) fn run(args: SimArgs) -> Result<ExitCode, grpc_gossip::Error> {
    if args.membership {
        return membership(&args);
    }
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
