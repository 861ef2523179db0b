"""The copy-memory task (Hochreiter & Schmidhuber 1997; Arjovsky, Shah & Bengio 2016).

A sequence of ``T + 20`` symbols: 10 data symbols drawn uniformly from {1, ..., 8}, then ``T - 1``
blanks (0), a delimiter (9), and 10 more blanks. At the last 10 steps the model must output the
10 data symbols, in order; at every other step, a blank. Memorising nothing but the format
(blanks, then a uniform guess over 8 symbols) scores a cross-entropy of ``10 ln 8 / (T + 20)``
per step, the baseline to beat.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

NUM_SYMBOLS = 10  # 0 blank, 1-8 data, 9 delimiter: inputs are one-hot over these
NUM_DATA = 8
COPY_LENGTH = 10
BLANK, DELIMITER = 0, 9


def sequence_length(length: int) -> int:
    return length + 2 * COPY_LENGTH


def baseline_cross_entropy(length: int) -> float:
    """Per-step cross-entropy (nats) of the memoryless strategy."""
    return COPY_LENGTH * math.log(NUM_DATA) / sequence_length(length)


def batch(key: jax.Array, batch_size: int, length: int) -> tuple[jax.Array, jax.Array]:
    """A batch of the copy task with delay ``length`` (T).

    Returns:
      ``inputs (batch_size, T + 20, 10)`` one-hot float32 and ``targets (batch_size, T + 20)``
      integer symbols.
    """
    if length < 1:
        raise ValueError(f"copy.batch: length must be at least 1; got {length}")
    total = sequence_length(length)
    data = jax.random.randint(key, (batch_size, COPY_LENGTH), 1, NUM_DATA + 1)
    blanks = jnp.zeros((batch_size, length - 1), jnp.int32)
    tail = jnp.zeros((batch_size, COPY_LENGTH), jnp.int32)
    delimiter = jnp.full((batch_size, 1), DELIMITER, jnp.int32)
    symbols = jnp.concatenate([data, blanks, delimiter, tail], axis=1)
    targets = jnp.concatenate(
        [jnp.zeros((batch_size, total - COPY_LENGTH), jnp.int32), data], axis=1
    )
    return jax.nn.one_hot(symbols, NUM_SYMBOLS), targets
