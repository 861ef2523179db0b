"""Recurrent dropout as the literature means it, as cells that wrap a cell.

* Variational dropout (Gal & Ghahramani 2016): one mask per sequence on the state that enters
  the recurrent product (``h_(t-1) @ W_hh``), the same at every step; the carried state itself
  is not masked. The input gets a mask per sequence too (``input_dropout``), also constant over
  time. Masks are scaled by ``1 / (1 - rate)`` and used only with a key.
* Zoneout (Krueger et al. 2017): at each step, each unit of the state keeps its previous value
  with probability ``rate`` instead of taking the new one, a fresh mask per step. Without a key
  the step takes the expectation, ``rate * old + (1 - rate) * new``, as the paper does at test
  time.

:func:`seqjax.rnn` builds these from its ``recurrent_dropout``, ``input_dropout`` and
``zoneout`` options. The masks reach the wrapped cells through the carry (variational: carried
unchanged) and through the inputs (zoneout: appended to each step's features), so the cells
stay pure and every unroll path runs them, seqjax's own backward pass included. The native
CPU kernels take no masks: a layer with dropout runs on the scan
(``seqjax.native.kernel_for`` finds no kernel for the wrapped recurrence).
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from seqjax.types import Carry, Cell, CombineVJP, Params, RecurSplit, split_recur

Array = jax.Array


class Dropouts(NamedTuple):
    """The rates of a recurrent layer's dropout: each in ``[0, 1)``, 0 for none."""

    recurrent: float = 0.0
    input: float = 0.0
    zoneout: float = 0.0

    @property
    def any(self) -> bool:
        return any(rate > 0 for rate in self)


class Masked(NamedTuple):
    """A carry with the variational mask of its sequence riding along, unchanged by each step."""

    carry: Carry
    mask: Carry


def variational_cell(cell: Cell) -> Cell:
    """``cell`` with its recurrent product reading ``carry * mask``; the carry is a
    :class:`Masked`. Needs ``cell.recur_split`` (the hidden product to mask)."""
    split = cell.recur_split

    def hidden_projection(params: Params, carry: Masked) -> Array:
        masked = jax.tree.map(jnp.multiply, carry.carry, carry.mask)
        return split.hidden_projection(params, masked)

    def combine(carry: Masked, px: Array, hh: Array):
        new, y = split.combine(carry.carry, px, hh)
        return Masked(new, carry.mask), y

    combine_vjp = None
    if split.combine_vjp is not None:
        inner = split.combine_vjp

        def forward(carry: Masked, px, hh):
            (new, y), residuals = inner.forward(carry.carry, px, hh)
            return (Masked(new, carry.mask), y), residuals

        def backward(carry: Masked, residuals, cotangents):
            d_new, dy = cotangents
            d_carry, d_px, d_hh = inner.backward(carry.carry, residuals, (d_new.carry, dy))
            return Masked(d_carry, d_new.mask), d_px, d_hh

        combine_vjp = CombineVJP(forward, backward)
    wrapped = RecurSplit(hidden_projection, combine, split.additive, combine_vjp)

    def initial_carry(params: Params, batch_shape: tuple[int, ...] = ()) -> Masked:
        zeros = cell.initial_carry(params, batch_shape)
        return Masked(zeros, jax.tree.map(jnp.ones_like, zeros))

    return cell._replace(
        initial_carry=initial_carry,
        recur=split_recur(wrapped),
        name=f"{cell.name} with variational dropout",
        recur_split=wrapped,
        linear=None,
    )


def zoneout_cell(cell: Cell) -> Cell:
    """``cell`` whose inputs carry each step's zoneout mask after their features (one column
    per unit of every carry leaf, 1 = keep the old value; a fraction for the expectation)."""
    split = cell.recur_split

    def mask_width(params: Params) -> int:
        return zoneout_width(cell, params)

    def project(params: Params, xs: Array) -> Array:
        k = mask_width(params)
        projected = cell.project(params, xs[..., :-k])
        return jnp.concatenate([projected, xs[..., -k:].astype(projected.dtype)], axis=-1)

    def zone(old: Carry, new: Carry, masks: Array) -> tuple[Carry, Array]:
        leaves, tree = jax.tree.flatten(new)
        kept, start = [], 0
        for o, n in zip(jax.tree.leaves(old), leaves, strict=True):
            m = masks[..., start : start + n.shape[-1]]
            kept.append(m * o + (1 - m) * n)
            start += n.shape[-1]
        zoned = jax.tree.unflatten(tree, kept)
        return zoned, hidden_output(zoned, cell)

    def recur(params: Params, carry: Carry, px: Array):
        k = mask_width(params)
        new, _ = cell.recur(params, carry, px[..., :-k])
        return zone(carry, new, px[..., -k:])

    zoned_split = None
    if split is not None:

        def combine(carry: Carry, px: Array, hh: Array):
            k = sum(leaf.shape[-1] for leaf in jax.tree.leaves(carry))
            new, _ = split.combine(carry, px[..., :-k], hh)
            return zone(carry, new, px[..., -k:])

        zoned_split = RecurSplit(split.hidden_projection, combine)
    input_size = cell.input_size
    return cell._replace(
        project=project,
        recur=recur,
        name=f"{cell.name} with zoneout",
        input_size=None if input_size is None else (lambda p: input_size(p) + mask_width(p)),
        recur_split=zoned_split,
        linear=None,
    )


def zoneout_width(cell: Cell, params: Params) -> int:
    """Columns of a step's zoneout mask: one per unit of every leaf of ``cell``'s carry."""
    carry = jax.eval_shape(lambda: cell.initial_carry(params, ()))
    return sum(leaf.shape[-1] for leaf in jax.tree.leaves(carry))


def hidden_output(carry: Carry, cell: Cell) -> Array:
    """The output of a cell whose output is its hidden state: the carry, or its ``h``."""
    h = carry if isinstance(carry, jax.Array) else getattr(carry, "h", None)
    if h is None or h.shape[-1] != cell.output_size:
        raise ValueError(
            f"rnn: zoneout keeps a unit's previous state, so the output must be the hidden state "
            f"(an array carry, or a carry with an h field, of output_size); cell {cell.name!r} has "
            f"carry {jax.tree.structure(carry)} and output_size {cell.output_size}. Use "
            "input_dropout for this cell"
        )
    return h


def check_cell(cell: Cell, dropouts: Dropouts, fn: str) -> None:
    """Whether ``cell`` can take variational recurrent dropout, with a clear error if not."""
    if dropouts.recurrent > 0 and cell.recur_split is None:
        raise ValueError(
            f"{fn}: recurrent_dropout masks the state entering the recurrent product "
            f"h @ W_hh, which cell {cell.name!r} does not declare (cell.recur_split: lstm, gru, "
            "simple_rnn, indrnn have one). Use zoneout or input_dropout for this cell"
        )


def with_masks(cell: Cell, dropouts: Dropouts) -> Cell:
    """The cell a layer with these dropouts unrolls: zoneout inside, variational outside."""
    if dropouts.zoneout > 0:
        cell = zoneout_cell(cell)
    if dropouts.recurrent > 0:
        cell = variational_cell(cell)
    return cell


def bernoulli_scaled(key: Array, rate: float, shape: tuple[int, ...], dtype) -> Array:
    """A dropout mask: 0 with probability ``rate``, else ``1 / (1 - rate)``."""
    keep = jax.random.bernoulli(key, 1.0 - rate, shape)
    return jnp.where(keep, 1.0 / (1.0 - rate), 0.0).astype(dtype)
