//! Typed engine errors: callers (the worker) map them to protocol error codes.
//!
//! Owns the error kinds and the engine's `Result`. It never decides what a
//! client sees (the worker maps and [`super::sanitize`] cleans) and never
//! logs.
use thiserror::Error;

use crate::protocol::limits::ParamError;

/// The engine's results.
pub type Result<T, E = EngineError> = std::result::Result<T, E>;

#[derive(Debug, Error)]
pub enum EngineError {
    /// The request itself is wrong (empty text, speaker out of range, bad scale,
    /// phoneme id outside the voice's range). Maps to `bad_request`.
    #[error("{0}")]
    InvalidInput(String),
    #[error("unknown voice '{0}'")]
    UnknownVoice(String),
    /// A configured voice that failed to load (`reason`). Maps to `unavailable`.
    #[error("voice '{voice}' is unavailable: {reason}")]
    VoiceUnavailable { voice: String, reason: String },
    /// The voice files are missing, truncated or do not fit the model.
    #[error("cannot load voice {path}: {reason}")]
    VoiceLoad { path: String, reason: String },
    /// espeak-ng could not be loaded or failed.
    #[error("phonemizer: {0}")]
    Phonemizer(String),
    /// The cancellation flag was raised (timeout or client gone).
    #[error("cancelled")]
    Cancelled,
    /// MLX reported an error while running the model.
    #[error("mlx: {0}")]
    Mlx(String),
    /// The chunk consumer failed (for example the supervisor went away).
    #[error("output: {0}")]
    Output(String),
}

/// A parameter outside the protocol's limits is the request's fault.
impl From<ParamError> for EngineError {
    fn from(e: ParamError) -> Self {
        EngineError::InvalidInput(e.to_string())
    }
}

impl From<mlx_rs::error::Exception> for EngineError {
    fn from(e: mlx_rs::error::Exception) -> Self {
        EngineError::Mlx(e.to_string())
    }
}
