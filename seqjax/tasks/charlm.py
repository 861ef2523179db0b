"""Character-level language modelling: read text one character at a time, predict the next one.

The shipped corpus is eight Shakespeare tragedies (1.11 million characters, 73 distinct; see
``data/SOURCES.md``); any UTF-8 text file can take its place. The corpus is cut once: the first
90% of the characters train, the last 10% validate, so validation text is never seen in training
(the split is contiguous, not shuffled, because neighbouring windows share context).

A model is fed ``inputs (N, seq_len)`` character ids and scored on ``targets``, the same windows
moved one character on. The figure to report is bits per character, the mean cross-entropy in
nats divided by ln 2 (``seqjax.train.losses.bits_per_character``). Two baselines set the bar:
``uniform_bits_per_character`` (every character equally likely, log2 of the vocabulary size) and
``unigram_bits_per_character`` (each character at its training frequency, no context at all);
a model that does not beat the unigram figure has learnt nothing about sequence.

``sample`` turns any step function into a text generator, with the loop inside ``lax.scan``.
"""

from __future__ import annotations

import functools
import gzip
import importlib.resources
import math
import os
import pathlib
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from seqjax import _checks

SHIPPED = "data/shakespeare.txt.gz"
VALID_FRACTION = 0.1

StepFn = Callable[[Any, Any, jax.Array], tuple[Any, jax.Array]]


# ---------------------------------------------------------------------------------------- corpus


def load(path: str | os.PathLike | None = None) -> str:
    """The corpus as one string: the shipped Shakespeare when ``path`` is None, else the UTF-8
    text file at ``path``. Line endings become ``\\n`` and a leading byte-order mark is dropped,
    so a file saved on Windows gives the same vocabulary as on Linux."""
    if path is None:
        packed = importlib.resources.files("seqjax.tasks").joinpath(SHIPPED).read_bytes()
        return gzip.decompress(packed).decode("utf-8")
    return _read_text_file(pathlib.Path(os.fspath(path)))


def _read_text_file(path: pathlib.Path) -> str:
    expected = "pass a plain-text (UTF-8) file"
    if not path.exists():
        raise ValueError(f"corpus '{path}' does not exist; {expected}")
    if path.is_dir():
        raise ValueError(f"corpus '{path}' is a directory; {expected}")
    try:
        raw = path.read_bytes()
    except OSError as err:
        raise ValueError(f"corpus '{path}' cannot be read ({err.strerror}); {expected}") from err
    if not raw:
        raise ValueError(f"corpus '{path}' is empty (0 bytes); {expected}")
    # UTF-16 text of ASCII characters is valid UTF-8 byte for byte, NULs included: look first.
    nul = raw.find(b"\0")
    if nul >= 0:
        raise ValueError(f"corpus '{path}' is not text (NUL byte at offset {nul}); {expected}")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        bad = raw[err.start]
        raise ValueError(
            f"corpus '{path}' is not UTF-8 text (byte 0x{bad:02x} at offset {err.start}); "
            f"{expected}"
        ) from None
    return text.removeprefix("\ufeff").replace("\r\n", "\n").replace("\r", "\n")


# ------------------------------------------------------------------------------------ vocabulary


def _code_points(text: str) -> np.ndarray:
    # One uint32 per character, without a Python loop over a million characters.
    return np.frombuffer(text.encode("utf-32-le"), dtype="<u4")


class Vocabulary(NamedTuple):
    """The characters of a text, sorted by code point; a character's id is its position."""

    chars: str

    @classmethod
    def from_text(cls, text: str) -> Vocabulary:
        if not isinstance(text, str) or not text:
            raise ValueError(f"Vocabulary.from_text: text must be a non-empty str; got {text!r}")
        return cls("".join(sorted(set(text))))

    @property
    def size(self) -> int:
        return len(self.chars)

    def encode(self, text: str) -> np.ndarray:
        """``(len(text),)`` int32 ids. A character outside the vocabulary is an error, not a
        silent substitute, so a mismatched corpus is noticed."""
        if not isinstance(text, str):
            raise TypeError(f"Vocabulary.encode: text must be a str; got {type(text).__name__}")
        known = _code_points(self.chars)
        points = _code_points(text)
        ids = np.searchsorted(known, points)
        hit = known[np.minimum(ids, len(known) - 1)] == points
        if not hit.all():
            at = int(np.argmin(hit))
            char = text[at]
            raise ValueError(
                f"Vocabulary.encode: character {char!r} (U+{ord(char):04X}) at offset {at} is "
                f"not among the {self.size} characters of the vocabulary; build the vocabulary "
                "from a text that contains it"
            )
        return ids.astype(np.int32)

    def decode(self, ids: Any) -> str:
        """The text of ``ids``, a 1-D integer array (or list) of values in ``[0, size)``."""
        ids = np.asarray(ids)
        if ids.ndim != 1 or not (ids.size == 0 or np.issubdtype(ids.dtype, np.integer)):
            raise ValueError(
                f"Vocabulary.decode: ids must be a 1-D integer array; got shape {ids.shape}, "
                f"dtype {ids.dtype}"
            )
        if ids.size and (ids.min() < 0 or ids.max() >= self.size):
            raise ValueError(
                f"Vocabulary.decode: ids must lie in [0, {self.size}); got values from "
                f"{ids.min()} to {ids.max()}"
            )
        points = _code_points(self.chars)[ids.astype(np.int64)]
        return points.astype("<u4").tobytes().decode("utf-32-le")


