"""Where the time of one seqjax gradient goes: a per-operation profile of the compiled program.

    python -m benchmarks.step_profile                          # LSTM, small config
    python -m benchmarks.step_profile --cell gru --config medium
    python -m benchmarks.step_profile --autodiff               # plain autodiff of lax.scan
    python -m benchmarks.step_profile --forward                # the forward pass alone
    python -m benchmarks.step_profile --keep-freed-memory      # malloc keeps freed buffers

Traces ``--calls`` calls of the jitted gradient (of ``sum(ys**2)`` with respect to the
parameters and the inputs, as ``benchmarks.rnn`` times it) with ``jax.profiler``, and splits one
call's time into its loops (the forward scan, the reverse scan) and the rest (before and after
the loops: with seqjax's custom VJP, the weight-gradient matmuls). Each part is split again
into matmuls, elementwise work, stores into the per-step outputs (``dynamic-update-slice``),
copies, and the loop's own overhead (the loop's time not spent in any operation), per step in
microseconds, with the number of operations per step and the matmuls' GFLOP/s.

The operations are XLA's (on CPU, its thunks); their kinds and loops come from the compiled
HLO. A small program runs inline, and each loop's own trace event then gives its overhead; a
larger one runs its operations asynchronously, and their durations are then those the trace
records (a matmul split over threads can show a rate above the machine's).
"""

from __future__ import annotations

import argparse
import collections
import glob
import gzip
import json
import math
import re
import tempfile
from typing import NamedTuple

import jax
import jax.numpy as jnp

import seqjax
from benchmarks.rnn import CELLS, CONFIGS

KINDS = ("matmul", "elementwise", "store", "copy")

_INSTRUCTION = re.compile(r"^\s*(?:ROOT )?%([\w.\-]+) = (.+?) ([\w\-]+)\((.*)$")
_HEADER = re.compile(r"^%([\w.\-]+) \((.*)\) -> ")
_SHAPE = re.compile(r"^\w+\[([\d,]*)\]")


def _dims(type_text: str) -> list[int]:
    match = _SHAPE.match(type_text.strip())
    return [int(d) for d in match.group(1).split(",") if d] if match else []


class Op(NamedTuple):
    """One operation of the compiled program: its kind, matmul FLOPs, and the ``while`` loop
    whose body runs it (``None``: outside every loop)."""

    kind: str
    flops: float
    loop: str | None


def parse_hlo(text: str) -> dict[str, Op]:
    """``{instruction name: Op}`` for every operation of a compiled HLO module that runs on its
    own; a fusion's kind and FLOPs are those of the computation it calls."""
    computations: dict[str, list[tuple[str, str, str, str]]] = {}
    shapes: dict[str, dict[str, list[int]]] = {}
    current = None
    for line in text.splitlines():
        header = _HEADER.match(line) or (re.match(r"^ENTRY %([\w.\-]+) \((.*)\) -> ", line))
        if header:
            current = header.group(1)
            computations[current], shapes[current] = [], {}
            for param in re.finditer(r"([\w.\-]+): (\w+\[[\d,]*\])", header.group(2)):
                shapes[current][param.group(1)] = _dims(param.group(2))
            continue
        match = _INSTRUCTION.match(line)
        if match and current is not None:
            name, type_text, opcode, rest = match.groups()
            computations[current].append((name, type_text, opcode, rest))
            shapes[current][name] = _dims(type_text)

    def dot_flops(computation: str, type_text: str, rest: str) -> float:
        lhs = re.match(r"%([\w.\-]+)", rest).group(1)
        contracting = re.search(r"lhs_contracting_dims=\{([\d,]*)\}", rest)
        lhs_dims = shapes[computation].get(lhs, [])
        k = math.prod(lhs_dims[int(i)] for i in contracting.group(1).split(",") if i)
        return 2.0 * math.prod(_dims(type_text)) * k

    def classify(computation: str) -> tuple[str, float]:
        ops = computations.get(computation, [])
        flops = sum(dot_flops(computation, t, r) for _, t, op, r in ops if op == "dot")
        opcodes = {op for _, _, op, _ in ops}
        if flops or "convolution" in opcodes:
            return "matmul", flops
        if "dynamic-update-slice" in opcodes:
            return "store", 0.0
        moves = {"parameter", "copy", "transpose", "bitcast", "constant"}
        if opcodes <= moves and opcodes & {"copy", "transpose"}:
            return "copy", 0.0
        return "elementwise", 0.0

    def called(rest: str, attribute: str) -> str | None:
        found = re.search(rf"{attribute}=%([\w.\-]+)", rest)
        return found.group(1) if found else None

    fused = set()  # computations that fusions call: their instructions never run on their own
    loop_of: dict[str, str] = {}  # a while body or condition -> that while instruction
    for ops in computations.values():
        for name, _, opcode, rest in ops:
            if opcode == "fusion" and called(rest, "calls"):
                fused.add(called(rest, "calls"))
            if opcode == "while":
                for attribute in ("body", "condition"):
                    if called(rest, attribute):
                        loop_of[called(rest, attribute)] = name
    result = {}
    skipped = ("parameter", "constant", "get-tuple-element", "tuple", "bitcast", "while",
               "conditional", "call")  # fmt: skip
    for computation, ops in computations.items():
        if computation in fused:
            continue
        loop = loop_of.get(computation)
        for name, type_text, opcode, rest in ops:
            if opcode == "fusion":
                kind, flops = classify(called(rest, "calls")) if called(rest, "calls") else (
                    "elementwise", 0.0)  # fmt: skip
            elif opcode == "dot":
                kind, flops = "matmul", dot_flops(computation, type_text, rest)
            elif opcode == "custom-call":
                kind, flops = "matmul", 0.0
            elif opcode in ("copy", "transpose"):
                kind, flops = "copy", 0.0
            elif opcode == "dynamic-update-slice":
                kind, flops = "store", 0.0
            elif opcode in skipped:
                continue
            else:
                kind, flops = "elementwise", 0.0
            result[name] = Op(kind, flops, loop)
    return result


