//! NLTK METEOR (`nltk.translate.meteor_score`, NLTK 3.10) as HF `evaluate` "meteor" calls it:
//! `meteor_score([word_tokenize(r) for r in refs], word_tokenize(hyp), alpha=0.9, beta=3,
//! gamma=0.5)` per image — exact, Porter-stem and WordNet-synonym matching, best reference.

use std::collections::HashMap;

use super::{porter, py_pow, tokenize::word_tokenize, wordnet, FxMap, Result};

const ALPHA: f64 = 0.9;
const BETA: f64 = 3.0;
const GAMMA: f64 = 0.5;

type Enum = Vec<(usize, String)>;

/// `_match_enums`: each hypothesis word (right to left) takes the right-most unmatched equal
/// reference word.
fn match_enums(hyp: Enum, refs: Enum) -> (Vec<(usize, usize)>, Enum, Enum) {
    let mut positions: FxMap<&str, Vec<usize>> = FxMap::default();
    for (j, (_, w)) in refs.iter().enumerate() {
        positions.entry(w.as_str()).or_default().push(j);
    }
    let mut hm = vec![false; hyp.len()];
    let mut rm = vec![false; refs.len()];
    let mut matches = Vec::new();
    for i in (0..hyp.len()).rev() {
        if let Some(j) = positions.get_mut(hyp[i].1.as_str()).and_then(Vec::pop) {
            hm[i] = true;
            rm[j] = true;
            matches.push((hyp[i].0, refs[j].0));
        }
    }
    drop(positions);
    let h = hyp
        .into_iter()
        .zip(hm)
        .filter(|(_, m)| !m)
        .map(|(p, _)| p)
        .collect();
    let r = refs
        .into_iter()
        .zip(rm)
        .filter(|(_, m)| !m)
        .map(|(p, _)| p)
        .collect();
    (matches, h, r)
}

/// Per-thread memo of Porter stems and WordNet synonym ids (pure functions of the word).
pub(crate) struct Ctx {
    wn: &'static wordnet::WordNet,
    stems: HashMap<String, String>,
    syns: HashMap<String, Vec<u32>>,
}

impl Ctx {
    /// A context on the embedded WordNet.
    pub(crate) fn new() -> Result<Ctx> {
        Ok(Ctx {
            wn: wordnet::wordnet()?,
            stems: HashMap::new(),
            syns: HashMap::new(),
        })
    }

    fn stem(&mut self, w: &str) -> String {
        if let Some(s) = self.stems.get(w) {
            return s.clone();
        }
        let s = porter::stem(w);
        self.stems.insert(w.to_string(), s.clone());
        s
    }

    fn synonyms(&mut self, w: &str) -> &[u32] {
        if !self.syns.contains_key(w) {
            let mut ids = Vec::new();
            self.wn.synonym_ids(w, &mut ids);
            ids.sort_unstable();
            ids.dedup();
            self.syns.insert(w.to_string(), ids);
        }
        &self.syns[w]
    }
}

fn stem_match(hyp: Enum, refs: Enum, ctx: &mut Ctx) -> (Vec<(usize, usize)>, Enum, Enum) {
    // NLTK hands the *stemmed* leftovers on to the synonym stage; so do we.
    let hs: Enum = hyp.into_iter().map(|(i, w)| (i, ctx.stem(&w))).collect();
    let rs: Enum = refs.into_iter().map(|(i, w)| (i, ctx.stem(&w))).collect();
    match_enums(hs, rs)
}

fn synonym_match(hyp: Enum, refs: Enum, ctx: &mut Ctx) -> Vec<(usize, usize)> {
    let mut positions: FxMap<&str, Vec<usize>> = FxMap::default();
    for (j, (_, w)) in refs.iter().enumerate() {
        positions.entry(w.as_str()).or_default().push(j);
    }
    let mut matches = Vec::new();
    for i in (0..hyp.len()).rev() {
        let word = hyp[i].1.as_str();
        let wn = ctx.wn;
        // best_j over hypothesis_syns (WordNet names + the word itself); j values are distinct
        let mut best: Option<(usize, &str)> = None;
        let names = ctx.synonyms(word).iter().map(|&id| wn.string(id));
        for syn in names.chain(std::iter::once(word)) {
            if let Some(&j) = positions.get(syn).and_then(|v| v.last()) {
                if best.is_none_or(|(bj, _)| j > bj) {
                    best = Some((j, syn));
                }
            }
        }
        if let Some((j, syn)) = best {
            let key = syn.to_string();
            if let Some(v) = positions.get_mut(key.as_str()) {
                v.pop();
            }
            matches.push((hyp[i].0, refs[j].0));
        }
    }
    matches
}

