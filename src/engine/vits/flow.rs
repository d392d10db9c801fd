//! The normalizing flow (`flow`), run in reverse: `z_p [T, C]` -> `z [T, C]`.
//! Mean-only residual coupling layers, each around a WaveNet-style stack
//! (`WN`: gated dilated convolutions with residual and skip outputs),
//! alternating with channel flips.
//!
//! Owns the flow's layers and how a sentence is cut into windows for the
//! lanes. It never runs the forward (training) direction, and the flips are
//! folded into weights at load, never run per sentence.
use mlx_rs::{ops, Array};

use super::math;
use super::ops::{cols, flip_channels, rows, Conv1d};
use super::VitsConfig;
use crate::engine::cancel::{check, Cancelled};
use crate::engine::cpu;
use crate::engine::error::{EngineError, Result};
use crate::engine::lanes::{self, checkpoint, queue_tiles};
use crate::engine::weights::Weights;

/// WaveNet-like stack: `n` gated layers, hidden `H`, optional speaker
/// conditioning. Runs on a state `[T, 2H]` = `[x | skip sum]`: each
/// layer's res/skip convolution, widened to emit `[res | skip]` (the last
/// layer's res half zero), adds onto the whole state in its GEMM, so no
/// pass splits its output or adds the halves separately.
pub struct Wn {
    in_layers: Vec<Conv1d>,       // [T, H] -> [T, 2H]
    res_skip_layers: Vec<Conv1d>, // [T, H] -> [T, 2H] = [res | skip]
    cond_layer: Option<Conv1d>,   // [1, G] -> [1, 2H*n]
    hidden: i32,
}

impl Wn {
    pub fn load(ws: &mut Weights, p: &str, n_layers: usize) -> Result<Self> {
        let mut in_layers = (0..n_layers).map(|i| Conv1d::load(ws, &format!("{p}.in_layers.{i}"))).collect::<Result<Vec<_>>>()?;
        let mut res_skip_layers =
            (0..n_layers).map(|i| Conv1d::load(ws, &format!("{p}.res_skip_layers.{i}"))).collect::<Result<Vec<_>>>()?;
        let mut cond_layer = if ws.contains(&format!("{p}.cond_layer.weight")) {
            Some(Conv1d::load(ws, &format!("{p}.cond_layer"))?)
        } else {
            None
        };
        let first = in_layers.first().ok_or_else(|| EngineError::VoiceLoad {
            path: String::new(),
            reason: format!("missing weight '{p}.in_layers.0.weight'"),
        })?;
        let hidden = first.c_out as i32 / 2;
        let h = hidden as usize;
        // The gate tanh(a) * sigmoid(b) is computed as tanh(a) * (1 + tanh(b / 2)) / 2
        // with one tanh over [a | b/2]: the in-layers (and the conditioning)
        // emit [a | b/2] times the prescale of `math::tanh_prescaled`, the
        // res/skip layers take the final 1/2.
        let prescale_gate = |c: &mut Conv1d, layers: usize| -> Result<()> {
            let s = math::TANH_PRESCALE;
            let k: Vec<f32> = (0..2 * h * layers).map(|j| if j % (2 * h) < h { s } else { 0.5 * s }).collect();
            c.scale_output(&Array::from_slice(&k, &[k.len() as i32]))
        };
        for c in &mut in_layers {
            prescale_gate(c, 1)?;
        }
        if let Some(c) = &mut cond_layer {
            prescale_gate(c, n_layers)?;
        }
        for c in &mut res_skip_layers {
            c.scale_input(0.5)?;
        }
        if let Some(last) = res_skip_layers.last_mut() {
            // Skip only: [0 | skip].
            let map: Vec<Option<usize>> = (0..2 * h).map(|j| j.checked_sub(h)).collect();
            last.remap_output(&map)?;
        }
        Ok(Self { in_layers, res_skip_layers, cond_layer, hidden })
    }

    /// `state` `[T, 2H]` = `[x | 0]` -> `[.. | skip sum]`.
    pub fn forward(&self, state: &Array, g: Option<&Array>) -> Result<Array> {
        let h = self.hidden;
        let g = match (&self.cond_layer, g) {
            (Some(cond), Some(g)) => Some(cond.forward(g)?),
            _ => None,
        };
        let mut state = state.clone();
        for (i, (inl, rs)) in self.in_layers.iter().zip(&self.res_skip_layers).enumerate() {
            let mut x_in = inl.forward(&cols(&state, 0, h)?)?;
            if let Some(g) = &g {
                x_in = ops::add(&x_in, &cols(g, 2 * h * i as i32, 2 * h * (i as i32 + 1))?)?;
            }
            // [tanh(a) | tanh(b/2)] -> 2 tanh(a) sigmoid(b) (see `load`).
            let t = math::tanh_prescaled(&x_in)?;
            let acts = ops::multiply(&cols(&t, 0, h)?, &ops::add(&cols(&t, h, 2 * h)?, Array::from_f32(1.0))?)?;
            state = rs.forward_with(&acts, (true, true), Some(&state))?;
            checkpoint(&state);
        }
        Ok(state)
    }
}

/// Mean-only affine coupling: `x1 -= post(WN(pre(x0)))` in reverse.
///
/// VITS flips the channels before each coupling; here the flips are folded
/// into the weights instead: a layer reached after an odd number of flips
/// reads its `x0` from the first half of the unflipped array (its `pre`
/// rows reversed) and subtracts from the second (its `post` columns
/// reversed), so no pass reverses the channels.
struct CouplingLayer {
    pre: Conv1d,  // [T, C/2] -> [T, 2H] = [h | 0], WN's initial state
    enc: Wn,
    post: Conv1d, // [T, 2H] -> [T, C/2], reading the skip half
    half: i32,
    /// Whether the array reaching this layer is channel-reversed relative to VITS's.
    flipped: bool,
}

