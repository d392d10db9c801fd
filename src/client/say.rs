//! `ttsctl say`, the work behind the flags: send one streamed synthesize
//! request and write its audio, as it arrives, to a file, stdout or a player.
//!
//! Owns where audio goes and what happens when that fails: an output that
//! stops reading (a closed pipe, a player that quit) cancels the request and
//! ends quietly; `-o FILE` appears (or replaces the old FILE) only once the
//! request has succeeded ([`super::outfile`]), so a failure leaves an
//! existing FILE as it was. It never removes anything but its own
//! temporary files.
//! Arguments arrive validated ([`super::cli::SayPlan`]); messages for people
//! go to the `notes` writer (stderr), never to stdout.
use super::cli::{Output, SayPlan};
use super::outfile::{self, TempFile};
use super::player::{self, Player, PlayerError, PlayerKind};
use super::progress::Progress;
use super::sink::{patch_wav_sizes, Format, PcmWriter};
use super::timeline::{self, Timeline};
use super::{Client, ClientError, Done};
use crate::protocol::{Reply, SpeechOptions, SynthRequest};
use std::fs::File;
use std::io::{self, Read, Seek, Write};
use std::path::PathBuf;
use std::process::ChildStdin;
use std::time::Duration;
use thiserror::Error;

#[derive(Debug, Error)]
pub enum SayError {
    #[error(transparent)]
    Client(#[from] ClientError),
    /// The output could not be written (not a closed pipe: see [`SayError::Closed`]).
    #[error("cannot write {what}: {source}")]
    Output { what: String, source: io::Error },
    #[error(transparent)]
    Player(#[from] PlayerError),
    /// Whoever read the audio stopped reading (broken pipe). Not a failure.
    #[error("the reader closed the output")]
    Closed,
    #[error("ttsd sent no audio")]
    NoAudio,
}

/// Synthesize `req` (which must ask for streaming to arrive in pieces),
/// handing each chunk to `on_audio` as it arrives. If `on_audio` fails, the
/// request is cancelled and its error returned.
pub fn stream(
    client: &mut Client,
    req: SynthRequest,
    on_audio: &mut dyn FnMut(u32, &[i16]) -> io::Result<()>,
) -> Result<Done, Result<ClientError, io::Error>> {
    let id = client.submit(req).map_err(Ok)?;
    replies(client, id, on_audio, &mut |_| {})
}

/// The replies of request `id` until its terminal one: audio to
/// `on_audio`, timings to `on_timings`.
pub fn replies(
    client: &mut Client,
    id: u64,
    on_audio: &mut dyn FnMut(u32, &[i16]) -> io::Result<()>,
    on_timings: &mut dyn FnMut(Reply),
) -> Result<Done, Result<ClientError, io::Error>> {
    loop {
        match client.recv().map_err(Ok)? {
            t @ Reply::Timings { .. } => {
                if matches!(&t, Reply::Timings { id: i, .. } if *i == id) {
                    on_timings(t);
                }
            }
            Reply::Audio { id: i, sample_rate, samples, .. } if i == id => {
                if let Err(e) = on_audio(sample_rate, &samples) {
                    let _ = client.cancel(id);
                    return Err(Err(e));
                }
            }
            Reply::Done { id: i, audio_seconds, queue_ms, synth_ms, worker_pid, retried } if i == id => {
                return Ok(Done { id, audio_seconds, queue_ms, synth_ms, worker_pid, retried })
            }
            Reply::Error { id: Some(i), code, message } if i == id => return Err(Ok(ClientError::Server { code, message })),
            Reply::Error { id: None, code, message } => return Err(Ok(ClientError::Server { code, message })),
            _ => {}
        }
    }
}

/// Opens a streamed text and feeds it stdin as it arrives, from a thread
/// of its own (only it writes to the connection until the text is
/// finished; replies are read here). A stdin that fails to read ends the
/// text where it is. Returns the request's id.
fn follow(client: &mut Client, req: SynthRequest, opts: SpeechOptions) -> Result<u64, ClientError> {
    let id = client.open_text(req, opts)?;
    let mut feed = client.writer()?;
    std::thread::spawn(move || {
        let mut stdin = io::stdin().lock();
        let mut buf = [0u8; 4096];
        let mut held: Vec<u8> = Vec::new();
        loop {
            let n = match stdin.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            held.extend_from_slice(&buf[..n]);
            let piece = take_utf8(&mut held);
            if !piece.is_empty() && feed.append_text(id, &piece).is_err() {
                return;
            }
        }
        let rest = String::from_utf8_lossy(&held).into_owned();
        if !rest.is_empty() {
            let _ = feed.append_text(id, &rest);
        }
        let _ = feed.finish_text(id);
    });
    Ok(id)
}

/// The complete UTF-8 at the start of `held` (invalid bytes become U+FFFD),
/// leaving a character cut by the read for the next one.
fn take_utf8(held: &mut Vec<u8>) -> String {
    let mut out = String::new();
    loop {
        match std::str::from_utf8(held) {
            Ok(s) => {
                out.push_str(s);
                held.clear();
                return out;
            }
            Err(e) => {
                let good = e.valid_up_to();
                out.push_str(&String::from_utf8_lossy(&held[..good]));
                match e.error_len() {
                    // Cut by the read: wait for the rest.
                    None => {
                        held.drain(..good);
                        return out;
                    }
                    Some(bad) => {
                        out.push(char::REPLACEMENT_CHARACTER);
                        held.drain(..good + bad);
                    }
                }
            }
        }
    }
}

/// Where the audio is going.
enum Sink {
    /// `-o FILE` or stdout; `base` is where the WAV header starts in it.
    /// `pending`: a temporary file that goes to FILE on success (dropped,
    /// it is removed); none for stdout, devices and fifos, written in place.
    File { w: PcmWriter<File>, pending: Option<(TempFile, PathBuf)>, base: u64, what: String },
    /// A player reading stdin, started with the first chunk (it needs the rate).
    Pipe { kind: PlayerKind, running: Option<(Player, PcmWriter<ChildStdin>)> },
    /// A player of files only: a temporary WAV, played at the end.
    Later { kind: PlayerKind, w: PcmWriter<File>, temp: TempFile },
}

fn closed_or(what: &str) -> impl Fn(io::Error) -> SayError + '_ {
    move |e| {
        if e.kind() == io::ErrorKind::BrokenPipe {
            SayError::Closed
        } else {
            SayError::Output { what: what.to_string(), source: e }
        }
    }
}

impl Sink {
    fn open(plan: &SayPlan) -> Result<Self, SayError> {
        let format = if plan.raw { Format::Raw } else { Format::Wav };
        match &plan.output {
            Output::File(path) => {
                let what = path.display().to_string();
                let out = outfile::open(path).map_err(|source| SayError::Output { what: what.clone(), source })?;
                Ok(Sink::File { w: PcmWriter::new(out.file, format), pending: out.pending, base: 0, what })
            }
            Output::Stdout => {
                use std::os::fd::AsFd;
                let what = "stdout".to_string();
                let fd = io::stdout().as_fd().try_clone_to_owned().map_err(closed_or(&what))?;
                let mut f = File::from(fd);
                let base = f.stream_position().unwrap_or(0);
                Ok(Sink::File { w: PcmWriter::new(f, format), pending: None, base, what })
            }
            Output::Play => {
                let kind = player::find()?;
                if kind.reads_stdin() {
                    Ok(Sink::Pipe { kind, running: None })
                } else {
                    // A fresh name, created exclusively: never someone's
                    // file or link in the shared temporary directory.
                    let dir = std::env::temp_dir();
                    let (f, temp) = TempFile::create(&dir, "ttsctl-", 0o600)
                        .map_err(|source| SayError::Output { what: dir.display().to_string(), source })?;
                    Ok(Sink::Later { kind, w: PcmWriter::new(f, Format::Wav), temp })
                }
            }
        }
    }

