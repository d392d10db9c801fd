//! The verdict: invariants checked against the records, the fault timeline
//! and the memory series; the summary; the JSON report.
//!
//! Owns which outcomes are acceptable for which faults (see [`allowed`]).
//! Pure over what the run collected; never talks to the daemon.
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

#[derive(Debug, Clone, Serialize)]
pub struct Invariant {
    pub name: String,
    pub pass: bool,
    pub detail: String,
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

#[allow(clippy::too_many_arguments)]
pub fn evaluate(
    records: &[Record],
    log: &FaultLog,
    series: &Series,
    fin: &Final,
    hang_timeout_s: f64,
    paced: bool,
    wall_seconds: f64,
    unknown_replies: &[String],
    conn_errors: &[String],
) -> (Vec<Invariant>, Summary) {
    let mut inv = Vec::new();
    let mut check = |name: &str, pass: bool, detail: String| inv.push(Invariant { name: name.into(), pass, detail });
    let show = |v: &[String]| v.iter().take(5).cloned().collect::<Vec<_>>().join("; ");

    // 1. Exactly one terminal reply per request.
    let not_one: Vec<String> = records
        .iter()
        .filter(|r| r.terminals != 1)
        .map(|r| format!("id {:#x}: {} terminal replies ({})", r.id, r.terminals, r.message.as_deref().unwrap_or("")))
        .collect();
    let lost = records.iter().filter(|r| r.outcome == Some(Outcome::Lost) || r.outcome.is_none()).count();
    check(
        "every request got exactly one terminal reply",
        not_one.is_empty(),
        if not_one.is_empty() { format!("{} of {}", records.len(), records.len()) } else { format!("{} bad: {}", not_one.len(), show(&not_one)) },
    );

    // 2. Nothing after the terminal reply, nothing for unknown ids, audio in order.
    let after: Vec<String> = records
        .iter()
        .filter(|r| r.after_terminal > 0 || r.seq_gaps > 0)
        .map(|r| format!("id {:#x}: {} replies after the terminal one, {} seq gaps", r.id, r.after_terminal, r.seq_gaps))
        .chain(unknown_replies.iter().map(|u| format!("reply for an id never sent: {u}")))
        .chain(conn_errors.iter().map(|e| format!("connection-level error on a load connection: {e}")))
        .collect();
    check(
        "no reply after the terminal one, none for unknown ids, audio frames in order",
        after.is_empty(),
        if after.is_empty() { "0 stray replies".into() } else { format!("{}: {}", after.len(), show(&after)) },
    );

    // 3. Outcomes within the expected set for the faults each request met.
    let mut outside = Vec::new();
    let mut clean = 0;
    let mut clean_not_done = Vec::new();
    for r in records {
        let e = exposure(r, &log.signals, hang_timeout_s);
        let ok = allowed(r.fault, &e, paced);
        let got = r.outcome.unwrap_or(Outcome::Lost);
        if !ok.contains(&got) {
            outside.push(format!(
                "id {:#x} ({:?}, killed {}, stopped {}): {} {}",
                r.id,
                r.fault,
                e.killed,
                e.stopped,
                got.name(),
                r.message.as_deref().unwrap_or("")
            ));
        }
        if matches!(r.fault, None | Some(FlagFault::Slow) | Some(FlagFault::Grow)) && !e.killed && !e.stopped {
            clean += 1;
            if got != Outcome::Done {
                clean_not_done.push(format!("id {:#x}: {} {}", r.id, got.name(), r.message.as_deref().unwrap_or("")));
            }
        }
    }
    check(
        "no outcome outside the expected set for the faults injected",
        outside.is_empty(),
        if outside.is_empty() { "all within their sets".into() } else { format!("{}: {}", outside.len(), show(&outside)) },
    );
    check(
        "every valid request without an injected fault ended done",
        clean_not_done.is_empty(),
        if clean_not_done.is_empty() {
            format!("{clean} of {clean}")
        } else {
            format!("{} of {clean} did not: {}", clean_not_done.len(), show(&clean_not_done))
        },
    );

    // 4. Done means complete audio: the samples received match audio_seconds.
    let bad_audio: Vec<String> = records
        .iter()
        .filter(|r| r.outcome == Some(Outcome::Done))
        .filter(|r| {
            r.audio_seconds <= 0.0
                || r.sample_rate == 0
                || (r.samples as f64 / r.sample_rate as f64 - r.audio_seconds).abs() > 0.01
        })
        .map(|r| format!("id {:#x}: {} samples at {} Hz, Done says {:.3} s", r.id, r.samples, r.sample_rate, r.audio_seconds))
        .collect();
    check(
        "every done request delivered all its audio",
        bad_audio.is_empty(),
        if bad_audio.is_empty() { "samples match audio_seconds".into() } else { format!("{}: {}", bad_audio.len(), show(&bad_audio)) },
    );

    // 5. Misbehaving clients answered per the protocol.
    let bad_attacks: Vec<&AttackResult> = log.attacks.iter().filter(|a| !a.ok).collect();
    check(
        "malformed/oversized/truncated frames, disconnects and non-readers handled",
        bad_attacks.is_empty(),
        if bad_attacks.is_empty() {
            format!("{} attacks", log.attacks.len())
        } else {
            bad_attacks.iter().take(5).map(|a| format!("t={:.1}s {}: {}", a.t_s, a.kind, a.detail)).collect::<Vec<_>>().join("; ")
        },
    );

    check(
        "every scheduled worker signal was delivered",
        log.skipped.is_empty(),
        if log.skipped.is_empty() { format!("{} signals", log.signals.len()) } else { show(&log.skipped) },
    );

    // 6. The supervisor kept answering.
    check(
        "status answered within 3 s every second",
        series.failures.is_empty(),
        if series.failures.is_empty() { format!("{} samples", series.samples.len()) } else { show(&series.failures) },
    );

    // 7. Alive and ready at the end.
    check(
        "daemon alive, socket present, health ready at the end",
        fin.alive && fin.socket_exists && fin.health == "ready",
        format!(
            "alive {}, socket {}, health {}{}",
            fin.alive,
            fin.socket_exists,
            fin.health,
            fin.healed_in_s.map_or(String::new(), |s| format!(" (all workers ready {s:.1} s after the load)"))
        ),
    );

    // 8. Memory.
    // Workers that ran a grow request: from its Done, from the samples that
    // saw it running, from the signal that hit it.
    let grow_ids: HashSet<u64> = records.iter().filter(|r| r.fault == Some(FlagFault::Grow)).map(|r| r.id).collect();
    let grow_pids: HashSet<u32> = records
        .iter()
        .filter(|r| r.fault == Some(FlagFault::Grow) && r.worker_pid != 0)
        .map(|r| r.worker_pid)
        .chain(series.samples.iter().flat_map(|s| s.workers.iter()).filter(|w| w.current_request.is_some_and(|id| grow_ids.contains(&id))).map(|w| w.pid))
        .chain(log.signals.iter().filter(|s| s.request.is_some_and(|id| grow_ids.contains(&id))).map(|s| s.pid))
        .collect();
    let start = series.samples.first();
    let rss = rss_summary(&series.samples, start, fin.end_sample.as_ref(), &grow_pids);
    let sup_growth = rss.supervisor_end_mib - rss.supervisor_start_mib;
    check(
        &format!("supervisor RSS growth under {SUPERVISOR_GROWTH_MIB} MiB"),
        sup_growth < SUPERVISOR_GROWTH_MIB && rss.supervisor_end_mib > 0.0,
        format!(
            "{:.1} -> {:.1} MiB ({:+.1}), peak {:.1}",
            rss.supervisor_start_mib, rss.supervisor_end_mib, sup_growth, rss.supervisor_peak_mib
        ),
    );
    check(
        &format!("worker RSS growth under {WORKER_GROWTH_MIB} MiB per worker"),
        rss.worker_max_growth_mib < WORKER_GROWTH_MIB,
        format!(
            "largest {:+.1} MiB (pid {}), peak {:.1} MiB, {} grow-fault worker(s) excluded",
            rss.worker_max_growth_mib,
            rss.worker_max_growth_pid,
            rss.worker_peak_mib,
            grow_pids.len()
        ),
    );
    // A client that stops reading: with many of its requests answered and
    // unread, the supervisor must not be holding all of their audio (a
    // short text is ~80 KiB of samples; 50 of them ~4 MiB). Checked only
    // when a run made one send at least 50 (the `backpressure` scenario).
    if log.nonreader_requests >= NONREADER_CHECK_MIN {
        let growth = rss.supervisor_peak_mib - rss.supervisor_start_mib;
        check(
            &format!("supervisor does not buffer a non-reading client's replies without bound (< {NONREADER_GROWTH_MIB} MiB)"),
            growth < NONREADER_GROWTH_MIB,
            format!(
                "peak {:+.1} MiB with {} requests answered to a client that reads nothing ({:.0} KiB per request)",
                growth,
                log.nonreader_requests,
                growth * 1024.0 / log.nonreader_requests as f64
            ),
        );
    }
    if let Some((how, clean)) = &fin.shutdown {
        check("SIGTERM at the end: clean exit, socket removed", *clean, how.clone());
    }

    // Summary.
    let mut outcomes = BTreeMap::new();
    for r in records {
        *outcomes.entry(r.outcome.unwrap_or(Outcome::Lost).name()).or_insert(0) += 1;
    }
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
    let done: Vec<&Record> = records.iter().filter(|r| r.outcome == Some(Outcome::Done)).collect();
    let audio_seconds: f64 = done.iter().map(|r| r.audio_seconds).sum();
    let summary = Summary {
        requests: records.len(),
        outcomes,
        faults,
        worker_restarts: fin.restarts,
        worker_recycles: fin.recycles,
        lost_replies: lost,
        ttfa_stream_ms: pcts(done.iter().filter(|r| r.stream).filter_map(|r| r.first_audio_ms).collect()),
        ttfa_all_ms: pcts(done.iter().filter_map(|r| r.first_audio_ms).collect()),
        total_ms: pcts(done.iter().filter_map(|r| r.total_ms).collect()),
        queue_ms: pcts(done.iter().map(|r| r.server_queue_ms as f64).collect()),
        audio_seconds,
        wall_seconds,
        audio_per_wall: audio_seconds / wall_seconds.max(1e-9),
        rss,
        max_queue_depth: series.samples.iter().map(|s| s.queue_depth).max().unwrap_or(0),
        slowest_status_ms: series.samples.iter().map(|s| s.status_ms).fold(0.0, f64::max),
    };
    (inv, summary)
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
}
