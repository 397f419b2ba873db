/*
 * moeupcycle — the command-line host of libmoeupcycle.
 * A plain C program that uses only the public header include/moeupcycle.h.
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "moeupcycle.h"
#include "cli.h"

static void usage(FILE *f) {
  fprintf(f,
    "moeupcycle %s — upcycle dense transformer checkpoints into Mixture-of-Experts models\n"
    "\n"
    "usage:\n"
    "  moeupcycle info PATH [--json]\n"
    "  moeupcycle upcycle IN OUT [options]\n"
    "  moeupcycle bench upcycle IN [options] [--work DIR] [--json]\n"
    "  moeupcycle bench moe [--tokens T --hidden H --ffn F --experts E --top-k K]\n"
    "                       [--threads N] [--backward] [--dtype f32|bf16] [--json] ...\n"
    "  moeupcycle eval MODEL --data FILE [--seq-len T] [--max-tokens N] [--ids] [--json]\n"
    "  moeupcycle generate MODEL --prompt TEXT [--max-new-tokens N] [--temperature T]\n"
    "                      [--top-k K] [--top-p P] [--seed N] [--chat] [--json]\n"
    "  moeupcycle bench decode MODEL [--tokens N] [--prompt TEXT] [--json]\n"
    "  moeupcycle train MODEL --data FILE --out DIR [--steps N] [--batch B] [--seq-len T]\n"
    "                   [--lr LR] [--train-only all|moe|routers] [--resume] ... (train --help)\n"
    "  moeupcycle bench train DENSE MOE [--batch B] [--seq-len T] [--steps N] [--json]\n"
    "  moeupcycle topology [--json] [--threads N] [--placement P] [--hidden H --ffn F\n"
    "                      --experts E --top-k K] [--synthetic SPEC | --xml FILE]\n"
    "  moeupcycle version\n"
    "\n"
    "PATH / IN: an HF model directory (config.json + safetensors) or a .gguf file.\n"
    "\n"
    "upcycle options:\n"
    "  --experts E            routed experts (default 8)\n"
    "  --top-k K              experts per token (default 2)\n"
    "  --method M             copy | drop | noise | granular | partition (default copy)\n"
    "  --ratio R              drop/noise: fraction of neurons re-drawn (default 0.5)\n"
    "  --shared-indices       drop/noise: one index set per expert for gate, up and down\n"
    "  --noise-std S          noise: std of the added noise (default 0.02)\n"
    "  --granularity G        granular/partition: experts hold I/G neurons\n"
    "  --granular-scaling S   down | cube-root | none (default down)\n"
    "  --partition-select S   random | uniform | importance (default random)\n"
    "  --disjoint             partition: every neuron in at most one expert\n"
    "  --no-partition-scale   partition: do not rescale down_proj\n"
    "  --layers SPEC          all | every:N | list such as 0,2,5-7 (default all)\n"
    "  --router-init I        normal | uniform | zeros (default normal)\n"
    "  --router-std S         router init std (default 0.02)\n"
    "  --shared-expert        add a shared expert (Qwen2-MoE output)\n"
    "  --routing R            softmax-topk-renorm | softmax-topk | topk-softmax\n"
    "  --format F             mixtral | qwen2-moe (default mixtral)\n"
    "  --dtype D              keep | f32 | bf16 | f16 (default keep)\n"
    "  --aux-loss-coef C      router_aux_loss_coef recorded in the config (default 0.02)\n"
    "  --max-shard-size BYTES shard limit of the safetensors files (default 4 GiB)\n"
    "  --threads N            1 = no background thread (default 0: build and write overlap)\n"
    "  --seed N               same seed = byte-identical output (default 0)\n"
    "  --force                replace an existing output directory\n"
    "\n"
    "MODEL: an HF directory (dense, or an upcycled Mixtral / Qwen2-MoE) or a .gguf file.\n"
    "eval, generate and bench decode take --threads N (default: one per core) and\n"
    "--dtype f32|bf16 (weight storage; default bf16 for bf16/f16 checkpoints, else f32).\n"
    "Run 'moeupcycle bench moe --help' or 'moeupcycle topology --help' for theirs.\n",
    moe_version_string());
}

int fail(moe_status st) {
  fprintf(stderr, "moeupcycle: error: %s (%s)\n", moe_last_error(), moe_status_string(st));
  return 1;
}

int bad_usage(const char *msg, const char *arg) {
  fprintf(stderr, "moeupcycle: %s%s%s\n", msg, arg ? ": " : "", arg ? arg : "");
  fprintf(stderr, "run 'moeupcycle help' for usage\n");
  return 2;
}

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

/* ---------------------------------------------------------------- info -- */

