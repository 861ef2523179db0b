// The GRU recurrence (reset after the hidden matmul, as gru.cc) in mixed precision, as
// lstm_bf16.cc does the LSTM: bf16 [x_t, h_(t-1)] times bf16 weights with float32 accumulation,
// the gates and h in float32, and in the reverse loop dG_hh rounded to bf16 for dh.
//
// The forward matmul has four column groups per 16-unit block: r and z over all of k (x and
// h), x W_in over x's k tiles only and h W_hn over h's only (r scales h W_hn + b_hn alone), so
// the zero blocks pack_weights leaves in [W_ih; W_hh] are never multiplied.
//
// Layouts (U, Dp, Hp, Bp as in lstm_bf16.cc; K3 = 3H rounded up to 32):
//   xs (T, B, D) bf16; w (U, 4, (Dp + Hp) / 2, 16, 2) bf16: columns r, z, x W_in, h W_hn
//   bias (4H,) f32            b_ir + b_hr, b_iz + b_hz, b_in, b_hn (as gru.cc)
//   wt (U, 1, K3 / 2, 16, 2) bf16   W_hh^T (3H, H)
//   ys (T, B, H) f32; acts (T, B, 4H) bf16: r, z, n, h W_hn + b_hn (gru.cc's, in bfloat16)
//   d_px, d_hh (T, B, 3H) bf16      as gru.cc; db_ih, db_hh (3H,) f32 their sums over rows

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
  const float *bias, *h0;
  float* ys;
  uint16_t* acts;
  float* h_final;
  float* hbuf;  // (2, B, H)
  bf16::StepRows rows;
  const float* h_restart = nullptr;

  void cell(int64_t t, int64_t b, int64_t u, const float* pre, const float* h_prev,
            float* h_next, uint16_t* h_bf16) const {
    const int64_t H = s.H, n = std::min<int64_t>(16, H - u * 16), col = u * 16,
                  row = s.row(t, b);
    const float* hp = h_prev + b * H + col;
    float* hn_out = h_next + b * H + col;
    if (!steps.runs(t, b)) {
      store_carry(s, steps, t, b, col, n, load_n(hp, n), h_restart, hn_out);
      zero_n(ys + row * H + col, n);
      if (keep)
        for (int g = 0; g < 4; ++g) bf16::store_bf16(acts + row * 4 * H + g * H + col, zero16(), n);
    } else {
      const float* bc = bias + col;
      v16 reset = sigmoid16(load16(pre) + load_n(bc, n));
      v16 update = sigmoid16(load16(pre + 16) + load_n(bc + H, n));
      v16 hn = load16(pre + 48) + load_n(bc + 3 * H, n);
      v16 cand = tanh16(load16(pre + 32) + load_n(bc + 2 * H, n) + reset * hn);
      v16 h = cand + update * (load_n(hp, n) - cand);
      store_carry(s, steps, t, b, col, n, h, h_restart, hn_out);
      store_n(ys + row * H + col, h, n);
      if (keep) {
        uint16_t* a = acts + row * 4 * H + col;
        bf16::store_bf16(a, reset, n);
        bf16::store_bf16(a + H, update, n);
        bf16::store_bf16(a + 2 * H, cand, n);
        bf16::store_bf16(a + 3 * H, hn, n);
      }
    }
    bf16::store_bf16(h_bf16 + b * rows.Kp + Dp + col, load_n(hn_out, n), n);
  }

  static constexpr int kGroup = 1;
  int64_t num_steps() const { return s.T; }
  void begin() const {
    first_carry(s, steps, h0, h_restart, hbuf);
    bf16::first_rows(s, steps, xs, D, Dp, hbuf, rows);
  }
  void end() const { copy_n(carry_half(s, hbuf, s.T), s.B * s.H, h_final); }

  void step(int64_t i, const Units& units) const {
    bf16::TileScope scope(amx);
    const int64_t t = steps.nth(i, s.T), k_tiles = rows.Kp / 32, x_tiles = Dp / 32;
    const float* h_prev = carry_half(s, hbuf, i);
    float* h_next = carry_half(s, hbuf, i + 1);
    uint16_t* next = rows.half(i + 1);
    const bf16::TilesA a = rows.tiles(i);
    for (int64_t u = units.u_begin; u < units.u_end; ++u) {
      const bf16::TilesB wb{w + u * 4 * rows.Kp * 16, rows.Kp * 16, 512};
      int64_t rt = 0;
      for (; rt + 4 <= Bp / 16; rt += 4) {  // 64 rows: each weight tile loaded once for all
        float pre[64 * 64];
        bf16::block_4rows(amx, a, rt, wb, 0, 2, 0, k_tiles, pre, 64);
        bf16::block_4rows(amx, a, rt, wb, 2, 1, 0, x_tiles, pre + 32, 64);
        bf16::block_4rows(amx, a, rt, wb, 3, 1, x_tiles, k_tiles, pre + 48, 64);
        for (int64_t r = 0; r < 64 && rt * 16 + r < s.B; ++r)
          cell(t, rt * 16 + r, u, pre + r * 64, h_prev, h_next, next);
      }
      bf16::slabs(Bp - rt * 16, [&](int64_t rt2, int64_t nrt) {
        const int64_t r0 = rt + rt2;
        float pre[32 * 64];
        bf16::block<2>(amx, a, r0, nrt, wb, 0, 0, k_tiles, pre, 64, false);
        bf16::block<1>(amx, a, r0, nrt, wb, 2, 0, x_tiles, pre + 32, 64, false);
        bf16::block<1>(amx, a, r0, nrt, wb, 3, x_tiles, k_tiles, pre + 48, 64, false);
        for (int64_t r = 0; r < 16 * nrt && r0 * 16 + r < s.B; ++r)
          cell(t, r0 * 16 + r, u, pre + r * 64, h_prev, h_next, next);
      });
    }
    if (i + 1 < s.T) bf16::copy_inputs(s, units, xs, D, steps.nth(i + 1, s.T), next, rows.Kp);
  }
};

