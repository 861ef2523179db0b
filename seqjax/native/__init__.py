"""Fused CPU kernels for the recurrences of the built-in LSTM, GRU and Elman RNN.

Under ``lax.scan`` XLA:CPU runs each step's matmul ``h_(t-1) W_hh`` and the step's elementwise
arithmetic as separate kernels, with a dispatch cost per step; at small and medium sizes that
overhead is as large as the arithmetic. These kernels run a whole forward loop, or the whole
reverse loop of its gradient, as one XLA custom call (``jax.ffi``): each step's matmuls
(``x_t W_ih`` and ``h_(t-1) W_hh``) and activations in one pass over registers, each step's
hidden units split over XLA's CPU threads. This is the fused step that PyTorch's oneDNN LSTM
has.

:func:`seqjax.unroll` uses them by itself (``native=None``) on the CPU, in float32, for the
cells they implement, as the inner loops of its own backward pass (``custom_vjp``); the weight
and input gradients stay large XLA matmuls over all steps at once. They are compiled
on first use (see :mod:`seqjax.native._build`); without a C++ compiler ``unroll`` falls back to
``lax.scan`` with the same numbers, and :func:`unavailable_reason` says why.
"""

from __future__ import annotations

import functools
import warnings
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from seqjax.cells.gru import GRU_SPLIT
from seqjax.cells.lstm import LSTM_SPLIT
from seqjax.cells.rnn import RNN_SPLITS
from seqjax.native import _build
from seqjax.native import bf16 as _bf16
from seqjax.native._operands import (
    _bias,
    _call,
    _common_operands,
    _layout,
    _pack,
    _previous_outputs,
    _restart_operands,
)
from seqjax.types import RecurSplit

Array = jax.Array

KERNELS = ("lstm", "gru", "rnn_tanh", "rnn_relu")
GATES = {"lstm": 4, "gru": 3, "rnn_tanh": 1, "rnn_relu": 1}

# Which recurrence each kernel computes: a kernel serves a cell whose RecurSplit has exactly
# this hidden product and this step, so a user cell that reuses the built-in step with another
# hidden product (the IndRNN) is never routed to a kernel that assumes h @ W_hh.
_SERVES: dict[tuple, str] = {}


def register(split: RecurSplit, kernel: str) -> None:
    """Routes cells with this ``split`` (same ``hidden_projection`` and ``combine``) to
    ``kernel``, one of :data:`KERNELS`."""
    if kernel not in KERNELS:
        raise ValueError(f"register: unknown kernel {kernel!r}; expected one of {KERNELS}")
    _SERVES[(split.hidden_projection, split.combine)] = kernel


register(LSTM_SPLIT, "lstm")
register(GRU_SPLIT, "gru")
register(RNN_SPLITS["tanh"], "rnn_tanh")
register(RNN_SPLITS["relu"], "rnn_relu")


def kernel_for(split: RecurSplit | None) -> str | None:
    """The kernel that computes the recurrence ``split`` defines, or ``None``."""
    if split is None:
        return None
    kernel = _SERVES.get((split.hidden_projection, split.combine))
    if kernel is None and split.native is not None:
        warnings.warn(
            "RecurSplit(native=...) is deprecated: seqjax.native.register(split, kernel) routes "
            "a recurrence to a kernel",
            DeprecationWarning,
            stacklevel=3,
        )
        kernel = split.native
    return kernel


def unavailable_reason() -> str | None:
    """``None`` when the kernels are built and registered (building them if needed), else why
    they cannot be."""
    try:
        _build.load()
    except _build.Unavailable as err:
        return str(err)
    return None


def available() -> bool:
    """Whether the native kernels can run here (building them on first call)."""
    return unavailable_reason() is None


def unsupported_reason(kernel: str | None, params: Any, xs: Array) -> str | None:
    """``None`` when ``kernel`` (from :func:`kernel_for`) can run these params and inputs
    on this backend, else why not."""
    if kernel not in KERNELS:
        return "the cell has no native kernel (the built-in LSTM, GRU and Elman RNN do)"
    if not isinstance(params, dict) or set(params) != {"w_ih", "w_hh", "b_ih", "b_hh"}:
        return "the params are not the built-in cells' w_ih, w_hh, b_ih, b_hh"
    if jax.default_backend() != "cpu":
        return f"the native kernels run on the CPU; the backend is {jax.default_backend()}"
    if _is_bf16(params) or jnp.dtype(params["w_ih"].dtype) == jnp.dtype(jnp.bfloat16):
        return _bf16_unsupported_reason(kernel, params, xs)
    dtypes = {jnp.dtype(leaf.dtype) for leaf in jax.tree.leaves(params)} | {jnp.dtype(xs.dtype)}
    if dtypes != {jnp.dtype(jnp.float32)}:
        return f"the native kernels run in float32; got {sorted(map(str, dtypes))}"
    return unavailable_reason()


