//! How the exporter's ONNX initializers get their PyTorch `state_dict`
//! names, and the convolution attributes read off the graph's nodes.
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
//!
//! Owns the naming rules only. It never touches MLX or the cache, and every
//! problem with the file is an `EngineError::VoiceLoad`, never a panic.
use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use super::{ConvAttrs, Tensor};
use crate::engine::onnx::{self, GraphProto, NodeProto, TensorProto, DATA_TYPE_FLOAT};
use crate::engine::EngineError;

/// The weights of the `.onnx` file at `path`, by `state_dict` name, and the
/// attributes of its convolutions, by module name.
#[allow(clippy::type_complexity)]
pub(super) fn read(path: &Path) -> Result<(BTreeMap<String, Tensor>, BTreeMap<String, ConvAttrs>), EngineError> {
    let graph = onnx::read_model(path)?;
    let conv_attrs = graph
        .node
        .iter()
        .filter(|n| n.op_type == "Conv" || n.op_type == "ConvTranspose")
        .filter_map(|n| Some((module_of(&n.name)?, conv_attrs_of(n))))
        .collect();
    let tensors = name_initializers(path, graph)?;
    Ok((tensors, conv_attrs))
}

/// A convolution node's dilation, padding, stride and group (ONNX's
/// defaults where an attribute is absent).
fn conv_attrs_of(node: &NodeProto) -> ConvAttrs {
    let one = |name: &str| node.ints(name).and_then(|v| v.first().copied()).unwrap_or(1).max(1) as usize;
    let pads = node.ints("pads").unwrap_or_default();
    ConvAttrs {
        dilation: one("dilations"),
        pads: (pads.first().copied().unwrap_or(0).max(0) as usize, pads.get(1).copied().unwrap_or(0).max(0) as usize),
        stride: one("strides"),
        group: one("group"),
    }
}

fn load_err(path: &Path, reason: impl Into<String>) -> EngineError {
    EngineError::VoiceLoad { path: path.display().to_string(), reason: reason.into() }
}

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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::onnx::{ModelProto, DATA_TYPE_INT64};
    use crate::engine::weights::Weights;
    use prost::Message;
    use std::path::PathBuf;

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
