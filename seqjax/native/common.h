// What the native recurrent kernels share: 16-float vectors (GCC/Clang vector extensions, which
// compile to AVX-512, AVX2 or NEON as the machine has), exp/sigmoid/tanh on them, register-tiled
// matmuls, and run_steps, which splits each step's hidden units over threads.
#pragma once

#include <algorithm>
#include <chrono>
#include <memory>
#include <string>
#include <atomic>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <initializer_list>
#include <thread>
#include <tuple>
#include <type_traits>
#include <utility>
#include <vector>

#if defined(__linux__)
#include <linux/futex.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <unistd.h>
#endif

#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace seqjax {

typedef float v16 __attribute__((vector_size(64)));
typedef int32_t v16i __attribute__((vector_size(64)));

inline v16 zero16() { return v16{}; }
inline v16 broadcast16(float x) { return v16{x, x, x, x, x, x, x, x, x, x, x, x, x, x, x, x}; }
inline v16 load16(const float* p) {
  v16 v;
  std::memcpy(&v, p, sizeof v);
  return v;
}
inline void store16(float* p, v16 v) { std::memcpy(p, &v, sizeof v); }
// The first n (1..16) lanes from or to memory; the others read as zero.
inline v16 load_n(const float* p, int64_t n) {
  if (n == 16) return load16(p);
  v16 v{};
  std::memcpy(&v, p, n * sizeof(float));
  return v;
}
inline void store_n(float* p, v16 v, int64_t n) {
  if (n == 16) return store16(p, v);
  std::memcpy(p, &v, n * sizeof(float));
}
inline void copy_n(const float* from, int64_t n, float* to) {
  if (n > 0) std::memcpy(to, from, n * sizeof(float));
}
inline void zero_n(float* p, int64_t n) {
  if (n > 0) std::memset(p, 0, n * sizeof(float));
}

inline v16i bits(v16 x) {
  v16i i;
  std::memcpy(&i, &x, sizeof i);
  return i;
}
inline v16 from_bits(v16i i) {
  v16 x;
  std::memcpy(&x, &i, sizeof x);
  return x;
}

// exp(x) to ~2 ulp (Cody-Waite reduction by ln 2, degree-6 polynomial, Cephes' coefficients);
// inputs are clamped to [-87, 88], where the result stays a normal float.
inline v16 exp16(v16 x) {
  x = x < -87.0f ? broadcast16(-87.0f) : x;
  x = x > 88.0f ? broadcast16(88.0f) : x;
  const float shifter = 12582912.0f;  // 1.5 * 2^23: adding it rounds to an integer
  v16 shifted = x * 1.44269504088896341f + shifter;
  v16 n = shifted - shifter;
  v16 r = x - n * 0.693359375f - n * -2.12194440e-4f;
  v16 p = 1.9875691500e-4f * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * (r * r) + r + 1.0f;
  v16i exponent = (bits(shifted) - bits(broadcast16(shifter))) << 23;
  return from_bits(bits(p) + exponent);
}

inline v16 sigmoid16(v16 x) { return 1.0f / (1.0f + exp16(-x)); }

// tanh(x): an odd polynomial below |x| = 0.625 (Cephes' tanhf), 1 - 2 / (exp(2|x|) + 1) above.
inline v16 tanh16(v16 x) {
  const v16i sign = bits(x) & static_cast<int32_t>(0x80000000u);
  v16 a = from_bits(bits(x) & 0x7fffffff);
  v16 z = x * x;
  v16 p = -5.70498872745e-3f * z + 2.06390887954e-2f;
  p = p * z - 5.37397155531e-2f;
  p = p * z + 1.33314422036e-1f;
  p = p * z - 3.33332819422e-1f;
  v16 small = p * z * x + x;
  a = a > 9.0f ? broadcast16(9.0f) : a;
  v16 large = from_bits(bits(1.0f - 2.0f / (exp16(a + a) + 1.0f)) | sign);
  return (a < 0.625f) ? small : large;
}

