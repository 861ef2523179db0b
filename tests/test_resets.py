"""``unroll(..., resets=...)`` against its definition: running each segment on its own.

A row with resets is cut into segments at its flagged steps (within its length); each segment
runs alone from the initial carry, with ``unroll`` and no resets. Outputs, the final carry and
the gradients with respect to params, inputs and the initial carry must equal those of one
``unroll`` with ``resets``, in float64, on every path: the scan, the custom VJP (whole and
remat), plain autodiff, the parallel scan (log space, chunked), forward and reversed; and the
native kernels, in float32, against the scan.

With ``reset_carry`` the restarts go back to a carry of their own: the first segment of each
row runs from ``carry``, every later one from ``reset_carry``.
"""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import seqjax

B, T, D, H = 3, 9, 3, 4
LENGTHS = np.array([9, 6, 4])
# Row 0: three segments; row 1: a reset at its first step (a no-op) and one inside; row 2: a
# reset past its length (padding: ignored) and none inside.
RESETS = np.zeros((B, T), bool)
RESETS[0, [3, 7]] = True
RESETS[1, [0, 2]] = True
RESETS[2, [5]] = True

CELLS = {
    "lstm": lambda: seqjax.lstm(H),
    "gru": lambda: seqjax.gru(H),
    "rnn": lambda: seqjax.simple_rnn(H),
    "gru_reset_before": lambda: seqjax.gru(H, reset_after=False),
    "lstm_peephole": lambda: seqjax.lstm(H, peephole=True),
    "min_gru_log": lambda: seqjax.min_gru(H, log_space=True),
    "min_lstm": lambda: seqjax.min_lstm(H),
    "lru": lambda: seqjax.lru(H, D),
}
LINEAR = {"min_gru_log", "min_lstm", "lru"}
PATHS = {
    "default": {},
    "remat": {"remat": True},
    "autodiff": {"custom_vjp": False},
    "autodiff_remat": {"custom_vjp": False, "remat": True},
    "unroll2": {"unroll": 2, "native": False},
    "parallel": {"parallel": True},
    "parallel_chunks": {"parallel": True, "chunk_size": 4},
    "parallel_remat": {"parallel": True, "remat": True},
}


def segments(row: int) -> list[tuple[int, int]]:
    starts = [0] + [t for t in range(1, LENGTHS[row]) if RESETS[row, t]]
    return list(zip(starts, [*starts[1:], int(LENGTHS[row])], strict=True))


def reference(cell, params, xs, carry, reverse):
    """Every segment of every row run alone; outputs zero past each length."""
    ys_rows, finals = [], []
    for row in range(B):
        pieces, final = [], None
        row_carry = jax.tree.map(lambda c, r=row: c[r : r + 1], carry)
        for start, end in segments(row):
            seg_final, seg_ys = seqjax.unroll(
                cell, params, xs[row : row + 1, start:end], carry=row_carry, reverse=reverse,
                native=False,
            )  # fmt: skip
            pieces.append(seg_ys)
            if final is None or not reverse:  # reversed: the carry after the first segment
                final = seg_final if not reverse or final is None else final
        pad = jnp.zeros((1, T - int(LENGTHS[row]), pieces[0].shape[-1]), pieces[0].dtype)
        ys_rows.append(jnp.concatenate([*pieces, pad], axis=1))
        finals.append(final)
    return jax.tree.map(lambda *r: jnp.concatenate(r), *finals), jnp.concatenate(ys_rows)


def loss(out):
    final, ys = out
    weights = jnp.linspace(0.5, 1.5, ys.size).reshape(ys.shape)
    return jnp.sum(weights * jnp.sin(ys)) + sum(jnp.sum(c**2) for c in jax.tree.leaves(final))


# Each unroll path with the cells that take it, forward, and the main ones reversed too (the
# test compiles one reference per cell and direction, so the matrix is chosen, not crossed).
FORWARD = [
    *[("lstm", path) for path in ("default", "remat", "autodiff", "unroll2")],
    *[("gru", path) for path in ("default", "remat")],
    ("rnn", "default"),
    ("gru_reset_before", "default"),
    ("lstm_peephole", "autodiff_remat"),
    *[("min_gru_log", path) for path in ("default", "parallel_chunks")],
    ("min_lstm", "parallel_remat"),
    ("lru", "parallel"),
]
REVERSED = [
    ("lstm", "default"),
    ("lstm", "remat"),
    ("lstm", "autodiff"),
    ("gru", "remat"),
    ("min_gru_log", "parallel"),
    ("lru", "parallel"),
]
CASES = [(*case, False) for case in FORWARD] + [(*case, True) for case in REVERSED]


