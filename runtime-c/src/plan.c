/*
 * plan.c -- parse and check a plan.json once, then answer queries from the parsed form.
 *
 * Every value is type- and range-checked at open (the same rules as the Python runtime's loader):
 * names are safe, paths stay inside the plan's directory, digests are hex, sizes are integers, sections
 * name known graphs. A query never parses or allocates, so reads are thread-safe.
 */
#include "plan_internal.h"
#include "platform.h"

#include <float.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MAX_PLAN_BYTES (256L * 1024L * 1024L)
#define MAX_SAFE_INT 9007199254740992.0 /* 2^53: sizes beyond it are not exact in JSON doubles */

lmp_status lmp_fail(lmp_error *err, lmp_status status, const char *fmt, ...) {
    if (err) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(err->message, sizeof err->message, fmt, ap);
        va_end(ap);
        err->status = status;
    }
    return status;
}

void *lmp_alloc(lmp_plan *p, size_t n) {
    void *mem;
    void **grown;
    if (p->n_allocs == p->cap_allocs) {
        size_t cap = p->cap_allocs ? 2 * p->cap_allocs : 64;
        grown = (void **)realloc(p->allocs, cap * sizeof *grown);
        if (!grown) return NULL;
        p->allocs = grown;
        p->cap_allocs = cap;
    }
    mem = calloc(1, n ? n : 1);
    if (mem) p->allocs[p->n_allocs++] = mem;
    return mem;
}

static char *dup_str(lmp_plan *p, const char *s) {
    size_t n = strlen(s);
    char *out = (char *)lmp_alloc(p, n + 1);
    if (out) memcpy(out, s, n + 1);
    return out;
}

static size_t hash_str(const char *s) {
    size_t h = (size_t)1469598103934665603ULL;
    while (*s) h = (h ^ (unsigned char)*s++) * (size_t)1099511628211ULL;
    return h;
}

static int map_init(lmp_plan *p, lmp_map *m, size_t n) {
    size_t cap = 16;
    while (cap < 2 * n) cap *= 2;
    m->keys = (const char **)lmp_alloc(p, cap * sizeof *m->keys); /* calloc: all slots empty */
    m->vals = (size_t *)lmp_alloc(p, cap * sizeof *m->vals);
    m->mask = cap - 1;
    return m->keys && m->vals;
}

/* The slot of key: where it is, or the empty slot where it would go. */
static size_t map_slot(const lmp_map *m, const char *key) {
    size_t i = hash_str(key) & m->mask;
    while (m->keys[i] && strcmp(m->keys[i], key) != 0) i = (i + 1) & m->mask;
    return i;
}

/* 1 if added, 0 if key was there already (its value left alone) */
static int map_put(lmp_map *m, const char *key, size_t val) {
    size_t i = map_slot(m, key);
    if (m->keys[i]) return 0;
    m->keys[i] = key;
    m->vals[i] = val;
    return 1;
}

static long map_get(const lmp_map *m, const char *key) {
    size_t i;
    if (!m->keys) return -1;
    i = map_slot(m, key);
    return m->keys[i] ? (long)m->vals[i] : -1;
}

/* -- checks -------------------------------------------------------------------------------------------- */
/* what a plan and both runtimes call the default adapter: no adapter or use case may take it */
static int reserved_name(const char *s) { return s && (strcmp(s, "default") == 0 || strcmp(s, "default_adapter") == 0); }

static int safe_name(const char *s) {
    size_t i, n;
    if (!s) return 0;
    n = strlen(s);
    if (n == 0 || n > 256 || strstr(s, "..")) return 0;
    for (i = 0; i < n; i++) {
        char c = s[i];
        int ok = (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') ||
                 (i > 0 && (c == '_' || c == '.' || c == '+' || c == '@' || c == '-'));
        if (!ok) return 0;
    }
    return 1;
}

static int safe_rel_path(const char *s) {
    const char *seg;
    if (!s || !*s || s[0] == '/' || strchr(s, '\\') || strlen(s) > 4096) return 0;
    if (strchr(s, ':')) return 0; /* a Windows drive letter or stream name */
    for (seg = s; seg;) {
        const char *end = strchr(seg, '/');
        size_t len = end ? (size_t)(end - seg) : strlen(seg);
        if (len == 2 && seg[0] == '.' && seg[1] == '.') return 0;
        seg = end ? end + 1 : NULL;
    }
    return 1;
}

static int hex64(const char *s) {
    int i;
    if (!s || strlen(s) != 64) return 0;
    for (i = 0; i < 64; i++)
        if (!((s[i] >= '0' && s[i] <= '9') || (s[i] >= 'a' && s[i] <= 'f'))) return 0;
    return 1;
}

static const char *str_of(const cJSON *obj, const char *key) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(obj, key);
    return cJSON_IsString(v) ? v->valuestring : NULL;
}

static int size_of(const cJSON *obj, const char *key, uint64_t *out) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(obj, key);
    double d;
    if (!cJSON_IsNumber(v)) return 0;
    d = v->valuedouble;
    if (!(d >= 0 && d <= MAX_SAFE_INT) || floor(d) != d) return 0;
    *out = (uint64_t)d;
    return 1;
}

static int finite_number(const cJSON *v, double *out) {
    if (!cJSON_IsNumber(v) || !isfinite(v->valuedouble)) return 0;
    *out = v->valuedouble;
    return 1;
}

/* An alpha the graph's alpha input can hold: finite once stored as float32 (float16 on fp16 bases).
   A check on the double alone lets 1e39 through, which the input turns into inf and the logits NaN. */
static int alpha_number(const lmp_plan *p, const cJSON *v, double *out) {
    double x;
    if (!finite_number(v, &x) || fabs(x) > p->alpha_max) return 0;
    *out = x;
    return 1;
}

static char *join_path(lmp_plan *p, const char *rel) {
    size_t a = strlen(p->dir), b = strlen(rel);
    char *out = (char *)lmp_alloc(p, a + b + 2);
    if (!out) return NULL;
    memcpy(out, p->dir, a);
    out[a] = '/';
    memcpy(out + a + 1, rel, b + 1);
    return out;
}

/* A file entry {path, sha256, size} of the plan. */
static lmp_status parse_file(lmp_plan *p, const cJSON *obj, const char *what, lmp_section *f, lmp_error *err) {
    const char *rel = str_of(obj, "path"), *sha = str_of(obj, "sha256");
    if (!cJSON_IsObject(obj)) return lmp_fail(err, LMP_ERR_FORMAT, "%s: %s is not an object", p->path, what);
    if (!safe_rel_path(rel))
        return lmp_fail(err, LMP_ERR_FORMAT, "%s: %s path %.80s escapes the plan directory", p->path, what,
                        rel ? rel : "(missing)");
    if (!hex64(sha)) return lmp_fail(err, LMP_ERR_FORMAT, "%s: %s sha256 is not a hex digest", p->path, what);
    if (!size_of(obj, "size", &f->size)) return lmp_fail(err, LMP_ERR_FORMAT, "%s: %s size is not a byte count", p->path, what);
    f->rel_path = rel;
    f->sha256 = sha;
    f->path = join_path(p, rel);
    f->name = str_of(obj, "name") ? str_of(obj, "name") : rel;
    return f->path ? LMP_OK : lmp_fail(err, LMP_ERR_IO, "%s: out of memory", p->path);
}

