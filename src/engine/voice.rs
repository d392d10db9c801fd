//! One loaded voice: its `.onnx.json` config and its VITS model, and the
//! synthesis loop (sentences -> latent -> decoder windows -> PCM chunks).
//!
//! Owns a voice's config, model and the checks that they fit together.
//! Runs on the calling thread only and checks the caller's cancellation flag
//! between sentences, model stages and decoder windows. It never fills in
//! defaults ([`super::params`] does) and never keeps a request's state
//! between calls.
use std::path::Path;
use std::time::Instant;

use mlx_rs::Array;

#[cfg(test)]
use super::phonemize::phonemes_to_ids;
use super::phonemize::phonemes_to_ids_with_spans;
use super::split::{split_pieces, IdKinds, MAX_SENTENCE_IDS};
use super::vits::{ops::to_vec, Vits};
use super::voice_config::VoiceConfig;
use super::weights::Weights;
use super::*;
use crate::protocol::limits;
use crate::protocol::TimingLevel;
use std::ops::Range;

/// What clients see of a voice.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize, PartialEq)]
pub struct VoiceInfo {
    pub name: String,
    pub language: String,
    pub quality: String,
    pub sample_rate: u32,
    pub num_speakers: u32,
    /// Phoneme ids must be below this.
    pub num_symbols: u32,
}

/// Frames in the first chunk of a streamed sentence (small, for a quick
/// first chunk: the flow and the decoder run on just these frames and their
/// receptive field) and in each decoder window after it.
const FIRST_WINDOW_FRAMES: usize = 24;
const WINDOW_FRAMES: usize = 192;
/// Decoder window when not streaming (about 24 s of audio at 22.05 kHz):
/// most sentences decode in one piece (a second window costs its overlap
/// and a pause while the lanes drain), while the decoder's memory stays
/// bounded for a very long one.
const WHOLE_WINDOW_FRAMES: usize = 2048;

pub struct Voice {
    info: VoiceInfo,
    config: VoiceConfig,
    model: Vits,
    /// The ids long sentences are cut at.
    kinds: IdKinds,
}

fn load_error(path: &Path, e: EngineError) -> EngineError {
    match e {
        EngineError::VoiceLoad { reason, .. } => EngineError::VoiceLoad { path: path.display().to_string(), reason },
        other => EngineError::VoiceLoad { path: path.display().to_string(), reason: other.to_string() },
    }
}

impl Voice {
    /// Loads `NAME.onnx` and `NAME.onnx.json`; checks that they fit together.
    pub fn load(name: &str, onnx_path: &Path) -> Result<Self, EngineError> {
        let config = VoiceConfig::load(&VoiceConfig::json_path_for(onnx_path))?;
        let weights = Weights::load(onnx_path)?;
        let model = Vits::load(weights).map_err(|e| load_error(onnx_path, e))?;
        let cfg = &model.config;
        if config.num_symbols != 0 && config.num_symbols != cfg.n_vocab {
            return Err(load_error(
                onnx_path,
                EngineError::InvalidInput(format!(
                    "the .onnx.json does not match the model: num_symbols {} in the json, {} phoneme embeddings in the model",
                    config.num_symbols, cfg.n_vocab
                )),
            ));
        }
        if config.num_speakers.max(1) != cfg.n_speakers {
            return Err(load_error(
                onnx_path,
                EngineError::InvalidInput(format!(
                    "the .onnx.json does not match the model: num_speakers {} in the json, {} in the model",
                    config.num_speakers, cfg.n_speakers
                )),
            ));
        }
        if let Some(bad) = config.phoneme_id_map.values().flatten().find(|&&id| id < 0 || id as usize >= cfg.n_vocab) {
            return Err(load_error(
                onnx_path,
                EngineError::InvalidInput(format!("the .onnx.json maps a phoneme to id {bad}, beyond the model's {} symbols", cfg.n_vocab)),
            ));
        }
        let info = VoiceInfo {
            name: name.to_string(),
            language: config.language.clone(),
            quality: config.quality.clone(),
            sample_rate: config.sample_rate,
            num_speakers: cfg.n_speakers as u32,
            num_symbols: cfg.n_vocab as u32,
        };
        let kinds = IdKinds::from_map(&config.phoneme_id_map);
        Ok(Self { info, config, model, kinds })
    }

    pub fn info(&self) -> &VoiceInfo {
        &self.info
    }

    pub fn config(&self) -> &VoiceConfig {
        &self.config
    }

