/* C test of the trainer API on the tiny fixture:
 * - three steps of the `text` case (initial adapter, options and examples as torch + peft trained
 *   it, tests/fixtures/train/text) give the losses the Rust API gives (the file written by
 *   tests/ffi_reference.rs), which tests/train.rs holds to torch within 1e-5;
 * - the adapter it saves loads as an adapter and captions; a checkpoint resumes at the same step
 *   with its data state, and the next step's loss equals an uninterrupted run's;
 * - argument errors (NULL, bad UTF-8, bad params, struct_size too small), cancel with nothing in
 *   progress, info, and no handle left alive.
 *
 * Usage: test_train MODEL_DIR FIXTURES_DIR TRAIN_REF_FILE TMP_DIR */
#include <math.h>

#include "check.h"

#define MAX_EX 16

typedef struct {
    char image[64];
    char caption[256];
} ref_example;

static ref_example g_ex[4][MAX_EX];
static size_t g_nex[4];
static double g_loss[4];
static double g_lr, g_wd, g_warmup, g_total, g_clip, g_micro;

static void unhex(const char *h, char *out, size_t cap) {
    size_t i = 0;
    while (h[0] && h[1] && i + 1 < cap) {
        out[i++] = (char)(hexval(h[0]) * 16 + hexval(h[1]));
        h += 2;
    }
    out[i] = 0;
}

static void read_ref(const char *path) {
    size_t len;
    char *buf = (char *)read_file(path, &len);
    char *line;
    buf[len] = 0;
    for (line = strtok(buf, "\n"); line != NULL; line = strtok(NULL, "\n")) {
        char *f[4] = {0};
        int nf = 0;
        char *p = line;
        while (nf < 4) {
            f[nf++] = p;
            p = strchr(p, '\t');
            if (p == NULL) break;
            *p++ = 0;
        }
        if (strcmp(f[0], "param") == 0 && nf == 3) {
            double v = strtod(f[2], NULL);
            if (strcmp(f[1], "lr") == 0) g_lr = v;
            if (strcmp(f[1], "weight_decay") == 0) g_wd = v;
            if (strcmp(f[1], "warmup_ratio") == 0) g_warmup = v;
            if (strcmp(f[1], "total_steps") == 0) g_total = v;
            if (strcmp(f[1], "max_grad_norm") == 0) g_clip = v;
            if (strcmp(f[1], "micro_batch") == 0) g_micro = v;
        } else if (strcmp(f[0], "example") == 0 && nf == 4) {
            int s = atoi(f[1]);
            if (s >= 0 && s < 4 && g_nex[s] < MAX_EX) {
                ref_example *e = &g_ex[s][g_nex[s]++];
                strncpy(e->image, f[2], sizeof e->image - 1);
                unhex(f[3], e->caption, sizeof e->caption);
            }
        } else if (strcmp(f[0], "loss") == 0 && nf == 3) {
            int s = atoi(f[1]);
            if (s >= 0 && s < 4) g_loss[s] = strtod(f[2], NULL);
        }
    }
    free(buf);
}

static const char *g_fixtures;
static unsigned char *g_bufs[4][MAX_EX];
static size_t g_lens[4][MAX_EX];

/* Builds the examples of step `s` (encoded PNG files from the fixtures). */
static size_t examples(int s, smolcap_train_example *out) {
    size_t i;
    char path[1024];
    for (i = 0; i < g_nex[s]; i++) {
        sprintf(path, "%s/images/%s", g_fixtures, g_ex[s][i].image);
        if (g_bufs[s][i] == NULL) g_bufs[s][i] = read_file(path, &g_lens[s][i]);
        memset(&out[i], 0, sizeof out[i]);
        out[i].image.kind = SMOLCAP_IMAGE_ENCODED;
        out[i].image.data = g_bufs[s][i];
        out[i].image.len = g_lens[s][i];
        out[i].caption = g_ex[s][i].caption;
    }
    return g_nex[s];
}

static void set_params(smolcap_train_params *p) {
    CHECK_OK(smolcap_train_params_init(p, sizeof *p));
    p->lr = g_lr;
    p->weight_decay = g_wd;
    p->warmup_ratio = g_warmup;
    p->total_steps = (uint64_t)g_total;
    p->max_grad_norm = g_clip;
    p->micro_batch = (uint32_t)g_micro;
    p->lora_dropout = 0.0;
}

static int close_rel(double a, double b) { return fabs(a - b) <= 1e-12 * fabs(b); }

