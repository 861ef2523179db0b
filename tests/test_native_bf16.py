"""``seqjax.native``'s bfloat16 kernels: the GEMM against NumPy, the recurrences' outputs, final
carries and every gradient against a float32 reference computed from the same bfloat16-rounded
weights and inputs, on both paths (AMX and AVX512-BF16, forced by ``SEQJAX_NATIVE_BF16``), and
the reasons given where a path cannot run.

Tolerance: the kernels round ``h_(t-1)`` (forward) and the gate gradients (backward) to bfloat16
before each step's matmul, as the mixed-precision contract says; the reference does the same
roundings in float32 NumPy-style JAX, so the two differ by float32 summation order, which can
flip a bfloat16 rounding of ``h`` or ``dG`` (one bfloat16 ulp, 2^-8 relative) now and then, and
such a flip travels through the later steps. Short sequences (T <= 7) and unit-scale values keep
that below ~1e-2 absolute; we assert ``atol=rtol=2e-2`` on values of order one, which still
catches any wrong index, gate, length or transpose (those give errors of order one).
"""

from __future__ import annotations

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
