"""Running any cell over a whole sequence: the dispatcher over the three ways to do it.

* :mod:`seqjax.unrolling.scan`: one ``lax.scan`` of ``cell.recur``, differentiated by autodiff
  (any cell; ``remat`` as ``jax.checkpoint`` over chunks).
* :mod:`seqjax.unrolling.custom_vjp`: seqjax's own backward pass, for cells with a
  ``RecurSplit``, whose loops are scans or the native CPU kernels
  (:mod:`seqjax.unrolling.backends`), whole or chunk by chunk for ``remat``.
* :mod:`seqjax.parallel`: ``jax.lax.associative_scan`` for linear recurrences.

The options are one :class:`~seqjax.unrolling.options.UnrollOptions`; ``remat``'s chunk drivers
are :mod:`seqjax.unrolling.remat`, over the chunks of :mod:`seqjax.unrolling.segments`.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from seqjax import _checks
from seqjax import native as seqjax_native
from seqjax.parallel import parallel_scan
from seqjax.types import Carry, Cell, Params
from seqjax.unrolling import scan as plain
from seqjax.unrolling.backends import NativeLoop, ScanLoop
from seqjax.unrolling.custom_vjp import unroll_custom_vjp
from seqjax.unrolling.options import UnrollOptions, merged_options
from seqjax.unrolling.segments import chunk_size as default_chunk_size

Array = jax.Array


def unroll(
    cell: Cell,
    params: Params,
    xs: Array,
    carry: Carry | None = None,
    lengths: Array | None = None,
    reverse: bool = False,
    time_major: bool = False,
    unroll: int = 1,
    remat: bool = False,
    hoist_projection: bool | None = None,
    custom_vjp: bool | None = None,
    parallel: bool = False,
    chunk_size: int | None = None,
    native: bool | None = None,
    *,
    resets: Array | None = None,
    reset_carry: Carry | None = None,
    options: UnrollOptions | None = None,
) -> tuple[Carry, Array]:
    """Runs ``cell`` over the time axis of ``xs``.

    Args:
      cell: the cell (``seqjax.lstm(...)`` and friends).
      params: its parameters, from ``cell.init``. The computation runs in their dtype; ``xs``
        is cast to it.
      xs: inputs of shape ``(batch..., time, features)``, or ``(time, batch..., features)`` with
        ``time_major=True``. Any number of batch axes, including none.
      carry: the initial state, leaves ``(batch..., hidden)``; zeros when ``None``.
      lengths: optional integers of shape ``(batch...)`` in ``[1, time]``. Each sequence stops at
        its own length: its carry is frozen there and its outputs past it are zero.
      reverse: run from the last step to the first (each sequence from its own last step).
      time_major: time is the first axis of ``xs`` and of the outputs.
      unroll: steps per iteration of the scan loop.
      remat: recompute chunks of ~sqrt(time) steps in the backward pass instead of storing them.
      hoist_projection: project all steps at once before the loop (``None``: per backend).
      custom_vjp: use seqjax's own backward pass (``None``: whenever the cell has one).
      parallel: ``jax.lax.associative_scan`` for a linear recurrence.
      chunk_size: steps per chunk of the parallel scan.
      native: the fused CPU kernels (``None``: whenever they can run).
      resets: optional booleans shaped like ``xs`` without its feature axis (``(batch...,
        time)``, time first with ``time_major``): where true, the carry is set back to the
        initial carry (``carry``, or zeros) before that step, and no gradient flows across it
        (episode starts, packed documents). A reversed run restarts at each segment's last
        step, so every segment runs as if alone, in both directions.
      reset_carry: the carry ``resets`` restart from, when it is not the initial one: a run
        that goes on from an earlier chunk's carry but restarts each new episode from zeros
        passes ``carry=last_carry, reset_carry=cell.initial_carry(params, batch_shape)``.
      options: all of the above as one :class:`~seqjax.UnrollOptions`, where each is
        described in full (then leave the keywords out).

    Returns:
      ``(final_carry, ys)``: the carry after each sequence's last step (for ``reverse``, after
      its first), and outputs ``(batch..., time, output_size)`` (time first if ``time_major``).
    """
    fn = "unroll"
    keywords = dict(
        reverse=reverse, time_major=time_major, unroll=unroll, remat=remat,
        hoist_projection=hoist_projection, custom_vjp=custom_vjp, parallel=parallel,
        chunk_size=chunk_size, native=native,
    )  # fmt: skip
    _checks.check_cell(cell, fn)
    xs = _checks.check_array(xs, "xs", fn, min_rank=2)
    options = merged_options(options, keywords, fn)
    options.check_cell(cell, fn)
    time_axis = 0 if options.time_major else xs.ndim - 2
    carry, lengths, xs = _checked_inputs(cell, params, xs, carry, lengths, time_axis, fn)
    if resets is not None:
        resets = _checks.check_resets(resets, xs.shape[:-1], fn, options.time_major)
        resets = _restart_flags(resets, lengths, time_axis, options.reverse)
    batch_shape = xs.shape[1:-1] if time_axis == 0 else xs.shape[:-2]
    reset_carry = _checked_reset_carry(cell, params, reset_carry, resets, batch_shape, fn)
    if options.custom_vjp is None and not options.parallel and cell.recur_split is not None:
        options = options.replace(custom_vjp=True)
    if options.hoist_projection is None:
        options = options.replace(hoist_projection=_hoist_by_default(cell, params, xs, time_axis))
    if options.custom_vjp:  # works in the caller's layout: no time-major copies of long sequences
        return _unroll_custom_vjp(
            cell, params, xs, carry, lengths, (resets, reset_carry), time_axis, options, fn
        )
    return _unroll_autodiff(
        cell, params, xs, carry, lengths, (resets, reset_carry), time_axis, options
    )


def _checked_reset_carry(cell, params, reset_carry, resets, batch_shape, fn):
    """``reset_carry``, checked like ``carry``; it needs ``resets``."""
    if reset_carry is None:
        return None
    if resets is None:
        raise ValueError(
            f"{fn}: reset_carry is the carry resets restart from, but no resets were given; "
            "pass resets=, or leave out reset_carry"
        )
    _checks.check_carry(cell, params, reset_carry, batch_shape, fn, "reset_carry")
    return reset_carry


def _restart_flags(resets: Array, lengths: Array | None, time_axis: int, reverse: bool) -> Array:
    """Where a run restarts, in the order it visits the steps: a reversed run meets each
    segment's last step first, so it restarts before step t when step t + 1 starts a segment.
    Only valid steps restart (a masked step keeps the carry)."""
    num_steps = resets.shape[time_axis]
    if reverse:
        later = jax.lax.slice_in_dim(resets, 1, num_steps, axis=time_axis)
        none = jnp.zeros_like(jax.lax.slice_in_dim(resets, 0, 1, axis=time_axis))
        resets = jnp.concatenate([later, none], axis=time_axis)
    if lengths is None:
        return resets
    steps = jnp.arange(num_steps)
    if time_axis == 0:
        return resets & (steps.reshape((-1,) + (1,) * lengths.ndim) < lengths)
    return resets & (steps < lengths[..., None])


def _checked_inputs(cell, params, xs, carry, lengths, time_axis, fn):
    """``(carry, lengths, xs)`` checked against the cell and its params, ``xs`` cast to the
    params' dtype, the carry zeros if ``None``."""
    num_steps = xs.shape[time_axis]
    if num_steps == 0:
        raise ValueError(
            f"{fn}: xs has an empty time axis (shape {xs.shape}); need at least 1 step"
        )
    layout = "(time, batch..., {d})" if time_axis == 0 else "(batch..., time, {d})"
    dtype = _checks.params_dtype(params, fn)
    _checks.check_features(xs, _checks.expected_input_size(cell, params, fn), "xs", fn, layout)
    batch_shape = xs.shape[1:-1] if time_axis == 0 else xs.shape[:-2]
    lengths = _checks.check_lengths(lengths, batch_shape, num_steps, fn)
    carry = _checks.checked_carry(cell, params, carry, xs, batch_shape, dtype, fn)
    return carry, lengths, xs.astype(dtype)


