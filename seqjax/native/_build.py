"""Compiling the native kernels once per machine and registering them with XLA.

The C++ sources beside this file are compiled on first use with the system's C++ compiler
(``$CXX``, else ``c++`` or ``g++``) for this machine's CPU, against the XLA FFI headers that
jaxlib ships, into a cache directory (``$SEQJAX_NATIVE_CACHE``, else ``~/.cache/seqjax``). The
library's name hashes everything that affects it (sources, flags, compiler, jaxlib, CPU
features), so a changed input builds a new one; it is written under a temporary name and
renamed, so processes building at once never load a half-written file.

The cache is private to the user: this code creates it with mode 0700, and it refuses (with
``Unavailable``) a cache directory or library that another user owns or could write, or a
library that is a symbolic link, since loading a library runs its code. The first build says
so in one line on stderr, and the outcome of ``load`` is remembered for the process: a build
that failed is not tried again on every trace.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shutil
import stat
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

import jax

SOURCES = (
    "common.h", "lstm.cc", "gru.cc", "rnn.cc",
    "amx.h", "bf16_steps.h", "gemm.cc", "lstm_bf16.cc", "gru_bf16.cc", "rnn_bf16.cc",
)  # fmt: skip
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
    # bfloat16 (seqjax.native.bf16): the GEMM of the backward passes,
    "seqjax_bf16_matmul": "SeqjaxBf16Matmul",
    # and the recurrences, with or without resets (empty flags: none)
    "seqjax_lstm_bf16_forward": "SeqjaxLstmBf16Forward",
    "seqjax_lstm_bf16_backward": "SeqjaxLstmBf16Backward",
    "seqjax_gru_bf16_forward": "SeqjaxGruBf16Forward",
    "seqjax_gru_bf16_backward": "SeqjaxGruBf16Backward",
    "seqjax_rnn_bf16_forward": "SeqjaxRnnBf16Forward",
    "seqjax_rnn_bf16_backward": "SeqjaxRnnBf16Backward",
}


class Unavailable(RuntimeError):
    """The native kernels cannot be used here; the message says why."""


# What ``load`` ended with in this process: None before its first call, True once the kernels
# are registered, or the ``Unavailable`` it raised (raised again, as a fresh copy, at once).
_outcome: bool | Unavailable | None = None
_lock = threading.Lock()
_library: ctypes.CDLL | None = None  # once loaded


def load() -> None:
    """Builds (or finds) the library and registers its kernels, once per process; raises
    ``Unavailable`` saying why not, and on later calls the same reason without building again."""
    global _outcome
    with _lock:
        if _outcome is None:
            try:
                _load()
            except Unavailable as err:
                _outcome = err
            else:
                _outcome = True
        failure = _outcome
    if failure is not True:
        # A fresh exception each time, so the remembered one's traceback does not grow.
        raise Unavailable(str(failure)) from failure.__cause__


def _load() -> None:
    ffi = getattr(jax, "ffi", None)
    if ffi is None or not hasattr(ffi, "include_dir"):
        raise Unavailable(f"jax {jax.__version__} has no jax.ffi (jax >= 0.5 does)")
    compiler = _compiler()
    library = _library_path(compiler, ffi.include_dir())
    _private_cache(library.parent)
    if not os.path.lexists(library):
        print(
            f"seqjax: compiling the native CPU kernels once for this machine into "
            f"{library.parent} (about 10-30 s)...",
            file=sys.stderr,
            flush=True,
        )
        _compile(compiler, ffi.include_dir(), library)
    _check_private(library)
    _register(library)


def _register(library: Path) -> None:
    try:
        lib = ctypes.cdll.LoadLibrary(str(library))
    except OSError as err:
        raise Unavailable(f"could not load {library}: {err}") from err
    for target, symbol in TARGETS.items():
        jax.ffi.register_ffi_target(target, jax.ffi.pycapsule(getattr(lib, symbol)), platform="cpu")
    global _library
    _library = lib


def bf16_support() -> int:
    """The loaded library's ``SeqjaxBf16Support()``: the bits of ``bf16::Support`` in amx.h
    (the first call asks Linux for the AMX permission). Call after :func:`load`."""
    load()
    assert _library is not None
    return int(_library.SeqjaxBf16Support())


_ADVICE = "remove it, or set SEQJAX_NATIVE_CACHE to a private folder"


def _owner(uid: int) -> str:
    try:
        import pwd

        return f"uid {uid} ({pwd.getpwuid(uid).pw_name})"
    except (ImportError, KeyError):
        return f"uid {uid}"


def _check_private(path: Path, *, directory: bool = False) -> None:
    """Raises ``Unavailable`` unless ``path`` is a regular file (``directory``: a directory)
    that the current user owns and that neither group nor others may write. A library is
    checked without following links (a link in its place is refused); the cache directory
    may be reached through one, and its target is checked."""
    what = "use the kernel cache" if directory else "load the kernel library"
    try:
        info = os.stat(path) if directory else os.lstat(path)
    except OSError as err:
        raise Unavailable(f"cannot {what} {path}: {err}") from err
    if directory and not stat.S_ISDIR(info.st_mode):
        raise Unavailable(f"refusing to {what} {path}: it is not a directory; {_ADVICE}")
    if not directory and stat.S_ISLNK(info.st_mode):
        raise Unavailable(
            f"refusing to {what} {path}: it is a symbolic link, not a file this build wrote; "
            f"{_ADVICE}"
        )
    if not directory and not stat.S_ISREG(info.st_mode):
        raise Unavailable(f"refusing to {what} {path}: it is not a regular file; {_ADVICE}")
    getuid = getattr(os, "getuid", None)
    if getuid is not None and info.st_uid != getuid():
        raise Unavailable(
            f"refusing to {what} {path}: it is owned by {_owner(info.st_uid)}, not by this user "
            f"({_owner(getuid())}); {_ADVICE}"
        )
    if info.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        raise Unavailable(
            f"refusing to {what} {path}: its mode {stat.filemode(info.st_mode)} "
            f"({oct(stat.S_IMODE(info.st_mode))}) lets group or others write to it; {_ADVICE}"
        )


def _private_cache(directory: Path) -> None:
    """Creates the cache directory with mode 0700 where it is missing (set explicitly, since
    the umask can strip bits), then refuses one that is not private (``_check_private``)."""
    try:
        directory.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.mkdir(directory, mode=0o700)
        except FileExistsError:
            pass  # made earlier, or by another process at once: checked below
        else:
            os.chmod(directory, 0o700)
    except OSError as err:
        raise Unavailable(f"cannot write the kernel cache {directory}: {err}") from err
    _check_private(directory, directory=True)


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
    _private_cache(library.parent)
    try:
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
        os.chmod(partial, 0o700)  # the linker's mode follows the umask (group-writable at 002)
        os.replace(partial, library)
    except subprocess.TimeoutExpired as err:
        raise Unavailable("compiling the native kernels took over 300 s") from err
    except OSError as err:
        raise Unavailable(f"cannot write the kernel cache {library.parent}: {err}") from err
    finally:
        for _, process in running:  # left running only when another failed or timed out
            if process.poll() is None:
                process.kill()
                process.wait()
        shutil.rmtree(workdir, ignore_errors=True)
