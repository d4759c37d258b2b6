#!/usr/bin/env bash
# Native tests of the C ABI and its host bindings (C, C++, Go, Swift module map, examples).
#
# Build once: the library is the dev-profile cdylib that `cargo test` already produced
# ($CARGO_TARGET_DIR/debug/libsmolcap.so); `cargo build --lib` below is a no-op then. Set
# SMOLCAP_PROFILE=release to test target/release instead (builds it if needed).
#
# Steps: stage the library as an install prefix with smolcap.pc (tools/stage_native.sh); write
# the Rust path's captions (tests/ffi_reference.rs); compile the C tests with -std=c99 -Wall
# -Wextra -Wpedantic -Werror (and the header as C++17); run the C tests and the C++ test under
# ASan+UBSan, test_basic once under valgrind; `go test -race` the Go binding; compile the Swift
# module map with clang -fmodules; build and run the C, C++ and Go examples; build the staticlib
# and run test_basic linked against it.
#
# Needs: gcc, g++, clang, pkg-config, valgrind, go (Debian golang-go). Every test program prints
# "N passed, N failed" as its last line; this script exits non-zero on any failure.
# Environment: CARGO_TARGET_DIR (default ./target), SMOLCAP_PROFILE (debug|release),
# SMOLCAP_SKIP (comma-separated: valgrind, go, swift, staticlib - e.g. for local runs without
# those tools). The staticlib step runs last: `cargo rustc --crate-type staticlib` rebuilds only
# the smolcap crate (~20 s in dev) and links test_basic statically against libsmolcap.a.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
target="${CARGO_TARGET_DIR:-$root/target}"
mkdir -p "$target"
target="$(cd "$target" && pwd)"
profile="${SMOLCAP_PROFILE:-debug}"
skip=",${SMOLCAP_SKIP:-},"
out="$target/native"
bin="$out/bin"
prefix="$out/prefix"
logs="$out/logs"
rm -rf "$bin" "$logs"
mkdir -p "$bin" "$logs"
fixture="$root/tests/fixtures/tiny-idefics3"
images="$root/tests/fixtures/images"
expected="$out/expected.txt"
metrics_ref="$out/metrics.txt"
train_ref="$out/train.txt"
scratch="$out/tmp"
start=$(date +%s)
step() { echo; echo "== native: $* ($(($(date +%s) - start)) s)"; }

summary=()
failures=0
# record NAME STATUS DETAIL
record() {
    summary+=("$(printf '%-28s %-5s %s' "$1" "$2" "$3")")
    if [ "$2" != "ok" ]; then failures=$((failures + 1)); fi
}
# run_test NAME CMD...: runs a test program, requires exit 0 and a last line "N passed, 0 failed".
run_test() {
    local name="$1"
    shift
    local log="$logs/$name.log" rc=0
    "$@" >"$log" 2>&1 || rc=$?
    local last
    last="$(grep -E '^[0-9]+ passed, [0-9]+ failed$' "$log" | tail -1 || true)"
    tail -n 15 "$log" | sed "s/^/  [$name] /"
    if [ "$rc" -eq 0 ] && [ -n "$last" ] && [[ "$last" == *" 0 failed" ]] &&
        [ "$(tail -n 1 "$log")" == "$last" ]; then
        record "$name" ok "$last"
    else
        record "$name" FAIL "rc=$rc; ${last:-no 'N passed, N failed' line} (log: $log)"
    fi
}
need() {
    command -v "$1" >/dev/null 2>&1 || { echo "run_native.sh: '$1' is required" >&2; exit 1; }
}
need gcc
need g++
need pkg-config

step "build ($profile)"
if [ "$profile" = release ]; then
    cargo build --lib --release
else
    cargo build --lib
fi
lib="$target/$profile/libsmolcap.so"
soname="$(readelf -d "$lib" | sed -n 's/.*Library soname: \[\(.*\)\]/\1/p')"
if [ "$soname" = "libsmolcap.so.0" ]; then record soname ok "$soname"; else record soname FAIL "'$soname'"; fi

step "stage prefix + smolcap.pc"
bash "$root/tools/stage_native.sh" "$target/$profile" "$prefix"
export PKG_CONFIG_PATH="$prefix/lib/pkgconfig${PKG_CONFIG_PATH:+:$PKG_CONFIG_PATH}"
export LD_LIBRARY_PATH="$prefix/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
export RUST_BACKTRACE=0
cflags="$(pkg-config --cflags smolcap)"
libs="$(pkg-config --libs smolcap)"

step "Rust path (tests/ffi_reference.rs -> $expected)"
rm -f "$expected" "$metrics_ref"
rm -rf "$scratch"
mkdir -p "$scratch"
if [ "$profile" = release ]; then rel=(--release); else rel=(); fi
if SMOLCAP_EXPECTED_OUT="$expected" SMOLCAP_METRICS_OUT="$metrics_ref" SMOLCAP_TRAIN_OUT="$train_ref" cargo test -q "${rel[@]}" --test ffi_reference >"$logs/ffi_reference.log" 2>&1 &&
    [ -s "$expected" ] && [ -s "$metrics_ref" ]; then
    record ffi_reference ok "$(grep -c "^caption" "$expected") captions + NLL + $(grep -c "^score" "$metrics_ref") metric rows written"
