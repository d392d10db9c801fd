//! Named model weights from a Piper voice's `.onnx` file: the container the
//! model's layers take their weights from, by `state_dict` name.
//!
//! Turns the ONNX initializers into plain `f32` tensors named like the PyTorch
//! `state_dict` of Piper's VITS model, so the model code can ask for
//! `dec.ups.0.weight` without knowing how the exporter mangled names
//! ([`onnx_names`]). A converted copy is cached as safetensors so later loads
//! skip the protobuf ([`cache`]).
//!
//! Owns the container and the order of loading (cache, else ONNX). Plain
//! Rust data only: it never touches MLX, never panics on a bad file, and
//! treats a cache it cannot read or write as a miss, not an error.
mod cache;
mod onnx_names;

pub use cache::default_cache_dir;

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use super::EngineError;

/// One weight: row-major `f32` data of the given shape.
#[derive(Clone, PartialEq)]
pub struct Tensor {
    pub shape: Vec<usize>,
    pub data: Vec<f32>,
}

impl Tensor {
    /// Number of elements (the product of the shape; 1 for a scalar).
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }
}

impl fmt::Debug for Tensor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Tensor {{ shape: {:?}, {} values }}", self.shape, self.data.len())
    }
}

/// A 1-D convolution's hyper-parameters, read from its graph node: the
/// weights alone do not say the dilation, padding or stride.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ConvAttrs {
    pub dilation: usize,
    /// Zero padding (left, right).
    pub pads: (usize, usize),
    pub stride: usize,
    pub group: usize,
}

impl ConvAttrs {
    /// Stride 1, no dilation, "same" padding for an odd kernel.
    pub fn same(kernel: usize) -> Self {
        Self { dilation: 1, pads: ((kernel - 1) / 2, kernel / 2), stride: 1, group: 1 }
    }
}

/// All weights of one voice, by `state_dict` name.
#[derive(Clone, PartialEq)]
pub struct Weights {
    tensors: BTreeMap<String, Tensor>,
    /// Convolution attributes by module name (`dec.resblocks.0.convs.1`).
    conv_attrs: BTreeMap<String, ConvAttrs>,
    /// The `.onnx` path, for error messages.
    source: String,
}

impl fmt::Debug for Weights {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Weights {{ source: {:?}, {} tensors }}", self.source, self.tensors.len())
    }
}

/// What [`Weights::load_with_cache_dir`] did with the cache.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CacheStatus {
    /// No cache directory, or the voice file's identity could not be read.
    Disabled,
    /// Read from this cache file.
    Hit(PathBuf),
    /// Parsed the ONNX file; `written` says whether the cache file was stored.
    Miss { file: PathBuf, written: bool },
}

impl Weights {
    /// Parse `NAME.onnx` into weights named like PyTorch's `state_dict`, going
    /// through the cache in [`cache::default_cache_dir`] (a cache that cannot be used
    /// is silently bypassed).
    pub fn load(onnx_path: &Path) -> Result<Weights, EngineError> {
        Self::load_with_cache_dir(onnx_path, cache::default_cache_dir().as_deref()).map(|(w, _)| w)
    }

    /// [`Weights::load`] with an explicit cache directory (`None`: no cache),
    /// also saying what happened with the cache.
    pub fn load_with_cache_dir(
        onnx_path: &Path,
        cache_dir: Option<&Path>,
    ) -> Result<(Weights, CacheStatus), EngineError> {
        let Some(entry) = cache_dir.and_then(|dir| cache::CacheEntry::for_voice(onnx_path, dir)) else {
            return Ok((Self::from_onnx(onnx_path)?, CacheStatus::Disabled));
        };
        if let Some((tensors, conv_attrs)) = entry.read() {
            let w = Weights { tensors, conv_attrs, source: onnx_path.display().to_string() };
            return Ok((w, CacheStatus::Hit(entry.file)));
        }
        let w = Self::from_onnx(onnx_path)?;
        let written = entry.write(&w.tensors, &w.conv_attrs);
        Ok((w, CacheStatus::Miss { file: entry.file, written }))
    }