// acc[r][j] = sum_k a[r * lda + k] * w[j * w_panel + k * w_k + 0..15]: NR rows of `a` times
// NU 16-column panels of a packed weight matrix, the accumulators kept in registers. With
// kAdd, the products are added to what acc holds.
template <int NR, int NU, bool kAdd = false>
inline void matmul_tile(const float* a, int64_t lda, int64_t K, const float* w, int64_t w_panel,
                        int64_t w_k, v16 (&acc)[NR][NU]) {
  if (!kAdd)
    for (int r = 0; r < NR; ++r)
      for (int j = 0; j < NU; ++j) acc[r][j] = zero16();
  for (int64_t k = 0; k < K; ++k) {
    v16 wk[NU];
    for (int j = 0; j < NU; ++j) wk[j] = load16(w + j * w_panel + k * w_k);
    for (int r = 0; r < NR; ++r) {
      const v16 x = broadcast16(a[r * lda + k]);
      for (int j = 0; j < NU; ++j) acc[r][j] += x * wk[j];
    }
  }
}

// Where threads wait for each other: spinning for up to kSpinMicros (a step is microseconds),
// then asleep on a futex until notify(). Sleeping frees the core: on 2 cores a waiter that spun
// on kept a descheduled partner off it for the rest of a time slice.
class Waiting {
 public:
  template <typename Ready>
  void until(Ready&& ready) {
    const auto start = std::chrono::steady_clock::now();
    for (int spins = 1; !ready(); ++spins) {
      if (spins % 64 != 0 ||
          std::chrono::steady_clock::now() - start < std::chrono::microseconds(kSpinMicros)) {
#if defined(__x86_64__)
        __builtin_ia32_pause();
#endif
        continue;
      }
      sleepers_.fetch_add(1, std::memory_order_seq_cst);
      std::atomic_thread_fence(std::memory_order_seq_cst);
      const uint32_t seen = word_.load(std::memory_order_seq_cst);
      if (!ready()) sleep_while(seen);
      sleepers_.fetch_sub(1, std::memory_order_relaxed);
    }
  }
  // Call after a change that may make a waiter's `ready` true.
  void notify() {
    std::atomic_thread_fence(std::memory_order_seq_cst);
    if (sleepers_.load(std::memory_order_seq_cst) == 0) return;
    word_.fetch_add(1, std::memory_order_seq_cst);
#if defined(__linux__)
    syscall(SYS_futex, reinterpret_cast<uint32_t*>(&word_), FUTEX_WAKE_PRIVATE, INT32_MAX,
            nullptr, nullptr, 0);
#endif
  }

 private:
  static constexpr int kSpinMicros = 50;

  // Until word_ moves on from `seen` (or a spurious wake-up: the caller rechecks).
  void sleep_while(uint32_t seen) {
#if defined(__linux__)
    static_assert(sizeof(word_) == sizeof(uint32_t), "futex word");
    syscall(SYS_futex, reinterpret_cast<uint32_t*>(&word_), FUTEX_WAIT_PRIVATE, seen, nullptr,
            nullptr, 0);
#else
    (void)seen;
    std::this_thread::yield();
#endif
  }

  std::atomic<uint32_t> word_{0};
  std::atomic<int> sleepers_{0};
};

// SEQJAX_NATIVE_THREADS when set, else 0.
inline int requested_threads() {
  const char* env = std::getenv("SEQJAX_NATIVE_THREADS");
  return env ? std::max(0, std::atoi(env)) : 0;
}

// How many threads to plan for, to split `units` unit blocks: SEQJAX_NATIVE_THREADS when set;
// else at most one per pool thread, and at least 500k flops of a step's work (`step_flops`)
// each (on 2 cores, two threads gave the LSTM's, GRU's and Elman RNN's steps at B=16, H=128,
// 0.5-4 MFLOP, lower medians than one). Never more than one per unit block.
inline int workers_for(int64_t pool_threads, int64_t units, int64_t step_flops) {
  const int64_t by_work = std::max<int64_t>(1, step_flops / 500000);
  const int64_t threads = requested_threads() ? requested_threads()
                                              : std::min<int64_t>(pool_threads, by_work);
  return static_cast<int>(std::max<int64_t>(1, std::min<int64_t>(threads, units)));
}

