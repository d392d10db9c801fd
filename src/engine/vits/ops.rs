//! Layer primitives for the VITS model, in MLX, batch 1, time-major `[T, C]`.
//!
//! Convolutions are written as matrix products on purpose: MLX's CPU backend
//! runs dilated `conv1d` and `conv_transpose1d` as naive loops, while a GEMM
//! goes to BLAS. A `K`-tap convolution becomes an im2col matmul
//! (`[T, K*C_in] @ [K*C_in, C_out]`) or, for long inputs, `K` accumulated
//! matmuls on shifted rows; a transposed convolution becomes one accumulated
//! matmul per block of `stride` taps on shifted rows (the overlap-add).
//! Weights are converted from PyTorch's `[C_out, C_in, K]` layout here, once,
//! at load time.
//!
//! Owns the layers (convolutions, layer norm) and the array helpers they
//! share (rows, columns, padding, host copies). A forward pass never
//! evaluates (only loading does, once per weight): callers decide when, and
//! [`crate::engine::lanes`] spreads work over the lanes. Activations live in
//! [`super::math`].
use mlx_rs::ops::indexing::TryIndexOp;
use mlx_rs::{ops, Array};

use crate::engine::error::{EngineError, Result};
use crate::engine::weights::{ConvAttrs, Tensor, Weights};

/// An MLX array from a loaded tensor, with its shape.
pub fn array(t: &Tensor) -> Array {
    let shape: Vec<i32> = t.shape.iter().map(|&d| d as i32).collect();
    Array::from_slice(&t.data, &shape)
}

fn shape_error(name: &str, want: &str, got: &[usize]) -> EngineError {
    EngineError::VoiceLoad {
        path: String::new(),
        reason: format!("weight '{name}' has shape {got:?}, expected {want}"),
    }
}

/// Takes `{prefix}.weight` and checks its rank.
fn take_weight(ws: &mut Weights, prefix: &str, rank: usize) -> Result<Tensor> {
    let name = format!("{prefix}.weight");
    let t = ws.take(&name)?;
    if t.shape.len() != rank || t.shape.contains(&0) {
        return Err(shape_error(&name, &format!("rank {rank}, no empty dimension"), &t.shape));
    }
    Ok(t)
}

fn take_bias(ws: &mut Weights, prefix: &str, channels: usize) -> Result<Option<Array>> {
    let name = format!("{prefix}.bias");
    if !ws.contains(&name) {
        return Ok(None);
    }
    let t = ws.take(&name)?;
    if t.shape != [channels] {
        return Err(shape_error(&name, &format!("[{channels}]"), &t.shape));
    }
    Ok(Some(array(&t)))
}

/// Slices of `w` along `axis` (0 or 1 of a matrix) picked by `map`, zero
/// where `None`: `out[.., j] = w[.., map[j]]`. Evaluated (a weight).
fn remap(w: &Array, axis: i32, map: &[Option<usize>]) -> Result<Array> {
    let idx: Vec<i32> = map.iter().map(|m| m.unwrap_or(0) as i32).collect();
    let keep: Vec<f32> = map.iter().map(|m| if m.is_some() { 1.0 } else { 0.0 }).collect();
    let n = map.len() as i32;
    let shape = if axis == 0 { [n, 1] } else { [1, n] };
    let keep = Array::from_slice(&keep, &shape);
    let out = ops::multiply(&w.take_axis(Array::from_slice(&idx, &[n]), axis)?, &keep)?;
    out.eval()?;
    Ok(out)
}

/// Permutes a row-major `[d0, d1, d2]` buffer to `[d_perm...]`.
fn permute3(data: &[f32], dims: [usize; 3], perm: [usize; 3]) -> Vec<f32> {
    let strides = [dims[1] * dims[2], dims[2], 1];
    let out_dims = [dims[perm[0]], dims[perm[1]], dims[perm[2]]];
    let mut out = Vec::with_capacity(data.len());
    for a in 0..out_dims[0] {
        for b in 0..out_dims[1] {
            for c in 0..out_dims[2] {
                let mut idx = [0usize; 3];
                idx[perm[0]] = a;
                idx[perm[1]] = b;
                idx[perm[2]] = c;
                out.push(data[idx[0] * strides[0] + idx[1] * strides[1] + idx[2]]);
            }
        }
    }
    out
}

