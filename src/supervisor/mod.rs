//! The supervisor: ttsd's core. Queues requests, keeps a pool of worker
//! processes healthy, and answers through the sessions front-ends open on
//! its [`Handle`]; it knows no wire and no socket (see [`crate::frontend`]).
//!
//! Layout, lowest first; a file imports only files listed before it:
//! - [`outbox`]: one connection's reply sink and its byte caps;
//!   [`event`]: what the arbiter hears (events, queries, ids, lifecycle);
//!   [`validate`]: early request checks; [`memory`]: allocator settings.
//! - [`handle`]: the API front-ends use ([`Handle`], [`Session`]).
//! - [`request`]: a request's one terminal reply, and the outcome counts.
//! - [`pool`]: starting, talking to and killing workers.
//! - [`policy`]: back-off, jitter, hang detection, recycling, retries,
//!   eviction; [`status`]: health, voices, the Status reply; [`reload`]:
//!   what a SIGHUP's changes need.
//! - [`arbiter`]: the one loop that owns all state.
//! - this file: [`Frontend`], the shape of a front-end as the supervisor
//!   starts it, and [`run`], which wires the arbiter and the front-ends on
//!   one runtime.
//!
//! Runs on a tokio `current_thread` runtime. It never touches MLX or
//! espeak-ng (the engine lives in the workers only, so status and health are
//! answered within milliseconds even when every worker is busy), never
//! imports a front-end, and never reads or writes a client's wire.
pub mod arbiter;
pub mod event;
pub mod handle;
pub mod memory;
pub mod outbox;
pub mod policy;
pub mod pool;
pub mod reload;
pub mod request;
pub mod status;
pub mod validate;

pub use event::{ConnId, Lifecycle, Query, Submission, Ticket};
pub use handle::{Admission, Full, Handle, Session, Stopped, EVENTS_IN_FLIGHT};
pub use outbox::{CloseReason, Encode, Encoded, Outbound, Outbox, Outgoing};

use crate::config::{Config, Overrides};
use arbiter::{Arbiter, Links, Settings};
use event::Event;
use std::path::PathBuf;
use std::sync::atomic::AtomicUsize;
use std::sync::Arc;
use std::time::Duration;
use thiserror::Error;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

#[derive(Debug, Error)]
pub enum SupervisorError {
    #[error("cannot find ttsd's own executable: {0}")]
    Exe(std::io::Error),
    #[error("runtime: {0}")]
    Runtime(std::io::Error),
    #[error("front-end {name}: {source}")]
    Frontend { name: &'static str, source: std::io::Error },
}

/// A way in for clients (see [`crate::frontend`]), as the supervisor
/// starts it. Built before [`run`] (binding a socket, taking one from
/// systemd: before any thread starts), started once on the supervisor's
/// runtime.
pub trait Frontend: Send {
    /// For logs and errors.
    fn name(&self) -> &'static str;

    /// Start serving on the current (the supervisor's) runtime, before the
    /// arbiter's loop starts. The task it returns stops accepting once
    /// [`Handle::stopping`] resolves, removes what it made (a socket file)
    /// once [`Handle::stopped`] does, and then ends.
    fn start(self: Box<Self>, core: Handle) -> std::io::Result<JoinHandle<()>>;
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

/// Run the daemon with `frontends` until SIGTERM/SIGINT. Returns once every
/// request has been answered, every worker has exited and every front-end
/// has stopped. Call before any thread is started.
pub fn run(
    cfg: Config,
    config_path: Option<PathBuf>,
    overrides: Overrides,
    frontends: Vec<Box<dyn Frontend>>,
) -> Result<(), SupervisorError> {
    let exe = own_exe().map_err(SupervisorError::Exe)?;
    memory::configure();
    // From here on no log line waits for stderr (see crate::log).
    crate::log::start_background().map_err(SupervisorError::Runtime)?;
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(SupervisorError::Runtime)?;
    let result = rt.block_on(serve(Settings { cfg, config_path, overrides, exe }, frontends));
    drop(rt);
    // Write out what is buffered; a stalled log reader gets 2 s, no more.
    if crate::log::stop_background(Duration::from_secs(2)) && crate::log::dropped_lines() > 0 {
        crate::logln!(
            "ttsd: {} log line(s) were dropped in all: stderr was not read fast enough",
            crate::log::dropped_lines()
        );
    }
    result
}

async fn serve(settings: Settings, frontends: Vec<Box<dyn Frontend>>) -> Result<(), SupervisorError> {
    let (events_tx, events_rx) = mpsc::unbounded_channel::<Event>();
    let (lifecycle_tx, lifecycle_rx) = watch::channel(Lifecycle::Serving);
    let (flushed_tx, mut flushed_rx) = mpsc::channel::<()>(1);
    let connections = Arc::new(AtomicUsize::new(0));
    let max_connections = settings.cfg.listen.max_connections;
    let core = Handle::new(events_tx.clone(), lifecycle_rx, connections.clone(), max_connections, flushed_tx);
    let mut tasks = Vec::new();
    for f in frontends {
        let name = f.name();
        tasks.push(f.start(core.clone()).map_err(|source| SupervisorError::Frontend { name, source })?);
    }
    drop(core);

    let links = Links { events: events_tx, lifecycle: lifecycle_tx, connections };
    let result = Arbiter::new(settings, links).run(events_rx).await;
    for t in tasks {
        let _ = t.await;
    }
    // Let the connection writers flush the last replies.
    let _ = tokio::time::timeout(Duration::from_secs(2), flushed_rx.recv()).await;
    crate::logln!("ttsd: stopped");
    result.map_err(SupervisorError::Runtime)
}
