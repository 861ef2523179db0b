// The LSTM recurrence in mixed precision, as lstm.cc does it in float32: bfloat16 weights and
// inputs, each step's [x_t, h_(t-1)] rounded to bfloat16 and multiplied by [W_ih; W_hh] with
// float32 accumulation (AMX tiles, or vdpbf16ps: amx.h), the biases, gates, c and h in float32.
// The reverse loop rounds the gate gradients dG to bfloat16 for dh = dG W_hh^T and for the
// weight gradients, which seqjax.native computes after it with the bf16 GEMM (gemm.cc).
//
// Layouts (U = ceil(H / 16); Dp, Hp: D, H rounded up to 32; Bp: B rounded up to 16):
//   xs      (T, B, D) bf16      the inputs (or (B, T, D) batch-major, as in lstm.cc)
//   w       (U, 4, (Dp + Hp) / 2, 16, 2) bf16   [W_ih; W_hh] (Dp + Hp, 4H), zero-padded, in
//                               16-unit panels of (k, k+1) pairs: the B operand of amx.h
//   bias    (4H,) f32           b_ih + b_hh
//   wt      (U, 1, K4 / 2, 16, 2) bf16   W_hh^T (4H, H) packed the same way, K4 = 4H rounded
//                               up to 32
//   h0, c0, h_restart, c_restart (B, H) f32; lengths, start, flags as in lstm.cc (flags and the
//                               restart carries are empty where the call has no resets)
//   ys, cs (T, B, H) f32 as in lstm.cc; acts (T, B, 4H) bf16: lstm.cc's in bfloat16, half the
//                               bytes the forward writes and the reverse loop reads
//   dgates  (T, B, 4H) bf16     the gate gradients; dbias (4H,) f32 their sum over rows

#include "bf16_steps.h"

namespace seqjax {
namespace {

using bf16::BF16;
using bf16::round_up;

struct Forward {
  Shapes s;
  Steps steps;
  bool keep, amx;
  int64_t D, Dp, Bp;
  const uint16_t *xs, *w;
  const float *bias, *h0, *c0;
  float *ys, *cs;
  uint16_t* acts;
  float *h_final, *c_final;
  float *hbuf, *cbuf;  // (2, B, H) and (B, H), as in lstm.cc
  bf16::StepRows rows;
  const float *h_restart = nullptr, *c_restart = nullptr;

  // Row b of step t for the units of block u, from its 4 gates' pre-activations pre[g * 16 + .].
  void cell(int64_t t, int64_t b, int64_t u, const float* pre, const float* h_prev,
            float* h_next, uint16_t* h_bf16) const {
    const int64_t H = s.H, n = std::min<int64_t>(16, H - u * 16), col = u * 16,
                  row = s.row(t, b);
    float* hn = h_next + b * H + col;
    float* c = cbuf + b * H + col;
    if (!steps.runs(t, b)) {  // past this row's length: the carry stays, the output is zero
      store_carry(s, steps, t, b, col, n, load_n(h_prev + b * H + col, n), h_restart, hn);
      zero_n(ys + row * H + col, n);
      if (keep) {
        copy_n(c, n, cs + row * H + col);
        for (int g = 0; g < 4; ++g) bf16::store_bf16(acts + row * 4 * H + g * H + col, zero16(), n);
      }
      store_carry(s, steps, t, b, col, n, load_n(c, n), c_restart, c);
    } else {
      const float* bc = bias + col;
      v16 i = sigmoid16(load16(pre) + load_n(bc, n));
      v16 f = sigmoid16(load16(pre + 16) + load_n(bc + H, n));
      v16 g = tanh16(load16(pre + 32) + load_n(bc + 2 * H, n));
      v16 o = sigmoid16(load16(pre + 48) + load_n(bc + 3 * H, n));
      v16 c_new = f * load_n(c, n) + i * g;
      v16 h = o * tanh16(c_new);
      store_carry(s, steps, t, b, col, n, c_new, c_restart, c);
      store_carry(s, steps, t, b, col, n, h, h_restart, hn);
      store_n(ys + row * H + col, h, n);
      if (keep) {
        store_n(cs + row * H + col, c_new, n);
        uint16_t* a = acts + row * 4 * H + col;
        bf16::store_bf16(a, i, n);
        bf16::store_bf16(a + H, f, n);
        bf16::store_bf16(a + 2 * H, g, n);
        bf16::store_bf16(a + 3 * H, o, n);
      }
    }
    bf16::store_bf16(h_bf16 + b * rows.Kp + Dp + col, load_n(hn, n), n);  // what step t+1 reads
  }

