//! CPU f32 kernels for the hot spots: linear layers with the bias and residual added in the
//! product, attention read straight from the projections' layout (no transposes), RoPE, the
//! gated SiLU, tanh-GELU and softmax. Functions returning `Option` give `None` where the fast
//! path does not apply (another device or dtype, or `SMOLCAP_KERNELS=generic`); callers go
//! through the dispatching ops in [`crate::kernels`].

use candle_core::{CpuStorage, CustomOp1, DType, Layout, Shape, Storage, Tensor};
use rayon::prelude::*;

use super::gemm::{gemm_raw, SharedOut};
use super::simd;
use crate::error::{Error, Result};

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
        out.par_chunks_mut(CHUNK)
            .zip(x.par_chunks(CHUNK))
            .for_each(|(o, i)| simd::gelu_tanh(o, i));
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
                o.copy_from_slice(i);
                for row in o.chunks_mut(n) {
                    simd::softmax(row, scale);
                }
            });
        Ok((CpuStorage::F32(out), l.shape().clone()))
    }
}

/// The elements of a contiguous f32 CPU tensor, from its storage guard and layout.
pub(crate) fn f32_slice<'a>(st: &'a Storage, l: &Layout) -> Result<&'a [f32]> {
    match (st, l.contiguous_offsets()) {
        (Storage::Cpu(CpuStorage::F32(v)), Some((a, b))) => Ok(&v[a..b]),
        _ => Err(Error::Internal(format!(
            "expected a contiguous f32 CPU tensor, got {:?}",
            l.dims()
        ))),
    }
}

/// The `len` elements of a weight stored transposed (see [`store_transposed`]), from its
/// storage guard and (non-contiguous) layout.
fn transposed_f32<'a>(st: &'a Storage, l: &Layout, len: usize) -> Result<&'a [f32]> {
    match st {
        Storage::Cpu(CpuStorage::F32(v)) => v.get(l.start_offset()..l.start_offset() + len),
        _ => None,
    }
    .ok_or_else(|| Error::Internal("transposed weight storage".into()))
}

/// `y = x Wᵀ (+ bias) (+ residual)` for `x` `[m, k]` and `W` `[out, k]` on the CPU in f32, the
/// bias and residual folded into the product's output; `None` when the fast path does not apply.
pub fn linear(
    x: &Tensor,
    w: &Tensor,
    bias: Option<&Tensor>,
    residual: Option<&Tensor>,
) -> Result<Option<Tensor>> {
    let layout = weight_layout(w);
    let operands_ok = fast_path(x)
        && layout.is_some()
        && bias.is_none_or(fast_path)
        && residual.is_none_or(fast_path);
    if !operands_ok {
        return Ok(None);
    }
    let (m, k) = x.dims2()?;
    let (n, k2) = w.dims2()?;
    if k != k2
        || bias.is_some_and(|b| b.elem_count() != n)
        || residual.is_some_and(|r| r.elem_count() != m * n)
    {
        return Err(Error::Internal(format!(
            "linear: x {:?}, weight {:?}, bias {:?}, residual {:?}",
            x.dims(),
            w.dims(),
            bias.map(|b| b.dims().to_vec()),
            residual.map(|r| r.dims().to_vec())
        )));
    }
    // A gemm that writes every output element (no bias, residual or accumulation) needs no
    // zeroed buffer: it writes through the spare capacity and the length is set afterwards.
    let overwrite = residual.is_none() && bias.is_none() && m > SKINNY_ROWS;
    let mut out = match residual {
        Some(r) => {
            let (g, l) = r.storage_and_layout();
            par_copy(f32_slice(&g, l)?)
        }
        None if overwrite => Vec::with_capacity(m * n),
        None => vec![0f32; m * n],
    };
    if let Some(b) = bias {
        let (g, l) = b.storage_and_layout();
        let b = f32_slice(&g, l)?;
        out.par_chunks_mut(n).for_each(|row| {
            for (o, &v) in row.iter_mut().zip(b) {
                *o += v;
            }
        });
    }
    let accumulate = residual.is_some() || bias.is_some();
    let (xg, xl) = x.storage_and_layout();
    let xs = f32_slice(&xg, xl)?;
    let transposed = layout == Some(WeightLayout::Transposed);
    let (wg, wl) = w.storage_and_layout();
    let ws = if transposed {
        transposed_f32(&wg, wl, n * k)?
    } else {
        f32_slice(&wg, wl)?
    };
    if ws.len() != n * k || xs.len() != m * k {
        return Err(Error::Internal("linear: operand sizes".into()));
    }
    // Element (p, j) of Wᵀ: `ws[j·k + p]` for a [n, k] weight, `ws[p·n + j]` for one stored
    // transposed ([k, n]), which the gemm packs with contiguous copies instead of gathers.
    let (b_rs, b_cs) = if transposed { (n, 1) } else { (1, k) };
    if m <= SKINNY_ROWS {
        if transposed {
            skinny_t(xs, ws, m, n, k, &mut out)?;
        } else {
            skinny(xs, ws, m, n, k, &mut out)?;
        }
    } else {
        // Threads take row ranges and run single-threaded gemms: two independent gemms on 2
        // cores did 1.2-1.7x the work of one gemm split by the gemm crate itself on these shapes
        // (each packs W once; its own split meets at every block).
        let chunks = if SINGLE_THREADED.with(|c| c.get()) {
            1
        } else {
            rayon::current_num_threads().clamp(1, m.div_ceil(MIN_GEMM_ROWS))
        };
        let per = m.div_ceil(chunks);
        let dst = SharedOut(out.as_mut_ptr());
        (0..chunks).into_par_iter().for_each(|c| {
            let r0 = c * per;
            let r1 = (r0 + per).min(m);
            if r0 >= r1 {
                return;
            }
            // SAFETY: xs is [m, k], ws holds n·k elements addressed as Wᵀ through (b_rs, b_cs)
            // above, out has capacity for [m, n]; each task writes only rows r0..r1.
            unsafe {
                gemm_raw(
                    (r1 - r0, n, k),
                    dst.get().add(r0 * n),
                    n,
                    accumulate,
                    xs.as_ptr().add(r0 * k),
                    k,
                    ws.as_ptr(),
                    b_rs,
                    b_cs,
                )
            }
        });
        if overwrite {
            // SAFETY: with `overwrite` the gemms above (alpha 0, no read) wrote all m·n elements:
            // the row ranges cover 0..m.
            unsafe { out.set_len(m * n) };
        }
    }
    Ok(Some(Tensor::from_vec(out, (m, n), x.device())?))
}

