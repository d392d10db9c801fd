//! The listening socket: where it lives, who may connect, one daemon per path.
//!
//! Owns the socket file (its directory's checks, binding under a fresh name
//! with the right mode and group, moving it into place, removal at exit),
//! the lock file that keeps a second daemon off the same path, and the
//! SO_PEERCRED policy. It never reads or writes frames. It never deletes
//! anything that is not a socket, never replaces a live socket, never
//! removes a temporary name it did not bind itself, and never deletes or
//! truncates the lock file.
use crate::config::ListenConfig;
use crate::runtime_dir::{self, DirError};
use nix::unistd::Gid;
use std::fs::File;
use std::hash::{BuildHasher, Hasher};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use thiserror::Error;

#[derive(Debug, Error)]
pub enum SocketError {
    #[error("another ttsd is already listening on {0} (stop it first, or use --socket)")]
    AlreadyRunning(PathBuf),
    #[error("{0} exists and is not a socket; refusing to replace it")]
    NotASocket(PathBuf),
    #[error("socket directory is unsafe: {0}")]
    UnsafeDir(#[from] DirError),
    #[error("lock file {path}: {reason}; refusing to use it")]
    BadLock { path: PathBuf, reason: String },
    #[error("unknown socket_group '{0}'")]
    UnknownGroup(String),
    #[error("{what} {path}: {source}")]
    Io { what: &'static str, path: PathBuf, source: io::Error },
}

fn io_err<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> SocketError + 'a {
    move |source| SocketError::Io { what, path: path.to_path_buf(), source }
}

/// `socket_group`'s gid; `None` when it is empty.
pub fn group_id(group: &str) -> Result<Option<Gid>, SocketError> {
    if group.is_empty() {
        return Ok(None);
    }
    let g = nix::unistd::Group::from_name(group)
        .ok()
        .flatten()
        .ok_or_else(|| SocketError::UnknownGroup(group.to_string()))?;
    Ok(Some(g.gid))
}

/// A socket bound and listening at its path, and the file's guard (which
/// holds the lock for as long as it lives).
pub struct Bound {
    pub listener: UnixListener,
    pub file: SocketFile,
}

/// Bind `path`: check (or create) its directory, take the lock beside it,
/// remove a stale socket (never a live one, never anything else), bind and
/// listen under a fresh name with mode 0600 (0660 and `group`), then link
/// it into place without replacing whatever may have appeared there.
pub fn bind(path: &Path, group: &str) -> Result<Bound, SocketError> {
    let gid = group_id(group)?;
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    prepare_dir(&dir, gid)?;
    // With the lock held no other ttsd is binding here, so a socket that
    // refuses connections is stale and may go.
    let lock = take_lock(path)?;
    clear_stale(path)?;
    let (listener, bound_at) = bind_fresh(path)?;
    let mode = if gid.is_some() { 0o660 } else { 0o600 };
    let access = || -> io::Result<()> {
        if let Some(gid) = gid {
            nix::unistd::chown(&bound_at, None, Some(gid))?;
        }
        std::fs::set_permissions(&bound_at, std::fs::Permissions::from_mode(mode))
    };
    if let Err(e) = access() {
        // Bound by us a moment ago: ours to remove.
        let _ = std::fs::remove_file(&bound_at);
        return Err(SocketError::Io { what: "cannot set up socket", path: bound_at, source: e });
    }
    if bound_at != path {
        move_into_place(&bound_at, path)?;
    }
    let file = SocketFile { path: path.to_path_buf(), id: file_id(path), _lock: Some(lock) };
    Ok(Bound { listener, file })
}

/// The default `/tmp/ttsd-$UID`, or a directory that does not exist yet, is
/// ttsd's to create and keep private; any other is checked as given.
fn prepare_dir(dir: &Path, gid: Option<Gid>) -> Result<(), SocketError> {
    if dir == runtime_dir::fallback_dir() {
        return Ok(runtime_dir::prepare_managed(dir, gid)?);
    }
    match std::fs::symlink_metadata(dir) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(runtime_dir::prepare_managed(dir, gid)?),
        Ok(_) => Ok(runtime_dir::check_given(dir, gid)?),
        Err(e) => Err(SocketError::Io { what: "cannot inspect", path: dir.into(), source: e }),
    }
}

