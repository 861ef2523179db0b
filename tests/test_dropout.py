"""Recurrent dropout against its definition, read back from the outputs with NumPy.

For a tanh RNN, ``h_t = tanh(x_t W_ih + b + (m * h_(t-1)) W_hh)``, so the mask that a step
applied is recoverable: ``m * h_(t-1) = (atanh(h_t) - x_t W_ih - b) W_hh^-1``. Variational
dropout must show one mask per sequence, the same at every step, of values 0 and 1/(1-p);
zoneout must show each unit either keeping its old value or taking the cell's new one.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

import seqjax

B, T, D, H = 6, 7, 3, 5


def rnn_params(key=0):
    cell = seqjax.simple_rnn(H)
    return cell, cell.init(jax.random.key(key), D, jnp.float64)


def inputs(key=1):
    return jax.random.normal(jax.random.key(key), (B, T, D), jnp.result_type(float))


def run_rnn(key: int, **rates):
    """A tanh RNN with these dropout rates on ``inputs()``, with a key: ``(params as NumPy,
    xs, ys, h_prev)``, ``h_prev[:, t]`` the state before step t."""
    cell, params = rnn_params()
    xs = inputs()
    _, ys = seqjax.rnn(cell, **rates).apply(params, xs, key=jax.random.key(key))
    ys = np.asarray(ys)
    h_prev = np.concatenate([np.zeros((B, 1, H)), ys[:, :-1]], axis=1)
    return {k: np.asarray(v) for k, v in params.items()}, np.asarray(xs), ys, h_prev


def pre_activations(params, xs, ys):
    """``atanh(h_t) - x_t W_ih - b``: what the recurrent product contributed at each step."""
    p = {k: np.asarray(v) for k, v in params.items()}
    ys = np.asarray(ys)
    return np.arctanh(ys) - np.asarray(xs) @ p["w_ih"] - p["b_ih"] - p["b_hh"]


def test_variational_recurrent_mask_is_one_per_sequence_and_constant_over_time(x64):
    cell, params = rnn_params()
    xs = inputs()
    rate = 0.4
    layer = seqjax.rnn(cell, recurrent_dropout=rate)
    _, ys = layer.apply(params, xs, key=jax.random.key(5))
    masked_h = pre_activations(params, xs, ys) @ np.linalg.inv(np.asarray(params["w_hh"]))
    ys = np.asarray(ys)
    masks = masked_h[:, 1:] / ys[:, :-1]  # m = (m * h_(t-1)) / h_(t-1), steps 1..T-1
    np.testing.assert_allclose(masks, np.broadcast_to(masks[:, :1], masks.shape), atol=1e-7)
    values = masks[:, 0]
    scaled = np.isclose(values, 1 / (1 - rate), atol=1e-7)
    assert np.all(scaled | np.isclose(values, 0, atol=1e-7))
    assert 0 < scaled.mean() < 1  # some units dropped, some kept
    assert len({tuple(row) for row in scaled}) > 1  # a mask of its own per sequence


def test_variational_input_mask_is_one_per_sequence_and_constant_over_time(x64):
    rate = 0.5
    p, xs, ys, h_prev = run_rnn(3, input_dropout=rate)
    projected = np.arctanh(ys) - p["b_ih"] - p["b_hh"] - h_prev @ p["w_hh"]  # (x * m) W_ih
    x_masked = np.linalg.lstsq(p["w_ih"].T, projected.reshape(-1, H).T, rcond=None)[0]
    masks = x_masked.T.reshape(B, T, D) / xs
    np.testing.assert_allclose(masks, np.broadcast_to(masks[:, :1], masks.shape), atol=1e-6)
    kept = np.isclose(masks[:, 0], 1 / (1 - rate), atol=1e-6)
    assert np.all(kept | np.isclose(masks[:, 0], 0, atol=1e-6))
    assert 0 < kept.mean() < 1


@pytest.mark.parametrize("cell_name", ["lstm", "gru"])
def test_dropout_is_off_without_a_key(cell_name):
    cell = {"lstm": seqjax.lstm(H), "gru": seqjax.gru(H)}[cell_name]
    params = cell.init(jax.random.key(0), D)
    xs = inputs().astype(jnp.float32)
    plain = seqjax.rnn(cell).apply(params, xs)
    dropped = seqjax.rnn(cell, recurrent_dropout=0.5, input_dropout=0.5).apply(params, xs)
    np.testing.assert_array_equal(dropped[1], plain[1])
    with_key = seqjax.rnn(cell, recurrent_dropout=0.5).apply(params, xs, key=jax.random.key(0))
    assert not np.allclose(with_key[1], plain[1])


def test_zoneout_keeps_old_units_or_takes_new_ones(x64):
    rate = 0.3
    p, xs, ys, h_prev = run_rnn(2, zoneout=rate)
    new = np.tanh(xs @ p["w_ih"] + p["b_ih"] + h_prev @ p["w_hh"] + p["b_hh"])
    kept = np.isclose(ys, h_prev, atol=1e-12)
    assert np.all(kept | np.isclose(ys, new, atol=1e-12))
    assert 0.1 < kept.mean() < 0.5  # about the rate
    assert not np.all(kept[:, 1:] == kept[:, :1])  # a fresh mask at each step


def test_zoneout_without_a_key_is_the_expectation(x64):
    cell, params = rnn_params()
    xs = inputs()
    rate = 0.3
    _, ys = seqjax.rnn(cell, zoneout=rate).apply(params, xs)
    p = {k: np.asarray(v) for k, v in params.items()}
    h, expected = np.zeros((B, H)), []
    for t in range(T):
        new = np.tanh(np.asarray(xs[:, t]) @ p["w_ih"] + p["b_ih"] + h @ p["w_hh"] + p["b_hh"])
        h = rate * h + (1 - rate) * new
        expected.append(h)
    np.testing.assert_allclose(ys, np.stack(expected, axis=1), atol=1e-12)


@pytest.mark.parametrize("cell_name", ["lstm", "gru"])
def test_zoneout_rate_zero_equals_the_plain_cell(cell_name):
    """The zoneout cell itself (a rate too small to draw a kept unit) against the cell."""
    cell = {"lstm": seqjax.lstm(H), "gru": seqjax.gru(H)}[cell_name]
    params = cell.init(jax.random.key(0), D)
    xs = inputs().astype(jnp.float32)
    plain = seqjax.rnn(cell, native=False).apply(params, xs)
    zoned = seqjax.rnn(cell, zoneout=1e-12).apply(params, xs, key=jax.random.key(1))
    np.testing.assert_allclose(zoned[1], plain[1], rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(jax.tree.leaves(zoned[0]), jax.tree.leaves(plain[0]), atol=1e-6)


RATES = [{"recurrent_dropout": 0.3}, {"zoneout": 0.3}, {"recurrent_dropout": 0.3, "zoneout": 0.2}]


@pytest.mark.parametrize("rates", RATES)
def test_gradients_through_the_masks(x64, rates):
    """seqjax's own backward pass equals autodiff of the scan and finite differences."""
    cell = seqjax.lstm(H)
    params = cell.init(jax.random.key(0), D, jnp.float64)
    xs = inputs()[:2, :4]
    lengths = np.array([4, 2])
    resets = np.zeros((2, 4), bool)
    resets[0, 2] = True
    key = jax.random.key(4)

    def loss(options):
        layer = seqjax.rnn(cell, **rates, **options)

        def f(params, xs):
            final, ys = layer.apply(params, xs, lengths=lengths, key=key, resets=resets)
            return jnp.sum(jnp.sin(ys)) + jnp.sum(final.c**2)

        return f

    grads = jax.grad(loss({}), argnums=(0, 1))(params, xs)
    reference = jax.grad(loss({"custom_vjp": False}), argnums=(0, 1))(params, xs)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-10), grads, reference)
    check_grads(loss({}), (params, xs), order=1, modes=["rev"], atol=1e-5, rtol=1e-5)


