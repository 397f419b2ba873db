/*
 * moeupcycle topology: the runtime (NUMA nodes, pinned workers, OpenBLAS,
 * memory binding) and the placement plan of a layer shape.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"

static void topology_usage(FILE *out) {
  fprintf(out,
    "usage: moeupcycle topology [--json] [--threads N] [--placement P]\n"
    "                           [--hidden H --ffn F --experts E --top-k K [--shared-ffn S]]\n"
    "                           [--synthetic SPEC | --xml FILE]\n"
    "Prints NUMA nodes and cores, each worker's core and whether it is pinned,\n"
    "OpenBLAS kernels and threads, whether memory binding is effective, and with a\n"
    "layer shape the placement plan (P: %s).\n"
    "SPEC is an hwloc synthetic topology such as \"pack:2 [numa] core:4 pu:1\".\n",
    enum_names(cli_name_placement));
}

int cmd_topology(int argc, char **argv) {
  layer_flags f;
  layer_flags_init(&f);
  int32_t json = 0;
  const cli_option options[] = { LAYER_OPTIONS(&f), OPT_FLAG("--json", &json), OPT_END };
  int help = 0;
  if (cli_parse(argc, argv, options, NULL, 0, NULL, &help)) return 2;
  if (help) { topology_usage(stdout); return 0; }
  const moe_layer_config *c = &f.config;
  int has_shape = c->hidden_size || c->moe_intermediate_size || c->num_experts || c->top_k;
  if (has_shape && (!c->hidden_size || !c->moe_intermediate_size || !c->num_experts || !c->top_k))
    return bad_usage("a layer shape needs --hidden, --ffn, --experts and --top-k", NULL);
  moe_runtime *rt = NULL;
  moe_status st = layer_runtime(&f, &rt);
  if (st != MOE_OK) return fail(st);
  size_t needed = 0;
  const moe_layer_config *layer = has_shape ? c : NULL;
  moe_text_format fmt = json ? MOE_TEXT_JSON : MOE_TEXT_PLAIN;
  st = moe_runtime_describe(rt, layer, fmt, NULL, 0, &needed);
  char *text = st == MOE_OK ? malloc(needed) : NULL;
  if (st == MOE_OK && !text) st = MOE_ERR_OUT_OF_MEMORY;
  if (st == MOE_OK) st = moe_runtime_describe(rt, layer, fmt, text, needed, &needed);
  if (st == MOE_OK) fputs(text, stdout);
  free(text);
  moe_runtime_free(rt);
  return st == MOE_OK ? 0 : fail(st);
}
