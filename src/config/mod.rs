//! Daemon configuration: `daemon.toml`, built-in defaults, command-line
//! overrides, and the derived values (socket path, worker count, voice paths).
//!
//! Owns parsing and validation in one step: a [`Config`] that exists is
//! valid, its settings grouped into sections by what they govern (the
//! file stays flat: `File` is the only list of its keys). It never opens
//! sockets or starts processes, and never decides what a change of setting
//! means for a running daemon (the supervisor's reload does).
use serde::Deserialize;
use std::path::{Path, PathBuf};
use std::time::Duration;
use thiserror::Error;

#[derive(Debug, Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("{path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("invalid configuration: {0}")]
    Invalid(String),
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VoiceConfig {
    pub name: String,
    /// Relative paths resolve against the config file's directory.
    pub path: PathBuf,
}

/// Every setting, grouped by what it governs (the sections of
/// `daemon.toml`; see that file for each setting's documentation). A SIGHUP
/// compares the sections as wholes (`supervisor::reload`), so a new setting
/// joins the section whose reload rule it shares.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    pub listen: ListenConfig,
    pub requests: RequestConfig,
    pub workers: WorkerConfig,
    pub voices: Vec<VoiceConfig>,
    /// Filled in from the first voice when the file leaves it empty.
    pub default_voice: String,
}

/// The socket and its connections: the front-end's settings. They are
/// fixed when the socket is bound, so a SIGHUP leaves them until the next
/// start.
#[derive(Debug, Clone, PartialEq)]
pub struct ListenConfig {
    pub socket: String,
    pub socket_group: String,
    pub allowed_uids: Vec<u32>,
    pub allowed_gids: Vec<u32>,
    pub max_connections: usize,
    pub max_frame_bytes: usize,
    pub idle_timeout_ms: u64,
}

/// What a request may be and how long it may wait: applied to every request
/// that arrives after a SIGHUP.
#[derive(Debug, Clone, PartialEq)]
pub struct RequestConfig {
    pub max_text_chars: usize,
    pub default_timeout_ms: u64,
    pub queue_capacity: usize,
    pub max_requests_per_connection: usize,
}

/// The worker processes and how they are supervised.
#[derive(Debug, Clone, PartialEq)]
pub struct WorkerConfig {
    /// `workers` in the file: processes to run, 0 for one per core.
    pub count: usize,
    /// `threads_per_job`: cores one job may use, 0 for "as many as are
    /// free": all of them when one worker is busy, a share when several are.
    pub threads_per_job: usize,
    pub heartbeat_ms: u64,
    pub hang_timeout_ms: u64,
    pub kill_grace_ms: u64,
    pub shutdown_grace_ms: u64,
    pub max_requests: u64,
    pub max_requests_jitter: u64,
    pub max_rss_mb: u64,
    pub restart_backoff_min_ms: u64,
    pub restart_backoff_max_ms: u64,
    pub degraded_after_failures: u32,
}

/// `daemon.toml` as written: every key at the top level, each with its
/// built-in default. [`Config`] groups them (`From<File>`); this is the
/// only place that lists the file's keys.
#[derive(Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct File {
    socket: String,
    socket_group: String,
    allowed_uids: Vec<u32>,
    allowed_gids: Vec<u32>,
    workers: usize,
    threads_per_job: usize,
    queue_capacity: usize,
    max_connections: usize,
    max_frame_bytes: usize,
    idle_timeout_ms: u64,
    max_requests_per_connection: usize,
    max_text_chars: usize,
    default_timeout_ms: u64,
    hang_timeout_ms: u64,
    heartbeat_ms: u64,
    kill_grace_ms: u64,
    shutdown_grace_ms: u64,
    max_requests: u64,
    max_requests_jitter: u64,
    max_rss_mb: u64,
    restart_backoff_min_ms: u64,
    restart_backoff_max_ms: u64,
    degraded_after_failures: u32,
    voices: Vec<VoiceConfig>,
    default_voice: String,
}

impl Default for File {
    fn default() -> Self {
        Self {
            socket: String::new(),
            socket_group: String::new(),
            allowed_uids: Vec::new(),
            allowed_gids: Vec::new(),
            workers: 0,
            threads_per_job: 0,
            queue_capacity: 64,
            max_connections: 128,
            max_frame_bytes: 1024 * 1024,
            idle_timeout_ms: 60_000,
            max_requests_per_connection: 16,
            max_text_chars: 20_000,
            default_timeout_ms: 30_000,
            hang_timeout_ms: 10_000,
            heartbeat_ms: 500,
            kill_grace_ms: 2_000,
            shutdown_grace_ms: 10_000,
            max_requests: 0,
            max_requests_jitter: 0,
            max_rss_mb: 0,
            restart_backoff_min_ms: 100,
            restart_backoff_max_ms: 30_000,
            degraded_after_failures: 3,
            voices: vec![VoiceConfig { name: "joe".into(), path: "voices/en_US-joe-medium.onnx".into() }],
            default_voice: String::new(),
        }
    }
}

