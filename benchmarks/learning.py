"""What recurrent networks learn: the measured bars of the training tasks, rerunnable.

    python -m benchmarks.learning                 # every group (about an hour on 2 CPU cores)
    python -m benchmarks.learning --only cells    # one group: adding, cells, tasks, charlm
    python -m benchmarks.learning --from-json     # rewrite the Markdown from the saved JSON
    python -m benchmarks.learning --collect       # gather finished runs from runs/learning/
    python -m benchmarks.learning --only recurrences --shard 0/2 & \
        python -m benchmarks.learning --only recurrences --shard 1/2  # two at a time

Each run is one ``seqjax train`` invocation (the same code path as the command line) with its
own run directory under ``runs/learning/``; its result.json and wall time are collected into
``benchmarks/results/learning.json`` and the tables of ``benchmarks/results/learning.md``.

Groups:
  adding  LSTM and GRU on the adding problem at T = 100, 200, and 400 within 15 minutes
          (baseline MSE 0.167).
  cells   The textbook claim: tanh RNN, IRNN, LSTM and GRU with one fixed budget (1500 steps of
          64 sequences, hidden 64, Adam 3e-3, clip 1) on the adding problem at T = 10 ... 200.
  tasks   mnist1d (GRU, LSTM), digits (rows, pixels), sunspots and copy (LSTM, GRU).
  charlm  The character language model: the default run, and a run of about 15 minutes.
  parallel  Parallel-scan recurrences (min_gru, min_lstm, lru) against lstm and gru with one
          budget per task: adding T=100, copy T=20, charlm; final metric and the training
          time to a target (first evaluation at or below it; evaluations every 10% of a run).
  recurrences  The recurrences since 2023 (mgu, slstm, mlstm, rg_lru, selective_ssm) against
          lstm, gru and lru, one budget per task: adding T=100 and T=400, copy T=20 and
          T=100, charlm, mnist1d.

Records of groups not rerun are kept from the saved learning.json.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import platform
import shutil
import time

import jax

from seqjax import cli

RESULTS = pathlib.Path(__file__).parent / "results"
RUNS = pathlib.Path("runs/learning")


def _configs(group: str) -> list[dict]:
    if group == "adding":
        return [
            {"task": "adding", "cell": cell, "seq_len": t, "steps": steps}
            for t, steps in ((100, 2000), (200, 3000))
            for cell in ("lstm", "gru")
        ] + [  # as far as a 15-minute budget goes
            {"task": "adding", "cell": cell, "seq_len": 400, "steps": 3000, "max_minutes": 15}
            for cell in ("lstm", "gru")
        ]
    if group == "cells":
        return [
            {"task": "adding", "cell": cell, "seq_len": t, "steps": 1500, "hidden": 64}
            for cell in ("rnn", "irnn", "lstm", "gru")
            for t in (10, 20, 50, 100, 200)
        ] + [  # the IRNN is known to need small steps (Le et al. 2015)
            {
                "task": "adding",
                "cell": "irnn",
                "seq_len": t,
                "steps": 1500,
                "hidden": 64,
                "lr": 1e-4,
            }
            for t in (10, 20, 50, 100, 200)
        ]
    if group == "tasks":
        return [
            {"task": "mnist1d", "cell": "gru"},
            {"task": "mnist1d", "cell": "lstm"},
            {"task": "digits", "cell": "gru", "seq_len": 8},
            {"task": "digits", "cell": "gru", "seq_len": 64},
            {"task": "sunspots", "cell": "lstm"},
            {"task": "sunspots", "cell": "gru"},
            {"task": "copy", "cell": "lstm"},
            {"task": "copy", "cell": "gru"},
        ]
    if group == "charlm":
        return [
            {"task": "charlm", "cell": "lstm"},
            {
                "task": "charlm",
                "cell": "lstm",
                "steps": 20000,
                "max_minutes": 15,
                "label": "15 minutes",
            },
        ]
    if group == "parallel":
        budgets = [
            {"task": "adding", "seq_len": 100, "steps": 1500, "hidden": 64},
            {"task": "copy", "seq_len": 20, "steps": 1000, "hidden": 64},
            {"task": "charlm", "steps": 1500, "hidden": 128},
        ]
        return [
            {"task": b["task"], "cell": cell, **{k: v for k, v in b.items() if k != "task"}}
            for b in budgets
            for cell in ("lstm", "gru", "min_gru", "min_lstm", "lru")
        ]
    if group == "recurrences":
        return [
            {"task": b["task"], "cell": cell, **{k: v for k, v in b.items() if k != "task"}}
            for b in RECURRENCE_BUDGETS
            for cell in RECURRENCE_CELLS
        ]
    raise ValueError(f"unknown group {group!r}")


GROUPS = ("adding", "cells", "tasks", "charlm", "parallel", "recurrences")
# The recurrences since 2023 against LSTM, GRU and the LRU (issue 25): one budget per task, the
# same for every cell. max_minutes only guards the total; a run it cut short says so.
RECURRENCE_CELLS = ("lstm", "gru", "lru", "mgu", "slstm", "mlstm", "selective_ssm", "rg_lru")
RECURRENCE_BUDGETS = [
    {"task": "adding", "seq_len": 100, "steps": 1000, "hidden": 64, "max_minutes": 4},
    {"task": "adding", "seq_len": 400, "steps": 500, "hidden": 64, "max_minutes": 4},
    {"task": "copy", "seq_len": 20, "steps": 1000, "hidden": 64, "max_minutes": 4},
    {"task": "copy", "seq_len": 100, "steps": 600, "hidden": 64, "max_minutes": 4},
    {"task": "charlm", "steps": 800, "hidden": 128, "max_minutes": 4},
    {"task": "mnist1d", "steps": 1000, "hidden": 64, "max_minutes": 4},
]
# The target of the time-to-target column of the parallel group, per task: (metric, value).
TARGETS = {"adding": ("eval_mse", 0.01), "copy": ("eval_ce", 0.45), "charlm": ("eval_bpc", 3.0)}


def _time_to_target(run_dir: pathlib.Path, task: str) -> tuple[int, float] | None:
    """``(step, seconds of training)`` at the first evaluation at or below the task's target."""
    key, target = TARGETS[task]
    seconds, previous = 0.0, 0
    for line in (run_dir / "metrics.jsonl").read_text().splitlines():
        report = json.loads(line)
        if report["steps_per_s"]:  # the rate since the last report; None before any was timed
            seconds += (report["step"] - previous) / report["steps_per_s"]
        previous = report["step"]
        if report.get(key, float("inf")) <= target:
            return report["step"], seconds
    return None


