"""Mixed precision: matmuls in bfloat16 (or float16), everything else in float32.

A precision policy in seqjax is carried by the params themselves, not by a flag: params whose
matrices are bfloat16 and whose vectors (biases, gains, peepholes) are float32 run

- every matmul with bfloat16 operands (the weight matrix and its input, cast to it) and a
  float32 result: the products are summed in float32 (``preferred_element_type``);
- the gate arithmetic, the carry (``h``, and the LSTM's cell state ``c``) and the outputs in
  float32, the dtype of the vectors (:func:`state_dtype`).

:func:`cast` makes such params from float32 ones. Training keeps float32 master weights: the
optimizer updates the float32 params and the loss casts them on every step (``fit(...,
precision="bfloat16")``), so the gradients come back float32 and small updates are not lost to
bfloat16's 8-bit mantissa.

Params cast whole (every leaf bfloat16) still run wholly in bfloat16, carry included, as
before; the policy is the mixed case.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from seqjax import _checks

Array = jax.Array

#: The names ``cast`` and ``fit(precision=)`` take, and the matmul dtype each stands for.
POLICIES = {"float32": None, "bfloat16": jnp.bfloat16, "float16": jnp.float16}


def compute_dtype(precision: str | Any | None, fn: str) -> Any | None:
    """The matmul dtype that ``precision`` names (``None`` or ``"float32"``: none, full
    precision), or a clear error naming ``fn``."""
    if precision is None:
        return None
    if isinstance(precision, str):
        _checks.check_choice(precision, tuple(POLICIES), "precision", fn)
        return POLICIES[precision]
    try:
        dtype = jnp.dtype(precision)
    except TypeError as err:
        raise TypeError(
            f"{fn}: precision must be one of {', '.join(POLICIES)} or None; got {precision!r}"
        ) from err
    if dtype == jnp.float32:
        return None
    if dtype not in (jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float16)):
        raise ValueError(
            f"{fn}: precision must be one of {', '.join(POLICIES)} or None; got {dtype}"
        )
    return dtype


def cast(params: Any, precision: str | Any = "bfloat16") -> Any:
    """``params`` with every floating matrix (a leaf of rank 2 or more) in the ``precision``'s
    dtype and every other leaf as it was.

    Args:
      params: float32 params (any pytree, e.g. ``cell.init(...)`` or a model's).
      precision: ``"bfloat16"`` (default), ``"float16"``, ``"float32"`` or ``None`` (both:
        ``params`` unchanged), or the dtype itself.

    Returns:
      The params the mixed policy runs on; differentiable, so a gradient taken through it
      reaches the float32 originals in float32.
    """
    dtype = compute_dtype(precision, "cast")
    if dtype is None:
        return params

    def one(leaf):
        if not hasattr(leaf, "dtype") or not jnp.issubdtype(leaf.dtype, jnp.floating):
            return leaf
        return leaf.astype(dtype) if jnp.ndim(leaf) >= 2 else leaf

    return jax.tree.map(one, params)


def matmul(x: Array, w: Array) -> Array:
    """``x @ w`` in ``w``'s dtype, summed in at least float32 when ``w`` is low precision.

    ``x (..., K)`` is cast to ``w (K, N)``'s dtype; the result ``(..., N)`` is float32 for a
    bfloat16 or float16 ``w`` and a float32 ``x`` (the mixed policy), ``w``'s dtype for params
    that are low precision throughout (``x`` low precision too), and the usual promotion in
    float32 and float64.
    """
    if w.dtype == x.dtype or not _is_low(w.dtype):
        return x @ w
    return jnp.matmul(
        x.astype(w.dtype), w, preferred_element_type=jnp.promote_types(x.dtype, jnp.float32)
    )


def state_dtype(params: Any) -> Any:
    """The dtype a cell keeps its carry, gates and outputs in: the widest floating dtype among
    ``params`` (float32 under the mixed policy, whose vectors are float32)."""
    return _checks.params_dtype(params, "initial_carry")


def _is_low(dtype: Any) -> bool:
    return jnp.dtype(dtype) in (jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float16))