impl CouplingLayer {
    fn load(ws: &mut Weights, p: &str, n_layers: usize, flipped: bool) -> Result<Self> {
        let mut pre = Conv1d::load(ws, &format!("{p}.pre"))?;
        let enc = Wn::load(ws, &format!("{p}.enc"), n_layers)?;
        let mut post = Conv1d::load(ws, &format!("{p}.post"))?;
        let (half, h) = (pre.c_in, enc.hidden as usize);
        let reversed = |n: usize| -> Vec<Option<usize>> { (0..n).map(|j| Some(if flipped { n - 1 - j } else { j })).collect() };
        pre.remap_input(&reversed(half))?;
        pre.remap_output(&(0..2 * h).map(|j| (j < h).then_some(j)).collect::<Vec<_>>())?;
        post.remap_input(&(0..2 * h).map(|j| j.checked_sub(h)).collect::<Vec<_>>())?;
        post.remap_output(&reversed(post.c_out))?;
        Ok(Self { pre, enc, post, half: half as i32, flipped })
    }

    fn reverse(&self, x: &Array, g: Option<&Array>) -> Result<Array> {
        let (a, b) = (cols(x, 0, self.half)?, cols(x, self.half, 2 * self.half)?);
        let (x0, x1) = if self.flipped { (b, a) } else { (a, b) };
        let m = self.post.forward(&self.enc.forward(&self.pre.forward(&x0)?, g)?)?;
        let x1 = ops::subtract(&x1, &m)?;
        let halves = if self.flipped { [x1, x0] } else { [x0, x1] };
        Ok(ops::concatenate(&halves, 1)?)
    }
}

/// Sequences of at least this many receptive radii per lane run in
/// windows on the lanes; shorter ones whole, on BLAS threads, where the
/// windows' overlap would cost more than the other lanes give (the
/// crossover on 2 lanes; figures in docs/engine.md).
const WINDOW_RADII: usize = 7;

/// Most frames one window covers (about 48 s of audio at 22.05 kHz): a
/// sentence slowed down by `length_scale` runs in more windows than lanes,
/// so the flow's memory does not grow with its length. Sentences of
/// ordinary length never reach it.
const MAX_WINDOW_FRAMES: usize = 4096;

pub struct Flow {
    layers: Vec<CouplingLayer>, // flows.0, flows.2, ... (Flip between them)
}

impl Flow {
    pub fn load(ws: &mut Weights, cfg: &VitsConfig) -> Result<Self> {
        // In reverse, layer i is reached after n - i flips.
        let n = cfg.flow_n_flows;
        let layers = (0..n)
            .map(|i| CouplingLayer::load(ws, &format!("flow.flows.{}", 2 * i), cfg.flow_n_layers, (n - i) % 2 == 1))
            .collect::<Result<Vec<_>>>()?;
        Ok(Self { layers })
    }

    /// Frames of context each output frame depends on, on each side.
    pub fn radius(&self) -> usize {
        self.layers.iter().map(|l| l.enc.in_layers.iter().map(|c| c.radius()).sum::<usize>()).sum()
    }

    /// Reverse: (Flip, coupling) for the layers last to first. Sequences
    /// long enough run in windows side by side on the lanes (and in more
    /// windows than lanes beyond [`MAX_WINDOW_FRAMES`] each), queued, not
    /// waited for. Shorter ones (where the windows' overlap would cost more
    /// than the second lane gives) run whole, each GEMM on all the lanes'
    /// cores through BLAS threads, each layer evaluated and `cancelled`
    /// polled after it.
    pub fn reverse(&self, z_p: &Array, g: Option<&Array>, cancelled: Cancelled) -> Result<Array> {
        let t = z_p.shape()[0] as usize;
        let (lanes, r) = (lanes::count(), self.radius());
        let whole = lanes == 1 || t < WINDOW_RADII * r * lanes;
        if whole && t <= MAX_WINDOW_FRAMES {
            return cpu::with_blas_threads(|| {
                let mut x = z_p.clone();
                for layer in self.layers.iter().rev() {
                    x = layer.reverse(&x, g)?;
                    x.eval()?;
                    check(cancelled)?;
                }
                self.unflip(x)
            });
        }
        // Windows with the receptive field on each side, one per lane, or
        // more when that would make them too long.
        let n = if whole { 1 } else { lanes }.max(t.div_ceil(MAX_WINDOW_FRAMES));
        let piece = t.div_ceil(n);
        let spans: Vec<(usize, usize, usize)> = (0..n)
            .map(|i| {
                let (a, b) = (i * piece, ((i + 1) * piece).min(t));
                (a, b, a.saturating_sub(r))
            })
            .collect();
        // Queued, not waited for: the caller builds the decoder's first
        // tiles while the lanes finish the windows.
        let xs = queue_tiles(n, cancelled, |i| {
            let (_, b, lo) = spans[i];
            let mut x = rows(z_p, lo as i32, (b + r).min(t) as i32)?;
            for layer in self.layers.iter().rev() {
                x = layer.reverse(&x, g)?;
            }
            self.unflip(x)
        })?;
        let kept = spans.iter().zip(&xs).map(|(&(a, b, lo), x)| rows(x, (a - lo) as i32, (b - lo) as i32)).collect::<Result<Vec<_>>>()?;
        Ok(ops::concatenate(&kept, 0)?)
    }

    /// The flips folded into the layers leave the result reversed when
    /// there is an odd number of them.
    fn unflip(&self, x: Array) -> Result<Array> {
        if self.layers.len() % 2 == 1 {
            flip_channels(&x)
        } else {
            Ok(x)
        }
    }
}
