//! Subtitles for `ttsctl say --subtitles FILE.srt|.vtt`: word timings
//! grouped into cues, written as SubRip (.srt) or WebVTT (.vtt).
//!
//! Owns the grouping rules (sentence ends, 42 chars, 7 words, silences over
//! 0.6 s), the timestamp format and each format's text escaping. It only
//! writes to the sink it is given: it never opens, names or creates files,
//! and never panics, whatever the timings (NaN, negative, out of order).
//! What it writes always parses: cues never overlap, never go back in
//! time, and their text holds no line break and no "-->".
use std::io::{self, Write};
use std::path::Path;

/// Most chars of text in a cue built from several words.
const MAX_CUE_CHARS: usize = 42;
/// Most words in a cue.
const MAX_CUE_WORDS: usize = 7;
/// A silence longer than this (seconds) between words starts a new cue.
const MAX_GAP_S: f64 = 0.6;
/// Latest timestamp written (about 31 years, in ms): keeps the arithmetic exact.
const MAX_MS: u64 = 1 << 50;

/// A spoken word and when it is heard. Times in seconds; `sentence_end`:
/// the last word of a sentence.
#[derive(Debug, Clone, PartialEq)]
pub struct Word {
    pub text: String,
    pub start: f64,
    pub end: f64,
    pub sentence_end: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Srt,
    Vtt,
}

impl Format {
    /// By extension, case-insensitive: `srt`, `vtt`; anything else is None.
    pub fn from_path(p: &Path) -> Option<Format> {
        let ext = p.extension()?.to_str()?;
        if ext.eq_ignore_ascii_case("srt") {
            Some(Format::Srt)
        } else if ext.eq_ignore_ascii_case("vtt") {
            Some(Format::Vtt)
        } else {
            None
        }
    }
}

/// One subtitle: seconds, and one line of text.
#[derive(Debug, Clone, PartialEq)]
pub struct Cue {
    pub start: f64,
    pub end: f64,
    pub text: String,
}

/// Groups words into cues: a cue ends at a sentence end, or before it would exceed 42 characters of text or 7 words, or at a silence gap > 0.6 s between words. Cue start = first word's start, end = last word's end (never before start; cues never overlap: a cue's end is clipped to the next cue's start).
///
/// Words whose text is only whitespace are skipped. A time that is NaN,
/// infinite or negative counts as 0, and a word starting before the
/// previous cue did starts with it, so cue starts never go back. A single
/// word longer than 42 chars makes a cue of its own.
pub fn cues(words: &[Word]) -> Vec<Cue> {
    let mut out: Vec<Cue> = Vec::new();
    // The cue being built: (start, end of its last word, text, words).
    let mut open: Option<(f64, f64, String, usize)> = None;
    for w in words {
        let text = one_line(&w.text);
        if text.is_empty() {
            continue;
        }
        let start = seconds(w.start);
        if let Some((_, last_end, cue_text, n)) = &open {
            let too_long = cue_text.chars().count() + 1 + text.chars().count() > MAX_CUE_CHARS;
            if *n >= MAX_CUE_WORDS || too_long || start - *last_end > MAX_GAP_S {
                flush(&mut out, open.take());
            }
        }
        // A cue never starts before the one written before it.
        let start = start.max(out.last().map_or(0.0, |c| c.start));
        let end = seconds(w.end);
        let (cue_start, cue_end, cue_text, n) =
            open.get_or_insert_with(|| (start, start, String::new(), 0));
        if !cue_text.is_empty() {
            cue_text.push(' ');
        }
        cue_text.push_str(&text);
        *cue_end = end.max(*cue_start);
        *n += 1;
        if w.sentence_end {
            flush(&mut out, open.take());
        }
    }
    flush(&mut out, open.take());
    // No overlap: each end is clipped to the next start (starts never decrease,
    // so the clipped end stays at or after its own start).
    for k in 1..out.len() {
        let next_start = out.get(k).map_or(f64::INFINITY, |c| c.start);
        if let Some(prev) = out.get_mut(k - 1) {
            prev.end = prev.end.min(next_start).max(prev.start);
        }
    }
    out
}

fn flush(out: &mut Vec<Cue>, open: Option<(f64, f64, String, usize)>) {
    if let Some((start, end, text, _)) = open {
        out.push(Cue { start, end, text });
    }
}

/// A time fit for arithmetic: NaN, infinite and negative times are 0.
fn seconds(t: f64) -> f64 {
    if t.is_finite() && t > 0.0 {
        t
    } else {
        0.0
    }
}

