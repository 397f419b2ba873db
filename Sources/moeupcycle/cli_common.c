/*
 * Helpers every moeupcycle command uses: errors, numbers, files, signals,
 * the progress bar, the bandwidth measurement, and enum names.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <math.h>
#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "cli.h"

/* -------------------------------------------------------------- signals -- */

static volatile sig_atomic_t received_signal = 0;

static void on_signal(int sig) {
  if (received_signal) {
    /* A second signal: stop at once (a later run removes what is left). */
    signal(sig, SIG_DFL);
    raise(sig);
    return;
  }
  received_signal = sig;
}

void cli_handle_signals(void) {
  struct sigaction sa;
  memset(&sa, 0, sizeof sa);
  sa.sa_handler = on_signal;
  sa.sa_flags = SA_RESTART;
  sigemptyset(&sa.sa_mask);
  sigaction(SIGINT, &sa, NULL);
  sigaction(SIGTERM, &sa, NULL);
}

int cli_signal(void) { return received_signal; }

/* --------------------------------------------------------------- errors -- */

int fail(moe_status st) {
  int sig = received_signal;
  if (st == MOE_ERR_CANCELLED && sig) {
    fprintf(stderr, "\nmoeupcycle: stopped by %s; nothing was left half-written\n",
            sig == SIGINT ? "SIGINT" : sig == SIGTERM ? "SIGTERM" : "a signal");
    return 128 + sig;
  }
  fprintf(stderr, "moeupcycle: error: %s (%s)\n", moe_last_error(), moe_status_string(st));
  return 1;
}

int bad_usage(const char *msg, const char *arg) {
  fprintf(stderr, "moeupcycle: %s%s%s\n", msg, arg ? ": " : "", arg ? arg : "");
  fprintf(stderr, "run 'moeupcycle help' for usage\n");
  return 2;
}

/* -------------------------------------------------------------- numbers -- */

