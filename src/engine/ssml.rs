//! SSML (a subset) to plain text, marks and breaks, parsed incrementally.
//!
//! Owns the markup rules applied to text sent with the `ssml` flag: which
//! elements mean something (`mark`, `break`, `p`, `s`, `sub`; every other
//! element is stripped and its content kept), entity decoding, and the
//! char-offset bookkeeping that places marks and breaks in the plain text
//! and maps each plain char back to its source. Input may arrive in pieces
//! split anywhere; any split gives exactly the result (and the error) of
//! the whole document at once.
//!
//! It must never do I/O, touch the engine, or panic on any input, and it
//! never holds more than one bounded construct back between pieces (a tag
//! of at most [`MAX_TAG_CHARS`], an entity of at most [`MAX_ENTITY_CHARS`],
//! two chars of a possible `-->` or `]]>`): comments and CDATA sections are
//! consumed as they arrive, however long.
//!
//! All offsets are in chars (Unicode scalar values), never bytes.
use thiserror::Error;

/// Longest tag (from `<` to `>`, also `<?...?>`) held back or parsed.
const MAX_TAG_CHARS: usize = 4096;
/// Deepest nesting of open elements.
const MAX_DEPTH: usize = 64;
/// Longest entity reference, `&` and `;` included; a longer candidate is text.
const MAX_ENTITY_CHARS: usize = 32;
const MAX_MARK_NAME_CHARS: usize = 256;
const MAX_BREAK_MS: u32 = 10_000;
/// Most chars of input an error message quotes.
const QUOTE_CHARS: usize = 64;

const COMMENT_OPEN: &[char] = &['<', '!', '-', '-'];
const COMMENT_CLOSE: &[char] = &['-', '-', '>'];
const CDATA_OPEN: &[char] = &['<', '!', '[', 'C', 'D', 'A', 'T', 'A', '['];
const CDATA_CLOSE: &[char] = &[']', ']', '>'];

/// Plain text and what the markup said about it, for the text produced by one `push`/`finish`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Speech {
    /// Plain text to speak (tags removed, entities decoded). Breaks and <p>/<s> boundaries are NOT encoded in the text.
    pub text: String,
    /// Marks, at char offsets (Unicode scalar values) into the WHOLE plain text produced so far by this parser (not only this delta).
    pub marks: Vec<Mark>,
    /// Pauses, at char offsets into the whole plain text so far.
    pub breaks: Vec<Break>,
    /// For each char of `text` (same count as text.chars()), the char offset in the whole SSML source so far where that char came from (for an entity, the offset of its '&').
    pub source: Vec<usize>,
}