impl From<File> for Config {
    fn from(f: File) -> Self {
        // Destructured without `..`: a key added to File and left out of
        // its section does not compile.
        let File {
            socket,
            socket_group,
            allowed_uids,
            allowed_gids,
            workers,
            threads_per_job,
            queue_capacity,
            max_connections,
            max_frame_bytes,
            idle_timeout_ms,
            max_requests_per_connection,
            max_text_chars,
            default_timeout_ms,
            hang_timeout_ms,
            heartbeat_ms,
            kill_grace_ms,
            shutdown_grace_ms,
            max_requests,
            max_requests_jitter,
            max_rss_mb,
            restart_backoff_min_ms,
            restart_backoff_max_ms,
            degraded_after_failures,
            voices,
            default_voice,
        } = f;
        Config {
            listen: ListenConfig {
                socket,
                socket_group,
                allowed_uids,
                allowed_gids,
                max_connections,
                max_frame_bytes,
                idle_timeout_ms,
            },
            requests: RequestConfig { max_text_chars, default_timeout_ms, queue_capacity, max_requests_per_connection },
            workers: WorkerConfig {
                count: workers,
                threads_per_job,
                heartbeat_ms,
                hang_timeout_ms,
                kill_grace_ms,
                shutdown_grace_ms,
                max_requests,
                max_requests_jitter,
                max_rss_mb,
                restart_backoff_min_ms,
                restart_backoff_max_ms,
                degraded_after_failures,
            },
            voices,
            default_voice,
        }
    }
}

impl Default for Config {
    fn default() -> Self {
        File::default().into()
    }
}

/// Command-line values that win over the file.
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    pub socket: Option<PathBuf>,
    pub workers: Option<usize>,
}

