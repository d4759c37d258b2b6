#!/usr/bin/env python3
"""LoRA / QLoRA training reference: torch + peft train the tiny fixture for a few steps; smolcap must
reproduce every step's loss and the final LoRA weights (ground truth for `src/train`).

Run from the repository root (after make_fixtures.py):

    /work/venv/bin/python tools/reference/train_ref.py

The loop is written out instead of using transformers' Trainer so that every choice is visible; it
is what Trainer does for these settings:

- sample = processor(chat prompt "User:<image>{prompt}<end_of_utterance>\\nAssistant:", image) ids, then
  tokenizer(" " + caption, add_special_tokens=False) + <end_of_utterance>; labels only on that answer;
  micro-batches right-padded (pad id, attention 0), images padded with all-zero tiles (dropped inside
  the model);
- loss of an optimizer step = sum of token cross-entropies over all its micro-batches / number of label
  tokens in all of them (Trainer's num_items_in_batch normalisation for gradient accumulation);
  each micro-batch's (sum / N) is backpropagated and the gradients add up;
- torch.nn.utils.clip_grad_norm_(max_norm=1.0), torch.optim.AdamW (foreach=False), and
  transformers.get_linear_schedule_with_warmup with warmup = ceil(ratio * total_steps);
- lora_dropout 0 (dropout masks come from different RNGs), and both LoRA factors start random (B = 0
  would leave A's gradient zero at the first step): the initial adapter is saved with peft and smolcap
  starts from it (`--adapter_init`).
- the expected values come from the same run in float64 (from the float32 initial adapter): torch's own
  float32 run differs from it by up to ~1.5e-5 in the trained connector weight, because Adam normalises
  near-zero gradients whose float32 rounding noise it then amplifies; expected.json records that torch
  float32 deviation per case (`torch_f32_vs_f64`) beside the float64 losses.

Cases (tests/fixtures/train/<case>/): `text` (LoRA on the decoder's seven projections), `vision_connector`
(LoRA on decoder and SigLIP linears + a trainable connector saved as modules_to_save, weight decay 0.01),
`qlora` (decoder linear weights replaced by their NF4 round trip — tools/reference/nf4.py, block 64,
double quantisation — then the same LoRA as `text`: a bitsandbytes-free QLoRA reference).
Each case dir holds init/ (peft adapter), final/ (peft adapter after the last step) and expected.json.
"""

from __future__ import annotations

import json
import math
import shutil
import sys
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import make_fixtures as mf  # noqa: E402  (2 threads, deterministic algorithms, offline env)

import torch  # noqa: E402
from PIL import Image  # noqa: E402
from safetensors.torch import load_file  # noqa: E402

import transformers  # noqa: E402
from peft import LoraConfig, get_peft_model  # noqa: E402
from transformers import AutoModelForImageTextToText, AutoProcessor, get_linear_schedule_with_warmup  # noqa: E402

warnings.filterwarnings("ignore")
transformers.logging.set_verbosity_error()

ROOT = mf.ROOT
BASE_REL = "tests/fixtures/tiny-idefics3"
OUT = ROOT / "tests" / "fixtures" / "train"
PROMPT = "Describe this image in detail."
IMAGES = ["photo_640x480.png", "portrait_90x200.png", "pano_400x60.png", "square_32x32.png", "gray_120x90.png",
          "rgba_100x80.png"]
CAPTIONS = [
    "a red square on a blue background",
    "two small green circles next to a large yellow triangle",
    "a person riding a bike down the street",
    "an empty room",
    "the cat sleeps on a warm sofa near the window, and a dog watches it",
    "three 3 numbers: 12, 7 and 42!",
    "a long caption " + "with many repeated words " * 6,
    "sky",
]
SEVEN = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]

CASES = [
    dict(name="text", r=4, alpha=8, targets=SEVEN, vision=False, connector=False, qlora=False,
         lr=2e-2, weight_decay=0.0, warmup_ratio=0.25, total_steps=8, steps=5, micro_batch=2, accum=2, seed=11),
    dict(name="vision_connector", r=2, alpha=5, targets=SEVEN + ["out_proj", "fc1", "fc2"], vision=True,
         connector=True, qlora=False, lr=1e-2, weight_decay=0.01, warmup_ratio=0.25, total_steps=8, steps=5,
         micro_batch=2, accum=2, seed=12),
    dict(name="qlora", r=4, alpha=8, targets=SEVEN, vision=False, connector=False, qlora=True,
         lr=2e-2, weight_decay=0.0, warmup_ratio=0.25, total_steps=8, steps=5, micro_batch=2, accum=2, seed=13),
]


