//! One client connection: handshake, then frames in (to the arbiter as
//! events) and replies out (from an outbox, written by its own task).
//!
//! Owns the connection rules of PROTOCOL.md: Hello first, malformed frames
//! answered and skipped, oversized frames answered and the connection closed,
//! and a client that stops reading is dropped rather than buffered for
//! without bound (see [`Outbox`]). It never decides anything about a
//! request; the arbiter does.
use super::arbiter::{Event, Query};
use super::request::ConnId;
use crate::protocol::{self, ErrorCode, FrameError, Reply, Request, PROTOCOL_VERSION};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::AsyncWriteExt;
use tokio::net::unix::OwnedWriteHalf;
use tokio::net::UnixStream;
use tokio::sync::{mpsc, Notify};

/// What the writer task sends.
#[derive(Debug)]
pub enum Outbound {
    Frame(Reply),
    /// Flush what came before, then close the connection.
    Close,
}

impl Outbound {
    /// Bytes this will take on the wire, near enough to bound a backlog.
    fn weight(&self) -> usize {
        match self {
            Outbound::Frame(Reply::Audio { samples, .. }) => 64 + 2 * samples.len(),
            _ => 256,
        }
    }
}

/// Replies waiting to be written to one client. A client that stops reading
/// is not buffered for without bound: when one frame cannot be written for
/// [`WRITE_STALL_TIMEOUT`], or the backlog passes [`MAX_BACKLOG_BYTES`], the
/// connection is closed and, as for any disconnect, its requests cancelled.
#[derive(Clone, Debug)]
pub struct Outbox {
    tx: mpsc::UnboundedSender<Outbound>,
    backlog: Arc<AtomicUsize>,
    closed: Arc<Notify>,
}

impl Outbox {
    /// An outbox feeding `tx`, with an empty backlog.
    pub fn new(tx: mpsc::UnboundedSender<Outbound>) -> Self {
        Self { tx, backlog: Arc::new(AtomicUsize::new(0)), closed: Arc::new(Notify::new()) }
    }

    /// Queue `o`; `Err(Closed)` when the connection is gone or over its
    /// backlog limit (then it is being closed).
    pub fn send(&self, o: Outbound) -> Result<(), Closed> {
        let w = o.weight();
        if self.backlog.fetch_add(w, Ordering::SeqCst) + w > MAX_BACKLOG_BYTES {
            self.closed.notify_waiters();
            self.closed.notify_one();
            return Err(Closed);
        }
        self.tx.send(o).map_err(|_| Closed)
    }
}

/// The connection a reply was for is closed (or closing).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Closed;

/// Longest a single frame may wait for a client to read it.
pub const WRITE_STALL_TIMEOUT: Duration = Duration::from_secs(10);
/// Most reply bytes queued for one client.
pub const MAX_BACKLOG_BYTES: usize = 256 << 20;

/// How long a new connection may take to send Hello.
pub const HELLO_TIMEOUT: Duration = Duration::from_secs(10);

fn error(code: ErrorCode, message: impl Into<String>) -> Outbound {
    Outbound::Frame(Reply::Error { id: None, code, message: message.into() })
}

