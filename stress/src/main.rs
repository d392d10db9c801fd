//! ttsd-stress: load and fault injection against a real ttsd, then a
//! verdict. Starts its own daemon (the `ttsd` next to this binary, a
//! temporary config and socket) unless `--socket` names a running one.
//!
//! Layout: [`texts`] (the text mix), [`track`] (one record per request),
//! [`conn`] and [`load`] (load clients), [`attacks`] (misbehaving clients),
//! [`faults`] (the fault schedule and worker signals), [`monitor`] (status
//! and RSS every second), [`daemon`] (the daemon under test), [`report`]
//! (invariants, summary, JSON), [`hostile`] (the `hostile` scenario's
//! attackers, prober and criteria). This file: arguments, scenarios, the run.
mod attacks;
mod conn;
mod daemon;
mod faults;
mod hostile;
mod load;
mod monitor;
mod report;
mod texts;
mod track;

use anyhow::{bail, Context, Result};
use clap::{Parser, ValueEnum};
use faults::{Action, Scheduled};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use track::FlagFault;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Scenario {
    /// Only what the flags say (default: 20 requests, no faults).
    Custom,
    /// Under a minute, a few of each fault; run by ./scripts/test and CI.
    Smoke,
    /// 30 minutes of steady paced load (1 request/s) with rare faults (by hand).
    Soak,
    /// Faults every few seconds: worker kills, stops, fault flags, bad clients.
    Chaos,
    /// A client that never reads submits 120 requests over 40 s while one
    /// client runs normally: the supervisor must not keep all their audio.
    Backpressure,
    /// Clients that try to make the supervisor hold memory, write log or
    /// lock others out (huge voice names pipelined unread, floods that
    /// never read, more idle connections than max_connections), one phase
    /// each, while one valid client's requests must all end done: checks
    /// supervisor peak RSS, log bytes, health latency, lost replies.
    Hostile,
}

#[derive(Parser, Debug)]
#[command(
    name = "ttsd-stress",
    about = "Load and fault injection against ttsd, with invariants checked at the end",
    after_help = "Flags override the scenario's values. Exit status: 0 every invariant passed, \
                  1 an invariant failed, 2 the harness could not run (no ttsd, daemon never ready).\n\
                  The acceptance chaos run: ttsd-stress --scenario chaos --duration 300 --workers 2 --kill-every 5 --stop-every 20"
)]
struct Args {
    #[arg(long, value_enum, default_value = "custom")]
    scenario: Scenario,
    /// Use a running daemon instead of starting one (its config then decides
    /// hang_timeout_ms etc.; pass --hang-timeout-ms to match it).
    #[arg(long, value_name = "PATH")]
    socket: Option<PathBuf>,
    /// The ttsd binary to start (default: the one next to this binary).
    #[arg(long, value_name = "PATH")]
    ttsd: Option<PathBuf>,
    /// Voice file for the daemon it starts (default: voices/en_US-joe-medium.onnx above the ttsd binary).
    #[arg(long, value_name = "PATH")]
    voice: Option<PathBuf>,
    /// Worker processes of the daemon it starts.
    #[arg(long)]
    workers: Option<usize>,
    /// Concurrent load clients (one connection each).
    #[arg(long)]
    clients: Option<usize>,
    /// Stop after this many load requests in all.
    #[arg(long)]
    requests: Option<i64>,
    /// Stop sending load after this many seconds.
    #[arg(long, value_name = "S")]
    duration: Option<f64>,
    /// Paced load: this many requests per second in all (default: closed loop).
    #[arg(long, value_name = "R")]
    rate: Option<f64>,
    /// Fraction of requests that stream their audio.
    #[arg(long, value_name = "F")]
    stream_fraction: Option<f64>,
    /// SIGKILL a random ready worker every S seconds (0: never).
    #[arg(long, value_name = "S")]
    kill_every: Option<f64>,
    /// SIGSTOP a random ready worker every T seconds (0: never)...
    #[arg(long, value_name = "T")]
    stop_every: Option<f64>,
    /// ...for S seconds, then SIGCONT (if the daemon has not killed it).
    #[arg(long, value_name = "S")]
    stop_for: Option<f64>,
    /// Fraction of load requests that carry a fault flag.
    #[arg(long, value_name = "F")]
    fault_fraction: Option<f64>,
    /// Fault flags to draw from: crash, hang, slow, grow.
    #[arg(long, value_delimiter = ',')]
    faults: Option<Vec<String>>,
    /// Every S seconds a misbehaving client: malformed frame, oversized
    /// frame, truncated frame, mid-stream disconnect, in turn (0: never).
    #[arg(long, value_name = "S")]
    attack_every: Option<f64>,
    /// A client that never reads submits this many requests at the start
    /// and again every --nonreader-every seconds (0: none).
    #[arg(long, value_name = "N")]
    nonreader: Option<u32>,
    /// How often the non-reading client submits again (0: only at the start).
    #[arg(long, value_name = "S")]
    nonreader_every: Option<f64>,
    /// hang_timeout_ms of the daemon it starts.
    #[arg(long)]
    hang_timeout_ms: Option<u64>,
    /// Deadline sent with every load request.
    #[arg(long)]
    timeout_ms: Option<u64>,
    /// max_rss_mb of the daemon it starts (grow-fault workers get recycled).
    #[arg(long)]
    max_rss_mb: Option<u64>,
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Write the full report (every request, fault, sample) here.
    #[arg(long, value_name = "FILE")]
    json: Option<PathBuf>,
    /// Print a status line every second.
    #[arg(long, short)]
    verbose: bool,
    /// Keep the daemon's directory (config, log) even when everything passes.
    #[arg(long)]
    keep: bool,
}

