// Tests of the C++ wrapper (no framework). Prints "N passed, N failed" and,
// when the SmolLM2 checkpoint is not available, says that its checks did not run.
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <string>
#include <type_traits>
#include <vector>
#include <filesystem>
#include <unistd.h>
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

// Runs `body`, which must throw an exception of type Ex; returns it through
// `caught` (the check fails when nothing or something else is thrown).
template <typename Ex, typename Body>
static bool throws(Body body, Ex* caught = nullptr) {
  try {
    body();
  } catch (const Ex& e) {
    if (caught) *caught = e;
    return true;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "  unexpected exception: %s\n", e.what());
    return false;
  }
  return false;
}

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
static_assert(std::is_base_of<mu::Error, mu::BufferTooSmall>::value, "BufferTooSmall base");

static bool all_finite(const std::vector<float>& v) {
  for (float f : v)
    if (!std::isfinite(f)) return false;
  return true;
}

static std::string upper(std::string s) {
  for (char& c : s)
    if (c >= 'a' && c <= 'z') c = char(c - 'a' + 'A');
  return s;
}

static std::string underscores(std::string s) {
  for (char& c : s)
    if (c == '-') c = '_';
  return s;
}

// For one enum: the library's names in value order are `expected` (the names
// the header lists at the enum), each one round-trips through from_name (also
// upper case and with '_'), the value one past the last has no name, and an
// unknown name is MOE_ERR_INVALID_ARGUMENT with a message listing the names.
template <typename E>
static void check_names(const char* what, const std::vector<std::string>& expected) {
  const std::vector<std::string> got = mu::names<E>();
  if (got != expected) std::fprintf(stderr, "  names of %s differ\n", what);
  CHECK(got == expected);
  for (size_t v = 0; v < got.size(); ++v) {
    const E value = static_cast<E>(v);
    CHECK(mu::name(value) == got[v]);
    CHECK(mu::from_name<E>(got[v]) == value);
    CHECK(mu::from_name<E>(upper(got[v])) == value);
    CHECK(mu::from_name<E>(underscores(got[v])) == value);
  }
  CHECK(throws<mu::Error>([&] { mu::name(static_cast<E>(got.size())); }));
  mu::Error e(MOE_OK, "");
  CHECK(throws<mu::Error>([] { mu::from_name<E>("no-such-name"); }, &e));
  CHECK(e.code() == MOE_ERR_INVALID_ARGUMENT);
  const std::string message = e.what();
  CHECK(message.find("no-such-name") != std::string::npos);
  for (const std::string& n : expected) CHECK(message.find(n) != std::string::npos);
}

