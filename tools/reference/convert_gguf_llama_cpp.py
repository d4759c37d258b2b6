"""Runs llama.cpp's own `convert_hf_to_gguf.py` on a (random-weight) SmolVLM directory.

    python tools/reference/convert_gguf_llama_cpp.py LLAMA_CPP_DIR MODEL_DIR OUT.gguf [--outtype f16] [--mmproj]

LLAMA_CPP_DIR is llama.cpp's source (e.g. `vendor/llama.cpp` of the `llama-cpp-python` sdist).
The one change: the converter recognises a BPE pre-tokenizer by hashing what it makes of a fixed
text, and our fixtures' tokenizers have SmolLM2's pre-tokenizer over a tiny vocabulary, whose
hash is nobody's; we answer "smollm" for a tokenizer whose pre_tokenizer is SmolLM2's exactly
(digits split one by one, then GPT-2's byte-level regex) and fail for any other.
"""
import json
import os
import sys

llama_dir, model_dir = sys.argv[1], sys.argv[2]
sys.path.insert(0, os.path.join(llama_dir, "gguf-py"))
sys.path.insert(0, llama_dir)

SMOLLM_PRE = {"type": "Sequence", "pretokenizers": [
    {"type": "Digits", "individual_digits": True},
    {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True}]}

import conversion.base as base  # noqa: E402

orig = base.TextModel.get_vocab_base_pre


def get_vocab_base_pre(self, tokenizer):
    try:
        return orig(self, tokenizer)
    except NotImplementedError:
        with open(os.path.join(self.dir_model, "tokenizer.json")) as f:
            pre = json.load(f)["pre_tokenizer"]
        if pre != SMOLLM_PRE:
            raise
        return "smollm"


base.TextModel.get_vocab_base_pre = get_vocab_base_pre

import convert_hf_to_gguf  # noqa: E402

sys.argv = [sys.argv[0], model_dir, "--outfile"] + sys.argv[3:]
convert_hf_to_gguf.main()