def breakdown(events: list[dict], ops: dict[str, Op], calls: int) -> list[dict]:
    """One row per part of a call (each loop, in the order it first runs, then the rest): the
    time, count and matmul FLOPs of its operations by kind, all per call, and ``ms``, the
    loop's own duration where the trace shows it enclosing its operations (XLA:CPU runs a
    loop inline when the program is small), else the sum of its operations."""
    first_seen: dict[str, float] = {}
    loop_ms: dict[str, float] = {}
    for event in events:
        op = ops.get(event["name"])
        if op is not None and op.loop is not None:
            first_seen.setdefault(op.loop, event["ts"])
        elif event["name"].startswith("while"):
            loop_ms[event["name"]] = loop_ms.get(event["name"], 0.0) + event["dur"] / 1e3 / calls
    parts = {name: _empty_part(name) for name in sorted(first_seen, key=first_seen.get)}
    rest = _empty_part("outside loops")
    for event in events:
        op = ops.get(event["name"])
        if op is None:
            continue
        part = rest if op.loop is None else parts[op.loop]
        totals = part["by_kind"][op.kind]
        totals["ms"] += event["dur"] / 1e3 / calls
        totals["count"] += 1 / calls
        totals["flops"] += op.flops / calls
    for name, part in [*parts.items(), ("", rest)]:
        ops_ms = sum(k["ms"] for k in part["by_kind"].values())
        enclosing = loop_ms.get(name, 0.0)
        part["ms"] = enclosing if enclosing >= ops_ms else ops_ms
        part["overhead_ms"] = enclosing - ops_ms if enclosing >= ops_ms and name else None
    return [*parts.values(), rest]


def _empty_part(name: str) -> dict:
    return {
        "part": name,
        "ms": 0.0,
        "by_kind": {k: {"ms": 0.0, "count": 0.0, "flops": 0.0} for k in KINDS},
    }


