//! CPU kernels for the element-wise hot spots candle runs single-threaded: tanh-GELU and the
//! attention softmax. Other devices and dtypes use candle's own ops.

use candle_core::{CpuStorage, CustomOp1, CustomOp3, DType, Layout, Shape, Tensor};
use rayon::prelude::*;

use crate::error::Result;

const CHUNK: usize = 16 * 1024;

/// `e^x` in f32 without a libm call, so loops over it vectorise (Cephes `expf`: range reduction
/// by ln 2 and a degree-6 polynomial, within 3e-7 relative); inputs below -87.3 give exactly 0.
/// Used for GELU only: in softmax its error shows in the logits (1.1e-4 vs 1e-4 tolerance).
#[inline(always)]
pub fn exp_f32(x: f32) -> f32 {
    let under = x < -87.3;
    let x = x.clamp(-87.3, 88.7);
    let n = (x * std::f32::consts::LOG2_E + 0.5).floor();
    let r = x - n * 0.693_359_4 - n * -2.121_944_4e-4;
    let p = ((((1.987_569_1e-4 * r + 1.398_199_9e-3) * r + 8.333_452e-3) * r + 4.166_579_6e-2) * r
        + 0.166_666_65)
        * r
        + 0.5;
    let y = p * r * r + r + 1.0;
    let scale = f32::from_bits(((n as i32 + 127) as u32) << 23);
    if under {
        0.0
    } else {
        y * scale
    }
}

fn contiguous_f32<'a>(s: &'a CpuStorage, l: &Layout, op: &str) -> candle_core::Result<&'a [f32]> {
    let CpuStorage::F32(v) = s else {
        candle_core::bail!("{op}: expects f32")
    };
    let Some((a, b)) = l.contiguous_offsets() else {
        candle_core::bail!("{op}: expects a contiguous tensor")
    };
    Ok(&v[a..b])
}

struct GeluTanh;

impl CustomOp1 for GeluTanh {
    fn name(&self) -> &'static str {
        "gelu-tanh-par"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let x = contiguous_f32(s, l, self.name())?;
        let mut out = vec![0f32; x.len()];
        const C: f32 = 0.797_884_6; // sqrt(2/pi)
        out.par_chunks_mut(CHUNK)
            .zip(x.par_chunks(CHUNK))
            .for_each(|(o, i)| {
                for (o, &v) in o.iter_mut().zip(i) {
                    // 0.5·x·(1 + tanh(y)) == x / (1 + e^(-2y)), y = √(2/π)(x + 0.044715x³)
                    let y = C * (v + 0.044_715 * v * v * v);
                    *o = v / (1.0 + exp_f32(-2.0 * y));
                }
            });
        Ok((CpuStorage::F32(out), l.shape().clone()))
    }
}

/// `row ← softmax(scale · row)`, with libm `exp` (see `exp_f32` for why not the fast one).
fn softmax_in_place(row: &mut [f32], scale: f32) {
    let m = row.iter().fold(f32::NEG_INFINITY, |m, &x| m.max(x * scale));
    for x in row.iter_mut() {
        *x = (*x * scale - m).exp();
    }
    let sum: f32 = row.iter().sum();
    let inv = 1.0 / sum;
    for x in row.iter_mut() {
        *x *= inv;
    }
}

struct ScaledSoftmax {
    scale: f32,
}

impl CustomOp1 for ScaledSoftmax {
    fn name(&self) -> &'static str {
        "scaled-softmax-par"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let x = contiguous_f32(s, l, self.name())?;
        let n = l.shape().dims().last().copied().unwrap_or(1).max(1);
        let mut out = vec![0f32; x.len()];
        let rows_per_task = (CHUNK / n).max(1);
        let scale = self.scale;
        out.par_chunks_mut(rows_per_task * n)
            .zip(x.par_chunks(rows_per_task * n))
            .for_each(|(o, i)| {
                o.copy_from_slice(i);
                for row in o.chunks_mut(n) {
                    softmax_in_place(row, scale);
                }
            });
        Ok((CpuStorage::F32(out), l.shape().clone()))
    }
}