static long graph_index(const lmp_plan *p, const char *name) {
    return map_get(&p->graph_map, name);
}

static const char *const SECTION_KINDS[] = {"section",          "super_section",          "default_section",
                                            "use_case_section", "use_case_super_section", "group_quant_section"};
static const char *const OWNER_TYPES[] = {"adapter", "use_case", "group", "default"};

static int index_of(const char *const *names, int n, const char *s) {
    int i;
    for (i = 0; s && i < n; i++)
        if (strcmp(names[i], s) == 0) return i;
    return -1;
}

const char *lmp_section_kind_name(lmp_section_kind kind) {
    return (int)kind >= 0 && (int)kind < 6 ? SECTION_KINDS[kind] : NULL;
}

const char *lmp_owner_type_name(lmp_owner_type type) {
    return (int)type >= 0 && (int)type < 4 ? OWNER_TYPES[type] : NULL;
}

/* A section's kind and owner: read where the plan says them (and they must be the listing entry's,
 * as loramgr.runtime checks), derived from the entry in plans written before sections carried them. */
static lmp_status parse_owner(lmp_plan *p, const cJSON *s, const char *who, const lmp_entry *e, lmp_section *sec,
                              lmp_error *err) {
    static const lmp_owner_type owner_of[] = {LMP_OWNER_ADAPTER, LMP_OWNER_USE_CASE, LMP_OWNER_DEFAULT,
                                              LMP_OWNER_GROUP}; /* by entry kind */
    const cJSON *kind = cJSON_GetObjectItemCaseSensitive(s, "kind"), *owner = cJSON_GetObjectItemCaseSensitive(s, "owner");
    lmp_owner_type t = owner_of[e->kind];
    int k;
    sec->owner_type = t;
    sec->owner_name = e->name;
    if (t == LMP_OWNER_ADAPTER) sec->kind = sec->shared ? LMP_SUPER_SECTION : LMP_SECTION;
    else if (t == LMP_OWNER_USE_CASE) sec->kind = sec->shared ? LMP_USE_CASE_SUPER_SECTION : LMP_USE_CASE_SECTION;
    else sec->kind = t == LMP_OWNER_GROUP ? LMP_GROUP_QUANT_SECTION : LMP_DEFAULT_SECTION;
    if (kind) {
        k = cJSON_IsString(kind) ? index_of(SECTION_KINDS, 6, kind->valuestring) : -1;
        if (k < 0) return lmp_fail(err, LMP_ERR_FORMAT, "%s: %s: a section's kind is unknown", p->path, who);
        if (!((t == LMP_OWNER_ADAPTER && (k == LMP_SECTION || k == LMP_SUPER_SECTION)) ||
              (t == LMP_OWNER_USE_CASE && (k == LMP_USE_CASE_SECTION || k == LMP_USE_CASE_SUPER_SECTION)) ||
              (t == LMP_OWNER_GROUP && k == LMP_GROUP_QUANT_SECTION) || (t == LMP_OWNER_DEFAULT && k == LMP_DEFAULT_SECTION)))
            return lmp_fail(err, LMP_ERR_FORMAT, "%s: %s: a section of kind %s is listed under a %s", p->path, who,
                            SECTION_KINDS[k], OWNER_TYPES[t]);
        sec->kind = (lmp_section_kind)k;
    }
    if (owner && !cJSON_IsNull(owner)) {
        const char *name = str_of(owner, "name");
        k = index_of(OWNER_TYPES, 4, str_of(owner, "type"));
        if (!cJSON_IsObject(owner) || k != (int)t)
            return lmp_fail(err, LMP_ERR_FORMAT, "%s: %s: a section is not owned by this %s", p->path, who, OWNER_TYPES[t]);
        if (t != LMP_OWNER_DEFAULT && (!name || strcmp(name, e->name) != 0))
            return lmp_fail(err, LMP_ERR_FORMAT, "%s: %s: a section is owned by %.80s", p->path, who,
                            name ? name : "(no name)");
    }
    return LMP_OK;
}

static lmp_status parse_sections(lmp_plan *p, const cJSON *arr, const char *who, lmp_entry *e, lmp_error *err) {
    size_t i = 0, n;
    const cJSON *s;
    if (!cJSON_IsArray(arr)) return lmp_fail(err, LMP_ERR_FORMAT, "%s: %s: sections must be a list", p->path, who);
    n = (size_t)cJSON_GetArraySize(arr);
    e->sections = (lmp_section *)lmp_alloc(p, n * sizeof *e->sections);
    if (!e->sections) return lmp_fail(err, LMP_ERR_IO, "out of memory");
    cJSON_ArrayForEach(s, arr) {
        lmp_section *sec = &e->sections[i++];
        const cJSON *gs = cJSON_GetObjectItemCaseSensitive(s, "graphs"), *g;
        size_t k = 0, ng;
        lmp_status st = parse_file(p, s, "a section", sec, err);
        if (st) return st;
        if (!cJSON_IsArray(gs) || (ng = (size_t)cJSON_GetArraySize(gs)) == 0)
            return lmp_fail(err, LMP_ERR_FORMAT, "%s: %s: a section names no graphs", p->path, who);
        sec->graphs = (const char *const *)lmp_alloc(p, ng * sizeof(char *));
        if (!sec->graphs) return lmp_fail(err, LMP_ERR_IO, "out of memory");
        cJSON_ArrayForEach(g, gs) {
            if (!cJSON_IsString(g) || graph_index(p, g->valuestring) < 0)
                return lmp_fail(err, LMP_ERR_FORMAT, "%s: %s: a section names an unknown graph", p->path, who);
            ((const char **)sec->graphs)[k++] = g->valuestring;
        }
        sec->n_graphs = ng;
        sec->shared = cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(s, "shared")) ? 1 : 0;
        if ((st = parse_owner(p, s, who, e, sec, err))) return st;
    }
    e->n_sections = n;
    return LMP_OK;
}

