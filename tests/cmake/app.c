/* Consumer of the installed library, built through find_package(moeupcycle)
 * and through pkg-config: the library's version is the header's, parameter
 * structs are filled by their sized _init, enum names come from the library,
 * and a runtime can be created, described (ask, then fill) and freed. */
#include <moeupcycle.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int fail(const char *what, moe_status st) {
  fprintf(stderr, "%s: %d: %s\n", what, (int)st, moe_last_error());
  return 1;
}

int main(void) {
  if (moe_version_number() != MOE_VERSION_NUMBER) {
    fprintf(stderr, "moe_version_number() = %u, header says %u\n",
            (unsigned)moe_version_number(), (unsigned)MOE_VERSION_NUMBER);
    return 1;
  }
  const char *v = moe_version_string();
  if (v == NULL || strcmp(v, MOE_VERSION_STRING) != 0) {
    fprintf(stderr, "moe_version_string() = %s, header says %s\n",
            v ? v : "(null)", MOE_VERSION_STRING);
    return 1;
  }

  moe_runtime_params p;
  moe_status st = moe_runtime_params_init(&p, sizeof p);
  if (st != MOE_OK) return fail("moe_runtime_params_init", st);
  if (p.struct_size != sizeof p || p.placement != MOE_PLACEMENT_DEFAULT) {
    fprintf(stderr, "moe_runtime_params_init: struct_size %zu, placement %d\n",
            p.struct_size, (int)p.placement);
    return 1;
  }
  st = moe_placement_from_name(&p.placement, "ROW_SLICE");
  if (st != MOE_OK) return fail("moe_placement_from_name", st);
  const char *name = moe_placement_name(p.placement);
  if (p.placement != MOE_PLACEMENT_ROW_SLICE || name == NULL || strcmp(name, "row-slice") != 0) {
    fprintf(stderr, "placement %d is named %s\n", (int)p.placement, name ? name : "(null)");
    return 1;
  }
  p.threads = 1;

  moe_runtime *rt = NULL;
  st = moe_runtime_create(&rt, &p);
  if (st != MOE_OK || rt == NULL) return fail("moe_runtime_create", st);
  size_t needed = 0;
  st = moe_runtime_describe(rt, NULL, MOE_TEXT_JSON, NULL, 0, &needed);
  if (st != MOE_OK || needed < 2) {
    moe_runtime_free(rt);
    return fail("moe_runtime_describe (asking)", st);
  }
  char *text = malloc(needed);
  st = text ? moe_runtime_describe(rt, NULL, MOE_TEXT_JSON, text, needed, &needed) : MOE_ERR_OUT_OF_MEMORY;
  const int ok = st == MOE_OK && text[0] == '{' && strlen(text) + 1 == needed;
  free(text);
  moe_runtime_free(rt);
  if (!ok) return fail("moe_runtime_describe", st);
  printf("moeupcycle %s\n", v);
  return 0;
}
