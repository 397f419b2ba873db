/*
 * moeupcycle — the command-line host of libmoeupcycle.
 * A plain C program that uses only the public header include/moeupcycle.h.
 * This file holds the usage text and the command table; each command lives
 * in its own file, helpers in cli_common.c, the option parser in options.c.
 */
#include <signal.h>
#include <stdio.h>
#include <string.h>

#include "cli.h"

static void usage(FILE *f) {
  fprintf(f,
    "moeupcycle %s — upcycle dense transformer checkpoints into Mixture-of-Experts models\n"
    "\n"
    "usage:\n"
    "  moeupcycle info PATH [--json]\n"
    "  moeupcycle upcycle IN OUT [options]          (OUT ending in .gguf: one GGUF file)\n"
    "  moeupcycle calibrate DENSE --data FILE --out STATS [--ids] [--tokens N] [--samples S]\n"
    "  moeupcycle export MODEL OUT.gguf [--type f32|f16|bf16|q8_0|q4_0|q4_1] [--force]\n"
    "  moeupcycle init --vocab-from MODEL OUT [--arch llama|mixtral|qwen2-moe] [--hidden H]\n"
    "                  [--layers L] [--heads N] [--ffn F] [--experts E] ... (init --help)\n"
    "  moeupcycle plan --dense-tokens D1 --budget-tokens T (--params N1 | --model DENSE)\n"
    "                  [--law liew2025|FILE] [--json] (plan --help)\n"
    "  moeupcycle study RECIPE.json --out DIR [--threads N] (study --help)\n"
    "  moeupcycle bench upcycle IN [options] [--work DIR] [--json]\n"
    "  moeupcycle bench moe [--tokens T --hidden H --ffn F --experts E --top-k K]\n"
    "                       [--threads N] [--backward] [--dtype f32|bf16] [--json] ...\n"
    "  moeupcycle eval MODEL --data FILE [--seq-len T] [--max-tokens N] [--ids] [--json]\n"
    "  moeupcycle generate MODEL --prompt TEXT [--max-new-tokens N] [--temperature T]\n"
    "                      [--top-k K] [--top-p P] [--seed N] [--chat] [--json]\n"
    "  moeupcycle bench decode MODEL [--tokens N] [--prompt TEXT] [--json]\n"
    "  moeupcycle train MODEL --data FILE --out DIR [--steps N] [--batch B] [--seq-len T]\n"
    "                   [--lr LR] [--train-only all|moe|routers] [--resume] ... (train --help)\n"
    "  moeupcycle bench train DENSE MOE [--batch B] [--seq-len T] [--micro-batch M] [--recompute]\n"
    "                          [--precision f32|bf16]\n"
    "                          [--steps N] [--json] (s/step, tokens/s, model FLOPs, MFU over\n"
    "                          the measured peak, activation memory)\n"
    "  moeupcycle topology [--json] [--threads N] [--placement P] [--hidden H --ffn F\n"
    "                      --experts E --top-k K] [--synthetic SPEC | --xml FILE]\n"
    "  moeupcycle version\n"
    "\n"
    "PATH / IN: an HF model directory (config.json + safetensors) or a .gguf file.\n"
    "Options take their value as '--name value' or '--name=value'.\n"
    "\n",
    moe_version_string());
  fprintf(f, "upcycle options:\n");
  fprintf(f, "  --experts E            routed experts (default 8)\n");
  fprintf(f, "  --top-k K              experts per token (default 2)\n");
  fprintf(f, "  --method M             %s (default copy)\n", enum_names(cli_name_method));
  fprintf(f, "  --ratio R              drop/noise: fraction of neurons re-drawn (default 0.5)\n");
  fprintf(f, "  --shared-indices       drop/noise: one index set per expert for gate, up and down\n");
  fprintf(f, "  --noise-std S          noise: std of the added noise (default 0.02)\n");
  fprintf(f, "  --granularity G        granular/partition: experts hold I/G neurons\n");
  fprintf(f, "  --granular-scaling S   %s (default down)\n", enum_names(cli_name_granular_scaling));
  fprintf(f, "  --partition-select S   %s (default random)\n", enum_names(cli_name_partition_select));
  fprintf(f, "  --disjoint             partition: every neuron in at most one expert\n");
  fprintf(f, "  --no-partition-scale   partition: do not rescale down_proj\n");
  fprintf(f, "  --layers SPEC          all | every:N | list such as 0,2,5-7 (default all)\n");
  fprintf(f, "  --router-init I        %s (default normal)\n", enum_names(cli_name_router_init));
  fprintf(f, "  --router-std S         router init std (default 0.02)\n");
  fprintf(f, "  --shared-expert        add a shared expert (Qwen2-MoE output)\n");
  fprintf(f, "  --routing R            softmax-topk-renorm | softmax-topk | topk-softmax\n");
  fprintf(f, "  --format F             %s (default mixtral)\n", enum_names(cli_name_format));
  fprintf(f, "  --dtype D              keep | f32 | bf16 | f16 (default keep)\n");
  fprintf(f, "  --aux-loss-coef C      router_aux_loss_coef recorded in the config (default 0.02)\n");
  fprintf(f, "  --max-shard-size BYTES shard limit of the safetensors files (default 4 GiB)\n");
  fprintf(f, "  --threads N            1 = no background thread (default 0: build and write overlap)\n");
  fprintf(f, "  --seed N               same seed = byte-identical output (default 0)\n");
  fprintf(f, "  --force                replace an existing output directory\n");
  fprintf(f, "calibration (data-aware upcycling):\n");
  fprintf(f, "  --calibration FILE     run the dense model over FILE (text; token ids with --ids)\n");
  fprintf(f, "  --calibration-tokens N tokens used from the start of FILE (default 16384)\n");
  fprintf(f, "  --calibration-samples S tokens whose activations are kept for clustering (default 256)\n");
  fprintf(f, "  --fire-quantile Q      |a| quantile per layer that counts as firing (default 0.9)\n");
  fprintf(f, "  --stats FILE           statistics saved by --save-stats instead of --calibration\n");
  fprintf(f, "  --save-stats FILE      save the collected statistics (safetensors)\n");
  fprintf(f, "  --importance S         %s: statistic of activation selection (default l2)\n", enum_names(cli_name_importance));
  fprintf(f, "  --shared-from-frequent F partition, qwen2-moe: the F most frequent neurons form the shared expert\n");
  fprintf(f, "  --drop-select S        %s (default random)\n", enum_names(cli_name_drop_select));
  fprintf(f, "  --router-prompts FILE  one line of prompts per expert (router init prompts)\n");
  fprintf(f, "  --router-negative-prompts FILE  one line per expert, subtracted\n");
  fprintf(f, "  --router-spread S      data-derived routers: std of a token's logits (default 1)\n");
  fprintf(f, "  --calibrated-scale     partition: fit down_proj's scale to the dense outputs on the data\n");
  fprintf(f,
    "\n"
    "MODEL: an HF directory (dense, or an upcycled Mixtral / Qwen2-MoE) or a .gguf file.\n"
    "eval, generate and bench decode take --threads N (default: one per core) and\n"
    "--dtype default|f32|bf16|q8_0|q4_0|q4_1 (weight storage; default: the checkpoint's:\n"
    "bf16 for bf16/f16 checkpoints, a GGUF's Q8_0/Q4_0/Q4_1 blocks kept quantized, else f32;\n"
    "the KV cache is f32 with f32 weights, else bf16).\n"
    "Run 'moeupcycle COMMAND --help' for the options of train, bench moe and topology.\n"
    "\n"
    "Outputs are written under a temporary name and renamed into place. SIGINT or\n"
    "SIGTERM stops a command cleanly (a second one at once); temporaries left by a\n"
    "killed run are removed by the next run to the same output.\n");
}

