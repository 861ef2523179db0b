"""The RG-LRU cell and the Griffin recurrent block: parity with DeepMind's recurrentgemma
(golden vectors in float64, tests/data/golden/make_recurrentgemma.py), a NumPy float64 loop,
finite differences, the unroll modes, the layer combinators, streaming and the errors."""

from __future__ import annotations

import functools
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import load_golden

import seqjax
from seqjax.blocks.griffin import GriffinCarry, griffin_block
from seqjax.cells.rg_lru import bounded_sqrt, rg_lru

TOL = dict(rtol=1e-10, atol=1e-10)  # float64 parity with the reference


def golden():
    return load_golden("recurrentgemma_rglru.npz")[1]


def cell_params(g, prefix):
    """recurrentgemma's RGLRU params in seqjax's layout: the a_gate is r, the input_gate i."""
    p = lambda k: jnp.asarray(g[f"{prefix}/{k}"])  # noqa: E731
    return {"a_param": p("a_param"), "w_r": p("a_gate/w"), "b_r": p("a_gate/b"),
            "w_i": p("input_gate/w"), "b_i": p("input_gate/b")}  # fmt: skip


def block_params(g, prefix="block/param"):
    """recurrentgemma's RecurrentBlock params in seqjax's layout (flax Dense kernels are already
    (in, out); the conv's w (width, L) is kept as is)."""
    p = lambda k: jnp.asarray(g[f"{prefix}/{k}"])  # noqa: E731
    return {
        "w_x": p("linear_x/kernel"), "b_x": p("linear_x/bias"),
        "w_y": p("linear_y/kernel"), "b_y": p("linear_y/bias"),
        "conv_w": p("conv_1d/w"), "conv_b": p("conv_1d/b"),
        "w_out": p("linear_out/kernel"), "b_out": p("linear_out/bias"),
        "rg_lru": cell_params(g, f"{prefix}/rg_lru"),
    }  # fmt: skip


def assert_close(got, want, **tol):
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), **(tol or TOL))


# --- parity with recurrentgemma -------------------------------------------------------------


@pytest.mark.parametrize("parallel", [False, True])
def test_cell_matches_recurrentgemma_with_document_starts(x64, parallel):
    g = golden()
    cell = rg_lru(8, num_heads=2, document_starts=True)
    starts = (g["cell/segment_pos"] == 0)[..., None].astype(np.float64)

    def loss(params, x):
        h, y = seqjax.unroll(cell, params, jnp.concatenate([x, starts], -1), parallel=parallel)
        return jnp.sum(y * g["cell/cot/y"]) + jnp.sum(h * g["cell/cot/h_last"]), (y, h)

    grads, (y, h) = jax.jit(jax.grad(loss, (0, 1), has_aux=True))(
        cell_params(g, "cell/param"), g["cell/x"]
    )
    assert_close(y, g["cell/y"])
    assert_close(h, g["cell/h_last"])
    assert_close(grads[1], g["cell/grad/x"])
    for name, value in cell_params(g, "cell/grad/param").items():
        assert_close(grads[0][name], value)


@pytest.mark.parametrize("parallel", [False, True])
def test_cell_matches_recurrentgemma_continuing_a_state(x64, parallel):
    """No document start (positions 4..11) and a cache: the plain normalised recurrence."""
    g = golden()
    cell = rg_lru(8, num_heads=2)

    def loss(params, x, h0):
        h, y = seqjax.unroll(cell, params, x, carry=h0, parallel=parallel)
        return jnp.sum(y * g["cell_cont/cot/y"]) + jnp.sum(h * g["cell_cont/cot/h_last"]), (y, h)

    args = (cell_params(g, "cell_cont/param"), g["cell_cont/x"], g["cell_cont/h0"])
    grads, (y, h) = jax.jit(jax.grad(loss, (0, 1, 2), has_aux=True))(*args)
    assert_close(y, g["cell_cont/y"])
    assert_close(h, g["cell_cont/h_last"])
    assert_close(grads[1], g["cell_cont/grad/x"])
    assert_close(grads[2], g["cell_cont/grad/h0"])
    for name, value in cell_params(g, "cell_cont/grad/param").items():
        assert_close(grads[0][name], value)