static void test_names() {
  check_names<moe_dtype>("dtype", {"f32", "f16", "bf16", "q8_0", "q4_0", "q4_1"});
  check_names<moe_method>("method", {"copy", "drop", "noise", "granular", "partition"});
  check_names<moe_router_init>("router_init", {"normal", "uniform", "zeros", "kmeans", "prompts"});
  check_names<moe_routing>("routing", {"softmax-topk-renorm", "softmax-topk", "topk-softmax",
                                       "sigmoid-topk", "sigmoid-topk-renorm"});
  check_names<moe_format>("format", {"mixtral", "qwen2-moe"});
  check_names<moe_partition_select>("partition_select", {"random", "uniform", "importance", "activation", "cluster"});
  check_names<moe_granular_scaling>("granular_scaling", {"down", "cube-root", "none"});
  check_names<moe_importance>("importance", {"l1", "l2", "freq"});
  check_names<moe_drop_select>("drop_select", {"random", "least-important"});
  check_names<moe_placement>("placement", {"row-slice", "expert", "interleave", "none"});
  check_names<moe_text_format>("text_format", {"plain", "json"});
  check_names<moe_weight>("weight", {"router", "gate", "up", "down", "shared-gate", "shared-up",
                                     "shared-down", "shared-expert-gate"});
  check_names<moe_stop_reason>("stop_reason", {"length", "eos", "callback"});
  check_names<moe_train_only>("train_only", {"all", "moe", "routers"});
  check_names<moe_lr_schedule>("lr_schedule", {"cosine", "constant"});
  check_names<moe_nonfinite>("nonfinite", {"error", "skip"});

  // Values beside the canonical names.
  CHECK(mu::name(MOE_DTYPE_DEFAULT) == "default");
  CHECK(mu::name(MOE_PLACEMENT_DEFAULT) == "default");
  CHECK(mu::from_name<moe_dtype>("default") == MOE_DTYPE_DEFAULT);
  CHECK(mu::from_name<moe_dtype>("keep") == MOE_DTYPE_DEFAULT);
  CHECK(mu::from_name<moe_dtype>("AUTO") == MOE_DTYPE_DEFAULT);
  CHECK(mu::from_name<moe_dtype>("Q8-0") == MOE_DTYPE_Q8_0);
  CHECK(mu::from_name<moe_placement>("Default") == MOE_PLACEMENT_DEFAULT);
  CHECK(mu::from_name<moe_routing>("Softmax_TopK_Renorm") == MOE_ROUTING_SOFTMAX_TOPK_RENORM);
  CHECK(mu::from_name<moe_format>("qwen2_moe") == MOE_FORMAT_QWEN2_MOE);
  CHECK(throws<mu::Error>([] { mu::name(static_cast<moe_dtype>(-2)); }));
  CHECK(throws<mu::Error>([] { mu::from_name<moe_method>(""); }));
}

static void test_errors(mu::Runtime& rt) {
  mu::Error e(MOE_OK, "");
  CHECK(throws<mu::Error>([&] { mu::MoELayer bad(rt, mu::LayerConfig(0, 32, 4, 2)); }, &e));
  CHECK(e.code() == MOE_ERR_INVALID_ARGUMENT);
  CHECK(std::string(e.what()).find("hidden") != std::string::npos);
  std::printf("  invalid config -> code %d: %s\n", int(e.code()), e.what());
  CHECK(throws<mu::Error>([&] { mu::MoELayer bad(rt, mu::LayerConfig(16, 32, 4, 5)); }, &e));
  CHECK(std::string(e.what()).find("top_k") != std::string::npos);

  // check() itself: the status and its exception type.
  CHECK(throws<mu::Error>([] { mu::check(MOE_ERR_NUMERIC); }, &e));
  CHECK(e.code() == MOE_ERR_NUMERIC);
  CHECK(mu::status_string(MOE_ERR_NUMERIC).size() > 0);
  mu::BufferTooSmall b("", 0);
  CHECK(throws<mu::BufferTooSmall>([] { mu::check(MOE_ERR_BUFFER_TOO_SMALL, 17); }, &b));
  CHECK(b.code() == MOE_ERR_BUFFER_TOO_SMALL);
  CHECK(b.needed() == 17);
  mu::check(MOE_OK);  // must not throw

  // Unknown names fed to the library come back as its error.
  CHECK(throws<mu::Error>([] { mu::from_name<moe_method>("upcopy"); }, &e));
  CHECK(e.code() == MOE_ERR_INVALID_ARGUMENT);
  CHECK(std::string(e.what()).find("partition") != std::string::npos);
}

