//! Reads a Piper `.onnx` file into the few ONNX protobuf messages ttsd needs
//! (the weights' source, see [`super::weights`]).
//!
//! The messages are hand-written prost structs carrying only the fields used to
//! name and extract the initializers (weights); every other field is skipped by
//! the decoder. No protoc, no code generation. This module only parses bytes:
//! it never touches MLX and never interprets the graph (see `weights`).
//! Every problem with the file is an `EngineError::VoiceLoad`, never a panic.
use std::path::Path;

use prost::Message;

use super::EngineError;

/// ONNX `TensorProto.DataType.FLOAT`.
pub const DATA_TYPE_FLOAT: i32 = 1;
/// ONNX `TensorProto.DataType.INT64`.
pub const DATA_TYPE_INT64: i32 = 7;

/// `onnx.ModelProto`, reduced to the graph.
#[derive(Clone, PartialEq, prost::Message)]
pub struct ModelProto {
    #[prost(message, optional, tag = "7")]
    pub graph: Option<GraphProto>,
}

/// `onnx.GraphProto`, reduced to its nodes and initializers.
#[derive(Clone, PartialEq, prost::Message)]
pub struct GraphProto {
    #[prost(message, repeated, tag = "1")]
    pub node: Vec<NodeProto>,
    #[prost(message, repeated, tag = "5")]
    pub initializer: Vec<TensorProto>,
}

/// `onnx.NodeProto`, with integer attributes only.
#[derive(Clone, PartialEq, prost::Message)]
pub struct NodeProto {
    #[prost(string, repeated, tag = "1")]
    pub input: Vec<String>,
    #[prost(string, repeated, tag = "2")]
    pub output: Vec<String>,
    #[prost(string, tag = "3")]
    pub name: String,
    #[prost(string, tag = "4")]
    pub op_type: String,
    #[prost(message, repeated, tag = "5")]
    pub attribute: Vec<AttributeProto>,
}

/// `onnx.AttributeProto`, reduced to integer values (a convolution's
/// `dilations`, `pads`, `strides`, `group`).
#[derive(Clone, PartialEq, prost::Message)]
pub struct AttributeProto {
    #[prost(string, tag = "1")]
    pub name: String,
    #[prost(int64, tag = "3")]
    pub i: i64,
    #[prost(int64, repeated, tag = "8")]
    pub ints: Vec<i64>,
}

impl NodeProto {
    /// An integer-list attribute (`ints`), or a scalar one as a list of one.
    pub fn ints(&self, name: &str) -> Option<Vec<i64>> {
        let a = self.attribute.iter().find(|a| a.name == name)?;
        Some(if a.ints.is_empty() { vec![a.i] } else { a.ints.clone() })
    }
}

/// `onnx.TensorProto`, reduced to what a float or int64 initializer needs.
/// Tensors stored as external data are not supported (their data fields are
/// empty, which the weights layer reports as a size mismatch).
#[derive(Clone, PartialEq, prost::Message)]
pub struct TensorProto {
    #[prost(int64, repeated, tag = "1")]
    pub dims: Vec<i64>,
    #[prost(int32, tag = "2")]
    pub data_type: i32,
    #[prost(float, repeated, tag = "4")]
    pub float_data: Vec<f32>,
    #[prost(int64, repeated, tag = "7")]
    pub int64_data: Vec<i64>,
    #[prost(string, tag = "8")]
    pub name: String,
    /// Shares the file's buffer (no copy) when decoded from `Bytes`.
    #[prost(bytes = "bytes", tag = "9")]
    pub raw_data: prost::bytes::Bytes,
}

fn load_err(path: &Path, reason: impl Into<String>) -> EngineError {
    EngineError::VoiceLoad { path: path.display().to_string(), reason: reason.into() }
}

/// Decode ONNX model bytes and return its graph. `path` is only used in errors.
pub fn parse_model(path: &Path, bytes: impl Into<prost::bytes::Bytes>) -> Result<GraphProto, EngineError> {
    let bytes: prost::bytes::Bytes = bytes.into();
    if bytes.is_empty() {
        return Err(load_err(path, "the ONNX file is empty"));
    }
    let model = ModelProto::decode(bytes).map_err(|e| {
        load_err(path, format!("not a valid ONNX model (truncated or corrupt protobuf: {e})"))
    })?;
    let graph = model
        .graph
        .ok_or_else(|| load_err(path, "not a valid ONNX model: it has no graph"))?;
    if graph.initializer.is_empty() {
        return Err(load_err(path, "not a valid ONNX model: its graph has no initializers (weights)"));
    }
    Ok(graph)
}

