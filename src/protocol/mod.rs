//! The client protocol: message types and their framing (see PROTOCOL.md).
//!
//! Owns the wire format between ttsd and its clients, the internal one
//! between the supervisor and its workers ([`worker`]), and the ranges a
//! request's parameters must fall in, checked in one place ([`limits`]).
//! It never does I/O policy (connection limits, closing, retries): the
//! supervisor and client decide that. Changing a type here changes the
//! wire: bump [`PROTOCOL_VERSION`] and PROTOCOL.md with it. Variant order is
//! the wire tag: append, never reorder.
pub mod frame;
pub mod limits;
pub mod worker;

pub use frame::{decode, encode, read_frame, read_frame_async, write_frame, FrameError};

use serde::{Deserialize, Serialize};

/// The newest protocol version this build speaks (sent in HelloOk to a
/// client that says it, or a newer one is refused).
pub const PROTOCOL_VERSION: u32 = 2;
/// The oldest version still served: version 1 clients keep working, byte
/// for byte (version 2 only appends variants).
pub const MIN_PROTOCOL_VERSION: u32 = 1;

/// Most characters of client input (a voice name, a text) that a reply or a
/// log line may echo: a client must not be able to make the daemon repeat a
/// megabyte back at it, or into its log, once per request.
pub const ECHO_CHARS: usize = 64;

/// At most `max` characters of `s`, cut on a character boundary, with an
/// ellipsis when cut. Looks at no more than `max + 1` characters of `s`.
pub fn clip(s: &str, max: usize) -> std::borrow::Cow<'_, str> {
    match s.char_indices().nth(max) {
        Some((at, _)) => format!("{}…", &s[..at]).into(),
        None => s.into(),
    }
}

/// Client to server.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Request {
    /// Must be the first frame on a connection, and only the first.
    Hello { version: u32, client: String },
    Synthesize(SynthRequest),
    /// Cancel a queued or running synthesize request of this connection.
    Cancel { id: u64 },
    Status,
    Health,
    Voices,
    /// Version 2: a synthesize request with the options version 1 cannot
    /// express (timings, SSML).
    SynthesizeWith {
        req: SynthRequest,
        opts: SpeechOptions,
    },
    /// Version 2: opens a streamed-text request. `req.input` must be
    /// `Text`: the first piece (it may be empty). More pieces follow with
    /// `AppendText`, then `FinishText`; each complete sentence is spoken as
    /// soon as it has arrived.
    OpenText {
        req: SynthRequest,
        opts: SpeechOptions,
    },
    /// Version 2: the next piece of open streamed-text request `id`, of any
    /// size (it may end inside a word, or inside an SSML tag).
    AppendText {
        id: u64,
        text: String,
    },
    /// Version 2: no more pieces for `id`: the rest is spoken, then the
    /// request's one terminal reply.
    FinishText {
        id: u64,
    },
}

impl Request {
    /// The protocol version a client must have said in Hello to send this.
    pub fn min_version(&self) -> u32 {
        match self {
            Request::SynthesizeWith { .. }
            | Request::OpenText { .. }
            | Request::AppendText { .. }
            | Request::FinishText { .. } => 2,
            _ => 1,
        }
    }
}

/// Which timings a request wants with its audio (version 2).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TimingLevel {
    #[default]
    None,
    /// A `Timings` reply per sentence with its words.
    Words,
    /// Words, and every phoneme.
    Phonemes,
}

/// What version 2 adds to a synthesize request.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SpeechOptions {
    pub timings: TimingLevel,
    /// The text is SSML: `<speak>`, `<mark name=.../>` and `<break .../>`
    /// are honoured, other tags stripped (their text kept), entities
    /// decoded. Marks are reported in `Timings` replies whatever `timings`.
    pub ssml: bool,
}

/// One word of the request's text and when it is spoken.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WordTiming {
    /// Character offsets (Unicode scalar values) of the word in the
    /// request's text as sent (all pieces of a streamed text together;
    /// for SSML, in the markup): `[text_start, text_end)`.
    pub text_start: u32,
    pub text_end: u32,
    /// The word as written (at most 64 characters of it).
    pub word: String,
    /// Samples from the start of the request's audio: `[start, end)`.
    pub start: u64,
    pub end: u64,
}

/// One phoneme (espeak-ng IPA, one Unicode scalar) and when it is spoken.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PhonemeTiming {
    pub phoneme: String,
    pub start: u64,
    pub end: u64,
}

/// An SSML `<mark name=.../>` and the sample it falls on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MarkTiming {
    pub name: String,
    pub sample: u64,
}

