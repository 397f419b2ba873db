// bf16 compute on AVX512-BF16: packing of f32 or bf16 operands into
// pair-interleaved bf16 panels, the 6 x 32 vdpbf16ps microkernel, and a
// vdpbf16ps throughput loop. PackedGEMM (MoEKernelCode) runs its blocked loop
// over these when a product asks for bf16 compute and moe_bf16_native() says
// the CPU runs them; nothing here is reached otherwise.
//
// Panels hold 32-bit words, each the bf16 values of two consecutive inner
// indices (2p in the low half, 2p + 1 in the high half), as vdpbf16ps pairs
// them: an A panel holds, per pair p, MOE_BF16_MR words (one per row); a B panel
// holds, per pair p, MOE_BF16_NR words (one per column). An odd last inner
// index has a zero partner; rows and columns past the edge are zero words.
//
// Rounding (f32 -> bf16) is that of vcvtneps2bf16: round to nearest even, NaN
// stays NaN (quieted), subnormal inputs become a zero of the same sign.
// bf16 operands are taken as stored.
#include "moe_cpu.h"

#include <string.h>

#if defined(__x86_64__)
#include <immintrin.h>
#define BF16_TARGET __attribute__((target("avx512f,avx512bw,avx512vl,avx512bf16")))

int moe_bf16_native(void) {
  const uint32_t need = MOE_CPU_AVX512F | MOE_CPU_AVX512BW | MOE_CPU_AVX512VL | MOE_CPU_AVX512BF16;
  return (moe_cpu_features() & need) == need;
}

// One f32 as bf16 bits, exactly as vcvtneps2bf16 rounds it.
static inline uint32_t round_bf16(float value) {
  uint32_t bits;
  memcpy(&bits, &value, 4);
  if ((bits & 0x7F800000u) == 0) return (bits >> 16) & 0x8000u;           // zero, subnormal
  if ((bits & 0x7FFFFFFFu) > 0x7F800000u) return ((bits >> 16) | 0x40u) & 0xFFFFu;  // NaN
  return ((bits + 0x7FFFu + ((bits >> 16) & 1u)) >> 16) & 0xFFFFu;
}

BF16_TARGET static inline __m512i widen_pbh(__m256bh v) {
  __m256i bits;
  memcpy(&bits, &v, sizeof bits);
  return _mm512_cvtepu16_epi32(bits);
}

// out[i] = bf16(s0[i]) | bf16(s1[i]) << 16 for i < n (s1 NULL: a zero partner).
BF16_TARGET static void pair_words(const void *s0, const void *s1, int bf16, size_t n, uint32_t *out) {
  size_t i = 0;
  if (bf16) {
    const uint16_t *a = s0, *b = s1;
    for (; i + 16 <= n; i += 16) {
      __m512i lo = _mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i *)(a + i)));
      __m512i hi = b ? _mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i *)(b + i))) : _mm512_setzero_si512();
      _mm512_storeu_si512(out + i, _mm512_or_si512(lo, _mm512_slli_epi32(hi, 16)));
    }
    for (; i < n; i++) out[i] = (uint32_t)a[i] | (b ? (uint32_t)b[i] << 16 : 0);
    return;
  }
  const float *a = s0, *b = s1;
  for (; i + 16 <= n; i += 16) {
    __m512i lo = widen_pbh(_mm512_cvtneps_pbh(_mm512_loadu_ps(a + i)));
    __m512i hi = b ? widen_pbh(_mm512_cvtneps_pbh(_mm512_loadu_ps(b + i))) : _mm512_setzero_si512();
    _mm512_storeu_si512(out + i, _mm512_or_si512(lo, _mm512_slli_epi32(hi, 16)));
  }
  for (; i < n; i++) out[i] = round_bf16(a[i]) | (b ? round_bf16(b[i]) << 16 : 0);
}