// Worker `i` of `n`'s share [begin, end) of `count` items.
inline std::pair<int64_t, int64_t> share(int64_t count, int i, int n) {
  const int64_t base = count / n, extra = count % n;
  const int64_t begin = i * base + std::min<int64_t>(i, extra);
  return {begin, begin + base + (i < extra ? 1 : 0)};
}

// The sizes of one call: T steps, B batch rows, H hidden units in U blocks of 16; and where
// the per-step arrays (inputs, outputs, residuals, gradients) keep row b of step t: time-major,
// (T, B, .), or batch-major, (B, T, .), the caller's own layout, which spares XLA a transpose
// (and a fresh buffer) on the way in and out.
struct Shapes {
  int64_t T, B, H, U;
  bool batch_major;

  int64_t row(int64_t t, int64_t b) const { return batch_major ? b * T + t : t * B + b; }
  // How many rows apart rows b and b + 1 of one step are.
  int64_t row_step() const { return batch_major ? T : 1; }
};
// From the dimensions of a per-step array: (T, B, .) or, batch-major, (B, T, .).
inline Shapes shapes_of(ffi::Span<const int64_t> d, int64_t H, bool batch_major) {
  const int64_t T = batch_major ? d[1] : d[0], B = batch_major ? d[0] : d[1];
  return {T, B, H, (H + 15) / 16, batch_major};
}

// Which steps a row runs: all, or those with start + t < lengths[b] (the step's index in the
// whole sequence below the row's length); the order the recurrence visits them in; and where a
// row starts again (resets): before a flagged step its carry is the restart carry, not the one
// the step before left.
struct Steps {
  const int32_t* lengths;  // null: every step runs
  int64_t start;
  bool reverse;
  const bool* restarts = nullptr;  // per step and row, laid out as Shapes::row; null: none

  bool runs(int64_t t, int64_t b) const { return !lengths || start + t < lengths[b]; }
  // The i-th step the recurrence (or, with `backward`, its gradient) visits, of T.
  int64_t nth(int64_t i, int64_t T, bool backward = false) const {
    return reverse != backward ? T - 1 - i : i;
  }
  bool restarts_at(const Shapes& s, int64_t t, int64_t b) const {
    return restarts && restarts[s.row(t, b)];
  }
  // Whether row b restarts at the step the recurrence visits after t (whose carry t writes).
  bool restarts_after(const Shapes& s, int64_t t, int64_t b) const {
    const int64_t next = reverse ? t - 1 : t + 1;
    return restarts && next >= 0 && next < s.T && restarts[s.row(next, b)];
  }
};
inline Steps steps_of(ffi::Buffer<ffi::S32>& lengths, ffi::Buffer<ffi::S32>& start, bool reverse,
                      bool has_lengths, const bool* restarts = nullptr) {
  return {has_lengths ? lengths.typed_data() : nullptr, start.typed_data()[0], reverse, restarts};
}

// The carry (a (B, H) array's row b) that entered step t: `restart` where the row restarted
// there; else the previous step's in the forward loop's order, kept per step in `per_step`, or
// `initial` where that step did not run (a row past its length keeps its carry) or there is none.
inline const float* carried_into(const Shapes& s, const Steps& steps, const float* per_step,
                                 const float* initial, int64_t t, int64_t b,
                                 const float* restart = nullptr) {
  if (steps.restarts_at(s, t, b)) return restart + b * s.H;
  const int64_t prev = steps.reverse ? t + 1 : t - 1;
  if (prev < 0 || prev >= s.T || !steps.runs(prev, b)) return initial + b * s.H;
  return per_step + s.row(prev, b) * s.H;
}

// The carry the forward loop's first step reads, into `to` (B, H): `initial`, but the restart
// carry for the rows that restart at that step.
inline void first_carry(const Shapes& s, const Steps& steps, const float* initial,
                        const float* restart, float* to) {
  copy_n(initial, s.B * s.H, to);
  const int64_t t = steps.nth(0, s.T);
  for (int64_t b = 0; b < s.B && s.T > 0; ++b)
    if (steps.restarts_at(s, t, b)) copy_n(restart + b * s.H, s.H, to + b * s.H);
}

