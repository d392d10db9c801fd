//! What ttsctl tells a person when something fails: the cause, the fix, and
//! the exit code (see `cli::EXIT_*`).
//!
//! Pure mapping from [`ClientError`] to a one-line message; never does I/O.
use super::cli::{EXIT_FAILED, EXIT_UNREACHABLE};
use super::ClientError;
use crate::protocol::{ErrorCode, FrameError, PROTOCOL_VERSION};
use std::io::ErrorKind;
use std::path::Path;

/// How to start the daemon, for messages.
pub const START_HINT: &str = "start it with `./scripts/run` or `systemctl --user start ttsd`";

/// A failure as shown to a person: one line, and the exit code.
#[derive(Debug, Clone, PartialEq)]
pub struct Failure {
    pub message: String,
    pub exit: u8,
}

fn failed(message: String) -> Failure {
    Failure { message, exit: EXIT_FAILED }
}

fn unreachable(message: String) -> Failure {
    Failure { message, exit: EXIT_UNREACHABLE }
}

/// Explain `e`, which happened talking to the daemon at `socket`.
pub fn explain(e: &ClientError, socket: &Path) -> Failure {
    let at = socket.display();
    match e {
        ClientError::Connect { source, .. } => match source.kind() {
            ErrorKind::NotFound | ErrorKind::ConnectionRefused => {
                unreachable(format!("ttsd is not running at {at} ({START_HINT})"))
            }
            ErrorKind::PermissionDenied => unreachable(format!(
                "permission denied on {at}: the socket belongs to another user (run ttsctl as that user, \
                 or have them set socket_group / allowed_uids in daemon.toml)"
            )),
            _ if source.raw_os_error() == Some(libc::ENOTSOCK) => {
                unreachable(format!("{at} is not a socket (point --socket or TTSD_SOCKET at ttsd's socket)"))
            }
            _ if source.raw_os_error() == Some(libc::ENAMETOOLONG) || source.kind() == ErrorKind::InvalidInput => {
                unreachable(format!("cannot use {at} as a socket path: {source} (use a shorter --socket path)"))
            }
            _ => unreachable(format!("cannot connect to ttsd at {at}: {source} ({START_HINT})")),
        },
        ClientError::UnsafeDir { source, .. } => unreachable(format!(
            "refusing the default socket {at}: {source}; nothing was sent (the default socket's directory must \
             be a real directory of your own that nobody else can write to)"
        )),
        ClientError::UntrustedServer { uid, trust, .. } => unreachable(format!(
            "refusing ttsd at {at}: it is served by uid {uid}, and {}; nothing was sent (if you trust uid {uid}, \
             pass --allow-server-uid {uid} or set TTSD_ALLOW_SERVER_UID={uid})",
            trust.describe()
        )),
        ClientError::Frame(FrameError::Io(io)) if matches!(io.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
            unreachable(format!(
                "ttsd at {at} did not answer in time (it may be hung: check its log, e.g. \
                 `journalctl --user -u ttsd`, and restart it)"
            ))
        }
        ClientError::Closed | ClientError::Frame(FrameError::Truncated) => failed(format!(
            "ttsd at {at} closed the connection before answering (it may be restarting: check `ttsctl health` and its log)"
        )),
        ClientError::Frame(FrameError::Io(io))
            if matches!(io.kind(), ErrorKind::ConnectionReset | ErrorKind::BrokenPipe) =>
        {
            failed(format!(
                "ttsd at {at} dropped the connection (it may be restarting: check `ttsctl health` and its log)"
            ))
        }
        ClientError::Frame(f) => failed(format!("protocol error talking to ttsd at {at}: {f} (is it a ttsd socket?)")),
        ClientError::Unexpected(m) => failed(format!(
            "ttsd at {at} sent an unexpected reply ({m}); use the ttsctl built with this daemon"
        )),
        ClientError::Server { code, message } => explain_code(*code, message, socket),
    }
}

