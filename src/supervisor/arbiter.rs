//! The arbiter: the one loop that owns the queue, the workers and the
//! request bookkeeping (after gunicorn's arbiter).
//!
//! Every change of state happens here, in one task, in answer to an event
//! (a client frame, a worker message, a worker exit, a signal, a tick):
//! handle the event, then [`Arbiter::maintain`]: kill hung or overdue
//! workers, expire queued deadlines, retire and start workers, dispatch.
//! It never blocks, never touches MLX or espeak-ng, and never writes to a
//! socket itself (outboxes and worker channels do).
use super::conn::{CloseReason, Outbound, Outbox, Ticket};
use super::memory::Trimmer;
use super::pool::{self, Phase, Running, WorkerHandle, WorkerId};
use super::request::{ConnId, Outcomes, Pending};
use super::validate::{self, KnownVoice};
use crate::config::{Config, Overrides};
use crate::protocol::worker::{FromWorker, Job, ToWorker, VoiceSpec, EXIT_LOAD_FAILED};
use crate::protocol::{
    ErrorCode, HealthState, Reply, StatusReply, SynthRequest, VoiceDesc, VoiceLoadState, VoiceStatus, WorkerState,
    WorkerStatus,
};
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::path::PathBuf;
use std::process::ExitStatus;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::{mpsc, watch};

/// A worker that stayed up this long resets its slot's restart back-off.
pub const STABLE_AFTER: Duration = Duration::from_secs(10);
/// How often the arbiter looks at clocks when nothing else happens.
pub const TICK: Duration = Duration::from_millis(20);
/// A gap this long between two supervision passes means the supervisor
/// itself was not running (machine overloaded, SIGSTOP): worker messages may
/// be waiting unread, so no worker is judged until it has been awake this long.
pub const STALL: Duration = Duration::from_millis(200);
/// Requests that never reached a worker and connections the daemon closed
/// are logged as counts, one summary this often (see `request`).
pub const SUMMARY_EVERY: Duration = Duration::from_secs(10);

#[derive(Debug)]
pub enum Event {
    /// A connection finished its handshake.
    Connected { conn: ConnId, out: Outbox },
    /// A frame's `ticket` is released when the event is dropped, letting
    /// its connection read the next frame.
    Submit { conn: ConnId, req: SynthRequest, arrived: Instant, ticket: Ticket },
    Cancel { conn: ConnId, id: u64, ticket: Ticket },
    Query { conn: ConnId, what: Query, ticket: Ticket },
    /// `reason`: the daemon closed it (else the client did, or it broke).
    Disconnected { conn: ConnId, reason: Option<CloseReason> },
    Worker { wid: WorkerId, msg: FromWorker },
    Exited { wid: WorkerId, status: ExitStatus },
}

#[derive(Debug, Clone, Copy)]
pub enum Query {
    Status,
    Health,
    Voices,
}

#[derive(Debug, Clone)]
struct Slot {
    restarts: u64,
    /// Current back-off; 0 until the first failure.
    backoff_ms: u64,
    next_spawn: Instant,
}

#[derive(Debug, Clone)]
struct VoiceEntry {
    name: String,
    path: PathBuf,
    info: Option<VoiceDesc>,
    error: Option<String>,
}

pub struct Arbiter {
    cfg: Config,
    config_path: Option<PathBuf>,
    overrides: Overrides,
    exe: PathBuf,
    events_tx: mpsc::UnboundedSender<Event>,
    shutdown_tx: watch::Sender<bool>,
    connections: Arc<AtomicUsize>,
    conns: HashMap<ConnId, Outbox>,
    queue: VecDeque<Pending>,
    workers: BTreeMap<WorkerId, WorkerHandle>,
    slots: Vec<Slot>,
    next_wid: WorkerId,
    next_job: u64,
    generation: u64,
    voices: Vec<VoiceEntry>,
    load_failures: u32,
    last_failure: Option<String>,
    outcomes: Arc<Outcomes>,
    started: Instant,
    shutdown: Option<Instant>,
    restarts_total: u64,
    recycles_total: u64,
    last_pass: Instant,
    awake_since: Instant,
    last_summary: Instant,
    trimmer: Trimmer,
}

fn ms(v: u64) -> Duration {
    Duration::from_millis(v)
}

