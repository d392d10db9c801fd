//! Bytes to frames and back: a u32 little-endian payload length, then a
//! bincode 2 payload (serde, little endian, fixed-width integers).
//!
//! Owns framing only: it never gives a message a meaning and never decides
//! what to do with a bad frame (the connection layer does). "Not enough bytes
//! yet" is not an error: [`decode`] answers `Ok(None)`.
use serde::{de::DeserializeOwned, Serialize};
use std::io::{self, Read, Write};
use thiserror::Error;

/// Bytes in the length prefix.
pub const HEADER_BYTES: usize = 4;
/// No frame in either direction is ever larger than this, whatever the
/// configuration says (it also bounds what a decoder may allocate).
pub const HARD_MAX_FRAME_BYTES: usize = 64 * 1024 * 1024;

/// The one bincode configuration of the protocol (see PROTOCOL.md).
pub fn bincode_config() -> impl bincode::config::Config {
    bincode::config::standard()
        .with_little_endian()
        .with_fixed_int_encoding()
        .with_limit::<HARD_MAX_FRAME_BYTES>()
}

#[derive(Debug, Error)]
pub enum FrameError {
    /// The length prefix announces more than the receiver accepts. The
    /// stream cannot be resynchronised cheaply, so the connection is closed.
    #[error("frame of {len} bytes exceeds the limit of {max} bytes")]
    TooLarge { len: usize, max: usize },
    /// The payload is not a valid message. The frame boundary is intact, so
    /// the receiver may skip it and go on.
    #[error("malformed frame: {0}")]
    Malformed(String),
    /// The peer closed the stream in the middle of a frame.
    #[error("stream ended inside a frame")]
    Truncated,
    #[error("i/o: {0}")]
    Io(#[from] io::Error),
}

/// Encode `msg` as one complete frame (length prefix included).
pub fn encode<T: Serialize>(msg: &T) -> Result<Vec<u8>, FrameError> {
    let mut out = vec![0u8; HEADER_BYTES];
    bincode::serde::encode_into_std_write(msg, &mut out, bincode_config())
        .map_err(|e| FrameError::Malformed(format!("cannot encode: {e}")))?;
    let len = out.len() - HEADER_BYTES;
    if len > HARD_MAX_FRAME_BYTES {
        return Err(FrameError::TooLarge { len, max: HARD_MAX_FRAME_BYTES });
    }
    out[..HEADER_BYTES].copy_from_slice(&(len as u32).to_le_bytes());
    Ok(out)
}

/// Decode a payload (the bytes after the length prefix). Every byte must be
/// consumed: trailing bytes make the frame malformed.
pub fn decode_payload<T: DeserializeOwned>(payload: &[u8]) -> Result<T, FrameError> {
    let (msg, used) = bincode::serde::decode_from_slice(payload, bincode_config())
        .map_err(|e| FrameError::Malformed(e.to_string()))?;
    if used != payload.len() {
        return Err(FrameError::Malformed(format!(
            "{} trailing bytes after the message",
            payload.len() - used
        )));
    }
    Ok(msg)
}

/// Length announced by a header, checked against `max`.
pub fn payload_len(header: [u8; HEADER_BYTES], max: usize) -> Result<usize, FrameError> {
    let len = u32::from_le_bytes(header) as usize;
    if len > max.min(HARD_MAX_FRAME_BYTES) {
        return Err(FrameError::TooLarge { len, max: max.min(HARD_MAX_FRAME_BYTES) });
    }
    Ok(len)
}

/// Try to take one frame off the front of `buf`. `Ok(None)`: not complete
/// yet. `Ok(Some((msg, n)))`: the message and the bytes it used. A malformed
/// payload reports how many bytes to skip through [`Skip`].
pub fn decode<T: DeserializeOwned>(buf: &[u8], max: usize) -> Result<Option<(T, usize)>, Skip> {
    if buf.len() < HEADER_BYTES {
        return Ok(None);
    }
    let header = [buf[0], buf[1], buf[2], buf[3]];
    let len = payload_len(header, max).map_err(|e| Skip { error: e, skip: None })?;
    if buf.len() < HEADER_BYTES + len {
        return Ok(None);
    }
    let payload = &buf[HEADER_BYTES..HEADER_BYTES + len];
    match decode_payload(payload) {
        Ok(msg) => Ok(Some((msg, HEADER_BYTES + len))),
        Err(error) => Err(Skip { error, skip: Some(HEADER_BYTES + len) }),
    }
}

/// A frame that could not be decoded; `skip` is how many bytes to drop to
/// reach the next frame, or `None` when the stream cannot be resynchronised.
#[derive(Debug)]
pub struct Skip {
    pub error: FrameError,
    pub skip: Option<usize>,
}

/// Blocking read of one frame. `Ok(None)` on a clean end of stream (at a frame
/// boundary). A malformed payload is reported after the whole frame was read,
/// so the caller may go on reading the next one.
pub fn read_frame<T: DeserializeOwned, R: Read>(r: &mut R, max: usize) -> Result<Option<T>, FrameError> {
    let mut header = [0u8; HEADER_BYTES];
    let mut got = 0;
    while got < HEADER_BYTES {
        match r.read(&mut header[got..]) {
            Ok(0) if got == 0 => return Ok(None),
            Ok(0) => return Err(FrameError::Truncated),
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e.into()),
        }
    }
    let len = payload_len(header, max)?;
    let mut payload = vec![0u8; len];
    r.read_exact(&mut payload).map_err(|e| match e.kind() {
        io::ErrorKind::UnexpectedEof => FrameError::Truncated,
        _ => FrameError::Io(e),
    })?;
    decode_payload(&payload).map(Some)
}

