// What the CPU and the OS let the kernels use, and per-thread packing buffers.
// Internal to the library (not part of the public header).
#ifndef MOE_CPU_H
#define MOE_CPU_H

#include <stddef.h>
#include <stdint.h>

// Internal to libmoeupcycle.so: never exported.
#define MOE_CPU_INTERNAL __attribute__((visibility("hidden")))

// Feature bits: set only when the CPU reports the instructions AND the OS
// saves the register state they need (XCR0), so code using them cannot fault.
typedef enum moe_cpu_feature {
  MOE_CPU_SSE2 = 1u << 0,
  MOE_CPU_AVX2 = 1u << 1,       // AVX2 with ymm state enabled
  MOE_CPU_FMA = 1u << 2,        // FMA3 with ymm state enabled
  MOE_CPU_AVX512F = 1u << 3,    // AVX-512 F with zmm/opmask state enabled
  MOE_CPU_AVX512BW = 1u << 4,
  MOE_CPU_AVX512VL = 1u << 5,
  MOE_CPU_AVX512DQ = 1u << 6,
  MOE_CPU_AVX512BF16 = 1u << 7,
  MOE_CPU_AMXBF16 = 1u << 8,    // AMX-BF16 with tile state enabled in XCR0
  MOE_CPU_F16C = 1u << 9,
  MOE_CPU_AVX512VNNI = 1u << 10,
} moe_cpu_feature;

// The feature bits of the running CPU (computed once).
MOE_CPU_INTERNAL uint32_t moe_cpu_features(void);

// 1 when the CPU's vendor is Intel (cpuid vendor "GenuineIntel").
MOE_CPU_INTERNAL int moe_cpu_is_intel(void);

// The CPU's brand string ("AMD EPYC ..."), NUL-terminated in buf (at least 49 bytes).
MOE_CPU_INTERNAL void moe_cpu_brand(char *buf, size_t capacity);

// Bytes of the L2 cache a core has, as the C library reads it from cpuid
// (computed once); 1 MiB where it reports none.
MOE_CPU_INTERNAL size_t moe_cpu_l2_bytes(void);

// A per-thread buffer of at least `floats` floats, 64-byte aligned, kept for the
// thread's lifetime and reused by later calls with the same slot (0..3).
// NULL when memory is exhausted or the slot is out of range.
MOE_CPU_INTERNAL float *moe_thread_buffer(unsigned slot, size_t floats);

// Asks for the cache line holding `p` ahead of its use: a hint that never
// faults, so `p` may lie past the end of a buffer. Memory-bound loops over
// weight rows (decode) issue it a few rows ahead of their loads.
static inline void moe_prefetch(const void *p) { __builtin_prefetch(p, 0, 3); }
// Every line of `rows` rows of `cols` floats at c (ldc apart), asked for to
// be written: a microkernel's tile of C, which it reads or writes only after
// its inner loop, fetched while that loop runs.
static inline void moe_prefetch_tile(float *c, size_t ldc, int rows, size_t cols) {
  for (int r = 0; r < rows; r++) {
    const float *row = c + (size_t)r * ldc;
    for (size_t o = 0; o < cols; o += 16) __builtin_prefetch(row + o, 1, 3);
    __builtin_prefetch(row + cols - 1, 1, 3);
  }
}

// MARK: - AdamW (adamw.c)

// The scalars of one AdamW step: gradients are multiplied by clip_scale; c1,
// c2 are the bias corrections 1 / (1 - beta^t); keep is 1 - lr * weight_decay
// for decayed tensors, else 1.
typedef struct moe_adamw_step {
  float clip_scale, beta1, beta2, c1, c2, lr, eps, keep;
} moe_adamw_step;

// Updates count parameters w with gradients g and moments m, v in place and
// sets the gradients to zero, on the widest vectors the CPU runs.
MOE_CPU_INTERNAL void moe_adamw_f32(float *w, float *g, float *m, float *v, size_t count, const moe_adamw_step *s);

