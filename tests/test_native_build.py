"""``seqjax.native._build``: a failed build is remembered, the first build says one line, and the
kernel cache is private to the user. These tests never register kernels with XLA (``_register``
is replaced), so the kernels the rest of the suite loads are untouched."""

from __future__ import annotations

import os
import shutil
import stat

import jax
import pytest

from seqjax.native import _build

# A stand-in compiler: writes each ``-o`` output, world-writable, as a real one might under a
# permissive umask.
FAKE_COMPILER = """#!/bin/sh
while [ $# -gt 0 ]; do
  if [ "$1" = -o ]; then shift; : > "$1"; chmod 0777 "$1"; fi
  shift
done
"""


@pytest.fixture(autouse=True)
def fresh(monkeypatch, tmp_path):
    """A process that has not called ``load`` yet, a cache under ``tmp_path``, and no
    registration; monkeypatch puts the real memo and functions back afterwards."""
    monkeypatch.setattr(_build, "_outcome", None)
    monkeypatch.setenv("SEQJAX_NATIVE_CACHE", str(tmp_path / "cache"))
    registered = []
    monkeypatch.setattr(_build, "_register", registered.append)
    return registered


@pytest.fixture
def fake_build(monkeypatch, tmp_path):
    """``load`` with a stand-in compiler and a fixed library path in the tmp cache."""
    compiler = tmp_path / "fake-c++"
    compiler.write_text(FAKE_COMPILER)
    compiler.chmod(0o755)
    library = tmp_path / "cache" / "seqjax_native_test.so"
    monkeypatch.setattr(_build, "_compiler", lambda: str(compiler))
    monkeypatch.setattr(_build, "_library_path", lambda compiler, include_dir: library)
    return library


def counting(monkeypatch, function):
    calls = []

    def wrapper(*args, **kwargs):
        calls.append(args)
        return function(*args, **kwargs)

    monkeypatch.setattr(_build, function.__name__, wrapper)
    return calls


def test_failed_build_is_remembered(monkeypatch, fake_build):
    false = shutil.which("false")
    if false is None:
        pytest.skip("no `false` command")
    monkeypatch.setattr(_build, "_compiler", lambda: false)
    calls = counting(monkeypatch, _build._compile)
    with pytest.raises(_build.Unavailable, match="compiling the native kernels failed") as first:
        _build.load()
    with pytest.raises(_build.Unavailable) as second:
        _build.load()
    assert str(second.value) == str(first.value)
    assert len(calls) == 1
    assert not fake_build.exists()


def test_success_is_remembered(monkeypatch, fresh, fake_build):
    calls = counting(monkeypatch, _build._compile)
    _build.load()
    _build.load()
    assert len(calls) == 1
    assert fresh == [fake_build]  # registered once


def test_compiling_says_one_line_on_stderr_only_when_compiling(capsys, monkeypatch, fake_build):
    _build.load()
    out, err = capsys.readouterr()
    assert out == ""
    lines = err.splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("seqjax: compiling the native CPU kernels")
    assert str(fake_build.parent) in lines[0]
    _build.load()  # remembered: nothing said
    assert capsys.readouterr() == ("", "")
    monkeypatch.setattr(_build, "_outcome", None)  # a new process: the library is in the cache
    _build.load()
    assert capsys.readouterr() == ("", "")


def test_built_library_and_cache_are_private(monkeypatch, fresh, fake_build):
    old = os.umask(0o277)  # would leave the directory r-x------ without the explicit chmod
    try:
        _build.load()
    finally:
        os.umask(old)
    assert stat.S_IMODE(os.stat(fake_build.parent).st_mode) == 0o700
    assert not os.stat(fake_build).st_mode & (stat.S_IWGRP | stat.S_IWOTH)
    assert fresh == [fake_build]


def test_cache_made_by_a_failed_build_is_0700(tmp_path):
    library = tmp_path / "made" / "kernels.so"
    with pytest.raises(_build.Unavailable):
        _build._compile("false", jax.ffi.include_dir(), library)
    assert stat.S_IMODE(os.stat(library.parent).st_mode) == 0o700
    assert list(library.parent.iterdir()) == []


def test_existing_0755_cache_is_accepted(tmp_path):
    cache = tmp_path / "old"
    cache.mkdir()
    cache.chmod(0o755)
    _build._private_cache(cache)
    library = cache / "lib.so"
    library.write_bytes(b"")
    library.chmod(0o755)
    _build._check_private(library)


def test_library_of_another_user_is_refused(monkeypatch, tmp_path):
    library = tmp_path / "lib.so"
    library.write_bytes(b"")
    library.chmod(0o600)
    uid = os.getuid()
    monkeypatch.setattr(os, "getuid", lambda: uid + 1)
    with pytest.raises(_build.Unavailable, match=f"owned by uid {uid}") as err:
        _build._check_private(library)
    assert str(library) in str(err.value)
    assert "SEQJAX_NATIVE_CACHE" in str(err.value)


def test_cache_of_another_user_is_refused(monkeypatch, tmp_path):
    uid = os.getuid()
    monkeypatch.setattr(os, "getuid", lambda: uid + 1)
    with pytest.raises(_build.Unavailable, match="refusing to use the kernel cache"):
        _build._private_cache(tmp_path)


def test_group_writable_library_is_refused(tmp_path):
    library = tmp_path / "lib.so"
    library.write_bytes(b"")
    library.chmod(0o664)
    with pytest.raises(_build.Unavailable, match="lets group or others write"):
        _build._check_private(library)


@pytest.mark.parametrize("mode", [0o770, 0o703])
def test_group_or_other_writable_cache_is_refused(tmp_path, mode):
    cache = tmp_path / "shared"
    cache.mkdir()
    cache.chmod(mode)
    with pytest.raises(_build.Unavailable, match="lets group or others write") as err:
        _build._private_cache(cache)
    assert str(cache) in str(err.value)


def test_symlink_in_place_of_the_library_is_refused(tmp_path):
    target = tmp_path / "elsewhere.so"
    target.write_bytes(b"")
    target.chmod(0o700)
    library = tmp_path / "lib.so"
    library.symlink_to(target)
    with pytest.raises(_build.Unavailable, match="symbolic link"):
        _build._check_private(library)


def test_unsafe_library_is_never_loaded(monkeypatch, fresh, fake_build):
    """A group-writable library found in the cache: ``load`` refuses it (and remembers) without
    compiling or registering it."""
    fake_build.parent.mkdir(mode=0o700)
    fake_build.write_bytes(b"")
    fake_build.chmod(0o666)
    calls = counting(monkeypatch, _build._compile)
    for _ in range(2):
        with pytest.raises(_build.Unavailable, match="refusing to load"):
            _build.load()
    assert calls == []
    assert fresh == []
