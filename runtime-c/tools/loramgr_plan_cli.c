/*
 * loramgr-plan -- the plan reader from a shell: the same answers (and JSON field names) as the Python
 * runtime's, and the same exit codes as the loramgr CLI (3 not found, 4 invalid plan, 8 integrity).
 *
 *   loramgr-plan adapters PLAN
 *   loramgr-plan sections PLAN NAME [GRAPH]
 *   loramgr-plan encoding PLAN NAME TENSOR
 *   loramgr-plan steps PLAN NAME
 *   loramgr-plan verify PLAN
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cjson/cJSON.h>

#include "loramgr_plan.h"

static int usage(void) {
    fputs("usage: loramgr-plan adapters PLAN | targets PLAN | sections PLAN NAME [GRAPH] | encoding PLAN NAME TENSOR |\n"
          "                    steps PLAN NAME | switch PLAN [FROM] NAME | verify PLAN\n",
          stderr);
    return LMP_ERR_USAGE;
}

static int fail(const lmp_error *err) {
    fprintf(stderr, "loramgr-plan: error: %s\n", err->message);
    return (int)err->status;
}

static int emit(cJSON *obj) {
    char *text = cJSON_Print(obj);
    int rc = text ? 0 : LMP_ERR_IO;
    if (text) {
        puts(text);
        free(text);
    }
    cJSON_Delete(obj);
    return rc;
}

static cJSON *names(const char *(*get)(const lmp_plan *, size_t), size_t n, const lmp_plan *p) {
    cJSON *arr = cJSON_CreateArray();
    size_t i;
    for (i = 0; i < n; i++) cJSON_AddItemToArray(arr, cJSON_CreateString(get(p, i)));
    return arr;
}

/* A number printed so that it reads back as the same double (cJSON's printer may round to 15 digits). */
static cJSON *number(double v) {
    char buf[40];
    if (v != v || v - v != 0) return cJSON_CreateNull(); /* NaN or infinite: JSON has no such number */
    snprintf(buf, sizeof buf, "%.17g", v);
    return cJSON_CreateRaw(buf);
}

static cJSON *channel_json(const lmp_channel *c) {
    cJSON *o = cJSON_CreateObject();
    cJSON_AddNumberToObject(o, "bitwidth", c->bitwidth);
    cJSON_AddStringToObject(o, "is_symmetric", c->symmetric ? "True" : "False");
    cJSON_AddItemToObject(o, "min", number(c->min));
    cJSON_AddItemToObject(o, "max", number(c->max));
    cJSON_AddItemToObject(o, "scale", number(c->scale));
    cJSON_AddItemToObject(o, "offset", number(c->offset));
    return o;
}

static cJSON *section_json(const lmp_section *s) {
    cJSON *o = cJSON_CreateObject(), *gs = cJSON_CreateArray(), *owner;
    size_t k;
    cJSON_AddStringToObject(o, "name", s->name);
    for (k = 0; k < s->n_graphs; k++) cJSON_AddItemToArray(gs, cJSON_CreateString(s->graphs[k]));
    cJSON_AddItemToObject(o, "graphs", gs);
    cJSON_AddStringToObject(o, "path", s->path);
    cJSON_AddStringToObject(o, "sha256", s->sha256);
    cJSON_AddItemToObject(o, "size", number((double)s->size));
    cJSON_AddBoolToObject(o, "shared", s->shared);
    cJSON_AddStringToObject(o, "kind", lmp_section_kind_name(s->kind));
    owner = cJSON_AddObjectToObject(o, "owner");
    cJSON_AddStringToObject(owner, "type", lmp_owner_type_name(s->owner_type));
    cJSON_AddStringToObject(owner, "name", s->owner_name);
    return o;
}

/* `switch`: what lmp_switch_from does, as JSON: the sections applied (verified) and the alpha values */
static int on_apply(void *user, const lmp_section *sec, const unsigned char *bytes, size_t size) {
    (void)bytes;
    (void)size;
    cJSON_AddItemToArray(cJSON_GetObjectItemCaseSensitive((cJSON *)user, "applied"), section_json(sec));
    return 0;
}

