//! A worker process: loads the voices, then runs synthesis jobs one at a
//! time on its main thread, streaming chunks and heartbeats to the supervisor.
//!
//! Started by the supervisor as `ttsd worker` with its socketpair end as
//! stdin. It owns the engine; it must never start a thread or call the
//! engine anywhere but the main thread (MLX and espeak-ng are not
//! thread-safe). Timeouts come from SIGALRM ([`alarm`]); cancels arrive as
//! messages, read without blocking whenever the engine polls `cancelled`.
pub mod alarm;
pub mod channel;
mod fault;
pub mod speak;

use crate::engine::memory;
use crate::engine::thread::assert_main_thread;
use crate::engine::{sanitize, Chunk, Engine, EngineError, Requested, SynthInput, VoiceInfo};
use crate::protocol::worker::{FromWorker, Job, ToWorker, EXIT_CHANNEL, EXIT_LOAD_FAILED};
use crate::protocol::{ErrorCode, Input, TimingLevel, VoiceDesc};
use alarm::Alarm;
use channel::{Channel, ChannelError};
use speak::{Speaker, Until};
use std::cell::Cell;
use std::cell::RefCell;
use std::os::fd::{FromRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};

macro_rules! wlog {
    ($($a:tt)*) => { crate::logln!("ttsd worker[{}]: {}", std::process::id(), format!($($a)*)) };
}

/// The worker's main: returns the process exit code.
pub fn run() -> i32 {
    assert_main_thread();
    // SAFETY: the supervisor hands the socketpair end over as fd 0, and
    // nothing else in this process uses stdin.
    let stream = UnixStream::from(unsafe { OwnedFd::from_raw_fd(0) });
    let chan = Channel::new(stream);
    let alarm = match Alarm::install() {
        Ok(a) => a,
        Err(e) => {
            wlog!("cannot install the SIGALRM handler: {e}");
            return EXIT_CHANNEL;
        }
    };
    let (voices, heartbeat) = loop {
        match chan.recv_timeout(Duration::from_secs(3600)) {
            Ok(Some(ToWorker::Init { voices, heartbeat_ms })) => break (voices, Duration::from_millis(heartbeat_ms)),
            Ok(None) => continue,
            Ok(Some(other)) => {
                wlog!("expected Init, got {other:?}");
                return EXIT_CHANNEL;
            }
            Err(e) => {
                wlog!("{e}");
                return EXIT_CHANNEL;
            }
        }
    };
    crate::engine::cpu::set_threads(crate::engine::cpu::threads_from_env());
    let mut engine = Engine::new();
    // A voice that does not load is left out and reported; the others serve.
    let mut failed: Vec<(String, String)> = Vec::new();
    for v in &voices {
        assert_main_thread();
        if let Err(e) = engine.load_voice(&v.name, Path::new(&v.path)) {
            wlog!("cannot load voice '{}': {e}", v.name);
            failed.push((v.name.clone(), e.to_string()));
        }
    }
    if engine.voices().next().is_none() && !voices.is_empty() {
        for (voice, reason) in failed {
            let _ = chan.send(&FromWorker::LoadFailed { voice, reason });
        }
        return EXIT_LOAD_FAILED;
    }
    if let Err(e) = engine.warm_up() {
        wlog!("warm-up synthesis failed (serving anyway): {e}");
    }
    let ready = engine.voices().map(|i| (i.name.clone(), describe(i))).collect();
    if chan.send(&FromWorker::Ready { voices: ready, failed: failed.clone() }).is_err() {
        return EXIT_CHANNEL;
    }
    let mut last_beat = Instant::now();
    loop {
        if last_beat.elapsed() >= heartbeat {
            if chan.send(&heartbeat_msg()).is_err() {
                return EXIT_CHANNEL;
            }
            last_beat = Instant::now();
        }
        let wait = heartbeat.saturating_sub(last_beat.elapsed());
        match chan.recv_timeout(wait) {
            // Stale: for a job that has ended.
            Ok(None)
            | Ok(Some(ToWorker::Cancel { .. }))
            | Ok(Some(ToWorker::Text { .. }))
            | Ok(Some(ToWorker::Finish { .. })) => {}
            Ok(Some(ToWorker::Job(job))) => {
                match run_job(&mut engine, &failed, &chan, &alarm, &job, heartbeat) {
                    Ok(JobEnd::Continue) => {}
                    Ok(JobEnd::Stop) => return 0,
                    Err(e) => {
                        wlog!("{e}");
                        return EXIT_CHANNEL;
                    }
                }
                last_beat = Instant::now();
            }
            Ok(Some(ToWorker::Stop)) => return 0,
            Ok(Some(ToWorker::Init { .. })) => {
                wlog!("second Init");
                return EXIT_CHANNEL;
            }
            // The supervisor is gone: nobody to work for.
            Err(ChannelError::Closed) => return 0,
            Err(e) => {
                wlog!("{e}");
                return EXIT_CHANNEL;
            }
        }
    }
}