/// `x[start..end]` along the time axis.
pub fn rows(x: &Array, start: i32, end: i32) -> Result<Array> {
    Ok(x.try_index((start..end, ..))?)
}

/// `x[:, start..end]` along the channel axis.
pub fn cols(x: &Array, start: i32, end: i32) -> Result<Array> {
    Ok(x.try_index((.., start..end))?)
}

/// Zero-pads the time axis.
pub fn pad_time(x: &Array, left: i32, right: i32) -> Result<Array> {
    if left == 0 && right == 0 {
        return Ok(x.clone());
    }
    let widths = [(left, right), (0, 0)];
    Ok(ops::pad(x, &widths, None, None)?)
}

/// Inputs with at least this many elements use per-tap accumulation.
const TAP_ACCUMULATE_ELEMENTS: usize = 1 << 14;

/// A 1-D convolution, stride 1, groups 1, any kernel size and dilation.
/// Weight `[C_out, C_in, K]` is stored as `[K*C_in, C_out]` (im2col form) and
/// as `K` taps of `[C_in, C_out]`.
pub struct Conv1d {
    weight: Array,
    taps: Vec<Array>,
    bias: Option<Array>,
    kernel: i32,
    dilation: i32,
    pad: (i32, i32),
    pub c_in: usize,
    pub c_out: usize,
}

impl Conv1d {
    /// Loads `{prefix}.weight`/`.bias`; dilation and padding come from the
    /// graph's Conv node when the weights carry them, else `default`.
    pub fn load(ws: &mut Weights, prefix: &str) -> Result<Self> {
        let attrs = ws.conv_attrs(prefix);
        let w = take_weight(ws, prefix, 3)?;
        let (c_out, c_in, k) = (w.shape[0], w.shape[1], w.shape[2]);
        let attrs = attrs.unwrap_or_else(|| ConvAttrs::same(k));
        if attrs.group != 1 || attrs.stride != 1 {
            return Err(shape_error(prefix, "a plain convolution (group 1, stride 1)", &w.shape));
        }
        let bias = take_bias(ws, prefix, c_out)?;
        // [C_out, C_in, K] -> [K, C_in, C_out] -> [K*C_in, C_out]
        let data = permute3(&w.data, [c_out, c_in, k], [2, 1, 0]);
        let weight = Array::from_slice(&data, &[(k * c_in) as i32, c_out as i32]);
        let taps = (0..k)
            .map(|i| Array::from_slice(&data[i * c_in * c_out..(i + 1) * c_in * c_out], &[c_in as i32, c_out as i32]))
            .collect();
        Ok(Self {
            weight,
            taps,
            bias,
            kernel: k as i32,
            dilation: attrs.dilation as i32,
            pad: (attrs.pads.0 as i32, attrs.pads.1 as i32),
            c_in,
            c_out,
        })
    }

    pub fn kernel(&self) -> usize {
        self.kernel as usize
    }

    /// Overrides the zero padding (for convs the graph pads explicitly).
    pub fn with_padding(mut self, left: usize, right: usize) -> Self {
        self.pad = (left as i32, right as i32);
        self
    }

    pub fn dilation(&self) -> usize {
        self.dilation as usize
    }

    /// Frames of context this convolution reads on each side.
    pub fn radius(&self) -> usize {
        ((self.kernel - 1) * self.dilation) as usize / 2 + 1
    }

    /// `x: [T, C_in]` -> `[T', C_out]`, zero-padded as the graph says.
    pub fn forward(&self, x: &Array) -> Result<Array> {
        self.forward_with(x, (true, true), None)
    }

