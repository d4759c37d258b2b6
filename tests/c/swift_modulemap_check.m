// Compiles the Swift package's module map (bindings/swift/Sources/CSmolcap) with clang
// -fmodules: imports the CSmolcap module as Swift would, and calls through it.
@import CSmolcap;

#include <stdio.h>
#include <string.h>

int main(void) {
    smolcap_generate_params p;
    smolcap_merge_params mp;
    smolcap_scores *sc = NULL;
    const char *cand = "a cat", *ref = "a cat";
    size_t offsets[2] = {0, 1};
    double bleu1 = 0;
    int failed = 0;
    failed += smolcap_generate_params_init(&p, sizeof p) != SMOLCAP_STATUS_OK;
    failed += strcmp(smolcap_status_string(SMOLCAP_STATUS_OK), "ok") != 0;
    failed += smolcap_abi_version() != SMOLCAP_ABI_VERSION;
    failed += smolcap_merge_params_init(&mp, sizeof mp) != SMOLCAP_STATUS_OK;
    failed += smolcap_score_captions(&cand, 1, &ref, offsets, SMOLCAP_SUITE_SEED, &sc) !=
              SMOLCAP_STATUS_OK;
    failed += smolcap_scores_corpus(sc, "BLEU-1", &bleu1) != SMOLCAP_STATUS_OK || bleu1 != 1.0;
    smolcap_scores_free(sc);
    smolcap_adapter_free(NULL);
    printf("%d passed, %d failed\n", 6 - failed, failed);
    return failed;
}
