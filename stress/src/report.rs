//! The verdict: the invariants, one function each, checked against what a
//! [`Run`] collected (the records, the fault timeline, the memory series,
//! the daemon's end state); the summary and the printed report.
//!
//! Owns the criteria and their thresholds, and which outcomes are
//! acceptable for which faults (see [`allowed`]); stress/README.md lists
//! them in the order [`evaluate`] prints them. Pure over what the run
//! collected: never talks to the daemon, never reads the clock.
use crate::attacks::AttackResult;
use crate::faults::{FaultEvent, FaultLog};
use crate::monitor::{Sample, Series};
use crate::track::{FlagFault, Outcome, Record};
use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet, HashSet};
use ttsd::protocol::ErrorCode;

/// Supervisor RSS may grow at most this much from the start of the load to
/// its end (after the drain). The supervisor holds no model: only the queue
/// (at most queue_capacity requests of at most max_text_chars), one outbox
/// per connection, and the audio of non-streamed requests in flight (a few
/// hundred KiB each). With the harness's few connections that is well under
/// 5 MiB; 20 MiB leaves room for allocator slack and would still catch a
/// leak of ~100 KiB per request (the size of one request's audio) within a
/// couple of hundred requests.
pub const SUPERVISOR_GROWTH_MIB: f64 = 20.0;
/// A worker's RSS may grow at most this much over its life, measured from
/// its first sample after it became ready (voices loaded) to its last,
/// excluding workers that ran a `grow` fault request. The first synthesis
/// allocates MLX's buffers for the longest text seen so far and the buffer
/// cache keeps them (about 100-200 MiB for the texts of the mix); a leak
/// per request would add up past this within a soak. Measured: +70-80 MiB
/// in smoke, about +80-120 MiB over a 5-minute chaos run.
pub const WORKER_GROWTH_MIB: f64 = 250.0;

/// The non-reader check applies from this many unread requests on...
pub const NONREADER_CHECK_MIN: u32 = 50;
/// ...and allows this much supervisor growth: a bounded per-connection
/// backlog (a socket buffer plus a few frames) is well under 1 MiB.
pub const NONREADER_GROWTH_MIB: f64 = 4.0;

/// One criterion's verdict: what it checks, whether it held, the figures
/// behind it (one report line: `PASS  name: detail`).
#[derive(Debug, Clone, Serialize)]
pub struct Invariant {
    pub name: String,
    pub pass: bool,
    pub detail: String,
}

impl Invariant {
    pub fn new(name: impl Into<String>, pass: bool, detail: String) -> Self {
        Self { name: name.into(), pass, detail }
    }
}

#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Pcts {
    pub n: usize,
    pub p50: f64,
    pub p95: f64,
    pub p99: f64,
    pub max: f64,
}

/// Nearest-rank percentiles.
pub fn pcts(mut v: Vec<f64>) -> Pcts {
    if v.is_empty() {
        return Pcts::default();
    }
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let at = |p: f64| v[((p * v.len() as f64).ceil() as usize).clamp(1, v.len()) - 1];
    Pcts { n: v.len(), p50: at(0.50), p95: at(0.95), p99: at(0.99), max: *v.last().unwrap() }
}

/// What each fault makes acceptable, per request:
/// - no fault flag (or `slow`, `grow`: they only delay or bloat the worker):
///   `done`;
/// - `crash` flag: `worker_crashed` (the worker aborts; a crash inside the
///   worker points at the request, so it is not retried);
/// - `hang` flag: `worker_crashed` (the worker spins without heartbeats and
///   is killed after hang_timeout_ms);
/// - in flight when the harness SIGKILLed a worker: also `worker_crashed`
///   (it ran there after audio was sent, or its retry was killed too; a
///   kill before any audio is retried and should end `done` with retried);
/// - in flight while a worker was SIGSTOPped (from the stop until the
///   SIGCONT, or until the daemon's hang detection could have killed it):
///   also `worker_crashed` and `timeout` (the stopped worker may sit on it
///   past its deadline);
/// - paced load (`--rate`): also `overloaded` (a full queue sheds load).
///
/// Never acceptable: `LOST` (no terminal reply), `internal`, `unavailable`,
/// or any other code.
pub struct Exposure {
    pub killed: bool,
    pub stopped: bool,
}

pub fn allowed(fault: Option<FlagFault>, exp: &Exposure, paced: bool) -> BTreeSet<Outcome> {
    use ErrorCode::*;
    let mut s = BTreeSet::new();
    match fault {
        Some(FlagFault::Crash) | Some(FlagFault::Hang) => {
            s.insert(Outcome::Error(WorkerCrashed));
        }
        _ => {
            s.insert(Outcome::Done);
        }
    }
    if exp.killed {
        s.insert(Outcome::Done);
        s.insert(Outcome::Error(WorkerCrashed));
    }
    if exp.stopped {
        s.insert(Outcome::Done);
        s.insert(Outcome::Error(WorkerCrashed));
        s.insert(Outcome::Error(Timeout));
    }
    if paced {
        s.insert(Outcome::Error(Overloaded));
    }
    s
}

