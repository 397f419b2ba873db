/*
 * The header's promises, checked from C:
 *  - a client built against an earlier header passes the struct sizes of
 *    earlier versions (the 0.1.0 layouts below): accepted, defaults used for
 *    what it lacks, results written only up to its size;
 *  - sizes below a struct's first version are refused; larger sizes are taken
 *    when the unknown bytes are zero (params) and zeroed (results);
 *  - the output-buffer rule (ask, too small, exact);
 *  - the name tables;
 *  - moe_last_error() is left alone by successful calls.
 * usage: abi_rules TINY_MODEL_DIR WORK_DIR
 */
#include "moeupcycle.h"

#include <math.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int failures = 0;
#define EXPECT(cond, ...)                                        \
  do {                                                           \
    if (!(cond)) {                                               \
      fprintf(stderr, "FAIL %s:%d: ", __FILE__, __LINE__);       \
      fprintf(stderr, __VA_ARGS__);                              \
      fprintf(stderr, " [last error: %s]\n", moe_last_error());  \
      failures++;                                                \
    }                                                            \
  } while (0)

/* ---- the 0.1.0 layouts of the structs that 0.2.0 appended fields to ---- */

typedef struct trainer_params_0_1 {
  size_t struct_size;
  uint32_t seq_len, batch, steps, warmup;
  float lr, min_lr;
  moe_lr_schedule schedule;
  float beta1, beta2, eps, weight_decay, clip, aux_loss_coef, z_loss_coef;
  moe_train_only train_only;
  uint64_t seed;
  double eval_fraction;
  uint32_t eval_windows;
} trainer_params_0_1;

typedef struct train_stats_0_1 {
  size_t struct_size;
  uint64_t step;
  double loss, balance, z_loss, lr, grad_norm;
  uint64_t tokens;
  double seconds, tokens_per_second, max_expert_load;
} train_stats_0_1;

/* ---- the 0.1.0 layout of the model parameters, which 0.6.0 appended upcycle to ---- */

typedef struct model_params_0_1 {
  size_t struct_size;
  moe_dtype weight_dtype;
  moe_placement placement;
  uint32_t max_context;
} model_params_0_1;
_Static_assert(offsetof(moe_model_params, upcycle) == sizeof(model_params_0_1), "model params 0.1");

/* ---- the 0.1.0 layout of the evaluation parameters, which 0.8.0 appended held_out to ---- */

typedef struct eval_params_0_1 {
  size_t struct_size;
  uint32_t seq_len;
  uint64_t max_tokens;
  moe_progress_fn progress;
  void *user_data;
} eval_params_0_1;
_Static_assert(offsetof(moe_eval_params, held_out) == sizeof(eval_params_0_1), "eval params 0.1");

/* ---- the 0.2.0 (and 0.3.0) layout of the struct that 0.5.0 appended a field to ---- */

typedef struct train_stats_0_2 {
  train_stats_0_1 first;
  int32_t skipped;
} train_stats_0_2;

typedef struct upcycle_result_0_1 {
  size_t struct_size;
  uint64_t bytes_written, tensors_written;
  uint32_t shards, moe_layers;
  double seconds;
  uint64_t peak_rss_bytes;
} upcycle_result_0_1;

/* ---- the 0.1.0 (and 0.2.0) layout of the struct that 0.3.0 appended fields to ---- */

typedef struct runtime_info_0_1 {
  size_t struct_size;
  uint32_t numa_nodes, cores, pus, workers;
  int32_t is_this_system, workers_pinned, memory_binding, blas_threads;
  char blas_core[32];
} runtime_info_0_1;

typedef struct runtime_info_0_3 {
  runtime_info_0_1 first;
  char kernel_path[16];
  int32_t kernel_forced, kernel_vector_floats;
} runtime_info_0_3;

/* ---- the 0.1.0 layout of the layer configuration, which 0.5.0 appended compute to ---- */

typedef struct layer_config_0_1 {
  size_t struct_size;
  uint32_t hidden_size, moe_intermediate_size, num_experts, top_k;
  moe_routing routing;
  float capacity_factor;
  int32_t expert_choice;
  uint32_t shared_expert_intermediate_size;
  moe_dtype storage;
  moe_placement placement;
  float jitter;
  uint64_t seed;
  float aux_loss_coef, z_loss_coef;
} layer_config_0_1;

