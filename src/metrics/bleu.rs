//! BLEU: HF `evaluate` "bleu" (tensorflow/nmt `compute_bleu`) and pycocoevalcap's `Bleu`.

use super::{gram, gram_order, py_pow, py_split, tokenize::tokenize_13a, FxMap, Gram, Interner};

/// Sufficient statistics of one image for n-gram orders 1..=4.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct BleuStats {
    /// Clipped n-gram matches per order.
    pub matches: [u64; 4],
    /// Candidate n-grams per order (`max(0, len - n + 1)`).
    pub possible: [u64; 4],
    /// Reference length (shortest reference for nmt; chosen by the caller otherwise).
    pub ref_len: u64,
    /// Candidate length.
    pub hyp_len: u64,
}

impl std::ops::AddAssign for BleuStats {
    fn add_assign(&mut self, o: Self) {
        for k in 0..4 {
            self.matches[k] += o.matches[k];
            self.possible[k] += o.possible[k];
        }
        self.ref_len += o.ref_len;
        self.hyp_len += o.hyp_len;
    }
}

/// Counts the n-grams (orders 1..=4) of `toks` into `out`, in first-occurrence order per order.
pub(crate) fn count_grams(toks: &[u32], out: &mut FxMap<Gram, u32>) {
    out.clear();
    for n in 1..=4 {
        if toks.len() < n {
            break;
        }
        for w in toks.windows(n) {
            *out.entry(gram(w)).or_insert(0) += 1;
        }
    }
}

/// Clipped matches of a candidate against the per-n-gram maximum over references.
fn clipped(hyp: &FxMap<Gram, u32>, refmax: &FxMap<Gram, u32>) -> [u64; 4] {
    let mut m = [0u64; 4];
    for (g, &c) in hyp {
        if let Some(&r) = refmax.get(g) {
            m[gram_order(g) - 1] += u64::from(c.min(r));
        }
    }
    m
}

fn possible(len: usize) -> [u64; 4] {
    let mut p = [0u64; 4];
    for (k, slot) in p.iter_mut().enumerate() {
        *slot = (len as u64).saturating_sub(k as u64);
    }
    p
}

/// Per-image statistics with the reference length left to `ref_len`.
fn image_stats(
    hyp: &[u32],
    refs: &[Vec<u32>],
    ref_len: u64,
    scratch: &mut (FxMap<Gram, u32>, FxMap<Gram, u32>),
) -> BleuStats {
    let (hmap, rmax) = scratch;
    rmax.clear();
    let mut tmp = FxMap::default();
    for r in refs {
        count_grams(r, &mut tmp);
        for (g, c) in tmp.drain() {
            let e = rmax.entry(g).or_insert(0);
            *e = (*e).max(c);
        }
    }
    count_grams(hyp, hmap);
    BleuStats {
        matches: clipped(hmap, rmax),
        possible: possible(hyp.len()),
        ref_len,
        hyp_len: hyp.len() as u64,
    }
}

/// tensorflow/nmt `compute_bleu` (smooth=False) from summed statistics, as evaluate runs it:
/// a zero candidate or reference length gives brevity penalty 0.
pub(crate) fn nmt_bleu(s: &BleuStats, max_order: usize) -> f64 {
    let mut precisions = [0.0f64; 4];
    for (i, p) in precisions.iter_mut().enumerate().take(max_order) {
        *p = if s.possible[i] > 0 {
            s.matches[i] as f64 / s.possible[i] as f64
        } else {
            0.0
        };
    }
    let p = &precisions[..max_order];
    let geo_mean = if p.iter().all(|&x| x > 0.0) {
        let w = 1.0 / max_order as f64;
        let mut sum = 0.0;
        for &x in p {
            sum += w * x.ln();
        }
        sum.exp()
    } else {
        0.0
    };
    let bp = if s.ref_len == 0 || s.hyp_len == 0 {
        0.0
    } else {
        let ratio = s.hyp_len as f64 / s.ref_len as f64;
        if ratio > 1.0 {
            1.0
        } else {
            (1.0 - 1.0 / ratio).exp()
        }
    };
    geo_mean * bp
}

