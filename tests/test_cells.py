"""Each cell's step against a NumPy transcription of its equations, its gradients against finite
differences, and the initializers against their definitions."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

import seqjax
from seqjax import initializers as inits

D, H, B = 3, 5, 2


def sigmoid(a):
    return 1.0 / (1.0 + np.exp(-a))


def numpy_step(name: str, p: dict, carry, x):
    """The textbook equations, written independently of seqjax's code."""
    W_ih, W_hh, b_ih, b_hh = (
        np.asarray(p[k], np.float64) for k in ("w_ih", "w_hh", "b_ih", "b_hh")
    )
    if name.startswith("simple_rnn"):
        act = np.tanh if name.endswith("tanh") else (lambda a: np.maximum(a, 0.0))
        h = act(x @ W_ih + b_ih + carry @ W_hh + b_hh)
        return h, h
    if name == "lstm":
        h, c = carry
        gates = x @ W_ih + b_ih + h @ W_hh + b_hh
        i, f, g, o = (gates[:, k * H : (k + 1) * H] for k in range(4))
        c = sigmoid(f) * c + sigmoid(i) * np.tanh(g)
        h = sigmoid(o) * np.tanh(c)
        return (h, c), h
    h = carry
    gx = x @ W_ih + b_ih
    r = sigmoid(gx[:, :H] + h @ W_hh[:, :H] + b_hh[:H])
    z = sigmoid(gx[:, H : 2 * H] + h @ W_hh[:, H : 2 * H] + b_hh[H : 2 * H])
    if name == "gru":
        n = np.tanh(gx[:, 2 * H :] + r * (h @ W_hh[:, 2 * H :] + b_hh[2 * H :]))
    else:
        n = np.tanh(gx[:, 2 * H :] + (r * h) @ W_hh[:, 2 * H :] + b_hh[2 * H :])
    h = (1 - z) * n + z * h
    return h, h


CELLS = {
    "simple_rnn_tanh": lambda: seqjax.simple_rnn(H),
    "simple_rnn_relu": lambda: seqjax.simple_rnn(H, activation="relu"),
    "lstm": lambda: seqjax.lstm(H),
    "gru": lambda: seqjax.gru(H),
    "gru_reset_before": lambda: seqjax.gru(H, reset_after=False),
}


def random_params(cell, key, dtype=jnp.float64):
    """Params with every entry random, so no term of the equations is hidden by a zero bias."""
    params = cell.init(key, D, dtype)
    leaves, treedef = jax.tree.flatten(params)
    keys = jax.random.split(jax.random.fold_in(key, 1), len(leaves))
    leaves = [
        0.5 * jax.random.normal(k, leaf.shape, dtype) for k, leaf in zip(keys, leaves, strict=True)
    ]
    return jax.tree.unflatten(treedef, leaves)


def random_carry(cell, params, key):
    carry = cell.initial_carry(params, (B,))
    leaves, treedef = jax.tree.flatten(carry)
    keys = jax.random.split(key, len(leaves))
    return jax.tree.unflatten(
        treedef,
        [
            jax.random.normal(k, leaf.shape, leaf.dtype)
            for k, leaf in zip(keys, leaves, strict=True)
        ],
    )


@pytest.mark.parametrize("name", CELLS)
def test_step_matches_numpy_equations(x64, name):
    cell = CELLS[name]()
    assert cell.name == name
    key = jax.random.key(0)
    params = random_params(cell, key)
    carry = random_carry(cell, params, jax.random.key(1))
    x = jax.random.normal(jax.random.key(2), (B, D), jnp.float64)
    new_carry, y = seqjax.step(cell, params, carry, x)
    np_carry = jax.tree.map(np.asarray, tuple(carry) if name == "lstm" else carry)
    ref_carry, ref_y = numpy_step(name, params, np_carry, np.asarray(x))
    np.testing.assert_allclose(y, ref_y, rtol=1e-12, atol=1e-12)
    jax.tree.map(
        lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12),
        tuple(new_carry) if name == "lstm" else new_carry,
        ref_carry,
    )