    pub fn model(&self) -> &Vits {
        &self.model
    }

    /// Rejects parameters the model cannot use, with a message naming them.
    pub fn check_params(&self, p: &SynthParams) -> Result<(), EngineError> {
        limits::check_params(Some(p.length_scale), Some(p.noise_scale), Some(p.noise_w))?;
        limits::check_speaker(p.speaker, self.info.num_speakers, &self.info.name)?;
        Ok(())
    }

    /// Rejects phoneme ids the model has no embedding for.
    pub fn check_ids(&self, ids: &[i64]) -> Result<(), EngineError> {
        if ids.is_empty() {
            return Err(EngineError::InvalidInput("empty phoneme id list".into()));
        }
        let n = self.model.config.n_vocab as i64;
        if let Some(&bad) = ids.iter().find(|&&id| id < 0 || id >= n) {
            return Err(EngineError::InvalidInput(format!("phoneme id {bad} out of range: voice '{}' has ids 0..{n}", self.info.name)));
        }
        Ok(())
    }

    /// Turns the input into one phoneme-id list per sentence, each at most
    /// [`MAX_SENTENCE_IDS`] long (longer ones are cut at pauses or words,
    /// see [`super::split`]), so that no model call grows without bound.
    pub fn sentences(
        &self,
        phonemizer: Option<&mut Phonemizer>,
        input: &SynthInput,
    ) -> Result<Vec<Vec<i64>>, EngineError> {
        Ok(self.utterances(phonemizer, input, TimingLevel::None)?.into_iter().map(|u| u.ids).collect())
    }

    /// [`Voice::sentences`], each with where its words (and, when asked,
    /// phonemes) are among its ids.
    pub fn utterances(
        &self,
        phonemizer: Option<&mut Phonemizer>,
        input: &SynthInput,
        timings: TimingLevel,
    ) -> Result<Vec<Utterance>, EngineError> {
        match input {
            SynthInput::PhonemeIds(ids) => {
                self.check_ids(ids)?;
                let pieces = split_pieces(ids, &self.kinds, MAX_SENTENCE_IDS);
                Ok(pieces.into_iter().map(|p| Utterance { ids: p.ids, ..Default::default() }).collect())
            }
            SynthInput::Text(text) => {
                if text.trim().is_empty() {
                    return Err(EngineError::InvalidInput("text is empty".into()));
                }
                let ph = phonemizer.ok_or_else(|| EngineError::Phonemizer("no phonemizer loaded".into()))?;
                let sentences = ph.sentences(text, &self.config.espeak_voice, timings != TimingLevel::None)?;
                let mut out = Vec::new();
                for s in sentences.iter().filter(|s| !s.phonemes.trim().is_empty()) {
                    let (ids, spans) = phonemes_to_ids_with_spans(&s.phonemes, &self.config.phoneme_id_map);
                    let ids_of = |r: &Range<usize>| match (
                        spans.get(r.start),
                        r.end.checked_sub(1).and_then(|e| spans.get(e)),
                    ) {
                        (Some(a), Some(b)) if r.end > r.start => Some(a.start..b.end),
                        _ => None,
                    };
                    let words: Vec<(Range<usize>, Range<usize>)> =
                        s.words.iter().filter_map(|w| ids_of(&w.phonemes).map(|ids| (w.chars.clone(), ids))).collect();
                    let phonemes: Vec<(char, Range<usize>)> = if timings == TimingLevel::Phonemes {
                        s.phonemes
                            .chars()
                            .zip(spans.iter())
                            .filter(|(c, r)| *c != ' ' && !r.is_empty())
                            .map(|(c, r)| (c, r.clone()))
                            .collect()
                    } else {
                        Vec::new()
                    };
                    out.extend(Utterance::cut(ids, s.chars.clone(), &words, &phonemes, &self.kinds));
                }
                if out.is_empty() {
                    return Err(EngineError::InvalidInput("text has nothing to speak".into()));
                }
                Ok(out)
            }
        }
    }

