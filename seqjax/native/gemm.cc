// C (M, N) float32 = op(A) op(B) for bfloat16 A and B, as an XLA custom call: the weight and
// input gradients of the bfloat16 kernels' backward passes (x^T dG, h^T dG, dG W^T) over all
// T x B rows, where XLA:CPU's own bfloat16 dot ran at ~230 GFLOP/s on this project's 2 cores
// against ~2 TFLOP/s for AMX.
//
//   a  (M, K), or (K, M) with trans_a     b  (K, N), or (N, K) with trans_b     c  (M, N)
//
// Both operands are first packed into the tile layouts of amx.h (A by 16 x 32 tiles, B into
// pair-interleaved 16-column panels, zero-padded to whole tiles), then C is computed in blocks
// of 256 x 256 over k passes of 2048, so a pass's operands stay in L2; packing and blocks are
// tasks spread over XLA's intra-op threads. (Passes of 512 and 1024 measured no faster.)

#include "amx.h"

namespace seqjax {
namespace {

using bf16::round_up;
using BF16 = ffi::Buffer<ffi::BF16>;

constexpr int64_t kRowTiles = 16;  // a task's C block: 16 x 16 tiles (256 x 256)
constexpr int64_t kColTiles = 16;
constexpr int64_t kKTiles = 64;  // k tiles (of 32) per pass over a block

// out[i] = lo[i] | hi[i] << 16 for 16 elements: two rows' (k, k+1) pairs as 32-bit words.
inline void interleave(const uint16_t* lo, const uint16_t* hi, uint32_t* out) {
#if defined(__AVX512F__)
  const __m512i l = _mm512_cvtepu16_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(lo)));
  const __m512i h = _mm512_cvtepu16_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(hi)));
  _mm512_storeu_si512(out, _mm512_or_si512(l, _mm512_slli_epi32(h, 16)));
#else
  for (int i = 0; i < 16; ++i) out[i] = lo[i] | static_cast<uint32_t>(hi[i]) << 16;
#endif
}

// out[j * 16 + i] = in[i][j]: in 32-bit unpacks within 128-bit lanes, then lane shuffles.
inline void transpose16(const uint32_t (&in)[16][16], uint32_t* out) {
#if defined(__AVX512F__)
  __m512i r[16], t[16], u[16];
  for (int i = 0; i < 16; ++i) r[i] = _mm512_loadu_si512(in[i]);
  for (int i = 0; i < 16; i += 2) {
    t[i] = _mm512_unpacklo_epi32(r[i], r[i + 1]);
    t[i + 1] = _mm512_unpackhi_epi32(r[i], r[i + 1]);
  }
  // u[4g + j]: rows 4g .. 4g + 3 of column 4L + j in 128-bit lane L
  for (int g = 0; g < 4; ++g) {
    u[4 * g] = _mm512_unpacklo_epi64(t[4 * g], t[4 * g + 2]);
    u[4 * g + 1] = _mm512_unpackhi_epi64(t[4 * g], t[4 * g + 2]);
    u[4 * g + 2] = _mm512_unpacklo_epi64(t[4 * g + 1], t[4 * g + 3]);
    u[4 * g + 3] = _mm512_unpackhi_epi64(t[4 * g + 1], t[4 * g + 3]);
  }
  for (int j = 0; j < 4; ++j) {
    const __m512i v0 = _mm512_shuffle_i32x4(u[j], u[4 + j], 0x44);
    const __m512i v1 = _mm512_shuffle_i32x4(u[j], u[4 + j], 0xee);
    const __m512i v2 = _mm512_shuffle_i32x4(u[8 + j], u[12 + j], 0x44);
    const __m512i v3 = _mm512_shuffle_i32x4(u[8 + j], u[12 + j], 0xee);
    _mm512_storeu_si512(out + (0 + j) * 16, _mm512_shuffle_i32x4(v0, v2, 0x88));
    _mm512_storeu_si512(out + (4 + j) * 16, _mm512_shuffle_i32x4(v0, v2, 0xdd));
    _mm512_storeu_si512(out + (8 + j) * 16, _mm512_shuffle_i32x4(v1, v3, 0x88));
    _mm512_storeu_si512(out + (12 + j) * 16, _mm512_shuffle_i32x4(v1, v3, 0xdd));
  }
#else
  for (int i = 0; i < 16; ++i)
    for (int j = 0; j < 16; ++j) out[j * 16 + i] = in[i][j];
#endif
}

