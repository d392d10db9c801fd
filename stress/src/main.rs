//! ttsd-stress: load and fault injection against a real ttsd, then a
//! verdict. Starts its own daemon (the `ttsd` next to this binary, a
//! temporary config and socket) unless `--socket` names a running one.
//!
//! Layout: [`cli`] (the flags), [`scenario`] (what each scenario runs, the
//! daemon settings, the fault timeline), [`texts`] (the text mix),
//! [`track`] (one record per request), [`conn`] and [`load`] (load
//! clients), [`attacks`] (misbehaving clients), [`faults`] (the fault
//! schedule and worker signals), [`monitor`] (status and RSS every second),
//! [`daemon`] (the daemon under test), [`report`] (invariants, summary),
//! [`hostile`] (the `hostile` scenario's attackers, prober and criteria).
//!
//! This file: the run, phase by phase (daemon, threads, load window, heal,
//! end state, verdict, report, JSON) and the exit status. It never judges
//! (that is [`report`] and [`hostile`]) and never signals a daemon it did
//! not start.
mod attacks;
mod cli;
mod conn;
mod daemon;
mod faults;
mod hostile;
mod load;
mod monitor;
mod report;
mod scenario;
mod texts;
mod track;

use anyhow::{bail, Context, Result};
use clap::Parser;
use cli::Args;
use daemon::Daemon;
use faults::FaultLog;
use hostile::HostileLog;
use monitor::Series;
use report::{Invariant, Pcts, Summary};
use scenario::Plan;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

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

/// The whole run; `Ok(pass)`, or an error when the harness could not run.
fn run() -> Result<bool> {
    let args = Args::parse();
    let p = scenario::plan(&args)?;
    let settings = scenario::daemon_settings(&p);
    if p.hostile() && args.socket.is_some() {
        bail!("the hostile scenario starts its own daemon (it reads the daemon's log size and memory); drop --socket");
    }
    let started = Instant::now();
    let (socket, mut own) = open_daemon(&args, &settings)?;
    let ready_in = wait_ready(&socket, p.workers, own.as_mut())?;
    eprintln!(
        "ttsd-stress: {} scenario, {} workers ready in {:.1} s; {} clients, {}{}",
        p.scenario,
        p.workers,
        ready_in.as_secs_f64(),
        p.clients,
        p.duration_s.map_or(String::new(), |d| format!("{d} s")),
        p.requests.map_or(String::new(), |r| format!(" {r} requests")),
    );

    let threads = Threads::start(&p, &settings, &socket, own.as_ref(), args.verbose);
    threads.load_window(&p, args.verbose);
    let ended = threads.end(&socket, p.workers);
    let fin = final_state(&socket, ended.t0, ended.healed_in_s, own.as_mut());

    let records = ended.tracker.records();
    let (unknown_replies, conn_errors) = {
        let g = ended.tracker.inner.lock().unwrap();
        (g.unknown_replies.clone(), g.conn_errors.clone())
    };
    let flog = ended.flog.lock().unwrap();
    let series = ended.series.lock().unwrap();
    let run = report::Run {
        records: &records,
        log: &flog,
        series: &series,
        fin: &fin,
        hang_timeout_s: p.hang_timeout_ms as f64 / 1000.0,
        paced: p.rate.is_some(),
        wall_seconds: ended.load_wall,
        unknown_replies: &unknown_replies,
        conn_errors: &conn_errors,
    };
    let v = verdict(&run, ended.hostile.as_ref(), settings.max_connections);
    let title = format!(
        "ttsd-stress {}: {:.1} s of load ({:.1} s in all), {} workers, {} clients ({}), seed {}",
        p.scenario,
        ended.load_wall,
        started.elapsed().as_secs_f64(),
        p.workers,
        p.clients,
        p.rate.map_or("closed loop".to_string(), |r| format!("{r}/s paced")),
        p.seed
    );
    print_report(&title, &v, &run);
    if let Some(path) = &args.json {
        write_json(path, &p, &settings, &run, &v)?;
    }
    if let Some(d) = &mut own {
        keep_on_failure(d, v.pass, args.keep);
    }
    println!("{}", if v.pass { "RESULT: PASS" } else { "RESULT: FAIL" });
    Ok(v.pass)
}