def target_regex(targets, vision):
    towers = "(text_model|vision_model)" if vision else "text_model"
    return f".*{towers}.*\\.({'|'.join(targets)})"


def examples(n, offset):
    """(image file, caption) pairs, cycling images and captions with different periods."""
    return [(IMAGES[(offset + i) % len(IMAGES)], CAPTIONS[(offset * 3 + i * 5) % len(CAPTIONS)]) for i in range(n)]


def build_sample(proc, image, caption):
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": PROMPT}]}]
    text = proc.apply_chat_template(messages, add_generation_prompt=True)
    enc = proc(text=text, images=[Image.open(mf.IMG_DIR / image)], return_tensors="pt")
    eos = proc.tokenizer.convert_tokens_to_ids("<end_of_utterance>")
    target = proc.tokenizer(" " + caption, add_special_tokens=False).input_ids + [eos]
    ids = enc["input_ids"][0].tolist()
    return {"ids": ids + target, "prompt_len": len(ids), "pixel_values": enc["pixel_values"][0]}


def collate(samples, pad):
    L = max(len(s["ids"]) for s in samples)
    T = max(s["pixel_values"].shape[0] for s in samples)
    b = len(samples)
    ids = torch.full((b, L), pad, dtype=torch.long)
    att = torch.zeros((b, L), dtype=torch.long)
    labels = torch.full((b, L), -100, dtype=torch.long)
    pv = torch.zeros((b, T) + tuple(samples[0]["pixel_values"].shape[1:]))
    pam = torch.zeros((b, T, pv.shape[-2], pv.shape[-1]), dtype=torch.bool)
    for r, s in enumerate(samples):
        n = len(s["ids"])
        ids[r, :n] = torch.tensor(s["ids"])
        att[r, :n] = 1
        labels[r, s["prompt_len"]:n] = ids[r, s["prompt_len"]:n]
        t = s["pixel_values"].shape[0]
        pv[r, :t] = s["pixel_values"]
        pam[r, :t] = True
    return ids, att, labels, pv, pam


def nf4_roundtrip(model):
    import nf4  # tools/reference/nf4.py
    with torch.no_grad():
        for name, mod in model.named_modules():
            if isinstance(mod, torch.nn.Linear) and ".text_model." in f".{name}." and "lm_head" not in name:
                w = mod.weight.data.float()
                packed, absmax = nf4.quantize_nf4(w, 64)
                q, absmax2, offset = nf4.double_quantize(absmax)
                absmax = nf4.dequantize_absmax(q, absmax2, offset)
                mod.weight.data.copy_(nf4.dequantize_nf4(packed, absmax, w.numel(), 64).reshape(w.shape))


def randomize_lora(pm, seed):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in sorted(pm.named_parameters(), key=lambda kv: kv[0]):
            if ".lora_A." in name:
                p.copy_(torch.randn(p.shape, generator=g) / math.sqrt(p.shape[1]))
            elif ".lora_B." in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.3 / math.sqrt(p.shape[1]))


def load_init(pm, path):
    """Copies the saved initial adapter (and modules_to_save copy) into pm."""
    init = load_file(str(path / "adapter_model.safetensors"))
    n = 0
    with torch.no_grad():
        for name, p in pm.named_parameters():
            key = name.replace(".default", "").replace("modules_to_save.", "")
            if key in init:
                p.copy_(init[key].to(p.dtype))
                n += 1
    assert n == len(init), (n, len(init))


