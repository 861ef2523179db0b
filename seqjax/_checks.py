"""Input validation shared by the public functions.

Every check runs on shapes and dtypes before any tracing work, and every message names the
function, the argument, what was expected and what came, so a user never meets an XLA traceback
for a mistake in their call.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from seqjax.types import Cell


def is_concrete(x: Any) -> bool:
    """True when the values of ``x`` can be read on the host (not a tracer under jit/vmap)."""
    return not isinstance(x, jax.core.Tracer)


def check_cell(cell: Any, fn: str) -> None:
    if not isinstance(cell, Cell):
        raise TypeError(
            f"{fn}: cell must be a seqjax.Cell (for example seqjax.lstm(hidden_size=64)); "
            f"got {type(cell).__name__}"
        )


def is_int(value: Any) -> bool:
    """A Python or NumPy integer, and not a bool."""
    return isinstance(value, int | np.integer) and not isinstance(value, bool)


def is_number(value: Any) -> bool:
    """A real Python or NumPy number, and not a bool."""
    return isinstance(value, int | float | np.integer | np.floating) and not isinstance(value, bool)


def check_int(
    value: Any, name: str, fn: str, *, low: int | None = None, high: int | None = None
) -> int:
    """An integer in ``[low, high]`` (either bound optional)."""
    if (
        not is_int(value)
        or (low is not None and value < low)
        or (high is not None and value > high)
    ):
        if low is not None and high is not None:
            expected = f"an integer in [{low}, {high}]"
        elif low == 1:
            expected = "a positive integer"
        else:
            expected = "an integer" + (f" >= {low}" if low is not None else "")
        raise ValueError(f"{fn}: {name} must be {expected}; got {value!r}")
    return int(value)


def check_positive_int(value: Any, name: str, fn: str) -> int:
    return check_int(value, name, fn, low=1)


def check_number(value: Any, name: str, fn: str, ok: Any, expected: str) -> float:
    """A finite real number for which ``ok(value)`` holds; ``expected`` says which, in the
    message (``"a probability in [0, 1)"``)."""
    if not is_number(value) or not np.isfinite(value) or not ok(value):
        raise ValueError(f"{fn}: {name} must be {expected}; got {value!r}")
    return float(value)


def check_bool(value: Any, name: str, fn: str) -> bool:
    if not isinstance(value, bool | np.bool_):
        raise TypeError(f"{fn}: {name} must be True or False; got {value!r}")
    return bool(value)


def check_choice(value: Any, choices: tuple[str, ...], name: str, fn: str) -> str:
    if value not in choices:
        raise ValueError(f"{fn}: unknown {name} {value!r}; expected one of {', '.join(choices)}")
    return value


def check_array(x: Any, name: str, fn: str, *, min_rank: int) -> jax.Array:
    """Converts ``x`` to a JAX array with a floating dtype and at least ``min_rank`` axes."""
    if x is None:
        raise TypeError(f"{fn}: {name} is None; expected an array")
    if not hasattr(x, "dtype"):
        try:
            x = np.asarray(x)
        except Exception as err:
            raise TypeError(f"{fn}: {name} must be an array; got {type(x).__name__}") from err
    if not jnp.issubdtype(x.dtype, jnp.floating):
        raise TypeError(
            f"{fn}: {name} must have a floating dtype (float32, float64, bfloat16, float16); "
            f"got {x.dtype}. Cast it first, e.g. {name}.astype(jnp.float32)"
        )
    if x.ndim < min_rank:
        raise ValueError(f"{fn}: {name} must have at least {min_rank} axes; got shape {x.shape}")
    return jnp.asarray(x)


def check_features(x: jax.Array, expected: int | None, name: str, fn: str, hint: str) -> None:
    if expected is not None and x.shape[-1] != expected:
        raise ValueError(
            f"{fn}: {name} has {x.shape[-1]} features (shape {x.shape}) but the params expect "
            f"{expected}; pass inputs of shape {hint.format(d=expected)}"
        )


def params_dtype(params: Any, fn: str) -> Any:
    """The dtype the computation runs in: the common dtype of the floating parameters."""
    leaves = [leaf for leaf in jax.tree.leaves(params) if hasattr(leaf, "dtype")]
    floats = [leaf.dtype for leaf in leaves if jnp.issubdtype(leaf.dtype, jnp.floating)]
    if not floats:
        raise TypeError(
            f"{fn}: params hold no floating arrays; expected the result of cell.init(...); "
            f"got {type(params).__name__}"
        )
    return jnp.result_type(*floats)


def expected_input_size(cell: Any, params: Any, fn: str) -> int | None:
    """The input features ``params`` expect, or None when the cell cannot tell."""
    if cell.input_size is None:
        return None
    try:
        return int(cell.input_size(params))
    except (KeyError, TypeError, IndexError, AttributeError) as err:
        raise TypeError(
            f"{fn}: params do not fit cell {cell.name!r}; expected the result of "
            f"cell.init(key, input_size); got {type(params).__name__}"
        ) from err


def check_step(cell: Any, params: Any, carry: Any, x: Any, fn: str) -> None:
    """One abstract step (shapes only: no FLOPs, no compilation), so that params of another
    size than the cell fail here with a named error instead of inside the scan."""
    try:
        jax.eval_shape(lambda p, c, x_t: cell.recur(p, c, cell.project(p, x_t)), params, carry, x)
    except (TypeError, ValueError, IndexError, KeyError) as err:
        reason = f"{type(err).__name__}: {str(err).rstrip('.')}"
        raise ValueError(
            f"{fn}: params do not fit cell {cell.name!r} (output_size {cell.output_size}): one "
            f"step fails with {reason}. Expected params from this cell's init(key, input_size); "
            f"if they are, the error is in the cell's own project/recur"
        ) from err


def checked_carry(
    cell: Any, params: Any, carry: Any, xs: Any, batch_shape: tuple[int, ...], dtype: Any, fn: str
) -> Any:
    """The carry a run of ``cell`` over ``xs`` starts from (zeros when ``carry`` is None),
    checked against the cell, and one abstract step traced: mis-sized params or a broken user
    cell fail here with a named error, not inside a scan."""
    if carry is None:
        carry = cell.initial_carry(params, batch_shape)
    else:
        check_carry(cell, params, carry, batch_shape, fn)
    x_t = jax.ShapeDtypeStruct((*batch_shape, xs.shape[-1]), dtype)
    check_step(cell, params, carry, x_t, fn)
    return carry


def check_carry(
    cell: Any, params: Any, carry: Any, batch_shape: tuple[int, ...], fn: str, name: str = "carry"
) -> None:
    """The carry must have the structure, shapes and dtypes of ``cell.initial_carry``."""
    expected = jax.eval_shape(lambda p: cell.initial_carry(p, batch_shape), params)
    check_tree_like(carry, expected, name, fn, f"cell.initial_carry(params, {batch_shape})")


def check_tree_like(value: Any, expected: Any, name: str, fn: str, source: str) -> None:
    got_def = jax.tree.structure(value)
    want_def = jax.tree.structure(expected)
    if got_def != want_def:
        raise ValueError(
            f"{fn}: {name} has the wrong structure: expected {want_def}, got {got_def}; "
            f"build it with {source}"
        )
    for got, want in zip(jax.tree.leaves(value), jax.tree.leaves(expected), strict=True):
        shape = np.shape(got)
        if tuple(shape) != tuple(want.shape):
            raise ValueError(
                f"{fn}: {name} has a leaf of shape {tuple(shape)} where {tuple(want.shape)} is "
                f"expected; build it with {source}"
            )
        dtype = getattr(got, "dtype", None)
        if dtype != want.dtype:
            raise TypeError(
                f"{fn}: {name} has a leaf of dtype {dtype} where {want.dtype} (the params' dtype) "
                f"is expected; cast it with .astype({want.dtype})"
            )


def check_lengths(
    lengths: Any, batch_shape: tuple[int, ...], num_steps: int, fn: str, *, low: int = 1
) -> jax.Array | None:
    """``lengths`` is an integer array of shape ``batch_shape`` with values in
    ``[low, num_steps]`` (a streamed chunk may hold no step of a row whose stream has ended).

    Values are checked whenever they are concrete; under ``jit`` only shape and dtype can be.
    """
    if lengths is None:
        return None
    if not hasattr(lengths, "dtype"):
        lengths = np.asarray(lengths)
    if not jnp.issubdtype(lengths.dtype, jnp.integer):
        raise TypeError(
            f"{fn}: lengths must be an integer array; got dtype {lengths.dtype}. "
            f"Pass e.g. jnp.asarray(lengths, dtype=jnp.int32)"
        )
    if tuple(lengths.shape) != tuple(batch_shape):
        raise ValueError(
            f"{fn}: lengths must have the batch shape {tuple(batch_shape)} (one length per "
            f"sequence); got shape {tuple(lengths.shape)}"
        )
    if is_concrete(lengths) and np.size(lengths) > 0:
        values = np.asarray(lengths)
        smallest, high = int(values.min()), int(values.max())
        if smallest < low or high > num_steps:
            bad = smallest if smallest < low else high
            raise ValueError(
                f"{fn}: lengths must lie in [{low}, {num_steps}] (the number of time steps); "
                f"got a length of {bad}"
            )
    return jnp.asarray(lengths)


def check_resets(resets: Any, shape: tuple[int, ...], fn: str, time_major: bool) -> jax.Array:
    """``resets``: booleans shaped like ``xs`` without its feature axis."""
    if not hasattr(resets, "dtype"):
        resets = np.asarray(resets)
    layout = "(time, batch...)" if time_major else "(batch..., time)"
    if resets.dtype != np.bool_:
        raise TypeError(
            f"{fn}: resets must be a boolean array (True where a new sequence starts); got dtype "
            f"{resets.dtype}. Pass e.g. episode_starts.astype(bool)"
        )
    if tuple(resets.shape) != tuple(shape):
        raise ValueError(
            f"{fn}: resets must have the shape of xs without its feature axis, {layout} = "
            f"{tuple(shape)}; got shape {tuple(resets.shape)}"
        )
    return jnp.asarray(resets)


def check_parallel(cell: Any, fn: str) -> None:
    """``parallel=True`` needs a cell whose state evolves linearly (``cell.linear``) or one
    with whole-sequence forms (``cell.sequence``: the mLSTM)."""
    forms = getattr(cell, "sequence", None)
    if cell.linear is None and (forms is None or forms.step is not cell.recur):
        raise ValueError(
            f"{fn}: parallel=True needs a cell whose state evolves linearly (cell.linear: "
            f"min_gru, min_lstm, lru) or one with whole-sequence forms (cell.sequence: "
            f"mlstm); cell {cell.name!r} has neither. Pass parallel=False"
        )


def check_batch_shape(batch_shape: Any, fn: str) -> tuple[int, ...]:
    """``batch_shape``: a tuple of sizes (``(32,)``), or one int for a single batch axis."""
    if isinstance(batch_shape, int | np.integer) and not isinstance(batch_shape, bool):
        batch_shape = (batch_shape,)
    try:
        shape = tuple(batch_shape)
    except TypeError:
        shape = None
    if shape is None or not all(
        isinstance(d, int | np.integer) and not isinstance(d, bool) and d >= 0 for d in shape
    ):
        raise TypeError(
            f"{fn}: batch_shape must be a tuple of sizes, e.g. (32,) or (), or one int; "
            f"got {batch_shape!r}"
        )
    return tuple(int(d) for d in shape)