// n consecutive elements as (n + 1) / 2 words: out[p] = bf16(src[2p]) | bf16(src[2p + 1]) << 16.
BF16_TARGET static void run_words(const void *src, int bf16, size_t n, uint32_t *out) {
  size_t p = 0, pairs = n / 2;
  if (bf16) {
    const uint16_t *s = src;
    memcpy(out, s, pairs * 4);
    if (n & 1) out[pairs] = s[n - 1];
    return;
  }
  const float *s = src;
  for (; p + 16 <= pairs; p += 16) {
    __m512bh v = _mm512_cvtne2ps_pbh(_mm512_loadu_ps(s + 2 * p + 16), _mm512_loadu_ps(s + 2 * p));
    __m512i bits;
    memcpy(&bits, &v, sizeof bits);
    _mm512_storeu_si512(out + p, bits);
  }
  for (; p < pairs; p++) out[p] = round_bf16(s[2 * p]) | round_bf16(s[2 * p + 1]) << 16;
  if (n & 1) out[pairs] = round_bf16(s[n - 1]);
}

enum { CHUNK = 256 };  // words converted at once before they are spread over panels

// Transposed A (element (i, t) at b[t * ld + i]): the rows of a pair of inner
// indices are two stored rows, turned into words for a run of rows at a time;
// the word of row r and pair p goes to dst[(r / rows) * panel + p * pstride + r % rows]
// (panels of `rows` rows side by side, or with rows 1 one row after another).
BF16_TARGET static inline __attribute__((always_inline)) void pack_a_transposed(
    const char *b, size_t ld, size_t es, int bf16, size_t r0, size_t mc, size_t c0, size_t kc, uint32_t *dst,
    size_t rows, size_t panel, size_t pstride) {
  uint32_t tmp[CHUNK];
  for (size_t p = 0; p < (kc + 1) / 2; p++) {
    const char *s0 = b + ((c0 + 2 * p) * ld + r0) * es;
    const char *s1 = 2 * p + 1 < kc ? s0 + ld * es : NULL;
    for (size_t i0 = 0; i0 < mc; i0 += CHUNK) {
      size_t n = mc - i0 < CHUNK ? mc - i0 : CHUNK;
      pair_words(s0 + i0 * es, s1 ? s1 + i0 * es : NULL, bf16, n, tmp);
      for (size_t i = 0; i < n; i++) {
        size_t r = i0 + i;
        dst[(r / rows) * panel + p * pstride + r % rows] = tmp[i];
      }
    }
  }
}

BF16_TARGET void moe_bf16_pack_a(const void *base, size_t ld, int transposed, int bf16, size_t r0, size_t mc,
                                 size_t c0, size_t kc, uint32_t *dst) {
  const size_t MR = MOE_BF16_MR, kp = (kc + 1) / 2, es = bf16 ? 2 : 4;
  const char *b = base;
  uint32_t tmp[CHUNK];
  const size_t panels = (mc + MR - 1) / MR;
  // Rows past mc in the last panel are zero.
  if (mc % MR) {
    uint32_t *last = dst + (panels - 1) * kp * MR;
    for (size_t p = 0; p < kp; p++)
      for (size_t i = mc % MR; i < MR; i++) last[p * MR + i] = 0;
  }
  if (!transposed) {
    // Row i's inner indices are contiguous: convert a run, spread it with stride MR.
    for (size_t i = 0; i < mc; i++) {
      uint32_t *panel = dst + (i / MR) * kp * MR + i % MR;
      const char *row = b + ((r0 + i) * ld + c0) * es;
      for (size_t p0 = 0; p0 < kp; p0 += CHUNK) {
        size_t words = kp - p0 < CHUNK ? kp - p0 : CHUNK;
        size_t elements = 2 * (p0 + words) <= kc ? 2 * words : kc - 2 * p0;
        run_words(row + 2 * p0 * es, bf16, elements, tmp);
        for (size_t p = 0; p < words; p++) panel[(p0 + p) * MR] = tmp[p];
      }
    }
    return;
  }
  // Transposed: element (i, t) at base[t * ld + i].
  pack_a_transposed(b, ld, es, bf16, r0, mc, c0, kc, dst, MR, kp * MR, MR);
}

