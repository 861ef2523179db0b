"""Optimizers for recurrent networks: an optax chain with gradient clipping, a schedule, weight
decay, and a guard that skips a step whose gradients are not finite."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import optax

from seqjax import _checks

OPTIMIZERS: dict[str, Callable[..., optax.GradientTransformation]] = {
    "adam": optax.adam,
    "adamw": optax.adamw,
    "sgd": optax.sgd,
    "rmsprop": optax.rmsprop,
    "adagrad": optax.adagrad,
}
SCHEDULES = ("constant", "cosine")


def optimizer(
    name: str = "adam",
    learning_rate: float | optax.Schedule = 1e-3,
    *,
    clip_norm: float | None = None,
    clip_value: float | None = None,
    schedule: str | None = None,
    warmup_steps: int = 0,
    total_steps: int | None = None,
    weight_decay: float = 0.0,
    skip_nonfinite: bool = True,
    max_consecutive_nonfinite: int = 100,
    **kwargs: Any,
) -> optax.GradientTransformation:
    """An optax ``GradientTransformation`` for training recurrent networks.

    The chain is: clip (by global norm, Pascanu et al. 2013, or by value) -> the optimizer with
    its learning-rate schedule (and decoupled weight decay), all wrapped in
    ``optax.apply_if_finite`` so that a step whose gradients hold a NaN or Inf leaves the
    parameters unchanged and is counted (``state.notfinite_count``, ``state.total_notfinite``)
    instead of poisoning the weights.

    Args:
      name: ``"adam"``, ``"adamw"``, ``"sgd"``, ``"rmsprop"`` or ``"adagrad"``.
      learning_rate: the peak learning rate, or an optax schedule.
      clip_norm: rescale gradients whose global L2 norm exceeds this.
      clip_value: clip each gradient entry to ``[-clip_value, clip_value]``.
      schedule: ``None``/``"constant"``, or ``"cosine"``: linear warm-up over ``warmup_steps``,
        then cosine decay to 0 at ``total_steps`` (required).
      warmup_steps: linear warm-up from 0 (also with the constant schedule).
      weight_decay: decoupled weight decay (AdamW-style for adam; added to the update otherwise).
      skip_nonfinite: wrap in ``optax.apply_if_finite``.
      max_consecutive_nonfinite: after this many non-finite steps in a row, updates apply anyway
        (so that a diverged run shows NaNs rather than silently stalling).
      **kwargs: passed to the optax optimizer (``b1``, ``momentum``, ...).
    """
    fn = "optimizer"
    _checks.check_choice(name, tuple(OPTIMIZERS), "optimizer name", fn)
    for arg, value in (("clip_norm", clip_norm), ("clip_value", clip_value)):
        if value is not None:
            _checks.check_number(value, arg, fn, lambda v: v > 0, "a positive number or None")
    _checks.check_number(weight_decay, "weight_decay", fn, lambda w: w >= 0, ">= 0")
    _checks.check_int(warmup_steps, "warmup_steps", fn, low=0)
    if schedule is not None:
        _checks.check_choice(schedule, SCHEDULES, "schedule", fn)
    if callable(learning_rate):
        if schedule is not None or warmup_steps:
            raise ValueError(
                f"{fn}: learning_rate is already a schedule; do not also pass schedule= or "
                "warmup_steps="
            )
        lr = learning_rate
    else:
        _checks.check_number(learning_rate, "learning_rate", fn, lambda r: r >= 0, ">= 0")
        lr = _schedule(float(learning_rate), schedule, warmup_steps, total_steps, fn)

    parts = []
    if clip_norm is not None:
        parts.append(optax.clip_by_global_norm(clip_norm))
    if clip_value is not None:
        parts.append(optax.clip(clip_value))
    if name in ("adam", "adamw") and weight_decay:
        parts.append(optax.adamw(lr, weight_decay=weight_decay, **kwargs))
    elif name == "adamw":
        parts.append(optax.adamw(lr, weight_decay=0.0, **kwargs))
    else:
        if weight_decay:
            parts.append(optax.add_decayed_weights(weight_decay))
        parts.append(OPTIMIZERS[name](lr, **kwargs))
    chain = optax.chain(*parts)
    if skip_nonfinite:
        chain = optax.apply_if_finite(chain, max_consecutive_errors=max_consecutive_nonfinite)
    return chain


def _schedule(
    peak: float, schedule: str | None, warmup_steps: int, total_steps: int | None, fn: str
) -> float | optax.Schedule:
    if schedule == "cosine":
        if not isinstance(total_steps, int) or total_steps <= warmup_steps:
            raise ValueError(
                f"{fn}: schedule='cosine' needs total_steps > warmup_steps ({warmup_steps}); "
                f"got total_steps={total_steps!r}"
            )
        return optax.warmup_cosine_decay_schedule(0.0, peak, warmup_steps, total_steps, 0.0)
    if warmup_steps:
        return optax.join_schedules(
            [optax.linear_schedule(0.0, peak, warmup_steps), optax.constant_schedule(peak)],
            [warmup_steps],
        )
    return peak
