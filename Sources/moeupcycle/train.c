/*
 * moeupcycle train: continued pretraining of a dense or MoE model, with
 * held-out evaluation, checkpoints and exact resume.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <dirent.h>
#include <sys/stat.h>

#include "cli.h"
#include "moeupcycle.h"

static void train_usage(FILE *out) {
  fprintf(out,
    "usage: moeupcycle train MODEL --data FILE --out DIR [options]\n"
    "  --steps N            total steps (default 100)\n"
    "  --batch B            sequences per step (default 4)\n"
    "  --seq-len T          tokens per sequence (default 256)\n"
    "  --lr LR              peak learning rate (default 2e-4)\n"
    "  --min-lr LR          final learning rate of the cosine (default 2e-5)\n"
    "  --warmup N           linear warmup steps (default 0)\n"
    "  --constant-lr        constant after warmup instead of cosine\n"
    "  --weight-decay W     AdamW decoupled decay (default 0.1)\n"
    "  --beta2 B            AdamW beta2 (default 0.95)\n"
    "  --clip C             global gradient-norm clip, 0 = off (default 1)\n"
    "  --aux-loss-coef C    load-balancing loss coefficient (default 0.02)\n"
    "  --z-loss-coef C      router z-loss coefficient (default 0.001)\n"
    "  --train-only W       all | moe | routers (default all)\n"
    "  --eval-every N       held-out loss every N steps (default 0: at the end)\n"
    "  --save-every N       checkpoint every N steps (default 0: at the end)\n"
    "  --eval-fraction F    share of the data held out (default 0.05)\n"
    "  --resume             continue from DIR (written by an earlier run)\n"
    "  --force              replace an existing DIR when not resuming\n"
    "  --seed N             order of training windows (default 0)\n"
    "  --ids                FILE holds whitespace-separated token ids, not text\n"
    "  (--data may name a directory: its files are read in name order)\n"
    "  --log FILE           JSON lines, one per step and evaluation (default DIR.jsonl)\n"
    "  --threads N          workers (default one per core)\n"
    "The model is trained in f32. DIR is an HF checkpoint (moeupcycle eval and\n"
    "transformers load it) plus trainer.json and optimizer.safetensors.\n");
}

static int is_dir(const char *p) {
  struct stat st;
  return stat(p, &st) == 0 && S_ISDIR(st.st_mode);
}

static int compare_names(const void *a, const void *b) {
  return strcmp(*(char *const *)a, *(char *const *)b);
}

/* Appends the file at `path` to buf (grown as needed); 0 on failure. */
static int append_file(const char *path, char **buf, size_t *length, size_t *cap) {
  FILE *fp = fopen(path, "rb");
  if (!fp) return 0;
  int ok = 1;
  for (;;) {
    if (*cap - *length < (1 << 16)) {
      size_t bigger = *cap ? *cap * 2 : 1 << 20;
      char *p = realloc(*buf, bigger);
      if (!p) { ok = 0; break; }
      *buf = p;
      *cap = bigger;
    }
    size_t got = fread(*buf + *length, 1, *cap - *length, fp);
    *length += got;
    if (got == 0) break;
  }
  if (ferror(fp)) ok = 0;
  fclose(fp);
  return ok;
}

/* The training text: a file, or every regular file of a directory in name
 * order, separated by newlines. NULL (with a message) on failure. */
static char *read_data(const char *path, size_t *length) {
  char *buf = NULL;
  size_t cap = 0;
  *length = 0;
  if (!is_dir(path)) {
    if (append_file(path, &buf, length, &cap)) return buf;
    fprintf(stderr, "moeupcycle: error: cannot read '%s': %s\n", path, strerror(errno));
    free(buf);
    return NULL;
  }
  DIR *dir = opendir(path);
  if (!dir) { fprintf(stderr, "moeupcycle: error: cannot list '%s': %s\n", path, strerror(errno)); return NULL; }
  char **names = NULL;
  size_t count = 0;
  struct dirent *e;
  while ((e = readdir(dir))) {
    if (e->d_name[0] == '.') continue;
    char **more = realloc(names, (count + 1) * sizeof *names);
    if (!more) break;
    names = more;
    names[count++] = strdup(e->d_name);
  }
  closedir(dir);
  qsort(names, count, sizeof *names, compare_names);
  int ok = 1;
  for (size_t i = 0; i < count && ok; i++) {
    char file[4096];
    snprintf(file, sizeof file, "%s/%s", path, names[i]);
    struct stat st;
    if (stat(file, &st) != 0 || !S_ISREG(st.st_mode)) continue;
    ok = append_file(file, &buf, length, &cap);
    if (ok && *length < cap) buf[(*length)++] = '\n';
    if (!ok) fprintf(stderr, "moeupcycle: error: cannot read '%s': %s\n", file, strerror(errno));
  }
  for (size_t i = 0; i < count; i++) free(names[i]);
  free(names);
  if (!ok) { free(buf); return NULL; }
  if (!buf) buf = malloc(1);
  return buf;
}