// r[i] word j becomes r[j] word i (a 16 x 16 transpose of 32-bit words):
// pairs of rows interleaved by words, then by pairs of words, then the
// 128-bit lanes gathered across rows.
BF16_TARGET static inline void transpose16(__m512i r[16]) {
  __m512i t[16], u[16];
  for (int i = 0; i < 16; i += 2) {
    t[i] = _mm512_unpacklo_epi32(r[i], r[i + 1]);
    t[i + 1] = _mm512_unpackhi_epi32(r[i], r[i + 1]);
  }
  // u[4g + c], lane L: word 4L + c of rows 4g..4g+3.
  for (int g = 0; g < 16; g += 4) {
    u[g] = _mm512_unpacklo_epi64(t[g], t[g + 2]);
    u[g + 1] = _mm512_unpackhi_epi64(t[g], t[g + 2]);
    u[g + 2] = _mm512_unpacklo_epi64(t[g + 1], t[g + 3]);
    u[g + 3] = _mm512_unpackhi_epi64(t[g + 1], t[g + 3]);
  }
  for (int c = 0; c < 4; c++) {
    __m512i v0 = _mm512_shuffle_i32x4(u[c], u[4 + c], 0x88), v1 = _mm512_shuffle_i32x4(u[c], u[4 + c], 0xDD);
    __m512i w0 = _mm512_shuffle_i32x4(u[8 + c], u[12 + c], 0x88), w1 = _mm512_shuffle_i32x4(u[8 + c], u[12 + c], 0xDD);
    r[c] = _mm512_shuffle_i32x4(v0, w0, 0x88);
    r[8 + c] = _mm512_shuffle_i32x4(v0, w0, 0xDD);
    r[4 + c] = _mm512_shuffle_i32x4(v1, w1, 0x88);
    r[12 + c] = _mm512_shuffle_i32x4(v1, w1, 0xDD);
  }
}

BF16_TARGET void moe_bf16_pack_b(const void *base, size_t ld, int transposed, int bf16, size_t r0, size_t kc,
                                 size_t c0, size_t nc, size_t steps, uint32_t *dst) {
  const size_t NR = MOE_BF16_NR, kp = (kc + 1) / 2, es = bf16 ? 2 : 4;
  const char *b = base;
  uint32_t block[16][CHUNK] __attribute__((aligned(64)));
  for (size_t j0 = 0; j0 < nc; j0 += NR) {
    uint32_t *panel = dst + (j0 / NR) * steps * NR;
    const size_t cols = nc - j0 < NR ? nc - j0 : NR;
    if (steps > kp) memset(panel + kp * NR, 0, (steps - kp) * NR * 4);
    if (!transposed) {
      // Element (t, j) at base[t * ld + j]: each pair of stored rows gives one row of words.
      for (size_t p = 0; p < kp; p++) {
        const char *s0 = b + ((r0 + 2 * p) * ld + c0 + j0) * es;
        const char *s1 = 2 * p + 1 < kc ? s0 + ld * es : NULL;
        pair_words(s0, s1, bf16, cols, panel + p * NR);
        for (size_t j = cols; j < NR; j++) panel[p * NR + j] = 0;
      }
      continue;
    }
    // Transposed: element (t, j) at base[j * ld + t]; column j's inner indices
    // are contiguous. Sixteen columns at a time: each converted to its words,
    // then 16 x 16 blocks of words transposed into panel rows.
    for (size_t g = 0; g < NR; g += 16) {
      for (size_t p0 = 0; p0 < kp; p0 += CHUNK) {
        size_t words = kp - p0 < CHUNK ? kp - p0 : CHUNK;
        size_t elements = 2 * (p0 + words) <= kc ? 2 * words : kc - 2 * p0;
        for (size_t j = 0; j < 16; j++) {
          if (g + j < cols) run_words(b + ((c0 + j0 + g + j) * ld + r0 + 2 * p0) * es, bf16, elements, block[j]);
          else memset(block[j], 0, words * 4);
        }
        size_t p = 0;
        for (; p + 16 <= words; p += 16) {
          __m512i r[16];
          for (int i = 0; i < 16; i++) r[i] = _mm512_load_si512(block[i] + p);
          transpose16(r);
          for (int q = 0; q < 16; q++) _mm512_storeu_si512(panel + (p0 + p + q) * NR + g, r[q]);
        }
        for (; p < words; p++)
          for (size_t j = 0; j < 16; j++) panel[(p0 + p) * NR + g + j] = block[j][p];
      }
    }
  }
}

