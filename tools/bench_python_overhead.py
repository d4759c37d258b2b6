#!/usr/bin/env python3
"""Wall time of captioning the same images with the CLI and with the Python package.

Runs `smolcap caption` and an equivalent Python script (Model.load + Model.caption) as separate
processes, alternating, `--repeat` times each, and prints the best and median wall times and
the Python/CLI ratio. Both include process start and model load, so use enough work (images x
tokens) that start-up is a small part; the Python interpreter's own start-up and `import
smolcap` are timed separately and reported.

    python tools/bench_python_overhead.py --cli target/release/smolcap \\
        --model tests/fixtures/tiny-idefics3 --image tests/fixtures/images/photo_640x480.png \\
        --copies 16 --new-tokens 300 --batch-size 4 --repeat 5
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

PY = """
import json, sys, smolcap
a = sys.argv
m = smolcap.Model.load(a[1])
imgs = a[5:]
caps = m.caption(imgs, max_new_tokens=int(a[2]), min_new_tokens=int(a[3]), batch_size=int(a[4]))
for i, c in zip(imgs, caps):
    print(json.dumps({"image": i, "token_ids": list(c.token_ids)}))
"""


def token_ids(jsonl):
    """The token ids of each caption, in order, from JSONL output (the CLI's --jsonl or ours)."""
    return [json.loads(line)["token_ids"] for line in jsonl.splitlines() if line.strip()]


def timed(cmd, env):
    t = time.perf_counter()
    out = subprocess.run(cmd, capture_output=True, text=True, env=env)
    dt = time.perf_counter() - t
    if out.returncode != 0:
        sys.exit(f"{cmd[0]} failed:\n{out.stderr}")
    return dt, out.stdout


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--cli", required=True)
    ap.add_argument("--python", default=sys.executable)
    ap.add_argument("--model", required=True)
    ap.add_argument("--image", action="append", required=True)
    ap.add_argument("--copies", type=int, default=1, help="caption each image this many times")
    ap.add_argument("--new-tokens", type=int, default=48, help="tokens generated per caption (stop tokens suppressed)")
    ap.add_argument("--batch-size", type=int, default=1)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
    images = a.image * a.copies
    n = str(a.new_tokens)
    cli = [a.cli, "caption", "--model", a.model, "--max-new-tokens", n, "--min-new-tokens", n,
           "--batch-size", str(a.batch_size), "--jsonl"]
    for i in images:
        cli += ["--image", i]
    py = [a.python, "-c", PY, a.model, n, n, str(a.batch_size)] + images
    env = dict(os.environ)
    # Same captions from both (and a warm page cache).
    _, c_out = timed(cli, env)
    _, p_out = timed(py, env)
    if token_ids(c_out) != token_ids(p_out) or not token_ids(c_out):
        sys.exit(f"outputs differ:\nCLI:\n{c_out}\nPython:\n{p_out}")
    ts_c, ts_p = [], []
    for _ in range(a.repeat):
        ts_c.append(timed(cli, env)[0])
        ts_p.append(timed(py, env)[0])
    imp = min(timed([a.python, "-c", "import smolcap"], env)[0] for _ in range(5))
    bare = min(timed([a.python, "-c", "pass"], env)[0] for _ in range(5))
    r = {
        "images": len(images), "new_tokens": a.new_tokens, "batch_size": a.batch_size, "repeat": a.repeat,
        "cli_best_s": min(ts_c), "python_best_s": min(ts_p),
        "cli_median_s": statistics.median(ts_c), "python_median_s": statistics.median(ts_p),
        "ratio_best": min(ts_p) / min(ts_c), "ratio_median": statistics.median(ts_p) / statistics.median(ts_c),
        "python_start_s": bare, "python_import_smolcap_s": imp - bare,
        "cli_runs_s": ts_c, "python_runs_s": ts_p,
    }
    if a.json:
        print(json.dumps(r, indent=2))
        return
    print(f"{len(images)} images x {a.new_tokens} tokens, batch {a.batch_size}, {a.repeat} runs each (alternating)")
    print(f"CLI     best {r['cli_best_s']:.3f} s  median {r['cli_median_s']:.3f} s")
    print(f"Python  best {r['python_best_s']:.3f} s  median {r['python_median_s']:.3f} s")
    print(f"Python / CLI: best {r['ratio_best']:.4f}, median {r['ratio_median']:.4f}")
    print(f"(of which interpreter start {bare:.3f} s, import smolcap {imp - bare:.3f} s)")


if __name__ == "__main__":
    main()
