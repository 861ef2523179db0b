"""Weight initializers for recurrent cells, all in one place.

Each initializer has JAX's signature ``init(key, shape, dtype) -> array``. Cells call them once
per gate with the block's shape, ``(fan_in, hidden)`` for weights and ``(hidden,)`` for biases, so
"orthogonal" means each gate's recurrent matrix is orthogonal, and ``pytorch_uniform`` reads the
hidden size from the last axis.

Defaults of the built-in cells (documented in the README):

* input weights: ``lecun_normal`` (variance 1/fan_in), as in Flax;
* recurrent weights: ``orthogonal`` per gate, so the recurrent Jacobian starts with singular
  values 1 (Saxe et al. 2014), neither shrinking nor growing the gradient;
* biases: zeros, except the LSTM forget gate, whose bias is 1.0 (Gers et al. 2000;
  Jozefowicz et al. 2015) so that the cell starts by remembering.

``pytorch_uniform`` reproduces PyTorch's default (every weight and bias from U(-1/sqrt(H),
1/sqrt(H))), and ``identity`` with a ReLU cell gives the IRNN of Le et al. (2015).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypedDict

import jax
import jax.numpy as jnp

Initializer = Callable[[jax.Array, tuple[int, ...], Any], jax.Array]


class InitOptions(TypedDict, total=False):
    """The initialisation keywords of the built-in cells (``**init`` in their signatures).

    Attributes:
      init: the scheme, ``"default"`` (Lecun-normal input weights, orthogonal recurrent
        weights, zero biases) or ``"pytorch"`` (U(-1/sqrt(H), 1/sqrt(H)) everywhere).
      input_init: the initializer of ``w_ih``, overriding the scheme's.
      recurrent_init: the initializer of ``w_hh`` (cells with recurrent weights only).
      bias_init: the initializer of ``b_ih`` and ``b_hh``.
    """

    init: str
    input_init: Initializer | None
    recurrent_init: Initializer | None
    bias_init: Initializer | None


zeros: Initializer = jax.nn.initializers.zeros
lecun_normal = jax.nn.initializers.lecun_normal
glorot_uniform = jax.nn.initializers.glorot_uniform
normal = jax.nn.initializers.normal


def orthogonal(scale: float = 1.0) -> Initializer:
    """A (semi-)orthogonal matrix times ``scale``: all singular values equal ``scale``."""
    base = jax.nn.initializers.orthogonal(scale=scale)

    def init(key: jax.Array, shape: tuple[int, ...], dtype: Any = jnp.float32) -> jax.Array:
        # QR in float32 at least: bfloat16/float16 QR is inaccurate or unsupported.
        compute = jnp.promote_types(dtype, jnp.float32)
        return base(key, shape, compute).astype(dtype)

    return init


def identity(scale: float = 1.0) -> Initializer:
    """``scale`` times the identity: with ReLU, the IRNN of Le et al. (2015)."""

    def init(key: jax.Array, shape: tuple[int, ...], dtype: Any = jnp.float32) -> jax.Array:
        del key
        if len(shape) != 2 or shape[0] != shape[1]:
            raise ValueError(f"identity: needs a square (hidden, hidden) shape; got {shape}")
        return scale * jnp.eye(shape[0], dtype=dtype)

    return init


def pytorch_uniform() -> Initializer:
    """U(-1/sqrt(H), 1/sqrt(H)) with H the last axis: PyTorch's default for every RNN tensor."""

    def init(key: jax.Array, shape: tuple[int, ...], dtype: Any = jnp.float32) -> jax.Array:
        bound = 1.0 / jnp.sqrt(shape[-1])
        return jax.random.uniform(key, shape, dtype, -bound, bound)

    return init


def constant(value: float) -> Initializer:
    """Every entry equal to ``value`` (for example a forget-gate bias)."""

    def init(key: jax.Array, shape: tuple[int, ...], dtype: Any = jnp.float32) -> jax.Array:
        del key
        return jnp.full(shape, value, dtype)

    return init


def gate_blocks(
    key: jax.Array,
    initializer: Initializer,
    fan_in: int,
    hidden_size: int,
    num_gates: int,
    dtype: Any,
) -> jax.Array:
    """``num_gates`` blocks of shape ``(fan_in, hidden)`` drawn separately, concatenated on the
    last axis into the ``(fan_in, num_gates * hidden)`` layout the cells use."""
    keys = jax.random.split(key, num_gates)
    blocks = [initializer(k, (fan_in, hidden_size), dtype) for k in keys]
    return jnp.concatenate(blocks, axis=-1)


def bias_blocks(
    key: jax.Array, initializers: list[Initializer], hidden_size: int, dtype: Any
) -> jax.Array:
    """One ``(hidden,)`` block per gate, each from its own initializer, concatenated."""
    keys = jax.random.split(key, len(initializers))
    return jnp.concatenate(
        [init(k, (hidden_size,), dtype) for init, k in zip(initializers, keys, strict=True)]
    )
