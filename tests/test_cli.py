"""The ``seqjax`` command: a short training run, resume, and one-line errors."""

from __future__ import annotations

import json

import jax
import pytest

from seqjax import cli

SMALL = ["--hidden", "8", "--seq-len", "10", "--batch-size", "16"]
SEQ_LEN = {"mnist1d": "40", "digits": "8"}


@pytest.mark.parametrize(
    "task, cell", [("adding", "irnn"), ("copy", "gru"), ("sunspots", "lstm"),
                   ("charlm", "lstm"), ("mnist1d", "gru"), ("digits", "rnn"),
                   ("charlm", "min_lstm"), ("copy", "lru")],
)  # fmt: skip
def test_train_writes_result_and_verdict(tmp_path, capsys, task, cell):
    run_dir = tmp_path / "run"
    small = [*SMALL[:2], "--seq-len", SEQ_LEN.get(task, "10"), *SMALL[4:]]
    argv = ["train", "--task", task, "--cell", cell, "--steps", "20", "--run-dir", str(run_dir)]
    assert cli.main([*argv, *small]) == 0
    result = json.loads((run_dir / "result.json").read_text())
    assert result["verdict"] and result["baseline"] > 0 and result["steps"] == 20
    last_line = capsys.readouterr().out.strip().splitlines()[-1]
    assert last_line.endswith(result["verdict"]) and "baseline" in last_line
    assert len((run_dir / "metrics.jsonl").read_text().splitlines()) == 10
    assert (run_dir / "curve.png").stat().st_size > 1000
    if task == "charlm":  # a sample of the advertised length, in the corpus's alphabet
        assert len(result["sample"]) == len("ROMEO:") + 400


def test_charlm_trains_on_the_users_corpus(tmp_path, capsys):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("the cat sat on the mat. " * 200)
    run_dir = tmp_path / "run"
    argv = ["train", "--task", "charlm", "--corpus", str(corpus), "--run-dir", str(run_dir)]
    assert cli.main([*argv, "--steps", "30", "--lr", "0.02", *SMALL]) == 0
    result = json.loads((run_dir / "result.json").read_text())
    assert str(corpus) in result["task"] and set(result["sample"]) <= set("the cat sat on mat.")
    assert result["value"] < result["baseline"]  # a 9-character language beats its unigram model


def test_resume_continues_from_the_checkpoint(tmp_path):
    run_dir = str(tmp_path / "run")
    assert cli.main(["train", "--steps", "20", "--run-dir", run_dir, *SMALL]) == 0
    assert cli.main(["train", "--steps", "40", "--run-dir", run_dir, "--resume", *SMALL]) == 0
    steps = [json.loads(x)["step"] for x in (tmp_path / "run" / "metrics.jsonl").read_text()
             .splitlines()]  # fmt: skip
    assert steps[-1] == 40 and steps == sorted(set(steps))


def test_bfloat16_run_keeps_float32_weights_and_resumes_in_float32(tmp_path, capsys):
    """--dtype bfloat16 trains under the mixed policy: the checkpoints hold float32 master
    weights, so the run resumes in float32 (or bfloat16) from them."""
    from seqjax import train

    run_dir = str(tmp_path / "run")
    assert cli.main(["train", "--steps", "20", "--run-dir", run_dir, "--dtype", "bfloat16",
                     *SMALL]) == 0  # fmt: skip
    assert ", bfloat16, run dir" in capsys.readouterr().out
    run = train.load_run(run_dir)
    assert run.config["dtype"] == "bfloat16"
    assert {str(leaf.dtype) for leaf in jax.tree.leaves(run.params)} == {"float32"}
    assert cli.main(["train", "--steps", "30", "--run-dir", run_dir, "--resume", *SMALL]) == 0
    assert train.load_run(run_dir).step == 30