@pytest.mark.parametrize("name, path, reverse", CASES)
def test_resets_equal_running_each_segment_alone(x64, name, path, reverse):
    options = PATHS[path]
    assert not options.get("parallel") or name in LINEAR
    cell, params, xs, carry = _inputs(name)
    lengths, resets = jnp.asarray(LENGTHS), jnp.asarray(RESETS)

    def ours(p, x, c):
        return seqjax.unroll(cell, p, x, carry=c, lengths=lengths, resets=resets,
                             reverse=reverse, **options)  # fmt: skip

    want, want_grads = _reference_and_gradients(name, reverse)
    ours = jax.jit(ours)
    got = ours(params, xs, carry)
    np.testing.assert_allclose(got[1], want[1], rtol=1e-9, atol=1e-12)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-12),
                 got[0], want[0])  # fmt: skip
    grads = jax.jit(jax.grad(lambda *a: loss(ours(*a)), argnums=(0, 1, 2)))(params, xs, carry)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-8, atol=1e-10),
                 grads, want_grads)  # fmt: skip


_REFERENCES: dict = {}


def _reference_and_gradients(name: str, reverse: bool):
    """The segment-by-segment outputs and gradients, once per cell and direction: they do not
    depend on the path under test."""
    if (name, reverse) not in _REFERENCES:
        cell, params, xs, carry = _inputs(name)
        run = jax.jit(lambda *a: reference(cell, *a, reverse))  # one compile, not one a segment
        want = run(params, xs, carry)
        grads = jax.jit(jax.grad(lambda *a: loss(run(*a)), argnums=(0, 1, 2)))(params, xs, carry)
        _REFERENCES[name, reverse] = (want, grads)
    return _REFERENCES[name, reverse]


def _inputs(name: str):
    cell = CELLS[name]()
    params = cell.init(jax.random.key(0), D)
    xs = jax.random.normal(jax.random.key(1), (B, T, D))
    carry = jax.tree.map(
        lambda c: c + 0.3 * jax.random.normal(jax.random.key(2), c.shape),
        cell.initial_carry(params, (B,)),
    )
    return cell, params, xs, carry


def test_a_reset_stops_the_gradient():
    cell = seqjax.gru(H)
    params = cell.init(jax.random.key(0), D)
    xs = jax.random.normal(jax.random.key(1), (1, T, D))
    resets = jnp.zeros((1, T), bool).at[0, 5].set(True)
    d_xs = jax.grad(lambda x: jnp.sum(seqjax.unroll(cell, params, x, resets=resets)[1][:, 5:]))(xs)
    assert np.all(np.asarray(d_xs[:, :5]) == 0)  # nothing after the reset depends on before
    assert np.all(np.abs(np.asarray(d_xs[:, 5:])).sum(-1) > 0)


@pytest.mark.parametrize(
    "resets, error, message",
    [
        (np.zeros((B, T)), TypeError, "resets must be a boolean array"),
        (np.zeros((B, T, 1), bool), ValueError, "resets must have the shape of xs without"),
        (np.zeros((T, B), bool), ValueError, "(batch..., time) = (3, 9); got shape (9, 3)"),
    ],
)
def test_bad_resets_are_refused_by_name(resets, error, message):
    cell = seqjax.lstm(H)
    params = cell.init(jax.random.key(0), D)
    with pytest.raises(error, match=message.replace("(", r"\(").replace(")", r"\)")):
        seqjax.unroll(cell, params, jnp.ones((B, T, D)), resets=resets)


# The native kernels (float32) restart the carry in the loop itself: against the scan with the
# same resets in float32 (which the float64 cases above hold to the segment-by-segment
# definition), with lengths, on a chosen matrix of kernel, direction, remat (chunks of 3, 3 and a
# tail of 1 over 7 steps) and layout.
NATIVE_CELLS = {
    "lstm": seqjax.lstm,
    "gru": seqjax.gru,
    "rnn_tanh": seqjax.simple_rnn,
    "rnn_relu": lambda h: seqjax.simple_rnn(h, activation="relu"),
}
NATIVE_RESETS = np.zeros((B, 7), bool)
NATIVE_RESETS[0, [0, 3, 5]] = True
NATIVE_RESETS[1, [2, 4, 6]] = True  # step 6 is past row 1's length: ignored
NATIVE_RESETS[2, [1]] = True
NATIVE_CASES = [
    ("lstm", {}),
    ("lstm", {"reverse": True, "remat": True}),
    ("lstm", {"time_major": True}),
    ("gru", {"reverse": True}),
    ("gru", {"remat": True}),
    ("rnn_tanh", {"remat": True}),
    ("rnn_relu", {"reverse": True}),
]