enum JobEnd {
    Continue,
    /// A Stop arrived during the job.
    Stop,
}

fn run_job(
    engine: &mut Engine,
    failed: &[(String, String)],
    chan: &Channel,
    alarm: &Alarm,
    job: &Job,
    heartbeat: Duration,
) -> Result<JobEnd, ChannelError> {
    let cancel = Cell::new(false);
    let stop = Cell::new(false);
    let broken = Cell::new(false);
    let last_beat = Cell::new(Instant::now());
    // A streamed text's pieces that arrived while the engine worked.
    let arrived = RefCell::new(String::new());
    let finished = Cell::new(job.finished);
    // The cores the supervisor gave this job (of the lanes opened at start).
    crate::engine::cpu::use_threads(job.threads as usize);
    alarm.arm(job.remaining_ms);
    let take = |msg: ToWorker| match msg {
        ToWorker::Cancel { job: j } if j == job.job => cancel.set(true),
        ToWorker::Stop => stop.set(true),
        ToWorker::Text { job: j, text, remaining_ms } if j == job.job => {
            arrived.borrow_mut().push_str(&text);
            // Each piece moves the deadline (one that passed stays passed).
            if !alarm.fired() {
                alarm.arm(remaining_ms);
            }
        }
        ToWorker::Finish { job: j, remaining_ms } if j == job.job => {
            finished.set(true);
            if !alarm.fired() {
                alarm.arm(remaining_ms);
            }
        }
        _ => {}
    };
    let beat = || {
        if last_beat.get().elapsed() >= heartbeat {
            if chan.send(&heartbeat_msg()).is_err() {
                broken.set(true);
                cancel.set(true);
            }
            last_beat.set(Instant::now());
        }
    };
    // Polled by the engine between sentences, chunks and model stages: reads
    // pending messages without blocking and keeps the heartbeat going.
    let cancelled = || -> bool {
        if alarm.fired() {
            return true;
        }
        loop {
            match chan.try_recv() {
                Ok(Some(msg)) => take(msg),
                Ok(None) => break,
                Err(_) => {
                    broken.set(true);
                    cancel.set(true);
                    break;
                }
            }
        }
        beat();
        cancel.get()
    };
    // Between sentences of a streamed text: wait for the next piece.
    let wait = || -> Result<(), EngineError> {
        loop {
            if cancelled() {
                return Err(EngineError::Cancelled);
            }
            if !arrived.borrow().is_empty() || finished.get() {
                return Ok(());
            }
            let left = heartbeat.saturating_sub(last_beat.get().elapsed()).min(Duration::from_millis(100));
            match chan.recv_timeout(left) {
                Ok(Some(msg)) => take(msg),
                Ok(None) => {}
                Err(_) => {
                    broken.set(true);
                    cancel.set(true);
                }
            }
        }
    };
    let result = fault::apply(job.fault, &cancelled).and_then(|()| {
        if let Some((_, reason)) = failed.iter().find(|(name, _)| *name == job.voice) {
            return Err(EngineError::VoiceUnavailable { voice: job.voice.clone(), reason: reason.clone() });
        }
        let params = engine.params(&job.voice, &requested(job))?;
        let sample_rate = engine.voice(&job.voice).map(|v| v.info().sample_rate).unwrap_or(0);
        let mut send = |msg: FromWorker| chan.send(&msg).map_err(|e| EngineError::Output(e.to_string()));
        assert_main_thread();
        // Ids, or plain text at once (the common case): the engine as it is.
        let (text, plain) = match &job.input {
            Input::PhonemeIds(ids) => (None, Some(SynthInput::PhonemeIds(ids.clone()))),
            Input::Text(t) if !job.text_stream && !job.opts.ssml && job.opts.timings == TimingLevel::None => {
                (None, Some(SynthInput::Text(t.clone())))
            }
            Input::Text(t) => (Some(t), None),
        };
        if let Some(input) = plain {
            let mut on_chunk = |c: Chunk| send(FromWorker::Chunk { job: job.job, sample_rate, samples: c.samples });
            let s = engine.synthesize(&job.voice, &input, &params, &cancelled, &mut on_chunk)?;
            return Ok((s.samples as u64, s.synth_seconds));
        }
        let text = text.map_or("", String::as_str);
        let started = Instant::now();
        let mut waited = Duration::ZERO;
        let mut speaker = Speaker::new(job.job, &job.voice, params, sample_rate, job.opts.ssml, job.text_stream);
        speaker.push(text)?;
        loop {
            let piece = std::mem::take(&mut *arrived.borrow_mut());
            speaker.push(&piece)?;
            if finished.get() && arrived.borrow().is_empty() {
                speaker.finish_text()?;
                speaker.speak(engine, Until::End, &cancelled, &mut send)?;
                break;
            }
            speaker.speak(engine, Until::Sentence, &cancelled, &mut send)?;
            let t = Instant::now();
            wait()?;
            waited += t.elapsed();
        }
        Ok((speaker.samples(), started.elapsed().saturating_sub(waited).as_secs_f64()))
    });
    let timed_out = alarm.disarm();
    if broken.get() {
        return Err(ChannelError::Closed);
    }
    let reply = match result {
        Ok((samples, seconds)) => FromWorker::JobDone {
            job: job.job,
            samples,
            sample_rate: engine.voice(&job.voice).map(|v| v.info().sample_rate).unwrap_or(0),
            synth_ms: (seconds * 1000.0).round() as u64,
        },
        Err(e) => {
            let (code, message) = error_code(&e, timed_out, job.remaining_ms);
            if code == ErrorCode::Internal {
                // The client gets the message without build paths; the log keeps all of it.
                wlog!("job {} failed: {e}", job.job);
            }
            FromWorker::JobFailed { job: job.job, code, message }
        }
    };
    chan.send(&reply)?;
    chan.send(&heartbeat_msg())?;
    Ok(if stop.get() { JobEnd::Stop } else { JobEnd::Continue })
}