/// A copy of `src`, split across threads when it is prompt-sized (a serial copy of a residual
/// stream leaves the other core idle).
fn par_copy(src: &[f32]) -> Vec<f32> {
    if src.len() < 4 * CHUNK {
        return src.to_vec();
    }
    let mut v: Vec<f32> = Vec::with_capacity(src.len());
    v.spare_capacity_mut()[..src.len()]
        .par_chunks_mut(CHUNK)
        .zip(src.par_chunks(CHUNK))
        .for_each(|(d, s)| {
            for (d, &s) in d.iter_mut().zip(s) {
                d.write(s);
            }
        });
    // SAFETY: the chunks above cover all src.len() elements.
    unsafe { v.set_len(src.len()) };
    v
}

thread_local! {
    /// Set while this thread runs work whose products should not split across threads.
    static SINGLE_THREADED: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Runs `f` with [`linear`]'s products on this thread kept single-threaded (for callers that
/// already give every thread its own work).
pub(crate) fn single_threaded_products<R>(f: impl FnOnce() -> R) -> R {
    /// Restores the previous setting even if `f` unwinds.
    struct Restore(bool);
    impl Drop for Restore {
        fn drop(&mut self) {
            SINGLE_THREADED.with(|c| c.set(self.0));
        }
    }
    let _restore = Restore(SINGLE_THREADED.with(|c| c.replace(true)));
    f()
}

/// Row counts up to which [`linear`] streams the weights once (decode) instead of a gemm.
const SKINNY_ROWS: usize = 8;

/// Fewest rows worth a thread of their own in [`linear`]'s gemm.
const MIN_GEMM_ROWS: usize = 64;

/// `out[i, :] += x[i, :] Wᵀ` for a few rows: one pass over `W` split across threads by output
/// rows, so decoding streams the weights at memory speed (a general gemm with m = 1 runs far
/// below it).
fn skinny(x: &[f32], w: &[f32], m: usize, n: usize, k: usize, out: &mut [f32]) -> Result<()> {
    const ROWS: usize = 32;
    if x.len() != m * k || w.len() != n * k || out.len() != m * n {
        return Err(Error::Internal("skinny: operand sizes".into()));
    }
    if m == 1 {
        out.par_chunks_mut(ROWS).enumerate().for_each(|(bi, o)| {
            for (r, o) in o.iter_mut().enumerate() {
                let row = bi * ROWS + r;
                *o += simd::dot(&w[row * k..(row + 1) * k], x);
            }
        });
        return Ok(());
    }
    // Output laid out [n-block][m][rows] while computing, then added into [m, n].
    let mut blocks = vec![0f32; m * n];
    blocks
        .par_chunks_mut(ROWS * m)
        .enumerate()
        .for_each(|(bi, o)| {
            let r0 = bi * ROWS;
            let rows = o.len() / m;
            for r in 0..rows {
                let wr = &w[(r0 + r) * k..(r0 + r + 1) * k];
                for i in 0..m {
                    o[i * rows + r] = simd::dot(wr, &x[i * k..(i + 1) * k]);
                }
            }
        });
    for (bi, o) in blocks.chunks(ROWS * m).enumerate() {
        let rows = o.len() / m;
        for i in 0..m {
            let dst = &mut out[i * n + bi * ROWS..i * n + bi * ROWS + rows];
            for (d, &v) in dst.iter_mut().zip(&o[i * rows..(i + 1) * rows]) {
                *d += v;
            }
        }
    }
    Ok(())
}

/// `out[i, :] += x[i, :] Wᵀ` for a few rows with the weight stored transposed (`wt` `[k, n]`).
fn skinny_t(x: &[f32], wt: &[f32], m: usize, n: usize, k: usize, out: &mut [f32]) -> Result<()> {
    skinny_t_many(x, &[(wt, n)], m, k, &mut [out])
}

/// `outs[w][i, :] += x[i, :] W_wᵀ` for a few rows of `x` `[m, k]` and several weights stored
/// transposed (`wts[w] = (wt, n)`, `wt` `[k, n]`), in one parallel pass: tasks take the same
/// contiguous row range of every `wt` (one sequential stream each) into their own partial sums,
/// which are then added up. One pass over all a layer's projections of the same input pays the
/// fork, join and stream start-up of a parallel pass once instead of once per projection.
fn skinny_t_many(
    x: &[f32],
    wts: &[(&[f32], usize)],
    m: usize,
    k: usize,
    outs: &mut [&mut [f32]],
) -> Result<()> {
    if x.len() != m * k
        || wts.len() != outs.len()
        || wts
            .iter()
            .zip(outs.iter())
            .any(|(&(wt, n), out)| wt.len() != n * k || out.len() != m * n)
    {
        return Err(Error::Internal("skinny_t: operand sizes".into()));
    }
    let total: usize = wts.iter().map(|&(_, n)| n).sum();
    if k == 0 || total == 0 {
        return Ok(());
    }
    // One task per thread: each streams one long contiguous range, with the fewest partial sums
    // to add up (decode on the 256M model, 2 cores, alternating runs: 25.3-26.7 ms/token against
    // 26.3-27.5 with four tasks per thread). Rows per task stay a multiple of 4 (the kernel's
    // unroll).
    let tasks = rayon::current_num_threads().clamp(1, k.div_ceil(16));
    let per = k.div_ceil(tasks).next_multiple_of(4);
    let tasks = k.div_ceil(per);
    // With several rows of x, four rows of wt at a time stay in L1 while every x row uses them.
    let group = if m == 1 { per } else { 4 };
    // Each task's partial sums: for each weight in turn, [m, n].
    let mut part = vec![0f32; tasks * m * total];
    part.par_chunks_mut(m * total)
        .enumerate()
        .for_each(|(t, p)| {
            let (r0, r1) = (t * per, ((t + 1) * per).min(k));
            let mut p = p;
            for &(wt, n) in wts {
                let (pw, rest) = p.split_at_mut(m * n);
                p = rest;
                let mut g = r0;
                while g < r1 {
                    let g1 = (g + group).min(r1);
                    let wb = &wt[g * n..g1 * n];
                    for (i, acc) in pw.chunks_mut(n).enumerate() {
                        simd::axpy_rows(acc, &x[i * k + g..i * k + g1], wb);
                    }
                    g = g1;
                }
            }
        });
    let mut at = 0;
    for (&(_, n), out) in wts.iter().zip(outs.iter_mut()) {
        let add = |(o, j): (&mut [f32], usize)| {
            for p in part.chunks(m * total) {
                for (d, &v) in o.iter_mut().zip(&p[at + j..]) {
                    *d += v;
                }
            }
        };
        if tasks * m * n < (1 << 16) {
            add((out, 0));
        } else {
            out.par_chunks_mut(CHUNK)
                .enumerate()
                .for_each(|(c, o)| add((o, c * CHUNK)));
        }
        at += m * n;
    }
    Ok(())
}

/// `[x Wᵀ for W in ws]` for a few rows of `x` `[m, k]` (decode) and weights stored transposed
/// (see [`store_transposed`]), all in one parallel pass; `None` when that path does not apply
/// (more rows, another layout, device or dtype), for the caller to run [`linear`] per weight.
pub fn linear_many(x: &Tensor, ws: &[&Tensor]) -> Result<Option<Vec<Tensor>>> {
    if !fast_path(x)
        || ws
            .iter()
            .any(|w| weight_layout(w) != Some(WeightLayout::Transposed))
    {
        return Ok(None);
    }
    let (m, k) = x.dims2()?;
    if m > SKINNY_ROWS || ws.iter().any(|w| w.dims()[1] != k) {
        return Ok(None);
    }
    let ns: Vec<usize> = ws.iter().map(|w| w.dims()[0]).collect();
    let mut outs: Vec<Vec<f32>> = ns.iter().map(|&n| vec![0f32; m * n]).collect();
    {
        let (xg, xl) = x.storage_and_layout();
        let xs = f32_slice(&xg, xl)?;
        let guards: Vec<_> = ws.iter().map(|w| w.storage_and_layout()).collect();
        let mut wts = Vec::with_capacity(ws.len());
        for (&n, (g, l)) in ns.iter().zip(&guards) {
            wts.push((transposed_f32(g, l, n * k)?, n));
        }
        let mut views: Vec<&mut [f32]> = outs.iter_mut().map(|o| o.as_mut_slice()).collect();
        skinny_t_many(xs, &wts, m, k, &mut views)?;
    }
    let ys = outs
        .into_iter()
        .zip(&ns)
        .map(|(o, &n)| Tensor::from_vec(o, (m, n), x.device()))
        .collect::<candle_core::Result<Vec<_>>>()?;
    Ok(Some(ys))
}

/// How a weight `[n, k]` usable by [`linear`]'s fast path is laid out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum WeightLayout {
    /// Contiguous `[n, k]`.
    RowMajor,
    /// The transposed view of a contiguous `[k, n]` (see [`store_transposed`]).
    Transposed,
}