static lmp_status parse_encodings(lmp_plan *p, const cJSON *obj, const char *who, lmp_encoding **out, size_t *count,
                                  lmp_error *err) {
    size_t i = 0, n;
    const cJSON *t;
    *out = NULL;
    *count = 0;
    if (obj == NULL || cJSON_IsNull(obj)) return LMP_OK;
    if (!cJSON_IsObject(obj)) return lmp_fail(err, LMP_ERR_FORMAT, "%s: %s: encodings must be an object", p->path, who);
    n = (size_t)cJSON_GetArraySize(obj);
    *out = (lmp_encoding *)lmp_alloc(p, n * sizeof **out);
    if (!*out) return lmp_fail(err, LMP_ERR_IO, "out of memory");
    cJSON_ArrayForEach(t, obj) {
        lmp_encoding *enc = &(*out)[i++];
        const cJSON *entry;
        size_t k = 0, nc;
        enc->tensor = t->string;
        if (!cJSON_IsArray(t) || (nc = (size_t)cJSON_GetArraySize(t)) == 0)
            return lmp_fail(err, LMP_ERR_FORMAT, "%s: %s: encoding of %.80s is not a non-empty list", p->path, who,
                            t->string);
        enc->channels = (const lmp_channel *)lmp_alloc(p, nc * sizeof(lmp_channel));
        if (!enc->channels) return lmp_fail(err, LMP_ERR_IO, "out of memory");
        cJSON_ArrayForEach(entry, t) {
            lmp_channel *c = (lmp_channel *)&enc->channels[k++];
            const cJSON *bw = cJSON_GetObjectItemCaseSensitive(entry, "bitwidth");
            const cJSON *sym = cJSON_GetObjectItemCaseSensitive(entry, "is_symmetric");
            if (!cJSON_IsNumber(bw) || bw->valuedouble < 1 || bw->valuedouble > 32 ||
                floor(bw->valuedouble) != bw->valuedouble ||
                !finite_number(cJSON_GetObjectItemCaseSensitive(entry, "scale"), &c->scale) ||
                !finite_number(cJSON_GetObjectItemCaseSensitive(entry, "offset"), &c->offset))
                return lmp_fail(err, LMP_ERR_FORMAT, "%s: %s: encoding of %.80s: bitwidth/scale/offset malformed",
                                p->path, who, t->string);
            c->bitwidth = (int)bw->valuedouble;
            c->symmetric = cJSON_IsTrue(sym) || (cJSON_IsString(sym) && strcmp(sym->valuestring, "True") == 0);
            if (!finite_number(cJSON_GetObjectItemCaseSensitive(entry, "min"), &c->min)) c->min = c->offset * c->scale;
            if (!finite_number(cJSON_GetObjectItemCaseSensitive(entry, "max"), &c->max))
                c->max = (c->offset + (pow(2.0, c->bitwidth) - 1)) * c->scale;
        }
        enc->n_channels = nc;
    }
    *count = n;
    return LMP_OK;
}

/* An adapter, the default adapter or a use case. */
static lmp_status parse_entry(lmp_plan *p, const cJSON *obj, lmp_entry *e, int kind, lmp_error *err) {
    const char *who;
    const cJSON *steps, *st, *ra;
    lmp_status s;
    if (!cJSON_IsObject(obj)) return lmp_fail(err, LMP_ERR_FORMAT, "%s: an adapter entry is not an object", p->path);
    e->kind = kind;
    e->name = kind == LMP_DEFAULT ? "default" : str_of(obj, "name");
    e->ref = kind == LMP_DEFAULT ? "default" : (str_of(obj, "ref") ? str_of(obj, "ref") : e->name);
    if (!safe_name(e->name) || !safe_name(e->ref))
        return lmp_fail(err, LMP_ERR_FORMAT, "%s: adapter name %.80s is not a safe name", p->path,
                        e->name ? e->name : "(missing)");
    who = e->ref;
    if ((s = parse_sections(p, cJSON_GetObjectItemCaseSensitive(obj, "sections"), who, e, err))) return s;
    if ((s = parse_encodings(p, cJSON_GetObjectItemCaseSensitive(obj, "io_encodings"), who, &e->io, &e->n_io, err)))
        return s;
    if ((s = parse_encodings(p, cJSON_GetObjectItemCaseSensitive(obj, "weight_encodings"), who, &e->weights,
                             &e->n_weights, err)))
        return s;
    steps = cJSON_GetObjectItemCaseSensitive(obj, "steps");
    if (steps && !cJSON_IsArray(steps)) return lmp_fail(err, LMP_ERR_FORMAT, "%s: %s: steps must be a list", p->path, who);
    cJSON_ArrayForEach(st, steps) {
        const cJSON *vals, *x;
        double ignored;
        if (!cJSON_IsObject(st) || !str_of(st, "op"))
            return lmp_fail(err, LMP_ERR_FORMAT, "%s: %s: steps must be {op: ...} objects", p->path, who);
        if (strcmp(str_of(st, "op"), "set_alpha") != 0) continue;
        vals = cJSON_GetObjectItemCaseSensitive(st, "values");
        if (!vals) vals = cJSON_GetObjectItemCaseSensitive(st, "value");
        if (cJSON_IsArray(vals)) {
            cJSON_ArrayForEach(x, vals) {
                if (!alpha_number(p, x, &ignored)) vals = NULL;
                if (!vals) break;
            }
        } else if (!alpha_number(p, vals, &ignored)) {
            vals = NULL;
        }
        if (!vals)
            return lmp_fail(err, LMP_ERR_FORMAT, "%s: %s: a set_alpha step's values must be finite numbers the alpha input holds",
                            p->path, who);
    }
    e->steps = steps;
    e->group_name = str_of(obj, "group");
    e->alpha = 1.0;
    ra = cJSON_GetObjectItemCaseSensitive(obj, "recommended_alpha");
    if (ra && !alpha_number(p, ra, &e->alpha))
        return lmp_fail(err, LMP_ERR_FORMAT, "%s: %s: recommended_alpha is not a finite number the alpha input holds",
                        p->path, who);
    /* slots: a use case lists its adapters and alphas; an adapter alone is a use case of one */
    if (kind == LMP_USE_CASE) {
        const cJSON *ads = cJSON_GetObjectItemCaseSensitive(obj, "adapters"), *a;
        const cJSON *als = cJSON_GetObjectItemCaseSensitive(obj, "alphas");
        const cJSON *al = cJSON_IsArray(als) ? als->child : NULL; /* walked with the slots, not indexed */
        size_t k = 0, n = cJSON_IsArray(ads) ? (size_t)cJSON_GetArraySize(ads) : 0;
        if (n == 0) return lmp_fail(err, LMP_ERR_FORMAT, "%s: use case %s lists no adapters", p->path, who);
        e->slot_names = (const char **)lmp_alloc(p, n * sizeof(char *));
        e->slot_alphas = (double *)lmp_alloc(p, n * sizeof(double));
        if (!e->slot_names || !e->slot_alphas) return lmp_fail(err, LMP_ERR_IO, "out of memory");
        cJSON_ArrayForEach(a, ads) {
            const char *an = cJSON_IsString(a) ? a->valuestring : str_of(a, "name");
            if (!safe_name(an)) return lmp_fail(err, LMP_ERR_FORMAT, "%s: use case %s: a slot names no adapter", p->path, who);
            e->slot_names[k] = an;
            e->slot_alphas[k] = 1.0;
            if (al && !alpha_number(p, al, &e->slot_alphas[k]))
                return lmp_fail(err, LMP_ERR_FORMAT, "%s: use case %s: alphas must be finite numbers the alpha input holds",
                                p->path, who);
            k++;
            al = al ? al->next : NULL;
        }
        e->n_slots = n;
    } else {
        e->slot_names = (const char **)lmp_alloc(p, sizeof(char *));
        e->slot_alphas = (double *)lmp_alloc(p, sizeof(double));
        if (!e->slot_names || !e->slot_alphas) return lmp_fail(err, LMP_ERR_IO, "out of memory");
        e->slot_names[0] = e->name;
        e->slot_alphas[0] = e->alpha;
        e->n_slots = 1;
    }
    return LMP_OK;
}