    /// Parse `NAME.onnx` without the cache.
    pub fn from_onnx(onnx_path: &Path) -> Result<Weights, EngineError> {
        let (tensors, conv_attrs) = onnx_names::read(onnx_path)?;
        Ok(Weights { tensors, conv_attrs, source: onnx_path.display().to_string() })
    }

    /// Weights from tensors built in memory (tests), with no graph attributes.
    pub fn from_tensors(tensors: impl IntoIterator<Item = (String, Tensor)>) -> Weights {
        Weights { tensors: tensors.into_iter().collect(), conv_attrs: BTreeMap::new(), source: "<memory>".into() }
    }

    /// The graph attributes of the convolution `module` (`dec.ups.0`).
    pub fn conv_attrs(&self, module: &str) -> Option<ConvAttrs> {
        self.conv_attrs.get(module).copied()
    }

    /// Every recorded convolution's attributes, by module.
    pub fn conv_attrs_iter(&self) -> impl Iterator<Item = (&str, ConvAttrs)> {
        self.conv_attrs.iter().map(|(k, v)| (k.as_str(), *v))
    }

    /// Records a convolution's attributes (tests, hand-built weights).
    pub fn set_conv_attrs(&mut self, module: &str, attrs: ConvAttrs) {
        self.conv_attrs.insert(module.to_string(), attrs);
    }

    pub fn contains(&self, name: &str) -> bool {
        self.tensors.contains_key(name)
    }

    pub fn shape(&self, name: &str) -> Option<&[usize]> {
        self.tensors.get(name).map(|t| t.shape.as_slice())
    }

    pub fn get(&self, name: &str) -> Option<&Tensor> {
        self.tensors.get(name)
    }

    /// Remove and return a weight; a missing one is a `VoiceLoad` error
    /// naming it: `missing weight 'dec.ups.0.weight'`.
    pub fn take(&mut self, name: &str) -> Result<Tensor, EngineError> {
        self.tensors.remove(name).ok_or_else(|| EngineError::VoiceLoad {
            path: self.source.clone(),
            reason: format!("missing weight '{name}'"),
        })
    }

    /// Names starting with `prefix`, sorted, e.g. `names_with_prefix("dec.resblocks.")`.
    pub fn names_with_prefix(&self, prefix: &str) -> Vec<&str> {
        self.tensors
            .range::<str, _>((std::ops::Bound::Included(prefix), std::ops::Bound::Unbounded))
            .take_while(|(k, _)| k.starts_with(prefix))
            .map(|(k, _)| k.as_str())
            .collect()
    }

    /// All names, sorted.
    pub fn names(&self) -> Vec<&str> {
        self.tensors.keys().map(String::as_str).collect()
    }

