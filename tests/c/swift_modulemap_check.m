// Compiles the Swift package's module map (bindings/swift/Sources/CSmolcap) with clang
// -fmodules: imports the CSmolcap module as Swift would, and calls through it.
@import CSmolcap;

#include <stdio.h>
#include <string.h>

int main(void) {
    smolcap_generate_params p;
    int failed = 0;
    failed += smolcap_generate_params_init(&p, sizeof p) != SMOLCAP_STATUS_OK;
    failed += strcmp(smolcap_status_string(SMOLCAP_STATUS_OK), "ok") != 0;
    failed += smolcap_abi_version() != SMOLCAP_ABI_VERSION;
    printf("%d passed, %d failed\n", 3 - failed, failed);
    return failed;
}
