//! scripts/ttsd_client.py (Python standard library only) against a real
//! daemon: it must speak the protocol well enough to make a WAV and to
//! decode the status reply field for field like the Rust client does.
//! python3 is a requirement of the project (scripts/setup installs it), so a
//! missing python3 fails this test rather than skipping it.
//!
//! Version 2 too: word timings and SSML marks written as JSON lines, and
//! text followed from standard input as it is written.
//!
//! Never installs Python packages or relies on anything beyond the standard
//! library; compares fields with the Rust client, and audio bytes only
//! between two runs of the Python client itself (same seed, no noise).
mod common;

use common::*;
use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn python3() -> String {
    let out = Command::new("python3").arg("--version").output().expect("python3 is required (scripts/setup installs it)");
    assert!(out.status.success(), "python3 --version failed");
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

fn client(socket: &Path) -> Command {
    let mut c = Command::new("python3");
    c.arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/ttsd_client.py"))
        .arg("--socket")
        .arg(socket)
        .stdin(Stdio::null());
    c
}

/// The keys of a JSON object, sorted.
fn keys(v: &serde_json::Value) -> Vec<String> {
    let mut k: Vec<String> = v.as_object().expect("an object").keys().cloned().collect();
    k.sort();
    k
}

#[test]
fn python_client_says_hello_into_a_wav_and_prints_status_json() {
    let version = python3();
    eprintln!("using {version}");
    let d = Daemon::start("workers = 1");
    d.wait_idle(1, Duration::from_secs(120));

    let wav = d.dir.path().join("out.wav");
    let out = client(&d.socket).args(["say", "Hello"]).arg(&wav).output().unwrap();
    check(&out, 0);
    let mut r = hound::WavReader::open(&wav).unwrap();
    let spec = r.spec();
    assert_eq!((spec.channels, spec.bits_per_sample, spec.sample_rate), (1, 16, 22050));
    let samples: Vec<i16> = r.samples::<i16>().map(Result::unwrap).collect();
    assert!(samples.len() > 22050 / 4, "only {} samples", samples.len());
    assert!(samples.iter().map(|s| s.unsigned_abs()).max().unwrap() > 500, "silence");

    let out = client(&d.socket).arg("status").output().unwrap();
    check(&out, 0);
    let py: serde_json::Value = serde_json::from_slice(&out.stdout).expect("status is JSON");
    let rust = serde_json::to_value(d.status()).unwrap();
    // Same shape as the Rust client's serde JSON, field for field.
    assert_eq!(keys(&py), keys(&rust));
    assert_eq!(keys(&py["workers"][0]), keys(&rust["workers"][0]));
    assert_eq!(keys(&py["voices"][0]), keys(&rust["voices"][0]));
    assert_eq!(py["voices"], rust["voices"]);
    assert_eq!(py["pid"], rust["pid"]);
    assert_eq!(py["workers"][0]["pid"], rust["workers"][0]["pid"]);
    assert!(py["workers"][0]["rss_bytes"].as_u64().unwrap() > 0);
    assert!(py["totals"]["done"].as_u64().unwrap() >= 1, "{}", py["totals"]);

    let out = client(&d.socket).arg("health").output().unwrap();
    check(&out, 0);

    // Errors are reported, not tracebacks: an unknown voice, and no daemon.
    let out = client(&d.socket).args(["say", "Hi", "--voice", "nobody"]).arg(&wav).output().unwrap();
    check(&out, 1);
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown_voice"));
    let out = client(&d.dir.path().join("nothing.sock")).arg("status").output().unwrap();
    check(&out, 2);
    assert!(String::from_utf8_lossy(&out.stderr).contains("not running"));
}

/// A mono 16-bit 22.05 kHz WAV's samples.
fn wav_samples(path: &Path) -> Vec<i16> {
    let mut r = hound::WavReader::open(path).unwrap();
    let spec = r.spec();
    assert_eq!((spec.channels, spec.bits_per_sample, spec.sample_rate), (1, 16, 22050), "{}", path.display());
    r.samples::<i16>().map(Result::unwrap).collect()
}

/// Plausible speech: at least `min_s` seconds, not silence.
fn assert_speech(samples: &[i16], min_s: f64) {
    assert!(samples.len() as f64 > min_s * 22050.0, "only {} samples", samples.len());
    let peak = samples.iter().map(|s| s.unsigned_abs()).max().unwrap();
    assert!(peak > 1000, "peak {peak}: silence");
}

/// Each line of a JSON-lines file, parsed.
fn json_lines(path: &Path) -> Vec<serde_json::Value> {
    let text = std::fs::read_to_string(path).unwrap();
    assert!(text.ends_with('\n'), "not newline-terminated: {text:?}");
    text.lines().map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l:?}"))).collect()
}