def _argv(config: dict) -> list[str]:
    options = {k: v for k, v in config.items() if k != "label"}
    name = "_".join(f"{k}{v}" for k, v in options.items()).replace("/", "-")
    argv = ["train", "--run-dir", str(RUNS / name)]
    for key, value in options.items():
        argv += [f"--{key.replace('_', '-')}", str(value)]
    return argv


def _record(group: str, config: dict) -> dict | None:
    """The finished run of ``config``, from its run directory (None if it has not run)."""
    argv = _argv(config)
    path = pathlib.Path(argv[2]) / "result.json"
    if not path.exists():
        return None
    result = json.loads(path.read_text())
    record = {"group": group, **result, "wall_s": result["seconds"],
              "label": config.get("label", ""), "argv": "seqjax " + " ".join(argv)}  # fmt: skip
    if group == "parallel":
        record["to_target"] = _time_to_target(path.parent, config["task"])
    return record


def _merged(path: pathlib.Path, found: list[dict]) -> list[dict]:
    """``found``, plus the saved records of ``path`` whose runs are not here (their run
    directories were removed, or were made on another machine): a run of one group must not
    erase the others' measurements."""
    if not path.exists():
        return found
    fresh = {(r["group"], r["argv"]) for r in found}
    kept = [r for r in json.loads(path.read_text())["records"]
            if (r["group"], r["argv"]) not in fresh]  # fmt: skip
    order = {g: i for i, g in enumerate(GROUPS)}
    return sorted(kept + found, key=lambda r: order.get(r["group"], len(order)))


def _run(group: str, config: dict) -> None:
    argv = _argv(config)
    run_dir = pathlib.Path(argv[2])
    shutil.rmtree(run_dir, ignore_errors=True)  # a rerun starts afresh
    if cli.main(argv) != 0:
        raise RuntimeError(f"seqjax {' '.join(argv)} failed")


