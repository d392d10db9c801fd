//! The HiFi-GAN generator (`dec`): `z [T, C]` -> audio `[T * hop]`.
//! `conv_pre`, then per upsampling stage a leaky ReLU, a transposed
//! convolution and the mean of the multi-receptive-field residual blocks,
//! then `conv_post` and tanh. Weight norm was folded at export.
//!
//! Owns the decoder's layers and its tiling (stages run in cache-sized
//! tiles spread over the lanes, equal to the whole-array computation). It
//! never evaluates except through [`crate::engine::lanes`], and never
//! changes the model's arithmetic beyond folding constant scales into
//! weights at load.
use mlx_rs::{ops, Array};

use super::math::{self, leaky_relu};
use super::ops::{rows, Conv1d, ConvTranspose1d};
use super::VitsConfig;
use crate::engine::cancel::{check, Cancelled};
use crate::engine::error::{EngineError, Result};
use crate::engine::lanes::{self, checkpoint, queue_tiles};
use crate::engine::weights::Weights;

const LRELU_SLOPE: f32 = 0.1;

/// Elements per tile (rows x channels) when running the residual blocks and
/// the output conv: 2 MiB of float32, which stays in cache (the fastest of
/// the sizes tried; figures in docs/engine.md).
const TILE_ELEMENTS: usize = 1 << 19;

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

    /// Rows of its input the block loses on each side when its convolutions
    /// are "valid" on the sides `pad` leaves unpadded.
    fn lost(&self, pad: (bool, bool)) -> (i32, i32) {
        self.pairs.iter().fold((0, 0), |acc, (a, b)| {
            let (l1, r1) = a.shrink(pad);
            let (l2, r2) = b.as_ref().map_or((0, 0), |b| b.shrink(pad));
            (acc.0 + l1 + l2, acc.1 + r1 + r2)
        })
    }

    /// The bias of the block's last convolution.
    fn last_bias(&self) -> Option<&Array> {
        let (a, b) = self.pairs.last()?;
        b.as_ref().unwrap_or(a).bias()
    }

    /// The block over `x` `[T, C]` (whose leaky ReLU `lx` a stage's blocks
    /// share), for rows `[keep.0, T - keep.1)` of `x` only, where `keep` is
    /// at least [`ResBlock::lost`]. Type 1 runs `x += c2(lrelu(c1(lrelu(x))))`
    /// per pair, type 2 `x += c1(lrelu(x))`. The last step adds its
    /// convolution, without its bias, to `seed(x)` instead of to `x`: the
    /// caller folds the bias and the other blocks' sum into the seed.
    fn forward_into(
        &self,
        x: &Array,
        lx: &Array,
        pad: (bool, bool),
        keep: (i32, i32),
        seed: impl FnOnce(&Array) -> Result<Array>,
    ) -> Result<Array> {
        let mut seed = Some(seed);
        let mut cur = x.clone();
        let mut cur_lost = (0, 0); // rows of `x` that `cur` lacks on each side
        let steps = self.pairs.len();
        for (i, (c1, c2)) in self.pairs.iter().enumerate() {
            let act = if i == 0 { lx.clone() } else { leaky_relu(&cur, LRELU_SLOPE)? };
            let (h, last, h_lost) = match c2 {
                Some(c2) => {
                    let (l, r) = c1.shrink(pad);
                    (leaky_relu(&c1.forward_with(&act, pad, None)?, LRELU_SLOPE)?, c2, (cur_lost.0 + l, cur_lost.1 + r))
                }
                None => (act, c1, cur_lost),
            };
            let (l, r) = last.shrink(pad);
            let out_lost = if i + 1 == steps { keep } else { (h_lost.0 + l, h_lost.1 + r) };
            // Output rows [out_lost.0, T - out_lost.1) read `h` rows
            // [out_lost.0 - l, T - out_lost.1 + r) and add `cur`'s same rows.
            let h = crop(&h, out_lost.0 - l - h_lost.0, out_lost.1 - r - h_lost.1)?;
            let res = crop(&cur, out_lost.0 - cur_lost.0, out_lost.1 - cur_lost.1)?;
            cur = match if i + 1 == steps { seed.take() } else { None } {
                Some(seed) => last.forward_into(&h, pad, &seed(&res)?)?,
                None => last.forward_with(&h, pad, Some(&res))?,
            };
            checkpoint(&cur);
            cur_lost = out_lost;
        }
        Ok(cur)
    }
}

/// `x` without its first `lo` and last `hi` rows.
fn crop(x: &Array, lo: i32, hi: i32) -> Result<Array> {
    if lo == 0 && hi == 0 {
        return Ok(x.clone());
    }
    rows(x, lo, x.shape()[0] - hi)
}