def _bf16_unsupported_reason(kernel: str, params: Any, xs: Array) -> str | None:
    """The mixed case: ``w_ih``, ``w_hh`` bfloat16, the biases float32 or bfloat16, ``xs``
    any float dtype (rounded to bfloat16 in the kernel)."""
    bf16, f32 = jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float32)
    weights = {jnp.dtype(params[k].dtype) for k in ("w_ih", "w_hh")}
    biases = {jnp.dtype(params[k].dtype) for k in ("b_ih", "b_hh")}
    if biases != {f32}:  # params bfloat16 throughout run wholly in bfloat16: the scan's
        return "params wholly in bfloat16 run in bfloat16 on the scan; the kernels serve the mixed policy (seqjax.precision.cast)"  # noqa: E501
    if weights != {bf16} or not jnp.issubdtype(xs.dtype, jnp.floating):
        got = sorted(map(str, weights | biases | {jnp.dtype(xs.dtype)}))
        return (
            "the bfloat16 kernels take w_ih and w_hh in bfloat16, the biases in float32 or "
            f"bfloat16 and floating inputs; got {got}"
        )
    if kernel not in _bf16.KERNELS:
        return f"no bfloat16 kernel for {kernel} yet (there are for {', '.join(_bf16.KERNELS)})"
    return unavailable_reason() or _bf16.unavailable_reason()


class Weights(NamedTuple):
    """``W_hh`` and ``W_ih`` packed for the forward kernel and ``W_hh^T`` for the reverse one
    (the layouts in the kernels' sources): made once per call of ``unroll``, outside any loop
    over chunks."""

    w: Array
    wt: Array
    wi: Array


def pack_weights(kernel: str, params: Any) -> Weights:
    """The weight matrices of ``params`` in the layouts ``kernel`` reads (the bfloat16
    kernel's where ``w_hh`` is bfloat16)."""
    if _is_bf16(params):
        return Weights(*_bf16.pack_weights(kernel, params))
    gates = GATES[kernel]
    return Weights(
        _pack(params["w_hh"], gates), _pack(params["w_hh"].T, 1), _pack(params["w_ih"], gates)
    )


class Saved(NamedTuple):
    """What the forward loop keeps for the backward one: the carry it started from, and per
    step (time-major, batch flattened to rows) the outputs, plus for the LSTM the cell state
    and the gate activations, for the GRU its gates and ``h W_hn + b_hn``."""

    carry: Any
    ys: Array
    extra: tuple


def _or_bf16(bf16_fn):
    """Sends a call whose ``params["w_hh"]`` is bfloat16 to ``bf16_fn`` (same arguments)."""

    def wrap(fn):
        @functools.wraps(fn)
        def call(kernel, params, *args, **kwargs):
            chosen = bf16_fn if _is_bf16(params) else fn
            return chosen(kernel, params, *args, **kwargs)

        return call

    return wrap


def _bf16_forward(kernel, params, weights, xs, carry, start, lengths, reverse, keep,
                  batch_major=False, restarts=None):  # fmt: skip
    T, batch, _, _ = _layout(xs, batch_major)
    H = params["w_hh"].shape[0]
    final, ys, extra, flat = _bf16.forward(
        kernel, params, weights, xs, carry, start, lengths, reverse, keep, batch_major, restarts
    )
    final = jax.tree.map(lambda c: c.reshape(*batch, H), final)
    saved = Saved(flat, ys, extra) if keep else None
    return final, ys.reshape(*((*batch, T) if batch_major else (T, *batch)), H), saved


