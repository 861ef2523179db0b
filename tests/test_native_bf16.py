"""``seqjax.native``'s bfloat16 kernels: the GEMM against NumPy, the recurrences' outputs, final
carries and every gradient against a float32 reference computed from the same bfloat16-rounded
weights and inputs, on both paths (AMX and AVX512-BF16, forced by ``SEQJAX_NATIVE_BF16``), and
the reasons given where a path cannot run.

Tolerance: the kernels round x and h_(t-1) to bfloat16 before each step's matmul (forward)
and the gate gradients dG before dh = dG W_hh^T and the weight gradients (backward), as the
mixed-precision contract says. The reference (float32 JAX, HIGHEST precision) makes the same
forward roundings but differentiates in float32 without rounding dG. So outputs and final
carries differ only by float32 summation order, which could flip one bfloat16 rounding of h
(2^-8 relative) and carry it on: asserted to 2e-3 of the value scale (max(1, max |ref|)); seen
~1e-7. Gradients differ by dG's rounding (2^-9 relative per element): asserted to 2e-2 of the
scale; seen 1e-3 to 5e-3. A wrong index, gate, length, reset or transpose gives errors of
order one.
"""

from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from seqjax import native
from seqjax.native import _build, bf16


def _bf16_bits() -> int:
    try:
        return _build.bf16_support()
    except _build.Unavailable:
        return 0


BITS = _bf16_bits() if jax.default_backend() == "cpu" else 0
HAVE = {"amx": bool(BITS & 2), "avx512bf16": bool(BITS & 1)}
PATHS = [
    pytest.param(p, marks=pytest.mark.skipif(not HAVE[p], reason=f"this CPU cannot run {p}"))
    for p in ("amx", "avx512bf16")
]


KERNELS = ["lstm", "gru", "rnn_tanh", "rnn_relu"]


@pytest.fixture(params=PATHS)
def bf16_path(request, monkeypatch):
    monkeypatch.setenv("SEQJAX_NATIVE_BF16", request.param)
    assert bf16.path() == request.param
    return request.param


def _round(x) -> np.ndarray:
    return np.asarray(jnp.asarray(x, jnp.bfloat16).astype(jnp.float32), np.float64)


@pytest.mark.parametrize(
    "M,K,N,trans_a,trans_b",
    [(5, 7, 3, False, False), (33, 70, 17, True, False), (40, 65, 50, False, True),
     (100, 129, 47, True, True), (64, 96, 48, True, False), (32, 64, 32, False, True)],
)  # fmt: skip
def test_gemm_matches_numpy(bf16_path, M, K, N, trans_a, trans_b):
    rng = np.random.default_rng(M * K + N)
    a = rng.standard_normal((K, M) if trans_a else (M, K)).astype(np.float32)
    b = rng.standard_normal((N, K) if trans_b else (K, N)).astype(np.float32)
    got = jax.jit(lambda a, b: native.bf16_matmul(a, b, trans_a, trans_b))(
        jnp.asarray(a, jnp.bfloat16), jnp.asarray(b, jnp.bfloat16)
    )
    A, B = _round(a), _round(b)
    want = (A.T if trans_a else A) @ (B.T if trans_b else B)
    assert got.dtype == jnp.float32 and got.shape == (M, N)
    # float32 sums of exact bfloat16 products: only the summation order differs
    np.testing.assert_allclose(np.asarray(got), want, rtol=1e-5, atol=1e-5 * np.sqrt(K))


def test_gemm_empty_and_zero_k(bf16_path):
    a = jnp.ones((3, 0), jnp.bfloat16)
    assert np.all(np.asarray(native.bf16_matmul(a, jnp.ones((0, 4), jnp.bfloat16))) == 0)
    assert native.bf16_matmul(jnp.ones((0, 5)), jnp.ones((5, 2))).shape == (0, 2)