impl Arbiter {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        cfg: Config,
        config_path: Option<PathBuf>,
        overrides: Overrides,
        exe: PathBuf,
        events_tx: mpsc::UnboundedSender<Event>,
        shutdown_tx: watch::Sender<bool>,
        connections: Arc<AtomicUsize>,
    ) -> Self {
        let now = Instant::now();
        let mut a = Self {
            slots: Vec::new(),
            voices: Vec::new(),
            cfg,
            config_path,
            overrides,
            exe,
            events_tx,
            shutdown_tx,
            connections,
            conns: HashMap::new(),
            queue: VecDeque::new(),
            workers: BTreeMap::new(),
            next_wid: 1,
            next_job: 1,
            generation: 0,
            load_failures: 0,
            last_failure: None,
            outcomes: Arc::new(Outcomes::default()),
            started: now,
            shutdown: None,
            restarts_total: 0,
            recycles_total: 0,
            last_pass: now,
            awake_since: now,
            last_summary: now,
            trimmer: Trimmer::new(now),
        };
        a.adopt_layout();
        a
    }

    /// Size the slots and voice table to the configuration.
    fn adopt_layout(&mut self) {
        let now = Instant::now();
        let n = self.cfg.worker_count();
        self.slots.resize(n, Slot { restarts: 0, backoff_ms: 0, next_spawn: now });
        let old = std::mem::take(&mut self.voices);
        self.voices = self
            .cfg
            .voices
            .iter()
            .map(|v| {
                old.iter().find(|o| o.name == v.name && o.path == v.path).cloned().unwrap_or(VoiceEntry {
                    name: v.name.clone(),
                    path: v.path.clone(),
                    info: None,
                    error: None,
                })
            })
            .collect();
    }

    /// Run until shut down and every worker has exited.
    pub async fn run(mut self, mut events: mpsc::UnboundedReceiver<Event>) -> std::io::Result<()> {
        let mut sigterm = signal(SignalKind::terminate())?;
        let mut sigint = signal(SignalKind::interrupt())?;
        let mut sighup = signal(SignalKind::hangup())?;
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        crate::logln!(
            "ttsd: supervisor {} starting {} worker(s), voices: {}",
            std::process::id(),
            self.slots.len(),
            self.voices.iter().map(|v| format!("{}={}", v.name, v.path.display())).collect::<Vec<_>>().join(", ")
        );
        loop {
            tokio::select! {
                Some(ev) = events.recv() => self.handle(ev),
                _ = tick.tick() => {}
                _ = sigterm.recv() => self.begin_shutdown("SIGTERM"),
                _ = sigint.recv() => self.begin_shutdown("SIGINT"),
                _ = sighup.recv() => self.reload(),
            }
            self.maintain();
            if self.shutdown.is_some() && self.workers.is_empty() {
                break;
            }
        }
        for out in self.conns.values() {
            let _ = out.send(Outbound::Close);
        }
        self.log_summary(Instant::now());
        crate::logln!("ttsd: all workers stopped");
        Ok(())
    }

    fn handle(&mut self, ev: Event) {
        match ev {
            Event::Connected { conn, out } => {
                self.conns.insert(conn, out);
            }
            Event::Submit { conn, req, arrived, .. } => self.submit(conn, req, arrived),
            Event::Cancel { conn, id, .. } => self.cancel(conn, id),
            Event::Query { conn, what, .. } => {
                let reply = match what {
                    Query::Status => Reply::Status(self.status()),
                    Query::Health => {
                        let (state, reason) = self.health();
                        Reply::Health { state, reason }
                    }
                    Query::Voices => {
                        Reply::Voices { default_voice: self.cfg.default_voice.clone(), voices: self.voice_status() }
                    }
                };
                if let Some(out) = self.conns.get(&conn) {
                    let _ = out.send(Outbound::Frame(reply));
                }
            }
            Event::Disconnected { conn, reason } => {
                if let Some(r) = reason {
                    self.outcomes.count_closed(r.as_str());
                }
                self.trimmer.disconnected();
                self.disconnected(conn);
            }
            Event::Worker { wid, msg } => self.on_worker_message(wid, msg),
            Event::Exited { wid, status } => self.exited(wid, status),
        }
    }

    fn is_pending(&self, conn: ConnId, id: u64) -> bool {
        self.queue.iter().any(|p| p.conn == conn && p.id() == id)
            || self.workers.values().filter_map(|w| w.job.as_ref()).any(|r| r.pending.conn == conn && r.pending.id() == id)
    }

    fn submit(&mut self, conn: ConnId, req: SynthRequest, arrived: Instant) {
        let Some(out) = self.conns.get(&conn).cloned() else { return };
        if self.is_pending(conn, req.id) {
            let _ = out.send(Outbound::Frame(Reply::Error {
                id: None,
                code: ErrorCode::DuplicateId,
                message: format!("request id {} is already pending on this connection; the new request was dropped", req.id),
            }));
            return;
        }
        let known: Vec<KnownVoice> =
            self.voices.iter().map(|v| KnownVoice { name: &v.name, info: v.info.as_ref() }).collect();
        let checked = validate::check(
            &req,
            &self.cfg.default_voice,
            &known,
            self.cfg.max_text_chars,
            cfg!(feature = "fault-injection"),
        );
        let timeout = req.timeout_ms.unwrap_or(self.cfg.default_timeout_ms);
        let deadline = arrived + ms(timeout);
        let voice = checked.clone().unwrap_or_default();
        // Before this request counts against its connection.
        let active = out.active();
        let mut p = Pending::new(conn, req, voice, arrived, deadline, out, self.outcomes.clone());
        if let Err((code, message)) = checked {
            return p.fail(code, message, None);
        }
        if self.shutdown.is_some() {
            return p.fail(ErrorCode::ShuttingDown, "the daemon is shutting down", None);
        }
        if self.degraded() {
            return p.fail(ErrorCode::Unavailable, self.degraded_reason(), None);
        }
        // --- issue 15 (engine/worker): a voice that failed to load answers
        // `unavailable` with its reason; the other voices keep serving.
        if let Some(v) = self.voices.iter().find(|v| v.name == p.voice && v.info.is_none()) {
            if let Some(reason) = &v.error {
                let msg = format!("voice '{}' is unavailable: {reason}", v.name);
                return p.fail(ErrorCode::Unavailable, msg, None);
            }
        }
        // --- end issue 15
        let per_conn = self.cfg.max_requests_per_connection;
        if active >= per_conn {
            let msg = format!(
                "this connection already has {active} requests queued or running \
                 (max_requests_per_connection = {per_conn}); wait for one to end"
            );
            return p.fail(ErrorCode::Overloaded, msg, None);
        }
        if self.queue.len() >= self.cfg.queue_capacity {
            let queued: Vec<ConnId> = self.queue.iter().map(|q| q.conn).collect();
            let Some(i) = make_room_for(&queued, conn) else {
                let msg = format!(
                    "the queue is full ({} requests waiting, queue_capacity = {}); retry later",
                    self.queue.len(),
                    self.cfg.queue_capacity
                );
                return p.fail(ErrorCode::Overloaded, msg, None);
            };
            let evicted = self.queue.remove(i).expect("index from make_room_for");
            let msg = format!(
                "the queue is full (queue_capacity = {}) and this connection had the most requests waiting; \
                 this one made room for another client's",
                self.cfg.queue_capacity
            );
            evicted.fail(ErrorCode::Overloaded, msg, None);
        }
        p.queued(self.queue.len());
        self.queue.push_back(p);
    }

    fn cancel(&mut self, conn: ConnId, id: u64) {
        if let Some(i) = self.queue.iter().position(|p| p.conn == conn && p.id() == id) {
            let p = self.queue.remove(i).expect("index from position");
            return p.fail(ErrorCode::Cancelled, "cancelled by the client", None);
        }
        for w in self.workers.values_mut() {
            if let Some(r) = w.job.as_mut().filter(|r| r.pending.conn == conn && r.pending.id() == id) {
                if !r.pending.cancel_sent {
                    r.pending.cancel_sent = true;
                    let job = r.job;
                    // A Cancel always encodes; a failure would be logged.
                    let _ = w.send(ToWorker::Cancel { job });
                }
                return;
            }
        }
        if let Some(out) = self.conns.get(&conn) {
            let _ = out.send(Outbound::Frame(Reply::Error {
                id: None,
                code: ErrorCode::UnknownId,
                message: format!("no pending request with id {id} on this connection"),
            }));
        }
    }

    fn disconnected(&mut self, conn: ConnId) {
        self.conns.remove(&conn);
        let (gone, keep): (VecDeque<Pending>, VecDeque<Pending>) =
            std::mem::take(&mut self.queue).into_iter().partition(|p| p.conn == conn);
        self.queue = keep;
        for p in gone {
            p.fail(ErrorCode::Cancelled, "client disconnected", None);
        }
        for w in self.workers.values_mut() {
            if let Some(r) = w.job.as_mut().filter(|r| r.pending.conn == conn && !r.pending.cancel_sent) {
                r.pending.cancel_sent = true;
                let job = r.job;
                let _ = w.send(ToWorker::Cancel { job });
            }
        }
    }

    fn on_worker_message(&mut self, wid: WorkerId, msg: FromWorker) {
        let now = Instant::now();
        let max_rss = self.cfg.max_rss_mb << 20;
        let Some(w) = self.workers.get_mut(&wid) else { return };
        w.last_heard = now;
        let mut retire_why = None;
        match msg {
            FromWorker::Ready { voices, failed } => {
                if w.phase == Phase::Starting {
                    w.phase = Phase::Ready;
                }
                crate::logln!(
                    "ttsd: worker {} (slot {}) ready in {} ms",
                    w.pid,
                    w.slot,
                    now.duration_since(w.started).as_millis()
                );
                for (name, desc) in voices {
                    if let Some(v) = self.voices.iter_mut().find(|v| v.name == name) {
                        v.info = Some(desc);
                        v.error = None;
                    }
                }
                // --- issue 15 (engine/worker): one bad voice degrades only itself.
                // A voice this worker could not load is `failed` with its reason;
                // requests for it are answered `unavailable` (see `submit`).
                for (name, reason) in failed {
                    if let Some(v) = self.voices.iter_mut().find(|v| v.name == name) {
                        crate::logln!("ttsd: voice '{name}' is unavailable: {reason}");
                        v.info = None;
                        v.error = Some(reason);
                    }
                }
                // --- end issue 15
                self.load_failures = 0;
                self.last_failure = None;
            }
            FromWorker::LoadFailed { voice, reason } => {
                w.load_failed = Some(format!("voice '{voice}' failed to load: {reason}"));
                if let Some(v) = self.voices.iter_mut().find(|v| v.name == voice) {
                    v.error = Some(reason);
                }
            }
            FromWorker::Heartbeat { rss_bytes } => {
                w.rss_bytes = rss_bytes;
                if max_rss > 0 && rss_bytes > max_rss && !w.retiring {
                    retire_why = Some(format!("RSS {} MiB is above max_rss_mb", rss_bytes >> 20));
                }
            }
            FromWorker::Chunk { job, sample_rate, samples } => {
                if let Some(r) = w.job.as_mut().filter(|r| r.job == job) {
                    r.pending.audio(sample_rate, samples);
                }
            }
            FromWorker::JobDone { job, samples, sample_rate, synth_ms } => {
                if w.job.as_ref().is_some_and(|r| r.job == job) {
                    let r = w.job.take().expect("checked");
                    w.jobs_done += 1;
                    r.pending.finish(w.as_ref(), samples, sample_rate, synth_ms);
                    if w.stop_sent.is_some() {
                        w.stop_sent = Some(now);
                    }
                    if w.max_jobs.is_some_and(|m| w.jobs_done >= m) && !w.retiring {
                        retire_why = Some(format!("served {} requests (max_requests)", w.jobs_done));
                    }
                }
            }
            FromWorker::JobFailed { job, code, message } => {
                if w.job.as_ref().is_some_and(|r| r.job == job) {
                    let r = w.job.take().expect("checked");
                    w.jobs_done += 1;
                    r.pending.fail(code, message, Some(w.as_ref()));
                    if w.stop_sent.is_some() {
                        w.stop_sent = Some(now);
                    }
                }
            }
        }
        if let Some(why) = retire_why {
            self.retire(wid, &why);
        }
    }

    fn retire(&mut self, wid: WorkerId, why: &str) {
        if let Some(w) = self.workers.get_mut(&wid) {
            if !w.retiring && w.phase != Phase::Stopping {
                crate::logln!("ttsd: recycling worker {} (slot {}): {why}", w.pid, w.slot);
                w.retiring = true;
                self.recycles_total += 1;
            }
        }
    }

    fn exited(&mut self, wid: WorkerId, status: ExitStatus) {
        let Some(mut w) = self.workers.remove(&wid) else { return };
        let now = Instant::now();
        let how = pool::describe_exit(&status);
        let planned = w.stop_sent.is_some() && w.killed.is_none();
        let never_ready = w.phase == Phase::Starting || w.load_failed.is_some();
        let load_failure = w.load_failed.is_some() || (status.code() == Some(EXIT_LOAD_FAILED) && !planned);
        crate::logln!(
            "ttsd: worker {} (slot {}) exited: {how}{}",
            w.pid,
            w.slot,
            if planned { " (as asked)" } else { "" }
        );
        if let Some(Running { pending, .. }) = w.job.take() {
            // --- issue 15 (engine/worker): the retry rule. A death that points
            // at the request (a crash signal the worker raised itself, a panic:
            // pool::death_points_at_job) is not retried, so that one bad input
            // costs one worker, not two; kills from outside still are.
            let suspect = pool::death_points_at_job(&status);
            // --- end issue 15
            if let Some((code, why)) = w.killed.clone() {
                pending.fail(code, why, Some(w.as_ref()));
            } else if suspect && !pending.audio_sent && !pending.retried {
                let why = format!(
                    "worker {} died ({how}) while running this request; no retry: a crash inside the worker \
                     is most likely caused by the request itself",
                    w.pid
                );
                crate::logln!("ttsd: {why} (request {})", pending.id());
                pending.fail(ErrorCode::WorkerCrashed, why, Some(w.as_ref()));
            } else if !pending.audio_sent && !pending.retried && self.shutdown.is_none() {
                let mut pending = pending;
                crate::logln!("ttsd: worker {} died ({how}) before sending audio; retrying request {}", w.pid, pending.id());
                pending.reset_for_retry();
                self.queue.push_front(pending);
            } else {
                pending.fail(ErrorCode::WorkerCrashed, format!("worker {} died ({how})", w.pid), Some(w.as_ref()));
            }
        }
        if planned || self.shutdown.is_some() {
            return;
        }
        if never_ready || load_failure {
            self.load_failures += 1;
            let reason = w
                .load_failed
                .clone()
                .or_else(|| w.killed.as_ref().map(|(_, why)| why.clone()))
                .unwrap_or_else(|| format!("worker died while loading voices ({how})"));
            self.last_failure = Some(format!("{reason} ({} failed worker starts in a row)", self.load_failures));
        }
        self.restarts_total += 1;
        if let Some(slot) = self.slots.get_mut(w.slot) {
            slot.restarts += 1;
            let stable = !never_ready && now.duration_since(w.started) >= STABLE_AFTER;
            slot.backoff_ms =
                next_backoff(slot.backoff_ms, stable, self.cfg.restart_backoff_min_ms, self.cfg.restart_backoff_max_ms);
            slot.next_spawn = now + ms(slot.backoff_ms);
        }
    }

    fn begin_shutdown(&mut self, why: &str) {
        if self.shutdown.is_some() {
            return;
        }
        crate::logln!(
            "ttsd: {why}: shutting down ({} queued answered shutting_down, {} running get {} ms)",
            self.queue.len(),
            self.workers.values().filter(|w| w.job.is_some()).count(),
            self.cfg.shutdown_grace_ms
        );
        self.shutdown = Some(Instant::now());
        let _ = self.shutdown_tx.send(true);
        for p in self.queue.drain(..) {
            p.fail(ErrorCode::ShuttingDown, "the daemon is shutting down", None);
        }
        for w in self.workers.values_mut() {
            w.stop();
        }
    }

    fn reload(&mut self) {
        let loaded = match &self.config_path {
            Some(path) => Config::load(path),
            None => Ok(self.cfg.clone()),
        };
        let mut cfg = match loaded.and_then(|mut c| c.apply(&self.overrides).map(|()| c)) {
            Ok(c) => c,
            Err(e) => {
                crate::logln!("ttsd: SIGHUP: keeping the current configuration: {e}");
                return;
            }
        };
        if cfg.socket_path() != self.cfg.socket_path()
            || cfg.socket_group != self.cfg.socket_group
            || cfg.max_connections != self.cfg.max_connections
            || cfg.max_frame_bytes != self.cfg.max_frame_bytes
            || cfg.idle_timeout_ms != self.cfg.idle_timeout_ms
            || cfg.allowed_uids != self.cfg.allowed_uids
            || cfg.allowed_gids != self.cfg.allowed_gids
        {
            crate::logln!("ttsd: SIGHUP: socket and connection settings take effect at the next start");
            cfg.socket = self.cfg.socket.clone();
            cfg.socket_group = self.cfg.socket_group.clone();
            cfg.max_connections = self.cfg.max_connections;
            cfg.max_frame_bytes = self.cfg.max_frame_bytes;
            cfg.idle_timeout_ms = self.cfg.idle_timeout_ms;
            cfg.allowed_uids = self.cfg.allowed_uids.clone();
            cfg.allowed_gids = self.cfg.allowed_gids.clone();
        }
        self.cfg = cfg;
        self.generation += 1;
        self.adopt_layout();
        crate::logln!(
            "ttsd: SIGHUP: configuration reloaded; replacing {} worker(s) one at a time",
            self.workers.len()
        );
    }

    fn degraded(&self) -> bool {
        self.load_failures >= self.cfg.degraded_after_failures && !self.workers.values().any(|w| w.phase == Phase::Ready)
    }

    fn degraded_reason(&self) -> String {
        self.last_failure.clone().unwrap_or_else(|| "no worker could start".into())
    }

    pub fn health(&self) -> (HealthState, Option<String>) {
        if self.shutdown.is_some() {
            (HealthState::Stopping, None)
        } else if self.workers.values().any(|w| w.phase == Phase::Ready) {
            (HealthState::Ready, None)
        } else if self.degraded() {
            (HealthState::Degraded, Some(self.degraded_reason()))
        } else {
            (HealthState::Starting, self.last_failure.clone())
        }
    }

    fn voice_status(&self) -> Vec<VoiceStatus> {
        self.voices
            .iter()
            .map(|v| VoiceStatus {
                name: v.name.clone(),
                path: v.path.display().to_string(),
                state: if v.info.is_some() {
                    VoiceLoadState::Loaded
                } else if v.error.is_some() {
                    VoiceLoadState::Failed
                } else {
                    VoiceLoadState::Pending
                },
                info: v.info.clone(),
                error: v.error.clone(),
            })
            .collect()
    }

    pub fn status(&self) -> StatusReply {
        let now = Instant::now();
        let (state, reason) = self.health();
        StatusReply {
            server_version: env!("CARGO_PKG_VERSION").into(),
            pid: std::process::id(),
            uptime_ms: now.duration_since(self.started).as_millis() as u64,
            state,
            degraded_reason: if state == HealthState::Degraded { reason } else { self.last_failure.clone() },
            queue_depth: self.queue.len() as u32,
            queue_capacity: self.cfg.queue_capacity as u32,
            connections: self.connections.load(Ordering::Relaxed) as u32,
            workers_configured: self.slots.len() as u32,
            workers: self
                .workers
                .values()
                .map(|w| WorkerStatus {
                    slot: w.slot as u32,
                    pid: w.pid,
                    state: match (w.phase, w.job.is_some()) {
                        (Phase::Starting, _) => WorkerState::Starting,
                        (Phase::Stopping, _) => WorkerState::Stopping,
                        (Phase::Ready, true) => WorkerState::Busy,
                        (Phase::Ready, false) => WorkerState::Idle,
                    },
                    retiring: w.retiring,
                    jobs_done: w.jobs_done,
                    restarts: self.slots.get(w.slot).map_or(0, |s| s.restarts),
                    rss_bytes: w.rss_bytes,
                    heartbeat_age_ms: now.duration_since(w.last_heard).as_millis() as u64,
                    uptime_ms: now.duration_since(w.started).as_millis() as u64,
                    current_request: w.job.as_ref().map(|r| r.pending.id()),
                })
                .collect(),
            worker_restarts: self.restarts_total,
            worker_recycles: self.recycles_total,
            totals: self.outcomes.totals(),
            voices: self.voice_status(),
        }
    }

    /// The supervision pass, after every event and tick.
    fn maintain(&mut self) {
        let now = Instant::now();
        let gap = now.duration_since(self.last_pass);
        if gap > STALL {
            self.awake_since = now;
            if gap > Duration::from_secs(1) {
                crate::logln!("ttsd: supervisor was not scheduled for {} ms; re-reading workers before judging them", gap.as_millis());
            }
        }
        self.last_pass = now;
        if now.duration_since(self.last_summary) >= SUMMARY_EVERY {
            self.log_summary(now);
        }
        self.trimmer.maybe_trim(now);
        if now.duration_since(self.awake_since) >= STALL {
            self.kill_stuck(now);
        }
        self.expire_queued(now);
        if self.shutdown.is_some() {
            return;
        }
        self.roll_and_retire();
        self.spawn_missing(now);
        if self.degraded() && !self.queue.is_empty() {
            let reason = self.degraded_reason();
            for p in self.queue.drain(..) {
                p.fail(ErrorCode::Unavailable, reason.clone(), None);
            }
        }
        self.dispatch(now);
    }

    /// Log what was counted instead of logged since the last summary.
    fn log_summary(&mut self, now: Instant) {
        for line in self.outcomes.take_summary(now.duration_since(self.last_summary)) {
            crate::logln!("{line}");
        }
        self.last_summary = now;
    }

    fn kill_stuck(&mut self, now: Instant) {
        let hang = ms(self.cfg.hang_timeout_ms);
        let load_limit = (hang * 6).max(Duration::from_secs(60));
        let grace = ms(self.cfg.kill_grace_ms);
        let shutdown_over = self.shutdown.is_some_and(|t| now.duration_since(t) > ms(self.cfg.shutdown_grace_ms));
        for w in self.workers.values_mut() {
            let silent = now.duration_since(w.last_heard);
            if w.phase == Phase::Starting && silent > load_limit {
                w.kill(ErrorCode::Internal, format!("did not finish loading voices in {} s", load_limit.as_secs()));
            } else if w.phase != Phase::Starting && silent > hang {
                let why = format!("worker {} hung: no heartbeat for {} ms", w.pid, silent.as_millis());
                w.kill(ErrorCode::WorkerCrashed, why);
            } else if w.job.as_ref().is_some_and(|r| now > r.pending.deadline + grace) {
                let why = format!("deadline passed and worker {} did not stop within kill_grace_ms; killed", w.pid);
                w.kill(ErrorCode::Timeout, why);
            } else if shutdown_over && w.job.is_some() {
                w.kill(ErrorCode::ShuttingDown, "the daemon shut down before the request finished".into());
            } else if w.job.is_none() && w.stop_sent.is_some_and(|t| now.duration_since(t) > grace) {
                w.kill(ErrorCode::Internal, "did not exit after Stop".into());
            }
        }
    }

    fn expire_queued(&mut self, now: Instant) {
        if !self.queue.iter().any(|p| p.deadline <= now) {
            return;
        }
        let (late, keep): (VecDeque<Pending>, VecDeque<Pending>) =
            std::mem::take(&mut self.queue).into_iter().partition(|p| p.deadline <= now);
        self.queue = keep;
        for p in late {
            p.fail(ErrorCode::Timeout, "deadline passed while waiting for a worker", None);
        }
    }

    /// Recycling, SIGHUP roll-out (one worker at a time) and shrinking.
    fn roll_and_retire(&mut self) {
        let target = self.slots.len();
        let rolling = self.workers.values().any(|w| w.retiring);
        if !rolling {
            let old = self
                .workers
                .values()
                .filter(|w| w.generation < self.generation && w.phase != Phase::Stopping)
                .min_by_key(|w| (w.job.is_some(), w.wid))
                .map(|w| w.wid);
            if let Some(wid) = old {
                self.retire(wid, "configuration reloaded");
            }
        }
        let extra: Vec<WorkerId> =
            self.workers.values().filter(|w| w.slot >= target && !w.retiring).map(|w| w.wid).collect();
        for wid in extra {
            self.retire(wid, "fewer workers configured");
        }
        // A retiring worker stops once idle and its successor is ready.
        let ready_slots: Vec<usize> =
            self.workers.values().filter(|w| !w.retiring && w.phase == Phase::Ready).map(|w| w.slot).collect();
        for w in self.workers.values_mut() {
            let replaced = w.slot >= target || ready_slots.contains(&w.slot);
            if w.retiring && w.phase != Phase::Stopping && w.job.is_none() && replaced {
                w.stop();
            }
        }
    }

    fn spawn_missing(&mut self, now: Instant) {
        for slot in 0..self.slots.len() {
            let manned =
                self.workers.values().any(|w| w.slot == slot && !w.retiring && w.phase != Phase::Stopping);
            if manned || now < self.slots[slot].next_spawn {
                continue;
            }
            let wid = self.next_wid;
            self.next_wid += 1;
            let init = ToWorker::Init {
                voices: self
                    .cfg
                    .voices
                    .iter()
                    .map(|v| VoiceSpec { name: v.name.clone(), path: v.path.display().to_string() })
                    .collect(),
                heartbeat_ms: self.cfg.heartbeat_ms,
            };
            let max_jobs = (self.cfg.max_requests > 0).then(|| self.cfg.max_requests + jitter(wid, self.cfg.max_requests_jitter));
            match pool::spawn(&self.exe, wid, slot, self.generation, init, max_jobs, self.cfg.engine_threads(), self.events_tx.clone()) {
                Ok(w) => {
                    crate::logln!("ttsd: started worker {} (slot {slot})", w.pid);
                    self.workers.insert(wid, w);
                }
                Err(e) => {
                    crate::logln!("ttsd: cannot start a worker: {e}");
                    let s = &mut self.slots[slot];
                    s.backoff_ms =
                        next_backoff(s.backoff_ms, false, self.cfg.restart_backoff_min_ms, self.cfg.restart_backoff_max_ms);
                    s.next_spawn = now + ms(s.backoff_ms);
                    self.load_failures += 1;
                    self.last_failure = Some(format!("cannot start a worker: {e}"));
                }
            }
        }
    }

    fn dispatch(&mut self, now: Instant) {
        while !self.queue.is_empty() {
            let ready_slots: Vec<usize> =
                self.workers.values().filter(|w| !w.retiring && w.phase == Phase::Ready).map(|w| w.slot).collect();
            // Prefer workers that are not retiring; a retiring one still
            // helps while its successor loads.
            let Some(wid) = self
                .workers
                .values()
                .filter(|w| w.is_idle() && !(w.retiring && ready_slots.contains(&w.slot)))
                .min_by_key(|w| (w.retiring, w.jobs_done))
                .map(|w| w.wid)
            else {
                break;
            };
            let mut p = self.queue.pop_front().expect("not empty");
            if p.deadline <= now {
                p.fail(ErrorCode::Timeout, "deadline passed while waiting for a worker", None);
                continue;
            }
            let job_id = self.next_job;
            self.next_job += 1;
            let job = Job {
                job: job_id,
                voice: p.voice.clone(),
                input: p.req.input.clone(),
                speaker: p.req.speaker.unwrap_or(0),
                length_scale: p.req.length_scale,
                noise_scale: p.req.noise_scale,
                noise_w: p.req.noise_w,
                seed: p.req.seed,
                stream: p.req.stream,
                remaining_ms: p.deadline.duration_since(now).as_millis().max(1) as u64,
                fault: p.req.fault,
            };
            let w = self.workers.get_mut(&wid).expect("picked above");
            if let Err(e) = w.send(ToWorker::Job(job)) {
                // Logged by send; the worker stays idle for the next one.
                p.fail(ErrorCode::Internal, format!("the request could not be handed to a worker: {e}"), None);
                continue;
            }
            p.dispatched = Some(now);
            w.job = Some(Running { job: job_id, pending: p });
        }
    }
}