    /// Output channels `[lo, hi)` only of a 1x1 convolution: `[T, C_in]` -> `[T, hi - lo]`.
    pub fn forward_channels(&self, x: &Array, lo: i32, hi: i32) -> Result<Array> {
        self.expect_1x1()?;
        let w = cols(&self.weight, lo, hi)?;
        Ok(match &self.bias {
            Some(b) => ops::addmm(&b.try_index(lo..hi)?, x, &w, None, None)?,
            None => ops::matmul(x, &w)?,
        })
    }

    /// An error unless this is a 1x1 convolution (what the voice's layout
    /// promises for the layers that call this).
    pub fn expect_1x1(&self) -> Result<()> {
        if self.kernel != 1 {
            return Err(EngineError::VoiceLoad {
                path: String::new(),
                reason: format!("a 1x1 convolution was expected, the weights have {} taps", self.kernel),
            });
        }
        Ok(())
    }

    /// Rows lost on each side when the padding on a side is left out.
    pub fn shrink(&self, pad: (bool, bool)) -> (i32, i32) {
        (if pad.0 { 0 } else { self.pad.0 }, if pad.1 { 0 } else { self.pad.1 })
    }

    /// [`Conv1d::forward`] zero-padding only the sides `pad` says: on a side
    /// without padding the convolution is "valid" and the output loses
    /// [`Conv1d::shrink`] rows there (used inside tiles, whose neighbouring
    /// rows are real data; skipping the pad saves a copy of the input).
    /// `residual` `[T', C_out]`, when given, is added to the output (it
    /// seeds the first GEMM's accumulator instead of a separate pass).
    ///
    /// Long inputs (the decoder's late stages) accumulate one GEMM per tap:
    /// materialising the im2col matrix costs more memory traffic there than
    /// the GEMMs themselves. Short ones use im2col.
    pub fn forward_with(&self, x: &Array, pad: (bool, bool), residual: Option<&Array>) -> Result<Array> {
        // What the products are added to: residual and/or bias.
        match (residual, &self.bias) {
            (Some(res), Some(b)) => self.products(x, pad, Some(ops::add(res, b)?)),
            (Some(res), None) => self.products(x, pad, Some(res.clone())),
            // A bias as the GEMM's seed would be broadcast to the output's
            // shape by a slow general copy: added afterwards instead.
            (None, Some(b)) => Ok(ops::add(&self.products(x, pad, None)?, b)?),
            (None, None) => self.products(x, pad, None),
        }
    }

    /// `seed + conv(x)` without the bias: the caller has put the bias (or
    /// a sum of biases) into `seed`, which has the output's shape. Padding
    /// as in [`Conv1d::forward_with`].
    pub fn forward_into(&self, x: &Array, pad: (bool, bool), seed: &Array) -> Result<Array> {
        self.products(x, pad, Some(seed.clone()))
    }

    pub fn bias(&self) -> Option<&Array> {
        self.bias.as_ref()
    }

    /// Multiplies the weights (not the bias) by `k`: a scale on the input
    /// folded into the layer.
    pub fn scale_input(&mut self, k: f32) -> Result<()> {
        self.weight = scale(&self.weight, k)?;
        self.weight.eval()?;
        for w in &mut self.taps {
            *w = scale(w, k)?;
            w.eval()?;
        }
        Ok(())
    }

    /// Multiplies output channel `c` (weights and bias) by `k[c]`, `k` `[C_out]`:
    /// a per-channel scale on the output folded into the layer.
    pub fn scale_output(&mut self, k: &Array) -> Result<()> {
        self.weight = ops::multiply(&self.weight, k)?;
        self.weight.eval()?;
        for w in &mut self.taps {
            *w = ops::multiply(&*w, k)?;
            w.eval()?;
        }
        if let Some(b) = &mut self.bias {
            *b = ops::multiply(&*b, k)?;
            b.eval()?;
        }
        Ok(())
    }

