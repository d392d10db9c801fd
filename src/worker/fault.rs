//! Fault injection for tests: crash, hang, sleep or grow memory on request.
//!
//! Only does anything in builds with the `fault-injection` feature; other
//! builds refuse any fault as invalid input. It never touches the engine.
use crate::engine::EngineError;
use crate::protocol::Fault;

/// Act out `fault` before synthesis. `cancelled` is the job's flag check.
#[cfg(feature = "fault-injection")]
pub fn apply(fault: Option<Fault>, cancelled: &dyn Fn() -> bool) -> Result<(), EngineError> {
    use std::time::{Duration, Instant};
    match fault {
        None => Ok(()),
        Some(Fault::Crash) => std::process::abort(),
        Some(Fault::Hang) => loop {
            // Ignores timeouts, cancels and heartbeats on purpose.
            std::hint::spin_loop();
        },
        Some(Fault::SleepMs(ms)) => {
            let until = Instant::now() + Duration::from_millis(ms);
            loop {
                if cancelled() {
                    return Err(EngineError::Cancelled);
                }
                let left = until.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    return Ok(());
                }
                std::thread::sleep(left.min(Duration::from_millis(5)));
            }
        }
        Some(Fault::GrowMb(mb)) => {
            let mut v = vec![0u8; (mb as usize) << 20];
            for i in (0..v.len()).step_by(4096) {
                v[i] = 1;
            }
            // Keep the optimiser from eliding the never-read allocation.
            std::hint::black_box(&mut v);
            std::mem::forget(v);
            Ok(())
        }
    }
}

#[cfg(not(feature = "fault-injection"))]
pub fn apply(fault: Option<Fault>, _cancelled: &dyn Fn() -> bool) -> Result<(), EngineError> {
    match fault {
        None => Ok(()),
        Some(_) => Err(EngineError::InvalidInput("fault injection is not built into this ttsd".into())),
    }
}
