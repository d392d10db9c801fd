//! Test harness: a real ttsd on a temporary socket with a test config.
//!
//! Owns starting, signalling and reaping the daemon under test; a test that
//! panics gets the daemon's log printed. Never shared between tests, never
//! leaves a daemon running once dropped (SIGTERM, then SIGKILL), and never
//! waits without a bound (start-up and readiness waits give up after
//! 10-120 s, with the log).
#![allow(dead_code)]
use std::io::Read;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};
use ttsd::client::Client;
use ttsd::protocol::{HealthState, Reply, StatusReply, SynthRequest, WorkerState};

pub const SHORT: &str = "Hello there.";
/// About a second of work: long enough to still be running when more arrives.
pub const MEDIUM: &str = "The quick brown fox jumps over the lazy dog. A second sentence follows the first one here.";
pub const LONG: &str = "The quick brown fox jumps over the lazy dog. \
    A second sentence follows the first one here. \
    Then a third sentence, which is a little longer than the others were. \
    Number four keeps the worker busy for a while longer. \
    The fifth sentence talks about the weather, which is mild today. \
    Sentence six is here only to make the text longer still. \
    And the seventh sentence ends the paragraph, at last.";

pub fn voice_path() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("voices/en_US-joe-medium.onnx")
}

pub struct Daemon {
    pub child: Child,
    pub dir: tempfile::TempDir,
    pub socket: PathBuf,
    exited: Option<ExitStatus>,
}

/// The test config: 2 workers, short timeouts; `extra` lines override.
pub fn config(dir: &Path, extra: &str) -> String {
    let mut base = format!("socket = {:?}\n", dir.join("ttsd.sock").display().to_string());
    if !extra.lines().any(|l| l.trim_start().starts_with("voices ")) {
        base.push_str(&format!("voices = [{{ name = \"joe\", path = {:?} }}]\n", voice_path().display().to_string()));
    }
    let defaults = [
        ("workers", "2"),
        ("queue_capacity", "64"),
        ("heartbeat_ms", "100"),
        ("hang_timeout_ms", "5000"),
        ("kill_grace_ms", "400"),
        ("shutdown_grace_ms", "5000"),
        ("default_timeout_ms", "30000"),
        ("restart_backoff_min_ms", "50"),
        ("restart_backoff_max_ms", "1000"),
        ("degraded_after_failures", "2"),
    ];
    for (k, v) in defaults {
        if !extra.lines().any(|l| l.trim_start().starts_with(&format!("{k} "))) {
            base.push_str(&format!("{k} = {v}\n"));
        }
    }
    base.push_str(extra);
    base.push('\n');
    base
}

impl Daemon {
    /// Start ttsd with the test config plus `extra` (TOML lines).
    pub fn start(extra: &str) -> Self {
        Self::start_with(extra, Spawn { stderr: None, die_with_parent: false })
    }

    /// A second daemon using `dir`'s socket (the first one's config there).
    pub fn start_in(dir: &Path, extra: &str) -> Self {
        let own = tempfile::tempdir().unwrap();
        let cfg = own.path().join("daemon.toml");
        std::fs::write(&cfg, config(dir, extra)).unwrap();
        let log = std::fs::File::create(own.path().join("ttsd.log")).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_ttsd")).arg("--config").arg(&cfg).stderr(log).spawn().unwrap();
        let socket = dir.join("ttsd.sock");
        let d = Self { child, dir: own, socket, exited: None };
        let t = Instant::now();
        while d.client_try().is_none() {
            assert!(t.elapsed() < Duration::from_secs(10), "second daemon not answering\n{}", d.log());
            std::thread::sleep(Duration::from_millis(20));
        }
        d
    }

