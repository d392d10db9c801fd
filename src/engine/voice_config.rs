//! The voice's `.onnx.json` (owned by the weights helper).
