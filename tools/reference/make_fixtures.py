#!/usr/bin/env python3
"""Regenerate smolcap's committed test fixtures and expected outputs.

Run from the repository root:

    /work/venv/bin/python tools/reference/make_fixtures.py

Everything is deterministic (fixed seeds, CPU, float32). It writes:

  tests/fixtures/images/                      test images (PNG + one JPEG)
  tests/fixtures/tiny-idefics3/               random-weight Idefics3 model dir (hub layout)
  tests/fixtures/tiny-idefics3-bf16/          same weights stored as bf16
  tests/fixtures/tiny-idefics3-sharded/       same weights in 3 safetensors shards + index
  tests/fixtures/tiny-smolvlm/                random-weight SmolVLM (model_type smolvlm) dir
  tests/fixtures/expected/<model>/cases.json  non-tensor expectations per case
  tests/fixtures/expected/<model>/<case>.safetensors   tensor expectations per case

Requires transformers 5.x with the PIL image-processing path (torchvision must NOT be installed).
"""

from __future__ import annotations

import copy
import json
import os
import random
import shutil
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402
from safetensors.numpy import save_file as np_save_file  # noqa: E402
from safetensors.torch import load_file as torch_load_file  # noqa: E402
from safetensors.torch import save_file as torch_save_file  # noqa: E402
from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, processors, trainers  # noqa: E402

import transformers  # noqa: E402
from transformers import AutoProcessor, AutoTokenizer  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
FIX = ROOT / "tests" / "fixtures"
IMG_DIR = FIX / "images"
EXP_DIR = FIX / "expected"

torch.set_num_threads(2)
torch.use_deterministic_algorithms(True)

# --------------------------------------------------------------------------------------------
# Chat template (SmolVLM-Instruct's, verbatim)
# --------------------------------------------------------------------------------------------
CHAT_TEMPLATE = (
    "<|im_start|>{% for message in messages %}{{message['role'] | capitalize}}"
    "{% if message['content'][0]['type'] == 'image' %}{{':'}}{% else %}{{': '}}{% endif %}"
    "{% for line in message['content'] %}{% if line['type'] == 'text' %}{{line['text']}}"
    "{% elif line['type'] == 'image' %}{{ '<image>' }}{% endif %}{% endfor %}<end_of_utterance>\n"
    "{% endfor %}{% if add_generation_prompt %}{{ 'Assistant:' }}{% endif %}"
)
PROMPT = "Describe this image in detail."
MESSAGES = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": PROMPT}]}]

BASE_SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
VLM_SPECIALS = (
    ["<global-img>"]
    + [f"<row_{r}_col_{c}>" for r in range(1, 7) for c in range(1, 7)]
    + ["<fake_token_around_image>", "<image>", "<end_of_utterance>"]
)
BPE_VOCAB = 560  # incl. the 3 base specials and the 256-byte alphabet; +40 VLM specials = 600


# --------------------------------------------------------------------------------------------
# Tokenizer
# --------------------------------------------------------------------------------------------
def caption_corpus(n: int = 6000, seed: int = 1234) -> list[str]:
    rng = random.Random(seed)
    dets = ["a", "the", "an old", "two", "three", "several", "some", "many", "one", "a small", "a large"]
    adjs = ["red", "blue", "green", "white", "black", "yellow", "brown", "wooden", "tall", "small", "large",
            "young", "old", "busy", "empty", "shiny", "dark", "bright", "colorful", "little", "striped"]
    nouns = ["man", "woman", "dog", "cat", "bus", "train", "car", "bicycle", "table", "plate", "pizza", "street",
             "kitchen", "room", "bed", "horse", "giraffe", "elephant", "boy", "girl", "person", "people", "sign",
             "clock", "tower", "building", "field", "beach", "wave", "surfboard", "skateboard", "bench", "tree",
             "window", "umbrella", "laptop", "phone", "sandwich", "cake", "banana", "zebra", "boat", "water",
             "sky", "grass", "road", "player", "ball", "bat", "frisbee", "kite", "toilet", "sink", "truck"]
    verbs = ["is standing", "is sitting", "is riding", "are walking", "is holding", "is eating", "is parked",
             "are playing", "is flying", "is lying", "sits", "stands", "walks", "rides", "holds", "looks"]
    preps = ["on", "in", "next to", "near", "under", "behind", "in front of", "on top of", "beside", "with",
             "across", "along", "inside", "at"]
    extras = ["", "", "", " in the background", " on a sunny day", " at night", " in the snow", " with a smile",
              " while people watch", " near the water"]
    chat_bits = ["User:", "Assistant:", "Describe this image in detail.", "What is in this picture?",
                 "Describe the image.", "Caption:", "Answer briefly."]
    out = []
    for i in range(n):
        k = rng.random()
        if k < 0.08:
            out.append(rng.choice(chat_bits) + " " + rng.choice(chat_bits))
            continue
        s = (f"{rng.choice(dets)} {rng.choice(adjs)} {rng.choice(nouns)} {rng.choice(verbs)} "
             f"{rng.choice(preps)} {rng.choice(dets)} {rng.choice(adjs)} {rng.choice(nouns)}{rng.choice(extras)}")
        s = s[0].upper() + s[1:]
        if k < 0.25:
            s += f" with {rng.randint(0, 2025)} {rng.choice(nouns)}s"
        if k > 0.9:
            s += ", and " + rng.choice(dets) + " " + rng.choice(nouns) + " " + rng.choice(verbs)
        s += rng.choice([".", ".", ".", "!", "?", ""])
        if k > 0.95:
            s += "\n" + rng.choice(chat_bits) + "\n\n"
        if 0.5 < k < 0.52:
            s = "  " + s + "  "
        out.append(s)
    return out