/// Which worker signals a request lived through.
pub fn exposure(r: &Record, signals: &[FaultEvent], hang_timeout_s: f64) -> Exposure {
    let start = r.sent_s;
    let end = r.end_s.unwrap_or(f64::INFINITY);
    let mut e = Exposure { killed: false, stopped: false };
    for s in signals {
        match s.kind {
            // The kill time is taken right after kill(2); the daemon learns
            // of the death later, so an affected request ends after it.
            "sigkill" => e.killed |= start <= s.t_s && end >= s.t_s - 0.1,
            _ => {
                let until = s.until_s.unwrap_or(s.t_s).min(s.t_s + hang_timeout_s + 1.0);
                e.stopped |= start <= until && end >= s.t_s - 0.1;
            }
        }
    }
    e
}

#[derive(Debug, Clone, Serialize)]
pub struct RssSummary {
    pub supervisor_start_mib: f64,
    pub supervisor_end_mib: f64,
    pub supervisor_peak_mib: f64,
    pub workers_start_mib: Vec<f64>,
    pub workers_end_mib: Vec<f64>,
    pub worker_peak_mib: f64,
    /// Largest growth of one worker over its life (grow-fault workers excluded).
    pub worker_max_growth_mib: f64,
    pub worker_max_growth_pid: u32,
}

#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    pub requests: usize,
    pub outcomes: BTreeMap<String, usize>,
    pub faults: BTreeMap<String, usize>,
    pub worker_restarts: u64,
    pub worker_recycles: u64,
    pub lost_replies: usize,
    pub ttfa_stream_ms: Pcts,
    pub ttfa_all_ms: Pcts,
    pub total_ms: Pcts,
    pub queue_ms: Pcts,
    pub audio_seconds: f64,
    pub wall_seconds: f64,
    pub audio_per_wall: f64,
    pub rss: RssSummary,
    pub max_queue_depth: u32,
    pub slowest_status_ms: f64,
}

pub struct Final {
    pub alive: bool,
    pub socket_exists: bool,
    pub health: String,
    pub healed_in_s: Option<f64>,
    pub restarts: u64,
    pub recycles: u64,
    pub end_sample: Option<Sample>,
    /// (exit status text, clean) when the harness stopped its own daemon.
    pub shutdown: Option<(String, bool)>,
}

fn rss_summary(samples: &[Sample], start: Option<&Sample>, end: Option<&Sample>, grow_pids: &HashSet<u32>) -> RssSummary {
    let start = start.or(samples.first());
    let end = end.or(samples.last());
    let sup_peak = samples.iter().map(|s| s.supervisor_rss_mib).fold(0.0, f64::max);
    let worker_peak =
        samples.iter().flat_map(|s| s.workers.iter().map(|w| w.rss_mib)).fold(0.0, f64::max);
    // Per pid: first ready sample, last sample.
    let mut life: BTreeMap<u32, (f64, f64)> = BTreeMap::new();
    for s in samples.iter().chain(end) {
        for w in &s.workers {
            if w.rss_mib <= 0.0 || !(w.state == "idle" || w.state == "busy") {
                continue;
            }
            life.entry(w.pid).and_modify(|e| e.1 = w.rss_mib).or_insert((w.rss_mib, w.rss_mib));
        }
    }
    let (mut growth, mut growth_pid) = (0.0, 0);
    for (pid, (a, b)) in life {
        if !grow_pids.contains(&pid) && b - a > growth {
            growth = b - a;
            growth_pid = pid;
        }
    }
    let ws = |s: Option<&Sample>| s.map_or(vec![], |s| s.workers.iter().map(|w| (w.rss_mib * 10.0).round() / 10.0).collect());
    RssSummary {
        supervisor_start_mib: start.map_or(0.0, |s| s.supervisor_rss_mib),
        supervisor_end_mib: end.map_or(0.0, |s| s.supervisor_rss_mib),
        supervisor_peak_mib: sup_peak.max(end.map_or(0.0, |s| s.supervisor_rss_mib)),
        workers_start_mib: ws(start),
        workers_end_mib: ws(end),
        worker_peak_mib: worker_peak,
        worker_max_growth_mib: growth,
        worker_max_growth_pid: growth_pid,
    }
}

/// Everything a run collected, as the criteria read it.
pub struct Run<'a> {
    pub records: &'a [Record],
    pub log: &'a FaultLog,
    pub series: &'a Series,
    pub fin: &'a Final,
    pub hang_timeout_s: f64,
    /// Paced load (`--rate`): a full queue may shed it.
    pub paced: bool,
    /// Seconds of the load window.
    pub wall_seconds: f64,
    /// Replies for ids never sent.
    pub unknown_replies: &'a [String],
    /// Connection-level errors on load connections.
    pub conn_errors: &'a [String],
}

/// The first five of a list of complaints, for a detail line.
fn show(v: &[String]) -> String {
    v.iter().take(5).cloned().collect::<Vec<_>>().join("; ")
}

/// Every invariant, in the order they are printed, and the summary.
pub fn evaluate(run: &Run) -> (Vec<Invariant>, Summary) {
    let grow = grow_pids(run);
    let rss = rss_summary(&run.series.samples, run.series.samples.first(), run.fin.end_sample.as_ref(), &grow);
    let mut inv = vec![
        one_terminal_reply(run.records),
        no_stray_replies(run),
        outcomes_expected(run),
        clean_requests_done(run),
        audio_complete(run.records),
        attacks_handled(run.log),
        signals_delivered(run.log),
        status_answered(run.series),
        alive_at_end(run.fin),
        supervisor_growth(&rss),
        worker_growth(&rss, grow.len()),
    ];
    inv.extend(nonreader_bounded(&rss, run.log.nonreader_requests));
    inv.extend(clean_shutdown(run.fin));
    (inv, summary(run, rss))
}