def test_off_and_unknown_settings_give_reasons(monkeypatch):
    monkeypatch.setenv("SEQJAX_NATIVE_BF16", "off")
    assert bf16.path() is None
    assert "SEQJAX_NATIVE_BF16=off" in native.bf16_unavailable_reason()
    monkeypatch.setenv("SEQJAX_NATIVE_BF16", "fast")
    assert "none of auto, amx, avx512bf16, off" in native.bf16_unavailable_reason()
    # without a path the GEMM is XLA's, with the same numbers
    a = np.arange(12, dtype=np.float32).reshape(3, 4)
    np.testing.assert_array_equal(np.asarray(native.bf16_matmul(a, a, trans_b=True)), a @ a.T)


@pytest.mark.parametrize(
    "bits,request_,path,reason",
    [(3, "", "amx", None), (3, "avx512bf16", "avx512bf16", None), (1, "", "avx512bf16", None),
     (1, "amx", None, "SEQJAX_NATIVE_BF16=amx, but the CPU has no AMX-BF16"),
     (1 | 4, "amx", None, "Linux refused the AMX permission"),
     (0, "", None, "the CPU has neither AMX-BF16 nor AVX512-BF16"),
     (4, "", None, "the CPU has no AVX512-BF16 and Linux refused the AMX permission"),
     (16, "auto", None, "the compiler did not enable AVX512-BF16")],
)  # fmt: skip
def test_path_choice_and_reasons(bits, request_, path, reason):
    got_path, got_reason = bf16._choose(bits, request_)
    assert got_path == path
    assert (got_reason is None) == (reason is None)
    if reason:
        assert reason in got_reason


# --- the recurrences -------------------------------------------------------------------------


def _r(x):
    """Rounded to bfloat16 in the forward pass, the identity for gradients: the reference
    rounds what the kernels round (x, h before each matmul) but differentiates in float32."""
    return x + jax.lax.stop_gradient(x.astype(jnp.bfloat16).astype(jnp.float32) - x)


def _mm(a, b):
    return jnp.matmul(a, b, precision=jax.lax.Precision.HIGHEST)


def _reference_step(kernel, p, x, carry):
    """One step of the mixed-precision recurrence, float32 arithmetic on rounded operands."""
    h = carry[0] if kernel == "lstm" else carry
    gx = _mm(_r(x), p["w_ih"]) + p["b_ih"]
    gh = _mm(_r(h), p["w_hh"]) + p["b_hh"]
    if kernel == "lstm":
        i, f, g, o = jnp.split(gx + gh, 4, axis=-1)
        c = jax.nn.sigmoid(f) * carry[1] + jax.nn.sigmoid(i) * jnp.tanh(g)
        h = jax.nn.sigmoid(o) * jnp.tanh(c)
        return type(carry)(h, c), h
    if kernel == "gru":
        xr, xz, xn = jnp.split(gx, 3, axis=-1)
        hr, hz, hn = jnp.split(gh, 3, axis=-1)
        r, z = jax.nn.sigmoid(xr + hr), jax.nn.sigmoid(xz + hz)
        n = jnp.tanh(xn + r * hn)
        h = (1 - z) * n + z * h
        return h, h
    z = gx + gh
    h = jnp.maximum(z, 0) if kernel == "rnn_relu" else jnp.tanh(z)
    return h, h


def _reference(kernel, p, xs, carry, lengths, start, reverse, flags, restart):
    """The whole loop, time-major ``xs (T, B, D)``: rows past their length keep their carry
    and output zeros; before a flagged step a row's carry is ``restart``."""
    T = xs.shape[0]
    ys = [None] * T

    def where(mask, a, b):
        return jax.tree.map(lambda u, v: jnp.where(mask, u, v), a, b)

    for t in reversed(range(T)) if reverse else range(T):
        if flags is not None:
            carry = where(flags[t][:, None], restart, carry)
        new, y = _reference_step(kernel, p, xs[t], carry)
        runs = (start + t < lengths)[:, None] if lengths is not None else jnp.ones((1, 1), bool)
        carry = where(runs, new, carry)
        ys[t] = jnp.where(runs, y, 0.0)
    return carry, jnp.stack(ys)


def _as_carry(kernel, leaves):
    from seqjax.cells.lstm import LSTMCarry

    return LSTMCarry(*leaves) if kernel == "lstm" else leaves[0]


