"""Character-level language model task: the shipped corpus, windows, baselines and sampling."""

from __future__ import annotations

import math
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from seqjax.tasks import charlm


@pytest.fixture(scope="module")
def data() -> charlm.Data:
    return charlm.dataset(seq_len=100)


def test_shipped_corpus_is_the_tragedies():
    text = charlm.load()
    assert len(text) >= 1_000_000
    assert text.startswith("THE TRAGEDY OF TITUS ANDRONICUS\n")
    assert "HAMLET, PRINCE OF DENMARK" in text
    assert "To be, or not to be,--that is the question:--" in text
    assert "Out, damned spot! out, I say!" in text
    assert "gutenberg" not in text.lower()
    assert "\r" not in text and text.isascii()


def test_encode_decode_round_trip(data):
    vocab = data.vocab
    assert vocab.chars == "".join(sorted(set(vocab.chars))) and vocab.size == 73
    line = "Good night, sweet prince,\nAnd flights of angels sing thee to thy rest!"
    ids = vocab.encode(line)
    assert ids.dtype == np.int32 and ids.shape == (len(line),)
    assert vocab.decode(ids) == line
    assert vocab.decode(list(ids)) == line
    assert [vocab.chars[i] for i in ids[:4]] == list("Good")
    with pytest.raises(ValueError, match=r"'é' \(U\+00E9\) at offset 3"):
        vocab.encode("caf\u00e9")
    with pytest.raises(ValueError, match=r"\[0, 73\)"):
        vocab.decode(np.array([0, 73]))