# ------------------------------------------------------------------------------------------ data


def windows(ids: Any, seq_len: int, stride: int | None = None) -> dict[str, np.ndarray]:
    """Cut a 1-D token stream into ``inputs (N, seq_len)`` and ``targets (N, seq_len)``, both
    int32, where ``targets[i, t] == inputs[i, t + 1]`` within the stream. Windows start every
    ``stride`` tokens (``seq_len`` by default: no character is an input twice), and
    ``N = (len(ids) - seq_len - 1) // stride + 1``; a tail too short for a window is dropped."""
    fn = "windows"
    seq_len = _checks.check_positive_int(seq_len, "seq_len", fn)
    stride = seq_len if stride is None else _checks.check_positive_int(stride, "stride", fn)
    ids = np.asarray(ids)
    if ids.ndim != 1 or not np.issubdtype(ids.dtype, np.integer):
        raise ValueError(
            f"{fn}: ids must be a 1-D integer token stream; got shape {ids.shape}, "
            f"dtype {ids.dtype}"
        )
    if len(ids) < seq_len + 1:
        raise ValueError(
            f"{fn}: seq_len={seq_len} needs a stream of at least seq_len + 1 = {seq_len + 1} "
            f"tokens (the targets run one further); got {len(ids)}"
        )
    # Each window holds its inputs and, one further, its last target.
    spans = np.lib.stride_tricks.sliding_window_view(ids, seq_len + 1)[::stride]
    return {
        "inputs": np.ascontiguousarray(spans[:, :-1], dtype=np.int32),
        "targets": np.ascontiguousarray(spans[:, 1:], dtype=np.int32),
    }


class Data(NamedTuple):
    """A corpus ready for training. ``train_ids`` and ``valid_ids`` are the 1-D int32 streams
    (validation is the tail of the corpus); ``train`` and ``valid`` are their non-overlapping
    ``windows`` (dicts of ``inputs``/``targets``, each ``(N, seq_len)`` int32)."""

    vocab: Vocabulary
    train_ids: np.ndarray
    valid_ids: np.ndarray
    train: dict[str, np.ndarray]
    valid: dict[str, np.ndarray]


def dataset(
    seq_len: int = 100,
    path: str | os.PathLike | None = None,
    valid_fraction: float = VALID_FRACTION,
) -> Data:
    """The corpus (see ``load``) as token streams and ``seq_len`` windows. The vocabulary covers
    the whole corpus, so validation text always encodes; the last ``round(valid_fraction * n)``
    of the ``n`` characters are validation."""
    fn = "charlm.dataset"
    seq_len = _checks.check_positive_int(seq_len, "seq_len", fn)
    _checks.check_number(valid_fraction, "valid_fraction", fn, lambda f: 0.0 < f < 1.0,
                         "a number in (0, 1)")  # fmt: skip
    text = load(path)
    vocab = Vocabulary.from_text(text)
    ids = vocab.encode(text)
    n_valid = round(len(ids) * float(valid_fraction))
    train_ids, valid_ids = ids[: len(ids) - n_valid], ids[len(ids) - n_valid :]
    shortest = min(len(train_ids), len(valid_ids))
    if shortest < seq_len + 1:
        where = "the default corpus" if path is None else f"'{os.fspath(path)}'"
        raise ValueError(
            f"{fn}: seq_len={seq_len} needs at least {seq_len + 1} characters in both splits; "
            f"{where} gives {len(train_ids)} train and {len(valid_ids)} validation characters "
            f"(valid_fraction={valid_fraction}); use a shorter seq_len or a longer text"
        )
    return Data(
        vocab, train_ids, valid_ids, windows(train_ids, seq_len), windows(valid_ids, seq_len)
    )


# ------------------------------------------------------------------------------------- baselines


def uniform_bits_per_character(vocab: Vocabulary) -> float:
    """Bits per character of guessing uniformly over the vocabulary: ``log2(vocab.size)``."""
    return math.log2(vocab.size)


def unigram_bits_per_character(data: Data) -> float:
    """Bits per character on ``valid_ids`` of predicting every character with its frequency in
    ``train_ids``, ignoring context. Counts get one added (Laplace smoothing) so a character
    that only occurs in validation costs finite bits instead of infinitely many."""
    counts = np.bincount(data.train_ids, minlength=data.vocab.size).astype(np.float64) + 1.0
    log2_probs = np.log2(counts / counts.sum())
    return float(-log2_probs[data.valid_ids].mean())


# -------------------------------------------------------------------------------------- sampling