    /// Synthesizes `input`, handing out chunks as they are ready.
    ///
    /// Not streamed (`params.stream == false`): one chunk per sentence, peak
    /// normalised per sentence as Piper does (unless `raw`). Streamed: decoder
    /// windows are sent as soon as they are decoded; peak normalisation needs
    /// the whole sentence, so streamed audio is the decoder's output as is
    /// (Piper's `normalize_audio = False`), clipped.
    pub fn synthesize(
        &mut self,
        phonemizer: Option<&mut Phonemizer>,
        input: &SynthInput,
        params: &SynthParams,
        cancelled: &dyn Fn() -> bool,
        on_chunk: &mut dyn FnMut(Chunk) -> Result<(), EngineError>,
    ) -> Result<SynthSummary, EngineError> {
        self.check_params(params)?;
        let started = Instant::now();
        let mut callback_time = 0.0f64;
        let sentences = self.utterances(phonemizer, input, params.timings)?;
        let mut stages = StageTimes { phonemize: started.elapsed().as_secs_f64(), ..Default::default() };
        let lap = |t: &mut Instant| {
            let now = Instant::now();
            let s = now.duration_since(*t).as_secs_f64();
            *t = now;
            s
        };
        let g = self.model.speaker(params.speaker)?;
        let mut seed = params.seed.unwrap_or_else(random_seed);
        let mut summary = SynthSummary { sample_rate: self.info.sample_rate, sentences: sentences.len(), ..Default::default() };
        let check = || if cancelled() { Err(EngineError::Cancelled) } else { Ok(()) };
        let mut send = |chunk: Chunk, summary: &mut SynthSummary| -> Result<(), EngineError> {
            summary.samples += chunk.samples.len();
            let t = Instant::now();
            let r = on_chunk(chunk);
            callback_time += t.elapsed().as_secs_f64();
            r
        };

        let hop = self.model.dec.hop() as u64;
        for (index, utt) in sentences.iter().enumerate() {
            check()?;
            let mut t = Instant::now();
            let prior = self.model.prior(&utt.ids, g.as_ref(), params.sampling(seed), cancelled)?;
            stages.prior += lap(&mut t);
            seed = seed.wrapping_add(1);
            let frames = prior.z_p.shape()[0] as usize;
            // Handed out with the sentence's first chunk.
            let mut timings =
                (params.timings != TimingLevel::None).then(|| utt.timings(&prior.durations, frames as u64, hop));
            let count = sentences.len();
            let mut chunk_of =
                |samples: Vec<i16>| Chunk { samples, sentence: index, sentences: count, timings: timings.take() };
            let mut start = 0;
            // The whole sentence's `z` when the first chunk's flow already covered it.
            let mut z_whole = None;
            if params.stream {
                // First chunk early: the flow over just the frames it needs.
                // A sentence no longer than the frames that chunk's decode
                // reads anyway is that chunk, whole.
                let ctx = self.model.dec.context_frames();
                let end = if frames <= FIRST_WINDOW_FRAMES + ctx { frames } else { FIRST_WINDOW_FRAMES };
                // When the flow's receptive field from those frames reaches
                // the last one, that flow is the whole sentence's: kept for
                // the windows after, not run twice.
                let whole = self.model.flow_head_is_whole(frames, end + ctx);
                let z_head = if whole {
                    self.model.flow.reverse(&prior.z_p, g.as_ref(), cancelled)?
                } else {
                    self.model.flow_head(&prior.z_p, end + ctx, g.as_ref(), cancelled)?
                };
                z_head.eval()?;
                stages.flow += lap(&mut t);
                let audio = to_vec(&self.model.decode_window(&z_head, 0, end, g.as_ref(), cancelled)?)?;
                stages.decode += lap(&mut t);
                send(chunk_of(to_pcm(&audio, 1.0)), &mut summary)?;
                start = end;
                z_whole = whole.then_some(z_head);
            }
            if start >= frames {
                continue;
            }
            t = Instant::now();
            let z = match z_whole {
                Some(z) => z,
                None => {
                    let z = self.model.flow.reverse(&prior.z_p, g.as_ref(), cancelled)?;
                    z.eval()?;
                    stages.flow += lap(&mut t);
                    z
                }
            };
            let mut pieces: Vec<Vec<f32>> = Vec::new();
            // Unstreamed, long windows: less overlap to recompute, and memory
            // still bounded for a long sentence.
            let window = if params.stream { WINDOW_FRAMES } else { WHOLE_WINDOW_FRAMES };
            while start < frames {
                check()?;
                let end = (start + window).min(frames);
                let audio = to_vec(&self.model.decode_window(&z, start, end, g.as_ref(), cancelled)?)?;
                stages.decode += lap(&mut t);
                if params.stream {
                    send(chunk_of(to_pcm(&audio, 1.0)), &mut summary)?;
                    t = Instant::now();
                } else {
                    pieces.push(audio);
                }
                start = end;
            }
            if !params.stream {
                let audio: Vec<f32> = pieces.concat();
                let gain = if params.raw { 1.0 } else { peak_gain(&audio) };
                send(chunk_of(to_pcm(&audio, gain)), &mut summary)?;
            }
        }
        summary.synth_seconds = started.elapsed().as_secs_f64() - callback_time;
        summary.stages = stages;
        Ok(summary)
    }

