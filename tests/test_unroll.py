"""``seqjax.unroll``: lengths, reverse, layouts, batch axes, options that must not change numbers,
and the JAX transformations (jit, vmap, no re-tracing)."""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import seqjax

D, H, T = 3, 4, 7
CELLS = {
    "simple_rnn": lambda: seqjax.simple_rnn(H),
    "lstm": lambda: seqjax.lstm(H),
    "gru": lambda: seqjax.gru(H),
    "gru_reset_before": lambda: seqjax.gru(H, reset_after=False),
}


def setup(name: str, batch=(3,), steps=T, dtype=jnp.float32, seed=0):
    cell = CELLS_AND_INDRNN[name]()
    params = cell.init(jax.random.key(seed), D, dtype)
    xs = jax.random.normal(jax.random.key(seed + 1), (*batch, steps, D), dtype)
    return cell, params, xs


def assert_close(a, b, tol=1e-6):
    chex.assert_trees_all_close(a, b, atol=tol, rtol=tol)


@pytest.mark.parametrize("name", CELLS)
def test_padding_invariance(name):
    """A padded sequence gives the unpadded run's outputs on its valid steps and its final carry,
    whatever the padding holds."""
    cell, params, xs = setup(name)
    lengths = jnp.array([7, 4, 1])
    garbage = 100.0 * jax.random.normal(jax.random.key(9), xs.shape)
    t = jnp.arange(T)[None, :, None]
    padded = jnp.where(t < lengths[:, None, None], xs, garbage)
    final, ys = seqjax.unroll(cell, params, padded, lengths=lengths)
    for b, length in enumerate(lengths.tolist()):
        alone_final, alone_ys = seqjax.unroll(cell, params, xs[b, :length])
        assert_close(ys[b, :length], alone_ys)
        assert_close(jax.tree.map(lambda leaf, b=b: leaf[b], final), alone_final)
        np.testing.assert_array_equal(ys[b, length:], 0.0)


@pytest.mark.parametrize("name", CELLS)
def test_reverse_runs_each_sequence_from_its_own_end(name):
    cell, params, xs = setup(name)
    lengths = jnp.array([7, 5, 2])
    final, ys = seqjax.unroll(cell, params, xs, lengths=lengths, reverse=True)
    for b, length in enumerate(lengths.tolist()):
        flipped = xs[b, :length][::-1]
        alone_final, alone_ys = seqjax.unroll(cell, params, flipped)
        assert_close(ys[b, :length], alone_ys[::-1])  # outputs stay aligned with the inputs
        assert_close(jax.tree.map(lambda leaf, b=b: leaf[b], final), alone_final)
        np.testing.assert_array_equal(ys[b, length:], 0.0)


@pytest.mark.parametrize("name", CELLS)
def test_reverse_without_lengths_is_flip(name):
    cell, params, xs = setup(name)
    final, ys = seqjax.unroll(cell, params, xs, reverse=True)
    flip_final, flip_ys = seqjax.unroll(cell, params, xs[:, ::-1])
    assert_close(ys, flip_ys[:, ::-1])
    assert_close(final, flip_final)


def test_reverse_sequences_is_an_involution_and_keeps_padding():
    xs = jnp.arange(2 * 5, dtype=jnp.float32).reshape(2, 5, 1)
    lengths = jnp.array([5, 3])
    out = seqjax.reverse_sequences(xs, lengths, time_axis=1)
    np.testing.assert_array_equal(out[0, :, 0], [4, 3, 2, 1, 0])
    np.testing.assert_array_equal(out[1, :, 0], [7, 6, 5, 8, 9])
    np.testing.assert_array_equal(seqjax.reverse_sequences(out, lengths, time_axis=1), xs)


@pytest.mark.parametrize("batch", [(), (2,), (2, 3)], ids=["no_batch", "one_axis", "two_axes"])
def test_any_number_of_batch_axes(batch):
    cell, params, xs = setup("lstm", batch=batch)
    lengths = jnp.full(batch, 5, jnp.int32) if batch else jnp.asarray(5)
    final, ys = seqjax.unroll(cell, params, xs, lengths=lengths)
    chex.assert_shape(ys, (*batch, T, H))
    chex.assert_shape(final.h, (*batch, H))
    flat = xs.reshape(-1, T, D)
    flat_final, flat_ys = seqjax.unroll(
        cell, params, flat, lengths=jnp.full(flat.shape[0], 5, jnp.int32)
    )
    assert_close(ys.reshape(-1, T, H), flat_ys)
    assert_close(final.c.reshape(-1, H), flat_final.c)


