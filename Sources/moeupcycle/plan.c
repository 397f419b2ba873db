/*
 * moeupcycle plan: upcycle, train the MoE from scratch, or train the dense
 * model further? (moe_scaling_plan with a law file or the published laws)
 */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include "cli.h"

static void plan_usage(FILE *f) {
  fprintf(f,
    "usage: moeupcycle plan --dense-tokens D1 (--budget-tokens T | --budget-flops C)\n"
    "                       (--params N1 | --model DENSE [--experts E --top-k K]) [options]\n"
    "Predicts, with scaling laws, the held-out loss of three ways to spend a budget on a dense\n"
    "model of N1 parameters already trained on D1 tokens: upcycle it to an MoE, train the same\n"
    "MoE from scratch, or train the dense model further; and the D2 beyond which upcycling\n"
    "stops beating the MoE from scratch.\n"
    "  --dense-tokens D1      tokens the dense model was trained on\n"
    "  --budget-tokens T      each option trains T more tokens\n"
    "  --budget-flops C       training FLOPs (6 N per token; N: dense or MoE active parameters)\n"
    "  --params N1            the dense model's parameters\n"
    "  --active-params NA     parameters an MoE token runs through (FLOPs budgets)\n"
    "  --model DENSE          read N1 from a checkpoint; with --experts E --top-k K (default 8, 2)\n"
    "                         the MoE's active parameters: N1 + (K-1) FFN copies + routers\n"
    "  --law L                liew2025 (the published laws, default) or a law file (JSON)\n"
    "  --json                 one JSON object\n");
}

static void print_interval(double lo, double hi) {
  if (!isnan(lo)) printf(" [%.4f, %.4f]", lo, hi);
}

static void print_token_interval(double lo, double hi) {
  if (!isnan(lo)) printf(" [%.3g, %.3g]", lo, hi);
}

static const char *choice_name(int32_t best) {
  return best == MOE_PLAN_UPCYCLE ? "upcycle" : best == MOE_PLAN_SCRATCH ? "scratch" : "dense";
}

/* "key": value (null when not finite: JSON has no NaN or infinity), then ", " unless last. */
static void plan_number(const char *key, double v, int comma) {
  char text[64];
  json_number(text, sizeof text, v, "%.17g");
  printf("\"%s\": %s%s", key, text, comma ? ", " : "");
}

