//! Caption metrics equal to the Python packages the seed's eval script and COCO use.
//!
//! Two suites ([`Suite`]):
//! - `Seed`: BLEU-1..4 as HF `evaluate` "bleu" (sacrebleu's 13a tokenizer + tensorflow/nmt
//!   corpus BLEU, no smoothing), METEOR as `evaluate` "meteor" (NLTK `meteor_score` on
//!   `word_tokenize` output: Punkt sentences + the NLTK word tokenizer, Porter stems, WordNet 3.0
//!   synonyms; alpha 0.9, beta 3, gamma 0.5), ROUGE-L as `rouge_score` (Porter stemmer, best F
//!   over references), CIDEr(-D) as `pycocoevalcap` Cider on whitespace-normalised strings.
//!   Corpus values are `np.mean` of the per-image values except BLEU (corpus statistics).
//! - `Coco`: `pycocoevalcap` COCOEvalCap: its PTB tokenizer (the Stanford CoreNLP 3.4.1 jar with
//!   `-preserveLines -lowerCase`, reimplemented natively) and punctuation removal, BLEU-1..4
//!   (closest reference length), ROUGE-L (beta 1.2), CIDEr-D. METEOR in this suite is the NLTK
//!   METEOR of the seed suite computed on the PTB tokens: the Meteor 1.5 jar (paraphrase tables,
//!   its own stemmer and weights) is not reproduced and gives different (lower) values.
//!
//! Scores are plain fractions (BLEU 0.1573, not 15.73); [`cli::score_files`] prints the
//! seed-style scorecard (×100 except CIDEr).

pub mod bleu;
pub mod cider;
pub mod cli;
pub mod meteor;
pub mod porter;
pub mod ptb;
mod ptb_chars;
pub mod punkt;
pub mod rouge;
pub mod tokenize;
pub mod wordnet;

use std::collections::BTreeMap;

/// Errors of the metrics module.
#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    /// No images were given.
    #[error("no captions to score")]
    Empty,
    /// Candidate and reference counts differ.
    #[error("{cands} candidates but {refs} reference sets")]
    LengthMismatch {
        /// Number of candidates.
        cands: usize,
        /// Number of reference sets.
        refs: usize,
    },
    /// An image has no reference caption.
    #[error("image {image} has no reference captions")]
    NoReferences {
        /// Index (or id) of the image.
        image: String,
    },
    /// CSR offsets are not a non-decreasing sequence from 0 to the number of references.
    #[error("invalid reference offsets: {0}")]
    BadOffsets(String),
    /// Unknown suite name.
    #[error("unknown metric suite {0:?} (expected \"seed\" or \"coco\")")]
    UnknownSuite(String),
    /// A file could not be read.
    #[error("cannot read {path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The cause.
        source: std::io::Error,
    },
    /// A file is not in the expected JSON format.
    #[error("{path}: {msg}")]
    Format {
        /// The file.
        path: String,
        /// What is wrong.
        msg: String,
    },
    /// A caption is longer than the byte limit.
    #[error("{0}")]
    Limit(String),
    /// The embedded WordNet index is corrupt (a build problem, never user input).
    #[error("embedded WordNet index is corrupt: {0}")]
    WordNet(String),
}

/// Result type of the metrics module.
pub type Result<T> = std::result::Result<T, MetricsError>;

/// Which implementation family the scores must equal.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Suite {
    /// The seed's eval script: HF evaluate BLEU/METEOR, rouge_score, pycocoevalcap CIDEr.
    Seed,
    /// pycocoevalcap's COCOEvalCap on PTB-tokenized captions.
    Coco,
}

impl Suite {
    /// The suite's name as used on the command line ("seed" or "coco").
    pub fn name(self) -> &'static str {
        match self {
            Suite::Seed => "seed",
            Suite::Coco => "coco",
        }
    }
}

impl std::str::FromStr for Suite {
    type Err = MetricsError;
    fn from_str(s: &str) -> Result<Self> {
        match s.to_ascii_lowercase().as_str() {
            "seed" => Ok(Suite::Seed),
            "coco" => Ok(Suite::Coco),
            _ => Err(MetricsError::UnknownSuite(s.to_string())),
        }
    }
}

/// Stable metric names, in scorecard order.
pub const METRIC_NAMES: [&str; 7] = [
    "BLEU-1", "BLEU-2", "BLEU-3", "BLEU-4", "METEOR", "ROUGE-L", "CIDEr",
];

/// Corpus and per-image scores of one scoring run.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Scores {
    /// The suite that produced the scores.
    pub suite: Suite,
    /// Corpus-level score per metric name.
    pub corpus: BTreeMap<String, f64>,
    /// Per-image scores per metric name (index = image index of the input).
    pub per_image: BTreeMap<String, Vec<f64>>,
}

