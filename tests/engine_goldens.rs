//! Fidelity of the MLX engine against the reference runtime's tensors
//! (`tests/data/goldens/joe-medium`, made by the reference Piper with noise
//! off): prior mean/log-std, frame counts and audio, per golden sentence.
//! Also: windowed decoding equals whole-sentence decoding, streaming and
//! cancellation behave, and broken voice files give errors, not panics.
//!
//! Runs without libtest's harness (`harness = false`): the engine must only
//! be called on a process's main thread (asserted in test builds), and
//! libtest runs every test on a thread of its own. `main` runs the tests in
//! turn on the main thread and reports like libtest.
//!
//! Compares within tolerances (relative error, correlation, max
//! difference), never bit-exact audio against the reference, and never
//! asserts time; it must not call the engine off the main thread.
use std::path::{Path, PathBuf};

use ttsd::engine::{Chunk, Engine, EngineError, SynthInput, SynthParams, Voice};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn voice_path() -> PathBuf {
    root().join("voices/en_US-joe-medium.onnx")
}

struct Case {
    file: String,
    ids: Vec<i64>,
    length_scale: f32,
}

fn cases() -> Vec<Case> {
    let dir = root().join("tests/data/goldens/joe-medium");
    let index: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(dir.join("index.json")).unwrap()).unwrap();
    index
        .as_array()
        .unwrap()
        .iter()
        .map(|c| Case {
            file: dir.join(c["file"].as_str().unwrap()).display().to_string(),
            ids: c["phoneme_ids"].as_array().unwrap().iter().map(|v| v.as_i64().unwrap()).collect(),
            length_scale: c["length_scale"].as_f64().unwrap() as f32,
        })
        .collect()
}

fn golden(file: &str, name: &str) -> Vec<f32> {
    let bytes = std::fs::read(file).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let t = st.tensor(name).unwrap();
    t.data().chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect()
}

/// Golden `[1, C, N]` to our `[N, C]` layout.
fn channels_last(v: &[f32], c: usize) -> Vec<f32> {
    let n = v.len() / c;
    (0..n).flat_map(|t| (0..c).map(move |ch| v[ch * n + t])).collect()
}

fn rel_err(got: &[f32], want: &[f32]) -> f64 {
    assert_eq!(got.len(), want.len());
    let num: f64 = got.iter().zip(want).map(|(a, b)| ((a - b) as f64).powi(2)).sum();
    let den: f64 = want.iter().map(|b| (*b as f64).powi(2)).sum();
    (num / den.max(1e-30)).sqrt()
}

fn correlation(a: &[f32], b: &[f32]) -> f64 {
    let n = a.len().min(b.len());
    let (ma, mb) = (a[..n].iter().map(|&v| v as f64).sum::<f64>() / n as f64, b[..n].iter().map(|&v| v as f64).sum::<f64>() / n as f64);
    let (mut sab, mut saa, mut sbb) = (0.0, 0.0, 0.0);
    for i in 0..n {
        let (x, y) = (a[i] as f64 - ma, b[i] as f64 - mb);
        sab += x * y;
        saa += x * x;
        sbb += y * y;
    }
    sab / (saa * sbb).sqrt().max(1e-30)
}

fn noise_off(length_scale: f32) -> SynthParams {
    SynthParams { noise_scale: 0.0, noise_w: 0.0, length_scale, seed: Some(0), ..Default::default() }
}

fn every_golden_case_matches_the_reference() {
    let voice = Voice::load("joe", &voice_path()).expect("bundled voice loads");
    let c = voice.model().config.inter_channels;
    let (mut same_frames, mut total) = (0, 0);
    for case in cases() {
        total += 1;
        let enc = voice.model().enc_p.forward(&case.ids).unwrap();
        let m_p = ttsd::engine::vits::ops::to_vec(&enc.m_p).unwrap();
        let logs_p = ttsd::engine::vits::ops::to_vec(&enc.logs_p).unwrap();
        let e_m = rel_err(&m_p, &channels_last(&golden(&case.file, "m_p"), c));
        let e_l = rel_err(&logs_p, &channels_last(&golden(&case.file, "logs_p"), c));
        assert!(e_m < 1e-3 && e_l < 1e-3, "{}: m_p rel err {e_m:.2e}, logs_p {e_l:.2e}", case.file);

        let (durations, _z, audio) = voice.render_ids(&case.ids, &noise_off(case.length_scale)).unwrap();
        let want_w: Vec<u32> = golden(&case.file, "w_ceil").iter().map(|&v| v as u32).collect();
        let want_audio = golden(&case.file, "audio");
        if durations == want_w {
            same_frames += 1;
            assert_eq!(audio.len(), want_audio.len(), "{}", case.file);
            let corr = correlation(&audio, &want_audio);
            let max_diff = audio.iter().zip(&want_audio).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
            eprintln!("{}: frames match, m_p {e_m:.1e}, logs_p {e_l:.1e}, audio correlation {corr:.6}, max |diff| {max_diff:.1e}", case.file);
            assert!(corr >= 0.999, "{}: audio correlation {corr}", case.file);
        } else {
            let diff: Vec<_> = durations.iter().zip(&want_w).enumerate().filter(|(_, (a, b))| a != b).collect();
            eprintln!("{}: frame counts differ at {diff:?}", case.file);
        }
    }
    eprintln!("identical frame counts in {same_frames} of {total} cases");
    assert!(same_frames >= 13.min(total), "identical frame counts in only {same_frames} of {total}");
}

