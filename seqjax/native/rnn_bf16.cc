// The Elman RNN recurrence, h_t = act(x_t W_ih + h_(t-1) W_hh + b), act tanh or ReLU, in mixed
// precision, as lstm_bf16.cc does the LSTM: bf16 [x_t, h_(t-1)] times bf16 [W_ih; W_hh] with
// float32 accumulation, the activation and h in float32; the reverse loop rounds dz to bf16.
//
// Layouts (U, Dp, Hp, Bp as in lstm_bf16.cc; K1 = H rounded up to 32):
//   xs (T, B, D) bf16; w (U, 1, (Dp + Hp) / 2, 16, 2) bf16; bias (H,) f32 b_ih + b_hh
//   wt (U, 1, K1 / 2, 16, 2) bf16   W_hh^T (H, H)
//   ys (T, B, H) f32 (also the reverse loop's residual); dz (T, B, H) bf16; dbias (H,) f32

#include "bf16_steps.h"

namespace seqjax {
namespace {

using bf16::BF16;
using bf16::round_up;

struct Forward {
  Shapes s;
  Steps steps;
  bool relu, amx;
  int64_t D, Dp, Bp;
  const uint16_t *xs, *w;
  const float *bias, *h0;
  float *ys, *h_final;
  float* hbuf;  // (2, B, H)
  bf16::StepRows rows;
  const float* h_restart = nullptr;

  static constexpr int kGroup = 3;  // unit blocks a task
  int64_t num_steps() const { return s.T; }
  void begin() const {
    first_carry(s, steps, h0, h_restart, hbuf);
    bf16::first_rows(s, steps, xs, D, Dp, hbuf, rows);
  }
  void end() const { copy_n(carry_half(s, hbuf, s.T), s.B * s.H, h_final); }

  void step(int64_t i, const Units& units) const {
    bf16::TileScope scope(amx);
    const int64_t H = s.H, t = steps.nth(i, s.T), k_tiles = rows.Kp / 32;
    const float* h_prev = carry_half(s, hbuf, i);
    float* h_next = carry_half(s, hbuf, i + 1);
    uint16_t* next = rows.half(i + 1);
    const bf16::TilesA a = rows.tiles(i);
    const bf16::TilesB wb{w, rows.Kp * 16, 512};
    const int64_t blocks = units.u_end - units.u_begin;
    bf16::slabs(Bp, [&](int64_t rt, int64_t nrt) {
      float pre[32 * 48];
      for (int64_t j = 0; j < blocks; j += 2) {
        if (j + 1 < blocks)
          bf16::block<2>(amx, a, rt, nrt, wb, units.u_begin + j, 0, k_tiles, pre + j * 16, 48,
                         false);
        else
          bf16::block<1>(amx, a, rt, nrt, wb, units.u_begin + j, 0, k_tiles, pre + j * 16, 48,
                         false);
      }
      for (int64_t r = 0; r < 16 * nrt && rt * 16 + r < s.B; ++r) {
        const int64_t b = rt * 16 + r, row = s.row(t, b) * H;
        for (int64_t j = 0; j < blocks; ++j) {
          const int64_t col = (units.u_begin + j) * 16, n = std::min<int64_t>(16, H - col);
          float* hn = h_next + b * H + col;
          if (!steps.runs(t, b)) {
            store_carry(s, steps, t, b, col, n, load_n(h_prev + b * H + col, n), h_restart, hn);
            zero_n(ys + row + col, n);
          } else {
            v16 z = load16(pre + r * 48 + j * 16) + load_n(bias + col, n);
            v16 h = relu ? (z > 0.0f ? z : zero16()) : tanh16(z);
            store_carry(s, steps, t, b, col, n, h, h_restart, hn);
            store_n(ys + row + col, h, n);
          }
          bf16::store_bf16(next + b * rows.Kp + Dp + col, load_n(hn, n), n);
        }
      }
    });
    if (i + 1 < s.T) bf16::copy_inputs(s, units, xs, D, steps.nth(i + 1, s.T), next, rows.Kp);
  }
};

struct Backward {
  Shapes s;
  Steps steps;
  bool relu, amx;
  int64_t Bp;
  const uint16_t* wt;
  const float *dys, *ys, *dh_final;
  uint16_t* dz;
  float *dbias, *dh0;
  float* dhbuf;
  bf16::StepRows rows;  // dz of the step, bf16, alternating
  float* dh_restart = nullptr;