/// Everything a run does, after the scenario's defaults and the flags.
#[derive(Debug, Clone, serde::Serialize)]
struct Plan {
    scenario: String,
    workers: usize,
    clients: usize,
    requests: Option<i64>,
    duration_s: Option<f64>,
    rate: Option<f64>,
    stream_fraction: f64,
    kill_every_s: f64,
    stop_every_s: f64,
    stop_for_s: f64,
    fault_fraction: f64,
    fault_kinds: Vec<FlagFault>,
    attack_every_s: f64,
    nonreader: u32,
    nonreader_every_s: f64,
    hang_timeout_ms: u64,
    timeout_ms: u64,
    max_rss_mb: u64,
    seed: u64,
    /// One-off faults at fixed times (smoke).
    #[serde(skip)]
    scripted: Vec<Scheduled>,
}

fn at(s: f64, action: Action) -> Scheduled {
    Scheduled { at: Duration::from_secs_f64(s), action }
}

fn plan(a: &Args) -> Result<Plan> {
    use FlagFault::*;
    let all = vec![Crash, Hang, Slow, Grow];
    let mut p = Plan {
        scenario: format!("{:?}", a.scenario).to_lowercase(),
        workers: 2,
        clients: 2,
        requests: None,
        duration_s: None,
        rate: None,
        stream_fraction: 0.5,
        kill_every_s: 0.0,
        stop_every_s: 0.0,
        stop_for_s: 6.0,
        fault_fraction: 0.0,
        fault_kinds: all.clone(),
        attack_every_s: 0.0,
        nonreader: 0,
        nonreader_every_s: 0.0,
        // Heartbeats go out between engine stages, so hang_timeout_ms must
        // stay well above the longest stage on a loaded 2-core machine (a
        // stage of a short text can take 1-2 s when the cores are shared),
        // or a busy healthy worker is killed as hung.
        hang_timeout_ms: 4000,
        timeout_ms: 30_000,
        max_rss_mb: 0,
        seed: a.seed,
        scripted: Vec::new(),
    };
    match a.scenario {
        Scenario::Custom => {
            if a.requests.is_none() && a.duration.is_none() {
                p.requests = Some(20);
            }
        }
        Scenario::Smoke => {
            // One of each, early enough that their effects end inside the
            // load window: a kill, a crash flag, a hang flag (short
            // hang_timeout), a slow flag, bad frames, a disconnect in the
            // middle of a stream, a client that never reads.
            p.duration_s = Some(16.0);
            // Above the 4 s default: CI machines are shared, and a healthy
            // worker starved of CPU for hang_timeout is killed as hung.
            p.hang_timeout_ms = 6000;
            p.nonreader = 2;
            p.scripted = vec![
                at(0.5, Action::Malformed),
                at(1.0, Action::Oversized),
                at(1.5, Action::Truncated),
                at(2.0, Action::Flag(Crash)),
                at(4.0, Action::Midstream),
                at(6.0, Action::Kill),
                at(8.0, Action::Flag(Hang)),
                at(10.0, Action::Flag(Slow)),
            ];
        }
        Scenario::Soak => {
            // Steady paced load (about a third of two cores), so that a
            // leak shows over time rather than the machine's limits.
            p.duration_s = Some(1800.0);
            p.rate = Some(1.0);
            // The daemon's default: a soak is about the long run, not about
            // fast hang detection (a 4 s limit on a shared 2-core machine
            // killed healthy but CPU-starved workers as hung).
            p.hang_timeout_ms = 10_000;
            p.stop_for_s = 12.0;
            p.kill_every_s = 120.0;
            p.stop_every_s = 300.0;
            p.fault_fraction = 0.01;
            p.attack_every_s = 60.0;
            p.nonreader = 2;
            p.nonreader_every_s = 300.0;
            p.max_rss_mb = 450;
        }
        Scenario::Backpressure => {
            p.duration_s = Some(40.0);
            p.clients = 1;
            p.nonreader = 30;
            p.nonreader_every_s = 10.0;
        }
        Scenario::Hostile => {
            p.duration_s = Some(120.0);
            p.clients = 1;
            p.hang_timeout_ms = 6000;
        }
        Scenario::Chaos => {
            p.duration_s = Some(300.0);
            p.kill_every_s = 5.0;
            p.stop_every_s = 20.0;
            p.fault_fraction = 0.03;
            p.attack_every_s = 10.0;
            p.nonreader = 2;
            p.nonreader_every_s = 60.0;
            p.max_rss_mb = 450;
        }
    }
    macro_rules! set {
        ($($f:ident => $g:ident),*) => { $(if let Some(v) = a.$f { p.$g = v; })* };
    }
    set!(workers => workers, clients => clients, stream_fraction => stream_fraction, kill_every => kill_every_s,
         stop_every => stop_every_s, stop_for => stop_for_s, fault_fraction => fault_fraction,
         attack_every => attack_every_s, nonreader => nonreader, nonreader_every => nonreader_every_s,
         hang_timeout_ms => hang_timeout_ms, timeout_ms => timeout_ms, max_rss_mb => max_rss_mb);
    if a.requests.is_some() {
        p.requests = a.requests;
        if a.duration.is_none() && a.scenario != Scenario::Custom {
            p.duration_s = None;
        }
    }
    if a.duration.is_some() {
        p.duration_s = a.duration;
    }
    p.rate = a.rate.or(p.rate);
    if let Some(kinds) = &a.faults {
        p.fault_kinds = kinds
            .iter()
            .map(|k| FlagFault::parse(k).with_context(|| format!("unknown fault '{k}' (crash, hang, slow, grow)")))
            .collect::<Result<_>>()?;
    }
    if p.clients == 0 || p.workers == 0 {
        bail!("--clients and --workers must be at least 1");
    }
    if p.requests.is_none() && p.duration_s.is_none() {
        bail!("give --requests or --duration");
    }
    Ok(p)
}

