"""Whether a refactoring changed what runs: the XLA programs that seqjax builds, compared
between this checkout and an earlier commit.

    python -m benchmarks.same_program --against aaac76d

For every built-in cell and every unroll path (the default, the scan without the native
kernels, plain autodiff, remat, reverse with lengths, time-major, the parallel scan), each
version lowers the jitted forward pass and the jitted gradient to StableHLO in a process of its
own; the texts, without their source locations, are hashed and compared. The same program means
the same numbers and the same speed, on every backend, by construction: no timing noise. Run
from a git checkout (the earlier commit is checked out in a temporary worktree).
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import subprocess
import sys
import tempfile

ROOT = pathlib.Path(__file__).resolve().parents[1]

# Runs inside each version's process: prints {case: sha256 of the program} as JSON.
PROBE = r"""
import hashlib, json, re, warnings
import jax, jax.numpy as jnp
import seqjax

warnings.simplefilter("ignore", DeprecationWarning)
B, T, D, H = 4, 12, 8, 16
CELLS = {
    "lstm": lambda: seqjax.lstm(H),
    "gru": lambda: seqjax.gru(H),
    "rnn": lambda: seqjax.simple_rnn(H),
    "rnn_relu": lambda: seqjax.simple_rnn(H, activation="relu"),
    "indrnn": lambda: seqjax.indrnn(H),
    "gru_reset_before": lambda: seqjax.gru(H, reset_after=False),
    "lstm_peephole_ln": lambda: seqjax.lstm(H, peephole=True, layer_norm=True),
    "lstm_proj": lambda: seqjax.lstm(H, proj_size=8),
    "min_gru": lambda: seqjax.min_gru(H, log_space=True),
    "min_gru_plain": lambda: seqjax.min_gru(H),
    "min_lstm": lambda: seqjax.min_lstm(H, log_space=True),
    "min_lstm_plain": lambda: seqjax.min_lstm(H),
    "lru": lambda: seqjax.lru(H, D),
    "lru_input_layer": lambda: seqjax.lru(H, H, input_layer=True),
}
PATHS = {
    "default": {}, "scan": {"native": False}, "autodiff": {"custom_vjp": False},
    "remat": {"remat": True}, "reverse": {"reverse": True}, "time_major": {"time_major": True},
}
LINEAR = {"min_gru", "min_gru_plain", "min_lstm", "min_lstm_plain", "lru", "lru_input_layer"}

def text(lowered):
    hlo = lowered.as_text()
    return hashlib.sha256(re.sub(r"loc\(.*?\)|#loc\d*( = .*)?", "", hlo).encode()).hexdigest()

out = {}
for name, make in CELLS.items():
    cell = make()
    params = cell.init(jax.random.key(0), D)
    paths = dict(PATHS)
    if name in LINEAR:
        paths = {"default": {}, "parallel": {"parallel": True}, "remat": {"remat": True},
                 "parallel_remat": {"parallel": True, "remat": True}}
    for path, options in paths.items():
        shape = (T, B, D) if options.get("time_major") else (B, T, D)
        xs = jnp.ones(shape)
        lengths = None if options.get("time_major") else jnp.array([12, 5, 1, 9])
        def forward(p, x):
            return seqjax.unroll(cell, p, x, lengths=lengths, **options)
        def loss(p, x):
            return jnp.sum(forward(p, x)[1] ** 2)
        try:
            out[f"{name}/{path}/forward"] = text(jax.jit(forward).lower(params, xs))
            out[f"{name}/{path}/gradient"] = text(jax.jit(jax.grad(loss)).lower(params, xs))
        except Exception as err:  # a path one version does not have
            out[f"{name}/{path}"] = f"error: {type(err).__name__}"
print(json.dumps(out))
"""


def probe(source: pathlib.Path) -> dict[str, str]:
    """The program hashes of the seqjax in ``source``, from a fresh process run there."""
    env = {
        **os.environ,
        "PYTHONPATH": str(source),
        "JAX_PLATFORMS": os.environ.get("JAX_PLATFORMS", ""),
    }
    done = subprocess.run([sys.executable, "-c", PROBE], cwd=source, env=env, capture_output=True,
                          text=True, check=False)  # fmt: skip
    if done.returncode != 0:
        raise SystemExit(f"the probe failed in {source}:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--against", required=True, help="the earlier commit (any git revision)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        old_tree = pathlib.Path(tmp) / "old"
        subprocess.run(["git", "worktree", "add", "--detach", "-q", str(old_tree), args.against],
                       cwd=ROOT, check=True)  # fmt: skip
        try:
            old = probe(old_tree)
        finally:
            subprocess.run(["git", "worktree", "remove", "--force", str(old_tree)], cwd=ROOT,
                           check=False)  # fmt: skip
    new = probe(ROOT)
    same = sorted(k for k in new if old.get(k) == new[k] and not new[k].startswith("error"))
    differ = sorted(k for k in new if k in old and old[k] != new[k])
    only = sorted(set(new) ^ set(old))
    print(f"{len(same)} of {len(new)} programs identical to {args.against}'s")
    for key in differ:
        print(f"  differs: {key}")
    for key in only:
        print(f"  in one version only: {key}")
    return 0 if not differ else 1


if __name__ == "__main__":
    sys.exit(main())
