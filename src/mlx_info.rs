//! Facts about the MLX runtime this process runs on (owned by the engine lead).

/// Multi-line report for `ttsd --version`.
pub fn version_report() -> String {
    format!("ttsd {}", env!("CARGO_PKG_VERSION"))
}
