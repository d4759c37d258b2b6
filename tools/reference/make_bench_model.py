#!/usr/bin/env python3
"""Write a random-weight model dir at the real SmolVLM-256M-Instruct size (for benchmarks; not committed).

    /work/venv/bin/python tools/reference/make_bench_model.py [OUT_DIR] [--dtype float32|bfloat16] [--check]

OUT_DIR defaults to /work/fixtures-large/smolvlm-256m-random. Layout and config keys are the hub's
(Idefics3ForConditionalGeneration, model_type idefics3, rope_theta in text_config). The tokenizer is the tiny
600-token fixture tokenizer (ids < vocab 49280; the image/special token ids exist in it); the embedding and
lm_head rows above 600 are random but never produced by the tokenizer. --check runs one forward pass on the
640x480 test photo through AutoProcessor + the reloaded model.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import make_fixtures as mf  # noqa: E402

REAL_PARAMS = 256_484_928  # HuggingFaceTB/SmolVLM-256M-Instruct (FACTS.md)


def bench_config(ids: dict) -> dict:
    vocab = 49280
    tc = mf.text_config(vocab, 576, 30, 9, 3, 64, 1536, False, ids)
    tc["max_position_embeddings"] = 8192
    tc["torch_dtype"] = "bfloat16"
    vc = mf.vision_config("idefics3_vision", 768, 12, 12, 3072, 512, 16, 2048, 512)
    return {
        "architectures": ["Idefics3ForConditionalGeneration"],
        "image_token_id": ids["<image>"],
        "model_type": "idefics3",
        "pad_token_id": ids["<|im_end|>"],
        "scale_factor": 4,
        "text_config": tc,
        "tie_word_embeddings": False,
        "torch_dtype": "bfloat16",
        "transformers_version": "4.46.0",
        "use_cache": True,
        "vision_config": vc,
        "vocab_size": vocab,
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("out", nargs="?", default="/work/fixtures-large/smolvlm-256m-random")
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    ap.add_argument("--check", action="store_true")
    args = ap.parse_args()
    out = Path(args.out)
    t0 = time.time()
    tok = mf.build_tokenizer()
    ids = {t: tok.token_to_id(t) for t in mf.BASE_SPECIALS + mf.VLM_SPECIALS}
    cfg = bench_config(ids)
    cfg["torch_dtype"] = cfg["text_config"]["torch_dtype"] = args.dtype
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    mf.dump_json(out / "config.json", cfg)

    from transformers import Idefics3Config, Idefics3ForConditionalGeneration

    config = Idefics3Config.from_pretrained(out)
    torch.manual_seed(0)
    model = Idefics3ForConditionalGeneration(config).to(torch.float32).eval()
    special_ids = [ids[t] for t in mf.VLM_SPECIALS if t != "<end_of_utterance>"] + [ids["<|endoftext|>"]]
    mf.randomize(model, 0, special_ids, 12.0, ids["<end_of_utterance>"], 1.0, 1.0)
    n = sum(p.numel() for p in model.parameters())
    print(f"parameters: {n:,} (real SmolVLM-256M-Instruct: {REAL_PARAMS:,}; difference {n - REAL_PARAMS:+,})")
    dtype = torch.float32 if args.dtype == "float32" else torch.bfloat16
    model.to(dtype).save_pretrained(out, safe_serialization=True, max_shard_size="5GB")
    mf.dump_json(out / "config.json", cfg)  # hub layout again (save_pretrained rewrote it)
    mf.dump_json(out / "generation_config.json", {
        "_from_model_config": True, "bos_token_id": ids["<|im_start|>"],
        "eos_token_id": ids["<end_of_utterance>"], "pad_token_id": ids["<|im_end|>"],
        "transformers_version": "4.46.0"})
    mf.write_tokenizer_files(tok, out, "Idefics3Processor")
    pre = mf.preprocessor_config("idefics3")
    pre["size"] = {"longest_edge": 2048}
    pre["max_image_size"] = {"longest_edge": 512}
    mf.dump_json(out / "preprocessor_config.json", pre)
    mf.dump_json(out / "processor_config.json", {"image_seq_len": mf.image_seq_len(cfg),
                                                 "processor_class": "Idefics3Processor"})
    mf.dump_json(out / "chat_template.json", {"chat_template": mf.CHAT_TEMPLATE})
    assert mf.image_seq_len(cfg) == 64
    print(f"wrote {out} in {time.time() - t0:.1f}s")
    for f in sorted(out.iterdir()):
        print(f"  {f.stat().st_size:>12,}  {f.name}")

    if args.check:
        from PIL import Image
        from transformers import AutoProcessor

        proc = AutoProcessor.from_pretrained(out)
        m = Idefics3ForConditionalGeneration.from_pretrained(out, dtype=torch.float32).eval()
        text = proc.apply_chat_template(mf.MESSAGES, add_generation_prompt=True)
        inputs = proc(text=text, images=[Image.open(mf.IMG_DIR / "photo_640x480.png")], return_tensors="pt")
        t1 = time.time()
        with torch.no_grad():
            logits = m(**inputs).logits
        print(f"check: pixel_values {tuple(inputs['pixel_values'].shape)}, input_ids {tuple(inputs['input_ids'].shape)}, "
              f"logits {tuple(logits.shape)}, forward {time.time() - t1:.1f}s")


if __name__ == "__main__":
    main()
