"""Layers and combinators: ``rnn``, ``bidirectional``, ``stack`` and dropout between layers."""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import seqjax

D, H, T, B = 3, 4, 6, 3


def scaling_cell(size: int) -> seqjax.Cell:
    """A user-defined cell with no recurrence: y_t = scale * x_t. It leaves ``project`` as the
    identity, which the protocol allows, and makes what happens between layers visible."""
    return seqjax.Cell(
        init=lambda key, input_size, dtype=None: {"scale": jnp.ones((), dtype or jnp.float32)},
        initial_carry=lambda params, batch_shape=(): jnp.zeros(batch_shape, params["scale"].dtype),
        project=seqjax.cell.identity_projection,
        recur=lambda params, carry, x: (carry, params["scale"] * x),
        output_size=size,
        name="scaling",
    )


def test_rnn_layer_is_unroll():
    cell = seqjax.lstm(H)
    layer = seqjax.rnn(cell, reverse=True)
    params = layer.init(jax.random.key(0), D)
    xs = jax.random.normal(jax.random.key(1), (B, T, D))
    lengths = jnp.array([6, 2, 4])
    chex.assert_trees_all_close(
        layer.apply(params, xs, lengths=lengths),
        seqjax.unroll(cell, params, xs, lengths=lengths, reverse=True),
    )
    assert layer.output_size == H


@pytest.mark.parametrize("time_major", [False, True])
def test_bidirectional_is_forward_and_per_sequence_reverse(time_major):
    fwd, bwd = seqjax.gru(H), seqjax.lstm(H + 1)
    layer = seqjax.bidirectional(
        seqjax.rnn(fwd, time_major=time_major), seqjax.rnn(bwd, time_major=time_major)
    )
    params = layer.init(jax.random.key(0), D)
    xs = jax.random.normal(jax.random.key(1), (B, T, D))
    lengths = jnp.array([6, 3, 1])
    inputs = jnp.swapaxes(xs, 0, 1) if time_major else xs
    (final_f, final_b), ys = layer.apply(params, inputs, lengths=lengths)
    if time_major:
        ys = jnp.swapaxes(ys, 0, 1)
    assert layer.output_size == 2 * H + 1
    chex.assert_shape(ys, (B, T, 2 * H + 1))
    ref_f = seqjax.unroll(fwd, params["forward"], xs, lengths=lengths)
    ref_b = seqjax.unroll(bwd, params["backward"], xs, lengths=lengths, reverse=True)
    chex.assert_trees_all_close((final_f, ys[..., :H]), ref_f, atol=1e-6)
    chex.assert_trees_all_close((final_b, ys[..., H:]), ref_b, atol=1e-6)


def test_stack_feeds_each_layer_the_previous_outputs():
    a, b = seqjax.rnn(seqjax.gru(H)), seqjax.rnn(seqjax.simple_rnn(H + 2))
    layer = seqjax.stack(a, b)
    params = layer.init(jax.random.key(0), D)
    assert params[0]["w_ih"].shape == (D, 3 * H)
    assert params[1]["w_ih"].shape == (H, H + 2)
    xs = jax.random.normal(jax.random.key(1), (B, T, D))
    lengths = jnp.array([6, 5, 2])
    (c0, c1), ys = layer.apply(params, xs, lengths=lengths)
    ref0, mid = a.apply(params[0], xs, lengths=lengths)
    ref1, ref_ys = b.apply(params[1], mid, lengths=lengths)
    chex.assert_trees_all_close((c0, c1, ys), (ref0, ref1, ref_ys))
    chex.assert_trees_all_equal_structs(layer.initial_carry(params, (B,)), (c0, c1))


def test_stack_carry_goes_to_each_layer():
    layer = seqjax.stack(seqjax.rnn(seqjax.gru(H)), seqjax.rnn(seqjax.gru(H)))
    params = layer.init(jax.random.key(0), D)
    xs = jax.random.normal(jax.random.key(1), (B, T, D))
    carry = (jnp.ones((B, H)), -jnp.ones((B, H)))
    _, ys = layer.apply(params, xs, carry=carry)
    _, mid = seqjax.unroll(seqjax.gru(H), params[0], xs, carry=carry[0])
    _, ref = seqjax.unroll(seqjax.gru(H), params[1], mid, carry=carry[1])
    chex.assert_trees_all_close(ys, ref)


def test_dropout_between_layers_only_with_a_key():
    rate = 0.25
    layer = seqjax.stack(seqjax.rnn(scaling_cell(D)), seqjax.rnn(scaling_cell(D)), dropout=rate)
    params = layer.init(jax.random.key(0), D)
    xs = 1.0 + jax.random.uniform(jax.random.key(1), (64, 32, D))  # no zeros of its own
    _, deterministic = layer.apply(params, xs)
    np.testing.assert_array_equal(deterministic, xs)  # no key: no dropout
    _, dropped = layer.apply(params, xs, key=jax.random.key(2))
    zeros = np.asarray(dropped == 0.0)
    assert abs(zeros.mean() - rate) < 0.02  # dropped once (between the layers), not twice
    kept = ~zeros
    np.testing.assert_allclose(
        np.asarray(dropped)[kept], np.asarray(xs)[kept] / (1 - rate), rtol=1e-6
    )
    _, again = layer.apply(params, xs, key=jax.random.key(2))
    np.testing.assert_array_equal(dropped, again)
    _, other = layer.apply(params, xs, key=jax.random.key(3))
    assert not np.array_equal(dropped, other)


def test_single_layer_stack_never_drops():
    layer = seqjax.stack(seqjax.rnn(scaling_cell(D)), dropout=0.5)
    params = layer.init(jax.random.key(0), D)
    xs = jnp.ones((2, 5, D))
    np.testing.assert_array_equal(layer.apply(params, xs, key=jax.random.key(1))[1], xs)


def test_layers_nest_and_jit():
    layer = seqjax.stack(
        seqjax.bidirectional(seqjax.rnn(seqjax.lstm(H)), seqjax.rnn(seqjax.lstm(H))),
        seqjax.rnn(seqjax.gru(H)),
        dropout=0.1,
    )
    params = layer.init(jax.random.key(0), D)
    xs = jax.random.normal(jax.random.key(1), (B, T, D))
    lengths = jnp.array([6, 4, 3])
    run = lambda p, x, n, k: layer.apply(p, x, lengths=n, key=k)  # noqa: E731
    eager = run(params, xs, lengths, jax.random.key(5))
    jitted = jax.jit(run)(params, xs, lengths, jax.random.key(5))
    chex.assert_trees_all_close(eager, jitted, atol=1e-6)
    grads = jax.grad(lambda p: jnp.sum(run(p, xs, lengths, jax.random.key(5))[1]))(params)
    chex.assert_trees_all_equal_structs(grads, params)
    chex.assert_tree_all_finite(grads)
