//! Caption metrics (BLEU-1..4, METEOR, ROUGE-L, CIDEr) over candidates and CSR references.

use std::ffi::{c_char, CString};

use super::handles;
use super::status::{entry, entry_value, smolcap_status, FfiError, FfiResult};
use crate::error::Error;
use crate::metrics::{self, Scores, Suite, METRIC_NAMES};

/// `suite` of `smolcap_score_captions`: the seed's eval script (HF evaluate BLEU and METEOR,
/// rouge_score ROUGE-L, pycocoevalcap CIDEr on whitespace-normalised strings).
pub const SMOLCAP_SUITE_SEED: u32 = 0;
/// `suite` of `smolcap_score_captions`: pycocoevalcap's COCOEvalCap on PTB-tokenized captions
/// (METEOR is NLTK's on the PTB tokens, not the Meteor 1.5 jar).
pub const SMOLCAP_SUITE_COCO: u32 = 1;

/// Corpus and per-image scores of one `smolcap_score_captions` call. Immutable: may be read
/// from several threads at once. Metric names stay valid until `smolcap_scores_free`.
pub struct smolcap_scores {
    scores: Scores,
    /// Metric names present, in scorecard order, NUL-terminated.
    names: Vec<CString>,
}

impl smolcap_scores {
    fn metric<'a>(&'a self, metric: &str) -> FfiResult<&'a Vec<f64>> {
        self.scores.per_image.get(metric).ok_or_else(|| {
            let known: Vec<_> = self.names.iter().map(|n| n.to_string_lossy()).collect();
            FfiError::invalid(format!(
                "metric {metric:?} is not one of {}",
                known.join(", ")
            ))
        })
    }
}

/// Scores `n_cands` candidate captions against their references: candidate `i` has the
/// references `refs[ref_offsets[i] .. ref_offsets[i + 1]]` (CSR: `ref_offsets` has
/// `n_cands + 1` non-decreasing entries, `ref_offsets[0]` = 0, the last = the number of
/// references, each image at least one). `suite` is a `SMOLCAP_SUITE_*` value. All strings are
/// UTF-8 and borrowed for the call. On success `*out` receives the scores; free them with
/// `smolcap_scores_free`. Scores are fractions (BLEU 0.157, not 15.7).
///
/// # Safety
/// `cands` NULL or `n_cands` pointers; `ref_offsets` NULL or `n_cands + 1` values; `refs` NULL
/// or `ref_offsets[n_cands]` pointers; every string pointer NULL or NUL-terminated; `out` NULL
/// or writable.
#[no_mangle]
pub unsafe extern "C" fn smolcap_score_captions(
    cands: *const *const c_char,
    n_cands: usize,
    refs: *const *const c_char,
    ref_offsets: *const usize,
    suite: u32,
    out: *mut *mut smolcap_scores,
) -> smolcap_status {
    entry("smolcap_score_captions", || {
        handles::check_out(out, "out")?;
        let suite = match suite {
            SMOLCAP_SUITE_SEED => Suite::Seed,
            SMOLCAP_SUITE_COCO => Suite::Coco,
            v => {
                return Err(FfiError::invalid(format!(
                    "suite {v} is not a SMOLCAP_SUITE_* value"
                )))
            }
        };
        if n_cands == 0 {
            return Err(FfiError::invalid("n_cands is 0 (nothing to score)"));
        }
        // SAFETY: caller contract, count bounded by `slice`.
        let cand_ptrs = unsafe { handles::slice(cands, n_cands, "cands") }?;
        // SAFETY: as above; n_cands <= MAX_ARRAY_LEN so + 1 cannot overflow.
        let offsets = unsafe { handles::slice(ref_offsets, n_cands + 1, "ref_offsets") }?;
        if offsets[0] != 0 {
            return Err(FfiError::invalid(format!(
                "ref_offsets[0] is {}, must be 0",
                offsets[0]
            )));
        }
        for i in 0..n_cands {
            if offsets[i + 1] < offsets[i] {
                return Err(FfiError::invalid(format!(
                    "ref_offsets[{}] = {} is smaller than ref_offsets[{i}] = {} (offsets must \
                     not decrease)",
                    i + 1,
                    offsets[i + 1],
                    offsets[i]
                )));
            }
            if offsets[i + 1] == offsets[i] {
                return Err(FfiError::invalid(format!(
                    "image {i} has no references (ref_offsets[{i}] == ref_offsets[{}] == {})",
                    i + 1,
                    offsets[i]
                )));
            }
        }
        let n_refs = offsets[n_cands];
        // SAFETY: caller contract: `refs` holds `ref_offsets[n_cands]` pointers.
        let ref_ptrs = unsafe { handles::slice(refs, n_refs, "refs") }?;
        let read = |ptrs: &[*const c_char], what: &str| -> FfiResult<Vec<&str>> {
            ptrs.iter()
                .enumerate()
                // SAFETY: caller contract: each pointer NULL or NUL-terminated.
                .map(|(i, &p)| unsafe { handles::req_str(p, &format!("{what}[{i}]")) })
                .collect()
        };
        let c = read(cand_ptrs, "cands")?;
        let r = read(ref_ptrs, "refs")?;
        let scores = metrics::score_csr(&c, &r, offsets, suite)
            .map_err(|e| FfiError::from(Error::from(e)))?;
        let mut present: Vec<&str> = METRIC_NAMES
            .iter()
            .copied()
            .filter(|n| scores.per_image.contains_key(*n))
            .collect();
        present.extend(
            scores
                .per_image
                .keys()
                .map(String::as_str)
                .filter(|k| !METRIC_NAMES.contains(k)),
        );
        let names = present
            .into_iter()
            .map(|n| CString::new(n).unwrap_or_default())
            .collect();
        let h = handles::into_handle(smolcap_scores { scores, names });
        // SAFETY: checked non-NULL; writable per the contract.
        unsafe { out.write(h) };
        Ok(())
    })
}