def train(c, dtype, out):
    """Runs case c in dtype; the float32 run writes init/ first, the float64 run starts from it."""
    proc = AutoProcessor.from_pretrained(BASE_REL)
    model = AutoModelForImageTextToText.from_pretrained(BASE_REL, dtype=torch.float32)
    if c["qlora"]:
        nf4_roundtrip(model)
    model = model.to(dtype)
    cfg = LoraConfig(r=c["r"], lora_alpha=c["alpha"], lora_dropout=0.0,
                     target_modules=target_regex(c["targets"], c["vision"]),
                     modules_to_save=["connector"] if c["connector"] else None)
    pm = get_peft_model(model, cfg)
    if dtype == torch.float32:
        randomize_lora(pm, c["seed"])
        pm.save_pretrained(str(out / "init"))
    else:
        load_init(pm, out / "init")
    pm.train()
    params = [p for p in pm.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=c["lr"], betas=(0.9, 0.999), eps=1e-8, weight_decay=c["weight_decay"],
                            foreach=False)
    warmup = math.ceil(c["warmup_ratio"] * c["total_steps"])
    sched = get_linear_schedule_with_warmup(opt, warmup, c["total_steps"])
    pad = json.load(open(ROOT / BASE_REL / "generation_config.json"))["pad_token_id"]
    per_step = c["micro_batch"] * c["accum"]
    steps = []
    for step in range(c["steps"]):
        exs = examples(per_step, step * per_step)
        samples = [build_sample(proc, im, cap) for im, cap in exs]
        n_tokens = sum(len(s["ids"]) - s["prompt_len"] for s in samples)
        total = 0.0
        lr = sched.get_last_lr()[0]
        for m in range(c["accum"]):
            chunk = samples[m * c["micro_batch"]:(m + 1) * c["micro_batch"]]
            ids, att, labels, pv, pam = collate(chunk, pad)
            logits = pm(input_ids=ids, attention_mask=att, pixel_values=pv.to(dtype),
                        pixel_attention_mask=pam).logits
            shift_logits = logits[:, :-1].reshape(-1, logits.shape[-1]).float()
            shift_labels = labels[:, 1:].reshape(-1)
            loss_sum = torch.nn.functional.cross_entropy(shift_logits, shift_labels, ignore_index=-100,
                                                         reduction="sum")
            (loss_sum / n_tokens).backward()
            total += float(loss_sum)
        norm = float(torch.nn.utils.clip_grad_norm_(params, 1.0))
        opt.step()
        sched.step()
        opt.zero_grad()
        steps.append({"loss": total / n_tokens, "grad_norm": norm, "lr": lr, "tokens": n_tokens,
                      "examples": [{"image": im, "caption": cap} for im, cap in exs]})
        print(f"{c['name']} {dtype} step {step}: loss {total / n_tokens:.8f} grad_norm {norm:.6f} lr {lr:.5f}")
    return pm, steps, warmup


def run_case(c):
    out = OUT / c["name"]
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    pm32, steps32, _ = train(c, torch.float32, out)
    pm, steps, warmup = train(c, torch.float64, out)
    pm.save_pretrained(str(out / "final"))
    for d in ("init", "final"):
        readme = out / d / "README.md"
        if readme.exists():
            readme.unlink()
    w32 = {n: p for n, p in pm32.named_parameters() if p.requires_grad}
    w64 = {n: p for n, p in pm.named_parameters() if p.requires_grad}
    dev = {"max_abs_weight": max(float((w32[n].double() - w64[n]).abs().max()) for n in w64),
           "max_rel_loss": max(abs(a["loss"] - b["loss"]) / b["loss"] for a, b in zip(steps32, steps))}
    print(f"{c['name']}: torch float32 vs float64: {dev}")
    meta = {k: c[k] for k in ("r", "alpha", "targets", "vision", "connector", "qlora", "lr", "weight_decay",
                              "warmup_ratio", "total_steps", "steps", "micro_batch", "accum")}
    meta.update({"prompt": PROMPT, "warmup_steps": warmup, "dtype": "float64", "torch_f32_vs_f64": dev, "max_grad_norm": 1.0, "steps_log": steps,
                 "torch": torch.__version__, "transformers": transformers.__version__,
                 "peft": __import__("peft").__version__})
    with open(out / "expected.json", "w") as f:
        json.dump(meta, f, indent=1)


def main():
    names = sys.argv[1:]
    for c in CASES:
        if not names or c["name"] in names:
            run_case(c)


if __name__ == "__main__":
    main()