/// `C = A·B` for row-major `A` `[m, k]` (row stride `a_rs`), `B` given by its strides, `C`
/// `[m, n]` contiguous; single-threaded (callers parallelise over heads).
#[allow(clippy::too_many_arguments)]
fn gemm_rows(
    m: usize,
    n: usize,
    k: usize,
    c: &mut [f32],
    a: &[f32],
    a_rs: usize,
    b: &[f32],
    b_rs: usize,
    b_cs: usize,
) {
    // The bounds below make every index gemm reads or writes lie inside the slices.
    assert!(c.len() >= m * n);
    assert!(m == 0 || k == 0 || a.len() > (m - 1) * a_rs + (k - 1));
    assert!(n == 0 || k == 0 || b.len() > (k - 1) * b_rs + (n - 1) * b_cs);
    // SAFETY: the asserts above bound every accessed element of a, b and c; c is exclusively
    // borrowed, a and b are shared borrows that do not alias c.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            c.as_mut_ptr(),
            1,
            n as isize,
            false,
            a.as_ptr(),
            1,
            a_rs as isize,
            b.as_ptr(),
            b_cs as isize,
            b_rs as isize,
            0.0f32,
            1.0f32,
            false,
            false,
            false,
            gemm::Parallelism::None,
        )
    }
}

/// Softmax attention over `[units, rows, d]` queries and `[units, keys, d]` keys/values, one
/// unit per rayon task. `causal = Some((past, l))`: query row r (position `r % l`) sees keys
/// `..= past + r % l`.
struct Attention {
    scale: f32,
    causal: Option<(usize, usize)>,
}

impl CustomOp3 for Attention {
    fn name(&self) -> &'static str {
        "attention-cpu"
    }

    fn cpu_fwd(
        &self,
        sq: &CpuStorage,
        lq: &Layout,
        sk: &CpuStorage,
        lk: &Layout,
        sv: &CpuStorage,
        lv: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let q = contiguous_f32(sq, lq, self.name())?;
        let k = contiguous_f32(sk, lk, self.name())?;
        let v = contiguous_f32(sv, lv, self.name())?;
        let (&[uq, rows, d], &[uk, keys, dk], &[uv, kv2, dv]) = (lq.dims(), lk.dims(), lv.dims())
        else {
            candle_core::bail!("attention-cpu: expects 3-d q, k, v")
        };
        if uq != uk || uq != uv || d != dk || d != dv || keys != kv2 {
            candle_core::bail!(
                "attention-cpu: shapes {:?} {:?} {:?}",
                lq.dims(),
                lk.dims(),
                lv.dims()
            )
        }
        let mut out = vec![0f32; uq * rows * d];
        let (scale, causal) = (self.scale, self.causal);
        out.par_chunks_mut(rows * d).enumerate().for_each(|(u, o)| {
            let qu = &q[u * rows * d..(u + 1) * rows * d];
            let ku = &k[u * keys * d..(u + 1) * keys * d];
            let vu = &v[u * keys * d..(u + 1) * keys * d];
            let mut s = vec![0f32; rows * keys];
            // S = Q Kᵀ: B = Kᵀ has row stride 1 and column stride d.
            gemm_rows(rows, keys, d, &mut s, qu, d, ku, 1, d);
            for (r, row) in s.chunks_mut(keys).enumerate() {
                let visible = match causal {
                    Some((past, l)) => (past + r % l + 1).min(keys),
                    None => keys,
                };
                softmax_in_place(&mut row[..visible], scale);
                for x in row[visible..].iter_mut() {
                    *x = 0.0;
                }
            }
            gemm_rows(rows, d, keys, o, &s, keys, vu, d, 1);
        });
        Ok((CpuStorage::F32(out), Shape::from((uq, rows, d))))
    }
}

/// `softmax(scale·Q Kᵀ [+ causal mask]) V` for `q` `[units, rows, d]`, `k`/`v` `[units, keys, d]`
/// on the CPU in f32; `None` when the fast path does not apply (other device or dtype).
pub fn attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    scale: f64,
    causal: Option<(usize, usize)>,
) -> Result<Option<Tensor>> {
    if !(fast_path(q) && fast_path(k) && fast_path(v)) {
        return Ok(None);
    }
    let op = Attention {
        scale: scale as f32,
        causal,
    };
    Ok(Some(q.apply_op3_no_bwd(k, v, &op)?))
}

