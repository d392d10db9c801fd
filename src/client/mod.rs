//! The library client: a blocking connection to ttsd that speaks the
//! protocol of PROTOCOL.md. Used by ttsctl and the integration tests.
//!
//! Owns one connection and its request ids. It is meant for one request at
//! a time per connection (open more connections for concurrency, or use
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
pub mod table;
pub mod wav;

use crate::protocol::{
    self, ErrorCode, FrameError, HealthState, Reply, Request, StatusReply, SynthRequest, VoiceStatus, PROTOCOL_VERSION,
};
use std::io;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;
use thiserror::Error;

/// Largest reply frame the client accepts (audio frames can be large).
pub const MAX_REPLY_FRAME: usize = protocol::frame::HARD_MAX_FRAME_BYTES;

#[derive(Debug, Error)]
pub enum ClientError {
    #[error("cannot connect to ttsd at {path}: {source}")]
    Connect { path: PathBuf, source: io::Error },
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

pub struct Client {
    stream: UnixStream,
    server: String,
    next_id: u64,
}

impl Client {
    /// Connect and do the handshake.
    pub fn connect(path: &Path) -> Result<Self, ClientError> {
        Self::connect_as(path, "ttsd-client")
    }

    pub fn connect_as(path: &Path, client_name: &str) -> Result<Self, ClientError> {
        let stream =
            UnixStream::connect(path).map_err(|e| ClientError::Connect { path: path.to_path_buf(), source: e })?;
        let mut c = Self { stream, server: String::new(), next_id: 1 };
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
    pub fn submit(&mut self, mut req: SynthRequest) -> Result<u64, ClientError> {
        req.id = self.next_id();
        let id = req.id;
        self.send(&Request::Synthesize(req))?;
        Ok(id)
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

/// `explicit`, else `$TTSD_SOCKET`, else the daemon's default path.
pub fn socket_path(explicit: Option<&Path>) -> PathBuf {
    if let Some(p) = explicit {
        return p.to_path_buf();
    }
    match std::env::var_os("TTSD_SOCKET") {
        Some(p) if !p.is_empty() => PathBuf::from(p),
        _ => crate::config::default_socket_path(),
    }
}