double now_seconds(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

void human_bytes(double b, char *buf, size_t n) {
  const char *units[] = {"B", "KiB", "MiB", "GiB", "TiB"};
  int u = 0;
  while (b >= 1024.0 && u < 4) { b /= 1024.0; u++; }
  snprintf(buf, n, u == 0 ? "%.0f %s" : "%.2f %s", b, units[u]);
}

void json_string(FILE *f, const char *s) {
  fputc('"', f);
  for (; *s; s++) {
    unsigned char c = (unsigned char)*s;
    if (c == '"' || c == '\\') fprintf(f, "\\%c", c);
    else if (c < 0x20) fprintf(f, "\\u%04x", c);
    else fputc(c, f);
  }
  fputc('"', f);
}

void json_number(char *buf, size_t n, double v, const char *format) {
  if (isfinite(v)) snprintf(buf, n, format, v);
  else snprintf(buf, n, "null");
}

int parse_u64(const char *s, uint64_t *out) {
  if (!s || !*s || *s == '-' || *s == '+' || *s == ' ') return 0;
  char *end = NULL;
  errno = 0;
  unsigned long long v = strtoull(s, &end, 10);
  if (errno || *end) return 0;
  *out = v;
  return 1;
}

int parse_u32(const char *s, uint32_t *out) {
  uint64_t v;
  if (!parse_u64(s, &v) || v > 0xFFFFFFFFull) return 0;
  *out = (uint32_t)v;
  return 1;
}

int parse_double(const char *s, double *out) {
  if (!s || !*s || *s == ' ') return 0;
  char *end = NULL;
  errno = 0;
  double v = strtod(s, &end);
  if (errno || *end || !isfinite(v)) return 0;
  *out = v;
  return 1;
}

/* ---------------------------------------------------------------- files -- */

char *read_file(const char *path, size_t *length) {
  FILE *fp = fopen(path, "rb");
  if (!fp) { fprintf(stderr, "moeupcycle: error: cannot open '%s': %s\n", path, strerror(errno)); return NULL; }
  size_t cap = 1 << 16, n = 0;
  char *buf = malloc(cap);
  while (buf) {
    size_t got = fread(buf + n, 1, cap - n - 1, fp);
    n += got;
    if (n + 1 < cap) break;
    char *bigger = realloc(buf, cap * 2);
    if (!bigger) { free(buf); buf = NULL; break; }
    buf = bigger;
    cap *= 2;
  }
  int failed = ferror(fp);
  fclose(fp);
  if (!buf) { fprintf(stderr, "moeupcycle: error: out of memory reading '%s'\n", path); return NULL; }
  if (failed) { fprintf(stderr, "moeupcycle: error: cannot read '%s'\n", path); free(buf); return NULL; }
  buf[n] = 0;
  *length = n;
  return buf;
}

int32_t *parse_token_ids(const char *text, size_t length, const char *what, size_t *count) {
  int32_t *tokens = malloc((length / 2 + 1) * sizeof *tokens);
  if (!tokens) { fprintf(stderr, "moeupcycle: error: out of memory reading '%s'\n", what); return NULL; }
  size_t n = 0;
  const char *p = text, *end = text + length;
  while (p < end) {
    while (p < end && (*p == ' ' || *p == '\n' || *p == '\t' || *p == '\r' || *p == ',')) p++;
    if (p >= end) break;
    char *stop = NULL;
    errno = 0;
    long v = strtol(p, &stop, 10);
    if (stop == p || errno || v < 0 || v > INT32_MAX ||
        (stop < end && !(*stop == ' ' || *stop == '\n' || *stop == '\t' || *stop == '\r' || *stop == ','))) {
      fprintf(stderr, "moeupcycle: error: '%s' holds something that is not a token id near byte %zu\n", what,
              (size_t)(p - text));
      free(tokens);
      return NULL;
    }
    tokens[n++] = (int32_t)v;
    p = stop;
  }
  *count = n;
  return tokens;
}

/* ------------------------------------------------------------- progress -- */

int progress_bar(uint64_t done, uint64_t total, const char *stage, void *user_data) {
  if (received_signal) return 1;
  struct progress_state *ps = user_data;
  if (!ps || !ps->draw) return 0;
  int percent = total ? (int)(done * 100 / total) : 100;
  if (percent == ps->last_percent) return 0;
  ps->last_percent = percent;
  int width = 40, filled = percent * width / 100;
  double elapsed = now_seconds() - ps->start;
  fprintf(stderr, "\r%s [", stage);
  for (int i = 0; i < width; i++) fputc(i < filled ? '#' : '.', stderr);
  fprintf(stderr, "] %3d%% %6.1fs", percent, elapsed);
  if (done >= total) fputc('\n', stderr);
  fflush(stderr);
  return 0;
}

/* ---------------------------------------------------------- enum names -- */

const char *enum_names(const char *(*name)(int32_t value)) {
  /* Usage text only: four buffers in turn, so one printf may take several. */
  static char bufs[4][512];
  static int next = 0;
  char *buf = bufs[next];
  next = (next + 1) % 4;
  const size_t cap = sizeof bufs[0];
  size_t n = 0;
  buf[0] = 0;
  for (int32_t v = 0; v < 256; v++) {
    const char *s = name(v);
    if (!s) break;
    int w = snprintf(buf + n, cap - n, "%s%s", v ? " | " : "", s);
    if (w < 0 || (size_t)w >= cap - n) break;
    n += (size_t)w;
  }
  return buf;
}

/* ----------------------------------------------- streaming read bandwidth -- */

typedef struct stream_job {
  const uint64_t *data;
  size_t words;
  uint64_t sink;
  pthread_barrier_t *barrier;
  double seconds;
} stream_job;

/* 64-byte vectors (GCC/Clang vector extension): wide loads whatever the
 * compiler's target flags, so one thread can approach the memory's speed. */
typedef uint64_t stream_vec __attribute__((vector_size(64)));

/* Sums n vectors; compiled for AVX-512, AVX2 and the baseline, picked at run
 * time, so the loads are as wide as the machine allows. */
#define STREAM_SUM_BODY                                                   \
  {                                                                       \
    stream_vec a0 = {0}, a1 = {0}, a2 = {0}, a3 = {0};                    \
    for (size_t i = 0; i + 4 <= n; i += 4) {                              \
      a0 += p[i]; a1 += p[i + 1]; a2 += p[i + 2]; a3 += p[i + 3];         \
    }                                                                     \
    stream_vec acc = a0 ^ a1 ^ a2 ^ a3;                                   \
    uint64_t sink = 0;                                                    \
    for (int k = 0; k < 8; k++) sink ^= acc[k];                           \
    return sink;                                                          \
  }
#if defined(__x86_64__)
__attribute__((target("avx512f"))) static uint64_t stream_sum_avx512(const stream_vec *p, size_t n) STREAM_SUM_BODY
__attribute__((target("avx2"))) static uint64_t stream_sum_avx2(const stream_vec *p, size_t n) STREAM_SUM_BODY
#endif
static uint64_t stream_sum_baseline(const stream_vec *p, size_t n) STREAM_SUM_BODY

static void *stream_worker(void *arg) {
  stream_job *j = arg;
  const stream_vec *p = (const stream_vec *)j->data;
  size_t n = (j->words / 8) & ~(size_t)3;
  uint64_t (*sum)(const stream_vec *, size_t) = stream_sum_baseline;
#if defined(__x86_64__)
  if (__builtin_cpu_supports("avx512f")) sum = stream_sum_avx512;
  else if (__builtin_cpu_supports("avx2")) sum = stream_sum_avx2;
#endif
  pthread_barrier_wait(j->barrier);
  double t0 = now_seconds();
  j->sink = sum(p, n);
  j->seconds = now_seconds() - t0;
  j->words = n * 8;
  return NULL;
}

/* Best of 3 passes, in GB/s (1e9 bytes); 0 on failure. */
double stream_bandwidth(size_t bytes, int threads) {
  size_t words = bytes / 8;
  uint64_t *buf = aligned_alloc(64, (words * 8 + 63) & ~(size_t)63);
  if (!buf) return 0;
  for (size_t i = 0; i < words; i++) buf[i] = i;
  pthread_t tid[256];
  stream_job jobs[256];
  if (threads > 256) threads = 256;
  if (threads < 1) threads = 1;
  double best = 0;
  for (int pass = 0; pass < 3; pass++) {
    pthread_barrier_t barrier;
    pthread_barrier_init(&barrier, NULL, (unsigned)threads);
    for (int t = 0; t < threads; t++) {
      size_t lo = (words * (size_t)t / (size_t)threads) & ~(size_t)7;
      size_t hi = (words * (size_t)(t + 1) / (size_t)threads) & ~(size_t)7;
      jobs[t] = (stream_job){ buf + lo, hi - lo, 0, &barrier, 0 };
      pthread_create(&tid[t], NULL, stream_worker, &jobs[t]);
    }
    double slowest = 0;
    uint64_t sink = 0, read = 0;
    for (int t = 0; t < threads; t++) {
      pthread_join(tid[t], NULL);
      if (jobs[t].seconds > slowest) slowest = jobs[t].seconds;
      sink ^= jobs[t].sink;
      read += jobs[t].words * 8;
    }
    pthread_barrier_destroy(&barrier);
    if (sink == 42) fputc(' ', stderr); /* keeps the sums alive */
    double gbps = (double)read / slowest / 1e9;
    if (gbps > best) best = gbps;
  }
  free(buf);
  return best;
}

/* ---------------------------------------------------------------- peaks -- */

moe_status measure_peaks(moe_runtime *rt, cli_peaks *out) {
  double f32 = 0, bf16 = 0;
  moe_status st = moe_runtime_measure_peak(rt, MOE_DTYPE_F32, 0.3, &f32);
  if (st != MOE_OK) return st;
  if (f32 > out->f32) out->f32 = f32;
  st = moe_runtime_measure_peak(rt, MOE_DTYPE_BF16, 0.3, &bf16);
  if (st == MOE_ERR_UNSUPPORTED) return MOE_OK;
  if (st == MOE_OK && bf16 > out->bf16) out->bf16 = bf16;
  return st;
}

void peaks_json(FILE *f, const cli_peaks *p) {
  fprintf(f, "\"peak_f32_gflops\": %.2f, \"peak_bf16_gflops\": ", p->f32);
  if (p->bf16 > 0) fprintf(f, "%.2f", p->bf16);
  else fputs("null", f);
}

void peaks_text(FILE *f, const cli_peaks *p) {
  fprintf(f, "f32 peak %.1f GFLOP/s, bf16 peak ", p->f32);
  if (p->bf16 > 0) fprintf(f, "%.1f GFLOP/s", p->bf16);
  else fputs("n/a", f);
}

/* ------------------------------------------------------------- a model -- */

int open_model(const char *path, const model_flags *f, moe_runtime **rt, moe_model **model) {
  moe_runtime_params rp;
  moe_runtime_params_init(&rp, sizeof rp);
  rp.threads = f->threads;
  moe_status st = moe_runtime_create(rt, &rp);
  if (st != MOE_OK) { fail(st); return 0; }
  moe_model_params mp;
  moe_model_params_init(&mp, sizeof mp);
  mp.weight_dtype = f->weight_dtype;
  mp.upcycle = f->upcycle;
  st = moe_model_load(model, *rt, path, &mp);
  if (st != MOE_OK) { fail(st); moe_runtime_free(*rt); *rt = NULL; return 0; }
  return 1;
}

/* ------------------------------------------------------------- a layer -- */

void layer_flags_init(layer_flags *f) {
  memset(f, 0, sizeof *f);
  moe_layer_config_init(&f->config, sizeof f->config);
}

moe_status layer_runtime(const layer_flags *f, moe_runtime **rt) {
  moe_runtime_params p;
  moe_runtime_params_init(&p, sizeof p);
  p.threads = f->threads;
  p.placement = f->config.placement;
  p.topology_synthetic = f->synthetic;
  p.topology_xml = f->xml;
  return moe_runtime_create(rt, &p);
}