#define ROW(r, acc0, acc1)                                                   \
  x = _mm512_set1_epi32((int)a[r]);                                          \
  memcpy(&xb, &x, sizeof xb);                                                \
  acc0 = _mm512_dpbf16_ps(acc0, xb, b0);                                     \
  acc1 = _mm512_dpbf16_ps(acc1, xb, b1)

BF16_TARGET void moe_bf16_micro(size_t kp, const uint32_t *a, const uint32_t *b, float *c, size_t ldc,
                                int mr, int nr, int accumulate) {
  __m512 c00 = _mm512_setzero_ps(), c01 = c00, c10 = c00, c11 = c00, c20 = c00, c21 = c00;
  __m512 c30 = c00, c31 = c00, c40 = c00, c41 = c00, c50 = c00, c51 = c00;
  moe_prefetch_tile(c, ldc, mr < MOE_BF16_MR ? mr : MOE_BF16_MR, MOE_BF16_NR);
  for (size_t p = 0; p < kp; p++) {
    __m512i w0 = _mm512_loadu_si512(b), w1 = _mm512_loadu_si512(b + 16), x;
    __m512bh b0, b1, xb;
    memcpy(&b0, &w0, sizeof b0);
    memcpy(&b1, &w1, sizeof b1);
    ROW(0, c00, c01);
    ROW(1, c10, c11);
    ROW(2, c20, c21);
    ROW(3, c30, c31);
    ROW(4, c40, c41);
    ROW(5, c50, c51);
    a += MOE_BF16_MR;
    b += MOE_BF16_NR;
  }
  const __mmask16 m0 = nr >= 16 ? 0xFFFF : (__mmask16)((1u << nr) - 1);
  const __mmask16 m1 = nr >= 32 ? 0xFFFF : nr > 16 ? (__mmask16)((1u << (nr - 16)) - 1) : 0;
  __m512 rows[12] = { c00, c01, c10, c11, c20, c21, c30, c31, c40, c41, c50, c51 };
  for (int r = 0; r < mr && r < MOE_BF16_MR; r++) {
    float *dst = c + (size_t)r * ldc;
    __m512 v0 = rows[2 * r], v1 = rows[2 * r + 1];
    if (accumulate) {
      v0 = _mm512_add_ps(_mm512_maskz_loadu_ps(m0, dst), v0);
      v1 = _mm512_add_ps(_mm512_maskz_loadu_ps(m1, dst + 16), v1);
    }
    _mm512_mask_storeu_ps(dst, m0, v0);
    _mm512_mask_storeu_ps(dst + 16, m1, v1);
  }
}
#undef ROW

BF16_TARGET double moe_bf16_dot_loop(size_t iterations, float tiny, float *sink) {
  __m512i one = _mm512_set1_epi32(0x3F803F80), small = _mm512_set1_epi32((int)(round_bf16(tiny) * 0x10001u));
  __m512bh x, y;
  memcpy(&x, &small, sizeof x);
  memcpy(&y, &one, sizeof y);
  __m512 a0 = _mm512_set1_ps(0.1f), a1 = _mm512_set1_ps(0.2f), a2 = _mm512_set1_ps(0.3f), a3 = _mm512_set1_ps(0.4f);
  __m512 a4 = _mm512_set1_ps(0.5f), a5 = _mm512_set1_ps(0.6f), a6 = _mm512_set1_ps(0.7f), a7 = _mm512_set1_ps(0.8f);
  __m512 a8 = _mm512_set1_ps(0.9f), a9 = _mm512_set1_ps(1.0f), a10 = _mm512_set1_ps(1.1f), a11 = _mm512_set1_ps(1.2f);
  for (size_t i = 0; i < iterations; i++) {
    a0 = _mm512_dpbf16_ps(a0, x, y); a1 = _mm512_dpbf16_ps(a1, x, y); a2 = _mm512_dpbf16_ps(a2, x, y);
    a3 = _mm512_dpbf16_ps(a3, x, y); a4 = _mm512_dpbf16_ps(a4, x, y); a5 = _mm512_dpbf16_ps(a5, x, y);
    a6 = _mm512_dpbf16_ps(a6, x, y); a7 = _mm512_dpbf16_ps(a7, x, y); a8 = _mm512_dpbf16_ps(a8, x, y);
    a9 = _mm512_dpbf16_ps(a9, x, y); a10 = _mm512_dpbf16_ps(a10, x, y); a11 = _mm512_dpbf16_ps(a11, x, y);
  }
  __m512 s = _mm512_add_ps(_mm512_add_ps(_mm512_add_ps(a0, a1), _mm512_add_ps(a2, a3)),
                           _mm512_add_ps(_mm512_add_ps(a4, a5), _mm512_add_ps(a6, a7)));
  s = _mm512_add_ps(s, _mm512_add_ps(_mm512_add_ps(a8, a9), _mm512_add_ps(a10, a11)));
  if (sink) *sink = _mm512_reduce_add_ps(s);
  // Each vdpbf16ps: 16 lanes x 2 bf16 multiply-adds x 2 operations.
  return (double)iterations * 12.0 * 16.0 * 2.0 * 2.0;
}

