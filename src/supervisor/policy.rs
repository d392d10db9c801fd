//! Supervision policy: when to restart, recycle, kill or retry, and whom a
//! full queue or a free worker goes to. Decisions as functions of what the
//! arbiter knows (clocks passed in), so each rule is tested without a
//! process or a clock.
//!
//! Owns the rules: a slot's restart back-off and when a worker counts as
//! stable ([`Slot`]), the recycle jitter, hang and overdue detection
//! ([`stuck`]), recycling for `max_requests` and `max_rss_mb`, what a
//! running request gets when its worker dies ([`fate`]), which worker takes
//! the next job, which one a reload replaces next, and whom a full queue
//! evicts. It never acts: it sends nothing, kills nothing and answers no
//! request; the arbiter does what it says.
use super::event::{ConnId, WorkerId};
use super::pool::{Phase, WorkerHandle};
use crate::config::WorkerConfig;
use crate::protocol::ErrorCode;
use std::collections::HashMap;
use std::process::ExitStatus;
use std::time::{Duration, Instant};

/// A worker that stayed up this long resets its slot's restart back-off.
pub const STABLE_AFTER: Duration = Duration::from_secs(10);
/// Deadlines further away than this are this far away: a client's
/// `timeout_ms` can be any u64, an `Instant` cannot.
pub const LONGEST_DEADLINE: Duration = Duration::from_secs(365 * 24 * 3600);

fn ms(v: u64) -> Duration {
    Duration::from_millis(v)
}

/// A request's deadline: `timeout_ms` after it arrived.
pub fn deadline(arrived: Instant, timeout_ms: u64) -> Instant {
    let d = ms(timeout_ms).min(LONGEST_DEADLINE);
    arrived.checked_add(d).unwrap_or(arrived)
}

/// One worker place: how often its worker was restarted and when the next
/// may start.
#[derive(Debug, Clone)]
pub struct Slot {
    pub restarts: u64,
    /// Current back-off; 0 until the first failure.
    pub backoff_ms: u64,
    pub next_spawn: Instant,
}

impl Slot {
    pub fn new(now: Instant) -> Self {
        Self { restarts: 0, backoff_ms: 0, next_spawn: now }
    }

    /// Its worker died unplanned; `stable`: it had been up a while.
    pub fn worker_died(&mut self, now: Instant, stable: bool, cfg: &WorkerConfig) {
        self.restarts += 1;
        self.back_off(now, stable, cfg);
    }

    /// A worker could not even be started.
    pub fn spawn_failed(&mut self, now: Instant, cfg: &WorkerConfig) {
        self.back_off(now, false, cfg);
    }

    fn back_off(&mut self, now: Instant, stable: bool, cfg: &WorkerConfig) {
        self.backoff_ms = next_backoff(self.backoff_ms, stable, cfg.restart_backoff_min_ms, cfg.restart_backoff_max_ms);
        self.next_spawn = now.checked_add(ms(self.backoff_ms)).unwrap_or(now);
    }
}

/// The delay before restarting a slot whose worker just died: the minimum
/// after a first failure or after a worker that had been up a while
/// (`stable`), else double the last one, capped.
pub fn next_backoff(current_ms: u64, stable: bool, min_ms: u64, max_ms: u64) -> u64 {
    if stable || current_ms == 0 {
        min_ms
    } else {
        current_ms.saturating_mul(2).clamp(min_ms, max_ms)
    }
}

/// Whether a dead worker had been up long enough to reset its slot's
/// back-off: it got ready and lived [`STABLE_AFTER`].
pub fn stable(never_ready: bool, uptime: Duration) -> bool {
    !never_ready && uptime >= STABLE_AFTER
}

/// The jobs after which worker `wid` is recycled: `max_requests` plus
/// 0..=`max_requests_jitter`, so that workers do not all recycle at once.
pub fn max_jobs(cfg: &WorkerConfig, wid: WorkerId) -> Option<u64> {
    (cfg.max_requests > 0).then(|| cfg.max_requests.saturating_add(jitter(wid, cfg.max_requests_jitter)))
}

/// A pseudo-random 0..=max from the clock and the worker id.
pub fn jitter(wid: WorkerId, max: u64) -> u64 {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.subsec_nanos() as u64);
    jitter_from(nanos, wid, max)
}

/// [`jitter`] from a given seed.
pub fn jitter_from(seed: u64, wid: WorkerId, max: u64) -> u64 {
    if max == 0 {
        return 0;
    }
    let x = (seed ^ wid.wrapping_mul(0x9E37_79B9_7F4A_7C15)).wrapping_mul(0xBF58_476D_1CE4_E5B9) >> 17;
    match max.checked_add(1) {
        Some(n) => x % n,
        None => x,
    }
}

