//! The `hostile` scenario's attackers and probes: clients that try to make
//! the supervisor hold memory, write log or lock everyone else out, while
//! the load client (the valid one) must see every request end `done`.
//!
//! The load window is cut into phases, so that each attack's effect (and
//! the memory given back after it) shows on its own:
//! - amplification: [`AMPLIFIERS`] connections pipeline Synthesize requests
//!   whose voice name is nearly `max_frame_bytes`, and never read;
//! - flood: [`FLOODERS`] connections pipeline small requests, never read;
//! - idle: `max_connections` + [`IDLE_EXTRA`] connections say Hello and then
//!   nothing, and reconnect when the daemon closes them;
//! - quiet: the attackers are gone; memory must come back.
//!
//! Throughout, a prober asks for health every [`PROBE_EVERY`] on its own
//! connection and times the answer. Owns the attack threads and what they
//! saw ([`HostileLog`]); the verdict is [`invariants`]. Never signals the
//! daemon.
use crate::conn::{handshake, MAX_REPLY};
use crate::monitor::rss_mib;
use crate::report::{pcts, Invariant, Pcts};
use serde::Serialize;
use std::io::Write;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use ttsd::protocol::{self, Reply, Request, SynthRequest};

/// Connections sending huge voice names.
pub const AMPLIFIERS: usize = 4;
/// Connections pipelining small requests (fewer than queue_capacity, so
/// that a fair queue always has room for the valid client).
pub const FLOODERS: usize = 32;
/// Idle connections beyond max_connections.
pub const IDLE_EXTRA: usize = 16;
/// How often the prober asks for health.
pub const PROBE_EVERY: Duration = Duration::from_millis(100);
/// A health answer slower than this counts as a failure.
pub const PROBE_LIMIT: Duration = Duration::from_secs(3);

/// The criteria.
pub const MAX_SUPERVISOR_RSS_MIB: f64 = 64.0;
pub const MAX_LOG_BYTES: u64 = 10_000_000;
pub const MAX_HEALTH_P99_MS: f64 = 100.0;
/// Supervisor RSS after the attackers left, at most this far above its
/// value before they came: what they made it hold is given back.
pub const MAX_RSS_LEFT_MIB: f64 = 8.0;

/// What the daemon under attack is and allows.
#[derive(Debug, Clone)]
pub struct Target {
    pub socket: PathBuf,
    pub supervisor_pid: u32,
    pub log: PathBuf,
    pub max_connections: usize,
    pub max_frame_bytes: usize,
}

/// What the attackers and the prober saw.
#[derive(Debug, Default, Serialize)]
pub struct HostileLog {
    pub health_ms: Vec<f64>,
    pub health_failures: Vec<String>,
    pub amplifier_requests: u64,
    pub amplifier_bytes: u64,
    pub flood_requests: u64,
    pub flood_connections: u64,
    pub idle_connections: u64,
    pub idle_refused: u64,
    pub idle_closed_by_daemon: u64,
    /// (phase, supervisor RSS in MiB when it began).
    pub rss_marks: Vec<(String, f64)>,
    pub supervisor_peak_mib: f64,
    pub log_bytes: u64,
}

#[derive(Default)]
struct Counters {
    amplifier_requests: AtomicU64,
    amplifier_bytes: AtomicU64,
    flood_requests: AtomicU64,
    flood_connections: AtomicU64,
    idle_connections: AtomicU64,
    idle_refused: AtomicU64,
    idle_closed: AtomicU64,
}

/// What every attacker of a phase shares: the phase's stop flag and its
/// sockets, so that a writer blocked on a daemon that stopped reading can
/// be woken.
#[derive(Clone, Default)]
struct PhaseCtl {
    stop: Arc<AtomicBool>,
    sockets: Arc<Mutex<Vec<UnixStream>>>,
}

impl PhaseCtl {
    fn over(&self) -> bool {
        self.stop.load(Ordering::SeqCst)
    }

