//! ttsctl's command line: the clap definitions, the exit codes, and the one
//! place where raw arguments become validated values ([`SayArgs::plan`]).
//!
//! Owns argument syntax and meaning only. It never talks to the daemon and
//! never writes audio; `src/bin/ttsctl.rs` glues this to the client.
use super::subtitles;
use crate::protocol::{Input, SpeechOptions, SynthRequest, TimingLevel};
use clap::{Args, Parser, Subcommand};
use std::io::Read;
use std::path::PathBuf;
use thiserror::Error;

/// Success (for `health`: the daemon is ready).
pub const EXIT_OK: u8 = 0;
/// The request failed or the daemon refused it, or (`health`) the daemon is
/// degraded, starting or stopping.
pub const EXIT_FAILED: u8 = 1;
/// The daemon is unreachable: not running, no access to its socket file, or
/// not answering.
pub const EXIT_UNREACHABLE: u8 = 2;
/// Bad arguments (sysexits.h EX_USAGE).
pub const EXIT_USAGE: u8 = 64;

const FOOTER: &str = "\
Exit codes:
  0   success (health: the daemon is ready)
  1   the request failed or was refused (the message starts with the daemon's
      error code, e.g. permission_denied), or the daemon is degraded, starting
      or stopping
  2   the daemon is unreachable: not running, no access to its socket file,
      or not answering
  64  usage error

The socket is --socket PATH, else $TTSD_SOCKET, else $XDG_RUNTIME_DIR/ttsd.sock,
else /tmp/ttsd-$UID/ttsd.sock. On that default path ttsctl first checks that
the directory is yours (a real directory nobody else can write to) and then
talks only to a ttsd running as your own uid; on a path you name, to your uid
or root. --allow-server-uid UID (or TTSD_ALLOW_SERVER_UID=UID,...) trusts
another uid's daemon. A refused socket exits 2 without sending anything.";

const SAY_FOOTER: &str = "\
Output: -o FILE writes a WAV file; -o - writes to stdout (a WAV whose header is
patched with the real sizes when stdout is a file, and announces the largest
possible size when it is a pipe, which players such as aplay accept); --raw
writes bare s16le mono PCM instead and prints the sample rate on stderr.
Without -o or --play, audio goes to stdout unless stdout is a terminal. Audio is
written as it is synthesized, so `ttsctl say - -o - < chapter.txt | aplay` starts
playing after the first sentence. A closed pipe (`| head -c 100`) ends ttsctl
quietly with exit 0.

--follow reads stdin as it arrives and speaks each sentence once it is
complete, while the writer is still writing: `some-llm | ttsctl say --follow
--play`. --timings FILE writes a JSON line per word ({\"word\", \"start\",
\"end\"} in seconds, character offsets in the text) and per SSML mark;
--subtitles FILE.srt or FILE.vtt writes cues of a few words. Like -o, both
appear only once the request has succeeded.

Examples:
  ttsctl say \"Hello world\" -o hello.wav
  echo \"Hello\" | ttsctl say - -o - > hello.wav
  ttsctl say --raw \"Hello\" | aplay -t raw -f S16_LE -c 1 -r 22050
  ttsctl say --play --seed 7 \"Reproducible speech\"
  ttsctl say --ssml '<speak>Wait <break time=\"1s\"/> now.</speak>' -o out.wav
  ttsctl say \"A paragraph.\" -o talk.wav --subtitles talk.srt --timings talk.jsonl

Exit codes:
  0   the audio was written (or the reader closed the pipe)
  1   the request failed (the message names the cause and the fix)
  2   the daemon is unreachable
  64  usage error";

#[derive(Parser, Debug)]
#[command(
    name = "ttsctl",
    version,
    about = "Talk to a running ttsd: speak text, check its health, status and metrics",
    after_help = FOOTER
)]
pub struct Cli {
    /// ttsd's socket.
    #[arg(long, env = "TTSD_SOCKET", global = true, value_name = "PATH")]
    pub socket: Option<PathBuf>,
    /// Also trust a ttsd running as this uid (repeat, or comma-separate in
    /// the variable); by default only your own uid, or root on a named path.
    #[arg(long, env = "TTSD_ALLOW_SERVER_UID", global = true, value_name = "UID", value_delimiter = ',')]
    pub allow_server_uid: Vec<u32>,
    #[command(subcommand)]
    pub command: Command,
}

