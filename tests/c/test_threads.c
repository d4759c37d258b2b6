/* Threading contract of the C API:
 * - 8 threads share one `const smolcap_model*`, each with its own session, and caption every
 *   fixture image several times: every caption equals the sequential one byte for byte;
 * - one session used by several threads at once: each call returns OK or BUSY, never crashes;
 * - cancel from a second thread: the caption returns CANCELLED within one decoding step;
 * - a stream cancelled from another thread.
 *
 * Usage: test_threads MODEL_DIR IMAGES_DIR EXPECTED_FILE */
#define _POSIX_C_SOURCE 200809L
#include <pthread.h>
#include <time.h>

#include "check.h"

#define N_THREADS 8
#define ROUNDS 2

static const smolcap_model *g_model;
static smolcap_image g_images[N_FILES];
static smolcap_captions *g_sequential[N_FILES];
static pthread_mutex_t g_lock = PTHREAD_MUTEX_INITIALIZER;

static smolcap_generate_params greedy12(void) {
    smolcap_generate_params p;
    smolcap_generate_params_init(&p, sizeof p);
    p.max_new_tokens = 12;
    return p;
}

/* Whether caption 0 of a and caption 0 of b are identical (tokens and text bytes). */
static int same(const smolcap_captions *a, const smolcap_captions *b) {
    const uint32_t *ia, *ib;
    size_t na, nb, la, lb;
    const char *ta, *tb;
    if (smolcap_captions_tokens(a, 0, &ia, &na) || smolcap_captions_tokens(b, 0, &ib, &nb))
        return 0;
    if (smolcap_captions_text(a, 0, &ta, &la) || smolcap_captions_text(b, 0, &tb, &lb)) return 0;
    return na == nb && memcmp(ia, ib, na * 4) == 0 && la == lb && memcmp(ta, tb, la) == 0;
}

typedef struct {
    int id;
    int ok, mismatched, errors;
} worker_result;

static void *worker(void *arg) {
    worker_result *r = (worker_result *)arg;
    smolcap_session *s = NULL;
    smolcap_generate_params p = greedy12();
    int round;
    size_t k;
    if (smolcap_session_new(g_model, &s) != SMOLCAP_STATUS_OK) {
        r->errors++;
        return NULL;
    }
    for (round = 0; round < ROUNDS; round++) {
        for (k = 0; k < N_FILES; k++) {
            size_t i = (k + (size_t)r->id) % N_FILES;
            smolcap_captions *c = NULL;
            smolcap_status st = smolcap_caption(s, &g_images[i], 1, &p, NULL, NULL, &c);
            if (st != SMOLCAP_STATUS_OK) {
                pthread_mutex_lock(&g_lock);
                fprintf(stderr, "thread %d: %s: %s\n", r->id, FILES[i], smolcap_last_error());
                pthread_mutex_unlock(&g_lock);
                r->errors++;
                continue;
            }
            if (same(c, g_sequential[i])) {
                r->ok++;
            } else {
                r->mismatched++;
            }
            smolcap_captions_free(c);
        }
    }
    smolcap_session_free(s);
    return NULL;
}

/* --- one session, many threads: OK or BUSY --- */
static smolcap_session *g_shared;

typedef struct {
    int ok, busy, other, wrong;
} shared_result;

static void *hammer(void *arg) {
    shared_result *r = (shared_result *)arg;
    smolcap_generate_params p = greedy12();
    int i;
    for (i = 0; i < 6; i++) {
        smolcap_captions *c = NULL;
        smolcap_status st = smolcap_caption(g_shared, &g_images[2], 1, &p, NULL, NULL, &c);
        if (st == SMOLCAP_STATUS_OK) {
            r->ok++;
            if (!same(c, g_sequential[2])) r->wrong++;
            smolcap_captions_free(c);
        } else if (st == SMOLCAP_STATUS_BUSY) {
            r->busy++;
        } else {
            r->other++;
        }
    }
    return NULL;
}

