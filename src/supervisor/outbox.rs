//! One connection's reply sink: what the arbiter, its requests and the
//! connection's own front-end send to a client, held until the front-end's
//! writer has written it.
//!
//! Owns what one client may make the daemon hold in replies: each reply is
//! encoded once, when queued, by the front-end's own [`Encode`] (so the
//! count is in real bytes, whatever the wire), and a connection whose
//! unread replies would pass [`MAX_CONTROL_BACKLOG`] (non-audio) or
//! [`MAX_AUDIO_BACKLOG`] (audio) is closed. It also owns the state both
//! ends of a connection see: its requests in flight, its last sign of life,
//! and whether (and why) it is closing, with the waits built on them (room
//! below a backlog, closed, idle).
//!
//! It never decides what a reply says, never touches a socket (the
//! front-end's writer does, through [`Outgoing`]) and never knows which
//! wire the bytes are for.
use crate::protocol::Reply;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, Notify};

/// Most non-audio reply bytes queued for one client. A front-end stops
/// reading a connection long before this (the native one at 64 KiB), so
/// only a connection's running requests and its last queries add to it: a
/// client that reaches it is dropped.
pub const MAX_CONTROL_BACKLOG: usize = 4 << 20;
/// Most audio bytes queued for one client: a slow reader (a player reading
/// in real time) of the longest texts fits; one that reads nothing and
/// keeps requests running is dropped.
pub const MAX_AUDIO_BACKLOG: usize = 128 << 20;

/// A front-end's encoder: one reply as the bytes of one frame of its wire.
/// It cannot fail: a reply its wire cannot carry becomes one it can (the
/// native one answers `internal` instead), so a request's terminal reply is
/// never lost on the way out.
pub type Encode = fn(&Reply) -> Vec<u8>;

/// What is sent to a client.
#[derive(Debug)]
pub enum Outbound {
    Frame(Reply),
    /// Flush what came before, then close the connection.
    Close,
}

/// A reply as its front-end encoded it, waiting to be written.
#[derive(Debug)]
pub struct Encoded {
    bytes: Vec<u8>,
    audio: bool,
}

impl Encoded {
    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }
}

#[derive(Debug)]
enum Wire {
    Frame(Encoded),
    Close,
}

/// Why the daemon closed a connection, for the arbiter's counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseReason {
    /// Nothing in flight and no frame for the front-end's idle timeout.
    Idle,
    /// A frame waited too long for the client to read it.
    NotReading,
    /// Unread replies passed the backlog limits.
    Backlog,
}

impl CloseReason {
    pub fn as_str(self) -> &'static str {
        match self {
            CloseReason::Idle => "idle",
            CloseReason::NotReading => "not_reading",
            CloseReason::Backlog => "backlog",
        }
    }

    fn code(self) -> u8 {
        self as u8 + 1
    }

    fn from_code(c: u8) -> Option<Self> {
        [CloseReason::Idle, CloseReason::NotReading, CloseReason::Backlog].into_iter().find(|r| r.code() == c)
    }
}

/// State shared by a connection's reader, writer, outboxes and requests.
#[derive(Debug)]
struct Shared {
    /// Encoded bytes queued and not yet written, non-audio and audio.
    control: AtomicUsize,
    audio: AtomicUsize,
    /// Requests of this connection not yet answered (queued or running).
    active: AtomicUsize,
    /// Last sign of life (a frame in, a frame out, a request ended), in ms
    /// since `epoch`.
    last_activity_ms: AtomicU64,
    epoch: Instant,
    closing: AtomicBool,
    close_reason: AtomicU8,
    closed: Notify,
    /// The backlog went down.
    drained: Notify,
}

impl Shared {
    fn backlog(&self) -> usize {
        self.control.load(Ordering::SeqCst) + self.audio.load(Ordering::SeqCst)
    }

    fn touch(&self) {
        self.last_activity_ms.store(self.epoch.elapsed().as_millis() as u64, Ordering::SeqCst);
    }

    fn idle_for(&self) -> Duration {
        self.epoch.elapsed().saturating_sub(Duration::from_millis(self.last_activity_ms.load(Ordering::SeqCst)))
    }

