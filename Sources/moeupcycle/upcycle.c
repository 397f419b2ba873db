/*
 * moeupcycle upcycle and moeupcycle bench upcycle: dense checkpoint -> MoE
 * checkpoint, and the same timed against a plain copy of its output.
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "cli.h"

static void report_stale(const moe_upcycle_result *res, const char *out) {
  if (!res->stale_removed) return;
  char bytes[32];
  human_bytes((double)res->stale_bytes_removed, bytes, sizeof bytes);
  fprintf(stderr, "moeupcycle: removed %u temporar%s of '%s' (%s) left by a run that no longer runs\n",
          res->stale_removed, res->stale_removed == 1 ? "y" : "ies", out, bytes);
}

void upcycle_options_finish(moe_upcycle_params *p) {
  if (p->router_prompts_path && p->router_init == MOE_ROUTER_INIT_NORMAL) p->router_init = MOE_ROUTER_INIT_PROMPTS;
}

int cmd_upcycle(int argc, char **argv) {
  moe_upcycle_params p;
  moe_upcycle_params_init(&p, sizeof p);
  const cli_option options[] = { UPCYCLE_OPTIONS(&p), OPT_END };
  const char *paths[2] = { NULL, NULL };
  int n = 0, help = 0;
  if (cli_parse(argc, argv, options, paths, 2, &n, &help)) return 2;
  if (help) { printf("usage: moeupcycle upcycle IN OUT [options]; 'moeupcycle help' lists them\n"); return 0; }
  if (n < 2) return bad_usage("upcycle needs IN and OUT", NULL);
  upcycle_options_finish(&p);
  if (p.calibration_path)
    fprintf(stderr, "moeupcycle: running %s over up to %llu tokens of %s for calibration statistics\n", paths[0],
            (unsigned long long)p.calibration_tokens, p.calibration_path);
  cli_handle_signals();
  struct progress_state ps = { now_seconds(), -1, isatty(STDERR_FILENO) };
  p.progress = progress_bar;
  p.user_data = &ps;
  moe_upcycle_result res;
  memset(&res, 0, sizeof res);
  res.struct_size = sizeof res;
  moe_status st = moe_upcycle(&res, paths[0], paths[1], &p);
  if (st != MOE_OK) return fail(st);
  report_stale(&res, paths[1]);
  if (res.router_max_similarity >= 0.99)
    fprintf(stderr, "moeupcycle: warning: the router rows of two experts in layer %d have cosine similarity %.4f: "
            "the router cannot tell them apart at first (use --router-init normal or uniform with a non-zero "
            "--router-std; a data-derived router needs data or prompts that separate the experts)\n",
            res.router_similar_layer, res.router_max_similarity);
  char written[32], rss[32];
  human_bytes((double)res.bytes_written, written, sizeof written);
  human_bytes((double)res.peak_rss_bytes, rss, sizeof rss);
  printf("upcycled %s -> %s: %u MoE layers, %llu tensors in %u shard%s, %s written in %.2f s, peak RSS %s\n",
         paths[0], paths[1], res.moe_layers, (unsigned long long)res.tensors_written, res.shards,
         res.shards == 1 ? "" : "s", written, res.seconds, rss);
  return 0;
}

/* ----------------------------------------------------------- calibrate -- */

