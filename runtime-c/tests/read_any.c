/*
 * Opens plans and runs every query and the switch driver on them: under ASan/UBSan over the malformed-
 * plan corpus (a crash or a read outside a buffer aborts), and as a libFuzzer target (LMP_LIBFUZZER).
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "loramgr_plan.h"

static int ok_create(void *u, const char *const *g, size_t n) { (void)u; (void)g; (void)n; return 0; }
static int ok_apply(void *u, const lmp_section *s, const unsigned char *b, size_t n) {
    (void)u; (void)s; return n ? (b[0] == 0xff && b[n - 1] == 0xff ? 0 : 0) : 0;
}
static int ok_enc(void *u, const lmp_encoding *e) { (void)u; return e->n_channels ? 0 : 1; }
static int ok_alpha(void *u, const char *t, const float *v, size_t n) { (void)u; (void)t; return n && v[0] == v[0] ? 0 : 0; }
static int ok_exec(void *u) { (void)u; return 0; }

static void exercise(const lmp_plan *p) {
    lmp_callbacks cb = {NULL, ok_create, ok_apply, ok_enc, ok_alpha, ok_exec};
    lmp_error err;
    size_t i, k, n;
    const char *names[512];
    size_t nn = 0;
    for (i = 0; i < lmp_adapter_count(p) && nn < 500; i++) names[nn++] = lmp_adapter_name(p, i);
    for (i = 0; i < lmp_use_case_count(p) && nn < 510; i++) names[nn++] = lmp_use_case_name(p, i);
    names[nn++] = "default";
    names[nn++] = "no-such-adapter";
    for (i = 0; i < nn; i++) {
        const lmp_section *secs;
        const lmp_encoding *enc;
        const char *const *slots;
        const double *alphas;
        if (lmp_sections(p, names[i], &secs, &n, &err) == LMP_OK)
            for (k = 0; k < n; k++) (void)lmp_verify_section(p, &secs[k], &err);
        for (k = 0; k < lmp_graph_count(p); k++) (void)lmp_section_for(p, names[i], lmp_graph_name(p, k), &secs, &err);
        for (k = 0; k < lmp_io_encoding_count(p, names[i]); k++) {
            const lmp_encoding *e = lmp_io_encoding_at(p, names[i], k);
            int32_t q;
            float x = 0.5f;
            lmp_quantize_array(&e->channels[0], &x, &q, 1);
            lmp_dequantize_array(&e->channels[e->n_channels - 1], &q, &x, 1);
            (void)lmp_io_encoding(p, names[i], e->tensor, &enc, &err);
            (void)lmp_weight_encoding(p, names[i], e->tensor, &enc, &err);
        }
        (void)lmp_slots(p, names[i], &slots, &alphas, &n, &err);
        (void)lmp_switch(p, names[i], &cb, LMP_SWITCH_CREATE_CONTEXT | LMP_SWITCH_EXECUTE, &err);
    }
    (void)lmp_reset(p, "default_adapter", &cb, &err);
    (void)lmp_reset(p, "alpha_zero", &cb, &err);
    (void)lmp_verify_all(p, &n, &err);
    for (k = 0; k < lmp_context_count(p); k++) (void)lmp_context_name(p, k);
    (void)lmp_alpha_tensor(p);
}

#ifdef LMP_LIBFUZZER
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    lmp_plan *p = NULL;
    lmp_error err;
    if (lmp_open_memory((const char *)data, size, "/nonexistent-plan-dir", &p, &err) == LMP_OK) {
        exercise(p);
        lmp_close(p);
    }
    return 0;
}
#else
int main(int argc, char **argv) {
    int i, opened = 0;
    for (i = 1; i < argc; i++) {
        lmp_plan *p = NULL;
        lmp_error err;
        if (lmp_open(argv[i], &p, &err) == LMP_OK) {
            exercise(p);
            lmp_close(p);
            opened++;
        } else if (err.status == LMP_OK || err.message[0] == '\0') {
            fprintf(stderr, "%s: failed without a message\n", argv[i]);
            return 1;
        }
    }
    printf("%d of %d plans opened\n", opened, argc - 1);
    return 0;
}
#endif
