//! Attention for training on the CPU in f32: a forward pass that keeps each query row's score
//! maximum and softmax normaliser instead of its probabilities, and a backward pass that
//! recomputes them (bit for bit) one row block at a time (flash attention's memory: O(L·d) per head kept between the passes, not the
//! O(L²) probabilities, which at SmolVLM-Instruct size were 4 GiB of a training step's peak).
//!
//! Queries, keys and values are `[batch, heads, rows, d]` (keys and values with the KV heads of
//! grouped-query attention, read in place, never repeated); the output and its gradient are
//! `[batch, rows, q_heads·d]`, the layout of the output projection's input.

use rayon::prelude::*;

use super::attention::with_scores;
use super::gemm::{gemm_raw, gemm_strided, SharedOut};
use super::simd;
use crate::error::{Error, Result};

/// Sizes of one training attention call (self-attention: as many keys as query rows).
#[derive(Debug, Clone, Copy)]
pub struct TrainShape {
    /// Batch rows.
    pub batch: usize,
    /// Query heads (a multiple of `kv_heads`).
    pub q_heads: usize,
    /// Key/value heads.
    pub kv_heads: usize,
    /// Positions per batch row.
    pub rows: usize,
    /// Head width.
    pub d: usize,
    /// Score scale (1/√d).
    pub scale: f32,
    /// Causal (row r sees keys `..= r`) or bidirectional.
    pub causal: bool,
}

/// Query rows per block: a block's scores stay in L2, and causal blocks compute few scores
/// above the diagonal.
const BLOCK: usize = 64;

impl TrainShape {
    fn check(&self, q: usize, k: usize, v: usize) -> Result<()> {
        let TrainShape {
            batch,
            q_heads,
            kv_heads,
            rows,
            d,
            ..
        } = *self;
        if kv_heads == 0 || q_heads % kv_heads != 0 {
            return Err(Error::Internal(format!(
                "attention: {q_heads} query heads over {kv_heads} kv heads"
            )));
        }
        if q != batch * q_heads * rows * d || k != batch * kv_heads * rows * d || v != k {
            return Err(Error::Internal(format!(
                "attention: buffers of {q}, {k}, {v} elements for {self:?}"
            )));
        }
        Ok(())
    }

    /// Keys visible to query row `r`.
    fn visible(&self, r: usize) -> usize {
        if self.causal {
            r + 1
        } else {
            self.rows
        }
    }

    /// Offset of `(batch, head, row 0)` in a `[batch, heads, rows, d]` buffer.
    fn head_at(&self, bi: usize, heads: usize, h: usize) -> usize {
        ((bi * heads + h) * self.rows) * self.d
    }

    /// Offset of `(batch, row r, head h)` in a `[batch, rows, q_heads·d]` buffer.
    fn out_at(&self, bi: usize, r: usize, h: usize) -> usize {
        ((bi * self.rows + r) * self.q_heads + h) * self.d
    }
}