def test_split_is_contiguous_with_a_tenth_for_validation(data):
    text = charlm.load()
    n = len(text)
    assert len(data.valid_ids) == round(0.1 * n)
    assert len(data.train_ids) + len(data.valid_ids) == n
    assert data.vocab.decode(data.train_ids[:30]) == text[:30]
    assert data.vocab.decode(data.valid_ids[-30:]) == text[-30:]
    assert data.train_ids.dtype == data.valid_ids.dtype == np.int32
    quarter = charlm.dataset(seq_len=50, valid_fraction=0.25)
    assert len(quarter.valid_ids) == round(0.25 * n)
    assert quarter.train["inputs"].shape == ((len(quarter.train_ids) - 51) // 50 + 1, 50)


def test_windows_targets_are_inputs_moved_on_by_one():
    ids = np.arange(23, dtype=np.int32)
    out = charlm.windows(ids, seq_len=5)
    assert out["inputs"].shape == out["targets"].shape == (4, 5)  # (23 - 1) // 5
    np.testing.assert_array_equal(out["inputs"][1], [5, 6, 7, 8, 9])
    np.testing.assert_array_equal(out["targets"], out["inputs"] + 1)
    overlapping = charlm.windows(ids, seq_len=5, stride=2)
    assert overlapping["inputs"].shape == (9, 5)  # starts 0, 2, ..., 16
    np.testing.assert_array_equal(overlapping["inputs"][:, 0], np.arange(0, 17, 2))
    np.testing.assert_array_equal(overlapping["targets"][:, :-1], overlapping["inputs"][:, 1:])
    assert charlm.windows(ids, seq_len=22)["inputs"].shape == (1, 22)
    with pytest.raises(ValueError, match=r"seq_len=23 needs .* = 24 tokens .*; got 23"):
        charlm.windows(ids, seq_len=23)
    for bad in (0, -1, 2.5, True):
        with pytest.raises(ValueError, match="seq_len must be a positive integer"):
            charlm.windows(ids, seq_len=bad)
    with pytest.raises(ValueError, match="stride"):
        charlm.windows(ids, seq_len=3, stride=0)


def test_dataset_windows_cover_the_stream(data):
    train = data.train
    assert train["inputs"].shape == ((len(data.train_ids) - 1) // 100, 100)
    np.testing.assert_array_equal(train["inputs"][3], data.train_ids[300:400])
    np.testing.assert_array_equal(train["targets"][3], data.train_ids[301:401])
    assert data.valid["inputs"].shape == ((len(data.valid_ids) - 1) // 100, 100)
    with pytest.raises(ValueError, match="seq_len"):
        charlm.dataset(seq_len=0)
    with pytest.raises(ValueError, match="valid_fraction"):
        charlm.dataset(valid_fraction=1.0)


def test_unigram_baseline_against_numpy(data):
    counts = np.zeros(data.vocab.size)
    for char, count in zip(*np.unique(data.train_ids, return_counts=True), strict=True):
        counts[char] = count
    probs = (counts + 1) / (counts.sum() + data.vocab.size)
    expected = -np.mean(np.log(probs[data.valid_ids])) / math.log(2)
    unigram = charlm.unigram_bits_per_character(data)
    assert unigram == pytest.approx(expected, rel=1e-12)
    assert charlm.uniform_bits_per_character(data.vocab) == pytest.approx(math.log2(73))
    assert 4.0 < unigram < charlm.uniform_bits_per_character(data.vocab)


def test_own_text_file(tmp_path):
    path = tmp_path / "tiny.txt"
    path.write_bytes(b"\xef\xbb\xbf" + b"ab\r\nba\r\n" * 30)
    assert charlm.load(path) == "ab\nba\n" * 30
    small = charlm.dataset(seq_len=10, path=str(path))
    assert small.vocab.chars == "\nab"
    with pytest.raises(ValueError, match=f"seq_len=100 .*'{re.escape(str(path))}'"):
        charlm.dataset(seq_len=100, path=path)


@pytest.mark.parametrize(
    ("name", "content", "why"),
    [
        ("image.bin", b"\x89PNG\r\n\x1a\n", r"not UTF-8 text \(byte 0x89 at offset 0\)"),
        ("utf16.txt", "hello".encode("utf-16-le"), r"not text \(NUL byte at offset 1\)"),
        ("empty.txt", b"", "is empty"),
        ("missing.txt", None, "does not exist"),
    ],
)
def test_unusable_files_are_refused_by_path(tmp_path, name, content, why):
    path = tmp_path / name
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(ValueError, match=why) as err:
        charlm.load(path)
    message = str(err.value)
    assert str(path) in message and "plain-text" in message and "\n" not in message


def test_a_directory_is_refused(tmp_path):
    with pytest.raises(ValueError, match="is a directory") as err:
        charlm.dataset(path=tmp_path)
    assert str(tmp_path) in str(err.value)


# A bigram "model": the logits are a row of a fixed table, chosen by the last character.
VOCAB = charlm.Vocabulary.from_text("abcd")
NEXT = {"a": "c", "b": "a", "c": "d", "d": "b"}
TABLE = jnp.asarray(
    [[3.0 if VOCAB.chars[j] == NEXT[c] else 0.0 for j in range(4)] for c in VOCAB.chars]
)


def bigram_step(params, carry, token_ids):
    return carry, params[token_ids]


def counting_step(params, carry, token_ids):
    # The logits ignore the token and pick character (number of tokens seen so far) mod 4,
    # so the output shows that every prompt character went through the carry.
    del params, token_ids
    carry = carry + 1
    return carry, jax.nn.one_hot(carry % 4, 4)[None] * 10.0


def test_greedy_sampling_follows_the_bigram_chain():
    text = charlm.sample(bigram_step, TABLE, None, VOCAB, "b", 8, jax.random.key(0), 0.0)
    assert text == "bacdbacdb"  # b -> a -> c -> d -> b ...
    again = charlm.sample(bigram_step, TABLE, None, VOCAB, "dd", 3, jax.random.key(9), 0)
    assert again == "ddbac"  # only the last prompt character matters to a bigram
    for prompt in ("a", "abc", "abcdabc"):
        out = charlm.sample(
            counting_step, None, jnp.int32(0), VOCAB, prompt, 4, jax.random.key(0), 0
        )
        counts = range(len(prompt), len(prompt) + 4)
        assert out == prompt + "".join(VOCAB.chars[k % 4] for k in counts)


def test_random_sampling_is_reproducible_and_follows_the_temperature():
    flat = jnp.zeros((4, 4))
    key = jax.random.key(3)
    first = charlm.sample(bigram_step, flat, None, VOCAB, "a", 200, key, 1.0)
    assert first == charlm.sample(bigram_step, flat, None, VOCAB, "a", 200, key, 1.0)
    other = charlm.sample(bigram_step, flat, None, VOCAB, "a", 200, jax.random.key(4), 1.0)
    assert other != first and set(first + other) <= set("abcd")
    assert len(first) == 201 and first[0] == "a"
    # logits (0, log 3) for every state: p(d) = 3/4 at temperature 1, 3^(1/2)/(1 + 3^(1/2)) at 2
    two = jnp.tile(jnp.asarray([-1e9, -1e9, 0.0, math.log(3)]), (4, 1))
    for temperature, p_d in ((1.0, 0.75), (2.0, math.sqrt(3) / (1 + math.sqrt(3)))):
        out = charlm.sample(bigram_step, two, None, VOCAB, "a", 4000, key, temperature)[1:]
        assert set(out) == {"c", "d"}
        assert abs(out.count("d") / 4000 - p_d) < 0.03  # 4 standard errors


def test_sampling_arguments_are_checked():
    key = jax.random.key(0)

    def call(**kw):
        args = dict(prompt="a", length=5, temperature=1.0) | kw
        return charlm.sample(bigram_step, TABLE, None, VOCAB, key=key, **args)

    for bad in (-0.5, float("nan"), float("inf"), "hot"):
        with pytest.raises(ValueError, match="temperature must be a finite number >= 0"):
            call(temperature=bad)
    for bad in (0, -3, 1.5):
        with pytest.raises(ValueError, match="length must be a positive integer"):
            call(length=bad)
    with pytest.raises(ValueError, match="prompt must be a non-empty str"):
        call(prompt="")
    with pytest.raises(ValueError, match=r"prompt cannot be encoded.*'z'"):
        call(prompt="abz")
    wide = jnp.zeros((4, 5))
    with pytest.raises(ValueError, match=r"logits of shape \(1, 4\)"):
        charlm.sample(bigram_step, wide, None, VOCAB, "a", 3, key)
    with pytest.raises(ValueError, match="carry with the structure and shapes"):
        charlm.sample(lambda p, c, t: (jnp.zeros(3), p[t]), TABLE, jnp.zeros(2), VOCAB, "a", 3, key)