static int cmd_info(int argc, char **argv) {
  const char *path = NULL;
  int json = 0;
  for (int i = 0; i < argc; i++) {
    if (strcmp(argv[i], "--json") == 0) json = 1;
    else if (argv[i][0] == '-' && argv[i][1] == '-') return bad_usage("unknown option", argv[i]);
    else if (!path) path = argv[i];
    else return bad_usage("unexpected argument", argv[i]);
  }
  if (!path) return bad_usage("info needs a PATH", NULL);
  moe_checkpoint_info info;
  memset(&info, 0, sizeof info);
  info.struct_size = sizeof info;
  moe_status st = moe_checkpoint_inspect(&info, path);
  if (st != MOE_OK) return fail(st);
  if (json) {
    printf("{\"path\": "); json_string(stdout, path);
    printf(", \"architecture\": "); json_string(stdout, info.architecture);
    printf(", \"container\": "); json_string(stdout, info.container);
    printf(", \"dtype\": "); json_string(stdout, info.dtype);
    printf(", \"dtype_summary\": "); json_string(stdout, info.dtype_summary);
    printf(", \"num_layers\": %u, \"hidden_size\": %u, \"intermediate_size\": %u"
           ", \"num_heads\": %u, \"num_kv_heads\": %u, \"head_dim\": %u, \"vocab_size\": %u"
           ", \"max_position_embeddings\": %u, \"rope_theta\": %.17g, \"rms_norm_eps\": %.17g"
           ", \"tied_embeddings\": %s, \"qkv_bias\": %s"
           ", \"num_experts\": %u, \"top_k\": %u, \"moe_intermediate_size\": %u"
           ", \"shared_expert_intermediate_size\": %u, \"num_moe_layers\": %u"
           ", \"tensor_count\": %llu, \"param_count\": %llu, \"active_param_count\": %llu"
           ", \"data_bytes\": %llu}\n",
           info.num_layers, info.hidden_size, info.intermediate_size, info.num_heads,
           info.num_kv_heads, info.head_dim, info.vocab_size, info.max_position_embeddings,
           info.rope_theta, info.rms_norm_eps, info.tied_embeddings ? "true" : "false",
           info.qkv_bias ? "true" : "false", info.num_experts, info.top_k,
           info.moe_intermediate_size, info.shared_expert_intermediate_size, info.num_moe_layers,
           (unsigned long long)info.tensor_count, (unsigned long long)info.param_count,
           (unsigned long long)info.active_param_count, (unsigned long long)info.data_bytes);
    return 0;
  }
  char bytes[32];
  human_bytes((double)info.data_bytes, bytes, sizeof bytes);
  printf("%s\n", path);
  printf("  architecture   %s (%s)\n", info.architecture, info.container);
  printf("  dtype          %s  [%s]\n", info.dtype, info.dtype_summary);
  printf("  layers         %u\n", info.num_layers);
  printf("  hidden         %u\n", info.hidden_size);
  if (info.intermediate_size) printf("  ffn            %u\n", info.intermediate_size);
  printf("  heads          %u (kv %u, head dim %u)\n", info.num_heads, info.num_kv_heads, info.head_dim);
  printf("  vocab          %u\n", info.vocab_size);
  printf("  context        %u\n", info.max_position_embeddings);
  printf("  rope theta     %g\n", info.rope_theta);
  printf("  rms norm eps   %g\n", info.rms_norm_eps);
  printf("  tied embed     %s\n", info.tied_embeddings ? "yes" : "no");
  if (info.num_experts) {
    printf("  experts        %u, top-%u, expert ffn %u, %u MoE layers\n", info.num_experts, info.top_k,
           info.moe_intermediate_size, info.num_moe_layers);
    if (info.shared_expert_intermediate_size)
      printf("  shared expert  ffn %u\n", info.shared_expert_intermediate_size);
  }
  printf("  tensors        %llu (%s)\n", (unsigned long long)info.tensor_count, bytes);
  printf("  parameters     %.2fM total, %.2fM active per token\n", info.param_count / 1e6,
         info.active_param_count / 1e6);
  return 0;
}

