/* Concurrency under load (issue #7): 8 threads caption on one shared model handle (each with its
 * own session) for many rounds while a canceller thread cancels random sessions at random
 * moments. Every caption that completes must equal the sequential one byte for byte; every
 * other call must return CANCELLED (never another error, never a crash); a session works again
 * after a cancel. Built with ASan (run_native.sh) and ThreadSanitizer (tests/tsan.sh, with the
 * library itself instrumented).
 *
 * Usage: test_stress MODEL_DIR IMAGES_DIR [ROUNDS] */
#define _POSIX_C_SOURCE 200809L
#include <pthread.h>
#include <time.h>

#include "check.h"

#define N_THREADS 8
#define N_IMAGES 3

static const char *const IMAGES[N_IMAGES] = {"tiny_20x15.png", "square_32x32.png",
                                             "gray_120x90.png"};
static const smolcap_model *g_model;
static smolcap_image g_images[N_IMAGES];
static smolcap_captions *g_sequential[N_IMAGES];
static smolcap_session *g_sessions[N_THREADS];
static int g_rounds = 6;
static int g_done = 0;
static int g_completed = 0; /* captions finished OK so far (atomic) */
static pthread_mutex_t g_lock = PTHREAD_MUTEX_INITIALIZER;

static smolcap_generate_params params(void) {
    smolcap_generate_params p;
    smolcap_generate_params_init(&p, sizeof p);
    p.max_new_tokens = 12;
    return p;
}

static int same(const smolcap_captions *a, const smolcap_captions *b) {
    const uint32_t *ia, *ib;
    size_t na, nb, la, lb;
    const char *ta, *tb;
    if (smolcap_captions_tokens(a, 0, &ia, &na) || smolcap_captions_tokens(b, 0, &ib, &nb))
        return 0;
    if (smolcap_captions_text(a, 0, &ta, &la) || smolcap_captions_text(b, 0, &tb, &lb)) return 0;
    return na == nb && memcmp(ia, ib, na * 4) == 0 && la == lb && memcmp(ta, tb, la) == 0;
}

static unsigned next_rand(unsigned *s) {
    *s = *s * 1103515245u + 12345u;
    return (*s >> 16) & 0x7fff;
}

static void sleep_us(long us) {
    struct timespec ts;
    ts.tv_sec = us / 1000000;
    ts.tv_nsec = (us % 1000000) * 1000L;
    nanosleep(&ts, NULL);
}

typedef struct {
    int id;
    int ok, cancelled, mismatched, errors;
} worker_result;

static void *worker(void *arg) {
    worker_result *r = (worker_result *)arg;
    smolcap_generate_params p = params();
    unsigned seed = 7u + (unsigned)r->id * 31u;
    int round;
    for (round = 0; round < g_rounds; round++) {
        size_t k;
        for (k = 0; k < N_IMAGES; k++) {
            size_t i = (k + (size_t)r->id + next_rand(&seed)) % N_IMAGES;
            smolcap_captions *c = NULL;
            smolcap_status st =
                smolcap_caption(g_sessions[r->id], &g_images[i], 1, &p, NULL, NULL, &c);
            if (st == SMOLCAP_STATUS_OK) {
                __atomic_add_fetch(&g_completed, 1, __ATOMIC_SEQ_CST);
                if (same(c, g_sequential[i])) {
                    r->ok++;
                } else {
                    r->mismatched++;
                }
                smolcap_captions_free(c);
            } else if (st == SMOLCAP_STATUS_CANCELLED) {
                r->cancelled++;
                if (c != NULL) r->errors++; /* out must stay untouched */
            } else {
                pthread_mutex_lock(&g_lock);
                fprintf(stderr, "thread %d: status %d: %s\n", r->id, (int)st,
                        smolcap_last_error());
                pthread_mutex_unlock(&g_lock);
                r->errors++;
            }
        }
    }
    return NULL;
}

/* Cancels a random session at a random moment (0-5 ms) after each caption that completes, so
 * about as many calls are cancelled as complete, whatever the speed (sanitizers slow it 10x). */
