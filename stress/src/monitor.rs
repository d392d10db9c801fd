//! Once a second: the daemon's status (queue depth, workers, restarts) and
//! the resident memory of the supervisor and every worker from /proc.
//!
//! Owns the time series and the "status answered in time" count. Reads
//! only; never signals anything.
use crate::conn::{handshake, MAX_REPLY};
use serde::Serialize;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use ttsd::protocol::{self, Reply, Request, StatusReply, WorkerState};

/// A status query slower than this counts as not answered.
pub const STATUS_LIMIT: Duration = Duration::from_secs(3);

#[derive(Debug, Clone, Serialize)]
pub struct WorkerSample {
    pub pid: u32,
    pub slot: u32,
    pub state: String,
    pub rss_mib: f64,
    pub current_request: Option<u64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Sample {
    pub t_s: f64,
    pub status_ms: f64,
    pub queue_depth: u32,
    pub connections: u32,
    pub supervisor_rss_mib: f64,
    pub workers: Vec<WorkerSample>,
    pub worker_restarts: u64,
    pub worker_recycles: u64,
}

#[derive(Default)]
pub struct Series {
    pub samples: Vec<Sample>,
    pub failures: Vec<String>,
}

/// VmRSS of `pid` in MiB, from /proc (None once it is gone).
pub fn rss_mib(pid: u32) -> Option<f64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = s.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024.0)
}

/// A status query on its own connection, with a deadline.
pub struct StatusConn {
    path: PathBuf,
    s: Option<UnixStream>,
}

impl StatusConn {
    pub fn new(path: &Path) -> Self {
        Self { path: path.to_path_buf(), s: None }
    }

    pub fn status(&mut self) -> Result<StatusReply, String> {
        self.query(Request::Status).and_then(|r| match r {
            Reply::Status(s) => Ok(s),
            other => Err(format!("unexpected {other:.80?}")),
        })
    }

    pub fn query(&mut self, req: Request) -> Result<Reply, String> {
        if self.s.is_none() {
            let s = handshake(&self.path, "stress-monitor").map_err(|e| format!("{e:#}"))?;
            s.set_read_timeout(Some(STATUS_LIMIT)).map_err(|e| e.to_string())?;
            self.s = Some(s);
        }
        let s = self.s.as_mut().expect("set above");
        let r = protocol::write_frame(s, &req)
            .map_err(|e| e.to_string())
            .and_then(|()| protocol::read_frame::<Reply, _>(s, MAX_REPLY).map_err(|e| e.to_string()));
        match r {
            Ok(Some(reply)) => Ok(reply),
            Ok(None) => {
                self.s = None;
                Err("closed".into())
            }
            Err(e) => {
                self.s = None;
                Err(e)
            }
        }
    }
}

pub fn sample(conn: &mut StatusConn, t0: Instant) -> Result<Sample, String> {
    let t = Instant::now();
    let st = conn.status()?;
    let status_ms = t.elapsed().as_secs_f64() * 1000.0;
    Ok(Sample {
        t_s: t.duration_since(t0).as_secs_f64(),
        status_ms,
        queue_depth: st.queue_depth,
        connections: st.connections,
        supervisor_rss_mib: rss_mib(st.pid).unwrap_or(0.0),
        workers: st
            .workers
            .iter()
            .map(|w| WorkerSample {
                pid: w.pid,
                slot: w.slot,
                state: match w.state {
                    WorkerState::Starting => "starting",
                    WorkerState::Idle => "idle",
                    WorkerState::Busy => "busy",
                    WorkerState::Stopping => "stopping",
                }
                .into(),
                rss_mib: rss_mib(w.pid).unwrap_or(0.0),
                current_request: w.current_request,
            })
            .collect(),
        worker_restarts: st.worker_restarts,
        worker_recycles: st.worker_recycles,
    })
}

/// Sample every second until `stop`.
pub fn run(path: PathBuf, t0: Instant, stop: Arc<AtomicBool>, series: Arc<Mutex<Series>>, verbose: bool) {
    let mut conn = StatusConn::new(&path);
    let mut next = Instant::now();
    while !stop.load(Ordering::SeqCst) {
        match sample(&mut conn, t0) {
            Ok(s) => {
                if verbose {
                    let ws: Vec<String> =
                        s.workers.iter().map(|w| format!("{}:{}:{:.0}M", w.pid, w.state, w.rss_mib)).collect();
                    eprintln!(
                        "[{:6.1}s] queue {:2} conns {:2} sup {:.1}M workers [{}] restarts {}",
                        s.t_s,
                        s.queue_depth,
                        s.connections,
                        s.supervisor_rss_mib,
                        ws.join(" "),
                        s.worker_restarts
                    );
                }
                if s.status_ms > STATUS_LIMIT.as_secs_f64() * 1000.0 {
                    series.lock().unwrap().failures.push(format!("t={:.1}s status took {:.0} ms", s.t_s, s.status_ms));
                }
                series.lock().unwrap().samples.push(s);
            }
            Err(e) => {
                let t = t0.elapsed().as_secs_f64();
                series.lock().unwrap().failures.push(format!("t={t:.1}s status failed: {e}"));
            }
        }
        next += Duration::from_secs(1);
        let now = Instant::now();
        if next > now {
            std::thread::sleep(next - now);
        } else {
            next = now;
        }
    }
}