    /// All weights, sorted by name.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &Tensor)> {
        self.tensors.iter().map(|(k, v)| (k.as_str(), v))
    }

    pub fn len(&self) -> usize {
        self.tensors.len()
    }

    pub fn is_empty(&self) -> bool {
        self.tensors.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    fn voice() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("voices/en_US-joe-medium.onnx")
    }

    fn reason(e: EngineError) -> String {
        match e {
            EngineError::VoiceLoad { reason, .. } => reason,
            other => panic!("expected VoiceLoad, got {other:?}"),
        }
    }

    #[test]
    fn bundled_voice_loads_with_state_dict_names() {
        let w = Weights::from_onnx(&voice()).unwrap();
        // 366 float initializers - 17 graph scalars; `sid` renamed,
        // 32 `onnx::Conv_*` named by their consumer, Exp_output_0 -> logs.
        assert_eq!(w.len(), 350);
        assert_eq!(w.shape("enc_p.emb.weight"), Some(&[256, 192][..]));
        assert_eq!(w.shape("flow.flows.0.enc.in_layers.0.weight"), Some(&[384, 192, 5][..]));
        assert_eq!(w.shape("flow.flows.6.enc.res_skip_layers.3.weight"), Some(&[192, 192, 1][..]));
        assert_eq!(w.shape("dp.flows.0.logs"), Some(&[2, 1][..]));
        assert_eq!(w.shape("dp.flows.0.m"), Some(&[2, 1][..]));
        assert_eq!(w.shape("dec.conv_post.weight"), Some(&[1, 32, 7][..]));
        assert_eq!(w.shape("dec.ups.0.weight"), Some(&[256, 128, 16][..]));
        assert_eq!(w.shape("enc_p.encoder.attn_layers.0.emb_rel_k"), Some(&[1, 9, 96][..]));
        for n in w.names() {
            assert!(!n.starts_with("onnx::") && !n.starts_with('/') && n != "sid", "{n}");
        }
        assert!(!w.contains("emb_g.weight"), "single-speaker voice");
        // exp(-logs) in the file was [0.9785079, 1.051145].
        let logs = &w.get("dp.flows.0.logs").unwrap().data;
        assert!((logs[0] - -(0.9785079f32.ln())).abs() < 1e-6, "{logs:?}");
        assert!((logs[1] - -(1.051145f32.ln())).abs() < 1e-6, "{logs:?}");
        for (name, t) in w.iter() {
            assert_eq!(t.data.len(), t.numel(), "{name}");
            assert!(t.data.iter().all(|v| v.is_finite()), "{name}");
        }
        let res = w.names_with_prefix("dec.resblocks.");
        assert!(!res.is_empty() && res.iter().all(|n| n.starts_with("dec.resblocks.")));
        assert!(res.windows(2).all(|p| p[0] < p[1]));
        // This voice uses ResBlock2 (`convs.N`): 9 blocks x 2 convs x (weight, bias).
        assert_eq!(res.len(), 36);
        assert_eq!(w.names_with_prefix("dec.resblocks.0.convs.0."), vec!["dec.resblocks.0.convs.0.bias", "dec.resblocks.0.convs.0.weight"]);
        assert!(w.names_with_prefix("nothing.").is_empty());
    }

    #[test]
    fn take_removes_and_names_missing_weights() {
        let mut w = Weights::from_onnx(&voice()).unwrap();
        let n = w.len();
        let t = w.take("dec.conv_post.weight").unwrap();
        assert_eq!(t.shape, vec![1, 32, 7]);
        assert_eq!(t.data.len(), 224);
        assert_eq!(w.len(), n - 1);
        assert!(!w.contains("dec.conv_post.weight"));
        let r = reason(w.take("dec.conv_post.weight").unwrap_err());
        assert_eq!(r, "missing weight 'dec.conv_post.weight'");
    }

    #[test]
    fn cache_round_trip_gives_identical_tensors() {
        let dir = tempfile::tempdir().unwrap();
        let t0 = Instant::now();
        let (cold, s1) = Weights::load_with_cache_dir(&voice(), Some(dir.path())).unwrap();
        let cold_t = t0.elapsed();
        let file = match s1 {
            CacheStatus::Miss { file, written: true } => file,
            other => panic!("expected a written miss, got {other:?}"),
        };
        assert!(file.starts_with(dir.path()) && file.exists());
        let t1 = Instant::now();
        let (warm, s2) = Weights::load_with_cache_dir(&voice(), Some(dir.path())).unwrap();
        let warm_t = t1.elapsed();
        assert_eq!(s2, CacheStatus::Hit(file.clone()));
        assert_eq!(cold.names(), warm.names());
        for ((n1, a), (_, b)) in cold.iter().zip(warm.iter()) {
            assert_eq!(a.shape, b.shape, "{n1}");
            assert!(a.data.iter().zip(&b.data).all(|(x, y)| x.to_bits() == y.to_bits()), "{n1}");
        }
        eprintln!("weights load: parse+write {cold_t:?}, cached {warm_t:?}");
        // No temp files left behind.
        let entries: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
        assert_eq!(entries.len(), 1);

        // A damaged cache file is a miss (and gets rewritten), not an error.
        let bytes = std::fs::read(&file).unwrap();
        std::fs::write(&file, &bytes[..bytes.len() / 2]).unwrap();
        let (again, s3) = Weights::load_with_cache_dir(&voice(), Some(dir.path())).unwrap();
        assert_eq!(s3, CacheStatus::Miss { file: file.clone(), written: true });
        assert_eq!(again.len(), cold.len());
        std::fs::write(&file, b"garbage").unwrap();
        assert!(matches!(
            Weights::load_with_cache_dir(&voice(), Some(dir.path())).unwrap().1,
            CacheStatus::Miss { .. }
        ));
    }

    #[test]
    fn unusable_cache_dir_falls_back_to_parsing() {
        let dir = tempfile::tempdir().unwrap();
        let blocker = dir.path().join("a-file");
        std::fs::write(&blocker, b"x").unwrap();
        let (w, s) = Weights::load_with_cache_dir(&voice(), Some(&blocker.join("sub"))).unwrap();
        assert!(matches!(s, CacheStatus::Miss { written: false, .. }), "{s:?}");
        assert_eq!(w.len(), 350);
    }

    #[test]
    fn missing_truncated_and_garbage_files_are_load_errors() {
        let dir = tempfile::tempdir().unwrap();
        let cache = dir.path().join("cache");
        let missing = dir.path().join("nope.onnx");
        let r = reason(Weights::load_with_cache_dir(&missing, Some(&cache)).unwrap_err());
        assert!(r.contains("does not exist"), "{r}");
        assert!(reason(Weights::from_onnx(&missing).unwrap_err()).contains("does not exist"));

        let bytes = std::fs::read(voice()).unwrap();
        let truncated = dir.path().join("truncated.onnx");
        std::fs::write(&truncated, &bytes[..1 << 20]).unwrap();
        let r = reason(Weights::load_with_cache_dir(&truncated, Some(&cache)).unwrap_err());
        assert!(r.contains("truncated or corrupt"), "{r}");

        let garbage = dir.path().join("garbage.onnx");
        std::fs::write(&garbage, "not a model at all, just some text\n".repeat(100)).unwrap();
        let r = reason(Weights::load_with_cache_dir(&garbage, Some(&cache)).unwrap_err());
        assert!(r.contains("not a valid ONNX model"), "{r}");
        // Nothing was cached for the failures.
        assert!(!cache.exists() || std::fs::read_dir(&cache).unwrap().next().is_none());
    }

    /// Timings on the bundled voice: `cargo test --release --lib load_timing -- --ignored --nocapture`.
    #[test]
    #[ignore = "a measurement, not a check: run by hand with --ignored --nocapture"]
    fn load_timing() {
        let dir = tempfile::tempdir().unwrap();
        let best = |f: &dyn Fn() -> Weights| {
            (0..5)
                .map(|_| {
                    let t = Instant::now();
                    let w = f();
                    let e = t.elapsed();
                    drop(w);
                    e
                })
                .min()
                .unwrap()
        };
        let read = best(&|| Weights::from_onnx(&voice()).unwrap());
        let t = Instant::now();
        let (_, s) = Weights::load_with_cache_dir(&voice(), Some(dir.path())).unwrap();
        let miss = t.elapsed();
        assert!(matches!(s, CacheStatus::Miss { written: true, .. }));
        let hit = best(&|| Weights::load_with_cache_dir(&voice(), Some(dir.path())).unwrap().0);
        eprintln!("parse only {read:?}; parse + cache write {miss:?}; cache hit {hit:?}");
    }
}
