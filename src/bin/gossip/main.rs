//! `gossip`: run a node as a service, benchmark the library, simulate broadcasts, and make
//! certificates for a TLS cluster.

mod bench;
mod certs;
mod malloc;
mod node;
mod settings;
mod sim;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// `gossip --version`: the crate version, the commit and features it was built from, and the
/// transport it links.
const VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (commit ",
    env!("GOSSIP_GIT_COMMIT"),
    "; cargo features: ",
    env!("GOSSIP_FEATURES"),
    "; gRPC C core via grpcio 0.13, TLS via OpenSSL)"
);

#[derive(Parser)]
#[command(
    name = "gossip",
    version = VERSION,
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
    Bench(bench::BenchArgs),
    /// Run one node as a service: configuration from a TOML file and/or flags (flags win);
    /// messages to send on stdin, events on stdout, logs on stderr. SIGTERM / Ctrl-C drains
    /// in-flight messages, then exits 0.
    #[command(after_help = node::NODE_HELP)]
    Node(Box<settings::NodeArgs>),
    /// Simulate broadcasts on a random graph of many nodes (the protocol core over simulated
    /// links: no gRPC, deterministic for a seed) and report reliability, RMR, last-delivery hop
    /// and whether the origin's converged ACK count is exact.
    Sim(sim::SimArgs),
    /// Make a cluster CA (or reuse the one in --out) and a certificate per node id, for
    /// mutual TLS between nodes.
    Certs(certs::CertsArgs),
}

/// Sizes on the command line read as in the configuration file: `512KiB`, `64MiB`, `1000`.
pub(crate) use grpc_gossip::config::file::parse_size;

/// Logs to stderr, one line per event, at `level` unless `RUST_LOG` says otherwise. gRPC's C
/// core logs the same way: its errors (TLS handshake failures among them) always, its chatty
/// info and debug lines only when we log at debug.
pub(crate) fn init_logging(level: &str) {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or(level)).init();
    let ours = log::max_level();
    if ours <= log::LevelFilter::Info {
        // `redirect_log` sets the C core's verbosity from the current maximum level.
        log::set_max_level(log::LevelFilter::Warn);
    }
    grpcio::redirect_log();
    log::set_max_level(ours);
    match malloc::applied() {
        Some(settings) => log::debug!("malloc: {settings}"),
        None => log::debug!("malloc: defaults or GLIBC_TUNABLES"),
    }
}

fn main() -> ExitCode {
    malloc::tune();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Bench(args) => {
            init_logging("warn");
            bench::run(args)
        }
        // Logging starts once the node's configuration (which may set the level) is read.
        Command::Node(args) => node::run(*args),
        Command::Sim(args) => {
            init_logging("warn");
            sim::run(args)
        }
        Command::Certs(args) => {
            init_logging("warn");
            certs::run(args)
        }
    };
    let code = match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("gossip: {e}");
            ExitCode::FAILURE
        }
    };
    exit_without_teardown(code)
}

/// Ends the process once everything of ours is done, without the C and C++ exit handlers.
///
/// grpcio never shuts gRPC's C core down, so its own threads (timers, DNS, the event engine)
/// are still running when `main` returns; the C++ static destructors that `exit` runs then
/// race them. One `gossip node` in about ten stopped by SIGTERM in the network-namespace test
/// died after its last line with glibc's "double free or corruption". Every node, stream and
/// file of ours has been dropped and flushed by now, so `_exit` loses nothing.
fn exit_without_teardown(code: ExitCode) -> ExitCode {
    use std::io::Write;
    let _ = std::io::stdout().flush();
    let _ = std::io::stderr().flush();
    #[cfg(unix)]
    #[allow(unsafe_code)]
    // SAFETY: `_exit` ends the process at once; nothing after it runs, so no Rust invariant
    // can be observed broken.
    unsafe {
        libc::_exit(if code == ExitCode::SUCCESS { 0 } else { 1 })
    }
    #[cfg(not(unix))]
    code
}
