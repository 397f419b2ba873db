// Minimal example: a small MoE layer with random weights, one forward, and
// which experts each token went to.
#include <cmath>
#include <cstdio>
#include <vector>
#include "moeupcycle.hpp"

int main() {
  try {
    namespace mu = moeupcycle;
    mu::Runtime rt(2);
    const size_t tokens = 3, hidden = 16, experts = 4;
    mu::MoELayer layer(rt, mu::LayerConfig(/*hidden_size*/ hidden, /*moe_intermediate_size*/ 32,
                                           /*num_experts*/ experts, /*top_k*/ 2)
                               .routing(mu::from_name<moe_routing>("softmax-topk-renorm")));
    layer.init_random(/*seed*/ 42, /*std*/ 0.1f);
    std::vector<float> x(tokens * hidden);
    for (size_t i = 0; i < x.size(); ++i) x[i] = std::sin(0.37f * float(i));
    std::vector<float> out(x.size());
    layer.forward(x.data(), tokens, out.data());
    double norm = 0;
    for (float v : out) norm += double(v) * v;
    std::printf("moeupcycle %s: %s routing, output norm = %.6f\n", mu::version().c_str(),
                mu::name(layer.config().routing).c_str(), std::sqrt(norm));
    const std::vector<float> weights = layer.routing();  // [tokens, experts]
    for (size_t t = 0; t < tokens; ++t) {
      std::printf("  token %zu:", t);
      for (size_t e = 0; e < experts; ++e)
        if (weights[t * experts + e] != 0.0f) std::printf(" expert %zu (%.3f)", e, weights[t * experts + e]);
      std::printf("\n");
    }
  } catch (const moeupcycle::Error& e) {
    std::fprintf(stderr, "error %d: %s\n", int(e.code()), e.what());
    return 1;
  }
  return 0;
}
