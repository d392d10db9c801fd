//! The voice's `NAME.onnx.json` (Piper's voice config).
//!
//! Owns reading and validating the fields ttsd needs: audio rate and
//! quality, espeak voice and language, phoneme type and id map, speakers,
//! and the default inference scales (held to the protocol's limits). Plain
//! data only: it never touches MLX or espeak-ng, and a bad file is an
//! `EngineError::VoiceLoad` naming the problem, never a panic.
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::files::{read_capped, ReadError, MAX_CONFIG_BYTES};
use super::params::Scales;
use super::EngineError;
use crate::protocol::limits::{self, ParamError, SAMPLE_RATES};

#[derive(Debug, Clone)]
pub struct VoiceConfig {
    pub sample_rate: u32,
    /// `audio.quality` ("x_low", "low", "medium", "high"), or "" if absent.
    pub quality: String,
    /// `espeak.voice`, e.g. "en-us".
    pub espeak_voice: String,
    /// `language.code`, e.g. "en_US"; the espeak voice when absent.
    pub language: String,
    /// "espeak" (the default) or "text".
    pub phoneme_type: String,
    pub num_symbols: usize,
    pub num_speakers: usize,
    pub speaker_id_map: BTreeMap<String, i64>,
    /// Phoneme (one string, usually one char) -> ids; holds at least the pad
    /// `_`, BOS `^` and EOS `$`.
    pub phoneme_id_map: HashMap<String, Vec<i64>>,
    /// The default scales, from `inference`; Piper's where it has none.
    pub inference: Scales,
}

#[derive(Deserialize)]
struct RawConfig {
    audio: Option<RawAudio>,
    espeak: Option<RawEspeak>,
    language: Option<RawLanguage>,
    phoneme_type: Option<String>,
    num_symbols: Option<usize>,
    num_speakers: Option<usize>,
    speaker_id_map: Option<BTreeMap<String, i64>>,
    phoneme_id_map: Option<HashMap<String, Vec<i64>>>,
    inference: Option<RawInference>,
}

#[derive(Deserialize)]
struct RawAudio {
    sample_rate: Option<u32>,
    quality: Option<String>,
}

#[derive(Deserialize)]
struct RawEspeak {
    voice: Option<String>,
}

#[derive(Deserialize)]
struct RawLanguage {
    code: Option<String>,
}

#[derive(Deserialize)]
struct RawInference {
    noise_scale: Option<f32>,
    length_scale: Option<f32>,
    noise_w: Option<f32>,
}

impl VoiceConfig {
    /// `NAME.onnx` -> `NAME.onnx.json`.
    pub fn json_path_for(onnx_path: &Path) -> PathBuf {
        let mut s = onnx_path.as_os_str().to_owned();
        s.push(".json");
        PathBuf::from(s)
    }

    /// Read and validate a voice config file.
    pub fn load(json_path: &Path) -> Result<VoiceConfig, EngineError> {
        let bytes = read_capped(json_path, MAX_CONFIG_BYTES).map_err(|e| {
            let reason = match e {
                ReadError::NotFound => "the voice config (.onnx.json) does not exist".to_string(),
                e => format!("cannot read the voice config: {e}"),
            };
            err(json_path, reason)
        })?;
        let text = String::from_utf8(bytes).map_err(|_| err(json_path, "the voice config is not UTF-8 text"))?;
        Self::parse(json_path, &text)
    }

