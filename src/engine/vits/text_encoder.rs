//! The text encoder (`enc_p`): phoneme embedding, a Transformer encoder with
//! relative-position self-attention (window `W`, heads sharing one relative
//! table), and a 1x1 projection to the prior's mean and log-std.
//!
//! Shapes (batch 1, time-major): ids `[L]` -> hidden `[L, H]` ->
//! `m_p`, `logs_p` `[L, C]` (C = inter channels, H = hidden channels).
//!
//! Owns the encoder's layers, and how a long sentence's layers are spread
//! over the lanes (heads, then row ranges), equal to the one-lane result.
//! It never checks ids (the voice does, before it is called).
use mlx_rs::{ops, Array};

use super::math::{self, relu};
use super::ops::{array, cols, rows, scale, Conv1d, LayerNorm};
use super::VitsConfig;
use crate::engine::cancel::{check, Cancelled};
use crate::engine::cpu;
use crate::engine::error::Result;
use crate::engine::lanes::{self, eval_tiles, queue};
use crate::engine::weights::Weights;

/// Named outputs of the encoder.
pub struct Encoded {
    pub hidden: Array, // [L, H]
    pub m_p: Array,    // [L, C]
    pub logs_p: Array, // [L, C]
}

pub struct TextEncoder {
    emb: Array, // [n_vocab, H]
    hidden: usize,
    layers: Vec<EncoderLayer>,
    proj: Conv1d,
    inter: usize,
}

struct EncoderLayer {
    attn: MultiHeadAttention,
    norm_1: LayerNorm,
    ffn: Ffn,
    norm_2: LayerNorm,
}

