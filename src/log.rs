//! Log lines on stderr, each written with a single `write` of at most
//! [`MAX_LINE_BYTES`] (PIPE_BUF), so lines from the supervisor and its
//! workers never interleave mid-line.
//!
//! Two modes:
//! - **direct** (workers, the CLI, the supervisor before it starts): the
//!   caller writes, after waiting at most [`DIRECT_WAIT`] for stderr to be
//!   writable; a line that cannot go out by then is dropped and counted, and
//!   the next line that does go out says how many were lost. A log reader
//!   that stops reading delays a worker by at most that much per line.
//! - **background** (the supervisor, [`start_background`]): lines go into a
//!   bounded buffer ([`BUFFER_BYTES`]) that a dedicated writer thread drains
//!   with ordinary blocking writes. When the buffer is full, lines are
//!   dropped and counted, and "dropped N log lines" is written where they
//!   were lost. The supervisor's event loop never waits for stderr.
//!
//! Why a thread and not O_NONBLOCK drained by the event loop: O_NONBLOCK is
//! a flag of the open file description, which stderr shares with every
//! worker (inherited) and with whoever started ttsd (a terminal, a shell's
//! pipe, journald's socket). Setting it would make their writes fail with
//! EAGAIN (`eprintln!` panics on that, C libraries lose output, a shell
//! left with a non-blocking terminal misbehaves). A thread blocked in
//! write(2) costs nothing and changes nobody's flags.
//!
//! Owns the line format (one line, clipped) and the buffer. It never
//! filters by content: callers decide what is worth a line (see
//! `supervisor::request` for counting instead of logging).
use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

/// Most bytes the background buffer holds before lines are dropped.
pub const BUFFER_BYTES: usize = 1 << 20;
/// Longest line written, newline included: PIPE_BUF, the most one write to
/// a pipe delivers without interleaving with other writers.
pub const MAX_LINE_BYTES: usize = 4096;
/// Longest a direct-mode caller waits for stderr to take a line.
pub const DIRECT_WAIT: Duration = Duration::from_secs(1);

/// Write `line` plus a newline to stderr in one `write` call (clipped to
/// [`MAX_LINE_BYTES`]). Never blocks the supervisor (see the module doc).
pub fn line(line: &str) {
    let text = terminated(line);
    if BACKGROUND_ON.load(Ordering::Acquire) {
        if let Some(b) = BACKGROUND.get() {
            b.push(text);
            return;
        }
    }
    direct(&text);
}

/// `logln!("ttsd: {}", x)`: format, then [`line`].
#[macro_export]
macro_rules! logln {
    ($($arg:tt)*) => { $crate::log::line(&format!($($arg)*)) };
}

/// Log lines this process dropped because stderr did not take them in time
/// (both modes).
pub fn dropped_lines() -> u64 {
    DIRECT_DROPPED_TOTAL.load(Ordering::Relaxed) + BACKGROUND.get().map_or(0, |b| b.dropped_total())
}

/// Switch this process to background mode: start the writer thread (once)
/// and send every later line through the buffer.
pub fn start_background() -> std::io::Result<()> {
    if BACKGROUND.get().is_none() {
        let buf = Arc::new(Buffer::new(BUFFER_BYTES));
        let writer = buf.clone();
        std::thread::Builder::new().name("ttsd-log".into()).spawn(move || writer.drain(write_stderr))?;
        // Only this function sets it, from the supervisor's one main thread.
        let _ = BACKGROUND.set(buf);
    }
    BACKGROUND_ON.store(true, Ordering::Release);
    Ok(())
}

/// Wait up to `within` for the buffer to be written out, then go back to
/// direct mode. If stderr does not take it in time, background mode stays
/// on (later lines are buffered or dropped, never waited for) and this
/// returns false.
pub fn stop_background(within: Duration) -> bool {
    let Some(b) = BACKGROUND.get() else { return true };
    if b.flush(within) {
        BACKGROUND_ON.store(false, Ordering::Release);
        true
    } else {
        false
    }
}

static BACKGROUND: OnceLock<Arc<Buffer>> = OnceLock::new();
static BACKGROUND_ON: AtomicBool = AtomicBool::new(false);
/// Direct-mode lines dropped since the last one that went out.
static DIRECT_DROPPED: AtomicU64 = AtomicU64::new(0);
static DIRECT_DROPPED_TOTAL: AtomicU64 = AtomicU64::new(0);

