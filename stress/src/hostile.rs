//! The `hostile` scenario's attackers and probes: clients that try to make
//! the supervisor hold memory, write log or lock everyone else out, or make
//! a worker run one unbounded sentence, while the load client (the valid
//! one) must see every request end `done`.
//!
//! The load window is cut into phases ([`PHASES`]), so that each attack's
//! effect (and the memory given back after it) shows on its own:
//! - amplification: [`AMPLIFIERS`] connections pipeline Synthesize requests
//!   whose voice name is nearly `max_frame_bytes`, and never read;
//! - flood: [`FLOODERS`] connections pipeline small requests, never read;
//! - idle: `max_connections` + [`IDLE_EXTRA`] connections say Hello and then
//!   nothing, and reconnect when the daemon closes them;
//! - long texts: [`LONG_TEXTERS`] clients take turns sending a Synthesize
//!   request whose text is a comma list with no full stop ([`long_text`],
//!   [`LONG_TEXTERS`] gives each one's length and whether it streams), one
//!   request in flight at a time, a new connection for each, reading every
//!   reply; meanwhile the workers' RSS (VmRSS and VmHWM) and the daemon's
//!   `worker_restarts` are read every [`WORKER_SAMPLE_EVERY`]. Each text
//!   must end `done` with all its audio, the workers must stay under
//!   [`MAX_WORKER_RSS_MIB`], and no worker may die;
//! - quiet: the attackers are gone; memory must come back. It lasts its
//!   full share from when it begins ([`phase_end`]), even after a long
//!   text ran past its phase or the load window ended.
//!
//! Throughout, a prober asks for health every [`PROBE_EVERY`] on its own
//! connection and times the answer. Owns the attack threads and what they
//! saw ([`HostileLog`]); the verdict is [`invariants`]. Never signals the
//! daemon.
use crate::conn::{handshake, MAX_REPLY};
use crate::monitor::{rss_mib, StatusConn};
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

/// The phases in order, each with its share of the load window. The long
/// texts get the most: one text takes 10-25 s here.
pub const PHASES: [(&str, f64); 5] =
    [("amplification", 0.15), ("flood", 0.15), ("idle", 0.2), ("long texts", 0.4), ("quiet", 0.1)];

/// The long-text clients, in the order they take turns: the characters of
/// each of their texts, and whether it is streamed.
///
/// One text is in flight at a time: the scenario runs 2 workers, and one
/// text holds a worker for 10-25 s on a shared 2-core machine, so two at
/// once would hold both and leave the valid client's requests waiting out
/// their 30 s deadline behind them (a capacity limit, not the fault looked
/// for). Each text goes on a new connection: a client waiting its turn is
/// silent longer than the scenario's idle_timeout_ms and would be closed.
/// 3000-4000 characters are 8-10 pieces of at most 800 phoneme ids (about
/// 190-250 s of audio); as one sentence they would need attention arrays of
/// several hundred MiB each. Longer texts, up to max_text_chars (20000),
/// would not end within a 120 s run. The unstreamed one's audio is held by
/// the supervisor until Done (about 8 MiB), under the peak RSS criterion.
pub const LONG_TEXTERS: [(usize, bool); 2] = [(3000, false), (4000, true)];
/// A long text's `timeout_ms`: several times what it takes here. The cost
/// of a text is linear in its length once sentences are cut, so a text
/// that still times out means a sentence ran uncut or a worker was stuck,
/// which is what the phase looks for: only `done` is acceptable.
pub const LONG_TIMEOUT_MS: u64 = 120_000;
/// How often the workers' RSS and the restart count are read while long
/// texts run (VmHWM covers the moments between).
pub const WORKER_SAMPLE_EVERY: Duration = Duration::from_millis(200);

/// The criteria.
pub const MAX_SUPERVISOR_RSS_MIB: f64 = 64.0;
pub const MAX_LOG_BYTES: u64 = 10_000_000;
pub const MAX_HEALTH_P99_MS: f64 = 100.0;
/// Supervisor RSS after the attackers left, at most this far above its
/// value before they came: what they made it hold is given back.
pub const MAX_RSS_LEFT_MIB: f64 = 8.0;
/// Worker peak RSS while long texts run: the engine peaks near 250 MiB on
/// ordinary long sentences (README, Memory); one uncut sentence of a long
/// text would take several times that.
pub const MAX_WORKER_RSS_MIB: f64 = 600.0;

