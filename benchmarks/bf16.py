"""bfloat16 recurrences on the CPU: seqjax's bf16 native kernels against its float32 ones and
against PyTorch in bfloat16 and float32, plus the GEMM rates behind them.

    python -m benchmarks.bf16                 # LSTM, GRU, RNN at medium and large
    python -m benchmarks.bf16 --rounds 5 --cells lstm --configs medium

Each contender's forward (outputs) and forward+backward (gradient of sum(ys^2) w.r.t. the
weights and the inputs) is timed in interleaved rounds, one call each per round in a shuffled
order, so a slow spell of the shared machine hits all alike; the figures are medians over rounds.
seqjax's bf16 row runs ``seqjax.native.forward``/``backward`` (bfloat16 weights and inputs,
float32 biases, carry and outputs) inside a ``custom_vjp`` as ``seqjax.unroll``'s NativeLoop
does. The GEMM rates (2048^3) are PyTorch's and XLA's matmul in float32 and bfloat16 and
``seqjax.native.bf16_matmul``, timed in the same run.

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
from seqjax import native
from seqjax.cells.lstm import LSTMCarry

CONFIGS = {"medium": (32, 128, 256), "large": (64, 256, 512)}
CELLS = {"lstm": seqjax.lstm, "gru": seqjax.gru, "rnn": seqjax.simple_rnn}
KERNELS = {"lstm": "lstm", "gru": "gru", "rnn": "rnn_tanh"}
RESULTS = pathlib.Path(__file__).parent / "results"


def _block(value):
    if hasattr(value, "detach"):
        return value
    return jax.block_until_ready(value)


def native_bf16_loop(kernel: str) -> Callable:
    """``(params, xs (B, T, D), carry) -> ys`` through the bf16 kernels, differentiable."""

    @jax.custom_vjp
    def run(params, xs, carry):
        weights = native.pack_weights(kernel, params)
        return native.forward(kernel, params, weights, xs, carry, 0, None, False, False, True)[1]

    def fwd(params, xs, carry):
        weights = native.pack_weights(kernel, params)
        _, ys, saved = native.forward(
            kernel, params, weights, xs, carry, 0, None, False, True, True
        )
        return ys, (params, weights, xs, saved, carry)

    def bwd(res, d_ys):
        params, weights, xs, saved, carry = res
        d_final = jax.tree.map(jnp.zeros_like, carry)
        d_carry, d_params, d_xs = native.backward(
            kernel, params, weights, xs, saved, d_final, d_ys, 0, None, False, True
        )
        d_params = jax.tree.map(lambda d, p: d.astype(p.dtype), d_params, params)
        return d_params, d_xs.astype(xs.dtype), d_carry

    run.defvjp(fwd, bwd)
    return run


def _pair(apply: Callable, params, xs) -> tuple[Callable, Callable]:
    forward = jax.jit(apply)
    grad = jax.jit(
        jax.grad(lambda p, x: jnp.sum(apply(p, x).astype(jnp.float32) ** 2), argnums=(0, 1))
    )
    return (lambda: forward(params, xs)), (lambda: grad(params, xs))


def seqjax_contenders(cell_name: str, B: int, H: int, xs) -> dict[str, tuple]:
    cell = CELLS[cell_name](H)
    params = cell.init(jax.random.key(1), H)
    out = {"seqjax f32 native": _pair(lambda p, x: seqjax.unroll(cell, p, x)[1], params, xs)}
    if native.bf16_unavailable_reason() is None:
        kernel = KERNELS[cell_name]
        if native.unsupported_reason(kernel, _bf16_params(params), xs.astype(jnp.bfloat16)):
            return out
        loop = native_bf16_loop(kernel)
        zeros = jnp.zeros((B, H), jnp.float32)
        carry = LSTMCarry(zeros, zeros) if cell_name == "lstm" else zeros
        out["seqjax bf16 native"] = _pair(
            lambda p, x: loop(p, x, carry), _bf16_params(params), xs.astype(jnp.bfloat16)
        )
    return out


def _bf16_params(params):
    return {k: v.astype(jnp.bfloat16) if k.startswith("w") else v for k, v in params.items()}


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
    contenders = {**seqjax_contenders(cell_name, B, H, xs), **torch_contenders(cell_name, H, xs)}
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


def gemm_rates(n: int = 2048, rounds: int = 10) -> dict[str, float]:
    """GFLOP/s of an (n, n) @ (n, n) matmul by each library and dtype, interleaved rounds."""
    import torch

    rng = np.random.default_rng(0)
    a, b = rng.standard_normal((n, n), np.float32), rng.standard_normal((n, n), np.float32)
    ta, tb = torch.from_numpy(a), torch.from_numpy(b)
    ja, jb = jnp.asarray(a), jnp.asarray(b)
    ja16, jb16 = ja.astype(jnp.bfloat16), jb.astype(jnp.bfloat16)
    xla = jax.jit(lambda x, y: x @ y)
    xla16 = jax.jit(lambda x, y: jnp.matmul(x, y, preferred_element_type=jnp.float32))
    ours = jax.jit(native.bf16_matmul)
    calls = {
        "pytorch f32": lambda: ta @ tb,
        "pytorch bf16": lambda: ta.bfloat16() @ tb.bfloat16(),
        "xla f32": lambda: xla(ja, jb),
        "xla bf16": lambda: xla16(ja16, jb16),
    }
    if native.bf16_unavailable_reason() is None:
        calls[f"seqjax bf16_matmul ({native.bf16.path()})"] = lambda: ours(ja16, jb16)
    times = {name: [] for name in calls}
    for fn in calls.values():
        _block(fn())
    for _ in range(rounds):
        for name, fn in random.sample(list(calls.items()), len(calls)):
            start = time.perf_counter()
            _block(fn())
            times[name].append(time.perf_counter() - start)
    return {name: 2 * n**3 / statistics.median(ts) / 1e9 for name, ts in times.items()}


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
    rates = gemm_rates()
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
        "GEMM, 2048 x 2048 x 2048, GFLOP/s (medians of 10 interleaved calls):",
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
