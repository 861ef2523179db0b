"""Data-parallel training speed on 1, 2 and 4 devices.

    python -m benchmarks.data_parallel            # CPU: 4 simulated devices (set below)
    python -m benchmarks.data_parallel --real     # the machine's own devices (e.g. GPUs)

On a CPU the devices are simulated (``--xla_force_host_platform_device_count=4``): they share
the same cores, so this measures the overhead of sharding (splitting each batch, all-reducing
the gradients) rather than a speed-up. Train steps of an LSTM(128) on the adding problem
(T=100, global batch 64), timed after compilation; steps/s is the median of 5 rounds of 10.
Writes ``benchmarks/results/data_parallel.json`` and ``.md``.
"""

from __future__ import annotations

import os
import sys

if __name__ == "__main__" and "--real" not in sys.argv:
    os.environ["XLA_FLAGS"] = (
        os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=4"
    )

import argparse
import datetime
import json
import statistics
import time

import jax
import numpy as np

import seqjax
from benchmarks.rnn import RESULTS
from seqjax import train
from seqjax.tasks import adding
from seqjax.train import losses


def steps_per_second(num_devices: int, batch: int, hidden: int, seq_len: int) -> float:
    layer = seqjax.rnn(seqjax.lstm(hidden))
    k1, k2 = jax.random.split(jax.random.key(0))
    params = {"rnn": layer.init(k1, 2), "out": 0.1 * jax.random.normal(k2, (hidden,))}
    xs, ys = adding.batch(jax.random.key(1), batch, seq_len)
    data = {"inputs": np.asarray(xs), "targets": np.asarray(ys)}

    def model(params, batch, key):
        return layer.apply(params["rnn"], batch["inputs"])[1][:, -1] @ params["out"] + 1.0

    def loss(predictions, batch):
        return losses.mse(predictions, batch["targets"])

    optimizer = train.optimizer(learning_rate=1e-3, clip_norm=1.0)
    step = train.make_train_step(model, loss, optimizer, clip_norm=1.0)
    state = train.TrainState.create(params, optimizer)
    mesh = train.data_mesh(jax.devices()[:num_devices])
    state = train.sharding.replicate(state, mesh)
    key = jax.random.key(0)
    state, _ = step(state, train.shard_batch(data, mesh), key)  # compile
    jax.block_until_ready(state)
    rates = []
    for _ in range(5):
        start = time.perf_counter()
        for _ in range(10):
            state, _ = step(state, train.shard_batch(data, mesh), key)
        jax.block_until_ready(state)
        rates.append(10 / (time.perf_counter() - start))
    return statistics.median(rates)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--real", action="store_true", help="use the machine's own devices")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--hidden", type=int, default=128)
    parser.add_argument("--seq-len", type=int, default=100)
    args = parser.parse_args(argv)
    devices = jax.devices()
    kind = f"{devices[0].platform} {devices[0].device_kind}"
    simulated = not args.real and devices[0].platform == "cpu"
    counts = [n for n in (1, 2, 4) if n <= len(devices)]
    rows = []
    for n in counts:
        rate = steps_per_second(n, args.batch, args.hidden, args.seq_len)
        rows.append({"devices": n, "steps_per_s": rate})
        print(f"{n} device(s): {rate:.1f} steps/s", flush=True)
    note = (f"{len(devices)} simulated devices sharing {os.cpu_count()} CPU cores"
            if simulated else f"{len(devices)} x {kind}")  # fmt: skip
    stem = "data_parallel" if simulated else f"data_parallel_{devices[0].platform}"
    header = (f"Measured {datetime.date.today()} on {kind} ({note}), jax {jax.__version__}: "
              f"LSTM({args.hidden}) train steps, adding T={args.seq_len}, global batch "
              f"{args.batch}.")  # fmt: skip
    lines = [header, "", "| devices | steps/s | relative to 1 |", "|---|---|---|"]
    lines += [f"| {r['devices']} | {r['steps_per_s']:.1f} | "
              f"{r['steps_per_s'] / rows[0]['steps_per_s']:.2f} |" for r in rows]  # fmt: skip
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{stem}.json").write_text(json.dumps({"note": header, "rows": rows}, indent=1))
    (RESULTS / f"{stem}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
