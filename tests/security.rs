//! Issue 15, "Nothing lost, no one in": regression tests of the output file
//! and the socket's security, each named after the defect it guards. Real
//! ttsctl, ttsd and scripts/ttsd_client.py processes, against fake daemons (a
//! thread that speaks just enough of the protocol) or a real one.
//!
//! Tests named `needs_root_*` act as other uids (chown, setuid) and are
//! `#[ignore]`d; ./scripts/test runs them with `--ignored` when it is root.
//! They use `/tmp/ttsd-UID` of uids nobody has (54000 and up) and remove only
//! what they made there; never a real user's runtime directory or socket,
//! and never a wall-clock bound under a second (waits poll up to 10 s).
mod common;

use common::*;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};
use ttsd::protocol::{encode, read_frame, write_frame, ErrorCode, HealthState, Reply, Request, PROTOCOL_VERSION};

/// Clear of the caller's settings: the tests choose the socket and the trust.
fn clean(c: &mut Command) -> &mut Command {
    c.stdin(Stdio::null())
        .env_remove("TTSD_SOCKET")
        .env_remove("TTSD_ALLOW_SERVER_UID")
        .env_remove("XDG_RUNTIME_DIR")
}

fn ttsctl() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_ttsctl"));
    clean(&mut c);
    c
}

/// scripts/ttsd_client.py, isolated from the caller's Python settings.
fn python() -> Command {
    let mut c = Command::new("python3");
    c.arg("-I").arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/ttsd_client.py"));
    clean(&mut c);
    c
}

fn names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> =
        std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    v.sort();
    v
}

/// What a fake daemon does after a synthesize request's audio chunks.
#[derive(Clone, Copy)]
enum End {
    /// `unavailable`, as a degraded daemon answers.
    Fail,
    /// Nothing more: the request never ends.
    Hang,
    Done,
}

fn tone(n: usize) -> Vec<i16> {
    (0..n).map(|i| ((i as f32 * 0.07).sin() * 8000.0) as i16).collect()
}

/// One fake connection: the handshake, health (ready), and synthesize as
/// `chunks` tenths of a second of audio, then `end`.
fn fake_conn(mut s: UnixStream, chunks: usize, end: End) {
    while let Ok(Some(req)) = read_frame::<Request, _>(&mut s, 1 << 20) {
        let replies = match req {
            Request::Hello { .. } => vec![Reply::HelloOk { version: PROTOCOL_VERSION, server: "fake".into() }],
            Request::Health => vec![Reply::Health { state: HealthState::Ready, reason: None }],
            Request::Synthesize(r) => {
                let mut v: Vec<Reply> = (0..chunks)
                    .map(|seq| Reply::Audio { id: r.id, seq: seq as u32, sample_rate: 22050, samples: tone(2205) })
                    .collect();
                match end {
                    End::Fail => v.push(Reply::Error {
                        id: Some(r.id),
                        code: ErrorCode::Unavailable,
                        message: "the fake voice failed".into(),
                    }),
                    End::Done => v.push(Reply::Done {
                        id: r.id,
                        audio_seconds: chunks as f64 * 0.1,
                        queue_ms: 0,
                        synth_ms: 1,
                        worker_pid: 1,
                        retried: false,
                    }),
                    End::Hang => {}
                }
                v
            }
            _ => Vec::new(),
        };
        for r in &replies {
            if write_frame(&mut s, r).is_err() {
                return;
            }
        }
    }
}

/// Serve `l` as a fake ttsd from threads of this process (so as our uid).
fn serve(l: UnixListener, chunks: usize, end: End) {
    std::thread::spawn(move || {
        for s in l.incoming() {
            let Ok(s) = s else { return };
            std::thread::spawn(move || fake_conn(s, chunks, end));
        }
    });
}

/// A fake ttsd on a fresh socket.
fn fake(chunks: usize, end: End) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("fake.sock");
    serve(UnixListener::bind(&path).unwrap(), chunks, end);
    (dir, path)
}

mod output {
    use super::*;

    fn say(sock: &Path, out: &Path) -> Output {
        ttsctl().arg("--socket").arg(sock).args(["say", "Hello there.", "-o"]).arg(out).output().unwrap()
    }

