"""The mLSTM cell: parity with mlstm_kernels 2.0.6 (golden file, float64), its three forms
(step, quadratic, chunkwise) equal to each other with every unroll option, finite differences,
long sequences with large gates in float32 and bfloat16, layers, and errors."""

from __future__ import annotations

import functools
import math
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

import seqjax
from seqjax.cells.mlstm import MLSTMCarry, mlstm

GOLDEN = pathlib.Path(__file__).parent / "data" / "golden" / "mlstm_kernels.npz"
H, NH = 8, 2
D_HEAD = H // NH
FORMS = {
    "step": {},
    "parallel": {"parallel": True},
    "chunkwise": {"parallel": True, "chunk_size": 4},
    "chunkwise_ragged": {"parallel": True, "chunk_size": 3},  # 16 steps: a padded last chunk
}


CELL = mlstm(H, NH)
STATIC = ("reverse", "time_major", "remat", "parallel", "chunk_size")
UNROLL = jax.jit(seqjax.unroll, static_argnums=0, static_argnames=STATIC)


@pytest.fixture
def x64():
    with jax.enable_x64(True):
        yield


@functools.cache
def golden() -> dict[str, np.ndarray]:
    with np.load(GOLDEN) as f:
        return {k: f[k] for k in f.files}


def carry_from_reference(c, n, m) -> MLSTMCarry:
    """The reference scales q by 1/sqrt(d), seqjax scales k: its c, n are sqrt(d) times ours."""
    s = math.sqrt(D_HEAD)
    batch = m.shape[:-1]
    return MLSTMCarry(
        jnp.asarray(c).reshape(*batch, -1) / s, jnp.asarray(n).reshape(*batch, -1) / s,
        jnp.asarray(m),
    )  # fmt: skip


def carry_as_reference(carry: MLSTMCarry):
    s = math.sqrt(D_HEAD)
    batch = carry.m.shape[:-1]
    return (carry.c.reshape(*batch, NH, D_HEAD, D_HEAD) * s,
            carry.n.reshape(*batch, NH, D_HEAD) * s, carry.m)  # fmt: skip


def golden_params():
    g = golden()
    return {"w_ih": jnp.asarray(g["w_ih"]), "b_ih": jnp.asarray(g["b_ih"])}


@pytest.mark.parametrize("form", list(FORMS))
def test_matches_mlstm_kernels_float64(x64, form):
    g, cell = golden(), CELL
    params, xs = golden_params(), jnp.asarray(g["x"])
    for case, carry in (("zero", None), ("init", carry_from_reference(g["c0"], g["n0"], g["m0"]))):
        final, ys = UNROLL(cell, params, xs, carry=carry, **FORMS[form])
        np.testing.assert_allclose(ys, g[f"{case}/y"], rtol=1e-10, atol=1e-12)
        for got, name in zip(carry_as_reference(final), "cnm", strict=True):
            np.testing.assert_allclose(got, g[f"{case}/{name}"], rtol=1e-10, atol=1e-12)
            np.testing.assert_allclose(got, g[f"{case}/{name}_chunkwise"], rtol=1e-9, atol=1e-11)
    np.testing.assert_allclose(
        UNROLL(cell, params, xs, **FORMS[form])[1], g["zero/y_parallel"], atol=1e-10
    )


@pytest.mark.parametrize("form", ["step", "parallel", "chunkwise"])
def test_gradients_match_mlstm_kernels_float64(x64, form):
    g, cell = golden(), CELL
    s = math.sqrt(D_HEAD)
    start = carry_from_reference(g["c0"], g["n0"], g["m0"])

    def loss(params, xs, carry):
        final, ys = seqjax.unroll(cell, params, xs, carry=carry, **FORMS[form])
        c, n, m = carry_as_reference(final)
        return (jnp.sum(ys * g["init/cot_y"]) + jnp.sum(c * g["init/cot_c"])
                + jnp.sum(n * g["init/cot_n"]) + jnp.sum(m * g["init/cot_m"]))  # fmt: skip

    d_params, d_xs, d_carry = jax.jit(jax.grad(loss, argnums=(0, 1, 2)))(
        golden_params(), jnp.asarray(g["x"]), start
    )
    tol = dict(rtol=1e-9, atol=1e-11)
    np.testing.assert_allclose(d_xs, g["init/grad_x"], **tol)
    np.testing.assert_allclose(d_params["w_ih"], g["init/grad_w_ih"], **tol)
    np.testing.assert_allclose(d_params["b_ih"], g["init/grad_b_ih"], **tol)
    # ours = reference / sqrt(d), so d/d(ours) = sqrt(d) * d/d(reference)
    np.testing.assert_allclose(d_carry.c, s * g["init/grad_c0"].reshape(2, -1), **tol)
    np.testing.assert_allclose(d_carry.n, s * g["init/grad_n0"].reshape(2, -1), **tol)
    np.testing.assert_allclose(d_carry.m, g["init/grad_m0"], **tol)


