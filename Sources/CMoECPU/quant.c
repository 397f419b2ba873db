// Quantized weights kept quantized in memory: GGML's Q8_0, Q4_0 and Q4_1
// (blocks of 32 elements with an f16 scale d, and for Q4_1 an f16 minimum m)
// in a row layout built for integer dot products, activations quantized per
// block of 32 to int8 (as llama.cpp's Q8 activations), and the products of
// the two on AVX512-VNNI (vpdpbusd), AVX2 (vpmaddubsw) or plain C. The plain
// C product is the reference the others are tested against: all three
// compute, per output, sum_b (d_b dx_b) I_b (+ sum_b m_b sx_b for Q4_1), with
// I_b the exact integer dot product of block b; they differ only in the order
// of the float additions.
//
// Row layout (moe_q_row_bytes): blocks go in pairs; a pair's 64 elements sit
// at 64 "positions" such that position p holds element ((p >> 3) * 4 + (p & 3))
// of block (p >> 2) & 1 of the pair: every 4 consecutive positions belong to
// one block, alternating between the two, so that a 32-bit lane of an integer
// dot product (4 positions) always sums one block's products and the lanes of
// a vector alternate between the pair's blocks. Q8_0 stores a pair as 64 int8
// in position order; Q4_0 and Q4_1 store it as 32 bytes, byte i holding
// position i in its low nibble and position i + 32 in its high one (unsigned
// 0..15). After the quants: the f16 scales d of the row's blocks, then (Q4_1)
// the f16 minima m; a missing last block of a pair is all zero. Rows are
// padded to 64 bytes.
//
// Activation layout (moe_q_act_bytes): the int8 quants in the same position
// order, then float dx[2 np] (the blocks' scales), float sx[2 np] (dx times
// the block's quant sum), and for Q4_0 and Q8_0 int32 bias[16 np]: per 32-bit
// lane of a pair, -8 (Q4_0) or -128 (Q8_0) times the sum of its 4 quants, the
// offset that makes an unsigned dot product of stored quants exact.
#include "moe_cpu.h"

#include <math.h>
#include <string.h>

#pragma clang fp contract(off)

static inline size_t pairs_of(size_t cols) { return (cols / 32 + 1) / 2; }
static inline size_t quant_bytes(int kind) { return kind == MOE_Q8_0 ? 64 : 32; }
static inline size_t round64(size_t n) { return (n + 63) & ~(size_t)63; }

size_t moe_q_row_bytes(int kind, size_t cols) {
  size_t np = pairs_of(cols);
  return round64(np * quant_bytes(kind) + np * 2 * 2 * (kind == MOE_Q4_1 ? 2 : 1));
}

size_t moe_q_act_bytes(int kind, size_t cols) {
  size_t np = pairs_of(cols);
  return round64(np * 64 + np * 2 * 4 * 2 + (kind == MOE_Q4_1 ? 0 : np * 64));
}

// The f32 value of IEEE half bits (every value, subnormals and NaN included).
float moe_f16_to_f32(uint16_t h) {
  uint32_t sign = (uint32_t)(h & 0x8000u) << 16, exp = (h >> 10) & 0x1F, man = h & 0x3FFu, bits;
  if (exp == 0x1F) {
    bits = sign | 0x7F800000u | (man << 13);
  } else if (exp != 0) {
    bits = sign | ((exp + 112) << 23) | (man << 13);
  } else if (man == 0) {
    bits = sign;
  } else {
    int e = 113;
    while (!(man & 0x400u)) { man <<= 1; e--; }
    bits = sign | ((uint32_t)e << 23) | ((man & 0x3FFu) << 13);
  }
  float f;
  memcpy(&f, &bits, 4);
  return f;
}

static inline int pos_block(int p) { return (p >> 2) & 1; }
static inline int pos_elem(int p) { return (p >> 3) * 4 + (p & 3); }
// The position of element e of block `half` (0 or 1) of a pair: the inverse of the two above.
static inline int pair_pos(int half, int e) { return 4 * (2 * (e / 4) + half) + (e & 3); }

