//! The library client: a blocking connection to ttsd that speaks the
//! protocol of PROTOCOL.md. Used by ttsctl and the integration tests.
//!
//! Owns one connection and its request ids, and the checks made before
//! anything is sent: the default socket's directory must be ours
//! ([`crate::runtime_dir`]) and the server's uid, from SO_PEERCRED, one we
//! trust ([`ServerTrust`]). It is meant for one request at a time per
//! connection (open more connections for concurrency, or use
//! [`Client::send`] / [`Client::recv`] directly to pipeline). It never
//! retries or reconnects on its own.
pub mod cli;
pub mod hint;
pub mod metrics;
pub mod outfile;
pub mod player;
pub mod progress;
pub mod say;
pub mod sink;
pub mod subtitles;
pub mod table;
pub mod timeline;
pub mod wav;

use crate::protocol::{
    self, ErrorCode, FrameError, HealthState, Reply, Request, SpeechOptions, StatusReply, SynthRequest, VoiceStatus,
    PROTOCOL_VERSION,
};
use crate::runtime_dir::{self, DefaultDir, DirError};
use std::io;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use thiserror::Error;

/// Largest reply frame the client accepts (audio frames can be large).
pub const MAX_REPLY_FRAME: usize = protocol::frame::HARD_MAX_FRAME_BYTES;

#[derive(Debug, Error)]
pub enum ClientError {
    #[error("cannot connect to ttsd at {path}: {source}")]
    Connect { path: PathBuf, source: io::Error },
    /// The default socket's directory is not safely ours: nothing was sent.
    #[error("refusing the default socket {socket}: {source}")]
    UnsafeDir { socket: PathBuf, source: DirError },
    /// The server at the socket runs as a uid we do not trust: nothing was sent.
    #[error("refusing ttsd at {path}: it is served by uid {uid}, and {}", trust.describe())]
    UntrustedServer { path: PathBuf, uid: u32, trust: ServerTrust },
    #[error("{0}")]
    Frame(#[from] FrameError),
    #[error("ttsd closed the connection")]
    Closed,
    /// The daemon answered with an error.
    #[error("{code}: {message}")]
    Server { code: ErrorCode, message: String },
    #[error("unexpected reply from ttsd: {0}")]
    Unexpected(String),
}

impl ClientError {
    /// The protocol error code, when the daemon sent one.
    pub fn code(&self) -> Option<ErrorCode> {
        match self {
            ClientError::Server { code, .. } => Some(*code),
            _ => None,
        }
    }
}

/// The successful end of a synthesize request.
#[derive(Debug, Clone, PartialEq)]
pub struct Done {
    pub id: u64,
    pub audio_seconds: f64,
    pub queue_ms: u64,
    pub synth_ms: u64,
    pub worker_pid: u32,
    pub retried: bool,
}

/// Which server uids a client accepts, judged from SO_PEERCRED right after
/// connecting and before anything is sent.
///
/// On the default path (nobody named it) only a server of our own uid: that
/// path is where another user would plant a fake. On a path named with
/// `--socket` or `TTSD_SOCKET`, our own uid or root (a system daemon). And
/// always the uids named with `--allow-server-uid` / `TTSD_ALLOW_SERVER_UID`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerTrust {
    pub own_uid: u32,
    /// The path is the default one.
    pub default_path: bool,
    /// Further uids the user chose to trust.
    pub allowed: Vec<u32>,
}

impl ServerTrust {
    /// Trust for a path someone named: our uid, root, and `allowed`.
    pub fn named(allowed: Vec<u32>) -> Self {
        Self { own_uid: nix::unistd::geteuid().as_raw(), default_path: false, allowed }
    }

    pub fn accepts(&self, uid: u32) -> bool {
        uid == self.own_uid || (uid == 0 && !self.default_path) || self.allowed.contains(&uid)
    }

    /// What would have been accepted, for messages.
    pub fn describe(&self) -> String {
        let mut s = if self.default_path {
            format!("on the default path only a ttsd of your own uid ({}) is trusted", self.own_uid)
        } else {
            format!("only a ttsd of your own uid ({}) or root is trusted", self.own_uid)
        };
        if !self.allowed.is_empty() {
            let list: Vec<String> = self.allowed.iter().map(u32::to_string).collect();
            s.push_str(&format!(" (and uids {} as allowed)", list.join(", ")));
        }
        s
    }
}