/// Exactly one terminal reply per request.
fn one_terminal_reply(records: &[Record]) -> Invariant {
    let not_one: Vec<String> = records
        .iter()
        .filter(|r| r.terminals != 1)
        .map(|r| format!("id {:#x}: {} terminal replies ({})", r.id, r.terminals, r.message.as_deref().unwrap_or("")))
        .collect();
    Invariant::new(
        "every request got exactly one terminal reply",
        not_one.is_empty(),
        if not_one.is_empty() {
            format!("{} of {}", records.len(), records.len())
        } else {
            format!("{} bad: {}", not_one.len(), show(&not_one))
        },
    )
}

/// Nothing after the terminal reply, nothing for unknown ids, audio in
/// order, no connection-level error on a load connection.
fn no_stray_replies(run: &Run) -> Invariant {
    let after: Vec<String> = run
        .records
        .iter()
        .filter(|r| r.after_terminal > 0 || r.seq_gaps > 0)
        .map(|r| format!("id {:#x}: {} replies after the terminal one, {} seq gaps", r.id, r.after_terminal, r.seq_gaps))
        .chain(run.unknown_replies.iter().map(|u| format!("reply for an id never sent: {u}")))
        .chain(run.conn_errors.iter().map(|e| format!("connection-level error on a load connection: {e}")))
        .collect();
    Invariant::new(
        "no reply after the terminal one, none for unknown ids, audio frames in order",
        after.is_empty(),
        if after.is_empty() { "0 stray replies".into() } else { format!("{}: {}", after.len(), show(&after)) },
    )
}

/// Outcomes within the set [`allowed`] for the faults each request met.
fn outcomes_expected(run: &Run) -> Invariant {
    let outside: Vec<String> = run
        .records
        .iter()
        .filter_map(|r| {
            let e = exposure(r, &run.log.signals, run.hang_timeout_s);
            let got = r.outcome.unwrap_or(Outcome::Lost);
            (!allowed(r.fault, &e, run.paced).contains(&got)).then(|| {
                format!(
                    "id {:#x} ({:?}, killed {}, stopped {}): {} {}",
                    r.id,
                    r.fault,
                    e.killed,
                    e.stopped,
                    got.name(),
                    r.message.as_deref().unwrap_or("")
                )
            })
        })
        .collect();
    Invariant::new(
        "no outcome outside the expected set for the faults injected",
        outside.is_empty(),
        if outside.is_empty() { "all within their sets".into() } else { format!("{}: {}", outside.len(), show(&outside)) },
    )
}

/// A request with no fault flag (or only `slow`/`grow`) that met no
/// worker signal ended `done`.
fn clean_requests_done(run: &Run) -> Invariant {
    let mut clean = 0;
    let mut not_done = Vec::new();
    for r in run.records {
        let e = exposure(r, &run.log.signals, run.hang_timeout_s);
        if matches!(r.fault, None | Some(FlagFault::Slow) | Some(FlagFault::Grow)) && !e.killed && !e.stopped {
            clean += 1;
            let got = r.outcome.unwrap_or(Outcome::Lost);
            if got != Outcome::Done {
                not_done.push(format!("id {:#x}: {} {}", r.id, got.name(), r.message.as_deref().unwrap_or("")));
            }
        }
    }
    // A run that sent nothing proves nothing: at least one clean request.
    Invariant::new(
        "every valid request without an injected fault ended done",
        not_done.is_empty() && clean > 0,
        if clean == 0 {
            "no request without a fault was sent: the load never reached the daemon".to_string()
        } else if not_done.is_empty() {
            format!("{clean} of {clean}")
        } else {
            format!("{} of {clean} did not: {}", not_done.len(), show(&not_done))
        },
    )
}

/// Done means complete audio: the samples received match audio_seconds.
fn audio_complete(records: &[Record]) -> Invariant {
    let bad: Vec<String> = records
        .iter()
        .filter(|r| r.outcome == Some(Outcome::Done))
        .filter(|r| {
            r.audio_seconds <= 0.0
                || r.sample_rate == 0
                || (r.samples as f64 / r.sample_rate as f64 - r.audio_seconds).abs() > 0.01
        })
        .map(|r| format!("id {:#x}: {} samples at {} Hz, Done says {:.3} s", r.id, r.samples, r.sample_rate, r.audio_seconds))
        .collect();
    Invariant::new(
        "every done request delivered all its audio",
        bad.is_empty(),
        if bad.is_empty() { "samples match audio_seconds".into() } else { format!("{}: {}", bad.len(), show(&bad)) },
    )
}

/// Misbehaving clients answered per the protocol.
fn attacks_handled(log: &FaultLog) -> Invariant {
    let bad: Vec<&AttackResult> = log.attacks.iter().filter(|a| !a.ok).collect();
    Invariant::new(
        "malformed/oversized/truncated frames, disconnects and non-readers handled",
        bad.is_empty(),
        if bad.is_empty() {
            format!("{} attacks", log.attacks.len())
        } else {
            bad.iter().take(5).map(|a| format!("t={:.1}s {}: {}", a.t_s, a.kind, a.detail)).collect::<Vec<_>>().join("; ")
        },
    )
}