    /// Start closing; the first reason given is kept.
    fn close(&self, why: Option<CloseReason>) {
        if let Some(r) = why {
            let _ = self.close_reason.compare_exchange(0, r.code(), Ordering::SeqCst, Ordering::SeqCst);
        }
        self.closing.store(true, Ordering::SeqCst);
        self.closed.notify_waiters();
    }

    fn reason(&self) -> Option<CloseReason> {
        CloseReason::from_code(self.close_reason.load(Ordering::SeqCst))
    }
}

/// Where replies to one client go (see the module doc for the limits).
/// Cloned into every request of the connection.
#[derive(Clone, Debug)]
pub struct Outbox {
    tx: mpsc::UnboundedSender<Wire>,
    shared: Arc<Shared>,
    encode: Encode,
}

/// The writer's end of a connection's [`Outbox`]es: the frames to write,
/// in order. Dropping it closes the connection (the frames still queued
/// are dropped with it).
#[derive(Debug)]
pub struct Outgoing {
    rx: mpsc::UnboundedReceiver<Wire>,
    shared: Arc<Shared>,
}

/// The connection a reply was for is closed (or closing).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Closed;

/// Counts one request of a connection as in flight while it lives.
#[derive(Debug)]
pub struct InFlight(Arc<Shared>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.active.fetch_sub(1, Ordering::SeqCst);
        self.0.touch();
    }
}

/// A new connection's sink and its writer's end, with an empty backlog;
/// `encode` is the front-end's wire.
pub fn channel(encode: Encode) -> (Outbox, Outgoing) {
    let shared = Arc::new(Shared {
        control: AtomicUsize::new(0),
        audio: AtomicUsize::new(0),
        active: AtomicUsize::new(0),
        last_activity_ms: AtomicU64::new(0),
        epoch: Instant::now(),
        closing: AtomicBool::new(false),
        close_reason: AtomicU8::new(0),
        closed: Notify::new(),
        drained: Notify::new(),
    });
    let (tx, rx) = mpsc::unbounded_channel();
    (Outbox { tx, shared: shared.clone(), encode }, Outgoing { rx, shared })
}

impl Outbox {
    /// Encode and queue `o`; `Err(Closed)` when the connection is gone or
    /// this frame would pass its backlog limits (then it is being closed).
    pub fn send(&self, o: Outbound) -> Result<(), Closed> {
        let reply = match o {
            Outbound::Close => return self.tx.send(Wire::Close).map_err(|_| Closed),
            Outbound::Frame(reply) => reply,
        };
        // A connection being dropped takes nothing more: a later, smaller
        // frame (a Done after audio that did not fit) must not slip through
        // and tell the client that truncated audio was whole.
        if self.shared.closing.load(Ordering::SeqCst) {
            return Err(Closed);
        }
        let audio = matches!(reply, Reply::Audio { .. });
        let bytes = (self.encode)(&reply);
        drop(reply);
        let (counter, cap) = if audio {
            (&self.shared.audio, MAX_AUDIO_BACKLOG)
        } else {
            (&self.shared.control, MAX_CONTROL_BACKLOG)
        };
        let n = bytes.len();
        if counter.load(Ordering::SeqCst).saturating_add(n) > cap {
            self.shared.close(Some(CloseReason::Backlog));
            return Err(Closed);
        }
        counter.fetch_add(n, Ordering::SeqCst);
        self.tx.send(Wire::Frame(Encoded { bytes, audio })).map_err(|_| Closed)
    }

    /// Count a request of this connection as in flight until the returned
    /// guard is dropped (see `max_requests_per_connection`, idle timeout).
    pub fn in_flight(&self) -> InFlight {
        self.shared.active.fetch_add(1, Ordering::SeqCst);
        InFlight(self.shared.clone())
    }

    /// Requests of this connection queued or running.
    pub fn active(&self) -> usize {
        self.shared.active.load(Ordering::SeqCst)
    }

    /// Encoded bytes queued and not yet written.
    pub fn backlog(&self) -> usize {
        self.shared.backlog()
    }

