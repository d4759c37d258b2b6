/* End-to-end test of the C API on the tiny fixture: versions, errors, captions of every
 * fixture image (a JPEG from memory included) equal to the Rust path token for token and byte
 * for byte, raw RGB8/RGBA8 with stride, batching, beam and sampling, the token callback,
 * streams, scoring, panic -> poisoned, and no handle left alive.
 *
 * Usage: test_basic MODEL_DIR IMAGES_DIR EXPECTED_FILE [quick]
 * ("quick" runs a subset, for valgrind). */
#include <math.h>

#include "check.h"

static smolcap_generate_params greedy12(void) {
    smolcap_generate_params p;
    if (smolcap_generate_params_init(&p, sizeof p) != SMOLCAP_STATUS_OK) {
        fprintf(stderr, "params init failed: %s\n", smolcap_last_error());
        exit(2);
    }
    p.max_new_tokens = 12;
    return p;
}

static smolcap_image encoded(const unsigned char *data, size_t len) {
    smolcap_image im;
    memset(&im, 0, sizeof im);
    im.kind = SMOLCAP_IMAGE_ENCODED;
    im.data = data;
    im.len = len;
    return im;
}

typedef struct {
    char text[1024];
    size_t len;
    int calls;
    int stop_after;
} pieces;

static int32_t on_piece(size_t index, const char *piece, size_t len, void *user) {
    pieces *p = (pieces *)user;
    (void)index;
    if (p->len + len < sizeof p->text) {
        memcpy(p->text + p->len, piece, len);
        p->len += len;
        p->text[p->len] = 0;
    }
    p->calls++;
    return p->calls >= p->stop_after ? 1 : 0;
}

static void test_versions(void) {
    char want[64];
    sprintf(want, "%d.%d.%d", SMOLCAP_VERSION_MAJOR, SMOLCAP_VERSION_MINOR,
            SMOLCAP_VERSION_PATCH);
    CHECK(strcmp(smolcap_version(), want) == 0, "version %s != header %s", smolcap_version(),
          want);
    CHECK(smolcap_abi_version() == SMOLCAP_ABI_VERSION, "abi %u", smolcap_abi_version());
    CHECK(strstr(smolcap_features(), "cpu") != NULL, "features %s", smolcap_features());
    CHECK(smolcap_last_error() != NULL, "last error is NULL");
    CHECK(strcmp(smolcap_status_string(SMOLCAP_STATUS_BUSY), "busy") == 0, "%s",
          smolcap_status_string(SMOLCAP_STATUS_BUSY));
    CHECK(strcmp(smolcap_status_string(999), "unknown status") == 0, "%s",
          smolcap_status_string(999));
}

