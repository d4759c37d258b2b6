//! Logits processing as `transformers` applies it: repetition penalty, temperature, top-k, top-p.

use rand::rngs::StdRng;
use rand::Rng;

/// Divides positive / multiplies negative logits of every token already in `seen` by `penalty`.
pub fn apply_repetition_penalty(logits: &mut [f32], seen: &[u32], penalty: f32) {
    if penalty == 1.0 {
        return;
    }
    let mut done = vec![false; logits.len()];
    for &t in seen {
        let t = t as usize;
        if t < logits.len() && !done[t] {
            done[t] = true;
            let v = logits[t];
            logits[t] = if v < 0.0 { v * penalty } else { v / penalty };
        }
    }
}

/// Sets the logits of `tokens` to -inf (`min_new_tokens` before the minimum is reached).
pub fn mask_tokens(logits: &mut [f32], tokens: &[u32]) {
    for &t in tokens {
        if let Some(v) = logits.get_mut(t as usize) {
            *v = f32::NEG_INFINITY;
        }
    }
}

/// Index of the largest value (the first one on ties, as `torch.argmax`).
pub fn argmax(x: &[f32]) -> u32 {
    let mut best = 0usize;
    let mut bv = f32::NEG_INFINITY;
    for (i, &v) in x.iter().enumerate() {
        if v > bv || (i == 0 && v.is_nan()) {
            bv = v;
            best = i;
        }
    }
    best as u32
}

/// In-place log-softmax in f32.
pub fn log_softmax(x: &mut [f32]) {
    let m = x.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let s: f32 = x.iter().map(|v| (v - m).exp()).sum();
    let ls = s.ln();
    for v in x.iter_mut() {
        *v = *v - m - ls;
    }
}

/// Sampling settings (the warpers `generate(do_sample=True)` builds).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SampleParams {
    /// Divides the logits; must be > 0.
    pub temperature: f32,
    /// Keep only the k most likely tokens (0 = off).
    pub top_k: usize,
    /// Keep the smallest set whose probability reaches p (1.0 = off).
    pub top_p: f32,
}

/// Applies temperature, top-k and top-p to `logits` (masked entries become -inf).
pub fn warp(logits: &mut [f32], p: &SampleParams) {
    if p.temperature != 1.0 {
        for v in logits.iter_mut() {
            *v /= p.temperature;
        }
    }
    if p.top_k > 0 && p.top_k < logits.len() {
        let mut sorted: Vec<f32> = logits.to_vec();
        sorted.sort_by(|a, b| b.total_cmp(a));
        let kth = sorted[p.top_k - 1];
        for v in logits.iter_mut() {
            if *v < kth {
                *v = f32::NEG_INFINITY;
            }
        }
    }
    if p.top_p < 1.0 {
        // Ascending sort; drop the low tail whose cumulative probability is <= 1 - top_p,
        // always keeping the most likely token (min_tokens_to_keep = 1).
        let mut idx: Vec<usize> = (0..logits.len()).collect();
        idx.sort_by(|&a, &b| logits[a].total_cmp(&logits[b]));
        let m = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let exps: Vec<f32> = idx.iter().map(|&i| (logits[i] - m).exp()).collect();
        let total: f32 = exps.iter().sum();
        let mut cum = 0.0f32;
        let n = idx.len();
        for (rank, (&i, e)) in idx.iter().zip(exps.iter()).enumerate() {
            cum += e / total;
            if cum <= 1.0 - p.top_p && rank < n - 1 {
                logits[i] = f32::NEG_INFINITY;
            }
        }
    }
}

/// Draws a token from softmax(`logits`).
pub fn sample(logits: &[f32], rng: &mut StdRng) -> u32 {
    let m = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let probs: Vec<f64> = logits.iter().map(|&v| ((v - m) as f64).exp()).collect();
    let total: f64 = probs.iter().sum();
    let mut r = rng.random::<f64>() * total;
    let mut last_nonzero = 0;
    for (i, p) in probs.iter().enumerate() {
        if *p > 0.0 {
            last_nonzero = i;
            if r < *p {
                return i as u32;
            }
            r -= p;
        }
    }
    last_nonzero as u32
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn repetition_penalty_matches_reference_rule() {
        let mut l = vec![2.0, -2.0, 1.0];
        apply_repetition_penalty(&mut l, &[0, 1, 1], 2.0);
        assert_eq!(l, vec![1.0, -4.0, 1.0]);
    }

    #[test]
    fn top_k_and_top_p_mask() {
        let mut l = vec![1.0, 3.0, 2.0, 0.0];
        warp(
            &mut l,
            &SampleParams {
                temperature: 1.0,
                top_k: 2,
                top_p: 1.0,
            },
        );
        assert!(l[0].is_infinite() && l[3].is_infinite() && l[1] == 3.0 && l[2] == 2.0);
        let mut l = vec![0.0, 10.0, 0.0];
        warp(
            &mut l,
            &SampleParams {
                temperature: 1.0,
                top_k: 0,
                top_p: 0.5,
            },
        );
        assert_eq!(l.iter().filter(|v| v.is_finite()).count(), 1);
    }

    #[test]
    fn sampling_is_seeded_and_respects_mask() {
        let l = vec![f32::NEG_INFINITY, 0.0, 0.0, f32::NEG_INFINITY];
        let mut a = StdRng::seed_from_u64(7);
        let mut b = StdRng::seed_from_u64(7);
        for _ in 0..50 {
            let x = sample(&l, &mut a);
            assert!(x == 1 || x == 2);
            assert_eq!(x, sample(&l, &mut b));
        }
    }

    #[test]
    fn argmax_first_on_ties() {
        assert_eq!(argmax(&[1.0, 3.0, 3.0]), 1);
    }
}