/* --- cancel from another thread --- */
typedef struct {
    pthread_mutex_t mu;
    int pieces;
    smolcap_session *s;
    smolcap_status status;
    smolcap_captions *out;
} cancel_state;

static int32_t count_piece(size_t index, const char *piece, size_t len, void *user) {
    cancel_state *cs = (cancel_state *)user;
    (void)index;
    (void)piece;
    (void)len;
    pthread_mutex_lock(&cs->mu);
    cs->pieces++;
    pthread_mutex_unlock(&cs->mu);
    return 0;
}

static void *long_caption(void *arg) {
    cancel_state *cs = (cancel_state *)arg;
    smolcap_generate_params p = greedy12();
    p.max_new_tokens = 1500;
    p.min_new_tokens = 1500;
    cs->status = smolcap_caption(cs->s, &g_images[0], 1, &p, count_piece, cs, &cs->out);
    return NULL;
}

static int pieces_of(cancel_state *cs) {
    int n;
    pthread_mutex_lock(&cs->mu);
    n = cs->pieces;
    pthread_mutex_unlock(&cs->mu);
    return n;
}

static void sleep_ms(long ms) {
    struct timespec ts;
    ts.tv_sec = ms / 1000;
    ts.tv_nsec = (ms % 1000) * 1000000L;
    nanosleep(&ts, NULL);
}

static void test_cancel(void) {
    cancel_state cs;
    pthread_t t;
    int at_cancel, waited = 0;
    smolcap_captions *c = NULL;
    smolcap_generate_params p = greedy12();
    memset(&cs, 0, sizeof cs);
    pthread_mutex_init(&cs.mu, NULL);
    CHECK_OK(smolcap_session_new(g_model, &cs.s));
    pthread_create(&t, NULL, long_caption, &cs);
    while (pieces_of(&cs) < 3 && waited < 120000) {
        sleep_ms(1);
        waited++;
    }
    /* While it runs, the session is busy. */
    CHECK_STATUS(smolcap_caption(cs.s, &g_images[1], 1, &p, NULL, NULL, &c), SMOLCAP_STATUS_BUSY);
    CHECK_MSG("in use");
    CHECK_OK(smolcap_session_cancel(cs.s));
    at_cancel = pieces_of(&cs);
    pthread_join(t, NULL);
    CHECK(cs.status == SMOLCAP_STATUS_CANCELLED, "status %d", (int)cs.status);
    CHECK(cs.out == NULL, "out written on cancel");
    CHECK(cs.pieces - at_cancel <= 1, "%d pieces after cancel", cs.pieces - at_cancel);
    CHECK(cs.pieces < 1500, "not cancelled early: %d pieces", cs.pieces);
    /* The session works again. */
    CHECK_OK(smolcap_caption(cs.s, &g_images[1], 1, &p, NULL, NULL, &c));
    CHECK(c != NULL && same(c, g_sequential[1]), "caption after cancel differs");
    smolcap_captions_free(c);
    smolcap_session_free(cs.s);
    pthread_mutex_destroy(&cs.mu);
}

/* --- a stream cancelled from another thread --- */
static void *cancel_later(void *arg) {
    sleep_ms(50);
    smolcap_session_cancel((smolcap_session *)arg);
    return NULL;
}

static void test_stream_cancel(void) {
    smolcap_session *s = NULL;
    smolcap_stream *st = NULL;
    smolcap_generate_params p = greedy12();
    const char *piece = NULL;
    smolcap_status rc;
    pthread_t t;
    int n = 0;
    p.max_new_tokens = 1500;
    p.min_new_tokens = 1500;
    CHECK_OK(smolcap_session_new(g_model, &s));
    CHECK_OK(smolcap_stream_begin(s, &g_images[0], &p, &st));
    pthread_create(&t, NULL, cancel_later, s);
    while ((rc = smolcap_stream_next(st, &piece, NULL)) == SMOLCAP_STATUS_OK && piece != NULL) n++;
    pthread_join(t, NULL);
    CHECK(rc == SMOLCAP_STATUS_CANCELLED, "stream status %d after %d pieces: %s", (int)rc, n,
          smolcap_last_error());
    smolcap_stream_free(st);
    smolcap_session_free(s);
}

