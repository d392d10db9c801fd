//! One client connection: handshake, then frames in (to the arbiter as
//! events) and replies out (from an [`Outbox`], written by its own task).
//!
//! Owns the connection rules of PROTOCOL.md: Hello first, malformed frames
//! answered and skipped, oversized frames answered and the connection
//! closed, idle connections closed after `idle_timeout_ms`, and what one
//! client may make the supervisor hold:
//! - replies are encoded once, when queued, and counted in real bytes; a
//!   client whose unread replies pass [`READ_PAUSE_BYTES`] is not read from
//!   until it catches up (its requests wait in its own socket), and one
//!   past [`MAX_CONTROL_BACKLOG`] / [`MAX_AUDIO_BACKLOG`], or whose frame
//!   waits [`WRITE_STALL_TIMEOUT`], is dropped;
//! - at most [`EVENTS_IN_FLIGHT`] decoded frames of one connection wait for
//!   the arbiter at a time, so a client pipelining megabyte frames holds a
//!   few megabytes, not all of them.
//!
//! It never decides anything about a request; the arbiter does.
use super::arbiter::{Event, Query};
use super::request::ConnId;
use crate::protocol::{self, ErrorCode, FrameError, Reply, Request, PROTOCOL_VERSION};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::AsyncWriteExt;
use tokio::net::unix::OwnedWriteHalf;
use tokio::net::UnixStream;
use tokio::sync::{mpsc, Notify, OwnedSemaphorePermit, Semaphore};

/// Longest a single frame may wait for a client to read it.
pub const WRITE_STALL_TIMEOUT: Duration = Duration::from_secs(10);
/// Unread reply bytes above which the connection's requests are not read.
pub const READ_PAUSE_BYTES: usize = 64 << 10;
/// Most non-audio reply bytes queued for one client. With reading paused at
/// [`READ_PAUSE_BYTES`] only a connection's running requests and its last
/// queries add to it, so a client that reaches this is dropped.
pub const MAX_CONTROL_BACKLOG: usize = 4 << 20;
/// Most audio bytes queued for one client: a slow reader (a player reading
/// in real time) of the longest texts fits; one that reads nothing and
/// keeps requests running is dropped.
pub const MAX_AUDIO_BACKLOG: usize = 128 << 20;
/// Decoded frames of one connection that may wait for the arbiter.
pub const EVENTS_IN_FLIGHT: usize = 2;
/// How long a new connection may take to send Hello.
pub const HELLO_TIMEOUT: Duration = Duration::from_secs(10);

/// Per-connection settings fixed at accept time.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_frame: usize,
    /// Close a connection with nothing in flight and no frame for this long.
    pub idle_timeout: Duration,
}

/// What the arbiter and requests send to a client.
#[derive(Debug)]
pub enum Outbound {
    Frame(Reply),
    /// Flush what came before, then close the connection.
    Close,
}

/// What the writer task gets: frames already encoded.
#[derive(Debug)]
pub enum Wire {
    Frame { bytes: Vec<u8>, audio: bool },
    Close,
}

impl Wire {
    /// The reply a frame carries (tests look at what was queued).
    #[cfg(test)]
    pub fn reply(&self) -> Option<Reply> {
        match self {
            Wire::Frame { bytes, .. } => protocol::frame::decode_payload(&bytes[protocol::frame::HEADER_BYTES..]).ok(),
            Wire::Close => None,
        }
    }
}

/// Why the daemon closed a connection, for the arbiter's counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseReason {
    /// Nothing in flight and no frame for `idle_timeout_ms`.
    Idle,
    /// A frame waited [`WRITE_STALL_TIMEOUT`] for the client to read.
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

    /// Resolves once the connection is closing.
    async fn wait_closed(&self) {
        loop {
            let n = self.closed.notified();
            tokio::pin!(n);
            n.as_mut().enable();
            if self.closing.load(Ordering::SeqCst) {
                return;
            }
            n.await;
        }
    }

    /// Resolves once the unread backlog is at most [`READ_PAUSE_BYTES`].
    async fn wait_room(&self) {
        loop {
            let n = self.drained.notified();
            tokio::pin!(n);
            n.as_mut().enable();
            if self.backlog() <= READ_PAUSE_BYTES {
                return;
            }
            n.await;
        }
    }

    /// Resolves once the connection has been idle for `timeout`: no
    /// request in flight, nothing waiting to be written, and no sign of
    /// life for that long.
    async fn wait_idle(&self, timeout: Duration) {
        loop {
            let idle = self.idle_for();
            let quiet = self.active.load(Ordering::SeqCst) == 0 && self.backlog() == 0;
            if quiet && idle >= timeout {
                return;
            }
            // Busy: look again in a while; every end of a request counts as
            // activity, so the full timeout still runs from the last one.
            let wait = if quiet { timeout - idle } else { timeout.min(Duration::from_secs(1)) };
            tokio::time::sleep(wait.max(Duration::from_millis(10))).await;
        }
    }
}

