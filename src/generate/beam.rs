//! Beam search with the exact bookkeeping of `transformers`' `_beam_search` (v5): top-K
//! continuations, finished-hypothesis pool with length penalty, and its early-stop heuristic.

use std::sync::atomic::{AtomicBool, Ordering};

use super::{sampling, GenerateParams, StepModel, TokenCallback};
use crate::error::{Error, Result};

/// When beam search may stop before `max_new_tokens`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EarlyStopping {
    /// Stop when the heuristic says no running beam can beat the finished ones (default).
    Heuristic,
    /// Stop as soon as `num_beams` hypotheses are finished (`early_stopping=True`).
    True,
    /// Canonical beam search: never stop early (`early_stopping="never"`).
    Never,
}

/// Beam-search settings.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BeamParams {
    /// Beams per input.
    pub num_beams: usize,
    /// Exponent of the generated length dividing a finished hypothesis' score.
    pub length_penalty: f32,
    /// Stop rule.
    pub early_stopping: EarlyStopping,
}

impl Default for BeamParams {
    fn default() -> Self {
        Self {
            num_beams: 3,
            length_penalty: 1.0,
            early_stopping: EarlyStopping::Heuristic,
        }
    }
}

const NEG: f32 = -1.0e9;

struct Item {
    running: Vec<Vec<u32>>,
    running_scores: Vec<f32>,
    finished: Vec<Vec<u32>>,
    finished_scores: Vec<f32>,
    is_finished: Vec<bool>,
    heuristic_unsatisfied: bool,
}

/// Indices of the `k` largest values, largest first (stable for equal values).
fn topk(values: &[f32], k: usize) -> Vec<usize> {
    let mut idx: Vec<usize> = (0..values.len()).collect();
    let k = k.min(idx.len());
    idx.select_nth_unstable_by(k.saturating_sub(1), |&a, &b| {
        values[b].total_cmp(&values[a]).then(a.cmp(&b))
    });
    idx.truncate(k);
    idx.sort_by(|&a, &b| values[b].total_cmp(&values[a]).then(a.cmp(&b)));
    idx
}

