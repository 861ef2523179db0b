// The Elman RNN recurrence, h_t = act(px_t + h_(t-1) W_hh), act tanh or ReLU, on the CPU as two
// XLA custom calls: the forward loop and the reverse loop of its gradient. Same scheme as
// lstm.cc: each step's matmul and activation in one pass, the hidden units split over threads.
//
// Layouts (float32, row-major; U = ceil(H / 16)):
//   px      (T, B, H)     x_t W_ih + b_ih + b_hh
//   w       (U, H, 16)    W_hh (H, H) packed: for unit block u, row k, units 16u .. 16u + 15
//   wt      (U, H, 16)    W_hh^T packed the same way
//   h0      (B, H); lengths (B,) int32 and start () int32 as in lstm.cc
//   ys      (T, B, H)     h_t, zero where the step did not run (also the backward's residual)
//   dz      (T, B, H)     the gradient of the pre-activations

#include "common.h"

namespace seqjax {
namespace {

constexpr int kRows = 4;
constexpr int kUnits = 4;  // 16-unit blocks per register tile

struct Shapes {
  int64_t T, B, H, U;
};

// Runs tile(r0, u0, NR, NU) over the rows of the batch and this worker's unit blocks.
template <typename Tile>
void tiles(int64_t B, int64_t u_begin, int64_t u_end, Tile&& tile) {
  auto over_units = [&](auto rows, int64_t r0) {
    int64_t u = u_begin;
    for (; u + kUnits <= u_end; u += kUnits) tile(r0, u, rows, std::integral_constant<int, kUnits>());
    for (; u < u_end; ++u) tile(r0, u, rows, std::integral_constant<int, 1>());
  };
  int64_t r0 = 0;
  for (; r0 + kRows <= B; r0 += kRows) over_units(std::integral_constant<int, kRows>(), r0);
  for (; r0 < B; ++r0) over_units(std::integral_constant<int, 1>(), r0);
}

struct Forward {
  Shapes s;
  const float *px, *w, *h0;
  const int32_t* lengths;
  int64_t start;
  bool reverse, relu;
  float *ys, *h_final;
  float* hbuf;  // (2, B, H)

  bool runs(int64_t t, int64_t b) const { return !lengths || start + t < lengths[b]; }

  void run(int worker, int workers, Barrier& barrier) const {
    const int64_t H = s.H;
    auto [u_begin, u_end] = share(s.U, worker, workers);
    const int64_t col0 = u_begin * 16, col1 = std::min(u_end * 16, H);
    for (int64_t b = 0; b < s.B; ++b) copy_n(h0 + b * H + col0, col1 - col0, hbuf + b * H + col0);
    barrier.wait();
    for (int64_t i = 0; i < s.T; ++i) {
      const int64_t t = reverse ? s.T - 1 - i : i;
      const float* h_prev = hbuf + (i % 2) * s.B * H;
      float* h_next = hbuf + ((i + 1) % 2) * s.B * H;
      tiles(s.B, u_begin, u_end, [&](int64_t r0, int64_t u0, auto rows, auto units) {
        constexpr int NR = decltype(rows)::value, NU = decltype(units)::value;
        v16 acc[NR][NU];
        matmul_tile<NR, NU>(h_prev + r0 * H, H, H, w + u0 * H * 16, H * 16, 16, acc);
        for (int r = 0; r < NR; ++r) {
          const int64_t b = r0 + r, row = (t * s.B + b) * H;
          for (int j = 0; j < NU; ++j) {
            const int64_t col = (u0 + j) * 16, n = std::min<int64_t>(16, H - col);
            if (!runs(t, b)) {
              copy_n(h_prev + b * H + col, n, h_next + b * H + col);
              zero_n(ys + row + col, n);
              continue;
            }
            v16 z = acc[r][j] + load_n(px + row + col, n);
            v16 h = relu ? (z > 0.0f ? z : zero16()) : tanh16(z);
            store_n(h_next + b * H + col, h, n);
            store_n(ys + row + col, h, n);
          }
        }
      });
      barrier.wait();
    }
    const float* h_last = hbuf + (s.T % 2) * s.B * H;
    for (int64_t b = 0; b < s.B; ++b)
      copy_n(h_last + b * H + col0, col1 - col0, h_final + b * H + col0);
  }
};

struct Backward {
  Shapes s;
  const float *wt, *dys, *ys, *dh_final;
  const int32_t* lengths;
  int64_t start;
  bool reverse, relu;
  float *dz, *dh0;
  float* dhbuf;  // (B, H)

  bool runs(int64_t t, int64_t b) const { return !lengths || start + t < lengths[b]; }

