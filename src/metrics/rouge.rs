//! ROUGE-L: `rouge_score` (Porter stemmer, best F over references) and pycocoevalcap `Rouge`.

use std::collections::HashMap;

use super::{porter, Interner};

/// `rouge_score.tokenize.tokenize(text, PorterStemmer())`: lower-case, non-`[a-z0-9]` runs
/// become separators, tokens longer than 3 characters are stemmed.
pub fn rouge_tokenize(text: &str) -> Vec<String> {
    rouge_tokenize_cached(text, &mut HashMap::new())
}

fn rouge_tokenize_cached(text: &str, cache: &mut HashMap<String, String>) -> Vec<String> {
    let lower = text.to_lowercase();
    lower
        .split(|c: char| !(c.is_ascii_lowercase() || c.is_ascii_digit()))
        .filter(|t| !t.is_empty())
        .map(|t| {
            if t.len() <= 3 {
                return t.to_string();
            }
            if let Some(s) = cache.get(t) {
                return s.clone();
            }
            let s = porter::stem(t);
            cache.insert(t.to_string(), s.clone());
            s
        })
        .filter(|t| {
            !t.is_empty()
                && t.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
        })
        .collect()
}

/// Length of the longest common subsequence, bit-parallel (Allison–Dix / Hyyrö): one pass over
/// `a` updating a bit vector over `b` 64 positions per word, so two captions of 10^5 words take
/// ~10^8 word operations instead of the 10^10 cells of the textbook table. Memory is
/// O(`b.len()`): the match mask of each symbol is built from its position list when needed.
pub(crate) fn lcs(a: &[u32], b: &[u32]) -> usize {
    if a.is_empty() || b.is_empty() {
        return 0;
    }
    let words = b.len().div_ceil(64);
    let mut positions: HashMap<u32, Vec<usize>> = HashMap::new();
    for (j, &y) in b.iter().enumerate() {
        positions.entry(y).or_default().push(j);
    }
    // Frequent symbols keep a full mask (at most ~128 of them can be frequent, so this is
    // O(len(b)) memory too); rare ones set and clear their bits in a scratch mask.
    let dense: HashMap<u32, Vec<u64>> = positions
        .iter()
        .filter(|(_, p)| p.len() * 2 >= words)
        .map(|(&y, p)| {
            let mut m = vec![0u64; words];
            for &j in p {
                m[j / 64] |= 1 << (j % 64);
            }
            (y, m)
        })
        .collect();
    // V: a 1 bit at j means position j of `b` is not (yet) the end of a longer common prefix.
    let mut v = vec![u64::MAX; words];
    let mut scratch = vec![0u64; words];
    let step = |v: &mut [u64], m: &[u64]| {
        // V' = (V + (V & M)) | (V & !M), with the carry running across words.
        let mut carry = false;
        for (vk, &mk) in v.iter_mut().zip(m) {
            let u = *vk & mk;
            let (s1, c1) = vk.overflowing_add(u);
            let (s2, c2) = s1.overflowing_add(u64::from(carry));
            carry = c1 || c2;
            *vk = s2 | (*vk & !mk);
        }
    };
    for x in a {
        if let Some(m) = dense.get(x) {
            step(&mut v, m);
            continue;
        }
        let Some(pos) = positions.get(x) else {
            continue;
        };
        for &j in pos {
            scratch[j / 64] |= 1 << (j % 64);
        }
        step(&mut v, &scratch);
        for &j in pos {
            scratch[j / 64] = 0;
        }
    }
    let tail = b.len() % 64;
    let ones: usize = v
        .iter()
        .enumerate()
        .map(|(k, &w)| {
            let w = if k + 1 == words && tail != 0 {
                w & ((1u64 << tail) - 1)
            } else {
                w
            };
            w.count_ones() as usize
        })
        .sum();
    b.len() - ones
}

/// The textbook O(len(a)·len(b)) table, kept to check [`lcs`] against.
#[cfg(test)]
fn lcs_table(a: &[u32], b: &[u32]) -> usize {
    if a.is_empty() || b.is_empty() {
        return 0;
    }
    let mut prev = vec![0usize; b.len() + 1];
    let mut cur = vec![0usize; b.len() + 1];
    for &x in a {
        for (j, &y) in b.iter().enumerate() {
            cur[j + 1] = if x == y {
                prev[j] + 1
            } else {
                prev[j + 1].max(cur[j])
            };
        }
        std::mem::swap(&mut prev, &mut cur);
    }
    prev[b.len()]
}

