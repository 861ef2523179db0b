"""``seqjax train``: a built-in task, trained with :func:`seqjax.train.fit`, ending in a verdict
against the task's baselines; the run directory keeps metrics.jsonl, checkpoints and result.json."""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import pathlib
import shutil
import statistics
import time
import warnings

import jax
import jax.numpy as jnp
import optax

from seqjax.cli.common import Model, UsageError, build_model
from seqjax.train.model import ModelShape
from seqjax.train.runs import LATEST


def _check_arguments(args: argparse.Namespace) -> pathlib.Path | None:
    """Checks every setting that needs no task data; changes nothing on disk (but to finish a
    replacement that a killed run left half done, see ``seqjax.train.rundir``). Returns the run
    directory, or None for a new run in a folder of its own."""
    from seqjax.tasks import registry
    from seqjax.train import rundir

    for name in ("hidden", "layers", "steps", "batch_size", "seq_len"):
        value = getattr(args, name)
        if value is not None and value < 1:
            raise UsageError(f"--{name.replace('_', '-')} must be a positive integer; got {value}")
    for name in ("lr", "clip_norm", "max_minutes"):
        value = getattr(args, name)
        if value is not None and not (math.isfinite(value) and value > 0):
            raise UsageError(f"--{name.replace('_', '-')} must be a positive number; got {value}")
    if not 0.0 <= args.dropout < 1.0:
        raise UsageError(f"--dropout must be in [0, 1); got {args.dropout}")
    if args.resume and args.overwrite:
        raise UsageError("--resume continues the run in --run-dir, --overwrite replaces it: "
                         "pass one of them")  # fmt: skip
    if args.new_schedule and not args.resume:
        raise UsageError("--new-schedule applies to a resumed run; pass --resume too")
    if args.overwrite and args.run_dir is None:
        raise UsageError("--overwrite replaces the run in --run-dir; pass --run-dir too (without "
                         "it, each new run gets a folder of its own under runs/)")  # fmt: skip
    new_folder = args.run_dir is None and not args.resume
    run_dir = pathlib.Path(args.run_dir or pathlib.Path(RUNS_ROOT, LATEST))
    _check_writable(pathlib.Path(RUNS_ROOT) if new_folder else run_dir)
    if not new_folder:
        rundir.recover(run_dir)
    if args.task not in registry.TASKS:
        known = ", ".join(registry.TASKS)
        raise UsageError(f"--task: unknown task {args.task!r}; expected one of {known}")
    _check_data_options(args)
    if new_folder:
        return None  # a new folder, made once the task's data has loaded
    if args.resume and not (run_dir / "checkpoints").is_dir():
        raise UsageError(f"--resume: nothing to resume in {str(run_dir)!r} (no checkpoints/)")
    previous = rundir.previous_run(run_dir)
    if previous and not args.resume and not args.overwrite:
        raise UsageError(
            f"--run-dir {str(run_dir)!r} holds another run "
            f"({', '.join(p.name for p in previous)}); pass --resume to continue it, "
            "--overwrite to replace it, or another --run-dir (or none: a new folder)"
        )
    return run_dir


def _check_writable(run_dir: pathlib.Path) -> None:
    from seqjax.train import rundir

    try:
        rundir.check_writable(run_dir, "--run-dir")
    except rundir.RunDirError as err:
        raise UsageError(str(err)) from None


def _check_data_options(args: argparse.Namespace) -> None:
    """The options of the tasks on a user's file: given where they apply, and in range."""
    from seqjax.tasks import registry

    own = args.task in registry.OWN_DATA
    if own and args.data is None:
        raise UsageError(f"--task {args.task} trains on your file: pass --data FILE")
    if args.window is not None and args.seq_len is not None:
        raise UsageError("--window and --seq-len name the same setting; pass one of them")
    for name in ("horizon", "window", "period"):
        value = getattr(args, name)
        if value is not None and value < 1:
            raise UsageError(f"--{name} must be a positive integer; got {value}")
    if args.task == "forecast" and args.target is None:
        raise UsageError("--task forecast needs --target COLUMN, the column to forecast")
    for name in ("target", "horizon", "period", "level_input"):
        if getattr(args, name) not in (None, False) and args.task != "forecast":
            raise UsageError(f"--{name} applies to --task forecast, not {args.task!r}")
    if not own:
        for name in ("data", "features", "window"):
            if getattr(args, name) is not None:
                tasks = ", ".join(registry.OWN_DATA)
                raise UsageError(f"--{name} applies to the tasks on your own data ({tasks}), "
                                 f"not {args.task!r}")  # fmt: skip


