#!/usr/bin/env python3
"""Times one LoRA training step of transformers + peft (CPU, float32) for `smolcap bench --train`.

    python tools/reference/bench_train_torch.py MODEL_DIR IMAGE --batch 1 --out torch_train.json

The step is the seed's: LoRA r=16, alpha=32 on the decoder's q,k,v,o,gate,up,down (vision tower
frozen), the chat prompt with the image + "Describe this image in detail.", the caption + EOS as
the only labels, AdamW; forward + backward + optimizer step over `--batch` copies of the example.
Prints and writes {"train_step_s": best of --repeat steps after one warm-up, "tokens": label
tokens per step, "seq_len", "peak_rss_mb", "threads"}. Run it in its own process (peak RSS).
"""

import argparse
import json
import os
import resource
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402
from PIL import Image  # noqa: E402
from peft import LoraConfig, get_peft_model  # noqa: E402
from transformers import AutoModelForImageTextToText, AutoProcessor  # noqa: E402

CAPTION = "A man riding a bicycle down a city street next to parked cars and a red bus."


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("model")
    ap.add_argument("image")
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    proc = AutoProcessor.from_pretrained(a.model)
    model = AutoModelForImageTextToText.from_pretrained(a.model, dtype=torch.float32)
    cfg = LoraConfig(r=16, lora_alpha=32, lora_dropout=0.05,
                     target_modules=r".*text_model.*\.(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj)")
    pm = get_peft_model(model, cfg)
    pm.train()
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Describe this image in detail."}]}]
    text = proc.apply_chat_template(messages, add_generation_prompt=True)
    enc = proc(text=text, images=[Image.open(a.image)], return_tensors="pt")
    eos = proc.tokenizer.convert_tokens_to_ids("<end_of_utterance>")
    target = proc.tokenizer(" " + CAPTION, add_special_tokens=False).input_ids + [eos]
    ids = torch.cat([enc["input_ids"][0], torch.tensor(target)]).unsqueeze(0).repeat(a.batch, 1)
    labels = ids.clone()
    labels[:, : enc["input_ids"].shape[1]] = -100
    pv = enc["pixel_values"].repeat(a.batch, 1, 1, 1, 1)
    pam = enc["pixel_attention_mask"].repeat(a.batch, 1, 1, 1)
    att = torch.ones_like(ids)
    opt = torch.optim.AdamW([p for p in pm.parameters() if p.requires_grad], lr=1e-4)

    def step():
        out = pm(input_ids=ids, attention_mask=att, pixel_values=pv, pixel_attention_mask=pam, labels=labels)
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_([p for p in pm.parameters() if p.requires_grad], 1.0)
        opt.step()
        opt.zero_grad()
        return float(out.loss)

    step()
    times = []
    for _ in range(a.repeat):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    res = {"train_step_s": min(times), "batch": a.batch, "tokens": len(target) * a.batch,
           "seq_len": int(ids.shape[1]), "threads": a.threads,
           "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0}
    print(json.dumps(res))
    if a.out:
        Path(a.out).write_text(json.dumps(res, indent=1))


if __name__ == "__main__":
    sys.exit(main())