fn count_chunks(m: &[(usize, usize)]) -> usize {
    let mut chunks = 1;
    let mut i = 0;
    while i + 1 < m.len() {
        if !(m[i + 1].0 == m[i].0 + 1 && m[i + 1].1 == m[i].1 + 1) {
            chunks += 1;
        }
        i += 1;
    }
    chunks
}

fn single(reference: &[String], hypothesis: &[String], ctx: &mut Ctx) -> f64 {
    let hyp: Enum = hypothesis
        .iter()
        .map(|w| w.to_lowercase())
        .enumerate()
        .collect();
    let refs: Enum = reference
        .iter()
        .map(|w| w.to_lowercase())
        .enumerate()
        .collect();
    let (tl, rl) = (hyp.len(), refs.len());
    let (mut matches, h, r) = match_enums(hyp, refs);
    let (m2, h, r) = stem_match(h, r, ctx);
    matches.extend(m2);
    matches.extend(synonym_match(h, r, ctx));
    matches.sort_by_key(|m| m.0);
    let m = matches.len();
    // NLTK returns 0.0 on ZeroDivisionError: empty hypothesis/reference or no match.
    if tl == 0 || rl == 0 || m == 0 {
        return 0.0;
    }
    let precision = m as f64 / tl as f64;
    let recall = m as f64 / rl as f64;
    let fmean = (precision * recall) / (ALPHA * precision + (1.0 - ALPHA) * recall);
    let frag_frac = count_chunks(&matches) as f64 / m as f64;
    let penalty = GAMMA * py_pow(frag_frac, BETA);
    (1.0 - penalty) * fmean
}

fn best(references: &[Vec<String>], hypothesis: &[String], ctx: &mut Ctx) -> f64 {
    let mut best: Option<f64> = None;
    for r in references {
        let s = single(r, hypothesis, ctx);
        if best.is_none_or(|b| s > b) {
            best = Some(s);
        }
    }
    best.unwrap_or(0.0)
}

/// `single_meteor_score(reference, hypothesis)` on token lists.
pub fn single_meteor(reference: &[String], hypothesis: &[String]) -> Result<f64> {
    Ok(single(reference, hypothesis, &mut Ctx::new()?))
}

/// `meteor_score(references, hypothesis)`: the best single-reference score.
pub fn meteor_score(references: &[Vec<String>], hypothesis: &[String]) -> Result<f64> {
    Ok(best(references, hypothesis, &mut Ctx::new()?))
}

/// METEOR per image of tokenized candidates/references (parallel over images).
fn per_image(cands: Vec<Vec<String>>, refs: Vec<Vec<Vec<String>>>) -> Result<Vec<f64>> {
    use rayon::prelude::*;
    Ctx::new()?;
    Ok(cands
        .par_iter()
        .zip(refs.par_iter())
        .map_init(
            || Ctx::new().ok(),
            |ctx, (c, rs)| ctx.as_mut().map_or(0.0, |ctx| best(rs, c, ctx)),
        )
        .collect())
}

/// Seed suite METEOR per image (raw strings, NLTK `word_tokenize`).
pub(crate) fn seed_meteor(cands: &[&str], refs: &[Vec<&str>]) -> Result<Vec<f64>> {
    use rayon::prelude::*;
    let c: Vec<Vec<String>> = cands.par_iter().map(|c| word_tokenize(c)).collect();
    let r: Vec<Vec<Vec<String>>> = refs
        .par_iter()
        .map(|rs| rs.iter().map(|r| word_tokenize(r)).collect())
        .collect();
    per_image(c, r)
}

/// METEOR per image on already tokenized, space-joined strings (coco suite).
pub(crate) fn meteor_pretokenized(cands: &[String], refs: &[Vec<String>]) -> Result<Vec<f64>> {
    let split = |s: &String| -> Vec<String> { super::py_split(s).map(str::to_string).collect() };
    per_image(
        cands.iter().map(split).collect(),
        refs.iter()
            .map(|rs| rs.iter().map(split).collect())
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn toks(s: &str) -> Vec<String> {
        s.split(' ').map(str::to_string).collect()
    }

    #[test]
    fn nltk_doc_example() {
        // nltk meteor_score docstring: 0.6944 (hypothesis1 vs reference1)
        let hyp = toks("It is a guide to action which ensures that the military always obeys the commands of the party");
        let r = toks("It is a guide to action that ensures that the military will forever heed Party commands");
        let s = single_meteor(&r, &hyp).unwrap();
        assert!((s - 0.6944).abs() < 1e-4, "{s}");
    }
}
