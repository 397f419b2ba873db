/* Consumer of the installed library, built through find_package(moeupcycle)
 * and through pkg-config: the library's version is the header's, and a
 * runtime can be created and freed. */
#include <moeupcycle.h>

#include <stdio.h>
#include <string.h>

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
  moe_runtime *rt = NULL;
  moe_status st = moe_runtime_create(&rt, NULL);
  if (st != MOE_OK || rt == NULL) {
    fprintf(stderr, "moe_runtime_create: %d: %s\n", (int)st, moe_last_error());
    return 1;
  }
  moe_runtime_free(rt);
  printf("moeupcycle %s\n", v);
  return 0;
}
