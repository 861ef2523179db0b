"""Measuring how gradients travel back through time in a recurrent network.

A recurrent net computes ``h_t = f(h_(t-1), x_t)``. By the chain rule, a loss that depends on a
late state reaches an earlier one through a product of step Jacobians,

    dL/dh_t = dL/dh_T . J_T J_(T-1) ... J_(t+1),    J_s = d h_s / d h_(s-1),

plus the shorter products from every output in between. When the ``J_s`` have norms below one
the product shrinks geometrically with the distance ``T - t`` (vanishing gradients: the early
inputs get no learning signal); above one it grows geometrically (exploding gradients). A tanh
RNN whose recurrent matrix has spectral radius 0.9 and small activations loses about 10% per step
back; gating (LSTM, GRU) exists to keep the product near one. This module measures both sides:

* :func:`gradient_through_time` gives, for a concrete loss, the norm of ``dL/dh_t`` at every
  step (and every layer), in one jitted backward pass. ``GradientFlow.decay_rate()`` fits the
  per-step factor.
* :func:`jacobian_norms` gives the spectral norms of the ``J_t`` along the trajectory a cell
  follows on given inputs, and of their products over windows of steps and from the first step,
  independently of any loss: the largest factor by which a perturbation of the state can grow or
  shrink.

Two lines, for a cell or a layer made by ``seqjax.rnn`` / ``seqjax.stack``::

    flow = seqjax.diagnostics.gradient_through_time(model, params, xs, loss_fn)
    print(flow.summary())  # norms at t = T, T/2, 1 and the fitted per-step factor

**What "h_t" is.** The hidden state the cell emits at step t: the carry itself for the Elman RNN
and the GRU, the carry's ``h`` for the LSTM (its memory cell ``c`` is reported separately, as
``c_norms``). ``dL/dh_t`` is the *total* derivative: through the output at step t and through
every later step. It is computed by adding a perturbation ``eps_t`` (zero) to the new state at
each step, feeding ``eps`` to the scan as an extra input, and differentiating the loss with
respect to ``eps``: ``dL/deps_t = dL/dh_t``, for all t in one backward pass. For the built-in
cells, whose output ``y_t`` is the state ``h_t``, the perturbation reaches the output too; for a
user cell whose output is some other array, only the carry is perturbed.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree

from seqjax import _checks
from seqjax.cell import Carry, Cell, Params, RecurSplit
from seqjax.layers import (
    BidirectionalSpec,
    Layer,
    RNNSpec,
    StackSpec,
    _reversed_resets,
    reverse_sequences,
)
from seqjax.unroll import unroll
from seqjax.unrolling.options import UnrollOptions

Array = jax.Array

__all__ = [
    "DecayFit",
    "GradientFlow",
    "JacobianNorms",
    "gradient_through_time",
    "jacobian_norms",
]

SUPPORTED_MODELS = (
    "a seqjax.Cell, seqjax.rnn(cell), seqjax.bidirectional(rnn(...), rnn(...)), or a "
    "seqjax.stack of rnn and bidirectional(rnn, rnn) layers"
)
EXACT_MAX_STATE = 128  # method="auto" builds full Jacobians up to this state size


# ----------------------------------------------------------------------------------------------
# Results


class DecayFit(NamedTuple):
    """A least-squares fit of ``log(norm_t) = a + (T - t) * log(rate)``.

    Every field is a float for a single layer, or an array ``(layers,)`` for a stack.

    Attributes:
      rate: the per-step factor: 0.87 means the norm shrinks by 13% per step back in time, 1.1
        that it grows by 10%. NaN when fewer than two steps have a positive norm.
      log_residual: the root-mean-square residual of the fit, in natural-log units (0.1 means
        the norms stray about 10% from the fitted exponential).
      last: the norm at the last step, t = T.
      middle: the norm at t = T/2 (0-based index ``T // 2``).
      first: the norm at the first step, t = 1.
    """

    rate: Any
    log_residual: Any
    last: Any
    middle: Any
    first: Any


class GradientFlow(NamedTuple):
    """How large ``dL/dh_t`` is at every step: what :func:`gradient_through_time` returns.

    Shapes are ``(time,)`` / ``(batch, time)`` for a single layer, ``(layers, time)`` /
    ``(layers, batch, time)`` for a stack (for a bidirectional layer the state at step t is
    ``[h_forward_t, h_backward_t]``, the layout of its output). Time is always in input order.

    Attributes:
      norms: the Euclidean norm over hidden units of each sequence's own gradient, averaged over
        the sequences of the batch that are still running at step t (``t < length``; all of them
        without ``lengths``), 0 where none is.
      per_example: the per-sequence norms; exactly 0 at steps past a sequence's length.
      c_norms: as ``norms`` for the LSTM memory cell, ``dL/dc_t``; NaN for a layer with no
        ``c``; ``None`` when no layer has one.
      c_per_example: as ``per_example`` for ``dL/dc_t``, or ``None``.
      loss: the value of the loss.
    """

    norms: Array
    per_example: Array
    c_norms: Array | None
    c_per_example: Array | None
    loss: Array

    def decay_fit(self) -> DecayFit:
        """Fits ``log(norms)`` against the distance from the last step, ``T - t``, by least
        squares (steps whose norm is 0 or not finite are left out). Host-side, on concrete
        values; with unequal ``lengths`` the distance is still counted from the last time step.
        """
        norms = np.asarray(self.norms, np.float64)
        if norms.ndim == 1:
            return _fit_decay(norms)
        fits = [_fit_decay(row) for row in norms]
        return DecayFit(*(np.array(values) for values in zip(*fits, strict=True)))

    def decay_rate(self) -> Any:
        """The fitted per-step factor (see :meth:`decay_fit`): a float, or ``(layers,)``."""
        return self.decay_fit().rate

    def summary(self) -> str:
        """One line per layer: the norms at t = T, T/2, 1 and the fitted per-step factor."""
        fit = self.decay_fit()
        single = np.ndim(fit.rate) == 0
        columns = [np.atleast_1d(np.asarray(v, np.float64)) for v in fit]
        lines = []
        for i, (rate, residual, last, middle, first) in enumerate(zip(*columns, strict=True)):
            lines.append(
                ("" if single else f"layer {i}: ")
                + f"|dL/dh_t| at t=T {last:.3e}, t=T/2 {middle:.3e}, t=1 {first:.3e}; "
                f"per-step factor {rate:.4f} (log-linear fit, rms residual {residual:.3f})"
            )
        return "\n".join(lines)


class JacobianNorms(NamedTuple):
    """Spectral norms of the state-to-state Jacobians: what :func:`jacobian_norms` returns.

    ``J_t = d state_t / d state_(t-1)`` at the state the cell reaches on the given inputs (the
    state is the whole carry flattened: ``h`` for the RNN and GRU, ``[h, c]`` for the LSTM).
    Steps are 0-based: ``state_(-1)`` is the initial carry. Shapes are for one sequence; a
    batch of sequences adds a leading ``batch`` axis to the arrays.

    Attributes:
      step: ``(time,)``, ``||J_t||_2``.
      products: ``(len(spans), time)``: row i holds ``||J_t J_(t-1) ... J_(t-k+1)||_2`` with
        ``k = spans[i]``, that is ``||d state_t / d state_(t-k)||_2``; NaN where ``t < k - 1``.
      from_start: ``(time,)``, ``||J_t ... J_0||_2 = ||d state_t / d state_(-1)||_2``, how much
        of a perturbation of the initial state can reach step t; ``None`` when not asked for.
      spans: the window lengths of ``products``.
      method: ``"exact"`` or ``"power"``, the one used.
      state_size: the size of the flattened state.
    """

    step: Array
    products: Array
    from_start: Array | None
    spans: tuple[int, ...]
    method: str
    state_size: int


def _fit_decay(norms: np.ndarray) -> DecayFit:
    steps = norms.shape[0]
    distance = np.arange(steps - 1, -1, -1, dtype=np.float64)  # T - t for t = 1..T
    ok = np.isfinite(norms) & (norms > 0)
    rate = residual = np.nan
    if ok.sum() >= 2:
        slope, intercept = np.polyfit(distance[ok], np.log(norms[ok]), 1)
        fitted = intercept + slope * distance[ok]
        rate = float(np.exp(slope))
        residual = float(np.sqrt(np.mean((np.log(norms[ok]) - fitted) ** 2)))
    return DecayFit(rate, residual, float(norms[-1]), float(norms[steps // 2]), float(norms[0]))


# ----------------------------------------------------------------------------------------------
# The model, as a plan of levels of recurrent runs


class _Run(NamedTuple):
    cell: Cell
    options: UnrollOptions


class _Level(NamedTuple):
    runs: tuple[_Run, ...]  # (run,) or (forward, backward)


class _Plan(NamedTuple):
    levels: tuple[_Level, ...]
    stacked: bool
    time_major: bool


def _plan(model: Any, fn: str) -> _Plan:
    if isinstance(model, Cell):
        return _Plan((_Level((_Run(model, UnrollOptions()),)),), stacked=False, time_major=False)
    if not isinstance(model, Layer):
        raise TypeError(f"{fn}: model must be {SUPPORTED_MODELS}; got {type(model).__name__}")
    if isinstance(model.spec, StackSpec):
        layers = model.spec.layers
        levels = tuple(_level(layer, fn, f"stack layer {i}") for i, layer in enumerate(layers))
        return _Plan(levels, stacked=True, time_major=model.time_major)
    return _Plan((_level(model, fn, "model"),), stacked=False, time_major=model.time_major)


def _level(layer: Layer, fn: str, what: str) -> _Level:
    spec = layer.spec
    if isinstance(spec, RNNSpec):
        return _Level((_Run(spec.cell, spec.options),))
    if isinstance(spec, BidirectionalSpec):
        runs = []
        for name, inner in (("forward", spec.forward), ("backward", spec.backward)):
            if not isinstance(inner.spec, RNNSpec):
                raise TypeError(
                    f"{fn}: the {name} layer of a bidirectional {what} must be seqjax.rnn(cell); "
                    f"got {_describe(inner)}. Supported: {SUPPORTED_MODELS}"
                )
            runs.append(_Run(inner.spec.cell, inner.spec.options))
        return _Level(tuple(runs))
    raise TypeError(f"{fn}: {what} must be {SUPPORTED_MODELS}; got {_describe(layer)}")


_SPEC_NAMES = {RNNSpec: "rnn", BidirectionalSpec: "bidirectional", StackSpec: "stack"}


def _describe(layer: Layer) -> str:
    if layer.spec is None:
        return (
            "a Layer built by hand (its .spec is None; seqjax.rnn, seqjax.bidirectional and "
            "seqjax.stack record how a layer is built)"
        )
    return f"a {_SPEC_NAMES[type(layer.spec)]} layer"


def _state_leaves(carry: Any) -> tuple[Any, Any]:
    """``(h, c)`` of a carry: an array is ``h``; a NamedTuple gives its ``h`` and ``c`` fields
    (``c`` None when absent)."""
    if hasattr(carry, "_fields"):
        return carry.h, getattr(carry, "c", None)
    return carry, None


def _has_h(carry: Any) -> bool:
    if hasattr(carry, "_fields"):
        return "h" in carry._fields
    return hasattr(carry, "shape")


# ----------------------------------------------------------------------------------------------
# gradient_through_time


def gradient_through_time(
    model: Cell | Layer,
    params: Params,
    xs: Array,
    loss_fn: Callable[[Array, Carry], Array],
    *,
    lengths: Array | None = None,
    carry: Carry | None = None,
    resets: Array | None = None,
) -> GradientFlow:
    """The norm of ``dL/dh_t``, the total derivative of a loss with respect to the hidden state
    at every step t, per layer: where the learning signal vanishes or explodes back in time.

    Args:
      model: a ``seqjax.Cell`` (run like ``seqjax.rnn(cell)``), a layer made by
        ``seqjax.rnn(cell)``, ``seqjax.bidirectional(rnn, rnn)``, or ``seqjax.stack`` of those
        (dropout between layers is not applied: the model runs deterministically).
      params: the model's params (``model.init(key, input_size)``).
      xs: ``(batch, time, features)``, or ``(time, batch, features)`` for a time-major layer.
      loss_fn: ``loss_fn(ys, final_carry) -> scalar``, with ``ys`` the top layer's outputs
        ``(batch, time, hidden)`` (in the model's layout) and ``final_carry`` as the model's
        ``apply`` returns it. The computation is compiled once per ``loss_fn`` object and input
        shapes: pass the same function (not a fresh ``lambda``) to reuse it.
      lengths: optional ``(batch,)`` integers in ``[1, time]``; steps past a sequence's length
        get a gradient of exactly 0 and are left out of the batch average.
      carry: optional initial carry, as the model's ``apply`` takes it; zeros when ``None``.
      resets: optional booleans shaped like ``xs`` without its features: where the state
        restarts from the initial carry (see :func:`seqjax.unroll`). No gradient crosses a
        reset, so the norms show each segment's own flow, ending at its last step.

    Returns:
      A :class:`GradientFlow`: ``norms (time,)`` or ``(layers, time)`` for a stack, the
      per-sequence ``per_example (batch, time)`` / ``(layers, batch, time)``, the same for the
      LSTM memory cell (``c_norms``), and the loss. ``norms[..., t]`` is the mean over the batch
      (of the sequences running at step t) of ``||dL/dh_t||_2`` over hidden units, each
      sequence's gradient taken on its own (for a loss that sums over the batch; a mean over the
      batch scales all norms by 1/batch).

    Works under ``jax.jit`` too (then pass ``loss_fn`` by closure).
    """
    fn = "gradient_through_time"
    plan = _plan(model, fn)
    if not callable(loss_fn):
        raise TypeError(
            f"{fn}: loss_fn must be a function loss_fn(ys, final_carry) -> scalar; got "
            f"{type(loss_fn).__name__}"
        )
    xs = _checks.check_array(xs, "xs", fn, min_rank=0)
    layout = "(time, batch, features)" if plan.time_major else "(batch, time, features)"
    if xs.ndim != 3:
        hint = "" if plan.time_major else "; for one sequence (time, features) pass xs[None]"
        raise ValueError(f"{fn}: xs must have 3 axes {layout}; got shape {xs.shape}{hint}")
    batch, steps = (xs.shape[1], xs.shape[0]) if plan.time_major else xs.shape[:2]
    if steps == 0:
        raise ValueError(f"{fn}: xs has an empty time axis (shape {xs.shape}); need 1 step")
    lengths = _checks.check_lengths(lengths, (batch,), steps, fn)
    if resets is not None:
        resets = _checks.check_resets(resets, xs.shape[:-1], fn, plan.time_major)
    _validate_model(plan, params, carry, xs, batch, layout, fn)
    return _flow_jit(plan, _hashable(loss_fn), params, xs, lengths, carry, resets)


def _validate_model(
    plan: _Plan, params: Any, carry: Any, xs: Array, batch: int, layout: str, fn: str
) -> None:
    count = len(plan.levels)
    if plan.stacked:
        if not isinstance(params, tuple | list) or len(params) != count:
            raise ValueError(
                f"{fn}: params must be a tuple of {count} entries (one per stacked layer), as "
                f"model.init returns; got {type(params).__name__}"
                + (f" of {len(params)}" if isinstance(params, tuple | list) else "")
            )
        if carry is not None and (
            not isinstance(carry, tuple) or hasattr(carry, "_fields") or len(carry) != count
        ):
            raise ValueError(
                f"{fn}: carry must be None or a tuple of {count} entries (one per stacked "
                f"layer), as model.initial_carry returns; got {type(carry).__name__}"
            )
    level_params = params if plan.stacked else (params,)
    level_carries = carry if plan.stacked and carry is not None else (carry,) * count
    features = xs.shape[-1]
    for i, (level, p, c) in enumerate(zip(plan.levels, level_params, level_carries, strict=True)):
        where = f"stack layer {i}" if plan.stacked else "model"
        if len(level.runs) == 2:
            if not isinstance(p, dict) or set(p) != {"forward", "backward"}:
                raise ValueError(
                    f"{fn}: params of the bidirectional {where} must be a dict with keys "
                    f"'forward' and 'backward'; got {type(p).__name__}"
                )
            if c is not None and (not isinstance(c, tuple) or len(c) != 2):
                raise ValueError(
                    f"{fn}: carry of the bidirectional {where} must be a (forward, backward) "
                    f"pair; got {type(c).__name__}"
                )
            pairs = [(run, p[k], None if c is None else c[j]) for j, (run, k) in
                     enumerate(zip(level.runs, ("forward", "backward"), strict=True))]  # fmt: skip
        else:
            pairs = [(level.runs[0], p, c)]
        output = 0
        for run, rp, rc in pairs:
            cell = run.cell
            dtype = _checks.params_dtype(rp, fn)
            x = jax.ShapeDtypeStruct((batch, features), dtype)
            expected = _checks.expected_input_size(cell, rp, fn)
            if i == 0:
                _checks.check_features(x, expected, "xs", fn, layout.replace("features", "{d}"))
            elif expected is not None and expected != features:
                raise ValueError(
                    f"{fn}: {where} expects {expected} input features but the layer below "
                    f"outputs {features}; build the stack with model.init"
                )
            template = jax.eval_shape(lambda q, cell=cell: cell.initial_carry(q, (batch,)), rp)
            if rc is None:
                rc = template
            else:
                _checks.check_carry(cell, rp, rc, (batch,), fn)
            if not _has_h(template):
                raise TypeError(
                    f"{fn}: cannot find the hidden state in the carry of cell {cell.name!r} "
                    f"({type(template).__name__}); expected an array or a NamedTuple with a "
                    "field h"
                )
            _checks.check_step(cell, rp, rc, x, fn)
            output += cell.output_size
        features = output


class _ByIdentity:
    """Wraps an unhashable ``loss_fn`` so that it can be a static argument of ``jax.jit``."""

    def __init__(self, fn: Callable) -> None:
        self.fn = fn

    def __call__(self, *args: Any) -> Any:
        return self.fn(*args)


def _hashable(loss_fn: Callable) -> Callable:
    try:
        hash(loss_fn)
    except TypeError:
        return _ByIdentity(loss_fn)
    return loss_fn


def _perturbed_cell(cell: Cell, h_size: int, c_size: int, named: bool) -> Cell:
    """``cell`` whose inputs carry ``h_size + c_size`` extra features, ``eps``, that are added
    to the new state after each step: ``h += eps[:h_size]`` (and ``c += eps[h_size:]``), and to
    the output when the output is the state."""
    k = h_size + c_size

    def project(params: Params, xs: Array) -> Array:
        return jnp.concatenate([cell.project(params, xs[..., :-k]), xs[..., -k:]], axis=-1)

    def perturb(out: tuple[Carry, Array], eps: Array) -> tuple[Carry, Array]:
        new_carry, y = out
        eps_h, eps_c = eps[..., :h_size], eps[..., h_size:]
        if named:
            h = new_carry.h
            fields = {"h": h + eps_h}
            if c_size:
                fields["c"] = new_carry.c + eps_c
            perturbed = new_carry._replace(**fields)
            new_h = perturbed.h
        else:
            h = new_carry
            perturbed = new_h = new_carry + eps_h
        return perturbed, (new_h if y is h else y)

    def recur(params: Params, carry: Carry, projected: Array) -> tuple[Carry, Array]:
        if cell.linear is not None:  # the output is read from the (perturbed) state
            return perturbed_linear_step(params, carry, projected)
        return perturb(cell.recur(params, carry, projected[..., :-k]), projected[..., -k:])

    def perturbed_linear_step(params: Params, carry: Carry, projected: Array):
        linear, px, eps = cell.linear, projected[..., :-k], projected[..., -k:]
        a, b = linear.coefficients(params, px)
        new_carry = linear.carry(a * linear.state(carry) + b, carry) + eps
        return new_carry, linear.read_out(params, linear.state(new_carry), px)

    split = None
    if cell.recur_split is not None:
        inner = cell.recur_split

        def combine(carry: Carry, projected: Array, hh: Array) -> tuple[Carry, Array]:
            return perturb(inner.combine(carry, projected[..., :-k], hh), projected[..., -k:])

        split = RecurSplit(inner.hidden_projection, combine)

    input_size = None
    if cell.input_size is not None:
        base = cell.input_size

        def input_size(params: Params) -> int:
            return base(params) + k

    return cell._replace(
        project=project,
        recur=recur,
        name=f"{cell.name}+eps",
        input_size=input_size,
        recur_split=split,
    )


def _flow(
    plan: _Plan,
    loss_fn: Callable,
    params: Params,
    xs: Array,
    lengths: Array | None,
    carry: Carry | None,
    resets: Array | None = None,
) -> GradientFlow:
    """``dL/dh_t`` for every level and step, as the gradient of the loss with respect to a
    zero perturbation ``eps_t`` added to the state after each step (by ``_perturbed_cell``)."""
    fn = "gradient_through_time"
    time_axis = 0 if plan.time_major else 1
    batch, steps = xs.shape[1 - time_axis], xs.shape[time_axis]
    levels, eps0 = _perturbed_levels(plan, params, carry, batch, steps, fn)

    def run_one(entry, inputs: Array, eps: tuple, reverse_input: bool) -> tuple[Carry, Array]:
        cell, options, rp, rc, dtype = entry
        extra = [e for e in eps if e is not None]
        aug = jnp.concatenate([inputs.astype(dtype), *extra], axis=-1)
        run_resets = resets
        if reverse_input:
            aug = reverse_sequences(aug, lengths, time_axis)
            run_resets = _reversed_resets(resets, lengths, time_axis)
        final, ys = unroll(
            cell, rp, aug, carry=rc, lengths=lengths, resets=run_resets, options=options
        )
        if reverse_input:
            ys = reverse_sequences(ys, lengths, time_axis)
        return final, ys

    def loss_of(eps: list) -> Array:
        inputs = xs
        finals = []
        for runs, eps_level in zip(levels, eps, strict=True):
            if len(runs) == 2:
                final_f, ys_f = run_one(runs[0], inputs, eps_level[0], False)
                final_b, ys_b = run_one(runs[1], inputs, eps_level[1], True)
                finals.append((final_f, final_b))
                inputs = jnp.concatenate([ys_f, ys_b], axis=-1)
            else:
                final, inputs = run_one(runs[0], inputs, eps_level[0], False)
                finals.append(final)
        final_carry = tuple(finals) if plan.stacked else finals[0]
        return _check_loss(loss_fn(inputs, final_carry), fn)

    loss, grads = jax.value_and_grad(loss_of)(eps0)
    return _flow_norms(plan, grads, lengths, batch, steps, loss)


def _perturbed_levels(plan: _Plan, params, carry, batch: int, steps: int, fn: str):
    """Per level, per direction: ``(perturbed cell, options, params, carry, dtype)``, and the
    zero perturbations ``(eps_h, eps_c or None)`` each takes as extra input features."""
    level_params = params if plan.stacked else (params,)
    if carry is None:
        level_carries = (None,) * len(plan.levels)
    else:
        level_carries = carry if plan.stacked else (carry,)

    def eps_shape(size: int) -> tuple[int, ...]:
        return (steps, batch, size) if plan.time_major else (batch, steps, size)

    levels, eps0 = [], []
    for level, p, c in zip(plan.levels, level_params, level_carries, strict=True):
        runs, eps_level = [], []
        if len(level.runs) == 2:
            run_params = (p["forward"], p["backward"])
            run_carries = (None, None) if c is None else c
        else:
            run_params, run_carries = (p,), (c,)
        for run, rp, rc in zip(level.runs, run_params, run_carries, strict=True):
            dtype = _checks.params_dtype(rp, fn)
            template = run.cell.initial_carry(rp, (batch,)) if rc is None else rc
            h, c_leaf = _state_leaves(template)
            sizes = (h.shape[-1], 0 if c_leaf is None else c_leaf.shape[-1])
            cell = _perturbed_cell(run.cell, *sizes, named=hasattr(template, "_fields"))
            # The perturbed cell runs step by step: a parallel (associative-scan) unroll would
            # have no per-step state to perturb, and gives the same numbers.
            options = run.options.replace(
                parallel=False, chunk_size=None, custom_vjp=None, native=None
            )
            runs.append((cell, options, rp, rc, dtype))
            eps_h = jnp.zeros(eps_shape(sizes[0]), dtype)
            eps_level.append((eps_h, jnp.zeros(eps_shape(sizes[1]), dtype) if sizes[1] else None))
        levels.append(runs)
        eps0.append(eps_level)
    return levels, eps0


def _flow_norms(plan: _Plan, grads, lengths, batch: int, steps: int, loss) -> GradientFlow:
    """The norms of the perturbations' gradients, per example and averaged over the
    sequences still running at each step."""
    valid = jnp.ones((batch, steps), bool)
    if lengths is not None:
        valid = jnp.arange(steps)[None, :] < lengths[:, None]

    def per_example(parts: list) -> Array:  # -> (batch, time)
        g = jnp.concatenate(parts, axis=-1)
        g = g.astype(jnp.promote_types(g.dtype, jnp.float32))
        # Scaled by the largest entry before squaring: a vanished gradient of 1e-30 would
        # underflow to 0 if squared as it is in float32.
        scale = jnp.max(jnp.abs(g), axis=-1, keepdims=True)
        safe = jnp.where(scale > 0, scale, 1.0)
        norms = scale[..., 0] * jnp.sqrt(jnp.sum(jnp.square(g / safe), axis=-1))
        return norms.T if plan.time_major else norms

    h_rows, c_rows = [], []
    for eps_level in grads:
        h_rows.append(per_example([g_h for g_h, _ in eps_level]))
        c_parts = [g_c for _, g_c in eps_level if g_c is not None]
        c_rows.append(per_example(c_parts) if c_parts else None)
    h_examples = jnp.stack(h_rows)  # (levels, batch, time)
    c_examples = None
    if any(row is not None for row in c_rows):
        c_examples = jnp.stack(
            [jnp.full_like(h_examples[0], jnp.nan) if row is None else row for row in c_rows]
        )
    count_valid = jnp.sum(valid, axis=0)  # (time,)

    def batch_mean(per: Array) -> Array:
        total = jnp.sum(jnp.where(valid, per, 0.0), axis=-2)
        return jnp.where(count_valid > 0, total / jnp.maximum(count_valid, 1), 0.0)

    h_norms = batch_mean(h_examples)
    c_norms = None if c_examples is None else batch_mean(c_examples)
    if not plan.stacked:
        h_norms, h_examples = h_norms[0], h_examples[0]
        if c_examples is not None:
            c_norms, c_examples = c_norms[0], c_examples[0]
    return GradientFlow(h_norms, h_examples, c_norms, c_examples, loss)


_flow_jit = jax.jit(_flow, static_argnums=(0, 1))


def _check_loss(loss: Any, fn: str) -> Array:
    try:
        loss = jnp.asarray(loss)
    except TypeError as err:
        raise TypeError(
            f"{fn}: loss_fn must return a scalar array; got {type(loss).__name__}"
        ) from err
    if loss.shape != ():
        raise ValueError(
            f"{fn}: loss_fn must return a scalar (shape ()); got shape {loss.shape}. Reduce it, "
            "e.g. with jnp.sum or jnp.mean"
        )
    if not jnp.issubdtype(loss.dtype, jnp.floating):
        raise TypeError(f"{fn}: loss_fn must return a real floating scalar; got {loss.dtype}")
    return loss


# ----------------------------------------------------------------------------------------------
# jacobian_norms


def jacobian_norms(
    cell: Cell,
    params: Params,
    xs: Array,
    *,
    carry: Carry | None = None,
    spans: Sequence[int] = (10,),
    from_start: bool = True,
    method: str = "auto",
    iterations: int = 100,
    key: Array | None = None,
    resets: Array | None = None,
) -> JacobianNorms:
    """Spectral norms of ``J_t = d state_t / d state_(t-1)`` along the trajectory ``cell``
    follows on ``xs``, and of products of consecutive ``J_t``.

    Args:
      cell: a ``seqjax.Cell``.
      params: its params.
      xs: one sequence ``(time, features)``, or a batch ``(batch, time, features)`` (then every
        result gets a leading batch axis: one trajectory per sequence).
      carry: the initial carry, leaves ``(hidden,)`` or ``(batch, hidden)``; zeros when
        ``None``.
      spans: window lengths k: ``products`` holds ``||J_t ... J_(t-k+1)||_2`` for each.
      from_start: also compute ``||J_t ... J_0||_2`` for every t (in ``"power"`` mode this
        costs about ``time**2 * iterations`` Jacobian-vector products).
      method: ``"exact"`` builds each ``J_t`` with ``jax.jacfwd`` (``n`` forward passes, ``n``
        the state size) and takes singular values, for small states; ``"power"`` runs power
        iteration on ``A^T A`` with Jacobian-vector products (``jax.linearize`` and its
        transpose), never forming a matrix, for large ones; ``"auto"`` is exact up to a state
        of 128 numbers and power beyond.
      iterations: power-iteration steps (``"power"`` only). The estimate is a lower bound on
        the norm that converges as ``(sigma_2 / sigma_1) ** (4 * iterations)`` in relative error.
      key: the random start vector of the power iteration (default ``jax.random.key(0)``).
      resets: optional booleans ``xs.shape[:-1]``: the state restarts from ``carry`` before
        each flagged step, whose ``J_t`` is then 0 (the new state does not depend on the old).

    Returns:
      A :class:`JacobianNorms`. The state is the carry flattened, so for the LSTM it is
      ``[h, c]`` (2H numbers) and ``J_t`` is ``(2H, 2H)``. The cell's recur must support
      forward-mode differentiation (the built-in cells do).
    """
    fn = "jacobian_norms"
    if isinstance(cell, Layer):
        raise TypeError(
            f"{fn}: cell must be a seqjax.Cell; got a Layer. For seqjax.rnn(cell) pass the cell"
        )
    _checks.check_cell(cell, fn)
    xs = _checks.check_array(xs, "xs", fn, min_rank=0)
    if not 2 <= xs.ndim <= 3:
        raise ValueError(
            f"{fn}: xs must be (time, features) or (batch, time, features); got shape {xs.shape}"
        )
    if xs.shape[-2] == 0:
        raise ValueError(f"{fn}: xs has an empty time axis (shape {xs.shape}); need 1 step")
    if _checks.is_int(spans):
        spans = (spans,)
    if not isinstance(spans, Sequence):
        raise TypeError(f"{fn}: spans must be a sequence of positive integers; got {spans!r}")
    spans = tuple(_checks.check_positive_int(k, "each of spans", fn) for k in spans)
    from_start = _checks.check_bool(from_start, "from_start", fn)
    _checks.check_choice(method, ("auto", "exact", "power"), "method", fn)
    iterations = _checks.check_positive_int(iterations, "iterations", fn)
    dtype = _checks.params_dtype(params, fn)
    expected = _checks.expected_input_size(cell, params, fn)
    batch_shape = xs.shape[:-2]
    _checks.check_features(xs, expected, "xs", fn, "(batch, time, {d}) or (time, {d})")
    carry = _checks.checked_carry(cell, params, carry, xs, batch_shape, dtype, fn)
    state_size = sum(
        int(np.prod(np.shape(leaf)[len(batch_shape) :])) for leaf in jax.tree.leaves(carry)
    )
    if method == "auto":
        method = "exact" if state_size <= EXACT_MAX_STATE else "power"
    if key is None:
        key = jax.random.key(0)
    if resets is not None:
        resets = _checks.check_resets(resets, xs.shape[:-1], fn, False)
    step, products, start = _jacobian_jit(
        cell, spans, from_start, method, iterations, params, xs.astype(dtype), carry, key, resets
    )
    return JacobianNorms(step, products, start, spans, method, state_size)


def _jacobian_run(
    cell: Cell,
    spans: tuple[int, ...],
    from_start: bool,
    method: str,
    iterations: int,
    params: Params,
    xs: Array,
    carry: Carry,
    key: Array,
    resets: Array | None = None,
) -> tuple[Array, Array, Array | None]:
    def one(xs: Array, carry: Carry, flags: Array | None) -> tuple[Array, Array, Array | None]:
        flat0, unravel = ravel_pytree(carry)
        pxs = cell.project(params, xs)  # (T, P)
        if flags is not None:  # the flag rides as a last column of each step's input
            pxs = jnp.concatenate([pxs, flags[:, None].astype(pxs.dtype)], axis=-1)

        def step(state: Array, px: Array) -> Array:
            if flags is not None:
                state = jnp.where(px[-1] > 0, flat0, state)  # d new / d old = 0 there
                px = px[:-1]
            new, _ = cell.recur(params, unravel(state), px)
            return ravel_pytree(new)[0]

        def body(state: Array, px: Array) -> tuple[Array, Array]:
            return step(state, px), state

        _, before = jax.lax.scan(body, flat0, pxs)  # before[t] = state_(t-1)
        if method == "exact":
            return _exact_norms(step, before, pxs, spans, from_start)
        return _power_norms(step, before, pxs, spans, from_start, iterations, key)

    if xs.ndim == 3:
        return jax.vmap(one)(xs, carry, resets)
    return one(xs, carry, resets)


_jacobian_jit = jax.jit(_jacobian_run, static_argnums=(0, 1, 2, 3, 4))


def _spectral(m: Array) -> Array:
    return jnp.linalg.svd(m, compute_uv=False)[..., 0]


StepFn = Callable[[Array, Array], Array]  # (flat state_(t-1), projected x_t) -> flat state_t


def _exact_norms(
    step: StepFn, before: Array, pxs: Array, spans: tuple[int, ...], from_start: bool
) -> tuple[Array, Array, Array | None]:
    """Full Jacobians ``(T, n, n)`` by ``jax.jacfwd``, their products, and SVDs."""
    steps, n = before.shape
    jac = jax.vmap(jax.jacfwd(step))(before, pxs)  # (T, n, n): jac[t] = d state_t / d state_(t-1)
    eye = jnp.eye(n, dtype=jac.dtype)
    nan = jnp.full((steps,), jnp.nan, jac.dtype)
    rows = [
        jnp.where(jnp.arange(steps) >= k - 1, _spectral(_window_products(jac, k, eye)), nan)
        if k <= steps
        else nan
        for k in spans
    ]
    products = jnp.stack(rows) if rows else jnp.zeros((0, steps), jac.dtype)
    start = None
    if from_start:

        def accumulate(q: Array, j: Array) -> tuple[Array, Array]:
            q = j @ q
            return q, q

        _, cumulative = jax.lax.scan(accumulate, eye, jac)
        start = _spectral(cumulative)
    return _spectral(jac), products, start


def _window_products(jac: Array, k: int, eye: Array) -> Array:
    """``out[t] = jac[t] @ jac[t-1] @ ... @ jac[t-k+1]`` for every t (garbage for t < k - 1),
    with about 3 matmuls per step whatever k: split time into blocks of k steps; a window ending
    at t is the prefix of t's block up to t times the suffix of the block before from t - k + 1.
    """
    steps, n, _ = jac.shape
    blocks = -(-steps // k)
    pad = blocks * k - steps
    padded = jnp.concatenate([jac, jnp.broadcast_to(eye, (pad, n, n))]) if pad else jac
    per_block = padded.reshape(blocks, k, n, n).swapaxes(0, 1)  # (k, blocks, n, n)
    start = jnp.broadcast_to(eye, (blocks, n, n))

    def prefix(p: Array, j: Array) -> tuple[Array, Array]:
        p = j @ p
        return p, p

    def suffix(s: Array, j: Array) -> tuple[Array, Array]:
        s = s @ j
        return s, s

    _, pre = jax.lax.scan(prefix, start, per_block)
    _, suf = jax.lax.scan(suffix, start, per_block, reverse=True)
    pre = pre.swapaxes(0, 1).reshape(blocks * k, n, n)[:steps]
    suf = suf.swapaxes(0, 1).reshape(blocks * k, n, n)[:steps]
    t = jnp.arange(steps)
    tail = suf[jnp.clip(t - k + 1, 0, steps - 1)]
    whole_block = (t % k == k - 1)[:, None, None]
    return jnp.where(whole_block, pre, pre @ tail)


def _power_norms(
    step: StepFn,
    before: Array,
    pxs: Array,
    spans: tuple[int, ...],
    from_start: bool,
    iterations: int,
    key: Array,
) -> tuple[Array, Array, Array | None]:
    """Power iteration on ``A^T A`` for each window ``A = J_b ... J_a``, matrix-free."""
    steps, n = before.shape
    v0 = jax.random.normal(key, (n,), before.dtype)
    v0 = v0 / jnp.linalg.norm(v0)

    def window_norm(first: Array, length: int) -> Array:
        """``||J_(first+length-1) ... J_first||_2``; steps before 0 count as the identity."""
        index = first + jnp.arange(length)
        active = index >= 0
        window = pxs[jnp.clip(index, 0, steps - 1)]
        start = before[jnp.clip(first, 0, steps - 1)]

        def chain(state: Array) -> Array:
            def body(s: Array, inp: tuple[Array, Array]) -> tuple[Array, None]:
                px, on = inp
                return jnp.where(on, step(s, px), s), None

            return jax.lax.scan(body, state, (window, active))[0]

        _, forward = jax.linearize(chain, start)
        transpose = jax.linear_transpose(forward, start)

        def iterate(_: Array, v: Array) -> Array:
            (u,) = transpose(forward(v))
            size = jnp.linalg.norm(u)
            return jnp.where(size > 0, u / jnp.where(size > 0, size, 1.0), v)

        v = jax.lax.fori_loop(0, iterations, iterate, v0)
        return jnp.linalg.norm(forward(v))

    done: dict[int, Array] = {}

    def norms_over_time(length: int) -> Array:
        """The window of ``length`` steps ending at each t."""
        if length not in done:
            first = jnp.arange(steps) - length + 1
            batch_size = max(1, min(steps, 256 // length))
            done[length] = jax.lax.map(
                lambda f: window_norm(f, length), first, batch_size=batch_size
            )
        return done[length]

    nan = jnp.full((steps,), jnp.nan, before.dtype)
    rows = [
        jnp.where(jnp.arange(steps) >= k - 1, norms_over_time(k), nan) if k <= steps else nan
        for k in spans
    ]
    products = jnp.stack(rows) if rows else jnp.zeros((0, steps), before.dtype)
    start = norms_over_time(steps) if from_start else None
    return norms_over_time(1), products, start
