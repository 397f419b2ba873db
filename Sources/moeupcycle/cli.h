/* What the moeupcycle host's files share: helpers (cli_common.c), the one
 * option parser (options.c) and the command entry points (one file each). */
#ifndef MOEUPCYCLE_CLI_H
#define MOEUPCYCLE_CLI_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "moeupcycle.h"

/* ------------------------------------------------------ cli_common.c -- */

/* Prints moe_last_error() with the status text; returns exit code 1 (or
 * 128 + the signal when the call was cancelled by SIGINT/SIGTERM). */
int fail(moe_status st);
/* Prints a usage error; returns exit code 2. */
int bad_usage(const char *msg, const char *arg);
double now_seconds(void);
void human_bytes(double b, char *buf, size_t n);
void json_string(FILE *f, const char *s);
/* `v` printed with `format` into buf, or "null" when it is NaN or infinite (JSON has neither). */
void json_number(char *buf, size_t n, double v, const char *format);
/* Strict number parsing: 1 on success, 0 on any junk. */
int parse_u64(const char *s, uint64_t *out);
int parse_u32(const char *s, uint32_t *out);
int parse_double(const char *s, double *out);
/* A whole file (NUL-terminated, *length without the NUL); NULL with a message. */
char *read_file(const char *path, size_t *length);
/* Whitespace- or comma-separated token ids of `text`; NULL with a message
 * naming `what` and the byte where something else was found. */
int32_t *parse_token_ids(const char *text, size_t length, const char *what, size_t *count);

/* SIGINT and SIGTERM set a flag that long calls see through their progress
 * or token callbacks (which then cancel, and the library removes what it had
 * started to write); a second signal ends the process at once. SIGXFSZ is
 * ignored so that a file size limit (ulimit -f) is an error, not a kill. */
void cli_handle_signals(void);
/* The signal received, or 0. */
int cli_signal(void);

/* State of progress_bar: set start = now_seconds(), last_percent = -1. */
struct progress_state { double start; int last_percent; int draw; };
/* A moe_progress_fn: draws a bar on stderr when `draw` is set, and cancels
 * (returns 1) once a signal arrived. */
int progress_bar(uint64_t done, uint64_t total, const char *stage, void *user_data);

/* Streaming read bandwidth in GB/s with `threads` threads over `bytes` (best of 3). */
double stream_bandwidth(size_t bytes, int threads);

/* The machine's multiply-add ceilings in GFLOP/s, for benchmarks to put
 * their figures beside: moe_runtime_measure_peak on every worker of a
 * runtime, 0.3 s per dtype. bf16 is 0 where the library has no bf16 compute
 * on this CPU (MOE_ERR_UNSUPPORTED), printed as "n/a" or null.
 * A benchmark measures before and after its timed runs and keeps the larger
 * value of each: on a virtual machine two vCPUs can share one physical core
 * for seconds at a time (each then multiply-adds at half speed), and a
 * ceiling measured in such a moment would make every figure beside it look
 * better than it is. */
typedef struct cli_peaks {
  double f32;
  double bf16;
} cli_peaks;
/* Measures both ceilings and keeps in *out the larger of each and its
 * present value (start from { 0, 0 }). MOE_OK, or the status of a
 * measurement that failed (bf16 being unsupported is no failure). */
moe_status measure_peaks(moe_runtime *rt, cli_peaks *out);
/* `"peak_f32_gflops": F, "peak_bf16_gflops": B` (B null when not measured), no braces. */
void peaks_json(FILE *f, const cli_peaks *p);
/* `f32 peak F GFLOP/s, bf16 peak B GFLOP/s` (or `bf16 peak n/a`). */
void peaks_text(FILE *f, const cli_peaks *p);

/* " | "-joined names of an enum from the library's name table, for usage text. */
const char *enum_names(const char *(*name)(int32_t value));

/* ---------------------------------------------------------- options.c -- */

typedef enum cli_kind {
  CLI_FLAG,    /* no value: *(int32_t *)target = set */
  CLI_U32,     /* uint32_t, within [min, max] when max > 0 */
  CLI_U64,     /* uint64_t, within [min, max] when max > 0 */
  CLI_DOUBLE,  /* double */
  CLI_FLOAT,   /* float */
  CLI_STRING,  /* const char * (points into argv) */
  CLI_ENUM     /* an enum of the header, parsed by the library's name table */
} cli_kind;

/* Parses `name` into the enum at `out` (a moe_<enum>_from_name adapter). */
typedef moe_status (*cli_enum_parser)(void *out, const char *name);

typedef struct cli_option {
  const char *name;       /* "--experts" */
  cli_kind kind;
  void *target;
  cli_enum_parser parse;  /* CLI_ENUM */
  int32_t set;            /* CLI_FLAG: the value stored */
  uint64_t min, max;      /* CLI_U32 / CLI_U64 bounds (max 0 = none) */
} cli_option;