    fn write(&mut self, rate: u32, samples: &[i16]) -> Result<(), SayError> {
        match self {
            Sink::File { w, what, .. } => w.write(rate, samples).map_err(closed_or(what)),
            Sink::Later { w, temp, .. } => {
                w.write(rate, samples).map_err(closed_or(&temp.path().display().to_string()))
            }
            Sink::Pipe { kind, running } => {
                if running.is_none() {
                    let (p, stdin) = Player::start(*kind, rate)?;
                    *running = Some((p, PcmWriter::new(stdin, Format::Raw)));
                }
                let (_, w) = running.as_mut().expect("started above");
                w.write(rate, samples).map_err(closed_or(kind.name()))
            }
        }
    }

    /// The request succeeded: complete the output.
    fn finish(self) -> Result<(), SayError> {
        match self {
            Sink::File { w, pending, base, what } => {
                let wav = w.sample_rate().is_some();
                let (mut f, bytes) = w.finish().map_err(closed_or(&what))?;
                if wav {
                    patch_at(&mut f, base, bytes).map_err(closed_or(&what))?;
                }
                if let Some((temp, target)) = pending {
                    temp.persist(f, &target).map_err(|source| SayError::Output { what, source })?;
                }
                Ok(())
            }
            Sink::Pipe { running, .. } => match running {
                Some((p, w)) => {
                    let (stdin, _) = w.finish().map_err(closed_or("the player"))?;
                    drop(stdin);
                    p.wait()?;
                    Ok(())
                }
                None => Ok(()),
            },
            Sink::Later { kind, w, temp } => {
                let what = temp.path().display().to_string();
                let (mut f, bytes) = w.finish().map_err(closed_or(&what))?;
                patch_at(&mut f, 0, bytes).map_err(closed_or(&what))?;
                drop(f);
                let r = player::play_file(kind, temp.path());
                drop(temp);
                Ok(r?)
            }
        }
    }

