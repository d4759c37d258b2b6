#!/usr/bin/env python3
"""Times the Python metric packages and smolcap on the same 5,000 images x 5 references, in one
run, and prints the ratio (issue 6 target: smolcap >= 20x faster).

Python side (per suite, after a warm-up call so WordNet/Punkt loading is not counted, as on the
Rust side): exactly the calls of metrics_ref.py (seed: evaluate-equivalent BLEU-1..4, NLTK
METEOR, rouge_score ROUGE-L, pycocoevalcap CIDEr; coco: PTBTokenizer jar + Bleu + Rouge + Cider,
reported without and with the Meteor 1.5 jar; smolcap's coco suite always computes its own
(NLTK-style) METEOR, so the first coco ratio understates it).
Rust side: `cargo run --release --example bench_metrics` (best of 3).

    python tools/reference/bench_metrics.py [--images 5000]
"""

import argparse
import contextlib
import io
import json
import os
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, HERE)

import metrics_ref  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--images", type=int, default=5000)
    ap.add_argument("--corpus", default="/tmp/smolcap_bench_corpus.json")
    ap.add_argument("--manifest-path", default=os.path.join(ROOT, "Cargo.toml"))
    args = ap.parse_args()
    cands, refs = metrics_ref.generate_corpus(1234, args.images, 5)
    with open(args.corpus, "w", encoding="utf-8") as f:
        json.dump({"cands": cands, "refs": refs}, f, ensure_ascii=False)

    py = {}
    metrics_ref.seed_suite(cands[:2], refs[:2])  # warm-up: loads WordNet, Punkt
    t = time.perf_counter()
    metrics_ref.seed_suite(cands, refs)
    py["seed_s"] = time.perf_counter() - t
    t = time.perf_counter()
    with contextlib.redirect_stderr(io.StringIO()):
        _, _, tokens = metrics_ref.coco_suite(cands, refs)
    py["coco_s"] = time.perf_counter() - t
    t = time.perf_counter()
    with contextlib.redirect_stderr(io.StringIO()):
        metrics_ref.coco_meteor_jar(cands, refs, tokens)
    py["meteor_jar_s"] = time.perf_counter() - t

    cmd = ["cargo", "run", "--quiet", "--release", "--manifest-path", args.manifest_path,
           "--example", "bench_metrics", "--", args.corpus, "3"]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    rs = json.loads(out.strip().splitlines()[-1])
    print(f"images: {args.images} x 5 references")
    for suite in ("seed", "coco"):
        p, r = py[f"{suite}_s"], rs[f"{suite}_s"]
        print(f"{suite}: python {p:.2f} s, smolcap {r:.3f} s, ratio {p / r:.1f}x")
    p = py["coco_s"] + py["meteor_jar_s"]
    print(f"coco incl. the Meteor 1.5 jar (full COCOEvalCap minus SPICE): python {p:.2f} s, "
          f"ratio {p / rs['coco_s']:.1f}x")
    print(f"smolcap one-time table load: {rs['load_s']:.3f} s")


if __name__ == "__main__":
    main()