@pytest.mark.parametrize("name", CELLS)
def test_unroll_matches_numpy_loop(x64, name):
    cell = CELLS[name]()
    params = random_params(cell, jax.random.key(3))
    xs = jax.random.normal(jax.random.key(4), (B, 6, D), jnp.float64)
    final, ys = seqjax.unroll(cell, params, xs)
    carry = jax.tree.map(np.asarray, cell.initial_carry(params, (B,)))
    carry = tuple(carry) if name == "lstm" else carry
    for t in range(6):
        carry, y = numpy_step(name, params, carry, np.asarray(xs[:, t]))
        np.testing.assert_allclose(ys[:, t], y, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(final[0] if name == "lstm" else final,
                               carry[0] if name == "lstm" else carry, rtol=1e-12)  # fmt: skip


@pytest.mark.parametrize("name", CELLS)
def test_gradients_match_finite_differences(x64, name):
    cell = CELLS[name]()
    params = random_params(cell, jax.random.key(5))
    carry = random_carry(cell, params, jax.random.key(6))
    xs = jax.random.normal(jax.random.key(7), (B, 4, D), jnp.float64)
    if name == "simple_rnn_relu":  # keep pre-activations away from the kink at 0
        params = jax.tree.map(lambda p: p, params)
        params["b_hh"] = params["b_hh"] + 3.0

    def loss(params, xs, carry):
        final, ys = seqjax.unroll(cell, params, xs, carry=carry)
        return jnp.sum(jnp.sin(ys)) + sum(jnp.sum(leaf**2) for leaf in jax.tree.leaves(final))

    check_grads(jax.jit(loss), (params, xs, carry), order=2, modes=["rev"], eps=1e-5)


def test_lstm_default_init():
    params = seqjax.lstm(H).init(jax.random.key(0), D)
    np.testing.assert_array_equal(params["b_ih"][H : 2 * H], 1.0)  # forget gate
    np.testing.assert_array_equal(params["b_hh"], 0.0)
    np.testing.assert_array_equal(params["b_ih"][:H], 0.0)
    for k in range(4):  # each gate's recurrent block is orthogonal
        block = np.asarray(params["w_hh"][:, k * H : (k + 1) * H])
        np.testing.assert_allclose(block.T @ block, np.eye(H), atol=1e-5)
    assert params["w_ih"].shape == (D, 4 * H)
    assert params["w_ih"].dtype == jnp.float32


def test_pytorch_scheme_is_uniform_within_bound():
    params = seqjax.lstm(64, init="pytorch").init(jax.random.key(0), 32)
    bound = 1.0 / np.sqrt(64)
    for leaf in jax.tree.leaves(params):
        values = np.asarray(leaf)
        assert values.max() <= bound and values.min() >= -bound
        # uniform on [-b, b]: variance b^2 / 3
        assert abs(values.var() - bound**2 / 3) < 0.2 * bound**2 / 3
    assert abs(float(params["b_ih"][64:128].mean())) < 0.05  # no forget bias of 1 in this scheme


def test_irnn_starts_at_identity():
    cell = seqjax.irnn(H)
    params = cell.init(jax.random.key(0), D)
    np.testing.assert_array_equal(params["w_hh"], np.eye(H))
    np.testing.assert_array_equal(params["b_ih"], 0.0)
    assert float(jnp.std(params["w_ih"])) < 5e-3
    # with zero input, a positive state is carried unchanged through many steps
    h0 = jnp.abs(jax.random.normal(jax.random.key(1), (H,)))
    final, _ = seqjax.unroll(cell, params, jnp.zeros((50, D)), carry=h0)
    np.testing.assert_allclose(final, h0, rtol=1e-6)


def test_orthogonal_initializer_scale_and_identity_shape_check():
    w = inits.orthogonal(scale=0.9)(jax.random.key(0), (8, 8), jnp.bfloat16)
    assert w.dtype == jnp.bfloat16
    singular = np.linalg.svd(np.asarray(w, np.float32), compute_uv=False)
    np.testing.assert_allclose(singular, 0.9, atol=1e-2)
    with pytest.raises(ValueError, match="square"):
        inits.identity()(jax.random.key(0), (3, 4), jnp.float32)


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16, jnp.float32])
@pytest.mark.parametrize("name", CELLS)
def test_init_honours_dtype(name, dtype):
    cell = CELLS[name]()
    params = cell.init(jax.random.key(0), D, dtype)
    assert {leaf.dtype for leaf in jax.tree.leaves(params)} == {jnp.dtype(dtype)}
    assert {leaf.dtype for leaf in jax.tree.leaves(cell.initial_carry(params, (B,)))} == {
        jnp.dtype(dtype)
    }


def test_default_dtype_follows_x64_mode(x64):
    params = seqjax.gru(H).init(jax.random.key(0), D)
    assert params["w_hh"].dtype == jnp.float64