/// The daemon to test: `--socket`'s, or one started here (its socket, and
/// the daemon itself to stop at the end).
fn open_daemon(args: &Args, settings: &daemon::Settings) -> Result<(PathBuf, Option<Daemon>)> {
    if let Some(s) = &args.socket {
        return Ok((s.clone(), None));
    }
    let ttsd = args.ttsd.clone().or_else(daemon::default_ttsd).context("no ttsd next to ttsd-stress; pass --ttsd")?;
    let voice = match &args.voice {
        Some(v) => v.clone(),
        None => daemon::default_voice(&ttsd.canonicalize()?)
            .or_else(|| daemon::default_voice(&std::env::current_dir().ok()?))
            .context("cannot find voices/en_US-joe-medium.onnx; pass --voice")?,
    };
    let d = Daemon::start(&ttsd, &voice, settings)?;
    Ok((d.socket.clone(), Some(d)))
}

/// Wait for health `ready` and every worker; if that never comes, show our
/// daemon's log and keep its directory.
fn wait_ready(socket: &Path, workers: usize, own: Option<&mut Daemon>) -> Result<Duration> {
    daemon::wait_ready(socket, workers, Duration::from_secs(120)).inspect_err(|_| {
        if let Some(d) = own {
            eprintln!("--- ttsd log ---\n{}", d.log_tail(40));
            eprintln!("ttsd-stress: daemon directory kept: {}", d.keep().display());
        }
    })
}

/// The threads of a run, all timed from `t0`: load clients, the monitor,
/// the fault schedule, and the hostile attackers (that scenario only).
struct Threads {
    t0: Instant,
    tracker: track::Tracker,
    budget: load::Budget,
    clients: Vec<JoinHandle<()>>,
    monitor: JoinHandle<()>,
    monitor_stop: Arc<AtomicBool>,
    series: Arc<Mutex<Series>>,
    faults: JoinHandle<()>,
    /// Lets the fault thread finish (close the non-reader, join its threads).
    release: Arc<AtomicBool>,
    flog: Arc<Mutex<FaultLog>>,
    hostile: Option<JoinHandle<HostileLog>>,
}

/// What the threads left once they all ended.
struct Ended {
    t0: Instant,
    /// Seconds of the load window (until the last client finished).
    load_wall: f64,
    /// How long after the load every worker was ready again (`None`: never).
    healed_in_s: Option<f64>,
    tracker: track::Tracker,
    flog: Arc<Mutex<FaultLog>>,
    series: Arc<Mutex<Series>>,
    hostile: Option<HostileLog>,
}

impl Threads {
    fn start(p: &Plan, settings: &daemon::Settings, socket: &Path, own: Option<&Daemon>, verbose: bool) -> Self {
        let t0 = Instant::now();
        let tracker = track::Tracker::new(t0);
        let spec = load_spec(p, settings, socket);
        let budget = load::Budget {
            left: Arc::new(AtomicI64::new(p.requests.unwrap_or(i64::MAX))),
            stop: Arc::new(AtomicBool::new(false)),
        };
        let monitor_stop = Arc::new(AtomicBool::new(false));
        let series = Arc::new(Mutex::new(Series::default()));
        let monitor = {
            let (socket, stop, series) = (socket.to_path_buf(), monitor_stop.clone(), series.clone());
            std::thread::spawn(move || monitor::run(socket, t0, stop, series, verbose))
        };
        let flog = Arc::new(Mutex::new(FaultLog::default()));
        let release = Arc::new(AtomicBool::new(false));
        let faults = {
            let ctx = faults::Ctx {
                spec: spec.clone(),
                tracker: tracker.clone(),
                stop: budget.stop.clone(),
                release: release.clone(),
                log: flog.clone(),
                seed: p.seed,
            };
            let s = scenario::schedule(p);
            std::thread::spawn(move || faults::run(s, ctx))
        };
        let hostile = p.hostile().then(|| {
            let d = own.expect("hostile starts its own daemon");
            spawn_hostile(p, settings, d, budget.stop.clone())
        });
        let clients = (0..p.clients)
            .map(|i| {
                let (spec, budget, tracker) = (spec.clone(), budget.clone(), tracker.clone());
                std::thread::spawn(move || load::run_client(i, spec, budget, tracker))
            })
            .collect();
        Threads { t0, tracker, budget, clients, monitor, monitor_stop, series, faults, release, flog, hostile }
    }