    /// Keep a handle on `s`, to shut it down when the phase ends.
    fn register(&self, s: &UnixStream) {
        if let Ok(c) = s.try_clone() {
            self.sockets.lock().unwrap().push(c);
        }
    }
}

/// The attackers of one phase.
struct Phase {
    ctl: PhaseCtl,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Phase {
    fn new() -> Self {
        Self { ctl: PhaseCtl::default(), threads: Vec::new() }
    }

    fn spawn(&mut self, f: impl FnOnce(PhaseCtl) + Send + 'static) {
        let ctl = self.ctl.clone();
        self.threads.push(std::thread::spawn(move || f(ctl)));
    }

    /// Stop every attacker of the phase and wait for them.
    fn end(self) {
        self.ctl.stop.store(true, Ordering::SeqCst);
        for s in self.ctl.sockets.lock().unwrap().drain(..) {
            let _ = s.shutdown(std::net::Shutdown::Both);
        }
        for t in self.threads {
            let _ = t.join();
        }
    }
}

/// Hello on a new connection, registered with the phase so that it can be
/// shut down from outside; `None` once the phase is over.
fn attacker(path: &Path, name: &str, ctl: &PhaseCtl) -> Option<UnixStream> {
    while !ctl.over() {
        match handshake(path, name) {
            Ok(s) => {
                ctl.register(&s);
                // Writes block while the daemon is not reading: that is the
                // point. A stuck write is ended by the phase's shutdown.
                let _ = s.set_write_timeout(None);
                return Some(s);
            }
            // Refused (max_connections) or closed: try again shortly.
            Err(_) => std::thread::sleep(Duration::from_millis(200)),
        }
    }
    None
}

/// Pipeline `frame` on connection after connection until the phase ends;
/// `count` gets each frame's size, `connected` each new connection.
fn pipeline_forever(
    path: PathBuf,
    name: &'static str,
    frame: Vec<u8>,
    ctl: PhaseCtl,
    count: impl Fn(u64),
    connected: impl Fn(),
) {
    while let Some(mut s) = attacker(&path, name, &ctl) {
        connected();
        // Until the daemon drops us (not reading) or the phase ends.
        while !ctl.over() && s.write_all(&frame).is_ok() {
            count(frame.len() as u64);
        }
    }
}

/// Run the phases over `window` (from now), the prober throughout.
pub fn run(target: Target, window: Duration, stop_all: Arc<AtomicBool>) -> HostileLog {
    let t0 = Instant::now();
    let counters = Arc::new(Counters::default());
    let probe_stop = Arc::new(AtomicBool::new(false));
    let prober = {
        let (socket, stop) = (target.socket.clone(), probe_stop.clone());
        std::thread::spawn(move || probe(&socket, &stop))
    };
    let mut marks = Vec::new();
    let mut peak = 0.0f64;
    let mark = |name: &str, marks: &mut Vec<(String, f64)>| {
        let rss = rss_mib(target.supervisor_pid).unwrap_or(0.0);
        eprintln!("ttsd-stress: hostile: {name} at {:.0} s, supervisor RSS {rss:.1} MiB", t0.elapsed().as_secs_f64());
        marks.push((name.to_string(), rss));
    };
    let phases: [(&str, f64); 4] = [("amplification", 0.3), ("flood", 0.3), ("idle", 0.3), ("quiet", 0.1)];
    let mut until = Duration::ZERO;
    for (name, share) in phases {
        until += window.mul_f64(share);
        mark(name, &mut marks);
        let mut phase = Phase::new();
        start(name, &target, &counters, &mut phase);
        while t0.elapsed() < until && !stop_all.load(Ordering::SeqCst) {
            std::thread::sleep(Duration::from_millis(100));
            peak = peak.max(rss_mib(target.supervisor_pid).unwrap_or(0.0));
        }
        phase.end();
    }
    mark("end", &mut marks);
    probe_stop.store(true, Ordering::SeqCst);
    let (health_ms, health_failures) = prober.join().unwrap_or_default();
    let c = &counters;
    let load = |a: &AtomicU64| a.load(Ordering::SeqCst);
    HostileLog {
        health_ms,
        health_failures,
        amplifier_requests: load(&c.amplifier_requests),
        amplifier_bytes: load(&c.amplifier_bytes),
        flood_requests: load(&c.flood_requests),
        flood_connections: load(&c.flood_connections),
        idle_connections: load(&c.idle_connections),
        idle_refused: load(&c.idle_refused),
        idle_closed_by_daemon: load(&c.idle_closed),
        rss_marks: marks,
        // VmHWM covers the moments between samples.
        supervisor_peak_mib: peak.max(hwm_mib(target.supervisor_pid).unwrap_or(0.0)),
        log_bytes: std::fs::metadata(&target.log).map_or(0, |m| m.len()),
    }
}

/// Peak resident memory of `pid` in MiB (VmHWM).
fn hwm_mib(pid: u32) -> Option<f64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = s.lines().find(|l| l.starts_with("VmHWM:"))?;
    Some(line.split_whitespace().nth(1)?.parse::<f64>().ok()? / 1024.0)
}

