//! Element-wise f32 kernels written so the compiler vectorises them, built three times (AVX-512,
//! AVX2 + FMA, portable) and picked at run time: the library ships for the x86-64 baseline, whose
//! SSE2 has no vector `floor` or FMA, so without this the loops fall back to libm calls.

use std::mem::MaybeUninit;

/// `1.5 · 2^23`: adding it rounds an f32 of magnitude below 2^22 to an integer held in the low
/// mantissa bits (no `floor`/`round` call, which baseline x86-64 cannot vectorise).
const ROUND32: f32 = 12_582_912.0;
/// `1.5 · 2^52`, the same trick for f64.
const ROUND64: f64 = 6_755_399_441_055_744.0;

/// `e^x` evaluated in f32 (Cody-Waite reduction, Cephes' degree-7 polynomial, fused multiply-adds
/// where the variant has them): within 8e-8 relative (under one ulp) at about a fifth of the
/// cost of [`exp_accurate`]. Softmax uses it: its error is far below the logits' f32 noise, and
/// softmax is a third of an attention layer's time. Inputs below -87.3 give 0 (no subnormal
/// results), above 88.37 infinity (keeps 2^n a normal number); NaN stays NaN.
#[inline(always)]
fn exp_f32<const FMA: bool>(x: f32) -> f32 {
    let fma = |a: f32, b: f32, c: f32| if FMA { a.mul_add(b, c) } else { a * b + c };
    let under = x < -87.3;
    let xc = x.clamp(-87.3, 88.37);
    let t = fma(xc, std::f32::consts::LOG2_E, ROUND32);
    let n = t - ROUND32;
    let r = fma(-n, -2.121_944_4e-4, fma(-n, 0.693_359_4, xc));
    let p = fma(
        fma(
            fma(
                fma(fma(1.987_569_1e-4, r, 1.398_199_9e-3), r, 8.333_452e-3),
                r,
                4.166_579_6e-2,
            ),
            r,
            0.166_666_65,
        ),
        r,
        0.5,
    );
    let y = fma(p, r * r, r) + 1.0;
    let k = t.to_bits().wrapping_sub(ROUND32.to_bits());
    let scale = f32::from_bits(k.wrapping_add(127) << 23);
    let out = y * scale;
    if under {
        0.0
    } else if x > 88.37 {
        f32::INFINITY
    } else if x.is_nan() {
        x
    } else {
        out
    }
}

/// `a·b + c`, fused when the build variant has FMA (exact products keep exp accurate).
#[inline(always)]
fn madd<const FMA: bool>(a: f64, b: f64, c: f64) -> f64 {
    if FMA {
        a.mul_add(b, c)
    } else {
        a * b + c
    }
}

/// `e^x` rounded to f32 from an f64 evaluation: within 1e-15 relative before the final
/// rounding, so it agrees with libm's `expf` (correctly rounded in all but rare ties) while the
/// loop around it vectorises. Inputs below -150 give 0, above 88.8 infinity, NaN stays NaN.
#[inline(always)]
fn exp_accurate<const FMA: bool>(x: f32) -> f32 {
    const LOG2E: f64 = std::f64::consts::LOG2_E;
    // fdlibm's split of ln 2: the high part has trailing zero bits, so n·LN2_HI is exact.
    const LN2_HI: f64 = f64::from_bits(0x3fe6_2e42_fee0_0000);
    const LN2_LO: f64 = f64::from_bits(0x3dea_39ef_3579_3c76);
    let x = (x as f64).clamp(-150.0, 88.8);
    let t = madd::<FMA>(x, LOG2E, ROUND64);
    let n = t - ROUND64;
    let r = madd::<FMA>(-n, LN2_LO, madd::<FMA>(-n, LN2_HI, x));
    // Taylor series to degree 11 on |r| ≤ ln2/2: truncation error below 2e-16.
    let mut p = 1.0 / 39_916_800.0;
    for c in [
        1.0 / 3_628_800.0,
        1.0 / 362_880.0,
        1.0 / 40_320.0,
        1.0 / 5_040.0,
        1.0 / 720.0,
        1.0 / 120.0,
        1.0 / 24.0,
        1.0 / 6.0,
        0.5,
        1.0,
        1.0,
    ] {
        p = madd::<FMA>(p, r, c);
    }
    // 2^n from the integer in t's low bits; n lies in [-217, 129], inside f64's normal range.
    let bits = t.to_bits().wrapping_sub(ROUND64.to_bits());
    let scale = f64::from_bits(bits.wrapping_add(1023) << 52);
    (p * scale) as f32
}

