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
} moe_cpu_feature;

// The feature bits of the running CPU (computed once).
MOE_CPU_INTERNAL uint32_t moe_cpu_features(void);

// The CPU's brand string ("AMD EPYC ..."), NUL-terminated in buf (at least 49 bytes).
MOE_CPU_INTERNAL void moe_cpu_brand(char *buf, size_t capacity);

// A per-thread buffer of at least `floats` floats, 64-byte aligned, kept for the
// thread's lifetime and reused by later calls with the same slot (0..3).
// NULL when memory is exhausted or the slot is out of range.
MOE_CPU_INTERNAL float *moe_thread_buffer(unsigned slot, size_t floats);

#endif
