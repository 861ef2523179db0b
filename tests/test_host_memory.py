"""seqjax.host_memory.keep_freed_memory: freed blocks are reused, not faulted in again."""

import subprocess
import sys

import pytest

SCRIPT = """
import resource, sys
import numpy as np
from seqjax import host_memory
if sys.argv[1] == "keep":
    assert host_memory.keep_freed_memory() and host_memory.keep_freed_memory()  # idempotent
def faults():
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(2):
    np.ones(2**24).sum()
start = faults()
for _ in range(5):
    np.ones(2**24).sum()  # 128 MiB allocated and freed: glibc mmaps it, by default afresh
print((faults() - start) / 5)
"""


def _faults_per_allocation(mode: str) -> float:
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT, mode], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    return float(done.stdout.split()[-1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc malloc only")
def test_keep_freed_memory_stops_page_faults_on_reallocation():
    by_default = _faults_per_allocation("default")
    kept = _faults_per_allocation("keep")
    assert by_default >= 50  # 128 MiB in fresh pages (at most 2 MiB each) every time
    assert kept <= by_default / 10