/// `PATH.lock` beside the socket.
pub fn lock_path(path: &Path) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(".lock");
    PathBuf::from(s)
}

/// Open (creating, never truncating) and flock `PATH.lock` for the daemon's
/// life. It stays when ttsd exits: deleting a lock file races with the next
/// daemon opening it. Held already: [`SocketError::AlreadyRunning`].
fn take_lock(path: &Path) -> Result<File, SocketError> {
    let lock = lock_path(path);
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .mode(0o600)
        // A link or a fifo planted under the name is refused, not followed
        // or waited on.
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(&lock)
        .map_err(io_err("cannot open lock file", &lock))?;
    let meta = f.metadata().map_err(io_err("cannot inspect lock file", &lock))?;
    let uid = nix::unistd::geteuid().as_raw();
    if !meta.is_file() {
        return Err(SocketError::BadLock { path: lock, reason: "not a regular file".into() });
    }
    if meta.uid() != uid {
        return Err(SocketError::BadLock { path: lock, reason: format!("owned by uid {}, not {uid}", meta.uid()) });
    }
    // SAFETY: flock on a descriptor we own.
    if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        let e = io::Error::last_os_error();
        return Err(if e.kind() == io::ErrorKind::WouldBlock {
            SocketError::AlreadyRunning(path.to_path_buf())
        } else {
            SocketError::Io { what: "cannot lock", path: lock, source: e }
        });
    }
    Ok(f)
}

/// Nothing at `path`, or a socket nobody answers on (removed). A live socket
/// (a ttsd that predates the lock, or another server) or anything that is not
/// a socket is left alone and refused.
fn clear_stale(path: &Path) -> Result<(), SocketError> {
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_socket() => match UnixStream::connect(path) {
            Ok(_) => Err(SocketError::AlreadyRunning(path.to_path_buf())),
            Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {
                crate::logln!("ttsd: removing stale socket {}", path.display());
                std::fs::remove_file(path).map_err(io_err("cannot remove stale socket", path))
            }
            Err(e) => Err(SocketError::Io { what: "cannot probe existing socket", path: path.into(), source: e }),
        },
        Ok(_) => Err(SocketError::NotASocket(path.to_path_buf())),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(SocketError::Io { what: "cannot inspect", path: path.into(), source: e }),
    }
}

/// A name nobody can guess: the pid and a per-call random number.
fn fresh_name(path: &Path, attempt: u32) -> PathBuf {
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u32(attempt);
    h.write_u128(std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos()));
    path.with_file_name(format!(".{name}.{}.{:016x}", std::process::id(), h.finish()))
}

/// Bind and listen under a fresh name beside `path`, so that a client (or a
/// daemon probing for a live one) never finds the path bound but not yet
/// listening. A name that exists (bind: "address in use") belongs to someone
/// else and is never removed: another name is tried. A path too long for a
/// socket address with the extra characters is bound in place.
fn bind_fresh(path: &Path) -> Result<(UnixListener, PathBuf), SocketError> {
    for attempt in 0..64 {
        let tmp = fresh_name(path, attempt);
        match bind_private(&tmp) {
            Ok(l) => return Ok((l, tmp)),
            Err(e) if e.kind() == io::ErrorKind::AddrInUse => continue,
            Err(e) if e.kind() == io::ErrorKind::InvalidInput => break,
            Err(e) => return Err(SocketError::Io { what: "cannot bind", path: tmp, source: e }),
        }
    }
    match bind_private(path) {
        Ok(l) => Ok((l, path.to_path_buf())),
        // Something appeared since the check: never replaced.
        Err(e) if e.kind() == io::ErrorKind::AddrInUse => Err(SocketError::AlreadyRunning(path.to_path_buf())),
        Err(e) => Err(SocketError::Io { what: "cannot bind", path: path.into(), source: e }),
    }
}