    /// Parse and validate config text; `path` is only used in errors.
    pub fn parse(path: &Path, text: &str) -> Result<VoiceConfig, EngineError> {
        let raw: RawConfig = serde_json::from_str(text)
            .map_err(|e| err(path, format!("the voice config is not valid JSON for a Piper voice: {e}")))?;
        let bad = |reason: String| Err(err(path, format!("voice config: {reason}")));

        let audio = raw.audio.unwrap_or(RawAudio { sample_rate: None, quality: None });
        let sample_rate = match audio.sample_rate {
            Some(r) if SAMPLE_RATES.contains(&r) => r,
            Some(r) => {
                let (lo, hi) = (SAMPLE_RATES.start(), SAMPLE_RATES.end());
                return bad(format!("audio.sample_rate must be between {lo} and {hi} Hz, not {r}"));
            }
            None => return bad("missing audio.sample_rate".into()),
        };
        let phoneme_type = raw.phoneme_type.unwrap_or_else(|| "espeak".into());
        let espeak_voice = raw.espeak.and_then(|e| e.voice).unwrap_or_default();
        if phoneme_type == "espeak" && espeak_voice.is_empty() {
            return bad("missing espeak.voice (needed for phoneme_type \"espeak\")".into());
        }
        let language = raw.language.and_then(|l| l.code).filter(|c| !c.is_empty()).unwrap_or_else(|| espeak_voice.clone());

        let Some(phoneme_id_map) = raw.phoneme_id_map else {
            return bad("missing phoneme_id_map".into());
        };
        for required in ["_", "^", "$"] {
            match phoneme_id_map.get(required) {
                Some(ids) if !ids.is_empty() => {}
                _ => return bad(format!("phoneme_id_map has no id for '{required}' (pad/BOS/EOS)")),
            }
        }
        let max_id = phoneme_id_map.values().flatten().copied().max().unwrap_or(0);
        let num_symbols = raw.num_symbols.unwrap_or(usize::try_from(max_id).unwrap_or(0) + 1);
        if let Some((p, id)) = phoneme_id_map
            .iter()
            .flat_map(|(p, ids)| ids.iter().map(move |id| (p, *id)))
            .find(|(_, id)| *id < 0 || *id as u64 >= num_symbols as u64)
        {
            return bad(format!("phoneme '{p}' has id {id}, outside 0..{num_symbols} (num_symbols)"));
        }

        let num_speakers = raw.num_speakers.unwrap_or(1);
        if num_speakers == 0 {
            return bad("num_speakers must be at least 1".into());
        }
        let speaker_id_map = raw.speaker_id_map.unwrap_or_default();
        if let Some((name, id)) = speaker_id_map.iter().find(|(_, id)| **id < 0 || **id as u64 >= num_speakers as u64) {
            return bad(format!("speaker '{name}' has id {id}, outside 0..{num_speakers} (num_speakers)"));
        }

        let inf = raw.inference.unwrap_or(RawInference { noise_scale: None, length_scale: None, noise_w: None });
        let piper = Scales::PIPER;
        let noise_scale = inf.noise_scale.unwrap_or(piper.noise_scale);
        let length_scale = inf.length_scale.unwrap_or(piper.length_scale);
        let noise_w = inf.noise_w.unwrap_or(piper.noise_w);
        // The same ranges a request's own scales are held to: a default
        // outside them would make every request fail as if the client
        // had asked for it.
        match limits::check_params(Some(length_scale), Some(noise_scale), Some(noise_w)) {
            Ok(()) => {}
            Err(ParamError::Scale { scale, value }) => return bad(format!("inference.{}, not {value:?}", scale.rule())),
            Err(other) => return bad(format!("inference: {other}")),
        }

        Ok(VoiceConfig {
            sample_rate,
            quality: audio.quality.unwrap_or_default(),
            espeak_voice,
            language,
            phoneme_type,
            num_symbols,
            num_speakers,
            speaker_id_map,
            phoneme_id_map,
            inference: Scales { length_scale, noise_scale, noise_w },
        })
    }
}

