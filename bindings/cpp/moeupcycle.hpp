// moeupcycle.hpp -- header-only C++17 wrapper over the libmoeupcycle C API.
//
// Errors become moeupcycle::Error (code() + moe_last_error() text); a buffer
// the caller sized too small becomes moeupcycle::BufferTooSmall, which also
// carries the size needed. Handles are move-only RAII types holding
// std::unique_ptr with deleters calling moe_*_free.
//
// Lifetimes follow the C contract: a Runtime must outlive every MoELayer and
// Model created on it; a Model must outlive its Trainer. Each object must be
// used by one thread at a time (except Runtime, which may be shared).
//
// Parameter structs come from defaults<P>() (the library's `_init` with
// sizeof P); result structs from result<R>() (zeroed, struct_size set).
// Enum names come from the library: name(value), from_name<E>("..."),
// names<E>().
#ifndef MOEUPCYCLE_HPP
#define MOEUPCYCLE_HPP

#include <moeupcycle.h>

#include <cstddef>
#include <cstdint>
#include <exception>
#include <functional>
#include <memory>
#include <stdexcept>
#include <string>
#include <string_view>
#include <vector>

namespace moeupcycle {

// ---------------------------------------------------------------- errors ---

class Error : public std::runtime_error {
 public:
  Error(moe_status code, const std::string& message)
      : std::runtime_error(message), code_(code) {}
  moe_status code() const noexcept { return code_; }

 private:
  moe_status code_;
};

// MOE_ERR_BUFFER_TOO_SMALL: `needed()` elements (bytes including the NUL for
// text) would hold the whole answer.
class BufferTooSmall : public Error {
 public:
  BufferTooSmall(const std::string& message, size_t needed)
      : Error(MOE_ERR_BUFFER_TOO_SMALL, message), needed_(needed) {}
  size_t needed() const noexcept { return needed_; }

 private:
  size_t needed_;
};

// Throws when status != MOE_OK: BufferTooSmall (with `needed`) for
// MOE_ERR_BUFFER_TOO_SMALL, else Error. The message is moe_last_error(), or
// the status text when the library left none.
inline void check(moe_status status, size_t needed = 0) {
  if (status == MOE_OK) return;
  const char* msg = moe_last_error();
  std::string text = (msg && *msg) ? std::string(msg) : std::string(moe_status_string(status));
  if (status == MOE_ERR_BUFFER_TOO_SMALL) throw BufferTooSmall(text, needed);
  throw Error(status, text);
}

inline std::string version() { return moe_version_string(); }
inline uint32_t version_number() { return moe_version_number(); }
inline std::string status_string(moe_status status) { return moe_status_string(status); }

// ------------------------------------------------------------------ Span ---

// Minimal non-owning view (pointer + size); C++17 has no std::span.
template <typename T>
class Span {
 public:
  constexpr Span() noexcept = default;
  constexpr Span(T* data, size_t size) noexcept : data_(data), size_(size) {}
  template <typename U, typename A>
  Span(std::vector<U, A>& v) noexcept : data_(v.data()), size_(v.size()) {}
  template <typename U, typename A>
  Span(const std::vector<U, A>& v) noexcept : data_(v.data()), size_(v.size()) {}
  constexpr T* data() const noexcept { return data_; }
  constexpr size_t size() const noexcept { return size_; }
  constexpr bool empty() const noexcept { return size_ == 0; }
  constexpr T* begin() const noexcept { return data_; }
  constexpr T* end() const noexcept { return data_ + size_; }
  constexpr T& operator[](size_t i) const noexcept { return data_[i]; }

