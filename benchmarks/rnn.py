"""Speed of recurrent layers: seqjax against Flax (linen and NNX), Equinox, Haiku and PyTorch.

    python -m benchmarks.rnn                 # all configs, all installed peers
    python -m benchmarks.rnn --quick         # the small config only, fewer rounds

For each cell (LSTM, GRU, tanh RNN) and config (batch, time, features = hidden), every
contender's forward and forward+backward are timed in interleaved rounds (one call each per
round, in a shuffled order), so that a slow spell of a noisy machine hits all of them alike; the
figure is the median over rounds. Ratios are taken against PyTorch and against the Flax linen
cell within the same run. Peers that are not installed are skipped with a note.

Writes ``benchmarks/results/rnn.json``, ``rnn.md`` (the table) and ``rnn.png`` (a bar chart).
On a GPU (JAX's default backend ``gpu``) the same run times PyTorch on CUDA too (its LSTM, GRU
and RNN are cuDNN's), names the device, and writes ``rnn_gpu.json``, ``rnn_gpu.md`` and
``rnn_gpu.png`` instead. ``--matmul-precision highest`` makes both libraries multiply float32 in
full float32 (no TF32); by default each keeps its own default, which the results record.
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
from benchmarks import limits as machine_limits

CONFIGS = {"small": (16, 64, 128), "medium": (32, 128, 256), "large": (64, 256, 512)}
CELLS = {"lstm": seqjax.lstm, "gru": seqjax.gru, "rnn": seqjax.simple_rnn}
GATES = {"lstm": 4, "gru": 3, "rnn": 1}
RESULTS = pathlib.Path(__file__).parent / "results"
# seqjax's rows: the defaults, and the defaults with one of unroll's choices turned the other way.
SEQJAX_VARIANTS = {
    "seqjax": {},
    "seqjax (autodiff)": {"custom_vjp": False},
    "seqjax (projection in step)": {"hoist_projection": False},
    "seqjax (scan)": {"native": False},
}


class Contender:
    """A runnable forward and forward+backward for one implementation, config and cell."""

    def __init__(self, name: str, forward: Callable[[], object], backward: Callable[[], object]):
        self.name, self.forward, self.backward = name, forward, backward
        self.times: dict[str, list[float]] = {"fwd": [], "fwd+bwd": []}
        self.compile_s: float = 0.0


def _jax_pair(loss_and_out: Callable, params, xs) -> tuple[Callable, Callable]:
    """Jitted forward (outputs) and forward+backward (gradient w.r.t. params and inputs)."""
    forward = jax.jit(lambda p, x: loss_and_out(p, x))
    grad = jax.jit(jax.grad(lambda p, x: jnp.sum(loss_and_out(p, x) ** 2), argnums=(0, 1)))
    return (lambda: forward(params, xs)), (lambda: grad(params, xs))


def seqjax_contenders(cell_name: str, B: int, T: int, H: int, xs) -> list[Contender]:
    cell = CELLS[cell_name](H)
    params = cell.init(jax.random.key(1), H)
    out = []
    labels = ["seqjax", "seqjax (autodiff)"]
    if jax.default_backend() != "cpu":  # shows whether hoisting, the accelerator default, pays
        labels.append("seqjax (projection in step)")
    elif cell.recur_split.native and seqjax.native.available():  # what the fused kernels give
        labels.append("seqjax (scan)")
    for label in labels:
        options = SEQJAX_VARIANTS[label]

        def run(p, x, options=options):
            return seqjax.unroll(cell, p, x, **options)[1]

        out.append(Contender(label, *_jax_pair(run, params, xs)))
    return out


def flax_linen_contenders(cell_name: str, B: int, T: int, H: int, xs) -> list[Contender]:
    from flax import linen as nn

    cells = {
        "lstm": [("flax linen LSTMCell", nn.LSTMCell), ("flax linen OptimizedLSTMCell",
                                                         nn.OptimizedLSTMCell)],
        "gru": [("flax linen GRUCell", nn.GRUCell)],
        "rnn": [("flax linen SimpleCell", nn.SimpleCell)],
    }[cell_name]  # fmt: skip
    out = []
    for label, cls in cells:
        model = nn.RNN(cls(H))
        params = model.init(jax.random.key(1), xs)
        out.append(Contender(label, *_jax_pair(model.apply, params, xs)))
    return out


def flax_nnx_contenders(cell_name: str, B: int, T: int, H: int, xs) -> list[Contender]:
    from flax import nnx

    cls = {"lstm": nnx.OptimizedLSTMCell, "gru": nnx.GRUCell, "rnn": nnx.SimpleCell}[cell_name]
    model = nnx.RNN(cls(H, H, rngs=nnx.Rngs(1)))
    carry = model.cell.initialize_carry((B, H), rngs=nnx.Rngs(0))  # zeros, made outside jit
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)

    def run(params, x):
        return nnx.merge(graphdef, params, rest)(x, initial_carry=carry)

    return [Contender(f"flax nnx {cls.__name__}", *_jax_pair(run, params, xs))]


def equinox_contenders(cell_name: str, B: int, T: int, H: int, xs) -> list[Contender]:
    import equinox as eqx

    if cell_name == "rnn":
        return []  # Equinox has no Elman cell
    cls = {"lstm": eqx.nn.LSTMCell, "gru": eqx.nn.GRUCell}[cell_name]
    cell = cls(H, H, key=jax.random.key(1))
    params, static = eqx.partition(cell, eqx.is_array)

    def run(params, x):
        c = eqx.combine(params, static)

        def one(seq):  # Equinox cells take one example; scan and vmap are the user's
            init = (jnp.zeros(H), jnp.zeros(H)) if cell_name == "lstm" else jnp.zeros(H)

            def body(state, x_t):
                state = c(x_t, state)
                return state, state[0] if cell_name == "lstm" else state

            return jax.lax.scan(body, init, seq)[1]

        return jax.vmap(one)(x)

    return [Contender(f"equinox {cls.__name__}", *_jax_pair(run, params, xs))]


def haiku_contenders(cell_name: str, B: int, T: int, H: int, xs) -> list[Contender]:
    import haiku as hk

    core_cls = {"lstm": hk.LSTM, "gru": hk.GRU, "rnn": hk.VanillaRNN}[cell_name]

    def net(x):
        core = core_cls(H)
        return hk.dynamic_unroll(core, x, core.initial_state(x.shape[0]), time_major=False)[0]

    model = hk.without_apply_rng(hk.transform(net))
    params = model.init(jax.random.key(1), xs)
    return [Contender(f"haiku {core_cls.__name__}", *_jax_pair(model.apply, params, xs))]


def torch_contenders(cell_name: str, B: int, T: int, H: int, xs) -> list[Contender]:
    import torch

    torch.set_num_threads(os.cpu_count() or 1)
    device = _torch_device()
    cls = {"lstm": torch.nn.LSTM, "gru": torch.nn.GRU, "rnn": torch.nn.RNN}[cell_name]
    module = cls(H, H, batch_first=True).to(device)
    x = torch.from_numpy(np.array(xs)).to(device).requires_grad_(True)  # np.array: writable

    def forward():
        with torch.no_grad():
            return module(x)[0]

    def backward():
        module.zero_grad(set_to_none=True)
        x.grad = None
        (module(x)[0] ** 2).sum().backward()
        return x.grad

    return [Contender(f"pytorch {cls.__name__}", forward, backward)]


def _torch_device() -> str:
    """PyTorch runs where JAX runs: on CUDA when JAX's backend is a GPU."""
    import torch

    if jax.default_backend() == "gpu":
        if not torch.cuda.is_available():
            raise RuntimeError(
                "JAX runs on a GPU but this PyTorch has no CUDA: install a CUDA build of torch, "
                "or leave pytorch out of --peers"
            )
        return "cuda"
    return "cpu"