/// Number of images scored (0 for NULL).
///
/// # Safety
/// `scores` must be NULL or a live scores object.
#[no_mangle]
pub unsafe extern "C" fn smolcap_scores_count(scores: *const smolcap_scores) -> usize {
    entry_value("smolcap_scores_count", 0, || {
        // SAFETY: caller contract.
        unsafe { scores.as_ref() }.map_or(0, |s| s.scores.len())
    })
}

/// Number of metrics (7: BLEU-1..4, METEOR, ROUGE-L, CIDEr; 0 for NULL).
///
/// # Safety
/// `scores` must be NULL or a live scores object.
#[no_mangle]
pub unsafe extern "C" fn smolcap_scores_metric_count(scores: *const smolcap_scores) -> usize {
    entry_value("smolcap_scores_metric_count", 0, || {
        // SAFETY: caller contract.
        unsafe { scores.as_ref() }.map_or(0, |s| s.names.len())
    })
}

/// The name of metric `index` ("BLEU-1", "BLEU-2", "BLEU-3", "BLEU-4", "METEOR", "ROUGE-L",
/// "CIDEr", in that order): `*name` receives a NUL-terminated string owned by `scores`.
///
/// # Safety
/// `scores` NULL or live; `name` NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn smolcap_scores_metric_name(
    scores: *const smolcap_scores,
    index: usize,
    name: *mut *const c_char,
) -> smolcap_status {
    entry("smolcap_scores_metric_name", || {
        // SAFETY: caller contract.
        let s = unsafe { handles::handle(scores, "scores") }?;
        handles::check_out(name, "name")?;
        let n = s.names.get(index).ok_or_else(|| {
            FfiError::invalid(format!(
                "index {index} is out of range (there are {} metrics)",
                s.names.len()
            ))
        })?;
        // SAFETY: checked non-NULL.
        unsafe { name.write(n.as_ptr()) };
        Ok(())
    })
}

/// The corpus-level score of `metric` (a name from `smolcap_scores_metric_name`).
///
/// # Safety
/// `scores` NULL or live; `metric` NULL or NUL-terminated; `out` NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn smolcap_scores_corpus(
    scores: *const smolcap_scores,
    metric: *const c_char,
    out: *mut f64,
) -> smolcap_status {
    entry("smolcap_scores_corpus", || {
        // SAFETY: caller contract.
        let s = unsafe { handles::handle(scores, "scores") }?;
        // SAFETY: caller contract.
        let m = unsafe { handles::req_str(metric, "metric") }?;
        handles::check_out(out, "out")?;
        s.metric(m)?;
        let v = s
            .scores
            .get(m)
            .ok_or_else(|| FfiError::invalid(format!("metric {m:?} has no corpus score")))?;
        // SAFETY: checked non-NULL.
        unsafe { out.write(v) };
        Ok(())
    })
}

/// The score of `metric` for image `image` (its position in the `cands` array).
///
/// # Safety
/// `scores` NULL or live; `metric` NULL or NUL-terminated; `out` NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn smolcap_scores_image(
    scores: *const smolcap_scores,
    image: usize,
    metric: *const c_char,
    out: *mut f64,
) -> smolcap_status {
    entry("smolcap_scores_image", || {
        // SAFETY: caller contract.
        let s = unsafe { handles::handle(scores, "scores") }?;
        // SAFETY: caller contract.
        let m = unsafe { handles::req_str(metric, "metric") }?;
        handles::check_out(out, "out")?;
        let v = s.metric(m)?;
        let x = v.get(image).copied().ok_or_else(|| {
            FfiError::invalid(format!(
                "image {image} is out of range ({} images were scored)",
                v.len()
            ))
        })?;
        // SAFETY: checked non-NULL.
        unsafe { out.write(x) };
        Ok(())
    })
}

/// Frees a scores object; NULL is a no-op.
///
/// # Safety
/// `scores` must be NULL or a live scores object.
#[no_mangle]
pub unsafe extern "C" fn smolcap_scores_free(scores: *mut smolcap_scores) {
    let _ = entry("smolcap_scores_free", || {
        // SAFETY: forwarded contract.
        unsafe { handles::free_handle(scores) };
        Ok(())
    });
}
