// What the bfloat16 kernels share: whether this CPU can run them (AMX-BF16 tiles, or only
// AVX512-BF16's vdpbf16ps), the Linux permission request AMX needs, float32 <-> bfloat16
// conversion, and two micro-kernels over one packed layout:
//
//   A: bf16 rows, addressed by tile: the tile (row tile r, k tile k) of 16 rows x 32 bf16
//      starts at a.p + r * a.row_tile + k * a.k_tile, its rows a.stride elements apart.
//   B: bf16 "panels" in the pair-interleaved (VNNI) form AMX and vdpbf16ps both read: the tile
//      (column tile j, k tile k) is 16 pairs (k, k+1) x 16 columns x 2, 512 contiguous
//      elements at b.p + j * b.col_tile + k * b.k_tile.
//   C: float32, row-major, ldc floats a row.
//
// Built with -march=native: the AMX code exists only where the compiler enables AMX
// (__AMX_TILE__, __AMX_BF16__), the vdpbf16ps code only with __AVX512BF16__, and each runs only
// after support() has found the CPU (CPUID), the OS (XCR0) and, for AMX, the kernel's
// permission (arch_prctl) agree. The library still loads and the float32 kernels still run on a
// CPU without either.
#pragma once

#include <atomic>
#include <cstdint>
#include <cstring>
#include <memory>

#include "common.h"

#if defined(__linux__)
#include <sys/mman.h>
#endif
#if defined(__x86_64__)
#include <cpuid.h>
#include <immintrin.h>
#endif
#if defined(__AMX_TILE__) && defined(__AMX_BF16__)
#define SEQJAX_HAVE_AMX 1
#endif
#if defined(__AVX512BF16__) && defined(__AVX512F__)
#define SEQJAX_HAVE_AVX512BF16 1
#endif

