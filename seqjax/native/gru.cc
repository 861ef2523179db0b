// The GRU recurrence (reset after the hidden matmul, PyTorch's form) on the CPU as two XLA custom
// calls: the forward loop and the reverse loop of its gradient. Same scheme as lstm.cc: each
// step's matmuls x_t W_ih and h_(t-1) W_hh and the gate arithmetic in one pass, the hidden units
// split over threads (run_steps in common.h).
//
//   r = sigmoid(x W_ir + h W_hr + b_ir + b_hr)      z = sigmoid(x W_iz + h W_hz + b_iz + b_hz)
//   n = tanh(x W_in + b_in + r * (h W_hn + b_hn))    h' = (1 - z) * n + z * h
//
// Layouts (float32, row-major; U = ceil(H / 16)):
//   xs      (T, B, D)     the inputs
//   wi      (U, D, 3, 16) W_ih (D, 3H) packed like w; gates in PyTorch's order r, z, n
//   bias    (4H,)         b_ir + b_hr, b_iz + b_hz, b_in, b_hn (b_hn stays inside r * (...))
//   w       (U, H, 3, 16) W_hh (H, 3H) packed as in lstm.cc, 3 gates
//   wt      (U, 3H, 16)   W_hh^T (3H, H) packed the same way, for dh = dG_hh W_hh^T
//   h0      (B, H); lengths (B,) int32 and start () int32 as in lstm.cc
//   ys      (T, B, H)     h_t, zero where the step did not run
//   acts    (T, B, 4H)    r, z, n and h W_hn + b_hn: the backward pass's residuals
//   d_px    (T, B, 3H)    the gradient of x W_ih + b_ih: dr, dz, dn
//   d_hh    (T, B, 3H)    the gradient of h W_hh + b_hh: dr, dz, dn * r
// With resets (the *Restarting entries), also:
//   flags   (T, B) bool   where a row starts again: its carry into step t is the restart carry
//   h_restart (B, H)      that carry; dh_restart (B, H) its gradient

#include "common.h"

namespace seqjax {
namespace {

struct Forward {
  Shapes s;
  Steps steps;
  bool keep;  // write acts, the residuals of the backward pass
  int64_t D;
  const float *xs, *wi, *bias, *w, *h0;
  float *ys, *acts, *h_final;
  float* hbuf;  // (2, B, H): the carry, double-buffered across steps
  const float* h_restart = nullptr;  // with steps.restarts

  template <int NR>
  void tile(int64_t t, int64_t r0, int64_t u, const float* h_prev, float* h_next) const {
    const int64_t H = s.H, n = std::min<int64_t>(16, H - u * 16), col = u * 16;
    // x W_ih first; its n part is set aside, since r scales h W_hn alone.
    v16 acc[NR][3], xn[NR];
    matmul_tile<NR, 3>(xs + s.row(t, r0) * D, s.row_step() * D, D, wi + u * D * 48, 16, 48, acc);
    for (int r = 0; r < NR; ++r) {
      xn[r] = acc[r][2];
      acc[r][2] = zero16();
    }
    matmul_tile<NR, 3, true>(h_prev + r0 * H, H, H, w + u * H * 48, 16, 48, acc);
    for (int r = 0; r < NR; ++r) {
      const int64_t b = r0 + r, row = s.row(t, b);
      const float* hp = h_prev + b * H + col;
      if (!steps.runs(t, b)) {  // past this row's length: the carry stays, the output is zero
        store_carry(s, steps, t, b, col, n, load_n(hp, n), h_restart, h_next + b * H + col);
        zero_n(ys + row * H + col, n);
        if (keep)
          for (int g = 0; g < 4; ++g) zero_n(acts + row * 4 * H + g * H + col, n);
        continue;
      }
      const float* bc = bias + col;
      v16 reset = sigmoid16(acc[r][0] + load_n(bc, n));
      v16 update = sigmoid16(acc[r][1] + load_n(bc + H, n));
      v16 hn = acc[r][2] + load_n(bc + 3 * H, n);
      v16 cand = tanh16(xn[r] + load_n(bc + 2 * H, n) + reset * hn);
      v16 h = cand + update * (load_n(hp, n) - cand);
      store_carry(s, steps, t, b, col, n, h, h_restart, h_next + b * H + col);
      store_n(ys + row * H + col, h, n);
      if (!keep) continue;
      float* a = acts + row * 4 * H + col;
      store_n(a, reset, n);
      store_n(a + H, update, n);
      store_n(a + 2 * H, cand, n);
      store_n(a + 3 * H, hn, n);
    }
  }

