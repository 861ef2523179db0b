"""A small training run for the fault-injection tests: ``python tests/fault_script.py RUN_DIR
STEPS MODE``. MODE is ``new``, ``resume``, ``overwrite``, ``hang-in-save`` (the second
checkpoint is written and fsync-ed, then the process stops before its rename, printing
``WRITING``) or ``hang-before-checkpoint`` (an ``overwrite`` run that stops at its first step,
printing ``STARTED``). The final params go to RUN_DIR/final.npz."""

import os
import sys
import time

import jax
import numpy as np

from seqjax import train
from seqjax.train import losses


def _hang(word: str) -> None:
    print(word, flush=True)
    time.sleep(600)  # the test kills the process here


def main(run_dir: str, steps: int, mode: str) -> None:
    rng = np.random.default_rng(0)
    data = {"inputs": rng.normal(size=(64, 6, 3)).astype(np.float32)}
    data["targets"] = data["inputs"].sum(axis=(1, 2))
    params = {"w": 0.1 * np.ones((3,), np.float32), "b": np.zeros((), np.float32)}

    def model(params, batch, key):
        del key
        return batch["inputs"].sum(axis=1) @ params["w"] + params["b"]

    def loss(predictions, batch):
        return losses.mse(predictions, batch["targets"])

    source = data
    if mode == "hang-before-checkpoint":
        source = lambda step: _hang("STARTED")  # noqa: E731
    if mode == "hang-in-save":  # os is one module: this patches checkpoint.save's rename
        real_replace, calls = os.replace, []

        def replace(src, dst):
            if str(src).endswith(".partial"):
                calls.append(src)
                if len(calls) == 2:  # the second checkpoint, written and fsync-ed, not renamed
                    _hang("WRITING")
            real_replace(src, dst)

        os.replace = replace
    final, _ = train.fit(model, loss, params, train.optimizer(learning_rate=1e-2), source,
                         steps=steps, batch_size=8, eval_every=50, checkpoint_every=10,
                         run_dir=run_dir, resume=mode == "resume", seed=1,
                         overwrite=mode in ("overwrite", "hang-before-checkpoint"),
                         log=lambda line: None)  # fmt: skip
    flat = {str(i): np.asarray(leaf) for i, leaf in enumerate(jax.tree.leaves(final))}
    np.savez(f"{run_dir}/final.npz", **flat)


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), sys.argv[3])