@pytest.mark.parametrize("parallel", [False, True])
def test_block_matches_recurrentgemma(x64, parallel):
    g = golden()
    block = griffin_block(6, lru_width=8, num_heads=2, parallel=parallel)
    resets = jnp.asarray(g["block/segment_pos"] == 0)

    def loss(params, x):
        carry, y = block.apply(params, x, resets=resets)
        conv = carry.conv.reshape(g["block/conv_last"].shape)
        value = jnp.sum(y * g["block/cot/y"]) + jnp.sum(carry.h * g["block/cot/h_last"])
        return value + jnp.sum(conv * g["block/cot/conv_last"]), (y, carry)

    grads, (y, carry) = jax.jit(jax.grad(loss, (0, 1), has_aux=True))(block_params(g), g["block/x"])
    assert_close(y, g["block/y"])
    assert_close(carry.h, g["block/h_last"])
    assert_close(carry.conv.reshape(g["block/conv_last"].shape), g["block/conv_last"])
    assert_close(grads[1], g["block/grad/x"])
    for path, want in jax.tree_util.tree_leaves_with_path(block_params(g, "block/grad/param")):
        got = grads[0]
        for k in path:
            got = got[k.key]
        assert_close(got, want)
    # The reference's decode path, one token at a time from the cache, against one chunk here.
    carry, y_next = jax.jit(block.apply)(block_params(g), g["block/x_next"], carry=carry)
    assert_close(y_next, g["block/y_next"])
    assert_close(carry.h, g["block/h_next"])
    assert_close(carry.conv.reshape(g["block/conv_next"].shape), g["block/conv_next"])


def test_a_fresh_carry_starts_a_document_and_resets_restart_one_row(x64):
    """Without resets the first step of a fresh carry is still a document start (rows 0 and 2
    equal the reference); row 1's second document then runs on, and differs."""
    g = golden()
    block = griffin_block(6, lru_width=8, num_heads=2)
    _, y = jax.jit(block.apply)(block_params(g), g["block/x"])
    assert_close(y[0::2], g["block/y"][0::2])
    assert not np.allclose(y[1, 3:], g["block/y"][1, 3:], atol=1e-3)


# --- an independent NumPy reference ---------------------------------------------------------


def numpy_rg_lru(params, xs, h0, c=8.0):
    """The RG-LRU's recurrence in a float64 NumPy loop over one sequence ``xs (T, H)``."""
    p = {k: np.asarray(v, np.float64) for k, v in params.items()}
    heads, d, _ = p["w_r"].shape
    sig = lambda v: 1 / (1 + np.exp(-v))  # noqa: E731
    h, ys = np.asarray(h0, np.float64), []
    for x in np.asarray(xs, np.float64):
        xh = x.reshape(heads, d)
        r = sig(np.einsum("hi,hij->hj", xh, p["w_r"]) + p["b_r"]).reshape(-1)
        i = sig(np.einsum("hi,hij->hj", xh, p["w_i"]) + p["b_i"]).reshape(-1)
        a = np.exp(-c * r * np.log1p(np.exp(p["a_param"])))
        h = a * h + np.sqrt(1 - a**2) * i * x
        ys.append(h)
    return h, np.stack(ys)


def sample(H=8, heads=2, B=3, T=7):
    cell = rg_lru(H, num_heads=heads)
    params = cell.init(jax.random.key(0), H)
    params = jax.tree.map(lambda p: p + 0.3 * jax.random.normal(jax.random.key(3), p.shape),
                          params)  # fmt: skip
    xs = jax.random.normal(jax.random.key(1), (B, T, H))
    h0 = jax.random.normal(jax.random.key(2), (B, H))
    return cell, params, xs, h0