/// Start the attackers of phase `name`.
fn start(name: &str, target: &Target, counters: &Arc<Counters>, phase: &mut Phase) {
    match name {
        "amplification" => {
            // A name as large as a frame allows: each one used to come back
            // whole in the reply and in the log line.
            let voice = "A".repeat(target.max_frame_bytes - 512);
            let req = Request::Synthesize(SynthRequest { id: 1, voice: Some(voice), ..SynthRequest::text("Hi.") });
            let frame = protocol::encode(&req).expect("fits a frame");
            for _ in 0..AMPLIFIERS {
                let (path, frame, c) = (target.socket.clone(), frame.clone(), counters.clone());
                phase.spawn(move |ctl| {
                    let count = move |n| {
                        c.amplifier_requests.fetch_add(1, Ordering::Relaxed);
                        c.amplifier_bytes.fetch_add(n, Ordering::Relaxed);
                    };
                    pipeline_forever(path, "hostile-amplifier", frame, ctl, count, || {})
                });
            }
        }
        "flood" => {
            for i in 0..FLOODERS {
                let (path, c) = (target.socket.clone(), counters.clone());
                // Refused ones are never pending, accepted ones end: ids may
                // repeat across a connection's life, so one frame serves.
                let req = Request::Synthesize(SynthRequest { id: i as u64, ..SynthRequest::text("Hi.") });
                let frame = protocol::encode(&req).expect("small");
                phase.spawn(move |ctl| {
                    let c2 = c.clone();
                    pipeline_forever(
                        path,
                        "hostile-flood",
                        frame,
                        ctl,
                        move |_| {
                            c.flood_requests.fetch_add(1, Ordering::Relaxed);
                        },
                        move || {
                            c2.flood_connections.fetch_add(1, Ordering::Relaxed);
                        },
                    )
                });
            }
        }
        "idle" => {
            for _ in 0..target.max_connections + IDLE_EXTRA {
                let (path, c) = (target.socket.clone(), counters.clone());
                phase.spawn(move |ctl| idle_forever(&path, &ctl, &c));
            }
        }
        _ => {}
    }
}

/// Say Hello, then nothing; when the daemon closes the connection, again.
fn idle_forever(path: &Path, ctl: &PhaseCtl, c: &Counters) {
    while !ctl.over() {
        let mut s = match handshake(path, "hostile-idle") {
            Ok(s) => s,
            Err(_) => {
                c.idle_refused.fetch_add(1, Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(500));
                continue;
            }
        };
        c.idle_connections.fetch_add(1, Ordering::Relaxed);
        ctl.register(&s);
        let _ = s.set_read_timeout(Some(Duration::from_millis(500)));
        // Silent; waiting only to see the daemon close it.
        loop {
            if ctl.over() {
                return;
            }
            match protocol::read_frame::<Reply, _>(&mut s, MAX_REPLY) {
                Ok(None) | Err(protocol::FrameError::Truncated) => {
                    c.idle_closed.fetch_add(1, Ordering::Relaxed);
                    break;
                }
                Err(protocol::FrameError::Io(e))
                    if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {}
                _ => break,
            }
        }
    }
}

