#!/usr/bin/env bash
# Fuzz smoke run (issue #7), called by .ci/run: builds every cargo-fuzz target in fuzz/ with the
# nightly toolchain (libFuzzer + ASan, as `cargo fuzz` does), replays the committed seeds
# (fuzz/corpus/<target>/seed-*) and crash reproducers (fuzz/artifacts/<target>/*), then fuzzes
# each target for SMOLCAP_FUZZ_SECONDS (default 20) from the seeds into a scratch corpus.
#
# Environment:
#   SMOLCAP_FUZZ_SECONDS  seconds per target (default 20; 0 = build and replay only)
#   SMOLCAP_FUZZ_TARGETS  space-separated subset of targets (default: all in fuzz/Cargo.toml)
#   SMOLCAP_FUZZ_DIR      where the build and scratch corpora go (default $CARGO_TARGET_DIR/fuzz
#                         or ./target/fuzz)
#   SMOLCAP_FUZZ_SANITIZER address (default) or none
# Needs: rustup with a nightly toolchain (installed here when missing). cargo-fuzz itself is not
# needed: the build uses the same flags directly (see below).
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
secs="${SMOLCAP_FUZZ_SECONDS:-20}"
san="${SMOLCAP_FUZZ_SANITIZER:-address}"
work="${SMOLCAP_FUZZ_DIR:-${CARGO_TARGET_DIR:-$root/target}/fuzz}"
mkdir -p "$work"
start=$(date +%s)
step() { echo; echo "== fuzz: $* ($(($(date +%s) - start)) s)"; }

step "toolchain"
if ! cargo +nightly --version >/dev/null 2>&1; then
    echo "installing the nightly toolchain (minimal profile)"
    rustup toolchain install nightly --profile minimal
fi
cargo +nightly --version

targets="${SMOLCAP_FUZZ_TARGETS:-$(sed -n 's/^name = "\(.*\)"/\1/p' fuzz/Cargo.toml | grep -v '^smolcap-fuzz$')}"
step "build (sanitizer: $san)"
# The flags `cargo fuzz build -O` (cargo-fuzz 0.13) passes, without installing cargo-fuzz (that
# install alone took 2-15 minutes here): SanitizerCoverage for libFuzzer, `--cfg fuzzing`, debug
# assertions, release optimisation. `cargo fuzz run <target>` gives the same binaries.
flags="-Cpasses=sancov-module -Cllvm-args=-sanitizer-coverage-level=4 \
-Cllvm-args=-sanitizer-coverage-inline-8bit-counters -Cllvm-args=-sanitizer-coverage-pc-table \
-Cllvm-args=-sanitizer-coverage-trace-compares --cfg fuzzing \
-Cllvm-args=-simplifycfg-branch-fold-threshold=0 -Cdebug-assertions"
if [ "$san" = address ]; then flags="$flags -Zsanitizer=address"; fi
bins=()
for t in $targets; do bins+=(--bin "$t"); done
RUSTFLAGS="$flags" cargo +nightly build --manifest-path fuzz/Cargo.toml --release \
    --target x86_64-unknown-linux-gnu --target-dir "$work/target" "${bins[@]}"

fail=0
summary=()
for t in $targets; do
    step "$t"
    bin="$work/target/x86_64-unknown-linux-gnu/release/$t"
    [ -x "$bin" ] || { echo "missing $bin"; fail=1; continue; }
    # Replay committed seeds and reproducers: each must run without a crash.
    inputs=()
    for f in fuzz/corpus/"$t"/seed-* fuzz/artifacts/"$t"/*; do
        [ -f "$f" ] && inputs+=("$f")
    done
    if [ ${#inputs[@]} -gt 0 ]; then
        if ! "$bin" -rss_limit_mb=4096 -timeout=30 "${inputs[@]}" >"$work/$t.replay.log" 2>&1; then
            tail -n 40 "$work/$t.replay.log"
            summary+=("$t: replay of ${#inputs[@]} committed inputs FAILED")
            fail=1
            continue
        fi
    fi
    if [ "$secs" -gt 0 ]; then
        scratch="$work/corpus/$t"
        mkdir -p "$scratch" "$work/artifacts/$t"
        if "$bin" "$scratch" "fuzz/corpus/$t" -max_total_time="$secs" -rss_limit_mb=4096 \
            -timeout=30 -max_len=65536 -print_final_stats=1 \
            -artifact_prefix="$work/artifacts/$t/" >"$work/$t.log" 2>&1; then
            runs="$(sed -n 's/^stat::number_of_executed_units: *//p' "$work/$t.log" | tail -1)"
            summary+=("$t: replayed ${#inputs[@]} committed inputs, ${runs:-?} runs in ${secs} s, no crash")
        else
            tail -n 60 "$work/$t.log"
            summary+=("$t: CRASH (reproducer in $work/artifacts/$t/; commit it to fuzz/artifacts/$t/ with the fix)")
            fail=1
        fi
    else
        summary+=("$t: replayed ${#inputs[@]} committed inputs")
    fi
done

step "summary"
printf '%s\n' "${summary[@]}"
if [ "$fail" -ne 0 ]; then
    echo "fuzz: FAILED"
    exit 1
fi
echo "fuzz: all targets clean ($(($(date +%s) - start)) s)"