@pytest.mark.parametrize(
    "mode",
    [dict(), dict(parallel=True), dict(remat=True), dict(parallel=True, chunk_size=3, remat=True)],
)
def test_unroll_modes_match_the_numpy_loop(x64, mode):
    """lengths, reverse and resets, each sequence run alone in the NumPy loop."""
    cell, params, xs, h0 = sample()
    lengths = np.array([7, 4, 1])
    resets = np.zeros((3, 7), bool)
    resets[0, 3] = resets[1, 2] = True
    run = jax.jit(functools.partial(seqjax.unroll, cell, **mode), static_argnames="reverse")
    for reverse in (False, True):
        h, ys = run(params, xs, h0, lengths, reverse=reverse, resets=jnp.asarray(resets))
        for b, n in enumerate(lengths):
            x = np.asarray(xs[b, :n])
            cuts = sorted({0, *np.flatnonzero(resets[b, :n]), n})
            want = np.zeros((7, 8))
            segments = list(itertools.pairwise(cuts))
            order = segments[::-1] if reverse else segments
            state = np.asarray(h0[b])
            for k, (s, e) in enumerate(order):
                start = state if k == 0 else np.asarray(h0[b])
                seg = x[s:e][::-1] if reverse else x[s:e]
                state, out = numpy_rg_lru(params, seg, start)
                want[s:e] = out[::-1] if reverse else out
            assert_close(ys[b], want)
            assert_close(h[b], state)


@pytest.mark.parametrize("parallel", [False, True])
def test_gradients_match_finite_differences(x64, parallel):
    from jax.test_util import check_grads

    cell, params, xs, h0 = sample(B=2, T=4)
    f = jax.jit(lambda p, x, h: seqjax.unroll(cell, p, x, carry=h, parallel=parallel)[1])
    check_grads(f, (params, xs, h0), order=1, modes=["fwd", "rev"], eps=1e-4)


def test_block_gradients_match_finite_differences(x64):
    from jax.test_util import check_grads

    block = griffin_block(4, num_heads=2, conv_width=3)
    params = block.init(jax.random.key(0), 3)
    xs = jax.random.normal(jax.random.key(1), (2, 5, 3))
    resets = jnp.zeros((2, 5), bool).at[1, 2].set(True)
    f = jax.jit(lambda p, x: block.apply(p, x, resets=resets, lengths=jnp.array([5, 4]))[1])
    check_grads(f, (params, xs), order=1, modes=["rev"], eps=1e-4)


def test_bounded_sqrt_derivative():
    """sqrt's derivative is capped at 1000 (the reference's), and exact above the cap."""
    assert float(jax.grad(bounded_sqrt)(1e-12)) == pytest.approx(1000.0)
    assert float(jax.grad(bounded_sqrt)(0.25)) == pytest.approx(1.0)
    assert float(jax.grad(jax.grad(bounded_sqrt))(0.25)) == pytest.approx(-2.0)


def test_init_puts_the_base_decay_on_the_ring():
    params = rg_lru(64, min_rad=0.9, max_rad=0.999).init(jax.random.key(0), 64)
    a = np.exp(-np.log1p(np.exp(np.asarray(params["a_param"], np.float64))))
    assert 0.9 - 1e-6 <= a.min() and a.max() <= 0.999 + 1e-6 and a.max() - a.min() > 0.05
    assert params["w_r"].shape == (1, 64, 64) and params["b_i"].shape == (1, 64)


# --- layers ---------------------------------------------------------------------------------


def test_cell_in_rnn_stack_and_bidirectional():
    cell, params, xs, _ = sample(T=6)
    lengths = jnp.array([6, 3, 2])
    layer = seqjax.layers.stack(seqjax.rnn(cell), seqjax.rnn(cell, parallel=True))
    stacked = layer.init(jax.random.key(5), 8)
    _, ys = jax.jit(layer.apply)(stacked, xs, lengths=lengths)
    run = jax.jit(functools.partial(seqjax.unroll, cell), static_argnames="reverse")
    _, mid = run(stacked[0], xs, lengths=lengths)
    _, want = run(stacked[1], mid, lengths=lengths)
    assert_close(ys, want, rtol=1e-5, atol=1e-6)
    both = seqjax.layers.bidirectional(seqjax.rnn(cell), seqjax.rnn(cell, parallel=True))
    _, ys = jax.jit(both.apply)({"forward": params, "backward": params}, xs, lengths=lengths)
    _, back = run(params, xs, lengths=lengths, reverse=True)
    assert_close(ys[..., 8:], back, rtol=1e-5, atol=1e-6)
    assert ys.shape == (3, 6, 16)