static lmp_status parse_graphs(lmp_plan *p, const cJSON *base, lmp_error *err) {
    const cJSON *gs = cJSON_GetObjectItemCaseSensitive(base, "graphs"), *g, *ext, *x;
    size_t i = 0, n, nfiles = 0, k;
    if (!cJSON_IsArray(gs) || (n = (size_t)cJSON_GetArraySize(gs)) == 0)
        return lmp_fail(err, LMP_ERR_FORMAT, "%s: the plan lists no graphs", p->path);
    p->graphs = (lmp_graph *)lmp_alloc(p, n * sizeof *p->graphs);
    if (!map_init(p, &p->graph_map, n)) return lmp_fail(err, LMP_ERR_IO, "out of memory");
    p->graph_names = (const char **)lmp_alloc(p, n * sizeof(char *));
    if (!p->graphs || !p->graph_names) return lmp_fail(err, LMP_ERR_IO, "out of memory");
    cJSON_ArrayForEach(g, gs) {
        const char *name = str_of(g, "name");
        lmp_status s;
        if (!safe_name(name)) return lmp_fail(err, LMP_ERR_FORMAT, "%s: a graph name is not a safe name", p->path);
        if (!map_put(&p->graph_map, name, i))
            return lmp_fail(err, LMP_ERR_FORMAT, "%s: graph %s is listed twice", p->path, name);
        p->graphs[i].name = name;
        p->graph_names[i] = name;
        if ((s = parse_file(p, g, "a graph", &p->graphs[i].file, err))) return s;
        p->graphs[i].file.name = name;
        ext = cJSON_GetObjectItemCaseSensitive(g, "external_data");
        if (ext && !cJSON_IsArray(ext)) return lmp_fail(err, LMP_ERR_FORMAT, "%s: external_data must be a list", p->path);
        nfiles += 1 + (ext ? (size_t)cJSON_GetArraySize(ext) : 0);
        i++;
    }
    p->n_graphs = n;
    p->graph_files = (lmp_section *)lmp_alloc(p, nfiles * sizeof *p->graph_files);
    if (!p->graph_files) return lmp_fail(err, LMP_ERR_IO, "out of memory");
    k = 0;
    i = 0;
    cJSON_ArrayForEach(g, gs) {
        p->graph_files[k++] = p->graphs[i++].file;
        ext = cJSON_GetObjectItemCaseSensitive(g, "external_data");
        cJSON_ArrayForEach(x, ext) {
            lmp_status s = parse_file(p, x, "external data", &p->graph_files[k++], err);
            if (s) return s;
        }
    }
    p->n_graph_files = k;
    return LMP_OK;
}

static lmp_status parse_targets(lmp_plan *p, const cJSON *doc, lmp_error *err);

/* groups (quantization sections shared by grouped use cases): entries of their own, linked from members */
static lmp_status parse_groups(lmp_plan *p, const cJSON *doc, lmp_error *err) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(doc, "groups"), *g;
    size_t n, i = 0, k;
    lmp_status s;
    if (v && !cJSON_IsArray(v)) return lmp_fail(err, LMP_ERR_FORMAT, "%s: groups must be a list", p->path);
    n = v ? (size_t)cJSON_GetArraySize(v) : 0;
    p->groups = (lmp_entry *)lmp_alloc(p, (n ? n : 1) * sizeof *p->groups);
    if (!p->groups || !map_init(p, &p->group_map, n)) return lmp_fail(err, LMP_ERR_IO, "out of memory");
    cJSON_ArrayForEach(g, v) {
        lmp_entry *e = &p->groups[i++];
        if (!cJSON_IsObject(g) || !safe_name(str_of(g, "name")))
            return lmp_fail(err, LMP_ERR_FORMAT, "%s: a group has no safe name", p->path);
        e->kind = LMP_GROUP;
        e->name = e->ref = str_of(g, "name");
        if (!map_put(&p->group_map, e->name, i - 1))
            return lmp_fail(err, LMP_ERR_FORMAT, "%s: group %s is listed twice", p->path, e->name);
        if ((s = parse_sections(p, cJSON_GetObjectItemCaseSensitive(g, "sections"), e->name, e, err))) return s;
    }
    p->n_groups = n;
    for (i = 0; i < p->n_use_cases; i++) {
        const char *name = p->use_cases[i].group_name;
        long gk;
        if (!name) continue;
        gk = map_get(&p->group_map, name);
        k = gk < 0 ? n : (size_t)gk;
        if (k == n)
            return lmp_fail(err, LMP_ERR_FORMAT, "%s: use case %.80s names group %.80s, which the plan lacks", p->path,
                            p->use_cases[i].name, name);
        p->use_cases[i].group = &p->groups[k];
    }
    return LMP_OK;
}

