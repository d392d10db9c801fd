//! `tanh`, `sigmoid` and `erf` as rational functions built from MLX's
//! add/multiply/divide, accurate to a few float32 ulps.
//!
//! Why: MLX's CPU build for x86-64 has no SIMD path for transcendental
//! functions; `exp`, `tanh`, `sigmoid` and `erf` run one element at a time
//! through libm's `fmaf` (about 15-24 ns per element here), while add,
//! multiply and divide are vectorised (0.1-0.4 ns). The flow's gates alone
//! are millions of `tanh`/`sigmoid` per sentence. The polynomials are the
//! minimax fits Eigen uses for its float `tanh` and `erf`. Never evaluates.
use mlx_rs::{ops, Array};

use super::ops::Result;

fn c(v: f32) -> Array {
    Array::from_f32(v)
}

/// `x * p(x2) / q(x2)` with Horner's rule; coefficients lowest degree first.
fn odd_rational(x: &Array, x2: &Array, p: &[f32], q: &[f32]) -> Result<Array> {
    let horner = |coeffs: &[f32]| -> Result<Array> {
        let (last, rest) = coeffs.split_last().expect("non-empty");
        let mut acc = ops::add(&ops::multiply(x2, c(*last))?, c(*rest.last().expect("degree >= 1")))?;
        for &k in rest.iter().rev().skip(1) {
            acc = ops::add(&ops::multiply(&acc, x2)?, c(k))?;
        }
        Ok(acc)
    };
    Ok(ops::divide(&ops::multiply(x, &horner(p)?)?, &horner(q)?)?)
}

/// `tanh(x)`; exact to float32 rounding beyond |x| = 7.9 (where it is ±1).
pub fn tanh(x: &Array) -> Result<Array> {
    const P: [f32; 7] =
        [4.893_524_6e-3, 6.372_619_3e-4, 1.485_722_4e-5, 5.122_297e-8, -8.604_672e-11, 2.000_188e-13, -2.760_768_5e-16];
    const Q: [f32; 4] = [4.893_525e-3, 2.268_434_6e-3, 1.185_347_1e-4, 1.198_258_4e-6];
    let x = ops::clip(x, (-7.905_311_f32, 7.905_311_f32))?;
    let x2 = ops::multiply(&x, &x)?;
    odd_rational(&x, &x2, &P, &Q)
}

/// `sigmoid(x) = (1 + tanh(x / 2)) / 2`.
pub fn sigmoid(x: &Array) -> Result<Array> {
    let t = tanh(&ops::multiply(x, c(0.5))?)?;
    Ok(ops::add(&ops::multiply(&t, c(0.5))?, c(0.5))?)
}

/// `erf(x)`; ±1 beyond |x| = 4.
pub fn erf(x: &Array) -> Result<Array> {
    const P: [f32; 7] = [
        -1.609_603_3e-2,
        -2.954_6e-3,
        -7.349_906_3e-4,
        -5.692_506_4e-5,
        -2.101_024e-6,
        2.770_681_4e-8,
        -2.726_142_3e-10,
    ];
    const Q: [f32; 5] = [-1.426_473_9e-2, -7.373_329_2e-3, -1.682_827e-3, -2.133_740_6e-4, -1.456_607_2e-5];
    let x = ops::clip(x, (-4.0_f32, 4.0_f32))?;
    let x2 = ops::multiply(&x, &x)?;
    odd_rational(&x, &x2, &P, &Q)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn grid() -> (Vec<f32>, Array) {
        let xs: Vec<f32> = (-12_000..=12_000).map(|i| i as f32 * 1e-3).collect();
        let a = Array::from_slice(&xs, &[xs.len() as i32]);
        (xs, a)
    }

    fn max_err(got: &Array, want: impl Fn(f32) -> f32, xs: &[f32]) -> f32 {
        let got = got.as_slice::<f32>().to_vec();
        got.iter().zip(xs).map(|(g, &x)| (g - want(x)).abs()).fold(0.0, f32::max)
    }

    fn erf_ref(x: f32) -> f32 {
        libm_erf(x as f64) as f32
    }

    /// erf by its Taylor series (|x| < 3) and the continued fraction for
    /// erfc beyond: f64 reference for the test only.
    fn libm_erf(x: f64) -> f64 {
        if x.abs() < 3.0 {
            let mut term = x;
            let mut sum = x;
            for n in 1..200 {
                term *= -x * x / n as f64;
                sum += term / (2 * n + 1) as f64;
            }
            sum * 2.0 / std::f64::consts::PI.sqrt()
        } else {
            let z = x.abs();
            let mut f = 0.0;
            for k in (1..60).rev() {
                f = (k as f64 / 2.0) / (z + f);
            }
            let erfc = (-z * z).exp() / std::f64::consts::PI.sqrt() / (z + f);
            x.signum() * (1.0 - erfc)
        }
    }

    #[test]
    fn rational_functions_match_the_exact_ones() {
        let _lock = crate::mlx_test_lock();
        let (xs, a) = grid();
        let t = tanh(&a).unwrap();
        let s = sigmoid(&a).unwrap();
        let e = erf(&a).unwrap();
        mlx_rs::transforms::eval([&t, &s, &e]).unwrap();
        let et = max_err(&t, |x| (x as f64).tanh() as f32, &xs);
        let es = max_err(&s, |x| (1.0 / (1.0 + (-(x as f64)).exp())) as f32, &xs);
        let ee = max_err(&e, erf_ref, &xs);
        assert!(et < 1e-6, "tanh max error {et}");
        assert!(es < 1e-6, "sigmoid max error {es}");
        assert!(ee < 2e-6, "erf max error {ee}");
    }
}