int main(int argc, char **argv) {
    smolcap_model *m = NULL;
    smolcap_trainer *t = NULL, *r = NULL;
    smolcap_train_params p;
    smolcap_train_example ex[MAX_EX];
    smolcap_step_stats st;
    smolcap_trainer_info info;
    char init[1024], adapter_dir[1024], ck[1024];
    double loss2_full = 0;
    size_t n;
    int s;
    if (argc < 5) {
        fprintf(stderr, "usage: %s MODEL_DIR FIXTURES_DIR TRAIN_REF_FILE TMP_DIR\n", argv[0]);
        return 2;
    }
    g_fixtures = argv[2];
    read_ref(argv[3]);
    CHECK(g_nex[0] > 0 && g_loss[2] > 0, "reference file has examples and losses");
    sprintf(init, "%s/train/text/init", g_fixtures);
    sprintf(adapter_dir, "%s/trained_adapter", argv[4]);
    sprintf(ck, "%s/checkpoint", argv[4]);

    CHECK_OK(smolcap_model_load(argv[1], NULL, &m));
    set_params(&p);
    CHECK_OK(smolcap_trainer_new(m, &p, init, &t));
    if (t == NULL) return finish();

    /* Three steps equal to the Rust API's losses. */
    for (s = 0; s < 3; s++) {
        n = examples(s, ex);
        memset(&st, 0, sizeof st);
        st.struct_size = sizeof st;
        CHECK_OK(smolcap_trainer_step(t, ex, n, &st));
        CHECK(close_rel(st.loss, g_loss[s]), "step %d loss %.17g vs Rust %.17g", s, st.loss,
              g_loss[s]);
        CHECK(st.step == (uint64_t)s + 1 && st.examples == n && st.skipped == 0 && st.tokens > 0,
              "step %d stats: step %llu examples %u skipped %u", s, (unsigned long long)st.step,
              st.examples, st.skipped);
        if (s == 1) {
            /* Checkpoint after two steps, with a data state to get back. */
            CHECK_OK(smolcap_trainer_save_checkpoint(t, ck, "{\"epoch\":0,\"next\":8}"));
        }
        if (s == 2) loss2_full = st.loss;
    }
    info.struct_size = sizeof info;
    CHECK_OK(smolcap_trainer_get_info(t, &info));
    CHECK(info.step == 3 && info.trainable_parameters > 0 && info.resident_weight_bytes > 0 &&
              info.skipped_steps == 0,
          "info: step %llu params %llu", (unsigned long long)info.step,
          (unsigned long long)info.trainable_parameters);
    {
        double mean = 0;
        uint64_t tok = 0;
        n = examples(0, ex);
        CHECK_OK(smolcap_trainer_eval(t, ex, n, &mean, &tok));
        CHECK(isfinite(mean) && mean > 0 && tok > 0, "eval %g over %llu tokens", mean,
              (unsigned long long)tok);
    }
    CHECK_OK(smolcap_trainer_save_adapter(t, adapter_dir));
    CHECK_OK(smolcap_trainer_cancel(t)); /* nothing in progress: no effect on later calls */

    /* The saved adapter loads and captions. */
    {
        smolcap_adapter *a = NULL;
        smolcap_session *sess = NULL;
        smolcap_captions *c = NULL;
        const smolcap_adapter *list[1];
        float scale = 1.0f;
        smolcap_generate_params gp;
        CHECK_OK(smolcap_adapter_load(m, adapter_dir, &a));
        CHECK_OK(smolcap_session_new(m, &sess));
        list[0] = a;
        CHECK_OK(smolcap_session_set_adapters(sess, list, &scale, 1));
        CHECK_OK(smolcap_generate_params_init(&gp, sizeof gp));
        gp.max_new_tokens = 4;
        n = examples(0, ex);
        CHECK_OK(smolcap_caption(sess, &ex[0].image, 1, &gp, NULL, NULL, &c));
        CHECK(c != NULL && smolcap_captions_count(c) == 1, "one caption");
        smolcap_captions_free(c);
        smolcap_session_free(sess);
        smolcap_adapter_free(a);
    }

    /* Resume from the checkpoint after step 2: step 3 gives the uninterrupted loss. */
    CHECK_OK(smolcap_trainer_resume(m, ck, &r));
    if (r != NULL) {
        CHECK(strcmp(smolcap_trainer_data_state(r), "{\"epoch\":0,\"next\":8}") == 0,
              "data state \"%s\"", smolcap_trainer_data_state(r));
        n = examples(2, ex);
        memset(&st, 0, sizeof st);
        st.struct_size = sizeof st;
        CHECK_OK(smolcap_trainer_step(r, ex, n, &st));
        CHECK(st.step == 3 && st.loss == loss2_full, "resumed step %llu loss %.17g vs %.17g",
              (unsigned long long)st.step, st.loss, loss2_full);
    }
    CHECK(strcmp(smolcap_trainer_data_state(t), "") == 0, "new run has no data state");

    /* Argument errors. */
    n = examples(0, ex);
    CHECK_STATUS(smolcap_trainer_step(NULL, ex, n, NULL), SMOLCAP_STATUS_INVALID_ARGUMENT);
    CHECK_MSG("trainer");
    CHECK_STATUS(smolcap_trainer_step(t, NULL, 1, NULL), SMOLCAP_STATUS_INVALID_ARGUMENT);
    CHECK_MSG("examples");
    CHECK_STATUS(smolcap_trainer_step(t, ex, 0, NULL), SMOLCAP_STATUS_INVALID_ARGUMENT);
    {
        smolcap_train_example bad = ex[0];
        bad.caption = "\xff\xfe bad";
        CHECK_STATUS(smolcap_trainer_step(t, &bad, 1, NULL), SMOLCAP_STATUS_UTF8);
        CHECK_MSG("examples[0].caption");
        bad = ex[0];
        bad.caption = NULL;
        CHECK_STATUS(smolcap_trainer_step(t, &bad, 1, NULL), SMOLCAP_STATUS_INVALID_ARGUMENT);
        bad = ex[0];
        bad.image.len = 10;
        CHECK(smolcap_trainer_step(t, &bad, 1, NULL) != SMOLCAP_STATUS_OK, "truncated image");
        CHECK_MSG("examples[0].image");
    }
    memset(&st, 0, sizeof st);
    st.struct_size = 4;
    CHECK_STATUS(smolcap_trainer_step(t, ex, n, &st), SMOLCAP_STATUS_INVALID_ARGUMENT);
    CHECK_MSG("struct_size");
    {
        smolcap_trainer *x = NULL;
        smolcap_train_params q;
        set_params(&q);
        q.lora_r = 0;
        CHECK_STATUS(smolcap_trainer_new(m, &q, NULL, &x), SMOLCAP_STATUS_INVALID_ARGUMENT);
        CHECK_MSG("lora_r");
        set_params(&q);
        q.lr = NAN;
        CHECK_STATUS(smolcap_trainer_new(m, &q, NULL, &x), SMOLCAP_STATUS_INVALID_ARGUMENT);
        CHECK_MSG("params.lr");
        set_params(&q);
        q.lora_targets = "no_such_module";
        CHECK_STATUS(smolcap_trainer_new(m, &q, NULL, &x), SMOLCAP_STATUS_INVALID_ARGUMENT);
        set_params(&q);
        q.qlora = 2;
        CHECK_STATUS(smolcap_trainer_new(m, &q, NULL, &x), SMOLCAP_STATUS_INVALID_ARGUMENT);
        CHECK_MSG("qlora");
        CHECK(x == NULL, "out untouched on error");
        CHECK_STATUS(smolcap_trainer_new(NULL, NULL, NULL, &x), SMOLCAP_STATUS_INVALID_ARGUMENT);
        CHECK_STATUS(smolcap_trainer_new(m, NULL, NULL, NULL), SMOLCAP_STATUS_INVALID_ARGUMENT);
        CHECK_STATUS(smolcap_trainer_new(m, NULL, "/nonexistent/adapter", &x), SMOLCAP_STATUS_IO);
        CHECK_MSG("/nonexistent/adapter");
        CHECK_STATUS(smolcap_trainer_resume(m, "/nonexistent/ck", &x), SMOLCAP_STATUS_IO);
        CHECK(x == NULL, "out untouched on error");
        /* A fresh QLoRA run (no initial adapter) starts and steps. */
        set_params(&q);
        q.qlora = 1;
        q.lora_r = 2;
        CHECK_OK(smolcap_trainer_new(m, &q, NULL, &x));
        if (x != NULL) {
            info.struct_size = sizeof info;
            CHECK_OK(smolcap_trainer_get_info(x, &info));
            CHECK(info.resident_weight_bytes > 0, "qlora resident bytes");
            CHECK_OK(smolcap_trainer_step(x, ex, n, NULL));
        }
        smolcap_trainer_free(x);
    }
    CHECK_STATUS(smolcap_trainer_save_adapter(t, NULL), SMOLCAP_STATUS_INVALID_ARGUMENT);
    CHECK_STATUS(smolcap_trainer_cancel(NULL), SMOLCAP_STATUS_INVALID_ARGUMENT);
    CHECK(smolcap_trainer_data_state(NULL) == NULL, "NULL trainer data state");
    smolcap_trainer_free(NULL);

    smolcap_trainer_free(r);
    smolcap_trainer_free(t);
    smolcap_model_free(m);
    for (s = 0; s < 4; s++) {
        size_t i;
        for (i = 0; i < MAX_EX; i++) free(g_bufs[s][i]);
    }
    CHECK(smolcap_debug_live_objects() == 0, "%zu objects alive", smolcap_debug_live_objects());
    return finish();
}