/* Fields appended later start at or after the earlier version's sizeof. */
_Static_assert(offsetof(moe_runtime_info, kernel_bf16) == sizeof(runtime_info_0_3), "runtime info 0.3");
_Static_assert(offsetof(moe_layer_config, compute) == sizeof(layer_config_0_1), "layer config 0.1");
_Static_assert(offsetof(moe_layer_config, z_loss_coef) == offsetof(layer_config_0_1, z_loss_coef), "prefix");
_Static_assert(offsetof(moe_runtime_info, kernel_path) == sizeof(runtime_info_0_1), "runtime info 0.1");
_Static_assert(offsetof(moe_trainer_params, on_nonfinite) == sizeof(trainer_params_0_1), "trainer params 0.1");
_Static_assert(offsetof(moe_trainer_params, eval_windows) == offsetof(trainer_params_0_1, eval_windows), "prefix");
_Static_assert(offsetof(moe_train_stats, skipped) == sizeof(train_stats_0_1), "train stats 0.1");
_Static_assert(offsetof(moe_train_stats, max_expert_load) == offsetof(train_stats_0_1, max_expert_load), "prefix");
_Static_assert(offsetof(moe_train_stats, model_flops) == sizeof(train_stats_0_2), "train stats 0.2");
_Static_assert(offsetof(moe_train_stats, skipped) == offsetof(train_stats_0_2, skipped), "prefix");
_Static_assert(offsetof(moe_upcycle_result, stale_bytes_removed) == sizeof(upcycle_result_0_1), "upcycle 0.1");

/* ---- the 0.2.0 layout of the upcycle result, which 0.6.0 appended the router_* fields to ---- */

typedef struct upcycle_result_0_2 {
  upcycle_result_0_1 first;
  uint64_t stale_bytes_removed;
  uint32_t stale_removed;
} upcycle_result_0_2;
_Static_assert(offsetof(moe_upcycle_result, router_max_similarity) == sizeof(upcycle_result_0_2), "upcycle 0.2");

/* ---- the 0.2.0 layout of the upcycle parameters, which 0.7.0 appended the calibration fields to ---- */

typedef struct upcycle_params_0_2 {
  size_t struct_size;
  uint32_t num_experts, top_k;
  moe_method method;
  double ratio;
  int32_t shared_indices;
  double noise_std;
  uint32_t granularity;
  moe_granular_scaling granular_scaling;
  moe_partition_select partition_select;
  int32_t partition_disjoint, partition_scale;
  const char *layers;
  moe_router_init router_init;
  double router_std;
  int32_t shared_expert;
  moe_routing routing;
  moe_format format;
  moe_dtype dtype;
  uint64_t seed;
  int32_t force;
  uint64_t max_shard_bytes;
  uint32_t threads;
  double aux_loss_coef;
  moe_progress_fn progress;
  void *user_data;
} upcycle_params_0_2;
_Static_assert(offsetof(moe_upcycle_params, calibration_path) == sizeof(upcycle_params_0_2), "upcycle params 0.2");
_Static_assert(offsetof(moe_upcycle_params, user_data) == offsetof(upcycle_params_0_2, user_data), "prefix");

/* A struct followed by bytes the library must never touch. */
#define CANARY 0xA5
typedef struct guarded_bytes { unsigned char bytes[512]; } guarded_bytes;

static void fill(guarded_bytes *g) { memset(g->bytes, CANARY, sizeof g->bytes); }

static int untouched_from(const guarded_bytes *g, size_t from) {
  for (size_t i = from; i < sizeof g->bytes; i++)
    if (g->bytes[i] != CANARY) return 0;
  return 1;
}

static void set_size(guarded_bytes *g, size_t size) { memcpy(g->bytes, &size, sizeof size); }

/* ------------------------------------------------------------------------ */

