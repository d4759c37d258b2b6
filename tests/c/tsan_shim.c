/* Rust's nightly LLVM instruments memory intrinsics as __tsan_memcpy / __tsan_memmove /
 * __tsan_memset, which clang 14's ThreadSanitizer runtime (Debian's) does not export yet. These
 * forward to memcpy/memmove/memset, which that runtime intercepts (so the accesses are still
 * checked). Linked into the TSan test executables only (tests/tsan.sh). */
#include <string.h>

void *__tsan_memcpy(void *dst, const void *src, size_t n);
void *__tsan_memmove(void *dst, const void *src, size_t n);
void *__tsan_memset(void *dst, int c, size_t n);

void *__tsan_memcpy(void *dst, const void *src, size_t n) { return memcpy(dst, src, n); }
void *__tsan_memmove(void *dst, const void *src, size_t n) { return memmove(dst, src, n); }
void *__tsan_memset(void *dst, int c, size_t n) { return memset(dst, c, n); }
