//! The listening socket: where it lives, who may connect, one daemon per path.
//!
//! Owns the socket file (creation with the right mode and group, stale-file
//! replacement, removal at exit) and the SO_PEERCRED policy. It never reads
//! or writes frames.
use std::io;
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, MetadataExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use thiserror::Error;

#[derive(Debug, Error)]
pub enum SocketError {
    #[error("another ttsd is already listening on {0} (stop it first, or use --socket)")]
    AlreadyRunning(PathBuf),
    #[error("{0} exists and is not a socket; refusing to replace it")]
    NotASocket(PathBuf),
    #[error("socket directory {path} is unsafe: {reason}")]
    UnsafeDir { path: PathBuf, reason: String },
    #[error("unknown socket_group '{0}'")]
    UnknownGroup(String),
    #[error("{what} {path}: {source}")]
    Io { what: &'static str, path: PathBuf, source: io::Error },
}

fn io_err<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> SocketError + 'a {
    move |source| SocketError::Io { what, path: path.to_path_buf(), source }
}

/// Bind `path`: create its directory (0700) if missing, replace a stale
/// socket file, refuse if a live daemon answers there, then set the mode
/// (0600, or 0660 with `group`).
pub fn bind(path: &Path, group: &str) -> Result<UnixListener, SocketError> {
    let gid = if group.is_empty() {
        None
    } else {
        let g = nix::unistd::Group::from_name(group)
            .ok()
            .flatten()
            .ok_or_else(|| SocketError::UnknownGroup(group.to_string()))?;
        Some(g.gid)
    };
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        prepare_dir(dir)?;
    }
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_socket() => match UnixStream::connect(path) {
            Ok(_) => return Err(SocketError::AlreadyRunning(path.to_path_buf())),
            Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {
                crate::logln!("ttsd: removing stale socket {}", path.display());
                std::fs::remove_file(path).map_err(io_err("cannot remove stale socket", path))?;
            }
            Err(e) => return Err(SocketError::Io { what: "cannot probe existing socket", path: path.into(), source: e }),
        },
        Ok(_) => return Err(SocketError::NotASocket(path.to_path_buf())),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(SocketError::Io { what: "cannot inspect", path: path.into(), source: e }),
    }
    // Bind and listen under a temporary name, then rename into place: a
    // client (or a second daemon probing for a live one) never finds the path
    // bound but not yet listening, which would look like a stale socket.
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let tmp = path.with_file_name(format!(".{name}.{}", std::process::id()));
    let _ = std::fs::remove_file(&tmp);
    let (listener, bound_at) = match bind_private(&tmp) {
        Ok(l) => (l, tmp.as_path()),
        // The temporary name may be too long for sun_path: bind in place.
        Err(_) => (bind_private(path).map_err(io_err("cannot bind", path))?, path),
    };
    let mode = if gid.is_some() { 0o660 } else { 0o600 };
    let finish = || -> io::Result<()> {
        if let Some(gid) = gid {
            nix::unistd::chown(bound_at, None, Some(gid))?;
        }
        std::fs::set_permissions(bound_at, std::fs::Permissions::from_mode(mode))?;
        if bound_at != path {
            std::fs::rename(bound_at, path)?;
        }
        Ok(())
    };
    if let Err(e) = finish() {
        let _ = std::fs::remove_file(bound_at);
        return Err(SocketError::Io { what: "cannot set up socket", path: path.into(), source: e });
    }
    Ok(listener)
}

