//! The ttsd binary (owned by the daemon helper; keep `--version` and `synth`).
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "ttsd", disable_version_flag = true)]
struct Cli {
    /// Print ttsd, MLX, device and BLAS versions.
    #[arg(long)]
    version: bool,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Synthesize in-process, without a daemon.
    Synth(ttsd::synth_cli::SynthArgs),
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    if cli.version {
        println!("{}", ttsd::mlx_info::version_report());
        return Ok(());
    }
    match cli.command {
        Some(Command::Synth(args)) => ttsd::synth_cli::run(args),
        None => Ok(()),
    }
}
