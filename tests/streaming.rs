//! Protocol version 2 against a real daemon and the real voice: text that
//! arrives in pieces, word and phoneme timings, SSML marks and breaks.
//!
//! Checks what a client sees on the socket (audio, timings, the one
//! terminal reply), with noise off and fixed seeds so audio compares
//! sample for sample. It never relies on wall-clock bounds except where
//! the order of events is the point (first audio before the last piece).
mod common;

use common::*;
use std::time::{Duration, Instant};
use ttsd::client::Client;
use ttsd::protocol::{
    ErrorCode, MarkTiming, Reply, SpeechOptions, SynthRequest, TimingLevel, WordTiming,
};

/// Deterministic speech: noise off, a fixed seed.
fn quiet(text: &str) -> SynthRequest {
    SynthRequest {
        noise_scale: Some(0.0),
        noise_w: Some(0.0),
        seed: Some(3),
        ..SynthRequest::text(text)
    }
}

fn words() -> SpeechOptions {
    SpeechOptions {
        timings: TimingLevel::Words,
        ssml: false,
    }
}

/// What one request produced.
#[derive(Debug, Default)]
struct Heard {
    samples: Vec<i16>,
    words: Vec<WordTiming>,
    phonemes: Vec<(String, u64, u64)>,
    marks: Vec<MarkTiming>,
    /// Samples received when each Timings reply arrived.
    timings_at: Vec<u64>,
    end: Option<Result<f64, (ErrorCode, String)>>,
}

fn collect(c: &mut Client, id: u64) -> Heard {
    let mut h = Heard::default();
    for r in until_terminal(c, id) {
        match r {
            Reply::Audio { id: i, samples, .. } if i == id => h.samples.extend(samples),
            Reply::Timings {
                id: i,
                words,
                phonemes,
                marks,
            } if i == id => {
                h.timings_at.push(h.samples.len() as u64);
                h.words.extend(words);
                h.phonemes
                    .extend(phonemes.into_iter().map(|p| (p.phoneme, p.start, p.end)));
                h.marks.extend(marks);
            }
            Reply::Done {
                id: i,
                audio_seconds,
                ..
            } if i == id => h.end = Some(Ok(audio_seconds)),
            Reply::Error {
                id: Some(i),
                code,
                message,
            } if i == id => h.end = Some(Err((code, message))),
            _ => {}
        }
    }
    h
}

fn whole(c: &mut Client, req: SynthRequest, opts: SpeechOptions) -> Heard {
    let id = c.submit_with(req, opts).unwrap();
    collect(c, id)
}

fn in_pieces(c: &mut Client, req: SynthRequest, opts: SpeechOptions, pieces: &[&str]) -> Heard {
    let id = c
        .open_text(
            SynthRequest {
                input: ttsd::protocol::Input::Text(String::new()),
                ..req
            },
            opts,
        )
        .unwrap();
    for p in pieces {
        c.append_text(id, p).unwrap();
    }
    c.finish_text(id).unwrap();
    collect(c, id)
}

/// Cuts `text` every `n` bytes (on character boundaries): mid-word and mid-sentence.
fn cut(text: &str, n: usize) -> Vec<&str> {
    let mut out = Vec::new();
    let mut rest = text;
    while !rest.is_empty() {
        let mut at = n.min(rest.len());
        while !rest.is_char_boundary(at) {
            at += 1;
        }
        let (a, b) = rest.split_at(at);
        out.push(a);
        rest = b;
    }
    out
}

const PARAGRAPH: &str = "Good morning. The weather today is mild, with a light breeze! Will it rain later? Probably not.";

#[test]
fn pieces_split_mid_word_give_the_same_audio_as_the_whole_text() {
    let d = Daemon::start("workers = 1");
    let mut c = d.client();
    let at_once = whole(&mut c, quiet(PARAGRAPH), SpeechOptions::default());
    assert!(matches!(at_once.end, Some(Ok(_))), "{:?}", at_once.end);
    for n in [1, 7, 23] {
        let streamed = in_pieces(
            &mut c,
            quiet(""),
            SpeechOptions::default(),
            &cut(PARAGRAPH, n),
        );
        assert!(
            matches!(streamed.end, Some(Ok(_))),
            "pieces of {n}: {:?}",
            streamed.end
        );
        assert_eq!(
            streamed.samples.len(),
            at_once.samples.len(),
            "pieces of {n} bytes"
        );
        assert!(
            streamed.samples == at_once.samples,
            "pieces of {n} bytes: the audio differs"
        );
    }
    // Streamed decoder windows too.
    let req = SynthRequest {
        stream: true,
        ..quiet("")
    };
    let streamed = in_pieces(&mut c, req, SpeechOptions::default(), &cut(PARAGRAPH, 5));
    let at_once = whole(
        &mut c,
        SynthRequest {
            stream: true,
            ..quiet(PARAGRAPH)
        },
        SpeechOptions::default(),
    );
    assert!(
        streamed.samples == at_once.samples,
        "streamed windows differ"
    );
}

