"""The benchmark scripts compare like with like: each pair of variants computes the same values."""

import json

import chex
import jax
import jax.numpy as jnp

import seqjax
from benchmarks import cpu_findings


def test_cpu_findings_variants_agree():
    T, B, H = 5, 3, 4
    keys = jax.random.split(jax.random.key(0), 4)
    residuals = jax.nn.sigmoid(jax.random.normal(keys[0], (T, B, 5 * H)))
    c_prev = jax.random.normal(keys[1], (T, B, H))
    w_hh = jax.random.normal(keys[2], (H, 4 * H))
    d_gates = jax.random.normal(keys[3], (T, B, 4 * H))

    stacked = cpu_findings.stacked(residuals, c_prev)
    separate = cpu_findings.separate(tuple(jnp.split(residuals, 5, axis=-1)), c_prev)
    chex.assert_trees_all_close(stacked, separate, rtol=1e-6)
    assert float(jnp.abs(stacked[1]).max()) > 0  # the loop did real work

    contracted = cpu_findings.contract_last_axis(w_hh, d_gates)
    transposed = cpu_findings.transposed_copy(w_hh, d_gates)
    chex.assert_trees_all_close(contracted, transposed, rtol=1e-5, atol=1e-6)
    # and both equal dG @ W_hh^T written out step by step in NumPy-style JAX
    dh = jnp.zeros((B, H))
    for t in range(T):
        dh = jnp.tanh((d_gates[t] + jnp.tile(dh, (1, 4))) @ w_hh.T)
    chex.assert_trees_all_close(contracted[0], dh, rtol=1e-5, atol=1e-6)


def test_cpu_findings_rnn_gradient_same_either_way():
    params = seqjax.simple_rnn(4).init(jax.random.key(0), 3)
    xs = jax.random.normal(jax.random.key(1), (2, 5, 3))
    in_step = cpu_findings.rnn_gradient(4, False)(params, xs)
    hoisted = cpu_findings.rnn_gradient(4, True)(params, xs)
    chex.assert_trees_all_close(in_step, hoisted, rtol=1e-5, atol=1e-6)


def test_step_profile_reads_matmul_flops_and_loops_from_hlo():
    from benchmarks import step_profile

    def f(a, b, xs):
        def body(h, x):  # one (2, 3) @ (3, 3) matmul and one store per step
            h = jnp.tanh(h @ b + x)
            return h, h

        return a @ b, jax.lax.scan(body, jnp.zeros((2, 3)), xs)[1]

    args = (jnp.ones((8, 3)), jnp.ones((3, 3)), jnp.ones((5, 2, 3)))
    ops = step_profile.parse_hlo(jax.jit(f).lower(*args).compile().as_text())
    matmuls = sorted((op.flops, op.loop is None) for op in ops.values() if op.kind == "matmul")
    # 2 * rows * columns * contracted size; the step's matmul inside the loop, the other not
    assert matmuls == [(2 * 2 * 3 * 3, False), (2 * 8 * 3 * 3, True)]
    loops = {op.loop for op in ops.values()} - {None}
    assert len(loops) == 1 and next(iter(loops)).startswith("while")
    assert any(op.kind == "store" and op.loop for op in ops.values())


def test_step_profile_splits_time_between_loops_and_the_rest():
    from benchmarks.step_profile import Op, breakdown, table

    ops = {"dot": Op("matmul", 1e6, "while.1"), "tanh": Op("elementwise", 0.0, "while.1"),
           "dus": Op("store", 0.0, "while.1"), "dot.2": Op("matmul", 1e6, None)}  # fmt: skip
    events = [  # two calls: each a loop of two steps, then a matmul after it
        *(
            e
            for start in (0, 1000)
            for e in (
                {"name": "while.1", "ts": start, "dur": 100},
                {"name": "dot", "ts": start + 10, "dur": 30},
                {"name": "dus", "ts": start + 45, "dur": 5},
                {"name": "dot", "ts": start + 60, "dur": 30},
                {"name": "tanh", "ts": start + 95, "dur": 5},
                {"name": "dot.2", "ts": start + 200, "dur": 50},
            )
        ),
        {"name": "ThunkExecutor::Execute", "ts": 0, "dur": 300},
    ]
    loop, rest = breakdown(events, ops, calls=2)
    assert loop["part"] == "while.1" and rest["part"] == "outside loops"
    assert loop["ms"] == 0.1 and rest["ms"] == 0.05  # trace times are in microseconds
    assert loop["by_kind"]["matmul"] == {"ms": 0.06, "count": 2, "flops": 2e6}
    assert loop["by_kind"]["store"]["ms"] == 0.005
    assert rest["by_kind"]["matmul"]["flops"] == 1e6
    text = table([loop, rest], steps=2, loop_names={"while.1": "forward loop"})
    # per step: 50 µs, of which 30 matmul (1e6 FLOP in 30 µs: 33 GFLOP/s), 15 in no operation
    assert "| forward loop | 0.100 | 50.0 | 30.0 (33) | 2.5 | 2.5 | 0.0 | 15.0 | 2 |" in text
    # a loop whose trace event does not enclose its operations (run asynchronously): their sum
    loop, _ = breakdown([e for e in events if e["name"] != "while.1"], ops, calls=2)
    assert loop["ms"] == 0.07 and loop["overhead_ms"] is None


