//! One client connection: handshake, then frames in (to the arbiter as
//! events) and replies out (from an outbox, written by its own task).
//!
//! Owns the connection rules of PROTOCOL.md: Hello first, malformed frames
//! answered and skipped, oversized frames answered and the connection closed.
//! It never decides anything about a request; the arbiter does.
use super::arbiter::{Event, Query};
use super::request::ConnId;
use crate::protocol::{self, ErrorCode, FrameError, Reply, Request, PROTOCOL_VERSION};
use std::time::{Duration, Instant};
use tokio::io::AsyncWriteExt;
use tokio::net::unix::OwnedWriteHalf;
use tokio::net::UnixStream;
use tokio::sync::mpsc;

/// What the writer task sends.
#[derive(Debug)]
pub enum Outbound {
    Frame(Reply),
    /// Flush what came before, then close the connection.
    Close,
}

pub type Outbox = mpsc::UnboundedSender<Outbound>;

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
    let (out, out_rx) = mpsc::unbounded_channel();
    tokio::spawn(write_loop(wr, out_rx, guard));

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
        let ev = match protocol::read_frame_async::<Request, _>(&mut rd, max_frame).await {
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

async fn write_loop<G>(mut wr: OwnedWriteHalf, mut rx: mpsc::UnboundedReceiver<Outbound>, guard: G) {
    while let Some(o) = rx.recv().await {
        match o {
            Outbound::Frame(reply) => {
                let Ok(bytes) = protocol::encode(&reply) else { continue };
                if wr.write_all(&bytes).await.is_err() {
                    break;
                }
            }
            Outbound::Close => break,
        }
    }
    let _ = wr.shutdown().await;
    drop(guard);
}
