//! Products with quantised weights (NF4, GGML formats) on the CPU: each task dequantises a tile
//! of weight rows into a buffer of its own, multiplies it and drops it, so the f32 weight never
//! exists whole and only the quantised bytes stream from memory.

use rayon::prelude::*;

use super::gemm::{gemm_raw, SharedOut};
use super::{quant_dot, simd};
use crate::error::{Error, Result};
use crate::quant::QuantTensor;

/// Weight rows dequantised per tile for a gemm: a few hundred KB of f32 for the widest rows, so
/// a tile stays in L2 while the gemm reads it.
const TILE_ROWS: usize = 64;

/// Input rows up to which a product is dot products against small tiles (decode, also of a
/// batch of captions or beams) instead of a gemm per tile: each small tile is decoded once per
/// group of [`quant_dot::MAX_ROWS`] rows while it is in L1.
const DOT_ROWS: usize = 16;

/// Floats per tile on the dot-product path: 16 KB, so a tile stays in L1 between being written
/// and being read.
const DOT_TILE_FLOATS: usize = 4096;

/// `out[m, n] (+)= x[m, k] · Wᵀ` for a quantised weight `W` `[n, k]`; `accumulate` adds to what
/// `out` holds (a bias or residual written there first).
pub fn linear(
    x: &[f32],
    m: usize,
    w: &QuantTensor,
    out: &mut [f32],
    accumulate: bool,
) -> Result<()> {
    let (n, k) = w.shape();
    if x.len() != m * k || out.len() != m * n {
        return Err(Error::Internal(format!(
            "{} linear: x {} for [{m}, {k}], out {} for [{m}, {n}]",
            w.format_name(),
            x.len(),
            out.len()
        )));
    }
    if m == 0 || n == 0 {
        return Ok(());
    }
    if m <= DOT_ROWS {
        return linear_dots(x, w, out, accumulate);
    }
    let dst = SharedOut(out.as_mut_ptr());
    (0..n.div_ceil(TILE_ROWS))
        .into_par_iter()
        .try_for_each(|t| -> Result<()> {
            let (r0, r1) = (t * TILE_ROWS, ((t + 1) * TILE_ROWS).min(n));
            let mut tile = vec![0f32; (r1 - r0) * k];
            w.dequantize_rows_into(r0, r1, &mut tile)?;
            // SAFETY: x is [m, k]; tile is [r1-r0, k] read as its transpose through (1, k);
            // out is [m, n] and this task writes only its columns r0..r1 of every row.
            unsafe {
                gemm_raw(
                    (m, r1 - r0, k),
                    dst.get().add(r0),
                    n,
                    accumulate,
                    x.as_ptr(),
                    k,
                    tile.as_ptr(),
                    1,
                    k,
                )
            };
            Ok(())
        })
}

/// [`linear`] for a few input rows: threads take contiguous ranges of weight rows and
/// dequantise them a small tile at a time, each tile row dotted with every input row while it is
/// in L1 (memory traffic is the quantised bytes once).
fn linear_dots(x: &[f32], w: &QuantTensor, out: &mut [f32], accumulate: bool) -> Result<()> {
    let (n, k) = w.shape();
    let tile = (DOT_TILE_FLOATS / k.max(1)).clamp(1, n);
    let tiles = n.div_ceil(tile);
    let parts = rayon::current_num_threads().clamp(1, tiles);
    let per = tiles.div_ceil(parts);
    let m = x.len() / k.max(1);
    // GGML blocks are decoded in registers; other storages dequantise a tile first.
    let fused = match w {
        QuantTensor::Ggml(g) if quant_dot::supports(g.kind(), k) => Some(g),
        _ => None,
    };
    let dst = SharedOut(out.as_mut_ptr());
    (0..parts).into_par_iter().try_for_each(|p| -> Result<()> {
        let mut buf = vec![0f32; if fused.is_some() { 0 } else { tile * k }];
        let mut dots = vec![0f32; m * tile];
        for t in p * per..((p + 1) * per).min(tiles) {
            let (r0, r1) = (t * tile, ((t + 1) * tile).min(n));
            let rows = r1 - r0;
            match fused {
                Some(g) => {
                    let bytes = g.row_bytes(r0, r1)?;
                    let group = quant_dot::MAX_ROWS;
                    for (xs, ds) in x
                        .chunks(group * k)
                        .zip(dots[..m * rows].chunks_mut(group * rows))
                    {
                        quant_dot::dots(g.kind(), ds, xs, xs.len() / k, k, bytes)?;
                    }
                }
                None => {
                    let b = &mut buf[..rows * k];
                    w.dequantize_rows_into(r0, r1, b)?;
                    for (xi, d) in x.chunks_exact(k).zip(dots.chunks_exact_mut(rows)) {
                        simd::dot_rows(d, xi, b);
                    }
                }
            }
            for (i, d) in dots[..m * rows].chunks_exact(rows).enumerate() {
                // SAFETY: out is [m, n]; this task alone writes columns r0..r1 of each row.
                let o = unsafe { std::slice::from_raw_parts_mut(dst.get().add(i * n + r0), rows) };
                if accumulate {
                    o.iter_mut().zip(d.iter()).for_each(|(o, v)| *o += v);
                } else {
                    o.copy_from_slice(d);
                }
            }
        }
        Ok(())
    })
}