@pytest.mark.parametrize("name", CELLS)
def test_time_major_layout(name):
    cell, params, xs = setup(name)
    lengths = jnp.array([7, 3, 6])
    final, ys = seqjax.unroll(cell, params, xs, lengths=lengths)
    tm_final, tm_ys = seqjax.unroll(
        cell, params, jnp.swapaxes(xs, 0, 1), lengths=lengths, time_major=True
    )
    assert_close(jnp.swapaxes(tm_ys, 0, 1), ys)
    assert_close(tm_final, final)


@pytest.mark.parametrize("name", CELLS)
@pytest.mark.parametrize(
    "options",
    [{"unroll": 3}, {"remat": True}, {"hoist_projection": True}, {"hoist_projection": False}],
    ids=["unroll3", "remat", "hoisted", "in_step"],
)
def test_options_do_not_change_numbers(x64, name, options):
    cell, params, xs = setup(name, dtype=jnp.float64)
    lengths = jnp.array([7, 2, 5])

    def loss(params, xs, **kw):
        final, ys = seqjax.unroll(cell, params, xs, lengths=lengths, reverse=True, **kw)
        return jnp.sum(ys**2) + sum(jnp.sum(leaf) for leaf in jax.tree.leaves(final)), ys

    grad_fn = jax.grad(loss, argnums=(0, 1), has_aux=True)
    reference = jax.jit(grad_fn)(params, xs)
    assert_close(jax.jit(lambda p, x: grad_fn(p, x, **options))(params, xs), reference, tol=1e-12)


def test_initial_carry_is_used():
    cell, params, xs = setup("lstm")
    carry = seqjax.LSTMCarry(jnp.ones((3, H)), -jnp.ones((3, H)))
    final, ys = seqjax.unroll(cell, params, xs, carry=carry)
    expected_y = seqjax.step(cell, params, carry, xs[:, 0])[1]
    assert_close(ys[:, 0], expected_y)
    zero_final, _ = seqjax.unroll(cell, params, xs)
    assert not np.allclose(final.c, zero_final.c)


@pytest.mark.parametrize("name", CELLS)
def test_jit_and_no_jit_agree(name):
    cell, params, xs = setup(name)
    lengths = jnp.array([7, 1, 4])

    run = lambda p, x, n: seqjax.unroll(cell, p, x, lengths=n)  # noqa: E731
    eager = run(params, xs, lengths)
    jitted = jax.jit(run)(params, xs, lengths)
    assert_close(jitted, eager)


class TestVariants(chex.TestCase):
    @chex.variants(with_jit=True, without_jit=True)
    def test_unroll_variants_agree_with_step_loop(self):
        cell = seqjax.gru(H)
        params = cell.init(jax.random.key(0), D)
        xs = jax.random.normal(jax.random.key(1), (2, 5, D))
        final, ys = self.variant(lambda p, x: seqjax.unroll(cell, p, x))(params, xs)
        carry = cell.initial_carry(params, (2,))
        for t in range(5):
            carry, y = seqjax.step(cell, params, carry, xs[:, t])
            chex.assert_trees_all_close(ys[:, t], y, atol=1e-6)
        chex.assert_trees_all_close(final, carry, atol=1e-6)


def test_no_retracing_for_same_shapes():
    cell = seqjax.lstm(H)
    params = cell.init(jax.random.key(0), D)

    @jax.jit
    @chex.assert_max_traces(n=1)
    def run(params, xs, lengths):
        return seqjax.unroll(cell, params, xs, lengths=lengths)

    for seed in range(3):
        xs = jax.random.normal(jax.random.key(seed), (2, T, D))
        run(params, xs, jnp.array([T, seed + 1]))
    chex.clear_trace_counter()


def test_vmap_over_a_batch_of_params():
    cell = seqjax.gru(H)
    keys = jax.random.split(jax.random.key(0), 4)
    many = jax.vmap(lambda k: cell.init(k, D))(keys)
    xs = jax.random.normal(jax.random.key(1), (2, T, D))
    _, ys = jax.vmap(lambda p: seqjax.unroll(cell, p, xs))(many)
    chex.assert_shape(ys, (4, 2, T, H))
    for i in range(4):
        one = jax.tree.map(lambda leaf, i=i: leaf[i], many)
        assert_close(ys[i], seqjax.unroll(cell, one, xs)[1])