// MARK: - AMX-BF16 tiles
//
// Linux gives a process the AMX tile state only on request
// (arch_prctl(ARCH_REQ_XCOMP_PERM, XTILEDATA)); until then a tile instruction
// faults. moe_amx_native() asks once per process and says whether it was granted.
// The tile configuration is per thread: moe_amx_begin() loads it before a
// thread's tiles are used, moe_amx_end() releases the tiles (the OS then saves
// no tile state for the thread).

#include <pthread.h>
#include <sys/syscall.h>
#include <unistd.h>

#define AMX_TARGET __attribute__((target("avx512f,avx512bw,avx512vl,avx512bf16,amx-tile,amx-bf16")))

enum { ARCH_GET_XCOMP_PERM_ = 0x1022, ARCH_REQ_XCOMP_PERM_ = 0x1023, XFEATURE_XTILEDATA_ = 18 };

static pthread_once_t amx_once = PTHREAD_ONCE_INIT;
static int amx_granted;

static void request_amx(void) {
  if (!moe_bf16_native() || !(moe_cpu_features() & MOE_CPU_AMXBF16)) return;
  if (syscall(SYS_arch_prctl, ARCH_REQ_XCOMP_PERM_, XFEATURE_XTILEDATA_) != 0) return;
  unsigned long granted = 0;
  if (syscall(SYS_arch_prctl, ARCH_GET_XCOMP_PERM_, &granted) != 0) return;
  amx_granted = (granted & (1ul << XFEATURE_XTILEDATA_)) != 0;
}

int moe_amx_native(void) {
  pthread_once(&amx_once, request_amx);
  return amx_granted;
}

// Palette 1; tiles 0-3 hold C (rows 0-15 / 16-31 by columns 0-15 / 16-31),
// 4-5 A (rows 0-15, 16-31), 6-7 B (columns 0-15, 16-31): all 16 rows of 64 bytes.
struct tile_config {
  uint8_t palette, start_row, reserved[14];
  uint16_t colsb[16];
  uint8_t rows[16];
} __attribute__((aligned(64)));

AMX_TARGET void moe_amx_begin(void) {
  struct tile_config cfg;
  memset(&cfg, 0, sizeof cfg);
  cfg.palette = 1;
  for (int t = 0; t < 8; t++) {
    cfg.colsb[t] = 64;
    cfg.rows[t] = 16;
  }
  _tile_loadconfig(&cfg);
}

AMX_TARGET void moe_amx_end(void) { _tile_release(); }

AMX_TARGET void moe_amx_pack_a(const void *base, size_t ld, int transposed, int bf16, size_t r0, size_t mc,
                               size_t c0, size_t kc, size_t steps, uint32_t *dst) {
  const size_t MR = MOE_AMX_MR, kp = (kc + 1) / 2, es = bf16 ? 2 : 4;
  const char *b = base;
  const size_t panels = (mc + MR - 1) / MR;
  // Rows past mc in the last panel, and pairs past kp in every row, are zero.
  if (mc % MR) memset(dst + ((panels - 1) * MR + mc % MR) * steps, 0, (MR - mc % MR) * steps * 4);
  if (steps > kp)
    for (size_t i = 0; i < mc; i++) memset(dst + i * steps + kp, 0, (steps - kp) * 4);
  if (!transposed) {
    // Row i's inner indices are contiguous and so are its words.
    for (size_t i = 0; i < mc; i++) run_words(b + ((r0 + i) * ld + c0) * es, bf16, kc, dst + i * steps);
    return;
  }
  // Transposed: element (i, t) at base[t * ld + i].
  pack_a_transposed(b, ld, es, bf16, r0, mc, c0, kc, dst, 1, steps, 1);
}

