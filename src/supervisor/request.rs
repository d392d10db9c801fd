//! A synthesize request inside the supervisor, from arrival to its one
//! terminal reply.
//!
//! Owns the guarantee "exactly one Done or Error per request": the only ways
//! to end a [`Pending`] consume it ([`Pending::finish`], [`Pending::fail`]),
//! and dropping one unanswered sends an `internal` error. It also owns the
//! one log line per request and the outcome counters. It never decides
//! *which* answer a request gets.
use super::conn::{Outbound, Outbox};
use crate::protocol::{ErrorCode, Input, Reply, SynthRequest, Totals};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

/// Audio samples per Audio frame when audio is not streamed (2 MiB of i16).
pub const COALESCED_SAMPLES_PER_FRAME: usize = 1 << 20;

/// Identifies a client connection for the daemon's lifetime.
pub type ConnId = u64;

/// Requests ended per outcome: index 0 is `done`, then one per error code.
#[derive(Default)]
pub struct Outcomes {
    counts: [AtomicU64; 1 + ErrorCode::ALL.len()],
}

impl Outcomes {
    fn count(&self, code: Option<ErrorCode>) {
        let i = code.map_or(0, |c| 1 + c as usize);
        self.counts[i].fetch_add(1, Ordering::Relaxed);
    }

    pub fn totals(&self) -> Totals {
        Totals {
            done: self.counts[0].load(Ordering::Relaxed),
            errors: ErrorCode::ALL
                .iter()
                .map(|&c| (c, self.counts[1 + c as usize].load(Ordering::Relaxed)))
                .filter(|&(_, n)| n > 0)
                .collect(),
        }
    }
}

/// Which worker ended a request, for the reply and the log line.
#[derive(Debug, Clone, Copy, Default)]
pub struct WorkerRef {
    pub pid: u32,
    pub rss_bytes: u64,
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
    out: Outbox,
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

    fn send(&self, reply: Reply) {
        // A client that went away cannot be answered; that is not an error.
        let _ = self.out.send(Outbound::Frame(reply));
    }

    /// Tell the client where it stands in the queue.
    pub fn queued(&self, position: usize) {
        self.send(Reply::Queued { id: self.id(), position: position.min(u32::MAX as usize) as u32 });
    }

    /// A chunk from the worker: sent now when streaming, kept otherwise.
    pub fn audio(&mut self, sample_rate: u32, samples: Vec<i16>) {
        self.sample_rate = sample_rate;
        if self.req.stream {
            self.send(Reply::Audio { id: self.id(), seq: self.seq, sample_rate, samples });
            self.seq += 1;
            self.audio_sent = true;
        } else {
            self.buffered.extend_from_slice(&samples);
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
        let message = if self.retried && !message.contains("retr") {
            format!("{message} (after one retry on another worker)")
        } else {
            message
        };
        let synth_ms = self.dispatched.map_or(0, |t| t.elapsed().as_millis() as u64);
        let queue_ms = self.queue_ms();
        self.log(code.as_str(), &message, queue_ms, synth_ms, 0.0, worker.unwrap_or_default());
        self.send(Reply::Error { id: Some(self.id()), code, message });
        self.outcomes.count(Some(code));
        self.answered = true;
    }

    fn queue_ms(&self) -> u64 {
        let until = self.dispatched.unwrap_or_else(Instant::now);
        until.saturating_duration_since(self.arrived).as_millis() as u64
    }

    fn log(&self, outcome: &str, message: &str, queue_ms: u64, synth_ms: u64, audio_s: f64, w: WorkerRef) {
        let rtf = if audio_s > 0.0 { synth_ms as f64 / 1000.0 / audio_s } else { 0.0 };
        let text = match &self.req.input {
            Input::Text(t) => preview(t, 40),
            Input::PhonemeIds(ids) => format!("<{} phoneme ids>", ids.len()),
        };
        let msg = if message.is_empty() { String::new() } else { format!(" msg={message:?}") };
        crate::logln!(
            "ttsd: request conn={} id={} outcome={outcome} queue_ms={queue_ms} synth_ms={synth_ms} audio_s={audio_s:.2} \
             rtf={rtf:.3} worker_pid={} worker_rss_mb={} retried={} text={text:?}{msg}",
            self.conn,
            self.id(),
            w.pid,
            w.rss_bytes >> 20,
            self.retried,
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

/// At most `n` characters of `s`, with an ellipsis when cut.
pub fn preview(s: &str, n: usize) -> String {
    let mut out: String = s.chars().take(n).collect();
    if s.chars().nth(n).is_some() {
        out.push('…');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::sync::mpsc;

    fn pending(stream: bool) -> (Pending, mpsc::UnboundedReceiver<Outbound>, Arc<Outcomes>) {
        let (tx, rx) = mpsc::unbounded_channel();
        let outcomes = Arc::new(Outcomes::default());
        let req = SynthRequest { id: 5, stream, ..SynthRequest::text("hello") };
        let now = Instant::now();
        (Pending::new(1, req, "joe".into(), now, now, Outbox::new(tx), outcomes.clone()), rx, outcomes)
    }

    fn frames(rx: &mut mpsc::UnboundedReceiver<Outbound>) -> Vec<Reply> {
        let mut v = Vec::new();
        while let Ok(Outbound::Frame(r)) = rx.try_recv() {
            v.push(r);
        }
        v
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
    fn preview_cuts_on_characters() {
        assert_eq!(preview("héllo", 3), "hél…");
        assert_eq!(preview("abc", 3), "abc");
    }
}