// `say` has many more arguments than the other commands; parsed once per
// process, so the size difference costs nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand, Debug)]
pub enum Command {
    /// Speak text (an argument, or stdin with `-`) into a WAV file, stdout or a player.
    #[command(after_help = SAY_FOOTER)]
    Say(SayArgs),
    /// Exit 0 if ready, 1 if degraded, starting or stopping (printing why), 2 if unreachable.
    #[command(after_help = FOOTER)]
    Health,
    /// Uptime, queue, workers (pid, state, jobs, restarts, RSS, heartbeat), totals, voices.
    #[command(after_help = FOOTER)]
    Status {
        /// JSON instead of a table (the protocol's StatusReply, field for field).
        #[arg(long)]
        json: bool,
    },
    /// The configured voices: language, quality, sample rate, speakers, load state.
    #[command(after_help = FOOTER)]
    Voices {
        /// JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// The status figures in Prometheus text exposition format (ttsd_ prefix).
    #[command(after_help = FOOTER)]
    Metrics,
}

#[derive(Args, Debug, Default)]
pub struct SayArgs {
    /// The text to speak; `-` (or nothing, with stdin not a terminal) reads stdin.
    #[arg(value_name = "TEXT")]
    pub text: Option<String>,
    /// Where the audio goes: a file, or `-` for stdout.
    #[arg(short = 'o', long = "output", value_name = "FILE")]
    pub output: Option<String>,
    /// Voice name (see `ttsctl voices`); default: the daemon's default voice.
    #[arg(long, value_name = "NAME")]
    pub voice: Option<String>,
    /// Speaker id of a multi-speaker voice (default 0).
    #[arg(long, value_name = "N")]
    pub speaker: Option<u32>,
    /// Speaking rate: above 1 is slower (default: the voice's).
    #[arg(long, value_name = "F", allow_negative_numbers = true)]
    pub length_scale: Option<f32>,
    /// Generator noise (default: the voice's; 0 is deterministic).
    #[arg(long, value_name = "F", allow_negative_numbers = true)]
    pub noise_scale: Option<f32>,
    /// Phoneme width noise (default: the voice's).
    #[arg(long = "noise-w", value_name = "F", allow_negative_numbers = true)]
    pub noise_w: Option<f32>,
    /// Seed for the noise: the same seed and text give the same audio.
    #[arg(long, value_name = "N")]
    pub seed: Option<u64>,
    /// Speak these phoneme ids (comma separated, BOS/pad/EOS included) instead of text.
    #[arg(long, value_name = "CSV", conflicts_with = "text")]
    pub phoneme_ids: Option<String>,
    /// Give up after this long, queue time included (default: the daemon's default_timeout_ms).
    #[arg(long, value_name = "N")]
    pub timeout_ms: Option<u64>,
    /// Write bare s16le mono PCM instead of WAV; the sample rate goes to stderr.
    #[arg(long)]
    pub raw: bool,
    /// Play the audio with the first of aplay, paplay, pw-play, afplay found.
    #[arg(long, conflicts_with_all = ["output", "raw"])]
    pub play: bool,
    /// No summary line on stderr.
    #[arg(short, long)]
    pub quiet: bool,
    /// Read the text from stdin as it is written (a pipe from a program that
    /// writes slowly) and speak each sentence as soon as it is complete.
    #[arg(long, conflicts_with = "phoneme_ids")]
    pub follow: bool,
    /// The text is SSML: <mark name=".."/> and <break time=".."/> are honoured.
    #[arg(long, conflicts_with = "phoneme_ids")]
    pub ssml: bool,
    /// Write word timings (and SSML marks) to FILE, as JSON lines.
    #[arg(long, value_name = "FILE", conflicts_with = "phoneme_ids")]
    pub timings: Option<PathBuf>,
    /// With --timings: every phoneme's timing too.
    #[arg(long, requires = "timings")]
    pub phonemes: bool,
    /// Write subtitles to FILE: SubRip (.srt) or WebVTT (.vtt), by its name.
    #[arg(long, value_name = "FILE", conflicts_with = "phoneme_ids")]
    pub subtitles: Option<PathBuf>,
}

/// Where the audio of `say` goes.
#[derive(Debug, Clone, PartialEq)]
pub enum Output {
    File(PathBuf),
    Stdout,
    Play,
}

/// A validated `say`: the request to send and what to do with the audio.
#[derive(Debug, Clone, PartialEq)]
pub struct SayPlan {
    pub request: SynthRequest,
    pub output: Output,
    /// Bare PCM instead of WAV.
    pub raw: bool,
    pub quiet: bool,
    /// Character counts of the sentences of the text, as far as the client
    /// can tell (the daemon's phonemizer decides); empty for phoneme ids.
    pub sentences: Vec<usize>,
    /// Timings and SSML (protocol version 2).
    pub opts: SpeechOptions,
    /// The text is read from stdin as it arrives (`--follow`); the request's
    /// text is empty.
    pub follow: bool,
    pub timings: Option<PathBuf>,
    pub subtitles: Option<(PathBuf, subtitles::Format)>,
}

/// A usage error: the message says what is wrong and how to say it right.
#[derive(Debug, Error, PartialEq)]
#[error("{0}")]
pub struct UsageError(pub String);

/// What the plan needs to know about the process's standard streams.
pub struct Stdio<'a> {
    pub stdin: &'a mut dyn Read,
    pub stdin_is_terminal: bool,
    pub stdout_is_terminal: bool,
}

