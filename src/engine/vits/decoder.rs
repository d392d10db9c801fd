//! The HiFi-GAN generator (`dec`): `z [T, C]` -> audio `[T * hop]`.
//! `conv_pre`, then per upsampling stage a leaky ReLU, a transposed
//! convolution and the mean of the multi-receptive-field residual blocks,
//! then `conv_post` and tanh. Weight norm was folded at export.
use mlx_rs::{ops, Array};

use super::ops::{check, checkpoint, eval_tiles, leaky_relu, map_tiles, rows, scale, Cancelled, Conv1d, ConvTranspose1d, Result};
use super::{math, VitsConfig};
use crate::engine::cpu;
use crate::engine::weights::Weights;

const LRELU_SLOPE: f32 = 0.1;

/// Elements per tile (rows x channels) when running the residual blocks and
/// the output conv: about 1 MiB of float32, which stays in cache.
const TILE_ELEMENTS: usize = 1 << 18;

/// Residual block: type 1 (`convs1`/`convs2` pairs) or type 2 (`convs`).
struct ResBlock {
    pairs: Vec<(Conv1d, Option<Conv1d>)>,
}

impl ResBlock {
    fn load(ws: &mut Weights, p: &str) -> Result<Self> {
        let count = |ws: &Weights, sub: &str| {
            ws.names_with_prefix(&format!("{p}.{sub}.")).iter().filter(|n| n.ends_with(".weight")).count()
        };
        let pairs = if count(ws, "convs1") > 0 {
            (0..count(ws, "convs1"))
                .map(|i| Ok((Conv1d::load(ws, &format!("{p}.convs1.{i}"))?, Some(Conv1d::load(ws, &format!("{p}.convs2.{i}"))?))))
                .collect::<Result<Vec<_>>>()?
        } else {
            (0..count(ws, "convs")).map(|i| Ok((Conv1d::load(ws, &format!("{p}.convs.{i}"))?, None))).collect::<Result<Vec<_>>>()?
        };
        Ok(Self { pairs })
    }

    fn radius(&self) -> usize {
        self.pairs.iter().map(|(a, b)| a.radius() + b.as_ref().map_or(0, |b| b.radius())).sum()
    }

    /// `x` `[T, C]` -> the block's output, zero-padded only on the sides
    /// `pad` says (the sequence's ends); on the other sides every conv is
    /// "valid", so the output is `[T - lost.0 - lost.1, C]` with `lost` returned.
    fn forward(&self, x: &Array, pad: (bool, bool)) -> Result<(Array, (i32, i32))> {
        let mut x = x.clone();
        let mut lost = (0, 0);
        for (c1, c2) in &self.pairs {
            let t = x.shape()[0];
            // Type 1: x += c2(lrelu(c1(lrelu(x)))); type 2: x += c1(lrelu(x)).
            let (h, last, mut cut) = match c2 {
                Some(c2) => (leaky_relu(&c1.forward_with(&leaky_relu(&x, LRELU_SLOPE)?, pad, None)?, LRELU_SLOPE)?, c2, c1.shrink(pad)),
                None => (leaky_relu(&x, LRELU_SLOPE)?, c1, (0, 0)),
            };
            let (l, r) = last.shrink(pad);
            cut = (cut.0 + l, cut.1 + r);
            x = last.forward_with(&h, pad, Some(&rows(&x, cut.0, t - cut.1)?))?;
            checkpoint(&x);
            lost = (lost.0 + cut.0, lost.1 + cut.1);
        }
        Ok((x, lost))
    }
}

/// The mean of a stage's multi-receptive-field blocks over `x`, padded at
/// the sides `pad` says; returns the rows lost on each side (the most any
/// block lost: the others are cropped to match).
fn mrf(blocks: &[ResBlock], x: &Array, pad: (bool, bool)) -> Result<(Array, (i32, i32))> {
    let outs = blocks.iter().map(|b| b.forward(x, pad)).collect::<Result<Vec<_>>>()?;
    let lost = outs.iter().fold((0, 0), |acc, (_, l)| (acc.0.max(l.0), acc.1.max(l.1)));
    let t = x.shape()[0];
    let mut sum: Option<Array> = None;
    for (y, l) in &outs {
        let y = rows(y, lost.0 - l.0, t - l.0 - l.1 - (lost.1 - l.1))?;
        sum = Some(match sum {
            Some(acc) => ops::add(&acc, &y)?,
            None => y,
        });
    }
    Ok((scale(&sum.expect("at least one resblock"), 1.0 / blocks.len() as f32)?, lost))
}

