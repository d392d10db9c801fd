//! The fault schedule: worker SIGKILLs and SIGSTOPs, fault-flag requests
//! and misbehaving clients, each at its time.
//!
//! Owns the fault timeline ([`FaultEvent`]s, what the invariants compare
//! request lifetimes against) and the signals it sends. Workers are picked
//! from the status reply among the ready ones (a worker still loading its
//! voice is not a target: killing those is a load failure, another fault).
use crate::attacks::{self, AttackResult, NonReader};
use crate::load::{self, LoadSpec};
use crate::monitor::StatusConn;
use crate::texts::Rng;
use crate::track::{FlagFault, Tracker};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde::Serialize;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use ttsd::protocol::WorkerState;

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
    let mut rng = Rng::new(ctx.seed ^ 0x5EED_FA17);
    let mut status = StatusConn::new(&ctx.spec.socket);
    let stopped: Arc<Mutex<Vec<u32>>> = Arc::default();
    let next_id = Arc::new(AtomicU64::new(load::id_base(FLAG_CLIENT)));
    let mut threads = Vec::new();
    let mut nonreader: Option<NonReader> = None;
    let t0 = ctx.tracker.t0;
    for ev in schedule {
        while t0.elapsed() < ev.at {
            if ctx.stop.load(Ordering::SeqCst) {
                break;
            }
            std::thread::sleep((ev.at - t0.elapsed().min(ev.at)).min(Duration::from_millis(100)));
        }
        if ctx.stop.load(Ordering::SeqCst) {
            break;
        }
        let t_s = t0.elapsed().as_secs_f64();
        match ev.action {
            Action::Kill | Action::Stop(_) => {
                // A ready worker may be missing for a moment (one was just
                // killed and its successor is loading): try for up to 3 s.
                let paused = stopped.lock().unwrap().clone();
                let tried = Instant::now();
                let ready = loop {
                    let why = match status.status() {
                        Ok(st) => {
                            let ready: Vec<_> = st
                                .workers
                                .into_iter()
                                .filter(|w| {
                                    matches!(w.state, WorkerState::Idle | WorkerState::Busy) && !paused.contains(&w.pid)
                                })
                                .collect();
                            if !ready.is_empty() {
                                break Ok(ready);
                            }
                            "no ready worker".to_string()
                        }
                        Err(e) => format!("status failed: {e}"),
                    };
                    if tried.elapsed() > Duration::from_secs(3) || ctx.stop.load(Ordering::SeqCst) {
                        break Err(why);
                    }
                    std::thread::sleep(Duration::from_millis(50));
                };
                let ready = match ready {
                    Ok(r) => r,
                    Err(why) => {
                        ctx.log.lock().unwrap().skipped.push(format!("t={t_s:.1}s {:?}: {why}", ev.action));
                        continue;
                    }
                };
                let w = &ready[rng.below(ready.len())];
                let pid = Pid::from_raw(w.pid as i32);
                let t_s = t0.elapsed().as_secs_f64();
                match ev.action {
                    Action::Kill => {
                        if kill(pid, Signal::SIGKILL).is_ok() {
                            ctx.log.lock().unwrap().signals.push(FaultEvent {
                                t_s,
                                kind: "sigkill",
                                pid: w.pid,
                                slot: w.slot,
                                request: w.current_request,
                                until_s: None,
                            });
                        }
                    }
                    Action::Stop(d) => {
                        let born = start_time(w.pid);
                        if born.is_some() && kill(pid, Signal::SIGSTOP).is_ok() {
                            ctx.log.lock().unwrap().signals.push(FaultEvent {
                                t_s,
                                kind: "sigstop",
                                pid: w.pid,
                                slot: w.slot,
                                request: w.current_request,
                                until_s: Some(t_s + d.as_secs_f64()),
                            });
                            stopped.lock().unwrap().push(w.pid);
                            let stopped = stopped.clone();
                            let raw = w.pid;
                            threads.push(std::thread::spawn(move || {
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
                    _ => unreachable!(),
                }
            }
            Action::Flag(f) => {
                let id = next_id.fetch_add(1, Ordering::SeqCst);
                ctx.log.lock().unwrap().flag_requests.push((f, id));
                let spec = ctx.spec.clone();
                let tracker = ctx.tracker.clone();
                let stream = rng.chance(0.5);
                threads.push(std::thread::spawn(move || load::one_request(&spec, &tracker, FLAG_CLIENT, id, f, stream)));
            }
            Action::NonReader(n) => {
                if nonreader.is_none() {
                    match NonReader::open(&ctx.spec.socket) {
                        Ok(c) => nonreader = Some(c),
                        Err(e) => {
                            ctx.log.lock().unwrap().attacks.push(AttackResult { t_s, kind: "nonreader", ok: false, detail: e });
                            continue;
                        }
                    }
                }
                let c = nonreader.as_mut().expect("opened above");
                let r = c.submit(n);
                let mut log = ctx.log.lock().unwrap();
                log.nonreader_requests = c.sent;
                let (ok, detail) = match r {
                    Ok(()) => (true, format!("{} requests submitted so far, none read", c.sent)),
                    // A full socket buffer on our side is the daemon applying
                    // back-pressure: fine, that is what we hope for.
                    Err(e) => (true, format!("submit blocked after {} requests: {e}", c.sent)),
                };
                log.attacks.push(AttackResult { t_s, kind: "nonreader", ok, detail });
            }
            Action::Malformed | Action::Oversized | Action::Truncated | Action::Midstream => {
                let path = ctx.spec.socket.clone();
                let log = ctx.log.clone();
                let action = ev.action;
                threads.push(std::thread::spawn(move || {
                    let (kind, (ok, detail)) = match action {
                        Action::Malformed => ("malformed_frame", attacks::malformed(&path)),
                        Action::Oversized => ("oversized_frame", attacks::oversized(&path)),
                        Action::Truncated => ("truncated_frame", attacks::truncated(&path)),
                        _ => ("midstream_disconnect", attacks::midstream_disconnect(&path)),
                    };
                    log.lock().unwrap().attacks.push(AttackResult { t_s, kind, ok, detail });
                }));
            }
        }
    }
    // Wait for the run to end before closing the non-reader: it must stay
    // unread while the load goes on.
    while !ctx.release.load(Ordering::SeqCst) {
        std::thread::sleep(Duration::from_millis(100));
    }
    for t in threads {
        let _ = t.join();
    }
    drop(nonreader);
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