def _random_case(key, batch=2, steps=9, features=3, gate_scale=2.0, dtype=jnp.float64):
    cell = CELL
    k_p, k_b, k_x, k_r = jax.random.split(key, 4)
    params = cell.init(k_p, features, dtype=dtype)
    params["b_ih"] = params["b_ih"] + gate_scale * jax.random.normal(k_b, params["b_ih"].shape)
    xs = jax.random.normal(k_x, (batch, steps, features), dtype)
    lengths = jnp.array([steps, steps - 4])
    resets = jax.random.bernoulli(k_r, 0.2, (batch, steps))
    return cell, params, xs, lengths, resets


OPTIONS = {  # each golden test above runs the plain case
    "lengths_reverse_resets": {"lengths": True, "reverse": True, "resets": True},
    "carry_reset_carry_lengths": {"carry": True, "resets": True, "reset_carry": True,
                                  "lengths": True},
    "carry_remat_time_major_resets": {"carry": True, "remat": True, "time_major": True,
                                      "resets": True},
}  # fmt: skip


@pytest.mark.parametrize("option", list(OPTIONS))
def test_three_forms_agree_with_unroll_options(x64, option):
    cell, params, xs, lengths, resets = _random_case(jax.random.key(3))
    spec = OPTIONS[option]
    keywords = {k: v for k, v in spec.items() if k in ("reverse", "remat", "time_major")}
    if spec.get("lengths"):
        keywords["lengths"] = lengths
    if spec.get("resets"):
        keywords["resets"] = resets
    if spec.get("carry"):
        ref = _random_carry(jax.random.key(7))
        keywords["carry"] = carry_from_reference(*ref)
    if spec.get("reset_carry"):
        keywords["reset_carry"] = carry_from_reference(*_random_carry(jax.random.key(8)))
    if spec.get("time_major"):
        xs = jnp.swapaxes(xs, 0, 1)
        keywords["resets"] = jnp.swapaxes(resets, 0, 1)
    want = UNROLL(cell, params, xs, **keywords)
    for form in ("parallel", "chunkwise_ragged"):
        got = UNROLL(cell, params, xs, **keywords, **FORMS[form])
        for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
            np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-12, err_msg=form)


def _random_carry(key, batch=2):
    k = jax.random.split(key, 3)
    shapes = ((batch, NH, D_HEAD, D_HEAD), (batch, NH, D_HEAD), (batch, NH))
    return tuple(jax.random.normal(k[j], shape) for j, shape in enumerate(shapes))


def test_step_form_matches_a_numpy_loop_with_lengths_and_reverse(x64):
    """Independent of the cell's code: the equations of the paper's stabilised step, written
    once in NumPy, each sequence run alone up to its length and backwards."""
    cell, params, xs, lengths, _ = _random_case(jax.random.key(4))
    _, ys = UNROLL(cell, params, xs, lengths=lengths, reverse=True)
    w, b = np.asarray(params["w_ih"]), np.asarray(params["b_ih"])
    for row, length in enumerate(np.asarray(lengths)):
        want = _numpy_mlstm(np.asarray(xs[row, :length][::-1]) @ w + b)[::-1]
        np.testing.assert_allclose(ys[row, :length], want, rtol=1e-10, atol=1e-12)
        np.testing.assert_array_equal(ys[row, length:], 0.0)


