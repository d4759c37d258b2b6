"""Bitsandbytes-free NF4 (QLoRA) quantisation reference for `src/quant/nf4.rs`.

Mirrors bitsandbytes 0.50.2 `bitsandbytes.functional.quantize_4bit(..., quant_type="nf4")` as its
CPU build runs it (the torch "default" kernel in `backends/default/ops.py`), plus the double
quantisation of the absmax vector (`compress_statistics=True`):

* the weight is flattened row-major and cut into blocks of `blocksize` elements (the last block
  may be short); per block `absmax = max |x|` in float32;
* full blocks are scaled by `x * (1 / max(absmax, 1e-38))`, the short tail block by
  `x / max(absmax, 1e-38)` (bitsandbytes' default kernel does exactly this), clamped to [-1, 1];
  the stored absmax of a full block is the raw max, the tail block's is the clamped one
  (so an all-zero tail block stores 1e-38, an all-zero full block stores 0);
* the code is the index of the nearest of the 16 NF4 levels, decided by float32 midpoints
  between neighbouring levels, a value exactly on a midpoint going to the lower level
  (`torch.bucketize(right=False)`, the same `x > threshold` decisions as the CUDA kernel);
* two codes per byte, the even (first) element in the high nibble; an odd element count is
  padded with the code of 0.0 (7) in the last low nibble;
* dequantisation is `level[code] * absmax` in float32;
* double quantisation: `offset = mean(absmax)`, and `absmax - offset` is quantised blockwise
  (block 256) to 8 bits with `create_dynamic_map(signed=True)` (256 float32 levels) and its own
  float32 per-block absmax; dequantised absmax = `dyn[q] * absmax2 + offset` in float32.

Two points are defined here rather than copied, because bitsandbytes itself is not stable in them:
* the offset is `float32(mean in float64)`: torch's float32 `mean()` sums with a vector-width
  dependent cascade (AVX2 and AVX-512 machines can differ in the last bit);
* the 8-bit quantisation of the centred absmax uses exact nearest-level rounding
  (`x * (1/absmax)`, float32 midpoints, ties to the lower level), as the CUDA kernel
  `kQuantizeBlockwise` does; bitsandbytes' CPU library may approximate this step (newer builds use
  a 65,536-entry lookup table).
`--compare-bnb` quantises every case with the installed bitsandbytes and reports any difference.

Run from the repository root:
    python tools/reference/nf4.py                 # writes tests/fixtures/nf4/nf4_cases.safetensors
    python tools/reference/nf4.py --compare-bnb   # also compares with bitsandbytes (if installed)
    python tools/reference/nf4.py --rust-table    # prints the dynamic map as a Rust const
"""

import argparse
import json
import os
import sys

import numpy as np
import torch
from safetensors.numpy import save_file

NF4_LEVELS = torch.tensor(
    [
        -1.0,
        -0.6961928009986877,
        -0.5250730514526367,
        -0.39491748809814453,
        -0.28444138169288635,
        -0.18477343022823334,
        -0.09105003625154495,
        0.0,
        0.07958029955625534,
        0.16093020141124725,
        0.24611230194568634,
        0.33791524171829224,
        0.44070982933044434,
        0.5626170039176941,
        0.7229568362236023,
        1.0,
    ],
    dtype=torch.float32,
)

DQ_BLOCKSIZE = 256


def create_dynamic_map_signed():
    """bitsandbytes.functional.create_dynamic_map(signed=True, max_exponent_bits=7, total_bits=8)."""
    max_exponent_bits, total_bits = 7, 8
    non_sign_bits = total_bits - 1
    data = []
    for i in range(max_exponent_bits):
        fraction_items = int(2 ** (i + non_sign_bits - max_exponent_bits) + 1)
        boundaries = torch.linspace(0.1, 1, fraction_items, dtype=torch.float32)
        means = (boundaries[:-1] + boundaries[1:]) / 2.0
        data += ((10 ** (-(max_exponent_bits - 1) + i)) * means).tolist()
        data += (-(10 ** (-(max_exponent_bits - 1) + i)) * means).tolist()
    # additional_items == 0 for these arguments
    data.append(0)
    data.append(1.0)
    assert len(data) == 256
    data.sort()
    return torch.tensor(data, dtype=torch.float32)


DYNAMIC_MAP = create_dynamic_map_signed()


def _nearest(scaled, levels):
    bounds = (levels[:-1] + levels[1:]) / 2  # float32 midpoints
    return torch.bucketize(scaled, bounds, out_int32=True)


