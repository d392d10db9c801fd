//! The FFI to libespeak-ng: finds the library and its data, dlopens it with
//! libloading (so a missing library is an error the daemon can report, not a
//! failure at process start), initialises espeak-ng once per process and wraps
//! the few raw calls the phonemizer needs.
//!
//! Must never: touch MLX, call espeak-ng from two threads (it is one global
//! state machine; `Phonemizer` enforces one user per process), or let
//! espeak-ng `exit()` the process (initialisation goes through the
//! `espeak_ng_*` calls, which report errors instead).

use std::ffi::{c_char, c_int, c_uint, c_void, CStr, CString};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use libloading::Library;

/// `espeak_TextToPhonemes` phoneme mode: IPA as UTF-8, no separator (what Piper passes).
const ESPEAK_PHONEMES_IPA: c_int = 0x02;
/// `espeakCHARS_AUTO`: UTF-8, with an 8-bit fallback (what Piper passes).
const ESPEAK_CHARS_AUTO: c_int = 0;
/// `ENOUTPUT_MODE_SYNCHRONOUS`: no audio device, as `AUDIO_OUTPUT_SYNCHRONOUS`.
const ENOUTPUT_MODE_SYNCHRONOUS: c_int = 0x0001;
/// `ENS_OK`.
const ENS_OK: c_uint = 0;

/// Files a usable `espeak-ng-data` folder always has.
const DATA_FILES: [&str; 4] = ["phontab", "phonindex", "phondata", "intonations"];

#[cfg(target_os = "macos")]
const LIB_NAMES: [&str; 2] = ["libespeak-ng.1.dylib", "libespeak-ng.dylib"];
#[cfg(not(target_os = "macos"))]
const LIB_NAMES: [&str; 2] = ["libespeak-ng.so.1", "libespeak-ng.so"];

#[cfg(target_os = "macos")]
const SYSTEM_LIBS: [&str; 4] = [
    "libespeak-ng.1.dylib",
    "libespeak-ng.dylib",
    "/opt/homebrew/lib/libespeak-ng.dylib",
    "/usr/local/lib/libespeak-ng.dylib",
];
#[cfg(not(target_os = "macos"))]
const SYSTEM_LIBS: [&str; 2] = ["libespeak-ng.so.1", "libespeak-ng.so"];

type InitializePathFn = unsafe extern "C" fn(*const c_char);
type InitializeFn = unsafe extern "C" fn(*mut *mut c_void) -> c_uint;
type InitializeOutputFn = unsafe extern "C" fn(c_int, c_int, *const c_char) -> c_uint;
type StatusMessageFn = unsafe extern "C" fn(c_uint, *mut c_char, usize);
type ClearErrorContextFn = unsafe extern "C" fn(*mut *mut c_void);
type InfoFn = unsafe extern "C" fn(*mut *const c_char) -> *const c_char;
type SetVoiceByNameFn = unsafe extern "C" fn(*const c_char) -> c_int;
type TextToPhonemesFn = unsafe extern "C" fn(*mut *const c_void, c_int, c_int) -> *const c_char;
type UcdCategoryFn = unsafe extern "C" fn(u32) -> c_int;
type UcdPropertiesFn = unsafe extern "C" fn(u32, c_int) -> u64;

/// One place to look for espeak-ng.
#[derive(Debug, Clone)]
pub(crate) struct Candidate {
    /// A path, or a bare soname for the dynamic loader's search.
    pub lib: PathBuf,
    /// The `espeak-ng-data` folder; `None` lets espeak-ng use its built-in default.
    pub data: Option<PathBuf>,
    /// How it was found, for `describe()`.
    pub source: String,
}

/// The loaded, initialised library. Lives for the rest of the process once loaded
/// (espeak-ng keeps global state; unloading and re-initialising buys nothing).
pub(crate) struct Espeak {
    _lib: Library,
    set_voice_by_name: SetVoiceByNameFn,
    text_to_phonemes: TextToPhonemesFn,
    ucd: Option<(UcdCategoryFn, UcdPropertiesFn)>,
    pub version: String,
    pub lib_path: String,
    pub data_path: String,
    pub source: String,
}

