//! Attention on the CPU in f32, read straight from the buffers' own layouts (the projections'
//! `[rows, heads·d]`, the KV cache's `[heads, rows, d]`): no transposed copies, scores in
//! per-thread buffers, a decode path that reads each cached key and value once per step.

use rayon::prelude::*;

use super::gemm::{gemm_raw, SharedOut};
use super::simd;
use crate::error::{Error, Result};

/// Where the rows of one attention head lie in a buffer: element `(batch, head, row, j)` is at
/// `batch·self.batch + head·self.head + row·self.row + j`.
#[derive(Debug, Clone, Copy)]
pub struct HeadLayout {
    /// Stride between batch rows.
    pub batch: usize,
    /// Stride between heads.
    pub head: usize,
    /// Stride between positions.
    pub row: usize,
}

impl HeadLayout {
    /// `[b, rows, heads, d]`, the layout of a projection's output.
    pub fn rows_heads(rows: usize, heads: usize, d: usize) -> Self {
        Self {
            batch: rows * heads * d,
            head: d,
            row: heads * d,
        }
    }

    /// `[b, heads, rows, d]`, the layout of the KV cache.
    pub fn heads_rows(rows: usize, heads: usize, d: usize) -> Self {
        Self {
            batch: heads * rows * d,
            head: rows * d,
            row: d,
        }
    }

    /// One past the largest offset of `(b, heads, rows, d)` elements.
    fn extent(&self, b: usize, heads: usize, rows: usize, d: usize) -> usize {
        if b == 0 || heads == 0 || rows == 0 || d == 0 {
            return 0;
        }
        (b - 1) * self.batch + (heads - 1) * self.head + (rows - 1) * self.row + d
    }
}

/// Sizes of an attention call.
#[derive(Debug, Clone, Copy)]
pub struct AttentionShape {
    /// Batch rows.
    pub batch: usize,
    /// Query heads (a multiple of `kv_heads`: grouped-query attention).
    pub q_heads: usize,
    /// Key/value heads.
    pub kv_heads: usize,
    /// Query positions per batch row.
    pub rows: usize,
    /// Key positions per batch row.
    pub keys: usize,
    /// Head width.
    pub d: usize,
    /// Score scale (1/√d).
    pub scale: f32,
    /// `Some(past)`: causal, query row r sees keys `..= past + r`.
    pub causal: Option<usize>,
}

thread_local! {
    /// Each thread's attention score buffer, kept between calls so prompt-sized blocks do not
    /// map and fault in fresh pages every time.
    static SCORES: std::cell::Cell<Vec<f32>> = const { std::cell::Cell::new(Vec::new()) };
}

/// Runs `f` on an empty buffer with capacity for at least `len` scores.
pub(super) fn with_scores<R>(len: usize, f: impl FnOnce(&mut Vec<f32>) -> R) -> R {
    // Taken out while in use: a nested call would start from an empty buffer, not alias this one.
    let mut buf = SCORES.try_with(|c| c.take()).unwrap_or_default();
    buf.clear();
    buf.reserve(len);
    let r = f(&mut buf);
    let _ = SCORES.try_with(|c| c.set(buf));
    r
}

