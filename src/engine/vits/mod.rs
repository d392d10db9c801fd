//! VITS, as Piper voices use it, in MLX: text encoder -> stochastic duration
//! predictor (reverse) -> alignment expansion -> normalizing flow (reverse) ->
//! HiFi-GAN decoder.
//!
//! The architecture is read off the weights ([`VitsConfig::from_weights`]),
//! so x_low/low/medium/high and multi-speaker voices load alike. Every layer
//! takes its weights by name and the loader fails on a missing, misshapen or
//! unused weight. Batch 1, time-major `[T, C]` arrays throughout; with one
//! sequence there is no padding, so VITS's masks are all ones and omitted.
//! Nothing here evaluates eagerly except where host values are needed (the
//! durations); the caller evaluates once per chunk.
//!
//! Owns the config inferred from the weights and the order of the stages;
//! each stage is its own file, the layers are [`ops`] and the element-wise
//! functions [`math`]. It never reads voice files (it is handed
//! [`Weights`]), never touches espeak-ng, and never schedules lanes itself.
pub mod decoder;
pub mod duration;
pub mod flow;
pub mod math;
pub mod ops;
pub mod text_encoder;

use mlx_rs::Array;

use self::ops::array;
use crate::engine::cancel::{check, Cancelled};
use crate::engine::error::{EngineError, Result};
use crate::engine::weights::Weights;

/// Most decoder frames one sentence may expand to (about 12 minutes of audio
/// at 22.05 kHz with a hop of 256): bounds memory whatever the durations.
pub const MAX_FRAMES: u32 = 1 << 16;

/// Hyper-parameters, inferred from weight names and shapes.
#[derive(Debug, Clone, PartialEq)]
pub struct VitsConfig {
    pub n_vocab: usize,
    pub hidden_channels: usize,
    pub inter_channels: usize,
    pub filter_channels: usize,
    pub n_heads: usize,
    pub n_layers: usize,
    pub window_size: usize,
    pub stochastic_duration: bool,
    pub dp_filter_channels: usize,
    pub dp_n_flows: usize,
    pub flow_n_flows: usize,
    pub flow_n_layers: usize,
    pub upsample_rates: Vec<usize>,
    pub upsample_initial_channel: usize,
    pub resblocks_per_stage: usize,
    pub n_speakers: usize,
    pub gin_channels: usize,
}

fn bad(reason: String) -> EngineError {
    EngineError::VoiceLoad { path: String::new(), reason }
}

/// How many consecutive `{prefix}{i}{suffix}` weights exist, from 0.
fn count(ws: &Weights, prefix: &str, suffix: &str) -> usize {
    (0..).take_while(|i| ws.contains(&format!("{prefix}{i}{suffix}"))).count()
}

fn dim(ws: &Weights, name: &str, axis: usize) -> Result<usize> {
    let shape = ws.shape(name).ok_or_else(|| bad(format!("missing weight '{name}'")))?;
    shape.get(axis).copied().ok_or_else(|| bad(format!("weight '{name}' has shape {shape:?}, expected rank > {axis}")))
}