def build_tokenizer() -> Tokenizer:
    tok = Tokenizer(models.BPE(dropout=None, unk_token=None, fuse_unk=False, byte_fallback=False))
    tok.normalizer = None
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Digits(individual_digits=True),
         pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=True)]
    )
    tok.post_processor = processors.ByteLevel(add_prefix_space=True, trim_offsets=False, use_regex=True)
    tok.decoder = decoders.ByteLevel(add_prefix_space=True, trim_offsets=True, use_regex=True)
    trainer = trainers.BpeTrainer(
        vocab_size=BPE_VOCAB,
        min_frequency=2,
        show_progress=False,
        special_tokens=[AddedToken(t, special=True, normalized=False) for t in BASE_SPECIALS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(caption_corpus(), trainer=trainer)
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in VLM_SPECIALS])
    assert tok.token_to_id("<|endoftext|>") == 0
    return tok


def special_entry(content: str) -> dict:
    return {"content": content, "lstrip": False, "normalized": False, "rstrip": False, "single_word": False}


def write_tokenizer_files(tok: Tokenizer, out: Path, processor_class: str) -> None:
    tok.save(str(out / "tokenizer.json"))
    added = {}
    for t in BASE_SPECIALS + VLM_SPECIALS:
        e = special_entry(t)
        e["special"] = True
        added[str(tok.token_to_id(t))] = e
    extra = ["<fake_token_around_image>", "<image>", "<end_of_utterance>"]
    tok_cfg = {
        "add_prefix_space": False,
        "added_tokens_decoder": added,
        "additional_special_tokens": extra,
        "bos_token": "<|im_start|>",
        "clean_up_tokenization_spaces": False,
        "eos_token": "<end_of_utterance>",
        "extra_special_tokens": {},
        "legacy": False,
        "model_max_length": 8192,
        "pad_token": "<|im_end|>",
        "processor_class": processor_class,
        "tokenizer_class": "PreTrainedTokenizerFast",
        "unk_token": "<|endoftext|>",
        "vocab_size": tok.get_vocab_size(with_added_tokens=False),
    }
    dump_json(out / "tokenizer_config.json", tok_cfg)
    stm = {
        "additional_special_tokens": [special_entry(t) for t in extra],
        "bos_token": special_entry("<|im_start|>"),
        "eos_token": special_entry("<end_of_utterance>"),
        "pad_token": special_entry("<|im_end|>"),
        "unk_token": special_entry("<|endoftext|>"),
    }
    dump_json(out / "special_tokens_map.json", stm)