static ESPEAK: OnceLock<Result<Espeak, String>> = OnceLock::new();

/// The process's espeak-ng, loading and initialising it on first use. A failure
/// is remembered: espeak-ng is not loaded twice in one process.
pub(crate) fn get() -> Result<&'static Espeak, String> {
    ESPEAK.get_or_init(load_first).as_ref().map_err(Clone::clone)
}

fn load_first() -> Result<Espeak, String> {
    let mut tried = Vec::new();
    for cand in candidates()? {
        match Espeak::load(&cand) {
            Ok(e) => return Ok(e),
            Err(e) => tried.push(format!("{} [{}]: {e}", cand.lib.display(), cand.source)),
        }
    }
    Err(format!(
        "cannot load libespeak-ng (set TTSD_ESPEAK_LIB and TTSD_ESPEAK_DATA, or run scripts/setup); tried: {}",
        tried.join("; ")
    ))
}

fn env_path(name: &str) -> Option<PathBuf> {
    std::env::var_os(name).filter(|v| !v.is_empty()).map(PathBuf::from)
}

/// A `.deps/espeak-ng` style folder: the library plus `espeak-ng-data` beside it.
fn bundled(dir: &Path, source: &str, data_override: &Option<PathBuf>) -> Option<Candidate> {
    let lib = LIB_NAMES.iter().map(|n| dir.join(n)).find(|p| p.is_file())?;
    let data = data_override.clone().or_else(|| Some(dir.join("espeak-ng-data")));
    Some(Candidate { lib, data, source: source.to_string() })
}

/// Where to look, in order: env `TTSD_ESPEAK_LIB` (+ `TTSD_ESPEAK_DATA`); a
/// `.deps/espeak-ng` above the running executable; the one in this source tree;
/// the system library with its default data. `TTSD_ESPEAK_DATA` alone overrides
/// the data folder of whichever library is found.
pub(crate) fn candidates() -> Result<Vec<Candidate>, String> {
    let data_override = env_path("TTSD_ESPEAK_DATA");
    if let Some(lib) = env_path("TTSD_ESPEAK_LIB") {
        // An explicit choice: no silent fallback to another library.
        return Ok(vec![Candidate { lib, data: data_override, source: "TTSD_ESPEAK_LIB".into() }]);
    }
    let mut out: Vec<Candidate> = Vec::new();
    let push = |c: Candidate, out: &mut Vec<Candidate>| {
        let key = std::fs::canonicalize(&c.lib).unwrap_or_else(|_| c.lib.clone());
        if !out.iter().any(|o| std::fs::canonicalize(&o.lib).unwrap_or_else(|_| o.lib.clone()) == key) {
            out.push(c);
        }
    };
    if let Ok(exe) = std::env::current_exe() {
        if let Some(found) = exe
            .ancestors()
            .skip(1)
            .find_map(|d| bundled(&d.join(".deps").join("espeak-ng"), "next to the executable", &data_override))
        {
            push(found, &mut out);
        }
    }
    let tree = Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/.deps/espeak-ng"));
    if let Some(found) = bundled(tree, "source tree .deps", &data_override) {
        push(found, &mut out);
    }
    for name in SYSTEM_LIBS {
        out.push(Candidate { lib: name.into(), data: data_override.clone(), source: "system library".into() });
    }
    Ok(out)
}