/// The sum of a stage's multi-receptive-field blocks over `x`, padded at
/// the sides `pad` says; returns the rows lost on each side (the most any
/// block loses: all are computed over the same rows). Piper takes the
/// blocks' mean: the `1 / count` is folded into the next layer's weights
/// (leaky ReLU commutes with a positive scale), and the sum is accumulated
/// through the GEMMs' seeds: each block's last convolution adds onto the
/// blocks before it, and the first onto `bias_sum`, the sum of the blocks'
/// last biases. No separate pass adds, scales or biases the outputs.
fn mrf_sum(blocks: &[ResBlock], bias_sum: Option<&Array>, x: &Array, pad: (bool, bool)) -> Result<(Array, (i32, i32))> {
    let keep = blocks.iter().map(|b| b.lost(pad)).fold((0, 0), |a, l| (a.0.max(l.0), a.1.max(l.1)));
    let lx = leaky_relu(x, LRELU_SLOPE)?; // every block's first layer reads it
    let mut acc: Option<Array> = None;
    for b in blocks {
        let before = acc.take();
        let seed = |x_last: &Array| -> Result<Array> {
            Ok(match (&before, bias_sum) {
                (Some(sum), _) => ops::add(x_last, sum)?,
                (None, Some(bias)) => ops::add(x_last, bias)?,
                (None, None) => x_last.clone(),
            })
        };
        acc = Some(b.forward_into(x, &lx, pad, keep, seed)?);
    }
    // A stage has at least one block (VitsConfig::from_weights checks).
    let acc = acc.ok_or_else(|| EngineError::VoiceLoad { path: String::new(), reason: "a decoder stage without residual blocks".into() })?;
    Ok((acc, keep))
}

/// A sequence `[T, C]` held as a stage's consecutive tiles of rows (possibly
/// still being computed on the lanes), read by row range: the next stage's
/// tiles join just the rows they need, and no step joins the whole.
struct Tiles {
    parts: Vec<Array>,
    /// `starts[i]`: the first row of `parts[i]`; the last entry is `T`.
    starts: Vec<usize>,
}

impl Tiles {
    fn new(parts: Vec<Array>) -> Self {
        let mut starts = vec![0];
        for p in &parts {
            starts.push(starts.last().copied().unwrap_or(0) + p.shape()[0] as usize);
        }
        Self { parts, starts }
    }

    fn len(&self) -> usize {
        self.starts.last().copied().unwrap_or(0)
    }

    /// Rows `[lo, hi)`.
    fn rows(&self, lo: usize, hi: usize) -> Result<Array> {
        let mut pieces = Vec::new();
        for (part, w) in self.parts.iter().zip(self.starts.windows(2)) {
            let (a, b) = (w[0], w[1]);
            if b <= lo || a >= hi {
                continue;
            }
            let (s, e) = (lo.max(a) - a, hi.min(b) - a);
            pieces.push(if (s, e) == (0, b - a) { part.clone() } else { rows(part, s as i32, e as i32)? });
        }
        Ok(match <[Array; 1]>::try_from(pieces) {
            Ok([one]) => one,
            Err(pieces) => ops::concatenate(&pieces, 0)?,
        })
    }
}

