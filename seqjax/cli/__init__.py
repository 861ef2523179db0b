"""The ``seqjax`` command.

``seqjax train`` trains a recurrent network on a built-in task and ends with a verdict against the
task's baseline; ``RUN_DIR`` keeps metrics.jsonl, checkpoints and result.json.

``seqjax sample``, ``forecast``, ``predict`` and ``export`` put a trained run to use.

``seqjax demo`` unrolls each built-in cell (shapes, compile time, forward and backward timings),
then trains a tanh RNN, a GRU and an LSTM on the adding problem and reports their error against
the trivial baseline.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from seqjax.cli import use
from seqjax.cli.common import CELLS, TRAIN_CELLS, Model, UsageError, build_model
from seqjax.cli.demo import demo
from seqjax.cli.diagnose import diagnose_command
from seqjax.cli.train import train_command

__all__ = ["CELLS", "TRAIN_CELLS", "Model", "UsageError", "build_model", "main"]


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line, not the usage block: the message says it all
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def main(argv: Sequence[str] | None = None) -> int:
    parser = _Parser(prog="seqjax", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    _add_demo(commands)
    _add_train(commands)
    _add_diagnose(commands)
    _add_use(commands)
    try:  # --help and usage errors end here, as exit codes for the caller
        args = parser.parse_args(argv)
    except SystemExit as exit_:
        return int(exit_.code or 0)
    from seqjax.train import Interrupted
    from seqjax.train.checkpoint import CheckpointError
    from seqjax.train.export import ExportError
    from seqjax.train.rundir import RunDirError

    try:
        commands = {"train": train_command, "diagnose": diagnose_command, "demo": demo,
                    "sample": use.sample_command, "forecast": use.forecast_command,
                    "predict": use.predict_command, "export": use.export_command}  # fmt: skip
        return commands[args.command](args)
    except (UsageError, CheckpointError, RunDirError, ExportError) as err:
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


def _add_demo(commands) -> None:
    """The ``demo`` command's arguments."""
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


def _add_train(commands) -> None:
    """The ``train`` command's arguments."""
    t = commands.add_parser(
        "train", help="train on a built-in task and report against its baseline"
    )
    t.add_argument(
        "--task",
        default="adding",
        help="adding | copy | charlm | sunspots | mnist1d | digits, or on your own file: "
        "forecast (a CSV time series) | classify (labelled sequences) (default adding)",
    )
    t.add_argument(
        "--cell",
        default="lstm",
        choices=list(TRAIN_CELLS),
        help="rnn (tanh), irnn (relu, identity init), indrnn, lstm, gru, or the parallel-scan "
        "min_gru, min_lstm, lru, and the recurrences since 2023: mgu, slstm, mlstm, rg_lru, "
        "selective_ssm (default lstm)",
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
        "--dtype",
        default="float32",
        choices=["float32", "bfloat16", "float16"],
        help="matmul precision: bfloat16/float16 run the mixed policy (those matmuls with "
        "float32 sums, float32 state and float32 master weights) (default float32)",
    )
    t.add_argument(
        "--max-minutes", type=float, help="end training after this many minutes, whatever --steps"
    )
    t.add_argument("--corpus", help="charlm: a UTF-8 text file to train on instead of Shakespeare")
    _add_own_data(t)
    t.add_argument("--data-parallel", action="store_true",
                   help="split each batch over all devices (after jax.distributed.initialize() "
                   "on several hosts: all of theirs)")  # fmt: skip
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--run-dir",
                   help="metrics.jsonl, curve.png, checkpoints/ and result.json (default: a new "
                   "folder runs/<task>-<time>, and runs/latest links to the newest; with "
                   "--resume: runs/latest)")  # fmt: skip
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


def _add_own_data(t) -> None:
    """``seqjax train``'s options for the tasks on a user's file."""
    t.add_argument(
        "--data",
        help="forecast: a CSV file with a header row, one row per time "
        "step; classify: an .npz file (inputs (N, T, D), labels (N,), optional "
        "lengths (N,)) or a long CSV (sequence_id, time, features..., label)",
    )
    t.add_argument("--target", help="forecast: the column to forecast")
    t.add_argument(
        "--features",
        type=_columns,
        help="comma-separated columns read as inputs (forecast: besides the "
        "target; classify CSV: default every column but sequence_id, time, label)",
    )
    t.add_argument(
        "--horizon", type=int, help="forecast: how many steps ahead the model predicts (default 1)"
    )
    t.add_argument(
        "--window",
        type=int,
        help="forecast: rows of history per prediction (default 24; same as --seq-len)",
    )
    t.add_argument(
        "--period",
        type=int,
        help="forecast: the season's length in rows (12 for monthly data, ...) for "
        "the seasonal-naive baseline",
    )
    t.add_argument(
        "--level-input",
        action="store_true",
        help="forecast: give the model the target's level too, not only its changes "
        "(helps a series that returns to a mean, hurts one with a trend)",
    )


def _columns(text: str) -> list[str]:
    names = [name.strip() for name in text.split(",")]
    if not all(names):
        raise argparse.ArgumentTypeError(f"expected comma-separated column names; got {text!r}")
    return names


def _add_diagnose(commands) -> None:
    """The ``diagnose`` command's arguments."""
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


def _run_command(commands, name: str, text: str):
    """A command that uses a trained run: its parser, with ``--run-dir``."""
    command = commands.add_parser(name, help=text)
    command.add_argument(
        "--run-dir",
        default="runs/latest",
        help="a seqjax train run folder (default runs/latest, the newest run)",
    )
    return command


def _add_use(commands) -> None:
    """The arguments of the commands that use a trained run."""
    s, f, p, e = (
        _run_command(commands, name, text)
        for name, text in [("sample", "generate text from a character model's run"),
                           ("forecast", "forecast a CSV series with a forecast run"),
                           ("predict", "classify sequences with a classify run"),
                           ("export", "write a run's params as safetensors")]
    )  # fmt: skip
    s.add_argument("--prompt", default="\n", help="the text to continue (default a newline)")
    s.add_argument("--length", type=int, default=400, help="characters to generate (400)")
    s.add_argument(
        "--temperature",
        type=float,
        default=0.8,
        help="softmax temperature; 0 takes the likeliest character (default 0.8)",
    )
    s.add_argument("--top-k", type=int, help="draw from the k likeliest characters only")
    s.add_argument("--seed", type=int, default=0)
    f.add_argument("--data", required=True, help="a CSV file with the run's columns")
    f.add_argument(
        "--horizon",
        type=int,
        help="steps to forecast (default the run's; more: fed back step by step)",
    )
    f.add_argument(
        "--holdout",
        type=int,
        default=0,
        help="forecast from the file without its last N rows, and compare with them",
    )
    f.add_argument("--out", default="forecast.csv", help="the forecast (default forecast.csv)")
    f.add_argument(
        "--plot",
        default="forecast.png",
        help="history, forecast and truth (default forecast.png; '' for none)",
    )
    p.add_argument("--data", required=True, help="an .npz or long CSV file (labels optional)")
    p.add_argument(
        "--out",
        default="predictions.csv",
        help="one row per sequence: prediction and probabilities (predictions.csv)",
    )
    e.add_argument("--to", choices=["safetensors", "torch"], default="safetensors",
                   help="seqjax's param names, or the state_dict names of the equivalent "
                   "PyTorch module (seqjax.train.export.to_torch)")  # fmt: skip
    e.add_argument("--out", required=True, help="the .safetensors file to write")
    for command in (f, p, e):
        command.add_argument("--overwrite", action="store_true", help="replace an existing --out")


if __name__ == "__main__":
    sys.exit(main())
