"""Losses and metrics for sequences, masked by ``lengths``.

Shapes: ``logits (batch, time, classes)``, ``labels (batch, time)`` integers, ``lengths (batch,)``
(or ``None`` when every step counts). Means are over the valid steps of the whole batch, so a
long sequence weighs more than a short one, as in a per-token language-model loss.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from seqjax import _checks

Array = jax.Array


class RootMean(NamedTuple):
    """A metric reported as the square root of a mean over examples, such as an RMSE: return
    ``RootMean(mean_squared_error)`` from ``fit``'s ``metrics``. ``fit`` evaluates its held-out
    set in chunks; it averages ``.mean`` over them (weighted by their examples) and then takes
    the root, so the report is the whole set's RMSE, not a mean of the chunks' RMSEs."""

    mean: Array


def _check_labels(logits: Array, labels: Array, fn: str) -> None:
    """Integer ``labels`` of shape ``logits.shape[:-1]``, in ``[0, classes)`` when concrete."""
    if not jnp.issubdtype(labels.dtype, jnp.integer):
        raise TypeError(f"{fn}: labels must be integer class indices; got dtype {labels.dtype}")
    if labels.shape != logits.shape[:-1]:
        raise ValueError(
            f"{fn}: labels must have the shape of logits without its class axis, "
            f"{logits.shape[:-1]}; got {labels.shape}"
        )
    if _checks.is_concrete(labels) and labels.size:
        low, high, classes = int(np.min(labels)), int(np.max(labels)), logits.shape[-1]
        if low < 0 or high >= classes:
            raise ValueError(
                f"{fn}: labels must lie in [0, {classes}) (logits have {classes} classes); "
                f"got {low if low < 0 else high}"
            )


def _check_sequences(ys: Array, lengths: Array | None, fn: str, name: str = "ys") -> Array | None:
    """``ys (batch, time, ...)`` and ``lengths (batch,)`` in ``[1, time]``."""
    if ys.ndim < 2:
        raise ValueError(f"{fn}: {name} must be (batch, time, ...); got shape {ys.shape}")
    return _checks.check_lengths(lengths, ys.shape[:1], ys.shape[1], fn)


def step_mask(lengths: Array | None, batch: int, steps: int) -> Array:
    """``(batch, time)`` float mask: 1 on steps ``t < length``."""
    if lengths is None:
        return jnp.ones((batch, steps))
    return (jnp.arange(steps)[None, :] < jnp.asarray(lengths)[:, None]).astype(jnp.float32)


def _masked_mean(values: Array, mask: Array) -> Array:
    return jnp.sum(values * mask) / jnp.maximum(jnp.sum(mask), 1.0)


def sequence_cross_entropy(logits: Array, labels: Array, lengths: Array | None = None) -> Array:
    """Mean softmax cross-entropy (nats) over the valid steps.

    ``logits (batch, time, classes)``, ``labels (batch, time)`` integers."""
    logits, labels = jnp.asarray(logits), jnp.asarray(labels)
    _check_labels(logits, labels, "sequence_cross_entropy")
    lengths = _check_sequences(labels, lengths, "sequence_cross_entropy", "labels")
    losses = optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), labels)
    return _masked_mean(losses, step_mask(lengths, *labels.shape))


def sequence_accuracy(logits: Array, labels: Array, lengths: Array | None = None) -> Array:
    """Fraction of valid steps whose arg-max class is the label."""
    logits, labels = jnp.asarray(logits), jnp.asarray(labels)
    _check_labels(logits, labels, "sequence_accuracy")
    lengths = _check_sequences(labels, lengths, "sequence_accuracy", "labels")
    hits = (jnp.argmax(logits, axis=-1) == labels).astype(jnp.float32)
    return _masked_mean(hits, step_mask(lengths, *labels.shape))


def bits_per_character(cross_entropy_nats: Array) -> Array:
    """A per-character cross-entropy in nats, in bits."""
    return cross_entropy_nats / math.log(2.0)


def last_valid(ys: Array, lengths: Array | None = None) -> Array:
    """Each sequence's output at its own last valid step: ``(batch, time, F) -> (batch, F)``."""
    lengths = _check_sequences(ys, lengths, "last_valid")
    if lengths is None:
        return ys[:, -1]
    index = jnp.asarray(lengths)[:, None, None] - 1
    return jnp.take_along_axis(ys, jnp.broadcast_to(index, (ys.shape[0], 1, ys.shape[2])), 1)[:, 0]


def mean_pool(ys: Array, lengths: Array | None = None) -> Array:
    """Mean of each sequence's outputs over its valid steps: ``(batch, time, F) -> (batch, F)``."""
    lengths = _check_sequences(ys, lengths, "mean_pool")
    mask = step_mask(lengths, ys.shape[0], ys.shape[1]).astype(ys.dtype)[..., None]
    return jnp.sum(ys * mask, axis=1) / jnp.maximum(jnp.sum(mask, axis=1), 1.0)


def classification_cross_entropy(logits: Array, labels: Array) -> Array:
    """Mean cross-entropy of one prediction per sequence: ``logits (batch, classes)``."""
    logits, labels = jnp.asarray(logits), jnp.asarray(labels)
    _check_labels(logits, labels, "classification_cross_entropy")
    return jnp.mean(
        optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), labels)
    )


def classification_accuracy(logits: Array, labels: Array) -> Array:
    return jnp.mean((jnp.argmax(logits, axis=-1) == labels).astype(jnp.float32))


def mse(predictions: Array, targets: Array, lengths: Array | None = None) -> Array:
    """Mean squared error; with ``lengths``, over the valid steps of ``(batch, time, ...)``.

    ``predictions`` and ``targets`` must have one shape: a ``(batch, 1)`` prediction against
    ``(batch,)`` targets would broadcast to ``(batch, batch)`` and train on the wrong loss."""
    predictions, targets = jnp.asarray(predictions), jnp.asarray(targets)
    if predictions.shape != targets.shape:
        raise ValueError(
            f"mse: predictions and targets must have the same shape; got {predictions.shape} "
            f"and {targets.shape} (reshape one, e.g. predictions[..., 0] or targets[..., None])"
        )
    if lengths is not None:
        lengths = _check_sequences(predictions, lengths, "mse", "predictions")
    errors = jnp.square(predictions.astype(jnp.float32) - targets)
    if lengths is None:
        return jnp.mean(errors)
    mask = step_mask(lengths, errors.shape[0], errors.shape[1])
    per_step = errors.reshape((*errors.shape[:2], -1)).mean(axis=-1)
    return _masked_mean(per_step, mask)


def rmse(predictions: Array, targets: Array, lengths: Array | None = None) -> Array:
    return jnp.sqrt(mse(predictions, targets, lengths))
