/*
 * moeupcycle eval, generate and bench decode: running dense and MoE models.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cli.h"
#include "moeupcycle.h"

/* Options every model command takes. */
typedef struct model_flags {
  const char *path;
  uint32_t threads;
  int32_t weight_dtype;
  int json;
} model_flags;

/* Consumes a shared model option at argv[*i]: 1 consumed, 0 not one, -1 usage error. */
static int parse_model_option(int argc, char **argv, int *i, model_flags *f) {
  const char *opt = argv[*i];
  const char *val = (*i + 1 < argc) ? argv[*i + 1] : NULL;
  if (strcmp(opt, "--json") == 0) { f->json = 1; return 1; }
  if (strcmp(opt, "--threads") == 0) {
    if (!val || !parse_u32(val, &f->threads)) { bad_usage("invalid value for option", opt); return -1; }
    (*i)++;
    return 1;
  }
  if (strcmp(opt, "--dtype") == 0) {
    if (val && strcmp(val, "f32") == 0) f->weight_dtype = MOE_DTYPE_F32;
    else if (val && strcmp(val, "bf16") == 0) f->weight_dtype = MOE_DTYPE_BF16;
    else { bad_usage("invalid value for option", opt); return -1; }
    (*i)++;
    return 1;
  }
  if (opt[0] != '-' && !f->path) { f->path = opt; return 1; }
  return 0;
}

/* Creates the runtime and loads the model; prints the error and returns 0 on failure. */
static int open_model(const model_flags *f, moe_runtime **rt, moe_model **model) {
  moe_runtime_params rp;
  moe_runtime_params_init(&rp);
  rp.threads = f->threads;
  moe_status st = moe_runtime_create(rt, &rp);
  if (st != MOE_OK) { fail(st); return 0; }
  moe_model_params mp;
  moe_model_params_init(&mp);
  mp.weight_dtype = f->weight_dtype;
  st = moe_model_load(model, *rt, f->path, &mp);
  if (st != MOE_OK) { fail(st); moe_runtime_free(*rt); return 0; }
  return 1;
}

static char *read_file(const char *path, size_t *length) {
  FILE *fp = fopen(path, "rb");
  if (!fp) { fprintf(stderr, "moeupcycle: error: cannot open '%s': %s\n", path, strerror(errno)); return NULL; }
  size_t cap = 1 << 16, n = 0;
  char *buf = malloc(cap);
  while (buf) {
    size_t got = fread(buf + n, 1, cap - n, fp);
    n += got;
    if (n < cap) break;
    char *bigger = realloc(buf, cap * 2);
    if (!bigger) { free(buf); buf = NULL; break; }
    buf = bigger;
    cap *= 2;
  }
  fclose(fp);
  if (!buf) { fprintf(stderr, "moeupcycle: error: out of memory reading '%s'\n", path); return NULL; }
  *length = n;
  return buf;
}

/* ----------------------------------------------------------------- eval -- */

