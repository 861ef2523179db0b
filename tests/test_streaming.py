"""Streaming against its definition: chunks fed in order, or steps one at a time, give what one
``layer.apply`` over the whole sequence gives (outputs and final carry), with lengths and
resets, and compile once per input shape."""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import seqjax

B, T, D = 3, 13, 3
LENGTHS = np.array([13, 8, 5])
RESETS = np.zeros((B, T), bool)
RESETS[0, [4, 9]] = True
RESETS[1, [2]] = True

LAYERS = {
    "lstm": lambda: seqjax.rnn(seqjax.lstm(5)),
    "gru_over_rnn": lambda: seqjax.stack(
        seqjax.rnn(seqjax.gru(4)), seqjax.rnn(seqjax.simple_rnn(5)), dropout=0.3
    ),
    "lru_parallel": lambda: seqjax.rnn(seqjax.lru(4, D), parallel=True),
    "lstm_time_major": lambda: seqjax.rnn(seqjax.lstm(4), time_major=True),
}


def chunk_bounds(seed: int) -> list[tuple[int, int]]:
    """Random chunk sizes (1 to 5 steps) covering the T steps."""
    rng = np.random.default_rng(seed)
    bounds, start = [], 0
    while start < T:
        end = min(T, start + int(rng.integers(1, 6)))
        bounds.append((start, end))
        start = end
    return bounds


def chunk_lengths(start: int, end: int) -> np.ndarray:
    """How many of the steps ``start .. end - 1`` are within each row's length."""
    return np.clip(LENGTHS - start, 0, end - start)


def assert_close(actual, expected, tol):
    chex.assert_trees_all_close(actual, expected, rtol=tol, atol=tol)


# float32 where the native kernels run the chunks (lstm, gru, rnn); float64 everywhere.
CHUNK_CASES = [(name, "float64") for name in LAYERS] + [
    ("lstm", "float32"),
    ("gru_over_rnn", "float32"),
]


@pytest.mark.parametrize(("name", "dtype"), CHUNK_CASES)
def test_chunks_of_random_sizes_equal_the_full_apply(name, dtype):
    with jax.enable_x64(dtype == "float64"):
        layer = LAYERS[name]()
        params = layer.init(jax.random.key(0), D, jnp.dtype(dtype))
        xs = jax.random.normal(jax.random.key(1), (B, T, D), dtype)
        time_major = layer.time_major
        swap = (lambda a: jnp.swapaxes(a, 0, 1)) if time_major else (lambda a: a)
        full = layer.apply(params, swap(xs), lengths=LENGTHS, resets=swap(jnp.asarray(RESETS)))
        streamer = seqjax.stream(layer, pad_to=4 if name == "lstm" else None)
        carry, pieces = streamer.start(params, (B,)), []
        for start, end in chunk_bounds(seed=7):
            carry, ys = streamer.feed(
                params, carry, swap(xs[:, start:end]), lengths=chunk_lengths(start, end),
                resets=swap(jnp.asarray(RESETS[:, start:end])),
            )  # fmt: skip
            pieces.append(swap(ys))
        tol = 1e-12 if dtype == "float64" else 2e-6
        assert_close(carry, full[0], tol)
        assert_close(swap(jnp.concatenate(pieces, axis=1)), full[1], tol)


@pytest.mark.parametrize("prepared", [False, True], ids=["xla", "prepared"])
@pytest.mark.parametrize("name", ["lstm", "gru_over_rnn"])
def test_steps_one_at_a_time_equal_the_full_apply(name, prepared):
    layer = LAYERS[name]()
    params = layer.init(jax.random.key(2), D)
    xs = jax.random.normal(jax.random.key(3), (B, T, D))
    final, ys = layer.apply(params, xs, resets=jnp.asarray(RESETS))
    streamer = seqjax.stream(layer)
    step_params = streamer.prepare(params) if prepared else params
    carry, outs = None, []
    for t in range(T):
        carry, y = streamer.step(step_params, carry, xs[:, t], reset=jnp.asarray(RESETS[:, t]))
        outs.append(y)
    assert_close(carry, final, 2e-6)
    assert_close(jnp.stack(outs, axis=1), ys, 2e-6)


