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
from seqjax.native._operands import _bias, _call, _common_operands, _layout, _previous_outputs

Array = jax.Array

PATHS = ("amx", "avx512bf16")
KERNELS = ("lstm", "gru", "rnn_tanh", "rnn_relu")  # the recurrences with a bfloat16 kernel
GATES = {"lstm": 4, "gru": 3, "rnn_tanh": 1, "rnn_relu": 1}
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


def matmul(
    a: Array, b: Array, trans_a: bool = False, trans_b: bool = False, *, via: str | None = None
) -> Array:
    """``op(a) @ op(b)`` in float32 from bfloat16 operands (others are rounded to bfloat16
    first): ``a (M, K)`` (``(K, M)`` with ``trans_a``), ``b (K, N)`` (``(N, K)`` with
    ``trans_b``) to ``(M, N)`` float32, products of bfloat16 values summed in float32.

    The native GEMM where a bfloat16 path runs (on the CPU backend), else XLA's dot with
    float32 accumulation; the two differ only in the order of the float32 sums. ``via``
    names the path (the recurrences pass theirs), by default :func:`path`.
    """
    a, b = jnp.asarray(a, jnp.bfloat16), jnp.asarray(b, jnp.bfloat16)
    if a.ndim != 2 or b.ndim != 2:
        raise ValueError(f"bf16_matmul: a and b must be matrices; got {a.shape}, {b.shape}")
    M, K = (a.shape[1], a.shape[0]) if trans_a else a.shape
    N, Kb = b.shape if trans_b else (b.shape[1], b.shape[0])
    if K != Kb:
        raise ValueError(f"bf16_matmul: inner dimensions differ: {a.shape}, {b.shape}")
    chosen = via or (path() if jax.default_backend() == "cpu" else None)
    if chosen is None:
        return jnp.matmul(
            a.T if trans_a else a, b.T if trans_b else b, preferred_element_type=jnp.float32
        )
    call = jax.ffi.ffi_call(
        "seqjax_bf16_matmul", jax.ShapeDtypeStruct((M, N), jnp.float32), vmap_method="sequential"
    )
    return call(a, b, trans_a=bool(trans_a), trans_b=bool(trans_b), amx=chosen == "amx")