/// The layout of `w` when [`linear`]'s fast path can read it as a weight, else `None`.
pub(crate) fn weight_layout(w: &Tensor) -> Option<WeightLayout> {
    if !super::fast_device(w) || w.dtype() != DType::F32 || w.rank() != 2 {
        return None;
    }
    if w.is_contiguous() {
        return Some(WeightLayout::RowMajor);
    }
    let n = w.dims()[0];
    (w.stride() == [1, n]).then_some(WeightLayout::Transposed)
}

/// The same `[out, in]` weight with its storage laid out `[in, out]` (a transposed view) when it
/// is an f32 CPU tensor, which [`linear`]'s products read faster; other tensors are returned as
/// they are. Every tensor op still sees an ordinary `[out, in]` tensor.
pub fn store_transposed(w: Tensor) -> Result<Tensor> {
    if weight_layout(&w) != Some(WeightLayout::RowMajor) {
        return Ok(w);
    }
    let (n, k) = w.dims2()?;
    let t = {
        let (g, l) = w.storage_and_layout();
        let src = f32_slice(&g, l)?;
        transpose_f32(n, k, |i| src[i])
    };
    Ok(Tensor::from_vec(t, (k, n), w.device())?.t()?)
}

/// An empty f32 buffer with capacity for `len` elements, for data read whole at every decode
/// step: on Linux the kernel is asked to back it with huge pages before its pages are first
/// touched, so streaming it takes far fewer TLB misses (a 512 MiB sum on 2 cores, alternating
/// in one process: 22-23 → 25-29 GB/s median).
pub fn streamed_buffer(len: usize) -> Vec<f32> {
    let v: Vec<f32> = Vec::with_capacity(len);
    #[cfg(target_os = "linux")]
    {
        const PAGE: usize = 4096;
        let addr = v.as_ptr() as usize;
        let (start, end) = (
            addr.next_multiple_of(PAGE),
            (addr + len * std::mem::size_of::<f32>()) / PAGE * PAGE,
        );
        // Only a range that can hold an aligned 2 MiB page gains anything.
        if end > start && end - start >= 2 << 20 {
            // SAFETY: [start, end) lies inside this live allocation; the advice changes how the
            // kernel backs its pages, never their contents. A refusal (no THP) changes nothing.
            let _ = unsafe {
                rustix::mm::madvise(
                    start as *mut std::ffi::c_void,
                    end - start,
                    rustix::mm::Advice::LinuxHugepage,
                )
            };
        }
    }
    v
}

