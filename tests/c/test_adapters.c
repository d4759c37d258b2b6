/* C test of LoRA adapters, merging and caption metrics on the tiny fixture:
 * - two adapters at once (scales 1.0 and 0.5) give peft's greedy tokens
 *   (tests/fixtures/expected/adapters/cases.json "combination"); clearing them restores the
 *   base tokens; the adapter handles may be freed right after smolcap_session_set_adapters;
 * - smolcap_merge_save of seed_style_r2_a5 writes a model that captions like the unmerged
 *   adapter;
 * - smolcap_score_captions (seed and coco suites) equals the Rust API value for value
 *   (the file written by tests/ffi_reference.rs);
 * - argument errors (NULL, bad UTF-8, non-finite scale, bad offsets, bad suite) and no handle
 *   left alive.
 *
 * Usage: test_adapters MODEL_DIR FIXTURES_DIR METRICS_FILE TMP_DIR */
#define _POSIX_C_SOURCE 200809L /* strtok_r */
#include <math.h>

#include "check.h"

static const uint32_t BASE[] = {482, 340, 60, 400, 599};
static const uint32_t COMBO[] = {482, 340, 60, 87, 130, 262, 528, 450, 178, 236, 133, 247};
static const uint32_t SEED_STYLE[] = {482, 39, 318, 133, 329, 238, 502, 84, 133, 460, 254, 25};
#define LEN(a) (sizeof(a) / sizeof((a)[0]))

static const char *g_fixtures;

static const char *path_of(char *buf, const char *rel) {
    sprintf(buf, "%s/%s", g_fixtures, rel);
    return buf;
}

/* Greedy tokens (12 at most) of the fixture photo; returns the count, 0 on failure. */
static size_t greedy(smolcap_session *s, const smolcap_image *im, uint32_t *ids, size_t cap) {
    smolcap_generate_params p;
    smolcap_captions *c = NULL;
    const uint32_t *t = NULL;
    size_t n = 0;
    if (smolcap_generate_params_init(&p, sizeof p) != SMOLCAP_STATUS_OK) return 0;
    p.max_new_tokens = 12;
    CHECK_OK(smolcap_caption(s, im, 1, &p, NULL, NULL, &c));
    if (c == NULL) return 0;
    CHECK_OK(smolcap_captions_tokens(c, 0, &t, &n));
    if (n > cap) n = cap;
    if (t != NULL) memcpy(ids, t, n * sizeof *ids);
    smolcap_captions_free(c);
    return n;
}

static int same_tokens(const uint32_t *got, size_t n, const uint32_t *want, size_t m) {
    return n == m && memcmp(got, want, n * sizeof *got) == 0;
}

static void print_tokens(const char *what, const uint32_t *t, size_t n) {
    size_t i;
    fprintf(stderr, "%s:", what);
    for (i = 0; i < n; i++) fprintf(stderr, " %u", (unsigned)t[i]);
    fprintf(stderr, "\n");
}

