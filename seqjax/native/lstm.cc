// The LSTM recurrence on the CPU as two XLA custom calls (jax.ffi): the forward loop over all
// steps and the reverse loop of its gradient. Each step's matmuls x_t W_ih + h_(t-1) W_hh and
// the gate arithmetic run in one pass over registers, on all cores (run_steps in common.h).
//
// Why: under lax.scan, XLA:CPU runs the step's matmul and its elementwise work as separate
// kernels with a per-step dispatch cost; at small sizes that overhead is as large as the
// arithmetic (benchmarks/step_profile.py). This is the fused step PyTorch's oneDNN LSTM has.
// The input projection is computed here too, step by step, rather than as one XLA matmul
// before the loop: that matmul's (T, B, 4H) output was a fresh buffer on every call, and on
// this project's VM the page faults of writing it cost as much as the matmul (16 MiB at
// B=32, T=128, H=256: 23-28 ms against 14 ms when malloc kept its memory).
//
// Layouts (float32, row-major; B = batch rows, H = hidden, U = ceil(H / 16) unit blocks):
//   xs      (T, B, D)     the inputs
//   wi      (U, D, 4, 16) W_ih (D, 4H) packed like w below; gates in PyTorch's order i, f, g, o
//   bias    (4H,)         b_ih + b_hh (added here: XLA would give the sum its own pass)
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
// With resets (the *Restarting entries), also:
//   flags   (T, B) bool   where a row starts again: its carry into step t is the restart carry
//   h_restart, c_restart  (B, H) that carry; dh_restart, dc_restart (B, H) its gradient
// Steps are visited t = 0 .. T-1, or T-1 .. 0 with reverse; the gradient loop runs the other way.

#include "common.h"

namespace seqjax {
namespace {

struct Forward {
  Shapes s;
  Steps steps;
  bool keep;  // write cs and acts, the residuals of the backward pass
  int64_t D;
  const float *xs, *wi, *bias, *w, *h0, *c0;
  float *ys, *cs, *acts, *h_final, *c_final;
  float* hbuf;  // (2, B, H): the carry h, double-buffered across steps
  float* cbuf;  // (B, H)
  const float *h_restart = nullptr, *c_restart = nullptr;  // with steps.restarts

