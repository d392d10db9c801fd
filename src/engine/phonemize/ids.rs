//! Piper's `phonemes_to_ids`: a phoneme string to the voice's model input ids.
//!
//! Pure data mapping. Must never touch espeak-ng or MLX, and never panic on a
//! map that lacks an entry (missing phonemes, even BOS/PAD/EOS, are skipped).

use std::collections::HashMap;

const BOS: &str = "^";
const PAD: &str = "_";
const EOS: &str = "$";

/// Piper's phonemes_to_ids: BOS ("^") ids, PAD ("_"), then for every phoneme
/// (unicode scalar) in the string its ids followed by PAD; phonemes missing
/// from the map are skipped; then EOS ("$").
pub fn phonemes_to_ids(phonemes: &str, id_map: &HashMap<String, Vec<i64>>) -> Vec<i64> {
    phonemes_to_ids_with_spans(phonemes, id_map).0
}

/// [`phonemes_to_ids`], and for every phoneme (character) of the string
/// the ids it became, its PAD included (empty for a phoneme the map lacks).
pub fn phonemes_to_ids_with_spans(
    phonemes: &str,
    id_map: &HashMap<String, Vec<i64>>,
) -> (Vec<i64>, Vec<std::ops::Range<usize>>) {
    let empty: Vec<i64> = Vec::new();
    let get = |k: &str| id_map.get(k).unwrap_or(&empty);
    let pad = get(PAD);
    let mut ids = Vec::with_capacity(2 * phonemes.len() + 4);
    ids.extend_from_slice(get(BOS));
    ids.extend_from_slice(pad);
    let mut spans = Vec::with_capacity(phonemes.len());
    let mut buf = [0u8; 4];
    for c in phonemes.chars() {
        let from = ids.len();
        if let Some(v) = id_map.get(&*c.encode_utf8(&mut buf)) {
            ids.extend_from_slice(v);
            ids.extend_from_slice(pad);
        }
        spans.push(from..ids.len());
    }
    ids.extend_from_slice(get(EOS));
    (ids, spans)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&str, &[i64])]) -> HashMap<String, Vec<i64>> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_vec())).collect()
    }

    #[test]
    fn bos_pad_each_phoneme_pad_eos() {
        let m = map(&[("_", &[0]), ("^", &[1]), ("$", &[2]), (" ", &[3]), ("h", &[20]), ("ə", &[59]), ("ˈ", &[120])]);
        assert_eq!(phonemes_to_ids("hə ˈh", &m), vec![1, 0, 20, 0, 59, 0, 3, 0, 120, 0, 20, 0, 2]);
    }

    #[test]
    fn spans_give_each_phonemes_ids_and_pad() {
        let m = map(&[("_", &[0]), ("^", &[1]), ("$", &[2]), ("a", &[7, 8]), ("b", &[9])]);
        let (ids, spans) = phonemes_to_ids_with_spans("aZb", &m);
        assert_eq!(ids, vec![1, 0, 7, 8, 0, 9, 0, 2]);
        assert_eq!(spans, vec![2..5, 5..5, 5..7]);
    }

    #[test]
    fn missing_phonemes_are_skipped_and_multi_id_entries_expand() {
        let m = map(&[("_", &[0]), ("^", &[1]), ("$", &[2]), ("a", &[7, 8])]);
        assert_eq!(phonemes_to_ids("aZa", &m), vec![1, 0, 7, 8, 0, 7, 8, 0, 2]);
    }

    #[test]
    fn combining_marks_are_their_own_phonemes() {
        // NFD-split accents are separate scalars, as in Piper.
        let m = map(&[("_", &[0]), ("^", &[1]), ("$", &[2]), ("e", &[18]), ("\u{301}", &[141])]);
        assert_eq!(phonemes_to_ids("e\u{301}", &m), vec![1, 0, 18, 0, 141, 0, 2]);
    }

    #[test]
    fn empty_input_and_a_map_without_specials_do_not_panic() {
        let m = map(&[("_", &[0]), ("^", &[1]), ("$", &[2])]);
        assert_eq!(phonemes_to_ids("", &m), vec![1, 0, 2]);
        assert_eq!(phonemes_to_ids("abc", &HashMap::new()), Vec::<i64>::new());
    }
}
