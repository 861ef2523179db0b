"""The machine's matmul limit, measured in the same run as a benchmark's figures.

    python -m benchmarks.limits          # print the rates

A large square matmul (2048^3 by default) in float32 and bfloat16, through PyTorch (MKL/oneDNN:
on a CPU with AMX its bfloat16 runs on the matrix units) and through XLA, on all cores and, for
PyTorch's float32, on one thread (what one core does: the native kernels' per-core claims are
fractions of it). Every speed figure of the benchmarks is then a fraction of a rate measured
beside it, not of a data-sheet peak.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import statistics
import time

import jax
import jax.numpy as jnp


def _rate(fn, flops: float, repeats: int) -> float:
    fn()  # compile, warm the caches and the thread pool
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return flops / statistics.median(times) / 1e9


def _xla(n: int, dtype, repeats: int) -> float:
    a = jax.random.normal(jax.random.key(0), (n, n)).astype(dtype)
    b = jax.random.normal(jax.random.key(1), (n, n)).astype(dtype)
    matmul = jax.jit(lambda a, b: a @ b)
    return _rate(lambda: matmul(a, b).block_until_ready(), 2 * n**3, repeats)


def _torch(n: int, dtype_name: str, repeats: int, threads: int) -> float | None:
    try:
        import torch
    except ImportError:
        return None
    dtype = getattr(torch, dtype_name)
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        a = torch.randn(n, n).to(dtype)
        b = torch.randn(n, n).to(dtype)
        with torch.no_grad():
            return _rate(lambda: a @ b, 2 * n**3, repeats)
    finally:
        torch.set_num_threads(before)


def _seqjax_bf16(n: int, repeats: int) -> float | None:
    from seqjax import native

    if native.bf16_unavailable_reason() is not None:
        return None
    a = jax.random.normal(jax.random.key(0), (n, n)).astype(jnp.bfloat16)
    b = jax.random.normal(jax.random.key(1), (n, n)).astype(jnp.bfloat16)
    matmul = jax.jit(native.bf16_matmul)
    return _rate(lambda: matmul(a, b).block_until_ready(), 2 * n**3, repeats)


def gemm_rates(n: int = 2048, repeats: int = 10, include_seqjax: bool = False) -> dict[str, float]:
    """GFLOP/s of an ``(n, n) @ (n, n)`` matmul, by library, dtype and threads, on the CPU
    (``jax.default_backend()``'s device for XLA). PyTorch's entries are left out where it is
    not installed; on a GPU backend they are the CPU's and say so. ``include_seqjax`` adds
    ``seqjax.native.bf16_matmul`` where the bf16 kernels run (labelled with their path)."""
    cores = os.cpu_count() or 1
    rates: dict[str, float] = {}
    for name, dtype in (("float32", jnp.float32), ("bfloat16", jnp.bfloat16)):
        rates[f"{name} XLA ({jax.default_backend()})"] = _xla(n, dtype, repeats)
        for threads in (cores, 1) if name == "float32" else (cores,):
            rate = _torch(n, name, repeats, threads)
            if rate is not None:
                where = f"{threads} thread" + ("s" if threads > 1 else "")
                rates[f"{name} PyTorch CPU, {where}"] = rate
    ours = _seqjax_bf16(n, repeats) if include_seqjax else None
    if ours is not None:
        from seqjax.native import bf16

        rates[f"bfloat16 seqjax.native.bf16_matmul ({bf16.path()})"] = ours
    return {label: round(rate, 1) for label, rate in rates.items()}


def float32_limit(rates: dict[str, float]) -> float:
    """The float32 rate that figures are fractions of: the faster of PyTorch's (all cores)
    and XLA's."""
    candidates = [r for label, r in rates.items() if label.startswith("float32")
                  and not label.endswith(", 1 thread")]  # fmt: skip
    return max(candidates)


def describe(rates: dict[str, float], n: int = 2048) -> str:
    """One line for a results file: every rate, GFLOP/s."""
    return f"GEMM rates in the same run ({n}^3, GFLOP/s): " + ", ".join(
        f"{label} {rate:.0f}" for label, rate in rates.items()
    )


def machine() -> str:
    """Today's date, the device and the host, for a results file's first line."""
    device = jax.devices()[0]
    return (
        f"{datetime.date.today()} on {device.platform} {device.device_kind}, "
        f"{platform.machine()} {os.cpu_count()} cores, jax {jax.__version__}"
    )


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=2048)
    parser.add_argument("--repeats", type=int, default=10)
    args = parser.parse_args(argv)
    rates = gemm_rates(args.size, args.repeats)
    print(describe(rates, args.size))
    torch_rates = [
        r for label, r in rates.items() if "PyTorch" in label and "1 thread" not in label
    ]
    if len(torch_rates) == 2:
        print(f"PyTorch bfloat16 / float32: {torch_rates[1] / torch_rates[0]:.1f}x")


if __name__ == "__main__":
    main()