#[test]
fn the_first_sentence_is_spoken_before_the_last_piece_is_sent() {
    let d = Daemon::start("workers = 1");
    let mut c = d.client();
    let id = c
        .open_text(
            quiet("The first sentence is complete. And the sec"),
            SpeechOptions::default(),
        )
        .unwrap();
    // Nothing more is sent until audio has come back.
    let t = Instant::now();
    let mut got_audio = false;
    while !got_audio {
        assert!(
            t.elapsed() < Duration::from_secs(30),
            "no audio while the text is open"
        );
        match c.recv().unwrap() {
            Reply::Audio { id: i, .. } if i == id => got_audio = true,
            Reply::Done { .. } | Reply::Error { .. } => {
                panic!("ended before the text was finished")
            }
            _ => {}
        }
    }
    c.append_text(id, "ond one ends here.").unwrap();
    c.finish_text(id).unwrap();
    let h = collect(&mut c, id);
    assert!(matches!(h.end, Some(Ok(_))), "{:?}", h.end);
    assert!(
        h.samples.len() > 22050 / 2,
        "the second sentence was spoken too"
    );
}

#[test]
fn an_unfinished_sentence_waits_for_what_follows_it() {
    // "Dr. Smith": the dot is not a sentence end once the next word is
    // seen; before that nothing may be spoken.
    let d = Daemon::start("workers = 1");
    let mut c = d.client();
    let id = c
        .open_text(quiet("I saw Dr."), SpeechOptions::default())
        .unwrap();
    c.set_timeout(Some(Duration::from_millis(1500))).unwrap();
    let mut early = Vec::new();
    while let Ok(r) = c.recv() {
        early.push(r);
    }
    assert!(
        !early.iter().any(|r| matches!(r, Reply::Audio { .. })),
        "spoke before the sentence was known complete: {early:?}"
    );
    c.set_timeout(Some(Duration::from_secs(60))).unwrap();
    c.append_text(id, " Smith today.").unwrap();
    c.finish_text(id).unwrap();
    let streamed = collect(&mut c, id);
    let at_once = whole(
        &mut c,
        quiet("I saw Dr. Smith today."),
        SpeechOptions::default(),
    );
    assert!(
        streamed.samples == at_once.samples,
        "split at the abbreviation"
    );
}

#[test]
fn word_timings_are_monotonic_inside_the_audio_and_name_their_words() {
    let d = Daemon::start("workers = 1");
    let mut c = d.client();
    let opts = SpeechOptions {
        timings: TimingLevel::Phonemes,
        ssml: false,
    };
    let h = whole(&mut c, quiet(PARAGRAPH), opts);
    let total = h.samples.len() as u64;
    let expected: Vec<&str> = PARAGRAPH
        .split_whitespace()
        .map(|w| w.trim_matches(|c: char| !c.is_alphanumeric()))
        .collect();
    let said: Vec<&str> = h.words.iter().map(|w| w.word.as_str()).collect();
    assert_eq!(said, expected);
    let chars: Vec<char> = PARAGRAPH.chars().collect();
    let mut last_end = 0;
    for w in &h.words {
        let text: String = chars[w.text_start as usize..w.text_end as usize]
            .iter()
            .collect();
        assert_eq!(text, w.word, "offsets point at the word");
        assert!(w.start < w.end, "{w:?}");
        assert!(w.start >= last_end, "words overlap: {w:?}");
        assert!(w.end <= total, "{w:?} past the audio ({total})");
        last_end = w.end;
    }
    assert!(!h.phonemes.is_empty());
    let mut last = 0;
    for (p, s, e) in &h.phonemes {
        assert!(*s >= last && s <= e && *e <= total, "{p} {s} {e}");
        last = *s;
    }
    // One Timings per sentence, each before its sentence's audio.
    assert_eq!(h.timings_at.len(), 4, "{:?}", h.timings_at);
    // Streamed text: the same timings.
    let streamed = in_pieces(&mut c, quiet(""), words(), &cut(PARAGRAPH, 9));
    assert_eq!(streamed.words, h.words);
}