# --------------------------------------------------------------------------------------------
# Images
# --------------------------------------------------------------------------------------------
def synth_rgb(w: int, h: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    u, v = xx / max(w - 1, 1), yy / max(h - 1, 1)
    r = 40 + 180 * u + 20 * np.sin(6.0 * v + seed)
    g = 30 + 150 * v + 40 * np.cos(5.0 * u * v + seed)
    b = 200 - 120 * u * v + 30 * np.sin(9.0 * (u + v))
    img = np.stack([r, g, b], -1)
    # hard-edged shapes (resampling kernels matter at edges)
    for _ in range(6):
        cx, cy = rng.uniform(0, w), rng.uniform(0, h)
        rad = rng.uniform(0.05, 0.25) * min(w, h) + 1
        col = rng.uniform(0, 255, size=3)
        if rng.random() < 0.5:
            m = (xx - cx) ** 2 + (yy - cy) ** 2 < rad ** 2
        else:
            m = (np.abs(xx - cx) < rad) & (np.abs(yy - cy) < 0.6 * rad)
        img[m] = col
    # thin stripes (high frequency) in one band
    band = (yy > 0.7 * h) & (yy < 0.8 * h)
    img[band & ((xx.astype(int) // 2) % 2 == 0)] = [250, 250, 250]
    img += rng.normal(0, 6, size=img.shape)
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)


def make_images() -> dict[str, Path]:
    IMG_DIR.mkdir(parents=True, exist_ok=True)
    paths = {}

    def save(name, im, **kw):
        p = IMG_DIR / name
        im.save(p, **kw)
        paths[name] = p

    photo = synth_rgb(640, 480, 1)
    save("photo_640x480.png", Image.fromarray(photo, "RGB"), optimize=True)
    save("photo_640x480.jpg", Image.fromarray(photo, "RGB"), quality=90)
    save("tiny_20x15.png", Image.fromarray(synth_rgb(20, 15, 2), "RGB"))
    save("pano_400x60.png", Image.fromarray(synth_rgb(400, 60, 3), "RGB"), optimize=True)
    save("portrait_90x200.png", Image.fromarray(synth_rgb(90, 200, 4), "RGB"), optimize=True)
    g = synth_rgb(120, 90, 5).astype(np.float64)
    gray = np.clip(np.rint(0.299 * g[..., 0] + 0.587 * g[..., 1] + 0.114 * g[..., 2]), 0, 255).astype(np.uint8)
    save("gray_120x90.png", Image.fromarray(gray, "L"), optimize=True)
    rgb = synth_rgb(100, 80, 6)
    yy, xx = np.mgrid[0:80, 0:100]
    alpha = np.clip((xx * 255.0 / 99.0) + 40 * np.sin(yy / 7.0), 0, 255).astype(np.uint8)
    alpha[:, :10] = 0  # fully transparent columns
    alpha[:, -10:] = 255  # fully opaque columns
    alpha[30:40, 40:60] = 0
    rgba = np.concatenate([rgb, alpha[..., None]], -1)
    save("rgba_100x80.png", Image.fromarray(rgba, "RGBA"), optimize=True)
    save("square_32x32.png", Image.fromarray(synth_rgb(32, 32, 7), "RGB"))
    # sanity on modes
    assert Image.open(paths["gray_120x90.png"]).mode == "L"
    a = np.array(Image.open(paths["rgba_100x80.png"]))
    assert Image.open(paths["rgba_100x80.png"]).mode == "RGBA" and a[..., 3].min() == 0 and a[..., 3].max() == 255
    return paths


# --------------------------------------------------------------------------------------------
# Model configs (hub layout, as in HuggingFaceTB/SmolVLM-256M-Instruct's config.json)
# --------------------------------------------------------------------------------------------
def dump_json(path: Path, obj) -> None:
    with open(path, "w") as f:
        json.dump(obj, f, indent=2, sort_keys=True, ensure_ascii=False)
        f.write("\n")


def text_config(vocab, hidden, layers, heads, kv_heads, head_dim, inter, tie, ids):
    return {
        "architectures": ["VLlama3ForCausalLM"],
        "attention_bias": False,
        "attention_dropout": 0.0,
        "bos_token_id": ids["<|im_start|>"],
        "eos_token_id": ids["<|im_end|>"],
        "head_dim": head_dim,
        "hidden_act": "silu",
        "hidden_size": hidden,
        "initializer_range": 0.02,
        "intermediate_size": inter,
        "max_position_embeddings": 2048,
        "mlp_bias": False,
        "model_type": "llama",
        "num_attention_heads": heads,
        "num_hidden_layers": layers,
        "num_key_value_heads": kv_heads,
        "pad_token_id": ids["<|im_end|>"],
        "pretraining_tp": 1,
        "rms_norm_eps": 1e-05,
        "rope_scaling": None,
        "rope_theta": 100000,
        "tie_word_embeddings": tie,
        "torch_dtype": "float32",
        "use_cache": True,
        "vocab_size": vocab,
    }


def vision_config(model_type, hidden, layers, heads, inter, image_size, patch, longest, max_size):
    return {
        "hidden_act": "gelu_pytorch_tanh",
        "hidden_size": hidden,
        "image_size": image_size,
        "intermediate_size": inter,
        "layer_norm_eps": 1e-06,
        "max_image_size": {"longest_edge": max_size},
        "model_type": model_type,
        "num_attention_heads": heads,
        "num_channels": 3,
        "num_hidden_layers": layers,
        "patch_size": patch,
        "size": {"longest_edge": longest},
        "tie_word_embeddings": False,
        "use_base_siglip": False,
    }


def hub_config(kind: str, ids: dict, vocab: int) -> dict:
    if kind == "idefics3":
        tc = text_config(vocab, 64, 2, 4, 2, 16, 128, False, ids)
        vc = vision_config("idefics3_vision", 32, 2, 4, 64, 32, 8, 96, 32)
        arch, mt, tie, sf = "Idefics3ForConditionalGeneration", "idefics3", False, 2
    else:
        tc = text_config(vocab, 48, 3, 4, 1, 12, 96, True, ids)
        vc = vision_config("smolvlm_vision", 32, 2, 4, 48, 32, 8, 32, 32)
        arch, mt, tie, sf = "SmolVLMForConditionalGeneration", "smolvlm", True, 2
    return {
        "architectures": [arch],
        "image_token_id": ids["<image>"],
        "model_type": mt,
        "pad_token_id": ids["<|im_end|>"],
        "scale_factor": sf,
        "text_config": tc,
        "tie_word_embeddings": tie,
        "torch_dtype": "float32",
        "transformers_version": "4.46.0",
        "use_cache": True,
        "vision_config": vc,
        "vocab_size": vocab,
    }


def preprocessor_config(kind: str) -> dict:
    if kind == "idefics3":
        return {
            "do_convert_rgb": True,
            "do_image_splitting": True,
            "do_normalize": True,
            "do_pad": True,
            "do_rescale": True,
            "do_resize": True,
            "image_mean": [0.5, 0.5, 0.5],
            "image_processor_type": "Idefics3ImageProcessor",
            "image_std": [0.5, 0.5, 0.5],
            "max_image_size": {"longest_edge": 32},
            "processor_class": "Idefics3Processor",
            "resample": 1,
            "rescale_factor": 0.00392156862745098,
            "size": {"longest_edge": 96},
        }
    return {
        "do_convert_rgb": True,
        "do_image_splitting": False,
        "do_normalize": True,
        "do_pad": True,
        "do_rescale": True,
        "do_resize": True,
        "image_mean": [0.5, 0.5, 0.5],
        "image_processor_type": "SmolVLMImageProcessor",
        "image_std": [0.5, 0.5, 0.5],
        "max_image_size": {"longest_edge": 32},
        "processor_class": "SmolVLMProcessor",
        "resample": 1,
        "rescale_factor": 0.00392156862745098,
        "size": {"longest_edge": 32},
    }


# --------------------------------------------------------------------------------------------
# Random weights
# --------------------------------------------------------------------------------------------
def randomize(model: torch.nn.Module, seed: int, special_ids: list[int], lm_gain: float, eos_id: int,
              eos_boost: float, embed_std: float) -> None:
    g = torch.Generator().manual_seed(seed)

    def normal(shape, std):
        return torch.randn(shape, generator=g, dtype=torch.float32) * std

    with torch.no_grad():
        for name, p in sorted(model.named_parameters(), key=lambda kv: kv[0]):
            if name.endswith("bias"):
                p.copy_(normal(p.shape, 0.1))
            elif "norm" in name and p.ndim == 1:  # LayerNorm / RMSNorm weights
                p.copy_(1.0 + (torch.rand(p.shape, generator=g) * 0.4 - 0.2))
                if name == "model.text_model.norm.weight" and model.config.tie_word_embeddings:
                    # tied head: scale logits through the final norm instead of the (shared) embedding
                    p.mul_(lm_gain)
            elif "position_embedding" in name:
                p.copy_(normal(p.shape, 0.5))
            elif "embed_tokens" in name:
                p.copy_(normal(p.shape, embed_std))
            elif name == "lm_head.weight":
                p.copy_(normal(p.shape, lm_gain / p.shape[1] ** 0.5))
            elif "patch_embedding" in name:
                fan_in = p[0].numel()
                p.copy_(normal(p.shape, 1.5 / fan_in ** 0.5))
            elif p.ndim == 2:
                p.copy_(normal(p.shape, 1.2 / p.shape[1] ** 0.5))
            else:
                raise RuntimeError(f"unhandled parameter {name} {tuple(p.shape)}")
        # make the image/layout special tokens unlikely outputs (they are never real caption tokens)
        head = model.lm_head.weight
        if not model.config.tie_word_embeddings:
            head[special_ids] *= 0.25
        else:
            assert head.data_ptr() == model.model.text_model.embed_tokens.weight.data_ptr()
        # make end-of-utterance reachable so greedy/beam search sometimes stop early
        head[eos_id] *= eos_boost


# --------------------------------------------------------------------------------------------
# Model dirs
# --------------------------------------------------------------------------------------------
def model_classes(kind):
    if kind == "idefics3":
        from transformers import Idefics3Config, Idefics3ForConditionalGeneration
        return Idefics3Config, Idefics3ForConditionalGeneration
    from transformers import SmolVLMConfig, SmolVLMForConditionalGeneration
    return SmolVLMConfig, SmolVLMForConditionalGeneration


def build_model_dir(kind: str, out: Path, tok: Tokenizer, seed: int, lm_gain: float, eos_boost: float = 1.0,
                    embed_std: float = 1.0):
    ids = {t: tok.token_to_id(t) for t in BASE_SPECIALS + VLM_SPECIALS}
    vocab = tok.get_vocab_size(with_added_tokens=True)
    cfg_dict = hub_config(kind, ids, vocab)
    Cfg, Model = model_classes(kind)
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    # Write the hub-layout config first and build the model *from that file*, so the config we
    # ship is the one the weights were made with.
    dump_json(out / "config.json", cfg_dict)
    config = Cfg.from_pretrained(out)
    torch.manual_seed(seed)
    model = Model(config).to(torch.float32).eval()
    special_ids = [ids[t] for t in VLM_SPECIALS if t != "<end_of_utterance>"] + [ids["<|endoftext|>"]]
    randomize(model, seed, special_ids, lm_gain, ids["<end_of_utterance>"], eos_boost, embed_std)
    with tempfile.TemporaryDirectory() as td:
        model.save_pretrained(td, safe_serialization=True)
        shutil.copy(Path(td) / "model.safetensors", out / "model.safetensors")
        saved_cfg = json.load(open(Path(td) / "config.json"))
    dump_json(out / "config.json", cfg_dict)  # hub layout, not transformers-5's rope_parameters layout
    gen = {
        "_from_model_config": True,
        "bos_token_id": ids["<|im_start|>"],
        "eos_token_id": ids["<end_of_utterance>"],
        "pad_token_id": ids["<|im_end|>"],
        "transformers_version": "4.46.0",
    }
    dump_json(out / "generation_config.json", gen)
    proc_class = "Idefics3Processor" if kind == "idefics3" else "SmolVLMProcessor"
    write_tokenizer_files(tok, out, proc_class)
    dump_json(out / "preprocessor_config.json", preprocessor_config(kind))
    dump_json(out / "processor_config.json", {"image_seq_len": image_seq_len(cfg_dict), "processor_class": proc_class})
    dump_json(out / "chat_template.json", {"chat_template": CHAT_TEMPLATE})
    return model, saved_cfg


def image_seq_len(cfg: dict) -> int:
    v = cfg["vision_config"]
    return int(((v["image_size"] // v["patch_size"]) ** 2) / (cfg["scale_factor"] ** 2))


def load_model(kind: str, path: Path):
    _, Model = model_classes(kind)
    m = Model.from_pretrained(path, dtype=torch.float32).eval()
    return m


def load_processor(kind: str, path: Path):
    """AutoProcessor for idefics3. SmolVLMProcessor needs a torchvision video processor and num2words,
    neither of which we install; its image-prompt expansion is identical to Idefics3Processor's (checked
    below), so for tiny-smolvlm we assemble an Idefics3Processor around the SmolVLM PIL image processor."""
    if kind == "idefics3":
        proc = AutoProcessor.from_pretrained(path)
        return proc, "AutoProcessor"
    try:
        proc = AutoProcessor.from_pretrained(path)
        return proc, "AutoProcessor"
    except Exception as e:  # expected without torchvision / num2words
        note = f"AutoProcessor failed ({type(e).__name__}: {str(e).splitlines()[0][:120]})"
    from transformers import Idefics3Processor
    from transformers.models.smolvlm.image_processing_pil_smolvlm import SmolVLMImageProcessorPil
    ip = SmolVLMImageProcessorPil.from_pretrained(path)
    tk = AutoTokenizer.from_pretrained(path)
    pc = json.load(open(path / "processor_config.json"))
    ct = json.load(open(path / "chat_template.json"))["chat_template"]
    proc = Idefics3Processor(image_processor=ip, tokenizer=tk, image_seq_len=pc["image_seq_len"], chat_template=ct)
    return proc, note + "; used Idefics3Processor(SmolVLMImageProcessorPil, tokenizer)"


# --------------------------------------------------------------------------------------------
# Checks
# --------------------------------------------------------------------------------------------
def check_tokenizer(tok: Tokenizer, path: Path) -> None:
    hf = AutoTokenizer.from_pretrained(path)
    samples = caption_corpus(200, seed=99) + [
        "and  12", "A man with 2025 dogs.\n\nUser: hi", "<|im_start|>User:<image>Describe this image in detail."
        "<end_of_utterance>\nAssistant:", "  leading spaces", "ünïcödé ✓ 😀", "<row_3_col_4><global-img>x",
        "\n\n\n", "tabs\tand\r\nnewlines",
    ]
    for s in samples:
        a = hf(s, add_special_tokens=True)["input_ids"]
        b = tok.encode(s, add_special_tokens=True).ids
        assert a == b, (s, a, b)
        assert hf.decode(a, skip_special_tokens=False) == tok.decode(b, skip_special_tokens=False), s
    assert len(hf) == tok.get_vocab_size(with_added_tokens=True), (len(hf), tok.get_vocab_size())
    assert hf.eos_token == "<end_of_utterance>" and hf.pad_token == "<|im_end|>"
    for t in VLM_SPECIALS + BASE_SPECIALS:
        assert hf.convert_tokens_to_ids(t) == tok.token_to_id(t)
    # The same tokenizer.json loaded by the tokenizers library directly
    tok2 = Tokenizer.from_file(str(path / "tokenizer.json"))
    assert tok2.encode("and  12 <image>").ids == tok.encode("and  12 <image>").ids


def check_loaded_config(cfg, hub: dict) -> None:
    """transformers must read the hub-layout config.json to the values we wrote (rope_theta etc.)."""
    t, v = cfg.text_config, cfg.vision_config
    ht, hv = hub["text_config"], hub["vision_config"]
    rope = getattr(t, "rope_parameters", None) or {"rope_theta": getattr(t, "rope_theta", None)}
    assert rope["rope_theta"] == ht["rope_theta"], rope
    for k in ("hidden_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads", "head_dim",
              "intermediate_size", "rms_norm_eps", "vocab_size"):
        assert getattr(t, k) == ht[k], (k, getattr(t, k), ht[k])
    for k in ("hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size", "image_size",
              "patch_size", "layer_norm_eps", "hidden_act"):
        assert getattr(v, k) == hv[k], (k, getattr(v, k), hv[k])
    assert cfg.scale_factor == hub["scale_factor"] and cfg.image_token_id == hub["image_token_id"]
    assert cfg.tie_word_embeddings == hub["tie_word_embeddings"]


def compare_models(a, b, inputs) -> float:
    with torch.no_grad():
        la = a(**inputs).logits
        lb = b(**inputs).logits
    return float((la - lb).abs().max())


def gap_stats(step_logits: torch.Tensor) -> float:
    top2 = step_logits.topk(2, dim=-1).values
    return float((top2[..., 0] - top2[..., 1]).min())


def _longest(size) -> int:
    return size["longest_edge"] if isinstance(size, dict) else size.longest_edge


def manual_pixel_values(im: Image.Image, longest: int, tile: int, split: bool) -> tuple[np.ndarray, int, int]:
    """Independent re-statement of the transformers-5 PIL image path, used to pin its semantics.

    1. convert to RGB first: images with alpha (or a transparency key) are alpha_composite'd onto
       opaque white, everything else goes through Image.convert("RGB") (L -> RGB replicates the channel);
    2. resize (LANCZOS, from uint8) so the longest edge == `longest`, short side int(long/aspect) made even;
    3. if splitting: resize (LANCZOS, from the uint8 result of 2) so both sides are multiples of `tile`;
       crop row-major tiles; append the global image = (the image of this step) resized to tile x tile;
       otherwise resize the image of step 2 to tile x tile;
    4. f32(f64(u8) * (1/255)), then (x - 0.5) / 0.5 in f32.
    """
    if "A" in im.getbands() or im.info.get("transparency") is not None:
        rgba = im.convert("RGBA")
        bg = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        rgb = Image.alpha_composite(bg, rgba).convert("RGB")
    else:
        rgb = im.convert("RGB")
    w, h = rgb.size
    if w >= h:
        nw, nh = longest, int(longest / (w / h))
        nh += nh % 2
    else:
        nh, nw = longest, int(longest * (w / h))
        nw += nw % 2
    nw, nh = max(nw, 1), max(nh, 1)
    rgb = rgb.resize((nw, nh), Image.LANCZOS)
    rows = cols = 0
    if split:
        import math
        w, h = rgb.size
        if w >= h:
            nw = math.ceil(w / tile) * tile
            nh = math.ceil(int(nw / (w / h)) / tile) * tile
        else:
            nh = math.ceil(h / tile) * tile
            nw = math.ceil(int(nh * (w / h)) / tile) * tile
        rgb = rgb.resize((nw, nh), Image.LANCZOS)
        frames = []
        if nw > tile or nh > tile:
            rows, cols = nh // tile, nw // tile
            for r in range(rows):
                for c in range(cols):
                    frames.append(rgb.crop((c * tile, r * tile, (c + 1) * tile, (r + 1) * tile)))
            frames.append(rgb.resize((tile, tile), Image.LANCZOS))
        else:
            frames.append(rgb)
    else:
        frames = [rgb.resize((tile, tile), Image.LANCZOS)]
    arr = np.stack([np.asarray(f).transpose(2, 0, 1) for f in frames])
    x = (arr.astype(np.float64) * (1 / 255)).astype(np.float32)
    x = (x - np.float32(0.5)) / np.float32(0.5)
    return x, rows, cols


# --------------------------------------------------------------------------------------------
# Expected outputs
# --------------------------------------------------------------------------------------------
def to_list(t):
    return t.tolist() if isinstance(t, torch.Tensor) else t


def run_generate(model, inputs, **kw):
    torch.manual_seed(0)
    with torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=12, do_sample=False, return_dict_in_generate=True,
                             output_logits=True, output_scores=True, **kw)
    prompt_len = inputs["input_ids"].shape[1]
    new = out.sequences[:, prompt_len:]
    return out, new


def strip_after_eos(row: list[int], eos: int, pad: int) -> list[int]:
    """generate pads finished rows with pad_token_id; keep tokens up to and including the first eos."""
    if eos in row:
        return row[: row.index(eos) + 1]
    return row


def make_case(model, proc, name, image_files, prompts, images_kwargs, extra_proc_kwargs, eos, pad):
    images = [Image.open(IMG_DIR / f) for f in image_files]
    modes = [im.mode for im in images]
    for f, im in zip(image_files, images):
        if f.endswith(".jpg"):
            assert im.format == "JPEG" and type(im).__name__ == "JpegImageFile"  # Pillow's libjpeg(-turbo) decoder
    call_kwargs = dict(return_tensors="pt")
    call_kwargs.update(extra_proc_kwargs)
    if images_kwargs:
        call_kwargs["images_kwargs"] = images_kwargs
    text = prompts if len(prompts) > 1 else prompts[0]
    imgs_arg = [[im] for im in images] if len(images) > 1 else [images[0]]
    inputs = proc(text=text, images=imgs_arg, **call_kwargs)
    # rows/cols as the processor computed them
    rc_kwargs = dict(images_kwargs or {})
    rc = proc.image_processor([[im] for im in images], return_row_col_info=True, **rc_kwargs)
    rows = [r[0] for r in rc["rows"]]
    cols = [c[0] for c in rc["cols"]]
    assert torch.equal(rc["pixel_values"] if isinstance(rc["pixel_values"], torch.Tensor)
                       else torch.tensor(np.asarray(rc["pixel_values"])), inputs["pixel_values"])
    batch = inputs["input_ids"].shape[0]
    ipc = proc.image_processor
    longest = _longest((images_kwargs or {}).get("size", ipc.size))
    for i, im in enumerate(images):
        ref, r_, c_ = manual_pixel_values(im, longest, _longest(ipc.max_image_size), ipc.do_image_splitting)
        got = inputs["pixel_values"][i, : ref.shape[0]].numpy()
        assert (r_, c_) == (rows[i], cols[i]) and np.array_equal(ref, got), f"{name}: manual pipeline differs"
    tensors = {
        "pixel_values": inputs["pixel_values"].to(torch.float32).contiguous(),
        "pixel_attention_mask": inputs["pixel_attention_mask"].to(torch.uint8).contiguous(),
    }
    model_inputs = {k: v for k, v in inputs.items() if k in ("input_ids", "attention_mask", "pixel_values",
                                                              "pixel_attention_mask")}
    with torch.no_grad():
        img_out = model.model.get_image_features(pixel_values=inputs["pixel_values"],
                                                 pixel_attention_mask=inputs["pixel_attention_mask"])
        vision_last = img_out.last_hidden_state
        feats = torch.cat([f.reshape(-1, image_seq_len_of(model), f.shape[-1]) for f in img_out.pooler_output], 0)
        fwd = model(**model_inputs)
    logits = fwd.logits.to(torch.float32)
    tensors["vision_last_hidden"] = vision_last.contiguous()
    tensors["image_features"] = feats.contiguous()
    am = inputs["attention_mask"]
    last_idx = [int(am[b].nonzero().max()) for b in range(batch)]
    if batch == 1:
        tensors["logits_all"] = logits[0].contiguous()
        tensors["logits_last"] = logits[0, -1].contiguous()
    else:
        tensors["logits_last"] = torch.stack([logits[b, last_idx[b]] for b in range(batch)]).contiguous()

    # greedy
    g_out, g_new = run_generate(model, model_inputs)
    step_logits = torch.stack(g_out.logits, 1).to(torch.float32)  # [B, steps, vocab]
    greedy = [strip_after_eos(r, eos, pad) for r in g_new.tolist()]
    min_gaps = []
    for b in range(batch):
        n = len(greedy[b])
        min_gaps.append(gap_stats(step_logits[b, :n]))
    tensors["greedy_step_logits"] = (step_logits[0] if batch == 1 else step_logits).contiguous()
    # beams
    b3_out, b3_new = run_generate(model, model_inputs, num_beams=3)
    b2_out, b2_new = run_generate(model, model_inputs, num_beams=2, length_penalty=0.5, early_stopping=True)
    beam3 = [strip_after_eos(r, eos, pad) for r in b3_new.tolist()]
    beam2 = [strip_after_eos(r, eos, pad) for r in b2_new.tolist()]
    dec = lambda rows_: [proc.tokenizer.decode(r, skip_special_tokens=True) for r in rows_]  # noqa: E731
    gc = model.generation_config
    dflt = transformers.GenerationConfig._get_default_generation_params()
    lp = gc.length_penalty if gc.length_penalty is not None else dflt["length_penalty"]
    es = gc.early_stopping if gc.early_stopping is not None else dflt["early_stopping"]
    expanded = [proc.tokenizer.decode([t for t, m in zip(ids_, am_) if m], skip_special_tokens=False)
                for ids_, am_ in zip(inputs["input_ids"].tolist(), inputs["attention_mask"].tolist())]
    assert all(proc.tokenizer(e, add_special_tokens=True)["input_ids"] ==
               [t for t, m in zip(ids_, am_) if m]
               for e, ids_, am_ in zip(expanded, inputs["input_ids"].tolist(), inputs["attention_mask"].tolist()))
    case = {
        "name": name,
        "images": image_files,
        "image_modes": modes,
        "prompt_text": prompts if batch > 1 else prompts[0],
        "processor_kwargs": {"images_kwargs": images_kwargs or {}, **extra_proc_kwargs},
        "padding_side": extra_proc_kwargs.get("padding_side", proc.tokenizer.padding_side),
        "expanded_text": expanded,
        "input_ids": inputs["input_ids"].tolist(),
        "attention_mask": inputs["attention_mask"].tolist(),
        "pixel_values_shape": list(inputs["pixel_values"].shape),
        "num_tiles": int(inputs["pixel_values"].shape[1]),
        "num_real_tiles": int(vision_last.shape[0]),
        "rows": rows,
        "cols": cols,
        "last_token_index": last_idx,
        "greedy": {"settings": {"max_new_tokens": 12, "do_sample": False},
                   "token_ids": greedy, "text": dec(greedy),
                   "sequences_raw": g_new.tolist(), "min_top1_top2_gap": min_gaps},
        "beam3": {"settings": {"num_beams": 3, "max_new_tokens": 12, "do_sample": False,
                               "length_penalty": lp, "early_stopping": es},
                  "token_ids": beam3, "text": dec(beam3), "sequences_raw": b3_new.tolist(),
                  "sequences_scores": to_list(getattr(b3_out, "sequences_scores", None))},
        "beam2_lp05_es": {"settings": {"num_beams": 2, "max_new_tokens": 12, "do_sample": False,
                                       "length_penalty": 0.5, "early_stopping": True},
                          "token_ids": beam2, "text": dec(beam2), "sequences_raw": b2_new.tolist(),
                          "sequences_scores": to_list(getattr(b2_out, "sequences_scores", None))},
    }
    if batch == 1:
        for k in ("input_ids", "attention_mask", "rows", "cols", "last_token_index", "expanded_text"):
            case[k] = case[k][0]
        for k in ("greedy", "beam3", "beam2_lp05_es"):
            case[k]["token_ids"] = case[k]["token_ids"][0]
            case[k]["text"] = case[k]["text"][0]
            case[k]["sequences_raw"] = case[k]["sequences_raw"][0]
        case["greedy"]["min_top1_top2_gap"] = min_gaps[0]
    return case, tensors


def image_seq_len_of(model) -> int:
    c = model.config
    return int(((c.vision_config.image_size // c.vision_config.patch_size) ** 2) / (c.scale_factor ** 2))


def write_expected(kind_name: str, model, proc, case_specs, meta: dict) -> dict:
    out = EXP_DIR / kind_name
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    eos = model.generation_config.eos_token_id
    pad = model.generation_config.pad_token_id
    cases = []
    for spec in case_specs:
        case, tensors = make_case(model, proc, eos=eos, pad=pad, **spec)
        torch_save_file({k: v.detach().clone().contiguous() for k, v in tensors.items()},
                        str(out / f"{case['name']}.safetensors"))
        case["tensors"] = {k: {"dtype": str(v.dtype).replace("torch.", ""), "shape": list(v.shape)}
                           for k, v in tensors.items()}
        cases.append(case)
        g = case["greedy"]
        print(f"  {kind_name}/{case['name']}: tiles={case['num_tiles']} rows={case['rows']} cols={case['cols']} "
              f"greedy={g['token_ids']} gap={g['min_top1_top2_gap']} text={g['text']!r}")
    doc = dict(meta)
    doc["cases"] = cases
    dump_json(out / "cases.json", doc)
    return doc


# --------------------------------------------------------------------------------------------
def main() -> None:
    assert transformers.__version__.startswith("5."), transformers.__version__
    try:
        import torchvision  # noqa: F401
        sys.exit("torchvision is installed: transformers would use the torchvision image processor. Remove it.")
    except ImportError:
        pass

    FIX.mkdir(parents=True, exist_ok=True)
    print("tokenizer ...")
    tok = build_tokenizer()
    tok_again = build_tokenizer()
    assert tok.to_str() == tok_again.to_str(), "BPE training is not deterministic"
    ids = {t: tok.token_to_id(t) for t in BASE_SPECIALS + VLM_SPECIALS}
    print("  vocab", tok.get_vocab_size(), {k: v for k, v in ids.items() if not k.startswith("<row")},
          "row_1_col_1..row_6_col_6:", ids["<row_1_col_1>"], "..", ids["<row_6_col_6>"])

    print("images ...")
    make_images()

    summary = {}
    # (seed, logit gain, eos row boost, embedding std) chosen so greedy steps are peaked (top1-top2 gap),
    # captions are not one repeated token, and end-of-utterance is reached in some greedy/beam runs.
    for kind, dirname, seed, lm_gain, eos_boost, embed_std in (
        ("idefics3", "tiny-idefics3", 11, 12.0, 1.7, 1.0),
        ("smolvlm", "tiny-smolvlm", 17, 8.0, 1.3, 0.2),
    ):
        print(f"model {dirname} ...")
        path = FIX / dirname
        model_mem, saved_cfg = build_model_dir(kind, path, tok, seed, lm_gain, eos_boost, embed_std)
        check_tokenizer(tok, path)
        model = load_model(kind, path)
        proc, proc_note = load_processor(kind, path)
        ip_cls = type(proc.image_processor).__name__
        assert getattr(proc.image_processor, "backend", "pil") == "pil" and ip_cls.endswith("Pil"), ip_cls
        assert proc.chat_template == CHAT_TEMPLATE, "chat_template.json not picked up"
        # the loaded model must be the model we built (hub-layout config round-trip)
        rendered = proc.apply_chat_template(MESSAGES, add_generation_prompt=True)
        sample = proc(text=rendered, images=[Image.open(IMG_DIR / "photo_640x480.png")], return_tensors="pt")
        sample = {k: v for k, v in sample.items()}
        diff = compare_models(model_mem, model, sample)
        assert diff == 0.0, f"reloaded model differs: {diff}"
        check_loaded_config(model.config, json.load(open(path / "config.json")))
        if kind == "smolvlm":  # SmolVLMProcessor's own image-prompt expansion is the same string
            from transformers.models.smolvlm.processing_smolvlm import get_image_prompt_string
            for r, c in ((0, 0), (2, 3)):
                want = get_image_prompt_string(r, c, proc.image_seq_len, fake_token_around_image=
                                               "<fake_token_around_image>", image_token="<image>",
                                               global_image_token="<global-img>")
                got = proc.replace_image_token({"rows": [[r]], "cols": [[c]]}, 0)
                assert want == got, (want, got)
        if kind == "idefics3":
            assert not model.config.tie_word_embeddings
            assert model.lm_head.weight.data_ptr() != model.model.text_model.embed_tokens.weight.data_ptr()
        else:
            assert model.lm_head.weight.data_ptr() == model.model.text_model.embed_tokens.weight.data_ptr()
        keys = sorted(torch_load_file(str(path / "model.safetensors")).keys())
        print("  processor:", type(proc).__name__, ip_cls, "|", proc_note)
        print("  padding side:", proc.tokenizer.padding_side, "| reload logits diff:", diff)
        print("  rendered prompt:", repr(rendered))
        print("  transformers-5 save_pretrained config keys (text_config):",
              sorted(saved_cfg.get("text_config", {}).keys()))

        if kind == "idefics3":
            cases = [
                dict(name=Path(f).stem if f.endswith(".png") else Path(f).stem + "_jpg", image_files=[f],
                     prompts=[rendered], images_kwargs=None, extra_proc_kwargs={})
                for f in ["photo_640x480.png", "tiny_20x15.png", "pano_400x60.png", "portrait_90x200.png",
                          "gray_120x90.png", "rgba_100x80.png", "square_32x32.png", "photo_640x480.jpg"]
            ]
            cases.append(dict(name="photo_longest32", image_files=["photo_640x480.png"], prompts=[rendered],
                              images_kwargs={"size": {"longest_edge": 32}}, extra_proc_kwargs={}))
            cases.append(dict(name="batch2", image_files=["photo_640x480.png", "pano_400x60.png"],
                              prompts=[rendered, rendered], images_kwargs=None,
                              extra_proc_kwargs={"padding": True}))
            cases.append(dict(name="batch2_left", image_files=["photo_640x480.png", "pano_400x60.png"],
                              prompts=[rendered, rendered], images_kwargs=None,
                              extra_proc_kwargs={"padding": True, "padding_side": "left"}))
        else:
            cases = [dict(name=Path(f).stem, image_files=[f], prompts=[rendered], images_kwargs=None,
                          extra_proc_kwargs={})
                     for f in ["photo_640x480.png", "gray_120x90.png", "rgba_100x80.png"]]
        meta = {
            "model_dir": f"tests/fixtures/{dirname}",
            "generator": "tools/reference/make_fixtures.py",
            "versions": {"transformers": transformers.__version__, "torch": torch.__version__,
                         "tokenizers": __import__("tokenizers").__version__,
                         "pillow": Image.__version__, "numpy": np.__version__},
            "processor_class": type(proc).__name__,
            "processor_note": proc_note,
            "image_processor_class": ip_cls,
            "image_processor_backend": getattr(proc.image_processor, "backend", None),
            "tokenizer_class": type(proc.tokenizer).__name__,
            "default_padding_side": proc.tokenizer.padding_side,
            "attn_implementation": {"text": model.config.text_config._attn_implementation,
                                    "vision": model.config.vision_config._attn_implementation},
            "dtype": "float32", "device": "cpu",
            "image_seq_len": proc.image_seq_len,
            "eos_token_id": model.generation_config.eos_token_id,
            "pad_token_id": model.generation_config.pad_token_id,
            "messages": MESSAGES,
            "notes": [
                "logits_all/logits_last come from one model(**inputs) forward (no position_ids passed: "
                "positions are arange(seq) even for padded rows).",
                "generate() derives position_ids = cumsum(attention_mask)-1 (0 at pads) for the prompt, "
                "then last_position+1, +2, ... for new tokens (for a right-padded row the last prompt "
                "position is a pad with position 0).",
                "greedy_step_logits are generate(output_logits=True) raw logits per step; for batch cases "
                "shape [B, steps, vocab]; rows that finished early continue with pad tokens.",
                "token_ids are the new tokens up to and including the first eos; sequences_raw are the "
                "untrimmed new tokens (pad-filled after eos).",
                "image_features = connector output [n_real_tiles, image_seq_len, text_hidden]; all-zero "
                "padding tiles are dropped before the vision tower.",
                "JPEG case: decoded by Pillow's JPEG decoder (libjpeg-turbo) via Image.open.",
                "Image conversion order (transformers 5 PIL backend): convert_to_rgb FIRST (alpha composited "
                "on white via PIL alpha_composite, L->RGB via PIL convert), then LANCZOS resizes on RGB uint8.",
            ],
        }
        doc = write_expected(dirname, model, proc, cases, meta)
        gaps = []
        for c in doc["cases"]:
            g = c["greedy"]["min_top1_top2_gap"]
            gaps.extend(g if isinstance(g, list) else [g])
        summary[dirname] = {"min_gap": min(gaps), "keys": keys, "processor": type(proc).__name__,
                            "image_processor": ip_cls, "padding_side": proc.tokenizer.padding_side}

        if kind == "idefics3":
            make_variants(path, model, sample)

    print("\nsummary:")
    for k, v in summary.items():
        print(f"  {k}: min top1-top2 gap {v['min_gap']:.4f}; processor {v['processor']} / {v['image_processor']}; "
              f"padding side {v['padding_side']}; {len(v['keys'])} tensors")
    print("  tiny-idefics3 keys:")
    for k in summary["tiny-idefics3"]["keys"]:
        print("   ", k)


AUX_FILES = ["config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json",
             "special_tokens_map.json", "preprocessor_config.json", "processor_config.json", "chat_template.json"]


def make_variants(path: Path, model, sample) -> None:
    """bf16 copy and a sharded copy of tiny-idefics3."""
    sd = torch_load_file(str(path / "model.safetensors"))
    # bf16
    bf = FIX / "tiny-idefics3-bf16"
    if bf.exists():
        shutil.rmtree(bf)
    bf.mkdir()
    for f in AUX_FILES:
        shutil.copy(path / f, bf / f)
    cfg = json.load(open(bf / "config.json"))
    cfg["torch_dtype"] = "bfloat16"
    cfg["text_config"]["torch_dtype"] = "bfloat16"
    dump_json(bf / "config.json", cfg)
    torch_save_file({k: v.to(torch.bfloat16).contiguous() for k, v in sd.items()}, str(bf / "model.safetensors"),
                    metadata={"format": "pt"})
    mb = load_model("idefics3", bf)  # loads the bf16 file, upcast to f32
    with torch.no_grad():
        lb = mb(**sample).logits[0].float()
        d = float((lb - model(**sample).logits[0]).abs().max())
    print(f"  bf16 copy: max |logit diff| vs f32 = {d:.4f}")
    # expected logits of the bf16 weights computed in f32 (same inputs as expected/tiny-idefics3/photo_640x480)
    eb = EXP_DIR / "tiny-idefics3-bf16"
    if eb.exists():
        shutil.rmtree(eb)
    eb.mkdir(parents=True)
    torch_save_file({"logits_all": lb.clone().contiguous(), "logits_last": lb[-1].clone().contiguous()},
                    str(eb / "photo_640x480.safetensors"))
    dump_json(eb / "cases.json", {
        "model_dir": "tests/fixtures/tiny-idefics3-bf16",
        "note": "bf16 weights loaded by transformers with dtype=float32 (upcast), computed in f32 on CPU; inputs "
                "are exactly those of expected/tiny-idefics3 case photo_640x480 (same input_ids/pixel_values).",
        "max_abs_diff_vs_f32_weights": d,
        "cases": [{"name": "photo_640x480", "same_inputs_as": "tiny-idefics3/photo_640x480"}],
    })
    # sharded
    sh = FIX / "tiny-idefics3-sharded"
    if sh.exists():
        shutil.rmtree(sh)
    with tempfile.TemporaryDirectory() as td:
        model.save_pretrained(td, safe_serialization=True, max_shard_size="300KB")
        shards = sorted(p.name for p in Path(td).glob("model-*.safetensors"))
        assert 2 <= len(shards) <= 3, shards
        sh.mkdir()
        for s in shards + ["model.safetensors.index.json"]:
            shutil.copy(Path(td) / s, sh / s)
    for f in AUX_FILES:
        shutil.copy(path / f, sh / f)
    ms = load_model("idefics3", sh)
    d = compare_models(model, ms, sample)
    assert d == 0.0, d
    print(f"  sharded copy: {shards} (logits identical)")


if __name__ == "__main__":
    main()