  static constexpr int kGroup = 1;  // unit blocks a task: its tile holds a block's 3 gates
  int64_t num_steps() const { return s.T; }
  void begin() const { first_carry(s, steps, h0, h_restart, hbuf); }
  void end() const { copy_n(carry_half(s, hbuf, s.T), s.B * s.H, h_final); }

  void step(int64_t i, const Units& units) const {
    // 8 rows x 3 gates: 24 accumulators, as many as the registers hold beside the weights.
    gated_forward_step<8>(s, steps, units, i, hbuf,
                          [&](int64_t t, int64_t r0, int64_t u, auto rows, const float* h_prev,
                              float* h_next) {
                            tile<decltype(rows)::value>(t, r0, u, h_prev, h_next);
                          });
  }
};

struct Backward {
  Shapes s;
  Steps steps;  // of the forward loop
  const float *wt, *dys, *ys, *acts, *h0, *dh_final;
  float *d_px, *d_hh, *dh0;
  float* dhbuf;  // (B, H): dh carried into the step being processed
  const float* h_restart = nullptr;  // with steps.restarts; and the gradient of that carry:
  float* dh_restart = nullptr;

  // The gate gradients of step t for these units; dh becomes its direct part dh * z.
  void gates(int64_t t, const Units& units) const {
    const int64_t H = s.H;
    for (int64_t b = 0; b < s.B; ++b) {
      const int64_t row = s.row(t, b);
      float *dp = d_px + row * 3 * H, *dq = d_hh + row * 3 * H;
      for (int64_t col = units.col0; col < units.col1; col += 16) {
        const int64_t n = std::min<int64_t>(16, H - col);
        if (!steps.runs(t, b)) {  // the step passed its carry through: dh goes on
          for (int g = 0; g < 3; ++g) {
            zero_n(dp + g * H + col, n);
            zero_n(dq + g * H + col, n);
          }
          continue;
        }
        const float* a = acts + row * 4 * H + col;
        v16 reset = load_n(a, n), update = load_n(a + H, n), cand = load_n(a + 2 * H, n),
            hn = load_n(a + 3 * H, n);
        v16 dh = load_n(dhbuf + b * H + col, n) + load_n(dys + row * H + col, n);
        v16 dn = dh * (1.0f - update) * (1.0f - cand * cand);
        v16 dr = dn * hn * reset * (1.0f - reset);
        v16 h_prev = load_n(carried_into(s, steps, ys, h0, t, b, h_restart) + col, n);
        v16 dz = dh * (h_prev - cand) * update * (1.0f - update);
        store_n(dp + col, dr, n);
        store_n(dp + H + col, dz, n);
        store_n(dp + 2 * H + col, dn, n);
        store_n(dq + col, dr, n);
        store_n(dq + H + col, dz, n);
        store_n(dq + 2 * H + col, dn * reset, n);
        store_n(dhbuf + b * H + col, dh * update, n);
      }
    }
  }

  static constexpr int kGroup = 2;  // unit blocks a task: see run_steps
  int64_t num_steps() const { return s.T + 1; }  // see reverse_step
  void begin() const {
    copy_n(dh_final, s.B * s.H, dhbuf);
    if (steps.restarts) zero_n(dh_restart, s.B * s.H);
  }
  void end() const { copy_n(dhbuf, s.B * s.H, dh0); }