AMX_TARGET void moe_amx_micro(size_t steps, const uint32_t *a, const uint32_t *b, float *c, size_t ldc, int mr,
                              int nr, int accumulate) {
  const size_t sa = steps * 4, sb = MOE_BF16_NR * 4;
  const uint32_t *a1 = a + 16 * steps;
  // The tiles start from C (accumulate) or zero and end in C; an edge tile
  // goes through `edge`, so that no tile load or store touches memory past C.
  const int full = mr == MOE_AMX_MR && nr == MOE_BF16_NR;
  float edge[MOE_AMX_MR * MOE_BF16_NR] __attribute__((aligned(64)));
  float *t = full ? c : edge;
  const size_t ldt = full ? ldc : MOE_BF16_NR, st = ldt * 4;
  const __mmask16 m0 = nr >= 16 ? 0xFFFF : (__mmask16)((1u << nr) - 1);
  const __mmask16 m1 = nr >= 32 ? 0xFFFF : nr > 16 ? (__mmask16)((1u << (nr - 16)) - 1) : 0;
  if (accumulate) {
    if (!full)
      for (int r = 0; r < MOE_AMX_MR; r++) {
        const float *src = c + (size_t)r * ldc;
        _mm512_store_ps(edge + r * MOE_BF16_NR, r < mr ? _mm512_maskz_loadu_ps(m0, src) : _mm512_setzero_ps());
        _mm512_store_ps(edge + r * MOE_BF16_NR + 16, r < mr ? _mm512_maskz_loadu_ps(m1, src + 16) : _mm512_setzero_ps());
      }
    _tile_loadd(0, t, st);
    _tile_loadd(1, t + 16, st);
    _tile_loadd(2, t + 16 * ldt, st);
    _tile_loadd(3, t + 16 * ldt + 16, st);
  } else {
    _tile_zero(0);
    _tile_zero(1);
    _tile_zero(2);
    _tile_zero(3);
  }
  // Skip the tiles a narrow edge leaves empty: their sums would be discarded.
  if (mr > 16 && nr > 16) {
    for (size_t p = 0; p < steps; p += 16) {
      _tile_loadd(4, a + p, sa);
      _tile_loadd(6, b + p * MOE_BF16_NR, sb);
      _tile_loadd(7, b + p * MOE_BF16_NR + 16, sb);
      _tile_loadd(5, a1 + p, sa);
      _tile_dpbf16ps(0, 4, 6);
      _tile_dpbf16ps(1, 4, 7);
      _tile_dpbf16ps(2, 5, 6);
      _tile_dpbf16ps(3, 5, 7);
    }
  } else if (nr > 16) {
    for (size_t p = 0; p < steps; p += 16) {
      _tile_loadd(4, a + p, sa);
      _tile_loadd(6, b + p * MOE_BF16_NR, sb);
      _tile_loadd(7, b + p * MOE_BF16_NR + 16, sb);
      _tile_dpbf16ps(0, 4, 6);
      _tile_dpbf16ps(1, 4, 7);
    }
  } else if (mr > 16) {
    for (size_t p = 0; p < steps; p += 16) {
      _tile_loadd(4, a + p, sa);
      _tile_loadd(5, a1 + p, sa);
      _tile_loadd(6, b + p * MOE_BF16_NR, sb);
      _tile_dpbf16ps(0, 4, 6);
      _tile_dpbf16ps(2, 5, 6);
    }
  } else {
    for (size_t p = 0; p < steps; p += 16) {
      _tile_loadd(4, a + p, sa);
      _tile_loadd(6, b + p * MOE_BF16_NR, sb);
      _tile_dpbf16ps(0, 4, 6);
    }
  }
  _tile_stored(0, t, st);
  _tile_stored(1, t + 16, st);
  if (mr > 16) {
    _tile_stored(2, t + 16 * ldt, st);
    _tile_stored(3, t + 16 * ldt + 16, st);
  }
  if (full) return;
  for (int r = 0; r < mr && r < MOE_AMX_MR; r++) {
    float *dst = c + (size_t)r * ldc;
    _mm512_mask_storeu_ps(dst, m0, _mm512_load_ps(edge + r * MOE_BF16_NR));
    _mm512_mask_storeu_ps(dst + 16, m1, _mm512_load_ps(edge + r * MOE_BF16_NR + 16));
  }
}

