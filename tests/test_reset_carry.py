"""``unroll(..., resets=, reset_carry=)``: a run that goes on from one carry and restarts each
new segment from another (an RL rollout that continues mid-episode, a stream of packed
documents). Its definition: the first segment of each row runs from ``carry``, every later one
(and the first, where flagged) from ``reset_carry``, each alone. Outputs, final carry and the
gradients with respect to params, inputs, ``carry`` and ``reset_carry`` must match, in float64,
on each kind of path."""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import seqjax

B, T, D, H = 3, 9, 3, 4
LENGTHS = np.array([9, 6, 4])
RESETS = np.zeros((B, T), bool)
RESETS[0, [3, 7]] = True
RESETS[1, [0, 2]] = True
RESETS[2, [5]] = True
CELLS = {
    "lstm": lambda: seqjax.lstm(H),
    "gru": lambda: seqjax.gru(H),
    "rnn": lambda: seqjax.simple_rnn(H),
    "min_gru_log": lambda: seqjax.min_gru(H, log_space=True),
    "lru": lambda: seqjax.lru(H, D),
}
CASES = [
    ("lstm", {}),
    ("lstm", {"remat": True}),
    ("gru", {"custom_vjp": False}),
    ("min_gru_log", {"parallel": True}),
    ("lru", {"parallel": True, "chunk_size": 4}),
]


def segments(row: int) -> list[tuple[int, int]]:
    starts = [0] + [t for t in range(1, LENGTHS[row]) if RESETS[row, t]]
    return list(zip(starts, [*starts[1:], int(LENGTHS[row])], strict=True))


def reference(cell, params, xs, carry, restart):
    ys_rows, finals = [], []
    for row in range(B):
        pieces = []
        c = jax.tree.map(lambda a, r=row: a[r : r + 1], carry)
        for i, (start, end) in enumerate(segments(row)):
            if i > 0 or RESETS[row, 0]:
                c = jax.tree.map(lambda a, r=row: a[r : r + 1], restart)
            c, ys = seqjax.unroll(cell, params, xs[row : row + 1, start:end], carry=c, native=False)
            pieces.append(ys)
        pad = jnp.zeros((1, T - int(LENGTHS[row]), pieces[0].shape[-1]), pieces[0].dtype)
        ys_rows.append(jnp.concatenate([*pieces, pad], axis=1))
        finals.append(c)
    return jax.tree.map(lambda *r: jnp.concatenate(r), *finals), jnp.concatenate(ys_rows)


def loss(out):
    final, ys = out
    weights = jnp.linspace(0.5, 1.5, ys.size).reshape(ys.shape)
    return jnp.sum(weights * jnp.sin(ys)) + sum(jnp.sum(c**2) for c in jax.tree.leaves(final))


@pytest.mark.parametrize(("cell_name", "options"), CASES)
def test_restarts_from_reset_carry_equal_each_segment_alone(x64, cell_name, options):
    cell = CELLS[cell_name]()
    params = cell.init(jax.random.key(0), D, jnp.float64)
    xs = jax.random.normal(jax.random.key(1), (B, T, D), jnp.float64)
    zeros = cell.initial_carry(params, (B,))
    noise = lambda k: jax.tree.map(  # noqa: E731
        lambda a: jax.random.normal(jax.random.key(k), a.shape, a.dtype), zeros
    )
    carry, restart = noise(2), noise(3)

    def run(params, xs, carry, restart):
        return seqjax.unroll(
            cell, params, xs, carry=carry, lengths=LENGTHS, resets=jnp.asarray(RESETS),
            reset_carry=restart, **options,
        )  # fmt: skip

    def ref(params, xs, carry, restart):
        return reference(cell, params, xs, carry, restart)

    args = (params, xs, carry, restart)
    chex.assert_trees_all_close(run(*args), ref(*args), rtol=1e-10, atol=1e-10)
    grads = jax.grad(lambda *a: loss(run(*a)), argnums=(0, 1, 2, 3))(*args)
    expected = jax.grad(lambda *a: loss(ref(*a)), argnums=(0, 1, 2, 3))(*args)
    chex.assert_trees_all_close(grads, expected, rtol=1e-9, atol=1e-9)


def test_layers_pass_reset_carry_on(x64):
    """A stack restarts each layer from its own entry of ``reset_carry``."""
    layer = seqjax.stack(seqjax.rnn(seqjax.gru(H)), seqjax.rnn(seqjax.lstm(H)))
    params = layer.init(jax.random.key(0), D, jnp.float64)
    xs = jax.random.normal(jax.random.key(1), (B, T, D), jnp.float64)
    start = jax.tree.map(lambda a: a + 0.5, layer.initial_carry(params, (B,)))
    restart = jax.tree.map(lambda a: a - 0.25, start)
    resets = jnp.asarray(RESETS)
    final, ys = layer.apply(params, xs, carry=start, resets=resets, reset_carry=restart)
    carry0, h = start[0], xs
    c0, h = seqjax.unroll(seqjax.gru(H), params[0], h, carry=carry0, resets=resets,
                          reset_carry=restart[0])  # fmt: skip
    c1, h = seqjax.unroll(seqjax.lstm(H), params[1], h, carry=start[1], resets=resets,
                          reset_carry=restart[1])  # fmt: skip
    chex.assert_trees_all_close((final, ys), ((c0, c1), h), rtol=1e-12, atol=1e-12)


def test_bad_reset_carry_gets_a_named_error():
    cell = seqjax.lstm(H)
    params = cell.init(jax.random.key(0), D)
    xs = jnp.ones((B, T, D))
    with pytest.raises(ValueError, match="unroll: reset_carry is the carry resets restart from"):
        seqjax.unroll(cell, params, xs, reset_carry=cell.initial_carry(params, (B,)))
    with pytest.raises(ValueError, match="unroll: reset_carry has a leaf of shape"):
        seqjax.unroll(cell, params, xs, resets=jnp.asarray(RESETS),
                      reset_carry=cell.initial_carry(params, (2,)))  # fmt: skip