/// Give the bound socket at `tmp` the name `path` unless something is there
/// by now: link(2) fails rather than replace (rename(2) would replace).
fn move_into_place(tmp: &Path, path: &Path) -> Result<(), SocketError> {
    let linked = std::fs::hard_link(tmp, path);
    // Either way the temporary name is ours (we bound it) and goes.
    let _ = std::fs::remove_file(tmp);
    match linked {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Err(SocketError::AlreadyRunning(path.to_path_buf())),
        Err(e) => Err(SocketError::Io { what: "cannot move the socket into place at", path: path.into(), source: e }),
    }
}

/// The umask is process-wide: binds in one process (tests, concurrent
/// starts) take turns so none restores another's value.
static UMASK: Mutex<()> = Mutex::new(());

/// Bind with mode 0600 from the start (umask), so nobody else can connect
/// before the permissions are set.
fn bind_private(path: &Path) -> io::Result<UnixListener> {
    let _turn = UMASK.lock().unwrap_or_else(|e| e.into_inner());
    let old = nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o177));
    let bound = UnixListener::bind(path);
    nix::sys::stat::umask(old);
    bound
}

/// Who may talk to the daemon: its own uid, root, `allowed_uids`, and members
/// of `allowed_gids` and `socket_group`, by primary or supplementary group.
#[derive(Debug, Clone)]
pub struct PeerPolicy {
    pub own_uid: u32,
    pub uids: Vec<u32>,
    pub gids: Vec<u32>,
}

impl PeerPolicy {
    /// The policy of `cfg`: a group given the socket file may use it too.
    pub fn from_config(cfg: &ListenConfig) -> Result<Self, SocketError> {
        let mut gids = cfg.allowed_gids.clone();
        if let Some(g) = group_id(&cfg.socket_group)? {
            gids.push(g.as_raw());
        }
        Ok(Self { own_uid: nix::unistd::getuid().as_raw(), uids: cfg.allowed_uids.clone(), gids })
    }

    /// The whole check with the group lookup given (the native front-end
    /// runs [`PeerPolicy::decide`] and the lookup separately, off its loop).
    #[cfg(test)]
    pub fn allows_with(&self, uid: u32, gid: u32, groups: impl FnOnce(u32) -> Vec<u32>) -> bool {
        match self.decide(uid, gid) {
            Some(verdict) => verdict,
            None => self.allows_groups(&groups(uid)),
        }
    }

    /// The verdict when SO_PEERCRED's uid and primary gid decide it; `None`
    /// when only the peer's supplementary groups can ([`groups_of`], a
    /// lookup in the user and group databases, possibly a network service,
    /// so a caller on an event loop runs it off the loop).
    pub fn decide(&self, uid: u32, gid: u32) -> Option<bool> {
        if uid == self.own_uid || uid == 0 || self.uids.contains(&uid) || self.gids.contains(&gid) {
            return Some(true);
        }
        if self.gids.is_empty() {
            return Some(false);
        }
        None
    }

    /// Whether one of the peer's `groups` is let in.
    pub fn allows_groups(&self, groups: &[u32]) -> bool {
        groups.iter().any(|g| self.gids.contains(g))
    }
}

/// The groups of `uid` in the user and group databases: its primary group
/// and its supplementary ones (getpwuid + getgrouplist). Empty when the uid
/// has no entry.
pub fn groups_of(uid: u32) -> Vec<u32> {
    let Ok(Some(user)) = nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid)) else {
        return Vec::new();
    };
    let Ok(name) = std::ffi::CString::new(user.name) else {
        return vec![user.gid.as_raw()];
    };
    grouplist(&name, user.gid).unwrap_or_else(|| vec![user.gid.as_raw()])
}

