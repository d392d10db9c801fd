//! Streaming audio out: 16-bit mono PCM, as WAV or bare, written chunk by
//! chunk as the daemon sends it.
//!
//! Owns the byte format only. A WAV header must come first but the length is
//! known only at the end, so the header announces the largest possible data
//! size (as sox and ffmpeg do when writing to a pipe); [`patch_wav_sizes`]
//! fixes it afterwards when the output is seekable (a file, or stdout
//! redirected to one). Never decides where the bytes go.
use std::io::{self, Seek, SeekFrom, Write};

/// Bytes in the canonical WAV header written here.
pub const WAV_HEADER_BYTES: u64 = 44;
/// The data size announced before the real one is known: the largest even
/// size that keeps the RIFF size within 32 bits.
pub const STREAM_DATA_BYTES: u32 = (u32::MAX - 36) & !1;

/// The 44-byte header of a mono 16-bit PCM WAV with `data_bytes` of samples.
pub fn wav_header(sample_rate: u32, data_bytes: u32) -> [u8; 44] {
    let mut h = [0u8; 44];
    h[0..4].copy_from_slice(b"RIFF");
    h[4..8].copy_from_slice(&(36u32.saturating_add(data_bytes)).to_le_bytes());
    h[8..12].copy_from_slice(b"WAVE");
    h[12..16].copy_from_slice(b"fmt ");
    h[16..20].copy_from_slice(&16u32.to_le_bytes());
    h[20..22].copy_from_slice(&1u16.to_le_bytes()); // PCM
    h[22..24].copy_from_slice(&1u16.to_le_bytes()); // mono
    h[24..28].copy_from_slice(&sample_rate.to_le_bytes());
    h[28..32].copy_from_slice(&(sample_rate * 2).to_le_bytes()); // byte rate
    h[32..34].copy_from_slice(&2u16.to_le_bytes()); // block align
    h[34..36].copy_from_slice(&16u16.to_le_bytes()); // bits per sample
    h[36..40].copy_from_slice(b"data");
    h[40..44].copy_from_slice(&data_bytes.to_le_bytes());
    h
}

/// Bare PCM or WAV.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Wav,
    Raw,
}

/// Writes chunks of samples to `W` as they come. The WAV header goes out
/// with the first chunk (it needs the sample rate).
pub struct PcmWriter<W: Write> {
    w: W,
    format: Format,
    rate: Option<u32>,
    data_bytes: u64,
}

impl<W: Write> PcmWriter<W> {
    pub fn new(w: W, format: Format) -> Self {
        Self { w, format, rate: None, data_bytes: 0 }
    }

    /// The sample rate of the first chunk, once there was one.
    pub fn sample_rate(&self) -> Option<u32> {
        self.rate
    }

    pub fn samples_written(&self) -> u64 {
        self.data_bytes / 2
    }

    /// Write one chunk (and the header before the first). All chunks of one
    /// stream must have the same rate.
    pub fn write(&mut self, sample_rate: u32, samples: &[i16]) -> io::Result<()> {
        match self.rate {
            None => {
                self.rate = Some(sample_rate);
                if self.format == Format::Wav {
                    self.w.write_all(&wav_header(sample_rate, STREAM_DATA_BYTES))?;
                }
            }
            Some(r) if r != sample_rate => {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("sample rate changed from {r} to {sample_rate} Hz within one stream"),
                ))
            }
            Some(_) => {}
        }
        let mut bytes = Vec::with_capacity(samples.len() * 2);
        for s in samples {
            bytes.extend_from_slice(&s.to_le_bytes());
        }
        self.w.write_all(&bytes)?;
        self.w.flush()?;
        self.data_bytes += bytes.len() as u64;
        Ok(())
    }

    /// Write the header even when no audio came (an empty WAV at `rate`).
    pub fn ensure_header(&mut self, rate: u32) -> io::Result<()> {
        if self.rate.is_none() {
            self.write(rate, &[])?;
        }
        Ok(())
    }

    /// Flush and hand back the writer and the data bytes written.
    pub fn finish(mut self) -> io::Result<(W, u64)> {
        self.w.flush()?;
        Ok((self.w, self.data_bytes))
    }
}

/// Put the real sizes into a WAV header written by [`PcmWriter`]. `Ok(false)`
/// when `f` cannot seek (a pipe): the header keeps announcing the maximum.
pub fn patch_wav_sizes<F: Write + Seek>(f: &mut F, data_bytes: u64) -> io::Result<bool> {
    let data = u32::try_from(data_bytes).unwrap_or(STREAM_DATA_BYTES).min(STREAM_DATA_BYTES);
    match f.seek(SeekFrom::Start(4)) {
        Ok(_) => {}
        Err(e) if e.raw_os_error() == Some(libc::ESPIPE) => return Ok(false),
        Err(e) => return Err(e),
    }
    f.write_all(&(36 + data).to_le_bytes())?;
    f.seek(SeekFrom::Start(40))?;
    f.write_all(&data.to_le_bytes())?;
    f.seek(SeekFrom::End(0))?;
    f.flush()?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn streamed_wav_is_valid_once_patched() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.wav");
        let mut w = PcmWriter::new(std::fs::File::create(&path).unwrap(), Format::Wav);
        w.write(22050, &[1, -2, 3]).unwrap();
        w.write(22050, &[i16::MIN, i16::MAX]).unwrap();
        assert!(w.write(16000, &[0]).is_err());
        let (mut f, bytes) = w.finish().unwrap();
        assert_eq!(bytes, 10);
        assert!(patch_wav_sizes(&mut f, bytes).unwrap());
        drop(f);
        let mut r = hound::WavReader::open(&path).unwrap();
        let spec = r.spec();
        assert_eq!((spec.channels, spec.sample_rate, spec.bits_per_sample), (1, 22050, 16));
        let s: Vec<i16> = r.samples::<i16>().map(Result::unwrap).collect();
        assert_eq!(s, vec![1, -2, 3, i16::MIN, i16::MAX]);
    }

    #[test]
    fn header_matches_hound_and_raw_has_none() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("h.wav");
        crate::client::wav::write_wav(&path, 22050, &[5, 6]).unwrap();
        let hound_bytes = std::fs::read(&path).unwrap();
        let mut mine = wav_header(22050, 4).to_vec();
        mine.extend_from_slice(&[5, 0, 6, 0]);
        assert_eq!(mine, hound_bytes);

        let mut w = PcmWriter::new(Vec::new(), Format::Raw);
        w.write(22050, &[1, 256]).unwrap();
        assert_eq!(w.finish().unwrap().0, vec![1, 0, 0, 1]);
        // A pipe announces the maximum size.
        let mut w = PcmWriter::new(Vec::new(), Format::Wav);
        w.write(8000, &[]).unwrap();
        let out = w.finish().unwrap().0;
        assert_eq!(&out[40..44], &STREAM_DATA_BYTES.to_le_bytes());
        assert_eq!(u32::from_le_bytes(out[4..8].try_into().unwrap()), STREAM_DATA_BYTES + 36);
    }
}