RUNS_ROOT = "runs"  # new runs: runs/<task>-<time>, and the link runs/latest to the newest


def _check_resumable(run_dir: pathlib.Path, config: dict) -> tuple[int, dict]:
    """``--resume`` continues a run only with the settings that built its model and data; the
    number of steps and the clipping may change (the schedule: see :func:`_resumed_schedule`).
    Returns the step and the stored config of the checkpoint that fit will resume."""
    from seqjax.train import checkpoint

    with warnings.catch_warnings():  # a damaged newer file: fit warns when it skips it
        warnings.simplefilter("ignore")
        found = checkpoint.latest_metadata(run_dir / "checkpoints")  # the one fit will resume
    if found is None:
        raise UsageError(f"--resume: nothing to resume in {str(run_dir)!r} (no checkpoint)")
    stored = found[1].get("config", {})
    changed = [
        f"--{key.replace('_', '-')} {config[key]} (the run has {stored[key]})"
        for key in RESUME_KEYS
        if key in stored and stored[key] != config[key]
    ]
    if changed:
        raise UsageError(
            f"--resume: the run in {str(run_dir)!r} was made with other settings: "
            f"{'; '.join(changed)}; resume with the run's settings, or start a new run "
            "(--overwrite or another --run-dir)"
        )
    return found[0], stored


RESUME_KEYS = ("task", "cell", "hidden", "layers", "dropout", "seq_len", "corpus",
               "batch_size", "seed", "data", "target", "features", "horizon",
               "period", "level_input")  # fmt: skip


def _sample_text(task, model: Model, params, seed: int, length: int = 400) -> str:
    from seqjax.tasks import charlm

    vocab = task.extras["vocab"]
    prompt = next((p for p in ("ROMEO:", "The ", "\n") if set(p) <= set(vocab.chars)), None)
    prompt = prompt or vocab.decode(task.test["inputs"][0, :1])
    carry = model.stack.initial_carry(params["rnn"], (1,))
    return charlm.sample(model.step, params, carry, vocab, prompt, length,
                         jax.random.key(seed), temperature=0.8)  # fmt: skip


def _mesh(args: argparse.Namespace):
    """``--data-parallel``: every device on one ``data`` axis (``jax.devices()`` lists all
    hosts' devices after ``jax.distributed.initialize()``)."""
    if not args.data_parallel:
        return None
    from seqjax import train

    mesh = train.data_mesh()
    try:
        shards = train.sharding.check_mesh(mesh, args.batch_size, "--data-parallel")
    except ValueError as err:
        raise UsageError(str(err)) from None
    print(f"data parallel over {shards} device(s): {jax.devices()[0].device_kind}", flush=True)
    return mesh


