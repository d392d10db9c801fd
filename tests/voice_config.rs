//! Issue 15, voices that cannot load: a real daemon with the real voice and
//! broken copies of it. A bad voice is reported in status and answers
//! `unavailable` with its reason; the good voices keep serving.
//!
//! The broken voices are copies in a temporary directory; it never writes
//! to voices/ and must not rely on how long loading takes (waits poll up to
//! 120 s).
mod common;

use common::*;
use std::path::{Path, PathBuf};
use std::time::Duration;
use ttsd::protocol::{ErrorCode, HealthState, SynthRequest, VoiceLoadState};

/// `dir/NAME.onnx` (a link to the bundled model) with `json` as its config.
fn voice_copy(dir: &Path, name: &str, json: &str) -> PathBuf {
    let onnx = dir.join(format!("{name}.onnx"));
    std::os::unix::fs::symlink(voice_path(), &onnx).unwrap();
    std::fs::write(dir.join(format!("{name}.onnx.json")), json).unwrap();
    onnx
}

/// Issue 15: one voice that did not load made every worker exit, so the
/// daemon went `degraded` and the good voice answered `unavailable` too;
/// and a config whose defaults were out of range loaded as "loaded", then
/// failed every request with a `bad_request` that blamed the client.
#[test]
fn one_bad_voice_degrades_only_itself() {
    let dir = tempfile::tempdir().unwrap();
    let good = std::fs::read_to_string(format!("{}.json", voice_path().display())).unwrap();
    let mut slow: serde_json::Value = serde_json::from_str(&good).unwrap();
    slow["inference"]["length_scale"] = 25.into();
    let broken = voice_copy(dir.path(), "broken", "{ \"audio\": ");
    let slow = voice_copy(dir.path(), "slow", &slow.to_string());
    let zero = dir.path().join("zero.onnx");
    std::os::unix::fs::symlink("/dev/zero", &zero).unwrap();
    std::fs::write(dir.path().join("zero.onnx.json"), &good).unwrap();
    let voices = format!(
        "voices = [{{ name = \"joe\", path = {:?} }}, {{ name = \"broken\", path = {:?} }}, \
         {{ name = \"slow\", path = {:?} }}, {{ name = \"zero\", path = {:?} }}]",
        voice_path().display().to_string(),
        broken.display().to_string(),
        slow.display().to_string(),
        zero.display().to_string()
    );
    let d = Daemon::start(&voices);
    let s = d.wait_idle(2, Duration::from_secs(120));
    assert_eq!(s.state, HealthState::Ready);

    let state = |name: &str| s.voices.iter().find(|v| v.name == name).unwrap().clone();
    assert_eq!(state("joe").state, VoiceLoadState::Loaded);
    for (name, why) in [
        ("broken", "not valid JSON"),
        ("slow", "inference.length_scale must be a number in (0, 20], not 25"),
        ("zero", "character device, not a regular file"),
    ] {
        let v = state(name);
        assert_eq!(v.state, VoiceLoadState::Failed, "{v:?}");
        let error = v.error.unwrap_or_default();
        assert!(error.contains(why), "{name}: {error}");
        let err = d
            .client()
            .say(SynthRequest { voice: Some(name.into()), ..req(SHORT) }, &mut |_, _| {})
            .unwrap_err();
        assert_eq!(err.code(), Some(ErrorCode::Unavailable), "{name}: {err}");
        assert!(err.to_string().contains(why), "{name}: {err}");
    }

    let (done, rate, samples) = d.client().say_collect(req(SHORT)).unwrap();
    assert_valid_audio(rate, &samples, done.audio_seconds);
    let s = d.status();
    assert_eq!(s.worker_restarts, 0, "a bad voice cost a worker: {s:#?}");
    assert_eq!(d.client().health().unwrap().0, HealthState::Ready);
}

/// With no voice loadable the daemon is degraded, as before, and says why.
#[test]
fn no_loadable_voice_still_degrades_the_daemon() {
    let dir = tempfile::tempdir().unwrap();
    let broken = voice_copy(dir.path(), "broken", "{ \"audio\": ");
    let d = Daemon::start(&format!("voices = [{{ name = \"broken\", path = {:?} }}]", broken.display().to_string()));
    let t = std::time::Instant::now();
    loop {
        let (state, reason) = d.client().health().unwrap();
        if state == HealthState::Degraded {
            assert!(reason.unwrap_or_default().contains("not valid JSON"));
            break;
        }
        assert!(t.elapsed() < Duration::from_secs(120), "not degraded: {state:?} {reason:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
    let err = d.client().say(req(SHORT), &mut |_, _| {}).unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::Unavailable), "{err}");
}
