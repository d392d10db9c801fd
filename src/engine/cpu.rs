//! How the engine uses the CPU: which OpenBLAS kernels, and how many lanes.
//!
//! * Kernels: Debian 12's OpenBLAS 0.3.21 does not know recent AMD cores
//!   (Zen 4/5) and uses its AVX2 ("Haswell") kernels although the CPU has
//!   AVX-512, and some environments pin `OPENBLAS_CORETYPE=Haswell`
//!   machine-wide. Its AVX-512 ("SkylakeX") SGEMM is about twice as fast on
//!   such CPUs, and the reference runtime (onnxruntime's MLAS) picks AVX-512
//!   kernels by itself. OpenBLAS chooses when it is loaded, before `main`,
//!   from `OPENBLAS_CORETYPE`, so [`configure_blas`] sets that and
//!   re-executes the program once. `TTSD_BLAS_CORETYPE` decides instead when
//!   set: a core name for OpenBLAS, or `inherit` to leave the environment be.
//! * Lanes: MLX's CPU element-wise ops and copies are single-threaded and
//!   OpenBLAS's threads spin between the small GEMMs of a tile, so instead of
//!   BLAS threads the engine spreads independent pieces of work (decoder
//!   tiles, flow windows, attention heads) over `threads` MLX CPU streams.
//!   Each stream runs on a thread MLX owns; the engine still builds and
//!   evaluates graphs on the calling (main) thread only. BLAS is
//!   single-threaded, except in stretches too short to split into pieces
//!   (a short sentence's flow and text encoder): there [`with_blas_threads`]
//!   lets each GEMM use one BLAS thread per lane. So that OpenBLAS's idle
//!   threads stop spinning soon after such a stretch (by default they spin
//!   for about 0.1 s, taking a core from the lanes), [`configure_blas`] also
//!   sets `OPENBLAS_THREAD_TIMEOUT` unless the environment has it.
//!
//! Owns the process's BLAS settings and the one lookup of BLAS symbols
//! ([`blas_symbol`]); the lanes themselves are [`super::lanes`], the
//! allocator [`super::memory`]. Never starts a thread of its own (OpenBLAS
//! starts its own, on demand).
use mlx_rs::{Device, DeviceType};

use super::{lanes, memory};

/// OpenBLAS core names whose SGEMM uses AVX-512.
const AVX512_CORES: [&str; 3] = ["SkylakeX", "Cooperlake", "SapphireRapids"];

/// The OpenBLAS kernels this CPU should use, when OpenBLAS's own choice may
/// be slower: AVX-512 ones where the CPU has AVX-512.
fn best_coretype() -> Option<&'static str> {
    #[cfg(all(target_arch = "x86_64", target_os = "linux"))]
    {
        let avx512 = std::arch::is_x86_feature_detected!("avx512f")
            && std::arch::is_x86_feature_detected!("avx512bw")
            && std::arch::is_x86_feature_detected!("avx512dq")
            && std::arch::is_x86_feature_detected!("avx512vl")
            && std::arch::is_x86_feature_detected!("avx512cd");
        if avx512 {
            return Some("SkylakeX");
        }
    }
    None
}

/// The `OPENBLAS_CORETYPE` this process should run with, given the
/// environment's value and `TTSD_BLAS_CORETYPE`; `None`: leave it as it is.
fn wanted_coretype(current: Option<&str>, ttsd_choice: Option<&str>, best: Option<&'static str>) -> Option<String> {
    let want = match ttsd_choice {
        Some("inherit") => return None,
        Some(core) if !core.is_empty() => core.to_string(),
        _ => {
            let best = best?;
            if current.is_some_and(|c| AVX512_CORES.iter().any(|a| a.eq_ignore_ascii_case(c))) {
                return None;
            }
            best.to_string()
        }
    };
    (current != Some(want.as_str())).then_some(want)
}

/// Sets the process up for the engine: OpenBLAS (see [`configure_blas`],
/// which may re-execute the program) and the allocator
/// ([`memory::configure_malloc`]). Call first thing in `main`, before any
/// thread starts.
pub fn configure() {
    configure_blas();
    memory::configure_malloc();
}

/// How long an idle OpenBLAS thread spins before it sleeps, as a power of
/// two of CPU cycles (2^18: about 0.1 ms; OpenBLAS's default, 2^28, is
/// about 0.1 s).
const BLAS_THREAD_TIMEOUT: &str = "18";

/// The `OPENBLAS_THREAD_TIMEOUT` this process should run with, given the
/// environment's; `None`: leave it as it is.
fn wanted_thread_timeout(current: Option<&str>) -> Option<&'static str> {
    current.is_none().then_some(BLAS_THREAD_TIMEOUT)
}