/// Why a worker should be replaced after a heartbeat: its RSS is above
/// `max_rss_mb` (0: never).
pub fn over_rss(rss_bytes: u64, max_rss_mb: u64) -> Option<String> {
    let max = max_rss_mb.saturating_mul(1 << 20);
    (max > 0 && rss_bytes > max).then(|| format!("RSS {} MiB is above max_rss_mb", rss_bytes >> 20))
}

/// Why a worker should be replaced after a job: it served its `max_jobs`.
pub fn served_enough(jobs_done: u64, max_jobs: Option<u64>) -> Option<String> {
    max_jobs.is_some_and(|m| jobs_done >= m).then(|| format!("served {jobs_done} requests (max_requests)"))
}

/// What [`stuck`] looks at in a worker.
#[derive(Debug, Clone, Copy)]
pub struct Watch {
    pub pid: u32,
    pub phase: Phase,
    pub last_heard: Instant,
    pub stop_sent: Option<Instant>,
    /// Whether it runs a job, and the job's request deadline.
    pub job: Option<Instant>,
}

impl Watch {
    /// `w` as [`stuck`] sees it; `deadline`: its job's request's.
    pub fn of(w: &WorkerHandle, deadline: Option<Instant>) -> Self {
        Self { pid: w.pid, phase: w.phase, last_heard: w.last_heard, stop_sent: w.stop_sent, job: deadline }
    }
}

/// The clocks [`stuck`] judges by.
#[derive(Debug, Clone, Copy)]
pub struct Clocks {
    /// `hang_timeout_ms`: longest silence of a loaded worker.
    pub hang: Duration,
    /// Longest a worker may take to load its voices.
    pub load: Duration,
    /// `kill_grace_ms`: past a deadline, or after Stop.
    pub grace: Duration,
    /// The shutdown grace is over: running jobs are cut short.
    pub shutdown_over: bool,
}

impl Clocks {
    /// The clocks of `cfg`; `shutdown_for`: how long the daemon has been
    /// stopping.
    pub fn new(cfg: &WorkerConfig, shutdown_for: Option<Duration>) -> Self {
        let hang = ms(cfg.hang_timeout_ms);
        Self {
            hang,
            load: hang.saturating_mul(6).max(Duration::from_secs(60)),
            grace: ms(cfg.kill_grace_ms),
            shutdown_over: shutdown_for.is_some_and(|d| d > ms(cfg.shutdown_grace_ms)),
        }
    }
}

/// Whether a worker must be killed now, and what its job then gets: one
/// that never finished loading, went silent (hung), overran its request's
/// deadline by the grace, outlived the shutdown grace, or ignored Stop.
pub fn stuck(w: &Watch, now: Instant, c: &Clocks) -> Option<(ErrorCode, String)> {
    let silent = now.saturating_duration_since(w.last_heard);
    if w.phase == Phase::Starting && silent > c.load {
        Some((ErrorCode::Internal, format!("did not finish loading voices in {} s", c.load.as_secs())))
    } else if w.phase != Phase::Starting && silent > c.hang {
        Some((ErrorCode::WorkerCrashed, format!("worker {} hung: no heartbeat for {} ms", w.pid, silent.as_millis())))
    } else if w.job.is_some_and(|d| d.checked_add(c.grace).is_some_and(|t| now > t)) {
        let why = format!("deadline passed and worker {} did not stop within kill_grace_ms; killed", w.pid);
        Some((ErrorCode::Timeout, why))
    } else if c.shutdown_over && w.job.is_some() {
        Some((ErrorCode::ShuttingDown, "the daemon shut down before the request finished".into()))
    } else if w.job.is_none() && w.stop_sent.is_some_and(|t| now.saturating_duration_since(t) > c.grace) {
        Some((ErrorCode::Internal, "did not exit after Stop".into()))
    } else {
        None
    }
}

/// Whether a worker's death points at the job it was running, so that
/// running the job again would most likely kill another worker: a signal
/// the worker raised on itself (a memory fault, an abort from a failed
/// allocation or assertion, an illegal instruction, a CPU-time limit) or a
/// Rust panic (exit code 101). A kill from outside (SIGKILL, SIGTERM: an
/// operator, the kernel's OOM killer choosing among all processes) or any
/// other exit says nothing about the job.
pub fn death_points_at_job(status: &ExitStatus) -> bool {
    use nix::sys::signal::Signal::*;
    use std::os::unix::process::ExitStatusExt;
    if let Some(sig) = status.signal() {
        return matches!(
            nix::sys::signal::Signal::try_from(sig),
            Ok(SIGSEGV | SIGBUS | SIGABRT | SIGILL | SIGFPE | SIGSYS | SIGTRAP | SIGXCPU)
        );
    }
    status.code() == Some(101)
}

