"""``seqjax demo``: unrolls each built-in cell (shapes, compile time, forward and backward
timings), then trains a tanh RNN, a GRU and an LSTM on the adding problem with
:func:`seqjax.train.fit` and reports their error against the trivial baseline."""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import jax
import jax.numpy as jnp

import seqjax
from seqjax.cli.common import CELLS
from seqjax.tasks import adding


def _median_ms(fn: Callable[[], object], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(1e3 * (time.perf_counter() - start))
    return statistics.median(times)


def show_cells(batch: int, steps: int, size: int, repeats: int) -> None:
    print(f"Unrolling each cell over xs of shape (batch={batch}, time={steps}, features={size}), "
          f"hidden {size}, float32, on {jax.default_backend()}:")  # fmt: skip
    print(f"  {'cell':<6}{'ys':>18}{'final carry':>26}{'compile ms':>12}"
          f"{'fwd ms':>9}{'fwd+bwd ms':>12}")  # fmt: skip
    xs = jax.random.normal(jax.random.key(0), (batch, steps, size))
    for name, make in CELLS.items():
        cell = make(size)
        params = cell.init(jax.random.key(1), size)
        forward = jax.jit(lambda p, x, cell=cell: seqjax.unroll(cell, p, x))
        loss = lambda p, x, cell=cell: jnp.sum(seqjax.unroll(cell, p, x)[1] ** 2)  # noqa: E731
        backward = jax.jit(jax.grad(loss))
        start = time.perf_counter()
        final, ys = jax.block_until_ready(forward(params, xs))
        jax.block_until_ready(backward(params, xs))
        compile_ms = 1e3 * (time.perf_counter() - start)
        fwd = _median_ms(lambda: forward(params, xs), repeats)  # noqa: B023
        bwd = _median_ms(lambda: backward(params, xs), repeats)  # noqa: B023
        carry = ", ".join(str(tuple(leaf.shape)) for leaf in jax.tree.leaves(final))
        print(f"  {name:<6}{tuple(ys.shape)!s:>18}{carry:>26}{compile_ms:>12.0f}"
              f"{fwd:>9.1f}{bwd:>12.1f}")  # fmt: skip


def train_adding(
    cell_name: str, length: int, hidden: int, steps: int, batch: int, seed: int
) -> float:
    """Trains ``cell -> last output -> linear`` on the adding problem with
    :func:`seqjax.train.fit`; returns the MSE on 2048 held-out sequences."""
    from seqjax import train

    layer = seqjax.rnn(CELLS[cell_name](hidden))
    k_layer, k_out, k_data, k_test = jax.random.split(jax.random.key(seed), 4)
    params = {
        "rnn": layer.init(k_layer, adding.INPUT_SIZE),
        "w_out": jax.random.normal(k_out, (hidden,)) / jnp.sqrt(hidden),
        "b_out": jnp.ones(()),  # start at the baseline's prediction
    }

    def predict(params, batch, key):
        del key  # no dropout
        _, ys = layer.apply(params["rnn"], batch["inputs"])
        return ys[:, -1] @ params["w_out"] + params["b_out"]

    def mse(predictions, batch):
        return jnp.mean((predictions - batch["targets"]) ** 2)

    def draw(key, size):
        inputs, targets = adding.batch(key, size, length)
        return {"inputs": inputs, "targets": targets}

    fresh_batch = jax.jit(lambda step: draw(jax.random.fold_in(k_data, step), batch))
    params, history = train.fit(
        predict, mse, params, train.optimizer("adam", 3e-3, clip_norm=1.0),
        fresh_batch, steps=steps, batch_size=batch, eval_data=draw(k_test, 2048),
        eval_every=max(1, steps // 10), progress=False,
        log=lambda line: print(f"  {cell_name:<5}{line}", flush=True),
    )  # fmt: skip
    return float(history[-1]["eval_loss"])


def demo(args: argparse.Namespace) -> int:
    print(f"seqjax {seqjax.__version__}, jax {jax.__version__}, devices: {jax.devices()}\n")
    show_cells(args.batch, args.time, args.hidden, args.repeats)
    print(f"\nTraining on the adding problem (T={args.length}, hidden {args.train_hidden}, "
          f"batch {args.train_batch}, {args.steps} Adam steps, clip_norm 1.0). "
          f"Baseline (always predict 1): MSE {adding.BASELINE_MSE:.3f}")  # fmt: skip
    results = {}
    for name in args.cells:
        results[name] = train_adding(
            name, args.length, args.train_hidden, args.steps, args.train_batch, args.seed
        )
    print("\n  cell   test MSE   vs baseline")
    for name, mse in results.items():
        verdict = (
            "solved"
            if mse < 0.1 * adding.BASELINE_MSE
            else ("learning" if mse < 0.9 * adding.BASELINE_MSE else "no better than baseline")
        )
        print(f"  {name:<6}{mse:>9.4f}   {mse / adding.BASELINE_MSE:>6.1%} of baseline: {verdict}")
    best = min(results, key=results.get)
    print(f"\nResult: {best} reaches test MSE {results[best]:.4f} on the adding problem "
          f"(T={args.length}); the baseline is {adding.BASELINE_MSE:.3f}.")  # fmt: skip
    return 0
