//! Forward and backward passes of the operations the trainer differentiates (f32 tensors).
//!
//! candle's fused ops have no backward and its matmul backward also differentiates frozen
//! weights, so the trainer runs explicit backward passes built from these functions.

use candle_core::{DType, Device, Tensor, D};

use super::attention_grad::{self, TrainShape};
use super::cpu;
use crate::error::Result;

/// RMSNorm forward: `(y, rstd)` with `rstd = 1/sqrt(mean(x²) + eps)` of shape `[..., 1]`.
pub fn rms_norm(x: &Tensor, w: &Tensor, eps: f64) -> Result<(Tensor, Tensor)> {
    let rstd = (x.sqr()?.mean_keepdim(D::Minus1)? + eps)?.sqrt()?.recip()?;
    // Same order as the reference: normalise, then scale by the weight.
    let y = x.broadcast_mul(&rstd)?.broadcast_mul(w)?;
    Ok((y, rstd))
}

/// RMSNorm backward with respect to the input (the weight is frozen).
pub fn rms_norm_bwd(dy: &Tensor, x: &Tensor, w: &Tensor, rstd: &Tensor) -> Result<Tensor> {
    let xhat = x.broadcast_mul(rstd)?;
    let dxhat = dy.broadcast_mul(w)?;
    let m = (&dxhat * &xhat)?.mean_keepdim(D::Minus1)?;
    Ok(dxhat.sub(&xhat.broadcast_mul(&m)?)?.broadcast_mul(rstd)?)
}

/// LayerNorm forward: `(y, xhat, rstd)`.
pub fn layer_norm(
    x: &Tensor,
    w: &Tensor,
    b: &Tensor,
    eps: f64,
) -> Result<(Tensor, Tensor, Tensor)> {
    let mu = x.mean_keepdim(D::Minus1)?;
    let xc = x.broadcast_sub(&mu)?;
    let rstd = (xc.sqr()?.mean_keepdim(D::Minus1)? + eps)?
        .sqrt()?
        .recip()?;
    let xhat = xc.broadcast_mul(&rstd)?;
    let y = xhat.broadcast_mul(w)?.broadcast_add(b)?;
    Ok((y, xhat, rstd))
}

/// LayerNorm backward with respect to the input (weight and bias are frozen).
pub fn layer_norm_bwd(dy: &Tensor, xhat: &Tensor, w: &Tensor, rstd: &Tensor) -> Result<Tensor> {
    let dxhat = dy.broadcast_mul(w)?;
    let m1 = dxhat.mean_keepdim(D::Minus1)?;
    let m2 = (&dxhat * xhat)?.mean_keepdim(D::Minus1)?;
    let t = dxhat.broadcast_sub(&m1)?.sub(&xhat.broadcast_mul(&m2)?)?;
    Ok(t.broadcast_mul(rstd)?)
}

/// Rotary embedding (halves layout) of `x` `[b, h, L, d]` with `cos`/`sin` `[L, d/2]`.
pub fn rope(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
    Ok(candle_nn::rotary_emb::rope(&x.contiguous()?, cos, sin)?)
}

/// Backward of [`rope`]: the rotation by the opposite angle (`neg_sin` = −sin).
pub fn rope_bwd(dy: &Tensor, cos: &Tensor, neg_sin: &Tensor) -> Result<Tensor> {
    rope(dy, cos, neg_sin)
}

/// Additive causal mask `[L, L]`: 0 on and below the diagonal, −∞ above.
pub fn causal_mask(l: usize, dev: &Device) -> Result<Tensor> {
    let mut m = vec![0f32; l * l];
    for i in 0..l {
        for v in &mut m[i * l + i + 1..(i + 1) * l] {
            *v = f32::NEG_INFINITY;
        }
    }
    Ok(Tensor::from_vec(m, (l, l), dev)?)
}

/// What one attention forward pass keeps for its backward.
pub enum AttnCache {
    /// The CPU kernels of [`super::attention_grad`]: the inputs and each query row's softmax
    /// statistics; the probabilities are recomputed by the backward pass.
    Fast {
        sh: TrainShape,
        q: Tensor,
        k: Tensor,
        v: Tensor,
        stats: Vec<f32>,
    },
    /// candle's ops: inputs with the KV heads repeated, and the probabilities.
    Generic {
        q: Tensor,
        k: Tensor,
        v: Tensor,
        p: Tensor,
        scale: f64,
        kv_heads: usize,
    },
}

