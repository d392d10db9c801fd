//! How the engine uses the CPU: which OpenBLAS kernels, and how many lanes.
//!
//! * Kernels: Debian 12's OpenBLAS 0.3.21 does not know recent AMD cores
//!   (Zen 4/5) and falls back to its AVX2 ("Haswell") kernels although the
//!   CPU has AVX-512; its AVX-512 ("SkylakeX") SGEMM is about twice as fast
//!   here. OpenBLAS picks its kernels when it is loaded, before `main`, from
//!   `OPENBLAS_CORETYPE`, so [`prefer_avx512_blas`] sets that and re-executes
//!   the program once. An operator's own `OPENBLAS_CORETYPE` always wins.
//! * Lanes: MLX's CPU element-wise ops and copies are single-threaded and
//!   OpenBLAS's threads spin between the small GEMMs of a tile, so instead of
//!   BLAS threads the engine spreads independent pieces of work (decoder
//!   tiles, flow windows) over `threads` MLX CPU streams. Each stream runs on
//!   a thread MLX owns; the engine still builds and evaluates graphs on the
//!   calling (main) thread only. BLAS stays single-threaded.
//!
//! Never starts a thread of its own.
use std::cell::RefCell;

use mlx_rs::{Device, DeviceType, Stream};

/// The OpenBLAS kernel set to ask for on this CPU, if the default may be slower.
fn avx512_coretype() -> Option<&'static str> {
    #[cfg(all(target_arch = "x86_64", target_os = "linux"))]
    {
        let all = std::arch::is_x86_feature_detected!("avx512f")
            && std::arch::is_x86_feature_detected!("avx512bw")
            && std::arch::is_x86_feature_detected!("avx512dq")
            && std::arch::is_x86_feature_detected!("avx512vl")
            && std::arch::is_x86_feature_detected!("avx512cd");
        if all {
            return Some("SkylakeX");
        }
    }
    None
}

/// On an AVX-512 CPU with no `OPENBLAS_CORETYPE` set: sets it and re-executes
/// this program with the same arguments (same pid, same open descriptors).
/// Call first thing in `main`, before any thread starts. Returns when nothing
/// needs doing or when the exec failed (then the default kernels are used).
pub fn prefer_avx512_blas() {
    let Some(core) = avx512_coretype() else { return };
    if std::env::var_os("OPENBLAS_CORETYPE").is_some() {
        return;
    }
    use std::os::unix::process::CommandExt;
    let mut args = std::env::args_os();
    let arg0 = args.next().unwrap_or_default();
    let err = std::process::Command::new("/proc/self/exe").arg0(arg0).args(args).env("OPENBLAS_CORETYPE", core).exec();
    eprintln!("ttsd: could not re-execute with OPENBLAS_CORETYPE={core} ({err}); using the default BLAS kernels");
}

thread_local! {
    /// The MLX CPU streams tiles are spread over; empty means the default stream.
    static LANES: RefCell<Vec<Stream>> = const { RefCell::new(Vec::new()) };
}

/// Cores this process's engine should use: `TTSD_THREADS` (set by the
/// supervisor for its workers), else every core.
pub fn threads_from_env() -> usize {
    std::env::var("TTSD_THREADS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1))
        .clamp(1, 64)
}

/// Lets the engine use `n` cores: `n` lanes on a CPU device (one on a GPU,
/// which has its own parallelism) and single-threaded BLAS. Call on the
/// thread that runs the engine, before synthesis; calling again replaces
/// the lanes.
pub fn set_threads(n: usize) {
    let on_cpu = !matches!(Device::default().get_type(), Ok(DeviceType::Gpu));
    let n = if on_cpu { n.clamp(1, 64) } else { 1 };
    set_blas_threads(1);
    LANES.with_borrow_mut(|lanes| {
        lanes.clear();
        if n > 1 {
            lanes.extend((0..n).map(|_| Stream::new_with_device(&Device::cpu())));
        }
    });
}

/// How many lanes independent work is spread over (at least 1).
pub fn lanes() -> usize {
    LANES.with_borrow(|l| l.len().max(1))
}

/// Runs `f` with lane `i`'s stream as MLX's default (the default stream when
/// there is one lane).
pub fn on_lane<T>(i: usize, f: impl FnOnce() -> T) -> T {
    LANES.with_borrow(|lanes| if lanes.is_empty() { f() } else { mlx_rs::with_stream(&lanes[i % lanes.len()], f) })
}

/// `openblas_set_num_threads(n)` when the BLAS in this process is OpenBLAS.
fn set_blas_threads(n: usize) {
    // SAFETY: looks up a symbol in libraries already loaded in this process
    // and calls it with its documented signature.
    unsafe {
        let this = libloading::os::unix::Library::this();
        if let Ok(f) = this.get::<unsafe extern "C" fn(std::ffi::c_int)>(b"openblas_set_num_threads\0") {
            f(n as std::ffi::c_int);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lanes_follow_set_threads() {
        let _lock = crate::mlx_test_lock();
        set_threads(3);
        assert_eq!(lanes(), 3);
        let y = on_lane(1, || mlx_rs::ops::add(mlx_rs::Array::from_f32(1.0), mlx_rs::Array::from_f32(2.0)).unwrap());
        y.eval().unwrap();
        assert_eq!(y.item_cast::<f32>(), 3.0);
        set_threads(1);
        assert_eq!(lanes(), 1);
    }
}
