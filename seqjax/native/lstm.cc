// The LSTM recurrence on the CPU as two XLA custom calls (jax.ffi): the forward loop over all
// steps and the reverse loop of its gradient. Each step's matmul h_(t-1) W_hh and the gate
// arithmetic run in one pass over registers, on all cores, with one barrier per step.
//
// Why: under lax.scan, XLA:CPU runs the step's matmul and its elementwise work as separate
// kernels with a per-step dispatch cost; at small sizes that overhead is as large as the
// arithmetic (benchmarks/step_profile.py). This is the fused step PyTorch's oneDNN LSTM has.
//
// Layouts (float32, row-major; B = batch rows, H = hidden, U = ceil(H / 16) unit blocks):
//   px      (T, B, 4H)    x_t W_ih + b_ih + b_hh, gates in PyTorch's order i, f, g, o
//   w       (U, H, 4, 16) W_hh (H, 4H) packed: for unit block u, row k, gate g, the 16 weights
//                         of units 16u .. 16u + 15 (zero past H)
//   wt      (U, 4H, 16)   W_hh^T (4H, H) packed the same way, for dh = dG W_hh^T
//   h0, c0  (B, H)
//   lengths (B,) int32    a row runs step t only when start + t < lengths[b]
//   start   () int32      the index of this call's first step in the whole sequence
//   ys      (T, B, H)     h_t, zero where the step did not run
//   cs      (T, B, H)     c_t (the carry after step t; only read where the step ran)
//   acts    (T, B, 4H)    sigmoid(i), sigmoid(f), tanh(g), sigmoid(o)
//   dgates  (T, B, 4H)    the gradient of the gate pre-activations
// Steps are visited t = 0 .. T-1, or T-1 .. 0 with reverse; the gradient loop runs the other way.

#include "common.h"

namespace seqjax {
namespace {

constexpr int kRows = 4;  // batch rows per register tile

struct Shapes {
  int64_t T, B, H, U;
};

struct Forward {
  Shapes s;
  const float *px, *w, *h0, *c0;
  const int32_t* lengths;  // null: every step runs
  int64_t start;
  bool reverse, keep;  // keep: write cs and acts, the residuals of the backward pass
  float *ys, *cs, *acts, *h_final, *c_final;
  float* hbuf;  // (2, B, H): the carry h, double-buffered across steps
  float* cbuf;  // (B, H)

  bool runs(int64_t t, int64_t b) const { return !lengths || start + t < lengths[b]; }

  template <int NR>
  void rows(int64_t t, int64_t r0, int64_t u, const float* h_prev, float* h_next) const {
    const int64_t H = s.H, n = std::min<int64_t>(16, H - u * 16), col = u * 16;
    v16 acc[NR][4];
    matmul_tile<NR, 4>(h_prev + r0 * H, H, H, w + u * H * 64, 16, 64, acc);
    for (int r = 0; r < NR; ++r) {
      const int64_t b = r0 + r, row = t * s.B + b;
      float* hn = h_next + b * H + col;
      float* c = cbuf + b * H + col;
      if (!runs(t, b)) {  // past this row's length: the carry stays, the output is zero
        copy_n(h_prev + b * H + col, n, hn);
        zero_n(ys + row * H + col, n);
        if (keep) {
          copy_n(c, n, cs + row * H + col);
          for (int g = 0; g < 4; ++g) zero_n(acts + row * 4 * H + g * H + col, n);
        }
        continue;
      }
      const float* p = px + row * 4 * H + col;
      v16 i = sigmoid16(acc[r][0] + load_n(p, n));
      v16 f = sigmoid16(acc[r][1] + load_n(p + H, n));
      v16 g = tanh16(acc[r][2] + load_n(p + 2 * H, n));
      v16 o = sigmoid16(acc[r][3] + load_n(p + 3 * H, n));
      v16 c_new = f * load_n(c, n) + i * g;
      v16 h = o * tanh16(c_new);
      store_n(c, c_new, n);
      store_n(hn, h, n);
      store_n(ys + row * H + col, h, n);
      if (!keep) continue;
      store_n(cs + row * H + col, c_new, n);
      float* a = acts + row * 4 * H + col;
      store_n(a, i, n);
      store_n(a + H, f, n);
      store_n(a + 2 * H, g, n);
      store_n(a + 3 * H, o, n);
    }
  }

