/*
 * switch.c -- integrity checks, quantization helpers and the switch driver: the plan's steps for a
 * name, walked in order, each handed to the device code's callback.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "plan_internal.h"
#include "platform.h"
#include "sha256.h"

#define CHUNK 65536

void lmp_sha256_hex(const void *data, size_t size, char out[65]) {
    lmp_sha256_ctx c;
    unsigned char d[32];
    lmp_sha256_init(&c);
    lmp_sha256_update(&c, data, size);
    lmp_sha256_final(&c, d);
    lmp_hex(d, out);
}

/* Read (optionally into *bytes) and check size and sha256 against the plan: only a regular file (never
   a FIFO or a device), only inside the plan's directory once every link is resolved, and only when its
   size is the recorded one (checked before anything is allocated or read). */
static lmp_status read_checked(const lmp_plan *p, const lmp_section *f, unsigned char **bytes, lmp_error *err) {
    const char *why = NULL;
    uint64_t actual = 0, total = 0;
    FILE *in = lmp_open_regular(f->path, &actual, &why);
    lmp_sha256_ctx c;
    unsigned char d[32], chunk[CHUNK], *buf = NULL;
    char hex[65];
    size_t n;
    if (!in && strcmp(why, "missing") == 0)
        return lmp_fail(err, LMP_ERR_INTEGRITY, "%s: file listed in the plan is missing", f->path);
    if (!in) return lmp_fail(err, LMP_ERR_FORMAT, "%s: file listed in the plan is %s", f->path, why);
    if (!p->real_dir || !lmp_inside(p->real_dir, f->path)) {
        fclose(in);
        return lmp_fail(err, LMP_ERR_FORMAT, "%s: resolves outside the plan's directory (a link?)", f->path);
    }
    if (actual != f->size) {
        fclose(in);
        return lmp_fail(err, LMP_ERR_INTEGRITY, "%s: does not match the sha256/size recorded in the plan", f->path);
    }
    if (bytes) {
        if (f->size > (uint64_t)(size_t)-1 / 2) {
            fclose(in);
            return lmp_fail(err, LMP_ERR_IO, "%s: too large for this process", f->path);
        }
        buf = (unsigned char *)malloc(f->size ? (size_t)f->size : 1);
        if (!buf) {
            fclose(in);
            return lmp_fail(err, LMP_ERR_IO, "%s: out of memory for %llu bytes", f->path, (unsigned long long)f->size);
        }
    }
    lmp_sha256_init(&c);
    while ((n = fread(chunk, 1, sizeof chunk, in)) > 0) {
        if (total + n > f->size) { /* longer than recorded: never write past the buffer */
            total += n;
            break;
        }
        if (buf) memcpy(buf + total, chunk, n);
        lmp_sha256_update(&c, chunk, n);
        total += n;
    }
    fclose(in);
    lmp_sha256_final(&c, d);
    lmp_hex(d, hex);
    if (total != f->size || strcmp(hex, f->sha256) != 0) {
        free(buf);
        return lmp_fail(err, LMP_ERR_INTEGRITY, "%s: does not match the sha256/size recorded in the plan", f->path);
    }
    if (bytes) *bytes = buf;
    return LMP_OK;
}

lmp_status lmp_verify_section(const lmp_plan *p, const lmp_section *s, lmp_error *err) {
    if (!p || !s) return lmp_fail(err, LMP_ERR_USAGE, "plan and section are required");
    return read_checked(p, s, NULL, err);
}

lmp_status lmp_verify_all(const lmp_plan *p, size_t *checked, lmp_error *err) {
    size_t i, k, n = 0;
    lmp_status s;
    if (!p) return lmp_fail(err, LMP_ERR_USAGE, "plan is required");
    for (i = 0; i < p->n_graph_files; i++, n++)
        if ((s = read_checked(p, &p->graph_files[i], NULL, err))) return s;
    for (i = 0; i <= p->n_adapters + p->n_use_cases; i++) {
        const lmp_entry *e = i < p->n_adapters ? &p->adapters[i]
                             : i < p->n_adapters + p->n_use_cases ? &p->use_cases[i - p->n_adapters]
                                                                   : &p->dflt;
        for (k = 0; k < e->n_sections; k++, n++)
            if ((s = read_checked(p, &e->sections[k], NULL, err))) return s;
    }
    for (i = 0; i < p->n_groups; i++)
        for (k = 0; k < p->groups[i].n_sections; k++, n++)
            if ((s = read_checked(p, &p->groups[i].sections[k], NULL, err))) return s;
    if (checked) *checked = n;
    return LMP_OK;
}

