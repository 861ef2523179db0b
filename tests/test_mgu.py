"""The MGU against Flax's ``MGUCell`` (golden vectors), a NumPy float64 loop of its equations
(lengths, reverse, resets) and finite differences; its layers, init and errors."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import load_golden
from jax.test_util import check_grads

from seqjax import layers
from seqjax.cells.mgu import mgu
from seqjax.unroll import unroll

B, T, D, H = 3, 8, 3, 4
LENGTHS = np.array([8, 5, 3])
RESETS = np.zeros((B, T), bool)
RESETS[0, [2, 6]] = True
RESETS[1, [0, 3]] = True
RESETS[2, [5]] = True  # past its length: ignored


def sigmoid(a):
    return 1.0 / (1.0 + np.exp(-a))


def numpy_run(p, x, h0, reset_gate=True, length=None, reverse=False, resets=None):
    """One sequence ``x (T, D)`` from ``h0 (H,)``, written from Flax's equations: outputs
    ``(T, H)`` (zero past ``length``) and the final state. ``resets (T,)`` restart from
    ``h0`` before a flagged step (a reversed run: after the segment's first step)."""
    p = {k: np.asarray(v, np.float64) for k, v in p.items()}
    steps = x.shape[0] if length is None else int(length)
    order = range(steps - 1, -1, -1) if reverse else range(steps)
    y, h = np.zeros((x.shape[0], H)), np.asarray(h0, np.float64)
    for t in order:
        # a segment starts at each flagged step; reversed, one ends there (t + 1 flagged)
        if resets is not None and (t + 1 < steps and resets[t + 1] if reverse else resets[t]):
            h = np.asarray(h0, np.float64)
        gx, gh = x[t] @ p["w_ih"] + p["b_ih"], h @ p["w_hh"] + p["b_hh"]
        f = sigmoid(gx[:H] + gh[:H])
        n = np.tanh(gx[H:] + (f * gh[H:] if reset_gate else gh[H:]))
        h = (1 - f) * n + f * h
        y[t] = h
    return y, h


def random_params(cell, seed=0, dtype=jnp.float64):
    """Every entry random, so no term hides behind a zero bias."""
    params = cell.init(jax.random.key(seed), D, dtype)
    keys = jax.random.split(jax.random.key(seed + 1), len(params))
    return {
        k: 0.7 * jax.random.normal(kk, v.shape, dtype)
        for (k, v), kk in zip(sorted(params.items()), keys, strict=True)
    }


def inputs(seed=3, dtype=jnp.float64):
    xs = jax.random.normal(jax.random.key(seed), (B, T, D), dtype)
    h0 = 0.5 * jax.random.normal(jax.random.key(seed + 1), (B, H), dtype)
    return xs, h0


def from_flax(data: dict, prefix: str) -> dict:
    """Flax's four Dense layers in seqjax's layout: blocks f, n; Flax has no ``b_hf`` (and
    no ``b_hn`` without the reset gate), so those blocks are zero."""
    get = lambda name: data[f"{prefix}/param/{name}"]  # noqa: E731
    zeros = np.zeros(H)
    b_hn = get("hn/bias") if f"{prefix}/param/hn/bias" in data else zeros
    return {
        "w_ih": np.concatenate([get("if/kernel"), get("in/kernel")], axis=1),
        "w_hh": np.concatenate([get("hf/kernel"), get("hn/kernel")], axis=1),
        "b_ih": np.concatenate([get("if/bias"), get("in/bias")]),
        "b_hh": np.concatenate([zeros, b_hn]),
    }


@pytest.mark.parametrize("custom_vjp", [True, False])
@pytest.mark.parametrize("prefix", ["reset", "no_reset"])
def test_matches_flax_golden(x64, prefix, custom_vjp):
    _, data = load_golden("flax_mgu.npz")
    params = jax.tree.map(jnp.asarray, from_flax(data, prefix))
    cell = mgu(data[f"{prefix}/h0"].shape[-1], reset_gate=prefix == "reset")
    cot_y, cot_h = data[f"{prefix}/cotangent_y"], data[f"{prefix}/cotangent_h_n"]

    def loss(params, x, h0):
        h_n, y = unroll(cell, params, x, carry=h0, custom_vjp=custom_vjp)
        return jnp.sum(y * cot_y) + jnp.sum(h_n * cot_h), (y, h_n)

    grads, (y, h_n) = jax.jit(jax.grad(loss, argnums=(0, 1, 2), has_aux=True))(
        params, jnp.asarray(data[f"{prefix}/x"]), jnp.asarray(data[f"{prefix}/h0"])
    )
    close = lambda got, key: np.testing.assert_allclose(got, data[key], rtol=1e-10, atol=1e-12)  # noqa: E731
    close(y, f"{prefix}/y")
    close(h_n, f"{prefix}/h_n")
    close(grads[1], f"{prefix}/grad/x")
    close(grads[2], f"{prefix}/grad/h0")
    gp = {k: np.asarray(v) for k, v in grads[0].items()}
    close(gp["w_ih"][:, :H], f"{prefix}/grad/param/if/kernel")
    close(gp["w_ih"][:, H:], f"{prefix}/grad/param/in/kernel")
    close(gp["w_hh"][:, :H], f"{prefix}/grad/param/hf/kernel")
    close(gp["w_hh"][:, H:], f"{prefix}/grad/param/hn/kernel")
    close(gp["b_ih"][:H], f"{prefix}/grad/param/if/bias")
    close(gp["b_ih"][H:], f"{prefix}/grad/param/in/bias")
    if prefix == "reset":
        close(gp["b_hh"][H:], f"{prefix}/grad/param/hn/bias")


@pytest.mark.parametrize(
    "reset_gate, options",
    [(True, {}), (True, {"reverse": True}), (True, {"remat": True}),
     (True, {"custom_vjp": False, "reverse": True}), (False, {}), (False, {"reverse": True})],
    ids=["forward", "reverse", "remat", "autodiff_reverse", "no_reset", "no_reset_reverse"],
)  # fmt: skip
def test_lengths_and_resets_match_numpy_loop(x64, reset_gate, options):
    cell = mgu(H, reset_gate=reset_gate)
    params, (xs, h0) = random_params(cell), inputs()
    run = jax.jit(lambda p, x, h, n, r: unroll(cell, p, x, carry=h, lengths=n, resets=r, **options))
    h_n, ys = run(params, xs, h0, jnp.asarray(LENGTHS), jnp.asarray(RESETS))
    for b in range(B):
        y_ref, h_ref = numpy_run(params, np.asarray(xs[b]), h0[b], reset_gate, LENGTHS[b],
                                 options.get("reverse", False), RESETS[b])  # fmt: skip
        np.testing.assert_allclose(ys[b], y_ref, rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(h_n[b], h_ref, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("reset_gate", [True, False])
def test_gradients_match_finite_differences(x64, reset_gate):
    cell = mgu(H, reset_gate=reset_gate)
    params, (xs, h0) = random_params(cell), inputs()
    xs, h0 = xs[:2, :5], h0[:2]
    lengths = jnp.asarray([5, 3])
    w = jax.random.normal(jax.random.key(9), (2, 5, H), jnp.float64)

    def loss(custom_vjp):
        def f(params, xs, h0):
            h_n, ys = unroll(cell, params, xs, carry=h0, lengths=lengths, custom_vjp=custom_vjp)
            return jnp.sum(ys * w) + jnp.sum(jnp.sin(h_n))

        return f

    check_grads(jax.jit(loss(True)), (params, xs, h0), order=1, modes=["rev"])
    check_grads(jax.jit(loss(False)), (params, xs, h0), order=1, modes=["fwd"])


def test_custom_vjp_step_backward_equals_autodiff(x64):
    from seqjax.cells.mgu import MGU_NO_RESET_SPLIT, MGU_SPLIT

    k = jax.random.split(jax.random.key(4), 5)
    h, px, hh = (jax.random.normal(kk, s, jnp.float64) for kk, s in
                 zip(k, [(B, H), (B, 2 * H), (B, 2 * H)], strict=False))  # fmt: skip
    d_out = (jax.random.normal(k[3], (B, H), jnp.float64),
             jax.random.normal(k[4], (B, H), jnp.float64))  # fmt: skip
    for split in (MGU_SPLIT, MGU_NO_RESET_SPLIT):
        (out, residuals) = split.combine_vjp.forward(h, px, hh)
        _, vjp = jax.vjp(split.combine, h, px, hh)
        for got, want in zip(split.combine_vjp.backward(h, residuals, d_out), vjp(d_out),
                             strict=True):  # fmt: skip
            np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-14)
        np.testing.assert_allclose(out[0], split.combine(h, px, hh)[0], rtol=0, atol=0)


def test_layers_rnn_stack_and_bidirectional(x64):
    cell = mgu(H)
    xs, _ = inputs()
    lengths = jnp.asarray(LENGTHS)
    model = layers.stack(
        layers.bidirectional(layers.rnn(cell), layers.rnn(cell)), layers.rnn(mgu(H))
    )
    params = model.init(jax.random.key(5), D)
    (_, final_top), ys = jax.jit(model.apply)(params, xs, lengths=lengths)
    p_bi, p_top = params
    zeros = np.zeros(H)
    for b in range(B):
        x_b = np.asarray(xs[b])
        fwd, _ = numpy_run(p_bi["forward"], x_b, zeros, length=LENGTHS[b])
        bwd, _ = numpy_run(p_bi["backward"], x_b, zeros, length=LENGTHS[b], reverse=True)
        top, h_top = numpy_run(p_top, np.concatenate([fwd, bwd], -1), zeros, length=LENGTHS[b])
        np.testing.assert_allclose(ys[b], top, rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(final_top[b], h_top, rtol=1e-12, atol=1e-12)
    assert model.output_size == H


def test_default_init_follows_flax():
    params = mgu(H).init(jax.random.key(0), D)
    assert params["w_ih"].shape == (D, 2 * H) and params["w_hh"].shape == (H, 2 * H)
    np.testing.assert_array_equal(params["b_ih"], np.r_[np.ones(H), np.zeros(H)])
    np.testing.assert_array_equal(params["b_hh"], np.zeros(2 * H))
    for block in (params["w_hh"][:, :H], params["w_hh"][:, H:]):  # orthogonal per gate
        np.testing.assert_allclose(block.T @ block, np.eye(H), atol=1e-5)
    assert not np.allclose(params["w_hh"][:, :H], params["w_hh"][:, H:])
    pytorch = mgu(H, init="pytorch").init(jax.random.key(0), D)
    assert np.all(np.abs(pytorch["b_ih"]) <= 1 / np.sqrt(H))
    assert mgu(H, forget_bias=-2.0).init(jax.random.key(0), D)["b_ih"][0] == -2.0


@pytest.mark.parametrize(
    "build, error, message",
    [
        (lambda: mgu(0), ValueError, "hidden_size must be a positive integer"),
        (lambda: mgu(4.0), ValueError, "hidden_size must be a positive integer"),
        (lambda: mgu(H, reset_gate=1), TypeError, "reset_gate must be True or False"),
        (lambda: mgu(H, forget_bias="one"), TypeError, "forget_bias must be a number"),
        (lambda: mgu(H, reset_after=True), TypeError, "unknown keyword argument 'reset_after'"),
        (lambda: mgu(H, init="keras"), ValueError, "unknown init scheme 'keras'"),
        (lambda: mgu(H).init(jax.random.key(0), 0), ValueError, "input_size must be a positive"),
    ],
)
def test_bad_configurations_are_refused_by_name(build, error, message):
    with pytest.raises(error, match=message):
        build()


def test_wrong_input_features_get_a_named_error():
    cell = mgu(H)
    params = cell.init(jax.random.key(0), D)
    with pytest.raises(ValueError, match="xs has 5 features"):
        unroll(cell, params, jnp.ones((2, 3, 5)))
