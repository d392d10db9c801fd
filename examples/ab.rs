//! Paired timing of the model's three parts (prior, flow, decoder) under
//! several settings, alternated round by round in one process so that the
//! machine's noise hits each alike; prints the best time of each part, the
//! calling thread's own CPU time in it (building and dispatching graphs) and
//! the whole process's (CPU time below lanes x wall time is idle lanes).
//!
//! `cargo run --release --example ab -- IDS ROUNDS SETTING...`, where a
//! setting is `THREADS[:VAR=VALUE...]`: the engine's lanes, plus environment
//! variables set for that setting's runs (for an experiment that reads one).
use std::time::Instant;

use ttsd::engine::vits::Sampling;
use ttsd::engine::{cpu, Voice};

fn apply(setting: &str, previous: &mut Vec<String>) {
    let mut parts = setting.split(':');
    let threads: usize = parts.next().and_then(|t| t.parse().ok()).expect("THREADS[:VAR=VALUE...]");
    cpu::set_threads(threads);
    for var in previous.drain(..) {
        // SAFETY: single-threaded here; MLX's threads do not read the environment.
        unsafe { std::env::remove_var(var) };
    }
    for kv in parts {
        let (k, v) = kv.split_once('=').expect("VAR=VALUE");
        // SAFETY: as above.
        unsafe { std::env::set_var(k, v) };
        previous.push(k.to_string());
    }
}

/// CPU seconds this thread has used (graph building and dispatch: the
/// lanes' threads do the arithmetic).
fn thread_cpu() -> f64 {
    cpu_clock(libc::CLOCK_THREAD_CPUTIME_ID)
}

/// CPU seconds the whole process has used (this thread and the lanes).
fn process_cpu() -> f64 {
    cpu_clock(libc::CLOCK_PROCESS_CPUTIME_ID)
}

fn cpu_clock(clock: libc::clockid_t) -> f64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime fills the struct it is given.
    unsafe { libc::clock_gettime(clock, &mut ts) };
    ts.tv_sec as f64 + ts.tv_nsec as f64 * 1e-9
}

fn main() {
    cpu::configure();
    let args: Vec<String> = std::env::args().skip(1).collect();
    assert!(args.len() >= 3, "usage: ab IDS ROUNDS SETTING...");
    let n: usize = args[0].parse().expect("IDS");
    let rounds: usize = args[1].parse().expect("ROUNDS");
    let settings = &args[2..];
    let voice = Voice::load("v", std::path::Path::new("voices/en_US-joe-medium.onnx")).expect("bundled voice");
    let ids: Vec<i64> = (0..n as i64).map(|i| if i % 2 == 0 { 0 } else { 20 + (i % 50) }).collect();
    let m = voice.model();
    let sampling = Sampling { length_scale: 1.0, noise_scale: 0.667, noise_w: 0.8, seed: 1 };
    let mut best = vec![[f64::MAX; 3]; settings.len()];
    let mut main_cpu = vec![[f64::MAX; 3]; settings.len()];
    let mut all_cpu = vec![[f64::MAX; 3]; settings.len()];
    let mut set = Vec::new();
    let mut frames = 0;
    for _ in 0..rounds {
        for (s, setting) in settings.iter().enumerate() {
            apply(setting, &mut set);
            let (c0, p0, t0) = (thread_cpu(), process_cpu(), Instant::now());
            let prior = m.prior(&ids, None, sampling, &|| false).unwrap();
            let (c1, p1, t1) = (thread_cpu(), process_cpu(), Instant::now());
            let z = m.flow.reverse(&prior.z_p, None, &|| false).unwrap();
            let (c2, p2, t2) = (thread_cpu(), process_cpu(), Instant::now());
            let audio = m.dec.forward(&z, None).unwrap();
            audio.eval().unwrap();
            let (c3, p3, t3) = (thread_cpu(), process_cpu(), Instant::now());
            for (b, d) in main_cpu[s].iter_mut().zip([c1 - c0, c2 - c1, c3 - c2]) {
                *b = b.min(d * 1e3);
            }
            for (b, d) in all_cpu[s].iter_mut().zip([p1 - p0, p2 - p1, p3 - p2]) {
                *b = b.min(d * 1e3);
            }
            frames = z.shape()[0];
            for (b, d) in best[s].iter_mut().zip([t1 - t0, t2 - t1, t3 - t2]) {
                *b = b.min(d.as_secs_f64() * 1e3);
            }
        }
    }
    println!("{n} ids, {frames} frames; best of {rounds}:");
    for (((setting, b), c), p) in settings.iter().zip(&best).zip(&main_cpu).zip(&all_cpu) {
        println!(
            "{setting:<16} prior {:.0} flow {:.0} dec {:.0} total {:.0} ms; CPU, this thread {:.0} / {:.0} / {:.0}, all {:.0} / {:.0} / {:.0} ms",
            b[0],
            b[1],
            b[2],
            b.iter().sum::<f64>(),
            c[0],
            c[1],
            c[2],
            p[0],
            p[1],
            p[2]
        );
    }
}
