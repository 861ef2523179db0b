"""The sLSTM against NX-AI's xlstm (golden vectors of its vanilla backend), a NumPy float64
loop of the paper's unstabilised equations, and finite differences; lengths, reverse, resets
and remat through unroll; its layers, stability over long sequences, init and errors."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import GOLDEN_DIR
from jax.test_util import check_grads

from seqjax import layers, precision
from seqjax.blocks.slstm_block import slstm_block
from seqjax.cells.slstm import SLSTMCarry, powerlaw_forget_bias, slstm
from seqjax.unroll import unroll

B, T, D, H, HEADS = 3, 7, 3, 4, 2
LENGTHS = np.array([7, 4, 2])
RESETS = np.zeros((B, T), bool)
RESETS[0, [2, 5]] = True
RESETS[1, [0, 3]] = True
RESETS[2, [4]] = True  # past its length: ignored


def golden() -> dict[str, np.ndarray]:
    with np.load(GOLDEN_DIR / "xlstm_slstm.npz") as data:
        return {key: data[key] for key in data.files}


def from_xlstm(w, r, b):
    """xlstm's layouts in seqjax's: ``w (4H, D)`` (a torch Linear), ``r (heads, d_in, 4,
    d_out)`` and ``b (heads, 4, d)`` (the cell's external ``recurrent_kernel``, ``bias``)."""
    heads, d = r.shape[0], r.shape[1]
    params = {"r": r.reshape(heads, d, 4 * d), "b": b.transpose(1, 0, 2).reshape(-1)}
    return params if w is None else params | {"w": w.T}


def to_xlstm_r(r):
    heads, d = r.shape[:2]
    return np.asarray(r).reshape(heads, d, 4, d)


def to_xlstm_b(b, heads):
    return np.asarray(b).reshape(4, heads, -1).transpose(1, 0, 2)


def sigmoid(a):
    return 1.0 / (1.0 + np.exp(-a))


def numpy_run(p, x, carry0, forget_gate="sigmoid", length=None, reverse=False, resets=None):
    """One sequence ``x (T, D)``, in float64, with the paper's equations *without* the
    stabiliser (the true ``c``, ``n`` grow as ``exp``; fine for short sequences and small
    weights) and a dense block-diagonal recurrent matrix built head by head. ``carry0`` is
    the stabilised ``(h, c, n, m)``; the true state is ``c exp(m)``, ``n exp(m)``. Returns
    the outputs ``(T, H)`` (zero past ``length``) and the final stabilised-form state, with
    ``m`` taken from the reference's rule to compare the scaled ``c``, ``n``."""
    p = {k: np.asarray(v, np.float64) for k, v in p.items()}
    heads, d, _ = p["r"].shape
    hidden = heads * d
    dense = np.zeros((hidden, 4 * hidden))  # rows: h, columns: gate-major (gate, head, unit)
    for k in range(heads):
        for g in range(4):
            block = p["r"][k][:, g * d : (g + 1) * d]
            dense[k * d : (k + 1) * d, g * hidden + k * d : g * hidden + (k + 1) * d] = block
    h0, c0, n0, m0 = (np.asarray(a, np.float64) for a in carry0)
    steps = x.shape[0] if length is None else int(length)
    order = range(steps - 1, -1, -1) if reverse else range(steps)
    y = np.zeros((x.shape[0], hidden))
    h, c, n, m = h0, c0 * np.exp(m0), n0 * np.exp(m0), m0
    for t in order:
        if resets is not None and (t + 1 < steps and resets[t + 1] if reverse else resets[t]):
            h, c, n, m = h0, c0 * np.exp(m0), n0 * np.exp(m0), m0
        a = x[t] @ p["w"] + p["b"] + h @ dense
        i, f, z, o = np.split(a, 4)
        log_f = np.log(sigmoid(f)) if forget_gate == "sigmoid" else f
        m = np.where(n == 0, i, np.maximum(log_f + m, i))
        f_gate = sigmoid(f) if forget_gate == "sigmoid" else np.exp(f)
        c = f_gate * c + np.exp(i) * np.tanh(z)
        n = f_gate * n + np.exp(i)
        h = sigmoid(o) * c / n
        y[t] = h
    return y, (h, c * np.exp(-m), n * np.exp(-m), m)


def random_params(cell, seed=0, dtype=jnp.float64, scale=0.7):
    """Every entry random, so no term hides behind a zero recurrent matrix (drawn by NumPy
    on ``cell.init``'s shapes: no compilation)."""
    shapes = jax.eval_shape(lambda: cell.init(jax.random.key(0), D))
    rng = np.random.default_rng(seed)
    return {k: jnp.asarray(scale * rng.standard_normal(v.shape), dtype) for k, v in shapes.items()}


def inputs(seed=3, dtype=jnp.float64):
    rng = np.random.default_rng(seed)
    xs = jnp.asarray(rng.standard_normal((B, T, D)), dtype)
    carry = SLSTMCarry(
        jnp.asarray(0.5 * rng.standard_normal((B, H)), dtype),
        jnp.asarray(0.5 * rng.standard_normal((B, H)), dtype),
        jnp.asarray(1.0 + rng.uniform(size=(B, H)), dtype),
        jnp.full((B, H), 0.3, dtype),
    )
    return xs, carry


def row(carry, b):
    return tuple(np.asarray(leaf[b]) for leaf in carry)


# --- xlstm parity --------------------------------------------------------------------------


@pytest.mark.parametrize("custom_vjp", [True, False])
@pytest.mark.parametrize("from_state", [False, True])
def test_cell_matches_xlstm_in_float64(x64, custom_vjp, from_state):
    """Outputs, final (h, c, n, m) and every gradient equal xlstm's to ~1e-14; tolerance
    1e-10. From the zero state the first step takes m = i~ (xlstm's n == 0 branch)."""
    g = golden()
    heads, d = g["cell_r"].shape[:2]
    cell = slstm(heads * d, num_heads=heads)
    params = jax.tree.map(jnp.asarray, from_xlstm(g["cell_w"], g["cell_r"], g["cell_b"]))
    pre = "cell_s0_" if from_state else "cell_"
    carry = SLSTMCarry(*map(jnp.asarray, g["cell_s0"])) if from_state else None

    def loss(params, xs, carry):
        final, ys = unroll(cell, params, xs, carry=carry, custom_vjp=custom_vjp)
        stacked = jnp.stack(list(final))
        value = jnp.sum(ys * g["cell_loss_y"]) + jnp.sum(stacked * g["cell_loss_final"])
        return value, (ys, stacked)

    grads, (ys, final) = jax.jit(jax.grad(loss, argnums=(0, 1, 2), has_aux=True))(
        params, jnp.asarray(g["cell_x"]), carry
    )
    close = lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-10)  # noqa: E731
    close(ys, g[pre + "y"])
    close(final, g[pre + "final"])
    close(to_xlstm_r(grads[0]["r"]), g[pre + "grad_r"])
    if from_state:
        close(np.stack(list(grads[2])), g["cell_s0_grad_s0"])
    else:
        close(grads[1], g["cell_grad_x"])
        close(grads[0]["w"].T, g["cell_grad_w"])
        close(to_xlstm_b(grads[0]["b"], heads), g["cell_grad_b"])


