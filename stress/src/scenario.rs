//! The scenarios: what each one runs (load, faults, daemon settings), the
//! flags laid over it ([`plan`]), the daemon configuration it asks for
//! ([`daemon_settings`]) and the fault timeline it makes ([`schedule`]).
//!
//! Owns every scenario's numbers; stress/README.md's scenario table must
//! say the same. Pure: it never starts a thread, a process or a
//! connection, and never judges a run (that is [`crate::report`]).
use crate::cli::Args;
use crate::daemon;
use crate::faults::{self, Action, Scheduled};
use crate::track::FlagFault;
use anyhow::{bail, Context, Result};
use clap::ValueEnum;
use std::time::Duration;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Scenario {
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
    /// lock others out, or a worker run one unbounded sentence (huge voice
    /// names pipelined unread, floods that never read, more idle
    /// connections than max_connections, long texts without a full stop),
    /// one phase each, while one valid client's requests must all end
    /// done: checks supervisor peak RSS, log bytes, health latency, lost
    /// replies, long texts done, worker peak RSS and restarts.
    Hostile,
}

/// Everything a run does, after the scenario's defaults and the flags.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Plan {
    pub scenario: String,
    pub workers: usize,
    pub clients: usize,
    pub requests: Option<i64>,
    pub duration_s: Option<f64>,
    pub rate: Option<f64>,
    pub stream_fraction: f64,
    pub kill_every_s: f64,
    pub stop_every_s: f64,
    pub stop_for_s: f64,
    pub fault_fraction: f64,
    pub fault_kinds: Vec<FlagFault>,
    pub attack_every_s: f64,
    pub nonreader: u32,
    pub nonreader_every_s: f64,
    pub hang_timeout_ms: u64,
    pub timeout_ms: u64,
    pub max_rss_mb: u64,
    pub seed: u64,
    /// One-off faults at fixed times (smoke).
    #[serde(skip)]
    pub scripted: Vec<Scheduled>,
    #[serde(skip)]
    pub kind: Scenario,
}

impl Plan {
    /// What every scenario starts from: 2 workers, 2 closed-loop clients,
    /// half the requests streamed, no faults.
    fn base(kind: Scenario, seed: u64) -> Self {
        use FlagFault::*;
        Plan {
            scenario: format!("{kind:?}").to_lowercase(),
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
            fault_kinds: vec![Crash, Hang, Slow, Grow],
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
            seed,
            scripted: Vec::new(),
            kind,
        }
    }

    pub fn hostile(&self) -> bool {
        self.kind == Scenario::Hostile
    }

    /// Whether the run kills, stops or crashes workers itself (signals,
    /// fault flags, scripted faults), so that a worker restart may be its own.
    pub fn injects_worker_faults(&self) -> bool {
        self.kill_every_s > 0.0 || self.stop_every_s > 0.0 || self.fault_fraction > 0.0 || !self.scripted.is_empty()
    }
}

/// The scenario's values, then the flags over them.
pub fn plan(a: &Args) -> Result<Plan> {
    let mut p = Plan::base(a.scenario, a.seed);
    match a.scenario {
        Scenario::Custom => custom(&mut p, a),
        Scenario::Smoke => smoke(&mut p),
        Scenario::Soak => soak(&mut p),
        Scenario::Backpressure => backpressure(&mut p),
        Scenario::Hostile => hostile(&mut p),
        Scenario::Chaos => chaos(&mut p),
    }
    apply_flags(&mut p, a)?;
    if p.clients == 0 || p.workers == 0 {
        bail!("--clients and --workers must be at least 1");
    }
    if p.requests.is_none() && p.duration_s.is_none() {
        bail!("give --requests or --duration");
    }
    Ok(p)
}

fn at(s: f64, action: Action) -> Scheduled {
    Scheduled { at: Duration::from_secs_f64(s), action }
}

/// 20 requests unless the flags bound the run.
fn custom(p: &mut Plan, a: &Args) {
    if a.requests.is_none() && a.duration.is_none() {
        p.requests = Some(20);
    }
}

