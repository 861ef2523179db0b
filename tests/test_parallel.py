"""minGRU, minLSTM and LRU against NumPy equations, and the parallel (associative-scan) unroll
against the sequential one: lengths, reverse, initial carry, chunks, remat, long sequences."""

from __future__ import annotations

from functools import partial

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

import seqjax

B, D, H = 3, 5, 4

CELLS = {
    "min_gru": lambda: seqjax.min_gru(H),
    "min_gru_log": lambda: seqjax.min_gru(H, log_space=True),
    "min_lstm": lambda: seqjax.min_lstm(H),
    "min_lstm_log": lambda: seqjax.min_lstm(H, log_space=True),
    "lru": lambda: seqjax.lru(H, D, r_min=0.5, r_max=0.99),
    "lru_input_layer": lambda: seqjax.lru(H, 7, input_layer=True),
}


def sigmoid(x):
    return 1 / (1 + np.exp(-x))


def g(x):  # the positive candidate of the log-space variants
    return np.where(x >= 0, x + 0.5, sigmoid(x))


def numpy_step(name, p, h, x):
    """One step written from the papers' equations, in NumPy float64."""
    p = {k: np.asarray(v) for k, v in p.items()}
    if name.startswith("min_gru"):
        k = x @ p["w_ih"][:, :H] + p["b_ih"][:H]
        cand = x @ p["w_ih"][:, H:] + p["b_ih"][H:]
        cand = g(cand) if name.endswith("log") else cand
        z = sigmoid(k)
        h = (1 - z) * h + z * cand
        return h, h
    if name.startswith("min_lstm"):
        pre = x @ p["w_ih"] + p["b_ih"]
        f, i, cand = sigmoid(pre[:, :H]), sigmoid(pre[:, H : 2 * H]), pre[:, 2 * H :]
        cand = g(cand) if name.endswith("log") else cand
        h = f / (f + i) * h + i / (f + i) * cand
        return h, h
    if "w_in" in p:  # gelu, tanh form (jax.nn.gelu's default)
        a = x @ p["w_in"] + p["b_in"]
        x = 0.5 * a * (1 + np.tanh(np.sqrt(2 / np.pi) * (a + 0.044715 * a**3)))
    lam = np.exp(-np.exp(p["nu_log"]) + 1j * np.exp(p["theta_log"]))
    state = h[:, :H] + 1j * h[:, H:]
    state = lam * state + np.exp(p["gamma_log"]) * (x @ (p["b_re"] + 1j * p["b_im"]))
    y = np.real(state @ (p["c_re"] + 1j * p["c_im"])) + p["d"] * x
    return np.concatenate([state.real, state.imag], axis=-1), y


def random_params(cell, key, dtype=jnp.float64):
    params = cell.init(key, D, dtype)
    if cell.name == "lru":  # keep the ring init: it is what makes |lambda| < 1 meaningful
        return params
    keys = jax.random.split(key, len(params))
    return {
        k: 0.7 * jax.random.normal(kk, v.shape, dtype)
        for (k, v), kk in zip(sorted(params.items()), keys, strict=True)
    }


def setup(name, steps=9, dtype=jnp.float64, seed=0):
    cell = CELLS[name]()
    params = random_params(cell, jax.random.key(seed), dtype)
    xs = jax.random.normal(jax.random.key(seed + 1), (B, steps, D), dtype)
    carry = cell.initial_carry(params, (B,))
    carry = carry + 0.3 * jax.random.normal(jax.random.key(seed + 2), carry.shape, dtype)
    if name.endswith("log"):
        carry = jnp.abs(carry)
    return cell, params, xs, carry


