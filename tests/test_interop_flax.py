"""Flax interop: Flax's own cells (linen and NNX) and seqjax's, on the same weights and inputs."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen, nnx

import seqjax
from seqjax import interop

D, H, B, T = 3, 5, 2, 6
KINDS = ("LSTMCell", "OptimizedLSTMCell", "GRUCell", "SimpleCell")


def randomized(tree, seed):
    """Every leaf random (biases included), so that no mapping error hides behind a zero."""
    leaves, treedef = jax.tree.flatten(tree)
    keys = jax.random.split(jax.random.key(seed), len(leaves))
    return jax.tree.unflatten(
        treedef,
        [0.5 * jax.random.normal(k, x.shape, x.dtype) for k, x in zip(keys, leaves, strict=True)],
    )


def flax_carry(kind, h, c=None):
    return (c, h) if "LSTM" in kind else h


def seqjax_carry(kind, h, c=None):
    return seqjax.LSTMCarry(h, c) if "LSTM" in kind else h


def run_flax_linen(kind, variables, xs, h0, c0):
    cell = getattr(linen, kind)(H)
    carry = flax_carry(kind, h0, c0)
    ys = []
    for t in range(xs.shape[1]):
        carry, y = cell.apply(variables, carry, xs[:, t])
        ys.append(y)
    return carry, jnp.stack(ys, axis=1)


def run_flax_nnx(module, kind, xs, h0, c0):
    carry = flax_carry(kind, h0, c0)
    ys = []
    for t in range(xs.shape[1]):
        carry, y = module(carry, xs[:, t])
        ys.append(y)
    return carry, jnp.stack(ys, axis=1)


def inputs():
    k1, k2, k3 = jax.random.split(jax.random.key(9), 3)
    xs = jax.random.normal(k1, (B, T, D))
    return xs, jax.random.normal(k2, (B, H)), jax.random.normal(k3, (B, H))


def check_same(kind, flax_out, ours):
    (flax_final, flax_ys), (final, ys) = flax_out, ours
    np.testing.assert_allclose(ys, flax_ys, rtol=2e-5, atol=2e-6)
    if "LSTM" in kind:
        np.testing.assert_allclose(final.c, flax_final[0], rtol=2e-5, atol=2e-6)
        np.testing.assert_allclose(final.h, flax_final[1], rtol=2e-5, atol=2e-6)
    else:
        np.testing.assert_allclose(final, flax_final, rtol=2e-5, atol=2e-6)


@pytest.mark.parametrize("kind", KINDS)
def test_linen_round_trip(kind):
    xs, h0, c0 = inputs()
    variables = getattr(linen, kind)(H).init(jax.random.key(0), flax_carry(kind, h0, c0), xs[:, 0])
    variables = randomized(variables, 1)
    cell, params = interop.from_flax(variables, kind)
    ours = seqjax.unroll(cell, params, xs, carry=seqjax_carry(kind, h0, c0))
    check_same(kind, run_flax_linen(kind, variables, xs, h0, c0), ours)
    # and back: seqjax params (with both biases random) into linen's layout
    params = randomized(params, 2)  # both biases random: linen keeps one per gate (folded)
    back = interop.to_flax(params, kind)
    ours = seqjax.unroll(cell, params, xs, carry=seqjax_carry(kind, h0, c0))
    check_same(kind, run_flax_linen(kind, back, xs, h0, c0), ours)


@pytest.mark.parametrize("kind", KINDS)
def test_nnx_round_trip(kind):
    xs, h0, c0 = inputs()
    module = getattr(nnx, kind)(D, H, rngs=nnx.Rngs(0))
    graphdef, state = nnx.split(module)
    module = nnx.merge(graphdef, randomized(state, 3))
    cell, params = interop.from_flax(module)
    ours = seqjax.unroll(cell, params, xs, carry=seqjax_carry(kind, h0, c0))
    check_same(kind, run_flax_nnx(module, kind, xs, h0, c0), ours)
    params = randomized(params, 4)
    if kind == "GRUCell":  # nnx.GRUCell has no hidden bias: b_hn must be zero to be exported
        params["b_hh"] = params["b_hh"].at[2 * H :].set(0.0)
    interop.to_flax(params, module)
    ours = seqjax.unroll(cell, params, xs, carry=seqjax_carry(kind, h0, c0))
    check_same(kind, run_flax_nnx(module, kind, xs, h0, c0), ours)


def test_errors():
    module = nnx.GRUCell(D, H, rngs=nnx.Rngs(0))
    _, params = interop.from_flax(module)
    params["b_hh"] = params["b_hh"] + 1.0
    with pytest.raises(ValueError, match=r"nnx\.GRUCell has no hidden bias"):
        interop.to_flax(params, module)
    with pytest.raises(ValueError, match="kind is required for linen params"):
        interop.from_flax({"params": {}})
    with pytest.raises(ValueError, match="unknown target kind 'LSTM'"):
        interop.to_flax(params, "LSTM")
    with pytest.raises(ValueError, match=r"params have 3 gate blocks .* a LSTMCell needs 4"):
        interop.to_flax(params, "LSTMCell")
    with pytest.raises(ValueError, match="the LSTMCell params have no ii/kernel"):
        interop.from_flax({"params": {"i": {"kernel": jnp.ones((3, 5))}}}, "LSTMCell")
    with pytest.raises(TypeError, match=r"source must be a flax\.nnx LSTMCell"):
        interop.from_flax(nnx.Linear(3, 4, rngs=nnx.Rngs(0)))
    with pytest.raises(ValueError, match="residual=True"):
        interop.from_flax(nnx.SimpleCell(D, H, residual=True, rngs=nnx.Rngs(0)))
    small = nnx.LSTMCell(D, H + 1, rngs=nnx.Rngs(0))
    _, lstm_params = interop.from_flax(nnx.LSTMCell(D, H, rngs=nnx.Rngs(0)))
    with pytest.raises(ValueError, match="Build the Flax cell with the same"):
        interop.to_flax(lstm_params, small)
