//! A synthesize request inside the supervisor, from arrival to its one
//! terminal reply.
//!
//! Owns the guarantee "exactly one Done or Error per request": the only ways
//! to end a [`Pending`] consume it ([`Pending::finish`], [`Pending::fail`]),
//! and dropping one unanswered sends an `internal` error. It also owns what
//! the log says about requests and the outcome counters: one line per
//! request that reached a worker, up to [`REQUEST_LINES_PER_SEC`] (tiny
//! requests, or requests cancelled at once, can run faster than anyone
//! reads a log), and only counts for the rest and for requests that never
//! reached a worker (refused on arrival, or ended in the queue), which a
//! client can produce as fast as it can send; the arbiter logs those counts
//! as one summary per interval. It never decides *which* answer a request
//! gets, never talks to a worker, and never writes to a client except
//! through its connection's [`Outbox`].
use super::event::ConnId;
use super::outbox::{InFlight, Outbound, Outbox};
use crate::protocol::{
    clip, ErrorCode, Input, MarkTiming, PhonemeTiming, Reply, SpeechOptions, SynthRequest, Totals, WordTiming,
    ECHO_CHARS,
};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// Audio samples per Audio frame when audio is not streamed (2 MiB of i16).
pub const COALESCED_SAMPLES_PER_FRAME: usize = 1 << 20;
/// Most samples of one unstreamed reply held before whole frames go out
/// early (16 MiB of i16, about six minutes at 22.05 kHz).
pub const MAX_BUFFERED_SAMPLES: usize = 8 * COALESCED_SAMPLES_PER_FRAME;

/// Longest error message a reply carries (a worker's message may quote
/// the text it failed on).
pub const MAX_REPLY_MESSAGE_CHARS: usize = 1024;
/// Longest error message a request's log line carries.
pub const MAX_LOG_MESSAGE_CHARS: usize = 200;
/// Per-request log lines per second, on average, at most...
pub const REQUEST_LINES_PER_SEC: f64 = 50.0;
/// ...with bursts of up to this many.
pub const REQUEST_LINES_BURST: f64 = 200.0;

/// Requests ended per outcome since start, and the counts the arbiter logs
/// instead of one line each (see the module doc). Shared by every
/// [`Pending`]; only the supervisor's one thread touches it.
#[derive(Default)]
pub struct Outcomes {
    done: AtomicU64,
    inner: Mutex<Counts>,
}

#[derive(Default)]
struct Counts {
    errors: BTreeMap<ErrorCode, u64>,
    /// Since the last summary: refused on arrival, by code.
    refused: BTreeMap<ErrorCode, u64>,
    /// Since the last summary: accepted, ended before reaching a worker.
    unrun: BTreeMap<ErrorCode, u64>,
    /// Since the last summary: connections the daemon closed, by reason.
    closed: BTreeMap<&'static str, u64>,
    /// Since the last summary: requests that ran but got no line of their
    /// own (over the line budget), by outcome.
    quiet: BTreeMap<String, u64>,
    /// The per-request line budget: tokens left, when last refilled.
    tokens: f64,
    refilled: Option<Instant>,
}

