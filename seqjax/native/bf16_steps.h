// What the bfloat16 recurrences (lstm_bf16.cc, gru_bf16.cc, rnn_bf16.cc) share beside amx.h: the
// per-step bfloat16 operand buffers of their matmuls, the forward step's [x_t, h_(t-1)] rows and
// the reverse step's gate-gradient rows, and the reverse loop's dh = dG W_hh^T.
//
// The forward loop multiplies [x_t, h_(t-1)] (B, Dp + Hp) by [W_ih; W_hh] in one pass over k:
// x and h are each padded to whole k tiles of 32 and the rows to whole row tiles of 16, with
// zeros that stay zero. Two buffers alternate as hbuf does: the i-th step visited reads half
// i % 2 and writes the other half's h part (its units) and x part (its share of x's columns
// for the next step), which no task of step i reads.
#pragma once

#include "amx.h"

namespace seqjax {
namespace bf16 {

using BF16 = ffi::Buffer<ffi::BF16>;

// Where the rows of one step's bf16 matmul operand live: (2, Bp, Kp), alternating by step.
struct StepRows {
  uint16_t* p;
  int64_t Bp, Kp;

  uint16_t* half(int64_t i) const { return p + (i % 2) * Bp * Kp; }
  TilesA tiles(int64_t i) const { return TilesA{half(i), 16 * Kp, 32, Kp}; }
};

// Calls f(row tile, row tiles) over the padded rows in slabs of 2 row tiles (the last may be 1).
template <typename F>
void slabs(int64_t Bp, F&& f) {
  for (int64_t r0 = 0; r0 < Bp; r0 += 32) f(r0 / 16, std::min<int64_t>(2, (Bp - r0) / 16));
}

// The x part (columns [0, D)) of the forward operand's half for step t, for this task's share
// of x's columns (so the tasks of a step copy all of x_t between them).
inline void copy_inputs(const Shapes& s, const Units& units, const uint16_t* xs, int64_t D,
                        int64_t t, uint16_t* half, int64_t Kp) {
  const int64_t c0 = D * units.u_begin / s.U, c1 = D * units.u_end / s.U;
  if (c1 <= c0) return;
  for (int64_t b = 0; b < s.B; ++b)
    std::memcpy(half + b * Kp + c0, xs + s.row(t, b) * D + c0, (c1 - c0) * sizeof(uint16_t));
}

// The whole operand of the first step visited: x_t and h (the carry as first_carry left it).
inline void first_rows(const Shapes& s, const Steps& steps, const uint16_t* xs, int64_t D,
                       int64_t Dp, const float* h, const StepRows& rows) {
  if (s.T == 0) return;
  copy_inputs(s, Units(s, 0, s.U), xs, D, steps.nth(0, s.T), rows.half(0), rows.Kp);
  for (int64_t b = 0; b < s.B; ++b)
    for (int64_t col = 0; col < s.H; col += 16) {
      const int64_t n = std::min<int64_t>(16, s.H - col);
      store_bf16(rows.half(0) + b * rows.Kp + Dp + col, load_n(h + b * s.H + col, n), n);
    }
}

// The reverse loop's matmul for step t: these units of dh = dG W_hh^T, dG the bf16 rows of
// `grads` (width K = gates x H, padded) and wt W_hh^T packed in 16-unit panels; with kAdd,
// added to dh. A row whose step did not run passed its carry through: its dh stays.
template <bool kAdd>
void hidden_gradient(bool amx, const Shapes& s, const Steps& steps, const Units& units,
                     int64_t t, const TilesA& grads, int64_t Bp, int64_t k_tiles,
                     const uint16_t* wt, float* dh) {
  const TilesB w{wt, k_tiles * 512, 512};
  for (int64_t u = units.u_begin; u < units.u_end; u += 2) {
    const int64_t nc = std::min<int64_t>(2, units.u_end - u);
    slabs(Bp, [&](int64_t rt, int64_t nrt) {
      float acc[32 * 32];
      if (nc == 2)
        block<2>(amx, grads, rt, nrt, w, u, 0, k_tiles, acc, 32, false);
      else
        block<1>(amx, grads, rt, nrt, w, u, 0, k_tiles, acc, 32, false);
      for (int64_t r = 0; r < 16 * nrt && rt * 16 + r < s.B; ++r) {
        const int64_t b = rt * 16 + r;
        if (!steps.runs(t, b)) continue;
        for (int64_t j = 0; j < nc; ++j) {
          const int64_t col = (u + j) * 16, n = std::min<int64_t>(16, s.H - col);
          float* out = dh + b * s.H + col;
          const v16 v = load16(acc + r * 32 + j * 16);
          store_n(out, kAdd ? load_n(out, n) + v : v, n);
        }
      }
    });
  }
}

// A gate gradient's 16 (or n) units for row b: to the per-step output (T, B, .) in bf16, to the
// next reverse step's operand row in bf16, and into the bias gradient's running sum.
inline void put_gradient(v16 g, int64_t n, uint16_t* out, uint16_t* operand, v16& sum) {
  store_bf16(out, g, n);
  store_bf16(operand, g, n);
  sum += g;
}
inline void add_to(float* p, v16 v, int64_t n) { store_n(p, load_n(p, n) + v, n); }

// The buffers of an entry: 32 slack floats for any vector load past an end.
struct Scratch {
  std::vector<float> f32;
  std::vector<uint16_t> bf16;
  Scratch(int64_t floats, int64_t halves) : f32(floats + 32), bf16(halves + 64) {}
};

inline ffi::Error check(bool ok, const char* what) {
  return ok ? ffi::Error::Success() : ffi::Error::InvalidArgument(what);
}

}  // namespace bf16
}  // namespace seqjax