fn windowed_decoding_equals_whole_sentence_decoding() {
    let voice = Voice::load("joe", &voice_path()).unwrap();
    let case = cases().into_iter().max_by_key(|c| c.ids.len()).unwrap();
    let (_, z, whole) = voice.render_ids(&case.ids, &noise_off(1.0)).unwrap();
    let frames = z.shape()[0] as usize;
    let mut stitched = Vec::new();
    let mut start = 0;
    for len in [7usize, 24, 50].iter().cycle() {
        if start >= frames {
            break;
        }
        let end = (start + len).min(frames);
        let w = voice.model().decode_window(&z, start, end, None, &|| false).unwrap();
        stitched.extend(ttsd::engine::vits::ops::to_vec(&w).unwrap());
        start = end;
    }
    assert_eq!(stitched.len(), whole.len());
    let max_diff = stitched.iter().zip(&whole).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
    assert!(max_diff < 1e-4, "stitched audio differs from whole decoding by up to {max_diff}");

    // The streamed first chunk runs the flow on its frames and their context only.
    let prior = voice.model().prior(&case.ids, None, ttsd::engine::vits::Sampling::noiseless(1.0), &|| false).unwrap();
    let ctx = voice.model().dec.context_frames();
    let head = voice.model().flow_head(&prior.z_p, 24 + ctx, None, &|| false).unwrap();
    let first = ttsd::engine::vits::ops::to_vec(&voice.model().decode_window(&head, 0, 24, None, &|| false).unwrap()).unwrap();
    let head_diff = first.iter().zip(&whole).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
    assert!(head_diff < 1e-4, "first streamed chunk differs from whole decoding by up to {head_diff}");
}

/// Spreading the flow's windows and the decoder's tiles over several MLX
/// streams (lanes) must not change the audio.
fn lanes_leave_the_audio_unchanged() {
    let voice = Voice::load("joe", &voice_path()).unwrap();
    let cases = cases();
    let longest = cases.iter().max_by_key(|c| c.ids.len()).unwrap();
    // A short sentence (text encoder and flow whole, on BLAS threads) and
    // three long sentences' worth of ids (encoder layers, flow windows and
    // decoder tiles on the lanes).
    let short = cases.iter().filter(|c| c.ids.len() < 120).max_by_key(|c| c.ids.len()).unwrap();
    let tripled: Vec<i64> = longest.ids.iter().chain(&longest.ids[1..]).chain(&longest.ids[1..]).copied().collect();
    for ids in [&short.ids, &tripled] {
        let params = SynthParams { seed: Some(11), ..Default::default() };
        let render = |threads: usize| {
            ttsd::engine::cpu::set_threads(threads);
            let (_, z, audio) = voice.render_ids(ids, &params).unwrap();
            (z.shape()[0], audio)
        };
        let (frames, one) = render(1);
        for threads in [2, 3] {
            let (f, many) = render(threads);
            assert_eq!((f, many.len()), (frames, one.len()), "{threads} lanes");
            let max_diff = many.iter().zip(&one).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
            eprintln!("{threads} lanes: {} ids, {frames} frames, max |diff| from one lane {max_diff:.1e}", ids.len());
            assert!(max_diff < 1e-4, "{threads} lanes change the audio by up to {max_diff}");
        }
    }
    ttsd::engine::cpu::set_threads(1);
}