static inline uint16_t load16(const uint8_t *p) { return (uint16_t)(p[0] | p[1] << 8); }

// Quant e of GGML block `blk`: Q8_0 as signed, Q4 as the stored nibble.
static inline int ggml_quant(int kind, const uint8_t *blk, int e) {
  if (kind == MOE_Q8_0) return (int8_t)blk[2 + e];
  const uint8_t *qs = blk + (kind == MOE_Q4_1 ? 4 : 2);
  return e < 16 ? (qs[e] & 0x0F) : (qs[e - 16] >> 4);
}

static inline size_t ggml_block_bytes(int kind) { return kind == MOE_Q8_0 ? 34 : (kind == MOE_Q4_0 ? 18 : 20); }

void moe_q_pack_row(int kind, const void *src, size_t cols, void *dst) {
  const uint8_t *s = src;
  uint8_t *out = dst;
  size_t nb = cols / 32, np = pairs_of(cols), qb = quant_bytes(kind);
  memset(out, 0, moe_q_row_bytes(kind, cols));
  uint8_t *dptr = out + np * qb, *mptr = dptr + np * 4;
  for (size_t pi = 0; pi < np; pi++) {
    int u[64];
    for (int p = 0; p < 64; p++) {
      size_t b = 2 * pi + (size_t)pos_block(p);
      u[p] = b < nb ? ggml_quant(kind, s + b * ggml_block_bytes(kind), pos_elem(p)) : 0;
    }
    if (kind == MOE_Q8_0) {
      for (int p = 0; p < 64; p++) out[pi * 64 + p] = (uint8_t)(int8_t)u[p];
    } else {
      for (int i = 0; i < 32; i++) out[pi * 32 + i] = (uint8_t)(u[i] | u[i + 32] << 4);
    }
  }
  for (size_t b = 0; b < nb; b++) {
    const uint8_t *blk = s + b * ggml_block_bytes(kind);
    memcpy(dptr + 2 * b, blk, 2);
    if (kind == MOE_Q4_1) memcpy(mptr + 2 * b, blk + 2, 2);
  }
}

// Quant of element e of block b of a packed row (Q4 as the stored nibble).
static inline int row_quant(int kind, const uint8_t *row, size_t b, int e) {
  size_t pi = b / 2;
  int half = (int)(b & 1);
  int p = pair_pos(half, e);
  if (kind == MOE_Q8_0) return (int8_t)row[pi * 64 + p];
  uint8_t byte = row[pi * 32 + (p & 31)];
  return p < 32 ? (byte & 0x0F) : (byte >> 4);
}

#if defined(__x86_64__)
static void unpack_row_avx2(int kind, const uint8_t *row, size_t cols, float *dst);
#endif

void moe_q_unpack_row(int kind, const void *rowp, size_t cols, float *dst) {
  const uint8_t *row = rowp;
#if defined(__x86_64__)
  if (moe_q_avx2_native()) {
    unpack_row_avx2(kind, row, cols, dst);
    return;
  }
#endif
  size_t nb = cols / 32, np = pairs_of(cols);
  const uint8_t *dptr = row + np * quant_bytes(kind), *mptr = dptr + np * 4;
  for (size_t b = 0; b < nb; b++) {
    float d = moe_f16_to_f32(load16(dptr + 2 * b));
    float m = kind == MOE_Q4_1 ? moe_f16_to_f32(load16(mptr + 2 * b)) : 0;
    for (int e = 0; e < 32; e++) {
      int q = row_quant(kind, row, b, e);
      // The order and rounding of decodeToFloat (GGUF dequantization).
      float v = kind == MOE_Q8_0 ? d * (float)q : (kind == MOE_Q4_0 ? (float)(q - 8) * d : (float)q * d + m);
      dst[b * 32 + e] = v;
    }
  }
}

