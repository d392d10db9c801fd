//! The progress bar of a long `ttsctl say`, on stderr, only when stderr is a
//! terminal: sentences done of the total, seconds of audio, real-time factor.
//!
//! The protocol's Audio frames do not say which sentence they belong to, so
//! "sentences done" is estimated: the client splits the text the way the
//! phonemizer mostly does ([`super::cli::sentence_lengths`]) and counts a
//! sentence done once the audio received covers its share of the characters,
//! as spoken at the rate observed so far. The count is exact at the end. Never
//! writes to stdout.
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::time::{Duration, Instant};

/// Texts with fewer sentences than this get no bar.
pub const MIN_SENTENCES: usize = 3;
/// Characters of English text spoken per second of audio at length_scale 1
/// (18 to 21 measured with the bundled voice, pauses included).
pub const CHARS_PER_SECOND: f64 = 19.0;

pub struct Progress {
    bar: ProgressBar,
    /// Cumulative character counts at each sentence's end.
    ends: Vec<usize>,
    started: Instant,
    audio_seconds: f64,
    /// Characters spoken per second of audio, as guessed beforehand.
    chars_per_second: f64,
}

/// How many sentences of `ends` (cumulative character counts) are done once
/// `fraction` of all the audio has arrived, assuming audio length follows
/// character count.
pub fn sentences_done(ends: &[usize], fraction: f64) -> usize {
    let total = *ends.last().unwrap_or(&0) as f64;
    let covered = total * fraction.clamp(0.0, 1.0) + 1e-9;
    ends.iter().take_while(|&&e| (e as f64) <= covered).count()
}

impl Progress {
    /// A bar for a text of these sentences, if it is long enough and stderr
    /// is a terminal; `None` otherwise. `length_scale` is the request's (a
    /// slower voice makes more audio per character).
    pub fn new(sentences: &[usize], length_scale: Option<f32>, stderr_is_terminal: bool) -> Option<Self> {
        if !stderr_is_terminal || sentences.len() < MIN_SENTENCES {
            return None;
        }
        let mut ends = Vec::with_capacity(sentences.len());
        let mut sum = 0;
        for s in sentences {
            sum += s;
            ends.push(sum);
        }
        let bar = ProgressBar::with_draw_target(Some(sentences.len() as u64), ProgressDrawTarget::stderr());
        bar.set_style(
            ProgressStyle::with_template("{spinner} [{bar:30}] ~{pos}/{len} sentences  {msg}")
                .expect("valid template")
                .progress_chars("=> "),
        );
        bar.enable_steady_tick(Duration::from_millis(120));
        bar.set_message("waiting for a worker");
        let chars_per_second = CHARS_PER_SECOND / f64::from(length_scale.unwrap_or(1.0)).max(0.05);
        Some(Self { bar, ends, started: Instant::now(), audio_seconds: 0.0, chars_per_second })
    }

    /// Audio arrived: `seconds` more of it.
    pub fn audio(&mut self, seconds: f64) {
        self.audio_seconds += seconds;
        let elapsed = self.started.elapsed().as_secs_f64();
        // The audio the whole text makes, guessed from its length (never less
        // than what already arrived).
        let chars = *self.ends.last().unwrap_or(&1) as f64;
        let expected_total = (chars / self.chars_per_second).max(self.audio_seconds);
        let done = sentences_done(&self.ends, self.audio_seconds / expected_total);
        self.bar.set_position(done.min(self.ends.len().saturating_sub(1)) as u64);
        self.bar.set_message(format!("{:.1} s audio  RTF {:.2}", self.audio_seconds, elapsed / self.audio_seconds.max(1e-9)));
    }

    /// Clear the bar (before the summary line or an error is printed).
    pub fn finish(self) {
        self.bar.set_position(self.ends.len() as u64);
        self.bar.finish_and_clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sentences_done_follows_the_characters() {
        let ends = [10, 20, 40];
        assert_eq!(sentences_done(&ends, 0.0), 0);
        assert_eq!(sentences_done(&ends, 0.25), 1);
        assert_eq!(sentences_done(&ends, 0.49), 1);
        assert_eq!(sentences_done(&ends, 0.5), 2);
        assert_eq!(sentences_done(&ends, 1.0), 3);
        assert_eq!(sentences_done(&[], 1.0), 0);
        assert!(Progress::new(&[5, 5, 5, 5], None, false).is_none(), "no bar when stderr is not a terminal");
        assert!(Progress::new(&[5], None, true).is_none(), "no bar for short texts");
    }
}
