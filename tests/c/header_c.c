/* The public header compiles cleanly as C11 with -Wall -Wextra -pedantic -Werror,
 * and its version macros agree with the library. */
#include "moeupcycle.h"
#include <stdio.h>
#include <string.h>

int main(void) {
  moe_upcycle_params p;
  if (moe_upcycle_params_init(&p, sizeof p) != MOE_OK) return 1;
  if (p.struct_size != sizeof p || p.num_experts != 8 || p.top_k != 2 || p.ratio != 0.5 ||
      p.dtype != MOE_DTYPE_DEFAULT || p.format != MOE_FORMAT_MIXTRAL) {
    fprintf(stderr, "unexpected defaults\n");
    return 1;
  }
  if (moe_version_number() != MOE_VERSION_NUMBER || strcmp(moe_version_string(), MOE_VERSION_STRING) != 0) {
    fprintf(stderr, "header/library version mismatch\n");
    return 1;
  }
  moe_checkpoint_info info;
  memset(&info, 0, sizeof info);
  info.struct_size = sizeof info;
  moe_status st = moe_checkpoint_inspect(&info, "/nonexistent/model");
  if (st != MOE_ERR_NOT_FOUND || strstr(moe_last_error(), "does not exist") == NULL) {
    fprintf(stderr, "unexpected status %d: %s\n", (int)st, moe_last_error());
    return 1;
  }
  puts("header_c: ok");
  return 0;
}