/// Health every [`PROBE_EVERY`] on one connection until `stop`: the round
/// trip of each, and what failed.
fn probe(socket: &Path, stop: &AtomicBool) -> (Vec<f64>, Vec<String>) {
    let (mut times, mut failures) = (Vec::new(), Vec::new());
    let mut conn: Option<UnixStream> = None;
    let mut next = Instant::now();
    let t0 = Instant::now();
    while !stop.load(Ordering::SeqCst) {
        let s = match conn.as_mut() {
            Some(s) => s,
            None => match handshake(socket, "hostile-prober") {
                Ok(s) => {
                    let _ = s.set_read_timeout(Some(PROBE_LIMIT));
                    conn.insert(s)
                }
                Err(e) => {
                    failures.push(format!("t={:.1}s connect: {e:#}", t0.elapsed().as_secs_f64()));
                    std::thread::sleep(PROBE_EVERY);
                    continue;
                }
            },
        };
        let t = Instant::now();
        let r = protocol::write_frame(s, &Request::Health)
            .and_then(|()| protocol::read_frame::<Reply, _>(s, MAX_REPLY));
        match r {
            Ok(Some(Reply::Health { .. })) => times.push(t.elapsed().as_secs_f64() * 1000.0),
            other => {
                failures.push(format!("t={:.1}s health: {other:.80?}", t0.elapsed().as_secs_f64()));
                conn = None;
            }
        }
        next += PROBE_EVERY;
        let now = Instant::now();
        if next > now {
            std::thread::sleep(next - now);
        } else {
            next = now;
        }
    }
    (times, failures)
}

/// The hostile criteria, PASS/FAIL each, in the order they are printed;
/// and the health percentiles.
pub fn invariants(h: &HostileLog, max_connections: usize) -> (Vec<Invariant>, Pcts) {
    let p = pcts(h.health_ms.clone());
    let inv = vec![peak_rss(h), rss_given_back(h), log_bounded(h), health_answered(h, &p), attacks_ran(h, max_connections)];
    (inv, p)
}

/// The supervisor's peak RSS (VmHWM, and the samples) stayed under the bound.
fn peak_rss(h: &HostileLog) -> Invariant {
    Invariant::new(
        format!("hostile: supervisor peak RSS under {MAX_SUPERVISOR_RSS_MIB} MiB"),
        h.supervisor_peak_mib > 0.0 && h.supervisor_peak_mib < MAX_SUPERVISOR_RSS_MIB,
        format!(
            "peak {:.1} MiB; at each phase: {}",
            h.supervisor_peak_mib,
            h.rss_marks.iter().map(|(n, r)| format!("{n} {r:.1}")).collect::<Vec<_>>().join(", ")
        ),
    )
}

/// After the quiet phase the supervisor is back near its RSS before the attacks.
fn rss_given_back(h: &HostileLog) -> Invariant {
    let start = h.rss_marks.first().map_or(0.0, |m| m.1);
    let end = h.rss_marks.last().map_or(0.0, |m| m.1);
    Invariant::new(
        format!("hostile: supervisor RSS given back once the attackers left (within {MAX_RSS_LEFT_MIB} MiB)"),
        end > 0.0 && end - start < MAX_RSS_LEFT_MIB,
        format!("{start:.1} MiB before the attacks, {end:.1} MiB after the quiet phase ({:+.1})", end - start),
    )
}

/// The daemon's log stayed small whatever the attackers sent.
fn log_bounded(h: &HostileLog) -> Invariant {
    Invariant::new(
        format!("hostile: log output under {} MB", MAX_LOG_BYTES / 1_000_000),
        h.log_bytes < MAX_LOG_BYTES,
        format!("{} bytes of log", h.log_bytes),
    )
}

