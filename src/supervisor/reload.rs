//! SIGHUP: re-read the configuration and say what its changes need.
//!
//! Owns the rule for each section of [`Config`], compared as a whole
//! (derived `PartialEq`), never setting by setting:
//! - `listen` (socket, peers, connection limits) is fixed when the socket
//!   is bound: a change is logged and kept for the next start;
//! - `requests` (limits, queue) applies to requests arriving from now on;
//! - `workers` and the voices take effect as the workers are replaced, one
//!   at a time, which every SIGHUP does, changed or not: a voice file may
//!   have changed on disk under the same path.
//!
//! It never touches a worker or a request: the arbiter applies the result.
use crate::config::{Config, ConfigError, Overrides};
use std::path::Path;

/// Which sections of the configuration differ.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Changes {
    pub listen: bool,
    pub requests: bool,
    pub workers: bool,
    /// The voices or the default voice.
    pub voices: bool,
}

impl Changes {
    /// The sections that differ, by name, for the log.
    pub fn names(&self) -> Vec<&'static str> {
        [(self.listen, "listen"), (self.requests, "requests"), (self.workers, "workers"), (self.voices, "voices")]
            .into_iter()
            .filter_map(|(changed, name)| changed.then_some(name))
            .collect()
    }
}

pub fn diff(old: &Config, new: &Config) -> Changes {
    Changes {
        listen: old.listen != new.listen,
        requests: old.requests != new.requests,
        workers: old.workers != new.workers,
        voices: old.voices != new.voices || old.default_voice != new.default_voice,
    }
}

/// The configuration to run from now on, and what changed.
#[derive(Debug)]
pub struct Reloaded {
    /// With the current `listen` section (see the module doc).
    pub cfg: Config,
    pub changes: Changes,
}

/// Read `path` again (none: the built-in configuration stays), apply the
/// command line's `overrides`, and compare with `current`. An error keeps
/// `current` as it is.
pub fn reread(current: &Config, path: Option<&Path>, overrides: &Overrides) -> Result<Reloaded, ConfigError> {
    let mut cfg = match path {
        Some(p) => Config::load(p)?,
        None => current.clone(),
    };
    cfg.apply(overrides)?;
    let changes = diff(current, &cfg);
    if changes.listen {
        cfg.listen = current.listen.clone();
    }
    Ok(Reloaded { cfg, changes })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, text: &str) -> std::path::PathBuf {
        let p = dir.join("daemon.toml");
        std::fs::write(&p, format!("voices = [{{ name = \"a\", path = \"/a.onnx\" }}]\n{text}")).unwrap();
        p
    }

    #[test]
    fn each_section_is_compared_whole() {
        let old = Config::default();
        assert_eq!(diff(&old, &old), Changes::default());
        let mut new = old.clone();
        new.requests.queue_capacity += 1;
        new.listen.idle_timeout_ms += 1;
        let c = diff(&old, &new);
        assert_eq!(c, Changes { listen: true, requests: true, ..Changes::default() });
        assert_eq!(c.names(), ["listen", "requests"]);
        new = old.clone();
        new.default_voice = "other".into();
        assert_eq!(diff(&old, &new).names(), ["voices"]);
    }

    #[test]
    fn listener_changes_wait_for_the_next_start_the_rest_applies() {
        let dir = tempfile::tempdir().unwrap();
        let path = write(dir.path(), "max_connections = 5\nqueue_capacity = 7\nsocket = \"/s1\"\n");
        let current = Config::load(&path).unwrap();
        let path = write(dir.path(), "max_connections = 9\nqueue_capacity = 8\nsocket = \"/s2\"\nmax_rss_mb = 3\n");
        let r = reread(&current, Some(&path), &Overrides::default()).unwrap();
        assert_eq!(r.changes.names(), ["listen", "requests", "workers"]);
        assert_eq!(r.cfg.listen, current.listen, "kept until the next start");
        assert_eq!((r.cfg.requests.queue_capacity, r.cfg.workers.max_rss_mb), (8, 3));
    }

    #[test]
    fn overrides_still_win_and_a_bad_file_changes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let path = write(dir.path(), "workers = 1\n");
        let overrides = Overrides { socket: None, workers: Some(4) };
        let mut current = Config::load(&path).unwrap();
        current.apply(&overrides).unwrap();
        let r = reread(&current, Some(&path), &overrides).unwrap();
        assert_eq!((r.cfg.workers.count, r.changes), (4, Changes::default()));
        std::fs::write(&path, "workers = \"many\"").unwrap();
        assert!(reread(&current, Some(&path), &overrides).is_err());
        assert_eq!(reread(&current, None, &overrides).unwrap().cfg, current, "no file: the same configuration");
    }
}