impl Speech {
    /// `next` (a later delta of the same parser) after `self`: offsets are
    /// already global, so this is concatenation.
    fn append(&mut self, next: Speech) {
        self.text.push_str(&next.text);
        self.marks.extend(next.marks);
        self.breaks.extend(next.breaks);
        self.source.extend(next.source);
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Mark {
    pub name: String,
    pub at: usize,
    /// Place among this parser's marks and breaks, from 0: orders a mark
    /// and a break at the same offset as the markup had them.
    pub order: u64,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Break {
    pub at: usize,
    pub ms: u32,
    /// As [`Mark::order`].
    pub order: u64,
}

/// What is wrong with the markup. Every `at` is a char offset into the whole
/// source; quoted input is cut to 64 chars.
#[derive(Debug, Clone, PartialEq, Error)]
pub enum SsmlError {
    #[error("'<' at char {at} must start a tag; write &lt; for a literal '<'")]
    StrayLessThan { at: usize },
    #[error("tag at char {at} is longer than {limit} chars: {start:?}")]
    TagTooLong {
        at: usize,
        limit: usize,
        start: String,
    },
    /// The input ended inside a tag, comment, CDATA section or declaration.
    #[error("unterminated {what} at char {at}: {text:?}")]
    Unterminated {
        at: usize,
        what: &'static str,
        text: String,
    },
    #[error("unsupported declaration at char {at}: only <!-- comments --> and <![CDATA[...]]> may start with '<!'")]
    Declaration { at: usize },
    #[error("malformed tag at char {at}: {reason}: {tag:?}")]
    BadTag {
        at: usize,
        reason: &'static str,
        tag: String,
    },
    #[error("attribute {name:?} at char {at} has an unquoted value; write {name}=\"...\"")]
    UnquotedAttribute { at: usize, name: String },
    #[error("duplicate attribute {name:?} at char {at}")]
    DuplicateAttribute { at: usize, name: String },
    #[error("'<' in the value of attribute {name:?} at char {at}; write &lt;")]
    LessThanInValue { at: usize, name: String },
    #[error("<{element}> at char {at} needs a {attribute:?} attribute")]
    MissingAttribute {
        at: usize,
        element: &'static str,
        attribute: &'static str,
    },
    #[error("mark name at char {at} must be 1 to {limit} chars long, not {len}")]
    MarkName { at: usize, len: usize, limit: usize },
    #[error("break time {value:?} at char {at} is not a duration such as \"500ms\" or \"1.5s\"")]
    BreakTime { at: usize, value: String },
    #[error("break time {value:?} at char {at} is longer than the limit of {limit} ms")]
    BreakTooLong {
        at: usize,
        value: String,
        limit: u32,
    },
    #[error("break strength {value:?} at char {at} is not one of none, x-weak, weak, medium, strong, x-strong")]
    BreakStrength { at: usize, value: String },
    #[error(
        "closing tag </{close}> at char {at} does not match <{open}>, open since char {open_at}"
    )]
    MismatchedClose {
        at: usize,
        close: String,
        open: String,
        open_at: usize,
    },
    #[error("closing tag </{close}> at char {at} has no open element to close")]
    UnopenedClose { at: usize, close: String },
    #[error("element at char {at} is nested deeper than {limit} levels")]
    TooDeep { at: usize, limit: usize },
    #[error("unknown entity &{name}; at char {at}")]
    UnknownEntity { at: usize, name: String },
    #[error("character reference {text:?} at char {at} is not an allowed character")]
    BadCharRef { at: usize, text: String },
    #[error("SSML input given after finish()")]
    Finished,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Mode {
    Text,
    /// Inside `<!-- ... -->` that opened at `at`: skipped.
    Comment {
        at: usize,
    },
    /// Inside `<![CDATA[ ... ]]>` that opened at `at`: content is text.
    Cdata {
        at: usize,
    },
}

#[derive(Debug, Clone)]
struct Open {
    name: String,
    at: usize,
    /// A `<sub alias>` whose content is not spoken.
    suppress: bool,
}

#[derive(Debug, Clone)]
enum State {
    Running,
    /// An error is final: the same one comes back on every later call.
    Failed(SsmlError),
    Finished,
}

/// How far the search for the end of the tag held back at `buf[0]` got, so
/// that one-char pieces do not rescan it from its start each time.
#[derive(Debug, Clone, Copy)]
struct Scan {
    pos: usize,
    quote: Option<char>,
}

enum TagEnd {
    /// Index of the closing '>' in the buffer.
    At(usize),
    More(Scan),
    TooLong,
}

enum Entity {
    /// The decoded char and the index just past the ';'.
    Char(char, usize),
    /// Not an entity reference: the '&' is text.
    Literal,
    /// The buffer ends inside what could still become one.
    More,
}

/// Parses SSML fed in pieces. An error is final (later calls return it
/// again); after [`StreamParser::finish`] every call fails with
/// [`SsmlError::Finished`].
pub struct StreamParser {
    /// Input not consumed yet: only ever a held-back construct between calls.
    buf: Vec<char>,
    /// Source offset of `buf[0]`.
    buf_at: usize,
    mode: Mode,
    stack: Vec<Open>,
    /// Open `<sub alias>` elements: while any is open, text is not spoken.
    suppress: usize,
    /// Plain chars produced so far.
    emitted: usize,
    /// Marks and breaks produced so far.
    events: u64,
    /// The last plain char produced.
    last: Option<char>,
    scan: Option<Scan>,
    state: State,
}

impl Default for StreamParser {
    fn default() -> Self {
        Self::new()
    }
}

impl StreamParser {
    pub fn new() -> Self {
        Self {
            buf: Vec::new(),
            buf_at: 0,
            mode: Mode::Text,
            stack: Vec::new(),
            suppress: 0,
            emitted: 0,
            events: 0,
            last: None,
            scan: None,
            state: State::Running,
        }
    }

    /// Feeds the next piece; returns what became complete. Holds back an incomplete tag, comment, or entity at the end until the next piece.
    pub fn push(&mut self, piece: &str) -> Result<Speech, SsmlError> {
        self.step(piece, false)
    }

    /// No more pieces: a held-back tag, comment, CDATA section or
    /// declaration is an error; a held-back candidate entity (`AT&T` at the
    /// very end) is text, as it would be before any other non-name char.
    /// Elements still open are accepted (streaming clients may never close
    /// `<speak>`).
    pub fn finish(&mut self) -> Result<Speech, SsmlError> {
        self.step("", true)
    }

    fn step(&mut self, piece: &str, fin: bool) -> Result<Speech, SsmlError> {
        match &self.state {
            State::Failed(e) => return Err(e.clone()),
            State::Finished => return Err(SsmlError::Finished),
            State::Running => {}
        }
        self.buf.extend(piece.chars());
        let mut out = Speech::default();
        match self.run(fin, &mut out) {
            Ok(()) => {
                if fin {
                    self.state = State::Finished;
                    self.buf = Vec::new();
                }
                Ok(out)
            }
            Err(e) => {
                self.state = State::Failed(e.clone());
                self.buf = Vec::new();
                Err(e)
            }
        }
    }

    fn run(&mut self, fin: bool, out: &mut Speech) -> Result<(), SsmlError> {
        let mut i = 0;
        let res = self.consume(&mut i, fin, out);
        let i = i.min(self.buf.len());
        self.buf.drain(..i);
        self.buf_at += i;
        res?;
        if !fin {
            return Ok(());
        }
        let text = clip_chars(&self.buf);
        match self.mode {
            Mode::Comment { at } => Err(SsmlError::Unterminated {
                at,
                what: "comment",
                text,
            }),
            Mode::Cdata { at } => Err(SsmlError::Unterminated {
                at,
                what: "CDATA section",
                text,
            }),
            // In text, a final pass never holds anything back; this is a guard.
            Mode::Text if !self.buf.is_empty() => Err(SsmlError::Unterminated {
                at: self.buf_at,
                what: "markup",
                text,
            }),
            Mode::Text => Ok(()),
        }
    }

    /// Consumes `buf` from `*i` as far as it is complete.
    fn consume(&mut self, i: &mut usize, fin: bool, out: &mut Speech) -> Result<(), SsmlError> {
        while let Some(&c) = self.buf.get(*i) {
            match self.mode {
                Mode::Text => match c {
                    '<' => match self.markup(*i, fin, out)? {
                        Some(next) => *i = next,
                        None => break,
                    },
                    '&' => match entity(&self.buf, *i, fin, self.buf_at)? {
                        Entity::Char(ch, next) => {
                            self.emit(out, ch, self.buf_at + *i);
                            *i = next;
                        }
                        Entity::Literal => {
                            self.emit(out, '&', self.buf_at + *i);
                            *i += 1;
                        }
                        Entity::More => break,
                    },
                    _ => {
                        self.emit(out, c, self.buf_at + *i);
                        *i += 1;
                    }
                },
                Mode::Comment { .. } => {
                    let (_, next, done) = find_close(&self.buf, *i, COMMENT_CLOSE);
                    *i = next;
                    if !done {
                        break;
                    }
                    self.mode = Mode::Text;
                }
                Mode::Cdata { .. } => {
                    let (end, next, done) = find_close(&self.buf, *i, CDATA_CLOSE);
                    for k in *i..end {
                        if let Some(&ch) = self.buf.get(k) {
                            self.emit(out, ch, self.buf_at + k);
                        }
                    }
                    *i = next;
                    if !done {
                        break;
                    }
                    self.mode = Mode::Text;
                }
            }
        }
        Ok(())
    }

    /// The markup starting with the '<' at `buf[i]`: the index past it, or
    /// None to wait for more input.
    fn markup(
        &mut self,
        i: usize,
        fin: bool,
        out: &mut Speech,
    ) -> Result<Option<usize>, SsmlError> {
        let at = self.buf_at + i;
        let rest = self.buf.get(i..).unwrap_or(&[]);
        // The scan state belongs to the tag held back at the buffer's start.
        let resume = if i == 0 { self.scan.take() } else { None };
        self.scan = None;
        let pi = match rest.get(1) {
            None if fin => return Err(SsmlError::StrayLessThan { at }),
            None => return Ok(None),
            Some('!') => {
                for (open, mode) in [
                    (COMMENT_OPEN, Mode::Comment { at }),
                    (CDATA_OPEN, Mode::Cdata { at }),
                ] {
                    if rest.starts_with(open) {
                        self.mode = mode;
                        return Ok(Some(i + open.len()));
                    }
                }
                let partial = [COMMENT_OPEN, CDATA_OPEN]
                    .iter()
                    .any(|open| open.starts_with(rest));
                return match (partial, fin) {
                    (true, false) => Ok(None),
                    (true, true) => Err(SsmlError::Unterminated {
                        at,
                        what: "declaration",
                        text: clip_chars(rest),
                    }),
                    (false, _) => Err(SsmlError::Declaration { at }),
                };
            }
            Some('?') => true,
            Some(&c) if c == '/' || is_name_start(c) => false,
            Some(_) => return Err(SsmlError::StrayLessThan { at }),
        };
        match tag_end(rest, pi, resume) {
            TagEnd::More(_) if fin => {
                let what = if pi { "processing instruction" } else { "tag" };
                Err(SsmlError::Unterminated {
                    at,
                    what,
                    text: clip_chars(rest),
                })
            }
            TagEnd::More(scan) => {
                self.scan = Some(scan);
                Ok(None)
            }
            TagEnd::TooLong => Err(SsmlError::TagTooLong {
                at,
                limit: MAX_TAG_CHARS,
                start: clip_chars(rest),
            }),
            // `<?xml ...?>` and any other processing instruction: skipped.
            TagEnd::At(end) if pi => Ok(Some(i + end + 1)),
            TagEnd::At(end) => {
                // A copy (at most MAX_TAG_CHARS) so that the tag's effects may change `self`.
                let tag: Vec<char> = rest.get(..=end).unwrap_or(&[]).to_vec();
                self.tag(&tag, at, out)?;
                Ok(Some(i + end + 1))
            }
        }
    }

    /// A complete start, end or empty-element tag `t` (from '<' to '>') at `at`.
    fn tag(&mut self, t: &[char], at: usize, out: &mut Speech) -> Result<(), SsmlError> {
        let inner = t.get(1..t.len().saturating_sub(1)).unwrap_or(&[]);
        let bad = |reason: &'static str| SsmlError::BadTag {
            at,
            reason,
            tag: clip_chars(t),
        };
        if inner.first() == Some(&'/') {
            let mut p = 1;
            let name = read_name(inner, &mut p);
            if name.is_empty() {
                return Err(bad("expected an element name after '</'"));
            }
            skip_ws(inner, &mut p);
            if p != inner.len() {
                return Err(bad("a closing tag holds nothing but the element's name"));
            }
            return self.close(&name, at, out);
        }
        let mut p = 0;
        let name = read_name(inner, &mut p);
        if name.is_empty() {
            return Err(bad("expected an element name after '<'"));
        }
        let mut attrs: Vec<Attr> = Vec::new();
        let mut empty = false;
        loop {
            let had_ws = skip_ws(inner, &mut p);
            let Some(&c) = inner.get(p) else { break };
            if c == '/' {
                if p + 1 == inner.len() {
                    empty = true;
                    break;
                }
                return Err(bad("'/' may only end a tag, as in <x/>"));
            }
            if !had_ws {
                return Err(bad("expected whitespace before an attribute"));
            }
            // +1: `inner` starts after the '<'.
            let name_at = at + 1 + p;
            let attr = read_name(inner, &mut p);
            if attr.is_empty() {
                return Err(bad("expected an attribute name"));
            }
            skip_ws(inner, &mut p);
            if inner.get(p) != Some(&'=') {
                return Err(bad(
                    "expected '=' and a quoted value after an attribute name",
                ));
            }
            p += 1;
            skip_ws(inner, &mut p);
            let quote = match inner.get(p) {
                Some(&q) if q == '"' || q == '\'' => q,
                _ => {
                    return Err(SsmlError::UnquotedAttribute {
                        at: name_at,
                        name: clip(&attr),
                    })
                }
            };
            p += 1;
            let start = p;
            while inner.get(p).is_some_and(|&c| c != quote) {
                p += 1;
            }
            if inner.get(p).is_none() {
                return Err(bad("an attribute value lacks its closing quote"));
            }
            let value = decode_value(inner.get(start..p).unwrap_or(&[]), at + 1 + start, &attr)?;
            p += 1;
            if attrs.iter().any(|a| a.name == attr) {
                return Err(SsmlError::DuplicateAttribute {
                    at: name_at,
                    name: clip(&attr),
                });
            }
            attrs.push(Attr {
                name: attr,
                value,
                at: name_at,
            });
        }
        self.open(name, &attrs, empty, at, out)
    }

    fn open(
        &mut self,
        name: String,
        attrs: &[Attr],
        empty: bool,
        at: usize,
        out: &mut Speech,
    ) -> Result<(), SsmlError> {
        if !empty && self.stack.len() >= MAX_DEPTH {
            return Err(SsmlError::TooDeep {
                at,
                limit: MAX_DEPTH,
            });
        }
        match name.as_str() {
            "mark" => {
                let Some(mark) = attr(attrs, "name") else {
                    return Err(SsmlError::MissingAttribute {
                        at,
                        element: "mark",
                        attribute: "name",
                    });
                };
                let len = mark.value.chars().count();
                if len == 0 || len > MAX_MARK_NAME_CHARS {
                    return Err(SsmlError::MarkName {
                        at: mark.at,
                        len,
                        limit: MAX_MARK_NAME_CHARS,
                    });
                }
                out.marks.push(Mark {
                    name: mark.value.clone(),
                    at: self.emitted,
                    order: self.events,
                });
                self.events += 1;
            }
            "break" => {
                let ms = break_ms(attrs)?;
                out.breaks.push(Break {
                    at: self.emitted,
                    ms,
                    order: self.events,
                });
                self.events += 1;
            }
            // A paragraph or sentence starts: keep it apart from what came before.
            "p" | "s" => self.boundary(out, at),
            _ => {}
        }
        let alias = if name == "sub" {
            attr(attrs, "alias")
        } else {
            None
        };
        if let Some(alias) = alias {
            // The alias is spoken in the tag's place.
            for c in alias.value.chars() {
                self.emit(out, c, at);
            }
        }
        if empty {
            return Ok(());
        }
        let suppress = alias.is_some();
        self.suppress += usize::from(suppress);
        self.stack.push(Open { name, at, suppress });
        Ok(())
    }

    fn close(&mut self, name: &str, at: usize, out: &mut Speech) -> Result<(), SsmlError> {
        let Some(top) = self.stack.last() else {
            return Err(SsmlError::UnopenedClose {
                at,
                close: clip(name),
            });
        };
        if top.name != name {
            return Err(SsmlError::MismatchedClose {
                at,
                close: clip(name),
                open: clip(&top.name),
                open_at: top.at,
            });
        }
        if top.suppress {
            self.suppress = self.suppress.saturating_sub(1);
        }
        self.stack.pop();
        if name == "p" || name == "s" {
            self.boundary(out, at);
        }
        Ok(())
    }

    /// A space, unless the text is empty or already ends in whitespace: words
    /// of adjacent sentences and paragraphs must not run together.
    fn boundary(&mut self, out: &mut Speech, at: usize) {
        if self.last.is_some_and(|c| !c.is_whitespace()) {
            self.emit(out, ' ', at);
        }
    }

    fn emit(&mut self, out: &mut Speech, c: char, src: usize) {
        if self.suppress > 0 {
            return;
        }
        out.text.push(c);
        out.source.push(src);
        self.emitted += 1;
        self.last = Some(c);
    }
}

/// A whole document at once: StreamParser::new(), push(src), finish(), deltas merged.
pub fn parse(src: &str) -> Result<Speech, SsmlError> {
    let mut parser = StreamParser::new();
    let mut all = parser.push(src)?;
    all.append(parser.finish()?);
    Ok(all)
}

#[derive(Debug)]
struct Attr {
    name: String,
    value: String,
    /// Source offset of the attribute's name.
    at: usize,
}

fn attr<'a>(attrs: &'a [Attr], name: &str) -> Option<&'a Attr> {
    attrs.iter().find(|a| a.name == name)
}