#[allow(clippy::too_many_arguments)]
pub(super) fn beam_search(
    model: &mut dyn StepModel,
    first_logits: Vec<Vec<f32>>,
    prompts: &[Vec<u32>],
    params: &GenerateParams,
    bp: &BeamParams,
    stop_tokens: &[u32],
    cancel: &AtomicBool,
    on_token: &mut TokenCallback<'_>,
) -> Result<Vec<Vec<u32>>> {
    let nb = bp.num_beams;
    let batch = first_logits.len();
    let max_new = params.max_new_tokens;
    let keep = 2usize.max(1 + stop_tokens.len()) * nb;
    let lp = bp.length_penalty;

    // Every input starts as num_beams identical rows; only beam 0 is live at first.
    let dup: Vec<u32> = (0..batch)
        .flat_map(|b| std::iter::repeat_n(b as u32, nb))
        .collect();
    model.select_rows(&dup)?;
    let mut logits: Vec<Vec<f32>> = dup
        .iter()
        .map(|&b| first_logits[b as usize].clone())
        .collect();
    let mut items: Vec<Item> = (0..batch)
        .map(|_| Item {
            running: vec![Vec::new(); nb],
            running_scores: (0..nb).map(|k| if k == 0 { 0.0 } else { NEG }).collect(),
            finished: vec![Vec::new(); nb],
            finished_scores: vec![NEG; nb],
            is_finished: vec![false; nb],
            heuristic_unsatisfied: true,
        })
        .collect();

    for t in 0..max_new {
        if cancel.load(Ordering::Relaxed) {
            return Err(Error::Cancelled);
        }
        let mut all_hit = true;
        let mut next_rows = Vec::with_capacity(batch * nb);
        let mut next_tokens = Vec::with_capacity(batch * nb);
        for (b, it) in items.iter_mut().enumerate() {
            let vocab = logits[b * nb].len();
            let mut acc = Vec::with_capacity(nb * vocab);
            for k in 0..nb {
                let row = &mut logits[b * nb + k];
                sampling::log_softmax(row);
                if t < params.min_new_tokens {
                    sampling::mask_tokens(row, stop_tokens);
                }
                if params.repetition_penalty != 1.0 {
                    let mut seen = prompts[b].clone();
                    seen.extend_from_slice(&it.running[k]);
                    sampling::apply_repetition_penalty(row, &seen, params.repetition_penalty);
                }
                let s = it.running_scores[k];
                acc.extend(row.iter().map(|&v| v + s));
            }
            let cand = topk(&acc, keep);
            let cand_scores: Vec<f32> = cand.iter().map(|&i| acc[i]).collect();
            let cand_beam: Vec<usize> = cand.iter().map(|&i| i / vocab).collect();
            let cand_tok: Vec<u32> = cand.iter().map(|&i| (i % vocab) as u32).collect();
            let hits: Vec<bool> = cand_tok
                .iter()
                .map(|tk| stop_tokens.contains(tk) || t + 1 >= max_new)
                .collect();
            all_hit &= hits.iter().all(|&h| h);

            // Next running beams: best candidates that did not stop.
            let run_scores: Vec<f32> = cand_scores
                .iter()
                .zip(&hits)
                .map(|(&s, &h)| if h { s + NEG } else { s })
                .collect();
            let chosen = topk(&run_scores, nb);
            let new_running: Vec<Vec<u32>> = chosen
                .iter()
                .map(|&c| {
                    let mut s = it.running[cand_beam[c]].clone();
                    s.push(cand_tok[c]);
                    s
                })
                .collect();
            let new_scores: Vec<f32> = chosen.iter().map(|&c| run_scores[c]).collect();
            for &c in &chosen {
                next_rows.push((b * nb + cand_beam[c]) as u32);
                next_tokens.push(cand_tok[c]);
            }

            // Finished pool: merge the top-num_beams candidates that just stopped.
            let denom = ((t + 1) as f32).powf(lp);
            let full =
                it.is_finished.iter().all(|&f| f) && bp.early_stopping == EarlyStopping::True;
            let mut merged_scores = it.finished_scores.clone();
            let mut merged_seqs = it.finished.clone();
            let mut merged_fin = it.is_finished.clone();
            for c in 0..cand.len() {
                let just = hits[c] && c < nb;
                let mut s = cand_scores[c] / denom;
                if full {
                    s += NEG;
                }
                if !it.heuristic_unsatisfied {
                    s += NEG;
                }
                if !just {
                    s += NEG;
                }
                let mut seq = it.running[cand_beam[c]].clone();
                seq.push(cand_tok[c]);
                merged_scores.push(s);
                merged_seqs.push(seq);
                merged_fin.push(just);
            }
            let best = topk(&merged_scores, nb);
            it.finished = best.iter().map(|&i| merged_seqs[i].clone()).collect();
            it.finished_scores = best.iter().map(|&i| merged_scores[i]).collect();
            it.is_finished = best.iter().map(|&i| merged_fin[i]).collect();
            it.running = new_running;
            it.running_scores = new_scores;

            // Early-stop heuristic with the length after this step.
            let best_len = if bp.early_stopping == EarlyStopping::Never && lp > 0.0 {
                max_new
            } else {
                t + 1
            };
            let best_possible = it.running_scores[0] / (best_len as f32).powf(lp);
            let min_fin = it
                .finished_scores
                .iter()
                .copied()
                .fold(f32::INFINITY, f32::min);
            let any_better = it
                .is_finished
                .iter()
                .any(|&f| best_possible > if f { min_fin } else { NEG });
            it.heuristic_unsatisfied &= any_better;
        }
        let improvement = items.iter().any(|it| it.heuristic_unsatisfied);
        let all_done = items.iter().all(|it| it.is_finished.iter().all(|&f| f))
            && bp.early_stopping == EarlyStopping::True;
        if !improvement || all_done || all_hit {
            break;
        }
        model.select_rows(&next_rows)?;
        logits = model.step(&next_tokens)?;
    }
    let mut out = Vec::with_capacity(batch);
    for (b, it) in items.into_iter().enumerate() {
        let seq = it.finished.into_iter().next().unwrap_or_default();
        for &tk in &seq {
            if on_token(b, tk).is_break() {
                break;
            }
        }
        out.push(seq);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::topk;

    #[test]
    fn topk_orders_descending() {
        assert_eq!(topk(&[0.1, 0.5, -1.0, 0.5], 3), vec![1, 3, 0]);
    }
}