#[cfg(not(target_vendor = "apple"))]
fn grouplist(name: &std::ffi::CStr, gid: Gid) -> Option<Vec<u32>> {
    nix::unistd::getgrouplist(name, gid).ok().map(|v| v.into_iter().map(Gid::as_raw).collect())
}

/// macOS declares getgrouplist with `int` groups, and nix leaves it out.
#[cfg(target_vendor = "apple")]
fn grouplist(name: &std::ffi::CStr, gid: Gid) -> Option<Vec<u32>> {
    let mut n: libc::c_int = 64;
    for _ in 0..8 {
        let mut groups = vec![0 as libc::c_int; n as usize];
        let mut count = n;
        // SAFETY: `groups` has room for `count` entries.
        let base = gid.as_raw() as libc::c_int;
        let r = unsafe { libc::getgrouplist(name.as_ptr(), base, groups.as_mut_ptr(), &mut count) };
        if r >= 0 {
            groups.truncate(count.max(0) as usize);
            return Some(groups.into_iter().map(|g| g as u32).collect());
        }
        n *= 4;
    }
    None
}

/// Removes the socket file when asked or dropped (only if it is still ours),
/// and holds the lock until dropped.
#[derive(Debug)]
pub struct SocketFile {
    path: PathBuf,
    /// (inode, ctime s, ctime ns): inode numbers alone get reused.
    id: Option<(u64, i64, i64)>,
    /// Held, not read: the flock lasts as long as the descriptor.
    _lock: Option<File>,
}

fn file_id(path: &Path) -> Option<(u64, i64, i64)> {
    std::fs::symlink_metadata(path).ok().map(|m| (m.ino(), m.ctime(), m.ctime_nsec()))
}

impl SocketFile {
    /// A guard for a socket file bound some other way (no lock).
    pub fn new(path: &Path) -> Self {
        Self { path: path.to_path_buf(), id: file_id(path), _lock: None }
    }

    pub fn path(&self) -> &Path {
        &self.path
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
        // The lock goes with `self._lock`, after the file.
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Barrier};

    fn entries(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> =
            std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
        v.sort();
        v
    }