impl Outcomes {
    /// A poisoned lock only means a panic elsewhere; counts stay valid.
    fn lock(&self) -> MutexGuard<'_, Counts> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn count(&self, code: Option<ErrorCode>) {
        match code {
            None => {
                self.done.fetch_add(1, Ordering::Relaxed);
            }
            Some(c) => *self.lock().errors.entry(c).or_insert(0) += 1,
        }
    }

    /// A request that ended without reaching a worker: counted for the
    /// summary instead of a log line of its own.
    fn count_unlogged(&self, code: ErrorCode, accepted: bool) {
        let mut c = self.lock();
        let m = if accepted { &mut c.unrun } else { &mut c.refused };
        *m.entry(code).or_insert(0) += 1;
    }

    /// Whether a request that ran may have its own log line now (within
    /// [`REQUEST_LINES_PER_SEC`]); if not, it is counted under `outcome`.
    fn may_log(&self, outcome: &str, now: Instant) -> bool {
        let mut c = self.lock();
        let since = c.refilled.map_or(Duration::from_secs(3600), |t| now.saturating_duration_since(t));
        c.tokens = (c.tokens + since.as_secs_f64() * REQUEST_LINES_PER_SEC).min(REQUEST_LINES_BURST);
        c.refilled = Some(now);
        if c.tokens >= 1.0 {
            c.tokens -= 1.0;
            true
        } else {
            *c.quiet.entry(outcome.to_string()).or_insert(0) += 1;
            false
        }
    }

    /// A connection the daemon closed (idle, not reading, backlog).
    pub fn count_closed(&self, reason: &'static str) {
        *self.lock().closed.entry(reason).or_insert(0) += 1;
    }

    pub fn totals(&self) -> Totals {
        Totals {
            done: self.done.load(Ordering::Relaxed),
            errors: self.lock().errors.iter().filter(|&(_, &n)| n > 0).map(|(&c, &n)| (c, n)).collect(),
        }
    }

    /// The summary lines for what was counted since the last call (none
    /// when nothing was), `over` being the time since then; resets it.
    pub fn take_summary(&self, over: Duration) -> Vec<String> {
        let mut c = self.lock();
        let secs = over.as_secs_f64().round().max(1.0);
        let mut lines = Vec::new();
        let mut line = |what: &str, m: Vec<(String, u64)>| {
            let n: u64 = m.iter().map(|(_, n)| n).sum();
            if n > 0 {
                let parts: Vec<String> = m.iter().map(|(k, n)| format!("{k} {n}")).collect();
                lines.push(format!("ttsd: {} in the last {secs} s: {}", what.replace("{n}", &n.to_string()), parts.join(", ")));
            }
        };
        let codes = |m: &mut BTreeMap<ErrorCode, u64>| std::mem::take(m).into_iter().map(|(k, n)| (k.to_string(), n)).collect();
        line("refused {n} requests", codes(&mut c.refused));
        line("{n} queued requests ended before reaching a worker", codes(&mut c.unrun));
        line("closed {n} connections", std::mem::take(&mut c.closed).into_iter().map(|(k, n)| (k.to_string(), n)).collect());
        let over = format!("{{n}} requests that ran had no line of their own (over {REQUEST_LINES_PER_SEC} lines/s)");
        line(&over, std::mem::take(&mut c.quiet).into_iter().collect());
        lines
    }
}

/// Which worker ended a request, for the reply and the log line.
#[derive(Debug, Clone, Copy, Default)]
pub struct WorkerRef {
    pub pid: u32,
    pub rss_bytes: u64,
}

/// A streamed text's state: `req.input` holds every piece so far (kept
/// for a retry; `max_text_chars` bounds it).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TextStream {
    /// `FinishText` arrived.
    pub finished: bool,
    /// Characters received so far.
    pub chars: usize,
    /// How long the client has for each piece (its deadline moves).
    pub timeout: Duration,
    /// Some of its text may be a whole sentence already (see
    /// [`TextStream::note`]); until then, or until it is finished, it
    /// waits in the queue without holding a worker.
    pub speakable: bool,
}

/// Characters after which a streamed text is worth a worker: they may end
/// a sentence (the worker's phonemizer decides which do).
const MAY_END_SENTENCE: &[char] = &['.', '!', '?', '\n', '…', '。', '！', '？', '؟', '।', '\u{2029}'];
/// A streamed text this long goes to a worker whatever it holds (the
/// engine cuts a sentence without a full stop at about 380 characters).
const SPEAKABLE_CHARS: usize = 300;