    /// A 1x1 convolution's input channels, rearranged: input channel `j`
    /// of the new layer reads what old channel `map[j]` read, or nothing
    /// (a zero weight row) where `map[j]` is `None`. For a layer fed a
    /// permuted or wider array than its weights were trained on.
    pub fn remap_input(&mut self, map: &[Option<usize>]) -> Result<()> {
        self.remap(0, map)
    }

    /// A 1x1 convolution's output channels, rearranged: output channel `j`
    /// is old channel `map[j]` (weights and bias), or zero where `None`.
    pub fn remap_output(&mut self, map: &[Option<usize>]) -> Result<()> {
        self.remap(1, map)
    }

    /// [`Conv1d::remap_input`] (`axis` 0) or [`Conv1d::remap_output`] (1).
    fn remap(&mut self, axis: i32, map: &[Option<usize>]) -> Result<()> {
        self.expect_1x1()?;
        let picked = remap(&self.weight, axis, map)?;
        self.weight = picked.clone();
        self.taps = vec![picked];
        if axis == 0 {
            self.c_in = map.len();
        } else {
            if let Some(b) = &self.bias {
                self.bias = Some(remap(&b.reshape(&[1, -1])?, 1, map)?.reshape(&[-1])?);
            }
            self.c_out = map.len();
        }
        Ok(())
    }

    /// `init + conv(x)` without the bias, `init` broadcast to the output.
    fn products(&self, x: &Array, pad: (bool, bool), init: Option<Array>) -> Result<Array> {
        let (l, r) = self.shrink(pad);
        let xp = pad_time(x, self.pad.0 - l, self.pad.1 - r)?;
        let t_out = xp.shape()[0] - self.dilation * (self.kernel - 1);
        let product = |acc: Option<&Array>, a: &Array, w: &Array| -> Result<Array> {
            Ok(match acc {
                Some(c) => ops::addmm(c, a, w, None, None)?,
                None => ops::matmul(a, w)?,
            })
        };
        if self.kernel == 1 {
            product(init.as_ref(), &xp, &self.weight)
        } else if x.shape()[0] as usize * self.c_in >= TAP_ACCUMULATE_ELEMENTS {
            let mut y = product(init.as_ref(), &rows(&xp, 0, t_out)?, &self.taps[0])?;
            for (i, w) in self.taps.iter().enumerate().skip(1) {
                let start = i as i32 * self.dilation;
                y = ops::addmm(&y, &rows(&xp, start, start + t_out)?, w, None, None)?;
            }
            Ok(y)
        } else {
            // im2col as one strided view of the padded input (row t: rows t,
            // t+d, .. t+(K-1)d), which the GEMM copies to a matrix: two
            // operations whatever K.
            let (c, d) = (self.c_in as i64, self.dilation as i64);
            let im2col = if d == 1 {
                ops::as_strided(&xp, &[t_out, self.kernel * self.c_in as i32][..], &[c, 1][..], 0)?
            } else {
                ops::as_strided(&xp, &[t_out, self.kernel, self.c_in as i32][..], &[c, d * c, 1][..], 0)?
                    .reshape(&[t_out, -1])?
            }; // [T', K*C_in]
            product(init.as_ref(), &im2col, &self.weight)
        }
    }
}

/// A depthwise convolution (`groups == channels`): the `K` shifted rows of
/// the input seen as one strided view `[T, K, C]`, weighted and summed over
/// `K` (four operations whatever `K`).
pub struct DepthwiseConv1d {
    taps: Array, // [K, C]
    bias: Option<Array>,
    kernel: i32,
    dilation: i32,
    pad: (i32, i32),
}

impl DepthwiseConv1d {
    pub fn load(ws: &mut Weights, prefix: &str) -> Result<Self> {
        let attrs = ws.conv_attrs(prefix);
        let w = take_weight(ws, prefix, 3)?; // [C, 1, K]
        let (c, one, k) = (w.shape[0], w.shape[1], w.shape[2]);
        if one != 1 {
            return Err(shape_error(prefix, "[C, 1, K] (depthwise)", &w.shape));
        }
        let attrs = attrs.unwrap_or_else(|| ConvAttrs::same(k));
        let taps = permute3(&w.data, [c, 1, k], [2, 1, 0]); // [K, 1, C]
        Ok(Self {
            taps: Array::from_slice(&taps, &[k as i32, c as i32]),
            bias: take_bias(ws, prefix, c)?,
            kernel: k as i32,
            dilation: attrs.dilation as i32,
            pad: (attrs.pads.0 as i32, attrs.pads.1 as i32),
        })
    }