// Stores n units (from column col) of the carry row b leaves step t with, at `to`: `v`, or the
// restart carry where the next step restarts. Written here, by the task that owns these units,
// so every task of the next step reads the restarted carry (its matmul reads all of a row).
inline void store_carry(const Shapes& s, const Steps& steps, int64_t t, int64_t b, int64_t col,
                        int64_t n, v16 v, const float* restart, float* to) {
  if (steps.restarts_after(s, t, b))
    copy_n(restart + b * s.H + col, n, to);
  else
    store_n(to, v, n);
}


// A task's share of the hidden units: unit blocks [u_begin, u_end), columns [col0, col1).
struct Units {
  int64_t u_begin, u_end, col0, col1;

  Units(const Shapes& s, int64_t begin, int64_t end)
      : u_begin(begin), u_end(end), col0(begin * 16), col1(std::min(end * 16, s.H)) {}
};

// f(r0, rows) for the one tile of exactly `left` (< N + 1) rows at r0, if any.
template <int N, typename F>
void remainder_tile(int64_t left, int64_t r0, F& f) {
  if constexpr (N >= 1) {
    if (left == N) return f(r0, std::integral_constant<int, N>());
    remainder_tile<N - 1>(left, r0, f);
  }
}

// Calls f(r0, rows) over the batch rows in tiles of kMax rows, then one tile of the rows left
// (`rows` is a std::integral_constant). More rows per tile reuse each loaded weight vector more
// often: on an AVX-512 core, 8 rows x 3 panels ran at ~100 GFLOP/s against ~60 for 4 x 4. The
// rows left go in one tile, not in tiles of 1: a tile's time is set by its weight loads, so at
// B = 32 the LSTM's 6-row tiles left 2 rows that took as long as 12 in two 1-row tiles (one
// 2-row tile ran at 71 GFLOP/s against 40 for a 1-row one).
template <int kMax, typename F>
void row_tiles(int64_t B, F&& f) {
  int64_t r0 = 0;
  for (; r0 + kMax <= B; r0 += kMax) f(r0, std::integral_constant<int, kMax>());
  remainder_tile<kMax - 1>(B - r0, r0, f);
}

// Calls tile(r0, u0, rows, units) over the batch rows and these unit blocks, in register tiles
// of up to 8 rows x 3 unit blocks (`rows` and `units` are std::integral_constant sizes).
template <typename Tile>
void tiles(int64_t B, const Units& units, Tile&& tile) {
  row_tiles<8>(B, [&](int64_t r0, auto rows) {
    int64_t u = units.u_begin;
    for (; u + 3 <= units.u_end; u += 3) tile(r0, u, rows, std::integral_constant<int, 3>());
    if (u + 2 <= units.u_end) {
      tile(r0, u, rows, std::integral_constant<int, 2>());
      u += 2;
    }
    for (; u < units.u_end; ++u) tile(r0, u, rows, std::integral_constant<int, 1>());
  });
}

// The half of a forward loop's double-buffered carry hbuf (2, B, H) that the i-th step visited
// reads (the (i-1)-th wrote it); after the last step, carry_half(s, hbuf, T) holds the final carry.
inline float* carry_half(const Shapes& s, float* hbuf, int64_t i) {
  return hbuf + (i % 2) * s.B * s.H;
}

// Step t of a gated cell's forward loop, whose tile holds all its gates for one unit block:
// calls tile(t, r0, u, rows, h_prev, h_next) for these unit blocks and the rows in tiles of
// kRows (rows: a std::integral_constant). h is double-buffered in hbuf (2, B, H): the i-th step
// visited reads half i % 2 and writes the other; run_steps starts no task of step i + 1 before
// every task of step i has finished reading.
template <int kRows, typename Tile>
void gated_forward_step(const Shapes& s, const Steps& steps, const Units& units, int64_t i,
                        float* hbuf, Tile&& tile) {
  const int64_t t = steps.nth(i, s.T);
  const float* h_prev = carry_half(s, hbuf, i);
  float* h_next = carry_half(s, hbuf, i + 1);
  for (int64_t u = units.u_begin; u < units.u_end; ++u)
    row_tiles<kRows>(s.B, [&](int64_t r0, auto rows) { tile(t, r0, u, rows, h_prev, h_next); });
}