/// Energy of `samples[a..b]`, per sample.
fn energy(samples: &[i16], a: u64, b: u64) -> f64 {
    let s = &samples[a as usize..(b as usize).min(samples.len())];
    s.iter().map(|&v| (v as f64).powi(2)).sum::<f64>() / s.len().max(1) as f64
}

#[test]
fn each_words_window_holds_that_words_speech() {
    // Words separated by pauses: the speech is inside the words' windows,
    // the silence between them outside.
    let d = Daemon::start("workers = 1");
    let mut c = d.client();
    let h = whole(&mut c, quiet("One. Two. Three. Four."), words());
    assert_eq!(h.words.len(), 4, "{:?}", h.words);
    let all = energy(&h.samples, 0, h.samples.len() as u64);
    for w in &h.words {
        let inside = energy(&h.samples, w.start, w.end);
        assert!(
            inside > 0.5 * all,
            "{} is quiet inside its window ({inside:.0} against {all:.0})",
            w.word
        );
    }
    for pair in h.words.windows(2) {
        let gap = energy(&h.samples, pair[0].end, pair[1].start);
        let inside = energy(&h.samples, pair[1].start, pair[1].end);
        assert!(
            gap < 0.25 * inside,
            "between {} and {}: {gap:.0} against {inside:.0}",
            pair[0].word,
            pair[1].word
        );
    }
}

#[test]
fn ssml_marks_come_out_in_order_at_their_words() {
    let d = Daemon::start("workers = 1");
    let mut c = d.client();
    let ssml = r#"<speak>First <mark name="a"/>sentence here. Then <mark name="b"/>a <emphasis>second</emphasis> one &amp; more.<break time="300ms"/><mark name="end"/></speak>"#;
    let h = whole(
        &mut c,
        quiet(ssml),
        SpeechOptions {
            timings: TimingLevel::Words,
            ssml: true,
        },
    );
    assert!(matches!(h.end, Some(Ok(_))), "{:?}", h.end);
    let names: Vec<&str> = h.marks.iter().map(|m| m.name.as_str()).collect();
    assert_eq!(names, ["a", "b", "end"]);
    let word = |w: &str| {
        h.words
            .iter()
            .find(|x| x.word == w)
            .unwrap_or_else(|| panic!("no word {w}: {:?}", h.words))
    };
    assert_eq!(h.marks[0].sample, word("sentence").start);
    assert_eq!(h.marks[1].sample, word("a").start);
    assert!(
        h.marks[1].sample > word("here").end,
        "b is in the second sentence"
    );
    assert_eq!(
        h.marks[2].sample,
        h.samples.len() as u64,
        "a mark after the last break falls at the end"
    );
    // The break's silence: 300 ms at the end.
    let tail = &h.samples[h.samples.len() - 6615..];
    assert!(tail.iter().all(|&s| s == 0), "the break is silence");
    // Offsets are in the markup.
    let src: Vec<char> = ssml.chars().collect();
    let w = word("second");
    assert_eq!(
        src[w.text_start as usize..w.text_end as usize]
            .iter()
            .collect::<String>(),
        "second"
    );
    // Marks alone are reported without asking for timings.
    let h = whole(
        &mut c,
        quiet(ssml),
        SpeechOptions {
            timings: TimingLevel::None,
            ssml: true,
        },
    );
    assert_eq!(h.marks.len(), 3);
    assert!(h.words.is_empty());
}

#[test]
fn ssml_in_pieces_gives_the_same_marks_and_audio() {
    let d = Daemon::start("workers = 1");
    let mut c = d.client();
    let ssml = r#"<speak>Hello <mark name="m1"/>world. <p>A &lt;new&gt; paragraph</p> ends <mark name="m2"/>here.</speak>"#;
    let opts = SpeechOptions {
        timings: TimingLevel::Words,
        ssml: true,
    };
    let at_once = whole(&mut c, quiet(ssml), opts);
    for n in [1, 4, 11] {
        let streamed = in_pieces(&mut c, quiet(""), opts, &cut(ssml, n));
        assert_eq!(streamed.marks, at_once.marks, "pieces of {n}");
        assert!(
            streamed.samples == at_once.samples,
            "pieces of {n}: audio differs"
        );
    }
}