impl VitsConfig {
    pub fn from_weights(ws: &Weights) -> Result<Self> {
        let n_layers = count(ws, "enc_p.encoder.attn_layers.", ".conv_q.weight");
        if n_layers == 0 {
            return Err(bad("missing weight 'enc_p.encoder.attn_layers.0.conv_q.weight': not a Piper VITS voice".into()));
        }
        let hidden = dim(ws, "enc_p.emb.weight", 1)?;
        let rel = "enc_p.encoder.attn_layers.0.emb_rel_k";
        let k_channels = dim(ws, rel, 2)?;
        if k_channels == 0 || hidden % k_channels != 0 {
            return Err(bad(format!("'{rel}' head size {k_channels} does not divide hidden size {hidden}")));
        }
        let stochastic = ws.contains("dp.flows.0.m");
        let dp_filter = if stochastic { dim(ws, "dp.pre.weight", 0)? } else { dim(ws, "dp.conv_1.weight", 0)? };
        let upsample_rates = (0..count(ws, "dec.ups.", ".weight"))
            .map(|i| {
                let name = format!("dec.ups.{i}");
                ws.conv_attrs(&name).map(|a| a.stride).ok_or_else(|| bad(format!("no stride recorded for '{name}'")))
            })
            .collect::<Result<Vec<_>>>()?;
        if upsample_rates.is_empty() {
            return Err(bad("missing weight 'dec.ups.0.weight'".into()));
        }
        let n_resblocks = count(ws, "dec.resblocks.", ".convs.0.weight").max(count(ws, "dec.resblocks.", ".convs1.0.weight"));
        if n_resblocks == 0 || !n_resblocks.is_multiple_of(upsample_rates.len()) {
            return Err(bad(format!("{n_resblocks} decoder resblocks do not divide into {} stages", upsample_rates.len())));
        }
        let (n_speakers, gin) = if ws.contains("emb_g.weight") {
            (dim(ws, "emb_g.weight", 0)?, dim(ws, "emb_g.weight", 1)?)
        } else {
            (1, 0)
        };
        Ok(Self {
            n_vocab: dim(ws, "enc_p.emb.weight", 0)?,
            hidden_channels: hidden,
            inter_channels: dim(ws, "enc_p.proj.weight", 0)? / 2,
            filter_channels: dim(ws, "enc_p.encoder.ffn_layers.0.conv_1.weight", 0)?,
            n_heads: hidden / k_channels,
            n_layers,
            window_size: (dim(ws, rel, 1)? - 1) / 2,
            stochastic_duration: stochastic,
            dp_filter_channels: dp_filter,
            // ConvFlows sit at odd indices; the first (dp.flows.1) only runs in
            // training, so exports leave it out.
            dp_n_flows: if stochastic {
                (3..).step_by(2).take_while(|i| ws.contains(&format!("dp.flows.{i}.pre.weight"))).count() + 1
            } else {
                0
            },
            flow_n_flows: (0..).take_while(|i| ws.contains(&format!("flow.flows.{}.pre.weight", 2 * i))).count(),
            flow_n_layers: count(ws, "flow.flows.0.enc.in_layers.", ".weight"),
            upsample_initial_channel: dim(ws, "dec.conv_pre.weight", 0)?,
            resblocks_per_stage: n_resblocks / upsample_rates.len(),
            upsample_rates,
            n_speakers,
            gin_channels: gin,
        })
    }

    pub fn k_channels(&self) -> usize {
        self.hidden_channels / self.n_heads
    }
}

/// The whole model.
pub struct Vits {
    pub config: VitsConfig,
    pub enc_p: text_encoder::TextEncoder,
    pub dp: duration::DurationPredictor,
    pub flow: flow::Flow,
    pub dec: decoder::Decoder,
    emb_g: Option<Array>,
}

/// How one sentence is sampled: pace, noise, and the seed of that noise.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sampling {
    pub length_scale: f32,
    pub noise_scale: f32,
    pub noise_w: f32,
    pub seed: u64,
}

impl Sampling {
    /// Noise off: the deterministic output the goldens were made with.
    pub fn noiseless(length_scale: f32) -> Self {
        Self { length_scale, noise_scale: 0.0, noise_w: 0.0, seed: 0 }
    }
}

/// The prior of one sentence: durations and the sampled `z_p` `[T, C]`.
pub struct Prior {
    /// Frames per phoneme id (VITS's `w_ceil`).
    pub durations: Vec<u32>,
    pub z_p: Array,
}

/// What the front half of the model produced for one sentence.
pub struct Latent {
    /// Frames per phoneme id (VITS's `w_ceil`).
    pub durations: Vec<u32>,
    /// Decoder input `[T, C]`, evaluated.
    pub z: Array,
}

impl Vits {
    /// Builds the model from `weights`, taking every weight it uses; any
    /// weight left over is an error (it would mean a layer was not built).
    pub fn load(mut ws: Weights) -> Result<Self> {
        let config = VitsConfig::from_weights(&ws)?;
        let model = Self {
            enc_p: text_encoder::TextEncoder::load(&mut ws, &config)?,
            dp: duration::DurationPredictor::load(&mut ws, &config)?,
            flow: flow::Flow::load(&mut ws, &config)?,
            dec: decoder::Decoder::load(&mut ws, &config)?,
            emb_g: if ws.contains("emb_g.weight") { Some(array(&ws.take("emb_g.weight")?)) } else { None },
            config,
        };
        let unused: Vec<&str> = ws.names().into_iter().filter(|n| !n.starts_with("dp.post_") && !n.starts_with("enc_q.")).collect();
        if !unused.is_empty() {
            return Err(bad(format!("weights not used by any layer: {}", unused.join(", "))));
        }
        Ok(model)
    }