impl Scores {
    /// Number of images scored.
    pub fn len(&self) -> usize {
        self.per_image.values().next().map_or(0, Vec::len)
    }

    /// True when no image was scored.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Corpus score of `metric` (e.g. "BLEU-4").
    pub fn get(&self, metric: &str) -> Option<f64> {
        self.corpus.get(metric).copied()
    }

    /// All metric scores of image `i`.
    pub fn image(&self, i: usize) -> Option<BTreeMap<String, f64>> {
        if i >= self.len() {
            return None;
        }
        Some(
            self.per_image
                .iter()
                .map(|(k, v)| (k.clone(), v[i]))
                .collect(),
        )
    }
}

/// Default longest caption (candidate or reference) scored, in bytes: COCO captions are under
/// 1 KiB; the bound keeps tokenizing and the n-gram and LCS work of one image small.
pub const DEFAULT_MAX_CAPTION_BYTES: usize = 64 << 10;

/// Refuses any caption longer than `max` bytes, naming it, before any tokenizing.
fn check_lengths(cands: &[&str], refs: &[Vec<&str>], max: usize) -> Result<()> {
    if max == 0 {
        return Err(MetricsError::Limit(
            "max_caption_bytes must be at least 1".into(),
        ));
    }
    if let Some((i, c)) = cands.iter().enumerate().find(|(_, c)| c.len() > max) {
        return Err(MetricsError::Limit(format!(
            "candidate {i}: caption of {} bytes exceeds max_caption_bytes {max}",
            c.len()
        )));
    }
    for (i, rs) in refs.iter().enumerate() {
        if let Some((j, r)) = rs.iter().enumerate().find(|(_, r)| r.len() > max) {
            return Err(MetricsError::Limit(format!(
                "image {i}, reference {j}: caption of {} bytes exceeds max_caption_bytes {max}",
                r.len()
            )));
        }
    }
    Ok(())
}

/// Scores candidates against references: `refs[i]` are the references of `cands[i]`; captions
/// of more than [`DEFAULT_MAX_CAPTION_BYTES`] are refused.
pub fn score<C: AsRef<str>, R: AsRef<str>>(
    cands: &[C],
    refs: &[Vec<R>],
    suite: Suite,
) -> Result<Scores> {
    score_limited(cands, refs, suite, DEFAULT_MAX_CAPTION_BYTES)
}

/// [`score`] with a caption byte limit of `max_caption_bytes`.
pub fn score_limited<C: AsRef<str>, R: AsRef<str>>(
    cands: &[C],
    refs: &[Vec<R>],
    suite: Suite,
    max_caption_bytes: usize,
) -> Result<Scores> {
    if cands.len() != refs.len() {
        return Err(MetricsError::LengthMismatch {
            cands: cands.len(),
            refs: refs.len(),
        });
    }
    let cands: Vec<&str> = cands.iter().map(AsRef::as_ref).collect();
    let refs: Vec<Vec<&str>> = refs
        .iter()
        .map(|r| r.iter().map(AsRef::as_ref).collect())
        .collect();
    check_lengths(&cands, &refs, max_caption_bytes)?;
    score_str(&cands, &refs, suite)
}

/// Index-based form for the C API: image `i` has the references
/// `refs[ref_offsets[i]..ref_offsets[i + 1]]` (`ref_offsets.len() == cands.len() + 1`).
pub fn score_csr(
    cands: &[&str],
    refs: &[&str],
    ref_offsets: &[usize],
    suite: Suite,
) -> Result<Scores> {
    score_csr_limited(cands, refs, ref_offsets, suite, DEFAULT_MAX_CAPTION_BYTES)
}

/// [`score_csr`] with a caption byte limit of `max_caption_bytes`.
pub fn score_csr_limited(
    cands: &[&str],
    refs: &[&str],
    ref_offsets: &[usize],
    suite: Suite,
    max_caption_bytes: usize,
) -> Result<Scores> {
    if ref_offsets.len() != cands.len() + 1 {
        return Err(MetricsError::BadOffsets(format!(
            "{} offsets for {} candidates (need candidates + 1)",
            ref_offsets.len(),
            cands.len()
        )));
    }
    if ref_offsets[0] != 0 || ref_offsets[cands.len()] != refs.len() {
        return Err(MetricsError::BadOffsets(format!(
            "offsets must start at 0 and end at {} (the number of references)",
            refs.len()
        )));
    }
    // Check the whole sequence first: a later decrease can leave an earlier range past the end.
    if let Some(i) = ref_offsets.windows(2).position(|w| w[1] < w[0]) {
        return Err(MetricsError::BadOffsets(format!(
            "offset {} decreases",
            i + 1
        )));
    }
    let sets: Vec<Vec<&str>> = ref_offsets
        .windows(2)
        .map(|w| refs[w[0]..w[1]].to_vec())
        .collect();
    check_lengths(cands, &sets, max_caption_bytes)?;
    score_str(cands, &sets, suite)
}

