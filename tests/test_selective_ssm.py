"""The selective SSM (S6) against a NumPy float64 loop of the paper's equations (Algorithm 2 of
Gu & Dao 2023, written here independently of seqjax's code), finite differences, the parallel
scan against the sequential one, its init, layers and errors."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

from seqjax import layers, precision
from seqjax.cells.selective_ssm import MambaCarry, mamba_block, selective_ssm
from seqjax.unroll import unroll

B, T, D, N, R = 3, 8, 4, 3, 2
LENGTHS = np.array([8, 5, 3])
RESETS = np.zeros((B, T), bool)
RESETS[0, [2, 6]] = True
RESETS[1, [0, 3]] = True
RESETS[2, [5]] = True  # past its length: ignored


def softplus(a):
    return np.log1p(np.exp(-np.abs(a))) + np.maximum(a, 0.0)


def numpy_run(p, x, h0, length=None, reverse=False, resets=None):
    """One sequence ``x (T, D)`` from the flat state ``h0 (D*N,)``: outputs ``(T, D)`` (zero
    past ``length``) and the final flat state. ``resets (T,)`` restart from ``h0`` at the start
    of each flagged segment (reversed: when the step after the current one is flagged)."""
    p = {k: np.asarray(v, np.float64) for k, v in p.items()}
    (rank, channels), states = p["w_dt"].shape, p["a_log"].shape[1]
    steps = x.shape[0] if length is None else int(length)
    w_low, w_b, w_c = np.split(p["w_x"], [rank, rank + states], axis=1)
    A = -np.exp(p["a_log"])  # (D, N)
    start = np.asarray(h0, np.float64).reshape(channels, states)
    h, y = start, np.zeros((x.shape[0], channels))
    for t in range(steps - 1, -1, -1) if reverse else range(steps):
        if resets is not None and (t + 1 < steps and resets[t + 1] if reverse else resets[t]):
            h = start
        delta = softplus(x[t] @ w_low @ p["w_dt"] + p["b_dt"])  # (D,)
        b_t, c_t = x[t] @ w_b, x[t] @ w_c  # (N,)
        a_bar = np.exp(delta[:, None] * A)  # zero-order hold of A
        b_bar = delta[:, None] * b_t[None, :]  # Euler (simplified) discretisation of B
        h = a_bar * h + b_bar * x[t][:, None]
        y[t] = h @ c_t + p["d"] * x[t]
    return y, h.reshape(-1)


def random_params(cell, seed=0, dtype=jnp.float64):
    """Every entry random (a_log around its init, b_dt around step sizes ~0.1-1) so that the
    decays and drives are neither ~1 nor ~0 over a few steps."""
    params = cell.init(jax.random.key(seed), D, dtype)
    k = jax.random.split(jax.random.key(seed + 1), 5)
    return {
        "w_x": jax.random.normal(k[0], params["w_x"].shape, dtype),
        "w_dt": 0.5 * jax.random.normal(k[1], params["w_dt"].shape, dtype),
        "b_dt": -1.0 + 0.5 * jax.random.normal(k[2], params["b_dt"].shape, dtype),
        "a_log": params["a_log"] + 0.3 * jax.random.normal(k[3], params["a_log"].shape, dtype),
        "d": jax.random.normal(k[4], params["d"].shape, dtype),
    }


def inputs(seed=3, dtype=jnp.float64):
    xs = jax.random.normal(jax.random.key(seed), (B, T, D), dtype)
    h0 = 0.5 * jax.random.normal(jax.random.key(seed + 1), (B, D * N), dtype)
    return xs, h0


def cell_and_params():
    cell = selective_ssm(D, N, dt_rank=R)
    return cell, random_params(cell)


PATHS = {
    "sequential": {},
    "sequential_reverse_remat": {"reverse": True, "remat": True},
    "parallel_reverse": {"parallel": True, "reverse": True},
    "parallel_chunks_reverse_remat": dict(parallel=True, chunk_size=3, reverse=True, remat=True),
}


@pytest.mark.parametrize("options", PATHS.values(), ids=PATHS.keys())
def test_matches_numpy_loop_with_lengths_and_resets(x64, options):
    cell, params = cell_and_params()
    xs, h0 = inputs()
    run = jax.jit(lambda p, x, h, n, r: unroll(cell, p, x, carry=h, lengths=n, resets=r, **options))
    h_n, ys = run(params, xs, h0, jnp.asarray(LENGTHS), jnp.asarray(RESETS))
    for b in range(B):
        y_ref, h_ref = numpy_run(params, np.asarray(xs[b]), h0[b], LENGTHS[b],
                                 options.get("reverse", False), RESETS[b])  # fmt: skip
        np.testing.assert_allclose(ys[b], y_ref, rtol=1e-11, atol=1e-12)
        np.testing.assert_allclose(h_n[b], h_ref, rtol=1e-11, atol=1e-12)


def test_parallel_gradients_equal_sequential(x64):
    cell, params = cell_and_params()
    xs, h0 = inputs()
    w = jax.random.normal(jax.random.key(7), (B, T, D), jnp.float64)

    def loss(options):
        def f(params, xs, h0):
            h_n, ys = unroll(cell, params, xs, carry=h0, lengths=jnp.asarray(LENGTHS), **options)
            return jnp.sum(ys * w) + jnp.sum(jnp.sin(h_n))

        return jax.jit(jax.grad(f, argnums=(0, 1, 2)))(params, xs, h0)

    want = loss({})
    for options in ({"parallel": True}, {"parallel": True, "chunk_size": 3, "remat": True}):
        got = loss(options)
        jax.tree.map(lambda g, r: np.testing.assert_allclose(g, r, rtol=1e-10, atol=1e-12),
                     got, want)  # fmt: skip


@pytest.mark.parametrize("parallel", [False, True])
def test_gradients_match_finite_differences(x64, parallel):
    cell, params = cell_and_params()
    xs, h0 = inputs()
    xs, h0 = xs[:2, :5], h0[:2]
    w = jax.random.normal(jax.random.key(9), (2, 5, D), jnp.float64)

    def f(params, xs, h0):
        h_n, ys = unroll(cell, params, xs, carry=h0, lengths=jnp.asarray([5, 3]),
                         parallel=parallel)  # fmt: skip
        return jnp.sum(ys * w) + jnp.sum(jnp.sin(h_n))

    modes = ["rev"] if parallel else ["fwd", "rev"]  # rev checks the same linearisation
    check_grads(jax.jit(f), (params, xs, h0), order=1, modes=modes)


def test_long_float32_sequence_parallel_equals_sequential():
    cell = selective_ssm(8, 4)
    params = cell.init(jax.random.key(0), 8)
    xs = jax.random.normal(jax.random.key(1), (2, 512, 8))
    h_seq, y_seq = jax.jit(lambda p, x: unroll(cell, p, x))(params, xs)
    h_par, y_par = jax.jit(lambda p, x: unroll(cell, p, x, parallel=True, chunk_size=128))(
        params, xs
    )
    assert np.all(np.isfinite(y_par))
    np.testing.assert_allclose(y_par, y_seq, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(h_par, h_seq, rtol=1e-4, atol=1e-4)


def test_mixed_precision_runs_near_float32():
    cell = selective_ssm(8, 4)
    params = cell.init(jax.random.key(0), 8)
    xs = jax.random.normal(jax.random.key(1), (2, 16, 8))
    run = jax.jit(lambda p, x: unroll(cell, p, x, parallel=True))
    _, want = run(params, xs)
    h, got = run(precision.cast(params, "bfloat16"), xs)
    assert got.dtype == jnp.float32 and h.dtype == jnp.float32
    np.testing.assert_allclose(got, want, rtol=0.05, atol=0.05)


def test_layers_rnn_stack_and_bidirectional(x64):
    xs, _ = inputs()
    ssm = lambda size: layers.rnn(selective_ssm(size, N, dt_rank=R), parallel=True)  # noqa: E731
    model = layers.stack(layers.bidirectional(ssm(D), ssm(D)), ssm(2 * D))
    params = model.init(jax.random.key(5), D)
    (_, final_top), ys = jax.jit(model.apply)(params, xs, lengths=jnp.asarray(LENGTHS))
    p_bi, p_top = params
    zeros = np.zeros(D * N)
    for b in range(B):
        x_b = np.asarray(xs[b])
        fwd, _ = numpy_run(p_bi["forward"], x_b, zeros, LENGTHS[b])
        bwd, _ = numpy_run(p_bi["backward"], x_b, zeros, LENGTHS[b], reverse=True)
        top, h_top = numpy_run(p_top, np.concatenate([fwd, bwd], -1), np.zeros(2 * D * N),
                               LENGTHS[b])  # fmt: skip
        np.testing.assert_allclose(ys[b], top, rtol=1e-11, atol=1e-12)
        np.testing.assert_allclose(final_top[b], h_top, rtol=1e-11, atol=1e-12)
    assert model.output_size == 2 * D


def test_init_follows_the_paper():
    model_size, state_size = 256, 5
    params = selective_ssm(model_size, state_size, dt_min=1e-3, dt_max=1e-1).init(
        jax.random.key(0), model_size
    )
    R_default = math.ceil(model_size / 16)
    assert params["w_x"].shape == (model_size, R_default + 2 * state_size)
    assert params["w_dt"].shape == (R_default, model_size)
    np.testing.assert_allclose(-np.exp(params["a_log"]), -np.tile(np.arange(1, 6), (256, 1)),
                               rtol=1e-6)  # fmt: skip
    np.testing.assert_array_equal(params["d"], np.ones(model_size))
    dt = np.asarray(jax.nn.softplus(params["b_dt"]))
    assert dt.min() >= 1e-3 * (1 - 1e-5) and dt.max() <= 1e-1 * (1 + 1e-5)
    # log-uniform: log10(dt) uniform on [-3, -1], mean -2, standard deviation 2/sqrt(12)
    assert abs(np.log10(dt).mean() + 2) < 0.15 and abs(np.log10(dt).std() - 0.577) < 0.1
    assert np.all(np.abs(params["w_dt"]) <= R_default**-0.5)
    assert np.all(np.abs(params["w_x"]) <= model_size**-0.5)


def test_carry_and_output_shapes():
    cell = selective_ssm(6, 2)
    params = cell.init(jax.random.key(0), 6)
    carry = cell.initial_carry(params, (4, 2))
    assert carry.shape == (4, 2, 12) and cell.output_size == 6 and cell.linear is not None
    h, ys = jax.eval_shape(
        lambda p, c: unroll(cell, p, jnp.ones((4, 2, 3, 6)), carry=c, parallel=True), params, carry
    )
    assert h.shape == (4, 2, 12) and ys.shape == (4, 2, 3, 6)


@pytest.mark.parametrize(
    "build, error, message",
    [
        (lambda: selective_ssm(0), ValueError, "model_size must be a positive integer"),
        (lambda: selective_ssm(4, 0), ValueError, "state_size must be a positive integer"),
        (lambda: selective_ssm(4, 2.5), ValueError, "state_size must be a positive integer"),
        (lambda: selective_ssm(4, dt_rank=0), ValueError, "dt_rank must be a positive integer"),
        (lambda: selective_ssm(4, dt_min=0.0), ValueError, "dt_min must be a number > 0"),
        (lambda: selective_ssm(4, dt_max=1e-4), ValueError, "dt_max must be a number > dt_min"),
        (lambda: selective_ssm(4).init(jax.random.key(0), 5), ValueError,
         r"input_size must equal model_size=4 .*got input_size=5.*selective_ssm\(model_size=5\)"),
    ],
)  # fmt: skip
def test_bad_configurations_are_refused_by_name(build, error, message):
    with pytest.raises(error, match=message):
        build()


def silu(a):
    return a / (1.0 + np.exp(-a))


def numpy_block(p, x, length):
    """The Mamba block over one sequence ``x (T, features)`` from a zero state, in NumPy:
    outputs ``(T, M)`` (zero past ``length``), the final conv window and SSM state."""
    p = jax.tree.map(lambda a: np.asarray(a, np.float64), p)
    K, E = p["w_conv"].shape
    x_branch, z = np.split(x @ p["w_in"], 2, axis=-1)
    padded = np.concatenate([np.zeros((K - 1, E)), x_branch])
    conv = np.stack([(padded[t : t + K] * p["w_conv"]).sum(0) for t in range(x.shape[0])])
    u = silu(conv + p["b_conv"])
    y, h = numpy_run(p["ssm"], u, np.zeros(E * p["ssm"]["a_log"].shape[1]), length)
    out = (y * silu(z)) @ p["w_out"]
    out[int(length) :] = 0.0
    return out, padded[int(length) : int(length) + K - 1], h


def block_and_params(**options):
    block = mamba_block(2, expand=2, state_size=N, conv_size=3, **options)
    params = block.init(jax.random.key(11), D)
    params["ssm"] = random_params(selective_ssm(4, N, dt_rank=1), seed=12)
    return block, params


@pytest.mark.parametrize("parallel", [True, False])
def test_mamba_block_matches_numpy(x64, parallel):
    block, params = block_and_params(parallel=parallel)
    xs, _ = inputs()
    final, ys = jax.jit(block.apply)(params, xs, lengths=jnp.asarray(LENGTHS))
    for b in range(B):
        out, conv, h = numpy_block(params, np.asarray(xs[b]), LENGTHS[b])
        np.testing.assert_allclose(ys[b], out, rtol=1e-11, atol=1e-12)
        np.testing.assert_allclose(final.conv[b], conv, rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(final.ssm[b], h, rtol=1e-11, atol=1e-12)


def test_mamba_block_in_chunks_equals_whole(x64):
    """The carry holds the conv window and the state: two chunks give the whole sequence."""
    block, params = block_and_params()
    xs, _ = inputs()
    apply = jax.jit(block.apply)
    whole_carry, whole = apply(params, xs)
    # one step, fewer than the conv window's K - 1 = 2: its carry holds a zero of the start
    first_carry, first = apply(params, xs[:, :1])
    last_carry, last = apply(params, xs[:, 1:], carry=first_carry)
    np.testing.assert_allclose(jnp.concatenate([first, last], 1), whole, rtol=1e-12, atol=1e-13)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-13),
                 last_carry, whole_carry)  # fmt: skip
    check_grads(jax.jit(lambda p, x: jnp.sum(jnp.sin(block.apply(p, x)[1]))),
                (params, xs[:2, :4]), order=1, modes=["rev"])  # fmt: skip


def test_mamba_blocks_stack_and_go_bidirectional(x64):
    block, _ = block_and_params()
    model = layers.stack(layers.bidirectional(block, block), mamba_block(3, state_size=2))
    params = model.init(jax.random.key(0), D)
    (_, top_carry), ys = jax.jit(model.apply)(params, inputs()[0], lengths=jnp.asarray(LENGTHS))
    assert ys.shape == (B, T, 3) and isinstance(top_carry, MambaCarry)
    assert np.all(np.asarray(ys[2, LENGTHS[2] :]) == 0) and np.all(np.isfinite(ys))


@pytest.mark.parametrize(
    "build, error, message",
    [
        (lambda: mamba_block(0), ValueError, "model_size must be a positive integer"),
        (lambda: mamba_block(4, expand=0), ValueError, "expand must be a positive integer"),
        (lambda: mamba_block(4, conv_size=0), ValueError, "conv_size must be a positive"),
        (lambda: mamba_block(4, parallel="yes"), TypeError, "parallel must be True or False"),
    ],
)
def test_bad_mamba_blocks_are_refused_by_name(build, error, message):
    with pytest.raises(error, match=message):
        build()


def test_mamba_block_refuses_resets_and_wrong_features(x64):
    block, params = block_and_params()
    xs = jnp.ones((2, 4, D))
    with pytest.raises(ValueError, match="mamba_block: resets are not supported"):
        block.apply(params, xs, resets=jnp.zeros((2, 4), bool))
    with pytest.raises(ValueError, match="xs has 5 features"):
        block.apply(params, jnp.ones((2, 4, 5)))