def table(parts: list[dict], steps: int, loop_names: dict[str, str]) -> str:
    """The breakdown as Markdown: per step (microseconds) inside loops, per call outside."""
    lines = [
        "| part | ms per call | per step: µs | matmul µs (GFLOP/s) | elementwise µs | "
        "store µs | copy µs | loop overhead µs | operations |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for part in parts:
        inside = part["part"] != "outside loops"
        scale = 1e3 / steps if inside else 1e3  # ms per call -> µs per step (or per call)
        kinds = part["by_kind"]
        matmul = kinds["matmul"]
        rate = matmul["flops"] / (matmul["ms"] / 1e3) / 1e9 if matmul["ms"] else 0.0
        count = sum(k["count"] for k in kinds.values()) / (steps if inside else 1)
        label = loop_names.get(part["part"], part["part"]) if inside else "outside loops, per call"
        overhead = "-" if part["overhead_ms"] is None else f"{part['overhead_ms'] * scale:.1f}"
        lines.append(
            f"| {label} | {part['ms']:.3f} | {part['ms'] * scale:.1f} | "
            f"{matmul['ms'] * scale:.1f} ({rate:.0f}) | {kinds['elementwise']['ms'] * scale:.1f} | "
            f"{kinds['store']['ms'] * scale:.1f} | {kinds['copy']['ms'] * scale:.1f} | "
            f"{overhead} | {count:.0f} |"
        )
    return "\n".join(lines)


def profile(fn, args, calls: int) -> tuple[list[dict], dict]:
    """Trace ``calls`` calls of the jitted ``fn(*args)``: its trace events and its HLO kinds."""
    kinds = parse_hlo(fn.lower(*args).compile().as_text())
    for _ in range(3):
        jax.block_until_ready(fn(*args))
    with tempfile.TemporaryDirectory() as log_dir:
        with jax.profiler.trace(log_dir):
            for _ in range(calls):
                jax.block_until_ready(fn(*args))
        (path,) = glob.glob(f"{log_dir}/**/*.trace.json.gz", recursive=True)
        with gzip.open(path) as f:
            trace = json.load(f)
    events = [e for e in trace["traceEvents"] if e.get("ph") == "X" and "dur" in e]
    return events, kinds


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cell", choices=sorted(CELLS), default="lstm")
    parser.add_argument("--config", choices=sorted(CONFIGS), default="small")
    parser.add_argument("--calls", type=int, default=10, help="calls traced (default 10)")
    parser.add_argument("--autodiff", action="store_true", help="custom_vjp=False")
    parser.add_argument("--forward", action="store_true", help="the forward pass alone")
    parser.add_argument("--keep-freed-memory", action="store_true",
                        help="seqjax.host_memory.keep_freed_memory() first")  # fmt: skip
    args = parser.parse_args(argv)
    if args.keep_freed_memory and not seqjax.host_memory.keep_freed_memory():
        parser.error("--keep-freed-memory: malloc here is not glibc's")
    if args.calls < 1:
        parser.error(f"--calls must be at least 1, got {args.calls}")

    B, T, H = CONFIGS[args.config]
    cell = CELLS[args.cell](H)
    params = cell.init(jax.random.key(1), H)
    xs = jax.random.normal(jax.random.key(0), (B, T, H))

    def loss(p, x):
        return jnp.sum(seqjax.unroll(cell, p, x, custom_vjp=not args.autodiff)[1] ** 2)

    fn = jax.jit(loss if args.forward else jax.grad(loss, argnums=(0, 1)))
    events, kinds = profile(fn, (params, xs), args.calls)
    parts = breakdown(events, kinds, args.calls)
    loops = [p["part"] for p in parts if p["part"] != "outside loops"]
    names = (
        ["forward loop", "reverse loop"]
        if len(loops) == 2
        else [f"loop {i + 1}" for i in range(len(loops))]
    )
    total = sum(p["ms"] for p in parts)
    what = "forward" if args.forward else (
        f"gradient ({'autodiff' if args.autodiff else 'custom VJP'})")  # fmt: skip
    print(
        f"{args.cell} {args.config} (B={B}, T={T}, H={H}), {what}, "
        f"jax {jax.__version__} {jax.default_backend()}, {args.calls} calls traced: "
        f"{total:.3f} ms per call"
    )
    print(table(parts, T, dict(zip(loops, names, strict=True))))
    top = collections.Counter()
    for event in events:
        if event["name"] in kinds:
            top[event["name"]] += event["dur"] / 1e3 / args.calls
    print("\nslowest operations, ms per call:", ", ".join(
        f"{name} ({kinds[name][0]}) {ms:.3f}" for name, ms in top.most_common(8)
    ))  # fmt: skip


if __name__ == "__main__":
    main()
