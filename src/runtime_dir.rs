//! The directory that holds ttsd's socket: where it is by default, and the
//! checks that make sure nobody else controls it. Used by the daemon before
//! it binds and by the clients before they trust the default path.
//!
//! Owns the default path and the ownership/mode checks. It never deletes,
//! renames or replaces anything: a directory that fails a check is reported
//! (naming the path and what is wrong), not repaired. The one change it makes
//! is to the mode and group of a directory ttsd itself manages and that has
//! passed as ours (`socket_group` opens it to the group: 0710).
//!
//! # Why a checked /tmp fallback
//!
//! The default socket is `$XDG_RUNTIME_DIR/ttsd.sock`, else
//! `/tmp/ttsd-$UID/ttsd.sock`. The alternatives were weighed:
//! - XDG_RUNTIME_DIR only: many real sessions lack it (sudo, cron, ssh
//!   without pam_systemd, containers), and ttsd would simply not start there.
//! - An abstract socket (Linux only): it has no file, so no permissions at
//!   all; any local user can squat the name before ttsd starts, and a client
//!   cannot tell who serves it without SO_PEERCRED alone.
//! - A /tmp directory is safe when it is made with a plain mkdir (never
//!   "already exists is fine"), then checked without following links: it must
//!   be a real directory, ours, with mode 0700 (0710 or 0750 with
//!   `socket_group`). /tmp is sticky, so once it passes nobody else can
//!   rename or replace it. Clients repeat the check, and also ask the server's
//!   uid with SO_PEERCRED. So the fallback stays, checked.
use nix::unistd::Gid;
use std::fs::Metadata;
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use thiserror::Error;

/// The socket's file name in the default directories.
pub const SOCKET_NAME: &str = "ttsd.sock";

/// Where the default socket lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DefaultDir {
    /// `$XDG_RUNTIME_DIR`: made by the login manager, the user's own. Taken
    /// as given (it may be a link); checked for owner and mode.
    Xdg(PathBuf),
    /// `/tmp/ttsd-$UID`: made and managed by ttsd, checked without
    /// following links.
    Fallback(PathBuf),
}

impl DefaultDir {
    pub fn path(&self) -> &Path {
        match self {
            DefaultDir::Xdg(p) | DefaultDir::Fallback(p) => p,
        }
    }

    pub fn socket(&self) -> PathBuf {
        self.path().join(SOCKET_NAME)
    }
}

/// `/tmp/ttsd-$UID`: the directory ttsd creates when XDG_RUNTIME_DIR is unset.
pub fn fallback_dir() -> PathBuf {
    PathBuf::from(format!("/tmp/ttsd-{}", nix::unistd::getuid().as_raw()))
}

/// `$XDG_RUNTIME_DIR` if set and not empty, else [`fallback_dir`].
pub fn default_dir() -> DefaultDir {
    match std::env::var_os("XDG_RUNTIME_DIR") {
        Some(d) if !d.is_empty() => DefaultDir::Xdg(PathBuf::from(d)),
        _ => DefaultDir::Fallback(fallback_dir()),
    }
}

/// `$XDG_RUNTIME_DIR/ttsd.sock`, else `/tmp/ttsd-$UID/ttsd.sock`.
pub fn default_socket_path() -> PathBuf {
    default_dir().socket()
}

/// Why a socket directory is not safe to use. Every variant names the path.
#[derive(Debug, Error)]
pub enum DirError {
    #[error(
        "{path} is a symbolic link, not a directory (another user may have planted it): remove it, \
         or name the socket with --socket"
    )]
    Symlink { path: PathBuf },
    #[error("{path} is not a directory")]
    NotADirectory { path: PathBuf },
    #[error(
        "{path} is owned by uid {owner}, not by uid {expected}{}: another user may control it \
         (remove it as root, or name the socket with --socket)", if *.or_root { " or root" } else { "" }
    )]
    Owner { path: PathBuf, owner: u32, expected: u32, or_root: bool },
    #[error("{path} has mode {mode:04o}, but {want}")]
    Mode { path: PathBuf, mode: u32, want: &'static str },
    #[error(
        "socket_group is set, but its members cannot enter {path} (mode {mode:04o}), so they could not \
         reach the socket; ttsd does not open up a directory it does not manage: put the socket in one it \
         does (such as socket = \"{}\", or a new directory), or give the group search permission on {path}",
        fallback_dir().join(SOCKET_NAME).display()
    )]
    GroupCannotEnter { path: PathBuf, mode: u32 },
    #[error("cannot {what} {path}: {source}")]
    Io { what: &'static str, path: PathBuf, source: io::Error },
}

