"""``seqjax.native``: the fused CPU kernels of the LSTM, GRU and Elman RNN against ``lax.scan``
(values and gradients, every ``unroll`` option), their activations against NumPy, and when they
apply."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import seqjax
from seqjax import native
from seqjax.native import _build


def _no_compiler() -> str | None:
    try:
        _build._compiler()
    except _build.Unavailable as err:
        return str(err)
    return None


# Skipped only where the kernels cannot be built at all: a build that fails (a compile error in
# the sources) fails these tests instead of hiding behind the fallback to the scan.
pytestmark = pytest.mark.skipif(
    _no_compiler() is not None or jax.default_backend() != "cpu",
    reason=f"native kernels cannot be built here: {_no_compiler() or 'not a CPU backend'}",
)


def test_kernels_build_and_load():
    assert native.unavailable_reason() is None


CELLS = {
    "lstm": seqjax.lstm,
    "gru": seqjax.gru,
    "rnn_tanh": seqjax.simple_rnn,
    "rnn_relu": lambda h: seqjax.simple_rnn(h, activation="relu"),
}


def setup(name, hidden, batch=(3,), steps=9, features=5, seed=0):
    cell = CELLS[name](hidden)
    params = cell.init(jax.random.key(seed), features)
    # Nonzero biases and recurrent weights large enough that every gate matters.
    params = jax.tree.map(
        lambda p: p + 0.2 * jax.random.normal(jax.random.key(seed + 7), p.shape), params
    )
    xs = jax.random.normal(jax.random.key(seed + 1), (*batch, steps, features))
    carry = jax.tree.map(
        lambda c: 0.5 * jax.random.normal(jax.random.key(seed + 2), c.shape),
        cell.initial_carry(params, batch),
    )
    return cell, params, xs, carry


def assert_close(got, expected, tol=2e-5):
    """Equal to float32 round-off: relative to each array's largest entry, as the two sum the
    same products in different orders."""
    for g, e in zip(jax.tree.leaves(got), jax.tree.leaves(expected), strict=True):
        scale = float(jnp.max(jnp.abs(e))) + 1.0
        np.testing.assert_allclose(np.asarray(g), np.asarray(e), rtol=tol, atol=tol * scale)


def value_and_grads(cell, params, xs, carry, native_on, **options):
    def loss(params, xs, carry):
        final, ys = seqjax.unroll(cell, params, xs, carry=carry, native=native_on, **options)
        weights = jnp.cos(jnp.arange(ys.size, dtype=ys.dtype)).reshape(ys.shape)
        return jnp.sum(ys * weights) + sum(jnp.sum(jnp.sin(c)) for c in jax.tree.leaves(final))

    return jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2)))(params, xs, carry)


@pytest.mark.parametrize("name", CELLS)
@pytest.mark.parametrize(
    "options",
    [{}, {"reverse": True}, {"remat": True}, {"reverse": True, "remat": True},
     {"time_major": True}],
    ids=["forward", "reverse", "remat", "reverse_remat", "time_major"],
)  # fmt: skip
@pytest.mark.parametrize("with_lengths", [False, True], ids=["full", "lengths"])
def test_native_equals_scan(name, options, with_lengths):
    """Loss and gradients for params, inputs and the initial carry, with H = 37 (a partial
    block of 16 units) and lengths that stop some sequences early."""
    cell, params, xs, carry = setup(name, 37, batch=(6,))
    if options.get("time_major"):
        xs = jnp.swapaxes(xs, 0, 1)
    if with_lengths:
        options = {**options, "lengths": jnp.array([9, 1, 4, 9, 6, 2])}
    expected = value_and_grads(cell, params, xs, carry, False, **options)
    got = value_and_grads(cell, params, xs, carry, True, **options)
    assert_close(got, expected)


@pytest.mark.parametrize("name", CELLS)
@pytest.mark.parametrize(
    "batch", [(), (2, 3), (13,)], ids=["unbatched", "two_batch_axes", "thirteen_rows"]
)
def test_any_batch_shape(name, batch):
    """Rows in every register-tile size: 13 = 8 + 4 + 1 (and 6 + 6 + 1 for the LSTM's)."""
    cell, params, xs, carry = setup(name, 40, batch=batch)
    expected = value_and_grads(cell, params, xs, carry, False)
    got = value_and_grads(cell, params, xs, carry, True)
    assert_close(got, expected)


@pytest.mark.parametrize("name", ["lstm", "gru", "rnn_tanh"])
@pytest.mark.parametrize("threads", ["1", "3", "5"])
def test_units_split_over_threads(monkeypatch, name, threads):
    """H = 80: five 16-unit blocks, split unevenly over three planned threads, or one each over
    five, more than XLA's pool has here, so the threads that come take the ranges of those that
    do not; the numbers do not depend on who takes part."""
    monkeypatch.setenv("SEQJAX_NATIVE_THREADS", threads)
    cell, params, xs, carry = setup(name, 80, batch=(8,), steps=6)
    expected = value_and_grads(cell, params, xs, carry, False)
    got = value_and_grads(cell, params, xs, carry, True)
    assert_close(got, expected)


def test_vmap_over_params():
    cell, params, xs, carry = setup("rnn_tanh", 8)
    stacked = jax.tree.map(lambda p: jnp.stack([p, 2 * p]), params)

    def run(params, native_on):
        return seqjax.unroll(cell, params, xs, carry=carry, native=native_on)[1]

    assert_close(
        jax.vmap(lambda p: run(p, True))(stacked), jax.vmap(lambda p: run(p, False))(stacked)
    )


def test_activations_match_numpy():
    """With W_hh = 0 and a zero carry, one step is the activations alone: h = tanh(z) for the
    RNN, for the LSTM h = sigmoid(o) tanh(sigmoid(i) tanh(g)), and for the GRU (with b_hn = 1/2)
    h = (1 - sigmoid(z)) tanh(n + sigmoid(r) / 2); against float64 NumPy over tiny, moderate
    and saturating pre-activations."""
    z = np.concatenate([np.linspace(-30, 30, 301), np.geomspace(1e-8, 0.7, 60)])
    z = np.concatenate([z, -z]).astype(np.float32)
    n = z.size
    for name in ("rnn_tanh", "lstm", "gru"):
        cell = CELLS[name](n)
        params = cell.init(jax.random.key(0), 1)
        width = params["b_ih"].shape[0]
        params = {
            "w_ih": jnp.zeros((1, width)),
            "w_hh": jnp.zeros((n, width)),
            "b_ih": jnp.asarray(np.resize(z, width)),
            "b_hh": jnp.zeros(width).at[2 * n :].set(0.5 if name == "gru" else 0.0),
        }
        ys = jax.jit(
            lambda p, cell=cell: seqjax.unroll(cell, p, jnp.zeros((1, 1)), native=True)[1]
        )(params)
        z64 = np.resize(z, width).astype(np.float64)
        if name == "rnn_tanh":
            expected = np.tanh(z64)
        elif name == "gru":
            r, u, n_pre = np.split(z64, 3)
            expected = (1 - 1 / (1 + np.exp(-u))) * np.tanh(n_pre + 0.5 / (1 + np.exp(-r)))
        else:
            i, _, g, o = np.split(1 / (1 + np.exp(-z64)), 4)
            g = np.tanh(np.split(z64, 4)[2])
            expected = o * np.tanh(i * g)
        # The GRU's h = n - z n loses relative accuracy where z rounds near 1 (in the scan too):
        # its error is held to 2 ulp of 1 instead.
        atol = 2.4e-7 if name == "gru" else 1e-37
        np.testing.assert_allclose(np.asarray(ys[0]), expected, rtol=3e-7, atol=atol)


def test_native_none_falls_back_where_it_cannot_run(x64):
    """float64 params, a cell with no kernel, plain autodiff: ``native=None`` runs the scan,
    ``native=True`` says why it cannot."""
    cell, params, xs, _ = setup("lstm", 4)
    gru_before = seqjax.gru(4, reset_after=False)
    cases = [
        (cell, jax.tree.map(lambda p: p.astype(jnp.float64), params), xs, {}, "float32"),
        (gru_before, gru_before.init(jax.random.key(0), 5), xs, {}, "no native kernel"),
        (cell, params, xs, {"custom_vjp": False}, "custom_vjp=False"),
    ]
    for cell_, params_, xs_, options, reason in cases:
        seqjax.unroll(cell_, params_, xs_, **options)  # native=None: the scan
        with pytest.raises(ValueError, match=reason):
            seqjax.unroll(cell_, params_, xs_, native=True, **options)


def test_native_option_is_checked():
    cell, params, xs, _ = setup("lstm", 4)
    with pytest.raises(TypeError, match="native"):
        seqjax.unroll(cell, params, xs, native="yes")


def test_missing_compiler_is_reported(monkeypatch):
    monkeypatch.setenv("CXX", "")
    monkeypatch.setenv("PATH", "")
    with pytest.raises(_build.Unavailable, match="no C\\+\\+ compiler"):
        _build._compiler()


def test_failed_build_is_reported_and_leaves_nothing(tmp_path):
    """A compiler that fails: the error names the command, and the cache holds no partial file."""
    with pytest.raises(_build.Unavailable, match="compiling the native kernels failed"):
        _build._compile("false", jax.ffi.include_dir(), tmp_path / "kernels.so")
    assert list(tmp_path.iterdir()) == []