#[test]
fn bad_or_odd_ssml_gives_speech_or_a_clear_bad_request() {
    let d = Daemon::start("workers = 1");
    let mut c = d.client();
    let opts = SpeechOptions {
        timings: TimingLevel::None,
        ssml: true,
    };
    let speech = [
        "<speak>An <unknown attr=\"1\">unknown</unknown> tag.</speak>",
        "<speak><p><s>Nested <prosody rate=\"slow\"><emphasis>tags</emphasis></prosody>.</s></p></speak>",
        "No speak element &amp; an entity &#233; &#x263A;.",
        "<speak>Unclosed elements are accepted",
        "<?xml version=\"1.0\"?><!-- a comment --><speak>Declared.</speak>",
    ];
    for s in speech {
        let h = whole(&mut c, quiet(s), opts);
        assert!(matches!(h.end, Some(Ok(_))), "{s}: {:?}", h.end);
        assert!(h.samples.len() > 2205, "{s}");
    }
    let refused = [
        "<speak>Mismatched</p></speak>",
        "<speak>An &unknown; entity</speak>",
        "<speak>A < b</speak>",
        "<speak><break time=\"forever\"/></speak>",
        "<speak><mark/></speak>",
        "<speak>Unterminated <mark name=\"x\"",
        "<speak><break time=\"50s\"/>Too long a break</speak>",
        "<speak><mark name=\"only a mark\"/></speak>",
    ];
    for s in refused {
        match whole(&mut c, quiet(s), opts).end {
            Some(Err((ErrorCode::BadRequest, msg))) => assert!(!msg.is_empty(), "{s}"),
            other => panic!("{s}: {other:?}"),
        }
    }
    // The daemon still serves.
    assert!(matches!(
        whole(&mut c, quiet("Still here."), SpeechOptions::default()).end,
        Some(Ok(_))
    ));
}

#[test]
fn a_piece_past_max_text_chars_ends_the_request_with_a_clear_error() {
    let d = Daemon::start("workers = 1\nmax_text_chars = 100");
    let mut c = d.client();
    let id = c
        .open_text(
            quiet("A first sentence of the text. "),
            SpeechOptions::default(),
        )
        .unwrap();
    c.append_text(id, &"word ".repeat(20)).unwrap();
    let h = collect(&mut c, id);
    match h.end {
        Some(Err((ErrorCode::BadRequest, msg))) => assert!(msg.contains("max_text_chars"), "{msg}"),
        other => panic!("{other:?}"),
    }
    // The request is over: more pieces are refused, the connection serves on.
    c.append_text(id, "more").unwrap();
    match c.recv().unwrap() {
        Reply::Error {
            id: None,
            code: ErrorCode::UnknownId,
            ..
        } => {}
        other => panic!("{other:?}"),
    }
    assert!(matches!(
        whole(&mut c, quiet("Fine."), SpeechOptions::default()).end,
        Some(Ok(_))
    ));
}

#[test]
fn streamed_text_misuse_is_answered_without_ending_anything() {
    let d = Daemon::start("workers = 1");
    let mut c = d.client();
    c.append_text(77, "nothing is open").unwrap();
    assert!(matches!(
        c.recv().unwrap(),
        Reply::Error {
            id: None,
            code: ErrorCode::UnknownId,
            ..
        }
    ));
    // A plain synthesize request is not a streamed text.
    let id = c
        .submit(SynthRequest {
            fault: None,
            ..quiet(MEDIUM)
        })
        .unwrap();
    c.append_text(id, "more").unwrap();
    let replies = until_terminal(&mut c, id);
    assert!(
        replies.iter().any(|r| matches!(
            r,
            Reply::Error {
                id: None,
                code: ErrorCode::BadRequest,
                ..
            }
        )),
        "{replies:?}"
    );
    assert!(matches!(replies.last(), Some(Reply::Done { .. })));
    // Finishing twice.
    let id = c
        .open_text(quiet("Short."), SpeechOptions::default())
        .unwrap();
    c.finish_text(id).unwrap();
    c.finish_text(id).unwrap();
    let replies = until_terminal(&mut c, id);
    assert_eq!(
        replies
            .iter()
            .filter(|r| matches!(r, Reply::Done { .. }))
            .count(),
        1,
        "{replies:?}"
    );
    // An empty streamed text has nothing to speak.
    let id = c.open_text(quiet(""), SpeechOptions::default()).unwrap();
    c.append_text(id, "  ").unwrap();
    c.finish_text(id).unwrap();
    assert!(matches!(
        collect(&mut c, id).end,
        Some(Err((ErrorCode::BadRequest, _)))
    ));
    // A stream left open times out (the deadline counts from its last piece).
    let id = c
        .open_text(
            SynthRequest {
                timeout_ms: Some(800),
                ..quiet("Never finished")
            },
            SpeechOptions::default(),
        )
        .unwrap();
    assert!(matches!(
        collect(&mut c, id).end,
        Some(Err((ErrorCode::Timeout, _)))
    ));
}