/// Seed suite ROUGE-L F per image: `RougeScorer(["rougeL"], use_stemmer=True).score_multi`.
pub(crate) fn seed_rouge_l(cands: &[&str], refs: &[Vec<&str>]) -> Vec<f64> {
    use rayon::prelude::*;
    cands
        .par_iter()
        .zip(refs.par_iter())
        .map_init(HashMap::new, |cache, (c, rs)| {
            let ct = rouge_tokenize_cached(c, cache);
            let mut it = Interner::default();
            let cid = it.ids(ct.iter().map(String::as_str));
            let rts: Vec<Vec<String>> =
                rs.iter().map(|r| rouge_tokenize_cached(r, cache)).collect();
            let mut best = f64::NEG_INFINITY;
            for rt in &rts {
                let rid = it.ids(rt.iter().map(String::as_str));
                let f = if rid.is_empty() || cid.is_empty() {
                    0.0
                } else {
                    let l = lcs(&rid, &cid) as f64;
                    let p = l / cid.len() as f64;
                    let r = l / rid.len() as f64;
                    if p + r > 0.0 {
                        2.0 * p * r / (p + r)
                    } else {
                        0.0
                    }
                };
                if f > best {
                    best = f;
                }
            }
            best
        })
        .collect()
}

/// pycocoevalcap `Rouge().compute_score` per image on tokenized strings (`split(" ")`).
pub(crate) fn coco_rouge_l(cands: &[String], refs: &[Vec<String>]) -> Vec<f64> {
    let beta2 = super::py_pow(1.2, 2.0);
    cands
        .iter()
        .zip(refs)
        .map(|(c, rs)| {
            let mut it = Interner::default();
            let cid = it.ids(c.split(' '));
            let mut prec_max = f64::NEG_INFINITY;
            let mut rec_max = f64::NEG_INFINITY;
            for r in rs {
                let rid = it.ids(r.split(' '));
                let l = lcs(&rid, &cid) as f64;
                prec_max = prec_max.max(l / cid.len() as f64);
                rec_max = rec_max.max(l / rid.len() as f64);
            }
            if prec_max != 0.0 && rec_max != 0.0 {
                ((1.0 + beta2) * prec_max * rec_max) / (rec_max + beta2 * prec_max)
            } else {
                0.0
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokenizer() {
        assert_eq!(
            rouge_tokenize("The Dogs, running! 3x café"),
            ["the", "dog", "run", "3x", "caf"]
        );
    }

    #[test]
    fn lcs_len() {
        assert_eq!(lcs(&[1, 2, 3, 4], &[2, 4, 3]), 2);
        assert_eq!(lcs(&[], &[1]), 0);
    }

    #[test]
    fn bit_parallel_lcs_equals_the_table() {
        // Random sequences over small alphabets, lengths across the 64-bit word boundaries.
        let mut state = 0x1234_5678_9abc_def0u64;
        let mut next = |n: u64| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state % n
        };
        for case in 0..400 {
            let alpha = 1 + next(6) as u32;
            let la = next(200) as usize;
            let lb = [0, 1, 63, 64, 65, 127, 128, 129, 150][case % 9];
            let a: Vec<u32> = (0..la).map(|_| next(u64::from(alpha)) as u32).collect();
            let b: Vec<u32> = (0..lb).map(|_| next(u64::from(alpha)) as u32).collect();
            assert_eq!(lcs(&a, &b), lcs_table(&a, &b), "case {case}: {a:?} / {b:?}");
            assert_eq!(lcs(&b, &a), lcs_table(&a, &b), "case {case} swapped");
        }
    }

    #[test]
    fn lcs_of_long_captions_is_quick() {
        // 10^5 words each: the table would be 10^10 cells (minutes).
        let a: Vec<u32> = (0..100_000u32).map(|i| i % 7).collect();
        let b: Vec<u32> = (0..100_000u32).map(|i| (i * 3) % 7).collect();
        let t = std::time::Instant::now();
        let l = lcs(&a, &b);
        assert!(l > 0 && l <= 100_000);
        assert!(t.elapsed().as_secs_f64() < 20.0, "{:?}", t.elapsed());
    }
}
