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
    let v = Voice::load("v", std::path::Path::new("voices/en_US-joe-medium.onnx")).unwrap();
    let ids: Vec<i64> = (0..n as i64).map(|i| if i % 2 == 0 { 0 } else { 20 + (i % 50) }).collect();
    let m = v.model();
    for _ in 0..3 {
        let (w0, c0) = (Instant::now(), cpu());
        let lat = m.latent(&ids, None, 1.0, 0.667, 0.8, 1, &|| false).unwrap();
        let (w1, c1) = (Instant::now(), cpu());
        let a = m.dec.forward(&lat.z, None).unwrap();
        a.eval().unwrap();
        let (w2, c2) = (Instant::now(), cpu());
        let audio = a.shape()[0] as f64 / 22050.0;
        println!("frames={} audio={audio:.2}s latent wall {:.0} ms cpu {:.0} ms | dec wall {:.0} ms cpu {:.0} ms | rtf wall {:.3}",
            lat.z.shape()[0], (w1 - w0).as_secs_f64() * 1e3, (c1 - c0) * 1e3, (w2 - w1).as_secs_f64() * 1e3, (c2 - c1) * 1e3, (w2 - w0).as_secs_f64() / audio);
    }
}