def test_cell_matches_xlstm_in_float32():
    """The same run in float32: within 2e-5 of the float64 reference."""
    g = golden()
    heads, d = g["cell_r"].shape[:2]
    cell = slstm(heads * d, num_heads=heads)
    params = from_xlstm(g["cell_w"], g["cell_r"], g["cell_b"])
    params = {k: jnp.asarray(v, jnp.float32) for k, v in params.items()}
    final, ys = unroll(cell, params, jnp.asarray(g["cell_x"], jnp.float32))
    np.testing.assert_allclose(ys, g["cell_y"], rtol=2e-5, atol=2e-5)
    np.testing.assert_allclose(np.stack(list(final)), g["cell_final"], rtol=2e-5, atol=2e-5)


# --- the equations, independently ----------------------------------------------------------


@pytest.mark.parametrize("forget_gate", ["sigmoid", "exp"])
def test_matches_unstabilised_numpy_loop(x64, forget_gate):
    """The stabiliser changes nothing but the scale: h equals the paper's plain equations,
    and (c, n) are its cell and normaliser times exp(-m)."""
    cell = slstm(H, num_heads=HEADS, forget_gate=forget_gate)
    params = random_params(cell)
    xs, carry = inputs()
    final, ys = jax.jit(lambda p, x, c: unroll(cell, p, x, carry=c))(params, xs, carry)
    for b in range(B):
        want_y, want_final = numpy_run(params, np.asarray(xs[b]), row(carry, b), forget_gate)
        np.testing.assert_allclose(ys[b], want_y, rtol=1e-10, atol=1e-12)
        for got, want in zip(row(final, b), want_final, strict=True):
            np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("forget_gate", ["sigmoid", "exp"])