static void test_errors(const char *model_dir, smolcap_session *s, const unsigned char *png,
                        size_t png_len) {
    smolcap_model *m = (smolcap_model *)0x1;
    smolcap_captions *c = NULL;
    smolcap_generate_params p = greedy12();
    smolcap_image im = encoded(png, png_len);
    smolcap_load_params lp;
    (void)model_dir;
    CHECK_STATUS(smolcap_model_load(NULL, NULL, &m), SMOLCAP_STATUS_INVALID_ARGUMENT);
    CHECK_MSG("dir_or_repo is NULL");
    CHECK(m == (smolcap_model *)0x1, "out written on failure");
    CHECK_STATUS(smolcap_model_load("/no/such/dir", NULL, &m), SMOLCAP_STATUS_IO);
    CHECK_MSG("/no/such/dir");
    CHECK_STATUS(smolcap_model_load("caf\xe9", NULL, &m), SMOLCAP_STATUS_UTF8);
    CHECK_OK(smolcap_load_params_init(&lp, sizeof lp));
    lp.dtype = 77;
    CHECK_STATUS(smolcap_model_load(model_dir, &lp, &m), SMOLCAP_STATUS_INVALID_ARGUMENT);
    CHECK_MSG("dtype 77");
    lp.struct_size = 2;
    CHECK_STATUS(smolcap_model_load(model_dir, &lp, &m), SMOLCAP_STATUS_INVALID_ARGUMENT);
    CHECK_MSG("struct_size is 2");

    p.strategy = 12;
    CHECK_STATUS(smolcap_caption(s, &im, 1, &p, NULL, NULL, &c), SMOLCAP_STATUS_INVALID_ARGUMENT);
    CHECK_MSG("params.strategy 12");
    p = greedy12();
    im.len = 50; /* truncated PNG */
    CHECK_STATUS(smolcap_caption(s, &im, 1, &p, NULL, NULL, &c), SMOLCAP_STATUS_IMAGE);
    CHECK_MSG("images[0]");
    im.len = 0;
    CHECK_STATUS(smolcap_caption(s, &im, 1, &p, NULL, NULL, &c), SMOLCAP_STATUS_INVALID_ARGUMENT);
    CHECK_MSG("length 0");
    im = encoded(png, png_len);
    CHECK_STATUS(smolcap_caption(s, &im, 0, &p, NULL, NULL, &c), SMOLCAP_STATUS_INVALID_ARGUMENT);
    CHECK_STATUS(smolcap_caption(s, &im, 1, &p, NULL, NULL, NULL),
                 SMOLCAP_STATUS_INVALID_ARGUMENT);
    CHECK_MSG("out is NULL");
    CHECK_STATUS(smolcap_caption(NULL, &im, 1, &p, NULL, NULL, &c),
                 SMOLCAP_STATUS_INVALID_ARGUMENT);
    CHECK_MSG("session is NULL");
    CHECK(c == NULL, "out written on failure");

    /* Text limits (issue 27): a prompt or scored caption past its byte limit is LIMIT before
     * it is rendered or tokenized; 0 is not a limit. */
    {
        size_t big_len = (size_t)20 << 20;
        char *big = (char *)malloc(big_len + 1);
        smolcap_nll nll;
        CHECK(big != NULL, "malloc");
        if (big != NULL) {
            memset(big, 'a', big_len);
            big[big_len] = 0;
            p = greedy12();
            CHECK(p.max_prompt_bytes == 256u << 10, "default max_prompt_bytes %llu",
                  (unsigned long long)p.max_prompt_bytes);
            CHECK(p.max_caption_bytes == 64u << 10, "default max_caption_bytes %llu",
                  (unsigned long long)p.max_caption_bytes);
            p.prompt = big;
            CHECK_STATUS(smolcap_caption(s, &im, 1, &p, NULL, NULL, &c), SMOLCAP_STATUS_LIMIT);
            CHECK_MSG("max_prompt_bytes");
            p = greedy12();
            p.max_prompt_bytes = 4;
            CHECK_STATUS(smolcap_caption(s, &im, 1, &p, NULL, NULL, &c), SMOLCAP_STATUS_LIMIT);
            p.max_prompt_bytes = 0;
            CHECK_STATUS(smolcap_caption(s, &im, 1, &p, NULL, NULL, &c),
                         SMOLCAP_STATUS_INVALID_ARGUMENT);
            p = greedy12();
            CHECK_STATUS(smolcap_session_score(s, &im, big, &p, &nll), SMOLCAP_STATUS_LIMIT);
            CHECK_MSG("max_caption_bytes");
            p.max_caption_bytes = 3;
            CHECK_STATUS(smolcap_session_score(s, &im, "a cat", &p, &nll), SMOLCAP_STATUS_LIMIT);
            CHECK(c == NULL, "out written on failure");
            free(big);
        }
    }
    smolcap_model_free(NULL);
    smolcap_session_free(NULL);
    smolcap_captions_free(NULL);
    smolcap_stream_free(NULL);
}

static void test_files(smolcap_session *s, const char *images_dir, const expected_set *e,
                       int quick) {
    size_t i, n_files = quick ? 2 : N_FILES;
    unsigned char *bufs[N_FILES];
    smolcap_image ims[N_FILES];
    smolcap_generate_params p = greedy12();
    smolcap_captions *c = NULL;
    char path[1024];
    for (i = 0; i < n_files; i++) {
        size_t len;
        /* quick: the PNG and the JPEG */
        const char *f = quick ? (i == 0 ? FILES[0] : FILES[N_FILES - 1]) : FILES[i];
        sprintf(path, "%s/%s", images_dir, f);
        bufs[i] = read_file(path, &len);
        ims[i] = encoded(bufs[i], len);
        c = NULL;
        CHECK_OK(smolcap_caption(s, &ims[i], 1, &p, NULL, NULL, &c));
        CHECK(c != NULL && smolcap_captions_count(c) == 1, "count");
        CHECK(same_caption(c, 0, find_expected(e, f)), "%s: caption differs from the Rust path",
              f);
        smolcap_captions_free(c);
    }
    /* All at once, in batches of 3: the same captions in order. */
    p.batch_size = 3;
    c = NULL;
    CHECK_OK(smolcap_caption(s, ims, n_files, &p, NULL, NULL, &c));
    CHECK(smolcap_captions_count(c) == n_files, "batched count %lu",
          (unsigned long)smolcap_captions_count(c));
    for (i = 0; i < n_files && c != NULL; i++) {
        const char *f = quick ? (i == 0 ? FILES[0] : FILES[N_FILES - 1]) : FILES[i];
        CHECK(same_caption(c, i, find_expected(e, f)), "%s: batched caption differs", f);
    }
    smolcap_captions_free(c);
    for (i = 0; i < n_files; i++) free(bufs[i]);
}