static void test_defaults() {
  const auto u = mu::defaults<moe_upcycle_params>();
  CHECK(u.struct_size == sizeof u);
  CHECK(u.num_experts == 8 && u.top_k == 2);
  CHECK(u.method == MOE_METHOD_COPY);
  CHECK(u.format == MOE_FORMAT_MIXTRAL);
  CHECK(u.dtype == MOE_DTYPE_DEFAULT);
  CHECK(u.routing == MOE_ROUTING_SOFTMAX_TOPK_RENORM);
  CHECK(std::fabs(u.aux_loss_coef - 0.02) < 1e-12);
  const auto t = mu::defaults<moe_trainer_params>();
  CHECK(t.struct_size == sizeof t);
  CHECK(t.on_nonfinite == MOE_NONFINITE_ERROR);
  CHECK(t.schedule == MOE_LR_COSINE);
  CHECK(t.train_only == MOE_TRAIN_ALL);
  const auto m = mu::defaults<moe_model_params>();
  CHECK(m.weight_dtype == MOE_DTYPE_DEFAULT);
  CHECK(m.placement == MOE_PLACEMENT_DEFAULT);
  CHECK(mu::defaults<moe_runtime_params>().placement == MOE_PLACEMENT_DEFAULT);
  const mu::LayerConfig c;
  CHECK(c.get().struct_size == sizeof(moe_layer_config));
  CHECK(c.get().placement == MOE_PLACEMENT_DEFAULT);
  CHECK(c.get().storage == MOE_DTYPE_F32);
  CHECK(std::fabs(c.get().aux_loss_coef - 0.01f) < 1e-7f);
  const auto g = mu::defaults<moe_generate_params>();
  CHECK(g.max_new_tokens == 64 && g.temperature == 0.0f && g.add_special != 0);
  const auto r = mu::result<moe_train_stats>();
  CHECK(r.struct_size == sizeof r && r.skipped == 0 && r.step == 0);
}