else
    cat "$logs/ffi_reference.log"
    record ffi_reference FAIL "see $logs/ffi_reference.log"
    echo "cannot continue without the Rust reference" >&2
    printf '%s\n' "${summary[@]}"
    exit 1
fi

step "compile (C99 pedantic, C++17, sanitizers)"
strict_c=(-std=c99 -Wall -Wextra -Wpedantic -Werror -g -O1)
strict_cxx=(-std=c++17 -Wall -Wextra -Wpedantic -Werror -g -O1)
san=(-fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=all)
compile() { # NAME CMD... (compile failures are test failures)
    local name="$1"
    shift
    if "$@" >"$logs/compile-$name.log" 2>&1; then return 0; fi
    cat "$logs/compile-$name.log"
    record "compile $name" FAIL "see $logs/compile-$name.log"
    return 1
}
# (a failed compile is recorded; `|| true` keeps going to report everything)
# shellcheck disable=SC2086
{
    if compile header-c99 gcc "${strict_c[@]}" $cflags -fsyntax-only -x c "$prefix/include/smolcap.h"; then
        record "header as C99 (gcc)" ok "-Wpedantic -Werror"
    fi
    compile header-cxx17 g++ "${strict_cxx[@]}" $cflags -o "$bin/header_cxx" \
        tests/c/header_cxx.cpp $libs || true
    compile test_basic gcc "${strict_c[@]}" $cflags -o "$bin/test_basic" tests/c/test_basic.c $libs -lm || true
    compile test_abi_layout gcc "${strict_c[@]}" $cflags -o "$bin/test_abi_layout" \
        tests/c/test_abi_layout.c $libs || true
    compile test_basic_asan gcc "${strict_c[@]}" "${san[@]}" $cflags -o "$bin/test_basic_asan" \
        tests/c/test_basic.c $libs -lm || true
    compile test_adapters_asan gcc "${strict_c[@]}" "${san[@]}" $cflags -o "$bin/test_adapters_asan" \
        tests/c/test_adapters.c $libs -lm || true
    compile test_train_asan gcc "${strict_c[@]}" "${san[@]}" $cflags -o "$bin/test_train_asan" \
        tests/c/test_train.c $libs -lm || true
    compile test_threads_asan gcc "${strict_c[@]}" "${san[@]}" $cflags -pthread \
        -o "$bin/test_threads_asan" tests/c/test_threads.c $libs -lm || true
    compile test_stress_asan gcc "${strict_c[@]}" "${san[@]}" $cflags -pthread \
        -o "$bin/test_stress_asan" tests/c/test_stress.c $libs -lm || true
    compile test_cpp_asan g++ "${strict_cxx[@]}" "${san[@]}" -pthread $cflags \
        -o "$bin/test_cpp_asan" tests/cpp/test_cpp.cpp $libs || true
    compile example_c gcc "${strict_c[@]}" $cflags -o "$bin/caption_c" examples/c/caption.c $libs || true
    compile example_cpp g++ "${strict_cxx[@]}" $cflags -o "$bin/caption_cpp" \
        examples/cpp/caption.cpp $libs || true
    if command -v clang++ >/dev/null 2>&1; then
        if compile header-clang clang++ "${strict_cxx[@]}" $cflags -fsyntax-only \
            -x c++ bindings/cpp/smolcap.hpp; then
            record "smolcap.hpp (clang++)" ok "C++17 -Wpedantic -Werror"
        fi
    fi
}

step "C / C++ tests (ASan + UBSan, no suppressions)"
export ASAN_OPTIONS="detect_leaks=1:halt_on_error=1:abort_on_error=0:strict_string_checks=1"
export UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1"
[ -x "$bin/header_cxx" ] && run_test header_cxx17 "$bin/header_cxx"
[ -x "$bin/test_abi_layout" ] && run_test test_abi_layout "$bin/test_abi_layout"
[ -x "$bin/test_basic_asan" ] && run_test test_basic_asan "$bin/test_basic_asan" "$fixture" "$images" "$expected"
[ -x "$bin/test_adapters_asan" ] && run_test test_adapters_asan "$bin/test_adapters_asan" "$fixture" \
    "$root/tests/fixtures" "$metrics_ref" "$scratch"
[ -x "$bin/test_train_asan" ] && run_test test_train_asan "$bin/test_train_asan" "$fixture" \
    "$root/tests/fixtures" "$train_ref" "$scratch"
[ -x "$bin/test_threads_asan" ] && run_test test_threads_asan "$bin/test_threads_asan" "$fixture" "$images" "$expected"
[ -x "$bin/test_stress_asan" ] && run_test test_stress_asan "$bin/test_stress_asan" "$fixture" "$images" 4
[ -x "$bin/test_cpp_asan" ] && run_test test_cpp_asan "$bin/test_cpp_asan" "$fixture" "$images" "$expected"
unset ASAN_OPTIONS UBSAN_OPTIONS

