//! Named model weights from a Piper voice's `.onnx` file (owned by the weights
//! helper), plus their on-disk cache.
//!
//! Turns the ONNX initializers into plain `f32` tensors named like the PyTorch
//! `state_dict` of Piper's VITS model, so the model code can ask for
//! `dec.ups.0.weight` without knowing how the exporter mangled names. A
//! converted copy is cached as safetensors so later loads skip the protobuf.
//! Plain Rust data only: this module never touches MLX, never panics on a bad
//! file, and treats a cache it cannot read or write as a miss, not an error.
//!
//! # Naming rules (checked on `en_US-joe-medium`, the bundled voice)
//! * A float initializer consumed by a `Conv`/`ConvTranspose` node as input 1
//!   is `<module>.weight`, as input 2 `<module>.bias`; one consumed by a
//!   `Gather` as input 0 (an embedding table) is `<module>.weight`; one
//!   consumed by a `MatMul` as input 1 is `<module>.weight`, **kept in ONNX
//!   layout `[in, out]`** (the transpose of `nn.Linear.weight`). `<module>` is
//!   the consumer's node name without the leading `/` and its last segment,
//!   with `/` turned into `.`: `/dec/ups.0/ConvTranspose` -> `dec.ups.0`. The
//!   consumer decides even when the initializer has a name of its own: the
//!   export folds weight norm into `onnx::Conv_NNNN` tensors, and stores the
//!   phoneme embedding as `sid`, which `/enc_p/emb/Gather` turns into
//!   `enc_p.emb.weight`. A tensor shared by several such consumers is stored
//!   under each name.
//! * `/<m>/Exp_output_0` (constant-folded `exp(-logs)` of an
//!   `ElementwiseAffine`, used by the reverse pass as
//!   `Mul(Sub(x, <m>.m), exp(-logs))`) is stored as `<m>.logs = -ln(value)`
//!   after checking that graph pattern (e.g. `dp.flows.0.logs`).
//! * Other float initializers keep their name (`dp.flows.0.m`,
//!   `enc_p.encoder.attn_layers.0.emb_rel_k`, `*.gamma`/`*.beta`), except the
//!   graph's own constants (names starting with `/` or `onnx::`), which are
//!   dropped. Non-float initializers (int64 shape constants) are skipped.
//! * A float tensor that a weight-consuming node uses but that cannot be named
//!   is a load error, as is a weight stored in a data type other than float32.
use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::UNIX_EPOCH;