struct Backward {
  Shapes s;
  Steps steps;
  bool amx;
  int64_t Bp;
  const uint16_t* wt;
  const float *dys, *ys;
  const uint16_t* acts;
  const float *h0, *dh_final;
  uint16_t *d_px, *d_hh;
  float *db_ih, *db_hh, *dh0;
  float* dhbuf;
  bf16::StepRows rows;  // d_hh of the step, bf16, alternating
  const float* h_restart = nullptr;
  float* dh_restart = nullptr;

  // The gate gradients of step t for these units; dh becomes its direct part dh * z.
  void gates(int64_t t, const Units& units, uint16_t* g) const {
    const int64_t H = s.H;
    v16 sum_p[kGroup][3] = {}, sum_q[kGroup][3] = {};
    for (int64_t b = 0; b < s.B; ++b) {
      const int64_t row = s.row(t, b);
      for (int64_t col = units.col0; col < units.col1; col += 16) {
        const int64_t n = std::min<int64_t>(16, H - col), k = (col - units.col0) / 16;
        uint16_t *dp = d_px + row * 3 * H + col, *dq = d_hh + row * 3 * H + col;
        uint16_t* op = g + b * rows.Kp + col;
        if (!steps.runs(t, b)) {
          for (int q = 0; q < 3; ++q) {
            bf16::store_bf16(dp + q * H, zero16(), n);
            bf16::put_gradient(zero16(), n, dq + q * H, op + q * H, sum_q[k][q]);
          }
          continue;
        }
        const uint16_t* a = acts + row * 4 * H + col;
        v16 reset = bf16::load_bf16(a, n), update = bf16::load_bf16(a + H, n),
            cand = bf16::load_bf16(a + 2 * H, n), hn = bf16::load_bf16(a + 3 * H, n);
        v16 dh = load_n(dhbuf + b * H + col, n) + load_n(dys + row * H + col, n);
        v16 dn = dh * (1.0f - update) * (1.0f - cand * cand);
        v16 dr = dn * hn * reset * (1.0f - reset);
        v16 h_prev = load_n(carried_into(s, steps, ys, h0, t, b, h_restart) + col, n);
        v16 dz = dh * (h_prev - cand) * update * (1.0f - update);
        const v16 px[3] = {dr, dz, dn};
        for (int q = 0; q < 3; ++q) {
          bf16::store_bf16(dp + q * H, px[q], n);
          sum_p[k][q] += px[q];
        }
        bf16::put_gradient(dr, n, dq, op, sum_q[k][0]);
        bf16::put_gradient(dz, n, dq + H, op + H, sum_q[k][1]);
        bf16::put_gradient(dn * reset, n, dq + 2 * H, op + 2 * H, sum_q[k][2]);
        store_n(dhbuf + b * H + col, dh * update, n);
      }
    }
    for (int64_t col = units.col0; col < units.col1; col += 16) {
      const int64_t n = std::min<int64_t>(16, H - col), k = (col - units.col0) / 16;
      for (int q = 0; q < 3; ++q) {
        bf16::add_to(db_ih + q * H + col, sum_p[k][q], n);
        bf16::add_to(db_hh + q * H + col, sum_q[k][q], n);
      }
    }
  }

