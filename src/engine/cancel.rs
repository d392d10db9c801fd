//! The caller's cancellation flag (a deadline passed, or the client left)
//! and the poll that turns it into [`EngineError::Cancelled`].
//!
//! Owns the flag's type only: the engine polls it between stages, layers and
//! tiles. It never raises the flag and never waits.
use super::error::{EngineError, Result};

/// The caller's cancellation flag, polled between stages and tiles.
pub type Cancelled<'a> = &'a dyn Fn() -> bool;

/// `Err(Cancelled)` once the flag is up.
pub fn check(cancelled: Cancelled) -> Result<()> {
    if cancelled() {
        Err(EngineError::Cancelled)
    } else {
        Ok(())
    }
}