/// Where to connect, and whom to trust there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub path: PathBuf,
    /// Set when the path is the default one: its directory is checked first.
    pub default_dir: Option<DefaultDir>,
    pub trust: ServerTrust,
}

/// `explicit`, else `$TTSD_SOCKET` (both named by the user), else the default
/// path; `allowed` server uids are trusted beyond the defaults.
pub fn target(explicit: Option<&Path>, allowed: Vec<u32>) -> Target {
    let named = explicit.map(Path::to_path_buf).or_else(|| match std::env::var_os("TTSD_SOCKET") {
        Some(p) if !p.is_empty() => Some(PathBuf::from(p)),
        _ => None,
    });
    match named {
        Some(path) => Target { path, default_dir: None, trust: ServerTrust::named(allowed) },
        None => {
            let dir = runtime_dir::default_dir();
            let trust = ServerTrust { default_path: true, ..ServerTrust::named(allowed) };
            Target { path: dir.socket(), default_dir: Some(dir), trust }
        }
    }
}

/// The uid of the process that serves `stream` (from when it listened).
pub fn peer_uid(stream: &UnixStream) -> io::Result<u32> {
    #[cfg(any(target_os = "linux", target_os = "android"))]
    {
        use nix::sys::socket::{getsockopt, sockopt::PeerCredentials};
        Ok(getsockopt(stream, PeerCredentials)?.uid())
    }
    #[cfg(not(any(target_os = "linux", target_os = "android")))]
    {
        Ok(nix::unistd::getpeereid(stream)?.0.as_raw())
    }
}

pub struct Client {
    stream: UnixStream,
    server: String,
    next_id: u64,
    /// Held while a frame is written: a [`TextFeed`] on another thread
    /// writes to the same connection, and frames must not interleave.
    writing: Arc<Mutex<()>>,
}

impl Client {
    /// Connect to a path the caller named and do the handshake (a server of
    /// our own uid or root is trusted).
    pub fn connect(path: &Path) -> Result<Self, ClientError> {
        Self::connect_as(path, "ttsd-client")
    }

    pub fn connect_as(path: &Path, client_name: &str) -> Result<Self, ClientError> {
        let target = Target { path: path.to_path_buf(), default_dir: None, trust: ServerTrust::named(Vec::new()) };
        Self::connect_to(&target, client_name)
    }

    /// Check the target (its directory when it is the default path, then
    /// the server's uid), then do the handshake.
    pub fn connect_to(target: &Target, client_name: &str) -> Result<Self, ClientError> {
        let path = &target.path;
        if let Some(dir) = &target.default_dir {
            runtime_dir::check_for_client(dir)
                .map_err(|source| ClientError::UnsafeDir { socket: path.clone(), source })?;
        }
        let stream = UnixStream::connect(path).map_err(|e| ClientError::Connect { path: path.clone(), source: e })?;
        let uid = peer_uid(&stream).map_err(|e| ClientError::Connect { path: path.clone(), source: e })?;
        if !target.trust.accepts(uid) {
            return Err(ClientError::UntrustedServer { path: path.clone(), uid, trust: target.trust.clone() });
        }
        let mut c = Self { stream, server: String::new(), next_id: 1, writing: Arc::default() };
        if let Err(e) = c.send(&Request::Hello { version: PROTOCOL_VERSION, client: client_name.to_string() }) {
            // A refused peer is told why and closed, maybe before our Hello
            // got through: prefer the daemon's reason to the broken pipe.
            return match c.recv() {
                Ok(Reply::Error { code, message, .. }) => Err(ClientError::Server { code, message }),
                _ => Err(e),
            };
        }
        match c.recv()? {
            Reply::HelloOk { server, .. } => c.server = server,
            Reply::Error { code, message, .. } => return Err(ClientError::Server { code, message }),
            other => return Err(ClientError::Unexpected(format!("{other:?}"))),
        }
        Ok(c)
    }