/// The protocol error for an engine error, and the message the client
/// sees: internal errors without build paths ([`sanitize::for_client`]).
fn error_code(e: &EngineError, timed_out: bool, budget_ms: u64) -> (ErrorCode, String) {
    match e {
        EngineError::Cancelled if timed_out => (ErrorCode::Timeout, format!("deadline passed ({budget_ms} ms left at dispatch)")),
        EngineError::Cancelled => (ErrorCode::Cancelled, "cancelled".into()),
        EngineError::InvalidInput(_) => (ErrorCode::BadRequest, e.to_string()),
        EngineError::UnknownVoice(_) => (ErrorCode::UnknownVoice, e.to_string()),
        EngineError::VoiceUnavailable { .. } => (ErrorCode::Unavailable, e.to_string()),
        _ => (ErrorCode::Internal, sanitize::for_client(&e.to_string())),
    }
}

/// What the job asked for; the engine fills in the voice's defaults.
fn requested(job: &Job) -> Requested {
    Requested {
        speaker: job.speaker,
        length_scale: job.length_scale,
        noise_scale: job.noise_scale,
        noise_w: job.noise_w,
        seed: job.seed,
        raw: false,
        stream: job.stream,
        timings: job.opts.timings,
    }
}

fn describe(i: &VoiceInfo) -> VoiceDesc {
    VoiceDesc {
        language: i.language.clone(),
        quality: i.quality.clone(),
        sample_rate: i.sample_rate,
        num_speakers: i.num_speakers,
        num_symbols: i.num_symbols,
    }
}

fn heartbeat_msg() -> FromWorker {
    FromWorker::Heartbeat { rss_bytes: memory::current_rss_bytes() }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn engine_errors_map_to_protocol_codes() {
        assert_eq!(error_code(&EngineError::Cancelled, true, 100).0, ErrorCode::Timeout);
        assert_eq!(error_code(&EngineError::Cancelled, false, 100).0, ErrorCode::Cancelled);
        assert_eq!(error_code(&EngineError::InvalidInput("x".into()), false, 0).0, ErrorCode::BadRequest);
        assert_eq!(error_code(&EngineError::UnknownVoice("x".into()), false, 0).0, ErrorCode::UnknownVoice);
        assert_eq!(error_code(&EngineError::Mlx("x".into()), false, 0).0, ErrorCode::Internal);
        let unavailable = EngineError::VoiceUnavailable { voice: "v".into(), reason: "bad json".into() };
        assert_eq!(error_code(&unavailable, false, 0), (ErrorCode::Unavailable, "voice 'v' is unavailable: bad json".into()));
    }

    #[test]
    fn internal_errors_reach_the_client_without_build_paths() {
        let e = EngineError::Mlx("\"[flatten] too big\" at /root/.cargo/registry/src/x/mlx-rs-0.33.0/src/ops.rs:9:5".into());
        assert_eq!(error_code(&e, false, 0), (ErrorCode::Internal, "mlx: \"[flatten] too big\"".into()));
    }
}
