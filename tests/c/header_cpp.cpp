// The public header compiles cleanly as C++17 with -Wall -Wextra -pedantic -Werror.
#include "moeupcycle.h"
#include <cstdio>
#include <cstring>

int main() {
  moe_upcycle_params p{};
  moe_upcycle_params_init(&p, sizeof p);
  moe_upcycle_result r{};
  r.struct_size = sizeof r;
  moe_status st = moe_upcycle(&r, nullptr, "out", &p);
  if (st != MOE_ERR_NULL_POINTER || std::strstr(moe_last_error(), "input_path") == nullptr) {
    std::fprintf(stderr, "unexpected status %d: %s\n", static_cast<int>(st), moe_last_error());
    return 1;
  }
  if (std::strcmp(moe_status_string(MOE_ERR_EXISTS), "output exists") != 0) return 1;
  std::puts("header_cpp: ok");
  return 0;
}