def test_stacked_layers_keep_their_dropout_under_stack_options():
    inner = seqjax.rnn(seqjax.gru(H), zoneout=0.5)
    layer = seqjax.stack(inner, options=seqjax.UnrollOptions(remat=True))
    assert layer.spec.layers[0].spec.dropouts.zoneout == 0.5


def test_bad_dropout_settings_get_named_errors():
    with pytest.raises(ValueError, match="rnn: recurrent_dropout must be a probability"):
        seqjax.rnn(seqjax.lstm(H), recurrent_dropout=1.0)
    with pytest.raises(ValueError, match="rnn: zoneout must be a probability"):
        seqjax.rnn(seqjax.lstm(H), zoneout=-0.1)
    with pytest.raises(ValueError, match="recurrent_dropout masks the state"):
        seqjax.rnn(seqjax.lru(H, D), recurrent_dropout=0.2)
    with pytest.raises(ValueError, match="native kernels take no dropout masks"):
        seqjax.rnn(seqjax.lstm(H), zoneout=0.1, native=True)
    with pytest.raises(ValueError, match="parallel=True"):
        seqjax.rnn(seqjax.min_gru(H), parallel=True, input_dropout=0.1)
    lru = seqjax.lru(H, D)
    with pytest.raises(ValueError, match="zoneout keeps a unit's previous state"):
        seqjax.rnn(lru, zoneout=0.2).apply(lru.init(jax.random.key(0), D), jnp.ones((1, 3, D)))
    layer = seqjax.rnn(seqjax.lstm(H), zoneout=0.2)
    with pytest.raises(TypeError, match="rnn: key must be one PRNG key"):
        layer.apply(layer.init(jax.random.key(0), D), jnp.ones((1, 3, D)), key=3)