  static constexpr int kGroup = 1;
  int64_t num_steps() const { return s.T; }
  void begin() const {
    first_carry(s, steps, h0, h_restart, hbuf);
    first_carry(s, steps, c0, c_restart, cbuf);
    bf16::first_rows(s, steps, xs, D, Dp, hbuf, rows);
  }
  void end() const {
    copy_n(carry_half(s, hbuf, s.T), s.B * s.H, h_final);
    copy_n(cbuf, s.B * s.H, c_final);
  }

  void step(int64_t i, const Units& units) const {
    bf16::TileScope scope(amx);
    const int64_t t = steps.nth(i, s.T), k_tiles = rows.Kp / 32;
    const float* h_prev = carry_half(s, hbuf, i);
    float* h_next = carry_half(s, hbuf, i + 1);
    uint16_t* next = rows.half(i + 1);
    const bf16::TilesA a = rows.tiles(i);
    for (int64_t u = units.u_begin; u < units.u_end; ++u) {
      const bf16::TilesB wb{w + u * 4 * rows.Kp * 16, rows.Kp * 16, 512};
      int64_t rt = 0;
      for (; rt + 4 <= Bp / 16; rt += 4) {  // 64 rows: each weight tile loaded once for all
        float pre[64 * 64];
        bf16::block_4rows(amx, a, rt, wb, 0, 4, 0, k_tiles, pre, 64);
        for (int64_t r = 0; r < 64 && rt * 16 + r < s.B; ++r)
          cell(t, rt * 16 + r, u, pre + r * 64, h_prev, h_next, next);
      }
      bf16::slabs(Bp - rt * 16, [&](int64_t rt2, int64_t nrt) {
        float pre[32 * 64];
        bf16::block<2>(amx, a, rt + rt2, nrt, wb, 0, 0, k_tiles, pre, 64, false);
        bf16::block<2>(amx, a, rt + rt2, nrt, wb, 2, 0, k_tiles, pre + 32, 64, false);
        for (int64_t r = 0; r < 16 * nrt && (rt + rt2) * 16 + r < s.B; ++r)
          cell(t, (rt + rt2) * 16 + r, u, pre + r * 64, h_prev, h_next, next);
      });
    }
    if (i + 1 < s.T) bf16::copy_inputs(s, units, xs, D, steps.nth(i + 1, s.T), next, rows.Kp);
  }
};

struct Backward {
  Shapes s;
  Steps steps;  // of the forward loop
  bool amx;
  int64_t Bp;
  const uint16_t* wt;
  const float *dys, *cs;
  const uint16_t* acts;
  const float *c0, *dh_final, *dc_final;
  uint16_t* dgates;
  float *dbias, *dh0, *dc0;
  float *dhbuf, *dcbuf;  // (B, H) each
  bf16::StepRows rows;   // dG of the step, bf16, alternating
  const float* c_restart = nullptr;
  float *dh_restart = nullptr, *dc_restart = nullptr;

  // The gate gradients of step t for these units into operand half `g`; dc becomes dc_(t-1).
  // Row by row, as lstm.cc: a column-block-major order strided through acts and ran slower.
  void gates(int64_t t, const Units& units, uint16_t* g) const {
    const int64_t H = s.H;
    v16 sum[kGroup][4] = {};
    for (int64_t b = 0; b < s.B; ++b) {
      const int64_t row = s.row(t, b);
      for (int64_t col = units.col0; col < units.col1; col += 16) {
        const int64_t n = std::min<int64_t>(16, H - col);
        v16* acc = sum[(col - units.col0) / 16];
        uint16_t* out = dgates + row * 4 * H + col;
        uint16_t* op = g + b * rows.Kp + col;
        if (!steps.runs(t, b)) {  // the step passed its carry through: dh and dc go on
          for (int q = 0; q < 4; ++q) bf16::put_gradient(zero16(), n, out + q * H, op + q * H, acc[q]);
          continue;
        }
        const uint16_t* a = acts + row * 4 * H + col;
        v16 i = bf16::load_bf16(a, n), f = bf16::load_bf16(a + H, n),
            gg = bf16::load_bf16(a + 2 * H, n), o = bf16::load_bf16(a + 3 * H, n);
        v16 tc = tanh16(load_n(cs + row * H + col, n));
        v16 dh = load_n(dhbuf + b * H + col, n) + load_n(dys + row * H + col, n);
        v16 dc = load_n(dcbuf + b * H + col, n) + dh * o * (1.0f - tc * tc);
        v16 cp = load_n(carried_into(s, steps, cs, c0, t, b, c_restart) + col, n);
        bf16::put_gradient(dc * gg * i * (1.0f - i), n, out, op, acc[0]);
        bf16::put_gradient(dc * cp * f * (1.0f - f), n, out + H, op + H, acc[1]);
        bf16::put_gradient(dc * i * (1.0f - gg * gg), n, out + 2 * H, op + 2 * H, acc[2]);
        bf16::put_gradient(dh * tc * o * (1.0f - o), n, out + 3 * H, op + 3 * H, acc[3]);
        store_n(dcbuf + b * H + col, dc * f, n);
      }
    }
    for (int64_t col = units.col0; col < units.col1; col += 16)
      for (int q = 0; q < 4; ++q)
        bf16::add_to(dbias + q * H + col, sum[(col - units.col0) / 16][q],
                     std::min<int64_t>(16, H - col));
  }