int cmd_eval(int argc, char **argv) {
  model_flags f = { NULL, 0, -1, 0 };
  const char *data = NULL;
  int ids = 0;
  moe_eval_params ep;
  moe_eval_params_init(&ep);
  for (int i = 0; i < argc; i++) {
    const char *opt = argv[i];
    const char *val = (i + 1 < argc) ? argv[i + 1] : NULL;
    int r = parse_model_option(argc, argv, &i, &f);
    if (r < 0) return 2;
    if (r > 0) continue;
    if (strcmp(opt, "--data") == 0 && val) { data = val; i++; }
    else if (strcmp(opt, "--ids") == 0) ids = 1;
    else if (strcmp(opt, "--seq-len") == 0 && val) {
      if (!parse_u32(val, &ep.seq_len)) return bad_usage("invalid value for option", opt);
      i++;
    } else if (strcmp(opt, "--max-tokens") == 0 && val) {
      uint64_t v;
      if (!parse_u64(val, &v)) return bad_usage("invalid value for option", opt);
      ep.max_tokens = v;
      i++;
    } else return bad_usage("unknown or incomplete option", opt);
  }
  if (!f.path || !data) return bad_usage("eval needs MODEL and --data FILE", NULL);
  size_t length = 0;
  char *text = read_file(data, &length);
  if (!text) return 1;
  if (length == 0) { free(text); fprintf(stderr, "moeupcycle: error: '%s' is empty\n", data); return 1; }
  moe_runtime *rt = NULL;
  moe_model *model = NULL;
  if (!open_model(&f, &rt, &model)) { free(text); return 1; }
  struct progress_state ps = { now_seconds(), -1 };
  if (isatty(2) && !f.json) { ep.progress = progress_bar; ep.user_data = &ps; }
  moe_eval_result r;
  memset(&r, 0, sizeof r);
  r.struct_size = sizeof r;
  moe_status st;
  if (ids) {
    /* Whitespace-separated token ids. */
    size_t cap = length / 2 + 1, n = 0;
    int32_t *tokens = malloc(cap * sizeof *tokens);
    char *p = text, *end = text + length;
    while (tokens && p < end) {
      while (p < end && (*p == ' ' || *p == '\n' || *p == '\t' || *p == '\r' || *p == ',')) p++;
      if (p >= end) break;
      char *stop = NULL;
      errno = 0;
      long v = strtol(p, &stop, 10);
      if (stop == p || errno || v < 0 || v > INT32_MAX) {
        fprintf(stderr, "moeupcycle: error: '%s' holds something that is not a token id near byte %zu\n",
                data, (size_t)(p - text));
        free(tokens); free(text); moe_model_free(model); moe_runtime_free(rt);
        return 1;
      }
      tokens[n++] = (int32_t)v;
      p = stop;
    }
    st = moe_model_eval_tokens(&r, model, tokens, n, &ep);
    free(tokens);
  } else {
    st = moe_model_eval_text(&r, model, text, length, &ep);
  }
  free(text);
  if (st != MOE_OK) { int rc = fail(st); moe_model_free(model); moe_runtime_free(rt); return rc; }
  moe_model_info info;
  memset(&info, 0, sizeof info);
  info.struct_size = sizeof info;
  moe_model_get_info(&info, model);
  if (f.json) {
    printf("{\"model\": ");
    json_string(stdout, f.path);
    printf(", \"tokens_scored\": %llu, \"windows\": %u, \"mean_nll\": %.6f, \"perplexity\": %.4f,\n",
           (unsigned long long)r.tokens_scored, r.windows, r.mean_nll, r.perplexity);
    printf(" \"seconds\": %.3f, \"tokens_per_second\": %.1f, \"balance\": %.4f, \"router\": [",
           r.seconds, r.tokens_per_second, r.balance);
    int first = 1;
    for (uint32_t l = 0; l < info.num_layers; l++) {
      uint64_t counts[4096];
      uint32_t experts = 0;
      moe_model_router_stats(model, l, counts, 4096, &experts);
      if (!experts) continue;
      printf("%s{\"layer\": %u, \"tokens_per_expert\": [", first ? "" : ", ", l);
      for (uint32_t e = 0; e < experts && e < 4096; e++) printf("%s%llu", e ? ", " : "", (unsigned long long)counts[e]);
      printf("]}");
      first = 0;
    }
    printf("]}\n");
  } else {
    printf("perplexity %.4f (mean NLL %.4f nats) over %llu tokens in %u windows; %.1f tokens/s\n",
           r.perplexity, r.mean_nll, (unsigned long long)r.tokens_scored, r.windows, r.tokens_per_second);
    if (info.num_moe_layers) {
      printf("router: balance figure %.3f (1 = even); busiest expert's share per layer:", r.balance);
      for (uint32_t l = 0; l < info.num_layers; l++) {
        uint64_t counts[4096], total = 0, most = 0;
        uint32_t experts = 0;
        moe_model_router_stats(model, l, counts, 4096, &experts);
        if (!experts) continue;
        for (uint32_t e = 0; e < experts && e < 4096; e++) { total += counts[e]; if (counts[e] > most) most = counts[e]; }
        printf(" %.2f", total ? (double)most * experts / (double)total : 0.0);
      }
      printf(" (x of an even share)\n");
    }
  }
  moe_model_free(model);
  moe_runtime_free(rt);
  return 0;
}

