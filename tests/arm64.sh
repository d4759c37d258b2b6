#!/usr/bin/env bash
# ARM64 (aarch64-unknown-linux-gnu): cross-builds the inference parity tests and the quantized-
# weight tests with Debian's cross gcc and runs them under qemu-user on the tiny fixtures, so
# every kernel's portable body (the NEON build: aarch64's baseline) and the hand-written NEON
# Q8_0 / Q4_0 bodies are checked against transformers' logits and tokens, as on x86-64, and
# by the kernel unit tests. Installs what it needs (apt, rustup target).
set -euo pipefail
cd "$(dirname "$0")/.."
t0=$(date +%s)
need=()
for p in gcc-aarch64-linux-gnu g++-aarch64-linux-gnu qemu-user; do
    dpkg -s "$p" >/dev/null 2>&1 || need+=("$p")
done
if [ ${#need[@]} -gt 0 ]; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq "${need[@]}" >/dev/null
fi
rustup target add aarch64-unknown-linux-gnu >/dev/null
export CC_aarch64_unknown_linux_gnu=aarch64-linux-gnu-gcc
export CXX_aarch64_unknown_linux_gnu=aarch64-linux-gnu-g++
export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_LINKER=aarch64-linux-gnu-gcc
export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_RUNNER="qemu-aarch64 -L /usr/aarch64-linux-gnu"
echo "arm64 toolchain ready ($(( $(date +%s) - t0 )) s)"
cargo test --target aarch64-unknown-linux-gnu --lib --test parity --test quantize --no-run
echo "arm64 tests built ($(( $(date +%s) - t0 )) s)"
cargo test --target aarch64-unknown-linux-gnu --test parity --test quantize
# The hand-written NEON bodies against candle's values and an f64 sum, and the quantised model
# against its dequantised weights (kernel and model unit tests).
cargo test --target aarch64-unknown-linux-gnu --lib -- kernels::quant_dot model::tests
echo "arm64 tests passed under qemu ($(( $(date +%s) - t0 )) s)"