// The reverse loop's matmul for step t: these units of dh = dG W_hh^T, from the gate gradients
// dgates (rows of width K = gates x H) and wt, W_hh^T packed (U, K, 16); with kAdd, added to
// what dh holds. A row whose step did not run passed its carry through: its dh stays. It reads
// every unit's gate gradients of step t, and the next gate gradients read only these units of
// dh: so one run_steps step can be this for one step and the gate gradients of the next, for the
// same units (reverse_step).
template <bool kAdd>
void hidden_gradient(const Shapes& s, const Steps& steps, const Units& units, int64_t t,
                     const float* dgates, int64_t K, const float* wt, float* dh) {
  tiles(s.B, units, [&](int64_t r0, int64_t u0, auto rows, auto blocks) {
    constexpr int NR = decltype(rows)::value, NU = decltype(blocks)::value;
    v16 acc[NR][NU];
    matmul_tile<NR, NU>(dgates + s.row(t, r0) * K, s.row_step() * K, K, wt + u0 * K * 16,
                        K * 16, 16, acc);
    for (int r = 0; r < NR; ++r) {
      if (!steps.runs(t, r0 + r)) continue;
      for (int j = 0; j < NU; ++j) {
        const int64_t col = (u0 + j) * 16, n = std::min<int64_t>(16, s.H - col);
        float* out = dh + (r0 + r) * s.H + col;
        store_n(out, kAdd ? load_n(out, n) + acc[r][j] : acc[r][j], n);
      }
    }
  });
}

// A row that restarted at step t read the restart carry, not the carry the step before left: so
// these units of the gradient of its input carry, d (B, H), go to d_restart, and none goes on.
inline void restart_gradient(const Shapes& s, const Steps& steps, const Units& units, int64_t t,
                             float* d, float* d_restart) {
  for (int64_t b = 0; b < s.B; ++b) {
    if (!steps.restarts_at(s, t, b)) continue;
    for (int64_t col = units.col0; col < units.col1; col += 16) {
      const int64_t n = std::min<int64_t>(16, s.H - col), at = b * s.H + col;
      store_n(d_restart + at, load_n(d_restart + at, n) + load_n(d + at, n), n);
      zero_n(d + at, n);
    }
  }
}

// Step i of a reverse loop as run_steps runs it, T + 1 steps in all (see hidden_gradient):
// these units of dh from the gate gradients of the (i-1)-th step visited, t' (dh = dG W_hh^T, or
// with kAdd dh += dG W_hh^T); with resets, restarted(t'), which hands the rows that restarted at
// t' their carry's gradient for these units to the restart carry (restart_gradient); then
// gates(t), the gate gradients of the i-th, t, for the same units.
template <bool kAdd, typename Gates, typename Restarted>
void reverse_step(const Shapes& s, const Steps& steps, const Units& units, int64_t i,
                  const float* dgates, int64_t K, const float* wt, float* dh, Gates&& gates,
                  Restarted&& restarted) {
  if (i > 0) {
    const int64_t t = steps.nth(i - 1, s.T, /*backward=*/true);
    hidden_gradient<kAdd>(s, steps, units, t, dgates, K, wt, dh);
    if (steps.restarts) restarted(t);
  }
  if (i < s.T) gates(steps.nth(i, s.T, /*backward=*/true));
}

