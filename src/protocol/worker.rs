//! The internal supervisor <-> worker messages, framed like the client
//! protocol (u32 LE length + bincode) over the worker's socketpair.
//!
//! Owns the message types only. Never exposed to clients; it may change
//! freely between builds because both ends are always the same binary.
use super::{ErrorCode, Fault, Input, MarkTiming, PhonemeTiming, SpeechOptions, VoiceDesc, WordTiming};
use serde::{Deserialize, Serialize};

/// Largest internal frame (an audio chunk of one long sentence fits easily).
pub const MAX_INTERNAL_FRAME: usize = 32 * 1024 * 1024;

/// A voice a worker must load.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VoiceSpec {
    pub name: String,
    pub path: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Job {
    /// Supervisor-chosen, unique for the daemon's lifetime.
    pub job: u64,
    pub voice: String,
    pub input: Input,
    pub speaker: u32,
    pub length_scale: Option<f32>,
    pub noise_scale: Option<f32>,
    pub noise_w: Option<f32>,
    pub seed: Option<u64>,
    /// Decoder windows as soon as ready (not peak-normalised) instead of
    /// whole sentences.
    pub stream: bool,
    /// Time left until the request's deadline when the job was sent.
    pub remaining_ms: u64,
    /// Cores (engine lanes) this job may use: the supervisor shares the
    /// machine out among the busy workers. Same audio whatever it is.
    pub threads: u32,
    pub fault: Option<Fault>,
    pub opts: SpeechOptions,
    /// A streamed text: `input` is the text so far, more may follow in
    /// `ToWorker::Text` until `ToWorker::Finish` (or `finished` already).
    pub text_stream: bool,
    /// No more text will come (always, for a text sent whole).
    pub finished: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum ToWorker {
    /// First message: what to load and how often to report.
    Init { voices: Vec<VoiceSpec>, heartbeat_ms: u64 },
    Job(Job),
    /// Cancel job `job` if it is still running (stale ids are ignored).
    Cancel { job: u64 },
    /// Exit after the current job (if any).
    Stop,
    /// The next piece of streamed-text job `job`; the deadline moved.
    Text { job: u64, text: String, remaining_ms: u64 },
    /// No more text for streamed-text job `job`.
    Finish { job: u64, remaining_ms: u64 },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum FromWorker {
    /// Loaded and serving `voices`; the voices in `failed` (name, reason)
    /// did not load and are not served by this worker.
    Ready { voices: Vec<(String, VoiceDesc)>, failed: Vec<(String, String)> },
    /// No voice loaded: one of these per voice, then the worker exits with
    /// `EXIT_LOAD_FAILED`.
    LoadFailed { voice: String, reason: String },
    Heartbeat { rss_bytes: u64 },
    Chunk { job: u64, sample_rate: u32, samples: Vec<i16> },
    /// Timings of the sentence whose audio follows (offsets already in the
    /// request's text and audio).
    Timings { job: u64, words: Vec<WordTiming>, phonemes: Vec<PhonemeTiming>, marks: Vec<MarkTiming> },
    JobDone { job: u64, samples: u64, sample_rate: u32, synth_ms: u64 },
    JobFailed { job: u64, code: ErrorCode, message: String },
}

/// Exit code of a worker that could not load its voices: the supervisor
/// counts these towards `degraded_after_failures` rather than as crashes.
pub const EXIT_LOAD_FAILED: i32 = 3;
/// Exit code of a worker whose supervisor channel broke or spoke nonsense.
pub const EXIT_CHANNEL: i32 = 4;