    /// Until every client is done: stop them when the duration is up; a
    /// progress line every 30 s unless `verbose` prints one every second.
    fn load_window(&self, p: &Plan, verbose: bool) {
        let mut last_note = Instant::now();
        while !self.clients.iter().all(|c| c.is_finished()) {
            if p.duration_s.is_some_and(|d| self.t0.elapsed().as_secs_f64() >= d) {
                self.budget.stop.store(true, Ordering::SeqCst);
            }
            if !verbose && last_note.elapsed() >= Duration::from_secs(30) {
                last_note = Instant::now();
                let n = self.tracker.inner.lock().unwrap().records.len();
                eprintln!("ttsd-stress: {:.0} s, {n} requests sent", self.t0.elapsed().as_secs_f64());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Join the clients, the attackers and the fault schedule; wait for
    /// every worker to be ready again (up to 60 s); then stop the monitor.
    fn end(self, socket: &Path, workers: usize) -> Ended {
        self.budget.stop.store(true, Ordering::SeqCst);
        for c in self.clients {
            let _ = c.join();
        }
        let load_wall = self.t0.elapsed().as_secs_f64();
        let hostile = self.hostile.map(|h| h.join().expect("the hostile thread panicked"));
        self.release.store(true, Ordering::SeqCst);
        let _ = self.faults.join();
        let heal_start = Instant::now();
        let healed = daemon::wait_ready(socket, workers, Duration::from_secs(60));
        self.monitor_stop.store(true, Ordering::SeqCst);
        let _ = self.monitor.join();
        Ended {
            t0: self.t0,
            load_wall,
            healed_in_s: healed.ok().map(|_| heal_start.elapsed().as_secs_f64()),
            tracker: self.tracker,
            flog: self.flog,
            series: self.series,
            hostile,
        }
    }
}

/// What every load client sends, and how long it waits for an answer.
fn load_spec(p: &Plan, settings: &daemon::Settings, socket: &Path) -> load::LoadSpec {
    load::LoadSpec {
        socket: socket.to_path_buf(),
        stream_fraction: p.stream_fraction,
        fault_fraction: p.fault_fraction,
        fault_kinds: p.fault_kinds.clone(),
        per_client_rate: p.rate.map(|r| r / p.clients as f64),
        timeout_ms: p.timeout_ms,
        // Past its deadline a request is answered within kill_grace_ms plus
        // the arbiter's tick; 15 s more is generous.
        wait_limit: Duration::from_millis(p.timeout_ms + settings.kill_grace_ms + 15_000),
        seed: p.seed,
    }
}

/// The hostile attackers and prober against our own daemon, over the
/// load window.
fn spawn_hostile(p: &Plan, settings: &daemon::Settings, d: &Daemon, stop: Arc<AtomicBool>) -> JoinHandle<HostileLog> {
    let target = hostile::Target {
        socket: d.socket.clone(),
        supervisor_pid: d.pid(),
        log: d.log.clone(),
        max_connections: settings.max_connections,
        max_frame_bytes: settings.max_frame_bytes,
        max_text_chars: settings.max_text_chars,
        worker_faults: p.injects_worker_faults(),
    };
    let window = Duration::from_secs_f64(p.duration_s.unwrap_or(120.0));
    std::thread::spawn(move || hostile::run(target, window, stop))
}

/// The daemon after the load: its end sample, health, restarts; then, if
/// it is ours, SIGTERM and how it exited.
fn final_state(socket: &Path, t0: Instant, healed_in_s: Option<f64>, own: Option<&mut Daemon>) -> report::Final {
    let mut sc = monitor::StatusConn::new(socket);
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
        healed_in_s,
        restarts: st.as_ref().map_or(0, |s| s.worker_restarts),
        recycles: st.as_ref().map_or(0, |s| s.worker_recycles),
        end_sample,
        shutdown: None,
    };
    drop(sc);
    if let Some(d) = own {
        fin.shutdown = Some(shutdown(d, socket));
    }
    fin
}

/// SIGTERM our daemon: (how it went, whether it exited 0 and removed its socket).
fn shutdown(d: &mut Daemon, socket: &Path) -> (String, bool) {
    match d.terminate(Duration::from_secs(20)) {
        Some((status, took)) => {
            let gone = !socket.exists();
            (format!("{status} after {:.1} s, socket removed: {gone}", took.as_secs_f64()), status.success() && gone)
        }
        None => ("did not exit within 20 s of SIGTERM".into(), false),
    }
}

/// Every invariant (the hostile ones last), the summary, the hostile
/// health percentiles, and whether all passed.
struct Verdict<'a> {
    inv: Vec<Invariant>,
    summary: Summary,
    hostile: Option<(&'a HostileLog, Pcts)>,
    pass: bool,
}

fn verdict<'a>(run: &report::Run, hostile_log: Option<&'a HostileLog>, max_connections: usize) -> Verdict<'a> {
    let (mut inv, summary) = report::evaluate(run);
    let hostile = hostile_log.map(|h| {
        let (more, health) = hostile::invariants(h, max_connections);
        inv.extend(more);
        (h, health)
    });
    let pass = inv.iter().all(|i| i.pass);
    Verdict { inv, summary, hostile, pass }
}