/// `y = x Wᵀ` for a few rows of `x` (`[m, in]`, m small) and `W` `[out, in]`: one pass over `W`
/// split across threads by output rows, so decoding streams the weights at memory speed (a
/// general gemm with m = 1 runs far below it).
struct SkinnyMatmul;

impl candle_core::CustomOp2 for SkinnyMatmul {
    fn name(&self) -> &'static str {
        "skinny-matmul"
    }

    fn cpu_fwd(
        &self,
        sx: &CpuStorage,
        lx: &Layout,
        sw: &CpuStorage,
        lw: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let x = contiguous_f32(sx, lx, self.name())?;
        let w = contiguous_f32(sw, lw, self.name())?;
        let (&[m, k], &[n, k2]) = (lx.dims(), lw.dims()) else {
            candle_core::bail!("skinny-matmul: expects 2-d operands")
        };
        if k != k2 {
            candle_core::bail!("skinny-matmul: inner sizes {k} and {k2} differ")
        }
        const ROWS: usize = 64;
        // Output laid out [n-block][m][rows] while computing, then transposed to [m, n].
        let mut blocks = vec![0f32; m * n];
        blocks
            .par_chunks_mut(ROWS * m)
            .enumerate()
            .for_each(|(bi, out)| {
                let r0 = bi * ROWS;
                let rows = out.len() / m;
                for r in 0..rows {
                    let wr = &w[(r0 + r) * k..(r0 + r + 1) * k];
                    for i in 0..m {
                        out[i * rows + r] = dot(wr, &x[i * k..(i + 1) * k]);
                    }
                }
            });
        let mut y = vec![0f32; m * n];
        for (bi, out) in blocks.chunks(ROWS * m).enumerate() {
            let rows = out.len() / m;
            for i in 0..m {
                y[i * n + bi * ROWS..i * n + bi * ROWS + rows]
                    .copy_from_slice(&out[i * rows..(i + 1) * rows]);
            }
        }
        Ok((CpuStorage::F32(y), Shape::from((m, n))))
    }
}

/// Dot product with 16 independent accumulators (vectorises without reassociation flags).
#[inline]
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; 16];
    let (ca, cb) = (a.chunks_exact(16), b.chunks_exact(16));
    let (ra, rb) = (ca.remainder(), cb.remainder());
    for (pa, pb) in ca.zip(cb) {
        // Fixed-size views let the compiler drop bounds checks and use vector FMAs.
        let (Ok(pa), Ok(pb)) = (<&[f32; 16]>::try_from(pa), <&[f32; 16]>::try_from(pb)) else {
            continue;
        };
        for j in 0..16 {
            acc[j] += pa[j] * pb[j];
        }
    }
    let mut s: f32 = acc.iter().sum();
    for (p, q) in ra.iter().zip(rb) {
        s += p * q;
    }
    s
}

/// `x Wᵀ` through the skinny kernel when `x` has at most 8 rows on the CPU in f32; `None`
/// otherwise (the caller uses a general matmul).
pub fn skinny_matmul(x: &Tensor, w: &Tensor) -> Result<Option<Tensor>> {
    if x.dims().len() != 2 || x.dims()[0] > 8 || !(fast_path(x) && fast_path(w)) {
        return Ok(None);
    }
    Ok(Some(x.apply_op2_no_bwd(w, &SkinnyMatmul)?))
}

fn fast_path(x: &Tensor) -> bool {
    x.device().is_cpu() && x.dtype() == DType::F32 && x.is_contiguous()
}

/// `gelu` with the tanh approximation (`gelu_pytorch_tanh`).
pub fn gelu_tanh(x: &Tensor) -> Result<Tensor> {
    if fast_path(x) {
        return Ok(x.apply_op1_no_bwd(&GeluTanh)?);
    }
    Ok(x.gelu()?)
}