  // Step t for rows r0 .. r0 + NR - 1 and the 16 units of block u.
  template <int NR>
  void tile(int64_t t, int64_t r0, int64_t u, const float* h_prev, float* h_next) const {
    const int64_t H = s.H, n = std::min<int64_t>(16, H - u * 16), col = u * 16;
    v16 acc[NR][4];
    matmul_tile<NR, 4>(xs + s.row(t, r0) * D, s.row_step() * D, D, wi + u * D * 64, 16, 64, acc);
    matmul_tile<NR, 4, true>(h_prev + r0 * H, H, H, w + u * H * 64, 16, 64, acc);
    for (int r = 0; r < NR; ++r) {
      const int64_t b = r0 + r, row = s.row(t, b);
      float* hn = h_next + b * H + col;
      float* c = cbuf + b * H + col;
      if (!steps.runs(t, b)) {  // past this row's length: the carry stays, the output is zero
        store_carry(s, steps, t, b, col, n, load_n(h_prev + b * H + col, n), h_restart, hn);
        zero_n(ys + row * H + col, n);
        if (keep) {
          copy_n(c, n, cs + row * H + col);
          for (int g = 0; g < 4; ++g) zero_n(acts + row * 4 * H + g * H + col, n);
        }
        store_carry(s, steps, t, b, col, n, load_n(c, n), c_restart, c);
        continue;
      }
      const float* bc = bias + col;
      v16 i = sigmoid16(acc[r][0] + load_n(bc, n));
      v16 f = sigmoid16(acc[r][1] + load_n(bc + H, n));
      v16 g = tanh16(acc[r][2] + load_n(bc + 2 * H, n));
      v16 o = sigmoid16(acc[r][3] + load_n(bc + 3 * H, n));
      v16 c_new = f * load_n(c, n) + i * g;
      v16 h = o * tanh16(c_new);
      store_carry(s, steps, t, b, col, n, c_new, c_restart, c);
      store_carry(s, steps, t, b, col, n, h, h_restart, hn);
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

  static constexpr int kGroup = 1;  // unit blocks a task: its tile holds a block's 4 gates
  int64_t num_steps() const { return s.T; }
  void begin() const {
    first_carry(s, steps, h0, h_restart, hbuf);
    first_carry(s, steps, c0, c_restart, cbuf);
  }
  void end() const {
    copy_n(carry_half(s, hbuf, s.T), s.B * s.H, h_final);
    copy_n(cbuf, s.B * s.H, c_final);
  }

  void step(int64_t i, const Units& units) const {
    // 6 rows x 4 gates: 24 accumulators, as many as the registers hold beside the weights.
    gated_forward_step<6>(s, steps, units, i, hbuf,
                          [&](int64_t t, int64_t r0, int64_t u, auto rows, const float* h_prev,
                              float* h_next) {
                            tile<decltype(rows)::value>(t, r0, u, h_prev, h_next);
                          });
  }
};

struct Backward {
  Shapes s;
  Steps steps;  // of the forward loop
  const float *wt, *dys, *cs, *acts, *c0, *dh_final, *dc_final;
  float *dgates, *dh0, *dc0;
  float* dhbuf;  // (B, H), dh carried into the step being processed
  float* dcbuf;  // (B, H)
  const float* c_restart = nullptr;  // with steps.restarts, and the gradient of the restart carry:
  float *dh_restart = nullptr, *dc_restart = nullptr;

  // The gate gradients of step t for these units; dc becomes dc_(t-1).
  void gates(int64_t t, const Units& units) const {
    const int64_t H = s.H;
    for (int64_t b = 0; b < s.B; ++b) {
      const int64_t row = s.row(t, b);
      float* dg = dgates + row * 4 * H;
      for (int64_t col = units.col0; col < units.col1; col += 16) {
        const int64_t n = std::min<int64_t>(16, H - col);
        if (!steps.runs(t, b)) {  // the step passed its carry through: dh and dc go on
          for (int g = 0; g < 4; ++g) zero_n(dg + g * H + col, n);
          continue;
        }
        const float* a = acts + row * 4 * H + col;
        v16 i = load_n(a, n), f = load_n(a + H, n), g = load_n(a + 2 * H, n),
            o = load_n(a + 3 * H, n);
        v16 tc = tanh16(load_n(cs + row * H + col, n));
        v16 dh = load_n(dhbuf + b * H + col, n) + load_n(dys + row * H + col, n);
        v16 dc = load_n(dcbuf + b * H + col, n) + dh * o * (1.0f - tc * tc);
        v16 cp = load_n(carried_into(s, steps, cs, c0, t, b, c_restart) + col, n);
        store_n(dg + col, dc * g * i * (1.0f - i), n);
        store_n(dg + H + col, dc * cp * f * (1.0f - f), n);
        store_n(dg + 2 * H + col, dc * i * (1.0f - g * g), n);
        store_n(dg + 3 * H + col, dh * tc * o * (1.0f - o), n);
        store_n(dcbuf + b * H + col, dc * f, n);
      }
    }
  }

  static constexpr int kGroup = 2;  // unit blocks a task: see run_steps
  int64_t num_steps() const { return s.T + 1; }  // see reverse_step
  void begin() const {
    copy_n(dh_final, s.B * s.H, dhbuf);
    copy_n(dc_final, s.B * s.H, dcbuf);
    if (steps.restarts) {
      zero_n(dh_restart, s.B * s.H);
      zero_n(dc_restart, s.B * s.H);
    }
  }
  void end() const {
    copy_n(dhbuf, s.B * s.H, dh0);
    copy_n(dcbuf, s.B * s.H, dc0);
  }

  void step(int64_t i, const Units& units) const {  // dh_(t-1) = dG_t W_hh^T
    reverse_step<false>(
        s, steps, units, i, dgates, 4 * s.H, wt, dhbuf, [&](int64_t t) { gates(t, units); },
        [&](int64_t t) {  // dc into step t came from gates(t), for these units too
          restart_gradient(s, steps, units, t, dhbuf, dh_restart);
          restart_gradient(s, steps, units, t, dcbuf, dc_restart);
        });
  }
};

// The entries' bodies, with resets or (an empty RestartArgs) without.
ffi::Error lstm_forward_with(F32& xs, F32& wi, F32& bias, F32& w, F32& h0, F32& c0, S32& lengths,
                             S32& start, const RestartArgs& restart, bool reverse,
                             bool has_lengths, bool batch_major, bool keep, Out& ys, Out& cs,
                             Out& acts, Out& h_final, Out& c_final, ffi::ThreadPool& pool) {
  Shapes s;
  int64_t D;
  SEQJAX_TRY(forward_shapes("lstm_forward", xs, h0, w, wi, 4, batch_major, s, D));
  if (restart.flags)
    SEQJAX_TRY(restart_shapes("lstm_forward", s, *restart.flags, {restart.h, restart.c}));
  std::vector<float> scratch(3 * s.B * s.H);
  const bool* flags = restart.flags ? restart.flags->typed_data() : nullptr;
  Forward kernel{s, steps_of(lengths, start, reverse, has_lengths, flags), keep, D,
                 xs.typed_data(), wi.typed_data(), bias.typed_data(), w.typed_data(),
                 h0.typed_data(), c0.typed_data(), ys->typed_data(), cs->typed_data(),
                 acts->typed_data(), h_final->typed_data(), c_final->typed_data(),
                 scratch.data(), scratch.data() + 2 * s.B * s.H};
  if (flags) {
    kernel.h_restart = restart.h->typed_data();
    kernel.c_restart = restart.c->typed_data();
  }
  prefer_huge_pages(ys, cs, acts);
  return launch(pool, s, 8 * s.B * s.H * (s.H + D), kernel);
}

ffi::Error lstm_forward(F32 xs, F32 wi, F32 bias, F32 w, F32 h0, F32 c0, S32 lengths,
                        S32 start, bool reverse, bool has_lengths, bool batch_major, bool keep,
                        Out ys, Out cs, Out acts, Out h_final, Out c_final,
                        ffi::ThreadPool pool) {
  return lstm_forward_with(xs, wi, bias, w, h0, c0, lengths, start, {}, reverse, has_lengths,
                           batch_major, keep, ys, cs, acts, h_final, c_final, pool);
}

ffi::Error lstm_forward_restarting(F32 xs, F32 wi, F32 bias, F32 w, F32 h0, F32 c0,
                                   F32 h_restart, F32 c_restart, S32 lengths, S32 start,
                                   Flags flags, bool reverse, bool has_lengths, bool batch_major,
                                   bool keep, Out ys, Out cs, Out acts, Out h_final,
                                   Out c_final, ffi::ThreadPool pool) {
  return lstm_forward_with(xs, wi, bias, w, h0, c0, lengths, start,
                           {&flags, &h_restart, &c_restart}, reverse, has_lengths, batch_major,
                           keep, ys, cs, acts, h_final, c_final, pool);
}

ffi::Error lstm_backward_with(F32& wt, F32& dys, F32& cs, F32& acts, F32& c0, F32& dh_final,
                              F32& dc_final, S32& lengths, S32& start,
                              const RestartArgs& restart, bool reverse, bool has_lengths,
                              bool batch_major, Out& dgates, Out& dh0, Out& dc0,
                              ffi::ThreadPool& pool) {
  Shapes s;
  SEQJAX_TRY(backward_shapes("lstm_backward", dys, wt, 4, batch_major, s));
  if (restart.flags)
    SEQJAX_TRY(restart_shapes("lstm_backward", s, *restart.flags, {restart.c}));
  std::vector<float> scratch(2 * s.B * s.H);
  const bool* flags = restart.flags ? restart.flags->typed_data() : nullptr;
  Backward kernel{s, steps_of(lengths, start, reverse, has_lengths, flags), wt.typed_data(),
                  dys.typed_data(), cs.typed_data(), acts.typed_data(), c0.typed_data(),
                  dh_final.typed_data(), dc_final.typed_data(), dgates->typed_data(),
                  dh0->typed_data(), dc0->typed_data(), scratch.data(),
                  scratch.data() + s.B * s.H};
  if (flags) {
    kernel.c_restart = restart.c->typed_data();
    kernel.dh_restart = (*restart.dh)->typed_data();
    kernel.dc_restart = (*restart.dc)->typed_data();
  }
  prefer_huge_pages(dgates);
  return launch(pool, s, 8 * s.B * s.H * s.H, kernel);
}

ffi::Error lstm_backward(F32 wt, F32 dys, F32 cs, F32 acts, F32 c0, F32 dh_final, F32 dc_final,
                         S32 lengths, S32 start, bool reverse, bool has_lengths, bool batch_major,
                         Out dgates, Out dh0, Out dc0, ffi::ThreadPool pool) {
  return lstm_backward_with(wt, dys, cs, acts, c0, dh_final, dc_final, lengths, start, {},
                            reverse, has_lengths, batch_major, dgates, dh0, dc0, pool);
}

ffi::Error lstm_backward_restarting(F32 wt, F32 dys, F32 cs, F32 acts, F32 c0, F32 dh_final,
                                    F32 dc_final, F32 c_restart, S32 lengths, S32 start,
                                    Flags flags, bool reverse, bool has_lengths,
                                    bool batch_major, Out dgates, Out dh0, Out dc0,
                                    Out dh_restart, Out dc_restart, ffi::ThreadPool pool) {
  return lstm_backward_with(wt, dys, cs, acts, c0, dh_final, dc_final, lengths, start,
                            {&flags, nullptr, &c_restart, &dh_restart, &dc_restart}, reverse,
                            has_lengths, batch_major, dgates, dh0, dc0, pool);
}

}  // namespace
}  // namespace seqjax

SEQJAX_HANDLER_WITH(SeqjaxLstmForward, seqjax::lstm_forward, 6, 5, "keep");
SEQJAX_HANDLER(SeqjaxLstmBackward, seqjax::lstm_backward, 7, 3);
SEQJAX_RESTARTING_HANDLER_WITH(SeqjaxLstmForwardRestarting, seqjax::lstm_forward_restarting, 8, 5,
                               "keep");
SEQJAX_RESTARTING_HANDLER(SeqjaxLstmBackwardRestarting, seqjax::lstm_backward_restarting, 8, 5);