/// `<break>`'s pause: `time` wins over `strength`; neither is medium.
fn break_ms(attrs: &[Attr]) -> Result<u32, SsmlError> {
    if let Some(time) = attr(attrs, "time") {
        return parse_time(&time.value, time.at);
    }
    let Some(strength) = attr(attrs, "strength") else {
        return Ok(500);
    };
    match strength.value.trim() {
        "none" => Ok(0),
        "x-weak" => Ok(100),
        "weak" => Ok(250),
        "medium" => Ok(500),
        "strong" => Ok(750),
        "x-strong" => Ok(1000),
        _ => Err(SsmlError::BreakStrength {
            at: strength.at,
            value: clip(&strength.value),
        }),
    }
}

/// "500ms", "1.5s", " 2s ": a non-negative decimal with a unit.
fn parse_time(value: &str, at: usize) -> Result<u32, SsmlError> {
    let bad = || SsmlError::BreakTime {
        at,
        value: clip(value),
    };
    let v = value.trim();
    let (number, scale) = match v.strip_suffix("ms") {
        Some(n) => (n, 1.0),
        None => (v.strip_suffix('s').ok_or_else(bad)?, 1000.0),
    };
    let digits = number.chars().filter(char::is_ascii_digit).count();
    let dots = number.chars().filter(|&c| c == '.').count();
    // Only digits and one optional point; the length bound keeps f64 exact enough.
    if digits == 0 || dots > 1 || digits + dots != number.len() || number.len() > 32 {
        return Err(bad());
    }
    let ms = number.parse::<f64>().map_err(|_| bad())? * scale;
    if !ms.is_finite() || ms > f64::from(MAX_BREAK_MS) {
        return Err(SsmlError::BreakTooLong {
            at,
            value: clip(value),
            limit: MAX_BREAK_MS,
        });
    }
    // In range 0..=MAX_BREAK_MS, so the cast cannot truncate.
    Ok(ms.round() as u32)
}