def _native_loop(kernel, params, xs, carry, lengths, start, reverse, batch_major, restarts):
    """forward and backward of seqjax.native as NativeLoop runs them, as one differentiable
    function of (params, xs, carry, restart carry)."""

    @jax.custom_vjp
    def run(params, xs, carry, restart):
        weights = native.pack_weights(kernel, params)
        r = None if restarts is None else (restarts, restart)
        final, ys, _ = native.forward(
            kernel, params, weights, xs, carry, start, lengths, reverse, False, batch_major, r
        )
        return final, ys

    def fwd(params, xs, carry, restart):
        weights = native.pack_weights(kernel, params)
        r = None if restarts is None else (restarts, restart)
        final, ys, saved = native.forward(
            kernel, params, weights, xs, carry, start, lengths, reverse, True, batch_major, r
        )
        return (final, ys), (params, weights, xs, saved, restart)

    def bwd(res, cotangents):
        params, weights, xs, saved, restart = res
        d_final, d_ys = cotangents
        r = None if restarts is None else (restarts, restart)
        out = native.backward(
            kernel, params, weights, xs, saved, d_final, d_ys, start, lengths, reverse,
            batch_major, r,
        )  # fmt: skip
        d_carry, d_params, d_xs = out[:3]
        d_params = jax.tree.map(lambda d, p: d.astype(p.dtype), d_params, params)
        d_restart = out[3] if restarts is not None else jax.tree.map(jnp.zeros_like, restart)
        return d_params, d_xs.astype(xs.dtype), d_carry, d_restart

    run.defvjp(fwd, bwd)
    return run


def _case(kernel, B, T, D, H, seed=0):
    keys = jax.random.split(jax.random.key(seed), 8)
    G = {"lstm": 4, "gru": 3}.get(kernel, 1)
    scale = 1.0 / np.sqrt(H)
    params = {
        "w_ih": jax.random.uniform(keys[0], (D, G * H), minval=-scale, maxval=scale) * 2,
        "w_hh": jax.random.uniform(keys[1], (H, G * H), minval=-scale, maxval=scale) * 2,
        "b_ih": jax.random.uniform(keys[2], (G * H,), minval=-0.5, maxval=0.5),
        "b_hh": jax.random.uniform(keys[3], (G * H,), minval=-0.5, maxval=0.5),
    }
    params = {
        k: v.astype(jnp.bfloat16 if k.startswith("w") else jnp.float32) for k, v in params.items()
    }
    xs = jax.random.normal(keys[4], (T, B, D)).astype(jnp.bfloat16)
    leaves = 2 if kernel == "lstm" else 1
    carry = tuple(0.5 * jax.random.normal(k, (B, H)) for k in jax.random.split(keys[5], leaves))
    restart = tuple(0.5 * jax.random.normal(k, (B, H)) for k in jax.random.split(keys[6], leaves))
    cot = jax.random.split(keys[7], 3)
    return params, xs, carry, restart, cot


