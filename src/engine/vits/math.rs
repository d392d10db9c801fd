//! The model's element-wise functions: `exp`, `softmax`, `tanh` and `erf`
//! built from MLX's add/multiply/divide (and an integer view for `exp`'s
//! power of two), accurate to a few float32 ulps (`tanh` to 1.2e-6), and
//! the activations built on them (GELU, ReLU, leaky ReLU).
//!
//! Why: MLX's CPU build for x86-64 has no SIMD path for transcendental
//! functions; `exp`, `tanh`, `sigmoid` and `erf` run one element at a time
//! through libm, tens of times slower per element than the vectorised add,
//! multiply and divide. The flow's gates alone are millions of
//! `tanh`/`sigmoid` per sentence. The polynomials are the
//! minimax fits Eigen uses for its float `erf`, and for `tanh` a cheaper fit
//! of our own (1.2e-6, eight operations fewer than Eigen's).
//!
//! Each polynomial is fifteen to twenty MLX operations, and an operation costs a
//! few microseconds to build and dispatch whatever its size: below
//! [`SCALAR_BELOW`] elements ([`ERF_SCALAR_BELOW`] for `erf`: short
//! sentences, the duration predictor) MLX's own one-element-at-a-time
//! functions are cheaper, and are used.
//!
//! Owns these functions only: no weights, no layers. It never evaluates and
//! never imports the layers in [`super::ops`].
use mlx_rs::{ops, Array};

use crate::engine::error::Result;

/// Arrays smaller than this use MLX's scalar `exp` and `tanh`: below it a
/// polynomial's cost per operation outweighs its speed per element (the
/// crossover; figures in docs/engine.md).
pub const SCALAR_BELOW: usize = 6144;

/// The same for `erf`, whose scalar form is dearer, so that the polynomial
/// pays from fewer elements (the duration predictor's GELUs on a short
/// sentence; figures in docs/engine.md).
pub const ERF_SCALAR_BELOW: usize = 4096;

fn small(x: &Array) -> bool {
    x.size() < SCALAR_BELOW
}

fn c(v: f32) -> Array {
    Array::from_f32(v)
}

/// `x * p(x2) / q(x2)` with Horner's rule; coefficients lowest degree first.
fn odd_rational(x: &Array, x2: &Array, p: &[f32], q: &[f32]) -> Result<Array> {
    let horner = |coeffs: &[f32]| -> Result<Array> {
        let [lower @ .., next, last] = coeffs else {
            // Degree 0 (or no terms): a constant.
            return Ok(c(coeffs.first().copied().unwrap_or(0.0)));
        };
        let mut acc = ops::add(&ops::multiply(x2, c(*last))?, c(*next))?;
        for &k in lower.iter().rev() {
            acc = ops::add(&ops::multiply(&acc, x2)?, c(k))?;
        }
        Ok(acc)
    };
    Ok(ops::divide(&ops::multiply(x, &horner(p)?)?, &horner(q)?)?)
}

/// 1.5 * 2^23: a float this size has unit spacing, so adding it rounds to
/// an integer, which its low mantissa bits then hold (for |n| < 2^22).
const ROUNDING_MAGIC: f32 = 12_582_912.0;