/// Health answered at every probe, and quickly (`p`: the probes' percentiles).
fn health_answered(h: &HostileLog, p: &Pcts) -> Invariant {
    Invariant::new(
        format!(
            "hostile: health p99 under {MAX_HEALTH_P99_MS} ms, none failed (probe every {} ms)",
            PROBE_EVERY.as_millis()
        ),
        p.n > 0 && p.p99 < MAX_HEALTH_P99_MS && h.health_failures.is_empty(),
        format!(
            "p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms over {} probes; {} failed{}",
            p.p50,
            p.p99,
            p.max,
            p.n,
            h.health_failures.len(),
            h.health_failures.first().map_or(String::new(), |f| format!(" (first: {f})"))
        ),
    )
}

/// An attack that did not happen tests nothing: say so.
fn attacks_ran(h: &HostileLog, max_connections: usize) -> Invariant {
    Invariant::new(
        "hostile: every attack ran",
        h.amplifier_requests >= 100 && h.flood_requests >= 1000 && h.idle_connections > max_connections as u64,
        format!(
            "amplification {} requests ({} MiB); flood {} requests on {} connections; idle {} connections \
             ({} closed by the daemon, {} refused while full)",
            h.amplifier_requests,
            h.amplifier_bytes >> 20,
            h.flood_requests,
            h.flood_connections,
            h.idle_connections,
            h.idle_closed_by_daemon,
            h.idle_refused
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A run that meets every criterion.
    fn good() -> HostileLog {
        HostileLog {
            health_ms: vec![0.1; 300],
            amplifier_requests: 3000,
            amplifier_bytes: 3000 << 20,
            flood_requests: 30_000,
            flood_connections: 32,
            idle_connections: 120,
            idle_closed_by_daemon: 100,
            rss_marks: vec![("amplification".into(), 10.0), ("quiet".into(), 11.0), ("end".into(), 11.0)],
            supervisor_peak_mib: 18.0,
            log_bytes: 20_000,
            ..HostileLog::default()
        }
    }

    fn failed(h: &HostileLog) -> Vec<String> {
        invariants(h, 64).0.into_iter().filter(|i| !i.pass).map(|i| i.name).collect()
    }

    #[test]
    fn a_good_run_passes_every_criterion() {
        let (inv, p) = invariants(&good(), 64);
        assert_eq!(inv.len(), 5);
        assert!(inv.iter().all(|i| i.pass), "{inv:?}");
        assert_eq!(p.n, 300);
        assert_eq!(inv[1].detail, "10.0 MiB before the attacks, 11.0 MiB after the quiet phase (+1.0)");
    }

    #[test]
    fn each_criterion_fails_on_its_own() {
        let f = failed(&HostileLog { supervisor_peak_mib: MAX_SUPERVISOR_RSS_MIB, ..good() });
        assert_eq!(f, [format!("hostile: supervisor peak RSS under {MAX_SUPERVISOR_RSS_MIB} MiB")]);
        let kept = vec![("amplification".into(), 10.0), ("end".into(), 10.0 + MAX_RSS_LEFT_MIB)];
        assert!(failed(&HostileLog { rss_marks: kept, ..good() })[0].contains("given back"));
        assert!(failed(&HostileLog { log_bytes: MAX_LOG_BYTES, ..good() })[0].contains("log output"));
        let slow = HostileLog { health_ms: vec![MAX_HEALTH_P99_MS; 10], ..good() };
        assert!(failed(&slow)[0].contains("health p99"));
        let refused = HostileLog { health_failures: vec!["t=1.0s connect: refused".into()], ..good() };
        assert!(failed(&refused)[0].contains("none failed"));
        assert!(failed(&HostileLog { flood_requests: 999, ..good() })[0].contains("every attack ran"));
        assert!(failed(&HostileLog { idle_connections: 64, ..good() })[0].contains("every attack ran"));
    }

    #[test]
    fn nothing_measured_is_a_failure() {
        // No RSS read, no probe answered: nothing shows the bounds held.
        assert_eq!(failed(&HostileLog::default()).len(), 4, "only the log bound holds with no log");
    }
}
