#include "moe_cpu.h"

#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#if defined(__x86_64__) || defined(__i386__)
#include <cpuid.h>

static uint64_t read_xcr0(void) {
  uint32_t lo, hi;
  __asm__ volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
  return ((uint64_t)hi << 32) | lo;
}

static uint32_t detect(void) {
  uint32_t a, b, c, d, out = 0;
  if (!__get_cpuid(1, &a, &b, &c, &d)) return 0;
  if (d & (1u << 26)) out |= MOE_CPU_SSE2;
  int osxsave = (c & (1u << 27)) != 0, avx = (c & (1u << 28)) != 0;
  int fma = (c & (1u << 12)) != 0, f16c = (c & (1u << 29)) != 0;
  uint64_t xcr0 = osxsave ? read_xcr0() : 0;
  int ymm = avx && (xcr0 & 0x6) == 0x6;          // SSE and AVX state
  int zmm = ymm && (xcr0 & 0xE0) == 0xE0;        // opmask, ZMM_Hi256, Hi16_ZMM
  int tiles = (xcr0 & (3ull << 17)) == (3ull << 17);  // XTILECFG, XTILEDATA
  if (ymm && fma) out |= MOE_CPU_FMA;
  if (ymm && f16c) out |= MOE_CPU_F16C;
  uint32_t max = __get_cpuid_max(0, NULL);
  if (max >= 7) {
    __cpuid_count(7, 0, a, b, c, d);
    if (ymm && (b & (1u << 5))) out |= MOE_CPU_AVX2;
    if (zmm && (b & (1u << 16))) out |= MOE_CPU_AVX512F;
    if (zmm && (b & (1u << 17))) out |= MOE_CPU_AVX512DQ;
    if (zmm && (b & (1u << 30))) out |= MOE_CPU_AVX512BW;
    if (zmm && (b & (1u << 31))) out |= MOE_CPU_AVX512VL;
    if (zmm && (c & (1u << 11))) out |= MOE_CPU_AVX512VNNI;
    if (tiles && (d & (1u << 22))) out |= MOE_CPU_AMXBF16;
    uint32_t a1, b1, c1, d1;
    __cpuid_count(7, 1, a1, b1, c1, d1);
    if (zmm && (a1 & (1u << 5))) out |= MOE_CPU_AVX512BF16;
  }
  return out;
}

int moe_cpu_is_intel(void) {
  unsigned a, b, c, d;
  if (!__get_cpuid(0, &a, &b, &c, &d)) return 0;
  // "GenuineIntel" in EBX, EDX, ECX.
  return b == 0x756e6547u && d == 0x49656e69u && c == 0x6c65746eu;
}

void moe_cpu_brand(char *buf, size_t capacity) {
  if (!buf || capacity == 0) return;
  buf[0] = 0;
  uint32_t regs[12];
  if (__get_cpuid_max(0x80000000, NULL) < 0x80000004 || capacity < 49) return;
  for (uint32_t i = 0; i < 3; i++)
    __get_cpuid(0x80000002 + i, &regs[4 * i], &regs[4 * i + 1], &regs[4 * i + 2], &regs[4 * i + 3]);
  memcpy(buf, regs, 48);
  buf[48] = 0;
  // Trim the padding some CPUs put around the name.
  size_t start = 0, len = strlen(buf);
  while (start < len && buf[start] == ' ') start++;
  while (len > start && buf[len - 1] == ' ') len--;
  memmove(buf, buf + start, len - start);
  buf[len - start] = 0;
}
#else
static uint32_t detect(void) { return 0; }
void moe_cpu_brand(char *buf, size_t capacity) { if (buf && capacity) buf[0] = 0; }
#endif

static pthread_once_t features_once = PTHREAD_ONCE_INIT;
static uint32_t features;
static void init_features(void) { features = detect(); }

uint32_t moe_cpu_features(void) {
  pthread_once(&features_once, init_features);
  return features;
}

static pthread_once_t l2_once = PTHREAD_ONCE_INIT;
static size_t l2_bytes;
static void init_l2(void) {
  long bytes = -1;
#ifdef _SC_LEVEL2_CACHE_SIZE
  bytes = sysconf(_SC_LEVEL2_CACHE_SIZE);
#endif
  l2_bytes = bytes > 0 ? (size_t)bytes : (size_t)1 << 20;
}

size_t moe_cpu_l2_bytes(void) {
  pthread_once(&l2_once, init_l2);
  return l2_bytes;
}

// MARK: - Per-thread buffers

enum { SLOTS = 4 };
struct buffers { float *ptr[SLOTS]; size_t cap[SLOTS]; };

static pthread_key_t buffers_key;
static pthread_once_t buffers_once = PTHREAD_ONCE_INIT;
static int buffers_key_ok;

static void free_buffers(void *p) {
  struct buffers *b = p;
  for (int i = 0; i < SLOTS; i++) free(b->ptr[i]);
  free(b);
}

static void init_buffers_key(void) { buffers_key_ok = pthread_key_create(&buffers_key, free_buffers) == 0; }

float *moe_thread_buffer(unsigned slot, size_t floats) {
  if (slot >= SLOTS || floats > ((size_t)1 << 40) / sizeof(float)) return NULL;
  pthread_once(&buffers_once, init_buffers_key);
  if (!buffers_key_ok) return NULL;
  struct buffers *b = pthread_getspecific(buffers_key);
  if (!b) {
    b = calloc(1, sizeof *b);
    if (!b) return NULL;
    if (pthread_setspecific(buffers_key, b) != 0) { free(b); return NULL; }
  }
  if (b->cap[slot] >= floats && b->ptr[slot]) return b->ptr[slot];
  void *p = NULL;
  size_t bytes = (floats ? floats : 1) * sizeof(float);
  if (posix_memalign(&p, 64, bytes) != 0) return NULL;
  free(b->ptr[slot]);
  b->ptr[slot] = p;
  b->cap[slot] = floats;
  return p;
}