def test_resume_skips_a_damaged_newer_checkpoint_with_one_warning(tmp_path):
    run_dir = tmp_path / "run"
    assert cli.main(["train", "--steps", "20", "--run-dir", str(run_dir), *SMALL]) == 0
    (run_dir / "checkpoints" / "ckpt_000000030.msgpack").write_bytes(b"torn write")
    with pytest.warns(UserWarning) as caught:
        code = cli.main(["train", "--steps", "40", "--run-dir", str(run_dir), "--resume", *SMALL])
    assert code == 0
    skipped = [str(w.message) for w in caught if "skipping" in str(w.message)]
    assert len(skipped) == 1 and "ckpt_000000030.msgpack" in skipped[0], skipped


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--task", "nope"], "unknown task 'nope'"),
        (["--hidden", "0"], "--hidden must be a positive integer"),
        (["--steps", "-5"], "--steps must be a positive integer"),
        (["--lr", "-1"], "--lr must be a positive number; got -1.0"),
        (["--lr", "nan"], "--lr must be a positive number; got nan"),
        (["--lr", "inf"], "--lr must be a positive number; got inf"),
        (["--clip-norm", "nan"], "--clip-norm must be a positive number"),
        (["--max-minutes", "0"], "--max-minutes must be a positive number"),
        (["--resume", "--overwrite"], "pass one of them"),
        (["--resume"], "nothing to resume"),
        (["--cell", "lsmt"], "invalid choice: 'lsmt'"),
        (["--seq-len", "0"], "--seq-len must be a positive integer"),
        (["--batch-size", "20000"], "larger than the 10000 training examples"),
        (["--task", "digits", "--seq-len", "9"], "8 rows (--seq-len 8) or 64 pixels"),
        (["--dropout", "1.5"], "--dropout must be in [0, 1)"),
        (["--corpus", "x.txt"], "a corpus applies to the charlm task only"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(tmp_path, capsys, argv, message):
    code = cli.main(["train", "--run-dir", str(tmp_path / "fresh"), *argv])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert message in err and len(err.splitlines()) == 1


@pytest.mark.parametrize(
    "content, message",
    [(b"\x89PNG\r\n\x1a\n\x00\x00", "NUL byte"), (b"caf\xe9 \xff", "not UTF-8"), (b"", "empty")],
)
def test_a_corpus_that_is_not_text_is_refused(tmp_path, capsys, content, message):
    corpus = tmp_path / "corpus.bin"
    corpus.write_bytes(content)
    code = cli.main(["train", "--task", "charlm", "--corpus", str(corpus),
                     "--run-dir", str(tmp_path / "run")])  # fmt: skip
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1
    assert message in err and str(corpus) in err


def test_a_run_dir_holding_a_run_is_continued_replaced_or_refused(tmp_path, capsys):
    run_dir = str(tmp_path / "run")
    assert cli.main(["train", "--steps", "20", "--run-dir", run_dir, *SMALL]) == 0
    capsys.readouterr()

    def refused(*argv):
        code = cli.main(["train", "--run-dir", run_dir, *argv])
        err = capsys.readouterr().err.strip()
        assert code == 2 and len(err.splitlines()) == 1, err
        return err

    assert "holds another run" in refused("--steps", "10", *SMALL)
    err = refused("--steps", "40", "--resume", *SMALL[:-2], "--batch-size", "8")
    assert "--batch-size 8 (the run has 16)" in err
    # --overwrite starts over: only the new run's checkpoints (of 10 steps) remain
    assert cli.main(["train", "--steps", "10", "--run-dir", run_dir, "--overwrite", *SMALL]) == 0
    names = sorted(p.name for p in (tmp_path / "run" / "checkpoints").iterdir())
    assert names[-1] == "ckpt_000000010.msgpack" and len(names) == 10
    metrics = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["step"] for line in metrics][-1] == 10 and len(metrics) == 10

    # every checkpoint damaged: one line that names each, exit 2, not a traceback
    for path in (tmp_path / "run" / "checkpoints").iterdir():
        path.write_bytes(path.read_bytes()[:100])
    capsys.readouterr()
    err = refused("--steps", "20", "--resume", *SMALL)
    assert "no usable checkpoint" in err and "ckpt_000000010.msgpack" in err, err


def test_run_dir_that_is_a_file(tmp_path, capsys):
    afile = tmp_path / "afile"
    afile.write_text("")
    assert cli.main(["train", "--run-dir", str(afile)]) == 2
    assert "is a file" in capsys.readouterr().err


def test_diagnose_cells_at_init_and_a_run_per_checkpoint(tmp_path, capsys):
    out = tmp_path / "flow.png"
    argv = ["diagnose", "--cell", "rnn", "lstm", "--seq-len", "12", "--hidden", "8",
            "--batch-size", "4", "--recurrent-scale", "0.9", "--out", str(out)]  # fmt: skip
    assert cli.main(argv) == 0
    rows = [line.split() for line in capsys.readouterr().out.splitlines() if line[:3] == "  r"]
    assert [r[0] for r in rows] == ["rnn"] and out.read_bytes()[:4] == b"\x89PNG"
    rate = float(rows[0][-1])
    assert 0.0 < rate < 0.9 + 1e-3  # tanh' <= 1 and radius 0.9: at most 0.9 per step back
    run_dir = tmp_path / "run"
    assert cli.main(["train", "--steps", "20", "--run-dir", str(run_dir), *SMALL]) == 0
    capsys.readouterr()
    assert cli.main(["diagnose", "--run-dir", str(run_dir), "--out", str(out)]) == 0
    steps = [line.split()[1] for line in capsys.readouterr().out.splitlines()
             if line.startswith("  step")]  # fmt: skip
    assert steps == [str(s) for s in range(2, 21, 2)]  # every checkpoint of the run


@pytest.mark.parametrize(
    "argv, message",
    [(["--recurrent-scale", "-1"], "--recurrent-scale must be positive"),
     (["--run-dir", "nowhere"], "has no checkpoints"),
     (["--cell", "lsmt"], "invalid choice: 'lsmt'")],
)  # fmt: skip
def test_diagnose_bad_input(capsys, argv, message):
    assert cli.main(["diagnose", *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1
