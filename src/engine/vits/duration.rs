//! Duration prediction: log-durations per phoneme from the encoder's hidden
//! states. Piper voices use the stochastic duration predictor (`dp`), run in
//! reverse: noise `[L, 2]` scaled by `noise_w` goes back through the flows
//! (Flip, ConvFlow, ..., ElementwiseAffine; the first ConvFlow is unused in
//! this direction, as in VITS). ConvFlow is a rational-quadratic spline
//! coupling with linear tails. Voices trained without SDP have the plain
//! convolutional predictor, also supported.
//!
//! Owns both predictors' layers. It never reads durations back to the host
//! (the caller does, once per sentence) and never evaluates beyond queueing
//! each flow as it is built.
use std::f32::consts::FRAC_1_SQRT_2;

use mlx_rs::{ops, Array};

use super::math::{gelu_halved, relu};
use super::ops::{array, cols, flip_channels, scale, Conv1d, DepthwiseConv1d, LayerNorm};
use super::VitsConfig;
use crate::engine::error::Result;
use crate::engine::lanes::queue;
use crate::engine::weights::Weights;

const NUM_BINS: i32 = 10;
const TAIL_BOUND: f32 = 5.0;
const MIN_BIN_WIDTH: f32 = 1e-3;
const MIN_BIN_HEIGHT: f32 = 1e-3;
const MIN_DERIVATIVE: f32 = 1e-3;

pub enum DurationPredictor {
    Stochastic(Sdp),
    Deterministic(PlainDp),
}

impl DurationPredictor {
    pub fn load(ws: &mut Weights, cfg: &VitsConfig) -> Result<Self> {
        Ok(if cfg.stochastic_duration {
            Self::Stochastic(Sdp::load(ws, cfg)?)
        } else {
            Self::Deterministic(PlainDp::load(ws, cfg)?)
        })
    }

    /// `hidden: [L, H]`, `g: [1, G]` for multi-speaker voices -> `logw: [L, 1]`.
    pub fn forward(&self, hidden: &Array, g: Option<&Array>, noise_w: f32, key: &Array) -> Result<Array> {
        match self {
            Self::Stochastic(sdp) => sdp.forward(hidden, g, noise_w, key),
            Self::Deterministic(dp) => dp.forward(hidden, g),
        }
    }
}

/// Dilated depth-separable convolutions (`DDSConv`): dilation `k^i`.
struct DdsConv {
    layers: Vec<(DepthwiseConv1d, LayerNorm, Conv1d, LayerNorm)>,
}

impl DdsConv {
    fn load(ws: &mut Weights, p: &str, channels: usize) -> Result<Self> {
        let n = ws.names_with_prefix(&format!("{p}.convs_sep.")).iter().filter(|n| n.ends_with(".weight")).count();
        // Each GELU runs as `gelu_halved`: the norm before it emits x/sqrt(2),
        // and the 1/sqrt(2) of its output goes into the 1x1 conv after the
        // first and into the residual add after the second.
        let layers = (0..n)
            .map(|i| {
                let mut n1 = LayerNorm::load(ws, &format!("{p}.norms_1.{i}"), channels)?;
                let mut pw = Conv1d::load(ws, &format!("{p}.convs_1x1.{i}"))?;
                let mut n2 = LayerNorm::load(ws, &format!("{p}.norms_2.{i}"), channels)?;
                n1.scale_output(FRAC_1_SQRT_2)?;
                pw.scale_input(FRAC_1_SQRT_2)?;
                n2.scale_output(FRAC_1_SQRT_2)?;
                Ok((DepthwiseConv1d::load(ws, &format!("{p}.convs_sep.{i}"))?, n1, pw, n2))
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Self { layers })
    }

    fn forward(&self, x: &Array, g: Option<&Array>) -> Result<Array> {
        let mut x = match g {
            Some(g) => ops::add(x, g)?,
            None => x.clone(),
        };
        for (sep, n1, pw, n2) in &self.layers {
            let y = gelu_halved(&n1.forward(&sep.forward(&x)?)?)?;
            let y = gelu_halved(&n2.forward(&pw.forward(&y)?)?)?;
            x = ops::add(&x, &scale(&y, FRAC_1_SQRT_2)?)?;
        }
        Ok(x)
    }
}

/// Spline coupling flow: half the channels parameterise a monotonic
/// rational-quadratic spline applied to the other half.
struct ConvFlow {
    pre: Conv1d,
    convs: DdsConv,
    proj: Conv1d,
    filter_channels: usize,
}

impl ConvFlow {
    fn load(ws: &mut Weights, p: &str, filter_channels: usize) -> Result<Self> {
        Ok(Self {
            pre: Conv1d::load(ws, &format!("{p}.pre"))?,
            convs: DdsConv::load(ws, &format!("{p}.convs"), filter_channels)?,
            proj: Conv1d::load(ws, &format!("{p}.proj"))?,
            filter_channels,
        })
    }