/// Decodes an attribute value's chars (`base`: the source offset of the first).
fn decode_value(raw: &[char], base: usize, name: &str) -> Result<String, SsmlError> {
    let mut s = String::with_capacity(raw.len());
    let mut j = 0;
    while let Some(&c) = raw.get(j) {
        match c {
            '<' => {
                return Err(SsmlError::LessThanInValue {
                    at: base + j,
                    name: clip(name),
                })
            }
            // The value is complete: a candidate entity cut by its end is text.
            '&' => match entity(raw, j, true, base)? {
                Entity::Char(ch, next) => {
                    s.push(ch);
                    j = next;
                }
                Entity::Literal | Entity::More => {
                    s.push('&');
                    j += 1;
                }
            },
            _ => {
                s.push(c);
                j += 1;
            }
        }
    }
    Ok(s)
}

/// The entity reference starting with the '&' at `buf[i]` (`base`: the
/// source offset of `buf[0]`). Lenient: anything that is not a well-formed
/// reference of at most MAX_ENTITY_CHARS leaves the '&' as text; a
/// well-formed one that names nothing known is an error.
fn entity(buf: &[char], i: usize, fin: bool, base: usize) -> Result<Entity, SsmlError> {
    #[derive(Clone, Copy)]
    enum St {
        Start,
        Hash,
        HexStart,
        Dec,
        Hex,
        Name,
    }
    let mut st = St::Start;
    let mut j = i + 1;
    loop {
        // The reference would span i..=j: more than the limit.
        if j - i >= MAX_ENTITY_CHARS {
            return Ok(Entity::Literal);
        }
        let Some(&c) = buf.get(j) else {
            return Ok(if fin { Entity::Literal } else { Entity::More });
        };
        st = match (st, c) {
            (St::Start, '#') => St::Hash,
            (St::Start, c) if c.is_ascii_alphabetic() || c == '_' => St::Name,
            (St::Hash, 'x') => St::HexStart,
            (St::Hash, c) if c.is_ascii_digit() => St::Dec,
            (St::HexStart | St::Hex, c) if c.is_ascii_hexdigit() => St::Hex,
            (St::Dec, c) if c.is_ascii_digit() => St::Dec,
            (St::Name, c) if c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.') => St::Name,
            (St::Dec | St::Hex | St::Name, ';') => {
                let body: String = buf.get(i + 1..j).unwrap_or(&[]).iter().collect();
                let at = base + i;
                let decoded = match st {
                    St::Name => named_entity(&body).ok_or_else(|| SsmlError::UnknownEntity {
                        at,
                        name: clip(&body),
                    })?,
                    _ => {
                        let (digits, radix) = match body.strip_prefix("#x") {
                            Some(hex) => (hex, 16),
                            None => (body.get(1..).unwrap_or(""), 10),
                        };
                        u32::from_str_radix(digits, radix)
                            .ok()
                            .and_then(char::from_u32)
                            .filter(|&c| xml_char(c))
                            .ok_or_else(|| SsmlError::BadCharRef {
                                at,
                                text: clip(&format!("&{body};")),
                            })?
                    }
                };
                return Ok(Entity::Char(decoded, j + 1));
            }
            _ => return Ok(Entity::Literal),
        };
        j += 1;
    }
}

fn named_entity(name: &str) -> Option<char> {
    match name {
        "amp" => Some('&'),
        "lt" => Some('<'),
        "gt" => Some('>'),
        "quot" => Some('"'),
        "apos" => Some('\''),
        _ => None,
    }
}

/// XML 1.0's Char: no NUL, no C0 controls but tab and line ends, no U+FFFE/U+FFFF.
fn xml_char(c: char) -> bool {
    !matches!(c, '\0'..='\u{8}' | '\u{B}' | '\u{C}' | '\u{E}'..='\u{1F}' | '\u{FFFE}' | '\u{FFFF}')
}

