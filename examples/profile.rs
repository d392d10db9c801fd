use std::time::Instant;
use ttsd::engine::vits::ops::to_vec;
use ttsd::engine::{SynthParams, Voice};
fn main() {
    let v = Voice::load("v", std::path::Path::new("voices/en_US-joe-medium.onnx")).unwrap();
    let ids: Vec<i64> = (0..200).map(|i| if i % 2 == 0 { 0 } else { 20 + (i % 50) }).collect();
    let p = SynthParams { seed: Some(1), ..Default::default() };
    for _ in 0..2 {
        let t = Instant::now();
        let g = None;
        let lat = v.model().latent(&ids, g, p.length_scale, p.noise_scale, p.noise_w, 1).unwrap();
        let t_lat = t.elapsed();
        let frames = lat.z.shape()[0];
        let t2 = Instant::now();
        let a = to_vec(&v.model().dec.forward(&lat.z, None).unwrap()).unwrap();
        let t_dec = t2.elapsed();
        let audio_s = a.len() as f64 / 22050.0;
        println!("frames={frames} audio_s={audio_s:.2} latent={:?} dec={:?} rtf={:.3}", t_lat, t_dec, (t_lat + t_dec).as_secs_f64() / audio_s);
    }
}
