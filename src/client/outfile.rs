//! Output files that appear only once complete: `ttsctl say -o FILE` writes
//! a temporary file beside FILE and renames it into place when the request
//! has succeeded.
//!
//! Owns the choice between replacing and writing in place, and the
//! temporary files. It never creates, truncates, removes or renames over
//! anything before success: an existing FILE survives every failure (an
//! error, a closed connection, Ctrl-C). Devices and fifos (`/dev/null`,
//! `/dev/stdout` on a pipe) are written directly, never created, removed or
//! replaced. The only file it removes is a temporary one it created itself
//! (exclusively, so it cannot be anyone else's).
use std::ffi::CString;
use std::fs::{File, OpenOptions};
use std::hash::{BuildHasher, Hasher};
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicPtr, Ordering};

/// A file created by [`TempFile::create`]; removed when dropped unless
/// [`TempFile::persist`] moved it into place.
#[derive(Debug)]
pub struct TempFile {
    path: PathBuf,
    live: bool,
}

/// The temporary file now being written, for [`remove_temp_on_signal`]: a
/// NUL-terminated path, or null. Strings are leaked, never freed, so that a
/// signal handler never reads freed memory.
static CURRENT: AtomicPtr<libc::c_char> = AtomicPtr::new(std::ptr::null_mut());

fn publish(path: &Path) {
    let ptr = CString::new(path.as_os_str().as_bytes()).map_or(std::ptr::null_mut(), CString::into_raw);
    CURRENT.store(ptr, Ordering::SeqCst);
}

fn unpublish() {
    CURRENT.store(std::ptr::null_mut(), Ordering::SeqCst);
}

/// Remove the temporary file being written, if any. Async-signal-safe (one
/// atomic load and unlink(2)): a SIGINT/SIGTERM handler calls it before the
/// process dies, so that Ctrl-C leaves no temporary file behind.
pub fn remove_temp_on_signal() {
    let p = CURRENT.swap(std::ptr::null_mut(), Ordering::SeqCst);
    if !p.is_null() {
        // SAFETY: a leaked, NUL-terminated string from `publish`.
        unsafe { libc::unlink(p) };
    }
}

/// A random suffix: the pid and a number from a randomly keyed hasher.
fn suffix(attempt: u32) -> String {
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u32(attempt);
    h.write_u128(std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos()));
    format!("{}-{:012x}", std::process::id(), h.finish() & 0xffff_ffff_ffff)
}