// MARK: - f32 panels packed by register transposes (pack.c)
//
// Stored rows 0..<nr of src (rows ld apart; row j is column j of B), elements
// 0..<kc of each, into dst[t * nr + j]: one packed B panel of the f32 GEMM.
// nr is a multiple of 16 (AVX-512) or 8 (AVX2). Call each only on a CPU with
// that instruction set.
MOE_CPU_INTERNAL void moe_pack_bt_f32_avx512(const float *src, size_t ld, size_t kc, size_t nr, float *dst);
MOE_CPU_INTERNAL void moe_pack_bt_f32_avx2(const float *src, size_t ld, size_t kc, size_t nr, float *dst);

// Stored rows 0..<mr of src (rows ld apart), elements 0..<kc of each, into
// dst[t * mr + i]: one packed A panel of the f32 GEMM. mr is at most 16
// (AVX-512) or 8 (AVX2); the panel's rows all exist (no zero padding).
MOE_CPU_INTERNAL void moe_pack_a_f32_avx512(const float *src, size_t ld, size_t kc, size_t mr, float *dst);
MOE_CPU_INTERNAL void moe_pack_a_f32_avx2(const float *src, size_t ld, size_t kc, size_t mr, float *dst);

// MARK: - bf16 compute on AVX512-BF16 (bf16.c)
//
// Pair-interleaved panels of 32-bit words (inner indices 2p and 2p + 1 of one
// row or column in the low and high half), the 6 x 32 vdpbf16ps microkernel and
// a throughput loop. Call any of them only when moe_bf16_native() is 1.

// Tile of the microkernel: rows of A per panel, columns of B per panel.
#define MOE_BF16_MR 6
#define MOE_BF16_NR 32

// 1 when the CPU and the OS run AVX-512 F, BW, VL and BF16.
MOE_CPU_INTERNAL int moe_bf16_native(void);

// A (element (i, t) at base[i * ld + t], or base[t * ld + i] when transposed;
// f32, or bf16 when `bf16`), rows r0..<r0+mc, inner indices c0..<c0+kc, into
// panels of MOE_BF16_MR rows: panel q at dst + q * ((kc + 1) / 2) * MR words.
MOE_CPU_INTERNAL void moe_bf16_pack_a(const void *base, size_t ld, int transposed, int bf16, size_t r0,
                                      size_t mc, size_t c0, size_t kc, uint32_t *dst);

// B (element (t, j) at base[t * ld + j], or base[j * ld + t] when transposed),
// inner indices r0..<r0+kc, columns c0..<c0+nc, into panels of MOE_BF16_NR
// columns of `steps` pairs (at least (kc + 1) / 2; the pairs past it are
// zero): panel q at dst + q * steps * NR words.
MOE_CPU_INTERNAL void moe_bf16_pack_b(const void *base, size_t ld, int transposed, int bf16, size_t r0,
                                      size_t kc, size_t c0, size_t nc, size_t steps, uint32_t *dst);

// The mr x nr (at most 6 x 32) tile at c (leading dimension ldc) from one A
// and one B panel of kp pairs: c = sum, or c += sum when `accumulate`. Per
// lane and pair, sum += a[2p+1] b[2p+1], then sum += a[2p] b[2p] (each rounded
// to f32, nearest even; subnormal inputs and results are zero).
MOE_CPU_INTERNAL void moe_bf16_micro(size_t kp, const uint32_t *a, const uint32_t *b, float *c, size_t ldc,
                                     int mr, int nr, int accumulate);

// `iterations` steps of 12 independent vdpbf16ps chains; returns the
// operations done (2 per bf16 multiply-add) and stores a value that depends on
// every chain in *sink.
MOE_CPU_INTERNAL double moe_bf16_dot_loop(size_t iterations, float tiny, float *sink);


// MARK: - bf16 compute on AMX-BF16 tiles (bf16.c)
//
// B panels as above (MOE_BF16_NR columns, `steps` pairs, a multiple of 16);
// A panels of MOE_AMX_MR rows, each row its `steps` words in a row. The
// microkernel computes a 32 x 32 tile of C with tdpbf16ps. Call any of them
// only when moe_amx_native() is 1, and the tile ones between moe_amx_begin()
// and moe_amx_end() on the same thread.

// Rows of A per AMX panel (two 16-row tiles).
#define MOE_AMX_MR 32

