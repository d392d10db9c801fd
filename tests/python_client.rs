//! scripts/ttsd_client.py (Python standard library only) against a real
//! daemon: it must speak the protocol well enough to make a WAV and to
//! decode the status reply field for field like the Rust client does.
//! python3 is a requirement of the project (scripts/setup installs it), so a
//! missing python3 fails this test rather than skipping it.
//!
//! Never installs Python packages or relies on anything beyond the standard
//! library; compares fields with the Rust client, never exact audio bytes.
mod common;

use common::*;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

fn python3() -> String {
    let out = Command::new("python3")
        .arg("--version")
        .output()
        .expect("python3 is required (scripts/setup installs it)");
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
    let out = client(&d.socket)
        .args(["say", "Hello"])
        .arg(&wav)
        .output()
        .unwrap();
    check(&out, 0);
    let mut r = hound::WavReader::open(&wav).unwrap();
    let spec = r.spec();
    assert_eq!(
        (spec.channels, spec.bits_per_sample, spec.sample_rate),
        (1, 16, 22050)
    );
    let samples: Vec<i16> = r.samples::<i16>().map(Result::unwrap).collect();
    assert!(samples.len() > 22050 / 4, "only {} samples", samples.len());
    assert!(
        samples.iter().map(|s| s.unsigned_abs()).max().unwrap() > 500,
        "silence"
    );

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
    assert!(
        py["totals"]["done"].as_u64().unwrap() >= 1,
        "{}",
        py["totals"]
    );

    let out = client(&d.socket).arg("health").output().unwrap();
    check(&out, 0);

    // Errors are reported, not tracebacks: an unknown voice, and no daemon.
    let out = client(&d.socket)
        .args(["say", "Hi", "--voice", "nobody"])
        .arg(&wav)
        .output()
        .unwrap();
    check(&out, 1);
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown_voice"));
    let out = client(&d.dir.path().join("nothing.sock"))
        .arg("status")
        .output()
        .unwrap();
    check(&out, 2);
    assert!(String::from_utf8_lossy(&out.stderr).contains("not running"));
}