def _machine(precision: str) -> str:
    """Date, processor, JAX's device and the float32 matmul precision, for the results."""
    device = jax.devices()[0]
    where = f"{os.cpu_count()} cores, jax {jax.__version__} {jax.default_backend()}"
    if device.platform != "cpu":
        where += f" ({device.device_kind})"
    text = f"{datetime.date.today()} on {platform.machine()} {platform.processor() or ''} {where}"
    try:
        import torch

        text += f", torch {torch.__version__}"
        if device.platform == "cpu":
            return text
        tf32 = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
        text += f" (allow_tf32 matmul/cudnn: {tf32[0]}/{tf32[1]})"
    except ImportError:
        if device.platform == "cpu":
            return text
    return text + f", jax matmul precision {precision}"


PEERS = {
    "flax linen": flax_linen_contenders,
    "flax nnx": flax_nnx_contenders,
    "equinox": equinox_contenders,
    "haiku": haiku_contenders,
    "pytorch": torch_contenders,
}


def _block(value):
    if hasattr(value, "detach"):  # a torch tensor: CPU work is done; CUDA work may be queued
        if value.is_cuda:
            import torch

            torch.cuda.synchronize(value.device)
        return value
    return jax.block_until_ready(value)


def gemm_rate(B: int, T: int, H: int, gates: int, repeats: int = 20) -> dict[str, float]:
    """GFLOP/s of this machine's matmul: ``(B, H) @ (H, gates*H)``, the recurrent shape, once per
    step inside a ``lax.scan`` over T steps (as a recurrence runs it, with no per-call dispatch
    in the figure), and ``(B*T, H) @ (H, gates*H)``, all steps in one call."""
    w = jax.random.normal(jax.random.key(1), (H, gates * H))
    xs = jax.random.normal(jax.random.key(0), (T, B, H))
    per_step = jax.jit(lambda xs, w: jax.lax.scan(lambda c, x: (c, x @ w), 0.0, xs)[1])
    all_steps = jax.jit(lambda xs, w: xs.reshape(B * T, H) @ w)
    rates = {}
    for label, f in {"recurrent, per step": per_step, "all steps": all_steps}.items():
        _block(f(xs, w))
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            _block(f(xs, w))
            times.append(time.perf_counter() - start)
        rates[label] = 2 * B * T * H * gates * H / statistics.median(times) / 1e9
    return rates


