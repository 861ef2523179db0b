"""LSTM with projection, peepholes and layer normalisation, and the IndRNN, against NumPy
transcriptions of their papers' equations, and their gradients against finite differences."""

from __future__ import annotations

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

import seqjax

D, H, P, B = 3, 5, 2, 2


def sigmoid(a):
    return 1.0 / (1.0 + np.exp(-a))


def layer_norm(a, eps=1e-5):
    mean = a.mean(-1, keepdims=True)
    return (a - mean) / np.sqrt(a.var(-1, keepdims=True) + eps)


def numpy_lstm_step(p, carry, x, proj, peephole, ln):
    p = {k: np.asarray(v, np.float64) for k, v in p.items()}
    h, c = carry
    xw, hw = x @ p["w_ih"], h @ p["w_hh"]
    if ln:
        xw, hw = layer_norm(xw) * p["ln_ih_scale"], layer_norm(hw) * p["ln_hh_scale"]
    gates = xw + p["b_ih"] + hw + p["b_hh"]
    i, f, g, o = (gates[:, k * H : (k + 1) * H] for k in range(4))
    if peephole:
        i, f = i + p["w_ci"] * c, f + p["w_cf"] * c
    c = sigmoid(f) * c + sigmoid(i) * np.tanh(g)
    if peephole:
        o = o + p["w_co"] * c
    shown = layer_norm(c) * p["ln_c_scale"] + p["ln_c_bias"] if ln else c
    h = sigmoid(o) * np.tanh(shown)
    if proj:
        h = h @ p["w_hr"]
    return (h, c), h


VARIANTS = [v for v in itertools.product([0, P], [False, True], [False, True]) if any(v)]
IDS = ["_".join(t for t, on in zip(("proj", "peephole", "ln"), v, strict=True) if on)
       for v in VARIANTS]  # fmt: skip


def random_params(cell, key):
    params = cell.init(key, D, jnp.float64)
    keys = jax.random.split(key, len(params))
    return {
        k: v + 0.5 * jax.random.normal(kk, v.shape, jnp.float64)
        for (k, v), kk in zip(sorted(params.items()), keys, strict=True)
    }


@pytest.mark.parametrize("variant", VARIANTS, ids=IDS)
def test_lstm_variants_match_numpy(x64, variant):
    proj, peephole, ln = variant
    cell = seqjax.lstm(H, proj_size=proj, peephole=peephole, layer_norm=ln)
    assert cell.output_size == (proj or H) and cell.recur_split is None
    params = random_params(cell, jax.random.key(0))
    xs = jax.random.normal(jax.random.key(1), (B, 5, D), jnp.float64)
    carry = cell.initial_carry(params, (B,))
    assert carry.h.shape == (B, proj or H) and carry.c.shape == (B, H)
    carry = jax.tree.map(lambda a: a + 0.4, carry)
    final, ys = jax.jit(lambda p, x, c: seqjax.unroll(cell, p, x, carry=c))(params, xs, carry)
    state = (np.asarray(carry.h), np.asarray(carry.c))
    for t in range(xs.shape[1]):
        state, y = numpy_lstm_step(params, state, np.asarray(xs[:, t]), proj, peephole, ln)
        np.testing.assert_allclose(ys[:, t], y, rtol=1e-11, atol=1e-11)
    np.testing.assert_allclose(final.c, state[1], rtol=1e-11, atol=1e-11)


def test_lstm_variants_gradients_match_finite_differences(x64):
    cell = seqjax.lstm(H, proj_size=P, peephole=True, layer_norm=True)
    params = random_params(cell, jax.random.key(2))
    xs = jax.random.normal(jax.random.key(3), (B, 4, D), jnp.float64)
    lengths = jnp.array([4, 2])

    def loss(params, xs):
        final, ys = seqjax.unroll(cell, params, xs, lengths=lengths)
        return jnp.sum(jnp.sin(ys)) + jnp.sum(final.c**2)

    check_grads(jax.jit(loss), (params, xs), order=1, modes=["rev"], eps=1e-5)


