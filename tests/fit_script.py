"""A small training run for the kill-and-resume test: ``python tests/fit_script.py RUN_DIR
STEPS [--resume]``; writes the final params to RUN_DIR/final.npz."""

import sys

import jax
import numpy as np

import seqjax
from seqjax import train
from seqjax.tasks import adding
from seqjax.train import losses


def main(run_dir: str, steps: int, resume: bool) -> None:
    layer = seqjax.stack(seqjax.rnn(seqjax.gru(8)), seqjax.rnn(seqjax.gru(8)), dropout=0.1)
    k1, k2 = jax.random.split(jax.random.key(0))
    params = {"rnn": layer.init(k1, 2), "out": 0.1 * jax.random.normal(k2, (8,))}
    xs, ys = adding.batch(jax.random.key(1), 256, 8)
    data = {"inputs": np.asarray(xs), "targets": np.asarray(ys)}

    def model(params, batch, key):
        _, out = layer.apply(params["rnn"], batch["inputs"], key=key)
        return out[:, -1] @ params["out"] + 1.0

    def loss(predictions, batch):
        return losses.mse(predictions, batch["targets"])

    final, _ = train.fit(model, loss, params, train.optimizer(learning_rate=1e-2, clip_norm=1.0),
                         data, steps=steps, batch_size=16, eval_every=500, checkpoint_every=10,
                         run_dir=run_dir, resume=resume, seed=3, log=lambda line: None)  # fmt: skip
    flat = {str(i): np.asarray(leaf) for i, leaf in enumerate(jax.tree.leaves(final))}
    np.savez(f"{run_dir}/final.npz", **flat)


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), "--resume" in sys.argv)