#[test]
fn a_version_1_client_is_served_and_cannot_send_version_2_requests() {
    use std::os::unix::net::UnixStream;
    use ttsd::protocol::{self, Request};
    let d = Daemon::start("workers = 1");
    let mut s = UnixStream::connect(&d.socket).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    protocol::write_frame(
        &mut s,
        &Request::Hello {
            version: 1,
            client: "old".into(),
        },
    )
    .unwrap();
    let read = |s: &mut UnixStream| {
        protocol::read_frame::<Reply, _>(s, 1 << 26)
            .unwrap()
            .unwrap()
    };
    assert!(matches!(read(&mut s), Reply::HelloOk { version: 1, .. }));
    protocol::write_frame(
        &mut s,
        &Request::OpenText {
            req: quiet("Hi."),
            opts: SpeechOptions::default(),
        },
    )
    .unwrap();
    assert!(matches!(
        read(&mut s),
        Reply::Error {
            id: None,
            code: ErrorCode::BadRequest,
            ..
        }
    ));
    protocol::write_frame(
        &mut s,
        &Request::Synthesize(SynthRequest {
            id: 4,
            ..quiet("Hi.")
        }),
    )
    .unwrap();
    loop {
        match read(&mut s) {
            Reply::Done { id: 4, .. } => break,
            Reply::Timings { .. } => panic!("a version 1 client got a version 2 reply"),
            Reply::Error { .. } => panic!("refused"),
            _ => {}
        }
    }
}

#[test]
fn timings_of_a_sentence_cut_for_length_stay_in_order_and_inside_the_audio() {
    // No full stop for ~600 characters: the engine cuts it into pieces of
    // at most 800 phoneme ids, each its own model call.
    let d = Daemon::start("workers = 1");
    let mut c = d.client();
    let text = "one, two, three, four, five, six, seven, eight, nine, ten, ".repeat(10);
    let h = whole(&mut c, quiet(&text), words());
    assert!(matches!(h.end, Some(Ok(_))), "{:?}", h.end);
    assert!(h.timings_at.len() >= 2, "cut into {} pieces", h.timings_at.len());
    let expected: Vec<&str> = text.split_whitespace().map(|w| w.trim_matches(',')).collect();
    let said: Vec<&str> = h.words.iter().map(|w| w.word.as_str()).collect();
    assert_eq!(said, expected);
    let total = h.samples.len() as u64;
    let mut last = 0;
    for w in &h.words {
        assert!(w.start >= last && w.start < w.end && w.end <= total, "{w:?} (audio {total})");
        last = w.end;
    }
}

#[test]
fn a_streamed_text_without_a_sentence_yet_does_not_hold_a_worker() {
    // One worker. A text opened with no sentence end waits in the queue;
    // another client's request is served meanwhile; the text is spoken
    // once its sentence arrives.
    let d = Daemon::start("workers = 1");
    let mut streaming = d.client();
    let id = streaming.open_text(quiet("A language model is thinking about"), SpeechOptions::default()).unwrap();
    let mut other = d.client();
    let done = whole(&mut other, quiet("Meanwhile, another program speaks."), SpeechOptions::default());
    assert!(matches!(done.end, Some(Ok(_))), "{:?}", done.end);
    let s = d.status();
    assert!(s.workers.iter().all(|w| w.current_request.is_none()), "a worker held by an idle text: {:?}", s.workers);
    assert_eq!(s.queue_depth, 1, "the open text waits in the queue");
    streaming.append_text(id, " what to say. Then it goes on").unwrap();
    streaming.finish_text(id).unwrap();
    let h = collect(&mut streaming, id);
    assert!(matches!(h.end, Some(Ok(_))), "{:?}", h.end);
    let at_once = whole(&mut streaming, quiet("A language model is thinking about what to say. Then it goes on"), SpeechOptions::default());
    assert!(h.samples == at_once.samples);
}
