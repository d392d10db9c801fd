//! ttsd-bench: engine and BLAS figures for scripts/bench (one JSON object on
//! stdout): GEMM throughput, and per text the real-time factor, time to
//! first audio (streamed) and the process's peak RSS, all in-process on the
//! main thread. `scripts/bench` runs it beside the reference runtime and
//! prints the comparison.
//!
//! Glue and timing only: it never changes what the engine does (noise on,
//! fixed seed, Piper's default scales), and `anyhow` stays in this binary.
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::Context;
use clap::{Parser, Subcommand};
use ttsd::engine::{cpu, memory, mlx_info, Engine, EngineError, StageTimes, SynthInput, SynthParams};

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
    cpu::configure();
    match Cli::parse().command {
        Command::Gemm { n } => {
            let gflops = mlx_info::gemm_gflops(n, 5)?;
            let report = serde_json::json!({"n": n, "gflops": gflops, "blas": mlx_info::blas(), "mlx": mlx_info::mlx_version()});
            println!("{report}");
        }
        Command::Engine { voice, texts, reps, threads } => {
            cpu::set_threads(threads.unwrap_or_else(cpu::threads_from_env));
            let texts: Vec<String> = std::fs::read_to_string(&texts)
                .with_context(|| format!("reading {}", texts.display()))?
                .lines()
                .map(str::trim)
                .filter(|l| !l.is_empty() && !l.starts_with('#'))
                .map(String::from)
                .collect();
            let results = run_texts(&voice, &texts, reps)?;
            println!("{}", serde_json::json!({"results": results, "peak_rss_mib": peak_rss_mib()}));
        }
    }
    Ok(())
}

/// One text's figures (best of `reps` runs).
#[derive(Debug, Clone, serde::Serialize)]
struct TextResult {
    text: String,
    audio_s: f64,
    synth_s: f64,
    rtf: f64,
    /// Streamed: from the call to the first chunk.
    first_audio_s: f64,
    /// Streamed: the whole synthesis (best run).
    stream_s: f64,
    /// Where the best whole (unstreamed) run's time went.
    stages: StageTimes,
}

/// Times each text: whole synthesis (not streamed, as Piper) and the first
/// streamed chunk. Noise on, fixed seed, one warm-up run first.
fn run_texts(voice: &Path, texts: &[String], reps: usize) -> Result<Vec<TextResult>, EngineError> {
    let mut engine = Engine::new();
    engine.load_voice("v", voice)?;
    let params = SynthParams { seed: Some(7), ..Default::default() };
    let synth = |engine: &mut Engine, text: &str, stream: bool| -> Result<(f64, f64, f64, StageTimes), EngineError> {
        let t = Instant::now();
        let mut first = None;
        let p = SynthParams { stream, ..params.clone() };
        let s = engine.synthesize("v", &SynthInput::Text(text.to_string()), &p, &|| false, &mut |_| {
            first.get_or_insert(t.elapsed().as_secs_f64());
            Ok(())
        })?;
        Ok((s.synth_seconds, s.audio_seconds(), first.unwrap_or(0.0), s.stages))
    };
    synth(&mut engine, "Warm up.", false)?;
    let mut out = Vec::new();
    for text in texts {
        let (mut best, mut audio, mut first, mut stages) = (f64::INFINITY, 0.0, f64::INFINITY, StageTimes::default());
        let mut stream_best = f64::INFINITY;
        for _ in 0..reps.max(1) {
            let (s, a, _, st) = synth(&mut engine, text, false)?;
            if s < best {
                best = s;
                stages = st;
            }
            audio = a;
            let (s, _, f, _) = synth(&mut engine, text, true)?;
            first = first.min(f);
            stream_best = stream_best.min(s);
        }
        out.push(TextResult { text: text.clone(), audio_s: audio, synth_s: best, rtf: best / audio.max(1e-9), first_audio_s: first, stream_s: stream_best, stages });
    }
    Ok(out)
}

/// Peak resident set size of this process, in MiB.
fn peak_rss_mib() -> f64 {
    memory::peak_rss_bytes() as f64 / (1u64 << 20) as f64
}