/// What the daemon under attack is and allows.
#[derive(Debug, Clone)]
pub struct Target {
    pub socket: PathBuf,
    pub supervisor_pid: u32,
    pub log: PathBuf,
    pub max_connections: usize,
    pub max_frame_bytes: usize,
    pub max_text_chars: usize,
    /// The run also kills, stops or crashes workers (flags over the
    /// scenario): a restart during the long texts is then not theirs.
    pub worker_faults: bool,
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
    pub long: LongLog,
    /// See [`Target::worker_faults`].
    pub worker_faults: bool,
}

/// What the long-text phase saw: each text, and the workers meanwhile.
#[derive(Debug, Clone, Default, Serialize)]
pub struct LongLog {
    pub texts: Vec<LongText>,
    /// Largest VmRSS of a worker, read every [`WORKER_SAMPLE_EVERY`].
    pub worker_rss_peak_mib: f64,
    /// Largest VmHWM of a worker alive during the phase (its whole life).
    pub worker_hwm_peak_mib: f64,
    /// Status answers read (each with every worker's memory).
    pub worker_samples: u64,
    /// Worker pids seen during the phase.
    pub worker_pids: Vec<u32>,
    /// The daemon's `worker_restarts` when the phase began and after its
    /// last text ended (`None`: status did not answer).
    pub restarts_before: Option<u64>,
    pub restarts_after: Option<u64>,
}

/// One long text and how it ended.
#[derive(Debug, Clone, Default, Serialize)]
pub struct LongText {
    /// Index into [`LONG_TEXTERS`].
    pub client: usize,
    pub chars: usize,
    pub stream: bool,
    /// `done`, an error code, or `LOST (why)`.
    pub outcome: String,
    /// From Done.
    pub audio_seconds: f64,
    pub synth_ms: u64,
    pub worker_pid: u32,
    /// Audio received.
    pub samples: u64,
    pub sample_rate: u32,
    /// Audio frames for another id or out of `seq` order.
    pub stray: u32,
    pub wall_s: f64,
}

impl LongText {
    /// Ended done with all its audio, in order.
    fn complete(&self) -> bool {
        self.outcome == "done"
            && self.stray == 0
            && self.sample_rate > 0
            && self.audio_seconds > 0.0
            && (self.samples as f64 / self.sample_rate as f64 - self.audio_seconds).abs() <= 0.01
    }
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
    long: Mutex<LongLog>,
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
    let mut until = Duration::ZERO;
    for (name, share) in PHASES {
        until += window.mul_f64(share);
        let end = phase_end(name, until, t0.elapsed(), window.mul_f64(share));
        mark(name, &mut marks);
        let mut phase = Phase::new();
        start(name, &target, &counters, &mut phase, t0 + until);
        while t0.elapsed() < end && (name == "quiet" || !stop_all.load(Ordering::SeqCst)) {
            std::thread::sleep(Duration::from_millis(100));
            peak = peak.max(rss_mib(target.supervisor_pid).unwrap_or(0.0));
        }
        phase.end();
    }
    mark("end", &mut marks);
    probe_stop.store(true, Ordering::SeqCst);
    let (health_ms, health_failures) = prober.join().unwrap_or_default();
    let long = std::mem::take(&mut *counters.long.lock().unwrap());
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
        long,
        worker_faults: target.worker_faults,
    }
}

/// When phase `name`, planned to end `planned` into the window, ends if it
/// begins at `began` and its share is `share`: as planned, except the quiet
/// phase, which lasts at least its share (a long text in flight is never
/// cut off and may have run past its own phase; what the attackers made the
/// supervisor hold is judged after a full quiet phase).
fn phase_end(name: &str, planned: Duration, began: Duration, share: Duration) -> Duration {
    if name == "quiet" {
        planned.max(began + share)
    } else {
        planned
    }
}

/// Peak resident memory of `pid` in MiB (VmHWM).
fn hwm_mib(pid: u32) -> Option<f64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = s.lines().find(|l| l.starts_with("VmHWM:"))?;
    Some(line.split_whitespace().nth(1)?.parse::<f64>().ok()? / 1024.0)
}