static void test_strategies(smolcap_session *s, const unsigned char *png, size_t png_len,
                            const expected_set *e) {
    smolcap_image im = encoded(png, png_len);
    smolcap_generate_params p = greedy12();
    smolcap_captions *c = NULL;
    p.strategy = SMOLCAP_STRATEGY_BEAM;
    p.num_beams = 3;
    CHECK_OK(smolcap_caption(s, &im, 1, &p, NULL, NULL, &c));
    CHECK(c && same_caption(c, 0, find_expected(e, "beam3")), "beam3 differs");
    smolcap_captions_free(c);
    p = greedy12();
    p.strategy = SMOLCAP_STRATEGY_SAMPLE;
    p.temperature = 0.8f;
    p.top_k = 50;
    p.top_p = 0.9f;
    p.seed = 7;
    c = NULL;
    CHECK_OK(smolcap_caption(s, &im, 1, &p, NULL, NULL, &c));
    CHECK(c && same_caption(c, 0, find_expected(e, "sample")), "sample differs");
    smolcap_captions_free(c);
}

static void test_raw(smolcap_session *s, const expected_set *e) {
    size_t len3, len4, lenp;
    unsigned char *rgb = pattern(3, 64 * 3, &len3);
    unsigned char *rgba = pattern(4, 64 * 4, &len4);
    unsigned char *padded = pattern(3, 64 * 3 + 13, &lenp);
    smolcap_image ims[3];
    smolcap_captions *c = NULL;
    smolcap_generate_params p = greedy12();
    size_t i;
    memset(ims, 0, sizeof ims);
    ims[0].kind = SMOLCAP_IMAGE_RGB8;
    ims[0].data = rgb;
    ims[0].len = len3;
    ims[1].kind = SMOLCAP_IMAGE_RGBA8;
    ims[1].data = rgba;
    ims[1].len = len4;
    ims[2].kind = SMOLCAP_IMAGE_RGB8;
    ims[2].data = padded;
    ims[2].len = lenp;
    ims[2].stride = 64 * 3 + 13;
    for (i = 0; i < 3; i++) {
        ims[i].width = 64;
        ims[i].height = 48;
    }
    CHECK_OK(smolcap_caption(s, ims, 3, &p, NULL, NULL, &c));
    for (i = 0; i < 3 && c != NULL; i++) {
        CHECK(same_caption(c, i, find_expected(e, "raw")), "raw image %lu differs",
              (unsigned long)i);
    }
    smolcap_captions_free(c);
    /* Truncated raw buffer. */
    ims[0].len = len3 - 1;
    c = NULL;
    CHECK_STATUS(smolcap_caption(s, ims, 1, &p, NULL, NULL, &c), SMOLCAP_STATUS_INVALID_ARGUMENT);
    CHECK_MSG("images[0].len");
    free(rgb);
    free(rgba);
    free(padded);
}