/// Scaled dot-product self-attention of `q` `[b, h, L, d]` over `k`, `v` `[b, kvh, L, d]`
/// (grouped heads), causal or bidirectional; returns `[b, L, h·d]` (the output projection's
/// input) and the cache for [`attention_bwd`].
pub fn attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    scale: f64,
    causal: bool,
) -> Result<(Tensor, AttnCache)> {
    let (b, h, l, d) = q.dims4()?;
    let kv_heads = k.dim(1)?;
    if super::fast(q) && super::fast(k) && super::fast(v) {
        let sh = TrainShape {
            batch: b,
            q_heads: h,
            kv_heads,
            rows: l,
            d,
            scale: scale as f32,
            causal,
        };
        let (out, stats) = {
            let (qg, ql) = q.storage_and_layout();
            let (kg, kl) = k.storage_and_layout();
            let (vg, vl) = v.storage_and_layout();
            attention_grad::forward(
                &sh,
                cpu::f32_slice(&qg, ql)?,
                cpu::f32_slice(&kg, kl)?,
                cpu::f32_slice(&vg, vl)?,
            )?
        };
        let o = Tensor::from_vec(out, (b, l, h * d), q.device())?;
        let cache = AttnCache::Fast {
            sh,
            q: q.clone(),
            k: k.clone(),
            v: v.clone(),
            stats,
        };
        return Ok((o, cache));
    }
    let rep = h / kv_heads;
    let k = repeat_kv(k, rep)?;
    let v = repeat_kv(v, rep)?;
    let s = (q.matmul(&k.t()?)? * scale)?;
    let s = if causal {
        s.broadcast_add(&causal_mask(l, q.device())?)?
    } else {
        s
    };
    let p = crate::kernels::softmax_scaled(&s.contiguous()?, 1.0)?;
    let o = p.matmul(&v)?.transpose(1, 2)?.reshape((b, l, h * d))?;
    Ok((
        o,
        AttnCache::Generic {
            q: q.clone(),
            k,
            v,
            p,
            scale,
            kv_heads,
        },
    ))
}

/// Backward of [`attention`] from the output gradient `d_o` `[b, L, h·d]`: `(dq, dk, dv)` in
/// the inputs' shapes (`dk`, `dv` summed back to the KV heads).
pub fn attention_bwd(d_o: &Tensor, c: &AttnCache) -> Result<(Tensor, Tensor, Tensor)> {
    match c {
        AttnCache::Fast { sh, q, k, v, stats } => {
            let d_o = d_o.contiguous()?;
            let (dq, dk, dv) = {
                let (qg, ql) = q.storage_and_layout();
                let (kg, kl) = k.storage_and_layout();
                let (vg, vl) = v.storage_and_layout();
                let (gg, gl) = d_o.storage_and_layout();
                attention_grad::backward(
                    sh,
                    cpu::f32_slice(&qg, ql)?,
                    cpu::f32_slice(&kg, kl)?,
                    cpu::f32_slice(&vg, vl)?,
                    stats,
                    cpu::f32_slice(&gg, gl)?,
                )?
            };
            let dev = q.device();
            Ok((
                Tensor::from_vec(dq, q.dims(), dev)?,
                Tensor::from_vec(dk, k.dims(), dev)?,
                Tensor::from_vec(dv, k.dims(), dev)?,
            ))
        }
        AttnCache::Generic {
            q,
            k,
            v,
            p,
            scale,
            kv_heads,
        } => {
            let (b, h, l, d) = q.dims4()?;
            let d_o = d_o.reshape((b, l, h, d))?.transpose(1, 2)?.contiguous()?;
            let dp = d_o.matmul(&v.t()?)?;
            let dv = p.t()?.matmul(&d_o)?;
            let row = (&dp * p)?.sum_keepdim(D::Minus1)?;
            let ds = (p.clone() * dp.broadcast_sub(&row)?)?;
            let dq = (ds.matmul(k)? * *scale)?;
            let dk = (ds.t()?.matmul(q)? * *scale)?;
            Ok((dq, reduce_kv(&dk, *kv_heads)?, reduce_kv(&dv, *kv_heads)?))
        }
    }
}

