"""How the native kernels' call times spread, against the scan's: median, mean, 90th percentile
and the share of calls over twice the median, for many calls interleaved in one process.

    python -m benchmarks.native_tails                  # small config, 100 calls each
    python -m benchmarks.native_tails --config medium --calls 40
    python -m benchmarks.native_tails --idle-ms 20     # each call after 20 ms of idleness

The native kernels split each step's units over threads, and no task of a step starts before
the step before has finished, so a thread descheduled by the OS mid-task holds the others up;
``lax.scan``'s steps run on one thread at a time. ``benchmarks.rnn`` reports medians over a few
rounds; this shows the tail.

With ``--idle-ms``, each call follows a pause, as in a notebook, a server between requests, or a
training loop that waits for its data: XLA's pool threads have gone to sleep by then, and on a VM
their cores may take milliseconds to come back. ``SEQJAX_NATIVE_THREADS`` set in the environment
applies as usual. Writes ``benchmarks/results/native_tails.md`` (or
``native_tails_idle<N>ms.md``).
"""

from __future__ import annotations

import argparse
import datetime
import os
import pathlib
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks.rnn import CELLS, CONFIGS

RESULTS = pathlib.Path(__file__).parent / "results"


def contenders(config: str) -> dict[str, tuple]:
    """(jitted function, params, inputs) for each cell, pass and path."""
    import seqjax

    B, T, H = CONFIGS[config]
    xs = jax.random.normal(jax.random.key(0), (B, T, H))
    out = {}
    for name, make in CELLS.items():
        cell = make(H)
        params = cell.init(jax.random.key(1), H)
        for native in (True, False):
            path = "native" if native else "scan"

            def ys(p, x, cell=cell, native=native):
                return seqjax.unroll(cell, p, x, native=native)[1]

            grad = jax.grad(lambda p, x, ys=ys: jnp.sum(ys(p, x) ** 2), argnums=(0, 1))
            out[(name, "fwd", path)] = (jax.jit(ys), params, xs)
            out[(name, "fwd+bwd", path)] = (jax.jit(grad), params, xs)
    return out


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default="small", choices=list(CONFIGS))
    parser.add_argument("--calls", type=int, default=100)
    parser.add_argument("--idle-ms", type=float, default=0.0, help="pause before each call")
    parser.add_argument("--out", type=pathlib.Path, default=RESULTS)
    args = parser.parse_args(argv)
    runs = contenders(args.config)
    for fn, params, xs in runs.values():
        jax.block_until_ready(fn(params, xs))
    times: dict[tuple, list[float]] = {key: [] for key in runs}
    for _ in range(args.calls):
        for key, (fn, params, xs) in runs.items():
            time.sleep(args.idle_ms / 1e3)
            start = time.perf_counter()
            jax.block_until_ready(fn(params, xs))
            times[key].append(1e3 * (time.perf_counter() - start))
    threads = os.environ.get("SEQJAX_NATIVE_THREADS", "default")
    lines = [
        f"{datetime.date.today()}, {os.cpu_count()} cores, jax {jax.__version__}, config "
        f"{args.config} {CONFIGS[args.config]}, {args.calls} interleaved calls each, each after "
        f"{args.idle_ms:g} ms idle, native threads: {threads}. Milliseconds.",
        "",
        "| cell | pass | path | median | mean | p90 | calls > 2x median |",
        "|---|---|---|---|---|---|---|",
    ]
    for (cell, kind, path), ts in times.items():
        median = statistics.median(ts)
        slow = sum(t > 2 * median for t in ts) / len(ts)
        lines.append(
            f"| {cell} | {kind} | {path} | {median:.2f} | {np.mean(ts):.2f} | "
            f"{np.percentile(ts, 90):.2f} | {100 * slow:.0f}% |"
        )
    text = "\n".join(lines) + "\n"
    print(text)
    args.out.mkdir(parents=True, exist_ok=True)
    name = f"native_tails_idle{args.idle_ms:g}ms.md" if args.idle_ms else "native_tails.md"
    (args.out / name).write_text(text)


if __name__ == "__main__":
    main()
