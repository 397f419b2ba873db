/*
 * moeupcycle bench moe: the MoE layer's forward (and backward) time beside
 * the GEMM-only bound, the weight bytes read and the machine's bandwidth. The
 * bound calls OpenBLAS sgemm directly (the same library libmoeupcycle uses)
 * on the same expert shapes.
 */
#define _GNU_SOURCE
#include <cblas.h>
#include <math.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"

/* OpenBLAS extensions (declared by OpenBLAS's cblas.h too; repeated for clarity). */
void openblas_set_num_threads(int num_threads);
int openblas_get_num_threads(void);

static void bench_usage(FILE *out) {
  fprintf(out,
    "usage: moeupcycle bench moe [options]\n"
    "  --tokens T          tokens per call (default 2048)\n"
    "  --hidden H          (default 576)   --ffn F (default 1536)\n"
    "  --experts E         (default 8)     --top-k K (default 2)\n"
    "  --shared-ffn S      shared expert size (default 0)\n"
    "  --threads N         workers, 0 = one per core (default 0)\n"
    "  --backward          also time forward+backward\n"
    "  --dtype f32|bf16|q8_0|q4_0|q4_1\n"
    "                      expert weight storage (default f32; GGML blocks: forward only)\n"
    "  --compute f32|bf16  precision of the expert products: bf16 rounds both operands\n"
    "                      to bf16 and sums in f32 (default f32)\n"
    "  --placement P       %s\n"
    "  --routing R         %s\n"
    "  --capacity-factor C, --expert-choice\n"
    "  --iters N           timed calls, best and median reported (default 10)\n"
    "  --layers N          layers cycled through per timed call (default: 1, or for\n"
    "                      T <= 64 enough for 1 GiB of weights, so decode reads DRAM)\n"
    "  --stream-mib M      buffer of the bandwidth measurement (default 1024)\n"
    "  --seed N            weights and inputs (default 1)\n"
    "  --json              one JSON object\n"
    "Reports the layer's forward (and forward+backward) time and GFLOP/s, the time\n"
    "of the same expert GEMMs done alone by OpenBLAS sgemm on all N threads (the\n"
    "GEMM-only bound; efficiency = bound / layer), the bytes of active expert\n"
    "weights read per forward in GB/s, and the machine's streaming read bandwidth\n"
    "measured with N threads in the same run. Rates are given as fractions of the\n"
    "machine's f32 multiply-add peak and, where the CPU has AVX512-BF16, of its bf16\n"
    "peak (AMX tiles where the process runs them, else vdpbf16ps); with --compute\n"
    "bf16 the line names where bf16 compute runs (amx_bf16, avx512_bf16, or the\n"
    "fallback on the f32 kernels). The GEMM-only bound is f32\n"
    "sgemm either way.\n",
    enum_names(cli_name_placement), enum_names(cli_name_routing));
}

/* Bytes per expert weight as stored: GGML blocks of 32 with their f16 scales. */
static double storage_bytes(moe_dtype storage) {
  switch (storage) {
  case MOE_DTYPE_BF16: return 2.0;
  case MOE_DTYPE_Q8_0: return 34.0 / 32;
  case MOE_DTYPE_Q4_0: return 18.0 / 32;
  case MOE_DTYPE_Q4_1: return 20.0 / 32;
  default: return 4.0;
  }
}

static int compare_double(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return x < y ? -1 : x > y;
}

typedef struct timing { double best, median; } timing;

static timing summarize(double *t, int n) {
  qsort(t, (size_t)n, sizeof *t, compare_double);
  timing r = { t[0], n % 2 ? t[n / 2] : 0.5 * (t[n / 2 - 1] + t[n / 2]) };
  return r;
}

/* A deterministic normal draw (Box-Muller over an LCG): inputs only. */
static uint64_t lcg_state = 1;
static float normal_draw(void) {
  lcg_state = lcg_state * 6364136223846793005ull + 1442695040888963407ull;
  double u1 = ((lcg_state >> 11) + 1.0) / 9007199254740993.0;
  lcg_state = lcg_state * 6364136223846793005ull + 1442695040888963407ull;
  double u2 = (lcg_state >> 11) / 9007199254740992.0;
  return (float)(sqrt(-2.0 * log(u1)) * cos(6.283185307179586 * u2));
}

