/*
 * loramgr_plan.h -- read a loramgr plan.json on the device: sections, encodings, steps, checksums,
 * and a switch driver that calls the device code's own QNN / Genie functions through callbacks.
 *
 * C99, the C library (stdio, no threads, no POSIX) and cJSON: the same sources build with the Android NDK
 * and MSVC.
 * A plan is parsed once by lmp_open(); every query after that only reads the handle, so several
 * threads may query one handle at once. Strings and arrays returned by queries live as long as the
 * handle. Every call that can fail returns an lmp_status and, when `err` is not NULL, fills it with
 * the status and a one-line message naming the file or entry concerned.
 */
#ifndef LORAMGR_PLAN_H
#define LORAMGR_PLAN_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define LMP_VERSION "0.1.0"

/* LMP_API marks the public functions: exported from the shared library (built with LMP_BUILDING and
 * hidden visibility for everything else), imported by its users; nothing for the static library. */
#if defined(LMP_STATIC)
#define LMP_API
#elif defined(_WIN32)
#ifdef LMP_BUILDING
#define LMP_API __declspec(dllexport)
#else
#define LMP_API __declspec(dllimport)
#endif
#elif defined(__GNUC__) || defined(__clang__)
#define LMP_API __attribute__((visibility("default")))
#else
#define LMP_API
#endif

/* Status codes: the same numbers as the loramgr CLI's exit codes. */
typedef enum {
    LMP_OK = 0,
    LMP_ERR_INTERNAL = 1,  /* a bug in this library */
    LMP_ERR_USAGE = 2,     /* a NULL or otherwise invalid argument */
    LMP_ERR_NOT_FOUND = 3, /* no adapter / use case / graph / tensor of that name */
    LMP_ERR_FORMAT = 4,    /* the plan is malformed or hostile (a path leaving its directory) */
    LMP_ERR_INTEGRITY = 8, /* a file does not match the sha256/size the plan records */
    LMP_ERR_IO = 9,        /* a file cannot be read, or memory ran out */
    LMP_ERR_CALLBACK = 11  /* a switch callback returned non-zero */
} lmp_status;

typedef struct {
    lmp_status status;
    char message[512];
} lmp_error;

typedef struct lmp_plan lmp_plan; /* opaque */

/* Whose a section is (the plan's section "owner": {"type", "name"}). */
typedef enum {
    LMP_OWNER_ADAPTER = 0,
    LMP_OWNER_USE_CASE = 1,
    LMP_OWNER_GROUP = 2,  /* a group's quantization-only section */
    LMP_OWNER_DEFAULT = 3 /* the all-zero default adapter */
} lmp_owner_type;

/* What a section is (the plan's section "kind"). */
typedef enum {
    LMP_SECTION = 0,                /* "section": one adapter's, for one graph */
    LMP_SUPER_SECTION = 1,          /* "super_section": one adapter's, for several graphs */
    LMP_DEFAULT_SECTION = 2,        /* "default_section" */
    LMP_USE_CASE_SECTION = 3,       /* "use_case_section" */
    LMP_USE_CASE_SUPER_SECTION = 4, /* "use_case_super_section" */
    LMP_GROUP_QUANT_SECTION = 5     /* "group_quant_section" */
} lmp_section_kind;

typedef struct {
    const char *name;           /* e.g. "prefill+decode" */
    const char *path;           /* resolved against the plan's directory */
    const char *rel_path;       /* as written in the plan */
    const char *sha256;         /* 64 lowercase hex digits */
    uint64_t size;              /* bytes */
    int shared;                 /* 1: one section serves several graphs (super adapter) */
    const char *const *graphs;  /* the graphs it is applied to */
    size_t n_graphs;
    lmp_section_kind kind;      /* the plan's "kind" (derived from where it is listed in older plans) */
    lmp_owner_type owner_type;  /* the plan's "owner": always the entry that lists the section */
    const char *owner_name;     /* adapter, use case or group name; "default" for the default adapter */
} lmp_section;

/* An HTP target the base was compiled for (`build --backend qnn-ep`): the plan's targets[name]. */
typedef struct {
    const char *name;        /* a SoC part number, e.g. "sm8750" */
    int soc_model;           /* QNN's soc_model */
    int htp_arch;            /* e.g. 79 */
    const char *qnn_version; /* the QNN build that compiled it */
    const char *precision;   /* the numerics the SoC computes in, e.g. "fp16" */
} lmp_target;

