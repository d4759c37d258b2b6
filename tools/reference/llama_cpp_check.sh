#!/usr/bin/env bash
# Greedy text-only tokens on the same GGUF from three engines: smolcap (examples/text_greedy),
# llama.cpp (tools/reference/llama_greedy_tokens.cpp, linked to a llama.cpp build) and
# transformers in float64 on the dequantised weights (tools/reference/gguf_greedy_torch.py).
#
#   tools/reference/llama_cpp_check.sh LLAMA_CPP_DIR PYTHON GGUF [GGUF...]
#
# LLAMA_CPP_DIR: llama.cpp's source with a CMake build in build/ (libllama); PYTHON: with torch,
# transformers, accelerate, gguf. Prints, per file and prompt, how many leading tokens agree.
set -euo pipefail
llama="$1"; py="$2"; shift 2
root="$(cd "$(dirname "$0")/../.." && pwd)"
tool="${TMPDIR:-/tmp}/llama_greedy_tokens"
g++ -O2 -std=c++17 -I"$llama/include" -I"$llama/ggml/include" "$root/tools/reference/llama_greedy_tokens.cpp" \
    -L"$llama/build/bin" -lllama -lggml -lggml-base -Wl,-rpath,"$llama/build/bin" -o "$tool"
(cd "$root" && cargo build -q --release --example text_greedy)
ours="$root/target/release/examples/text_greedy"
prompts=(
"<|im_start|>User: Write a caption for a picture of a cat.<end_of_utterance>
Assistant:"
"<|im_start|>User: Describe this image in detail.<end_of_utterance>
Assistant: The image shows"
"<|im_start|>User: 12 apples and 345 pears, 6.78 kg in all?<end_of_utterance>
Assistant:")
agree() { # leading tokens in common
    local -a a=($1) b=($2); local i=0
    while [ $i -lt ${#a[@]} ] && [ $i -lt ${#b[@]} ] && [ "${a[$i]}" = "${b[$i]}" ]; do i=$((i+1)); done
    echo "$i/${#a[@]}"
}
for f in "$@"; do
    for p in "${prompts[@]}"; do
        o=$("$ours" "$f" 32 "$p")
        l=$("$tool" "$f" 32 2 "$p" 2>/dev/null)
        po=$(sed -n 's/^prompt: //p' <<<"$o"); pl=$(sed -n 's/^prompt: //p' <<<"$l")
        go=$(sed -n 's/^greedy: //p' <<<"$o"); gl=$(sed -n 's/^greedy: //p' <<<"$l")
        gt=$("$py" "$root/tools/reference/gguf_greedy_torch.py" "$f" 32 $po 2>/dev/null | sed -n 's/^greedy: //p')
        same_prompt=no; [ "$po" = "$pl" ] && same_prompt=yes
        echo "$(basename "$f")  prompt ids equal: $same_prompt ($(wc -w <<<"$po") tokens)  smolcap=llama.cpp: $(agree "$go" "$gl")  smolcap=torch-f64: $(agree "$go" "$gt")  llama.cpp=torch-f64: $(agree "$gl" "$gt")"
    done
done
