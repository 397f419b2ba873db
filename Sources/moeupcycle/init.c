/*
 * moeupcycle init: a new model with random weights and the tokenizer of an
 * existing one (moe_init_model), for pretraining from scratch.
 */
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include "cli.h"

static void init_usage(FILE *f) {
  fprintf(f,
    "usage: moeupcycle init --vocab-from MODEL OUT [options]\n"
    "Writes an HF checkpoint with random weights (N(0, std^2) matrices, unit norms)\n"
    "and the tokenizer (and vocabulary) of MODEL (an HF directory or a .gguf file).\n"
    "  --arch A               llama | mixtral | qwen2-moe (default llama; mixtral and\n"
    "                         qwen2-moe make every layer MoE)\n"
    "  --hidden H             hidden size (default 256)\n"
    "  --layers L             decoder layers (default 4)\n"
    "  --heads N              attention heads (default 4)\n"
    "  --kv-heads N           key/value heads (default: --heads)\n"
    "  --head-dim D           (default hidden / heads)\n"
    "  --ffn F                dense FFN or expert intermediate size (default 8/3 H, a multiple of 64)\n"
    "  --experts E            routed experts (default 8 for mixtral and qwen2-moe)\n"
    "  --top-k K              experts per token (default 2)\n"
    "  --shared-ffn S         qwen2-moe shared expert size (default --ffn)\n"
    "  --routing R            softmax-topk-renorm | softmax-topk | topk-softmax\n"
    "  --max-positions N      context length (default 2048)\n"
    "  --rope-theta T         (default 10000)\n"
    "  --rms-norm-eps E       (default 1e-5)\n"
    "  --untied               a separate LM head (default: tied to the embedding)\n"
    "  --init-std S           std of the weight matrices (default 0.02)\n"
    "  --aux-loss-coef C      router_aux_loss_coef recorded in the config (default 0.02)\n"
    "  --dtype D              f32 | bf16 (default f32)\n"
    "  --max-shard-size BYTES shard limit of the safetensors files (default 4 GiB)\n"
    "  --seed N               same seed = byte-identical weights (default 0)\n"
    "  --force                replace an existing output directory\n");
}

int cmd_init(int argc, char **argv) {
  moe_init_params p;
  moe_init_params_init(&p, sizeof p);
  const char *arch = "llama", *vocab = NULL;
  int32_t untied = 0;
  uint32_t experts = UINT32_MAX;
  const cli_option options[] = {
    OPT_STRING("--arch", &arch),
    OPT_STRING("--vocab-from", &vocab),
    OPT_U32("--hidden", &p.hidden_size),
    OPT_U32("--layers", &p.num_layers),
    OPT_U32("--heads", &p.num_heads),
    OPT_U32("--kv-heads", &p.num_kv_heads),
    OPT_U32("--head-dim", &p.head_dim),
    OPT_U32("--ffn", &p.intermediate_size),
    OPT_U32("--experts", &experts),
    OPT_U32("--top-k", &p.top_k),
    OPT_U32("--shared-ffn", &p.shared_expert_size),
    OPT_ENUM("--routing", &p.routing, routing),
    OPT_U32("--max-positions", &p.max_positions),
    OPT_DOUBLE("--rope-theta", &p.rope_theta),
    OPT_DOUBLE("--rms-norm-eps", &p.rms_norm_eps),
    OPT_FLAG("--untied", &untied),
    OPT_DOUBLE("--init-std", &p.init_std),
    OPT_DOUBLE("--aux-loss-coef", &p.aux_loss_coef),
    OPT_ENUM("--dtype", &p.dtype, dtype),
    OPT_U64("--max-shard-size", &p.max_shard_bytes),
    OPT_U64("--seed", &p.seed),
    OPT_FLAG("--force", &p.force),
    OPT_END,
  };
  const char *paths[1] = { NULL };
  int n = 0, help = 0;
  if (cli_parse(argc, argv, options, paths, 1, &n, &help)) return 2;
  if (help) { init_usage(stdout); return 0; }
  if (n < 1) return bad_usage("init needs OUT", NULL);
  if (!vocab) return bad_usage("init needs --vocab-from MODEL (the tokenizer and vocabulary to use)", NULL);
  if (strcmp(arch, "llama") == 0) {
    if (experts != UINT32_MAX && experts != 0)
      return bad_usage("--arch llama is dense; use --arch mixtral or qwen2-moe for experts", NULL);
    p.num_experts = 0;
  } else if (strcmp(arch, "mixtral") == 0 || strcmp(arch, "qwen2-moe") == 0) {
    p.num_experts = experts == UINT32_MAX ? 8 : experts;
    if (p.num_experts == 0) return bad_usage("an MoE architecture needs --experts of at least 1", NULL);
    if (cli_parse_format(&p.format, arch) != MOE_OK) return bad_usage("unknown --arch", arch);
  } else {
    return bad_usage("--arch must be llama, mixtral or qwen2-moe", arch);
  }
  p.tie_embeddings = untied ? 0 : 1;
  cli_handle_signals();
  moe_init_result res;
  memset(&res, 0, sizeof res);
  res.struct_size = sizeof res;
  moe_status st = moe_init_model(&res, vocab, paths[0], &p);
  if (st != MOE_OK) return fail(st);
  char written[32];
  human_bytes((double)res.bytes_written, written, sizeof written);
  printf("initialized %s (%s, seed %llu): %.2fM parameters (%.2fM active), %s in %u shard%s, %.2f s\n",
         paths[0], arch, (unsigned long long)p.seed, res.parameters / 1e6, res.active_parameters / 1e6, written,
         res.shards, res.shards == 1 ? "" : "s", res.seconds);
  return 0;
}