@pytest.mark.parametrize("name", CELLS)
def test_bfloat16_runs_and_stays_close_to_float32(name):
    cell, params, xs = setup(name, steps=16)
    run = jax.jit(lambda p, x: seqjax.unroll(cell, p, x))
    _, ys32 = run(params, xs)
    params16 = jax.tree.map(lambda p: p.astype(jnp.bfloat16), params)
    final16, ys16 = run(params16, xs.astype(jnp.bfloat16))
    assert ys16.dtype == jnp.bfloat16
    assert {leaf.dtype for leaf in jax.tree.leaves(final16)} == {jnp.dtype(jnp.bfloat16)}
    error = float(jnp.max(jnp.abs(ys16.astype(jnp.float32) - ys32)))
    assert error < 0.05, f"bfloat16 drifts {error:.3f} from float32"
    grads = jax.jit(jax.grad(lambda p: jnp.sum(run(p, xs.astype(jnp.bfloat16))[1])))(params16)
    chex.assert_tree_all_finite(grads)


def test_float16_runs():
    cell, params, xs = setup("lstm", dtype=jnp.float16)
    _, ys = seqjax.unroll(cell, params, xs)
    assert ys.dtype == jnp.float16
    chex.assert_tree_all_finite(ys)


def test_inputs_are_cast_to_the_params_dtype():
    cell, params, xs = setup("gru")
    params16 = jax.tree.map(lambda p: p.astype(jnp.bfloat16), params)
    _, ys = seqjax.unroll(cell, params16, xs)  # float32 data, bfloat16 model
    assert ys.dtype == jnp.bfloat16


SPLIT_CELLS = [name for name in CELLS if CELLS[name]().recur_split is not None]
SPLIT_CELLS.append("indrnn")  # its recurrent product is elementwise (u * h)
SPLIT_CELLS.append("lstm_autodiff_combine")  # a split without a hand-written combine VJP


def _without_combine_vjp(cell: seqjax.Cell) -> seqjax.Cell:
    return cell._replace(recur_split=cell.recur_split._replace(combine_vjp=None))


CELLS_AND_INDRNN = {
    **CELLS,
    "indrnn": lambda: seqjax.indrnn(H, activation="tanh"),
    "lstm_autodiff_combine": lambda: _without_combine_vjp(seqjax.lstm(H)),
}


@pytest.mark.parametrize("name", SPLIT_CELLS)
@pytest.mark.parametrize(
    "options",
    [{}, {"reverse": True}, {"hoist_projection": True, "unroll": 3}],
    ids=["forward", "reverse", "hoisted_unroll3"],
)
def test_custom_vjp_equals_autodiff(x64, name, options):
    """seqjax's own backward pass gives autodiff's gradients for params, inputs and carry."""
    cell, params, xs = setup(name, dtype=jnp.float64)
    lengths = jnp.array([7, 3, 5])
    carry = jax.tree.map(lambda c: c + 0.3, cell.initial_carry(params, (3,)))

    def loss(params, xs, carry, custom_vjp):
        final, ys = seqjax.unroll(
            cell, params, xs, carry=carry, lengths=lengths, custom_vjp=custom_vjp, **options
        )
        return jnp.sum(jnp.cos(ys)) + sum(jnp.sum(leaf**3) for leaf in jax.tree.leaves(final))

    grad = jax.jit(jax.grad(loss, argnums=(0, 1, 2)), static_argnums=3)
    assert_close(grad(params, xs, carry, True), grad(params, xs, carry, False), tol=1e-12)


@pytest.mark.parametrize(
    "name", [n for n in SPLIT_CELLS if CELLS_AND_INDRNN[n]().recur_split.additive]
)
def test_additive_split_depends_on_the_sum_only(name):
    """A split that declares ``additive`` must give the same step for (px, hh) as for
    (px + hh, 0): the custom VJP relies on it to keep one gate gradient per step."""
    cell, params, xs = setup(name, dtype=jnp.float64)
    split = cell.recur_split
    carry = jax.tree.map(lambda c: c + 0.3, cell.initial_carry(params, (3,)))
    px = cell.project(params, xs[:, 0])
    hh = split.hidden_projection(params, carry)
    assert_close(split.combine(carry, px, hh), split.combine(carry, px + hh, jnp.zeros_like(hh)))