/// `[b, kvh, L, d]` → `[b, kvh·rep, L, d]`, head h reading KV head h / rep.
fn repeat_kv(x: &Tensor, rep: usize) -> Result<Tensor> {
    if rep == 1 {
        return Ok(x.clone());
    }
    let (b, kvh, l, d) = x.dims4()?;
    Ok(x.unsqueeze(2)?
        .expand((b, kvh, rep, l, d))?
        .contiguous()?
        .reshape((b, kvh * rep, l, d))?)
}

/// Inverse of [`repeat_kv`] for gradients: sums each group of query heads.
fn reduce_kv(x: &Tensor, kv_heads: usize) -> Result<Tensor> {
    let (b, h, l, d) = x.dims4()?;
    if h == kv_heads {
        return Ok(x.clone());
    }
    Ok(x.reshape((b, kv_heads, h / kv_heads, l, d))?.sum(2)?)
}

/// SiLU backward: `dy · σ(x)(1 + x(1 − σ(x)))`.
pub fn silu_bwd(dy: &Tensor, x: &Tensor) -> Result<Tensor> {
    let s = candle_nn::ops::sigmoid(x)?;
    let one_minus = s.affine(-1.0, 1.0)?;
    let t = ((x * one_minus)? + 1.0)?;
    Ok((dy * (s * t)?)?)
}

/// `gelu_pytorch_tanh` forward computed exactly as PyTorch's formula.
pub fn gelu_tanh(x: &Tensor) -> Result<Tensor> {
    Ok(x.gelu()?)
}

/// Backward of the tanh-approximated GELU.
pub fn gelu_tanh_bwd(dy: &Tensor, x: &Tensor) -> Result<Tensor> {
    const C: f64 = 0.797_884_560_802_865_4; // sqrt(2/π)
    const K: f64 = 0.044_715;
    let x2 = x.sqr()?;
    let inner = ((x * ((&x2 * K)? + 1.0)?)? * C)?;
    let t = inner.tanh()?;
    let left = ((&t + 1.0)? * 0.5)?;
    let sech2 = t.sqr()?.affine(-1.0, 1.0)?;
    let dinner = ((&x2 * (3.0 * K))? + 1.0)?.affine(C, 0.0)?;
    let right = ((x * 0.5)? * (sech2 * dinner)?)?;
    Ok((dy * (left + right)?)?)
}

/// Whether element `i` survives dropout with probability `1 − threshold/2²⁴` under `seed`: a
/// hash of the pair (SplitMix64's finaliser), so a mask is a pure function of its seed and the
/// backward pass regenerates it instead of keeping it.
#[inline(always)]
fn dropout_keep(seed: u64, i: u64, threshold: u64) -> bool {
    let mut z = seed.wrapping_add(i.wrapping_mul(0x9E37_79B9_7F4A_7C15));
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^= z >> 31;
    (z >> 40) >= threshold
}

/// Inverted dropout: `x` with each element zeroed with probability `p` (to 2⁻²⁴) and the rest
/// divided by `1 − p`, the mask drawn from `seed` alone (the same on every device and on both
/// kernel paths).
pub fn dropout(x: &Tensor, p: f32, seed: u64) -> Result<Tensor> {
    if p <= 0.0 {
        return Ok(x.clone());
    }
    let threshold = (f64::from(p) * f64::from(1u32 << 24)).round() as u64;
    let keep = (1.0 / (1.0 - f64::from(p))) as f32;
    if super::fast(x) {
        use rayon::prelude::*;
        let mut out = vec![0f32; x.elem_count()];
        {
            let (g, l) = x.storage_and_layout();
            let src = cpu::f32_slice(&g, l)?;
            const CHUNK: usize = 1 << 14;
            out.par_chunks_mut(CHUNK)
                .zip(src.par_chunks(CHUNK))
                .enumerate()
                .for_each(|(c, (o, s))| {
                    let base = (c * CHUNK) as u64;
                    for (j, (o, &v)) in o.iter_mut().zip(s).enumerate() {
                        if dropout_keep(seed, base + j as u64, threshold) {
                            *o = v * keep;
                        }
                    }
                });
        }
        return Ok(Tensor::from_vec(out, x.dims(), x.device())?);
    }
    let mask: Vec<f32> = (0..x.elem_count() as u64)
        .map(|i| {
            if dropout_keep(seed, i, threshold) {
                keep
            } else {
                0.0
            }
        })
        .collect();
    let mask = Tensor::from_vec(mask, x.dims(), x.device())?.to_dtype(x.dtype())?;
    Ok((x * mask)?)
}

