//! `ttsctl metrics`: the status figures in the Prometheus text exposition
//! format (version 0.0.4), for a textfile collector or an exec exporter.
//!
//! Every metric has `# HELP` and `# TYPE` lines and the `ttsd_` prefix;
//! workers are labelled by slot and pid, request totals by outcome. Pure
//! formatting; never does I/O.
use super::table::{voice_state, worker_state};
use crate::protocol::{ErrorCode, HealthState, StatusReply, VoiceLoadState, WorkerState};
use std::fmt::Write;

/// Escape a label value (backslash, double quote, newline).
pub fn escape(v: &str) -> String {
    v.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

struct Out(String);

impl Out {
    fn family(&mut self, name: &str, kind: &str, help: &str) {
        let _ = writeln!(self.0, "# HELP ttsd_{name} {help}");
        let _ = writeln!(self.0, "# TYPE ttsd_{name} {kind}");
    }

    fn sample(&mut self, name: &str, labels: &[(&str, String)], value: impl std::fmt::Display) {
        let _ = write!(self.0, "ttsd_{name}");
        if !labels.is_empty() {
            let l: Vec<String> = labels.iter().map(|(k, v)| format!("{k}=\"{}\"", escape(v))).collect();
            let _ = write!(self.0, "{{{}}}", l.join(","));
        }
        let _ = writeln!(self.0, " {value}");
    }

    fn one(&mut self, name: &str, kind: &str, help: &str, value: impl std::fmt::Display) {
        self.family(name, kind, help);
        self.sample(name, &[], value);
    }
}

pub fn render(s: &StatusReply) -> String {
    let mut o = Out(String::new());
    o.one("up", "gauge", "1 when ttsd answered the status request.", 1);
    o.family("info", "gauge", "Version and pid of the daemon (always 1).");
    o.sample("info", &[("version", s.server_version.clone()), ("pid", s.pid.to_string())], 1);
    o.one("uptime_seconds", "gauge", "Seconds since the daemon started.", s.uptime_ms as f64 / 1000.0);
    o.family("state", "gauge", "1 for the daemon's current health state, 0 for the others.");
    for st in [HealthState::Ready, HealthState::Degraded, HealthState::Starting, HealthState::Stopping] {
        o.sample("state", &[("state", st.as_str().into())], u8::from(s.state == st));
    }
    o.one("queue_depth", "gauge", "Requests waiting for a worker.", s.queue_depth);
    o.one("queue_capacity", "gauge", "Requests that may wait for a worker at most.", s.queue_capacity);
    o.one("connections", "gauge", "Open client connections.", s.connections);
    o.one("workers_configured", "gauge", "Worker processes the daemon keeps.", s.workers_configured);
    o.one("worker_restarts_total", "counter", "Unplanned worker restarts (crashes, kills, load failures).", s.worker_restarts);
    o.one("worker_recycles_total", "counter", "Planned worker replacements (max_requests, max_rss_mb, reload).", s.worker_recycles);

    o.family("requests_total", "counter", "Finished synthesize requests by outcome (done, or the error code).");
    o.sample("requests_total", &[("outcome", "done".into())], s.totals.done);
    for code in ErrorCode::ALL {
        let n = s.totals.errors.iter().find(|(c, _)| *c == code).map_or(0, |(_, n)| *n);
        o.sample("requests_total", &[("outcome", code.as_str().into())], n);
    }

    let lw = |w: &crate::protocol::WorkerStatus| vec![("slot", w.slot.to_string()), ("pid", w.pid.to_string())];
    o.family("worker_rss_bytes", "gauge", "Resident memory of each worker process.");
    for w in &s.workers {
        o.sample("worker_rss_bytes", &lw(w), w.rss_bytes);
    }
    o.family("worker_jobs_total", "counter", "Requests each worker process finished.");
    for w in &s.workers {
        o.sample("worker_jobs_total", &lw(w), w.jobs_done);
    }
    o.family("worker_slot_restarts_total", "counter", "Unplanned restarts of each worker slot.");
    for w in &s.workers {
        o.sample("worker_slot_restarts_total", &lw(w), w.restarts);
    }
    o.family("worker_heartbeat_age_seconds", "gauge", "Seconds since each worker's last heartbeat.");
    for w in &s.workers {
        o.sample("worker_heartbeat_age_seconds", &lw(w), w.heartbeat_age_ms as f64 / 1000.0);
    }
    o.family("worker_uptime_seconds", "gauge", "Seconds since each worker process started.");
    for w in &s.workers {
        o.sample("worker_uptime_seconds", &lw(w), w.uptime_ms as f64 / 1000.0);
    }
    o.family("worker_state", "gauge", "1 for each worker's current state, 0 for the others.");
    for w in &s.workers {
        for st in [WorkerState::Starting, WorkerState::Idle, WorkerState::Busy, WorkerState::Stopping] {
            let mut l = lw(w);
            l.push(("state", worker_state(st).into()));
            o.sample("worker_state", &l, u8::from(w.state == st));
        }
    }
    o.family("voice_loaded", "gauge", "1 when the voice is loaded, 0 when pending or failed.");
    for v in &s.voices {
        o.sample(
            "voice_loaded",
            &[("voice", v.name.clone()), ("state", voice_state(v.state).into())],
            u8::from(v.state == VoiceLoadState::Loaded),
        );
    }
    o.0
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::{Totals, WorkerStatus};

    #[test]
    fn exposition_format() {
        let s = StatusReply {
            server_version: "0.1.0".into(),
            pid: 10,
            uptime_ms: 1500,
            state: HealthState::Ready,
            degraded_reason: None,
            queue_depth: 1,
            queue_capacity: 64,
            connections: 2,
            workers_configured: 1,
            workers: vec![WorkerStatus {
                slot: 0,
                pid: 11,
                state: WorkerState::Busy,
                retiring: false,
                jobs_done: 5,
                restarts: 1,
                rss_bytes: 300 << 20,
                heartbeat_age_ms: 250,
                uptime_ms: 1000,
                current_request: Some(3),
            }],
            worker_restarts: 1,
            worker_recycles: 0,
            totals: Totals { done: 5, errors: vec![(ErrorCode::Timeout, 2)] },
            voices: vec![],
        };
        let m = render(&s);
        assert!(m.contains("# TYPE ttsd_worker_rss_bytes gauge\nttsd_worker_rss_bytes{slot=\"0\",pid=\"11\"} 314572800\n"));
        assert!(m.contains("ttsd_requests_total{outcome=\"timeout\"} 2\n"));
        assert!(m.contains("ttsd_requests_total{outcome=\"done\"} 5\n"));
        assert!(m.contains("ttsd_worker_state{slot=\"0\",pid=\"11\",state=\"busy\"} 1\n"));
        assert!(m.contains("ttsd_uptime_seconds 1.5\n"));
        // Every sample line belongs to a family announced just before it.
        let mut declared = std::collections::HashSet::new();
        for line in m.lines() {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                declared.insert(rest.split(' ').next().unwrap().to_string());
            } else if !line.starts_with('#') {
                let name = line.split(['{', ' ']).next().unwrap();
                assert!(declared.contains(name), "{line}");
                assert!(name.starts_with("ttsd_"));
            }
        }
        assert_eq!(escape("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
    }
}