  static constexpr int kGroup = 2;
  int64_t num_steps() const { return s.T + 1; }  // see reverse_step in common.h
  void begin() const {
    copy_n(dh_final, s.B * s.H, dhbuf);
    copy_n(dc_final, s.B * s.H, dcbuf);
    zero_n(dbias, 4 * s.H);
    if (steps.restarts) {
      zero_n(dh_restart, s.B * s.H);
      zero_n(dc_restart, s.B * s.H);
    }
  }
  void end() const {
    copy_n(dhbuf, s.B * s.H, dh0);
    copy_n(dcbuf, s.B * s.H, dc0);
  }

  void step(int64_t i, const Units& units) const {
    bf16::TileScope scope(amx);
    if (i > 0) {
      const int64_t t = steps.nth(i - 1, s.T, /*backward=*/true);
      bf16::hidden_gradient<false>(amx, s, steps, units, t, rows.tiles(i - 1), Bp,
                                   rows.Kp / 32, wt, dhbuf);
      if (steps.restarts) {
        restart_gradient(s, steps, units, t, dhbuf, dh_restart);
        restart_gradient(s, steps, units, t, dcbuf, dc_restart);
      }
    }
    if (i < s.T) gates(steps.nth(i, s.T, /*backward=*/true), units, rows.half(i));
  }
};

ffi::Error lstm_bf16_forward(BF16 xs, BF16 w, F32 bias, F32 h0, F32 c0, F32 h_restart,
                             F32 c_restart, S32 lengths, S32 start, Flags flags, bool reverse,
                             bool has_lengths, bool batch_major, bool keep, bool amx, Out ys,
                             Out cs, ffi::Result<BF16> acts, Out h_final, Out c_final,
                             ffi::ThreadPool pool) {
  auto d = xs.dimensions(), dh = h0.dimensions();
  if (d.size() != 3 || dh.size() != 2)
    return ffi::Error::InvalidArgument("lstm_bf16_forward: xs must be (T, B, D), h0 (B, H)");
  const Shapes s = shapes_of(d, dh[1], batch_major);
  const int64_t D = d[2], Dp = round_up(D, 32), Kp = Dp + round_up(s.H, 32),
                Bp = round_up(s.B, 16);
  SEQJAX_TRY(bf16::check(static_cast<int64_t>(w.element_count()) == s.U * 4 * Kp * 16,
                         "lstm_bf16_forward: w must be packed (U, 4, (Dp + Hp) / 2, 16, 2)"));
  const bool restarting = flags.element_count() > 0;
  if (restarting)
    SEQJAX_TRY(restart_shapes("lstm_bf16_forward", s, flags, {&h_restart, &c_restart}));
  SEQJAX_TRY(bf16::check(bf16::support() & (amx ? bf16::kAmx : bf16::kAvx512Bf16),
                         "lstm_bf16_forward: this CPU cannot run the requested path"));
  prefer_huge_pages(ys);
  prefer_huge_pages(cs);
  prefer_huge_pages(acts);
  bf16::Scratch scratch(3 * s.B * s.H, 2 * Bp * Kp);
  Forward k{s, steps_of(lengths, start, reverse, has_lengths,
                        restarting ? flags.typed_data() : nullptr),
            keep, amx, D, Dp, Bp, xs.typed_data(), w.typed_data(), bias.typed_data(),
            h0.typed_data(), c0.typed_data(), ys->typed_data(), cs->typed_data(),
            acts->typed_data(), h_final->typed_data(), c_final->typed_data(),
            scratch.f32.data(), scratch.f32.data() + 2 * s.B * s.H,
            bf16::StepRows{scratch.bf16.data(), Bp, Kp}};
  if (restarting) {
    k.h_restart = h_restart.typed_data();
    k.c_restart = c_restart.typed_data();
  }
  return launch(pool, s, 8 * s.B * s.H * (s.H + D), k);
}

ffi::Error lstm_bf16_backward(BF16 wt, F32 dys, F32 cs, BF16 acts, F32 c0, F32 dh_final,
                              F32 dc_final, F32 c_restart, S32 lengths, S32 start, Flags flags,
                              bool reverse, bool has_lengths, bool batch_major, bool amx,
                              ffi::Result<BF16> dgates, Out dbias, Out dh0, Out dc0,
                              Out dh_restart, Out dc_restart, ffi::ThreadPool pool) {
  auto d = dys.dimensions();
  if (d.size() != 3)
    return ffi::Error::InvalidArgument("lstm_bf16_backward: dys must be (T, B, H)");
  const Shapes s = shapes_of(d, d[2], batch_major);
  const int64_t Kp = round_up(4 * s.H, 32), Bp = round_up(s.B, 16);
  SEQJAX_TRY(bf16::check(static_cast<int64_t>(wt.element_count()) == s.U * Kp * 16,
                         "lstm_bf16_backward: wt must be packed (U, 1, K4 / 2, 16, 2)"));
  const bool restarting = flags.element_count() > 0;
  if (restarting) SEQJAX_TRY(restart_shapes("lstm_bf16_backward", s, flags, {&c_restart}));
  SEQJAX_TRY(bf16::check(bf16::support() & (amx ? bf16::kAmx : bf16::kAvx512Bf16),
                         "lstm_bf16_backward: this CPU cannot run the requested path"));
  prefer_huge_pages(dgates);
  bf16::Scratch scratch(2 * s.B * s.H, 2 * Bp * Kp);
  Backward k{s, steps_of(lengths, start, reverse, has_lengths,
                         restarting ? flags.typed_data() : nullptr),
             amx, Bp, wt.typed_data(), dys.typed_data(), cs.typed_data(), acts.typed_data(),
             c0.typed_data(), dh_final.typed_data(), dc_final.typed_data(),
             dgates->typed_data(), dbias->typed_data(), dh0->typed_data(), dc0->typed_data(),
             scratch.f32.data(), scratch.f32.data() + s.B * s.H,
             bf16::StepRows{scratch.bf16.data(), Bp, Kp}};
  if (restarting) {
    k.c_restart = c_restart.typed_data();
    k.dh_restart = dh_restart->typed_data();
    k.dc_restart = dc_restart->typed_data();
  }
  return launch(pool, s, 8 * s.B * s.H * s.H, k);
}

}  // namespace
}  // namespace seqjax

