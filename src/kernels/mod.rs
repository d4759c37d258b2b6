//! The one seam between the model and the hardware: every op the Idefics3 layers run, each
//! dispatching to the hand-written CPU kernels (f32 tensors on the CPU) or to candle's ops (any
//! other device or dtype, or everywhere with `SMOLCAP_KERNELS=generic`).
//!
//! The model files call these functions and never ask which device they run on. A new device is
//! a branch here; the generic branch is what CUDA and Metal run, and CI runs the parity tests on
//! it on the CPU (`SMOLCAP_KERNELS=generic`).
//!
//! - [`cpu`]: the CPU f32 kernels (gemm-based linear, RoPE, gated SiLU, tanh-GELU, softmax)
//!   and [`attention`] (read from the projections' and the KV cache's layouts; the decoder's
//!   RoPE + cache + attention step is [`cached_attention`], both paths), built on [`gemm`]
//!   and [`simd`] and run on [`pool`]; [`quantized`]: products with quantised weights (NF4,
//!   GGML formats), tile by tile, with [`quant_dot`] decoding GGML blocks in registers for
//!   decode's few rows.
//! - [`grad`]: forward and backward of the ops the trainer differentiates, with
//!   [`attention_grad`] the CPU kernels of training attention.

pub mod attention;
pub mod attention_grad;
pub mod cached_attention;
pub mod cpu;
pub(crate) mod gemm;
pub mod grad;
pub(crate) mod pool;
pub(crate) mod quant_dot;
pub mod quantized;
pub(crate) mod simd;

use std::sync::OnceLock;

use candle_core::{DType, Tensor};

use crate::error::{Error, Result};
use crate::quant::QuantTensor;

/// Which implementation the ops use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// The CPU fast kernels wherever an op's tensors are f32 on the CPU, candle's ops elsewhere.
    Auto,
    /// candle's ops everywhere (the path CUDA and Metal run), forced with `SMOLCAP_KERNELS=generic`.
    Generic,
}

/// The environment variable that selects the [`Backend`].
pub const ENV: &str = "SMOLCAP_KERNELS";

fn parse(v: Option<&str>) -> std::result::Result<Backend, String> {
    match v.map(str::trim) {
        None | Some("") | Some("auto") => Ok(Backend::Auto),
        Some("generic") => Ok(Backend::Generic),
        Some(other) => Err(format!(
            "{ENV}={other:?} is not a kernel choice (use \"auto\" or \"generic\")"
        )),
    }
}

/// The backend chosen by `SMOLCAP_KERNELS`, read once per process; an unknown value is an error
/// (reported by [`check_env`] when a model loads) and leaves [`Backend::Auto`] in force.
fn choice() -> &'static std::result::Result<Backend, String> {
    static CHOICE: OnceLock<std::result::Result<Backend, String>> = OnceLock::new();
    CHOICE.get_or_init(|| parse(std::env::var(ENV).ok().as_deref()))
}

/// The backend in force for this process.
pub fn backend() -> Backend {
    choice().clone().unwrap_or(Backend::Auto)
}

/// Fails when `SMOLCAP_KERNELS` holds a value that names no backend (called at model load, so
/// a typo is reported instead of silently running another path).
pub fn check_env() -> Result<()> {
    choice()
        .as_ref()
        .map(|_| ())
        .map_err(|m| Error::InvalidArgument(m.clone()))
}

/// Whether the CPU fast kernels take a tensor: f32, contiguous, on the CPU, and not forced off.
pub(crate) fn fast(t: &Tensor) -> bool {
    fast_device(t) && t.dtype() == DType::F32 && t.is_contiguous()
}

/// Whether work on `t`'s device is scheduled by the CPU kernels (tile-per-thread splits, the
/// compute pool): a CPU tensor with the fast kernels not forced off.
pub(crate) fn fast_device(t: &Tensor) -> bool {
    t.device().is_cpu() && backend() == Backend::Auto
}

/// `x Wᵀ (+ bias) (+ residual)` for `x` `[m, k]` and `W` `[n, k]`.
pub fn linear(
    x: &Tensor,
    w: &Tensor,
    bias: Option<&Tensor>,
    residual: Option<&Tensor>,
) -> Result<Tensor> {
    if let Some(y) = cpu::linear(x, w, bias, residual)? {
        return Ok(y);
    }
    let mut y = x.matmul(&w.t()?)?;
    if let Some(b) = bias {
        y = y.broadcast_add(b)?;
    }
    if let Some(r) = residual {
        y = (y + r)?;
    }
    Ok(y)
}