def test_gradients_match_finite_differences(x64, forget_gate):
    cell = slstm(H, num_heads=HEADS, forget_gate=forget_gate)
    params = random_params(cell, scale=0.5)
    xs, carry = inputs()
    weights = np.random.default_rng(9).standard_normal((B, T, H))

    def loss(params, xs, carry):
        final, ys = unroll(cell, params, xs, carry=carry)
        return jnp.sum(ys * weights) + jnp.sum(final.c) + jnp.sum(final.h)

    check_grads(jax.jit(loss), (params, xs, carry), order=1, modes=["rev"], atol=1e-6, rtol=1e-6)


def test_custom_vjp_gradients_equal_autodiff(x64):
    """unroll's own backward pass (the RecurSplit) against plain autodiff of the scan."""
    cell = slstm(H, num_heads=HEADS)
    params = random_params(cell)
    xs, carry = inputs()

    def grads(custom_vjp):
        def loss(p, x, c):
            final, ys = unroll(cell, p, x, carry=c, lengths=LENGTHS, custom_vjp=custom_vjp)
            return jnp.sum(ys**2) + jnp.sum(final.n) + jnp.sum(final.m)

        return jax.jit(jax.grad(loss, argnums=(0, 1, 2)))(params, xs, carry)

    jax.tree.map(
        lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-12),
        grads(True),
        grads(False),
    )


# --- unroll's options ------------------------------------------------------------------------


@pytest.mark.parametrize("reverse", [False, True])
def test_lengths_and_reverse_match_each_sequence_alone(x64, reverse):
    cell = slstm(H, num_heads=HEADS, forget_gate="exp")
    params = random_params(cell)
    xs, carry = inputs()
    final, ys = unroll(cell, params, xs, carry=carry, lengths=LENGTHS, reverse=reverse)
    for b in range(B):
        want_y, want_final = numpy_run(
            params, np.asarray(xs[b]), row(carry, b), "exp", length=LENGTHS[b], reverse=reverse
        )
        np.testing.assert_allclose(ys[b], want_y, rtol=1e-10, atol=1e-12)
        for got, want in zip(row(final, b), want_final, strict=True):
            np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("reverse", [False, True])
def test_resets_restart_from_the_initial_carry(x64, reverse):
    cell = slstm(H, num_heads=HEADS)
    params = random_params(cell)
    xs, carry = inputs()
    _, ys = unroll(cell, params, xs, carry=carry, lengths=LENGTHS, resets=RESETS, reverse=reverse)
    for b in range(B):
        want, _ = numpy_run(
            params, np.asarray(xs[b]), row(carry, b), length=LENGTHS[b], reverse=reverse,
            resets=RESETS[b],
        )  # fmt: skip
        np.testing.assert_allclose(ys[b], want, rtol=1e-10, atol=1e-12)