def _recurrences_markdown(records: list[dict]) -> list[str]:
    tasks = list(dict.fromkeys(r["task"] for r in records))
    first = {t: next(r for r in records if r["task"] == t) for t in tasks}
    budgets = "; ".join(f"{t}: {first[t]['steps']} steps of {first[t]['batch_size']}, hidden "
                        f"{first[t]['hidden']}" for t in tasks)  # fmt: skip
    head = "| cell | " + " | ".join(tasks) + " |"
    rule = "|---|" + "---|" * len(tasks)
    lines = ["### The recurrences since 2023 against LSTM, GRU and the LRU", "",
             f"One budget per task, the same for every cell ({budgets}; Adam 3e-3, cosine, "
             "clip 1; a 4-minute guard). The mLSTM runs chunkwise (chunks of 64); the RG-LRU "
             "and the selective SSM sit behind a linear input layer, the LRU behind its GELU "
             "input layer, all three with the associative scan (these selective-SSM rows "
             "predate `seqjax train` running it as a loop on the CPU, its faster form there). "
             "Test metric (" + ", ".join(
                 f"{t}: {first[t]['metric']}, {first[t]['baseline_name']} "
                 f"{first[t]['baseline']:.3f}" for t in tasks) + "); **bold**: better than "
             "the baseline; *cut at N*: the guard ended it after N steps.",
             "", head, rule]  # fmt: skip
    by = {(r["cell"], r["task"]): r for r in records}
    cells = list(dict.fromkeys(r["cell"] for r in records))
    for cell in cells:
        shown = []
        for t in tasks:
            r = by.get((cell, t))
            if r is None:
                shown.append("")
                continue
            text = f"{r['value']:.4f}"
            if not r["verdict"].startswith("no better"):
                text = f"**{text}**"
            if r.get("steps_done", r["steps"]) < r["steps"]:
                text += f" *cut at {r['steps_done']}*"
            shown.append(text)
        lines.append(f"| {cell} | " + " | ".join(shown) + " |")
    lines += ["", "Wall time of the same runs (compilation and evaluation included):", "",
              head, rule]  # fmt: skip
    for cell in cells:
        shown = [f"{by[cell, t]['wall_s']:.0f} s" if (cell, t) in by else "" for t in tasks]
        lines.append(f"| {cell} | " + " | ".join(shown) + " |")
    return [*lines, ""]