/* ------------------------------------------------------------- generate -- */

/* Growable text gathered from the streamed pieces (they equal the generated text). */
typedef struct text_sink { char *data; size_t length, capacity; int failed; } text_sink;

static int collect_token(int32_t token, const char *text, void *user_data) {
  (void)token;
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
  fputs(text, stdout);
  fflush(stdout);
  return 0;
}

static int parse_generate_option(int argc, char **argv, int *i, moe_generate_params *gp, const char **prompt) {
  const char *opt = argv[*i];
  const char *val = (*i + 1 < argc) ? argv[*i + 1] : NULL;
  double d;
  uint64_t u;
  if (strcmp(opt, "--chat") == 0) { gp->chat = 1; return 1; }
  if (!val) return 0;
  if (strcmp(opt, "--prompt") == 0) *prompt = val;
  else if (strcmp(opt, "--max-new-tokens") == 0 || strcmp(opt, "--tokens") == 0) {
    if (!parse_u32(val, &gp->max_new_tokens)) { bad_usage("invalid value for option", opt); return -1; }
  } else if (strcmp(opt, "--temperature") == 0) {
    if (!parse_double(val, &d)) { bad_usage("invalid value for option", opt); return -1; }
    gp->temperature = (float)d;
  } else if (strcmp(opt, "--top-k") == 0) {
    if (!parse_u32(val, &gp->top_k)) { bad_usage("invalid value for option", opt); return -1; }
  } else if (strcmp(opt, "--top-p") == 0) {
    if (!parse_double(val, &d)) { bad_usage("invalid value for option", opt); return -1; }
    gp->top_p = (float)d;
  } else if (strcmp(opt, "--seed") == 0) {
    if (!parse_u64(val, &u)) { bad_usage("invalid value for option", opt); return -1; }
    gp->seed = u;
  } else return 0;
  (*i)++;
  return 1;
}

int cmd_generate(int argc, char **argv) {
  model_flags f = { NULL, 0, -1, 0 };
  const char *prompt = NULL;
  moe_generate_params gp;
  moe_generate_params_init(&gp);
  for (int i = 0; i < argc; i++) {
    int r = parse_model_option(argc, argv, &i, &f);
    if (r == 0) r = parse_generate_option(argc, argv, &i, &gp, &prompt);
    if (r < 0) return 2;
    if (r == 0) return bad_usage("unknown or incomplete option", argv[i]);
  }
  if (!f.path || !prompt) return bad_usage("generate needs MODEL and --prompt TEXT", NULL);
  moe_runtime *rt = NULL;
  moe_model *model = NULL;
  if (!open_model(&f, &rt, &model)) return 1;
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
  if (st == MOE_OK && sink.failed) {
    fprintf(stderr, "moeupcycle: error: out of memory collecting the generated text\n");
    free(text); moe_model_free(model); moe_runtime_free(rt);
    return 1;
  }
  if (st != MOE_OK) { int rc = fail(st); free(text); moe_model_free(model); moe_runtime_free(rt); return rc; }
  static const char *reasons[] = { "length", "eos", "callback" };
  const char *reason = (r.stop_reason >= 0 && r.stop_reason <= 2) ? reasons[r.stop_reason] : "?";
  if (f.json) {
    printf("{\"prompt\": ");
    json_string(stdout, prompt);
    printf(", \"text\": ");
    json_string(stdout, text ? text : "");
    printf(", \"prompt_tokens\": %llu, \"generated_tokens\": %llu, \"prompt_seconds\": %.4f,"
           " \"decode_seconds\": %.4f, \"tokens_per_second\": %.2f, \"stop\": \"%s\"}\n",
           (unsigned long long)r.prompt_tokens, (unsigned long long)r.generated_tokens, r.prompt_seconds,
           r.decode_seconds, r.tokens_per_second, reason);
  } else {
    printf("\n");
    fflush(stdout);
    fprintf(stderr, "%llu prompt tokens in %.3f s; %llu generated at %.2f tokens/s (stop: %s)\n",
            (unsigned long long)r.prompt_tokens, r.prompt_seconds, (unsigned long long)r.generated_tokens,
            r.tokens_per_second, reason);
  }
  free(text);
  moe_model_free(model);
  moe_runtime_free(rt);
  return 0;
}