  static constexpr int kGroup = 2;
  int64_t num_steps() const { return s.T + 1; }
  void begin() const {
    copy_n(dh_final, s.B * s.H, dhbuf);
    zero_n(dbias, s.H);
    if (steps.restarts) zero_n(dh_restart, s.B * s.H);
  }
  void end() const { copy_n(dhbuf, s.B * s.H, dh0); }

  void pre_activation_gradient(int64_t t, const Units& units, uint16_t* g) const {
    const int64_t H = s.H;
    v16 sum[kGroup] = {};
    for (int64_t b = 0; b < s.B; ++b) {
      const int64_t row = s.row(t, b) * H;
      for (int64_t col = units.col0; col < units.col1; col += 16) {
        const int64_t n = std::min<int64_t>(16, H - col);
        v16 d = zero16();
        if (steps.runs(t, b)) {
          v16 h = load_n(ys + row + col, n);
          v16 dh = load_n(dhbuf + b * H + col, n) + load_n(dys + row + col, n);
          d = dh * (relu ? (h > 0.0f ? broadcast16(1.0f) : zero16()) : 1.0f - h * h);
        }
        bf16::put_gradient(d, n, dz + row + col, g + b * rows.Kp + col,
                           sum[(col - units.col0) / 16]);
      }
    }
    for (int64_t col = units.col0; col < units.col1; col += 16)
      bf16::add_to(dbias + col, sum[(col - units.col0) / 16], std::min<int64_t>(16, H - col));
  }

  void step(int64_t i, const Units& units) const {
    bf16::TileScope scope(amx);
    if (i > 0) {
      const int64_t t = steps.nth(i - 1, s.T, /*backward=*/true);
      bf16::hidden_gradient<false>(amx, s, steps, units, t, rows.tiles(i - 1), Bp,
                                   rows.Kp / 32, wt, dhbuf);
      if (steps.restarts) restart_gradient(s, steps, units, t, dhbuf, dh_restart);
    }
    if (i < s.T) pre_activation_gradient(steps.nth(i, s.T, /*backward=*/true), units, rows.half(i));
  }
};

ffi::Error rnn_bf16_forward(BF16 xs, BF16 w, F32 bias, F32 h0, F32 h_restart, S32 lengths,
                            S32 start, Flags flags, bool reverse, bool has_lengths,
                            bool batch_major, bool relu, bool amx, Out ys, Out h_final,
                            ffi::ThreadPool pool) {
  auto d = xs.dimensions(), dh = h0.dimensions();
  if (d.size() != 3 || dh.size() != 2)
    return ffi::Error::InvalidArgument("rnn_bf16_forward: xs must be (T, B, D), h0 (B, H)");
  const Shapes s = shapes_of(d, dh[1], batch_major);
  const int64_t D = d[2], Dp = round_up(D, 32), Kp = Dp + round_up(s.H, 32),
                Bp = round_up(s.B, 16);
  SEQJAX_TRY(bf16::check(static_cast<int64_t>(w.element_count()) == s.U * Kp * 16,
                         "rnn_bf16_forward: w must be packed (U, 1, (Dp + Hp) / 2, 16, 2)"));
  const bool restarting = flags.element_count() > 0;
  if (restarting) SEQJAX_TRY(restart_shapes("rnn_bf16_forward", s, flags, {&h_restart}));
  SEQJAX_TRY(bf16::check(bf16::support() & (amx ? bf16::kAmx : bf16::kAvx512Bf16),
                         "rnn_bf16_forward: this CPU cannot run the requested path"));
  prefer_huge_pages(ys);
  bf16::Scratch scratch(2 * s.B * s.H, 2 * Bp * Kp);
  Forward k{s, steps_of(lengths, start, reverse, has_lengths,
                        restarting ? flags.typed_data() : nullptr),
            relu, amx, D, Dp, Bp, xs.typed_data(), w.typed_data(), bias.typed_data(),
            h0.typed_data(), ys->typed_data(), h_final->typed_data(), scratch.f32.data(),
            bf16::StepRows{scratch.bf16.data(), Bp, Kp}};
  if (restarting) k.h_restart = h_restart.typed_data();
  return launch(pool, s, 2 * s.B * s.H * (s.H + D), k);
}

// The reverse loop reads no restart carry: its residual is each step's output alone.
ffi::Error rnn_bf16_backward(BF16 wt, F32 dys, F32 ys, F32 dh_final, S32 lengths, S32 start,
                             Flags flags, bool reverse, bool has_lengths, bool batch_major,
                             bool relu, bool amx, ffi::Result<BF16> dz, Out dbias, Out dh0,
                             Out dh_restart, ffi::ThreadPool pool) {
  auto d = dys.dimensions();
  if (d.size() != 3)
    return ffi::Error::InvalidArgument("rnn_bf16_backward: dys must be (T, B, H)");
  const Shapes s = shapes_of(d, d[2], batch_major);
  const int64_t Kp = round_up(s.H, 32), Bp = round_up(s.B, 16);
  SEQJAX_TRY(bf16::check(static_cast<int64_t>(wt.element_count()) == s.U * Kp * 16,
                         "rnn_bf16_backward: wt must be packed (U, 1, K1 / 2, 16, 2)"));
  const bool restarting = flags.element_count() > 0;
  if (restarting) SEQJAX_TRY(restart_shapes("rnn_bf16_backward", s, flags, {}));
  SEQJAX_TRY(bf16::check(bf16::support() & (amx ? bf16::kAmx : bf16::kAvx512Bf16),
                         "rnn_bf16_backward: this CPU cannot run the requested path"));
  prefer_huge_pages(dz);
  bf16::Scratch scratch(s.B * s.H, 2 * Bp * Kp);
  Backward k{s, steps_of(lengths, start, reverse, has_lengths,
                         restarting ? flags.typed_data() : nullptr),
             relu, amx, Bp, wt.typed_data(), dys.typed_data(), ys.typed_data(),
             dh_final.typed_data(), dz->typed_data(), dbias->typed_data(), dh0->typed_data(),
             scratch.f32.data(), bf16::StepRows{scratch.bf16.data(), Bp, Kp}};
  if (restarting) k.dh_restart = dh_restart->typed_data();
  return launch(pool, s, 2 * s.B * s.H * s.H, k);
}

}  // namespace
}  // namespace seqjax