/// One of each, early enough that their effects end inside the load
/// window: a kill, a crash flag, a hang flag (short hang_timeout), a slow
/// flag, bad frames, a disconnect in the middle of a stream, a client that
/// never reads.
fn smoke(p: &mut Plan) {
    use FlagFault::*;
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

/// Steady paced load (about a third of two cores), so that a leak shows
/// over time rather than the machine's limits.
fn soak(p: &mut Plan) {
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

/// One normal client beside a non-reader that submits 30 requests every 10 s.
fn backpressure(p: &mut Plan) {
    p.duration_s = Some(40.0);
    p.clients = 1;
    p.nonreader = 30;
    p.nonreader_every_s = 10.0;
}

/// One valid client; the attackers are [`crate::hostile`]'s.
fn hostile(p: &mut Plan) {
    p.duration_s = Some(120.0);
    p.clients = 1;
    p.hang_timeout_ms = 6000;
}

/// Every fault, often.
fn chaos(p: &mut Plan) {
    p.duration_s = Some(300.0);
    p.kill_every_s = 5.0;
    p.stop_every_s = 20.0;
    p.fault_fraction = 0.03;
    p.attack_every_s = 10.0;
    p.nonreader = 2;
    p.nonreader_every_s = 60.0;
    p.max_rss_mb = 450;
}

/// The flags given, over the scenario's values. `--requests` alone bounds
/// a scenario by count instead of its duration.
fn apply_flags(p: &mut Plan, a: &Args) -> Result<()> {
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
    Ok(())
}

/// The configuration of the daemon the harness starts for `p`.
pub fn daemon_settings(p: &Plan) -> daemon::Settings {
    daemon::Settings {
        workers: p.workers,
        queue_capacity: 64,
        max_connections: 64,
        max_frame_bytes: 1 << 20,
        // The daemon's default, said here: hostile's long texts stay under it.
        max_text_chars: 20_000,
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
        idle_timeout_ms: p.hostile().then_some(5000),
    }
}

/// The timeline of faults for the load window, sorted by time.
pub fn schedule(p: &Plan) -> Vec<Scheduled> {
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

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    fn plan_of(args: &[&str]) -> Result<Plan> {
        plan(&Args::try_parse_from(std::iter::once("ttsd-stress").chain(args.iter().copied())).unwrap())
    }

    #[test]
    fn custom_runs_20_requests_unless_bounded() {
        let p = plan_of(&[]).unwrap();
        assert_eq!((p.requests, p.duration_s, p.scenario.as_str()), (Some(20), None, "custom"));
        let p = plan_of(&["--duration", "5"]).unwrap();
        assert_eq!((p.requests, p.duration_s), (None, Some(5.0)));
        assert!(schedule(&p).is_empty(), "custom injects nothing by default");
    }

    #[test]
    fn smoke_scripts_one_of_each_fault_inside_its_window() {
        let p = plan_of(&["--scenario", "smoke"]).unwrap();
        assert_eq!((p.duration_s, p.hang_timeout_ms, p.nonreader), (Some(16.0), 6000, 2));
        let s = schedule(&p);
        assert_eq!(s.len(), 9, "8 scripted and the non-reader");
        assert!(s.windows(2).all(|w| w[0].at <= w[1].at), "sorted");
        assert!(s.iter().all(|e| e.at < Duration::from_secs(16)));
        assert_eq!(s[0].action, Action::NonReader(2));
        assert!(s.iter().any(|e| e.action == Action::Kill));
    }

    #[test]
    fn flags_override_the_scenario() {
        let p = plan_of(&["--scenario", "chaos", "--duration", "60", "--kill-every", "0", "--faults", "slow"]).unwrap();
        assert_eq!((p.duration_s, p.kill_every_s, p.stop_every_s), (Some(60.0), 0.0, 20.0));
        assert_eq!(p.fault_kinds, [FlagFault::Slow]);
        assert!(!schedule(&p).iter().any(|e| e.action == Action::Kill));
        // --requests alone replaces a scenario's duration.
        let p = plan_of(&["--scenario", "soak", "--requests", "10"]).unwrap();
        assert_eq!((p.requests, p.duration_s, p.rate), (Some(10), None, Some(1.0)));
        assert!(plan_of(&["--workers", "0"]).is_err());
        assert!(plan_of(&["--faults", "crash,explode"]).is_err());
    }

    #[test]
    fn attacks_take_turns() {
        let p = plan_of(&["--duration", "40", "--attack-every", "10"]).unwrap();
        let kinds: Vec<Action> = schedule(&p).into_iter().map(|e| e.action).collect();
        assert_eq!(kinds, [Action::Malformed, Action::Oversized, Action::Truncated, Action::Midstream]);
    }

    #[test]
    fn hostile_injects_no_worker_faults_and_its_long_texts_fit() {
        let p = plan_of(&["--scenario", "hostile"]).unwrap();
        assert!(!p.injects_worker_faults(), "a worker restart during hostile is never explained");
        assert!(plan_of(&["--scenario", "hostile", "--kill-every", "10"]).unwrap().injects_worker_faults());
        assert!(plan_of(&["--scenario", "smoke"]).unwrap().injects_worker_faults());
        let max = daemon_settings(&p).max_text_chars;
        assert!(crate::hostile::LONG_TEXTERS.iter().all(|&(chars, _)| chars <= max));
        assert!(daemon_settings(&p).toml("/s".as_ref(), "/v".as_ref()).contains("max_text_chars = 20000\n"));
    }

    #[test]
    fn only_hostile_shortens_the_idle_timeout() {
        let p = plan_of(&["--scenario", "hostile"]).unwrap();
        assert_eq!((p.clients, p.duration_s), (1, Some(120.0)));
        assert_eq!(daemon_settings(&p).idle_timeout_ms, Some(5000));
        let p = plan_of(&["--scenario", "backpressure"]).unwrap();
        assert_eq!(daemon_settings(&p).idle_timeout_ms, None);
        assert_eq!(daemon_settings(&p).heartbeat_ms, 500);
    }
}
