"""Checkpoints: atomic, checksummed, never pickled.

A file is ``MAGIC`` (8 bytes), a little-endian uint32 header length, a JSON header
(``format``, ``step``, ``metadata``, ``sha256`` and length of the payload, and a sha256 of
those fields) and the payload: the state's arrays as msgpack via ``flax.serialization``, which
restores only plain data. A file is
written to a temporary name in the same directory, flushed and fsync-ed, then renamed over the
final name and the directory fsync-ed, so a reader sees either the old file or the whole new one,
even if the writer is killed. A truncated or altered file fails its length or checksum checks.
"""

from __future__ import annotations

import hashlib
import json
import os
import pathlib
import struct
import tempfile
import warnings
from collections.abc import Callable
from typing import Any

import jax
import numpy as np
from flax import serialization

from seqjax import _checks

MAGIC = b"SEQJAXCK"
FORMAT = 1
PREFIX, SUFFIX = "ckpt_", ".msgpack"


class CheckpointError(ValueError):
    """A checkpoint file that cannot be trusted: truncated, altered, foreign or of another
    structure than the state it should restore."""


class CheckpointMismatchError(CheckpointError):
    """A sound checkpoint that holds another structure, shape or dtype than the state it was
    asked to restore: the file is fine, the template is not the one it was written from."""


def _encode(state: Any) -> Any:
    """Plain host arrays: typed PRNG keys become their raw key data (msgpack knows only plain
    arrays), and an array replicated over several hosts' devices is read from a local copy."""

    def host(x: Any) -> np.ndarray:
        if _is_key(x):
            x = jax.random.key_data(x)
        if isinstance(x, jax.Array) and not x.is_fully_addressable:
            if not x.is_fully_replicated:
                raise CheckpointError(
                    "save: an array sharded across hosts cannot be written by one process; "
                    "replicate the state (as fit does) before saving"
                )
            x = x.addressable_data(0)
        return np.asarray(x)

    return jax.tree.map(host, state)


def _is_key(x: Any) -> bool:
    return isinstance(x, jax.Array) and jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key)


def save(
    directory: str | os.PathLike,
    state: Any,
    *,
    step: int,
    metadata: dict | None = None,
    keep: int = 3,
) -> pathlib.Path:
    """Writes ``state`` (any pytree of arrays, PRNG keys and numbers) as
    ``directory/ckpt_{step:09d}.msgpack``, atomically, and keeps the newest ``keep`` files.

    ``metadata`` (JSON-serialisable: config, data position) is stored in the header.
    """
    directory = pathlib.Path(directory)
    if directory.exists() and not directory.is_dir():
        raise ValueError(f"checkpoint.save: directory {str(directory)!r} is a file; pass a folder")
    step = _checks.check_int(step, "step", "checkpoint.save", low=0)
    _checks.check_int(keep, "keep", "checkpoint.save", low=1)
    directory.mkdir(parents=True, exist_ok=True)
    payload = serialization.msgpack_serialize(serialization.to_state_dict(_encode(state)))
    fields = {
        "format": FORMAT,
        "step": int(step),
        "metadata": metadata or {},
        "sha256": hashlib.sha256(payload).hexdigest(),
        "payload_bytes": len(payload),
    }
    header = json.dumps({**fields, "header_sha256": _header_digest(fields)}).encode()
    path = directory / f"{PREFIX}{int(step):09d}{SUFFIX}"
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".tmp_", suffix=".partial")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(MAGIC + struct.pack("<I", len(header)) + header + payload)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        pathlib.Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_directory(directory)
    for old in sorted(directory.glob(f"{PREFIX}*{SUFFIX}"))[:-keep]:
        old.unlink(missing_ok=True)
    return path


