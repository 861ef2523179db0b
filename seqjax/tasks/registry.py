"""The built-in tasks as uniform specs: data splits, loss, test metric, baseline and verdict."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from seqjax.tasks import adding, copy, sunspots
from seqjax.train import losses


class Task(NamedTuple):
    """What ``seqjax train`` needs to know about a task.

    ``train``/``test`` are dicts of arrays (``inputs (N, T, input_size)``, or ``(N, T)`` integer
    ids when ``token_inputs``, which the model one-hot encodes; ``targets``); ``per_step`` says
    whether the model predicts at every step (else from the last one); ``loss(predictions,
    batch)`` is minimised; ``metric(predictions, batch)`` is the reported test figure, logged as
    ``metric_key`` and compared by ``verdict`` with ``baseline``, the strongest of the
    baselines the task computes (``baselines``, name to value, when there are several).
    ``defaults`` holds the task's own defaults for the command line (hidden, steps, batch_size,
    lr); ``extras`` anything else a caller may want (the vocabulary of a language model).

    A task on a user's own data also has ``holdout``, a test split evaluated once after
    training (``test`` is then the validation split, evaluated during training), with
    ``holdout_metrics(predictions, batch) -> {name: float}`` (NumPy, in the data's units; the
    ``baselines`` are on this split), and ``spec``, what a trained run must keep to read new
    data the same way (JSON: columns, scales, classes).
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
    metric_key: str = "metric"
    token_inputs: bool = False
    defaults: dict | None = None
    extras: dict | None = None
    baselines: dict | None = None
    holdout: dict | None = None
    holdout_metrics: Callable[[Any, dict], dict] | None = None
    spec: dict | None = None

    def all_baselines(self) -> dict[str, float]:
        """Every baseline the task computes, name to value (the strongest is ``baseline``)."""
        return dict(self.baselines or {self.baseline_name: self.baseline})


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
        metric_key="mse", defaults={"hidden": 64, "steps": 2000, "batch_size": 64, "lr": 3e-3},
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
        metric_key="ce", defaults={"hidden": 128, "steps": 2000, "batch_size": 64, "lr": 3e-3},
    )  # fmt: skip


def _sunspots(seq_len: int, seed: int) -> Task:
    del seed  # the split is fixed by the protocol
    data = sunspots.dataset(window=seq_len)
    persistence, autoregression = sunspots.persistence_rmse(), sunspots.ar_rmse(9)

    def rmse(predictions, batch):  # in sunspot numbers, as the published figures
        error = (predictions[..., 0] - batch["targets"]) * data.std
        return losses.RootMean(jnp.mean(error**2))  # exact over evaluation chunks

    def split(s):
        return {"inputs": s.inputs, "targets": s.targets.astype(np.float32)}

    return Task(
        name=f"sunspots (window {seq_len})",
        train=split(data.train), test=split(data.test),
        input_size=1, output_size=1, per_step=False,
        loss=_squeeze_mse, metric_name="test RMSE 1921-1987", metric=rmse,
        baseline=autoregression, baseline_name="AR(9)",
        verdict=lambda m: "beats AR(9), the strongest baseline" if m < autoregression else
        ("beats persistence but not AR(9), the strongest baseline" if m < persistence
         else "no better than persistence"),
        metric_key="rmse", defaults={"hidden": 32, "steps": 1000, "batch_size": 32, "lr": 3e-3},
        extras={"ar9_rmse": autoregression},
        baselines={"persistence": persistence, "AR(9)": autoregression},
    )  # fmt: skip


def _classification(name: str, data, baseline: float, baseline_name: str, published: dict):
    def ce(logits, batch):
        return losses.classification_cross_entropy(logits, batch["targets"])

    def accuracy(logits, batch):
        return losses.classification_accuracy(logits, batch["targets"])

    def verdict(m: float) -> str:
        for model, value in sorted(published.items(), key=lambda kv: -kv[1]):
            if m > value:
                return f"beats the published {model} ({value:.0%})"
        return f"beats {baseline_name}" if m > baseline else f"no better than {baseline_name}"

    return Task(
        name=name,
        train={"inputs": data.train_inputs, "targets": data.train_labels},
        test={"inputs": data.test_inputs, "targets": data.test_labels},
        input_size=data.train_inputs.shape[-1], output_size=10, per_step=False,
        loss=ce, metric_name="test accuracy", metric=accuracy, metric_key="accuracy",
        baseline=baseline, baseline_name=baseline_name, verdict=verdict,
        defaults={"hidden": 128, "steps": 3000, "batch_size": 64, "lr": 3e-3},
    )  # fmt: skip