use super::onnx::{self, GraphProto, NodeProto, TensorProto, DATA_TYPE_FLOAT};
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

    fn from_node(node: &NodeProto) -> Option<Self> {
        let one = |name: &str| node.ints(name).and_then(|v| v.first().copied()).unwrap_or(1).max(1) as usize;
        let pads = node.ints("pads").unwrap_or_default();
        Some(Self {
            dilation: one("dilations"),
            pads: (pads.first().copied().unwrap_or(0).max(0) as usize, pads.get(1).copied().unwrap_or(0).max(0) as usize),
            stride: one("strides"),
            group: one("group"),
        })
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

fn load_err(path: &Path, reason: impl Into<String>) -> EngineError {
    EngineError::VoiceLoad { path: path.display().to_string(), reason: reason.into() }
}

impl Weights {
    /// Parse `NAME.onnx` into weights named like PyTorch's `state_dict`, going
    /// through the cache in [`default_cache_dir`] (a cache that cannot be used
    /// is silently bypassed).
    pub fn load(onnx_path: &Path) -> Result<Weights, EngineError> {
        Self::load_with_cache_dir(onnx_path, default_cache_dir().as_deref()).map(|(w, _)| w)
    }

    /// [`Weights::load`] with an explicit cache directory (`None`: no cache),
    /// also saying what happened with the cache.
    pub fn load_with_cache_dir(
        onnx_path: &Path,
        cache_dir: Option<&Path>,
    ) -> Result<(Weights, CacheStatus), EngineError> {
        let Some(entry) = cache_dir.and_then(|dir| CacheEntry::for_voice(onnx_path, dir)) else {
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
        let graph = onnx::read_model(onnx_path)?;
        let conv_attrs = graph
            .node
            .iter()
            .filter(|n| n.op_type == "Conv" || n.op_type == "ConvTranspose")
            .filter_map(|n| Some((module_of(&n.name)?, ConvAttrs::from_node(n)?)))
            .collect();
        let tensors = name_initializers(onnx_path, graph)?;
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

// ----------------------------------------------------------------- naming

/// The module a node belongs to: `/dec/ups.0/ConvTranspose` -> `dec.ups.0`.
fn module_of(node_name: &str) -> Option<String> {
    let (module, _op) = node_name.strip_prefix('/')?.rsplit_once('/')?;
    if module.is_empty() || module.split('/').any(str::is_empty) {
        return None;
    }
    Some(module.replace('/', "."))
}

/// If input `index` of `node` is a weight slot, the parameter's suffix.
fn weight_slot(node: &NodeProto, index: usize) -> Option<&'static str> {
    match (node.op_type.as_str(), index) {
        ("Conv" | "ConvTranspose", 1) => Some("weight"),
        ("Conv" | "ConvTranspose", 2) => Some("bias"),
        ("Gather", 0) => Some("weight"),
        ("MatMul", 1) => Some("weight"),
        _ => None,
    }
}

fn is_graph_constant(name: &str) -> bool {
    name.starts_with('/') || name.starts_with("onnx::")
}

/// Decode an initializer's values (raw little-endian bytes or `float_data`),
/// checking their count against the dims.
fn tensor_from_proto(path: &Path, t: &TensorProto) -> Result<Tensor, EngineError> {
    let mut shape = Vec::with_capacity(t.dims.len());
    let mut numel: usize = 1;
    for &d in &t.dims {
        let d = usize::try_from(d)
            .map_err(|_| load_err(path, format!("tensor '{}' has a negative dimension {d}", t.name)))?;
        numel = numel
            .checked_mul(d)
            .ok_or_else(|| load_err(path, format!("tensor '{}' has absurd dimensions {:?}", t.name, t.dims)))?;
        shape.push(d);
    }
    let data: Vec<f32> = if !t.raw_data.is_empty() {
        if t.raw_data.len() != numel.saturating_mul(4) {
            return Err(load_err(
                path,
                format!(
                    "tensor '{}' {:?} has {} bytes of data, expected {} (truncated file?)",
                    t.name,
                    shape,
                    t.raw_data.len(),
                    numel.saturating_mul(4)
                ),
            ));
        }
        t.raw_data.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect()
    } else {
        if t.float_data.len() != numel {
            return Err(load_err(
                path,
                format!(
                    "tensor '{}' {:?} has {} values, expected {} (truncated file, or external data, which is not supported)",
                    t.name,
                    shape,
                    t.float_data.len(),
                    numel
                ),
            ));
        }
        t.float_data.clone()
    };
    Ok(Tensor { shape, data })
}

/// For `/<m>/Exp_output_0`: the module `<m>` if the graph uses it as
/// `Mul(Sub(x, <m>.m), this)`, i.e. as `exp(-logs)` of an ElementwiseAffine.
fn affine_exp_module(
    name: &str,
    uses: &[(usize, usize)],
    nodes: &[NodeProto],
    producer: &HashMap<&str, usize>,
) -> Option<String> {
    let module = module_of(name)?;
    if !name.ends_with("/Exp_output_0") {
        return None;
    }
    let m_name = format!("{module}.m");
    let ok = uses.iter().any(|&(n, i)| {
        let mul = &nodes[n];
        if mul.op_type != "Mul" || mul.input.len() != 2 || i > 1 {
            return false;
        }
        let other = &mul.input[1 - i];
        producer.get(other.as_str()).is_some_and(|&p| {
            let sub = &nodes[p];
            sub.op_type == "Sub" && sub.input.get(1).is_some_and(|x| *x == m_name)
        })
    });
    ok.then_some(module)
}

/// Apply the naming rules (module docs) to every initializer of `graph`.
fn name_initializers(path: &Path, graph: GraphProto) -> Result<BTreeMap<String, Tensor>, EngineError> {
    let GraphProto { node: nodes, initializer } = graph;
    // Every (node, input index) that reads a value, and who produces each value.
    let mut consumers: HashMap<&str, Vec<(usize, usize)>> = HashMap::new();
    let mut producer: HashMap<&str, usize> = HashMap::new();
    for (n, node) in nodes.iter().enumerate() {
        for (i, input) in node.input.iter().enumerate() {
            consumers.entry(input.as_str()).or_default().push((n, i));
        }
        for output in &node.output {
            producer.insert(output.as_str(), n);
        }
    }

    let mut out: BTreeMap<String, Tensor> = BTreeMap::new();
    let mut insert = |name: String, t: Tensor, from: &str| -> Result<(), EngineError> {
        if out.contains_key(&name) {
            return Err(load_err(path, format!("two initializers map to weight '{name}' (the second is '{from}')")));
        }
        out.insert(name, t);
        Ok(())
    };

    for init in initializer {
        let uses: &[(usize, usize)] = consumers.get(init.name.as_str()).map_or(&[], Vec::as_slice);
        // Weight-slot consumers name the tensor.
        let mut slot_names: Vec<String> = Vec::new();
        for &(n, i) in uses {
            let node = &nodes[n];
            let Some(suffix) = weight_slot(node, i) else { continue };
            if init.data_type != DATA_TYPE_FLOAT {
                // Integer tables gathered by index are graph constants, not weights.
                if node.op_type == "Gather" && matches!(init.data_type, 2..=7 | 12 | 13) {
                    continue;
                }
                return Err(load_err(
                    path,
                    format!(
                        "weight '{}' used by node '{}' has ONNX data type {}; only float32 voices are supported",
                        init.name, node.name, init.data_type
                    ),
                ));
            }
            let name = match module_of(&node.name) {
                Some(module) => format!("{module}.{suffix}"),
                None if !init.name.is_empty() && !is_graph_constant(&init.name) => init.name.clone(),
                None => {
                    return Err(load_err(
                        path,
                        format!(
                            "cannot name weight '{}' {:?}: its consumer node '{}' ({}) has no module path",
                            init.name, init.dims, node.name, node.op_type
                        ),
                    ))
                }
            };
            if !slot_names.contains(&name) {
                slot_names.push(name);
            }
        }
        if init.data_type != DATA_TYPE_FLOAT {
            continue;
        }
        if let Some((last, rest)) = slot_names.split_last() {
            let t = tensor_from_proto(path, &init)?;
            for name in rest {
                insert(name.clone(), t.clone(), &init.name)?;
            }
            insert(last.clone(), t, &init.name)?;
        } else if init.name.starts_with('/') {
            if let Some(module) = affine_exp_module(&init.name, uses, &nodes, &producer) {
                let mut t = tensor_from_proto(path, &init)?;
                if let Some(bad) = t.data.iter().find(|v| !(**v > 0.0 && v.is_finite())) {
                    return Err(load_err(
                        path,
                        format!("'{}' should hold exp(-logs) but has the value {bad}", init.name),
                    ));
                }
                t.data.iter_mut().for_each(|v| *v = -v.ln());
                insert(format!("{module}.logs"), t, &init.name)?;
            }
        } else if !init.name.is_empty() && !is_graph_constant(&init.name) {
            let t = tensor_from_proto(path, &init)?;
            insert(init.name.clone(), t, &init.name)?;
        }
    }
    if out.is_empty() {
        return Err(load_err(path, "the ONNX file holds no float32 weights"));
    }
    Ok(out)
}

// ------------------------------------------------------------------ cache

/// Bumped whenever the naming rules change, so stale caches are not used.
const CACHE_FORMAT: &str = "ttsd-weights-2";

/// Where converted weights are cached: `$TTSD_CACHE_DIR`, else
/// `$XDG_CACHE_HOME/ttsd`, else `$HOME/.cache/ttsd` (empty or, for XDG,
/// relative values are ignored). `None` when none is set.
pub fn default_cache_dir() -> Option<PathBuf> {
    let var = |k: &str| std::env::var_os(k).filter(|v| !v.is_empty()).map(PathBuf::from);
    var("TTSD_CACHE_DIR")
        .or_else(|| var("XDG_CACHE_HOME").filter(|p| p.is_absolute()).map(|p| p.join("ttsd")))
        .or_else(|| var("HOME").map(|p| p.join(".cache").join("ttsd")))
}

/// 64-bit FNV-1a: stable across Rust versions, unlike `DefaultHasher`.
fn fnv1a64(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &b| (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3))
}

struct CacheEntry {
    file: PathBuf,
    /// Format, canonical path, size and mtime of the voice: stored in the
    /// file's metadata and compared on read, so a hash collision is a miss.
    identity: String,
}

impl CacheEntry {
    fn for_voice(onnx_path: &Path, dir: &Path) -> Option<CacheEntry> {
        let canonical = std::fs::canonicalize(onnx_path).ok()?;
        let meta = std::fs::metadata(&canonical).ok()?;
        let mtime = meta.modified().ok()?.duration_since(UNIX_EPOCH).ok()?.as_nanos();
        let identity = format!("{CACHE_FORMAT}\n{}\n{}\n{mtime}", canonical.display(), meta.len());
        let stem: String = canonical
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default()
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() || "-_.".contains(c) { c } else { '_' })
            .take(80)
            .collect();
        let file = dir.join(format!("{stem}-{:016x}.safetensors", fnv1a64(identity.as_bytes())));
        Some(CacheEntry { file, identity })
    }

    /// The cached tensors and convolution attributes, or `None` for a
    /// missing, foreign or damaged file.
    #[allow(clippy::type_complexity)]
    fn read(&self) -> Option<(BTreeMap<String, Tensor>, BTreeMap<String, ConvAttrs>)> {
        use safetensors::{Dtype, SafeTensors};
        let bytes = std::fs::read(&self.file).ok()?;
        let (_, meta) = SafeTensors::read_metadata(&bytes).ok()?;
        let meta = meta.metadata().as_ref()?;
        if meta.get("identity")? != &self.identity {
            return None;
        }
        let conv_attrs: BTreeMap<String, ConvAttrs> = serde_json::from_str(meta.get("conv_attrs")?).ok()?;
        let st = SafeTensors::deserialize(&bytes).ok()?;
        let mut out = BTreeMap::new();
        for (name, view) in st.iter() {
            if view.dtype() != Dtype::F32 {
                return None;
            }
            let shape = view.shape().to_vec();
            let data: Vec<f32> =
                view.data().chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect();
            if data.len() != shape.iter().product::<usize>() {
                return None;
            }
            out.insert(name.to_string(), Tensor { shape, data });
        }
        (!out.is_empty()).then_some((out, conv_attrs))
    }

    /// Store `tensors` atomically (temp file + rename). Returns success.
    fn write(&self, tensors: &BTreeMap<String, Tensor>, conv_attrs: &BTreeMap<String, ConvAttrs>) -> bool {
        let Some(dir) = self.file.parent() else { return false };
        if std::fs::create_dir_all(dir).is_err() {
            return false;
        }
        let nanos = std::time::SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos());
        let tmp = dir.join(format!(
            ".{}.{}-{nanos}.tmp",
            self.file.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default(),
            std::process::id()
        ));
        let metadata = Some(HashMap::from([
            ("format".to_string(), CACHE_FORMAT.to_string()),
            ("identity".to_string(), self.identity.clone()),
            ("conv_attrs".to_string(), serde_json::to_string(conv_attrs).unwrap_or_default()),
        ]));
        let views = tensors.iter().map(|(k, t)| (k.as_str(), F32View(t)));
        let ok = safetensors::serialize_to_file(views, &metadata, &tmp).is_ok()
            && std::fs::rename(&tmp, &self.file).is_ok();
        if !ok {
            let _ = std::fs::remove_file(&tmp);
        }
        ok
    }
}

