// Packing of f32 operands into the panels of the packed GEMM
// (MoEKernelCode/PackedGEMM.swift), with blocks of stored rows loaded as
// vectors and transposed in registers (16 x 16 with AVX-512, 8 x 8 with AVX2).
// Read element by element, both packings below are one load and one store per
// value:
// - B panels of a transposed operand (the weights of x W^T): each stored row of
//   W is a column of B, so a panel's row of NR values takes one element from
//   each of NR stored rows.
// - A panels of a row-major operand: a panel's group of MR values for inner
//   index t takes element t of each of MR stored rows.
// The values are copied, not changed: the panels are bit for bit those of the
// plain loops. Each is called only from the instruction set's own kernel
// module, which runs only on CPUs that have it.
#include "moe_cpu.h"

#if defined(__x86_64__)
#include <immintrin.h>

#define AVX512_TARGET __attribute__((target("avx512f")))
#define AVX2_TARGET __attribute__((target("avx2")))

// Elements t0..<kc of n stored rows (ld apart) into dst[t * n + j], one value
// at a time: the part of a B panel (n = nr) or an A panel (n = mr) that no
// whole block of the transposes covers.
static inline void pack_tail(const float *src, size_t ld, size_t t0, size_t kc, size_t n, float *dst) {
  for (size_t t = t0; t < kc; t++)
    for (size_t j = 0; j < n; j++) dst[t * n + j] = src[j * ld + t];
}

// r[0..<16] (row i in r[i]) transposed in registers: on return r[c] holds
// column c (row i's value in lane i).
AVX512_TARGET static inline void transpose16_regs(__m512 r[16]) {
  __m512 t[16];
  // Pairs of rows interleaved by 32-bit elements, then by 64-bit pairs: each
  // 128-bit lane then holds four rows' values of one column.
  for (int i = 0; i < 16; i += 2) {
    t[i] = _mm512_unpacklo_ps(r[i], r[i + 1]);
    t[i + 1] = _mm512_unpackhi_ps(r[i], r[i + 1]);
  }
  for (int i = 0; i < 16; i += 4) {
    r[i] = _mm512_castpd_ps(_mm512_unpacklo_pd(_mm512_castps_pd(t[i]), _mm512_castps_pd(t[i + 2])));
    r[i + 1] = _mm512_castpd_ps(_mm512_unpackhi_pd(_mm512_castps_pd(t[i]), _mm512_castps_pd(t[i + 2])));
    r[i + 2] = _mm512_castpd_ps(_mm512_unpacklo_pd(_mm512_castps_pd(t[i + 1]), _mm512_castps_pd(t[i + 3])));
    r[i + 3] = _mm512_castpd_ps(_mm512_unpackhi_pd(_mm512_castps_pd(t[i + 1]), _mm512_castps_pd(t[i + 3])));
  }
  // r[4g + c] (rows 4g..4g+3) holds in its lane l column c + 4l. Gather the
  // four row groups' lanes: column c + 4l comes from lane l of r[c], r[4 + c],
  // r[8 + c], r[12 + c].
  for (int c = 0; c < 4; c++) {
    __m512 lo0 = _mm512_shuffle_f32x4(r[c], r[4 + c], 0x88);   // lanes 0, 2 of each
    __m512 hi0 = _mm512_shuffle_f32x4(r[c], r[4 + c], 0xDD);   // lanes 1, 3 of each
    __m512 lo1 = _mm512_shuffle_f32x4(r[8 + c], r[12 + c], 0x88);
    __m512 hi1 = _mm512_shuffle_f32x4(r[8 + c], r[12 + c], 0xDD);
    t[c] = _mm512_shuffle_f32x4(lo0, lo1, 0x88);
    t[c + 8] = _mm512_shuffle_f32x4(lo0, lo1, 0xDD);
    t[c + 4] = _mm512_shuffle_f32x4(hi0, hi1, 0x88);
    t[c + 12] = _mm512_shuffle_f32x4(hi0, hi1, 0xDD);
  }
  for (int c = 0; c < 16; c++) r[c] = t[c];
}

// The 16 x 16 block at src (rows ld apart) transposed into dst (rows ldd apart).
AVX512_TARGET static inline void transpose16(const float *src, size_t ld, float *dst, size_t ldd) {
  __m512 r[16];
  for (int i = 0; i < 16; i++) r[i] = _mm512_loadu_ps(src + (size_t)i * ld);
  transpose16_regs(r);
  for (int c = 0; c < 16; c++) _mm512_storeu_ps(dst + (size_t)c * ldd, r[c]);
}

AVX512_TARGET void moe_pack_bt_f32_avx512(const float *src, size_t ld, size_t kc, size_t nr, float *dst) {
  size_t t = 0;
  for (; t + 16 <= kc; t += 16)
    for (size_t j = 0; j < nr; j += 16) transpose16(src + j * ld + t, ld, dst + t * nr + j, nr);
  pack_tail(src, ld, t, kc, nr, dst);
}