/// One upsampling stage, `leaky_relu -> ConvTranspose -> MRF`, run in tiles
/// of input rows so that the upsampled activations are produced and consumed
/// in cache-sized pieces (several times faster than whole-array passes on
/// CPU). Each tile reads enough neighbouring rows that the kept samples are
/// exactly those of the whole-array computation; at the sequence's ends it
/// crops the transposed conv's padding before the blocks, as the whole does.
fn stage(up: &ConvTranspose1d, blocks: &[ResBlock], x: &Array, cancelled: Cancelled) -> Result<Array> {
    let t = x.shape()[0] as usize;
    let (s, p, m) = (up.stride(), up.pad(), up.blocks());
    let out_len = up.out_len(t);
    let halo_out = blocks.iter().map(ResBlock::radius).max().unwrap_or(0);
    let tile_in = (TILE_ELEMENTS / up.c_out / s).max(8);
    let halo_in = (halo_out + p).div_ceil(s) + m + 1;
    if t <= tile_in + 2 * halo_in && cpu::lanes() == 1 {
        return Ok(mrf(blocks, &up.forward(&leaky_relu(x, LRELU_SLOPE)?)?, (true, true))?.0);
    }
    // As many tiles as lanes at least, a multiple of them, evenly sized.
    let lanes = cpu::lanes();
    let tiles = t.div_ceil(tile_in).next_multiple_of(lanes).max(1);
    let tile_in = t.div_ceil(tiles);
    let starts: Vec<usize> = (0..t).step_by(tile_in).collect();
    let out = eval_tiles(starts.len(), cancelled, |i| {
        let start = starts[i];
        let end = (start + tile_in).min(t);
        let (lo, hi) = (start.saturating_sub(halo_in), (end + halo_in).min(t));
        let full = up.forward_full(&leaky_relu(&rows(x, lo as i32, hi as i32)?, LRELU_SLOPE)?)?;
        checkpoint(&full);
        // `full` row i is output sample lo*s - p + i; crop to [0, out_len).
        let first = (lo * s) as isize - p as isize;
        let len = full.shape()[0] as isize;
        let (c_lo, c_hi) = (first.max(0), (first + len).min(out_len as isize));
        let seq = rows(&full, (c_lo - first) as i32, (c_hi - first) as i32)?;
        // Zero padding at the sequence's ends only; inside, the convs are
        // valid and the halo absorbs the rows they lose.
        let (y, lost) = mrf(blocks, &seq, (c_lo == 0, c_hi == out_len as isize))?;
        let y_lo = c_lo + lost.0 as isize;
        let keep_lo = if start == 0 { 0 } else { start * s } as isize;
        let keep_hi = if end == t { out_len } else { end * s } as isize;
        rows(&y, (keep_lo - y_lo) as i32, (keep_hi - y_lo) as i32)
    })?;
    Ok(ops::concatenate(&out, 0)?)
}

pub struct Decoder {
    conv_pre: Conv1d,
    cond: Option<Conv1d>,
    ups: Vec<ConvTranspose1d>,
    resblocks: Vec<Vec<ResBlock>>, // per stage
    conv_post: Conv1d,
}

impl Decoder {
    pub fn load(ws: &mut Weights, cfg: &VitsConfig) -> Result<Self> {
        let ups = (0..cfg.upsample_rates.len()).map(|i| ConvTranspose1d::load(ws, &format!("dec.ups.{i}"))).collect::<Result<Vec<_>>>()?;
        let nk = cfg.resblocks_per_stage;
        let resblocks = (0..ups.len())
            .map(|i| (0..nk).map(|j| ResBlock::load(ws, &format!("dec.resblocks.{}", i * nk + j))).collect::<Result<Vec<_>>>())
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            conv_pre: Conv1d::load(ws, "dec.conv_pre")?,
            cond: if ws.contains("dec.cond.weight") { Some(Conv1d::load(ws, "dec.cond")?) } else { None },
            ups,
            resblocks,
            conv_post: Conv1d::load(ws, "dec.conv_post")?,
        })
    }

    /// Samples per frame.
    pub fn hop(&self) -> usize {
        self.ups.iter().map(|u| u.stride()).product()
    }

    /// Input frames each output sample depends on, on each side: enough
    /// overlap for windowed decoding to equal whole-sentence decoding.
    pub fn context_frames(&self) -> usize {
        let mut rate = 1usize;
        let mut frames = self.conv_pre.radius() as f64;
        for (up, blocks) in self.ups.iter().zip(&self.resblocks) {
            frames += 1.0 / rate as f64 + 1.0; // the transposed conv spreads a frame to its neighbour
            rate *= up.stride();
            let widest = blocks.iter().map(|b| b.radius()).max().unwrap_or(0);
            frames += widest as f64 / rate as f64;
        }
        frames += self.conv_post.radius() as f64 / rate as f64;
        frames.ceil() as usize + 1
    }

    /// `z: [T, C]` -> audio `[T * hop]` in [-1, 1].
    pub fn forward(&self, z: &Array, g: Option<&Array>) -> Result<Array> {
        self.forward_checked(z, g, &|| false)
    }

    /// [`Decoder::forward`], polling `cancelled` between stages and tiles.
    pub fn forward_checked(&self, z: &Array, g: Option<&Array>, cancelled: Cancelled) -> Result<Array> {
        let mut x = self.conv_pre.forward(z)?;
        if let (Some(cond), Some(g)) = (&self.cond, g) {
            x = ops::add(&x, &cond.forward(g)?)?;
        }
        for (up, blocks) in self.ups.iter().zip(&self.resblocks) {
            x = stage(up, blocks, &x, cancelled)?;
            check(cancelled)?;
        }
        let tile = (TILE_ELEMENTS / self.conv_post.c_in).max(256);
        let x = map_tiles(&x, tile, self.conv_post.radius(), |x| math::tanh(&self.conv_post.forward(&leaky_relu(x, 0.01)?)?))?;
        Ok(x.reshape(&[-1])?)
    }
}
