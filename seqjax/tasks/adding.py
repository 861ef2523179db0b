"""The adding problem (Hochreiter & Schmidhuber 1997; Le et al. 2015; Arjovsky et al. 2016).

Each input step has two channels: a value drawn from U(0, 1) and a marker. Exactly two steps are
marked, one in each half of the sequence; the target is the sum of the two marked values. A model
that ignores the input and always predicts 1 scores an MSE of 1/6 ~ 0.167 (the variance of a sum
of two U(0, 1) values), the baseline to beat. The dependency spans up to ``length`` steps.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

BASELINE_MSE = 1.0 / 6.0
INPUT_SIZE = 2


def batch(key: jax.Array, batch_size: int, length: int) -> tuple[jax.Array, jax.Array]:
    """A batch of the adding problem.

    Returns:
      ``xs (batch_size, length, 2)`` float32 (value, marker) and ``targets (batch_size,)``.
    """
    if length < 2:
        raise ValueError(
            f"adding.batch: length must be at least 2 (one marker per half); got {length}"
        )
    k_values, k_first, k_second = jax.random.split(key, 3)
    half = length // 2
    values = jax.random.uniform(k_values, (batch_size, length))
    first = jax.random.randint(k_first, (batch_size,), 0, half)
    second = jax.random.randint(k_second, (batch_size,), half, length)
    steps = jnp.arange(length)
    markers = (steps == first[:, None]) | (steps == second[:, None])
    targets = jnp.sum(jnp.where(markers, values, 0.0), axis=1)
    return jnp.stack([values, markers.astype(values.dtype)], axis=-1), targets