/// `x Wᵀ (+ bias) (+ residual)` for `x` `[m, k]` and a quantised weight `W` `[n, k]`: on the
/// CPU the tiled kernels of [`quantized`] (no whole f32 copy of `W`), elsewhere a dequantised
/// copy on the device.
pub fn linear_quant(
    x: &Tensor,
    w: &QuantTensor,
    bias: Option<&Tensor>,
    residual: Option<&Tensor>,
) -> Result<Tensor> {
    let (n, k) = w.shape();
    let (m, kx) = x.dims2()?;
    if kx != k {
        return Err(Error::Internal(format!(
            "{} linear: input {:?} for a [{n}, {k}] weight",
            w.format_name(),
            x.dims()
        )));
    }
    if fast(x) && bias.is_none_or(fast) && residual.is_none_or(fast) {
        let mut out = match residual {
            Some(r) => r.flatten_all()?.to_vec1::<f32>()?,
            None => vec![0f32; m * n],
        };
        if out.len() != m * n {
            return Err(Error::Internal("quantised linear: residual size".into()));
        }
        if let Some(b) = bias {
            let b = b.flatten_all()?.to_vec1::<f32>()?;
            for row in out.chunks_mut(n) {
                for (o, &v) in row.iter_mut().zip(&b) {
                    *o += v;
                }
            }
        }
        {
            let (g, l) = x.storage_and_layout();
            quantized::linear(cpu::f32_slice(&g, l)?, m, w, &mut out, true)?;
        }
        return Ok(Tensor::from_vec(out, (m, n), x.device())?);
    }
    let dense = w.dequantize(x.device())?.to_dtype(x.dtype())?;
    linear(x, &dense, bias, residual)
}

/// `dy · W` for `dy` `[m, n]` and a quantised weight `W` `[n, k]` (the input gradient of
/// [`linear_quant`]).
pub fn linear_quant_dx(dy: &Tensor, w: &QuantTensor) -> Result<Tensor> {
    let (n, k) = w.shape();
    let (m, ny) = dy.dims2()?;
    if ny != n {
        return Err(Error::Internal(format!(
            "{} input gradient: dy {:?} for a [{n}, {k}] weight",
            w.format_name(),
            dy.dims()
        )));
    }
    if fast(dy) {
        let dx = {
            let (g, l) = dy.storage_and_layout();
            quantized::linear_dx(cpu::f32_slice(&g, l)?, m, w)?
        };
        return Ok(Tensor::from_vec(dx, (m, k), dy.device())?);
    }
    let dense = w.dequantize(dy.device())?.to_dtype(dy.dtype())?;
    Ok(dy.matmul(&dense)?)
}

/// `[x Wᵀ for W in ws]` for projections of one input `x` `[m, k]` (no biases); one parallel pass
/// over all the weights for a few rows on the CPU.
pub fn linear_many(x: &Tensor, ws: &[&Tensor]) -> Result<Vec<Tensor>> {
    if let Some(ys) = cpu::linear_many(x, ws)? {
        return Ok(ys);
    }
    ws.iter().map(|w| linear(x, w, None, None)).collect()
}

/// `silu(g) · u` element-wise (Llama's gated MLP).
pub fn silu_mul(g: &Tensor, u: &Tensor) -> Result<Tensor> {
    if let Some(y) = cpu::silu_mul(g, u)? {
        return Ok(y);
    }
    Ok((candle_nn::ops::silu(g)? * u)?)
}

/// `gelu` with the tanh approximation (`gelu_pytorch_tanh`).
pub fn gelu_tanh(x: &Tensor) -> Result<Tensor> {
    cpu::gelu_tanh(x)
}

/// `softmax(scale · x)` over the last dimension, computed in f32.
pub fn softmax_scaled(x: &Tensor, scale: f64) -> Result<Tensor> {
    cpu::softmax_scaled(x, scale)
}