#define CHECK_TOKENS(got, n, want)                                              \
    do {                                                                        \
        int same_ = same_tokens(got, n, want, LEN(want));                       \
        CHECK(same_, "tokens differ from %s", #want);                           \
        if (!same_) print_tokens("got", got, n);                                \
    } while (0)

static void test_adapters(const smolcap_model *m, const smolcap_model *other,
                          const smolcap_image *im) {
    smolcap_session *s = NULL;
    smolcap_adapter *a = NULL, *b = NULL, *foreign = NULL, *bad = (smolcap_adapter *)0x1;
    smolcap_adapter_info info;
    const smolcap_adapter *list[2];
    float scales[2] = {1.0f, 0.5f};
    uint32_t ids[16];
    size_t n;
    char p1[1024], p2[1024];

    CHECK_OK(smolcap_session_new(m, &s));
    n = greedy(s, im, ids, 16);
    CHECK_TOKENS(ids, n, BASE);

    CHECK_STATUS(smolcap_adapter_load(NULL, path_of(p1, "adapters/text_r4_a8"), &bad),
                 SMOLCAP_STATUS_INVALID_ARGUMENT);
    CHECK_MSG("model is NULL");
    CHECK_STATUS(smolcap_adapter_load(m, "caf\xe9", &bad), SMOLCAP_STATUS_UTF8);
    CHECK_STATUS(smolcap_adapter_load(m, "/no/such/adapter", &bad), SMOLCAP_STATUS_IO);
    CHECK_MSG("/no/such/adapter");
    CHECK(bad == (smolcap_adapter *)0x1, "out written on failure");

    CHECK_OK(smolcap_adapter_load(m, path_of(p1, "adapters/text_r4_a8"), &a));
    CHECK_OK(smolcap_adapter_load(m, path_of(p2, "adapters/text_r2_a3_b"), &b));
    CHECK_OK(smolcap_adapter_load(other, path_of(p1, "adapters/text_r4_a8"), &foreign));
    memset(&info, 0, sizeof info);
    info.struct_size = sizeof info;
    CHECK_OK(smolcap_adapter_get_info(a, &info));
    CHECK(info.rank == 4 && info.alpha == 8.0 && info.num_lora_modules == 14 &&
              info.num_vision_modules == 0 && info.has_modules_to_save == 0 &&
              info.use_rslora == 0,
          "info r=%u alpha=%g modules=%u", info.rank, info.alpha, info.num_lora_modules);
    CHECK(info.dir != NULL && strstr(info.dir, "text_r4_a8") != NULL, "info.dir");

    /* Errors: NULL entry, non-finite scale, an adapter of another model. */
    list[0] = a;
    list[1] = NULL;
    CHECK_STATUS(smolcap_session_set_adapters(s, list, scales, 2),
                 SMOLCAP_STATUS_INVALID_ARGUMENT);
    CHECK_MSG("adapters[1] is NULL");
    list[1] = b;
    scales[1] = (float)NAN;
    CHECK_STATUS(smolcap_session_set_adapters(s, list, scales, 2),
                 SMOLCAP_STATUS_INVALID_ARGUMENT);
    CHECK_MSG("scales[1]");
    scales[1] = (float)INFINITY;
    CHECK_STATUS(smolcap_session_set_adapters(s, list, scales, 2),
                 SMOLCAP_STATUS_INVALID_ARGUMENT);
    list[1] = foreign;
    scales[1] = 0.5f;
    CHECK_STATUS(smolcap_session_set_adapters(s, list, scales, 2),
                 SMOLCAP_STATUS_INVALID_ARGUMENT);
    CHECK_MSG("different model");
    CHECK_STATUS(smolcap_session_set_adapters(NULL, list, scales, 2),
                 SMOLCAP_STATUS_INVALID_ARGUMENT);
    CHECK_MSG("session is NULL");
    CHECK_STATUS(smolcap_session_set_adapters(s, NULL, NULL, 1), SMOLCAP_STATUS_INVALID_ARGUMENT);
    n = greedy(s, im, ids, 16);
    CHECK_TOKENS(ids, n, BASE);

    /* Both adapters; the handles are freed at once (the session keeps its own references). */
    list[1] = b;
    CHECK_OK(smolcap_session_set_adapters(s, list, scales, 2));
    smolcap_adapter_free(a);
    smolcap_adapter_free(b);
    smolcap_adapter_free(foreign);
    smolcap_adapter_free(NULL);
    n = greedy(s, im, ids, 16);
    CHECK_TOKENS(ids, n, COMBO);

    /* n = 0 restores the base model. */
    CHECK_OK(smolcap_session_set_adapters(s, NULL, NULL, 0));
    n = greedy(s, im, ids, 16);
    CHECK_TOKENS(ids, n, BASE);

    /* One adapter, scales NULL = 1.0: the unmerged reference for the merge below. */
    CHECK_OK(smolcap_adapter_load(m, path_of(p1, "adapters/seed_style_r2_a5"), &a));
    list[0] = a;
    CHECK_OK(smolcap_session_set_adapters(s, list, NULL, 1));
    smolcap_adapter_free(a);
    n = greedy(s, im, ids, 16);
    CHECK_TOKENS(ids, n, SEED_STYLE);
    smolcap_session_free(s);
}

static void test_merge(const char *model_dir, const char *tmp, const smolcap_image *im) {
    smolcap_adapter_spec spec;
    smolcap_merge_params mp;
    smolcap_merge_report rep;
    smolcap_model *merged = NULL;
    smolcap_session *s = NULL;
    char adir[1024], out[1024];
    uint32_t ids[16];
    size_t n;

    sprintf(out, "%s/merged_seed_style", tmp);
    spec.dir = path_of(adir, "adapters/seed_style_r2_a5");
    spec.scale = 1.0f;
    CHECK_OK(smolcap_merge_params_init(&mp, sizeof mp));
    CHECK(mp.overwrite == 0 && mp.max_shard_bytes > 0 && mp.revision == NULL, "merge defaults");
    mp.overwrite = 1; /* the temp dir may hold an earlier run's output */
    memset(&rep, 0, sizeof rep);
    rep.struct_size = sizeof rep;

    CHECK_STATUS(smolcap_merge_save(NULL, &spec, 1, out, &mp, &rep),
                 SMOLCAP_STATUS_INVALID_ARGUMENT);
    CHECK_MSG("base_model_dir_or_repo is NULL");
    CHECK_STATUS(smolcap_merge_save(model_dir, &spec, 0, out, &mp, &rep),
                 SMOLCAP_STATUS_INVALID_ARGUMENT);
    spec.scale = (float)NAN;
    CHECK_STATUS(smolcap_merge_save(model_dir, &spec, 1, out, &mp, &rep),
                 SMOLCAP_STATUS_INVALID_ARGUMENT);
    CHECK_MSG("specs[0].scale");
    spec.scale = 1.0f;
    mp.struct_size = 3;
    CHECK_STATUS(smolcap_merge_save(model_dir, &spec, 1, out, &mp, &rep),
                 SMOLCAP_STATUS_INVALID_ARGUMENT);
    CHECK_MSG("struct_size is 3");
    mp.struct_size = sizeof mp;
    CHECK(rep.tensors == 0, "report written on failure");

    CHECK_OK(smolcap_merge_save(model_dir, &spec, 1, out, &mp, &rep));
    CHECK(rep.merged_modules == 20 && rep.replaced_modules == 0 && rep.shards == 1 &&
              rep.warnings == 0 && rep.tensors > 20,
          "report %lu %lu %lu %lu %lu", (unsigned long)rep.merged_modules,
          (unsigned long)rep.replaced_modules, (unsigned long)rep.tensors,
          (unsigned long)rep.shards, (unsigned long)rep.warnings);

    CHECK_OK(smolcap_model_load(out, NULL, &merged));
    if (merged == NULL) return;
    CHECK_OK(smolcap_session_new(merged, &s));
    n = greedy(s, im, ids, 16);
    CHECK_TOKENS(ids, n, SEED_STYLE);
    smolcap_session_free(s);
    smolcap_model_free(merged);
}

/* The metrics reference: candidates, CSR references, and expected values per suite/metric. */
typedef struct {
    char **cands, **refs;
    size_t n_cands, n_refs, *offsets;
    char *lines; /* the file, with "score" lines kept for the checks */
} metrics_ref;

static char *unhex(const char *h) {
    size_t n = strlen(h) / 2, i;
    char *s = (char *)malloc(n + 1);
    for (i = 0; i < n; i++) s[i] = (char)(hexval(h[2 * i]) * 16 + hexval(h[2 * i + 1]));
    s[n] = 0;
    return s;
}

static void read_metrics(const char *path, metrics_ref *r) {
    size_t len, cap = 512;
    char *buf = (char *)read_file(path, &len), *line, *save = NULL;
    buf[len] = 0;
    memset(r, 0, sizeof *r);
    r->cands = (char **)calloc(cap, sizeof(char *));
    r->refs = (char **)calloc(cap * 8, sizeof(char *));
    r->offsets = (size_t *)calloc(cap + 1, sizeof(size_t));
    r->lines = (char *)calloc(len + 1, 1);
    for (line = strtok_r(buf, "\n", &save); line != NULL; line = strtok_r(NULL, "\n", &save)) {
        if (strncmp(line, "cand\t", 5) == 0 && r->n_cands < cap) {
            r->cands[r->n_cands++] = unhex(line + 5);
        } else if (strncmp(line, "ref\t", 4) == 0 && r->n_refs < cap * 8) {
            char *tab = strchr(line + 4, '\t');
            size_t img = strtoul(line + 4, NULL, 10);
            if (tab == NULL || img >= cap) continue;
            r->refs[r->n_refs++] = unhex(tab + 1);
            r->offsets[img + 1] = r->n_refs;
        } else if (strncmp(line, "score\t", 6) == 0) {
            strcat(r->lines, line);
            strcat(r->lines, "\n");
        }
    }
    free(buf);
}

static void free_metrics(metrics_ref *r) {
    size_t i;
    for (i = 0; i < r->n_cands; i++) free(r->cands[i]);
    for (i = 0; i < r->n_refs; i++) free(r->refs[i]);
    free(r->cands);
    free(r->refs);
    free(r->offsets);
    free(r->lines);
}

static void test_metrics(const char *path) {
    metrics_ref r;
    smolcap_scores *sc[2] = {NULL, NULL}, *bad = (smolcap_scores *)0x1;
    char *copy, *line, *save = NULL;
    size_t i, n_checked = 0, mismatches = 0;
    size_t offs[4];
    const char *name;
    const char *cands_bad[3];
    double x = -1;

    read_metrics(path, &r);
    CHECK(r.n_cands == 50 && r.n_refs > 50 && r.offsets[r.n_cands] == r.n_refs,
          "metrics reference: %lu cands, %lu refs", (unsigned long)r.n_cands,
          (unsigned long)r.n_refs);
    CHECK_OK(smolcap_score_captions((const char *const *)r.cands, r.n_cands,
                                    (const char *const *)r.refs, r.offsets, SMOLCAP_SUITE_SEED,
                                    &sc[0]));
    CHECK_OK(smolcap_score_captions((const char *const *)r.cands, r.n_cands,
                                    (const char *const *)r.refs, r.offsets, SMOLCAP_SUITE_COCO,
                                    &sc[1]));
    if (sc[0] == NULL || sc[1] == NULL) goto done;
    CHECK(smolcap_scores_count(sc[0]) == 50, "count");
    CHECK(smolcap_scores_metric_count(sc[0]) == 7, "metric count");
    CHECK_OK(smolcap_scores_metric_name(sc[0], 6, &name));
    CHECK(strcmp(name, "CIDEr") == 0, "metric 6 is %s", name);
    CHECK_OK(smolcap_scores_metric_name(sc[1], 0, &name));
    CHECK(strcmp(name, "BLEU-1") == 0, "metric 0 is %s", name);

    /* Every value equals the Rust API's, bit for bit. */
    copy = (char *)malloc(strlen(r.lines) + 1);
    strcpy(copy, r.lines);
    for (line = strtok_r(copy, "\n", &save); line != NULL; line = strtok_r(NULL, "\n", &save)) {
        char *f[5], *p = line, *end;
        int nf = 0;
        smolcap_scores *s;
        double want, got = NAN;
        size_t img = 0;
        while (nf < 5) {
            f[nf++] = p;
            p = strchr(p, '\t');
            if (p == NULL) break;
            *p++ = 0;
        }
        if (nf != 5) continue;
        s = strcmp(f[1], "seed") == 0 ? sc[0] : sc[1];
        want = strtod(f[3], NULL);
        CHECK_OK(smolcap_scores_corpus(s, f[2], &got));
        if (got != want) {
            mismatches++;
            fprintf(stderr, "%s %s corpus %.17g vs Rust %.17g\n", f[1], f[2], got, want);
        }
        n_checked++;
        for (p = f[4];; p = end, img++) {
            want = strtod(p, &end);
            if (end == p) break;
            if (smolcap_scores_image(s, img, f[2], &got) != SMOLCAP_STATUS_OK || got != want) {
                mismatches++;
                fprintf(stderr, "%s %s image %lu: %.17g vs Rust %.17g\n", f[1], f[2],
                        (unsigned long)img, got, want);
            }
            n_checked++;
        }
    }
    free(copy);
    CHECK(n_checked == 2 * 7 * 51 && mismatches == 0, "%lu values checked, %lu differ",
          (unsigned long)n_checked, (unsigned long)mismatches);

    /* Errors. */
    CHECK_STATUS(smolcap_scores_corpus(sc[0], "SPICE", &x), SMOLCAP_STATUS_INVALID_ARGUMENT);
    CHECK_MSG("SPICE");
    CHECK_STATUS(smolcap_scores_image(sc[0], 50, "CIDEr", &x), SMOLCAP_STATUS_INVALID_ARGUMENT);
    CHECK_MSG("image 50");
    CHECK(x == -1, "out written on failure");
    CHECK_STATUS(smolcap_score_captions((const char *const *)r.cands, 3,
                                        (const char *const *)r.refs, r.offsets, 9, &bad),
                 SMOLCAP_STATUS_INVALID_ARGUMENT);
    CHECK_MSG("suite 9");
    offs[0] = 0;
    offs[1] = 1000; /* past the end, then decreasing: rejected before any reference is read */
    offs[2] = 2;
    offs[3] = 3;
    CHECK_STATUS(smolcap_score_captions((const char *const *)r.cands, 3,
                                        (const char *const *)r.refs, offs, 0, &bad),
                 SMOLCAP_STATUS_INVALID_ARGUMENT);
    CHECK_MSG("ref_offsets[2]");
    offs[1] = 1;
    offs[2] = 1;
    CHECK_STATUS(smolcap_score_captions((const char *const *)r.cands, 3,
                                        (const char *const *)r.refs, offs, 0, &bad),
                 SMOLCAP_STATUS_INVALID_ARGUMENT);
    CHECK_MSG("image 1 has no references");
    offs[2] = 2;
    for (i = 0; i < 3; i++) cands_bad[i] = r.cands[i];
    cands_bad[2] = "caf\xe9";
    CHECK_STATUS(smolcap_score_captions(cands_bad, 3, (const char *const *)r.refs, offs, 1, &bad),
                 SMOLCAP_STATUS_UTF8);
    CHECK_MSG("cands[2]");
    CHECK_STATUS(smolcap_score_captions(NULL, 3, (const char *const *)r.refs, offs, 0, &bad),
                 SMOLCAP_STATUS_INVALID_ARGUMENT);
    CHECK_MSG("cands is NULL");
    CHECK(bad == (smolcap_scores *)0x1, "out written on failure");
done:
    smolcap_scores_free(sc[0]);
    smolcap_scores_free(sc[1]);
    smolcap_scores_free(NULL);
    free_metrics(&r);
}

int main(int argc, char **argv) {
    smolcap_model *m = NULL, *other = NULL;
    smolcap_image im;
    unsigned char *png;
    size_t png_len;
    char path[1024];
    if (argc < 5) {
        fprintf(stderr, "usage: %s MODEL_DIR FIXTURES_DIR METRICS_FILE TMP_DIR\n", argv[0]);
        return 2;
    }
    g_fixtures = argv[2];
    png = read_file(path_of(path, "images/photo_640x480.png"), &png_len);
    memset(&im, 0, sizeof im);
    im.kind = SMOLCAP_IMAGE_ENCODED;
    im.data = png;
    im.len = png_len;

    CHECK_OK(smolcap_model_load(argv[1], NULL, &m));
    CHECK_OK(smolcap_model_load(argv[1], NULL, &other));
    if (m != NULL && other != NULL) {
        test_adapters(m, other, &im);
        test_merge(argv[1], argv[4], &im);
    }
    smolcap_model_free(m);
    smolcap_model_free(other);
    test_metrics(argv[3]);

    CHECK(smolcap_debug_live_objects() == 0, "%lu objects alive",
          (unsigned long)smolcap_debug_live_objects());
    free(png);
    return finish();
}