void moe_q_quantize_act(int kind, const float *x, size_t cols, void *dst) {
  uint8_t *out = dst;
  size_t nb = cols / 32, np = pairs_of(cols);
  int8_t *q = (int8_t *)out;
  float *dx = (float *)(out + np * 64), *sx = dx + 2 * np;
  int32_t *bias = (int32_t *)(sx + 2 * np);
  memset(out, 0, moe_q_act_bytes(kind, cols));
  for (size_t b = 0; b < nb; b++) {
    const float *v = x + b * 32;
    float amax = 0;
    int finite = 1;
    for (int e = 0; e < 32; e++) {
      float a = fabsf(v[e]);
      if (!(a <= 3.4028235e38f)) finite = 0;
      else if (a > amax) amax = a;
    }
    size_t pi = b / 2;
    int half = (int)(b & 1);
    if (!finite) {
      // A non-finite input makes every output it reaches NaN.
      dx[b] = NAN;
      sx[b] = NAN;
      continue;
    }
    float d = amax / 127, id = d > 0 ? 127 / amax : 0;
    int sum = 0;
    for (int e = 0; e < 32; e++) {
      int qe = (int)nearbyintf(v[e] * id);
      if (qe > 127) qe = 127;
      if (qe < -127) qe = -127;
      q[pi * 64 + pair_pos(half, e)] = (int8_t)qe;
      sum += qe;
    }
    dx[b] = d;
    sx[b] = d * (float)sum;
  }
  if (kind == MOE_Q4_1) return;
  int32_t scale = kind == MOE_Q4_0 ? -8 : -128;
  for (size_t lane = 0; lane < np * 16; lane++) {
    const int8_t *g = q + 4 * lane;
    bias[lane] = scale * (g[0] + g[1] + g[2] + g[3]);
  }
}

// MARK: - Products

typedef struct act_view {
  const uint8_t *q;
  const float *dx, *sx;
  const int32_t *bias;
} act_view;

static inline act_view act_at(const uint8_t *a, size_t np) {
  act_view v;
  v.q = a;
  v.dx = (const float *)(a + np * 64);
  v.sx = v.dx + 2 * np;
  v.bias = (const int32_t *)(v.sx + 2 * np);
  return v;
}

// sum_b m_b sx_b over the row's blocks (Q4_1's minima).
static float minima_term(const uint8_t *mptr, const float *sx, size_t blocks) {
  float s = 0;
  for (size_t b = 0; b < blocks; b++) s += moe_f16_to_f32(load16(mptr + 2 * b)) * sx[b];
  return s;
}

static float dot_portable(int kind, const uint8_t *row, act_view x, size_t np) {
  const uint8_t *dptr = row + np * quant_bytes(kind);
  float acc = 0;
  for (size_t b = 0; b < 2 * np; b++) {
    int isum = 0;
    for (int e = 0; e < 32; e++) {
      int w = row_quant(kind, row, b, e);
      if (kind == MOE_Q4_0) w -= 8;
      isum += w * (int8_t)x.q[(b / 2) * 64 + pair_pos((int)(b & 1), e)];
    }
    acc += (float)isum * (moe_f16_to_f32(load16(dptr + 2 * b)) * x.dx[b]);
  }
  if (kind == MOE_Q4_1) acc += minima_term(dptr + np * 4, x.sx, 2 * np);
  return acc;
}

static inline void put(float *c, float v, int accumulate) {
  if (accumulate) *c += v; else *c = v;
}

static void gemm_portable(int kind, size_t n, size_t rows, size_t cols, const uint8_t *w, size_t ldw,
                          const uint8_t *xq, size_t ldxq, float *c, size_t ldc, int accumulate) {
  size_t np = pairs_of(cols);
  for (size_t j = 0; j < rows; j++)
    for (size_t i = 0; i < n; i++)
      put(c + i * ldc + j, dot_portable(kind, w + j * ldw, act_at(xq + i * ldxq, np), np), accumulate);
}

#if defined(__x86_64__)
#include <immintrin.h>

#define Q_AVX2_TARGET __attribute__((target("avx2,fma,f16c")))
#define Q_VNNI_TARGET __attribute__((target("avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")))

