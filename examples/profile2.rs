use std::time::Instant;
use ttsd::engine::{SynthParams, Voice};
fn main() {
    let v = Voice::load("v", std::path::Path::new("voices/en_US-joe-medium.onnx")).unwrap();
    let ids: Vec<i64> = (0..400).map(|i| if i % 2 == 0 { 0 } else { 20 + (i % 50) }).collect();
    let _p = SynthParams::default();
    let m = v.model();
    for _ in 0..3 {
        let t = Instant::now();
        let enc = m.enc_p.forward(&ids).unwrap();
        mlx_rs::transforms::eval([&enc.hidden, &enc.m_p, &enc.logs_p]).unwrap();
        let t_enc = t.elapsed();
        let t = Instant::now();
        let key = mlx_rs::random::key(1).unwrap();
        let logw = m.dp.forward(&enc.hidden, None, 0.8, &key).unwrap();
        logw.eval().unwrap();
        let t_dp = t.elapsed();
        let key2 = mlx_rs::random::key(2).unwrap();
        let z_p = mlx_rs::random::normal::<f32>(&[900, 192][..], None, None, &key2).unwrap();
        z_p.eval().unwrap();
        let t = Instant::now();
        let z = m.flow.reverse(&z_p, None).unwrap();
        z.eval().unwrap();
        let t_flow = t.elapsed();
        let t = Instant::now();
        let a = m.dec.forward(&z, None).unwrap();
        a.eval().unwrap();
        println!("enc={:?} dp={:?} flow={:?} dec={:?}", t_enc, t_dp, t_flow, t.elapsed());
    }
}
