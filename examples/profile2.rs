//! Per-stage CPU and wall time of the model (development aid).
use std::time::Instant;
use ttsd::engine::Voice;
fn cpu() -> f64 {
    let mut u = std::mem::MaybeUninit::<libc::rusage>::zeroed();
    unsafe { libc::getrusage(libc::RUSAGE_SELF, u.as_mut_ptr()); let u = u.assume_init();
    u.ru_utime.tv_sec as f64 + u.ru_utime.tv_usec as f64 * 1e-6 + u.ru_stime.tv_sec as f64 + u.ru_stime.tv_usec as f64 * 1e-6 }
}
fn main() {
    let n: usize = std::env::args().nth(1).and_then(|a| a.parse().ok()).unwrap_or(400);
    ttsd::engine::cpu::set_threads(ttsd::engine::cpu::threads_from_env());
    let v = Voice::load("v", std::path::Path::new("voices/en_US-joe-medium.onnx")).unwrap();
    let ids: Vec<i64> = (0..n as i64).map(|i| if i % 2 == 0 { 0 } else { 20 + (i % 50) }).collect();
    let m = v.model();
    let reps: usize = std::env::args().nth(2).and_then(|a| a.parse().ok()).unwrap_or(5);
    let mut best = [f64::MAX; 3];
    for _ in 0..reps {
        let (w0, c0) = (Instant::now(), cpu());
        let prior = m.prior(&ids, None, ttsd::engine::vits::Sampling { length_scale: 1.0, noise_scale: 0.667, noise_w: 0.8, seed: 1 }, &|| false).unwrap();
        let wp = Instant::now();
        let z = m.flow.reverse(&prior.z_p, None, &|| false).unwrap();
        let lat = ttsd::engine::vits::Latent { durations: prior.durations, z };
        let (w1, c1) = (Instant::now(), cpu());
        let a = m.dec.forward(&lat.z, None).unwrap();
        a.eval().unwrap();
        let (w2, c2) = (Instant::now(), cpu());
        let audio = a.shape()[0] as f64 / 22050.0;
        best[0] = best[0].min((wp - w0).as_secs_f64() * 1e3);
        best[1] = best[1].min((w1 - wp).as_secs_f64() * 1e3);
        best[2] = best[2].min((w2 - w1).as_secs_f64() * 1e3);
        if std::env::var("QUIET").is_ok() { continue; }
        print!("prior {:.0} ms ", (wp - w0).as_secs_f64() * 1e3);
        println!("frames={} audio={audio:.2}s latent wall {:.0} ms cpu {:.0} ms | dec wall {:.0} ms cpu {:.0} ms | rtf wall {:.3}",
            lat.z.shape()[0], (w1 - w0).as_secs_f64() * 1e3, (c1 - c0) * 1e3, (w2 - w1).as_secs_f64() * 1e3, (c2 - c1) * 1e3, (w2 - w0).as_secs_f64() / audio);
    }
    println!("best prior {:.0} flow {:.0} dec {:.0} total {:.0} ms", best[0], best[1], best[2], best.iter().sum::<f64>());
}
