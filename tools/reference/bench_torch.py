#!/usr/bin/env python3
"""PyTorch side of `smolcap bench`: the same work as the Rust bench on the same model dir.

Usage: bench_torch.py MODEL_DIR IMAGE [--new-tokens 32] [--threads 2] [--out torch.json]
Stages (float32, CPU): image preprocessing (processor), vision+connector, prefill (text model
on the merged prompt), decode ms/token (greedy single-token steps on the prompt's KV cache),
end-to-end caption, peak RSS. Prints JSON.
"""
import argparse
import json
import resource
import time

import torch
from PIL import Image
from transformers import AutoModelForImageTextToText, AutoProcessor


def best(fn, repeat):
    times = []
    out = None
    for _ in range(repeat):
        t = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t)
    return min(times), out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("model")
    ap.add_argument("image")
    ap.add_argument("--new-tokens", type=int, default=32)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=1)
    ap.add_argument("--out")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    t_load = time.perf_counter()
    processor = AutoProcessor.from_pretrained(a.model)
    model = AutoModelForImageTextToText.from_pretrained(a.model, dtype=torch.float32).eval()
    load_s = time.perf_counter() - t_load
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Describe this image in detail."}]}]
    prompt = processor.apply_chat_template(messages, add_generation_prompt=True)

    def preprocess():
        img = Image.open(a.image)
        img.load()
        return processor(text=prompt, images=[img], return_tensors="pt")

    pre_s, inputs = best(preprocess, max(a.repeat, 3))
    n_tiles = int(inputs["pixel_values"].shape[1])
    n_prompt = int(inputs["input_ids"].shape[1])
    with torch.inference_mode():
        pv = inputs["pixel_values"]
        pam = inputs.get("pixel_attention_mask")

        def vision():
            return model.model.get_image_features(pixel_values=pv, pixel_attention_mask=pam)

        vis_s, feats = best(vision, a.repeat)
        if not torch.is_tensor(feats):
            # transformers 5: an output object whose pooler_output is a list per batch item.
            feats = feats.pooler_output
        if isinstance(feats, (list, tuple)):
            feats = torch.cat(list(feats), dim=0)
        emb = model.model.text_model.get_input_embeddings()(inputs["input_ids"])
        merged = model.model.inputs_merger(input_ids=inputs["input_ids"], inputs_embeds=emb, image_hidden_states=feats)

        def prefill():
            h = model.model.text_model(inputs_embeds=merged, use_cache=True).last_hidden_state
            return model.lm_head(h[:, -1:, :])

        pf_s, _ = best(prefill, a.repeat)

        # Decode, timed directly: greedy single-token steps on the prompt's KV cache (the same
        # work smolcap times per decode step). A difference of two whole generate() runs would
        # carry their noise (seconds) into a per-token figure (tens of ms).
        def decode():
            out = model.model.text_model(inputs_embeds=merged, use_cache=True)
            pkv = out.past_key_values
            logits = model.lm_head(out.last_hidden_state[:, -1:, :])
            embed = model.model.text_model.get_input_embeddings()
            t = time.perf_counter()
            for _ in range(a.new_tokens):
                tok = logits[:, -1, :].argmax(-1, keepdim=True)
                out = model.model.text_model(inputs_embeds=embed(tok), past_key_values=pkv, use_cache=True)
                pkv = out.past_key_values
                logits = model.lm_head(out.last_hidden_state)
            return time.perf_counter() - t

        dec_s = min(decode() for _ in range(max(a.repeat, 1)))
        steps = a.new_tokens
        decode_ms = dec_s / max(steps, 1) * 1000.0

        def e2e():
            x = preprocess()
            return model.generate(**x, max_new_tokens=a.new_tokens, min_new_tokens=a.new_tokens, do_sample=False)

        e2e_s, _ = best(e2e, 1)
    rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    res = {
        "impl": "pytorch",
        "torch": torch.__version__,
        "threads": a.threads,
        "load_s": load_s,
        "tiles": n_tiles,
        "prompt_tokens": n_prompt,
        "new_tokens": steps,
        "preprocess_s": pre_s,
        "vision_s": vis_s,
        "prefill_s": pf_s,
        "decode_ms_per_token": decode_ms,
        "end_to_end_s": e2e_s,
        "peak_rss_mb": rss_mb,
    }
    text = json.dumps(res, indent=2)
    if a.out:
        with open(a.out, "w") as f:
            f.write(text)
    print(text)


if __name__ == "__main__":
    main()
