/*
 * ctest unit tests. `queries` and `switch` read the plan the Python CLI generated in the same test run
 * (LMP_TEST_PLAN) and the call order Python derived from plan.steps(name) (LMP_TEST_EXPECTED: one line
 * per name, "NAME<TAB>call<TAB>call..."); without them they are skipped (exit 77).
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "loramgr_plan.h"

#define SKIP 77
static int failures = 0;
#define CHECK(cond, ...)                                      \
    do {                                                      \
        if (!(cond)) {                                        \
            fprintf(stderr, "%s:%d: ", __FILE__, __LINE__);   \
            fprintf(stderr, __VA_ARGS__);                     \
            fputc('\n', stderr);                              \
            failures++;                                       \
        }                                                     \
    } while (0)

static int test_sha256(void) {
    char hex[65];
    lmp_sha256_hex("", 0, hex);
    CHECK(strcmp(hex, "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855") == 0, "sha256('')");
    lmp_sha256_hex("abc", 3, hex);
    CHECK(strcmp(hex, "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad") == 0, "sha256(abc)");
    lmp_sha256_hex("abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq", 56, hex);
    CHECK(strcmp(hex, "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1") == 0, "sha256(448 bits)");
    return failures;
}

static int test_quantize(void) {
    lmp_channel e = {8, 0, 0.1, -128.0, -12.8, 12.7};
    CHECK(lmp_quantize(&e, 0.0) == 128, "0 -> 128");
    CHECK(lmp_quantize(&e, 12.8) == 255, "clipped high");
    CHECK(lmp_quantize(&e, -13.0) == 0, "clipped low");
    lmp_channel h = {8, 0, 0.5, -128.0, -64.0, 63.5};
    CHECK(lmp_quantize(&h, 0.25) == 128, "0.5 -> 0: half to even, as numpy");
    CHECK(lmp_quantize(&h, 0.75) == 130, "1.5 -> 2: half to even");
    CHECK(lmp_quantize(&e, NAN) == 0, "NaN -> 0");
    CHECK(fabs(lmp_dequantize(&e, 128)) < 1e-12 && fabs(lmp_dequantize(&e, 255) - 12.7) < 1e-9, "dequantize");
    return failures;
}

static lmp_plan *open_env(void) {
    const char *path = getenv("LMP_TEST_PLAN");
    lmp_plan *p = NULL;
    lmp_error err;
    if (!path) return NULL;
    if (lmp_open(path, &p, &err) != LMP_OK) {
        fprintf(stderr, "cannot open %s: %s\n", path, err.message);
        exit(1);
    }
    return p;
}

static int test_queries(void) {
    lmp_plan *p = open_env(), *none = NULL;
    lmp_error err;
    size_t i, k, n;
    if (!p) return SKIP;
    CHECK(lmp_adapter_count(p) > 0 && lmp_graph_count(p) > 0, "adapters and graphs listed");
    for (i = 0; i <= lmp_adapter_count(p); i++) {
        const char *name = i < lmp_adapter_count(p) ? lmp_adapter_name(p, i) : "default";
        const lmp_section *secs, *one;
        const char *const *slots;
        const double *alphas;
        CHECK(lmp_sections(p, name, &secs, &n, &err) == LMP_OK && n > 0, "%s: sections", name);
        for (k = 0; k < n; k++) CHECK(lmp_verify_section(p, &secs[k], &err) == LMP_OK, "%s: %s", name, err.message);
        for (k = 0; k < lmp_graph_count(p); k++)
            CHECK(lmp_section_for(p, name, lmp_graph_name(p, k), &one, &err) == LMP_OK, "%s: section for a graph", name);
        CHECK(lmp_slots(p, name, &slots, &alphas, &n, &err) == LMP_OK && n >= 1, "%s: slots", name);
    }
    CHECK(lmp_sections(p, "no-such-adapter", NULL, NULL, &err) == LMP_ERR_NOT_FOUND, "not found is 3");
    CHECK(strstr(err.message, "no-such-adapter") != NULL, "the message names it");
    CHECK(lmp_open("/no/such/plan.json", &none, &err) == LMP_ERR_FORMAT && none == NULL, "missing plan is 4");
    CHECK(lmp_verify_all(p, &n, &err) == LMP_OK && n > 0, "verify_all: %s", err.message);
    lmp_close(p);
    return failures;
}

/* -- the switch driver against Python's plan.steps(name) -------------------------------------------- */
typedef struct {
    char calls[64][160];
    int n;
} recorder;