struct Gemm {
  int64_t M, N, K, Mt, Nt, Kt;
  const uint16_t *a, *b;
  bool trans_a, trans_b, amx;
  uint16_t *pa, *pb;  // packed: (Mt, Kt, 16, 32) and (Nt, Kt, 16, 16, 2)
  float* c;

  uint16_t a_at(int64_t m, int64_t k) const {
    if (m >= M || k >= K) return 0;
    return trans_a ? a[k * M + m] : a[m * K + k];
  }
  uint16_t b_at(int64_t k, int64_t n) const {
    if (k >= K || n >= N) return 0;
    return trans_b ? b[n * K + k] : b[k * N + n];
  }

  // Row tile mt of A, for a row-major A: whole rows copied.
  void pack_a_rows(int64_t mt) const {
    uint16_t* out = pa + mt * Kt * 512;
    for (int64_t i = 0; i < 16; ++i) {
      const int64_t m = mt * 16 + i;
      for (int64_t kt = 0; kt < Kt; ++kt) {
        uint16_t* row = out + kt * 512 + i * 32;
        const int64_t n = m < M ? std::min<int64_t>(32, K - kt * 32) : 0;
        if (n > 0) std::memcpy(row, a + m * K + kt * 32, n * 2);
        std::memset(row + n, 0, (32 - n) * 2);
      }
    }
  }

  // K tile kt of every row tile, for A stored transposed (K, M): its 32 rows are read whole
  // (a task per row tile walked down all of K, 32 bytes a row, and ran 10x slower). Pairs of
  // rows interleaved give each m its (k, k+1) words, which a 16 x 16 transpose puts in rows.
  void pack_a_cols(int64_t kt) const {
    for (int64_t mt = 0; mt < Mt; ++mt) {
      uint16_t* tile = pa + (mt * Kt + kt) * 512;
      if (mt * 16 + 16 > M || kt * 32 + 32 > K) {
        for (int64_t i = 0; i < 16; ++i)
          for (int64_t kk = 0; kk < 32; ++kk) tile[i * 32 + kk] = a_at(mt * 16 + i, kt * 32 + kk);
        continue;
      }
      uint32_t words[16][16];  // [k pair][m]
      for (int64_t q = 0; q < 16; ++q)
        interleave(a + (kt * 32 + 2 * q) * M + mt * 16, a + (kt * 32 + 2 * q + 1) * M + mt * 16,
                   words[q]);
      transpose16(words, reinterpret_cast<uint32_t*>(tile));
    }
  }

  // K tile kt of every column tile, for a row-major B: each pair of its rows interleaved.
  void pack_b_rows(int64_t kt) const {
    for (int64_t nt = 0; nt < Nt; ++nt) {
      uint16_t* tile = pb + (nt * Kt + kt) * 512;
      if (nt * 16 + 16 > N || kt * 32 + 32 > K) {
        pack_b_edge(nt, kt, tile);
        continue;
      }
      for (int64_t p = 0; p < 16; ++p) {
        const uint16_t* r0 = b + (kt * 32 + 2 * p) * N + nt * 16;
        interleave(r0, r0 + N, reinterpret_cast<uint32_t*>(tile + p * 32));
      }
    }
  }

