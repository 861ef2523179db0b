"""Where a recurrent layer's first call goes: tracing and lowering, XLA's compile, the first run.

    python -m benchmarks.compile_time                      # LSTM, GRU, RNN at small and medium
    python -m benchmarks.compile_time --cells lstm --configs small medium large \\
        --xla-flags default autotune0 no-triton-gemm     # on a GPU: what XLA's autotuning costs

``benchmarks.rnn`` times each first call inside one process, where XLA:GPU's cache of GEMM
autotuning is shared by whichever contender compiles a shape first. Here each contender compiles
in a process of its own (after a small warm-up compile, so that the process's one-time start-up
is not counted), and the forward+backward function's time is split into ``trace + lower``
(Python and JAX), ``compile`` (XLA, autotuning included) and the first run; the median of a few
runs after that shows what a compiler setting costs at run time. ``--xla-flags`` repeats it under
XLA settings: ``autotune0`` (``--xla_gpu_autotune_level=0``: no GEMM autotuning) and
``no-triton-gemm`` (``--xla_gpu_enable_triton_gemm=false``: cuBLAS for every matmul).

Writes ``benchmarks/results/compile_time_<backend>.json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import statistics
import subprocess
import sys
import time

FLAG_SETS = {
    "default": "",
    "autotune0": "--xla_gpu_autotune_level=0",
    "no-triton-gemm": "--xla_gpu_enable_triton_gemm=false",
}
CONTENDERS = ["seqjax", "seqjax (autodiff)", "seqjax (projection in step)", "flax linen"]
RESULTS = pathlib.Path(__file__).parent / "results"


def child(cell: str, config: str, contender: str) -> dict:
    """Runs in its own process: builds one contender and times its first call in three parts."""
    import jax
    import jax.numpy as jnp

    from benchmarks import rnn

    jax.block_until_ready(jax.jit(lambda a: jnp.tanh(a @ a))(jnp.ones((8, 8))))  # start-up
    B, T, H = rnn.CONFIGS[config]
    xs = jax.random.normal(jax.random.key(0), (B, T, H))
    if contender.startswith("seqjax"):
        options = rnn.SEQJAX_VARIANTS[contender]
        import seqjax

        layer = rnn.CELLS[cell](H)
        params = layer.init(jax.random.key(1), H)

        def out(p, x):
            return seqjax.unroll(layer, p, x, **options)[1]
    else:
        from flax import linen as nn

        model = nn.RNN(getattr(nn, rnn.FLAX_REFERENCE[cell].split()[-1])(H))
        params = model.init(jax.random.key(1), xs)
        out = model.apply
    grad = jax.jit(jax.grad(lambda p, x: jnp.sum(out(p, x) ** 2), argnums=(0, 1)))

    start = time.perf_counter()
    lowered = grad.trace(params, xs).lower()
    traced = time.perf_counter()
    compiled = lowered.compile()
    compiled_at = time.perf_counter()
    jax.block_until_ready(compiled(params, xs))
    first_run = time.perf_counter() - compiled_at
    runs = []
    for _ in range(7):
        t0 = time.perf_counter()
        jax.block_until_ready(compiled(params, xs))
        runs.append(time.perf_counter() - t0)
    return {
        "trace_lower_s": traced - start,
        "compile_s": compiled_at - traced,
        "first_run_s": first_run,
        "run_ms": 1e3 * statistics.median(runs),
        "backend": jax.default_backend(),
        "device": jax.devices()[0].device_kind,
        "jax": jax.__version__,
    }


def measure(cell: str, config: str, contender: str, flags: str) -> dict:
    env = dict(os.environ)
    env["XLA_FLAGS"] = " ".join(filter(None, [env.get("XLA_FLAGS", ""), FLAG_SETS[flags]]))
    command = [sys.executable, "-m", "benchmarks.compile_time", "--child", cell, config, contender]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    if done.returncode != 0:
        raise RuntimeError(f"{cell} {config} {contender} {flags} failed:\n{done.stderr[-3000:]}")
    row = json.loads(done.stdout.strip().splitlines()[-1])
    return {"cell": cell, "config": config, "contender": contender, "xla_flags": flags, **row}


def markdown(rows: list[dict]) -> str:
    first = rows[0]
    lines = [
        f"First call of the forward+backward, each contender in a fresh process: jax "
        f"{first['jax']} {first['backend']} ({first['device']}), seconds; run ms: median of 7 "
        "calls after it.",
        "",
        "| cell | config | XLA flags | contender | trace+lower s | compile s | first run s "
        "| total s | / Flax total | run ms |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]

    def total(r: dict) -> float:
        return r["trace_lower_s"] + r["compile_s"] + r["first_run_s"]

    for r in rows:
        key = (r["cell"], r["config"], r["xla_flags"])
        flax = [
            f
            for f in rows
            if f["contender"] == "flax linen" and (f["cell"], f["config"], f["xla_flags"]) == key
        ]
        ratio = f"{total(r) / total(flax[0]):.2f}" if flax else "n/a"
        lines.append(
            f"| {r['cell']} | {r['config']} | {r['xla_flags']} | {r['contender']} | "
            f"{r['trace_lower_s']:.2f} | {r['compile_s']:.2f} | {r['first_run_s']:.2f} | "
            f"{total(r):.2f} | {ratio} | {r['run_ms']:.2f} |"
        )
    return "\n".join(lines) + "\n"


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--child", nargs=3, metavar=("CELL", "CONFIG", "CONTENDER"))
    parser.add_argument("--cells", nargs="+", default=["lstm", "gru", "rnn"],
                        choices=["lstm", "gru", "rnn"])  # fmt: skip
    parser.add_argument("--configs", nargs="+", default=["small", "medium"],
                        choices=["small", "medium", "large"])  # fmt: skip
    parser.add_argument("--contenders", nargs="+", default=CONTENDERS, choices=CONTENDERS)
    parser.add_argument("--xla-flags", nargs="+", default=["default"], choices=list(FLAG_SETS))
    parser.add_argument("--out", type=pathlib.Path, default=RESULTS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(child(*args.child)))
        return
    rows = []
    stem = None
    for flags in args.xla_flags:
        for config in args.configs:
            for cell in args.cells:
                for contender in args.contenders:
                    row = measure(cell, config, contender, flags)
                    rows.append(row)
                    stem = f"compile_time_{row['backend']}"
                    print(
                        f"{cell:<5}{config:<7}{flags:<15}{contender:<29}"
                        f"trace+lower {row['trace_lower_s']:5.2f} s  compile "
                        f"{row['compile_s']:5.2f} s  first run {row['first_run_s']:5.2f} s  "
                        f"run {row['run_ms']:7.2f} ms",
                        flush=True,
                    )
                    args.out.mkdir(parents=True, exist_ok=True)  # written as it goes
                    (args.out / f"{stem}.json").write_text(json.dumps(rows, indent=1))
                    (args.out / f"{stem}.md").write_text(markdown(rows))
    print(f"wrote {args.out}/{stem}.json, {stem}.md")


if __name__ == "__main__":
    main()