int main(int argc, char **argv) {
    smolcap_model *m = NULL;
    smolcap_session *s = NULL;
    unsigned char *bufs[N_FILES];
    pthread_t threads[N_THREADS];
    worker_result results[N_THREADS];
    shared_result shared[4];
    smolcap_generate_params p = greedy12();
    expected_set *e;
    char path[1024];
    size_t i;
    int total_ok = 0, mismatched = 0, errors = 0;
    if (argc < 4) {
        fprintf(stderr, "usage: %s MODEL_DIR IMAGES_DIR EXPECTED_FILE\n", argv[0]);
        return 2;
    }
    e = (expected_set *)malloc(sizeof *e);
    read_expected(argv[3], e);
    CHECK_OK(smolcap_model_load(argv[1], NULL, &m));
    if (m == NULL) return finish();
    g_model = m;
    CHECK_OK(smolcap_session_new(m, &s));
    for (i = 0; i < N_FILES; i++) {
        size_t len;
        sprintf(path, "%s/%s", argv[2], FILES[i]);
        bufs[i] = read_file(path, &len);
        memset(&g_images[i], 0, sizeof g_images[i]);
        g_images[i].kind = SMOLCAP_IMAGE_ENCODED;
        g_images[i].data = bufs[i];
        g_images[i].len = len;
        CHECK_OK(smolcap_caption(s, &g_images[i], 1, &p, NULL, NULL, &g_sequential[i]));
        CHECK(same_caption(g_sequential[i], 0, find_expected(e, FILES[i])),
              "%s: sequential caption differs from the Rust path", FILES[i]);
    }
    smolcap_session_free(s);

    for (i = 0; i < N_THREADS; i++) {
        memset(&results[i], 0, sizeof results[i]);
        results[i].id = (int)i;
        pthread_create(&threads[i], NULL, worker, &results[i]);
    }
    for (i = 0; i < N_THREADS; i++) {
        pthread_join(threads[i], NULL);
        total_ok += results[i].ok;
        mismatched += results[i].mismatched;
        errors += results[i].errors;
    }
    CHECK(total_ok == N_THREADS * ROUNDS * (int)N_FILES && mismatched == 0 && errors == 0,
          "threads: %d identical, %d different, %d errors", total_ok, mismatched, errors);

    CHECK_OK(smolcap_session_new(m, &g_shared));
    for (i = 0; i < 4; i++) {
        memset(&shared[i], 0, sizeof shared[i]);
        pthread_create(&threads[i], NULL, hammer, &shared[i]);
    }
    {
        int ok = 0, busy = 0, other = 0, wrong = 0;
        for (i = 0; i < 4; i++) {
            pthread_join(threads[i], NULL);
            ok += shared[i].ok;
            busy += shared[i].busy;
            other += shared[i].other;
            wrong += shared[i].wrong;
        }
        CHECK(ok + busy == 24 && other == 0 && wrong == 0 && ok > 0,
              "shared session: %d ok, %d busy, %d other, %d wrong", ok, busy, other, wrong);
        printf("shared session: %d ok, %d busy\n", ok, busy);
    }
    smolcap_session_free(g_shared);

    test_cancel();
    test_stream_cancel();

    for (i = 0; i < N_FILES; i++) {
        smolcap_captions_free(g_sequential[i]);
        free(bufs[i]);
    }
    smolcap_model_free(m);
    CHECK(smolcap_debug_live_objects() == 0, "%lu objects alive",
          (unsigned long)smolcap_debug_live_objects());
    free(e);
    return finish();
}
