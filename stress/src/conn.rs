//! Load connections: a writer (the client thread) and a reader thread that
//! feeds every reply to the [`Tracker`].
//!
//! Owns one Unix stream per client, the handshake, and the "was it
//! answered?" wait. It never decides what to send.
use crate::track::Tracker;
use anyhow::{bail, Context, Result};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};
use ttsd::protocol::{self, Reply, Request, PROTOCOL_VERSION};

/// Largest reply frame accepted (audio frames can be large).
pub const MAX_REPLY: usize = protocol::frame::HARD_MAX_FRAME_BYTES;

#[derive(Debug)]
pub enum ConnEvent {
    /// The terminal reply for this id arrived.
    Terminal(u64),
    /// A Health reply (the end-of-connection flush marker).
    Health,
    /// The stream ended or failed.
    Closed(String),
}

pub struct LoadConn {
    pub stream: UnixStream,
    pub events: mpsc::Receiver<ConnEvent>,
    reader: Option<JoinHandle<()>>,
}

/// Connect and do the handshake on a raw stream (reads with a timeout).
pub fn handshake(path: &Path, name: &str) -> Result<UnixStream> {
    let mut s = UnixStream::connect(path).with_context(|| format!("connect {}", path.display()))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    protocol::write_frame(&mut s, &Request::Hello { version: PROTOCOL_VERSION, client: name.into() })?;
    match protocol::read_frame::<Reply, _>(&mut s, MAX_REPLY)? {
        Some(Reply::HelloOk { .. }) => Ok(s),
        other => bail!("handshake answered {other:?}"),
    }
}

impl LoadConn {
    pub fn open(path: &Path, name: &str, tracker: &Tracker) -> Result<Self> {
        let stream = handshake(path, name)?;
        stream.set_read_timeout(None)?;
        let mut rd = stream.try_clone()?;
        let (tx, rx) = mpsc::channel();
        let tracker = tracker.clone();
        let reader = std::thread::spawn(move || loop {
            match protocol::read_frame::<Reply, _>(&mut rd, MAX_REPLY) {
                Ok(Some(reply)) => {
                    let now = Instant::now();
                    if matches!(reply, Reply::Health { .. }) {
                        let _ = tx.send(ConnEvent::Health);
                    } else if let Some(id) = tracker.reply(&reply, now) {
                        let _ = tx.send(ConnEvent::Terminal(id));
                    }
                }
                Ok(None) => {
                    let _ = tx.send(ConnEvent::Closed("closed by the daemon".into()));
                    return;
                }
                Err(e) => {
                    let _ = tx.send(ConnEvent::Closed(e.to_string()));
                    return;
                }
            }
        });
        Ok(Self { stream, events: rx, reader: Some(reader) })
    }

    pub fn send(&mut self, req: &Request) -> Result<()> {
        protocol::write_frame(&mut self.stream, req)?;
        Ok(())
    }

    /// Ask for Health and wait for it: every reply the daemon queued before
    /// it has then been read and recorded (replies keep their order).
    pub fn flush(&mut self, within: Duration) -> bool {
        if self.send(&Request::Health).is_err() {
            return false;
        }
        let until = Instant::now() + within;
        loop {
            let left = until.saturating_duration_since(Instant::now());
            match self.events.recv_timeout(left) {
                Ok(ConnEvent::Health) => return true,
                Ok(ConnEvent::Terminal(_)) => {}
                Ok(ConnEvent::Closed(_)) | Err(_) => return false,
            }
        }
    }
}

impl Drop for LoadConn {
    fn drop(&mut self) {
        let _ = self.stream.shutdown(std::net::Shutdown::Both);
        if let Some(r) = self.reader.take() {
            let _ = r.join();
        }
    }
}
