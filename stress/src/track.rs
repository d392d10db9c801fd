//! What happened to every request: one record per id, filled by the
//! connection readers as replies arrive.
//!
//! Owns the reply bookkeeping the invariants are checked against: terminal
//! replies per id, replies after the terminal one, replies for ids never
//! sent, audio sequence gaps. It never sends anything.
use crate::texts::TextKind;
use serde::Serialize;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;
use ttsd::protocol::{ErrorCode, Fault, Reply};

/// The fault a request carried, as reported.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FlagFault {
    Crash,
    Hang,
    Slow,
    Grow,
}

impl FlagFault {
    pub fn to_fault(self) -> Fault {
        match self {
            FlagFault::Crash => Fault::Crash,
            FlagFault::Hang => Fault::Hang,
            FlagFault::Slow => Fault::SleepMs(SLOW_MS),
            FlagFault::Grow => Fault::GrowMb(GROW_MB),
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "crash" => FlagFault::Crash,
            "hang" => FlagFault::Hang,
            "slow" => FlagFault::Slow,
            "grow" => FlagFault::Grow,
            _ => return None,
        })
    }
}

/// A slow request sleeps this long in the worker before synthesizing.
pub const SLOW_MS: u64 = 700;
/// A growing request makes its worker allocate this much (above max_rss_mb
/// together with the worker's own footprint, so it gets recycled).
pub const GROW_MB: u64 = 300;

/// How a request ended, as the client saw it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    Done,
    Error(ErrorCode),
    /// No terminal reply: the connection closed or the wait ran out.
    Lost,
}

impl Outcome {
    pub fn name(self) -> String {
        match self {
            Outcome::Done => "done".into(),
            Outcome::Error(c) => c.as_str().into(),
            Outcome::Lost => "LOST".into(),
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Record {
    pub id: u64,
    pub client: usize,
    pub text_kind: TextKind,
    pub chars: usize,
    pub stream: bool,
    pub fault: Option<FlagFault>,
    /// Seconds since the run started.
    pub sent_s: f64,
    #[serde(skip)]
    pub sent: Option<Instant>,
    pub queued_ms: Option<f64>,
    pub first_audio_ms: Option<f64>,
    pub total_ms: Option<f64>,
    pub end_s: Option<f64>,
    pub outcome: Option<Outcome>,
    pub message: Option<String>,
    /// Terminal replies seen (must be exactly 1).
    pub terminals: u32,
    /// Replies for this id after its terminal reply (must be 0).
    pub after_terminal: u32,
    /// Audio frames whose seq was not the next one (must be 0).
    pub seq_gaps: u32,
    pub audio_frames: u32,
    pub samples: u64,
    pub sample_rate: u32,
    /// From Done.
    pub audio_seconds: f64,
    pub server_queue_ms: u64,
    pub synth_ms: u64,
    pub worker_pid: u32,
    pub retried: bool,
}

#[derive(Default)]
pub struct TrackerInner {
    pub records: HashMap<u64, Record>,
    /// Replies naming an id that was never sent on that connection.
    pub unknown_replies: Vec<String>,
    /// Connection-level errors on load connections (id: None).
    pub conn_errors: Vec<String>,
}

#[derive(Clone)]
pub struct Tracker {
    pub inner: Arc<Mutex<TrackerInner>>,
    pub t0: Instant,
}

impl Tracker {
    pub fn new(t0: Instant) -> Self {
        Self { inner: Arc::new(Mutex::new(TrackerInner::default())), t0 }
    }

    pub fn secs(&self, t: Instant) -> f64 {
        t.duration_since(self.t0).as_secs_f64()
    }

    pub fn sent(&self, rec: Record) {
        self.inner.lock().unwrap().records.insert(rec.id, rec);
    }

    /// Record one reply from a connection; returns the id it ended, if any.
    pub fn reply(&self, reply: &Reply, now: Instant) -> Option<u64> {
        let mut guard = self.inner.lock().unwrap();
        let g = &mut *guard;
        let id = match reply {
            Reply::Queued { id, .. } | Reply::Audio { id, .. } | Reply::Done { id, .. } => *id,
            Reply::Error { id: Some(id), .. } => *id,
            Reply::Error { id: None, code, message } => {
                g.conn_errors.push(format!("{code}: {message}"));
                return None;
            }
            _ => return None,
        };
        let t0 = self.t0;
        let Some(r) = g.records.get_mut(&id) else {
            g.unknown_replies.push(format!("{reply:.80?}"));
            return None;
        };
        let since = |r: &Record| r.sent.map_or(0.0, |s| now.duration_since(s).as_secs_f64() * 1000.0);
        if r.terminals > 0 {
            r.after_terminal += 1;
            if matches!(reply, Reply::Done { .. } | Reply::Error { .. }) {
                r.terminals += 1;
            }
            return None;
        }
        match reply {
            Reply::Queued { .. } => r.queued_ms = Some(since(r)),
            Reply::Audio { seq, sample_rate, samples, .. } => {
                if *seq != r.audio_frames {
                    r.seq_gaps += 1;
                }
                r.audio_frames += 1;
                let t = since(r);
                r.first_audio_ms.get_or_insert(t);
                r.samples += samples.len() as u64;
                r.sample_rate = *sample_rate;
            }
            Reply::Done { audio_seconds, queue_ms, synth_ms, worker_pid, retried, .. } => {
                r.terminals = 1;
                r.outcome = Some(Outcome::Done);
                r.audio_seconds = *audio_seconds;
                r.server_queue_ms = *queue_ms;
                r.synth_ms = *synth_ms;
                r.worker_pid = *worker_pid;
                r.retried = *retried;
                r.total_ms = Some(since(r));
                r.end_s = Some(now.duration_since(t0).as_secs_f64());
            }
            Reply::Error { code, message, .. } => {
                r.terminals = 1;
                r.outcome = Some(Outcome::Error(*code));
                r.message = Some(message.clone());
                r.total_ms = Some(since(r));
                r.end_s = Some(now.duration_since(t0).as_secs_f64());
            }
            _ => {}
        }
        (r.terminals == 1).then_some(id)
    }

    /// A request whose terminal reply never came.
    pub fn lost(&self, id: u64, why: &str, now: Instant) {
        let mut g = self.inner.lock().unwrap();
        let t0 = self.t0;
        if let Some(r) = g.records.get_mut(&id) {
            if r.terminals == 0 && r.outcome.is_none() {
                r.outcome = Some(Outcome::Lost);
                r.message = Some(why.to_string());
                r.end_s = Some(now.duration_since(t0).as_secs_f64());
            }
        }
    }

    pub fn records(&self) -> Vec<Record> {
        let mut v: Vec<Record> = self.inner.lock().unwrap().records.values().cloned().collect();
        v.sort_by_key(|r| r.id);
        v
    }
}
