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

/// Length of the longest common subsequence.
pub(crate) fn lcs(a: &[u32], b: &[u32]) -> usize {
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
}
