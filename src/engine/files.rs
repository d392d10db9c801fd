//! Reading voice files whole, with a size cap: regular files only.
//!
//! A voice path is operator input: a device (`/dev/zero`), a FIFO or a
//! runaway file must be refused at once with a clear reason, not read until
//! memory runs out or block forever. Never touches MLX or espeak-ng.
use std::fmt;
use std::fs::File;
use std::io::{self, Read};
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::Path;

/// Largest `.onnx` accepted (Piper's "high" voices are about 110 MB).
pub const MAX_MODEL_BYTES: u64 = 1 << 30;
/// Largest `.onnx.json` accepted (Piper's are about 5-20 KB).
pub const MAX_CONFIG_BYTES: u64 = 1 << 20;

/// Why a file could not be read.
#[derive(Debug)]
pub enum ReadError {
    NotFound,
    /// A directory, device, FIFO or socket.
    NotRegular(&'static str),
    TooLarge { len: u64, cap: u64 },
    Io(io::Error),
}

impl fmt::Display for ReadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ReadError::NotFound => write!(f, "it does not exist"),
            ReadError::NotRegular(kind) => write!(f, "it is {kind}, not a regular file"),
            ReadError::TooLarge { len, cap } => write!(f, "it is {len} bytes, more than the {cap} allowed"),
            ReadError::Io(e) => write!(f, "{e}"),
        }
    }
}

fn kind_of(t: std::fs::FileType) -> Option<&'static str> {
    if t.is_file() {
        None
    } else if t.is_dir() {
        Some("a directory")
    } else if t.is_char_device() {
        Some("a character device")
    } else if t.is_block_device() {
        Some("a block device")
    } else if t.is_fifo() {
        Some("a FIFO")
    } else if t.is_socket() {
        Some("a socket")
    } else {
        Some("not a file")
    }
}

/// The whole of the regular file at `path` (symlinks followed), if it is
/// at most `cap` bytes.
pub fn read_capped(path: &Path, cap: u64) -> Result<Vec<u8>, ReadError> {
    let io_err = |e: io::Error| if e.kind() == io::ErrorKind::NotFound { ReadError::NotFound } else { ReadError::Io(e) };
    // Checked before opening: opening a FIFO would block until a writer came.
    let meta = std::fs::metadata(path).map_err(io_err)?;
    if let Some(kind) = kind_of(meta.file_type()) {
        return Err(ReadError::NotRegular(kind));
    }
    // Non-blocking, and checked again on the open file, in case the path
    // was swapped in between.
    let file = File::options().read(true).custom_flags(libc::O_NONBLOCK).open(path).map_err(io_err)?;
    let meta = file.metadata().map_err(ReadError::Io)?;
    if let Some(kind) = kind_of(meta.file_type()) {
        return Err(ReadError::NotRegular(kind));
    }
    if meta.len() > cap {
        return Err(ReadError::TooLarge { len: meta.len(), cap });
    }
    let mut bytes = Vec::with_capacity(meta.len() as usize);
    // A file that grows while being read stops at the cap too.
    file.take(cap + 1).read_to_end(&mut bytes).map_err(ReadError::Io)?;
    if bytes.len() as u64 > cap {
        return Err(ReadError::TooLarge { len: bytes.len() as u64, cap });
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn regular_files_within_the_cap_are_read() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f");
        std::fs::write(&p, b"12345").unwrap();
        assert_eq!(read_capped(&p, 5).unwrap(), b"12345");
        assert!(matches!(read_capped(&p, 4), Err(ReadError::TooLarge { len: 5, cap: 4 })));
        let link = dir.path().join("link");
        std::os::unix::fs::symlink(&p, &link).unwrap();
        assert_eq!(read_capped(&link, 5).unwrap(), b"12345");
        assert!(matches!(read_capped(&dir.path().join("nope"), 5), Err(ReadError::NotFound)));
    }

    #[test]
    fn devices_fifos_and_directories_are_refused_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("fifo");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::S_IRWXU).unwrap();
        let zero_link = dir.path().join("zero.onnx");
        std::os::unix::fs::symlink("/dev/zero", &zero_link).unwrap();
        // Each is refused before a read: /dev/zero is not read up to the
        // cap, and the FIFO's open does not wait for a writer.
        for (p, want) in [
            (Path::new("/dev/zero"), "a character device, not a regular file"),
            (&zero_link, "a character device, not a regular file"),
            (&fifo, "a FIFO, not a regular file"),
            (dir.path(), "a directory, not a regular file"),
        ] {
            let e = read_capped(p, MAX_MODEL_BYTES).unwrap_err().to_string();
            assert!(e.contains(want), "{}: {e}", p.display());
        }
    }
}