fn score_str(cands: &[&str], refs: &[Vec<&str>], suite: Suite) -> Result<Scores> {
    if cands.is_empty() {
        return Err(MetricsError::Empty);
    }
    if cands.len() != refs.len() {
        return Err(MetricsError::LengthMismatch {
            cands: cands.len(),
            refs: refs.len(),
        });
    }
    if let Some(i) = refs.iter().position(Vec::is_empty) {
        return Err(MetricsError::NoReferences {
            image: i.to_string(),
        });
    }
    let mut corpus = BTreeMap::new();
    let mut per_image = BTreeMap::new();
    let mut put = |name: &str, c: f64, p: Vec<f64>| {
        corpus.insert(name.to_string(), c);
        per_image.insert(name.to_string(), p);
    };
    match suite {
        Suite::Seed => {
            let b = bleu::seed_bleu(cands, refs);
            for (n, (c, p)) in b.into_iter().enumerate() {
                put(METRIC_NAMES[n], c, p);
            }
            let m = meteor::seed_meteor(cands, refs)?;
            put("METEOR", np_mean(&m), m);
            let r = rouge::seed_rouge_l(cands, refs);
            put("ROUGE-L", np_mean(&r), r);
            let c = cider::seed_cider(cands, refs);
            put("CIDEr", np_mean(&c), c);
        }
        Suite::Coco => {
            let tc: Vec<String> = cands.iter().map(|c| ptb::coco_tokenize(c)).collect();
            let tr: Vec<Vec<String>> = refs
                .iter()
                .map(|rs| rs.iter().map(|r| ptb::coco_tokenize(r)).collect())
                .collect();
            let b = bleu::coco_bleu(&tc, &tr);
            for (n, (c, p)) in b.into_iter().enumerate() {
                put(METRIC_NAMES[n], c, p);
            }
            let m = meteor::meteor_pretokenized(&tc, &tr)?;
            put("METEOR", np_mean(&m), m);
            let r = rouge::coco_rouge_l(&tc, &tr);
            put("ROUGE-L", np_mean(&r), r);
            let c = cider::cider(&tc, &tr);
            put("CIDEr", np_mean(&c), c);
        }
    }
    Ok(Scores {
        suite,
        corpus,
        per_image,
    })
}

/// `numpy.sum` of a float64 vector (numpy's pairwise summation, bit for bit).
pub(crate) fn np_sum(a: &[f64]) -> f64 {
    let n = a.len();
    if n < 8 {
        let mut res = 0.0;
        for &x in a {
            res += x;
        }
        res
    } else if n <= 128 {
        let mut r = [0.0f64; 8];
        r.copy_from_slice(&a[..8]);
        let mut i = 8;
        while i < n - (n % 8) {
            for j in 0..8 {
                r[j] += a[i + j];
            }
            i += 8;
        }
        let mut res = ((r[0] + r[1]) + (r[2] + r[3])) + ((r[4] + r[5]) + (r[6] + r[7]));
        while i < n {
            res += a[i];
            i += 1;
        }
        res
    } else {
        let mut n2 = n / 2;
        n2 -= n2 % 8;
        np_sum(&a[..n2]) + np_sum(&a[n2..])
    }
}

/// `numpy.mean` of a float64 vector (0.0 for an empty one, where numpy gives NaN).
pub(crate) fn np_mean(a: &[f64]) -> f64 {
    if a.is_empty() {
        return 0.0;
    }
    np_sum(a) / a.len() as f64
}

/// Python's `x ** y` / C `pow` (kept opaque so LLVM does not rewrite it as `x * x` or `sqrt`).
#[inline]
pub(crate) fn py_pow(x: f64, y: f64) -> f64 {
    x.powf(std::hint::black_box(y))
}

/// A token n-gram (up to 4 interned tokens; unused slots are `u32::MAX`).
pub(crate) type Gram = [u32; 4];

/// Builds the n-gram key of `toks` (1 to 4 tokens).
#[inline]
pub(crate) fn gram(toks: &[u32]) -> Gram {
    let mut g = [u32::MAX; 4];
    g[..toks.len()].copy_from_slice(toks);
    g
}

/// Order (1..=4) of an n-gram key.
#[inline]
pub(crate) fn gram_order(g: &Gram) -> usize {
    g.iter().take_while(|&&t| t != u32::MAX).count()
}