def test_resets_from_zeros_restart_the_stabiliser():
    """A reset to the zero carry leaves n = 0, so the restarted step takes m = i~ again: the
    segment after it runs exactly as a sequence of its own."""
    cell = slstm(H, num_heads=HEADS)
    params = random_params(cell, dtype=jnp.float32)
    xs, _ = inputs(dtype=jnp.float32)
    resets = np.zeros((B, T), bool)
    resets[:, 3] = True
    run = jax.jit(lambda x, r: unroll(cell, params, x, resets=r))
    final, ys = run(xs, resets)
    alone_final, alone = run(xs[:, 3:], np.zeros((B, T - 3), bool))
    np.testing.assert_allclose(ys[:, 3:], alone, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(final.m, alone_final.m, rtol=1e-6, atol=1e-6)


def test_remat_gives_the_same_values_and_gradients():
    cell = slstm(H, num_heads=HEADS)
    params = random_params(cell, dtype=jnp.float32)
    xs, carry = inputs(dtype=jnp.float32)

    def run(remat):
        def loss(p, x):
            final, ys = unroll(cell, p, x, carry=carry, lengths=LENGTHS, remat=remat)
            return jnp.sum(ys * x[..., :1]) + jnp.sum(final.c)

        return jax.jit(jax.value_and_grad(loss, argnums=(0, 1)))(params, xs)

    jax.tree.map(
        lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6), run(True), run(False)
    )


# --- layers ----------------------------------------------------------------------------------


def test_rnn_stack_and_bidirectional():
    """An sLSTM layer equals unroll; a bidirectional layer's backward half equals the cell
    run over each sequence from its own last step; a stack feeds one into the next."""
    cell = slstm(H, num_heads=HEADS)
    bi = layers.bidirectional(layers.rnn(cell), layers.rnn(cell))
    model = layers.stack(bi, layers.rnn(slstm(6, num_heads=3)))
    params = model.init(jax.random.key(0), D)
    xs, _ = inputs(dtype=jnp.float32)

    @jax.jit
    def run(params, xs):
        (bi_carry, top_carry), ys = model.apply(params, xs, lengths=LENGTHS)
        _, bi_ys = bi.apply(params[0], xs, lengths=LENGTHS)
        _, fwd = unroll(cell, params[0]["forward"], xs, lengths=LENGTHS)
        back_carry, back = unroll(cell, params[0]["backward"], xs, lengths=LENGTHS, reverse=True)
        _, top = unroll(model.spec.layers[1].spec.cell, params[1], bi_ys, lengths=LENGTHS)
        return ys, top_carry, bi_ys, bi_carry, fwd, back, back_carry, top

    ys, top_carry, bi_ys, bi_carry, fwd, back, back_carry, top = run(params, xs)
    assert ys.shape == (B, T, 6) and isinstance(top_carry, SLSTMCarry)
    close = lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)  # noqa: E731
    close(bi_ys[..., :H], fwd)
    close(bi_ys[..., H:], back)
    jax.tree.map(close, bi_carry[1], back_carry)
    close(ys, top)
    assert np.any(back[:, 0])  # the backward half is not the zero padding


def test_input_projection_false_takes_gate_preactivations():
    """The cell without its input matrix (xlstm's sLSTMCell) equals the full one fed x W."""
    full = slstm(H, num_heads=HEADS)
    bare = slstm(H, num_heads=HEADS, input_projection=False)
    params = random_params(full, dtype=jnp.float32)
    xs, _ = inputs(dtype=jnp.float32)
    bare_params = jax.eval_shape(lambda: bare.init(jax.random.key(0), 4 * H))
    assert set(bare_params) == {"r", "b"} and bare.input_size(bare_params) == 4 * H
    _, want = unroll(full, params, xs)
    _, got = unroll(bare, {"r": params["r"], "b": params["b"]}, xs @ params["w"])
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)


# --- numerics over long sequences ----------------------------------------------------------


def long_run_inputs(steps=1000, scale=60.0):
    """Pre-activations of tens to hundreds: exp of them overflows float32 and bfloat16."""
    cell = slstm(8, num_heads=2, forget_gate="exp")
    rng = np.random.default_rng(0)
    params = {
        "w": jnp.asarray(scale * rng.standard_normal((4, 32)) / 2, jnp.float32),
        "r": jnp.asarray(rng.standard_normal((2, 4, 16)), jnp.float32),
        "b": jnp.zeros((32,), jnp.float32),
    }
    xs = jnp.asarray(rng.standard_normal((2, steps, 4)), jnp.float32)
    return cell, params, xs


def test_unstabilised_equations_overflow_on_the_long_inputs():
    """The stability test below would be vacuous if plain exp gates stayed finite here."""
    _, params, xs = long_run_inputs()
    pre = np.asarray(xs @ params["w"] + params["b"], np.float32)
    with np.errstate(over="ignore"):
        assert not np.all(np.isfinite(np.exp(pre)))


