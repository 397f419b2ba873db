/*
 * moeupcycle train: continued pretraining of a dense or MoE model, with
 * held-out evaluation, checkpoints and exact resume.
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "cli.h"

static void train_usage(FILE *out) {
  fprintf(out,
    "usage: moeupcycle train MODEL --data FILE --out DIR [options]\n"
    "  --steps N            total steps (default 100)\n"
    "  --batch B            sequences per step (default 4)\n"
    "  --seq-len T          tokens per sequence (default 256)\n"
    "  --micro-batch M      sequences per forward/backward pass (default 0: the\n"
    "                       whole batch); smaller bounds the activations' memory\n"
    "  --recompute          recompute each block's activations in backward\n"
    "                       (less memory, about a third more time)\n"
    "  --precision f32|bf16 precision of the weight products (default f32); bf16\n"
    "                       rounds their operands to bf16 and sums in f32 (mixed\n"
    "                       precision: weights and optimizer state stay f32)\n"
    "  --lr LR              peak learning rate (default 2e-4)\n"
    "  --min-lr LR          final learning rate of the cosine (default 2e-5)\n"
    "  --warmup N           linear warmup steps (default 0)\n"
    "  --schedule S         %s (default cosine)\n"
    "  --constant-lr        the same as --schedule constant\n"
    "  --weight-decay W     AdamW decoupled decay (default 0.1)\n"
    "  --beta1 B, --beta2 B AdamW betas (defaults 0.9, 0.95)\n"
    "  --eps E              AdamW epsilon, > 0 (default 1e-8)\n"
    "  --clip C             global gradient-norm clip, 0 = off (default 1)\n"
    "  --aux-loss-coef C    load-balancing loss coefficient (default 0.02)\n"
    "  --z-loss-coef C      router z-loss coefficient (default 0.001)\n"
    "  --train-only W       %s (default all)\n"
    "  --on-nonfinite P     %s: a NaN/infinite loss or gradient stops the\n"
    "                       run with an error, or skips that step (default error)\n"
    "  --eval-every N       held-out loss every N steps (default 0: at the end)\n"
    "  --eval-fraction F    share of the data held out (default 0.05)\n"
    "  --save-every N       checkpoint every N steps (default 0: at the end)\n"
    "  --upcycle \"OPTIONS\"  MODEL is dense: upcycle it in memory with these upcycle\n"
    "                       options (e.g. \"--experts 8 --top-k 2 --method drop\") and\n"
    "                       train the MoE; the same model as upcycle + train, no copy\n"
    "                       written (ignored with --resume: DIR holds the MoE)\n"
    "  --resume             continue from DIR (written by an earlier run)\n"
    "  --force              replace an existing DIR when not resuming\n"
    "  --seed N             order of training windows (default 0)\n"
    "  --ids                FILE holds whitespace-separated token ids, not text\n"
    "  (--data may name a directory: its files are read in name order)\n"
    "  --log FILE           JSON lines, one per step and evaluation (default DIR.jsonl)\n"
    "  --threads N          workers (default one per core)\n"
    "The model is trained in f32. DIR is an HF checkpoint (moeupcycle eval and\n"
    "transformers load it) plus trainer.json and optimizer.safetensors. SIGINT or\n"
    "SIGTERM stops after the current step; DIR keeps the last checkpoint saved.\n",
    enum_names(cli_name_lr_schedule), enum_names(cli_name_train_only), enum_names(cli_name_nonfinite));
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
  const char *model_path = NULL, *data = NULL, *out = NULL, *log_path = NULL, *upcycle_spec = NULL;
  uint32_t threads = 0, eval_every = 0, save_every = 0;
  int32_t resume = 0, ids = 0, force = 0;
  moe_trainer_params tp;
  moe_trainer_params_init(&tp, sizeof tp);
  const cli_option options[] = {
    OPT_STRING("--data", &data),
    OPT_STRING("--out", &out),
    OPT_STRING("--log", &log_path),
    OPT_STRING("--upcycle", &upcycle_spec),
    OPT_U32("--steps", &tp.steps),
    OPT_U32("--batch", &tp.batch),
    OPT_U32("--seq-len", &tp.seq_len),
    OPT_U32("--micro-batch", &tp.micro_batch),
    OPT_FLAG("--recompute", &tp.recompute),
    OPT_ENUM("--precision", &tp.precision, dtype),
    OPT_U32("--warmup", &tp.warmup),
    OPT_FLOAT("--lr", &tp.lr),
    OPT_FLOAT("--min-lr", &tp.min_lr),
    OPT_ENUM("--schedule", &tp.schedule, lr_schedule),
    OPT_SET("--constant-lr", &tp.schedule, MOE_LR_CONSTANT),
    OPT_FLOAT("--weight-decay", &tp.weight_decay),
    OPT_FLOAT("--beta1", &tp.beta1),
    OPT_FLOAT("--beta2", &tp.beta2),
    OPT_FLOAT("--eps", &tp.eps),
    OPT_FLOAT("--clip", &tp.clip),
    OPT_FLOAT("--aux-loss-coef", &tp.aux_loss_coef),
    OPT_FLOAT("--z-loss-coef", &tp.z_loss_coef),
    OPT_ENUM("--train-only", &tp.train_only, train_only),
    OPT_ENUM("--on-nonfinite", &tp.on_nonfinite, nonfinite),
    OPT_U64("--seed", &tp.seed),
    OPT_DOUBLE("--eval-fraction", &tp.eval_fraction),
    OPT_U32("--eval-every", &eval_every),
    OPT_U32("--save-every", &save_every),
    OPT_U32("--threads", &threads),
    OPT_FLAG("--resume", &resume),
    OPT_FLAG("--force", &force),
    OPT_FLAG("--ids", &ids),
    OPT_END
  };
  int help = 0, n = 0;
  if (cli_parse(argc, argv, options, &model_path, 1, &n, &help)) return 2;
  if (help) { train_usage(stdout); return 0; }
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

  /* --upcycle: the upcycle command's options, split at blanks. */
  moe_upcycle_params up;
  moe_upcycle_params_init(&up, sizeof up);
  char spec[4096];
  if (upcycle_spec) {
    if (strlen(upcycle_spec) >= sizeof spec) return bad_usage("--upcycle options are too long", NULL);
    strcpy(spec, upcycle_spec);
    char *words[128];
    int count = 0;
    for (char *w = strtok(spec, " \t\n"); w; w = strtok(NULL, " \t\n")) {
      if (count == 128) return bad_usage("--upcycle has too many words", NULL);
      words[count++] = w;
    }
    const cli_option upcycle_options[] = { UPCYCLE_OPTIONS(&up), OPT_END };
    int extra = 0;
    if (cli_parse(count, words, upcycle_options, NULL, 0, &extra, NULL)) return 2;
    upcycle_options_finish(&up);
  }
  model_flags mf = { threads, MOE_DTYPE_F32, 0, upcycle_spec && !resume ? &up : NULL };
  moe_runtime *rt = NULL;
  moe_model *model = NULL;
  if (!open_model(resume ? out : model_path, &mf, &rt, &model)) return 1;

  size_t length = 0;
  char *text = read_data(data, &length);
  if (!text) { moe_model_free(model); moe_runtime_free(rt); return 1; }
  moe_trainer *trainer = NULL;
  moe_status st;
  if (ids) {
    size_t count = 0;
    int32_t *tokens = parse_token_ids(text, length, data, &count);
    if (!tokens) { free(text); moe_model_free(model); moe_runtime_free(rt); return 1; }
    st = moe_trainer_create(&trainer, model, tokens, count, &tp);
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

  cli_handle_signals();
  uint64_t step = 0, saved = 0;
  moe_trainer_get_step(&step, trainer);
  if (resume) saved = step;
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
    if (cli_signal()) {
      fprintf(stderr, "moeupcycle: stopped by a signal after step %llu; ", (unsigned long long)step);
      if (saved) fprintf(stderr, "'%s' holds the checkpoint of step %llu\n", out, (unsigned long long)saved);
      else fprintf(stderr, "no checkpoint was saved\n");
      rc = 128 + cli_signal();
      break;
    }
    moe_train_stats s;
    memset(&s, 0, sizeof s);
    s.struct_size = sizeof s;
    st = moe_trainer_step(&s, trainer);
    if (st != MOE_OK) { rc = fail(st); break; }
    step = s.step;
    if (s.skipped) {
      printf("step %5llu/%u  skipped: loss %.4g, grad-norm %.4g are not finite\n", (unsigned long long)s.step,
             tp.steps, s.loss, s.grad_norm);
    } else {
      printf("step %5llu/%u  loss %.4f  aux %.3f  z %.3f  lr %.3g  grad-norm %.3f  load %.2f  %.0f tok/s\n",
             (unsigned long long)s.step, tp.steps, s.loss, s.aux_loss, s.z_loss, s.lr, s.grad_norm,
             s.max_expert_load, s.tokens_per_second);
    }
    fflush(stdout);
    if (log) {
      /* JSON has no NaN: a skipped step's non-finite loss or norm is null. */
      char loss[32], norm[32];
      json_number(loss, sizeof loss, s.loss, "%.6f");
      json_number(norm, sizeof norm, s.grad_norm, "%.6f");
      fprintf(log, "{\"step\": %llu, \"loss\": %s, \"aux_loss\": %.6f, \"z_loss\": %.6f, \"lr\": %.6g, \"grad_norm\": %s,"
              " \"max_expert_load\": %.4f, \"tokens_per_second\": %.2f, \"skipped\": %s}\n", (unsigned long long)s.step,
              loss, s.aux_loss, s.z_loss, s.lr, norm, s.max_expert_load, s.tokens_per_second,
              s.skipped ? "true" : "false");
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
      saved = step;
      printf("saved %s at step %llu\n", out, (unsigned long long)step);
    }
  }
  if (log) fclose(log);
  moe_trainer_free(trainer);
  moe_model_free(model);
  moe_runtime_free(rt);
  return rc;
}