def _unroll_custom_vjp(cell, params, xs, carry, lengths, restarts, time_axis, options, fn):
    resets, reset_carry = restarts
    kernel = _use_native(options.native, cell, params, xs, True, False, fn)
    if kernel is not None:
        loops = NativeLoop(kernel, options.reverse)
    else:
        loops = ScanLoop.of(cell, options.reverse, options.unroll, options.hoist_projection)
    try:
        return unroll_custom_vjp(
            loops, params, xs, time_axis, carry, lengths, options.reverse, options.remat, resets,
            reset_carry,
        )  # fmt: skip
    except TypeError as err:
        if "forward-mode" not in str(err):
            raise
        raise TypeError(
            f"{fn}: forward-mode differentiation (jax.jvp, jax.jacfwd, jax.hessian) cannot go "
            "through seqjax's own backward pass, which is reverse-mode only. Pass "
            "custom_vjp=False to unroll (or to seqjax.rnn or the seqjax.nn module that calls "
            "it) to differentiate plain autodiff of the scan instead: same numbers"
        ) from err


def _unroll_autodiff(cell, params, xs, carry, lengths, restarts, time_axis, options):
    """The scan or the parallel scan, time-major inside, differentiated by autodiff."""
    resets, reset_carry = restarts
    _use_native(options.native, cell, params, xs, False, options.parallel, "unroll")
    xs_tm = jnp.moveaxis(xs, time_axis, 0)  # (time, batch..., features)
    resets = None if resets is None else jnp.moveaxis(resets, time_axis, 0)
    if options.parallel and cell.linear is None:  # whole-sequence forms (the mLSTM)
        carry, ys = _run_sequence_forms(cell, params, xs_tm, carry, lengths, resets, reset_carry,
                                        options)  # fmt: skip
    elif options.parallel:
        chunk = options.chunk_size
        if options.remat and chunk is None:
            chunk = default_chunk_size(xs_tm.shape[0])
        carry, ys = parallel_scan(
            cell, params, xs_tm, carry, lengths, options.reverse, chunk, options.remat, resets,
            reset_carry,
        )  # fmt: skip
    else:
        carry, ys = plain.scan(
            cell, params, xs_tm, carry, lengths, options.reverse, options.unroll,
            options.remat, options.hoist_projection, resets, reset_carry,
        )  # fmt: skip
    return carry, jnp.moveaxis(ys, 0, time_axis)