int cmd_train(int argc, char **argv) {
  const char *model_path = NULL, *data = NULL, *out = NULL, *log_path = NULL;
  uint32_t threads = 0, eval_every = 0, save_every = 0;
  int resume = 0, ids = 0, force = 0;
  moe_trainer_params tp;
  moe_trainer_params_init(&tp);
  for (int i = 0; i < argc; i++) {
    const char *opt = argv[i];
    const char *val = (i + 1 < argc) ? argv[i + 1] : NULL;
    double d;
    uint64_t u;
    if (strcmp(opt, "--help") == 0) { train_usage(stdout); return 0; }
    if (strcmp(opt, "--resume") == 0) { resume = 1; continue; }
    if (strcmp(opt, "--force") == 0) { force = 1; continue; }
    if (strcmp(opt, "--ids") == 0) { ids = 1; continue; }
    if (strcmp(opt, "--constant-lr") == 0) { tp.schedule = MOE_LR_CONSTANT; continue; }
    if (opt[0] != '-') {
      if (model_path) return bad_usage("unexpected argument", opt);
      model_path = opt;
      continue;
    }
    if (!val) return bad_usage("option needs a value", opt);
    i++;
    int ok = 1;
    if (strcmp(opt, "--data") == 0) data = val;
    else if (strcmp(opt, "--out") == 0) out = val;
    else if (strcmp(opt, "--log") == 0) log_path = val;
    else if (strcmp(opt, "--steps") == 0) ok = parse_u32(val, &tp.steps);
    else if (strcmp(opt, "--batch") == 0) ok = parse_u32(val, &tp.batch);
    else if (strcmp(opt, "--seq-len") == 0) ok = parse_u32(val, &tp.seq_len);
    else if (strcmp(opt, "--warmup") == 0) ok = parse_u32(val, &tp.warmup);
    else if (strcmp(opt, "--eval-every") == 0) ok = parse_u32(val, &eval_every);
    else if (strcmp(opt, "--save-every") == 0) ok = parse_u32(val, &save_every);
    else if (strcmp(opt, "--threads") == 0) ok = parse_u32(val, &threads);
    else if (strcmp(opt, "--seed") == 0) { ok = parse_u64(val, &u); tp.seed = u; }
    else if (strcmp(opt, "--eval-fraction") == 0) { ok = parse_double(val, &d); tp.eval_fraction = d; }
    else if (strcmp(opt, "--train-only") == 0) {
      if (strcmp(val, "all") == 0) tp.train_only = MOE_TRAIN_ALL;
      else if (strcmp(val, "moe") == 0) tp.train_only = MOE_TRAIN_MOE;
      else if (strcmp(val, "routers") == 0) tp.train_only = MOE_TRAIN_ROUTERS;
      else ok = 0;
    } else {
      float *target = NULL;
      if (strcmp(opt, "--lr") == 0) target = &tp.lr;
      else if (strcmp(opt, "--min-lr") == 0) target = &tp.min_lr;
      else if (strcmp(opt, "--weight-decay") == 0) target = &tp.weight_decay;
      else if (strcmp(opt, "--beta2") == 0) target = &tp.beta2;
      else if (strcmp(opt, "--clip") == 0) target = &tp.clip;
      else if (strcmp(opt, "--aux-loss-coef") == 0) target = &tp.aux_loss_coef;
      else if (strcmp(opt, "--z-loss-coef") == 0) target = &tp.z_loss_coef;
      else return bad_usage("unknown option", opt);
      ok = parse_double(val, &d);
      *target = (float)d;
    }
    if (!ok) return bad_usage("invalid value for option", opt);
  }
  if (!model_path || !data || !out) return bad_usage("train needs MODEL, --data FILE and --out DIR", NULL);
  if (resume && !is_dir(out)) {
    fprintf(stderr, "moeupcycle: error: --resume: '%s' is not a checkpoint directory\n", out);
    return 1;
  }
  char default_log[4096];
  if (!log_path) {
    snprintf(default_log, sizeof default_log, "%s.jsonl", out);
    log_path = default_log;
  }

  moe_runtime_params rp;
  moe_runtime_params_init(&rp);
  rp.threads = threads;
  moe_runtime *rt = NULL;
  moe_status st = moe_runtime_create(&rt, &rp);
  if (st != MOE_OK) return fail(st);
  moe_model_params mp;
  moe_model_params_init(&mp);
  mp.weight_dtype = MOE_DTYPE_F32;
  moe_model *model = NULL;
  st = moe_model_load(&model, rt, resume ? out : model_path, &mp);
  if (st != MOE_OK) { int rc = fail(st); moe_runtime_free(rt); return rc; }

  size_t length = 0;
  char *text = read_data(data, &length);
  if (!text) { moe_model_free(model); moe_runtime_free(rt); return 1; }
  moe_trainer *trainer = NULL;
  if (ids) {
    int32_t *tokens = malloc((length / 2 + 1) * sizeof *tokens);
    size_t n = 0;
    char *p = text, *end = text + length;
    while (tokens && p < end) {
      char *stop = NULL;
      long v = strtol(p, &stop, 10);
      if (stop == p) { p++; continue; }
      tokens[n++] = (int32_t)v;
      p = stop;
    }
    st = tokens ? moe_trainer_create(&trainer, model, tokens, n, &tp) : MOE_ERR_OUT_OF_MEMORY;
    free(tokens);
  } else {
    st = moe_trainer_create_text(&trainer, model, text, length, &tp);
  }
  free(text);
  if (st == MOE_OK && resume) st = moe_trainer_resume(trainer, out);
  if (st != MOE_OK) {
    int rc = fail(st);
    moe_trainer_free(trainer); moe_model_free(model); moe_runtime_free(rt);
    return rc;
  }
  FILE *log = fopen(log_path, resume ? "a" : "w");
  if (!log) fprintf(stderr, "moeupcycle: warning: cannot write the log '%s': %s\n", log_path, strerror(errno));

  uint64_t step = 0;
  moe_trainer_get_step(&step, trainer);
  /* The first save replaces DIR only when resuming it or told to. */
  int owns_out = resume || force;
  int rc = 0;
  if (eval_every && step == 0 && tp.eval_fraction > 0) {
    double nll = 0;
    st = moe_trainer_eval(&nll, trainer);
    if (st != MOE_OK) rc = fail(st);
    else {
      printf("step     0  held-out loss %.4f\n", nll);
      if (log) { fprintf(log, "{\"step\": 0, \"eval_loss\": %.6f}\n", nll); fflush(log); }
    }
  }
  while (rc == 0 && step < tp.steps) {
    moe_train_stats s;
    memset(&s, 0, sizeof s);
    s.struct_size = sizeof s;
    st = moe_trainer_step(&s, trainer);
    if (st != MOE_OK) { rc = fail(st); break; }
    step = s.step;
    printf("step %5llu/%u  loss %.4f  aux %.3f  z %.3f  lr %.3g  grad-norm %.3f  load %.2f  %.0f tok/s\n",
           (unsigned long long)s.step, tp.steps, s.loss, s.balance, s.z_loss, s.lr, s.grad_norm, s.max_expert_load,
           s.tokens_per_second);
    fflush(stdout);
    if (log) {
      fprintf(log, "{\"step\": %llu, \"loss\": %.6f, \"balance\": %.6f, \"z_loss\": %.6f, \"lr\": %.6g, \"grad_norm\": %.6f,"
              " \"max_expert_load\": %.4f, \"tokens_per_second\": %.2f}\n", (unsigned long long)s.step, s.loss,
              s.balance, s.z_loss, s.lr, s.grad_norm, s.max_expert_load, s.tokens_per_second);
      fflush(log);
    }
    int last = step == tp.steps;
    if ((eval_every && step % eval_every == 0) || (last && tp.eval_fraction > 0)) {
      double nll = 0;
      st = moe_trainer_eval(&nll, trainer);
      if (st != MOE_OK) { rc = fail(st); break; }
      printf("step %5llu  held-out loss %.4f\n", (unsigned long long)step, nll);
      if (log) { fprintf(log, "{\"step\": %llu, \"eval_loss\": %.6f}\n", (unsigned long long)step, nll); fflush(log); }
    }
    if ((save_every && step % save_every == 0) || last) {
      st = moe_trainer_save(trainer, out, owns_out);
      if (st != MOE_OK) { rc = fail(st); break; }
      owns_out = 1;
      printf("saved %s at step %llu\n", out, (unsigned long long)step);
    }
  }
  if (log) fclose(log);
  moe_trainer_free(trainer);
  moe_model_free(model);
  moe_runtime_free(rt);
  return rc;
}