impl SayArgs {
    /// Turn the raw arguments (and stdin, when the text comes from there)
    /// into a request and an output. Every check on `say`'s arguments is here.
    pub fn plan(self, io: Stdio<'_>) -> Result<SayPlan, UsageError> {
        let usage = |m: String| Err(UsageError(m));
        let (input, sentences) = match (&self.phoneme_ids, self.text.as_deref()) {
            (Some(csv), _) => (Input::PhonemeIds(parse_ids(csv)?), Vec::new()),
            (None, Some("-")) | (None, None) if self.follow => (Input::Text(String::new()), Vec::new()),
            (None, Some(_)) if self.follow => {
                return usage("--follow reads the text from stdin: give `-` (or no TEXT) instead of the text".into())
            }
            (None, Some("-")) | (None, None) => {
                if self.text.is_none() && io.stdin_is_terminal {
                    return usage("no text: give TEXT, or `-` to read it from stdin (see ttsctl say --help)".into());
                }
                let mut text = String::new();
                if let Err(e) = io.stdin.read_to_string(&mut text) {
                    return usage(format!("cannot read the text from stdin: {e}"));
                }
                let s = sentence_lengths(&text);
                (Input::Text(text), s)
            }
            (None, Some(t)) => (Input::Text(t.to_string()), sentence_lengths(t)),
        };
        if let Input::Text(t) = &input {
            if t.trim().is_empty() && !self.follow {
                return usage("the text is empty: nothing to speak".into());
            }
        }
        if let Some(v) = self.length_scale {
            if !v.is_finite() || v <= 0.0 {
                return usage(format!("--length-scale must be a number above 0 (1 is normal speed), got {v}"));
            }
        }
        for (flag, v) in [("--noise-scale", self.noise_scale), ("--noise-w", self.noise_w)] {
            if let Some(v) = v {
                if !v.is_finite() || v < 0.0 {
                    return usage(format!("{flag} must be a number of 0 or more, got {v}"));
                }
            }
        }
        if self.timeout_ms == Some(0) {
            return usage("--timeout-ms must be above 0".into());
        }
        if let Some(v) = &self.voice {
            if v.trim().is_empty() {
                return usage("--voice is empty (list the voices with `ttsctl voices`)".into());
            }
        }
        let output = match (self.play, self.output.as_deref()) {
            (true, _) => Output::Play,
            (false, Some("-")) => Output::Stdout,
            (false, Some("")) => return usage("-o needs a file name, or `-` for stdout".into()),
            (false, Some(f)) => Output::File(PathBuf::from(f)),
            (false, None) if io.stdout_is_terminal => {
                return usage(
                    "refusing to write audio to a terminal: use -o FILE, --play, or redirect stdout (-o -)".into(),
                )
            }
            (false, None) => Output::Stdout,
        };
        let request = SynthRequest {
            id: 0,
            input,
            voice: self.voice,
            speaker: self.speaker,
            length_scale: self.length_scale,
            noise_scale: self.noise_scale,
            noise_w: self.noise_w,
            seed: self.seed,
            timeout_ms: self.timeout_ms,
            // Always streamed: audio is written as it arrives.
            stream: true,
            fault: None,
        };
        let subtitles = match self.subtitles {
            None => None,
            Some(path) => match subtitles::Format::from_path(&path) {
                Some(f) => Some((path, f)),
                None => {
                    return usage(format!(
                        "--subtitles {}: name the file .srt (SubRip) or .vtt (WebVTT)",
                        path.display()
                    ))
                }
            },
        };
        let timings = match (self.phonemes, self.timings.is_some() || subtitles.is_some()) {
            (true, _) => TimingLevel::Phonemes,
            (false, true) => TimingLevel::Words,
            (false, false) => TimingLevel::None,
        };
        let opts = SpeechOptions { timings, ssml: self.ssml };
        Ok(SayPlan {
            request,
            output,
            raw: self.raw,
            quiet: self.quiet,
            sentences,
            opts,
            follow: self.follow,
            timings: self.timings,
            subtitles,
        })
    }
}

/// `1, 0, 25,0,2` -> ids; anything else is a usage error naming the culprit.
pub fn parse_ids(csv: &str) -> Result<Vec<i64>, UsageError> {
    let ids: Result<Vec<i64>, _> = csv
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| s.parse::<i64>().map_err(|_| UsageError(format!("--phoneme-ids: '{s}' is not an integer"))))
        .collect();
    let ids = ids?;
    if ids.is_empty() {
        return Err(UsageError("--phoneme-ids is empty: give comma-separated ids such as 1,0,25,0,2".into()));
    }
    if let Some(id) = ids.iter().find(|&&i| i < 0) {
        return Err(UsageError(format!("--phoneme-ids: {id} is negative")));
    }
    Ok(ids)
}

