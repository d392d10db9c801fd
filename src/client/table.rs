//! Readable tables of status and voices for ttsctl (the default output of
//! `ttsctl status` and `ttsctl voices`).
//!
//! Pure formatting of protocol values; never does I/O.
use crate::protocol::{StatusReply, VoiceLoadState, VoiceStatus, WorkerState};
use std::fmt::Write;

/// Columns padded to their widest cell; the first row is the header.
pub fn render(rows: &[Vec<String>], indent: &str) -> String {
    let cols = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> =
        (0..cols).map(|c| rows.iter().filter_map(|r| r.get(c)).map(|s| s.chars().count()).max().unwrap_or(0)).collect();
    let mut o = String::new();
    for r in rows {
        let mut line = String::from(indent);
        for (c, cell) in r.iter().enumerate() {
            if c + 1 == r.len() {
                line.push_str(cell);
            } else {
                let _ = write!(line, "{cell:<w$}  ", w = widths[c]);
            }
        }
        o.push_str(line.trim_end());
        o.push('\n');
    }
    o
}

/// "3d 4h", "2h 5m", "4m 10s", "12.3s".
pub fn duration(ms: u64) -> String {
    let s = ms / 1000;
    match s {
        0..=59 => format!("{:.1}s", ms as f64 / 1000.0),
        60..=3599 => format!("{}m {}s", s / 60, s % 60),
        3600..=86399 => format!("{}h {}m", s / 3600, (s % 3600) / 60),
        _ => format!("{}d {}h", s / 86400, (s % 86400) / 3600),
    }
}

fn mib(bytes: u64) -> String {
    format!("{:.0} MiB", bytes as f64 / (1024.0 * 1024.0))
}

pub fn worker_state(s: WorkerState) -> &'static str {
    match s {
        WorkerState::Starting => "starting",
        WorkerState::Idle => "idle",
        WorkerState::Busy => "busy",
        WorkerState::Stopping => "stopping",
    }
}

pub fn voice_state(s: VoiceLoadState) -> &'static str {
    match s {
        VoiceLoadState::Pending => "pending",
        VoiceLoadState::Loaded => "loaded",
        VoiceLoadState::Failed => "failed",
    }
}

pub fn status(s: &StatusReply) -> String {
    let mut o = String::new();
    let _ = writeln!(o, "ttsd {} (pid {}): {}, up {}", s.server_version, s.pid, s.state.as_str(), duration(s.uptime_ms));
    if let Some(r) = &s.degraded_reason {
        let _ = writeln!(o, "  why: {r}");
    }
    let _ = writeln!(
        o,
        "queue {}/{}   connections {}   worker restarts {}   recycles {}",
        s.queue_depth, s.queue_capacity, s.connections, s.worker_restarts, s.worker_recycles
    );
    let errors: u64 = s.totals.errors.iter().map(|(_, n)| n).sum();
    let _ = write!(o, "requests: {} done, {} failed", s.totals.done, errors);
    if !s.totals.errors.is_empty() {
        let parts: Vec<String> = s.totals.errors.iter().map(|(c, n)| format!("{c} {n}")).collect();
        let _ = write!(o, " ({})", parts.join(", "));
    }
    o.push('\n');
    let _ = writeln!(o, "\nworkers ({} of {} configured):", s.workers.len(), s.workers_configured);
    let mut rows = vec![["SLOT", "PID", "STATE", "JOBS", "RESTARTS", "RSS", "HEARTBEAT", "UP", "REQUEST"]
        .iter()
        .map(|s| s.to_string())
        .collect::<Vec<_>>()];
    for w in &s.workers {
        rows.push(vec![
            w.slot.to_string(),
            w.pid.to_string(),
            format!("{}{}", worker_state(w.state), if w.retiring { " (retiring)" } else { "" }),
            w.jobs_done.to_string(),
            w.restarts.to_string(),
            mib(w.rss_bytes),
            format!("{} ms ago", w.heartbeat_age_ms),
            duration(w.uptime_ms),
            w.current_request.map(|r| r.to_string()).unwrap_or_else(|| "-".into()),
        ]);
    }
    o.push_str(&render(&rows, "  "));
    o.push('\n');
    o.push_str(&voices(&s.voices, None));
    o
}

pub fn voices(v: &[VoiceStatus], default_voice: Option<&str>) -> String {
    let mut rows = vec![["VOICE", "STATE", "LANGUAGE", "QUALITY", "RATE", "SPEAKERS", "PATH"]
        .iter()
        .map(|s| s.to_string())
        .collect::<Vec<_>>()];
    for v in v {
        let name = if Some(v.name.as_str()) == default_voice { format!("{} (default)", v.name) } else { v.name.clone() };
        let (lang, quality, rate, speakers) = match &v.info {
            Some(i) => (i.language.clone(), i.quality.clone(), format!("{} Hz", i.sample_rate), i.num_speakers.to_string()),
            None => ("-".into(), "-".into(), "-".into(), "-".into()),
        };
        rows.push(vec![name, voice_state(v.state).into(), lang, quality, rate, speakers, v.path.clone()]);
    }
    let mut o = String::from("voices:\n");
    o.push_str(&render(&rows, "  "));
    for v in v {
        if let Some(e) = &v.error {
            let _ = writeln!(o, "  {}: {e}", v.name);
        }
    }
    o
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn columns_line_up() {
        let rows = vec![vec!["A".to_string(), "BB".into(), "C".into()], vec!["long".into(), "x".into(), "y".into()]];
        assert_eq!(render(&rows, ""), "A     BB  C\nlong  x   y\n");
        assert_eq!(duration(1500), "1.5s");
        assert_eq!(duration(125_000), "2m 5s");
        assert_eq!(duration(2 * 86_400_000 + 3_600_000), "2d 1h");
    }
}