def _mnist1d(seq_len: int, seed: int) -> Task:
    from seqjax.tasks import mnist1d

    del seed  # the dataset is the published one, regenerated with its own seed
    if seq_len != mnist1d.SEQ_LEN:
        raise ValueError(
            f"mnist1d sequences have length {mnist1d.SEQ_LEN}; got --seq-len {seq_len}"
        )
    data = mnist1d.dataset()
    published = {k.upper(): v for k, v in mnist1d.PUBLISHED.items() if k in ("gru", "cnn")}
    baseline = mnist1d.logistic_baseline(data)
    return _classification("mnist1d", data, baseline, "logistic regression", published)


def _digits(seq_len: int, seed: int) -> Task:
    from seqjax.tasks import digits

    modes = {8: "rows", 64: "pixels"}
    if seq_len not in modes:
        raise ValueError(
            f"digits sequences are 8 rows (--seq-len 8) or 64 pixels (--seq-len 64); got {seq_len}"
        )
    data = digits.dataset(modes[seq_len], seed=seed)
    return _classification(f"digits ({modes[seq_len]})", data, digits.logistic_baseline(data),
                           "logistic regression", {})  # fmt: skip


def _charlm(seq_len: int, seed: int, corpus: str | None = None) -> Task:
    from seqjax.tasks import charlm

    del seed  # the split is contiguous and fixed
    data = charlm.dataset(seq_len, path=corpus)
    unigram = charlm.unigram_bits_per_character(data)
    uniform = charlm.uniform_bits_per_character(data.vocab)

    def ce(logits, batch):
        return losses.sequence_cross_entropy(logits, batch["targets"])

    def bpc(logits, batch):
        return losses.bits_per_character(ce(logits, batch))

    source = "the shipped Shakespeare" if corpus is None else repr(str(corpus))
    return Task(
        name=f"charlm ({source}, T={seq_len})",
        train=data.train, test=data.valid,
        input_size=data.vocab.size, output_size=data.vocab.size, per_step=True,
        loss=ce, metric_name="validation bits per character", metric=bpc, metric_key="bpc",
        baseline=unigram, baseline_name="unigram model",
        verdict=lambda m: "learns words and spelling" if m < 2.5 else
        ("beats the unigram model" if m < unigram else "no better than the unigram model"),
        token_inputs=True, extras={"vocab": data.vocab},
        spec={"kind": "charlm", "chars": data.vocab.chars},
        baselines={"uniform": uniform, "unigram model": unigram},
        defaults={"hidden": 256, "steps": 1500, "batch_size": 32, "lr": 3e-3},
    )  # fmt: skip


def _forecast(seq_len: int | None, seed: int, *, data: str | None = None, target: str | None = None,
              features: tuple[str, ...] = (), horizon: int = 1, period: int | None = None,
              level_input: bool = False) -> Task:  # fmt: skip
    from seqjax.tasks import forecast

    del seed  # the split is chronological
    if data is None or target is None:
        raise ValueError("the forecast task needs --data FILE.csv and --target COLUMN")
    window = seq_len or 24
    values, _ = forecast.read(data, target, list(features))
    spec = forecast.fit_spec(values, target, list(features), window, horizon, period, str(data),
                             level_input)  # fmt: skip
    splits = forecast.dataset(values, spec)
    scale = spec["change_scale"]
    found = forecast.baselines(values, spec)
    rmses = {name: errors["rmse"] for name, errors in found.items()}
    strongest = min(rmses, key=rmses.get)

    def rmse(outputs, batch):  # in the series' units: outputs are changes times the scale
        return losses.RootMean(jnp.mean(((outputs - batch["targets"]) * scale) ** 2))

    def holdout_metrics(outputs, batch):
        return forecast.errors(
            forecast.to_values(outputs, batch["last"], spec),
            forecast.to_values(batch["targets"], batch["last"], spec),
        )

    return Task(
        name=f"forecast {target!r} of {data} (window {window}, horizon {horizon})",
        train=splits["train"], test=splits["validation"], holdout=splits["test"],
        input_size=splits["train"]["inputs"].shape[-1], output_size=horizon, per_step=False,
        loss=lambda outputs, batch: losses.mse(outputs, batch["targets"]),
        metric_name="test RMSE", metric=rmse, metric_key="rmse",
        baseline=rmses[strongest], baseline_name=strongest, baselines=rmses,
        verdict=_verdict(rmses, higher_is_better=False), holdout_metrics=holdout_metrics, spec=spec,
        defaults={"hidden": 64, "steps": 1000, "batch_size": 32, "lr": 3e-3},
        extras={"baseline_errors": found},
    )  # fmt: skip