/// `line` clipped to fit [`MAX_LINE_BYTES`] with its newline, cut on a
/// character boundary, an ellipsis where it was cut.
fn terminated(line: &str) -> String {
    const ELLIPSIS: &str = "…";
    let mut s = String::with_capacity(line.len().min(MAX_LINE_BYTES) + 1);
    if line.len() < MAX_LINE_BYTES {
        s.push_str(line);
    } else {
        let mut cut = MAX_LINE_BYTES - 1 - ELLIPSIS.len();
        while !line.is_char_boundary(cut) {
            cut -= 1;
        }
        s.push_str(&line[..cut]);
        s.push_str(ELLIPSIS);
    }
    s.push('\n');
    s
}

fn dropped_note(n: u64) -> String {
    terminated(&format!("ttsd: dropped {n} log line(s) here: stderr was not being read fast enough"))
}

/// Direct mode: wait up to [`DIRECT_WAIT`] for stderr, then one write.
fn direct(text: &str) {
    if !stderr_writable(DIRECT_WAIT) {
        DIRECT_DROPPED.fetch_add(1, Ordering::Relaxed);
        DIRECT_DROPPED_TOTAL.fetch_add(1, Ordering::Relaxed);
        return;
    }
    let lost = DIRECT_DROPPED.swap(0, Ordering::Relaxed);
    if lost > 0 {
        let _ = write_stderr(dropped_note(lost).as_bytes());
    }
    let _ = write_stderr(text.as_bytes());
}

/// Whether stderr can take a line within `wait`. For a pipe, POLLOUT means
/// at least PIPE_BUF bytes are free, so a line of at most that never blocks.
/// An error (stderr closed) counts as writable: the write then fails at once.
fn stderr_writable(wait: Duration) -> bool {
    let mut fds = libc::pollfd { fd: libc::STDERR_FILENO, events: libc::POLLOUT, revents: 0 };
    let until = Instant::now() + wait;
    loop {
        let left = until.saturating_duration_since(Instant::now()).as_millis().min(i32::MAX as u128) as i32;
        // SAFETY: one valid pollfd, count 1.
        let r = unsafe { libc::poll(&mut fds, 1, left) };
        if r > 0 {
            return true;
        }
        if r == 0 {
            return false;
        }
        if std::io::Error::last_os_error().kind() != std::io::ErrorKind::Interrupted {
            return true;
        }
    }
}

/// All of `bytes` to fd 2 with write(2), not through std's `Stderr` (whose
/// lock a blocked writer would hold, stalling any `eprintln!` or panic
/// message on another thread). Retries EINTR; waits on EAGAIN in case
/// someone else made the descriptor non-blocking.
fn write_stderr(mut bytes: &[u8]) -> std::io::Result<()> {
    while !bytes.is_empty() {
        // SAFETY: the pointer and length describe a live slice.
        let n = unsafe { libc::write(libc::STDERR_FILENO, bytes.as_ptr().cast(), bytes.len()) };
        if n >= 0 {
            bytes = &bytes[n as usize..];
            continue;
        }
        let e = std::io::Error::last_os_error();
        match e.kind() {
            std::io::ErrorKind::Interrupted => {}
            std::io::ErrorKind::WouldBlock => {
                stderr_writable(Duration::from_secs(1));
            }
            _ => return Err(e),
        }
    }
    Ok(())
}

enum Entry {
    Line(String),
    /// This many lines were dropped at this point.
    Dropped(u64),
}

#[derive(Default)]
struct State {
    entries: VecDeque<Entry>,
    /// Bytes of the lines in `entries`.
    bytes: usize,
    /// The writer holds entries it took and has not written yet.
    writing: bool,
}

/// The bounded buffer between the loggers and the writer thread.
struct Buffer {
    cap: usize,
    state: Mutex<State>,
    /// Entries arrived.
    wake: Condvar,
    /// Everything taken has been written and nothing is waiting.
    idle: Condvar,
    dropped_total: AtomicU64,
}

impl Buffer {
    fn new(cap: usize) -> Self {
        Self {
            cap,
            state: Mutex::new(State::default()),
            wake: Condvar::new(),
            idle: Condvar::new(),
            dropped_total: AtomicU64::new(0),
        }
    }

    /// A poisoned lock only means a thread panicked while holding it; the
    /// queue itself is always consistent, so logging goes on.
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Queue `text`, or count it as dropped when the buffer is full.
    fn push(&self, text: String) {
        let mut s = self.lock();
        if s.bytes + text.len() <= self.cap {
            s.bytes += text.len();
            s.entries.push_back(Entry::Line(text));
        } else {
            self.dropped_total.fetch_add(1, Ordering::Relaxed);
            // At most one marker after each line that got in, so markers
            // are bounded by the lines the byte limit admits.
            match s.entries.back_mut() {
                Some(Entry::Dropped(n)) => *n += 1,
                _ => s.entries.push_back(Entry::Dropped(1)),
            }
        }
        drop(s);
        self.wake.notify_one();
    }

