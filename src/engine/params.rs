//! How to speak: a request's parameters, and the one place where the ones
//! it left out are filled in from the voice's defaults.
//!
//! Owns [`SynthParams`] and its resolution ([`SynthParams::resolve`]).
//! Plain data: it never checks ranges (the protocol's
//! [`limits`](crate::protocol::limits) do, in the voice) and never touches
//! MLX.
use super::vits::Sampling;
use crate::protocol::TimingLevel;

/// A voice's sampling scales: pace, prior noise and duration noise.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Scales {
    pub length_scale: f32,
    pub noise_scale: f32,
    pub noise_w: f32,
}

impl Scales {
    /// Piper's defaults, for a voice whose config does not give its own.
    pub const PIPER: Scales = Scales { length_scale: 1.0, noise_scale: 0.667, noise_w: 0.8 };
}

/// What a request asked for; each scale it left out (`None`) is the voice's.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Requested {
    pub speaker: u32,
    pub length_scale: Option<f32>,
    pub noise_scale: Option<f32>,
    pub noise_w: Option<f32>,
    pub seed: Option<u64>,
    pub raw: bool,
    pub stream: bool,
    pub timings: TimingLevel,
}

/// How to speak it, every value decided. Defaults are Piper's.
#[derive(Debug, Clone, PartialEq)]
pub struct SynthParams {
    pub speaker: u32,
    pub length_scale: f32,
    pub noise_scale: f32,
    pub noise_w: f32,
    /// Seed for the noise; `None` picks one.
    pub seed: Option<u64>,
    /// Skip Piper's per-sentence peak normalisation (clipping still applies).
    pub raw: bool,
    /// Hand out decoder windows as soon as they are ready instead of whole
    /// sentences. Streamed audio is not peak-normalised (that needs the whole
    /// sentence): it is the decoder's output, clipped.
    pub stream: bool,
    /// Which timings go with each sentence's first chunk.
    pub timings: TimingLevel,
}

impl SynthParams {
    /// The request's parameters, each scale it left out taken from
    /// `voice` (the voice's `inference` block, see
    /// [`VoiceConfig`](super::voice_config::VoiceConfig)).
    pub fn resolve(req: &Requested, voice: Scales) -> SynthParams {
        SynthParams {
            speaker: req.speaker,
            length_scale: req.length_scale.unwrap_or(voice.length_scale),
            noise_scale: req.noise_scale.unwrap_or(voice.noise_scale),
            noise_w: req.noise_w.unwrap_or(voice.noise_w),
            seed: req.seed,
            raw: req.raw,
            stream: req.stream,
            timings: req.timings,
        }
    }

    /// The model's sampling settings for one sentence, with `seed`.
    pub fn sampling(&self, seed: u64) -> Sampling {
        Sampling { length_scale: self.length_scale, noise_scale: self.noise_scale, noise_w: self.noise_w, seed }
    }
}

impl Default for SynthParams {
    fn default() -> Self {
        Self::resolve(&Requested::default(), Scales::PIPER)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requested_scales_win_and_the_rest_are_the_voices() {
        let voice = Scales { length_scale: 1.5, noise_scale: 0.3, noise_w: 0.4 };
        let req = Requested { speaker: 2, noise_scale: Some(0.0), seed: Some(9), stream: true, ..Default::default() };
        let p = SynthParams::resolve(&req, voice);
        assert_eq!(
            p,
            SynthParams {
                speaker: 2,
                length_scale: 1.5,
                noise_scale: 0.0,
                noise_w: 0.4,
                seed: Some(9),
                raw: false,
                stream: true,
                timings: TimingLevel::None
            }
        );
        let d = SynthParams::default();
        assert_eq!((d.length_scale, d.noise_scale, d.noise_w, d.speaker, d.seed), (1.0, 0.667, 0.8, 0, None));
    }
}