def _round_up(n: int, m: int) -> int:
    return -(-n // m) * m


def _panels(w: Array, gates: int, k_pad: int) -> Array:
    """``w (K, gates * H)`` to ``(U, gates, k_pad / 2, 16, 2)`` bfloat16: for each block of 16
    units and each gate, the rows in (k, k+1) pairs, zero-padded to ``k_pad`` rows and whole
    blocks (amx.h's B operand)."""
    K, H = w.shape[0], w.shape[1] // gates
    U = -(-H // 16)
    w = w.astype(jnp.bfloat16).reshape(K, gates, H)
    w = jnp.pad(w, ((0, k_pad - K), (0, 0), (0, U * 16 - H)))
    return w.reshape(k_pad // 2, 2, gates, U, 16).transpose(3, 2, 0, 4, 1)


def pack_weights(kernel: str, params) -> tuple[Array, Array, Array]:
    """``(w, wt, wi)``: ``[W_ih; W_hh]`` as the forward kernel reads it (each part padded to
    whole k tiles; for the GRU four column groups r, z, x W_in, h W_hn), ``W_hh^T`` for the
    reverse loop, and ``W_ih`` in bfloat16 for the input gradient."""
    w_ih, w_hh = params["w_ih"].astype(jnp.bfloat16), params["w_hh"].astype(jnp.bfloat16)
    (D, GH), H = w_ih.shape, w_hh.shape[0]
    Dp, Hp = _round_up(D, 32), _round_up(H, 32)
    gates = GATES[kernel]
    x_rows, h_rows = w_ih, w_hh
    if kernel == "gru":  # n's two products stay apart: r scales h W_hn + b_hn alone
        zx, zh = jnp.zeros((D, H), w_ih.dtype), jnp.zeros((H, H), w_hh.dtype)
        x_rows = jnp.concatenate([w_ih, zx], axis=1)
        h_rows = jnp.concatenate([w_hh[:, : 2 * H], zh, w_hh[:, 2 * H :]], axis=1)
        gates = 4
    stacked = jnp.concatenate(
        [jnp.pad(x_rows, ((0, Dp - D), (0, 0))), jnp.pad(h_rows, ((0, Hp - H), (0, 0)))]
    )
    wt = _panels(w_hh.T, 1, _round_up(GH, 32))
    return _panels(stacked, gates, Dp + Hp), wt, w_ih


def _chosen_path(fn: str) -> str:
    chosen, reason = _path_and_reason()
    if chosen is None:
        raise ValueError(f"{fn}: the bfloat16 kernels cannot run here: {reason}")
    return chosen


def _restart_operands(restarts, rows: int, H: int, per_step, leaves: int):
    """``(flags, restart carry leaves)``: empty where the call has no resets (the kernels read
    an empty flag buffer as none)."""
    if restarts is None:
        empty = jnp.zeros((0,), jnp.float32)
        return jnp.zeros((0,), jnp.bool_), (empty,) * leaves
    flags, carry = restarts
    carry = tuple(c.reshape(rows, H).astype(jnp.float32) for c in jax.tree.leaves(carry))
    return jnp.asarray(flags, jnp.bool_).reshape(per_step), carry


def forward(kernel, params, weights, xs, carry, start, lengths, reverse, keep,
            batch_major=False, restarts=None):  # fmt: skip
    """:func:`seqjax.native.forward` for bfloat16 weights: ``xs`` rounded to bfloat16, the
    carry, the outputs and the residuals in float32. Returns ``(final carry, ys (T, rows,
    H) or (rows, T, H), extra residuals)``."""
    amx = _chosen_path("seqjax.native.forward") == "amx"
    _, _, rows, per_step = _layout(xs, batch_major)
    H = params["w_hh"].shape[0]
    xs = xs.astype(jnp.bfloat16).reshape(*per_step, -1)
    f32_biases = {k: params[k].astype(jnp.float32) for k in ("b_ih", "b_hh")}
    bias = _bias(kernel, f32_biases, H)  # summed in float32, also from bfloat16 biases
    flat = jax.tree.map(lambda c: c.reshape(rows, H).astype(jnp.float32), carry)
    f32 = jnp.float32
    out = jax.ShapeDtypeStruct
    residual = per_step if keep else (0, 0)
    attrs = dict(
        reverse=bool(reverse), has_lengths=lengths is not None, batch_major=bool(batch_major),
        amx=amx, keep=bool(keep),
    )  # fmt: skip
    if kernel == "lstm":
        flags, restart = _restart_operands(restarts, rows, H, per_step, 2)
        ys, cs, acts, h, c = _call(
            "seqjax_lstm_bf16_forward",
            (out((*per_step, H), f32), out((*residual, H), f32),
             out((*residual, 4 * H), jnp.bfloat16), out((rows, H), f32), out((rows, H), f32)),
            xs, weights.w, bias, flat.h, flat.c, *restart,
            *_common_operands(lengths, rows, start), flags, **attrs,
        )  # fmt: skip
        return type(carry)(h, c), ys, (cs, acts), flat
    flags, restart = _restart_operands(restarts, rows, H, per_step, 1)
    common = (*_common_operands(lengths, rows, start), flags)
    if kernel == "gru":
        ys, acts, h = _call(
            "seqjax_gru_bf16_forward",
            (out((*per_step, H), f32), out((*residual, 4 * H), jnp.bfloat16),
             out((rows, H), f32)),
            xs, weights.w, bias, flat, *restart, *common, **attrs,
        )  # fmt: skip
        return h, ys, (acts,), flat
    del attrs["keep"]
    ys, h = _call(
        "seqjax_rnn_bf16_forward",
        (out((*per_step, H), f32), out((rows, H), f32)),
        xs, weights.w, bias, flat, *restart, *common, relu=kernel == "rnn_relu", **attrs,
    )  # fmt: skip
    return h, ys, (), flat


def backward(kernel, params, weights, xs, saved, d_carry, d_ys, start, lengths, reverse,
             batch_major=False, restarts=None):  # fmt: skip
    """:func:`seqjax.native.backward` for bfloat16 weights: the reverse loop, then the weight
    and input gradients with the bfloat16 GEMM. The weight and bias gradients come out
    float32, ``d_xs`` in the dtype of ``xs``."""
    via = _chosen_path("seqjax.native.backward")
    T, batch, rows, per_step = _layout(xs, batch_major)
    H = params["w_hh"].shape[0]
    f32 = jnp.float32
    out = jax.ShapeDtypeStruct
    d_flat = jax.tree.map(lambda c: c.reshape(rows, H).astype(f32), d_carry)
    d_ys = d_ys.reshape(*per_step, H).astype(f32)
    attrs = dict(
        reverse=bool(reverse), has_lengths=lengths is not None, batch_major=bool(batch_major),
        amx=via == "amx",
    )  # fmt: skip
    common = _common_operands(lengths, rows, start)
    n_restart = 0 if restarts is None else rows
    if kernel == "lstm":
        flags, restart = _restart_operands(restarts, rows, H, per_step, 2)
        cs, acts = saved.extra
        d_gates, d_bias, dh, dc, *d_restart = _call(
            "seqjax_lstm_bf16_backward",
            (out((*per_step, 4 * H), jnp.bfloat16), out((4 * H,), f32), out((rows, H), f32),
             out((rows, H), f32), out((n_restart, H), f32), out((n_restart, H), f32)),
            weights.wt, d_ys, cs, acts, saved.carry.c, d_flat.h, d_flat.c, restart[1],
            *common, flags, **attrs,
        )  # fmt: skip
        d_carry0 = type(d_carry)(dh.reshape(*batch, H), dc.reshape(*batch, H))
        h0, d_hh, d_b_hh = saved.carry.h, d_gates, d_bias
    elif kernel == "gru":
        flags, restart = _restart_operands(restarts, rows, H, per_step, 1)
        (acts,) = saved.extra
        d_gates, d_hh, d_bias, d_b_hh, dh, *d_restart = _call(
            "seqjax_gru_bf16_backward",
            (out((*per_step, 3 * H), jnp.bfloat16), out((*per_step, 3 * H), jnp.bfloat16),
             out((3 * H,), f32), out((3 * H,), f32), out((rows, H), f32),
             out((n_restart, H), f32)),
            weights.wt, d_ys, saved.ys, acts, saved.carry, d_flat, restart[0], *common, flags,
            **attrs,
        )  # fmt: skip
        d_carry0, h0 = dh.reshape(*batch, H), saved.carry
    else:
        flags, restart = _restart_operands(restarts, rows, H, per_step, 1)
        d_gates, d_bias, dh, *d_restart = _call(
            "seqjax_rnn_bf16_backward",
            (out((*per_step, H), jnp.bfloat16), out((H,), f32), out((rows, H), f32),
             out((n_restart, H), f32)),
            weights.wt, d_ys, saved.ys, d_flat, *common, flags, relu=kernel == "rnn_relu",
            **attrs,
        )  # fmt: skip
        d_carry0, h0, d_hh, d_b_hh = dh.reshape(*batch, H), saved.carry, d_gates, d_bias
    h_prev = _previous_outputs(saved.ys, h0, lengths, rows, start, reverse, batch_major)
    if restarts is not None:  # a restarted step's input carry was the restart one
        h_restart = jnp.expand_dims(restart[0], 1 if batch_major else 0)
        h_prev = jnp.where(flags[..., None], h_restart, h_prev)
    d_gates = d_gates.reshape(T * rows, -1)
    d_hh = d_hh.reshape(T * rows, -1)
    x_rows = xs.astype(jnp.bfloat16).reshape(T * rows, -1)
    h_rows = h_prev.astype(jnp.bfloat16).reshape(T * rows, H)
    if kernel == "gru":  # two gate gradients, two GEMMs
        d_w_ih = matmul(x_rows, d_gates, trans_a=True, via=via)
        d_w_hh = matmul(h_rows, d_hh, trans_a=True, via=via)
    else:  # one: [x, h]^T dG, packing dG once
        D = x_rows.shape[1]
        d_w = matmul(jnp.concatenate([x_rows, h_rows], axis=1), d_gates, trans_a=True, via=via)
        d_w_ih, d_w_hh = d_w[:D], d_w[D:]
    d_params = {"w_ih": d_w_ih, "w_hh": d_w_hh, "b_ih": d_bias, "b_hh": d_b_hh}
    d_xs = matmul(d_gates, weights.wi, trans_b=True, via=via).astype(xs.dtype).reshape(xs.shape)
    if restarts is None:
        return d_carry0, d_params, d_xs
    structure = jax.tree.structure(restarts[1])
    d_restart = jax.tree.unflatten(structure, [d.reshape(*batch, H) for d in d_restart])
    return d_carry0, d_params, d_xs, d_restart
