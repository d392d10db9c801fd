//! What the daemon reports about itself: its health (ready, degraded,
//! starting, stopping, and why), what is known of each configured voice,
//! and the Status reply.
//!
//! Owns the run of failed worker starts that makes the daemon `degraded`
//! ([`Health`]), the voice table (loaded with its description, failed with
//! its reason, or pending: [`Voices`]), and the assembly of a
//! [`StatusReply`] from a [`Snapshot`] of the arbiter's state. It never
//! changes a worker or a request and does no I/O: it reads what the
//! arbiter hands it.
use super::policy::Slot;
use super::pool::{Phase, WorkerHandle};
use super::validate::KnownVoice;
use crate::config::VoiceConfig;
use crate::protocol::{
    HealthState, StatusReply, Totals, VoiceDesc, VoiceLoadState, VoiceStatus, WorkerState, WorkerStatus,
};
use std::path::PathBuf;
use std::time::Instant;

/// Failed worker starts in a row, and the last one's reason.
#[derive(Debug, Clone, Default)]
pub struct Health {
    failures: u32,
    last_failure: Option<String>,
}

impl Health {
    /// A worker got ready: the run of failures is over.
    pub fn started(&mut self) {
        self.failures = 0;
        self.last_failure = None;
    }

    /// A worker died before it was ready, or could not load its voices.
    pub fn start_failed(&mut self, reason: String) {
        self.failures += 1;
        self.last_failure = Some(format!("{reason} ({} failed worker starts in a row)", self.failures));
    }

    /// A worker process could not be started at all.
    pub fn spawn_failed(&mut self, reason: String) {
        self.failures += 1;
        self.last_failure = Some(reason);
    }

    /// The last start failure, while no worker has started since.
    pub fn last_failure(&self) -> Option<&str> {
        self.last_failure.as_deref()
    }

    /// `degraded_after_failures` starts failed in a row and no worker is
    /// ready: requests are answered `unavailable`.
    pub fn degraded(&self, after: u32, any_ready: bool) -> bool {
        self.failures >= after && !any_ready
    }

    pub fn degraded_reason(&self) -> String {
        self.last_failure.clone().unwrap_or_else(|| "no worker could start".into())
    }

    /// The daemon's state and why.
    pub fn state(&self, stopping: bool, any_ready: bool, after: u32) -> (HealthState, Option<String>) {
        if stopping {
            (HealthState::Stopping, None)
        } else if any_ready {
            (HealthState::Ready, None)
        } else if self.degraded(after, any_ready) {
            (HealthState::Degraded, Some(self.degraded_reason()))
        } else {
            (HealthState::Starting, self.last_failure.clone())
        }
    }
}

#[derive(Debug, Clone)]
struct VoiceEntry {
    name: String,
    path: PathBuf,
    info: Option<VoiceDesc>,
    error: Option<String>,
}

/// What is known of each configured voice: nothing yet, its description
/// once a worker loaded it, or why it failed to load.
#[derive(Debug, Clone, Default)]
pub struct Voices(Vec<VoiceEntry>);

impl Voices {
    /// Follow the configured voices; a voice kept with the same path keeps
    /// what is known of it.
    pub fn adopt(&mut self, configured: &[VoiceConfig]) {
        let old = std::mem::take(&mut self.0);
        self.0 = configured
            .iter()
            .map(|v| {
                old.iter().find(|o| o.name == v.name && o.path == v.path).cloned().unwrap_or(VoiceEntry {
                    name: v.name.clone(),
                    path: v.path.clone(),
                    info: None,
                    error: None,
                })
            })
            .collect();
    }

    fn get_mut(&mut self, name: &str) -> Option<&mut VoiceEntry> {
        self.0.iter_mut().find(|v| v.name == name)
    }

    /// A worker loaded `name`.
    pub fn loaded(&mut self, name: &str, desc: VoiceDesc) {
        if let Some(v) = self.get_mut(name) {
            v.info = Some(desc);
            v.error = None;
        }
    }

    /// A worker that serves other voices could not load `name`: it answers
    /// `unavailable` until one does. Returns whether it is configured.
    pub fn unavailable(&mut self, name: &str, reason: String) -> bool {
        match self.get_mut(name) {
            Some(v) => {
                v.info = None;
                v.error = Some(reason);
                true
            }
            None => false,
        }
    }

    /// A worker loaded no voice; `name` was one reason (what a loaded voice
    /// is known to be stays).
    pub fn load_failed(&mut self, name: &str, reason: String) {
        if let Some(v) = self.get_mut(name) {
            v.error = Some(reason);
        }
    }

    /// The voices as the early request checks see them.
    pub fn known(&self) -> Vec<KnownVoice<'_>> {
        self.0.iter().map(|v| KnownVoice { name: &v.name, info: v.info.as_ref() }).collect()
    }

    /// Why requests for `name` are answered `unavailable`, if they are: it
    /// failed to load and is not loaded anywhere.
    pub fn unavailable_reason(&self, name: &str) -> Option<String> {
        let v = self.0.iter().find(|v| v.name == name && v.info.is_none())?;
        v.error.as_ref().map(|reason| format!("voice '{}' is unavailable: {reason}", v.name))
    }

    /// "name=path, ..." for the start-up log line.
    pub fn describe(&self) -> String {
        self.0.iter().map(|v| format!("{}={}", v.name, v.path.display())).collect::<Vec<_>>().join(", ")
    }

    pub fn report(&self) -> Vec<VoiceStatus> {
        self.0
            .iter()
            .map(|v| VoiceStatus {
                name: v.name.clone(),
                path: v.path.display().to_string(),
                state: if v.info.is_some() {
                    VoiceLoadState::Loaded
                } else if v.error.is_some() {
                    VoiceLoadState::Failed
                } else {
                    VoiceLoadState::Pending
                },
                info: v.info.clone(),
                error: v.error.clone(),
            })
            .collect()
    }
}