@pytest.mark.parametrize("name, options", NATIVE_CASES, ids=lambda v: str(v))
def test_native_kernels_restart_like_the_scan(name, options):
    if seqjax.native.unavailable_reason() is not None:
        pytest.skip("no native kernels here")
    cell = NATIVE_CELLS[name](6)
    params = jax.tree.map(
        lambda p: p + 0.2 * jax.random.normal(jax.random.key(7), p.shape),
        cell.init(jax.random.key(0), D),
    )
    xs = jax.random.normal(jax.random.key(1), (B, 7, D))
    carry = jax.tree.map(
        lambda c: 0.5 * jax.random.normal(jax.random.key(2), c.shape),
        cell.initial_carry(params, (B,)),
    )
    resets, lengths = jnp.asarray(NATIVE_RESETS), jnp.array([7, 5, 3])
    if options.get("time_major"):
        xs, resets = jnp.swapaxes(xs, 0, 1), resets.T

    def value_and_grads(native):
        def run(p, x, c):
            out = seqjax.unroll(cell, p, x, carry=c, lengths=lengths, resets=resets,
                                native=native, **options)  # fmt: skip
            return loss(out), out

        return jax.jit(jax.value_and_grad(run, argnums=(0, 1, 2), has_aux=True))

    got = value_and_grads(True)
    program = got.lower(params, xs, carry).as_text()
    kernel = name.split("_")[0]
    for target in ("forward", "backward"):  # the kernels ran, restarting, not the scan
        assert f"seqjax_{kernel}_{target}_restarting" in program
    got, want = got(params, xs, carry), value_and_grads(False)(params, xs, carry)
    for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
        scale = float(jnp.max(jnp.abs(w))) + 1.0
        np.testing.assert_allclose(np.asarray(g), np.asarray(w), rtol=2e-5, atol=2e-5 * scale)


def test_a_bidirectional_stack_over_packed_segments_equals_each_segment_alone():
    """The packed-documents case: a two-layer bidirectional model over rows holding several
    segments gives, on every segment, what it gives on that segment alone."""
    model = seqjax.stack(
        seqjax.bidirectional(seqjax.rnn(seqjax.gru(H)), seqjax.rnn(seqjax.lstm(H))),
        seqjax.rnn(seqjax.min_gru(H), parallel=True),
    )
    params = model.init(jax.random.key(0), D)
    xs = jax.random.normal(jax.random.key(1), (B, T, D))
    lengths, resets = jnp.asarray(LENGTHS), jnp.asarray(RESETS)
    _, ys = jax.jit(lambda x: model.apply(params, x, lengths=lengths, resets=resets))(xs)
    for row in range(B):
        for start, end in segments(row):
            _, alone = model.apply(params, xs[row : row + 1, start:end])
            np.testing.assert_allclose(ys[row, start:end], alone[0], rtol=2e-5, atol=2e-6)
        assert np.all(np.asarray(ys[row, LENGTHS[row] :]) == 0)


def test_nnx_modules_take_resets_like_the_functional_layers():
    from flax import nnx

    import seqjax.nn as snn

    forward, backward = snn.GRU(D, H, rngs=nnx.Rngs(0)), snn.LSTM(D, H, rngs=nnx.Rngs(1))
    both = snn.Bidirectional(forward, backward)
    model = snn.Stack(both, snn.GRU(2 * H, H, rngs=nnx.Rngs(2)))
    xs = jax.random.normal(jax.random.key(1), (B, T, D))
    lengths, resets = jnp.asarray(LENGTHS), jnp.asarray(RESETS)
    ys = model(xs, seq_lengths=lengths, resets=resets)
    layer = seqjax.stack(
        seqjax.bidirectional(seqjax.rnn(forward.cell), seqjax.rnn(backward.cell)),
        seqjax.rnn(model.layers[1].cell),
    )
    params = ({"forward": forward.params, "backward": backward.params}, model.layers[1].params)
    _, want = layer.apply(params, xs, lengths=lengths, resets=resets)
    np.testing.assert_allclose(ys, want, rtol=1e-5, atol=1e-6)
    # and the module restarts for real: row 0's third segment equals that segment alone
    alone = model(xs[:1, 7:9])
    np.testing.assert_allclose(ys[0, 7:9], alone[0], rtol=1e-5, atol=1e-6)


# reset_carry: a run that goes on from one carry and restarts new segments from another (an RL
# rollout continuing mid-episode).
RESET_CARRY_CASES = [
    ("lstm", {}),
    ("lstm", {"remat": True}),
    ("gru", {"custom_vjp": False}),
    ("min_gru_log", {"parallel": True}),
    ("lru", {"parallel": True, "chunk_size": 4}),
]


def reference_with_reset_carry(cell, params, xs, carry, restart):
    """Each row's first segment from ``carry``, every later one (and the first, where
    flagged) from ``restart``, each alone."""
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


@pytest.mark.parametrize(("cell_name", "options"), RESET_CARRY_CASES)
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
        return reference_with_reset_carry(cell, params, xs, carry, restart)

    args = (params, xs, carry, restart)
    # Jitted, both sides: the reference's many short segments cost ~4x more dispatched eagerly.
    run, ref = jax.jit(run), jax.jit(ref)
    chex.assert_trees_all_close(run(*args), ref(*args), rtol=1e-10, atol=1e-10)
    grads = jax.jit(jax.grad(lambda *a: loss(run(*a)), argnums=(0, 1, 2, 3)))(*args)
    expected = jax.jit(jax.grad(lambda *a: loss(ref(*a)), argnums=(0, 1, 2, 3)))(*args)
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