def quantize_nf4(w, blocksize):
    flat = w.reshape(-1).float()
    n = flat.numel()
    rem = n % blocksize
    full = n - rem
    blocks = full // blocksize
    com = flat[:full].reshape(blocks, blocksize)
    absmax = com.abs().max(dim=-1)[0] if blocks else torch.empty(0)
    scaled = torch.clamp(com * (1.0 / absmax.clamp(min=1e-38).view(-1, 1)), -1, 1).reshape(-1)
    if rem:
        am = flat[full:].abs().max().clamp(min=1e-38)
        absmax = torch.cat([absmax, am.unsqueeze(0)])
        scaled = torch.cat([scaled, torch.clamp(flat[full:] / am, -1, 1)])
    if scaled.numel() % 2:
        scaled = torch.nn.functional.pad(scaled, (0, 1))
    q = _nearest(scaled, NF4_LEVELS).to(torch.uint8)
    packed = (q[::2] << 4) | q[1::2]
    return packed, absmax


def quantize_dynamic_blockwise(x, blocksize=DQ_BLOCKSIZE):
    """8-bit blockwise quantisation with the signed dynamic map (exact nearest level)."""
    n = x.numel()
    nb = -(n // -blocksize)
    codes = torch.empty(n, dtype=torch.uint8)
    absmax = torch.empty(nb, dtype=torch.float32)
    for b in range(nb):
        blk = x[b * blocksize : (b + 1) * blocksize]
        am = blk.abs().max()
        absmax[b] = am
        inv = 1.0 / am.clamp(min=1e-38)
        scaled = torch.clamp(blk * inv, -1, 1)
        codes[b * blocksize : (b + 1) * blocksize] = _nearest(scaled, DYNAMIC_MAP).to(torch.uint8)
    return codes, absmax


def double_quantize(absmax):
    offset = absmax.double().mean().float()
    centred = absmax - offset
    q, absmax2 = quantize_dynamic_blockwise(centred)
    return q, absmax2, offset


def dequantize_absmax(q, absmax2, offset, blocksize=DQ_BLOCKSIZE):
    vals = DYNAMIC_MAP[q.long()]
    scale = absmax2.repeat_interleave(blocksize)[: q.numel()]
    return (vals * scale) + offset


def dequantize_nf4(packed, absmax, n, blocksize):
    q = torch.empty(packed.numel() * 2, dtype=torch.long)
    q[::2] = (packed >> 4).long()
    q[1::2] = (packed & 0xF).long()
    vals = NF4_LEVELS[q[:n]]
    scale = absmax.repeat_interleave(blocksize)[:n]
    return vals * scale


def bits(t):
    return t.contiguous().numpy().astype(np.float32).view(np.uint32)


def make_cases():
    g = torch.Generator().manual_seed(20240605)
    cases = []

    def add(name, w, blocksize, double_quant):
        cases.append((name, w.float().contiguous(), blocksize, double_quant))

    add("r7x100_b64", torch.randn(7, 100, generator=g) * 0.05, 64, False)
    z = torch.randn(6, 64, generator=g) * 0.02
    z[1] = 0.0  # an all-zero full block
    z[4, :] = 0.0
    z[5, 10] = 3.0  # one outlier block
    add("zeros6x64_b64", z, 64, False)
    t = torch.randn(3, 43, generator=g)  # 129 elements: odd count, a 1-element tail block
    t[2, 42] = 0.0
    add("odd3x43_b64", t, 64, False)
    tz = torch.randn(3, 45, generator=g)  # 135 elements: a 7-element all-zero tail block
    tz.view(-1)[128:] = 0.0
    add("zerotail3x45_b64", tz, 64, True)
    add("r5x200_b128", torch.randn(5, 200, generator=g) * 0.1, 128, True)
    add("r9x70_b256", torch.randn(9, 70, generator=g), 256, False)
    # 263 NF4 blocks -> two double-quantisation blocks (256 + a 7-entry tail)
    big = torch.randn(40, 420, generator=g) * torch.linspace(0.01, 0.2, 40).view(-1, 1)
    add("dq40x420_b64", big, 64, True)
    add("dq12x96_b32", torch.randn(12, 96, generator=g) * 0.03, 32, True)
    return cases


def compute(name, w, blocksize, double_quant):
    packed, absmax = quantize_nf4(w, blocksize)
    out = {
        f"{name}.input": bits(w.reshape(-1)),
        f"{name}.codes": packed.numpy(),
        f"{name}.absmax": bits(absmax),
    }
    if double_quant:
        q, absmax2, offset = double_quantize(absmax)
        absmax_dq = dequantize_absmax(q, absmax2, offset)
        out[f"{name}.dq_codes"] = q.numpy()
        out[f"{name}.dq_absmax"] = bits(absmax2)
        out[f"{name}.dq_offset"] = bits(offset.reshape(1))
        out[f"{name}.absmax_dequant"] = bits(absmax_dq)
        used = absmax_dq
    else:
        used = absmax
    deq = dequantize_nf4(packed, used, w.numel(), blocksize)
    out[f"{name}.dequant"] = bits(deq)
    return out, (packed, absmax, deq)


def compare_bnb(cases):
    try:
        import bitsandbytes as bnb
        import bitsandbytes.functional as F
    except Exception as e:  # noqa: BLE001
        print(f"bitsandbytes not importable: {e}")
        return
    print(f"bitsandbytes {bnb.__version__}")
    dm = F.create_dynamic_map(signed=True)
    print(f"  dynamic map equal: {torch.equal(dm, DYNAMIC_MAP)}")
    for name, w, bs, dq in cases:
        qb, st = F.quantize_4bit(w, blocksize=bs, quant_type="nf4", compress_statistics=False)
        packed, absmax = quantize_nf4(w, bs)
        codes_eq = torch.equal(qb.reshape(-1), packed)
        absmax_eq = torch.equal(st.absmax, absmax)
        deq_b = F.dequantize_4bit(qb, st).reshape(-1)
        deq = dequantize_nf4(packed, absmax, w.numel(), bs)
        deq_eq = torch.equal(deq_b, deq)
        line = f"  {name}: codes {codes_eq} absmax {absmax_eq} dequant {deq_eq}"
        if dq:
            qb2, st2 = F.quantize_4bit(w, blocksize=bs, quant_type="nf4", compress_statistics=True)
            q, absmax2, offset = double_quantize(absmax)
            off_ulps = int(bits(st2.offset.reshape(1))[0].astype(np.int64) - bits(offset.reshape(1))[0])
            dq_codes_diff = int((st2.absmax.reshape(-1) != q).sum())
            dq_absmax_eq = torch.equal(st2.state2.absmax, absmax2)
            # bitsandbytes' dequantisation of its own state vs ours of ours
            deq_b2 = F.dequantize_4bit(qb2, st2).reshape(-1)
            deq2 = dequantize_nf4(packed, dequantize_absmax(q, absmax2, offset), w.numel(), bs)
            # our 8-bit step on bitsandbytes' offset, to separate the two sources of difference
            q_same_off, _ = quantize_dynamic_blockwise(absmax - st2.offset)
            codes_same_off = int((st2.absmax.reshape(-1) != q_same_off).sum())
            line += (
                f" | dq offset diff {off_ulps} ulp, dq codes differing {dq_codes_diff}/{q.numel()}"
                f" (with bnb's offset: {codes_same_off}), dq absmax2 {dq_absmax_eq},"
                f" dequant max|diff| {float((deq_b2 - deq2).abs().max()):.3g}"
            )
        print(line)


def rust_table():
    b = bits(DYNAMIC_MAP)
    print("/// bitsandbytes' `create_dynamic_map(signed=True)` (256 float32 levels, ascending) as bits.")
    print("/// Generated by `tools/reference/nf4.py --rust-table`; do not edit.")
    print("pub(crate) const DYNAMIC_MAP_SIGNED_BITS: [u32; 256] = [")
    for i in range(0, 256, 8):
        print("    " + " ".join(f"0x{int(v):08x}," for v in b[i : i + 8]))
    print("];")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--compare-bnb", action="store_true")
    ap.add_argument("--rust-table", action="store_true")
    ap.add_argument("--out", default="tests/fixtures/nf4/nf4_cases.safetensors")
    args = ap.parse_args()
    torch.set_num_threads(1)
    if args.rust_table:
        rust_table()
        return
    cases = make_cases()
    tensors = {"nf4_levels": bits(NF4_LEVELS), "dynamic_map": bits(DYNAMIC_MAP)}
    meta = []
    for name, w, bs, dq in cases:
        out, _ = compute(name, w, bs, dq)
        tensors.update(out)
        meta.append({"name": name, "rows": w.shape[0], "cols": w.shape[1], "blocksize": bs, "double_quant": dq})
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    # A single metadata key keeps the file byte-stable (safetensors orders keys arbitrarily).
    save_file(tensors, args.out, metadata={"cases": json.dumps(meta)})
    print(f"wrote {args.out} ({len(cases)} cases)")
    if args.compare_bnb:
        compare_bnb(cases)


if __name__ == "__main__":
    sys.exit(main())
