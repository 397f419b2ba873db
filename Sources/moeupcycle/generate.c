/*
 * moeupcycle generate: text from a prompt, streamed as it is generated.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"

/* Growable text gathered from the streamed pieces (they equal the generated text). */
typedef struct text_sink { char *data; size_t length, capacity; int failed; } text_sink;

static int collect_token(int32_t token, const char *text, void *user_data) {
  (void)token;
  if (cli_signal()) return 1;
  text_sink *sink = user_data;
  size_t n = strlen(text);
  if (sink->length + n + 1 > sink->capacity) {
    size_t capacity = (sink->length + n + 1) * 2;
    char *bigger = realloc(sink->data, capacity);
    if (!bigger) { sink->failed = 1; return 1; }
    sink->data = bigger;
    sink->capacity = capacity;
  }
  memcpy(sink->data + sink->length, text, n + 1);
  sink->length += n;
  return 0;
}

static int print_token(int32_t token, const char *text, void *user_data) {
  (void)token;
  (void)user_data;
  if (cli_signal()) return 1;
  fputs(text, stdout);
  fflush(stdout);
  return 0;
}

int cmd_generate(int argc, char **argv) {
  model_flags f = { 0, MOE_DTYPE_DEFAULT, 0, NULL };
  const char *path = NULL, *prompt = NULL;
  moe_generate_params gp;
  moe_generate_params_init(&gp, sizeof gp);
  const cli_option options[] = { MODEL_OPTIONS(&f), GENERATE_OPTIONS(&gp, &prompt), OPT_END };
  int help = 0, n = 0;
  if (cli_parse(argc, argv, options, &path, 1, &n, &help)) return 2;
  if (help) {
    printf("usage: moeupcycle generate MODEL --prompt TEXT [--max-new-tokens N] [--temperature T]\n"
           "                           [--top-k K] [--top-p P] [--seed N] [--chat] [--json]\n");
    return 0;
  }
  if (!path || !prompt) return bad_usage("generate needs MODEL and --prompt TEXT", NULL);
  moe_runtime *rt = NULL;
  moe_model *model = NULL;
  if (!open_model(path, &f, &rt, &model)) return 1;
  cli_handle_signals();
  text_sink sink = { NULL, 0, 0, 0 };
  if (f.json) {
    gp.on_token = collect_token;
    gp.user_data = &sink;
  } else {
    gp.on_token = print_token;
    fputs(prompt, stdout);
    fflush(stdout);
  }
  moe_generate_result r;
  memset(&r, 0, sizeof r);
  r.struct_size = sizeof r;
  moe_status st = moe_model_generate(&r, model, prompt, &gp, NULL, 0, NULL);
  char *text = sink.data;
  int rc = 0;
  if (st == MOE_OK && sink.failed) {
    fprintf(stderr, "moeupcycle: error: out of memory collecting the generated text\n");
    rc = 1;
  } else if (st != MOE_OK) {
    rc = fail(st);
  } else if (cli_signal() && r.stop_reason == MOE_STOP_CALLBACK) {
    if (!f.json) printf("\n");
    fprintf(stderr, "moeupcycle: stopped by a signal after %llu tokens\n", (unsigned long long)r.generated_tokens);
    rc = 128 + cli_signal();
  } else {
    const char *reason = moe_stop_reason_name(r.stop_reason);
    if (f.json) {
      printf("{\"prompt\": ");
      json_string(stdout, prompt);
      printf(", \"text\": ");
      json_string(stdout, text ? text : "");
      printf(", \"prompt_tokens\": %llu, \"generated_tokens\": %llu, \"prompt_seconds\": %.4f,"
             " \"decode_seconds\": %.4f, \"tokens_per_second\": %.2f, \"stop\": \"%s\"}\n",
             (unsigned long long)r.prompt_tokens, (unsigned long long)r.generated_tokens, r.prompt_seconds,
             r.decode_seconds, r.tokens_per_second, reason ? reason : "?");
    } else {
      printf("\n");
      fflush(stdout);
      fprintf(stderr, "%llu prompt tokens in %.3f s; %llu generated at %.2f tokens/s (stop: %s)\n",
              (unsigned long long)r.prompt_tokens, r.prompt_seconds, (unsigned long long)r.generated_tokens,
              r.tokens_per_second, reason ? reason : "?");
    }
  }
  free(text);
  moe_model_free(model);
  moe_runtime_free(rt);
  return rc;
}