    /// Speaker embedding `[1, G]`, or None for single-speaker voices.
    pub fn speaker(&self, id: u32) -> Result<Option<Array>> {
        match &self.emb_g {
            None => Ok(None),
            Some(emb) => {
                let idx = Array::from_slice(&[id as i32], &[1]);
                Ok(Some(emb.take_axis(&idx, 0)?))
            }
        }
    }

    /// Text encoder, durations, alignment expansion, prior sampling and the
    /// reverse flow: everything before the decoder. Evaluates `z`; polls
    /// `cancelled` between stages.
    pub fn latent(&self, ids: &[i64], g: Option<&Array>, sampling: Sampling, cancelled: Cancelled) -> Result<Latent> {
        let prior = self.prior(ids, g, sampling, cancelled)?;
        let z = self.flow.reverse(&prior.z_p, g, cancelled)?;
        Ok(Latent { durations: prior.durations, z })
    }

    /// Text encoder, durations, alignment expansion and prior sampling.
    pub fn prior(&self, ids: &[i64], g: Option<&Array>, sampling: Sampling, cancelled: Cancelled) -> Result<Prior> {
        let Sampling { length_scale, noise_scale, noise_w, seed } = sampling;
        let key = mlx_rs::random::key(seed)?;
        let (k_dur, k_prior) = mlx_rs::random::split(&key, 2)?;
        let enc = self.enc_p.forward_checked(ids, cancelled)?; // evaluated
        check(cancelled)?;
        // What each frame's prior is sampled from, per phoneme, taken per
        // frame in one gather below: [m_p | noise_scale * exp(logs_p)]
        // [L, 2C] (the exp over phonemes, not frames), or m_p alone when
        // there is no noise.
        let c = self.config.inter_channels as i32;
        let noisy = noise_scale != 0.0;
        let stats = if noisy {
            mlx_rs::ops::concatenate(&[enc.m_p.clone(), ops::scale(&math::exp(&enc.logs_p)?, noise_scale)?], 1)?
        } else {
            enc.m_p.clone()
        };

        let logw = self.dp.forward(&enc.hidden, g, noise_w, &k_dur)?; // [L, 1]
        let w = ops::scale(&mlx_rs::ops::exp(&logw)?, length_scale)?;
        let w_ceil = mlx_rs::ops::ceil(&w)?;
        let durations: Vec<u32> = ops::to_vec(&w_ceil)?.iter().map(|&v| v.clamp(0.0, MAX_FRAMES as f32) as u32).collect();
        let total: u64 = durations.iter().map(|&d| d as u64).sum();
        if total > MAX_FRAMES as u64 {
            return Err(EngineError::InvalidInput(format!(
                "one sentence would last {total} frames, more than the {MAX_FRAMES} allowed: split the text or lower length_scale"
            )));
        }
        check(cancelled)?;

        // Alignment expansion: frame t takes phoneme i's prior when t falls in i's span.
        let index: Vec<i32> = durations.iter().enumerate().flat_map(|(i, &d)| std::iter::repeat_n(i as i32, d as usize)).collect();
        let z_p = if index.is_empty() {
            mlx_rs::ops::zeros::<f32>(&[1, c])?
        } else {
            let t = index.len() as i32;
            let framed = stats.take_axis(Array::from_slice(&index, &[t]), 0)?; // [T, 2C] or [T, C]
            if noisy {
                let noise = mlx_rs::random::normal::<f32>(&[t, c][..], None, None, &k_prior)?;
                mlx_rs::ops::add(&ops::cols(&framed, 0, c)?, &mlx_rs::ops::multiply(&noise, &ops::cols(&framed, c, 2 * c)?)?)?
            } else {
                framed
            }
        };
        z_p.eval()?;
        Ok(Prior { durations, z_p })
    }

