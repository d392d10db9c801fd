//! What `ttsctl say --timings` and `--subtitles` write: the `Timings`
//! replies of one request, collected, then written as JSON lines and as
//! subtitle cues.
//!
//! Owns turning samples into seconds (with the rate of the request's
//! audio, which may arrive after its first timings) and the JSON lines'
//! shape. Files are written like `-o` ([`super::outfile`]): a temporary
//! file renamed into place once the request has succeeded, so a failed
//! request leaves an existing file as it was. It never talks to the
//! daemon.
use super::outfile;
use super::subtitles::{self, Format, Word};
use crate::protocol::{MarkTiming, PhonemeTiming, WordTiming};
use serde_json::json;
use std::io::{self, Write};
use std::path::Path;

/// The timings of one request, in the order they came.
#[derive(Debug, Default)]
pub struct Timeline {
    /// Each `Timings` reply's words (one sentence each).
    sentences: Vec<Vec<WordTiming>>,
    phonemes: Vec<PhonemeTiming>,
    marks: Vec<MarkTiming>,
}

impl Timeline {
    /// One `Timings` reply.
    pub fn add(&mut self, words: Vec<WordTiming>, phonemes: Vec<PhonemeTiming>, marks: Vec<MarkTiming>) {
        if !words.is_empty() {
            self.sentences.push(words);
        }
        self.phonemes.extend(phonemes);
        self.marks.extend(marks);
    }

    pub fn words(&self) -> impl Iterator<Item = &WordTiming> {
        self.sentences.iter().flatten()
    }

    /// The JSON lines: a line per word, per phoneme and per mark, in the
    /// order they are spoken (words before the phonemes and marks of the
    /// same instant). Times in seconds at `rate`, samples as they came.
    pub fn json_lines(&self, rate: u32, out: &mut dyn Write) -> io::Result<()> {
        let secs = |s: u64| (s as f64 / rate.max(1) as f64 * 1e6).round() / 1e6;
        let mut lines: Vec<(u64, u8, serde_json::Value)> = Vec::new();
        for w in self.words() {
            let v = json!({
                "word": w.word, "text_start": w.text_start, "text_end": w.text_end,
                "start": secs(w.start), "end": secs(w.end), "start_sample": w.start, "end_sample": w.end,
            });
            lines.push((w.start, 0, v));
        }
        for p in &self.phonemes {
            let v = json!({"phoneme": p.phoneme, "start": secs(p.start), "end": secs(p.end), "start_sample": p.start, "end_sample": p.end});
            lines.push((p.start, 1, v));
        }
        for m in &self.marks {
            lines.push((m.sample, 2, json!({"mark": m.name, "time": secs(m.sample), "sample": m.sample})));
        }
        // Stable: same-instant lines keep their kind's order, each kind its own.
        lines.sort_by_key(|(at, kind, _)| (*at, *kind));
        for (_, _, v) in lines {
            writeln!(out, "{v}")?;
        }
        Ok(())
    }

    /// Subtitle cues: a few words each, never across a sentence.
    pub fn subtitles(&self, rate: u32, format: Format, out: &mut dyn Write) -> io::Result<()> {
        let secs = |s: u64| s as f64 / rate.max(1) as f64;
        let words: Vec<Word> = self
            .sentences
            .iter()
            .flat_map(|sentence| {
                let last = sentence.len().saturating_sub(1);
                sentence.iter().enumerate().map(move |(i, w)| Word {
                    text: w.word.clone(),
                    start: secs(w.start),
                    end: secs(w.end),
                    sentence_end: i == last,
                })
            })
            .collect();
        subtitles::write(format, &subtitles::cues(&words), out)
    }
}

/// Writes `path` through a temporary file beside it, renamed into place
/// only when `write` succeeded (devices and fifos are written in place).
pub fn write_file(path: &Path, write: &dyn Fn(&mut dyn Write) -> io::Result<()>) -> io::Result<()> {
    let mut out = outfile::open(path)?;
    {
        let mut w = io::BufWriter::new(&mut out.file);
        write(&mut w)?;
        w.flush()?;
    }
    out.commit()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn word(w: &str, start: u64, end: u64) -> WordTiming {
        WordTiming { text_start: 0, text_end: w.len() as u32, word: w.into(), start, end }
    }

    #[test]
    fn json_lines_are_in_time_order_with_seconds() {
        let mut t = Timeline::default();
        t.add(vec![word("Hello", 100, 2205), word("world", 2205, 4410)], vec![], vec![MarkTiming { name: "m".into(), sample: 2205 }]);
        let mut out = Vec::new();
        t.json_lines(22050, &mut out).unwrap();
        let lines: Vec<serde_json::Value> =
            String::from_utf8(out).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
        assert_eq!(lines.len(), 3);
        assert_eq!(lines[0]["word"], "Hello");
        assert_eq!(lines[1]["word"], "world");
        assert_eq!(lines[1]["start"], 0.1);
        assert_eq!(lines[2]["mark"], "m");
        assert_eq!(lines[2]["sample"], 2205);
    }

    #[test]
    fn subtitles_end_cues_at_sentences() {
        let mut t = Timeline::default();
        t.add(vec![word("One", 0, 22050)], vec![], vec![]);
        t.add(vec![word("Two", 22050, 44100), word("three", 44100, 66150)], vec![], vec![]);
        let mut out = Vec::new();
        t.subtitles(22050, Format::Srt, &mut out).unwrap();
        let srt = String::from_utf8(out).unwrap();
        assert_eq!(srt, "1\n00:00:00,000 --> 00:00:01,000\nOne\n\n2\n00:00:01,000 --> 00:00:03,000\nTwo three\n\n");
    }

    #[test]
    fn a_failed_write_leaves_the_old_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.jsonl");
        std::fs::write(&path, "old").unwrap();
        let err = write_file(&path, &|w| {
            w.write_all(b"new")?;
            Err(io::Error::other("failed half way"))
        });
        assert!(err.is_err());
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "old");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1, "no temporary file left");
        write_file(&path, &|w| w.write_all(b"new")).unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "new");
    }
}
