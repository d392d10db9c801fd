//! The native front-end (PROTOCOL.md): the Unix socket's listener, and each
//! connection's handshake, frames in (requests for the connection's
//! session) and replies out (written by the connection's own task from its
//! outbox).
//!
//! Owns the listener: binding the socket (or taking the one systemd
//! passed), the peer check (`SO_PEERCRED` against the [`PeerPolicy`]),
//! refusing a client over `max_connections` with `overloaded`, and removing
//! the socket file once the daemon has stopped. And the native wire's
//! rules: Hello first (within [`HELLO_TIMEOUT`]),
//! malformed frames answered and skipped, frames over `max_frame_bytes`
//! answered and the connection closed, idle connections closed after
//! `idle_timeout_ms`, reading paused while more than [`READ_PAUSE_BYTES`]
//! of replies wait unread (its requests then wait in its own socket), a
//! client whose frame waits [`WRITE_STALL_TIMEOUT`] dropped, and replies
//! encoded as native frames ([`encode_reply`]).
//!
//! It never decides anything about a request and never touches the queue
//! or a worker: it translates frames into calls on its [`Session`] and
//! replies into frames.
use super::activation;
use super::socket::{self, groups_of, PeerPolicy, SocketFile};
use crate::config::Config;
use crate::protocol::{
    self, ErrorCode, FrameError, Reply, Request, SpeechOptions, MIN_PROTOCOL_VERSION, PROTOCOL_VERSION,
};
use crate::supervisor::outbox;
use crate::supervisor::{
    Admission, CloseReason, Frontend, Handle, Outbound, Outbox, Outgoing, Query, Session, Submission,
};
use std::path::PathBuf;
use std::time::Duration;
use tokio::io::AsyncWriteExt;
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{UnixListener, UnixStream};
use tokio::task::JoinHandle;

/// Longest a single frame may wait for a client to read it.
pub const WRITE_STALL_TIMEOUT: Duration = Duration::from_secs(10);
/// Unread reply bytes above which the connection's requests are not read.
pub const READ_PAUSE_BYTES: usize = 64 << 10;
/// How long a new connection may take to send Hello.
pub const HELLO_TIMEOUT: Duration = Duration::from_secs(10);

/// Per-connection settings fixed at start (the `listen` section).
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_frame: usize,
    /// Close a connection with nothing in flight and no frame for this long.
    pub idle_timeout: Duration,
}

/// The native front-end, listening and not yet serving.
#[derive(Debug)]
pub struct Native {
    listener: std::os::unix::net::UnixListener,
    /// Removed once the daemon has stopped; `None` for a socket passed by
    /// the launcher, whose file is the launcher's.
    socket_file: Option<SocketFile>,
    path: PathBuf,
    policy: PeerPolicy,
    limits: Limits,
}

impl Native {
    /// Take the socket passed by socket activation (`LISTEN_FDS`), else bind
    /// `cfg`'s. Call before any thread is started.
    pub fn listen(cfg: &Config) -> Result<Self, super::Error> {
        let (listener, socket_file, path) = match activation::from_env()? {
            Some(a) => (a.listener, None, a.path.unwrap_or_else(|| PathBuf::from("(socket activation)"))),
            None => {
                let path = cfg.socket_path();
                let bound = socket::bind(&path, &cfg.listen.socket_group)?;
                (bound.listener, Some(bound.file), path)
            }
        };
        listener.set_nonblocking(true)?;
        let policy = PeerPolicy::from_config(&cfg.listen)?;
        let limits = Limits {
            max_frame: cfg.listen.max_frame_bytes,
            idle_timeout: Duration::from_millis(cfg.listen.idle_timeout_ms),
        };
        Ok(Self { listener, socket_file, path, policy, limits })
    }
}

impl Frontend for Native {
    fn name(&self) -> &'static str {
        "native"
    }

    fn start(self: Box<Self>, core: Handle) -> std::io::Result<JoinHandle<()>> {
        let Native { listener, socket_file, path, policy, limits } = *self;
        let listener = UnixListener::from_std(listener)?;
        crate::logln!("ttsd: listening on {}", path.display());
        Ok(tokio::spawn(accept_loop(listener, socket_file, policy, limits, core)))
    }
}