static void test_callback_stream_score(smolcap_session *s, const unsigned char *jpg,
                                       size_t jpg_len, const unsigned char *png, size_t png_len,
                                       const expected_set *e) {
    smolcap_image im = encoded(jpg, jpg_len);
    smolcap_image pim = encoded(png, png_len);
    smolcap_generate_params p = greedy12();
    smolcap_captions *c = NULL, *r = NULL;
    smolcap_stream *st = NULL;
    smolcap_caption_stats stats;
    smolcap_nll nll;
    pieces pc;
    const expected_caption *want = find_expected(e, "photo_640x480.jpg");
    const char *piece;
    size_t len;
    char streamed[1024];
    size_t sl = 0;
    smolcap_status rc;

    memset(&pc, 0, sizeof pc);
    pc.stop_after = 1 << 30;
    CHECK_OK(smolcap_caption(s, &im, 1, &p, on_piece, &pc, &c));
    CHECK(pc.calls > 0 && strcmp(pc.text, want->text) == 0, "callback text \"%s\"", pc.text);
    memset(&stats, 0, sizeof stats);
    stats.struct_size = sizeof stats;
    CHECK_OK(smolcap_captions_stats(c, 0, &stats));
    CHECK(stats.generated_tokens == want->n_tokens && stats.num_tiles == 10, "stats");
    smolcap_captions_free(c);

    memset(&pc, 0, sizeof pc);
    pc.stop_after = 1;
    c = NULL;
    CHECK_OK(smolcap_caption(s, &im, 1, &p, on_piece, &pc, &c));
    CHECK(pc.calls == 1, "callback not stopped: %d calls", pc.calls);
    smolcap_captions_free(c);

    /* Pull stream: the same text; the result has the same tokens. */
    CHECK_OK(smolcap_stream_begin(s, &im, &p, &st));
    streamed[0] = 0;
    for (;;) {
        rc = smolcap_stream_next(st, &piece, &len);
        if (rc != SMOLCAP_STATUS_OK || piece == NULL) break;
        if (sl + len < sizeof streamed) {
            memcpy(streamed + sl, piece, len);
            sl += len;
            streamed[sl] = 0;
        }
    }
    CHECK(rc == SMOLCAP_STATUS_OK, "stream ended with %d: %s", (int)rc, smolcap_last_error());
    CHECK(strcmp(streamed, want->text) == 0, "streamed \"%s\"", streamed);
    CHECK_OK(smolcap_stream_result(st, &r));
    CHECK(r != NULL && same_caption(r, 0, want), "stream result differs");
    smolcap_captions_free(r);
    smolcap_stream_free(st);

    memset(&nll, 0, sizeof nll);
    CHECK_OK(smolcap_session_score(s, &pim, "a photo of a cat", NULL, &nll));
    CHECK(fabs(nll.total - e->nll_total) <= 1e-9 * fabs(e->nll_total) &&
              fabs(nll.mean - e->nll_mean) <= 1e-9 * fabs(e->nll_mean) &&
              nll.tokens == e->nll_tokens,
          "nll %.17g %.17g %lu vs Rust %.17g %.17g %lu", nll.total, nll.mean,
          (unsigned long)nll.tokens, e->nll_total, e->nll_mean, e->nll_tokens);
}

/* Quantised at load: the Rust path's tokens; a bad format names itself. */
static void test_quantize(const char *model_dir, const unsigned char *png, size_t png_len,
                          const expected_set *e) {
    smolcap_model *m = NULL;
    smolcap_session *s = NULL;
    smolcap_captions *c = NULL;
    smolcap_load_params lp;
    smolcap_image im = encoded(png, png_len);
    smolcap_generate_params p = greedy12();
    CHECK_OK(smolcap_load_params_init(&lp, sizeof lp));
    CHECK(lp.quantize == NULL, "default quantize");
    lp.quantize = "q4_0,head=q8_0";
    CHECK_STATUS(smolcap_model_load(model_dir, &lp, &m), SMOLCAP_STATUS_INVALID_ARGUMENT);
    CHECK_MSG("not a model part");
    lp.quantize = "q8_0";
    CHECK_OK(smolcap_model_load(model_dir, &lp, &m));
    if (m == NULL) return;
    CHECK_OK(smolcap_session_new(m, &s));
    CHECK_OK(smolcap_caption(s, &im, 1, &p, NULL, NULL, &c));
    CHECK(c && same_caption(c, 0, find_expected(e, "q8_0")), "q8_0 caption differs");
    smolcap_captions_free(c);
    smolcap_session_free(s);
    smolcap_model_free(m);
}

/* A llama.cpp GGUF pair (tests/fixtures/gguf-llama-cpp, written by convert_hf_to_gguf.py at
 * Q8_0) captions as the directory quantised to q8_0 at load: found in its directory, and named
 * by file with params.mmproj. */