/// A [`Tensor`] seen by the safetensors writer (little-endian f32).
struct F32View<'a>(&'a Tensor);

impl safetensors::View for F32View<'_> {
    fn dtype(&self) -> safetensors::Dtype {
        safetensors::Dtype::F32
    }
    fn shape(&self) -> &[usize] {
        &self.0.shape
    }
    fn data(&self) -> Cow<'_, [u8]> {
        Cow::Owned(self.0.data.iter().flat_map(|v| v.to_le_bytes()).collect())
    }
    fn data_len(&self) -> usize {
        self.0.data.len() * 4
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::onnx::{ModelProto, DATA_TYPE_INT64};
    use prost::Message;
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

    fn f32_init(name: &str, dims: &[i64], values: &[f32]) -> TensorProto {
        TensorProto {
            dims: dims.to_vec(),
            data_type: DATA_TYPE_FLOAT,
            raw_data: values.iter().flat_map(|v| v.to_le_bytes()).collect::<Vec<u8>>().into(),
            name: name.into(),
            ..Default::default()
        }
    }

    fn node(name: &str, op: &str, inputs: &[&str], outputs: &[&str]) -> NodeProto {
        NodeProto {
            input: inputs.iter().map(|s| s.to_string()).collect(),
            output: outputs.iter().map(|s| s.to_string()).collect(),
            name: name.into(),
            op_type: op.into(),
            attribute: vec![],
        }
    }

    fn write_model(dir: &Path, graph: GraphProto) -> PathBuf {
        let p = dir.join("m.onnx");
        std::fs::write(&p, ModelProto { graph: Some(graph) }.encode_to_vec()).unwrap();
        p
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
    fn cache_key_follows_the_voice_file() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("v.onnx");
        std::fs::write(&p, b"12345").unwrap();
        let a = CacheEntry::for_voice(&p, Path::new("/c")).unwrap();
        std::fs::write(&p, b"123456").unwrap();
        let b = CacheEntry::for_voice(&p, Path::new("/c")).unwrap();
        assert_ne!(a.file, b.file);
        assert!(a.file.file_name().unwrap().to_str().unwrap().starts_with("v.onnx-"));
        assert!(CacheEntry::for_voice(&dir.path().join("missing.onnx"), Path::new("/c")).is_none());
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

    #[test]
    fn naming_rules_on_a_synthetic_graph() {
        let dir = tempfile::tempdir().unwrap();
        let graph = GraphProto {
            node: vec![
                node("/emb_g/Gather", "Gather", &["spk_table", "sid_in"], &["g"]),
                node("/dec/cond/Conv", "Conv", &["g", "onnx::Conv_1", "onnx::Conv_2"], &["c"]),
                node("/a/b/MatMul", "MatMul", &["c", "onnx::MatMul_3"], &["mm"]),
                node("/a/Mul_c", "Mul", &["mm", "/a/Constant_output_0"], &["s"]),
                node("/dp/flows.0/Sub", "Sub", &["s", "dp.flows.0.m"], &["sub"]),
                node("/dp/flows.0/Mul", "Mul", &["sub", "/dp/flows.0/Exp_output_0"], &["y"]),
                node("/x/Reshape", "Reshape", &["y", "/x/Constant_shape"], &["z"]),
                node("/x/Add", "Add", &["z", "onnx::Add_9"], &["out"]),
            ],
            initializer: vec![
                f32_init("spk_table", &[3, 2], &[0., 1., 2., 3., 4., 5.]),
                f32_init("onnx::Conv_1", &[4, 2, 1], &[1.; 8]),
                TensorProto {
                    dims: vec![4],
                    data_type: DATA_TYPE_FLOAT,
                    float_data: vec![0.5; 4],
                    name: "onnx::Conv_2".into(),
                    ..Default::default()
                },
                f32_init("onnx::MatMul_3", &[4, 3], &[2.; 12]),
                f32_init("/a/Constant_output_0", &[], &[0.5]),
                f32_init("dp.flows.0.m", &[2, 1], &[0.1, 0.2]),
                f32_init("/dp/flows.0/Exp_output_0", &[2, 1], &[2.0, 0.5]),
                TensorProto {
                    dims: vec![2],
                    data_type: DATA_TYPE_INT64,
                    int64_data: vec![1, -1],
                    name: "/x/Constant_shape".into(),
                    ..Default::default()
                },
                f32_init("onnx::Add_9", &[3], &[1., 2., 3.]),
            ],
        };
        let w = Weights::from_onnx(&write_model(dir.path(), graph)).unwrap();
        assert_eq!(
            w.names(),
            vec![
                "a.b.weight",
                "dec.cond.bias",
                "dec.cond.weight",
                "dp.flows.0.logs",
                "dp.flows.0.m",
                "emb_g.weight"
            ]
        );
        assert_eq!(w.get("emb_g.weight").unwrap().data, vec![0., 1., 2., 3., 4., 5.]);
        assert_eq!(w.get("dec.cond.bias").unwrap().data, vec![0.5; 4]);
        assert_eq!(w.shape("a.b.weight"), Some(&[4, 3][..]));
        let logs = &w.get("dp.flows.0.logs").unwrap().data;
        assert!((logs[0] + 2f32.ln()).abs() < 1e-7 && (logs[1] - 2f32.ln()).abs() < 1e-7, "{logs:?}");
    }

    #[test]
    fn shared_weights_unnameable_weights_and_bad_sizes() {
        let dir = tempfile::tempdir().unwrap();
        // One tensor used by two convs is stored under both names.
        let shared = GraphProto {
            node: vec![
                node("/m/c1/Conv", "Conv", &["x", "w"], &["y"]),
                node("/m/c2/Conv", "Conv", &["y", "w"], &["z"]),
            ],
            initializer: vec![f32_init("w", &[1, 1, 1], &[3.0])],
        };
        let w = Weights::from_onnx(&write_model(dir.path(), shared)).unwrap();
        assert_eq!(w.names(), vec!["m.c1.weight", "m.c2.weight"]);

        // A conv weight whose consumer has no module path and no name of its own.
        let unnamed = GraphProto {
            node: vec![node("Conv_7", "Conv", &["x", "onnx::Conv_5"], &["y"])],
            initializer: vec![f32_init("onnx::Conv_5", &[1, 1, 1], &[3.0])],
        };
        let r = reason(Weights::from_onnx(&write_model(dir.path(), unnamed)).unwrap_err());
        assert!(r.contains("cannot name weight 'onnx::Conv_5'"), "{r}");

        // Data shorter than the dims say.
        let short = GraphProto {
            node: vec![node("/m/c/Conv", "Conv", &["x", "w"], &["y"])],
            initializer: vec![f32_init("w", &[2, 3, 1], &[1.0; 5])],
        };
        let r = reason(Weights::from_onnx(&write_model(dir.path(), short)).unwrap_err());
        assert!(r.contains("20 bytes of data, expected 24"), "{r}");

        // A float16 conv weight is refused with a clear reason.
        let half = GraphProto {
            node: vec![node("/m/c/Conv", "Conv", &["x", "w"], &["y"])],
            initializer: vec![TensorProto {
                dims: vec![1],
                data_type: 10,
                raw_data: vec![0u8, 0x3c].into(),
                name: "w".into(),
                ..Default::default()
            }],
        };
        let r = reason(Weights::from_onnx(&write_model(dir.path(), half)).unwrap_err());
        assert!(r.contains("only float32"), "{r}");

        // Only graph constants: no weights at all.
        let none = GraphProto {
            node: vec![node("/a/Mul", "Mul", &["x", "/a/Constant_output_0"], &["y"])],
            initializer: vec![f32_init("/a/Constant_output_0", &[], &[2.0])],
        };
        let r = reason(Weights::from_onnx(&write_model(dir.path(), none)).unwrap_err());
        assert!(r.contains("no float32 weights"), "{r}");
    }

    #[test]
    fn exp_output_without_the_affine_pattern_is_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let graph = GraphProto {
            node: vec![
                node("/q/Mul", "Mul", &["x", "/q/Exp_output_0"], &["y"]),
                node("/q/c/Conv", "Conv", &["y", "q.c.weight"], &["z"]),
            ],
            initializer: vec![
                f32_init("/q/Exp_output_0", &[2], &[1.0, 2.0]),
                f32_init("q.c.weight", &[1, 1, 1], &[1.0]),
            ],
        };
        let w = Weights::from_onnx(&write_model(dir.path(), graph)).unwrap();
        assert_eq!(w.names(), vec!["q.c.weight"]);
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

    #[test]
    fn module_names() {
        assert_eq!(module_of("/dec/ups.0/ConvTranspose").as_deref(), Some("dec.ups.0"));
        assert_eq!(module_of("/enc_p/emb/Gather").as_deref(), Some("enc_p.emb"));
        assert_eq!(module_of("/emb_g/Gather").as_deref(), Some("emb_g"));
        assert_eq!(module_of("/Conv"), None);
        assert_eq!(module_of("Conv_3"), None);
        assert_eq!(module_of("/a//Conv"), None);
    }
}