/// The timeline of faults for the load window.
fn schedule(p: &Plan) -> Vec<Scheduled> {
    let until = p.duration_s.unwrap_or(3600.0);
    let mut s = p.scripted.clone();
    faults::periodic(&mut s, p.kill_every_s, p.kill_every_s, until, Action::Kill);
    faults::periodic(&mut s, p.stop_every_s / 2.0, p.stop_every_s, until, Action::Stop(Duration::from_secs_f64(p.stop_for_s)));
    if p.attack_every_s > 0.0 {
        let kinds = [Action::Malformed, Action::Oversized, Action::Truncated, Action::Midstream];
        let mut t = p.attack_every_s / 3.0;
        let mut i = 0;
        while t < until {
            s.push(at(t, kinds[i % kinds.len()]));
            t += p.attack_every_s;
            i += 1;
        }
    }
    if p.nonreader > 0 {
        s.push(at(0.2, Action::NonReader(p.nonreader)));
        faults::periodic(&mut s, p.nonreader_every_s, p.nonreader_every_s, until, Action::NonReader(p.nonreader));
    }
    s.sort_by_key(|a| a.at);
    s
}

fn main() {
    match run() {
        Ok(true) => {}
        Ok(false) => std::process::exit(1),
        Err(e) => {
            eprintln!("ttsd-stress: {e:#}");
            std::process::exit(2);
        }
    }
}

