// moeupcycle.hpp -- header-only C++17 wrapper over the libmoeupcycle C API.
//
// Errors become moeupcycle::Error (code() + moe_last_error() text). Handles are
// move-only RAII types holding std::unique_ptr with deleters calling moe_*_free.
// Lifetimes follow the C contract: a Runtime must outlive every MoELayer and
// Model created on it; a Model must outlive its Trainer. Each object must be
// used by one thread at a time (except Runtime).
#ifndef MOEUPCYCLE_HPP
#define MOEUPCYCLE_HPP

#include <moeupcycle.h>

#include <cstddef>
#include <cstdint>
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

// Throws Error when status != MOE_OK. The message is moe_last_error(), or the
// status text when the library left none.
inline void check(moe_status status) {
  if (status == MOE_OK) return;
  const char* msg = moe_last_error();
  std::string text = (msg && *msg) ? std::string(msg) : std::string(moe_status_string(status));
  throw Error(status, text);
}

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

// ------------------------------------------------------------- deleters ---

namespace detail {
struct RuntimeDeleter { void operator()(moe_runtime* p) const noexcept { moe_runtime_free(p); } };
struct LayerDeleter { void operator()(moe_layer* p) const noexcept { moe_layer_free(p); } };
struct ModelDeleter { void operator()(moe_model* p) const noexcept { moe_model_free(p); } };
struct TrainerDeleter { void operator()(moe_trainer* p) const noexcept { moe_trainer_free(p); } };
}  // namespace detail

// -------------------------------------------------------- param builders ---

inline moe_runtime_params runtime_params() { moe_runtime_params p; moe_runtime_params_init(&p); return p; }
inline moe_upcycle_params upcycle_params() { moe_upcycle_params p; moe_upcycle_params_init(&p); return p; }
inline moe_model_params model_params() { moe_model_params p; moe_model_params_init(&p); return p; }
inline moe_eval_params eval_params() { moe_eval_params p; moe_eval_params_init(&p); return p; }
inline moe_generate_params generate_params() { moe_generate_params p; moe_generate_params_init(&p); return p; }
inline moe_trainer_params trainer_params() { moe_trainer_params p; moe_trainer_params_init(&p); return p; }

// Builder for moe_layer_config: starts from moe_layer_config_init() defaults.
class LayerConfig {
 public:
  LayerConfig() { moe_layer_config_init(&c_); }
  LayerConfig(uint32_t hidden, uint32_t ffn, uint32_t experts, uint32_t top_k) : LayerConfig() {
    c_.hidden = hidden; c_.ffn = ffn; c_.experts = experts; c_.top_k = top_k;
  }
  LayerConfig& hidden(uint32_t v) { c_.hidden = v; return *this; }
  LayerConfig& ffn(uint32_t v) { c_.ffn = v; return *this; }
  LayerConfig& experts(uint32_t v) { c_.experts = v; return *this; }
  LayerConfig& top_k(uint32_t v) { c_.top_k = v; return *this; }
  LayerConfig& routing(moe_routing v) { c_.routing = v; return *this; }
  LayerConfig& capacity_factor(float v) { c_.capacity_factor = v; return *this; }
  LayerConfig& expert_choice(bool v) { c_.expert_choice = v ? 1 : 0; return *this; }
  LayerConfig& shared_ffn(uint32_t v) { c_.shared_ffn = v; return *this; }
  LayerConfig& storage(moe_dtype v) { c_.storage = v; return *this; }
  LayerConfig& placement(int32_t v) { c_.placement = v; return *this; }
  LayerConfig& jitter(float v) { c_.jitter = v; return *this; }
  LayerConfig& seed(uint64_t v) { c_.seed = v; return *this; }
  LayerConfig& balance_loss_coef(float v) { c_.balance_loss_coef = v; return *this; }
  LayerConfig& z_loss_coef(float v) { c_.z_loss_coef = v; return *this; }
  const moe_layer_config& get() const noexcept { return c_; }
  moe_layer_config& get() noexcept { return c_; }

 private:
  moe_layer_config c_;
};

// --------------------------------------------------------------- Runtime ---

class Runtime {
 public:
  // threads: 0 = one worker per core.
  explicit Runtime(uint32_t threads = 0) {
    moe_runtime_params p = runtime_params();
    p.threads = threads;
    create(p);
  }
  explicit Runtime(const moe_runtime_params& params) { create(params); }