def flops(cell_name: str, B: int, T: int, H: int) -> dict[str, float]:
    """Matmul FLOPs of a layer with D = H: 2*B*T*(D+H)*G*H forward; backward twice that."""
    forward = 2 * B * T * 2 * H * GATES[cell_name] * H
    return {"fwd": forward, "fwd+bwd": 3 * forward}


def run_config(cell_name: str, config: str, rounds: int, peers: list[str], notes: list[str]):
    B, T, H = CONFIGS[config]
    xs = jax.random.normal(jax.random.key(0), (B, T, H))
    contenders = seqjax_contenders(cell_name, B, T, H, xs)
    for peer in peers:
        try:
            contenders += PEERS[peer](cell_name, B, T, H, xs)
        except ImportError as err:
            note = f"{peer} skipped: not installed ({err.name})"
            if note not in notes:
                notes.append(note)
    # The first call compiles (JAX) or warms up (PyTorch). In a shuffled order: XLA:GPU caches
    # its GEMM autotuning in the process, so whichever contender compiles a shape first pays it.
    for c in random.sample(contenders, len(contenders)):
        start = time.perf_counter()
        _block(c.forward())
        _block(c.backward())
        c.compile_s = time.perf_counter() - start
    for _ in range(rounds):
        order = contenders[:]
        random.shuffle(order)
        for c in order:
            for kind, fn in (("fwd", c.forward), ("fwd+bwd", c.backward)):
                start = time.perf_counter()
                _block(fn())
                c.times[kind].append(time.perf_counter() - start)
    work = flops(cell_name, B, T, H)
    return [
        {
            "cell": cell_name,
            "config": config,
            "shape": {"batch": B, "time": T, "hidden": H},
            "contender": c.name,
            "fwd_ms": 1e3 * statistics.median(c.times["fwd"]),
            "fwd_bwd_ms": 1e3 * statistics.median(c.times["fwd+bwd"]),
            "fwd_gflops": work["fwd"] / statistics.median(c.times["fwd"]) / 1e9,
            "fwd_bwd_gflops": work["fwd+bwd"] / statistics.median(c.times["fwd+bwd"]) / 1e9,
            "first_call_s": c.compile_s,
            # The best round too: on a shared machine the slow tail is other processes' noise.
            "fwd_ms_best": 1e3 * min(c.times["fwd"]),
            "fwd_bwd_ms_best": 1e3 * min(c.times["fwd+bwd"]),
            "rounds_ms": {kind: [1e3 * t for t in ts] for kind, ts in c.times.items()},
        }
        for c in contenders
    ]


FLAX_REFERENCE = {"lstm": "flax linen OptimizedLSTMCell", "gru": "flax linen GRUCell",
                  "rnn": "flax linen SimpleCell"}  # fmt: skip