def _check(kernel, B, T, D, H, lengths=None, start=0, reverse=False, batch_major=False,
           resets=False, bias_dtype=jnp.float32):  # fmt: skip
    params, xs, carry, restart, cot = _case(kernel, B, T, D, H, seed=B * T + H)
    params = {k: v.astype(bias_dtype) if k.startswith("b") else v for k, v in params.items()}
    flags = None
    if resets:
        flags = jax.random.bernoulli(jax.random.key(9), 0.3, (T, B))
    lengths_a = None if lengths is None else jnp.asarray(lengths, jnp.int32)
    carry_c, restart_c = _as_carry(kernel, carry), _as_carry(kernel, restart)
    f32 = {k: v.astype(jnp.float32) for k, v in params.items()}

    def ref(p, x, c, r):
        final, ys = _reference(kernel, p, x.astype(jnp.float32), c, lengths_a, start, reverse,
                               flags, r)  # fmt: skip
        return final, ys

    xs_in = jnp.swapaxes(xs, 0, 1) if batch_major else xs
    flags_in = None if flags is None else (flags.T if batch_major else flags)
    loop = _native_loop(kernel, params, xs_in, carry_c, lengths_a, start, reverse, batch_major,
                        flags_in)  # fmt: skip
    d_final = jax.tree.map(lambda c: jax.random.normal(cot[0], c.shape), carry_c)
    d_ys = jax.random.normal(cot[1], (T, B, H))
    d_ys_in = jnp.swapaxes(d_ys, 0, 1) if batch_major else d_ys

    @jax.jit  # one compiled program each: op by op, the reference took seconds
    def run(p, x, r):
        (final, ys), vjp = jax.vjp(loop, p, x, carry_c, r)
        return final, ys, vjp((d_final, d_ys_in))

    @jax.jit
    def run_ref(p, x, r):
        (final, ys), vjp = jax.vjp(ref, p, x, carry_c, r)
        return final, ys, vjp((d_final, d_ys))

    final, ys, got = run(params, xs_in, restart_c)
    final_r, ys_r, want = run_ref(f32, xs.astype(jnp.float32), restart_c)
    if batch_major:
        ys = jnp.swapaxes(ys, 0, 1)
    assert ys.dtype == jnp.float32 and ys.shape == (T, B, H)
    _close(final, final_r, "final carry", 2e-3)
    _close(ys, ys_r, "ys", 2e-3)
    d_xs = jnp.swapaxes(got[1], 0, 1) if batch_major else got[1]
    for name in params:
        _close(got[0][name].astype(jnp.float32), want[0][name], f"d {name}")
    _close(d_xs.astype(jnp.float32), want[1], "d xs")
    _close(got[2], want[2], "d carry")
    if resets:
        _close(got[3], want[3], "d restart carry")


def _close(got, want, what, tol=2e-2):
    for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
        g, w = np.asarray(g, np.float64), np.asarray(w, np.float64)
        scale = max(1.0, float(np.abs(w).max()))
        err = float(np.abs(g - w).max()) / scale
        if os.environ.get("SHOW_ERR"):
            print(what, err)
        assert err < tol, f"{what}: max error {err:.3g} of scale {scale:.3g}"


@pytest.mark.parametrize("kernel", KERNELS)
def test_lengths_reverse_batch_major(bf16_path, kernel):
    lengths = [6, 0, 3, 5, 1, 6, 2, 4, 6, 6, 3, 0, 6, 5, 1, 2, 6]
    _check(kernel, 17, 6, 33, 40, lengths, start=1, reverse=True, batch_major=True)


@pytest.mark.parametrize("kernel", KERNELS)
def test_resets(bf16_path, kernel):
    _check(kernel, B=5, T=7, D=4, H=18, lengths=[7, 3, 5, 7, 2], resets=True)


@pytest.mark.parametrize("kernel", KERNELS)
def test_wide_rows_and_units(bf16_path, kernel):  # also the plain case: time-major, forward
    _check(kernel, B=37, T=3, D=50, H=70, bias_dtype=jnp.bfloat16)


def test_unsupported_reason_mixed_dtypes(monkeypatch):
    params, xs, *_ = _case("lstm", 2, 3, 4, 5)
    if native.unavailable_reason() is None and bf16.unavailable_reason() is None:
        assert native.unsupported_reason("lstm", params, xs) is None
        assert native.unsupported_reason("lstm", params, xs.astype(jnp.float32)) is None
    half = dict(params, w_hh=params["w_hh"].astype(jnp.float32))
    assert "take w_ih and w_hh in bfloat16" in native.unsupported_reason("lstm", half, xs)
    ints = native.unsupported_reason("lstm", params, jnp.zeros((3, 2, 4), jnp.int32))
    assert "floating inputs" in ints
    monkeypatch.setenv("SEQJAX_NATIVE_BF16", "off")
    assert "SEQJAX_NATIVE_BF16=off" in native.unsupported_reason("lstm", params, xs)
    # the float32 path does not look at the setting
    f32 = {k: v.astype(jnp.float32) for k, v in params.items()}
    assert native.unsupported_reason("lstm", f32, xs.astype(jnp.float32)) == (
        native.unavailable_reason()
    )