impl TempFile {
    /// Create `dir/{prefix}{random}.tmp` exclusively (O_EXCL, O_NOFOLLOW:
    /// never an existing file or a link) with `mode` less the umask.
    pub fn create(dir: &Path, prefix: &str, mode: u32) -> io::Result<(File, TempFile)> {
        for attempt in 0..64 {
            let path = dir.join(format!("{prefix}{}.tmp", suffix(attempt)));
            match OpenOptions::new()
                .read(true)
                .write(true)
                .create_new(true)
                .mode(mode)
                .custom_flags(libc::O_NOFOLLOW)
                .open(&path)
            {
                Ok(f) => {
                    publish(&path);
                    return Ok((f, TempFile { path, live: true }));
                }
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(e),
            }
        }
        Err(io::Error::new(io::ErrorKind::AlreadyExists, "no free temporary file name"))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Flush `file` (this temporary file) to disk and rename it to `target`,
    /// replacing what is there: the one moment the old file goes, with the
    /// complete new one in its place.
    pub fn persist(mut self, file: File, target: &Path) -> io::Result<()> {
        file.sync_all()?;
        drop(file);
        // Past this point a signal must not remove the name: it may be the
        // target's by now.
        unpublish();
        std::fs::rename(&self.path, target)?;
        self.live = false;
        Ok(())
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        if self.live {
            unpublish();
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// An opened output file.
#[derive(Debug)]
pub struct OutFile {
    pub file: File,
    /// Written to a temporary file that goes to `.1` on success; `None`:
    /// written in place (a device or fifo).
    pub pending: Option<(TempFile, PathBuf)>,
}

impl OutFile {
    /// The request succeeded: put the file in place.
    pub fn commit(self) -> io::Result<()> {
        match self.pending {
            Some((temp, target)) => temp.persist(self.file, &target),
            None => Ok(()),
        }
    }
}

fn refuse(msg: String) -> io::Error {
    io::Error::new(io::ErrorKind::PermissionDenied, msg)
}

/// Open `path` for audio. A new or regular file is written to a temporary
/// file beside it (the old one's permission bits kept); a device or fifo is
/// opened for writing as it is. A symbolic link is followed to a regular
/// file the same way (the link stays), except a link that the kernel's
/// protected_symlinks rule would not follow either: one in a sticky,
/// world-writable directory (/tmp) owned by neither us nor the directory's
/// owner.
pub fn open(path: &Path) -> io::Result<OutFile> {
    match std::fs::symlink_metadata(path) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => replace(path, None),
        Err(e) => Err(e),
        Ok(m) if m.file_type().is_symlink() => {
            check_link(path, &m)?;
            match std::fs::metadata(path) {
                Ok(t) if t.is_file() => {
                    let real = std::fs::canonicalize(path)?;
                    replace(&real, Some(t.mode()))
                }
                Ok(t) if t.is_dir() => Err(io::Error::new(io::ErrorKind::IsADirectory, "a link to a directory")),
                Ok(_) => in_place(path),
                Err(e) if e.kind() == io::ErrorKind::NotFound => Err(io::Error::new(
                    io::ErrorKind::NotFound,
                    "a symbolic link to a file that does not exist (remove the link or point it at a file)",
                )),
                Err(e) => Err(e),
            }
        }
        Ok(m) if m.is_file() => replace(path, Some(m.mode())),
        Ok(m) if m.is_dir() => Err(io::Error::new(io::ErrorKind::IsADirectory, "it is a directory")),
        Ok(_) => in_place(path),
    }
}

/// protected_symlinks, as the kernel applies it to open(2): a link in a
/// sticky world-writable directory is followed only by its owner, or when
/// the directory's owner owns it too.
fn check_link(path: &Path, link: &std::fs::Metadata) -> io::Result<()> {
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let dir = std::fs::metadata(parent)?;
    let shared = dir.mode() & 0o1002 == 0o1002;
    let uid = nix::unistd::geteuid().as_raw();
    if shared && link.uid() != uid && link.uid() != dir.uid() {
        return Err(refuse(format!(
            "a symbolic link owned by uid {} in the shared directory {}; refusing to follow it",
            link.uid(),
            parent.display()
        )));
    }
    Ok(())
}

/// Write into a fresh temporary file beside `target`. An existing target
/// we may not write is refused, as a shell's `>` would be.
fn replace(target: &Path, old_mode: Option<u32>) -> io::Result<OutFile> {
    if old_mode.is_some() {
        nix::unistd::access(target, nix::unistd::AccessFlags::W_OK).map_err(io::Error::from)?;
    }
    let dir = match target.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let name = target.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let (file, temp) = TempFile::create(dir, &format!(".{name}."), 0o666).map_err(|e| {
        io::Error::new(
            e.kind(),
            format!(
                "cannot create a temporary file in {} ({e}); the audio goes there first and replaces {} only \
                 once complete",
                dir.display(),
                target.display()
            ),
        )
    })?;
    if let Some(mode) = old_mode {
        // Keep a private file private (our own new file: always allowed).
        file.set_permissions(std::fs::Permissions::from_mode(mode & 0o777))?;
    }
    Ok(OutFile { file, pending: Some((temp, target.to_path_buf())) })
}

/// A device, fifo or the like: opened for writing, never created or truncated.
fn in_place(path: &Path) -> io::Result<OutFile> {
    let file = OpenOptions::new().write(true).custom_flags(libc::O_NOCTTY).open(path)?;
    // Replaced by a regular file since the check: that one is not written
    // over in place.
    if file.metadata()?.is_file() {
        drop(file);
        return replace(path, None);
    }
    Ok(OutFile { file, pending: None })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::sync::Mutex;

    /// One temporary file at a time: [`CURRENT`] is process-wide.
    static SERIAL: Mutex<()> = Mutex::new(());

    fn serial() -> std::sync::MutexGuard<'static, ()> {
        SERIAL.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn names(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> =
            std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
        v.sort();
        v
    }

    #[test]
    fn a_file_is_replaced_only_on_commit() {
        let _s = serial();
        let t = tempfile::tempdir().unwrap();
        let p = t.path().join("keep.wav");
        std::fs::write(&p, b"important").unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
        let mut out = open(&p).unwrap();
        out.file.write_all(b"new audio").unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"important", "untouched while writing");
        drop(out);
        assert_eq!(std::fs::read(&p).unwrap(), b"important", "untouched on failure");
        assert_eq!(names(t.path()), ["keep.wav"], "the temporary file is gone");
        let mut out = open(&p).unwrap();
        out.file.write_all(b"new audio").unwrap();
        out.commit().unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"new audio");
        assert_eq!(std::fs::metadata(&p).unwrap().mode() & 0o777, 0o600, "the old mode is kept");
        assert_eq!(names(t.path()), ["keep.wav"]);
    }

    #[test]
    fn a_link_is_followed_and_kept() {
        let _s = serial();
        let t = tempfile::tempdir().unwrap();
        let target = t.path().join("target.wav");
        let link = t.path().join("link.wav");
        std::fs::write(&target, b"important").unwrap();
        std::os::unix::fs::symlink(&target, &link).unwrap();
        drop(open(&link).unwrap());
        assert_eq!(std::fs::read(&target).unwrap(), b"important");
        let mut out = open(&link).unwrap();
        out.file.write_all(b"new").unwrap();
        out.commit().unwrap();
        assert!(std::fs::symlink_metadata(&link).unwrap().file_type().is_symlink());
        assert_eq!(std::fs::read(&target).unwrap(), b"new");
        // A dangling link: refused, nothing created.
        let dangling = t.path().join("dangling.wav");
        std::os::unix::fs::symlink(t.path().join("missing"), &dangling).unwrap();
        assert!(open(&dangling).is_err());
        assert!(!t.path().join("missing").exists());
    }

    #[test]
    fn a_fifo_is_written_in_place_and_never_removed() {
        let _s = serial();
        let t = tempfile::tempdir().unwrap();
        let fifo = t.path().join("pipe");
        use std::os::unix::fs::FileTypeExt;
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
        let reader = {
            let fifo = fifo.clone();
            std::thread::spawn(move || std::fs::read(fifo).unwrap())
        };
        let mut out = open(&fifo).unwrap();
        assert!(out.pending.is_none());
        out.file.write_all(b"audio").unwrap();
        drop(out);
        assert_eq!(reader.join().unwrap(), b"audio");
        assert!(std::fs::symlink_metadata(&fifo).unwrap().file_type().is_fifo());
    }

    #[test]
    fn a_signal_removes_only_the_temporary_file() {
        let _s = serial();
        let t = tempfile::tempdir().unwrap();
        let p = t.path().join("keep.wav");
        std::fs::write(&p, b"important").unwrap();
        let out = open(&p).unwrap();
        let temp = out.pending.as_ref().unwrap().0.path().to_path_buf();
        assert!(temp.exists());
        remove_temp_on_signal();
        assert!(!temp.exists());
        assert_eq!(std::fs::read(&p).unwrap(), b"important");
        drop(out);
        assert_eq!(names(t.path()), ["keep.wav"]);
    }
}
