"""``seqjax diagnose``: the gradient through time, ``|dL/dh_t|``, at initialisation or for every
checkpoint of a run, printed and plotted."""

from __future__ import annotations

import argparse
import pathlib
import sys
from collections.abc import Callable

import jax
import numpy as np

import seqjax
from seqjax.cli.common import TRAIN_CELLS, Model, UsageError, build_model
from seqjax.cli.train import data_options, run_optimizer


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
        try:
            task = registry.get(run.task, run.seq_len, run.seed, corpus=run.corpus,
                                **data_options(run))  # fmt: skip
        except (ValueError, OSError) as err:  # the run's data file moved or changed
            raise UsageError(f"--run-dir {args.run_dir!r}: {err}") from None
        model = build_model(task, run.cell, run.hidden, run.layers, run.dropout)
        template = train.TrainState.create(model.init(jax.random.key(run.seed)), run_optimizer(run))
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