/// One worker in the Status reply; `current_request`: the client's id of
/// the request it runs.
pub fn worker_status(w: &WorkerHandle, now: Instant, slots: &[Slot], current_request: Option<u64>) -> WorkerStatus {
    WorkerStatus {
        slot: w.slot as u32,
        pid: w.pid,
        state: match (w.phase, w.job.is_some()) {
            (Phase::Starting, _) => WorkerState::Starting,
            (Phase::Stopping, _) => WorkerState::Stopping,
            (Phase::Ready, true) => WorkerState::Busy,
            (Phase::Ready, false) => WorkerState::Idle,
        },
        retiring: w.retiring,
        jobs_done: w.jobs_done,
        restarts: slots.get(w.slot).map_or(0, |s| s.restarts),
        rss_bytes: w.rss_bytes,
        heartbeat_age_ms: now.saturating_duration_since(w.last_heard).as_millis() as u64,
        uptime_ms: now.saturating_duration_since(w.started).as_millis() as u64,
        current_request,
    }
}

/// The arbiter's state as the Status reply needs it.
#[derive(Debug)]
pub struct Snapshot<'a> {
    pub now: Instant,
    pub started: Instant,
    pub health: (HealthState, Option<String>),
    pub last_failure: Option<&'a str>,
    pub queue_depth: usize,
    pub queue_capacity: usize,
    pub connections: usize,
    pub workers_configured: usize,
    pub workers: Vec<WorkerStatus>,
    pub restarts: u64,
    pub recycles: u64,
    pub totals: Totals,
    pub voices: &'a Voices,
}

pub fn report(s: Snapshot<'_>) -> StatusReply {
    let (state, reason) = s.health;
    let clamp = |n: usize| n.min(u32::MAX as usize) as u32;
    StatusReply {
        server_version: env!("CARGO_PKG_VERSION").into(),
        pid: std::process::id(),
        uptime_ms: s.now.saturating_duration_since(s.started).as_millis() as u64,
        state,
        degraded_reason: if state == HealthState::Degraded { reason } else { s.last_failure.map(String::from) },
        queue_depth: clamp(s.queue_depth),
        queue_capacity: clamp(s.queue_capacity),
        connections: clamp(s.connections),
        workers_configured: clamp(s.workers_configured),
        workers: s.workers,
        worker_restarts: s.restarts,
        worker_recycles: s.recycles,
        totals: s.totals,
        voices: s.voices.report(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn desc() -> VoiceDesc {
        VoiceDesc { language: "en".into(), quality: "medium".into(), sample_rate: 22050, num_speakers: 1, num_symbols: 9 }
    }

    #[test]
    fn health_follows_start_failures() {
        let mut h = Health::default();
        assert_eq!(h.state(false, false, 2), (HealthState::Starting, None));
        h.start_failed("voice 'a' failed to load: gone".into());
        assert_eq!(h.state(false, false, 2).0, HealthState::Starting);
        h.spawn_failed("cannot start a worker: no exe".into());
        let (state, reason) = h.state(false, false, 2);
        assert_eq!((state, reason.as_deref()), (HealthState::Degraded, Some("cannot start a worker: no exe")));
        assert_eq!(h.state(false, true, 2), (HealthState::Ready, None), "a ready worker is not degraded");
        assert_eq!(h.state(true, false, 2), (HealthState::Stopping, None));
        h.started();
        assert_eq!(h.state(false, false, 2), (HealthState::Starting, None));
        h.start_failed("x".into());
        assert_eq!(h.last_failure(), Some("x (1 failed worker starts in a row)"));
    }

    #[test]
    fn voices_are_pending_loaded_or_failed() {
        let cfg = |n: &str, p: &str| VoiceConfig { name: n.into(), path: p.into() };
        let mut v = Voices::default();
        v.adopt(&[cfg("a", "/a"), cfg("b", "/b")]);
        v.loaded("a", desc());
        assert!(v.unavailable("b", "bad json".into()));
        assert!(!v.unavailable("zz", "?".into()));
        let states: Vec<VoiceLoadState> = v.report().iter().map(|s| s.state).collect();
        assert_eq!(states, [VoiceLoadState::Loaded, VoiceLoadState::Failed]);
        assert_eq!(v.unavailable_reason("b").as_deref(), Some("voice 'b' is unavailable: bad json"));
        assert_eq!(v.unavailable_reason("a"), None);
        assert_eq!(v.describe(), "a=/a, b=/b");
        // A reload keeps what is known of a voice with the same path only.
        v.adopt(&[cfg("a", "/a"), cfg("b", "/b2")]);
        let states: Vec<VoiceLoadState> = v.report().iter().map(|s| s.state).collect();
        assert_eq!(states, [VoiceLoadState::Loaded, VoiceLoadState::Pending]);
        assert!(v.known().iter().any(|k| k.name == "a" && k.info.is_some()));
    }
}
