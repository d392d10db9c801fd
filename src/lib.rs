//! ttsd: a local text-to-speech daemon.
//!
//! # Layout
//! - [`protocol`]: wire types and framing, shared by clients and the daemon.
//! - [`supervisor`]: the daemon's core (queue, workers, health, reload);
//!   knows no wire or socket, never touches MLX or espeak-ng.
//! - [`frontend`]: the ways in, adapters between a wire and the core's
//!   `Handle`/`Session`: today the native protocol on the Unix socket
//!   (listener, peer checks, handshake, framing, its own limits).
//! - [`worker`]: a worker process, running the engine on its main thread;
//!   its `speak` turns a text that arrives in pieces (and SSML) into
//!   sentences, audio and timings.
//! - [`engine`]: voices, phonemizer (with each word's phonemes), SSML, and
//!   the VITS model on MLX.
//! - [`client`]: the library client used by `ttsctl`, tests and the stress
//!   harness. [`config`]: `daemon.toml`. [`log`]: one-line stderr logging.
//! - [`runtime_dir`]: the socket's default directory and the checks that it
//!   is ours, shared by the daemon and the clients.
//!
//! The binaries (`src/bin/`: `ttsd`, `ttsctl`, `ttsd-bench`) are glue over
//! these; command-line parsing for the engine (`ttsd synth`) and `anyhow`
//! live there, not in the library.
pub mod client;
pub mod config;
pub mod engine;
pub mod frontend;
pub mod log;
pub mod protocol;
pub mod runtime_dir;
pub mod supervisor;
pub mod worker;

/// Unit tests that call MLX take this lock: MLX is not thread-safe, and
/// libtest runs tests on several threads.
#[cfg(test)]
pub(crate) fn mlx_test_lock() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}
