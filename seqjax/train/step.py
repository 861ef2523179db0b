"""One training step: loss, gradients, clipping statistics and the optimizer update, jitted."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

Params = Any
Batch = Any


class TrainState(NamedTuple):
    """What a training step carries: params, optimizer state and the step count (an array,
    so that counting never re-traces)."""

    params: Params
    opt_state: optax.OptState
    step: jax.Array

    @classmethod
    def create(cls, params: Params, optimizer: optax.GradientTransformation) -> TrainState:
        return cls(params, optimizer.init(params), jnp.zeros((), jnp.int32))


def global_norm(tree: Any) -> jax.Array:
    """The L2 norm of all the leaves of ``tree`` together (what clip_by_global_norm measures)."""
    leaves = jax.tree.leaves(tree)
    return jnp.sqrt(sum(jnp.sum(jnp.square(leaf.astype(jnp.float32))) for leaf in leaves))


def make_train_step(
    model: Callable[[Params, Batch, jax.Array | None], Any],
    loss: Callable[[Any, Batch], jax.Array | tuple[jax.Array, dict]],
    optimizer: optax.GradientTransformation,
    *,
    clip_norm: float | None = None,
    donate: bool = True,
) -> Callable[[TrainState, Batch, jax.Array | None], tuple[TrainState, dict]]:
    """A jitted ``step(state, batch, key) -> (state, metrics)``.

    Args:
      model: ``model(params, batch, key) -> predictions``; ``key`` is None or a PRNG key for
        dropout.
      loss: ``loss(predictions, batch) -> scalar`` or ``(scalar, metrics dict)``.
      optimizer: e.g. ``seqjax.train.optimizer(clip_norm=1.0)``.
      clip_norm: the optimizer's clipping threshold, to report whether clipping fired.
      donate: donate the state's buffers to the step (updated in place, no copy).

    Metrics (device arrays: reading them is the caller's choice, the step forces no host sync):
    ``loss``, ``grad_norm`` (global L2 norm before clipping), ``clipped`` (1.0 if
    ``grad_norm > clip_norm``), ``nonfinite`` (1.0 if the gradients held a NaN or Inf; with
    ``optimizer(skip_nonfinite=True)`` that step left the params unchanged), and whatever
    ``loss`` returned.
    """

    def objective(params, batch, key):
        out = loss(model(params, batch, key), batch)
        value, extra = out if isinstance(out, tuple) else (out, {})
        return value, extra

    def step(state: TrainState, batch: Batch, key: jax.Array | None = None):
        (value, extra), grads = jax.value_and_grad(objective, has_aux=True)(
            state.params, batch, key
        )
        grad_norm = global_norm(grads)
        updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        metrics = {
            "loss": value,
            "grad_norm": grad_norm,
            "nonfinite": (~jnp.isfinite(grad_norm)).astype(jnp.float32),
            **extra,
        }
        if clip_norm is not None:
            metrics["clipped"] = (grad_norm > clip_norm).astype(jnp.float32)
        return TrainState(params, opt_state, state.step + 1), metrics

    return jax.jit(step, donate_argnums=(0,) if donate else ())
