"""Shared test helpers. Golden files: copies of ``../shared/golden``, made by PyTorch and Keras."""

from __future__ import annotations

import json
import pathlib

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