def _fsync_directory(directory: pathlib.Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:  # some platforms cannot open a directory; the rename is still atomic
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _split(data: bytes, where: str) -> tuple[dict, bytes]:
    """A checkpoint file's JSON header and its payload bytes (not yet verified)."""
    if data[: len(MAGIC)] != MAGIC:
        raise CheckpointError(f"{where} is not a seqjax checkpoint (bad magic bytes)")
    try:
        (size,) = struct.unpack("<I", data[len(MAGIC) : len(MAGIC) + 4])
        start = len(MAGIC) + 4
        header, payload = json.loads(data[start : start + size]), data[start + size :]
    except (struct.error, ValueError) as err:
        raise CheckpointError(f"{where} has a truncated or unreadable header") from err
    if not isinstance(header, dict):
        raise CheckpointError(f"{where} has an altered header (not a JSON object)")
    for field, kind in _HEADER_FIELDS.items():
        value = header.get(field)
        if not isinstance(value, kind) or isinstance(value, bool):
            raise CheckpointError(
                f"{where} has an altered header: field {field!r} is missing or not a "
                f"{kind.__name__} (found {value!r})"
            )
    digest = header.get("header_sha256")  # absent only in files written before it existed
    if digest is not None and digest != _header_digest(header):
        raise CheckpointError(f"{where} fails its header checksum: the header was altered")
    if header["format"] != FORMAT:
        raise CheckpointError(f"{where} has format {header['format']!r}; expected {FORMAT}")
    if len(payload) != header["payload_bytes"]:
        raise CheckpointError(
            f"{where} is truncated: {len(payload)} of {header['payload_bytes']} payload bytes; "
            "it was cut short while being copied or written by another tool"
        )
    if hashlib.sha256(payload).hexdigest() != header["sha256"]:
        raise CheckpointError(f"{where} fails its sha256 checksum: the file was altered")
    return header, payload


_HEADER_FIELDS = {"format": int, "step": int, "metadata": dict, "sha256": str,
                  "payload_bytes": int}  # fmt: skip


def _header_digest(header: dict) -> str:
    """sha256 of the header's fields (all but this digest), in a canonical JSON form."""
    fields = {k: header[k] for k in _HEADER_FIELDS}
    return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()


def read_metadata(path: str | os.PathLike) -> tuple[int, dict]:
    """``(step, metadata)`` from a checkpoint's header, without restoring its arrays (to learn
    how to rebuild the state it holds). The whole file is verified as :func:`load` does."""
    path = pathlib.Path(path)
    where = f"checkpoint {str(path)!r}"
    header, payload = _split(path.read_bytes(), where)
    _decode(payload, where)
    return header["step"], header["metadata"]


def _decode(payload: bytes, where: str) -> Any:
    try:  # msgpack restores plain data only: nothing in the payload can run code
        return serialization.msgpack_restore(payload)
    except Exception as err:  # a payload that passed its checksum but is not msgpack
        raise CheckpointError(f"{where} has a payload that is not msgpack ({err})") from None


def load(path: str | os.PathLike, target: Any) -> tuple[Any, int, dict]:
    """Reads one checkpoint into the structure of ``target`` (e.g. a freshly initialised state).

    Returns ``(state, step, metadata)``. Raises :class:`CheckpointError` if the file is not a
    seqjax checkpoint, is truncated, fails its checksum, or holds another structure, shape or
    dtype than ``target``.
    """
    path = pathlib.Path(path)
    where = f"checkpoint {str(path)!r}"
    header, payload = _split(path.read_bytes(), where)
    state = _restore(_decode(payload, where), target, where)
    return state, int(header["step"]), header["metadata"]


def load_params(path: str | os.PathLike, template: Any) -> tuple[Any, int, dict]:
    """``(params, step, metadata)``: the ``params`` of a checkpoint written by ``fit`` (a whole
    ``TrainState``), restored into ``template`` (e.g. ``model.init(key)``) without the
    optimizer state, so the optimizer need not be rebuilt. A file of bare params loads too.
    Checked as :func:`load` checks."""
    path = pathlib.Path(path)
    where = f"checkpoint {str(path)!r}"
    header, payload = _split(path.read_bytes(), where)
    stored = _decode(payload, where)
    if isinstance(stored, dict) and set(stored) == _TRAIN_STATE_KEYS:
        stored = stored["params"]
    return _restore(stored, template, where), int(header["step"]), header["metadata"]


def _restore(stored: Any, target: Any, where: str) -> Any:
    """``stored`` (a decoded payload) in the structure of ``target``, after checking it."""
    template = serialization.to_state_dict(_encode(target))
    _check_structure(stored, template, where, ())
    restored = serialization.from_state_dict(_encode(target), stored)
    return jax.tree.map(
        lambda t, r: jax.random.wrap_key_data(r, impl=jax.random.key_impl(t)) if _is_key(t) else r,
        target,
        jax.tree.unflatten(jax.tree.structure(target), jax.tree.leaves(restored)),
    )


def _check_structure(stored: Any, template: Any, where: str, path: tuple) -> None:
    name = "/".join(map(str, path)) or "<root>"
    if isinstance(template, dict):
        if not isinstance(stored, dict) or set(stored) != set(template):
            got = sorted(stored) if isinstance(stored, dict) else type(stored).__name__
            raise CheckpointMismatchError(
                f"{where} does not match this state: at {name} expected keys "
                f"{sorted(template)}, found {got}{_hint(stored, template)}"
            )
        for key in template:
            _check_structure(stored[key], template[key], where, (*path, key))
        return
    got, want = np.asarray(stored), np.asarray(template)
    if got.shape != want.shape or got.dtype != want.dtype:
        raise CheckpointMismatchError(
            f"{where} does not match this state: at {name} expected "
            f"{want.dtype}{list(want.shape)}, found {got.dtype}{list(got.shape)}"
        )


_TRAIN_STATE_KEYS = {"params", "opt_state", "step"}  # TrainState as a state dict


def _hint(stored: Any, template: dict) -> str:
    """What to do when a whole TrainState and bare params are mistaken for each other."""
    if isinstance(stored, dict) and set(stored) == _TRAIN_STATE_KEYS != set(template):
        return (
            "; the file holds a whole training state: load it into "
            "seqjax.train.TrainState.create(params, optimizer) and take .params"
        )
    if set(template) == _TRAIN_STATE_KEYS and isinstance(stored, dict):
        return "; the file holds another pytree than a TrainState (bare params?)"
    return ""


def latest(directory: str | os.PathLike, target: Any) -> tuple[Any, int, dict] | None:
    """The newest checkpoint in ``directory`` that loads cleanly, or None if there is none.

    A newer file that is damaged (truncated, altered, not a checkpoint) is skipped with a
    warning naming it and why, and the previous good one is used; if every file is damaged,
    :class:`CheckpointError` lists them. A sound file of another structure than ``target`` is
    not skipped: :class:`CheckpointMismatchError` is raised at once, since every older file of
    the same run would mismatch too.
    """
    return _newest_good(directory, lambda path: load(path, target))


def latest_params(directory: str | os.PathLike, template: Any) -> tuple[Any, int, dict] | None:
    """:func:`load_params` of the newest good checkpoint in ``directory`` (None if none);
    skips and fails as :func:`latest` does."""
    return _newest_good(directory, lambda path: load_params(path, template))


def latest_metadata(directory: str | os.PathLike) -> tuple[int, dict] | None:
    """``(step, metadata)`` of the checkpoint :func:`latest` would load, or None if there is
    none; skips and fails as it does."""
    return _newest_good(directory, read_metadata)


def _newest_good(directory: str | os.PathLike, read: Callable[[pathlib.Path], Any]) -> Any:
    """``read`` of the newest file in ``directory`` that passes its checks."""
    directory = pathlib.Path(directory)
    if not directory.is_dir():
        return None
    failures = []
    for path in sorted(directory.glob(f"{PREFIX}*{SUFFIX}"), reverse=True):
        try:
            return read(path)
        except CheckpointMismatchError:
            raise
        except CheckpointError as err:
            warnings.warn(f"skipping {err}", stacklevel=3)
            failures.append(str(err))
    if failures:
        raise CheckpointError("no usable checkpoint: " + "; ".join(failures))
    return None