/// When the queue is full: the index of the request to evict so that a
/// request of `newcomer` can be queued, given the connection of every
/// queued request in order. The newest request of the connection with the
/// most waiting goes, if that connection has at least two more than
/// `newcomer` (so the two do not take turns evicting each other); else
/// none, and the newcomer is refused. With fewer connections than
/// `queue_capacity`, a client with few requests waiting always gets in.
fn make_room_for(queued: &[ConnId], newcomer: ConnId) -> Option<usize> {
    // Per connection: requests waiting, index of its newest.
    let mut counts: HashMap<ConnId, (usize, usize)> = HashMap::new();
    for (i, &c) in queued.iter().enumerate() {
        let e = counts.entry(c).or_insert((0, i));
        *e = (e.0 + 1, i);
    }
    let mine = counts.get(&newcomer).map_or(0, |e| e.0);
    // The most waiting; among equals, the one whose newest request is newest.
    let &(most, newest) = counts.values().max()?;
    (most >= mine + 2).then_some(newest)
}

/// The delay before restarting a slot whose worker just died: the minimum
/// after a first failure or after a worker that had been up a while
/// (`stable`), else double the last one, capped.
fn next_backoff(current_ms: u64, stable: bool, min_ms: u64, max_ms: u64) -> u64 {
    if stable || current_ms == 0 {
        min_ms
    } else {
        current_ms.saturating_mul(2).clamp(min_ms, max_ms)
    }
}