impl Config {
    /// Parse `text` (the contents of `path`), resolve relative voice paths
    /// against `path`'s directory, and validate.
    pub fn from_toml(text: &str, path: &Path) -> Result<Self, ConfigError> {
        let file: File =
            toml::from_str(text).map_err(|e| ConfigError::Parse { path: path.to_path_buf(), message: e.to_string() })?;
        let mut cfg = Config::from(file);
        let base = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
        let base = base.canonicalize().unwrap_or_else(|_| base.to_path_buf());
        cfg.resolve_voices(&base);
        cfg.validate()?;
        Ok(cfg)
    }

    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text =
            std::fs::read_to_string(path).map_err(|e| ConfigError::Read { path: path.to_path_buf(), source: e })?;
        Self::from_toml(&text, path)
    }

    /// Built-in defaults, the bundled voice found by walking up from `exe`
    /// to the first directory that has `voices/`.
    pub fn builtin(exe: &Path) -> Result<Self, ConfigError> {
        let mut cfg = Config::default();
        let base = exe
            .ancestors()
            .skip(1)
            .find(|d| d.join("voices").is_dir())
            .map(Path::to_path_buf)
            .unwrap_or_else(|| PathBuf::from("."));
        cfg.resolve_voices(&base);
        cfg.validate()?;
        Ok(cfg)
    }

    /// `--config FILE` if given, else `./daemon.toml` if present, else
    /// [`Config::builtin`]. Returns the file used, if any (SIGHUP rereads it).
    pub fn discover(explicit: Option<&Path>) -> Result<(Self, Option<PathBuf>), ConfigError> {
        if let Some(p) = explicit {
            return Ok((Self::load(p)?, Some(p.to_path_buf())));
        }
        let local = PathBuf::from("daemon.toml");
        if local.is_file() {
            return Ok((Self::load(&local)?, Some(local)));
        }
        let exe = std::env::current_exe().map_err(|e| ConfigError::Invalid(format!("current_exe: {e}")))?;
        Ok((Self::builtin(&exe)?, None))
    }

    pub fn apply(&mut self, o: &Overrides) -> Result<(), ConfigError> {
        if let Some(s) = &o.socket {
            self.listen.socket = s.display().to_string();
        }
        if let Some(w) = o.workers {
            self.workers.count = w;
        }
        self.validate()
    }

    fn resolve_voices(&mut self, base: &Path) {
        for v in &mut self.voices {
            if v.path.is_relative() {
                v.path = base.join(&v.path);
            }
        }
    }

    fn validate(&mut self) -> Result<(), ConfigError> {
        let bad = |m: String| Err(ConfigError::Invalid(m));
        if self.voices.is_empty() {
            return bad("at least one voice is needed".into());
        }
        for (i, v) in self.voices.iter().enumerate() {
            if v.name.trim().is_empty() {
                return bad(format!("voice #{} has an empty name", i + 1));
            }
            if self.voices[..i].iter().any(|w| w.name == v.name) {
                return bad(format!("voice '{}' is listed twice", v.name));
            }
        }
        if self.default_voice.is_empty() {
            self.default_voice = self.voices[0].name.clone();
        } else if !self.voices.iter().any(|v| v.name == self.default_voice) {
            return bad(format!("default_voice '{}' is not among the voices", self.default_voice));
        }
        let (l, r, w) = (&self.listen, &self.requests, &self.workers);
        for (name, v) in [
            ("queue_capacity", r.queue_capacity as u64),
            ("max_connections", l.max_connections as u64),
            ("max_frame_bytes", l.max_frame_bytes as u64),
            ("idle_timeout_ms", l.idle_timeout_ms),
            ("max_requests_per_connection", r.max_requests_per_connection as u64),
            ("max_text_chars", r.max_text_chars as u64),
            ("default_timeout_ms", r.default_timeout_ms),
            ("hang_timeout_ms", w.hang_timeout_ms),
            ("heartbeat_ms", w.heartbeat_ms),
            ("restart_backoff_min_ms", w.restart_backoff_min_ms),
            ("degraded_after_failures", w.degraded_after_failures as u64),
        ] {
            if v == 0 {
                return bad(format!("{name} must be above 0"));
            }
        }
        if w.heartbeat_ms.saturating_mul(2) > w.hang_timeout_ms {
            return bad(format!(
                "hang_timeout_ms ({}) must be at least twice heartbeat_ms ({})",
                w.hang_timeout_ms, w.heartbeat_ms
            ));
        }
        if w.restart_backoff_max_ms < w.restart_backoff_min_ms {
            return bad("restart_backoff_max_ms is below restart_backoff_min_ms".into());
        }
        if l.max_frame_bytes > crate::protocol::frame::HARD_MAX_FRAME_BYTES {
            return bad(format!("max_frame_bytes is above {}", crate::protocol::frame::HARD_MAX_FRAME_BYTES));
        }
        if w.count > 256 {
            return bad("workers is above 256".into());
        }
        Ok(())
    }

    /// Worker processes to run: `workers`, or one per core when 0.
    pub fn worker_count(&self) -> usize {
        if self.workers.count > 0 {
            self.workers.count
        } else {
            cores()
        }
    }

    /// Cores a worker's engine may use at most (its lanes): every core, or
    /// `threads_per_job` when set. How many one job uses is decided at
    /// dispatch ([`Config::job_threads`]).
    pub fn engine_threads(&self) -> usize {
        // What a lone job gets.
        self.job_threads(1)
    }

    /// Cores a job may use when `busy` workers (this one included) are
    /// working: `threads_per_job` when set; else the cores shared out among
    /// the busy workers, so that a lone request uses the whole machine and
    /// concurrent ones do not oversubscribe it.
    pub fn job_threads(&self, busy: usize) -> usize {
        if self.workers.threads_per_job > 0 {
            return self.workers.threads_per_job.min(64);
        }
        (cores() / busy.max(1)).max(1)
    }

    /// The socket path: `socket`, else [`default_socket_path`].
    pub fn socket_path(&self) -> PathBuf {
        if self.listen.socket.is_empty() {
            default_socket_path()
        } else {
            PathBuf::from(&self.listen.socket)
        }
    }

    pub fn ms(v: u64) -> Duration {
        Duration::from_millis(v)
    }
}

/// `$XDG_RUNTIME_DIR/ttsd.sock`, else `/tmp/ttsd-$UID/ttsd.sock` (the
/// daemon creates that directory with mode 0700 and checks it; see
/// [`crate::runtime_dir`]).
pub fn default_socket_path() -> PathBuf {
    crate::runtime_dir::default_socket_path()
}

