//! Log lines on stderr, each written with a single write so lines from the
//! supervisor and its workers never interleave mid-line.
//!
//! Owns the line format only; it never buffers or filters.
use std::io::Write;

/// Write `line` plus a newline to stderr in one `write` call.
pub fn line(line: &str) {
    let mut s = String::with_capacity(line.len() + 1);
    s.push_str(line);
    s.push('\n');
    let _ = std::io::stderr().lock().write_all(s.as_bytes());
}

/// `logln!("ttsd: {}", x)`: format, then [`line`].
#[macro_export]
macro_rules! logln {
    ($($arg:tt)*) => { $crate::log::line(&format!($($arg)*)) };
}
