//! The daemon under test when the harness starts its own: a temporary
//! directory with a config and the socket, the ttsd process, its log.
//!
//! Owns starting, the "ready" wait, and the final SIGTERM. Never used with
//! `--socket` (someone else's daemon is never signalled as a whole).
use crate::monitor::StatusConn;
use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};
use ttsd::protocol::{HealthState, WorkerState};

/// The daemon settings a run uses (the rest are ttsd's defaults).
#[derive(Debug, Clone, serde::Serialize)]
pub struct Settings {
    pub workers: usize,
    pub queue_capacity: usize,
    pub max_connections: usize,
    pub max_frame_bytes: usize,
    pub max_text_chars: usize,
    pub hang_timeout_ms: u64,
    pub heartbeat_ms: u64,
    pub kill_grace_ms: u64,
    pub default_timeout_ms: u64,
    pub max_rss_mb: u64,
    pub restart_backoff_min_ms: u64,
    pub restart_backoff_max_ms: u64,
    pub degraded_after_failures: u32,
    /// `None`: the daemon's default (and a ttsd too old to know the
    /// setting still starts).
    pub idle_timeout_ms: Option<u64>,
}

impl Settings {
    pub fn toml(&self, socket: &Path, voice: &Path) -> String {
        let mut t = format!(
            "socket = {socket:?}\n\
             voices = [{{ name = \"joe\", path = {voice:?} }}]\n\
             workers = {}\nqueue_capacity = {}\nmax_connections = {}\nmax_frame_bytes = {}\nmax_text_chars = {}\n\
             hang_timeout_ms = {}\nheartbeat_ms = {}\nkill_grace_ms = {}\ndefault_timeout_ms = {}\n\
             max_rss_mb = {}\nrestart_backoff_min_ms = {}\nrestart_backoff_max_ms = {}\n\
             degraded_after_failures = {}\nshutdown_grace_ms = 5000\n",
            self.workers,
            self.queue_capacity,
            self.max_connections,
            self.max_frame_bytes,
            self.max_text_chars,
            self.hang_timeout_ms,
            self.heartbeat_ms,
            self.kill_grace_ms,
            self.default_timeout_ms,
            self.max_rss_mb,
            self.restart_backoff_min_ms,
            self.restart_backoff_max_ms,
            self.degraded_after_failures,
            socket = socket.display().to_string(),
            voice = voice.display().to_string(),
        );
        if let Some(ms) = self.idle_timeout_ms {
            t.push_str(&format!("idle_timeout_ms = {ms}\n"));
        }
        t
    }
}

pub struct Daemon {
    pub child: Child,
    pub dir: Option<tempfile::TempDir>,
    pub path: PathBuf,
    pub socket: PathBuf,
    pub log: PathBuf,
}

/// `ttsd` next to this binary (target/release/ttsd-stress -> target/release/ttsd).
pub fn default_ttsd() -> Option<PathBuf> {
    let me = std::env::current_exe().ok()?;
    let p = me.parent()?.join("ttsd");
    p.is_file().then_some(p)
}

/// The bundled voice: the first `voices/en_US-joe-medium.onnx` above `from`.
pub fn default_voice(from: &Path) -> Option<PathBuf> {
    from.ancestors().map(|d| d.join("voices/en_US-joe-medium.onnx")).find(|p| p.is_file())
}

impl Daemon {
    pub fn start(ttsd: &Path, voice: &Path, settings: &Settings) -> Result<Self> {
        let dir = tempfile::Builder::new().prefix("ttsd-stress.").tempdir()?;
        let path = dir.path().to_path_buf();
        let socket = path.join("ttsd.sock");
        let cfg = path.join("daemon.toml");
        std::fs::write(&cfg, settings.toml(&socket, voice))?;
        let log = path.join("ttsd.log");
        let mut cmd = Command::new(ttsd);
        // If the harness dies (Ctrl-C, a panic), the daemon it started goes
        // too (SIGTERM: it stops its workers and removes its socket).
        #[cfg(target_os = "linux")]
        {
            use std::os::unix::process::CommandExt;
            // SAFETY: prctl is async-signal-safe; nothing else runs in the child.
            unsafe {
                cmd.pre_exec(|| {
                    nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGTERM).map_err(std::io::Error::from)
                });
            }
        }
        let child = cmd
            .arg("--config")
            .arg(&cfg)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log)?)
            .spawn()
            .with_context(|| format!("cannot start {}", ttsd.display()))?;
        Ok(Self { child, dir: Some(dir), path, socket, log })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The last `n` lines of the daemon's log.
    pub fn log_tail(&self, n: usize) -> String {
        let s = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = s.lines().collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }

    /// Keep the directory (config, log) after the run.
    pub fn keep(&mut self) -> PathBuf {
        if let Some(d) = self.dir.take() {
            let _ = d.keep();
        }
        self.path.clone()
    }

    /// SIGTERM, then wait up to `within` for the exit.
    pub fn terminate(&mut self, within: Duration) -> Option<(ExitStatus, Duration)> {
        let t = Instant::now();
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        while t.elapsed() < within {
            if let Ok(Some(s)) = self.child.try_wait() {
                return Some((s, t.elapsed()));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        None
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Wait until health is ready and `workers` workers are ready (idle or
/// busy, not retiring). Returns how long it took.
pub fn wait_ready(socket: &Path, workers: usize, within: Duration) -> Result<Duration> {
    let t = Instant::now();
    let mut conn = StatusConn::new(socket);
    let mut last = String::from("no answer yet");
    while t.elapsed() < within {
        match conn.status() {
            Ok(s) => {
                let ready = s
                    .workers
                    .iter()
                    .filter(|w| matches!(w.state, WorkerState::Idle | WorkerState::Busy) && !w.retiring)
                    .count();
                if s.state == HealthState::Ready && ready >= workers {
                    return Ok(t.elapsed());
                }
                last = format!("health {:?}, {ready}/{workers} workers ready", s.state);
            }
            Err(e) => last = e,
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    bail!("daemon not ready after {within:?}: {last}")
}