/// The machine's cores, read once: the dispatcher asks at every request,
/// and the answer (from cgroup files) does not change under a running daemon.
fn cores() -> usize {
    static CORES: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *CORES.get_or_init(|| std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lone_job_gets_every_core_and_busy_workers_share_them() {
        let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
        let mut cfg = Config::default();
        assert_eq!(cfg.engine_threads(), cores);
        assert_eq!(cfg.job_threads(1), cores);
        assert_eq!(cfg.job_threads(2), (cores / 2).max(1));
        assert_eq!(cfg.job_threads(cores + 5), 1);
        assert_eq!(cfg.job_threads(0), cores, "a count of 0 busy is treated as 1");
        cfg.workers.threads_per_job = 3;
        assert_eq!((cfg.engine_threads(), cfg.job_threads(1), cfg.job_threads(4)), (3, 3, 3));
    }

    #[test]
    fn the_shipped_daemon_toml_is_the_builtin_default() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("daemon.toml");
        let file = Config::load(&path).unwrap();
        let mut builtin = Config::default();
        builtin.resolve_voices(path.parent().unwrap());
        builtin.validate().unwrap();
        assert_eq!(file, builtin);
    }

    #[test]
    fn relative_voice_paths_follow_the_config_file() {
        let cfg = Config::from_toml(
            "workers = 2\nvoices = [{name = \"a\", path = \"v/a.onnx\"}, {name = \"b\", path = \"/abs/b.onnx\"}]\n",
            Path::new("/etc/ttsd/daemon.toml"),
        )
        .unwrap();
        assert_eq!(cfg.voices[0].path, PathBuf::from("/etc/ttsd/v/a.onnx"));
        assert_eq!(cfg.voices[1].path, PathBuf::from("/abs/b.onnx"));
        assert_eq!(cfg.default_voice, "a");
        assert_eq!(cfg.worker_count(), 2);
        assert_eq!(cfg.requests.queue_capacity, Config::default().requests.queue_capacity);
    }

    #[test]
    fn bad_files_are_refused_with_the_reason() {
        let p = Path::new("x.toml");
        let err = |t: &str| Config::from_toml(t, p).unwrap_err().to_string();
        assert!(err("workerz = 2").contains("workerz"));
        assert!(err("queue_capacity = 0").contains("queue_capacity"));
        assert!(err("default_voice = \"nope\"").contains("nope"));
        assert!(err("voices = []").contains("at least one voice"));
        assert!(err("heartbeat_ms = 600\nhang_timeout_ms = 1000").contains("twice"));
        assert!(err("workers = \"two\"").contains("workers"));
        assert!(err("idle_timeout_ms = 0").contains("idle_timeout_ms"));
        assert!(err("max_requests_per_connection = 0").contains("max_requests_per_connection"));
    }

    #[test]
    fn every_key_lands_in_its_section() {
        let cfg = Config::from_toml(
            "socket = \"/s\"\nmax_frame_bytes = 7\nidle_timeout_ms = 8\nqueue_capacity = 9\n\
             max_requests_per_connection = 10\nworkers = 3\nshutdown_grace_ms = 11\nmax_rss_mb = 12\n",
            Path::new("d.toml"),
        )
        .unwrap();
        assert_eq!((cfg.listen.socket.as_str(), cfg.listen.max_frame_bytes, cfg.listen.idle_timeout_ms), ("/s", 7, 8));
        assert_eq!((cfg.requests.queue_capacity, cfg.requests.max_requests_per_connection), (9, 10));
        assert_eq!((cfg.workers.count, cfg.workers.shutdown_grace_ms, cfg.workers.max_rss_mb), (3, 11, 12));
        let d = Config::default();
        assert_eq!((cfg.listen.max_connections, cfg.workers.heartbeat_ms), (d.listen.max_connections, d.workers.heartbeat_ms));
    }

    #[test]
    fn overrides_win_and_are_validated() {
        let mut cfg = Config::from_toml("socket = \"/a.sock\"", Path::new("d.toml")).unwrap();
        cfg.apply(&Overrides { socket: Some("/b.sock".into()), workers: Some(3) }).unwrap();
        assert_eq!(cfg.socket_path(), PathBuf::from("/b.sock"));
        assert_eq!(cfg.worker_count(), 3);
        assert!(cfg.apply(&Overrides { socket: None, workers: Some(1000) }).is_err());
    }

    #[test]
    fn builtin_finds_the_bundled_voice_above_the_executable() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("voices")).unwrap();
        std::fs::create_dir_all(dir.path().join("target/release")).unwrap();
        let cfg = Config::builtin(&dir.path().join("target/release/ttsd")).unwrap();
        assert_eq!(cfg.voices[0].path, dir.path().join("voices/en_US-joe-medium.onnx"));
    }
}