  static constexpr int kGroup = 2;
  int64_t num_steps() const { return s.T + 1; }
  void begin() const {
    copy_n(dh_final, s.B * s.H, dhbuf);
    zero_n(db_ih, 3 * s.H);
    zero_n(db_hh, 3 * s.H);
    if (steps.restarts) zero_n(dh_restart, s.B * s.H);
  }
  void end() const { copy_n(dhbuf, s.B * s.H, dh0); }

  void step(int64_t i, const Units& units) const {  // dh * z + dG_hh W_hh^T
    bf16::TileScope scope(amx);
    if (i > 0) {
      const int64_t t = steps.nth(i - 1, s.T, /*backward=*/true);
      bf16::hidden_gradient<true>(amx, s, steps, units, t, rows.tiles(i - 1), Bp,
                                  rows.Kp / 32, wt, dhbuf);
      if (steps.restarts) restart_gradient(s, steps, units, t, dhbuf, dh_restart);
    }
    if (i < s.T) gates(steps.nth(i, s.T, /*backward=*/true), units, rows.half(i));
  }
};

ffi::Error gru_bf16_forward(BF16 xs, BF16 w, F32 bias, F32 h0, F32 h_restart, S32 lengths,
                            S32 start, Flags flags, bool reverse, bool has_lengths,
                            bool batch_major, bool keep, bool amx, Out ys,
                            ffi::Result<BF16> acts, Out h_final, ffi::ThreadPool pool) {
  auto d = xs.dimensions(), dh = h0.dimensions();
  if (d.size() != 3 || dh.size() != 2)
    return ffi::Error::InvalidArgument("gru_bf16_forward: xs must be (T, B, D), h0 (B, H)");
  const Shapes s = shapes_of(d, dh[1], batch_major);
  const int64_t D = d[2], Dp = round_up(D, 32), Kp = Dp + round_up(s.H, 32),
                Bp = round_up(s.B, 16);
  SEQJAX_TRY(bf16::check(static_cast<int64_t>(w.element_count()) == s.U * 4 * Kp * 16,
                         "gru_bf16_forward: w must be packed (U, 4, (Dp + Hp) / 2, 16, 2)"));
  const bool restarting = flags.element_count() > 0;
  if (restarting) SEQJAX_TRY(restart_shapes("gru_bf16_forward", s, flags, {&h_restart}));
  SEQJAX_TRY(bf16::check(bf16::support() & (amx ? bf16::kAmx : bf16::kAvx512Bf16),
                         "gru_bf16_forward: this CPU cannot run the requested path"));
  prefer_huge_pages(ys);
  prefer_huge_pages(acts);
  bf16::Scratch scratch(2 * s.B * s.H, 2 * Bp * Kp);
  Forward k{s, steps_of(lengths, start, reverse, has_lengths,
                        restarting ? flags.typed_data() : nullptr),
            keep, amx, D, Dp, Bp, xs.typed_data(), w.typed_data(), bias.typed_data(),
            h0.typed_data(), ys->typed_data(), acts->typed_data(), h_final->typed_data(),
            scratch.f32.data(), bf16::StepRows{scratch.bf16.data(), Bp, Kp}};
  if (restarting) k.h_restart = h_restart.typed_data();
  return launch(pool, s, 6 * s.B * s.H * (s.H + D), k);
}