/* ---------------------------------------------------------- bench train -- */

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
  int json = 0;
  moe_trainer_params tp;
  moe_trainer_params_init(&tp);
  tp.batch = 2;
  tp.seq_len = 256;
  tp.eval_fraction = 0;
  for (int i = 0; i < argc; i++) {
    const char *opt = argv[i];
    const char *val = (i + 1 < argc) ? argv[i + 1] : NULL;
    if (strcmp(opt, "--json") == 0) { json = 1; continue; }
    if (opt[0] != '-') {
      if (!paths[0]) paths[0] = opt;
      else if (!paths[1]) paths[1] = opt;
      else return bad_usage("unexpected argument", opt);
      continue;
    }
    if (!val) return bad_usage("option needs a value", opt);
    i++;
    int ok = 1;
    if (strcmp(opt, "--batch") == 0) ok = parse_u32(val, &tp.batch);
    else if (strcmp(opt, "--seq-len") == 0) ok = parse_u32(val, &tp.seq_len);
    else if (strcmp(opt, "--steps") == 0) ok = parse_u32(val, &steps) && steps > 0;
    else if (strcmp(opt, "--threads") == 0) ok = parse_u32(val, &threads);
    else if (strcmp(opt, "--train-only") == 0) {
      if (strcmp(val, "all") == 0) tp.train_only = MOE_TRAIN_ALL;
      else if (strcmp(val, "moe") == 0) tp.train_only = MOE_TRAIN_MOE;
      else if (strcmp(val, "routers") == 0) tp.train_only = MOE_TRAIN_ROUTERS;
      else ok = 0;
    } else return bad_usage("unknown option", opt);
    if (!ok) return bad_usage("invalid value for option", opt);
  }
  if (!paths[0] || !paths[1]) return bad_usage("bench train needs DENSE and MOE models", NULL);
  moe_runtime_params rp;
  moe_runtime_params_init(&rp);
  rp.threads = threads;
  moe_runtime *rt = NULL;
  moe_status st = moe_runtime_create(&rt, &rp);
  if (st != MOE_OK) return fail(st);
  moe_runtime_info rinfo;
  memset(&rinfo, 0, sizeof rinfo);
  rinfo.struct_size = sizeof rinfo;
  moe_runtime_get_info(&rinfo, rt);
  double seconds[2] = { 0, 0 }, loss[2] = { 0, 0 };
  for (int m = 0; m < 2; m++) {
    moe_model_params mp;
    moe_model_params_init(&mp);
    mp.weight_dtype = MOE_DTYPE_F32;
    moe_model *model = NULL;
    st = moe_model_load(&model, rt, paths[m], &mp);
    if (st != MOE_OK) { int rc = fail(st); moe_runtime_free(rt); return rc; }
    moe_model_info info;
    memset(&info, 0, sizeof info);
    info.struct_size = sizeof info;
    moe_model_get_info(&info, model);
    int ok = time_steps(model, info.vocab_size, &tp, steps, &seconds[m], &loss[m]);
    moe_model_free(model);
    if (!ok) { moe_runtime_free(rt); return 1; }
  }
  moe_runtime_free(rt);
  double tokens = (double)tp.batch * tp.seq_len;
  if (json) {
    printf("{\"dense\": ");
    json_string(stdout, paths[0]);
    printf(", \"moe\": ");
    json_string(stdout, paths[1]);
    printf(", \"threads\": %u, \"batch\": %u, \"seq_len\": %u, \"steps\": %u,"
           " \"dense_step_s\": %.4f, \"moe_step_s\": %.4f, \"dense_tokens_per_second\": %.2f,"
           " \"moe_tokens_per_second\": %.2f, \"moe_over_dense\": %.3f}\n",
           rinfo.workers, tp.batch, tp.seq_len, steps, seconds[0], seconds[1], tokens / seconds[0],
           tokens / seconds[1], seconds[1] / seconds[0]);
  } else {
    printf("training step, batch %u x %u tokens, %u threads, mean of %u steps after a warm-up:\n", tp.batch,
           tp.seq_len, rinfo.workers, steps);
    printf("  dense %-40s %8.3f s/step  %8.1f tokens/s\n", paths[0], seconds[0], tokens / seconds[0]);
    printf("  MoE   %-40s %8.3f s/step  %8.1f tokens/s\n", paths[1], seconds[1], tokens / seconds[1]);
    printf("  MoE step / dense step: %.2fx\n", seconds[1] / seconds[0]);
  }
  return 0;
}