/// Replies waiting to be written to one client (see the module doc for the
/// limits). Cloned into every request of the connection.
#[derive(Clone, Debug)]
pub struct Outbox {
    tx: mpsc::UnboundedSender<Wire>,
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

/// A decoded frame's claim on its connection's [`EVENTS_IN_FLIGHT`]: the
/// reader reads no further frame while its tickets are all held. Released
/// when the arbiter drops the event.
#[derive(Debug)]
pub struct Ticket(#[allow(dead_code)] OwnedSemaphorePermit);

impl Outbox {
    /// An outbox feeding `tx`, with an empty backlog.
    pub fn new(tx: mpsc::UnboundedSender<Wire>) -> Self {
        let shared = Shared {
            control: AtomicUsize::new(0),
            audio: AtomicUsize::new(0),
            active: AtomicUsize::new(0),
            last_activity_ms: AtomicU64::new(0),
            epoch: Instant::now(),
            closing: AtomicBool::new(false),
            close_reason: AtomicU8::new(0),
            closed: Notify::new(),
            drained: Notify::new(),
        };
        Self { tx, shared: Arc::new(shared) }
    }

    /// Encode and queue `o`; `Err(Closed)` when the connection is gone or
    /// this frame would pass its backlog limits (then it is being closed).
    pub fn send(&self, o: Outbound) -> Result<(), Closed> {
        let wire = match o {
            Outbound::Close => Wire::Close,
            Outbound::Frame(reply) => {
                let audio = matches!(reply, Reply::Audio { .. });
                Wire::Frame { bytes: encode_reply(&reply), audio }
            }
        };
        if let Wire::Frame { bytes, audio } = &wire {
            let (counter, cap) = if *audio {
                (&self.shared.audio, MAX_AUDIO_BACKLOG)
            } else {
                (&self.shared.control, MAX_CONTROL_BACKLOG)
            };
            let n = bytes.len();
            if counter.load(Ordering::SeqCst) + n > cap {
                self.shared.close(Some(CloseReason::Backlog));
                return Err(Closed);
            }
            counter.fetch_add(n, Ordering::SeqCst);
        }
        self.tx.send(wire).map_err(|_| Closed)
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
}

/// `reply` as one frame. A reply that cannot be encoded (over the hard
/// frame limit) is logged and replaced by an `internal` error: a terminal
/// reply stays terminal for its request, anything else names no request.
fn encode_reply(reply: &Reply) -> Vec<u8> {
    match protocol::encode(reply) {
        Ok(b) => b,
        Err(e) => {
            let (id, what) = match reply {
                Reply::Done { id, .. } => (Some(*id), format!("Done for request {id}")),
                Reply::Error { id: Some(id), code, .. } => (Some(*id), format!("Error {code} for request {id}")),
                Reply::Audio { id, seq, .. } => (None, format!("Audio {seq} of request {id}")),
                Reply::Queued { id, .. } => (None, format!("Queued for request {id}")),
                other => (None, format!("{:.40?}", other)),
            };
            crate::logln!("ttsd: cannot encode a reply ({what}): {e}; answering internal instead");
            let message = format!("the daemon could not encode a reply ({what}): {e}");
            let fallback = Reply::Error { id, code: ErrorCode::Internal, message: protocol::clip(&message, 200).into() };
            protocol::encode(&fallback).expect("a short error reply always encodes")
        }
    }
}

fn error(code: ErrorCode, message: impl Into<String>) -> Outbound {
    Outbound::Frame(Reply::Error { id: None, code, message: message.into() })
}

/// A frame-level error's text, clipped (decoder messages may quote input),
/// naming the setting for an oversized frame.
fn frame_error(e: &FrameError) -> String {
    match e {
        FrameError::TooLarge { len, max } => format!("a frame of {len} bytes is over max_frame_bytes ({max})"),
        e => protocol::clip(&e.to_string(), 200).into_owned(),
    }
}

/// Serve one accepted, permitted connection until it closes. `guard` lives
/// as long as the connection's writer (it counts open connections).
pub async fn serve<G: Send + 'static>(
    stream: UnixStream,
    conn: ConnId,
    events: mpsc::UnboundedSender<Event>,
    limits: Limits,
    guard: G,
) {
    let (mut rd, wr) = stream.into_split();
    let (tx, out_rx) = mpsc::unbounded_channel();
    let out = Outbox::new(tx);
    let shared = out.shared.clone();
    tokio::spawn(write_loop(wr, out_rx, shared.clone(), guard));
    let max_frame = limits.max_frame;

    match tokio::time::timeout(HELLO_TIMEOUT, protocol::read_frame_async::<Request, _>(&mut rd, max_frame)).await {
        Ok(Ok(Some(Request::Hello { version, .. }))) if version == PROTOCOL_VERSION => {
            let _ = out.send(Outbound::Frame(Reply::HelloOk {
                version: PROTOCOL_VERSION,
                server: format!("ttsd {}", env!("CARGO_PKG_VERSION")),
            }));
        }
        Ok(Ok(Some(Request::Hello { version, .. }))) => {
            let _ = out.send(error(
                ErrorCode::UnsupportedVersion,
                format!("protocol version {version} is not supported; this server speaks {PROTOCOL_VERSION}"),
            ));
            let _ = out.send(Outbound::Close);
            return;
        }
        Ok(Ok(Some(_))) => {
            let _ = out.send(error(ErrorCode::BadRequest, "the first frame must be Hello"));
            let _ = out.send(Outbound::Close);
            return;
        }
        Ok(Ok(None)) | Ok(Err(FrameError::Truncated)) | Ok(Err(FrameError::Io(_))) => return,
        Ok(Err(e @ FrameError::TooLarge { .. })) => {
            let _ = out.send(error(ErrorCode::FrameTooLarge, frame_error(&e)));
            let _ = out.send(Outbound::Close);
            return;
        }
        Ok(Err(e @ FrameError::Malformed(_))) => {
            let _ = out.send(error(ErrorCode::MalformedFrame, frame_error(&e)));
            let _ = out.send(Outbound::Close);
            return;
        }
        Err(_) => {
            let _ = out.send(error(ErrorCode::BadRequest, format!("no Hello within {} s", HELLO_TIMEOUT.as_secs())));
            let _ = out.send(Outbound::Close);
            return;
        }
    }
    shared.touch();
    if events.send(Event::Connected { conn, out: out.clone() }).is_err() {
        return;
    }
    let tickets = Arc::new(Semaphore::new(EVENTS_IN_FLIGHT));
    loop {
        // Read nothing more while the client leaves its replies unread or
        // the arbiter has not taken this connection's last frames.
        let ticket = tokio::select! {
            t = async {
                shared.wait_room().await;
                tickets.clone().acquire_owned().await
            } => match t {
                Ok(p) => Ticket(p),
                Err(_) => break,
            },
            _ = shared.wait_closed() => break,
        };
        let frame = tokio::select! {
            f = protocol::read_frame_async::<Request, _>(&mut rd, max_frame) => f,
            // The writer gave up on a client that does not read.
            _ = shared.wait_closed() => break,
            // Cancelling a half-read frame is fine: the connection goes.
            _ = shared.wait_idle(limits.idle_timeout) => {
                shared.close(Some(CloseReason::Idle));
                break;
            }
        };
        if matches!(frame, Ok(Some(_)) | Err(FrameError::Malformed(_))) {
            shared.touch();
        }
        let ev = match frame {
            Ok(Some(Request::Synthesize(req))) => Event::Submit { conn, req, arrived: Instant::now(), ticket },
            Ok(Some(Request::Cancel { id })) => Event::Cancel { conn, id, ticket },
            Ok(Some(Request::Status)) => Event::Query { conn, what: Query::Status, ticket },
            Ok(Some(Request::Health)) => Event::Query { conn, what: Query::Health, ticket },
            Ok(Some(Request::Voices)) => Event::Query { conn, what: Query::Voices, ticket },
            Ok(Some(Request::Hello { .. })) => {
                let _ = out.send(error(ErrorCode::BadRequest, "Hello was already sent on this connection"));
                continue;
            }
            Ok(None) | Err(FrameError::Truncated) | Err(FrameError::Io(_)) => break,
            Err(e @ FrameError::Malformed(_)) => {
                // The frame was read whole: skip it and go on.
                let _ = out.send(error(ErrorCode::MalformedFrame, frame_error(&e)));
                continue;
            }
            Err(e @ FrameError::TooLarge { .. }) => {
                let _ = out.send(error(ErrorCode::FrameTooLarge, frame_error(&e)));
                let _ = out.send(Outbound::Close);
                break;
            }
        };
        if events.send(ev).is_err() {
            break;
        }
    }
    if shared.closing.load(Ordering::SeqCst) {
        // Make sure the writer stops too (idle close: nothing is queued).
        let _ = out.send(Outbound::Close);
    }
    let _ = events.send(Event::Disconnected { conn, reason: shared.reason() });
}

/// Answer a connection that is refused before the handshake, then close it.
pub async fn refuse(mut stream: UnixStream, code: ErrorCode, message: String) {
    let frame = Reply::Error { id: None, code, message };
    let bytes = encode_reply(&frame);
    let _ = tokio::time::timeout(Duration::from_secs(1), stream.write_all(&bytes)).await;
    let _ = stream.shutdown().await;
}

/// Writes queued frames until every [`Outbox`] is gone, a `Close`, or a
/// client that stops reading. Holds no sender itself, so the connection ends
/// (and `guard` is released) once the reader and the arbiter let go.
async fn write_loop<G>(mut wr: OwnedWriteHalf, mut rx: mpsc::UnboundedReceiver<Wire>, shared: Arc<Shared>, guard: G) {
    loop {
        let w = tokio::select! {
            w = rx.recv() => w,
            _ = shared.wait_closed() => None,
        };
        let Some(Wire::Frame { bytes, audio }) = w else { break };
        let result = tokio::time::timeout(WRITE_STALL_TIMEOUT, wr.write_all(&bytes)).await;
        let counter = if audio { &shared.audio } else { &shared.control };
        counter.fetch_sub(bytes.len(), Ordering::SeqCst);
        drop(bytes);
        shared.touch();
        shared.drained.notify_waiters();
        match result {
            Ok(Ok(())) => {}
            Ok(Err(_)) => break,
            Err(_) => {
                shared.close(Some(CloseReason::NotReading));
                break;
            }
        }
    }
    // Wake the reader so that the arbiter hears of the disconnect.
    shared.close(None);
    // Frames still queued are dropped with the receiver.
    drop(rx);
    let _ = wr.shutdown().await;
    drop(guard);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn outbox() -> (Outbox, mpsc::UnboundedReceiver<Wire>) {
        let (tx, rx) = mpsc::unbounded_channel();
        (Outbox::new(tx), rx)
    }

    fn err(message: String) -> Outbound {
        Outbound::Frame(Reply::Error { id: Some(1), code: ErrorCode::UnknownVoice, message })
    }

    #[test]
    fn replies_are_counted_in_encoded_bytes() {
        let (out, mut rx) = outbox();
        out.send(err("x".repeat(1000))).unwrap();
        let Wire::Frame { bytes, audio } = rx.try_recv().unwrap() else { panic!() };
        assert!(!audio);
        assert_eq!(out.shared.control.load(Ordering::SeqCst), bytes.len());
        assert!(bytes.len() > 1000, "the real size, not a flat guess");
        let samples = vec![7i16; 1000];
        out.send(Outbound::Frame(Reply::Audio { id: 1, seq: 0, sample_rate: 22050, samples })).unwrap();
        assert!(out.shared.audio.load(Ordering::SeqCst) > 2000);
    }

    #[test]
    fn a_client_past_the_control_backlog_is_closed() {
        let (out, _rx) = outbox();
        let big = "y".repeat(64 << 10);
        let mut sent = 0;
        while out.send(err(big.clone())).is_ok() {
            sent += 1;
            assert!(sent < 1000, "never refused");
        }
        assert!(sent * (64 << 10) <= MAX_CONTROL_BACKLOG);
        assert!(out.shared.closing.load(Ordering::SeqCst));
        assert_eq!(out.shared.reason(), Some(CloseReason::Backlog));
    }

    #[test]
    fn in_flight_counts_live_requests() {
        let (out, _rx) = outbox();
        let a = out.in_flight();
        let b = out.in_flight();
        assert_eq!(out.active(), 2);
        drop(a);
        assert_eq!(out.active(), 1);
        drop(b);
        assert_eq!(out.active(), 0);
    }

    #[test]
    fn an_unencodable_terminal_reply_becomes_internal_for_the_same_request() {
        let huge = Reply::Error {
            id: Some(9),
            code: ErrorCode::BadRequest,
            message: "z".repeat(protocol::frame::HARD_MAX_FRAME_BYTES + 1),
        };
        let bytes = encode_reply(&huge);
        let back: Reply = protocol::frame::decode_payload(&bytes[4..]).unwrap();
        assert!(matches!(back, Reply::Error { id: Some(9), code: ErrorCode::Internal, .. }), "{back:?}");
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
        let (out, _rx) = outbox();
        let s = out.shared.clone();
        s.touch();
        let busy = out.in_flight();
        let t = Instant::now();
        let idle = tokio::spawn({
            let s = s.clone();
            async move { s.wait_idle(Duration::from_millis(300)).await }
        });
        tokio::time::sleep(Duration::from_millis(1000)).await;
        assert!(!idle.is_finished(), "a request in flight keeps the connection");
        drop(busy);
        idle.await.unwrap();
        assert!(t.elapsed() >= Duration::from_millis(1300), "idle counted from the end of the last request");
    }
}
