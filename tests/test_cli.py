"""The ``seqjax`` command: a short training run, resume, and one-line errors."""

from __future__ import annotations

import json

import pytest

from seqjax import cli

SMALL = ["--hidden", "8", "--seq-len", "10", "--batch-size", "16"]


@pytest.mark.parametrize("task", ["adding", "copy", "sunspots"])
def test_train_writes_result_and_verdict(tmp_path, capsys, task):
    run_dir = tmp_path / "run"
    code = cli.main(["train", "--task", task, "--steps", "20", "--run-dir", str(run_dir), *SMALL])
    assert code == 0
    result = json.loads((run_dir / "result.json").read_text())
    assert result["verdict"] and result["baseline"] > 0 and result["steps"] == 20
    last_line = capsys.readouterr().out.strip().splitlines()[-1]
    assert last_line.endswith(result["verdict"]) and "baseline" in last_line
    assert len((run_dir / "metrics.jsonl").read_text().splitlines()) == 10


def test_resume_continues_from_the_checkpoint(tmp_path):
    run_dir = str(tmp_path / "run")
    assert cli.main(["train", "--steps", "20", "--run-dir", run_dir, *SMALL]) == 0
    assert cli.main(["train", "--steps", "40", "--run-dir", run_dir, "--resume", *SMALL]) == 0
    steps = [json.loads(x)["step"] for x in (tmp_path / "run" / "metrics.jsonl").read_text()
             .splitlines()]  # fmt: skip
    assert steps[-1] == 40 and steps == sorted(set(steps))


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--task", "nope"], "unknown task 'nope'"),
        (["--hidden", "0"], "--hidden must be a positive integer"),
        (["--steps", "-5"], "--steps must be a positive integer"),
        (["--lr", "-1"], "--lr and --clip-norm must be positive"),
        (["--resume"], "nothing to resume"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(tmp_path, capsys, argv, message):
    code = cli.main(["train", "--run-dir", str(tmp_path / "fresh"), *argv])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert message in err and len(err.splitlines()) == 1


def test_run_dir_that_is_a_file(tmp_path, capsys):
    afile = tmp_path / "afile"
    afile.write_text("")
    assert cli.main(["train", "--run-dir", str(afile)]) == 2
    assert "is a file" in capsys.readouterr().err