AVX512_TARGET void moe_pack_a_f32_avx512(const float *src, size_t ld, size_t kc, size_t mr, float *dst) {
  // Rows mr..<16 of each block are zeros that no store writes: each column's
  // first mr lanes go to dst[t * mr ..< t * mr + mr].
  const __mmask16 keep = (__mmask16)((1u << mr) - 1);
  size_t t = 0;
  for (; t + 16 <= kc; t += 16) {
    __m512 r[16];
    for (size_t i = 0; i < 16; i++) r[i] = i < mr ? _mm512_loadu_ps(src + i * ld + t) : _mm512_setzero_ps();
    transpose16_regs(r);
    for (size_t c = 0; c < 16; c++) _mm512_mask_storeu_ps(dst + (t + c) * mr, keep, r[c]);
  }
  pack_tail(src, ld, t, kc, mr, dst);
}

// r[0..<8] (row i in r[i]) transposed in registers: on return r[c] holds
// column c.
AVX2_TARGET static inline void transpose8_regs(__m256 r[8]) {
  __m256 t[8];
  for (int i = 0; i < 8; i += 2) {
    t[i] = _mm256_unpacklo_ps(r[i], r[i + 1]);
    t[i + 1] = _mm256_unpackhi_ps(r[i], r[i + 1]);
  }
  for (int i = 0; i < 8; i += 4) {
    r[i] = _mm256_castpd_ps(_mm256_unpacklo_pd(_mm256_castps_pd(t[i]), _mm256_castps_pd(t[i + 2])));
    r[i + 1] = _mm256_castpd_ps(_mm256_unpackhi_pd(_mm256_castps_pd(t[i]), _mm256_castps_pd(t[i + 2])));
    r[i + 2] = _mm256_castpd_ps(_mm256_unpacklo_pd(_mm256_castps_pd(t[i + 1]), _mm256_castps_pd(t[i + 3])));
    r[i + 3] = _mm256_castpd_ps(_mm256_unpackhi_pd(_mm256_castps_pd(t[i + 1]), _mm256_castps_pd(t[i + 3])));
  }
  // r[4g + c] holds in its lane l column c + 4l of rows 4g..4g+3.
  for (int c = 0; c < 4; c++) {
    t[c] = _mm256_permute2f128_ps(r[c], r[4 + c], 0x20);
    t[c + 4] = _mm256_permute2f128_ps(r[c], r[4 + c], 0x31);
  }
  for (int c = 0; c < 8; c++) r[c] = t[c];
}

// The 8 x 8 block at src (rows ld apart) transposed into dst (rows ldd apart).
AVX2_TARGET static inline void transpose8(const float *src, size_t ld, float *dst, size_t ldd) {
  __m256 r[8];
  for (int i = 0; i < 8; i++) r[i] = _mm256_loadu_ps(src + (size_t)i * ld);
  transpose8_regs(r);
  for (int c = 0; c < 8; c++) _mm256_storeu_ps(dst + (size_t)c * ldd, r[c]);
}

AVX2_TARGET void moe_pack_bt_f32_avx2(const float *src, size_t ld, size_t kc, size_t nr, float *dst) {
  size_t t = 0;
  for (; t + 8 <= kc; t += 8)
    for (size_t j = 0; j < nr; j += 8) transpose8(src + j * ld + t, ld, dst + t * nr + j, nr);
  pack_tail(src, ld, t, kc, nr, dst);
}

AVX2_TARGET void moe_pack_a_f32_avx2(const float *src, size_t ld, size_t kc, size_t mr, float *dst) {
  // Lane i of the mask is set (its sign bit) for the rows the panel has.
  const __m256i keep = _mm256_cmpgt_epi32(_mm256_set1_epi32((int)mr), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
  size_t t = 0;
  for (; t + 8 <= kc; t += 8) {
    __m256 r[8];
    for (size_t i = 0; i < 8; i++) r[i] = i < mr ? _mm256_loadu_ps(src + i * ld + t) : _mm256_setzero_ps();
    transpose8_regs(r);
    for (size_t c = 0; c < 8; c++) _mm256_maskstore_ps(dst + (t + c) * mr, keep, r[c]);
  }
  pack_tail(src, ld, t, kc, mr, dst);
}

#else
// Never called here: no x86 kernel module runs on this CPU.
void moe_pack_bt_f32_avx512(const float *src, size_t ld, size_t kc, size_t nr, float *dst) {
  (void)src; (void)ld; (void)kc; (void)nr; (void)dst;
}
void moe_pack_bt_f32_avx2(const float *src, size_t ld, size_t kc, size_t nr, float *dst) {
  (void)src; (void)ld; (void)kc; (void)nr; (void)dst;
}
void moe_pack_a_f32_avx512(const float *src, size_t ld, size_t kc, size_t mr, float *dst) {
  (void)src; (void)ld; (void)kc; (void)mr; (void)dst;
}
void moe_pack_a_f32_avx2(const float *src, size_t ld, size_t kc, size_t mr, float *dst) {
  (void)src; (void)ld; (void)kc; (void)mr; (void)dst;
}
#endif