static void earlier_versions(const char *tiny, const char *work) {
  /* _init with the 0.1.0 size: defaults up to that size, nothing beyond. */
  guarded_bytes g;
  fill(&g);
  EXPECT(moe_trainer_params_init((moe_trainer_params *)g.bytes, sizeof(trainer_params_0_1)) == MOE_OK,
         "trainer params init with the 0.1.0 size");
  trainer_params_0_1 old;
  memcpy(&old, g.bytes, sizeof old);
  EXPECT(old.struct_size == sizeof old && old.seq_len == 256 && old.batch == 4 && old.eval_windows == 8,
         "0.1.0 trainer params got defaults (size %zu, seq_len %u, batch %u)", old.struct_size, old.seq_len, old.batch);
  EXPECT(untouched_from(&g, sizeof old), "trainer params init wrote beyond the 0.1.0 size");

  moe_runtime_params rp;
  EXPECT(moe_runtime_params_init(&rp, sizeof rp) == MOE_OK, "runtime params init");
  rp.threads = 2;
  moe_runtime *rt = NULL;
  EXPECT(moe_runtime_create(&rt, &rp) == MOE_OK, "runtime");
  moe_model_params mp;
  moe_model_params_init(&mp, sizeof mp);
  mp.weight_dtype = MOE_DTYPE_F32;
  moe_model *model = NULL;
  EXPECT(moe_model_load(&model, rt, tiny, &mp) == MOE_OK, "load the tiny model");
  if (!model) return;

  /* A trainer made from 0.1.0 params (on_nonfinite, which it lacks, defaults). */
  old.seq_len = 8;
  old.batch = 2;
  old.steps = 3;
  old.eval_fraction = 0;
  int32_t tokens[400];
  for (int i = 0; i < 400; i++) tokens[i] = (i * 7 + 3) % 64;
  moe_trainer *trainer = NULL;
  EXPECT(moe_trainer_create(&trainer, model, tokens, 400, (const moe_trainer_params *)&old) == MOE_OK,
         "trainer from 0.1.0 params");
  /* A 0.1.0 result struct: written up to its size only. */
  fill(&g);
  set_size(&g, sizeof(train_stats_0_1));
  EXPECT(trainer && moe_trainer_step((moe_train_stats *)g.bytes, trainer) == MOE_OK, "step into 0.1.0 stats");
  train_stats_0_1 stats;
  memcpy(&stats, g.bytes, sizeof stats);
  EXPECT(stats.struct_size == sizeof stats && stats.step == 1 && isfinite(stats.loss) && stats.loss > 0,
         "0.1.0 stats filled (step %llu, loss %g)", (unsigned long long)stats.step, stats.loss);
  EXPECT(untouched_from(&g, sizeof stats), "trainer step wrote beyond the 0.1.0 stats");
  /* A 0.2.0 result struct (up to skipped): no model_flops written. */
  fill(&g);
  set_size(&g, sizeof(train_stats_0_2));
  EXPECT(trainer && moe_trainer_step((moe_train_stats *)g.bytes, trainer) == MOE_OK, "step into 0.2.0 stats");
  train_stats_0_2 stats2;
  memcpy(&stats2, g.bytes, sizeof stats2);
  EXPECT(stats2.first.struct_size == sizeof stats2 && stats2.first.step == 2 && stats2.skipped == 0,
         "0.2.0 stats filled (step %llu)", (unsigned long long)stats2.first.step);
  EXPECT(untouched_from(&g, sizeof stats2), "trainer step wrote beyond the 0.2.0 stats");
  /* A result struct larger than the library's: the unknown bytes are zeroed, nothing beyond. */
  fill(&g);
  size_t bigger = sizeof(moe_train_stats) + 24;
  set_size(&g, bigger);
  EXPECT(moe_trainer_step((moe_train_stats *)g.bytes, trainer) == MOE_OK, "step into a larger stats struct");
  int zeroed = 1;
  for (size_t i = sizeof(moe_train_stats); i < bigger; i++) zeroed &= g.bytes[i] == 0;
  EXPECT(zeroed && untouched_from(&g, bigger), "unknown result bytes zeroed, nothing beyond");
  moe_train_stats full;
  memcpy(&full, g.bytes, sizeof full);
  EXPECT(full.step == 3 && full.model_flops > 0 && full.tokens == 16, "0.4.0 stats filled (step %llu, model_flops %g)",
         (unsigned long long)full.step, full.model_flops);
  moe_trainer_free(trainer);

  /* Evaluation from 0.1.0 params: all the data (held_out, which they lack, is 0). */
  fill(&g);
  EXPECT(moe_eval_params_init((moe_eval_params *)g.bytes, sizeof(eval_params_0_1)) == MOE_OK,
         "eval params init with the 0.1.0 size");
  EXPECT(untouched_from(&g, sizeof(eval_params_0_1)), "eval params init wrote beyond the 0.1.0 size");
  eval_params_0_1 old_eval;
  memcpy(&old_eval, g.bytes, sizeof old_eval);
  old_eval.seq_len = 16;
  moe_eval_params new_eval;
  moe_eval_params_init(&new_eval, sizeof new_eval);
  new_eval.seq_len = 16;
  moe_eval_result all, held;
  all.struct_size = held.struct_size = sizeof all;
  EXPECT(moe_model_eval_tokens(&all, model, tokens, 400, (const moe_eval_params *)&old_eval) == MOE_OK,
         "eval from 0.1.0 params");
  new_eval.held_out = 0.25;
  EXPECT(moe_model_eval_tokens(&held, model, tokens, 400, &new_eval) == MOE_OK, "eval of the held-out part");
  EXPECT(all.tokens_scored == 400 - 25 && held.tokens_scored == 100 - 7,
         "0.1.0 params evaluate all 400 tokens (%llu scored), held_out 0.25 the last 100 (%llu scored)",
         (unsigned long long)all.tokens_scored, (unsigned long long)held.tokens_scored);

  /* Params larger than the library's: zero tail accepted, a set byte refused. */
  fill(&g);
  memset(g.bytes, 0, sizeof(moe_trainer_params) + 16);
  EXPECT(moe_trainer_params_init((moe_trainer_params *)g.bytes, sizeof(moe_trainer_params) + 16) == MOE_OK,
         "init of a larger params struct");
  moe_trainer_params *big = (moe_trainer_params *)g.bytes;
  big->seq_len = 8; big->batch = 2; big->steps = 3; big->eval_fraction = 0;
  trainer = NULL;
  EXPECT(moe_trainer_create(&trainer, model, tokens, 400, big) == MOE_OK, "larger params with a zero tail");
  moe_trainer_free(trainer);
  g.bytes[sizeof(moe_trainer_params) + 3] = 1;
  trainer = NULL;
  EXPECT(moe_trainer_create(&trainer, model, tokens, 400, big) == MOE_ERR_UNSUPPORTED && trainer == NULL,
         "a set byte beyond the library's params is refused");
  EXPECT(strstr(moe_last_error(), "newer") != NULL, "the message says why");

  /* Upcycling into a 0.1.0 result. */
  char out[4096];
  snprintf(out, sizeof out, "%s/moe", work);
  moe_upcycle_params up;
  moe_upcycle_params_init(&up, sizeof up);
  up.num_experts = 4;
  up.top_k = 2;
  fill(&g);
  set_size(&g, sizeof(upcycle_result_0_1));
  EXPECT(moe_upcycle((moe_upcycle_result *)g.bytes, tiny, out, &up) == MOE_OK, "upcycle into a 0.1.0 result");
  upcycle_result_0_1 ur;
  memcpy(&ur, g.bytes, sizeof ur);
  EXPECT(ur.struct_size == sizeof ur && ur.bytes_written > 0 && ur.moe_layers == 2, "0.1.0 upcycle result filled");
  EXPECT(untouched_from(&g, sizeof ur), "upcycle wrote beyond the 0.1.0 result");

  /* Upcycling with 0.2.0 params: the calibration fields, which they lack, default (none). */
  snprintf(out, sizeof out, "%s/moe-0.2", work);
  fill(&g);
  EXPECT(moe_upcycle_params_init((moe_upcycle_params *)g.bytes, sizeof(upcycle_params_0_2)) == MOE_OK,
         "upcycle params init with the 0.2.0 size");
  EXPECT(untouched_from(&g, sizeof(upcycle_params_0_2)), "upcycle params init wrote beyond the 0.2.0 size");
  upcycle_params_0_2 old_up;
  memcpy(&old_up, g.bytes, sizeof old_up);
  EXPECT(old_up.struct_size == sizeof old_up && old_up.num_experts == 8 && old_up.top_k == 2,
         "0.2.0 upcycle params got defaults");
  old_up.num_experts = 2;
  old_up.top_k = 1;
  old_up.method = MOE_METHOD_PARTITION;
  EXPECT(moe_upcycle(NULL, tiny, out, (const moe_upcycle_params *)&old_up) == MOE_OK, "upcycle with 0.2.0 params");

  /* Runtime info in its 0.1.0 layout: filled up to that size, nothing beyond. */
  fill(&g);
  set_size(&g, sizeof(runtime_info_0_1));
  EXPECT(moe_runtime_get_info((moe_runtime_info *)g.bytes, rt) == MOE_OK, "runtime info into the 0.1.0 layout");
  runtime_info_0_1 ri;
  memcpy(&ri, g.bytes, sizeof ri);
  EXPECT(ri.struct_size == sizeof ri && ri.workers == 2 && ri.blas_core[0] != 0, "0.1.0 runtime info filled");
  EXPECT(untouched_from(&g, sizeof ri), "runtime info wrote beyond the 0.1.0 layout");
  moe_runtime_info info;
  info.struct_size = sizeof info;
  EXPECT(moe_runtime_get_info(&info, rt) == MOE_OK, "runtime info");
  EXPECT(memcmp(info.blas_core, ri.blas_core, sizeof ri.blas_core) == 0, "same fields in both layouts");
  EXPECT(strcmp(info.kernel_path, "avx512") == 0 || strcmp(info.kernel_path, "avx2") == 0 ||
             strcmp(info.kernel_path, "portable") == 0 || strcmp(info.kernel_path, "openblas") == 0,
         "kernel path '%s'", info.kernel_path);
  EXPECT(info.kernel_vector_floats == (strcmp(info.kernel_path, "avx512") == 0 ? 16
                                       : strcmp(info.kernel_path, "avx2") == 0 ? 8
                                       : strcmp(info.kernel_path, "portable") == 0 ? 4 : 0),
         "vector floats %d for %s", info.kernel_vector_floats, info.kernel_path);

  /* The machine's measured peak: positive f32; bf16 positive where the CPU runs AVX512-BF16 (or AMX), else
   * unsupported with a message; bad arguments refused. */
  double peak = -1;
  EXPECT(moe_runtime_measure_peak(rt, MOE_DTYPE_F32, 0.02, &peak) == MOE_OK && peak > 0.5 && peak < 1e5,
         "f32 peak %g GFLOP/s", peak);
  EXPECT(strcmp(info.kernel_bf16, "amx_bf16") == 0 || strcmp(info.kernel_bf16, "avx512_bf16") == 0 ||
             strcmp(info.kernel_bf16, "fallback") == 0,
         "bf16 kernels '%s'", info.kernel_bf16);
  peak = -1;
  moe_status bf16_peak = moe_runtime_measure_peak(rt, MOE_DTYPE_BF16, 0.02, &peak);
  EXPECT((bf16_peak == MOE_OK && peak > 0.5 && peak < 1e5) ||
             (bf16_peak == MOE_ERR_UNSUPPORTED && peak == -1 && strstr(moe_last_error(), "AVX512-BF16") != NULL),
         "bf16 peak: status %d, %g GFLOP/s", bf16_peak, peak);
  if (strcmp(info.kernel_bf16, "fallback") != 0) EXPECT(bf16_peak == MOE_OK, "bf16 kernels run but no bf16 peak");
  EXPECT(moe_runtime_measure_peak(rt, (moe_dtype)7, 0.02, &peak) == MOE_ERR_INVALID_ARGUMENT, "dtype 7");
  EXPECT(moe_runtime_measure_peak(rt, MOE_DTYPE_F32, 0, &peak) == MOE_ERR_INVALID_ARGUMENT &&
             strstr(moe_last_error(), "seconds") != NULL, "seconds 0");
  EXPECT(moe_runtime_measure_peak(rt, MOE_DTYPE_F32, 1e9, &peak) == MOE_ERR_INVALID_ARGUMENT, "seconds 1e9");
  EXPECT(moe_runtime_measure_peak(rt, MOE_DTYPE_F32, 0.02, NULL) == MOE_ERR_NULL_POINTER, "gflops NULL");
  EXPECT(moe_runtime_measure_peak(NULL, MOE_DTYPE_F32, 0.02, &peak) == MOE_ERR_NULL_POINTER, "runtime NULL");

  moe_model_free(model);
  moe_runtime_free(rt);
}