/// Start the attackers of phase `name`, which is over at `ends`.
fn start(name: &str, target: &Target, counters: &Arc<Counters>, phase: &mut Phase, ends: Instant) {
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
        "long texts" => {
            // The texts first: the phase's end joins them before the
            // sampler, which takes its last sample once they are finished.
            let finished = Arc::new(AtomicBool::new(false));
            let (t, c, f) = (target.clone(), counters.clone(), finished.clone());
            phase.spawn(move |ctl| {
                let _finished = SetOnDrop(f);
                send_long_texts(&t, &ctl, ends, &c);
            });
            let (socket, c) = (target.socket.clone(), counters.clone());
            phase.spawn(move |_| sample_workers(&socket, &finished, &c));
        }
        _ => {}
    }
}

/// Sets its flag when dropped (also when the thread holding it panics).
struct SetOnDrop(Arc<AtomicBool>);

impl Drop for SetOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::SeqCst);
    }
}

/// Text `k` of the long-text phase: a comma list of phrases, no full stop,
/// as close to `chars` characters as the phrases allow without passing it.
/// Deterministic: the same `k` and `chars` give the same text.
pub fn long_text(k: usize, chars: usize) -> String {
    const PHRASES: [&str; 30] = [
        "apples", "pears", "the old mill by the river", "seven grey geese", "a lantern", "bread and honey",
        "the north road", "copper kettles", "wool blankets", "a quiet harbour", "the long field behind the church",
        "three brown horses", "a basket of plums", "rain on the slate roof", "a letter from the coast", "two lamps",
        "the ferry at dawn", "cold tea", "a map of the valley", "the miller and his daughter", "green shutters",
        "a broken fence", "the smell of cut grass", "blue plates", "a rope bridge", "the market square", "candles",
        "a wooden spoon", "the tide coming in", "an empty chair by the window",
    ];
    let mut text = String::with_capacity(chars);
    // A stride prime to the list's length visits every phrase in turn;
    // the start differs from text to text.
    for i in 0.. {
        let phrase = PHRASES[(k * 7 + i * 11) % PHRASES.len()];
        let sep = if text.is_empty() { "" } else { ", " };
        if text.len() + sep.len() + phrase.len() > chars {
            break;
        }
        text.push_str(sep);
        text.push_str(phrase);
    }
    text
}

/// The long texts, one at a time, the clients of [`LONG_TEXTERS`] in turn,
/// until the phase is over. After every client has sent one, a text starts
/// only if, at the pace of those before it, it would end by `ends`: a text
/// in flight is never cut off, so it must not run far into the next phase.
fn send_long_texts(target: &Target, ctl: &PhaseCtl, ends: Instant, c: &Counters) {
    let (mut chars_sent, mut spent) = (0usize, Duration::ZERO);
    for k in 0.. {
        let client = k % LONG_TEXTERS.len();
        let (chars, stream) = LONG_TEXTERS[client];
        let chars = chars.min(target.max_text_chars);
        let pace = spent.as_secs_f64() / chars_sent.max(1) as f64;
        let fits = Instant::now() + Duration::from_secs_f64(pace * chars as f64) <= ends;
        if ctl.over() || (k >= LONG_TEXTERS.len() && !fits) {
            break;
        }
        let req = SynthRequest {
            id: k as u64 + 1,
            stream,
            timeout_ms: Some(LONG_TIMEOUT_MS),
            ..SynthRequest::text(long_text(k, chars))
        };
        let name = format!("hostile-long-{client}");
        let t = Instant::now();
        let mut text = LongText { client, chars, stream, ..LongText::default() };
        text.outcome = match long_exchange(&target.socket, &name, &req, &mut text) {
            Ok(outcome) => outcome,
            Err(why) => format!("LOST ({why})"),
        };
        text.wall_s = t.elapsed().as_secs_f64();
        eprintln!(
            "ttsd-stress: hostile: long text {k}: {chars} chars, {}, {} ({:.1} s of audio in {:.1} s)",
            if stream { "streamed" } else { "unstreamed" },
            text.outcome,
            text.audio_seconds,
            text.wall_s
        );
        spent += t.elapsed();
        chars_sent += chars;
        c.long.lock().unwrap().texts.push(text);
    }
}