/// What to speak.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Input {
    Text(String),
    /// Phoneme ids as the voice's `phoneme_id_map` gives them (BOS/pad/EOS included).
    PhonemeIds(Vec<i64>),
}

/// Fault injection. Always part of the wire type; a daemon built without the
/// `fault-injection` feature answers any non-`None` value with `bad_request`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub enum Fault {
    /// The worker aborts (dies by SIGABRT).
    Crash,
    /// The worker spins forever, ignoring timeouts and sending no heartbeat.
    Hang,
    /// The worker sleeps this long before synthesizing, cooperatively
    /// (timeouts and cancels still apply, heartbeats still go out).
    SleepMs(u64),
    /// The worker allocates and touches this many MiB (never freed) first.
    GrowMb(u64),
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SynthRequest {
    /// Chosen by the client, unique among its connection's pending requests.
    pub id: u64,
    pub input: Input,
    /// `None`: the daemon's default voice.
    pub voice: Option<String>,
    /// `None`: speaker 0.
    pub speaker: Option<u32>,
    /// `None`: the voice's default.
    pub length_scale: Option<f32>,
    pub noise_scale: Option<f32>,
    pub noise_w: Option<f32>,
    /// `None`: a random seed.
    pub seed: Option<u64>,
    /// Deadline, counted from the server's receipt of the request (queue time
    /// counts). `None`: the daemon's `default_timeout_ms`.
    pub timeout_ms: Option<u64>,
    /// `true`: audio frames as each sentence is ready. `false`: all audio in
    /// Audio frames right before Done.
    pub stream: bool,
    pub fault: Option<Fault>,
}

impl SynthRequest {
    /// A request for `text` with every option at its default (id 0).
    pub fn text(text: impl Into<String>) -> Self {
        Self {
            id: 0,
            input: Input::Text(text.into()),
            voice: None,
            speaker: None,
            length_scale: None,
            noise_scale: None,
            noise_w: None,
            seed: None,
            timeout_ms: None,
            stream: false,
            fault: None,
        }
    }
}

/// Server to client.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Reply {
    HelloOk { version: u32, server: String },
    /// The request was accepted; `position` requests were ahead of it (0: it
    /// goes to a worker as soon as one is free).
    Queued { id: u64, position: u32 },
    Audio { id: u64, seq: u32, sample_rate: u32, samples: Vec<i16> },
    /// Terminal: the request succeeded.
    Done {
        id: u64,
        audio_seconds: f64,
        queue_ms: u64,
        synth_ms: u64,
        worker_pid: u32,
        /// The first worker died before any audio was sent; this is the retry.
        retried: bool,
    },
    /// With `id: Some`: terminal for that request. With `id: None`: about the
    /// connection or a frame that named no request; terminal for nothing.
    Error { id: Option<u64>, code: ErrorCode, message: String },
    Status(StatusReply),
    Health {
        state: HealthState,
        reason: Option<String>,
    },
    Voices {
        default_voice: String,
        voices: Vec<VoiceStatus>,
    },
    /// Version 2: when the words (and phonemes, and marks) of one sentence
    /// are spoken, sent before that sentence's audio. Only to requests that
    /// asked for timings or sent SSML with marks.
    Timings {
        id: u64,
        words: Vec<WordTiming>,
        phonemes: Vec<PhonemeTiming>,
        marks: Vec<MarkTiming>,
    },
}

/// The fixed set of error codes. Wire tag = position in this list.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    BadRequest,
    UnknownVoice,
    Overloaded,
    Timeout,
    Cancelled,
    WorkerCrashed,
    Unavailable,
    ShuttingDown,
    FrameTooLarge,
    MalformedFrame,
    UnsupportedVersion,
    DuplicateId,
    UnknownId,
    PermissionDenied,
    Internal,
}

impl ErrorCode {
    pub const ALL: [ErrorCode; 15] = [
        ErrorCode::BadRequest,
        ErrorCode::UnknownVoice,
        ErrorCode::Overloaded,
        ErrorCode::Timeout,
        ErrorCode::Cancelled,
        ErrorCode::WorkerCrashed,
        ErrorCode::Unavailable,
        ErrorCode::ShuttingDown,
        ErrorCode::FrameTooLarge,
        ErrorCode::MalformedFrame,
        ErrorCode::UnsupportedVersion,
        ErrorCode::DuplicateId,
        ErrorCode::UnknownId,
        ErrorCode::PermissionDenied,
        ErrorCode::Internal,
    ];

