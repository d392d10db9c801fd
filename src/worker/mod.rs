//! Worker process (owned by the daemon helper).

/// Panics (in debug builds and tests) unless called on the process's main thread.
pub fn assert_main_thread() {
    #[cfg(any(debug_assertions, test, feature = "fault-injection"))]
    {
        let tid = nix::unistd::gettid();
        let pid = nix::unistd::getpid();
        assert_eq!(tid.as_raw(), pid.as_raw(), "engine called off the main thread");
    }
}