/// Send `req` on a new connection and read its replies up to the terminal
/// one, counting its audio into `text`: the outcome (`done` or an error
/// code), or why there was none.
fn long_exchange(socket: &Path, name: &str, req: &SynthRequest, text: &mut LongText) -> Result<String, String> {
    let mut s = handshake(socket, name).map_err(|e| format!("connect: {e:#}"))?;
    // Past its deadline a request is answered within kill_grace_ms; 15 s
    // more is generous. Unstreamed audio only comes right before Done.
    let limit = Duration::from_millis(LONG_TIMEOUT_MS + 15_000);
    s.set_read_timeout(Some(limit)).map_err(|e| e.to_string())?;
    protocol::write_frame(&mut s, &Request::Synthesize(req.clone())).map_err(|e| format!("send: {e}"))?;
    let mut next_seq = 0;
    loop {
        match protocol::read_frame::<Reply, _>(&mut s, MAX_REPLY) {
            Ok(Some(Reply::Queued { .. })) => {}
            Ok(Some(Reply::Audio { id, seq, sample_rate, samples })) => {
                if id != req.id || seq != next_seq {
                    text.stray += 1;
                }
                next_seq = seq + 1;
                text.samples += samples.len() as u64;
                text.sample_rate = sample_rate;
            }
            Ok(Some(Reply::Done { id, audio_seconds, synth_ms, worker_pid, .. })) if id == req.id => {
                (text.audio_seconds, text.synth_ms, text.worker_pid) = (audio_seconds, synth_ms, worker_pid);
                return Ok("done".into());
            }
            Ok(Some(Reply::Error { id: Some(id), code, .. })) if id == req.id => return Ok(code.as_str().into()),
            Ok(Some(other)) => return Err(format!("unexpected {other:.80?}")),
            Ok(None) => return Err("closed by the daemon".into()),
            Err(e) => return Err(e.to_string()),
        }
    }
}