/// Accept until the daemon stops; then close the listener (new clients get
/// "connection refused") and, once the daemon has stopped, remove the
/// socket file.
async fn accept_loop(
    listener: UnixListener,
    mut socket_file: Option<SocketFile>,
    policy: PeerPolicy,
    limits: Limits,
    core: Handle,
) {
    loop {
        let stream = tokio::select! {
            r = listener.accept() => match r {
                Ok((s, _)) => s,
                Err(e) => {
                    crate::logln!("ttsd: accept: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = core.stopping() => break,
        };
        let verdict = match stream.peer_cred() {
            Ok(c) => policy.decide(c.uid(), c.gid()).ok_or(c.uid()),
            Err(_) => Ok(false),
        };
        match verdict {
            Ok(allowed) => admit(stream, allowed, &core, limits),
            // Only the peer's supplementary groups can decide: look them up
            // off the event loop (a slow user database must not stall it).
            Err(uid) => {
                let (policy, core) = (policy.clone(), core.clone());
                tokio::spawn(async move {
                    let groups = tokio::task::spawn_blocking(move || groups_of(uid)).await.unwrap_or_default();
                    admit(stream, policy.allows_groups(&groups), &core, limits);
                });
            }
        }
    }
    drop(listener);
    core.stopped().await;
    if let Some(f) = socket_file.as_mut() {
        f.remove();
    }
}

/// Serve a permitted peer, or answer `permission_denied` / `overloaded`.
fn admit(stream: UnixStream, allowed: bool, core: &Handle, limits: Limits) {
    if !allowed {
        tokio::spawn(refuse(stream, ErrorCode::PermissionDenied, "this user may not use ttsd".into()));
        return;
    }
    match core.admit() {
        Ok(admission) => {
            tokio::spawn(serve(stream, core.clone(), limits, admission));
        }
        Err(full) => {
            tokio::spawn(refuse(stream, ErrorCode::Overloaded, full.to_string()));
        }
    }
}

/// `reply` as one native frame. A reply that cannot be encoded (over the
/// hard frame limit) is logged and replaced by an `internal` error: a
/// terminal reply stays terminal for its request, anything else names no
/// request.
pub fn encode_reply(reply: &Reply) -> Vec<u8> {
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
            // A short error always encodes (it is far below every limit);
            // were it ever not to, nothing is sent rather than a panic in
            // the arbiter's task.
            protocol::encode(&fallback).unwrap_or_else(|e| {
                crate::logln!("ttsd: internal: cannot encode the fallback reply either: {e}");
                Vec::new()
            })
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

/// Serve one accepted, permitted connection until it closes. `admission`
/// lives as long as the connection's writer (it counts open connections).
pub async fn serve(stream: UnixStream, core: Handle, limits: Limits, admission: Admission) {
    let (mut rd, wr) = stream.into_split();
    let (out, outgoing) = outbox::channel(encode_reply);
    tokio::spawn(write_loop(wr, outgoing, admission));
    let Some(version) = hello(&mut rd, &out, limits.max_frame).await else {
        return;
    };
    out.touch();
    let Ok(session) = core.connect(out.clone()) else { return };
    drop(core);
    read_loop(&mut rd, &out, &session, limits, version).await;
    if out.is_closing() {
        // Make sure the writer stops too (idle close: nothing is queued).
        let _ = out.send(Outbound::Close);
    }
    // Dropping the session tells the arbiter, with the close reason.
    drop(session);
}

/// The handshake: the version the client said in Hello, when this server
/// speaks it (answered HelloOk in that version); anything else is
/// answered, and the connection closed.
async fn hello(rd: &mut OwnedReadHalf, out: &Outbox, max_frame: usize) -> Option<u32> {
    let refused = match tokio::time::timeout(HELLO_TIMEOUT, protocol::read_frame_async::<Request, _>(rd, max_frame)).await {
        Ok(Ok(Some(Request::Hello { version, .. }))) if (MIN_PROTOCOL_VERSION..=PROTOCOL_VERSION).contains(&version) => {
            let server = format!("ttsd {}", env!("CARGO_PKG_VERSION"));
            let _ = out.send(Outbound::Frame(Reply::HelloOk { version, server }));
            return Some(version);
        }
        Ok(Ok(Some(Request::Hello { version, .. }))) => error(
            ErrorCode::UnsupportedVersion,
            format!(
                "protocol version {version} is not supported; this server speaks {MIN_PROTOCOL_VERSION} to {PROTOCOL_VERSION}"
            ),
        ),
        Ok(Ok(Some(_))) => error(ErrorCode::BadRequest, "the first frame must be Hello"),
        Ok(Ok(None)) | Ok(Err(FrameError::Truncated)) | Ok(Err(FrameError::Io(_))) => return None,
        Ok(Err(e @ FrameError::TooLarge { .. })) => error(ErrorCode::FrameTooLarge, frame_error(&e)),
        Ok(Err(e @ FrameError::Malformed(_))) => error(ErrorCode::MalformedFrame, frame_error(&e)),
        Err(_) => error(ErrorCode::BadRequest, format!("no Hello within {} s", HELLO_TIMEOUT.as_secs())),
    };
    let _ = out.send(refused);
    let _ = out.send(Outbound::Close);
    None
}

/// Frames to session calls until the connection ends. `version`: what the
/// client said in Hello; requests of a later version are refused.
async fn read_loop(rd: &mut OwnedReadHalf, out: &Outbox, session: &Session, limits: Limits, version: u32) {
    loop {
        // Read nothing more while the client leaves its replies unread or
        // the arbiter has not taken this session's last requests.
        let ticket = tokio::select! {
            t = async {
                out.room(READ_PAUSE_BYTES).await;
                session.ticket().await
            } => match t {
                Some(t) => t,
                None => break,
            },
            _ = out.closed() => break,
        };
        let frame = tokio::select! {
            f = protocol::read_frame_async::<Request, _>(rd, limits.max_frame) => f,
            // The writer gave up on a client that does not read.
            _ = out.closed() => break,
            // Cancelling a half-read frame is fine: the connection goes.
            _ = out.idle(limits.idle_timeout) => {
                out.close(Some(CloseReason::Idle));
                break;
            }
        };
        if matches!(frame, Ok(Some(_)) | Err(FrameError::Malformed(_))) {
            out.touch();
        }
        if let Ok(Some(req)) = &frame {
            if req.min_version() > version {
                let why = format!(
                    "this request needs protocol version {}; the connection said {version} in Hello",
                    req.min_version()
                );
                let _ = out.send(error(ErrorCode::BadRequest, why));
                continue;
            }
        }
        let sent = match frame {
            Ok(Some(Request::Synthesize(req))) => {
                session.submit(ticket, Submission::whole(req, SpeechOptions::default()))
            }
            Ok(Some(Request::SynthesizeWith { req, opts })) => session.submit(ticket, Submission::whole(req, opts)),
            Ok(Some(Request::OpenText { req, opts })) => session.submit(ticket, Submission::streamed(req, opts)),
            Ok(Some(Request::AppendText { id, text })) => session.append(ticket, id, text),
            Ok(Some(Request::FinishText { id })) => session.finish(ticket, id),
            Ok(Some(Request::Cancel { id })) => session.cancel(ticket, id),
            Ok(Some(Request::Status)) => session.query(ticket, Query::Status),
            Ok(Some(Request::Health)) => session.query(ticket, Query::Health),
            Ok(Some(Request::Voices)) => session.query(ticket, Query::Voices),
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
        if sent.is_err() {
            break;
        }
    }
}

/// Answer a connection that is refused before the handshake, then close it.
pub async fn refuse(mut stream: UnixStream, code: ErrorCode, message: String) {
    let bytes = encode_reply(&Reply::Error { id: None, code, message });
    let _ = tokio::time::timeout(Duration::from_secs(1), stream.write_all(&bytes)).await;
    let _ = stream.shutdown().await;
}

/// Writes queued frames until every [`Outbox`] is gone, a `Close`, or a
/// client that stops reading. Holds no outbox itself, so the connection
/// ends (and `admission` is released) once the reader and the arbiter let
/// go.
async fn write_loop(mut wr: OwnedWriteHalf, mut outgoing: Outgoing, admission: Admission) {
    while let Some(frame) = outgoing.next().await {
        let result = tokio::time::timeout(WRITE_STALL_TIMEOUT, wr.write_all(frame.bytes())).await;
        outgoing.written(frame);
        match result {
            Ok(Ok(())) => {}
            Ok(Err(_)) => break,
            Err(_) => {
                outgoing.close(Some(CloseReason::NotReading));
                break;
            }
        }
    }
    // Closes the connection, waking the reader so that the arbiter hears of
    // the disconnect; frames still queued are dropped.
    drop(outgoing);
    let _ = wr.shutdown().await;
    drop(admission);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unencodable_terminal_reply_becomes_internal_for_the_same_request() {
        let huge = Reply::Error {
            id: Some(9),
            code: ErrorCode::BadRequest,
            message: "z".repeat(protocol::frame::HARD_MAX_FRAME_BYTES + 1),
        };
        let bytes = encode_reply(&huge);
        let back: Reply = protocol::frame::decode_payload(&bytes[protocol::frame::HEADER_BYTES..]).unwrap();
        assert!(matches!(back, Reply::Error { id: Some(9), code: ErrorCode::Internal, .. }), "{back:?}");
    }

    #[test]
    fn frame_errors_name_the_setting() {
        let e = FrameError::TooLarge { len: 5_000_000, max: 1_048_576 };
        assert_eq!(frame_error(&e), "a frame of 5000000 bytes is over max_frame_bytes (1048576)");
    }
}
