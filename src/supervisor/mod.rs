//! The supervisor: ttsd's default mode. Listens on the Unix socket, queues
//! requests, and keeps a pool of worker processes healthy.
//!
//! Layout, lowest first; a file imports only files listed before it:
//! - [`outbox`]: one connection's reply sink and its byte caps;
//!   [`event`]: what the arbiter hears (events, queries, ids);
//!   [`validate`]: early request checks; [`memory`]: allocator settings.
//! - [`handle`]: the API a connection uses (admit, sessions, tickets).
//! - [`request`]: a request's one terminal reply, and the outcome counts.
//! - [`pool`]: starting, talking to and killing workers.
//! - [`policy`]: back-off, jitter, hang detection, recycling, retries,
//!   eviction; [`status`]: health, voices, the Status reply; [`reload`]:
//!   what a SIGHUP's changes need.
//! - [`arbiter`]: the one loop that owns all state.
//! - [`conn`], [`socket`], [`activation`]: the socket and its connections.
//! - this file: [`run`], which wires them on one runtime.
//!
//! Runs on a tokio `current_thread` runtime. It never touches MLX or
//! espeak-ng: the engine lives in the workers only, so status and health are
//! answered within milliseconds even when every worker is busy.
pub mod activation;
pub mod arbiter;
pub mod conn;
pub mod event;
pub mod handle;
pub mod memory;
pub mod outbox;
pub mod policy;
pub mod pool;
pub mod reload;
pub mod request;
pub mod socket;
pub mod status;
pub mod validate;

pub use event::{ConnId, Lifecycle, Query, Ticket};
pub use handle::{Admission, Full, Handle, Session, Stopped, EVENTS_IN_FLIGHT};

use crate::config::{Config, Overrides};
use crate::protocol::ErrorCode;
use arbiter::{Arbiter, Links, Settings};
use event::Event;
use socket::{PeerPolicy, SocketError};
use std::path::PathBuf;
use std::sync::atomic::AtomicUsize;
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
            let bound = socket::bind(&path, &cfg.listen.socket_group)?;
            (bound.listener, Some(bound.file), path)
        }
    };
    std_listener.set_nonblocking(true).map_err(SupervisorError::Runtime)?;
    let listener = tokio::net::UnixListener::from_std(std_listener).map_err(SupervisorError::Runtime)?;
    crate::logln!("ttsd: listening on {}", path.display());

    let (events_tx, events_rx) = mpsc::unbounded_channel::<Event>();
    let (lifecycle_tx, lifecycle_rx) = watch::channel(Lifecycle::Serving);
    let (flushed_tx, mut flushed_rx) = mpsc::channel::<()>(1);
    let connections = Arc::new(AtomicUsize::new(0));
    let policy = PeerPolicy::from_config(&cfg.listen)?;
    let limits = conn::Limits {
        max_frame: cfg.listen.max_frame_bytes,
        idle_timeout: Duration::from_millis(cfg.listen.idle_timeout_ms),
    };
    let core = Handle::new(events_tx.clone(), lifecycle_rx, connections.clone(), cfg.listen.max_connections, flushed_tx);

    let accept = tokio::spawn(async move {
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
                _ = core.stopping() => break,
            };
            let allowed = match stream.peer_cred() {
                Ok(c) => policy.allows(c.uid(), c.gid()),
                Err(_) => false,
            };
            if !allowed {
                tokio::spawn(conn::refuse(stream, ErrorCode::PermissionDenied, "this user may not use ttsd".into()));
                continue;
            }
            match core.admit() {
                Ok(admission) => {
                    tokio::spawn(conn::serve(stream, core.clone(), limits, admission));
                }
                Err(full) => {
                    tokio::spawn(conn::refuse(stream, ErrorCode::Overloaded, full.to_string()));
                }
            }
        }
        // Stop accepting: new clients get "connection refused" / "no such file".
        drop(listener);
    });

    let settings = Settings { cfg, config_path, overrides, exe };
    let links = Links { events: events_tx, lifecycle: lifecycle_tx, connections };
    let result = Arbiter::new(settings, links).run(events_rx).await;
    if let Some(f) = socket_file.as_mut() {
        f.remove();
    }
    let _ = accept.await;
    // Let the connection writers flush the last replies.
    let _ = tokio::time::timeout(Duration::from_secs(2), flushed_rx.recv()).await;
    crate::logln!("ttsd: stopped");
    result.map_err(SupervisorError::Runtime)
}