/// `softmax(scale · x)` over the last dimension, computed in f32.
pub fn softmax_scaled(x: &Tensor, scale: f64) -> Result<Tensor> {
    if fast_path(x) {
        return Ok(x.apply_op1_no_bwd(&ScaledSoftmax {
            scale: scale as f32,
        })?);
    }
    let dt = x.dtype();
    let y = candle_nn::ops::softmax_last_dim(&(x.to_dtype(DType::F32)? * scale)?)?;
    Ok(y.to_dtype(dt)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn kernels_match_candle_ops() {
        let x = Tensor::randn(0f32, 3.0, (7, 129), &Device::Cpu).unwrap();
        let a: Vec<f32> = gelu_tanh(&x)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        let b: Vec<f32> = x.gelu().unwrap().flatten_all().unwrap().to_vec1().unwrap();
        let e = a
            .iter()
            .zip(&b)
            .map(|(p, q)| (p - q).abs())
            .fold(0f32, f32::max);
        assert!(e < 2e-6, "gelu err {e}");
        let a: Vec<f32> = softmax_scaled(&x, 0.5)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        let r = candle_nn::ops::softmax_last_dim(&(&x * 0.5).unwrap()).unwrap();
        let b: Vec<f32> = r.flatten_all().unwrap().to_vec1().unwrap();
        let e = a
            .iter()
            .zip(&b)
            .map(|(p, q)| (p - q).abs())
            .fold(0f32, f32::max);
        assert!(e < 1e-6, "softmax err {e}");
        // Rows of -inf-free large negatives (masked keys) stay finite.
        let m = Tensor::new(&[[f32::MIN, 0.0, f32::MIN]], &Device::Cpu).unwrap();
        let s: Vec<f32> = softmax_scaled(&m, 1.0)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        assert_eq!(s, vec![0.0, 1.0, 0.0]);
    }

    #[test]
    fn skinny_matmul_matches_matmul() {
        let x = Tensor::randn(0f32, 1.0, (3, 200), &Device::Cpu).unwrap();
        let w = Tensor::randn(0f32, 1.0, (131, 200), &Device::Cpu).unwrap();
        let a = skinny_matmul(&x, &w).unwrap().unwrap();
        let b = x.matmul(&w.t().unwrap()).unwrap();
        let d = (a - b)
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert!(d < 1e-4, "{d}");
    }

    #[test]
    fn exp_is_accurate() {
        let mut worst = 0f32;
        let mut x = -87.0f32;
        while x < 88.0 {
            let (a, b) = (exp_f32(x), x.exp());
            worst = worst.max(((a - b) / b).abs());
            x += 0.0137;
        }
        assert!(worst < 3e-7, "relative error {worst}");
        assert_eq!(exp_f32(f32::MIN), 0.0);
        assert_eq!(exp_f32(0.0), 1.0);
    }

    #[test]
    fn attention_kernel_matches_reference_math() {
        let dev = Device::Cpu;
        let q = Tensor::randn(0f32, 1.0, (3, 10, 8), &dev).unwrap();
        let k = Tensor::randn(0f32, 1.0, (3, 7, 8), &dev).unwrap();
        let v = Tensor::randn(0f32, 1.0, (3, 7, 8), &dev).unwrap();
        let scale = 0.35;
        let naive = |mask: Option<&Tensor>| {
            let s = (q.matmul(&k.t().unwrap()).unwrap() * scale).unwrap();
            let s = match mask {
                Some(m) => s.broadcast_add(m).unwrap(),
                None => s,
            };
            candle_nn::ops::softmax_last_dim(&s)
                .unwrap()
                .matmul(&v)
                .unwrap()
        };
        let got = attention(&q, &k, &v, scale, None).unwrap().unwrap();
        let d = (got - naive(None))
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert!(d < 1e-5, "{d}");
        // Causal with 2 past keys and rows grouped as 2 heads x 5 positions.
        let (past, l) = (2usize, 5usize);
        let mut m = vec![0f32; 10 * 7];
        for r in 0..10 {
            for j in 0..7 {
                if j > past + r % l {
                    m[r * 7 + j] = f32::NEG_INFINITY;
                }
            }
        }
        let mask = Tensor::from_vec(m, (10, 7), &dev).unwrap();
        let got = attention(&q, &k, &v, scale, Some((past, l)))
            .unwrap()
            .unwrap();
        let d = (got - naive(Some(&mask)))
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert!(d < 1e-5, "{d}");
    }
}
