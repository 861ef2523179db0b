"""Peak memory of an LSTM's forward+backward against sequence length, with and without remat.

    python -m benchmarks.memory            # T = 256 ... 4096 at the medium config
    python -m benchmarks.memory --quick    # T up to 1024, no timing

Memory is XLA's own account of the compiled gradient computation (``memory_analysis()``:
arguments + outputs + temporaries, the peak a device must hold), so it is exact and
independent of the machine's load. Time is the median wall time of a few interleaved calls
at the longest T.
Writes ``benchmarks/results/memory.json`` and ``memory.md`` (``memory_gpu.*`` on a GPU).
"""

from __future__ import annotations

import argparse
import json
import pathlib
import statistics
import time

import jax
import jax.numpy as jnp

import seqjax

RESULTS = pathlib.Path(__file__).parent / "results"


def gradient_fn(cell, remat: bool):
    def loss(params, xs):
        return jnp.sum(seqjax.unroll(cell, params, xs, remat=remat)[1] ** 2)

    return jax.jit(jax.grad(loss, argnums=(0, 1)))


def peak_bytes(compiled) -> int:
    stats = compiled.memory_analysis()
    return (
        stats.argument_size_in_bytes
        + stats.output_size_in_bytes
        + stats.temp_size_in_bytes
        - stats.alias_size_in_bytes
    )


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--lengths", type=int, nargs="+", default=[256, 512, 1024, 2048, 4096])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--out", type=pathlib.Path, default=RESULTS)
    args = parser.parse_args(argv)
    if args.quick:
        args.lengths, args.repeats = [256, 512, 1024], 0
    B, H = args.batch, args.hidden
    cell = seqjax.lstm(H)
    params = cell.init(jax.random.key(0), H)
    rows = []
    for T in args.lengths:
        xs = jax.ShapeDtypeStruct((B, T, H), jnp.float32)
        row = {"time": T}
        for remat in (False, True):
            compiled = gradient_fn(cell, remat).lower(params, xs).compile()
            row[f"peak_mib_remat_{remat}"] = peak_bytes(compiled) / 2**20
        row["ratio"] = row["peak_mib_remat_True"] / row["peak_mib_remat_False"]
        rows.append(row)
        print(f"T={T:>6}  peak MiB without remat {row['peak_mib_remat_False']:9.1f}  "
              f"with remat {row['peak_mib_remat_True']:9.1f}  ratio {row['ratio']:.3f}",
              flush=True)  # fmt: skip
    timing = {}
    if args.repeats:
        T = args.lengths[-1]
        xs = jax.random.normal(jax.random.key(1), (B, T, H))
        fns = {remat: gradient_fn(cell, remat) for remat in (False, True)}
        times = {remat: [] for remat in fns}
        for fn in fns.values():
            jax.block_until_ready(fn(params, xs))
        for _ in range(args.repeats):  # interleaved: both sides see the same machine load
            for remat, fn in fns.items():
                start = time.perf_counter()
                jax.block_until_ready(fn(params, xs))
                times[remat].append(time.perf_counter() - start)
        for remat, t in times.items():
            timing[f"fwd_bwd_s_remat_{remat}"] = statistics.median(t)
        timing["time_ratio"] = timing["fwd_bwd_s_remat_True"] / timing["fwd_bwd_s_remat_False"]
        without, with_remat = timing["fwd_bwd_s_remat_False"], timing["fwd_bwd_s_remat_True"]
        print(f"T={T}: fwd+bwd {without:.2f} s without remat, {with_remat:.2f} s with: "
              f"{timing['time_ratio']:.2f}x")  # fmt: skip
    args.out.mkdir(parents=True, exist_ok=True)
    report = {"batch": B, "hidden": H, "cell": "lstm", "rows": rows, "timing": timing,
              "backend": jax.default_backend(), "jax": jax.__version__}  # fmt: skip
    stem = "memory" if jax.default_backend() == "cpu" else f"memory_{jax.default_backend()}"
    (args.out / f"{stem}.json").write_text(json.dumps(report, indent=1))
    lines = [
        f"LSTM forward+backward, batch {B}, hidden {H}, float32, {jax.default_backend()}: "
        "peak memory from XLA's memory analysis.",
        "",
        "| T | peak MiB, no remat | peak MiB, remat=True | ratio |",
        "|---|---|---|---|",
    ] + [
        f"| {r['time']} | {r['peak_mib_remat_False']:.1f} | {r['peak_mib_remat_True']:.1f} | "
        f"{r['ratio']:.3f} |"
        for r in rows
    ]
    if timing:
        lines += ["", f"Time at T={args.lengths[-1]}: {timing['fwd_bwd_s_remat_False']:.2f} s "
                  f"without remat, {timing['fwd_bwd_s_remat_True']:.2f} s with "
                  f"({timing['time_ratio']:.2f}x)."]  # fmt: skip
    (args.out / f"{stem}.md").write_text("\n".join(lines) + "\n")
    print(f"wrote {args.out}/{stem}.json, {stem}.md")


if __name__ == "__main__":
    main()
