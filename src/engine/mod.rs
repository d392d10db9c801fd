//! The inference engine: text or phoneme ids in, 16-bit PCM chunks out.
//!
//! Owns the phonemizer (espeak-ng, one per process) and the loaded voices, and
//! runs every model call on the calling thread. It must never spawn threads of
//! its own or be shared between threads: MLX and espeak-ng are not thread-safe,
//! so the daemon's workers call it from their main thread only.
//!
//! Layout, bottom-up (a part uses only the parts before it, and the
//! protocol's limits):
//! - `error` (kinds and `Result`), `cancel` (the caller's flag), `thread`
//!   (the main-thread check);
//! - `memory` (allocator, RSS), `lanes` (MLX streams and the scheduling of
//!   independent tiles over them), `cpu` (BLAS kernels and threads, and how
//!   many lanes), `mlx_info` (`ttsd --version`, GEMM figures);
//! - `files` (size-capped reads of voice files), `onnx` + `weights` (the
//!   `.onnx` initializers, named by the module that consumes them, cached as
//!   safetensors);
//! - `vits` (the model), `params` (a request's parameters, filled in from
//!   the voice's defaults), `voice_config` (the `.onnx.json`), `phonemize`
//!   (espeak-ng, sentences and each word's phonemes), `split` (long
//!   sentences cut to a bounded length), `voice` (one loaded voice: config,
//!   model, synthesis loop and each sentence's timings), `ssml` (an SSML
//!   subset to text, marks and breaks, in pieces), `sanitize` (error text
//!   fit for clients);
//! - this file: [`Engine`], the voices of one process.

pub mod cancel;
pub mod cpu;
pub mod error;
pub mod files;
pub mod lanes;
pub mod memory;
pub mod mlx_info;
pub mod onnx;
pub mod params;
pub mod phonemize;
pub mod sanitize;
pub mod split;
pub mod ssml;
pub mod thread;
pub mod voice;
pub mod voice_config;
pub mod vits;
pub mod weights;

use std::collections::btree_map::{BTreeMap, Entry};
use std::path::Path;

pub use error::EngineError;
pub use params::{Requested, Scales, SynthParams};
pub use phonemize::Phonemizer;
pub use voice::{Voice, VoiceInfo};

/// What to speak.
#[derive(Debug, Clone, PartialEq)]
pub enum SynthInput {
    /// Plain text: phonemized with espeak-ng, one chunk per sentence.
    Text(String),
    /// Phoneme ids as the voice's `phoneme_id_map` gives them (BOS/pad/EOS
    /// included), spoken as one sentence, or as several when longer than
    /// [`split::MAX_SENTENCE_IDS`].
    PhonemeIds(Vec<i64>),
}

/// A piece of audio ready to send. Chunks of one request arrive in order.
#[derive(Debug, Clone)]
pub struct Chunk {
    pub samples: Vec<i16>,
    /// Index of the sentence this chunk belongs to, and how many there are.
    pub sentence: usize,
    pub sentences: usize,
    /// On a sentence's first chunk, when the parameters ask for timings.
    pub timings: Option<SentenceTimings>,
}

/// When the words (and phonemes) of one sentence are spoken: the duration
/// predictor's frames per phoneme id, times the decoder's hop, so exactly
/// where the audio has them. Samples count from the sentence's start.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SentenceTimings {
    /// The sentence's span of the text, in characters (empty for ids).
    pub chars: std::ops::Range<usize>,
    /// Its audio, in samples.
    pub samples: u64,
    pub words: Vec<TimedWord>,
    /// Only with [`TimingLevel::Phonemes`](crate::protocol::TimingLevel).
    pub phonemes: Vec<TimedPhoneme>,
}

/// A written word (characters of the text) and its samples `[start, end)`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TimedWord {
    pub chars: std::ops::Range<usize>,
    pub start: u64,
    pub end: u64,
}

/// One phoneme and its samples `[start, end)`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TimedPhoneme {
    pub phoneme: char,
    pub start: u64,
    pub end: u64,
}

/// What one synthesis produced.
#[derive(Debug, Clone, Default)]
pub struct SynthSummary {
    pub samples: usize,
    pub sample_rate: u32,
    pub sentences: usize,
    /// Seconds spent in phonemization + model, excluding the `on_chunk` callback.
    pub synth_seconds: f64,
    /// Where `synth_seconds` went, stage by stage.
    pub stages: StageTimes,
}

/// Seconds per stage of one synthesis, summed over its sentences: the
/// request's own timeline (each stage is evaluated before the next starts,
/// so the figures are the stages' real cost, not the graph building's).
#[derive(Debug, Clone, Copy, Default, PartialEq, serde::Serialize)]
pub struct StageTimes {
    /// Text to phoneme ids (espeak-ng), or checking given ids.
    pub phonemize: f64,
    /// Text encoder, duration predictor and the prior's expansion to frames.
    pub prior: f64,
    /// The reverse flow (for a streamed sentence, its first chunk's head too).
    pub flow: f64,
    /// The decoder, and the audio's copy out of MLX.
    pub decode: f64,
}