// Runs a kernel's steps, kernel.step(i, units) for i < kernel.num_steps(), on this thread and
// up to workers_for(...) - 1 tasks of XLA's intra-op thread pool (the threads XLA:CPU runs its own
// kernels on: threads of our own would compete with them for the cores), between
// kernel.begin() and kernel.end() on this thread. Every task of step i finishes before any of
// step i + 1 starts, since a step reads the whole carry the step before wrote.
//
// The hidden units are split into one range per planned thread, and each range into tasks of
// Kernel::kGroup unit blocks. Smaller tasks balance better and leave less for one thread to
// wait on; larger ones fill wider register tiles. The reverse loops take 2 blocks a task (at
// B=16, H=128, where a range is 4 blocks, the gradients' medians were 5-20% lower than with 3,
// split 3 + 1, and no worse at the larger configs). A thread takes the tasks of its own range
// first (its weights stay in its cache, step after step), then those left in the others'. So no
// thread waits for one that has not started: a pool thread that comes late (busy with another
// XLA operation, asleep after an idle spell, or descheduled) joins at the step the others have
// reached, or never, and the call runs at one thread's speed at worst. (With a fixed split and
// a barrier, calls after 20 ms idle took 5-10x their median on this project's 2-core VM.)
template <typename Kernel>
void run_steps(ffi::ThreadPool& pool, const Shapes& s, int64_t step_flops, const Kernel& kernel) {
  struct alignas(64) Range {
    std::atomic<int64_t> claimed{0}, finished{0};  // tasks, counted over all steps
    int64_t u_begin = 0, u_end = 0, tasks = 0;      // unit blocks; tasks per step
  };
  struct Queue {
    const Kernel* kernel;
    Shapes s;
    int64_t steps;
    int ranges;
    std::unique_ptr<Range[]> range;
    Waiting waiting;

    // How many steps have finished: all their tasks, in every range.
    int64_t finished_steps() const {
      int64_t n = steps;
      for (int r = 0; r < ranges; ++r)
        n = std::min(n, range[r].finished.load(std::memory_order_acquire) / range[r].tasks);
      return n;
    }
    // Runs one task of step i not yet taken, from range `home` first; false if none is left.
    bool run_one(int home, int64_t i) {
      for (int k = 0; k < ranges; ++k) {
        Range& r = range[(home + k) % ranges];
        const int64_t end = (i + 1) * r.tasks;
        for (int64_t c = r.claimed.load(std::memory_order_relaxed); c < end;) {
          if (!r.claimed.compare_exchange_weak(c, c + 1, std::memory_order_acq_rel,
                                               std::memory_order_relaxed))
            continue;
          const int64_t u = r.u_begin + (c - i * r.tasks) * Kernel::kGroup;
          kernel->step(i, Units(s, u, std::min(u + Kernel::kGroup, r.u_end)));
          r.finished.fetch_add(1, std::memory_order_release);
          waiting.notify();
          return true;
        }
      }
      return false;
    }
    void work(int home) {
      for (int64_t i = finished_steps(); i < steps;) {
        if (run_one(home, i)) continue;
        if (i + 1 == steps) return;  // the last step's tasks are all taken
        waiting.until([&] { return finished_steps() > i; });
        i = finished_steps();
      }
    }
  };

  if (s.U == 0) {  // no hidden units (H = 0): no tasks, only the carries' copies
    kernel.begin();
    kernel.end();
    return;
  }
  const int workers = workers_for(pool.num_threads(), s.U, step_flops);
  auto queue = std::make_shared<Queue>();
  queue->kernel = &kernel;
  queue->s = s;
  queue->steps = kernel.num_steps();
  queue->ranges = workers;
  queue->range.reset(new Range[workers]);
  for (int w = 0; w < workers; ++w) {
    Range& r = queue->range[w];
    std::tie(r.u_begin, r.u_end) = share(s.U, w, workers);
    r.tasks = (r.u_end - r.u_begin + Kernel::kGroup - 1) / Kernel::kGroup;
  }
  kernel.begin();
  // A helper calls kernel.step only for a task it took, and this thread returns only once every
  // task has finished; a helper that starts later finds none and leaves.
  for (int w = 1; w < workers; ++w) pool.Schedule([queue, w] { queue->work(w); });
  queue->work(0);
  queue->waiting.until([&] { return queue->finished_steps() == queue->steps; });
  kernel.end();
}

