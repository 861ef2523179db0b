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
        return _split_loss(loss(model(params, batch, key), batch)), None

    gradient_step = _gradient_step(objective, optimizer, clip_norm)

    def step(state: TrainState, batch: Batch, key: jax.Array | None = None):
        state, _, metrics = gradient_step(state, None, batch, key)
        return state, metrics

    return jax.jit(step, donate_argnums=(0,) if donate else ())


def make_tbptt_step(
    model: Callable[[Params, Any, Batch, jax.Array | None], tuple[Any, Any]],
    loss: Callable[[Any, Batch], jax.Array | tuple[jax.Array, dict]],
    optimizer: optax.GradientTransformation,
    *,
    clip_norm: float | None = None,
    donate: bool = True,
) -> Callable[..., tuple[TrainState, Any, dict]]:
    """Truncated backpropagation through time: a jitted
    ``step(state, carry, chunk, key) -> (state, carry, metrics)`` for training on a long stream
    cut into chunks of k steps.

    ``model(params, carry, chunk, key) -> (final_carry, predictions)`` runs one chunk from
    ``carry``. The carry passed to the next chunk is the chunk's final carry with
    ``lax.stop_gradient``: the forward pass sees the whole stream, while gradients flow back at
    most k steps, so memory and time per update do not grow with the stream. Metrics as in
    :func:`make_train_step`.
    """

    def objective(params, carry, batch, key):
        final_carry, predictions = model(params, carry, batch, key)
        return _split_loss(loss(predictions, batch)), jax.lax.stop_gradient(final_carry)

    step = _gradient_step(objective, optimizer, clip_norm, with_carry=True)
    return jax.jit(step, donate_argnums=(0,) if donate else ())


def _split_loss(out):
    return out if isinstance(out, tuple) else (out, {})


def _gradient_step(objective, optimizer, clip_norm, with_carry=False):
    """``step(state, carry, batch, key) -> (state, carry, metrics)`` around ``objective``, which
    returns ``((loss, extra_metrics), new_carry)``."""

    def step(state: TrainState, carry, batch: Batch, key: jax.Array | None = None):
        def value(params):
            args = (params, carry, batch, key) if with_carry else (params, batch, key)
            (loss_value, extra), new_carry = objective(*args)
            return loss_value, (extra, new_carry)

        (loss_value, (extra, new_carry)), grads = jax.value_and_grad(value, has_aux=True)(
            state.params
        )
        grad_norm = global_norm(grads)
        updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        metrics = {
            "loss": loss_value,
            "grad_norm": grad_norm,
            "nonfinite": (~jnp.isfinite(grad_norm)).astype(jnp.float32),
            **extra,
        }
        if clip_norm is not None:
            metrics["clipped"] = (grad_norm > clip_norm).astype(jnp.float32)
        return TrainState(params, opt_state, state.step + 1), new_carry, metrics

    return step
