//! Causal self-attention of a decoder's new rows over its KV cache: RoPE, the cache write and
//! the attention in one call, on the raw CPU kernels (f32 on the CPU: positions and padding read
//! on the host once per forward pass, attention read straight from the projections and the
//! cache) or on candle's ops (any other device or dtype: gathered RoPE tables, an additive mask).

use candle_core::{DType, Device, Tensor};

use super::attention::{attention_raw, AttentionShape, HeadLayout};
use super::cpu::{self, f32_slice};
use super::{fast, softmax_scaled};
use crate::error::{Error, Result};

/// Head counts and width of the attention.
#[derive(Debug, Clone, Copy)]
pub struct Heads {
    /// Query heads.
    pub q: usize,
    /// Key/value heads (grouped-query attention when fewer than `q`).
    pub kv: usize,
    /// Head width.
    pub d: usize,
}

/// What every layer's attention in one forward pass shares, read once per pass.
pub enum PassInputs {
    /// The CPU kernels: RoPE positions and the key mask on the host.
    Host {
        /// RoPE position of each `[b, L]` new row.
        positions: Vec<u32>,
        /// `[b, past + L]` key mask (1 = attend), when some row is padded.
        key_mask: Option<Vec<u8>>,
    },
    /// candle's ops: the RoPE tables gathered at the positions, and an additive mask.
    Tensors {
        /// `[b, L, d/2]` cosines.
        cos: Tensor,
        /// `[b, L, d/2]` sines.
        sin: Tensor,
        /// `[b, 1, 1, L, past + L]`, or `None` when a single causal query needs none.
        mask: Option<Tensor>,
    },
}

impl PassInputs {
    /// Chooses the path for `L` new rows after `past` cached ones (`positions` `[b, L]` u32,
    /// `key_mask` `[b, past + L]`) and reads what it needs. The CPU kernels apply when the new
    /// rows, the RoPE tables and every cache tensor are f32 on the CPU.
    pub fn new(
        new_rows: &Tensor,
        positions: &Tensor,
        key_mask: Option<&Tensor>,
        past: usize,
        (cos, sin): (&Tensor, &Tensor),
        cache: &[&Tensor],
    ) -> Result<Self> {
        let (b, l) = positions.dims2()?;
        let pos_flat = positions.flatten_all()?;
        if fast(new_rows) && fast(cos) && fast(sin) && cache.iter().all(|t| fast(t)) {
            return Ok(Self::Host {
                positions: pos_flat.to_vec1::<u32>()?,
                key_mask: match key_mask {
                    Some(m) => Some(m.to_dtype(DType::U8)?.flatten_all()?.to_vec1::<u8>()?),
                    None => None,
                },
            });
        }
        let gather = |t: &Tensor| -> Result<Tensor> {
            Ok(t.index_select(&pos_flat, 0)?.reshape((b, l, ()))?)
        };
        Ok(Self::Tensors {
            cos: gather(cos)?,
            sin: gather(sin)?,
            mask: build_mask(b, l, past, key_mask, new_rows.device())?,
        })
    }

    /// Whether the CPU kernels run this pass (which alone can attend from the last row only).
    pub fn is_host(&self) -> bool {
        matches!(self, Self::Host { .. })
    }
}

/// One layer's cache: `[b, kv_heads, capacity, d]` keys and values, `past` rows filled.
pub struct CacheSlot<'a> {
    /// Cached keys.
    pub k: &'a mut Tensor,
    /// Cached values.
    pub v: &'a mut Tensor,
    /// Rows already cached.
    pub past: usize,
}