  void step(int64_t t, int64_t u_begin, int64_t u_end, const float* h_prev, float* h_next) const {
    for (int64_t u = u_begin; u < u_end; ++u) {
      int64_t r0 = 0;
      for (; r0 + kRows <= s.B; r0 += kRows) rows<kRows>(t, r0, u, h_prev, h_next);
      for (; r0 < s.B; ++r0) rows<1>(t, r0, u, h_prev, h_next);
    }
  }

  void run(int worker, int workers, Barrier& barrier) const {
    auto [u_begin, u_end] = share(s.U, worker, workers);
    const int64_t H = s.H, col0 = u_begin * 16, col1 = std::min(u_end * 16, H);
    for (int64_t b = 0; b < s.B; ++b) {  // each worker starts its own units of the carry
      copy_n(h0 + b * H + col0, col1 - col0, hbuf + b * H + col0);
      copy_n(c0 + b * H + col0, col1 - col0, cbuf + b * H + col0);
    }
    barrier.wait();
    for (int64_t i = 0; i < s.T; ++i) {
      const int64_t t = reverse ? s.T - 1 - i : i;
      const float* h_prev = hbuf + (i % 2) * s.B * H;
      float* h_next = hbuf + ((i + 1) % 2) * s.B * H;
      step(t, u_begin, u_end, h_prev, h_next);
      barrier.wait();
    }
    const float* h_last = hbuf + (s.T % 2) * s.B * H;
    for (int64_t b = 0; b < s.B; ++b) {
      copy_n(h_last + b * H + col0, col1 - col0, h_final + b * H + col0);
      copy_n(cbuf + b * H + col0, col1 - col0, c_final + b * H + col0);
    }
  }
};

struct Backward {
  Shapes s;
  const float *wt, *dys, *cs, *acts, *c0, *dh_final, *dc_final;
  const int32_t* lengths;
  int64_t start;
  bool reverse;  // of the forward loop
  float *dgates, *dh0, *dc0;
  float* dhbuf;  // (B, H), dh carried into the step being processed
  float* dcbuf;  // (B, H)

  bool runs(int64_t t, int64_t b) const { return !lengths || start + t < lengths[b]; }

  // The c carried into step t for row b: c_(t-1) in the forward loop's order, or c0.
  const float* c_prev(int64_t t, int64_t b) const {
    const int64_t prev = reverse ? t + 1 : t - 1;
    if (prev < 0 || prev >= s.T || !runs(prev, b)) return c0 + b * s.H;
    return cs + (prev * s.B + b) * s.H;
  }

  // The gate gradients of step t for this worker's units; dc becomes dc_(t-1).
  void gates(int64_t t, int64_t u_begin, int64_t u_end) const {
    const int64_t H = s.H;
    for (int64_t b = 0; b < s.B; ++b) {
      const int64_t row = t * s.B + b;
      float* dg = dgates + row * 4 * H;
      for (int64_t u = u_begin; u < u_end; ++u) {
        const int64_t col = u * 16, n = std::min<int64_t>(16, H - col);
        if (!runs(t, b)) {  // the step passed its carry through: dh and dc go on unchanged
          for (int g = 0; g < 4; ++g) zero_n(dg + g * H + col, n);
          continue;
        }
        const float* a = acts + row * 4 * H + col;
        v16 i = load_n(a, n), f = load_n(a + H, n), g = load_n(a + 2 * H, n),
            o = load_n(a + 3 * H, n);
        v16 tc = tanh16(load_n(cs + row * H + col, n));
        v16 dh = load_n(dhbuf + b * H + col, n) + load_n(dys + row * H + col, n);
        v16 dc = load_n(dcbuf + b * H + col, n) + dh * o * (1.0f - tc * tc);
        v16 cp = load_n(c_prev(t, b) + col, n);
        store_n(dg + col, dc * g * i * (1.0f - i), n);
        store_n(dg + H + col, dc * cp * f * (1.0f - f), n);
        store_n(dg + 2 * H + col, dc * i * (1.0f - g * g), n);
        store_n(dg + 3 * H + col, dh * tc * o * (1.0f - o), n);
        store_n(dcbuf + b * H + col, dc * f, n);
      }
    }
  }