/// Every [`WORKER_SAMPLE_EVERY`] until `finished` (and once more after it):
/// each worker's VmRSS and VmHWM, and the daemon's restart count.
fn sample_workers(socket: &Path, finished: &AtomicBool, c: &Counters) {
    let mut conn = StatusConn::new(socket);
    let mut w = LongLog { restarts_before: conn.status().ok().map(|s| s.worker_restarts), ..LongLog::default() };
    loop {
        // Read first, so that the last sample follows the last text.
        let last = finished.load(Ordering::SeqCst);
        if let Ok(st) = conn.status() {
            for worker in &st.workers {
                w.worker_rss_peak_mib = w.worker_rss_peak_mib.max(rss_mib(worker.pid).unwrap_or(0.0));
                w.worker_hwm_peak_mib = w.worker_hwm_peak_mib.max(hwm_mib(worker.pid).unwrap_or(0.0));
                if worker.pid != 0 && !w.worker_pids.contains(&worker.pid) {
                    w.worker_pids.push(worker.pid);
                }
            }
            w.worker_samples += 1;
            w.restarts_after = Some(st.worker_restarts);
        }
        if last {
            break;
        }
        std::thread::sleep(WORKER_SAMPLE_EVERY);
    }
    let mut l = c.long.lock().unwrap();
    (l.worker_rss_peak_mib, l.worker_hwm_peak_mib, l.worker_samples) =
        (w.worker_rss_peak_mib, w.worker_hwm_peak_mib, w.worker_samples);
    (l.worker_pids, l.restarts_before, l.restarts_after) = (w.worker_pids, w.restarts_before, w.restarts_after);
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
    let inv = vec![
        peak_rss(h),
        rss_given_back(h),
        log_bounded(h),
        health_answered(h, &p),
        long_texts_done(h),
        workers_bounded(h),
        attacks_ran(h, max_connections),
    ];
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

/// Every long unpunctuated text ended `done` with all its audio (a
/// `timeout` too is a failure: see [`LONG_TIMEOUT_MS`]).
fn long_texts_done(h: &HostileLog) -> Invariant {
    let texts = &h.long.texts;
    let done = texts.iter().filter(|t| t.complete()).count();
    let each: Vec<String> = texts
        .iter()
        .map(|t| {
            let audio = if t.outcome == "done" && !t.complete() {
                format!(", audio incomplete: {} samples at {} Hz, {} stray frames", t.samples, t.sample_rate, t.stray)
            } else {
                String::new()
            };
            format!(
                "{} chars {}: {} ({:.1} s of audio, synth {:.1} s, worker {}{audio})",
                t.chars,
                if t.stream { "streamed" } else { "unstreamed" },
                t.outcome,
                t.audio_seconds,
                t.synth_ms as f64 / 1000.0,
                t.worker_pid
            )
        })
        .collect();
    Invariant::new(
        "hostile: every long unpunctuated text ended done with all its audio",
        !texts.is_empty() && done == texts.len(),
        format!("{done} of {} done; {}", texts.len(), if each.is_empty() { "none sent".into() } else { each.join("; ") }),
    )
}

/// While the long texts ran the workers stayed under [`MAX_WORKER_RSS_MIB`]
/// and none died (restarts are only excused when the run itself kills,
/// stops or crashes workers).
fn workers_bounded(h: &HostileLog) -> Invariant {
    let l = &h.long;
    let peak = l.worker_rss_peak_mib.max(l.worker_hwm_peak_mib);
    let restarts = l.restarts_before.zip(l.restarts_after).map(|(b, a)| a.saturating_sub(b));
    let restarts_ok = match restarts {
        Some(0) => true,
        Some(_) => h.worker_faults,
        None => false,
    };
    let show = |v: Option<u64>| v.map_or("no answer".to_string(), |n| n.to_string());
    Invariant::new(
        format!("hostile: worker peak RSS under {MAX_WORKER_RSS_MIB} MiB while long texts ran, no worker restarted"),
        l.worker_samples > 0 && peak > 0.0 && peak < MAX_WORKER_RSS_MIB && restarts_ok,
        format!(
            "peak {peak:.1} MiB (VmRSS every {} ms: {:.1}, VmHWM: {:.1}; {} samples, workers {:?}); \
             worker_restarts {} before, {} after{}",
            WORKER_SAMPLE_EVERY.as_millis(),
            l.worker_rss_peak_mib,
            l.worker_hwm_peak_mib,
            l.worker_samples,
            l.worker_pids,
            show(l.restarts_before),
            show(l.restarts_after),
            if h.worker_faults { " (the run injects worker faults: restarts not judged)" } else { "" }
        ),
    )
}

/// An attack that did not happen tests nothing: say so.
fn attacks_ran(h: &HostileLog, max_connections: usize) -> Invariant {
    let long = &h.long.texts;
    Invariant::new(
        "hostile: every attack ran",
        h.amplifier_requests >= 100
            && h.flood_requests >= 1000
            && h.idle_connections > max_connections as u64
            && long.len() >= LONG_TEXTERS.len(),
        format!(
            "amplification {} requests ({} MiB); flood {} requests on {} connections; idle {} connections \
             ({} closed by the daemon, {} refused while full); long texts {} ({} chars)",
            h.amplifier_requests,
            h.amplifier_bytes >> 20,
            h.flood_requests,
            h.flood_connections,
            h.idle_connections,
            h.idle_closed_by_daemon,
            h.idle_refused,
            long.len(),
            long.iter().map(|t| t.chars).sum::<usize>()
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
            long: LongLog {
                texts: LONG_TEXTERS
                    .iter()
                    .enumerate()
                    .map(|(client, &(chars, stream))| long_done(client, chars, stream))
                    .collect(),
                worker_rss_peak_mib: 255.0,
                worker_hwm_peak_mib: 260.0,
                worker_samples: 200,
                worker_pids: vec![101, 102],
                restarts_before: Some(0),
                restarts_after: Some(0),
            },
            ..HostileLog::default()
        }
    }

    /// A long text that ended done with all its audio.
    fn long_done(client: usize, chars: usize, stream: bool) -> LongText {
        LongText {
            client,
            chars,
            stream,
            outcome: "done".into(),
            audio_seconds: 190.0,
            synth_ms: 14_000,
            worker_pid: 101,
            samples: 190 * 22050,
            sample_rate: 22050,
            stray: 0,
            wall_s: 14.5,
        }
    }

    /// `good()` with its long-text log changed by `f`.
    fn long(f: impl FnOnce(&mut LongLog)) -> HostileLog {
        let mut h = good();
        f(&mut h.long);
        h
    }

    fn failed(h: &HostileLog) -> Vec<String> {
        invariants(h, 64).0.into_iter().filter(|i| !i.pass).map(|i| i.name).collect()
    }

    #[test]
    fn a_good_run_passes_every_criterion() {
        let (inv, p) = invariants(&good(), 64);
        assert_eq!(inv.len(), 7);
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
        assert_eq!(failed(&long(|l| drop(l.texts.pop()))), ["hostile: every attack ran"]);
    }

    #[test]
    fn long_texts_must_all_end_done_with_their_audio() {
        let only = |h: &HostileLog| {
            let f = failed(h);
            assert_eq!(f, ["hostile: every long unpunctuated text ended done with all its audio"], "{f:?}");
            invariants(h, 64).0.into_iter().find(|i| !i.pass).unwrap().detail
        };
        // A generous deadline: a timeout is a failure like any other error.
        let d = only(&long(|l| l.texts[0].outcome = "timeout".into()));
        assert!(d.starts_with("1 of 2 done; 3000 chars unstreamed: timeout"), "{d}");
        only(&long(|l| l.texts[1].outcome = "LOST (closed by the daemon)".into()));
        let d = only(&long(|l| l.texts[1].samples -= 22050));
        assert!(d.contains("audio incomplete"), "{d}");
        only(&long(|l| l.texts[1].stray = 1));
    }

    #[test]
    fn workers_must_stay_bounded_and_alive_while_long_texts_run() {
        let name = format!("hostile: worker peak RSS under {MAX_WORKER_RSS_MIB} MiB while long texts ran, no worker restarted");
        assert_eq!(failed(&long(|l| l.worker_hwm_peak_mib = MAX_WORKER_RSS_MIB)), [name.as_str()]);
        assert_eq!(failed(&long(|l| l.worker_rss_peak_mib = MAX_WORKER_RSS_MIB + 1.0)), [name.as_str()]);
        assert_eq!(failed(&long(|l| l.restarts_after = Some(1))), [name.as_str()]);
        assert_eq!(failed(&long(|l| l.restarts_after = None)), [name.as_str()], "unknown counts as a failure");
        assert_eq!(failed(&long(|l| l.worker_samples = 0)), [name.as_str()]);
        // A run that kills workers itself explains its restarts.
        let faults = HostileLog { worker_faults: true, ..long(|l| (l.restarts_before, l.restarts_after) = (Some(2), Some(5))) };
        assert!(failed(&faults).is_empty());
        let d = &invariants(&faults, 64).0[5].detail;
        assert!(d.contains("2 before, 5 after (the run injects worker faults"), "{d}");
    }

    #[test]
    fn long_texts_are_comma_lists_of_the_asked_length_without_a_full_stop() {
        for (k, &(chars, _)) in LONG_TEXTERS.iter().enumerate() {
            let t = long_text(k, chars);
            assert!(t.len() <= chars && t.len() > chars - 40, "{} of {chars}", t.len());
            assert!(t.is_ascii() && !t.contains(['.', '!', '?', ';', ':']), "{t}");
            assert!(t.matches(", ").count() > 100);
            assert_eq!(t, long_text(k, chars), "deterministic");
        }
        assert_ne!(long_text(0, 3000), long_text(1, 3000));
        assert!(long_text(0, 3000).starts_with("apples, three brown horses, "));
    }

    #[test]
    fn the_phases_share_the_window() {
        assert!((PHASES.iter().map(|p| p.1).sum::<f64>() - 1.0).abs() < 1e-9);
        assert_eq!(PHASES.last().unwrap().0, "quiet", "memory is judged after the quiet phase");
        let s = Duration::from_secs;
        assert_eq!(phase_end("long texts", s(102), s(60), s(48)), s(102), "a late text does not move the plan");
        assert_eq!(phase_end("quiet", s(120), s(108), s(12)), s(120), "on time: as planned");
        // The 120 s run of df5c0dd: the last long text ended at 122 s, and
        // the quiet phase had no time at all.
        assert_eq!(phase_end("quiet", s(120), s(122), s(12)), s(134));
    }

    #[test]
    fn nothing_measured_is_a_failure() {
        // No RSS read, no probe answered, no long text: nothing shows the bounds held.
        assert_eq!(failed(&HostileLog::default()).len(), 6, "only the log bound holds with no log");
    }
}
