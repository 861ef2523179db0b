"""bfloat16 recurrences on the CPU: seqjax's bf16 native kernels against its float32 ones and
against PyTorch in bfloat16 and float32, plus the GEMM rates behind them.

    python -m benchmarks.bf16                 # LSTM, GRU, RNN at medium and large
    python -m benchmarks.bf16 --rounds 5 --cells lstm --configs medium

Each contender's forward (outputs) and forward+backward (gradient of sum(ys^2) w.r.t. the
weights and the inputs) is timed in interleaved rounds, one call each per round in a shuffled
order, so a slow spell of the shared machine hits all alike; the figures are medians over rounds.
seqjax's bf16 row is the user's call, ``seqjax.unroll(cell, precision.cast(params,
"bfloat16"), xs)`` (bfloat16 weights, float32 biases, carry and outputs), which routes to the
bf16 native kernels; a row is left out where they cannot run (the reason:
``seqjax.native.bf16_unavailable_reason()``). The GEMM rates (2048^3,
:func:`benchmarks.limits.gemm_rates`) are PyTorch's and XLA's matmul in float32 and bfloat16
and ``seqjax.native.bf16_matmul``, measured in the same run.

Writes ``benchmarks/results/bf16.json`` and ``bf16.md``.
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
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

import seqjax
from benchmarks import limits
from seqjax import native, precision

CONFIGS = {"medium": (32, 128, 256), "large": (64, 256, 512)}
CELLS = {"lstm": seqjax.lstm, "gru": seqjax.gru, "rnn": seqjax.simple_rnn}
KERNELS = {"lstm": "lstm", "gru": "gru", "rnn": "rnn_tanh"}
RESULTS = pathlib.Path(__file__).parent / "results"


def _block(value):
    if hasattr(value, "detach"):
        return value
    return jax.block_until_ready(value)


def _pair(apply: Callable, params, xs) -> tuple[Callable, Callable]:
    forward = jax.jit(apply)
    grad = jax.jit(
        jax.grad(lambda p, x: jnp.sum(apply(p, x).astype(jnp.float32) ** 2), argnums=(0, 1))
    )
    return (lambda: forward(params, xs)), (lambda: grad(params, xs))


def seqjax_contenders(cell_name: str, H: int, xs) -> dict[str, tuple]:
    """seqjax's float32 run and, where the bf16 kernels serve this machine, the mixed policy
    (``precision.cast(params, "bfloat16")``) through the same ``seqjax.unroll`` call."""
    cell = CELLS[cell_name](H)
    params = cell.init(jax.random.key(1), H)
    out = {"seqjax f32 native": _pair(lambda p, x: seqjax.unroll(cell, p, x)[1], params, xs)}
    mixed = precision.cast(params, "bfloat16")
    if native.unsupported_reason(native.kernel_for(cell.recur_split), mixed, xs) is None:
        out["seqjax bf16 native"] = _pair(lambda p, x: seqjax.unroll(cell, p, x)[1], mixed, xs)
    return out


def torch_contenders(cell_name: str, H: int, xs) -> dict[str, tuple]:
    import torch

    torch.set_num_threads(os.cpu_count() or 1)
    cls = {"lstm": torch.nn.LSTM, "gru": torch.nn.GRU, "rnn": torch.nn.RNN}[cell_name]
    out = {}
    for label, dtype in (("pytorch f32", torch.float32), ("pytorch bf16", torch.bfloat16)):
        module = cls(H, H, batch_first=True).to(dtype)
        x = torch.from_numpy(np.array(xs)).to(dtype).requires_grad_(True)

        def forward(module=module, x=x):
            with torch.no_grad():
                return module(x)[0]

        def backward(module=module, x=x):
            module.zero_grad(set_to_none=True)
            x.grad = None
            (module(x)[0].float() ** 2).sum().backward()
            return x.grad

        out[label] = (forward, backward)
    return out


def run_config(cell_name: str, config: str, rounds: int) -> list[dict]:
    B, T, H = CONFIGS[config]
    xs = jax.random.normal(jax.random.key(0), (B, T, H))
    contenders = {**seqjax_contenders(cell_name, H, xs), **torch_contenders(cell_name, H, xs)}
    times = {(name, kind): [] for name in contenders for kind in ("fwd", "fwd+bwd")}
    for fwd, bwd in contenders.values():  # compile / warm up
        _block(fwd())
        _block(bwd())
    for _ in range(rounds):
        order = list(contenders.items())
        random.shuffle(order)
        for name, (fwd, bwd) in order:
            for kind, fn in (("fwd", fwd), ("fwd+bwd", bwd)):
                start = time.perf_counter()
                _block(fn())
                times[name, kind].append(time.perf_counter() - start)
    return [
        {
            "cell": cell_name,
            "config": config,
            "shape": {"batch": B, "time": T, "hidden": H},
            "contender": name,
            "fwd_ms": 1e3 * statistics.median(times[name, "fwd"]),
            "fwd_bwd_ms": 1e3 * statistics.median(times[name, "fwd+bwd"]),
        }
        for name in contenders
    ]


def table(results: list[dict]) -> list[str]:
    lines = [
        "| cell | config | contender | fwd ms | fwd+bwd ms | fwd vs pytorch bf16 | "
        "fwd+bwd vs pytorch bf16 | fwd+bwd speed-up over seqjax f32 |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row in results:
        same = [r for r in results if (r["cell"], r["config"]) == (row["cell"], row["config"])]
        ref = next((r for r in same if r["contender"] == "pytorch bf16"), None)
        f32 = next((r for r in same if r["contender"] == "seqjax f32 native"), None)
        fwd = f"{row['fwd_ms'] / ref['fwd_ms']:.2f}x" if ref else ""
        both = f"{row['fwd_bwd_ms'] / ref['fwd_bwd_ms']:.2f}x" if ref else ""
        speedup = f"{f32['fwd_bwd_ms'] / row['fwd_bwd_ms']:.2f}x" if f32 else ""
        lines.append(
            f"| {row['cell']} | {row['config']} | {row['contender']} | {row['fwd_ms']:.1f} | "
            f"{row['fwd_bwd_ms']:.1f} | {fwd} | {both} | {speedup} |"
        )
    return lines


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--cells", nargs="+", default=list(CELLS), choices=list(CELLS))
    parser.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    args = parser.parse_args(argv)
    results = []
    for cell in args.cells:
        for config in args.configs:
            results += run_config(cell, config, args.rounds)
            print("\n".join(table([r for r in results if r["cell"] == cell])[-4:]), flush=True)
    rates = limits.gemm_rates(include_seqjax=True)
    import torch

    machine = (
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, jax "
        f"{jax.__version__}, torch {torch.__version__}, bf16 path {native.bf16.path()}"
    )
    RESULTS.mkdir(exist_ok=True)
    record = {
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "machine": machine,
        "command": "python -m benchmarks.bf16 " + " ".join(argv or []),
        "rounds": args.rounds,
        "results": results,
        "gemm_gflops_2048": rates,
    }
    (RESULTS / "bf16.json").write_text(json.dumps(record, indent=1) + "\n")
    md = [
        "# bfloat16 recurrences on the CPU",
        "",
        f"`{record['command'].strip()}` on {machine}, {record['date']}; medians of "
        f"{args.rounds} interleaved rounds. seqjax bf16: bf16 weights and inputs, float32 "
        "biases, carry, outputs and gradients; PyTorch bf16: `module.to(torch.bfloat16)`.",
        "",
        *table(results),
        "",
        "GEMM, 2048 x 2048 x 2048, GFLOP/s (medians of 10 calls):",
        "",
        "| | GFLOP/s |",
        "|---|---|",
        *[f"| {name} | {rate:.0f} |" for name, rate in rates.items()],
        "",
    ]
    (RESULTS / "bf16.md").write_text("\n".join(md))
    print("\n".join(md))


if __name__ == "__main__":
    main()