def test_lstm_variant_defaults_start_as_a_plain_lstm():
    """Zero peepholes and unit layer-norm scales at init; W_hh is (P, 4H) with a projection."""
    params = seqjax.lstm(H, proj_size=P, peephole=True, layer_norm=True).init(jax.random.key(0), D)
    assert params["w_hh"].shape == (P, 4 * H) and params["w_hr"].shape == (H, P)
    for k in ("w_ci", "w_cf", "w_co", "ln_c_bias"):
        np.testing.assert_array_equal(params[k], 0.0)
    for k in ("ln_ih_scale", "ln_hh_scale", "ln_c_scale"):
        np.testing.assert_array_equal(params[k], 1.0)
    np.testing.assert_array_equal(params["b_ih"][H : 2 * H], 1.0)  # forget bias kept


def numpy_indrnn_step(p, h, x, act, recurrent_max):
    u = np.asarray(p["u"])
    if recurrent_max is not None:
        u = np.clip(u, -recurrent_max, recurrent_max)
    h = act(x @ np.asarray(p["w_ih"]) + np.asarray(p["b_ih"]) + u * h)
    return h, h


@pytest.mark.parametrize("activation", ["relu", "tanh"])
@pytest.mark.parametrize("recurrent_max", [None, 0.6])
def test_indrnn_matches_numpy(x64, activation, recurrent_max):
    cell = seqjax.indrnn(H, activation=activation, recurrent_max=recurrent_max)
    params = cell.init(jax.random.key(0), D, jnp.float64)
    params["u"] = jnp.linspace(-1.5, 1.5, H)
    params["b_ih"] = params["b_ih"] + 0.3
    xs = jax.random.normal(jax.random.key(1), (B, 6, D), jnp.float64)
    act = np.tanh if activation == "tanh" else (lambda a: np.maximum(a, 0))
    _, ys = jax.jit(lambda p, x: seqjax.unroll(cell, p, x))(params, xs)
    h = np.zeros((B, H))
    for t in range(6):
        h, y = numpy_indrnn_step(params, h, np.asarray(xs[:, t]), act, recurrent_max)
        np.testing.assert_allclose(ys[:, t], y, rtol=1e-12, atol=1e-12)


def test_indrnn_custom_vjp_matches_finite_differences(x64):
    cell = seqjax.indrnn(H, activation="tanh")
    params = cell.init(jax.random.key(0), D, jnp.float64)
    xs = jax.random.normal(jax.random.key(1), (B, 5, D), jnp.float64)

    def loss(params, xs):
        return jnp.sum(jnp.sin(seqjax.unroll(cell, params, xs, custom_vjp=True)[1]))

    check_grads(jax.jit(loss), (params, xs), order=1, modes=["rev"], eps=1e-5)


def test_indrnn_init_range():
    params = seqjax.indrnn(512, recurrent_range=(0.2, 0.7)).init(jax.random.key(0), D)
    u = np.asarray(params["u"])
    assert 0.2 <= u.min() and u.max() <= 0.7 and abs(u.mean() - 0.45) < 0.03


def test_variant_errors():
    with pytest.raises(ValueError, match="lstm: proj_size must be an integer >= 0; got -1"):
        seqjax.lstm(H, proj_size=-1)
    with pytest.raises(TypeError, match="lstm: peephole must be True or False"):
        seqjax.lstm(H, peephole=1.0)
    with pytest.raises(ValueError, match="indrnn: recurrent_max must be > 0 or None; got 0"):
        seqjax.indrnn(H, recurrent_max=0)
    with pytest.raises(ValueError, match="indrnn: recurrent_range must be"):
        seqjax.indrnn(H, recurrent_range=(1.0, 0.0))
    with pytest.raises(ValueError, match=r"indrnn: unknown activation .sigmoid.; expected one"):
        seqjax.indrnn(H, activation="sigmoid")