/// Read the ONNX file at `path` and return its graph.
pub fn read_model(path: &Path) -> Result<GraphProto, EngineError> {
    use super::files::{read_capped, ReadError, MAX_MODEL_BYTES};
    let bytes = read_capped(path, MAX_MODEL_BYTES).map_err(|e| {
        let what = match e {
            ReadError::NotFound => "the ONNX file does not exist".to_string(),
            e => format!("cannot read the ONNX file: {e}"),
        };
        load_err(path, what)
    })?;
    parse_model(path, bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn voice() -> std::path::PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("voices/en_US-joe-medium.onnx")
    }

    fn reason(e: EngineError) -> String {
        match e {
            EngineError::VoiceLoad { reason, .. } => reason,
            other => panic!("expected VoiceLoad, got {other:?}"),
        }
    }

    #[test]
    fn bundled_voice_parses() {
        let g = read_model(&voice()).unwrap();
        assert_eq!(g.initializer.len(), 401);
        assert!(g.node.len() > 1000);
        let floats = g.initializer.iter().filter(|t| t.data_type == DATA_TYPE_FLOAT).count();
        assert_eq!(floats, 366);
        let conv = g.node.iter().find(|n| n.name == "/dec/ups.0/ConvTranspose").unwrap();
        assert_eq!(conv.op_type, "ConvTranspose");
        assert_eq!(conv.input[1], "dec.ups.0.weight");
        let emb = g.initializer.iter().find(|t| t.name == "sid").unwrap();
        assert_eq!(emb.dims, vec![256, 192]);
        assert_eq!(emb.raw_data.len(), 256 * 192 * 4);
    }

    #[test]
    fn round_trip_of_hand_written_messages() {
        let model = ModelProto {
            graph: Some(GraphProto {
                node: vec![NodeProto {
                    input: vec!["x".into(), "w".into()],
                    output: vec!["y".into()],
                    name: "/a/Conv".into(),
                    op_type: "Conv".into(),
                    attribute: vec![],
                }],
                initializer: vec![TensorProto {
                    dims: vec![2],
                    data_type: DATA_TYPE_FLOAT,
                    float_data: vec![1.0, 2.0],
                    name: "w".into(),
                    ..Default::default()
                }],
            }),
        };
        let g = parse_model(Path::new("mem.onnx"), model.encode_to_vec()).unwrap();
        assert_eq!(Some(g), model.graph);
    }

    #[test]
    fn missing_file_is_an_error() {
        let r = reason(read_model(Path::new("/nonexistent/dir/voice.onnx")).unwrap_err());
        assert!(r.contains("does not exist"), "{r}");
    }

    #[test]
    fn a_device_is_refused_without_reading_it() {
        let r = reason(read_model(Path::new("/dev/zero")).unwrap_err());
        assert!(r.contains("character device, not a regular file"), "{r}");
    }

    #[test]
    fn truncated_garbage_and_empty_are_errors() {
        let bytes = std::fs::read(voice()).unwrap();
        let r = reason(parse_model(Path::new("t.onnx"), bytes[..1 << 20].to_vec()).unwrap_err());
        assert!(r.contains("truncated or corrupt"), "{r}");
        let r = reason(parse_model(Path::new("t.onnx"), &b""[..]).unwrap_err());
        assert!(r.contains("empty"), "{r}");
        // Valid protobuf (field 1, varint) but no graph.
        let r = reason(parse_model(Path::new("t.onnx"), vec![0x08u8, 0x07]).unwrap_err());
        assert!(r.contains("no graph"), "{r}");
        // Pseudo-random bytes: whatever they decode to, it is an error, not a panic.
        let mut state = 0x1234_5678_9abc_def0u64;
        let garbage: Vec<u8> = (0..100_000)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                state as u8
            })
            .collect();
        assert!(parse_model(Path::new("g.onnx"), garbage).is_err());
        let r = reason(parse_model(Path::new("g.onnx"), &b"this is plainly not an onnx model\n"[..]).unwrap_err());
        assert!(!r.is_empty());
    }
}