/* One graph compiled for a target: the EPContext model and the context .bin files it loads. */
typedef struct {
    lmp_section model;          /* name = the graph */
    const lmp_section *files;   /* the context binaries */
    size_t n_files;
} lmp_compiled;

typedef struct {
    int bitwidth;
    int symmetric; /* 1 when AIMET's is_symmetric is true */
    double scale, offset, min, max;
} lmp_channel;

typedef struct {
    const char *tensor;
    const lmp_channel *channels; /* one for per-tensor encodings, one per channel otherwise */
    size_t n_channels;
} lmp_encoding;

/* -- open / close ------------------------------------------------------------------------------ */
LMP_API lmp_status lmp_open(const char *path, lmp_plan **out, lmp_error *err);
/* A plan already in memory (e.g. an Android asset); its paths resolve against `dir`. */
LMP_API lmp_status lmp_open_memory(const char *json, size_t size, const char *dir, lmp_plan **out, lmp_error *err);
LMP_API void lmp_close(lmp_plan *plan);
LMP_API int lmp_schema_version(const lmp_plan *plan);
LMP_API const char *lmp_plan_dir(const lmp_plan *plan);
LMP_API const char *lmp_backend(const lmp_plan *plan);

/* -- listings (index 0 .. count-1; out of range: NULL) ------------------------------------------ */
LMP_API size_t lmp_adapter_count(const lmp_plan *plan);
LMP_API const char *lmp_adapter_name(const lmp_plan *plan, size_t i); /* the name a lookup accepts */
LMP_API size_t lmp_use_case_count(const lmp_plan *plan);               /* schema 2 */
LMP_API const char *lmp_use_case_name(const lmp_plan *plan, size_t i);
LMP_API size_t lmp_graph_count(const lmp_plan *plan);
LMP_API const char *lmp_graph_name(const lmp_plan *plan, size_t i);
LMP_API size_t lmp_context_count(const lmp_plan *plan);
LMP_API const char *lmp_context_name(const lmp_plan *plan, size_t i);

/* NAME's ref (NAME@VERSION for an adapter; the name for a use case; "default"), and its steps as the
 * plan holds them, as a JSON array text the caller frees with lmp_free. */
LMP_API lmp_status lmp_entry_ref(const lmp_plan *plan, const char *name, const char **ref, lmp_error *err);
LMP_API lmp_status lmp_steps_json(const lmp_plan *plan, const char *name, char **json, lmp_error *err);
LMP_API void lmp_free(void *p);

/*
 * Lookups by NAME: an adapter's name (or NAME@VERSION), a use case's name, or "default" for the
 * all-zero default adapter.
 */
LMP_API lmp_status lmp_sections(const lmp_plan *plan, const char *name, const lmp_section **out, size_t *count,
                        lmp_error *err);
/* The plan's HTP targets, in plan order. */
LMP_API lmp_status lmp_targets(const lmp_plan *plan, const lmp_target **out, size_t *count, lmp_error *err);
/* GRAPH compiled for TARGET. shared=1: what a device loads (the weight-shared context when the build
 * made one); shared=0: the graph compiled alone (the x86 simulator cannot load a weight-shared one). */
LMP_API lmp_status lmp_target_graph(const lmp_plan *plan, const char *target, const char *graph, int shared,
                            const lmp_compiled **out, lmp_error *err);
/* The plan's spelling of a section kind / owner type ("super_section", "use_case", ...); NULL if out of range. */
LMP_API const char *lmp_section_kind_name(lmp_section_kind kind);
LMP_API const char *lmp_owner_type_name(lmp_owner_type type);
/* The section to apply to one graph. */
LMP_API lmp_status lmp_section_for(const lmp_plan *plan, const char *name, const char *graph, const lmp_section **out,
                           lmp_error *err);
/* The I/O tensor encoding to set after applying NAME (activation encodings). */
LMP_API lmp_status lmp_io_encoding(const lmp_plan *plan, const char *name, const char *tensor, const lmp_encoding **out,
                           lmp_error *err);
LMP_API size_t lmp_io_encoding_count(const lmp_plan *plan, const char *name);
LMP_API const lmp_encoding *lmp_io_encoding_at(const lmp_plan *plan, const char *name, size_t i);
/* A LoRA weight's encoding (param encodings; per channel). */
LMP_API lmp_status lmp_weight_encoding(const lmp_plan *plan, const char *name, const char *tensor,
                               const lmp_encoding **out, lmp_error *err);
