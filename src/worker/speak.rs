//! One text job's speech, sentence by sentence: the text as it arrives
//! (all at once, or in pieces of a streamed text), SSML turned into plain
//! text with marks and breaks, each complete sentence handed to the
//! engine, and every chunk's timings moved from the sentence's own
//! offsets to the request's (characters of the text as sent, samples from
//! the start of the request's audio).
//!
//! Owns the unspoken text, the seed and sample counters that make a text
//! spoken in pieces sound exactly like the same text spoken at once, and
//! the order of what goes out (a sentence's timings, then its audio). It
//! runs on the worker's main thread, calls the engine only from there,
//! and never reads the channel itself: the job loop feeds it.
use crate::engine::ssml::{self, StreamParser};
use crate::engine::{Chunk, Engine, EngineError, SentenceTimings, SynthInput, SynthParams};
use crate::protocol::worker::FromWorker;
use crate::protocol::{clip, MarkTiming, PhonemeTiming, TimingLevel, WordTiming, ECHO_CHARS};
use std::collections::VecDeque;

/// Where the speech of one job stands.
pub struct Speaker {
    job: u64,
    voice: String,
    params: SynthParams,
    /// The seed of the request's first sentence; sentence n gets seed + n.
    seed: u64,
    sentences: u64,
    /// Samples handed out so far.
    samples: u64,
    sample_rate: u32,
    ssml: Option<StreamParser>,
    /// Plain text received and not spoken yet.
    pending: String,
    /// Plain-text character offset of `pending`'s start.
    base: usize,
    /// For every plain-text character of `pending`, its offset in the text
    /// as the client sent it (the same offset unless SSML).
    source: VecDeque<usize>,
    /// Marks and breaks not reached yet, at plain-text offsets.
    marks: VecDeque<ssml::Mark>,
    breaks: VecDeque<ssml::Break>,
    /// Characters of the client's text received (plain text only: for
    /// SSML the parser maps each character to its place in the markup).
    received: usize,
    /// The text arrives in pieces (or is SSML): a piece with nothing to say
    /// ("?!" before the next sentence) is passed over rather than refused.
    piecewise: bool,
    spoke: bool,
    /// Timings wanted: words (and phonemes), or marks.
    timings: bool,
}

/// Whether the text so far ends here (speak all of it) or more may follow
/// (speak only whole sentences).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Until {
    Sentence,
    End,
}

impl Speaker {
    pub fn new(
        job: u64,
        voice: &str,
        params: SynthParams,
        sample_rate: u32,
        ssml: bool,
        streamed: bool,
    ) -> Self {
        let seed = params
            .seed
            .unwrap_or_else(crate::engine::voice::random_seed);
        let timings = params.timings != TimingLevel::None;
        Self {
            job,
            voice: voice.to_string(),
            params,
            seed,
            sentences: 0,
            samples: 0,
            sample_rate,
            ssml: ssml.then(StreamParser::new),
            pending: String::new(),
            base: 0,
            source: VecDeque::new(),
            marks: VecDeque::new(),
            breaks: VecDeque::new(),
            received: 0,
            piecewise: streamed || ssml,
            spoke: false,
            timings,
        }
    }

    /// Samples handed out so far.
    pub fn samples(&self) -> u64 {
        self.samples
    }

    /// Takes the next piece of the text as the client sent it.
    pub fn push(&mut self, piece: &str) -> Result<(), EngineError> {
        match &mut self.ssml {
            Some(parser) => {
                let speech = parser
                    .push(piece)
                    .map_err(|e| EngineError::InvalidInput(format!("SSML: {e}")))?;
                self.take(speech);
            }
            None => {
                let from = self.received;
                let n = piece.chars().count();
                self.pending.push_str(piece);
                self.source.extend(from..from + n);
                self.received += n;
            }
        }
        Ok(())
    }

    /// The text is complete: whatever SSML held back must now parse.
    pub fn finish_text(&mut self) -> Result<(), EngineError> {
        if let Some(parser) = &mut self.ssml {
            let speech = parser
                .finish()
                .map_err(|e| EngineError::InvalidInput(format!("SSML: {e}")))?;
            self.take(speech);
        }
        Ok(())
    }

    fn take(&mut self, speech: ssml::Speech) {
        self.pending.push_str(&speech.text);
        self.source.extend(speech.source);
        self.marks.extend(speech.marks);
        self.breaks.extend(speech.breaks);
        if !self.marks.is_empty() {
            self.timings = true;
        }
    }

    /// Speaks what is ready: whole sentences (and everything before a
    /// break), or with [`Until::End`] all that is left. `send` gets every
    /// message in order; `cancelled` is the engine's poll.
    pub fn speak(
        &mut self,
        engine: &mut Engine,
        until: Until,
        cancelled: &dyn Fn() -> bool,
        send: &mut dyn FnMut(FromWorker) -> Result<(), EngineError>,
    ) -> Result<(), EngineError> {
        loop {
            let end = self.base + self.pending.chars().count();
            // A break: everything before it is here; speak up to it.
            let brk = self.breaks.front().copied().filter(|b| b.at <= end);
            let upto = match (brk, until) {
                (Some(b), _) => b.at,
                (None, Until::End) => end,
                (None, Until::Sentence) => {
                    self.base + engine.complete_sentences(&self.voice, &self.pending)?
                }
            };
            if upto > self.base {
                self.say(engine, upto - self.base, cancelled, send)?;
            }
            match brk {
                Some(b) => {
                    self.breaks.pop_front();
                    self.marks_before(b.at, Some(b.order), self.samples, send)?;
                    let n = (b.ms as u64 * self.sample_rate as u64 / 1000) as usize;
                    if n > 0 {
                        self.samples += n as u64;
                        send(FromWorker::Chunk {
                            job: self.job,
                            sample_rate: self.sample_rate,
                            samples: vec![0; n],
                        })?;
                    }
                }
                None => break,
            }
        }
        if until == Until::End {
            let everything = usize::MAX;
            self.marks_before(everything, None, self.samples, send)?;
            if !self.spoke {
                return Err(EngineError::InvalidInput(
                    "text has nothing to speak".into(),
                ));
            }
        }
        Ok(())
    }