static lmp_status parse_doc(lmp_plan *p, lmp_error *err) {
    const cJSON *doc = p->doc, *v, *base, *a, *ctx, *c;
    lmp_map refs, names, uc_refs; /* each sized for what it will hold: a map is never full */
    const char *schema = str_of(doc, "schema");
    size_t i, n, k;
    lmp_status s;
    if (!cJSON_IsObject(doc) || !schema || strcmp(schema, "loramgr.plan") != 0)
        return lmp_fail(err, LMP_ERR_FORMAT, "%s: not a loramgr plan (schema field missing)", p->path);
    v = cJSON_GetObjectItemCaseSensitive(doc, "schema_version");
    if (!cJSON_IsNumber(v) || (v->valuedouble != 1 && v->valuedouble != 2))
        return lmp_fail(err, LMP_ERR_FORMAT, "%s: plan schema version is not supported (1, 2)", p->path);
    p->schema = (int)v->valuedouble;
    p->backend = str_of(doc, "backend") ? str_of(doc, "backend") : "";
    base = cJSON_GetObjectItemCaseSensitive(doc, "base");
    if (!cJSON_IsObject(base)) return lmp_fail(err, LMP_ERR_FORMAT, "%s: base is not an object", p->path);
    if ((s = parse_graphs(p, base, err))) return s;
    ctx = cJSON_GetObjectItemCaseSensitive(base, "contexts");
    n = cJSON_IsArray(ctx) ? (size_t)cJSON_GetArraySize(ctx) : 0;
    p->contexts = (const char **)lmp_alloc(p, (n ? n : 1) * sizeof(char *));
    if (!p->contexts) return lmp_fail(err, LMP_ERR_IO, "out of memory");
    i = 0;
    cJSON_ArrayForEach(c, ctx) {
        if (!safe_name(str_of(c, "name")) && !safe_rel_path(str_of(c, "name")))
            return lmp_fail(err, LMP_ERR_FORMAT, "%s: a context name is not a safe name", p->path);
        p->contexts[i++] = str_of(c, "name");
    }
    p->n_contexts = i;
    v = cJSON_GetObjectItemCaseSensitive(doc, "alpha");
    if (v && !cJSON_IsObject(v)) return lmp_fail(err, LMP_ERR_FORMAT, "%s: alpha must be an object", p->path);
    p->alpha_tensor = str_of(v, "tensor");
    p->alpha_default = 1.0;
    p->alpha_max = (str_of(base, "precision") && strcmp(str_of(base, "precision"), "fp16") == 0) ? 65504.0 : FLT_MAX;
    if (cJSON_GetObjectItemCaseSensitive(v, "default") &&
        !alpha_number(p, cJSON_GetObjectItemCaseSensitive(v, "default"), &p->alpha_default))
        return lmp_fail(err, LMP_ERR_FORMAT, "%s: alpha.default is not a finite number", p->path);
    p->reset_steps = cJSON_GetObjectItemCaseSensitive(doc, "reset_steps");
    if (p->reset_steps && !cJSON_IsObject(p->reset_steps))
        return lmp_fail(err, LMP_ERR_FORMAT, "%s: reset_steps must be an object", p->path);
    /* adapters */
    v = cJSON_GetObjectItemCaseSensitive(doc, "adapters");
    if (!cJSON_IsArray(v)) return lmp_fail(err, LMP_ERR_FORMAT, "%s: adapters must be a list", p->path);
    n = (size_t)cJSON_GetArraySize(v);
    p->adapters = (lmp_entry *)lmp_alloc(p, (n ? n : 1) * sizeof *p->adapters);
    p->adapter_names = (const char **)lmp_alloc(p, (n ? n : 1) * sizeof(char *));
    if (!p->adapters || !p->adapter_names) return lmp_fail(err, LMP_ERR_IO, "out of memory");
    if (!map_init(p, &refs, n) || !map_init(p, &names, n)) return lmp_fail(err, LMP_ERR_IO, "out of memory");
    i = 0;
    cJSON_ArrayForEach(a, v) {
        if ((s = parse_entry(p, a, &p->adapters[i], LMP_ADAPTER, err))) return s;
        if (reserved_name(p->adapters[i].ref) || reserved_name(p->adapters[i].name))
            return lmp_fail(err, LMP_ERR_FORMAT, "%s: an adapter shadows the default adapter", p->path);
        if (!map_put(&refs, p->adapters[i].ref, i))
            return lmp_fail(err, LMP_ERR_FORMAT, "%s: adapter %s is listed twice", p->path, p->adapters[i].ref);
        if (!map_put(&names, p->adapters[i].name, 1)) names.vals[map_slot(&names, p->adapters[i].name)]++;
        i++;
    }
    p->n_adapters = n;
    for (i = 0; i < n; i++) { /* a bare name works when it is unique, as in the Python runtime */
        size_t same = (size_t)map_get(&names, p->adapters[i].name);
        p->adapters[i].name_unique = same == 1;
        p->adapter_names[i] = same == 1 ? p->adapters[i].name : p->adapters[i].ref;
    }
    /* use cases (schema 2) */
    v = cJSON_GetObjectItemCaseSensitive(doc, "use_cases");
    if (v && !cJSON_IsArray(v)) return lmp_fail(err, LMP_ERR_FORMAT, "%s: use_cases must be a list", p->path);
    n = v ? (size_t)cJSON_GetArraySize(v) : 0;
    p->use_cases = (lmp_entry *)lmp_alloc(p, (n ? n : 1) * sizeof *p->use_cases);
    p->use_case_names = (const char **)lmp_alloc(p, (n ? n : 1) * sizeof(char *));
    if (!p->use_cases || !p->use_case_names) return lmp_fail(err, LMP_ERR_IO, "out of memory");
    if (!map_init(p, &p->find_map, p->n_adapters * 2 + n) || !map_init(p, &uc_refs, n))
        return lmp_fail(err, LMP_ERR_IO, "out of memory");
    for (i = 0; i < p->n_adapters; i++) { /* what lmp_find resolves: refs, unique bare names (one lookup) */
        map_put(&p->find_map, p->adapters[i].ref, i);
        if (p->adapters[i].name_unique) map_put(&p->find_map, p->adapters[i].name, i);
    }
    i = 0;
    cJSON_ArrayForEach(a, v) {
        lmp_entry *u = &p->use_cases[i];
        if ((s = parse_entry(p, a, u, LMP_USE_CASE, err))) return s;
        /* one namespace with the adapters and the default adapter, as in the Python runtime */
        if (reserved_name(u->name) || reserved_name(u->ref))
            return lmp_fail(err, LMP_ERR_FORMAT, "%s: use case %s shadows the default adapter", p->path, u->name);
        if (map_get(&p->find_map, u->name) >= 0 && (size_t)map_get(&p->find_map, u->name) < p->n_adapters)
            return lmp_fail(err, LMP_ERR_FORMAT, "%s: use case %s has the name of an adapter", p->path, u->name);
        if (map_get(&refs, u->ref) >= 0 || !map_put(&uc_refs, u->ref, i) ||
            !map_put(&p->find_map, u->name, p->n_adapters + i))
            return lmp_fail(err, LMP_ERR_FORMAT, "%s: use case %s is listed twice", p->path, u->name);
        for (k = 0; k < u->n_slots; k++) {
            long at = map_get(&p->find_map, u->slot_names[k]);
            if (at < 0 || (size_t)at >= p->n_adapters)
                return lmp_fail(err, LMP_ERR_FORMAT, "%s: use case %s: slot %zu names %.80s, not an adapter of the plan",
                                p->path, u->name, k, u->slot_names[k]);
        }
        p->use_case_names[i] = u->name;
        i++;
    }
    p->n_use_cases = n;
    if ((s = parse_groups(p, doc, err))) return s;
    if ((s = parse_targets(p, doc, err))) return s;
    return parse_entry(p, cJSON_GetObjectItemCaseSensitive(doc, "default_adapter"), &p->dflt, LMP_DEFAULT, err);
}

/* {path, sha256, size} entries of a compiled graph's files */
static lmp_status parse_files(lmp_plan *p, const cJSON *arr, const char *what, lmp_compiled *c, lmp_error *err) {
    size_t i = 0, n;
    const cJSON *f;
    lmp_status s;
    if (!cJSON_IsArray(arr)) return lmp_fail(err, LMP_ERR_FORMAT, "%s: %s: files must be a list", p->path, what);
    n = (size_t)cJSON_GetArraySize(arr);
    c->files = (const lmp_section *)lmp_alloc(p, (n ? n : 1) * sizeof(lmp_section));
    if (!c->files) return lmp_fail(err, LMP_ERR_IO, "out of memory");
    cJSON_ArrayForEach(f, arr) {
        lmp_section *sec = (lmp_section *)&c->files[i++];
        memset(sec, 0, sizeof *sec);
        if ((s = parse_file(p, f, what, sec, err))) return s;
    }
    c->n_files = n;
    return LMP_OK;
}