/// The folder to hand to `espeak_ng_InitializePath`: the one CONTAINING
/// `espeak-ng-data` when the data folder has that name (as espeak expects),
/// otherwise the data folder itself (espeak accepts that too).
fn init_path_for(data: &Path) -> Result<PathBuf, String> {
    let data = if data.join("espeak-ng-data").is_dir() && !data.join("phontab").is_file() {
        data.join("espeak-ng-data")
    } else {
        data.to_path_buf()
    };
    if let Some(missing) = DATA_FILES.iter().find(|f| !data.join(f).is_file()) {
        return Err(format!("{} is not an espeak-ng-data folder (no {missing})", data.display()));
    }
    let path = match (data.file_name().and_then(|n| n.to_str()), data.parent()) {
        (Some("espeak-ng-data"), Some(parent)) if !parent.as_os_str().is_empty() => parent.to_path_buf(),
        _ => data,
    };
    // espeak-ng copies the path into a fixed buffer: PATH_MAX on Linux, 160 bytes elsewhere.
    #[cfg(not(target_os = "linux"))]
    if path.as_os_str().len() + "/espeak-ng-data/".len() >= 160 {
        return Err(format!(
            "{} is too long for espeak-ng (160 bytes at most here); point TTSD_ESPEAK_DATA at a shorter path",
            path.display()
        ));
    }
    Ok(path)
}

fn cstr_lossy(p: *const c_char) -> String {
    if p.is_null() {
        String::new()
    } else {
        // SAFETY: espeak-ng returns NUL-terminated strings it owns; we copy at once.
        unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned()
    }
}

impl Espeak {
    /// dlopen one candidate and initialise espeak-ng from it.
    pub(crate) fn load(cand: &Candidate) -> Result<Espeak, String> {
        let init_path = match &cand.data {
            Some(d) => Some(init_path_for(d)?),
            None => None,
        };
        let init_path_c = match &init_path {
            Some(p) => Some(
                CString::new(p.as_os_str().as_encoded_bytes())
                    .map_err(|_| format!("data path {} contains a NUL byte", p.display()))?,
            ),
            None => None,
        };
        // SAFETY: loading libespeak-ng runs no initialisers with preconditions of ours.
        let lib = unsafe { Library::new(&cand.lib) }.map_err(|e| e.to_string())?;
        macro_rules! sym {
            ($name:literal, $ty:ty) => {
                // SAFETY: the type matches the symbol's C prototype in espeak-ng 1.5x.
                *unsafe { lib.get::<$ty>(concat!($name, "\0").as_bytes()) }
                    .map_err(|e| format!("missing symbol {}: {e}", $name))?
            };
        }
        let initialize_path: InitializePathFn = sym!("espeak_ng_InitializePath", InitializePathFn);
        let initialize: InitializeFn = sym!("espeak_ng_Initialize", InitializeFn);
        let initialize_output: InitializeOutputFn = sym!("espeak_ng_InitializeOutput", InitializeOutputFn);
        let info: InfoFn = sym!("espeak_Info", InfoFn);
        let set_voice_by_name: SetVoiceByNameFn = sym!("espeak_SetVoiceByName", SetVoiceByNameFn);
        let text_to_phonemes: TextToPhonemesFn = sym!("espeak_TextToPhonemes", TextToPhonemesFn);
        // Optional: better messages, and espeak-ng's own punctuation table.
        // SAFETY: as above; absence is handled.
        let status_message = unsafe { lib.get::<StatusMessageFn>(b"espeak_ng_GetStatusCodeMessage\0") }.ok().map(|s| *s);
        let clear_context = unsafe { lib.get::<ClearErrorContextFn>(b"espeak_ng_ClearErrorContext\0") }.ok().map(|s| *s);
        let ucd_category = unsafe { lib.get::<UcdCategoryFn>(b"ucd_lookup_category\0") }.ok().map(|s| *s);
        let ucd_properties = unsafe { lib.get::<UcdPropertiesFn>(b"ucd_properties\0") }.ok().map(|s| *s);

        let describe_status = |st: c_uint| -> String {
            let mut buf = [0 as c_char; 512];
            if let Some(f) = status_message {
                // SAFETY: espeak-ng writes at most `len` bytes, NUL-terminated.
                unsafe { f(st, buf.as_mut_ptr(), buf.len()) };
                let msg = cstr_lossy(buf.as_ptr());
                if !msg.is_empty() {
                    return format!("{msg} (status {st:#x})");
                }
            }
            format!("status {st:#x}")
        };

        // SAFETY: the path outlives the call (espeak copies it); the error
        // context is espeak-ng's to allocate and ours to clear.
        unsafe {
            initialize_path(init_path_c.as_ref().map_or(std::ptr::null(), |c| c.as_ptr()));
            let mut ctx: *mut c_void = std::ptr::null_mut();
            let st = initialize(&mut ctx);
            if let Some(clear) = clear_context {
                clear(&mut ctx);
            }
            if st != ENS_OK {
                return Err(format!("espeak-ng initialisation failed: {}", describe_status(st)));
            }
            let st = initialize_output(ENOUTPUT_MODE_SYNCHRONOUS, 0, std::ptr::null());
            if st != ENS_OK {
                return Err(format!("espeak-ng output setup failed: {}", describe_status(st)));
            }
        }
        let mut data_ptr: *const c_char = std::ptr::null();
        // SAFETY: espeak_Info writes a pointer to its static data path string.
        let version = cstr_lossy(unsafe { info(&mut data_ptr) });
        let data_path = cstr_lossy(data_ptr);
        Ok(Espeak {
            _lib: lib,
            set_voice_by_name,
            text_to_phonemes,
            ucd: ucd_category.zip(ucd_properties),
            version,
            lib_path: cand.lib.display().to_string(),
            data_path,
            source: cand.source.clone(),
        })
    }

