// Tests of the C++ wrapper (no framework). Prints "N passed, N failed".
#include <cmath>
#include <cstdio>
#include <fstream>
#include <string>
#include <type_traits>
#include <vector>
#include "moeupcycle.hpp"

namespace mu = moeupcycle;

static int g_pass = 0, g_fail = 0;
#define CHECK(cond)                                                          \
  do {                                                                       \
    if (cond) {                                                              \
      ++g_pass;                                                              \
    } else {                                                                 \
      ++g_fail;                                                              \
      std::fprintf(stderr, "FAIL %s:%d: %s\n", __FILE__, __LINE__, #cond);   \
    }                                                                        \
  } while (0)

// Move-only handles.
static_assert(!std::is_copy_constructible<mu::Runtime>::value, "Runtime copyable");
static_assert(!std::is_copy_assignable<mu::Runtime>::value, "Runtime copy-assignable");
static_assert(std::is_nothrow_move_constructible<mu::Runtime>::value, "Runtime not movable");
static_assert(std::is_nothrow_move_assignable<mu::Runtime>::value, "Runtime not move-assignable");
static_assert(!std::is_copy_constructible<mu::MoELayer>::value, "MoELayer copyable");
static_assert(!std::is_copy_assignable<mu::MoELayer>::value, "MoELayer copy-assignable");
static_assert(std::is_nothrow_move_constructible<mu::MoELayer>::value, "MoELayer not movable");
static_assert(std::is_nothrow_move_assignable<mu::MoELayer>::value, "MoELayer not move-assignable");
static_assert(!std::is_copy_constructible<mu::Model>::value, "Model copyable");
static_assert(std::is_nothrow_move_constructible<mu::Model>::value, "Model not movable");
static_assert(!std::is_copy_constructible<mu::Trainer>::value, "Trainer copyable");
static_assert(std::is_nothrow_move_constructible<mu::Trainer>::value, "Trainer not movable");
static_assert(std::is_base_of<std::runtime_error, mu::Error>::value, "Error base");

static bool all_finite(const std::vector<float>& v) {
  for (float f : v)
    if (!std::isfinite(f)) return false;
  return true;
}

static void test_invalid_config(mu::Runtime& rt) {
  bool thrown = false;
  try {
    mu::MoELayer bad(rt, mu::LayerConfig(0, 32, 4, 2));  // hidden = 0
  } catch (const mu::Error& e) {
    thrown = true;
    CHECK(e.code() == MOE_ERR_INVALID_ARGUMENT);
    CHECK(std::string(e.what()).size() > 0);
    std::printf("  invalid config -> code %d: %s\n", int(e.code()), e.what());
  }
  CHECK(thrown);

  // check() itself.
  thrown = false;
  try {
    mu::check(MOE_ERR_NULL_POINTER);
  } catch (const mu::Error& e) {
    thrown = true;
    CHECK(e.code() == MOE_ERR_NULL_POINTER);
  }
  CHECK(thrown);
  mu::check(MOE_OK);  // must not throw
}

static void test_layer(mu::Runtime& rt) {
  const size_t H = 8, F = 16, E = 4, K = 2, T = 3;
  mu::MoELayer layer(rt, mu::LayerConfig(H, F, E, K));
  CHECK(layer.hidden() == H);
  CHECK(layer.weight_count(MOE_WEIGHT_ROUTER) == E * H);
  CHECK(layer.weight_count(MOE_WEIGHT_GATE, 0) == F * H);
  layer.init_random(7, 0.2f);

  // set_weight / weight round trip on one expert.
  std::vector<float> w(F * H);
  for (size_t i = 0; i < w.size(); ++i) w[i] = 0.01f * float(i % 13) - 0.05f;
  layer.set_weight(MOE_WEIGHT_UP, 1, w.data(), w.size());
  CHECK(layer.weight(MOE_WEIGHT_UP, 1) == w);
  // Wrong count -> MOE_ERR_SHAPE.
  bool thrown = false;
  try {
    layer.set_weight(MOE_WEIGHT_UP, 1, w.data(), w.size() - 1);
  } catch (const mu::Error& e) {
    thrown = true;
    CHECK(e.code() == MOE_ERR_SHAPE);
  }
  CHECK(thrown);

  std::vector<float> x(T * H);
  for (size_t i = 0; i < x.size(); ++i) x[i] = std::cos(0.5f * float(i));
  std::vector<float> out(T * H, NAN);
  layer.forward(x.data(), T, out.data());
  CHECK(all_finite(out));
  double norm = 0;
  for (float v : out) norm += double(v) * v;
  CHECK(norm > 0);

  // Vector form matches the pointer form (deterministic).
  CHECK(layer.forward(x) == out);

  // Forward with SAVE, then backward and gradients.
  layer.zero_grad();
  std::vector<float> out2 = layer.forward(x, MOE_FORWARD_SAVE);
  CHECK(out2 == out);
  std::vector<float> gout(T * H, 1.0f);
  std::vector<float> gx = layer.backward(gout);
  CHECK(gx.size() == T * H);
  CHECK(all_finite(gx));
  std::vector<float> gr = layer.grad(MOE_WEIGHT_ROUTER);
  CHECK(gr.size() == E * H);
  CHECK(all_finite(gr));
  double gsum = 0;
  for (float v : layer.grad(MOE_WEIGHT_DOWN)) gsum += std::fabs(v);
  CHECK(gsum > 0);
  std::vector<float> gd0(H * F);
  layer.grad(MOE_WEIGHT_DOWN, 0, gd0.data(), gd0.size());
  CHECK(all_finite(gd0));

  // Backward again without a saved forward -> INVALID_ARGUMENT.
  thrown = false;
  try {
    layer.backward(gout);
  } catch (const mu::Error& e) {
    thrown = true;
    CHECK(e.code() == MOE_ERR_INVALID_ARGUMENT);
  }
  CHECK(thrown);

  moe_layer_stats st = layer.stats();
  CHECK(st.tokens == T);

  // Moving transfers ownership; the moved-from handle is empty.
  moe_layer* raw = layer.get();
  mu::MoELayer moved(std::move(layer));
  CHECK(moved.get() == raw);
  CHECK(layer.get() == nullptr);  // NOLINT(bugprone-use-after-move)
  mu::MoELayer other(rt, mu::LayerConfig(H, F, E, K));
  other = std::move(moved);  // frees other's old layer
  CHECK(other.get() == raw);
  CHECK(other.forward(x) == out);
}

static void test_runtime_move() {
  mu::Runtime a(1);
  moe_runtime* raw = a.get();
  CHECK(raw != nullptr);
  mu::Runtime b(std::move(a));
  CHECK(b.get() == raw);
  CHECK(a.get() == nullptr);  // NOLINT(bugprone-use-after-move)
  CHECK(b.info().workers == 1);
}

static void test_model(mu::Runtime& rt) {
  const std::string path = ".cache/materials/SmolLM2-135M-Instruct.Q4_1.gguf";
  if (!std::ifstream(path).good()) {
    std::printf("  SKIP model tests: %s not found\n", path.c_str());
    return;
  }
  mu::Model model(rt, path);
  std::vector<int32_t> ids = model.tokenize("The capital of France is");
  CHECK((ids == std::vector<int32_t>{504, 3575, 282, 4649, 314}));
  CHECK(model.detokenize(ids) == "The capital of France is");
  std::vector<float> lg = model.logits(ids);
  CHECK(lg.size() == ids.size() * model.info().vocab_size);
  CHECK(all_finite(lg));
  std::string gen = model.generate("The capital of France is", 3, 0.0f);
  std::printf("  generate -> \"%s\"\n", gen.c_str());
  CHECK(gen.rfind(" Paris", 0) == 0);
}

int main() {
  try {
    mu::Runtime rt(2);
    test_invalid_config(rt);
    test_layer(rt);
    test_runtime_move();
    test_model(rt);
  } catch (const mu::Error& e) {
    ++g_fail;
    std::fprintf(stderr, "FAIL: unexpected Error %d: %s\n", int(e.code()), e.what());
  }
  std::printf("%d passed, %d failed\n", g_pass, g_fail);
  return g_fail == 0 ? 0 : 1;
}
