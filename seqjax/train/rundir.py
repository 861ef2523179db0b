"""A run directory that no mistake empties: one writer at a time, and a replaced run kept until
the run replacing it has written its first checkpoint.

``fit`` opens its ``run_dir`` with :func:`open_run`. The directory is locked (``.lock``, an
``flock`` held for the whole run, so a second run on it is refused at once). Replacing a run
(``overwrite=True``) moves its files into ``.replaced/`` by renames, which cost no space and
cannot half-happen per file; they are deleted only when the new run's first checkpoint is on
disk (:meth:`RunDirectory.checkpoint_written`), and moved back if the new run ends before that
(an error, a signal). A process killed in between leaves ``.replaced/`` behind; the next
:func:`open_run` (or :func:`recover`) finishes the job: it restores the old run if the new one
never checkpointed, and deletes it otherwise.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import pathlib
import shutil
import tempfile
import warnings
from collections.abc import Callable, Iterator

RUN_FILES = (
    "checkpoints", "metrics.jsonl", "steps.jsonl", "curve.png", "tensorboard", "result.json",
)  # fmt: skip
LOCK, REPLACED = ".lock", ".replaced"


def write_atomically(path: str | os.PathLike, write: Callable[[pathlib.Path], object]) -> None:
    """Writes ``path`` by ``write(temporary)`` into a temporary file beside it, then renames it
    over ``path``: a reader sees the old file or the whole new one, never half of one. The
    temporary file is removed if ``write`` fails."""
    path = pathlib.Path(path)
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    temporary = pathlib.Path(name)
    try:
        write(temporary)
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


class RunDirError(ValueError):
    """A run directory that cannot be used as asked: in use, not writable, or holding a run."""


def previous_run(run_dir: pathlib.Path) -> list[pathlib.Path]:
    """The files a run left in ``run_dir`` (``fit``'s, and the CLI's ``result.json``)."""
    return [run_dir / name for name in RUN_FILES if (run_dir / name).exists()]


def check_writable(run_dir: pathlib.Path, who: str) -> None:
    """Raises :class:`RunDirError` unless files can be created in ``run_dir`` (or, if it does
    not exist yet, in its nearest existing parent). Changes nothing on disk."""
    if run_dir.exists() and not run_dir.is_dir():
        raise RunDirError(f"{who} {str(run_dir)!r} is a file; pass a folder")
    probe = run_dir
    while not probe.exists():
        probe = probe.parent
    try:
        with tempfile.TemporaryFile(dir=probe):
            pass
    except OSError as err:
        reason = os.strerror(err.errno) if err.errno else str(err)
        raise RunDirError(
            f"{who} {str(run_dir)!r} is not writable ({reason.lower()} in {str(probe)!r}); "
            "pass a folder you can write to"
        ) from None


class RunDirectory:
    """An open, locked run directory (see the module docstring); use through :func:`open_run`."""

    def __init__(self, path: pathlib.Path):
        self.path = path
        self._replaced: list[str] = []

    def replace_previous(self) -> list[str]:
        """Moves the previous run's files into ``.replaced/``; returns their names."""
        aside = self.path / REPLACED
        aside.mkdir()
        for path in previous_run(self.path):
            os.rename(path, aside / path.name)
            self._replaced.append(path.name)
        return self._replaced

    def checkpoint_written(self) -> None:
        """The new run is on disk: the replaced one may go now."""
        if self._replaced:
            shutil.rmtree(self.path / REPLACED, ignore_errors=True)
            self._replaced = []

    def restore_previous(self) -> None:
        """The new run ended before its first checkpoint: put the replaced run back."""
        if self._replaced:
            _restore(self.path)
            self._replaced = []


def _restore(run_dir: pathlib.Path) -> None:
    aside = run_dir / REPLACED
    for old in aside.iterdir():
        new = run_dir / old.name
        if new.is_dir():  # the unfinished new run's files: it has no checkpoint to resume
            shutil.rmtree(new)
        elif new.exists():
            new.unlink()
        os.rename(old, new)
    aside.rmdir()


def _has_checkpoint(run_dir: pathlib.Path) -> bool:
    checkpoints = run_dir / "checkpoints"
    return checkpoints.is_dir() and any(checkpoints.glob("ckpt_*.msgpack"))


def _recover_locked(run_dir: pathlib.Path) -> None:
    if not (run_dir / REPLACED).is_dir():
        return
    if _has_checkpoint(run_dir):
        shutil.rmtree(run_dir / REPLACED)
        return
    _restore(run_dir)
    warnings.warn(
        f"{str(run_dir)!r}: a run that was replacing the one here stopped before its first "
        "checkpoint; the previous run was restored",
        stacklevel=3,
    )


_HELD: dict[str, int] = {}  # resolved path -> how many times this process holds its lock


@contextlib.contextmanager
def _locked(run_dir: pathlib.Path, who: str) -> Iterator[None]:
    """The run directory's ``flock`` (re-entrant within one process)."""
    key = str(run_dir.resolve())
    if key in _HELD:
        _HELD[key] += 1
        try:
            yield
        finally:
            _HELD[key] -= 1
        return
    fd = os.open(run_dir / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as err:
            if err.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
            raise RunDirError(
                f"{who} {str(run_dir)!r} is in use by another run (process {holder}); wait for "
                "it to finish, or pass another folder"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        _HELD[key] = 1
        try:
            yield
        finally:
            del _HELD[key]
            os.ftruncate(fd, 0)
    finally:
        os.close(fd)  # closing the descriptor releases the lock


def recover(run_dir: str | os.PathLike) -> None:
    """Finishes a replacement that a killed process left half done (see the module docstring);
    does nothing if there is none, or if another process holds the directory."""
    run_dir = pathlib.Path(run_dir)
    if not (run_dir / REPLACED).is_dir():
        return
    with contextlib.suppress(RunDirError), _locked(run_dir, "run_dir"):
        _recover_locked(run_dir)


@contextlib.contextmanager
def open_run(
    run_dir: pathlib.Path, *, resume: bool, overwrite: bool, who: str = "fit: run_dir"
) -> Iterator[RunDirectory]:
    """Locks ``run_dir`` for one run and, with ``overwrite``, moves a previous run aside.

    Without ``resume`` or ``overwrite`` a directory holding another run is refused. On leaving
    the block by an exception before :meth:`RunDirectory.checkpoint_written`, the replaced run is
    put back.
    """
    check_writable(run_dir, who)
    run_dir.mkdir(parents=True, exist_ok=True)
    with _locked(run_dir, who):
        _recover_locked(run_dir)
        run = RunDirectory(run_dir)
        previous = previous_run(run_dir)
        if previous and not resume:
            if not overwrite:
                raise RunDirError(
                    f"{who} {str(run_dir)!r} holds another run "
                    f"({', '.join(p.name for p in previous)}); pass resume=True to continue "
                    "it, overwrite=True to replace it, or an empty or new run_dir (a new run "
                    "there would mix its files with the old one's)"
                )
            run.replace_previous()
        try:
            yield run
        except BaseException:
            run.restore_previous()
            raise
        # A run that ended without any checkpoint (none was asked for) replaced the old one.
        run.checkpoint_written()