    /// `z` for the first `frames` frames only, from `z_p` and the flow's
    /// receptive field beyond them: equal to the start of the whole reverse
    /// flow, at a fraction of its cost (a streamed sentence's first chunk).
    pub fn flow_head(&self, z_p: &Array, frames: usize, g: Option<&Array>, cancelled: Cancelled) -> Result<Array> {
        let t = z_p.shape()[0] as usize;
        let hi = (frames + self.flow.radius()).min(t);
        let z = self.flow.reverse(&ops::rows(z_p, 0, hi as i32)?, g, cancelled)?;
        ops::rows(&z, 0, frames.min(t) as i32)
    }

    /// Whether [`Vits::flow_head`] of `frames` frames of a `t`-frame `z_p`
    /// would run the flow over all of it (its receptive field reaches the
    /// last frame): then the whole reverse flow costs the same.
    pub fn flow_head_is_whole(&self, t: usize, frames: usize) -> bool {
        frames + self.flow.radius() >= t
    }

    /// Decodes frames `[start, end)` of `z`, reading `context` extra frames
    /// on each side where they exist; returns exactly `(end - start) * hop`
    /// samples, equal (up to rounding) to that span of a whole decode.
    pub fn decode_window(&self, z: &Array, start: usize, end: usize, g: Option<&Array>, cancelled: Cancelled) -> Result<Array> {
        let t = z.shape()[0] as usize;
        let ctx = self.dec.context_frames();
        let (lo, hi) = (start.saturating_sub(ctx), (end + ctx).min(t));
        let audio = self.dec.forward_checked(&ops::rows(z, lo as i32, hi as i32)?, g, cancelled)?;
        let hop = self.dec.hop();
        let from = ((start - lo) * hop) as i32;
        Ok(audio.try_index_range(from, from + ((end - start) * hop) as i32)?)
    }
}

trait RangeIndex {
    fn try_index_range(&self, start: i32, end: i32) -> std::result::Result<Array, mlx_rs::error::Exception>;
}

impl RangeIndex for Array {
    fn try_index_range(&self, start: i32, end: i32) -> std::result::Result<Array, mlx_rs::error::Exception> {
        use mlx_rs::ops::indexing::TryIndexOp;
        self.try_index(start..end)
    }
}

#[cfg(test)]
mod tests {
    //! A tiny multi-speaker model with ResBlock1 (the "high" layout) and
    //! random weights, built in memory: the architecture is inferred, every
    //! conditioning path runs, and output lengths follow the durations.
    use super::*;
    use crate::engine::weights::{ConvAttrs, Tensor};

    struct Builder {
        tensors: Vec<(String, Tensor)>,
        attrs: Vec<(String, ConvAttrs)>,
        seed: u32,
    }

    impl Builder {
        fn t(&mut self, name: &str, shape: &[usize]) {
            let n: usize = shape.iter().product();
            let data = (0..n)
                .map(|_| {
                    self.seed = self.seed.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
                    ((self.seed >> 9) as f32 / (1u32 << 23) as f32 - 0.5) * 0.2
                })
                .collect();
            self.tensors.push((name.to_string(), Tensor { shape: shape.to_vec(), data }));
        }
        fn conv(&mut self, m: &str, c_out: usize, c_in: usize, k: usize, dilation: usize, bias: bool) {
            self.t(&format!("{m}.weight"), &[c_out, c_in, k]);
            if bias {
                self.t(&format!("{m}.bias"), &[c_out]);
            }
            let p = dilation * (k - 1) / 2;
            self.attrs.push((m.to_string(), ConvAttrs { dilation, pads: (p, p), stride: 1, group: 1 }));
        }
        fn norm(&mut self, m: &str, c: usize) {
            self.t(&format!("{m}.gamma"), &[c]);
            self.t(&format!("{m}.beta"), &[c]);
        }
        fn dds(&mut self, m: &str, c: usize) {
            for i in 0..3 {
                let d = 3usize.pow(i as u32);
                self.t(&format!("{m}.convs_sep.{i}.weight"), &[c, 1, 3]);
                self.t(&format!("{m}.convs_sep.{i}.bias"), &[c]);
                self.attrs.push((format!("{m}.convs_sep.{i}"), ConvAttrs { dilation: d, pads: (d, d), stride: 1, group: c }));
                self.conv(&format!("{m}.convs_1x1.{i}"), c, c, 1, 1, true);
                self.norm(&format!("{m}.norms_1.{i}"), c);
                self.norm(&format!("{m}.norms_2.{i}"), c);
            }
        }
    }

