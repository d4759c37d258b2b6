"""Reference for `src/train/optim.rs`: torch AdamW + transformers' linear warmup schedule +
`torch.nn.utils.clip_grad_norm_`, step by step, as the HF Trainer runs them.

Per optimizer step k (0-based): grads <- fixed random grads; total = clip_grad_norm_(max_norm);
optimizer.step() at lr = base_lr * lambda(k); scheduler.step(). Recorded: the lr used, the total
norm, the clipped grads and the params after the step, every float as its IEEE bits so the Rust
test can compare bit for bit.

torch specifics mirrored by the Rust code (torch 2.15, CPU, float32):
* AdamW single-tensor path (`foreach=False`); scalars (bias corrections, step size) in float64,
  rounded to float32 where they meet a tensor; `exp_avg.lerp_` and `addcmul_` compile to fused
  multiply-adds; `addcdiv_` is `p + (value * m) / denom`.
* `clip_grad_norm_` on CPU: per-tensor `linalg.vector_norm` (the AVX2 kernel: 8 float32 lanes of
  `acc += x*x`, lanes folded left to right, then the `n % 8` tail: a 4-wide block of rounded squares
  added in order, the last `< 4` elements with fused multiply-adds), the same norm over the stacked
  per-tensor norms, `coef = reciprocal(total + 1e-6) * max_norm`, clamped to 1.0, always multiplied.
  torch's CPU `sqrt` itself is not always correctly rounded (one element of this fixture is 1 ulp
  off IEEE sqrt), so the Rust test allows 1 ulp on the params.
  Checked against torch's AVX-512 and AVX2 kernels (`ATEN_CPU_CAPABILITY=avx2`), which sum alike;
  the scalar `default` build sums differently. The fixture records the capability it was made on.

Run from the repository root: python tools/reference/optim_ref.py
(writes tests/fixtures/optim/adamw_cases.json)
"""

import json
import math
import os

import numpy as np
import torch
from transformers import get_linear_schedule_with_warmup


def bits32(t):
    return [int(v) for v in t.detach().reshape(-1).numpy().astype(np.float32).view(np.uint32)]


def bits64(x):
    return int(np.array([x], dtype=np.float64).view(np.uint64)[0])


SHAPES = [(2, 24), (24, 2), (3, 13), (7,), (64,)]


def run_case(name, seed, lr, betas, eps, weight_decay, max_norm, total_steps, warmup_ratio, grad_scales):
    g = torch.Generator().manual_seed(seed)
    params = [torch.nn.Parameter(torch.randn(s, generator=g) * 0.1) for s in SHAPES]
    init = [bits32(p) for p in params]
    opt = torch.optim.AdamW(params, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, foreach=False)
    warmup = math.ceil(total_steps * warmup_ratio)
    sched = get_linear_schedule_with_warmup(opt, warmup, total_steps)
    steps = []
    for k in range(total_steps):
        grads = [torch.randn(s, generator=g) * grad_scales[k] for s in SHAPES]
        raw = [bits32(x) for x in grads]
        for p, x in zip(params, grads):
            p.grad = x.clone()
        total = torch.nn.utils.clip_grad_norm_(params, max_norm, foreach=False)
        used_lr = opt.param_groups[0]["lr"]
        opt.step()
        sched.step()
        steps.append(
            {
                "grads": raw,
                "lr_bits": bits64(used_lr),
                "total_norm_bits": bits32(total.reshape(1))[0],
                "clipped_grads": [bits32(p.grad) for p in params],
                "params": [bits32(p) for p in params],
            }
        )
    return {
        "name": name,
        "shapes": [list(s) for s in SHAPES],
        "base_lr_bits": bits64(lr),
        "beta1_bits": bits64(betas[0]),
        "beta2_bits": bits64(betas[1]),
        "eps_bits": bits64(eps),
        "weight_decay_bits": bits64(weight_decay),
        "max_norm_bits": bits64(max_norm),
        "total_steps": total_steps,
        "warmup_ratio_bits": bits64(warmup_ratio),
        "warmup_steps": warmup,
        "init_params": init,
        "steps": steps,
    }


def schedule_table():
    """transformers' lambda for a grid of (step, warmup, total), and get_warmup_steps for ratios."""
    from transformers import TrainingArguments

    rows = []
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=3e-4)
    for warmup, total in [(0, 10), (3, 10), (10, 10), (1, 1), (7, 1000), (0, 1), (5, 3)]:
        opt.param_groups[0]["lr"] = 3e-4
        opt.param_groups[0].pop("initial_lr", None)
        sched = get_linear_schedule_with_warmup(opt, warmup, total)
        for step in range(total + 3):
            rows.append({"warmup": warmup, "total": total, "step": step, "lr_bits": bits64(opt.param_groups[0]["lr"])})
            opt.step()
            sched.step()
    ratios = []
    for ratio, total in [(0.1, 10), (0.03, 1000), (0.05, 17), (0.0, 50), (0.5, 3), (0.07, 100), (0.3, 7)]:
        args = TrainingArguments(output_dir="/tmp/optim_ref_unused", warmup_steps=ratio, report_to=[])
        ratios.append({"ratio_bits": bits64(ratio), "total": total, "warmup": args.get_warmup_steps(total)})
    return {"base_lr_bits": bits64(3e-4), "rows": rows, "ratios": ratios}


def main():
    torch.set_num_threads(1)
    # Steps whose grads are scaled up make the clip activate (total norm > max_norm).
    scales_a = [1.0, 0.02, 0.05, 3.0, 0.01, 0.08, 2.0, 0.03, 0.04, 0.06]
    scales_b = [0.5, 5.0, 0.01, 0.02, 1.5, 0.02, 0.03, 4.0, 0.01, 0.05, 0.2, 0.01]
    cases = [
        run_case("hf_defaults_wd0", 11, 2e-4, (0.9, 0.999), 1e-8, 0.0, 1.0, 10, 0.1, scales_a),
        run_case("wd0.01_clip0.3", 12, 1e-3, (0.9, 0.999), 1e-8, 0.01, 0.3, 12, 0.25, scales_b),
        run_case("betas_eps_wd0.1", 13, 5e-3, (0.8, 0.95), 1e-6, 0.1, 0.5, 10, 0.0, scales_a),
    ]
    out = {
        "generator": "tools/reference/optim_ref.py",
        "torch": torch.__version__,
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "cases": cases,
        "schedule": schedule_table(),
    }
    path = "tests/fixtures/optim/adamw_cases.json"
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as fh:
        json.dump(out, fh, separators=(",", ":"))
        fh.write("\n")
    nclip = sum(
        1
        for c in cases
        for s in c["steps"]
        if np.array([s["total_norm_bits"]], dtype=np.uint32).view(np.float32)[0]
        > np.frombuffer(np.uint64(c["max_norm_bits"]).tobytes(), dtype=np.float64)[0]
    )
    print(f"wrote {path}: {len(cases)} cases, {nclip} clipped steps, cpu {out['cpu_capability']}")


if __name__ == "__main__":
    main()
