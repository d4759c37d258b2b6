#!/usr/bin/env bash
# Measures peak memory and wall time of the worst inputs constructed for issue 27 against the
# `smolcap` binary (default limits), with /usr/bin/time -v. Usage:
#   tools/hostile_worst_cases.sh PATH/TO/smolcap [WORK_DIR]
# Prints one line per case: name, exit status, peak RSS (MiB), wall seconds, first error line.
# The baseline case (a normal caption of the tiny fixture) is the process's own footprint.
set -uo pipefail
bin="$1"
work="${2:-$(mktemp -d)}"
root="$(cd "$(dirname "$0")/.." && pwd)"
model="$root/tests/fixtures/tiny-idefics3"
img="$root/tests/fixtures/images/tiny_20x15.png"
mkdir -p "$work"
run() {
    local name="$1"; shift
    local log="$work/$name.time"
    /usr/bin/time -v -o "$log" timeout 120 "$@" >"$work/$name.out" 2>"$work/$name.err"
    local rc=$?
    local rss secs
    rss=$(sed -n 's/.*Maximum resident set size (kbytes): //p' "$log")
    secs=$(sed -n 's/.*Elapsed (wall clock) time (h:mm:ss or m:ss): //p' "$log")
    printf '%-34s rc=%-3s peak=%6d MiB  wall=%-8s %s\n' "$name" "$rc" "$((rss / 1024))" "$secs" \
        "$(grep -m1 -i 'error' "$work/$name.err" | cut -c1-110)"
}
py() { python3 -c "$1"; }

run baseline-caption "$bin" caption --model "$model" --image "$img" --max-new-tokens 4
# Text: the longest prompt one argv string can hold (128 KiB; the 256 KiB default limit and a
# 20 MB prompt are measured through the library in tests/hostile_limits.rs).
big=$(py 'print("a b " * (120*1024//4))')
run prompt-120KiB "$bin" caption --model "$model" --image "$img" --max-new-tokens 1 --prompt "$big"
# (argv is limited to ~2 MiB: 20 MB prompts are in tests/hostile_limits.rs and tests/c.)
# Non-regular inputs.
mkfifo "$work/fifo.png" 2>/dev/null
run image-fifo "$bin" caption --model "$model" --image "$work/fifo.png"
run image-dev-zero "$bin" caption --model "$model" --image /dev/zero
mkdir -p "$work/m-zero"; cp "$model"/* "$work/m-zero/"; ln -sf /dev/zero "$work/m-zero/tokenizer.json"
run model-tokenizer-dev-zero "$bin" caption --model "$work/m-zero" --image "$img"
run score-refs-dev-urandom "$bin" score --refs /dev/urandom --cands /dev/zero
# A COCO annotations file at the size limit made of the smallest entries (most entries per byte).
python3 - "$work/refs-max.json" <<'P'
import sys
n = 2_000_001
with open(sys.argv[1], "w") as f:
    f.write('{"annotations": [')
    f.write(",".join('{"image_id":%d,"caption":"a"}' % (i % 1000) for i in range(n)))
    f.write("]}")
P
echo '[{"image_id": 1, "caption": "a"}]' >"$work/cands.json"
run score-refs-2M-entries "$bin" score --refs "$work/refs-max.json" --cands "$work/cands.json"
python3 - "$work/refs-ok.json" <<'P'
import sys
n = 1_999_000
with open(sys.argv[1], "w") as f:
    f.write('{"annotations": [')
    f.write(",".join('{"image_id":%d,"caption":"a cat"}' % (i % 1000) for i in range(n)))
    f.write("]}")
P
run score-refs-1.999M-entries "$bin" score --refs "$work/refs-ok.json" --cands "$work/cands.json"
# A Karpathy dataset near the entry limit: 400,000 images with 4 sentences each, no image
# file present (the run stops after 1000 rows in a row without an image).
python3 - "$work/karpathy/dataset_coco.json" <<'P'
import os, sys
os.makedirs(os.path.dirname(sys.argv[1]), exist_ok=True)
imgs = []
for i in range(400_000):
    s = ",".join('{"raw":"x%d"}' % j for j in range(4))
    imgs.append('{"filepath":"d","filename":"%d.jpg","split":"train","cocoid":%d,"sentences":[%s]}' % (i, i, s))
open(sys.argv[1], "w").write('{"images":[' + ",".join(imgs) + ']}')
P
run train-karpathy-1.6M-rows "$bin" train --base_model_id "$model" --dataset_id "$work/karpathy" \
    --eval_split none --output_dir "$work/out-k" --max_steps 1 --lora_r 2
# Training where every image is unreadable (the loop ends after one pass).
python3 - "$work/bad.jsonl" <<'P'
import sys
open(sys.argv[1], "w").write("".join('{"image": "/dev/null", "caption": "row %d"}\n' % i for i in range(1000)))
P
run train-every-image-bad-1000 "$bin" train --base_model_id "$model" --dataset_id "$work/bad.jsonl" \
    --eval_split none --output_dir "$work/out-b" --max_steps 100000 --lora_r 2
# A shard index of 25,000 entries.
mkdir -p "$work/m-idx"; cp "$root/tests/fixtures/tiny-idefics3-sharded"/* "$work/m-idx/"
python3 - "$work/m-idx/model.safetensors.index.json" <<'P'
import json, sys
m = {"extra.%d" % i: "model-%05d-of-25000.safetensors" % i for i in range(25000)}
json.dump({"metadata": {}, "weight_map": m}, open(sys.argv[1], "w"))
P
run index-25000-entries "$bin" caption --model "$work/m-idx" --image "$img"
# Chat templates that never end.
for t in loops flood repeat; do
    mkdir -p "$work/m-$t"; cp "$model"/* "$work/m-$t/"
done
echo "{% for a in range(100000) %}{% for b in range(100000) %}{% endfor %}{% endfor %}" >"$work/m-loops/chat_template.jinja"
echo "{% for a in range(100000) %}{% for b in range(100000) %}x{% endfor %}{% endfor %}" >"$work/m-flood/chat_template.jinja"
echo "{% for a in range(1000) %}{{ 'y' * 99999999 }}{% endfor %}" >"$work/m-repeat/chat_template.jinja"
for t in loops flood repeat; do
    run "template-$t" "$bin" caption --model "$work/m-$t" --image "$img"
done
# ROUGE-L and the other metrics on captions at the 64 KiB limit (32,767 one-letter words).
python3 - "$work" <<'P'
import json, sys
w = sys.argv[1]
c = " ".join("ab"[i % 2] for i in range(32767))
r = " ".join("ba"[i % 3 % 2] for i in range(32767))
json.dump({"annotations": [{"image_id": 1, "caption": r}]}, open(w + "/refs-long.json", "w"))
json.dump([{"image_id": 1, "caption": c}], open(w + "/cands-long.json", "w"))
P
run score-64KiB-captions-seed "$bin" score --refs "$work/refs-long.json" --cands "$work/cands-long.json"
run score-64KiB-captions-coco "$bin" score --suite coco --refs "$work/refs-long.json" --cands "$work/cands-long.json"
