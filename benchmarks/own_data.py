"""A real series through the own-data path: Mauna Loa CO2 (statsmodels' ``co2`` data set) forecast
with ``seqjax train --task forecast``, against persistence, seasonal-naive and a linear AR.

    pip install statsmodels        # the data set ships with it (seqjax[bench] has it too)
    python -m benchmarks.own_data  # 3 seeds; --seeds 0 for one

The weekly readings, March 1958 to December 2001, are averaged per month (526 months; five
months have no reading and are filled by linear interpolation, which the script says) and
written to ``benchmarks/results/co2_monthly.csv``: the file a user would pass. Each seed trains
an LSTM on it through ``seqjax.cli.main`` exactly as the command line does, one step ahead from
a window of 24 months, and the test RMSE (the last 15% of months, about 1995-2001) is compared
with the baselines the task computes. Writes ``benchmarks/results/own_data.json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import datetime
import json
import pathlib
import statistics
import tempfile

RESULTS = pathlib.Path(__file__).parent / "results"
SERIES = RESULTS / "co2_monthly.csv"


def write_series(path: pathlib.Path = SERIES) -> int:
    """Monthly CO2 as CSV (``month,co2``); returns the number of months filled in."""
    try:
        from statsmodels.datasets import co2
    except ImportError:
        raise SystemExit(
            "this benchmark reads statsmodels' co2 data: pip install statsmodels"
        ) from None
    monthly = co2.load_pandas().data["co2"].resample("MS").mean()
    filled = int(monthly.isna().sum())
    frame = monthly.interpolate().to_frame().rename_axis("month")
    frame.to_csv(path, date_format="%Y-%m", float_format="%.4f")
    return filled


def train(seed: int, folder: pathlib.Path, steps: int) -> dict:
    from seqjax import cli

    run_dir = folder / f"seed{seed}"
    argv = ["train", "--task", "forecast", "--data", str(SERIES), "--target", "co2",
            "--window", "24", "--horizon", "1", "--period", "12", "--steps", str(steps),
            "--seed", str(seed), "--run-dir", str(run_dir)]  # fmt: skip
    if cli.main(argv) != 0:
        raise SystemExit(f"seqjax train failed: {' '.join(argv)}")
    return json.loads((run_dir / "result.json").read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--steps", type=int, default=1000)
    args = parser.parse_args()
    RESULTS.mkdir(exist_ok=True)
    filled = write_series()
    print(f"{SERIES}: {filled} months without a reading filled by linear interpolation")
    with tempfile.TemporaryDirectory() as folder:
        results = [train(seed, pathlib.Path(folder), args.steps) for seed in args.seeds]
    errors = results[0]["baseline_errors"]
    rows = [(f"LSTM seed {s}", r["test"]["rmse"], r["test"]["mae"], r["seconds"])
            for s, r in zip(args.seeds, results, strict=True)]  # fmt: skip
    rows += [(name, e["rmse"], e["mae"], None) for name, e in errors.items()]
    ar = next(e["rmse"] for name, e in errors.items() if name.startswith("linear AR"))
    median = statistics.median(r["test"]["rmse"] for r in results)
    lines = [f"# CO2 (Mauna Loa, monthly) one month ahead, {datetime.date.today()}", "",
             f"`python -m benchmarks.own_data --seeds {' '.join(map(str, args.seeds))} "
             f"--steps {args.steps}`: window 24 months, hidden 64, test = last 15% of months.",
             "", "| forecaster | test RMSE (ppm) | test MAE (ppm) | train time |",
             "|---|---|---|---|"]  # fmt: skip
    lines += [f"| {name} | {rmse:.4f} | {mae:.4f} | {'' if t is None else f'{t:.0f} s'} |"
              for name, rmse, mae, t in rows]  # fmt: skip
    lines += ["", f"Median LSTM RMSE / linear AR RMSE: {median / ar:.3f}"]
    text = "\n".join(lines) + "\n"
    print(text)
    (RESULTS / "own_data.md").write_text(text)
    record = {"date": str(datetime.date.today()), "seeds": args.seeds, "steps": args.steps,
              "filled_months": filled, "results": results, "lstm_over_ar": median / ar}  # fmt: skip
    (RESULTS / "own_data.json").write_text(json.dumps(record, indent=1) + "\n")


if __name__ == "__main__":
    main()
