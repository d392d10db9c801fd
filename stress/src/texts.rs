//! The text mix and a small deterministic random source.
//!
//! Mostly short texts: on a 2-core machine a short sentence already costs
//! 0.2-0.5 s of CPU, so long ones are rare. Deterministic from `--seed`:
//! never draws from the clock or the system's random source, so that a run
//! can be repeated request for request.
use serde::Serialize;

/// xorshift64*: reproducible from `--seed`, no dependency.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Self(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Uniform in [0, 1).
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n.max(1) as u64) as usize
    }

    pub fn chance(&mut self, p: f64) -> bool {
        self.unit() < p
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum TextKind {
    Short,
    Numbers,
    Unicode,
    MultiSentence,
    Long,
}

const SHORT: &[&str] = &["Hello there.", "Good morning.", "Yes, of course.", "The meeting is at noon.", "Thank you."];
const NUMBERS: &[&str] = &[
    "Call 555 0123 at 3:45.",
    "It costs $19.99, or 42 percent off.",
    "Room 101 is on floor 7.",
];
const UNICODE: &[&str] = &["Café déjà vu, naïve façade.", "“Quoted” words — and a dash.", "Ångström and São Paulo."];
const MULTI: &[&str] = &["First sentence. Second one! Is this the third?", "Wait. Stop. Go on now."];
pub const LONG: &str = "The quick brown fox jumps over the lazy dog. \
    A second sentence follows the first one here. \
    Then a third sentence, which is a little longer than the others were. \
    And the fourth sentence ends the paragraph, at last.";

/// A text from the mix: 55% short, 12% numbers, 12% unicode, 16% multi-sentence, 5% long.
pub fn pick(rng: &mut Rng) -> (TextKind, &'static str) {
    let u = rng.unit();
    let (kind, list): (TextKind, &[&str]) = if u < 0.55 {
        (TextKind::Short, SHORT)
    } else if u < 0.67 {
        (TextKind::Numbers, NUMBERS)
    } else if u < 0.79 {
        (TextKind::Unicode, UNICODE)
    } else if u < 0.95 {
        (TextKind::MultiSentence, MULTI)
    } else {
        (TextKind::Long, &[LONG])
    };
    (kind, list[rng.below(list.len())])
}
