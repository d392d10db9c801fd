//! The fault schedule: worker SIGKILLs and SIGSTOPs, fault-flag requests
//! and misbehaving clients, each at its time.
//!
//! Owns the fault timeline ([`FaultEvent`]s, what the invariants compare
//! request lifetimes against) and the signals it sends. Workers are picked
//! from the status reply among the ready ones (a worker still loading its
//! voice is not a target: killing those is a load failure, another fault).
//! Never sends SIGCONT to a pid that no longer names the process it
//! stopped (checked by its start time), and never judges what it caused.
use crate::attacks::{self, AttackResult, NonReader};
use crate::load::{self, LoadSpec};
use crate::monitor::StatusConn;
use crate::texts::Rng;
use crate::track::{FlagFault, Tracker};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde::Serialize;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};
use ttsd::protocol::{WorkerState, WorkerStatus};

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Action {
    Kill,
    Stop(Duration),
    Flag(FlagFault),
    Malformed,
    Oversized,
    Truncated,
    Midstream,
    /// Open a client that never reads and submit this many requests on it
    /// (later ones add to the same client).
    NonReader(u32),
}

#[derive(Debug, Clone)]
pub struct Scheduled {
    pub at: Duration,
    pub action: Action,
}

/// A worker signal as it happened.
#[derive(Debug, Clone, Serialize)]
pub struct FaultEvent {
    pub t_s: f64,
    /// "sigkill" or "sigstop".
    pub kind: &'static str,
    pub pid: u32,
    pub slot: u32,
    /// The request it was running, per the status reply just before.
    pub request: Option<u64>,
    /// For sigstop: when SIGCONT was due.
    pub until_s: Option<f64>,
}

#[derive(Default)]
pub struct FaultLog {
    pub signals: Vec<FaultEvent>,
    pub skipped: Vec<String>,
    pub attacks: Vec<AttackResult>,
    pub flag_requests: Vec<(FlagFault, u64)>,
    pub nonreader_requests: u32,
}

/// Client index of the fault-flag requests (for their ids).
pub const FLAG_CLIENT: usize = 999;

/// The start time of a process (field 22 of /proc/PID/stat), to make sure
/// a pid still names the process we stopped before continuing it.
fn start_time(pid: u32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &s[s.rfind(')')? + 1..];
    rest.split_whitespace().nth(19)?.parse().ok()
}

pub struct Ctx {
    pub spec: LoadSpec,
    pub tracker: Tracker,
    /// Stop scheduling (the load is over).
    pub stop: Arc<AtomicBool>,
    /// Finish up: close the non-reader, wait for the fault threads.
    pub release: Arc<AtomicBool>,
    pub log: Arc<Mutex<FaultLog>>,
    pub seed: u64,
}

/// Run `schedule` (sorted by time) until it ends or `stop` is set; then,
/// once `release` is set, finish: wait for every fault it started (stopped
/// workers continued, fault requests answered or given up), close the
/// non-reader.
pub fn run(schedule: Vec<Scheduled>, ctx: Ctx) {
    let mut s = Scheduler::new(ctx);
    for ev in schedule {
        if !s.wait_until(ev.at) {
            break;
        }
        s.fire(ev.action);
    }
    s.finish();
}

/// The fault thread's state: its status connection, the workers it has
/// stopped, the threads it started, the non-reading client.
struct Scheduler {
    ctx: Ctx,
    rng: Rng,
    status: StatusConn,
    /// Pids SIGSTOPped and not yet continued: not a target again meanwhile.
    stopped: Arc<Mutex<Vec<u32>>>,
    next_id: u64,
    threads: Vec<JoinHandle<()>>,
    nonreader: Option<NonReader>,
}

impl Scheduler {
    fn new(ctx: Ctx) -> Self {
        Self {
            rng: Rng::new(ctx.seed ^ 0x5EED_FA17),
            status: StatusConn::new(&ctx.spec.socket),
            stopped: Arc::default(),
            next_id: load::id_base(FLAG_CLIENT),
            threads: Vec::new(),
            nonreader: None,
            ctx,
        }
    }

    fn stopping(&self) -> bool {
        self.ctx.stop.load(Ordering::SeqCst)
    }

    /// Sleep until `at` after the start; false if the load ended first.
    fn wait_until(&self, at: Duration) -> bool {
        let t0 = self.ctx.tracker.t0;
        while t0.elapsed() < at && !self.stopping() {
            std::thread::sleep((at - t0.elapsed().min(at)).min(Duration::from_millis(100)));
        }
        !self.stopping()
    }

    fn fire(&mut self, action: Action) {
        let t_s = self.ctx.tracker.t0.elapsed().as_secs_f64();
        match action {
            Action::Kill | Action::Stop(_) => self.signal(action, t_s),
            Action::Flag(f) => self.flag(f),
            Action::NonReader(n) => self.nonreader(n, t_s),
            Action::Malformed | Action::Oversized | Action::Truncated | Action::Midstream => self.attack(action, t_s),
        }
    }