    #[test]
    fn say_failure_keeps_existing_file() {
        let (_d, sock) = fake(3, End::Fail);
        let dir = tempfile::tempdir().unwrap();
        let keep = dir.path().join("keep.wav");
        std::fs::write(&keep, "important\n").unwrap();
        let out = say(&sock, &keep);
        check(&out, 1);
        assert!(text(&out.stderr).contains("unavailable"), "{}", text(&out.stderr));
        assert_eq!(std::fs::read_to_string(&keep).unwrap(), "important\n");
        assert_eq!(names(dir.path()), ["keep.wav"], "no temporary file is left");
    }

    /// The report's own reproduction, against a real daemon.
    #[test]
    fn say_unknown_voice_keeps_existing_file() {
        let d = Daemon::start("workers = 1");
        let keep = d.dir.path().join("keep.wav");
        std::fs::write(&keep, "important\n").unwrap();
        let out = ttsctl()
            .arg("--socket")
            .arg(&d.socket)
            .args(["say", "--voice", "nosuch", "hi", "-o"])
            .arg(&keep)
            .output()
            .unwrap();
        check(&out, 1);
        assert!(text(&out.stderr).contains("unknown_voice"), "{}", text(&out.stderr));
        assert_eq!(std::fs::read_to_string(&keep).unwrap(), "important\n");
    }

