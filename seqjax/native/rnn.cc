// The Elman RNN recurrence, h_t = act(x_t W_ih + h_(t-1) W_hh + b), act tanh or ReLU, on the CPU
// as two XLA custom calls: the forward loop and the reverse loop of its gradient. Same scheme as
// lstm.cc: each step's matmuls and activation in one pass, the hidden units split over threads.
//
// Layouts (float32, row-major; U = ceil(H / 16)):
//   xs      (T, B, D)     the inputs
//   wi      (U, D, 16)    W_ih (D, H) packed like w
//   bias    (H,)          b_ih + b_hh
//   w       (U, H, 16)    W_hh (H, H) packed: for unit block u, row k, units 16u .. 16u + 15
//   wt      (U, H, 16)    W_hh^T packed the same way
//   h0      (B, H); lengths (B,) int32 and start () int32 as in lstm.cc
//   ys      (T, B, H)     h_t, zero where the step did not run (also the backward's residual)
//   dz      (T, B, H)     the gradient of the pre-activations
// With resets (the *Restarting entries), also:
//   flags   (T, B) bool   where a row starts again: its carry into step t is the restart carry
//   h_restart (B, H)      that carry (the forward entry's); dh_restart (B, H) its gradient

#include "common.h"

namespace seqjax {
namespace {

struct Forward {
  Shapes s;
  Steps steps;
  bool relu;
  int64_t D;
  const float *xs, *wi, *bias, *w, *h0;
  float *ys, *h_final;
  float* hbuf;  // (2, B, H)
  const float* h_restart = nullptr;  // with steps.restarts

  static constexpr int kGroup = 3;  // unit blocks a task: its tiles are up to 8 rows x 3 blocks
  int64_t num_steps() const { return s.T; }
  void begin() const { first_carry(s, steps, h0, h_restart, hbuf); }
  void end() const { copy_n(carry_half(s, hbuf, s.T), s.B * s.H, h_final); }

  void step(int64_t i, const Units& units) const {
    const int64_t H = s.H, t = steps.nth(i, s.T);
    const float* h_prev = carry_half(s, hbuf, i);
    float* h_next = carry_half(s, hbuf, i + 1);
    tiles(s.B, units, [&](int64_t r0, int64_t u0, auto rows, auto blocks) {
      constexpr int NR = decltype(rows)::value, NU = decltype(blocks)::value;
      v16 acc[NR][NU];
      matmul_tile<NR, NU>(xs + s.row(t, r0) * D, s.row_step() * D, D, wi + u0 * D * 16, D * 16,
                          16, acc);
      matmul_tile<NR, NU, true>(h_prev + r0 * H, H, H, w + u0 * H * 16, H * 16, 16, acc);
      for (int r = 0; r < NR; ++r) {
        const int64_t b = r0 + r, row = s.row(t, b) * H;
        for (int j = 0; j < NU; ++j) {
          const int64_t col = (u0 + j) * 16, n = std::min<int64_t>(16, H - col);
          if (!steps.runs(t, b)) {
            store_carry(s, steps, t, b, col, n, load_n(h_prev + b * H + col, n), h_restart,
                        h_next + b * H + col);
            zero_n(ys + row + col, n);
            continue;
          }
          v16 z = acc[r][j] + load_n(bias + col, n);
          v16 h = relu ? (z > 0.0f ? z : zero16()) : tanh16(z);
          store_carry(s, steps, t, b, col, n, h, h_restart, h_next + b * H + col);
          store_n(ys + row + col, h, n);
        }
      }
    });
  }
};

struct Backward {
  Shapes s;
  Steps steps;  // of the forward loop
  bool relu;
  const float *wt, *dys, *ys, *dh_final;
  float *dz, *dh0;
  float* dhbuf;  // (B, H)
  float* dh_restart = nullptr;  // with steps.restarts: the gradient of the restart carry

  static constexpr int kGroup = 2;  // unit blocks a task: see run_steps
  int64_t num_steps() const { return s.T + 1; }  // see reverse_step
  void begin() const {
    copy_n(dh_final, s.B * s.H, dhbuf);
    if (steps.restarts) zero_n(dh_restart, s.B * s.H);
  }
  void end() const { copy_n(dhbuf, s.B * s.H, dh0); }

  // dz of step t for these units, from dh carried in and the step's own output gradient.
  void pre_activation_gradient(int64_t t, const Units& units) const {
    const int64_t H = s.H;
    for (int64_t b = 0; b < s.B; ++b) {
      const int64_t row = s.row(t, b) * H;
      for (int64_t col = units.col0; col < units.col1; col += 16) {
        const int64_t n = std::min<int64_t>(16, H - col);
        if (!steps.runs(t, b)) {
          zero_n(dz + row + col, n);
          continue;
        }
        v16 h = load_n(ys + row + col, n);
        v16 dh = load_n(dhbuf + b * H + col, n) + load_n(dys + row + col, n);
        v16 slope = relu ? (h > 0.0f ? broadcast16(1.0f) : zero16()) : 1.0f - h * h;
        store_n(dz + row + col, dh * slope, n);
      }
    }
  }