    /// `espeak_SetVoiceByName`; returns espeak's `espeak_ERROR` code (0 = ok).
    pub(crate) fn set_voice(&self, name: &CStr) -> c_int {
        // SAFETY: a valid NUL-terminated string; caller holds the one Phonemizer.
        unsafe { (self.set_voice_by_name)(name.as_ptr()) }
    }

    /// One `espeak_TextToPhonemes` call: translates the clause at `*text`,
    /// advances `*text` (to NULL at the end) and returns the clause's IPA.
    ///
    /// # Safety
    /// `*text` must point into a live NUL-terminated buffer (or be the pointer
    /// espeak-ng left there), and only one thread may call espeak-ng.
    pub(crate) unsafe fn text_to_phonemes(&self, text: &mut *const c_void) -> Option<String> {
        let p = (self.text_to_phonemes)(text, ESPEAK_CHARS_AUTO, ESPEAK_PHONEMES_IPA);
        (!p.is_null()).then(|| cstr_lossy(p))
    }

    /// espeak-ng's Unicode properties for `c` (its own punctuation table), if exported.
    pub(crate) fn ucd_properties(&self, c: char) -> Option<u64> {
        let (cat, props) = self.ucd?;
        // SAFETY: pure table look-ups on a code point.
        Some(unsafe { props(c as u32, cat(c as u32)) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_library_is_an_error_not_a_crash() {
        let cand = Candidate {
            lib: "/nonexistent/ttsd/libespeak-ng.so.1".into(),
            data: None,
            source: "test".into(),
        };
        let err = Espeak::load(&cand).err().expect("loading a missing library must fail");
        assert!(!err.is_empty());
    }

    #[test]
    fn data_folder_is_validated_before_espeak_sees_it() {
        let dir = tempfile::tempdir().unwrap();
        let err = init_path_for(dir.path()).unwrap_err();
        assert!(err.contains("not an espeak-ng-data folder"), "{err}");
    }

    #[test]
    fn bundled_data_is_passed_as_its_parent() {
        let tree = Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/.deps/espeak-ng"));
        let data = tree.join("espeak-ng-data");
        if !data.is_dir() {
            eprintln!("skipping: no bundled espeak-ng-data at {}", data.display());
            return;
        }
        assert_eq!(init_path_for(&data).unwrap(), tree);
        // Given the parent, the same folder comes back.
        assert_eq!(init_path_for(tree).unwrap(), tree);
    }
}