/// Blocking write of one frame.
pub fn write_frame<T: Serialize, W: Write>(w: &mut W, msg: &T) -> Result<(), FrameError> {
    let bytes = encode(msg)?;
    w.write_all(&bytes)?;
    w.flush()?;
    Ok(())
}

/// Async read of one frame, same contract as [`read_frame`].
pub async fn read_frame_async<T, R>(r: &mut R, max: usize) -> Result<Option<T>, FrameError>
where
    T: DeserializeOwned,
    R: tokio::io::AsyncRead + Unpin,
{
    use tokio::io::AsyncReadExt;
    let mut header = [0u8; HEADER_BYTES];
    let mut got = 0;
    while got < HEADER_BYTES {
        match r.read(&mut header[got..]).await {
            Ok(0) if got == 0 => return Ok(None),
            Ok(0) => return Err(FrameError::Truncated),
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e.into()),
        }
    }
    let len = payload_len(header, max)?;
    let mut payload = vec![0u8; len];
    r.read_exact(&mut payload).await.map_err(|e| match e.kind() {
        io::ErrorKind::UnexpectedEof => FrameError::Truncated,
        _ => FrameError::Io(e),
    })?;
    decode_payload(&payload).map(Some)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::{ErrorCode, Fault, Input, Reply, Request, SynthRequest};

    fn synth(text: &str) -> Request {
        Request::Synthesize(SynthRequest { id: 7, stream: true, ..SynthRequest::text(text) })
    }

    #[test]
    fn round_trip_every_shape() {
        let msgs = vec![
            Request::Hello { version: 1, client: "test".into() },
            synth("Hello there."),
            Request::Synthesize(SynthRequest {
                id: u64::MAX,
                input: Input::PhonemeIds(vec![1, 0, 25, 0, 2]),
                voice: Some("joe".into()),
                speaker: Some(3),
                length_scale: Some(1.5),
                noise_scale: None,
                noise_w: Some(0.1),
                seed: Some(42),
                timeout_ms: Some(100),
                stream: false,
                fault: Some(Fault::SleepMs(5)),
            }),
            Request::Cancel { id: 3 },
            Request::Status,
            Request::Health,
            Request::Voices,
        ];
        for m in msgs {
            let bytes = encode(&m).unwrap();
            let (back, used): (Request, usize) = decode(&bytes, 1 << 20).unwrap().unwrap();
            assert_eq!(back, m);
            assert_eq!(used, bytes.len());
        }
        let r = Reply::Audio { id: 1, seq: 2, sample_rate: 22050, samples: vec![-1, 0, 1, i16::MAX] };
        let bytes = encode(&r).unwrap();
        assert_eq!(read_frame::<Reply, _>(&mut &bytes[..], 1 << 20).unwrap().unwrap(), r);
    }

    #[test]
    fn wire_layout_is_the_documented_one() {
        // Request::Cancel is variant 2: u32 tag 2, then the id as u64.
        let bytes = encode(&Request::Cancel { id: 0x0102 }).unwrap();
        assert_eq!(bytes, [12, 0, 0, 0, 2, 0, 0, 0, 2, 1, 0, 0, 0, 0, 0, 0]);
        // Hello: tag 0, u32 version, string as u64 length + utf-8.
        let bytes = encode(&Request::Hello { version: 1, client: "ab".into() }).unwrap();
        assert_eq!(&bytes[4..], &[0, 0, 0, 0, 1, 0, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0, b'a', b'b']);
        // Error: Option<u64> as a u8 tag, then the code's u32 tag.
        let e = Reply::Error { id: None, code: ErrorCode::Timeout, message: String::new() };
        let bytes = encode(&e).unwrap();
        assert_eq!(&bytes[4..], &[4, 0, 0, 0, 0, 3, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
    }

    #[test]
    fn the_synthesize_example_in_protocol_md_is_exact() {
        let req = Request::Synthesize(SynthRequest { id: 1, ..SynthRequest::text("Hi") });
        let hex: String = encode(&req).unwrap().iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(
            hex,
            "23000000\
             01000000\
             0100000000000000\
             00000000\
             0200000000000000\
             4869\
             000000000000000000"
        );
    }

    #[test]
    fn partial_frames_wait_for_more_bytes() {
        let bytes = encode(&synth("Partial frames are fine.")).unwrap();
        for cut in 0..bytes.len() {
            assert!(decode::<Request>(&bytes[..cut], 1 << 20).unwrap().is_none(), "cut at {cut}");
        }
        // Two frames back to back come apart at the right place.
        let mut two = bytes.clone();
        two.extend_from_slice(&encode(&Request::Status).unwrap());
        let (_, used): (Request, usize) = decode(&two, 1 << 20).unwrap().unwrap();
        let (second, _): (Request, usize) = decode(&two[used..], 1 << 20).unwrap().unwrap();
        assert_eq!(second, Request::Status);
        // A reader that hands out one byte at a time still gets whole frames.
        struct Trickle<'a>(&'a [u8]);
        impl Read for Trickle<'_> {
            fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
                if self.0.is_empty() || out.is_empty() {
                    return Ok(0);
                }
                out[0] = self.0[0];
                self.0 = &self.0[1..];
                Ok(1)
            }
        }
        let mut t = Trickle(&two);
        assert_eq!(read_frame::<Request, _>(&mut t, 1 << 20).unwrap().unwrap(), synth("Partial frames are fine."));
        assert_eq!(read_frame::<Request, _>(&mut t, 1 << 20).unwrap().unwrap(), Request::Status);
        assert!(read_frame::<Request, _>(&mut t, 1 << 20).unwrap().is_none());
        // Ending inside a frame is an error, not a clean close.
        let err = read_frame::<Request, _>(&mut &bytes[..bytes.len() - 1], 1 << 20).unwrap_err();
        assert!(matches!(err, FrameError::Truncated));
    }

    #[test]
    fn oversized_frames_are_refused_before_reading_them() {
        let bytes = encode(&synth(&"a".repeat(2000))).unwrap();
        let err = decode::<Request>(&bytes[..HEADER_BYTES], 1000).unwrap_err();
        assert!(matches!(err.error, FrameError::TooLarge { max: 1000, .. }));
        assert!(err.skip.is_none());
        let err = read_frame::<Request, _>(&mut &bytes[..], 1000).unwrap_err();
        assert!(matches!(err, FrameError::TooLarge { .. }));
        // A length near u32::MAX is refused without allocating it.
        let huge = u32::MAX.to_le_bytes();
        assert!(matches!(read_frame::<Request, _>(&mut &huge[..], 1 << 20), Err(FrameError::TooLarge { .. })));
    }

    #[test]
    fn malformed_payloads_can_be_skipped() {
        // Unknown enum tag 99.
        let mut bad = vec![4, 0, 0, 0];
        bad.extend_from_slice(&99u32.to_le_bytes());
        let good = encode(&Request::Health).unwrap();
        let mut stream = bad.clone();
        stream.extend_from_slice(&good);
        let err = decode::<Request>(&stream, 1 << 20).unwrap_err();
        assert!(matches!(err.error, FrameError::Malformed(_)));
        assert_eq!(err.skip, Some(bad.len()));
        let (next, _): (Request, usize) = decode(&stream[bad.len()..], 1 << 20).unwrap().unwrap();
        assert_eq!(next, Request::Health);
        // Trailing bytes inside a frame are malformed too.
        let mut padded = encode(&Request::Status).unwrap();
        padded.push(0);
        let len = (padded.len() - HEADER_BYTES) as u32;
        padded[..4].copy_from_slice(&len.to_le_bytes());
        assert!(matches!(decode::<Request>(&padded, 1 << 20).unwrap_err().error, FrameError::Malformed(_)));
        // A string that is not UTF-8.
        let mut s = vec![0, 0, 0, 0, 1, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0xff];
        let len = (s.len() as u32).to_le_bytes();
        s.splice(0..0, len);
        assert!(decode::<Request>(&s, 1 << 20).is_err());
    }

    #[tokio::test]
    async fn async_reader_matches_the_blocking_one() {
        let mut bytes = encode(&synth("x")).unwrap();
        bytes.extend_from_slice(&encode(&Request::Voices).unwrap());
        let mut r = &bytes[..];
        assert_eq!(read_frame_async::<Request, _>(&mut r, 1 << 20).await.unwrap().unwrap(), synth("x"));
        assert_eq!(read_frame_async::<Request, _>(&mut r, 1 << 20).await.unwrap().unwrap(), Request::Voices);
        assert!(read_frame_async::<Request, _>(&mut r, 1 << 20).await.unwrap().is_none());
    }
}
