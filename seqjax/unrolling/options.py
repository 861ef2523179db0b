"""How a sequence is unrolled: one frozen options object that every entry point takes.

:func:`seqjax.unroll`, :func:`seqjax.rnn` and the :mod:`seqjax.nn` modules all build an
:class:`UnrollOptions` from their keyword arguments (or take one whole), so an option added
here reaches every one of them, checked in one place.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from seqjax import _checks
from seqjax.types import Cell


@dataclasses.dataclass(frozen=True)
class UnrollOptions:
    """The options of :func:`seqjax.unroll`, frozen (hashable: usable as a static argument).

    Attributes:
      reverse: run from the last step to the first. With ``lengths``, each sequence starts at
        its own last valid step (PyTorch's packed-sequence semantics); outputs stay aligned
        with the inputs.
      time_major: whether time is the first axis of ``xs`` and of the outputs.
      unroll: how many steps one iteration of the scan loop runs (``lax.scan``'s ``unroll``).
      remat: keep the carry only every ~sqrt(time) steps for the backward pass and recompute
        the steps in between (with ``custom_vjp``, chunk by chunk in seqjax's own backward
        pass; otherwise ``jax.checkpoint`` over chunks): memory grows with sqrt(time) instead
        of time, for about one more forward pass.
      hoist_projection: apply ``cell.project`` to all steps at once before the loop (one large
        matmul, a ``(time, batch..., P)`` buffer) instead of inside each step. ``None`` picks:
        hoisted on GPU/TPU; on CPU hoisted only for cells that use the projection whole
        (P = output size: the Elman RNN, the IndRNN), and inside the step for gated cells,
        where it measured faster and lighter. Both give the same numbers up to round-off.
      custom_vjp: differentiate with seqjax's own backward pass, which runs only the cheap
        part of each step in the reverse loop and computes the weight gradients as a few
        large matmuls after it (cells with a ``recur_split``: the built-in RNN, LSTM and GRU);
        with ``remat``, chunk by chunk. ``None`` uses it whenever the cell allows. Its
        gradients equal plain autodiff's; like any ``jax.custom_vjp`` it is reverse-mode
        only, so pass ``custom_vjp=False`` for ``jax.jvp`` and ``jax.jacfwd``.
      parallel: for a cell whose state evolves linearly (``cell.linear``: ``min_gru``,
        ``min_lstm``, ``lru``), compute all steps at once with ``jax.lax.associative_scan``
        (O(log T) depth; see :mod:`seqjax.parallel`). Same numbers as the sequential scan up
        to round-off, with ``lengths``, ``reverse`` and ``carry`` alike.
      chunk_size: with ``parallel``, run the parallel scan on chunks of this many steps, one
        after another (memory per chunk instead of per sequence; with ``remat``, each chunk is
        recomputed in the backward pass). ``None``: one chunk, or ~sqrt(T) with ``remat``.
      native: run the loops of the custom VJP as fused CPU kernels (:mod:`seqjax.native`),
        for the cells they serve (the built-in LSTM, GRU and Elman RNN), on the CPU, in
        float32. ``None`` uses them whenever that holds and they could be built; ``True``
        raises if they cannot run, saying why. Same numbers as the scan up to round-off;
        ``unroll`` does not apply to them.
    """

    reverse: bool = False
    time_major: bool = False
    unroll: int = 1
    remat: bool = False
    hoist_projection: bool | None = None
    custom_vjp: bool | None = None
    parallel: bool = False
    chunk_size: int | None = None
    native: bool | None = None

    def __post_init__(self) -> None:
        for name, value in checked_fields(dataclasses.asdict(self), "UnrollOptions").items():
            object.__setattr__(self, name, value)

    def keys(self) -> tuple[str, ...]:
        """The option names: with ``__getitem__``, ``dict(options)`` and ``**options`` work,
        as they did when modules kept their options as ``(name, value)`` pairs."""
        return tuple(FIELDS)

    def __getitem__(self, name: str) -> Any:
        if name not in FIELDS:
            raise KeyError(f"UnrollOptions has no option {name!r}; the options are {list(FIELDS)}")
        return getattr(self, name)

    def replace(self, **changes: Any) -> UnrollOptions:
        """A copy with ``changes`` (option names and values) applied and checked."""
        return options_from(changes, "UnrollOptions.replace", base=self)

    def check_cell(self, cell: Cell, fn: str) -> None:
        """The checks that need the cell: ``custom_vjp=True`` needs a ``recur_split`` and
        ``parallel=True`` a linear recurrence."""
        if self.custom_vjp and cell.recur_split is None:
            raise ValueError(
                f"{fn}: custom_vjp=True needs a cell with a recur_split; cell {cell.name!r} has "
                "none. Pass custom_vjp=None to use plain autodiff for it"
            )
        if self.parallel:
            _checks.check_parallel(cell, fn)


FIELDS = {field.name: field for field in dataclasses.fields(UnrollOptions)}
_OPTIONAL = {"hoist_projection", "custom_vjp", "chunk_size", "native"}  # None: "choose for me"


def checked_fields(values: dict[str, Any], fn: str) -> dict[str, Any]:
    """``values`` (option name -> value) checked one by one and together, normalised to
    Python ``bool`` and ``int``; messages name ``fn`` and the option."""
    checked = {}
    for name, value in values.items():
        if value is None and name in _OPTIONAL:
            checked[name] = None
        elif FIELDS[name].type.startswith("bool"):
            checked[name] = _checks.check_bool(value, name, fn)
        else:
            checked[name] = _checks.check_positive_int(value, name, fn)
    merged = {**{n: f.default for n, f in FIELDS.items()}, **checked}
    if merged["chunk_size"] is not None and not merged["parallel"]:
        raise ValueError(f"{fn}: chunk_size applies to parallel=True only; got parallel=False")
    if merged["parallel"] and merged["custom_vjp"]:
        raise ValueError(f"{fn}: custom_vjp=True does not apply to parallel=True")
    return checked


def options_from(
    changes: dict[str, Any],
    fn: str,
    *,
    base: UnrollOptions | None = None,
    allowed: tuple[str, ...] | None = None,
    elsewhere: str = "",
) -> UnrollOptions:
    """``base`` (default: all defaults) with ``changes`` applied: the one place keyword options
    become an :class:`UnrollOptions`. ``allowed`` limits the names an entry point takes;
    ``elsewhere`` says where the others go instead."""
    check_names(changes, fn, allowed, elsewhere)
    base = UnrollOptions() if base is None else base
    merged = {**dataclasses.asdict(base), **changes}
    return UnrollOptions(**checked_fields(merged, fn))


def check_names(
    changes: dict[str, Any], fn: str, allowed: tuple[str, ...] | None = None, elsewhere: str = ""
) -> None:
    """Every name in ``changes`` is an option (of ``allowed``, when given)."""
    allowed = tuple(FIELDS) if allowed is None else allowed
    for name in changes:
        if name not in allowed:
            note = f" ({elsewhere})" if name in FIELDS and elsewhere else ""
            raise TypeError(
                f"{fn}: unknown option {name!r}{note}; the options here are {sorted(allowed)}"
            )


def options_argument(options: Any, fn: str) -> UnrollOptions | None:
    """An ``options=`` argument: ``None`` or an :class:`UnrollOptions`."""
    if options is not None and not isinstance(options, UnrollOptions):
        raise TypeError(
            f"{fn}: options must be a seqjax.UnrollOptions (or None); got {type(options).__name__}"
        )
    return options


def merged_options(
    options: Any,
    keywords: dict[str, Any],
    fn: str,
    *,
    base: UnrollOptions | None = None,
    allowed: tuple[str, ...] | None = None,
    elsewhere: str = "",
) -> UnrollOptions:
    """The options of a call that takes both keyword options and ``options=``: one or the
    other (keywords left at their defaults do not count). Without ``options=``, the keywords
    change ``base``."""
    options = options_argument(options, fn)
    check_names(keywords, fn, allowed, elsewhere)
    if options is None:
        return options_from(keywords, fn, base=base)
    changed = sorted(n for n, v in keywords.items() if v is not FIELDS[n].default)
    if changed:
        raise TypeError(
            f"{fn}: pass the unroll options as keywords or as options=UnrollOptions(...), not "
            f"both; got options= and {', '.join(changed)}. Use options.replace({changed[0]}=...)"
        )
    return options
