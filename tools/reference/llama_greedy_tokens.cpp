// Greedy token ids from llama.cpp for a text-only prompt: the reference side of the "same
// tokens as llama.cpp on the same Q8_0 GGUF" check (docs/QUANTIZATION.md).
//
//   llama_greedy_tokens MODEL.gguf N_TOKENS THREADS PROMPT
//
// Prints "prompt: ids..." (special tokens parsed, nothing added) and "greedy: ids..." (argmax at
// every step, stopping after an end-of-generation token). Built against the llama.cpp source of
// the llama-cpp-python sdist (tools/reference/llama_cpp_check.sh); not part of the build.
#include "llama.h"

#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

static void fill(llama_batch_ext *b, const llama_token *t, int n, llama_pos p0) {
    llama_batch_ext_clear(b);
    for (int i = 0; i < n; i++) {
        const int idx = llama_batch_ext_add_token(b, 0, t[i]);
        const llama_pos pos = p0 + i;
        llama_batch_ext_set_pos(b, idx, &pos);
    }
    llama_batch_ext_set_output_logits(b, n - 1, true);
}

int main(int argc, char **argv) {
    if (argc != 5) {
        fprintf(stderr, "usage: %s MODEL.gguf N_TOKENS THREADS PROMPT\n", argv[0]);
        return 2;
    }
    const int n_gen = atoi(argv[2]), threads = atoi(argv[3]);
    const std::string prompt = argv[4];
    llama_backend_init();
    llama_model *model = llama_model_load_from_file(argv[1], llama_model_default_params());
    if (!model) return 1;
    const llama_vocab *vocab = llama_model_get_vocab(model);
    const int n = -llama_tokenize(vocab, prompt.c_str(), prompt.size(), NULL, 0, false, true);
    std::vector<llama_token> ids(n);
    if (llama_tokenize(vocab, prompt.c_str(), prompt.size(), ids.data(), n, false, true) < 0) return 1;
    llama_context_params cp = llama_context_default_params();
    cp.n_ctx = n + n_gen + 8;
    cp.n_batch = n;
    cp.n_threads = cp.n_threads_batch = threads;
    llama_context *ctx = llama_init_from_model(model, cp);
    if (!ctx) return 1;
    llama_sampler *smpl = llama_sampler_chain_init(llama_sampler_chain_default_params());
    llama_sampler_chain_add(smpl, llama_sampler_init_greedy());
    printf("prompt:");
    for (auto t : ids) printf(" %d", t);
    printf("\ngreedy:");
    llama_batch_ext *batch = llama_batch_ext_init(ctx);
    fill(batch, ids.data(), n, 0);
    int pos = n;
    for (int i = 0; i < n_gen; i++) {
        if (llama_process(ctx, LLAMA_PROCESS_TYPE_DECODE, batch)) return 1;
        llama_token t = llama_sampler_sample(smpl, ctx, -1);
        printf(" %d", t);
        if (llama_vocab_is_eog(vocab, t)) break;
        fill(batch, &t, 1, pos++);
    }
    printf("\n");
    llama_batch_ext_free(batch);
    llama_sampler_free(smpl);
    llama_free(ctx);
    llama_model_free(model);
    return 0;
}
