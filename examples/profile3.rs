use std::time::Instant;
use ttsd::engine::Voice;
fn main() {
    let v = Voice::load("v", std::path::Path::new("voices/en_US-joe-medium.onnx")).unwrap();
    let m = v.model();
    println!("context frames {}", m.dec.context_frames());
    let key2 = mlx_rs::random::key(2).unwrap();
    let z = mlx_rs::random::normal::<f32>(&[900, 192][..], None, None, &key2).unwrap();
    z.eval().unwrap();
    for win in [32usize, 64, 96, 128, 192, 256, 900] {
        let mut best = f64::MAX;
        for _ in 0..2 {
            let t = Instant::now();
            let mut s = 0;
            while s < 900 { let e = (s + win).min(900); let a = m.decode_window(&z, s, e, None).unwrap(); a.eval().unwrap(); s = e; }
            best = best.min(t.elapsed().as_secs_f64());
        }
        println!("window {win}: {:.0} ms", best * 1e3);
    }
}