    pub fn forward(&self, x: &Array) -> Result<Array> {
        let xp = pad_time(x, self.pad.0, self.pad.1)?; // [T + pads, C], contiguous
        let c = xp.shape()[1];
        let t_out = xp.shape()[0] - self.dilation * (self.kernel - 1);
        // shifted[t, i, ch] = xp[t + i * dilation, ch]
        let (c64, d64) = (c as i64, self.dilation as i64);
        let shifted = ops::as_strided(&xp, &[t_out, self.kernel, c][..], &[c64, d64 * c64, 1][..], 0)?;
        let y = ops::sum_axis(&ops::multiply(&shifted, &self.taps)?, 1, false)?; // [T, C]
        Ok(match &self.bias {
            Some(b) => ops::add(&y, b)?,
            None => y,
        })
    }
}

/// A transposed convolution (upsampling by `stride`), as `m = ceil(K / stride)`
/// accumulated matmuls, one per block of `stride` taps, on shifted rows of
/// the input (the overlap-add happens in the GEMMs' accumulator, with no
/// separate pass over the upsampled output). Weight `[C_in, C_out, K]` is
/// zero-padded to `m * stride` taps and stored per block.
pub struct ConvTranspose1d {
    /// Per block `i`: `[C_in, stride*C_out]`, the taps `i*stride..(i+1)*stride`.
    blocks_w: Vec<Array>,
    /// The bias repeated for each of the `stride` phases: `[stride*C_out]`.
    bias: Option<Array>,
    stride: i32,
    kernel: i32,
    blocks: i32, // m
    pad: i32,
    pub c_out: usize,
}

impl ConvTranspose1d {
    pub fn load(ws: &mut Weights, prefix: &str) -> Result<Self> {
        let attrs = ws.conv_attrs(prefix);
        let w = take_weight(ws, prefix, 3)?;
        let (c_in, c_out, k) = (w.shape[0], w.shape[1], w.shape[2]);
        let attrs = attrs.ok_or_else(|| EngineError::VoiceLoad {
            path: String::new(),
            reason: format!("no stride/padding recorded for transposed convolution '{prefix}'"),
        })?;
        if attrs.pads.0 != attrs.pads.1 || attrs.group != 1 || attrs.dilation != 1 {
            return Err(shape_error(prefix, "symmetric padding, group 1, dilation 1", &w.shape));
        }
        let s = attrs.stride;
        let m = k.div_ceil(s);
        // [C_in, C_out, K] -> [C_in, K, C_out], taps padded to m*s.
        let mut data = permute3(&w.data, [c_in, c_out, k], [0, 2, 1]);
        if m * s != k {
            let mut padded = vec![0.0f32; c_in * m * s * c_out];
            for ci in 0..c_in {
                let src = &data[ci * k * c_out..(ci + 1) * k * c_out];
                padded[ci * m * s * c_out..ci * m * s * c_out + k * c_out].copy_from_slice(src);
            }
            data = padded;
        }
        // Block i of row ci is data[ci][i*s*C_out..(i+1)*s*C_out].
        let width = s * c_out;
        let blocks_w = (0..m)
            .map(|i| {
                let block: Vec<f32> = (0..c_in).flat_map(|ci| &data[(ci * m + i) * width..(ci * m + i + 1) * width]).copied().collect();
                Array::from_slice(&block, &[c_in as i32, width as i32])
            })
            .collect();
        let bias = take_bias(ws, prefix, c_out)?.map(|b| ops::tile(&b, &[s as i32])).transpose()?;
        if let Some(b) = &bias {
            b.eval()?;
        }
        Ok(Self {
            blocks_w,
            bias,
            stride: s as i32,
            kernel: k as i32,
            blocks: m as i32,
            pad: attrs.pads.0 as i32,
            c_out,
        })
    }