/// RMSNorm over the last dimension with weight `w`.
pub fn rms_norm(x: &Tensor, w: &Tensor, eps: f32) -> Result<Tensor> {
    Ok(candle_nn::ops::rms_norm(x, w, eps)?)
}

/// LayerNorm over the last dimension with weight `w` and bias `b`.
pub fn layer_norm(x: &Tensor, w: &Tensor, b: &Tensor, eps: f32) -> Result<Tensor> {
    Ok(candle_nn::ops::layer_norm(x, w, b, eps)?)
}

/// Full (bidirectional) multi-head attention from the projections' `[n, l, h·d]` layout to
/// `[n, l, h·d]`: on the CPU read in place by [`attention::attention_raw`], elsewhere candle's
/// batched products over `[n, h, l, d]` heads.
pub fn full_attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    (n, l, h, hd): (usize, usize, usize, usize),
    scale: f64,
) -> Result<Tensor> {
    if [q, k, v].iter().all(|t| fast(t)) {
        let (qg, ql) = q.storage_and_layout();
        let (kg, kl) = k.storage_and_layout();
        let (vg, vl) = v.storage_and_layout();
        let layout = attention::HeadLayout::rows_heads(l, h, hd);
        let sh = attention::AttentionShape {
            batch: n,
            q_heads: h,
            kv_heads: h,
            rows: l,
            keys: l,
            d: hd,
            scale: scale as f32,
            causal: None,
        };
        let out = attention::attention_raw(
            &sh,
            cpu::f32_slice(&qg, ql)?,
            layout,
            cpu::f32_slice(&kg, kl)?,
            layout,
            cpu::f32_slice(&vg, vl)?,
            layout,
            None,
        )?;
        return Ok(Tensor::from_vec(out, (n, l, h * hd), q.device())?);
    }
    let split = |t: &Tensor| -> Result<Tensor> {
        Ok(t.reshape((n, l, h, hd))?.transpose(1, 2)?.contiguous()?)
    };
    let (q, k, v) = (split(q)?, split(k)?, split(v)?);
    let o = softmax_scaled(&q.matmul(&k.t()?)?, scale)?.matmul(&v)?;
    Ok(o.transpose(1, 2)?.reshape((n, l, h * hd))?)
}

/// Runs `n` independent jobs (image tiles): on the CPU one per task, whole rounds of one job
/// per thread with single-threaded products and the rest sharing the threads; elsewhere in
/// order on the calling thread (a device runs each job's ops itself).
pub fn per_item<T: Send>(
    n: usize,
    on: &Tensor,
    job: impl Fn(usize) -> Result<T> + Sync,
) -> Result<Vec<T>> {
    if n > 1 && fast_device(on) {
        use rayon::prelude::*;
        let threads = rayon::current_num_threads().max(1);
        let whole = n - n % threads;
        let mut outs = (0..whole)
            .into_par_iter()
            .map(|i| cpu::single_threaded_products(|| job(i)))
            .collect::<Result<Vec<_>>>()?;
        outs.extend(
            (whole..n)
                .into_par_iter()
                .map(&job)
                .collect::<Result<Vec<_>>>()?,
        );
        return Ok(outs);
    }
    (0..n).map(job).collect()
}

/// Runs a forward pass `f`: on the CPU on the compute pool with its helpers awake (see
/// [`pool::on_pool`]); on another device on the calling thread, where spinning helpers would
/// only take CPU time from the host while the device works.
pub fn forward_pass<R: Send>(on: &Tensor, f: impl FnOnce() -> R + Send) -> R {
    if fast_device(on) {
        pool::on_pool(f)
    } else {
        f()
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Largest element-wise difference of two f32 tensors (for the kernels' tests).
    pub(crate) fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
        (a - b)
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap()
    }

    #[test]
    fn the_kernel_choice_parses_known_values_and_rejects_others() {
        assert_eq!(parse(None), Ok(Backend::Auto));
        assert_eq!(parse(Some("")), Ok(Backend::Auto));
        assert_eq!(parse(Some("auto")), Ok(Backend::Auto));
        assert_eq!(parse(Some(" generic ")), Ok(Backend::Generic));
        let e = parse(Some("fast")).unwrap_err();
        assert!(e.contains("SMOLCAP_KERNELS") && e.contains("fast"), "{e}");
    }
}
