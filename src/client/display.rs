//! Human-readable rendering of status and voices for ttsctl.
//!
//! Pure formatting of protocol values; never does I/O.
use crate::protocol::{StatusReply, VoiceStatus, WorkerState};
use std::fmt::Write;

pub fn status(s: &StatusReply) -> String {
    let mut o = String::new();
    let _ = writeln!(o, "ttsd {} pid {} up {:.1} s: {}", s.server_version, s.pid, s.uptime_ms as f64 / 1000.0, s.state.as_str());
    if let Some(r) = &s.degraded_reason {
        let _ = writeln!(o, "  reason: {r}");
    }
    let _ = writeln!(
        o,
        "queue {}/{}  connections {}  restarts {}  recycles {}",
        s.queue_depth, s.queue_capacity, s.connections, s.worker_restarts, s.worker_recycles
    );
    let _ = write!(o, "requests: done {}", s.totals.done);
    for (code, n) in &s.totals.errors {
        let _ = write!(o, ", {code} {n}");
    }
    let _ = writeln!(o);
    let _ = writeln!(o, "workers ({} configured):", s.workers_configured);
    for w in &s.workers {
        let state = match w.state {
            WorkerState::Starting => "starting",
            WorkerState::Idle => "idle",
            WorkerState::Busy => "busy",
            WorkerState::Stopping => "stopping",
        };
        let _ = writeln!(
            o,
            "  slot {} pid {:>7} {:<8}{} jobs {:>5} restarts {} rss {:>5} MiB heartbeat {} ms ago{}",
            w.slot,
            w.pid,
            state,
            if w.retiring { " (retiring)" } else { "" },
            w.jobs_done,
            w.restarts,
            w.rss_bytes >> 20,
            w.heartbeat_age_ms,
            w.current_request.map(|r| format!(" request {r}")).unwrap_or_default()
        );
    }
    o.push_str(&voices(&s.voices));
    o
}

pub fn voices(v: &[VoiceStatus]) -> String {
    let mut o = String::from("voices:\n");
    for v in v {
        let _ = write!(o, "  {} [{:?}] {}", v.name, v.state, v.path);
        if let Some(i) = &v.info {
            let _ = write!(o, " ({}, {}, {} Hz, {} speaker(s))", i.language, i.quality, i.sample_rate, i.num_speakers);
        }
        if let Some(e) = &v.error {
            let _ = write!(o, " error: {e}");
        }
        o.push('\n');
    }
    o
}