def summary(results: list[dict], limit: float | None = None) -> list[str]:
    """One row per cell and config: seqjax against PyTorch, Flax linen and the fastest JAX peer,
    and (given the float32 GEMM rate ``limit``) seqjax's fwd+bwd rate as a fraction of it."""
    lines = [
        "| cell | config (B,T,H) | seqjax fwd+bwd ms | / PyTorch | / PyTorch, best rounds | "
        "/ Flax linen | seqjax fwd ms | / fastest JAX peer fwd | first call s (seqjax / Flax) "
        "| seqjax fwd+bwd, of the f32 GEMM rate | PyTorch fwd+bwd, of it |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for cell, config in dict.fromkeys((r["cell"], r["config"]) for r in results):
        rows = {r["contender"]: r for r in results if r["cell"] == cell and r["config"] == config}
        ours = rows["seqjax"]
        torch_row = next((r for name, r in rows.items() if name.startswith("pytorch")), None)
        flax_row = rows.get(FLAX_REFERENCE[cell])
        jax_peers = [r for name, r in rows.items()
                     if not name.startswith(("seqjax", "pytorch"))]  # fmt: skip
        fastest = min(jax_peers, key=lambda r: r["fwd_ms"]) if jax_peers else None
        fastest_name = f" ({fastest['contender']})" if fastest else ""

        def ratio(row, key, ours=ours):
            return f"{ours[key] / row[key]:.2f}" if row and key in row else "n/a"  # old JSON

        lines.append(
            f"| {cell} | {config} {tuple(ours['shape'].values())} | {ours['fwd_bwd_ms']:.1f} | "
            f"{ratio(torch_row, 'fwd_bwd_ms')} | {ratio(torch_row, 'fwd_bwd_ms_best')} | "
            f"{ratio(flax_row, 'fwd_bwd_ms')} | "
            f"{ours['fwd_ms']:.1f} | {ratio(fastest, 'fwd_ms')}{fastest_name} | "
            f"{ours['first_call_s']:.2f} / "
            f"{flax_row['first_call_s'] if flax_row else float('nan'):.2f} | "
            f"{_fraction(ours, limit)} | {_fraction(torch_row, limit)} |"
        )
    return lines


def _fraction(row: dict | None, limit: float | None) -> str:
    """A row's fwd+bwd GFLOP/s as a percentage of the float32 GEMM rate ``limit``."""
    if row is None or not limit:
        return "n/a"
    return f"{100 * row['fwd_bwd_gflops'] / limit:.0f}%"


def _rates_text(rates: dict) -> str:
    per_step = rates.get("recurrent, per step")  # an older JSON measured it outside a scan
    all_steps = rates.get("all steps", rates.get("all_steps"))
    return " / ".join("n/a" if r is None else f"{r:.0f}" for r in (per_step, all_steps))


def markdown(results: list[dict], machine: str, rates: dict, limits: dict | None = None) -> str:
    limit = machine_limits.float32_limit(limits) if limits else None
    lines = [
        f"Measured {machine}. Medians of interleaved rounds, float32, ms "
        "(best rounds: each side's fastest round). Ratio < 1: seqjax faster.",
        (machine_limits.describe(limits) + f"; the fractions below are of {limit:.0f}.")
        if limits
        else "No large-GEMM rate in this run (an older JSON).",
        "GEMM rate in the same run, GFLOP/s (the 4H-wide matmul, per step in a scan / all steps "
        "at once): " + ", ".join(f"{config} {_rates_text(r)}" for config, r in rates.items()) + ".",
        "",
        *summary(results, limit),
        "",
        "All contenders:",
        "",
        "| cell | config (B,T,H) | contender | fwd ms | fwd GFLOP/s | fwd+bwd ms "
        "| fwd+bwd GFLOP/s | first call s "
        "| seqjax / this (fwd+bwd) | seqjax / this (fwd) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        ours = next(
            o for o in results
            if o["cell"] == r["cell"] and o["config"] == r["config"] and o["contender"] == "seqjax"
        )  # fmt: skip
        shape = tuple(r["shape"].values())
        lines.append(
            f"| {r['cell']} | {r['config']} {shape} | {r['contender']} | {r['fwd_ms']:.2f} | "
            f"{r['fwd_gflops']:.0f} | {r['fwd_bwd_ms']:.2f} | {r['fwd_bwd_gflops']:.0f} | "
            f"{r['first_call_s']:.2f} | "
            f"{ours['fwd_bwd_ms'] / r['fwd_bwd_ms']:.2f} | {ours['fwd_ms'] / r['fwd_ms']:.2f} |"
        )
    return "\n".join(lines) + "\n"


def bar_chart(results: list[dict], path: pathlib.Path) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib not installed: no chart (pip install -e '.[bench]')")
        return
    cells = list(dict.fromkeys(r["cell"] for r in results))
    configs = list(dict.fromkeys(r["config"] for r in results))
    fig, axes = plt.subplots(
        len(cells), len(configs), figsize=(4.2 * len(configs), 2.6 * len(cells)), squeeze=False
    )
    for row, cell in enumerate(cells):
        for col, config in enumerate(configs):
            ax = axes[row][col]
            rows = [r for r in results if r["cell"] == cell and r["config"] == config]
            names = [r["contender"] for r in rows]
            colors = ["C0" if n.startswith("seqjax") else "C7" for n in names]
            ax.barh(names, [r["fwd_bwd_ms"] for r in rows], color=colors)
            ax.set_title(f"{cell}, {config} {tuple(rows[0]['shape'].values())}", fontsize=9)
            ax.set_xlabel("fwd+bwd ms (lower is better)", fontsize=8)
            ax.tick_params(axis="both", labelsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cells", nargs="+", default=list(GATES), choices=list(GATES))
    parser.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    parser.add_argument("--peers", nargs="+", default=list(PEERS), choices=list(PEERS))
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--quick", action="store_true", help="small config, 5 rounds")
    parser.add_argument("--out", type=pathlib.Path, default=RESULTS)
    parser.add_argument("--from-json", type=pathlib.Path, help="only redraw the table and chart")
    parser.add_argument(
        "--matmul-precision", choices=["default", "highest"], default="default",
        help="highest: full float32 matmuls in JAX and PyTorch (no TF32 on GPUs)",
    )  # fmt: skip
    args = parser.parse_args(argv)
    stem = "rnn" if jax.default_backend() == "cpu" else f"rnn_{jax.default_backend()}"
    if args.from_json:
        saved = json.loads(args.from_json.read_text())
        stem = args.from_json.stem
        (args.out / f"{stem}.md").write_text(
            markdown(saved["results"], saved["machine"], saved["gemm_gflops"], saved.get("limits"))
        )
        bar_chart(saved["results"], args.out / f"{stem}.png")
        return
    if args.matmul_precision == "highest":
        jax.config.update("jax_default_matmul_precision", "highest")
        if "pytorch" in args.peers:
            import torch

            torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    if args.quick:
        args.configs, args.rounds = ["small"], 5
    args.out.mkdir(parents=True, exist_ok=True)
    random.seed(0)
    machine = _machine(args.matmul_precision)
    notes: list[str] = []
    results = []
    rates = {}
    limits = machine_limits.gemm_rates()
    print(machine_limits.describe(limits), flush=True)
    for config in args.configs:
        B, T, H = CONFIGS[config]
        rates[config] = {k: round(v, 1) for k, v in gemm_rate(B, T, H, 4).items()}
        for cell in args.cells:
            rows = run_config(cell, config, args.rounds, args.peers, notes)
            results += rows
            for r in rows:
                print(f"{cell:<5}{config:<7}{r['contender']:<32}fwd {r['fwd_ms']:8.2f} ms  "
                      f"{r['fwd_gflops']:6.1f} GFLOP/s  "
                      f"fwd+bwd {r['fwd_bwd_ms']:8.2f} ms  {r['fwd_bwd_gflops']:6.1f} GFLOP/s  "
                      f"first call {r['first_call_s']:.2f} s", flush=True)  # fmt: skip
            # Written after each cell, so that a run stopped by a time limit keeps what it measured.
            (args.out / f"{stem}.json").write_text(
                json.dumps(
                    {"machine": machine, "gemm_gflops": rates, "limits": limits, "notes": notes,
                     "results": results},
                    indent=1,
                )
            )  # fmt: skip
            (args.out / f"{stem}.md").write_text(markdown(results, machine, rates, limits))
    for note in notes:
        print("note:", note)
    bar_chart(results, args.out / f"{stem}.png")
    print(f"wrote {args.out}/{stem}.json, {stem}.md, {stem}.png")


if __name__ == "__main__":
    main()
