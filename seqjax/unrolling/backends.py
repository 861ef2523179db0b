"""The two loops of seqjax's own backward pass, behind one protocol: a forward loop that can
keep each step's residuals, and a reverse loop that consumes them and returns the gradients.
``ScanLoop`` runs them as ``lax.scan``; ``NativeLoop`` as the fused CPU kernels of
:mod:`seqjax.native`. :mod:`seqjax.unrolling.custom_vjp` drives either, whole or chunk by chunk.
"""

from __future__ import annotations

from typing import Any, NamedTuple, Protocol

import jax
import jax.numpy as jnp

from seqjax import native as seqjax_native
from seqjax.types import Carry, Cell, CombineVJP, Params, RecurSplit
from seqjax.unrolling.scan import as_rows, keep_valid, project_all, where

Array = jax.Array


class LoopBackend(Protocol):
    """The loops over steps ``steps`` (a run of consecutive step indices) of a sequence.

    ``xs``, ``ys`` and their cotangents are time-major, or with ``batch_major`` (only where
    ``takes_batch_major``) ``(batch..., T, .)``; ``lengths`` is ``None`` without lengths.
    ``restarts`` (where ``takes_restarts``) is ``None`` or a :class:`Restarts`: the carry is
    set back to ``restarts.carry`` before each flagged step, and ``backward`` then also
    returns the gradient that reaches that carry through the restarts.
    """

    takes_batch_major: bool
    takes_restarts: bool

    def weights(self, params: Params) -> Any:
        """What the loops read of ``params`` in a layout of their own, made once per call,
        outside any loop over chunks (XLA does not hoist it out of one)."""

    def forward(
        self, params, weights, xs, carry, steps, lengths, keep, batch_major=False, restarts=None
    ) -> tuple[Carry, tuple[Array, Any]]:
        """``(final_carry, (ys, saved))``; ``saved`` (with ``keep``) is what ``backward``
        needs: each step's input carry and residuals."""

    def backward(
        self, params, weights, xs, d_carry, steps, lengths, saved, d_ys, batch_major=False,
        restarts=None,
    ) -> tuple:  # fmt: skip
        """The reverse loop from ``d_carry``, then the weight and input gradients:
        ``(d_carry_at_start, d_params, d_xs)``, and with ``restarts`` also the gradient of
        ``restarts.carry``."""


class Restarts(NamedTuple):
    """Where the carry starts again: ``flags`` booleans in the loops' layout of ``xs`` without
    its features (``(steps, batch...)``, or ``(batch..., steps)`` for loops that take
    ``batch_major``), already masked to valid steps and shifted for a reversed run, and the
    carry it starts from."""

    flags: Array
    carry: Carry


def restart(carry: Carry, restarts: Restarts | None, flag: Array | None) -> Carry:
    """``carry``, or ``restarts.carry`` where ``flag`` (one step's flags) is set."""
    if restarts is None:
        return carry
    return jax.tree.map(lambda c0, c: where(flag, c0, c), restarts.carry, carry)


class ScanLoop(NamedTuple):
    """Both loops as ``lax.scan`` over the cell's ``RecurSplit``: the reverse loop runs only
    ``combine``'s VJP and ``dh = dhh @ W_hh^T``; the weight gradients are matmuls after it."""

    cell: Cell
    combine_vjp: CombineVJP  # one object for both loops: the autodiff one keeps state
    reverse: bool
    unroll: int
    hoist_projection: bool
    takes_batch_major: bool = False
    takes_restarts: bool = True

    @classmethod
    def of(cls, cell: Cell, reverse: bool, unroll: int, hoist_projection: bool) -> ScanLoop:
        split = cell.recur_split
        vjp = split.combine_vjp or autodiff_combine_vjp(split)
        return cls(cell, vjp, reverse, unroll, hoist_projection)

    def weights(self, params: Params) -> Params:
        return transposed_matrices(params)

    def forward(
        self, params, weights, xs, carry, steps, lengths, keep, batch_major=False, restarts=None
    ):
        del weights, batch_major
        split = self.cell.recur_split
        combine_forward = self.combine_vjp.forward
        project = self.cell.project
        inputs = project_all(project, params, xs) if self.hoist_projection else xs
        flags = None if restarts is None else restarts.flags

        def body(carry, inp):
            t, x_t, flag = inp
            carry = restart(carry, restarts, flag)
            px = x_t if self.hoist_projection else project(params, x_t)
            out, residuals = combine_forward(carry, px, split.hidden_projection(params, carry))
            out = keep_valid(out, carry, None if lengths is None else t < lengths)
            return out[0], (out[1], (carry, residuals) if keep else None)

        return jax.lax.scan(
            body, carry, (steps, inputs, flags), reverse=self.reverse, unroll=self.unroll
        )

    def backward(
        self, params, weights, xs, d_carry, steps, lengths, saved, d_ys, batch_major=False,
        restarts=None,
    ):  # fmt: skip
        del batch_major
        split = self.cell.recur_split
        combine_backward = self.combine_vjp.backward
        carries, step_residuals = saved
        flags = None if restarts is None else restarts.flags

        def body(state, inp):
            d_carry, d_restart = state
            t, carry, step_residuals, dy, flag = inp
            d_carry_in, dpx, dhh = combine_backward(carry, step_residuals, (d_carry, dy))
            if lengths is not None:  # a masked step passed its carry on and emitted a constant
                ok = t < lengths
                d_carry_in = jax.tree.map(lambda a, b: where(ok, a, b), d_carry_in, d_carry)
                dpx, dhh = (where(ok, d, jnp.zeros_like(d)) for d in (dpx, dhh))
            loop_params = transposed_matrices(weights)  # a view XLA folds into the dot
            _, hidden_vjp = jax.vjp(lambda c: split.hidden_projection(loop_params, c), carry)
            (d_carry_via_hh,) = hidden_vjp(dhh)
            d_carry_in = jax.tree.map(jnp.add, d_carry_in, d_carry_via_hh)
            if restarts is not None:  # a restarted step read restarts.carry, not the last one
                d_restart = jax.tree.map(
                    lambda acc, d: acc + where(flag, d, jnp.zeros_like(d)), d_restart, d_carry_in
                )
                d_carry_in = jax.tree.map(lambda d: where(flag, jnp.zeros_like(d), d), d_carry_in)
            return (d_carry_in, d_restart), (dhh if split.additive else (dpx, dhh))

        d_restart = None if restarts is None else jax.tree.map(jnp.zeros_like, restarts.carry)
        (d_carry, d_restart), d_gates = jax.lax.scan(
            body, (d_carry, d_restart), (steps, carries, step_residuals, d_ys, flags),
            reverse=not self.reverse,
        )  # fmt: skip
        dpxs, dhhs = (d_gates, d_gates) if split.additive else d_gates
        grads = weight_and_input_gradients(self.cell, params, xs, carries, dpxs, dhhs)
        return (d_carry, *grads) if restarts is None else (d_carry, *grads, d_restart)


