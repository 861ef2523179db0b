#!/usr/bin/env bash
# The GPU checks as one command, for a machine with an NVIDIA GPU, JAX with CUDA and a CUDA
# PyTorch already installed (no network needed), run from the repository root:
#
#     bash benchmarks/gpu.sh [OUT_DIR]      # default: $OUT, else benchmarks/results
#
# 1. The numerical tests (golden PyTorch vectors, unroll, cells) on the GPU, with float32
#    matmuls in full precision (TF32 would miss the tolerances the CPU suite uses).
# 2. The speed benchmark against PyTorch's cuDNN LSTM/GRU/RNN and the JAX peers, with each
#    library's default matmul precision (recorded in the results), into OUT_DIR/rnn_gpu.*.
# Each part has a time limit so that the whole stays under about 9 minutes.
set -uo pipefail
out=${1:-${OUT:-benchmarks/results}}
mkdir -p "$out"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
python=$(command -v python3 || command -v python)

nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv 2>&1 | tee "$out/gpu_device.txt"
"$python" -c "import jax, seqjax; assert jax.default_backend() == 'gpu', jax.devices(); \
print('jax', jax.__version__, jax.devices(), 'seqjax from', seqjax.__file__)" \
    2>&1 | tee -a "$out/gpu_device.txt" || exit 1

# Four test processes share the GPU: none may take most of its memory up front.
XLA_PYTHON_CLIENT_PREALLOCATE=false JAX_DEFAULT_MATMUL_PRECISION=highest timeout 240 \
    "$python" -m pytest -q -n 4 -p no:cacheprovider \
    tests/test_golden.py tests/test_unroll.py tests/test_cells.py 2>&1 | tee "$out/gpu_tests.log" | tail -15

timeout 400 "$python" -m benchmarks.rnn --rounds 7 --out "$out" 2>&1 | tee "$out/gpu_bench.log"
