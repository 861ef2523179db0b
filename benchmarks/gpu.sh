#!/usr/bin/env bash
# The GPU checks as one command, for a machine with an NVIDIA GPU, JAX with CUDA and a CUDA
# PyTorch already installed (no network needed), run from the repository root:
#
#     bash benchmarks/gpu.sh [OUT_DIR]      # default: $OUT, else benchmarks/results
#
# 1. The speed benchmark against PyTorch's cuDNN LSTM/GRU/RNN and the JAX peers, with each
#    library's default matmul precision (recorded in the results), into OUT_DIR/rnn_gpu.*.
#    It writes its table after each cell, so a run cut short keeps what it measured.
# 2. The numerical tests (golden PyTorch vectors, unroll, cells) on the GPU, with float32
#    matmuls in full precision (TF32 would miss the tolerances the CPU suite uses).
# 3. Peak memory against T with and without remat (XLA's memory analysis), OUT_DIR/memory_gpu.*.
# Each part has a time limit so that the whole stays under about 9 minutes; at most eight files
# are written (a device lease returns no more).
set -uo pipefail
out=${1:-${OUT:-benchmarks/results}}
mkdir -p "$out"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
python=$(command -v python3 || command -v python)

nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv 2>&1 | tee "$out/gpu_device.txt"
"$python" - <<'PY' 2>&1 | tee -a "$out/gpu_device.txt" || exit 1
import importlib.metadata as md

import jax
import jax.numpy as jnp

import seqjax

assert jax.default_backend() == "gpu", jax.devices()
print("jax", jax.__version__, jax.devices(), "seqjax from", seqjax.__file__)
print({name: md.version(name) for name in ("jaxlib", "flax", "optax", "chex", "equinox", "torch")})
cell = seqjax.lstm(8)
params = cell.init(jax.random.key(0), 4)
xs = jnp.ones((2, 5, 4))
grads = jax.grad(lambda p: jnp.sum(seqjax.unroll(cell, p, xs)[1]))(params)
print("a gradient through seqjax.unroll runs on", jax.tree.leaves(grads)[0].devices())
PY

timeout 300 "$python" -m benchmarks.rnn --rounds 11 --out "$out" 2>&1 | tee "$out/gpu_bench.log"

# Eight test processes share the GPU: none may take most of its memory up front.
XLA_PYTHON_CLIENT_PREALLOCATE=false JAX_DEFAULT_MATMUL_PRECISION=highest timeout 150 \
    "$python" -m pytest -q -n 8 -p no:cacheprovider \
    tests/test_golden.py tests/test_unroll.py tests/test_cells.py 2>&1 | tee "$out/gpu_tests.log" | tail -15

timeout 60 "$python" -m benchmarks.memory --out "$out" 2>&1 | tee -a "$out/gpu_bench.log"