@_or_bf16(_bf16_forward)
def forward(
    kernel: str,
    params: Any,
    weights: Weights,
    xs: Array,
    carry: Any,
    start: Array | int,
    lengths: Array | None,
    reverse: bool,
    keep: bool,
    batch_major: bool = False,
    restarts: tuple[Array, Any] | None = None,
) -> tuple[Any, Array, Saved | None]:
    """The recurrence over ``xs (T, batch..., D)``, time-major (or with ``batch_major``,
    ``(batch..., T, D)``), from ``carry``, with ``weights`` from :func:`pack_weights`; the steps
    are ``start .. start + T - 1`` of the whole sequence (for ``lengths``). ``restarts``:
    ``None``, or ``(flags, restart_carry)`` with boolean ``flags`` laid out as ``xs`` without its
    features: before a flagged step the row's carry is ``restart_carry``. Returns the final
    carry, ``ys`` in the layout of ``xs`` and, with ``keep``, what :func:`backward` needs.

    With bfloat16 weights (see :mod:`seqjax.native.bf16`) ``xs`` is rounded to bfloat16 and
    the carry, ``ys`` and the residuals are float32."""
    T, batch, rows, per_step = _layout(xs, batch_major)
    H = params["w_hh"].shape[0]
    xs = xs.reshape(*per_step, -1)  # the kernels project it step by step (see lstm.cc)
    bias = _bias(kernel, params, H)
    suffix, restart, flags = _restart_operands(restarts, rows, H, per_step)
    common = (*_common_operands(lengths, rows, start), *flags)
    attrs = dict(
        reverse=bool(reverse), has_lengths=lengths is not None, batch_major=bool(batch_major)
    )
    flat = jax.tree.map(lambda c: c.reshape(rows, H), carry)
    out = jax.ShapeDtypeStruct
    residual = per_step if keep else (0, 0)
    if kernel == "lstm":
        ys, cs, acts, h, c = _call(
            "seqjax_lstm_forward" + suffix,
            (out((*per_step, H), xs.dtype), out((*residual, H), xs.dtype),
             out((*residual, 4 * H), xs.dtype), out((rows, H), xs.dtype), out((rows, H), xs.dtype)),
            xs, weights.wi, bias, weights.w, flat.h, flat.c, *restart, *common, keep=bool(keep),
            **attrs,
        )  # fmt: skip
        final, extra = type(carry)(h.reshape(*batch, H), c.reshape(*batch, H)), (cs, acts)
    elif kernel == "gru":
        ys, acts, h = _call(
            "seqjax_gru_forward" + suffix,
            (out((*per_step, H), xs.dtype), out((*residual, 4 * H), xs.dtype),
             out((rows, H), xs.dtype)),
            xs, weights.wi, bias, weights.w, flat, *restart, *common, keep=bool(keep), **attrs,
        )  # fmt: skip
        final, extra = h.reshape(*batch, H), (acts,)
    else:
        ys, h = _call(
            "seqjax_rnn_forward" + suffix,
            (out((*per_step, H), xs.dtype), out((rows, H), xs.dtype)),
            xs, weights.wi, bias, weights.w, flat, *restart, *common, relu=kernel == "rnn_relu",
            **attrs,
        )  # fmt: skip
        final, extra = h.reshape(*batch, H), ()
    saved = Saved(flat, ys, extra) if keep else None
    return final, ys.reshape(*((*batch, T) if batch_major else (T, *batch)), H), saved