/// Attention of the new rows: `q` `[b, Lq, heads·d]` holds the queries of the last `Lq` of the
/// `L` new rows (all of them, or on the CPU path only the last), `k`, `v` `[b, L, kv_heads·d]`
/// their keys and values, before RoPE. Writes the rotated keys and the values into the cache
/// after its `past` rows and returns `[b, Lq, heads·d]`.
pub fn attend(
    inputs: &PassInputs,
    (q, k, v): (&Tensor, &Tensor, &Tensor),
    heads: Heads,
    (cos, sin): (&Tensor, &Tensor),
    slot: CacheSlot,
) -> Result<Tensor> {
    let (b, lq, _) = q.dims3()?;
    let l = k.dim(1)?;
    let Heads {
        q: nh,
        kv: kvh,
        d: hd,
    } = heads;
    let past = slot.past;
    let capacity = slot.k.dim(2)?;
    let total = past + l;
    if total > capacity || lq > l {
        return Err(Error::Internal(format!(
            "attention: {lq} query rows, {l} new rows after {past} in a cache of {capacity}"
        )));
    }
    let dev = q.device();
    let scale = (hd as f64).powf(-0.5);
    match inputs {
        PassInputs::Host {
            positions,
            key_mask,
        } => {
            let q_pos: Vec<u32> = (0..b)
                .flat_map(|bi| positions[bi * l + l - lq..(bi + 1) * l].iter().copied())
                .collect();
            let (qr, kr, vt) = {
                let (cg, cl) = cos.storage_and_layout();
                let (sg, sl) = sin.storage_and_layout();
                let (cos, sin) = (f32_slice(&cg, cl)?, f32_slice(&sg, sl)?);
                let (qg, ql) = q.storage_and_layout();
                let (kg, kl) = k.storage_and_layout();
                let (vg, vl) = v.storage_and_layout();
                (
                    cpu::rope(
                        f32_slice(&qg, ql)?,
                        &q_pos,
                        cos,
                        sin,
                        (b, lq, nh, hd),
                        false,
                    )?,
                    cpu::rope(
                        f32_slice(&kg, kl)?,
                        positions,
                        cos,
                        sin,
                        (b, l, kvh, hd),
                        true,
                    )?,
                    cpu::heads_first(f32_slice(&vg, vl)?, (b, l, kvh, hd)),
                )
            };
            slot.k
                .slice_set(&Tensor::from_vec(kr, (b, kvh, l, hd), dev)?, 2, past)?;
            slot.v
                .slice_set(&Tensor::from_vec(vt, (b, kvh, l, hd), dev)?, 2, past)?;
            let (kg, kl) = slot.k.storage_and_layout();
            let (vg, vl) = slot.v.storage_and_layout();
            let cache_layout = HeadLayout::heads_rows(capacity, kvh, hd);
            let sh = AttentionShape {
                batch: b,
                q_heads: nh,
                kv_heads: kvh,
                rows: lq,
                keys: total,
                d: hd,
                scale: scale as f32,
                // The query rows are the last lq of the l new ones.
                causal: Some(past + l - lq),
            };
            let out = attention_raw(
                &sh,
                &qr,
                HeadLayout::rows_heads(lq, nh, hd),
                f32_slice(&kg, kl)?,
                cache_layout,
                f32_slice(&vg, vl)?,
                cache_layout,
                key_mask.as_deref(),
            )?;
            Ok(Tensor::from_vec(out, (b, lq, nh * hd), dev)?)
        }
        PassInputs::Tensors { cos, sin, mask } => {
            if lq != l {
                return Err(Error::Internal(
                    "attention from the last row only runs on the CPU kernels".into(),
                ));
            }
            let heads_first = |t: &Tensor, n: usize| -> Result<Tensor> {
                Ok(t.reshape((b, l, n, hd))?.transpose(1, 2)?.contiguous()?)
            };
            let q = candle_nn::rotary_emb::rope(&heads_first(q, nh)?, cos, sin)?;
            let k = candle_nn::rotary_emb::rope(&heads_first(k, kvh)?, cos, sin)?;
            let v = heads_first(v, kvh)?;
            slot.k.slice_set(&k, 2, past)?;
            slot.v.slice_set(&v, 2, past)?;
            let k_all = slot.k.narrow(2, 0, total)?;
            let v_all = slot.v.narrow(2, 0, total)?;
            // Grouped-query attention without copying K/V: query heads sharing a KV head are
            // stacked along the query axis ([b, kvh, rep·L, d]).
            let rep = nh / kvh;
            let qg = q.reshape((b, kvh, rep * l, hd))?;
            let scores = qg.matmul(&k_all.t()?)?;
            let probs = match mask {
                // The mask is added after scaling, as in the reference.
                Some(m) => {
                    let s = (scores.to_dtype(DType::F32)? * scale)?
                        .reshape((b, kvh, rep, l, total))?
                        .broadcast_add(m)?
                        .reshape((b, kvh, rep * l, total))?;
                    softmax_scaled(&s, 1.0)?.to_dtype(q.dtype())?
                }
                None => softmax_scaled(&scores, scale)?,
            };
            let o = probs.matmul(&v_all)?; // [b, kvh, rep·L, d]
            Ok(o.reshape((b, nh, l, hd))?
                .transpose(1, 2)?
                .reshape((b, l, nh * hd))?)
        }
    }
}

/// Additive mask `[b, 1, 1, L, total]` in f32, or `None` when plain causal attention over a
/// single query needs none.
fn build_mask(
    b: usize,
    l: usize,
    past: usize,
    key_mask: Option<&Tensor>,
    dev: &Device,
) -> Result<Option<Tensor>> {
    if l == 1 && key_mask.is_none() {
        return Ok(None);
    }
    let total = past + l;
    let keys: Option<Vec<u8>> = match key_mask {
        Some(m) => {
            let (mb, mt) = m.dims2()?;
            if mb != b || mt != total {
                return Err(Error::Internal(format!(
                    "key mask shape [{mb}, {mt}] != [{b}, {total}]"
                )));
            }
            Some(m.to_dtype(DType::U8)?.flatten_all()?.to_vec1::<u8>()?)
        }
        None => None,
    };
    let neg = f32::MIN;
    let mut data = vec![0f32; b * l * total];
    for r in 0..b {
        for i in 0..l {
            let row = &mut data[(r * l + i) * total..(r * l + i + 1) * total];
            for (j, v) in row.iter_mut().enumerate() {
                let causal_ok = j <= past + i;
                let key_ok = keys.as_ref().is_none_or(|k| k[r * total + j] != 0);
                if !(causal_ok && key_ok) {
                    *v = neg;
                }
            }
        }
    }
    Ok(Some(Tensor::from_vec(data, (b, 1, 1, l, total), dev)?))
}
