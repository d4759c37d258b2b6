#!/usr/bin/env python3
"""Write a random-weight Idefics3 model dir at a real SmolVLM size, with numpy only (no torch).

    python tools/reference/make_size_model.py OUT_DIR --size instruct-2.2b|256m [--dtype F32|BF16]

For benchmarks of memory and speed at sizes where building the model in torch would itself take
the memory being measured (SmolVLM-Instruct, 2.2B parameters: 9 GB in f32). Tensors are written
one at a time straight into model.safetensors in the hub layout (the names, shapes and config keys
of HuggingFaceTB/SmolVLM-Instruct and -256M-Instruct); the parameter count is checked against the
real model's. The tokenizer, chat template and special tokens are the tiny fixture's (ids < 600
exist; the embedding rows above are random but never produced). Not committed; not a parity
fixture (tools/reference/make_bench_model.py builds the torch-checked 256M model).
"""

from __future__ import annotations

import argparse
import json
import shutil
import struct
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
TINY = ROOT / "tests/fixtures/tiny-idefics3"

# (text: hidden, layers, heads, kv heads, head_dim, intermediate, vocab, rope_theta, max_pos;
#  vision: hidden, layers, heads, intermediate, image_size, patch; scale_factor, tile, longest
#  edge; parameters of the real model, from FACTS.md)
SIZES = {
    "instruct-2.2b": dict(
        text=(2048, 24, 32, 32, 64, 8192, 49155, 273768.0, 16384),
        vision=(1152, 27, 16, 4304, 384, 14),
        scale=3,
        longest_edge=1536,
        params=2_246_272_880,
    ),
    "256m": dict(
        text=(576, 30, 9, 3, 64, 1536, 49280, 100000.0, 8192),
        vision=(768, 12, 12, 3072, 512, 16),
        scale=4,
        longest_edge=2048,
        params=256_484_928,
    ),
}


