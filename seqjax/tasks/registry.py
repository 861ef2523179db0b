"""The built-in tasks as uniform specs: data splits, loss, test metric, baseline and verdict."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import numpy as np

from seqjax.tasks import adding, copy, sunspots
from seqjax.train import losses


class Task(NamedTuple):
    """What ``seqjax train`` needs to know about a task.

    ``train``/``test`` are dicts of arrays (``inputs (N, T, input_size)``, ``targets``);
    ``per_step`` says whether the model predicts at every step (else from the last one);
    ``loss(predictions, batch)`` is minimised; ``metric(predictions, batch)`` is the reported
    test figure, compared with ``baseline`` by ``verdict``.
    """

    name: str
    train: dict
    test: dict
    input_size: int
    output_size: int
    per_step: bool
    loss: Callable[[Any, dict], jax.Array]
    metric_name: str
    metric: Callable[[Any, dict], jax.Array]
    baseline: float
    baseline_name: str
    verdict: Callable[[float], str]


def _squeeze_mse(predictions, batch):
    return losses.mse(predictions[..., 0], batch["targets"])


def _adding(seq_len: int, seed: int) -> Task:
    k_train, k_test = jax.random.split(jax.random.key(seed))
    xs, ys = adding.batch(k_train, 10_000, seq_len)
    test_xs, test_ys = adding.batch(k_test, 2_000, seq_len)
    base = adding.BASELINE_MSE
    return Task(
        name=f"adding T={seq_len}",
        train={"inputs": np.asarray(xs), "targets": np.asarray(ys)},
        test={"inputs": np.asarray(test_xs), "targets": np.asarray(test_ys)},
        input_size=adding.INPUT_SIZE, output_size=1, per_step=False,
        loss=_squeeze_mse, metric_name="test MSE", metric=_squeeze_mse,
        baseline=base, baseline_name="predict 1",
        verdict=lambda m: "solved" if m < 0.01 else
        ("learning" if m < 0.9 * base else "no better than the baseline"),
    )  # fmt: skip


def _copy(seq_len: int, seed: int) -> Task:
    k_train, k_test = jax.random.split(jax.random.key(seed))
    xs, ys = copy.batch(k_train, 10_000, seq_len)
    test_xs, test_ys = copy.batch(k_test, 1_000, seq_len)
    base = copy.baseline_cross_entropy(seq_len)

    def ce(logits, batch):
        return losses.sequence_cross_entropy(logits, batch["targets"])

    return Task(
        name=f"copy T={seq_len}",
        train={"inputs": np.asarray(xs), "targets": np.asarray(ys)},
        test={"inputs": np.asarray(test_xs), "targets": np.asarray(test_ys)},
        input_size=copy.NUM_SYMBOLS, output_size=copy.NUM_SYMBOLS, per_step=True,
        loss=ce, metric_name="test cross-entropy", metric=ce,
        baseline=base, baseline_name="memoryless",
        verdict=lambda m: "solved" if m < 0.1 * base else
        ("learning" if m < 0.9 * base else "no better than the baseline"),
    )  # fmt: skip


def _sunspots(seq_len: int, seed: int) -> Task:
    del seed  # the split is fixed by the protocol
    data = sunspots.dataset(window=seq_len)
    persistence, autoregression = sunspots.persistence_rmse(), sunspots.ar_rmse(9)

    def rmse(predictions, batch):  # in sunspot numbers, as the published figures
        return losses.rmse(predictions[..., 0] * data.std, batch["targets"] * data.std)

    def split(s):
        return {"inputs": s.inputs, "targets": s.targets.astype(np.float32)}

    return Task(
        name=f"sunspots (window {seq_len})",
        train=split(data.train), test=split(data.test),
        input_size=1, output_size=1, per_step=False,
        loss=_squeeze_mse, metric_name="test RMSE 1921-1987", metric=rmse,
        baseline=persistence, baseline_name="persistence",
        verdict=lambda m: f"beats AR(9) ({autoregression:.1f})" if m < autoregression else
        ("beats persistence" if m < persistence else "no better than persistence"),
    )  # fmt: skip


TASKS: dict[str, tuple[Callable[[int, int], Task], int]] = {
    "adding": (_adding, 50),
    "copy": (_copy, 20),
    "sunspots": (_sunspots, 20),
}


def get(name: str, seq_len: int | None = None, seed: int = 0) -> Task:
    """The task ``name`` with sequence length (or window) ``seq_len`` (task default if None)."""
    if name not in TASKS:
        raise ValueError(f"unknown task {name!r}; expected one of {', '.join(TASKS)}")
    build, default_len = TASKS[name]
    return build(default_len if seq_len is None else seq_len, seed)