/// The written words of `text`, as the daemon reports them: leading and
/// trailing punctuation is not part of a word.
fn written_words(text: &str) -> Vec<&str> {
    text.split_whitespace().map(|w| w.trim_matches(|c: char| !c.is_alphanumeric())).collect()
}

/// The characters `[a, b)` of `text` (offsets are in Unicode scalars).
fn chars(text: &str, a: &serde_json::Value, b: &serde_json::Value) -> String {
    let (a, b) = (a.as_u64().unwrap() as usize, b.as_u64().unwrap() as usize);
    text.chars().skip(a).take(b - a).collect()
}

#[test]
fn python_say_timings_writes_monotonic_words_inside_the_audio() {
    python3();
    let d = Daemon::start("workers = 1");
    d.wait_idle(1, Duration::from_secs(120));
    const TEXT: &str = "The quick brown fox jumps over the lazy dog. It was not amused, at all!";
    let wav = d.dir.path().join("t.wav");
    let jsonl = d.dir.path().join("t.jsonl");
    let out = client(&d.socket).args(["say", TEXT]).arg(&wav).arg("--timings").arg(&jsonl).output().unwrap();
    check(&out, 0);
    let samples = wav_samples(&wav);
    assert_speech(&samples, 2.0);
    let total = samples.len() as u64;
    let lines = json_lines(&jsonl);
    let said: Vec<&str> = lines.iter().map(|l| l["word"].as_str().unwrap()).collect();
    assert_eq!(said, written_words(TEXT));
    let mut last_end = 0;
    for l in &lines {
        assert_eq!(
            chars(TEXT, &l["text_start"], &l["text_end"]),
            l["word"].as_str().unwrap(),
            "offsets point at the word: {l}"
        );
        let (s, e) = (l["start_sample"].as_u64().unwrap(), l["end_sample"].as_u64().unwrap());
        assert!(s < e && s >= last_end && e <= total, "{l} (audio: {total})");
        last_end = e;
        // Seconds are the samples at the WAV's rate.
        for (secs, n) in [(&l["start"], s), (&l["end"], e)] {
            let secs = secs.as_f64().unwrap();
            assert!((secs - n as f64 / 22050.0).abs() < 1e-5, "{l}");
        }
    }
    assert!(last_end * 10 > total * 7, "the words end long before the audio: {last_end} of {total}");

    // A failed request leaves both files as they were.
    let before = std::fs::read(&jsonl).unwrap();
    let out = client(&d.socket)
        .args(["say", "Other words.", "--voice", "nobody"])
        .arg(&wav)
        .arg("--timings")
        .arg(&jsonl)
        .output()
        .unwrap();
    check(&out, 1);
    assert!(text(&out.stderr).contains("unknown_voice"), "{}", text(&out.stderr));
    assert_eq!(std::fs::read(&jsonl).unwrap(), before);
    assert_eq!(wav_samples(&wav), samples);
}