/* The alpha input's name (NULL when the base has none) and its default value. */
LMP_API const char *lmp_alpha_tensor(const lmp_plan *plan);
LMP_API double lmp_alpha_default(const lmp_plan *plan);
/* Slots of NAME: adapter names and their default alphas (one slot for a plain adapter). */
LMP_API lmp_status lmp_slots(const lmp_plan *plan, const char *name, const char *const **adapters, const double **alphas,
                     size_t *count, lmp_error *err);

/* -- integrity ----------------------------------------------------------------------------------- */
/* Read the file and compare its size and sha256 with the plan: LMP_ERR_INTEGRITY on a mismatch. */
LMP_API lmp_status lmp_verify_section(const lmp_plan *plan, const lmp_section *section, lmp_error *err);
/* Every file the plan names (graphs, external data, sections); `checked` counts them. */
LMP_API lmp_status lmp_verify_all(const lmp_plan *plan, size_t *checked, lmp_error *err);
/* SHA-256 of a buffer, as 64 hex digits plus NUL. */
LMP_API void lmp_sha256_hex(const void *data, size_t size, char out[65]);

/* -- quantization (AIMET: x = scale * (q + offset)) --------------------------------------------- */
LMP_API int64_t lmp_quantize(const lmp_channel *enc, double x);   /* rounded, clipped to 0 .. 2^bitwidth - 1 */
LMP_API double lmp_dequantize(const lmp_channel *enc, int64_t q);
LMP_API void lmp_quantize_array(const lmp_channel *enc, const float *x, int32_t *q, size_t n);
LMP_API void lmp_dequantize_array(const lmp_channel *enc, const int32_t *q, float *x, size_t n);

/* -- the switch driver ----------------------------------------------------------------------------- */
/*
 * lmp_switch walks the plan's steps for NAME and calls these; a NULL callback skips its step. Each
 * returns 0 on success; anything else stops the walk with LMP_ERR_CALLBACK.
 *   create_context  the "create_context" step (only with LMP_SWITCH_CREATE_CONTEXT: once per context)
 *   apply_section   section bytes (read and verified against the plan's sha256) for its graphs; the
 *                   buffer is freed after the call returns: copy it when the runtime keeps it
 *   set_io_encoding every I/O encoding of NAME, after its sections are applied
 *   set_alpha       the alpha input and its values (one per slot)
 *   execute         the "execute" step (only with LMP_SWITCH_EXECUTE)
 *   reset           lmp_reset's walk back to the default adapter calls the same table
 */
typedef struct {
    void *user;
    int (*create_context)(void *user, const char *const *graphs, size_t n_graphs);
    int (*apply_section)(void *user, const lmp_section *section, const unsigned char *bytes, size_t size);
    int (*set_io_encoding)(void *user, const lmp_encoding *encoding);
    int (*set_alpha)(void *user, const char *tensor, const float *values, size_t n);
    int (*execute)(void *user);
} lmp_callbacks;

#define LMP_SWITCH_CREATE_CONTEXT 1u
#define LMP_SWITCH_EXECUTE 2u

LMP_API lmp_status lmp_switch(const lmp_plan *plan, const char *name, const lmp_callbacks *cb, unsigned flags,
                      lmp_error *err);
/* lmp_switch from the entry FROM (NULL: nothing applied yet) to NAME: a grouped use case's group
 * quantization section (steps marked "when": "group_changes") is skipped when FROM is of the same
 * group, so switching inside a group applies only the weights section. lmp_switch applies it always. */
LMP_API lmp_status lmp_switch_from(const lmp_plan *plan, const char *from, const char *name, const lmp_callbacks *cb,
                           unsigned flags, lmp_error *err);
/* The group of use case NAME (NULL: not grouped or not a use case). */
LMP_API const char *lmp_group_of(const lmp_plan *plan, const char *name);
/* Back to the base model: "default_adapter" (apply the default adapter's sections) or "alpha_zero". */
LMP_API lmp_status lmp_reset(const lmp_plan *plan, const char *method, const lmp_callbacks *cb, lmp_error *err);

#ifdef __cplusplus
}
#endif
#endif /* LORAMGR_PLAN_H */
