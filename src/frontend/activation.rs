//! Socket activation: the listening socket handed over by systemd (or any
//! launcher following sd_listen_fds(3)) through `LISTEN_PID` / `LISTEN_FDS`.
//!
//! Owns reading those variables, checking that fd 3 really is a listening
//! Unix stream socket, and taking it over (close-on-exec, so workers never
//! inherit it). The launcher owns the socket file: the daemon must not
//! create, chmod or remove it. Called once, before the runtime starts.
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixListener;
use std::path::PathBuf;
use thiserror::Error;

/// The first passed descriptor (SD_LISTEN_FDS_START).
pub const LISTEN_FDS_START: RawFd = 3;

#[derive(Debug, Error, PartialEq)]
pub enum ActivationError {
    #[error("{name}={value:?} is not a valid number (socket activation)")]
    BadVar { name: &'static str, value: String },
    #[error("{0} sockets were passed (LISTEN_FDS); ttsd listens on exactly one")]
    TooMany(usize),
    #[error("fd {LISTEN_FDS_START} passed by socket activation is not open: {0}")]
    NotOpen(String),
    #[error("fd {LISTEN_FDS_START} passed by socket activation is not a socket")]
    NotASocket,
    #[error("fd {LISTEN_FDS_START} passed by socket activation is not a Unix socket (use ListenStream=%t/ttsd.sock)")]
    NotUnix,
    #[error("fd {LISTEN_FDS_START} passed by socket activation is not a stream socket (use ListenStream=, not ListenDatagram=)")]
    NotStream,
    #[error("fd {LISTEN_FDS_START} passed by socket activation is not listening (Accept=no is required)")]
    NotListening,
    #[error("socket activation: {0}")]
    Io(String),
}

/// How many descriptors were passed to this process, per sd_listen_fds(3):
/// 0 when `LISTEN_PID` is unset or names another process (the variables
/// were inherited, not meant for us) or when `LISTEN_FDS` is unset.
pub fn parse(listen_pid: Option<&str>, listen_fds: Option<&str>, own_pid: u32) -> Result<usize, ActivationError> {
    let Some(pid) = listen_pid else { return Ok(0) };
    let pid: u32 = pid
        .trim()
        .parse()
        .map_err(|_| ActivationError::BadVar { name: "LISTEN_PID", value: pid.to_string() })?;
    if pid != own_pid {
        return Ok(0);
    }
    let Some(fds) = listen_fds else { return Ok(0) };
    fds.trim().parse().map_err(|_| ActivationError::BadVar { name: "LISTEN_FDS", value: fds.to_string() })
}

fn int_opt(fd: RawFd, level: libc::c_int, opt: libc::c_int) -> io::Result<libc::c_int> {
    let mut v: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: v and len are valid for the duration of the call.
    let r = unsafe { libc::getsockopt(fd, level, opt, &mut v as *mut _ as *mut libc::c_void, &mut len) };
    if r == 0 {
        Ok(v)
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Check that `fd` is a listening Unix stream socket.
pub fn check_listener(fd: BorrowedFd<'_>) -> Result<(), ActivationError> {
    let raw = fd.as_raw_fd();
    let st = nix::sys::stat::fstat(raw).map_err(|e| ActivationError::NotOpen(e.to_string()))?;
    if st.st_mode & libc::S_IFMT != libc::S_IFSOCK {
        return Err(ActivationError::NotASocket);
    }
    // SAFETY: a zeroed sockaddr_storage is valid; len matches its size.
    let family = unsafe {
        let mut addr: libc::sockaddr_storage = std::mem::zeroed();
        let mut len = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
        if libc::getsockname(raw, &mut addr as *mut _ as *mut libc::sockaddr, &mut len) != 0 {
            return Err(ActivationError::Io(io::Error::last_os_error().to_string()));
        }
        addr.ss_family as libc::c_int
    };
    if family != libc::AF_UNIX {
        return Err(ActivationError::NotUnix);
    }
    let kind = int_opt(raw, libc::SOL_SOCKET, libc::SO_TYPE).map_err(|e| ActivationError::Io(e.to_string()))?;
    if kind != libc::SOCK_STREAM {
        return Err(ActivationError::NotStream);
    }
    let listening =
        int_opt(raw, libc::SOL_SOCKET, libc::SO_ACCEPTCONN).map_err(|e| ActivationError::Io(e.to_string()))?;
    if listening == 0 {
        return Err(ActivationError::NotListening);
    }
    Ok(())
}

/// A socket passed by the launcher.
#[derive(Debug)]
pub struct Activated {
    pub listener: UnixListener,
    /// Its path, when it has one.
    pub path: Option<PathBuf>,
}

/// Take the passed listening socket, if this process was socket-activated.
/// Clears `LISTEN_PID`, `LISTEN_FDS` and `LISTEN_FDNAMES` so that no child
/// believes the socket is its own. Must run before any thread is started.
pub fn from_env() -> Result<Option<Activated>, ActivationError> {
    let var = |n: &str| std::env::var(n).ok();
    let n = parse(var("LISTEN_PID").as_deref(), var("LISTEN_FDS").as_deref(), std::process::id())?;
    for name in ["LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"] {
        std::env::remove_var(name);
    }
    match n {
        0 => return Ok(None),
        1 => {}
        n => return Err(ActivationError::TooMany(n)),
    }
    // SAFETY: fd 3 is open (fstat in check_listener succeeds first) and was
    // passed to this process; nothing else in it owns that descriptor.
    check_listener(unsafe { BorrowedFd::borrow_raw(LISTEN_FDS_START) })?;
    let fd = unsafe { OwnedFd::from_raw_fd(LISTEN_FDS_START) };
    nix::fcntl::fcntl(fd.as_raw_fd(), nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::FD_CLOEXEC))
        .map_err(|e| ActivationError::Io(e.to_string()))?;
    let listener = UnixListener::from(fd);
    let path = listener.local_addr().ok().and_then(|a| a.as_pathname().map(PathBuf::from));
    Ok(Some(Activated { listener, path }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;

    #[test]
    fn parse_follows_sd_listen_fds() {
        assert_eq!(parse(None, Some("1"), 10), Ok(0), "no LISTEN_PID: nothing for us");
        assert_eq!(parse(Some("11"), Some("1"), 10), Ok(0), "another process's sockets");
        assert_eq!(parse(Some("10"), None, 10), Ok(0));
        assert_eq!(parse(Some("10"), Some("1"), 10), Ok(1));
        assert_eq!(parse(Some(" 10 "), Some("2"), 10), Ok(2));
        assert_eq!(parse(Some("10"), Some("0"), 10), Ok(0));
        assert!(matches!(parse(Some("x"), Some("1"), 10), Err(ActivationError::BadVar { name: "LISTEN_PID", .. })));
        assert!(matches!(parse(Some("10"), Some("-1"), 10), Err(ActivationError::BadVar { name: "LISTEN_FDS", .. })));
        assert!(matches!(parse(Some("10"), Some(""), 10), Err(ActivationError::BadVar { .. })));
    }

    #[test]
    fn only_a_listening_unix_stream_socket_passes() {
        let dir = tempfile::tempdir().unwrap();
        let l = UnixListener::bind(dir.path().join("s")).unwrap();
        assert_eq!(check_listener(l.as_fd()), Ok(()));
        let (a, _b) = std::os::unix::net::UnixStream::pair().unwrap();
        assert_eq!(check_listener(a.as_fd()), Err(ActivationError::NotListening));
        let (d, _e) = std::os::unix::net::UnixDatagram::pair().unwrap();
        assert_eq!(check_listener(d.as_fd()), Err(ActivationError::NotStream));
        let tcp = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        assert_eq!(check_listener(tcp.as_fd()), Err(ActivationError::NotUnix));
        let f = std::fs::File::open("/dev/null").unwrap();
        assert_eq!(check_listener(f.as_fd()), Err(ActivationError::NotASocket));
    }
}