XLA_FFI_DEFINE_HANDLER_SYMBOL(SeqjaxLstmBf16Forward, seqjax::lstm_bf16_forward,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::Buffer<ffi::BF16>>()  // xs
                                  .Arg<ffi::Buffer<ffi::BF16>>()  // w
                                  .Arg<seqjax::F32>()             // bias
                                  .Arg<seqjax::F32>()             // h0
                                  .Arg<seqjax::F32>()             // c0
                                  .Arg<seqjax::F32>()             // h_restart
                                  .Arg<seqjax::F32>()             // c_restart
                                  .Arg<seqjax::S32>()             // lengths
                                  .Arg<seqjax::S32>()             // start
                                  .Arg<seqjax::Flags>()           // flags
                                  .Attr<bool>("reverse")
                                  .Attr<bool>("has_lengths")
                                  .Attr<bool>("batch_major")
                                  .Attr<bool>("keep")
                                  .Attr<bool>("amx")
                                  .Ret<seqjax::F32>()  // ys
                                  .Ret<seqjax::F32>()  // cs
                                  .Ret<ffi::Buffer<ffi::BF16>>()  // acts
                                  .Ret<seqjax::F32>()  // h_final
                                  .Ret<seqjax::F32>()  // c_final
                                  .Ctx<ffi::ThreadPool>());
XLA_FFI_DEFINE_HANDLER_SYMBOL(SeqjaxLstmBf16Backward, seqjax::lstm_bf16_backward,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::Buffer<ffi::BF16>>()  // wt
                                  .Arg<seqjax::F32>()             // dys
                                  .Arg<seqjax::F32>()             // cs
                                  .Arg<ffi::Buffer<ffi::BF16>>()  // acts
                                  .Arg<seqjax::F32>()             // c0
                                  .Arg<seqjax::F32>()             // dh_final
                                  .Arg<seqjax::F32>()             // dc_final
                                  .Arg<seqjax::F32>()             // c_restart
                                  .Arg<seqjax::S32>()             // lengths
                                  .Arg<seqjax::S32>()             // start
                                  .Arg<seqjax::Flags>()           // flags
                                  .Attr<bool>("reverse")
                                  .Attr<bool>("has_lengths")
                                  .Attr<bool>("batch_major")
                                  .Attr<bool>("amx")
                                  .Ret<ffi::Buffer<ffi::BF16>>()  // dgates
                                  .Ret<seqjax::F32>()             // dbias
                                  .Ret<seqjax::F32>()             // dh0
                                  .Ret<seqjax::F32>()             // dc0
                                  .Ret<seqjax::F32>()             // dh_restart
                                  .Ret<seqjax::F32>()             // dc_restart
                                  .Ctx<ffi::ThreadPool>());