#define OPT_FLAG(n, t) { (n), CLI_FLAG, (t), NULL, 1, 0, 0 }
#define OPT_SET(n, t, v) { (n), CLI_FLAG, (t), NULL, (v), 0, 0 }
#define OPT_U32(n, t) { (n), CLI_U32, (t), NULL, 0, 0, 0 }
#define OPT_U32_IN(n, t, lo, hi) { (n), CLI_U32, (t), NULL, 0, (lo), (hi) }
#define OPT_U64(n, t) { (n), CLI_U64, (t), NULL, 0, 0, 0 }
#define OPT_DOUBLE(n, t) { (n), CLI_DOUBLE, (t), NULL, 0, 0, 0 }
#define OPT_FLOAT(n, t) { (n), CLI_FLOAT, (t), NULL, 0, 0, 0 }
#define OPT_STRING(n, t) { (n), CLI_STRING, (t), NULL, 0, 0, 0 }
#define OPT_ENUM(n, t, kind) { (n), CLI_ENUM, (t), cli_parse_##kind, 0, 0, 0 }
#define OPT_END { NULL, CLI_FLAG, NULL, NULL, 0, 0, 0 }

/* Adapters from the library's moe_<enum>_from_name, for OPT_ENUM. */
moe_status cli_parse_dtype(void *out, const char *name);
moe_status cli_parse_method(void *out, const char *name);
moe_status cli_parse_router_init(void *out, const char *name);
moe_status cli_parse_routing(void *out, const char *name);
moe_status cli_parse_format(void *out, const char *name);
moe_status cli_parse_partition_select(void *out, const char *name);
moe_status cli_parse_granular_scaling(void *out, const char *name);
moe_status cli_parse_importance(void *out, const char *name);
moe_status cli_parse_drop_select(void *out, const char *name);
moe_status cli_parse_placement(void *out, const char *name);
moe_status cli_parse_train_only(void *out, const char *name);
moe_status cli_parse_lr_schedule(void *out, const char *name);
moe_status cli_parse_nonfinite(void *out, const char *name);
/* And name-table readers for enum_names(). */
const char *cli_name_method(int32_t v);
const char *cli_name_router_init(int32_t v);
const char *cli_name_routing(int32_t v);
const char *cli_name_format(int32_t v);
const char *cli_name_partition_select(int32_t v);
const char *cli_name_granular_scaling(int32_t v);
const char *cli_name_importance(int32_t v);
const char *cli_name_drop_select(int32_t v);
const char *cli_name_placement(int32_t v);
const char *cli_name_train_only(int32_t v);
const char *cli_name_lr_schedule(int32_t v);
const char *cli_name_dtype(int32_t v);
const char *cli_name_nonfinite(int32_t v);

/* The one way commands read their arguments: `--name value`, `--name=value`
 * or a flag, looked up in `options` (ended by OPT_END); anything not starting
 * with "--" is a positional argument, stored in order into `positional`
 * (at most `max_positional`; *count receives how many). "--help" sets
 * *help. Returns 0, or 2 after printing a usage error. */
int cli_parse(int argc, char **argv, const cli_option *options, const char **positional,
              int max_positional, int *count, int *help);

/* ----------------------------------------------------------- commands -- */

int cmd_info(int argc, char **argv);
int cmd_upcycle(int argc, char **argv);
int cmd_calibrate(int argc, char **argv);
int cmd_export(int argc, char **argv);
int cmd_init(int argc, char **argv);
int cmd_plan(int argc, char **argv);
int cmd_study(int argc, char **argv);
int cmd_bench_upcycle(int argc, char **argv);
int cmd_topology(int argc, char **argv);
int cmd_bench_moe(int argc, char **argv);
int cmd_eval(int argc, char **argv);
int cmd_generate(int argc, char **argv);
int cmd_bench_decode(int argc, char **argv);
int cmd_train(int argc, char **argv);
int cmd_bench_train(int argc, char **argv);