@functools.cache
def _block():
    block = griffin_block(6, lru_width=4, num_heads=2, conv_width=4)
    return block, jax.jit(block.apply)  # one compiled apply per shape, shared by the tests


def block_sample(B=3, T=9, D=5):
    block, apply = _block()
    params = block.init(jax.random.key(0), D)
    params = jax.tree.map(lambda p: p + 0.2 * jax.random.normal(jax.random.key(4), p.shape),
                          params)  # fmt: skip
    xs = jax.random.normal(jax.random.key(1), (B, T, D))
    return block, apply, params, xs


def test_block_streams_in_chunks_like_one_call():
    block, apply, params, xs = block_sample()
    resets = jnp.zeros((3, 9), bool).at[0, 4].set(True).at[1, 2].set(True).at[2, 8].set(True)
    want_carry, want = apply(params, xs, resets=resets)
    carry, pieces = None, []
    for s, e in ((0, 4), (4, 9)):  # row 0's reset falls on the second chunk's first step
        carry, ys = apply(params, xs[:, s:e], carry=carry, resets=resets[:, s:e])
        pieces.append(ys)
    assert_close(jnp.concatenate(pieces, axis=1), want, rtol=1e-5, atol=1e-6)
    jax.tree.map(lambda a, b: assert_close(a, b, rtol=1e-5, atol=1e-6), carry, want_carry)
    stream = seqjax.stream(block)
    carry = stream.start(params, (3,))
    carry, first = stream.feed(params, carry, xs[:, :6], resets=resets[:, :6])
    assert_close(first, want[:, :6], rtol=1e-5, atol=1e-6)
    for t in range(6, 9):
        carry, y = stream.step(params, carry, xs[:, t], reset=resets[:, t])
        assert_close(y, want[:, t], rtol=1e-5, atol=1e-6)


def test_block_lengths_and_resets_equal_separate_runs():
    """A row with a reset runs as two fresh documents; a row with a length as its prefix alone
    (its carry too); outputs past a length are zero."""
    _, apply, params, xs = block_sample()
    resets = jnp.zeros((3, 9), bool).at[0, 5].set(True)
    lengths = jnp.array([9, 5, 4])
    carry, ys = apply(params, xs, resets=resets, lengths=lengths)
    first_carry, first = apply(params, xs[:, :5])  # row 1 alone, and row 0's first document
    alone_carry, second = apply(params, xs[:, 5:])
    assert_close(ys[0], jnp.concatenate([first, second], axis=1)[0], rtol=1e-5, atol=1e-6)
    assert_close(carry.conv[0], alone_carry.conv[0], rtol=1e-5, atol=1e-6)
    assert_close(ys[1, :5], first[1], rtol=1e-5, atol=1e-6)
    jax.tree.map(lambda a, w: assert_close(a[1], w[1], rtol=1e-5, atol=1e-6), carry, first_carry)
    row2_carry, row2 = apply(params, xs[:, :4])
    assert_close(ys[2, :4], row2[2], rtol=1e-5, atol=1e-6)
    jax.tree.map(lambda a, w: assert_close(a[2], w[2], rtol=1e-5, atol=1e-6), carry, row2_carry)
    assert np.all(np.asarray(ys[1, 5:]) == 0) and np.all(np.asarray(ys[2, 4:]) == 0)


