//! `ttsd synth`: in-process synthesis on the main thread, without a daemon,
//! for debugging, tests and benchmarks. Writes a WAV and prints one timing
//! line on stderr: `load_ms=... synth_ms=... audio_s=... rtf=...` (plus
//! `first_audio_ms=...`, the time from the start of synthesis to the first
//! chunk).
//!
//! Glue between the command line and the engine: it owns the flags and the
//! WAV file, and never does engine work itself (parameters are resolved by
//! [`Engine::params`], as for the daemon's workers).
use std::path::PathBuf;
use std::time::Instant;

use anyhow::Context;

use ttsd::engine::{cpu, Engine, EngineError, Requested, SynthInput};

#[derive(Debug, clap::Args)]
pub struct SynthArgs {
    /// The voice: NAME.onnx (with NAME.onnx.json beside it).
    #[arg(long)]
    pub voice: PathBuf,
    /// Text to speak.
    #[arg(long, conflicts_with = "phoneme_ids", required_unless_present = "phoneme_ids")]
    pub text: Option<String>,
    /// Comma-separated phoneme ids instead of text, spoken as one sentence.
    #[arg(long)]
    pub phoneme_ids: Option<String>,
    /// Prior noise (default: the voice's, usually 0.667).
    #[arg(long)]
    pub noise_scale: Option<f32>,
    /// Speaking pace: >1 slower, <1 faster (default: the voice's, usually 1).
    #[arg(long)]
    pub length_scale: Option<f32>,
    /// Duration noise (default: the voice's, usually 0.8).
    #[arg(long)]
    pub noise_w: Option<f32>,
    /// Speaker id for multi-speaker voices.
    #[arg(long, default_value_t = 0)]
    pub speaker: u32,
    /// Seed for the noise (default: random).
    #[arg(long)]
    pub seed: Option<u64>,
    /// Skip peak normalisation.
    #[arg(long)]
    pub raw: bool,
    /// Decode in windows and report the first chunk's latency.
    #[arg(long)]
    pub stream: bool,
    /// Cores the engine may use (default: $TTSD_THREADS, else all).
    #[arg(long)]
    pub threads: Option<usize>,
    /// Output WAV file.
    #[arg(short, long)]
    pub output: PathBuf,
}

fn parse_ids(csv: &str) -> anyhow::Result<Vec<i64>> {
    csv.split(',')
        .map(|s| s.trim())
        .filter(|s| !s.is_empty())
        .map(|s| s.parse::<i64>().with_context(|| format!("phoneme id '{s}' is not an integer")))
        .collect()
}

pub fn run(args: SynthArgs) -> anyhow::Result<()> {
    let input = match (&args.text, &args.phoneme_ids) {
        (Some(t), _) => SynthInput::Text(t.clone()),
        (None, Some(csv)) => SynthInput::PhonemeIds(parse_ids(csv)?),
        (None, None) => anyhow::bail!("give --text or --phoneme-ids"),
    };
    cpu::set_threads(args.threads.unwrap_or_else(cpu::threads_from_env));
    let t0 = Instant::now();
    let mut engine = Engine::new();
    let info = engine.load_voice("voice", &args.voice)?.clone();
    let load_ms = t0.elapsed().as_secs_f64() * 1e3;

    let requested = Requested {
        speaker: args.speaker,
        length_scale: args.length_scale,
        noise_scale: args.noise_scale,
        noise_w: args.noise_w,
        seed: args.seed,
        raw: args.raw,
        stream: args.stream,
        timings: Default::default(),
    };
    let params = engine.params("voice", &requested)?;
    let spec = hound::WavSpec { channels: 1, sample_rate: info.sample_rate, bits_per_sample: 16, sample_format: hound::SampleFormat::Int };
    let mut wav = hound::WavWriter::create(&args.output, spec).with_context(|| format!("cannot write {}", args.output.display()))?;
    let t1 = Instant::now();
    let mut first_audio_ms = None;
    let mut write_error = None;
    let summary = engine.synthesize("voice", &input, &params, &|| false, &mut |chunk| {
        first_audio_ms.get_or_insert(t1.elapsed().as_secs_f64() * 1e3);
        for s in chunk.samples {
            if let Err(e) = wav.write_sample(s) {
                write_error = Some(e.to_string());
                return Err(EngineError::Output(format!("writing the WAV: {e}")));
            }
        }
        Ok(())
    });
    let summary = summary.map_err(|e| anyhow::anyhow!(write_error.unwrap_or_else(|| e.to_string())))?;
    wav.finalize().context("finishing the WAV")?;
    let synth_s = summary.synth_seconds;
    let audio_s = summary.audio_seconds();
    eprintln!(
        "load_ms={load_ms:.1} synth_ms={:.1} audio_s={audio_s:.3} rtf={:.4} first_audio_ms={:.1} sentences={}",
        synth_s * 1e3,
        synth_s / audio_s.max(1e-9),
        first_audio_ms.unwrap_or(0.0),
        summary.sentences
    );
    Ok(())
}
