#!/usr/bin/env bash
# llama.cpp's side of `smolcap bench --llama-json`: the same stages on the same GGUF pair and image.
#
#   tools/reference/bench_llama_cpp.sh LLAMA_BIN_DIR TEXT.gguf MMPROJ.gguf IMAGE PROMPT_TOKENS [NEW_TOKENS] > llama.json
#
# LLAMA_BIN_DIR holds llama-bench and llama-mtmd-cli (a CMake build of llama.cpp, e.g. from the
# llama-cpp-python sdist). Stages, 2 threads:
#   vision_s             sum of llama-mtmd-cli's "mtmd batch encoding done in N ms" (one per tile
#                        chunk) for the image, best of 2 runs
#   prefill_s            PROMPT_TOKENS / llama-bench's pp t/s (text tokens: the same shapes as
#                        smolcap's prefill of the prompt with its image embeddings)
#   decode_ms_per_token  1000 / llama-bench's tg t/s at depth PROMPT_TOKENS
#   peak_rss_mb          llama-mtmd-cli's peak RSS (GNU time), captioning the image
set -euo pipefail
bin="$1"; text="$2"; proj="$3"; image="$4"; ptok="$5"; ntok="${6:-32}"
tmp="$(mktemp -d)"; trap 'rm -rf "$tmp"' EXIT
best_vision=""; rss=""
for i in 1 2; do
    /usr/bin/time -f "%M" -o "$tmp/rss" "$bin/llama-mtmd-cli" -m "$text" --mmproj "$proj" --image "$image" \
        -p "Describe this image in detail." -n "$ntok" --temp 0 -t 2 --ignore-eos >/dev/null 2>"$tmp/log"
    v=$(sed -n 's/.*mtmd batch encoding done in \([0-9]*\) ms.*/\1/p' "$tmp/log" | awk '{s+=$1} END {printf "%.3f", s/1000}')
    r=$(tail -1 "$tmp/rss")
    if [ -z "$best_vision" ] || awk "BEGIN{exit !($v < $best_vision)}"; then best_vision=$v; fi
    if [ -z "$rss" ] || [ "$r" -gt "$rss" ]; then rss=$r; fi
done
"$bin/llama-bench" -m "$text" -t 2 -r 2 -p "$ptok" -n 0 -o json > "$tmp/pp.json"
"$bin/llama-bench" -m "$text" -t 2 -r 2 -p 0 -n "$ntok" -d "$ptok" -o json > "$tmp/tg.json"
python3 - "$tmp/pp.json" "$tmp/tg.json" "$best_vision" "$rss" "$ptok" <<'PY'
import json, sys
pp = json.load(open(sys.argv[1]))[0]; tg = json.load(open(sys.argv[2]))[0]
print(json.dumps({
    "impl": "llama.cpp", "build": pp.get("build_commit"), "type": pp.get("model_type"),
    "vision_s": float(sys.argv[3]),
    "prefill_s": int(sys.argv[5]) / pp["avg_ts"],
    "decode_ms_per_token": 1000.0 / tg["avg_ts"],
    "peak_rss_mb": int(sys.argv[4]) / 1024.0,
}, indent=1))
PY