  void step(int64_t i, const Units& units) const {  // dh * z + dG_hh W_hh^T
    reverse_step<true>(
        s, steps, units, i, d_hh, 3 * s.H, wt, dhbuf, [&](int64_t t) { gates(t, units); },
        [&](int64_t t) { restart_gradient(s, steps, units, t, dhbuf, dh_restart); });
  }
};

// The entries' bodies, with resets or (an empty RestartArgs) without.
ffi::Error gru_forward_with(F32& xs, F32& wi, F32& bias, F32& w, F32& h0, S32& lengths,
                            S32& start, const RestartArgs& restart, bool reverse,
                            bool has_lengths, bool batch_major, bool keep, Out& ys, Out& acts,
                            Out& h_final, ffi::ThreadPool& pool) {
  Shapes s;
  int64_t D;
  SEQJAX_TRY(forward_shapes("gru_forward", xs, h0, w, wi, 3, batch_major, s, D));
  if (restart.flags)
    SEQJAX_TRY(restart_shapes("gru_forward", s, *restart.flags, {restart.h}));
  std::vector<float> scratch(2 * s.B * s.H);
  const bool* flags = restart.flags ? restart.flags->typed_data() : nullptr;
  Forward kernel{s, steps_of(lengths, start, reverse, has_lengths, flags), keep, D,
                 xs.typed_data(), wi.typed_data(), bias.typed_data(), w.typed_data(),
                 h0.typed_data(), ys->typed_data(), acts->typed_data(), h_final->typed_data(),
                 scratch.data()};
  if (flags) kernel.h_restart = restart.h->typed_data();
  prefer_huge_pages(ys, acts);
  return launch(pool, s, 6 * s.B * s.H * (s.H + D), kernel);
}

ffi::Error gru_forward(F32 xs, F32 wi, F32 bias, F32 w, F32 h0, S32 lengths, S32 start,
                       bool reverse, bool has_lengths, bool batch_major, bool keep, Out ys,
                       Out acts, Out h_final, ffi::ThreadPool pool) {
  return gru_forward_with(xs, wi, bias, w, h0, lengths, start, {}, reverse, has_lengths,
                          batch_major, keep, ys, acts, h_final, pool);
}

ffi::Error gru_forward_restarting(F32 xs, F32 wi, F32 bias, F32 w, F32 h0, F32 h_restart,
                                  S32 lengths, S32 start, Flags flags, bool reverse,
                                  bool has_lengths, bool batch_major, bool keep, Out ys,
                                  Out acts, Out h_final, ffi::ThreadPool pool) {
  return gru_forward_with(xs, wi, bias, w, h0, lengths, start, {&flags, &h_restart}, reverse,
                          has_lengths, batch_major, keep, ys, acts, h_final, pool);
}

ffi::Error gru_backward_with(F32& wt, F32& dys, F32& ys, F32& acts, F32& h0, F32& dh_final,
                             S32& lengths, S32& start, const RestartArgs& restart, bool reverse,
                             bool has_lengths, bool batch_major, Out& d_px, Out& d_hh, Out& dh0,
                             ffi::ThreadPool& pool) {
  Shapes s;
  SEQJAX_TRY(backward_shapes("gru_backward", dys, wt, 3, batch_major, s));
  if (restart.flags)
    SEQJAX_TRY(restart_shapes("gru_backward", s, *restart.flags, {restart.h}));
  std::vector<float> scratch(s.B * s.H);
  const bool* flags = restart.flags ? restart.flags->typed_data() : nullptr;
  Backward kernel{s, steps_of(lengths, start, reverse, has_lengths, flags), wt.typed_data(),
                  dys.typed_data(), ys.typed_data(), acts.typed_data(), h0.typed_data(),
                  dh_final.typed_data(), d_px->typed_data(), d_hh->typed_data(),
                  dh0->typed_data(), scratch.data()};
  if (flags) {
    kernel.h_restart = restart.h->typed_data();
    kernel.dh_restart = (*restart.dh)->typed_data();
  }
  prefer_huge_pages(d_px, d_hh);
  return launch(pool, s, 6 * s.B * s.H * s.H, kernel);
}

ffi::Error gru_backward(F32 wt, F32 dys, F32 ys, F32 acts, F32 h0, F32 dh_final, S32 lengths,
                        S32 start, bool reverse, bool has_lengths, bool batch_major, Out d_px,
                        Out d_hh, Out dh0, ffi::ThreadPool pool) {
  return gru_backward_with(wt, dys, ys, acts, h0, dh_final, lengths, start, {}, reverse,
                           has_lengths, batch_major, d_px, d_hh, dh0, pool);
}

ffi::Error gru_backward_restarting(F32 wt, F32 dys, F32 ys, F32 acts, F32 h0, F32 dh_final,
                                   F32 h_restart, S32 lengths, S32 start, Flags flags,
                                   bool reverse, bool has_lengths, bool batch_major, Out d_px,
                                   Out d_hh, Out dh0, Out dh_restart, ffi::ThreadPool pool) {
  return gru_backward_with(wt, dys, ys, acts, h0, dh_final, lengths, start,
                           {&flags, &h_restart, nullptr, &dh_restart}, reverse, has_lengths,
                           batch_major, d_px, d_hh, dh0, pool);
}

}  // namespace
}  // namespace seqjax

SEQJAX_HANDLER_WITH(SeqjaxGruForward, seqjax::gru_forward, 5, 3, "keep");
SEQJAX_HANDLER(SeqjaxGruBackward, seqjax::gru_backward, 6, 3);
SEQJAX_RESTARTING_HANDLER_WITH(SeqjaxGruForwardRestarting, seqjax::gru_forward_restarting, 6, 3,
                               "keep");
SEQJAX_RESTARTING_HANDLER(SeqjaxGruBackwardRestarting, seqjax::gru_backward_restarting, 7, 4);