/* ---- the GEMM-only bound: the layer's expert GEMMs, alone, OpenBLAS threaded. */

typedef struct bound_buffers {
  float *x, *g, *u, *a, *y, *dx, *da, *w_gate, *w_up, *w_down, *dw_gate, *dw_up, *dw_down;
} bound_buffers;

/* Columns [lo, hi) of n split into `parts` equal shares. */
static void share(int n, int part, int parts, int *lo, int *hi) {
  *lo = (int)((long long)n * part / parts);
  *hi = (int)((long long)n * (part + 1) / parts);
}

/* One forward (3 GEMMs per expert) or forward+backward (9 per expert), or
 * share `part` of `parts` of their output columns. */
static void expert_gemms(const uint64_t *rows, uint32_t experts, int H, int F, int backward,
                         bound_buffers *b, int part, int parts) {
  size_t offset = 0;
  int f0, f1, h0, h1;
  share(F, part, parts, &f0, &f1);
  share(H, part, parts, &h0, &h1);
  const int fc = f1 - f0, hc = h1 - h0;
  for (uint32_t e = 0; e < experts; e++) {
    int n = (int)rows[e];
    if (n == 0) continue;
    float *x = b->x + offset * (size_t)H, *g = b->g + offset * (size_t)F;
    float *u = b->u + offset * (size_t)F, *a = b->a + offset * (size_t)F, *y = b->y + offset * (size_t)H;
    float *dx = b->dx + offset * (size_t)H;
    const float *wg = b->w_gate + (size_t)e * F * H, *wu = b->w_up + (size_t)e * F * H;
    const float *wd = b->w_down + (size_t)e * H * F;
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, n, fc, H, 1, x, H, wg + (size_t)f0 * H, H, 0, g + f0, F);
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, n, fc, H, 1, x, H, wu + (size_t)f0 * H, H, 0, u + f0, F);
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, n, hc, F, 1, a, F, wd + (size_t)h0 * F, F, 0, y + h0, H);
    if (backward) {
      /* dWd += dY^T a; da = dY Wd; dWg += dg^T x; dWu += du^T x; dx = dg Wg + du Wu */
      float *dwd = b->dw_down + (size_t)e * H * F, *dwg = b->dw_gate + (size_t)e * F * H;
      float *dwu = b->dw_up + (size_t)e * F * H;
      cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, H, fc, n, 1, y, H, a + f0, F, 1, dwd + f0, F);
      cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, n, fc, H, 1, y, H, wd + f0, F, 0, b->da + offset * (size_t)F + f0, F);
      cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, fc, H, n, 1, g + f0, F, x, H, 1, dwg + (size_t)f0 * H, H);
      cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, fc, H, n, 1, u + f0, F, x, H, 1, dwu + (size_t)f0 * H, H);
      cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, n, hc, F, 1, g, F, wg + h0, H, 0, dx + h0, H);
      cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, n, hc, F, 1, u, F, wu + h0, H, 1, dx + h0, H);
    }
    offset += (size_t)n;
  }
}

typedef struct bound_job {
  const uint64_t *rows;
  uint32_t experts;
  int H, F, backward, part, parts;
  bound_buffers *b;
} bound_job;

static void *bound_worker(void *arg) {
  bound_job *j = arg;
  expert_gemms(j->rows, j->experts, j->H, j->F, j->backward, j->b, j->part, j->parts);
  return NULL;
}

/* The GEMMs split by output columns over `threads` threads, each calling
 * single-threaded sgemm (how the layer's workers use OpenBLAS). */
static void expert_gemms_split(const uint64_t *rows, uint32_t experts, int H, int F, int backward,
                               bound_buffers *b, int threads) {
  pthread_t tid[256];
  bound_job jobs[256];
  if (threads > 256) threads = 256;
  for (int t = 0; t < threads; t++) {
    jobs[t] = (bound_job){ rows, experts, H, F, backward, t, threads, b };
    if (t > 0) pthread_create(&tid[t], NULL, bound_worker, &jobs[t]);
  }
  bound_worker(&jobs[0]);
  for (int t = 1; t < threads; t++) pthread_join(tid[t], NULL);
}

