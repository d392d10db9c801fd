//! The on-disk cache of converted weights: one safetensors file per voice
//! file, keyed by the voice's path, size and modification time.
//!
//! Owns the cache's location, file names and format. A cache it cannot
//! read or write is a miss, never an error; it never touches MLX and never
//! writes anywhere but its own directory (atomically: temp file + rename).
use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::time::UNIX_EPOCH;

use super::{ConvAttrs, Tensor};

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

pub(super) struct CacheEntry {
    pub(super) file: PathBuf,
    /// Format, canonical path, size and mtime of the voice: stored in the
    /// file's metadata and compared on read, so a hash collision is a miss.
    identity: String,
}

impl CacheEntry {
    pub(super) fn for_voice(onnx_path: &Path, dir: &Path) -> Option<CacheEntry> {
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
    pub(super) fn read(&self) -> Option<(BTreeMap<String, Tensor>, BTreeMap<String, ConvAttrs>)> {
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
    pub(super) fn write(&self, tensors: &BTreeMap<String, Tensor>, conv_attrs: &BTreeMap<String, ConvAttrs>) -> bool {
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
}