/// A pseudo-random 0..=max from the clock and the worker id.
fn jitter(wid: WorkerId, max: u64) -> u64 {
    if max == 0 {
        return 0;
    }
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.subsec_nanos() as u64);
    let x = (nanos ^ wid.wrapping_mul(0x9E37_79B9_7F4A_7C15)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    (x >> 17) % (max + 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_the_cap_and_resets_when_stable() {
        let mut b = 0;
        let mut seen = Vec::new();
        for _ in 0..6 {
            b = next_backoff(b, false, 100, 1000);
            seen.push(b);
        }
        assert_eq!(seen, vec![100, 200, 400, 800, 1000, 1000]);
        assert_eq!(next_backoff(1000, true, 100, 1000), 100);
    }

    #[test]
    fn a_full_queue_makes_room_for_a_client_with_fewer_waiting() {
        // Connection 1 holds most of the queue: a newcomer takes the place
        // of its newest request.
        assert_eq!(make_room_for(&[1, 1, 2, 1, 3], 4), Some(3));
        assert_eq!(make_room_for(&[1, 1, 2, 1, 3], 2), Some(3));
        // Equal shares: nobody is evicted, the newcomer is refused.
        assert_eq!(make_room_for(&[1, 2, 3], 4), None);
        assert_eq!(make_room_for(&[1, 1, 2], 2), None, "1 more is not enough to take turns on");
        // The hog itself is refused rather than evicting its own.
        assert_eq!(make_room_for(&[1, 1, 1, 2], 1), None);
        // Among equal hogs, the newest request goes.
        assert_eq!(make_room_for(&[1, 2, 1, 2], 3), Some(3));
        assert_eq!(make_room_for(&[], 1), None);
    }

    #[test]
    fn jitter_stays_in_range() {
        assert_eq!(jitter(1, 0), 0);
        for wid in 0..200 {
            assert!(jitter(wid, 5) <= 5);
        }
        let spread: std::collections::BTreeSet<u64> = (0..200).map(|w| jitter(w, 5)).collect();
        assert!(spread.len() > 1, "jitter never varies");
    }
}
