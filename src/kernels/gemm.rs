//! The gemm crate's raw entry on the calling thread, and the output pointer that parallel tasks
//! share: what the CPU kernels build their products from (the kernels split the work across
//! threads themselves, so every product here is single-threaded).

/// `dst[i·dst_rs + j] (+)= Σ_p a[i·a_rs + p] · b[p·b_rs + j·b_cs]` for an `m×n` block, on the
/// calling thread (callers split the work across threads themselves).
///
/// # Safety
/// Every element addressed through `dst`, `a` and `b` with these sizes and strides must lie in
/// its allocation, and `dst` must not alias `a` or `b` or be written by another thread.
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn gemm_raw(
    (m, n, k): (usize, usize, usize),
    dst: *mut f32,
    dst_rs: usize,
    accumulate: bool,
    a: *const f32,
    a_rs: usize,
    b: *const f32,
    b_rs: usize,
    b_cs: usize,
) {
    // SAFETY: the caller's guarantees are gemm_strided's, with a unit column stride for `a`.
    unsafe {
        gemm_strided(
            (m, n, k),
            dst,
            dst_rs,
            accumulate,
            (a, a_rs, 1),
            (b, b_rs, b_cs),
        )
    }
}

/// `dst[i·dst_rs + j] (+)= Σ_p a[i·a_rs + p·a_cs] · b[p·b_rs + j·b_cs]`: [`gemm_raw`] with
/// the left operand's column stride free too (products with a transposed left operand, as the
/// attention backward's `Pᵀ·dO`), on the calling thread.
///
/// # Safety
/// As [`gemm_raw`].
pub(crate) unsafe fn gemm_strided(
    (m, n, k): (usize, usize, usize),
    dst: *mut f32,
    dst_rs: usize,
    accumulate: bool,
    (a, a_rs, a_cs): (*const f32, usize, usize),
    (b, b_rs, b_cs): (*const f32, usize, usize),
) {
    if m == 0 || n == 0 {
        return;
    }
    // SAFETY: the caller guarantees the bounds and aliasing rules above.
    unsafe {
        ::gemm::gemm(
            m,
            n,
            k,
            dst,
            1,
            dst_rs as isize,
            accumulate,
            a,
            a_cs as isize,
            a_rs as isize,
            b,
            b_cs as isize,
            b_rs as isize,
            if accumulate { 1.0f32 } else { 0.0 },
            1.0f32,
            false,
            false,
            false,
            ::gemm::Parallelism::None,
        )
    }
}

/// A pointer that parallel tasks write through at disjoint offsets.
#[derive(Clone, Copy)]
pub(crate) struct SharedOut(pub(crate) *mut f32);
// SAFETY: every task writes a disjoint set of elements (each kernel's tasks own disjoint rows).
unsafe impl Send for SharedOut {}
// SAFETY: as above.
unsafe impl Sync for SharedOut {}

impl SharedOut {
    /// The pointer (a method, so closures capture the `Sync` wrapper, not the raw field).
    pub(crate) fn get(&self) -> *mut f32 {
        self.0
    }
}