int cmd_plan(int argc, char **argv) {
  moe_plan_params p;
  moe_plan_params_init(&p, sizeof p);
  const char *law = "liew2025", *model = NULL;
  uint32_t experts = 8, top_k = 2;
  int32_t json = 0;
  const cli_option options[] = {
    OPT_DOUBLE("--dense-tokens", &p.dense_tokens),
    OPT_DOUBLE("--budget-tokens", &p.budget_tokens),
    OPT_DOUBLE("--budget-flops", &p.budget_flops),
    OPT_DOUBLE("--params", &p.dense_parameters),
    OPT_DOUBLE("--active-params", &p.active_parameters),
    OPT_STRING("--model", &model),
    OPT_U32("--experts", &experts),
    OPT_U32("--top-k", &top_k),
    OPT_STRING("--law", &law),
    OPT_FLAG("--json", &json),
    OPT_END,
  };
  int n = 0, help = 0;
  if (cli_parse(argc, argv, options, NULL, 0, &n, &help)) return 2;
  if (help) { plan_usage(stdout); return 0; }
  if (p.dense_tokens <= 0) return bad_usage("plan needs --dense-tokens D1", NULL);
  if (p.budget_tokens <= 0 && p.budget_flops <= 0) return bad_usage("plan needs --budget-tokens or --budget-flops", NULL);
  if (model) {
    moe_checkpoint_info info;
    memset(&info, 0, sizeof info);
    info.struct_size = sizeof info;
    moe_status st = moe_checkpoint_inspect(&info, model);
    if (st != MOE_OK) return fail(st);
    if (info.num_experts) return bad_usage("--model must be the dense model", model);
    if (top_k < 1 || top_k > experts) return bad_usage("--top-k must be in 1..--experts", NULL);
    double ffn = 3.0 * info.hidden_size * info.intermediate_size * info.num_layers;
    if (p.dense_parameters <= 0) p.dense_parameters = (double)info.param_count;
    if (p.active_parameters <= 0)
      p.active_parameters = (double)info.param_count + (top_k - 1) * ffn + (double)experts * info.hidden_size * info.num_layers;
  }
  if (p.dense_parameters <= 0) return bad_usage("plan needs --params N1 or --model DENSE", NULL);
  if (strcmp(law, "liew2025") != 0) p.law_file = law;
  moe_plan_result r;
  memset(&r, 0, sizeof r);
  r.struct_size = sizeof r;
  moe_status st = moe_scaling_plan(&r, &p);
  if (st != MOE_OK) return fail(st);
  if (json) {
    printf("{\"law\": \"%s\", ", law);
    plan_number("dense_tokens_before", p.dense_tokens, 1);
    plan_number("dense_parameters", p.dense_parameters, 1);
    plan_number("active_parameters", p.active_parameters, 1);
    printf("\"best\": \"%s\", \"bootstrap\": %u, ", choice_name(r.best), r.bootstrap);
    const char *names[4] = { "upcycled", "scratch", "scratch_all", "dense" };
    double v[4][4] = { { r.upcycled_tokens, r.upcycled_loss, r.upcycled_loss_low, r.upcycled_loss_high },
                       { r.scratch_tokens, r.scratch_loss, r.scratch_loss_low, r.scratch_loss_high },
                       { r.scratch_all_tokens, r.scratch_all_loss, r.scratch_all_loss_low, r.scratch_all_loss_high },
                       { r.dense_tokens, r.dense_loss, r.dense_loss_low, r.dense_loss_high } };
    for (int i = 0; i < 4; i++) {
      printf("\"%s\": {", names[i]);
      plan_number("tokens", v[i][0], 1);
      plan_number("loss", v[i][1], 1);
      plan_number("loss_low", v[i][2], 1);
      plan_number("loss_high", v[i][3], 0);
      printf("}, ");
    }
    plan_number("break_even_tokens", r.break_even_tokens, 1);
    printf("\"break_even\": \"%s\", ", r.break_even_tokens == 0 ? "never ahead"
           : isinf(r.break_even_tokens) ? "ahead up to 1e18" : "finite");
    plan_number("break_even_low", r.break_even_low, 1);
    plan_number("break_even_high", r.break_even_high, 1);
    plan_number("d2_exponent", r.d2_exponent, 0);
    printf("}\n");
    return 0;
  }
  printf("dense model of %.4g parameters trained on %.3g tokens; laws: %s%s\n", p.dense_parameters, p.dense_tokens,
         law, r.bootstrap ? " (intervals: 95% over bootstrap refits)" : "");
  printf("  upcycle to an MoE      %.3g tokens         loss %.4f", r.upcycled_tokens, r.upcycled_loss);
  print_interval(r.upcycled_loss_low, r.upcycled_loss_high);
  printf("\n  the MoE from scratch   %.3g tokens         loss %.4f", r.scratch_tokens, r.scratch_loss);
  print_interval(r.scratch_loss_low, r.scratch_loss_high);
  printf("\n  the dense model        %.3g tokens more    loss %.4f", r.dense_tokens, r.dense_loss);
  print_interval(r.dense_loss_low, r.dense_loss_high);
  printf("\n  best: %s (the dense model's pretraining already paid for)\n", choice_name(r.best));
  printf("  counting the dense pretraining too, the MoE from scratch on %.3g tokens reaches loss %.4f",
         r.scratch_all_tokens, r.scratch_all_loss);
  print_interval(r.scratch_all_loss_low, r.scratch_all_loss_high);
  printf("\n");
  if (r.break_even_tokens == 0)
    printf("  upcycling is not ahead of the MoE from scratch at any D2 from 1e3 tokens\n");
  else if (isinf(r.break_even_tokens))
    printf("  upcycling stays ahead of the MoE from scratch for every D2 up to 1e18 tokens\n");
  else {
    printf("  upcycling stops beating the MoE from scratch beyond D2 = %.3g tokens", r.break_even_tokens);
    print_token_interval(r.break_even_low, r.break_even_high);
    printf("\n");
  }
  printf("  exponent of D2 at this D1: %.4f\n", r.d2_exponent);
  return 0;
}