/// What is known of a worker that died while running a request.
#[derive(Debug, Clone, Copy)]
pub struct Death<'a> {
    pub pid: u32,
    /// "exit code 3", "signal 9 (SIGKILL)".
    pub how: &'a str,
    /// The supervisor killed it, and what its job gets.
    pub killed: Option<&'a (ErrorCode, String)>,
    /// [`death_points_at_job`].
    pub suspect: bool,
    pub audio_sent: bool,
    pub retried: bool,
    pub shutting_down: bool,
}

/// What the request of a dead worker gets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fate {
    /// Run it again, once, on another worker (nothing reached the client).
    Retry,
    /// Answer it with this error.
    Fail(ErrorCode, String),
    /// Answer it `worker_crashed` without a retry: the crash most likely
    /// came from the request itself (worth a log line).
    Suspect(String),
}

/// The retry rule: a request whose worker the supervisor killed gets the
/// kill's answer; one whose worker crashed by its own doing is not retried,
/// so that one bad input costs one worker, not two; else a request that
/// sent no audio yet and was not retried already runs again, unless the
/// daemon is stopping.
pub fn fate(d: &Death<'_>) -> Fate {
    let first_try = !d.audio_sent && !d.retried;
    if let Some((code, why)) = d.killed {
        Fate::Fail(*code, why.clone())
    } else if d.suspect && first_try {
        Fate::Suspect(format!(
            "worker {} died ({}) while running this request; no retry: a crash inside the worker \
             is most likely caused by the request itself",
            d.pid, d.how
        ))
    } else if first_try && !d.shutting_down {
        Fate::Retry
    } else {
        Fate::Fail(ErrorCode::WorkerCrashed, format!("worker {} died ({})", d.pid, d.how))
    }
}

/// A worker as dispatch and roll-out see it.
#[derive(Debug, Clone, Copy)]
pub struct Candidate {
    pub wid: WorkerId,
    pub slot: usize,
    pub phase: Phase,
    pub generation: u64,
    pub retiring: bool,
    pub busy: bool,
    pub jobs_done: u64,
}

impl Candidate {
    pub fn of(w: &WorkerHandle) -> Self {
        Self {
            wid: w.wid,
            slot: w.slot,
            phase: w.phase,
            generation: w.generation,
            retiring: w.retiring,
            busy: w.job.is_some(),
            jobs_done: w.jobs_done,
        }
    }

    fn idle(&self) -> bool {
        self.phase == Phase::Ready && !self.busy
    }
}

/// Slots whose worker is ready and not being replaced.
fn ready_slots(ws: &[Candidate]) -> Vec<usize> {
    ws.iter().filter(|w| !w.retiring && w.phase == Phase::Ready).map(|w| w.slot).collect()
}

/// The worker for the next job: an idle one, preferring those not retiring
/// (a retiring one still helps while its successor loads, not after), then
/// the one that did fewest jobs.
pub fn pick_worker(ws: &[Candidate]) -> Option<WorkerId> {
    let ready = ready_slots(ws);
    ws.iter()
        .filter(|w| w.idle() && !(w.retiring && ready.contains(&w.slot)))
        .min_by_key(|w| (w.retiring, w.jobs_done))
        .map(|w| w.wid)
}

/// After a reload to `generation`: the next worker of an older one to
/// replace, idle ones first, one at a time (none while one is retiring).
pub fn next_to_roll(ws: &[Candidate], generation: u64) -> Option<WorkerId> {
    if ws.iter().any(|w| w.retiring) {
        return None;
    }
    ws.iter()
        .filter(|w| w.generation < generation && w.phase != Phase::Stopping)
        .min_by_key(|w| (w.busy, w.wid))
        .map(|w| w.wid)
}

/// Retiring workers to stop now: idle, and either their slot is gone
/// (fewer `workers`) or its successor is ready.
pub fn retired_and_replaced(ws: &[Candidate], slots: usize) -> Vec<WorkerId> {
    let ready = ready_slots(ws);
    ws.iter()
        .filter(|w| w.retiring && w.phase != Phase::Stopping && !w.busy)
        .filter(|w| w.slot >= slots || ready.contains(&w.slot))
        .map(|w| w.wid)
        .collect()
}