    #[test]
    fn binds_with_mode_0600_and_replaces_only_stale_sockets() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/ttsd.sock");
        let b = bind(&path, "").unwrap();
        let mode = std::fs::metadata(&path).unwrap().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert_eq!(std::fs::metadata(path.parent().unwrap()).unwrap().mode() & 0o777, 0o700);
        // A live daemon: refused.
        assert!(matches!(bind(&path, ""), Err(SocketError::AlreadyRunning(_))));
        // The daemon is gone but the file stayed (a crash): stale, replaced.
        let Bound { listener, mut file } = b;
        file.id = None;
        drop(file);
        drop(listener);
        assert!(path.exists());
        let _b2 = bind(&path, "").unwrap();
        assert_eq!(entries(path.parent().unwrap()), ["ttsd.sock", "ttsd.sock.lock"], "no temporary names left");
        // Not a socket: never removed.
        let file = dir.path().join("plain");
        std::fs::write(&file, b"x").unwrap();
        assert!(matches!(bind(&file, ""), Err(SocketError::NotASocket(_))));
        assert_eq!(std::fs::read(&file).unwrap(), b"x");
        assert!(matches!(bind(&dir.path().join("s2"), "no-such-group-xyz"), Err(SocketError::UnknownGroup(_))));
    }

    #[test]
    fn bind_never_removes_regular_file_at_temp_name() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ttsd.sock");
        // The name the daemon used to bind under, taken by someone's file.
        let old_tmp = dir.path().join(format!(".ttsd.sock.{}", std::process::id()));
        std::fs::write(&old_tmp, b"precious").unwrap();
        let _b = bind(&path, "").unwrap();
        assert_eq!(std::fs::read(&old_tmp).unwrap(), b"precious");
        assert!(std::fs::symlink_metadata(&path).unwrap().file_type().is_socket());
    }

    #[test]
    fn second_daemon_never_replaces_live_socket() {
        let dir = tempfile::tempdir().unwrap();
        // Before the lock, both won in about 1.5% of the rounds.
        for round in 0..300 {
            let path = dir.path().join(format!("r{round}.sock"));
            let start = Arc::new(Barrier::new(2));
            let racers: Vec<_> = (0..2)
                .map(|_| {
                    let (path, start) = (path.clone(), start.clone());
                    std::thread::spawn(move || {
                        start.wait();
                        bind(&path, "")
                    })
                })
                .collect();
            let results: Vec<_> = racers.into_iter().map(|t| t.join().unwrap()).collect();
            let won: Vec<&Bound> = results.iter().filter_map(|r| r.as_ref().ok()).collect();
            assert_eq!(won.len(), 1, "round {round}: exactly one daemon may own {}", path.display());
            for r in &results {
                if let Err(e) = r {
                    assert!(matches!(e, SocketError::AlreadyRunning(_)), "round {round}: {e}");
                }
            }
            // And the one that won is the one the path reaches.
            let _c = UnixStream::connect(&path).unwrap();
            won[0].listener.set_nonblocking(true).unwrap();
            won[0].listener.accept().unwrap_or_else(|e| panic!("round {round}: the winner is unreachable: {e}"));
        }
    }

    #[test]
    fn the_lock_file_is_kept_and_never_truncated() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ttsd.sock");
        std::fs::write(lock_path(&path), b"left by someone").unwrap();
        let b = bind(&path, "").unwrap();
        drop(b);
        assert!(!path.exists(), "our socket is removed at exit");
        assert_eq!(std::fs::read(lock_path(&path)).unwrap(), b"left by someone");
        // A link under the lock's name is not followed.
        let p2 = dir.path().join("t2.sock");
        std::os::unix::fs::symlink(dir.path().join("elsewhere"), lock_path(&p2)).unwrap();
        assert!(matches!(bind(&p2, ""), Err(SocketError::Io { .. })));
        assert!(!dir.path().join("elsewhere").exists());
    }

    #[test]
    fn socket_file_is_removed_only_if_still_ours() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.sock");
        let l = bind(&path, "").unwrap();
        let mut f = SocketFile::new(&path);
        drop(l.listener);
        std::fs::remove_file(&path).unwrap();
        std::thread::sleep(std::time::Duration::from_millis(20));
        let other = UnixListener::bind(&path).unwrap();
        f.remove();
        assert!(path.exists(), "another daemon's socket must survive");
        drop(other);
    }

    #[test]
    fn peer_policy() {
        let p = PeerPolicy { own_uid: 1000, uids: vec![1001], gids: vec![50] };
        let none = |_| Vec::new();
        assert!(p.allows_with(1000, 1000, none));
        assert!(p.allows_with(0, 0, none));
        assert!(p.allows_with(1001, 7, none));
        assert!(p.allows_with(2000, 50, none));
        assert!(!p.allows_with(2000, 2000, none));
    }

    #[test]
    fn supplementary_group_member_is_allowed() {
        let p = PeerPolicy { own_uid: 1000, uids: vec![], gids: vec![50] };
        // Primary gid 2000, member of 50 by /etc/group: allowed.
        assert!(p.allows_with(2000, 2000, |uid| if uid == 2000 { vec![2000, 50] } else { vec![] }));
        assert!(!p.allows_with(2000, 2000, |_| vec![2000, 60]));
        // No groups configured: no lookup at all.
        let closed = PeerPolicy { own_uid: 1000, uids: vec![], gids: vec![] };
        assert!(!closed.allows_with(2000, 2000, |_| panic!("looked up for nothing")));
        // The real lookup: uid 0 is in group 0, an unknown uid in none.
        assert!(groups_of(0).contains(&0), "{:?}", groups_of(0));
        assert!(groups_of(3_999_999_999).is_empty());
    }
}
