/*
 * moeupcycle info: what a checkpoint is.
 */
#include <stdio.h>
#include <string.h>

#include "cli.h"

int cmd_info(int argc, char **argv) {
  int32_t json = 0;
  int help = 0, n = 0;
  const char *path = NULL;
  const cli_option options[] = { OPT_FLAG("--json", &json), OPT_END };
  if (cli_parse(argc, argv, options, &path, 1, &n, &help)) return 2;
  if (help) { printf("usage: moeupcycle info PATH [--json]\n"); return 0; }
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