static int cmd_version(int argc, char **argv) {
  (void)argc;
  (void)argv;
  printf("moeupcycle %s (header %s)\n", moe_version_string(), MOE_VERSION_STRING);
  return moe_version_number() == MOE_VERSION_NUMBER ? 0 : 1;
}

static int cmd_bench(int argc, char **argv);

typedef struct command {
  const char *name;
  int (*run)(int argc, char **argv);
} command;

static const command commands[] = {
  { "info", cmd_info },
  { "upcycle", cmd_upcycle },
  { "calibrate", cmd_calibrate },
  { "export", cmd_export },
  { "init", cmd_init },
  { "plan", cmd_plan },
  { "study", cmd_study },
  { "bench", cmd_bench },
  { "topology", cmd_topology },
  { "eval", cmd_eval },
  { "generate", cmd_generate },
  { "train", cmd_train },
  { "version", cmd_version },
  { "--version", cmd_version },
};

static const command bench_commands[] = {
  { "upcycle", cmd_bench_upcycle },
  { "moe", cmd_bench_moe },
  { "decode", cmd_bench_decode },
  { "train", cmd_bench_train },
};

static int cmd_bench(int argc, char **argv) {
  for (size_t i = 0; argc >= 1 && i < sizeof bench_commands / sizeof bench_commands[0]; i++)
    if (strcmp(argv[0], bench_commands[i].name) == 0) return bench_commands[i].run(argc - 1, argv + 1);
  return bad_usage("bench needs a subject: upcycle, moe, decode or train", argc ? argv[0] : NULL);
}

int main(int argc, char **argv) {
  /* A file size limit (ulimit -f) makes writes fail with EFBIG, which the
   * library reports and cleans up after, instead of killing the process. */
  signal(SIGXFSZ, SIG_IGN);
  if (argc < 2) { usage(stderr); return 2; }
  const char *cmd = argv[1];
  if (strcmp(cmd, "help") == 0 || strcmp(cmd, "--help") == 0 || strcmp(cmd, "-h") == 0) { usage(stdout); return 0; }
  for (size_t i = 0; i < sizeof commands / sizeof commands[0]; i++)
    if (strcmp(cmd, commands[i].name) == 0) return commands[i].run(argc - 2, argv + 2);
  return bad_usage("unknown command", cmd);
}