    fn dropped_total(&self) -> u64 {
        self.dropped_total.load(Ordering::Relaxed)
    }

    /// The writer thread: take everything queued, write it line by line
    /// (blocking as long as the sink does), forever.
    fn drain(&self, mut sink: impl FnMut(&[u8]) -> std::io::Result<()>) {
        loop {
            let batch = {
                let mut s = self.lock();
                while s.entries.is_empty() {
                    s.writing = false;
                    self.idle.notify_all();
                    s = self.wake.wait(s).unwrap_or_else(|e| e.into_inner());
                }
                s.writing = true;
                s.bytes = 0;
                std::mem::take(&mut s.entries)
            };
            for e in batch {
                // A sink that fails (stderr closed) loses the line; nothing
                // else can be done with it.
                let _ = match e {
                    Entry::Line(text) => sink(text.as_bytes()),
                    Entry::Dropped(n) => sink(dropped_note(n).as_bytes()),
                };
            }
        }
    }

    /// Wait up to `within` until everything queued has been written.
    fn flush(&self, within: Duration) -> bool {
        let until = Instant::now() + within;
        let mut s = self.lock();
        while !s.entries.is_empty() || s.writing {
            let left = until.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            s = self.idle.wait_timeout(s, left).unwrap_or_else(|e| e.into_inner()).0;
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;

    #[test]
    fn long_lines_are_clipped_on_a_character_boundary() {
        assert_eq!(terminated("abc"), "abc\n");
        let long = "é".repeat(MAX_LINE_BYTES);
        let t = terminated(&long);
        assert!(t.len() <= MAX_LINE_BYTES, "{}", t.len());
        assert!(t.ends_with("…\n"));
        assert!(t.starts_with("éé"));
    }

    /// What a gated sink wrote, line by line.
    type Written = Arc<Mutex<Vec<String>>>;

    /// A sink that blocks until told to go on, like a pipe nobody reads.
    fn gated() -> (impl FnMut(&[u8]) -> std::io::Result<()>, mpsc::Sender<()>, Written) {
        let (go_tx, go_rx) = mpsc::channel::<()>();
        let out = Arc::new(Mutex::new(Vec::new()));
        let seen = out.clone();
        let sink = move |b: &[u8]| {
            let _ = go_rx.recv();
            seen.lock().unwrap().push(String::from_utf8_lossy(b).into_owned());
            Ok(())
        };
        (sink, go_tx, out)
    }

    #[test]
    fn a_stalled_sink_never_blocks_the_logger_and_drops_are_reported_in_place() {
        let buf = Arc::new(Buffer::new(100));
        let (sink, go, out) = gated();
        let writer = buf.clone();
        std::thread::spawn(move || writer.drain(sink));
        // The writer takes the first line and blocks on it; 3 x 40 bytes
        // then fill the 100-byte buffer with 2 lines and drop 1, and so on.
        let t = Instant::now();
        buf.push("first\n".into());
        while !buf.lock().writing {
            std::thread::yield_now();
        }
        for i in 0..5 {
            buf.push(format!("{i:039}\n"));
        }
        // Pushing never waited for the sink (it has not written anything).
        assert!(t.elapsed() < Duration::from_secs(5));
        assert!(out.lock().unwrap().is_empty());
        assert_eq!(buf.dropped_total(), 3);
        buf.push("after\n".into());
        for _ in 0..10 {
            go.send(()).unwrap();
        }
        assert!(buf.flush(Duration::from_secs(10)));
        let got = out.lock().unwrap().clone();
        assert_eq!(got.len(), 5, "{got:?}");
        assert_eq!(got[0], "first\n");
        assert!(got[1].starts_with("000"));
        assert!(got[2].starts_with("000") && got[2].ends_with("1\n"));
        assert!(got[3].contains("dropped 3 log line"), "{got:?}");
        assert_eq!(got[4], "after\n", "a line that fits again after the drain goes out");
    }

    #[test]
    fn flush_gives_up_on_a_sink_that_never_takes_anything() {
        let buf = Arc::new(Buffer::new(1 << 10));
        let (sink, _go, _) = gated();
        let writer = buf.clone();
        std::thread::spawn(move || writer.drain(sink));
        buf.push("stuck\n".into());
        assert!(!buf.flush(Duration::from_millis(200)));
        assert!(Buffer::new(10).flush(Duration::from_millis(1)), "an empty buffer is flushed");
    }
}