/// Forward pass: `(out [batch, rows, q_heads·d], stats [batch, q_heads, rows, 2])` where a
/// query row's stats are its largest scaled score and the reciprocal of its softmax sum.
pub fn forward(sh: &TrainShape, q: &[f32], k: &[f32], v: &[f32]) -> Result<(Vec<f32>, Vec<f32>)> {
    sh.check(q.len(), k.len(), v.len())?;
    let TrainShape {
        batch,
        q_heads,
        kv_heads,
        rows,
        d,
        scale,
        ..
    } = *sh;
    let rep = q_heads / kv_heads;
    let blocks = rows.div_ceil(BLOCK);
    let mut out = vec![0f32; batch * rows * q_heads * d];
    let mut stats = vec![0f32; batch * q_heads * rows * 2];
    let dst = SharedOut(out.as_mut_ptr());
    let stats_dst = SharedOut(stats.as_mut_ptr());
    (0..batch * q_heads * blocks)
        .into_par_iter()
        .for_each(|task| {
            let (unit, blk) = (task / blocks, task % blocks);
            let (bi, h) = (unit / q_heads, unit % q_heads);
            let r0 = blk * BLOCK;
            let nr = BLOCK.min(rows - r0);
            let span = if sh.causal { r0 + nr } else { rows };
            let kv0 = sh.head_at(bi, kv_heads, h / rep);
            let q0 = sh.head_at(bi, q_heads, h) + r0 * d;
            // The thread's reused score buffer: a fresh prompt-sized block per task would map
            // and fault in new pages every time.
            with_scores(nr * span, |s| {
                s.resize(nr * span, 0.0);
                // SAFETY: check() sized q, k and v for every (batch, head, row) read here; s holds
                // nr·span elements.
                unsafe {
                    gemm_raw(
                        (nr, span, d),
                        s.as_mut_ptr(),
                        span,
                        false,
                        q.as_ptr().add(q0),
                        d,
                        k.as_ptr().add(kv0),
                        1,
                        d,
                    );
                }
                for (i, row) in s.chunks_mut(span).enumerate() {
                    let vis = sh.visible(r0 + i).min(span);
                    let m = simd::max(&row[..vis]) * scale;
                    let sum = simd::exp_sum(&mut row[..vis], scale);
                    // Normalised before the product, as the reference computes softmax(S)·V (and as
                    // the backward pass recomputes the probabilities).
                    let inv = 1.0 / sum;
                    for x in &mut row[..vis] {
                        *x *= inv;
                    }
                    row[vis..].fill(0.0);
                    // SAFETY: this task alone writes the stats of rows r0..r0+nr of head h.
                    unsafe {
                        let at = stats_dst
                            .get()
                            .add(((bi * q_heads + h) * rows + r0 + i) * 2);
                        *at = m;
                        *at.add(1) = inv;
                    }
                }
                // SAFETY: this task alone writes rows r0..r0+nr of head h in batch row bi, with an
                // overwriting product; v holds the span keys' values of KV head h / rep.
                unsafe {
                    let o0 = sh.out_at(bi, r0, h);
                    gemm_raw(
                        (nr, d, span),
                        dst.get().add(o0),
                        q_heads * d,
                        false,
                        s.as_ptr(),
                        span,
                        v.as_ptr().add(kv0),
                        d,
                        1,
                    );
                }
            });
        });
    Ok((out, stats))
}