  // Column tile nt, for B stored transposed (N, K): its (k, k+1) pairs are 32-bit words of
  // B^T's rows, transposed 16 x 16.
  void pack_b_cols(int64_t nt) const {
    for (int64_t kt = 0; kt < Kt; ++kt) {
      uint16_t* tile = pb + (nt * Kt + kt) * 512;
      if (nt * 16 + 16 > N || kt * 32 + 32 > K) {
        pack_b_edge(nt, kt, tile);
        continue;
      }
      uint32_t words[16][16];  // [n][k pair]
      for (int64_t cc = 0; cc < 16; ++cc)
        std::memcpy(words[cc], b + (nt * 16 + cc) * K + kt * 32, 64);
      transpose16(words, reinterpret_cast<uint32_t*>(tile));
    }
  }

  void pack_b_edge(int64_t nt, int64_t kt, uint16_t* tile) const {
    for (int64_t p = 0; p < 16; ++p)
      for (int64_t cc = 0; cc < 16; ++cc)
        for (int e = 0; e < 2; ++e)
          tile[p * 32 + cc * 2 + e] = b_at(kt * 32 + 2 * p + e, nt * 16 + cc);
  }

  // Packing task i: by tile rows where the source's rows run along K, else by K tiles.
  int64_t pack_tasks() const { return (trans_a ? Kt : Mt) + (trans_b ? Nt : Kt); }
  void pack(int64_t i) const {
    const int64_t na = trans_a ? Kt : Mt;
    if (i < na) {
      trans_a ? pack_a_cols(i) : pack_a_rows(i);
    } else {
      trans_b ? pack_b_cols(i - na) : pack_b_rows(i - na);
    }
  }

  // A task: C's row tiles [kRowTiles * bm ...) by column tiles [kColTiles * bn ...), over K in
  // passes of kKTiles: the pass's B block (kKTiles x kColTiles tiles, 1 MiB) stays in L2 for
  // all its rows, and each row pair's A strip (2 x kKTiles tiles, 128 KiB) in L2 for all its
  // column tiles.
  void compute(int64_t bm, int64_t bn) const {
    const bf16::TilesA ta{pa, Kt * 512, 512, 32};
    const bf16::TilesB tb{pb, Kt * 512, 512};
    const int64_t m_end = std::min(Mt, (bm + 1) * kRowTiles);
    const int64_t n_end = std::min(Nt, (bn + 1) * kColTiles);
    bf16::TileScope scope(amx);
    for (int64_t k0 = 0; k0 < Kt; k0 += kKTiles) {
      const int64_t k1 = std::min(Kt, k0 + kKTiles);
      for (int64_t mt = bm * kRowTiles; mt < m_end; mt += 2)
        for (int64_t nt = bn * kColTiles; nt < n_end; nt += 2)
          micro(ta, tb, mt, std::min<int64_t>(2, m_end - mt), nt,
                std::min<int64_t>(2, n_end - nt), k0, k1);
    }
  }

  // Up to 2 x 2 tiles at (mt, nt): straight into C where they lie inside it, else through a
  // 32 x 32 buffer copied in and out within C's bounds.
  void micro(const bf16::TilesA& ta, const bf16::TilesB& tb, int64_t mt, int64_t mr, int64_t nt,
             int64_t nc, int64_t k0, int64_t k1) const {
    const int64_t row = mt * 16, col = nt * 16;
    const bool inside = row + 16 * mr <= M && col + 16 * nc <= N;
    float buf[32 * 32];
    float* out = inside ? c + row * N + col : buf;
    const int64_t ldc = inside ? N : 32;
    const int64_t rows = std::min<int64_t>(16 * mr, M - row);
    const int64_t cols = std::min<int64_t>(16 * nc, N - col);
    if (!inside && k0 > 0)
      for (int64_t r = 0; r < rows; ++r) copy_n(c + (row + r) * N + col, cols, buf + r * 32);
    if (nc == 2)
      bf16::block<2>(amx, ta, mt, mr, tb, nt, k0, k1, out, ldc, k0 > 0);
    else
      bf16::block<1>(amx, ta, mt, mr, tb, nt, k0, k1, out, ldc, k0 > 0);
    if (!inside)
      for (int64_t r = 0; r < rows; ++r) copy_n(buf + r * 32, cols, c + (row + r) * N + col);
  }
};

