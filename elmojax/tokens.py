"""Tokens as integers for the host pipeline: vocabulary ids, out-of-vocabulary ids, character rows.

The training streams work on int arrays, not strings: a token is its vocabulary id, or, when it
is not in the vocabulary, an id ``>= len(vocab)`` in an :class:`OovTable`, because the character
CNN must see an unknown token's real characters even though its *target* id is ``<UNK>``. The
character rows of all vocabulary words are computed once (:class:`VocabChars`), those of unknown
tokens when they are first met, so a batch's character inputs are a gather, and its
distinct-token table a ``np.unique`` over ints (:func:`distinct_char_rows`).
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Sequence

import numpy as np

from elmojax.options import BOS_CHAR, BOW_CHAR, EOS_CHAR, EOW_CHAR, PAD_CHAR
from elmojax.vocab import BOS, EOS, Vocabulary

#: character rows are stored as uint16 (ids go up to 262): half the memory of int32, and their
#: big-endian bytes sort as the rows do
CHAR_DTYPE = np.dtype(">u2")


def char_rows(tokens: Sequence[str], max_characters_per_token: int) -> np.ndarray:
    """Shifted character ids ``[len(tokens), max_chars]`` of many tokens at once.

    Equal, row by row, to :func:`elmojax.vocab.token_char_ids`, built from one concatenation of
    the tokens' UTF-8 bytes instead of one array per token.
    """
    n, width = len(tokens), max_characters_per_token
    out = np.full((n, width), PAD_CHAR + 1, CHAR_DTYPE)
    if n == 0:
        return out
    out[:, 0] = BOW_CHAR + 1
    raws = [t.encode("utf-8", "ignore")[: width - 2] for t in tokens]
    lengths = np.fromiter((len(r) for r in raws), np.int64, n)
    data = np.frombuffer(b"".join(raws), np.uint8).astype(CHAR_DTYPE) + 1
    rows = np.repeat(np.arange(n), lengths)
    cols = np.arange(len(data)) - np.repeat(np.cumsum(lengths) - lengths, lengths) + 1
    out[rows, cols] = data
    out[np.arange(n), lengths + 1] = EOW_CHAR + 1
    for marker, char in ((BOS, BOS_CHAR), (EOS, EOS_CHAR)):  # the sentence markers are special words
        for k in (i for i, t in enumerate(tokens) if t == marker):
            out[k, 1:] = PAD_CHAR + 1
            out[k, 1], out[k, 2] = char + 1, EOW_CHAR + 1
    return out


class VocabChars:
    """The character rows ``[V, max_chars]`` of every vocabulary word, computed once and shared."""

    def __init__(self, vocab: Vocabulary, max_characters_per_token: int):
        self.vocab = vocab
        self.max_characters_per_token = max_characters_per_token
        self.rows = char_rows(vocab.tokens, max_characters_per_token)


_VOCAB_CHARS: weakref.WeakKeyDictionary[Vocabulary, dict[int, VocabChars]] = weakref.WeakKeyDictionary()
_VOCAB_CHARS_LOCK = threading.Lock()


def vocab_chars(vocab: Vocabulary, max_characters_per_token: int) -> VocabChars:
    """The :class:`VocabChars` of ``vocab``, computed on first use (a 1B Word Benchmark vocabulary
    takes about a second) and kept as long as the vocabulary lives."""
    with _VOCAB_CHARS_LOCK:
        per_width = _VOCAB_CHARS.setdefault(vocab, {})
        if max_characters_per_token not in per_width:
            per_width[max_characters_per_token] = VocabChars(vocab, max_characters_per_token)
        return per_width[max_characters_per_token]


class OovTable:
    """Ids ``>= len(vocab)`` for tokens outside the vocabulary, with their character rows.

    Append-only, so an array of ids stays valid against the table it was encoded with; a stream
    starts a new table with each shard (bounding memory) and re-encodes what it still holds.
    """

    def __init__(self, vocab: Vocabulary, chars: VocabChars | None):
        self.vocab, self.vocab_chars = vocab, chars
        self.n_vocab = len(vocab)
        self.tokens: list[str] = []
        self._ids: dict[str, int] = {}
        width = chars.max_characters_per_token if chars is not None else 0
        self._rows = np.zeros((0, width), CHAR_DTYPE)

    def encode(self, tokens: Sequence[str]) -> np.ndarray:
        """int32 ids of ``tokens``: vocabulary ids, unknown tokens added to this table."""
        ids = self.vocab.lookup(tokens)
        missing = np.flatnonzero(ids < 0)
        if len(missing):
            ids[missing] = self.add([tokens[k] for k in missing])
        return ids

    def add(self, tokens: Sequence[str]) -> np.ndarray:
        """The ids of unknown ``tokens`` (added if new)."""
        new = [t for t in dict.fromkeys(tokens) if t not in self._ids]
        for t in new:
            self._ids[t] = self.n_vocab + len(self.tokens)
            self.tokens.append(t)
        if new and self.vocab_chars is not None:
            more = char_rows(new, self.vocab_chars.max_characters_per_token)
            self._rows = np.concatenate([self._rows, more]).astype(CHAR_DTYPE, copy=False)
        return np.array([self._ids[t] for t in tokens], np.int32)

    def token(self, i: int) -> str:
        """The token of id ``i`` (vocabulary or unknown)."""
        return self.vocab.tokens[i] if i < self.n_vocab else self.tokens[i - self.n_vocab]

    def word_ids(self, ids: np.ndarray) -> np.ndarray:
        """Vocabulary ids: unknown tokens become ``<UNK>`` (as ``Vocabulary.word_to_id``)."""
        return np.where(ids >= self.n_vocab, self.vocab.unk, ids).astype(np.int32)

    def rows(self, ids: np.ndarray) -> np.ndarray:
        """Character rows ``[..., max_chars]`` (uint16, big-endian) of ids; ``-1`` (padding) is all zeros."""
        assert self.vocab_chars is not None
        flat = ids.reshape(-1)
        out = np.zeros((len(flat), self._rows.shape[1]), CHAR_DTYPE)
        known = (flat >= 0) & (flat < self.n_vocab)
        out[known] = self.vocab_chars.rows[flat[known]]
        unknown = flat >= self.n_vocab
        out[unknown] = self._rows[flat[unknown] - self.n_vocab]
        return out.reshape(*ids.shape, -1)


def sorted_distinct_rows(rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``np.unique(rows, axis=0, return_inverse=True)`` for character rows, as int32, faster.

    ``rows [N, chars]`` (values below 2**16) -> ``(distinct rows [U, chars] in lexicographic
    order, where [N])``: big-endian uint16 bytes compare as the rows' values do, so the rows are
    sorted as opaque byte strings (one memcmp per comparison) instead of column by column.
    """
    be = np.ascontiguousarray(rows, dtype=CHAR_DTYPE)
    keys = be.view(np.dtype((np.void, be.shape[1] * be.itemsize))).reshape(-1)
    distinct, where = np.unique(keys, return_inverse=True)
    table = distinct.view(CHAR_DTYPE).reshape(len(distinct), -1).astype(np.int32)
    return table, where.reshape(-1).astype(np.int32)