/// `[k, n]` row-major from an `[n, k]` row-major source whose element `i` is `src(i)`.
pub(crate) fn transpose_f32(n: usize, k: usize, src: impl Fn(usize) -> f32 + Sync) -> Vec<f32> {
    let mut t = streamed_buffer(n * k);
    if n == 0 || k == 0 {
        return t;
    }
    // Each task fills 16 rows of t, 32 columns at a time: the 32 source lines it reads (one
    // per source row, on as many pages) stay in L1 and the TLB across all 16 rows.
    const B: usize = 16;
    const J: usize = 32;
    t.spare_capacity_mut()[..n * k]
        .par_chunks_mut(B * n)
        .enumerate()
        .for_each(|(s, out)| {
            let p0 = s * B;
            for j0 in (0..n).step_by(J) {
                let j1 = (j0 + J).min(n);
                for (pp, row) in out.chunks_mut(n).enumerate() {
                    for (j, o) in row[j0..j1].iter_mut().enumerate() {
                        o.write(src((j0 + j) * k + p0 + pp));
                    }
                }
            }
        });
    // SAFETY: the tasks above cover rows 0..k of t ([k, n]) and write every column of them.
    unsafe { t.set_len(n * k) };
    t
}

/// Applies rotary embeddings (rotate-half form) to `x` `[b·l, heads·d]` at `positions` (one per
/// row) from `cos`/`sin` tables `[positions, d/2]`; the output is `[b, l, heads, d]`, or
/// `[b, heads, l, d]` (the cache layout) when `heads_first`.
#[allow(clippy::too_many_arguments)]
pub fn rope(
    x: &[f32],
    positions: &[u32],
    cos: &[f32],
    sin: &[f32],
    (b, l, heads, d): (usize, usize, usize, usize),
    heads_first: bool,
) -> Result<Vec<f32>> {
    let half = d / 2;
    if d == 0
        || d % 2 != 0
        || x.len() != b * l * heads * d
        || positions.len() != b * l
        || positions
            .iter()
            .any(|&p| (p as usize + 1) * half > cos.len().min(sin.len()))
    {
        return Err(Error::Internal("rope: operand sizes".into()));
    }
    // Output chunk `c` (one head of one row) is written once, without zero-filling first.
    let n = x.len();
    let mut out: Vec<f32> = Vec::with_capacity(n);
    if n == 0 {
        return Ok(out);
    }
    let rotate = |c: usize, o: &mut [std::mem::MaybeUninit<f32>]| {
        let (r, h) = if heads_first {
            let (bi, h, t) = (c / (heads * l), (c / l) % heads, c % l);
            (bi * l + t, h)
        } else {
            (c / heads, c % heads)
        };
        let p = positions[r] as usize;
        let cs = &cos[p * half..(p + 1) * half];
        let sn = &sin[p * half..(p + 1) * half];
        let src = &x[(r * heads + h) * d..(r * heads + h + 1) * d];
        let (x1, x2) = src.split_at(half);
        let (lo, hi) = o.split_at_mut(half);
        for j in 0..half {
            lo[j].write(x1[j] * cs[j] - x2[j] * sn[j]);
            hi[j].write(x2[j] * cs[j] + x1[j] * sn[j]);
        }
    };
    let spare = &mut out.spare_capacity_mut()[..n];
    // Prompt-sized inputs split across threads; a decode step's few heads stay on this thread.
    if n >= 1 << 15 {
        spare
            .par_chunks_mut(d)
            .with_min_len(64)
            .enumerate()
            .for_each(|(c, o)| rotate(c, o));
    } else {
        spare
            .chunks_mut(d)
            .enumerate()
            .for_each(|(c, o)| rotate(c, o));
    }
    // SAFETY: the n / d chunks above cover 0..n (d is even and divides n) and each writes all d
    // of its elements.
    unsafe { out.set_len(n) };
    Ok(out)
}