    fn client_try(&self) -> Option<Client> {
        Client::connect(&self.socket).ok()
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn log(&self) -> String {
        let mut s = String::new();
        if let Ok(mut f) = std::fs::File::open(self.dir.path().join("ttsd.log")) {
            let _ = f.read_to_string(&mut s);
        }
        s
    }

    pub fn client(&self) -> Client {
        let mut c = Client::connect_as(&self.socket, "test").unwrap_or_else(|e| panic!("connect: {e}\n{}", self.log()));
        c.set_timeout(Some(Duration::from_secs(60))).unwrap();
        c
    }

    pub fn status(&self) -> StatusReply {
        self.client().status().unwrap()
    }

    /// Wait until `n` workers are ready and idle.
    pub fn wait_idle(&self, n: usize, within: Duration) -> StatusReply {
        let t = Instant::now();
        loop {
            let s = self.status();
            let idle = s.workers.iter().filter(|w| w.state == WorkerState::Idle && !w.retiring).count();
            if idle >= n && s.state == HealthState::Ready {
                return s;
            }
            assert!(s.state != HealthState::Degraded, "daemon degraded: {:?}\n{}", s.degraded_reason, self.log());
            assert!(t.elapsed() < within, "{n} idle workers not there after {within:?}: {s:#?}\n{}", self.log());
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn worker_pids(s: &StatusReply) -> Vec<u32> {
        let mut v: Vec<u32> = s.workers.iter().map(|w| w.pid).collect();
        v.sort();
        v
    }

    pub fn signal(&self, sig: nix::sys::signal::Signal) {
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.pid() as i32), sig).unwrap();
    }

    pub fn wait_exit(&mut self, within: Duration) -> ExitStatus {
        let t = Instant::now();
        loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                self.exited = Some(s);
                return s;
            }
            assert!(t.elapsed() < within, "ttsd did not exit within {within:?}\n{}", self.log());
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("---- ttsd log ----\n{}\n------------------", self.log());
        }
        if self.exited.is_none() {
            // SIGTERM first so the workers are stopped too, then make sure.
            let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
            let t = Instant::now();
            while t.elapsed() < Duration::from_secs(5) {
                if let Ok(Some(_)) = self.child.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// A request for `text` with the given timeout.
pub fn req(text: &str) -> SynthRequest {
    SynthRequest::text(text)
}

/// Plausible speech: the sample rate of the voice, some length, not silence.
pub fn assert_valid_audio(rate: u32, samples: &[i16], audio_seconds: f64) {
    assert_eq!(rate, 22050);
    assert!(samples.len() > 2205, "only {} samples", samples.len());
    let expect = samples.len() as f64 / rate as f64;
    assert!((expect - audio_seconds).abs() < 0.01, "Done says {audio_seconds} s, got {expect} s");
    let peak = samples.iter().map(|s| s.unsigned_abs()).max().unwrap();
    assert!(peak > 1000, "peak {peak}: silence");
}

/// Read replies until the terminal one for `id`; returns every reply seen.
pub fn until_terminal(c: &mut Client, id: u64) -> Vec<Reply> {
    let mut seen = Vec::new();
    loop {
        let r = c.recv().unwrap();
        let end = matches!(&r, Reply::Done { id: i, .. } if *i == id)
            || matches!(&r, Reply::Error { id: Some(i), .. } if *i == id);
        seen.push(r);
        if end {
            return seen;
        }
    }
}

/// How a test wants the daemon's stderr, and whether the daemon must die
/// with the test process (see [`Daemon::start_with`]).
pub struct Spawn {
    /// `None`: the log file in the daemon's directory (what [`Daemon::log`] reads).
    pub stderr: Option<Stdio>,
    /// SIGTERM the daemon when the thread that started it ends: for a
    /// daemon kept in a `static` (never dropped), started from a thread
    /// that lives as long as the test process.
    pub die_with_parent: bool,
}

impl Daemon {
    /// [`Daemon::start`] with control over stderr and the daemon's lifetime.
    pub fn start_with(extra: &str, how: Spawn) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let cfg = dir.path().join("daemon.toml");
        std::fs::write(&cfg, config(dir.path(), extra)).unwrap();
        let stderr = match how.stderr {
            Some(s) => s,
            None => Stdio::from(std::fs::File::create(dir.path().join("ttsd.log")).unwrap()),
        };
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_ttsd"));
        cmd.arg("--config").arg(&cfg).stdin(Stdio::null()).stdout(Stdio::null()).stderr(stderr);
        if how.die_with_parent {
            use std::os::unix::process::CommandExt;
            // SAFETY: prctl is async-signal-safe; nothing else runs in the child before exec.
            unsafe {
                cmd.pre_exec(|| {
                    if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
        }
        let child = cmd.spawn().unwrap();
        let socket = dir.path().join("ttsd.sock");
        let d = Self { child, dir, socket, exited: None };
        let t = Instant::now();
        while UnixStream::connect(&d.socket).is_err() {
            assert!(t.elapsed() < Duration::from_secs(10), "no socket after 10 s\n{}", d.log());
            std::thread::sleep(Duration::from_millis(10));
        }
        d
    }
}

/// Resident and peak resident memory of `pid` in KiB (VmRSS, VmHWM).
pub fn rss_kib(pid: u32) -> (u64, u64) {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| {
        s.lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

/// A child process (a daemon a test started by hand) stopped when dropped:
/// SIGTERM, up to 10 s to exit, then SIGKILL.
pub struct Stopped(pub Child);

impl Drop for Stopped {
    fn drop(&mut self) {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.0.id() as i32), nix::sys::signal::Signal::SIGTERM);
        let t = Instant::now();
        while t.elapsed() < Duration::from_secs(10) {
            if let Ok(Some(_)) = self.0.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Lossy UTF-8 of a command's output.
pub fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// `out` exited with `code`; otherwise fail showing its stdout and stderr.
pub fn check(out: &std::process::Output, code: i32) {
    assert_eq!(
        out.status.code(),
        Some(code),
        "exit {:?}\nstdout: {}\nstderr: {}",
        out.status,
        text(&out.stdout),
        text(&out.stderr)
    );
}
