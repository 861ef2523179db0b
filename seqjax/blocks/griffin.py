"""Griffin's recurrent block (De et al. 2024), the temporal-mixing block of Hawk and Griffin,
as a :class:`seqjax.layers.Layer`:

    y_branch = gelu(x W_y + b_y)
    u = x W_x + b_x  ->  causal Conv1D over time (width 4)  ->  RG-LRU
    out = (RG-LRU(conv(u)) * y_branch) W_out + b_out

following DeepMind's reference (``recurrentgemma.jax.modules.RecurrentBlock``): the tanh GeLU of
``jax.nn.gelu``, the conv ``sum_k u_(t-k) * conv_w[width-1-k] + conv_b``, and the RG-LRU of
:func:`seqjax.cells.rg_lru.rg_lru` with its document starts.

Documents (``resets``) are kept apart as the reference's ``segment_pos == 0`` keeps them: the conv
never reads an input from before the document's first step, and the RG-LRU starts the document
from nothing, unnormalised (``h = i * x``). A fresh carry (``carry=None`` or ``initial_carry``)
marks the first step as a document start in the same way.

The carry lets a long sequence run in chunks: a :class:`GriffinCarry` of the conv's last
``width - 1`` inputs, the RG-LRU state, and whether anything was seen yet. Chunks fed in order
give the outputs of one call over their concatenation.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from seqjax import _checks, precision
from seqjax.blocks._conv import causal_conv
from seqjax.blocks._inputs import checked_inputs
from seqjax.cells import _common
from seqjax.cells.rg_lru import rg_lru
from seqjax.layers import Layer
from seqjax.types import Params
from seqjax.unroll import unroll
from seqjax.unrolling.options import merged_options

Array = jax.Array


class GriffinCarry(NamedTuple):
    """The state of a Griffin block between chunks of a sequence.

    Attributes:
      conv: the conv's last ``width - 1`` inputs, oldest first, flattened: ``(batch...,
        (width - 1) * L)`` (zeros before a document's first step). Flat so that every leaf is
        ``(batch..., features)``, as :func:`seqjax.stream` expects of a carry.
      h: the RG-LRU state, ``(batch..., L)``.
      started: ``(batch..., 1)``, 1 once a step was seen, 0 in a fresh carry: then the next
        step starts a document.
    """

    conv: Array
    h: Array
    started: Array


def griffin_block(
    width: int,
    *,
    lru_width: int | None = None,
    num_heads: int = 1,
    conv_width: int = 4,
    c: float = 8.0,
    min_rad: float = 0.9,
    max_rad: float = 0.999,
    out_init_scale: float = 1.0,
    **unroll_options: Any,
) -> Layer:
    """The Griffin recurrent block, mapping ``xs (batch..., time, D)`` to ``(batch..., time,
    width)``; any input size D (the reference's residual blocks use D = width).

    Args:
      width: the output features (the model width).
      lru_width: L, the features of the two branches and the RG-LRU (default: ``width``).
      num_heads: heads of the RG-LRU's block-diagonal gates; must divide L.
      conv_width: the conv's temporal width (4 in Griffin); 1 is no temporal mixing.
      c: the RG-LRU's decay scale (:func:`seqjax.cells.rg_lru.rg_lru`).
      min_rad: the RG-LRU's smallest initial decay.
      max_rad: the RG-LRU's largest initial decay.
      out_init_scale: the variance scale of ``W_out``'s init (the reference's
        ``final_w_init_variance_scale``).
      **unroll_options: how the RG-LRU is unrolled (``parallel=True`` for the associative
        scan, ``remat``, ``chunk_size``, ``unroll``...; see :class:`seqjax.UnrollOptions`).
        The block is causal and batch-major: ``reverse`` and ``time_major`` are refused (wrap
        it in :func:`seqjax.layers.bidirectional` for a backward pass).

    Params: ``w_x, w_y (D, L)``, ``b_x, b_y (L,)``, ``conv_w (conv_width, L)``, ``conv_b
    (L,)``, ``rg_lru`` (the cell's params), ``w_out (L, width)``, ``b_out (width,)``. Carry:
    :class:`GriffinCarry`.
    """
    fn = "griffin_block"
    width = _checks.check_positive_int(width, "width", fn)
    L = width if lru_width is None else _checks.check_positive_int(lru_width, "lru_width", fn)
    conv_width = _checks.check_positive_int(conv_width, "conv_width", fn)
    out_scale = _checks.check_number(out_init_scale, "out_init_scale", fn, lambda v: v > 0,
                                     "a number > 0")  # fmt: skip
    heads = _checks.check_positive_int(num_heads, "num_heads", fn)
    if L % heads:
        raise ValueError(
            f"{fn}: num_heads must divide lru_width (the RG-LRU's gates are block diagonal, one "
            f"block per head); got lru_width={L}, num_heads={heads}"
        )
    cell = rg_lru(L, num_heads=heads, c=c, min_rad=min_rad, max_rad=max_rad,
                  document_starts=True)  # fmt: skip
    options = merged_options(None, unroll_options, fn)
    for name in ("reverse", "time_major"):
        if getattr(options, name):
            raise ValueError(
                f"{fn}: {name}=True is not supported: the block is causal and batch-major. "
                "For a backward pass use seqjax.layers.bidirectional(block, block)"
            )
    W = conv_width

    def init(key: Array, input_size: int, dtype=None) -> Params:
        input_size = _checks.check_positive_int(input_size, "input_size", fn)
        dtype = _common.float_dtype(dtype, fn)
        k = jax.random.split(key, 5)
        dense = jax.nn.initializers.variance_scaling(1.0, "fan_in", "normal")
        conv = jax.nn.initializers.variance_scaling(0.01, "fan_in", "normal")
        out = jax.nn.initializers.variance_scaling(out_scale, "fan_in", "normal")
        params = {
            "w_x": dense(k[0], (input_size, L)), "b_x": jnp.zeros((L,)),
            "w_y": dense(k[1], (input_size, L)), "b_y": jnp.zeros((L,)),
            "conv_w": conv(k[2], (W, L)), "conv_b": jnp.zeros((L,)),
            "w_out": out(k[3], (L, width)), "b_out": jnp.zeros((width,)),
        }  # fmt: skip
        params = jax.tree.map(lambda p: p.astype(dtype), params)
        return {**params, "rg_lru": cell.init(k[4], L + 1, dtype)}

    def initial_carry(params: Params, batch_shape: tuple[int, ...] = ()) -> GriffinCarry:
        batch_shape = _checks.check_batch_shape(batch_shape, "initial_carry")
        dtype = precision.state_dtype(params)
        zeros = lambda n: jnp.zeros((*batch_shape, n), dtype)  # noqa: E731
        return GriffinCarry(zeros((W - 1) * L), zeros(L), zeros(1))

    def apply(params, xs, *, lengths=None, carry=None, key=None, resets=None, reset_carry=None):
        del key  # the block has no randomness
        return griffin_apply(
            cell, options, initial_carry, params, xs, lengths, carry, resets, reset_carry, fn
        )

    return Layer(init=init, apply=apply, initial_carry=initial_carry, output_size=width)


def griffin_apply(cell, options, initial_carry, params, xs, lengths, carry, resets, reset_carry,
                  fn):  # fmt: skip
    """The block's ``apply``: ``(final GriffinCarry, ys (batch..., time, width))``."""
    restart_from_carry = reset_carry is not None and resets is not None
    xs, given_lengths, resets, carry, reset_carry = checked_inputs(
        params, xs, lengths, carry, resets, reset_carry, fn=fn, keys=("w_x", "w_y", "rg_lru"),
        features=lambda p: p["w_x"].shape[0], initial_carry=initial_carry,
        carry_type=GriffinCarry, min_length=0,
    )  # fmt: skip
    reset_carry = initial_carry(params, xs.shape[:-2]) if reset_carry is None else reset_carry
    batch_shape, T = xs.shape[:-2], xs.shape[-2]
    steps = jnp.arange(T)
    lengths = jnp.full(batch_shape, T, jnp.int32) if given_lengths is None else given_lengths
    valid = steps < lengths[..., None]
    restarts = jnp.zeros_like(valid) if resets is None else resets & valid  # padding: none
    y_branch = jax.nn.gelu(precision.matmul(xs, params["w_y"]) + params["b_y"])
    u = precision.matmul(xs, params["w_x"]) + params["b_x"]
    W = params["conv_w"].shape[0]
    conv_out, conv_last = causal_conv(
        params["conv_w"],
        params["conv_b"],
        u,
        restarts,
        lengths,
        _history(carry.conv, W),
        _history(reset_carry.conv, W),
    )
    # A document starts at a restart from a fresh carry, or at step 0 of a fresh carry.
    first = (steps == 0) & ~restarts
    starts = jnp.where(restarts, 1.0 - reset_carry.started, 0.0)
    starts = starts + jnp.where(first, 1.0 - carry.started, 0.0)
    cell_in = jnp.concatenate([conv_out, starts[..., None].astype(conv_out.dtype)], axis=-1)
    # Restarts from a given carry that had started go back to its state; the others need no
    # reset in the scan (the document-start flag drops the state).
    live = restarts & (reset_carry.started > 0) if restart_from_carry else None
    h_final, h = unroll(
        cell, params["rg_lru"], cell_in, carry=carry.h, lengths=given_lengths, resets=live,
        reset_carry=reset_carry.h if restart_from_carry else None, options=options,
    )  # fmt: skip
    ys = precision.matmul(h * y_branch, params["w_out"]) + params["b_out"]
    ys = jnp.where(valid[..., None], ys, jnp.zeros_like(ys))
    started = jnp.where(lengths[..., None] > 0, jnp.ones_like(carry.started), carry.started)
    final = GriffinCarry(conv_last.reshape(carry.conv.shape).astype(carry.conv.dtype), h_final,
                         started)  # fmt: skip
    return final, ys


def _history(flat: Array, W: int) -> Array:
    """A carry's flat conv buffer as ``(batch..., W - 1, L)``."""
    return flat.reshape((*flat.shape[:-1], W - 1, flat.shape[-1] // max(W - 1, 1)))
