//! ttsctl: the command line of ttsd. Glue only: parse ([`ttsd::client::cli`]),
//! connect, call the library, print, and turn the outcome into an exit code
//! (0 ok, 1 request failed or degraded, 2 daemon unreachable, 64 usage).
//! Messages for people go to stderr; stdout carries only the requested
//! output, and a reader that closes it early ends ttsctl quietly.
use clap::Parser;
use std::io::{self, IsTerminal, Write};
use std::process::ExitCode;
use ttsd::client::cli::{Cli, Command, Output, Stdio, EXIT_FAILED, EXIT_OK, EXIT_USAGE};
use ttsd::client::say::{self, SayError};
use ttsd::client::{self, hint, metrics, outfile, table, Client, Target};
use ttsd::protocol::HealthState;

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            // --help and --version are not errors.
            let code = if e.use_stderr() { EXIT_USAGE } else { EXIT_OK };
            let _ = e.print();
            return ExitCode::from(code);
        }
    };
    let target = client::target(cli.socket.as_deref(), cli.allow_server_uid);
    ExitCode::from(run(cli.command, &target))
}

/// Ctrl-C (or SIGTERM, SIGHUP) while `say` writes a file: remove our
/// temporary file, then die of the signal as usual. The output file itself
/// is untouched until the request has succeeded.
fn remove_temp_files_on_signals() {
    use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
    for sig in [SIGINT, SIGTERM, SIGHUP] {
        // SAFETY: the handler only calls async-signal-safe functions (an
        // atomic swap and unlink, then the default action).
        let _ = unsafe {
            signal_hook::low_level::register(sig, move || {
                outfile::remove_temp_on_signal();
                let _ = signal_hook::low_level::emulate_default_handler(sig);
            })
        };
    }
}

/// Print `msg` on stderr prefixed with "ttsctl: " and return `code`.
fn fail(code: u8, msg: impl std::fmt::Display) -> u8 {
    let _ = writeln!(io::stderr(), "ttsctl: {msg}");
    code
}

fn connect(target: &Target) -> Result<Client, u8> {
    let mut c = Client::connect_to(target, "ttsctl").map_err(|e| explain(&e, target))?;
    // Status, health and voices are answered within milliseconds by a live
    // daemon, even with every worker busy.
    let _ = c.set_timeout(Some(std::time::Duration::from_secs(10)));
    Ok(c)
}

fn explain(e: &client::ClientError, target: &Target) -> u8 {
    let f = hint::explain(e, &target.path);
    fail(f.exit, f.message)
}

/// Write `text` to stdout; a closed stdout is not an error.
fn print(text: &str) -> u8 {
    let mut out = io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|_| out.flush()) {
        Ok(()) => EXIT_OK,
        Err(e) if e.kind() == io::ErrorKind::BrokenPipe => EXIT_OK,
        Err(e) => fail(EXIT_FAILED, format!("cannot write to stdout: {e}")),
    }
}

fn json(v: &impl serde::Serialize) -> String {
    let mut s = serde_json::to_string_pretty(v).expect("plain data serializes");
    s.push('\n');
    s
}

fn run(command: Command, target: &Target) -> u8 {
    match command {
        Command::Say(args) => {
            // The lock on stdin ends with the plan: `--follow` reads stdin
            // from a thread of its own later.
            let planned = {
                let stdin = io::stdin();
                let mut lock = stdin.lock();
                let stdio = Stdio {
                    stdin_is_terminal: stdin.is_terminal(),
                    stdout_is_terminal: io::stdout().is_terminal(),
                    stdin: &mut lock,
                };
                args.plan(stdio)
            };
            let plan = match planned {
                Ok(p) => p,
                Err(e) => return fail(EXIT_USAGE, e),
            };
            // Say so before connecting when --play cannot work.
            if plan.output == Output::Play {
                if let Err(e) = client::player::find() {
                    return fail(EXIT_FAILED, e);
                }
            }
            let (quiet, output) = (plan.quiet, plan.output.clone());
            remove_temp_files_on_signals();
            let mut c = match connect(target) {
                Ok(c) => c,
                Err(code) => return code,
            };
            match say::run(&mut c, plan, io::stderr().is_terminal(), &mut io::stderr()) {
                Ok(said) => {
                    if !quiet {
                        let d = &said.done;
                        let to = match &output {
                            Output::File(p) => p.display().to_string(),
                            Output::Stdout => "stdout".into(),
                            Output::Play => "player".into(),
                        };
                        let rtf = d.synth_ms as f64 / 1000.0 / d.audio_seconds.max(1e-9);
                        let _ = writeln!(
                            io::stderr(),
                            "{to}: {:.2} s of audio at {} Hz (queue {} ms, synth {} ms, RTF {rtf:.2}, worker {}{})",
                            d.audio_seconds,
                            said.sample_rate,
                            d.queue_ms,
                            d.synth_ms,
                            d.worker_pid,
                            if d.retried { ", retried" } else { "" }
                        );
                    }
                    EXIT_OK
                }
                Err(SayError::Closed) => EXIT_OK,
                Err(SayError::Client(e)) => explain(&e, target),
                Err(e) => fail(EXIT_FAILED, e),
            }
        }
        Command::Health => {
            let mut c = match connect(target) {
                Ok(c) => c,
                Err(code) => return code,
            };
            match c.health() {
                Ok((state, reason)) => {
                    let line = match reason {
                        Some(r) => format!("{}: {r}\n", state.as_str()),
                        None => format!("{}\n", state.as_str()),
                    };
                    print(&line);
                    if state == HealthState::Ready {
                        EXIT_OK
                    } else {
                        EXIT_FAILED
                    }
                }
                Err(e) => explain(&e, target),
            }
        }
        Command::Status { json: as_json } => {
            let mut c = match connect(target) {
                Ok(c) => c,
                Err(code) => return code,
            };
            match c.status() {
                Ok(s) if as_json => print(&json(&s)),
                Ok(s) => print(&table::status(&s)),
                Err(e) => explain(&e, target),
            }
        }
        Command::Voices { json: as_json } => {
            let mut c = match connect(target) {
                Ok(c) => c,
                Err(code) => return code,
            };
            match c.voices() {
                Ok((default_voice, voices)) if as_json => {
                    print(&json(&serde_json::json!({ "default_voice": default_voice, "voices": voices })))
                }
                Ok((default_voice, voices)) => print(&table::voices(&voices, Some(&default_voice))),
                Err(e) => explain(&e, target),
            }
        }
        Command::Metrics => {
            let mut c = match connect(target) {
                Ok(c) => c,
                Err(code) => return code,
            };
            match c.status() {
                Ok(s) => print(&metrics::render(&s)),
                Err(e) => explain(&e, target),
            }
        }
    }
}