fn run() -> Result<bool> {
    let args = Args::parse();
    let p = plan(&args)?;
    let settings = daemon::Settings {
        workers: p.workers,
        queue_capacity: 64,
        max_connections: 64,
        max_frame_bytes: 1 << 20,
        hang_timeout_ms: p.hang_timeout_ms,
        heartbeat_ms: (p.hang_timeout_ms / 5).clamp(50, 500),
        kill_grace_ms: 1000,
        default_timeout_ms: p.timeout_ms,
        max_rss_mb: p.max_rss_mb,
        restart_backoff_min_ms: 50,
        restart_backoff_max_ms: 1000,
        // Workers are only killed once ready, so load failures mean a real
        // problem; a few in a row are tolerated before `degraded`.
        degraded_after_failures: 5,
        // Short, so that idle attackers are closed (and come back) several
        // times within the idle phase.
        idle_timeout_ms: (p.scenario == "hostile").then_some(5000),
    };
    let hostile = p.scenario == "hostile";
    if hostile && args.socket.is_some() {
        bail!("the hostile scenario starts its own daemon (it reads the daemon's log size and memory); drop --socket");
    }
    let started = Instant::now();
    let mut own = None;
    let socket = match &args.socket {
        Some(s) => s.clone(),
        None => {
            let ttsd = args.ttsd.clone().or_else(daemon::default_ttsd).context("no ttsd next to ttsd-stress; pass --ttsd")?;
            let voice = match &args.voice {
                Some(v) => v.clone(),
                None => daemon::default_voice(&ttsd.canonicalize()?)
                    .or_else(|| daemon::default_voice(&std::env::current_dir().ok()?))
                    .context("cannot find voices/en_US-joe-medium.onnx; pass --voice")?,
            };
            let d = daemon::Daemon::start(&ttsd, &voice, &settings)?;
            let socket = d.socket.clone();
            own = Some(d);
            socket
        }
    };
    let ready_in = match daemon::wait_ready(&socket, p.workers, Duration::from_secs(120)) {
        Ok(t) => t,
        Err(e) => {
            if let Some(d) = &mut own {
                eprintln!("--- ttsd log ---\n{}", d.log_tail(40));
                eprintln!("ttsd-stress: daemon directory kept: {}", d.keep().display());
            }
            return Err(e);
        }
    };
    eprintln!(
        "ttsd-stress: {} scenario, {} workers ready in {:.1} s; {} clients, {}{}",
        p.scenario,
        p.workers,
        ready_in.as_secs_f64(),
        p.clients,
        p.duration_s.map_or(String::new(), |d| format!("{d} s")),
        p.requests.map_or(String::new(), |r| format!(" {r} requests")),
    );

    let t0 = Instant::now();
    let tracker = track::Tracker::new(t0);
    let spec = load::LoadSpec {
        socket: socket.clone(),
        stream_fraction: p.stream_fraction,
        fault_fraction: p.fault_fraction,
        fault_kinds: p.fault_kinds.clone(),
        per_client_rate: p.rate.map(|r| r / p.clients as f64),
        timeout_ms: p.timeout_ms,
        // Past its deadline a request is answered within kill_grace_ms plus
        // the arbiter's tick; 15 s more is generous.
        wait_limit: Duration::from_millis(p.timeout_ms + settings.kill_grace_ms + 15_000),
        seed: p.seed,
    };
    let budget = load::Budget {
        left: Arc::new(AtomicI64::new(p.requests.unwrap_or(i64::MAX))),
        stop: Arc::new(AtomicBool::new(false)),
    };
    let mon_stop = Arc::new(AtomicBool::new(false));
    let series = Arc::new(Mutex::new(monitor::Series::default()));
    let mon = {
        let (socket, stop, series, v) = (socket.clone(), mon_stop.clone(), series.clone(), args.verbose);
        std::thread::spawn(move || monitor::run(socket, t0, stop, series, v))
    };
    let flog = Arc::new(Mutex::new(faults::FaultLog::default()));
    let release = Arc::new(AtomicBool::new(false));
    let sched = {
        let ctx = faults::Ctx {
            spec: spec.clone(),
            tracker: tracker.clone(),
            stop: budget.stop.clone(),
            release: release.clone(),
            log: flog.clone(),
            seed: p.seed,
        };
        let s = schedule(&p);
        std::thread::spawn(move || faults::run(s, ctx))
    };
    let hostile_run = if hostile {
        let d = own.as_ref().expect("hostile starts its own daemon");
        let target = hostile::Target {
            socket: socket.clone(),
            supervisor_pid: d.pid(),
            log: d.log.clone(),
            max_connections: settings.max_connections,
            max_frame_bytes: settings.max_frame_bytes,
        };
        let window = Duration::from_secs_f64(p.duration_s.unwrap_or(120.0));
        let stop = budget.stop.clone();
        Some(std::thread::spawn(move || hostile::run(target, window, stop)))
    } else {
        None
    };
    let clients: Vec<_> = (0..p.clients)
        .map(|i| {
            let (spec, budget, tracker) = (spec.clone(), budget.clone(), tracker.clone());
            std::thread::spawn(move || load::run_client(i, spec, budget, tracker))
        })
        .collect();

    // The load window.
    let mut last_note = Instant::now();
    loop {
        let all_done = clients.iter().all(|c| c.is_finished());
        if all_done {
            break;
        }
        if p.duration_s.is_some_and(|d| t0.elapsed().as_secs_f64() >= d) {
            budget.stop.store(true, Ordering::SeqCst);
        }
        if !args.verbose && last_note.elapsed() >= Duration::from_secs(30) {
            last_note = Instant::now();
            let n = tracker.inner.lock().unwrap().records.len();
            eprintln!("ttsd-stress: {:.0} s, {n} requests sent", t0.elapsed().as_secs_f64());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    budget.stop.store(true, Ordering::SeqCst);
    for c in clients {
        let _ = c.join();
    }
    let load_wall = t0.elapsed().as_secs_f64();
    let hostile_log = hostile_run.map(|h| h.join().expect("the hostile thread panicked"));
    release.store(true, Ordering::SeqCst);
    let _ = sched.join();

    // Heal: every worker ready again; then the end sample.
    let heal_start = Instant::now();
    let healed = daemon::wait_ready(&socket, p.workers, Duration::from_secs(60));
    mon_stop.store(true, Ordering::SeqCst);
    let _ = mon.join();
    let mut sc = monitor::StatusConn::new(&socket);
    let end_sample = monitor::sample(&mut sc, t0).ok();
    let health = match sc.query(ttsd::protocol::Request::Health) {
        Ok(ttsd::protocol::Reply::Health { state, .. }) => state.as_str().to_string(),
        Ok(other) => format!("unexpected {other:.60?}"),
        Err(e) => format!("no answer: {e}"),
    };
    let st = sc.status().ok();
    let sup_pid = st.as_ref().map(|s| s.pid).or(own.as_ref().map(|d| d.pid()));
    let alive = sup_pid.is_some_and(|pid| nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), None).is_ok());
    let mut fin = report::Final {
        alive,
        socket_exists: socket.exists(),
        health,
        healed_in_s: healed.as_ref().ok().map(|_| heal_start.elapsed().as_secs_f64()),
        restarts: st.as_ref().map_or(0, |s| s.worker_restarts),
        recycles: st.as_ref().map_or(0, |s| s.worker_recycles),
        end_sample,
        shutdown: None,
    };
    drop(sc);
    if let Some(d) = &mut own {
        fin.shutdown = Some(match d.terminate(Duration::from_secs(20)) {
            Some((status, took)) => {
                let gone = !socket.exists();
                (
                    format!("{status} after {:.1} s, socket removed: {gone}", took.as_secs_f64()),
                    status.success() && gone,
                )
            }
            None => ("did not exit within 20 s of SIGTERM".into(), false),
        });
    }

    let records = tracker.records();
    let (unknown, conn_errors) = {
        let g = tracker.inner.lock().unwrap();
        (g.unknown_replies.clone(), g.conn_errors.clone())
    };
    let flog = flog.lock().unwrap();
    let series = series.lock().unwrap();
    let (inv, summary) = report::evaluate(
        &records,
        &flog,
        &series,
        &fin,
        p.hang_timeout_ms as f64 / 1000.0,
        p.rate.is_some(),
        load_wall,
        &unknown,
        &conn_errors,
    );
    let mut inv = inv;
    let hostile_health = hostile_log.as_ref().map(|h| {
        let (more, health) = hostile::invariants(h, settings.max_connections);
        inv.extend(more);
        health
    });
    let pass = inv.iter().all(|i| i.pass);
    let title = format!(
        "ttsd-stress {}: {:.1} s of load ({:.1} s in all), {} workers, {} clients ({}), seed {}",
        p.scenario,
        load_wall,
        started.elapsed().as_secs_f64(),
        p.workers,
        p.clients,
        p.rate.map_or("closed loop".to_string(), |r| format!("{r}/s paced")),
        p.seed
    );
    let text = report::print(&title, &summary, &inv);
    println!("{text}");
    if let (Some(h), Some(hp)) = (&hostile_log, &hostile_health) {
        let valid = records.len();
        let done = records.iter().filter(|r| r.outcome == Some(track::Outcome::Done)).count();
        println!(
            "  hostile         supervisor peak RSS {:.1} MiB, log {} bytes, health p50 {:.1} / p99 {:.1} / max {:.1} ms \
             ({} probes), valid client {done} of {valid} done, lost replies {}",
            h.supervisor_peak_mib, h.log_bytes, hp.p50, hp.p99, hp.max, hp.n, summary.lost_replies
        );
    }
    if !flog.skipped.is_empty() {
        println!("  skipped faults: {}", flog.skipped.join("; "));
    }
    if let Some(path) = &args.json {
        let doc = serde_json::json!({
            "plan": p,
            "daemon_settings": settings,
            "summary": summary,
            "invariants": inv,
            "pass": pass,
            "signals": flog.signals,
            "attacks": flog.attacks,
            "skipped_faults": flog.skipped,
            "requests": records,
            "samples": series.samples,
            "status_failures": series.failures,
            "hostile": hostile_log,
        });
        std::fs::write(path, serde_json::to_string_pretty(&doc)?).with_context(|| format!("write {}", path.display()))?;
        eprintln!("ttsd-stress: report written to {}", path.display());
    }
    if let Some(d) = &mut own {
        if !pass || args.keep {
            if !pass {
                eprintln!("--- ttsd log (last lines) ---\n{}", d.log_tail(30));
            }
            eprintln!("ttsd-stress: daemon directory kept: {}", d.keep().display());
        }
    }
    println!("{}", if pass { "RESULT: PASS" } else { "RESULT: FAIL" });
    Ok(pass)
}