#[test]
fn python_say_follow_speaks_stdin_as_written_like_the_whole_text() {
    python3();
    let d = Daemon::start("workers = 1");
    d.wait_idle(1, Duration::from_secs(120));
    // The second write starts inside "é" (two bytes in UTF-8): the client
    // must not send half a character.
    const FIRST: &[u8] = b"The first sentence is complete. And the caf\xc3";
    const REST: &[u8] = b"\xa9 opens at nine, they say.\n";
    let whole = String::from_utf8([FIRST, REST].concat()).unwrap();
    let quiet = ["--seed", "7", "--noise-scale", "0", "--noise-w", "0"];

    let at_once = d.dir.path().join("whole.wav");
    let out = client(&d.socket).args(["say", &whole]).arg(&at_once).args(quiet).output().unwrap();
    check(&out, 0);

    let followed = d.dir.path().join("follow.wav");
    let jsonl = d.dir.path().join("follow.jsonl");
    let mut child = client(&d.socket)
        .args(["say", "--follow", "-"])
        .arg(&followed)
        .args(quiet)
        .arg("--timings")
        .arg(&jsonl)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(FIRST).unwrap();
    stdin.flush().unwrap();
    // The first sentence is spoken while the input is still open: its
    // audio reaches the WAV's temporary file before the rest is written.
    let t = Instant::now();
    let spoken_early = || {
        std::fs::read_dir(d.dir.path()).unwrap().any(|e| {
            let e = e.unwrap();
            let name = e.file_name().to_string_lossy().into_owned();
            name.starts_with(".follow.wav.") && e.metadata().unwrap().len() > 0
        })
    };
    while !spoken_early() {
        assert!(t.elapsed() < Duration::from_secs(30), "no audio while the input was open");
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_millis(1500).saturating_sub(t.elapsed()));
    assert!(child.try_wait().unwrap().is_none(), "the client ended before its input did");
    stdin.write_all(REST).unwrap();
    drop(stdin);
    let out = child.wait_with_output().unwrap();
    check(&out, 0);

    let a = wav_samples(&at_once);
    let f = wav_samples(&followed);
    assert_speech(&f, 2.0);
    assert_eq!(f.len(), a.len(), "followed and whole differ in length");
    assert!(f == a, "followed text gives other audio than the whole text");
    // Offsets count all pieces together.
    let lines = json_lines(&jsonl);
    let said: Vec<&str> = lines.iter().map(|l| l["word"].as_str().unwrap()).collect();
    assert_eq!(said, written_words(&whole));
    let cafe = lines.iter().find(|l| l["word"] == "café").unwrap();
    assert_eq!(chars(&whole, &cafe["text_start"], &cafe["text_end"]), "café");

    // --follow takes its text from stdin only.
    let out = client(&d.socket).args(["say", "--follow", "Hello"]).arg(&followed).output().unwrap();
    check(&out, 64);
    assert!(text(&out.stderr).contains("give - as TEXT"), "{}", text(&out.stderr));
}

#[test]
fn python_say_ssml_writes_its_marks() {
    python3();
    let d = Daemon::start("workers = 1");
    d.wait_idle(1, Duration::from_secs(120));
    const SSML: &str =
        r#"<speak>Hello <mark name="here"/>world. <break time="200ms"/>Good <mark name="last"/>bye.</speak>"#;
    let wav = d.dir.path().join("s.wav");
    let jsonl = d.dir.path().join("s.jsonl");
    let out = client(&d.socket).args(["say", "--ssml", SSML]).arg(&wav).arg("--timings").arg(&jsonl).output().unwrap();
    check(&out, 0);
    let samples = wav_samples(&wav);
    assert_speech(&samples, 1.0);
    let lines = json_lines(&jsonl);
    let marks: Vec<&serde_json::Value> = lines.iter().filter(|l| l.get("mark").is_some()).collect();
    let names: Vec<&str> = marks.iter().map(|m| m["mark"].as_str().unwrap()).collect();
    assert_eq!(names, ["here", "last"], "{lines:?}");
    let word = |w: &str| lines.iter().find(|l| l["word"] == w).unwrap_or_else(|| panic!("no word {w}: {lines:?}"));
    // A mark falls where the word after it starts, and comes right before it.
    for (m, w) in [(marks[0], "world"), (marks[1], "bye")] {
        assert_eq!(m["sample"], word(w)["start_sample"], "{m}");
        let secs = m["time"].as_f64().unwrap();
        assert!((secs - m["sample"].as_u64().unwrap() as f64 / 22050.0).abs() < 1e-5);
        let at = lines.iter().position(|l| l == m).unwrap();
        assert_eq!(lines[at + 1]["word"], w, "{lines:?}");
    }
    assert!(marks[1]["sample"].as_u64().unwrap() < samples.len() as u64);
    // Offsets are in the markup.
    let w = word("world");
    assert_eq!(chars(SSML, &w["text_start"], &w["text_end"]), "world");
    let said: Vec<&str> = lines.iter().filter_map(|l| l["word"].as_str()).collect();
    assert_eq!(said, ["Hello", "world", "Good", "bye"]);

    // Bad markup is the daemon's clear bad_request, not a traceback.
    let out = client(&d.socket).args(["say", "--ssml", "<speak>Hello <b>there</speak>"]).arg(&wav).output().unwrap();
    check(&out, 1);
    assert!(text(&out.stderr).contains("bad_request"), "{}", text(&out.stderr));
}