@pytest.mark.parametrize("policy", ["float32", "mixed", "bfloat16"])
def test_long_sequences_stay_finite_and_bounded(policy):
    """T=1000 with large pre-activations: h, c, n, m finite, |h| <= 1 and n >= 1 (one of the
    scaled gates is 1 at every step), and finite gradients, in float32, the mixed policy
    (bfloat16 matmuls) and wholly bfloat16."""
    cell, params, xs = long_run_inputs()
    if policy == "mixed":
        params = precision.cast(params, "bfloat16")
    elif policy == "bfloat16":
        params = jax.tree.map(lambda a: a.astype(jnp.bfloat16), params)
        xs = xs.astype(jnp.bfloat16)

    def loss(p):
        final, ys = unroll(cell, p, xs)
        return jnp.sum(ys.astype(jnp.float32)), (final, ys)

    grads, (final, ys) = jax.jit(jax.grad(loss, has_aux=True))(params)
    ys32 = np.asarray(ys, np.float32)
    assert np.all(np.isfinite(ys32)) and np.abs(ys32).max() <= 1.0 + 1e-2
    for leaf in final:
        assert np.all(np.isfinite(np.asarray(leaf, np.float32)))
    assert np.asarray(final.n, np.float32).min() >= 1.0 - 1e-2
    assert np.asarray(final.m, np.float32).max() > 100  # the true scale is far past exp's range
    for leaf in jax.tree.leaves(grads):
        assert np.all(np.isfinite(np.asarray(leaf, np.float32)))


# --- init and errors -----------------------------------------------------------------------


def test_init_follows_xlstm():
    """Zero recurrent matrix, zero biases but the forget gate's power law per head (xlstm's
    powerlaw_blockdependent for one block, from 5 down to -7), Lecun-normal input weights."""
    cell = slstm(8, num_heads=2)
    params = cell.init(jax.random.key(0), 5)
    assert params["w"].shape == (5, 32) and params["r"].shape == (2, 4, 16)
    assert not np.any(params["r"])
    b = np.asarray(params["b"]).reshape(4, 2, 4)
    want = -(-5.0 + 12.0 * (np.arange(4) / 3) ** 0.3)  # xlstm's formula
    np.testing.assert_allclose(b[1], np.stack([want, want]), rtol=1e-6)
    np.testing.assert_allclose(powerlaw_forget_bias(4), want, rtol=1e-6)
    assert not np.any(b[[0, 2, 3]])
    uniform = slstm(8, num_heads=2, init="pytorch", forget_bias=None).init(jax.random.key(0), 5)
    assert np.abs(uniform["r"]).max() <= 1 / np.sqrt(8) and np.any(uniform["r"])
    assert slstm(8, num_heads=2, forget_bias=2.0).init(jax.random.key(0), 5)["b"][9] == 2.0


@pytest.mark.parametrize(
    "kwargs, error, message",
    [
        ({"hidden_size": 6, "num_heads": 4}, ValueError, "num_heads must divide hidden_size"),
        ({"hidden_size": 8, "num_heads": 0}, ValueError, "num_heads must be a positive"),
        ({"hidden_size": 8, "forget_gate": "tanh"}, ValueError, "unknown forget_gate 'tanh'"),
        ({"hidden_size": 8, "forget_bias": "big"}, TypeError, "forget_bias must be"),
        ({"hidden_size": 8, "input_projection": 1}, TypeError, "input_projection must be"),
        ({"hidden_size": 8, "recurent_init": None}, TypeError, "unknown keyword"),
    ],
)
def test_bad_configurations_are_refused_by_name(kwargs, error, message):
    with pytest.raises(error, match=message):
        slstm(**kwargs)


def test_wrong_input_size_is_refused():
    cell = slstm(H, num_heads=HEADS)
    params = cell.init(jax.random.key(0), D)
    with pytest.raises(ValueError, match=r"xs has 5 features .* params expect 3"):
        unroll(cell, params, jnp.zeros((B, T, 5)))
    with pytest.raises(ValueError, match="the 16 gate pre-activations"):
        slstm(H, num_heads=HEADS, input_projection=False).init(jax.random.key(0), D)