/// Serve one accepted, permitted connection until it closes. `guard` lives
/// as long as the connection's writer (it counts open connections).
pub async fn serve<G: Send + 'static>(
    stream: UnixStream,
    conn: ConnId,
    events: mpsc::UnboundedSender<Event>,
    max_frame: usize,
    guard: G,
) {
    let (mut rd, wr) = stream.into_split();
    let (tx, out_rx) = mpsc::unbounded_channel();
    let out = Outbox::new(tx);
    tokio::spawn(write_loop(wr, out_rx, out.backlog.clone(), out.closed.clone(), guard));

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
            let _ = out.send(error(ErrorCode::FrameTooLarge, e.to_string()));
            let _ = out.send(Outbound::Close);
            return;
        }
        Ok(Err(e @ FrameError::Malformed(_))) => {
            let _ = out.send(error(ErrorCode::MalformedFrame, e.to_string()));
            let _ = out.send(Outbound::Close);
            return;
        }
        Err(_) => {
            let _ = out.send(error(ErrorCode::BadRequest, "no Hello within 10 s"));
            let _ = out.send(Outbound::Close);
            return;
        }
    }
    if events.send(Event::Connected { conn, out: out.clone() }).is_err() {
        return;
    }
    loop {
        let frame = tokio::select! {
            f = protocol::read_frame_async::<Request, _>(&mut rd, max_frame) => f,
            // The writer gave up on a client that does not read.
            _ = out.closed.notified() => break,
        };
        let ev = match frame {
            Ok(Some(Request::Synthesize(req))) => Event::Submit { conn, req, arrived: Instant::now() },
            Ok(Some(Request::Cancel { id })) => Event::Cancel { conn, id },
            Ok(Some(Request::Status)) => Event::Query { conn, what: Query::Status },
            Ok(Some(Request::Health)) => Event::Query { conn, what: Query::Health },
            Ok(Some(Request::Voices)) => Event::Query { conn, what: Query::Voices },
            Ok(Some(Request::Hello { .. })) => {
                let _ = out.send(error(ErrorCode::BadRequest, "Hello was already sent on this connection"));
                continue;
            }
            Ok(None) | Err(FrameError::Truncated) | Err(FrameError::Io(_)) => break,
            Err(e @ FrameError::Malformed(_)) => {
                // The frame was read whole: skip it and go on.
                let _ = out.send(error(ErrorCode::MalformedFrame, e.to_string()));
                continue;
            }
            Err(e @ FrameError::TooLarge { .. }) => {
                let _ = out.send(error(ErrorCode::FrameTooLarge, e.to_string()));
                let _ = out.send(Outbound::Close);
                break;
            }
        };
        if events.send(ev).is_err() {
            break;
        }
    }
    let _ = events.send(Event::Disconnected { conn });
}

/// Answer a connection that is refused before the handshake, then close it.
pub async fn refuse(mut stream: UnixStream, code: ErrorCode, message: String) {
    let frame = Reply::Error { id: None, code, message };
    if let Ok(bytes) = protocol::encode(&frame) {
        let _ = tokio::time::timeout(Duration::from_secs(1), stream.write_all(&bytes)).await;
    }
    let _ = stream.shutdown().await;
}

/// Writes queued replies until every [`Outbox`] is gone, a `Close`, or a
/// client that stops reading. Holds no sender itself, so the connection ends
/// (and `guard` is released) once the reader and the arbiter let go.
async fn write_loop<G>(
    mut wr: OwnedWriteHalf,
    mut rx: mpsc::UnboundedReceiver<Outbound>,
    backlog: Arc<AtomicUsize>,
    closed: Arc<Notify>,
    guard: G,
) {
    loop {
        let o = tokio::select! {
            o = rx.recv() => o,
            _ = closed.notified() => None,
        };
        let Some(o) = o else { break };
        let weight = o.weight();
        match o {
            Outbound::Frame(reply) => {
                let Ok(bytes) = protocol::encode(&reply) else { continue };
                match tokio::time::timeout(WRITE_STALL_TIMEOUT, wr.write_all(&bytes)).await {
                    Ok(Ok(())) => {}
                    Ok(Err(_)) => break,
                    Err(_) => {
                        crate::logln!(
                            "ttsd: a client read nothing for {} s ({} bytes waiting); closing its connection",
                            WRITE_STALL_TIMEOUT.as_secs(),
                            backlog.load(Ordering::SeqCst)
                        );
                        break;
                    }
                }
            }
            Outbound::Close => break,
        }
        backlog.fetch_sub(weight, Ordering::SeqCst);
    }
    // Wake the reader so that the arbiter hears of the disconnect.
    closed.notify_one();
    let _ = wr.shutdown().await;
    drop(guard);
}