fn io_err<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> DirError + 'a {
    move |source| DirError::Io { what, path: path.to_path_buf(), source }
}

/// The modes a directory ttsd manages may have: owner only, or owner plus
/// search (and list) for `socket_group`. Nothing for others, no write for
/// the group, no special bits.
const MANAGED_MODES: [u32; 3] = [0o700, 0o710, 0o750];

/// A real directory (not a link) owned by `uid`, from `lstat`'s answer.
fn check_owned(path: &Path, meta: &Metadata, uid: u32) -> Result<(), DirError> {
    if meta.file_type().is_symlink() {
        return Err(DirError::Symlink { path: path.into() });
    }
    if !meta.is_dir() {
        return Err(DirError::NotADirectory { path: path.into() });
    }
    if meta.uid() != uid {
        return Err(DirError::Owner { path: path.into(), owner: meta.uid(), expected: uid, or_root: false });
    }
    Ok(())
}

/// Create (plain mkdir, mode 0700) or check the directory ttsd manages:
/// `/tmp/ttsd-$UID`, or a socket directory that did not exist. It must be a
/// real directory, ours, with one of the modes 0700, 0710, 0750; then its
/// mode and group are set for `group` (0710 and that group, else 0700)
/// through a descriptor opened without following links.
pub fn prepare_managed(dir: &Path, group: Option<Gid>) -> Result<(), DirError> {
    let uid = nix::unistd::geteuid().as_raw();
    // Not recursive: "already exists" must be checked, never taken as success.
    let created = match std::fs::DirBuilder::new().mode(0o700).create(dir) {
        Ok(()) => true,
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => false,
        Err(e) => return Err(DirError::Io { what: "create socket directory", path: dir.into(), source: e }),
    };
    let meta = std::fs::symlink_metadata(dir).map_err(io_err("inspect", dir))?;
    check_owned(dir, &meta, uid)?;
    let mode = meta.mode() & 0o7777;
    // A directory we just made has whatever the umask left; one we find must
    // already be private, or someone (or something) has opened it up.
    if !created && !MANAGED_MODES.contains(&mode) {
        return Err(DirError::Mode {
            path: dir.into(),
            mode,
            want: "ttsd's socket directory must be 0700 (0710 or 0750 with socket_group): \
                   check who changed it, then chmod 700 it",
        });
    }
    let want_mode = if group.is_some() { 0o710 } else { 0o700 };
    let mode_ok = mode == want_mode || (group.is_some() && mode == 0o750);
    let group_ok = group.is_none_or(|g| meta.gid() == g.as_raw());
    if created || !mode_ok || !group_ok {
        // Through a descriptor that cannot be a link, checked to be the very
        // directory that passed above.
        let fd = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_DIRECTORY | libc::O_NOFOLLOW)
            .open(dir)
            .map_err(io_err("open", dir))?;
        let now = fd.metadata().map_err(io_err("inspect", dir))?;
        if (now.dev(), now.ino()) != (meta.dev(), meta.ino()) {
            return Err(DirError::Io {
                what: "check",
                path: dir.into(),
                source: io::Error::other("it was replaced while being checked"),
            });
        }
        if let Some(g) = group {
            nix::unistd::fchown(fd.as_raw_fd(), None, Some(g))
                .map_err(|e| DirError::Io { what: "give socket_group to", path: dir.into(), source: e.into() })?;
        }
        let mode = if mode_ok && !created { mode } else { want_mode };
        fd.set_permissions(std::fs::Permissions::from_mode(mode)).map_err(io_err("set the mode of", dir))?;
    }
    Ok(())
}