    fn tiny_voice(speakers: usize) -> Weights {
        let (h, inter, gin, vocab) = (8, 4, 6, 10);
        let mut b = Builder { tensors: vec![], attrs: vec![], seed: 7 };
        b.t("enc_p.emb.weight", &[vocab, h]);
        let a = "enc_p.encoder.attn_layers.0";
        for c in ["conv_q", "conv_k", "conv_v", "conv_o"] {
            b.conv(&format!("{a}.{c}"), h, h, 1, 1, true);
        }
        b.t(&format!("{a}.emb_rel_k"), &[1, 3, 4]);
        b.t(&format!("{a}.emb_rel_v"), &[1, 3, 4]);
        b.norm("enc_p.encoder.norm_layers_1.0", h);
        b.norm("enc_p.encoder.norm_layers_2.0", h);
        b.conv("enc_p.encoder.ffn_layers.0.conv_1", 16, h, 3, 1, true);
        b.conv("enc_p.encoder.ffn_layers.0.conv_2", h, 16, 3, 1, true);
        b.conv("enc_p.proj", 2 * inter, h, 1, 1, true);
        // Stochastic duration predictor (reverse path only).
        b.conv("dp.pre", h, h, 1, 1, true);
        b.conv("dp.proj", h, h, 1, 1, true);
        b.conv("dp.cond", h, gin, 1, 1, true);
        b.dds("dp.convs", h);
        b.t("dp.flows.0.m", &[2, 1]);
        b.t("dp.flows.0.logs", &[2, 1]);
        for i in [3, 5, 7] {
            b.conv(&format!("dp.flows.{i}.pre"), h, 1, 1, 1, true);
            b.dds(&format!("dp.flows.{i}.convs"), h);
            b.conv(&format!("dp.flows.{i}.proj"), 29, h, 1, 1, true);
        }
        for i in [0, 2, 4, 6] {
            let f = format!("flow.flows.{i}");
            b.conv(&format!("{f}.pre"), h, inter / 2, 1, 1, true);
            b.conv(&format!("{f}.enc.cond_layer"), 2 * h * 2, gin, 1, 1, true);
            for j in 0..2 {
                b.conv(&format!("{f}.enc.in_layers.{j}"), 2 * h, h, 5, 1, true);
                b.conv(&format!("{f}.enc.res_skip_layers.{j}"), if j == 0 { 2 * h } else { h }, h, 1, 1, true);
            }
            b.conv(&format!("{f}.post"), inter / 2, h, 1, 1, true);
        }
        b.conv("dec.conv_pre", 16, inter, 7, 1, true);
        b.conv("dec.cond", 16, gin, 1, 1, true);
        for (i, (c_in, c_out)) in [(16, 8), (8, 4)].into_iter().enumerate() {
            b.t(&format!("dec.ups.{i}.weight"), &[c_in, c_out, 4]);
            b.t(&format!("dec.ups.{i}.bias"), &[c_out]);
            b.attrs.push((format!("dec.ups.{i}"), ConvAttrs { dilation: 1, pads: (1, 1), stride: 2, group: 1 }));
            for (j, k) in [3, 5].into_iter().enumerate() {
                let r = format!("dec.resblocks.{}", i * 2 + j);
                for (n, d) in [1, 3, 5].into_iter().enumerate() {
                    b.conv(&format!("{r}.convs1.{n}"), c_out, c_out, k, d, true);
                    b.conv(&format!("{r}.convs2.{n}"), c_out, c_out, k, 1, true);
                }
            }
        }
        b.conv("dec.conv_post", 1, 4, 7, 1, false);
        if speakers > 1 {
            b.t("emb_g.weight", &[speakers, gin]);
        }
        let mut ws = Weights::from_tensors(b.tensors);
        for (m, a) in b.attrs {
            ws.set_conv_attrs(&m, a);
        }
        ws
    }