static void rec(recorder *r, const char *what, const char *arg) {
    if (r->n < 64) snprintf(r->calls[r->n++], sizeof r->calls[0], "%s%s%s", what, arg ? ":" : "", arg ? arg : "");
}
static int r_create(void *u, const char *const *g, size_t n) { (void)g; (void)n; rec((recorder *)u, "create_context", NULL); return 0; }
static int r_apply(void *u, const lmp_section *s, const unsigned char *b, size_t n) {
    char h[65];
    lmp_sha256_hex(b, n, h); /* the bytes handed over are the verified section */
    rec((recorder *)u, "apply_section", strcmp(h, s->sha256) == 0 ? s->rel_path : "WRONG-BYTES");
    return 0;
}
static int r_enc(void *u, const lmp_encoding *e) { rec((recorder *)u, "set_io_encoding", e->tensor); return 0; }
static int r_alpha(void *u, const char *t, const float *v, size_t n) {
    char buf[512];
    size_t i, at = (size_t)snprintf(buf, sizeof buf, "%s=", t);
    for (i = 0; i < n && at < sizeof buf; i++) /* every slot: a wrong later slot must not pass */
        at += (size_t)snprintf(buf + at, sizeof buf - at, "%s%g", i ? "," : "", (double)v[i]);
    rec((recorder *)u, "set_alpha", buf);
    return 0;
}
static int r_exec(void *u) { rec((recorder *)u, "execute", NULL); return 0; }
static int r_fail(void *u) { (void)u; return 7; }

static int test_switch(void) {
    lmp_plan *p = open_env();
    const char *exp_path = getenv("LMP_TEST_EXPECTED");
    FILE *f;
    char line[8192];
    int checked = 0;
    lmp_error err;
    if (!p || !exp_path) return SKIP;
    f = fopen(exp_path, "r");
    CHECK(f != NULL, "cannot open %s", exp_path);
    if (!f) return failures;
    while (fgets(line, sizeof line, f)) {
        recorder r;
        lmp_callbacks cb = {&r, r_create, r_apply, r_enc, r_alpha, r_exec};
        char *tok = strtok(line, "\t\n"), *name = tok;
        int i = 0;
        memset(&r, 0, sizeof r);
        if (!name) continue;
        CHECK(lmp_switch(p, name, &cb, LMP_SWITCH_CREATE_CONTEXT | LMP_SWITCH_EXECUTE, &err) == LMP_OK, "%s: %s", name,
              err.message);
        while ((tok = strtok(NULL, "\t\n")) != NULL) {
            CHECK(i < r.n && strcmp(r.calls[i], tok) == 0, "%s: call %d is %s, Python's steps say %s", name, i,
                  i < r.n ? r.calls[i] : "(none)", tok);
            i++;
        }
        CHECK(i == r.n, "%s: %d calls, Python's steps say %d", name, r.n, i);
        checked++;
        cb.execute = (int (*)(void *))r_fail; /* a failing callback stops the walk with status 11 */
        CHECK(lmp_switch(p, name, &cb, LMP_SWITCH_EXECUTE, &err) == LMP_ERR_CALLBACK, "%s: callback failure", name);
    }
    fclose(f);
    CHECK(checked > 0, "no expectations read");
    lmp_close(p);
    return failures;
}

int main(int argc, char **argv) {
    if (argc < 2) return 2;
    if (strcmp(argv[1], "sha256") == 0) return test_sha256();
    if (strcmp(argv[1], "quantize") == 0) return test_quantize();
    if (strcmp(argv[1], "queries") == 0) return test_queries();
    if (strcmp(argv[1], "switch") == 0) return test_switch();
    return 2;
}
