#!/usr/bin/env bash
# ThreadSanitizer run (issue #7), called by .ci/run: builds libsmolcap.so with the Rust side
# instrumented (nightly, -Zsanitizer=thread, -Zbuild-std so std is instrumented too), compiles
# tests/c/test_stress.c (8 threads on one model, random cancellations, outputs compared with the
# sequential ones) and tests/c/test_threads.c with clang -fsanitize=thread, and runs them with
# halt_on_error: any data race in the library or the C harness fails the run.
#
# Environment: SMOLCAP_TSAN_ROUNDS (rounds per thread in test_stress, default 4),
# SMOLCAP_TSAN_DIR (build dir, default $CARGO_TARGET_DIR/tsan or ./target/tsan).
# Needs: rustup nightly with rust-src (added here when missing), clang.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
work="${SMOLCAP_TSAN_DIR:-${CARGO_TARGET_DIR:-$root/target}/tsan}"
rounds="${SMOLCAP_TSAN_ROUNDS:-4}"
triple=x86_64-unknown-linux-gnu
mkdir -p "$work/bin" "$work/lib"
start=$(date +%s)
step() { echo; echo "== tsan: $* ($(($(date +%s) - start)) s)"; }

step "toolchain"
if ! cargo +nightly --version >/dev/null 2>&1; then
    rustup toolchain install nightly --profile minimal
fi
if ! rustup component list --toolchain nightly --installed | grep -q '^rust-src'; then
    rustup component add rust-src --toolchain nightly
fi
cargo +nightly --version
clang --version | head -1

step "build libsmolcap.so with -Zsanitizer=thread"
# Dependencies at opt-level 1 (not the dev profile's 3): the instrumented build compiles much
# faster and the tiny fixture model stays quick.
RUSTFLAGS="-Zsanitizer=thread -Cforce-frame-pointers=yes" \
    cargo +nightly build --lib -Zbuild-std --target "$triple" --target-dir "$work/target" \
    --config 'profile.dev.package."*".opt-level=1' --config 'profile.dev.debug="line-tables-only"'
lib="$work/target/$triple/debug/libsmolcap.so"
ln -sf "$lib" "$work/lib/libsmolcap.so"
ln -sf "$lib" "$work/lib/libsmolcap.so.0"

step "compile the C tests with clang -fsanitize=thread"
cflags=(-std=c99 -Wall -Wextra -Werror -g -O1 -fsanitize=thread -pthread -Iinclude -Itests/c)
clang "${cflags[@]}" -o "$work/bin/test_stress" tests/c/test_stress.c tests/c/tsan_shim.c \
    -L"$work/lib" -Wl,-rpath,"$work/lib" -lsmolcap -lm
clang "${cflags[@]}" -o "$work/bin/test_threads" tests/c/test_threads.c tests/c/tsan_shim.c \
    -L"$work/lib" -Wl,-rpath,"$work/lib" -lsmolcap -lm

fixture="$root/tests/fixtures/tiny-idefics3"
images="$root/tests/fixtures/images"
export TSAN_OPTIONS="halt_on_error=1 second_deadlock_stack=1 report_signal_unsafe=0"
export RUST_BACKTRACE=0
fail=0
step "test_stress ($rounds rounds x 8 threads, random cancellations)"
if "$work/bin/test_stress" "$fixture" "$images" "$rounds" 2>&1 | tee "$work/test_stress.log" | tail -n 20; then
    :
fi
last="$(tail -n 1 "$work/test_stress.log")"
if [[ "$last" != *" 0 failed" ]] || grep -q "ThreadSanitizer" "$work/test_stress.log"; then
    echo "tsan: test_stress FAILED (log: $work/test_stress.log)"
    fail=1
fi

# test_threads needs the expected file written by the Rust path (run_native.sh makes it).
expected="${CARGO_TARGET_DIR:-$root/target}/native/expected.txt"
if [ -s "$expected" ]; then
    step "test_threads"
    "$work/bin/test_threads" "$fixture" "$images" "$expected" >"$work/test_threads.log" 2>&1 || true
    tail -n 5 "$work/test_threads.log"
    last="$(tail -n 1 "$work/test_threads.log")"
    if [[ "$last" != *" 0 failed" ]] || grep -q "ThreadSanitizer" "$work/test_threads.log"; then
        echo "tsan: test_threads FAILED (log: $work/test_threads.log)"
        fail=1
    fi
else
    echo "tsan: skipping test_threads ($expected missing: run tests/run_native.sh first)"
fi

step "done"
if [ "$fail" -ne 0 ]; then exit 1; fi
echo "tsan: no data race reported ($(($(date +%s) - start)) s)"