/// Seed suite BLEU-1..4: `(corpus, per_image)` for n = 1..=4.
pub(crate) fn seed_bleu(cands: &[&str], refs: &[Vec<&str>]) -> Vec<(f64, Vec<f64>)> {
    let tc: Vec<Vec<String>> = cands.iter().map(|c| tokenize_13a(c)).collect();
    let tr: Vec<Vec<Vec<String>>> = refs
        .iter()
        .map(|rs| rs.iter().map(|r| tokenize_13a(r)).collect())
        .collect();
    let mut it = Interner::default();
    let mut scratch = Default::default();
    let mut total = BleuStats::default();
    let mut per = Vec::with_capacity(cands.len());
    for (c, rs) in tc.iter().zip(&tr) {
        let hyp = it.ids(c.iter().map(String::as_str));
        let rids: Vec<Vec<u32>> = rs
            .iter()
            .map(|r| it.ids(r.iter().map(String::as_str)))
            .collect();
        let ref_len = rids.iter().map(|r| r.len() as u64).min().unwrap_or(0);
        let s = image_stats(&hyp, &rids, ref_len, &mut scratch);
        total += s;
        per.push(s);
    }
    (1..=4)
        .map(|n| {
            (
                nmt_bleu(&total, n),
                per.iter().map(|s| nmt_bleu(s, n)).collect(),
            )
        })
        .collect()
}

/// pycocoevalcap `Bleu(4).compute_score(gts, res)` (option "closest") on tokenized strings:
/// `(corpus, per_image)` for n = 1..=4.
pub(crate) fn coco_bleu(cands: &[String], refs: &[Vec<String>]) -> Vec<(f64, Vec<f64>)> {
    const SMALL: f64 = 1e-9;
    const TINY: f64 = 1e-15;
    let mut it = Interner::default();
    let mut scratch = Default::default();
    let mut total = BleuStats::default();
    let mut lists: Vec<Vec<f64>> = (0..4).map(|_| Vec::with_capacity(cands.len())).collect();
    for (c, rs) in cands.iter().zip(refs) {
        let hyp = it.ids(py_split(c));
        let rids: Vec<Vec<u32>> = rs.iter().map(|r| it.ids(py_split(r))).collect();
        let testlen = hyp.len() as i64;
        // min((abs(l - testlen), l) for l in reflens)[1]
        let reflen = rids
            .iter()
            .map(|r| r.len() as i64)
            .min_by_key(|&l| ((l - testlen).abs(), l))
            .unwrap_or(0);
        let s = image_stats(&hyp, &rids, reflen as u64, &mut scratch);
        total += s;
        let mut bleu = 1.0f64;
        for (k, list) in lists.iter_mut().enumerate() {
            bleu *= (s.matches[k] as f64 + TINY) / (s.possible[k] as f64 + SMALL);
            list.push(py_pow(bleu, 1.0 / (k as f64 + 1.0)));
        }
        let ratio = (testlen as f64 + TINY) / (reflen as f64 + SMALL);
        if ratio < 1.0 {
            for l in lists.iter_mut() {
                if let Some(v) = l.last_mut() {
                    *v *= (1.0 - 1.0 / ratio).exp();
                }
            }
        }
    }
    let mut out = Vec::with_capacity(4);
    let mut bleu = 1.0f64;
    let ratio = (total.hyp_len as f64 + TINY) / (total.ref_len as f64 + SMALL);
    for (k, list) in lists.into_iter().enumerate() {
        bleu *= (total.matches[k] as f64 + TINY) / (total.possible[k] as f64 + SMALL);
        let mut b = py_pow(bleu, 1.0 / (k as f64 + 1.0));
        if ratio < 1.0 {
            b *= (1.0 - 1.0 / ratio).exp();
        }
        out.push((b, list));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn evaluate_docstring_example() {
        // evaluate's bleu.py example: 1.0
        let cands = ["hello there general kenobi", "foo bar foobar"];
        let refs = vec![
            vec!["hello there general kenobi", "hello there!"],
            vec!["foo bar foobar"],
        ];
        let b = seed_bleu(&cands, &refs);
        assert_eq!(b[3].0, 1.0);
    }

    #[test]
    fn empty_candidate_is_zero() {
        let b = seed_bleu(&[""], &[vec!["a b c d"]]);
        assert_eq!(b[0].0, 0.0);
        let b = coco_bleu(&["".to_string()], &[vec!["a b".to_string()]]);
        assert!(b[0].0 < 1e-6);
    }
}