/// Backward pass of [`forward`] (given its stats) from the output gradient `d_out` `[batch, rows, q_heads·d]`:
/// `(dq [batch, q_heads, rows, d], dk, dv [batch, kv_heads, rows, d])`.
#[allow(clippy::too_many_arguments)]
pub fn backward(
    sh: &TrainShape,
    q: &[f32],
    k: &[f32],
    v: &[f32],
    stats: &[f32],
    d_out: &[f32],
) -> Result<(Vec<f32>, Vec<f32>, Vec<f32>)> {
    sh.check(q.len(), k.len(), v.len())?;
    let TrainShape {
        batch,
        q_heads,
        kv_heads,
        rows,
        d,
        scale,
        ..
    } = *sh;
    if d_out.len() != q.len() || stats.len() != batch * q_heads * rows * 2 {
        return Err(Error::Internal(format!(
            "attention backward: gradient or stats sizes for {sh:?}"
        )));
    }
    let rep = q_heads / kv_heads;
    let head = rows * d;
    let mut dq = vec![0f32; q.len()];
    // Each query head's share of its KV head's gradients, summed over the group below: the
    // tasks never write the same element.
    let mut dk_part = vec![0f32; q.len()];
    let mut dv_part = vec![0f32; q.len()];
    dq.par_chunks_mut(head)
        .zip(dk_part.par_chunks_mut(head))
        .zip(dv_part.par_chunks_mut(head))
        .enumerate()
        .for_each(|(unit, ((dq, dk), dv))| {
            let (bi, h) = (unit / q_heads, unit % q_heads);
            let kv0 = sh.head_at(bi, kv_heads, h / rep);
            let q0 = sh.head_at(bi, q_heads, h);
            let mut p = Vec::new();
            let mut dp = Vec::new();
            for r0 in (0..rows).step_by(BLOCK) {
                let nr = BLOCK.min(rows - r0);
                let span = if sh.causal { r0 + nr } else { rows };
                p.clear();
                p.resize(nr * span, 0f32);
                dp.clear();
                dp.resize(nr * span, 0f32);
                let do0 = sh.out_at(bi, r0, h);
                // SAFETY: check() and the size checks above bound every element read; p and dp
                // hold nr·span elements; dq, dk and dv are this task's own [rows, d] blocks.
                unsafe {
                    // Scores again, and dP = dO Vᵀ.
                    gemm_raw(
                        (nr, span, d),
                        p.as_mut_ptr(),
                        span,
                        false,
                        q.as_ptr().add(q0 + r0 * d),
                        d,
                        k.as_ptr().add(kv0),
                        1,
                        d,
                    );
                    gemm_raw(
                        (nr, span, d),
                        dp.as_mut_ptr(),
                        span,
                        false,
                        d_out.as_ptr().add(do0),
                        q_heads * d,
                        v.as_ptr().add(kv0),
                        1,
                        d,
                    );
                }
                for i in 0..nr {
                    let r = r0 + i;
                    let vis = sh.visible(r).min(span);
                    let row = &mut p[i * span..(i + 1) * span];
                    let at = ((bi * q_heads + h) * rows + r) * 2;
                    // The forward pass's exponentials exactly, then normalised.
                    simd::exp_shift(&mut row[..vis], scale, stats[at]);
                    for x in &mut row[..vis] {
                        *x *= stats[at + 1];
                    }
                    row[vis..].fill(0.0);
                    let g = &mut dp[i * span..(i + 1) * span];
                    let delta = simd::dot(row, g);
                    simd::softmax_grad(g, row, delta, scale);
                }
                // SAFETY: as above.
                unsafe {
                    // dV += Pᵀ dO, dQ = dS K, dK += dSᵀ Q (dS, scaled, is in dp).
                    gemm_strided(
                        (span, d, nr),
                        dv.as_mut_ptr(),
                        d,
                        true,
                        (p.as_ptr(), 1, span),
                        (d_out.as_ptr().add(do0), q_heads * d, 1),
                    );
                    gemm_raw(
                        (nr, d, span),
                        dq.as_mut_ptr().add(r0 * d),
                        d,
                        false,
                        dp.as_ptr(),
                        span,
                        k.as_ptr().add(kv0),
                        d,
                        1,
                    );
                    gemm_strided(
                        (span, d, nr),
                        dk.as_mut_ptr(),
                        d,
                        true,
                        (dp.as_ptr(), 1, span),
                        (q.as_ptr().add(q0 + r0 * d), d, 1),
                    );
                }
            }
        });
    if rep == 1 {
        return Ok((dq, dk_part, dv_part));
    }
    let sum_groups = |part: &[f32]| -> Vec<f32> {
        let mut g = vec![0f32; k.len()];
        g.par_chunks_mut(head).enumerate().for_each(|(unit, dst)| {
            let (bi, kh) = (unit / kv_heads, unit % kv_heads);
            for j in 0..rep {
                let src = &part[sh.head_at(bi, q_heads, kh * rep + j)..][..head];
                for (a, &b) in dst.iter_mut().zip(src) {
                    *a += b;
                }
            }
        });
        g
    };
    Ok((dq, sum_groups(&dk_part), sum_groups(&dv_part)))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Plain f64 attention and its gradients for one configuration, from the definitions.
    #[allow(clippy::type_complexity)]
    fn reference(
        sh: &TrainShape,
        q: &[f32],
        k: &[f32],
        v: &[f32],
        g: &[f32],
    ) -> (Vec<f64>, Vec<f64>, Vec<f64>, Vec<f64>) {
        let (b, h, kvh, l, d) = (sh.batch, sh.q_heads, sh.kv_heads, sh.rows, sh.d);
        let rep = h / kvh;
        let mut out = vec![0f64; q.len()];
        let mut dq = vec![0f64; q.len()];
        let mut dk = vec![0f64; k.len()];
        let mut dv = vec![0f64; k.len()];
        let s = f64::from(sh.scale);
        for bi in 0..b {
            for hh in 0..h {
                let qo = sh.head_at(bi, h, hh);
                let ko = sh.head_at(bi, kvh, hh / rep);
                for r in 0..l {
                    let vis = sh.visible(r);
                    let sc: Vec<f64> = (0..vis)
                        .map(|j| {
                            (0..d)
                                .map(|p| {
                                    f64::from(q[qo + r * d + p]) * f64::from(k[ko + j * d + p])
                                })
                                .sum::<f64>()
                                * s
                        })
                        .collect();
                    let m = sc.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                    let e: Vec<f64> = sc.iter().map(|x| (x - m).exp()).collect();
                    let z: f64 = e.iter().sum();
                    let pr: Vec<f64> = e.iter().map(|x| x / z).collect();
                    let oo = sh.out_at(bi, r, hh);
                    for p in 0..d {
                        out[oo + p] = (0..vis).map(|j| pr[j] * f64::from(v[ko + j * d + p])).sum();
                    }
                    let gr = &g[oo..oo + d];
                    let dpr: Vec<f64> = (0..vis)
                        .map(|j| {
                            (0..d)
                                .map(|p| f64::from(gr[p]) * f64::from(v[ko + j * d + p]))
                                .sum()
                        })
                        .collect();
                    let delta: f64 = (0..vis).map(|j| dpr[j] * pr[j]).sum();
                    for j in 0..vis {
                        let ds = pr[j] * (dpr[j] - delta) * s;
                        for p in 0..d {
                            dv[ko + j * d + p] += pr[j] * f64::from(gr[p]);
                            dq[qo + r * d + p] += ds * f64::from(k[ko + j * d + p]);
                            dk[ko + j * d + p] += ds * f64::from(q[qo + r * d + p]);
                        }
                    }
                }
            }
        }
        (out, dq, dk, dv)
    }

    fn worst(got: &[f32], want: &[f64]) -> f64 {
        got.iter()
            .zip(want)
            .map(|(&a, &b)| (f64::from(a) - b).abs())
            .fold(0.0, f64::max)
    }

    #[test]
    fn forward_and_backward_match_the_definition() {
        // Rows that span several blocks (and a partial last one), grouped and plain heads,
        // causal and bidirectional.
        for &(batch, q_heads, kv_heads, rows, causal) in &[
            (2, 4, 2, 70, true),
            (1, 3, 3, 130, false),
            (1, 2, 1, 5, true),
        ] {
            let d = 8;
            let sh = TrainShape {
                batch,
                q_heads,
                kv_heads,
                rows,
                d,
                scale: (d as f32).powf(-0.5),
                causal,
            };
            let gen = |n: usize, seed: usize| -> Vec<f32> {
                (0..n)
                    .map(|i| (((i * 7919 + seed * 104_729) % 1999) as f32 / 1999.0 - 0.5) * 3.0)
                    .collect()
            };
            let q = gen(batch * q_heads * rows * d, 1);
            let k = gen(batch * kv_heads * rows * d, 2);
            let v = gen(batch * kv_heads * rows * d, 3);
            let g = gen(batch * q_heads * rows * d, 4);
            let (out, stats) = forward(&sh, &q, &k, &v).unwrap();
            let (dq, dk, dv) = backward(&sh, &q, &k, &v, &stats, &g).unwrap();
            let (ro, rdq, rdk, rdv) = reference(&sh, &q, &k, &v, &g);
            let tag = format!("{batch}x{q_heads}/{kv_heads}x{rows} causal {causal}");
            assert!(worst(&out, &ro) < 1e-4, "out {tag}: {}", worst(&out, &ro));
            assert!(worst(&dq, &rdq) < 1e-3, "dq {tag}: {}", worst(&dq, &rdq));
            assert!(worst(&dk, &rdk) < 1e-3, "dk {tag}: {}", worst(&dk, &rdk));
            assert!(worst(&dv, &rdv) < 1e-3, "dv {tag}: {}", worst(&dv, &rdv));
        }
    }

    #[test]
    fn mismatched_buffers_are_errors() {
        let sh = TrainShape {
            batch: 1,
            q_heads: 3,
            kv_heads: 2,
            rows: 4,
            d: 2,
            scale: 1.0,
            causal: true,
        };
        assert!(forward(&sh, &[0.0; 24], &[0.0; 16], &[0.0; 16]).is_err());
        let sh = TrainShape { kv_heads: 3, ..sh };
        assert!(forward(&sh, &[0.0; 24], &[0.0; 23], &[0.0; 24]).is_err());
    }
}