/// The fault schedule happened: a ready worker was found for every signal.
fn signals_delivered(log: &FaultLog) -> Invariant {
    Invariant::new(
        "every scheduled worker signal was delivered",
        log.skipped.is_empty(),
        if log.skipped.is_empty() { format!("{} signals", log.signals.len()) } else { show(&log.skipped) },
    )
}

/// The supervisor kept answering.
fn status_answered(series: &Series) -> Invariant {
    Invariant::new(
        "status answered within 3 s every second",
        series.failures.is_empty(),
        if series.failures.is_empty() { format!("{} samples", series.samples.len()) } else { show(&series.failures) },
    )
}

/// Alive and ready at the end.
fn alive_at_end(fin: &Final) -> Invariant {
    Invariant::new(
        "daemon alive, socket present, health ready at the end",
        fin.alive && fin.socket_exists && fin.health == "ready",
        format!(
            "alive {}, socket {}, health {}{}",
            fin.alive,
            fin.socket_exists,
            fin.health,
            fin.healed_in_s.map_or(String::new(), |s| format!(" (all workers ready {s:.1} s after the load)"))
        ),
    )
}

/// Workers that ran a grow request, excluded from the worker growth check:
/// from its Done, from the samples that saw it running, from the signal
/// that hit it.
fn grow_pids(run: &Run) -> HashSet<u32> {
    let grow = |r: &&Record| r.fault == Some(FlagFault::Grow);
    let ids: HashSet<u64> = run.records.iter().filter(grow).map(|r| r.id).collect();
    let is_grow = |id: Option<u64>| id.is_some_and(|id| ids.contains(&id));
    run.records
        .iter()
        .filter(grow)
        .filter(|r| r.worker_pid != 0)
        .map(|r| r.worker_pid)
        .chain(run.series.samples.iter().flat_map(|s| &s.workers).filter(|w| is_grow(w.current_request)).map(|w| w.pid))
        .chain(run.log.signals.iter().filter(|s| is_grow(s.request)).map(|s| s.pid))
        .collect()
}

/// The supervisor's memory, start of the load to its end.
fn supervisor_growth(rss: &RssSummary) -> Invariant {
    let growth = rss.supervisor_end_mib - rss.supervisor_start_mib;
    Invariant::new(
        format!("supervisor RSS growth under {SUPERVISOR_GROWTH_MIB} MiB"),
        growth < SUPERVISOR_GROWTH_MIB && rss.supervisor_end_mib > 0.0,
        format!(
            "{:.1} -> {:.1} MiB ({:+.1}), peak {:.1}",
            rss.supervisor_start_mib, rss.supervisor_end_mib, growth, rss.supervisor_peak_mib
        ),
    )
}

/// Each worker's memory over its life (`excluded` grow-fault workers
/// left out by [`rss_summary`]).
fn worker_growth(rss: &RssSummary, excluded: usize) -> Invariant {
    Invariant::new(
        format!("worker RSS growth under {WORKER_GROWTH_MIB} MiB per worker"),
        rss.worker_max_growth_mib < WORKER_GROWTH_MIB,
        format!(
            "largest {:+.1} MiB (pid {}), peak {:.1} MiB, {} grow-fault worker(s) excluded",
            rss.worker_max_growth_mib, rss.worker_max_growth_pid, rss.worker_peak_mib, excluded
        ),
    )
}

/// A client that stops reading: with many of its requests answered and
/// unread, the supervisor must not be holding all of their audio (a short
/// text is ~80 KiB of samples; 50 of them ~4 MiB). Checked only when a run
/// made one send at least [`NONREADER_CHECK_MIN`] (the `backpressure`
/// scenario).
fn nonreader_bounded(rss: &RssSummary, nonreader_requests: u32) -> Option<Invariant> {
    if nonreader_requests < NONREADER_CHECK_MIN {
        return None;
    }
    let growth = rss.supervisor_peak_mib - rss.supervisor_start_mib;
    Some(Invariant::new(
        format!("supervisor does not buffer a non-reading client's replies without bound (< {NONREADER_GROWTH_MIB} MiB)"),
        growth < NONREADER_GROWTH_MIB,
        format!(
            "peak {:+.1} MiB with {} requests answered to a client that reads nothing ({:.0} KiB per request)",
            growth,
            nonreader_requests,
            growth * 1024.0 / nonreader_requests as f64
        ),
    ))
}

/// SIGTERM at the end (only when the harness started the daemon).
fn clean_shutdown(fin: &Final) -> Option<Invariant> {
    let (how, clean) = fin.shutdown.as_ref()?;
    Some(Invariant::new("SIGTERM at the end: clean exit, socket removed", *clean, how.clone()))
}

/// Requests per outcome name (`LOST` for no terminal reply).
fn outcome_counts(records: &[Record]) -> BTreeMap<String, usize> {
    let mut outcomes = BTreeMap::new();
    for r in records {
        *outcomes.entry(r.outcome.unwrap_or(Outcome::Lost).name()).or_insert(0) += 1;
    }
    outcomes
}