int cmd_calibrate(int argc, char **argv) {
  moe_upcycle_params p;
  moe_upcycle_params_init(&p, sizeof p);
  const char *out = NULL;
  const cli_option options[] = {
    OPT_STRING("--data", &p.calibration_path),
    OPT_STRING("--out", &out),
    OPT_FLAG("--ids", &p.calibration_ids),
    OPT_U64("--tokens", &p.calibration_tokens),
    OPT_U32("--samples", &p.calibration_samples),
    OPT_DOUBLE("--fire-quantile", &p.fire_quantile),
    OPT_FLAG("--force", &p.force),
    OPT_END
  };
  const char *paths[1] = { NULL };
  int n = 0, help = 0;
  if (cli_parse(argc, argv, options, paths, 1, &n, &help)) return 2;
  if (help) {
    printf("usage: moeupcycle calibrate DENSE --data FILE --out STATS.safetensors [--ids] [--tokens N]\n"
           "                            [--samples S] [--fire-quantile Q] [--force]\n"
           "Runs DENSE over FILE and saves per-neuron activation statistics for upcycle --stats.\n");
    return 0;
  }
  if (n < 1) return bad_usage("calibrate needs the dense model", NULL);
  if (!p.calibration_path) return bad_usage("calibrate needs --data FILE", NULL);
  if (!out) return bad_usage("calibrate needs --out STATS", NULL);
  double start = now_seconds();
  moe_status st = moe_calibrate(paths[0], out, &p);
  if (st != MOE_OK) return fail(st);
  printf("calibrated %s on %s -> %s in %.2f s\n", paths[0], p.calibration_path, out, now_seconds() - start);
  return 0;
}

/* -------------------------------------------------------------- export -- */

int cmd_export(int argc, char **argv) {
  moe_export_params p;
  moe_export_params_init(&p, sizeof p);
  const cli_option options[] = {
    OPT_ENUM("--type", &p.dtype, dtype),
    OPT_FLAG("--force", &p.force),
    OPT_END
  };
  const char *paths[2] = { NULL, NULL };
  int n = 0, help = 0;
  if (cli_parse(argc, argv, options, paths, 2, &n, &help)) return 2;
  if (help) {
    printf("usage: moeupcycle export MODEL OUT.gguf [--type f32|f16|bf16|q8_0|q4_0|q4_1] [--force]\n"
           "Writes MODEL (dense, Mixtral or Qwen2-MoE; HF or GGUF) as a GGUF file llama.cpp runs.\n");
    return 0;
  }
  if (n < 2) return bad_usage("export needs MODEL and OUT.gguf", NULL);
  moe_export_result r;
  memset(&r, 0, sizeof r);
  r.struct_size = sizeof r;
  moe_status st = moe_export(&r, paths[0], paths[1], &p);
  if (st != MOE_OK) return fail(st);
  char written[32];
  human_bytes((double)r.bytes_written, written, sizeof written);
  printf("exported %s -> %s: %llu tensors (%s), %s in %.2f s\n", paths[0], paths[1],
         (unsigned long long)r.tensors_written, moe_dtype_name(p.dtype), written, r.seconds);
  if (r.fallback_tensors)
    printf("%u matrices written as f16: their rows are not whole %s blocks\n", r.fallback_tensors, moe_dtype_name(p.dtype));
  return 0;
}

/* --------------------------------------------------------------- bench -- */

/* Writes all of buf[0, n) to fd; 0 or -1. */
static int write_all(int fd, const char *buf, size_t n) {
  for (size_t off = 0; off < n;) {
    ssize_t w = write(fd, buf + off, n - off);
    if (w < 0) { if (errno == EINTR) continue; return -1; }
    off += (size_t)w;
  }
  return 0;
}

/* Opens `path` with O_DIRECT where its file system takes it, else without. */
static int open_direct(const char *path, int flags, mode_t mode) {
  int fd = open(path, flags | O_DIRECT, mode);
  if (fd < 0 && errno == EINVAL) fd = open(path, flags, mode);
  return fd;
}

/* Copies every regular file of `from` into the new directory `to`, with fsync,
 * the way the upcycler writes: whole 4 KiB blocks with O_DIRECT where the file
 * system takes it (reads too), the final partial block through the page cache. */