/// Maps token strings to dense ids.
#[derive(Default)]
pub(crate) struct Interner<'a> {
    map: FxMap<&'a str, u32>,
}

impl<'a> Interner<'a> {
    /// The id of `s`, assigning the next one on first sight.
    pub(crate) fn id(&mut self, s: &'a str) -> u32 {
        let n = self.map.len() as u32;
        *self.map.entry(s).or_insert(n)
    }

    /// Ids of a token list.
    pub(crate) fn ids<I: IntoIterator<Item = &'a str>>(&mut self, toks: I) -> Vec<u32> {
        toks.into_iter().map(|t| self.id(t)).collect()
    }
}

/// A small, fast, non-cryptographic hasher (FxHash) for the n-gram maps.
#[derive(Default, Clone, Copy)]
pub(crate) struct FxHasher(u64);

impl std::hash::Hasher for FxHasher {
    #[inline]
    fn write(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(8) {
            let mut b = [0u8; 8];
            b[..chunk.len()].copy_from_slice(chunk);
            self.write_u64(u64::from_le_bytes(b));
        }
    }
    #[inline]
    fn write_u32(&mut self, i: u32) {
        self.write_u64(u64::from(i));
    }
    #[inline]
    fn write_u64(&mut self, i: u64) {
        self.0 = (self.0.rotate_left(5) ^ i).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
    }
    #[inline]
    fn write_usize(&mut self, i: usize) {
        self.write_u64(i as u64);
    }
    #[inline]
    fn finish(&self) -> u64 {
        self.0
    }
}

/// HashMap with [`FxHasher`].
pub(crate) type FxMap<K, V> =
    std::collections::HashMap<K, V, std::hash::BuildHasherDefault<FxHasher>>;

/// Python `str.isspace()` for one character (the separators of `str.split()`).
#[inline]
pub(crate) fn is_py_space(c: char) -> bool {
    matches!(
        c,
        '\t'..='\r'
            | '\x1c'..='\x1f'
            | ' '
            | '\u{85}'
            | '\u{a0}'
            | '\u{1680}'
            | '\u{2000}'..='\u{200a}'
            | '\u{2028}'
            | '\u{2029}'
            | '\u{202f}'
            | '\u{205f}'
            | '\u{3000}'
    )
}

/// Python `str.split()` (no argument): runs of Unicode whitespace separate, no empty pieces.
pub(crate) fn py_split(s: &str) -> impl Iterator<Item = &str> {
    s.split(is_py_space).filter(|t| !t.is_empty())
}

#[cfg(test)]
mod csr_tests {
    use super::*;

    #[test]
    fn non_monotonic_offsets_are_an_error_not_a_panic() {
        let r = score_csr(
            &["a", "b", "c"],
            &["x", "y", "z"],
            &[0, 1000, 2, 3],
            Suite::Seed,
        );
        assert!(matches!(r, Err(MetricsError::BadOffsets(_))));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn np_sum_matches_pairwise_shape() {
        let a: Vec<f64> = (0..1000).map(|i| (i as f64).sin() * 1e3).collect();
        let naive: f64 = a.iter().sum();
        assert!((np_sum(&a) - naive).abs() < 1e-6);
        assert_eq!(np_sum(&[]), 0.0);
        assert_eq!(np_mean(&[1.0, 2.0]), 1.5);
    }

    #[test]
    fn py_split_whitespace() {
        let v: Vec<&str> = py_split(" a\u{a0}b\x1cc  d\u{200b}e ").collect();
        assert_eq!(v, ["a", "b", "c", "d\u{200b}e"]);
    }

    #[test]
    fn errors() {
        let e = score(&["a"], &[Vec::<String>::new()], Suite::Seed).unwrap_err();
        assert!(matches!(e, MetricsError::NoReferences { .. }));
        let e = score::<&str, &str>(&[], &[], Suite::Seed).unwrap_err();
        assert!(matches!(e, MetricsError::Empty));
        let e = score(&["a", "b"], &[vec!["a"]], Suite::Coco).unwrap_err();
        assert!(matches!(e, MetricsError::LengthMismatch { .. }));
        let e = score_csr(&["a"], &["x"], &[0, 2], Suite::Seed).unwrap_err();
        assert!(matches!(e, MetricsError::BadOffsets(_)));
        let s = score_csr(&["a dog"], &["a dog", "a cat"], &[0, 2], Suite::Seed).unwrap();
        assert_eq!(s.len(), 1);
        assert!("COCO".parse::<Suite>().is_ok() && "x".parse::<Suite>().is_err());
    }
}