def _numpy_mlstm(px: np.ndarray) -> np.ndarray:
    d, out = D_HEAD, []
    c, n, m = np.zeros((NH, d, d)), np.zeros((NH, d)), np.zeros(NH)
    for p in px:
        q, k, v = (p[j * H : (j + 1) * H].reshape(NH, d) for j in range(3))
        i, f, o = p[3 * H : 3 * H + NH], p[3 * H + NH : 3 * H + 2 * NH], p[3 * H + 2 * NH :]
        log_f = -np.logaddexp(0.0, -f)
        m_new = np.maximum(log_f + m, i)
        fg, ig = np.exp(log_f + m - m_new), np.exp(i - m_new)
        k = k / np.sqrt(d)
        c = fg[:, None, None] * c + ig[:, None, None] * np.einsum("hk,hv->hkv", k, v)
        n, m = fg[:, None] * n + ig[:, None] * k, m_new
        den = np.maximum(np.abs(np.einsum("hk,hk->h", q, n)), np.exp(-m)) + 1e-6
        h = np.einsum("hk,hkv->hv", q, c) / den[:, None]
        out.append(h.reshape(H) / (1.0 + np.exp(-o)))
    return np.stack(out)


def test_step_gradients_by_finite_differences(x64):
    cell, params, xs, _, _ = _random_case(jax.random.key(5), batch=2, steps=5, features=2)
    lengths = jnp.array([5, 3])

    @jax.jit
    def loss(b_ih, xs):
        final, ys = seqjax.unroll(cell, {**params, "b_ih": b_ih}, xs, lengths=lengths)
        return jnp.sum(ys**2) + jnp.sum(final.c) + jnp.sum(final.n)

    check_grads(loss, (params["b_ih"], xs), order=1, modes=["rev"], atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_long_sequence_with_large_gates_stays_finite_in_every_form(dtype):
    """T=2048 with gate pre-activations of +-20: exp(i) alone would overflow bfloat16 and
    float32 within a few dozen steps; the stabilised forms stay finite and agree."""
    cell, params, xs, _, _ = _random_case(jax.random.key(6), batch=1, steps=2048,
                                          gate_scale=20.0, dtype=jnp.float32)  # fmt: skip
    params = jax.tree.map(lambda p: p.astype(dtype), params)
    xs = xs.astype(dtype)
    run = jax.jit(lambda p, x, chunk: seqjax.unroll(cell, p, x, parallel=True, chunk_size=chunk),
                  static_argnums=2)  # fmt: skip
    step = jax.jit(lambda p, x: seqjax.unroll(cell, p, x))(params, xs)
    # bfloat16 keeps 8 bits: over 2048 steps its sums drift by a few percent of their size
    tol = 1e-5 if dtype == "float32" else 6e-2
    for got in (run(params, xs, None), run(params, xs, 64)):
        for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(step), strict=True):
            a, b = np.asarray(a, np.float32), np.asarray(b, np.float32)
            assert np.isfinite(a).all() and np.isfinite(b).all()
            np.testing.assert_allclose(a, b, atol=tol * np.abs(b).max())
    assert np.abs(np.asarray(step[1], np.float32)).max() > 0.1  # not trivially zero


@pytest.mark.parametrize("resets", [False, True])
def test_jitted_parallel_forms_from_a_zero_carry_agree_in_every_compilation(resets):
    """A zero carry made under jit is a broadcast, and XLA:CPU (jaxlib 0.10) miscompiled a dot
    against it in about half the compilations (benchmarks/xla_ynn_dot_repro.py): outputs of
    1e22 or -inf at this size (batch 16, T=100, 4 heads of 32). Several programs, each compiled
    on its own (the input scale differs), must all match the step form."""
    cell = mlstm(128, 4)
    params = cell.init(jax.random.key(8), 50)
    tokens = np.random.default_rng(8).integers(0, 50, (16, 100))
    xs = jax.nn.one_hot(tokens, 50, dtype=jnp.float32)
    cuts = jnp.asarray(np.random.default_rng(9).random((16, 100)) < 0.05) if resets else None
    step_form = jax.jit(lambda p, x: seqjax.unroll(cell, p, x, resets=cuts))
    cases = [(1.0, None), (0.5, None), (2.0, None), (1.5, 32)][: 3 if resets else 4]
    for scale, chunk in cases:
        run = jax.jit(lambda p, x, s=scale, c=chunk: seqjax.unroll(
            cell, p, x * s, parallel=True, chunk_size=c, resets=cuts))  # fmt: skip
        want = step_form(params, xs * scale)
        for a, b in zip(jax.tree.leaves(run(params, xs)), jax.tree.leaves(want), strict=True):
            np.testing.assert_allclose(a, b, atol=2e-5 * float(np.abs(b).max()), rtol=1e-4)


