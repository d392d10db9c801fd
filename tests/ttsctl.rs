//! ttsctl end to end: the real binary against a real daemon (see `common`),
//! one module per area: say, unreachable daemons, refused connections,
//! status and friends, streaming latency, socket activation, and
//! PROTOCOL.md's annotated session checked against the encoder.
//!
//! Must not rely on an audio player being installed (play is tested with
//! fakes on PATH) or on a wall-clock bound under a second: latency is
//! asserted as a ratio (first audio before 30% of the last), never in
//! milliseconds.
mod common;

use common::*;
use std::io::Read;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn ttsctl(socket: &Path) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_ttsctl"));
    c.arg("--socket").arg(socket).stdin(Stdio::null());
    c
}

/// One ready worker: lighter on a small machine, and timings are steadier.
fn daemon() -> Daemon {
    let d = Daemon::start("workers = 1");
    d.wait_idle(1, Duration::from_secs(120));
    d
}

/// (channels, bits, rate, samples) of a WAV file, read with hound.
fn read_wav(path: &Path) -> (u16, u16, u32, Vec<i16>) {
    let mut r = hound::WavReader::open(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let s = r.spec();
    let samples: Vec<i16> = r.samples::<i16>().map(Result::unwrap).collect();
    (s.channels, s.bits_per_sample, s.sample_rate, samples)
}

/// The voice's own sample rate, as the daemon reports it.
fn voice_rate(d: &Daemon) -> u32 {
    let s = d.status();
    s.voices[0].info.as_ref().expect("voice loaded").sample_rate
}

fn assert_speech(path: &Path, rate: u32) -> usize {
    let (channels, bits, r, samples) = read_wav(path);
    assert_eq!((channels, bits, r), (1, 16, rate), "{}", path.display());
    assert!(samples.len() > rate as usize / 4, "only {} samples", samples.len());
    assert!(samples.iter().map(|s| s.unsigned_abs()).max().unwrap() > 500, "silence");
    samples.len()
}

mod say {
    use super::*;

    #[test]
    fn say_writes_a_mono_16_bit_wav_at_the_voices_rate() {
        let d = daemon();
        let rate = voice_rate(&d);
        let out_path = d.dir.path().join("hello.wav");
        let out = ttsctl(&d.socket).args(["say", "Hello world", "-o"]).arg(&out_path).output().unwrap();
        check(&out, 0);
        assert_speech(&out_path, rate);
        assert!(text(&out.stderr).contains("s of audio"), "{}", text(&out.stderr));
        assert!(out.stdout.is_empty());
    }

    #[test]
    fn stdin_to_stdout_redirected_to_a_file_is_a_valid_wav() {
        // echo "Hello" | ttsctl say - -o - > x.wav
        let d = daemon();
        let rate = voice_rate(&d);
        let x = d.dir.path().join("x.wav");
        let mut child = ttsctl(&d.socket)
            .args(["say", "-", "-o", "-"])
            .stdin(Stdio::piped())
            .stdout(std::fs::File::create(&x).unwrap())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        std::io::Write::write_all(&mut child.stdin.take().unwrap(), b"Hello\n").unwrap();
        let out = child.wait_with_output().unwrap();
        check(&out, 0);
        assert_speech(&x, rate);
    }

    #[test]
    fn raw_pcm_has_the_samples_the_wav_holds_for_the_same_seed() {
        let d = daemon();
        let rate = voice_rate(&d);
        let wav = d.dir.path().join("seeded.wav");
        let args = ["say", "The same seed gives the same speech.", "--seed", "42"];
        check(&ttsctl(&d.socket).args(args).arg("-o").arg(&wav).output().unwrap(), 0);
        let wav_samples = assert_speech(&wav, rate);
        let out = ttsctl(&d.socket).args(args).args(["--raw", "-o", "-"]).output().unwrap();
        check(&out, 0);
        assert_eq!(out.stdout.len() % 2, 0);
        println!("raw: {} samples, wav: {wav_samples} samples", out.stdout.len() / 2);
        assert_eq!(out.stdout.len() / 2, wav_samples);
        let err = text(&out.stderr);
        assert!(err.contains(&format!("sample rate: {rate} Hz")), "{err}");
    }

    #[test]
    fn a_reader_that_closes_the_pipe_ends_ttsctl_quietly() {
        // ttsctl say LONG -o - | head -c 100
        let d = daemon();
        let mut child = ttsctl(&d.socket)
            .args(["say", LONG, "-o", "-", "--quiet"])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut stdout = child.stdout.take().unwrap();
        let mut first = [0u8; 100];
        stdout.read_exact(&mut first).unwrap();
        assert_eq!(&first[..4], b"RIFF");
        drop(stdout);
        let out = child.wait_with_output().unwrap();
        check(&out, 0);
        assert!(out.stderr.is_empty(), "no message for a closed pipe: {}", text(&out.stderr));
        // The daemon is fine and the worker is free again.
        d.wait_idle(1, Duration::from_secs(30));
    }

    #[test]
    fn usage_errors_exit_64_and_every_subcommand_has_help() {
        let sock = Path::new("/nonexistent/ttsd.sock");
        for sub in ["say", "health", "status", "voices", "metrics"] {
            let out = ttsctl(sock).args([sub, "--help"]).output().unwrap();
            check(&out, 0);
            assert!(text(&out.stdout).contains("Exit codes"), "{sub} --help");
        }
        check(&ttsctl(sock).args(["say", "hi", "--length-scale", "0", "-o", "-"]).output().unwrap(), 64);
        check(&ttsctl(sock).args(["say", "hi", "--bogus"]).output().unwrap(), 64);
        check(&ttsctl(sock).args(["frobnicate"]).output().unwrap(), 64);
        check(&ttsctl(sock).args(["say", "--phoneme-ids", "1,x", "-o", "-"]).output().unwrap(), 64);
    }

    #[test]
    fn play_streams_pcm_to_the_first_player_found() {
        use std::os::unix::fs::PermissionsExt;
        let d = daemon();
        let bin = tempfile::tempdir().unwrap();
        let played = bin.path().join("played.raw");
        let args = bin.path().join("args");
        // A fake aplay that records its arguments and what it was fed.
        let script = format!("#!/bin/sh\necho \"$@\" > '{}'\ncat > '{}'\n", args.display(), played.display());
        std::fs::write(bin.path().join("aplay"), script).unwrap();
        std::fs::set_permissions(bin.path().join("aplay"), std::fs::Permissions::from_mode(0o755)).unwrap();
        let path = format!("{}:/usr/bin:/bin", bin.path().display());
        let out = ttsctl(&d.socket).args(["say", "Hello player", "--play"]).env("PATH", path).output().unwrap();
        check(&out, 0);
        assert_eq!(std::fs::read_to_string(&args).unwrap().trim(), "-q -t raw -f S16_LE -c 1 -r 22050");
        let pcm = std::fs::read(&played).unwrap();
        assert!(pcm.len() > 22050 / 2, "only {} bytes played", pcm.len());
    }

    #[test]
    fn play_without_a_player_says_what_to_install() {
        let empty = tempfile::tempdir().unwrap();
        let out = ttsctl(Path::new("/nonexistent/ttsd.sock"))
            .args(["say", "hi", "--play"])
            .env("PATH", empty.path())
            .output()
            .unwrap();
        check(&out, 1);
        let err = text(&out.stderr);
        assert!(err.contains("none of aplay, paplay, pw-play, afplay is installed"), "{err}");
    }
}

mod unreachable {
    use super::*;

    #[test]
    fn a_stopped_daemon_gives_exit_2_and_says_how_to_start_it() {
        let mut d = daemon();
        d.signal(nix::sys::signal::Signal::SIGTERM);
        d.wait_exit(Duration::from_secs(15));
        let out = ttsctl(&d.socket).args(["say", "hi", "-o", "-"]).output().unwrap();
        check(&out, 2);
        let err = text(&out.stderr);
        let want = format!(
            "ttsd is not running at {} (start it with `./scripts/run` or `systemctl --user start ttsd`)",
            d.socket.display()
        );
        assert!(err.contains(&want), "{err}");
        check(&ttsctl(&d.socket).arg("health").output().unwrap(), 2);
        check(&ttsctl(&d.socket).arg("status").output().unwrap(), 2);
        check(&ttsctl(&d.socket).arg("metrics").output().unwrap(), 2);
        // The environment variable names the socket too.
        let out = Command::new(env!("CARGO_BIN_EXE_ttsctl")).arg("health").env("TTSD_SOCKET", &d.socket).output().unwrap();
        check(&out, 2);
        assert!(text(&out.stderr).contains(&d.socket.display().to_string()));
    }
}

mod refused {
    use super::*;
    use std::os::unix::net::UnixListener;
    use ttsd::protocol::{read_frame, write_frame, ErrorCode, Reply, Request};

    /// A fake daemon that answers every handshake with `code`.
    fn refusing(code: ErrorCode, message: &'static str) -> (tempfile::TempDir, std::path::PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("fake.sock");
        let l = UnixListener::bind(&path).unwrap();
        std::thread::spawn(move || {
            for s in l.incoming() {
                let mut s = s.unwrap();
                let _: Option<Request> = read_frame(&mut s, 1 << 20).unwrap_or(None);
                let _ = write_frame(&mut s, &Reply::Error { id: None, code, message: message.into() });
            }
        });
        (dir, path)
    }

    #[test]
    fn a_daemon_of_another_protocol_version_is_named_with_the_fix() {
        let (_dir, path) = refusing(ErrorCode::UnsupportedVersion, "this daemon speaks protocol 2");
        let out = ttsctl(&path).args(["say", "hi", "-o", "-"]).output().unwrap();
        check(&out, 1);
        let err = text(&out.stderr);
        assert!(err.contains("unsupported_version: ") && err.contains("use the ttsctl built with the daemon"), "{err}");
        // The daemon answered: a failed request, not an unreachable daemon.
        check(&ttsctl(&path).arg("health").output().unwrap(), 1);
    }

    #[test]
    fn a_refused_user_is_told_how_to_get_access() {
        let (_dir, path) = refusing(ErrorCode::PermissionDenied, "this user may not use ttsd");
        let out = ttsctl(&path).arg("status").output().unwrap();
        check(&out, 1);
        let err = text(&out.stderr);
        assert!(err.contains("permission_denied: ") && err.contains("allowed_uids"), "{err}");
    }
}

mod inspect {
    use super::*;

    #[test]
    fn status_json_holds_per_worker_rss_and_restarts_and_the_rest_agrees() {
        let d = Daemon::start("workers = 2");
        d.wait_idle(2, Duration::from_secs(120));
        // A heartbeat with the RSS has arrived once a worker is idle; wait one more.
        std::thread::sleep(Duration::from_millis(250));
        let out = ttsctl(&d.socket).args(["status", "--json"]).output().unwrap();
        check(&out, 0);
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("status --json is JSON");
        let workers = v["workers"].as_array().unwrap();
        assert_eq!(workers.len(), 2);
        for w in workers {
            assert!(w["rss_bytes"].as_u64().unwrap() > 10 << 20, "{w}");
            assert_eq!(w["restarts"].as_u64(), Some(0), "{w}");
            assert!(w["pid"].as_u64().unwrap() > 0);
        }
        assert_eq!(v["state"], "ready");

        let out = ttsctl(&d.socket).arg("status").output().unwrap();
        check(&out, 0);
        let table = text(&out.stdout);
        for col in ["PID", "STATE", "JOBS", "RESTARTS", "RSS", "HEARTBEAT", "queue 0/64", "joe"] {
            assert!(table.contains(col), "{col} missing:\n{table}");
        }

        let out = ttsctl(&d.socket).arg("health").output().unwrap();
        check(&out, 0);
        assert_eq!(text(&out.stdout).trim(), "ready");

        let out = ttsctl(&d.socket).args(["voices", "--json"]).output().unwrap();
        check(&out, 0);
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(v["default_voice"], "joe");
        assert_eq!(v["voices"][0]["info"]["sample_rate"], 22050);
        check(&ttsctl(&d.socket).arg("voices").output().unwrap(), 0);

        let out = ttsctl(&d.socket).arg("metrics").output().unwrap();
        check(&out, 0);
        let m = text(&out.stdout);
        assert!(m.contains("# TYPE ttsd_worker_rss_bytes gauge"), "{m}");
        assert_eq!(m.lines().filter(|l| l.starts_with("ttsd_worker_rss_bytes{")).count(), 2, "{m}");
        assert!(m.contains("ttsd_state{state=\"ready\"} 1"), "{m}");
        assert!(m.contains("ttsd_requests_total{outcome=\"done\"}"), "{m}");
    }

    #[test]
    fn a_degraded_daemon_makes_health_exit_1_and_say_why() {
        let d = Daemon::start("voices = [{ name = \"ghost\", path = \"/nonexistent/ghost.onnx\" }]");
        let t = Instant::now();
        loop {
            let out = ttsctl(&d.socket).arg("health").output().unwrap();
            if text(&out.stdout).starts_with("degraded") {
                check(&out, 1);
                assert!(text(&out.stdout).contains("ghost"), "{}", text(&out.stdout));
                break;
            }
            assert_eq!(out.status.code(), Some(1), "starting is not ready either");
            assert!(t.elapsed() < Duration::from_secs(15), "never degraded");
            std::thread::sleep(Duration::from_millis(50));
        }
        let out = ttsctl(&d.socket).args(["say", "hi", "-o", "-"]).output().unwrap();
        check(&out, 1);
        assert!(text(&out.stderr).contains("ttsctl status"), "{}", text(&out.stderr));
    }
}

mod streaming {
    use super::*;

    const FIVE: &str = "The first sentence opens the paragraph with a few plain words. \
        The second one follows it and says a little more about the topic. \
        A third sentence keeps the listener waiting for the point to arrive. \
        The fourth sentence finally makes that point, clearly and slowly. \
        And the fifth sentence closes the paragraph, thanking everyone for listening.";

    #[test]
    fn first_audio_byte_comes_before_30_percent_of_the_last() {
        let d = daemon();
        // Warm the worker up so the measurement is of steady state.
        check(&ttsctl(&d.socket).args(["say", "Warm up, please.", "-o", "-"]).output().unwrap(), 0);
        let start = Instant::now();
        let mut child = ttsctl(&d.socket)
            .args(["say", FIVE, "-o", "-", "--quiet"])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut stdout = child.stdout.take().unwrap();
        let mut buf = vec![0u8; 1 << 16];
        let (mut total, mut first_audio, mut last) = (0usize, None, Duration::ZERO);
        loop {
            let n = stdout.read(&mut buf).unwrap();
            if n == 0 {
                break;
            }
            total += n;
            // The 44-byte WAV header goes out with the first chunk; count
            // the first byte of audio after it.
            if first_audio.is_none() && total > 44 {
                first_audio = Some(start.elapsed());
            }
            last = start.elapsed();
        }
        let out = child.wait_with_output().unwrap();
        check(&out, 0);
        let first = first_audio.expect("some audio");
        let audio_s = (total - 44) as f64 / 2.0 / 22050.0;
        println!(
            "5 sentences, {audio_s:.2} s of audio: first audio byte after {:.0} ms, last byte after {:.0} ms ({:.1}%)",
            first.as_secs_f64() * 1e3,
            last.as_secs_f64() * 1e3,
            100.0 * first.as_secs_f64() / last.as_secs_f64()
        );
        assert!(audio_s > 10.0, "five sentences make more audio than {audio_s} s");
        assert!(first.as_secs_f64() < 0.3 * last.as_secs_f64(), "first {first:?}, last {last:?}");
    }
}

mod activation {
    use super::*;
    use std::os::fd::AsRawFd;
    use std::os::unix::net::UnixListener;
    use std::os::unix::process::CommandExt;
    use ttsd::client::Client;

    use common::Stopped as Kill;

    #[test]
    fn ttsd_serves_a_listening_socket_passed_on_fd_3() {
        let dir = tempfile::tempdir().unwrap();
        // What systemd does for ttsd.socket: bind and listen, then start the
        // service with the socket on fd 3, LISTEN_FDS=1 and LISTEN_PID=its pid.
        let path = dir.path().join("activated.sock");
        let listener = UnixListener::bind(&path).unwrap();
        let cfg = dir.path().join("daemon.toml");
        std::fs::write(&cfg, config(dir.path(), "workers = 1")).unwrap();
        let configured = dir.path().join("ttsd.sock");
        let fd = listener.as_raw_fd();
        let mut cmd = Command::new("/bin/sh");
        // `exec` keeps the shell's pid, so $$ is ttsd's pid.
        cmd.args(["-c", "LISTEN_PID=$$ LISTEN_FDS=1 exec \"$0\" --config \"$1\""])
            .arg(env!("CARGO_BIN_EXE_ttsd"))
            .arg(&cfg)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.path().join("ttsd.log")).unwrap());
        // SAFETY: dup2 and fcntl are async-signal-safe.
        unsafe {
            cmd.pre_exec(move || {
                if fd == 3 {
                    // dup2(3, 3) would keep close-on-exec set.
                    if libc::fcntl(3, libc::F_SETFD, 0) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                } else if libc::dup2(fd, 3) != 3 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = Kill(cmd.spawn().unwrap());
        let log = || std::fs::read_to_string(dir.path().join("ttsd.log")).unwrap_or_default();
        let t = Instant::now();
        let mut c = loop {
            match Client::connect(&path) {
                Ok(c) => break c,
                Err(e) => assert!(t.elapsed() < Duration::from_secs(10), "{e}\n{}", log()),
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        c.health().unwrap();
        assert!(!configured.exists(), "ttsd bound its configured socket instead of the passed one\n{}", log());
        // The workers must not inherit the listening socket.
        let t = Instant::now();
        let s = loop {
            let s = c.status().unwrap();
            if !s.workers.is_empty() && s.state == ttsd::protocol::HealthState::Ready {
                break s;
            }
            assert!(t.elapsed() < Duration::from_secs(60), "no worker\n{}", log());
            std::thread::sleep(Duration::from_millis(50));
        };
        let worker = s.workers[0].pid;
        let fds = std::fs::read_dir(format!("/proc/{worker}/fd")).map(|d| d.count()).unwrap_or(0);
        if let Ok(target) = std::fs::read_link(format!("/proc/{worker}/fd/3")) {
            let ours = std::fs::read_link(format!("/proc/{}/fd/{fd}", std::process::id())).unwrap();
            assert_ne!(target, ours, "worker {worker} inherited the listening socket ({fds} fds)");
        }
        // ttsctl talks to it like to any daemon.
        let out = ttsctl(&path).arg("health").output().unwrap();
        check(&out, 0);
        drop(c);
        drop(child);
        assert!(path.exists(), "the launcher's socket file must survive ttsd's exit");
        assert!(log().contains(&path.display().to_string()), "{}", log());
    }
}

mod docs {
    use ttsd::protocol::{
        encode, HealthState, Input, MarkTiming, Reply, Request, SpeechOptions, SynthRequest, TimingLevel, WordTiming,
    };

    const SESSION_HEADING: &str = "## An annotated session, byte by byte";

    /// The hex bytes of each ``` block of PROTOCOL.md's annotated session:
    /// on every line, the leading two-digit hex tokens (the rest is annotation).
    fn blocks() -> Vec<Option<Vec<u8>>> {
        let all = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/PROTOCOL.md")).unwrap();
        let doc = &all[all.find(SESSION_HEADING).expect("PROTOCOL.md has the annotated session")..];
        let mut out = Vec::new();
        let mut cur: Option<(Vec<u8>, bool)> = None;
        for line in doc.lines() {
            if line.starts_with("```") {
                match cur.take() {
                    Some((bytes, exact)) => out.push(exact.then_some(bytes)),
                    None => cur = Some((Vec::new(), true)),
                }
                continue;
            }
            if let Some((bytes, exact)) = cur.as_mut() {
                for tok in line.split_whitespace() {
                    match u8::from_str_radix(tok, 16) {
                        Ok(b) if tok.len() == 2 => bytes.push(b),
                        _ => {
                            // Elided audio or placeholders: not comparable.
                            if tok == "…" || tok.starts_with('<') || tok == "LL" {
                                *exact = false;
                            }
                            break;
                        }
                    }
                }
            }
        }
        out
    }

    #[test]
    fn the_hex_dumps_in_protocol_examples_are_what_the_encoder_writes() {
        let b = blocks();
        let hex = |i: usize| b[i].clone().unwrap_or_else(|| panic!("block {i} is not exact"));
        let synth = Request::Synthesize(SynthRequest {
            id: 1,
            input: Input::Text("Hi.".into()),
            seed: Some(7),
            stream: true,
            ..SynthRequest::text("")
        });
        let done = Reply::Done {
            id: 1,
            audio_seconds: f64::from_bits(0x3fe1_1702_cf42_e58d),
            queue_ms: 0,
            synth_ms: 3440,
            worker_pid: 15234,
            retried: false,
        };
        let open = Request::OpenText {
            req: SynthRequest {
                id: 1,
                input: Input::Text("Hel".into()),
                seed: Some(7),
                stream: true,
                ..SynthRequest::text("")
            },
            opts: SpeechOptions { timings: TimingLevel::Words, ssml: false },
        };
        let timings = Reply::Timings {
            id: 1,
            words: vec![WordTiming { text_start: 0, text_end: 5, word: "Hello".into(), start: 2816, end: 8960 }],
            phonemes: vec![],
            marks: vec![MarkTiming { name: "m".into(), sample: 2816 }],
        };
        let cases: Vec<(usize, Vec<u8>)> = vec![
            (0, encode(&Request::Hello { version: 1, client: "ex".into() }).unwrap()),
            (1, encode(&Reply::HelloOk { version: 1, server: "ttsd 0.1.0".into() }).unwrap()),
            (2, encode(&synth).unwrap()),
            (3, encode(&Reply::Queued { id: 1, position: 0 }).unwrap()),
            (6, encode(&done).unwrap()),
            (8, encode(&Request::Health).unwrap()),
            (9, encode(&Reply::Health { state: HealthState::Ready, reason: None }).unwrap()),
            (10, encode(&open).unwrap()),
            (11, encode(&Request::AppendText { id: 1, text: "lo. Bye".into() }).unwrap()),
            (12, encode(&Request::FinishText { id: 1 }).unwrap()),
            (13, encode(&timings).unwrap()),
        ];
        for (i, bytes) in cases {
            assert_eq!(hex(i), bytes, "block {i} of PROTOCOL.md's annotated session");
        }
        assert!(b[4].is_none() && b[7].is_none(), "elided blocks are recognised");
    }
}

/// `say --follow`, `--timings`, `--subtitles` and `--ssml` (protocol version 2).
mod follow_and_timings {
    use super::*;
    use std::io::{BufRead, BufReader, Write};

    const PARAGRAPH: &str =
        "The first sentence is here. A second one follows it, with a comma. And the third ends the paragraph.";

    fn python() -> String {
        Path::new(env!("CARGO_MANIFEST_DIR")).join(".deps/venv/bin/python").display().to_string()
    }

    #[test]
    fn follow_speaks_the_first_sentence_while_the_writer_is_still_writing() {
        let d = daemon();
        let mut child = ttsctl(&d.socket)
            .args(["say", "--follow", "--raw", "-o", "-", "--noise-scale", "0", "--noise-w", "0", "--seed", "1"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut stdin = child.stdin.take().unwrap();
        let mut stdout = child.stdout.take().unwrap();
        // A sentence and the start of the next, cut inside a word.
        stdin.write_all(b"The first sentence is complete. And the sec").unwrap();
        stdin.flush().unwrap();
        let mut first = [0u8; 4096];
        let n = stdout.read(&mut first).unwrap();
        assert!(n > 0, "audio arrived while stdin was still open");
        // Only now the rest, cut inside a multi-byte character.
        let rest = "ond one ends here, café.".as_bytes();
        let cut = rest.len() - 2;
        stdin.write_all(&rest[..cut]).unwrap();
        stdin.flush().unwrap();
        std::thread::sleep(Duration::from_millis(200));
        stdin.write_all(&rest[cut..]).unwrap();
        drop(stdin);
        let mut audio = first[..n].to_vec();
        stdout.read_to_end(&mut audio).unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success(), "{}", text(&out.stderr));
        // The same text said at once gives the same audio.
        let once = ttsctl(&d.socket)
            .args(["say", "--raw", "-o", "-", "--noise-scale", "0", "--noise-w", "0", "--seed", "1"])
            .arg("The first sentence is complete. And the second one ends here, café.")
            .output()
            .unwrap();
        check(&once, 0);
        assert_eq!(audio.len(), once.stdout.len(), "followed and whole differ in length");
        assert!(audio == once.stdout, "followed and whole audio differ");
    }

    #[test]
    fn follow_wants_stdin_not_a_text_argument() {
        let d = daemon();
        let out = ttsctl(&d.socket).args(["say", "--follow", "Hello", "-o", "-"]).output().unwrap();
        check(&out, 64);
        assert!(text(&out.stderr).contains("--follow reads the text from stdin"), "{}", text(&out.stderr));
    }

    #[test]
    fn timings_are_json_lines_of_the_words_inside_the_audio() {
        let d = daemon();
        let rate = voice_rate(&d);
        let wav = d.dir.path().join("t.wav");
        let jsonl = d.dir.path().join("t.jsonl");
        let out =
            ttsctl(&d.socket).args(["say", PARAGRAPH, "-o"]).arg(&wav).arg("--timings").arg(&jsonl).output().unwrap();
        check(&out, 0);
        let samples = assert_speech(&wav, rate);
        let seconds = samples as f64 / rate as f64;
        let lines: Vec<serde_json::Value> = BufReader::new(std::fs::File::open(&jsonl).unwrap())
            .lines()
            .map(|l| serde_json::from_str(&l.unwrap()).unwrap())
            .collect();
        let words: Vec<&str> = lines.iter().filter_map(|l| l["word"].as_str()).collect();
        let expected: Vec<&str> =
            PARAGRAPH.split_whitespace().map(|w| w.trim_matches(|c: char| !c.is_alphanumeric())).collect();
        assert_eq!(words, expected);
        let mut last = 0.0;
        for l in &lines {
            let (s, e) = (l["start"].as_f64().unwrap(), l["end"].as_f64().unwrap());
            assert!(s >= last && s < e && e <= seconds + 1e-6, "{l}");
            last = e;
            let (a, b) = (l["text_start"].as_u64().unwrap() as usize, l["text_end"].as_u64().unwrap() as usize);
            assert_eq!(&PARAGRAPH[a..b], l["word"].as_str().unwrap(), "ASCII text: char offsets are byte offsets");
        }
    }

    #[test]
    fn subtitles_are_read_by_third_party_parsers() {
        let d = daemon();
        for (name, check_py) in [
            ("s.srt", "import srt,sys; c=list(srt.parse(open(sys.argv[1]).read())); assert c, 'no cues'; print(len(c), c[-1].end.total_seconds())"),
            ("s.vtt", "import webvtt,sys; c=list(webvtt.read(sys.argv[1])); assert c, 'no cues'; print(len(c), c[-1].end_in_seconds)"),
        ] {
            let subs = d.dir.path().join(name);
            let wav = d.dir.path().join("s.wav");
            let out = ttsctl(&d.socket).args(["say", PARAGRAPH, "-o"]).arg(&wav).arg("--subtitles").arg(&subs).output().unwrap();
            check(&out, 0);
            let parsed = Command::new(python()).args(["-c", check_py]).arg(&subs).output().unwrap();
            assert!(parsed.status.success(), "{name} did not parse: {}\n{}", text(&parsed.stderr), std::fs::read_to_string(&subs).unwrap());
            let said = text(&parsed.stdout);
            let mut it = said.split_whitespace();
            let cues: usize = it.next().unwrap().parse().unwrap();
            let end: f64 = it.next().unwrap().parse().unwrap();
            assert!(cues >= 3, "{name}: {cues} cues for three sentences");
            let (_, _, rate, samples) = read_wav(&wav);
            assert!(end <= samples.len() as f64 / rate as f64 + 0.001, "{name}: a cue ends after the audio");
        }
        let out = ttsctl(&d.socket).args(["say", "Hi", "-o", "-", "--subtitles", "x.txt"]).output().unwrap();
        check(&out, 64);
        assert!(text(&out.stderr).contains(".srt"), "{}", text(&out.stderr));
    }

    #[test]
    fn a_failed_request_leaves_existing_timings_and_subtitles_files_alone() {
        let d = daemon();
        let jsonl = d.dir.path().join("keep.jsonl");
        let srt = d.dir.path().join("keep.srt");
        std::fs::write(&jsonl, "precious").unwrap();
        std::fs::write(&srt, "precious").unwrap();
        let out = ttsctl(&d.socket)
            .args(["say", "Hello", "-o", "-", "--voice", "nobody"])
            .arg("--timings")
            .arg(&jsonl)
            .arg("--subtitles")
            .arg(&srt)
            .stdout(Stdio::null())
            .output()
            .unwrap();
        check(&out, 1);
        assert_eq!(std::fs::read_to_string(&jsonl).unwrap(), "precious");
        assert_eq!(std::fs::read_to_string(&srt).unwrap(), "precious");
    }

    #[test]
    fn ssml_marks_go_to_the_timings_file() {
        let d = daemon();
        let jsonl = d.dir.path().join("m.jsonl");
        let out = ttsctl(&d.socket)
            .args([
                "say",
                "--ssml",
                "<speak>Hello <mark name=\"here\"/>world.<break time=\"200ms\"/></speak>",
                "-o",
                "-",
            ])
            .arg("--timings")
            .arg(&jsonl)
            .stdout(Stdio::null())
            .output()
            .unwrap();
        check(&out, 0);
        let body = std::fs::read_to_string(&jsonl).unwrap();
        let marks: Vec<serde_json::Value> = body
            .lines()
            .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
            .filter(|v| v.get("mark").is_some())
            .collect();
        assert_eq!(marks.len(), 1, "{body}");
        assert_eq!(marks[0]["mark"], "here");
        let world = body
            .lines()
            .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
            .find(|v| v["word"] == "world")
            .unwrap();
        assert_eq!(marks[0]["sample"], world["start_sample"], "the mark falls where 'world' starts");
        let bad = ttsctl(&d.socket)
            .args(["say", "--ssml", "<speak>Broken</p>", "-o", "-"])
            .stdout(Stdio::null())
            .output()
            .unwrap();
        check(&bad, 1);
        assert!(text(&bad.stderr).contains("SSML"), "{}", text(&bad.stderr));
    }
}