    #[test]
    fn architecture_is_inferred_from_the_weights() {
        let _mlx = crate::mlx_test_lock();
        let cfg = VitsConfig::from_weights(&tiny_voice(3)).unwrap();
        assert_eq!((cfg.hidden_channels, cfg.n_heads, cfg.window_size, cfg.n_layers), (8, 2, 1, 1));
        assert_eq!((cfg.inter_channels, cfg.filter_channels, cfg.n_vocab), (4, 16, 10));
        assert!(cfg.stochastic_duration);
        assert_eq!((cfg.dp_n_flows, cfg.flow_n_flows, cfg.flow_n_layers), (4, 4, 2));
        assert_eq!((cfg.upsample_rates.clone(), cfg.resblocks_per_stage), (vec![2, 2], 2));
        assert_eq!((cfg.n_speakers, cfg.gin_channels), (3, 6));
    }

    #[test]
    fn a_multi_speaker_high_layout_model_runs_and_speakers_differ() {
        let _mlx = crate::mlx_test_lock();
        let model = Vits::load(tiny_voice(3)).unwrap();
        let ids = [1i64, 0, 5, 0, 7, 0, 2];
        let mut outs = vec![];
        for speaker in [0, 2] {
            let g = model.speaker(speaker).unwrap();
            let lat = model.latent(&ids, g.as_ref(), Sampling::noiseless(1.0), &|| false).unwrap();
            let frames: u32 = lat.durations.iter().sum();
            assert_eq!(lat.z.shape()[0] as u32, frames.max(1));
            let audio = ops::to_vec(&model.dec.forward(&lat.z, g.as_ref()).unwrap()).unwrap();
            assert_eq!(audio.len(), lat.z.shape()[0] as usize * model.dec.hop());
            assert!(audio.iter().all(|v| v.is_finite() && v.abs() <= 1.0));
            outs.push(audio);
        }
        assert!(outs[0] != outs[1] || outs[0].len() != outs[1].len(), "speaker embedding has no effect");
    }

    /// HiFi-GAN as written in the paper, whole arrays and same padding:
    /// the reference for the decoder's tiled, seeded, scale-folded form.
    fn plain_decoder(ws: &mut Weights, z: &Array, g: &Array) -> Array {
        use super::math::leaky_relu;
        use super::ops::{Conv1d, ConvTranspose1d};
        let conv = |ws: &mut Weights, m: &str| Conv1d::load(ws, m).unwrap();
        let mut x = mlx_rs::ops::add(conv(ws, "dec.conv_pre").forward(z).unwrap(), conv(ws, "dec.cond").forward(g).unwrap()).unwrap();
        for i in 0..2 {
            x = ConvTranspose1d::load(ws, &format!("dec.ups.{i}")).unwrap().forward(&leaky_relu(&x, 0.1).unwrap()).unwrap();
            let mut sum: Option<Array> = None;
            for j in 0..2 {
                let mut y = x.clone();
                for n in 0..3 {
                    let r = format!("dec.resblocks.{}", i * 2 + j);
                    let h = conv(ws, &format!("{r}.convs1.{n}")).forward(&leaky_relu(&y, 0.1).unwrap()).unwrap();
                    let h = conv(ws, &format!("{r}.convs2.{n}")).forward(&leaky_relu(&h, 0.1).unwrap()).unwrap();
                    y = mlx_rs::ops::add(&y, &h).unwrap();
                }
                sum = Some(match sum {
                    Some(s) => mlx_rs::ops::add(&s, &y).unwrap(),
                    None => y,
                });
            }
            x = mlx_rs::ops::multiply(sum.unwrap(), Array::from_f32(0.5)).unwrap();
        }
        let post = conv(ws, "dec.conv_post").forward(&leaky_relu(&x, 0.01).unwrap()).unwrap();
        mlx_rs::ops::tanh(&post).unwrap().reshape(&[-1]).unwrap()
    }