/// `exp(x)` for `x <= 88` (below -87 it gives exp(-87), about 1.6e-38):
/// `2^n * p(r)` with `n = round(x / ln 2)`, `r = x - n ln 2` (in two parts,
/// Cody-Waite) and Cephes's degree-5 polynomial for `exp(r)`; `2^n` is
/// written straight into a float's exponent bits.
pub fn exp(x: &Array) -> Result<Array> {
    const P: [f32; 6] = [1.987_569_1e-4, 1.398_2e-3, 8.333_452e-3, 4.166_579_6e-2, 1.666_666_5e-1, 0.5];
    if small(x) {
        return Ok(ops::exp(x)?);
    }
    let x = ops::clip(x, (-87.0_f32, 88.0_f32))?;
    // n = round(x / ln 2) by the float trick: adding 1.5 * 2^23 leaves the
    // rounded integer in the low mantissa bits (all vectorised, where
    // `floor` runs one element at a time).
    let shifted = ops::add(&ops::multiply(&x, c(std::f32::consts::LOG2_E))?, c(ROUNDING_MAGIC))?;
    let n = ops::subtract(&shifted, c(ROUNDING_MAGIC))?;
    let r = ops::subtract(&x, &ops::multiply(&n, c(0.693_359_4))?)?;
    let r = ops::subtract(&r, &ops::multiply(&n, c(-2.121_944_4e-4))?)?;
    let mut p = ops::add(&ops::multiply(&r, c(P[0]))?, c(P[1]))?;
    for &k in &P[2..] {
        p = ops::add(&ops::multiply(&p, &r)?, c(k))?;
    }
    // exp(r) = 1 + r + r^2 * p(r)
    let e = ops::add(&ops::add(&ops::multiply(&ops::multiply(&p, &r)?, &r)?, &r)?, c(1.0))?;
    // 2^n: the exponent field (n + 127) << 23, with n read off `shifted`'s bits.
    let bits = ops::add(&shifted.view::<i32>()?, Array::from_int(127 - ROUNDING_MAGIC.to_bits() as i32))?;
    let bits = ops::multiply(&bits, Array::from_int(1 << 23))?;
    Ok(ops::multiply(&e, &bits.view::<f32>()?)?)
}

/// Softmax over the last axis, with [`exp`].
pub fn softmax(x: &Array) -> Result<Array> {
    if small(x) {
        return Ok(ops::softmax_axis(x, -1, None)?);
    }
    let shifted = ops::subtract(x, &ops::max_axis(x, -1, true)?)?;
    let e = exp(&shifted)?;
    Ok(ops::divide(&e, &ops::sum_axis(&e, -1, true)?)?)
}

/// What [`tanh_prescaled`] expects its input multiplied by: a layer that
/// feeds it folds this factor into its weights.
pub const TANH_PRESCALE: f32 = 0.027_607_804;

/// `tanh(y / TANH_PRESCALE)`, for a `y` already multiplied by
/// [`TANH_PRESCALE`] (the flow's gates and the decoder's output: fifteen
/// operations where Eigen's fit takes twenty-three; max error 1.2e-6,
/// exact beyond |x| = 7).
/// The rational `x * P(x^2) / Q(x^2)`, both of degree 3, is a minimax fit
/// on [0, 7] made for this engine; with `y = s x`, `s` the ratio of the
/// leading coefficients, both polynomials in `y^2` become monic, which
/// saves a multiply each, and `s` costs nothing where it is folded.
pub fn tanh_prescaled(y: &Array) -> Result<Array> {
    const P: [f32; 3] = [1.126_663_2e-4, 1.818_509_8e-2, 4.416_038_4e-1];
    const Q: [f32; 3] = [3.110_483e-6, 1.862_315_7e-3, 1.128_268e-1];
    if small(y) {
        return Ok(ops::tanh(&ops::multiply(y, c(1.0 / TANH_PRESCALE))?)?);
    }
    let limit = 7.0 * TANH_PRESCALE;
    let y = ops::clip(y, (-limit, limit))?;
    let v = ops::multiply(&y, &y)?;
    let monic = |coeffs: &[f32; 3]| -> Result<Array> {
        let mut acc = ops::add(&v, c(coeffs[2]))?;
        for &k in coeffs[..2].iter().rev() {
            acc = ops::add(&ops::multiply(&acc, &v)?, c(k))?;
        }
        Ok(acc)
    };
    Ok(ops::divide(&ops::multiply(&y, &monic(&P)?)?, &monic(&Q)?)?)
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
    if x.size() < ERF_SCALAR_BELOW {
        return Ok(ops::erf(x)?);
    }
    let x = ops::clip(x, (-4.0_f32, 4.0_f32))?;
    let x2 = ops::multiply(&x, &x)?;
    odd_rational(&x, &x2, &P, &Q)
}

/// Exact (erf) GELU, as PyTorch's default.
/// `sqrt(2) * gelu(sqrt(2) * v) = v * (1 + erf(v))`: GELU for a caller that
/// feeds it `x / sqrt(2)` and takes `1 / sqrt(2)` of the result, both folded
/// into neighbouring layers (three operations instead of five).
pub fn gelu_halved(v: &Array) -> Result<Array> {
    Ok(ops::multiply(v, &ops::add(&erf(v)?, c(1.0))?)?)
}