/// A refusal or failure the daemon reported: `code: what happened (fix)`,
/// the code first so scripts can match it. The daemon answered, so it is
/// reachable: exit 1, even for `permission_denied` and `unsupported_version`.
fn explain_code(code: ErrorCode, message: &str, socket: &Path) -> Failure {
    let at = socket.display();
    let text = match code {
        ErrorCode::PermissionDenied => format!(
            "ttsd at {at} refused this user: {message} (add your uid to allowed_uids or your group to \
             allowed_gids in daemon.toml, or run ttsctl as the daemon's user)"
        ),
        ErrorCode::UnsupportedVersion => format!(
            "ttsd at {at} speaks another protocol version ({message}); this ttsctl speaks version \
             {PROTOCOL_VERSION}: use the ttsctl built with the daemon"
        ),
        ErrorCode::Timeout => {
            format!("{message} (raise --timeout-ms, shorten the text, or add workers in daemon.toml)")
        }
        ErrorCode::Overloaded => {
            // The daemon's message names the limit that was hit and its setting.
            format!("ttsd is overloaded: {message} (retry later, or raise that setting in daemon.toml)")
        }
        ErrorCode::UnknownVoice => format!("{message} (list the voices with `ttsctl voices`)"),
        ErrorCode::Unavailable => {
            format!("ttsd cannot synthesize: {message} (see `ttsctl status`; check the voice files in daemon.toml)")
        }
        ErrorCode::ShuttingDown => format!("ttsd is shutting down: {message} (retry once it has restarted)"),
        ErrorCode::WorkerCrashed => {
            format!("a worker crashed on this request: {message} (retry; if it happens again, report the text)")
        }
        ErrorCode::BadRequest => format!("ttsd refused the request: {message} (see `ttsctl say --help`)"),
        ErrorCode::FrameTooLarge => format!(
            "the request is too large for ttsd: {message} (split the text, or raise max_frame_bytes in daemon.toml)"
        ),
        ErrorCode::Cancelled => format!("the request was cancelled: {message}"),
        _ => format!("{message} (check ttsd's log)"),
    };
    failed(format!("{code}: {text}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io;

    fn conn(kind: io::Error) -> ClientError {
        ClientError::Connect { path: "/run/user/1000/ttsd.sock".into(), source: kind }
    }

    #[test]
    fn unreachable_daemons_exit_2_and_say_how_to_start_one() {
        let p = Path::new("/run/user/1000/ttsd.sock");
        let f = explain(&conn(io::Error::from(io::ErrorKind::NotFound)), p);
        assert_eq!(f.exit, EXIT_UNREACHABLE);
        assert_eq!(
            f.message,
            "ttsd is not running at /run/user/1000/ttsd.sock (start it with `./scripts/run` or `systemctl --user start ttsd`)"
        );
        assert_eq!(explain(&conn(io::Error::from(io::ErrorKind::ConnectionRefused)), p).exit, 2);
        let f = explain(&conn(io::Error::from(io::ErrorKind::PermissionDenied)), p);
        assert!(f.message.contains("permission denied") && f.exit == 2);
        let timeout = ClientError::Frame(FrameError::Io(io::Error::from(io::ErrorKind::WouldBlock)));
        assert_eq!(explain(&timeout, p).exit, 2);
    }

    #[test]
    fn every_server_error_names_a_fix() {
        let p = Path::new("/s");
        for code in ErrorCode::ALL {
            let f = explain(&ClientError::Server { code, message: "why".into() }, p);
            assert!(f.message.contains("why"), "{code}: {}", f.message);
            assert_eq!(f.exit, EXIT_FAILED);
            assert!(f.message.starts_with(code.as_str()));
        }
        let f = explain(&ClientError::Server { code: ErrorCode::UnsupportedVersion, message: "x".into() }, p);
        assert!(f.message.starts_with("unsupported_version: ") && f.message.contains("protocol version"));
        // The daemon answered: refused, not unreachable.
        let f = explain(&ClientError::Server { code: ErrorCode::PermissionDenied, message: "x".into() }, p);
        assert!(f.message.starts_with("permission_denied: ") && f.exit == EXIT_FAILED, "{f:?}");
    }
}