/* ------------------------------------------------------------- upcycle -- */

int progress_bar(uint64_t done, uint64_t total, const char *stage, void *user_data) {
  struct progress_state *ps = user_data;
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

int parse_u64(const char *s, uint64_t *out) {
  if (!s || !*s || *s == '-') return 0;
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
  if (!s || !*s) return 0;
  char *end = NULL;
  errno = 0;
  double v = strtod(s, &end);
  if (errno || *end) return 0;
  *out = v;
  return 1;
}

/* Parses upcycle options at argv[*i]; returns 1 if consumed, 0 if not an upcycle option, -1 on error. */
static int parse_upcycle_option(int argc, char **argv, int *i, moe_upcycle_params *p) {
  const char *opt = argv[*i];
  const char *val = (*i + 1 < argc) ? argv[*i + 1] : NULL;
#define NEED_VALUE() do { if (!val) { bad_usage("option needs a value", opt); return -1; } (*i)++; } while (0)
#define BAD_VALUE() do { bad_usage("invalid value for option", opt); return -1; } while (0)
  if (strcmp(opt, "--experts") == 0) { NEED_VALUE(); if (!parse_u32(val, &p->num_experts)) BAD_VALUE(); }
  else if (strcmp(opt, "--top-k") == 0) { NEED_VALUE(); if (!parse_u32(val, &p->top_k)) BAD_VALUE(); }
  else if (strcmp(opt, "--method") == 0) {
    NEED_VALUE();
    if (strcmp(val, "copy") == 0) p->method = MOE_METHOD_COPY;
    else if (strcmp(val, "drop") == 0) p->method = MOE_METHOD_DROP;
    else if (strcmp(val, "noise") == 0) p->method = MOE_METHOD_NOISE;
    else if (strcmp(val, "granular") == 0) p->method = MOE_METHOD_GRANULAR;
    else if (strcmp(val, "partition") == 0) p->method = MOE_METHOD_PARTITION;
    else BAD_VALUE();
  }
  else if (strcmp(opt, "--ratio") == 0) { NEED_VALUE(); if (!parse_double(val, &p->ratio)) BAD_VALUE(); }
  else if (strcmp(opt, "--shared-indices") == 0) p->shared_indices = 1;
  else if (strcmp(opt, "--noise-std") == 0) { NEED_VALUE(); if (!parse_double(val, &p->noise_std)) BAD_VALUE(); }
  else if (strcmp(opt, "--granularity") == 0) { NEED_VALUE(); if (!parse_u32(val, &p->granularity)) BAD_VALUE(); }
  else if (strcmp(opt, "--granular-scaling") == 0) {
    NEED_VALUE();
    if (strcmp(val, "down") == 0) p->granular_scaling = MOE_GRANULAR_SCALE_DOWN;
    else if (strcmp(val, "cube-root") == 0) p->granular_scaling = MOE_GRANULAR_SCALE_CUBE_ROOT;
    else if (strcmp(val, "none") == 0) p->granular_scaling = MOE_GRANULAR_SCALE_NONE;
    else BAD_VALUE();
  }
  else if (strcmp(opt, "--partition-select") == 0) {
    NEED_VALUE();
    if (strcmp(val, "random") == 0) p->partition_select = MOE_PARTITION_RANDOM;
    else if (strcmp(val, "uniform") == 0) p->partition_select = MOE_PARTITION_UNIFORM;
    else if (strcmp(val, "importance") == 0) p->partition_select = MOE_PARTITION_IMPORTANCE;
    else BAD_VALUE();
  }
  else if (strcmp(opt, "--disjoint") == 0) p->partition_disjoint = 1;
  else if (strcmp(opt, "--no-partition-scale") == 0) p->partition_scale = 0;
  else if (strcmp(opt, "--layers") == 0) { NEED_VALUE(); p->layers = val; }
  else if (strcmp(opt, "--router-init") == 0) {
    NEED_VALUE();
    if (strcmp(val, "normal") == 0) p->router_init = MOE_ROUTER_INIT_NORMAL;
    else if (strcmp(val, "uniform") == 0) p->router_init = MOE_ROUTER_INIT_UNIFORM;
    else if (strcmp(val, "zeros") == 0) p->router_init = MOE_ROUTER_INIT_ZEROS;
    else BAD_VALUE();
  }
  else if (strcmp(opt, "--router-std") == 0) { NEED_VALUE(); if (!parse_double(val, &p->router_std)) BAD_VALUE(); }
  else if (strcmp(opt, "--shared-expert") == 0) p->shared_expert = 1;
  else if (strcmp(opt, "--routing") == 0) {
    NEED_VALUE();
    if (strcmp(val, "softmax-topk-renorm") == 0) p->routing = MOE_ROUTING_SOFTMAX_TOPK_RENORM;
    else if (strcmp(val, "softmax-topk") == 0) p->routing = MOE_ROUTING_SOFTMAX_TOPK;
    else if (strcmp(val, "topk-softmax") == 0) p->routing = MOE_ROUTING_TOPK_SOFTMAX;
    else BAD_VALUE();
  }
  else if (strcmp(opt, "--format") == 0) {
    NEED_VALUE();
    if (strcmp(val, "mixtral") == 0) p->format = MOE_FORMAT_MIXTRAL;
    else if (strcmp(val, "qwen2-moe") == 0) p->format = MOE_FORMAT_QWEN2_MOE;
    else BAD_VALUE();
  }
  else if (strcmp(opt, "--dtype") == 0) {
    NEED_VALUE();
    if (strcmp(val, "keep") == 0) p->dtype = MOE_OUTPUT_DTYPE_KEEP;
    else if (strcmp(val, "f32") == 0) p->dtype = MOE_OUTPUT_DTYPE_F32;
    else if (strcmp(val, "bf16") == 0) p->dtype = MOE_OUTPUT_DTYPE_BF16;
    else if (strcmp(val, "f16") == 0) p->dtype = MOE_OUTPUT_DTYPE_F16;
    else BAD_VALUE();
  }
  else if (strcmp(opt, "--aux-loss-coef") == 0) { NEED_VALUE(); if (!parse_double(val, &p->router_aux_loss_coef)) BAD_VALUE(); }
  else if (strcmp(opt, "--max-shard-size") == 0) { NEED_VALUE(); if (!parse_u64(val, &p->max_shard_bytes)) BAD_VALUE(); }
  else if (strcmp(opt, "--threads") == 0) { NEED_VALUE(); if (!parse_u32(val, &p->threads)) BAD_VALUE(); }
  else if (strcmp(opt, "--seed") == 0) { NEED_VALUE(); if (!parse_u64(val, &p->seed)) BAD_VALUE(); }
  else if (strcmp(opt, "--force") == 0) p->force = 1;
  else return 0;
  return 1;
#undef NEED_VALUE
#undef BAD_VALUE
}

static int cmd_upcycle(int argc, char **argv) {
  moe_upcycle_params p;
  moe_upcycle_params_init(&p);
  const char *in = NULL, *out = NULL;
  for (int i = 0; i < argc; i++) {
    int r = parse_upcycle_option(argc, argv, &i, &p);
    if (r < 0) return 2;
    if (r > 0) continue;
    if (argv[i][0] == '-' && argv[i][1] == '-') return bad_usage("unknown option", argv[i]);
    if (!in) in = argv[i];
    else if (!out) out = argv[i];
    else return bad_usage("unexpected argument", argv[i]);
  }
  if (!in || !out) return bad_usage("upcycle needs IN and OUT", NULL);
  struct progress_state ps = {now_seconds(), -1};
  if (isatty(STDERR_FILENO)) { p.progress = progress_bar; p.user_data = &ps; }
  moe_upcycle_result res;
  memset(&res, 0, sizeof res);
  res.struct_size = sizeof res;
  moe_status st = moe_upcycle(&res, in, out, &p);
  if (st != MOE_OK) return fail(st);
  char written[32], rss[32];
  human_bytes((double)res.bytes_written, written, sizeof written);
  human_bytes((double)res.peak_rss_bytes, rss, sizeof rss);
  printf("upcycled %s -> %s: %u MoE layers, %llu tensors in %u shard%s, %s written in %.2f s, peak RSS %s\n",
         in, out, res.moe_layers, (unsigned long long)res.tensors_written, res.shards,
         res.shards == 1 ? "" : "s", written, res.seconds, rss);
  return 0;
}

/* --------------------------------------------------------------- bench -- */

/* Copies every regular file of `from` into the new directory `to`, with fsync (as the upcycler does). */
static int copy_tree(const char *from, const char *to, uint64_t *bytes) {
  if (mkdir(to, 0755) != 0) return -1;
  DIR *d = opendir(from);
  if (!d) return -1;
  struct dirent *e;
  size_t cap = 8u << 20;
  char *buf = malloc(cap);
  int rc = buf ? 0 : -1;
  while (rc == 0 && (e = readdir(d)) != NULL) {
    if (e->d_name[0] == '.') continue;
    char *src = NULL, *dst = NULL;
    if (asprintf(&src, "%s/%s", from, e->d_name) < 0) src = NULL;
    if (asprintf(&dst, "%s/%s", to, e->d_name) < 0) dst = NULL;
    int fi = src ? open(src, O_RDONLY) : -1;
    int fo = dst ? open(dst, O_WRONLY | O_CREAT | O_EXCL, 0644) : -1;
    free(src);
    free(dst);
    if (fi < 0 || fo < 0) rc = -1;
    while (rc == 0) {
      ssize_t n = read(fi, buf, cap);
      if (n < 0) { rc = -1; break; }
      if (n == 0) break;
      for (ssize_t off = 0; off < n;) {
        ssize_t w = write(fo, buf + off, (size_t)(n - off));
        if (w < 0) { rc = -1; break; }
        off += w;
      }
      *bytes += (uint64_t)n;
    }
    if (fo >= 0) { if (fsync(fo) != 0) rc = -1; close(fo); }
    if (fi >= 0) close(fi);
  }
  free(buf);
  closedir(d);
  return rc;
}

static void remove_tree(const char *path) {
  DIR *d = opendir(path);
  if (d) {
    struct dirent *e;
    while ((e = readdir(d)) != NULL) {
      if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0) continue;
      char *p = NULL;
      if (asprintf(&p, "%s/%s", path, e->d_name) >= 0) { unlink(p); free(p); }
    }
    closedir(d);
  }
  rmdir(path);
}

