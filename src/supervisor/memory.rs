//! The supervisor's allocator policy: give memory back once clients go.
//!
//! `main` sets glibc up for the engine (`engine::cpu::configure`: blocks up
//! to 32 MiB from the heap, 64 MiB of free heap kept), which suits a worker
//! reusing big MLX buffers and does not suit the supervisor: a client
//! pipelining megabyte frames left their buffers scattered over a heap that
//! was never trimmed (RSS 9 MiB -> 2 GiB, never given back). The supervisor
//! instead maps big blocks on their own (returned to the kernel on free) and
//! trims the heap after waves of disconnects ([`Trimmer`]).
//!
//! Owns only allocator settings and when to trim. Never allocates on its own.
use std::time::{Duration, Instant};

/// Blocks from this size get their own mapping, returned on free. A fixed
/// value also turns off glibc's dynamic threshold, which would otherwise
/// rise to the largest block freed (a 1 MiB frame) and keep such blocks in
/// the heap.
pub const MMAP_THRESHOLD: i32 = 128 << 10;
/// Free memory at the heap's top kept for reuse (glibc's default).
pub const TRIM_THRESHOLD: i32 = 128 << 10;

/// Apply the supervisor's allocator settings. Call once, in the supervisor
/// process only, before its threads start.
pub fn configure() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes allocator parameters.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD);
        libc::mallopt(libc::M_TRIM_THRESHOLD, TRIM_THRESHOLD);
    }
}

/// Hand free heap pages back to the kernel (glibc's `malloc_trim`, which
/// also releases whole free pages inside the heap, not only at its top).
fn trim() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only walks the allocator's own free lists.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Trims after connections go: once this many closed since the last trim...
pub const TRIM_AFTER_DISCONNECTS: u32 = 16;
/// ...or any closed and this long passed; never more often than
/// [`MIN_TRIM_INTERVAL`] (a trim walks the whole heap: well under a
/// millisecond at the supervisor's usual size).
pub const TRIM_AFTER: Duration = Duration::from_secs(10);
pub const MIN_TRIM_INTERVAL: Duration = Duration::from_secs(1);

/// Decides when to trim, from the disconnects the arbiter reports.
#[derive(Debug)]
pub struct Trimmer {
    disconnects: u32,
    last: Instant,
}

impl Trimmer {
    pub fn new(now: Instant) -> Self {
        Self { disconnects: 0, last: now }
    }

    pub fn disconnected(&mut self) {
        self.disconnects = self.disconnects.saturating_add(1);
    }

    /// Whether a trim is due now; if so, counts it as done.
    fn due(&mut self, now: Instant) -> bool {
        let since = now.saturating_duration_since(self.last);
        let due = since >= MIN_TRIM_INTERVAL
            && (self.disconnects >= TRIM_AFTER_DISCONNECTS || (self.disconnects > 0 && since >= TRIM_AFTER));
        if due {
            self.disconnects = 0;
            self.last = now;
        }
        due
    }

    /// Trim if due (called from the arbiter's supervision pass).
    pub fn maybe_trim(&mut self, now: Instant) {
        if self.due(now) {
            trim();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trims_after_a_wave_or_a_while_never_in_a_tight_loop() {
        let t0 = Instant::now();
        let mut t = Trimmer::new(t0);
        assert!(!t.due(t0 + Duration::from_secs(60)), "nothing closed: nothing to give back");
        for _ in 0..TRIM_AFTER_DISCONNECTS {
            t.disconnected();
        }
        assert!(!t.due(t0), "not twice within MIN_TRIM_INTERVAL");
        assert!(t.due(t0 + MIN_TRIM_INTERVAL));
        assert!(!t.due(t0 + MIN_TRIM_INTERVAL * 2), "the wave was counted");
        t.disconnected();
        assert!(!t.due(t0 + MIN_TRIM_INTERVAL * 3), "one disconnect waits...");
        assert!(t.due(t0 + MIN_TRIM_INTERVAL + TRIM_AFTER), "...until TRIM_AFTER");
    }
}
