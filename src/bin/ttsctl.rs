//! ttsctl: a thin command line over `ttsd::client`. Parsing and printing
//! only; the protocol logic lives in the library client.
use clap::{Parser, Subcommand};
use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use ttsd::client::{self, Client, ClientError};
use ttsd::protocol::{HealthState, SynthRequest};

#[derive(Parser)]
#[command(name = "ttsctl", version, about = "Talk to a running ttsd")]
struct Cli {
    /// ttsd's socket (default: $XDG_RUNTIME_DIR/ttsd.sock or /tmp/ttsd-$UID/ttsd.sock).
    #[arg(long, env = "TTSD_SOCKET", global = true, value_name = "PATH")]
    socket: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Speak TEXT into a WAV file.
    Say {
        /// The text; `-` reads it from stdin.
        text: String,
        /// The WAV file; `-` writes it to stdout.
        #[arg(short = 'o', long = "output", value_name = "FILE")]
        output: PathBuf,
        #[arg(long, value_name = "N")]
        timeout_ms: Option<u64>,
        #[arg(long)]
        voice: Option<String>,
    },
    /// Exit 0 if ready, 1 if degraded (or starting/stopping), 2 if unreachable.
    Health,
    /// Workers, queue and totals.
    Status {
        #[arg(long)]
        json: bool,
    },
    /// The configured voices and their load state.
    Voices,
}

fn fail(e: ClientError) -> ExitCode {
    eprintln!("ttsctl: {e}");
    match e {
        ClientError::Connect { .. } => ExitCode::from(2),
        _ => ExitCode::from(1),
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let path = client::socket_path(cli.socket.as_deref());
    let mut c = match Client::connect_as(&path, "ttsctl") {
        Ok(c) => c,
        Err(e) => return fail(e),
    };
    match cli.command {
        Command::Say { text, output, timeout_ms, voice } => {
            let text = if text == "-" {
                let mut t = String::new();
                if let Err(e) = std::io::stdin().read_to_string(&mut t) {
                    eprintln!("ttsctl: cannot read stdin: {e}");
                    return ExitCode::from(1);
                }
                t
            } else {
                text
            };
            let req = SynthRequest { timeout_ms, voice, stream: true, ..SynthRequest::text(text) };
            match c.say_collect(req) {
                Ok((done, rate, samples)) => {
                    if output.as_os_str() == "-" {
                        let bytes = client::wav::wav_bytes(rate, &samples).expect("in-memory WAV");
                        let mut out = std::io::stdout().lock();
                        match out.write_all(&bytes).and_then(|()| out.flush()) {
                            Ok(()) => {}
                            // `ttsctl say ... -o - | head -c 100` is not an error.
                            Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => return ExitCode::SUCCESS,
                            Err(e) => {
                                eprintln!("ttsctl: cannot write stdout: {e}");
                                return ExitCode::from(1);
                            }
                        }
                    } else if let Err(e) = client::wav::write_wav(&output, rate, &samples) {
                        eprintln!("ttsctl: cannot write {}: {e}", output.display());
                        return ExitCode::from(1);
                    }
                    eprintln!(
                        "{}: {:.2} s of audio, queue {} ms, synth {} ms, worker {}{}",
                        output.display(),
                        done.audio_seconds,
                        done.queue_ms,
                        done.synth_ms,
                        done.worker_pid,
                        if done.retried { " (retried)" } else { "" }
                    );
                    ExitCode::SUCCESS
                }
                Err(e) => fail(e),
            }
        }
        Command::Health => match c.health() {
            Ok((state, reason)) => {
                match reason {
                    Some(r) => println!("{}: {r}", state.as_str()),
                    None => println!("{}", state.as_str()),
                }
                if state == HealthState::Ready {
                    ExitCode::SUCCESS
                } else {
                    ExitCode::from(1)
                }
            }
            Err(e) => fail(e),
        },
        Command::Status { json } => match c.status() {
            Ok(s) if json => {
                println!("{}", serde_json::to_string_pretty(&s).expect("status is plain data"));
                ExitCode::SUCCESS
            }
            Ok(s) => {
                print!("{}", client::display::status(&s));
                ExitCode::SUCCESS
            }
            Err(e) => fail(e),
        },
        Command::Voices => match c.voices() {
            Ok((default, voices)) => {
                println!("default: {default}");
                print!("{}", client::display::voices(&voices));
                ExitCode::SUCCESS
            }
            Err(e) => fail(e),
        },
    }
}