int moe_q_vnni_native(void) {
  const uint32_t need = MOE_CPU_AVX512F | MOE_CPU_AVX512BW | MOE_CPU_AVX512VL | MOE_CPU_AVX512VNNI | MOE_CPU_F16C;
  return (moe_cpu_features() & need) == need;
}

int moe_q_avx2_native(void) {
  const uint32_t need = MOE_CPU_AVX2 | MOE_CPU_FMA | MOE_CPU_F16C;
  return (moe_cpu_features() & need) == need;
}

Q_AVX2_TARGET static inline float hsum256(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

Q_AVX2_TARGET static float minima_avx2(const uint8_t *mptr, const float *sx, size_t blocks) {
  __m256 acc = _mm256_setzero_ps();
  size_t b = 0;
  for (; b + 8 <= blocks; b += 8) {
    __m256 m = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(mptr + 2 * b)));
    acc = _mm256_fmadd_ps(m, _mm256_loadu_ps(sx + b), acc);
  }
  float s = hsum256(acc);
  for (; b < blocks; b++) s += moe_f16_to_f32(load16(mptr + 2 * b)) * sx[b];
  return s;
}

// The 8 int32 lanes of one pair's dot product (lanes alternate the blocks).
Q_AVX2_TARGET static inline __m256i pair_dot_avx2(int kind, const uint8_t *wq, const int8_t *xq, const int32_t *bias) {
  const __m256i ones = _mm256_set1_epi16(1);
  __m256i x0 = _mm256_loadu_si256((const __m256i *)xq), x1 = _mm256_loadu_si256((const __m256i *)(xq + 32));
  __m256i p0, p1;
  if (kind == MOE_Q8_0) {
    // |w| * (x with w's sign): u8 x s8 products, no pair can saturate (|w| <= 128, |x| <= 127).
    __m256i w0 = _mm256_loadu_si256((const __m256i *)wq), w1 = _mm256_loadu_si256((const __m256i *)(wq + 32));
    p0 = _mm256_maddubs_epi16(_mm256_sign_epi8(w0, w0), _mm256_sign_epi8(x0, w0));
    p1 = _mm256_maddubs_epi16(_mm256_sign_epi8(w1, w1), _mm256_sign_epi8(x1, w1));
  } else {
    const __m256i low = _mm256_set1_epi8(0x0F);
    __m256i v = _mm256_loadu_si256((const __m256i *)wq);
    p0 = _mm256_maddubs_epi16(_mm256_and_si256(v, low), x0);
    p1 = _mm256_maddubs_epi16(_mm256_and_si256(_mm256_srli_epi16(v, 4), low), x1);
  }
  __m256i s = _mm256_add_epi32(_mm256_madd_epi16(p0, ones), _mm256_madd_epi16(p1, ones));
  if (kind == MOE_Q4_0) {
    s = _mm256_add_epi32(s, _mm256_loadu_si256((const __m256i *)bias));
    s = _mm256_add_epi32(s, _mm256_loadu_si256((const __m256i *)(bias + 8)));
  }
  return s;
}

// Rows read together: one for the sequential walk (each row read front to
// back, one stream that the hardware prefetchers follow: on Zen 4 four rows
// side by side decoded 15-35% slower, and prefetch hints slowed it too); four
// for the hinted walk, their activation loads shared, which also asks for the
// rows two groups ahead as it reads a group (on Emerald Rapids the rows, a
// few hundred bytes to a few KB, are too short for the prefetchers to find).
#define Q_MAX_ROWS 4