impl TextStream {
    /// A new piece arrived (`chars` already counts it).
    pub fn note(&mut self, piece: &str, ssml: bool) {
        // SSML: a <break> makes what came before it speakable.
        self.speakable |= ssml || self.chars >= SPEAKABLE_CHARS || piece.contains(MAY_END_SENTENCE);
    }
}

pub struct Pending {
    pub conn: ConnId,
    pub req: SynthRequest,
    /// The voice after defaults.
    pub voice: String,
    pub arrived: Instant,
    pub deadline: Instant,
    /// When it was last handed to a worker.
    pub dispatched: Option<Instant>,
    /// This is the second attempt after a worker died.
    pub retried: bool,
    /// At least one Audio frame went to the client (no retry is possible).
    pub audio_sent: bool,
    /// A cancel was sent to the worker running it.
    pub cancel_sent: bool,
    /// It was queued (got `Queued`), not refused on arrival.
    accepted: bool,
    /// What version 2 added to the request.
    pub opts: SpeechOptions,
    /// Its text is still arriving in pieces (see [`TextStream`]).
    pub text_stream: Option<TextStream>,
    /// Why the daemon ended it (a cancel was sent to its worker for this):
    /// the worker's `cancelled` is answered with this instead.
    pub ended_because: Option<(ErrorCode, String)>,
    out: Outbox,
    /// Counts it against its connection while it lives.
    _in_flight: InFlight,
    outcomes: Arc<Outcomes>,
    buffered: Vec<i16>,
    sample_rate: u32,
    seq: u32,
    answered: bool,
}

impl Pending {
    pub fn new(
        conn: ConnId,
        req: SynthRequest,
        voice: String,
        arrived: Instant,
        deadline: Instant,
        out: Outbox,
        outcomes: Arc<Outcomes>,
    ) -> Self {
        Self {
            conn,
            req,
            voice,
            arrived,
            deadline,
            dispatched: None,
            retried: false,
            audio_sent: false,
            cancel_sent: false,
            accepted: false,
            opts: SpeechOptions::default(),
            text_stream: None,
            ended_because: None,
            _in_flight: out.in_flight(),
            out,
            outcomes,
            buffered: Vec::new(),
            sample_rate: 0,
            seq: 0,
            answered: false,
        }
    }

    pub fn id(&self) -> u64 {
        self.req.id
    }

    /// Whether a worker has something to do for it: always, but for a
    /// streamed text with no possible sentence yet.
    pub fn ready(&self) -> bool {
        self.text_stream.as_ref().is_none_or(|t| t.finished || t.speakable)
    }

    fn send(&self, reply: Reply) {
        // A client that went away cannot be answered; that is not an error.
        let _ = self.out.send(Outbound::Frame(reply));
    }

    /// Tell the client where it stands in the queue.
    pub fn queued(&mut self, position: usize) {
        self.accepted = true;
        self.send(Reply::Queued { id: self.id(), position: position.min(u32::MAX as usize) as u32 });
    }

    /// A sentence's timings: sent at once (ahead of its audio).
    pub fn timings(&mut self, words: Vec<WordTiming>, phonemes: Vec<PhonemeTiming>, marks: Vec<MarkTiming>) {
        self.send(Reply::Timings { id: self.id(), words, phonemes, marks });
    }

    /// A chunk from the worker: sent now when streaming (a streamed text's
    /// sentences always go out as they are ready), kept otherwise.
    pub fn audio(&mut self, sample_rate: u32, samples: Vec<i16>) {
        self.sample_rate = sample_rate;
        if self.req.stream || self.text_stream.is_some() {
            self.send(Reply::Audio { id: self.id(), seq: self.seq, sample_rate, samples });
            self.seq += 1;
            self.audio_sent = true;
        } else {
            self.buffered.extend_from_slice(&samples);
            // The daemon holds at most this much of one unstreamed reply:
            // past it, whole frames go out early (same frames, same order),
            // so a very long reply neither grows the supervisor without
            // bound nor passes the connection's audio cap at the end.
            while self.buffered.len() >= MAX_BUFFERED_SAMPLES {
                let part: Vec<i16> = self.buffered.drain(..COALESCED_SAMPLES_PER_FRAME).collect();
                self.send(Reply::Audio { id: self.id(), seq: self.seq, sample_rate, samples: part });
                self.seq += 1;
                self.audio_sent = true;
            }
        }
    }

