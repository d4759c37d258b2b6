/* Minimal test harness shared by the C tests: CHECK macros, a pass/fail tally printed as
 * "N passed, N failed" by finish(), file loading, and the expected-output reader for the file
 * written by tests/ffi_reference.rs (the Rust path). */
#ifndef SMOLCAP_TEST_CHECK_H
#define SMOLCAP_TEST_CHECK_H

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <smolcap.h>

#if defined(__GNUC__)
#define MAYBE_UNUSED __attribute__((unused))
#else
#define MAYBE_UNUSED
#endif

static int g_passed = 0;
static int g_failed = 0;

#define CHECK(cond, ...)                                                   \
    do {                                                                   \
        if (cond) {                                                        \
            g_passed++;                                                    \
        } else {                                                           \
            g_failed++;                                                    \
            fprintf(stderr, "FAIL %s:%d: %s: ", __FILE__, __LINE__, #cond); \
            fprintf(stderr, __VA_ARGS__);                                  \
            fprintf(stderr, "\n");                                         \
        }                                                                  \
    } while (0)

/* Checks a status, printing the last error on mismatch. */
#define CHECK_STATUS(expr, want)                                                     \
    do {                                                                             \
        smolcap_status st_ = (expr);                                                 \
        CHECK(st_ == (want), "%s returned %d (%s), wanted %d; last error: %s", #expr, \
              (int)st_, smolcap_status_string(st_), (int)(want), smolcap_last_error()); \
    } while (0)

#define CHECK_OK(expr) CHECK_STATUS(expr, SMOLCAP_STATUS_OK)

/* Checks that the last error mentions `needle`. */
#define CHECK_MSG(needle)                                                          \
    CHECK(strstr(smolcap_last_error(), (needle)) != NULL, "last error \"%s\" lacks \"%s\"", \
          smolcap_last_error(), (needle))

MAYBE_UNUSED static int finish(void) {
    printf("%d passed, %d failed\n", g_passed, g_failed);
    fflush(stdout);
    return g_failed == 0 ? 0 : 1;
}

/* Reads a whole file; exits on failure. */
MAYBE_UNUSED static unsigned char *read_file(const char *path, size_t *len) {
    FILE *f = fopen(path, "rb");
    long n;
    unsigned char *buf;
    if (f == NULL) {
        fprintf(stderr, "cannot open %s\n", path);
        exit(2);
    }
    fseek(f, 0, SEEK_END);
    n = ftell(f);
    fseek(f, 0, SEEK_SET);
    buf = (unsigned char *)malloc((size_t)n + 1);
    if (buf == NULL || fread(buf, 1, (size_t)n, f) != (size_t)n) {
        fprintf(stderr, "cannot read %s\n", path);
        exit(2);
    }
    fclose(f);
    *len = (size_t)n;
    return buf;
}

/* One expected caption from the Rust path. */
typedef struct {
    char name[64];
    uint32_t tokens[64];
    size_t n_tokens;
    char text[512];
} expected_caption;

typedef struct {
    expected_caption caps[32];
    size_t n;
    double nll_total, nll_mean;
    unsigned long nll_tokens;
} expected_set;

MAYBE_UNUSED static int hexval(int c) {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    return -1;
}

/* Parses the file written by tests/ffi_reference.rs; exits on malformed input. */
MAYBE_UNUSED static void read_expected(const char *path, expected_set *out) {
    size_t len, i = 0;
    char *buf = (char *)read_file(path, &len);
    char *line;
    buf[len] = 0;
    memset(out, 0, sizeof *out);
    for (line = strtok(buf, "\n"); line != NULL; line = strtok(NULL, "\n")) {
        char *f[5] = {0};
        int nf = 0;
        char *p = line;
        while (nf < 5) {
            f[nf++] = p;
            p = strchr(p, '\t');
            if (p == NULL) break;
            *p++ = 0;
        }
        if (strcmp(f[0], "caption") == 0 && nf == 4 && out->n < 32) {
            expected_caption *c = &out->caps[out->n++];
            char *t = f[2], *end;
            size_t h;
            strncpy(c->name, f[1], sizeof c->name - 1);
            while (*t) {
                unsigned long v = strtoul(t, &end, 10);
                if (end == t || c->n_tokens >= 64) break;
                c->tokens[c->n_tokens++] = (uint32_t)v;
                t = end;
            }
            for (h = 0; f[3][2 * h] && f[3][2 * h + 1] && h < sizeof c->text - 1; h++) {
                c->text[h] = (char)(hexval(f[3][2 * h]) * 16 + hexval(f[3][2 * h + 1]));
            }
            c->text[h] = 0;
        } else if (strcmp(f[0], "nll") == 0 && nf == 5) {
            out->nll_total = strtod(f[2], NULL);
            out->nll_mean = strtod(f[3], NULL);
            out->nll_tokens = strtoul(f[4], NULL, 10);
        } else {
            fprintf(stderr, "bad expected line %lu in %s\n", (unsigned long)i, path);
            exit(2);
        }
        i++;
    }
    free(buf);
}

MAYBE_UNUSED static const expected_caption *find_expected(const expected_set *e, const char *name) {
    size_t i;
    for (i = 0; i < e->n; i++) {
        if (strcmp(e->caps[i].name, name) == 0) return &e->caps[i];
    }
    fprintf(stderr, "no expected caption named %s\n", name);
    exit(2);
}

/* Whether caption `i` of `c` has exactly the expected tokens and text. */
MAYBE_UNUSED static int same_caption(const smolcap_captions *c, size_t i, const expected_caption *want) {
    const uint32_t *ids = NULL;
    size_t n = 0, len = 0;
    const char *text = NULL;
    if (smolcap_captions_tokens(c, i, &ids, &n) != SMOLCAP_STATUS_OK) return 0;
    if (smolcap_captions_text(c, i, &text, &len) != SMOLCAP_STATUS_OK) return 0;
    if (n != want->n_tokens || memcmp(ids, want->tokens, n * sizeof *ids) != 0) return 0;
    return len == strlen(want->text) && memcmp(text, want->text, len) == 0;
}

/* The raw test image shared with tests/ffi_reference.rs: 64x48 RGB,
 * pixel (x, y) = ((7x + 3y) % 256, (x * y) % 256, (x + 2y) % 256), rows `stride` bytes apart
 * (channels 3 or 4; alpha 255). The caller frees the buffer. */
MAYBE_UNUSED static unsigned char *pattern(size_t channels, size_t stride, size_t *len) {
    size_t w = 64, h = 48, x, y;
    unsigned char *buf = (unsigned char *)calloc(stride * h, 1);
    for (y = 0; y < h; y++) {
        for (x = 0; x < w; x++) {
            unsigned char *px = buf + y * stride + x * channels;
            px[0] = (unsigned char)((7 * x + 3 * y) % 256);
            px[1] = (unsigned char)((x * y) % 256);
            px[2] = (unsigned char)((x + 2 * y) % 256);
            if (channels == 4) px[3] = 255;
        }
    }
    *len = stride * h;
    return buf;
}

/* The image files the Rust reference captions (greedy, 12 tokens), in its order. */
static const char *const FILES[] = {"photo_640x480.png", "tiny_20x15.png",  "pano_400x60.png",
                                    "portrait_90x200.png", "gray_120x90.png", "rgba_100x80.png",
                                    "square_32x32.png",  "photo_640x480.jpg"};
#define N_FILES (sizeof FILES / sizeof FILES[0])

#endif