/// Check a socket directory ttsd does not manage (`$XDG_RUNTIME_DIR`, or
/// one named in `socket`): it is taken as given (a link is followed: the
/// person who named it chose it), but must be owned by us or root, and not
/// writable by others unless sticky (like /tmp, where nobody can remove or
/// rename our socket). With `group`, its members must be able to enter it.
pub fn check_given(dir: &Path, group: Option<Gid>) -> Result<(), DirError> {
    let uid = nix::unistd::geteuid().as_raw();
    let meta = std::fs::metadata(dir).map_err(io_err("inspect", dir))?;
    if !meta.is_dir() {
        return Err(DirError::NotADirectory { path: dir.into() });
    }
    if meta.uid() != uid && meta.uid() != 0 {
        return Err(DirError::Owner { path: dir.into(), owner: meta.uid(), expected: uid, or_root: true });
    }
    let mode = meta.mode() & 0o7777;
    if mode & 0o022 != 0 && mode & 0o1000 == 0 {
        return Err(DirError::Mode {
            path: dir.into(),
            mode,
            want: "others may write to it without the sticky bit, so they could replace the socket",
        });
    }
    if group.is_some() && mode & 0o011 == 0 {
        return Err(DirError::GroupCannotEnter { path: dir.into(), mode });
    }
    Ok(())
}

