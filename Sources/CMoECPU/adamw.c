// AdamW's update of a run of parameters, 16 at a time. Square roots and
// quotients of whole vectors: Swift's Float.squareRoot() on Linux calls libm's
// sqrtf (for errno), which keeps a loop over vectors from using vsqrtps and
// took this memory-bound pass to half the machine's bandwidth. The operations
// and their order are those of the plain loop in Trainer.adamWReference (the
// moments' updates fused multiply-adds, nothing else contracted), so the two
// agree bit for bit on every instruction set.
#include "moe_cpu.h"

#include <string.h>

#pragma clang fp contract(off)

typedef float v16f __attribute__((ext_vector_type(16)));

static inline __attribute__((always_inline)) v16f load16(const float *p) {
  v16f x;
  memcpy(&x, p, sizeof x);
  return x;
}

static inline __attribute__((always_inline)) void store16(float *p, v16f x) { memcpy(p, &x, sizeof x); }

static inline __attribute__((always_inline)) void adamw_run(float *w, float *g, float *m, float *v, size_t count,
                                                            const moe_adamw_step *s) {
  const v16f scale = s->clip_scale, b1 = s->beta1, b2 = s->beta2, ob1 = s->one_minus_beta1,
             ob2 = s->one_minus_beta2, c1 = s->c1, c2 = s->c2, lr = s->lr, eps = s->eps, keep = s->keep;
  size_t i = 0;
  for (; i + 16 <= count; i += 16) {
    v16f grad = load16(g + i) * scale;
    v16f mi = __builtin_elementwise_fma(ob1, grad, b1 * load16(m + i));
    v16f vi = __builtin_elementwise_fma(ob2, grad * grad, b2 * load16(v + i));
    v16f update = (mi * c1) / (__builtin_elementwise_sqrt(vi * c2) + eps);
    store16(m + i, mi);
    store16(v + i, vi);
    store16(w + i, load16(w + i) * keep - lr * update);
    store16(g + i, (v16f)0);
  }
  for (; i < count; i++) {
    float grad = g[i] * s->clip_scale;
    float mi = __builtin_fmaf(s->one_minus_beta1, grad, s->beta1 * m[i]);
    float vi = __builtin_fmaf(s->one_minus_beta2, grad * grad, s->beta2 * v[i]);
    float update = (mi * s->c1) / (__builtin_elementwise_sqrt(vi * s->c2) + s->eps);
    m[i] = mi;
    v[i] = vi;
    w[i] = w[i] * s->keep - s->lr * update;
    g[i] = 0;
  }
}

#if defined(__x86_64__)
__attribute__((target("avx512f"))) static void adamw_avx512(float *w, float *g, float *m, float *v, size_t count,
                                                            const moe_adamw_step *s) {
  adamw_run(w, g, m, v, count, s);
}

__attribute__((target("avx2,fma"))) static void adamw_avx2(float *w, float *g, float *m, float *v, size_t count,
                                                           const moe_adamw_step *s) {
  adamw_run(w, g, m, v, count, s);
}
#endif

static void adamw_baseline(float *w, float *g, float *m, float *v, size_t count, const moe_adamw_step *s) {
  adamw_run(w, g, m, v, count, s);
}

void moe_adamw_f32(float *w, float *g, float *m, float *v, size_t count, const moe_adamw_step *s) {
#if defined(__x86_64__)
  uint32_t f = moe_cpu_features();
  if (f & MOE_CPU_AVX512F) { adamw_avx512(w, g, m, v, count, s); return; }
  if ((f & (MOE_CPU_AVX2 | MOE_CPU_FMA)) == (MOE_CPU_AVX2 | MOE_CPU_FMA)) { adamw_avx2(w, g, m, v, count, s); return; }
#endif
  adamw_baseline(w, g, m, v, count, s);
}