/* Every struct: one byte below its first version is refused, and nothing is written. */
static void below_first_version(void) {
  guarded_bytes g;
#define PARAMS_TOO_SMALL(type, first)                                                             \
  fill(&g);                                                                                       \
  EXPECT(type##_init((type *)g.bytes, (first) - 1) == MOE_ERR_INVALID_ARGUMENT, #type " below first"); \
  EXPECT(strstr(moe_last_error(), "struct_size") != NULL, #type " message");                     \
  EXPECT(untouched_from(&g, 0), #type " init wrote on error");                                    \
  fill(&g);                                                                                       \
  EXPECT(type##_init((type *)g.bytes, first) == MOE_OK, #type " at its first version");           \
  EXPECT(untouched_from(&g, first), #type " init wrote beyond its size")
  PARAMS_TOO_SMALL(moe_upcycle_params, sizeof(upcycle_params_0_2));
  PARAMS_TOO_SMALL(moe_runtime_params, sizeof(moe_runtime_params));
  PARAMS_TOO_SMALL(moe_layer_config, sizeof(layer_config_0_1));
  PARAMS_TOO_SMALL(moe_model_params, sizeof(model_params_0_1));
  PARAMS_TOO_SMALL(moe_eval_params, sizeof(eval_params_0_1));
  PARAMS_TOO_SMALL(moe_generate_params, sizeof(moe_generate_params));
  PARAMS_TOO_SMALL(moe_trainer_params, sizeof(trainer_params_0_1));
#undef PARAMS_TOO_SMALL
  EXPECT(moe_trainer_params_init(NULL, sizeof(moe_trainer_params)) == MOE_ERR_NULL_POINTER, "init NULL");

  /* A result struct one byte short of its first version. */
  moe_runtime *rt = NULL;
  EXPECT(moe_runtime_create(&rt, NULL) == MOE_OK, "runtime with NULL params (defaults)");
  fill(&g);
  set_size(&g, sizeof(runtime_info_0_1) - 1);
  EXPECT(moe_runtime_get_info((moe_runtime_info *)g.bytes, rt) == MOE_ERR_INVALID_ARGUMENT, "runtime info too small");
  EXPECT(untouched_from(&g, sizeof(size_t)), "runtime info written on error");
  fill(&g);
  set_size(&g, sizeof(moe_checkpoint_info) - 1);
  EXPECT(moe_checkpoint_inspect((moe_checkpoint_info *)g.bytes, "/nonexistent") == MOE_ERR_INVALID_ARGUMENT,
         "checkpoint info too small is refused before the path is looked at");
  moe_runtime_free(rt);
}

/* The output-buffer rule on a text, a float array and a count array. */
static void output_buffers(const char *tiny) {
  moe_runtime *rt = NULL;
  moe_runtime_params rp;
  moe_runtime_params_init(&rp, sizeof rp);
  rp.threads = 1;
  EXPECT(moe_runtime_create(&rt, &rp) == MOE_OK, "runtime");
  size_t needed = 0;
  EXPECT(moe_runtime_describe(rt, NULL, MOE_TEXT_JSON, NULL, 0, &needed) == MOE_OK && needed > 2, "describe: ask");
  char *text = malloc(needed + 8);
  memset(text, CANARY, needed + 8);
  size_t again = 0;
  EXPECT(moe_runtime_describe(rt, NULL, MOE_TEXT_JSON, text, needed - 1, &again) == MOE_ERR_BUFFER_TOO_SMALL &&
         again == needed, "describe: one byte short");
  EXPECT((unsigned char)text[0] == CANARY, "describe wrote into a too-small buffer");
  EXPECT(moe_runtime_describe(rt, NULL, MOE_TEXT_JSON, text, needed, &again) == MOE_OK && text[needed - 1] == 0 &&
         strlen(text) == needed - 1 && (unsigned char)text[needed] == CANARY, "describe: exact");
  EXPECT(moe_runtime_describe(rt, NULL, MOE_TEXT_JSON, NULL, 5, &again) == MOE_ERR_NULL_POINTER, "NULL with capacity");
  free(text);

  moe_model *model = NULL;
  EXPECT(moe_model_load(&model, rt, tiny, NULL) == MOE_OK, "load");
  if (model) {
    int32_t ids[3] = { 1, 5, 9 };
    EXPECT(moe_model_logits(model, ids, 3, NULL, 0, &needed) == MOE_OK && needed == 3 * 64, "logits: ask (%zu)", needed);
    float *logits = malloc((needed + 4) * sizeof *logits);
    for (size_t i = 0; i < needed + 4; i++) logits[i] = -7.0f;
    EXPECT(moe_model_logits(model, ids, 3, logits, needed - 1, NULL) == MOE_ERR_BUFFER_TOO_SMALL &&
           logits[0] == -7.0f, "logits: too small");
    EXPECT(moe_model_logits(model, ids, 3, logits, needed, NULL) == MOE_OK && logits[0] != -7.0f &&
           logits[needed] == -7.0f, "logits: exact");
    free(logits);
    uint64_t counts[4] = { 7, 7, 7, 7 };
    EXPECT(moe_model_router_stats(model, 0, NULL, 0, &needed) == MOE_OK && needed == 0, "router stats of a dense layer");
    EXPECT(moe_model_router_stats(model, 0, counts, 4, &needed) == MOE_OK && counts[0] == 7, "dense layer: nothing to write");
    EXPECT(moe_model_router_stats(model, 9, counts, 4, &needed) == MOE_ERR_INVALID_ARGUMENT, "router stats: bad layer");
    moe_model_free(model);
  }

  moe_layer_config c;
  moe_layer_config_init(&c, sizeof c);
  EXPECT(c.compute == MOE_DTYPE_F32, "compute defaults to f32");
  c.compute = MOE_DTYPE_F16;
  c.hidden_size = 8;
  c.moe_intermediate_size = 16;
  c.num_experts = 4;
  c.top_k = 2;
  {
    moe_layer *refused = NULL;
    EXPECT(moe_layer_create(&refused, rt, &c) == MOE_ERR_UNSUPPORTED && refused == NULL &&
               strstr(moe_last_error(), "compute") != NULL, "layer with f16 compute refused");
  }
  c.compute = MOE_DTYPE_F32;
  moe_layer *layer = NULL;
  EXPECT(moe_layer_create(&layer, rt, &c) == MOE_OK, "layer");
  if (layer) {
    EXPECT(moe_layer_get_weight(layer, MOE_WEIGHT_GATE, MOE_ALL_EXPERTS, NULL, 0, &needed) == MOE_OK &&
           needed == 4 * 16 * 8, "weight: ask");
    EXPECT(moe_layer_get_weight(layer, MOE_WEIGHT_GATE, 1, NULL, 0, &needed) == MOE_OK && needed == 16 * 8,
           "one expert's weight: ask");
    moe_layer_stats s;
    memset(&s, 0, sizeof s);
    s.struct_size = sizeof s;
    uint64_t counts[4] = { 9, 9, 9, 9 };
    EXPECT(moe_layer_get_stats(&s, layer, counts, 3, &needed) == MOE_ERR_BUFFER_TOO_SMALL && needed == 4 &&
           counts[0] == 9 && s.tokens == 0, "stats: counts too small");
    EXPECT(moe_layer_get_stats(&s, layer, NULL, 0, &needed) == MOE_OK && needed == 4, "stats alone");
    moe_layer_free(layer);
  }
  moe_runtime_free(rt);
}

/* Every enum's names: values 0.. until NULL, each round trip, aliases, unknown names. */
#define CHECK_NAMES(kind, type, first_default, count_expected)                                      \
  do {                                                                                              \
    int n = 0;                                                                                      \
    for (int v = 0; v < 64 && moe_##kind##_name((type)v); v++) {                                    \
      const char *name = moe_##kind##_name((type)v);                                                \
      type back = (type)99;                                                                         \
      EXPECT(moe_##kind##_from_name(&back, name) == MOE_OK && (int)back == v, #kind " %s", name);   \
      char upper[64];                                                                               \
      size_t i = 0;                                                                                 \
      for (; name[i] && i < sizeof upper - 1; i++)                                                  \
        upper[i] = (char)(name[i] == '-' ? '_' : (name[i] >= 'a' && name[i] <= 'z' ? name[i] - 32 : name[i])); \
      upper[i] = 0;                                                                                 \
      back = (type)99;                                                                              \
      EXPECT(moe_##kind##_from_name(&back, upper) == MOE_OK && (int)back == v, #kind " %s", upper); \
      n++;                                                                                          \
    }                                                                                               \
    EXPECT(n == (count_expected), #kind ": %d names", n);                                           \
    type none;                                                                                      \
    EXPECT(moe_##kind##_from_name(&none, "no-such-name") == MOE_ERR_INVALID_ARGUMENT &&             \
           strstr(moe_last_error(), moe_##kind##_name((type)0)) != NULL, #kind " unknown name");    \
    EXPECT(moe_##kind##_from_name(NULL, "x") == MOE_ERR_NULL_POINTER, #kind " NULL out");           \
    if (first_default) EXPECT(strcmp(moe_##kind##_name((type)-1), "default") == 0, #kind " default"); \
    else EXPECT(moe_##kind##_name((type)-1) == NULL, #kind " -1");                                  \
  } while (0)

static void names(void) {
  CHECK_NAMES(dtype, moe_dtype, 1, 6);
  CHECK_NAMES(method, moe_method, 0, 5);
  CHECK_NAMES(router_init, moe_router_init, 0, 5);
  CHECK_NAMES(routing, moe_routing, 0, 5);
  CHECK_NAMES(format, moe_format, 0, 2);
  CHECK_NAMES(partition_select, moe_partition_select, 0, 5);
  CHECK_NAMES(granular_scaling, moe_granular_scaling, 0, 3);
  CHECK_NAMES(importance, moe_importance, 0, 3);
  CHECK_NAMES(drop_select, moe_drop_select, 0, 2);
  CHECK_NAMES(placement, moe_placement, 1, 4);
  CHECK_NAMES(text_format, moe_text_format, 0, 2);
  CHECK_NAMES(weight, moe_weight, 0, 8);
  CHECK_NAMES(stop_reason, moe_stop_reason, 0, 3);
  CHECK_NAMES(train_only, moe_train_only, 0, 3);
  CHECK_NAMES(lr_schedule, moe_lr_schedule, 0, 2);
  CHECK_NAMES(nonfinite, moe_nonfinite, 0, 2);
  /* The names the header lists, at the values it gives. */
  EXPECT(strcmp(moe_routing_name(MOE_ROUTING_SIGMOID_TOPK_RENORM), "sigmoid-topk-renorm") == 0, "routing name");
  EXPECT(strcmp(moe_format_name(MOE_FORMAT_QWEN2_MOE), "qwen2-moe") == 0, "format name");
  EXPECT(strcmp(moe_partition_select_name(MOE_PARTITION_CLUSTER), "cluster") == 0, "partition name");
  EXPECT(strcmp(moe_router_init_name(MOE_ROUTER_INIT_KMEANS), "kmeans") == 0, "router init name");
  EXPECT(strcmp(moe_importance_name(MOE_IMPORTANCE_FREQ), "freq") == 0, "importance name");
  EXPECT(strcmp(moe_drop_select_name(MOE_DROP_SELECT_LEAST_IMPORTANT), "least-important") == 0, "drop select name");
  EXPECT(strcmp(moe_dtype_name(MOE_DTYPE_Q4_1), "q4_1") == 0, "dtype name");
  EXPECT(strcmp(moe_weight_name(MOE_WEIGHT_SHARED_EXPERT_GATE), "shared-expert-gate") == 0, "weight name");
  moe_dtype d = MOE_DTYPE_F32;
  EXPECT(moe_dtype_from_name(&d, "keep") == MOE_OK && d == MOE_DTYPE_DEFAULT, "keep = default");
  EXPECT(moe_dtype_from_name(&d, "BF16") == MOE_OK && d == MOE_DTYPE_BF16, "BF16");
}

static void last_error_kept(void) {
  moe_method m;
  EXPECT(moe_method_from_name(&m, "bogus") == MOE_ERR_INVALID_ARGUMENT, "a failing call");
  char before[512];
  snprintf(before, sizeof before, "%s", moe_last_error());
  EXPECT(moe_method_from_name(&m, "drop") == MOE_OK && m == MOE_METHOD_DROP, "a successful call");
  EXPECT(strcmp(before, moe_last_error()) == 0 && strstr(before, "bogus") != NULL,
         "a successful call changed moe_last_error");
  EXPECT(strcmp(moe_status_string(MOE_ERR_NUMERIC), "unknown status") != 0, "MOE_ERR_NUMERIC has a text");
}

int main(int argc, char **argv) {
  if (argc != 3) { fprintf(stderr, "usage: abi_rules TINY_MODEL_DIR WORK_DIR\n"); return 2; }
  earlier_versions(argv[1], argv[2]);
  below_first_version();
  output_buffers(argv[1]);
  names();
  last_error_kept();
  if (failures) { fprintf(stderr, "abi_rules: %d failures\n", failures); return 1; }
  puts("abi_rules: ok");
  return 0;
}
