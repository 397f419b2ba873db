/*
 * moeupcycle bench train: seconds and tokens/s of a training step of a dense
 * and an MoE model side by side, with each step's model FLOPs (moe_train_stats
 * model_flops, PaLM convention) and the utilization of the measured f32 peak.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"

/* One model's timing: mean seconds per step and the model FLOPs of a step. */
typedef struct train_timing {
  double seconds;
  double model_flops;
  double activation_bytes;
} train_timing;

/* Times steps of `model` on random ids: one warm-up step, then `steps`. */
static int time_steps(moe_model *model, uint32_t vocab, const moe_trainer_params *tp, uint32_t steps,
                      train_timing *out) {
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
  out->seconds = total / steps;
  out->model_flops = s.model_flops;
  out->activation_bytes = (double)s.activation_bytes;
  return 1;
}

/* Achieved GFLOP/s of a timing, and that over the peak of the kernels the
 * products run on (model FLOPs utilization): the bf16 peak (AMX tiles or
 * vdpbf16ps) for --precision bf16 where bf16 compute runs there, else the f32 peak (the
 * bf16 fallback runs the f32 kernels). */
static double achieved_gflops(const train_timing *t) { return t->seconds > 0 ? t->model_flops / t->seconds / 1e9 : 0; }
static int bench_bf16_peak = 0;
static double mfu(const train_timing *t, const cli_peaks *p) {
  double peak = bench_bf16_peak ? p->bf16 : p->f32;
  return peak > 0 ? achieved_gflops(t) / peak : 0;
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
    OPT_U32("--micro-batch", &tp.micro_batch),
    OPT_FLAG("--recompute", &tp.recompute),
    OPT_ENUM("--precision", &tp.precision, dtype),
    OPT_U32_IN("--steps", &steps, 1, 100000),
    OPT_U32("--threads", &threads),
    OPT_ENUM("--train-only", &tp.train_only, train_only),
    OPT_FLAG("--json", &json),
    OPT_END
  };
  int help = 0, n = 0;
  if (cli_parse(argc, argv, options, paths, 2, &n, &help)) return 2;
  if (help) { printf("usage: moeupcycle bench train DENSE MOE [--batch B] [--seq-len T] [--micro-batch M] [--recompute]\n"
                     "                               [--precision f32|bf16] [--steps N] [--train-only W] [--json]\n");
               return 0; }
  if (n < 2) return bad_usage("bench train needs DENSE and MOE models", NULL);
  model_flags mf = { threads, MOE_DTYPE_F32, 0, NULL };
  moe_runtime_info rinfo;
  memset(&rinfo, 0, sizeof rinfo);
  rinfo.struct_size = sizeof rinfo;
  train_timing timing[2];
  memset(timing, 0, sizeof timing);
  cli_peaks peaks = { 0, 0 };
  for (int m = 0; m < 2; m++) {
    moe_runtime *rt = NULL;
    moe_model *model = NULL;
    if (!open_model(paths[m], &mf, &rt, &model)) return 1;
    moe_runtime_get_info(&rinfo, rt);
    bench_bf16_peak = tp.precision == MOE_DTYPE_BF16 && strcmp(rinfo.kernel_bf16, "fallback") != 0;
    /* The machine's multiply-add ceilings, measured in the same run: before
     * and after each model's steps, the largest kept. */
    moe_status st = measure_peaks(rt, &peaks);
    if (st != MOE_OK) { moe_model_free(model); moe_runtime_free(rt); return fail(st); }
    moe_model_info info;
    memset(&info, 0, sizeof info);
    info.struct_size = sizeof info;
    moe_model_get_info(&info, model);
    int ok = time_steps(model, info.vocab_size, &tp, steps, &timing[m]);
    if (ok && (st = measure_peaks(rt, &peaks)) != MOE_OK) {
      moe_model_free(model);
      moe_runtime_free(rt);
      return fail(st);
    }
    moe_model_free(model);
    moe_runtime_free(rt);
    if (!ok) return 1;
  }
  double tokens = (double)tp.batch * tp.seq_len;
  static const char *const names[2] = { "dense", "moe" };
  double flop_ratio = timing[0].model_flops > 0 ? timing[1].model_flops / timing[0].model_flops : 0;
  if (json) {
    printf("{\"dense\": ");
    json_string(stdout, paths[0]);
    printf(", \"moe\": ");
    json_string(stdout, paths[1]);
    printf(", \"threads\": %u, \"batch\": %u, \"seq_len\": %u, \"micro_batch\": %u, \"recompute\": %s, \"steps\": %u"
           ", \"precision\": \"%s\", \"mfu_peak\": \"%s\"", rinfo.workers, tp.batch, tp.seq_len, tp.micro_batch,
           tp.recompute ? "true" : "false", steps, tp.precision == MOE_DTYPE_BF16 ? "bf16" : "f32",
           bench_bf16_peak ? "bf16" : "f32");
    for (int m = 0; m < 2; m++) {
      const train_timing *t = &timing[m];
      printf(", \"%s_step_s\": %.4f, \"%s_tokens_per_second\": %.2f, \"%s_model_flops_per_step\": %.0f,"
             " \"%s_gflops\": %.6g, \"%s_mfu\": %.6g, \"%s_activation_bytes\": %.0f",
             names[m], t->seconds, names[m], tokens / t->seconds, names[m], t->model_flops, names[m],
             achieved_gflops(t), names[m], mfu(t, &peaks), names[m], t->activation_bytes);
    }
    printf(", \"moe_over_dense\": %.3f, \"moe_over_dense_flops\": %.6f, ", timing[1].seconds / timing[0].seconds,
           flop_ratio);
    peaks_json(stdout, &peaks);
    printf(", \"kernel_path\": ");
    json_string(stdout, rinfo.kernel_path);
    printf("}\n");
  } else {
    printf("training step, batch %u x %u tokens (micro-batch %u%s), %s products, %u threads, mean of %u steps"
           " after a warm-up:\n", tp.batch, tp.seq_len, tp.micro_batch ? tp.micro_batch : tp.batch,
           tp.recompute ? ", recompute" : "", tp.precision == MOE_DTYPE_BF16 ? "bf16" : "f32", rinfo.workers, steps);
    for (int m = 0; m < 2; m++) {
      const train_timing *t = &timing[m];
      printf("  %-5s %-40s %8.3f s/step  %8.1f tokens/s  %9.4g GFLOP/step  %7.3g GFLOP/s  MFU %5.1f%%"
             "  activations %.0f MiB\n",
             m == 0 ? "dense" : "MoE", paths[m], t->seconds, tokens / t->seconds, t->model_flops / 1e9,
             achieved_gflops(t), 100 * mfu(t, &peaks), t->activation_bytes / 1048576.0);
    }
    /* At equal MFU the step ratio equals the FLOP ratio. */
    printf("  MoE step / dense step: %.2fx (model FLOPs per step: %.3fx)\n", timing[1].seconds / timing[0].seconds,
           flop_ratio);
    printf("  kernels %s%s; ", rinfo.kernel_path, rinfo.kernel_forced ? " (forced)" : "");
    peaks_text(stdout, &peaks);
    printf(" measured on %u threads (before and after each model's steps, the largest kept);"
           " MFU = model FLOPs per second / %s peak%s\n", rinfo.workers,
           bench_bf16_peak ? "bf16" : "f32",
           tp.precision == MOE_DTYPE_BF16 && !bench_bf16_peak ? " (bf16 compute runs on the f32 kernels here)" : "");
  }
  return 0;
}