namespace seqjax {
namespace bf16 {

// support()'s bits. The first two say what may run; the others say why AMX may not.
enum Support : int {
  kAvx512Bf16 = 1,        // vdpbf16ps usable (compiled in, CPU has it, OS saves ZMM state)
  kAmx = 2,               // AMX-BF16 usable (compiled in, CPU and OS have it, permission granted)
  kAmxNoPermission = 4,   // the CPU has AMX but the kernel refused ARCH_REQ_XCOMP_PERM
  kAmxNotCompiled = 8,    // the CPU has AMX but the compiler did not enable it
  kBf16NotCompiled = 16,  // the CPU has AVX512-BF16 but the compiler did not enable it
};

#if defined(__x86_64__)
inline uint64_t xcr0() {
  uint32_t lo, hi;
  __asm__ volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
  return (static_cast<uint64_t>(hi) << 32) | lo;
}

// Asks Linux for the AMX tile data state (process-wide, so every pool thread may use it); Linux
// refuses AMX instructions until a process asks.
inline bool request_amx_permission() {
#if defined(__linux__)
  constexpr long kReqXcompPerm = 0x1023, kGetXcompPerm = 0x1022, kXtiledata = 18;
  if (syscall(SYS_arch_prctl, kReqXcompPerm, kXtiledata) != 0) return false;
  uint64_t granted = 0;
  if (syscall(SYS_arch_prctl, kGetXcompPerm, &granted) != 0) return false;
  return (granted >> kXtiledata) & 1;
#else
  return false;
#endif
}

inline int detect() {
  unsigned a, b, c, d;
  if (__get_cpuid_max(0, nullptr) < 7) return 0;
  __cpuid_count(1, 0, a, b, c, d);
  if (!((c >> 27) & 1)) return 0;  // no OSXSAVE: xgetbv would fault
  const uint64_t os = xcr0();
  const bool zmm = (os & 0xe6) == 0xe6;            // SSE, AVX, opmask, ZMM state
  const bool tiles = ((os >> 17) & 3) == 3;        // XTILECFG, XTILEDATA
  __cpuid_count(7, 0, a, b, c, d);
  const bool avx512f = (b >> 16) & 1, amx_bf16 = (d >> 22) & 1, amx_tile = (d >> 24) & 1;
  __cpuid_count(7, 1, a, b, c, d);
  const bool avx512bf16 = avx512f && ((a >> 5) & 1);
  int out = 0;
  if (avx512bf16 && zmm) {
#if defined(SEQJAX_HAVE_AVX512BF16)
    out |= kAvx512Bf16;
#else
    out |= kBf16NotCompiled;
#endif
  }
  if (amx_bf16 && amx_tile && tiles && zmm) {
#if defined(SEQJAX_HAVE_AMX)
    out |= request_amx_permission() ? kAmx : kAmxNoPermission;
#else
    out |= kAmxNotCompiled;
#endif
  }
  return out;
}
#else
inline int detect() { return 0; }
#endif

// Detected once per process (the permission request with it).
inline int support() {
  static const int bits = detect();
  return bits;
}

// float32 -> bfloat16, rounding to nearest even, as XLA's convert does; NaN stays NaN.
inline uint16_t to_bf16(float x) {
  uint32_t u;
  std::memcpy(&u, &x, 4);
  if ((u & 0x7fffffffu) > 0x7f800000u) return static_cast<uint16_t>((u >> 16) | 0x40);
  return static_cast<uint16_t>((u + 0x7fffu + ((u >> 16) & 1)) >> 16);
}
inline float from_bf16(uint16_t h) {
  const uint32_t u = static_cast<uint32_t>(h) << 16;
  float x;
  std::memcpy(&x, &u, 4);
  return x;
}
typedef uint16_t v16h __attribute__((vector_size(32)));

// The first n (1..16) lanes of v, rounded to bfloat16, to p: in vector registers (a lane at a
// time, this conversion took a third of the LSTM's reverse loop).
inline void store_bf16(uint16_t* p, v16 v, int64_t n) {
  const v16i u = bits(v);
  const v16i nan = (u & 0x7fffffff) > 0x7f800000;
  const v16i rounded = (u + 0x7fff + ((u >> 16) & 1)) >> 16;
  const v16h h = __builtin_convertvector((nan & ((u >> 16) | 0x40)) | (~nan & rounded), v16h);
  if (n == 16)
    std::memcpy(p, &h, sizeof h);
  else
    std::memcpy(p, &h, n * sizeof(uint16_t));
}
inline v16 load_bf16(const uint16_t* p, int64_t n) {
  v16h h{};
  if (n == 16)  // a library memcpy call otherwise: 7% of the LSTM's reverse loop
    std::memcpy(&h, p, sizeof h);
  else
    std::memcpy(&h, p, n * sizeof(uint16_t));
  return from_bits(__builtin_convertvector(h, v16i) << 16);
}

inline int64_t round_up(int64_t x, int64_t m) { return (x + m - 1) / m * m; }

struct TilesA {
  const uint16_t* p;
  int64_t row_tile, k_tile, stride;  // elements
  const uint16_t* tile(int64_t r, int64_t k) const { return p + r * row_tile + k * k_tile; }
};
struct TilesB {
  const uint16_t* p;
  int64_t col_tile, k_tile;  // elements
  const uint16_t* tile(int64_t j, int64_t k) const { return p + j * col_tile + k * k_tile; }
};

#if defined(SEQJAX_HAVE_AMX)
// Every tile register as 16 rows x 64 bytes: A (16 x 32 bf16), B (16 pairs x 16 x 2), C (16 x 16
// float32). One configuration for all, loaded at the start of each task (another library on
// the same pool thread may have loaded its own) and released at its end (so the thread carries
// no tile state into a context switch).
struct TileConfig {
  uint8_t palette = 1, start_row = 0, reserved[14] = {};
  uint16_t colsb[16] = {};
  uint8_t rows[16] = {};
  TileConfig() {
    for (int i = 0; i < 8; ++i) {
      colsb[i] = 64;
      rows[i] = 16;
    }
  }
};
class TileScope {
 public:
  explicit TileScope(bool on) : on_(on) {
    static const TileConfig config;
    if (on_) _tile_loadconfig(&config);
  }
  ~TileScope() {
    if (on_) _tile_release();
  }