    /// VITS's reverse flow as written: flip, split, `x1 -= post(WN(pre(x0)))`
    /// with the gate tanh(a) * sigmoid(b), res/skip split per layer: the
    /// reference for the flow's folded flips and widened WN state.
    fn plain_flow(ws: &mut Weights, flows: usize, z: &Array, g: &Array) -> Array {
        use super::ops::{cols, flip_channels, Conv1d};
        let conv = |ws: &mut Weights, m: &str| Conv1d::load(ws, m).unwrap();
        let mut x = z.clone();
        for i in (0..flows).rev() {
            let p = format!("flow.flows.{}", 2 * i);
            x = flip_channels(&x).unwrap();
            let half = x.shape()[1] / 2;
            let (x0, x1) = (cols(&x, 0, half).unwrap(), cols(&x, half, 2 * half).unwrap());
            let mut h = conv(ws, &format!("{p}.pre")).forward(&x0).unwrap();
            let gc = conv(ws, &format!("{p}.enc.cond_layer")).forward(g).unwrap();
            let hid = h.shape()[1];
            let mut out: Option<Array> = None;
            for j in 0..2 {
                let x_in = mlx_rs::ops::add(
                    conv(ws, &format!("{p}.enc.in_layers.{j}")).forward(&h).unwrap(),
                    cols(&gc, 2 * hid * j, 2 * hid * (j + 1)).unwrap(),
                )
                .unwrap();
                let acts = mlx_rs::ops::multiply(
                    mlx_rs::ops::tanh(cols(&x_in, 0, hid).unwrap()).unwrap(),
                    mlx_rs::ops::sigmoid(cols(&x_in, hid, 2 * hid).unwrap()).unwrap(),
                )
                .unwrap();
                let rs = conv(ws, &format!("{p}.enc.res_skip_layers.{j}")).forward(&acts).unwrap();
                let skip = if j == 0 {
                    h = mlx_rs::ops::add(&h, cols(&rs, 0, hid).unwrap()).unwrap();
                    cols(&rs, hid, 2 * hid).unwrap()
                } else {
                    rs
                };
                out = Some(match out {
                    Some(o) => mlx_rs::ops::add(&o, &skip).unwrap(),
                    None => skip,
                });
            }
            let m = conv(ws, &format!("{p}.post")).forward(&out.unwrap()).unwrap();
            x = mlx_rs::ops::concatenate(&[x0, mlx_rs::ops::subtract(&x1, &m).unwrap()], 1).unwrap();
        }
        x
    }

    #[test]
    fn flow_equals_the_plain_definition_with_even_and_odd_flow_counts() {
        let _mlx = crate::mlx_test_lock();
        let t: i32 = 23;
        let zs: Vec<f32> = (0..t * 4).map(|i| ((i * 29 % 17) as f32 - 8.0) / 5.0).collect();
        let z = Array::from_slice(&zs, &[t, 4]);
        for flows in [4, 3] {
            let mut cfg = VitsConfig::from_weights(&tiny_voice(3)).unwrap();
            cfg.flow_n_flows = flows;
            let flow = flow::Flow::load(&mut tiny_voice(3), &cfg).unwrap();
            let g = Vits::load(tiny_voice(3)).unwrap().speaker(2).unwrap().unwrap();
            let want = ops::to_vec(&plain_flow(&mut tiny_voice(3), flows, &z, &g)).unwrap();
            let got = ops::to_vec(&flow.reverse(&z, Some(&g), &|| false).unwrap()).unwrap();
            let d = got.iter().zip(&want).map(|(a, b)| (a - b).abs()).fold(0.0, f32::max);
            assert!(d < 1e-5, "{flows} flows: max |difference| {d}");
        }
    }

    #[test]
    fn a_flow_longer_than_its_windows_equals_the_plain_definition() {
        let _mlx = crate::mlx_test_lock();
        let t: i32 = 9000; // three windows on one lane, three on two
        let zs: Vec<f32> = (0..t * 4).map(|i| ((i * 29 % 17) as f32 - 8.0) / 5.0).collect();
        let z = Array::from_slice(&zs, &[t, 4]);
        let model = Vits::load(tiny_voice(3)).unwrap();
        let g = model.speaker(2).unwrap().unwrap();
        let want = ops::to_vec(&plain_flow(&mut tiny_voice(3), 4, &z, &g)).unwrap();
        for lanes in [1, 2] {
            crate::engine::cpu::set_threads(lanes);
            let got = ops::to_vec(&model.flow.reverse(&z, Some(&g), &|| false).unwrap()).unwrap();
            assert_eq!(got.len(), want.len());
            let d = got.iter().zip(&want).map(|(a, b)| (a - b).abs()).fold(0.0, f32::max);
            assert!(d < 1e-5, "{lanes} lane(s): max |difference| {d}");
        }
        crate::engine::cpu::set_threads(1);
    }

