"""The bfloat16 native kernels: which path runs here, and the bfloat16 GEMM.

The kernels take bfloat16 weights and inputs, multiply in bfloat16 with float32 accumulation,
and keep the activations, the carry and the outputs in float32 (the mixed-precision contract in
``docs/concepts/native.md``). They run on AMX-BF16 tiles where the CPU has them (Linux is asked
for the permission AMX needs on first use) and on AVX512-BF16's ``vdpbf16ps`` where it has only
that; elsewhere there is no bfloat16 kernel and :func:`unavailable_reason` says why.

``SEQJAX_NATIVE_BF16`` overrides the choice: ``amx`` or ``avx512bf16`` asks for that path (and
gives a reason where it cannot run), ``off`` turns the bfloat16 kernels off; unset or ``auto``
takes the best the CPU has. It is read when a call is traced.
"""

from __future__ import annotations

import os

import jax
import jax.numpy as jnp

from seqjax.native import _build

Array = jax.Array

PATHS = ("amx", "avx512bf16")
# bf16::Support in amx.h
_AVX512BF16, _AMX, _AMX_NO_PERMISSION, _AMX_NOT_COMPILED, _BF16_NOT_COMPILED = 1, 2, 4, 8, 16


def _choose(bits: int, request: str) -> tuple[str | None, str | None]:
    """``(path, None)`` or ``(None, reason)`` for support bits ``bits`` and the value of
    ``SEQJAX_NATIVE_BF16``."""
    if request == "off":
        return None, "the bfloat16 kernels are off (SEQJAX_NATIVE_BF16=off)"
    if request not in ("", "auto", *PATHS):
        return None, f"SEQJAX_NATIVE_BF16={request!r} is none of auto, amx, avx512bf16, off"
    amx_reason = (
        "Linux refused the AMX permission (arch_prctl ARCH_REQ_XCOMP_PERM)"
        if bits & _AMX_NO_PERMISSION
        else "the compiler did not enable AMX"
        if bits & _AMX_NOT_COMPILED
        else "the CPU has no AMX-BF16"
    )
    if request in ("", "auto", "amx") and bits & _AMX:
        return "amx", None
    if request == "amx":
        return None, f"SEQJAX_NATIVE_BF16=amx, but {amx_reason}"
    if bits & _AVX512BF16:
        return "avx512bf16", None
    if bits & _BF16_NOT_COMPILED:
        return None, "the compiler did not enable AVX512-BF16"
    if bits & (_AMX_NO_PERMISSION | _AMX_NOT_COMPILED):
        return None, f"the CPU has no AVX512-BF16 and {amx_reason}"
    return None, "the CPU has neither AMX-BF16 nor AVX512-BF16"


def path() -> str | None:
    """The path the bfloat16 kernels take here, ``"amx"`` or ``"avx512bf16"``, or ``None``
    (see :func:`unavailable_reason`)."""
    return _path_and_reason()[0]


def unavailable_reason() -> str | None:
    """``None`` when the bfloat16 kernels can run here, else why not: the native library
    could not be built, or the CPU (or its setting, or ``SEQJAX_NATIVE_BF16``) allows no
    path."""
    return _path_and_reason()[1]


def _path_and_reason() -> tuple[str | None, str | None]:
    try:
        bits = _build.bf16_support()
    except _build.Unavailable as err:
        return None, str(err)
    return _choose(bits, os.environ.get("SEQJAX_NATIVE_BF16", "").strip().lower())


def matmul(a: Array, b: Array, trans_a: bool = False, trans_b: bool = False) -> Array:
    """``op(a) @ op(b)`` in float32 from bfloat16 operands (others are rounded to bfloat16
    first): ``a (M, K)`` (``(K, M)`` with ``trans_a``), ``b (K, N)`` (``(N, K)`` with
    ``trans_b``) to ``(M, N)`` float32, products of bfloat16 values summed in float32.

    The native GEMM where a bfloat16 path runs (on the CPU backend), else XLA's dot with
    float32 accumulation; the two differ only in the order of the float32 sums.
    """
    a, b = jnp.asarray(a, jnp.bfloat16), jnp.asarray(b, jnp.bfloat16)
    if a.ndim != 2 or b.ndim != 2:
        raise ValueError(f"bf16_matmul: a and b must be matrices; got {a.shape}, {b.shape}")
    M, K = (a.shape[1], a.shape[0]) if trans_a else a.shape
    N, Kb = b.shape if trans_b else (b.shape[1], b.shape[0])
    if K != Kb:
        raise ValueError(f"bf16_matmul: inner dimensions differ: {a.shape}, {b.shape}")
    chosen = path() if jax.default_backend() == "cpu" else None
    if chosen is None:
        return jnp.matmul(
            a.T if trans_a else a, b.T if trans_b else b, preferred_element_type=jnp.float32
        )
    call = jax.ffi.ffi_call(
        "seqjax_bf16_matmul", jax.ShapeDtypeStruct((M, N), jnp.float32), vmap_method="sequential"
    )
    return call(a, b, trans_a=bool(trans_a), trans_b=bool(trans_b), amx=chosen == "amx")