static int on_alpha(void *user, const char *tensor, const float *values, size_t n) {
    cJSON *arr = cJSON_CreateArray();
    size_t i;
    for (i = 0; i < n; i++) cJSON_AddItemToArray(arr, number((double)values[i]));
    cJSON_AddStringToObject((cJSON *)user, "alpha_tensor", tensor);
    cJSON_AddItemToObject((cJSON *)user, "alpha", arr);
    return 0;
}

int main(int argc, char **argv) {
    lmp_plan *p = NULL;
    lmp_error err;
    const char *cmd;
    int rc;
    if (argc < 3) return usage();
    cmd = argv[1];
    if (lmp_open(argv[2], &p, &err)) return fail(&err);
    if (strcmp(cmd, "adapters") == 0 && argc == 3) {
        cJSON *o = cJSON_CreateObject();
        cJSON_AddItemToObject(o, "adapters", names(lmp_adapter_name, lmp_adapter_count(p), p));
        cJSON_AddItemToObject(o, "use_cases", names(lmp_use_case_name, lmp_use_case_count(p), p));
        cJSON_AddItemToObject(o, "graphs", names(lmp_graph_name, lmp_graph_count(p), p));
        cJSON_AddItemToObject(o, "contexts", names(lmp_context_name, lmp_context_count(p), p));
        rc = emit(o);
    } else if (strcmp(cmd, "targets") == 0 && argc == 3) {
        /* every target and, per graph, what a device loads (shared) and what the simulator loads (alone) */
        const lmp_target *ts = NULL;
        size_t n = 0, i, g, k;
        cJSON *o = cJSON_CreateObject(), *arr = cJSON_CreateArray();
        rc = (int)lmp_targets(p, &ts, &n, &err);
        for (i = 0; !rc && i < n; i++) {
            cJSON *t = cJSON_CreateObject(), *graphs = cJSON_CreateObject();
            cJSON_AddStringToObject(t, "name", ts[i].name);
            cJSON_AddItemToObject(t, "soc_model", number(ts[i].soc_model));
            cJSON_AddItemToObject(t, "htp_arch", number(ts[i].htp_arch));
            cJSON_AddStringToObject(t, "qnn_version", ts[i].qnn_version ? ts[i].qnn_version : "");
            for (g = 0; g < lmp_graph_count(p); g++) {
                const lmp_compiled *c[2];
                cJSON *entry = cJSON_CreateObject();
                int shared;
                if (lmp_target_graph(p, ts[i].name, lmp_graph_name(p, g), 1, &c[1], NULL) ||
                    lmp_target_graph(p, ts[i].name, lmp_graph_name(p, g), 0, &c[0], NULL)) {
                    cJSON_Delete(entry);
                    continue;
                }
                for (shared = 1; shared >= 0; shared--) {
                    cJSON *files = cJSON_CreateArray();
                    for (k = 0; k < c[shared]->n_files; k++) cJSON_AddItemToArray(files, cJSON_CreateString(c[shared]->files[k].path));
                    cJSON_AddStringToObject(entry, shared ? "path" : "unshared_path", c[shared]->model.path);
                    cJSON_AddItemToObject(entry, shared ? "files" : "unshared_files", files);
                }
                cJSON_AddItemToObject(graphs, lmp_graph_name(p, g), entry);
            }
            cJSON_AddItemToObject(t, "graphs", graphs);
            cJSON_AddItemToArray(arr, t);
        }
        cJSON_AddItemToObject(o, "targets", arr);
        if (rc) {
            cJSON_Delete(o);
            rc = fail(&err);
        } else {
            rc = emit(o);
        }
    } else if (strcmp(cmd, "sections") == 0 && (argc == 4 || argc == 5)) {
        const lmp_section *secs = NULL;
        size_t n = 0, i;
        const char *ref = NULL;
        rc = (int)lmp_entry_ref(p, argv[3], &ref, &err);
        if (!rc && argc == 5) {
            rc = (int)lmp_section_for(p, argv[3], argv[4], &secs, &err);
            n = 1;
        } else if (!rc) {
            rc = (int)lmp_sections(p, argv[3], &secs, &n, &err);
        }
        if (rc) {
            rc = fail(&err);
        } else {
            cJSON *o = cJSON_CreateObject(), *arr = cJSON_CreateArray();
            cJSON_AddStringToObject(o, "adapter", ref);
            for (i = 0; i < n; i++) cJSON_AddItemToArray(arr, section_json(&secs[i]));
            cJSON_AddItemToObject(o, "sections", arr);
            rc = emit(o);
        }
    } else if (strcmp(cmd, "encoding") == 0 && argc == 5) {
        const lmp_encoding *enc = NULL;
        rc = (int)lmp_io_encoding(p, argv[3], argv[4], &enc, &err);
        if (!rc) {
            rc = emit(channel_json(&enc->channels[0])); /* an I/O tensor: its entry, as the Python runtime */
        } else if (rc == LMP_ERR_NOT_FOUND && lmp_weight_encoding(p, argv[3], argv[4], &enc, NULL) == LMP_OK) {
            cJSON *arr = cJSON_CreateArray(); /* a LoRA weight: one entry per channel */
            size_t i;
            for (i = 0; i < enc->n_channels; i++) cJSON_AddItemToArray(arr, channel_json(&enc->channels[i]));
            rc = emit(arr);
        } else {
            rc = fail(&err);
        }
    } else if (strcmp(cmd, "steps") == 0 && argc == 4) {
        const char *ref = NULL;
        char *steps = NULL;
        rc = (int)lmp_entry_ref(p, argv[3], &ref, &err);
        if (!rc) rc = (int)lmp_steps_json(p, argv[3], &steps, &err);
        if (rc) {
            rc = fail(&err);
        } else {
            cJSON *o = cJSON_CreateObject(), *parsed = cJSON_Parse(steps);
            cJSON_AddStringToObject(o, "adapter", ref);
            cJSON_AddItemToObject(o, "steps", parsed ? parsed : cJSON_CreateArray());
            lmp_free(steps);
            rc = emit(o);
        }
    } else if (strcmp(cmd, "switch") == 0 && (argc == 4 || argc == 5)) {
        const char *from = argc == 5 ? argv[3] : NULL, *to = argv[argc - 1];
        cJSON *o = cJSON_CreateObject();
        lmp_callbacks cb = {0};
        cb.user = o;
        cb.apply_section = on_apply;
        cb.set_alpha = on_alpha;
        cJSON_AddItemToObject(o, "from", from ? cJSON_CreateString(from) : cJSON_CreateNull());
        cJSON_AddStringToObject(o, "to", to);
        cJSON_AddItemToObject(o, "group", lmp_group_of(p, to) ? cJSON_CreateString(lmp_group_of(p, to)) : cJSON_CreateNull());
        cJSON_AddItemToObject(o, "applied", cJSON_CreateArray());
        rc = (int)lmp_switch_from(p, from, to, &cb, 0, &err);
        if (rc) {
            cJSON_Delete(o);
            rc = fail(&err);
        } else {
            rc = emit(o);
        }
    } else if (strcmp(cmd, "verify") == 0 && argc == 3) {
        size_t n = 0;
        rc = (int)lmp_verify_all(p, &n, &err);
        if (rc) {
            rc = fail(&err);
        } else {
            cJSON *o = cJSON_CreateObject();
            cJSON_AddStringToObject(o, "plan", argv[2]);
            cJSON_AddNumberToObject(o, "files", (double)n);
            cJSON_AddBoolToObject(o, "ok", 1);
            rc = emit(o);
        }
    } else {
        rc = usage();
    }
    lmp_close(p);
    return rc;
}