@functools.partial(jax.jit, static_argnames=("step_fn", "length", "greedy", "top_k"))
def _generate(
    step_fn: StepFn,
    params: Any,
    carry: Any,
    prompt_ids: jax.Array,
    key: jax.Array,
    temperature: jax.Array,
    length: int,
    greedy: bool,
    top_k: int | None = None,
) -> jax.Array:
    def feed(carry: Any, token: jax.Array) -> tuple[Any, None]:
        carry, _ = step_fn(params, carry, token)
        return carry, None

    # The prompt's last character is fed inside the sampling loop, whose first logits it makes.
    carry, _ = jax.lax.scan(feed, carry, prompt_ids[:-1, None])

    def draw(state: tuple[Any, jax.Array], step_key: jax.Array) -> tuple[Any, jax.Array]:
        carry, token = state
        carry, logits = step_fn(params, carry, token)
        logits = logits.astype(jnp.float32)
        if greedy:
            token = jnp.argmax(logits, axis=-1)
        else:
            if top_k is not None:  # only the k likeliest characters stay drawable
                kth = jax.lax.top_k(logits, top_k)[0][..., -1:]
                logits = jnp.where(logits < kth, -jnp.inf, logits)
            token = jax.random.categorical(step_key, logits / temperature, axis=-1)
        token = token.astype(jnp.int32)
        return (carry, token), token[0]

    _, tokens = jax.lax.scan(draw, (carry, prompt_ids[-1:]), jax.random.split(key, length))
    return tokens


def _check_step_fn(step_fn: StepFn, params: Any, carry: Any, vocab: Vocabulary) -> None:
    fn = "sample"
    if not callable(step_fn):
        raise TypeError(f"{fn}: step_fn must be callable; got {type(step_fn).__name__}")
    token = jax.ShapeDtypeStruct((1,), jnp.int32)
    out = jax.eval_shape(step_fn, params, carry, token)
    if not (isinstance(out, tuple | list) and len(out) == 2):
        raise ValueError(f"{fn}: step_fn must return (carry, logits); got {out!r}")
    new_carry, logits = out
    if getattr(logits, "shape", None) != (1, vocab.size):
        raise ValueError(
            f"{fn}: step_fn must return logits of shape (1, {vocab.size}) for token ids of shape "
            f"(1,) (carry for a batch of 1, one logit per vocabulary character); "
            f"got {getattr(logits, 'shape', type(logits).__name__)}"
        )
    before, after = _layout(jax.eval_shape(lambda c: c, carry)), _layout(new_carry)
    if before != after:
        raise ValueError(
            f"{fn}: step_fn must return a carry with the structure and shapes of the one it was "
            f"given (lax.scan feeds it back); got {before[0]} with shapes {before[1]} in, "
            f"{after[0]} with shapes {after[1]} out"
        )


def _layout(tree: Any) -> tuple[Any, list[tuple[int, ...]]]:
    return jax.tree.structure(tree), [tuple(leaf.shape) for leaf in jax.tree.leaves(tree)]


def sample(
    step_fn: StepFn,
    params: Any,
    carry: Any,
    vocab: Vocabulary,
    prompt: str,
    length: int,
    key: jax.Array,
    temperature: float = 1.0,
    top_k: int | None = None,
) -> str:
    """``prompt`` followed by ``length`` generated characters.

    ``step_fn(params, carry, token_ids (1,)) -> (carry, logits (1, vocab.size))`` advances a
    model by one character; ``carry`` is its initial state for a batch of one. The prompt is fed
    first, then each character is drawn from ``softmax(logits / temperature)`` and fed back;
    ``temperature=0`` takes the arg-max instead (deterministic); ``top_k`` draws from the
    ``top_k`` likeliest characters only (renormalised; None: from all). Both loops are ``lax.scan``
    under ``jit``, compiled once per (step_fn, prompt length, length, greedy or not)."""
    fn = "sample"
    if not isinstance(vocab, Vocabulary):
        raise TypeError(f"{fn}: vocab must be a charlm.Vocabulary; got {type(vocab).__name__}")
    length = _checks.check_positive_int(length, "length", fn)
    _checks.check_number(temperature, "temperature", fn, lambda t: t >= 0,
                         "a finite number >= 0 (0 for arg-max)")  # fmt: skip
    if top_k is not None:
        top_k = _checks.check_int(top_k, "top_k", fn, low=1, high=vocab.size)
    if not isinstance(prompt, str) or not prompt:
        raise ValueError(
            f"{fn}: prompt must be a non-empty str (at least one character); got {prompt!r}"
        )
    try:
        prompt_ids = vocab.encode(prompt)
    except ValueError as err:
        raise ValueError(f"{fn}: prompt cannot be encoded: {err}") from None
    if not isinstance(key, jax.Array):
        raise TypeError(f"{fn}: key must be a JAX PRNG key, e.g. jax.random.key(0); got {key!r}")
    _check_step_fn(step_fn, params, carry, vocab)
    greedy = temperature == 0
    # A temperature of 1 stands in for 0 so the traced division stays finite; it is unused.
    scale = jnp.float32(1.0 if greedy else temperature)
    tokens = _generate(step_fn, params, carry, jnp.asarray(prompt_ids), key, scale, length, greedy,
                       top_k)  # fmt: skip
    return prompt + vocab.decode(np.asarray(tokens))