// 1 when the CPU and the OS run AMX-BF16 and AVX512-BF16 and the process has
// been granted the tile state (asked for on the first call).
MOE_CPU_INTERNAL int moe_amx_native(void);

// Loads the tile configuration on the calling thread / releases the tiles.
MOE_CPU_INTERNAL void moe_amx_begin(void);
MOE_CPU_INTERNAL void moe_amx_end(void);

// A (as for moe_bf16_pack_a) into panels of MOE_AMX_MR rows: row i of the
// block at dst + i * steps words (pairs past (kc + 1) / 2 and rows past mc zero;
// the last panel is complete).
MOE_CPU_INTERNAL void moe_amx_pack_a(const void *base, size_t ld, int transposed, int bf16, size_t r0,
                                     size_t mc, size_t c0, size_t kc, size_t steps, uint32_t *dst);

// The mr x nr (at most 32 x 32) tile at c from one A and one B panel of
// `steps` pairs (a multiple of 16): c = sum, or with `accumulate` the tile's
// products summed onto c in the tile registers (tdpbf16ps's own order).
MOE_CPU_INTERNAL void moe_amx_micro(size_t steps, const uint32_t *a, const uint32_t *b, float *c, size_t ldc,
                                    int mr, int nr, int accumulate);

// `iterations` steps of 6 independent tdpbf16ps chains; returns the
// operations done (2 per bf16 multiply-add), a value depending on all in *sink.
MOE_CPU_INTERNAL double moe_amx_dot_loop(size_t iterations, float tiny, float *sink);


// MARK: - Quantized weights (quant.c)
//
// GGML's Q8_0, Q4_0 and Q4_1 blocks of 32, repacked per row for integer dot
// products, and their products with activations quantized to int8 per block
// of 32. quant.c describes the layouts. `cols` is a multiple of 32 everywhere.

enum { MOE_Q8_0 = 0, MOE_Q4_0 = 1, MOE_Q4_1 = 2 };
enum { MOE_Q_ISA_PORTABLE = 0, MOE_Q_ISA_AVX2 = 1, MOE_Q_ISA_AVX512_VNNI = 2 };

// Bytes of one packed row (a multiple of 64) / of one quantized activation row.
MOE_CPU_INTERNAL size_t moe_q_row_bytes(int kind, size_t cols);
MOE_CPU_INTERNAL size_t moe_q_act_bytes(int kind, size_t cols);

// One row of GGML blocks (cols / 32 of them, as stored in GGUF) into the
// packed layout at dst (moe_q_row_bytes bytes), and a packed row back to f32
// exactly as GGUF dequantization gives it.
MOE_CPU_INTERNAL void moe_q_pack_row(int kind, const void *src, size_t cols, void *dst);
MOE_CPU_INTERNAL void moe_q_unpack_row(int kind, const void *row, size_t cols, float *dst);

// x[cols] quantized per block of 32 (scale max|x| / 127, nearest even, int8)
// into dst (moe_q_act_bytes bytes) for products with rows of `kind`. A block
// with a non-finite value gets a NaN scale.
MOE_CPU_INTERNAL void moe_q_quantize_act(int kind, const float *x, size_t cols, void *dst);

// c[i * ldc + j] (+)= row j of w (ldw bytes apart) . activation row i (ldxq
// bytes apart) for i < n, j < rows, on `isa` (MOE_Q_ISA_*; the plain C
// reference where the CPU lacks it). hinted: four rows read side by side, the
// rows ahead asked for by prefetch hints; else one row after another (the
// same sums either way).
MOE_CPU_INTERNAL void moe_q_gemm(int isa, int kind, int hinted, size_t n, size_t rows, size_t cols, const void *w,
                                 size_t ldw, const void *xq, size_t ldxq, float *c, size_t ldc, int accumulate);

// 1 when the CPU and the OS run the AVX512-VNNI (F, BW, VL, VNNI, F16C) / the
// AVX2 (AVX2, FMA, F16C) quantized products.
MOE_CPU_INTERNAL int moe_q_vnni_native(void);
MOE_CPU_INTERNAL int moe_q_avx2_native(void);

// The f32 value of IEEE half bits.
MOE_CPU_INTERNAL float moe_f16_to_f32(uint16_t h);

#endif