@_or_bf16(_bf16.backward)
def backward(
    kernel: str,
    params: Any,
    weights: Weights,
    xs: Array,
    saved: Saved,
    d_carry: Any,
    d_ys: Array,
    start: Array | int,
    lengths: Array | None,
    reverse: bool,
    batch_major: bool = False,
    restarts: tuple[Array, Any] | None = None,
) -> tuple:
    """The gradient of :func:`forward` (with ``keep``, and the same ``xs``, layout and
    ``restarts``) for the cotangents of its final carry and outputs: ``(d_carry, d_params,
    d_xs)``, and with ``restarts`` also the gradient of the restart carry. The reverse loop is
    one custom call; the weight and input gradients are matmuls over all (time x batch) rows
    after it (with bfloat16 weights, the bfloat16 GEMM's, float32 out)."""
    T, batch, rows, per_step = _layout(xs, batch_major)
    H = params["w_hh"].shape[0]
    suffix, restart, flags = _restart_operands(restarts, rows, H, per_step)
    common = (*_common_operands(lengths, rows, start), *flags)
    d_restart_out = tuple(jax.ShapeDtypeStruct((rows, H), saved.ys.dtype) for _ in restart)
    attrs = dict(
        reverse=bool(reverse), has_lengths=lengths is not None, batch_major=bool(batch_major)
    )
    d_flat = jax.tree.map(lambda c: c.reshape(rows, H), d_carry)
    d_ys = d_ys.reshape(*per_step, H)
    out = jax.ShapeDtypeStruct
    dtype = saved.ys.dtype
    if kernel == "lstm":
        cs, acts = saved.extra
        d_gates, dh, dc, *d_restart = _call(
            "seqjax_lstm_backward" + suffix,
            (out((*per_step, 4 * H), dtype), out((rows, H), dtype), out((rows, H), dtype),
             *d_restart_out),
            weights.wt, d_ys, cs, acts, saved.carry.c, d_flat.h, d_flat.c, *restart[1:],
            *common, **attrs,
        )  # fmt: skip
        d_carry0 = type(d_carry)(dh.reshape(*batch, H), dc.reshape(*batch, H))
        h0 = saved.carry.h
        d_hh = d_gates
    elif kernel == "gru":
        (acts,) = saved.extra
        d_gates, d_hh, dh, *d_restart = _call(
            "seqjax_gru_backward" + suffix,
            (out((*per_step, 3 * H), dtype), out((*per_step, 3 * H), dtype),
             out((rows, H), dtype), *d_restart_out),
            weights.wt, d_ys, saved.ys, acts, saved.carry, d_flat, *restart, *common, **attrs,
        )  # fmt: skip
        d_carry0, h0 = dh.reshape(*batch, H), saved.carry
    else:
        d_gates, dh, *d_restart = _call(
            "seqjax_rnn_backward" + suffix,
            (out((*per_step, H), dtype), out((rows, H), dtype), *d_restart_out),
            weights.wt, d_ys, saved.ys, d_flat, *common,
            relu=kernel == "rnn_relu", **attrs,
        )  # fmt: skip
        d_carry0, h0 = dh.reshape(*batch, H), saved.carry
        d_hh = d_gates
    h_prev = _previous_outputs(saved.ys, h0, lengths, rows, start, reverse, batch_major)
    if restarts is not None:  # a restarted step's input carry was the restart one
        h_restart = jnp.expand_dims(restart[0], 1 if batch_major else 0)
        h_prev = jnp.where(flags[0][..., None], h_restart, h_prev)
    # The gradients of x W_ih + b_ih (d_gates) and of h W_hh + b_hh (d_hh) are one array but
    # for the GRU, whose reset gate scales h W_hn + b_hn alone.
    d_gates = d_gates.reshape(T * rows, -1)
    d_hh = d_hh.reshape(T * rows, -1)
    x_rows = xs.reshape(T * rows, -1)
    d_bias = jnp.sum(d_gates, axis=0)
    d_params = {
        "w_ih": x_rows.T @ d_gates,
        "w_hh": h_prev.reshape(T * rows, H).T @ d_hh,
        "b_ih": d_bias,
        "b_hh": d_bias if kernel != "gru" else jnp.sum(d_hh, axis=0),
    }
    d_xs = (d_gates @ params["w_ih"].T).reshape(xs.shape)
    if restarts is None:
        return d_carry0, d_params, d_xs
    structure = jax.tree.structure(restarts[1])
    d_restart = jax.tree.unflatten(structure, [d.reshape(*batch, H) for d in d_restart])
    return d_carry0, d_params, d_xs, d_restart


def _is_bf16(params: Any) -> bool:
    return jnp.dtype(params["w_hh"].dtype) == jnp.dtype(jnp.bfloat16)


def bf16_matmul(a: Array, b: Array, trans_a: bool = False, trans_b: bool = False) -> Array:
    """``op(a) @ op(b)``, float32 ``(M, N)``, from bfloat16 ``a (M, K)`` (``(K, M)`` with
    ``trans_a``) and ``b (K, N)`` (``(N, K)`` with ``trans_b``): the native AMX or
    AVX512-BF16 GEMM where one runs (:func:`bf16_unavailable_reason`), else XLA's dot, both
    summing in float32. Operands of another dtype are rounded to bfloat16 first."""
    return _bf16.matmul(a, b, trans_a, trans_b)


def bf16_unavailable_reason() -> str | None:
    """``None`` when the bfloat16 kernels can run here (AMX-BF16 or AVX512-BF16, see
    :mod:`seqjax.native.bf16`), else why not."""
    return _bf16.unavailable_reason()