    /// The snake_case name used in PROTOCOL.md, logs and JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::BadRequest => "bad_request",
            ErrorCode::UnknownVoice => "unknown_voice",
            ErrorCode::Overloaded => "overloaded",
            ErrorCode::Timeout => "timeout",
            ErrorCode::Cancelled => "cancelled",
            ErrorCode::WorkerCrashed => "worker_crashed",
            ErrorCode::Unavailable => "unavailable",
            ErrorCode::ShuttingDown => "shutting_down",
            ErrorCode::FrameTooLarge => "frame_too_large",
            ErrorCode::MalformedFrame => "malformed_frame",
            ErrorCode::UnsupportedVersion => "unsupported_version",
            ErrorCode::DuplicateId => "duplicate_id",
            ErrorCode::UnknownId => "unknown_id",
            ErrorCode::PermissionDenied => "permission_denied",
            ErrorCode::Internal => "internal",
        }
    }
}

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HealthState {
    /// At least one worker is ready and no voice is failing.
    Ready,
    /// Voices cannot be loaded (see `reason`); synthesize answers `unavailable`.
    Degraded,
    /// No worker has become ready yet.
    Starting,
    /// SIGTERM/SIGINT received; no new requests are taken.
    Stopping,
}

impl HealthState {
    pub fn as_str(self) -> &'static str {
        match self {
            HealthState::Ready => "ready",
            HealthState::Degraded => "degraded",
            HealthState::Starting => "starting",
            HealthState::Stopping => "stopping",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WorkerState {
    /// Started, loading voices.
    Starting,
    Idle,
    Busy,
    /// Asked to exit (recycling, reload or shutdown); finishing its job.
    Stopping,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WorkerStatus {
    /// Slot index (0..workers); a replacement takes over its slot.
    pub slot: u32,
    pub pid: u32,
    pub state: WorkerState,
    /// Will be replaced once its successor is ready (max_requests, max_rss_mb, reload).
    pub retiring: bool,
    pub jobs_done: u64,
    /// Unplanned restarts of this slot (crashes, kills, load failures).
    pub restarts: u64,
    pub rss_bytes: u64,
    pub heartbeat_age_ms: u64,
    pub uptime_ms: u64,
    /// Request id it is working on (the client's id).
    pub current_request: Option<u64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum VoiceLoadState {
    /// No worker has reported on it yet.
    Pending,
    Loaded,
    Failed,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VoiceDesc {
    pub language: String,
    pub quality: String,
    pub sample_rate: u32,
    pub num_speakers: u32,
    pub num_symbols: u32,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VoiceStatus {
    pub name: String,
    pub path: String,
    pub state: VoiceLoadState,
    /// Known once a worker loaded it.
    pub info: Option<VoiceDesc>,
    /// Why it failed to load, if it did.
    pub error: Option<String>,
}

/// How many requests ended with each outcome since start.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Totals {
    pub done: u64,
    /// Requests answered with an error, by code (codes never seen are absent).
    pub errors: Vec<(ErrorCode, u64)>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StatusReply {
    pub server_version: String,
    pub pid: u32,
    pub uptime_ms: u64,
    pub state: HealthState,
    pub degraded_reason: Option<String>,
    pub queue_depth: u32,
    pub queue_capacity: u32,
    pub connections: u32,
    pub workers_configured: u32,
    pub workers: Vec<WorkerStatus>,
    /// Unplanned worker restarts since start, all slots together.
    pub worker_restarts: u64,
    /// Planned replacements (max_requests, max_rss_mb, reload).
    pub worker_recycles: u64,
    pub totals: Totals,
    pub voices: Vec<VoiceStatus>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_code_tags_are_the_documented_ones() {
        for (i, code) in ErrorCode::ALL.iter().enumerate() {
            let bytes = encode(code).unwrap();
            assert_eq!(&bytes[4..], &(i as u32).to_le_bytes(), "{code}");
            let json = serde_json::to_string(code).unwrap();
            assert_eq!(json, format!("\"{}\"", code.as_str()));
        }
        // ALL is kept by hand: the tag after its last one must not decode,
        // or a code was added to the enum and left out of ALL.
        let past = frame::decode_payload::<ErrorCode>(&(ErrorCode::ALL.len() as u32).to_le_bytes());
        assert!(past.is_err(), "ErrorCode has a variant missing from ErrorCode::ALL: {past:?}");
    }

    #[test]
    fn clip_cuts_on_characters() {
        assert_eq!(clip("héllo", 3), "hél…");
        assert_eq!(clip("abc", 3), "abc");
        assert_eq!(clip("", 0), "");
        assert_eq!(clip("ab", 0), "…");
        let huge = "ü".repeat(1 << 20);
        let c = clip(&huge, ECHO_CHARS);
        assert_eq!(c.chars().count(), ECHO_CHARS + 1);
    }
}