    /// The ready workers not stopped by us. One may be missing for a moment
    /// (one was just killed and its successor is loading): try for up to 3 s.
    fn ready_workers(&mut self) -> Result<Vec<WorkerStatus>, String> {
        let paused = self.stopped.lock().unwrap().clone();
        let tried = Instant::now();
        loop {
            let why = match self.status.status() {
                Ok(st) => {
                    let ready: Vec<_> = st
                        .workers
                        .into_iter()
                        .filter(|w| matches!(w.state, WorkerState::Idle | WorkerState::Busy) && !paused.contains(&w.pid))
                        .collect();
                    if !ready.is_empty() {
                        return Ok(ready);
                    }
                    "no ready worker".to_string()
                }
                Err(e) => format!("status failed: {e}"),
            };
            if tried.elapsed() > Duration::from_secs(3) || self.stopping() {
                return Err(why);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// SIGKILL or SIGSTOP a random ready worker (skipped, and logged as
    /// such, when none is found).
    fn signal(&mut self, action: Action, t_s: f64) {
        let ready = match self.ready_workers() {
            Ok(r) => r,
            Err(why) => {
                self.ctx.log.lock().unwrap().skipped.push(format!("t={t_s:.1}s {action:?}: {why}"));
                return;
            }
        };
        let w = &ready[self.rng.below(ready.len())];
        let t_s = self.ctx.tracker.t0.elapsed().as_secs_f64();
        let event = |kind, until_s| FaultEvent { t_s, kind, pid: w.pid, slot: w.slot, request: w.current_request, until_s };
        let pid = Pid::from_raw(w.pid as i32);
        match action {
            Action::Kill => {
                if kill(pid, Signal::SIGKILL).is_ok() {
                    self.ctx.log.lock().unwrap().signals.push(event("sigkill", None));
                }
            }
            Action::Stop(d) => {
                let born = start_time(w.pid);
                if born.is_some() && kill(pid, Signal::SIGSTOP).is_ok() {
                    self.ctx.log.lock().unwrap().signals.push(event("sigstop", Some(t_s + d.as_secs_f64())));
                    self.stopped.lock().unwrap().push(w.pid);
                    let (stopped, raw) = (self.stopped.clone(), w.pid);
                    self.threads.push(std::thread::spawn(move || {
                        std::thread::sleep(d);
                        // The daemon may have killed it (hang_timeout) and
                        // the pid been reused: continue only the same process.
                        if start_time(raw) == born {
                            let _ = kill(pid, Signal::SIGCONT);
                        }
                        stopped.lock().unwrap().retain(|p| *p != raw);
                    }));
                }
            }
            _ => unreachable!("signal() is given Kill or Stop"),
        }
    }

    /// One request with a fault flag, on a connection of its own.
    fn flag(&mut self, f: FlagFault) {
        let id = self.next_id;
        self.next_id += 1;
        self.ctx.log.lock().unwrap().flag_requests.push((f, id));
        let (spec, tracker) = (self.ctx.spec.clone(), self.ctx.tracker.clone());
        let stream = self.rng.chance(0.5);
        self.threads.push(std::thread::spawn(move || load::one_request(&spec, &tracker, FLAG_CLIENT, id, f, stream)));
    }

    /// `n` more requests from the client that never reads (opened on first use).
    fn nonreader(&mut self, n: u32, t_s: f64) {
        if self.nonreader.is_none() {
            match NonReader::open(&self.ctx.spec.socket) {
                Ok(c) => self.nonreader = Some(c),
                Err(e) => {
                    self.ctx.log.lock().unwrap().attacks.push(AttackResult { t_s, kind: "nonreader", ok: false, detail: e });
                    return;
                }
            }
        }
        let c = self.nonreader.as_mut().expect("opened above");
        let r = c.submit(n);
        let mut log = self.ctx.log.lock().unwrap();
        log.nonreader_requests = c.sent;
        let (ok, detail) = match r {
            Ok(()) => (true, format!("{} requests submitted so far, none read", c.sent)),
            // A full socket buffer on our side is the daemon applying
            // back-pressure: fine, that is what we hope for.
            Err(e) => (true, format!("submit blocked after {} requests: {e}", c.sent)),
        };
        log.attacks.push(AttackResult { t_s, kind: "nonreader", ok, detail });
    }

    /// A misbehaving client, on a thread of its own.
    fn attack(&mut self, action: Action, t_s: f64) {
        let (path, log) = (self.ctx.spec.socket.clone(), self.ctx.log.clone());
        self.threads.push(std::thread::spawn(move || {
            let (kind, (ok, detail)) = match action {
                Action::Malformed => ("malformed_frame", attacks::malformed(&path)),
                Action::Oversized => ("oversized_frame", attacks::oversized(&path)),
                Action::Truncated => ("truncated_frame", attacks::truncated(&path)),
                _ => ("midstream_disconnect", attacks::midstream_disconnect(&path)),
            };
            log.lock().unwrap().attacks.push(AttackResult { t_s, kind, ok, detail });
        }));
    }

    /// Wait for the run to end before closing the non-reader (it must stay
    /// unread while the load goes on), then for every thread started.
    fn finish(self) {
        while !self.ctx.release.load(Ordering::SeqCst) {
            std::thread::sleep(Duration::from_millis(100));
        }
        for t in self.threads {
            let _ = t.join();
        }
        drop(self.nonreader);
    }
}

/// Periodic actions every `every` from `first` until `until`.
pub fn periodic(out: &mut Vec<Scheduled>, first: f64, every: f64, until: f64, action: Action) {
    if every <= 0.0 {
        return;
    }
    let mut t = first;
    while t < until {
        out.push(Scheduled { at: Duration::from_secs_f64(t), action });
        t += every;
    }
}