/// A client's check of the default directory before it connects: the same
/// rules as the daemon's, for the current user. A missing directory passes
/// (connecting then fails with "not running", which is the truth).
pub fn check_for_client(dir: &DefaultDir) -> Result<(), DirError> {
    let uid = nix::unistd::geteuid().as_raw();
    let path = dir.path();
    let meta = match dir {
        DefaultDir::Xdg(p) => std::fs::metadata(p),
        DefaultDir::Fallback(p) => std::fs::symlink_metadata(p),
    };
    let meta = match meta {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(DirError::Io { what: "inspect", path: path.into(), source: e }),
    };
    check_owned(path, &meta, uid)?;
    let mode = meta.mode() & 0o7777;
    if mode & 0o022 != 0 {
        return Err(DirError::Mode {
            path: path.into(),
            mode,
            want: "the default socket's directory must not be writable by anyone else",
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use nix::unistd::Uid;
    use std::os::unix::fs::symlink;

    fn mode(p: &Path) -> u32 {
        std::fs::symlink_metadata(p).unwrap().mode() & 0o7777
    }

    #[test]
    fn managed_dir_is_created_0700_and_kept_so() {
        let t = tempfile::tempdir().unwrap();
        let d = t.path().join("ttsd-x");
        prepare_managed(&d, None).unwrap();
        assert_eq!(mode(&d), 0o700);
        prepare_managed(&d, None).unwrap();
        // Not recursive: a missing parent is an error, not created.
        assert!(matches!(prepare_managed(&t.path().join("a/b"), None), Err(DirError::Io { .. })));
    }

    #[test]
    fn runtime_dir_symlink_is_refused() {
        let t = tempfile::tempdir().unwrap();
        let real = t.path().join("real");
        std::fs::create_dir(&real).unwrap();
        std::fs::set_permissions(&real, std::fs::Permissions::from_mode(0o700)).unwrap();
        let link = t.path().join("ttsd-link");
        symlink(&real, &link).unwrap();
        let e = prepare_managed(&link, None).unwrap_err();
        assert!(matches!(e, DirError::Symlink { .. }), "{e}");
        assert!(e.to_string().contains(&link.display().to_string()), "{e}");
        assert!(std::fs::symlink_metadata(&link).unwrap().file_type().is_symlink(), "left as it was");
        let e = check_for_client(&DefaultDir::Fallback(link.clone())).unwrap_err();
        assert!(matches!(e, DirError::Symlink { .. }), "{e}");
        // XDG_RUNTIME_DIR is the user's own setting: a link there is followed.
        check_for_client(&DefaultDir::Xdg(link)).unwrap();
    }

    #[test]
    fn runtime_dir_with_a_loose_mode_is_refused_not_repaired() {
        let t = tempfile::tempdir().unwrap();
        let d = t.path().join("ttsd-m");
        std::fs::create_dir(&d).unwrap();
        for m in [0o755, 0o770, 0o1777, 0o711] {
            std::fs::set_permissions(&d, std::fs::Permissions::from_mode(m)).unwrap();
            let e = prepare_managed(&d, None).unwrap_err();
            assert!(matches!(e, DirError::Mode { mode, .. } if mode == m), "{m:o}: {e}");
            assert_eq!(mode(&d), m, "a refused directory is left alone");
        }
        std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o777)).unwrap();
        assert!(matches!(check_for_client(&DefaultDir::Fallback(d.clone())), Err(DirError::Mode { .. })));
        let f = t.path().join("file");
        std::fs::write(&f, b"x").unwrap();
        assert!(matches!(prepare_managed(&f, None), Err(DirError::NotADirectory { .. })));
    }

    #[test]
    fn socket_group_opens_the_managed_dir_to_the_group_and_back() {
        let t = tempfile::tempdir().unwrap();
        let d = t.path().join("ttsd-g");
        // Our own primary group: chgrp to it works without root.
        let gid = nix::unistd::getegid();
        prepare_managed(&d, Some(gid)).unwrap();
        assert_eq!(mode(&d), 0o710);
        assert_eq!(std::fs::metadata(&d).unwrap().gid(), gid.as_raw());
        check_for_client(&DefaultDir::Fallback(d.clone())).unwrap();
        prepare_managed(&d, None).unwrap();
        assert_eq!(mode(&d), 0o700, "without socket_group it is closed again");
    }

    #[test]
    fn a_given_dir_the_group_cannot_enter_is_refused_with_socket_group() {
        let t = tempfile::tempdir().unwrap();
        std::fs::set_permissions(t.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
        check_given(t.path(), None).unwrap();
        let e = check_given(t.path(), Some(nix::unistd::getegid())).unwrap_err();
        assert!(matches!(e, DirError::GroupCannotEnter { .. }), "{e}");
        std::fs::set_permissions(t.path(), std::fs::Permissions::from_mode(0o710)).unwrap();
        check_given(t.path(), Some(nix::unistd::getegid())).unwrap();
        std::fs::set_permissions(t.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
        assert!(matches!(check_given(t.path(), None), Err(DirError::Mode { .. })));
        // Sticky, like /tmp: nobody else can remove or rename our socket.
        std::fs::set_permissions(t.path(), std::fs::Permissions::from_mode(0o1777)).unwrap();
        check_given(t.path(), None).unwrap();
    }

    #[test]
    fn a_missing_default_dir_passes_the_client_check() {
        let t = tempfile::tempdir().unwrap();
        check_for_client(&DefaultDir::Fallback(t.path().join("none"))).unwrap();
    }

    /// Tests named `needs_root_*` run only as root (./scripts/test runs them
    /// with `--ignored` when it is root).
    #[test]
    #[ignore = "needs root (chowns a directory to another uid); ./scripts/test runs it as root"]
    fn needs_root_runtime_dir_owned_by_other_is_refused() {
        assert!(nix::unistd::geteuid().is_root(), "run as root");
        let t = tempfile::tempdir().unwrap();
        let d = t.path().join("ttsd-o");
        std::fs::create_dir(&d).unwrap();
        std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o700)).unwrap();
        nix::unistd::chown(&d, Some(Uid::from_raw(54_321)), None).unwrap();
        let e = prepare_managed(&d, None).unwrap_err();
        assert!(matches!(e, DirError::Owner { owner: 54_321, expected: 0, .. }), "{e}");
        assert!(e.to_string().contains("owned by uid 54321"), "{e}");
        assert!(matches!(check_for_client(&DefaultDir::Fallback(d.clone())), Err(DirError::Owner { .. })));
        assert!(matches!(check_given(&d, None), Err(DirError::Owner { .. })));
    }
}
