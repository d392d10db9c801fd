//! Issue 15, "Nothing lost, no one in": regression tests of the output file
//! and the socket's security, each named after the defect it guards. Real
//! ttsctl, ttsd and scripts/ttsd_client.py processes, against fake daemons (a
//! thread that speaks just enough of the protocol) or a real one.
mod common;

use common::*;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};
use ttsd::protocol::{read_frame, write_frame, ErrorCode, HealthState, Reply, Request, PROTOCOL_VERSION};

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn check(out: &Output, code: i32) {
    assert_eq!(
        out.status.code(),
        Some(code),
        "exit {:?}\nstdout: {}\nstderr: {}",
        out.status,
        text(&out.stdout),
        text(&out.stderr)
    );
}

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