/// When the queue is full: the index of the request to evict so that a
/// request of `newcomer` can be queued, given the connection of every
/// queued request in order. The newest request of the connection with the
/// most waiting goes, if that connection has at least two more than
/// `newcomer` (so the two do not take turns evicting each other); else
/// none, and the newcomer is refused. With fewer connections than
/// `queue_capacity`, a client with few requests waiting always gets in.
pub fn make_room_for(queued: &[ConnId], newcomer: ConnId) -> Option<usize> {
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::process::ExitStatusExt;

    fn cfg() -> WorkerConfig {
        crate::config::Config::default().workers
    }

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
    fn a_slot_counts_restarts_and_waits_its_back_off() {
        let t = Instant::now();
        let c = WorkerConfig { restart_backoff_min_ms: 100, restart_backoff_max_ms: 300, ..cfg() };
        let mut s = Slot::new(t);
        s.worker_died(t, false, &c);
        s.worker_died(t, false, &c);
        assert_eq!((s.restarts, s.backoff_ms, s.next_spawn), (2, 200, t + ms(200)));
        s.spawn_failed(t, &c);
        assert_eq!((s.restarts, s.backoff_ms), (2, 300), "a failed spawn backs off without counting a restart");
        s.worker_died(t, stable(false, STABLE_AFTER), &c);
        assert_eq!(s.backoff_ms, 100, "a worker that lived long enough resets it");
        assert!(!stable(true, STABLE_AFTER * 10), "one that never got ready never does");
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
        let spread: std::collections::BTreeSet<u64> = (0..200).map(|w| jitter_from(12345, w, 5)).collect();
        assert!(spread.len() > 1, "jitter never varies");
        let _ = jitter_from(u64::MAX, u64::MAX, u64::MAX);
        let c = WorkerConfig { max_requests: u64::MAX, max_requests_jitter: u64::MAX, ..cfg() };
        assert_eq!(max_jobs(&c, 3), Some(u64::MAX), "saturates, never wraps to 0");
        assert_eq!(max_jobs(&WorkerConfig { max_requests: 0, ..cfg() }, 3), None);
    }

    #[test]
    fn recycling_follows_rss_and_job_counts() {
        assert_eq!(over_rss(5 << 20, 0), None, "0: never");
        assert_eq!(over_rss(5 << 20, 5), None);
        assert_eq!(over_rss((5 << 20) + 1, 5).as_deref(), Some("RSS 5 MiB is above max_rss_mb"));
        assert_eq!(over_rss(u64::MAX, u64::MAX), None, "no overflow");
        assert_eq!(served_enough(9, Some(10)), None);
        assert_eq!(served_enough(10, Some(10)).as_deref(), Some("served 10 requests (max_requests)"));
        assert_eq!(served_enough(10, None), None);
    }

    #[test]
    fn deadlines_never_overflow() {
        let t = Instant::now();
        assert_eq!(deadline(t, 1500), t + ms(1500));
        assert_eq!(deadline(t, u64::MAX), t + LONGEST_DEADLINE);
    }

    #[test]
    fn stuck_workers_are_found_by_each_clock() {
        let t = Instant::now();
        let c = Clocks { hang: ms(1000), load: ms(60_000), grace: ms(200), shutdown_over: false };
        let w = Watch { pid: 7, phase: Phase::Ready, last_heard: t, stop_sent: None, job: None };
        let code = |w: Watch, now: Instant, c: &Clocks| stuck(&w, now, c).map(|(code, _)| code);
        assert_eq!(code(w, t + ms(999), &c), None);
        assert_eq!(code(w, t + ms(1001), &c), Some(ErrorCode::WorkerCrashed), "hung");
        let loading = Watch { phase: Phase::Starting, ..w };
        assert_eq!(code(loading, t + ms(5000), &c), None, "loading is allowed its own, longer clock");
        assert_eq!(code(loading, t + ms(60_001), &c), Some(ErrorCode::Internal));
        let busy = Watch { job: Some(t + ms(500)), ..w };
        assert_eq!(code(busy, t + ms(700), &c), None, "within the grace");
        assert_eq!(code(busy, t + ms(701), &c), Some(ErrorCode::Timeout));
        let over = Clocks { shutdown_over: true, ..c };
        assert_eq!(code(Watch { job: Some(t + ms(9000)), ..w }, t, &over), Some(ErrorCode::ShuttingDown));
        assert_eq!(code(w, t, &over), None, "an idle worker is not cut short");
        let stopping = Watch { phase: Phase::Stopping, stop_sent: Some(t), ..w };
        assert_eq!(code(stopping, t + ms(201), &c), Some(ErrorCode::Internal), "ignored Stop");
        let cfgd = Clocks::new(&WorkerConfig { hang_timeout_ms: 20_000, ..cfg() }, Some(ms(1)));
        assert_eq!((cfgd.load, cfgd.shutdown_over), (ms(120_000), false));
    }

    #[test]
    fn the_retry_rule() {
        let killed = (ErrorCode::Timeout, "overdue".to_string());
        let d = Death {
            pid: 9,
            how: "signal 9 (SIGKILL)",
            killed: None,
            suspect: false,
            audio_sent: false,
            retried: false,
            shutting_down: false,
        };
        assert_eq!(fate(&d), Fate::Retry, "a kill from outside is retried");
        assert_eq!(fate(&Death { killed: Some(&killed), ..d }), Fate::Fail(ErrorCode::Timeout, "overdue".into()));
        assert!(matches!(fate(&Death { suspect: true, ..d }), Fate::Suspect(m) if m.contains("no retry")));
        for no_retry in [Death { audio_sent: true, ..d }, Death { retried: true, ..d }, Death { shutting_down: true, ..d }] {
            assert_eq!(fate(&no_retry), Fate::Fail(ErrorCode::WorkerCrashed, "worker 9 died (signal 9 (SIGKILL))".into()));
        }
        assert!(matches!(fate(&Death { suspect: true, retried: true, ..d }), Fate::Fail(ErrorCode::WorkerCrashed, _)));
    }

    #[test]
    fn crash_signals_and_panics_point_at_the_job_kills_do_not() {
        for sig in [libc::SIGSEGV, libc::SIGBUS, libc::SIGABRT, libc::SIGILL, libc::SIGFPE] {
            assert!(death_points_at_job(&ExitStatus::from_raw(sig)), "signal {sig}");
        }
        assert!(death_points_at_job(&ExitStatus::from_raw(101 << 8)), "a panic");
        for sig in [libc::SIGKILL, libc::SIGTERM, libc::SIGINT] {
            assert!(!death_points_at_job(&ExitStatus::from_raw(sig)), "signal {sig}");
        }
        assert!(!death_points_at_job(&ExitStatus::from_raw(4 << 8)), "exit code 4");
    }

    fn cand(wid: WorkerId, slot: usize, phase: Phase, retiring: bool, busy: bool, jobs_done: u64) -> Candidate {
        Candidate { wid, slot, phase, generation: 0, retiring, busy, jobs_done }
    }

    #[test]
    fn dispatch_prefers_idle_workers_not_being_replaced() {
        use Phase::*;
        assert_eq!(pick_worker(&[cand(1, 0, Ready, false, false, 5), cand(2, 1, Ready, false, false, 2)]), Some(2));
        assert_eq!(pick_worker(&[cand(1, 0, Ready, false, true, 0), cand(2, 1, Starting, false, false, 0)]), None);
        // A retiring worker helps while its successor loads...
        assert_eq!(pick_worker(&[cand(1, 0, Ready, true, false, 0), cand(2, 0, Starting, false, false, 0)]), Some(1));
        // ...and not once the successor is ready.
        assert_eq!(pick_worker(&[cand(1, 0, Ready, true, false, 0), cand(2, 0, Ready, false, true, 0)]), None);
    }

    #[test]
    fn a_reload_replaces_one_worker_at_a_time_idle_first() {
        use Phase::*;
        let ws = [cand(1, 0, Ready, false, true, 0), cand(2, 1, Ready, false, false, 0)];
        assert_eq!(next_to_roll(&ws, 1), Some(2));
        assert_eq!(next_to_roll(&ws, 0), None, "all current");
        let rolling = [cand(1, 0, Ready, true, false, 0), cand(2, 1, Ready, false, false, 0)];
        assert_eq!(next_to_roll(&rolling, 1), None);
        // Worker 1 retires; its successor 3 is ready: 1 stops. Slot 5 is gone.
        let ws = [cand(1, 0, Ready, true, false, 0), cand(3, 0, Ready, false, false, 0), cand(4, 5, Ready, true, false, 0)];
        assert_eq!(retired_and_replaced(&ws, 2), vec![1, 4]);
        let busy = [cand(1, 0, Ready, true, true, 0), cand(3, 0, Ready, false, false, 0)];
        assert!(retired_and_replaced(&busy, 2).is_empty(), "finishes its request first");
    }
}