static int copy_tree(const char *from, const char *to, uint64_t *bytes) {
  if (mkdir(to, 0755) != 0) return -1;
  DIR *d = opendir(from);
  if (!d) return -1;
  struct dirent *e;
  const size_t cap = 8u << 20, block = 4096;
  void *mem = NULL;
  int rc = posix_memalign(&mem, block, cap) == 0 ? 0 : -1;
  char *buf = mem;
  while (rc == 0 && (e = readdir(d)) != NULL) {
    if (e->d_name[0] == '.') continue;
    char *src = NULL, *dst = NULL;
    if (asprintf(&src, "%s/%s", from, e->d_name) < 0) src = NULL;
    if (asprintf(&dst, "%s/%s", to, e->d_name) < 0) dst = NULL;
    int fi = src ? open_direct(src, O_RDONLY, 0) : -1;
    int fo = dst ? open_direct(dst, O_WRONLY | O_CREAT | O_EXCL, 0644) : -1;
    free(src);
    free(dst);
    if (fi < 0 || fo < 0) rc = -1;
    while (rc == 0) {
      ssize_t got = read(fi, buf, cap);
      if (got < 0) { if (errno == EINTR) continue; rc = -1; break; }
      if (got == 0) break;
      size_t whole = (size_t)got & ~(block - 1);
      if (write_all(fo, buf, whole) != 0) { rc = -1; break; }
      if (whole < (size_t)got) {
        /* The file's end: O_DIRECT cannot write a partial block. */
        int flags = fcntl(fo, F_GETFL);
        if (flags < 0 || fcntl(fo, F_SETFL, flags & ~O_DIRECT) != 0 ||
            write_all(fo, buf + whole, (size_t)got - whole) != 0) { rc = -1; break; }
      }
      *bytes += (uint64_t)got;
    }
    if (fo >= 0) { if (fsync(fo) != 0) rc = -1; close(fo); }
    if (fi >= 0) close(fi);
  }
  free(mem);
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

int cmd_bench_upcycle(int argc, char **argv) {
  moe_upcycle_params p;
  moe_upcycle_params_init(&p, sizeof p);
  const char *work = NULL, *in = NULL;
  int32_t json = 0;
  const cli_option options[] = {
    UPCYCLE_OPTIONS(&p), OPT_FLAG("--json", &json), OPT_STRING("--work", &work), OPT_END
  };
  int n = 0, help = 0;
  if (cli_parse(argc, argv, options, &in, 1, &n, &help)) return 2;
  if (help) { printf("usage: moeupcycle bench upcycle IN [upcycle options] [--work DIR] [--json]\n"); return 0; }
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
  const char *method = moe_method_name(p.method);
  if (json) {
    printf("{\"input\": "); json_string(stdout, in);
    printf(", \"experts\": %u, \"top_k\": %u, \"method\": \"%s\", \"bytes_written\": %llu, \"tensors\": %llu"
           ", \"upcycle_seconds\": %.4f, \"copy_seconds\": %.4f, \"upcycle_over_copy\": %.3f"
           ", \"upcycle_gb_per_s\": %.3f, \"copy_gb_per_s\": %.3f, \"peak_rss_bytes\": %llu}\n",
           p.num_experts, p.top_k, method, (unsigned long long)res.bytes_written,
           (unsigned long long)res.tensors_written, upcycle_s, copy_s, ratio,
           res.bytes_written / upcycle_s / 1e9, copied / copy_s / 1e9,
           (unsigned long long)res.peak_rss_bytes);
  } else {
    char written[32], rss[32];
    human_bytes((double)res.bytes_written, written, sizeof written);
    human_bytes((double)res.peak_rss_bytes, rss, sizeof rss);
    printf("bench upcycle %s: %u experts top-%u (%s), %s written\n", in, p.num_experts, p.top_k, method, written);
    printf("  upcycle      %8.3f s  (%.2f GB/s)\n", upcycle_s, res.bytes_written / upcycle_s / 1e9);
    printf("  plain copy   %8.3f s  (%.2f GB/s, same bytes, same fsync)\n", copy_s, copied / copy_s / 1e9);
    printf("  ratio        %8.2fx of the copy time\n", ratio);
    printf("  peak RSS     %s\n", rss);
  }
  return 0;
}
