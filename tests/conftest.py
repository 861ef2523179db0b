"""Shared test helpers. Golden files: copies of ``../shared/golden``, made by PyTorch and Keras."""

from __future__ import annotations

import json
import os
import pathlib

# The suite is compile-bound (hundreds of small programs) and checks numbers, not speed: XLA's
# backend optimisation level 0 compiles about 30% faster and gives the same results within
# every tolerance here. Set before JAX starts its backend (and inherited by the notebook kernels
# and subprocesses the tests start); a user's own XLA_FLAGS keep precedence.
if "xla_backend_optimization_level" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (
        os.environ.get("XLA_FLAGS", "") + " --xla_backend_optimization_level=0"
    ).strip()

# Many tests compile the same small programs again: parametrized cases that differ only outside
# the program, and the training runs the CLI, notebook and kill/resume tests start as
# subprocesses. A persistent compilation cache, shared by the xdist workers and inherited by
# the subprocesses, compiles each once per suite run. Its key is the program and the compiler
# version and flags, so a changed program never hits a stale entry.
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
    import tempfile

    os.environ["JAX_COMPILATION_CACHE_DIR"] = str(
        pathlib.Path(tempfile.gettempdir()) / f"seqjax-tests-xla-cache-{os.getuid()}"
    )
    os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")

import numpy as np
import pytest

GOLDEN_DIR = pathlib.Path(__file__).parent / "data" / "golden"


def load_golden(name: str) -> tuple[dict, dict[str, np.ndarray]]:
    """``(config, arrays)`` of one golden file."""
    with np.load(GOLDEN_DIR / name) as data:
        arrays = {key: data[key] for key in data.files}
    return json.loads(str(arrays.pop("config"))), arrays


@pytest.fixture
def x64():
    """Runs a test in float64 (JAX's x64 mode), restoring the mode afterwards."""
    import jax

    with jax.enable_x64(True):
        yield
