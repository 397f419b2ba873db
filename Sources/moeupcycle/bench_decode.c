/*
 * moeupcycle bench decode: batch-1 decode speed of a model, beside the
 * weight bytes read per token and the machine's streaming bandwidth.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"

/* Where the runtime runs quantized products ("avx512_vnni", "avx2",
 * "portable"), read from its JSON description into out; "" if not found. */
static void quantized_kernels(const moe_runtime *rt, char *out, size_t capacity) {
  out[0] = 0;
  size_t needed = 0;
  if (moe_runtime_describe(rt, NULL, MOE_TEXT_JSON, NULL, 0, &needed) != MOE_OK || needed == 0) return;
  char *text = malloc(needed);
  if (!text) return;
  if (moe_runtime_describe(rt, NULL, MOE_TEXT_JSON, text, needed, &needed) == MOE_OK) {
    const char *key = "\"quantized\": \"", *at = strstr(text, key);
    if (at) {
      at += strlen(key);
      size_t n = strcspn(at, "\"");
      if (n < capacity) {
        memcpy(out, at, n);
        out[n] = 0;
      }
    }
  }
  free(text);
}

int cmd_bench_decode(int argc, char **argv) {
  model_flags f = { 0, MOE_DTYPE_DEFAULT, 0, NULL };
  const char *path = NULL, *prompt = "The capital of France is";
  uint32_t stream_mib = 1024;
  moe_generate_params gp;
  moe_generate_params_init(&gp, sizeof gp);
  gp.max_new_tokens = 64;
  gp.ignore_eos = 1;
  const cli_option options[] = {
    MODEL_OPTIONS(&f), GENERATE_OPTIONS(&gp, &prompt), OPT_U32_IN("--stream-mib", &stream_mib, 1, 1u << 20), OPT_END
  };
  int help = 0, n = 0;
  if (cli_parse(argc, argv, options, &path, 1, &n, &help)) return 2;
  if (help) { printf("usage: moeupcycle bench decode MODEL [--tokens N] [--prompt TEXT] [--stream-mib M] [--json]\n"); return 0; }
  if (!path) return bad_usage("bench decode needs MODEL", NULL);
  moe_runtime *rt = NULL;
  moe_model *model = NULL;
  if (!open_model(path, &f, &rt, &model)) return 1;
  moe_runtime_info rinfo;
  memset(&rinfo, 0, sizeof rinfo);
  rinfo.struct_size = sizeof rinfo;
  moe_runtime_get_info(&rinfo, rt);
  moe_model_info info;
  memset(&info, 0, sizeof info);
  info.struct_size = sizeof info;
  moe_model_get_info(&info, model);
  char quantized[32];
  quantized_kernels(rt, quantized, sizeof quantized);
  int is_quantized = info.weight_dtype == MOE_DTYPE_Q8_0 || info.weight_dtype == MOE_DTYPE_Q4_0 ||
                     info.weight_dtype == MOE_DTYPE_Q4_1;
  /* The machine's multiply-add ceilings, before the timed run and again
   * after it (the larger is kept). */
  cli_peaks peaks = { 0, 0 };
  moe_status st = measure_peaks(rt, &peaks);
  if (st != MOE_OK) { int rc = fail(st); moe_model_free(model); moe_runtime_free(rt); return rc; }
  moe_generate_result r;
  memset(&r, 0, sizeof r);
  r.struct_size = sizeof r;
  /* A short warm-up, then the measured run. */
  moe_generate_params warm = gp;
  warm.max_new_tokens = 4;
  st = moe_model_generate(&r, model, prompt, &warm, NULL, 0, NULL);
  if (st == MOE_OK) st = moe_model_generate(&r, model, prompt, &gp, NULL, 0, NULL);
  if (st != MOE_OK) { int rc = fail(st); moe_model_free(model); moe_runtime_free(rt); return rc; }
  moe_model_free(model);
  double stream = stream_bandwidth((size_t)stream_mib << 20, (int)rinfo.workers);
  st = measure_peaks(rt, &peaks);
  moe_runtime_free(rt);
  if (st != MOE_OK) return fail(st);
  double prompt_tps = r.prompt_seconds > 0 ? (double)r.prompt_tokens / r.prompt_seconds : 0;
  double gbps = (double)info.weight_bytes_per_token * r.tokens_per_second / 1e9;
  const char *dtype = moe_dtype_name(info.weight_dtype);
  if (f.json) {
    printf("{\"model\": ");
    json_string(stdout, path);
    printf(", \"threads\": %u, \"weight_dtype\": \"%s\", \"prompt_tokens\": %llu, \"generated_tokens\": %llu,"
           " \"prompt_seconds\": %.4f, \"decode_seconds\": %.4f, \"tokens_per_second\": %.3f,"
           " \"weight_bytes_per_token\": %llu, \"weight_read_gbps\": %.3f, \"stream_gbps\": %.3f,"
           " \"bandwidth_fraction\": %.4f, \"prompt_tokens_per_second\": %.3f, ",
           rinfo.workers, dtype, (unsigned long long)r.prompt_tokens, (unsigned long long)r.generated_tokens,
           r.prompt_seconds, r.decode_seconds, r.tokens_per_second,
           (unsigned long long)info.weight_bytes_per_token, gbps, stream, stream > 0 ? gbps / stream : 0,
           prompt_tps);
    peaks_json(stdout, &peaks);
    printf(", \"kernel_path\": ");
    json_string(stdout, rinfo.kernel_path);
    printf(", \"kernel_quantized\": ");
    if (is_quantized) json_string(stdout, quantized); else printf("null");
    printf("}\n");
  } else {
    char wb[32];
    human_bytes((double)info.weight_bytes_per_token, wb, sizeof wb);
    printf("decode %s (%s weights, %u threads): %.2f tokens/s over %llu tokens after a %llu-token prompt\n",
           path, dtype, rinfo.workers, r.tokens_per_second, (unsigned long long)r.generated_tokens,
           (unsigned long long)r.prompt_tokens);
    printf("weights read per token %s -> %.2f GB/s; stream bandwidth %.2f GB/s; %.0f%% of it\n", wb, gbps,
           stream, stream > 0 ? 100 * gbps / stream : 0);
    printf("prompt %.2f tokens/s; kernels %s%s", prompt_tps, rinfo.kernel_path, rinfo.kernel_forced ? " (forced)" : "");
    if (is_quantized) printf(", integer products %s", quantized);
    printf("; ");
    peaks_text(stdout, &peaks);
    printf(" measured on %u threads (before and after, the larger kept)\n", rinfo.workers);
  }
  return 0;
}