// The product loop of one instruction set, compiled once per block type and
// walk: rows in groups of ROWS, per token (activation row) and per slice of
// Q_SLICE_PAIRS pairs the rows' combined scales d_b dx_b first, then per pair
// the integer dot products (DOT: int32 lanes alternating the pair's blocks)
// scaled into float accumulators; Q4_1 adds its minima term.
#define Q_GEMM(NAME, TARGET, VEC, ZERO, SCALES, DOT, CAST, BCAST, CVT, FMA, HSUM, MINIMA)                          \
  TARGET __attribute__((always_inline)) static inline void NAME##_kind(                                            \
      const int kind, const int ROWS, size_t n, size_t rows, size_t cols, const uint8_t *w, size_t ldw,           \
      const uint8_t *xq, size_t ldxq, float *c, size_t ldc, int accumulate) {                                      \
    size_t np = pairs_of(cols), qb = quant_bytes(kind);                                                            \
    const int hinted = ROWS > 1;                                                                                   \
    float scales[Q_MAX_ROWS][2 * Q_SLICE_PAIRS];                                                                   \
    for (size_t j = 0; j < rows; j += ROWS) {                                                                      \
      int nr = rows - j < (size_t)ROWS ? (int)(rows - j) : ROWS;                                                   \
      const uint8_t *r[Q_MAX_ROWS];                                                                                \
      for (int q = 0; q < ROWS; q++) r[q] = w + (j + (q < nr ? q : 0)) * ldw;                                      \
      if (hinted)                                                                                                  \
        for (int q = 0; q < ROWS; q++)                                                                             \
          for (size_t o = np * qb; o < ldw; o += 64) moe_prefetch(r[q] + 2 * ROWS * ldw + o);                      \
      for (size_t i = 0; i < n; i++) {                                                                             \
        act_view x = act_at(xq + i * ldxq, np);                                                                    \
        VEC acc[Q_MAX_ROWS];                                                                                       \
        for (int q = 0; q < ROWS; q++) acc[q] = ZERO();                                                            \
        for (size_t p0 = 0; p0 < np; p0 += Q_SLICE_PAIRS) {                                                        \
          size_t p1 = np - p0 < Q_SLICE_PAIRS ? np : p0 + Q_SLICE_PAIRS;                                           \
          for (int q = 0; q < ROWS; q++)                                                                           \
            SCALES(r[q] + np * qb + 4 * p0, x.dx + 2 * p0, 2 * (p1 - p0), scales[q]);                              \
          for (size_t pi = p0; pi < p1; pi++) {                                                                    \
            if (hinted && i == 0)                                                                                  \
              for (int q = 0; q < ROWS; q++) moe_prefetch(r[q] + 2 * ROWS * ldw + pi * qb);                        \
            for (int q = 0; q < ROWS; q++) {                                                                       \
              double pair;                                                                                         \
              memcpy(&pair, scales[q] + 2 * (pi - p0), 8);                                                         \
              acc[q] = FMA(CVT(DOT(kind, r[q] + pi * qb, (const int8_t *)x.q + pi * 64, x.bias + pi * 16)),       \
                           CAST(BCAST(pair)), acc[q]);                                                             \
            }                                                                                                      \
          }                                                                                                        \
        }                                                                                                          \
        for (int q = 0; q < nr; q++) {                                                                             \
          float v = HSUM(acc[q]);                                                                                  \
          if (kind == MOE_Q4_1) v += MINIMA(r[q] + np * qb + np * 4, x.sx, 2 * np);                                \
          put(c + i * ldc + j + q, v, accumulate);                                                                 \
        }                                                                                                          \
      }                                                                                                            \
    }                                                                                                              \
  }                                                                                                                \
  TARGET static void NAME##_walk(int kind, const int ROWS, size_t n, size_t rows, size_t cols, const uint8_t *w,    \
                                 size_t ldw, const uint8_t *xq, size_t ldxq, float *c, size_t ldc, int accumulate) { \
    if (kind == MOE_Q8_0) NAME##_kind(MOE_Q8_0, ROWS, n, rows, cols, w, ldw, xq, ldxq, c, ldc, accumulate);        \
    else if (kind == MOE_Q4_0) NAME##_kind(MOE_Q4_0, ROWS, n, rows, cols, w, ldw, xq, ldxq, c, ldc, accumulate);   \
    else NAME##_kind(MOE_Q4_1, ROWS, n, rows, cols, w, ldw, xq, ldxq, c, ldc, accumulate);                         \
  }                                                                                                                \
  TARGET static void NAME(int kind, int hinted, size_t n, size_t rows, size_t cols, const uint8_t *w, size_t ldw,  \
                          const uint8_t *xq, size_t ldxq, float *c, size_t ldc, int accumulate) {                  \
    if (hinted) NAME##_walk(kind, Q_MAX_ROWS, n, rows, cols, w, ldw, xq, ldxq, c, ldc, accumulate);                \
    else NAME##_walk(kind, 1, n, rows, cols, w, ldw, xq, ldxq, c, ldc, accumulate);                                \
  }