    /// A sign of life: a frame came in.
    pub fn touch(&self) {
        self.shared.touch();
    }

    /// Start closing the connection; the first reason given is kept.
    pub fn close(&self, why: Option<CloseReason>) {
        self.shared.close(why);
    }

    pub fn is_closing(&self) -> bool {
        self.shared.closing.load(Ordering::SeqCst)
    }

    /// Why the daemon closed the connection; `None`: it did not (or not yet).
    pub fn close_reason(&self) -> Option<CloseReason> {
        self.shared.reason()
    }

    /// Resolves once the connection is closing.
    pub async fn closed(&self) {
        wait_closed(&self.shared).await;
    }

    /// Resolves once the unread backlog is at most `limit` bytes.
    pub async fn room(&self, limit: usize) {
        loop {
            let n = self.shared.drained.notified();
            tokio::pin!(n);
            n.as_mut().enable();
            if self.shared.backlog() <= limit {
                return;
            }
            n.await;
        }
    }

    /// Resolves once the connection has been idle for `timeout`: no
    /// request in flight, nothing waiting to be written, and no sign of
    /// life for that long.
    pub async fn idle(&self, timeout: Duration) {
        loop {
            let idle = self.shared.idle_for();
            let quiet = self.active() == 0 && self.shared.backlog() == 0;
            if quiet && idle >= timeout {
                return;
            }
            // Busy: look again in a while; every end of a request counts as
            // activity, so the full timeout still runs from the last one.
            let wait = if quiet { timeout.saturating_sub(idle) } else { timeout.min(Duration::from_secs(1)) };
            tokio::time::sleep(wait.max(Duration::from_millis(10))).await;
        }
    }
}

impl Outgoing {
    /// The next frame to write; `None` once a `Close` was queued, the
    /// connection is closing, or every [`Outbox`] is gone.
    pub async fn next(&mut self) -> Option<Encoded> {
        // Closing first: once the connection is being dropped, nothing
        // queued is written (no Done after a gap in the audio).
        let w = tokio::select! {
            biased;
            _ = wait_closed(&self.shared) => None,
            w = self.rx.recv() => w,
        };
        match w {
            Some(Wire::Frame(e)) => Some(e),
            Some(Wire::Close) | None => None,
        }
    }

    /// `frame` was written (or given up on): its bytes no longer count,
    /// and that is a sign of life.
    pub fn written(&self, frame: Encoded) {
        let counter = if frame.audio { &self.shared.audio } else { &self.shared.control };
        counter.fetch_sub(frame.bytes.len(), Ordering::SeqCst);
        drop(frame);
        self.shared.touch();
        self.shared.drained.notify_waiters();
    }

    /// Close the connection from the writer's side (`why`: the client did
    /// not read).
    pub fn close(&self, why: Option<CloseReason>) {
        self.shared.close(why);
    }
}

impl Drop for Outgoing {
    fn drop(&mut self) {
        // Wakes the reader, so that the arbiter hears of the disconnect.
        self.shared.close(None);
    }
}

async fn wait_closed(shared: &Shared) {
    loop {
        let n = shared.closed.notified();
        tokio::pin!(n);
        n.as_mut().enable();
        if shared.closing.load(Ordering::SeqCst) {
            return;
        }
        n.await;
    }
}

/// A sink whose frames are the native encoding (tests decode what was
/// queued).
#[cfg(test)]
pub(crate) fn test_channel() -> (Outbox, Outgoing) {
    channel(|r| crate::protocol::encode(r).unwrap_or_default())
}