/// Faults per kind: worker signals, fault flags (`crash_flag`...), attacks,
/// and the non-reader's request count.
fn fault_counts(records: &[Record], log: &FaultLog) -> BTreeMap<String, usize> {
    let mut faults = BTreeMap::new();
    for s in &log.signals {
        *faults.entry(s.kind.to_string()).or_insert(0) += 1;
    }
    for r in records.iter().filter_map(|r| r.fault) {
        *faults.entry(format!("{r:?}_flag").to_lowercase()).or_insert(0) += 1;
    }
    for a in &log.attacks {
        *faults.entry(a.kind.to_string()).or_insert(0) += 1;
    }
    if log.nonreader_requests > 0 {
        faults.insert("nonreader_requests".into(), log.nonreader_requests as usize);
    }
    faults
}

/// The figures printed above the invariants.
fn summary(run: &Run, rss: RssSummary) -> Summary {
    let records = run.records;
    let lost = records.iter().filter(|r| r.outcome == Some(Outcome::Lost) || r.outcome.is_none()).count();
    let done: Vec<&Record> = records.iter().filter(|r| r.outcome == Some(Outcome::Done)).collect();
    let audio_seconds: f64 = done.iter().map(|r| r.audio_seconds).sum();
    let samples = &run.series.samples;
    Summary {
        requests: records.len(),
        outcomes: outcome_counts(records),
        faults: fault_counts(records, run.log),
        worker_restarts: run.fin.restarts,
        worker_recycles: run.fin.recycles,
        lost_replies: lost,
        ttfa_stream_ms: pcts(done.iter().filter(|r| r.stream).filter_map(|r| r.first_audio_ms).collect()),
        ttfa_all_ms: pcts(done.iter().filter_map(|r| r.first_audio_ms).collect()),
        total_ms: pcts(done.iter().filter_map(|r| r.total_ms).collect()),
        queue_ms: pcts(done.iter().map(|r| r.server_queue_ms as f64).collect()),
        audio_seconds,
        wall_seconds: run.wall_seconds,
        audio_per_wall: audio_seconds / run.wall_seconds.max(1e-9),
        rss,
        max_queue_depth: samples.iter().map(|s| s.queue_depth).max().unwrap_or(0),
        slowest_status_ms: samples.iter().map(|s| s.status_ms).fold(0.0, f64::max),
    }
}