def cosine_schedule(peak_lr: float, start_step: int, end_step: int) -> dict:
    """``seqjax train``'s learning-rate schedule, as the record kept in a run's checkpoints:
    linear warm-up from 0 over a tenth of the steps (at most 100), then cosine decay to 0 at
    ``end_step``, the whole of it shifted to begin at ``start_step`` (0 for a new run)."""
    steps = end_step - start_step
    return {"kind": "warmup_cosine", "peak_lr": peak_lr, "start_step": start_step,
            "warmup_steps": min(100, steps // 10), "end_step": end_step}  # fmt: skip


def run_optimizer(args: argparse.Namespace):
    """Adam with clipping on the run's schedule (a config written before schedules were
    recorded gets the one ``seqjax train`` used then: over its own ``steps``)."""
    from seqjax import train

    schedule = getattr(args, "schedule", None) or cosine_schedule(args.lr, 0, args.steps + 1)
    start, warmup, peak = schedule["start_step"], schedule["warmup_steps"], schedule["peak_lr"]
    length = schedule["end_step"] - start
    if start == 0:
        return train.optimizer("adam", peak, clip_norm=args.clip_norm, schedule="cosine",
                               warmup_steps=warmup, total_steps=length)  # fmt: skip
    base = optax.warmup_cosine_decay_schedule(0.0, peak, warmup, length, 0.0)
    return train.optimizer("adam", lambda count: base(jnp.maximum(count - start, 0)),
                           clip_norm=args.clip_norm)  # fmt: skip


def _resumed_schedule(args: argparse.Namespace, step: int, stored: dict, lr_given: bool) -> dict:
    """The schedule a resumed run follows: the one it started with (recorded in its
    checkpoints), or with ``--new-schedule`` a fresh warm-up and cosine decay from ``step`` to
    the new ``--steps``."""
    if args.new_schedule:
        if args.steps <= step:
            raise UsageError(f"--new-schedule: --steps {args.steps} leaves nothing to train "
                             f"after the resumed step {step}")  # fmt: skip
        return cosine_schedule(args.lr, step, args.steps + 1)
    schedule = stored.get("schedule") or cosine_schedule(stored["lr"], 0, stored["steps"] + 1)
    if lr_given and args.lr != schedule["peak_lr"]:
        raise UsageError(
            f"--resume: --lr {args.lr} differs from the peak learning rate of the run's schedule "
            f"({schedule['peak_lr']}); drop --lr to continue that schedule, or add "
            "--new-schedule to start a new one from the resumed step"
        )
    if args.steps + 1 > schedule["end_step"]:
        print(f"note: the run's learning-rate schedule ends at step {schedule['end_step'] - 1}; "
              "the steps after it train at its final rate (0). Add --new-schedule for a new "
              "warm-up and decay over the added steps.", flush=True)  # fmt: skip
    return schedule


CONFIG_KEYS = ("task", "cell", "hidden", "layers", "dropout", "seq_len", "corpus", "steps",
               "batch_size", "lr", "clip_norm", "seed", "schedule", "data", "target",
               "features", "horizon", "period", "level_input", "model_shape",
               "data_spec", "dtype")  # fmt: skip


def _config(args: argparse.Namespace) -> dict:
    """The settings that rebuild a run's model, data and optimizer, kept in its checkpoints
    (``model_shape`` and ``data_spec``: what ``seqjax.train.load_run`` needs to use the run)."""
    return {key: getattr(args, key, None) for key in CONFIG_KEYS}


def data_options(settings: argparse.Namespace) -> dict:
    """The options of a task on a user's file, from the command line or a run's config."""
    from seqjax.tasks import registry

    if settings.task not in registry.OWN_DATA:
        return {}
    options = {"data": settings.data, "features": tuple(settings.features or ())}
    if settings.task == "forecast":
        options.update(target=settings.target, horizon=settings.horizon or 1,
                       period=settings.period,
                       level_input=bool(getattr(settings, "level_input", False)))  # fmt: skip
    return options


def _load_task(args: argparse.Namespace):
    """The task the arguments name, with its defaults filled into ``args``."""
    from seqjax.tasks import registry

    if args.window is not None:
        args.seq_len = args.window
    try:
        task = registry.get(args.task, args.seq_len, args.seed, corpus=args.corpus,
                            **data_options(args))  # fmt: skip
    except (ValueError, ImportError, OSError) as err:
        raise UsageError(str(err)) from err
    if args.task == "forecast":
        args.seq_len, args.horizon = task.spec["window"], task.spec["horizon"]
    if args.seq_len is None:
        args.seq_len = registry.TASKS[args.task][1]
    for name, value in (task.defaults or {}).items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    if args.batch_size > len(task.train["targets"]):
        examples = len(task.train["targets"])
        raise UsageError(f"--batch-size {args.batch_size} is larger than the {examples} "
                         f"training examples of {task.name}")  # fmt: skip
    args.model_shape = ModelShape.of(task)._asdict()
    args.data_spec = task.spec
    if args.data is not None:
        args.data = str(pathlib.Path(args.data).resolve())
    return task


def train_command(args: argparse.Namespace) -> int:
    from seqjax import train

    run_dir = _check_arguments(args)
    lr_given = args.lr is not None
    task = _load_task(args)
    args.schedule = cosine_schedule(args.lr, 0, args.steps + 1)
    if args.resume:
        step, stored = _check_resumable(run_dir, _config(args))
        args.schedule = _resumed_schedule(args, step, stored, lr_given)
    model = build_model(task, args.cell, args.hidden, args.layers, args.dropout)
    params = model.init(jax.random.key(args.seed))
    with _run_folder(run_dir, args.task) as run_dir:
        print(f"seqjax train: {task.name}, {args.layers}-layer {args.cell} (hidden "
              f"{args.hidden}), {args.steps} steps of batch {args.batch_size}, lr {args.lr}, "
              f"clip_norm {args.clip_norm}, {args.dtype}, run dir {run_dir}",
              flush=True)  # fmt: skip
        start = time.perf_counter()
        params, history = train.fit(
            model.apply, task.loss, params, run_optimizer(args), task.train, steps=args.steps,
            batch_size=args.batch_size, eval_data=task.test,
            eval_every=max(1, args.steps // 10), clip_norm=args.clip_norm,
            metrics=lambda p, b: {task.metric_key: task.metric(p, b)},
            seed=args.seed, run_dir=run_dir, checkpoint_every=max(1, args.steps // 10),
            keep_checkpoints=11,  # all of them: `seqjax diagnose --run-dir` draws each
            resume=args.resume, overwrite=args.overwrite, config=_config(args),
            time_limit=None if args.max_minutes is None else 60 * args.max_minutes,
            mesh=_mesh(args), precision=args.dtype,
        )  # fmt: skip
    _report(args, task, model, params, history, run_dir, time.perf_counter() - start)
    return 0


@contextlib.contextmanager
def _run_folder(run_dir: pathlib.Path | None, task_name: str):
    """``run_dir``, or a new folder ``runs/<task>-<time>`` that ``runs/latest`` points at;
    a new folder the run ends without using (an error before its first file) is removed and
    the link put back."""
    from seqjax.train import rundir, runs

    if run_dir is not None:
        yield run_dir
        return
    root = pathlib.Path(RUNS_ROOT)
    latest = root / runs.LATEST
    before = os.readlink(latest) if latest.is_symlink() else None
    run_dir = runs.new_run_dir(root, task_name)
    if not runs.point_latest(run_dir):
        print(f"note: {latest} is a folder (a run of an earlier seqjax), not a link; it is left "
              f"as it is, and this run is in {run_dir}", flush=True)  # fmt: skip
    try:
        yield run_dir
    except BaseException:
        if not rundir.previous_run(run_dir):
            shutil.rmtree(run_dir, ignore_errors=True)
            if before is not None and latest.is_symlink():
                runs.point_latest(root / before)
            elif latest.is_symlink():
                latest.unlink()
        raise


def _report(args, task, model: Model, params, history: list[dict], run_dir: pathlib.Path,
            seconds: float) -> None:  # fmt: skip
    """The run's result: ``result.json``, and one line with the verdict."""
    from seqjax.train import rundir

    value = float(history[-1][f"eval_{task.metric_key}"])
    args.steps_done = int(history[-1]["step"])
    rates = [r["steps_per_s"] for r in history if r.get("steps_per_s")]
    result = {**_config(args), "task": task.name, "metric": task.metric_name,
              "value": value, "baselines": task.all_baselines(),
              "baseline": task.baseline, "baseline_name": task.baseline_name,
              "steps_done": args.steps_done,
              "steps_per_s": round(statistics.median(rates), 2) if rates else None,
              "seconds": round(seconds, 1)}  # fmt: skip
    if task.holdout is not None:  # own data: the figure is the test split's, once, at the end
        result["validation"] = value
        result["test"] = _holdout(task, model, params)
        value = result["value"] = result["test"][task.metric_key]
        if task.extras and "baseline_errors" in task.extras:
            result["baseline_errors"] = task.extras["baseline_errors"]
    result["verdict"] = verdict = task.verdict(value)
    if task.token_inputs:
        result["sample"] = _sample_text(task, model, params, args.seed)
        print(f"sample (temperature 0.8):\n{result['sample']}\n")
    text = json.dumps(result, indent=1) + "\n"
    rundir.write_atomically(run_dir / "result.json", lambda temporary: temporary.write_text(text))
    baselines = ", ".join(f"{name} {v:.4f}" for name, v in task.all_baselines().items())
    plural = "s" if len(task.all_baselines()) > 1 else ""
    print(f"{task.name} {args.cell}: {task.metric_name} {value:.4f} "
          f"(baseline{plural}: {baselines}): {verdict}")  # fmt: skip


def _holdout(task, model: Model, params) -> dict[str, float]:
    """The test split's figures (``task.holdout_metrics``), predicted in batches."""
    from seqjax.train import runs

    loaded = runs.LoadedRun(model, params, {}, 0)
    predictions = runs.predict(loaded, task.holdout)
    return task.holdout_metrics(predictions, task.holdout)
