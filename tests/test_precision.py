"""The mixed-precision policy (``seqjax.precision``): bfloat16 matmuls summed in float32, the
state and everything elementwise in float32, float32 master weights in training.

References: NumPy in float64 on the same bfloat16-rounded operands (the policy's exact
arithmetic, up to float32 round-off), and the float32 model (how far bfloat16 moves it)."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest

import seqjax
from seqjax import precision
from seqjax.train import losses

B, T, D, H = 3, 12, 5, 8
BF16 = jnp.bfloat16


def bf16(x) -> np.ndarray:
    """``x`` rounded to bfloat16, as float64 (what a bfloat16 operand holds exactly)."""
    return np.asarray(np.asarray(x, np.float32).astype(ml_dtypes.bfloat16), np.float64)


def sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def test_cast_rounds_matrices_and_keeps_vectors():
    params = {"w": jnp.ones((3, 4)), "b": jnp.ones((4,)), "n": jnp.arange(3), "s": jnp.ones(())}
    cast = precision.cast(params, "bfloat16")
    assert cast["w"].dtype == BF16
    assert cast["b"].dtype == cast["s"].dtype == jnp.float32
    assert cast["n"].dtype == jnp.int32
    assert precision.cast(params, "float32") is params
    assert precision.cast(params, None) is params
    assert precision.cast(params, jnp.float16)["w"].dtype == jnp.float16
    with pytest.raises(ValueError, match="cast: unknown precision 'bf16'"):
        precision.cast(params, "bf16")
    with pytest.raises(ValueError, match="precision must be one of"):
        precision.cast(params, jnp.int8)


def test_matmul_sums_bfloat16_products_in_float32():
    x = jax.random.normal(jax.random.key(0), (4, 512))
    w = jax.random.normal(jax.random.key(1), (512, 6)).astype(BF16)
    out = precision.matmul(x, w)
    assert out.dtype == jnp.float32
    exact = bf16(x) @ np.asarray(w, np.float64)
    np.testing.assert_allclose(out, exact, rtol=1e-5, atol=1e-4)
    # The float32 sums matter: a bfloat16 result (plain bfloat16 matmul) is ~100x further off.
    plain = np.asarray((x.astype(BF16) @ w).astype(jnp.float32))
    assert np.max(np.abs(plain - exact)) > 30 * np.max(np.abs(np.asarray(out) - exact))
    # Params low precision throughout keep their dtype, as before the policy existed.
    assert precision.matmul(x.astype(BF16), w).dtype == BF16


def lstm_reference(params, xs):
    """The LSTM under the mixed policy in float64: each matmul of bfloat16-rounded operands,
    the gates, ``c`` and ``h`` unrounded. ``xs (B, T, D)``."""
    w_ih, w_hh = (np.asarray(params[k], np.float64) for k in ("w_ih", "w_hh"))
    bias = np.asarray(params["b_ih"], np.float64) + np.asarray(params["b_hh"], np.float64)
    h, c, ys = np.zeros((B, H)), np.zeros((B, H)), []
    for t in range(xs.shape[1]):
        gates = bf16(xs[:, t]) @ w_ih + bf16(h) @ w_hh + bias
        i, f, g, o = np.split(gates, 4, axis=-1)
        c = sigmoid(f) * c + sigmoid(i) * np.tanh(g)
        h = sigmoid(o) * np.tanh(c)
        ys.append(h)
    return h, c, np.stack(ys, axis=1)


PATHS = {
    "native default": {},
    "scan": {"native": False},
    "autodiff": {"custom_vjp": False},
    "remat": {"native": False, "remat": True},
}


@pytest.mark.parametrize("path", PATHS)
def test_lstm_follows_the_policy_exactly(path):
    """Float32 carry and outputs, equal to the float64 policy reference; float32 arithmetic
    without the bfloat16 rounding is much further away, as is a bfloat16 cell state."""
    cell = seqjax.lstm(H)
    params = precision.cast(cell.init(jax.random.key(0), D))
    xs = jax.random.normal(jax.random.key(1), (B, T, D))
    carry, ys = seqjax.unroll(cell, params, xs, **PATHS[path])
    assert ys.dtype == carry.h.dtype == carry.c.dtype == jnp.float32
    _, c, ys_ref = lstm_reference(params, np.asarray(xs))
    error = np.max(np.abs(np.asarray(ys) - ys_ref))
    assert error < 2e-5, error
    np.testing.assert_allclose(carry.c, c, atol=2e-5)
    full = seqjax.unroll(cell, jax.tree.map(lambda p: p.astype(jnp.float32), params), xs)[1]
    assert np.max(np.abs(np.asarray(full) - ys_ref)) > 20 * error


CELLS = {
    "lstm": lambda: seqjax.lstm(H),
    "gru": lambda: seqjax.gru(H),
    "gru_reset_before": lambda: seqjax.gru(H, reset_after=False),
    "simple_rnn": lambda: seqjax.simple_rnn(H),
    "indrnn": lambda: seqjax.indrnn(H),
    "lstm_proj_peephole": lambda: seqjax.lstm(H, proj_size=4, peephole=True),
    "lstm_ln": lambda: seqjax.lstm(H, layer_norm=True),
    "min_gru": lambda: seqjax.min_gru(H),
    "min_lstm": lambda: seqjax.min_lstm(H),
    "lru": lambda: seqjax.lru(H, D),
}
# (outputs, gradients) relative L2 tolerances. Most cells measured 0.2-0.5% on both; a ReLU
# cell's gradient jumps where bfloat16 moves a pre-activation across zero (IndRNN: up to 5.6%),
# and layer normalisation over few units amplifies the rounding (H = 8: up to 14% on the
# gradients, 3% at H = 32).
TOLERANCES = {"indrnn": (0.03, 0.08), "lstm_ln": (0.03, 0.2)}


def relative(a, b) -> float:
    a, b = np.concatenate([np.ravel(x) for x in a]), np.concatenate([np.ravel(x) for x in b])
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


@pytest.mark.parametrize("name", CELLS)
def test_every_cell_runs_mixed_close_to_float32(name):
    """Outputs within 3% (relative L2) of float32 and gradients of the float32 master weights
    within 5% (or the cell's TOLERANCES): bfloat16 keeps 8 bits of mantissa (relative rounding
    up to 2^-9 = 0.2% an operand). Gradients come back float32."""
    cell = CELLS[name]()
    params = cell.init(jax.random.key(0), D)
    xs = jax.random.normal(jax.random.key(1), (B, T, D))
    parallel = cell.linear is not None

    @functools.partial(jax.jit, static_argnums=1)
    def run(p, mixed):  # the outputs, the final carry and the gradient, in one program
        def loss(p):
            carry, ys = seqjax.unroll(cell, precision.cast(p) if mixed else p, xs,
                                      parallel=parallel)  # fmt: skip
            return jnp.sum(jnp.sin(ys)), (carry, ys)

        return jax.grad(loss, has_aux=True)(p)

    (g16, (carry16, ys16)), (g32, (_, ys32)) = run(params, True), run(params, False)
    assert ys16.dtype == jnp.float32
    assert {leaf.dtype for leaf in jax.tree.leaves(carry16)} == {jnp.dtype(jnp.float32)}
    out_tol, grad_tol = TOLERANCES.get(name, (0.03, 0.05))
    assert relative([ys16], [ys32]) < out_tol
    assert {leaf.dtype for leaf in jax.tree.leaves(g16)} == {jnp.dtype(jnp.float32)}
    assert relative(jax.tree.leaves(g16), jax.tree.leaves(g32)) < grad_tol


OLD_JAX = tuple(int(v) for v in jax.__version__.split(".")[:2]) < (0, 9)


@pytest.mark.parametrize("name", ["lstm", "gru", "simple_rnn"])
def test_the_backward_passes_agree_under_the_policy(name):
    if OLD_JAX and name == "simple_rnn":
        pytest.skip("XLA:CPU of jax < 0.9 has no bfloat16 dot for the RNN's autodiff gradient")
    """seqjax's own backward pass (custom VJP, whole and remat) against plain autodiff of the
    same mixed forward. They round different intermediates to bfloat16 (autodiff rounds the
    cotangent of each bfloat16-cast ``h``), so they differ by about as much as each differs
    from float32 arithmetic (0.1-0.3%); a wrong cast or a missing term would be far beyond 1%."""
    cell = CELLS[name]()
    params = cell.init(jax.random.key(0), D)
    xs = jax.random.normal(jax.random.key(1), (B, T, D))

    def grads(mixed=True, **options):
        def loss(p, x):
            p = precision.cast(p) if mixed else p
            return jnp.sum(jnp.sin(seqjax.unroll(cell, p, x, **options)[1]))

        return jax.tree.leaves(jax.grad(loss, argnums=(0, 1))(params, xs))

    float32, autodiff = grads(mixed=False), grads(custom_vjp=False)
    assert relative(autodiff, float32) < 0.01
    for options in ({"native": False}, {"native": False, "remat": True}):
        assert relative(grads(**options), autodiff) < 0.01, options
        assert relative(grads(**options), float32) < 0.01, options


def test_layers_take_mixed_params():
    layer = seqjax.stack(
        seqjax.rnn(seqjax.lstm(H)),
        seqjax.bidirectional(seqjax.rnn(seqjax.gru(H)), seqjax.rnn(seqjax.gru(H))),
    )
    params = layer.init(jax.random.key(0), D)
    xs = jax.random.normal(jax.random.key(1), (B, T, D))
    lengths = jnp.array([T, 5, 1])
    _, ys = layer.apply(precision.cast(params), xs, lengths=lengths)
    _, ys32 = layer.apply(params, xs, lengths=lengths)
    assert ys.dtype == jnp.float32 and ys.shape == ys32.shape
    assert relative([ys], [ys32]) < 0.03
    np.testing.assert_array_equal(ys[2, 1:], 0.0)  # past its length, as in float32


def test_fit_keeps_float32_master_weights():
    """fit(precision="bfloat16") trains float32 params (updates smaller than a bfloat16 ulp
    are not lost) and learns: a linear read-out of an LSTM fits a smooth target."""
    from seqjax import train

    cell = seqjax.lstm(16)
    xs = jax.random.normal(jax.random.key(1), (64, 10, 2))
    data = {"inputs": xs, "targets": jnp.sum(xs[:, :, 0], axis=1, keepdims=True) / 3}
    params = {"rnn": cell.init(jax.random.key(0), 2), "w": jnp.zeros((16, 1)), "b": jnp.zeros(1)}
    seen = []

    def model(p, batch, key):
        seen.append({k: v.dtype for k, v in p["rnn"].items()})
        _, ys = seqjax.unroll(cell, p["rnn"], batch["inputs"])
        return precision.matmul(ys[:, -1], p["w"]) + p["b"]

    def loss(pred, batch):
        return losses.mse(pred, batch["targets"])

    adam = train.optimizer(learning_rate=1e-2)
    out, history = train.fit(model, loss, params, adam, data, steps=150, batch_size=32,
                             eval_every=150, log=lambda s: None, precision="bfloat16")  # fmt: skip
    assert {leaf.dtype for leaf in jax.tree.leaves(out)} == {jnp.dtype(jnp.float32)}
    assert seen[0]["w_hh"] == BF16 and seen[0]["b_hh"] == jnp.float32
    assert history[-1]["loss"] < 0.2 * float(jnp.var(data["targets"]))
    with pytest.raises(ValueError, match="fit: unknown precision 'half'"):
        train.fit(model, loss, params, train.optimizer(), data, steps=1, precision="half")


def test_nnx_module_runs_the_policy_on_float32_params():
    from flax import nnx

    from seqjax import nn

    module = nn.GRU(D, H, rngs=nnx.Rngs(0), precision="bfloat16")
    xs = jax.random.normal(jax.random.key(1), (B, T, D))
    assert module.w_hh[...].dtype == jnp.float32  # the master weights
    _, expected = seqjax.unroll(seqjax.gru(H), precision.cast(module.params), xs)
    np.testing.assert_array_equal(module(xs), expected)
    grads = nnx.grad(lambda m: jnp.sum(m(xs)))(module)
    assert grads.w_hh[...].dtype == jnp.float32
    with pytest.raises(ValueError, match="GRU: unknown precision 'bf16'"):
        nn.GRU(D, H, rngs=nnx.Rngs(0), precision="bf16")