/// Sum of token cross-entropies of `logits` `[n, V]` against `labels`, and its gradient with
/// respect to the logits scaled by `grad_scale` (e.g. 1/number of label tokens).
pub fn cross_entropy(logits: &Tensor, labels: &[u32], grad_scale: f64) -> Result<(f64, Tensor)> {
    let logits = logits.to_dtype(DType::F32)?;
    let (n, v) = logits.dims2()?;
    let max = logits.max_keepdim(D::Minus1)?;
    let shifted = logits.broadcast_sub(&max)?;
    let e = shifted.exp()?;
    let sum = e.sum_keepdim(D::Minus1)?;
    let lse = sum.log()?; // [n, 1], relative to max
    let rows: Vec<f32> = shifted.flatten_all()?.to_vec1()?;
    let lse_v: Vec<f32> = lse.flatten_all()?.to_vec1()?;
    let mut total = 0f64;
    for (i, &y) in labels.iter().enumerate() {
        total += f64::from(lse_v[i] - rows[i * v + y as usize]);
    }
    let probs = e.broadcast_div(&sum)?;
    let mut onehot = vec![0f32; n * v];
    for (i, &y) in labels.iter().enumerate() {
        onehot[i * v + y as usize] = 1.0;
    }
    let onehot = Tensor::from_vec(onehot, (n, v), logits.device())?;
    let grad = ((probs - onehot)? * grad_scale)?;
    Ok((total, grad))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::tests::max_diff;

    /// Numerical gradient of `sum(f(x) · g)` with respect to x, by central differences in f64.
    fn numeric<F: Fn(&Tensor) -> Tensor>(f: F, x: &Tensor, g: &Tensor) -> Tensor {
        let xs: Vec<f32> = x.flatten_all().unwrap().to_vec1().unwrap();
        let h = 1e-2f32;
        let mut out = vec![0f32; xs.len()];
        let dot = |t: &Tensor| -> f64 {
            let a: Vec<f32> = t.flatten_all().unwrap().to_vec1().unwrap();
            let b: Vec<f32> = g.flatten_all().unwrap().to_vec1().unwrap();
            a.iter()
                .zip(&b)
                .map(|(p, q)| f64::from(*p) * f64::from(*q))
                .sum()
        };
        for i in 0..xs.len() {
            let mut p = xs.clone();
            p[i] += h;
            let mut m = xs.clone();
            m[i] -= h;
            let tp = Tensor::from_vec(p, x.dims(), x.device()).unwrap();
            let tm = Tensor::from_vec(m, x.dims(), x.device()).unwrap();
            out[i] = ((dot(&f(&tp)) - dot(&f(&tm))) / (2.0 * f64::from(h))) as f32;
        }
        Tensor::from_vec(out, x.dims(), x.device()).unwrap()
    }

    #[test]
    fn norms_gelu_silu_backward_match_finite_differences() {
        let dev = Device::Cpu;
        let x = Tensor::randn(0f32, 1.0, (3, 6), &dev).unwrap();
        let w = Tensor::randn(1f32, 0.3, 6, &dev).unwrap();
        let b = Tensor::randn(0f32, 0.3, 6, &dev).unwrap();
        let g = Tensor::randn(0f32, 1.0, (3, 6), &dev).unwrap();
        let (_, rstd) = rms_norm(&x, &w, 1e-5).unwrap();
        let got = rms_norm_bwd(&g, &x, &w, &rstd).unwrap();
        let want = numeric(|t| rms_norm(t, &w, 1e-5).unwrap().0, &x, &g);
        assert!(
            max_diff(&got, &want) < 2e-3,
            "rms {}",
            max_diff(&got, &want)
        );
        let (_, xhat, rstd) = layer_norm(&x, &w, &b, 1e-6).unwrap();
        let got = layer_norm_bwd(&g, &xhat, &w, &rstd).unwrap();
        let want = numeric(|t| layer_norm(t, &w, &b, 1e-6).unwrap().0, &x, &g);
        assert!(max_diff(&got, &want) < 2e-3, "ln {}", max_diff(&got, &want));
        let got = gelu_tanh_bwd(&g, &x).unwrap();
        let want = numeric(|t| gelu_tanh(t).unwrap(), &x, &g);
        assert!(
            max_diff(&got, &want) < 2e-3,
            "gelu {}",
            max_diff(&got, &want)
        );
        let got = silu_bwd(&g, &x).unwrap();
        let want = numeric(|t| candle_nn::ops::silu(t).unwrap(), &x, &g);
        assert!(
            max_diff(&got, &want) < 2e-3,
            "silu {}",
            max_diff(&got, &want)
        );
    }

    #[test]
    fn attention_and_rope_backward_match_finite_differences() {
        let dev = Device::Cpu;
        let (b, h, kvh, l, d) = (1, 4, 2, 5, 4);
        let q = Tensor::randn(0f32, 1.0, (b, h, l, d), &dev).unwrap();
        let k = Tensor::randn(0f32, 1.0, (b, kvh, l, d), &dev).unwrap();
        let v = Tensor::randn(0f32, 1.0, (b, kvh, l, d), &dev).unwrap();
        let g = Tensor::randn(0f32, 1.0, (b, h, l, d), &dev).unwrap();
        let scale = 0.5;
        let go = g.transpose(1, 2).unwrap().reshape((b, l, h * d)).unwrap();
        for causal in [true, false] {
            let (_, cache) = attention(&q, &k, &v, scale, causal).unwrap();
            let (dq, dk, dv) = attention_bwd(&go, &cache).unwrap();
            let f =
                |q: &Tensor, k: &Tensor, v: &Tensor| attention(q, k, v, scale, causal).unwrap().0;
            assert!(max_diff(&dq, &numeric(|t| f(t, &k, &v), &q, &go)) < 2e-3);
            assert!(max_diff(&dk, &numeric(|t| f(&q, t, &v), &k, &go)) < 2e-3);
            assert!(max_diff(&dv, &numeric(|t| f(&q, &k, t), &v, &go)) < 2e-3);
        }

        let pos: Vec<f32> = (0..l * d / 2).map(|i| i as f32 * 0.37).collect();
        let ang = Tensor::from_vec(pos, (l, d / 2), &dev).unwrap();
        let (cos, sin) = (ang.cos().unwrap(), ang.sin().unwrap());
        let got = rope_bwd(&g, &cos, &sin.neg().unwrap()).unwrap();
        let want = numeric(|t| rope(t, &cos, &sin).unwrap(), &q, &g);
        assert!(max_diff(&got, &want) < 2e-3);
    }

    #[test]
    fn dropout_is_a_pure_function_of_its_seed_with_the_asked_rate() {
        let dev = Device::Cpu;
        let x = Tensor::ones((300, 1000), DType::F32, &dev).unwrap();
        let a: Vec<f32> = dropout(&x, 0.25, 7)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        let b: Vec<f32> = dropout(&x, 0.25, 7)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        let c: Vec<f32> = dropout(&x, 0.25, 8)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        assert_eq!(a, b);
        assert_ne!(a, c);
        assert!(a.iter().all(|&v| v == 0.0 || (v - 1.0 / 0.75).abs() < 1e-6));
        let dropped = a.iter().filter(|&&v| v == 0.0).count() as f64 / a.len() as f64;
        // 300,000 draws: the standard deviation of the rate is 0.0008.
        assert!((dropped - 0.25).abs() < 0.005, "dropped {dropped}");
        // The generic path (what a GPU runs) draws the same mask as the CPU kernel.
        let host: Vec<f32> = (0..x.elem_count() as u64)
            .map(|i| {
                if dropout_keep(7, i, 1 << 22) {
                    1.0 / 0.75
                } else {
                    0.0
                }
            })
            .collect();
        assert_eq!(a, host);
        assert_eq!(dropout(&x, 0.0, 7).unwrap().id(), x.id());
    }

    #[test]
    fn cross_entropy_gradient_matches_finite_differences() {
        let dev = Device::Cpu;
        let x = Tensor::randn(0f32, 2.0, (3, 7), &dev).unwrap();
        let labels = [1u32, 6, 0];
        let (_, grad) = cross_entropy(&x, &labels, 0.5).unwrap();
        let one = Tensor::ones((1, 1), DType::F32, &dev).unwrap();
        let want = numeric(
            |t| {
                let (l, _) = cross_entropy(t, &labels, 0.5).unwrap();
                Tensor::from_vec(vec![(l * 0.5) as f32], (1, 1), &dev).unwrap()
            },
            &x,
            &one,
        );
        assert!(max_diff(&grad, &want) < 2e-3, "{}", max_diff(&grad, &want));
    }
}
