/*
 * moeupcycle study: run (or resume) an upcycling study from a recipe
 * (moe_study_run) and print its report.
 */
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "cli.h"

static void study_usage(FILE *f) {
  fprintf(f,
    "usage: moeupcycle study RECIPE.json --out DIR [--threads N] [--tokenizer MODEL] [--data PATH]\n"
    "Pretrains a dense model from scratch with snapshots at each D1, upcycles each snapshot with each\n"
    "method of the recipe and trains it for the D2 grid, and runs the baselines (the dense model\n"
    "continued, the same MoE from scratch); every run evaluates the same held-out split. Running\n"
    "again skips finished runs and resumes an interrupted one. Writes DIR/report.json, report.md\n"
    "and laws-METHOD.json (for moeupcycle plan --law); plots: python3 scripts/plot_study.py DIR.\n"
    "  --tokenizer MODEL      the model whose tokenizer the study uses (replaces the recipe's)\n"
    "  --data PATH            a text file or a directory of them (replaces the recipe's)\n"
    "  --threads N            workers (default: one per core)\n");
}

struct study_progress {
  char run[128];
  double started;
  int tty;
};

static int study_step(uint64_t done, uint64_t total, const char *run, void *user) {
  struct study_progress *s = user;
  if (strcmp(s->run, run) != 0) {
    if (s->run[0]) fprintf(stderr, "%s", s->tty ? "\n" : "");
    snprintf(s->run, sizeof s->run, "%s", run);
    s->started = now_seconds();
    if (!s->tty) fprintf(stderr, "run %s: %llu steps\n", run, (unsigned long long)total);
  }
  if (s->tty) {
    fprintf(stderr, "\rrun %-28s step %6llu/%-6llu %6.1f s", run, (unsigned long long)done,
            (unsigned long long)total, now_seconds() - s->started);
    fflush(stderr);
  }
  return cli_signal() ? 1 : 0;
}

int cmd_study(int argc, char **argv) {
  moe_study_params p;
  moe_study_params_init(&p, sizeof p);
  const char *out = NULL;
  const cli_option options[] = {
    OPT_STRING("--out", &out),
    OPT_STRING("--tokenizer", &p.tokenizer),
    OPT_STRING("--data", &p.data),
    OPT_U32("--threads", &p.threads),
    OPT_END,
  };
  const char *paths[1] = { NULL };
  int n = 0, help = 0;
  if (cli_parse(argc, argv, options, paths, 1, &n, &help)) return 2;
  if (help) { study_usage(stdout); return 0; }
  if (n < 1 || !out) return bad_usage("study needs RECIPE.json and --out DIR", NULL);
  cli_handle_signals();
  struct study_progress sp;
  memset(&sp, 0, sizeof sp);
  sp.tty = isatty(STDERR_FILENO);
  p.progress = study_step;
  p.user_data = &sp;
  moe_status st = moe_study_run(paths[0], out, &p);
  if (sp.tty && sp.run[0]) fprintf(stderr, "\n");
  if (st != MOE_OK) return fail(st);
  char report[4096];
  snprintf(report, sizeof report, "%s/report.md", out);
  FILE *f = fopen(report, "r");
  if (f) {
    char line[4096];
    while (fgets(line, sizeof line, f)) fputs(line, stdout);
    fclose(f);
  }
  printf("\nreport: %s/report.json, %s/report.md\n", out, out);
  return 0;
}