impl TextEncoder {
    pub fn load(ws: &mut Weights, cfg: &VitsConfig) -> Result<Self> {
        let emb = ws.take("enc_p.emb.weight")?;
        let layers = (0..cfg.n_layers)
            .map(|i| {
                let p = "enc_p.encoder";
                Ok(EncoderLayer {
                    attn: MultiHeadAttention::load(ws, &format!("{p}.attn_layers.{i}"), cfg)?,
                    norm_1: LayerNorm::load(ws, &format!("{p}.norm_layers_1.{i}"), cfg.hidden_channels)?,
                    ffn: Ffn::load(ws, &format!("{p}.ffn_layers.{i}"))?,
                    norm_2: LayerNorm::load(ws, &format!("{p}.norm_layers_2.{i}"), cfg.hidden_channels)?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            emb: array(&emb),
            hidden: cfg.hidden_channels,
            layers,
            proj: Conv1d::load(ws, "enc_p.proj")?,
            inter: cfg.inter_channels,
        })
    }

    /// The encoder's outputs for `ids`, evaluated. Long sequences spread
    /// each layer over the lanes; shorter ones run whole, their GEMMs on
    /// BLAS threads.
    pub fn forward(&self, ids: &[i64]) -> Result<Encoded> {
        self.forward_checked(ids, &|| false)
    }

    /// [`TextEncoder::forward`], polling `cancelled` between layers.
    pub fn forward_checked(&self, ids: &[i64], cancelled: Cancelled) -> Result<Encoded> {
        let lanes = lanes::count();
        let split = lanes > 1 && ids.len() >= MIN_ROWS_FOR_LANES;
        let run = || -> Result<Encoded> {
            let enc = self.build(ids, if split { lanes } else { 1 }, cancelled)?;
            mlx_rs::transforms::eval([&enc.hidden, &enc.m_p, &enc.logs_p])?;
            check(cancelled)?;
            Ok(enc)
        };
        if split {
            run()
        } else {
            cpu::with_blas_threads(run)
        }
    }

    /// The encoder's graph, each layer spread over `lanes` when more than
    /// one. Polls `cancelled` once a layer has run: each layer is queued as
    /// it is built and the one before it waited for, so the poll follows
    /// the work while the next layer still overlaps the current one.
    fn build(&self, ids: &[i64], lanes: usize, cancelled: Cancelled) -> Result<Encoded> {
        let idx: Vec<i32> = ids.iter().map(|&i| i as i32).collect();
        let idx = Array::from_slice(&idx, &[idx.len() as i32]);
        let mut x = scale(&self.emb.take_axis(&idx, 0)?, (self.hidden as f32).sqrt())?;
        for layer in &self.layers {
            check(cancelled)?;
            if lanes > 1 {
                x = layer.forward_on_lanes(&x, lanes, cancelled)?;
                continue;
            }
            let before = x.clone();
            let y = layer.attn.forward(&x)?;
            x = layer.norm_1.forward(&ops::add(&x, &y)?)?;
            let y = layer.ffn.forward(&x)?;
            x = layer.norm_2.forward(&ops::add(&x, &y)?)?;
            queue(&x)?; // runs while the next layer is built
            before.eval()?; // the previous layer is done: the poll above is current
        }
        let stats = self.proj.forward(&x)?; // [L, 2C]
        let c = self.inter as i32;
        Ok(Encoded { m_p: cols(&stats, 0, c)?, logs_p: cols(&stats, c, 2 * c)?, hidden: x })
    }
}

/// Sequences shorter than this run whole on one lane with BLAS threads:
/// below it the lanes' per-head and per-range pieces cost more in
/// dispatch and margins than they gain (the crossover on 2 lanes; figures
/// in docs/engine.md).
const MIN_ROWS_FOR_LANES: usize = 200;

impl EncoderLayer {
    /// The layer with its work spread over `lanes`: attention one head per
    /// lane (heads are independent), then the output projection, norms and
    /// feed-forward network on row ranges (row-local but for the FFN's
    /// convolutions, which read their neighbours: each range computes a
    /// margin of extra rows). Equal to the one-lane computation.
    fn forward_on_lanes(&self, x: &Array, lanes: usize, cancelled: Cancelled) -> Result<Array> {
        let heads = self.attn.n_heads as usize;
        let per_head = eval_tiles(heads, cancelled, |h| self.attn.head(x, h as i32))?; // each [L, d_k]
        let attended = ops::concatenate(&per_head, 1)?; // [L, H]
        let l = x.shape()[0] as usize;
        let margin = self.ffn.radius();
        let piece = l.div_ceil(lanes);
        let parts = eval_tiles(l.div_ceil(piece), cancelled, |i| {
            let (a, b) = (i * piece, ((i + 1) * piece).min(l));
            let (lo, hi) = (a.saturating_sub(margin), (b + margin).min(l));
            let y = self.attn.conv_o.forward(&rows(&attended, lo as i32, hi as i32)?)?;
            let h = self.norm_1.forward(&ops::add(&rows(x, lo as i32, hi as i32)?, &y)?)?;
            let (f, lost) = self.ffn.forward_span(&h, (lo == 0, hi == l))?;
            let h = rows(&h, lost.0, h.shape()[0] - lost.1)?;
            let out = self.norm_2.forward(&ops::add(&h, &f)?)?;
            let first = lo + lost.0 as usize;
            rows(&out, (a - first) as i32, (b - first) as i32)
        })?;
        Ok(ops::concatenate(&parts, 0)?)
    }
}

/// Self-attention with relative position embeddings for keys and values.
/// `emb_rel_k`/`emb_rel_v`: `[1, 2W+1, d_k]`; offsets beyond `W` get none.
struct MultiHeadAttention {
    conv_q: Conv1d,
    conv_k: Conv1d,
    conv_v: Conv1d,
    conv_o: Conv1d,
    emb_rel_k: Array, // [2W+1, d_k]
    emb_rel_v: Array, // [2W+1, d_k]
    n_heads: i32,
    k_channels: i32,
    window: i32,
}

impl MultiHeadAttention {
    fn load(ws: &mut Weights, p: &str, cfg: &VitsConfig) -> Result<Self> {
        let rel = |ws: &mut Weights, name: &str| -> Result<Array> {
            let t = ws.take(&format!("{p}.{name}"))?;
            Ok(array(&t).reshape(&[(2 * cfg.window_size + 1) as i32, cfg.k_channels() as i32])?)
        };
        // Projections are 1x1 (a head's channels are picked out of them).
        let one = |ws: &mut Weights, name: &str| -> Result<Conv1d> {
            let c = Conv1d::load(ws, &format!("{p}.{name}"))?;
            c.expect_1x1()?;
            Ok(c)
        };
        Ok(Self {
            conv_q: one(ws, "conv_q")?,
            conv_k: one(ws, "conv_k")?,
            conv_v: one(ws, "conv_v")?,
            conv_o: one(ws, "conv_o")?,
            emb_rel_k: rel(ws, "emb_rel_k")?,
            emb_rel_v: rel(ws, "emb_rel_v")?,
            n_heads: cfg.n_heads as i32,
            k_channels: cfg.k_channels() as i32,
            window: cfg.window_size as i32,
        })
    }

    /// `[L, H]` -> `[n_heads, L, d_k]`.
    fn heads(&self, x: &Array) -> Result<Array> {
        let l = x.shape()[0];
        Ok(x.reshape(&[l, self.n_heads, self.k_channels])?.transpose_axes(&[1, 0, 2])?)
    }

    fn forward(&self, x: &Array) -> Result<Array> {
        let l = x.shape()[0];
        let q = self.heads(&self.conv_q.forward(x)?)?;
        let k = self.heads(&self.conv_k.forward(x)?)?;
        let v = self.heads(&self.conv_v.forward(x)?)?;
        let out = self.attend(&q, &k, &v)?; // [h, L, d_k]
        let out = out.transpose_axes(&[1, 0, 2])?.reshape(&[l, self.n_heads * self.k_channels])?;
        self.conv_o.forward(&out)
    }

    /// Head `h` alone, before the output projection: `[L, H]` -> `[L, d_k]`.
    fn head(&self, x: &Array, h: i32) -> Result<Array> {
        let l = x.shape()[0];
        let d = self.k_channels;
        let one = |c: &Conv1d| -> Result<Array> { Ok(c.forward_channels(x, h * d, (h + 1) * d)?.reshape(&[1, l, d])?) };
        let out = self.attend(&one(&self.conv_q)?, &one(&self.conv_k)?, &one(&self.conv_v)?)?;
        Ok(out.reshape(&[l, d])?)
    }

    /// Attention of `q`, `k`, `v` `[heads, L, d_k]` -> `[heads, L, d_k]`.
    fn attend(&self, q: &Array, k: &Array, v: &Array) -> Result<Array> {
        let (n_heads, l) = (q.shape()[0], q.shape()[1]);
        let w = self.window;
        let q = scale(q, 1.0 / (self.k_channels as f32).sqrt())?;

        // Absolute scores plus relative-key logits: rel[h, i, j] = q_i . E_k[j - i] for |j - i| <= W.
        let mut scores = ops::matmul(&q, &k.transpose_axes(&[0, 2, 1])?)?; // [h, L, L]
        let q_rel = ops::matmul(&q, self.emb_rel_k.t())?; // [h, L, 2W+1]
        scores = ops::add(&scores, &band_to_square(&q_rel, l, w)?)?;

        let p = math::softmax(&scores)?; // [h, L, L]
        let out = ops::matmul(&p, v)?; // [h, L, d_k]
        // Relative values: weight of offset r for query i is p[h, i, i + r - W].
        let (to_abs, abs_valid) = band_indices(l, |i, r| i + r - w, l, 2 * w + 1);
        let rel_w = ops::multiply(&p.take_along_axis(&broadcast_heads(&to_abs, n_heads, l, 2 * w + 1)?, -1)?, &abs_valid)?; // [h, L, 2W+1]
        Ok(ops::add(&out, &ops::matmul(&rel_w, &self.emb_rel_v)?)?)
    }
}

/// Relative logits `r` `[h, L, 2W+1]` (column `c` is offset `c - W`) placed
/// on the band of an `[h, L, L]` matrix: `out[h, i, j] = r[h, i, j - i + W]`
/// for `|j - i| <= W`, zero elsewhere. The "skew" trick: with each row of `r`
/// zero-padded to `M >= L + W + 1` columns, reading the padded rows with a
/// row stride of `M - 1` shifts row `i` right by `i`, and the rows' zero
/// tails fill the rest (one pad, one strided view: no gather, no mask).
fn band_to_square(r: &Array, l: i32, w: i32) -> Result<Array> {
    let h = r.shape()[0];
    let m = l.max(w) + w + 1;
    let padded = ops::pad(r, &[(0, 0), (0, 0), (0, m - (2 * w + 1))], None, None)?; // [h, L, M]
    let (l64, m64) = (l as i64, m as i64);
    Ok(ops::as_strided(&padded, &[h, l, l][..], &[l64 * m64, m64 - 1, 1][..], w as usize)?)
}

/// For rows `i < L` and columns `c < n_cols`, the index `f(i, c)` clamped to
/// `[0, limit)` and a 0/1 mask saying whether it was in range.
fn band_indices(l: i32, f: impl Fn(i32, i32) -> i32, limit: i32, n_cols: i32) -> (Array, Array) {
    let mut idx = Vec::with_capacity((l * n_cols) as usize);
    let mut valid = Vec::with_capacity((l * n_cols) as usize);
    for i in 0..l {
        for c in 0..n_cols {
            let v = f(i, c);
            let ok = (0..limit).contains(&v);
            idx.push(v.clamp(0, limit - 1));
            valid.push(if ok { 1.0f32 } else { 0.0 });
        }
    }
    (Array::from_slice(&idx, &[l, n_cols]), Array::from_slice(&valid, &[l, n_cols]))
}

fn broadcast_heads(idx: &Array, heads: i32, rows: i32, cols: i32) -> Result<Array> {
    Ok(ops::broadcast_to(idx, &[heads, rows, cols])?)
}

/// Position-wise feed-forward: conv (same padding) -> ReLU -> conv.
struct Ffn {
    conv_1: Conv1d,
    conv_2: Conv1d,
}

impl Ffn {
    fn load(ws: &mut Weights, p: &str) -> Result<Self> {
        // The graph pads explicitly before these convs ("same" padding), so
        // their own padding attribute is 0.
        let same = |c: Conv1d| {
            let k = c.kernel();
            c.with_padding((k - 1) / 2, k / 2)
        };
        Ok(Self {
            conv_1: same(Conv1d::load(ws, &format!("{p}.conv_1"))?),
            conv_2: same(Conv1d::load(ws, &format!("{p}.conv_2"))?),
        })
    }

    fn forward(&self, x: &Array) -> Result<Array> {
        self.conv_2.forward(&relu(&self.conv_1.forward(x)?)?)
    }

    /// Rows of context on each side the two convolutions read.
    fn radius(&self) -> usize {
        self.conv_1.radius() + self.conv_2.radius()
    }

    /// [`Ffn::forward`] on a range of rows, zero-padded only at the
    /// sequence's ends (`pad`); returns the rows lost on each side.
    fn forward_span(&self, x: &Array, pad: (bool, bool)) -> Result<(Array, (i32, i32))> {
        let (a, b) = (self.conv_1.shrink(pad), self.conv_2.shrink(pad));
        let y = self.conv_2.forward_with(&relu(&self.conv_1.forward_with(x, pad, None)?)?, pad, None)?;
        Ok((y, (a.0 + b.0, a.1 + b.1)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn skewed_band_places_each_offset_on_its_diagonal() {
        let _mlx = crate::mlx_test_lock();
        for (h, l, w) in [(2, 7, 2), (1, 3, 4), (2, 12, 4)] {
            let n = (h * l * (2 * w + 1)) as usize;
            let data: Vec<f32> = (0..n).map(|i| i as f32 + 1.0).collect();
            let r = Array::from_slice(&data, &[h, l, 2 * w + 1]);
            let sq = band_to_square(&r, l, w).unwrap().contiguous().unwrap();
            sq.eval().unwrap();
            let got = sq.as_slice::<f32>();
            for b in 0..h {
                for i in 0..l {
                    for j in 0..l {
                        let want = if (j - i).abs() <= w { data[((b * l + i) * (2 * w + 1) + j - i + w) as usize] } else { 0.0 };
                        assert_eq!(got[((b * l + i) * l + j) as usize], want, "h={h} l={l} w={w} at {b},{i},{j}");
                    }
                }
            }
        }
    }
}