/// `softmax(scale·Q Kᵀ [+ causal/key mask]) V` on raw f32 buffers laid out as `*_layout` say,
/// returned as `[batch, rows, q_heads, d]` (the input layout of the output projection). Keys with
/// `key_mask[b·keys + j] == 0` get zero weight; a query row that sees no key gets zeros.
#[allow(clippy::too_many_arguments)]
pub fn attention_raw(
    sh: &AttentionShape,
    q: &[f32],
    ql: HeadLayout,
    k: &[f32],
    kl: HeadLayout,
    v: &[f32],
    vl: HeadLayout,
    key_mask: Option<&[u8]>,
) -> Result<Vec<f32>> {
    let AttentionShape {
        batch,
        q_heads,
        kv_heads,
        rows,
        keys,
        d,
        scale,
        causal,
    } = *sh;
    if kv_heads == 0 || q_heads % kv_heads != 0 {
        return Err(Error::Internal(format!(
            "attention: {q_heads} query heads over {kv_heads} kv heads"
        )));
    }
    let ol = HeadLayout::rows_heads(rows, q_heads, d);
    if ql.extent(batch, q_heads, rows, d) > q.len()
        || kl.extent(batch, kv_heads, keys, d) > k.len()
        || vl.extent(batch, kv_heads, keys, d) > v.len()
        || key_mask.is_some_and(|m| m.len() < batch * keys)
    {
        return Err(Error::Internal(format!(
            "attention: buffers too small for {sh:?}"
        )));
    }
    let rep = q_heads / kv_heads;
    if rows <= DECODE_ROWS && kl.row == d && vl.row == d {
        let operands = Operands {
            q,
            ql,
            k,
            kl,
            v,
            vl,
            key_mask,
        };
        return Ok(attention_by_kv_head(sh, operands));
    }
    // Row blocks keep a block's scores in L2 and give the threads enough tasks; small enough
    // that causal blocks compute few scores above the diagonal.
    const BLOCK: usize = 64;
    let blocks = rows.div_ceil(BLOCK);
    // With many query rows, Kᵀ is worth materialising per KV head ([d, keys]): gemm reads a
    // row-major right operand ~1.4x faster than a transposed one at this small inner size.
    let kt: Option<Vec<f32>> = (rows >= 32).then(|| {
        let mut kt: Vec<f32> = Vec::with_capacity(batch * kv_heads * d * keys);
        kt.spare_capacity_mut()[..batch * kv_heads * d * keys]
            .par_chunks_mut((d * keys).max(1))
            .enumerate()
            .for_each(|(unit, t)| {
                let base = (unit / kv_heads) * kl.batch + (unit % kv_heads) * kl.head;
                // 16 keys at a time: their rows stay in L1 while each of the d output rows
                // gets 16 contiguous elements.
                for j0 in (0..keys).step_by(16) {
                    let j1 = (j0 + 16).min(keys);
                    for p in 0..d {
                        for j in j0..j1 {
                            t[p * keys + j].write(k[base + j * kl.row + p]);
                        }
                    }
                }
            });
        // SAFETY: the tasks above wrote all d·keys elements of every (batch, KV head) block.
        unsafe { kt.set_len(batch * kv_heads * d * keys) };
        kt
    });
    let len = batch * rows * q_heads * d;
    let mut out: Vec<f32> = if keys == 0 {
        // Nothing to attend to: every row is zeros.
        return Ok(vec![0f32; len]);
    } else {
        Vec::with_capacity(len)
    };
    if ol.extent(batch, q_heads, rows, d) > len {
        return Err(Error::Internal(format!(
            "attention: output layout for {sh:?}"
        )));
    }
    let dst = SharedOut(out.as_mut_ptr());
    (0..batch * q_heads * blocks)
        .into_par_iter()
        .for_each(|task| {
            let (unit, blk) = (task / blocks, task % blocks);
            let (bi, h) = (unit / q_heads, unit % q_heads);
            let r0 = blk * BLOCK;
            let nr = BLOCK.min(rows - r0);
            // Keys any row of this block may see.
            let span = match causal {
                Some(past) => (past + r0 + nr).min(keys),
                None => keys,
            };
            let q0 = bi * ql.batch + h * ql.head + r0 * ql.row;
            // Right operand of Q·Kᵀ: the materialised Kᵀ, or K read transposed.
            let (kp, k_rs, k_cs) = match &kt {
                // SAFETY: kt holds batch·kv_heads blocks of d·keys elements.
                Some(kt) => (
                    unsafe { kt.as_ptr().add((bi * kv_heads + h / rep) * d * keys) },
                    keys,
                    1,
                ),
                // SAFETY: the extent check above bounds this head's keys.
                None => (
                    unsafe { k.as_ptr().add(bi * kl.batch + (h / rep) * kl.head) },
                    1,
                    kl.row,
                ),
            };
            let v0 = bi * vl.batch + (h / rep) * vl.head;
            let o0 = bi * ol.batch + h * ol.head + r0 * ol.row;
            let mask = key_mask.map(|m| &m[bi * keys..bi * keys + span]);
            with_scores(nr * span, |s| {
                // keys > 0, so span ≥ 1 and the gemm below writes all nr·span scores.
                // SAFETY: the extents checked above bound every element of q, k, v and out this
                // block touches; s has capacity nr·span, all written by the overwriting gemm.
                unsafe {
                    gemm_raw(
                        (nr, span, d),
                        s.as_mut_ptr(),
                        span,
                        false,
                        q.as_ptr().add(q0),
                        ql.row,
                        kp,
                        k_rs,
                        k_cs,
                    );
                    s.set_len(nr * span);
                }
                // Softmax's division is applied to the nr·d output instead of the nr·span
                // weights; a row that sees no key keeps weight sum 0 and gets zeros.
                let mut sums = [0f32; BLOCK];
                for ((i, row), sum) in s.chunks_mut(span).enumerate().zip(&mut sums) {
                    let visible = match causal {
                        Some(past) => (past + r0 + i + 1).min(span),
                        None => span,
                    };
                    let any = match mask {
                        Some(m) => {
                            let mut any = false;
                            for (x, &keep) in row[..visible].iter_mut().zip(m) {
                                if keep == 0 {
                                    *x = f32::NEG_INFINITY;
                                } else {
                                    any = true;
                                }
                            }
                            any
                        }
                        // Without a key mask every row sees at least its own key.
                        None => visible > 0,
                    };
                    if any {
                        *sum = simd::exp_sum(&mut row[..visible], scale);
                    } else {
                        row[..visible].fill(0.0);
                    }
                    row[visible..].fill(0.0);
                }
                // SAFETY: as above; this task alone writes rows r0..r0+nr of head h in batch
                // row bi.
                unsafe {
                    gemm_raw(
                        (nr, d, span),
                        dst.get().add(o0),
                        ol.row,
                        false,
                        s.as_ptr(),
                        span,
                        v.as_ptr().add(v0),
                        vl.row,
                        1,
                    );
                    for (i, &sum) in sums[..nr].iter().enumerate() {
                        let inv = if sum > 0.0 { 1.0 / sum } else { 0.0 };
                        let o = std::slice::from_raw_parts_mut(dst.get().add(o0 + i * ol.row), d);
                        for x in o {
                            *x *= inv;
                        }
                    }
                }
            });
        });
    // SAFETY: each (batch, head, row block) task wrote its nr·d outputs with an overwriting
    // gemm, and the tasks cover every row of every head.
    unsafe { out.set_len(len) };
    Ok(out)
}