/// Writes the cues: SRT: "1\n00:00:00,000 --> 00:00:01,234\ntext\n\n"...; VTT: "WEBVTT\n\n00:00:00.000 --> 00:00:01.234\ntext\n\n"... Text is escaped as each format needs (VTT: & < > escaped as &amp; &lt; &gt;; "-->" must never appear in cue text for either format; blank lines inside text are impossible (collapse whitespace/newlines to single spaces)). Timestamps rounded to ms, hours may exceed 99? format hours with at least 2 digits.
///
/// Cues whose text is empty once whitespace is collapsed are left out (an
/// empty text line would end the cue early); SRT numbers the rest from 1.
/// An end before its start is written as the start.
pub fn write(format: Format, cues: &[Cue], out: &mut dyn Write) -> io::Result<()> {
    let sep = match format {
        Format::Srt => ',',
        Format::Vtt => '.',
    };
    if format == Format::Vtt {
        out.write_all(b"WEBVTT\n\n")?;
    }
    let mut n = 0u64;
    for cue in cues {
        let line = one_line(&cue.text);
        if line.is_empty() {
            continue;
        }
        let text = match format {
            Format::Srt => no_arrow(&line),
            Format::Vtt => escape_vtt(&line),
        };
        let start = millis(cue.start);
        let end = millis(cue.end).max(start);
        n += 1;
        if format == Format::Srt {
            writeln!(out, "{n}")?;
        }
        write!(
            out,
            "{} --> {}\n{text}\n\n",
            stamp(start, sep),
            stamp(end, sep)
        )?;
    }
    out.flush()
}

/// Seconds to whole ms, rounded; bad times are 0, huge ones MAX_MS.
fn millis(t: f64) -> u64 {
    let ms = (seconds(t) * 1000.0).round();
    if ms >= MAX_MS as f64 {
        MAX_MS
    } else {
        // Finite, in 0..MAX_MS: the cast is exact.
        ms as u64
    }
}

/// HH:MM:SS,mmm (SRT) or HH.mmm (VTT); hours take as many digits as they need.
fn stamp(ms: u64, sep: char) -> String {
    let (h, rest) = (ms / 3_600_000, ms % 3_600_000);
    let (m, rest) = (rest / 60_000, rest % 60_000);
    let (s, ms) = (rest / 1000, rest % 1000);
    format!("{h:02}:{m:02}:{s:02}{sep}{ms:03}")
}

/// Whitespace and control chars collapsed to single spaces, trimmed: a cue's
/// text is one line, so it can never hold the blank line that ends a cue.
fn one_line(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for word in s
        .split(|c: char| c.is_whitespace() || c.is_control())
        .filter(|w| !w.is_empty())
    {
        if !out.is_empty() {
            out.push(' ');
        }
        out.push_str(word);
    }
    out
}

/// SRT has no escapes: a '>' right after "--" gets a space before it, so
/// the text never reads as a timing line's arrow.
fn no_arrow(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if c == '>' && out.ends_with("--") {
            out.push(' ');
        }
        out.push(c);
    }
    out
}