def distinct_char_rows(
    parts: Sequence[tuple[np.ndarray, OovTable]],
) -> tuple[np.ndarray, list[np.ndarray]]:
    """The distinct character rows of several id arrays and each array's index into them.

    ``parts``: ``(ids, table)`` pairs (ids ``-1`` for padding) -> ``(table [U, chars] int32,
    [index like ids] int32)``. The table is exactly :func:`elmojax.batching.distinct_tokens`'s on
    the gathered character rows: the rows in lexicographic order, all-zero row 0 always present.
    Each array is reduced to its distinct ids first, so only those rows are gathered and sorted.
    """
    uniques, inverses, rows = [], [], []
    for ids, table in parts:
        u, inv = np.unique(ids, return_inverse=True)
        uniques.append(u)
        inverses.append(inv.reshape(ids.shape))
        rows.append(table.rows(u))
    # (np.concatenate would convert to native byte order)
    stacked = np.zeros((1 + sum(len(r) for r in rows), rows[0].shape[1]), CHAR_DTYPE)
    offset = 1
    for r in rows:
        stacked[offset : offset + len(r)] = r
        offset += len(r)
    table, where = sorted_distinct_rows(stacked)
    index, offset = [], 1
    for u, inv in zip(uniques, inverses, strict=True):
        index.append(where[offset : offset + len(u)][inv])
        offset += len(u)
    return table, index
