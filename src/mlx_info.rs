//! Facts about the MLX runtime this process runs on.
use mlx_rs::Array;
pub fn smoke() -> Vec<f32> {
    let a = Array::from_slice(&[1.0f32, 2.0, 3.0, 4.0], &[2, 2]);
    let b = a.matmul(&a).unwrap();
    b.as_slice::<f32>().to_vec()
}