/// The printed report: summary and invariants, the hostile line, the
/// faults that could not be delivered.
fn print_report(title: &str, v: &Verdict, run: &report::Run) {
    println!("{}", report::print(title, &v.summary, &v.inv));
    if let Some((h, hp)) = &v.hostile {
        let valid = run.records.len();
        let done = run.records.iter().filter(|r| r.outcome == Some(track::Outcome::Done)).count();
        let long = &h.long.texts;
        let long_done = long.iter().filter(|t| t.outcome == "done").count();
        println!(
            "  hostile         supervisor peak RSS {:.1} MiB, log {} bytes, health p50 {:.1} / p99 {:.1} / max {:.1} ms \
             ({} probes), valid client {done} of {valid} done, lost replies {}, long texts {long_done} of {} done \
             ({} chars), worker peak RSS {:.1} MiB during them",
            h.supervisor_peak_mib,
            h.log_bytes,
            hp.p50,
            hp.p99,
            hp.max,
            hp.n,
            v.summary.lost_replies,
            long.len(),
            long.iter().map(|t| t.chars).sum::<usize>(),
            h.long.worker_rss_peak_mib.max(h.long.worker_hwm_peak_mib)
        );
    }
    if !run.log.skipped.is_empty() {
        println!("  skipped faults: {}", run.log.skipped.join("; "));
    }
}

/// The full report (`--json`): plan, settings, verdict, every request,
/// fault and sample.
fn write_json(path: &Path, p: &Plan, settings: &daemon::Settings, run: &report::Run, v: &Verdict) -> Result<()> {
    let doc = serde_json::json!({
        "plan": p,
        "daemon_settings": settings,
        "summary": v.summary,
        "invariants": v.inv,
        "pass": v.pass,
        "signals": run.log.signals,
        "attacks": run.log.attacks,
        "skipped_faults": run.log.skipped,
        "requests": run.records,
        "samples": run.series.samples,
        "status_failures": run.series.failures,
        "hostile": v.hostile.map(|(h, _)| h),
    });
    std::fs::write(path, serde_json::to_string_pretty(&doc)?).with_context(|| format!("write {}", path.display()))?;
    eprintln!("ttsd-stress: report written to {}", path.display());
    Ok(())
}

/// Keep our daemon's directory (config, log) when something failed or
/// `--keep` asks; show the log's tail on failure.
fn keep_on_failure(d: &mut Daemon, pass: bool, keep: bool) {
    if !pass || keep {
        if !pass {
            eprintln!("--- ttsd log (last lines) ---\n{}", d.log_tail(30));
        }
        eprintln!("ttsd-stress: daemon directory kept: {}", d.keep().display());
    }
}