    /// Forget audio of a failed attempt before a retry (nothing was sent).
    pub fn reset_for_retry(&mut self) {
        debug_assert!(!self.audio_sent);
        self.buffered.clear();
        self.seq = 0;
        self.retried = true;
        self.dispatched = None;
        self.cancel_sent = false;
    }

    /// Terminal: success. Coalesced audio goes out first, then Done.
    pub fn finish(mut self, worker: WorkerRef, samples: u64, sample_rate: u32, synth_ms: u64) {
        let sample_rate = if sample_rate > 0 { sample_rate } else { self.sample_rate };
        let buffered = std::mem::take(&mut self.buffered);
        for part in buffered.chunks(COALESCED_SAMPLES_PER_FRAME) {
            self.send(Reply::Audio { id: self.id(), seq: self.seq, sample_rate, samples: part.to_vec() });
            self.seq += 1;
        }
        let audio_seconds = samples as f64 / sample_rate.max(1) as f64;
        let queue_ms = self.queue_ms();
        self.send(Reply::Done {
            id: self.id(),
            audio_seconds,
            queue_ms,
            synth_ms,
            worker_pid: worker.pid,
            retried: self.retried,
        });
        self.log("done", "", queue_ms, synth_ms, audio_seconds, worker);
        self.outcomes.count(None);
        self.answered = true;
    }

    /// Terminal: failure with `code`.
    pub fn fail(mut self, code: ErrorCode, message: impl Into<String>, worker: Option<WorkerRef>) {
        self.fail_in_place(code, message.into(), worker);
    }

    fn fail_in_place(&mut self, code: ErrorCode, message: String, worker: Option<WorkerRef>) {
        let (code, message) = match self.ended_because.take() {
            Some(why) if code == ErrorCode::Cancelled => why,
            _ => (code, message),
        };
        let message = clip(&message, MAX_REPLY_MESSAGE_CHARS).into_owned();
        let message = if self.retried && !message.contains("retr") {
            format!("{message} (after one retry on another worker)")
        } else {
            message
        };
        let synth_ms = self.dispatched.map_or(0, |t| t.elapsed().as_millis() as u64);
        let queue_ms = self.queue_ms();
        if self.dispatched.is_some() {
            self.log(code.as_str(), &message, queue_ms, synth_ms, 0.0, worker.unwrap_or_default());
        } else {
            self.outcomes.count_unlogged(code, self.accepted);
        }
        self.send(Reply::Error { id: Some(self.id()), code, message });
        self.outcomes.count(Some(code));
        self.answered = true;
    }

    fn queue_ms(&self) -> u64 {
        let until = self.dispatched.unwrap_or_else(Instant::now);
        until.saturating_duration_since(self.arrived).as_millis() as u64
    }

    fn log(&self, outcome: &str, message: &str, queue_ms: u64, synth_ms: u64, audio_s: f64, w: WorkerRef) {
        if !self.outcomes.may_log(outcome, Instant::now()) {
            return;
        }
        let rtf = if audio_s > 0.0 { synth_ms as f64 / 1000.0 / audio_s } else { 0.0 };
        let text = match &self.req.input {
            Input::Text(t) => clip(t, 40).into_owned(),
            Input::PhonemeIds(ids) => format!("<{} phoneme ids>", ids.len()),
        };
        let msg = if message.is_empty() {
            String::new()
        } else {
            format!(" msg={:?}", clip(message, MAX_LOG_MESSAGE_CHARS))
        };
        crate::logln!(
            "ttsd: request conn={} id={} outcome={outcome} queue_ms={queue_ms} synth_ms={synth_ms} audio_s={audio_s:.2} \
             rtf={rtf:.3} worker_pid={} worker_rss_mb={} retried={} voice={:?} text={text:?}{msg}",
            self.conn,
            self.id(),
            w.pid,
            w.rss_bytes >> 20,
            self.retried,
            clip(&self.voice, ECHO_CHARS),
        );
    }
}