pub fn print(title: &str, s: &Summary, inv: &[Invariant]) -> String {
    let mut o = String::new();
    let p = |x: &Pcts| format!("p50 {:.0} ms, p95 {:.0} ms, p99 {:.0} ms, max {:.0} ms (n={})", x.p50, x.p95, x.p99, x.max, x.n);
    o += &format!("{title}\n");
    let outs: Vec<String> = s.outcomes.iter().map(|(k, v)| format!("{k} {v}")).collect();
    o += &format!("  requests        {} ({})\n", s.requests, outs.join(", "));
    let fs: Vec<String> = s.faults.iter().map(|(k, v)| format!("{k} {v}")).collect();
    o += &format!("  faults injected {}\n", if fs.is_empty() { "none".into() } else { fs.join(", ") });
    o += &format!("  restarts        {} unplanned, {} recycles (daemon status)\n", s.worker_restarts, s.worker_recycles);
    o += &format!("  lost replies    {}\n", s.lost_replies);
    o += &format!("  first audio     streamed: {}\n", p(&s.ttfa_stream_ms));
    o += &format!("  total time      {}\n", p(&s.total_ms));
    o += &format!("  queue time      {}\n", p(&s.queue_ms));
    o += &format!(
        "  throughput      {:.3} audio s per wall s ({:.1} audio s in {:.1} s)\n",
        s.audio_per_wall, s.audio_seconds, s.wall_seconds
    );
    let r = &s.rss;
    o += &format!(
        "  supervisor RSS  start {:.1} MiB, end {:.1} MiB, peak {:.1} MiB\n",
        r.supervisor_start_mib, r.supervisor_end_mib, r.supervisor_peak_mib
    );
    o += &format!(
        "  worker RSS      start {:?} MiB, end {:?} MiB, peak {:.1} MiB, largest growth {:+.1} MiB\n",
        r.workers_start_mib, r.workers_end_mib, r.worker_peak_mib, r.worker_max_growth_mib
    );
    o += &format!("  queue depth max {}, slowest status {:.0} ms\n", s.max_queue_depth, s.slowest_status_ms);
    o += "  invariants\n";
    for i in inv {
        o += &format!("    {}  {}: {}\n", if i.pass { "PASS" } else { "FAIL" }, i.name, i.detail);
    }
    o
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::monitor::WorkerSample;
    use crate::texts::TextKind;

    fn rec(sent: f64, end: f64, fault: Option<FlagFault>) -> Record {
        Record {
            id: 1,
            client: 0,
            text_kind: TextKind::Short,
            chars: 5,
            stream: false,
            fault,
            sent_s: sent,
            sent: None,
            queued_ms: None,
            first_audio_ms: None,
            total_ms: None,
            end_s: Some(end),
            outcome: None,
            message: None,
            terminals: 1,
            after_terminal: 0,
            seq_gaps: 0,
            audio_frames: 0,
            samples: 0,
            sample_rate: 0,
            audio_seconds: 0.0,
            server_queue_ms: 0,
            synth_ms: 0,
            worker_pid: 0,
            retried: false,
        }
    }

    fn sig(kind: &'static str, t: f64, until: Option<f64>) -> FaultEvent {
        FaultEvent { t_s: t, kind, pid: 1, slot: 0, request: None, until_s: until }
    }

    #[test]
    fn percentiles_are_nearest_rank() {
        let p = pcts((1..=100).map(f64::from).collect());
        assert_eq!((p.p50, p.p95, p.p99, p.max, p.n), (50.0, 95.0, 99.0, 100.0, 100));
        assert_eq!(pcts(vec![7.0]).p99, 7.0);
        assert_eq!(pcts(vec![]).n, 0);
    }

    #[test]
    fn exposure_needs_the_request_in_flight() {
        let kill = [sig("sigkill", 10.0, None)];
        assert!(exposure(&rec(9.0, 11.0, None), &kill, 4.0).killed);
        assert!(!exposure(&rec(10.5, 11.0, None), &kill, 4.0).killed, "sent after the kill");
        assert!(!exposure(&rec(8.0, 9.5, None), &kill, 4.0).killed, "ended before the kill");
        // A stop lasts until SIGCONT or until hang detection could kill it.
        let stop = [sig("sigstop", 20.0, Some(26.0))];
        assert!(exposure(&rec(23.0, 24.0, None), &stop, 4.0).stopped);
        assert!(!exposure(&rec(25.5, 27.0, None), &stop, 4.0).stopped, "after hang_timeout + 1 s");
    }

    #[test]
    fn allowed_outcomes_follow_the_faults() {
        let none = Exposure { killed: false, stopped: false };
        let crashed = Outcome::Error(ErrorCode::WorkerCrashed);
        assert_eq!(allowed(None, &none, false), [Outcome::Done].into());
        assert_eq!(allowed(Some(FlagFault::Slow), &none, false), [Outcome::Done].into());
        assert_eq!(allowed(Some(FlagFault::Crash), &none, false), [crashed].into());
        assert_eq!(allowed(Some(FlagFault::Hang), &none, false), [crashed].into());
        let killed = Exposure { killed: true, stopped: false };
        assert_eq!(allowed(None, &killed, false), [Outcome::Done, crashed].into());
        let stopped = Exposure { killed: false, stopped: true };
        assert!(allowed(None, &stopped, false).contains(&Outcome::Error(ErrorCode::Timeout)));
        assert!(allowed(None, &none, true).contains(&Outcome::Error(ErrorCode::Overloaded)));
        for o in [Outcome::Lost, Outcome::Error(ErrorCode::Internal), Outcome::Error(ErrorCode::Unavailable)] {
            assert!(!allowed(None, &Exposure { killed: true, stopped: true }, true).contains(&o));
        }
    }

    /// A request that ended `done` with `secs` of audio at 22050 Hz.
    fn done(id: u64, secs: f64) -> Record {
        Record {
            id,
            outcome: Some(Outcome::Done),
            samples: (secs * 22050.0) as u64,
            sample_rate: 22050,
            audio_seconds: secs,
            ..rec(1.0, 2.0, None)
        }
    }

    fn worker(pid: u32, rss_mib: f64, current_request: Option<u64>) -> WorkerSample {
        WorkerSample { pid, slot: 0, state: "busy".into(), rss_mib, current_request }
    }

    fn sample(t_s: f64, supervisor_rss_mib: f64, workers: Vec<WorkerSample>) -> Sample {
        Sample {
            t_s,
            status_ms: 1.0,
            queue_depth: 0,
            connections: 1,
            supervisor_rss_mib,
            workers,
            worker_restarts: 0,
            worker_recycles: 0,
        }
    }

    fn fin() -> Final {
        Final {
            alive: true,
            socket_exists: true,
            health: "ready".into(),
            healed_in_s: Some(0.5),
            restarts: 0,
            recycles: 0,
            end_sample: None,
            shutdown: None,
        }
    }

    fn run<'a>(records: &'a [Record], log: &'a FaultLog, series: &'a Series, fin: &'a Final) -> Run<'a> {
        Run {
            records,
            log,
            series,
            fin,
            hang_timeout_s: 4.0,
            paced: false,
            wall_seconds: 10.0,
            unknown_replies: &[],
            conn_errors: &[],
        }
    }

    #[test]
    fn one_terminal_reply_each() {
        let ok = [done(1, 1.0), done(2, 1.0)];
        let c = one_terminal_reply(&ok);
        assert!(c.pass);
        assert_eq!(c.detail, "2 of 2");
        let twice = Record { terminals: 2, ..done(3, 1.0) };
        let none = Record { terminals: 0, ..done(4, 1.0) };
        let c = one_terminal_reply(&[done(1, 1.0), twice, none]);
        assert!(!c.pass);
        assert!(c.detail.starts_with("2 bad: id 0x3: 2 terminal replies"), "{}", c.detail);
    }

    #[test]
    fn stray_replies_unknown_ids_and_connection_errors_fail() {
        let (log, series, fin) = (FaultLog::default(), Series::default(), fin());
        let clean = [done(1, 1.0)];
        assert_eq!(no_stray_replies(&run(&clean, &log, &series, &fin)).detail, "0 stray replies");
        let late = [Record { after_terminal: 1, ..done(1, 1.0) }];
        assert!(!no_stray_replies(&run(&late, &log, &series, &fin)).pass);
        let gap = [Record { seq_gaps: 1, ..done(1, 1.0) }];
        assert!(!no_stray_replies(&run(&gap, &log, &series, &fin)).pass);
        let unknown = ["id 0x99".to_string()];
        let r = Run { unknown_replies: &unknown, ..run(&clean, &log, &series, &fin) };
        assert!(no_stray_replies(&r).detail.contains("reply for an id never sent: id 0x99"));
        let errors = ["frame_too_large".to_string()];
        let r = Run { conn_errors: &errors, ..run(&clean, &log, &series, &fin) };
        assert!(!no_stray_replies(&r).pass);
    }

    #[test]
    fn outcomes_are_judged_by_the_faults_met() {
        let (series, fin) = (Series::default(), fin());
        let crashed = Some(Outcome::Error(ErrorCode::WorkerCrashed));
        let records = [
            done(1, 1.0),
            // A crash flag ends worker_crashed; not a clean request.
            Record { id: 2, outcome: crashed, ..rec(1.0, 2.0, Some(FlagFault::Crash)) },
            // In flight at the kill: worker_crashed allowed; not clean.
            Record { id: 3, outcome: crashed, ..rec(4.0, 6.0, None) },
        ];
        let log = FaultLog { signals: vec![sig("sigkill", 5.0, None)], ..FaultLog::default() };
        let r = run(&records, &log, &series, &fin);
        assert!(outcomes_expected(&r).pass);
        let c = clean_requests_done(&r);
        assert!(c.pass);
        assert_eq!(c.detail, "1 of 1");

        // Without the kill, request 3 is clean and should have ended done.
        let quiet = FaultLog::default();
        let r = run(&records, &quiet, &series, &fin);
        assert!(outcomes_expected(&r).detail.starts_with("1: id 0x3"), "{}", outcomes_expected(&r).detail);
        let c = clean_requests_done(&r);
        assert!(!c.pass);
        assert!(c.detail.starts_with("1 of 2 did not: id 0x3: worker_crashed"), "{}", c.detail);

        // No terminal reply is never acceptable.
        let lost = [Record { outcome: None, ..rec(1.0, 2.0, Some(FlagFault::Crash)) }];
        assert!(!outcomes_expected(&run(&lost, &quiet, &series, &fin)).pass);

        // A run whose load never reached the daemon proves nothing.
        let c = clean_requests_done(&run(&[], &quiet, &series, &fin));
        assert!(!c.pass, "{}", c.detail);
    }

    #[test]
    fn done_needs_all_its_audio() {
        assert!(audio_complete(&[done(1, 1.5)]).pass);
        let short = Record { samples: 11025, ..done(2, 1.0) };
        let c = audio_complete(&[done(1, 1.5), short]);
        assert!(!c.pass);
        assert!(c.detail.starts_with("1: id 0x2: 11025 samples at 22050 Hz"), "{}", c.detail);
        assert!(!audio_complete(&[done(3, 0.0)]).pass, "a done without audio");
        // Errors carry no audio and are not judged here.
        assert!(audio_complete(&[Record { outcome: Some(Outcome::Error(ErrorCode::Timeout)), ..rec(1.0, 2.0, None) }]).pass);
    }

    #[test]
    fn attacks_signals_and_status_fail_on_any_complaint() {
        let bad = AttackResult { t_s: 1.0, kind: "malformed_frame", ok: false, detail: "closed".into() };
        let skipped = vec!["t=5.0s Kill: no ready worker".into()];
        let log = FaultLog { attacks: vec![bad], skipped, ..FaultLog::default() };
        assert_eq!(attacks_handled(&log).detail, "t=1.0s malformed_frame: closed");
        assert!(!attacks_handled(&log).pass);
        assert!(!signals_delivered(&log).pass);
        assert!(attacks_handled(&FaultLog::default()).pass);
        assert_eq!(signals_delivered(&FaultLog::default()).detail, "0 signals");
        let slow = Series { samples: vec![], failures: vec!["t=3.0s status took 3100 ms".into()] };
        assert!(!status_answered(&slow).pass);
        assert!(status_answered(&Series::default()).pass);
    }

    #[test]
    fn the_daemon_must_end_alive_and_ready() {
        assert!(alive_at_end(&fin()).pass);
        assert!(alive_at_end(&fin()).detail.ends_with("(all workers ready 0.5 s after the load)"));
        assert!(!alive_at_end(&Final { health: "degraded".into(), ..fin() }).pass);
        assert!(!alive_at_end(&Final { socket_exists: false, ..fin() }).pass);
        assert!(!alive_at_end(&Final { alive: false, ..fin() }).pass);
        assert!(clean_shutdown(&fin()).is_none(), "not our daemon: no SIGTERM check");
        let unclean = Final { shutdown: Some(("did not exit".into(), false)), ..fin() };
        assert!(!clean_shutdown(&unclean).unwrap().pass);
    }

    #[test]
    fn memory_growth_bounds() {
        // Worker 10 ran a grow request (id 7) and bloated; worker 11 grew a little.
        let samples = vec![
            sample(0.0, 10.0, vec![worker(10, 170.0, None), worker(11, 170.0, None)]),
            sample(1.0, 12.0, vec![worker(10, 500.0, Some(7)), worker(11, 200.0, None)]),
            sample(2.0, 11.0, vec![worker(10, 500.0, None), worker(11, 210.0, None)]),
        ];
        let series = Series { samples, failures: vec![] };
        let (log, fin) = (FaultLog::default(), fin());
        let records = [Record { id: 7, ..rec(0.5, 1.5, Some(FlagFault::Grow)) }];
        let r = run(&records, &log, &series, &fin);
        let grow = grow_pids(&r);
        assert_eq!(grow, [10].into());
        let rss = rss_summary(&series.samples, None, None, &grow);
        assert_eq!((rss.worker_max_growth_mib, rss.worker_max_growth_pid), (40.0, 11));
        assert!(worker_growth(&rss, grow.len()).pass);
        assert!(worker_growth(&rss, 1).detail.ends_with("1 grow-fault worker(s) excluded"));
        // Without the exclusion, worker 10's +330 MiB fails.
        let all = rss_summary(&series.samples, None, None, &HashSet::new());
        assert!(!worker_growth(&all, 0).pass);

        let s = supervisor_growth(&rss);
        assert!(s.pass);
        assert_eq!(s.detail, "10.0 -> 11.0 MiB (+1.0), peak 12.0");
        let leak = RssSummary { supervisor_end_mib: 10.0 + SUPERVISOR_GROWTH_MIB, ..rss.clone() };
        assert!(!supervisor_growth(&leak).pass);
        let unseen = RssSummary { supervisor_end_mib: 0.0, ..rss };
        assert!(!supervisor_growth(&unseen).pass, "no end sample is a failure");
    }

    #[test]
    fn the_nonreader_bound_applies_from_enough_requests() {
        let peaked = [sample(0.0, 10.0, vec![]), sample(1.0, 16.0, vec![]), sample(2.0, 10.0, vec![])];
        let rss = rss_summary(&peaked, None, None, &HashSet::new());
        assert!(nonreader_bounded(&rss, NONREADER_CHECK_MIN - 1).is_none());
        let c = nonreader_bounded(&rss, 60).unwrap();
        assert!(!c.pass, "a 6 MiB peak over 60 unread replies");
        assert!(c.detail.starts_with("peak +6.0 MiB with 60 requests"), "{}", c.detail);
        let flat = rss_summary(&[sample(0.0, 10.0, vec![]), sample(1.0, 11.0, vec![])], None, None, &HashSet::new());
        assert!(nonreader_bounded(&flat, 60).unwrap().pass);
    }

    #[test]
    fn evaluate_lists_every_invariant_in_order_and_counts_the_summary() {
        let series = Series { samples: vec![sample(0.0, 10.0, vec![]), sample(1.0, 10.5, vec![])], failures: vec![] };
        let log = FaultLog {
            signals: vec![sig("sigkill", 5.0, None)],
            attacks: vec![AttackResult { t_s: 1.0, kind: "malformed_frame", ok: true, detail: String::new() }],
            nonreader_requests: NONREADER_CHECK_MIN,
            ..FaultLog::default()
        };
        let fin = Final { shutdown: Some(("exit status: 0".into(), true)), ..fin() };
        let crashed = Some(Outcome::Error(ErrorCode::WorkerCrashed));
        let crashed = Record { id: 2, outcome: crashed, ..rec(1.0, 2.0, Some(FlagFault::Crash)) };
        let records = [done(1, 2.0), crashed, Record { id: 3, outcome: None, terminals: 0, ..rec(1.0, 2.0, None) }];
        let (inv, s) = evaluate(&run(&records, &log, &series, &fin));
        let names: Vec<&str> = inv.iter().map(|i| i.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "every request got exactly one terminal reply",
                "no reply after the terminal one, none for unknown ids, audio frames in order",
                "no outcome outside the expected set for the faults injected",
                "every valid request without an injected fault ended done",
                "every done request delivered all its audio",
                "malformed/oversized/truncated frames, disconnects and non-readers handled",
                "every scheduled worker signal was delivered",
                "status answered within 3 s every second",
                "daemon alive, socket present, health ready at the end",
                "supervisor RSS growth under 20 MiB",
                "worker RSS growth under 250 MiB per worker",
                "supervisor does not buffer a non-reading client's replies without bound (< 4 MiB)",
                "SIGTERM at the end: clean exit, socket removed",
            ]
        );
        let failed: Vec<&str> = inv.iter().filter(|i| !i.pass).map(|i| i.name.as_str()).collect();
        assert_eq!(failed, [names[0], names[2], names[3]], "request 3 got no reply");
        assert_eq!(s.requests, 3);
        assert_eq!(s.lost_replies, 1);
        assert_eq!(s.outcomes, [("LOST".into(), 1), ("done".into(), 1), ("worker_crashed".into(), 1)].into());
        assert_eq!(
            s.faults,
            [
                ("crash_flag".into(), 1),
                ("malformed_frame".into(), 1),
                ("nonreader_requests".into(), NONREADER_CHECK_MIN as usize),
                ("sigkill".into(), 1)
            ]
            .into()
        );
        assert_eq!((s.audio_seconds, s.audio_per_wall), (2.0, 0.2));
        assert_eq!((s.rss.supervisor_start_mib, s.rss.supervisor_end_mib), (10.0, 10.5));
    }
}
