"""Running any cell over a whole sequence: one ``lax.scan``, for every cell and every option."""

from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from seqjax import _checks
from seqjax import native as seqjax_native
from seqjax.cell import Carry, Cell, CombineVJP, Params, RecurSplit
from seqjax.parallel import parallel_scan

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
      reverse: run from the last step to the first. With ``lengths``, each sequence starts at its
        own last valid step (PyTorch's packed-sequence semantics); outputs stay aligned with
        the inputs.
      time_major: whether time is the first axis of ``xs`` and of the outputs.
      unroll: how many steps one iteration of the scan loop runs (``lax.scan``'s ``unroll``).
      remat: keep the carry only every ~sqrt(time) steps for the backward pass and recompute
        the steps in between (with ``custom_vjp``, chunk by chunk in seqjax's own backward
        pass; otherwise ``jax.checkpoint`` over chunks): memory grows with sqrt(time) instead of
        time, for about one more forward pass.
      hoist_projection: apply ``cell.project`` to all steps at once before the scan (one large
        matmul, a ``(time, batch..., P)`` buffer) instead of inside each step. ``None`` picks:
        hoisted on GPU/TPU; on CPU hoisted only for cells that use the projection whole
        (P = output size: the Elman RNN, the IndRNN), and inside the step for gated cells,
        where it measured faster and lighter. Both give the same numbers up to float round-off.
      custom_vjp: differentiate with seqjax's own backward pass, which runs only the cheap
        part of each step in the reverse loop and computes the weight gradients as a few large
        matmuls after it (cells with a ``recur_split``: the built-in RNN, LSTM and GRU); with
        ``remat``, chunk by chunk. ``None`` uses it whenever the cell allows. Its gradients
        equal plain autodiff's; like any ``jax.custom_vjp`` it supports reverse mode only, so pass
        ``custom_vjp=False`` for forward-mode derivatives (``jax.jvp``, ``jax.jacfwd``).
      parallel: for a cell whose state evolves linearly (``cell.linear``: ``min_gru``,
        ``min_lstm``, ``lru``), compute all steps at once with ``jax.lax.associative_scan``
        (O(log T) depth; see :mod:`seqjax.parallel`). Same numbers as the sequential scan up
        to float round-off, with ``lengths``, ``reverse`` and ``carry`` alike.
      chunk_size: with ``parallel``, run the parallel scan on chunks of this many steps, one
        chunk after another (memory per chunk instead of per sequence; with ``remat``, each
        chunk is recomputed in the backward pass). ``None``: one chunk, or ~sqrt(T) with remat.
      native: run the forward loop and the reverse loop of the custom VJP as fused CPU kernels
        (:mod:`seqjax.native`: each step's matmul and activations in one pass, on all cores),
        for cells that have one (the built-in LSTM, GRU and Elman RNN), on the CPU, in float32.
        ``None`` uses them whenever that holds and they could be built (they are compiled on
        first use with the system's C++ compiler); ``True`` raises if they cannot run, saying
        why. Same numbers as the scan up to float round-off; ``unroll`` does not apply to them.

    Returns:
      ``(final_carry, ys)``: the carry after each sequence's last step (for ``reverse``, after
      its first), and outputs ``(batch..., time, output_size)`` (time first if ``time_major``).
    """
    fn = "unroll"
    _checks.check_cell(cell, fn)
    xs = _checks.check_array(xs, "xs", fn, min_rank=2)
    options = dict(
        reverse=reverse, time_major=time_major, unroll=unroll, remat=remat,
        hoist_projection=hoist_projection, custom_vjp=custom_vjp, parallel=parallel,
        chunk_size=chunk_size, native=native,
    )  # fmt: skip
    (reverse, time_major, unroll, remat, hoist_projection, custom_vjp, parallel, chunk_size,
     native) = _checks.check_unroll_options(options, tuple(options), fn).values()  # fmt: skip
    if custom_vjp and cell.recur_split is None:
        raise ValueError(
            f"{fn}: custom_vjp=True needs a cell with a recur_split; cell {cell.name!r} has "
            "none. Pass custom_vjp=None to use plain autodiff for it"
        )
    if chunk_size is not None and not parallel:
        raise ValueError(f"{fn}: chunk_size applies to parallel=True only; got parallel=False")
    if parallel:
        _checks.check_parallel(cell, fn)
    if parallel and custom_vjp:
        raise ValueError(f"{fn}: custom_vjp=True does not apply to parallel=True")

    time_axis = 0 if time_major else xs.ndim - 2
    num_steps = xs.shape[time_axis]
    layout = "(time, batch..., {d})" if time_major else "(batch..., time, {d})"
    if num_steps == 0:
        raise ValueError(
            f"{fn}: xs has an empty time axis (shape {xs.shape}); need at least 1 step"
        )
    dtype = _checks.params_dtype(params, fn)
    expected = _checks.expected_input_size(cell, params, fn)
    _checks.check_features(xs, expected, "xs", fn, layout)

    batch_shape = xs.shape[1:-1] if time_major else xs.shape[:-2]
    lengths = _checks.check_lengths(lengths, batch_shape, num_steps, fn)
    carry = _checks.checked_carry(cell, params, carry, xs, batch_shape, dtype, fn)

    xs = xs.astype(dtype)
    if hoist_projection is None:
        hoist_projection = _hoist_by_default(cell, params, xs, time_axis)
    if custom_vjp is None:
        custom_vjp = cell.recur_split is not None and not parallel
    native = _use_native(native, cell, params, xs, custom_vjp, parallel, fn)
    if custom_vjp:  # works in the caller's layout: no time-major copies of long sequences
        try:
            return _scan_custom_vjp(
                cell, params, xs, time_axis, carry, lengths, reverse, unroll, remat,
                hoist_projection, native,
            )  # fmt: skip
        except TypeError as err:
            if "forward-mode" not in str(err):
                raise
            raise TypeError(
                f"{fn}: forward-mode differentiation (jax.jvp, jax.jacfwd, jax.hessian) cannot go "
                "through seqjax's own backward pass, which is reverse-mode only. Pass "
                "custom_vjp=False to unroll (or to the layer or module that calls it) to "
                "differentiate plain autodiff of the scan instead: same numbers"
            ) from err
    xs_tm = jnp.moveaxis(xs, time_axis, 0)  # (time, batch..., features)
    if parallel:
        if remat and chunk_size is None:
            chunk_size = _chunk_size(num_steps)
        carry, ys = parallel_scan(cell, params, xs_tm, carry, lengths, reverse, chunk_size, remat)
    else:
        carry, ys = _scan(
            cell, params, xs_tm, carry, lengths, reverse, unroll, remat, hoist_projection
        )
    return carry, jnp.moveaxis(ys, 0, time_axis)


def _use_native(
    native: bool | None,
    cell: Cell,
    params: Params,
    xs: Array,
    custom_vjp: bool,
    parallel: bool,
    fn: str,
) -> str | None:
    """The :mod:`seqjax.native` kernel to run, or ``None`` for ``lax.scan``."""
    if native is False:
        return None
    kernel = cell.recur_split.native if cell.recur_split is not None else None
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


def _scan(
    cell: Cell,
    params: Params,
    xs: Array,
    carry: Carry,
    lengths: Array | None,
    reverse: bool,
    unroll: int,
    remat: bool,
    hoist_projection: bool,
) -> tuple[Carry, Array]:
    """The one scan. ``xs`` is time-major ``(time, batch..., features)``.

    ``lengths`` become a mask ``t < length``: a masked step keeps the carry and emits zeros.
    Running forward, that freezes each sequence at its end; running in reverse, it makes each
    sequence start from its own last valid step, with no flipping of the data.
    """
    inputs = _project_all(cell.project, params, xs) if hoist_projection else xs
    steps = jnp.arange(xs.shape[0])

    def body(carry: Carry, inp: tuple[Array, Array]) -> tuple[Carry, Array]:
        t, x_t = inp
        projected = x_t if hoist_projection else cell.project(params, x_t)
        return _mask(cell.recur(params, carry, projected), carry, t, lengths)

    if not remat:
        return jax.lax.scan(body, carry, (steps, inputs), reverse=reverse, unroll=unroll)
    return _chunked_remat_scan(body, carry, steps, inputs, reverse, unroll)


def _chunked_remat_scan(body, carry, steps, inputs, reverse, unroll):
    """``lax.scan(body, ...)`` that keeps the carry only every ~sqrt(T) steps for the backward
    pass, and recomputes each chunk of steps from its first carry when it is needed.

    Each chunk, a scan over its steps, is ``jax.checkpoint``-ed: the backward pass then holds
    ~sqrt(T) chunk carries plus one chunk's intermediates, instead of every step's, at the
    price of one more forward pass.
    """
    chunks = _Segments(steps.shape[0], _chunk_size(steps.shape[0]), 0, reverse)

    @jax.checkpoint
    def run_chunk(carry, chunk_inputs):
        return jax.lax.scan(body, carry, chunk_inputs, reverse=reverse, unroll=unroll)

    carry, ys = chunks.visit(
        lambda carry, start, size, chunk_inputs: run_chunk(carry, chunk_inputs),
        carry, chunks.split((steps, inputs)),
    )  # fmt: skip
    return carry, chunks.join(ys)


def _chunk_size(num_steps: int) -> int:
    """A chunk length near sqrt(T), preferring one that divides T (no tail chunk) but never 1
    for T > 1 (one step a chunk would store every carry)."""
    root = math.sqrt(num_steps)
    divisors = [d for d in range(max(2, int(root / 2)), int(2 * root) + 1) if num_steps % d == 0]
    return min(divisors, key=lambda d: abs(d - root)) if divisors else max(1, round(root))


def _scan_custom_vjp(
    cell: Cell,
    params: Params,
    xs: Array,
    time_axis: int,
    carry: Carry,
    lengths: Array | None,
    reverse: bool,
    unroll: int,
    remat: bool,
    hoist_projection: bool,
    native: str | None = None,
) -> tuple[Carry, Array]:
    """``_scan`` with a backward pass of its own, for cells with a ``recur_split``. ``xs`` and
    the outputs are in the caller's layout, with time on ``time_axis``.

    Autodiff of ``lax.scan`` accumulates each weight gradient inside the reverse loop as a thin
    rank-batch update per step. Here the forward pass keeps each step's input carry and the
    residuals of ``combine``'s VJP (its activations, so nothing is recomputed); the reverse loop
    runs only that VJP and ``dh = dhh_t @ W_hh^T``, and emits ``dpx_t`` and ``dhh_t`` (one
    array when the split is ``additive``: then they are equal). After it, the VJPs of
    ``hidden_projection`` and ``project`` over all steps at once give ``dW_hh``, ``dW_ih``, the
    biases and ``dxs`` as single large matmuls (a contraction over time and batch).

    With ``remat``, the forward pass keeps only the carry at the start of each chunk of ~sqrt(T)
    steps. The backward pass takes the chunks in the opposite order to the recurrence: it
    reruns a chunk's forward steps (keeping their residuals), runs the reverse loop over it, and
    adds the chunk's weight gradients as matmuls over its (chunk x batch) rows; memory holds
    one chunk's residuals.
    Chunks are sliced from, and written into, arrays in the caller's layout, so no whole
    sequence is ever copied to time-major: a chunk of ~sqrt(T) steps at a time is.

    With ``native`` (a :mod:`seqjax.native` kernel name), the forward and reverse loops over a
    chunk (or the sequence) are that kernel's two custom calls instead of scans.
    """
    project = cell.project
    split = cell.recur_split
    hidden_projection, additive = split.hidden_projection, split.additive
    combine_forward, combine_backward = split.combine_vjp or _autodiff_combine_vjp(split)
    num_steps = xs.shape[time_axis]
    has_lengths = lengths is not None
    if lengths is None:
        lengths = jnp.zeros((), jnp.int32)  # unused; keeps one signature for custom_vjp

    def valid(t, lengths):
        """Whether step ``t`` runs (``None``: every step does)."""
        return t < lengths if has_lengths else None

    def loop_weights(params):
        """What the loops read of the params in a layout of their own, made once per call of
        ``run``, outside any loop over chunks (XLA does not hoist it out of one): ``W_hh``
        packed for the native kernels, or for the scan's reverse loop every matrix transposed.
        """
        if native:
            return seqjax_native.pack_weights(native, params)
        return _transposed_matrices(params)

    def run_steps(params, weights, xs, carry, steps, lengths, keep, batch_major=False):
        """The forward loop over ``steps`` (``xs`` time-major, or with ``batch_major``, which
        only the native kernels take, ``(batch..., T, D)``); with ``keep``, also each step's
        input carry and residuals."""
        if native:
            final, ys, saved = seqjax_native.forward(
                native, params, weights, xs, carry, steps[0],
                lengths if has_lengths else None, reverse, keep, batch_major,
            )  # fmt: skip
            return final, (ys, saved)
        inputs = _project_all(project, params, xs) if hoist_projection else xs

        def body(carry, inp):
            t, x_t = inp
            px = x_t if hoist_projection else project(params, x_t)
            out, residuals = combine_forward(carry, px, hidden_projection(params, carry))
            out = _keep_valid(out, carry, valid(t, lengths))
            return out[0], (out[1], (carry, residuals) if keep else None)

        return jax.lax.scan(body, carry, (steps, inputs), reverse=reverse, unroll=unroll)

    def backward_steps(
        params, weights, xs, d_carry, steps, lengths, saved, d_ys, batch_major=False
    ):
        """The reverse loop over ``steps`` (all time-major, or all in the layout ``run_steps``
        had), then their weight and input gradients."""
        if native:
            return seqjax_native.backward(
                native, params, weights, xs, saved, d_carry, d_ys, steps[0],
                lengths if has_lengths else None, reverse, batch_major,
            )  # fmt: skip
        carries, step_residuals = saved

        def body(d_carry, inp):
            t, carry, step_residuals, dy = inp
            d_carry_in, dpx, dhh = combine_backward(carry, step_residuals, (d_carry, dy))
            ok = valid(t, lengths)
            if ok is not None:  # a masked step passed its carry through and emitted a constant
                d_carry_in = jax.tree.map(lambda a, b: _where(ok, a, b), d_carry_in, d_carry)
                dpx, dhh = (_where(ok, d, jnp.zeros_like(d)) for d in (dpx, dhh))
            loop_params = _transposed_matrices(weights)  # a view XLA folds into the dot
            _, hidden_vjp = jax.vjp(lambda c: hidden_projection(loop_params, c), carry)
            (d_carry_via_hh,) = hidden_vjp(dhh)
            d_carry_in = jax.tree.map(jnp.add, d_carry_in, d_carry_via_hh)
            return d_carry_in, (dhh if additive else (dpx, dhh))

        d_carry, d_gates = jax.lax.scan(
            body, d_carry, (steps, carries, step_residuals, d_ys), reverse=not reverse
        )
        dpxs, dhhs = (d_gates, d_gates) if additive else d_gates
        # The weight gradients as 2-D matmuls over (time x batch) rows: XLA:CPU runs those
        # faster than the same contraction written over separate time and batch axes.
        rows = jax.tree.map(_as_rows, carries)
        _, hidden_vjp = jax.vjp(lambda p: hidden_projection(p, rows), params)
        (d_params,) = hidden_vjp(_as_rows(dhhs))
        _, project_vjp = jax.vjp(project, params, _as_rows(xs))
        d_params_proj, d_xs = project_vjp(_as_rows(dpxs))
        d_params = jax.tree.map(jnp.add, d_params, d_params_proj)
        return d_carry, d_params, d_xs.reshape(xs.shape)

    chunks = _Segments(num_steps, _chunk_size(num_steps), time_axis, reverse)
    # The native kernels read and write (batch..., T, .) arrays as they are: no time-major
    # copies of the inputs, outputs and their gradients (chunks for remat stay time-major).
    batch_major = bool(native) and 0 < time_axis == xs.ndim - 2

    def loop_layout(a):
        """A whole sequence in the layout the loops take it in."""
        return a if batch_major else _time_major(a, time_axis)

    def caller_layout(a):
        return a if batch_major else jnp.moveaxis(a, 0, time_axis)

    def forward(params, xs, carry, lengths, keep):
        """``((final_carry, ys), saved)``: with ``keep``, the inputs in the loops' layout and
        every step's residuals, or with ``remat`` only the carry at the start of each chunk;
        without ``keep``, nothing."""
        weights = loop_weights(params)
        if not (keep and remat):
            xs_loop = loop_layout(xs)
            final, (ys, saved) = run_steps(
                params, weights, xs_loop, carry, jnp.arange(num_steps), lengths, keep,
                batch_major,
            )  # fmt: skip
            return (final, caller_layout(ys)), (xs_loop, saved) if keep else None

        def forward_chunk(state, start, size, _):
            carry, ys = state
            steps = start + jnp.arange(size)
            new_carry, (ys_chunk, _) = run_steps(
                params, weights, chunks.take(xs, start, size), carry, steps, lengths, keep=False
            )
            return (new_carry, chunks.put(ys, ys_chunk, start)), carry

        first_y = jax.eval_shape(
            lambda: run_steps(
                params, weights, chunks.take(xs, 0, 1), carry, jnp.arange(1), lengths, False
            )
        )[1][0]
        ys = jnp.zeros((*xs.shape[:-1], first_y.shape[-1]), first_y.dtype)
        (final, ys), starts = chunks.visit(forward_chunk, (carry, ys))
        return (final, ys), starts

    @jax.custom_vjp
    def run(params, xs, carry, lengths):
        return forward(params, xs, carry, lengths, keep=False)[0]  # not differentiated

    def run_fwd(params, xs, carry, lengths):
        out, saved = forward(params, xs, carry, lengths, keep=True)
        return out, (params, xs if remat else None, lengths, saved)

    def run_bwd(residuals, cotangents):
        params, xs, lengths, saved = residuals
        d_final, d_ys = cotangents
        d_lengths = np.zeros(np.shape(lengths), jax.dtypes.float0)
        weights = loop_weights(params)
        if not remat:  # steps made here: the backward pass must close over no tracer
            steps = jnp.arange(num_steps)
            xs_loop, step_saved = saved  # the forward pass's copy (if any), not a second one
            d_carry0, d_params, d_xs = backward_steps(
                params, weights, xs_loop, d_final, steps, lengths, step_saved,
                loop_layout(d_ys), batch_major,
            )  # fmt: skip
            return d_params, caller_layout(d_xs), d_carry0, d_lengths

        # Every chunk reads its d_ys before it writes its d_xs, and the chunks cover every
        # step once: when the shapes agree (stacked layers: input size = hidden size), the
        # loop state starts as d_ys and each chunk swaps its d_ys for its d_xs in place, so
        # the backward pass holds one such sequence instead of two (d_ys is read from the
        # state, never from the original, which would force XLA to keep a copy).
        reuse = d_ys.shape == xs.shape and d_ys.dtype == xs.dtype

        def backward_chunk(state, start, size, start_carry):
            d_carry, d_params, d_xs = state
            steps = start + jnp.arange(size)
            xs_chunk = chunks.take(xs, start, size)
            _, (_, chunk_saved) = run_steps(
                params, weights, xs_chunk, start_carry, steps, lengths, keep=True
            )
            # With reuse, this chunk's d_ys is still in the state: no earlier chunk wrote here.
            d_ys_chunk = chunks.take(d_xs if reuse else d_ys, start, size)
            d_carry, chunk_d_params, d_xs_chunk = backward_steps(
                params, weights, xs_chunk, d_carry, steps, lengths, chunk_saved, d_ys_chunk
            )
            d_params = jax.tree.map(jnp.add, d_params, chunk_d_params)
            return (d_carry, d_params, chunks.put(d_xs, d_xs_chunk, start)), None

        d_xs = d_ys if reuse else jnp.zeros_like(xs)
        start = (d_final, jax.tree.map(jnp.zeros_like, params), d_xs)
        (d_carry0, d_params, d_xs), _ = chunks.visit(backward_chunk, start, saved, backward=True)
        return d_params, d_xs, d_carry0, d_lengths

    run.defvjp(run_fwd, run_bwd)
    return run(params, xs, carry, lengths)


class _Segments(NamedTuple):
    """The steps ``0 .. num_steps - 1`` as ``num_steps // size`` whole chunks (one scan) and a
    shorter tail chunk (run on its own); ``reverse``: the recurrence visits them last to first.
    ``take`` and ``put`` move one chunk, time-major, out of and into an array in the caller's
    layout (time on ``time_axis``); ``split`` and ``join`` cut time-major arrays into, and
    glue them back from, (whole chunks, tail)."""

    num_steps: int
    size: int
    time_axis: int
    reverse: bool

    @property
    def count(self) -> int:
        return self.num_steps // self.size

    @property
    def tail(self) -> int:
        return self.num_steps - self.count * self.size

    def take(self, x: Array, start: Array | int, size: int) -> Array:
        """Steps ``start .. start + size - 1`` of ``x``, time-major."""
        return _time_major(
            jax.lax.dynamic_slice_in_dim(x, start, size, self.time_axis), self.time_axis
        )

    def put(self, x: Array, chunk: Array, start: Array | int) -> Array:
        """``x`` with the time-major ``chunk`` written at steps ``start ..``."""
        chunk = jnp.moveaxis(chunk, 0, self.time_axis)
        return jax.lax.dynamic_update_slice_in_dim(x, chunk, start, self.time_axis)

    def split(self, tree):
        """Time-major leaves ``(time, ...) -> ((count, size, ...), (tail, ...))``."""
        whole = self.count * self.size
        return (
            jax.tree.map(lambda x: x[:whole].reshape(self.count, self.size, *x.shape[1:]), tree),
            jax.tree.map(lambda x: x[whole:], tree),
        )

    def join(self, parts):
        """``split`` undone: ``((count, size, ...), (tail, ...)) -> (time, ...)``."""
        whole, tail = parts
        glued = jax.tree.map(lambda w: w.reshape(self.count * self.size, *w.shape[2:]), whole)
        if not self.tail:
            return glued
        return jax.tree.map(lambda w, t: jnp.concatenate([w, t]), glued, tail)

    def visit(self, chunk_fn, state, per_chunk=(None, None), backward=False):
        """Runs ``chunk_fn(state, start, size, data) -> (state, out)`` on every chunk, in the
        recurrence's order, or in the opposite one with ``backward``. ``per_chunk`` is
        ``(whole, tail)``: leaves ``(count, ...)`` handed out one slice a whole chunk, and the
        tail chunk's data. Returns the state and ``(outs of the whole chunks, stacked; the
        tail's out)``."""
        whole_data, tail_data = per_chunk

        def body(state, inp):
            index, data = inp
            return chunk_fn(state, index * self.size, self.size, data)

        def run_tail(state):
            if not self.tail:
                return state, None
            return chunk_fn(state, self.count * self.size, self.tail, tail_data)

        inputs = (jnp.arange(self.count), whole_data)
        if self.reverse == backward:  # first chunk to last
            state, outs = jax.lax.scan(body, state, inputs)
            state, tail_out = run_tail(state)
        else:
            state, tail_out = run_tail(state)
            state, outs = jax.lax.scan(body, state, inputs, reverse=True)
        return state, (outs, tail_out)


def _transposed_matrices(params: Params) -> Params:
    """``params`` with every matrix transposed.

    The reverse loop computes ``dh = dhh @ W_hh^T``. Written as ``jax.vjp`` of ``h @ W_hh``
    it multiplies by ``W_hh`` contracted on its last axis, which XLA:CPU runs 7-20% slower
    than a product with a row-major ``W_hh^T``. So the loop gets a transposed copy made once
    before it, and transposes it back inside the step: XLA folds that second transpose into
    the dot, which then reads the copy row by row.
    """
    return jax.tree.map(lambda w: w.T if w.ndim == 2 else w, params)


def _time_major(x: Array, time_axis: int) -> Array:
    return jnp.moveaxis(x, time_axis, 0)


def _project_all(project, params: Params, xs: Array) -> Array:
    """``project`` on every step at once, as one 2-D matmul over (time x batch) rows."""
    projected = project(params, _as_rows(xs))
    return projected.reshape(*xs.shape[:-1], projected.shape[-1])


def _as_rows(x: Array) -> Array:
    """``(time, batch..., k) -> (time * batch, k)``."""
    return x.reshape(-1, x.shape[-1])


def _autodiff_combine_vjp(split: RecurSplit) -> CombineVJP:
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


def _mask(step_out: tuple[Carry, Array], carry: Carry, t: Array, lengths: Array | None):
    """Past a sequence's length (``t >= length``) a step keeps the old carry and emits zeros.
    ``t`` is a step index, or an array of them that broadcasts against ``lengths``."""
    return _keep_valid(step_out, carry, None if lengths is None else t < lengths)


def _keep_valid(step_out: tuple[Carry, Array], carry: Carry, valid: Array | None):
    """Where ``valid`` is false, the step keeps the old carry and emits zeros."""
    new_carry, y = step_out
    if valid is None:
        return new_carry, y
    new_carry = jax.tree.map(lambda new, old: _where(valid, new, old), new_carry, carry)
    return new_carry, _where(valid, y, jnp.zeros_like(y))


def _where(mask: Array, a: Array, b: Array) -> Array:
    """``where`` with ``mask (batch...)`` broadcast over the trailing feature axes of ``a``."""
    mask = mask.reshape(mask.shape + (1,) * (a.ndim - mask.ndim))
    return jnp.where(mask, a, b)