#[cfg(test)]
impl Outgoing {
    /// Every reply queued so far, decoded, without waiting.
    pub(crate) fn replies(&mut self) -> Vec<Reply> {
        let mut v = Vec::new();
        while let Ok(w) = self.rx.try_recv() {
            if let Wire::Frame(e) = w {
                let payload = &e.bytes[crate::protocol::frame::HEADER_BYTES..];
                v.push(crate::protocol::frame::decode_payload(payload).unwrap());
            }
        }
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::ErrorCode;

    fn err(message: String) -> Outbound {
        Outbound::Frame(Reply::Error { id: Some(1), code: ErrorCode::UnknownVoice, message })
    }

    #[test]
    fn replies_are_counted_in_encoded_bytes() {
        let (out, mut rx) = test_channel();
        out.send(err("x".repeat(1000))).unwrap();
        let Ok(Wire::Frame(Encoded { bytes, audio })) = rx.rx.try_recv() else { panic!() };
        assert!(!audio);
        assert_eq!(out.shared.control.load(Ordering::SeqCst), bytes.len());
        assert!(bytes.len() > 1000, "the real size, not a flat guess");
        let samples = vec![7i16; 1000];
        out.send(Outbound::Frame(Reply::Audio { id: 1, seq: 0, sample_rate: 22050, samples })).unwrap();
        assert!(out.shared.audio.load(Ordering::SeqCst) > 2000);
    }

    #[test]
    fn written_frames_stop_counting() {
        let (out, mut rx) = test_channel();
        out.send(err("x".repeat(100))).unwrap();
        assert!(out.backlog() > 100);
        let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
        let frame = rt.block_on(rx.next()).unwrap();
        rx.written(frame);
        assert_eq!(out.backlog(), 0);
        out.send(Outbound::Close).unwrap();
        assert!(rt.block_on(rx.next()).is_none(), "Close ends the frames");
        drop(rx);
        assert!(out.is_closing(), "a writer that goes closes the connection");
    }

    #[test]
    fn a_client_past_the_control_backlog_is_closed() {
        let (out, _rx) = test_channel();
        let big = "y".repeat(64 << 10);
        let mut sent = 0;
        while out.send(err(big.clone())).is_ok() {
            sent += 1;
            assert!(sent < 1000, "never refused");
        }
        assert!(sent * (64 << 10) <= MAX_CONTROL_BACKLOG);
        assert!(out.is_closing());
        assert_eq!(out.close_reason(), Some(CloseReason::Backlog));
    }

    /// Regression: after audio that did not fit, a small Done still fit
    /// under the cap and the writer could send it: truncated audio reported
    /// whole. Once closing, nothing more is taken and nothing queued goes out.
    #[test]
    fn nothing_follows_a_frame_that_did_not_fit() {
        let (out, mut rx) = test_channel();
        let big = "z".repeat(64 << 10);
        let mut sent = 0;
        while out.send(err(big.clone())).is_ok() {
            sent += 1;
            assert!(sent < 1000, "never refused");
        }
        // Far smaller than the frame refused, so it would fit under the cap.
        let done = Reply::Done { id: 1, audio_seconds: 1.0, queue_ms: 0, synth_ms: 0, worker_pid: 1, retried: false };
        assert_eq!(out.send(Outbound::Frame(done)), Err(Closed), "a Done after a frame that did not fit");
        let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
        assert!(rt.block_on(rx.next()).is_none(), "queued frames are not written once closing");
    }

    #[test]
    fn in_flight_counts_live_requests() {
        let (out, _rx) = test_channel();
        let a = out.in_flight();
        let b = out.in_flight();
        assert_eq!(out.active(), 2);
        drop(a);
        assert_eq!(out.active(), 1);
        drop(b);
        assert_eq!(out.active(), 0);
    }

    #[test]
    fn close_reasons_round_trip() {
        for r in [CloseReason::Idle, CloseReason::NotReading, CloseReason::Backlog] {
            assert_eq!(CloseReason::from_code(r.code()), Some(r));
        }
        assert_eq!(CloseReason::from_code(0), None);
    }

    #[tokio::test]
    async fn idle_waits_for_quiet_and_the_full_timeout() {
        let (out, _rx) = test_channel();
        out.touch();
        let busy = out.in_flight();
        let t = Instant::now();
        let idle = tokio::spawn({
            let out = out.clone();
            async move { out.idle(Duration::from_millis(300)).await }
        });
        tokio::time::sleep(Duration::from_millis(1000)).await;
        assert!(!idle.is_finished(), "a request in flight keeps the connection");
        drop(busy);
        idle.await.unwrap();
        assert!(t.elapsed() >= Duration::from_millis(1300), "idle counted from the end of the last request");
    }
}