// The combined scales d_b dx_b of `blocks` blocks of one row (f16 d at dptr)
// into out, 8 at a time.
Q_AVX2_TARGET static inline void row_scales_avx2(const uint8_t *dptr, const float *dx, size_t blocks, float *out) {
  size_t b = 0;
  for (; b + 8 <= blocks; b += 8)
    _mm256_storeu_ps(out + b, _mm256_mul_ps(_mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(dptr + 2 * b))),
                                            _mm256_loadu_ps(dx + b)));
  for (; b < blocks; b++) out[b] = moe_f16_to_f32(load16(dptr + 2 * b)) * dx[b];
}

// Pairs per slice of a row whose scales are computed at once (on the stack).
#define Q_SLICE_PAIRS 64

Q_GEMM(gemm_avx2, Q_AVX2_TARGET, __m256, _mm256_setzero_ps, row_scales_avx2, pair_dot_avx2, _mm256_castpd_ps,
       _mm256_set1_pd, _mm256_cvtepi32_ps, _mm256_fmadd_ps, hsum256, minima_avx2)

// moe_q_unpack_row 4 positions at a time: each group of 4 positions is 4
// consecutive elements of one block.
Q_AVX2_TARGET static void unpack_row_avx2(int kind, const uint8_t *row, size_t cols, float *dst) {
  size_t nb = cols / 32, np = pairs_of(cols), qb = quant_bytes(kind);
  const uint8_t *dptr = row + np * qb, *mptr = dptr + np * 4;
  for (size_t pi = 0; pi < np; pi++) {
    uint8_t u[64];
    if (kind == MOE_Q8_0) {
      memcpy(u, row + pi * 64, 64);
    } else {
      __m256i v = _mm256_loadu_si256((const __m256i *)(row + pi * 32)), low = _mm256_set1_epi8(0x0F);
      _mm256_storeu_si256((__m256i *)u, _mm256_and_si256(v, low));
      _mm256_storeu_si256((__m256i *)(u + 32), _mm256_and_si256(_mm256_srli_epi16(v, 4), low));
    }
    for (int half = 0; half < 2; half++) {
      size_t b = 2 * pi + (size_t)half;
      if (b >= nb) break;
      __m128 d = _mm_set1_ps(moe_f16_to_f32(load16(dptr + 2 * b)));
      __m128 m = _mm_set1_ps(kind == MOE_Q4_1 ? moe_f16_to_f32(load16(mptr + 2 * b)) : 0);
      for (int e4 = 0; e4 < 8; e4++) {
        int32_t word;
        memcpy(&word, u + 4 * (2 * e4 + half), 4);
        __m128i q = kind == MOE_Q8_0 ? _mm_cvtepi8_epi32(_mm_cvtsi32_si128(word)) : _mm_cvtepu8_epi32(_mm_cvtsi32_si128(word));
        __m128 v;
        if (kind == MOE_Q8_0) v = _mm_mul_ps(d, _mm_cvtepi32_ps(q));
        else if (kind == MOE_Q4_0) v = _mm_mul_ps(_mm_cvtepi32_ps(_mm_sub_epi32(q, _mm_set1_epi32(8))), d);
        else v = _mm_add_ps(_mm_mul_ps(_mm_cvtepi32_ps(q), d), m);
        _mm_storeu_ps(dst + b * 32 + 4 * e4, v);
      }
    }
  }
}

