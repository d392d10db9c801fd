//! The ttsd binary: argument parsing and glue only. Default: the daemon
//! (supervisor); `synth`: in-process synthesis ([`synth`]); `worker`
//! (hidden): a worker process, started by the supervisor only. It never
//! does work of its own, and `anyhow` stays here, out of the library.
mod synth;

use clap::{Parser, Subcommand};
use std::path::PathBuf;

#[derive(Parser)]
#[command(name = "ttsd", disable_version_flag = true, about = "Local text-to-speech daemon")]
struct Cli {
    /// Print ttsd, MLX, device and BLAS versions.
    #[arg(long)]
    version: bool,
    /// Configuration file (default: ./daemon.toml if present, else built-in defaults).
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Socket path, overriding the configuration.
    #[arg(long, value_name = "PATH")]
    socket: Option<PathBuf>,
    /// Number of worker processes, overriding the configuration (0: one per core).
    #[arg(long, value_name = "N")]
    workers: Option<usize>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Synthesize in-process, without a daemon.
    Synth(synth::SynthArgs),
    /// Worker process (started by the daemon; its channel is stdin).
    #[command(hide = true)]
    Worker,
}

fn main() -> anyhow::Result<()> {
    ttsd::engine::cpu::configure();
    let cli = Cli::parse();
    if cli.version {
        println!("{}", ttsd::engine::mlx_info::version_report());
        return Ok(());
    }
    match cli.command {
        Some(Command::Synth(args)) => synth::run(args),
        Some(Command::Worker) => std::process::exit(ttsd::worker::run()),
        None => {
            let (mut cfg, path) = ttsd::config::Config::discover(cli.config.as_deref())?;
            let overrides = ttsd::config::Overrides { socket: cli.socket, workers: cli.workers };
            cfg.apply(&overrides)?;
            if let Err(e) = ttsd::frontend::run(cfg, path, overrides) {
                ttsd::logln!("ttsd: {e}");
                std::process::exit(1);
            }
            Ok(())
        }
    }
}
