//! Bounds the cost of one model call: a sentence whose phoneme ids exceed
//! [`MAX_SENTENCE_IDS`] is cut into pieces, each spoken as its own sentence.
//!
//! The text encoder's attention is quadratic in a sentence's ids (time and
//! memory), so one long unpunctuated clause could take gigabytes and seconds
//! without a cancel point. Cuts go after a pause (`,` `;` `:` and sentence
//! punctuation), else after a word (a space), else after any phoneme's pad,
//! and pieces come out about equally long. Sentences within the bound are
//! returned untouched, so ordinary text is synthesized exactly as before.
//!
//! Works on ids, so text (after espeak-ng) and client phoneme ids are cut
//! the same way. Pure data: it never touches espeak-ng or MLX.
use std::collections::HashMap;

/// Most phoneme ids the model runs at once (BOS/pad/EOS included), about
/// 380 characters of English text. Up to about this length the encoder's
/// memory stays near the rest of the model's; beyond it the attention's
/// `[heads, L, L]` arrays take over and grow with the square.
pub const MAX_SENTENCE_IDS: usize = 800;

/// What the splitter needs to know of a voice's ids.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct IdKinds {
    bos: Option<i64>,
    pad: Option<i64>,
    eos: Option<i64>,
    space: Option<i64>,
    pauses: Vec<i64>,
}

impl IdKinds {
    /// From a Piper `phoneme_id_map`; phonemes mapped to several ids are not
    /// used as cut marks (Piper's maps have one id per phoneme).
    pub fn from_map(map: &HashMap<String, Vec<i64>>) -> Self {
        let one = |k: &str| map.get(k).filter(|v| v.len() == 1).map(|v| v[0]);
        Self {
            bos: one("^"),
            pad: one("_"),
            eos: one("$"),
            space: one(" "),
            pauses: [",", ";", ":", ".", "!", "?"].into_iter().filter_map(one).collect(),
        }
    }
}

/// One piece of a cut sentence: its ids, `[prefix, ids[body], suffix]`.
#[derive(Debug, Clone, PartialEq)]
pub struct Piece {
    pub ids: Vec<i64>,
    /// The ids of the whole sentence this piece speaks.
    pub body: std::ops::Range<usize>,
    /// How many framing ids (BOS, pad) come before them.
    pub head: usize,
}

/// `ids` cut into pieces of at most `max` ids each (see the module doc).
/// A leading BOS (and its pad) and a trailing EOS are repeated on every
/// piece; spaces at a cut are dropped.
pub fn split_ids(ids: &[i64], kinds: &IdKinds, max: usize) -> Vec<Vec<i64>> {
    split_pieces(ids, kinds, max).into_iter().map(|p| p.ids).collect()
}

/// [`split_ids`], each piece with the span of `ids` it speaks.
pub fn split_pieces(ids: &[i64], kinds: &IdKinds, max: usize) -> Vec<Piece> {
    if ids.len() <= max {
        return vec![Piece { ids: ids.to_vec(), body: 0..ids.len(), head: 0 }];
    }
    let mut head = 0;
    if kinds.bos.is_some() && ids.first().copied() == kinds.bos {
        head = 1;
        if kinds.pad.is_some() && ids.get(1).copied() == kinds.pad {
            head = 2;
        }
    }
    let tail = usize::from(kinds.eos.is_some() && ids.len() > head && ids.last().copied() == kinds.eos);
    let (prefix, body, suffix) = (&ids[..head], &ids[head..ids.len() - tail], &ids[ids.len() - tail..]);
    // Leave room for the framing; a tiny `max` still makes progress.
    let budget = max.saturating_sub(head + tail).max(2);
    let cuts = Cuts { body, kinds };

    let mut out = Vec::new();
    let mut start = 0;
    while start < body.len() {
        let left = body.len() - start;
        let end = if left <= budget {
            body.len()
        } else {
            // Aim for equal pieces, so a long clause does not end in a
            // one-word sentence.
            let target = start + left / left.div_ceil(budget);
            cuts.best(start, target, start + budget)
        };
        let span = cuts.trim_spaces(start, end);
        if let Some(piece) = body.get(span.clone()).filter(|p| !p.is_empty()) {
            out.push(Piece { ids: [prefix, piece, suffix].concat(), body: head + span.start..head + span.end, head });
        }
        start = end;
    }
    if out.is_empty() {
        // Nothing but spaces: one framed piece of them.
        let n = budget.min(body.len());
        out.push(Piece { ids: [prefix, &body[..n], suffix].concat(), body: head..head + n, head });
    }
    out
}

