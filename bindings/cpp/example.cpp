// Minimal example: a small MoE layer with random weights, one forward.
#include <cmath>
#include <cstdio>
#include <vector>
#include "moeupcycle.hpp"

int main() {
  try {
    moeupcycle::Runtime rt(2);
    moeupcycle::MoELayer layer(rt, moeupcycle::LayerConfig(/*hidden*/ 16, /*ffn*/ 32,
                                                           /*experts*/ 4, /*top_k*/ 2));
    layer.init_random(/*seed*/ 42, /*std*/ 0.1f);
    const size_t tokens = 3, hidden = 16;
    std::vector<float> x(tokens * hidden);
    for (size_t i = 0; i < x.size(); ++i) x[i] = std::sin(0.37f * float(i));
    std::vector<float> out(x.size());
    layer.forward(x.data(), tokens, out.data());
    double norm = 0;
    for (float v : out) norm += double(v) * v;
    std::printf("moeupcycle %s: output norm = %.6f\n", moeupcycle::version().c_str(), std::sqrt(norm));
  } catch (const moeupcycle::Error& e) {
    std::fprintf(stderr, "error %d: %s\n", int(e.code()), e.what());
    return 1;
  }
  return 0;
}