ffi::Error gru_bf16_backward(BF16 wt, F32 dys, F32 ys, BF16 acts, F32 h0, F32 dh_final,
                             F32 h_restart, S32 lengths, S32 start, Flags flags, bool reverse,
                             bool has_lengths, bool batch_major, bool amx,
                             ffi::Result<BF16> d_px, ffi::Result<BF16> d_hh, Out db_ih,
                             Out db_hh, Out dh0, Out dh_restart, ffi::ThreadPool pool) {
  auto d = dys.dimensions();
  if (d.size() != 3)
    return ffi::Error::InvalidArgument("gru_bf16_backward: dys must be (T, B, H)");
  const Shapes s = shapes_of(d, d[2], batch_major);
  const int64_t Kp = round_up(3 * s.H, 32), Bp = round_up(s.B, 16);
  SEQJAX_TRY(bf16::check(static_cast<int64_t>(wt.element_count()) == s.U * Kp * 16,
                         "gru_bf16_backward: wt must be packed (U, 1, K3 / 2, 16, 2)"));
  const bool restarting = flags.element_count() > 0;
  if (restarting) SEQJAX_TRY(restart_shapes("gru_bf16_backward", s, flags, {&h_restart}));
  SEQJAX_TRY(bf16::check(bf16::support() & (amx ? bf16::kAmx : bf16::kAvx512Bf16),
                         "gru_bf16_backward: this CPU cannot run the requested path"));
  prefer_huge_pages(d_px);
  prefer_huge_pages(d_hh);
  bf16::Scratch scratch(s.B * s.H, 2 * Bp * Kp);
  Backward k{s, steps_of(lengths, start, reverse, has_lengths,
                         restarting ? flags.typed_data() : nullptr),
             amx, Bp, wt.typed_data(), dys.typed_data(), ys.typed_data(), acts.typed_data(),
             h0.typed_data(), dh_final.typed_data(), d_px->typed_data(), d_hh->typed_data(),
             db_ih->typed_data(), db_hh->typed_data(), dh0->typed_data(), scratch.f32.data(),
             bf16::StepRows{scratch.bf16.data(), Bp, Kp}};
  if (restarting) {
    k.h_restart = h_restart.typed_data();
    k.dh_restart = dh_restart->typed_data();
  }
  return launch(pool, s, 6 * s.B * s.H * s.H, k);
}

}  // namespace
}  // namespace seqjax

XLA_FFI_DEFINE_HANDLER_SYMBOL(SeqjaxGruBf16Forward, seqjax::gru_bf16_forward,
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
                                  .Attr<bool>("keep")
                                  .Attr<bool>("amx")
                                  .Ret<seqjax::F32>()  // ys
                                  .Ret<ffi::Buffer<ffi::BF16>>()  // acts
                                  .Ret<seqjax::F32>()  // h_final
                                  .Ctx<ffi::ThreadPool>());
XLA_FFI_DEFINE_HANDLER_SYMBOL(SeqjaxGruBf16Backward, seqjax::gru_bf16_backward,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::Buffer<ffi::BF16>>()  // wt
                                  .Arg<seqjax::F32>()             // dys
                                  .Arg<seqjax::F32>()             // ys
                                  .Arg<ffi::Buffer<ffi::BF16>>()  // acts
                                  .Arg<seqjax::F32>()             // h0
                                  .Arg<seqjax::F32>()             // dh_final
                                  .Arg<seqjax::F32>()             // h_restart
                                  .Arg<seqjax::S32>()             // lengths
                                  .Arg<seqjax::S32>()             // start
                                  .Arg<seqjax::Flags>()           // flags
                                  .Attr<bool>("reverse")
                                  .Attr<bool>("has_lengths")
                                  .Attr<bool>("batch_major")
                                  .Attr<bool>("amx")
                                  .Ret<ffi::Buffer<ffi::BF16>>()  // d_px
                                  .Ret<ffi::Buffer<ffi::BF16>>()  // d_hh
                                  .Ret<seqjax::F32>()             // db_ih
                                  .Ret<seqjax::F32>()             // db_hh
                                  .Ret<seqjax::F32>()             // dh0
                                  .Ret<seqjax::F32>()             // dh_restart
                                  .Ctx<ffi::ThreadPool>());