    #[test]
    fn say_failure_through_symlink_keeps_target() {
        let (_d, sock) = fake(3, End::Fail);
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("real")).unwrap();
        let target = dir.path().join("real/target.wav");
        let link = dir.path().join("link.wav");
        std::fs::write(&target, "important\n").unwrap();
        std::os::unix::fs::symlink(&target, &link).unwrap();
        check(&say(&sock, &link), 1);
        assert_eq!(std::fs::read_to_string(&target).unwrap(), "important\n");
        assert_eq!(std::fs::read_link(&link).unwrap(), target, "the link stays");
        assert_eq!(names(&dir.path().join("real")), ["target.wav"], "no temporary file is left");
    }

    #[test]
    fn say_success_replaces_the_file_keeping_its_mode_and_writes_through_links() {
        let (_d, sock) = fake(3, End::Done);
        let dir = tempfile::tempdir().unwrap();
        let keep = dir.path().join("keep.wav");
        std::fs::write(&keep, "old\n").unwrap();
        std::fs::set_permissions(&keep, std::fs::Permissions::from_mode(0o640)).unwrap();
        check(&say(&sock, &keep), 0);
        let samples: Vec<i16> = hound::WavReader::open(&keep).unwrap().samples().map(Result::unwrap).collect();
        assert_eq!(samples, [tone(2205), tone(2205), tone(2205)].concat());
        assert_eq!(std::fs::metadata(&keep).unwrap().mode() & 0o777, 0o640);
        let link = dir.path().join("link.wav");
        std::os::unix::fs::symlink(&keep, &link).unwrap();
        std::fs::write(&keep, "old\n").unwrap();
        check(&say(&sock, &link), 0);
        assert!(std::fs::symlink_metadata(&link).unwrap().file_type().is_symlink());
        assert_eq!(hound::WavReader::open(&keep).unwrap().len(), 3 * 2205);
        assert_eq!(names(dir.path()), ["keep.wav", "link.wav"]);
    }

    /// A character device like /dev/null (made here, so that the test never
    /// endangers the real one); a fifo where devices cannot be made or
    /// opened (no root, a nodev mount).
    fn null_device(dir: &Path) -> (PathBuf, bool) {
        use nix::sys::stat::{makedev, mknod, Mode, SFlag};
        let null = dir.join("null");
        let made = mknod(&null, SFlag::S_IFCHR, Mode::from_bits_truncate(0o666), makedev(1, 3)).is_ok();
        if made && std::fs::OpenOptions::new().write(true).open(&null).is_ok() {
            return (null, true);
        }
        if made {
            std::fs::remove_file(&null).unwrap();
        }
        nix::unistd::mkfifo(&null, Mode::from_bits_truncate(0o600)).unwrap();
        // A reader for as long as the test runs, so writers never block.
        let reader = std::fs::OpenOptions::new().read(true).write(true).open(&null).unwrap();
        std::thread::spawn(move || {
            let mut buf = vec![0u8; 1 << 16];
            while std::io::Read::read(&mut &reader, &mut buf).is_ok_and(|n| n > 0) {}
        });
        (null, false)
    }

    #[test]
    fn say_to_dev_null_is_written_not_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let (null, device) = null_device(dir.path());
        println!("output: {}", if device { "a character device (1, 3)" } else { "a fifo (no device could be made)" });
        for (end, code) in [(End::Fail, 1), (End::Done, 0)] {
            let (_d, sock) = fake(3, end);
            check(&say(&sock, &null), code);
            let ft = std::fs::symlink_metadata(&null).expect("the device must survive").file_type();
            assert!(if device { ft.is_char_device() } else { ft.is_fifo() }, "replaced by {ft:?}");
        }
        assert_eq!(names(dir.path()), ["null"], "nothing created beside it");
    }

    #[test]
    fn say_interrupted_keeps_existing_file_and_removes_its_temporary_file() {
        let (_d, sock) = fake(2, End::Hang);
        let dir = tempfile::tempdir().unwrap();
        let keep = dir.path().join("keep.wav");
        std::fs::write(&keep, "important\n").unwrap();
        let mut child = ttsctl()
            .arg("--socket")
            .arg(&sock)
            .args(["say", "Hello there.", "-o"])
            .arg(&keep)
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        // Interrupt once audio is being written (the header and samples).
        let t = Instant::now();
        loop {
            let temp = names(dir.path()).into_iter().find(|n| n.ends_with(".tmp"));
            let len = temp.and_then(|n| std::fs::metadata(dir.path().join(n)).ok()).map_or(0, |m| m.len());
            if len > 44 {
                break;
            }
            let now = std::fs::read(&keep).unwrap();
            assert!(now == b"important\n", "the output was overwritten before the request ended: {} bytes", now.len());
            assert!(t.elapsed() < Duration::from_secs(10), "no audio written after 10 s: {:?}", names(dir.path()));
            std::thread::sleep(Duration::from_millis(10));
        }
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(child.id() as i32), nix::sys::signal::Signal::SIGINT)
            .unwrap();
        let status = child.wait().unwrap();
        assert_eq!(status.signal(), Some(libc::SIGINT), "{status:?}");
        assert_eq!(std::fs::read_to_string(&keep).unwrap(), "important\n");
        assert_eq!(names(dir.path()), ["keep.wav"], "the temporary file is removed");
    }

    #[test]
    fn python_say_failure_keeps_existing_file() {
        let dir = tempfile::tempdir().unwrap();
        let keep = dir.path().join("keep.wav");
        std::fs::write(&keep, "important\n").unwrap();
        let (_f, sock) = fake(3, End::Fail);
        let out = python().arg("--socket").arg(&sock).args(["say", "Hello"]).arg(&keep).output().unwrap();
        check(&out, 1);
        assert_eq!(std::fs::read_to_string(&keep).unwrap(), "important\n");
        assert_eq!(names(dir.path()), ["keep.wav"], "no temporary file is left");
        // Success replaces it, keeping its mode.
        std::fs::set_permissions(&keep, std::fs::Permissions::from_mode(0o600)).unwrap();
        let (_g, sock) = fake(3, End::Done);
        let out = python().arg("--socket").arg(&sock).args(["say", "Hello"]).arg(&keep).output().unwrap();
        check(&out, 0);
        assert_eq!(hound::WavReader::open(&keep).unwrap().len(), 3 * 2205);
        assert_eq!(std::fs::metadata(&keep).unwrap().mode() & 0o777, 0o600);
        assert_eq!(names(dir.path()), ["keep.wav"]);
    }
}

/// Root-only helpers: other uids' runtime directories and daemons.
mod as_other_users {
    use super::*;
    use nix::unistd::{Gid, Pid, Uid, User};

    /// A uid nobody has, whose /tmp/ttsd-UID does not exist, from `base` up
    /// (each test its own base: tests run in parallel).
    pub fn free_uid(base: u32) -> u32 {
        (base..base + 200)
            .find(|&u| {
                User::from_uid(Uid::from_raw(u)).ok().flatten().is_none()
                    && std::fs::symlink_metadata(runtime_dir(u)).is_err()
            })
            .expect("a free uid")
    }

    pub fn runtime_dir(uid: u32) -> PathBuf {
        PathBuf::from(format!("/tmp/ttsd-{uid}"))
    }

    /// Removes what the test made (only that) when dropped.
    pub struct Made(pub PathBuf);