# --- the sLSTM block -----------------------------------------------------------------------


def block_params_from_xlstm(g):
    """xlstm's ``sLSTMBlock`` state in the block's layout. Its norms keep ``weight`` with the
    scale ``1 + weight``; its LinearHeadwiseExpand weights are ``(heads, out, in)``; and its
    layer computes the i pre-activation with the module named ``fgate``, f with ``igate``."""
    get = lambda name: g[f"block_{name}"]  # noqa: E731
    headwise = lambda name: np.swapaxes(get(f"xlstm__{name}__weight"), 1, 2)  # noqa: E731
    return {
        "norm": 1 + get("xlstm_norm__weight"),
        "conv_w": get("xlstm__conv1d__conv__weight")[:, 0, :].T,
        "conv_b": get("xlstm__conv1d__conv__bias"),
        "w_gates": np.stack([headwise(n) for n in ("fgate", "igate", "zgate", "ogate")]),
        "cell": from_xlstm(None, g["block_r"], g["block_b"]),
        "group_norm": 1 + get("xlstm__group_norm__weight"),
        "ffn_norm": 1 + get("ffn_norm__weight"),
        "w_up": get("ffn__proj_up__weight").T,
        "w_down": get("ffn__proj_down__weight").T,
    }


def test_block_matches_xlstm_in_float64(x64):
    """Outputs, the final sLSTM and conv states and every gradient equal xlstm's sLSTMBlock
    (~1e-13); tolerance 1e-10."""
    g = golden()
    params = jax.tree.map(jnp.asarray, block_params_from_xlstm(g))
    heads, D = g["block_r"].shape[0], g["block_x"].shape[-1]
    block = slstm_block(D, num_heads=heads)
    shapes = jax.eval_shape(lambda: block.init(jax.random.key(0), D))
    assert jax.tree.map(jnp.shape, shapes) == jax.tree.map(jnp.shape, params)

    def loss(params, xs):
        final, ys = block.apply(params, xs)
        return jnp.sum(ys * g["block_loss_y"]), (final, ys)

    (grads, d_xs), (final, ys) = jax.jit(jax.grad(loss, argnums=(0, 1), has_aux=True))(
        params, jnp.asarray(g["block_x"])
    )
    close = lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-10)  # noqa: E731
    close(ys, g["block_y"])
    close(np.stack(list(final.cell)), g["block_final"])
    close(final.conv.reshape(g["block_conv_state"].shape), g["block_conv_state"])
    close(d_xs, g["block_grad_x"])
    # The mapping is linear, so each gradient maps back as its parameter does.
    want = block_params_from_xlstm({k.replace("grad_", "", 1): v for k, v in g.items()})
    want["norm"], want["group_norm"], want["ffn_norm"] = (
        g[f"block_grad_{n}__weight"] for n in ("xlstm_norm", "xlstm__group_norm", "ffn_norm")
    )
    jax.tree.map(close, grads, want)


def block_inputs(seed=5, D=8):
    rng = np.random.default_rng(seed)
    return jnp.asarray(rng.standard_normal((B, T, D)), jnp.float32)


def random_block_params(block, D=8, seed=0):
    shapes = jax.eval_shape(lambda: block.init(jax.random.key(0), D))
    rng = np.random.default_rng(seed)
    return jax.tree.map(
        lambda s: jnp.asarray(0.5 * rng.standard_normal(s.shape), jnp.float32), shapes
    )