    /// The whole-sentence float audio for phoneme ids, without windows or
    /// post-processing (for fidelity tests and benchmarks).
    pub fn render_ids(&self, ids: &[i64], params: &SynthParams) -> Result<(Vec<u32>, Array, Vec<f32>), EngineError> {
        self.check_params(params)?;
        self.check_ids(ids)?;
        let g = self.model.speaker(params.speaker)?;
        let latent = self.model.latent(ids, g.as_ref(), params.sampling(params.seed.unwrap_or(0)), &|| false)?;
        let audio = to_vec(&self.model.dec.forward(&latent.z, g.as_ref())?)?;
        Ok((latent.durations, latent.z, audio))
    }
}

/// One model call's worth of a sentence: its phoneme ids, and where its
/// words and phonemes are among them.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Utterance {
    pub ids: Vec<i64>,
    /// Its span of the text, in characters.
    pub chars: Range<usize>,
    /// Each word's characters, and its ids in `ids`.
    pub words: Vec<(Range<usize>, Range<usize>)>,
    /// Each phoneme, and its ids in `ids`.
    pub phonemes: Vec<(char, Range<usize>)>,
}

impl Utterance {
    /// A sentence's ids cut to the model's bound ([`split_pieces`]), with
    /// each word and phoneme moved to the piece its first id falls in
    /// (ids indices are the whole sentence's in, the piece's out).
    fn cut(
        ids: Vec<i64>,
        chars: Range<usize>,
        words: &[(Range<usize>, Range<usize>)],
        phonemes: &[(char, Range<usize>)],
        kinds: &IdKinds,
    ) -> Vec<Utterance> {
        let pieces = split_pieces(&ids, kinds, MAX_SENTENCE_IDS);
        let n = pieces.len();
        // The piece whose body starts last at or before `id`.
        let owner = |id: usize| pieces.iter().rposition(|p| p.body.start <= id).unwrap_or(0);
        let local = |p: &super::split::Piece, r: &Range<usize>| {
            let a = p.head + r.start.clamp(p.body.start, p.body.end) - p.body.start;
            let b = p.head + r.end.clamp(p.body.start, p.body.end) - p.body.start;
            a..b.max(a)
        };
        let mut out: Vec<Utterance> = pieces
            .iter()
            .map(|p| Utterance { ids: p.ids.clone(), chars: chars.clone(), words: Vec::new(), phonemes: Vec::new() })
            .collect();
        for (c, r) in words {
            let i = owner(r.start);
            if let (Some(u), Some(p)) = (out.get_mut(i), pieces.get(i)) {
                u.words.push((c.clone(), local(p, r)));
            }
        }
        for (c, r) in phonemes {
            let i = owner(r.start);
            if let (Some(u), Some(p)) = (out.get_mut(i), pieces.get(i)) {
                u.phonemes.push((*c, local(p, r)));
            }
        }
        if n > 1 {
            // Each piece's share of the text: up to the next piece's first word.
            let starts: Vec<usize> = (0..n)
                .map(|i| if i == 0 { chars.start } else { out[i].words.first().map_or(chars.start, |w| w.0.start) })
                .collect();
            for i in 0..n {
                let end = if i + 1 < n { starts[i + 1].max(starts[i]) } else { chars.end.max(starts[i]) };
                out[i].chars = starts[i]..end;
            }
        }
        out
    }

    /// Its timings, from the frames the duration predictor gave each id.
    fn timings(&self, durations: &[u32], frames: u64, hop: u64) -> SentenceTimings {
        let mut at = Vec::with_capacity(durations.len() + 1);
        let mut sum = 0u64;
        at.push(0);
        for &d in durations {
            sum += d as u64;
            at.push(sum);
        }
        let sample = |id: usize| at.get(id).or(at.last()).copied().unwrap_or(0) * hop;
        SentenceTimings {
            chars: self.chars.clone(),
            samples: frames * hop,
            words: self
                .words
                .iter()
                .map(|(c, r)| TimedWord { chars: c.clone(), start: sample(r.start), end: sample(r.end) })
                .collect(),
            phonemes: self
                .phonemes
                .iter()
                .map(|(c, r)| TimedPhoneme { phoneme: *c, start: sample(r.start), end: sample(r.end) })
                .collect(),
        }
    }
}

