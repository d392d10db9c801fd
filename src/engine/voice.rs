//! One loaded voice (owned by the engine lead).
use super::*;
use std::path::Path;

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

pub struct Voice {
    info: VoiceInfo,
}

impl Voice {
    pub fn load(_name: &str, path: &Path) -> Result<Self, EngineError> {
        Err(EngineError::VoiceLoad { path: path.display().to_string(), reason: "not built yet".into() })
    }
    pub fn info(&self) -> &VoiceInfo {
        &self.info
    }
    pub fn synthesize(
        &mut self,
        _phonemizer: Option<&mut Phonemizer>,
        _input: &SynthInput,
        _params: &SynthParams,
        _cancelled: &dyn Fn() -> bool,
        _on_chunk: &mut dyn FnMut(Chunk) -> Result<(), EngineError>,
    ) -> Result<SynthSummary, EngineError> {
        Err(EngineError::Mlx("not built yet".into()))
    }
}
