"""The Real-Gated Linear Recurrent Unit of Griffin and Hawk (De et al. 2024, "Griffin: Mixing
Gated Linear Recurrences with Local Attention for Efficient Language Models"):

    r_t = sigmoid(x_t W_r + b_r),        i_t = sigmoid(x_t W_i + b_i)      (per head)
    log a_t = -c * r_t * softplus(a_param)
    h_t = a_t * h_(t-1) + sqrt(1 - a_t^2) * (i_t * x_t),        y_t = h_t

``W_r`` and ``W_i`` are block diagonal, one ``(H/heads, H/heads)`` block per head, as in
DeepMind's reference (``recurrentgemma``, ``layers.RGLRU``). The paper writes the base decay as
``a = sigmoid(Lambda)``, so ``softplus(a_param) = -log a`` with ``a_param = -Lambda``; seqjax keeps
the reference's parameter so that its weights load unchanged. ``a_t`` depends on the input only,
so the state is linear in itself and ``unroll(..., parallel=True)`` runs an associative scan.

With ``document_starts=True`` the input's last feature is a 0/1 flag, the reference's
``segment_pos == 0``: at a flagged step the state is dropped (``a_t = 0``) and the input is not
normalised, ``h_t = i_t * x_t``. That is what recurrentgemma does at the start of every document
(including its first step), and what :func:`seqjax.blocks.griffin_block` feeds the cell.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from seqjax import _checks, precision
from seqjax.cell import Cell, LinearRecurrence, Params, linear_recur
from seqjax.cells import _common

MAX_SQRT_GRADIENT = 1000.0
"""The bound on the derivative of ``sqrt(1 - a^2)`` (the reference's, against NaNs in bfloat16
training when ``a`` comes close to 1)."""


@jax.custom_jvp
def bounded_sqrt(x: jax.Array) -> jax.Array:
    """``sqrt(x)`` whose derivative is ``1 / (2 sqrt(max(x, 1 / (4 M^2))))``, at most ``M =
    MAX_SQRT_GRADIENT``. A custom JVP (not a VJP) so that forward mode and second derivatives
    work too."""
    return jnp.sqrt(x)


@bounded_sqrt.defjvp
def _bounded_sqrt_jvp(primals, tangents):
    (x,), (dx,) = primals, tangents
    floor = jnp.asarray(1.0 / (4.0 * MAX_SQRT_GRADIENT**2), x.dtype)
    return jnp.sqrt(x), dx * 0.5 / jnp.sqrt(jnp.maximum(x, floor))


def rg_lru(
    hidden_size: int,
    *,
    num_heads: int = 1,
    c: float = 8.0,
    min_rad: float = 0.9,
    max_rad: float = 0.999,
    document_starts: bool = False,
) -> Cell:
    """An RG-LRU cell with a state of ``hidden_size`` (H); inputs have H features (the input
    gate is elementwise), H + 1 with ``document_starts``.

    Args:
      hidden_size: H, the size of the input, state and output.
      num_heads: blocks of the block-diagonal gate weights; must divide H.
      c: the constant scaling the gated log-decay (8 in the paper and the reference).
      min_rad: the base decay ``a = exp(-softplus(a_param))`` starts with ``a^2`` uniform in
        ``[min_rad^2, max_rad^2]`` (the reference's init: uniform on the ring ``min_rad <= a
        <= max_rad`` by area), so at ``r_t = 1`` the step's decay is ``a^c``.
      max_rad: the upper end of that ring.
      document_starts: the input's last feature flags document starts (see the module).

    Params: ``a_param (H,)``, ``w_r, w_i (heads, H/heads, H/heads)``, ``b_r, b_i (heads,
    H/heads)``; gate weights Lecun-normal over the fan-in H (the reference's
    ``variance_scaling(1, "fan_in", "normal")`` of the stacked blocks), biases zero.
    Carry: ``h (batch..., H)``.
    """
    fn = "rg_lru"
    H = _checks.check_positive_int(hidden_size, "hidden_size", fn)
    heads = _checks.check_positive_int(num_heads, "num_heads", fn)
    if H % heads:
        raise ValueError(
            f"{fn}: num_heads must divide hidden_size (the gates are block diagonal, one block "
            f"per head); got hidden_size={H}, num_heads={heads}"
        )
    c = _checks.check_number(c, "c", fn, lambda v: v > 0, "a number > 0")
    for name, value in (("min_rad", min_rad), ("max_rad", max_rad)):
        _checks.check_number(value, name, fn, lambda v: 0 <= v < 1, "a number in [0, 1)")
    if not min_rad < max_rad:
        raise ValueError(f"{fn}: need min_rad < max_rad; got min_rad={min_rad}, max_rad={max_rad}")
    starts = _checks.check_bool(document_starts, "document_starts", fn)
    expected = H + 1 if starts else H

    def init_fn(key: jax.Array, input_size: int, dtype=None) -> Params:
        input_size = _checks.check_positive_int(input_size, "input_size", fn)
        if input_size != expected:
            raise ValueError(
                f"{fn}: input_size must be {expected} (hidden_size={H}"
                + (" plus the document-start flag" if starts else "")
                + f": the input gate is elementwise); got input_size={input_size}. Put a "
                "linear layer in front, or use seqjax.blocks.griffin_block"
            )
        dtype = _common.float_dtype(dtype, fn)
        return rg_lru_init(key, H, heads, min_rad, max_rad, dtype)

    linear = LinearRecurrence(
        functools.partial(rg_lru_coefficients, c=c, document_starts=starts), _state_is_output
    )
    return Cell(
        init=init_fn,
        initial_carry=_common.zeros_carry(H),
        project=rg_lru_project,
        recur=linear_recur(linear),
        output_size=H,
        name=fn,
        input_size=lambda params: params["a_param"].shape[0] + (1 if starts else 0),
        linear=linear,
    )


def rg_lru_init(
    key: jax.Array, H: int, heads: int, min_rad: float, max_rad: float, dtype
) -> Params:
    """Fresh params: ``a_param = softplus^-1(-log a)`` with ``a^2 ~ U[min_rad^2, max_rad^2]``,
    gate weights Lecun-normal over the fan-in H, biases zero."""
    k_a, k_r, k_i = jax.random.split(key, 3)
    u = jax.random.uniform(k_a, (H,), jnp.float32)
    log_a = 0.5 * jnp.log(u * (max_rad**2 - min_rad**2) + min_rad**2 + 1e-8)
    a_param = jnp.log(jnp.expm1(-log_a))  # softplus(a_param) = -log a
    gate_init = jax.nn.initializers.variance_scaling(1.0, "fan_in", "normal")
    d = H // heads
    params = {
        "a_param": a_param,
        "w_r": gate_init(k_r, (heads, d, d), jnp.float32),
        "b_r": jnp.zeros((heads, d)),
        "w_i": gate_init(k_i, (heads, d, d), jnp.float32),
        "b_i": jnp.zeros((heads, d)),
    }
    return jax.tree.map(lambda p: p.astype(dtype), params)


def block_diagonal(x: jax.Array, w: jax.Array, b: jax.Array) -> jax.Array:
    """``x (..., heads * d_in) -> (..., heads * d_out)``, each head's slice through its own
    ``w (heads, d_in, d_out)`` and ``b (heads, d_out)``."""
    heads, d_in, d_out = w.shape
    xh = x.reshape((*x.shape[:-1], heads, 1, d_in))  # a batched (1, d_in) @ (d_in, d_out)
    y = precision.matmul(xh, w)[..., 0, :] + b
    return y.reshape((*x.shape[:-1], heads * d_out))


def rg_lru_project(params: Params, xs: jax.Array) -> jax.Array:
    """``[x W_r + b_r, x W_i + b_i, x(, flag)]`` on the last axis, ``(..., 3H(+1))``: both
    gates' pre-activations in one block-diagonal product, and the input the gate scales."""
    H = params["a_param"].shape[-1]
    x = xs[..., :H]
    w = jnp.concatenate([params["w_r"], params["w_i"]], axis=-1)  # (heads, d, 2d)
    b = jnp.concatenate([params["b_r"], params["b_i"]], axis=-1)
    gates = block_diagonal(x, w, b).reshape((*x.shape[:-1], w.shape[0], 2, w.shape[1]))
    r, i = (gates[..., k, :].reshape(x.shape) for k in (0, 1))
    return jnp.concatenate([r, i, xs], axis=-1)