/// Piper's per-sentence normalisation: scale the peak to full scale.
fn peak_gain(audio: &[f32]) -> f32 {
    let peak = audio.iter().fold(0.0f32, |m, v| m.max(v.abs()));
    if peak < 1e-8 {
        0.0
    } else {
        1.0 / peak
    }
}

/// Float audio to 16-bit PCM: gain, clip to [-1, 1], scale by 32767.
pub fn to_pcm(audio: &[f32], gain: f32) -> Vec<i16> {
    audio.iter().map(|&v| ((v * gain).clamp(-1.0, 1.0) * 32767.0) as i16).collect()
}

/// A seed for a request that gave none.
pub fn random_seed() -> u64 {
    use std::time::{SystemTime, UNIX_EPOCH};
    let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(0);
    nanos ^ (std::process::id() as u64).rotate_left(32)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bundled() -> std::path::PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("voices/en_US-joe-medium.onnx")
    }

    /// Issue 15: a voice path to /dev/zero was read until allocation failed.
    #[test]
    fn voice_path_to_dev_zero_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let onnx = dir.path().join("zero.onnx");
        std::os::unix::fs::symlink("/dev/zero", &onnx).unwrap();
        std::fs::copy(VoiceConfig::json_path_for(&bundled()), VoiceConfig::json_path_for(&onnx)).unwrap();
        match Voice::load("zero", &onnx) {
            Err(EngineError::VoiceLoad { reason, .. }) => {
                assert!(reason.contains("character device, not a regular file"), "{reason}")
            }
            Err(e) => panic!("wrong error: {e}"),
            Ok(_) => panic!("/dev/zero loaded as a voice"),
        }
    }

    #[test]
    fn long_phoneme_id_input_is_cut_into_bounded_sentences() {
        let _mlx = crate::mlx_test_lock();
        let voice = Voice::load("joe", &bundled()).unwrap();
        let map = &voice.config().phoneme_id_map;
        let clause = "wˈʌn, tˈuː, θɹˈiː, fˈɔːɹ, ";
        let ids = phonemes_to_ids(&clause.repeat(60), map);
        assert!(ids.len() > 3 * MAX_SENTENCE_IDS);
        let sentences = voice.sentences(None, &SynthInput::PhonemeIds(ids.clone())).unwrap();
        assert!(sentences.len() >= 4, "{} sentences", sentences.len());
        let (bos, eos, comma) = (map["^"][0], map["$"][0], map[","][0]);
        for s in &sentences {
            assert!(s.len() <= MAX_SENTENCE_IDS, "{} ids", s.len());
            assert_eq!((s[0], *s.last().unwrap()), (bos, eos));
            // Cut after a comma (the trailing space dropped): ", pad, EOS".
            assert_eq!(s[s.len() - 3], comma, "{s:?}");
        }
        // Short input is passed on as it is.
        let short = phonemes_to_ids(clause, map);
        assert_eq!(voice.sentences(None, &SynthInput::PhonemeIds(short.clone())).unwrap(), vec![short]);
    }

    /// Issue 15: the encoder ran all its layers without a cancel point.
    #[test]
    fn text_encoder_polls_cancel_between_layers() {
        let _mlx = crate::mlx_test_lock();
        let voice = Voice::load("joe", &bundled()).unwrap();
        let ids = phonemes_to_ids(&"wˈʌn, tˈuː, ".repeat(20), &voice.config().phoneme_id_map);
        let polls = std::cell::Cell::new(0);
        let count = || {
            polls.set(polls.get() + 1);
            false
        };
        voice.model().enc_p.forward_checked(&ids, &count).unwrap();
        let layers = voice.model().config.n_layers;
        assert!(polls.get() > layers, "{} polls for {layers} layers", polls.get());
        // Raised during the second layer: the encoder stops there.
        polls.set(0);
        let raised = || {
            polls.set(polls.get() + 1);
            polls.get() > 2
        };
        assert!(matches!(voice.model().enc_p.forward_checked(&ids, &raised), Err(EngineError::Cancelled)));
        assert_eq!(polls.get(), 3, "stopped at the first poll after the flag went up");
    }
}