    /// Reverse pass on `x: [L, 2]` conditioned on `cond: [L, F]`.
    fn reverse(&self, x: &Array, cond: &Array) -> Result<Array> {
        let x0 = cols(x, 0, 1)?;
        let x1 = cols(x, 1, 2)?;
        let h = self.proj.forward(&self.convs.forward(&self.pre.forward(&x0)?, Some(cond))?)?; // [L, 3*bins-1]
        let norm = 1.0 / (self.filter_channels as f32).sqrt();
        let widths = scale(&cols(&h, 0, NUM_BINS)?, norm)?;
        let heights = scale(&cols(&h, NUM_BINS, 2 * NUM_BINS)?, norm)?;
        let derivs = cols(&h, 2 * NUM_BINS, 3 * NUM_BINS - 1)?;
        let x1 = inverse_spline(&x1, &widths, &heights, &derivs)?;
        Ok(ops::concatenate(&[x0, x1], 1)?)
    }
}

/// Softmax-normalised bin sizes, their knots `[N, bins+1]` from `lo` to `hi`.
fn knots(unnormalized: &Array, min_size: f32) -> Result<(Array, Array)> {
    let n = unnormalized.shape()[0];
    let sizes = ops::softmax_axis(unnormalized, -1, None)?;
    let sizes = ops::add(&scale(&sizes, 1.0 - min_size * NUM_BINS as f32)?, Array::from_f32(min_size))?;
    let cum = sizes.cumsum(-1, None, None)?;
    let cum = ops::concatenate(&[ops::zeros::<f32>(&[n, 1])?, cum], 1)?;
    let cum = ops::add(&scale(&cum, 2.0 * TAIL_BOUND)?, Array::from_f32(-TAIL_BOUND))?;
    // Pin the ends exactly to the interval.
    let inner = cols(&cum, 1, NUM_BINS)?;
    let cum = ops::concatenate(
        &[ops::full::<f32>(&[n, 1], Array::from_f32(-TAIL_BOUND))?, inner, ops::full::<f32>(&[n, 1], Array::from_f32(TAIL_BOUND))?],
        1,
    )?;
    let sizes = ops::subtract(&cols(&cum, 1, NUM_BINS + 1)?, &cols(&cum, 0, NUM_BINS)?)?;
    Ok((cum, sizes))
}

/// Inverse of the rational-quadratic spline with linear tails on
/// `[-TAIL_BOUND, TAIL_BOUND]` (identity outside). All inputs `[N, ...]`.
fn inverse_spline(y: &Array, uw: &Array, uh: &Array, ud: &Array) -> Result<Array> {
    let n = y.shape()[0];
    let (cumwidths, widths) = knots(uw, MIN_BIN_WIDTH)?;
    let (cumheights, heights) = knots(uh, MIN_BIN_HEIGHT)?;
    // Boundary derivatives are 1 (linear tails): softplus(c) + min = 1.
    let edge = ((1.0 - MIN_DERIVATIVE).exp() - 1.0).ln();
    let edge = ops::full::<f32>(&[n, 1], Array::from_f32(edge))?;
    let ud = ops::concatenate(&[edge.clone(), ud.clone(), edge], 1)?;
    let derivs = ops::add(&mlx_rs::nn::softplus(&ud)?, Array::from_f32(MIN_DERIVATIVE))?; // [N, bins+1]

    // Bin index: how many knots (last one nudged up) lie at or below y, minus one.
    let nudge = {
        let mut v = vec![0.0f32; (NUM_BINS + 1) as usize];
        v[NUM_BINS as usize] = 1e-6;
        Array::from_slice(&v, &[1, NUM_BINS + 1])
    };
    let ge = ops::ge(y, &ops::add(&cumheights, &nudge)?)?.as_type::<f32>()?;
    let bin = ops::subtract(&ge.sum_axis(-1, true)?, Array::from_f32(1.0))?;
    let bin = ops::clip(&bin, (0.0f32, (NUM_BINS - 1) as f32))?.as_type::<i32>()?; // [N, 1]
    let pick = |a: &Array| -> Result<Array> { Ok(a.take_along_axis(&bin, -1)?) };
    let in_cumwidths = pick(&cumwidths)?;
    let in_widths = pick(&widths)?;
    let in_cumheights = pick(&cumheights)?;
    let in_heights = pick(&heights)?;
    let delta = ops::divide(&heights, &widths)?;
    let in_delta = pick(&delta)?;
    let in_d = pick(&derivs)?;
    let in_d1 = pick(&cols(&derivs, 1, NUM_BINS + 1)?)?;

    // Solve a*theta^2 + b*theta + c = 0 for theta in [0, 1].
    let dy = ops::subtract(y, &in_cumheights)?;
    let slope_sum = ops::subtract(&ops::add(&in_d, &in_d1)?, &scale(&in_delta, 2.0)?)?;
    let a = ops::add(&ops::multiply(&dy, &slope_sum)?, &ops::multiply(&in_heights, &ops::subtract(&in_delta, &in_d)?)?)?;
    let b = ops::subtract(&ops::multiply(&in_heights, &in_d)?, &ops::multiply(&dy, &slope_sum)?)?;
    let c = ops::negative(&ops::multiply(&in_delta, &dy)?)?;
    let disc = ops::subtract(&ops::square(&b)?, &scale(&ops::multiply(&a, &c)?, 4.0)?)?;
    let disc = ops::maximum(&disc, Array::from_f32(0.0))?;
    let root = ops::divide(&scale(&c, 2.0)?, &ops::subtract(&ops::negative(&b)?, &ops::sqrt(&disc)?)?)?;
    let x = ops::add(&ops::multiply(&root, &in_widths)?, &in_cumwidths)?;

    let inside = ops::logical_and(&ops::ge(y, Array::from_f32(-TAIL_BOUND))?, &ops::le(y, Array::from_f32(TAIL_BOUND))?)?;
    Ok(ops::select(&inside, &x, y)?)
}

pub struct Sdp {
    pre: Conv1d,
    convs: DdsConv,
    proj: Conv1d,
    cond: Option<Conv1d>,
    /// Reverse order: index of each ConvFlow, last first; the first is unused.
    flows: Vec<ConvFlow>,
    ea_m: Array,    // [1, 2]
    ea_logs: Array, // [1, 2]
}

impl Sdp {
    fn load(ws: &mut Weights, cfg: &VitsConfig) -> Result<Self> {
        let fc = cfg.dp_filter_channels;
        // flows: 0 = ElementwiseAffine, odd = ConvFlow, even > 0 = Flip.
        let mut flows = Vec::new();
        for i in (3..=2 * cfg.dp_n_flows - 1).rev().step_by(2) {
            flows.push(ConvFlow::load(ws, &format!("dp.flows.{i}"), fc)?);
        }
        let m = ws.take("dp.flows.0.m")?;
        let logs = ws.take("dp.flows.0.logs")?;
        Ok(Self {
            pre: Conv1d::load(ws, "dp.pre")?,
            convs: DdsConv::load(ws, "dp.convs", fc)?,
            proj: Conv1d::load(ws, "dp.proj")?,
            cond: if ws.contains("dp.cond.weight") { Some(Conv1d::load(ws, "dp.cond")?) } else { None },
            flows,
            ea_m: array(&m).reshape(&[1, 2])?,
            ea_logs: array(&logs).reshape(&[1, 2])?,
        })
    }

