// AdamW's update of a run of parameters, 16 at a time. Square roots and
// quotients of whole vectors: Swift's Float.squareRoot() on Linux calls libm's
// sqrtf (for errno), which keeps a loop over vectors from using vsqrtps and
// took this memory-bound pass to half the machine's bandwidth. The operations
// and their order are those of the plain loop in Trainer.adamWReference (the
// moments' updates fused multiply-adds, nothing else contracted), so the two
// agree bit for bit on every instruction set, a run's last count % 16
// parameters included.
#include "moe_cpu.h"

#include <string.h>

#pragma clang fp contract(off)

typedef float v16f __attribute__((ext_vector_type(16)));
// The same vector at any float's alignment, for loads and stores in place
// (no vector passes through a call: the helpers below take pointers).
typedef float v16f_at __attribute__((ext_vector_type(16), aligned(4), may_alias));

// The step's scalars, one per lane.
typedef struct adamw_lanes {
  v16f scale, b1, b2, ob1, ob2, c1, c2, lr, eps, keep;
} adamw_lanes;

// Sixteen parameters at w, g, m, v updated in place, their gradients zeroed.
static inline __attribute__((always_inline)) void adamw16(float *w, float *g, float *m, float *v,
                                                          const adamw_lanes *k) {
  v16f grad = *(const v16f_at *)g * k->scale;
  v16f mi = __builtin_elementwise_fma(k->ob1, grad, k->b1 * *(const v16f_at *)m);
  v16f vi = __builtin_elementwise_fma(k->ob2, grad * grad, k->b2 * *(const v16f_at *)v);
  v16f update = (mi * k->c1) / (__builtin_elementwise_sqrt(vi * k->c2) + k->eps);
  *(v16f_at *)m = mi;
  *(v16f_at *)v = vi;
  *(v16f_at *)w = *(const v16f_at *)w * k->keep - k->lr * update;
  *(v16f_at *)g = (v16f)0;
}

static inline __attribute__((always_inline)) void adamw_run(float *w, float *g, float *m, float *v, size_t count,
                                                            const moe_adamw_step *s) {
  // 1 - beta rounded to float, as the plain loop computes it.
  // Each scalar cast to a vector holds it in every lane.
  const adamw_lanes k = { (v16f)s->clip_scale, (v16f)s->beta1, (v16f)s->beta2, (v16f)(1.0f - s->beta1),
                          (v16f)(1.0f - s->beta2), (v16f)s->c1, (v16f)s->c2, (v16f)s->lr, (v16f)s->eps,
                          (v16f)s->keep };
  size_t i = 0;
  for (; i + 16 <= count; i += 16) adamw16(w + i, g + i, m + i, v + i, &k);
  if (i == count) return;
  // The last count % 16 through the same lanes, staged with zeros beyond
  // them: each lane's result depends on its own inputs only.
  size_t n = (count - i) * sizeof(float);
  float tw[16] = { 0 }, tg[16] = { 0 }, tm[16] = { 0 }, tv[16] = { 0 };
  memcpy(tw, w + i, n);
  memcpy(tg, g + i, n);
  memcpy(tm, m + i, n);
  memcpy(tv, v + i, n);
  adamw16(tw, tg, tm, tv, &k);
  memcpy(w + i, tw, n);
  memcpy(g + i, tg, n);
  memcpy(m + i, tm, n);
  memcpy(v + i, tv, n);
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