/// WebVTT cue text: '&', '<' and '>' as character references ('>' too, so
/// "-->" cannot appear).
fn escape_vtt(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            _ => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn w(text: &str, start: f64, end: f64) -> Word {
        Word {
            text: text.into(),
            start,
            end,
            sentence_end: false,
        }
    }

    fn end_of_sentence(text: &str, start: f64, end: f64) -> Word {
        Word {
            sentence_end: true,
            ..w(text, start, end)
        }
    }

    /// Evenly spaced words, 0.3 s each, no gaps.
    fn run_of(texts: &[&str]) -> Vec<Word> {
        texts
            .iter()
            .enumerate()
            .map(|(i, t)| w(t, i as f64 * 0.3, (i + 1) as f64 * 0.3))
            .collect()
    }

    fn texts(cues: &[Cue]) -> Vec<&str> {
        cues.iter().map(|c| c.text.as_str()).collect()
    }

    fn written(format: Format, cues: &[Cue]) -> String {
        let mut out = Vec::new();
        write(format, cues, &mut out).unwrap();
        String::from_utf8(out).unwrap()
    }

    fn assert_ordered(cues: &[Cue]) {
        for c in cues {
            assert!(c.start <= c.end, "{c:?}");
        }
        for pair in cues.windows(2) {
            assert!(pair[0].end <= pair[1].start, "overlap: {pair:?}");
            assert!(pair[0].start <= pair[1].start, "not monotonic: {pair:?}");
        }
    }

    #[test]
    fn format_comes_from_the_extension_in_any_case() {
        assert_eq!(Format::from_path(Path::new("a/b.srt")), Some(Format::Srt));
        assert_eq!(Format::from_path(Path::new("B.SRT")), Some(Format::Srt));
        assert_eq!(Format::from_path(Path::new("x.VtT")), Some(Format::Vtt));
        assert_eq!(Format::from_path(Path::new("x.txt")), None);
        assert_eq!(Format::from_path(Path::new("srt")), None);
        assert_eq!(Format::from_path(Path::new("x.srt.gz")), None);
    }

    #[test]
    fn a_sentence_end_closes_the_cue() {
        let words = vec![
            w("Hi", 0.0, 0.2),
            end_of_sentence("there.", 0.2, 0.5),
            end_of_sentence("Bye.", 0.5, 0.8),
        ];
        let c = cues(&words);
        assert_eq!(texts(&c), vec!["Hi there.", "Bye."]);
        assert_eq!(
            (c[0].start, c[0].end, c[1].start, c[1].end),
            (0.0, 0.5, 0.5, 0.8)
        );
    }

    #[test]
    fn a_cue_holds_at_most_7_words() {
        let c = cues(&run_of(&["a", "b", "c", "d", "e", "f", "g", "h", "i"]));
        assert_eq!(texts(&c), vec!["a b c d e f g", "h i"]);
        assert_eq!(c[1].start, 7.0 * 0.3);
    }

    #[test]
    fn a_cue_holds_at_most_42_chars() {
        // 10 + 1 + 10 + 1 + 10 + 1 + 9 = 42: fits; one more char would not.
        let fits = cues(&run_of(&[
            "aaaaaaaaaa",
            "bbbbbbbbbb",
            "cccccccccc",
            "ddddddddd",
        ]));
        assert_eq!(fits.len(), 1);
        assert_eq!(fits[0].text.chars().count(), 42);
        let over = cues(&run_of(&[
            "aaaaaaaaaa",
            "bbbbbbbbbb",
            "cccccccccc",
            "dddddddddd",
        ]));
        assert_eq!(
            texts(&over),
            vec!["aaaaaaaaaa bbbbbbbbbb cccccccccc", "dddddddddd"]
        );
        let chars = cues(&run_of(&[
            "ééééééééééééééééééééé",
            "日日日日日日日日日日日日日日日日日日日日",
        ]));
        assert_eq!(chars.len(), 1, "chars, not bytes");
        let huge = "x".repeat(50);
        assert_eq!(
            texts(&cues(&run_of(&["a", &huge, "b"]))),
            vec!["a", huge.as_str(), "b"],
            "a long word stands alone"
        );
    }

    #[test]
    fn a_silence_over_0_6_s_starts_a_new_cue() {
        let c = cues(&[w("a", 0.0, 1.0), w("b", 1.5, 2.0), w("c", 2.7, 3.0)]);
        assert_eq!(texts(&c), vec!["a b", "c"]);
        assert_eq!(
            (c[0].end, c[1].start),
            (2.0, 2.7),
            "the silence is in neither cue"
        );
    }

    #[test]
    fn cue_ends_never_overlap_the_next_cue_nor_precede_their_start() {
        let c = cues(&[
            end_of_sentence("a", 0.0, 2.0),
            end_of_sentence("b", 1.0, 3.0),
            w("c", 5.0, 4.0),
        ]);
        assert_eq!(
            c.iter().map(|c| (c.start, c.end)).collect::<Vec<_>>(),
            vec![(0.0, 1.0), (1.0, 3.0), (5.0, 5.0)]
        );
        assert_ordered(&c);
    }

    #[test]
    fn bad_or_unordered_times_still_give_ordered_cues() {
        let words = vec![
            end_of_sentence("a", 5.0, 6.0),
            end_of_sentence("b", 1.0, 2.0),
            end_of_sentence("c", f64::NAN, f64::INFINITY),
            end_of_sentence("d", -3.0, -1.0),
            end_of_sentence("e", 7.0, f64::NAN),
            w("  \n\t ", 8.0, 9.0),
        ];
        let c = cues(&words);
        assert_eq!(
            texts(&c),
            vec!["a", "b", "c", "d", "e"],
            "blank words are skipped"
        );
        assert_ordered(&c);
        assert!(c.iter().all(|c| c.start.is_finite() && c.end.is_finite()));
        let s = written(Format::Srt, &c);
        assert!(!s.contains("NaN") && !s.contains("inf"), "{s}");
    }

    #[test]
    fn timestamps_are_rounded_to_ms_with_two_or_more_hour_digits() {
        assert_eq!(stamp(millis(3661.5), ','), "01:01:01,500");
        assert_eq!(stamp(millis(3661.5), '.'), "01:01:01.500");
        assert_eq!(stamp(millis(1.2344), ','), "00:00:01,234");
        assert_eq!(stamp(millis(1.2346), ','), "00:00:01,235");
        assert_eq!(stamp(millis(59.9996), ','), "00:01:00,000");
        assert_eq!(stamp(millis(360_000.0 + 0.001), '.'), "100:00:00.001");
        assert_eq!(stamp(millis(f64::NAN), ','), "00:00:00,000");
        assert_eq!(millis(1e300), MAX_MS);
    }

    #[test]
    fn srt_output_is_numbered_blocks() {
        let c = vec![
            Cue {
                start: 0.0,
                end: 1.234,
                text: "Hello there.".into(),
            },
            Cue {
                start: 3661.5,
                end: 3662.0,
                text: "Bye".into(),
            },
        ];
        assert_eq!(
            written(Format::Srt, &c),
            "1\n00:00:00,000 --> 00:00:01,234\nHello there.\n\n2\n01:01:01,500 --> 01:01:02,000\nBye\n\n"
        );
    }

    #[test]
    fn vtt_output_has_its_header_and_dotted_times() {
        let c = vec![Cue {
            start: 0.0,
            end: 1.234,
            text: "Hello".into(),
        }];
        assert_eq!(
            written(Format::Vtt, &c),
            "WEBVTT\n\n00:00:00.000 --> 00:00:01.234\nHello\n\n"
        );
    }

    #[test]
    fn empty_input_gives_an_empty_srt_and_a_bare_vtt_header() {
        assert!(cues(&[]).is_empty());
        assert_eq!(written(Format::Srt, &[]), "");
        assert_eq!(written(Format::Vtt, &[]), "WEBVTT\n\n");
    }

    #[test]
    fn vtt_escapes_markup_and_no_format_shows_an_arrow() {
        let c = vec![Cue {
            start: 0.0,
            end: 1.0,
            text: "a<b>&c --> d ---> e -->> f".into(),
        }];
        let vtt = written(Format::Vtt, &c);
        assert!(
            vtt.contains("a&lt;b&gt;&amp;c --&gt; d ---&gt; e --&gt;&gt; f\n"),
            "{vtt}"
        );
        let srt = written(Format::Srt, &c);
        assert!(srt.contains("\na<b>&c -- > d --- > e -- >> f\n"), "{srt}");
        for out in [vtt, srt] {
            assert_eq!(
                out.matches("-->").count(),
                1,
                "only the timing line's arrow: {out}"
            );
        }
    }

    #[test]
    fn cue_text_is_one_line_and_empty_cues_are_left_out() {
        let c = vec![
            Cue {
                start: 0.0,
                end: 1.0,
                text: "two\n\nlines\r\n  here\u{0}x".into(),
            },
            Cue {
                start: 1.0,
                end: 2.0,
                text: " \n ".into(),
            },
            Cue {
                start: 2.0,
                end: 1.0,
                text: "last".into(),
            },
        ];
        assert_eq!(
            written(Format::Srt, &c),
            "1\n00:00:00,000 --> 00:00:01,000\ntwo lines here x\n\n2\n00:00:02,000 --> 00:00:02,000\nlast\n\n"
        );
        assert_eq!(texts(&cues(&[w(" a\nb ", 0.0, 1.0)])), vec!["a b"]);
    }

    #[test]
    fn many_words_give_ordered_cues_within_the_limits() {
        let words: Vec<Word> = (0..500)
            .map(|i| {
                let t = i as f64 * 0.37 + if i % 13 == 0 { 1.0 } else { 0.0 };
                Word {
                    text: "word".repeat(1 + i % 4),
                    start: t,
                    end: t + 0.5,
                    sentence_end: i % 11 == 0,
                }
            })
            .collect();
        let c = cues(&words);
        assert_ordered(&c);
        for cue in &c {
            assert!(
                cue.text.split(' ').count() <= 7 && cue.text.chars().count() <= 42,
                "{cue:?}"
            );
        }
        assert_eq!(
            c.iter().map(|c| c.text.split(' ').count()).sum::<usize>(),
            500,
            "every word in exactly one cue"
        );
    }
}