/// The buffers of one [`attention_raw`] call and how their heads are laid out.
#[derive(Clone, Copy)]
struct Operands<'a> {
    q: &'a [f32],
    ql: HeadLayout,
    k: &'a [f32],
    kl: HeadLayout,
    v: &'a [f32],
    vl: HeadLayout,
    key_mask: Option<&'a [u8]>,
}

/// Query rows per head up to which [`attention_raw`] runs [`attention_by_kv_head`].
const DECODE_ROWS: usize = 8;

/// Fewest keys per task in [`attention_by_kv_head`].
const MIN_KEY_CHUNK: usize = 64;

/// Keys per block that every query row of an [`attention_by_kv_head`] task uses in turn while
/// the block's keys or values stay in L1.
const SUB: usize = 32;

/// [`attention_raw`] for a few query rows over keys and values whose rows are contiguous (the KV
/// cache): one task per (batch row, KV head, key chunk) serves all the query heads that share the
/// KV head, so each cached key and value is read once per step instead of once per query head,
/// and splitting the keys keeps both cores busy with only a few KV heads. Each chunk keeps its own
/// softmax maximum, sum and weighted values; the chunks are then combined exactly.
///
/// The caller has checked the shape, the buffer extents and `kl.row == vl.row == d`.
fn attention_by_kv_head(sh: &AttentionShape, operands: Operands) -> Vec<f32> {
    let Operands {
        q,
        ql,
        k,
        kl,
        v,
        vl,
        key_mask,
    } = operands;
    let (batch, q_heads, kv_heads, rows) = (sh.batch, sh.q_heads, sh.kv_heads, sh.rows);
    let (keys, d, scale, causal) = (sh.keys, sh.d, sh.scale, sh.causal);
    let rep = q_heads / kv_heads;
    // Query rows per task, ordered (query head of the group, row).
    let nq = rep * rows;
    let units = batch * kv_heads;
    let mut out = vec![0f32; batch * rows * q_heads * d];
    if units == 0 || nq == 0 || keys == 0 {
        return out;
    }
    // A few tasks per thread, their count a multiple of the thread count (three KV heads on two
    // cores would otherwise leave one core idle for a third of the time).
    let threads = rayon::current_num_threads().max(1);
    let most = keys.div_ceil(MIN_KEY_CHUNK);
    let mut chunks = (2 * threads).div_ceil(units).min(most);
    while (units * chunks) % threads != 0 && chunks < most {
        chunks += 1;
    }
    let chunk = keys.div_ceil(chunks);
    // Per task and query row: the chunk's scaled maximum, its exp sum, then d weighted values.
    let stride = d + 2;
    let mut part = vec![0f32; units * chunks * nq * stride];
    // The keys visible to query row `qi` end before this (exclusive, before clipping to a chunk).
    let row_end = |qi: usize| causal.map_or(keys, |past| (past + qi % rows + 1).min(keys));
    part.par_chunks_mut(nq * stride)
        .enumerate()
        .for_each(|(task, part)| {
            let (unit, c) = (task / chunks, task % chunks);
            let (bi, g) = (unit / kv_heads, unit % kv_heads);
            let j0 = (c * chunk).min(keys);
            let j1 = (j0 + chunk).min(keys);
            let span = j1 - j0;
            let kb = bi * kl.batch + g * kl.head;
            let vb = bi * vl.batch + g * vl.head;
            let q_row = |qi: usize| {
                let (h, r) = (g * rep + qi / rows, qi % rows);
                let q0 = bi * ql.batch + h * ql.head + r * ql.row;
                &q[q0..q0 + d]
            };
            with_scores(nq * span, |s| {
                s.resize(nq * span, 0.0);
                // SUB keys at a time for every query row: each block of keys (and below, of
                // values) comes from memory once and is reused from L1 by the other rows.
                for b0 in (j0..j1).step_by(SUB) {
                    let b1 = (b0 + SUB).min(j1);
                    for qi in 0..nq {
                        let e = row_end(qi).min(b1);
                        if e > b0 {
                            let o = qi * span;
                            simd::dot_rows(
                                &mut s[o + b0 - j0..o + e - j0],
                                q_row(qi),
                                &k[kb + b0 * d..kb + e * d],
                            );
                        }
                    }
                }
                for (qi, p) in part.chunks_mut(stride).enumerate() {
                    p[0] = f32::NEG_INFINITY;
                    let end = row_end(qi).min(j1);
                    if end <= j0 {
                        continue;
                    }
                    let row = &mut s[qi * span..qi * span + end - j0];
                    if let Some(m) = key_mask {
                        let m = &m[bi * keys + j0..bi * keys + end];
                        for (x, &keep) in row.iter_mut().zip(m) {
                            if keep == 0 {
                                *x = f32::NEG_INFINITY;
                            }
                        }
                    }
                    let max = simd::max(row);
                    if max > f32::NEG_INFINITY {
                        p[0] = max * scale;
                        p[1] = simd::exp_sum(row, scale);
                    }
                }
                for b0 in (j0..j1).step_by(SUB) {
                    let b1 = (b0 + SUB).min(j1);
                    for (qi, p) in part.chunks_mut(stride).enumerate() {
                        let e = row_end(qi).min(b1);
                        if p[0] > f32::NEG_INFINITY && e > b0 {
                            let o = qi * span;
                            simd::axpy_rows(
                                &mut p[2..],
                                &s[o + b0 - j0..o + e - j0],
                                &v[vb + b0 * d..vb + e * d],
                            );
                        }
                    }
                }
            });
        });
    // Combine the chunks (little work: no threads): weights e^(m_c − m) rescale each chunk to
    // the row's overall maximum.
    out.chunks_mut(d).enumerate().for_each(|(row, o)| {
        // `out` is [batch, rows, q_heads, d]: recover the task's unit and query row.
        let (bi, rest) = (row / (rows * q_heads), row % (rows * q_heads));
        let (r, h) = (rest / q_heads, rest % q_heads);
        let unit = bi * kv_heads + h / rep;
        let qi = (h % rep) * rows + r;
        let at = |c: usize| &part[((unit * chunks + c) * nq + qi) * stride..][..stride];
        let m = (0..chunks).fold(f32::NEG_INFINITY, |m, c| m.max(at(c)[0]));
        if m == f32::NEG_INFINITY {
            return;
        }
        let mut total = 0f32;
        for c in 0..chunks {
            let p = at(c);
            if p[0] == f32::NEG_INFINITY {
                continue;
            }
            let w = (p[0] - m).exp();
            total += w * p[1];
            for (x, &y) in o.iter_mut().zip(&p[2..]) {
                *x += w * y;
            }
        }
        let inv = 1.0 / total;
        for x in o.iter_mut() {
            *x *= inv;
        }
    });
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::tests::max_diff;
    use candle_core::{Device, Tensor};

    #[test]
    fn attention_kernel_matches_reference_math() {
        // 150 query rows (prompt path: Kᵀ materialised, two row blocks).
        attention_case(150, 5, 8);
        // A few rows (decode path, by KV head): few keys; keys over several chunks and blocks;
        // a head width that is not a multiple of 8. Also on 8 threads, which split the keys of
        // each KV head into chunks whatever this machine's core count.
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(8)
            .build()
            .unwrap();
        for (rows, extra, d) in [(1, 5, 8), (3, 300, 8), (2, 150, 12)] {
            attention_case(rows, extra, d);
            pool.install(|| attention_case(rows, extra, d));
        }
    }

    fn attention_case(rows: usize, extra: usize, d: usize) {
        let dev = Device::Cpu;
        // q in the projection layout [b, rows, heads, d]; k, v in the cache layout
        // [b, kv_heads, cap, d] with cap > keys; grouped-query (4 query heads over 2).
        let (b, qh, kvh) = (2usize, 4usize, 2usize);
        let (keys, cap) = (rows + extra, rows + extra + 15);
        let q = Tensor::randn(0f32, 1.0, (b, rows, qh, d), &dev).unwrap();
        let k = Tensor::randn(0f32, 1.0, (b, kvh, cap, d), &dev).unwrap();
        let v = Tensor::randn(0f32, 1.0, (b, kvh, cap, d), &dev).unwrap();
        let scale = 0.35f32;
        let past = keys - rows;
        let mut key_mask = vec![1u8; b * keys];
        // Batch row 1: its first keys are padding (a whole chunk of them with many keys).
        key_mask[keys..keys + (keys / 3).max(2)].fill(0);
        let naive = |causal: bool, mask: bool| -> Tensor {
            let qt = q.transpose(1, 2).unwrap().contiguous().unwrap(); // [b, qh, rows, d]
            let kk = k.narrow(2, 0, keys).unwrap().contiguous().unwrap();
            let vv = v.narrow(2, 0, keys).unwrap().contiguous().unwrap();
            let rep = qh / kvh;
            let expand = |t: Tensor| {
                t.unsqueeze(2)
                    .unwrap()
                    .broadcast_as((b, kvh, rep, keys, d))
                    .unwrap()
                    .contiguous()
                    .unwrap()
                    .reshape((b, qh, keys, d))
                    .unwrap()
            };
            let (kk, vv) = (expand(kk), expand(vv));
            let s = (qt.matmul(&kk.t().unwrap()).unwrap() * scale as f64).unwrap();
            let mut m = vec![0f32; b * rows * keys];
            for bi in 0..b {
                for r in 0..rows {
                    for j in 0..keys {
                        let hide =
                            (causal && j > past + r) || (mask && key_mask[bi * keys + j] == 0);
                        if hide {
                            m[(bi * rows + r) * keys + j] = f32::NEG_INFINITY;
                        }
                    }
                }
            }
            let m = Tensor::from_vec(m, (b, 1, rows, keys), &dev).unwrap();
            let p = candle_nn::ops::softmax_last_dim(&s.broadcast_add(&m).unwrap()).unwrap();
            p.matmul(&vv)
                .unwrap()
                .transpose(1, 2)
                .unwrap()
                .contiguous()
                .unwrap()
        };
        let flat = |t: &Tensor| -> Vec<f32> { t.flatten_all().unwrap().to_vec1().unwrap() };
        let (qs, ks, vs) = (flat(&q), flat(&k), flat(&v));
        let run = |causal: bool, key_mask: Option<&[u8]>| -> Tensor {
            let sh = AttentionShape {
                batch: b,
                q_heads: qh,
                kv_heads: kvh,
                rows,
                keys,
                d,
                scale,
                causal: causal.then_some(past),
            };
            let out = attention_raw(
                &sh,
                &qs,
                HeadLayout::rows_heads(rows, qh, d),
                &ks,
                HeadLayout::heads_rows(cap, kvh, d),
                &vs,
                HeadLayout::heads_rows(cap, kvh, d),
                key_mask,
            )
            .unwrap();
            Tensor::from_vec(out, (b, rows, qh, d), &dev).unwrap()
        };
        for (causal, mask) in [(false, false), (true, false), (true, true)] {
            let got = run(causal, mask.then_some(key_mask.as_slice()));
            let e = max_diff(&got, &naive(causal, mask));
            assert!(e < 1e-5, "causal {causal} mask {mask}: {e}");
        }
        // Batch row 1 with every key masked: its query rows see nothing and come out as zeros,
        // batch row 0 is unaffected.
        let mut none_visible = vec![1u8; b * keys];
        none_visible[keys..].fill(0);
        let got = run(true, Some(&none_visible));
        let want0 = naive(true, false).narrow(0, 0, 1).unwrap();
        assert!(max_diff(&got.narrow(0, 0, 1).unwrap(), &want0) < 1e-5);
        let row1 = flat(&got.narrow(0, 1, 1).unwrap());
        assert!(row1.iter().all(|&x| x == 0.0), "masked-out rows are zeros");
        // Buffers too small for the shape are an error, not an out-of-bounds access.
        let sh = AttentionShape {
            batch: b,
            q_heads: qh,
            kv_heads: kvh,
            rows,
            keys: cap + 1,
            d,
            scale,
            causal: None,
        };
        let l = HeadLayout::heads_rows(cap + 1, kvh, d);
        assert!(attention_raw(
            &sh,
            &qs,
            HeadLayout::rows_heads(rows, qh, d),
            &ks,
            l,
            &vs,
            l,
            None,
        )
        .is_err());
    }
}