    pub fn stride(&self) -> usize {
        self.stride as usize
    }

    pub fn pad(&self) -> usize {
        self.pad as usize
    }

    /// Input rows that contribute to one output block of `stride` samples.
    pub fn blocks(&self) -> usize {
        self.blocks as usize
    }

    /// Output length for `t` input rows: `(t-1)*stride - 2*pad + K`.
    pub fn out_len(&self, t: usize) -> usize {
        ((t as i32 - 1) * self.stride - 2 * self.pad + self.kernel) as usize
    }

    /// `x: [T, C_in]` -> `[out_len(T), C_out]`.
    pub fn forward(&self, x: &Array) -> Result<Array> {
        let t = x.shape()[0];
        let full = self.forward_full(x)?;
        rows(&full, self.pad, self.pad + self.out_len(t as usize) as i32)
    }

    /// The uncropped output, bias included: `[(T + m - 1) * stride, C_out]`,
    /// where row `j*stride + r` is output sample `j*stride + r - pad`.
    pub fn forward_full(&self, x: &Array) -> Result<Array> {
        let t = x.shape()[0];
        let (s, m, c) = (self.stride, self.blocks, self.c_out as i32);
        // Output block j (samples j*s..(j+1)*s) is the sum over i of
        // x[j - i] @ W_i; with m-1 zero rows on each side of x that is
        // xp[j + m-1 - i] @ W_i for j in 0..T+m-1.
        let xp = pad_time(x, m - 1, m - 1)?;
        let n = t + m - 1;
        let mut acc: Option<Array> = None;
        for (i, w) in self.blocks_w.iter().enumerate() {
            let start = m - 1 - i as i32;
            let a = rows(&xp, start, start + n)?;
            acc = Some(match acc {
                Some(c) => ops::addmm(&c, &a, w, None, None)?,
                None => ops::matmul(&a, w)?,
            });
        }
        // `blocks_w` is never empty (a kernel has at least one tap).
        let acc = acc.ok_or_else(|| EngineError::VoiceLoad { path: String::new(), reason: "a transposed convolution without taps".into() })?;
        // The bias after the GEMMs, not as their seed (see Conv1d::forward_with).
        let acc = match &self.bias {
            Some(b) => ops::add(&acc, b)?,
            None => acc,
        };
        Ok(acc.reshape(&[n * s, c])?) // [T+m-1, s*C] -> [(T+m-1)*s, C]
    }

    /// Multiplies the weights (not the bias) by `k`: a scale on the input
    /// folded into the layer (see the decoder's residual-block sum).
    pub fn scale_input(&mut self, k: f32) -> Result<()> {
        for w in &mut self.blocks_w {
            *w = scale(w, k)?;
            w.eval()?;
        }
        Ok(())
    }
}

/// Layer norm over channels (VITS's `LayerNorm`, eps 1e-5).
pub struct LayerNorm {
    gamma: Array,
    beta: Array,
}

impl LayerNorm {
    pub fn load(ws: &mut Weights, prefix: &str, channels: usize) -> Result<Self> {
        let g = ws.take(&format!("{prefix}.gamma"))?;
        let b = ws.take(&format!("{prefix}.beta"))?;
        if g.shape != [channels] || b.shape != [channels] {
            return Err(shape_error(prefix, &format!("[{channels}]"), &g.shape));
        }
        Ok(Self { gamma: array(&g), beta: array(&b) })
    }

    pub fn forward(&self, x: &Array) -> Result<Array> {
        Ok(mlx_rs::fast::layer_norm(x, &self.gamma, &self.beta, 1e-5)?)
    }