    fn forward(&self, hidden: &Array, g: Option<&Array>, noise_w: f32, key: &Array) -> Result<Array> {
        let l = hidden.shape()[0];
        let mut x = self.pre.forward(hidden)?;
        if let (Some(cond), Some(g)) = (&self.cond, g) {
            x = ops::add(&x, &cond.forward(g)?)?;
        }
        let x = self.proj.forward(&self.convs.forward(&x, None)?)?;
        queue(&x)?;
        let mut z = scale(&mlx_rs::random::normal::<f32>(&[l, 2][..], None, None, key)?, noise_w)?;
        // Flip, ConvFlow(2n-1), ..., Flip, ConvFlow(3), Flip, ElementwiseAffine.
        for flow in &self.flows {
            z = flip_channels(&z)?;
            z = flow.reverse(&z, &x)?;
            queue(&z)?;
        }
        z = flip_channels(&z)?;
        z = ops::multiply(&ops::subtract(&z, &self.ea_m)?, &ops::exp(&ops::negative(&self.ea_logs)?)?)?;
        cols(&z, 0, 1)
    }
}

/// VITS's deterministic duration predictor (two conv + ReLU + LayerNorm blocks).
pub struct PlainDp {
    conv_1: Conv1d,
    norm_1: LayerNorm,
    conv_2: Conv1d,
    norm_2: LayerNorm,
    proj: Conv1d,
    cond: Option<Conv1d>,
}

impl PlainDp {
    fn load(ws: &mut Weights, cfg: &VitsConfig) -> Result<Self> {
        let fc = cfg.dp_filter_channels;
        Ok(Self {
            conv_1: Conv1d::load(ws, "dp.conv_1")?,
            norm_1: LayerNorm::load(ws, "dp.norm_1", fc)?,
            conv_2: Conv1d::load(ws, "dp.conv_2")?,
            norm_2: LayerNorm::load(ws, "dp.norm_2", fc)?,
            proj: Conv1d::load(ws, "dp.proj")?,
            cond: if ws.contains("dp.cond.weight") { Some(Conv1d::load(ws, "dp.cond")?) } else { None },
        })
    }