static void test_layer(mu::Runtime& rt) {
  const size_t H = 8, F = 16, E = 4, K = 2, T = 3;
  mu::MoELayer layer(rt, mu::LayerConfig(H, F, E, K).placement(MOE_PLACEMENT_NONE));
  CHECK(layer.hidden_size() == H);
  CHECK(layer.config().num_experts == E);
  CHECK(layer.config().placement == MOE_PLACEMENT_NONE);
  CHECK(layer.weight_count(MOE_WEIGHT_ROUTER) == E * H);
  CHECK(layer.weight_count(MOE_WEIGHT_GATE, 0) == F * H);
  CHECK(layer.weight_count(MOE_WEIGHT_GATE, MOE_ALL_EXPERTS) == E * F * H);
  layer.init_random(7, 0.2f);

  // set_weight / weight round trip on one expert.
  std::vector<float> w(F * H);
  for (size_t i = 0; i < w.size(); ++i) w[i] = 0.01f * float(i % 13) - 0.05f;
  layer.set_weight(MOE_WEIGHT_UP, 1, w.data(), w.size());
  CHECK(layer.weight(MOE_WEIGHT_UP, 1) == w);
  // Expert 1 is the second F*H block of the whole tensor.
  const std::vector<float> all_up = layer.weight(MOE_WEIGHT_UP);
  CHECK(all_up.size() == E * F * H);
  CHECK(std::vector<float>(all_up.begin() + F * H, all_up.begin() + 2 * F * H) == w);
  // Wrong count -> MOE_ERR_SHAPE.
  mu::Error e(MOE_OK, "");
  CHECK(throws<mu::Error>([&] { layer.set_weight(MOE_WEIGHT_UP, 1, w.data(), w.size() - 1); }, &e));
  CHECK(e.code() == MOE_ERR_SHAPE);

  // The output-buffer rule through caller memory: one float short is
  // BufferTooSmall with the size needed and nothing written; exact fits.
  std::vector<float> buf(F * H, -7.0f);
  mu::BufferTooSmall small("", 0);
  CHECK(throws<mu::BufferTooSmall>([&] { layer.weight(MOE_WEIGHT_UP, 1, buf.data(), F * H - 1); },
                                   &small));
  CHECK(small.code() == MOE_ERR_BUFFER_TOO_SMALL);
  CHECK(small.needed() == F * H);
  CHECK(std::string(small.what()).size() > 0);
  CHECK(buf == std::vector<float>(F * H, -7.0f));
  CHECK(layer.weight(MOE_WEIGHT_UP, 1, buf.data(), buf.size()) == F * H);
  CHECK(buf == w);
  CHECK(layer.weight(MOE_WEIGHT_UP, 1, nullptr, 0) == F * H);  // asking
  // A BufferTooSmall is an Error too.
  CHECK(throws<mu::Error>([&] { layer.grad(MOE_WEIGHT_ROUTER, MOE_ALL_EXPERTS, buf.data(), 3); }, &e));
  CHECK(e.code() == MOE_ERR_BUFFER_TOO_SMALL);

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
  CHECK(throws<mu::Error>([&] { layer.forward(std::vector<float>(H + 1)); }, &e));
  CHECK(e.code() == MOE_ERR_INVALID_ARGUMENT);

  // Routing: [T, E], K non-zero weights per token summing to 1 (renormalized).
  const std::vector<float> routing = layer.routing();
  CHECK(routing.size() == T * E);
  for (size_t t = 0; t < T; ++t) {
    size_t chosen = 0;
    double sum = 0;
    for (size_t x2 = 0; x2 < E; ++x2) {
      chosen += routing[t * E + x2] != 0.0f;
      sum += routing[t * E + x2];
    }
    CHECK(chosen == K);
    CHECK(std::fabs(sum - 1.0) < 1e-5);
  }
  std::vector<uint64_t> tpe;
  moe_layer_stats st = layer.stats(&tpe);
  CHECK(st.tokens == T);
  CHECK(st.assignments == T * K);
  CHECK(tpe.size() == E);
  uint64_t total = 0;
  for (uint64_t n : tpe) total += n;
  CHECK(total == T * K);
  CHECK(st.aux_loss > 0);
  CHECK(layer.stats().tokens == T);

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
  CHECK(layer.grad(MOE_WEIGHT_DOWN, 0, gd0.data(), gd0.size()) == H * F);
  CHECK(all_finite(gd0));
  const std::vector<float> gdall = layer.grad(MOE_WEIGHT_DOWN);
  CHECK(std::vector<float>(gdall.begin(), gdall.begin() + H * F) == gd0);

  // Backward again without a saved forward -> INVALID_ARGUMENT.
  CHECK(throws<mu::Error>([&] { layer.backward(gout); }, &e));
  CHECK(e.code() == MOE_ERR_INVALID_ARGUMENT);

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

static void test_runtime(mu::Runtime& rt) {
  mu::Runtime a(1);
  moe_runtime* raw = a.get();
  CHECK(raw != nullptr);
  mu::Runtime b(std::move(a));
  CHECK(b.get() == raw);
  CHECK(a.get() == nullptr);  // NOLINT(bugprone-use-after-move)
  CHECK(b.info().workers == 1);
  CHECK(std::string(b.info().kernel_path).size() > 0 && b.measure_peak(0.02) > 0);

  const std::string plain = rt.describe();
  CHECK(!plain.empty());
  CHECK(plain.find('\0') == std::string::npos);
  const std::string json = rt.describe(MOE_TEXT_JSON, &mu::LayerConfig(16, 32, 4, 2).get());
  CHECK(json.size() > 2 && json.front() == '{' && json.find_last_not_of(" \n") == json.rfind('}'));
  CHECK(json.find("\"placement\"") != std::string::npos);
}

// ------------------------------------------------------------ real model ---

static std::string materials_dir() {
  const char* cache = std::getenv("MOEUPCYCLE_CACHE");
  return (cache && *cache) ? std::string(cache) : std::string(".cache/materials");
}

// A fresh directory, removed with everything in it at the end of its scope.
struct TempDir {
  std::string path;
  TempDir() {
    const auto base = std::filesystem::temp_directory_path() /
                      ("moeupcycle-cpp-test." + std::to_string(getpid()));
    std::filesystem::remove_all(base);
    std::filesystem::create_directory(base);
    path = base.string();
  }
  ~TempDir() {
    std::error_code ec;
    std::filesystem::remove_all(path, ec);
  }
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;
};

static std::vector<float> row(const std::vector<float>& logits, size_t r, size_t vocab) {
  return std::vector<float>(logits.begin() + r * vocab, logits.begin() + (r + 1) * vocab);
}

static void test_model(mu::Runtime& rt, const std::string& path) {
  mu::Model model(rt, path);
  const moe_model_info info = model.info();
  CHECK(info.vocab_size == 49152);
  CHECK(info.num_moe_layers == 0);
  std::vector<int32_t> ids = model.tokenize("The capital of France is");
  CHECK((ids == std::vector<int32_t>{504, 3575, 282, 4649, 314}));
  CHECK(model.tokenize("").empty());
  CHECK(model.detokenize(ids) == "The capital of France is");
  CHECK(model.detokenize({}).empty());
  std::vector<float> lg = model.logits(ids);
  CHECK(lg.size() == ids.size() * info.vocab_size);
  CHECK(all_finite(lg));
  CHECK(model.router_stats(0).empty());  // dense layer

  auto out = mu::result<moe_generate_result>();
  std::vector<int32_t> streamed;
  auto p = mu::defaults<moe_generate_params>();
  p.max_new_tokens = 3;
  std::string gen = model.generate("The capital of France is", p, &out,
                                   [&](int32_t token, std::string_view) {
                                     streamed.push_back(token);
                                     return true;
                                   });
  std::printf("  generate -> \"%s\"\n", gen.c_str());
  CHECK(gen.rfind(" Paris", 0) == 0);
  CHECK(streamed.size() == 3);
  CHECK(out.generated_tokens == 3 && out.prompt_tokens == 5);
  CHECK(out.stop_reason == MOE_STOP_LENGTH);
  CHECK(mu::name(out.stop_reason) == "length");
  // The greedy first token is the argmax of the last logits row.
  const std::vector<float> last = row(lg, ids.size() - 1, info.vocab_size);
  size_t best = 0;
  for (size_t i = 1; i < last.size(); ++i)
    if (last[i] > last[best]) best = i;
  CHECK(!streamed.empty() && streamed[0] == int32_t(best));

  // A callback that stops after the first token; the text holds that piece.
  std::string first = model.generate("The capital of France is", p, &out,
                                     [](int32_t, std::string_view) { return false; });
  CHECK(out.stop_reason == MOE_STOP_CALLBACK);
  CHECK(out.generated_tokens == 1);
  CHECK(first == model.detokenize({streamed[0]}));
  // An exception thrown by the callback stops generation and comes back out.
  CHECK(throws<std::logic_error>([&] {
    model.generate("The capital of France is", p, nullptr,
                   [](int32_t, std::string_view) -> bool { throw std::logic_error("stop"); });
  }));

  // Caller memory: one byte short is BufferTooSmall (after generating, with
  // the result filled) and the buffer untouched; exact size fits.
  const size_t needed = gen.size() + 1;
  std::vector<char> text(needed, '#');
  mu::BufferTooSmall small("", 0);
  out = mu::result<moe_generate_result>();
  CHECK(throws<mu::BufferTooSmall>(
      [&] { model.generate_into("The capital of France is", p, text.data(), needed - 1, &out); },
      &small));
  CHECK(small.needed() == needed);
  CHECK(out.generated_tokens == 3);
  CHECK(std::vector<char>(needed, '#') == text);
  CHECK(model.generate_into("The capital of France is", p, text.data(), text.size()) == needed);
  CHECK(std::string(text.data()) == gen);

  const moe_eval_result ev = model.eval_text(
      "The quick brown fox jumps over the lazy dog. The capital of France is Paris.", 16);
  CHECK(ev.tokens_scored > 0);
  CHECK(std::isfinite(ev.mean_nll) && ev.mean_nll > 0);
  CHECK(std::fabs(ev.perplexity - std::exp(ev.mean_nll)) < 1e-6 * ev.perplexity);
  CHECK(ev.aux_loss == 0.0);  // dense
  // The last half of the text's tokens, as a trainer with eval_fraction 0.5 holds them out.
  const std::vector<int32_t> fox = model.tokenize(
      "The quick brown fox jumps over the lazy dog. The capital of France is Paris.");
  const moe_eval_result half = model.eval_text(
      "The quick brown fox jumps over the lazy dog. The capital of France is Paris.", 16, 0, 0.5);
  const moe_eval_result tail =
      model.eval_tokens(std::vector<int32_t>(fox.end() - static_cast<long>(fox.size() / 2), fox.end()), 16);
  CHECK(half.tokens_scored == tail.tokens_scored && half.mean_nll == tail.mean_nll);
  CHECK(half.tokens_scored < ev.tokens_scored);
  mu::Error bad(MOE_OK, "");
  CHECK(throws<mu::Error>([&] { model.eval_tokens(fox, 16, 0, 1.0); }, &bad));
  CHECK(bad.code() == MOE_ERR_INVALID_ARGUMENT && std::string(bad.what()).find("held_out") != std::string::npos);
}

// Upcycles SmolLM2 (copy, Qwen2-MoE, layer 0 only, 2 experts, top-1: the same
// function as the dense model) and checks the result through the wrapper.
static void test_upcycle(mu::Runtime& rt, const std::string& gguf, const std::string& work) {
  const std::string out_dir = work + "/smol-moe";
  auto p = mu::defaults<moe_upcycle_params>();
  p.num_experts = 2;
  p.top_k = 1;
  p.method = mu::from_name<moe_method>("copy");
  p.format = mu::from_name<moe_format>("qwen2-moe");
  p.dtype = mu::from_name<moe_dtype>("f32");
  p.layers = "0";
  const moe_upcycle_result r = mu::upcycle(gguf, out_dir, p);
  CHECK(r.moe_layers == 1);
  CHECK(r.bytes_written > 0 && r.tensors_written > 0 && r.shards >= 1);
  // An existing output is refused without force.
  mu::Error e(MOE_OK, "");
  CHECK(throws<mu::Error>([&] { mu::upcycle(gguf, out_dir, p); }, &e));
  CHECK(e.code() == MOE_ERR_EXISTS);

  const moe_checkpoint_info ci = mu::inspect(out_dir);
  CHECK(std::string(ci.architecture) == "qwen2_moe");
  CHECK(ci.num_experts == 2 && ci.top_k == 1 && ci.num_moe_layers == 1);
  CHECK(ci.active_param_count < ci.param_count);

  mu::MoELayer layer = mu::MoELayer::load(rt, out_dir, 0);
  const moe_layer_config lc = layer.config();
  CHECK(lc.num_experts == 2 && lc.top_k == 1);
  CHECK(lc.hidden_size == 576 && lc.moe_intermediate_size == 1536);
  CHECK(lc.shared_expert_intermediate_size == 1536);
  // Copy: both experts hold the same gate weights.
  CHECK(layer.weight(MOE_WEIGHT_GATE, 0) == layer.weight(MOE_WEIGHT_GATE, 1));

  // f32 both: the GGUF's own Q4_1 blocks would quantize the activations of the dense model.
  auto mp = mu::defaults<moe_model_params>();
  mp.weight_dtype = MOE_DTYPE_F32;
  mu::Model dense(rt, gguf, mp);
  mu::Model moe(rt, out_dir, mp);
  CHECK(moe.info().num_moe_layers == 1 && moe.info().num_experts == 2);
  const std::vector<int32_t> ids = dense.tokenize("The capital of France is");
  CHECK(moe.tokenize("The capital of France is") == ids);
  const std::vector<float> a = dense.logits(ids), b = moe.logits(ids);
  CHECK(a.size() == b.size());
  float worst = 0;
  for (size_t i = 0; i < a.size() && i < b.size(); ++i) worst = std::fmax(worst, std::fabs(a[i] - b[i]));
  std::printf("  upcycled logits differ from dense by at most %g\n", double(worst));
  CHECK(worst < 1e-3f);
  const std::vector<uint64_t> routed = moe.router_stats(0);
  CHECK(routed.size() == 2);
  CHECK(routed.size() == 2 && routed[0] + routed[1] == ids.size());
  CHECK(moe.router_stats(1).empty());
  CHECK(throws<mu::Error>([&] { moe.router_stats(1000); }, &e));
  CHECK(e.code() == MOE_ERR_INVALID_ARGUMENT);

  // One training step of the MoE model.
  std::string data;
  for (int i = 0; i < 40; ++i) data += "The capital of France is Paris. The capital of Italy is Rome. ";
  auto tp = mu::defaults<moe_trainer_params>();
  tp.seq_len = 16;
  tp.batch = 1;
  tp.steps = 2;
  tp.eval_windows = 1;
  tp.schedule = mu::from_name<moe_lr_schedule>("constant");
  tp.on_nonfinite = mu::from_name<moe_nonfinite>("skip");
  tp.train_only = mu::from_name<moe_train_only>("moe");
  mu::Trainer trainer(moe, data, tp);
  const moe_train_stats s = trainer.step();
  CHECK(s.step == 1 && trainer.steps_done() == 1);
  CHECK(std::isfinite(s.loss) && s.loss > 0);
  CHECK(s.aux_loss > 0);
  CHECK(s.skipped == 0);
  CHECK(s.tokens == 16);
  CHECK(std::fabs(s.lr - double(tp.lr)) < 1e-9);
  // Model FLOPs (PaLM count): SmolLM2 has 30 layers, H 576, 9 query and 3 KV heads of 64, FFN 1536 and a
  // tied 49152 x 576 head; MoE layer 0 has a 2 x 576 router, one active expert and the shared expert
  // (3 x 576 x 1536 each) with its 576-wide gate; frozen weights count too.
  const double attention = 576.0 * (576 + 2 * 192) + 576.0 * 576, ffn = 3.0 * 576 * 1536;
  const double multiplied = 30 * attention + 29 * ffn + (2 * 576 + 2 * ffn + 576) + 49152.0 * 576;
  const double per_token = 6 * multiplied + 12.0 * 30 * 9 * 64 * 16;
  CHECK(std::fabs(s.model_flops - 16 * per_token) <= 1e-9 * s.model_flops);
  CHECK(std::isfinite(trainer.eval()));
  // Out-of-range settings are refused with a message naming the field.
  tp.beta1 = 1.5f;
  CHECK(throws<mu::Error>([&] { mu::Trainer bad(moe, data, tp); }, &e));
  CHECK(e.code() == MOE_ERR_INVALID_ARGUMENT);
  CHECK(std::string(e.what()).find("beta1") != std::string::npos);
}

int main() {
  int skipped = 0;
  try {
    mu::Runtime rt(2);
    CHECK(mu::version() == MOE_VERSION_STRING);
    CHECK(mu::version_number() == MOE_VERSION_NUMBER);
    test_names();
    test_errors(rt);
    test_defaults();
    test_layer(rt);
    test_runtime(rt);
    const std::string gguf = materials_dir() + "/SmolLM2-135M-Instruct.Q4_1.gguf";
    if (!std::ifstream(gguf).good()) {
      std::printf("SKIPPED: the SmolLM2 model checks (%s not found; set MOEUPCYCLE_CACHE)\n",
                  gguf.c_str());
      skipped = 1;
    } else {
      test_model(rt, gguf);
      TempDir work;
      test_upcycle(rt, gguf, work.path);
    }
  } catch (const std::exception& e) {
    ++g_fail;
    std::fprintf(stderr, "FAIL: unexpected exception: %s\n", e.what());
  }
  std::printf("%d passed, %d failed%s\n", g_pass, g_fail,
              skipped ? " (model checks skipped)" : "");
  return g_fail == 0 ? 0 : 1;
}
