/*
 * moeupcycle bench train: seconds and tokens/s of a training step of a dense
 * and an MoE model side by side.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"

/* Seconds per step of `model` on random ids: one warm-up step, then `steps`. */
static int time_steps(moe_model *model, uint32_t vocab, const moe_trainer_params *tp, uint32_t steps,
                      double *seconds, double *loss) {
  size_t count = (size_t)tp->seq_len * tp->batch * 4 + 1;
  int32_t *tokens = malloc(count * sizeof *tokens);
  if (!tokens) return 0;
  uint64_t state = 12345;
  for (size_t i = 0; i < count; i++) {
    state = state * 6364136223846793005ull + 1442695040888963407ull;
    tokens[i] = (int32_t)((state >> 33) % vocab);
  }
  moe_trainer *trainer = NULL;
  moe_status st = moe_trainer_create(&trainer, model, tokens, count, tp);
  free(tokens);
  if (st != MOE_OK) { fail(st); return 0; }
  moe_train_stats s;
  memset(&s, 0, sizeof s);
  s.struct_size = sizeof s;
  st = moe_trainer_step(&s, trainer);
  double total = 0;
  for (uint32_t i = 0; i < steps && st == MOE_OK; i++) {
    st = moe_trainer_step(&s, trainer);
    total += s.seconds;
  }
  moe_trainer_free(trainer);
  if (st != MOE_OK) { fail(st); return 0; }
  *seconds = total / steps;
  *loss = s.loss;
  return 1;
}

int cmd_bench_train(int argc, char **argv) {
  const char *paths[2] = { NULL, NULL };
  uint32_t threads = 0, steps = 3;
  int32_t json = 0;
  moe_trainer_params tp;
  moe_trainer_params_init(&tp, sizeof tp);
  tp.batch = 2;
  tp.seq_len = 256;
  tp.eval_fraction = 0;
  const cli_option options[] = {
    OPT_U32("--batch", &tp.batch),
    OPT_U32("--seq-len", &tp.seq_len),
    OPT_U32_IN("--steps", &steps, 1, 100000),
    OPT_U32("--threads", &threads),
    OPT_ENUM("--train-only", &tp.train_only, train_only),
    OPT_FLAG("--json", &json),
    OPT_END
  };
  int help = 0, n = 0;
  if (cli_parse(argc, argv, options, paths, 2, &n, &help)) return 2;
  if (help) { printf("usage: moeupcycle bench train DENSE MOE [--batch B] [--seq-len T] [--steps N] [--train-only W] [--json]\n"); return 0; }
  if (n < 2) return bad_usage("bench train needs DENSE and MOE models", NULL);
  model_flags mf = { threads, MOE_DTYPE_F32, 0 };
  moe_runtime_info rinfo;
  memset(&rinfo, 0, sizeof rinfo);
  rinfo.struct_size = sizeof rinfo;
  double seconds[2] = { 0, 0 }, loss[2] = { 0, 0 }, peak = 0;
  for (int m = 0; m < 2; m++) {
    moe_runtime *rt = NULL;
    moe_model *model = NULL;
    if (!open_model(paths[m], &mf, &rt, &model)) return 1;
    moe_runtime_get_info(&rinfo, rt);
    /* The machine's f32 multiply-add ceiling, measured in the same run. */
    moe_status st = m == 0 ? moe_runtime_measure_peak(rt, MOE_DTYPE_F32, 0.3, &peak) : MOE_OK;
    if (st != MOE_OK) { moe_model_free(model); moe_runtime_free(rt); return fail(st); }
    moe_model_info info;
    memset(&info, 0, sizeof info);
    info.struct_size = sizeof info;
    moe_model_get_info(&info, model);
    int ok = time_steps(model, info.vocab_size, &tp, steps, &seconds[m], &loss[m]);
    moe_model_free(model);
    moe_runtime_free(rt);
    if (!ok) return 1;
  }
  double tokens = (double)tp.batch * tp.seq_len;
  if (json) {
    printf("{\"dense\": ");
    json_string(stdout, paths[0]);
    printf(", \"moe\": ");
    json_string(stdout, paths[1]);
    printf(", \"threads\": %u, \"batch\": %u, \"seq_len\": %u, \"steps\": %u,"
           " \"dense_step_s\": %.4f, \"moe_step_s\": %.4f, \"dense_tokens_per_second\": %.2f,"
           " \"moe_tokens_per_second\": %.2f, \"moe_over_dense\": %.3f, \"peak_f32_gflops\": %.2f,"
           " \"kernel_path\": ",
           rinfo.workers, tp.batch, tp.seq_len, steps, seconds[0], seconds[1], tokens / seconds[0],
           tokens / seconds[1], seconds[1] / seconds[0], peak);
    json_string(stdout, rinfo.kernel_path);
    printf("}\n");
  } else {
    printf("training step, batch %u x %u tokens, %u threads, mean of %u steps after a warm-up:\n", tp.batch,
           tp.seq_len, rinfo.workers, steps);
    printf("  dense %-40s %8.3f s/step  %8.1f tokens/s\n", paths[0], seconds[0], tokens / seconds[0]);
    printf("  MoE   %-40s %8.3f s/step  %8.1f tokens/s\n", paths[1], seconds[1], tokens / seconds[1]);
    printf("  MoE step / dense step: %.2fx\n", seconds[1] / seconds[0]);
    printf("  kernels %s%s; f32 peak %.1f GFLOP/s measured on %u threads\n", rinfo.kernel_path,
           rinfo.kernel_forced ? " (forced)" : "", peak, rinfo.workers);
  }
  return 0;
}