    /// The daemon's "ttsd VERSION" from the handshake.
    pub fn server(&self) -> &str {
        &self.server
    }

    /// Give up waiting for a reply after `t` (`None`: wait forever).
    pub fn set_timeout(&mut self, t: Option<Duration>) -> io::Result<()> {
        self.stream.set_read_timeout(t)
    }

    pub fn send(&mut self, req: &Request) -> Result<(), ClientError> {
        let _one_writer = self.writing.lock().unwrap_or_else(|e| e.into_inner());
        protocol::write_frame(&mut self.stream, req)?;
        Ok(())
    }

    /// The next reply, whatever it is.
    pub fn recv(&mut self) -> Result<Reply, ClientError> {
        protocol::read_frame(&mut self.stream, MAX_REPLY_FRAME)?.ok_or(ClientError::Closed)
    }

    /// A fresh request id for this connection.
    pub fn next_id(&mut self) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        id
    }

    /// Send a synthesize request under a fresh id and return the id; read
    /// the replies with [`Client::recv`].
    pub fn submit(&mut self, req: SynthRequest) -> Result<u64, ClientError> {
        self.send_new(req, Request::Synthesize)
    }

    /// [`Client::submit`] with the options of protocol version 2.
    pub fn submit_with(&mut self, req: SynthRequest, opts: SpeechOptions) -> Result<u64, ClientError> {
        self.send_new(req, |req| Request::SynthesizeWith { req, opts })
    }

    /// Sends `req` under a fresh id, wrapped by `as_request`; returns the id.
    fn send_new(&mut self, mut req: SynthRequest, as_request: impl FnOnce(SynthRequest) -> Request) -> Result<u64, ClientError> {
        req.id = self.next_id();
        let id = req.id;
        self.send(&as_request(req))?;
        Ok(id)
    }

    /// Opens a streamed-text request (its first piece is `req`'s text) under
    /// a fresh id; send the rest with [`Client::append_text`], then
    /// [`Client::finish_text`].
    pub fn open_text(&mut self, req: SynthRequest, opts: SpeechOptions) -> Result<u64, ClientError> {
        self.send_new(req, |req| Request::OpenText { req, opts })
    }

    /// A second handle on the connection that can only send pieces of a
    /// streamed text (for a thread that feeds it while this one reads).
    pub fn writer(&self) -> Result<TextFeed, ClientError> {
        Ok(TextFeed { stream: self.stream.try_clone().map_err(FrameError::Io)?, writing: self.writing.clone() })
    }

    pub fn append_text(&mut self, id: u64, text: &str) -> Result<(), ClientError> {
        self.send(&Request::AppendText { id, text: text.to_string() })
    }

    pub fn finish_text(&mut self, id: u64) -> Result<(), ClientError> {
        self.send(&Request::FinishText { id })
    }

    pub fn cancel(&mut self, id: u64) -> Result<(), ClientError> {
        self.send(&Request::Cancel { id })
    }

    /// Synthesize: `on_audio(sample_rate, samples)` gets the audio in order;
    /// the result is Done or the daemon's error.
    pub fn say(&mut self, req: SynthRequest, on_audio: &mut dyn FnMut(u32, &[i16])) -> Result<Done, ClientError> {
        let id = self.submit(req)?;
        loop {
            match self.recv()? {
                Reply::Queued { .. } => {}
                Reply::Audio { id: i, sample_rate, samples, .. } if i == id => on_audio(sample_rate, &samples),
                Reply::Done { id: i, audio_seconds, queue_ms, synth_ms, worker_pid, retried } if i == id => {
                    return Ok(Done { id, audio_seconds, queue_ms, synth_ms, worker_pid, retried })
                }
                Reply::Error { id: Some(i), code, message } if i == id => return Err(ClientError::Server { code, message }),
                Reply::Error { id: None, code, message } => return Err(ClientError::Server { code, message }),
                _ => {}
            }
        }
    }

    /// Synthesize and collect the audio: (done, sample rate, samples).
    pub fn say_collect(&mut self, req: SynthRequest) -> Result<(Done, u32, Vec<i16>), ClientError> {
        let mut rate = 0;
        let mut all = Vec::new();
        let done = self.say(req, &mut |r, s| {
            rate = r;
            all.extend_from_slice(s);
        })?;
        Ok((done, rate, all))
    }

    fn query(&mut self, req: Request) -> Result<Reply, ClientError> {
        self.send(&req)?;
        loop {
            match self.recv()? {
                Reply::Error { id: None, code, message } => return Err(ClientError::Server { code, message }),
                r @ (Reply::Status(_) | Reply::Health { .. } | Reply::Voices { .. }) => return Ok(r),
                _ => {}
            }
        }
    }

    pub fn status(&mut self) -> Result<StatusReply, ClientError> {
        match self.query(Request::Status)? {
            Reply::Status(s) => Ok(s),
            other => Err(ClientError::Unexpected(format!("{other:?}"))),
        }
    }

    pub fn health(&mut self) -> Result<(HealthState, Option<String>), ClientError> {
        match self.query(Request::Health)? {
            Reply::Health { state, reason } => Ok((state, reason)),
            other => Err(ClientError::Unexpected(format!("{other:?}"))),
        }
    }

    /// (default voice, voices)
    pub fn voices(&mut self) -> Result<(String, Vec<VoiceStatus>), ClientError> {
        match self.query(Request::Voices)? {
            Reply::Voices { default_voice, voices } => Ok((default_voice, voices)),
            other => Err(ClientError::Unexpected(format!("{other:?}"))),
        }
    }
}