AMX_TARGET double moe_amx_dot_loop(size_t iterations, float tiny, float *sink) {
  uint32_t a[16 * 16] __attribute__((aligned(64))), b[16 * 16] __attribute__((aligned(64)));
  uint32_t word = round_bf16(tiny) * 0x10001u, one = 0x3F803F80u;
  for (int i = 0; i < 256; i++) { a[i] = word; b[i] = one; }
  moe_amx_begin();
  // Six independent accumulators (tiles 0-5) over one A and one B tile, so
  // that the loop runs at the instruction's throughput, not its latency.
  _tile_zero(0);
  _tile_zero(1);
  _tile_zero(2);
  _tile_zero(3);
  _tile_zero(4);
  _tile_zero(5);
  _tile_loadd(6, a, 64);
  _tile_loadd(7, b, 64);
  for (size_t i = 0; i < iterations; i++) {
    _tile_dpbf16ps(0, 6, 7);
    _tile_dpbf16ps(1, 6, 7);
    _tile_dpbf16ps(2, 6, 7);
    _tile_dpbf16ps(3, 6, 7);
    _tile_dpbf16ps(4, 6, 7);
    _tile_dpbf16ps(5, 6, 7);
  }
  float out[16 * 16] __attribute__((aligned(64)));
  float total = 0;
  for (int t = 0; t < 6; t++) {
    if (t == 0) _tile_stored(0, out, 64);
    if (t == 1) _tile_stored(1, out, 64);
    if (t == 2) _tile_stored(2, out, 64);
    if (t == 3) _tile_stored(3, out, 64);
    if (t == 4) _tile_stored(4, out, 64);
    if (t == 5) _tile_stored(5, out, 64);
    for (int i = 0; i < 256; i++) total += out[i];
  }
  moe_amx_end();
  if (sink) *sink = total;
  // Each tdpbf16ps: 16 x 16 outputs x 32 bf16 multiply-adds x 2 operations.
  return (double)iterations * 6.0 * 16.0 * 16.0 * 32.0 * 2.0;
}

#else
int moe_bf16_native(void) { return 0; }
void moe_bf16_pack_a(const void *base, size_t ld, int transposed, int bf16, size_t r0, size_t mc, size_t c0,
                     size_t kc, uint32_t *dst) {
  (void)base; (void)ld; (void)transposed; (void)bf16; (void)r0; (void)mc; (void)c0; (void)kc; (void)dst;
}
void moe_bf16_pack_b(const void *base, size_t ld, int transposed, int bf16, size_t r0, size_t kc, size_t c0,
                     size_t nc, size_t steps, uint32_t *dst) {
  (void)base; (void)ld; (void)transposed; (void)bf16; (void)r0; (void)kc; (void)c0; (void)nc; (void)steps; (void)dst;
}
void moe_bf16_micro(size_t kp, const uint32_t *a, const uint32_t *b, float *c, size_t ldc, int mr, int nr,
                    int accumulate) {
  (void)kp; (void)a; (void)b; (void)c; (void)ldc; (void)mr; (void)nr; (void)accumulate;
}
double moe_bf16_dot_loop(size_t iterations, float tiny, float *sink) {
  (void)iterations; (void)tiny;
  if (sink) *sink = 0;
  return 0;
}
// Never called here: moe_amx_native() is 0.
int moe_amx_native(void) { return 0; }
void moe_amx_begin(void) {}
void moe_amx_end(void) {}
void moe_amx_pack_a(const void *base, size_t ld, int transposed, int bf16, size_t r0, size_t mc, size_t c0,
                    size_t kc, size_t steps, uint32_t *dst) {}
void moe_amx_micro(size_t steps, const uint32_t *a, const uint32_t *b, float *c, size_t ldc, int mr, int nr,
                   int accumulate) {}
double moe_amx_dot_loop(size_t iterations, float tiny, float *sink) { return moe_bf16_dot_loop(iterations, tiny, sink); }
#endif