    impl Drop for Made {
        fn drop(&mut self) {
            match std::fs::symlink_metadata(&self.0) {
                Ok(m) if m.is_dir() => drop(std::fs::remove_dir_all(&self.0)),
                Ok(_) => drop(std::fs::remove_file(&self.0)),
                Err(_) => {}
            }
        }
    }

    pub fn chown(path: &Path, uid: u32) {
        nix::unistd::chown(path, Some(Uid::from_raw(uid)), Some(Gid::from_raw(uid))).unwrap();
    }

    pub fn chmod(path: &Path, mode: u32) {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
    }

    pub fn as_uid(mut c: Command, uid: u32) -> Command {
        c.uid(uid).gid(uid);
        c
    }

    /// ttsd as `uid` on its default path (no XDG_RUNTIME_DIR, no `socket`),
    /// its config in `dir` (opened up so that `uid` can read it).
    pub fn ttsd_as(uid: u32, dir: &Path) -> std::process::Child {
        chmod(dir, 0o755);
        let cfg = dir.join("daemon.toml");
        let voice = voice_path().display().to_string();
        std::fs::write(&cfg, format!("socket = \"\"\nworkers = 1\nvoices = [{{ name = \"joe\", path = {voice:?} }}]\n"))
            .unwrap();
        chmod(&cfg, 0o644);
        let mut c = Command::new(env!("CARGO_BIN_EXE_ttsd"));
        clean(&mut c).arg("--config").arg(&cfg).stdout(Stdio::null()).stderr(Stdio::piped());
        as_uid(c, uid).spawn().unwrap()
    }