  void step(int64_t i, const Units& units) const {
    reverse_step<false>(
        s, steps, units, i, dz, s.H, wt, dhbuf,
        [&](int64_t t) { pre_activation_gradient(t, units); },
        [&](int64_t t) { restart_gradient(s, steps, units, t, dhbuf, dh_restart); });
  }
};

// The entries' bodies, with resets or (an empty RestartArgs) without.
ffi::Error rnn_forward_with(F32& xs, F32& wi, F32& bias, F32& w, F32& h0, S32& lengths,
                            S32& start, const RestartArgs& restart, bool reverse,
                            bool has_lengths, bool batch_major, bool relu, Out& ys, Out& h_final,
                            ffi::ThreadPool& pool) {
  Shapes s;
  int64_t D;
  SEQJAX_TRY(forward_shapes("rnn_forward", xs, h0, w, wi, 1, batch_major, s, D));
  if (restart.flags)
    SEQJAX_TRY(restart_shapes("rnn_forward", s, *restart.flags, {restart.h}));
  std::vector<float> scratch(2 * s.B * s.H);
  const bool* flags = restart.flags ? restart.flags->typed_data() : nullptr;
  Forward kernel{s, steps_of(lengths, start, reverse, has_lengths, flags), relu, D,
                 xs.typed_data(), wi.typed_data(), bias.typed_data(), w.typed_data(),
                 h0.typed_data(), ys->typed_data(), h_final->typed_data(), scratch.data()};
  if (flags) kernel.h_restart = restart.h->typed_data();
  prefer_huge_pages(ys);
  return launch(pool, s, 2 * s.B * s.H * (s.H + D), kernel);
}

ffi::Error rnn_forward(F32 xs, F32 wi, F32 bias, F32 w, F32 h0, S32 lengths, S32 start,
                       bool reverse, bool has_lengths, bool batch_major, bool relu, Out ys,
                       Out h_final, ffi::ThreadPool pool) {
  return rnn_forward_with(xs, wi, bias, w, h0, lengths, start, {}, reverse, has_lengths,
                          batch_major, relu, ys, h_final, pool);
}

ffi::Error rnn_forward_restarting(F32 xs, F32 wi, F32 bias, F32 w, F32 h0, F32 h_restart,
                                  S32 lengths, S32 start, Flags flags, bool reverse,
                                  bool has_lengths, bool batch_major, bool relu, Out ys,
                                  Out h_final, ffi::ThreadPool pool) {
  return rnn_forward_with(xs, wi, bias, w, h0, lengths, start, {&flags, &h_restart}, reverse,
                          has_lengths, batch_major, relu, ys, h_final, pool);
}

ffi::Error rnn_backward_with(F32& wt, F32& dys, F32& ys, F32& dh_final, S32& lengths, S32& start,
                             const RestartArgs& restart, bool reverse, bool has_lengths,
                             bool batch_major, bool relu, Out& dz, Out& dh0,
                             ffi::ThreadPool& pool) {
  Shapes s;
  SEQJAX_TRY(backward_shapes("rnn_backward", dys, wt, 1, batch_major, s));
  if (restart.flags) SEQJAX_TRY(restart_shapes("rnn_backward", s, *restart.flags, {}));
  std::vector<float> scratch(s.B * s.H);
  const bool* flags = restart.flags ? restart.flags->typed_data() : nullptr;
  Backward kernel{s, steps_of(lengths, start, reverse, has_lengths, flags), relu,
                  wt.typed_data(), dys.typed_data(), ys.typed_data(), dh_final.typed_data(),
                  dz->typed_data(), dh0->typed_data(), scratch.data()};
  if (flags) kernel.dh_restart = (*restart.dh)->typed_data();
  prefer_huge_pages(dz);
  return launch(pool, s, 2 * s.B * s.H * s.H, kernel);
}

ffi::Error rnn_backward(F32 wt, F32 dys, F32 ys, F32 dh_final, S32 lengths, S32 start,
                        bool reverse, bool has_lengths, bool batch_major, bool relu, Out dz,
                        Out dh0, ffi::ThreadPool pool) {
  return rnn_backward_with(wt, dys, ys, dh_final, lengths, start, {}, reverse, has_lengths,
                           batch_major, relu, dz, dh0, pool);
}

// The backward loop reads no restart carry: its residual is each step's output alone.
ffi::Error rnn_backward_restarting(F32 wt, F32 dys, F32 ys, F32 dh_final, S32 lengths,
                                   S32 start, Flags flags, bool reverse, bool has_lengths,
                                   bool batch_major, bool relu, Out dz, Out dh0, Out dh_restart,
                                   ffi::ThreadPool pool) {
  return rnn_backward_with(wt, dys, ys, dh_final, lengths, start,
                           {&flags, nullptr, nullptr, &dh_restart}, reverse, has_lengths,
                           batch_major, relu, dz, dh0, pool);
}

}  // namespace
}  // namespace seqjax

SEQJAX_HANDLER_WITH(SeqjaxRnnForward, seqjax::rnn_forward, 5, 2, "relu");
SEQJAX_HANDLER_WITH(SeqjaxRnnBackward, seqjax::rnn_backward, 4, 2, "relu");
SEQJAX_RESTARTING_HANDLER_WITH(SeqjaxRnnForwardRestarting, seqjax::rnn_forward_restarting, 6, 2,
                               "relu");
SEQJAX_RESTARTING_HANDLER_WITH(SeqjaxRnnBackwardRestarting, seqjax::rnn_backward_restarting, 4,
                               3, "relu");