HAND_WRITTEN_VJP_CELLS = {
    "simple_rnn": lambda: seqjax.simple_rnn(H),
    "relu_rnn": lambda: seqjax.simple_rnn(H, activation="relu"),
    "lstm": lambda: seqjax.lstm(H),
    "gru": lambda: seqjax.gru(H),
    "indrnn_relu": lambda: seqjax.indrnn(H),
    "indrnn_tanh": lambda: seqjax.indrnn(H, activation="tanh"),
}


@pytest.mark.parametrize("name", HAND_WRITTEN_VJP_CELLS)
def test_hand_written_combine_vjp_equals_autodiff_of_combine(x64, name):
    """Each built-in ``CombineVJP`` gives ``combine``'s outputs and ``jax.vjp``'s cotangents."""
    cell = HAND_WRITTEN_VJP_CELLS[name]()
    split = cell.recur_split
    assert split.combine_vjp is not None
    params = cell.init(jax.random.key(0), D, jnp.float64)
    keys = iter(jax.random.split(jax.random.key(1), 8))

    def noise(like):
        return jax.tree.map(lambda x: jax.random.normal(next(keys), x.shape, x.dtype), like)

    carry = noise(cell.initial_carry(params, (3,)))
    px = cell.project(params, jax.random.normal(next(keys), (3, D), jnp.float64))
    hh = split.hidden_projection(params, carry)
    out, residuals = split.combine_vjp.forward(carry, px, hh)
    assert_close(out, split.combine(carry, px, hh), tol=1e-14)
    d_out = noise(out)
    expected = jax.vjp(split.combine, carry, px, hh)[1](d_out)
    assert_close(split.combine_vjp.backward(carry, residuals, d_out), expected, tol=1e-12)


def test_custom_vjp_pullback_can_leave_the_jit_that_made_it():
    """``jax.vjp`` under one jit, the pullback applied under another: the backward pass must
    close over no value traced in the first."""
    cell, params, xs = setup("lstm")
    lengths = jnp.array([7, 2, 5])

    def run(params, xs):
        return seqjax.unroll(cell, params, xs, lengths=lengths)[1]

    ys, pullback = jax.jit(lambda p, x: jax.vjp(run, p, x))(params, xs)
    got = jax.jit(lambda pb, ct: pb(ct))(pullback, ys)

    def autodiff_run(params, xs):
        return seqjax.unroll(cell, params, xs, lengths=lengths, custom_vjp=False)[1]

    expected = jax.vjp(autodiff_run, params, xs)[1](ys)
    assert_close(got, expected, tol=1e-5)


def test_custom_vjp_needs_a_split_cell():
    cell = seqjax.gru(H, reset_after=False)
    params = cell.init(jax.random.key(0), D)
    with pytest.raises(ValueError, match="custom_vjp=True needs a cell with a recur_split"):
        seqjax.unroll(cell, params, jnp.ones((2, 3, D)), custom_vjp=True)