def _markdown(records: list[dict], meta: dict) -> str:
    lines = [f"Measured {meta['date']} on {meta['machine']} (jax {meta['jax']}), "
             "by `python -m benchmarks.learning`. Wall time includes compilation and "
             "evaluation.", ""]  # fmt: skip
    adding = [r for r in records if r["group"] == "adding"]
    if adding:
        lines += ["### Adding problem, LSTM and GRU (baseline MSE 0.167)", "",
                  "| T | cell | steps | test MSE | verdict | wall time |",
                  "|---|---|---|---|---|---|"]  # fmt: skip
        lines += [f"| {r['seq_len']} | {r['cell']} | {r.get('steps_done', r['steps'])} | "
                  f"{r['value']:.4f} | "
                  f"{r['verdict']} | {r['wall_s']:.0f} s |" for r in adding]  # fmt: skip
        lines.append("")
    cells = [r for r in records if r["group"] == "cells"]
    if cells:
        lengths = sorted({r["seq_len"] for r in cells})
        lines += ["### One budget, four cells: adding-problem test MSE against T", "",
                  "1500 Adam steps (peak lr 3e-3 unless named, cosine) of 64 sequences, "
                  "hidden 64, clip_norm 1; baseline MSE 0.167; **bold**: solved (< 0.01).", "",
                  "| cell | " + " | ".join(f"T={t}" for t in lengths) + " |",
                  "|---|" + "---|" * len(lengths)]  # fmt: skip

        def name(r):
            return r["cell"] + ("" if r["lr"] == 3e-3 else f", lr {r['lr']:g}")

        for cell in dict.fromkeys(name(r) for r in cells):
            row = {r["seq_len"]: r["value"] for r in cells if name(r) == cell}
            shown = [(f"**{row[t]:.4f}**" if row[t] < 0.01 else f"{row[t]:.4f}") if t in row
                     else "" for t in lengths]  # fmt: skip
            lines.append(f"| {cell} | " + " | ".join(shown) + " |")
        lines.append("")
    parallel = [r for r in records if r["group"] == "parallel"]
    if parallel:
        lines += ["### Parallel-scan recurrences against LSTM and GRU", "",
                  "One budget per task (adding T=100: 1500 steps, hidden 64; copy T=20: 1000 "
                  "steps, hidden 64; charlm: 1500 steps, hidden 128). min_gru and min_lstm run in "
                  "log space, the LRU with a GELU input layer; all three unrolled with "
                  "`parallel=True`. Time to target: training seconds (without evaluation) to the "
                  "first evaluation at or below " + ", ".join(
                      f"{t} {k.removeprefix('eval_')} {v}" for t, (k, v) in TARGETS.items())
                  + "; evaluations every 10% of the run.", "",
                  "| task | cell | metric | final | baseline | time to target | wall time |",
                  "|---|---|---|---|---|---|---|"]  # fmt: skip
        for r in parallel:
            reached = r.get("to_target")
            shown = f"step {reached[0]}, {reached[1]:.0f} s" if reached else "not reached"
            lines.append(f"| {r['task']} | {r['cell']} | {r['metric']} | {r['value']:.4f} | "
                         f"{r['baseline_name']} {r['baseline']:.4f} | {shown} | "
                         f"{r['wall_s']:.0f} s |")  # fmt: skip
        lines.append("")
    recurrences = [r for r in records if r["group"] == "recurrences"]
    if recurrences:
        lines += _recurrences_markdown(recurrences)
    others = [r for r in records if r["group"] in ("tasks", "charlm")]
    if others:
        lines += ["### Other tasks", "",
                  "| task | cell | steps | metric | value | baseline | verdict | wall time |",
                  "|---|---|---|---|---|---|---|---|"]  # fmt: skip
        for r in others:
            label = f" ({r['label']})" if r["label"] else ""
            done = r.get("steps_done", r["steps"])
            lines.append(f"| {r['task']}{label} | {r['cell']} | {done} | "
                         f"{r['metric']} | "
                         f"{r['value']:.4f} | {r['baseline_name']} {r['baseline']:.4f} | "
                         f"{r['verdict']} | {r['wall_s']:.0f} s |")  # fmt: skip
        samples = [r for r in others if r.get("sample")]
        for r in samples:
            label = f", {r['label']}" if r["label"] else ""
            done = r.get("steps_done", r["steps"])
            lines += ["", f"Sample after {done} steps{label} (temperature 0.8):", "",
                      "```text", r["sample"].strip(), "```"]  # fmt: skip
        lines.append("")
    lines += ["Commands: each row is `" + (records[0]["argv"] if records else "") + "` with "
              "its own options; all of them are in learning.json (`argv`)."]  # fmt: skip
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", nargs="+", choices=GROUPS, default=list(GROUPS))
    parser.add_argument("--from-json", action="store_true")
    parser.add_argument("--collect", action="store_true")
    parser.add_argument("--skip-done", action="store_true", help="keep runs that finished")
    parser.add_argument("--shard", default="0/1", help="I/N: run every N-th config from the I-th "
                        "(two shards at once use both cores of a 2-core machine)")  # fmt: skip
    args = parser.parse_args()
    path = RESULTS / "learning.json"
    if not args.from_json:
        if not args.collect:
            shard, shards = (int(n) for n in args.shard.split("/"))
            todo = [(g, c) for g in args.only for c in _configs(g)][shard::shards]
            for group, config in todo:
                if not (args.skip_done and _record(group, config)):
                    _run(group, config)
        # The table is gathered from the run directories, so runs of several invocations
        # (even concurrent ones) end up in one file.
        meta = {"date": time.strftime("%Y-%m-%d"), "jax": jax.__version__,
                "machine": f"{platform.machine()}, {jax.default_backend()}, "
                           f"{len(os.sched_getaffinity(0))} cores"}  # fmt: skip
        found = [_record(group, config) for group in GROUPS for config in _configs(group)]
        records = _merged(path, [r for r in found if r])
        RESULTS.mkdir(exist_ok=True)
        path.write_text(json.dumps({"meta": meta, "records": records}, indent=1))
    saved = json.loads(path.read_text())
    (RESULTS / "learning.md").write_text(_markdown(saved["records"], saved["meta"]))
    print((RESULTS / "learning.md").read_text())


if __name__ == "__main__":
    main()
