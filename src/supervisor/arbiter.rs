//! The arbiter: the one loop that owns the queue, the workers and every
//! request (after gunicorn's arbiter).
//!
//! Every change of state happens here, in one task, in answer to an event
//! (a session's request, a worker message, a worker exit, a signal, a tick):
//! handle the event, then `maintain`: kill hung or overdue
//! workers, expire queued deadlines, retire and start workers, dispatch.
//! The rules are [`policy`]'s, the reports [`status`]'s, the meaning of a
//! SIGHUP [`reload`]'s; here they are applied. It owns every [`Pending`]:
//! queued ones in the queue, running ones by job id (a worker only names
//! its job).
//!
//! It never blocks, never touches MLX, espeak-ng or a socket (outboxes and
//! worker channels do the writing), and never panics on what a client or a
//! worker sends: a broken invariant is logged as `internal`, and the request
//! involved, if any, is answered `internal`.
use super::event::{ConnId, Event, JobId, Lifecycle, Query, Submission, WorkerId};
use super::memory::Trimmer;
use super::outbox::{Outbound, Outbox};
use super::policy::{self, Candidate, Clocks, Death, Fate, Slot, Watch};
use super::pool::{self, Phase, SpawnSpec, WorkerHandle};
use super::reload;
use super::request::{Outcomes, Pending, TextStream};
use super::status::{self, Health, Snapshot, Voices};
use super::validate;
use crate::config::{Config, Overrides};
use crate::protocol::worker::{FromWorker, Job, ToWorker, VoiceSpec, EXIT_LOAD_FAILED};
use crate::protocol::{ErrorCode, HealthState, Input, Reply, StatusReply};
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::path::PathBuf;
use std::process::ExitStatus;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::{mpsc, watch};

/// How often the arbiter looks at clocks when nothing else happens.
pub const TICK: Duration = Duration::from_millis(20);
/// A gap this long between two supervision passes means the supervisor
/// itself was not running (machine overloaded, SIGSTOP): worker messages may
/// be waiting unread, so no worker is judged until it has been awake this long.
pub const STALL: Duration = Duration::from_millis(200);
/// Requests that never reached a worker and connections the daemon closed
/// are logged as counts, one summary this often (see `request`).
pub const SUMMARY_EVERY: Duration = Duration::from_secs(10);

/// What the arbiter runs: the configuration, where it came from (SIGHUP
/// rereads it) and the binary workers are started from.
#[derive(Debug)]
pub struct Settings {
    pub cfg: Config,
    pub config_path: Option<PathBuf>,
    /// Command-line values that win over the file, at every reload too.
    pub overrides: Overrides,
    pub exe: PathBuf,
}

/// How the arbiter reaches the rest of the supervisor.
#[derive(Debug)]
pub struct Links {
    /// Given to worker tasks; sessions hold their own.
    pub events: mpsc::UnboundedSender<Event>,
    /// Announced to the front-ends' handles.
    pub lifecycle: watch::Sender<Lifecycle>,
    /// Open connections, counted by the handles' admissions.
    pub connections: Arc<AtomicUsize>,
}

/// A request on a worker.
struct Running {
    wid: WorkerId,
    pending: Pending,
}

pub struct Arbiter {
    cfg: Config,
    config_path: Option<PathBuf>,
    overrides: Overrides,
    exe: PathBuf,
    links: Links,
    conns: HashMap<ConnId, Outbox>,
    queue: VecDeque<Pending>,
    running: BTreeMap<JobId, Running>,
    workers: BTreeMap<WorkerId, WorkerHandle>,
    slots: Vec<Slot>,
    next_wid: WorkerId,
    next_job: JobId,
    generation: u64,
    voices: Voices,
    health: Health,
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

impl Arbiter {
    pub fn new(settings: Settings, links: Links) -> Self {
        let Settings { cfg, config_path, overrides, exe } = settings;
        let now = Instant::now();
        let mut a = Self {
            cfg,
            config_path,
            overrides,
            exe,
            links,
            conns: HashMap::new(),
            queue: VecDeque::new(),
            running: BTreeMap::new(),
            workers: BTreeMap::new(),
            slots: Vec::new(),
            next_wid: 1,
            next_job: 1,
            generation: 0,
            voices: Voices::default(),
            health: Health::default(),
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
        self.slots.resize(self.cfg.worker_count(), Slot::new(Instant::now()));
        self.voices.adopt(&self.cfg.voices);
    }

    /// Run until shut down and every worker has exited; then announce
    /// [`Lifecycle::Stopped`].
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
            self.voices.describe()
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
        self.links.lifecycle.send_replace(Lifecycle::Stopped);
        Ok(())
    }

