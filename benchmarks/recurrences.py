"""The recurrences since 2023: forward+backward time per step against sequence length.

    python -m benchmarks.recurrences                    # T = 256 ... 16384, batch 8, hidden 128
    python -m benchmarks.recurrences --lengths 256 1024 # a quick look

Each cell of issue 25 (mLSTM, sLSTM, RG-LRU, the selective SSM, the MGU) runs in every form it
has: sequential (``lax.scan``, one step at a time), parallel (the associative scan for the
linear recurrences; the quadratic form for the mLSTM) and chunkwise (``chunk_size``: the mLSTM's
chunkwise form, chunks of the associative scan for the others). seqjax's LSTM is the sequential
reference. Each program is compiled ahead, and one whose forward+backward needs more memory than
``--max-gib`` (XLA's memory analysis) is skipped and named, not run. Calls are interleaved in
shuffled rounds; the median is kept. The figure to read is microseconds per step: flat for a
sequential scan, falling with T where a parallel form pays.

Writes ``benchmarks/results/recurrences.json`` and ``recurrences.md``.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import random
import statistics
import time

import jax
import jax.numpy as jnp

import seqjax
from benchmarks import limits as machine_limits
from benchmarks.memory import peak_bytes
from benchmarks.rnn import RESULTS

LENGTHS = [256, 1024, 4096, 16384]
# Steps per chunk of the chunkwise forms: 64 for the mLSTM, whose chunks cost L^2 (64 ran its
# T=1024 case 2.2x faster than 256 here), 256 for the associative scans.
CHUNKS = {"mlstm": 64}
CHUNK = 256


def forms(H: int) -> list[tuple[str, str, seqjax.Cell, dict]]:
    """``(cell name, form, cell, unroll options)`` of every contender."""
    cells = {
        "lstm": seqjax.lstm(H),
        "mgu": seqjax.mgu(H),
        "slstm": seqjax.slstm(H, num_heads=4),
        "mlstm": seqjax.mlstm(H, num_heads=4),
        "rg_lru": seqjax.rg_lru(H, num_heads=4),
        "selective_ssm": seqjax.selective_ssm(H),
    }
    out = []
    for name, cell in cells.items():
        out.append((name, "sequential", cell, {}))
        if cell.linear is not None or cell.sequence is not None:
            out.append((name, "parallel", cell, {"parallel": True}))
            chunk = CHUNKS.get(name, CHUNK)
            out.append((name, f"chunkwise {chunk}", cell, {"parallel": True, "chunk_size": chunk}))
    return out


def _compiled(cell: seqjax.Cell, options: dict, params, xs):
    def loss(p, x):
        return jnp.sum(seqjax.unroll(cell, p, x, **options)[1] ** 2)

    return jax.jit(jax.grad(loss, argnums=(0, 1))).lower(params, xs).compile()


def time_length(B: int, T: int, H: int, rounds: int, max_gib: float) -> list[dict]:
    xs = jax.random.normal(jax.random.key(0), (B, T, H))
    runners, rows = [], []
    for name, form, cell, options in forms(H):
        if options.get("chunk_size", T) >= T and form.startswith("chunkwise"):
            continue  # one chunk: the parallel program
        params = cell.init(jax.random.key(1), H)
        start = time.perf_counter()
        compiled = _compiled(cell, options, params, xs)
        gib = peak_bytes(compiled) / 2**30
        row = {"time": T, "cell": name, "form": form, "peak_gib": gib}
        if gib > max_gib:
            rows.append(row | {"skipped": f"needs {gib:.1f} GiB > {max_gib:g}"})
            continue
        jax.block_until_ready(compiled(params, xs))
        row["first_call_s"] = time.perf_counter() - start
        runners.append((row, compiled, params, []))
    for _ in range(rounds):
        random.shuffle(runners)
        for _row, compiled, params, times in runners:
            start = time.perf_counter()
            jax.block_until_ready(compiled(params, xs))
            times.append(time.perf_counter() - start)
    for row, _, _, times in runners:
        ms = 1e3 * statistics.median(times)
        rows.append(row | {"fwd_bwd_ms": ms, "us_per_step": 1e3 * ms / T})
    order = {(n, f): i for i, (n, f, _, _) in enumerate(forms(H))}
    return sorted(rows, key=lambda r: order[r["cell"], r["form"]])


def markdown(results: list[dict], machine: str, B: int, H: int, limits: dict | None) -> str:
    lengths = sorted({r["time"] for r in results})
    by = {(r["cell"], r["form"], r["time"]): r for r in results}
    lines = [
        f"Measured {machine}. Forward+backward, float32, batch {B}, hidden {H} (= input "
        f"features), microseconds per step (the whole sequence's time / T), median of "
        "interleaved rounds; chunkwise N: chunks of N steps; '-': skipped for memory (the "
        "peak it would need) or one chunk.",
        "",
        *([machine_limits.describe(limits) + ".", ""] if limits else []),
        "| cell | form | " + " | ".join(f"T={T}" for T in lengths) + " |",
        "|---|---|" + "---|" * len(lengths),
    ]
    order = {(n, f): i for i, (n, f, _, _) in enumerate(forms(H))}
    rows = sorted(dict.fromkeys((r["cell"], r["form"]) for r in results), key=order.get)
    for cell, form in rows:
        shown = []
        for T in lengths:
            r = by.get((cell, form, T))
            if r is None:
                shown.append("-")
            elif "skipped" in r:
                shown.append(f"- ({r['peak_gib']:.0f} GiB)")
            else:
                shown.append(f"{r['us_per_step']:.1f}")
        lines.append(f"| {cell} | {form} | " + " | ".join(shown) + " |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--lengths", nargs="+", type=int, default=LENGTHS)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--hidden", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--max-gib", type=float, default=12.0)
    parser.add_argument("--out", type=pathlib.Path, default=RESULTS)
    args = parser.parse_args(argv)
    random.seed(0)
    device = jax.devices()[0]
    machine = machine_limits.machine()
    limits = machine_limits.gemm_rates()
    print(machine_limits.describe(limits), flush=True)
    results = []
    for T in args.lengths:
        rows = time_length(args.batch, T, args.hidden, args.rounds, args.max_gib)
        results += rows
        for r in rows:
            shown = r.get("skipped") or f"{r['us_per_step']:8.1f} us/step"
            print(f"T={T:<6}{r['cell']:<15}{r['form']:<15}{shown}", flush=True)
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    stem = "recurrences" if device.platform == "cpu" else f"recurrences_{device.platform}"
    payload = {"machine": machine, "batch": args.batch, "hidden": args.hidden,
               "limits": limits, "results": results}  # fmt: skip
    (out / f"{stem}.json").write_text(json.dumps(payload, indent=1))
    (out / f"{stem}.md").write_text(markdown(results, machine, args.batch, args.hidden, limits))
    print((out / f"{stem}.md").read_text())


if __name__ == "__main__":
    main()