Q_VNNI_TARGET static float minima_vnni(const uint8_t *mptr, const float *sx, size_t blocks) {
  __m512 acc = _mm512_setzero_ps();
  size_t b = 0;
  for (; b + 16 <= blocks; b += 16) {
    __m512 m = _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(mptr + 2 * b)));
    acc = _mm512_fmadd_ps(m, _mm512_loadu_ps(sx + b), acc);
  }
  if (b < blocks) {
    __mmask16 k = (__mmask16)((1u << (blocks - b)) - 1);
    __m512 m = _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(k, mptr + 2 * b));
    acc = _mm512_fmadd_ps(m, _mm512_maskz_loadu_ps(k, sx + b), acc);
  }
  return _mm512_reduce_add_ps(acc);
}

// The 16 int32 lanes of one pair's dot product: unsigned stored quants (Q8_0
// offset by 128) times the activation quants, started from the bias that
// removes the offset.
Q_VNNI_TARGET static inline __m512i pair_dot_vnni(int kind, const uint8_t *wq, const int8_t *xq, const int32_t *bias) {
  __m512i u;
  if (kind == MOE_Q8_0) {
    u = _mm512_xor_si512(_mm512_loadu_si512(wq), _mm512_set1_epi8((char)0x80));
  } else {
    __m256i v = _mm256_loadu_si256((const __m256i *)wq);
    u = _mm512_and_si512(_mm512_inserti64x4(_mm512_castsi256_si512(v), _mm256_srli_epi16(v, 4), 1),
                         _mm512_set1_epi8(0x0F));
  }
  __m512i start = kind == MOE_Q4_1 ? _mm512_setzero_si512() : _mm512_loadu_si512(bias);
  return _mm512_dpbusd_epi32(start, u, _mm512_loadu_si512(xq));
}

Q_VNNI_TARGET static inline void row_scales_vnni(const uint8_t *dptr, const float *dx, size_t blocks, float *out) {
  size_t b = 0;
  for (; b + 16 <= blocks; b += 16)
    _mm512_storeu_ps(out + b, _mm512_mul_ps(_mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(dptr + 2 * b))),
                                            _mm512_loadu_ps(dx + b)));
  if (b < blocks) {
    __mmask16 k = (__mmask16)((1u << (blocks - b)) - 1);
    _mm512_mask_storeu_ps(out + b, k, _mm512_mul_ps(_mm512_cvtph_ps(_mm256_maskz_loadu_epi16(k, dptr + 2 * b)),
                                                    _mm512_maskz_loadu_ps(k, dx + b)));
  }
}

Q_GEMM(gemm_vnni, Q_VNNI_TARGET, __m512, _mm512_setzero_ps, row_scales_vnni, pair_dot_vnni, _mm512_castpd_ps,
       _mm512_set1_pd, _mm512_cvtepi32_ps, _mm512_fmadd_ps, _mm512_reduce_add_ps, minima_vnni)

#else

int moe_q_vnni_native(void) { return 0; }
int moe_q_avx2_native(void) { return 0; }

#endif

void moe_q_gemm(int isa, int kind, int hinted, size_t n, size_t rows, size_t cols, const void *w, size_t ldw, const void *xq,
                size_t ldxq, float *c, size_t ldc, int accumulate) {
#if defined(__x86_64__)
  if (isa == MOE_Q_ISA_AVX512_VNNI && moe_q_vnni_native()) {
    gemm_vnni(kind, hinted, n, rows, cols, w, ldw, xq, ldxq, c, ldc, accumulate);
    return;
  }
  if (isa == MOE_Q_ISA_AVX2 && moe_q_avx2_native()) {
    gemm_avx2(kind, hinted, n, rows, cols, w, ldw, xq, ldxq, c, ldc, accumulate);
    return;
  }
#endif
  gemm_portable(kind, n, rows, cols, w, ldw, xq, ldxq, c, ldc, accumulate);
}