static void test_gguf(const char *model_dir, const unsigned char *png, size_t png_len,
                      const expected_set *e) {
    char dir[4096], text[4200], proj[4200];
    const char *slash = strrchr(model_dir, '/');
    size_t n = slash ? (size_t)(slash - model_dir) : 0;
    snprintf(dir, sizeof dir, "%.*s/gguf-llama-cpp", (int)n, model_dir);
    snprintf(text, sizeof text, "%s/tiny-idefics3-q8_0.gguf", dir);
    snprintf(proj, sizeof proj, "%s/mmproj-tiny-idefics3-q8_0.gguf", dir);
    smolcap_load_params lp;
    smolcap_image im = encoded(png, png_len);
    smolcap_generate_params p = greedy12();
    CHECK_OK(smolcap_load_params_init(&lp, sizeof lp));
    CHECK(lp.mmproj == NULL, "default mmproj");
    for (int i = 0; i < 2; i++) {
        smolcap_model *m = NULL;
        smolcap_session *s = NULL;
        smolcap_captions *c = NULL;
        lp.mmproj = i ? proj : NULL;
        CHECK_OK(smolcap_model_load(i ? text : dir, &lp, &m));
        if (m == NULL) return;
        CHECK_OK(smolcap_session_new(m, &s));
        CHECK_OK(smolcap_caption(s, &im, 1, &p, NULL, NULL, &c));
        CHECK(c && same_caption(c, 0, find_expected(e, "q8_0")), "gguf caption differs (%d)", i);
        smolcap_captions_free(c);
        smolcap_session_free(s);
        smolcap_model_free(m);
    }
    /* The text model given as its own projector: a format error naming the key. */
    smolcap_model *m = NULL;
    lp.mmproj = text;
    CHECK_STATUS(smolcap_model_load(text, &lp, &m), SMOLCAP_STATUS_UNSUPPORTED);
    CHECK_MSG("idefics3");
    CHECK(m == NULL, "out written");
}

static void test_panic(const smolcap_model *m, const unsigned char *png, size_t png_len) {
    smolcap_session *s = NULL;
    smolcap_captions *c = NULL;
    smolcap_image im = encoded(png, png_len);
    smolcap_generate_params p = greedy12();
    CHECK_OK(smolcap_session_new(m, &s));
    CHECK_STATUS(smolcap_debug_panic(s), SMOLCAP_STATUS_PANIC);
    CHECK_MSG("forced panic");
    CHECK_STATUS(smolcap_caption(s, &im, 1, &p, NULL, NULL, &c), SMOLCAP_STATUS_POISONED);
    CHECK_MSG("poisoned");
    CHECK(c == NULL, "out written");
    smolcap_session_free(s);
}

int main(int argc, char **argv) {
    smolcap_model *m = NULL;
    smolcap_session *s = NULL;
    smolcap_model_info info;
    expected_set *e;
    unsigned char *png, *jpg;
    size_t png_len, jpg_len;
    char path[1024];
    int quick;
    if (argc < 4) {
        fprintf(stderr, "usage: %s MODEL_DIR IMAGES_DIR EXPECTED_FILE [quick]\n", argv[0]);
        return 2;
    }
    quick = argc > 4 && strcmp(argv[4], "quick") == 0;
    e = (expected_set *)malloc(sizeof *e);
    read_expected(argv[3], e);
    sprintf(path, "%s/photo_640x480.png", argv[2]);
    png = read_file(path, &png_len);
    sprintf(path, "%s/photo_640x480.jpg", argv[2]);
    jpg = read_file(path, &jpg_len);

    test_versions();
    CHECK_OK(smolcap_model_load(argv[1], NULL, &m));
    if (m == NULL) return finish();
    memset(&info, 0, sizeof info);
    info.struct_size = sizeof info;
    CHECK_OK(smolcap_model_get_info(m, &info));
    CHECK(info.vocab_size == 600 && info.image_seq_len == 4 && info.tile_size == 32,
          "info %u %u %u", info.vocab_size, info.image_seq_len, info.tile_size);
    CHECK(info.model_type && strcmp(info.model_type, "idefics3") == 0, "model_type");
    CHECK_OK(smolcap_session_new(m, &s));

    test_errors(argv[1], s, png, png_len);
    test_files(s, argv[2], e, quick);
    if (!quick) test_strategies(s, png, png_len, e);
    test_raw(s, e);
    test_callback_stream_score(s, jpg, jpg_len, png, png_len, e);
    test_quantize(argv[1], png, png_len, e);
    test_gguf(argv[1], png, png_len, e);
    test_panic(m, png, png_len);

    smolcap_session_free(s);
    smolcap_model_free(m);
    CHECK(smolcap_debug_live_objects() == 0, "%lu objects alive",
          (unsigned long)smolcap_debug_live_objects());
    free(png);
    free(jpg);
    free(e);
    return finish();
}
