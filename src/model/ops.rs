//! CPU kernels for the element-wise hot spots candle runs single-threaded: tanh-GELU and the
//! attention softmax. Other devices and dtypes use candle's own ops.

use candle_core::{CpuStorage, CustomOp1, DType, Layout, Shape, Tensor};
use rayon::prelude::*;

use crate::error::Result;

const CHUNK: usize = 16 * 1024;

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
                    *o = v / (1.0 + (-2.0 * y).exp());
                }
            });
        Ok((CpuStorage::F32(out), l.shape().clone()))
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
                for (o, i) in o.chunks_mut(n).zip(i.chunks(n)) {
                    let m = i.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v * scale));
                    let mut sum = 0f32;
                    for (o, &v) in o.iter_mut().zip(i) {
                        let e = (v * scale - m).exp();
                        *o = e;
                        sum += e;
                    }
                    let inv = 1.0 / sum;
                    for o in o.iter_mut() {
                        *o *= inv;
                    }
                }
            });
        Ok((CpuStorage::F32(out), l.shape().clone()))
    }
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
}