 private:
  T* data_ = nullptr;
  size_t size_ = 0;
};

// ------------------------------------------------------- output buffers ---

namespace detail {

// One call of a function following the output-buffer rule:
// fn(buf, capacity, &needed). Returns needed; throws BufferTooSmall (with
// needed) when `capacity` is too small, in which case nothing was written.
template <typename T, typename Fn>
size_t fill(Fn&& fn, T* buf, size_t capacity) {
  size_t needed = 0;
  const moe_status status = fn(buf, capacity, &needed);
  check(status, needed);
  return needed;
}

// The whole answer: ask with NULL and 0, then fill a vector of that size.
template <typename T, typename Fn>
std::vector<T> fetch(Fn&& fn) {
  const size_t needed = fill<T>(fn, nullptr, 0);
  std::vector<T> v(needed);
  if (needed > 0) v.resize(fill<T>(fn, v.data(), v.size()));
  return v;
}

// Text: as fetch, without the terminating NUL.
template <typename Fn>
std::string fetch_text(Fn&& fn) {
  std::vector<char> v = fetch<char>(fn);
  return v.empty() ? std::string() : std::string(v.data(), v.size() - 1);
}

}  // namespace detail

// ----------------------------------------------------------------- names ---

// Every enum of the header, for the name lookups below.
#define MOEUPCYCLE_ENUMS(X)                                                     \
  X(dtype) X(method) X(router_init) X(routing) X(format) X(partition_select)    \
  X(granular_scaling) X(importance) X(drop_select) X(placement) X(text_format)  \
  X(weight) X(stop_reason)                                                      \
  X(train_only) X(lr_schedule) X(nonfinite)

namespace detail {
#define MOEUPCYCLE_NAME_FUNCTIONS(e)                                               \
  inline const char* c_name(moe_##e value) noexcept { return moe_##e##_name(value); } \
  inline moe_status c_from_name(moe_##e* out, const char* name) noexcept {         \
    return moe_##e##_from_name(out, name);                                         \
  }                                                                                \
  inline const char* c_enum_what(moe_##e*) noexcept { return "moe_" #e; }
MOEUPCYCLE_ENUMS(MOEUPCYCLE_NAME_FUNCTIONS)
#undef MOEUPCYCLE_NAME_FUNCTIONS
}  // namespace detail

// The library's canonical name of `value` (e.g. "softmax-topk-renorm");
// Error MOE_ERR_INVALID_ARGUMENT when the value is not defined.
template <typename E>
std::string name(E value) {
  const char* n = detail::c_name(value);
  if (n == nullptr)
    throw Error(MOE_ERR_INVALID_ARGUMENT,
                std::string(detail::c_enum_what(static_cast<E*>(nullptr))) + " value " +
                    std::to_string(static_cast<long long>(value)) + " has no name");
  return n;
}

// The value named `text` (case ignored, '_' read as '-'); Error
// MOE_ERR_INVALID_ARGUMENT listing the valid names when unknown.
template <typename E>
E from_name(std::string_view text) {
  E out{};
  check(detail::c_from_name(&out, std::string(text).c_str()));
  return out;
}

// Every name of E in value order (from 0; DEFAULT, where it exists, is not
// included).
template <typename E>
std::vector<std::string> names() {
  std::vector<std::string> all;
  for (int v = 0;; ++v) {
    const char* n = detail::c_name(static_cast<E>(v));
    if (n == nullptr) return all;
    all.emplace_back(n);
  }
}

// ------------------------------------------------- parameters and results ---

namespace detail {
inline moe_status c_init(moe_upcycle_params* p, size_t n) { return moe_upcycle_params_init(p, n); }
inline moe_status c_init(moe_runtime_params* p, size_t n) { return moe_runtime_params_init(p, n); }
inline moe_status c_init(moe_layer_config* p, size_t n) { return moe_layer_config_init(p, n); }
inline moe_status c_init(moe_model_params* p, size_t n) { return moe_model_params_init(p, n); }
inline moe_status c_init(moe_eval_params* p, size_t n) { return moe_eval_params_init(p, n); }
inline moe_status c_init(moe_generate_params* p, size_t n) { return moe_generate_params_init(p, n); }
inline moe_status c_init(moe_trainer_params* p, size_t n) { return moe_trainer_params_init(p, n); }
}  // namespace detail

// A parameter struct filled with the library's defaults.
template <typename P>
P defaults() {
  P p{};
  check(detail::c_init(&p, sizeof p));
  return p;
}

// A result struct, zeroed, with struct_size set.
template <typename R>
R result() {
  R r{};
  r.struct_size = sizeof r;
  return r;
}

// Builder for moe_layer_config: starts from the library's defaults.
class LayerConfig {
 public:
  LayerConfig() : c_(defaults<moe_layer_config>()) {}
  LayerConfig(uint32_t hidden_size, uint32_t moe_intermediate_size, uint32_t num_experts,
              uint32_t top_k)
      : LayerConfig() {
    c_.hidden_size = hidden_size;
    c_.moe_intermediate_size = moe_intermediate_size;
    c_.num_experts = num_experts;
    c_.top_k = top_k;
  }
  LayerConfig& hidden_size(uint32_t v) { c_.hidden_size = v; return *this; }
  LayerConfig& moe_intermediate_size(uint32_t v) { c_.moe_intermediate_size = v; return *this; }
  LayerConfig& num_experts(uint32_t v) { c_.num_experts = v; return *this; }
  LayerConfig& top_k(uint32_t v) { c_.top_k = v; return *this; }
  LayerConfig& routing(moe_routing v) { c_.routing = v; return *this; }
  LayerConfig& capacity_factor(float v) { c_.capacity_factor = v; return *this; }
  LayerConfig& expert_choice(bool v) { c_.expert_choice = v ? 1 : 0; return *this; }
  LayerConfig& shared_expert_intermediate_size(uint32_t v) {
    c_.shared_expert_intermediate_size = v;
    return *this;
  }
  LayerConfig& storage(moe_dtype v) { c_.storage = v; return *this; }
  LayerConfig& compute(moe_dtype v) { c_.compute = v; return *this; }
  LayerConfig& placement(moe_placement v) { c_.placement = v; return *this; }
  LayerConfig& jitter(float v) { c_.jitter = v; return *this; }
  LayerConfig& seed(uint64_t v) { c_.seed = v; return *this; }
  LayerConfig& aux_loss_coef(float v) { c_.aux_loss_coef = v; return *this; }
  LayerConfig& z_loss_coef(float v) { c_.z_loss_coef = v; return *this; }
  const moe_layer_config& get() const noexcept { return c_; }
  moe_layer_config& get() noexcept { return c_; }

 private:
  moe_layer_config c_;
};

// ------------------------------------------------------------- deleters ---

namespace detail {
struct RuntimeDeleter { void operator()(moe_runtime* p) const noexcept { moe_runtime_free(p); } };
struct LayerDeleter { void operator()(moe_layer* p) const noexcept { moe_layer_free(p); } };
struct ModelDeleter { void operator()(moe_model* p) const noexcept { moe_model_free(p); } };
struct TrainerDeleter { void operator()(moe_trainer* p) const noexcept { moe_trainer_free(p); } };
}  // namespace detail

// --------------------------------------------------------------- Runtime ---

class Runtime {
 public:
  // threads: 0 = one worker per core.
  explicit Runtime(uint32_t threads = 0) {
    moe_runtime_params p = defaults<moe_runtime_params>();
    p.threads = threads;
    create(p);
  }
  explicit Runtime(const moe_runtime_params& params) { create(params); }

  moe_runtime* get() const noexcept { return h_.get(); }

  moe_runtime_info info() const {
    auto i = result<moe_runtime_info>();
    check(moe_runtime_get_info(&i, h_.get()));
    return i;
  }

  // All workers' measured f32 multiply-add throughput at once, in GFLOP/s.
  double measure_peak(double seconds = 0.1) const {
    double g = 0;
    check(moe_runtime_measure_peak(h_.get(), MOE_DTYPE_F32, seconds, &g));
    return g;
  }

  // The runtime (and, with `layer`, a layer's placement plan) as text.
  std::string describe(moe_text_format format = MOE_TEXT_PLAIN,
                       const moe_layer_config* layer = nullptr) const {
    return detail::fetch_text([&](char* buf, size_t cap, size_t* needed) {
      return moe_runtime_describe(h_.get(), layer, format, buf, cap, needed);
    });
  }

 private:
  void create(const moe_runtime_params& p) {
    moe_runtime* r = nullptr;
    check(moe_runtime_create(&r, &p));
    h_.reset(r);
  }
  std::unique_ptr<moe_runtime, detail::RuntimeDeleter> h_;
};

// -------------------------------------------------------------- MoELayer ---

class MoELayer {
 public:
  // Create with owned zero weights. `rt` must outlive the layer.
  MoELayer(Runtime& rt, const LayerConfig& config) : MoELayer(rt, config.get()) {}
  MoELayer(Runtime& rt, const moe_layer_config& config) {
    moe_layer* l = nullptr;
    check(moe_layer_create(&l, rt.get(), &config));
    h_.reset(l);
  }
  // Load MoE layer `layer_index` of an MoE checkpoint directory.
  static MoELayer load(Runtime& rt, const std::string& checkpoint, uint32_t layer_index,
                       const moe_layer_config* overrides = nullptr) {
    moe_layer* l = nullptr;
    check(moe_layer_load(&l, rt.get(), checkpoint.c_str(), layer_index, overrides));
    return MoELayer(l);
  }

  moe_layer* get() const noexcept { return h_.get(); }

  moe_layer_config config() const {
    auto c = result<moe_layer_config>();
    check(moe_layer_get_config(&c, h_.get()));
    return c;
  }
  uint32_t hidden_size() const { return config().hidden_size; }

  size_t weight_count(moe_weight w, int64_t expert = MOE_ALL_EXPERTS) const {
    size_t n = 0;
    check(moe_layer_weight_count(&n, h_.get(), w, expert));
    return n;
  }
  void set_weight(moe_weight w, int64_t expert, const float* data, size_t n) {
    check(moe_layer_set_weight(h_.get(), w, expert, data, n));
  }
  void set_weight(moe_weight w, int64_t expert, Span<const float> data) {
    set_weight(w, expert, data.data(), data.size());
  }
  // `weight` (or one expert of it) as f32.
  std::vector<float> weight(moe_weight w, int64_t expert = MOE_ALL_EXPERTS) const {
    return detail::fetch<float>(weight_fn(w, expert));
  }
  // Into caller memory; returns the floats written. BufferTooSmall when
  // `capacity` is below them (nothing written).
  size_t weight(moe_weight w, int64_t expert, float* out, size_t capacity) const {
    return detail::fill<float>(weight_fn(w, expert), out, capacity);
  }
  // Caller memory (dtype MOE_DTYPE_F32 or MOE_DTYPE_BF16) used for the
  // routed experts' weights without copying; it must stay alive and
  // unchanged until the layer is freed.
  void borrow_experts(moe_dtype dtype, const void* gate, const void* up, const void* down) {
    check(moe_layer_borrow_experts(h_.get(), dtype, gate, up, down));
  }
  void init_random(uint64_t seed, float std) { check(moe_layer_init_random(h_.get(), seed, std)); }

  // out[tokens, H] = MoE(x[tokens, H]).
  void forward(const float* x, size_t tokens, float* out, uint32_t flags = 0) {
    check(moe_layer_forward(h_.get(), x, tokens, out, flags));
  }
  // Vector form: x.size() must be a multiple of H; returns out of the same size.
  std::vector<float> forward(const std::vector<float>& x, uint32_t flags = 0) {
    const size_t h = hidden_size();
    if (h == 0 || x.size() % h != 0)
      throw Error(MOE_ERR_INVALID_ARGUMENT,
                  "forward: input of " + std::to_string(x.size()) +
                      " floats is not a multiple of hidden_size " + std::to_string(h));
    std::vector<float> out(x.size());
    forward(x.data(), x.size() / h, out.data(), flags);
    return out;
  }
  // Backward of the last forward run with MOE_FORWARD_SAVE; buffers are [T, H].
  void backward(const float* grad_out, float* grad_x) {
    check(moe_layer_backward(h_.get(), grad_out, grad_x));
  }
  std::vector<float> backward(const std::vector<float>& grad_out) {
    std::vector<float> gx(grad_out.size());
    backward(grad_out.data(), gx.data());
    return gx;
  }
  // The accumulated gradient of `weight` (or one expert of it).
  std::vector<float> grad(moe_weight w, int64_t expert = MOE_ALL_EXPERTS) const {
    return detail::fetch<float>(grad_fn(w, expert));
  }
  size_t grad(moe_weight w, int64_t expert, float* out, size_t capacity) const {
    return detail::fill<float>(grad_fn(w, expert), out, capacity);
  }
  void zero_grad() { check(moe_layer_zero_grad(h_.get())); }
  void set_noise_step(uint64_t step) { check(moe_layer_set_noise_step(h_.get(), step)); }

  // The last forward's statistics; with `tokens_per_expert`, also the tokens
  // each routed expert computed.
  moe_layer_stats stats(std::vector<uint64_t>* tokens_per_expert = nullptr) const {
    auto s = result<moe_layer_stats>();
    auto fn = [&](uint64_t* buf, size_t cap, size_t* needed) {
      return moe_layer_get_stats(&s, h_.get(), buf, cap, needed);
    };
    if (tokens_per_expert)
      *tokens_per_expert = detail::fetch<uint64_t>(fn);
    else
      detail::fill<uint64_t>(fn, nullptr, 0);
    return s;
  }
  // The last forward's combine weights, [T, E] row-major.
  std::vector<float> routing() const {
    return detail::fetch<float>([&](float* buf, size_t cap, size_t* needed) {
      return moe_layer_get_routing(h_.get(), buf, cap, needed);
    });
  }

 private:
  explicit MoELayer(moe_layer* l) : h_(l) {}
  // moe_layer_get_weight or moe_layer_get_grad of one tensor, as an
  // output-buffer call.
  struct TensorCopy {
    decltype(&moe_layer_get_weight) copy;
    const moe_layer* layer;
    moe_weight w;
    int64_t expert;
    moe_status operator()(float* buf, size_t cap, size_t* needed) const {
      return copy(layer, w, expert, buf, cap, needed);
    }
  };
  TensorCopy weight_fn(moe_weight w, int64_t expert) const {
    return {&moe_layer_get_weight, h_.get(), w, expert};
  }
  TensorCopy grad_fn(moe_weight w, int64_t expert) const {
    return {&moe_layer_get_grad, h_.get(), w, expert};
  }
  std::unique_ptr<moe_layer, detail::LayerDeleter> h_;
};

// ----------------------------------------------------------------- Model ---

// Receives each generated token and its text; return false to stop.
using TokenCallback = std::function<bool(int32_t token, std::string_view text)>;

class Model {
 public:
  // Load an HF directory or .gguf file. `rt` must outlive the model.
  Model(Runtime& rt, const std::string& path, const moe_model_params* params = nullptr) {
    moe_model* m = nullptr;
    check(moe_model_load(&m, rt.get(), path.c_str(), params));
    h_.reset(m);
  }
  Model(Runtime& rt, const std::string& path, const moe_model_params& params)
      : Model(rt, path, &params) {}

  moe_model* get() const noexcept { return h_.get(); }

  moe_model_info info() const {
    auto i = result<moe_model_info>();
    check(moe_model_get_info(&i, h_.get()));
    return i;
  }

  std::vector<int32_t> tokenize(std::string_view text, bool add_special = false) const {
    return detail::fetch<int32_t>([&](int32_t* buf, size_t cap, size_t* needed) {
      return moe_model_tokenize(h_.get(), text.data(), text.size(), add_special ? 1 : 0, buf,
                                cap, needed);
    });
  }

  std::string detokenize(const std::vector<int32_t>& ids, bool skip_special = false) const {
    return detail::fetch_text([&](char* buf, size_t cap, size_t* needed) {
      return moe_model_detokenize(h_.get(), ids.data(), ids.size(), skip_special ? 1 : 0, buf,
                                  cap, needed);
    });
  }

  // Logits [tokens.size(), vocab_size], row-major (asking the size computes
  // nothing; the fill runs the model once).
  std::vector<float> logits(const std::vector<int32_t>& tokens) {
    return detail::fetch<float>([&](float* buf, size_t cap, size_t* needed) {
      return moe_model_logits(h_.get(), tokens.data(), tokens.size(), buf, cap, needed);
    });
  }

  // Tokens per expert routed in MoE layer `layer` since the last evaluation
  // began (empty for a dense layer).
  std::vector<uint64_t> router_stats(uint32_t layer) const {
    return detail::fetch<uint64_t>([&](uint64_t* buf, size_t cap, size_t* needed) {
      return moe_model_router_stats(h_.get(), layer, buf, cap, needed);
    });
  }

  // Generated text (without the prompt). temperature 0 = greedy.
  std::string generate(const std::string& prompt, uint32_t max_new_tokens = 64,
                       float temperature = 0.0f, uint64_t seed = 0,
                       moe_generate_result* out = nullptr) {
    auto p = defaults<moe_generate_params>();
    p.max_new_tokens = max_new_tokens;
    p.temperature = temperature;
    p.seed = seed;
    return generate(prompt, p, out);
  }

  // Generates once, gathering the text from the streamed pieces (which the
  // header says equal the generated text). `on_token` (optional) sees each
  // token and may stop generation; an exception it throws stops generation
  // and is rethrown here. params.on_token / user_data are not used.
  std::string generate(const std::string& prompt, const moe_generate_params& params,
                       moe_generate_result* out = nullptr, const TokenCallback& on_token = {}) {
    struct Gather {
      std::string text;
      const TokenCallback* user;
      std::exception_ptr error;
    } gather{std::string(), &on_token, nullptr};
    moe_generate_params p = params;
    p.on_token = [](int32_t token, const char* text, void* data) -> int {
      auto* g = static_cast<Gather*>(data);
      try {  // nothing may propagate through the library's frames
        const std::string_view piece = text ? std::string_view(text) : std::string_view();
        g->text += piece;
        return (!*g->user || (*g->user)(token, piece)) ? 0 : 1;
      } catch (...) {
        g->error = std::current_exception();
        return 1;
      }
    };
    p.user_data = &gather;
    if (out) out->struct_size = sizeof *out;
    size_t needed = 0;
    const moe_status s = moe_model_generate(out, h_.get(), prompt.c_str(), &p, nullptr, 0, &needed);
    if (gather.error) std::rethrow_exception(gather.error);
    check(s, needed);
    if (needed != gather.text.size() + 1)
      throw Error(MOE_ERR_INTERNAL, "generate: the library reports " + std::to_string(needed) +
                                        " bytes of text but streamed " +
                                        std::to_string(gather.text.size()) + " (+1 for the NUL)");
    return std::move(gather.text);
  }

  // Generates into caller memory by the output-buffer rule; returns the
  // bytes needed (including the NUL). BufferTooSmall (with needed) when
  // `capacity` is too small: generation ran, `out` is filled, `text` untouched.
  size_t generate_into(const std::string& prompt, const moe_generate_params& params, char* text,
                       size_t capacity, moe_generate_result* out = nullptr) {
    if (out) out->struct_size = sizeof *out;
    return detail::fill<char>([&](char* buf, size_t cap, size_t* needed) {
      return moe_model_generate(out, h_.get(), prompt.c_str(), &params, buf, cap, needed);
    }, text, capacity);
  }

  moe_eval_result eval_text(std::string_view text, const moe_eval_params& params) {
    auto r = result<moe_eval_result>();
    check(moe_model_eval_text(&r, h_.get(), text.data(), text.size(), &params));
    return r;
  }
  /** held_out F: only the last fraction F of the text's tokens (what a trainer with eval_fraction F holds out). */
  moe_eval_result eval_text(std::string_view text, uint32_t seq_len = 0, uint64_t max_tokens = 0,
                            double held_out = 0) {
    return eval_text(text, eval_params(seq_len, max_tokens, held_out));
  }
  moe_eval_result eval_tokens(const std::vector<int32_t>& tokens, const moe_eval_params& params) {
    auto r = result<moe_eval_result>();
    check(moe_model_eval_tokens(&r, h_.get(), tokens.data(), tokens.size(), &params));
    return r;
  }
  moe_eval_result eval_tokens(const std::vector<int32_t>& tokens, uint32_t seq_len = 0,
                              uint64_t max_tokens = 0, double held_out = 0) {
    return eval_tokens(tokens, eval_params(seq_len, max_tokens, held_out));
  }

 private:
  static moe_eval_params eval_params(uint32_t seq_len, uint64_t max_tokens, double held_out) {
    auto p = defaults<moe_eval_params>();
    p.seq_len = seq_len;
    p.max_tokens = max_tokens;
    p.held_out = held_out;
    return p;
  }
  std::unique_ptr<moe_model, detail::ModelDeleter> h_;
};

// --------------------------------------------------------------- Trainer ---

class Trainer {
 public:
  // `model` must be loaded with f32 weights and outlive the trainer.
  Trainer(Model& model, std::string_view text, const moe_trainer_params& params) {
    moe_trainer* t = nullptr;
    check(moe_trainer_create_text(&t, model.get(), text.data(), text.size(), &params));
    h_.reset(t);
  }
  Trainer(Model& model, const std::vector<int32_t>& tokens, const moe_trainer_params& params) {
    moe_trainer* t = nullptr;
    check(moe_trainer_create(&t, model.get(), tokens.data(), tokens.size(), &params));
    h_.reset(t);
  }
  moe_trainer* get() const noexcept { return h_.get(); }
  moe_train_stats step() {
    auto s = result<moe_train_stats>();
    check(moe_trainer_step(&s, h_.get()));
    return s;
  }
  double eval() {
    double nll = 0;
    check(moe_trainer_eval(&nll, h_.get()));
    return nll;
  }
  uint64_t steps_done() const {
    uint64_t n = 0;
    check(moe_trainer_get_step(&n, h_.get()));
    return n;
  }
  void save(const std::string& path, bool force = false) {
    check(moe_trainer_save(h_.get(), path.c_str(), force ? 1 : 0));
  }
  void resume(const std::string& path) { check(moe_trainer_resume(h_.get(), path.c_str())); }

 private:
  std::unique_ptr<moe_trainer, detail::TrainerDeleter> h_;
};

// ------------------------------------------------------- free functions ---

inline moe_upcycle_result upcycle(const std::string& in, const std::string& out,
                                  const moe_upcycle_params& params) {
  auto r = result<moe_upcycle_result>();
  check(moe_upcycle(&r, in.c_str(), out.c_str(), &params));
  return r;
}

inline moe_checkpoint_info inspect(const std::string& path) {
  auto i = result<moe_checkpoint_info>();
  check(moe_checkpoint_inspect(&i, path.c_str()));
  return i;
}

}  // namespace moeupcycle

#endif  // MOEUPCYCLE_HPP