@pytest.mark.parametrize("name", CELLS)
def test_cells_match_numpy_equations(x64, name):
    cell, params, xs, carry = setup(name)
    final, ys = jax.jit(partial(seqjax.unroll, cell))(params, xs, carry=carry)
    h = np.asarray(carry)
    for t in range(xs.shape[1]):
        h, y = numpy_step(name, params, h, np.asarray(xs[:, t]))
        np.testing.assert_allclose(ys[:, t], y, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(final, h, rtol=1e-12, atol=1e-12)


OPTIONS = {
    "whole": {},
    "reverse": {"reverse": True},
    "chunks": {"chunk_size": 4},
    "chunks_reverse_remat": {"chunk_size": 4, "reverse": True, "remat": True},
    "remat": {"remat": True},
}


CASES = [(name, "whole") for name in CELLS]
CASES += [(name, "chunks_reverse_remat") for name in ("min_gru", "min_lstm_log", "lru")]
CASES += [("min_gru", "reverse"), ("min_lstm_log", "chunks"), ("lru", "remat")]


@pytest.mark.parametrize("name, option_name", CASES)
def test_parallel_equals_sequential(x64, name, option_name):
    """Outputs, final carry and gradients (params, inputs, carry) agree to round-off."""
    options = OPTIONS[option_name]
    cell, params, xs, carry = setup(name)
    lengths = jnp.array([9, 2, 6])
    sequential = {k: v for k, v in options.items() if k == "reverse"}

    def loss(params, xs, carry, **kw):
        final, ys = seqjax.unroll(cell, params, xs, carry=carry, lengths=lengths, **kw)
        return jnp.sum(jnp.sin(ys)) + jnp.sum(final**2), (final, ys)

    def grad(**kw):
        return jax.jit(jax.grad(partial(loss, **kw), argnums=(0, 1, 2), has_aux=True))

    expected = grad(**sequential)(params, xs, carry)
    got = grad(parallel=True, **options)(params, xs, carry)
    chex.assert_trees_all_close(got, expected, atol=1e-11, rtol=1e-11)
    ys = expected[1][1]
    assert np.all(np.asarray(ys[1, 2:]) == 0), "outputs past a length must be zero"


@pytest.mark.parametrize("name", ["min_lstm_log", "lru"])
def test_long_sequences_agree_in_float32(name):
    """T = 4096 in float32: the parallel scan stays within float32 round-off of the step loop."""
    cell, params, xs, _ = setup(name, steps=4096, dtype=jnp.float32)
    lengths = jnp.array([4096, 3001, 17])

    def run(parallel):
        return jax.jit(lambda p, x: seqjax.unroll(cell, p, x, lengths=lengths, parallel=parallel))(
            params, xs
        )

    (final_seq, ys_seq), (final_par, ys_par) = run(False), run(True)
    scale = float(jnp.max(jnp.abs(ys_seq)))
    np.testing.assert_allclose(ys_par, ys_seq, atol=2e-5 * scale, rtol=0)
    np.testing.assert_allclose(final_par, final_seq, atol=2e-5 * scale, rtol=0)


@pytest.mark.parametrize("name", ["min_gru_log", "min_lstm_log"])
def test_log_space_survives_saturated_gates(name):
    """Gate pre-activations of +-60 (sigmoid saturates in float32): the log-space scan stays
    finite, agrees with the step loop, and its gradients are finite."""
    cell, params, xs, _ = setup(name, steps=128, dtype=jnp.float32)
    xs = 40.0 * xs

    def loss(p, parallel):
        return jnp.mean(seqjax.unroll(cell, p, xs, parallel=parallel)[1] ** 2)

    value_and_grad = jax.jit(jax.value_and_grad(loss), static_argnums=1)
    (value_par, grads_par), (value_seq, grads_seq) = [
        value_and_grad(params, parallel) for parallel in (True, False)
    ]
    np.testing.assert_allclose(value_par, value_seq, rtol=1e-4)
    chex.assert_tree_all_finite(grads_par)
    chex.assert_trees_all_close(grads_par, grads_seq, rtol=1e-3, atol=1e-6)


@pytest.mark.parametrize("name", ["min_gru_log", "min_lstm", "lru"])
def test_parallel_gradients_match_finite_differences(x64, name):
    cell, params, xs, carry = setup(name, steps=6)
    lengths = jnp.array([6, 3, 1])

    def loss(params, xs, carry):
        final, ys = seqjax.unroll(
            cell, params, xs, carry=carry, lengths=lengths, parallel=True, reverse=True
        )
        return jnp.sum(jnp.sin(ys)) + jnp.sum(final**2)

    check_grads(jax.jit(loss), (params, xs, carry), order=1, modes=["rev"], atol=1e-6, rtol=1e-6)


def test_lru_ring_initialisation():
    r_min, r_max, max_phase = 0.4, 0.9, 1.5
    cell = seqjax.lru(512, 8, r_min=r_min, r_max=r_max, max_phase=max_phase)
    p = cell.init(jax.random.key(0), 8)
    magnitude = np.exp(-np.exp(np.asarray(p["nu_log"])))
    phase = np.exp(np.asarray(p["theta_log"]))
    assert r_min - 1e-6 <= magnitude.min() and magnitude.max() <= r_max + 1e-6
    assert 0 <= phase.min() and phase.max() <= max_phase
    # |lambda|^2 uniform on the ring's area: its mean is the middle of [r_min^2, r_max^2]
    assert abs(np.mean(magnitude**2) - (r_min**2 + r_max**2) / 2) < 0.03
    np.testing.assert_allclose(np.exp(p["gamma_log"]), np.sqrt(1 - magnitude**2), rtol=1e-5)


def test_layers_run_in_parallel():
    """A bidirectional stack of min_gru layers gives the same outputs either way."""
    with jax.enable_x64(True):

        def model(parallel):
            layer = lambda: seqjax.rnn(seqjax.min_gru(H), parallel=parallel)  # noqa: E731
            return seqjax.stack(seqjax.bidirectional(layer(), layer()), layer())

        xs = jax.random.normal(jax.random.key(0), (B, 7, D), jnp.float64)
        lengths = jnp.array([7, 4, 1])
        params = model(False).init(jax.random.key(1), D)
        seq = jax.jit(partial(model(False).apply, lengths=lengths))(params, xs)
        par = jax.jit(partial(model(True).apply, lengths=lengths))(params, xs)
        chex.assert_trees_all_close(par, seq, atol=1e-12, rtol=1e-12)


def test_clear_errors():
    lstm = seqjax.lstm(H)
    params = lstm.init(jax.random.key(0), D)
    xs = jnp.ones((2, 3, D))
    with pytest.raises(ValueError, match="parallel=True needs a cell whose state evolves lin"):
        seqjax.unroll(lstm, params, xs, parallel=True)
    with pytest.raises(ValueError, match="parallel=True needs a cell"):
        seqjax.rnn(lstm, parallel=True)
    cell = seqjax.min_gru(H)
    params = cell.init(jax.random.key(0), D)
    with pytest.raises(ValueError, match="chunk_size applies to parallel=True only"):
        seqjax.unroll(cell, params, xs, chunk_size=4)
    with pytest.raises(ValueError, match="chunk_size must be a positive integer"):
        seqjax.unroll(cell, params, xs, parallel=True, chunk_size=0)
    with pytest.raises(ValueError, match="input_size must equal model_size=8"):
        seqjax.lru(H, 8).init(jax.random.key(0), D)
    with pytest.raises(ValueError, match="need 0 <= r_min < r_max <= 1"):
        seqjax.lru(H, D, r_min=0.9, r_max=0.5)
    with pytest.raises(TypeError, match="log_space must be True or False"):
        seqjax.min_lstm(H, log_space="yes")


@pytest.mark.parametrize("name", ["min_lstm", "lru"])
def test_bfloat16_parallel_stays_close_to_float32(name):
    cell, params, xs, _ = setup(name, steps=32, dtype=jnp.float32)
    run = jax.jit(lambda p, x: seqjax.unroll(cell, p, x, parallel=True))
    ys32 = run(params, xs)[1]
    params16 = jax.tree.map(lambda p: p.astype(jnp.bfloat16), params)
    final16, ys16 = run(params16, xs.astype(jnp.bfloat16))
    assert ys16.dtype == final16.dtype == jnp.bfloat16
    error = float(jnp.max(jnp.abs(ys16.astype(jnp.float32) - ys32)) / jnp.max(jnp.abs(ys32)))
    assert error < 0.05, f"bfloat16 drifts {error:.3f} from float32"
