"""``seqjax train``: a built-in task, trained with :func:`seqjax.train.fit`, ending in a verdict
against the task's baselines; the run directory keeps metrics.jsonl, checkpoints and result.json."""

from __future__ import annotations

import argparse
import json
import math
import pathlib
import statistics
import time
import warnings

import jax
import jax.numpy as jnp
import optax

from seqjax.cli.common import Model, UsageError, build_model


def _check_arguments(args: argparse.Namespace) -> pathlib.Path:
    """Checks every setting that needs no task data; changes nothing on disk (but to finish a
    replacement that a killed run left half done, see ``seqjax.train.rundir``)."""
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
    run_dir = pathlib.Path(args.run_dir or DEFAULT_RUN_DIR)
    try:
        rundir.check_writable(run_dir, "--run-dir")
    except rundir.RunDirError as err:
        raise UsageError(str(err)) from None
    rundir.recover(run_dir)
    if args.task not in registry.TASKS:
        known = ", ".join(registry.TASKS)
        raise UsageError(f"--task: unknown task {args.task!r}; expected one of {known}")
    if args.resume and not (run_dir / "checkpoints").is_dir():
        raise UsageError(f"--resume: nothing to resume in {str(run_dir)!r} (no checkpoints/)")
    previous = rundir.previous_run(run_dir)
    if previous and not args.resume and not _replaces(args):
        raise UsageError(
            f"--run-dir {str(run_dir)!r} holds another run "
            f"({', '.join(p.name for p in previous)}); pass --resume to continue it, "
            "--overwrite to replace it, or another --run-dir"
        )
    return run_dir


def _replaces(args: argparse.Namespace) -> bool:
    """Whether a new run replaces the one in its run dir (runs/latest: each new run does)."""
    return args.overwrite or args.run_dir is None


DEFAULT_RUN_DIR = "runs/latest"


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
               "batch_size", "seed")  # fmt: skip


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
               "batch_size", "lr", "clip_norm", "seed", "schedule")  # fmt: skip


def _config(args: argparse.Namespace) -> dict:
    """The settings that rebuild a run's model, data and optimizer, kept in its checkpoints."""
    return {key: getattr(args, key) for key in CONFIG_KEYS}


def train_command(args: argparse.Namespace) -> int:
    from seqjax import train
    from seqjax.tasks import registry

    run_dir = _check_arguments(args)
    lr_given = args.lr is not None
    try:
        task = registry.get(args.task, args.seq_len, args.seed, corpus=args.corpus)
    except (ValueError, ImportError, OSError) as err:
        raise UsageError(str(err)) from err
    if args.seq_len is None:
        args.seq_len = registry.TASKS[args.task][1]
    for name, value in (task.defaults or {}).items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    if args.batch_size > len(task.train["targets"]):
        examples = len(task.train["targets"])
        raise UsageError(f"--batch-size {args.batch_size} is larger than the {examples} "
                         f"training examples of {task.name}")  # fmt: skip
    args.schedule = cosine_schedule(args.lr, 0, args.steps + 1)
    if args.resume:
        step, stored = _check_resumable(run_dir, _config(args))
        args.schedule = _resumed_schedule(args, step, stored, lr_given)
    model = build_model(task, args.cell, args.hidden, args.layers, args.dropout)
    params = model.init(jax.random.key(args.seed))
    print(f"seqjax train: {task.name}, {args.layers}-layer {args.cell} (hidden {args.hidden}), "
          f"{args.steps} steps of batch {args.batch_size}, lr {args.lr}, clip_norm "
          f"{args.clip_norm}, run dir {run_dir}", flush=True)  # fmt: skip
    optimizer = run_optimizer(args)
    start = time.perf_counter()
    params, history = train.fit(
        model.apply, task.loss, params, optimizer, task.train, steps=args.steps,
        batch_size=args.batch_size, eval_data=task.test, eval_every=max(1, args.steps // 10),
        metrics=lambda p, b: {task.metric_key: task.metric(p, b)}, clip_norm=args.clip_norm,
        seed=args.seed, run_dir=run_dir, checkpoint_every=max(1, args.steps // 10),
        keep_checkpoints=11,  # all of them: `seqjax diagnose --run-dir` draws each
        resume=args.resume, overwrite=_replaces(args) and not args.resume, config=_config(args),
        time_limit=None if args.max_minutes is None else 60 * args.max_minutes,
        mesh=_mesh(args),
    )  # fmt: skip
    value = float(history[-1][f"eval_{task.metric_key}"])
    args.steps_done = int(history[-1]["step"])
    verdict = task.verdict(value)
    rates = [r["steps_per_s"] for r in history if r.get("steps_per_s")]
    result = {**_config(args), "task": task.name, "metric": task.metric_name,
              "value": value, "baselines": task.all_baselines(),
              "baseline": task.baseline, "baseline_name": task.baseline_name,
              "verdict": verdict, "steps_done": args.steps_done,
              "steps_per_s": round(statistics.median(rates), 2) if rates else None,
              "seconds": round(time.perf_counter() - start, 1)}  # fmt: skip
    if task.token_inputs:
        result["sample"] = _sample_text(task, model, params, args.seed)
        print(f"sample (temperature 0.8):\n{result['sample']}\n")
    (run_dir / "result.json").write_text(json.dumps(result, indent=1) + "\n")
    baselines = ", ".join(f"{name} {v:.4f}" for name, v in task.all_baselines().items())
    plural = "s" if len(task.all_baselines()) > 1 else ""
    print(f"{task.name} {args.cell}: {task.metric_name} {value:.4f} "
          f"(baseline{plural}: {baselines}): {verdict}")  # fmt: skip
    return 0