/* targets (build --backend qnn-ep): per target, every graph compiled shared (what a device loads)
 * and alone (unshared_*), with the context files each needs; paths checked like every other. */
static lmp_status parse_targets(lmp_plan *p, const cJSON *doc, lmp_error *err) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(doc, "targets"), *t;
    size_t n, i = 0, g;
    lmp_status s;
    if (!v || cJSON_IsNull(v)) return LMP_OK;
    if (!cJSON_IsObject(v)) return lmp_fail(err, LMP_ERR_FORMAT, "%s: targets must be an object", p->path);
    n = (size_t)cJSON_GetArraySize(v);
    p->targets = (lmp_target_entry *)lmp_alloc(p, (n ? n : 1) * sizeof *p->targets);
    p->target_list = (lmp_target *)lmp_alloc(p, (n ? n : 1) * sizeof *p->target_list);
    if (!p->targets || !p->target_list) return lmp_fail(err, LMP_ERR_IO, "out of memory");
    cJSON_ArrayForEach(t, v) {
        lmp_target_entry *e = &p->targets[i];
        const cJSON *graphs = cJSON_GetObjectItemCaseSensitive(t, "graphs");
        double soc, arch;
        memset(e, 0, sizeof *e);
        if (!safe_name(t->string) || !cJSON_IsObject(t) || !cJSON_IsObject(graphs) ||
            !finite_number(cJSON_GetObjectItemCaseSensitive(t, "soc_model"), &soc) ||
            !finite_number(cJSON_GetObjectItemCaseSensitive(t, "htp_arch"), &arch) || soc < 0 || soc > 1e6 ||
            arch < 0 || arch > 1e6)
            return lmp_fail(err, LMP_ERR_FORMAT, "%s: target %.80s is malformed", p->path, t->string ? t->string : "");
        e->target.name = t->string;
        e->target.soc_model = (int)soc;
        e->target.htp_arch = (int)arch;
        e->target.qnn_version = str_of(t, "qnn_version");
        e->target.precision = str_of(t, "precision");
        e->shared = (lmp_compiled *)lmp_alloc(p, (p->n_graphs ? p->n_graphs : 1) * sizeof(lmp_compiled));
        e->alone = (lmp_compiled *)lmp_alloc(p, (p->n_graphs ? p->n_graphs : 1) * sizeof(lmp_compiled));
        if (!e->shared || !e->alone) return lmp_fail(err, LMP_ERR_IO, "out of memory");
        memset(e->shared, 0, p->n_graphs * sizeof(lmp_compiled));
        memset(e->alone, 0, p->n_graphs * sizeof(lmp_compiled));
        for (g = 0; g < p->n_graphs; g++) {
            const cJSON *c = cJSON_GetObjectItemCaseSensitive(graphs, p->graphs[g].name);
            if (!c) continue;
            if ((s = parse_file(p, c, "a compiled graph", &e->shared[g].model, err))) return s;
            e->shared[g].model.name = p->graphs[g].name;
            if ((s = parse_files(p, cJSON_GetObjectItemCaseSensitive(c, "files"), "a compiled graph", &e->shared[g], err)))
                return s;
            if (cJSON_GetObjectItemCaseSensitive(c, "unshared_path")) {
                cJSON *alone = cJSON_CreateObject();
                if (!alone) return lmp_fail(err, LMP_ERR_IO, "out of memory");
                cJSON_AddItemReferenceToObject(alone, "path", cJSON_GetObjectItemCaseSensitive(c, "unshared_path"));
                cJSON_AddItemReferenceToObject(alone, "sha256", cJSON_GetObjectItemCaseSensitive(c, "unshared_sha256"));
                cJSON_AddItemReferenceToObject(alone, "size", cJSON_GetObjectItemCaseSensitive(c, "unshared_size"));
                s = parse_file(p, alone, "a compiled graph", &e->alone[g].model, err);
                cJSON_Delete(alone);
                if (s) return s;
                e->alone[g].model.name = p->graphs[g].name;
                if ((s = parse_files(p, cJSON_GetObjectItemCaseSensitive(c, "unshared_files"), "a compiled graph",
                                     &e->alone[g], err)))
                    return s;
            } else {
                e->alone[g] = e->shared[g];
            }
        }
        p->target_list[i] = e->target;
        i++;
    }
    p->n_targets = n;
    return LMP_OK;
}

lmp_status lmp_targets(const lmp_plan *p, const lmp_target **out, size_t *count, lmp_error *err) {
    if (!p || !out || !count) return lmp_fail(err, LMP_ERR_USAGE, "lmp_targets: plan, out and count are required");
    *out = p->target_list;
    *count = p->n_targets;
    return LMP_OK;
}

lmp_status lmp_target_graph(const lmp_plan *p, const char *target, const char *graph, int shared,
                            const lmp_compiled **out, lmp_error *err) {
    size_t i;
    long g;
    if (!p || !target || !graph || !out)
        return lmp_fail(err, LMP_ERR_USAGE, "lmp_target_graph: plan, target, graph and out are required");
    for (i = 0; i < p->n_targets && strcmp(p->targets[i].target.name, target) != 0; i++) {
    }
    if (i == p->n_targets) return lmp_fail(err, LMP_ERR_NOT_FOUND, "target %.80s: not in the plan", target);
    g = graph_index(p, graph);
    if (g < 0 || !(shared ? p->targets[i].shared : p->targets[i].alone)[g].model.path)
        return lmp_fail(err, LMP_ERR_NOT_FOUND, "graph %.80s: not compiled for target %.80s", graph, target);
    *out = &(shared ? p->targets[i].shared : p->targets[i].alone)[g];
    return LMP_OK;
}

static char *read_all(const char *path, long *size, lmp_error *err, lmp_status *st) {
    const char *why = NULL;
    uint64_t n = 0;
    FILE *f = lmp_open_regular(path, &n, &why); /* a FIFO would block the open; /dev/zero never ends */
    char *buf;
    if (!f) {
        *st = lmp_fail(err, LMP_ERR_FORMAT, "%s: cannot open the plan file: %s", path, why);
        return NULL;
    }
    if (n > MAX_PLAN_BYTES) {
        fclose(f);
        *st = lmp_fail(err, LMP_ERR_FORMAT, "%s: plan file is implausibly large", path);
        return NULL;
    }
    buf = (char *)malloc((size_t)n + 1);
    if (!buf || fread(buf, 1, (size_t)n, f) != (size_t)n) {
        free(buf);
        fclose(f);
        *st = lmp_fail(err, LMP_ERR_IO, "%s: cannot read the plan file", path);
        return NULL;
    }
    fclose(f);
    buf[n] = '\0';
    *size = (long)n;
    return buf;
}