static void *canceller(void *arg) {
    unsigned seed = 12345u;
    int *count = (int *)arg;
    int seen = 0;
    while (!__atomic_load_n(&g_done, __ATOMIC_SEQ_CST)) {
        int t;
        if (__atomic_load_n(&g_completed, __ATOMIC_SEQ_CST) <= seen) {
            sleep_us(500);
            continue;
        }
        seen = __atomic_load_n(&g_completed, __ATOMIC_SEQ_CST);
        sleep_us((long)(next_rand(&seed) % 5000));
        t = (int)(next_rand(&seed) % N_THREADS);
        if (smolcap_session_cancel(g_sessions[t]) == SMOLCAP_STATUS_OK) (*count)++;
    }
    return NULL;
}

int main(int argc, char **argv) {
    smolcap_model *m = NULL;
    smolcap_session *s = NULL;
    unsigned char *bufs[N_IMAGES];
    pthread_t threads[N_THREADS], cancel_thread;
    worker_result results[N_THREADS];
    smolcap_generate_params p = params();
    char path[1024];
    size_t i;
    int ok = 0, cancelled = 0, mismatched = 0, errors = 0, cancels = 0;
    if (argc < 3) {
        fprintf(stderr, "usage: %s MODEL_DIR IMAGES_DIR [ROUNDS]\n", argv[0]);
        return 2;
    }
    if (argc > 3) g_rounds = atoi(argv[3]);
    CHECK_OK(smolcap_model_load(argv[1], NULL, &m));
    if (m == NULL) return finish();
    g_model = m;
    CHECK_OK(smolcap_session_new(m, &s));
    for (i = 0; i < N_IMAGES; i++) {
        size_t len;
        sprintf(path, "%s/%s", argv[2], IMAGES[i]);
        bufs[i] = read_file(path, &len);
        memset(&g_images[i], 0, sizeof g_images[i]);
        g_images[i].kind = SMOLCAP_IMAGE_ENCODED;
        g_images[i].data = bufs[i];
        g_images[i].len = len;
        CHECK_OK(smolcap_caption(s, &g_images[i], 1, &p, NULL, NULL, &g_sequential[i]));
    }
    smolcap_session_free(s);

    for (i = 0; i < N_THREADS; i++) CHECK_OK(smolcap_session_new(g_model, &g_sessions[i]));
    pthread_create(&cancel_thread, NULL, canceller, &cancels);
    for (i = 0; i < N_THREADS; i++) {
        memset(&results[i], 0, sizeof results[i]);
        results[i].id = (int)i;
        pthread_create(&threads[i], NULL, worker, &results[i]);
    }
    for (i = 0; i < N_THREADS; i++) {
        pthread_join(threads[i], NULL);
        ok += results[i].ok;
        cancelled += results[i].cancelled;
        mismatched += results[i].mismatched;
        errors += results[i].errors;
    }
    __atomic_store_n(&g_done, 1, __ATOMIC_SEQ_CST);
    pthread_join(cancel_thread, NULL);
    printf("stress: %d threads x %d rounds x %d images: %d identical to sequential, %d "
           "cancelled (%d cancel calls), %d different, %d errors\n",
           N_THREADS, g_rounds, N_IMAGES, ok, cancelled, cancels, mismatched, errors);
    CHECK(ok + cancelled == N_THREADS * g_rounds * N_IMAGES, "%d + %d calls accounted", ok,
          cancelled);
    CHECK(mismatched == 0 && errors == 0, "%d different, %d errors", mismatched, errors);
    CHECK(ok > 0 && cancelled > 0, "%d completed, %d cancelled: both must happen", ok,
          cancelled);
    /* Every session works again, with the sequential result. */
    for (i = 0; i < N_THREADS; i++) {
        smolcap_captions *c = NULL;
        CHECK_OK(smolcap_caption(g_sessions[i], &g_images[0], 1, &p, NULL, NULL, &c));
        CHECK(c != NULL && same(c, g_sequential[0]), "session %d after the stress differs",
              (int)i);
        smolcap_captions_free(c);
        smolcap_session_free(g_sessions[i]);
    }
    for (i = 0; i < N_IMAGES; i++) {
        smolcap_captions_free(g_sequential[i]);
        free(bufs[i]);
    }
    smolcap_model_free(m);
    CHECK(smolcap_debug_live_objects() == 0, "%lu objects alive",
          (unsigned long)smolcap_debug_live_objects());
    return finish();
}
