"""Latency of one streaming step at batch 1: seqjax's ``stream(layer).step`` against PyTorch's
``nn.LSTM`` / ``nn.GRU`` called on a one-step sequence with its carried state.

    python -m benchmarks.streaming            # LSTM and GRU, H = 128 and 512
    python -m benchmarks.streaming --quick    # fewer steps

``seqjax`` is ``step`` with ``prepare``d params (the native kernels on the CPU), ``seqjax (XLA
step)`` is ``step`` with plain params. This is the deployed-model case: a stream arrives one
frame at a time and each output is needed before the next frame, so every step waits for its
result (``block_until_ready``; PyTorch's eager call) and the figure is the whole per-call
latency, dispatch included. All run in float32; PyTorch with one thread and with all, and its
figure is the faster (at batch 1 its threads mostly wait on each other). Contenders run in
interleaved rounds (a burst of steps each, in shuffled order) so that a noisy spell of the
machine hits all; the figure is the median over rounds of a round's mean step time. Writes
``benchmarks/results/streaming.json`` and ``streaming.md``.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import pathlib
import platform
import random
import statistics
import time

import jax
import numpy as np

import seqjax
from benchmarks import limits as machine_limits

RESULTS = pathlib.Path(__file__).parent / "results"
CELLS = {"lstm": seqjax.lstm, "gru": seqjax.gru}
HIDDEN = (128, 512)
THREADS = os.cpu_count() or 1


def seqjax_stepper(cell: str, hidden: int, frames: np.ndarray, prepared: bool):
    layer = seqjax.rnn(CELLS[cell](hidden))
    params = layer.init(jax.random.key(0), hidden)
    streamer = seqjax.stream(layer)
    params = streamer.prepare(params) if prepared else params
    frames = [jax.device_put(f) for f in frames]
    state = {"carry": streamer.start(params, (1,))}

    def run(steps: int) -> None:
        carry = state["carry"]
        for t in range(steps):
            carry, y = streamer.step(params, carry, frames[t % len(frames)])
            y.block_until_ready()
        state["carry"] = carry

    return run


def torch_stepper(cell: str, hidden: int, frames: np.ndarray, threads: int):
    import torch

    module = {"lstm": torch.nn.LSTM, "gru": torch.nn.GRU}[cell](hidden, hidden).eval()
    frames = [torch.from_numpy(f).reshape(1, 1, hidden) for f in frames]
    zeros = torch.zeros(1, 1, hidden)
    state = {"carry": (zeros, zeros.clone()) if cell == "lstm" else zeros}

    def run(steps: int) -> None:
        carry = state["carry"]
        torch.set_num_threads(threads)
        with torch.inference_mode():
            for t in range(steps):
                _, carry = module(frames[t % len(frames)], carry)
        state["carry"] = carry

    return run


def measure(cell: str, hidden: int, rounds: int, steps: int) -> dict:
    frames = np.random.default_rng(0).standard_normal((64, 1, hidden)).astype(np.float32)
    contenders = {
        "seqjax": seqjax_stepper(cell, hidden, frames, prepared=True),
        "seqjax (XLA step)": seqjax_stepper(cell, hidden, frames, prepared=False),
        "pytorch (1 thread)": torch_stepper(cell, hidden, frames, 1),
        f"pytorch ({THREADS} threads)": torch_stepper(cell, hidden, frames, THREADS),
    }
    for run in contenders.values():
        run(steps)  # compile, warm caches
    times: dict[str, list[float]] = {name: [] for name in contenders}
    for _ in range(rounds):
        order = list(contenders)
        random.shuffle(order)
        for name in order:
            start = time.perf_counter()
            contenders[name](steps)
            times[name].append((time.perf_counter() - start) / steps)
    us = {name: 1e6 * statistics.median(t) for name, t in times.items()}
    us["pytorch"] = min(v for name, v in us.items() if name.startswith("pytorch ("))
    ratios = {name: us[name] / us["pytorch"] for name in us if name.startswith("seqjax")}
    return {"cell": cell, "hidden": hidden, "us_per_step": us, "ratio": ratios}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer rounds and steps")
    args = parser.parse_args(argv)
    import torch

    threads = THREADS
    limits = machine_limits.gemm_rates()
    print(machine_limits.describe(limits), flush=True)
    rounds, steps = (5, 200) if args.quick else (15, 500)
    rows = []
    for cell in CELLS:
        for hidden in HIDDEN:
            row = measure(cell, hidden, rounds, steps)
            rows.append(row)
            us = row["us_per_step"]
            print(
                f"{cell} H={hidden}: seqjax {us['seqjax']:.1f} us/step (XLA step "
                f"{us['seqjax (XLA step)']:.1f}), PyTorch {us['pytorch']:.1f} us/step, ratio "
                f"{row['ratio']['seqjax']:.2f}x",
                flush=True,
            )
    meta = {
        "date": datetime.date.today().isoformat(),
        "machine": f"{platform.processor() or platform.machine()}, {threads} threads",
        "jax": jax.__version__,
        "torch": torch.__version__,
        "rounds": rounds,
        "steps_per_round": steps,
        "batch": 1,
        "input_size": "= hidden",
        "limits": limits,
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "streaming.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
    lines = [
        "# Streaming step latency, batch 1 (`python -m benchmarks.streaming`)",
        "",
        f"{meta['date']}, {meta['machine']}, jax {meta['jax']}, torch {meta['torch']}; "
        f"median of {rounds} rounds of {steps} steps, each step waited for.",
        "",
        machine_limits.describe(limits) + " (a batch-1 step is latency-bound: the rate is the "
        "ceiling a large matmul reaches, not what one step can).",
        "",
        "| cell | H | seqjax (us/step) | seqjax, XLA step | PyTorch (us/step) | seqjax / PyTorch "
        "| XLA step / PyTorch |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        us = row["us_per_step"]
        lines.append(
            f"| {row['cell']} | {row['hidden']} | {us['seqjax']:.1f} | "
            f"{us['seqjax (XLA step)']:.1f} | {us['pytorch']:.1f} | "
            f"{row['ratio']['seqjax']:.2f}x | {row['ratio']['seqjax (XLA step)']:.2f}x |"
        )
    (RESULTS / "streaming.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