/// One upsampling stage, `leaky_relu -> ConvTranspose -> MRF` (and for the
/// last stage `post`: `leaky_relu(0.01) -> conv_post -> tanh`), run in tiles
/// of input rows so that the upsampled activations are produced and consumed
/// in cache-sized pieces (several times faster than whole-array passes on
/// CPU). Each tile reads enough neighbouring rows that the kept samples are
/// exactly those of the whole-array computation; at the sequence's ends it
/// crops the transposed conv's padding before the blocks, as the whole does.
/// The tiles are queued, not waited for: the next stage queues its first
/// tiles while the lanes finish this one's last.
fn stage(
    up: &ConvTranspose1d,
    blocks: &[ResBlock],
    bias_sum: Option<&Array>,
    post: Option<&Conv1d>,
    x: &Tiles,
    cancelled: Cancelled,
) -> Result<Tiles> {
    let t = x.len();
    let (s, p, m) = (up.stride(), up.pad(), up.blocks());
    let out_len = up.out_len(t);
    let halo_out = blocks.iter().map(ResBlock::radius).max().unwrap_or(0) + post.map_or(0, Conv1d::radius);
    let tile_in = (TILE_ELEMENTS / up.c_out / s).max(8);
    let halo_in = (halo_out + p).div_ceil(s) + m + 1;
    // As many tiles as lanes at least, a multiple of them, evenly sized;
    // one when a single lane can take the whole in about one tile.
    let lanes = lanes::count();
    let tiles = if lanes == 1 && t <= tile_in + 2 * halo_in { 1 } else { t.div_ceil(tile_in).next_multiple_of(lanes).max(1) };
    let tile_in = t.div_ceil(tiles);
    let starts: Vec<usize> = (0..t).step_by(tile_in).collect();
    let out = queue_tiles(starts.len(), cancelled, |i| {
        let start = starts[i];
        let end = (start + tile_in).min(t);
        let (lo, hi) = (start.saturating_sub(halo_in), (end + halo_in).min(t));
        let full = up.forward_full(&leaky_relu(&x.rows(lo, hi)?, LRELU_SLOPE)?)?;
        checkpoint(&full);
        // `full` row i is output sample lo*s - p + i; crop to [0, out_len).
        let first = (lo * s) as isize - p as isize;
        let len = full.shape()[0] as isize;
        let (c_lo, c_hi) = (first.max(0), (first + len).min(out_len as isize));
        let seq = rows(&full, (c_lo - first) as i32, (c_hi - first) as i32)?;
        // Zero padding at the sequence's ends only; inside, the convs are
        // valid and the halo absorbs the rows they lose.
        let pad = (c_lo == 0, c_hi == out_len as isize);
        let (mut y, lost) = mrf_sum(blocks, bias_sum, &seq, pad)?;
        let mut y_lo = c_lo + lost.0 as isize;
        if let Some(post) = post {
            y = math::tanh_prescaled(&post.forward_with(&leaky_relu(&y, 0.01)?, pad, None)?)?;
            y_lo += post.shrink(pad).0 as isize;
        }
        let keep_lo = if start == 0 { 0 } else { start * s } as isize;
        let keep_hi = if end == t { out_len } else { end * s } as isize;
        rows(&y, (keep_lo - y_lo) as i32, (keep_hi - y_lo) as i32)
    })?;
    Ok(Tiles::new(out))
}

pub struct Decoder {
    conv_pre: Conv1d,
    cond: Option<Conv1d>,
    ups: Vec<ConvTranspose1d>,
    resblocks: Vec<Vec<ResBlock>>, // per stage
    /// Per stage, the sum of its blocks' last biases (see [`mrf_sum`]).
    bias_sums: Vec<Option<Array>>,
    conv_post: Conv1d,
}

impl Decoder {
    pub fn load(ws: &mut Weights, cfg: &VitsConfig) -> Result<Self> {
        let mut ups = (0..cfg.upsample_rates.len()).map(|i| ConvTranspose1d::load(ws, &format!("dec.ups.{i}"))).collect::<Result<Vec<_>>>()?;
        let nk = cfg.resblocks_per_stage;
        let resblocks = (0..ups.len())
            .map(|i| (0..nk).map(|j| ResBlock::load(ws, &format!("dec.resblocks.{}", i * nk + j))).collect::<Result<Vec<_>>>())
            .collect::<Result<Vec<_>>>()?;
        let bias_sums = resblocks
            .iter()
            .map(|blocks| {
                blocks.iter().filter_map(ResBlock::last_bias).try_fold(None::<Array>, |sum, b| {
                    Ok::<_, mlx_rs::error::Exception>(Some(match sum {
                        Some(sum) => ops::add(&sum, b)?,
                        None => b.clone(),
                    }))
                })
            })
            .collect::<std::result::Result<Vec<_>, _>>()?;
        mlx_rs::transforms::eval(bias_sums.iter().flatten())?;
        // Each stage hands on the sum of its blocks, not their mean: the
        // layer after it takes the 1/count.
        let mut conv_post = Conv1d::load(ws, "dec.conv_post")?;
        let mean = 1.0 / nk as f32;
        for up in ups.iter_mut().skip(1) {
            up.scale_input(mean)?;
        }
        conv_post.scale_input(mean)?;
        // conv_post feeds `math::tanh_prescaled`: it emits its output prescaled.
        let c_out = conv_post.c_out as i32;
        conv_post.scale_output(&ops::full::<f32>(&[c_out], Array::from_f32(math::TANH_PRESCALE))?)?;
        Ok(Self {
            conv_pre: Conv1d::load(ws, "dec.conv_pre")?,
            cond: if ws.contains("dec.cond.weight") { Some(Conv1d::load(ws, "dec.cond")?) } else { None },
            ups,
            resblocks,
            bias_sums,
            conv_post,
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
        let mut x = Tiles::new(vec![x]);
        let stages = self.ups.len();
        for (i, (up, blocks)) in self.ups.iter().zip(&self.resblocks).enumerate() {
            let post = (i + 1 == stages).then_some(&self.conv_post);
            x = stage(up, blocks, self.bias_sums[i].as_ref(), post, &x, cancelled)?;
            check(cancelled)?;
        }
        Ok(x.rows(0, x.len())?.reshape(&[-1])?)
    }
}