/// Cephes-style `e^x` in f32 with plain multiply-adds (within 3e-7 relative), for GELU.
#[inline(always)]
fn exp_fast(x: f32) -> f32 {
    let under = x < -87.3;
    let x = x.clamp(-87.3, 88.7);
    let t = x * std::f32::consts::LOG2_E + ROUND32;
    let n = t - ROUND32;
    let r = x - n * 0.693_359_4 - n * -2.121_944_4e-4;
    let p = ((((1.987_569_1e-4 * r + 1.398_199_9e-3) * r + 8.333_452e-3) * r + 4.166_579_6e-2) * r
        + 0.166_666_65)
        * r
        + 0.5;
    let y = p * r * r + r + 1.0;
    let k = t.to_bits().wrapping_sub(ROUND32.to_bits());
    let scale = f32::from_bits(k.wrapping_add(127) << 23);
    if under {
        0.0
    } else {
        y * scale
    }
}

#[inline(always)]
fn gelu_tanh_body(out: &mut [f32], x: &[f32]) {
    const C: f32 = 0.797_884_6; // sqrt(2/pi)
    for (o, &v) in out.iter_mut().zip(x) {
        // 0.5·x·(1 + tanh(y)) == x / (1 + e^(-2y)), y = √(2/π)(x + 0.044715x³)
        let y = C * (v + 0.044_715 * v * v * v);
        *o = v / (1.0 + exp_fast(-2.0 * y));
    }
}

#[inline(always)]
fn silu_mul_body<const FMA: bool>(out: &mut [MaybeUninit<f32>], g: &[f32], u: &[f32]) {
    for ((o, &v), &w) in out.iter_mut().zip(g).zip(u) {
        o.write(v / (1.0 + exp_accurate::<FMA>(-v)) * w);
    }
}

/// Maximum with 16 independent lanes (a plain fold does not vectorise).
#[inline(always)]
fn max_body(row: &[f32]) -> f32 {
    let mut acc = [f32::NEG_INFINITY; 16];
    let chunks = row.chunks_exact(16);
    let rest = chunks.remainder();
    for c in chunks {
        for j in 0..16 {
            acc[j] = if c[j] > acc[j] { c[j] } else { acc[j] };
        }
    }
    let mut m = f32::NEG_INFINITY;
    for &v in acc.iter().chain(rest) {
        m = if v > m { v } else { m };
    }
    m
}

#[inline(always)]
fn softmax_body<const FMA: bool>(row: &mut [f32], scale: f32) {
    let inv = 1.0 / exp_sum_body::<FMA>(row, scale);
    for v in row.iter_mut() {
        *v *= inv;
    }
}

/// `row ← e^(scale·row − max)`, returning the sum (≥ 1 for a row with a finite maximum).
#[inline(always)]
fn exp_sum_body<const FMA: bool>(row: &mut [f32], scale: f32) -> f32 {
    let m = max_body(row) * scale;
    let mut acc = [0f32; 16];
    let mut chunks = row.chunks_exact_mut(16);
    for c in &mut chunks {
        for j in 0..16 {
            let e = exp_f32::<FMA>(c[j] * scale - m);
            c[j] = e;
            acc[j] += e;
        }
    }
    let mut sum: f32 = acc.iter().sum();
    for v in chunks.into_remainder() {
        *v = exp_f32::<FMA>(*v * scale - m);
        sum += *v;
    }
    sum
}