def test_block_reset_carry_restarts_from_a_given_state():
    _, apply, params, xs = block_sample()
    start, _ = apply(params, xs[:, :4])  # a state that has started
    resets = jnp.zeros((3, 9), bool).at[:, 5].set(True)
    _, ys = apply(params, xs, resets=resets, reset_carry=start)
    _, want = apply(params, xs[:, 5:], carry=start)
    assert_close(ys[:, 5:], want, rtol=1e-5, atol=1e-6)
    fast = griffin_block(6, lru_width=4, num_heads=2, parallel=True, remat=True)
    _, got = jax.jit(fast.apply)(params, xs, resets=resets, reset_carry=start)
    assert_close(got, ys, rtol=1e-5, atol=1e-6)


def test_block_in_stack_and_bidirectional():
    block, apply, params, xs = block_sample()
    lengths = jnp.array([9, 5, 2])
    model = seqjax.layers.stack(block, seqjax.rnn(rg_lru(6)))
    p = model.init(jax.random.key(2), 5)
    (c_block, _), ys = jax.jit(model.apply)(p, xs, lengths=lengths)
    assert isinstance(c_block, GriffinCarry) and ys.shape == (3, 9, 6)
    _, mid = apply(p[0], xs, lengths=lengths)
    want = seqjax.unroll(rg_lru(6), p[1], mid, lengths=lengths)[1]
    assert_close(ys, want, rtol=1e-5, atol=1e-6)
    both = seqjax.layers.bidirectional(block, block)
    _, ys = jax.jit(both.apply)({"forward": params, "backward": params}, xs, lengths=lengths)
    _, back = apply(params, seqjax.layers.reverse_sequences(xs, lengths, 1), lengths=lengths)
    want = seqjax.layers.reverse_sequences(back, lengths, 1)
    assert_close(ys[..., 6:], want, rtol=1e-5, atol=1e-6)


# --- errors ---------------------------------------------------------------------------------


def test_bad_configurations_raise_clear_errors():
    with pytest.raises(ValueError, match=r"num_heads must divide hidden_size.*hidden_size=6"):
        rg_lru(6, num_heads=4)
    with pytest.raises(ValueError, match=r"num_heads must divide lru_width.*lru_width=6"):
        griffin_block(8, lru_width=6, num_heads=4)
    with pytest.raises(ValueError, match="num_heads must be a positive integer"):
        rg_lru(6, num_heads=0)
    for bad in (0, -1, 2.5):
        with pytest.raises(ValueError, match="conv_width must be a positive integer"):
            griffin_block(8, conv_width=bad)
    with pytest.raises(ValueError, match="c must be a number > 0"):
        rg_lru(4, c=0)
    with pytest.raises(ValueError, match="min_rad < max_rad"):
        rg_lru(4, min_rad=0.99, max_rad=0.9)
    with pytest.raises(ValueError, match="reverse=True is not supported"):
        griffin_block(8, reverse=True)
    with pytest.raises(TypeError, match="unknown"):
        griffin_block(8, revers=True)


def test_wrong_input_sizes_raise_clear_errors():
    with pytest.raises(ValueError, match=r"input_size must be 4 .*got input_size=5"):
        rg_lru(4).init(jax.random.key(0), 5)
    with pytest.raises(ValueError, match=r"input_size must be 5 .*document-start"):
        rg_lru(4, document_starts=True).init(jax.random.key(0), 4)
    cell = rg_lru(4)
    with pytest.raises(ValueError, match="xs has 3 features"):
        seqjax.unroll(cell, cell.init(jax.random.key(0), 4), jnp.zeros((2, 5, 3)))
    block, _, params, xs = block_sample()
    with pytest.raises(ValueError, match="xs has 4 features"):
        block.apply(params, xs[..., :4])
    with pytest.raises(
        ValueError, match=r"carry has a leaf of shape .* where \(3, 12\) is expected"
    ):
        block.apply(params, xs, carry=GriffinCarry(jnp.zeros((3, 4)), jnp.zeros((3, 4)),
                                                   jnp.zeros((3, 1))))  # fmt: skip
    with pytest.raises(ValueError, match="reset_carry is the carry resets restart from"):
        block.apply(params, xs, reset_carry=block.initial_carry(params, (3,)))