    /// Speaks the first `n` characters of `pending`.
    fn say(
        &mut self,
        engine: &mut Engine,
        n: usize,
        cancelled: &dyn Fn() -> bool,
        send: &mut dyn FnMut(FromWorker) -> Result<(), EngineError>,
    ) -> Result<(), EngineError> {
        let cut = self
            .pending
            .char_indices()
            .nth(n)
            .map_or(self.pending.len(), |(b, _)| b);
        let text: String = self.pending.drain(..cut).collect();
        let source: Vec<usize> = self.source.drain(..n.min(self.source.len())).collect();
        let base = self.base;
        self.base += n;
        if self.piecewise && !text.chars().any(|c| c.is_alphanumeric()) {
            return Ok(());
        }
        let timings_on = self.timings;
        let words_wanted = self.params.timings != TimingLevel::None;
        let phonemes = self.params.timings == TimingLevel::Phonemes;
        // Marks need the words' places even when no timings were asked for.
        let level = if timings_on && !words_wanted { TimingLevel::Words } else { self.params.timings };
        let params =
            SynthParams { seed: Some(self.seed.wrapping_add(self.sentences)), timings: level, ..self.params.clone() };
        let chars: Vec<char> = text.chars().collect();
        let (job, rate) = (self.job, self.sample_rate);
        let (samples, marks) = (&mut self.samples, &mut self.marks);
        let mut on_chunk = |c: Chunk| -> Result<(), EngineError> {
            if let (Some(t), true) = (&c.timings, timings_on) {
                send(timings_message(job, t, base, *samples, &chars, &source, marks, words_wanted, phonemes))?;
            }
            *samples += c.samples.len() as u64;
            send(FromWorker::Chunk { job, sample_rate: rate, samples: c.samples })
        };
        let summary = engine.synthesize(&self.voice, &SynthInput::Text(text), &params, cancelled, &mut on_chunk)?;
        self.sentences += summary.sentences as u64;
        self.spoke = true;
        Ok(())
    }

    /// Reports the marks up to plain-text offset `at` as falling on
    /// `sample`; at `at` itself, only those before the break of `order`.
    fn marks_before(
        &mut self,
        at: usize,
        order: Option<u64>,
        sample: u64,
        send: &mut dyn FnMut(FromWorker) -> Result<(), EngineError>,
    ) -> Result<(), EngineError> {
        let mut marks = Vec::new();
        let before =
            |m: &ssml::Mark| m.at < at || (m.at == at && order.is_none_or(|o| m.order < o));
        while self.marks.front().is_some_and(before) {
            if let Some(m) = self.marks.pop_front() {
                marks.push(MarkTiming {
                    name: m.name,
                    sample,
                });
            }
        }
        if marks.is_empty() {
            return Ok(());
        }
        send(FromWorker::Timings {
            job: self.job,
            words: Vec::new(),
            phonemes: Vec::new(),
            marks,
        })
    }
}

/// One sentence's timings in the request's terms. `base`: plain-text
/// offset of the spoken text's start; `start`: samples before the
/// sentence; `chars`/`source`: the spoken text and where each of its
/// characters was in the text as sent. Marks inside the sentence fall on
/// the start of the first word at or after them (or the sentence's end).
#[allow(clippy::too_many_arguments)]
fn timings_message(
    job: u64,
    t: &SentenceTimings,
    base: usize,
    start: u64,
    chars: &[char],
    source: &[usize],
    marks: &mut VecDeque<ssml::Mark>,
    words_wanted: bool,
    phonemes_wanted: bool,
) -> FromWorker {
    let src = |i: usize| {
        source
            .get(i)
            .copied()
            .or_else(|| source.last().map(|s| s + 1))
            .unwrap_or(base + i)
    };
    let words: Vec<WordTiming> = t
        .words
        .iter()
        .map(|w| {
            let text: String = chars
                .get(w.chars.clone())
                .map(|c| c.iter().collect())
                .unwrap_or_default();
            WordTiming {
                text_start: src(w.chars.start) as u32,
                // One past the word's last character, in the text as sent.
                text_end: w
                    .chars
                    .end
                    .checked_sub(1)
                    .map_or(src(w.chars.start), |e| src(e) + 1) as u32,
                word: clip(&text, ECHO_CHARS).into_owned(),
                start: start + w.start,
                end: start + w.end,
            }
        })
        .collect();
    let mut found = Vec::new();
    let sentence_end = base + t.chars.end;
    while marks.front().is_some_and(|m| m.at < sentence_end) {
        let Some(m) = marks.pop_front() else { break };
        let sample = t
            .words
            .iter()
            .find(|w| base + w.chars.start >= m.at)
            .map_or(start + t.samples, |w| start + w.start);
        found.push(MarkTiming {
            name: m.name,
            sample,
        });
    }
    let phonemes = if phonemes_wanted {
        t.phonemes
            .iter()
            .map(|p| PhonemeTiming {
                phoneme: p.phoneme.to_string(),
                start: start + p.start,
                end: start + p.end,
            })
            .collect()
    } else {
        Vec::new()
    };
    FromWorker::Timings {
        job,
        words: if words_wanted { words } else { Vec::new() },
        phonemes,
        marks: found,
    }
}