/// `dy[m, n] · W` for a quantised weight `W` `[n, k]` (the input gradient of [`linear`]):
/// threads take contiguous ranges of weight rows, accumulate their tiles' products into partial
/// sums of their own, and the partial sums are added up.
pub fn linear_dx(dy: &[f32], m: usize, w: &QuantTensor) -> Result<Vec<f32>> {
    let (n, k) = w.shape();
    if dy.len() != m * n {
        return Err(Error::Internal(format!(
            "{} input gradient: dy {} for [{m}, {n}]",
            w.format_name(),
            dy.len()
        )));
    }
    let tiles = n.div_ceil(TILE_ROWS);
    let parts = rayon::current_num_threads().clamp(1, tiles.max(1));
    let per = tiles.div_ceil(parts).max(1);
    let partial = (0..parts)
        .into_par_iter()
        .map(|p| -> Result<Vec<f32>> {
            let mut acc = vec![0f32; m * k];
            let mut tile = Vec::new();
            for t in p * per..((p + 1) * per).min(tiles) {
                let (r0, r1) = (t * TILE_ROWS, ((t + 1) * TILE_ROWS).min(n));
                tile.resize((r1 - r0) * k, 0.0);
                w.dequantize_rows_into(r0, r1, &mut tile)?;
                // SAFETY: dy is [m, n], read at columns r0..r1 with row stride n; tile is
                // [r1-r0, k] row-major; acc is [m, k] owned by this task.
                unsafe {
                    gemm_raw(
                        (m, k, r1 - r0),
                        acc.as_mut_ptr(),
                        k,
                        true,
                        dy.as_ptr().add(r0),
                        n,
                        tile.as_ptr(),
                        k,
                        1,
                    )
                };
            }
            Ok(acc)
        })
        .collect::<Result<Vec<_>>>()?;
    let mut it = partial.into_iter();
    let mut dx = it.next().unwrap_or_else(|| vec![0f32; m * k]);
    for p in it {
        dx.par_chunks_mut(16 * 1024)
            .zip(p.par_chunks(16 * 1024))
            .for_each(|(d, s)| {
                for (d, &s) in d.iter_mut().zip(s) {
                    *d += s;
                }
            });
    }
    Ok(dx)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::quant::{Nf4Config, QuantChoice};
    use rand::{Rng, SeedableRng};

    fn plain(a: &[f32], b: &[f32], m: usize, k: usize, n: usize, bt: bool) -> Vec<f64> {
        // a [m, k]; b [n, k] when bt (a·bᵀ) else [k, n].
        let mut out = vec![0f64; m * n];
        for i in 0..m {
            for j in 0..n {
                out[i * n + j] = (0..k)
                    .map(|p| {
                        let bv = if bt { b[j * k + p] } else { b[p * n + j] };
                        f64::from(a[i * k + p]) * f64::from(bv)
                    })
                    .sum();
            }
        }
        out
    }

    #[test]
    fn tiled_products_equal_the_dequantised_weights_products() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let nf4 = QuantChoice::Nf4(Nf4Config {
            blocksize: 64,
            double_quant: true,
        });
        // Row counts around the tile sizes, odd widths (NF4 blocks straddle rows), one, a few
        // (dot products) and many rows (gemm), in every storage.
        let mut cases = vec![
            (nf4, 1, 7, 64),
            (nf4, 3, 64, 96),
            (nf4, 5, 130, 40),
            (nf4, 70, 65, 200),
        ];
        for kind in crate::quant::ggml::ALL_KINDS {
            cases.push((QuantChoice::Ggml(kind), 1, 9, 256));
            cases.push((QuantChoice::Ggml(kind), 4, 70, 512));
            cases.push((QuantChoice::Ggml(kind), 9, 67, 256));
            cases.push((QuantChoice::Ggml(kind), 17, 40, 256));
        }
        for (choice, m, n, k) in cases {
            let w: Vec<f32> = (0..n * k).map(|_| rng.random_range(-1.0..1.0)).collect();
            let q = QuantTensor::quantize(&w, n, k, choice).unwrap();
            let mut wd = vec![0f32; n * k];
            q.dequantize_rows_into(0, n, &mut wd).unwrap();
            let x: Vec<f32> = (0..m * k).map(|_| rng.random_range(-1.0..1.0)).collect();
            for accumulate in [true, false] {
                let mut y = vec![0.5f32; m * n];
                linear(&x, m, &q, &mut y, accumulate).unwrap();
                let want = plain(&x, &wd, m, k, n, true);
                let base = if accumulate { 0.5 } else { 0.0 };
                for (a, b) in y.iter().zip(&want) {
                    let what = q.format_name();
                    assert!(
                        (f64::from(*a) - base - b).abs() < 1e-4,
                        "{what} {m}x{n}x{k}: {a} vs {b}"
                    );
                }
            }
            let dy: Vec<f32> = (0..m * n).map(|_| rng.random_range(-1.0..1.0)).collect();
            let dx = linear_dx(&dy, m, &q).unwrap();
            let want = plain(&dy, &wd, m, n, k, false);
            for (a, b) in dx.iter().zip(&want) {
                assert!((f64::from(*a) - b).abs() < 1e-4, "{a} vs {b}");
            }
        }
    }
}
