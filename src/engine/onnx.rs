//! Reads a Piper `.onnx` file's initializers (owned by the weights helper).
