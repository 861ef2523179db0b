"""The types every part of seqjax speaks: the Cell protocol and what a cell may declare
about its recurrence (``RecurSplit``, ``CombineVJP``, ``LinearRecurrence``).

A cell is one time step of a recurrent network, as a NamedTuple of pure functions. It splits its
step in two so that callers can choose where the input projection happens:

* ``project(params, xs)`` maps inputs ``(..., input_size)`` to whatever the recurrence consumes
  (for the built-in cells, the input-to-hidden product ``x @ W_ih + b_ih``). It has no time
  dependence, so :func:`seqjax.unroll` may apply it to every step at once in one large matmul.
* ``recur(params, carry, projected_x_t)`` is the part that must run step by step.

This module imports nothing else of seqjax: the checks, the cells, the unroll and the kernels
all import it, and it imports none of them.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple, Protocol

import jax
import jax.numpy as jnp

Array = jax.Array
Params = Any  # a pytree of arrays, for the built-in cells a dict
Carry = Any  # a pytree of arrays with leading batch dims, e.g. h or LSTMCarry(h, c)


class InitFn(Protocol):
    def __call__(self, key: Array, input_size: int, dtype: Any = None) -> Params:
        """Returns fresh parameters for inputs with ``input_size`` features, in ``dtype``
        (default: JAX's default float, float32 unless x64 is enabled)."""


class InitialCarryFn(Protocol):
    def __call__(self, params: Params, batch_shape: tuple[int, ...] = ()) -> Carry:
        """Returns the zero carry: leaves of shape ``batch_shape + (hidden,)``, in the params'
        dtype."""


class ProjectFn(Protocol):
    def __call__(self, params: Params, xs: Array) -> Array:
        """Maps inputs ``(..., input_size)`` to the recurrence's per-step input ``(..., P)``.
        Must act on the last axis only, so it can run on one step or on all steps at once."""


class RecurFn(Protocol):
    def __call__(self, params: Params, carry: Carry, projected_x: Array) -> tuple[Carry, Array]:
        """One step: ``carry`` leaves ``(batch..., hidden)``, ``projected_x`` ``(batch..., P)``.
        Returns ``(new_carry, y)`` with ``y`` of shape ``(batch..., output_size)``."""


class CombineVJP(NamedTuple):
    """A hand-written reverse-mode derivative of a ``RecurSplit``'s ``combine``.

    ``unroll``'s custom VJP calls ``forward`` at every step and keeps its residuals for the
    backward loop. Without one it keeps what ``jax.vjp`` of ``combine`` keeps, which for an LSTM
    is thirteen ``(batch, H)`` arrays per step instead of five: the stores alone cost more than
    the step's arithmetic. Keep residuals as separate arrays rather than one concatenated
    array: XLA:CPU runs elementwise code that slices columns out of a per-step slice of a
    stacked buffer ~2.5x slower.

    Attributes:
      forward: ``(carry, px, hh) -> ((new_carry, y), residuals)``, the step's outputs (equal to
        ``combine``'s) and a pytree of arrays with leading batch axes to keep for ``backward``.
      backward: ``(carry, residuals, (d_new_carry, dy)) -> (d_carry, d_px, d_hh)``, the
        cotangents of ``combine``'s inputs for those of its outputs. An ``additive`` split
        returns the same array as ``d_px`` and ``d_hh``.
    """

    forward: Callable[[Carry, Array, Array], tuple[tuple[Carry, Array], Any]]
    backward: Callable[[Carry, Any, tuple[Carry, Array]], tuple[Carry, Array, Array]]


class RecurSplit(NamedTuple):
    """``recur(params, carry, px) == combine(carry, px, hidden_projection(params, carry))``.

    Attributes:
      hidden_projection: ``(params, carry) -> hh``, affine in the params (for the built-in cells
        ``h @ W_hh + b_hh``), acting on the last axis so it also runs on all steps at once.
      combine: ``(carry, px, hh) -> (new_carry, y)``, elementwise arithmetic that uses no params.
      additive: whether ``combine`` sees ``px`` and ``hh`` only through ``px + hh`` (the LSTM
        and the Elman RNN; not the GRU, whose candidate gate scales ``hh`` alone). The backward
        pass then keeps one gate gradient per step instead of two.
      combine_vjp: optional ``CombineVJP``, ``combine``'s derivative written out; ``None``
        uses ``jax.vjp`` of ``combine``.
      native: deprecated, and ignored by the built-in cells: :mod:`seqjax.native` keeps a
        registry of the recurrences its kernels serve (:func:`seqjax.native.kernel_for`). A
        kernel name given here still selects that kernel, with a ``DeprecationWarning``.

    The split lets the backward pass run only the cheap ``combine`` and ``dh = dhh @ W_hh^T``
    step by step, and compute ``dW_hh = sum_t h_(t-1)^T dhh_t`` as one large matmul afterwards.
    """

    hidden_projection: Callable[[Params, Carry], Array]
    combine: Callable[[Carry, Array, Array], tuple[Carry, Array]]
    additive: bool = False
    combine_vjp: CombineVJP | None = None
    native: str | None = None


def split_recur(split: RecurSplit) -> RecurFn:
    """The ``recur`` that a ``RecurSplit`` defines."""

    def recur(params: Params, carry: Carry, projected_x: Array) -> tuple[Carry, Array]:
        return split.combine(carry, projected_x, split.hidden_projection(params, carry))

    return recur


class LinearRecurrence(NamedTuple):
    """A recurrence linear in its state, ``h_t = a_t * h_(t-1) + b_t`` (elementwise), whose
    coefficients depend on the step's projected input only, never on the state.

    Such a recurrence composes associatively, ``(a1, b1) then (a2, b2) = (a1 a2, a2 b1 + b2)``,
    so :func:`seqjax.unroll` with ``parallel=True`` runs it for all steps at once with
    ``jax.lax.associative_scan`` (O(log T) depth) instead of step by step.

    Attributes:
      coefficients: ``(params, px) -> (a, b)``, each ``(..., N)`` (real or complex) for
        ``px (..., P)``; ``a`` may also be ``(N,)``, the same at every step (the LRU).
      read_out: ``(params, h, px) -> y``, the output from the new state and the step's input.
      log_coefficients: optional ``(params, px) -> (log a, log b)`` for a cell that keeps
        ``a, b > 0``; the parallel scan then runs in log space (``logaddexp``), which neither
        underflows nor overflows over long sequences.
      state_from_carry / carry_from_state: how the state ``h`` the coefficients act on is kept
        in the carry (the LRU's complex state as a real ``[re, im]`` array); identity if None.
    """

    coefficients: Callable[[Params, Array], tuple[Array, Array]]
    read_out: Callable[[Params, Array, Array], Array]
    log_coefficients: Callable[[Params, Array], tuple[Array, Array]] | None = None
    state_from_carry: Callable[[Carry], Array] | None = None
    carry_from_state: Callable[[Array], Carry] | None = None

    def state(self, carry: Carry) -> Array:
        """The state ``h`` the coefficients act on, read from ``carry``."""
        return carry if self.state_from_carry is None else self.state_from_carry(carry)

    def carry(self, h: Array, like: Carry) -> Carry:
        """``h`` kept as a carry in the dtypes of ``like`` (the LRU's complex state is wider)."""
        new = h if self.carry_from_state is None else self.carry_from_state(h)
        return jax.tree.map(lambda leaf, old: leaf.astype(old.dtype), new, like)


def linear_recur(linear: LinearRecurrence) -> RecurFn:
    """The sequential step that a ``LinearRecurrence`` defines."""

    def recur(params: Params, carry: Carry, projected_x: Array) -> tuple[Carry, Array]:
        a, b = linear.coefficients(params, projected_x)
        h = a * linear.state(carry) + b
        return linear.carry(h, carry), linear.read_out(params, h, projected_x)

    return recur


class SequenceForms(NamedTuple):
    """Whole-sequence forms of a recurrence that is not elementwise linear (no
    ``LinearRecurrence``) but can still be computed for many steps at once: the mLSTM's
    quadratic (attention-like) and chunkwise forms. ``unroll(..., parallel=True)`` runs them,
    with ``chunk_size`` choosing the chunkwise form.

    Attributes:
      run: ``run(params, xs, carry, *, chunk_size, valid, resets, restart_carry, remat) ->
        (final_carry, ys)``: ``xs (time, batch..., input_size)`` time-major and in the order
        the steps are visited (``unroll`` flips a reversed run); ``valid (time, batch...)``
        booleans or ``None`` (an invalid step keeps the state and outputs zeros); ``resets
        (time, batch...)`` or ``None`` (the state restarts from ``restart_carry`` before a
        flagged step); ``chunk_size`` ``None`` for one chunk. ``ys (time, batch..., out)``.
      step: the ``recur`` these forms compute. They are used only while ``cell.recur`` is this
        function, so a wrapper that changes the step (dropout, zoneout) loses them.
    """

    run: Callable[..., tuple[Carry, Array]]
    step: RecurFn


class Cell(NamedTuple):
    """A recurrent cell: configuration closed over, parameters and state passed in and out.

    Attributes:
      init: ``init(key, input_size, dtype=None) -> params``.
      initial_carry: ``initial_carry(params, batch_shape=()) -> carry`` (zeros).
      project: ``project(params, xs) -> projected``, the time-parallel input projection.
      recur: ``recur(params, carry, projected_x_t) -> (carry, y)``, the sequential part.
      output_size: features of ``y``.
      name: shown in error messages and profiles.
      input_size: ``input_size(params) -> int`` so callers can check inputs before tracing;
        ``None`` for a user cell that cannot tell.
      recur_split: optional ``RecurSplit``: ``recur`` written as an affine recurrent product
        followed by parameter-free arithmetic. When given, :func:`seqjax.unroll` differentiates
        the sequence with a custom VJP that takes every weight gradient out of the time loop.
      linear: optional ``LinearRecurrence``: the cell's state evolves linearly, so it can also
        be unrolled in parallel over time (``unroll(..., parallel=True)``).
      sequence: optional ``SequenceForms``: whole-sequence forms of a recurrence that is not
        elementwise linear (the mLSTM), also run by ``unroll(..., parallel=True)``.
    """

    init: InitFn
    initial_carry: InitialCarryFn
    project: ProjectFn
    recur: RecurFn
    output_size: int
    name: str = "cell"
    input_size: Callable[[Params], int] | None = None
    recur_split: RecurSplit | None = None
    linear: LinearRecurrence | None = None
    sequence: SequenceForms | None = None

    def sequence_forms(self) -> SequenceForms | None:
        """``sequence``, while it still describes this cell's step (else ``None``)."""
        forms = self.sequence
        return forms if forms is not None and forms.step is self.recur else None


def identity_projection(params: Params, xs: Array) -> Array:
    """A ``project`` for cells that do all their work in ``recur``."""
    del params
    return xs


def default_float_dtype() -> Any:
    """float64 when x64 mode is on, float32 otherwise (JAX's own default)."""
    return jnp.result_type(float)