    #[test]
    fn decoder_equals_the_plain_definition_on_one_and_two_lanes() {
        let _mlx = crate::mlx_test_lock();
        let model = Vits::load(tiny_voice(3)).unwrap();
        let g = model.speaker(1).unwrap().unwrap();
        let t: i32 = 61;
        let zs: Vec<f32> = (0..t * 4).map(|i| ((i * 37 % 23) as f32 - 11.0) / 7.0).collect();
        let z = Array::from_slice(&zs, &[t, 4]);
        let want = ops::to_vec(&plain_decoder(&mut tiny_voice(3), &z, &g)).unwrap();
        for lanes in [1, 2] {
            crate::engine::cpu::set_threads(lanes);
            let got = ops::to_vec(&model.dec.forward(&z, Some(&g)).unwrap()).unwrap();
            assert_eq!(got.len(), want.len());
            let d = got.iter().zip(&want).map(|(a, b)| (a - b).abs()).fold(0.0, f32::max);
            assert!(d < 1e-5, "{lanes} lane(s): max |difference| {d}");
        }
        crate::engine::cpu::set_threads(1);
    }

    /// Malformed layers in a voice file panicked a worker (at load, or at
    /// its first long sentence); they are load errors that say why.
    #[test]
    fn malformed_layers_are_load_errors_not_panics() {
        let _mlx = crate::mlx_test_lock();
        let edited = |drop: &dyn Fn(&str) -> bool, add: Option<(&str, Tensor)>| {
            let base = tiny_voice(1);
            let mut all: Vec<(String, Tensor)> = base.iter().filter(|(k, _)| !drop(k)).map(|(k, t)| (k.to_string(), t.clone())).collect();
            all.extend(add.map(|(k, t)| (k.to_string(), t)));
            let mut ws = Weights::from_tensors(all);
            for (m, a) in base.conv_attrs_iter() {
                ws.set_conv_attrs(m, a);
            }
            Vits::load(ws).err().map(|e| e.to_string()).unwrap_or_default()
        };
        let q = "enc_p.encoder.attn_layers.0.conv_q.weight";
        let err = edited(&|k| k == q, Some((q, Tensor { shape: vec![8, 8, 3], data: vec![0.0; 192] })));
        assert!(err.contains("1x1 convolution"), "{err}");
        let up = "dec.ups.0.weight";
        let err = edited(&|k| k == up, Some((up, Tensor { shape: vec![16, 8, 0], data: vec![] })));
        assert!(err.contains("no empty dimension"), "{err}");
        let err = edited(&|k| k.starts_with("flow.flows.0.enc.in_layers."), None);
        assert!(err.contains("flow.flows.0.enc.in_layers.0.weight"), "{err}");
    }

    #[test]
    fn missing_and_unused_weights_are_named() {
        let _mlx = crate::mlx_test_lock();
        let mut ws = tiny_voice(1);
        let _ = ws.take("dec.resblocks.3.convs2.2.weight").unwrap();
        let err = Vits::load(ws).err().unwrap().to_string();
        assert!(err.contains("dec.resblocks.3.convs2.2.weight"), "{err}");

        let mut extra = tiny_voice(1).iter().map(|(k, t)| (k.to_string(), t.clone())).collect::<Vec<_>>();
        extra.push(("dec.mystery.weight".into(), Tensor { shape: vec![1], data: vec![0.0] }));
        let mut ws = Weights::from_tensors(extra);
        for (m, a) in tiny_voice(1).conv_attrs_iter() {
            ws.set_conv_attrs(m, a);
        }
        let err = Vits::load(ws).err().unwrap().to_string();
        assert!(err.contains("dec.mystery.weight"), "{err}");
    }
}