fn streaming_yields_several_chunks_and_cancellation_stops_it() {
    let mut engine = Engine::new();
    engine.load_voice("joe", &voice_path()).unwrap();
    let text = SynthInput::Text("Every request gets exactly one answer, even when a worker process dies halfway through speaking.".into());
    let params = SynthParams { stream: true, seed: Some(1), ..Default::default() };
    let mut chunks: Vec<Chunk> = Vec::new();
    let summary = engine.synthesize("joe", &text, &params, &|| false, &mut |c| {
        chunks.push(c);
        Ok(())
    });
    let summary = summary.unwrap();
    assert!(chunks.len() >= 3, "only {} chunks", chunks.len());
    assert_eq!(chunks.iter().map(|c| c.samples.len()).sum::<usize>(), summary.samples);
    assert!(summary.audio_seconds() > 2.0);

    let mut seen = 0;
    let r = engine.synthesize("joe", &text, &params, &|| seen_flag(), &mut |_| {
        seen += 1;
        CANCEL.store(true, std::sync::atomic::Ordering::SeqCst);
        Ok(())
    });
    assert!(matches!(r, Err(EngineError::Cancelled)), "{r:?}");
    assert_eq!(seen, 1, "no chunk after cancellation");
}

static CANCEL: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
fn seen_flag() -> bool {
    CANCEL.load(std::sync::atomic::Ordering::SeqCst)
}

fn text_sentences_become_separate_normalised_chunks() {
    let mut engine = Engine::new();
    engine.load_voice("joe", &voice_path()).unwrap();
    let mut chunks = Vec::new();
    let input = SynthInput::Text("Hello world. How are you today?".into());
    engine
        .synthesize("joe", &input, &SynthParams { seed: Some(3), ..Default::default() }, &|| false, &mut |c| {
            chunks.push(c);
            Ok(())
        })
        .unwrap();
    assert_eq!(chunks.len(), 2);
    for c in &chunks {
        assert_eq!(c.sentences, 2);
        let peak = c.samples.iter().map(|s| s.unsigned_abs()).max().unwrap();
        assert!(peak >= 32000, "sentence not peak-normalised: peak {peak}");
    }
}

fn bad_parameters_and_ids_are_rejected_clearly() {
    let mut engine = Engine::new();
    engine.load_voice("joe", &voice_path()).unwrap();
    let ids = SynthInput::PhonemeIds(vec![1, 0, 20, 0, 2]);
    let run = |engine: &mut Engine, input: &SynthInput, p: SynthParams| engine.synthesize("joe", input, &p, &|| false, &mut |_| Ok(()));
    for p in [
        SynthParams { length_scale: 0.0, ..Default::default() },
        SynthParams { length_scale: f32::NAN, ..Default::default() },
        SynthParams { noise_scale: f32::INFINITY, ..Default::default() },
        SynthParams { noise_w: -1.0, ..Default::default() },
        SynthParams { speaker: 1, ..Default::default() },
        SynthParams { length_scale: 1e30, ..Default::default() },
        SynthParams { noise_w: 1e9, ..Default::default() },
    ] {
        assert!(matches!(run(&mut engine, &ids, p.clone()), Err(EngineError::InvalidInput(_))), "{p:?}");
    }
    for bad in [vec![], vec![1, 999, 2], vec![-1]] {
        let r = run(&mut engine, &SynthInput::PhonemeIds(bad.clone()), SynthParams::default());
        assert!(matches!(r, Err(EngineError::InvalidInput(_))), "{bad:?}: {r:?}");
    }
    assert!(matches!(run(&mut engine, &SynthInput::Text("   ".into()), SynthParams::default()), Err(EngineError::InvalidInput(_))));
    assert!(matches!(
        engine.synthesize("nobody", &ids, &SynthParams::default(), &|| false, &mut |_| Ok(())),
        Err(EngineError::UnknownVoice(_))
    ));
}

/// A streamed sentence is the unstreamed one, raw, sample for sample
/// (within rounding), whichever way its first chunk is made: one piece (it
/// fits in the frames the first chunk's decode reads), a first chunk whose
/// flow was the whole sentence's (kept for the rest, not run again), or a
/// first chunk from the head of the flow and a second flow.
fn streamed_sentences_equal_the_unstreamed_ones() {
    let mut engine = Engine::new();
    engine.load_voice("joe", &voice_path()).unwrap();
    let mut kinds = Vec::new();
    for text in ["Hi.", "Hello world.", "The quick brown fox jumps over the lazy dog."] {
        let input = SynthInput::Text(text.into());
        let mut run = |stream: bool| {
            let mut chunks: Vec<Vec<i16>> = Vec::new();
            let p = SynthParams { stream, raw: true, seed: Some(5), ..Default::default() };
            engine.synthesize("joe", &input, &p, &|| false, &mut |c| {
                chunks.push(c.samples);
                Ok(())
            })
            .unwrap();
            chunks
        };
        let (streamed, whole) = (run(true), run(false));
        let (s, w): (Vec<i16>, Vec<i16>) = (streamed.concat(), whole.concat());
        assert_eq!(s.len(), w.len(), "{text}");
        let max_diff = s.iter().zip(&w).map(|(a, b)| (a - b).unsigned_abs()).max().unwrap();
        assert!(max_diff <= 4, "{text}: streamed differs from unstreamed by up to {max_diff} LSB");
        let frames = w.len() / 256;
        eprintln!("{text}: {frames} frames, {} chunks, max |diff| {max_diff} LSB", streamed.len());
        kinds.push((frames, streamed.len()));
    }
    let model = engine.voice("joe").unwrap().model();
    let (ctx, radius) = (model.dec.context_frames(), model.flow.radius());
    assert!(kinds[0].0 <= 24 + ctx && kinds[0].1 == 1, "{kinds:?}: the shortest is one chunk");
    assert!(kinds[1].0 > 24 + ctx && kinds[1].0 <= 24 + ctx + radius, "{kinds:?}: the second's first flow is the whole");
    assert!(kinds[2].0 > 24 + ctx + radius && kinds[2].1 >= 2, "{kinds:?}: the longest runs the flow twice");
}