@pytest.mark.parametrize("name", ["lstm", "gru", "simple_rnn", "lstm_autodiff_combine"])
@pytest.mark.parametrize(
    "steps, options",
    [(37, {}), (37, {"reverse": True}), (16, {"hoist_projection": True}), (5, {"unroll": 2})],
    ids=["tail_chunk", "tail_chunk_reverse", "even_chunks_hoisted", "short_unroll2"],
)
def test_remat_custom_vjp_equals_autodiff(x64, name, steps, options):
    """With ``remat`` the custom VJP reruns chunk after chunk (T = 37: six chunks of 6 and a
    tail of 1) and still gives plain autodiff's gradients for params, inputs and carry, with
    lengths."""
    cell, params, xs = setup(name, steps=steps, dtype=jnp.float64)
    lengths = jnp.array([steps, steps // 2, 1])
    carry = jax.tree.map(lambda c: c + 0.3, cell.initial_carry(params, (3,)))

    def loss(params, xs, carry, custom_vjp):
        final, ys = seqjax.unroll(cell, params, xs, carry=carry, lengths=lengths, remat=True,
                                  custom_vjp=custom_vjp, **options)  # fmt: skip
        return jnp.sum(jnp.cos(ys)) + sum(jnp.sum(leaf**3) for leaf in jax.tree.leaves(final))

    grad = jax.jit(jax.grad(loss, argnums=(0, 1, 2)), static_argnums=3)
    assert_close(grad(params, xs, carry, True), grad(params, xs, carry, False), tol=1e-12)
    plain = jax.jit(
        jax.grad(lambda p: seqjax.unroll(cell, p, xs, lengths=lengths, **options)[1].sum())
    )
    remat = jax.jit(
        jax.grad(
            lambda p: seqjax.unroll(cell, p, xs, lengths=lengths, remat=True, **options)[1].sum()
        )
    )
    assert_close(remat(params), plain(params), tol=1e-12)


@pytest.mark.parametrize("remat", [False, True], ids=["plain", "remat"])
@pytest.mark.parametrize(
    "batch, time_major",
    [((), False), ((2, 3), False), ((3,), True)],
    ids=["no_batch", "two_batch_axes", "time_major"],
)
def test_custom_vjp_in_every_layout(x64, batch, time_major, remat):
    """The custom VJP slices chunks out of the caller's layout and writes them back: outputs
    and gradients equal autodiff's for any batch axes and for time-major input."""
    cell, params, xs = setup("lstm", batch=batch, steps=11, dtype=jnp.float64)
    if time_major:
        xs = jnp.moveaxis(xs, -2, 0)
    lengths = jnp.array([11, 6, 1][: batch[-1]]) if batch else None
    if len(batch) == 2:
        lengths = jnp.array([[11, 6, 1], [3, 11, 9]])

    def loss(params, xs, custom_vjp):
        final, ys = seqjax.unroll(cell, params, xs, lengths=lengths, time_major=time_major,
                                  remat=remat, custom_vjp=custom_vjp)  # fmt: skip
        chex.assert_shape(ys, (*xs.shape[:-1], H))
        return jnp.sum(jnp.sin(ys)) + jnp.sum(final[1] ** 2)

    value = jax.jit(loss, static_argnums=2)
    assert_close(value(params, xs, True), value(params, xs, False), tol=1e-12)
    grad = jax.jit(jax.grad(loss, argnums=(0, 1)), static_argnums=2)
    assert_close(grad(params, xs, True), grad(params, xs, False), tol=1e-12)


@pytest.mark.parametrize("reverse", [False, True])
def test_remat_input_gradient_in_the_output_cotangents_buffer(x64, reverse):
    """With input size = hidden size, remat writes d_xs chunk by chunk over the buffer of the
    outputs' cotangent (T = 23: chunks of 5 and a tail of 3): the gradient is still
    autodiff's."""
    cell = seqjax.lstm(H)
    params = cell.init(jax.random.key(0), H, jnp.float64)
    xs = jax.random.normal(jax.random.key(1), (3, 23, H), jnp.float64)
    lengths = jnp.array([23, 9, 1])

    def run(params, xs, remat, custom_vjp):
        return seqjax.unroll(cell, params, xs, lengths=lengths, reverse=reverse, remat=remat,
                             custom_vjp=custom_vjp)[1]  # fmt: skip

    cotangent = jax.random.normal(jax.random.key(2), (*xs.shape[:-1], H), jnp.float64)
    _, pullback = jax.vjp(lambda p, x: run(p, x, True, True), params, xs)
    first = pullback(cotangent)
    expected = jax.jit(lambda p, x, ct: jax.vjp(lambda p, x: run(p, x, False, False), p, x)[1](ct))(
        params, xs, cotangent
    )
    assert_close(first, expected, tol=1e-12)
    grad = jax.jit(jax.grad(lambda p, x: jnp.sum(run(p, x, True, True) ** 2), argnums=(0, 1)))
    plain = jax.jit(jax.grad(lambda p, x: jnp.sum(run(p, x, False, False) ** 2), argnums=(0, 1)))
    assert_close(grad(params, xs), plain(params, xs), tol=1e-12)


def test_forward_mode_with_custom_vjp_off():
    cell, params, xs = setup("lstm")
    tangent = jax.random.normal(jax.random.key(5), xs.shape)
    f = lambda x: seqjax.unroll(cell, params, x, custom_vjp=False)[1]  # noqa: E731
    _, jvp_out = jax.jvp(f, (xs,), (tangent,))
    _, vjp_fn = jax.vjp(lambda x: seqjax.unroll(cell, params, x)[1], xs)
    probe = jax.random.normal(jax.random.key(6), jvp_out.shape)
    # <probe, J t> == <J^T probe, t>
    np.testing.assert_allclose(
        jnp.vdot(probe, jvp_out), jnp.vdot(vjp_fn(probe)[0], tangent), rtol=1e-4
    )


@pytest.mark.parametrize("forward_mode", [jax.jacfwd, lambda f: lambda x: jax.jvp(f, (x,), (x,))])
def test_forward_mode_through_the_custom_vjp_says_what_to_do(forward_mode):
    cell, params, xs = setup("lstm")
    f = lambda x: seqjax.unroll(cell, params, x)[1]  # noqa: E731
    with pytest.raises(TypeError, match=r"forward-mode.*custom_vjp=False"):
        forward_mode(f)(xs)


def test_remat_keeps_memory_sublinear_in_time():
    """XLA's memory account of the compiled gradient: with remat the stored carries grow like
    sqrt(T), so at T=1024 the peak is far below the un-rematerialised one."""
    cell = seqjax.lstm(32)
    params = cell.init(jax.random.key(0), 8)
    xs = jax.ShapeDtypeStruct((4, 1024, 8), jnp.float32)

    def peak(remat):
        loss = lambda p, x: jnp.sum(seqjax.unroll(cell, p, x, remat=remat)[1])  # noqa: E731
        stats = jax.jit(jax.grad(loss)).lower(params, xs).compile().memory_analysis()
        return stats.temp_size_in_bytes

    assert peak(True) < 0.25 * peak(False)


@pytest.mark.parametrize("time_major", [False, True])
def test_remat_holds_one_sequence_of_outputs_and_no_copies(time_major):
    """The remat gradient's temporaries at T=1024, input size = hidden size: one (batch, T, H)
    array (the outputs, then in the same buffer their cotangent), ~sqrt(T) chunk carries and
    one chunk's residuals; the input gradient fills the cotangent's buffer. A time-major copy
    of the inputs, of the cotangent or of the input gradient would add a whole array each.

    That holds where seqjax picks the layouts (CPU). On a GPU, XLA assigns its own: on an H200
    (jax 0.11.2) time-major inputs stayed under one array, and batch-major ones held 2.49
    arrays (a time-major copy of the inputs and one of the input gradient), still a fifth of
    the 13 arrays the gradient holds without remat."""
    cell = seqjax.lstm(32)
    params = cell.init(jax.random.key(0), 32)
    shape = (1024, 4, 32) if time_major else (4, 1024, 32)
    one_sequence = 4 * 1024 * 32 * 4  # bytes of one (batch, T, H) float32 array

    def loss(params, xs):
        return jnp.sum(seqjax.unroll(cell, params, xs, remat=True, time_major=time_major)[1] ** 2)

    compiled = (
        jax.jit(jax.grad(loss, argnums=(0, 1)))
        .lower(params, jax.ShapeDtypeStruct(shape, jnp.float32))
        .compile()
    )
    copies = 0 if jax.default_backend() == "cpu" or time_major else 2
    assert compiled.memory_analysis().temp_size_in_bytes < (1 + copies) * one_sequence


@pytest.mark.skipif(jax.default_backend() != "cpu", reason="the CPU default")
@pytest.mark.parametrize(
    "make_cell, hoisted",
    [(seqjax.simple_rnn, True), (seqjax.indrnn, True), (seqjax.lstm, False), (seqjax.gru, False)],
    ids=["rnn", "indrnn", "lstm", "gru"],
)
def test_default_hoists_on_cpu_only_cells_that_use_the_projection_whole(make_cell, hoisted):
    """The default traces to the same program as the option it picks (and the two differ), for
    the scan (the native kernels project each step themselves: the option does not apply)."""
    cell = make_cell(4)
    params = cell.init(jax.random.key(0), 3)
    xs = jnp.ones((2, 5, 3))
    jaxprs = {
        option: str(
            jax.make_jaxpr(
                lambda p, x, o=option: seqjax.unroll(cell, p, x, hoist_projection=o, native=False)
            )(params, xs)
        )
        for option in (None, True, False)
    }
    assert jaxprs[None] == jaxprs[hoisted]
    assert jaxprs[True] != jaxprs[False]
