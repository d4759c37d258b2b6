// Compiles include/smolcap.h as C++17 (-Wall -Wextra -Wpedantic -Werror) and checks that the
// C declarations are usable from C++ (extern "C" linkage, POD params structs).
#include <smolcap.h>

#include <cstdio>
#include <type_traits>

static_assert(std::is_trivially_copyable<smolcap_generate_params>::value, "POD params");
static_assert(std::is_standard_layout<smolcap_image>::value, "POD image");
static_assert(sizeof(smolcap_status) == 4, "int32 status");

int main() {
    smolcap_generate_params p;
    int failed = smolcap_generate_params_init(&p, sizeof p) != SMOLCAP_STATUS_OK;
    failed += smolcap_abi_version() != SMOLCAP_ABI_VERSION;
    std::printf("%d passed, %d failed\n", 2 - failed, failed);
    return failed;
}