if [[ "$skip" != *",valgrind,"* ]]; then
    step "valgrind (test_basic quick)"
    need valgrind
    [ -x "$bin/test_basic" ] && run_test test_basic_valgrind valgrind --leak-check=full \
        --error-exitcode=1 --num-callers=40 --suppressions="$root/tests/c/valgrind.supp" \
        --log-file="$logs/valgrind-report.log" \
        "$bin/test_basic" "$fixture" "$images" "$expected" quick
    grep -E "ERROR SUMMARY|definitely lost|indirectly lost|possibly lost" \
        "$logs/valgrind-report.log" | sed 's/^/  /' || true
else
    record test_basic_valgrind SKIP "SMOLCAP_SKIP"
fi

step "examples"
for ex in caption_c caption_cpp; do
    if [ -x "$bin/$ex" ] && "$bin/$ex" "$fixture" "$images/photo_640x480.jpg" 12 >"$logs/$ex.log" 2>&1 &&
        grep -q "(5 tokens)" "$logs/$ex.log"; then
        record "example $ex" ok "$(head -c 60 "$logs/$ex.log" | tr '\n' ' ')"
    else
        cat "$logs/$ex.log" 2>/dev/null || true
        record "example $ex" FAIL "see $logs/$ex.log"
    fi
done

export GOFLAGS=-mod=mod GOPROXY=off GOTOOLCHAIN=local
export GOCACHE="$out/go-cache" GOPATH="$out/gopath"
if [[ "$skip" != *",go,"* ]]; then
    step "Go binding (go test -race) and example"
    need go
    (cd bindings/go && test -z "$(gofmt -l .)" && go vet . && go test -race -c -o "$bin/go_test" .) \
        >"$logs/go-build.log" 2>&1 || { cat "$logs/go-build.log"; record "go build/vet/fmt" FAIL "see log"; }
    if [ -x "$bin/go_test" ]; then
        SMOLCAP_MODEL_DIR="$fixture" SMOLCAP_IMAGES_DIR="$images" SMOLCAP_EXPECTED="$expected" \
            run_test go_test_race "$bin/go_test" -test.v -test.count=1
    fi
    if (cd examples/go && test -z "$(gofmt -l .)" && go build -o "$bin/caption_go" .) >"$logs/go-example.log" 2>&1 &&
        "$bin/caption_go" "$fixture" "$images/photo_640x480.jpg" 12 >>"$logs/go-example.log" 2>&1 &&
        grep -q "(5 tokens)" "$logs/go-example.log"; then
        record "example caption_go" ok "$(tail -2 "$logs/go-example.log" | tr '\n' ' ')"
    else
        cat "$logs/go-example.log"
        record "example caption_go" FAIL "see $logs/go-example.log"
    fi
else
    record go SKIP "SMOLCAP_SKIP"
fi

if [[ "$skip" != *",swift,"* ]]; then
    step "Swift module map (clang -fmodules; the Swift code itself is not compiled here)"
    need clang
    # shellcheck disable=SC2086
    if clang -fmodules -fmodules-cache-path="$out/modcache" \
        -fmodule-map-file=bindings/swift/Sources/CSmolcap/module.modulemap $cflags \
        -Wall -Wextra -Werror -x objective-c tests/c/swift_modulemap_check.m \
        -o "$bin/swift_modulemap_check" $libs >"$logs/swift-modulemap.log" 2>&1; then
        run_test swift_modulemap "$bin/swift_modulemap_check"
    else
        cat "$logs/swift-modulemap.log"
        record swift_modulemap FAIL "see $logs/swift-modulemap.log"
    fi
else
    record swift_modulemap SKIP "SMOLCAP_SKIP"
fi

if [[ "$skip" != *",staticlib,"* ]]; then
    step "staticlib (libsmolcap.a, built once here) + a statically linked test_basic"
    if cargo rustc -q --lib "${rel[@]}" --crate-type staticlib >"$logs/staticlib.log" 2>&1 &&
        cp -f "$target/$profile/libsmolcap.a" "$prefix/lib/" &&
        gcc "${strict_c[@]}" $cflags -o "$bin/test_basic_static" tests/c/test_basic.c \
            "$prefix/lib/libsmolcap.a" -lpthread -ldl -lm >>"$logs/staticlib.log" 2>&1; then
        if ldd "$bin/test_basic_static" | grep -q smolcap; then
            record test_basic_static FAIL "linked against the shared library"
        else
            run_test test_basic_static "$bin/test_basic_static" "$fixture" "$images" "$expected" quick
        fi
    else
        cat "$logs/staticlib.log"
        record staticlib FAIL "see $logs/staticlib.log"
    fi
else
    record staticlib SKIP "SMOLCAP_SKIP"
fi

step "summary"
printf '%s\n' "${summary[@]}"
if [ "$failures" -ne 0 ]; then
    echo "native: $failures failure(s)"
    exit 1
fi
echo "native: all passed ($(($(date +%s) - start)) s)"
