//! The engine's threading rule, checked: MLX and espeak-ng are not
//! thread-safe, so every engine call runs on the process's main thread.
//!
//! Owns the check only. It never starts a thread, and costs nothing in
//! release builds of the daemon (debug builds, tests and fault-injection
//! builds panic on a violation).

/// Panics (in debug builds and tests) unless called on the process's main thread.
pub fn assert_main_thread() {
    #[cfg(any(debug_assertions, test, feature = "fault-injection"))]
    {
        let tid = nix::unistd::gettid();
        let pid = nix::unistd::getpid();
        assert_eq!(tid.as_raw(), pid.as_raw(), "engine called off the main thread");
    }
}
