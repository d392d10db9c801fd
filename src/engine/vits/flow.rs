//! The normalizing flow (`flow`), run in reverse: `z_p [T, C]` -> `z [T, C]`.
//! Mean-only residual coupling layers, each around a WaveNet-style stack
//! (`WN`: gated dilated convolutions with residual and skip outputs),
//! alternating with channel flips.
use mlx_rs::{ops, Array};

use super::ops::{check, checkpoint, cols, flip_channels, queue_tiles, rows, Cancelled, Conv1d, Result};
use crate::engine::cpu;
use super::{math, VitsConfig};
use crate::engine::weights::Weights;

/// WaveNet-like stack: `n` gated layers, hidden `H`, optional speaker conditioning.
pub struct Wn {
    in_layers: Vec<Conv1d>,       // [T, H] -> [T, 2H]
    res_skip_layers: Vec<Conv1d>, // [T, H] -> [T, 2H] (last: [T, H])
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
        let hidden = in_layers[0].c_out as i32 / 2;
        // The gate tanh(a) * sigmoid(b) is computed as tanh(a) * (1 + tanh(b / 2)) / 2
        // with one tanh over [a | b/2]: the in-layers (and the conditioning)
        // emit [a | b/2] times the prescale of `math::tanh_prescaled`, the
        // res/skip layers take the final 1/2.
        let prescale_gate = |c: &mut Conv1d, layers: usize| -> Result<()> {
            let h = hidden as usize;
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
        Ok(Self { in_layers, res_skip_layers, cond_layer, hidden })
    }

    pub fn forward(&self, x: &Array, g: Option<&Array>) -> Result<Array> {
        let h = self.hidden;
        let g = match (&self.cond_layer, g) {
            (Some(cond), Some(g)) => Some(cond.forward(g)?),
            _ => None,
        };
        let n = self.in_layers.len();
        let mut x = x.clone();
        let mut output: Option<Array> = None;
        for (i, (inl, rs)) in self.in_layers.iter().zip(&self.res_skip_layers).enumerate() {
            let mut x_in = inl.forward(&x)?;
            if let Some(g) = &g {
                x_in = ops::add(&x_in, &cols(g, 2 * h * i as i32, 2 * h * (i as i32 + 1))?)?;
            }
            // [tanh(a) | tanh(b/2)] -> 2 tanh(a) sigmoid(b) (see `load`).
            let t = math::tanh_prescaled(&x_in)?;
            let acts = ops::multiply(&cols(&t, 0, h)?, &ops::add(&cols(&t, h, 2 * h)?, Array::from_f32(1.0))?)?;
            let res_skip = rs.forward(&acts)?;
            let skip = if i + 1 < n {
                x = ops::add(&x, &cols(&res_skip, 0, h)?)?;
                cols(&res_skip, h, 2 * h)?
            } else {
                res_skip
            };
            let sum = match output {
                Some(o) => ops::add(&o, &skip)?,
                None => skip,
            };
            checkpoint(&sum);
            output = Some(sum);
        }
        Ok(output.expect("WN has at least one layer"))
    }
}

/// Mean-only affine coupling: `x1 -= post(WN(pre(x0)))` in reverse.
struct CouplingLayer {
    pre: Conv1d,
    enc: Wn,
    post: Conv1d,
    half: i32,
}

impl CouplingLayer {
    fn reverse(&self, x: &Array, g: Option<&Array>) -> Result<Array> {
        let x0 = cols(x, 0, self.half)?;
        let x1 = cols(x, self.half, 2 * self.half)?;
        let m = self.post.forward(&self.enc.forward(&self.pre.forward(&x0)?, g)?)?;
        Ok(ops::concatenate(&[x0, ops::subtract(&x1, &m)?], 1)?)
    }
}

/// Sequences of at least this many receptive radii per lane run in
/// windows on the lanes; shorter ones whole, on BLAS threads (measured here
/// with 2 lanes, whole vs windows: 468 frames 31 vs 35 ms, 605 frames 40 vs
/// 42, about even from 680, windows ahead by 1187 frames; 4 radii per lane
/// were the limit before BLAS threads).
const WINDOW_RADII: usize = 7;

pub struct Flow {
    layers: Vec<CouplingLayer>, // flows.0, flows.2, ... (Flip between them)
}

impl Flow {
    pub fn load(ws: &mut Weights, cfg: &VitsConfig) -> Result<Self> {
        let layers = (0..cfg.flow_n_flows)
            .map(|i| {
                let p = format!("flow.flows.{}", 2 * i);
                let pre = Conv1d::load(ws, &format!("{p}.pre"))?;
                let half = pre.c_in as i32;
                Ok(CouplingLayer { pre, enc: Wn::load(ws, &format!("{p}.enc"), cfg.flow_n_layers)?, post: Conv1d::load(ws, &format!("{p}.post"))?, half })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Self { layers })
    }

    /// Frames of context each output frame depends on, on each side.
    pub fn radius(&self) -> usize {
        self.layers.iter().map(|l| l.enc.in_layers.iter().map(|c| c.radius()).sum::<usize>()).sum()
    }

    /// Reverse: (Flip, coupling) for the layers last to first. Sequences
    /// long enough run in windows side by side on the lanes, queued, not
    /// waited for. Shorter ones (where the windows' overlap would cost more
    /// than the second lane gives) run whole, each GEMM on all the lanes'
    /// cores through BLAS threads, each layer evaluated and `cancelled`
    /// polled after it.
    pub fn reverse(&self, z_p: &Array, g: Option<&Array>, cancelled: Cancelled) -> Result<Array> {
        let t = z_p.shape()[0] as usize;
        let (n, r) = (cpu::lanes(), self.radius());
        if n == 1 || t < WINDOW_RADII * r * n {
            return cpu::with_blas_threads(|| {
                let mut x = z_p.clone();
                for layer in self.layers.iter().rev() {
                    x = flip_channels(&x)?;
                    x = layer.reverse(&x, g)?;
                    x.eval()?;
                    check(cancelled)?;
                }
                Ok(x)
            });
        }
        // Windows with the receptive field on each side, one per lane.
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
                x = layer.reverse(&flip_channels(&x)?, g)?;
            }
            Ok(x)
        })?;
        let kept = spans.iter().zip(&xs).map(|(&(a, b, lo), x)| rows(x, (a - lo) as i32, (b - lo) as i32)).collect::<Result<Vec<_>>>()?;
        Ok(ops::concatenate(&kept, 0)?)
    }
}
