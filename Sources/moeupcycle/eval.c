/*
 * moeupcycle eval: perplexity of a dense or MoE model on a text (or token
 * ids), with the router's tokens per expert per layer.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cli.h"

/* Tokens per expert of `layer` (a new array, *experts = E; NULL for a dense layer or on failure). */
static uint64_t *router_counts(moe_model *model, uint32_t layer, size_t *experts) {
  *experts = 0;
  if (moe_model_router_stats(model, layer, NULL, 0, experts) != MOE_OK || *experts == 0) return NULL;
  uint64_t *counts = calloc(*experts, sizeof *counts);
  if (counts && moe_model_router_stats(model, layer, counts, *experts, experts) != MOE_OK) {
    free(counts);
    counts = NULL;
  }
  return counts;
}

int cmd_eval(int argc, char **argv) {
  model_flags f = { 0, MOE_DTYPE_DEFAULT, 0, NULL };
  const char *data = NULL, *path = NULL;
  int32_t ids = 0;
  moe_eval_params ep;
  moe_eval_params_init(&ep, sizeof ep);
  const cli_option options[] = {
    MODEL_OPTIONS(&f),
    OPT_STRING("--data", &data),
    OPT_FLAG("--ids", &ids),
    OPT_U32("--seq-len", &ep.seq_len),
    OPT_U64("--max-tokens", &ep.max_tokens),
    OPT_DOUBLE("--held-out", &ep.held_out),
    OPT_END
  };
  int help = 0, n = 0;
  if (cli_parse(argc, argv, options, &path, 1, &n, &help)) return 2;
  if (help) {
    printf("usage: moeupcycle eval MODEL --data FILE [--seq-len T] [--max-tokens N] [--held-out F] [--ids] [--json]\n"
           "  --held-out F   score only the last fraction F of FILE's tokens: the part\n"
           "                 that `moeupcycle train --eval-fraction F` holds out\n");
    return 0;
  }
  if (!path || !data) return bad_usage("eval needs MODEL and --data FILE", NULL);
  if (!(ep.held_out >= 0 && ep.held_out < 1)) return bad_usage("--held-out must be in [0, 1)", NULL);
  size_t length = 0;
  char *text = read_file(data, &length);
  if (!text) return 1;
  if (length == 0) { free(text); fprintf(stderr, "moeupcycle: error: '%s' is empty\n", data); return 1; }
  int32_t *tokens = NULL;
  size_t count = 0;
  if (ids && !(tokens = parse_token_ids(text, length, data, &count))) { free(text); return 1; }
  moe_runtime *rt = NULL;
  moe_model *model = NULL;
  if (!open_model(path, &f, &rt, &model)) { free(text); free(tokens); return 1; }
  cli_handle_signals();
  struct progress_state ps = { now_seconds(), -1, isatty(2) && !f.json };
  ep.progress = progress_bar;
  ep.user_data = &ps;
  moe_eval_result r;
  memset(&r, 0, sizeof r);
  r.struct_size = sizeof r;
  moe_status st = ids ? moe_model_eval_tokens(&r, model, tokens, count, &ep)
                      : moe_model_eval_text(&r, model, text, length, &ep);
  free(tokens);
  free(text);
  if (st != MOE_OK) { int rc = fail(st); moe_model_free(model); moe_runtime_free(rt); return rc; }
  moe_model_info info;
  memset(&info, 0, sizeof info);
  info.struct_size = sizeof info;
  moe_model_get_info(&info, model);
  if (f.json) {
    printf("{\"model\": ");
    json_string(stdout, path);
    printf(", \"tokens_scored\": %llu, \"windows\": %u, \"mean_nll\": %.6f, \"perplexity\": %.4f,\n",
           (unsigned long long)r.tokens_scored, r.windows, r.mean_nll, r.perplexity);
    printf(" \"seconds\": %.3f, \"tokens_per_second\": %.1f, \"aux_loss\": %.4f, \"router\": [",
           r.seconds, r.tokens_per_second, r.aux_loss);
    int first = 1;
    for (uint32_t l = 0; l < info.num_layers; l++) {
      size_t experts = 0;
      uint64_t *counts = router_counts(model, l, &experts);
      if (!counts) continue;
      printf("%s{\"layer\": %u, \"tokens_per_expert\": [", first ? "" : ", ", l);
      for (size_t e = 0; e < experts; e++) printf("%s%llu", e ? ", " : "", (unsigned long long)counts[e]);
      printf("]}");
      first = 0;
      free(counts);
    }
    printf("]}\n");
  } else {
    printf("perplexity %.4f (mean NLL %.4f nats) over %llu tokens in %u windows; %.1f tokens/s\n",
           r.perplexity, r.mean_nll, (unsigned long long)r.tokens_scored, r.windows, r.tokens_per_second);
    if (info.num_moe_layers) {
      printf("router: load-balancing loss %.3f (1 = even); busiest expert's share per layer:", r.aux_loss);
      for (uint32_t l = 0; l < info.num_layers; l++) {
        size_t experts = 0;
        uint64_t *counts = router_counts(model, l, &experts);
        if (!counts) continue;
        uint64_t total = 0, most = 0;
        for (size_t e = 0; e < experts; e++) { total += counts[e]; if (counts[e] > most) most = counts[e]; }
        printf(" %.2f", total ? (double)most * experts / (double)total : 0.0);
        free(counts);
      }
      printf(" (x of an even share)\n");
    }
  }
  moe_model_free(model);
  moe_runtime_free(rt);
  return 0;
}