def _run_sequence_forms(cell, params, xs, carry, lengths, resets, reset_carry, options):
    """``cell.sequence.run`` on time-major ``xs``: a reversed run visits the steps last to
    first, so the inputs, masks and resets are flipped on the way in and the outputs on the way
    out (steps past a length then come first, and leave the state as it is)."""
    valid = None
    if lengths is not None:
        steps = jnp.arange(xs.shape[0]).reshape((-1,) + (1,) * lengths.ndim)
        valid = steps < lengths
    if options.reverse:
        xs, valid, resets = (None if a is None else jnp.flip(a, 0) for a in (xs, valid, resets))
    carry, ys = cell.sequence.run(
        params, xs, carry, chunk_size=options.chunk_size, valid=valid, resets=resets,
        restart_carry=reset_carry, remat=options.remat,
    )  # fmt: skip
    return carry, (jnp.flip(ys, 0) if options.reverse else ys)


def _use_native(
    native: bool | None,
    cell: Cell,
    params: Params,
    xs: Array,
    custom_vjp: bool,
    parallel: bool,
    fn: str,
) -> str | None:
    """The :mod:`seqjax.native` kernel to run, or ``None`` for ``lax.scan``. Resets do not
    matter here: the kernels restart the carry themselves."""
    if native is False:
        return None
    kernel = seqjax_native.kernel_for(cell.recur_split)
    if kernel is not None and (parallel or not custom_vjp):
        reason = "it runs inside seqjax's own backward pass: custom_vjp=False or parallel=True"
    else:
        reason = seqjax_native.unsupported_reason(kernel, params, xs)
    if reason is None:
        return kernel
    if native:
        raise ValueError(f"{fn}: native=True, but the native kernel cannot run: {reason}")
    return None


def _hoist_by_default(cell: Cell, params: Params, xs: Array, time_axis: int) -> bool:
    """Whether to project all steps before the scan when the caller does not say.

    On GPU/TPU, always. On CPU, only for a cell whose step uses its projected input whole
    (projected size = output size: the Elman RNN, the IndRNN): it then saves the step's
    input matmul (``python -m benchmarks.cpu_findings`` measures it). A gated
    cell slices gate blocks out of each step's slice of the projected buffer, and XLA:CPU
    runs elementwise code that does that ~2.5x slower, so its projection stays in the step.
    """
    if jax.default_backend() != "cpu":
        return True
    one_step = jax.ShapeDtypeStruct(xs.shape[:time_axis] + xs.shape[time_axis + 1 :], xs.dtype)
    projected = jax.eval_shape(cell.project, params, one_step)
    return projected.shape[-1] == cell.output_size
