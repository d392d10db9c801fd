//! The ranges a synthesize request's parameters must fall in, and the one
//! check of them, shared by every layer that sees a request: the supervisor
//! refuses early, the engine checks what reaches it, and a voice's config
//! is held to the same ranges for its defaults.
//!
//! Owns the limits and the messages that name them. Pure functions of the
//! values: it never knows a voice beyond the counts it is handed, never
//! does I/O, and never echoes client text (only numbers and a configured
//! voice name).
use std::fmt;
use std::ops::RangeInclusive;

/// Largest `length_scale` accepted (20x slower than the voice's pace):
/// absurd finite values would expand a sentence without limit.
pub const MAX_LENGTH_SCALE: f32 = 20.0;
/// Largest `noise_scale` / `noise_w` accepted (Piper's defaults are < 1).
pub const MAX_NOISE: f32 = 10.0;
/// Sample rates a voice may declare (Hz): what audio devices and WAV
/// readers handle; Piper's voices use 16000 and 22050.
pub const SAMPLE_RATES: RangeInclusive<u32> = 8_000..=192_000;
/// Phoneme ids a request may carry for each character of text it could
/// have sent instead (`max_text_chars`).
pub const PHONEME_IDS_PER_CHAR: usize = 4;

/// Most phoneme ids in one request when texts are capped at `max_text_chars`.
pub fn max_phoneme_ids(max_text_chars: usize) -> usize {
    max_text_chars.saturating_mul(PHONEME_IDS_PER_CHAR)
}

/// One of the three sampling scales of a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scale {
    LengthScale,
    NoiseScale,
    NoiseW,
}

impl Scale {
    /// The field's name on the wire and in a voice's `inference` block.
    pub fn name(self) -> &'static str {
        match self {
            Scale::LengthScale => "length_scale",
            Scale::NoiseScale => "noise_scale",
            Scale::NoiseW => "noise_w",
        }
    }

    /// Whether `v` is in range. 0 is a valid noise (deterministic output),
    /// as in Piper; a length scale of 0 would make no sound.
    pub fn allows(self, v: f32) -> bool {
        match self {
            Scale::LengthScale => v.is_finite() && v > 0.0 && v <= MAX_LENGTH_SCALE,
            Scale::NoiseScale | Scale::NoiseW => v.is_finite() && (0.0..=MAX_NOISE).contains(&v),
        }
    }

    /// The rule, as messages state it: `length_scale must be a number in (0, 20]`.
    pub fn rule(self) -> String {
        match self {
            Scale::LengthScale => format!("{} must be a number in (0, {MAX_LENGTH_SCALE}]", self.name()),
            Scale::NoiseScale | Scale::NoiseW => format!("{} must be a number in [0, {MAX_NOISE}]", self.name()),
        }
    }
}

/// A parameter outside its range.
#[derive(Debug, Clone, PartialEq)]
pub enum ParamError {
    Scale { scale: Scale, value: f32 },
    /// `speaker` is not below the voice's `speakers`.
    Speaker { speaker: u32, speakers: u32, voice: String },
}

impl fmt::Display for ParamError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ParamError::Scale { scale, value } => write!(f, "{}, got {value}", scale.rule()),
            ParamError::Speaker { speaker, speakers, voice } => {
                write!(f, "speaker {speaker} is out of range: voice '{voice}' has {speakers} speaker(s)")
            }
        }
    }
}

impl std::error::Error for ParamError {}

/// Checks the scales a request gave (`None`: the voice's default, checked
/// when the voice loaded), in the order of the request's fields.
pub fn check_params(length_scale: Option<f32>, noise_scale: Option<f32>, noise_w: Option<f32>) -> Result<(), ParamError> {
    for (scale, value) in [(Scale::LengthScale, length_scale), (Scale::NoiseScale, noise_scale), (Scale::NoiseW, noise_w)] {
        if let Some(value) = value.filter(|&v| !scale.allows(v)) {
            return Err(ParamError::Scale { scale, value });
        }
    }
    Ok(())
}

/// Checks a speaker id against a voice with `speakers` speakers (a voice
/// that declares none has one).
pub fn check_speaker(speaker: u32, speakers: u32, voice: &str) -> Result<(), ParamError> {
    let speakers = speakers.max(1);
    if speaker >= speakers {
        return Err(ParamError::Speaker { speaker, speakers, voice: voice.to_string() });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scales_are_checked_in_field_order_with_their_range_in_the_message() {
        assert_eq!(check_params(None, None, None), Ok(()));
        assert_eq!(check_params(Some(MAX_LENGTH_SCALE), Some(0.0), Some(MAX_NOISE)), Ok(()));
        let e = check_params(Some(50.0), Some(-1.0), None).unwrap_err();
        assert_eq!(e.to_string(), "length_scale must be a number in (0, 20], got 50");
        let e = check_params(Some(1.0), Some(f32::NAN), None).unwrap_err();
        assert_eq!(e.to_string(), "noise_scale must be a number in [0, 10], got NaN");
        let e = check_params(None, None, Some(1e30)).unwrap_err();
        assert_eq!(e, ParamError::Scale { scale: Scale::NoiseW, value: 1e30 });
        for bad in [0.0, -1.0, f32::INFINITY, f32::NAN, 20.5] {
            assert!(check_params(Some(bad), None, None).is_err(), "length_scale {bad}");
        }
    }

    #[test]
    fn speakers_count_from_one() {
        assert_eq!(check_speaker(0, 0, "joe"), Ok(()));
        assert_eq!(check_speaker(2, 3, "joe"), Ok(()));
        let e = check_speaker(1, 0, "joe").unwrap_err();
        assert_eq!(e.to_string(), "speaker 1 is out of range: voice 'joe' has 1 speaker(s)");
        assert!(check_speaker(u32::MAX, u32::MAX, "x").is_err());
    }

    #[test]
    fn phoneme_ids_scale_with_the_text_cap() {
        assert_eq!(max_phoneme_ids(100), 400);
        assert_eq!(max_phoneme_ids(usize::MAX), usize::MAX);
    }
}
