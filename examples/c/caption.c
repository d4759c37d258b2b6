/* Captions an image file with smolcap, printing the text as it is generated.
 * Build: cc -std=c99 caption.c $(pkg-config --cflags --libs smolcap) -o caption
 * Usage: caption MODEL_DIR_OR_REPO IMAGE [MAX_NEW_TOKENS] */
#include <stdio.h>
#include <stdlib.h>

#include <smolcap.h>

static int32_t print_piece(size_t index, const char *piece, size_t len, void *user) {
    (void)index;
    (void)user;
    fwrite(piece, 1, len, stdout);
    fflush(stdout);
    return 0; /* nonzero would stop the caption */
}

static unsigned char *read_file(const char *path, size_t *len) {
    FILE *f = fopen(path, "rb");
    unsigned char *buf = NULL;
    long n;
    if (f == NULL) return NULL;
    if (fseek(f, 0, SEEK_END) == 0 && (n = ftell(f)) > 0 && fseek(f, 0, SEEK_SET) == 0) {
        buf = (unsigned char *)malloc((size_t)n);
        if (buf != NULL && fread(buf, 1, (size_t)n, f) != (size_t)n) {
            free(buf);
            buf = NULL;
        }
        *len = (size_t)n;
    }
    fclose(f);
    return buf;
}

int main(int argc, char **argv) {
    smolcap_model *model = NULL;
    smolcap_session *session = NULL;
    smolcap_captions *captions = NULL;
    smolcap_generate_params params;
    smolcap_image image = {0};
    size_t len = 0, n_tokens = 0;
    const uint32_t *tokens = NULL;
    unsigned char *bytes;
    int rc = 1;

    if (argc < 3) {
        fprintf(stderr, "usage: %s MODEL_DIR_OR_REPO IMAGE [MAX_NEW_TOKENS]\n", argv[0]);
        return 2;
    }
    bytes = read_file(argv[2], &len);
    if (bytes == NULL) {
        fprintf(stderr, "cannot read %s\n", argv[2]);
        return 1;
    }
    if (smolcap_model_load(argv[1], NULL, &model) != SMOLCAP_STATUS_OK ||
        smolcap_session_new(model, &session) != SMOLCAP_STATUS_OK ||
        smolcap_generate_params_init(&params, sizeof params) != SMOLCAP_STATUS_OK) {
        fprintf(stderr, "error: %s\n", smolcap_last_error());
        goto done;
    }
    if (argc > 3) params.max_new_tokens = (uint32_t)strtoul(argv[3], NULL, 10);
    image.kind = SMOLCAP_IMAGE_ENCODED;
    image.data = bytes;
    image.len = len;
    if (smolcap_caption(session, &image, 1, &params, print_piece, NULL, &captions) !=
        SMOLCAP_STATUS_OK) {
        fprintf(stderr, "\nerror: %s\n", smolcap_last_error());
        goto done;
    }
    smolcap_captions_tokens(captions, 0, &tokens, &n_tokens);
    printf("\n(%lu tokens)\n", (unsigned long)n_tokens);
    rc = 0;
done:
    smolcap_captions_free(captions);
    smolcap_session_free(session);
    smolcap_model_free(model);
    free(bytes);
    return rc;
}