class NativeLoop(NamedTuple):
    """Both loops as the two custom calls of a :mod:`seqjax.native` kernel; with ``restarts``,
    the kernels' restarting variants, which set the carry back in the loop itself. The flags
    come in the layout of ``xs`` (batch-major where the loops are), as the kernels read them."""

    kernel: str
    reverse: bool
    takes_batch_major: bool = True
    takes_restarts: bool = True

    def weights(self, params: Params) -> seqjax_native.Weights:
        return seqjax_native.pack_weights(self.kernel, params)

    def forward(
        self, params, weights, xs, carry, steps, lengths, keep, batch_major=False, restarts=None
    ):
        final, ys, saved = seqjax_native.forward(
            self.kernel, params, weights, xs, carry, steps[0], lengths, self.reverse, keep,
            batch_major, restarts,
        )  # fmt: skip
        return final, (ys, saved)

    def backward(
        self, params, weights, xs, d_carry, steps, lengths, saved, d_ys, batch_major=False,
        restarts=None,
    ):  # fmt: skip
        return seqjax_native.backward(
            self.kernel, params, weights, xs, saved, d_carry, d_ys, steps[0], lengths,
            self.reverse, batch_major, restarts,
        )  # fmt: skip


def weight_and_input_gradients(cell: Cell, params, xs, carries, dpxs, dhhs):
    """``(d_params, d_xs)`` from every step's input carry and gate gradients at once.

    The weight gradients are 2-D matmuls over (time x batch) rows: XLA:CPU runs those faster
    than the same contraction written over separate time and batch axes.
    """
    hidden_projection = cell.recur_split.hidden_projection
    rows = jax.tree.map(as_rows, carries)
    _, hidden_vjp = jax.vjp(lambda p: hidden_projection(p, rows), params)
    (d_params,) = hidden_vjp(as_rows(dhhs))
    _, project_vjp = jax.vjp(cell.project, params, as_rows(xs))
    d_params_proj, d_xs = project_vjp(as_rows(dpxs))
    return jax.tree.map(jnp.add, d_params, d_params_proj), d_xs.reshape(xs.shape)


def transposed_matrices(params: Params) -> Params:
    """``params`` with every matrix transposed.

    The reverse loop computes ``dh = dhh @ W_hh^T``. Written as ``jax.vjp`` of ``h @ W_hh``
    it multiplies by ``W_hh`` contracted on its last axis, which XLA:CPU runs 7-20% slower
    than a product with a row-major ``W_hh^T``. So the loop gets a transposed copy made once
    before it, and transposes it back inside the step: XLA folds that second transpose into
    the dot, which then reads the copy row by row.
    """
    return jax.tree.map(lambda w: w.T if w.ndim == 2 else w, params)


def autodiff_combine_vjp(split: RecurSplit) -> CombineVJP:
    """A ``CombineVJP`` from ``jax.vjp`` of ``combine``, for splits that bring none: the
    residuals are the leaves of the VJP closure."""
    tree = [None]  # the closure's structure, set when the forward pass is traced

    def forward(carry, px, hh):
        out, step_vjp = jax.vjp(split.combine, carry, px, hh)
        residuals, tree[0] = jax.tree.flatten(step_vjp)
        return out, residuals

    def backward(carry, residuals, d_out):
        del carry
        return jax.tree.unflatten(tree[0], residuals)(d_out)

    return CombineVJP(forward, backward)
