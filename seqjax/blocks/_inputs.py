"""The checks every block's ``apply`` makes at its boundary, in one place."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from seqjax import _checks


def checked_inputs(
    params: Any,
    xs: Any,
    lengths: Any,
    carry: Any,
    resets: Any,
    reset_carry: Any,
    *,
    fn: str,
    keys: tuple[str, ...],
    features: Callable[[dict], int],
    initial_carry: Callable,
    carry_type: type,
    min_length: int = 1,
) -> tuple[Any, Any, Any, Any, Any]:
    """``(xs, lengths, resets, carry, reset_carry)`` checked against the block's ``params``.

    ``xs (batch..., time, features(params))`` is cast to the params' dtype; ``carry`` is the
    fresh ``initial_carry`` when not given; ``reset_carry`` stays ``None`` when not given (each
    block has its own default). ``keys``: params keys that identify the block's params dict.
    """
    if not isinstance(params, dict) or any(k not in params for k in keys):
        raise ValueError(f"{fn}: params must be the dict that block.init returns (keys "
                         f"{', '.join(keys)}, ...); got {type(params).__name__}")  # fmt: skip
    xs = _checks.check_array(xs, "xs", fn, min_rank=2)
    _checks.check_features(xs, features(params), "xs", fn, "(batch..., time, {d})")
    if xs.shape[-2] == 0:
        raise ValueError(f"{fn}: xs has an empty time axis (shape {xs.shape}); need 1 step")
    xs = xs.astype(_checks.params_dtype(params, fn))
    batch_shape = xs.shape[:-2]
    lengths = _checks.check_lengths(lengths, batch_shape, xs.shape[-2], fn, low=min_length)
    if resets is not None:
        resets = _checks.check_resets(resets, xs.shape[:-1], fn, False)
    if reset_carry is not None and resets is None:
        raise ValueError(f"{fn}: reset_carry is the carry resets restart from, but no resets "
                         "were given; pass resets=, or leave out reset_carry")  # fmt: skip
    fresh = initial_carry(params, batch_shape)
    source = f"block.initial_carry(params, {batch_shape})"
    for name, given in (("carry", carry), ("reset_carry", reset_carry)):
        if given is not None:
            _checks.check_tree_like(given, fresh, name, fn, source)
    carry = fresh if carry is None else carry_type(*carry)
    reset_carry = None if reset_carry is None else carry_type(*reset_carry)
    return xs, lengths, resets, carry, reset_carry
