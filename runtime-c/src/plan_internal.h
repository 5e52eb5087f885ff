/* The parsed plan behind the opaque lmp_plan handle (internal to the library). */
#ifndef LMP_PLAN_INTERNAL_H
#define LMP_PLAN_INTERNAL_H

#include <cjson/cJSON.h>

#include "loramgr_plan.h"

enum { LMP_ADAPTER = 0, LMP_USE_CASE = 1, LMP_DEFAULT = 2, LMP_GROUP = 3 };

typedef struct lmp_entry lmp_entry;

/* A string -> index map (open addressing, linear probing), allocated with lmp_alloc. */
typedef struct {
    const char **keys;
    size_t *vals;
    size_t mask; /* capacity - 1, capacity a power of two >= 2 * entries */
} lmp_map;

struct lmp_entry {
    int kind;
    const char *name, *ref;
    int name_unique;
    lmp_section *sections;
    size_t n_sections;
    lmp_encoding *io, *weights;
    size_t n_io, n_weights;
    const cJSON *steps; /* borrowed from the document */
    double alpha;       /* recommended alpha */
    const char **slot_names;
    double *slot_alphas;
    size_t n_slots;
    const char *group_name; /* the use case's "group" as the plan says it */
    const lmp_entry *group; /* a grouped use case's group (its sections: the quantization sections) */
};

typedef struct {
    const char *name;
    lmp_section file;
} lmp_graph;

typedef struct {
    lmp_target target;
    lmp_compiled *shared, *alone; /* per graph of the plan, in graph order; alone NULL when not given */
} lmp_target_entry;

struct lmp_plan {
    cJSON *doc;
    char *path, *dir;
    char *real_dir; /* dir with every link resolved: no file read may lead out of it */
    int schema;
    const char *backend;
    lmp_graph *graphs;
    const char **graph_names;
    size_t n_graphs;
    lmp_section *graph_files; /* graphs and their external data */
    size_t n_graph_files;
    const char **contexts;
    size_t n_contexts;
    lmp_entry *adapters, *use_cases, *groups, dflt;
    size_t n_groups;
    const char **adapter_names, **use_case_names;
    size_t n_adapters, n_use_cases;
    const char *alpha_tensor;
    double alpha_default;
    double alpha_max; /* the alpha input's float range: 65504 on fp16 bases, FLT_MAX otherwise */
    const cJSON *reset_steps;
    lmp_target_entry *targets;
    lmp_target *target_list;
    size_t n_targets;
    lmp_map graph_map, group_map, find_map; /* graph -> index; group -> index; name -> entry (tagged) */
    void **allocs; /* everything allocated for the handle, freed by lmp_close */
    size_t n_allocs, cap_allocs;
};

lmp_status lmp_fail(lmp_error *err, lmp_status status, const char *fmt, ...);
void *lmp_alloc(lmp_plan *p, size_t n);
const lmp_entry *lmp_find(const lmp_plan *p, const char *name);
lmp_status lmp_entry_or_fail(const lmp_plan *p, const char *name, const lmp_entry **e, lmp_error *err);

#endif
