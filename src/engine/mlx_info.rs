//! Facts about the MLX runtime this process runs on: MLX's version, the
//! default device, and which BLAS library the dynamic loader resolved (the
//! PyPI wheel bundles the slow reference BLAS; scripts/setup points it at
//! OpenBLAS). Also a smoke check that runs a matmul and a conv1d.
//!
//! Owns these reports only. It touches MLX: call it from the main thread of
//! a process that may use MLX, never from the supervisor; it never changes
//! a setting (that is [`super::cpu`]).
use mlx_rs::{Array, Device, DeviceType};

use super::cpu;

/// MLX's own version string, e.g. "0.32.2".
pub fn mlx_version() -> String {
    // SAFETY: mlx-c's string API: a new string, filled by mlx_version, read
    // (copied) while alive, then freed once.
    unsafe {
        let mut s = mlx_sys::mlx_string_new();
        let version = if mlx_sys::mlx_version(&mut s) == 0 {
            std::ffi::CStr::from_ptr(mlx_sys::mlx_string_data(s)).to_string_lossy().into_owned()
        } else {
            "unknown".to_string()
        };
        mlx_sys::mlx_string_free(s);
        version
    }
}

/// "gpu" or "cpu": where MLX runs by default.
pub fn default_device() -> &'static str {
    match Device::default().get_type() {
        Ok(DeviceType::Gpu) => "gpu",
        _ => "cpu",
    }
}

/// The BLAS library mapped into this process, by resolved path, with
/// OpenBLAS's build description when that is what it is.
pub fn blas() -> String {
    let maps = std::fs::read_to_string("/proc/self/maps").unwrap_or_default();
    let path = maps
        .lines()
        .filter_map(|l| l.split_whitespace().nth(5))
        .find(|p| {
            let name = p.rsplit('/').next().unwrap_or("");
            name.starts_with("libblas") || name.starts_with("libopenblas") || name.contains("mkl") || name.starts_with("libblis")
        })
        .map(|p| std::fs::canonicalize(p).map(|c| c.display().to_string()).unwrap_or_else(|_| p.to_string()));
    let openblas = openblas_config();
    match (openblas, path) {
        (Some(cfg), Some(path)) => format!("{cfg} ({path})"),
        (Some(cfg), None) => cfg,
        (None, Some(path)) if path.contains("Accelerate") => "Accelerate".into(),
        (None, Some(path)) => format!("reference BLAS ({path})"),
        (None, None) => {
            if cfg!(target_os = "macos") {
                "Accelerate".into()
            } else {
                "unknown".into()
            }
        }
    }
}

fn openblas_config() -> Option<String> {
    // SAFETY: the type is the C prototype `char *openblas_get_config(void)`.
    let get = unsafe { cpu::blas_symbol::<unsafe extern "C" fn() -> *const std::ffi::c_char>(b"openblas_get_config\0") }?;
    // SAFETY: returns a pointer to a static NUL-terminated string (or NULL), copied at once.
    unsafe {
        let p = get();
        (!p.is_null()).then(|| format!("OpenBLAS {}", std::ffi::CStr::from_ptr(p).to_string_lossy().trim()))
    }
}

/// Multi-line report for `ttsd --version`.
pub fn version_report() -> String {
    // Touch MLX once so that its libraries (and the BLAS) are mapped.
    let _ = smoke();
    format!(
        "ttsd {}\nmlx {}\ndevice {}\nblas {}",
        env!("CARGO_PKG_VERSION"),
        mlx_version(),
        default_device(),
        blas()
    )
}

/// Runs a small matmul and conv1d and compares them with hand-computed
/// results. Returns the largest absolute error.
pub fn smoke() -> Result<f32, mlx_rs::error::Exception> {
    let a = Array::from_slice(&[1.0f32, 2.0, 3.0, 4.0, 5.0, 6.0], &[2, 3]);
    let b = Array::from_slice(&[7.0f32, 8.0, 9.0, 10.0, 11.0, 12.0], &[3, 2]);
    let mm = mlx_rs::ops::matmul(&a, &b)?;
    mm.eval()?;
    let want_mm = [58.0f32, 64.0, 139.0, 154.0];
    // conv1d: input [N=1, L=5, C=1], weight [C_out=1, K=3, C_in=1], no padding.
    let x = Array::from_slice(&[1.0f32, 2.0, 3.0, 4.0, 5.0], &[1, 5, 1]);
    let w = Array::from_slice(&[1.0f32, 0.0, -1.0], &[1, 3, 1]);
    let conv = mlx_rs::ops::conv1d(&x, &w, None, None, None, None)?;
    conv.eval()?;
    let want_conv = [-2.0f32, -2.0, -2.0];
    let err = mm
        .as_slice::<f32>()
        .iter()
        .zip(&want_mm)
        .chain(conv.as_slice::<f32>().iter().zip(&want_conv))
        .map(|(g, w)| (g - w).abs())
        .fold(0.0f32, f32::max);
    if mm.as_slice::<f32>().len() != 4 || conv.as_slice::<f32>().len() != 3 {
        return Ok(f32::INFINITY);
    }
    Ok(err)
}

/// Times an `n x n` float32 matmul; returns GFLOP/s (best of `reps`).
pub fn gemm_gflops(n: i32, reps: usize) -> Result<f64, mlx_rs::error::Exception> {
    // An explicit key: mlx-rs seeds its default key from a macOS-only clock.
    let (ka, kb) = mlx_rs::random::split(mlx_rs::random::key(0)?, 2)?;
    let a = mlx_rs::random::normal::<f32>(&[n, n][..], None, None, &ka)?;
    let b = mlx_rs::random::normal::<f32>(&[n, n][..], None, None, &kb)?;
    mlx_rs::transforms::eval([&a, &b])?;
    let mut best = f64::INFINITY;
    for _ in 0..reps.max(1) {
        let t = std::time::Instant::now();
        let c = mlx_rs::ops::matmul(&a, &b)?;
        c.eval()?;
        best = best.min(t.elapsed().as_secs_f64());
    }
    Ok(2.0 * (n as f64).powi(3) / best / 1e9)
}

#[cfg(test)]
mod tests {
    #[test]
    fn matmul_and_conv1d_give_the_right_numbers() {
        let _mlx = crate::mlx_test_lock();
        let err = super::smoke().unwrap();
        assert!(err < 1e-5, "max error {err}");
    }

    #[test]
    fn reports_mlx_version_and_an_optimized_blas() {
        let _mlx = crate::mlx_test_lock();
        let _ = super::smoke().unwrap();
        // The one pin: build/versions.env, which scripts/setup installs from.
        let pinned = include_str!("../../build/versions.env")
            .lines()
            .find_map(|l| l.strip_prefix("MLX_VERSION="))
            .expect("MLX_VERSION in build/versions.env")
            .trim();
        assert_eq!(super::mlx_version(), pinned);
        let blas = super::blas();
        if cfg!(target_os = "linux") {
            assert!(blas.starts_with("OpenBLAS"), "BLAS in use: {blas}");
        }
    }
}