def _verdict(baselines: dict[str, float], higher_is_better: bool) -> Callable[[float], str]:
    """The verdict of a figure against every baseline."""
    sign = 1 if higher_is_better else -1
    strongest = max(baselines, key=lambda name: sign * baselines[name])

    def verdict(value: float) -> str:
        beaten = [name for name, v in baselines.items() if sign * value > sign * v]
        if strongest in beaten:
            return f"beats every baseline (the strongest: {strongest})"
        if beaten:
            return f"beats {', '.join(beaten)}, not {strongest}, the strongest baseline"
        return "no better than any baseline"

    return verdict


def _classify(seq_len: int | None, seed: int, *, data: str | None = None,
              features: tuple[str, ...] = ()) -> Task:  # fmt: skip
    from seqjax.tasks import sequences

    if data is None:
        raise ValueError("the classify task needs --data FILE.npz or FILE.csv")
    if seq_len is not None:
        raise ValueError("--seq-len does not apply to the classify task: the file gives the "
                         "sequences' lengths")  # fmt: skip
    seqs = sequences.read(data, list(features) or None)
    spec, split = sequences.fit_spec(seqs, str(data), seed)
    splits = sequences.dataset(seqs, spec, split, str(data))
    found = sequences.baselines(splits)
    strongest = max(found, key=found.get)

    def ce(logits, batch):
        return losses.classification_cross_entropy(logits, batch["targets"])

    def accuracy(logits, batch):
        return losses.classification_accuracy(logits, batch["targets"])

    def holdout_metrics(logits, batch):
        return {"accuracy": float(np.mean(np.argmax(logits, -1) == batch["targets"])),
                "cross_entropy": float(ce(logits, batch))}  # fmt: skip

    return Task(
        name=f"classify {data} ({len(spec['classes'])} classes, {len(seqs.lengths)} sequences)",
        train=splits["train"], test=splits["validation"], holdout=splits["test"],
        input_size=len(spec["features"]), output_size=len(spec["classes"]), per_step=False,
        loss=ce, metric_name="test accuracy", metric=accuracy, metric_key="accuracy",
        baseline=found[strongest], baseline_name=strongest, baselines=found,
        verdict=_verdict(found, higher_is_better=True), holdout_metrics=holdout_metrics,
        spec=spec, defaults={"hidden": 64, "steps": 1000, "batch_size": 32, "lr": 3e-3},
    )  # fmt: skip


TASKS: dict[str, tuple[Callable[..., Task], int | None]] = {
    "adding": (_adding, 100),
    "copy": (_copy, 20),
    "charlm": (_charlm, 100),
    "sunspots": (_sunspots, 20),
    "mnist1d": (_mnist1d, 40),
    "digits": (_digits, 8),
    "forecast": (_forecast, None),  # the window: 24 rows unless --seq-len/--window
    "classify": (_classify, None),  # the file gives the lengths
}
OWN_DATA = ("forecast", "classify")  # tasks on a user's file: --data


def get(name: str, seq_len: int | None = None, seed: int = 0, corpus: str | None = None,
        **data_options: Any) -> Task:  # fmt: skip
    """The task ``name`` with sequence length (or window) ``seq_len`` (task default if None);
    ``corpus``, a text file to train the ``charlm`` task on instead of the shipped one;
    ``data_options`` for the tasks on a user's file (``forecast``: ``data``, ``target``,
    ``features``, ``horizon``, ``period``, ``level_input``; ``classify``: ``data``,
    ``features``)."""
    if name not in TASKS:
        raise ValueError(f"unknown task {name!r}; expected one of {', '.join(TASKS)}")
    build, default_len = TASKS[name]
    if name in OWN_DATA:
        return build(seq_len, seed, **data_options)
    if any(value not in (None, ()) for value in data_options.values()):
        given = ", ".join(k for k, v in data_options.items() if v not in (None, ()))
        raise ValueError(f"{given} apply to the tasks on your own data ({', '.join(OWN_DATA)}), "
                         f"not to {name!r}")  # fmt: skip
    seq_len = default_len if seq_len is None else seq_len
    if corpus is not None:
        if name != "charlm":
            raise ValueError(f"a corpus applies to the charlm task only, not to {name!r}")
        return build(seq_len, seed, corpus)
    return build(seq_len, seed)
