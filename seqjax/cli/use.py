"""Putting a trained run to use: ``seqjax sample`` (character models), ``seqjax forecast``
(time series), ``seqjax predict`` (classifiers) and ``seqjax export`` (safetensors, PyTorch).

Each reads the run with :func:`seqjax.train.runs.load_run`. Nothing here writes over an
existing file unless ``--overwrite`` is given, and never over the data file it reads.
"""

from __future__ import annotations

import argparse
import csv
import io
import pathlib

import jax
import numpy as np

from seqjax.cli.common import UsageError


def _load(args: argparse.Namespace, kind: str, command: str):
    from seqjax.train import runs

    run_dir = pathlib.Path(args.run_dir)
    try:
        run = runs.load_run(run_dir)
    except runs.RunError as err:
        raise UsageError(str(err)) from None
    found = run.spec.get("kind")
    if kind is not None and found != kind:
        raise UsageError(f"--run-dir {str(run_dir)!r} is a run of task {run.config.get('task')!r}"
                         f"; seqjax {command} needs a run of the {kind} task")  # fmt: skip
    return run


def _output(path: str, args: argparse.Namespace, reads: str | None = None) -> pathlib.Path:
    """``path`` for a new file: refused when it is the data file read, or exists (unless
    ``--overwrite``), or its folder does not."""
    out = pathlib.Path(path)
    if reads is not None and out.exists() and out.resolve() == pathlib.Path(reads).resolve():
        raise UsageError(f"--out {path!r} is the --data file; pass another path")
    if out.exists() and not args.overwrite:
        raise UsageError(f"--out {path!r} exists; pass another path, or --overwrite to replace it")
    if not out.parent.is_dir():
        raise UsageError(f"--out {path!r}: no folder {str(out.parent)!r}")
    return out


def _write_text(path: pathlib.Path, text: str) -> None:
    from seqjax.train import rundir

    rundir.write_atomically(path, lambda temporary: temporary.write_text(text))