/* Times `iters` runs of the GEMMs, OpenBLAS-threaded or split; best and median. */
static timing time_gemms(const uint64_t *rows, uint32_t E, int H, int F, int backward, bound_buffers *b,
                         int threads, int split, uint32_t iters, double *times) {
  openblas_set_num_threads(split ? 1 : threads);
  for (uint32_t i = 0; i <= iters; i++) {
    double t0 = now_seconds();
    if (split) expert_gemms_split(rows, E, H, F, backward, b, threads);
    else expert_gemms(rows, E, H, F, backward, b, 0, 1);
    if (i > 0) times[i - 1] = now_seconds() - t0; /* the first run warms up */
  }
  openblas_set_num_threads(1);
  return summarize(times, (int)iters);
}

int cmd_bench_moe(int argc, char **argv) {
  layer_flags f;
  layer_flags_init(&f);
  moe_layer_config *c = &f.config;
  c->hidden_size = 576; c->moe_intermediate_size = 1536; c->num_experts = 8; c->top_k = 2;
  uint64_t tokens = 2048, seed = 1;
  uint32_t iters = 10, stream_mib = 1024, nlayers = 0;
  int32_t json = 0, backward = 0;
  const cli_option options[] = {
    LAYER_OPTIONS(&f),
    OPT_U64("--tokens", &tokens),
    OPT_U32_IN("--iters", &iters, 1, 100000),
    OPT_U64("--seed", &seed),
    OPT_U32_IN("--stream-mib", &stream_mib, 1, 1u << 20),
    OPT_U32_IN("--layers", &nlayers, 1, 4096),
    OPT_FLAG("--json", &json),
    OPT_FLAG("--backward", &backward),
    OPT_ENUM("--compute", &c->compute, dtype),
    OPT_END
  };
  int help = 0;
  if (cli_parse(argc, argv, options, NULL, 0, NULL, &help)) return 2;
  if (help) { bench_usage(stdout); return 0; }
  if (tokens < 1 || tokens > (1u << 24)) return bad_usage("--tokens must be in 1..16777216", NULL);
  if (backward && storage_bytes(c->storage) < 2.0) return bad_usage("--backward needs --dtype f32 or bf16", NULL);

  moe_runtime *rt = NULL;
  moe_status st = layer_runtime(&f, &rt);
  if (st != MOE_OK) return fail(st);
  moe_runtime_info info;
  memset(&info, 0, sizeof info);
  info.struct_size = sizeof info;
  moe_runtime_get_info(&info, rt);
  /* Decode-sized calls re-read the same weights; with one layer they would
   * come from cache. Like a real model, cycle over enough layers that their
   * expert weights (at least 1 GiB) cannot stay cached. */
  double layer_bytes = storage_bytes(c->storage) * 3.0 * c->hidden_size *
                       ((double)c->num_experts * c->moe_intermediate_size + c->shared_expert_intermediate_size);
  if (nlayers == 0) nlayers = tokens <= 64 ? (uint32_t)ceil((double)(1u << 30) / layer_bytes) : 1;
  if (nlayers > 4096) nlayers = 4096;
  moe_layer **layers = calloc(nlayers, sizeof *layers);
  if (!layers) return 1;
  for (uint32_t l = 0; l < nlayers; l++) {
    st = moe_layer_create(&layers[l], rt, c);
    if (st == MOE_OK) st = moe_layer_init_random(layers[l], seed + l, 0.02f);
    if (st != MOE_OK) {
      for (uint32_t k = 0; k <= l; k++) moe_layer_free(layers[k]);
      moe_runtime_free(rt);
      return fail(st);
    }
  }
  moe_layer *layer = layers[0];
  /* The machine's multiply-add ceilings, measured on all workers at once
   * before the timed runs and again after them (the larger is kept). */
  cli_peaks peaks = { 0, 0 };
  st = measure_peaks(rt, &peaks);
  if (st != MOE_OK) {
    for (uint32_t l = 0; l < nlayers; l++) moe_layer_free(layers[l]);
    moe_runtime_free(rt);
    return fail(st);
  }

  const int T = (int)tokens, H = (int)c->hidden_size, F = (int)c->moe_intermediate_size;
  const uint32_t E = c->num_experts;
  size_t xn = (size_t)T * H;
  float *x = malloc(xn * 4), *out = malloc(xn * 4), *gx = malloc(xn * 4);
  double *times = malloc(sizeof(double) * iters);
  if (!x || !out || !gx || !times) { fprintf(stderr, "moeupcycle: out of memory\n"); return 1; }
  lcg_state = seed * 2654435761u + 1;
  for (size_t i = 0; i < xn; i++) x[i] = normal_draw();

  /* Layer forward: warm up, then time (per layer, over a round of all layers). */
  for (uint32_t l = 0; l < nlayers; l++) moe_layer_forward(layers[l], x, (size_t)T, out, 0);
  for (uint32_t i = 0; i < iters; i++) {
    double t0 = now_seconds();
    for (uint32_t l = 0; l < nlayers && st == MOE_OK; l++) st = moe_layer_forward(layers[l], x, (size_t)T, out, 0);
    times[i] = (now_seconds() - t0) / nlayers;
    if (st != MOE_OK) return fail(st);
  }
  timing fwd = summarize(times, (int)iters);
  timing fb = { 0, 0 };
  if (backward) {
    for (size_t i = 0; i < xn; i++) gx[i] = 1e-3f * normal_draw();
    memcpy(out, gx, xn * 4);
    float *gout = out;
    float *gin = malloc(xn * 4);
    float *y = malloc(xn * 4);
    if (!gin || !y) { fprintf(stderr, "moeupcycle: out of memory\n"); return 1; }
    moe_layer_forward(layer, x, (size_t)T, y, MOE_FORWARD_SAVE | MOE_FORWARD_TRAIN);
    moe_layer_backward(layer, gout, gin);
    for (uint32_t i = 0; i < iters; i++) {
      double t0 = now_seconds();
      st = moe_layer_forward(layer, x, (size_t)T, y, MOE_FORWARD_SAVE | MOE_FORWARD_TRAIN);
      if (st == MOE_OK) st = moe_layer_backward(layer, gout, gin);
      times[i] = now_seconds() - t0;
      if (st != MOE_OK) { moe_layer_free(layer); moe_runtime_free(rt); return fail(st); }
    }
    fb = summarize(times, (int)iters);
    free(gin);
    free(y);
  }
  moe_layer_stats stats;
  memset(&stats, 0, sizeof stats);
  stats.struct_size = sizeof stats;
  uint64_t *rows = calloc(E, sizeof *rows);
  if (!rows) return 1;
  moe_layer_get_stats(&stats, layer, rows, E, NULL);
  for (uint32_t l = 0; l < nlayers; l++) moe_layer_free(layers[l]);
  free(layers);

  /* The GEMM-only bound: the same expert GEMMs on the same row counts, alone,
   * once with OpenBLAS threaded over all N threads and once split by columns
   * over N threads of single-threaded sgemm; the faster is the bound. */
  uint64_t total_rows = 0, active_experts = 0;
  for (uint32_t e = 0; e < E; e++) { total_rows += rows[e]; active_experts += rows[e] > 0; }
  bound_buffers b;
  size_t r = total_rows ? (size_t)total_rows : 1, wn = (size_t)E * F * H;
  float **all[] = { &b.x, &b.g, &b.u, &b.a, &b.y, &b.dx, &b.da, &b.w_gate, &b.w_up, &b.w_down,
                    &b.dw_gate, &b.dw_up, &b.dw_down };
  size_t sizes[] = { r * H, r * F, r * F, r * F, r * H, r * H, r * F, wn, wn, wn, wn, wn, wn };
  for (size_t i = 0; i < sizeof sizes / sizeof sizes[0]; i++) {
    *all[i] = malloc(sizes[i] * 4);
    if (!*all[i]) { fprintf(stderr, "moeupcycle: out of memory for the GEMM bound\n"); return 1; }
    for (size_t j = 0; j < sizes[i]; j++) (*all[i])[j] = (i >= 10) ? 0.0f : 0.02f * normal_draw();
  }
  int threads = (int)info.workers;
  timing blas_fwd = time_gemms(rows, E, H, F, 0, &b, threads, 0, iters, times);
  timing split_fwd = time_gemms(rows, E, H, F, 0, &b, threads, 1, iters, times);
  timing bound_fwd = blas_fwd.best < split_fwd.best ? blas_fwd : split_fwd;
  timing blas_fb = { 0, 0 }, split_fb = { 0, 0 }, bound_fb = { 0, 0 };
  if (backward) {
    blas_fb = time_gemms(rows, E, H, F, 1, &b, threads, 0, iters, times);
    split_fb = time_gemms(rows, E, H, F, 1, &b, threads, 1, iters, times);
    bound_fb = blas_fb.best < split_fb.best ? blas_fb : split_fb;
  }
  for (size_t i = 0; i < sizeof sizes / sizeof sizes[0]; i++) free(*all[i]);

  double stream = stream_bandwidth((size_t)stream_mib << 20, (int)info.workers);
  st = measure_peaks(rt, &peaks);
  double peak = peaks.f32, peak_bf16 = peaks.bf16;
  const char *compute = c->compute == MOE_DTYPE_BF16 ? "bf16" : "f32";
  moe_runtime_free(rt);
  if (st != MOE_OK) return fail(st);

  /* Work and traffic. */
  double flops_fwd = 2.0 * 3.0 * (double)total_rows * H * F;
  if (c->shared_expert_intermediate_size) flops_fwd += 2.0 * 3.0 * (double)T * H * c->shared_expert_intermediate_size;
  double bytes_per = storage_bytes(c->storage);
  double weight_bytes = bytes_per * 3.0 * (double)H * ((double)active_experts * F + c->shared_expert_intermediate_size);
  double weight_gbps = weight_bytes / fwd.best / 1e9;
  double eff_fwd = bound_fwd.best / fwd.best;
  double eff_fb = backward ? bound_fb.best / fb.best : 0;

  if (json) {
    printf("{\"tokens\": %d, \"hidden\": %d, \"ffn\": %d, \"experts\": %u, \"top_k\": %u, \"shared_ffn\": %u,\n",
           T, H, F, E, c->top_k, c->shared_expert_intermediate_size);
    printf(" \"layers\": %u, \"threads\": %u, \"dtype\": \"%s\", \"compute\": \"%s\", \"blas_core\": ", nlayers,
           info.workers, cli_name_dtype(c->storage), compute);
    json_string(stdout, info.blas_core);
    printf(", \"kernel_path\": ");
    json_string(stdout, info.kernel_path);
    printf(", \"kernel_bf16\": ");
    json_string(stdout, info.kernel_bf16);
    printf(", ");
    peaks_json(stdout, &peaks);
    printf(", \"forward_peak_fraction\": %.3f", peak > 0 ? flops_fwd / fwd.best / 1e9 / peak : 0);
    if (backward) printf(", \"forward_backward_peak_fraction\": %.3f", peak > 0 ? 3 * flops_fwd / fb.best / 1e9 / peak : 0);
    /* The same rates against the bf16 (AMX or vdpbf16ps) peak; null where there is none. */
    if (peak_bf16 > 0) printf(", \"forward_bf16_peak_fraction\": %.3f", flops_fwd / fwd.best / 1e9 / peak_bf16);
    else printf(", \"forward_bf16_peak_fraction\": null");
    if (backward && peak_bf16 > 0)
      printf(", \"forward_backward_bf16_peak_fraction\": %.3f", 3 * flops_fwd / fb.best / 1e9 / peak_bf16);
    else if (backward) printf(", \"forward_backward_bf16_peak_fraction\": null");
    printf(", \"workers_pinned\": %d, \"numa_nodes\": %u, \"iters\": %u,\n", info.workers_pinned, info.numa_nodes, iters);
    printf(" \"forward_s\": {\"best\": %.6g, \"median\": %.6g}, \"forward_gflops\": %.2f,\n",
           fwd.best, fwd.median, flops_fwd / fwd.best / 1e9);
    printf(" \"gemm_bound_forward_s\": {\"best\": %.6g, \"median\": %.6g}, \"efficiency_forward\": %.3f,\n",
           bound_fwd.best, bound_fwd.median, eff_fwd);
    printf(" \"gemm_openblas_threaded_forward_s\": %.6g, \"gemm_split_forward_s\": %.6g,\n",
           blas_fwd.best, split_fwd.best);
    if (backward) {
      printf(" \"forward_backward_s\": {\"best\": %.6g, \"median\": %.6g}, \"forward_backward_gflops\": %.2f,\n",
             fb.best, fb.median, 3 * flops_fwd / fb.best / 1e9);
      printf(" \"gemm_bound_forward_backward_s\": {\"best\": %.6g, \"median\": %.6g}, \"efficiency_forward_backward\": %.3f,\n",
             bound_fb.best, bound_fb.median, eff_fb);
      printf(" \"gemm_openblas_threaded_forward_backward_s\": %.6g, \"gemm_split_forward_backward_s\": %.6g,\n",
             blas_fb.best, split_fb.best);
    }
    printf(" \"active_experts\": %llu, \"active_weight_bytes\": %.0f, \"weight_read_gbps\": %.2f,\n",
           (unsigned long long)active_experts, weight_bytes, weight_gbps);
    printf(" \"stream_gbps\": %.2f, \"bandwidth_fraction\": %.3f, \"dropped\": %llu, \"tokens_per_expert\": [",
           stream, stream > 0 ? weight_gbps / stream : 0, (unsigned long long)stats.dropped);
    for (uint32_t e = 0; e < E; e++) printf("%s%llu", e ? ", " : "", (unsigned long long)rows[e]);
    printf("]}\n");
  } else {
    printf("MoE layer T=%d H=%d F=%d E=%u K=%u%s x %u layers, %s weights, %s compute%s%s%s, %u threads (%s), kernels %s%s, OpenBLAS %s\n",
           T, H, F, E, c->top_k, c->shared_expert_intermediate_size ? " +shared" : "", nlayers,
           cli_name_dtype(c->storage), compute,
           c->compute == MOE_DTYPE_BF16 ? " (" : "", c->compute == MOE_DTYPE_BF16 ? info.kernel_bf16 : "",
           c->compute == MOE_DTYPE_BF16 ? ")" : "", info.workers,
           info.workers_pinned ? "pinned" : "not pinned", info.kernel_path, info.kernel_forced ? " (forced)" : "", info.blas_core);
    peaks_text(stdout, &peaks);
    printf(" measured (multiply-adds on %u threads, before and after the timed runs, the larger kept)\n", info.workers);
    char bf16_share[32] = "";
    if (peak_bf16 > 0) snprintf(bf16_share, sizeof bf16_share, ", %3.0f%% of bf16", 100 * flops_fwd / fwd.best / 1e9 / peak_bf16);
    printf("forward            best %9.3f ms  median %9.3f ms  %8.1f GFLOP/s  %3.0f%% of f32 peak%s\n",
           fwd.best * 1e3, fwd.median * 1e3, flops_fwd / fwd.best / 1e9,
           peak > 0 ? 100 * flops_fwd / fwd.best / 1e9 / peak : 0, bf16_share);
    printf("GEMM-only bound    best %9.3f ms  median %9.3f ms  efficiency %.2f (bound/layer)\n",
           bound_fwd.best * 1e3, bound_fwd.median * 1e3, eff_fwd);
    printf("  (OpenBLAS threaded %.3f ms, split over threads %.3f ms)\n", blas_fwd.best * 1e3, split_fwd.best * 1e3);
    if (backward) {
      if (peak_bf16 > 0)
        snprintf(bf16_share, sizeof bf16_share, ", %3.0f%% of bf16", 100 * 3 * flops_fwd / fb.best / 1e9 / peak_bf16);
      printf("forward+backward   best %9.3f ms  median %9.3f ms  %8.1f GFLOP/s  %3.0f%% of f32 peak%s\n",
             fb.best * 1e3, fb.median * 1e3, 3 * flops_fwd / fb.best / 1e9,
             peak > 0 ? 100 * 3 * flops_fwd / fb.best / 1e9 / peak : 0, bf16_share);
      printf("GEMM-only bound    best %9.3f ms  median %9.3f ms  efficiency %.2f (bound/layer)\n",
             bound_fb.best * 1e3, bound_fb.median * 1e3, eff_fb);
      printf("  (OpenBLAS threaded %.3f ms, split over threads %.3f ms)\n", blas_fb.best * 1e3, split_fb.best * 1e3);
    }
    char wb[32];
    human_bytes(weight_bytes, wb, sizeof wb);
    printf("active weights     %s per forward (%llu experts), read at %.2f GB/s\n", wb,
           (unsigned long long)active_experts, weight_gbps);
    printf("stream bandwidth   %.2f GB/s with %u threads; weights read at %.0f%% of it\n",
           stream, info.workers, stream > 0 ? 100 * weight_gbps / stream : 0);
    printf("tokens per expert ");
    for (uint32_t e = 0; e < E; e++) printf(" %llu", (unsigned long long)rows[e]);
    printf("  (dropped %llu)\n", (unsigned long long)stats.dropped);
  }
  free(rows); free(x); free(out); free(gx); free(times);
  return 0;
}