    /// The request failed: drop our temporary file (never the output file
    /// itself, which is still as it was), stop the player.
    fn abort(self) {
        match self {
            Sink::File { w, pending, .. } => {
                drop(w);
                drop(pending);
            }
            Sink::Pipe { running, .. } => {
                if let Some((p, w)) = running {
                    drop(w);
                    let _ = p.wait();
                }
            }
            Sink::Later { w, temp, .. } => {
                drop(w);
                drop(temp);
            }
        }
    }

    fn has_audio(&self) -> bool {
        match self {
            Sink::File { w, .. } | Sink::Later { w, .. } => w.sample_rate().is_some(),
            Sink::Pipe { running, .. } => running.is_some(),
        }
    }
}

/// Patch the sizes of a WAV header that starts at `base` in `f`.
fn patch_at(f: &mut File, base: u64, data_bytes: u64) -> io::Result<bool> {
    if base == 0 {
        return patch_wav_sizes(f, data_bytes);
    }
    // Written after other bytes (`{ echo; ttsctl ...; } > f`): patch through
    // a view that starts at the header.
    struct At<'a>(&'a mut File, u64);
    impl Write for At<'_> {
        fn write(&mut self, b: &[u8]) -> io::Result<usize> {
            self.0.write(b)
        }
        fn flush(&mut self) -> io::Result<()> {
            self.0.flush()
        }
    }
    impl Seek for At<'_> {
        fn seek(&mut self, pos: io::SeekFrom) -> io::Result<u64> {
            let pos = match pos {
                io::SeekFrom::Start(n) => io::SeekFrom::Start(n + self.1),
                other => other,
            };
            Ok(self.0.seek(pos)?.saturating_sub(self.1))
        }
    }
    patch_wav_sizes(&mut At(f, base), data_bytes)
}

/// What a successful `say` did.
#[derive(Debug, Clone)]
pub struct Said {
    pub done: Done,
    pub sample_rate: u32,
    pub samples: u64,
}

/// Run a validated `say` on a connected client. `notes` gets the sample
/// rate line of `--raw`; the progress bar draws on stderr when
/// `stderr_is_terminal`.
pub fn run(client: &mut Client, plan: SayPlan, stderr_is_terminal: bool, notes: &mut dyn Write) -> Result<Said, SayError> {
    let mut sink = Sink::open(&plan)?;
    // The daemon enforces the deadline; this only guards against a daemon
    // that stopped answering altogether.
    let guard = Duration::from_millis(plan.request.timeout_ms.unwrap_or(600_000)) + Duration::from_secs(10);
    let _ = client.set_timeout(Some(guard));
    let mut progress = Progress::new(&plan.sentences, plan.request.length_scale, stderr_is_terminal);
    let mut rate = 0u32;
    let mut samples = 0u64;
    let mut sink_error = None;
    let mut timeline = Timeline::default();
    let started = if plan.follow {
        follow(client, plan.request.clone(), plan.opts)
    } else if plan.opts != SpeechOptions::default() {
        client.submit_with(plan.request.clone(), plan.opts)
    } else {
        client.submit(plan.request.clone())
    };
    let id = match started {
        Ok(id) => id,
        Err(e) => {
            sink.abort();
            return Err(e.into());
        }
    };
    let mut on_timings = |t: Reply| {
        if let Reply::Timings { words, phonemes, marks, .. } = t {
            timeline.add(words, phonemes, marks);
        }
    };
    let result = replies(
        client,
        id,
        &mut |r, s| {
            if rate == 0 && plan.raw {
                let _ = writeln!(notes, "sample rate: {r} Hz (s16le, mono)");
            }
            rate = r;
            samples += s.len() as u64;
            if let Some(p) = progress.as_mut() {
                p.audio(s.len() as f64 / r.max(1) as f64);
            }
            sink.write(r, s).map_err(|e| {
                sink_error = Some(e);
                io::Error::other("output failed")
            })
        },
        &mut on_timings,
    );
    if let Some(p) = progress {
        p.finish();
    }
    match result {
        Ok(done) => {
            if !sink.has_audio() {
                sink.abort();
                return Err(SayError::NoAudio);
            }
            // The side files first: a failure there leaves every output as it was.
            let written = |path: &PathBuf, write: &dyn Fn(&mut dyn Write) -> io::Result<()>| {
                timeline::write_file(path, write)
                    .map_err(|source| SayError::Output { what: path.display().to_string(), source })
            };
            if let Some(path) = &plan.timings {
                written(path, &|w| timeline.json_lines(rate, w))?;
            }
            if let Some((path, format)) = &plan.subtitles {
                written(path, &|w| timeline.subtitles(rate, *format, w))?;
            }
            sink.finish()?;
            Ok(Said { done, sample_rate: rate, samples })
        }
        Err(Ok(e)) => {
            sink.abort();
            Err(e.into())
        }
        Err(Err(_)) => {
            let e = sink_error.expect("set by the failing write");
            if !matches!(e, SayError::Closed) {
                sink.abort();
            }
            Err(e)
        }
    }
}
