//! The worker's end of its socketpair: blocking sends, and receives that
//! either wait (with a timeout, for the idle loop) or only look (between
//! chunks, for cancels).
//!
//! Owns the byte buffer of partially received frames. It never interprets
//! messages beyond decoding them.
use crate::protocol::frame::{self, FrameError};
use crate::protocol::worker::{FromWorker, ToWorker, MAX_INTERNAL_FRAME};
use std::cell::RefCell;
use std::io::{self, Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};
use thiserror::Error;

#[derive(Debug, Error)]
pub enum ChannelError {
    #[error("supervisor closed the channel")]
    Closed,
    #[error("channel: {0}")]
    Frame(#[from] FrameError),
    #[error("channel i/o: {0}")]
    Io(#[from] io::Error),
}

pub struct Channel {
    stream: UnixStream,
    buf: RefCell<Vec<u8>>,
}

impl Channel {
    pub fn new(stream: UnixStream) -> Self {
        Self { stream, buf: RefCell::new(Vec::new()) }
    }

    pub fn send(&self, msg: &FromWorker) -> Result<(), ChannelError> {
        let bytes = frame::encode(msg)?;
        (&self.stream).write_all(&bytes)?;
        Ok(())
    }

    /// A message that is already here, without waiting.
    pub fn try_recv(&self) -> Result<Option<ToWorker>, ChannelError> {
        self.recv_timeout(Duration::ZERO)
    }

    /// The next message, waiting at most `timeout`; `Ok(None)` when none came
    /// (a signal that interrupts the wait also ends it early).
    pub fn recv_timeout(&self, timeout: Duration) -> Result<Option<ToWorker>, ChannelError> {
        let until = Instant::now() + timeout;
        loop {
            if let Some(msg) = self.take_frame()? {
                return Ok(Some(msg));
            }
            let left = until.saturating_duration_since(Instant::now());
            if !self.readable(left)? {
                return Ok(None);
            }
            let mut tmp = [0u8; 64 * 1024];
            let n = match (&self.stream).read(&mut tmp) {
                Ok(0) => return Err(ChannelError::Closed),
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => return Ok(None),
                Err(e) => return Err(e.into()),
            };
            self.buf.borrow_mut().extend_from_slice(&tmp[..n]);
        }
    }

    fn take_frame(&self) -> Result<Option<ToWorker>, ChannelError> {
        let mut buf = self.buf.borrow_mut();
        match frame::decode::<ToWorker>(&buf, MAX_INTERNAL_FRAME) {
            Ok(Some((msg, used))) => {
                buf.drain(..used);
                Ok(Some(msg))
            }
            Ok(None) => Ok(None),
            // Both ends are the same binary: a bad frame means a broken channel.
            Err(skip) => Err(skip.error.into()),
        }
    }

    fn readable(&self, timeout: Duration) -> Result<bool, ChannelError> {
        let mut pfd = libc::pollfd { fd: self.stream.as_raw_fd(), events: libc::POLLIN, revents: 0 };
        let ms = timeout.as_millis().min(i32::MAX as u128) as i32;
        // SAFETY: one valid pollfd for the duration of the call.
        let r = unsafe { libc::poll(&mut pfd, 1, ms) };
        if r < 0 {
            let e = io::Error::last_os_error();
            return if e.kind() == io::ErrorKind::Interrupted { Ok(false) } else { Err(e.into()) };
        }
        Ok(r > 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn receives_whole_frames_and_times_out_without_them() {
        // Another test in this binary arms SIGALRM, which ends a wait early
        // (EINTR) on whichever thread takes it: block it on this one.
        let mut alrm = nix::sys::signal::SigSet::empty();
        alrm.add(nix::sys::signal::Signal::SIGALRM);
        nix::sys::signal::pthread_sigmask(nix::sys::signal::SigmaskHow::SIG_BLOCK, Some(&alrm), None).unwrap();
        let (a, b) = UnixStream::pair().unwrap();
        let ch = Channel::new(a);
        assert!(ch.try_recv().unwrap().is_none());
        let t = Instant::now();
        assert!(ch.recv_timeout(Duration::from_millis(30)).unwrap().is_none());
        assert!(t.elapsed() >= Duration::from_millis(25));
        // Half a frame is not a message yet.
        let bytes = frame::encode(&ToWorker::Cancel { job: 9 }).unwrap();
        (&b).write_all(&bytes[..5]).unwrap();
        assert!(ch.try_recv().unwrap().is_none());
        (&b).write_all(&bytes[5..]).unwrap();
        (&b).write_all(&frame::encode(&ToWorker::Stop).unwrap()).unwrap();
        assert_eq!(ch.recv_timeout(Duration::from_secs(1)).unwrap(), Some(ToWorker::Cancel { job: 9 }));
        assert_eq!(ch.try_recv().unwrap(), Some(ToWorker::Stop));
        ch.send(&FromWorker::Heartbeat { rss_bytes: 5 }).unwrap();
        let back: FromWorker = frame::read_frame(&mut &b, MAX_INTERNAL_FRAME).unwrap().unwrap();
        assert_eq!(back, FromWorker::Heartbeat { rss_bytes: 5 });
        drop(b);
        assert!(matches!(ch.recv_timeout(Duration::from_secs(1)), Err(ChannelError::Closed)));
    }
}