    fn forward(&self, hidden: &Array, g: Option<&Array>) -> Result<Array> {
        let mut x = hidden.clone();
        if let (Some(cond), Some(g)) = (&self.cond, g) {
            x = ops::add(&x, &cond.forward(g)?)?;
        }
        let x = self.norm_1.forward(&relu(&self.conv_1.forward(&x)?)?)?;
        let x = self.norm_2.forward(&relu(&self.conv_2.forward(&x)?)?)?;
        self.proj.forward(&x)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The forward rational-quadratic spline (host code), to check the inverse against.
    fn forward_spline(x: f32, uw: &[f32], uh: &[f32], ud: &[f32]) -> f32 {
        if !(-TAIL_BOUND..=TAIL_BOUND).contains(&x) {
            return x;
        }
        let knots = |u: &[f32], min: f32| -> Vec<f32> {
            let mx = u.iter().cloned().fold(f32::MIN, f32::max);
            let e: Vec<f32> = u.iter().map(|v| (v - mx).exp()).collect();
            let s: f32 = e.iter().sum();
            let mut cum = vec![-TAIL_BOUND];
            let mut acc = 0.0;
            for v in &e {
                acc += min + (1.0 - min * NUM_BINS as f32) * v / s;
                cum.push(2.0 * TAIL_BOUND * acc - TAIL_BOUND);
            }
            cum[NUM_BINS as usize] = TAIL_BOUND;
            cum
        };
        let cw = knots(uw, MIN_BIN_WIDTH);
        let ch = knots(uh, MIN_BIN_HEIGHT);
        let edge = ((1.0 - MIN_DERIVATIVE).exp() - 1.0).ln();
        let mut d = vec![edge];
        d.extend_from_slice(ud);
        d.push(edge);
        let d: Vec<f32> = d.iter().map(|v| (1.0 + v.exp()).ln() + MIN_DERIVATIVE).collect();
        let k = (0..NUM_BINS as usize).rfind(|&k| x >= cw[k]).unwrap_or(0);
        let (w, h) = (cw[k + 1] - cw[k], ch[k + 1] - ch[k]);
        let delta = h / w;
        let t = (x - cw[k]) / w;
        let tt = t * (1.0 - t);
        ch[k] + h * (delta * t * t + d[k] * tt) / (delta + (d[k] + d[k + 1] - 2.0 * delta) * tt)
    }

    #[test]
    fn inverse_spline_inverts_the_forward_spline() {
        let _mlx = crate::mlx_test_lock();
        let uw: Vec<f32> = (0..10).map(|i| ((i * 7 % 5) as f32 - 2.0) * 0.4).collect();
        let uh: Vec<f32> = (0..10).map(|i| ((i * 3 % 7) as f32 - 3.0) * 0.3).collect();
        let ud: Vec<f32> = (0..9).map(|i| ((i * 5 % 4) as f32 - 1.5) * 0.5).collect();
        let xs = [-6.0f32, -4.9, -3.3, -1.0, -0.01, 0.0, 0.5, 2.2, 4.0, 4.99, 7.5];
        let ys: Vec<f32> = xs.iter().map(|&x| forward_spline(x, &uw, &uh, &ud)).collect();
        let n = xs.len() as i32;
        let rep = |v: &[f32]| {
            let data: Vec<f32> = (0..n).flat_map(|_| v.iter().cloned()).collect();
            Array::from_slice(&data, &[n, v.len() as i32])
        };
        let got = inverse_spline(&Array::from_slice(&ys, &[n, 1]), &rep(&uw), &rep(&uh), &rep(&ud)).unwrap();
        let got = super::super::ops::to_vec(&got).unwrap();
        for (x, g) in xs.iter().zip(&got) {
            assert!((x - g).abs() < 1e-3, "x={x} recovered {g}");
        }
    }
}
