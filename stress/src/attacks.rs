//! Misbehaving clients: malformed and oversized frames, a truncated frame,
//! a disconnect in the middle of a stream, and clients that stop reading.
//!
//! Each attack runs on its own connection and reports whether the daemon
//! answered as PROTOCOL.md says. Requests sent here are not load requests:
//! the client gives up on them on purpose, so they never reach the
//! [`crate::track::Tracker`] and never count in the load's invariants.
use crate::conn::{handshake, MAX_REPLY};
use crate::texts::LONG;
use serde::Serialize;
use std::io::Write;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};
use ttsd::protocol::{self, ErrorCode, Reply, Request, SynthRequest};

#[derive(Debug, Clone, Serialize)]
pub struct AttackResult {
    pub t_s: f64,
    pub kind: &'static str,
    pub ok: bool,
    pub detail: String,
}

fn read(s: &mut UnixStream) -> Result<Option<Reply>, String> {
    protocol::read_frame::<Reply, _>(s, MAX_REPLY).map_err(|e| e.to_string())
}

/// An unknown request tag: answered malformed_frame, the connection stays usable.
pub fn malformed(path: &Path) -> (bool, String) {
    let run = || -> Result<(bool, String), String> {
        let mut s = handshake(path, "stress-malformed").map_err(|e| format!("{e:#}"))?;
        s.write_all(&[4, 0, 0, 0, 99, 0, 0, 0]).map_err(|e| e.to_string())?;
        let first = read(&mut s)?;
        let ok1 = matches!(first, Some(Reply::Error { id: None, code: ErrorCode::MalformedFrame, .. }));
        protocol::write_frame(&mut s, &Request::Health).map_err(|e| e.to_string())?;
        let second = read(&mut s)?;
        let ok2 = matches!(second, Some(Reply::Health { .. }));
        Ok((ok1 && ok2, format!("{:.60?} then {:.60?}", first, second)))
    };
    run().unwrap_or_else(|e| (false, e))
}

/// A 4 GiB length prefix: answered frame_too_large, then closed.
pub fn oversized(path: &Path) -> (bool, String) {
    let run = || -> Result<(bool, String), String> {
        let mut s = handshake(path, "stress-oversized").map_err(|e| format!("{e:#}"))?;
        s.write_all(&u32::MAX.to_le_bytes()).map_err(|e| e.to_string())?;
        let _ = s.write_all(&[0u8; 64]);
        let first = read(&mut s)?;
        let ok1 = matches!(first, Some(Reply::Error { id: None, code: ErrorCode::FrameTooLarge, .. }));
        let closed = matches!(read(&mut s), Ok(None) | Err(_));
        Ok((ok1 && closed, format!("{:.60?}, closed: {closed}", first)))
    };
    run().unwrap_or_else(|e| (false, e))
}

/// Half a frame, then close: the daemon must just drop the connection.
pub fn truncated(path: &Path) -> (bool, String) {
    let run = || -> Result<(bool, String), String> {
        let mut s = handshake(path, "stress-truncated").map_err(|e| format!("{e:#}"))?;
        let bytes = protocol::encode(&Request::Synthesize(SynthRequest { id: 1, ..SynthRequest::text(LONG) }))
            .map_err(|e| e.to_string())?;
        s.write_all(&bytes[..bytes.len() / 2]).map_err(|e| e.to_string())?;
        Ok((true, format!("sent {} of {} bytes, closed", bytes.len() / 2, bytes.len())))
    };
    run().unwrap_or_else(|e| (false, e))
}

/// A streamed long request, dropped after its first audio frame.
pub fn midstream_disconnect(path: &Path) -> (bool, String) {
    let run = || -> Result<(bool, String), String> {
        let mut s = handshake(path, "stress-midstream").map_err(|e| format!("{e:#}"))?;
        s.set_read_timeout(Some(Duration::from_secs(60))).map_err(|e| e.to_string())?;
        let req = SynthRequest { id: 1, stream: true, timeout_ms: Some(60_000), ..SynthRequest::text(LONG) };
        protocol::write_frame(&mut s, &Request::Synthesize(req)).map_err(|e| e.to_string())?;
        let t = Instant::now();
        loop {
            match read(&mut s)? {
                Some(Reply::Queued { .. }) => {}
                Some(Reply::Audio { .. }) => {
                    return Ok((true, format!("disconnected after the first audio ({} ms)", t.elapsed().as_millis())))
                }
                // Ending before any audio (a fault elsewhere) is not the
                // daemon's failure; the disconnect then tests nothing.
                Some(Reply::Error { id: Some(1), code, .. }) => {
                    return Ok((true, format!("ended {code} before audio; disconnected anyway")))
                }
                Some(Reply::Done { .. }) => return Ok((true, "done before the disconnect".into())),
                other => return Err(format!("unexpected {other:.60?}")),
            }
        }
    };
    run().unwrap_or_else(|e| (false, e))
}

/// A client that submits requests and never reads a byte. Kept open until
/// dropped; the daemon must keep serving everyone else meanwhile.
pub struct NonReader {
    pub stream: UnixStream,
    pub sent: u32,
}

impl NonReader {
    pub fn open(path: &Path) -> Result<Self, String> {
        let s = handshake(path, "stress-nonreader").map_err(|e| format!("{e:#}"))?;
        s.set_write_timeout(Some(Duration::from_secs(2))).map_err(|e| e.to_string())?;
        Ok(Self { stream: s, sent: 0 })
    }

    /// Submit `n` more requests (non-streamed: the daemon sends their audio
    /// at once, which is what would pile up).
    pub fn submit(&mut self, n: u32) -> Result<(), String> {
        for _ in 0..n {
            self.sent += 1;
            let req = SynthRequest { id: self.sent as u64, timeout_ms: Some(60_000), ..SynthRequest::text("Nobody is listening to this.") };
            protocol::write_frame(&mut self.stream, &Request::Synthesize(req)).map_err(|e| e.to_string())?;
        }
        Ok(())
    }
}