def test_rnn_summary_ratios_and_fastest_peer():
    """The summary divides seqjax's medians by PyTorch's and Flax linen's, and takes the fastest
    JAX peer's forward from the other libraries only (seqjax's own variants are not peers)."""
    from benchmarks import rnn

    def row(contender, fwd, fwd_bwd):
        return {"cell": "lstm", "config": "small", "shape": {"batch": 2, "time": 3, "hidden": 4},
                "contender": contender, "fwd_ms": fwd, "fwd_bwd_ms": fwd_bwd,
                "fwd_bwd_ms_best": fwd_bwd / 2, "first_call_s": 1.5}  # fmt: skip

    results = [
        row("seqjax", 2.0, 4.0),
        row("seqjax (projection in step)", 1.0, 1.0),
        row("flax linen OptimizedLSTMCell", 4.0, 8.0),
        row("flax nnx OptimizedLSTMCell", 2.5, 10.0),
        row("pytorch LSTM", 1.0, 5.0),
    ]
    header, _, line = rnn.summary(results)
    cells = [c.strip() for c in line.strip("|").split("|")]
    columns = [c.strip() for c in header.strip("|").split("|")]
    got = dict(zip(columns, cells, strict=True))
    assert got["/ PyTorch"] == "0.80"  # 4.0 / 5.0
    assert got["/ PyTorch, best rounds"] == "0.80"
    assert got["/ Flax linen"] == "0.50"  # 4.0 / 8.0
    assert got["/ fastest JAX peer fwd"] == "0.80 (flax nnx OptimizedLSTMCell)"  # 2.0 / 2.5
    assert got["seqjax fwd+bwd, of the f32 GEMM rate"] == "n/a"  # no limit measured
    for r in results:
        r["fwd_bwd_gflops"] = 1000.0 / r["fwd_bwd_ms"]
    _, _, line = rnn.summary(results, limit=500.0)
    got = dict(zip(columns, [c.strip() for c in line.strip("|").split("|")], strict=True))
    assert got["seqjax fwd+bwd, of the f32 GEMM rate"] == "50%"  # 250 of 500 GFLOP/s
    assert got["PyTorch fwd+bwd, of it"] == "40%"


def test_parallel_results_state_the_gemm_rates_of_the_same_run():
    from benchmarks import limits, parallel

    results = [
        {"time": 64, "contender": "min_gru sequential", "fwd_bwd_ms": 4.0},
        {"time": 64, "contender": "min_gru parallel", "fwd_bwd_ms": 2.0},
    ]
    rates = {"float32 XLA (cpu)": 231.4, "bfloat16 XLA (cpu)": 877.0}
    text = parallel.markdown(results, "test machine", 16, 128, {}, rates)
    assert limits.describe(rates) + "." in text
    assert "| 64 | 4.0 | 2.0 | 2.00 |" in text
    assert "GEMM" not in parallel.markdown(results, "test machine", 16, 128, {})


def test_recurrences_table_gives_microseconds_per_step_and_names_memory_skips():
    from benchmarks import recurrences

    results = [
        {"time": 1024, "cell": "mlstm", "form": "parallel", "peak_gib": 1.0,
         "fwd_bwd_ms": 51.2, "us_per_step": 50.0},
        {"time": 16384, "cell": "mlstm", "form": "parallel", "peak_gib": 96.4,
         "skipped": "needs 96.4 GiB > 6"},
    ]  # fmt: skip
    text = recurrences.markdown(results, "test machine", 8, 128, None)
    assert "| mlstm | parallel | 50.0 | - (96 GiB) |" in text
    # every cell of issue 25 runs in each form it has, the linear ones in parallel and chunks
    listed = {(name, form) for name, form, _, _ in recurrences.forms(8)}
    for name in ("mlstm", "rg_lru", "selective_ssm"):
        assert {(name, "sequential"), (name, "parallel")} <= listed
        assert (name, f"chunkwise {recurrences.CHUNKS.get(name, recurrences.CHUNK)}") in listed
    assert ("slstm", "parallel") not in listed  # not a linear recurrence: no parallel form


def test_learning_keeps_the_saved_records_of_groups_not_rerun(tmp_path):
    from benchmarks import learning

    saved = [{"group": "cells", "argv": "seqjax train a", "value": 1.0},
             {"group": "recurrences", "argv": "seqjax train b", "value": 2.0}]  # fmt: skip
    path = tmp_path / "learning.json"
    path.write_text(json.dumps({"meta": {}, "records": saved}))
    rerun = [{"group": "recurrences", "argv": "seqjax train b", "value": 3.0}]
    merged = learning._merged(path, rerun)
    assert merged == [saved[0], rerun[0]]  # the fresh record replaces its saved one only
    assert learning._merged(tmp_path / "absent.json", rerun) == rerun


def test_learning_recurrences_table_marks_results_better_than_the_baseline():
    from benchmarks import learning

    def record(cell, value, verdict, steps_done=1000):
        return {"group": "recurrences", "task": "adding T=100", "cell": cell, "steps": 1000,
                "batch_size": 64, "steps_done": steps_done, "hidden": 64, "metric": "test MSE",
                "value": value, "baseline": 0.167, "baseline_name": "mean", "verdict": verdict,
                "wall_s": 42.0}  # fmt: skip

    lines = learning._recurrences_markdown(
        [record("lstm", 0.001, "solved"), record("mlstm", 0.2, "no better than the baseline", 10)]
    )
    assert "| lstm | **0.0010** |" in lines
    assert "| mlstm | 0.2000 *cut at 10* |" in lines
    assert "| lstm | 42 s |" in lines
    assert len({cfg["cell"] for cfg in learning._configs("recurrences")}) == 8