/// A missing directory is created with mode 0700. An existing one under
/// /tmp must be ours and closed to others (anyone can create dirs there).
fn prepare_dir(dir: &Path) -> Result<(), SocketError> {
    match std::fs::metadata(dir) {
        Ok(meta) => {
            if dir.starts_with("/tmp") && dir != Path::new("/tmp") {
                let uid = nix::unistd::getuid().as_raw();
                if meta.uid() != uid {
                    return Err(SocketError::UnsafeDir { path: dir.into(), reason: format!("owned by uid {}", meta.uid()) });
                }
                if meta.mode() & 0o022 != 0 {
                    return Err(SocketError::UnsafeDir { path: dir.into(), reason: "writable by others".into() });
                }
            }
            Ok(())
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(io_err("cannot create socket directory", dir)),
        Err(e) => Err(SocketError::Io { what: "cannot inspect", path: dir.into(), source: e }),
    }
}

/// Bind with mode 0600 from the start (umask), so nobody else can connect
/// before the permissions are set.
fn bind_private(path: &Path) -> io::Result<UnixListener> {
    let old = nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o177));
    let bound = UnixListener::bind(path);
    nix::sys::stat::umask(old);
    bound
}

/// Who may talk to the daemon: its own uid, root, and the configured extras.
#[derive(Debug, Clone)]
pub struct PeerPolicy {
    pub own_uid: u32,
    pub uids: Vec<u32>,
    pub gids: Vec<u32>,
}

impl PeerPolicy {
    pub fn allows(&self, uid: u32, gid: u32) -> bool {
        uid == self.own_uid || uid == 0 || self.uids.contains(&uid) || self.gids.contains(&gid)
    }
}

/// Removes the socket file when dropped (only if it is still ours).
pub struct SocketFile {
    path: PathBuf,
    /// (inode, ctime s, ctime ns): inode numbers alone get reused.
    id: Option<(u64, i64, i64)>,
}

fn file_id(path: &Path) -> Option<(u64, i64, i64)> {
    std::fs::symlink_metadata(path).ok().map(|m| (m.ino(), m.ctime(), m.ctime_nsec()))
}

impl SocketFile {
    pub fn new(path: &Path) -> Self {
        Self { path: path.to_path_buf(), id: file_id(path) }
    }

    pub fn remove(&mut self) {
        if self.id.is_some() && file_id(&self.path) == self.id {
            let _ = std::fs::remove_file(&self.path);
        }
        self.id = None;
    }
}

impl Drop for SocketFile {
    fn drop(&mut self) {
        self.remove();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn binds_with_mode_0600_and_replaces_only_stale_sockets() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/ttsd.sock");
        let l = bind(&path, "").unwrap();
        let mode = std::fs::metadata(&path).unwrap().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert_eq!(std::fs::metadata(path.parent().unwrap()).unwrap().mode() & 0o777, 0o700);
        // A live listener: refused.
        assert!(matches!(bind(&path, ""), Err(SocketError::AlreadyRunning(_))));
        // The listener is gone but the file stayed: stale, replaced.
        drop(l);
        assert!(path.exists());
        let _l2 = bind(&path, "").unwrap();
        // Not a socket: never removed.
        let file = dir.path().join("plain");
        std::fs::write(&file, b"x").unwrap();
        assert!(matches!(bind(&file, ""), Err(SocketError::NotASocket(_))));
        assert!(matches!(bind(&dir.path().join("s2"), "no-such-group-xyz"), Err(SocketError::UnknownGroup(_))));
    }

    #[test]
    fn socket_file_is_removed_only_if_still_ours() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.sock");
        let l = bind(&path, "").unwrap();
        let mut f = SocketFile::new(&path);
        drop(l);
        std::fs::remove_file(&path).unwrap();
        std::thread::sleep(std::time::Duration::from_millis(20));
        let _other = bind(&path, "").unwrap();
        f.remove();
        assert!(path.exists(), "another daemon's socket must survive");
    }

    #[test]
    fn peer_policy() {
        let p = PeerPolicy { own_uid: 1000, uids: vec![1001], gids: vec![50] };
        assert!(p.allows(1000, 1000));
        assert!(p.allows(0, 0));
        assert!(p.allows(1001, 7));
        assert!(p.allows(2000, 50));
        assert!(!p.allows(2000, 2000));
    }
}