/* --------------------------------------------------------- bench decode -- */

int cmd_bench_decode(int argc, char **argv) {
  model_flags f = { NULL, 0, -1, 0 };
  const char *prompt = "The capital of France is";
  uint32_t stream_mib = 1024;
  moe_generate_params gp;
  moe_generate_params_init(&gp);
  gp.max_new_tokens = 64;
  gp.ignore_eos = 1;
  for (int i = 0; i < argc; i++) {
    if (strcmp(argv[i], "--stream-mib") == 0 && i + 1 < argc) {
      if (!parse_u32(argv[i + 1], &stream_mib) || stream_mib < 1) return bad_usage("invalid value for option", argv[i]);
      i++;
      continue;
    }
    int r = parse_model_option(argc, argv, &i, &f);
    if (r == 0) r = parse_generate_option(argc, argv, &i, &gp, &prompt);
    if (r < 0) return 2;
    if (r == 0) return bad_usage("unknown or incomplete option", argv[i]);
  }
  if (!f.path) return bad_usage("bench decode needs MODEL", NULL);
  moe_runtime *rt = NULL;
  moe_model *model = NULL;
  if (!open_model(&f, &rt, &model)) return 1;
  moe_runtime_info rinfo;
  memset(&rinfo, 0, sizeof rinfo);
  rinfo.struct_size = sizeof rinfo;
  moe_runtime_get_info(&rinfo, rt);
  moe_model_info info;
  memset(&info, 0, sizeof info);
  info.struct_size = sizeof info;
  moe_model_get_info(&info, model);
  moe_generate_result r;
  memset(&r, 0, sizeof r);
  r.struct_size = sizeof r;
  /* A short warm-up, then the measured run. */
  moe_generate_params warm = gp;
  warm.max_new_tokens = 4;
  moe_status st = moe_model_generate(&r, model, prompt, &warm, NULL, 0, NULL);
  if (st == MOE_OK) st = moe_model_generate(&r, model, prompt, &gp, NULL, 0, NULL);
  if (st != MOE_OK) { int rc = fail(st); moe_model_free(model); moe_runtime_free(rt); return rc; }
  moe_model_free(model);
  double stream = stream_bandwidth((size_t)stream_mib << 20, (int)rinfo.workers);
  moe_runtime_free(rt);
  double gbps = (double)info.weight_bytes_per_token * r.tokens_per_second / 1e9;
  const char *dtype = info.weight_dtype == MOE_DTYPE_BF16 ? "bf16" : "f32";
  if (f.json) {
    printf("{\"model\": ");
    json_string(stdout, f.path);
    printf(", \"threads\": %u, \"weight_dtype\": \"%s\", \"prompt_tokens\": %llu, \"generated_tokens\": %llu,"
           " \"prompt_seconds\": %.4f, \"decode_seconds\": %.4f, \"tokens_per_second\": %.3f,"
           " \"weight_bytes_per_token\": %llu, \"weight_read_gbps\": %.3f, \"stream_gbps\": %.3f,"
           " \"bandwidth_fraction\": %.4f}\n",
           rinfo.workers, dtype, (unsigned long long)r.prompt_tokens, (unsigned long long)r.generated_tokens,
           r.prompt_seconds, r.decode_seconds, r.tokens_per_second,
           (unsigned long long)info.weight_bytes_per_token, gbps, stream, stream > 0 ? gbps / stream : 0);
  } else {
    char wb[32];
    human_bytes((double)info.weight_bytes_per_token, wb, sizeof wb);
    printf("decode %s (%s weights, %u threads): %.2f tokens/s over %llu tokens after a %llu-token prompt\n",
           f.path, dtype, rinfo.workers, r.tokens_per_second, (unsigned long long)r.generated_tokens,
           (unsigned long long)r.prompt_tokens);
    printf("weights read per token %s -> %.2f GB/s; stream bandwidth %.2f GB/s; %.0f%% of it\n", wb, gbps,
           stream, stream > 0 ? 100 * gbps / stream : 0);
  }
  return 0;
}