/// Dot product with 16 independent accumulators.
#[inline(always)]
fn dot_body(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; 16];
    let (ca, cb) = (a.chunks_exact(16), b.chunks_exact(16));
    let (ra, rb) = (ca.remainder(), cb.remainder());
    for (pa, pb) in ca.zip(cb) {
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

/// `out[j] = Σ_p q[p] · w[j·q.len() + p]` for every row `j` of `w`.
#[inline(always)]
fn dot_rows_body<const FMA: bool>(out: &mut [f32], q: &[f32], w: &[f32]) {
    let d = q.len();
    if d == 0 || !d.is_multiple_of(8) {
        for (o, wr) in out.iter_mut().zip(w.chunks_exact(d.max(1))) {
            *o = dot_body(q, wr);
        }
        return;
    }
    let fma = |a: f32, b: f32, c: f32| if FMA { a.mul_add(b, c) } else { a * b + c };
    // Eight rows at a time, each with its own 8-lane accumulator: the loads of q are shared and
    // the lanes are summed once per row, not per element (head widths are short, 64 in SmolVLM).
    const R: usize = 8;
    let mut blocks = out.chunks_exact_mut(R).zip(w.chunks_exact(R * d));
    for (o, wb) in &mut blocks {
        let mut acc = [[0f32; 8]; R];
        for (c, qc) in q.chunks_exact(8).enumerate() {
            for (a, wr) in acc.iter_mut().zip(wb.chunks_exact(d)) {
                for ((a, &x), &y) in a.iter_mut().zip(qc).zip(&wr[c * 8..c * 8 + 8]) {
                    *a = fma(x, y, *a);
                }
            }
        }
        for (o, a) in o.iter_mut().zip(&acc) {
            *o = ((a[0] + a[4]) + (a[1] + a[5])) + ((a[2] + a[6]) + (a[3] + a[7]));
        }
    }
    let done = out.len() / R * R;
    for (o, wr) in out[done..].iter_mut().zip(w[done * d..].chunks_exact(d)) {
        *o = dot_body(q, wr);
    }
}

/// `acc[c] += Σ_r x[r] · w[r·n + c]` with `n = acc.len()`: the rows as four contiguous
/// quarters read side by side, one row of each per pass over `acc`.
///
/// Four long sequential streams, not four adjacent rows: with rows of 576 floats the prefetchers
/// start over at every row (one core, 512 MiB of `[576, 576]` weights: 11.7 → 15.0 GB/s).
#[inline(always)]
fn axpy_rows_body<const FMA: bool>(acc: &mut [f32], x: &[f32], w: &[f32]) {
    let n = acc.len();
    if n == 0 {
        return;
    }
    let fma = |a: f32, b: f32, c: f32| if FMA { a.mul_add(b, c) } else { a * b + c };
    let q = x.len() / 4;
    let quarter = |j: usize| w.chunks_exact(n).skip(j * q).take(q);
    let rows = quarter(0).zip(quarter(1)).zip(quarter(2)).zip(quarter(3));
    for (i, (((w0, w1), w2), w3)) in rows.enumerate() {
        let (x0, x1, x2, x3) = (x[i], x[q + i], x[2 * q + i], x[3 * q + i]);
        for ((((a, &v0), &v1), &v2), &v3) in acc.iter_mut().zip(w0).zip(w1).zip(w2).zip(w3) {
            *a = fma(x3, v3, fma(x2, v2, fma(x1, v1, fma(x0, v0, *a))));
        }
    }
    for (wr, &xr) in w.chunks_exact(n).skip(4 * q).zip(&x[4 * q..]) {
        for (a, &v) in acc.iter_mut().zip(wr) {
            *a = fma(xr, v, *a);
        }
    }
}

/// `row ← e^(scale·row − shift)` (a softmax row recomputed from its log-sum-exp).
#[inline(always)]
fn exp_shift_body<const FMA: bool>(row: &mut [f32], scale: f32, shift: f32) {
    for v in row.iter_mut() {
        *v = exp_f32::<FMA>(*v * scale - shift);
    }
}

/// `dp ← scale · p ⊙ (dp − d)`: the gradient of a softmax row's inputs from that of its outputs.
#[inline(always)]
fn softmax_grad_body(dp: &mut [f32], p: &[f32], d: f32, scale: f32) {
    for (g, &pv) in dp.iter_mut().zip(p) {
        *g = scale * pv * (*g - d);
    }
}

/// Defines `pub fn $name` that runs `$body` compiled for the best instruction set present.
macro_rules! dispatch {
    ($(#[$doc:meta])* fn $name:ident($($arg:ident: $ty:ty),*) -> $ret:ty = $body:ident $(::<$fma:ident>)?) => {
        $(#[$doc])*
        pub fn $name($($arg: $ty),*) -> $ret {
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx512f,avx2,fma")]
                fn v4($($arg: $ty),*) -> $ret {
                    $body $(::<{ dispatch!(@t $fma) }>)? ($($arg),*)
                }
                #[target_feature(enable = "avx2,fma")]
                fn v3($($arg: $ty),*) -> $ret {
                    $body $(::<{ dispatch!(@t $fma) }>)? ($($arg),*)
                }
                if std::arch::is_x86_feature_detected!("avx512f") {
                    // SAFETY: the CPU supports every feature v4 was compiled for.
                    return unsafe { v4($($arg),*) };
                }
                if std::arch::is_x86_feature_detected!("avx2")
                    && std::arch::is_x86_feature_detected!("fma")
                {
                    // SAFETY: as above, for v3.
                    return unsafe { v3($($arg),*) };
                }
            }
            $body $(::<{ dispatch!(@f $fma) }>)? ($($arg),*)
        }
    };
    (@t $x:ident) => { true };
    (@f $x:ident) => { false };
}

dispatch! {
    /// `out = gelu_tanh(x)` element-wise.
    fn gelu_tanh(out: &mut [f32], x: &[f32]) -> () = gelu_tanh_body
}

dispatch! {
    /// `out = silu(g) · u` element-wise (Llama's gated MLP).
    fn silu_mul(out: &mut [MaybeUninit<f32>], g: &[f32], u: &[f32]) -> () = silu_mul_body::<FMA>
}

dispatch! {
    /// `row ← softmax(scale · row)` (exp within 1 ulp).
    fn softmax(row: &mut [f32], scale: f32) -> () = softmax_body::<FMA>
}

dispatch! {
    /// `row ← e^(scale·row − scale·max(row))`, returning the sum: softmax without the division,
    /// for callers that divide a smaller product instead.
    fn exp_sum(row: &mut [f32], scale: f32) -> f32 = exp_sum_body::<FMA>
}

dispatch! {
    /// `Σ a_i b_i`.
    fn dot(a: &[f32], b: &[f32]) -> f32 = dot_body
}

dispatch! {
    /// `out[j] = q · w[j·q.len()..(j+1)·q.len()]` (one dot product per row of a row-major matrix).
    fn dot_rows(out: &mut [f32], q: &[f32], w: &[f32]) -> () = dot_rows_body::<FMA>
}

dispatch! {
    /// The largest element (`-∞` for an empty slice).
    fn max(row: &[f32]) -> f32 = max_body
}

dispatch! {
    /// `acc[c] += Σ_r x[r] · w[r·acc.len() + c]` (rows of a row-major matrix scaled and summed).
    fn axpy_rows(acc: &mut [f32], x: &[f32], w: &[f32]) -> () = axpy_rows_body::<FMA>
}

dispatch! {
    /// `row ← e^(scale·row − shift)` element-wise.
    fn exp_shift(row: &mut [f32], scale: f32, shift: f32) -> () = exp_shift_body::<FMA>
}

dispatch! {
    /// `dp ← scale · p ⊙ (dp − d)` element-wise (softmax backward for one row, `d = Σ dp·p`).
    fn softmax_grad(dp: &mut [f32], p: &[f32], d: f32, scale: f32) -> () = softmax_grad_body
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn axpy_rows_matches_the_plain_sum_for_every_row_count() {
        for rows in 0..14usize {
            for n in [0usize, 1, 17, 64] {
                let x: Vec<f32> = (0..rows).map(|r| 0.5 - r as f32 * 0.37).collect();
                let w: Vec<f32> = (0..rows * n)
                    .map(|i| ((i * 7919) % 23) as f32 - 11.0)
                    .collect();
                let mut acc: Vec<f32> = (0..n).map(|c| c as f32 * 0.25).collect();
                let want: Vec<f64> = (0..n)
                    .map(|c| {
                        acc[c] as f64
                            + (0..rows)
                                .map(|r| x[r] as f64 * w[r * n + c] as f64)
                                .sum::<f64>()
                    })
                    .collect();
                axpy_rows(&mut acc, &x, &w);
                for (c, (&a, &b)) in acc.iter().zip(&want).enumerate() {
                    assert!(
                        (a as f64 - b).abs() < 1e-4,
                        "rows {rows} n {n} col {c}: {a} vs {b}"
                    );
                }
            }
        }
    }

    #[test]
    fn accurate_exp_agrees_with_libm() {
        let mut worst = 0f64;
        let mut x = -104.0f32;
        while x < 88.7 {
            for (a, fma) in [
                (exp_accurate::<true>(x), true),
                (exp_accurate::<false>(x), false),
            ] {
                let b = x.exp();
                if b < f32::MIN_POSITIVE {
                    // Subnormal results: within one step of the subnormal grid.
                    assert!((a - b).abs() <= 1.5e-45, "x {x} fma {fma}: {a} vs {b}");
                    continue;
                }
                let e = ((a as f64 - b as f64) / b as f64).abs();
                assert!(e < 1.2e-7, "x {x} fma {fma}: {a} vs {b}");
                worst = worst.max(e);
            }
            x += 0.000_731;
        }
        assert!(worst < 1.2e-7);
        assert_eq!(exp_accurate::<true>(f32::MIN), 0.0);
        assert_eq!(exp_accurate::<true>(0.0), 1.0);
        assert!(exp_accurate::<true>(f32::NAN).is_nan());
        assert!(exp_accurate::<true>(100.0).is_infinite());
    }

    #[test]
    fn f32_exp_within_ulps() {
        for fma in [true, false] {
            let mut worst = 0f64;
            let mut x = -87.0f32;
            while x < 88.3 {
                let a = if fma {
                    exp_f32::<true>(x)
                } else {
                    exp_f32::<false>(x)
                };
                let b = (x as f64).exp();
                let e = ((a as f64 - b) / b).abs();
                worst = worst.max(e);
                x += 0.000_613;
            }
            eprintln!("exp_f32 fma {fma}: worst relative error {worst:.3e}");
            assert!(worst < 1e-7, "fma {fma}: {worst}");
        }
        assert_eq!(exp_f32::<true>(-100.0), 0.0);
        assert!(exp_f32::<true>(f32::NAN).is_nan());
        assert!(exp_f32::<true>(100.0).is_infinite());
        assert_eq!(exp_f32::<true>(0.0), 1.0);
    }

    #[test]
    fn fast_exp_is_close() {
        let mut x = -87.0f32;
        while x < 88.0 {
            let (a, b) = (exp_fast(x), x.exp());
            assert!(((a - b) / b).abs() < 3e-7, "{x}");
            x += 0.0137;
        }
        assert_eq!(exp_fast(f32::MIN), 0.0);
    }

    #[test]
    fn dispatched_kernels_match_scalar_math() {
        let x: Vec<f32> = (0..1000)
            .map(|i| ((i * 37 % 201) as f32 - 100.0) / 13.0)
            .collect();
        let mut g = vec![0f32; x.len()];
        gelu_tanh(&mut g, &x);
        let mut s = vec![MaybeUninit::new(0f32); x.len()];
        let ones = vec![1f32; x.len()];
        silu_mul(&mut s, &x, &ones);
        // SAFETY: silu_mul wrote every element (and all were initialised before).
        let s: Vec<f32> = s.iter().map(|v| unsafe { v.assume_init() }).collect();
        for ((&v, &gv), &sv) in x.iter().zip(&g).zip(&s) {
            let want = 0.5
                * v as f64
                * (1.0
                    + ((2.0 / std::f64::consts::PI).sqrt()
                        * (v as f64 + 0.044715 * (v as f64).powi(3)))
                    .tanh());
            assert!(
                (gv as f64 - want).abs() < 2e-6 * want.abs().max(1.0),
                "gelu {v}"
            );
            let want = v as f64 / (1.0 + (-v as f64).exp());
            assert!(
                (sv as f64 - want).abs() < 1e-6 * want.abs().max(1.0),
                "silu {v}"
            );
        }
        let mut row = x[..999].to_vec();
        softmax(&mut row, 0.7);
        let m = x[..999]
            .iter()
            .fold(f64::MIN, |m, &v| m.max(v as f64 * 0.7));
        let z: f64 = x[..999].iter().map(|&v| (v as f64 * 0.7 - m).exp()).sum();
        for (&p, &v) in row.iter().zip(&x) {
            let want = (v as f64 * 0.7 - m).exp() / z;
            assert!((p as f64 - want).abs() < 1e-7 + 1e-6 * want, "softmax {v}");
        }
        let d = dot(&x, &g);
        let want: f64 = x.iter().zip(&g).map(|(&a, &b)| a as f64 * b as f64).sum();
        assert!((d as f64 - want).abs() < 1e-3, "{d} {want}");
        let mut rows = [0f32; 10];
        dot_rows(&mut rows, &x[..100], &g);
        for (j, &r) in rows.iter().enumerate() {
            let want: f64 = x[..100]
                .iter()
                .zip(&g[j * 100..])
                .map(|(&a, &b)| a as f64 * b as f64)
                .sum();
            assert!((r as f64 - want).abs() < 1e-3, "row {j}: {r} {want}");
        }
        assert_eq!(
            max(&x[..999]),
            x[..999].iter().fold(f32::MIN, |m, &v| m.max(v))
        );
        assert_eq!(max(&[]), f32::NEG_INFINITY);
    }
}
