"""What ``seqjax.host_memory.keep_freed_memory()`` buys on CPU: time and page faults per call.

    python -m benchmarks.page_faults             # LSTM and GRU, medium and large, 3 pairs
    python -m benchmarks.page_faults --quick     # medium only, 1 pair

XLA:CPU (and PyTorch) allocate a gradient's large temporary buffers afresh on every call, and
glibc's ``malloc`` serves each from a fresh ``mmap``: every call faults those pages in again.
``keep_freed_memory`` makes ``malloc`` keep and reuse them. The setting holds for a whole
process, so each side runs in processes of its own: pairs of child processes (one default,
one with the setting, in alternating order), each timing the forward+backward of seqjax, Flax
linen's ``OptimizedLSTMCell`` (``GRUCell``, ``SimpleCell``) and PyTorch's LSTM (GRU, RNN) in
interleaved rounds and counting the minor page faults per call. Figures are medians over
the processes. Writes ``benchmarks/results/page_faults.json`` and ``page_faults.md``.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import statistics
import subprocess
import sys
import time

RESULTS = pathlib.Path(__file__).parent / "results"
MODES = ("default", "keep_freed_memory")


def child(mode: str, cell_name: str, config: str, rounds: int) -> None:
    """Times the contenders in this process and prints one JSON line."""
    if mode == "keep_freed_memory":  # before JAX and PyTorch start their threads
        from seqjax import host_memory

        if not host_memory.keep_freed_memory():
            raise SystemExit("keep_freed_memory does not apply here (malloc is not glibc's)")
    import random
    import resource

    import jax

    from benchmarks import rnn

    B, T, H = rnn.CONFIGS[config]
    xs = jax.random.normal(jax.random.key(0), (B, T, H))
    contenders = rnn.seqjax_contenders(cell_name, B, T, H, xs)[:1]  # custom VJP only
    for peer in ("flax linen", "pytorch"):
        try:
            contenders += rnn.PEERS[peer](cell_name, B, T, H, xs)[-1:]
        except ImportError:
            pass
    for c in contenders:
        rnn._block(c.backward())
        rnn._block(c.backward())
    times = {c.name: [] for c in contenders}
    faults = {c.name: 0 for c in contenders}
    random.seed(0)
    for _ in range(rounds):
        for c in random.sample(contenders, len(contenders)):
            before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
            start = time.perf_counter()
            rnn._block(c.backward())
            times[c.name].append(time.perf_counter() - start)
            faults[c.name] += resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
    print(json.dumps({
        name: {"ms": 1e3 * statistics.median(ts), "faults": faults[name] / rounds}
        for name, ts in times.items()
    }))  # fmt: skip


def run_pairs(cell_name: str, config: str, rounds: int, pairs: int) -> dict:
    """``{mode: {contender: {"ms": median, "faults": median}}}`` over the child processes."""
    runs: dict[str, list[dict]] = {mode: [] for mode in MODES}
    for pair in range(pairs):
        for mode in MODES if pair % 2 == 0 else MODES[::-1]:
            done = subprocess.run(
                [sys.executable, "-m", "benchmarks.page_faults", "--child", mode,
                 "--cell", cell_name, "--config", config, "--rounds", str(rounds)],
                capture_output=True, text=True, check=False,
            )  # fmt: skip
            if done.returncode != 0:
                raise SystemExit(f"child process ({mode}) failed:\n{done.stderr}")
            runs[mode].append(json.loads(done.stdout.strip().splitlines()[-1]))
            print(f"{cell_name} {config} {mode}: " + ", ".join(
                f"{name} {r['ms']:.1f} ms {r['faults']:.0f} faults"
                for name, r in runs[mode][-1].items()
            ), flush=True)  # fmt: skip
    return {
        mode: {
            name: {
                key: statistics.median(run[name][key] for run in results)
                for key in ("ms", "faults")
            }
            for name in results[0]
        }
        for mode, results in runs.items()
    }


def markdown(results: list[dict], machine: str) -> str:
    lines = [
        f"Measured {machine}. Forward+backward, float32, median ms per call and minor page "
        "faults per call, each setting in its own processes.",
        "",
        "| cell | config (B,T,H) | contender | ms, default | faults, default | "
        "ms, keep_freed_memory | faults, keep_freed_memory | speed-up |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        default, kept = r["by_mode"]["default"], r["by_mode"]["keep_freed_memory"]
        for name in default:
            a, b = default[name], kept[name]
            lines.append(
                f"| {r['cell']} | {r['config']} {tuple(r['shape'])} | {name} | {a['ms']:.1f} | "
                f"{a['faults']:.0f} | {b['ms']:.1f} | {b['faults']:.0f} | "
                f"{a['ms'] / b['ms']:.2f}x |"
            )
    return "\n".join(lines) + "\n"


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--cells", nargs="+", default=["lstm", "gru"], choices=["lstm", "gru", "rnn"]
    )
    parser.add_argument("--cell", default="lstm", help=argparse.SUPPRESS)  # a child's
    parser.add_argument("--configs", nargs="+", default=["medium", "large"],
                        choices=["small", "medium", "large"])  # fmt: skip
    parser.add_argument("--pairs", type=int, default=3, help="process pairs (default 3)")
    parser.add_argument("--rounds", type=int, default=0, help="rounds per process (0: by size)")
    parser.add_argument("--quick", action="store_true", help="medium only, one pair")
    parser.add_argument("--out", type=pathlib.Path, default=RESULTS)
    parser.add_argument("--child", choices=MODES, help=argparse.SUPPRESS)
    parser.add_argument("--config", default="medium", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        child(args.child, args.cell, args.config, args.rounds or 5)
        return
    if args.pairs < 1:
        parser.error(f"--pairs must be at least 1, got {args.pairs}")
    if args.quick:
        args.configs, args.pairs = ["medium"], 1

    from benchmarks import rnn

    machine = rnn._machine("default")  # names torch's version where it is installed
    results = []
    for cell in args.cells:
        for config in args.configs:
            rounds = args.rounds or {"small": 40, "medium": 12, "large": 4}[config]
            results.append({
                "cell": cell, "config": config, "shape": rnn.CONFIGS[config],
                "by_mode": run_pairs(cell, config, rounds, args.pairs),
            })  # fmt: skip
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "page_faults.json").write_text(
        json.dumps({"machine": machine, "results": results}, indent=1)
    )
    (args.out / "page_faults.md").write_text(markdown(results, machine))
    print(markdown(results, machine))


if __name__ == "__main__":
    main()
