"""The xLSTM sLSTM block (Beck et al. 2024, the post-up-projection block), as a
:class:`seqjax.layers.Layer` mapping ``xs (batch..., time, D)`` to ``(batch..., time, D)``:

    u = LayerNorm(x)
    u_c = silu(causal_conv(u))                  depthwise, width 4; it feeds the i and f gates
    i~, f~ = headwise(u_c);  z~, o~ = headwise(u)   block-diagonal, one (d, d) block per head
    h = sLSTM(i~, f~, z~, o~)                   :func:`seqjax.cells.slstm.slstm`, hidden D
    x' = x + GroupNorm_heads(h)                 each head normalised on its own
    out = x' + W_down (gelu(x'' W_gate) * x'' W_up),   x'' = LayerNorm(x')

following NX-AI's ``xlstm`` ``sLSTMBlock`` (version 2.0.6): LayerNorms and the group norm with
a scale and no shift (eps 1e-5), the exact (erf) GeLU, a feed-forward of ``ffn_factor * D``
rounded up to a multiple of ``ffn_multiple_of`` (4/3 and 64 by default: 64 for D <= 48), no
biases but the conv's and the cell's.

The carry is the conv's last ``conv_width - 1`` normalised inputs and the sLSTM state, so a
long sequence can run in chunks. ``lengths``: outputs past a sequence's length are zero and the
carry is the one at its last step. ``resets``: a segment restarts from the initial carry (or
``reset_carry``), the conv included: it never reads an input from before the restart.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from seqjax import _checks, precision
from seqjax.blocks._conv import causal_conv
from seqjax.blocks._inputs import checked_inputs
from seqjax.cells import _common
from seqjax.cells.slstm import SLSTMCarry, mixed_einsum, slstm
from seqjax.layers import Layer
from seqjax.types import Params
from seqjax.unroll import unroll
from seqjax.unrolling.options import merged_options

Array = jax.Array
EPSILON = 1e-5  # xlstm's LayerNorm and group norm


class SLSTMBlockCarry(NamedTuple):
    """The block's state between chunks.

    Attributes:
      conv: the conv's last ``conv_width - 1`` inputs (after the LayerNorm), oldest first,
        flattened to ``(batch..., (conv_width - 1) * D)`` so every leaf is ``(batch...,
        features)``.
      cell: the sLSTM's :class:`~seqjax.cells.slstm.SLSTMCarry`, each ``(batch..., D)``.
    """

    conv: Array
    cell: SLSTMCarry


def ffn_size(embedding_dim: int, factor: float, multiple_of: int) -> int:
    """The feed-forward's inner width: ``factor * D`` rounded up to a multiple (xlstm's)."""
    return int(math.ceil(factor * embedding_dim / multiple_of) * multiple_of)


def slstm_block(
    embedding_dim: int,
    *,
    num_heads: int = 4,
    conv_width: int = 4,
    forget_gate: str = "sigmoid",
    ffn_factor: float = 4 / 3,
    ffn_multiple_of: int = 64,
    **unroll_options: Any,
) -> Layer:
    """The sLSTM block (module docstring).

    Args:
      embedding_dim: D, the features in and out (and the sLSTM's hidden size).
      num_heads: heads of the sLSTM and of the gate projections; must divide D.
      conv_width: the causal conv's width (4 in xLSTM); 0 leaves the conv out (the i and f
        gates then read the normalised input, as ``xlstm`` with ``conv1d_kernel_size=0``).
      forget_gate: the sLSTM's, ``"sigmoid"`` (xlstm's) or ``"exp"``.
      ffn_factor: the feed-forward's width over ``embedding_dim`` (:func:`ffn_size`).
      ffn_multiple_of: the feed-forward's width is rounded up to a multiple of this.
      **unroll_options: how the sLSTM is unrolled (``remat``, ``unroll``, ``custom_vjp``...;
        :class:`seqjax.UnrollOptions`). The block is causal and batch-major: ``reverse``,
        ``time_major`` and ``parallel`` are refused (for a backward pass, wrap it in
        :func:`seqjax.layers.bidirectional`).

    Params: ``norm (D,)``, ``conv_w (conv_width, D)`` (the last row multiplies the current
    step) and ``conv_b (D,)``, ``w_gates (4, heads, d, d)`` (gates i, f, z, o; each head
    ``u_head @ w``), ``cell`` (the sLSTM's ``r``, ``b``), ``group_norm (D,)``, ``ffn_norm
    (D,)``, ``w_up (D, 2F)`` (the GeLU gate's columns first), ``w_down (F, D)``. Carry:
    :class:`SLSTMBlockCarry`.
    """
    fn = "slstm_block"
    D = _checks.check_positive_int(embedding_dim, "embedding_dim", fn)
    heads = _checks.check_positive_int(num_heads, "num_heads", fn)
    if D % heads:
        raise ValueError(f"{fn}: num_heads must divide embedding_dim ({D}); got {heads}")
    W = _checks.check_int(conv_width, "conv_width", fn, low=0)
    factor = _checks.check_number(ffn_factor, "ffn_factor", fn, lambda v: v > 0, "a number > 0")
    F = ffn_size(D, factor, _checks.check_positive_int(ffn_multiple_of, "ffn_multiple_of", fn))
    cell = slstm(D, num_heads=heads, forget_gate=forget_gate, input_projection=False)
    options = merged_options(None, unroll_options, fn)
    for name in ("reverse", "time_major", "parallel"):
        if getattr(options, name):
            raise ValueError(
                f"{fn}: {name}=True is not supported: the block is causal and batch-major and "
                "the sLSTM is not linear. For a backward pass use "
                "seqjax.layers.bidirectional(block, block)"
            )
    d = D // heads

    def init(key: Array, input_size: int, dtype=None) -> Params:
        if input_size != D:
            raise ValueError(f"{fn}: the block is residual, so input_size must equal "
                             f"embedding_dim ({D}); got {input_size!r}")  # fmt: skip
        dtype = _common.float_dtype(dtype, fn)
        k = jax.random.split(key, 6)
        small = math.sqrt(2 / (5 * D))  # xlstm's small_init; w_down: its wang_init, 1 block
        bound = 1 / math.sqrt(max(W, 1))  # PyTorch's Conv1d default, fan_in = width
        ones = jnp.ones((D,), dtype)
        params = {
            "norm": ones,
            "w_gates": small * jax.random.normal(k[0], (4, heads, d, d), dtype),
            "cell": cell.init(k[1], 4 * D, dtype),
            "group_norm": ones,
            "ffn_norm": ones,
            "w_up": small * jax.random.normal(k[2], (D, 2 * F), dtype),
            "w_down": 2 / math.sqrt(D) * jax.random.normal(k[3], (F, D), dtype),
        }
        if W:
            params["conv_w"] = jax.random.uniform(k[4], (W, D), dtype, -bound, bound)
            params["conv_b"] = jax.random.uniform(k[5], (D,), dtype, -bound, bound)
        return params

    def initial_carry(params: Params, batch_shape: tuple[int, ...] = ()) -> SLSTMBlockCarry:
        batch_shape = _checks.check_batch_shape(batch_shape, "initial_carry")
        conv = jnp.zeros((*batch_shape, max(W - 1, 0) * D), precision.state_dtype(params))
        return SLSTMBlockCarry(conv, cell.initial_carry(params["cell"], batch_shape))

    def apply(params, xs, *, lengths=None, carry=None, key=None, resets=None, reset_carry=None):
        del key  # the block has no randomness
        return _apply(cell, options, initial_carry, params, xs, lengths, carry, resets,
                      reset_carry, fn)  # fmt: skip

    return Layer(init=init, apply=apply, initial_carry=initial_carry, output_size=D)


def _apply(cell, options, initial_carry, params, xs, lengths, carry, resets, reset_carry, fn):
    """The block's ``apply``: ``(final SLSTMBlockCarry, ys (batch..., time, D))``."""
    xs, lengths, resets, carry, reset_carry = checked_inputs(
        params, xs, lengths, carry, resets, reset_carry, fn=fn, keys=("norm", "w_gates", "cell"),
        features=lambda p: p["norm"].shape[0], initial_carry=initial_carry,
        carry_type=SLSTMBlockCarry,
    )  # fmt: skip
    reset_carry = carry if reset_carry is None else reset_carry
    batch_shape, T = xs.shape[:-2], xs.shape[-2]
    full = jnp.full(batch_shape, T, jnp.int32) if lengths is None else lengths
    valid = jnp.arange(T) < full[..., None]
    restarts = jnp.zeros_like(valid) if resets is None else resets & valid
    u = _norm(xs, 1) * params["norm"]
    conv_state = carry.conv
    if "conv_w" in params:
        W = params["conv_w"].shape[0]
        conv, conv_state = causal_conv(
            params["conv_w"], params["conv_b"], u, restarts, full,
            _unflat(carry.conv, W, u.shape[-1]), _unflat(reset_carry.conv, W, u.shape[-1]),
        )  # fmt: skip
        gate_in = jax.nn.silu(conv)
        conv_state = conv_state.reshape(carry.conv.shape).astype(carry.conv.dtype)
    else:
        gate_in = u
    w = params["w_gates"]
    pre = jnp.concatenate(
        [_headwise(gate_in, w[0]), _headwise(gate_in, w[1]), _headwise(u, w[2]),
         _headwise(u, w[3])], axis=-1,
    )  # fmt: skip
    cell_final, h = unroll(
        cell, params["cell"], pre, carry=carry.cell, lengths=lengths, resets=resets,
        reset_carry=None if resets is None else reset_carry.cell, options=options,
    )  # fmt: skip
    heads = w.shape[1]
    x1 = xs + _norm(h, heads) * params["group_norm"]
    v = _norm(x1, 1) * params["ffn_norm"]
    gate, up = jnp.split(precision.matmul(v, params["w_up"]), 2, axis=-1)
    ys = x1 + precision.matmul(jax.nn.gelu(gate, approximate=False) * up, params["w_down"])
    ys = jnp.where(valid[..., None], ys, jnp.zeros_like(ys))
    return SLSTMBlockCarry(conv_state, cell_final), ys


def _norm(x: Array, groups: int) -> Array:
    """Zero mean and unit variance within each of ``groups`` equal slices of the last axis
    (1: LayerNorm; the heads: xlstm's MultiHeadLayerNorm), no scale or shift."""
    g = x.reshape(*x.shape[:-1], groups, x.shape[-1] // groups)
    mean = jnp.mean(g, axis=-1, keepdims=True)
    var = jnp.mean(jnp.square(g - mean), axis=-1, keepdims=True)
    return ((g - mean) * jax.lax.rsqrt(var + EPSILON)).reshape(x.shape)


def _headwise(x: Array, w: Array) -> Array:
    """``x (..., heads * d)`` times the block-diagonal ``w (heads, d, d_out)``: ``(...,
    heads * d_out)`` (under the mixed policy, summed in float32: ``mixed_einsum``)."""
    heads, d, _ = w.shape
    out = mixed_einsum("...ni,nio->...no", x.reshape(*x.shape[:-1], heads, d), w)
    return out.reshape(*x.shape[:-1], -1)


def _unflat(flat: Array, W: int, D: int) -> Array:
    """A carry's flat conv buffer as ``(batch..., W - 1, D)``."""
    return flat.reshape(*flat.shape[:-1], W - 1, D)