XLA_FFI_DEFINE_HANDLER_SYMBOL(SeqjaxRnnBf16Forward, seqjax::rnn_bf16_forward,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::Buffer<ffi::BF16>>()  // xs
                                  .Arg<ffi::Buffer<ffi::BF16>>()  // w
                                  .Arg<seqjax::F32>()             // bias
                                  .Arg<seqjax::F32>()             // h0
                                  .Arg<seqjax::F32>()             // h_restart
                                  .Arg<seqjax::S32>()             // lengths
                                  .Arg<seqjax::S32>()             // start
                                  .Arg<seqjax::Flags>()           // flags
                                  .Attr<bool>("reverse")
                                  .Attr<bool>("has_lengths")
                                  .Attr<bool>("batch_major")
                                  .Attr<bool>("relu")
                                  .Attr<bool>("amx")
                                  .Ret<seqjax::F32>()  // ys
                                  .Ret<seqjax::F32>()  // h_final
                                  .Ctx<ffi::ThreadPool>());
XLA_FFI_DEFINE_HANDLER_SYMBOL(SeqjaxRnnBf16Backward, seqjax::rnn_bf16_backward,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::Buffer<ffi::BF16>>()  // wt
                                  .Arg<seqjax::F32>()             // dys
                                  .Arg<seqjax::F32>()             // ys
                                  .Arg<seqjax::F32>()             // dh_final
                                  .Arg<seqjax::S32>()             // lengths
                                  .Arg<seqjax::S32>()             // start
                                  .Arg<seqjax::Flags>()           // flags
                                  .Attr<bool>("reverse")
                                  .Attr<bool>("has_lengths")
                                  .Attr<bool>("batch_major")
                                  .Attr<bool>("relu")
                                  .Attr<bool>("amx")
                                  .Ret<ffi::Buffer<ffi::BF16>>()  // dz
                                  .Ret<seqjax::F32>()             // dbias
                                  .Ret<seqjax::F32>()             // dh0
                                  .Ret<seqjax::F32>()             // dh_restart
                                  .Ctx<ffi::ThreadPool>());
