//! The command line: every flag, its help text, and the help's epilogue
//! (exit statuses, the acceptance chaos run).
//!
//! Owns parsing only: a flag left out is `None`, and [`crate::scenario`]
//! decides what that means. Never holds a scenario's values or defaults
//! (beyond `--scenario custom` and `--seed 1`), so that `--help` cannot
//! disagree with the run.
use crate::scenario::Scenario;
use clap::Parser;
use std::path::PathBuf;

#[derive(Parser, Debug)]
#[command(
    name = "ttsd-stress",
    about = "Load and fault injection against ttsd, with invariants checked at the end",
    after_help = "Flags override the scenario's values. Exit status: 0 every invariant passed, \
                  1 an invariant failed, 2 the harness could not run (no ttsd, daemon never ready).\n\
                  The acceptance chaos run: ttsd-stress --scenario chaos --duration 300 --workers 2 --kill-every 5 --stop-every 20"
)]
pub struct Args {
    #[arg(long, value_enum, default_value = "custom")]
    pub scenario: Scenario,
    /// Use a running daemon instead of starting one (its config then decides
    /// hang_timeout_ms etc.; pass --hang-timeout-ms to match it).
    #[arg(long, value_name = "PATH")]
    pub socket: Option<PathBuf>,
    /// The ttsd binary to start (default: the one next to this binary).
    #[arg(long, value_name = "PATH")]
    pub ttsd: Option<PathBuf>,
    /// Voice file for the daemon it starts (default: voices/en_US-joe-medium.onnx above the ttsd binary).
    #[arg(long, value_name = "PATH")]
    pub voice: Option<PathBuf>,
    /// Worker processes of the daemon it starts.
    #[arg(long)]
    pub workers: Option<usize>,
    /// Concurrent load clients (one connection each).
    #[arg(long)]
    pub clients: Option<usize>,
    /// Stop after this many load requests in all.
    #[arg(long)]
    pub requests: Option<i64>,
    /// Stop sending load after this many seconds.
    #[arg(long, value_name = "S")]
    pub duration: Option<f64>,
    /// Paced load: this many requests per second in all (default: closed loop).
    #[arg(long, value_name = "R")]
    pub rate: Option<f64>,
    /// Fraction of requests that stream their audio.
    #[arg(long, value_name = "F")]
    pub stream_fraction: Option<f64>,
    /// SIGKILL a random ready worker every S seconds (0: never).
    #[arg(long, value_name = "S")]
    pub kill_every: Option<f64>,
    /// SIGSTOP a random ready worker every T seconds (0: never)...
    #[arg(long, value_name = "T")]
    pub stop_every: Option<f64>,
    /// ...for S seconds, then SIGCONT (if the daemon has not killed it).
    #[arg(long, value_name = "S")]
    pub stop_for: Option<f64>,
    /// Fraction of load requests that carry a fault flag.
    #[arg(long, value_name = "F")]
    pub fault_fraction: Option<f64>,
    /// Fault flags to draw from: crash, hang, slow, grow.
    #[arg(long, value_delimiter = ',')]
    pub faults: Option<Vec<String>>,
    /// Every S seconds a misbehaving client: malformed frame, oversized
    /// frame, truncated frame, mid-stream disconnect, in turn (0: never).
    #[arg(long, value_name = "S")]
    pub attack_every: Option<f64>,
    /// A client that never reads submits this many requests at the start
    /// and again every --nonreader-every seconds (0: none).
    #[arg(long, value_name = "N")]
    pub nonreader: Option<u32>,
    /// How often the non-reading client submits again (0: only at the start).
    #[arg(long, value_name = "S")]
    pub nonreader_every: Option<f64>,
    /// hang_timeout_ms of the daemon it starts.
    #[arg(long)]
    pub hang_timeout_ms: Option<u64>,
    /// Deadline sent with every load request.
    #[arg(long)]
    pub timeout_ms: Option<u64>,
    /// max_rss_mb of the daemon it starts (grow-fault workers get recycled).
    #[arg(long)]
    pub max_rss_mb: Option<u64>,
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Write the full report (every request, fault, sample) here.
    #[arg(long, value_name = "FILE")]
    pub json: Option<PathBuf>,
    /// Print a status line every second.
    #[arg(long, short)]
    pub verbose: bool,
    /// Keep the daemon's directory (config, log) even when everything passes.
    #[arg(long)]
    pub keep: bool,
}