def test_layers_stack_and_bidirectional():
    cell, _, xs, lengths, _ = _random_case(jax.random.key(9), dtype=jnp.float32)
    fwd = seqjax.rnn(cell, parallel=True, chunk_size=4)
    layer = seqjax.stack(seqjax.bidirectional(fwd, seqjax.rnn(cell)), seqjax.rnn(cell))
    p = layer.init(jax.random.key(1), xs.shape[-1])
    _, ys = jax.jit(lambda p, x, n: layer.apply(p, x, lengths=n))(p, xs, lengths)
    assert ys.shape == (2, xs.shape[1], H)
    forward_alone = seqjax.unroll(cell, p[0]["forward"], xs, lengths=lengths)[1]
    backward_alone = seqjax.unroll(cell, p[0]["backward"], xs, lengths=lengths, reverse=True)[1]
    first = seqjax.bidirectional(fwd, seqjax.rnn(cell))
    _, ys_first = first.apply(p[0], xs, lengths=lengths)
    want = jnp.concatenate([forward_alone, backward_alone], axis=-1)
    np.testing.assert_allclose(ys_first, want, rtol=1e-5, atol=1e-5)


def test_bad_configurations_name_the_argument():
    with pytest.raises(ValueError, match="num_heads must divide hidden_size"):
        mlstm(10, 3)
    with pytest.raises(ValueError, match="hidden_size"):
        mlstm(0, 1)
    with pytest.raises(ValueError, match="eps"):
        mlstm(8, 2, eps=-1.0)
    cell = mlstm(8, 2)
    params = cell.init(jax.random.key(0), 3)
    xs = jnp.ones((1, 4, 3))
    with pytest.raises(ValueError, match="chunk_size"):
        seqjax.unroll(cell, params, xs, parallel=True, chunk_size=0)
    with pytest.raises(ValueError, match="chunk_size applies to parallel=True"):
        seqjax.unroll(cell, params, xs, chunk_size=4)
    with pytest.raises(ValueError, match="features"):
        seqjax.unroll(cell, params, jnp.ones((1, 4, 5)))
    with pytest.raises(ValueError, match="parallel=True needs"):
        seqjax.unroll(seqjax.lstm(4), seqjax.lstm(4).init(jax.random.key(0), 3), xs,
                      parallel=True)  # fmt: skip


def test_a_wrapper_that_changes_the_step_loses_the_sequence_forms():
    cell = mlstm(8, 2)
    wrapped = cell._replace(recur=lambda p, c, x: cell.recur(p, c, x))
    assert cell.sequence_forms() is not None and wrapped.sequence_forms() is None
    params = cell.init(jax.random.key(0), 3)
    with pytest.raises(ValueError, match="parallel=True needs"):
        seqjax.unroll(wrapped, params, jnp.ones((1, 4, 3)), parallel=True)


BLOCK_GOLDEN = GOLDEN.with_name("mlstm_xlstm_block.npz")


def block_params_from_xlstm(f) -> dict:
    """xlstm's mLSTMBlock state_dict in the block's layout: transposes, and the norms' scale
    is ``1 + weight`` (xlstm keeps the residual of the scale)."""
    p = {k[len("param/") :]: jnp.asarray(f[k]) for k in f.files if k.startswith("param/")}
    cell = "xlstm.mlstm_cell."
    return {
        "norm": 1.0 + p["xlstm_norm.weight"],
        "w_up": p["xlstm.proj_up.weight"].T,
        "conv_w": p["xlstm.conv1d.conv.weight"][:, 0, :].T,
        "conv_b": p["xlstm.conv1d.conv.bias"],
        **{f"w_{n}": jnp.swapaxes(p[f"xlstm.{n}_proj.weight"], 1, 2) for n in "qkv"},
        "w_i": p[cell + "igate.weight"].T,
        "b_i": p[cell + "igate.bias"],
        "w_f": p[cell + "fgate.weight"].T,
        "b_f": p[cell + "fgate.bias"],
        "group_norm": 1.0 + p[cell + "outnorm.weight"],
        "skip": p["xlstm.learnable_skip"],
        "w_down": p["xlstm.proj_down.weight"].T,
    }