/* Options several commands share. */
/* The upcycle options, filling `p` (upcycle.c; used by upcycle and bench upcycle). */
#define UPCYCLE_OPTIONS(p)                                                        \
  OPT_U32("--experts", &(p)->num_experts),                                        \
  OPT_U32("--top-k", &(p)->top_k),                                                \
  OPT_ENUM("--method", &(p)->method, method),                                     \
  OPT_DOUBLE("--ratio", &(p)->ratio),                                             \
  OPT_FLAG("--shared-indices", &(p)->shared_indices),                             \
  OPT_DOUBLE("--noise-std", &(p)->noise_std),                                     \
  OPT_U32("--granularity", &(p)->granularity),                                    \
  OPT_ENUM("--granular-scaling", &(p)->granular_scaling, granular_scaling),       \
  OPT_ENUM("--partition-select", &(p)->partition_select, partition_select),       \
  OPT_FLAG("--disjoint", &(p)->partition_disjoint),                               \
  OPT_SET("--no-partition-scale", &(p)->partition_scale, 0),                      \
  OPT_STRING("--layers", &(p)->layers),                                           \
  OPT_ENUM("--router-init", &(p)->router_init, router_init),                      \
  OPT_DOUBLE("--router-std", &(p)->router_std),                                   \
  OPT_FLAG("--shared-expert", &(p)->shared_expert),                               \
  OPT_ENUM("--routing", &(p)->routing, routing),                                  \
  OPT_ENUM("--format", &(p)->format, format),                                     \
  OPT_ENUM("--dtype", &(p)->dtype, dtype),                                        \
  OPT_DOUBLE("--aux-loss-coef", &(p)->aux_loss_coef),                             \
  OPT_U64("--max-shard-size", &(p)->max_shard_bytes),                             \
  OPT_U32("--threads", &(p)->threads),                                            \
  OPT_U64("--seed", &(p)->seed),                                                  \
  OPT_FLAG("--force", &(p)->force),                                               \
  OPT_STRING("--calibration", &(p)->calibration_path),                            \
  OPT_FLAG("--ids", &(p)->calibration_ids),                                       \
  OPT_U64("--calibration-tokens", &(p)->calibration_tokens),                      \
  OPT_U32("--calibration-samples", &(p)->calibration_samples),                    \
  OPT_DOUBLE("--fire-quantile", &(p)->fire_quantile),                             \
  OPT_STRING("--stats", &(p)->stats_path),                                        \
  OPT_STRING("--save-stats", &(p)->save_stats_path),                              \
  OPT_ENUM("--importance", &(p)->importance, importance),                         \
  OPT_U32("--shared-from-frequent", &(p)->shared_from_frequent),                  \
  OPT_ENUM("--drop-select", &(p)->drop_select, drop_select),                      \
  OPT_STRING("--router-prompts", &(p)->router_prompts_path),                      \
  OPT_STRING("--router-negative-prompts", &(p)->router_negative_prompts_path),    \
  OPT_DOUBLE("--router-spread", &(p)->router_spread),                             \
  OPT_FLAG("--calibrated-scale", &(p)->calibrated_scale)
/* After parsing UPCYCLE_OPTIONS: --router-prompts with the default router init means prompts. */
void upcycle_options_finish(moe_upcycle_params *p);

/* A runtime and a model: the options of eval, generate and bench decode. */
typedef struct model_flags {
  uint32_t threads;
  moe_dtype weight_dtype;
  int32_t json;
  /* Non-NULL: the model is a dense one, upcycled in memory with these. */
  const moe_upcycle_params *upcycle;
} model_flags;
#define MODEL_OPTIONS(f)                                     \
  OPT_U32("--threads", &(f)->threads),                      \
  OPT_ENUM("--dtype", &(f)->weight_dtype, dtype),            \
  OPT_FLAG("--json", &(f)->json)
/* Sampling: the options of generate and bench decode. */
#define GENERATE_OPTIONS(gp, prompt)                                     \
  OPT_STRING("--prompt", (prompt)),                                      \
  OPT_U32("--max-new-tokens", &(gp)->max_new_tokens),                    \
  OPT_U32("--tokens", &(gp)->max_new_tokens),                            \
  OPT_FLOAT("--temperature", &(gp)->temperature),                        \
  OPT_U32("--top-k", &(gp)->top_k),                                      \
  OPT_FLOAT("--top-p", &(gp)->top_p),                                    \
  OPT_U64("--seed", &(gp)->seed),                                        \
  OPT_FLAG("--chat", &(gp)->chat)
/* Creates the runtime and loads the model at `path`; prints the error and
 * returns 0 on failure. */
int open_model(const char *path, const model_flags *f, moe_runtime **rt, moe_model **model);

/* A runtime and a layer shape: the options of topology and bench moe. */
typedef struct layer_flags {
  moe_layer_config config;
  uint32_t threads;
  const char *synthetic;
  const char *xml;
} layer_flags;
#define LAYER_OPTIONS(f)                                                                  \
  OPT_U32("--hidden", &(f)->config.hidden_size),                                          \
  OPT_U32("--ffn", &(f)->config.moe_intermediate_size),                                   \
  OPT_U32("--experts", &(f)->config.num_experts),                                         \
  OPT_U32("--top-k", &(f)->config.top_k),                                                 \
  OPT_U32("--shared-ffn", &(f)->config.shared_expert_intermediate_size),                  \
  OPT_U32("--threads", &(f)->threads),                                                    \
  OPT_ENUM("--placement", &(f)->config.placement, placement),                             \
  OPT_ENUM("--routing", &(f)->config.routing, routing),                                   \
  OPT_FLOAT("--capacity-factor", &(f)->config.capacity_factor),                           \
  OPT_FLAG("--expert-choice", &(f)->config.expert_choice),                                \
  OPT_ENUM("--dtype", &(f)->config.storage, dtype),                                       \
  OPT_STRING("--synthetic", &(f)->synthetic),                                             \
  OPT_STRING("--xml", &(f)->xml)
/* Defaults of layer_flags (config from moe_layer_config_init). */
void layer_flags_init(layer_flags *f);
/* The runtime the flags describe (threads, placement, topology). */
moe_status layer_runtime(const layer_flags *f, moe_runtime **rt);

#endif
