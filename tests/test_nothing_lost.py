"""Fault injection: no bad input, signal, kill, full disk, read-only folder, second writer or
hostile file loses a run or leaves it unusable; each ends with a clear message."""

from __future__ import annotations

import contextlib
import json
import os
import pathlib
import pickle
import shutil
import signal
import subprocess
import sys
import time
import warnings

import flax
import jax
import numpy as np
import pytest

from seqjax import cli, train
from seqjax.train import checkpoint, rundir

SMALL = ["--hidden", "8", "--seq-len", "10", "--batch-size", "16"]
SCRIPT = pathlib.Path(__file__).with_name("fault_script.py")


def snapshot(folder: pathlib.Path) -> dict[str, bytes]:
    """Every file under ``folder``, by relative path, with its bytes (the lock file aside)."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file() and p.name != rundir.LOCK}  # fmt: skip


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory) -> pathlib.Path:
    """A finished 4-step `seqjax train` run, copied by each test that needs one to lose."""
    run_dir = tmp_path_factory.mktemp("finished") / "run"
    assert cli.main(["train", "--steps", "4", "--run-dir", str(run_dir), *SMALL]) == 0
    return run_dir


def copy_run(source: pathlib.Path, target: pathlib.Path) -> pathlib.Path:
    shutil.copytree(source, target, ignore=shutil.ignore_patterns(rundir.LOCK))
    return target


def one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    return err


@pytest.mark.parametrize(
    "argv, message",
    [(["--task", "foo"], "unknown task 'foo'"),
     (["--seq-len", "1"], "length must be at least 2"),
     (["--task", "charlm", "--corpus", "nope.txt"], "'nope.txt' does not exist"),
     (["--task", "digits", "--seq-len", "10"], "8 rows (--seq-len 8) or 64 pixels"),
     (["--batch-size", "20000"], "larger than the 10000 training examples"),
     (["--steps", "4", "--new-schedule"], "--new-schedule applies to a resumed run")],
)  # fmt: skip
@pytest.mark.parametrize("where", ["runs/latest", "--run-dir R --overwrite"])
def test_a_mistyped_command_leaves_the_previous_run_untouched(
    finished_run, tmp_path, monkeypatch, capsys, argv, message, where
):
    monkeypatch.chdir(tmp_path)
    if where == "runs/latest":  # a new run's own folder: nothing may appear beside the old
        copy_run(finished_run, tmp_path / "runs" / "adding-20260101-000000")
        (tmp_path / "runs" / "latest").symlink_to("adding-20260101-000000")
        run_dir, extra = tmp_path / "runs", []
    else:
        run_dir = copy_run(finished_run, tmp_path / "R")
        extra = ["--run-dir", str(run_dir), "--overwrite"]
    before = snapshot(run_dir)
    assert cli.main(["train", *extra, *argv]) == 2
    assert message in one_line_error(capsys)
    assert snapshot(run_dir) == before
    if where == "runs/latest":
        assert sorted(p.name for p in run_dir.iterdir()) == ["adding-20260101-000000", "latest"]


def _python(*args: str, **kwargs) -> subprocess.Popen:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen([sys.executable, *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env=env, **kwargs)  # fmt: skip


def _wait_for_line(process: subprocess.Popen, word: str, timeout: float = 120) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        line = process.stdout.readline().decode()
        if word in line:
            return
        if not line and process.poll() is not None:
            break
    process.kill()
    raise AssertionError(f"never printed {word}: {process.stderr.read().decode()[-2000:]}")


def _final_params(run_dir: pathlib.Path) -> list[np.ndarray]:
    with np.load(run_dir / "final.npz") as f:
        return [f[name] for name in sorted(f.files, key=int)]


def test_an_overwrite_killed_before_its_first_checkpoint_restores_the_old_run(
    finished_run, tmp_path, capsys
):
    run_dir = copy_run(finished_run, tmp_path / "run")
    before = snapshot(run_dir)
    victim = _python(str(SCRIPT), str(run_dir), "20", "hang-before-checkpoint")
    _wait_for_line(victim, "STARTED")
    assert (run_dir / rundir.REPLACED).is_dir()  # moved aside, not deleted
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    # the next command on the folder finds the half-done replacement and undoes it
    with pytest.warns(UserWarning, match="previous run was restored"):
        code = cli.main(["train", "--run-dir", str(run_dir), "--task", "foo"])
    assert code == 2 and "unknown task" in one_line_error(capsys)
    assert snapshot(run_dir) == before and not (run_dir / rundir.REPLACED).exists()


def test_an_overwrite_that_fails_before_its_first_checkpoint_puts_the_old_run_back(
    finished_run, tmp_path
):
    run_dir = copy_run(finished_run, tmp_path / "run")
    before = snapshot(run_dir)

    def broken(step):
        raise RuntimeError("the data source failed")

    with pytest.raises(RuntimeError, match="data source failed"):
        train.fit(lambda p, b, k: p, lambda p, b: p, np.zeros(()), train.optimizer(), broken,
                  steps=5, run_dir=run_dir, overwrite=True, log=lambda line: None)  # fmt: skip
    assert snapshot(run_dir) == before


def test_sigkill_at_random_moments_and_mid_checkpoint_loses_nothing(tmp_path):
    steps = 400
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    reference = _python(str(SCRIPT), str(straight), str(steps), "new")
    # killed while writing its second checkpoint: the temporary file is complete, not renamed
    victim = _python(str(SCRIPT), str(killed), str(steps), "hang-in-save")
    _wait_for_line(victim, "WRITING")
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    names = sorted(p.name for p in (killed / "checkpoints").iterdir())
    assert len(names) == 2 and names[0].endswith(".partial"), names
    assert names[1] == "ckpt_000000010.msgpack", names
    state = train.TrainState.create({"w": np.zeros(3, np.float32), "b": np.zeros((), np.float32)},
                                    train.optimizer(learning_rate=1e-2))  # fmt: skip
    assert checkpoint.latest(killed / "checkpoints", state)[1] == 10
    # then killed at random moments of resumed runs, and resumed after each
    rng = np.random.default_rng(7)
    kills = 0
    for delay in rng.uniform(1.0, 4.0, size=3):
        victim = _python(str(SCRIPT), str(killed), str(steps), "resume")
        time.sleep(delay)
        if victim.poll() is None:
            victim.send_signal(signal.SIGKILL)
            kills += 1
        victim.wait()
    assert kills >= 1
    last = _python(str(SCRIPT), str(killed), str(steps), "resume")
    assert last.wait(timeout=300) == 0, last.stderr.read().decode()
    assert reference.wait(timeout=300) == 0, reference.stderr.read().decode()
    for a, b in zip(_final_params(straight), _final_params(killed), strict=True):
        np.testing.assert_array_equal(a, b)  # bit for bit, as if never interrupted
    logged = [json.loads(x)["step"] for x in (killed / "steps.jsonl").read_text().splitlines()]
    assert logged == list(range(1, steps + 1))


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_writes_a_final_checkpoint_and_a_second_run_is_refused(tmp_path, capsys, signum):
    run_dir = tmp_path / "run"
    argv = ["-m", "seqjax", "train", "--steps", "30000", "--run-dir", str(run_dir), *SMALL]
    victim = _python(*argv)
    checkpoints = run_dir / "checkpoints"
    deadline = time.time() + 120
    while not (checkpoints.is_dir() and any(checkpoints.glob("ckpt_*"))):
        assert time.time() < deadline and victim.poll() is None, victim.stderr.read().decode()
        time.sleep(0.05)
    # a second run on the same folder, while the first holds it
    for extra in (["--resume"], ["--overwrite"]):
        assert cli.main(["train", "--run-dir", str(run_dir), *extra, *SMALL]) == 2
        assert "is in use by another run (process" in one_line_error(capsys)
    victim.send_signal(signum)
    assert victim.wait(timeout=60) == 128 + signum
    err = victim.stderr.read().decode().strip().splitlines()
    name = signal.Signals(signum).name
    assert f"stopped by {name} at step" in err[-1] and "--resume" in err[-1], err
    step = int(err[-1].split(" at step ")[1].split(";")[0])
    newest = sorted(checkpoints.glob("ckpt_*.msgpack"))[-1]
    assert newest.name == f"ckpt_{step:09d}.msgpack"  # the step it stopped at, checkpointed
    assert cli.main(["train", "--run-dir", str(run_dir), "--resume", "--steps",
                     str(step + 2), *SMALL]) == 0  # fmt: skip
    steps = [json.loads(x)["step"] for x in (run_dir / "steps.jsonl").read_text().splitlines()]
    assert steps == list(range(1, step + 3))


@contextlib.contextmanager
def tmpfs(path: pathlib.Path, size: str):
    path.mkdir()
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}",
                                            "tmpfs", str(path)]).returncode:  # fmt: skip
        pytest.skip("mounting a tmpfs needs root")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def test_a_full_disk_ends_with_one_line_and_the_run_resumes(tmp_path, capsys):
    with tmpfs(tmp_path / "disk", "128k") as disk:
        run_dir = disk / "run"
        argv = ["train", "--run-dir", str(run_dir), *SMALL]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            assert cli.main([*argv, "--steps", "5000"]) == 1
        err = one_line_error(capsys)
        assert "No space left on device" in err and "--resume" in err, err
        assert not list((run_dir / "checkpoints").glob("*.partial"))  # no torn file left
        good = sorted((run_dir / "checkpoints").glob("ckpt_*.msgpack"))
        assert good, "the run wrote no checkpoint before the disk filled"
        step, _ = checkpoint.read_metadata(good[-1])  # verified: whole and unaltered
        subprocess.run(["mount", "-o", "remount,size=64m", str(disk)], check=True)
        with warnings.catch_warnings():  # the log line cut short by the full disk is dropped
            warnings.simplefilter("ignore")
            assert cli.main([*argv, "--steps", str(step + 3), "--resume"]) == 0
        logged = [json.loads(x)["step"] for x in (run_dir / "steps.jsonl").read_text()
                  .splitlines()]  # fmt: skip
        assert logged == list(range(1, step + 4))


def test_a_read_only_run_dir_is_refused_before_anything_changes(finished_run, tmp_path, capsys):
    with tmpfs(tmp_path / "ro", "4m") as mount:
        run_dir = copy_run(finished_run, mount / "run")
        subprocess.run(["mount", "-o", "remount,ro", str(mount)], check=True)
        before = snapshot(run_dir)
        for extra in (["--overwrite"], ["--resume", "--steps", "8"]):
            assert cli.main(["train", "--run-dir", str(run_dir), *extra, *SMALL]) == 2
            err = one_line_error(capsys)
            assert "is not writable (read-only file system" in err, err
        assert cli.main(["train", "--run-dir", str(mount / "new"), *SMALL]) == 2
        assert "is not writable" in one_line_error(capsys)
        assert snapshot(run_dir) == before


class Payload:
    """Unpickling this creates a file: proof that something was unpickled."""

    def __init__(self, marker: pathlib.Path):
        self.marker = marker

    def __reduce__(self):
        return (pathlib.Path.touch, (self.marker,))


def _pickle_with_a_valid_header(state, marker: pathlib.Path) -> bytes:
    """A file that passes every header and checksum check but whose payload is a pickle."""
    good = checkpoint.save(marker.parent / "scratch", state, step=1).read_bytes()
    header, _ = checkpoint._split(good, "scratch")
    payload = pickle.dumps(Payload(marker))
    fields = {**{k: header[k] for k in checkpoint._HEADER_FIELDS},
              "sha256": __import__("hashlib").sha256(payload).hexdigest(),
              "payload_bytes": len(payload)}  # fmt: skip
    text = json.dumps({**fields, "header_sha256": checkpoint._header_digest(fields)}).encode()
    return checkpoint.MAGIC + len(text).to_bytes(4, "little") + text + payload


def test_corrupt_and_pickle_bearing_checkpoints_are_refused_and_never_unpickled(
    finished_run, tmp_path, capsys
):
    run_dir = copy_run(finished_run, tmp_path / "run")
    checkpoints = run_dir / "checkpoints"
    marker = tmp_path / "UNPICKLED"
    state = train.TrainState.create({"w": np.zeros(2, np.float32)}, train.optimizer())
    (checkpoints / "ckpt_000000007.msgpack").write_bytes(pickle.dumps(Payload(marker)))
    (checkpoints / "ckpt_000000008.msgpack").write_bytes(_pickle_with_a_valid_header(state, marker))
    (checkpoints / "ckpt_000000009.msgpack").write_bytes(b"\x00" * 64)
    with pytest.warns(UserWarning) as caught:
        code = cli.main(["train", "--run-dir", str(run_dir), "--resume", "--steps", "6", *SMALL])
    assert code == 0 and not marker.exists()
    skipped = sorted(str(w.message) for w in caught if "skipping" in str(w.message))
    assert len(skipped) == 3, skipped
    assert "not msgpack" in skipped[1] and "bad magic" in skipped[0] and "magic" in skipped[2]
    # only hostile files left: refused in one line, nothing unpickled
    for path in checkpoints.glob("ckpt_00000000[0-6].msgpack"):
        path.write_bytes(pickle.dumps(Payload(marker)))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert cli.main(["train", "--run-dir", str(run_dir), "--resume", *SMALL]) == 2
    assert "no usable checkpoint" in one_line_error(capsys) and not marker.exists()


def test_a_structure_mismatch_is_said_once_and_not_called_corruption(finished_run):
    checkpoints = finished_run / "checkpoints"
    bare_params = {"w": np.zeros(3, np.float32)}
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "skipping" warning for any of the good files
        with pytest.raises(checkpoint.CheckpointMismatchError) as raised:
            checkpoint.latest(checkpoints, bare_params)
    message = str(raised.value)
    assert "does not match this state" in message and "expected keys ['w']" in message
    assert "found ['opt_state', 'params', 'step']" in message and "TrainState.create" in message
    assert "corrupt" not in message and "no usable" not in message


def _params_at(run_dir: pathlib.Path, step: int) -> list[np.ndarray]:
    """The params stored at ``step``, read by the file layout (magic, header length, header,
    msgpack payload) rather than through the loader under test."""
    data = (run_dir / "checkpoints" / f"ckpt_{step:09d}.msgpack").read_bytes()
    start = len(checkpoint.MAGIC) + 4
    payload = data[start + int.from_bytes(data[start - 4 : start], "little") :]
    stored = flax.serialization.msgpack_restore(payload)
    return [np.asarray(x) for x in jax.tree.leaves(stored["params"])]


def test_a_resumed_run_keeps_its_schedule_unless_asked(tmp_path, capsys):
    argv = [*SMALL, "--lr", "0.01"]
    kept, renewed = tmp_path / "kept", tmp_path / "renewed"
    for run_dir in (kept, renewed):
        assert cli.main(["train", "--steps", "20", "--run-dir", str(run_dir), *argv]) == 0
    resume = ["train", "--steps", "40", "--resume", *SMALL]
    assert cli.main([*resume, "--run-dir", str(kept)]) == 0
    assert "schedule ends at step 20" in capsys.readouterr().out
    # the run's cosine schedule reached 0 at its end (step 21): the added steps do not move
    for a, b in zip(_params_at(kept, 24), _params_at(kept, 40), strict=True):
        np.testing.assert_array_equal(a, b)
    assert cli.main([*resume, "--run-dir", str(renewed), "--new-schedule", "--lr", "0.01"]) == 0
    moved = [
        not np.array_equal(a, b)
        for a, b in zip(_params_at(renewed, 24), _params_at(renewed, 40), strict=True)
    ]
    assert any(moved)  # a new warm-up and decay from step 20
    result = json.loads((renewed / "result.json").read_text())
    assert result["schedule"] == {"kind": "warmup_cosine", "peak_lr": 0.01, "start_step": 20,
                                  "warmup_steps": 2, "end_step": 41}  # fmt: skip
    capsys.readouterr()
    code = cli.main(["train", "--steps", "50", "--resume", "--run-dir", str(kept), "--lr", "0.1",
                     *SMALL])  # fmt: skip
    assert code == 2 and "add --new-schedule" in one_line_error(capsys)


def test_throughput_leaves_out_compilation(tmp_path):
    slow_first = []

    def data(step):
        if not slow_first:
            slow_first.append(step)
            time.sleep(1.0)  # as long as a compilation
        return {"x": np.ones((4, 2), np.float32)}

    _, history = train.fit(lambda p, b, k: b["x"] @ p, lambda pred, b: (pred**2).mean(),
                           np.ones(2, np.float32), train.optimizer(), data, steps=10,
                           eval_every=5, log=lambda line: None)  # fmt: skip
    # with the first step timed, 5 steps would take over 1 s: under 5 steps/s
    assert history[0]["steps_per_s"] > 20 and history[1]["steps_per_s"] > 20
