#!/usr/bin/env bash
# Writes tests/fixtures/gguf-llama-cpp/: the GGUF pair llama.cpp's own converter makes of the tiny
# fixture at Q8_0 (what tests/gguf.rs compares `smolcap quantize` and the GGUF loader against).
#
#   tools/reference/make_gguf_fixtures.sh LLAMA_CPP_DIR PYTHON
#
# LLAMA_CPP_DIR: llama.cpp's source, e.g. vendor/llama.cpp of the llama-cpp-python sdist (0.3.36
# was used: `pip download` it, or fetch its tarball from PyPI, and untar it). PYTHON: an
# interpreter with torch, transformers, numpy, sentencepiece and safetensors from PyPI.
set -euo pipefail
llama="$1"
py="${2:-python3}"
root="$(cd "$(dirname "$0")/../.." && pwd)"
out="$root/tests/fixtures/gguf-llama-cpp"
mkdir -p "$out"
conv="$root/tools/reference/convert_gguf_llama_cpp.py"
"$py" "$conv" "$llama" "$root/tests/fixtures/tiny-idefics3" "$out/tiny-idefics3-q8_0.gguf" --outtype q8_0
"$py" "$conv" "$llama" "$root/tests/fixtures/tiny-idefics3" "$out/mmproj-tiny-idefics3-q8_0.gguf" --outtype q8_0 --mmproj