/* Length of the strict UTF-8 sequence at t (1..4), 0 if it is not one (overlong, surrogate, > U+10FFFF). */
static size_t utf8_len(const unsigned char *t, size_t n) {
    size_t len, i;
    unsigned long cp;
    if (t[0] < 0xC2 || t[0] > 0xF4) return 0;
    len = t[0] < 0xE0 ? 2 : t[0] < 0xF0 ? 3 : 4;
    if (n < len) return 0;
    cp = t[0] & (0x7Fu >> len);
    for (i = 1; i < len; i++) {
        if ((t[i] & 0xC0) != 0x80) return 0;
        cp = (cp << 6) | (t[i] & 0x3Fu);
    }
    if ((len == 3 && cp < 0x800) || (len == 4 && (cp < 0x10000 || cp > 0x10FFFF)) || (cp >= 0xD800 && cp <= 0xDFFF))
        return 0;
    return len;
}

/* What the Python reader's json module refuses and cJSON would take: a byte-order mark, invalid UTF-8,
   a raw control character inside a string, and a NUL (raw, or escaped as \u0000: cJSON would cut the
   string there, so "a\u0000evil" would be read as "a"). NULL when the text is clean. */
static const char *text_problem(const unsigned char *t, size_t n) {
    size_t i, k;
    int in_str = 0;
    if (n >= 3 && t[0] == 0xEF && t[1] == 0xBB && t[2] == 0xBF) return "starts with a byte-order mark";
    for (i = 0; i < n; i++) {
        unsigned char c = t[i];
        if (c >= 0x80) {
            if (!(k = utf8_len(t + i, n - i))) return "is not valid UTF-8";
            i += k - 1;
        } else if (!in_str) {
            if (c == '"') in_str = 1;
            else if (c == 0) return "holds a NUL byte";
        } else if (c == '"') {
            in_str = 0;
        } else if (c < 0x20) {
            return "holds a control character inside a string";
        } else if (c == '\\') {
            if (i + 5 < n && t[i + 1] == 'u' && memcmp(t + i + 2, "0000", 4) == 0) return "holds a NUL (\\u0000) in a string";
            i++; /* the escaped character, whatever it is */
        }
    }
    return NULL;
}

/* Duplicate keys in any object: cJSON keeps both and returns the first, Python's json the last, so the
   two readers would apply different files. Refused everywhere, in time linear in the object's size. */
static int keys_distinct(const cJSON *node, int depth) {
    const cJSON *c, *d;
    size_t n = 0;
    if (depth > 64) return 0;
    for (c = node ? node->child : NULL; c; c = c->next) {
        if (!keys_distinct(c, depth + 1)) return 0;
        n++;
    }
    if (!cJSON_IsObject(node) || n < 2) return 1;
    if (n <= 16) {
        for (c = node->child; c; c = c->next)
            for (d = c->next; d; d = d->next)
                if (strcmp(c->string, d->string) == 0) return 0;
        return 1;
    } else {
        size_t cap = 32, i, mask;
        const char **seen;
        while (cap < 2 * n) cap *= 2;
        seen = (const char **)calloc(cap, sizeof *seen);
        if (!seen) return 0;
        mask = cap - 1;
        for (c = node->child; c; c = c->next) {
            for (i = hash_str(c->string) & mask; seen[i]; i = (i + 1) & mask)
                if (strcmp(seen[i], c->string) == 0) {
                    free(seen);
                    return 0;
                }
            seen[i] = c->string;
        }
        free(seen);
        return 1;
    }
}

static lmp_status open_text(const char *label, const char *dir, size_t dir_len, const char *text, size_t size,
                            lmp_plan **out, lmp_error *err) {
    lmp_plan *p = (lmp_plan *)calloc(1, sizeof *p);
    lmp_status st;
    if (!p) return lmp_fail(err, LMP_ERR_IO, "out of memory");
    p->path = dup_str(p, label);
    p->dir = (char *)lmp_alloc(p, dir_len + 1);
    if (!p->path || !p->dir) {
        lmp_close(p);
        return lmp_fail(err, LMP_ERR_IO, "out of memory");
    }
    memcpy(p->dir, dir, dir_len);
    p->dir[dir_len] = '\0';
    {
        char *real = lmp_real_path(p->dir); /* NULL (no such directory): every file read is then refused */
        if (real) {
            p->real_dir = dup_str(p, real);
            free(real);
        }
    }
    {
        const char *problem = text_problem((const unsigned char *)text, size);
        if (problem) {
            lmp_close(p);
            return lmp_fail(err, LMP_ERR_FORMAT, "%s: not a JSON plan: it %s", label, problem);
        }
    }
    {
        const char *end = NULL; /* only whitespace may follow the document (Python's json agrees) */
        p->doc = cJSON_ParseWithLengthOpts(text, size, &end, 0);
        while (p->doc && end && end < text + size && (*end == ' ' || *end == '\t' || *end == '\n' || *end == '\r')) end++;
        if (p->doc && end != text + size) {
            cJSON_Delete(p->doc);
            p->doc = NULL;
        }
    }
    if (!p->doc) {
        lmp_close(p);
        return lmp_fail(err, LMP_ERR_FORMAT, "%s: not a JSON plan", label);
    }
    if (!keys_distinct(p->doc, 0)) {
        lmp_close(p);
        return lmp_fail(err, LMP_ERR_FORMAT, "%s: an object of the plan lists a key twice (or nests too deep)", label);
    }
    st = parse_doc(p, err);
    if (st) {
        lmp_close(p);
        return st;
    }
    *out = p;
    return LMP_OK;
}

static void clear(lmp_error *err) {
    if (err) {
        err->status = LMP_OK;
        err->message[0] = '\0';
    }
}

lmp_status lmp_open(const char *path, lmp_plan **out, lmp_error *err) {
    char *text;
    const char *slash;
    long size = 0;
    lmp_status st = LMP_OK;
    clear(err);
    if (!path || !out) return lmp_fail(err, LMP_ERR_USAGE, "lmp_open: path and out are required");
    *out = NULL;
    text = read_all(path, &size, err, &st);
    if (!text) return st;
    slash = strrchr(path, '/');
    if (slash)
        st = open_text(path, path, slash == path ? 1 : (size_t)(slash - path), text, (size_t)size, out, err);
    else
        st = open_text(path, ".", 1, text, (size_t)size, out, err);
    free(text);
    return st;
}

lmp_status lmp_open_memory(const char *json, size_t size, const char *dir, lmp_plan **out, lmp_error *err) {
    clear(err);
    if (!json || !dir || !out) return lmp_fail(err, LMP_ERR_USAGE, "lmp_open_memory: json, dir and out are required");
    *out = NULL;
    if (size > (size_t)MAX_PLAN_BYTES) return lmp_fail(err, LMP_ERR_FORMAT, "plan in memory is implausibly large");
    return open_text("(plan in memory)", dir, strlen(dir), json, size, out, err);
}

void lmp_close(lmp_plan *p) {
    size_t i;
    if (!p) return;
    if (p->doc) cJSON_Delete(p->doc);
    for (i = 0; i < p->n_allocs; i++) free(p->allocs[i]);
    free(p->allocs);
    free(p);
}

