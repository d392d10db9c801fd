//! The supervisor: ttsd's default mode. Listens on the Unix socket, queues
//! requests, and keeps a pool of worker processes healthy.
//!
//! Layout: [`socket`] (the socket file and who may connect), [`conn`] (one
//! client connection: handshake and frames), [`request`] (a request's one
//! terminal reply), [`validate`] (early request checks), [`pool`] (starting,
//! talking to and killing workers), [`arbiter`] (the loop that owns all state),
//! [`memory`] (the supervisor's allocator settings and trims).
//!
//! Runs on a tokio `current_thread` runtime. It never touches MLX or
//! espeak-ng: the engine lives in the workers only, so status and health are
//! answered within milliseconds even when every worker is busy.
pub mod activation;
pub mod arbiter;
pub mod conn;
pub mod memory;
pub mod pool;
pub mod request;
pub mod socket;
pub mod validate;

use crate::config::{Config, Overrides};
use crate::protocol::ErrorCode;
use arbiter::{Arbiter, Event};
use socket::{PeerPolicy, SocketError};
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use thiserror::Error;
use tokio::sync::{mpsc, watch};

#[derive(Debug, Error)]
pub enum SupervisorError {
    #[error(transparent)]
    Socket(#[from] SocketError),
    #[error(transparent)]
    Activation(#[from] activation::ActivationError),
    #[error("cannot find ttsd's own executable: {0}")]
    Exe(std::io::Error),
    #[error("runtime: {0}")]
    Runtime(std::io::Error),
}

/// Counts open connections; one is released when its writer ends.
struct ConnSlot {
    count: Arc<AtomicUsize>,
    _flushed: mpsc::Sender<()>,
}

impl Drop for ConnSlot {
    fn drop(&mut self) {
        self.count.fetch_sub(1, Ordering::SeqCst);
    }
}

/// The executable workers are started from: this very binary.
fn own_exe() -> std::io::Result<PathBuf> {
    // /proc/self/exe still works when the file was replaced by a rebuild,
    // so supervisor and workers always run the same code.
    let proc = PathBuf::from("/proc/self/exe");
    if proc.exists() {
        Ok(proc)
    } else {
        std::env::current_exe()
    }
}

/// Run the daemon until SIGTERM/SIGINT. Returns once every request has been
/// answered, every worker has exited and the socket file is gone.
pub fn run(cfg: Config, config_path: Option<PathBuf>, overrides: Overrides) -> Result<(), SupervisorError> {
    let exe = own_exe().map_err(SupervisorError::Exe)?;
    // A socket passed by systemd (LISTEN_FDS) replaces binding our own.
    let activated = activation::from_env()?;
    memory::configure();
    // From here on no log line waits for stderr (see crate::log).
    crate::log::start_background().map_err(SupervisorError::Runtime)?;
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(SupervisorError::Runtime)?;
    let result = rt.block_on(serve(cfg, config_path, overrides, exe, activated));
    drop(rt);
    // Write out what is buffered; a stalled log reader gets 2 s, no more.
    crate::log::stop_background(Duration::from_secs(2));
    result
}

async fn serve(
    cfg: Config,
    config_path: Option<PathBuf>,
    overrides: Overrides,
    exe: PathBuf,
    activated: Option<activation::Activated>,
) -> Result<(), SupervisorError> {
    // An activated socket's file belongs to the launcher: never removed here.
    let (std_listener, mut socket_file, path) = match activated {
        Some(a) => (a.listener, None, a.path.unwrap_or_else(|| PathBuf::from("(socket activation)"))),
        None => {
            let path = cfg.socket_path();
            let bound = socket::bind(&path, &cfg.socket_group)?;
            (bound.listener, Some(bound.file), path)
        }
    };
    std_listener.set_nonblocking(true).map_err(SupervisorError::Runtime)?;
    let listener = tokio::net::UnixListener::from_std(std_listener).map_err(SupervisorError::Runtime)?;
    crate::logln!("ttsd: listening on {}", path.display());

    let (events_tx, events_rx) = mpsc::unbounded_channel::<Event>();
    let (shutdown_tx, mut shutdown_rx) = watch::channel(false);
    let (flushed_tx, mut flushed_rx) = mpsc::channel::<()>(1);
    let connections = Arc::new(AtomicUsize::new(0));
    let policy = PeerPolicy::from_config(&cfg)?;
    let max_connections = cfg.max_connections;
    let limits = conn::Limits {
        max_frame: cfg.max_frame_bytes,
        idle_timeout: Duration::from_millis(cfg.idle_timeout_ms),
    };

    let accept_events = events_tx.clone();
    let accept_count = connections.clone();
    let accept = tokio::spawn(async move {
        let mut next_conn = 1u64;
        loop {
            let stream = tokio::select! {
                r = listener.accept() => match r {
                    Ok((s, _)) => s,
                    Err(e) => {
                        crate::logln!("ttsd: accept: {e}");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
                _ = shutdown_rx.changed() => break,
            };
            let allowed = match stream.peer_cred() {
                Ok(c) => policy.allows(c.uid(), c.gid()),
                Err(_) => false,
            };
            if !allowed {
                tokio::spawn(conn::refuse(stream, ErrorCode::PermissionDenied, "this user may not use ttsd".into()));
                continue;
            }
            if accept_count.load(Ordering::SeqCst) >= max_connections {
                let msg = format!("too many connections (max_connections = {max_connections})");
                tokio::spawn(conn::refuse(stream, ErrorCode::Overloaded, msg));
                continue;
            }
            accept_count.fetch_add(1, Ordering::SeqCst);
            let slot = ConnSlot { count: accept_count.clone(), _flushed: flushed_tx.clone() };
            tokio::spawn(conn::serve(stream, next_conn, accept_events.clone(), limits, slot));
            next_conn += 1;
        }
        // Stop accepting: new clients get "connection refused" / "no such file".
        drop(listener);
        drop(flushed_tx);
    });

    let arbiter = Arbiter::new(cfg, config_path, overrides, exe, events_tx, shutdown_tx, connections);
    let result = arbiter.run(events_rx).await;
    if let Some(f) = socket_file.as_mut() {
        f.remove();
    }
    let _ = accept.await;
    // Let the connection writers flush the last replies.
    let _ = tokio::time::timeout(Duration::from_secs(2), flushed_rx.recv()).await;
    crate::logln!("ttsd: stopped");
    result.map_err(SupervisorError::Runtime)
}