    /// Multiplies the output by `k` (gamma and beta).
    pub fn scale_output(&mut self, k: f32) -> Result<()> {
        self.gamma = scale(&self.gamma, k)?;
        self.beta = scale(&self.beta, k)?;
        mlx_rs::transforms::eval([&self.gamma, &self.beta])?;
        Ok(())
    }
}

pub fn scale(x: &Array, k: f32) -> Result<Array> {
    Ok(ops::multiply(x, Array::from_f32(k))?)
}

/// Reverses the channel axis (VITS's `Flip`).
pub fn flip_channels(x: &Array) -> Result<Array> {
    let c = x.shape()[1];
    let idx: Vec<i32> = (0..c).rev().collect();
    Ok(x.take_axis(Array::from_slice(&idx, &[c]), 1)?)
}

/// Evaluates and copies a float array to the host (row-major).
pub fn to_vec(x: &Array) -> Result<Vec<f32>> {
    let x = x.contiguous()?;
    x.eval()?;
    x.try_as_slice::<f32>().map(<[f32]>::to_vec).map_err(|e| EngineError::Mlx(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tensor(shape: &[usize], f: impl Fn(usize) -> f32) -> Tensor {
        let n = shape.iter().product();
        Tensor { shape: shape.to_vec(), data: (0..n).map(f).collect() }
    }

    /// Direct (loop) convolution in PyTorch's layout, the reference for the matmul forms.
    fn conv_ref(x: &[f32], t: usize, c_in: usize, w: &Tensor, b: &[f32], dil: usize, pad: usize) -> Vec<f32> {
        let (c_out, k) = (w.shape[0], w.shape[2]);
        let t_out = t + 2 * pad - dil * (k - 1);
        let mut y = vec![0.0; t_out * c_out];
        for o in 0..t_out {
            for co in 0..c_out {
                let mut acc = b[co];
                for ci in 0..c_in {
                    for kk in 0..k {
                        let src = o as isize + (kk * dil) as isize - pad as isize;
                        if src >= 0 && (src as usize) < t {
                            acc += x[src as usize * c_in + ci] * w.data[(co * c_in + ci) * k + kk];
                        }
                    }
                }
                y[o * c_out + co] = acc;
            }
        }
        y
    }

    #[test]
    fn dilated_conv_matches_direct_convolution() {
        let _mlx = crate::mlx_test_lock();
        // Short input (im2col, one strided view: overlapping windows of rows
        // when undilated) and long input (per-tap accumulation).
        for t in [23, (TAP_ACCUMULATE_ELEMENTS / 5) + 7] {
            for dil in [1, 3] {
                check_conv(t, dil);
            }
        }
    }

    fn check_conv(t: usize, dil: usize) {
        let (c_in, c_out, k) = (5, 4, 7);
        let pad = dil * (k - 1) / 2;
        let w = tensor(&[c_out, c_in, k], |i| ((i * 37 % 17) as f32 - 8.0) / 10.0);
        let b = tensor(&[c_out], |i| i as f32 * 0.1);
        let x: Vec<f32> = (0..t * c_in).map(|i| ((i * 13 % 11) as f32 - 5.0) / 7.0).collect();
        let mut ws = Weights::from_tensors([("c.weight".into(), w.clone()), ("c.bias".into(), b.clone())]);
        ws.set_conv_attrs("c", ConvAttrs { dilation: dil, pads: (pad, pad), stride: 1, group: 1 });
        let conv = Conv1d::load(&mut ws, "c").unwrap();
        let y = to_vec(&conv.forward(&Array::from_slice(&x, &[t as i32, c_in as i32])).unwrap()).unwrap();
        let want = conv_ref(&x, t, c_in, &w, &b.data, dil, pad);
        assert_eq!(y.len(), want.len());
        for (a, b) in y.iter().zip(&want) {
            assert!((a - b).abs() < 1e-4, "{a} vs {b}");
        }
        // Unpadded ("valid", as inside tiles) on the same rows passed as a
        // view into a larger array: the view's offset must be honoured.
        let mut bigger = vec![9.0f32; 2 * c_in];
        bigger.extend(&x);
        let view = rows(&Array::from_slice(&bigger, &[t as i32 + 2, c_in as i32]), 2, t as i32 + 2).unwrap();
        let valid = to_vec(&conv.forward_with(&view, (false, false), None).unwrap()).unwrap();
        assert_eq!(valid.len(), (t - 2 * pad) * c_out);
        assert_eq!(valid[..], y[pad * c_out..(t - pad) * c_out]);
    }

    #[test]
    fn depthwise_conv_matches_direct_convolution() {
        let _mlx = crate::mlx_test_lock();
        let (t, c, k, dil) = (19, 4, 3, 3);
        let pad = dil * (k - 1) / 2;
        let w = tensor(&[c, 1, k], |i| ((i * 31 % 13) as f32 - 6.0) / 5.0);
        let b = tensor(&[c], |i| 0.3 - i as f32 * 0.2);
        let x: Vec<f32> = (0..t * c).map(|i| ((i * 11 % 9) as f32 - 4.0) / 3.0).collect();
        let mut ws = Weights::from_tensors([("d.weight".into(), w.clone()), ("d.bias".into(), b.clone())]);
        ws.set_conv_attrs("d", ConvAttrs { dilation: dil, pads: (pad, pad), stride: 1, group: c });
        let conv = DepthwiseConv1d::load(&mut ws, "d").unwrap();
        let y = to_vec(&conv.forward(&Array::from_slice(&x, &[t as i32, c as i32])).unwrap()).unwrap();
        assert_eq!(y.len(), t * c);
        for o in 0..t {
            for ch in 0..c {
                let mut want = b.data[ch];
                for kk in 0..k {
                    let src = o as isize + (kk * dil) as isize - pad as isize;
                    if src >= 0 && (src as usize) < t {
                        want += x[src as usize * c + ch] * w.data[ch * k + kk];
                    }
                }
                let got = y[o * c + ch];
                assert!((got - want).abs() < 1e-5, "row {o} channel {ch}: {got} vs {want}");
            }
        }
    }

    #[test]
    fn transposed_conv_matches_scatter_definition() {
        let _mlx = crate::mlx_test_lock();
        for (k, s, pad) in [(16usize, 8usize, 4usize), (8, 4, 2), (7, 3, 2)] {
            let (t, c_in, c_out) = (9, 3, 2);
            let w = tensor(&[c_in, c_out, k], |i| ((i * 29 % 13) as f32 - 6.0) / 9.0);
            let x: Vec<f32> = (0..t * c_in).map(|i| ((i * 7 % 5) as f32 - 2.0) / 3.0).collect();
            let b = tensor(&[c_out], |i| 0.25 - i as f32 * 0.5);
            let mut ws = Weights::from_tensors([("u.weight".into(), w.clone()), ("u.bias".into(), b.clone())]);
            ws.set_conv_attrs("u", ConvAttrs { dilation: 1, pads: (pad, pad), stride: s, group: 1 });
            let up = ConvTranspose1d::load(&mut ws, "u").unwrap();
            let y = to_vec(&up.forward(&Array::from_slice(&x, &[t as i32, c_in as i32])).unwrap()).unwrap();
            let len = (t - 1) * s + k - 2 * pad;
            let mut want: Vec<f32> = (0..len * c_out).map(|i| b.data[i % c_out]).collect();
            for ti in 0..t {
                for j in 0..k {
                    let o = (ti * s + j) as isize - pad as isize;
                    if o < 0 || o as usize >= len {
                        continue;
                    }
                    for co in 0..c_out {
                        for ci in 0..c_in {
                            want[o as usize * c_out + co] += x[ti * c_in + ci] * w.data[(ci * c_out + co) * k + j];
                        }
                    }
                }
            }
            assert_eq!(y.len(), want.len(), "k={k} s={s}");
            for (a, b) in y.iter().zip(&want) {
                assert!((a - b).abs() < 1e-4, "k={k} s={s}: {a} vs {b}");
            }
        }
    }
}
