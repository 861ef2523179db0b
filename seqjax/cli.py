"""The ``seqjax`` command.

``seqjax train`` trains a recurrent network on a built-in task and ends with a verdict against the
task's baseline; ``RUN_DIR`` keeps metrics.jsonl, checkpoints and result.json.

``seqjax demo`` unrolls each built-in cell (shapes, compile time, forward and backward timings),
then trains a tanh RNN, a GRU and an LSTM on the adding problem and reports their error against
the trivial baseline.
"""

from __future__ import annotations

import argparse
import json
import math
import pathlib
import statistics
import sys
import time
import warnings
from collections.abc import Callable, Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

import seqjax
from seqjax.tasks import adding

CELLS: dict[str, Callable[[int], seqjax.Cell]] = {
    "rnn": lambda h: seqjax.simple_rnn(h),
    "gru": lambda h: seqjax.gru(h),
    "lstm": lambda h: seqjax.lstm(h),
}
# `seqjax train` also offers the IRNN (Le et al. 2015): relu, identity recurrent init, the
# IndRNN (Li et al. 2018), and recurrences linear in the state, trained with a parallel scan:
# minGRU and minLSTM in log space (Feng et al. 2024), and the LRU (Orvieto et al. 2023) with a
# GELU input layer in front (it is linear in its inputs otherwise).
TRAIN_CELLS = {
    **CELLS,
    "irnn": lambda h: seqjax.irnn(h),
    "indrnn": lambda h: seqjax.indrnn(h),
    "min_gru": lambda h: seqjax.min_gru(h, log_space=True),
    "min_lstm": lambda h: seqjax.min_lstm(h, log_space=True),
    "lru": lambda h: seqjax.lru(h, h, r_min=0.4, r_max=0.99, input_layer=True),
}


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
    """Trains ``cell -> last output -> linear`` on the adding problem; returns the test MSE."""
    layer = seqjax.rnn(CELLS[cell_name](hidden))
    k_layer, k_out, k_data, k_test = jax.random.split(jax.random.key(seed), 4)
    params = {
        "rnn": layer.init(k_layer, adding.INPUT_SIZE),
        "w_out": jax.random.normal(k_out, (hidden,)) / jnp.sqrt(hidden),
        "b_out": jnp.ones(()),  # start at the baseline's prediction
    }

    def predict(params, xs):
        _, ys = layer.apply(params["rnn"], xs)
        return ys[:, -1] @ params["w_out"] + params["b_out"]

    def loss_fn(params, xs, targets):
        return jnp.mean((predict(params, xs) - targets) ** 2)

    optimizer = optax.chain(optax.clip_by_global_norm(1.0), optax.adam(3e-3))

    @jax.jit
    def train_step(params, opt_state, key):
        xs, targets = adding.batch(key, batch, length)
        loss, grads = jax.value_and_grad(loss_fn)(params, xs, targets)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    opt_state = optimizer.init(params)
    report_every = max(1, steps // 10)
    running, start = [], time.perf_counter()
    # Redraw one line on a terminal; one line per report in logs and notebooks.
    prefix, end = ("\r", "") if sys.stdout.isatty() else ("", "\n")
    for step in range(1, steps + 1):
        params, opt_state, loss = train_step(params, opt_state, jax.random.fold_in(k_data, step))
        running.append(loss)
        if step % report_every == 0 or step == steps:
            mean_loss = float(jnp.mean(jnp.stack(running)))
            running = []
            rate = step / (time.perf_counter() - start)
            bar = "#" * (20 * step // steps)
            print(f"{prefix}  {cell_name:<5}[{bar:<20}] step {step:>5}/{steps}  "
                  f"loss {mean_loss:.4f}  {rate:6.0f} steps/s", end=end, flush=True)  # fmt: skip
    if end == "":
        print()
    test_xs, test_targets = adding.batch(k_test, 2048, length)
    return float(jax.jit(loss_fn)(params, test_xs, test_targets))


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


class Model(NamedTuple):
    """A ``stack`` of recurrent layers and a linear read-out: ``init(key) -> params``,
    ``apply(params, batch, key) -> predictions``, and ``step(params, carry, ids) -> (carry,
    logits)``, one step at a time for sampling a language model."""

    init: Callable
    apply: Callable
    step: Callable
    stack: seqjax.Layer
    encode: Callable  # batch["inputs"] -> what the stack reads (one-hot for token ids)
    read_out: Callable  # (params, ys) -> predictions


def build_model(
    task, cell_name: str, hidden: int, layers: int, dropout: float,
    make_cell: Callable[[int], seqjax.Cell] | None = None,
) -> Model:  # fmt: skip
    make_cell = make_cell or TRAIN_CELLS[cell_name]
    cells = [make_cell(hidden) for _ in range(layers)]
    stack = seqjax.stack(*[seqjax.rnn(c, parallel=c.linear is not None) for c in cells],
                         dropout=dropout)  # fmt: skip

    def init(key):
        k_rnn, k_out = jax.random.split(key)
        out = jax.random.normal(k_out, (hidden, task.output_size)) / jnp.sqrt(hidden)
        return {"rnn": stack.init(k_rnn, task.input_size), "w_out": out,
                "b_out": jnp.zeros(task.output_size)}  # fmt: skip

    def encode(inputs):
        return jax.nn.one_hot(inputs, task.input_size) if task.token_inputs else inputs

    def read_out(params, ys):
        features = ys if task.per_step else ys[:, -1]
        return features @ params["w_out"] + params["b_out"]

    def apply(params, batch, key):
        _, ys = stack.apply(params["rnn"], encode(batch["inputs"]), key=key)
        return read_out(params, ys)

    def step(params, carry, ids):
        carry, ys = stack.apply(params["rnn"], encode(ids[:, None]), carry=carry)
        return carry, ys[:, 0] @ params["w_out"] + params["b_out"]

    return Model(init, apply, step, stack, encode, read_out)


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


def _optimizer(args: argparse.Namespace):
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
    optimizer = _optimizer(args)
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


def _diagnose_cell(name: str, init: str, scale: float | None) -> Callable[[int], seqjax.Cell]:
    """The cell ``name`` with the initialisation asked for on the command line."""
    if name == "irnn":
        return lambda h: seqjax.irnn(h, scale=1.0 if scale is None else scale)
    if name not in ("rnn", "gru", "lstm"):
        if init != "default" or scale is not None:
            raise UsageError(
                f"--init and --recurrent-scale apply to rnn, irnn, lstm, gru; not {name}"
            )
        return TRAIN_CELLS[name]
    build = {"rnn": seqjax.simple_rnn, "gru": seqjax.gru, "lstm": seqjax.lstm}[name]
    options = {"init": init}
    if scale is not None:  # every recurrent block orthogonal, all singular values = scale
        options["recurrent_init"] = seqjax.initializers.orthogonal(scale)
    return lambda h: build(h, **options)


def _flow_fn(task, model: Model):
    """``(params, batch) -> GradientFlow``: ``dL/dh_t`` of the task's loss through the model's
    read-out, for every step and layer, compiled once for the model (every checkpoint of a run
    reuses it). The loss is summed over the batch, so each norm is one sequence's own gradient."""
    from seqjax import diagnostics

    @jax.jit
    def flow(params, batch):
        inputs = model.encode(batch["inputs"])

        def loss_fn(ys, final_carry):
            return inputs.shape[0] * task.loss(model.read_out(params, ys), batch)

        return diagnostics.gradient_through_time(model.stack, params["rnn"], inputs, loss_fn)

    return flow


def diagnose_command(args: argparse.Namespace) -> int:
    from seqjax import train
    from seqjax.tasks import registry

    for name in ("hidden", "layers", "batch_size", "seq_len"):
        value = getattr(args, name)
        if value is not None and value < 1:
            raise UsageError(f"--{name.replace('_', '-')} must be a positive integer; got {value}")
    if args.recurrent_scale is not None and args.recurrent_scale <= 0:
        raise UsageError(f"--recurrent-scale must be positive; got {args.recurrent_scale}")
    out = pathlib.Path(args.out)
    if out.is_dir():
        raise UsageError(f"--out {str(out)!r} is a folder; pass a .png file name")
    curves: dict[str, object] = {}
    if args.run_dir is not None:
        checkpoints = pathlib.Path(args.run_dir) / "checkpoints"
        files = sorted(checkpoints.glob("ckpt_*.msgpack")) if checkpoints.is_dir() else []
        if not files:
            raise UsageError(f"--run-dir {args.run_dir!r} has no checkpoints of seqjax train")
        try:  # the template to load into is built from the run's config
            config = train.checkpoint.read_metadata(files[-1])[1].get("config")
        except train.checkpoint.CheckpointError as err:
            raise UsageError(str(err)) from err
        if not config:
            raise UsageError(f"{str(files[-1])!r} holds no run config; was it written by "
                             "`seqjax train`?")  # fmt: skip
        run = argparse.Namespace(**config)
        task = registry.get(run.task, run.seq_len, run.seed, corpus=run.corpus)
        model = build_model(task, run.cell, run.hidden, run.layers, run.dropout)
        template = train.TrainState.create(model.init(jax.random.key(run.seed)), _optimizer(run))
        batch = train.batch_for_step(task.train, 0, min(args.batch_size, 256), args.seed)
        title = f"{task.name}, {run.cell} (hidden {run.hidden}), during training"
        flow = _flow_fn(task, model)
        for path in files:
            try:
                state, step, _ = train.checkpoint.load(path, template)
            except train.checkpoint.CheckpointError as err:
                print(f"skipping {path.name}: {err}", file=sys.stderr)
                continue
            curves[f"step {step}"] = flow(state.params, batch)
    else:
        try:
            task = registry.get(args.task, args.seq_len, args.seed)
        except (ValueError, ImportError) as err:
            raise UsageError(str(err)) from err
        hidden = args.hidden or 64
        batch = train.batch_for_step(task.train, 0, args.batch_size, args.seed)
        scale = "" if args.recurrent_scale is None else f", recurrent scale {args.recurrent_scale}"
        title = f"{task.name}, hidden {hidden}, at initialisation ({args.init} init{scale})"
        for name in args.cells:
            make = _diagnose_cell(name, args.init, args.recurrent_scale)
            model = build_model(task, name, hidden, args.layers, 0.0, make_cell=make)
            params = model.init(jax.random.key(args.seed))
            curves[name] = _flow_fn(task, model)(params, batch)
    print(f"Gradient of the loss with respect to the hidden state, |dL/dh_t|, {title}; "
          f"mean over {len(batch['targets'])} sequences:")  # fmt: skip
    print(f"  {'':<12}{'layer':>6}{'t=T':>12}{'t=T/2':>12}{'t=1':>12}{'per step':>10}")
    for label, flow in curves.items():
        fit = flow.decay_fit()
        for layer, row in enumerate(zip(*(np.atleast_1d(v) for v in fit), strict=True)):
            rate, _, last, middle, first = row
            print(f"  {label:<12}{layer:>6}{last:>12.3e}{middle:>12.3e}{first:>12.3e}"
                  f"{rate:>10.4f}")  # fmt: skip
    try:
        _plot_flows(curves, title, out)
    except ImportError:
        print("plot not drawn: matplotlib is not installed (pip install 'seqjax[plot]')")
        return 0
    print(f"plot: {out}  (per step: the factor by which |dL/dh_t| changes per step back in "
          "time, from a log-linear fit; below 1 it vanishes, above 1 it explodes)")  # fmt: skip
    return 0


def _plot_flows(curves: dict, title: str, path: pathlib.Path) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(7, 4), layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.subplots()
    for label, flow in curves.items():
        norms = np.atleast_2d(np.asarray(flow.norms))
        for layer, row in enumerate(norms):
            name = label if len(norms) == 1 else f"{label}, layer {layer}"
            axes.semilogy(np.arange(1, len(row) + 1), row, label=name)
    axes.set(xlabel="time step t", ylabel="|dL/dh_t|", title=title)
    axes.title.set_fontsize(9)
    axes.grid(alpha=0.3, which="both")
    axes.legend(fontsize=8)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=100)


class UsageError(Exception):
    """A bad command-line value: reported as one line on stderr, exit code 2."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line, not the usage block: the message says it all
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def main(argv: Sequence[str] | None = None) -> int:
    parser = _Parser(prog="seqjax", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    p = commands.add_parser("demo", help="unroll each cell, then train on the adding problem")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--time", type=int, default=128)
    p.add_argument("--hidden", type=int, default=128)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--length", type=int, default=50, help="adding-problem sequence length")
    p.add_argument("--train-hidden", type=int, default=64)
    p.add_argument("--train-batch", type=int, default=64)
    p.add_argument("--steps", type=int, default=1500)
    p.add_argument("--cells", nargs="+", default=list(CELLS), choices=list(CELLS))
    p.add_argument("--seed", type=int, default=0)
    t = commands.add_parser(
        "train", help="train on a built-in task and report against its baseline"
    )
    t.add_argument(
        "--task",
        default="adding",
        help="adding | copy | charlm | sunspots | mnist1d | digits (default adding)",
    )
    t.add_argument(
        "--cell",
        default="lstm",
        choices=list(TRAIN_CELLS),
        help="rnn (tanh), irnn (relu, identity init), indrnn, lstm, gru, or the parallel-scan "
        "min_gru, min_lstm, lru (default lstm)",
    )
    t.add_argument("--hidden", type=int, help="hidden size (task default: 64 for adding)")
    t.add_argument("--layers", type=int, default=1, help="stacked layers (default 1)")
    t.add_argument("--dropout", type=float, default=0.0, help="between layers (default 0)")
    t.add_argument("--seq-len", type=int, default=None,
                   help="sequence length T (adding 100, copy 20, charlm 100); the window for "
                   "sunspots (20); 8 (rows) or 64 (pixels) for digits")  # fmt: skip
    t.add_argument("--steps", type=int, help="optimizer steps (task default: 2000 for adding)")
    t.add_argument("--batch-size", type=int, help="examples per step (task default)")
    t.add_argument("--lr", type=float, help="peak learning rate, cosine decay (default 3e-3)")
    t.add_argument("--clip-norm", type=float, default=1.0, help="global-norm clip (default 1)")
    t.add_argument(
        "--max-minutes", type=float, help="end training after this many minutes, whatever --steps"
    )
    t.add_argument("--corpus", help="charlm: a UTF-8 text file to train on instead of Shakespeare")
    t.add_argument("--data-parallel", action="store_true",
                   help="split each batch over all devices (after jax.distributed.initialize() "
                   "on several hosts: all of theirs)")  # fmt: skip
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--run-dir",
                   help="metrics.jsonl, curve.png, checkpoints/ and result.json (default "
                   "runs/latest, which each new run replaces once it has written its first "
                   "checkpoint; until then the old run is kept)")  # fmt: skip
    t.add_argument("--resume", action="store_true",
                   help="continue from the newest good checkpoint in --run-dir, with the "
                   "learning-rate schedule the run started with (recorded in its "
                   "checkpoints; a larger --steps trains the added steps at the schedule's "
                   "final rate)")  # fmt: skip
    t.add_argument("--new-schedule", action="store_true",
                   help="with --resume: start a new warm-up and cosine decay at the resumed "
                   "step, over the steps up to --steps, peaking at --lr")  # fmt: skip
    t.add_argument(
        "--overwrite",
        action="store_true",
        help="replace the run already in --run-dir (its checkpoints and logs)",
    )
    d = commands.add_parser(
        "diagnose", help="measure |dL/dh_t|, the gradient through time, and plot it",
        description="Measures the norm of dL/dh_t, the gradient of a task's loss with respect "
        "to the hidden state at every step t, for each cell at initialisation or for every "
        "checkpoint of a training run; prints the norms at t = T, T/2, 1 and the per-step "
        "decay factor, and plots log |dL/dh_t| against t.",
    )  # fmt: skip
    d.add_argument(
        "--cell",
        dest="cells",
        nargs="+",
        default=["rnn", "irnn", "lstm", "gru"],
        choices=list(TRAIN_CELLS),
        help="one or more cells (default: rnn irnn lstm gru)",
    )
    d.add_argument("--task", default="adding", help="a task of seqjax train (default adding)")
    d.add_argument("--seq-len", type=int, help="sequence length T (task default)")
    d.add_argument("--hidden", type=int, help="hidden size (default 64)")
    d.add_argument("--layers", type=int, default=1, help="stacked layers (default 1)")
    d.add_argument(
        "--init",
        default="default",
        choices=["default", "pytorch"],
        help="initialisation of rnn, lstm and gru (default: default)",
    )
    d.add_argument("--recurrent-scale", type=float,
                   help="recurrent weights orthogonal times this (spectral radius), e.g. 0.9 or "
                   "1.1; for irnn the identity's scale")  # fmt: skip
    d.add_argument("--batch-size", type=int, default=64, help="sequences averaged (default 64)")
    d.add_argument("--run-dir", help="a seqjax train run: one line per checkpoint instead")
    d.add_argument("--seed", type=int, default=0)
    d.add_argument(
        "--out", default="runs/diagnose.png", help="the plot (default runs/diagnose.png)"
    )
    try:  # --help and usage errors end here, as exit codes for the caller
        args = parser.parse_args(argv)
    except SystemExit as exit_:
        return int(exit_.code or 0)
    from seqjax.train import Interrupted
    from seqjax.train.checkpoint import CheckpointError
    from seqjax.train.rundir import RunDirError

    try:
        commands = {"train": train_command, "diagnose": diagnose_command, "demo": demo}
        return commands[args.command](args)
    except (UsageError, CheckpointError, RunDirError) as err:
        print(f"seqjax {args.command}: error: {err}", file=sys.stderr)
        return 2
    except Interrupted as stop:
        hint = "; continue it with the same command and --resume" if stop.checkpointed else ""
        print(f"seqjax {args.command}: {stop}{hint}", file=sys.stderr)
        return stop.exit_code
    except OSError as err:  # the disk filled up, the folder became read-only: said in one line
        print(f"seqjax {args.command}: error: could not write the run: {err}; every checkpoint "
              "written so far is intact: fix the cause and continue with --resume",
              file=sys.stderr)  # fmt: skip
        return 1


if __name__ == "__main__":
    sys.exit(main())