fn copy_voice(dir: &Path, onnx_bytes: Option<usize>, json: Option<&str>) -> PathBuf {
    let onnx = dir.join("v.onnx");
    let bytes = std::fs::read(voice_path()).unwrap();
    std::fs::write(&onnx, &bytes[..onnx_bytes.unwrap_or(bytes.len())]).unwrap();
    let json_text = match json {
        Some(j) => j.to_string(),
        None => std::fs::read_to_string(voice_path().with_extension("onnx.json")).unwrap(),
    };
    std::fs::write(dir.join("v.onnx.json"), json_text).unwrap();
    onnx
}

fn broken_voice_files_give_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    std::env::set_var("TTSD_CACHE_DIR", dir.path().join("cache"));
    let missing = Voice::load("x", &dir.path().join("missing.onnx"));
    assert!(matches!(missing, Err(EngineError::VoiceLoad { .. })), "missing file");

    let truncated = copy_voice(dir.path(), Some(5_000_000), None);
    let err = Voice::load("x", &truncated).err().expect("truncated voice must fail");
    assert!(matches!(err, EngineError::VoiceLoad { .. }), "{err}");

    let json = std::fs::read_to_string(voice_path().with_extension("onnx.json")).unwrap();
    let mut cfg: serde_json::Value = serde_json::from_str(&json).unwrap();
    cfg["num_symbols"] = serde_json::json!(100);
    let sub = dir.path().join("mismatch");
    std::fs::create_dir(&sub).unwrap();
    let mismatched = copy_voice(&sub, None, Some(&cfg.to_string()));
    let err = Voice::load("x", &mismatched).err().expect("mismatched json must fail");
    assert!(err.to_string().contains("num_symbols"), "{err}");
}

fn main() {
    // The BLAS settings production runs with (the binaries choose them too).
    ttsd::engine::cpu::configure();
    let tests: &[(&str, fn())] = &[
        ("every_golden_case_matches_the_reference", every_golden_case_matches_the_reference),
        ("windowed_decoding_equals_whole_sentence_decoding", windowed_decoding_equals_whole_sentence_decoding),
        ("lanes_leave_the_audio_unchanged", lanes_leave_the_audio_unchanged),
        ("streaming_yields_several_chunks_and_cancellation_stops_it", streaming_yields_several_chunks_and_cancellation_stops_it),
        ("streamed_sentences_equal_the_unstreamed_ones", streamed_sentences_equal_the_unstreamed_ones),
        ("text_sentences_become_separate_normalised_chunks", text_sentences_become_separate_normalised_chunks),
        ("bad_parameters_and_ids_are_rejected_clearly", bad_parameters_and_ids_are_rejected_clearly),
        ("broken_voice_files_give_clear_errors", broken_voice_files_give_clear_errors),
    ];
    let filter: Vec<String> = std::env::args().skip(1).filter(|a| !a.starts_with('-')).collect();
    let (mut passed, mut failed) = (0, 0);
    for (name, test) in tests {
        if !filter.is_empty() && !filter.iter().any(|f| name.contains(f.as_str())) {
            continue;
        }
        let ok = std::panic::catch_unwind(test).is_ok();
        println!("test {name} ... {}", if ok { "ok" } else { "FAILED" });
        if ok {
            passed += 1;
        } else {
            failed += 1;
        }
    }
    println!("\ntest result: {}. {passed} passed; {failed} failed; 0 ignored; 0 measured; 0 filtered out\n", if failed == 0 { "ok" } else { "FAILED" });
    std::process::exit(if failed == 0 { 0 } else { 101 });
}