/* -- queries ------------------------------------------------------------------------------------------ */
int lmp_schema_version(const lmp_plan *p) { return p ? p->schema : 0; }
const char *lmp_plan_dir(const lmp_plan *p) { return p ? p->dir : NULL; }
const char *lmp_backend(const lmp_plan *p) { return p ? p->backend : NULL; }
size_t lmp_adapter_count(const lmp_plan *p) { return p ? p->n_adapters : 0; }
const char *lmp_adapter_name(const lmp_plan *p, size_t i) { return p && i < p->n_adapters ? p->adapter_names[i] : NULL; }
size_t lmp_use_case_count(const lmp_plan *p) { return p ? p->n_use_cases : 0; }
const char *lmp_use_case_name(const lmp_plan *p, size_t i) { return p && i < p->n_use_cases ? p->use_case_names[i] : NULL; }
size_t lmp_graph_count(const lmp_plan *p) { return p ? p->n_graphs : 0; }
const char *lmp_graph_name(const lmp_plan *p, size_t i) { return p && i < p->n_graphs ? p->graph_names[i] : NULL; }
size_t lmp_context_count(const lmp_plan *p) { return p ? p->n_contexts : 0; }
const char *lmp_context_name(const lmp_plan *p, size_t i) { return p && i < p->n_contexts ? p->contexts[i] : NULL; }
const char *lmp_alpha_tensor(const lmp_plan *p) { return p ? p->alpha_tensor : NULL; }
double lmp_alpha_default(const lmp_plan *p) { return p ? p->alpha_default : 1.0; }

const lmp_entry *lmp_find(const lmp_plan *p, const char *name) {
    long at;
    if (!p || !name) return NULL;
    if (reserved_name(name)) return &p->dflt;
    at = map_get(&p->find_map, name); /* one hash lookup: 100k entries cost what 10 do */
    if (at < 0) return NULL;
    return (size_t)at < p->n_adapters ? &p->adapters[at] : &p->use_cases[(size_t)at - p->n_adapters];
}

const char *lmp_group_of(const lmp_plan *p, const char *name) {
    const lmp_entry *e = p && name ? lmp_find(p, name) : NULL;
    return e && e->group ? e->group->name : NULL;
}

lmp_status lmp_entry_ref(const lmp_plan *p, const char *name, const char **ref, lmp_error *err) {
    const lmp_entry *e = NULL;
    lmp_status s;
    if (!ref) return lmp_fail(err, LMP_ERR_USAGE, "lmp_entry_ref: ref is required");
    if ((s = lmp_entry_or_fail(p, name, &e, err))) return s;
    *ref = e->ref;
    return LMP_OK;
}

lmp_status lmp_steps_json(const lmp_plan *p, const char *name, char **json, lmp_error *err) {
    const lmp_entry *e = NULL;
    lmp_status s;
    if (!json) return lmp_fail(err, LMP_ERR_USAGE, "lmp_steps_json: json is required");
    *json = NULL;
    if ((s = lmp_entry_or_fail(p, name, &e, err))) return s;
    *json = e->steps ? cJSON_PrintUnformatted(e->steps) : NULL;
    if (!*json) {
        *json = (char *)malloc(3);
        if (*json) memcpy(*json, "[]", 3);
    }
    return *json ? LMP_OK : lmp_fail(err, LMP_ERR_IO, "out of memory");
}

void lmp_free(void *ptr) { free(ptr); }

lmp_status lmp_entry_or_fail(const lmp_plan *p, const char *name, const lmp_entry **e, lmp_error *err) {
    if (!p || !name) return lmp_fail(err, LMP_ERR_USAGE, "plan and name are required");
    *e = lmp_find(p, name);
    if (!*e) return lmp_fail(err, LMP_ERR_NOT_FOUND, "adapter %.200s: is not in the plan", name);
    return LMP_OK;
}

lmp_status lmp_sections(const lmp_plan *p, const char *name, const lmp_section **out, size_t *count, lmp_error *err) {
    const lmp_entry *e;
    lmp_status s = lmp_entry_or_fail(p, name, &e, err);
    if (s) return s;
    if (!out || !count) return lmp_fail(err, LMP_ERR_USAGE, "out and count are required");
    *out = e->sections;
    *count = e->n_sections;
    return LMP_OK;
}

lmp_status lmp_section_for(const lmp_plan *p, const char *name, const char *graph, const lmp_section **out,
                           lmp_error *err) {
    const lmp_entry *e;
    size_t i, k;
    lmp_status s = lmp_entry_or_fail(p, name, &e, err);
    if (s) return s;
    if (!graph || !out) return lmp_fail(err, LMP_ERR_USAGE, "graph and out are required");
    for (i = 0; i < e->n_sections; i++)
        for (k = 0; k < e->sections[i].n_graphs; k++)
            if (strcmp(e->sections[i].graphs[k], graph) == 0) {
                *out = &e->sections[i];
                return LMP_OK;
            }
    return lmp_fail(err, LMP_ERR_NOT_FOUND, "adapter %s: has no section for graph %.200s", e->ref, graph);
}

static lmp_status find_encoding(const lmp_encoding *encs, size_t n, const char *who, const char *tensor,
                                const lmp_encoding **out, lmp_error *err) {
    size_t i;
    if (!tensor || !out) return lmp_fail(err, LMP_ERR_USAGE, "tensor and out are required");
    for (i = 0; i < n; i++)
        if (strcmp(encs[i].tensor, tensor) == 0) {
            *out = &encs[i];
            return LMP_OK;
        }
    return lmp_fail(err, LMP_ERR_NOT_FOUND, "adapter %s: has no encoding for tensor %.200s", who, tensor);
}

lmp_status lmp_io_encoding(const lmp_plan *p, const char *name, const char *tensor, const lmp_encoding **out,
                           lmp_error *err) {
    const lmp_entry *e;
    lmp_status s = lmp_entry_or_fail(p, name, &e, err);
    return s ? s : find_encoding(e->io, e->n_io, e->ref, tensor, out, err);
}

size_t lmp_io_encoding_count(const lmp_plan *p, const char *name) {
    const lmp_entry *e = lmp_find(p, name);
    return e ? e->n_io : 0;
}

const lmp_encoding *lmp_io_encoding_at(const lmp_plan *p, const char *name, size_t i) {
    const lmp_entry *e = lmp_find(p, name);
    return e && i < e->n_io ? &e->io[i] : NULL;
}

lmp_status lmp_weight_encoding(const lmp_plan *p, const char *name, const char *tensor, const lmp_encoding **out,
                               lmp_error *err) {
    const lmp_entry *e;
    lmp_status s = lmp_entry_or_fail(p, name, &e, err);
    return s ? s : find_encoding(e->weights, e->n_weights, e->ref, tensor, out, err);
}

lmp_status lmp_slots(const lmp_plan *p, const char *name, const char *const **adapters, const double **alphas,
                     size_t *count, lmp_error *err) {
    const lmp_entry *e;
    lmp_status s = lmp_entry_or_fail(p, name, &e, err);
    if (s) return s;
    if (!adapters || !alphas || !count) return lmp_fail(err, LMP_ERR_USAGE, "adapters, alphas and count are required");
    *adapters = e->slot_names;
    *alphas = e->slot_alphas;
    *count = e->n_slots;
    return LMP_OK;
}
