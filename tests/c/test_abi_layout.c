/* The C ABI's struct layouts as this compiler sees include/smolcap.h, against the record in
 * tests/c/abi_layout.inc (written and kept compatible by tests/abi_layout.rs): every struct's
 * sizeof and every field's offsetof. A change to the header that moves a field fails here. */
#include <stddef.h>

#include "check.h"

int main(void) {
#define ABI_STRUCT(s, size) \
    CHECK(sizeof(s) == (size), "sizeof(%s) is %lu, recorded %lu", #s, (unsigned long)sizeof(s), \
          (unsigned long)(size));
#define ABI_FIELD(s, f, off)                                                                   \
    CHECK(offsetof(s, f) == (off), "offsetof(%s, %s) is %lu, recorded %lu", #s, #f,           \
          (unsigned long)offsetof(s, f), (unsigned long)(off));
#include "abi_layout.inc"
#undef ABI_STRUCT
#undef ABI_FIELD
    return finish();
}