pub fn leaky_relu(x: &Array, slope: f32) -> Result<Array> {
    Ok(ops::maximum(x, &ops::multiply(x, c(slope))?)?)
}

pub fn relu(x: &Array) -> Result<Array> {
    Ok(ops::maximum(x, c(0.0))?)
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
        let neg: Vec<f32> = (0..=20_000).map(|i| -(i as f32) * 4.35e-3).chain((0..=2_000).map(|i| i as f32 * 4.4e-2)).collect();
        let x = exp(&Array::from_slice(&neg, &[neg.len() as i32])).unwrap();
        let rel = x
            .as_slice::<f32>()
            .iter()
            .zip(&neg)
            .map(|(g, &v)| ((*g as f64 - (v as f64).exp()) / (v as f64).exp()).abs())
            .fold(0.0, f64::max);
        assert!(rel < 1e-6, "exp max relative error {rel}");
        let scores = Array::from_slice(&[1.0f32, 2.0, 3.0, -1e4, 0.5, 0.5], &[2, 3]);
        let sm = softmax(&scores).unwrap();
        let want = mlx_rs::ops::softmax_axis(&scores, -1, None).unwrap();
        let d = sm.as_slice::<f32>().iter().zip(want.as_slice::<f32>()).map(|(a, b)| (a - b).abs()).fold(0.0, f32::max);
        assert!(d < 1e-6, "softmax differs from MLX's by {d}");
        let t = tanh_prescaled(&ops::multiply(&a, c(TANH_PRESCALE)).unwrap()).unwrap();
        let e = erf(&a).unwrap();
        mlx_rs::transforms::eval([&t, &e]).unwrap();
        let et = max_err(&t, |x| (x as f64).tanh() as f32, &xs);
        let ee = max_err(&e, erf_ref, &xs);
        assert!(et < 1.5e-6, "tanh max error {et}");
        assert!(ee < 2e-6, "erf max error {ee}");
    }

    #[test]
    fn small_arrays_take_mlx_functions_and_agree() {
        let _lock = crate::mlx_test_lock();
        let (xs, a) = grid();
        assert!(xs.len() >= SCALAR_BELOW, "the grid must exercise the polynomials");
        let few: Vec<f32> = xs.iter().step_by(xs.len() / 1000).cloned().collect();
        let b = Array::from_slice(&few, &[few.len() as i32]);
        let pick = |big: &Array| -> Vec<f32> { big.as_slice::<f32>().iter().step_by(xs.len() / 1000).cloned().collect() };
        let tanh = |x: &Array| tanh_prescaled(&ops::multiply(x, c(TANH_PRESCALE))?);
        for (name, f) in [("tanh", &tanh as &dyn Fn(&Array) -> Result<Array>), ("erf", &erf)] {
            let (big, small) = (f(&a).unwrap(), f(&b).unwrap());
            mlx_rs::transforms::eval([&big, &small]).unwrap();
            let d = pick(&big).iter().zip(small.as_slice::<f32>()).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max);
            assert!(d < 2e-6, "{name}: polynomial and MLX differ by {d}");
        }
    }

    #[test]
    fn halved_gelu_is_gelu_rescaled() {
        let _lock = crate::mlx_test_lock();
        // Both sides of the polynomial/scalar switch.
        for n in [1000, 3 * SCALAR_BELOW] {
            let xs: Vec<f32> = (0..n).map(|i| (i as f32 / n as f32 - 0.5) * 12.0).collect();
            let x = Array::from_slice(&xs, &[n as i32]);
            let h = c(std::f32::consts::FRAC_1_SQRT_2);
            let got = ops::multiply(gelu_halved(&ops::multiply(&x, &h).unwrap()).unwrap(), &h).unwrap();
            let erf = ops::erf(ops::multiply(&x, &h).unwrap()).unwrap();
            let want = ops::multiply(ops::multiply(&x, c(0.5)).unwrap(), ops::add(&erf, c(1.0)).unwrap()).unwrap();
            let diff = ops::subtract(&got, &want).unwrap();
            diff.eval().unwrap();
            let d = diff.as_slice::<f32>().iter().fold(0.0f32, |m, v| m.max(v.abs()));
            assert!(d < 1e-5, "{n} elements: differs from x * Phi(x) by {d}");
        }
    }
}