/// Where a body of ids may be cut: `c` cuts between `body[c - 1]` and `body[c]`.
struct Cuts<'a> {
    body: &'a [i64],
    kinds: &'a IdKinds,
}

impl Cuts<'_> {
    fn is(&self, i: usize, id: Option<i64>) -> bool {
        id.is_some() && self.body.get(i).copied() == id
    }

    /// The phoneme whose unit (phoneme, then its pad when the voice has
    /// one) ends right before `c`, or None when `c` splits a unit.
    fn unit_before(&self, c: usize) -> Option<usize> {
        match self.kinds.pad {
            Some(_) if c >= 2 && self.is(c - 1, self.kinds.pad) => Some(c - 2),
            Some(_) => None,
            None => c.checked_sub(1),
        }
    }

    fn is_pause(&self, i: usize) -> bool {
        self.body.get(i).is_some_and(|id| self.kinds.pauses.contains(id))
    }

    /// After a pause, or after the space that follows one (`, `).
    fn after_pause(&self, c: usize) -> bool {
        let Some(p) = self.unit_before(c) else { return false };
        if self.is_pause(p) {
            return true;
        }
        self.is(p, self.kinds.space) && self.unit_before(p).is_some_and(|q| self.is_pause(q))
    }

    fn after_word(&self, c: usize) -> bool {
        self.unit_before(c).is_some_and(|p| self.is(p, self.kinds.space))
    }

    /// The cut in `(start, limit]` to end a piece at: after a pause, else
    /// after a word, closest to `target` but no nearer `start` than half
    /// the way to it; else the last unit boundary by `limit`; else `limit`.
    fn best(&self, start: usize, target: usize, limit: usize) -> usize {
        let lo = start + (target - start).div_ceil(2).max(1);
        let closest = |ok: &dyn Fn(usize) -> bool| (lo..=limit).filter(|&c| ok(c)).min_by_key(|&c| c.abs_diff(target));
        closest(&|c| self.after_pause(c))
            .or_else(|| closest(&|c| self.after_word(c)))
            .or_else(|| (start + 1..=limit).rev().find(|&c| self.unit_before(c).is_some()))
            .unwrap_or(limit)
    }

    /// `body[start..end]` without space units at either end, as a range.
    fn trim_spaces(&self, mut start: usize, mut end: usize) -> std::ops::Range<usize> {
        let unit = if self.kinds.pad.is_some() { 2 } else { 1 };
        while end >= start + unit && self.unit_before(end).is_some_and(|p| p >= start && self.is(p, self.kinds.space)) {
            end -= unit;
        }
        while start + unit <= end && self.is(start, self.kinds.space) && (unit == 1 || self.is(start + 1, self.kinds.pad)) {
            start += unit;
        }
        start..end.max(start)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Piper's ids for the bundled voice's specials: _ 0, ^ 1, $ 2, space 3,
    // ! 4, , 8, . 10, : 11, ; 12, ? 13; letters from 20.
    fn kinds() -> IdKinds {
        let pairs: [(&str, i64); 10] =
            [("_", 0), ("^", 1), ("$", 2), (" ", 3), ("!", 4), (",", 8), (".", 10), (":", 11), (";", 12), ("?", 13)];
        IdKinds::from_map(&pairs.iter().map(|(k, v)| (k.to_string(), vec![*v])).collect())
    }

    /// Piper's layout for phonemes written as letters: `^ _ (p _)* $`;
    /// `a`-`z` are 20.., ` ` `,` `;` `.` their ids above.
    fn ids(phonemes: &str) -> Vec<i64> {
        let mut v = vec![1, 0];
        for c in phonemes.chars() {
            v.push(match c {
                ' ' => 3,
                ',' => 8,
                ';' => 12,
                '.' => 10,
                c => 20 + (c as i64 - 'a' as i64),
            });
            v.push(0);
        }
        v.push(2);
        v
    }

    fn text(ids: &[i64]) -> String {
        assert_eq!((ids[0], ids[1], *ids.last().unwrap()), (1, 0, 2), "framed: {ids:?}");
        let body = &ids[2..ids.len() - 1];
        assert!(body.chunks(2).all(|u| u.len() == 2 && u[1] == 0), "phoneme, pad pairs: {ids:?}");
        body.chunks(2)
            .map(|u| match u[0] {
                3 => ' ',
                8 => ',',
                12 => ';',
                10 => '.',
                id => (b'a' + (id - 20) as u8) as char,
            })
            .collect()
    }

    fn split(phonemes: &str, max: usize) -> Vec<String> {
        let pieces = split_ids(&ids(phonemes), &kinds(), max);
        for p in &pieces {
            assert!(p.len() <= max, "piece of {} ids over {max}", p.len());
        }
        pieces.iter().map(|p| text(p)).collect()
    }

    #[test]
    fn sentences_within_the_bound_are_untouched() {
        let s = ids("abc, def ghi.");
        assert_eq!(split_ids(&s, &kinds(), s.len()), vec![s.clone()]);
        assert_eq!(split_ids(&s, &kinds(), MAX_SENTENCE_IDS), vec![s]);
    }

    #[test]
    fn clause_splitter_splits_at_commas_then_words() {
        // Commas first, even with spaces nearer the ideal cut.
        let list = "aaa bbb, ccc ddd, eee fff, ggg hhh";
        assert_eq!(split(list, 40), ["aaa bbb, ccc ddd,", "eee fff, ggg hhh"]);
        // Semicolons and colons count as pauses too.
        assert_eq!(split("aaa bbb; ccc ddd eee", 30), ["aaa bbb;", "ccc ddd eee"]);
        // No pause: at word boundaries, about evenly.
        let words = "aaa bbb ccc ddd eee fff ggg hhh";
        assert_eq!(split(words, 40), ["aaa bbb ccc ddd", "eee fff ggg hhh"]);
        // One word longer than the bound: cut between phonemes, never
        // between a phoneme and its pad.
        let long = "abcdefghijklmnopqrstuvwxyz";
        let pieces = split(long, 20);
        assert_eq!(pieces.concat(), long);
        assert!(pieces.len() >= 3, "{pieces:?}");
    }

    #[test]
    fn a_far_comma_does_not_leave_a_one_word_piece() {
        // The only comma is near the start: cutting there would leave a
        // tiny first piece, so the cut goes to a word near the middle.
        let s = "aa, bbb ccc ddd eee fff ggg hhh iii";
        let pieces = split(s, 50);
        assert_eq!(pieces.len(), 2, "{pieces:?}");
        assert!(pieces.iter().all(|p| p.len() >= 10), "{pieces:?}");
    }

    #[test]
    fn every_phoneme_is_kept_once_in_order() {
        let mut s = String::new();
        for i in 0..400 {
            s.push_str(["abc", "de", "fghij", "k"][i % 4]);
            s.push_str(if i % 7 == 6 { ", " } else { " " });
        }
        let s = s.trim_end().to_string();
        for max in [16, 41, 100, 333, MAX_SENTENCE_IDS] {
            let pieces = split(&s, max);
            let strip = |t: &str| t.chars().filter(|c| !c.is_whitespace()).collect::<String>();
            assert_eq!(strip(&pieces.concat()), strip(&s), "max {max}");
            assert!(pieces.len() > 1);
        }
    }

    #[test]
    fn unframed_ids_and_a_voice_without_specials_split_too() {
        let bare: Vec<i64> = (0..50).map(|i| 20 + i % 5).collect();
        let pieces = split_ids(&bare, &IdKinds::default(), 20);
        assert!(pieces.iter().all(|p| !p.is_empty() && p.len() <= 20), "{pieces:?}");
        assert_eq!(pieces.concat(), bare);
        // Framed, but the ids are not phoneme/pad pairs.
        let mut odd = vec![1, 0];
        odd.extend((0..60).map(|i| 20 + i % 3));
        odd.push(2);
        let pieces = split_ids(&odd, &kinds(), 25);
        assert!(pieces.iter().all(|p| p.len() <= 25 && p[..2] == [1, 0] && p.last() == Some(&2)), "{pieces:?}");
        let inner: Vec<i64> = pieces.iter().flat_map(|p| p[2..p.len() - 1].to_vec()).collect();
        assert_eq!(inner, odd[2..odd.len() - 1]);
    }
}
