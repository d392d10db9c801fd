//! Benchmarks of the engine, in-process on the main thread: real-time factor
//! per text, time to first audio (streamed) and peak RSS. `scripts/bench`
//! runs it beside the reference runtime and prints the comparison.
use std::path::Path;
use std::time::Instant;

use crate::engine::{Engine, EngineError, SynthInput, SynthParams};

/// One text's figures (best of `reps` runs).
#[derive(Debug, Clone, serde::Serialize)]
pub struct TextResult {
    pub text: String,
    pub audio_s: f64,
    pub synth_s: f64,
    pub rtf: f64,
    /// Streamed: from the call to the first chunk.
    pub first_audio_s: f64,
}

/// Peak resident set size of this process, in MiB.
pub fn peak_rss_mib() -> f64 {
    let mut usage = std::mem::MaybeUninit::<libc::rusage>::zeroed();
    // SAFETY: getrusage fills the struct it is given.
    unsafe {
        libc::getrusage(libc::RUSAGE_SELF, usage.as_mut_ptr());
        usage.assume_init().ru_maxrss as f64 / 1024.0
    }
}

/// Times each text: whole synthesis (not streamed, as Piper) and the first
/// streamed chunk. Noise on, fixed seed, one warm-up run first.
pub fn run_texts(voice: &Path, texts: &[String], reps: usize) -> Result<Vec<TextResult>, EngineError> {
    let mut engine = Engine::new();
    engine.load_voice("v", voice)?;
    let params = SynthParams { seed: Some(7), ..Default::default() };
    let synth = |engine: &mut Engine, text: &str, stream: bool| -> Result<(f64, f64, f64), EngineError> {
        let t = Instant::now();
        let mut first = None;
        let p = SynthParams { stream, ..params.clone() };
        let s = engine.synthesize("v", &SynthInput::Text(text.to_string()), &p, &|| false, &mut |_| {
            first.get_or_insert(t.elapsed().as_secs_f64());
            Ok(())
        })?;
        Ok((s.synth_seconds, s.audio_seconds(), first.unwrap_or(0.0)))
    };
    synth(&mut engine, "Warm up.", false)?;
    let mut out = Vec::new();
    for text in texts {
        let (mut best, mut audio, mut first) = (f64::INFINITY, 0.0, f64::INFINITY);
        for _ in 0..reps.max(1) {
            let (s, a, _) = synth(&mut engine, text, false)?;
            best = best.min(s);
            audio = a;
            let (_, _, f) = synth(&mut engine, text, true)?;
            first = first.min(f);
        }
        out.push(TextResult { text: text.clone(), audio_s: audio, synth_s: best, rtf: best / audio.max(1e-9), first_audio_s: first });
    }
    Ok(out)
}