 private:
  bool on_;
};

// C (MR row tiles x NC column tiles, from row tile r and column tile j) = A B over k tiles
// [k0, k1), or with load_c C + A B. Registers: C in tmm0-3, A in tmm4-5, B in tmm6-7.
template <int MR, int NC>
inline void amx_block(const TilesA& a, int64_t r, const TilesB& b, int64_t j, int64_t k0,
                      int64_t k1, float* c, int64_t ldc, bool load_c) {
  static_assert(MR >= 1 && MR <= 2 && NC >= 1 && NC <= 2, "at most 2 x 2 C tiles");
  const int64_t cs = ldc * 4, as = a.stride * 2;
  float* c10 = c + 16 * ldc;
  if (load_c) {
    _tile_loadd(0, c, cs);
    if constexpr (NC == 2) _tile_loadd(1, c + 16, cs);
    if constexpr (MR == 2) _tile_loadd(2, c10, cs);
    if constexpr (MR == 2 && NC == 2) _tile_loadd(3, c10 + 16, cs);
  } else {
    _tile_zero(0);
    if constexpr (NC == 2) _tile_zero(1);
    if constexpr (MR == 2) _tile_zero(2);
    if constexpr (MR == 2 && NC == 2) _tile_zero(3);
  }
  const uint16_t *a0 = a.tile(r, k0), *a1 = a.tile(r + 1, k0);
  const uint16_t *b0 = b.tile(j, k0), *b1 = b.tile(j + 1, k0);
  for (int64_t k = k0; k < k1; ++k) {
    _tile_loadd(4, a0, as);
    _tile_loadd(6, b0, 64);
    if constexpr (MR == 2) _tile_loadd(5, a1, as);
    if constexpr (NC == 2) _tile_loadd(7, b1, 64);
    _tile_dpbf16ps(0, 4, 6);
    if constexpr (MR == 2) _tile_dpbf16ps(2, 5, 6);
    if constexpr (NC == 2) _tile_dpbf16ps(1, 4, 7);
    if constexpr (MR == 2 && NC == 2) _tile_dpbf16ps(3, 5, 7);
    a0 += a.k_tile, a1 += a.k_tile, b0 += b.k_tile, b1 += b.k_tile;
  }
  _tile_stored(0, c, cs);
  if constexpr (NC == 2) _tile_stored(1, c + 16, cs);
  if constexpr (MR == 2) _tile_stored(2, c10, cs);
  if constexpr (MR == 2 && NC == 2) _tile_stored(3, c10 + 16, cs);
}
// C (4 row tiles from r x 1 column tile j) = A B over k tiles [k0, k1), or C + A B: each B
// tile (a weight tile, from L3 when the weights outgrow L2) serves 4 row tiles, where a 2 x 2
// block's serves 2. A alternates between tmm4 and tmm5, B between tmm6 and tmm7.
inline void amx_block_4x1(const TilesA& a, int64_t r, const TilesB& b, int64_t j, int64_t k0,
                          int64_t k1, float* c, int64_t ldc, bool load_c) {
  const int64_t cs = ldc * 4, as = a.stride * 2, rt = 16 * ldc;
  if (load_c) {
    _tile_loadd(0, c, cs);
    _tile_loadd(1, c + rt, cs);
    _tile_loadd(2, c + 2 * rt, cs);
    _tile_loadd(3, c + 3 * rt, cs);
  } else {
    _tile_zero(0);
    _tile_zero(1);
    _tile_zero(2);
    _tile_zero(3);
  }
  int64_t k = k0;
  for (; k + 1 < k1; k += 2) {
    _tile_loadd(6, b.tile(j, k), 64);
    _tile_loadd(4, a.tile(r, k), as);
    _tile_loadd(5, a.tile(r + 1, k), as);
    _tile_dpbf16ps(0, 4, 6);
    _tile_dpbf16ps(1, 5, 6);
    _tile_loadd(4, a.tile(r + 2, k), as);
    _tile_loadd(5, a.tile(r + 3, k), as);
    _tile_dpbf16ps(2, 4, 6);
    _tile_dpbf16ps(3, 5, 6);
    _tile_loadd(7, b.tile(j, k + 1), 64);
    _tile_loadd(4, a.tile(r, k + 1), as);
    _tile_loadd(5, a.tile(r + 1, k + 1), as);
    _tile_dpbf16ps(0, 4, 7);
    _tile_dpbf16ps(1, 5, 7);
    _tile_loadd(4, a.tile(r + 2, k + 1), as);
    _tile_loadd(5, a.tile(r + 3, k + 1), as);
    _tile_dpbf16ps(2, 4, 7);
    _tile_dpbf16ps(3, 5, 7);
  }
  if (k < k1) {
    _tile_loadd(6, b.tile(j, k), 64);
    _tile_loadd(4, a.tile(r, k), as);
    _tile_loadd(5, a.tile(r + 1, k), as);
    _tile_dpbf16ps(0, 4, 6);
    _tile_dpbf16ps(1, 5, 6);
    _tile_loadd(4, a.tile(r + 2, k), as);
    _tile_loadd(5, a.tile(r + 3, k), as);
    _tile_dpbf16ps(2, 4, 6);
    _tile_dpbf16ps(3, 5, 6);
  }
  _tile_stored(0, c, cs);
  _tile_stored(1, c + rt, cs);
  _tile_stored(2, c + 2 * rt, cs);
  _tile_stored(3, c + 3 * rt, cs);
}
#else
class TileScope {
 public:
  explicit TileScope(bool) {}
};
#endif

#if defined(SEQJAX_HAVE_AVX512BF16)
// C (NR rows from row `row`, all in one row tile, x NC column tiles from j) = A B over k tiles
// [k0, k1), or with load_c C + A B, in NR x NC zmm accumulators.
template <int NR, int NC>
inline void avx_block(const TilesA& a, int64_t row, const TilesB& b, int64_t j, int64_t k0,
                      int64_t k1, float* c, int64_t ldc, bool load_c) {
  __m512 acc[NR][NC];
  for (int r = 0; r < NR; ++r)
    for (int q = 0; q < NC; ++q)
      acc[r][q] = load_c ? _mm512_loadu_ps(c + r * ldc + q * 16) : _mm512_setzero_ps();
  const int64_t rt = row / 16, r_in = row % 16;
  for (int64_t k = k0; k < k1; ++k) {
    const uint16_t* at = a.tile(rt, k) + r_in * a.stride;
    const uint16_t* bt[NC];
    for (int q = 0; q < NC; ++q) bt[q] = b.tile(j + q, k);
    for (int p = 0; p < 16; ++p) {
      __m512i w[NC];
      for (int q = 0; q < NC; ++q) w[q] = _mm512_loadu_si512(bt[q] + p * 32);
      for (int r = 0; r < NR; ++r) {
        int32_t pair;
        std::memcpy(&pair, at + r * a.stride + 2 * p, 4);
        const __m512i x = _mm512_set1_epi32(pair);
        for (int q = 0; q < NC; ++q)
          acc[r][q] = _mm512_dpbf16_ps(acc[r][q], (__m512bh)x, (__m512bh)w[q]);
      }
    }
  }
  for (int r = 0; r < NR; ++r)
    for (int q = 0; q < NC; ++q) _mm512_storeu_ps(c + r * ldc + q * 16, acc[r][q]);
}
#endif

// C (rows 16 * row_tiles from row tile r, x 16 * NC columns from column tile j; ldc floats a
// row) = A B over k tiles [k0, k1), or C + A B with load_c, with AMX (amx) or vdpbf16ps. The
// caller keeps a TileScope open around AMX calls.
template <int NC>
inline void block(bool amx, const TilesA& a, int64_t r, int64_t row_tiles, const TilesB& b,
                  int64_t j, int64_t k0, int64_t k1, float* c, int64_t ldc, bool load_c) {
#if defined(SEQJAX_HAVE_AMX)
  if (amx) {
    if (row_tiles == 2)
      amx_block<2, NC>(a, r, b, j, k0, k1, c, ldc, load_c);
    else
      amx_block<1, NC>(a, r, b, j, k0, k1, c, ldc, load_c);
    return;
  }
#endif
#if defined(SEQJAX_HAVE_AVX512BF16)
  // 8 rows x NC tiles: up to 16 accumulators beside NC weight vectors.
  for (int64_t h = 0; h < 2 * row_tiles; ++h)
    avx_block<8, NC>(a, r * 16 + h * 8, b, j, k0, k1, c + h * 8 * ldc, ldc, load_c);
#else
  (void)amx, (void)a, (void)r, (void)row_tiles, (void)b, (void)j, (void)k0, (void)k1, (void)c,
      (void)ldc, (void)load_c;
#endif
}

// C (64 rows from row tile r x 16 * cols columns from column tile j) = A B over k tiles
// [k0, k1): one column tile at a time, each B tile loaded once for the 4 row tiles on AMX.
inline void block_4rows(bool amx, const TilesA& a, int64_t r, const TilesB& b, int64_t j,
                        int64_t cols, int64_t k0, int64_t k1, float* c, int64_t ldc) {
#if defined(SEQJAX_HAVE_AMX)
  if (amx) {
    for (int64_t q = 0; q < cols; ++q)
      amx_block_4x1(a, r, b, j + q, k0, k1, c + q * 16, ldc, false);
    return;
  }
#endif
  for (int64_t q = 0; q + 1 < cols; q += 2) {
    block<2>(amx, a, r, 2, b, j + q, k0, k1, c + q * 16, ldc, false);
    block<2>(amx, a, r + 2, 2, b, j + q, k0, k1, c + 32 * ldc + q * 16, ldc, false);
  }
  if (cols % 2) {
    block<1>(amx, a, r, 2, b, j + cols - 1, k0, k1, c + (cols - 1) * 16, ldc, false);
    block<1>(amx, a, r + 2, 2, b, j + cols - 1, k0, k1, c + 32 * ldc + (cols - 1) * 16, ldc,
             false);
  }
}

// Runs fn(task) for task in [0, count) on this thread and up to `workers` - 1 tasks of XLA's
// pool, each thread claiming the next task not taken; returns once all have finished. As in
// run_steps, a pool thread that comes late finds nothing left and leaves.
template <typename Fn>
void parallel_tasks(ffi::ThreadPool& pool, int64_t count, int workers, Fn&& fn) {
  struct State {
    std::atomic<int64_t> next{0}, done{0};
    Waiting waiting;
  };
  auto state = std::make_shared<State>();
  // fn lives on this thread's stack, and this thread returns only once every claimed task has
  // finished: a helper that starts after the last task was claimed touches only `state` (kept
  // alive by its copy of the pointer).
  auto work = [state, count, fnp = &fn] {
    for (int64_t i; (i = state->next.fetch_add(1, std::memory_order_relaxed)) < count;) {
      (*fnp)(i);
      state->done.fetch_add(1, std::memory_order_release);
      state->waiting.notify();
    }
  };
  for (int w = 1; w < workers && w < count; ++w) pool.Schedule([work] { work(); });
  work();
  state->waiting.until([&] { return state->done.load(std::memory_order_acquire) == count; });
}

}  // namespace bf16
}  // namespace seqjax
