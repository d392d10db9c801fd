//! Paired timing of the model's three parts (prior, flow, decoder) under
//! several settings, alternated round by round in one process so that the
//! machine's noise hits each alike; prints the best time of each part.
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

fn main() {
    cpu::choose_blas_kernels();
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
    let mut set = Vec::new();
    let mut frames = 0;
    for _ in 0..rounds {
        for (s, setting) in settings.iter().enumerate() {
            apply(setting, &mut set);
            let t0 = Instant::now();
            let prior = m.prior(&ids, None, sampling, &|| false).unwrap();
            let t1 = Instant::now();
            let z = m.flow.reverse(&prior.z_p, None, &|| false).unwrap();
            let t2 = Instant::now();
            let audio = m.dec.forward(&z, None).unwrap();
            audio.eval().unwrap();
            let t3 = Instant::now();
            frames = z.shape()[0];
            for (b, d) in best[s].iter_mut().zip([t1 - t0, t2 - t1, t3 - t2]) {
                *b = b.min(d.as_secs_f64() * 1e3);
            }
        }
    }
    println!("{n} ids, {frames} frames; best of {rounds}:");
    for (setting, b) in settings.iter().zip(&best) {
        println!("{setting:<16} prior {:.0} flow {:.0} dec {:.0} total {:.0} ms", b[0], b[1], b[2], b.iter().sum::<f64>());
    }
}