static int cmd_bench(int argc, char **argv) {
  if (argc >= 1 && strcmp(argv[0], "moe") == 0) return cmd_bench_moe(argc - 1, argv + 1);
  if (argc >= 1 && strcmp(argv[0], "decode") == 0) return cmd_bench_decode(argc - 1, argv + 1);
  if (argc >= 1 && strcmp(argv[0], "train") == 0) return cmd_bench_train(argc - 1, argv + 1);
  if (argc < 1 || strcmp(argv[0], "upcycle") != 0) return bad_usage("bench needs a subject: upcycle, moe, decode or train", argc ? argv[0] : NULL);
  moe_upcycle_params p;
  moe_upcycle_params_init(&p);
  const char *in = NULL, *work = NULL;
  int json = 0;
  for (int i = 1; i < argc; i++) {
    int r = parse_upcycle_option(argc, argv, &i, &p);
    if (r < 0) return 2;
    if (r > 0) continue;
    if (strcmp(argv[i], "--json") == 0) json = 1;
    else if (strcmp(argv[i], "--work") == 0 && i + 1 < argc) work = argv[++i];
    else if (argv[i][0] == '-' && argv[i][1] == '-') return bad_usage("unknown option", argv[i]);
    else if (!in) in = argv[i];
    else return bad_usage("unexpected argument", argv[i]);
  }
  if (!in) return bad_usage("bench upcycle needs IN", NULL);
  if (!work) work = getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp";
  char out_dir[4096], copy_dir[4096];
  snprintf(out_dir, sizeof out_dir, "%s/moeupcycle-bench-%d-out", work, (int)getpid());
  snprintf(copy_dir, sizeof copy_dir, "%s/moeupcycle-bench-%d-copy", work, (int)getpid());
  moe_upcycle_result res;
  memset(&res, 0, sizeof res);
  res.struct_size = sizeof res;
  double t0 = now_seconds();
  moe_status st = moe_upcycle(&res, in, out_dir, &p);
  double upcycle_s = now_seconds() - t0;
  if (st != MOE_OK) return fail(st);
  uint64_t copied = 0;
  t0 = now_seconds();
  int rc = copy_tree(out_dir, copy_dir, &copied);
  double copy_s = now_seconds() - t0;
  remove_tree(out_dir);
  remove_tree(copy_dir);
  if (rc != 0) { fprintf(stderr, "moeupcycle: bench: copying the output failed: %s\n", strerror(errno)); return 1; }
  double ratio = copy_s > 0 ? upcycle_s / copy_s : 0;
  if (json) {
    printf("{\"input\": "); json_string(stdout, in);
    printf(", \"experts\": %u, \"top_k\": %u, \"method\": %d, \"bytes_written\": %llu, \"tensors\": %llu"
           ", \"upcycle_seconds\": %.4f, \"copy_seconds\": %.4f, \"upcycle_over_copy\": %.3f"
           ", \"upcycle_gb_per_s\": %.3f, \"copy_gb_per_s\": %.3f, \"peak_rss_bytes\": %llu}\n",
           p.num_experts, p.top_k, (int)p.method, (unsigned long long)res.bytes_written,
           (unsigned long long)res.tensors_written, upcycle_s, copy_s, ratio,
           res.bytes_written / upcycle_s / 1e9, copied / copy_s / 1e9,
           (unsigned long long)res.peak_rss_bytes);
  } else {
    char written[32], rss[32];
    human_bytes((double)res.bytes_written, written, sizeof written);
    human_bytes((double)res.peak_rss_bytes, rss, sizeof rss);
    printf("bench upcycle %s: %u experts top-%u, %s written\n", in, p.num_experts, p.top_k, written);
    printf("  upcycle      %8.3f s  (%.2f GB/s)\n", upcycle_s, res.bytes_written / upcycle_s / 1e9);
    printf("  plain copy   %8.3f s  (%.2f GB/s, same bytes, same fsync)\n", copy_s, copied / copy_s / 1e9);
    printf("  ratio        %8.2fx of the copy time\n", ratio);
    printf("  peak RSS     %s\n", rss);
  }
  return 0;
}