    fn handle(&mut self, ev: Event) {
        match ev {
            Event::Connected { conn, out } => {
                self.conns.insert(conn, out);
            }
            Event::Submit { conn, sub, arrived, .. } => self.submit(conn, sub, arrived),
            Event::Cancel { conn, id, .. } => self.cancel(conn, id),
            Event::Append { conn, id, text, .. } => self.more_text(conn, id, Some(text)),
            Event::Finish { conn, id, .. } => self.more_text(conn, id, None),
            Event::Query { conn, what, .. } => {
                let reply = self.answer(what);
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

    fn answer(&self, what: Query) -> Reply {
        match what {
            Query::Status => Reply::Status(self.status()),
            Query::Health => {
                let (state, reason) = self.health();
                Reply::Health { state, reason }
            }
            Query::Voices => Reply::Voices { default_voice: self.cfg.default_voice.clone(), voices: self.voices.report() },
        }
    }

    fn is_pending(&self, conn: ConnId, id: u64) -> bool {
        let matches = |p: &Pending| p.conn == conn && p.id() == id;
        self.queue.iter().any(matches) || self.running.values().any(|r| matches(&r.pending))
    }

    fn submit(&mut self, conn: ConnId, sub: Submission, arrived: Instant) {
        let Submission { req, opts, streamed_text } = sub;
        let Some(out) = self.conns.get(&conn).cloned() else { return };
        if self.is_pending(conn, req.id) {
            let _ = out.send(Outbound::Frame(Reply::Error {
                id: None,
                code: ErrorCode::DuplicateId,
                message: format!("request id {} is already pending on this connection; the new request was dropped", req.id),
            }));
            return;
        }
        let checked = validate::check(
            &req,
            streamed_text,
            &self.cfg.default_voice,
            &self.voices.known(),
            self.cfg.requests.max_text_chars,
            cfg!(feature = "fault-injection"),
        );
        let timeout = req.timeout_ms.unwrap_or(self.cfg.requests.default_timeout_ms);
        let deadline = policy::deadline(arrived, timeout);
        let voice = checked.clone().unwrap_or_default();
        // Before this request counts against its connection.
        let active = out.active();
        let chars = match &req.input {
            Input::Text(t) => t.chars().count(),
            Input::PhonemeIds(_) => 0,
        };
        let mut p = Pending::new(conn, req, voice, arrived, deadline, out, self.outcomes.clone());
        p.opts = opts;
        if streamed_text {
            let mut ts = TextStream { finished: false, chars, timeout: Duration::from_millis(timeout), speakable: false };
            if let Input::Text(first) = &p.req.input {
                ts.note(first, opts.ssml);
            }
            p.text_stream = Some(ts);
        }
        if let Err((code, message)) = checked {
            return p.fail(code, message, None);
        }
        if self.shutdown.is_some() {
            return p.fail(ErrorCode::ShuttingDown, "the daemon is shutting down", None);
        }
        if self.degraded() {
            return p.fail(ErrorCode::Unavailable, self.health.degraded_reason(), None);
        }
        // A voice that failed to load answers `unavailable` with its reason;
        // the other voices keep serving.
        if let Some(msg) = self.voices.unavailable_reason(&p.voice) {
            return p.fail(ErrorCode::Unavailable, msg, None);
        }
        let per_conn = self.cfg.requests.max_requests_per_connection;
        if active >= per_conn {
            let msg = format!(
                "this connection already has {active} requests queued or running \
                 (max_requests_per_connection = {per_conn}); wait for one to end"
            );
            return p.fail(ErrorCode::Overloaded, msg, None);
        }
        let capacity = self.cfg.requests.queue_capacity;
        if self.queue.len() >= capacity {
            let queued: Vec<ConnId> = self.queue.iter().map(|q| q.conn).collect();
            let Some(evicted) = policy::make_room_for(&queued, conn).and_then(|i| self.queue.remove(i)) else {
                let msg = format!(
                    "the queue is full ({} requests waiting, queue_capacity = {capacity}); retry later",
                    self.queue.len()
                );
                return p.fail(ErrorCode::Overloaded, msg, None);
            };
            let msg = format!(
                "the queue is full (queue_capacity = {capacity}) and this connection had the most requests waiting; \
                 this one made room for another client's"
            );
            evicted.fail(ErrorCode::Overloaded, msg, None);
        }
        p.queued(self.queue.len());
        self.queue.push_back(p);
    }

    fn cancel(&mut self, conn: ConnId, id: u64) {
        let queued = self.queue.iter().position(|p| p.conn == conn && p.id() == id);
        if let Some(p) = queued.and_then(|i| self.queue.remove(i)) {
            return p.fail(ErrorCode::Cancelled, "cancelled by the client", None);
        }
        let running = self.running.iter_mut().find(|(_, r)| r.pending.conn == conn && r.pending.id() == id);
        if let Some((&job, r)) = running {
            if !r.pending.cancel_sent {
                r.pending.cancel_sent = true;
                // A Cancel always encodes; a failure would be logged.
                if let Some(w) = self.workers.get(&r.wid) {
                    let _ = w.send(ToWorker::Cancel { job });
                }
            }
            return;
        }
        if let Some(out) = self.conns.get(&conn) {
            let _ = out.send(Outbound::Frame(Reply::Error {
                id: None,
                code: ErrorCode::UnknownId,
                message: format!("no pending request with id {id} on this connection"),
            }));
        }
    }

    /// The next piece (`Some`) or the end (`None`) of streamed-text request
    /// `id`. Each moves its deadline: `timeout_ms` is the time the client
    /// has for each piece, and then for the rest to be spoken.
    fn more_text(&mut self, conn: ConnId, id: u64, piece: Option<String>) {
        let now = Instant::now();
        let max_chars = self.cfg.requests.max_text_chars;
        let queued = self.queue.iter().position(|p| p.conn == conn && p.id() == id);
        let running =
            self.running.iter().find(|(_, r)| r.pending.conn == conn && r.pending.id() == id).map(|(&j, r)| (j, r.wid));
        let pending = match (queued, running) {
            (Some(i), _) => self.queue.get_mut(i),
            (None, Some((job, _))) => self.running.get_mut(&job).map(|r| &mut r.pending),
            (None, None) => None,
        };
        let refuse = |conns: &HashMap<ConnId, Outbox>, code: ErrorCode, message: String| {
            if let Some(out) = conns.get(&conn) {
                let _ = out.send(Outbound::Frame(Reply::Error { id: None, code, message }));
            }
        };
        let Some(p) = pending else {
            return refuse(
                &self.conns,
                ErrorCode::UnknownId,
                format!("no pending request with id {id} on this connection"),
            );
        };
        let Some(ts) = p.text_stream.as_mut() else {
            return refuse(
                &self.conns,
                ErrorCode::BadRequest,
                format!("request {id} is not a streamed text (open it with OpenText)"),
            );
        };
        if ts.finished || p.ended_because.is_some() {
            return refuse(&self.conns, ErrorCode::BadRequest, format!("request {id} was already finished"));
        }
        let over = piece.as_ref().and_then(|t| {
            let total = ts.chars + t.chars().count();
            (total > max_chars).then(|| {
                format!("the streamed text would have {total} characters, more than max_text_chars ({max_chars}); the request ends here")
            })
        });
        if let Some(why) = over {
            // Ends the request: queued, at once; running, when its worker
            // has stopped (the cancel's answer carries this reason).
            match (queued, running) {
                (Some(i), _) => {
                    if let Some(p) = self.queue.remove(i) {
                        p.fail(ErrorCode::BadRequest, why, None);
                    }
                }
                (None, Some((job, wid))) => {
                    p.ended_because = Some((ErrorCode::BadRequest, why));
                    if !p.cancel_sent {
                        p.cancel_sent = true;
                        if let Some(w) = self.workers.get(&wid) {
                            let _ = w.send(ToWorker::Cancel { job });
                        }
                    }
                }
                (None, None) => {}
            }
            return;
        }
        p.deadline = policy::deadline(now, ts.timeout.as_millis() as u64);
        let remaining_ms = ts.timeout.as_millis().max(1) as u64;
        let msg = match piece {
            Some(text) => {
                ts.chars += text.chars().count();
                ts.note(&text, p.opts.ssml);
                if let Input::Text(all) = &mut p.req.input {
                    all.push_str(&text);
                }
                running.map(|(job, _)| ToWorker::Text { job, text, remaining_ms })
            }
            None => {
                ts.finished = true;
                running.map(|(job, _)| ToWorker::Finish { job, remaining_ms })
            }
        };
        if let (Some(msg), Some((_, wid))) = (msg, running) {
            if let Some(w) = self.workers.get(&wid) {
                let _ = w.send(msg);
            }
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
        for (&job, r) in self.running.iter_mut().filter(|(_, r)| r.pending.conn == conn && !r.pending.cancel_sent) {
            r.pending.cancel_sent = true;
            if let Some(w) = self.workers.get(&r.wid) {
                let _ = w.send(ToWorker::Cancel { job });
            }
        }
    }

    fn on_worker_message(&mut self, wid: WorkerId, msg: FromWorker) {
        let now = Instant::now();
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
                    now.saturating_duration_since(w.started).as_millis()
                );
                for (name, desc) in voices {
                    self.voices.loaded(&name, desc);
                }
                // One bad voice degrades only itself: a voice this worker could not load is `failed` with its reason;
                // requests for it are answered `unavailable` (see `submit`).
                for (name, reason) in failed {
                    let line = format!("ttsd: voice '{name}' is unavailable: {reason}");
                    if self.voices.unavailable(&name, reason) {
                        crate::logln!("{line}");
                    }
                }
                self.health.started();
            }
            FromWorker::LoadFailed { voice, reason } => {
                w.load_failed = Some(format!("voice '{voice}' failed to load: {reason}"));
                self.voices.load_failed(&voice, reason);
            }
            FromWorker::Heartbeat { rss_bytes } => {
                w.rss_bytes = rss_bytes;
                if !w.retiring {
                    retire_why = policy::over_rss(rss_bytes, self.cfg.workers.max_rss_mb);
                }
            }
            FromWorker::Chunk { job, sample_rate, samples } => {
                if w.job == Some(job) {
                    if let Some(r) = self.running.get_mut(&job) {
                        r.pending.audio(sample_rate, samples);
                    }
                }
            }
            FromWorker::Timings { job, words, phonemes, marks } => {
                if w.job == Some(job) {
                    if let Some(r) = self.running.get_mut(&job) {
                        r.pending.timings(words, phonemes, marks);
                    }
                }
            }
            FromWorker::JobDone { job, samples, sample_rate, synth_ms } => {
                if w.job == Some(job) {
                    w.job = None;
                    w.jobs_done += 1;
                    match self.running.remove(&job) {
                        Some(r) => r.pending.finish(w.as_ref(), samples, sample_rate, synth_ms),
                        None => crate::logln!("ttsd: internal: worker {} finished job {job}, which had no request", w.pid),
                    }
                    if w.stop_sent.is_some() {
                        w.stop_sent = Some(now);
                    }
                    if !w.retiring {
                        retire_why = policy::served_enough(w.jobs_done, w.max_jobs);
                    }
                }
            }
            FromWorker::JobFailed { job, code, message } => {
                if w.job == Some(job) {
                    w.job = None;
                    w.jobs_done += 1;
                    match self.running.remove(&job) {
                        Some(r) => r.pending.fail(code, message, Some(w.as_ref())),
                        None => crate::logln!("ttsd: internal: worker {} failed job {job}, which had no request", w.pid),
                    }
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
        if let Some(job) = w.job.take() {
            match self.running.remove(&job) {
                Some(Running { pending, .. }) => self.after_death(&w, &status, &how, pending),
                None => crate::logln!("ttsd: internal: worker {} died running job {job}, which had no request", w.pid),
            }
        }
        if planned || self.shutdown.is_some() {
            return;
        }
        if never_ready || load_failure {
            let reason = w
                .load_failed
                .clone()
                .or_else(|| w.killed.as_ref().map(|(_, why)| why.clone()))
                .unwrap_or_else(|| format!("worker died while loading voices ({how})"));
            self.health.start_failed(reason);
        }
        self.restarts_total += 1;
        if let Some(slot) = self.slots.get_mut(w.slot) {
            let stable = policy::stable(never_ready, now.saturating_duration_since(w.started));
            slot.worker_died(now, stable, &self.cfg.workers);
        }
    }

    /// The request of a worker that died: retried or answered (the retry
    /// rule is [`policy::fate`]).
    fn after_death(&mut self, w: &WorkerHandle, status: &ExitStatus, how: &str, mut pending: Pending) {
        let fate = policy::fate(&Death {
            pid: w.pid,
            how,
            killed: w.killed.as_ref(),
            suspect: policy::death_points_at_job(status),
            audio_sent: pending.audio_sent,
            retried: pending.retried,
            shutting_down: self.shutdown.is_some(),
        });
        match fate {
            Fate::Fail(code, why) => pending.fail(code, why, Some(w.as_ref())),
            Fate::Suspect(why) => {
                crate::logln!("ttsd: {why} (request {})", pending.id());
                pending.fail(ErrorCode::WorkerCrashed, why, Some(w.as_ref()));
            }
            Fate::Retry => {
                crate::logln!("ttsd: worker {} died ({how}) before sending audio; retrying request {}", w.pid, pending.id());
                pending.reset_for_retry();
                self.queue.push_front(pending);
            }
        }
    }

    fn begin_shutdown(&mut self, why: &str) {
        if self.shutdown.is_some() {
            return;
        }
        crate::logln!(
            "ttsd: {why}: shutting down ({} queued answered shutting_down, {} running get {} ms)",
            self.queue.len(),
            self.running.len(),
            self.cfg.workers.shutdown_grace_ms
        );
        self.shutdown = Some(Instant::now());
        self.links.lifecycle.send_replace(Lifecycle::Stopping);
        for p in self.queue.drain(..) {
            p.fail(ErrorCode::ShuttingDown, "the daemon is shutting down", None);
        }
        for w in self.workers.values_mut() {
            w.stop();
        }
    }

    fn reload(&mut self) {
        let r = match reload::reread(&self.cfg, self.config_path.as_deref(), &self.overrides) {
            Ok(r) => r,
            Err(e) => {
                crate::logln!("ttsd: SIGHUP: keeping the current configuration: {e}");
                return;
            }
        };
        if r.changes.listen {
            crate::logln!("ttsd: SIGHUP: socket and connection settings take effect at the next start");
        }
        let changed = r.changes.names();
        self.cfg = r.cfg;
        self.generation += 1;
        self.adopt_layout();
        crate::logln!(
            "ttsd: SIGHUP: configuration reloaded ({}); replacing {} worker(s) one at a time",
            if changed.is_empty() { "unchanged".to_string() } else { format!("changed: {}", changed.join(", ")) },
            self.workers.len()
        );
    }

    fn any_ready(&self) -> bool {
        self.workers.values().any(|w| w.phase == Phase::Ready)
    }

    fn degraded(&self) -> bool {
        self.health.degraded(self.cfg.workers.degraded_after_failures, self.any_ready())
    }

    pub fn health(&self) -> (HealthState, Option<String>) {
        self.health.state(self.shutdown.is_some(), self.any_ready(), self.cfg.workers.degraded_after_failures)
    }

    pub fn status(&self) -> StatusReply {
        let now = Instant::now();
        let workers = self
            .workers
            .values()
            .map(|w| {
                let current = w.job.and_then(|j| self.running.get(&j)).map(|r| r.pending.id());
                status::worker_status(w, now, &self.slots, current)
            })
            .collect();
        status::report(Snapshot {
            now,
            started: self.started,
            health: self.health(),
            last_failure: self.health.last_failure(),
            queue_depth: self.queue.len(),
            queue_capacity: self.cfg.requests.queue_capacity,
            connections: self.links.connections.load(Ordering::Relaxed),
            workers_configured: self.slots.len(),
            workers,
            restarts: self.restarts_total,
            recycles: self.recycles_total,
            totals: self.outcomes.totals(),
            voices: &self.voices,
        })
    }

    /// The supervision pass, after every event and tick.
    fn maintain(&mut self) {
        let now = Instant::now();
        let gap = now.saturating_duration_since(self.last_pass);
        if gap > STALL {
            self.awake_since = now;
            if gap > Duration::from_secs(1) {
                crate::logln!("ttsd: supervisor was not scheduled for {} ms; re-reading workers before judging them", gap.as_millis());
            }
        }
        self.last_pass = now;
        if now.saturating_duration_since(self.last_summary) >= SUMMARY_EVERY {
            self.log_summary(now);
        }
        self.trimmer.maybe_trim(now);
        if now.saturating_duration_since(self.awake_since) >= STALL {
            self.kill_stuck(now);
        }
        self.expire_queued(now);
        if self.shutdown.is_some() {
            return;
        }
        self.roll_and_retire();
        self.spawn_missing(now);
        if self.degraded() && !self.queue.is_empty() {
            let reason = self.health.degraded_reason();
            for p in self.queue.drain(..) {
                p.fail(ErrorCode::Unavailable, reason.clone(), None);
            }
        }
        self.dispatch(now);
    }

    /// Log what was counted instead of logged since the last summary.
    fn log_summary(&mut self, now: Instant) {
        for line in self.outcomes.take_summary(now.saturating_duration_since(self.last_summary)) {
            crate::logln!("{line}");
        }
        self.last_summary = now;
    }

    fn kill_stuck(&mut self, now: Instant) {
        let clocks = Clocks::new(&self.cfg.workers, self.shutdown.map(|t| now.saturating_duration_since(t)));
        for w in self.workers.values_mut() {
            let deadline = w.job.and_then(|j| self.running.get(&j)).map(|r| r.pending.deadline);
            if let Some((code, why)) = policy::stuck(&Watch::of(w, deadline), now, &clocks) {
                w.kill(code, why);
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
            let why = if p.ready() {
                "deadline passed while waiting for a worker"
            } else {
                "deadline passed while waiting for more text (timeout_ms counts from each piece)"
            };
            p.fail(ErrorCode::Timeout, why, None);
        }
    }

    fn candidates(&self) -> Vec<Candidate> {
        self.workers.values().map(Candidate::of).collect()
    }

    /// Recycling, SIGHUP roll-out (one worker at a time) and shrinking.
    fn roll_and_retire(&mut self) {
        let target = self.slots.len();
        if let Some(wid) = policy::next_to_roll(&self.candidates(), self.generation) {
            self.retire(wid, "configuration reloaded");
        }
        let extra: Vec<WorkerId> =
            self.workers.values().filter(|w| w.slot >= target && !w.retiring).map(|w| w.wid).collect();
        for wid in extra {
            self.retire(wid, "fewer workers configured");
        }
        for wid in policy::retired_and_replaced(&self.candidates(), target) {
            if let Some(w) = self.workers.get_mut(&wid) {
                w.stop();
            }
        }
    }

    fn spawn_missing(&mut self, now: Instant) {
        for slot in 0..self.slots.len() {
            let manned =
                self.workers.values().any(|w| w.slot == slot && !w.retiring && w.phase != Phase::Stopping);
            let due = self.slots.get(slot).is_some_and(|s| now >= s.next_spawn);
            if manned || !due {
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
                heartbeat_ms: self.cfg.workers.heartbeat_ms,
            };
            let spec = SpawnSpec {
                exe: &self.exe,
                wid,
                slot,
                generation: self.generation,
                init,
                max_jobs: policy::max_jobs(&self.cfg.workers, wid),
                engine_threads: self.cfg.engine_threads(),
            };
            match pool::spawn(spec, self.links.events.clone()) {
                Ok(w) => {
                    crate::logln!("ttsd: started worker {} (slot {slot})", w.pid);
                    self.workers.insert(wid, w);
                }
                Err(e) => {
                    crate::logln!("ttsd: cannot start a worker: {e}");
                    if let Some(s) = self.slots.get_mut(slot) {
                        s.spawn_failed(now, &self.cfg.workers);
                    }
                    self.health.spawn_failed(format!("cannot start a worker: {e}"));
                }
            }
        }
    }

    fn dispatch(&mut self, now: Instant) {
        // A streamed text with no sentence yet waits where it is; the
        // requests behind it go first.
        while let Some(next) = self.queue.iter().position(Pending::ready) {
            let Some(wid) = policy::pick_worker(&self.candidates()) else { break };
            let Some(mut p) = self.queue.remove(next) else { break };
            if p.deadline <= now {
                p.fail(ErrorCode::Timeout, "deadline passed while waiting for a worker", None);
                continue;
            }
            // This worker and the ones already working share the cores.
            let threads = self.cfg.job_threads(1 + self.workers.values().filter(|x| x.job.is_some()).count());
            let Some(w) = self.workers.get_mut(&wid) else {
                crate::logln!("ttsd: internal: worker {wid} was picked for request {} and is gone", p.id());
                p.fail(ErrorCode::Internal, "the daemon lost the worker it picked for this request", None);
                break;
            };
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
                remaining_ms: p.deadline.saturating_duration_since(now).as_millis().max(1) as u64,
                threads: threads as u32,
                fault: p.req.fault,
                opts: p.opts,
                text_stream: p.text_stream.is_some(),
                finished: p.text_stream.as_ref().is_none_or(|t| t.finished),
            };
            if let Err(e) = w.send(ToWorker::Job(job)) {
                // Logged by send; the worker stays idle for the next one.
                p.fail(ErrorCode::Internal, format!("the request could not be handed to a worker: {e}"), None);
                continue;
            }
            p.dispatched = Some(now);
            w.job = Some(job_id);
            self.running.insert(job_id, Running { wid, pending: p });
        }
    }
}