  // dh_(t-1) = dG_t W_hh^T for this worker's units (rows whose step did not run keep dh).
  template <int NR, int NU>
  void dh_tile(int64_t t, int64_t r0, int64_t u0) const {
    const int64_t H = s.H, K = 4 * H;
    v16 acc[NR][NU];
    matmul_tile<NR, NU>(dgates + (t * s.B + r0) * K, K, K, wt + u0 * K * 16, K * 16, 16, acc);
    for (int r = 0; r < NR; ++r) {
      if (!runs(t, r0 + r)) continue;
      for (int j = 0; j < NU; ++j) {
        const int64_t col = (u0 + j) * 16;
        store_n(dhbuf + (r0 + r) * H + col, acc[r][j], std::min<int64_t>(16, H - col));
      }
    }
  }

  template <int NR>
  void dh_rows(int64_t t, int64_t r0, int64_t u_begin, int64_t u_end) const {
    int64_t u = u_begin;
    for (; u + 4 <= u_end; u += 4) dh_tile<NR, 4>(t, r0, u);
    for (; u < u_end; ++u) dh_tile<NR, 1>(t, r0, u);
  }

  void run(int worker, int workers, Barrier& barrier) const {
    auto [u_begin, u_end] = share(s.U, worker, workers);
    const int64_t H = s.H, col0 = u_begin * 16, col1 = std::min(u_end * 16, H);
    for (int64_t b = 0; b < s.B; ++b) {
      copy_n(dh_final + b * H + col0, col1 - col0, dhbuf + b * H + col0);
      copy_n(dc_final + b * H + col0, col1 - col0, dcbuf + b * H + col0);
    }
    for (int64_t i = 0; i < s.T; ++i) {
      const int64_t t = reverse ? i : s.T - 1 - i;
      gates(t, u_begin, u_end);
      barrier.wait();  // dh needs every unit's gate gradients
      int64_t r0 = 0;
      for (; r0 + kRows <= s.B; r0 += kRows) dh_rows<kRows>(t, r0, u_begin, u_end);
      for (; r0 < s.B; ++r0) dh_rows<1>(t, r0, u_begin, u_end);
      // No second barrier: the next step reads only this worker's own units of dh and dc,
      // and writes gate gradients of another step than the ones the other workers read.
    }
    for (int64_t b = 0; b < s.B; ++b) {
      copy_n(dhbuf + b * H + col0, col1 - col0, dh0 + b * H + col0);
      copy_n(dcbuf + b * H + col0, col1 - col0, dc0 + b * H + col0);
    }
  }
};

ffi::Error check_shapes(const Shapes& s, int64_t w_size, const char* what) {
  if (s.T < 1 || s.B < 1 || s.H < 1) return ffi::Error::InvalidArgument(what);
  if (w_size != s.U * s.H * 64) return ffi::Error::InvalidArgument(what);
  return ffi::Error::Success();
}

ffi::Error lstm_forward(ffi::Buffer<ffi::F32> px, ffi::Buffer<ffi::F32> w,
                        ffi::Buffer<ffi::F32> h0, ffi::Buffer<ffi::F32> c0,
                        ffi::Buffer<ffi::S32> lengths, ffi::Buffer<ffi::S32> start,
                        bool reverse, bool has_lengths, bool keep,
                        ffi::ResultBuffer<ffi::F32> ys,
                        ffi::ResultBuffer<ffi::F32> cs, ffi::ResultBuffer<ffi::F32> acts,
                        ffi::ResultBuffer<ffi::F32> h_final, ffi::ResultBuffer<ffi::F32> c_final,
                        ffi::ThreadPool pool) {
  auto d = px.dimensions();
  if (d.size() != 3) return ffi::Error::InvalidArgument("lstm_forward: px must be (T, B, 4H)");
  Shapes s{d[0], d[1], d[2] / 4, (d[2] / 4 + 15) / 16};
  if (auto e = check_shapes(s, static_cast<int64_t>(w.element_count()), "lstm_forward: bad shapes"); e.failure())
    return e;
  std::vector<float> scratch(3 * s.B * s.H);
  Forward f{s, px.typed_data(), w.typed_data(), h0.typed_data(), c0.typed_data(),
            has_lengths ? lengths.typed_data() : nullptr, start.typed_data()[0], reverse, keep,
            ys->typed_data(), cs->typed_data(), acts->typed_data(), h_final->typed_data(),
            c_final->typed_data(), scratch.data(), scratch.data() + 2 * s.B * s.H};
  parallel(pool, workers_for(pool.num_threads(), s.U, s.B * s.H * s.H * 8), [&](int i, int n, Barrier& bar) {
    f.run(i, n, bar);
  });
  return ffi::Error::Success();
}

ffi::Error lstm_backward(ffi::Buffer<ffi::F32> wt, ffi::Buffer<ffi::F32> dys,
                         ffi::Buffer<ffi::F32> cs, ffi::Buffer<ffi::F32> acts,
                         ffi::Buffer<ffi::F32> c0, ffi::Buffer<ffi::F32> dh_final,
                         ffi::Buffer<ffi::F32> dc_final, ffi::Buffer<ffi::S32> lengths,
                         ffi::Buffer<ffi::S32> start, bool reverse, bool has_lengths,
                         ffi::ResultBuffer<ffi::F32> dgates, ffi::ResultBuffer<ffi::F32> dh0,
                         ffi::ResultBuffer<ffi::F32> dc0, ffi::ThreadPool pool) {
  auto d = dys.dimensions();
  if (d.size() != 3) return ffi::Error::InvalidArgument("lstm_backward: dys must be (T, B, H)");
  Shapes s{d[0], d[1], d[2], (d[2] + 15) / 16};
  if (auto e = check_shapes(s, static_cast<int64_t>(wt.element_count()), "lstm_backward: bad shapes"); e.failure())
    return e;
  std::vector<float> scratch(2 * s.B * s.H);
  Backward bw{s, wt.typed_data(), dys.typed_data(), cs.typed_data(), acts.typed_data(),
              c0.typed_data(), dh_final.typed_data(), dc_final.typed_data(),
              has_lengths ? lengths.typed_data() : nullptr, start.typed_data()[0], reverse,
              dgates->typed_data(), dh0->typed_data(), dc0->typed_data(), scratch.data(),
              scratch.data() + s.B * s.H};
  parallel(pool, workers_for(pool.num_threads(), s.U, s.B * s.H * s.H * 8), [&](int i, int n, Barrier& bar) {
    bw.run(i, n, bar);
  });
  return ffi::Error::Success();
}

}  // namespace
}  // namespace seqjax

XLA_FFI_DEFINE_HANDLER_SYMBOL(SeqjaxLstmForward, seqjax::lstm_forward,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::S32>>()
                                  .Arg<ffi::Buffer<ffi::S32>>()
                                  .Attr<bool>("reverse")
                                  .Attr<bool>("has_lengths")
                                  .Attr<bool>("keep")
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Ctx<ffi::ThreadPool>());

XLA_FFI_DEFINE_HANDLER_SYMBOL(SeqjaxLstmBackward, seqjax::lstm_backward,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::S32>>()
                                  .Arg<ffi::Buffer<ffi::S32>>()
                                  .Attr<bool>("reverse")
                                  .Attr<bool>("has_lengths")
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Ctx<ffi::ThreadPool>());
