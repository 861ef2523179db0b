"""The xLSTM mLSTM block (Beck et al. 2024, the pre-up-projection block), as a
:class:`seqjax.layers.Layer` mapping ``xs (batch..., time, D)`` to ``(batch..., time, D)``:

    u = LayerNorm(x);   x_m, z = u W_up                 two branches of I = proj_factor * D
    c = silu(causal_conv(x_m))                           depthwise, width 4
    q, k = headwise(c);  v = headwise(x_m)               block-diagonal, blocks of 4
    i~, f~ = [q, k, v] W_i + b_i, [q, k, v] W_f + b_f    one gate per head
    h = GroupNorm_heads(mLSTM(q, k, v, i~, f~))          :func:`seqjax.cells.mlstm.mlstm`
    out = x + ((h + skip * c) * silu(z)) W_down

following NX-AI's ``xlstm`` ``mLSTMBlock`` (version 2.0.6): the LayerNorm and group norm with a
scale and no shift (eps 1e-5), no biases but the conv's and the gates', I rounded up to a
multiple of ``inner_multiple_of`` (64 in xlstm). The mLSTM runs through :func:`seqjax.unroll`, so
``parallel=True`` (and ``chunk_size``) pick its quadratic or chunkwise form.

The carry is the conv's last ``conv_width - 1`` inputs and the mLSTM state, so a long sequence
can run in chunks. ``lengths``: outputs past a sequence's length are zero and the carry is the
one at its last step. ``resets``: a segment restarts from the initial carry (or
``reset_carry``), the conv included.
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
from seqjax.cells.mlstm import MLSTMCarry, mlstm
from seqjax.layers import Layer
from seqjax.types import Params
from seqjax.unroll import unroll
from seqjax.unrolling.options import merged_options

Array = jax.Array
EPSILON = 1e-5  # xlstm's LayerNorm and group norm


class MLSTMBlockCarry(NamedTuple):
    """The block's state between chunks: ``conv (batch..., (conv_width - 1) * I)``, the conv's
    last inputs oldest first, and ``cell``, the :class:`~seqjax.cells.mlstm.MLSTMCarry`."""

    conv: Array
    cell: MLSTMCarry


def mlstm_block(
    embedding_dim: int,
    *,
    num_heads: int = 4,
    proj_factor: float = 2.0,
    conv_width: int = 4,
    qkv_block_size: int = 4,
    inner_multiple_of: int = 64,
    **unroll_options: Any,
) -> Layer:
    """The mLSTM block (module docstring).

    Args:
      embedding_dim: D, the features in and out.
      num_heads: heads of the mLSTM; must divide the inner size I.
      proj_factor: I = proj_factor * D, rounded up to a multiple of ``inner_multiple_of``.
      conv_width: the causal conv's width (>= 1).
      qkv_block_size: the size of the q, k, v projections' diagonal blocks; must divide I.
      **unroll_options: how the mLSTM is unrolled (``parallel``, ``chunk_size``, ``remat``...;
        :class:`seqjax.UnrollOptions`); ``reverse`` and ``time_major`` are refused (the block
        is causal and batch-major; use :func:`seqjax.layers.bidirectional`).

    Params: ``norm (D,)``, ``w_up (D, 2I)`` (x_m's columns first), ``conv_w (W, I)`` (the last
    row multiplies the current step), ``conv_b (I,)``, ``w_q, w_k, w_v (I/bs, bs, bs)``
    (``x_block @ w``), ``w_i, w_f (3I, NH)``, ``b_i, b_f (NH,)``, ``group_norm (I,)``,
    ``skip (I,)``, ``w_down (I, D)``. Carry: :class:`MLSTMBlockCarry`.
    """
    fn = "mlstm_block"
    D = _checks.check_positive_int(embedding_dim, "embedding_dim", fn)
    heads = _checks.check_positive_int(num_heads, "num_heads", fn)
    factor = _checks.check_number(proj_factor, "proj_factor", fn, lambda v: v > 0, "a number > 0")
    multiple = _checks.check_positive_int(inner_multiple_of, "inner_multiple_of", fn)
    I = int(math.ceil(factor * D / multiple) * multiple)
    W = _checks.check_positive_int(conv_width, "conv_width", fn)
    bs = _checks.check_positive_int(qkv_block_size, "qkv_block_size", fn)
    for name, value in (("num_heads", heads), ("qkv_block_size", bs)):
        if I % value:
            raise ValueError(f"{fn}: {name} must divide the inner size I={I} (proj_factor * "
                             f"embedding_dim, rounded up to {multiple}); got {value}")  # fmt: skip
    options = merged_options(None, unroll_options, fn)
    for name in ("reverse", "time_major"):
        if getattr(options, name):
            raise ValueError(
                f"{fn}: {name}=True is not supported: the block is causal and batch-major; "
                "use seqjax.layers.bidirectional(block, block)"
            )
    cell = mlstm(I, heads, project_inputs=False)

    def init(key: Array, input_size: int, dtype=None) -> Params:
        if input_size != D:
            raise ValueError(f"{fn}: the block is residual, so input_size must equal "
                             f"embedding_dim ({D}); got {input_size!r}")  # fmt: skip
        dtype = _common.float_dtype(dtype, fn)
        k = jax.random.split(key, 8)
        small = math.sqrt(2 / (5 * D))  # xlstm's small_init (and D for the q, k, v blocks)
        normal = lambda key, shape, scale: scale * jax.random.normal(key, shape, dtype)  # noqa: E731
        bound = 1 / math.sqrt(W)  # PyTorch's Conv1d default, fan_in = width
        return {
            "norm": jnp.ones((D,), dtype),
            "w_up": normal(k[0], (D, 2 * I), small),
            "conv_w": jax.random.uniform(k[1], (W, I), dtype, -bound, bound),
            "conv_b": jax.random.uniform(k[2], (I,), dtype, -bound, bound),
            **{f"w_{n}": normal(k[3 + j], (I // bs, bs, bs), small) for j, n in enumerate("qkv")},
            "w_i": jnp.zeros((3 * I, heads), dtype),  # xlstm: zero gate weights, biases below
            "w_f": jnp.zeros((3 * I, heads), dtype),
            "b_i": normal(k[6], (heads,), 0.1),
            "b_f": jnp.linspace(3.0, 6.0, heads, dtype=dtype),
            "group_norm": jnp.ones((I,), dtype),
            "skip": jnp.ones((I,), dtype),
            "w_down": normal(k[7], (I, D), 2 / math.sqrt(D)),  # xlstm's wang_init, 1 block
        }

    def initial_carry(params: Params, batch_shape: tuple[int, ...] = ()) -> MLSTMBlockCarry:
        batch_shape = _checks.check_batch_shape(batch_shape, "initial_carry")
        conv = jnp.zeros((*batch_shape, (W - 1) * I), precision.state_dtype(params))
        return MLSTMBlockCarry(conv, cell.initial_carry(params, batch_shape))

    def apply(params, xs, *, lengths=None, carry=None, key=None, resets=None, reset_carry=None):
        del key  # the block has no randomness
        xs, lengths, resets, carry, reset_carry = checked_inputs(
            params, xs, lengths, carry, resets, reset_carry, fn=fn, keys=("norm", "w_up", "conv_w"),
            features=lambda p: D, initial_carry=initial_carry, carry_type=MLSTMBlockCarry,
        )  # fmt: skip
        reset_carry = carry if reset_carry is None else reset_carry
        return _apply(cell, options, params, xs, lengths, resets, carry, reset_carry)

    return Layer(init=init, apply=apply, initial_carry=initial_carry, output_size=D)


def _apply(cell, options, params, xs, lengths, resets, carry, reset_carry):
    """The block's ``apply``: ``(final MLSTMBlockCarry, ys (batch..., time, D))``."""
    batch_shape, T = xs.shape[:-2], xs.shape[-2]
    full = jnp.full(batch_shape, T, jnp.int32) if lengths is None else lengths
    valid = jnp.arange(T) < full[..., None]
    restarts = jnp.zeros_like(valid) if resets is None else resets & valid
    u = _norm(xs, 1) * params["norm"]
    x_m, z = jnp.split(precision.matmul(u, params["w_up"]), 2, axis=-1)
    W, I = params["conv_w"].shape
    history = lambda flat: flat.reshape(*flat.shape[:-1], W - 1, I)  # noqa: E731
    conv, conv_state = causal_conv(params["conv_w"], params["conv_b"], x_m, restarts, full,
                                   history(carry.conv), history(reset_carry.conv))  # fmt: skip
    c = jax.nn.silu(conv)
    qkv = [_headwise(c, params["w_q"]), _headwise(c, params["w_k"]), _headwise(x_m, params["w_v"])]
    qkv = jnp.concatenate(qkv, axis=-1)
    i = precision.matmul(qkv, params["w_i"]) + params["b_i"]
    f = precision.matmul(qkv, params["w_f"]) + params["b_f"]
    cell_final, h = unroll(
        cell, params, jnp.concatenate([qkv, i, f], axis=-1), carry=carry.cell, lengths=lengths,
        resets=resets, reset_carry=None if resets is None else reset_carry.cell, options=options,
    )  # fmt: skip
    heads = params["b_i"].shape[0]
    h = (_norm(h, heads) * params["group_norm"] + params["skip"] * c) * jax.nn.silu(z)
    ys = xs + precision.matmul(h, params["w_down"])
    ys = jnp.where(valid[..., None], ys, jnp.zeros_like(ys))
    conv_state = conv_state.reshape(carry.conv.shape).astype(carry.conv.dtype)
    return MLSTMBlockCarry(conv_state, cell_final), ys


def _norm(x: Array, groups: int) -> Array:
    """Zero mean, unit variance within each of ``groups`` equal slices of the last axis (1:
    LayerNorm; the heads: xlstm's MultiHeadLayerNorm), no scale or shift."""
    g = x.reshape(*x.shape[:-1], groups, x.shape[-1] // groups)
    mean = jnp.mean(g, axis=-1, keepdims=True)
    var = jnp.mean(jnp.square(g - mean), axis=-1, keepdims=True)
    return ((g - mean) * jax.lax.rsqrt(var + EPSILON)).reshape(x.shape)


def _headwise(x: Array, w: Array) -> Array:
    """``x (..., blocks * bs)`` times the block-diagonal ``w (blocks, bs, bs_out)``."""
    blocks, bs, _ = w.shape
    x = x.reshape(*x.shape[:-1], blocks, bs)
    if x.dtype != w.dtype and jnp.dtype(w.dtype) in (jnp.bfloat16, jnp.float16):
        x, w = x.astype(w.dtype).astype(jnp.float32), w.astype(jnp.float32)  # exact products
    out = jnp.einsum("...ni,nio->...no", x, w)
    return out.reshape(*out.shape[:-2], -1)