def rg_lru_coefficients(
    params: Params, px: jax.Array, *, c: float = 8.0, document_starts: bool = False
) -> tuple[jax.Array, jax.Array]:
    """``(a, b)`` of ``h_t = a h_(t-1) + b``: ``a = exp(-c r softplus(a_param))``, ``b =
    sqrt(1 - a^2) i x``; at a flagged document start ``(0, i x)``."""
    H = params["a_param"].shape[-1]
    dtype = precision.state_dtype(params)
    r = jax.nn.sigmoid(px[..., :H].astype(dtype))
    i = jax.nn.sigmoid(px[..., H : 2 * H].astype(dtype))
    x = px[..., 2 * H : 3 * H].astype(dtype)
    log_a = -c * r * jax.nn.softplus(params["a_param"].astype(dtype))
    a = jnp.exp(log_a)
    # 1 - a^2 as -expm1(2 log a): no cancellation when a is close to 1.
    multiplier = bounded_sqrt(-jnp.expm1(2.0 * log_a))
    if document_starts:
        start = px[..., 3 * H : 3 * H + 1].astype(dtype)
        a = a * (1.0 - start)
        multiplier = start + (1.0 - start) * multiplier
    return a, multiplier * (i * x)


def _state_is_output(params: Params, h: jax.Array, px: jax.Array) -> jax.Array:
    del params, px
    return h


def rg_lru_decay(params: Params, c: float = 8.0) -> jax.Array:
    """The decay ``a^c = exp(-c softplus(a_param))`` the state has where ``r_t = 1``, ``(H,)``
    (its smallest per-step decay): a quick look at the memory a trained layer keeps."""
    return jnp.exp(-c * jax.nn.softplus(params["a_param"]))