/// Sets up OpenBLAS before it is used (see the module doc): the best
/// kernels for this CPU and a short spin for idle threads. OpenBLAS reads
/// both when it is loaded, so when either should change this sets it and
/// re-executes this program with the same arguments (same pid, same open
/// descriptors). Returns when nothing needs doing or when the exec failed
/// (then OpenBLAS keeps its settings).
fn configure_blas() {
    let current = std::env::var("OPENBLAS_CORETYPE").ok();
    let ttsd_choice = std::env::var("TTSD_BLAS_CORETYPE").ok();
    let mut changes: Vec<(&str, String)> = Vec::new();
    if let Some(core) = wanted_coretype(current.as_deref(), ttsd_choice.as_deref(), best_coretype()) {
        changes.push(("OPENBLAS_CORETYPE", core));
    }
    if let Some(timeout) = wanted_thread_timeout(std::env::var("OPENBLAS_THREAD_TIMEOUT").ok().as_deref()) {
        changes.push(("OPENBLAS_THREAD_TIMEOUT", timeout.to_string()));
    }
    if changes.is_empty() {
        return;
    }
    use std::os::unix::process::CommandExt;
    let mut args = std::env::args_os();
    let arg0 = args.next().unwrap_or_default();
    let err = std::process::Command::new("/proc/self/exe").arg0(arg0).args(args).envs(changes.iter().map(|(k, v)| (k, v))).exec();
    eprintln!("ttsd: could not re-execute with {changes:?} ({err}); keeping OpenBLAS's settings");
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
    lanes::open(n);
}

/// Lets the next jobs use `n` of the cores given to [`set_threads`] (at
/// least one, at most all): when other workers are busy, each takes its
/// share; alone, one takes them all. Same audio whatever `n` is.
pub fn use_threads(n: usize) {
    lanes::use_lanes(n);
}

/// Runs `f` with one BLAS thread per lane, then goes back to one: for a
/// stretch of work that cannot be split over the lanes and whose time is
/// mostly in GEMMs. Only while nothing runs on the other lanes (each lane's
/// GEMMs would use that many threads), and `f` must evaluate what it builds:
/// the thread count applies when a GEMM runs, not when it is built.
pub fn with_blas_threads<T>(f: impl FnOnce() -> T) -> T {
    /// Puts BLAS back on one thread, also when `f` panics.
    struct Single;
    impl Drop for Single {
        fn drop(&mut self) {
            set_blas_threads(1);
        }
    }
    let n = lanes::count();
    if n == 1 {
        return f();
    }
    set_blas_threads(n);
    let _single = Single;
    f()
}

/// `openblas_set_num_threads(n)` when the BLAS in this process is OpenBLAS.
fn set_blas_threads(n: usize) {
    // SAFETY: the type is the C prototype `void openblas_set_num_threads(int)`.
    let set = unsafe { blas_symbol::<unsafe extern "C" fn(std::ffi::c_int)>(b"openblas_set_num_threads\0") };
    if let Some(set) = set {
        // SAFETY: OpenBLAS's documented call; `n` is at most 64.
        unsafe { set(n as std::ffi::c_int) };
    }
}

/// The function `name` (NUL-terminated) from the libraries already loaded
/// in this process, such as OpenBLAS's extensions to the BLAS interface;
/// `None` when no loaded library exports it (another BLAS).
///
/// # Safety
/// `T` must be the function pointer type of the symbol's C prototype.
pub unsafe fn blas_symbol<T: Copy>(name: &[u8]) -> Option<T> {
    let this = libloading::os::unix::Library::this();
    // SAFETY: the caller vouches for `T`; the library that exports the
    // symbol stays loaded for the life of the process (this handle only
    // names the loaded set, it loads nothing).
    unsafe { this.get::<T>(name) }.ok().map(|f| *f)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn coretype_choice() {
        let avx = Some("SkylakeX");
        // An AVX-512 CPU: AVX2 kernels (inherited or OpenBLAS's guess) are replaced.
        assert_eq!(wanted_coretype(Some("Haswell"), None, avx).as_deref(), Some("SkylakeX"));
        assert_eq!(wanted_coretype(None, None, avx).as_deref(), Some("SkylakeX"));
        // Already AVX-512 kernels, or no AVX-512: nothing to do.
        assert_eq!(wanted_coretype(Some("SkylakeX"), None, avx), None);
        assert_eq!(wanted_coretype(Some("cooperlake"), None, avx), None);
        assert_eq!(wanted_coretype(Some("Haswell"), None, None), None);
        assert_eq!(wanted_coretype(None, None, None), None);
        // TTSD_BLAS_CORETYPE decides when set.
        assert_eq!(wanted_coretype(Some("Haswell"), Some("inherit"), avx), None);
        assert_eq!(wanted_coretype(Some("SkylakeX"), Some("Haswell"), avx).as_deref(), Some("Haswell"));
        assert_eq!(wanted_coretype(Some("Haswell"), Some("Haswell"), avx), None);
        assert_eq!(wanted_coretype(None, Some("Zen"), None).as_deref(), Some("Zen"));
    }

    #[test]
    fn thread_timeout_choice() {
        assert_eq!(wanted_thread_timeout(None), Some(BLAS_THREAD_TIMEOUT));
        // An operator's value stands.
        assert_eq!(wanted_thread_timeout(Some("28")), None);
    }

    #[test]
    fn lanes_follow_set_threads() {
        let _lock = crate::mlx_test_lock();
        set_threads(3);
        assert_eq!(lanes::count(), 3);
        use_threads(2);
        assert_eq!(lanes::count(), 2);
        use_threads(9);
        assert_eq!(lanes::count(), 3, "never more than were opened");
        use_threads(0);
        assert_eq!(lanes::count(), 1);
        set_threads(1);
        assert_eq!(lanes::count(), 1);
    }
}