int main(int argc, char **argv) {
  if (argc < 2) { usage(stderr); return 2; }
  const char *cmd = argv[1];
  if (strcmp(cmd, "help") == 0 || strcmp(cmd, "--help") == 0 || strcmp(cmd, "-h") == 0) { usage(stdout); return 0; }
  if (strcmp(cmd, "version") == 0 || strcmp(cmd, "--version") == 0) {
    printf("moeupcycle %s (header %s)\n", moe_version_string(), MOE_VERSION_STRING);
    return moe_version_number() == MOE_VERSION_NUMBER ? 0 : 1;
  }
  if (strcmp(cmd, "info") == 0) return cmd_info(argc - 2, argv + 2);
  if (strcmp(cmd, "upcycle") == 0) return cmd_upcycle(argc - 2, argv + 2);
  if (strcmp(cmd, "bench") == 0) return cmd_bench(argc - 2, argv + 2);
  if (strcmp(cmd, "topology") == 0) return cmd_topology(argc - 2, argv + 2);
  if (strcmp(cmd, "eval") == 0) return cmd_eval(argc - 2, argv + 2);
  if (strcmp(cmd, "train") == 0) return cmd_train(argc - 2, argv + 2);
  if (strcmp(cmd, "generate") == 0) return cmd_generate(argc - 2, argv + 2);
  return bad_usage("unknown command", cmd);
}