// The packed operands' memory, kept by the calling thread for its next call: a fresh block of
// tens of MiB is mapped anew by malloc on every call, and faulting its pages in took as long as
// the packing itself (80 MiB at M=512, K=16384, N=2048: ~40 ms). It only grows.
uint16_t* packing_buffer(int64_t elements) {
  thread_local std::unique_ptr<uint16_t[]> buffer;
  thread_local int64_t capacity = 0;
  if (elements > capacity) {
    buffer.reset(new uint16_t[elements]);
    capacity = elements;
  }
  return buffer.get();
}

int gemm_workers(ffi::ThreadPool& pool, int64_t tasks) {
  const int64_t threads = requested_threads() ? requested_threads() : pool.num_threads();
  return static_cast<int>(std::max<int64_t>(1, std::min(threads, tasks)));
}

ffi::Error bf16_matmul(BF16 a, BF16 b, bool trans_a, bool trans_b, bool amx, Out c,
                       ffi::ThreadPool pool) {
  auto da = a.dimensions(), db = b.dimensions();
  if (da.size() != 2 || db.size() != 2)
    return ffi::Error::InvalidArgument("bf16_matmul: a and b must be matrices");
  const int64_t M = trans_a ? da[1] : da[0], K = trans_a ? da[0] : da[1];
  const int64_t N = trans_b ? db[0] : db[1], Kb = trans_b ? db[1] : db[0];
  if (K != Kb) return ffi::Error::InvalidArgument("bf16_matmul: inner dimensions differ");
  const int need = amx ? bf16::kAmx : bf16::kAvx512Bf16;
  if (!(bf16::support() & need))
    return ffi::Error::InvalidArgument("bf16_matmul: this CPU cannot run the requested path");
  prefer_huge_pages(c);
  float* out = c->typed_data();
  if (M == 0 || N == 0) return ffi::Error::Success();
  if (K == 0) {
    zero_n(out, M * N);
    return ffi::Error::Success();
  }
  const int64_t Mt = (M + 15) / 16, Nt = (N + 15) / 16, Kt = (K + 31) / 32;
  uint16_t* packed = packing_buffer((Mt + Nt) * Kt * 512);
  Gemm g{M, N, K, Mt, Nt, Kt, a.typed_data(), b.typed_data(), trans_a, trans_b, amx,
         packed, packed + Mt * Kt * 512, out};
  bf16::parallel_tasks(pool, g.pack_tasks(), gemm_workers(pool, g.pack_tasks()),
                       [&](int64_t i) { g.pack(i); });
  const int64_t bms = (Mt + kRowTiles - 1) / kRowTiles, bns = (Nt + kColTiles - 1) / kColTiles;
  bf16::parallel_tasks(pool, bms * bns, gemm_workers(pool, bms * bns),
                       [&](int64_t i) { g.compute(i % bms, i / bms); });
  return ffi::Error::Success();
}

}  // namespace
}  // namespace seqjax

// What the bfloat16 kernels may use here: bf16::support()'s bits (AMX after asking Linux for the
// permission), for seqjax.native to turn into a path or a reason.
extern "C" int SeqjaxBf16Support() { return seqjax::bf16::support(); }

XLA_FFI_DEFINE_HANDLER_SYMBOL(SeqjaxBf16Matmul, seqjax::bf16_matmul,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::Buffer<ffi::BF16>>()
                                  .Arg<ffi::Buffer<ffi::BF16>>()
                                  .Attr<bool>("trans_a")
                                  .Attr<bool>("trans_b")
                                  .Attr<bool>("amx")
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Ctx<ffi::ThreadPool>());
