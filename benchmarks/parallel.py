"""Parallel against sequential recurrences: forward+backward time against sequence length.

    python -m benchmarks.parallel                     # T = 128 ... 16384, batch 16, hidden 128
    python -m benchmarks.parallel --lengths 128 1024  # a quick look

Contenders at each T: seqjax ``min_gru`` with ``unroll(parallel=True)`` (one associative scan,
and chunks of 512 steps), the same ``min_gru`` unrolled step by step, seqjax's ``gru``, Flax NNX's
``GRUCell`` (the fastest JAX peer GRU in ``benchmarks.rnn``) and PyTorch's ``nn.GRU`` where
installed. Calls are interleaved in shuffled rounds and the median is kept. The figure to read
is the speedup of parallel over sequential min_gru at each T, and where it crosses 1.

Writes ``benchmarks/results/parallel.json``, ``parallel.md`` and ``parallel.png``.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import random
import statistics
import time

import jax

import seqjax
from benchmarks import limits as machine_limits
from benchmarks.memory import peak_bytes
from benchmarks.rnn import RESULTS, Contender, _block, _jax_pair, flax_nnx_contenders

LENGTHS = [128, 256, 512, 1024, 2048, 4096, 8192, 16384]


def contenders(B: int, T: int, H: int, xs, peers: bool, notes: list[str]) -> list[Contender]:
    out = []
    min_gru, gru = seqjax.min_gru(H), seqjax.gru(H)
    runs = [
        ("min_gru parallel", min_gru, {"parallel": True}),
        ("min_gru parallel, chunks of 512", min_gru, {"parallel": True, "chunk_size": 512}),
        ("min_gru sequential", min_gru, {}),
        ("gru (seqjax)", gru, {}),
    ]
    for label, cell, options in runs:
        if options.get("chunk_size", T) >= T and label.endswith("512"):
            continue  # one chunk: the same program as "min_gru parallel"
        params = cell.init(jax.random.key(1), H)

        def run(p, x, cell=cell, options=options):
            return seqjax.unroll(cell, p, x, **options)[1]

        out.append(Contender(label, *_jax_pair(run, params, xs)))
    if not peers:
        return out
    out += flax_nnx_contenders("gru", B, T, H, xs)
    try:
        from benchmarks.rnn import torch_contenders

        out += torch_contenders("gru", B, T, H, xs)
    except ImportError as err:
        note = f"pytorch skipped: not installed ({err.name})"
        if note not in notes:
            notes.append(note)
    return out


MEMORY_RUNS = {
    "min_gru parallel": {"parallel": True},
    "min_gru parallel, chunks of 512": {"parallel": True, "chunk_size": 512},
    "min_gru parallel, chunks of 512, remat": {"parallel": True, "chunk_size": 512, "remat": True},
    "min_gru sequential": {},
}


def memory_mib(B: int, T: int, H: int) -> dict[str, float]:
    """Peak memory of forward+backward (XLA's memory analysis of the compiled gradient)."""
    cell = seqjax.min_gru(H)
    params = cell.init(jax.random.key(1), H)
    xs = jax.ShapeDtypeStruct((B, T, H), params["w_ih"].dtype)
    out = {}
    for label, options in MEMORY_RUNS.items():

        def loss(p, x, options=options):
            return (seqjax.unroll(cell, p, x, **options)[1] ** 2).sum()

        compiled = jax.jit(jax.grad(loss, argnums=(0, 1))).lower(params, xs).compile()
        out[label] = peak_bytes(compiled) / 2**20
    return out


def time_length(B: int, T: int, H: int, rounds: int, peers: bool, notes: list[str]):
    xs = jax.random.normal(jax.random.key(0), (B, T, H))
    runners = contenders(B, T, H, xs, peers, notes)
    for c in runners:
        start = time.perf_counter()
        _block(c.backward())
        c.compile_s = time.perf_counter() - start
    for _ in range(rounds):
        order = runners[:]
        random.shuffle(order)
        for c in order:
            start = time.perf_counter()
            _block(c.backward())
            c.times["fwd+bwd"].append(time.perf_counter() - start)
    return [
        {
            "time": T,
            "contender": c.name,
            "fwd_bwd_ms": 1e3 * statistics.median(c.times["fwd+bwd"]),
            "first_call_s": c.compile_s,
        }
        for c in runners
    ]


def speedups(results: list[dict]) -> dict[int, float]:
    """Sequential over parallel min_gru time at each T (> 1: parallel is faster)."""
    by = {(r["time"], r["contender"]): r["fwd_bwd_ms"] for r in results}
    lengths = sorted({r["time"] for r in results})
    return {T: by[T, "min_gru sequential"] / by[T, "min_gru parallel"] for T in lengths}


def crossing(speedup: dict[int, float]) -> str:
    above = [T for T, s in speedup.items() if s > 1]
    if not above:
        return "parallel is slower than sequential at every T measured"
    if len(above) == len(speedup):
        return "parallel is faster than sequential at every T measured"
    first = min(above)
    if all(s > 1 for T, s in speedup.items() if T >= first):
        last_below = max(t for t in speedup if t < first)
        return f"parallel overtakes sequential between T={last_below} and T={first}"
    return f"parallel is faster at T in {above}"


def markdown(
    results: list[dict], machine: str, B: int, H: int, memory: dict, limits: dict | None = None
) -> str:
    lengths = sorted({r["time"] for r in results})
    names = list(dict.fromkeys(r["contender"] for r in results))
    by = {(r["time"], r["contender"]): r["fwd_bwd_ms"] for r in results}
    speedup = speedups(results)
    lines = [
        f"Measured {machine}. Forward+backward, float32, batch {B}, hidden {H} (= input "
        "features), ms, median of interleaved rounds.",
        "",
        *([machine_limits.describe(limits) + ".", ""] if limits else []),
        "| T | " + " | ".join(names) + " | speedup parallel / sequential min_gru |",
        "|---|" + "---|" * (len(names) + 1),
    ]
    for T in lengths:
        cells = [f"{by[T, n]:.1f}" if (T, n) in by else "-" for n in names]
        lines.append(f"| {T} | " + " | ".join(cells) + f" | {speedup[T]:.2f} |")
    lines += ["", crossing(speedup) + "."]
    if memory:
        kinds = list(next(iter(memory.values())))
        lines += ["", "Peak memory of forward+backward, MiB (XLA's memory analysis):", "",
                  "| T | " + " | ".join(kinds) + " |", "|---|" + "---|" * len(kinds)]  # fmt: skip
        for T, row in memory.items():
            lines.append(f"| {T} | " + " | ".join(f"{row[k]:.1f}" for k in kinds) + " |")
    return "\n".join(lines) + "\n"


def chart(results: list[dict], path: pathlib.Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4))
    for name in dict.fromkeys(r["contender"] for r in results):
        rows = sorted((r["time"], r["fwd_bwd_ms"]) for r in results if r["contender"] == name)
        ax.plot(*zip(*rows, strict=True), marker="o", label=name, lw=2 if "parallel" in name else 1)
    ax.set(xscale="log", yscale="log", xlabel="sequence length T", ylabel="fwd+bwd ms")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3, which="both")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--lengths", nargs="+", type=int, default=LENGTHS)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--hidden", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--no-peers", action="store_true", help="seqjax contenders only")
    parser.add_argument("--out", type=pathlib.Path, default=RESULTS)
    args = parser.parse_args(argv)
    random.seed(0)
    device = jax.devices()[0]
    machine = machine_limits.machine()
    limits = machine_limits.gemm_rates()
    print(machine_limits.describe(limits), flush=True)
    notes: list[str] = []
    results = []
    memory = {T: memory_mib(args.batch, T, args.hidden) for T in args.lengths}
    for T in args.lengths:
        rounds = args.rounds if T <= 4096 else max(2, args.rounds // 2)
        rows = time_length(args.batch, T, args.hidden, rounds, not args.no_peers, notes)
        results += rows
        for r in rows:
            print(f"T={T:<6}{r['contender']:<34}{r['fwd_bwd_ms']:10.1f} ms", flush=True)
    for note in notes:
        print("note:", note)
    args.out.mkdir(parents=True, exist_ok=True)
    stem = "parallel" if device.platform == "cpu" else f"parallel_{device.platform}"
    payload = {"machine": machine, "batch": args.batch, "hidden": args.hidden, "notes": notes,
               "limits": limits}  # fmt: skip
    payload |= {"results": results, "speedup": speedups(results), "memory_mib": memory}
    (args.out / f"{stem}.json").write_text(json.dumps(payload, indent=1))
    (args.out / f"{stem}.md").write_text(
        markdown(results, machine, args.batch, args.hidden, memory, limits)
    )
    chart(results, args.out / f"{stem}.png", machine)
    print(crossing(speedups(results)))
    print(f"wrote {args.out}/{stem}.json, .md, .png")


if __name__ == "__main__":
    main()