/// The client's guess at the sentences of `text` (their lengths in
/// characters): a split after `.`, `!`, `?` (or `…`) followed by white space.
/// Only the progress bar uses it; the daemon's phonemizer decides for real.
pub fn sentence_lengths(text: &str) -> Vec<usize> {
    let mut out = Vec::new();
    let mut len = 0usize;
    let mut after_end = false;
    for c in text.chars() {
        if after_end && c.is_whitespace() {
            if len > 0 {
                out.push(len);
            }
            len = 0;
            after_end = false;
            continue;
        }
        after_end = matches!(c, '.' | '!' | '?' | '…') || (after_end && matches!(c, '"' | '\'' | ')' | '”'));
        if !(len == 0 && c.is_whitespace()) {
            len += 1;
        }
    }
    if len > 0 {
        out.push(len);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(args: &[&str], stdin: &str, stdout_tty: bool) -> Result<SayPlan, UsageError> {
        let mut full = vec!["ttsctl", "say"];
        full.extend_from_slice(args);
        let cli = Cli::try_parse_from(full).map_err(|e| UsageError(e.to_string()))?;
        let Command::Say(say) = cli.command else { panic!() };
        let mut input = stdin.as_bytes();
        say.plan(Stdio { stdin: &mut input, stdin_is_terminal: false, stdout_is_terminal: stdout_tty })
    }

    #[test]
    fn text_from_argument_or_stdin() {
        let p = plan(&["Hello world.", "-o", "a.wav"], "", true).unwrap();
        assert_eq!(p.request.input, Input::Text("Hello world.".into()));
        assert_eq!(p.output, Output::File("a.wav".into()));
        assert!(p.request.stream);
        let p = plan(&["-", "-o", "-"], "From stdin.", true).unwrap();
        assert_eq!(p.request.input, Input::Text("From stdin.".into()));
        assert_eq!(p.output, Output::Stdout);
        // No -o: stdout if it is not a terminal, refused if it is.
        assert_eq!(plan(&["Hi"], "", false).unwrap().output, Output::Stdout);
        assert!(plan(&["Hi"], "", true).unwrap_err().0.contains("terminal"));
        assert!(plan(&["-"], "   \n", false).unwrap_err().0.contains("empty"));
    }

    #[test]
    fn options_are_checked_once_here() {
        let p = plan(
            &["Hi", "--voice", "joe", "--speaker", "2", "--length-scale", "1.5", "--noise-scale", "0", "--noise-w", "0.5",
              "--seed", "9", "--timeout-ms", "500", "--raw"],
            "",
            false,
        )
        .unwrap();
        let r = &p.request;
        assert_eq!((r.voice.as_deref(), r.speaker, r.length_scale, r.noise_scale, r.noise_w), (Some("joe"), Some(2), Some(1.5), Some(0.0), Some(0.5)));
        assert_eq!((r.seed, r.timeout_ms, p.raw), (Some(9), Some(500), true));
        assert!(plan(&["Hi", "--length-scale", "0"], "", false).is_err());
        assert!(plan(&["Hi", "--length-scale", "-1"], "", false).is_err());
        assert!(plan(&["Hi", "--noise-w", "-0.1"], "", false).is_err());
        assert!(plan(&["Hi", "--timeout-ms", "0"], "", false).is_err());
        assert!(plan(&["Hi", "--play", "-o", "x.wav"], "", false).is_err());
        let p = plan(&["--phoneme-ids", "1, 0,25,0 ,2", "-o", "-"], "", false).unwrap();
        assert_eq!(p.request.input, Input::PhonemeIds(vec![1, 0, 25, 0, 2]));
        assert!(plan(&["--phoneme-ids", "1,x"], "", false).unwrap_err().0.contains("'x'"));
        assert!(plan(&["--phoneme-ids", "1,-3"], "", false).is_err());
        assert!(plan(&["Hi", "--phoneme-ids", "1"], "", false).is_err(), "text and ids conflict");
    }

    #[test]
    fn sentence_guess() {
        assert_eq!(sentence_lengths("One. Two two! Three?"), vec![4, 8, 6]);
        assert_eq!(sentence_lengths("No end"), vec![6]);
        assert_eq!(sentence_lengths("  Dr. Who.  "), vec![3, 4]);
        assert_eq!(sentence_lengths("3.14 is pi."), vec![11]);
        assert!(sentence_lengths("").is_empty());
    }
}
