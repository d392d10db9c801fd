//! Worker processes as the supervisor sees them: starting one (fork+exec of
//! ttsd's own binary in worker mode, joined by a socketpair), talking to it,
//! killing it, and learning that it exited.
//!
//! Owns the per-worker tasks (reader, writer, waiter) and what the
//! supervisor knows of each worker ([`WorkerHandle`]: its phase, clocks and
//! the id of the job it runs). Before the exec nothing happens but the spawn
//! itself: the worker creates its engine, threads and MLX state after it. It
//! never decides when to start, recycle or kill a worker (policy and the
//! arbiter do), and never holds a request: the arbiter owns those, keyed by
//! the [`JobId`] a worker runs.
use super::event::{Event, JobId, WorkerId};
use super::request::WorkerRef;
use crate::protocol::worker::{FromWorker, ToWorker, MAX_INTERNAL_FRAME};
use crate::protocol::{self, ErrorCode};
use std::os::fd::OwnedFd;
use std::os::unix::net::UnixStream as StdUnixStream;
use std::path::Path;
use std::process::{ExitStatus, Stdio};
use std::time::Instant;
use tokio::io::AsyncWriteExt;
use tokio::sync::{mpsc, oneshot};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Loading voices; no Ready yet.
    Starting,
    Ready,
    /// Sent Stop (or being killed): takes no new jobs.
    Stopping,
}

pub struct WorkerHandle {
    pub wid: WorkerId,
    pub slot: usize,
    pub pid: u32,
    /// Configuration generation it was started with (SIGHUP bumps it).
    pub generation: u64,
    pub phase: Phase,
    /// The job it runs; its request is the arbiter's.
    pub job: Option<JobId>,
    pub started: Instant,
    pub last_heard: Instant,
    pub rss_bytes: u64,
    pub jobs_done: u64,
    /// Recycle after this many jobs.
    pub max_jobs: Option<u64>,
    /// To be replaced: a successor is started for its slot.
    pub retiring: bool,
    pub stop_sent: Option<Instant>,
    /// Why the supervisor killed it: the answer its job gets.
    pub killed: Option<(ErrorCode, String)>,
    /// It reported that a voice failed to load.
    pub load_failed: Option<String>,
    tx: mpsc::UnboundedSender<Vec<u8>>,
    kill: Option<oneshot::Sender<()>>,
}

/// A message for a worker that cannot be encoded (over the frame limit).
#[derive(Debug, thiserror::Error)]
#[error("cannot encode a message for worker {pid}: {source}")]
pub struct SendError {
    pub pid: u32,
    pub source: protocol::FrameError,
}

impl WorkerHandle {
    /// Encode `msg` now and queue it for the worker. A message that cannot
    /// be encoded is logged and returned as an error, so that the caller
    /// can answer the request it was for (a job) instead of losing it.
    pub fn send(&self, msg: ToWorker) -> Result<(), SendError> {
        let bytes = encode_for(self.pid, &msg)?;
        // A dead worker's channel is closed; its exit event follows.
        let _ = self.tx.send(bytes);
        Ok(())
    }

    /// SIGKILL it; its job is answered with `code` when the exit is reaped.
    pub fn kill(&mut self, code: ErrorCode, why: String) {
        if let Some(k) = self.kill.take() {
            crate::logln!("ttsd: killing worker {} (slot {}): {why}", self.pid, self.slot);
            self.killed = Some((code, why));
            let _ = k.send(());
        }
    }

    pub fn stop(&mut self) {
        if self.stop_sent.is_none() {
            // Stop always encodes; a failure would be logged by send.
            let _ = self.send(ToWorker::Stop);
            self.stop_sent = Some(Instant::now());
        }
        self.phase = Phase::Stopping;
    }

    pub fn is_idle(&self) -> bool {
        self.phase == Phase::Ready && self.job.is_none()
    }

    pub fn as_ref(&self) -> WorkerRef {
        WorkerRef { pid: self.pid, rss_bytes: self.rss_bytes }
    }
}

/// What a new worker is: which binary, its place, and what it is told.
#[derive(Debug)]
pub struct SpawnSpec<'a> {
    pub exe: &'a Path,
    pub wid: WorkerId,
    pub slot: usize,
    /// The configuration generation it starts with.
    pub generation: u64,
    /// The first message: voices to load, heartbeat interval.
    pub init: ToWorker,
    /// Recycle after this many jobs.
    pub max_jobs: Option<u64>,
    /// Cores for its engine (`TTSD_THREADS`, unless the operator set it).
    pub engine_threads: usize,
}

