//! Writing received audio as a 16-bit mono WAV file (hound).
//!
//! Owns the file format only; never talks to the daemon.
use std::path::Path;

fn spec(sample_rate: u32) -> hound::WavSpec {
    hound::WavSpec { channels: 1, sample_rate, bits_per_sample: 16, sample_format: hound::SampleFormat::Int }
}

pub fn write_wav(path: &Path, sample_rate: u32, samples: &[i16]) -> Result<(), hound::Error> {
    let mut w = hound::WavWriter::create(path, spec(sample_rate))?;
    for &s in samples {
        w.write_sample(s)?;
    }
    w.finalize()
}

/// The whole WAV file in memory (for writing to a pipe, which cannot seek).
pub fn wav_bytes(sample_rate: u32, samples: &[i16]) -> Result<Vec<u8>, hound::Error> {
    let mut cursor = std::io::Cursor::new(Vec::new());
    let mut w = hound::WavWriter::new(&mut cursor, spec(sample_rate))?;
    for &s in samples {
        w.write_sample(s)?;
    }
    w.finalize()?;
    Ok(cursor.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_a_readable_wav() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("a.wav");
        write_wav(&p, 22050, &[0, 100, -100]).unwrap();
        let mut r = hound::WavReader::open(&p).unwrap();
        assert_eq!(r.spec().sample_rate, 22050);
        let s: Vec<i16> = r.samples::<i16>().map(Result::unwrap).collect();
        assert_eq!(s, vec![0, 100, -100]);
        assert_eq!(wav_bytes(22050, &[0, 100, -100]).unwrap(), std::fs::read(&p).unwrap());
    }
}