  void run(int worker, int workers, Barrier& barrier) const {
    const int64_t H = s.H;
    auto [u_begin, u_end] = share(s.U, worker, workers);
    const int64_t col0 = u_begin * 16, col1 = std::min(u_end * 16, H);
    for (int64_t b = 0; b < s.B; ++b)
      copy_n(dh_final + b * H + col0, col1 - col0, dhbuf + b * H + col0);
    for (int64_t i = 0; i < s.T; ++i) {
      const int64_t t = reverse ? i : s.T - 1 - i;
      for (int64_t b = 0; b < s.B; ++b) {
        const int64_t row = (t * s.B + b) * H;
        for (int64_t col = col0; col < col1; col += 16) {
          const int64_t n = std::min<int64_t>(16, H - col);
          if (!runs(t, b)) {
            zero_n(dz + row + col, n);
            continue;
          }
          v16 h = load_n(ys + row + col, n);
          v16 dh = load_n(dhbuf + b * H + col, n) + load_n(dys + row + col, n);
          v16 slope = relu ? (h > 0.0f ? broadcast16(1.0f) : zero16()) : 1.0f - h * h;
          store_n(dz + row + col, dh * slope, n);
        }
      }
      barrier.wait();  // dh needs every unit's dz
      tiles(s.B, u_begin, u_end, [&](int64_t r0, int64_t u0, auto rows, auto units) {
        constexpr int NR = decltype(rows)::value, NU = decltype(units)::value;
        v16 acc[NR][NU];
        matmul_tile<NR, NU>(dz + (t * s.B + r0) * H, H, H, wt + u0 * H * 16, H * 16, 16, acc);
        for (int r = 0; r < NR; ++r) {
          if (!runs(t, r0 + r)) continue;  // a step that did not run passes dh through
          for (int j = 0; j < NU; ++j) {
            const int64_t col = (u0 + j) * 16;
            store_n(dhbuf + (r0 + r) * H + col, acc[r][j], std::min<int64_t>(16, H - col));
          }
        }
      });
    }
    for (int64_t b = 0; b < s.B; ++b)
      copy_n(dhbuf + b * H + col0, col1 - col0, dh0 + b * H + col0);
  }
};

ffi::Error rnn_forward(ffi::Buffer<ffi::F32> px, ffi::Buffer<ffi::F32> w, ffi::Buffer<ffi::F32> h0,
                       ffi::Buffer<ffi::S32> lengths, ffi::Buffer<ffi::S32> start, bool reverse,
                       bool has_lengths, bool relu, ffi::ResultBuffer<ffi::F32> ys,
                       ffi::ResultBuffer<ffi::F32> h_final, ffi::ThreadPool pool) {
  auto d = px.dimensions();
  if (d.size() != 3) return ffi::Error::InvalidArgument("rnn_forward: px must be (T, B, H)");
  Shapes s{d[0], d[1], d[2], (d[2] + 15) / 16};
  if (static_cast<int64_t>(w.element_count()) != s.U * s.H * 16)
    return ffi::Error::InvalidArgument("rnn_forward: w must be packed (U, H, 16)");
  std::vector<float> scratch(2 * s.B * s.H);
  Forward f{s, px.typed_data(), w.typed_data(), h0.typed_data(),
            has_lengths ? lengths.typed_data() : nullptr, start.typed_data()[0], reverse, relu,
            ys->typed_data(), h_final->typed_data(), scratch.data()};
  parallel(pool, workers_for(pool.num_threads(), s.U, 2 * s.B * s.H * s.H),
           [&](int i, int n, Barrier& bar) { f.run(i, n, bar); });
  return ffi::Error::Success();
}

ffi::Error rnn_backward(ffi::Buffer<ffi::F32> wt, ffi::Buffer<ffi::F32> dys,
                        ffi::Buffer<ffi::F32> ys, ffi::Buffer<ffi::F32> dh_final,
                        ffi::Buffer<ffi::S32> lengths, ffi::Buffer<ffi::S32> start, bool reverse,
                        bool has_lengths, bool relu, ffi::ResultBuffer<ffi::F32> dz,
                        ffi::ResultBuffer<ffi::F32> dh0, ffi::ThreadPool pool) {
  auto d = dys.dimensions();
  if (d.size() != 3) return ffi::Error::InvalidArgument("rnn_backward: dys must be (T, B, H)");
  Shapes s{d[0], d[1], d[2], (d[2] + 15) / 16};
  if (static_cast<int64_t>(wt.element_count()) != s.U * s.H * 16)
    return ffi::Error::InvalidArgument("rnn_backward: wt must be packed (U, H, 16)");
  std::vector<float> scratch(s.B * s.H);
  Backward bw{s, wt.typed_data(), dys.typed_data(), ys.typed_data(), dh_final.typed_data(),
              has_lengths ? lengths.typed_data() : nullptr, start.typed_data()[0], reverse, relu,
              dz->typed_data(), dh0->typed_data(), scratch.data()};
  parallel(pool, workers_for(pool.num_threads(), s.U, 2 * s.B * s.H * s.H),
           [&](int i, int n, Barrier& bar) { bw.run(i, n, bar); });
  return ffi::Error::Success();
}

}  // namespace
}  // namespace seqjax

XLA_FFI_DEFINE_HANDLER_SYMBOL(SeqjaxRnnForward, seqjax::rnn_forward,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::S32>>()
                                  .Arg<ffi::Buffer<ffi::S32>>()
                                  .Attr<bool>("reverse")
                                  .Attr<bool>("has_lengths")
                                  .Attr<bool>("relu")
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Ctx<ffi::ThreadPool>());

XLA_FFI_DEFINE_HANDLER_SYMBOL(SeqjaxRnnBackward, seqjax::rnn_backward,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::S32>>()
                                  .Arg<ffi::Buffer<ffi::S32>>()
                                  .Attr<bool>("reverse")
                                  .Attr<bool>("has_lengths")
                                  .Attr<bool>("relu")
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Ctx<ffi::ThreadPool>());