/// See [`Client::writer`]. Its frames and the client's (a `Cancel`) never
/// interleave: both take the same lock to write one.
pub struct TextFeed {
    stream: UnixStream,
    writing: Arc<Mutex<()>>,
}

impl TextFeed {
    fn send(&mut self, req: &Request) -> Result<(), ClientError> {
        let _one_writer = self.writing.lock().unwrap_or_else(|e| e.into_inner());
        protocol::write_frame(&mut self.stream, req)?;
        Ok(())
    }

    pub fn append_text(&mut self, id: u64, text: &str) -> Result<(), ClientError> {
        self.send(&Request::AppendText { id, text: text.to_string() })
    }

    pub fn finish_text(&mut self, id: u64) -> Result<(), ClientError> {
        self.send(&Request::FinishText { id })
    }
}

/// `explicit`, else `$TTSD_SOCKET`, else the daemon's default path.
pub fn socket_path(explicit: Option<&Path>) -> PathBuf {
    target(explicit, Vec::new()).path
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_path_trusts_only_our_own_uid() {
        let t = ServerTrust { own_uid: 1000, default_path: true, allowed: vec![] };
        assert!(t.accepts(1000));
        assert!(!t.accepts(0), "root is not who serves our default path");
        assert!(!t.accepts(1001));
        let t = ServerTrust { default_path: true, allowed: vec![0], ..t };
        assert!(t.accepts(0), "unless allowed");
    }

    #[test]
    fn a_named_path_trusts_our_uid_root_and_the_allowed() {
        let t = ServerTrust { own_uid: 1000, default_path: false, allowed: vec![1002] };
        assert!(t.accepts(1000) && t.accepts(0) && t.accepts(1002));
        assert!(!t.accepts(1001));
        assert!(t.describe().contains("1002"), "{}", t.describe());
    }

    #[test]
    fn client_refuses_socket_of_other_uid() {
        // A server that is us, seen through a trust that excludes us.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.sock");
        let _l = std::os::unix::net::UnixListener::bind(&path).unwrap();
        let me = nix::unistd::geteuid().as_raw();
        // Another uid's view: on the default path neither we nor root pass.
        let trust = ServerTrust { own_uid: if me == 1 { 2 } else { 1 }, default_path: true, allowed: vec![] };
        let target = Target { path, default_dir: None, trust };
        match Client::connect_to(&target, "t") {
            Err(ClientError::UntrustedServer { uid, .. }) => assert_eq!(uid, me),
            Err(e) => panic!("{e}"),
            Ok(_) => panic!("a server of uid {me} was trusted"),
        }
    }
}