def test_prepare_packs_native_weights_where_a_kernel_steps_the_layer():
    if not seqjax.native.available():
        pytest.skip(f"native kernels unavailable: {seqjax.native.unavailable_reason()}")
    layer = seqjax.stack(seqjax.rnn(seqjax.lstm(4)), seqjax.rnn(seqjax.lru(4, 4)))
    prepared = seqjax.stream(layer).prepare(layer.init(jax.random.key(0), D))
    assert isinstance(prepared.weights[0], seqjax.native.Weights)
    assert prepared.weights[1] is None  # the LRU has no kernel: its XLA step runs


def test_one_compilation_per_input_shape():
    """``step`` traces once for a whole stream; ``feed`` with ``pad_to`` once for every chunk
    size up to ``pad_to``."""
    cell = seqjax.gru(6)
    traced_cell = cell._replace(recur=chex.assert_max_traces(cell.recur, n=1))
    streamer = seqjax.stream(seqjax.rnn(traced_cell))
    params = cell.init(jax.random.key(0), D)
    xs = np.random.default_rng(0).standard_normal((40, 1, D)).astype(np.float32)
    carry = streamer.start(params, (1,))
    for x_t in xs:
        carry, _ = streamer.step(params, carry, x_t)

    layer = seqjax.rnn(seqjax.lstm(5))
    counted = layer._replace(apply=chex.assert_max_traces(layer.apply, n=1))
    streamer = seqjax.stream(counted, pad_to=8)
    params = layer.init(jax.random.key(0), D)
    carry = streamer.start(params, (2,))
    for size in (1, 5, 8, 3, 7, 2):
        carry, ys = streamer.feed(params, carry, jnp.ones((2, size, D)))
        assert ys.shape == (2, size, 5)


def test_layers_that_read_the_sequence_from_the_end_are_refused():
    forward = seqjax.rnn(seqjax.lstm(4))
    with pytest.raises(ValueError, match="stream: layer is bidirectional"):
        seqjax.stream(seqjax.bidirectional(forward, seqjax.rnn(seqjax.lstm(4))))
    with pytest.raises(ValueError, match=r"layer\.layers\[1\] was built with reverse=True"):
        seqjax.stream(seqjax.stack(forward, seqjax.rnn(seqjax.gru(4), reverse=True)))
    with pytest.raises(TypeError, match="stream: layer must be a seqjax Layer"):
        seqjax.stream(seqjax.lstm(4))
    with pytest.raises(ValueError, match="pad_to"):
        seqjax.stream(forward, pad_to=0)


def test_bad_chunks_and_steps_get_named_errors():
    layer = seqjax.rnn(seqjax.lstm(4))
    params = layer.init(jax.random.key(0), D)
    streamer = seqjax.stream(layer)
    carry = streamer.start(params, (2,))
    with pytest.raises(ValueError, match=r"Stream\.feed: xs has no time steps"):
        streamer.feed(params, carry, jnp.ones((2, 0, D)))
    with pytest.raises(ValueError, match=r"Stream\.feed: resets must have the shape"):
        streamer.feed(params, carry, jnp.ones((2, 4, D)), resets=jnp.zeros((2, 3), bool))
    with pytest.raises(TypeError, match=r"Stream\.feed: resets must be a boolean array"):
        streamer.feed(params, carry, jnp.ones((2, 4, D)), resets=jnp.zeros((2, 4)))
    with pytest.raises(ValueError, match=r"Stream\.feed: lengths"):
        streamer.feed(params, carry, jnp.ones((2, 4, D)), lengths=np.array([5, 1]))
    with pytest.raises(ValueError, match=r"Stream\.step: x_t has 2 features"):
        streamer.step(params, carry, jnp.ones((2, 2)))
    with pytest.raises(ValueError, match=r"Stream\.step: carry"):
        streamer.step(params, carry, jnp.ones((3, D)))
    with pytest.raises(ValueError, match=r"Stream\.step: reset must be booleans of shape \(2,\)"):
        streamer.step(params, carry, jnp.ones((2, D)), reset=jnp.zeros((3,), bool))
