"""Compiling the native kernels once per machine and registering them with XLA.

The C++ sources beside this file are compiled on first use with the system's C++ compiler
(``$CXX``, else ``c++`` or ``g++``) for this machine's CPU, against the XLA FFI headers that
jaxlib ships, into a cache directory (``$SEQJAX_NATIVE_CACHE``, else ``~/.cache/seqjax``). The
library's name hashes everything that affects it (sources, flags, compiler, jaxlib, CPU
features), so a changed input builds a new one; it is written under a temporary name and
renamed, so processes building at once never load a half-written file.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
from pathlib import Path

import jax

SOURCES = ("common.h", "lstm.cc", "gru.cc", "rnn.cc")
FLAGS = ("-O3", "-march=native", "-std=c++17", "-shared", "-fPIC", "-fno-math-errno")
# The handlers the library exports, by the name XLA's custom calls use.
TARGETS = {
    "seqjax_lstm_forward": "SeqjaxLstmForward",
    "seqjax_lstm_backward": "SeqjaxLstmBackward",
    "seqjax_gru_forward": "SeqjaxGruForward",
    "seqjax_gru_backward": "SeqjaxGruBackward",
    "seqjax_rnn_forward": "SeqjaxRnnForward",
    "seqjax_rnn_backward": "SeqjaxRnnBackward",
    # The same loops restarting the carry where a call has resets.
    "seqjax_lstm_forward_restarting": "SeqjaxLstmForwardRestarting",
    "seqjax_lstm_backward_restarting": "SeqjaxLstmBackwardRestarting",
    "seqjax_gru_forward_restarting": "SeqjaxGruForwardRestarting",
    "seqjax_gru_backward_restarting": "SeqjaxGruBackwardRestarting",
    "seqjax_rnn_forward_restarting": "SeqjaxRnnForwardRestarting",
    "seqjax_rnn_backward_restarting": "SeqjaxRnnBackwardRestarting",
}


class Unavailable(RuntimeError):
    """The native kernels cannot be used here; the message says why."""


@functools.cache
def load() -> None:
    """Builds (or finds) the library and registers its kernels; raises ``Unavailable``."""
    ffi = getattr(jax, "ffi", None)
    if ffi is None or not hasattr(ffi, "include_dir"):
        raise Unavailable(f"jax {jax.__version__} has no jax.ffi (jax >= 0.5 does)")
    compiler = _compiler()
    library = _library_path(compiler, ffi.include_dir())
    if not library.exists():
        _compile(compiler, ffi.include_dir(), library)
    try:
        lib = ctypes.cdll.LoadLibrary(str(library))
    except OSError as err:
        raise Unavailable(f"could not load {library}: {err}") from err
    for target, symbol in TARGETS.items():
        ffi.register_ffi_target(target, ffi.pycapsule(getattr(lib, symbol)), platform="cpu")


def _compiler() -> str:
    for name in (os.environ.get("CXX"), "c++", "g++", "clang++"):
        if name and shutil.which(name):
            return shutil.which(name)
    raise Unavailable("no C++ compiler found (set CXX, or install g++ or clang++)")


def _library_path(compiler: str, include_dir: str) -> Path:
    digest = hashlib.sha256()
    here = Path(__file__).parent
    for name in SOURCES:
        digest.update((here / name).read_bytes())
    version = subprocess.run([compiler, "--version"], capture_output=True, text=True).stdout
    digest.update(repr((FLAGS, version, include_dir, jax.__version__, _cpu_features())).encode())
    cache = Path(os.environ.get("SEQJAX_NATIVE_CACHE") or Path.home() / ".cache" / "seqjax")
    return cache / f"seqjax_native_{digest.hexdigest()[:16]}.so"


def _cpu_features() -> str:
    """What ``-march=native`` compiles for: the CPU's model and feature flags."""
    try:
        info = Path("/proc/cpuinfo").read_text()
    except OSError:
        return platform.processor() + platform.machine()
    lines = [line for line in info.splitlines() if line.startswith(("flags", "model name"))]
    return "\n".join(sorted(set(lines)))


def _compile(compiler: str, include_dir: str, library: Path) -> None:
    """Compiles each source to an object at once (in parallel processes), then links them."""
    here = Path(__file__).parent
    sources = [here / name for name in SOURCES if name.endswith(".cc")]
    try:
        library.parent.mkdir(parents=True, exist_ok=True)
        workdir = tempfile.mkdtemp(dir=library.parent)
    except OSError as err:
        raise Unavailable(f"cannot write the kernel cache {library.parent}: {err}") from err
    objects = [os.path.join(workdir, source.stem + ".o") for source in sources]
    partial = os.path.join(workdir, library.name)
    commands = [
        [compiler, *FLAGS, "-isystem", include_dir, "-c", str(source), "-o", obj]
        for source, obj in zip(sources, objects, strict=True)
    ]
    commands.append([compiler, *FLAGS, *objects, "-o", partial])
    running: list[tuple[list[str], subprocess.Popen]] = []
    try:
        for batch in (commands[:-1], commands[-1:]):
            running = [
                (command, subprocess.Popen(command, stderr=subprocess.PIPE, text=True))
                for command in batch
            ]
            for command, process in running:
                _, stderr = process.communicate(timeout=300)
                if process.returncode != 0:
                    raise Unavailable(
                        f"compiling the native kernels failed ({' '.join(command)}):\n"
                        f"{stderr[-2000:]}"
                    )
        os.replace(partial, library)
    except subprocess.TimeoutExpired as err:
        raise Unavailable("compiling the native kernels took over 300 s") from err
    finally:
        for _, process in running:  # left running only when another failed or timed out
            if process.poll() is None:
                process.kill()
                process.wait()
        shutil.rmtree(workdir, ignore_errors=True)