/// Where the tag `t` (t[0] is '<') ends: the first '>' outside quotes, or
/// for a processing instruction the '>' of the first "?>" after "<?".
fn tag_end(t: &[char], pi: bool, resume: Option<Scan>) -> TagEnd {
    let (mut k, mut quote) = match resume {
        Some(s) => (s.pos, s.quote),
        None => (1, None),
    };
    loop {
        // A tag of k+1 chars would pass the limit.
        if k >= MAX_TAG_CHARS {
            return TagEnd::TooLong;
        }
        let Some(&c) = t.get(k) else {
            return TagEnd::More(Scan { pos: k, quote });
        };
        if pi {
            if c == '>' && k >= 3 && t.get(k - 1) == Some(&'?') {
                return TagEnd::At(k);
            }
        } else {
            match quote {
                Some(q) if c == q => quote = None,
                Some(_) => {}
                None if c == '"' || c == '\'' => quote = Some(c),
                None if c == '>' => return TagEnd::At(k),
                None => {}
            }
        }
        k += 1;
    }
}

/// Looks for `close` from `buf[from]`: (end of the content, index to go on
/// from, found). When not found, the content ends before a trailing part of
/// `close` (held back) or at the buffer's end.
fn find_close(buf: &[char], from: usize, close: &[char]) -> (usize, usize, bool) {
    let mut j = from;
    while let Some(rest) = buf.get(j..) {
        if rest.is_empty() {
            break;
        }
        if rest.starts_with(close) {
            return (j, j + close.len(), true);
        }
        if rest.len() < close.len() && close.starts_with(rest) {
            return (j, j, false);
        }
        j += 1;
    }
    (j, j, false)
}

fn is_name_start(c: char) -> bool {
    c.is_alphabetic() || c == '_' || c == ':'
}

fn is_name_char(c: char) -> bool {
    c.is_alphanumeric() || matches!(c, '_' | ':' | '-' | '.' | '\u{B7}')
}

/// The XML name at `s[*p]`, advancing past it (empty when there is none).
fn read_name(s: &[char], p: &mut usize) -> String {
    let mut name = String::new();
    if s.get(*p).is_some_and(|&c| is_name_start(c)) {
        while let Some(&c) = s.get(*p).filter(|&&c| is_name_char(c)) {
            name.push(c);
            *p += 1;
        }
    }
    name
}

/// Skips XML whitespace; whether there was any.
fn skip_ws(s: &[char], p: &mut usize) -> bool {
    let from = *p;
    while s
        .get(*p)
        .is_some_and(|c| matches!(c, ' ' | '\t' | '\n' | '\r'))
    {
        *p += 1;
    }
    *p > from
}

/// At most QUOTE_CHARS chars of `s`, for error messages.
fn clip(s: &str) -> String {
    let mut out: String = s.chars().take(QUOTE_CHARS).collect();
    if s.chars().nth(QUOTE_CHARS).is_some() {
        out.push('…');
    }
    out
}