/* -- quantization ---------------------------------------------------------------------------------------- */
int64_t lmp_quantize(const lmp_channel *e, double x) {
    double q, top;
    if (!e || !(e->scale > 0) || e->bitwidth < 1 || e->bitwidth > 32) return 0;
    top = pow(2.0, e->bitwidth) - 1;
    q = rint(x / e->scale) - e->offset; /* round half to even, like numpy */
    if (!(q >= 0)) return 0;            /* NaN included */
    return (int64_t)(q > top ? top : q);
}

double lmp_dequantize(const lmp_channel *e, int64_t q) { return e ? ((double)q + e->offset) * e->scale : 0.0; }

void lmp_quantize_array(const lmp_channel *e, const float *x, int32_t *q, size_t n) {
    size_t i;
    for (i = 0; i < n; i++) q[i] = (int32_t)lmp_quantize(e, x[i]);
}

void lmp_dequantize_array(const lmp_channel *e, const int32_t *q, float *x, size_t n) {
    size_t i;
    for (i = 0; i < n; i++) x[i] = (float)lmp_dequantize(e, q[i]);
}

/* -- the switch driver ------------------------------------------------------------------------------------ */
static const lmp_section *section_in(const lmp_entry *e, const cJSON *step) {
    const cJSON *path = cJSON_GetObjectItemCaseSensitive(step, "path");
    const cJSON *name = cJSON_GetObjectItemCaseSensitive(step, "section");
    size_t i;
    for (i = 0; i < e->n_sections; i++) {
        if (cJSON_IsString(path) && strcmp(e->sections[i].rel_path, path->valuestring) == 0) return &e->sections[i];
        if (!cJSON_IsString(path) && cJSON_IsString(name) && strcmp(e->sections[i].name, name->valuestring) == 0)
            return &e->sections[i];
    }
    return NULL;
}

/* the entry's own section, or (steps marked with its group) its group's quantization section */
static const lmp_section *section_of_step(const lmp_entry *e, const cJSON *step) {
    const lmp_section *sec = section_in(e, step);
    return sec || !e->group ? sec : section_in(e->group, step);
}

static lmp_status call(int rc, const char *what, const char *who, lmp_error *err) {
    return rc == 0 ? LMP_OK : lmp_fail(err, LMP_ERR_CALLBACK, "%s callback failed (%d) for %s", what, rc, who);
}