/// `[b, l, heads, d]` → `[b, heads, l, d]`.
pub fn heads_first(x: &[f32], (b, l, heads, d): (usize, usize, usize, usize)) -> Vec<f32> {
    let mut out = Vec::with_capacity(x.len());
    for bi in 0..b {
        for h in 0..heads {
            for t in 0..l {
                let src = ((bi * l + t) * heads + h) * d;
                out.extend_from_slice(&x[src..src + d]);
            }
        }
    }
    out
}

/// `silu(g) · u` element-wise on the CPU in f32 (Llama's gated MLP); `None` otherwise.
pub fn silu_mul(g: &Tensor, u: &Tensor) -> Result<Option<Tensor>> {
    if !(fast_path(g) && fast_path(u)) || g.dims() != u.dims() {
        return Ok(None);
    }
    let n = g.elem_count();
    let mut out: Vec<f32> = Vec::with_capacity(n);
    let (gg, gl) = g.storage_and_layout();
    let gs = f32_slice(&gg, gl)?;
    let (ug, ul) = u.storage_and_layout();
    let us = f32_slice(&ug, ul)?;
    if gs.len() != n || us.len() != n {
        return Err(Error::Internal("silu_mul: operand sizes".into()));
    }
    out.spare_capacity_mut()[..n]
        .par_chunks_mut(CHUNK)
        .zip(gs.par_chunks(CHUNK).zip(us.par_chunks(CHUNK)))
        .for_each(|(o, (g, u))| simd::silu_mul(o, g, u));
    // SAFETY: the chunks above cover 0..n and silu_mul writes every element of its chunk (g and
    // u have n elements each).
    unsafe { out.set_len(n) };
    Ok(Some(Tensor::from_vec(out, g.shape(), g.device())?))
}

