#!/usr/bin/env bash
# Lays out a built libsmolcap as an install prefix usable with pkg-config:
#   PREFIX/lib/libsmolcap.so.VERSION, libsmolcap.so.0 -> it, libsmolcap.so -> libsmolcap.so.0
#   PREFIX/lib/libsmolcap.a (when BUILD_DIR has one), PREFIX/lib/pkgconfig/smolcap.pc
#   PREFIX/include/smolcap.h, PREFIX/include/smolcap.hpp
# Usage: tools/stage_native.sh BUILD_DIR PREFIX   (BUILD_DIR e.g. target/debug or target/release)
# Then: PKG_CONFIG_PATH=PREFIX/lib/pkgconfig pkg-config --cflags --libs smolcap
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
build="${1:?usage: stage_native.sh BUILD_DIR PREFIX}"
prefix="${2:?usage: stage_native.sh BUILD_DIR PREFIX}"
mkdir -p "$prefix"
prefix="$(cd "$prefix" && pwd)"
version="$(sed -n 's/^version = "\(.*\)"/\1/p' "$root/Cargo.toml" | head -1)"
abi="$(sed -n 's/^#define SMOLCAP_ABI_VERSION \([0-9]*\)/\1/p' "$root/include/smolcap.h")"
[ -f "$build/libsmolcap.so" ] || { echo "stage_native: $build/libsmolcap.so not found" >&2; exit 1; }
mkdir -p "$prefix/lib/pkgconfig" "$prefix/include"
cp -f "$build/libsmolcap.so" "$prefix/lib/libsmolcap.so.$version"
ln -sfn "libsmolcap.so.$version" "$prefix/lib/libsmolcap.so.$abi"
ln -sfn "libsmolcap.so.$abi" "$prefix/lib/libsmolcap.so"
if [ -f "$build/libsmolcap.a" ]; then cp -f "$build/libsmolcap.a" "$prefix/lib/"; fi
cp -f "$root/include/smolcap.h" "$root/bindings/cpp/smolcap.hpp" "$prefix/include/"
sed -e "s|@PREFIX@|$prefix|" -e "s|@VERSION@|$version|" \
    "$root/pkgconfig/smolcap.pc.in" > "$prefix/lib/pkgconfig/smolcap.pc"
echo "staged libsmolcap $version (ABI $abi) in $prefix"