impl SynthSummary {
    pub fn audio_seconds(&self) -> f64 {
        self.samples as f64 / self.sample_rate.max(1) as f64
    }
}

/// One process's engine: a phonemizer and the voices it loaded.
pub struct Engine {
    phonemizer: Option<Phonemizer>,
    voices: BTreeMap<String, Voice>,
}

impl Engine {
    /// An engine with no voices. espeak-ng is loaded on the first voice that
    /// needs it, so phoneme-id-only use works without it.
    pub fn new() -> Self {
        Self { phonemizer: None, voices: BTreeMap::new() }
    }

    /// Load the voice at `onnx_path` (`NAME.onnx` beside `NAME.onnx.json`)
    /// under `name`. Fails with a clear error, never a panic.
    pub fn load_voice(&mut self, name: &str, onnx_path: &Path) -> Result<&VoiceInfo, EngineError> {
        let voice = Voice::load(name, onnx_path)?;
        if self.phonemizer.is_none() {
            self.phonemizer = Some(Phonemizer::new()?);
        }
        let loaded = match self.voices.entry(name.to_string()) {
            Entry::Occupied(mut slot) => {
                slot.insert(voice);
                slot.into_mut()
            }
            Entry::Vacant(slot) => slot.insert(voice),
        };
        Ok(loaded.info())
    }

    /// Runs one short sentence through every voice and throws the audio
    /// away: the first synthesis of a process pays for espeak-ng's voice
    /// set-up and MLX's first allocations, which no request should wait for.
    pub fn warm_up(&mut self) -> Result<(), EngineError> {
        let names: Vec<String> = self.voices.keys().cloned().collect();
        let params = SynthParams { seed: Some(0), ..Default::default() };
        for name in names {
            self.synthesize(&name, &SynthInput::Text("Ready.".into()), &params, &|| false, &mut |_| Ok(()))?;
        }
        Ok(())
    }

    pub fn voices(&self) -> impl Iterator<Item = &VoiceInfo> {
        self.voices.values().map(Voice::info)
    }

    pub fn voice(&self, name: &str) -> Option<&Voice> {
        self.voices.get(name)
    }

    /// `req` with the scales it left out taken from voice `voice`'s
    /// defaults ([`SynthParams::resolve`]).
    pub fn params(&self, voice: &str, req: &Requested) -> Result<SynthParams, EngineError> {
        let v = self.voices.get(voice).ok_or_else(|| EngineError::UnknownVoice(voice.to_string()))?;
        Ok(SynthParams::resolve(req, v.config().inference))
    }

    /// How many characters at the start of `text` are whole sentences, as
    /// the phonemizer's clause rules see them: sentences that end with
    /// sentence punctuation and are followed by more text (what follows
    /// tells "Dr. Smith" from "... the end. Then"). 0 when none is yet.
    pub fn complete_sentences(&mut self, voice: &str, text: &str) -> Result<usize, EngineError> {
        thread::assert_main_thread();
        if text.trim().is_empty() {
            return Ok(0);
        }
        let v = self.voices.get(voice).ok_or_else(|| EngineError::UnknownVoice(voice.to_string()))?;
        let ph = self.phonemizer.as_mut().ok_or_else(|| EngineError::Phonemizer("no phonemizer loaded".into()))?;
        // Without a character that can end a sentence there is none to find
        // (and a long text still arriving is not phonemized at every piece).
        if !text.chars().any(|c| ph.may_end_sentence(c)) {
            return Ok(0);
        }
        let espeak_voice = v.config().espeak_voice.clone();
        let sentences = match ph.sentences(text, &espeak_voice, false) {
            Ok(s) => s,
            // Nothing speakable yet (only punctuation so far).
            Err(EngineError::InvalidInput(_)) => return Ok(0),
            Err(e) => return Err(e),
        };
        let followed = |end: usize| text.chars().skip(end).any(|c| !c.is_whitespace());
        Ok(sentences.iter().filter(|s| s.ended && followed(s.chars.end)).map(|s| s.chars.end).max().unwrap_or(0))
    }

    /// Synthesize `input` with voice `voice`, handing each chunk to `on_chunk`
    /// as soon as it is ready. `cancelled` is polled between sentences, chunks
    /// and model stages; when it returns true the call ends with
    /// [`EngineError::Cancelled`].
    pub fn synthesize(
        &mut self,
        voice: &str,
        input: &SynthInput,
        params: &SynthParams,
        cancelled: &dyn Fn() -> bool,
        on_chunk: &mut dyn FnMut(Chunk) -> Result<(), EngineError>,
    ) -> Result<SynthSummary, EngineError> {
        thread::assert_main_thread();
        let v = self
            .voices
            .get_mut(voice)
            .ok_or_else(|| EngineError::UnknownVoice(voice.to_string()))?;
        v.synthesize(self.phonemizer.as_mut(), input, params, cancelled, on_chunk)
    }
}

impl Default for Engine {
    fn default() -> Self {
        Self::new()
    }
}
