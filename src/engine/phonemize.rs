//! espeak-ng phonemization (owned by the phonemizer helper).
use super::EngineError;
pub struct Phonemizer {}
impl Phonemizer {
    pub fn new() -> Result<Self, EngineError> {
        Err(EngineError::Phonemizer("not built yet".into()))
    }
}
