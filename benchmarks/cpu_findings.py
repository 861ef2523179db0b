"""Two XLA:CPU measurements behind the shape of seqjax's backward pass, side by side in one run.

1. Residual layout. The LSTM backward step's elementwise arithmetic, in a reverse loop over
   T steps, reading its five per-step residuals (i, f, g, o, tanh c) either as one stacked
   ``(T, B, 5H)`` buffer whose gate columns each step slices out, or as five ``(T, B, H)``
   arrays. seqjax keeps them separate.
2. The reverse loop's ``dh = dG @ W_hh^T``: against ``W_hh (H, 4H)`` contracted on its last
   axis (what ``jax.vjp`` of ``h @ W_hh`` writes), or against a row-major copy of ``W_hh^T``
   made once before the loop. seqjax uses the copy.
3. Hoisting the input projection for a cell that uses it whole: the Elman RNN's gradient
   through ``seqjax.unroll`` with ``hoist_projection=True`` (one matmul over all steps before
   the scan, seqjax's CPU default for this cell) or ``False`` (a matmul inside every step).

    python -m benchmarks.cpu_findings            # small and medium configs
    python -m benchmarks.cpu_findings --rounds 41

Prints, per config, the median microseconds per step of each variant and their ratio.
"""

from __future__ import annotations

import argparse
import statistics
import time

import jax
import jax.numpy as jnp

import seqjax

CONFIGS = {"small": (16, 64, 128), "medium": (32, 128, 256)}


def _backward_arithmetic(d, i, f, g, o, tanh_c, c_prev):
    """The LSTM step derivative's elementwise part (as in seqjax.cells.lstm)."""
    dc = d + d * o * (1.0 - tanh_c * tanh_c)
    d_gates = jnp.concatenate(
        [dc * g * i * (1.0 - i), dc * c_prev * f * (1.0 - f), dc * i * (1.0 - g * g),
         d * tanh_c * o * (1.0 - o)], axis=-1,
    )  # fmt: skip
    return dc * f, d_gates


def stacked(residuals, c_prev):
    def body(d, inp):
        r, c = inp
        d, d_gates = _backward_arithmetic(d, *jnp.split(r, 5, axis=-1), c)
        return d, d_gates

    d0 = jnp.ones_like(c_prev[0])  # the final step's cotangent
    return jax.lax.scan(body, d0, (residuals, c_prev), reverse=True)


def separate(residuals, c_prev):
    def body(d, inp):
        r, c = inp
        d, d_gates = _backward_arithmetic(d, *r, c)
        return d, d_gates

    d0 = jnp.ones_like(c_prev[0])  # the final step's cotangent
    return jax.lax.scan(body, d0, (residuals, c_prev), reverse=True)


def contract_last_axis(w_hh, d_gates):
    def body(dh, dg):
        dh = jnp.tanh(
            jax.lax.dot_general(dg + jnp.tile(dh, (1, 4)), w_hh, (((1,), (1,)), ((), ())))
        )
        return dh, dh

    return jax.lax.scan(body, jnp.zeros(d_gates.shape[1:2] + w_hh.shape[:1]), d_gates)


def transposed_copy(w_hh, d_gates):
    w_t = w_hh.T  # made once; the loop's dot reads it row by row

    def body(dh, dg):
        dh = jnp.tanh((dg + jnp.tile(dh, (1, 4))) @ w_t)
        return dh, dh

    return jax.lax.scan(body, jnp.zeros(d_gates.shape[1:2] + w_hh.shape[:1]), d_gates)


def rnn_gradient(hidden_size: int, hoist: bool):
    """The Elman RNN's gradient w.r.t. params and inputs, projection hoisted or in the step."""
    cell = seqjax.simple_rnn(hidden_size)

    def loss(params, xs):
        return jnp.sum(seqjax.unroll(cell, params, xs, hoist_projection=hoist)[1] ** 2)

    return jax.jit(jax.grad(loss, argnums=(0, 1)))


def _time(pairs: dict, rounds: int) -> dict[str, float]:
    """Median seconds of each jitted ``(fn, args)``, rounds interleaved."""
    for fn, args in pairs.values():
        jax.block_until_ready(fn(*args))
    times = {name: [] for name in pairs}
    for _ in range(rounds):
        for name, (fn, args) in pairs.items():
            start = time.perf_counter()
            jax.block_until_ready(fn(*args))
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=31)
    args = parser.parse_args(argv)
    print(f"jax {jax.__version__} {jax.default_backend()}; medians of {args.rounds} rounds")
    for config, (B, T, H) in CONFIGS.items():
        keys = jax.random.split(jax.random.key(0), 4)
        residuals = jax.nn.sigmoid(jax.random.normal(keys[0], (T, B, 5 * H)))
        split = tuple(jnp.split(residuals, 5, axis=-1))
        c_prev = jax.random.normal(keys[1], (T, B, H))
        w_hh = jax.random.normal(keys[2], (H, 4 * H)) * H**-0.5
        d_gates = jax.random.normal(keys[3], (T, B, 4 * H))
        rnn_params = seqjax.simple_rnn(H).init(keys[0], H)
        xs = jax.random.normal(keys[1], (B, T, H))
        pairs = {
            "residuals stacked": (jax.jit(stacked), (residuals, c_prev)),
            "residuals separate": (jax.jit(separate), (split, c_prev)),
            "dG @ W_hh contracted last": (jax.jit(contract_last_axis), (w_hh, d_gates)),
            "dG @ copy of W_hh^T": (jax.jit(transposed_copy), (w_hh, d_gates)),
            "RNN grad, projection in step": (rnn_gradient(H, False), (rnn_params, xs)),
            "RNN grad, projection hoisted": (rnn_gradient(H, True), (rnn_params, xs)),
        }
        t = _time(pairs, args.rounds)
        us = {name: 1e6 * s / T for name, s in t.items()}
        print(f"{config} (B={B}, T={T}, H={H}), microseconds per step:")
        names = tuple(pairs)
        for first, second in zip(names[::2], names[1::2], strict=True):
            print(f"  {first:<28}{us[first]:8.2f}   {second:<28}{us[second]:8.2f}   "
                  f"ratio {us[first] / us[second]:.2f}")  # fmt: skip


if __name__ == "__main__":
    main()