    /// The exit status within `within` (`None`: still running, then killed)
    /// and everything written to stderr.
    pub fn exit_of(mut child: std::process::Child, within: Duration) -> (Option<ExitStatus>, String) {
        let t = Instant::now();
        let status = loop {
            if let Some(s) = child.try_wait().unwrap() {
                break Some(s);
            }
            if t.elapsed() > within {
                // SIGTERM first, so that its workers stop too.
                let _ = nix::sys::signal::kill(Pid::from_raw(child.id() as i32), nix::sys::signal::Signal::SIGTERM);
                let stop = Instant::now();
                while child.try_wait().unwrap().is_none() && stop.elapsed() < Duration::from_secs(10) {
                    std::thread::sleep(Duration::from_millis(20));
                }
                let _ = child.kill();
                let _ = child.wait();
                break None;
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        let mut err = String::new();
        if let Some(mut e) = child.stderr.take() {
            let _ = std::io::Read::read_to_string(&mut e, &mut err);
        }
        (status, err)
    }

    /// A fake ttsd at `path` served by `uid`: bound here, then a forked child
    /// drops to `uid` before it listens (SO_PEERCRED reports who listened)
    /// and answers the handshake and one health query per connection.
    pub struct ServedAs(Pid);

    impl ServedAs {
        pub fn start(path: &Path, uid: u32) -> Self {
            use nix::sys::socket::{bind, socket, AddressFamily, SockFlag, SockType, UnixAddr};
            use std::os::fd::AsRawFd;
            let fd = socket(AddressFamily::Unix, SockType::Stream, SockFlag::SOCK_CLOEXEC, None).unwrap();
            bind(fd.as_raw_fd(), &UnixAddr::new(path).unwrap()).unwrap();
            chmod(path, 0o666);
            let hello = encode(&Reply::HelloOk { version: PROTOCOL_VERSION, server: "fake".into() }).unwrap();
            let health = encode(&Reply::Health { state: HealthState::Ready, reason: None }).unwrap();
            // SAFETY: the child makes system calls only, on memory prepared
            // before the fork, and never returns.
            match unsafe { nix::unistd::fork() }.unwrap() {
                nix::unistd::ForkResult::Child => unsafe {
                    let raw = fd.as_raw_fd();
                    let id = uid as libc::c_long;
                    if libc::syscall(libc::SYS_setgid, id) != 0
                        || libc::syscall(libc::SYS_setuid, id) != 0
                        || libc::listen(raw, 16) != 0
                    {
                        libc::_exit(1);
                    }
                    let mut buf = [0u8; 4096];
                    loop {
                        let c = libc::accept(raw, std::ptr::null_mut(), std::ptr::null_mut());
                        if c < 0 {
                            continue;
                        }
                        for reply in [&hello, &health] {
                            if libc::read(c, buf.as_mut_ptr().cast(), buf.len()) <= 0 {
                                break;
                            }
                            libc::write(c, reply.as_ptr().cast(), reply.len());
                        }
                        libc::close(c);
                    }
                },
                nix::unistd::ForkResult::Parent { child } => Self(child),
            }
        }
    }

    impl Drop for ServedAs {
        fn drop(&mut self) {
            let _ = nix::sys::signal::kill(self.0, nix::sys::signal::Signal::SIGKILL);
            let _ = nix::sys::wait::waitpid(self.0, None);
        }
    }
}

mod runtime_dir {
    use super::as_other_users::*;
    use super::*;

    #[test]
    #[ignore = "needs root (runs ttsd as another uid); ./scripts/test runs it as root"]
    fn needs_root_daemon_refuses_symlinked_runtime_dir() {
        assert!(nix::unistd::geteuid().is_root(), "run as root");
        let u = free_uid(54_000);
        let t = tempfile::tempdir().unwrap();
        // What another user plants: a link to a directory the victim owns
        // (it would be repointed later).
        let real = t.path().join("real");
        std::fs::create_dir(&real).unwrap();
        chown(&real, u);
        chmod(&real, 0o700);
        let link = runtime_dir(u);
        std::os::unix::fs::symlink(&real, &link).unwrap();
        let _made = Made(link.clone());
        let (status, err) = exit_of(ttsd_as(u, t.path()), Duration::from_secs(10));
        assert!(status.is_some_and(|s| !s.success()), "ttsd served from a linked runtime directory: {err}");
        assert!(err.contains(&link.display().to_string()) && err.contains("symbolic link"), "{err}");
        assert_eq!(std::fs::read_link(&link).unwrap(), real, "the link is left as it was");
        assert!(names(&real).is_empty(), "nothing was made through the link: {:?}", names(&real));
    }

    #[test]
    #[ignore = "needs root (runs ttsd as another uid); ./scripts/test runs it as root"]
    fn needs_root_runtime_dir_owned_by_other_or_open_to_others_is_refused() {
        assert!(nix::unistd::geteuid().is_root(), "run as root");
        let u = free_uid(54_100);
        let t = tempfile::tempdir().unwrap();
        let dir = runtime_dir(u);
        std::fs::create_dir(&dir).unwrap();
        let _made = Made(dir.clone());
        // Made by someone else (root here), open for anyone to enter.
        chmod(&dir, 0o755);
        let (status, err) = exit_of(ttsd_as(u, t.path()), Duration::from_secs(10));
        assert!(status.is_some_and(|s| !s.success()), "ttsd used a directory of uid 0: {err}");
        assert!(err.contains(&dir.display().to_string()) && err.contains("owned by uid 0"), "{err}");
        // Ours, but readable by others: not the 0700 ttsd makes.
        chown(&dir, u);
        let (status, err) = exit_of(ttsd_as(u, t.path()), Duration::from_secs(10));
        assert!(status.is_some_and(|s| !s.success()), "ttsd used a directory of mode 0755: {err}");
        assert!(err.contains("mode 0755"), "{err}");
        assert_eq!(std::fs::metadata(&dir).unwrap().mode() & 0o7777, 0o755, "refused, not repaired");
        assert!(names(&dir).is_empty(), "{:?}", names(&dir));
    }

    /// The whole default path as a user without XDG_RUNTIME_DIR: ttsd makes
    /// /tmp/ttsd-UID (0700), and ttsctl and the Python client find and trust
    /// it; root's ttsctl, naming the path, trusts it only when told to.
    #[test]
    #[ignore = "needs root (runs ttsd as another uid); ./scripts/test runs it as root"]
    fn needs_root_default_runtime_dir_is_made_private_and_trusted_by_its_user() {
        assert!(nix::unistd::geteuid().is_root(), "run as root");
        let u = free_uid(54_200);
        let t = tempfile::tempdir().unwrap();
        let dir = runtime_dir(u);
        let _made = Made(dir.clone());
        let child = ttsd_as(u, t.path());
        let sock = dir.join("ttsd.sock");
        let start = Instant::now();
        while UnixStream::connect(&sock).is_err() {
            if start.elapsed() > Duration::from_secs(10) {
                let (status, err) = exit_of(child, Duration::ZERO);
                panic!("no socket after 10 s ({status:?}): {err}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let meta = std::fs::symlink_metadata(&dir).unwrap();
        assert_eq!((meta.uid(), meta.mode() & 0o7777), (u, 0o700));
        let meta = std::fs::symlink_metadata(&sock).unwrap();
        assert_eq!((meta.uid(), meta.mode() & 0o777), (u, 0o600));
        check(&as_uid(ttsctl(), u).args(["status", "--json"]).output().unwrap(), 0);
        check(&as_uid(python(), u).arg("status").output().unwrap(), 0);
        let out = ttsctl().arg("--socket").arg(&sock).arg("status").output().unwrap();
        check(&out, 2);
        assert!(text(&out.stderr).contains(&format!("served by uid {u}")), "{}", text(&out.stderr));
        let allow = u.to_string();
        check(&ttsctl().args(["--allow-server-uid", &allow, "--socket"]).arg(&sock).arg("status").output().unwrap(), 0);
        let (status, err) = exit_of(child, Duration::ZERO);
        assert!(status.is_none(), "ttsd exited early: {err}");
    }
}

mod client {
    use super::as_other_users::*;
    use super::*;

    /// A fake ttsd served by root (this process) in `dir`, open to all.
    fn root_fake_in(dir: &Path) -> PathBuf {
        let sock = dir.join("ttsd.sock");
        let l = UnixListener::bind(&sock).unwrap();
        chmod(&sock, 0o666);
        serve(l, 0, End::Done);
        sock
    }

    #[test]
    #[ignore = "needs root (acts as another uid); ./scripts/test runs it as root"]
    fn needs_root_client_refuses_default_socket_in_dir_of_other_owner() {
        assert!(nix::unistd::geteuid().is_root(), "run as root");
        let u = free_uid(54_300);
        let dir = runtime_dir(u);
        std::fs::create_dir(&dir).unwrap();
        let _made = Made(dir.clone());
        chmod(&dir, 0o755);
        root_fake_in(&dir);
        for (who, cmd) in [("ttsctl", ttsctl()), ("python", python())] {
            let out = as_uid(cmd, u).arg("health").output().unwrap();
            check(&out, 2);
            let err = text(&out.stderr);
            assert!(err.contains(&dir.display().to_string()) && err.contains("owned by uid 0"), "{who}: {err}");
        }
    }

    #[test]
    #[ignore = "needs root (acts as other uids); ./scripts/test runs it as root"]
    fn needs_root_client_refuses_socket_of_other_uid() {
        assert!(nix::unistd::geteuid().is_root(), "run as root");
        // The default path: a directory that passes every check, but the
        // server is root. Only the user's own daemon is trusted there.
        let u = free_uid(54_400);
        let dir = runtime_dir(u);
        std::fs::create_dir(&dir).unwrap();
        let _made = Made(dir.clone());
        chown(&dir, u);
        chmod(&dir, 0o700);
        root_fake_in(&dir);
        for (who, mk) in [("ttsctl", ttsctl as fn() -> Command), ("python", python)] {
            let out = as_uid(mk(), u).arg("health").output().unwrap();
            check(&out, 2);
            let err = text(&out.stderr);
            assert!(err.contains("served by uid 0") && err.contains("--allow-server-uid 0"), "{who}: {err}");
            check(&as_uid(mk(), u).args(["--allow-server-uid", "0", "health"]).output().unwrap(), 0);
            check(&as_uid(mk(), u).env("TTSD_ALLOW_SERVER_UID", "0").arg("health").output().unwrap(), 0);
        }
        // A named path: our own uid or root pass; another uid only if allowed.
        let t = tempfile::tempdir().unwrap();
        chmod(t.path(), 0o755);
        let v = free_uid(54_500);
        let sock = t.path().join("other.sock");
        let _server = ServedAs::start(&sock, v);
        let mine = root_fake_in(&tempfile::tempdir().unwrap().keep());
        for (who, mk) in [("ttsctl", ttsctl as fn() -> Command), ("python", python)] {
            let out = mk().arg("--socket").arg(&sock).arg("health").output().unwrap();
            check(&out, 2);
            assert!(text(&out.stderr).contains(&format!("served by uid {v}")), "{who}: {}", text(&out.stderr));
            let allow = v.to_string();
            check(&mk().args(["--allow-server-uid", &allow, "--socket"]).arg(&sock).arg("health").output().unwrap(), 0);
            check(&mk().arg("--socket").arg(&mine).arg("health").output().unwrap(), 0);
        }
        let _ = std::fs::remove_dir_all(mine.parent().unwrap());
    }
}

mod groups {
    use super::as_other_users::*;
    use super::*;

    /// (user's uid, primary gid, group name, group gid) of a user listed as a
    /// member of a group that is not their primary one, from /etc/group.
    fn supplementary_member() -> Option<(u32, u32, String, u32)> {
        let groups = std::fs::read_to_string("/etc/group").ok()?;
        groups.lines().find_map(|line| {
            let f: Vec<&str> = line.split(':').collect();
            let gid: u32 = f.get(2)?.parse().ok()?;
            f.get(3)?.split(',').filter(|m| !m.is_empty()).find_map(|m| {
                let u = nix::unistd::User::from_name(m).ok().flatten()?;
                (u.gid.as_raw() != gid && u.uid.as_raw() != 0).then(|| (u.uid.as_raw(), u.gid.as_raw(), f[0].into(), gid))
            })
        })
    }

    /// ttsd (as root) with its socket at `socket`.
    use common::Stopped as Running;

    fn ttsd_at(dir: &Path, socket: &Path, extra: &str) -> Running {
        let default = format!("socket = {:?}\n", dir.join("ttsd.sock").display().to_string());
        let cfg = config(dir, extra).replacen(&default, &format!("socket = {:?}\n", socket.display().to_string()), 1);
        std::fs::write(dir.join("daemon.toml"), cfg).unwrap();
        let log = std::fs::File::create(dir.join("ttsd.log")).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_ttsd"))
            .arg("--config")
            .arg(dir.join("daemon.toml"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        let r = Running(child);
        let t = Instant::now();
        while UnixStream::connect(socket).is_err() {
            let log = std::fs::read_to_string(dir.join("ttsd.log")).unwrap_or_default();
            assert!(t.elapsed() < Duration::from_secs(10), "no socket after 10 s\n{log}");
            std::thread::sleep(Duration::from_millis(20));
        }
        r
    }

    /// ttsctl as `uid` with primary group `gid` and supplementary `groups`.
    fn ttsctl_in_groups(uid: u32, gid: u32, groups: Vec<u32>) -> Command {
        let mut c = ttsctl();
        // SAFETY: setgroups, setgid and setuid are plain system calls.
        unsafe {
            c.pre_exec(move || {
                if libc::setgroups(groups.len(), groups.as_ptr()) != 0
                    || libc::setgid(gid) != 0
                    || libc::setuid(uid) != 0
                {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        c
    }

    #[test]
    #[ignore = "needs root (connects as a member of socket_group); ./scripts/test runs it as root"]
    fn needs_root_supplementary_group_member_is_allowed() {
        assert!(nix::unistd::geteuid().is_root(), "run as root");
        let (uid, primary, group, gid) = supplementary_member()
            .expect("this test needs a user listed in /etc/group as a member of a group other than their primary one");
        println!("uid {uid} (primary gid {primary}) is a member of {group} ({gid})");
        let t = tempfile::tempdir().unwrap();
        chmod(t.path(), 0o755);
        // A directory ttsd makes: it opens it to socket_group.
        let sock = t.path().join("run/ttsd.sock");
        let _d = ttsd_at(t.path(), &sock, &format!("workers = 1\nsocket_group = {group:?}"));
        let run = std::fs::metadata(t.path().join("run")).unwrap();
        assert_eq!((run.mode() & 0o7777, run.gid()), (0o710, gid), "the socket's directory");
        let s = std::fs::symlink_metadata(&sock).unwrap();
        assert_eq!((s.mode() & 0o777, s.gid()), (0o660, gid), "the socket");
        // The member, by a supplementary group: in.
        let out = ttsctl_in_groups(uid, primary, vec![gid]).arg("--socket").arg(&sock).arg("status").output().unwrap();
        check(&out, 0);
        // Without the group, the directory keeps the same user out.
        let out = ttsctl_in_groups(uid, primary, vec![]).arg("--socket").arg(&sock).arg("status").output().unwrap();
        check(&out, 2);
        assert!(text(&out.stderr).contains("permission denied"), "{}", text(&out.stderr));
    }
}