def test_block_matches_xlstm_float64(x64):
    from seqjax.blocks.mlstm_block import mlstm_block

    with np.load(BLOCK_GOLDEN) as f:
        g = {k: f[k] for k in f.files}
        params = block_params_from_xlstm(f)
    xs = jnp.asarray(g["x"])
    for form in ("step", "chunkwise"):
        block = mlstm_block(8, num_heads=2, inner_multiple_of=4, **FORMS[form])
        assert jax.tree.map(jnp.shape, block.init(jax.random.key(0), 8)) == jax.tree.map(
            jnp.shape, params
        )
        loss = lambda p, x: jnp.sum(block.apply(p, x)[1] * g["cot_y"])  # noqa: B023, E731
        # xlstm's quadratic form leaves the zero state's candidate out of its stabiliser m, so
        # its eps term differs: ~1e-7 relative here; with eps=0 on both sides the two agree
        # to 2e-13 (checked once by hand; docs/concepts/mlstm.md)
        tol = dict(rtol=1e-6, atol=1e-8)
        np.testing.assert_allclose(block.apply(params, xs)[1], g["y"], **tol)
        d_params, d_xs = jax.jit(jax.grad(loss, argnums=(0, 1)))(params, xs)
        np.testing.assert_allclose(d_xs, g["grad/x"], **tol)
        np.testing.assert_allclose(d_params["w_up"], g["grad/xlstm.proj_up.weight"].T, **tol)
        np.testing.assert_allclose(
            d_params["w_i"], g["grad/xlstm.mlstm_cell.igate.weight"].T, **tol
        )
        np.testing.assert_allclose(
            d_params["conv_w"], g["grad/xlstm.conv1d.conv.weight"][:, 0, :].T, **tol
        )


def test_block_in_chunks_with_lengths_and_resets_equals_one_pass():
    from seqjax.blocks.mlstm_block import mlstm_block

    block = mlstm_block(8, num_heads=2, inner_multiple_of=4, parallel=True, chunk_size=4)
    params = block.init(jax.random.key(0), 8)
    apply = jax.jit(block.apply)  # compiled per shape: eager dispatch costs ~4x more here
    xs = jax.random.normal(jax.random.key(1), (2, 10, 8))
    resets = jnp.zeros((2, 10), bool).at[0, 6].set(True)
    whole_carry, whole = apply(params, xs, resets=resets)
    carry, first = apply(params, xs[:, :6], resets=resets[:, :6])
    fresh = block.initial_carry(params, (2,))  # resets restart from zeros, not from `carry`
    end_carry, second = apply(params, xs[:, 6:], carry=carry, resets=resets[:, 6:],
                                    reset_carry=fresh)  # fmt: skip
    np.testing.assert_allclose(jnp.concatenate([first, second], 1), whole, rtol=1e-5, atol=1e-5)
    for a, b in zip(jax.tree.leaves(end_carry), jax.tree.leaves(whole_carry), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)
    # row 0 after its reset is row 0 of the segment run alone
    alone = apply(params, xs[:1, 6:])[1]
    np.testing.assert_allclose(whole[:1, 6:], alone, rtol=1e-5, atol=1e-5)
    lengths = jnp.array([10, 5])
    short_carry, short = apply(params, xs, lengths=lengths)
    np.testing.assert_array_equal(short[1, 5:], 0.0)
    cut_carry, cut = apply(params, xs[1:, :5])
    np.testing.assert_allclose(short[1:, :5], cut, rtol=1e-5, atol=1e-5)
    for a, b in zip(jax.tree.leaves(short_carry), jax.tree.leaves(cut_carry), strict=True):
        np.testing.assert_allclose(a[1:], b, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="num_heads must divide"):
        mlstm_block(8, num_heads=3, inner_multiple_of=4)
    with pytest.raises(ValueError, match="reverse=True is not supported"):
        mlstm_block(8, reverse=True)
    with pytest.raises(ValueError, match="input_size must equal"):
        block.init(jax.random.key(0), 5)