fn clip_chars(s: &[char]) -> String {
    let mut out: String = s.iter().take(QUOTE_CHARS).collect();
    if s.len() > QUOTE_CHARS {
        out.push('…');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(src: &str) -> String {
        parse(src).unwrap().text
    }

    fn marks(src: &str) -> Vec<(String, usize)> {
        parse(src)
            .unwrap()
            .marks
            .into_iter()
            .map(|m| (m.name, m.at))
            .collect()
    }

    fn breaks(src: &str) -> Vec<(usize, u32)> {
        parse(src)
            .unwrap()
            .breaks
            .into_iter()
            .map(|b| (b.at, b.ms))
            .collect()
    }

    /// Feeds `pieces` and merges the deltas; the first error ends it.
    fn feed(pieces: &[&str]) -> Result<Speech, SsmlError> {
        let mut p = StreamParser::new();
        let mut all = Speech::default();
        for piece in pieces {
            all.append(p.push(piece)?);
        }
        all.append(p.finish()?);
        Ok(all)
    }

    /// Every char boundary split into two pieces, and one-char pieces.
    fn assert_splits_agree(src: &str) {
        let whole = parse(src);
        for (k, _) in src.char_indices().skip(1) {
            let (a, b) = src.split_at(k);
            assert_eq!(feed(&[a, b]), whole, "split at byte {k} of {src:?}");
        }
        let chars: Vec<String> = src.chars().map(String::from).collect();
        let pieces: Vec<&str> = chars.iter().map(String::as_str).collect();
        assert_eq!(feed(&pieces), whole, "one-char pieces of {src:?}");
        assert_eq!(feed(&["", src, ""]), whole, "empty pieces around {src:?}");
    }

    fn well_formed(s: &Speech) {
        assert_eq!(s.source.len(), s.text.chars().count());
        assert!(
            s.source.windows(2).all(|w| w[0] <= w[1]),
            "source offsets never go back: {:?}",
            s.source
        );
    }

    const DOCS: &[&str] = &[
        "Hello world",
        "<?xml version=\"1.0\"?><speak version=\"1.1\">Hello <mark name=\"a\"/>world</speak>",
        "<speak>AT&amp;T &lt;3 &#233;t&#xE9; &quot;q&quot; &apos;s&apos; AT&T &#; &x</speak>",
        "<speak><p><s>One.</s><s>Two.</s></p><p>Three</p></speak>",
        "a<!-- a <b> comment -- -->b<![CDATA[ <not a tag> & ]] ]]>c",
        "<speak>Wait<break time='1.5s'/>go<break strength=\"x-weak\"></break>now<break/></speak>",
        "<prosody rate=\"slow\" pitch = '+10%'>slow <emphasis>words</emphasis></prosody> <ns:x a=\"&gt;\">n</ns:x>",
        "I say <sub alias=\"World Wide Web\">WWW</sub>, ok <sub>kept</sub><sub alias='x'/>.",
        "日本語 <mark name='日'/>テキスト é<break time=\"20ms\"/>",
        "<speak>unclosed <voice name=\"x\">at the end",
        "a < b",
        "<speak>x</voice>",
        "x &bogus; y",
        "<mark name=x/>",
        "<a b=\"1\" b=\"2\">",
        "<speak>unterminated <mark name=\"a\"",
        "text <!-- never closed",
        "&#0; &#xD800;",
        "<!DOCTYPE speak>",
        "<break time=\"11s\"/>",
        "<a b='>' c=\"'\">x</a>",
    ];

    #[test]
    fn plain_text_without_tags_is_just_text() {
        let s = parse("Just text, nothing > else.").unwrap();
        assert_eq!(s.text, "Just text, nothing > else.");
        assert!(s.marks.is_empty() && s.breaks.is_empty());
        assert_eq!(s.source, (0..26).collect::<Vec<_>>());
        assert_eq!(parse("").unwrap(), Speech::default());
    }

    #[test]
    fn speak_root_declaration_and_comments_are_skipped() {
        assert_eq!(text("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<speak xmlns=\"http://www.w3.org/2001/10/synthesis\" xml:lang=\"en\">Hi<!-- not <this> --></speak>"), "\nHi");
        assert_eq!(text("a<!---->b<!-- - -- --->c"), "abc");
        assert_eq!(text("<?pi ?> x ?>"), " x ?>");
    }

    #[test]
    fn cdata_content_is_text() {
        assert_eq!(text("<speak><![CDATA[a <b> & c]]]></speak>"), "a <b> & c]");
        assert_eq!(text("<![CDATA[]]>x"), "x");
    }

    #[test]
    fn entities_are_decoded_in_text_and_attributes() {
        assert_eq!(
            text("&amp;&lt;&gt;&quot;&apos;&#65;&#x42;&#x1F600;"),
            "&<>\"'AB😀"
        );
        assert_eq!(
            marks("<mark name=\"a&amp;b&#x263A;\"/>"),
            vec![("a&b☺".to_string(), 0)]
        );
    }

    #[test]
    fn ampersand_not_starting_a_reference_is_text() {
        assert_eq!(
            text("AT&T rocks & rolls &#; &#x; &;"),
            "AT&T rocks & rolls &#; &#x; &;"
        );
        assert_eq!(
            text("AT&T"),
            "AT&T",
            "a candidate cut by the end is text too"
        );
        assert_eq!(text("&amp"), "&amp");
        let long = format!("&{};", "a".repeat(40));
        assert_eq!(text(&long), long, "longer than 32 chars: not a reference");
        assert_eq!(marks("<mark name='R&D'/>"), vec![("R&D".to_string(), 0)]);
    }

    #[test]
    fn unknown_entity_is_an_error() {
        assert_eq!(
            parse("x &bogus; y"),
            Err(SsmlError::UnknownEntity {
                at: 2,
                name: "bogus".into()
            })
        );
        assert!(matches!(
            parse("<mark name=\"&nbsp;\"/>"),
            Err(SsmlError::UnknownEntity { at: 12, .. })
        ));
    }

    #[test]
    fn invalid_character_references_are_errors() {
        for bad in [
            "&#0;",
            "&#xD800;",
            "&#x110000;",
            "&#99999999999;",
            "&#1;",
            "&#xFFFF;",
        ] {
            assert!(
                matches!(parse(bad), Err(SsmlError::BadCharRef { at: 0, .. })),
                "{bad}"
            );
        }
        assert_eq!(text("&#9;&#10;"), "\t\n");
    }

    #[test]
    fn mark_lands_at_the_char_offset_of_the_text_before_it() {
        assert_eq!(
            marks("Hello <mark name=\"a\"/>world"),
            vec![("a".to_string(), 6)]
        );
        assert_eq!(
            marks("héllo 日本<mark name='b'></mark> x<mark name = \"c\" />"),
            vec![("b".into(), 8), ("c".into(), 10)]
        );
        assert_eq!(
            marks("&amp;<mark name='d'/>"),
            vec![("d".into(), 1)],
            "an entity is one char"
        );
    }

    #[test]
    fn mark_needs_a_name_of_1_to_256_chars() {
        assert_eq!(
            parse("<mark/>"),
            Err(SsmlError::MissingAttribute {
                at: 0,
                element: "mark",
                attribute: "name"
            })
        );
        assert!(matches!(
            parse("<mark name=''/>"),
            Err(SsmlError::MarkName { len: 0, .. })
        ));
        let ok = format!("<mark name='{}'/>", "é".repeat(256));
        assert_eq!(parse(&ok).unwrap().marks.len(), 1);
        let long = format!("<mark name='{}'/>", "é".repeat(257));
        assert!(matches!(
            parse(&long),
            Err(SsmlError::MarkName {
                at: 6,
                len: 257,
                limit: 256
            })
        ));
    }

    #[test]
    fn breaks_take_time_or_strength_or_default_to_medium() {
        assert_eq!(
            breaks("a<break time=\"500ms\"/>b<break time='1.5s'/>c<break/>"),
            vec![(1, 500), (2, 1500), (3, 500)]
        );
        assert_eq!(breaks("<break time=' 0.25s '/><break time='10000ms'/><break time='10s'/><break time='2.4ms'/>"), vec![(0, 250), (0, 10000), (0, 10000), (0, 2)]);
        let strengths = ["none", "x-weak", "weak", "medium", "strong", "x-strong"];
        let src: String = strengths
            .iter()
            .map(|s| format!("<break strength=\"{s}\"/>"))
            .collect();
        assert_eq!(
            breaks(&src).iter().map(|b| b.1).collect::<Vec<_>>(),
            vec![0, 100, 250, 500, 750, 1000]
        );
        assert_eq!(
            breaks("<break time='1s' strength='none'/>"),
            vec![(0, 1000)],
            "time wins"
        );
        assert_eq!(breaks("x<break></break>"), vec![(1, 500)]);
    }

    #[test]
    fn bad_break_times_and_strengths_are_errors() {
        for bad in [
            "5", "ms", "s", "1.2.3s", "-1s", "1e3ms", "fast", "1 s", ".s",
        ] {
            let src = format!("<break time=\"{bad}\"/>");
            assert!(
                matches!(parse(&src), Err(SsmlError::BreakTime { at: 7, .. })),
                "{bad}: {:?}",
                parse(&src)
            );
        }
        let e = parse("<break time=\"11s\"/>").unwrap_err();
        assert_eq!(
            e,
            SsmlError::BreakTooLong {
                at: 7,
                value: "11s".into(),
                limit: 10000
            }
        );
        assert!(e.to_string().contains("10000 ms"), "{e}");
        assert!(matches!(
            parse("<break time='10000.5ms'/>"),
            Err(SsmlError::BreakTooLong { .. })
        ));
        assert!(matches!(
            parse("<break strength='loud'/>"),
            Err(SsmlError::BreakStrength { .. })
        ));
    }

    #[test]
    fn paragraphs_and_sentences_are_kept_apart_by_one_space() {
        assert_eq!(
            text("<p><s>One.</s><s>Two.</s></p><p>Three</p>"),
            "One. Two. Three "
        );
        assert_eq!(text("Intro<p>Para</p>"), "Intro Para ");
        assert_eq!(text("<s>a </s><s>b</s>\n<p/>"), "a b \n");
        assert_eq!(text("<p></p>"), "", "no space at the very start");
        let s = parse("<s>a</s>").unwrap();
        assert_eq!(s.source, vec![3, 4], "the space comes from the '<' of </s>");
        assert!(s.breaks.is_empty());
    }

    #[test]
    fn unknown_and_namespaced_elements_keep_their_content() {
        let src = "<speak><voice name=\"en\"><prosody rate='slow'>a</prosody> <emphasis level=\"strong\">b</emphasis> <say-as interpret-as=\"characters\">c</say-as> <phoneme alphabet=\"ipa\" ph=\"x\">d</phoneme> <x:y z:w=\"1\">e</x:y> <whatever/>f</voice></speak>";
        assert_eq!(text(src), "a b c d e f");
    }

    #[test]
    fn sub_alias_replaces_its_content() {
        let s = parse("I use <sub alias=\"World Wide Web\">WWW<mark name='m'/></sub>!").unwrap();
        assert_eq!(s.text, "I use World Wide Web!");
        assert_eq!(
            s.source[6..20],
            [6; 14],
            "alias chars come from the <sub> tag"
        );
        assert_eq!(
            s.marks,
            vec![Mark {
                name: "m".into(),
                at: 20,
                order: 0
            }]
        );
        assert_eq!(
            text("<sub>kept</sub> <sub alias='A'/> <sub alias='B'><sub alias='C'>x</sub>y</sub>"),
            "kept A B"
        );
        assert_eq!(
            text("<sub alias='a'><p>x</p></sub>b"),
            "ab",
            "nothing spoken inside, not even a boundary"
        );
    }

    #[test]
    fn nesting_must_match() {
        assert_eq!(text("<a><b><c/></b></a >"), "");
        let e = parse("<speak>\n<p>x</s>").unwrap_err();
        assert_eq!(
            e,
            SsmlError::MismatchedClose {
                at: 12,
                close: "s".into(),
                open: "p".into(),
                open_at: 8
            }
        );
        let msg = e.to_string();
        assert!(
            msg.contains("</s>") && msg.contains("<p>") && msg.contains("12"),
            "{msg}"
        );
        assert_eq!(
            parse("x</speak>"),
            Err(SsmlError::UnopenedClose {
                at: 1,
                close: "speak".into()
            })
        );
    }

    #[test]
    fn nesting_deeper_than_64_is_an_error() {
        let ok = "<a>".repeat(64) + "x" + &"</a>".repeat(64);
        assert_eq!(text(&ok), "x");
        let deep = "<a>".repeat(65);
        assert_eq!(
            parse(&deep),
            Err(SsmlError::TooDeep {
                at: 64 * 3,
                limit: 64
            })
        );
        let empty_at_limit = "<a>".repeat(64) + "<b/>";
        assert!(
            parse(&empty_at_limit).is_ok(),
            "an empty element opens nothing"
        );
    }

    #[test]
    fn unclosed_elements_at_finish_are_accepted() {
        let s = parse("<speak><p>streamed <mark name='m'/>and never closed").unwrap();
        assert_eq!(
            s.text, "streamed and never closed",
            "no boundary space before any text"
        );
        assert_eq!(
            s.marks,
            vec![Mark {
                name: "m".into(),
                at: 9,
                order: 0
            }]
        );
    }

    #[test]
    fn malformed_attributes_are_errors() {
        assert_eq!(
            parse("<mark name=x/>"),
            Err(SsmlError::UnquotedAttribute {
                at: 6,
                name: "name".into()
            })
        );
        assert_eq!(
            parse("<a b=\"1\" b='2'>"),
            Err(SsmlError::DuplicateAttribute {
                at: 9,
                name: "b".into()
            })
        );
        for bad in [
            "<a b>",
            "<a b=\"1\"c=\"2\">",
            "<a =\"1\">",
            "<a b=\"1\" / >",
            "<a/b>",
            "</a b>",
            "</>",
        ] {
            assert!(
                matches!(parse(bad), Err(SsmlError::BadTag { at: 0, .. })),
                "{bad}: {:?}",
                parse(bad)
            );
        }
        assert!(
            matches!(
                parse("<a b=\"1\"\">"),
                Err(SsmlError::Unterminated { what: "tag", .. })
            ),
            "a stray quote opens a value"
        );
        assert!(matches!(
            parse("<a b='x<y'>"),
            Err(SsmlError::LessThanInValue { at: 7, .. })
        ));
        assert!(matches!(
            parse("<a b=\"&zz;\">"),
            Err(SsmlError::UnknownEntity { at: 6, .. })
        ));
        assert_eq!(
            text("<a\n b \t=\r\n 'x>y' c=\"'\"/>ok"),
            "ok",
            "whitespace around '=', '>' and quotes in values"
        );
    }

    #[test]
    fn less_than_that_starts_no_tag_is_an_error() {
        let e = parse("a < b").unwrap_err();
        assert_eq!(e, SsmlError::StrayLessThan { at: 2 });
        assert!(
            e.to_string().contains("must start a tag; write &lt;"),
            "{e}"
        );
        assert_eq!(parse("<3"), Err(SsmlError::StrayLessThan { at: 0 }));
        assert_eq!(parse("x<"), Err(SsmlError::StrayLessThan { at: 1 }));
        assert_eq!(text("a &lt; b"), "a < b");
    }

    #[test]
    fn doctype_and_other_declarations_are_rejected() {
        assert_eq!(
            parse("<!DOCTYPE speak>"),
            Err(SsmlError::Declaration { at: 0 })
        );
        assert_eq!(parse("<![CDAT>"), Err(SsmlError::Declaration { at: 0 }));
    }

    #[test]
    fn unterminated_markup_at_finish_is_an_error() {
        let cases = [
            ("<speak>x <mark name=\"a\"", "tag", 9),
            ("a<!-- open", "comment", 1),
            ("a<!-- open --", "comment", 1),
            ("<![CDATA[x]]", "CDATA section", 0),
            ("<?xml version='1.0'", "processing instruction", 0),
            ("x<!-", "declaration", 1),
        ];
        for (src, what, at) in cases {
            match parse(src) {
                Err(SsmlError::Unterminated { at: a, what: w, .. }) => {
                    assert_eq!((a, w), (at, what), "{src}")
                }
                other => panic!("{src}: {other:?}"),
            }
        }
    }

    #[test]
    fn a_tag_longer_than_4096_chars_is_an_error_and_never_held_whole() {
        let fits = format!("<a b='{}'/>x", "v".repeat(4096 - 9));
        assert_eq!(text(&fits), "x");
        let long = format!("<a b='{}'/>x", "v".repeat(4096 - 8));
        assert!(matches!(
            parse(&long),
            Err(SsmlError::TagTooLong {
                at: 0,
                limit: 4096,
                ..
            })
        ));
        // Streamed one char at a time, it fails once 4096 chars are held
        // with no end in sight: a '>' could only make it 4097 long.
        let mut p = StreamParser::new();
        let mut fed = 0;
        let err = loop {
            fed += 1;
            assert!(fed <= 4096, "held back more than the limit");
            if let Err(e) = p.push(if fed == 1 { "<" } else { "a" }) {
                break e;
            }
        };
        assert_eq!(fed, 4096);
        assert!(matches!(err, SsmlError::TagTooLong { .. }));
        assert!(
            err.to_string().chars().count() < 200,
            "quotes at most 64 chars: {err}"
        );
    }

    #[test]
    fn long_comments_and_cdata_stream_without_being_held() {
        let mut p = StreamParser::new();
        p.push("<!--").unwrap();
        for _ in 0..1000 {
            p.push(&"c".repeat(100)).unwrap();
        }
        assert!(p.buf.len() <= 2);
        assert_eq!(p.push("--><![CDATA[").unwrap().text, "");
        assert_eq!(
            p.push("abc]").unwrap().text,
            "abc",
            "a ']' that may start ']]>' waits"
        );
        assert_eq!(p.push("]x]]>").unwrap().text, "]]x");
        p.finish().unwrap();
    }

    #[test]
    fn source_maps_each_plain_char_to_its_origin() {
        let src = "<speak>a&amp;b<![CDATA[c]]>d<!--x--><p>é</p>&#x65;</speak>";
        let s = parse(src).unwrap();
        assert_eq!(s.text, "a&bcd é e");
        let chars: Vec<char> = src.chars().collect();
        assert_eq!(s.source, vec![7, 8, 13, 23, 27, 36, 39, 40, 44]);
        for (c, &at) in s.text.chars().zip(&s.source) {
            let origin = chars[at];
            assert!(
                origin == c || origin == '&' || origin == '<',
                "{c:?} from {origin:?} at {at}"
            );
        }
    }

    #[test]
    fn deltas_use_whole_text_offsets() {
        let mut p = StreamParser::new();
        let a = p.push("Hello <mark na").unwrap();
        assert_eq!((a.text.as_str(), a.source.len()), ("Hello ", 6));
        let b = p.push("me='x'/>wor").unwrap();
        assert_eq!(b.text, "wor");
        assert_eq!(
            b.marks,
            vec![Mark {
                name: "x".into(),
                at: 6,
                order: 0
            }]
        );
        assert_eq!(b.source, vec![22, 23, 24]);
        let c = p.push("ld &am").unwrap();
        assert_eq!(c.text, "ld ");
        let d = p.push("p;<break/>").unwrap();
        assert_eq!(
            (d.text.as_str(), d.breaks.as_slice()),
            (
                "&",
                &[Break {
                    at: 13,
                    ms: 500,
                    order: 1
                }][..]
            )
        );
        assert_eq!(p.finish().unwrap(), Speech::default());
    }

    #[test]
    fn every_split_gives_the_whole_document_result() {
        for doc in DOCS {
            if let Ok(s) = parse(doc) {
                well_formed(&s);
            }
            assert_splits_agree(doc);
        }
    }

    #[test]
    fn errors_are_final_and_finish_ends_the_parser() {
        let mut p = StreamParser::new();
        let e = p.push("a < b").unwrap_err();
        assert_eq!(p.push("fine"), Err(e.clone()));
        assert_eq!(p.finish(), Err(e));
        let mut p = StreamParser::new();
        p.push("x").unwrap();
        p.finish().unwrap();
        assert_eq!(p.push("y"), Err(SsmlError::Finished));
        assert_eq!(p.finish(), Err(SsmlError::Finished));
    }

    #[test]
    fn error_messages_quote_at_most_64_chars() {
        let name = "n".repeat(300);
        let e = parse(&format!("<{name}></x>")).unwrap_err();
        let SsmlError::MismatchedClose { open, .. } = &e else {
            panic!("{e:?}")
        };
        assert_eq!(open.chars().count(), 65, "64 chars and an ellipsis");
        let e = parse(&format!("<a {name}>")).unwrap_err();
        let SsmlError::BadTag { tag, .. } = &e else {
            panic!("{e:?}")
        };
        assert_eq!(tag.chars().count(), 65);
        let e = parse(&format!("<break time='{name}'/>")).unwrap_err();
        assert!(e.to_string().len() < 200, "{e}");
    }

    /// xorshift64*: deterministic, no dependency.
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
        }
        fn below(&mut self, n: usize) -> usize {
            (self.next() % n as u64) as usize
        }
    }

    #[test]
    fn random_input_never_panics_and_any_split_agrees() {
        const ALPHABET: &[&str] = &[
            "<", ">", "/", "=", "\"", "'", "&", ";", "#", "x", " ", "s", "p", "e", "a", "k", "m",
            "r", "b", "é", "日", "!", "-", "[", "]", "?", "1",
        ];
        const FRAGMENTS: &[&str] = &[
            "<speak>",
            "</speak>",
            "<mark name=\"a\"/>",
            "<break time=\"5ms\"/>",
            "<break/>",
            "&amp;",
            "&#x65;",
            "&#233;",
            "<p>",
            "</p>",
            "<s>",
            "</s>",
            "<sub alias='x'>",
            "</sub>",
            "<!--",
            "-->",
            "<![CDATA[",
            "]]>",
            "<?xml ?>",
            "text ",
            "日本 ",
            "<b>",
            "</b>",
            "&",
            "AT&T",
            "<e a='&lt;'>",
            "</e>",
        ];
        let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
        let mut oks = 0;
        for round in 0..4000 {
            let parts = if round % 2 == 0 { ALPHABET } else { FRAGMENTS };
            let len = rng.below(40);
            let src: String = (0..len).map(|_| parts[rng.below(parts.len())]).collect();
            let whole = parse(&src);
            // Random split points, at char boundaries.
            let bounds: Vec<usize> = src
                .char_indices()
                .map(|(i, _)| i)
                .chain([src.len()])
                .collect();
            let mut cuts: Vec<usize> = (0..rng.below(6))
                .map(|_| bounds[rng.below(bounds.len())])
                .collect();
            cuts.sort_unstable();
            let mut pieces = Vec::new();
            let mut from = 0;
            for cut in cuts {
                pieces.push(&src[from..cut]);
                from = cut;
            }
            pieces.push(&src[from..]);
            assert_eq!(feed(&pieces), whole, "{src:?} in {pieces:?}");
            if let Ok(s) = &whole {
                well_formed(s);
                oks += 1;
            }
        }
        assert!(
            oks > 400,
            "the generator should also make valid documents, made {oks}"
        );
    }
}