  moe_runtime* get() const noexcept { return h_.get(); }

  moe_runtime_info info() const {
    moe_runtime_info i{};
    i.struct_size = sizeof i;
    check(moe_runtime_get_info(&i, h_.get()));
    return i;
  }

  std::string describe(moe_text_format format = MOE_TEXT_PLAIN,
                       const moe_layer_config* layer = nullptr) const {
    size_t needed = 0;
    moe_status s = moe_runtime_describe(h_.get(), layer, format, nullptr, 0, &needed);
    if (s != MOE_OK && s != MOE_ERR_BUFFER_TOO_SMALL) check(s);
    std::string buf(needed, '\0');
    check(moe_runtime_describe(h_.get(), layer, format, &buf[0], buf.size(), &needed));
    buf.resize(needed ? needed - 1 : 0);
    return buf;
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
    moe_layer_config c{};
    c.struct_size = sizeof c;
    check(moe_layer_get_config(&c, h_.get()));
    return c;
  }
  uint32_t hidden() const { return config().hidden; }

  size_t weight_count(moe_weight w, int64_t expert = -1) const {
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
  std::vector<float> weight(moe_weight w, int64_t expert = -1) const {
    std::vector<float> v(weight_count(w, expert));
    check(moe_layer_get_weight(h_.get(), w, expert, v.data(), v.size()));
    return v;
  }
  void init_random(uint64_t seed, float std) { check(moe_layer_init_random(h_.get(), seed, std)); }

  // out[tokens, H] = MoE(x[tokens, H]).
  void forward(const float* x, size_t tokens, float* out, uint32_t flags = 0) {
    check(moe_layer_forward(h_.get(), x, tokens, out, flags));
  }
  // Vector form: x.size() must be a multiple of H; returns out of the same size.
  std::vector<float> forward(const std::vector<float>& x, uint32_t flags = 0) {
    const size_t h = hidden();
    if (h == 0 || x.size() % h != 0)
      throw Error(MOE_ERR_INVALID_ARGUMENT, "forward: input size is not a multiple of hidden");
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
  void grad(moe_weight w, int64_t expert, float* out, size_t capacity) const {
    check(moe_layer_get_grad(h_.get(), w, expert, out, capacity));
  }
  std::vector<float> grad(moe_weight w, int64_t expert = -1) const {
    std::vector<float> v(weight_count(w, expert));
    grad(w, expert, v.data(), v.size());
    return v;
  }
  void zero_grad() { check(moe_layer_zero_grad(h_.get())); }
  void set_noise_step(uint64_t step) { check(moe_layer_set_noise_step(h_.get(), step)); }

  moe_layer_stats stats(std::vector<uint64_t>* tokens_per_expert = nullptr) const {
    moe_layer_stats s{};
    s.struct_size = sizeof s;
    if (tokens_per_expert) {
      tokens_per_expert->assign(config().experts, 0);
      check(moe_layer_get_stats(&s, h_.get(), tokens_per_expert->data(), tokens_per_expert->size()));
    } else {
      check(moe_layer_get_stats(&s, h_.get(), nullptr, 0));
    }
    return s;
  }

 private:
  explicit MoELayer(moe_layer* l) : h_(l) {}
  std::unique_ptr<moe_layer, detail::LayerDeleter> h_;
};

// ----------------------------------------------------------------- Model ---

class Model {
 public:
  // Load an HF directory or .gguf file. `rt` must outlive the model.
  Model(Runtime& rt, const std::string& path, const moe_model_params* params = nullptr) {
    moe_model* m = nullptr;
    check(moe_model_load(&m, rt.get(), path.c_str(), params));
    h_.reset(m);
  }

  moe_model* get() const noexcept { return h_.get(); }

  moe_model_info info() const {
    moe_model_info i{};
    i.struct_size = sizeof i;
    check(moe_model_get_info(&i, h_.get()));
    return i;
  }

  std::vector<int32_t> tokenize(std::string_view text, bool add_special = false) const {
    size_t count = 0;
    moe_status s = moe_model_tokenize(h_.get(), text.data(), text.size(), add_special ? 1 : 0,
                                      nullptr, 0, &count);
    if (s != MOE_OK && s != MOE_ERR_BUFFER_TOO_SMALL) check(s);
    std::vector<int32_t> ids(count);
    if (count) {
      check(moe_model_tokenize(h_.get(), text.data(), text.size(), add_special ? 1 : 0,
                               ids.data(), ids.size(), &count));
      ids.resize(count);
    }
    return ids;
  }

  std::string detokenize(const std::vector<int32_t>& ids, bool skip_special = false) const {
    size_t needed = 0;
    moe_status s = moe_model_detokenize(h_.get(), ids.data(), ids.size(), skip_special ? 1 : 0,
                                        nullptr, 0, &needed);
    if (s != MOE_OK && s != MOE_ERR_BUFFER_TOO_SMALL) check(s);
    std::string buf(needed ? needed : 1, '\0');
    check(moe_model_detokenize(h_.get(), ids.data(), ids.size(), skip_special ? 1 : 0,
                               &buf[0], buf.size(), &needed));
    buf.resize(needed ? needed - 1 : 0);
    return buf;
  }

  // Logits [tokens.size(), vocab], row-major.
  std::vector<float> logits(const std::vector<int32_t>& tokens) {
    const size_t vocab = info().vocab_size;
    std::vector<float> out(tokens.size() * vocab);
    check(moe_model_logits(h_.get(), tokens.data(), tokens.size(), out.data(), out.size()));
    return out;
  }

  // Generated text (without the prompt). temperature 0 = greedy.
  std::string generate(const std::string& prompt, uint32_t max_new_tokens = 64,
                       float temperature = 0.0f, uint64_t seed = 0,
                       moe_generate_result* result = nullptr) {
    moe_generate_params p = generate_params();
    p.max_new_tokens = max_new_tokens;
    p.temperature = temperature;
    p.seed = seed;
    return generate(prompt, p, result);
  }
  std::string generate(const std::string& prompt, const moe_generate_params& params,
                       moe_generate_result* result = nullptr) {
    // Generation is not re-runnable cheaply, so size the buffer generously:
    // a token decodes to at most a few dozen bytes in practice; grow if cut.
    size_t capacity = 64 + size_t(params.max_new_tokens) * 64;
    std::string buf(capacity, '\0');
    size_t needed = 0;
    if (result) result->struct_size = sizeof *result;
    check(moe_model_generate(result, h_.get(), prompt.c_str(), &params, &buf[0], buf.size(),
                             &needed));
    // Cut (rare): rerun with room; same params and seed give the same tokens.
    // Not done with a streaming callback, which would then see tokens twice.
    if (needed > buf.size() && params.on_token == nullptr) {
      buf.assign(needed, '\0');
      check(moe_model_generate(result, h_.get(), prompt.c_str(), &params, &buf[0], buf.size(),
                               &needed));
    }
    buf.resize(std::char_traits<char>::length(buf.c_str()));
    return buf;
  }

  moe_eval_result eval_text(std::string_view text, uint32_t seq_len = 0, uint64_t max_tokens = 0) {
    moe_eval_params p = eval_params();
    p.seq_len = seq_len;
    p.max_tokens = max_tokens;
    moe_eval_result r{};
    r.struct_size = sizeof r;
    check(moe_model_eval_text(&r, h_.get(), text.data(), text.size(), &p));
    return r;
  }
  moe_eval_result eval_tokens(const std::vector<int32_t>& tokens, uint32_t seq_len = 0) {
    moe_eval_params p = eval_params();
    p.seq_len = seq_len;
    moe_eval_result r{};
    r.struct_size = sizeof r;
    check(moe_model_eval_tokens(&r, h_.get(), tokens.data(), tokens.size(), &p));
    return r;
  }

 private:
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
    moe_train_stats s{};
    s.struct_size = sizeof s;
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
  moe_upcycle_result r{};
  r.struct_size = sizeof r;
  check(moe_upcycle(&r, in.c_str(), out.c_str(), &params));
  return r;
}

inline moe_checkpoint_info inspect(const std::string& path) {
  moe_checkpoint_info i{};
  i.struct_size = sizeof i;
  check(moe_checkpoint_inspect(&i, path.c_str()));
  return i;
}

inline std::string version() { return moe_version_string(); }

}  // namespace moeupcycle

#endif  // MOEUPCYCLE_HPP