// The FFI signature every kernel entry has: kIn float32 buffers, then lengths and start, the
// attributes reverse, has_lengths and batch_major, and any the caller appends; finished by
// with_results, which adds kOut float32 results and XLA's thread pool.
// (Each step returns the builder's new value: its copy and move constructors are private.)
template <int kIn, typename Binding>
auto f32_args(Binding&& b) {
  static_assert(kIn >= 1, "every kernel takes float32 buffers");
  if constexpr (kIn == 1) {
    return std::move(b).template Arg<ffi::Buffer<ffi::F32>>();
  } else {
    return f32_args<kIn - 1>(std::move(b).template Arg<ffi::Buffer<ffi::F32>>());
  }
}
// With kRestarts (an entry of a call with resets), the flags of the steps where the carry
// restarts, a bool buffer laid out as the per-step arrays, come after start.
template <typename Binding>
auto common_attrs(Binding&& b) {
  return std::move(b)
      .template Attr<bool>("reverse")
      .template Attr<bool>("has_lengths")
      .template Attr<bool>("batch_major");
}
template <int kIn, bool kRestarts = false>
auto recurrence_binding() {
  auto b = f32_args<kIn>(ffi::Ffi::Bind())
               .template Arg<ffi::Buffer<ffi::S32>>()
               .template Arg<ffi::Buffer<ffi::S32>>();
  if constexpr (kRestarts) {
    return common_attrs(std::move(b).template Arg<ffi::Buffer<ffi::PRED>>());
  } else {
    return common_attrs(std::move(b));
  }
}
template <int kOut, typename Binding>
auto with_results(Binding&& b) {
  if constexpr (kOut == 0) {
    return std::move(b).template Ctx<ffi::ThreadPool>();
  } else {
    return with_results<kOut - 1>(std::move(b).template Ret<ffi::Buffer<ffi::F32>>());
  }
}

inline ffi::Error invalid_unless(bool ok, const char* what) {
  return ok ? ffi::Error::Success() : ffi::Error::InvalidArgument(what);
}

using F32 = ffi::Buffer<ffi::F32>;
using S32 = ffi::Buffer<ffi::S32>;
using Flags = ffi::Buffer<ffi::PRED>;
using Out = ffi::ResultBuffer<ffi::F32>;

// Asks the OS to back the 2 MiB-aligned part of each of these results with huge pages, where
// it allows that on request (Linux's transparent huge pages in "madvise" mode, the default).
// XLA gives a custom call fresh result buffers on every call, and glibc maps large blocks
// afresh: writing a (T, B, 4H) residual then faulted in one 4 KiB page at a time (for the LSTM
// at B=32, T=128, H=256 ~15k faults a fwd+bwd call, ~60 MiB). With huge pages one fault maps
// 2 MiB. Only a hint: the numbers do not depend on it.
inline void prefer_huge_pages(void* p, size_t bytes) {
#if defined(__linux__) && defined(MADV_HUGEPAGE)
  constexpr uintptr_t kHuge = uintptr_t{2} << 20;
  const uintptr_t begin = reinterpret_cast<uintptr_t>(p), end = begin + bytes;
  const uintptr_t first = (begin + kHuge - 1) & ~(kHuge - 1), last = end & ~(kHuge - 1);
  if (last > first) madvise(reinterpret_cast<void*>(first), last - first, MADV_HUGEPAGE);
#else
  (void)p, (void)bytes;
#endif
}
// The same for each of these results, of any dtype (float32 or the bf16 kernels' bfloat16).
template <typename... Results>
void prefer_huge_pages(Results&... results) {
  (prefer_huge_pages(results->untyped_data(), results->size_bytes()), ...);
}

// An entry's last line: the loop over the steps, then success (every check came before).
template <typename Kernel>
ffi::Error launch(ffi::ThreadPool& pool, const Shapes& s, int64_t step_flops, const Kernel& kernel) {
  run_steps(pool, s, step_flops, kernel);
  return ffi::Error::Success();
}