/// Start a worker: `exe worker`, its socketpair end as stdin, then Init.
/// Its messages and its exit come to the arbiter as `events`.
pub fn spawn(spec: SpawnSpec<'_>, events: mpsc::UnboundedSender<Event>) -> std::io::Result<WorkerHandle> {
    let SpawnSpec { exe, wid, slot, generation, init, max_jobs, engine_threads } = spec;
    let (ours, theirs) = StdUnixStream::pair()?;
    // Both ends are close-on-exec; Stdio dup2()s theirs onto the child's fd 0,
    // so no other worker inherits it and its death closes the channel.
    let mut cmd = tokio::process::Command::new(exe);
    cmd.arg("worker")
        .stdin(Stdio::from(OwnedFd::from(theirs)))
        .stdout(Stdio::inherit())
        .stderr(Stdio::inherit())
        .kill_on_drop(true);
    // Workers share the cores: each engine gets its share (as MLX streams;
    // see engine::cpu), unless the operator chose. BLAS itself stays
    // single-threaded: a BLAS that spins for more threads than cores stalls.
    if std::env::var_os("TTSD_THREADS").is_none() {
        cmd.env("TTSD_THREADS", engine_threads.to_string());
    }
    for var in ["OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS"] {
        if std::env::var_os(var).is_none() {
            cmd.env(var, "1");
        }
    }
    let mut child = cmd.spawn()?;
    let pid = child.id().unwrap_or(0);
    ours.set_nonblocking(true)?;
    let stream = tokio::net::UnixStream::from_std(ours)?;
    let (mut rd, mut wr) = stream.into_split();

    let (tx, mut rx) = mpsc::unbounded_channel::<Vec<u8>>();
    tokio::spawn(async move {
        while let Some(bytes) = rx.recv().await {
            if wr.write_all(&bytes).await.is_err() {
                break;
            }
        }
    });
    let ev = events.clone();
    tokio::spawn(async move {
        while let Ok(Some(msg)) = protocol::read_frame_async::<FromWorker, _>(&mut rd, MAX_INTERNAL_FRAME).await {
            if ev.send(Event::Worker { wid, msg }).is_err() {
                break;
            }
        }
    });
    let (kill_tx, kill_rx) = oneshot::channel::<()>();
    tokio::spawn(async move {
        let status = tokio::select! {
            s = child.wait() => s,
            _ = kill_rx => {
                let _ = child.start_kill();
                child.wait().await
            }
        };
        let status = status.unwrap_or_else(|_| std::os::unix::process::ExitStatusExt::from_raw(0xff00));
        let _ = events.send(Event::Exited { wid, status });
    });
    // Init names the configured voices only; if it cannot be encoded the
    // worker would wait for it forever: kill it (the exit is then reaped).
    match encode_for(pid, &init) {
        Ok(bytes) => {
            let _ = tx.send(bytes);
        }
        Err(_) => {
            let _ = kill_tx.send(());
            return Err(std::io::Error::other(format!("cannot encode Init for worker {pid}")));
        }
    }
    let now = Instant::now();
    Ok(WorkerHandle {
        wid,
        slot,
        pid,
        generation,
        phase: Phase::Starting,
        job: None,
        started: now,
        last_heard: now,
        rss_bytes: 0,
        jobs_done: 0,
        max_jobs,
        retiring: false,
        stop_sent: None,
        killed: None,
        load_failed: None,
        tx,
        kill: Some(kill_tx),
    })
}

/// `msg` as one frame, or the logged reason it cannot be one.
fn encode_for(pid: u32, msg: &ToWorker) -> Result<Vec<u8>, SendError> {
    protocol::encode(msg).map_err(|source| {
        let e = SendError { pid, source };
        crate::logln!("ttsd: {e}");
        e
    })
}

/// "exit code 3" / "signal 9 (SIGKILL)".
pub fn describe_exit(status: &ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    if let Some(code) = status.code() {
        format!("exit code {code}")
    } else if let Some(sig) = status.signal() {
        let name = nix::sys::signal::Signal::try_from(sig).map(|s| s.as_str()).unwrap_or("?");
        format!("signal {sig} ({name})")
    } else {
        status.to_string()
    }
}
