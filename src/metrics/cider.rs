//! CIDEr-D exactly as pycocoevalcap's `Cider` (n = 4, sigma = 6, clipping, Gaussian length
//! penalty on bigram counts, ×10, IDF from the evaluated references), with the same
//! floating-point operation order (dict insertion order, C `pow`, numpy pairwise means).

use super::{gram, gram_order, np_sum, py_pow, py_split, FxMap, Gram, Interner};

/// An n-gram count vector in first-occurrence order (precook's dict order).
struct Counts {
    grams: Vec<(Gram, u32)>,
}

fn precook(toks: &[u32]) -> Counts {
    let mut idx: FxMap<Gram, usize> = FxMap::default();
    let mut grams: Vec<(Gram, u32)> = Vec::new();
    for n in 1..=4 {
        if toks.len() < n {
            break;
        }
        for w in toks.windows(n) {
            let g = gram(w);
            match idx.get(&g) {
                Some(&i) => grams[i].1 += 1,
                None => {
                    idx.insert(g, grams.len());
                    grams.push((g, 1));
                }
            }
        }
    }
    Counts { grams }
}

struct TfIdf {
    /// Per order: (n-gram, weight) in insertion order.
    vec: [Vec<(Gram, f64)>; 4],
    norm: [f64; 4],
    /// pycocoevalcap counts *bigrams* here (`if n == 1: length += term_freq`).
    length: i64,
}

fn counts2vec(c: &Counts, df: &FxMap<Gram, f64>, ref_len: f64) -> TfIdf {
    let mut vec: [Vec<(Gram, f64)>; 4] = Default::default();
    let mut norm = [0.0f64; 4];
    let mut length = 0i64;
    for &(g, tf) in &c.grams {
        let d = df.get(&g).copied().unwrap_or(0.0).max(1.0).ln();
        let n = gram_order(&g) - 1;
        let v = f64::from(tf) * (ref_len - d);
        vec[n].push((g, v));
        norm[n] += py_pow(v, 2.0);
        if n == 1 {
            length += i64::from(tf);
        }
    }
    for x in norm.iter_mut() {
        *x = x.sqrt();
    }
    TfIdf { vec, norm, length }
}

fn sim(h: &TfIdf, r: &TfIdf, rmap: &FxMap<Gram, f64>) -> [f64; 4] {
    let delta = (h.length - r.length) as f64;
    let mut val = [0.0f64; 4];
    for (n, v) in val.iter_mut().enumerate() {
        for (g, vh) in &h.vec[n] {
            let vr = rmap.get(g).copied().unwrap_or(0.0);
            let m = if vr < *vh { vr } else { *vh };
            *v += m * vr;
        }
        if h.norm[n] != 0.0 && r.norm[n] != 0.0 {
            *v /= h.norm[n] * r.norm[n];
        }
        *v *= py_pow(
            std::f64::consts::E,
            -py_pow(delta, 2.0) / (2.0 * py_pow(6.0, 2.0)),
        );
    }
    val
}

/// Per-image CIDEr-D of whitespace-tokenized candidates against their references.
pub(crate) fn cider(cands: &[String], refs: &[Vec<String>]) -> Vec<f64> {
    let mut it = Interner::default();
    let crefs: Vec<Vec<Counts>> = refs
        .iter()
        .map(|rs| rs.iter().map(|r| precook(&it.ids(py_split(r)))).collect())
        .collect();
    let ctest: Vec<Counts> = cands
        .iter()
        .map(|c| precook(&it.ids(py_split(c))))
        .collect();
    // document frequency: number of images whose references contain the n-gram
    let mut df: FxMap<Gram, f64> = FxMap::default();
    let mut seen: FxMap<Gram, ()> = FxMap::default();
    for rs in &crefs {
        seen.clear();
        for r in rs {
            for (g, _) in &r.grams {
                seen.insert(*g, ());
            }
        }
        for g in seen.keys() {
            *df.entry(*g).or_insert(0.0) += 1.0;
        }
    }
    let ref_len = (crefs.len() as f64).ln();
    let mut scores = Vec::with_capacity(ctest.len());
    for (t, rs) in ctest.iter().zip(&crefs) {
        let h = counts2vec(t, &df, ref_len);
        let mut score = [0.0f64; 4];
        for r in rs {
            let rv = counts2vec(r, &df, ref_len);
            let rmap: FxMap<Gram, f64> = rv.vec.iter().flatten().copied().collect();
            let s = sim(&h, &rv, &rmap);
            for (acc, x) in score.iter_mut().zip(s) {
                *acc += x;
            }
        }
        let mut avg = np_sum(&score) / 4.0;
        avg /= rs.len() as f64;
        avg *= 10.0;
        scores.push(avg);
    }
    scores
}

/// Seed suite CIDEr: pycocoevalcap Cider on whitespace-normalised strings.
pub(crate) fn seed_cider(cands: &[&str], refs: &[Vec<&str>]) -> Vec<f64> {
    let norm = |s: &str| py_split(s).collect::<Vec<_>>().join(" ");
    let c: Vec<String> = cands.iter().map(|s| norm(s)).collect();
    let r: Vec<Vec<String>> = refs
        .iter()
        .map(|rs| rs.iter().map(|s| norm(s)).collect())
        .collect();
    cider(&c, &r)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identical_single_image() {
        // One image: ref_len = log(1) = 0, so every weight is 0 and CIDEr is 0.
        let s = cider(&["a b c".into()], &[vec!["a b c".into()]]);
        assert_eq!(s, [0.0]);
        let s = cider(
            &["a b c".into(), "x y".into()],
            &[vec!["a b c".into()], vec!["z".into()]],
        );
        assert!(s[0] > 0.0 && s[1] == 0.0);
    }
}