def tensors(size: dict):
    """(name, shape, kind) in checkpoint order; kind picks the random init."""
    h, nl, nh, kvh, hd, inter, vocab, _, _ = size["text"]
    vh, vl, _, vinter, img, patch = size["vision"]
    s = size["scale"]
    v = "model.vision_model"
    yield f"{v}.embeddings.patch_embedding.weight", (vh, 3, patch, patch), "w"
    yield f"{v}.embeddings.patch_embedding.bias", (vh,), "b"
    yield f"{v}.embeddings.position_embedding.weight", ((img // patch) ** 2, vh), "w"
    for i in range(vl):
        p = f"{v}.encoder.layers.{i}"
        for n in ("q_proj", "k_proj", "v_proj", "out_proj"):
            yield f"{p}.self_attn.{n}.weight", (vh, vh), "w"
            yield f"{p}.self_attn.{n}.bias", (vh,), "b"
        for n in ("layer_norm1", "layer_norm2"):
            yield f"{p}.{n}.weight", (vh,), "n"
            yield f"{p}.{n}.bias", (vh,), "b"
        yield f"{p}.mlp.fc1.weight", (vinter, vh), "w"
        yield f"{p}.mlp.fc1.bias", (vinter,), "b"
        yield f"{p}.mlp.fc2.weight", (vh, vinter), "w"
        yield f"{p}.mlp.fc2.bias", (vh,), "b"
    yield f"{v}.post_layernorm.weight", (vh,), "n"
    yield f"{v}.post_layernorm.bias", (vh,), "b"
    yield "model.connector.modality_projection.proj.weight", (h, vh * s * s), "w"
    t = "model.text_model"
    yield f"{t}.embed_tokens.weight", (vocab, h), "w"
    for i in range(nl):
        p = f"{t}.layers.{i}"
        yield f"{p}.self_attn.q_proj.weight", (nh * hd, h), "w"
        yield f"{p}.self_attn.k_proj.weight", (kvh * hd, h), "w"
        yield f"{p}.self_attn.v_proj.weight", (kvh * hd, h), "w"
        yield f"{p}.self_attn.o_proj.weight", (h, nh * hd), "w"
        yield f"{p}.mlp.gate_proj.weight", (inter, h), "w"
        yield f"{p}.mlp.up_proj.weight", (inter, h), "w"
        yield f"{p}.mlp.down_proj.weight", (h, inter), "w"
        yield f"{p}.input_layernorm.weight", (h,), "n"
        yield f"{p}.post_attention_layernorm.weight", (h,), "n"
    yield f"{t}.norm.weight", (h,), "n"
    yield "lm_head.weight", (vocab, h), "w"


def config(size: dict) -> dict:
    h, nl, nh, kvh, hd, inter, vocab, theta, max_pos = size["text"]
    vh, vl, vheads, vinter, img, patch = size["vision"]
    tiny = json.loads((TINY / "config.json").read_text())
    tc = dict(tiny["text_config"])
    tc.update(
        hidden_size=h,
        num_hidden_layers=nl,
        num_attention_heads=nh,
        num_key_value_heads=kvh,
        head_dim=hd,
        intermediate_size=inter,
        vocab_size=vocab,
        rope_theta=theta,
        max_position_embeddings=max_pos,
    )
    vc = dict(tiny["vision_config"])
    vc.update(
        hidden_size=vh,
        num_hidden_layers=vl,
        num_attention_heads=vheads,
        intermediate_size=vinter,
        image_size=img,
        patch_size=patch,
        max_image_size={"longest_edge": img},
        size={"longest_edge": size["longest_edge"]},
    )
    cfg = dict(tiny)
    cfg.update(text_config=tc, vision_config=vc, scale_factor=size["scale"], vocab_size=vocab)
    return cfg


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("out", type=Path)
    ap.add_argument("--size", choices=sorted(SIZES), default="instruct-2.2b")
    ap.add_argument("--dtype", choices=["F32", "BF16"], default="F32")
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    size = SIZES[a.size]
    specs = list(tensors(size))
    count = sum(int(np.prod(shape)) for _, shape, _ in specs)
    if count != size["params"]:
        raise SystemExit(f"{a.size}: {count} parameters, the real model has {size['params']}")
    a.out.mkdir(parents=True, exist_ok=True)
    for f in TINY.iterdir():
        if f.name not in ("model.safetensors", "config.json"):
            shutil.copy(f, a.out / f.name)
    (a.out / "config.json").write_text(json.dumps(config(size), indent=2) + "\n")
    vh, _, _, _, img, patch = size["vision"]
    pre = json.loads((TINY / "preprocessor_config.json").read_text())
    pre.update(max_image_size={"longest_edge": img}, size={"longest_edge": size["longest_edge"]})
    (a.out / "preprocessor_config.json").write_text(json.dumps(pre, indent=2) + "\n")
    seq = (img // patch) ** 2 // size["scale"] ** 2
    proc = json.loads((TINY / "processor_config.json").read_text())
    proc["image_seq_len"] = seq
    (a.out / "processor_config.json").write_text(json.dumps(proc, indent=2) + "\n")

    width = 4 if a.dtype == "F32" else 2
    header, offset = {}, 0
    for name, shape, _ in specs:
        n = int(np.prod(shape)) * width
        header[name] = {"dtype": a.dtype, "shape": list(shape), "data_offsets": [offset, offset + n]}
        offset += n
    header["__metadata__"] = {"format": "pt"}
    hb = json.dumps(header, separators=(",", ":")).encode()
    hb += b" " * (-len(hb) % 8)
    rng = np.random.default_rng(a.seed)
    with open(a.out / "model.safetensors", "wb") as f:
        f.write(struct.pack("<Q", len(hb)))
        f.write(hb)
        for name, shape, kind in specs:
            n = int(np.prod(shape))
            # Scaled like a trained model's so activations neither vanish nor explode.
            fan_in = int(np.prod(shape[1:])) if len(shape) > 1 else 1
            chunk = 1 << 24
            for s0 in range(0, n, chunk):
                m = min(chunk, n - s0)
                if kind == "w":
                    x = rng.standard_normal(m, dtype=np.float32) * np.float32(fan_in**-0.5)
                elif kind == "n":
                    x = np.float32(1.0) + rng.standard_normal(m, dtype=np.float32) * np.float32(0.1)
                else:
                    x = rng.standard_normal(m, dtype=np.float32) * np.float32(0.02)
                if a.dtype == "BF16":
                    x = (x.view(np.uint32) >> 16).astype(np.uint16)
                f.write(x.tobytes())
    print(f"{a.out}: {a.size}, {count:,} parameters, {a.dtype}, {offset / 2**30:.2f} GiB of weights")


if __name__ == "__main__":
    main()