impl Drop for Pending {
    fn drop(&mut self) {
        if !self.answered {
            self.fail_in_place(ErrorCode::Internal, "the daemon lost track of this request".into(), None);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::supervisor::outbox::{test_channel, Outgoing};

    fn pending(stream: bool) -> (Pending, Outgoing, Arc<Outcomes>) {
        let (out, rx) = test_channel();
        let outcomes = Arc::new(Outcomes::default());
        let req = SynthRequest { id: 5, stream, ..SynthRequest::text("hello") };
        let now = Instant::now();
        (Pending::new(1, req, "joe".into(), now, now, out, outcomes.clone()), rx, outcomes)
    }

    fn frames(rx: &mut Outgoing) -> Vec<Reply> {
        rx.replies()
    }

    #[test]
    fn dropping_an_unanswered_request_still_answers_it() {
        let (p, mut rx, outcomes) = pending(true);
        drop(p);
        let got = frames(&mut rx);
        assert_eq!(got.len(), 1);
        assert!(matches!(got[0], Reply::Error { id: Some(5), code: ErrorCode::Internal, .. }));
        assert_eq!(outcomes.totals().errors, vec![(ErrorCode::Internal, 1)]);
    }

    #[test]
    fn streamed_audio_goes_out_at_once_and_done_ends_it() {
        let (mut p, mut rx, outcomes) = pending(true);
        p.audio(22050, vec![1, 2]);
        p.audio(22050, vec![3]);
        assert!(p.audio_sent);
        p.finish(WorkerRef { pid: 9, rss_bytes: 0 }, 3, 22050, 10);
        let got = frames(&mut rx);
        assert_eq!(got.len(), 3);
        assert!(matches!(&got[1], Reply::Audio { seq: 1, samples, .. } if samples == &vec![3]));
        assert!(matches!(got[2], Reply::Done { id: 5, worker_pid: 9, retried: false, .. }));
        assert_eq!(outcomes.totals().done, 1);
    }

    #[test]
    fn unstreamed_audio_is_coalesced_before_done() {
        let (mut p, mut rx, _) = pending(false);
        p.audio(16000, vec![1, 2]);
        p.audio(16000, vec![3]);
        assert!(!p.audio_sent);
        assert!(frames(&mut rx).is_empty());
        p.finish(WorkerRef::default(), 3, 16000, 1);
        let got = frames(&mut rx);
        assert!(matches!(&got[0], Reply::Audio { seq: 0, sample_rate: 16000, samples, .. } if samples == &vec![1, 2, 3]));
        assert!(matches!(got[1], Reply::Done { .. }));
    }

    /// Regression: an unstreamed reply was held whole until Done; past the
    /// connection's 128 MiB audio cap the connection was dropped with no
    /// terminal reply. Now at most MAX_BUFFERED_SAMPLES are held.
    #[test]
    fn a_very_long_unstreamed_reply_goes_out_in_order_with_bounded_buffering() {
        let (mut p, mut rx, _) = pending(false);
        let chunk = vec![7i16; COALESCED_SAMPLES_PER_FRAME / 2];
        let chunks = 2 * MAX_BUFFERED_SAMPLES / chunk.len() + 1;
        let mut got = Vec::new();
        for _ in 0..chunks {
            p.audio(22050, chunk.clone());
            assert!(p.buffered.len() < MAX_BUFFERED_SAMPLES);
            got.extend(frames(&mut rx));
        }
        assert!(p.audio_sent, "audio went out: no retry after this");
        p.finish(WorkerRef::default(), (chunks * chunk.len()) as u64, 22050, 1);
        got.extend(frames(&mut rx));
        let mut total = 0;
        for (i, reply) in got.iter().enumerate() {
            match reply {
                Reply::Audio { seq, samples, .. } => {
                    assert_eq!(*seq as usize, i, "in order");
                    total += samples.len();
                }
                Reply::Done { .. } => assert_eq!(i, got.len() - 1, "Done last"),
                other => panic!("{other:?}"),
            }
        }
        assert!(matches!(got.last(), Some(Reply::Done { .. })));
        assert_eq!(total, chunks * chunk.len(), "every sample once");
    }

    #[test]
    fn a_retried_failure_says_so() {
        let (mut p, mut rx, _) = pending(false);
        p.audio(16000, vec![1]);
        p.reset_for_retry();
        p.fail(ErrorCode::WorkerCrashed, "worker died", None);
        match &frames(&mut rx)[0] {
            Reply::Error { code: ErrorCode::WorkerCrashed, message, .. } => assert!(message.contains("retry")),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn refusals_and_unrun_requests_are_counted_not_logged() {
        let outcomes = Arc::new(Outcomes::default());
        let (out, _rx) = test_channel();
        let mk = |id| {
            let req = SynthRequest { id, ..SynthRequest::text("hi") };
            let now = Instant::now();
            Pending::new(1, req, "joe".into(), now, now, out.clone(), outcomes.clone())
        };
        for id in 0..3 {
            mk(id).fail(ErrorCode::Overloaded, "queue is full", None);
        }
        mk(3).fail(ErrorCode::UnknownVoice, "no voice 'x'", None);
        let mut queued = mk(4);
        queued.queued(0);
        queued.fail(ErrorCode::Cancelled, "cancelled by the client", None);
        outcomes.count_closed("idle");
        assert_eq!(out.active(), 0, "every ended request let go of its connection");
        let lines = outcomes.take_summary(Duration::from_secs(10));
        assert_eq!(
            lines,
            vec![
                "ttsd: refused 4 requests in the last 10 s: unknown_voice 1, overloaded 3".to_string(),
                "ttsd: 1 queued requests ended before reaching a worker in the last 10 s: cancelled 1".to_string(),
                "ttsd: closed 1 connections in the last 10 s: idle 1".to_string(),
            ]
        );
        assert!(outcomes.take_summary(Duration::from_secs(10)).is_empty(), "the summary resets");
        assert_eq!(outcomes.totals().errors.iter().map(|e| e.1).sum::<u64>(), 5, "totals keep counting");
    }

    #[test]
    fn request_lines_past_the_budget_are_counted() {
        let outcomes = Outcomes::default();
        let t = Instant::now();
        let allowed = (0..1000).filter(|_| outcomes.may_log("done", t)).count();
        assert_eq!(allowed, REQUEST_LINES_BURST as usize, "a burst, then nothing at the same instant");
        assert!(outcomes.may_log("done", t + Duration::from_millis(100)), "the budget refills");
        let lines = outcomes.take_summary(Duration::from_secs(10));
        assert_eq!(lines.len(), 1, "{lines:?}");
        assert!(lines[0].contains("800 requests that ran had no line of their own") && lines[0].ends_with("done 800"), "{lines:?}");
    }

    #[test]
    fn long_messages_are_clipped_in_the_reply() {
        let (p, mut rx, _) = pending(false);
        p.fail(ErrorCode::Internal, "m".repeat(1 << 20), None);
        match &frames(&mut rx)[0] {
            Reply::Error { message, .. } => assert!(message.chars().count() <= MAX_REPLY_MESSAGE_CHARS + 1),
            other => panic!("{other:?}"),
        }
    }
}
