"""Runs kept side by side, and a finished run put to use.

``seqjax train`` without ``--run-dir`` gives every run its own folder, ``runs/<task>-<time>``,
and points the link ``runs/latest`` at the newest: a new run never replaces an old one.
:func:`load_run` rebuilds a run's model from its newest checkpoint (the settings that built it
are stored in every checkpoint), with the parameters and the data spec (columns, scales,
classes, vocabulary) that reading new data the same way needs; :func:`predict` applies it to
any number of examples in batches.
"""

from __future__ import annotations

import datetime
import functools
import os
import pathlib
from typing import Any, NamedTuple

import jax
import numpy as np

from seqjax.train import checkpoint
from seqjax.train.model import Model, ModelShape, build_model

LATEST = "latest"


class RunError(ValueError):
    """A run directory that holds no usable trained run."""


def new_run_dir(root: str | os.PathLike, task: str) -> pathlib.Path:
    """A new, empty folder ``root/<task>-<YYYYmmdd-HHMMSS>`` (``-2``, ``-3``, ... appended when
    that name is taken): created here, so two runs started in the same second never share one."""
    root = pathlib.Path(root)
    root.mkdir(parents=True, exist_ok=True)
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    for k in range(1, 1000):
        path = root / (f"{task}-{stamp}" + (f"-{k}" if k > 1 else ""))
        try:
            path.mkdir()
        except FileExistsError:
            continue
        return path
    raise RunError(f"{root}: no free run folder name for {task}-{stamp}")


def point_latest(run_dir: pathlib.Path) -> bool:
    """Points the link ``latest`` beside ``run_dir`` at it (relative, replaced atomically).
    Returns False, changing nothing, when ``latest`` is a real folder (a run written by an
    earlier seqjax, which kept its newest run there): that run is left as it is."""
    link = run_dir.parent / LATEST
    if link.exists() and not link.is_symlink():
        return False
    temporary = run_dir.parent / f".{LATEST}.{os.getpid()}"
    temporary.unlink(missing_ok=True)
    os.symlink(run_dir.name, temporary)
    os.replace(temporary, link)
    return True


class LoadedRun(NamedTuple):
    """A trained run: the ``model`` that ``seqjax train`` built, its ``params`` from the newest
    checkpoint (at ``step``), and the run's ``config`` (its settings; ``config["data_spec"]``
    says how the training data was read: columns, scales, classes or vocabulary)."""

    model: Model
    params: Any
    config: dict
    step: int

    @property
    def spec(self) -> dict:
        return self.config.get("data_spec") or {}


def load_run(run_dir: str | os.PathLike) -> LoadedRun:
    """The model, params and config of the run in ``run_dir`` (a ``seqjax train`` run folder,
    or the ``runs/latest`` link), from its newest good checkpoint.

    Unpacks as ``model, params, config, step = load_run(run_dir)``. Raises :class:`RunError`
    when the folder holds no checkpoint or no model settings, and
    :class:`seqjax.train.checkpoint.CheckpointError` for a damaged file."""
    run_dir = pathlib.Path(run_dir)
    if not run_dir.is_dir():
        raise RunError(f"--run-dir {str(run_dir)!r}: no such run folder")
    found = checkpoint.latest_metadata(run_dir / "checkpoints")
    if found is None:
        raise RunError(f"--run-dir {str(run_dir)!r} holds no checkpoint: train it first "
                       "(seqjax train), or pass the folder of a run that wrote one")  # fmt: skip
    config = found[1].get("config")
    if not isinstance(config, dict) or "cell" not in config:
        raise RunError(f"--run-dir {str(run_dir)!r}: its checkpoints hold no model settings "
                       "(not a seqjax train run)")  # fmt: skip
    model = build_model(model_shape(config), config["cell"], config["hidden"], config["layers"],
                        config.get("dropout", 0.0))  # fmt: skip
    template = model.init(jax.random.key(0))
    params, step, _ = checkpoint.latest_params(run_dir / "checkpoints", template)
    return LoadedRun(model, params, config, step)


def model_shape(config: dict) -> ModelShape:
    """The run's model shape: stored since runs keep it, else from rebuilding its task."""
    if "model_shape" in config:
        return ModelShape(**config["model_shape"])
    from seqjax.tasks import registry

    task = registry.get(config["task"], config.get("seq_len"), config.get("seed", 0),
                        corpus=config.get("corpus"))  # fmt: skip
    return ModelShape.of(task)


def predict(run: LoadedRun, batch: dict, batch_size: int = 1024) -> np.ndarray:
    """The model's predictions for every example of ``batch`` (``inputs`` and, for sequences of
    different lengths, ``lengths``), ``batch_size`` examples at a time (no dropout)."""
    apply = _jitted_apply(run.model)
    n = len(batch["inputs"])
    parts = []
    for start in range(0, n, batch_size):
        chunk = {k: np.asarray(v)[start : start + batch_size] for k, v in batch.items()
                 if k in ("inputs", "lengths")}  # fmt: skip
        parts.append(np.asarray(apply(run.params, chunk)))
    return np.concatenate(parts)


@functools.lru_cache(maxsize=16)
def _jitted_apply(model: Model):
    """One jitted ``apply`` per model (a NamedTuple of functions, hashed by them), so calls of
    :func:`predict` that reuse a model and a chunk shape reuse its compiled program."""
    return jax.jit(lambda params, chunk: model.apply(params, chunk, None))