fn fast_path(x: &Tensor) -> bool {
    super::fast(x)
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
    use crate::kernels::tests::max_diff;
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
    fn streamed_buffer_is_an_empty_buffer_of_that_capacity() {
        for len in [0, 5, 3 << 20] {
            let mut v = streamed_buffer(len);
            assert!(v.is_empty() && v.capacity() >= len);
            v.resize(len, 2.0);
            assert!(v.iter().all(|&x| x == 2.0));
        }
    }

    #[test]
    fn linear_matches_matmul_with_bias_and_residual() {
        let dev = Device::Cpu;
        // k = 201 leaves a remainder after the 4-row unroll; [3000, 64] sums its partials in
        // parallel.
        for (n, k) in [(131usize, 201usize), (3000, 64)] {
            let w = Tensor::randn(0f32, 1.0, (n, k), &dev).unwrap();
            let wt = store_transposed(w.clone()).unwrap();
            assert_eq!(weight_layout(&w), Some(WeightLayout::RowMajor));
            assert_eq!(weight_layout(&wt), Some(WeightLayout::Transposed));
            assert_eq!(wt.dims(), &[n, k]);
            assert_eq!(max_diff(&wt, &w), 0.0);
            let bias = Tensor::randn(0f32, 1.0, n, &dev).unwrap();
            // Skinny (decode) and gemm (prefill) paths, with and without bias and residual,
            // for both weight layouts.
            for m in [1usize, 3, 8, 9, 70] {
                let x = Tensor::randn(0f32, 1.0, (m, k), &dev).unwrap();
                let res = Tensor::randn(0f32, 1.0, (m, n), &dev).unwrap();
                let base = x.matmul(&w.t().unwrap()).unwrap();
                let want = (base.broadcast_add(&bias).unwrap() + &res).unwrap();
                for (name, w) in [("row-major", &w), ("transposed", &wt)] {
                    let got = linear(&x, w, None, None).unwrap().unwrap();
                    assert!(max_diff(&got, &base) < 1e-4, "{name} m {m} n {n}");
                    let got = linear(&x, w, Some(&bias), Some(&res)).unwrap().unwrap();
                    assert!(max_diff(&got, &want) < 1e-4, "{name} m {m} n {n} bias+res");
                }
            }
        }
    }

    #[test]
    fn linear_many_matches_one_product_per_weight() {
        let dev = Device::Cpu;
        // Three weights of one input width (k = 201: a remainder after the 4-row unroll), one
        // wide enough that its partial sums are added in parallel.
        let k = 201;
        let ws: Vec<Tensor> = [131usize, 40, 3000]
            .iter()
            .map(|&n| store_transposed(Tensor::randn(0f32, 1.0, (n, k), &dev).unwrap()).unwrap())
            .collect();
        let refs: Vec<&Tensor> = ws.iter().collect();
        for m in [1usize, 3, 8] {
            let x = Tensor::randn(0f32, 1.0, (m, k), &dev).unwrap();
            let got = linear_many(&x, &refs).unwrap().unwrap();
            assert_eq!(got.len(), ws.len());
            for (g, w) in got.iter().zip(&ws) {
                let want = x.matmul(&w.t().unwrap()).unwrap();
                assert!(max_diff(g, &want) < 1e-4, "m {m} n {}", w.dims()[0]);
            }
        }
        // More rows (prefill), or a weight not stored transposed: not this path.
        let x = Tensor::randn(0f32, 1.0, (9, k), &dev).unwrap();
        assert!(linear_many(&x, &refs).unwrap().is_none());
        let plain = Tensor::randn(0f32, 1.0, (7, k), &dev).unwrap();
        let x = Tensor::randn(0f32, 1.0, (1, k), &dev).unwrap();
        assert!(linear_many(&x, &[&ws[0], &plain]).unwrap().is_none());
    }

    #[test]
    fn silu_mul_matches_candle() {
        let dev = Device::Cpu;
        let g = Tensor::randn(0f32, 3.0, (5, 333), &dev).unwrap();
        let u = Tensor::randn(0f32, 1.0, (5, 333), &dev).unwrap();
        let got = silu_mul(&g, &u).unwrap().unwrap();
        let want = (candle_nn::ops::silu(&g).unwrap() * &u).unwrap();
        assert!(max_diff(&got, &want) < 1e-6);
    }

    #[test]
    fn rope_matches_candle() {
        let dev = Device::Cpu;
        // The second shape is large enough for the multi-threaded path.
        for (b, l, h, d) in [(2usize, 5usize, 3usize, 8usize), (2, 300, 4, 64)] {
            let x = Tensor::randn(0f32, 1.0, (b, l, h, d), &dev).unwrap();
            let cos = Tensor::randn(0f32, 1.0, (400, d / 2), &dev).unwrap();
            let sin = Tensor::randn(0f32, 1.0, (400, d / 2), &dev).unwrap();
            let pos: Vec<u32> = (0..b * l).map(|i| ((i * 7 + 3) % 400) as u32).collect();
            let idx = Tensor::new(pos.as_slice(), &dev).unwrap();
            let c = cos
                .index_select(&idx, 0)
                .unwrap()
                .reshape((b, l, d / 2))
                .unwrap();
            let s = sin
                .index_select(&idx, 0)
                .unwrap()
                .reshape((b, l, d / 2))
                .unwrap();
            let xt = x.transpose(1, 2).unwrap().contiguous().unwrap();
            let want = candle_nn::rotary_emb::rope(&xt, &c, &s).unwrap(); // [b, h, l, d]
            let xs: Vec<f32> = x.flatten_all().unwrap().to_vec1().unwrap();
            let cs: Vec<f32> = cos.flatten_all().unwrap().to_vec1().unwrap();
            let ss: Vec<f32> = sin.flatten_all().unwrap().to_vec1().unwrap();
            let got = rope(&xs, &pos, &cs, &ss, (b, l, h, d), true).unwrap();
            let got = Tensor::from_vec(got, (b, h, l, d), &dev).unwrap();
            assert!(max_diff(&got, &want) < 1e-6);
            let got = rope(&xs, &pos, &cs, &ss, (b, l, h, d), false).unwrap();
            let got = Tensor::from_vec(got, (b, l, h, d), &dev).unwrap();
            let want = want.transpose(1, 2).unwrap();
            assert!(max_diff(&got, &want) < 1e-6);
            let t = heads_first(&xs, (b, l, h, d));
            let t = Tensor::from_vec(t, (b, h, l, d), &dev).unwrap();
            assert!(max_diff(&t, &xt) == 0.0);
            let far = vec![999; b * l];
            assert!(rope(&xs, &far, &cs, &ss, (b, l, h, d), true).is_err());
        }
    }
}
