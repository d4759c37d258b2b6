"""Greedy tokens of a GGUF text model computed by transformers (its own GGUF loader dequantises
the weights and undoes llama.cpp's q/k permutation) in float64: the exact answer that smolcap's
and llama.cpp's tokens on the same file are compared with (docs/QUANTIZATION.md).

    python tools/reference/gguf_greedy_torch.py MODEL.gguf N_TOKENS ID ID ...

Prints "greedy: ids...", stopping after token id STOP (env, default 599: <end_of_utterance> of
the fixtures' tokenizer). Needs torch, transformers and gguf (llama.cpp's gguf-py) importable.
"""
import os
import sys

import torch
from transformers import AutoModelForCausalLM

path, n = sys.argv[1], int(sys.argv[2])
ids = [int(x) for x in sys.argv[3:]]
stop = int(os.environ.get("STOP", "599"))
model = AutoModelForCausalLM.from_pretrained(
    os.path.dirname(os.path.abspath(path)), gguf_file=os.path.basename(path),
    torch_dtype=torch.float64)
model.eval()
x = torch.tensor([ids])
out = []
with torch.no_grad():
    past = None
    for _ in range(n):
        o = model(input_ids=x, past_key_values=past, use_cache=True)
        past = o.past_key_values
        t = int(o.logits[0, -1].argmax())
        out.append(t)
        if t == stop:
            break
        x = torch.tensor([[t]])
print("greedy:", " ".join(map(str, out)))
