//! ttsd: a local text-to-speech daemon.
pub mod bench;
pub mod engine;
pub mod mlx_info;
pub mod synth_cli;
pub mod worker;

/// Unit tests that call MLX take this lock: MLX is not thread-safe, and
/// libtest runs tests on several threads.
#[cfg(test)]
pub(crate) fn mlx_test_lock() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}