// The checks every forward entry makes: xs (T, B, D) (or (B, T, D) batch-major) and h0 (B, H),
// w and wi packed in 16-unit blocks of `gates` gates, (U, H, gates, 16) and (U, D, gates, 16).
// Fills the shapes and the input size D.
inline ffi::Error forward_shapes(const char* name, const F32& xs, const F32& h0, const F32& w,
                                 const F32& wi, int64_t gates, bool batch_major, Shapes& s,
                                 int64_t& D) {
  auto d = xs.dimensions(), dh = h0.dimensions();
  if (d.size() != 3 || dh.size() != 2)
    return ffi::Error::InvalidArgument(std::string(name) +
                                       ": xs must be (T, B, D) and h0 (B, H)");
  s = shapes_of(d, dh[1], batch_major);
  D = d[2];
  const int64_t block = 16 * gates;
  if (static_cast<int64_t>(w.element_count()) != s.U * s.H * block ||
      static_cast<int64_t>(wi.element_count()) != s.U * D * block)
    return ffi::Error::InvalidArgument(std::string(name) +
                                       ": w and wi must be packed (U, H, gates, 16), "
                                       "(U, D, gates, 16)");
  return ffi::Error::Success();
}

// The checks every backward entry makes: dys (T, B, H) (or batch-major) and wt packed as
// (U, gates * H, 16). Fills the shapes.
inline ffi::Error backward_shapes(const char* name, const F32& dys, const F32& wt,
                                  int64_t gates, bool batch_major, Shapes& s) {
  auto d = dys.dimensions();
  if (d.size() != 3)
    return ffi::Error::InvalidArgument(std::string(name) + ": dys must be (T, B, H)");
  s = shapes_of(d, d[2], batch_major);
  if (static_cast<int64_t>(wt.element_count()) != s.U * s.H * 16 * gates)
    return ffi::Error::InvalidArgument(std::string(name) + ": wt must be packed (U, gates*H, 16)");
  return ffi::Error::Success();
}

// What the entries of a call with resets add (all null without): the restart flags, the
// restart carry (h, and c for the LSTM, as far as the entry reads it) and, in a backward entry,
// the results that receive the gradient of that carry.
struct RestartArgs {
  const Flags* flags = nullptr;
  const F32 *h = nullptr, *c = nullptr;
  Out *dh = nullptr, *dc = nullptr;
};

// The checks an entry of a call with resets adds: one flag per step and row, and each restart
// carry (B, H).
inline ffi::Error restart_shapes(const char* name, const Shapes& s, const Flags& flags,
                                 std::initializer_list<const F32*> carries) {
  bool ok = static_cast<int64_t>(flags.element_count()) == s.T * s.B;
  for (const F32* c : carries) ok = ok && static_cast<int64_t>(c->element_count()) == s.B * s.H;
  if (ok) return ffi::Error::Success();
  return ffi::Error::InvalidArgument(std::string(name) +
                                     ": the restart flags must be (T, B) and the restart carry "
                                     "(B, H)");
}

}  // namespace seqjax

// Returns the error of a failed check from the entry that makes it.
#define SEQJAX_TRY(check) \
  if (auto e = (check); e.failure()) return e

// Registers entry `fn` as the FFI symbol seqjax.native loads: kIn float32 buffers and kOut
// results with the common arguments (recurrence_binding, with_results), and with
// SEQJAX_HANDLER_WITH one more bool attribute named `attr`.
#define SEQJAX_HANDLER(symbol, fn, kIn, kOut) \
  XLA_FFI_DEFINE_HANDLER_SYMBOL(symbol, fn,   \
                                seqjax::with_results<kOut>(seqjax::recurrence_binding<kIn>()))
#define SEQJAX_HANDLER_WITH(symbol, fn, kIn, kOut, attr) \
  XLA_FFI_DEFINE_HANDLER_SYMBOL(                         \
      symbol, fn, seqjax::with_results<kOut>(seqjax::recurrence_binding<kIn>().Attr<bool>(attr)))
// The entries of calls with resets: the same, with the restart flags after start (see
// recurrence_binding).
#define SEQJAX_RESTARTING_HANDLER(symbol, fn, kIn, kOut) \
  XLA_FFI_DEFINE_HANDLER_SYMBOL(                         \
      symbol, fn, seqjax::with_results<kOut>(seqjax::recurrence_binding<kIn, true>()))
#define SEQJAX_RESTARTING_HANDLER_WITH(symbol, fn, kIn, kOut, attr) \
  XLA_FFI_DEFINE_HANDLER_SYMBOL(                                    \
      symbol, fn,                                                   \
      seqjax::with_results<kOut>(seqjax::recurrence_binding<kIn, true>().Attr<bool>(attr)))
