//! ttsd-bench: engine and BLAS figures for scripts/bench (one JSON object on stdout).
use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "ttsd-bench", about = "Engine and GEMM benchmarks (driven by scripts/bench)")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// GFLOP/s of an n x n float32 matmul through MLX (best of 5).
    Gemm {
        #[arg(long, default_value_t = 4096)]
        n: i32,
    },
    /// Real-time factor and time to first audio for each line of a text file.
    Engine {
        #[arg(long)]
        voice: PathBuf,
        #[arg(long)]
        texts: PathBuf,
        #[arg(long, default_value_t = 3)]
        reps: usize,
        /// Cores the engine may use (default: all).
        #[arg(long)]
        threads: Option<usize>,
    },
}

fn main() -> anyhow::Result<()> {
    ttsd::engine::cpu::configure();
    match Cli::parse().command {
        Command::Gemm { n } => {
            let gflops = ttsd::mlx_info::gemm_gflops(n, 5)?;
            let report = serde_json::json!({"n": n, "gflops": gflops, "blas": ttsd::mlx_info::blas(), "mlx": ttsd::mlx_info::mlx_version()});
            println!("{report}");
        }
        Command::Engine { voice, texts, reps, threads } => {
            ttsd::engine::cpu::set_threads(threads.unwrap_or_else(ttsd::engine::cpu::threads_from_env));
            let texts: Vec<String> = std::fs::read_to_string(&texts)
                .with_context(|| format!("reading {}", texts.display()))?
                .lines()
                .map(str::trim)
                .filter(|l| !l.is_empty() && !l.starts_with('#'))
                .map(String::from)
                .collect();
            let results = ttsd::bench::run_texts(&voice, &texts, reps)?;
            println!("{}", serde_json::json!({"results": results, "peak_rss_mib": ttsd::bench::peak_rss_mib()}));
        }
    }
    Ok(())
}
