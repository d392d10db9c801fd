//! How the engine's process uses memory: the allocator's settings, and the
//! process's resident set size (RSS) as the worker's heartbeat and the
//! benchmark report it.
//!
//! MLX takes every array's buffer from `malloc` and frees it when the last
//! reference goes. glibc serves blocks above its mmap threshold (128 KiB,
//! raised on the fly) with fresh mappings and gives memory at the heap's
//! top back to the kernel beyond its trim threshold, so the decoder's
//! megabyte-sized tiles were mapped, page-faulted, zeroed and unmapped over
//! and over, worst on several lanes. [`configure_malloc`] raises both
//! thresholds so that freed buffers are reused (figures in docs/engine.md,
//! "Memory allocator").
//!
//! Owns the allocator's parameters and the RSS readers. It never allocates
//! on the engine's behalf and never starts a thread.

/// Blocks up to this size come from the heap, not their own mapping
/// (glibc's largest allowed value on 64-bit).
const MMAP_THRESHOLD: i32 = 32 << 20;
/// Free memory at the heap's top kept for reuse, not given back.
const TRIM_THRESHOLD: i32 = 64 << 20;

/// Sets glibc's thresholds for mapping blocks and trimming the heap (see
/// the module doc). Call before any other thread starts.
pub fn configure_malloc() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes allocator parameters; called before other threads start.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD);
        libc::mallopt(libc::M_TRIM_THRESHOLD, TRIM_THRESHOLD);
    }
}

/// This process's resident set size now, in bytes, from /proc/self/statm
/// (0 where unavailable).
pub fn current_rss_bytes() -> u64 {
    let pages = std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| s.split_whitespace().nth(1).and_then(|p| p.parse::<u64>().ok()))
        .unwrap_or(0);
    // SAFETY: sysconf has no preconditions.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) }.max(0) as u64;
    pages * page
}

/// The largest resident set size this process has had, in bytes (0 where
/// unavailable).
pub fn peak_rss_bytes() -> u64 {
    let mut usage = std::mem::MaybeUninit::<libc::rusage>::zeroed();
    // SAFETY: getrusage fills the struct it is given; on failure it stays zeroed.
    let usage = unsafe {
        libc::getrusage(libc::RUSAGE_SELF, usage.as_mut_ptr());
        usage.assume_init()
    };
    let max = usage.ru_maxrss.max(0) as u64;
    // Linux counts ru_maxrss in KiB, macOS in bytes.
    if cfg!(target_os = "macos") {
        max
    } else {
        max * 1024
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rss_is_read_from_the_kernel() {
        let now = current_rss_bytes();
        assert!(now > 1024 * 1024, "{now} bytes");
        assert!(peak_rss_bytes() >= now / 2, "peak {} vs now {now}", peak_rss_bytes());
    }
}