def test_block_lengths_resets_and_chunks_match_runs_alone():
    """A sequence cut in two chunks (the carry passed on) gives the whole run; a row with a
    length gives the run over its first steps (outputs, then zeros, and its carry); a row
    reset at step 3 runs its second part as a sequence of its own."""
    block = slstm_block(8, num_heads=2)
    params = random_block_params(block)
    xs = block_inputs()
    fresh = block.initial_carry(params, (B,))
    apply = jax.jit(lambda x, carry, lengths=None, resets=None: block.apply(
        params, x, lengths=lengths, carry=carry, resets=resets))  # fmt: skip
    close = lambda a, b: np.testing.assert_allclose(a, b, rtol=2e-5, atol=2e-5)  # noqa: E731
    first, head = apply(xs[:, :3], fresh)
    last, tail = apply(xs[:, 3:], first)
    _, after = apply(xs[:, 3:], fresh)
    whole_final, whole = apply(xs, fresh)
    close(jnp.concatenate([head, tail], axis=1), whole)
    jax.tree.map(close, last, whole_final)
    lengths, resets = np.array([T, 3, 3]), np.zeros((B, T), bool)
    resets[0, 3] = True
    final, ys = apply(xs, fresh, lengths, resets)
    close(ys[:, :3], head)
    close(ys[0, 3:], after[0])
    assert not np.any(ys[1:, 3:])
    jax.tree.map(lambda a, w: close(a[1:], w[1:]), final, first)


def test_block_stacks_and_runs_bidirectionally():
    block, no_conv = slstm_block(8, num_heads=2), slstm_block(8, num_heads=2, conv_width=0)
    model = layers.stack(block, layers.rnn(slstm(8, num_heads=2)), no_conv)
    bi = layers.bidirectional(block, block)
    params = model.init(jax.random.key(0), 8)
    assert "conv_w" in params[0] and "conv_w" not in params[2]
    bi_params = {"forward": params[0], "backward": params[0]}
    xs = block_inputs()

    @jax.jit
    def run(params, xs):
        _, ys = model.apply(params, xs, lengths=LENGTHS)
        _, first = block.apply(params[0], xs, lengths=LENGTHS)
        _, second = unroll(model.spec.layers[1].spec.cell, params[1], first, lengths=LENGTHS)
        _, want = no_conv.apply(params[2], second, lengths=LENGTHS)
        _, both = bi.apply(bi_params, xs, lengths=LENGTHS)
        _, back = block.apply(params[0], xs[:, ::-1])
        return ys, want, first, both, back[:, ::-1]

    ys, want, first, both, back = run(params, xs)
    np.testing.assert_allclose(ys, want, rtol=1e-5, atol=1e-5)
    assert both.shape == (B, T, 16)
    np.testing.assert_allclose(both[..., :8], first, rtol=1e-5, atol=1e-5)
    # The backward half of the full-length row: the block over the row reversed.
    assert LENGTHS[0] == T
    np.testing.assert_allclose(both[0, :, 8:], back[0], rtol=1e-5, atol=1e-5)


def test_block_runs_under_the_mixed_policy():
    """bfloat16 matmuls (precision.cast) stay within bfloat16's rounding of float32."""
    block = slstm_block(8, num_heads=2)
    params = random_block_params(block)
    run = jax.jit(lambda p, x: block.apply(p, x)[1])
    want = run(params, block_inputs())
    got = run(precision.cast(params, "bfloat16"), block_inputs())
    assert got.dtype == jnp.float32 and not np.array_equal(got, want)
    np.testing.assert_allclose(got, want, rtol=5e-2, atol=5e-2)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"embedding_dim": 6, "num_heads": 4}, "num_heads must divide embedding_dim"),
        ({"embedding_dim": 8, "conv_width": -1}, "conv_width must be an integer >= 0"),
        ({"embedding_dim": 8, "reverse": True}, "reverse=True is not supported"),
        ({"embedding_dim": 8, "forget_gate": "relu"}, "unknown forget_gate 'relu'"),
        ({"embedding_dim": 8, "ffn_factor": 0}, "ffn_factor must be a number > 0"),
    ],
)
def test_block_bad_configurations_are_refused_by_name(kwargs, message):
    with pytest.raises(ValueError, match=message):
        slstm_block(**kwargs)


def test_block_bad_inputs_are_refused_by_name():
    block = slstm_block(8, num_heads=2)
    with pytest.raises(ValueError, match="input_size must equal embedding_dim"):
        block.init(jax.random.key(0), 5)
    params = block.init(jax.random.key(0), 8)
    with pytest.raises(ValueError, match="xs has 5 features"):
        block.apply(params, jnp.zeros((B, T, 5)))
    with pytest.raises(ValueError, match="carry has the wrong structure"):
        block.apply(params, jnp.zeros((B, T, 8)), carry=(1, 2, 3))
