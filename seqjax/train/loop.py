"""``fit``: a resumable training loop, with evaluation, logs, a curve and checkpoints.

Everything random is a function of the seed and the step number: the batch of step ``s`` is
slice ``s mod steps_per_epoch`` of a permutation drawn from ``(seed, epoch)``, and the dropout
key of step ``s`` is ``fold_in(key, s)``. So a checkpoint needs only the train state and the step
to resume exactly where a run stopped, and a killed-and-resumed run ends with the same bits as
one never interrupted. Data can also come as a function ``step -> batch`` (exact resume too) or
as an iterator of batches, which a resumed run advances past the batches already used.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import math
import pathlib
import signal
import sys
import time
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
import tqdm

from seqjax import _checks
from seqjax import precision as precision_lib
from seqjax.train import checkpoint, rundir, sharding
from seqjax.train.losses import RootMean
from seqjax.train.rundir import RUN_FILES, previous_run  # noqa: F401 (public here too)
from seqjax.train.signals import Interrupted, catch_stop_signals
from seqjax.train.step import TrainState, make_train_step

Batch = Mapping[str, Any]


def _num_examples(data: Batch, name: str) -> int:
    if not isinstance(data, Mapping) or not data:
        raise TypeError(f"fit: {name} must be a dict of arrays with a leading example axis")
    sizes = {key: np.shape(value)[0] for key, value in data.items()}
    if len(set(sizes.values())) != 1:
        raise ValueError(f"fit: the arrays of {name} disagree on the number of examples: {sizes}")
    return next(iter(sizes.values()))


def batch_for_step(data: Batch, step: int, batch_size: int, seed: int) -> Batch:
    """The batch of training step ``step``: a reproducible function of (seed, step)."""
    n = _num_examples(data, "data")
    per_epoch = max(1, n // batch_size)
    epoch, index = divmod(step, per_epoch)
    order = np.random.default_rng([seed, epoch]).permutation(n)
    rows = order[index * batch_size : (index + 1) * batch_size]
    return {key: jnp.asarray(np.asarray(value)[rows]) for key, value in data.items()}


def _process_batch(data: Batch, step: int, batch_size: int, seed: int) -> Batch:
    """This process's share of step ``step``'s batch: the whole batch in one process; with
    several (multi-host data parallelism), every process draws the same global batch of
    ``batch_size * processes`` examples and keeps its own slice of it."""
    processes = jax.process_count()
    if processes == 1:
        return batch_for_step(data, step, batch_size, seed)
    whole = batch_for_step(data, step, batch_size * processes, seed)
    mine = slice(jax.process_index() * batch_size, (jax.process_index() + 1) * batch_size)
    return {key: value[mine] for key, value in whole.items()}


def _batch_source(data: Any, batch_size: int, seed: int, start_step: int) -> Iterator[Batch]:
    """The batches of steps ``start_step, start_step + 1, ...`` from any accepted ``data``."""
    if isinstance(data, Mapping):
        steps = itertools.count(start_step)
        return (_process_batch(data, step, batch_size, seed) for step in steps)
    if callable(data):
        return (data(step) for step in itertools.count(start_step))
    # An iterable (fit checked it): the batches consumed before the checkpoint are skipped,
    # so a re-created iterator that yields the same sequence resumes exactly.
    return itertools.islice(iter(data), start_step, None)


def _next_batch(batches: Iterator[Batch], step: int) -> Batch:
    try:
        batch = next(batches)
    except StopIteration:
        raise ValueError(
            f"fit: the data iterator ran out of batches at step {step}; pass one that yields at "
            "least `steps` batches (for example itertools.cycle over a list)"
        ) from None
    if not isinstance(batch, Mapping):
        raise TypeError(
            f"fit: each batch must be a dict of arrays; step {step} got {type(batch).__name__}"
        )
    return batch


def fit(
    model: Callable,
    loss: Callable,
    params: Any,
    optimizer: optax.GradientTransformation,
    data: Batch | Callable[[int], Batch] | Iterable[Batch],
    *,
    steps: int,
    batch_size: int = 32,
    eval_data: Batch | None = None,
    eval_every: int = 100,
    eval_batch_size: int = 1024,
    metrics: Callable[[Any, Batch], dict] | None = None,
    clip_norm: float | None = None,
    seed: int = 0,
    run_dir: str | pathlib.Path | None = None,
    checkpoint_every: int = 100,
    keep_checkpoints: int = 3,
    resume: bool = False,
    overwrite: bool = False,
    log: Callable[[str], None] | None = None,
    callback: Callable[[dict], None] | None = None,
    progress: bool | None = None,
    tensorboard: bool | None = None,
    config: dict | None = None,
    time_limit: float | None = None,
    mesh: jax.sharding.Mesh | None = None,
    precision: str | None = None,
) -> tuple[Any, list[dict]]:
    """Trains ``params`` for ``steps`` optimizer steps and returns ``(params, history)``.

    Args:
      model: ``model(params, batch, key) -> predictions``, as for
        :func:`seqjax.train.make_train_step`; the key is for dropout.
      loss: ``loss(predictions, batch) -> scalar``.
      optimizer: an optax transformation (:func:`seqjax.train.optimizer` builds one).
      params: the initial parameters.
      data: training arrays, a dict such as ``{"inputs": (N, T, D), "targets": ..., "lengths":
        (N,)}``, from which batches are drawn in shuffled epochs; or a function ``step ->
        batch``; or an iterable of batch dicts (on resume, the batches of the steps already
        done are skipped, so pass an iterable that yields the same batches again).
      eval_data: held-out arrays of the same form, evaluated every ``eval_every`` steps and at
        the end with ``metrics(predictions, batch) -> dict`` (default: the loss).
      eval_batch_size: ``eval_data`` is evaluated in consecutive chunks of at most this many
        examples, so a large held-out set fits in memory. Each value ``metrics`` returns is
        taken as a mean over the chunk's examples, and the chunks are combined by their mean
        weighted by examples (exact for a mean over examples; a mean over valid time steps,
        as :func:`seqjax.train.losses.sequence_cross_entropy`, is weighted by examples, not
        steps, across chunks). Return :class:`seqjax.train.losses.RootMean` for a root of a
        mean (an RMSE): the chunks' ``.mean`` are averaged, then the root is taken.
      run_dir: where ``metrics.jsonl`` (one JSON line per report), ``steps.jsonl`` (one per
        step: loss, gradient norm before clipping, clipped, nonfinite), the training curve
        ``curve.png`` and checkpoints (``checkpoints/``, every ``checkpoint_every`` steps and at
        the end; the newest ``keep_checkpoints`` are kept) go.
      resume: continue from the newest good checkpoint in ``run_dir``.
      overwrite: replace the run already in ``run_dir``. Its files are moved aside and deleted
        only once this run has written its first checkpoint; if this run ends before that (an
        error, a signal, a kill), the old run is put back. Without ``resume`` or ``overwrite``
        a ``run_dir`` holding a run is refused. ``run_dir`` is locked while ``fit`` runs: a
        second run on it is refused.
      log: called with each report line (default: print to stdout).
      callback: called with each report's record (the dict appended to the returned history),
        once it is written to ``metrics.jsonl``: to send it elsewhere, such as to wandb. Called
        in every process, for the reports of this call only (not those a resumed run read).
      progress: show a live tqdm bar on stderr (default: when stderr is a terminal).
      tensorboard: also write each report's numbers as TensorBoard scalars in
        ``run_dir/tensorboard`` (process 0 only; ``train/<name>`` for the training values,
        ``eval/<name>`` for the ``eval_*`` ones), with ``tensorboardX``. ``None`` (default):
        when ``tensorboardX`` is installed; ``True`` without it is refused. Without
        ``run_dir`` nothing is written.
      config: JSON-serialisable settings stored in every checkpoint's metadata (how to rebuild
        the model), beside the seed.
      time_limit: seconds of training (this call's) after which the run ends early, with a
        final report and checkpoint, as if ``steps`` had been reached; ``None``: no limit.
      mesh: a ``jax.sharding.Mesh`` with a ``"data"`` axis (``seqjax.train.data_mesh()``):
        data-parallel training. Each batch is split over that axis, parameters and optimizer
        state are replicated, and XLA all-reduces the gradients. ``batch_size`` must be a
        multiple of the number of devices on the axis. Checkpoints hold plain arrays, so a run
        resumes on any number of devices.
      precision: ``None`` or ``"float32"`` (default): as the params are; ``"bfloat16"`` or
        ``"float16"``: the mixed policy (:mod:`seqjax.precision`). ``params`` stay the float32
        master weights that the optimizer updates and the checkpoints hold; on every step
        (and evaluation) ``model`` gets them with their matrices cast
        (:func:`seqjax.precision.cast`), so matmuls run in that dtype with float32 sums and
        the carries, losses and gradients stay float32.

    Each report's ``steps_per_s`` is the training rate since the previous report, without
    the first step of the call (its compilation) and without evaluation, plotting and
    checkpointing (``None`` when no step was timed: a report at the first step).

    On SIGINT or SIGTERM the step in progress is finished, reported and checkpointed, and
    :class:`seqjax.train.Interrupted` (a ``KeyboardInterrupt``) is raised; resume with
    ``resume=True``. A second signal stops at once.

    Returns:
      The final params and the list of the reported metric dicts.
    """
    options = {
        "steps": steps, "batch_size": batch_size, "eval_data": eval_data,
        "eval_every": eval_every, "eval_batch_size": eval_batch_size, "metrics": metrics,
        "clip_norm": clip_norm, "seed": seed,
        "checkpoint_every": checkpoint_every, "keep_checkpoints": keep_checkpoints,
        "resume": resume, "log": log, "callback": callback, "progress": progress,
        "tensorboard": tensorboard, "time_limit": time_limit, "mesh": mesh,
        "metadata": {"seed": seed},
    }  # fmt: skip
    if config is not None:
        options["metadata"]["config"] = config
    _check_fit_arguments(data, run_dir, overwrite, options)
    model = _with_precision(model, precision_lib.compute_dtype(precision, "fit"))
    if run_dir is None:
        return _train(model, loss, params, optimizer, data, None, options)
    with rundir.open_run(pathlib.Path(run_dir), resume=resume, overwrite=overwrite) as run:
        return _train(model, loss, params, optimizer, data, run, options)


def _with_precision(model: Callable, dtype: Any) -> Callable:
    """``model`` fed the params with their matrices in ``dtype`` (None: ``model`` itself)."""
    if dtype is None:
        return model

    def cast_model(params, *args):
        return model(precision_lib.cast(params, dtype), *args)

    return cast_model


def _check_fit_arguments(data: Any, run_dir: Any, overwrite: bool, options: dict) -> None:
    """Every check of ``fit``'s arguments, before any file is touched."""
    for name in ("steps", "batch_size", "eval_every", "eval_batch_size", "checkpoint_every",
                 "keep_checkpoints"):  # fmt: skip
        _checks.check_positive_int(options[name], name, "fit")
    if options["callback"] is not None and not callable(options["callback"]):
        raise TypeError(f"fit: callback must be a function of the report record; got "
                        f"{type(options['callback']).__name__}")  # fmt: skip
    time_limit, resume = options["time_limit"], options["resume"]
    if time_limit is not None and not time_limit > 0:
        raise ValueError(
            f"fit: time_limit must be a positive number of seconds; got {time_limit!r}"
        )
    if resume and run_dir is None:
        raise ValueError("fit: resume=True needs the run_dir of the run to continue")
    if resume and overwrite:
        raise ValueError("fit: resume=True continues the run in run_dir, overwrite=True "
                         "replaces it; pass one of them")  # fmt: skip
    json.dumps(options["metadata"])  # fail now, not at the first checkpoint, if it cannot be stored
    batch_size, eval_data, mesh = options["batch_size"], options["eval_data"], options["mesh"]
    if isinstance(data, Mapping):
        n = _num_examples(data, "data")
        if batch_size > n:
            raise ValueError(f"fit: batch_size {batch_size} is larger than the {n} examples")
    elif not (callable(data) or isinstance(data, Iterable)):
        raise TypeError(
            "fit: data must be a dict of arrays, a function step -> batch, or an iterable of "
            f"batches; got {type(data).__name__}"
        )
    if eval_data is not None:
        _num_examples(eval_data, "eval_data")
    if mesh is not None:
        sharding.check_mesh(mesh, batch_size, "fit")
    options["summary_writer"] = _summary_writer_class(options["tensorboard"], run_dir)


def _summary_writer_class(wanted: Any, run_dir: Any) -> type | None:
    """``tensorboardX.SummaryWriter`` if ``fit`` is to write TensorBoard scalars, else ``None``:
    ``wanted=None`` means when tensorboardX can be imported, ``True`` requires it."""
    if wanted is not None:
        _checks.check_bool(wanted, "tensorboard", "fit")
    if not wanted and (wanted is False or run_dir is None):
        return None
    try:
        from tensorboardX import SummaryWriter
    except Exception as err:  # not installed, or broken (a protobuf it cannot load)
        if wanted:
            raise ValueError(
                "fit: tensorboard=True needs the tensorboardX package, which could not be "
                f"imported ({err}): pip install tensorboardX"
            ) from None
        return None
    return SummaryWriter


def _train(model, loss, params, optimizer, data, run: rundir.RunDirectory | None, options: dict):
    """``fit``'s loop, with its checked ``options``; ``run`` is the locked run directory."""
    steps, seed, time_limit = options["steps"], options["seed"], options["time_limit"]
    run_dir = run.path if run is not None else None
    state, history = _start_state(params, optimizer, run_dir, options)
    mesh = options["mesh"]
    if mesh is not None:
        state = sharding.replicate(state, mesh)
    if jax.process_index() != 0:
        run_dir = None  # one writer: with several hosts, process 0 keeps the files
    step_fn = make_train_step(model, loss, optimizer, clip_norm=options["clip_norm"])
    key = jax.random.key(seed)
    start_step, start_time = int(state.step), time.perf_counter()
    batches = _batch_source(data, options["batch_size"], seed, start_step)
    progress = sys.stderr.isatty() if options["progress"] is None else options["progress"]
    bar = tqdm.tqdm(total=steps, initial=start_step, disable=not progress, unit="step",
                    dynamic_ncols=True, leave=False)  # fmt: skip
    log = options["log"] or (bar.write if progress else (lambda line: print(line, flush=True)))
    if options["resume"]:
        log(f"resumed from step {start_step}")
    reports = _Reports(model, loss, run, run_dir, history, bar, log, options, start_step)
    with bar, reports, catch_stop_signals() as stop:
        for step in range(start_step, steps):
            batch = _next_batch(batches, step)
            if mesh is not None:
                batch = sharding.shard_batch(batch, mesh)
            state, step_metrics = step_fn(state, batch, jax.random.fold_in(key, step))
            bar.update(1)
            done = step + 1
            if step == start_step:  # the first step compiles: throughput is timed after it
                jax.block_until_ready(state)
                reports.timer.restart(done)
            out_of_time = time_limit is not None and time.perf_counter() - start_time > time_limit
            saved = reports.after_step(state, step_metrics, done, done == steps or out_of_time
                                       or bool(stop))  # fmt: skip
            if stop:
                log(f"{signal.Signals(stop.signum).name} received: stopped at step {done}/{steps}"
                    + (f", checkpoint in {run_dir / 'checkpoints'}" if saved else ""))  # fmt: skip
                raise Interrupted(stop.signum, done, checkpointed=saved)
            if out_of_time:
                log(f"time limit of {time_limit:.0f} s reached: stopped at step {done}/{steps}")
                break
    return state.params, history


def _start_state(params, optimizer, run_dir, options) -> tuple[TrainState, list[dict]]:
    """The train state to start from (the newest checkpoint's, on resume) and the history of
    the reports before it."""
    # The train step donates its state: train a copy, so the caller's params stay usable.
    state = TrainState.create(jax.tree.map(jnp.copy, params), optimizer)
    if not options["resume"]:
        return state, []
    found = checkpoint.latest(run_dir / "checkpoints", state)
    if found is None:
        raise ValueError(f"fit: nothing to resume in {str(run_dir)!r}: no checkpoint there")
    state, _, _ = found
    return state, _read_history(run_dir, int(state.step))


class _Reports:
    """What ``fit`` does between steps: reads the device metrics at report and checkpoint
    time only (one transfer for all the steps since the last one: no host sync per step),
    evaluates, logs, writes ``metrics.jsonl``/``steps.jsonl`` and the TensorBoard scalars,
    redraws the curve, saves, calls the callback. A context manager: leaving it closes the
    TensorBoard writer."""

    def __init__(self, model, loss, run, run_dir, history, bar, log, options, start_step) -> None:
        self.run, self.run_dir, self.history, self.bar, self.log = run, run_dir, history, bar, log
        self.options = options
        metrics = options["metrics"] or (lambda p, b: {"loss": loss(p, b)})
        self.evaluate = jax.jit(lambda params, batch: metrics(model(params, batch, None), batch))
        self.eval_data = options["eval_data"]
        if self.eval_data is not None:  # sliced into chunks at each report
            self.eval_data = {k: v if isinstance(v, jax.Array) else np.asarray(v)
                              for k, v in self.eval_data.items()}  # fmt: skip
        self.writer = None
        if run_dir is not None and options["summary_writer"] is not None:
            # On resume, TensorBoard drops the events a lost part of the run wrote after the
            # checkpoint (steps >= purge_step), as _read_history drops their log lines. The
            # file's name holds whole seconds only and is opened with "wb": the start step in
            # it keeps a resume within the same second from truncating the earlier file.
            purge = start_step + 1 if options["resume"] else None
            self.writer = options["summary_writer"](
                str(run_dir / "tensorboard"), purge_step=purge, flush_secs=2,
                filename_suffix=f".step{start_step:09d}",
            )  # fmt: skip
        self.unread: list[dict] = []  # on the device
        self.since_report: list[dict] = []  # on the host
        self.next_plot = time.perf_counter() if _can_plot(run_dir, log) else float("inf")
        # Throughput is timed over the steps since the last report, leaving out the time
        # spent evaluating, plotting and checkpointing.
        self.timer = _StepTimer()

    def __enter__(self) -> _Reports:
        return self

    def __exit__(self, kind, error, traceback) -> None:
        writer, self.writer = self.writer, None
        if writer is None:
            return
        if kind is None:
            writer.close()
            return
        with contextlib.suppress(Exception):  # the error that ended the run is the one to see
            writer.close()

    def after_step(self, state, step_metrics, done: int, last: bool) -> bool:
        """Reports and saves as due after step ``done``; returns whether it saved."""
        options, run_dir = self.options, self.run_dir
        self.unread.append(step_metrics)
        report = done % options["eval_every"] == 0 or last
        save = run_dir is not None and (done % options["checkpoint_every"] == 0 or last)
        if report or save:
            values = jax.device_get(self.unread)
            if run_dir is not None:
                _append_steps(run_dir / "steps.jsonl", done - len(values) + 1, values)
            self.since_report += values
            self.unread = []
        if report:
            self._report(state, done, last)
        if save:
            checkpoint.save(
                run_dir / "checkpoints", state, step=done, metadata=options["metadata"],
                keep=options["keep_checkpoints"],
            )  # fmt: skip
            self.run.checkpoint_written()
        if report or save:
            self.timer.restart(done)
        return save

    def _report(self, state, done: int, last: bool) -> None:
        record = _summarise(self.since_report, done)
        record["steps_per_s"] = self.timer.rate(done)
        self.since_report = []
        if self.eval_data is not None:
            record.update({f"eval_{k}": v for k, v in self._evaluate(state.params).items()})
        self.history.append(record)
        self.bar.set_postfix_str(f"loss {record['loss']:.4f}", refresh=False)
        self.log(_progress_line(record, self.options["steps"]))
        if self.run_dir is not None:
            with open(self.run_dir / "metrics.jsonl", "a") as f:
                f.write(json.dumps(record) + "\n")
            # Redrawn at most every 20 s (and at the end): a PNG costs ~0.1 s.
            if time.perf_counter() > self.next_plot or (last and self.next_plot < float("inf")):
                plot_curve(self.history, self.run_dir / "curve.png")
                self.next_plot = time.perf_counter() + 20.0
        if self.writer is not None:
            _write_scalars(self.writer, record)
        if self.options["callback"] is not None:
            self.options["callback"](record)

    def _evaluate(self, params) -> dict[str, float]:
        """``metrics`` of the whole held-out set, evaluated in chunks of at most
        ``eval_batch_size`` examples (each replicated over the mesh, if any) and combined."""
        size, mesh = self.options["eval_batch_size"], self.options["mesh"]
        n = _num_examples(self.eval_data, "eval_data")
        parts = []
        for start in range(0, n, size):
            chunk = {k: v[start : start + size] for k, v in self.eval_data.items()}
            if mesh is not None:
                chunk = sharding.replicate(chunk, mesh)
            parts.append((min(size, n - start), self.evaluate(params, chunk)))
        return _combine_chunks(jax.device_get(parts))


def _combine_chunks(parts: list[tuple[int, dict]]) -> dict[str, float]:
    """The whole set's metrics from ``(examples, metrics)`` per chunk, each value a mean over
    its chunk's examples: their mean weighted by examples; for a :class:`RootMean`, the root of
    the weighted mean of its ``.mean``."""
    weights = np.array([examples for examples, _ in parts], np.float64)
    combined = {}
    for name, first in parts[0][1].items():
        root = isinstance(first, RootMean)
        values = np.array([float(m[name].mean if root else m[name]) for _, m in parts])
        mean = float(weights @ values / weights.sum())
        combined[name] = math.sqrt(mean) if root else mean
    return combined


def _write_scalars(writer, record: dict) -> None:
    """A report's numbers as TensorBoard scalars at its step: ``eval_<name>`` as
    ``eval/<name>``, the others as ``train/<name>``; flushed, so a reader sees them now."""
    for name, value in record.items():
        if name == "step" or not _checks.is_number(value):
            continue  # steps_per_s is None at a report that timed no step
        tag = f"eval/{name[len('eval_') :]}" if name.startswith("eval_") else f"train/{name}"
        writer.add_scalar(tag, value, record["step"])
    writer.flush()


class _StepTimer:
    """Steps per second since the last restart (``None`` until a step has been timed)."""

    def __init__(self) -> None:
        self.step, self.time = None, 0.0

    def restart(self, step: int) -> None:
        self.step, self.time = step, time.perf_counter()

    def rate(self, step: int) -> float | None:
        if self.step is None or step <= self.step:
            return None
        return (step - self.step) / max(time.perf_counter() - self.time, 1e-9)


def _can_plot(run_dir: pathlib.Path | None, log) -> bool:
    """Whether ``curve.png`` can be drawn; matplotlib is optional (``pip install seqjax[plot]``)."""
    if run_dir is None:
        return False
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        log("curve.png not drawn: matplotlib is not installed (pip install 'seqjax[plot]')")
        return False
    return True


def plot_curve(history: list[dict], path: str | pathlib.Path) -> None:
    """Draws the training loss and each ``eval_*`` metric against the step into a PNG at
    ``path`` (written to a temporary file and renamed, so a reader never sees half a file)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    evals = sorted({k for record in history for k in record if k.startswith("eval_")})
    figure = Figure(figsize=(5 + 4 * bool(evals), 3.5), layout="constrained")
    FigureCanvasAgg(figure)
    panels = figure.subplots(1, 1 + bool(evals), squeeze=False)[0]
    steps = [record["step"] for record in history]
    panels[0].plot(steps, [record["loss"] for record in history], marker=".")
    panels[0].set(xlabel="step", ylabel="training loss (mean since last report)")
    if evals:
        for name in evals:
            points = [(r["step"], r[name]) for r in history if name in r]
            panels[1].plot(*zip(*points, strict=True), marker=".", label=name[len("eval_") :])
        panels[1].set(xlabel="step", ylabel="held-out")
        panels[1].legend()
    for panel in panels:
        panel.grid(alpha=0.3)
    rundir.write_atomically(path, lambda temporary: figure.savefig(temporary, format="png",
                                                                   dpi=100))  # fmt: skip


def _append_steps(path: pathlib.Path, first_step: int, values: list[dict]) -> None:
    """One JSON line per step: loss, gradient norm before clipping, clipped, nonfinite."""
    with open(path, "a") as f:
        for step, metrics in enumerate(values, start=first_step):
            line = {"step": step, **{k: v.item() for k, v in metrics.items()}}
            f.write(json.dumps(line) + "\n")


def _summarise(stacked: list[dict], done: int) -> dict:
    """The mean of each metric over the steps since the last report (host values)."""
    record = {"step": done}
    for name in stacked[0]:
        values = np.array([m[name] for m in stacked], np.float64)
        record[name] = float(values.mean())
    if "clipped" in record:
        record["clipped_fraction"] = record.pop("clipped")
    record["nonfinite_steps"] = int(sum(m["nonfinite"] for m in stacked))
    record.pop("nonfinite", None)
    return record


def _progress_line(record: dict, steps: int) -> str:
    width = 20
    filled = math.floor(width * record["step"] / steps)
    parts = [f"[{'#' * filled:<{width}}] step {record['step']:>6}/{steps}",
             f"loss {record['loss']:.4f}"]  # fmt: skip
    parts += [f"{k} {v:.4f}" for k, v in record.items() if k.startswith("eval_")]
    parts.append(f"|grad| {record['grad_norm']:.3g}")
    rate = record.get("steps_per_s")
    parts.append("compiling" if rate is None else f"{rate:.1f} steps/s")
    return "  ".join(parts)


def _read_history(run_dir: pathlib.Path, upto: int) -> list[dict]:
    """The log of a resumed run up to its checkpoint; lines written after it (by the part of
    the run that was lost) are dropped from the file too."""
    kept: dict[str, list[dict]] = {"steps.jsonl": [], "metrics.jsonl": []}
    for name in kept:
        path = run_dir / name
        if path.exists():
            lines = _json_lines(path)
            kept[name] = [record for record in lines if record["step"] <= upto]
            path.write_text("".join(json.dumps(record) + "\n" for record in kept[name]))
    return kept["metrics.jsonl"]


def _json_lines(path: pathlib.Path) -> list[dict]:
    """The records of a JSON-lines log; a line cut short (the disk filled up, the process was
    killed mid-write) is dropped with a warning instead of ending the resume."""
    records = []
    for number, line in enumerate(path.read_text(errors="replace").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            record = None
        if not isinstance(record, dict) or not isinstance(record.get("step"), int):
            warnings.warn(f"{str(path)!r}: line {number} is not a complete record; dropped",
                          stacklevel=3)  # fmt: skip
            continue
        records.append(record)
    return records
