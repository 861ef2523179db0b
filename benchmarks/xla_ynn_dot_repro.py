"""A miscompilation in XLA:CPU (jaxlib 0.10), reproduced without seqjax: the mLSTM's quadratic
form, with its start state a broadcast, gives different outputs from one compilation of the
same program to the next.

    python -m benchmarks.xla_ynn_dot_repro
    XLA_FLAGS=--xla_cpu_experimental_ynn_fusion_type=individual_dot \
        python -m benchmarks.xla_ynn_dot_repro

The optimised HLO, the buffer assignment and the LLVM IR are byte for byte the same in a good
and a bad compilation; the outputs of one executable are the same on every call.
The fault sits in the YNNPACK fusion that XLA builds around the dots (``__ynn_fusion``): it holds
``dot(q, broadcast(0))``, the read of the zero start state. With that state passed as an
argument (a full buffer) every compilation is right; with the same zeros made inside the jit,
or a broadcast of a value (``0 * q[..., :1, :1]``), about half are wrong (1e22, -inf), on an
AMD EPYC and on an Intel Xeon. ``--xla_cpu_experimental_ynn_fusion_type=individual_dot``
(dots alone, not fused with their neighbours), or an empty value (no YNNPACK fusion), makes
every one right.

seqjax avoids it in ``seqjax/cells/mlstm.py`` (``_read_state``: the state is read under a
``lax.cond`` that a zero state folds away); tests/test_mlstm.py checks several compilations.
"""

from __future__ import annotations

import argparse

import jax
import jax.numpy as jnp
import numpy as np


def quadratic_mlstm(w, b, x, c0, n0, m0, heads: int = 4):
    """The mLSTM's stabilised quadratic form over ``x (T, B, V)``, from the state ``c0 (B, NH,
    d, d)``, ``n0 (B, NH, d)``, ``m0 (B, NH)``; output gate included. Returns ``(T, B, H)``."""
    steps, batch = x.shape[:2]
    hidden = (w.shape[1] - 2 * heads) // 4
    d = hidden // heads
    px = x @ w + b
    per_head = lambda a: jnp.moveaxis(a.reshape(steps, batch, heads, d), 0, -2)  # noqa: E731
    q, k, v = (per_head(px[..., j * hidden : (j + 1) * hidden]) for j in range(3))
    k = k / np.sqrt(d)
    gates = jnp.moveaxis(px[..., 3 * hidden : 3 * hidden + 2 * heads], 0, -1)
    i, log_f = gates[..., :heads, :], jax.nn.log_sigmoid(gates[..., heads:, :])
    t = jnp.arange(steps)
    causal, after = t[:, None] >= t[None, :], t[:, None] > t[None, :]
    log_sum = jnp.cumsum(jnp.where(after, log_f[..., :, None], 0.0), axis=-2)
    log_d = jnp.where(causal, log_sum + i[..., None, :], -1e30)
    log_w0 = jnp.sum(jnp.where(causal, log_f[..., None, :], 0.0), axis=-1) + m0[..., None]
    m = jnp.maximum(log_w0, jnp.max(log_d, axis=-1))
    w0 = jnp.exp(log_w0 - m)
    scores = (q @ jnp.swapaxes(k, -1, -2)) * jnp.exp(log_d - m[..., None])
    num = w0[..., None] * (q @ c0) + scores @ v
    den = w0 * jnp.sum(q * n0[..., None, :], -1) + jnp.sum(scores, axis=-1)
    h = num / (jnp.maximum(jnp.abs(den), jnp.exp(-m)) + 1e-6)[..., None]
    h = jnp.moveaxis(h, -2, 0).reshape(steps, batch, hidden)
    return h * jax.nn.sigmoid(px[..., 3 * hidden + 2 * heads :])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--compilations", type=int, default=8)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--steps", type=int, default=100)
    args = parser.parse_args()
    batch, steps, vocab, heads, d = args.batch, args.steps, 50, 4, 32
    hidden = heads * d
    rng = np.random.default_rng(0)
    w = jnp.asarray(rng.normal(size=(vocab, 4 * hidden + 2 * heads)) / np.sqrt(vocab), "float32")
    bias = np.zeros(4 * hidden + 2 * heads)
    bias[3 * hidden : 3 * hidden + heads] = rng.normal(size=heads) * 0.1
    bias[3 * hidden + heads : 3 * hidden + 2 * heads] = np.linspace(3, 6, heads)
    b = jnp.asarray(bias, "float32")
    x = jax.nn.one_hot(rng.integers(0, vocab, (steps, batch)), vocab)
    zeros = (
        jnp.zeros((batch, heads, d, d)),
        jnp.zeros((batch, heads, d)),
        jnp.zeros((batch, heads)),
    )
    want = quadratic_mlstm(w, b, x, *zeros)  # eager: op by op, no fusion
    wrong = {"argument": 0, "broadcast": 0}
    for _ in range(args.compilations):  # a new jit object: traced and compiled again
        as_argument = jax.jit(quadratic_mlstm)(w, b, x, *zeros)
        as_broadcast = jax.jit(lambda w, b, x: quadratic_mlstm(w, b, x, *zeros))(w, b, x)
        for name, got in (("argument", as_argument), ("broadcast", as_broadcast)):
            wrong[name] += not float(jnp.max(jnp.abs(got - want))) < 1e-4
    print(f"jax {jax.__version__}, {jax.devices()[0].device_kind}, batch {batch}, T {steps}")
    for name, count in wrong.items():
        print(f"zero start state as {name}: {count} of {args.compilations} compilations wrong")


if __name__ == "__main__":
    main()