def _csv_text(header: list[str], rows: list[list]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    return buffer.getvalue()


def sample_command(args: argparse.Namespace) -> int:
    from seqjax.tasks import charlm

    run = _load(args, "charlm", "sample")
    if args.length < 1:
        raise UsageError(f"--length must be a positive integer; got {args.length}")
    if not args.temperature >= 0:
        raise UsageError(f"--temperature must be >= 0 (0: the likeliest character); got "
                         f"{args.temperature}")  # fmt: skip
    vocab = charlm.Vocabulary(run.spec["chars"])
    if args.top_k is not None and not 1 <= args.top_k <= vocab.size:
        raise UsageError(f"--top-k must be in [1, {vocab.size}]; got {args.top_k}")
    unknown = sorted(set(args.prompt) - set(vocab.chars))
    if not args.prompt or unknown:
        raise UsageError(f"--prompt must be non-empty text of the run's {vocab.size} characters; "
                         f"{unknown[:5] or 'it is empty'} are not among them")  # fmt: skip
    carry = run.model.stack.initial_carry(run.params["rnn"], (1,))
    text = charlm.sample(run.model.step, run.params, carry, vocab, args.prompt, args.length,
                         jax.random.key(args.seed), temperature=args.temperature,
                         top_k=args.top_k)  # fmt: skip
    print(text)
    return 0


def forecast_command(args: argparse.Namespace) -> int:
    from seqjax.tasks import forecast
    from seqjax.tasks.files import DataFileError

    run = _load(args, "forecast", "forecast")
    spec = run.spec
    out = _output(args.out, args, reads=args.data)
    horizon = spec["horizon"] if args.horizon is None else args.horizon
    if horizon < 1 or args.holdout < 0:
        raise UsageError("--horizon must be a positive integer and --holdout >= 0")
    if horizon > spec["horizon"] and spec["features"]:
        raise UsageError(f"--horizon {horizon}: the run forecasts {spec['horizon']} steps and "
                         "reads features whose future is unknown, so it cannot go "
                         "further")  # fmt: skip
    try:
        values, dates = forecast.read(args.data, spec["target"], spec["features"])
    except DataFileError as err:
        raise UsageError(str(err)) from None
    history = values[: len(values) - args.holdout]
    if len(history) < spec["window"]:
        raise UsageError(f"--data has {len(history)} rows of history (after --holdout "
                         f"{args.holdout}); the run needs a window of "
                         f"{spec['window']}")  # fmt: skip
    predicted = _roll_forward(run, history, horizon)
    truth = values[len(history) : len(history) + horizon, 0]
    _write_text(out, _forecast_table(predicted, truth, dates, len(history), args.holdout > 0))
    print(f"forecast of {spec['target']!r}, {horizon} steps after row {len(history)} of "
          f"{args.data}: {out}")  # fmt: skip
    if len(truth):
        known = forecast.errors(predicted[: len(truth)], truth)
        naive = forecast.errors(np.full(len(truth), history[-1, 0]), truth)
        print(f"against the {len(truth)} known values: RMSE {known['rmse']:.4g}, MAE "
              f"{known['mae']:.4g} (persistence: RMSE {naive['rmse']:.4g})")  # fmt: skip
    if args.plot:
        _plot_forecast(args.plot, args, history[:, 0], predicted, truth, spec)
    return 0


def _forecast_table(predicted, truth, dates, first_row: int, holdout: bool) -> str:
    """The forecast as CSV: step, the row's date where the file has it, forecast, truth."""
    header = ["step"] + (["date"] if dates and holdout else []) + ["forecast"]
    header += ["truth"] if holdout else []
    rows = []
    for k, value in enumerate(predicted):
        known = k < len(truth)
        row = [k + 1]
        if dates and holdout:
            row.append(dates[first_row + k] if known else "")
        row.append(f"{value:.8g}")
        if holdout:
            row.append(f"{truth[k]:.8g}" if known else "")
        rows.append(row)
    return _csv_text(header, rows)


def _roll_forward(run, history: np.ndarray, horizon: int) -> np.ndarray:
    """``horizon`` forecasts after ``history``: the run's own horizon at a time, each block fed
    back as history for the next (possible without features, whose future is unknown)."""
    from seqjax.tasks import forecast
    from seqjax.train import runs

    spec, series, found = run.spec, history, []
    while len(found) < horizon:
        start = np.array([len(series)])
        batch = {"inputs": forecast.inputs(series, start, spec)}
        outputs = runs.predict(run, batch)
        block = forecast.to_values(outputs, series[start - 1, 0], spec)[0]
        found.extend(block)
        if len(found) < horizon:  # only a run without features gets here (checked)
            series = np.concatenate([series, block[:, None]])
    return np.asarray(found[:horizon])


def _plot_forecast(path: str, args, history, predicted, truth, spec) -> None:
    out = _output(path, args, reads=args.data)
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        print("plot not drawn: matplotlib is not installed (pip install 'seqjax[plot]')")
        return
    shown = min(len(history), max(4 * spec["window"], 3 * len(predicted)))
    figure = Figure(figsize=(8, 3.5), layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.subplots()
    n = len(history)
    axes.plot(np.arange(n - shown, n), history[-shown:], label="history", color="0.3")
    after = np.arange(n, n + len(predicted))
    axes.plot(after, predicted, marker=".", label="forecast")
    if len(truth):
        axes.plot(after[: len(truth)], truth, marker=".", label="truth")
    axes.set(xlabel="row", ylabel=spec["target"])
    axes.legend()
    axes.grid(alpha=0.3)
    from seqjax.train import rundir

    rundir.write_atomically(out, lambda temporary: figure.savefig(temporary, format="png",
                                                                  dpi=100))  # fmt: skip
    print(f"plot: {out}")


def predict_command(args: argparse.Namespace) -> int:
    from seqjax.tasks import sequences
    from seqjax.tasks.files import DataFileError
    from seqjax.train import runs

    run = _load(args, "classify", "predict")
    spec = run.spec
    out = _output(args.out, args, reads=args.data)
    is_csv = pathlib.Path(args.data).suffix.lower() == ".csv"
    try:
        seqs = sequences.read(args.data, spec["features"] if is_csv else None, need_labels=False)
        batch = {"inputs": sequences.inputs(seqs, spec), "lengths": seqs.lengths}
    except DataFileError as err:
        raise UsageError(str(err)) from None
    logits = runs.predict(run, batch)
    probs = np.asarray(jax.nn.softmax(logits, axis=-1))
    classes = spec["classes"]
    chosen = probs.argmax(1)
    header = ["sequence_id", "prediction", *(f"p_{name}" for name in classes)]
    rows = [[seqs.ids[i], classes[chosen[i]], *(f"{p:.6f}" for p in probs[i])]
            for i in range(len(chosen))]  # fmt: skip
    if seqs.labels is not None:
        header.append("label")
        for row, label in zip(rows, seqs.labels, strict=True):
            row.append(str(label))
    _write_text(out, _csv_text(header, rows))
    line = f"{len(rows)} sequences predicted: {out}"
    if seqs.labels is not None:
        correct = np.mean([classes[c] == str(v) for c, v in zip(chosen, seqs.labels, strict=True)])
        line += f" (accuracy {correct:.4f} against the file's labels)"
    print(line)
    return 0


def export_command(args: argparse.Namespace) -> int:
    from seqjax.train import export

    run = _load(args, None, "export")
    out = _output(args.out, args)
    meta = {"config": run.config, "step": run.step}
    if args.to == "safetensors":
        export.save_safetensors(out, run.params, meta, overwrite=True)
    else:
        module = export.to_torch(run)
        state = {k: v.detach().numpy() for k, v in module.state_dict().items()}
        export.save_safetensors(out, state, meta, overwrite=True)
    print(f"exported the run's params (step {run.step}) as {args.to}: {out}")
    return 0