static lmp_status walk(const lmp_plan *p, const lmp_entry *e, const cJSON *steps, const lmp_callbacks *cb,
                       unsigned flags, int same_group, lmp_error *err) {
    const cJSON *st;
    lmp_status s = LMP_OK;
    if (!cb) return lmp_fail(err, LMP_ERR_USAGE, "callbacks are required");
    if (steps && !cJSON_IsArray(steps)) return lmp_fail(err, LMP_ERR_FORMAT, "%s: steps must be a list", p->path);
    cJSON_ArrayForEach(st, steps) {
        const cJSON *opj = cJSON_GetObjectItemCaseSensitive(st, "op");
        const char *op = cJSON_IsString(opj) ? opj->valuestring : "";
        if (strcmp(op, "create_context") == 0) {
            const cJSON *gs = cJSON_GetObjectItemCaseSensitive(st, "graphs"), *g;
            const char *names[256];
            size_t n = 0;
            if (!(flags & LMP_SWITCH_CREATE_CONTEXT) || !cb->create_context) continue;
            cJSON_ArrayForEach(g, gs) {
                if (!cJSON_IsString(g) || n == 256) return lmp_fail(err, LMP_ERR_FORMAT, "%s: create_context graphs", p->path);
                names[n++] = g->valuestring;
            }
            s = call(cb->create_context(cb->user, names, n), "create_context", e->ref, err);
        } else if (strcmp(op, "apply_section") == 0) {
            const lmp_section *sec = section_of_step(e, st);
            unsigned char *bytes = NULL;
            const cJSON *when = cJSON_GetObjectItemCaseSensitive(st, "when");
            if (!sec) return lmp_fail(err, LMP_ERR_FORMAT, "%s: %s: a step applies a section the entry does not list",
                                      p->path, e->ref);
            if (!cb->apply_section) continue;
            if (same_group && cJSON_IsString(when) && strcmp(when->valuestring, "group_changes") == 0) continue;
            if ((s = read_checked(p, sec, &bytes, err))) return s;
            s = call(cb->apply_section(cb->user, sec, bytes, (size_t)sec->size), "apply_section", e->ref, err);
            free(bytes);
        } else if (strcmp(op, "update_io_encodings") == 0) {
            size_t i;
            for (i = 0; cb->set_io_encoding && i < e->n_io && !s; i++)
                s = call(cb->set_io_encoding(cb->user, &e->io[i]), "set_io_encoding", e->ref, err);
        } else if (strcmp(op, "set_alpha") == 0) {
            const cJSON *t = cJSON_GetObjectItemCaseSensitive(st, "tensor");
            const cJSON *v = cJSON_GetObjectItemCaseSensitive(st, "value");
            const cJSON *vs = cJSON_GetObjectItemCaseSensitive(st, "values"), *x;
            float values[256];
            size_t n = 0;
            if (!cJSON_IsString(t)) return lmp_fail(err, LMP_ERR_FORMAT, "%s: set_alpha names no tensor", p->path);
            if (cJSON_IsNumber(v) && isfinite(v->valuedouble) && fabs(v->valuedouble) <= p->alpha_max)
                values[n++] = (float)v->valuedouble;
            if (cJSON_IsArray(v)) vs = v; /* a use case's alpha vector */
            cJSON_ArrayForEach(x, vs) {
                if (!cJSON_IsNumber(x) || !isfinite(x->valuedouble) || fabs(x->valuedouble) > p->alpha_max || n == 256)
                    return lmp_fail(err, LMP_ERR_FORMAT, "%s: set_alpha values must be finite numbers", p->path);
                values[n++] = (float)x->valuedouble;
            }
            if (n == 0) return lmp_fail(err, LMP_ERR_FORMAT, "%s: set_alpha has no value", p->path);
            if (cb->set_alpha) s = call(cb->set_alpha(cb->user, t->valuestring, values, n), "set_alpha", e->ref, err);
        } else if (strcmp(op, "execute") == 0) {
            if ((flags & LMP_SWITCH_EXECUTE) && cb->execute) s = call(cb->execute(cb->user), "execute", e->ref, err);
        } else {
            return lmp_fail(err, LMP_ERR_FORMAT, "%s: %s: unknown step op %.80s (a newer plan?)", p->path, e->ref, op);
        }
        if (s) return s;
    }
    return LMP_OK;
}

lmp_status lmp_switch(const lmp_plan *p, const char *name, const lmp_callbacks *cb, unsigned flags, lmp_error *err) {
    const lmp_entry *e;
    lmp_status s = lmp_entry_or_fail(p, name, &e, err);
    return s ? s : walk(p, e, e->steps, cb, flags, 0, err);
}

lmp_status lmp_switch_from(const lmp_plan *p, const char *from, const char *name, const lmp_callbacks *cb,
                           unsigned flags, lmp_error *err) {
    const lmp_entry *e, *prev = NULL;
    lmp_status s = lmp_entry_or_fail(p, name, &e, err);
    if (s) return s;
    if (from && (s = lmp_entry_or_fail(p, from, &prev, err))) return s;
    return walk(p, e, e->steps, cb, flags, prev && prev->group && prev->group == e->group, err);
}

lmp_status lmp_reset(const lmp_plan *p, const char *method, const lmp_callbacks *cb, lmp_error *err) {
    const cJSON *steps;
    if (!p || !method) return lmp_fail(err, LMP_ERR_USAGE, "plan and method are required");
    steps = cJSON_GetObjectItemCaseSensitive(p->reset_steps, method);
    if (!steps) return lmp_fail(err, LMP_ERR_NOT_FOUND, "reset method %.80s: is not in the plan", method);
    return walk(p, &p->dflt, steps, cb, 0, 0, err);
}