fn err(path: &Path, reason: impl Into<String>) -> EngineError {
    EngineError::VoiceLoad { path: path.display().to_string(), reason: reason.into() }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn voice_json() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("voices/en_US-joe-medium.onnx.json")
    }

    fn reason(e: EngineError) -> String {
        match e {
            EngineError::VoiceLoad { reason, .. } => reason,
            other => panic!("expected VoiceLoad, got {other:?}"),
        }
    }

    fn parse(text: &str) -> Result<VoiceConfig, EngineError> {
        VoiceConfig::parse(Path::new("v.onnx.json"), text)
    }

    const MINIMAL: &str = r#"{"audio": {"sample_rate": 16000}, "espeak": {"voice": "de"},
        "phoneme_id_map": {"_": [0], "^": [1], "$": [2], "a": [3]}}"#;

    #[test]
    fn json_path_appends_json() {
        assert_eq!(
            VoiceConfig::json_path_for(Path::new("voices/en_US-joe-medium.onnx")),
            PathBuf::from("voices/en_US-joe-medium.onnx.json")
        );
        assert_eq!(VoiceConfig::json_path_for(Path::new("/a/b.c")), PathBuf::from("/a/b.c.json"));
    }

    #[test]
    fn bundled_config_loads() {
        let onnx = Path::new(env!("CARGO_MANIFEST_DIR")).join("voices/en_US-joe-medium.onnx");
        assert_eq!(VoiceConfig::json_path_for(&onnx), voice_json());
        let c = VoiceConfig::load(&voice_json()).unwrap();
        assert_eq!(c.sample_rate, 22050);
        assert_eq!(c.quality, "medium");
        assert_eq!(c.espeak_voice, "en-us");
        assert_eq!(c.language, "en_US");
        assert_eq!(c.phoneme_type, "espeak");
        assert_eq!(c.num_symbols, 256);
        assert_eq!(c.num_speakers, 1);
        assert!(c.speaker_id_map.is_empty());
        assert_eq!(c.phoneme_id_map["_"], vec![0]);
        assert_eq!(c.phoneme_id_map["^"], vec![1]);
        assert_eq!(c.phoneme_id_map["$"], vec![2]);
        assert_eq!(c.phoneme_id_map[" "], vec![3]);
        assert_eq!(c.phoneme_id_map.len(), 151);
        assert_eq!((c.inference.noise_scale, c.inference.length_scale, c.inference.noise_w), (0.667, 1.0, 0.8));
    }

    #[test]
    fn defaults_for_optional_fields() {
        let c = parse(MINIMAL).unwrap();
        assert_eq!(c.sample_rate, 16000);
        assert_eq!(c.quality, "");
        assert_eq!(c.language, "de", "falls back to the espeak voice");
        assert_eq!(c.phoneme_type, "espeak");
        assert_eq!(c.num_symbols, 4, "max id + 1 without num_symbols");
        assert_eq!(c.num_speakers, 1);
        assert_eq!((c.inference.noise_scale, c.inference.length_scale, c.inference.noise_w), (0.667, 1.0, 0.8));
        let c = parse(&MINIMAL.replacen('{', r#"{"inference": {"length_scale": 1.5}, "#, 1)).unwrap();
        assert_eq!((c.inference.noise_scale, c.inference.length_scale, c.inference.noise_w), (0.667, 1.5, 0.8));
    }

    #[test]
    fn multi_speaker_map() {
        let text = MINIMAL.replacen('{', r#"{"num_speakers": 2, "speaker_id_map": {"b": 1, "a": 0}, "#, 1);
        let c = parse(&text).unwrap();
        assert_eq!(c.num_speakers, 2);
        assert_eq!(c.speaker_id_map.iter().collect::<Vec<_>>(), vec![(&"a".to_string(), &0), (&"b".to_string(), &1)]);
        let text = MINIMAL.replacen('{', r#"{"num_speakers": 2, "speaker_id_map": {"a": 2}, "#, 1);
        assert!(reason(parse(&text).unwrap_err()).contains("speaker 'a' has id 2"));
    }

    #[test]
    fn missing_and_invalid_files_are_clear_errors() {
        let dir = tempfile::tempdir().unwrap();
        let r = reason(VoiceConfig::load(&dir.path().join("nope.onnx.json")).unwrap_err());
        assert!(r.contains("does not exist"), "{r}");

        let bad = dir.path().join("bad.onnx.json");
        std::fs::write(&bad, "{ \"audio\": ").unwrap();
        let r = reason(VoiceConfig::load(&bad).unwrap_err());
        assert!(r.contains("not valid JSON"), "{r}");

        let mut v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(voice_json()).unwrap()).unwrap();
        v.as_object_mut().unwrap().remove("phoneme_id_map");
        let no_map = dir.path().join("nomap.onnx.json");
        std::fs::write(&no_map, v.to_string()).unwrap();
        let r = reason(VoiceConfig::load(&no_map).unwrap_err());
        assert_eq!(r, "voice config: missing phoneme_id_map");
    }

    #[test]
    fn invalid_contents_are_clear_errors() {
        let cases = [
            (r#"{"espeak": {"voice": "en"}, "phoneme_id_map": {}}"#, "missing audio.sample_rate"),
            (r#"{"audio": {"sample_rate": 0}}"#, "audio.sample_rate must be between 8000 and 192000 Hz, not 0"),
            (r#"{"audio": {"sample_rate": 22050}, "phoneme_id_map": {}}"#, "missing espeak.voice"),
            (r#"[1, 2]"#, "not valid JSON"),
            (r#"{"audio": {"sample_rate": "fast"}}"#, "not valid JSON"),
        ];
        for (text, want) in cases {
            let r = reason(parse(text).unwrap_err());
            assert!(r.contains(want), "{text}: {r}");
        }
        let no_eos = MINIMAL.replace(r#""$": [2], "#, "");
        assert!(reason(parse(&no_eos).unwrap_err()).contains("no id for '$'"));
        let out_of_range = MINIMAL.replacen('{', r#"{"num_symbols": 3, "#, 1);
        assert!(reason(parse(&out_of_range).unwrap_err()).contains("phoneme 'a' has id 3, outside 0..3"));
        let bad_scale = MINIMAL.replacen('{', r#"{"inference": {"length_scale": 0}, "#, 1);
        assert!(reason(parse(&bad_scale).unwrap_err()).contains("inference.length_scale must be a number in (0, 20]"));
        let text_type = r#"{"audio": {"sample_rate": 22050}, "phoneme_type": "text",
            "phoneme_id_map": {"_": [0], "^": [1], "$": [2]}}"#;
        let c = parse(text_type).unwrap();
        assert_eq!((c.espeak_voice.as_str(), c.language.as_str()), ("", ""));
    }

    /// Issue 15: these loaded as "loaded", then every request failed with a
    /// `bad_request` blaming the client, or (sample_rate) the WAV header's
    /// byte rate wrapped.
    #[test]
    fn voice_config_out_of_range_names_the_field() {
        let cases = [
            (r#""inference": {"length_scale": 25}"#, "inference.length_scale must be a number in (0, 20], not 25"),
            (r#""inference": {"length_scale": -1}"#, "inference.length_scale"),
            (r#""inference": {"noise_scale": 1e30}"#, "inference.noise_scale must be a number in [0, 10], not 1e30"),
            (r#""inference": {"noise_w": 11}"#, "inference.noise_w must be a number in [0, 10], not 11"),
            (r#""inference": {"noise_w": -0.5}"#, "inference.noise_w"),
        ];
        for (field, want) in cases {
            let text = MINIMAL.replacen('{', &format!("{{{field}, "), 1);
            let r = reason(parse(&text).unwrap_err());
            assert!(r.contains(want), "{field}: {r}");
        }
        for rate in ["4294967295", "7999", "192001", "1"] {
            let text = MINIMAL.replace("16000", rate);
            let r = reason(parse(&text).unwrap_err());
            assert!(r.contains(&format!("audio.sample_rate must be between 8000 and 192000 Hz, not {rate}")), "{r}");
        }
        // The ends of the ranges are fine.
        let edge = MINIMAL.replace("16000", "192000").replacen(
            '{',
            r#"{"inference": {"length_scale": 20, "noise_scale": 10, "noise_w": 0}, "#,
            1,
        );
        let c = parse(&edge).unwrap();
        assert_eq!((c.sample_rate, c.inference.length_scale, c.inference.noise_scale, c.inference.noise_w), (192000, 20.0, 10.0, 0.0));
    }

    #[test]
    fn oversized_and_special_config_files_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let big = dir.path().join("big.onnx.json");
        std::fs::write(&big, " ".repeat(MAX_CONFIG_BYTES as usize + 1)).unwrap();
        let r = reason(VoiceConfig::load(&big).unwrap_err());
        assert!(r.contains("more than the 1048576 allowed"), "{r}");
        let r = reason(VoiceConfig::load(Path::new("/dev/zero")).unwrap_err());
        assert!(r.contains("not a regular file"), "{r}");
    }
}
