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


def _as_void(rows: np.ndarray) -> np.ndarray:
    """Rows as opaque byte strings: big-endian uint16 bytes compare as the rows' values do."""
    rows = np.ascontiguousarray(rows, dtype=CHAR_DTYPE)
    return rows.view(np.dtype((np.void, rows.shape[1] * rows.itemsize))).reshape(-1)


class VocabChars:
    """The character rows ``[V, max_chars]`` of every vocabulary word, computed once and shared."""

    def __init__(self, vocab: Vocabulary, max_characters_per_token: int):
        self.vocab = vocab
        self.max_characters_per_token = max_characters_per_token
        self.rows = char_rows(vocab.tokens, max_characters_per_token)
        # the distinct rows in lexicographic order, and each word's sort key (see OovTable.keys)
        self.sorted, rank = np.unique(_as_void(self.rows), return_inverse=True)
        self.keys = (2 * rank.reshape(-1).astype(np.int64) + 2) << 32


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
        self._keys: np.ndarray | None = None  # sort keys of the unknown tokens, once needed

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
            self._keys = None
        return np.array([self._ids[t] for t in tokens], np.int32)

    def token(self, i: int) -> str:
        """The token of id ``i`` (vocabulary or unknown)."""
        return self.vocab.tokens[i] if i < self.n_vocab else self.tokens[i - self.n_vocab]

    def word_ids(self, ids: np.ndarray) -> np.ndarray:
        """Vocabulary ids: unknown tokens become ``<UNK>`` (as ``Vocabulary.word_to_id``)."""
        return np.where(ids >= self.n_vocab, self.vocab.unk, ids).astype(np.int32)

    def keys(self, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """int64 sort keys of ids' character rows, and where they are only a gap's key.

        A vocabulary word's key comes from the rank of its row among the vocabulary's distinct
        rows (equal rows, equal keys); an unknown token's row either equals one of those (same
        key) or falls in the gap before rank ``p``: then the key is the gap's, and the caller
        orders the rows within a gap (:func:`distinct_char_rows`). Sorting ints instead of rows
        makes a batch's table a 1-D ``np.unique``. ``-1`` (padding) is 0.
        """
        assert self.vocab_chars is not None
        vc = self.vocab_chars
        if self._keys is None:
            mine = _as_void(self._rows)
            p = np.searchsorted(vc.sorted, mine).astype(np.int64)
            same = (p < len(vc.sorted)) & (vc.sorted[np.minimum(p, len(vc.sorted) - 1)] == mine)
            self._keys = np.where(same, (2 * p + 2) << 32, (2 * p + 1) << 32).astype(np.int64)
            self._in_gap = ~same
        out = np.zeros(ids.shape, np.int64)
        in_gap = np.zeros(ids.shape, bool)
        known = (ids >= 0) & (ids < self.n_vocab)
        out[known] = vc.keys[ids[known]]
        unknown = ids >= self.n_vocab
        out[unknown] = self._keys[ids[unknown] - self.n_vocab]
        in_gap[unknown] = self._in_gap[ids[unknown] - self.n_vocab]
        return out, in_gap

    def rows(self, ids: np.ndarray) -> np.ndarray:
        """Character rows ``[..., max_chars]`` (uint16, big-endian) of ids; ``-1`` (padding) is all zeros."""
        assert self.vocab_chars is not None
        flat = ids.reshape(-1)
        out = np.zeros((len(flat), self._rows.shape[1]), CHAR_DTYPE)
        known = (flat >= 0) & (flat < self.n_vocab)
        out[known] = self.vocab_chars.rows[flat[known]]
        unknown = flat >= self.n_vocab
        out[unknown] = self._rows[flat[unknown] - self.n_vocab]
        return out.reshape(*ids.shape, out.shape[1])


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


def bounds_of(arrays: Sequence[np.ndarray]) -> list[int]:
    """Where consecutive arrays' elements start in their concatenation (np.split's sections)."""
    return list(np.cumsum([len(a) for a in arrays])[:-1])


def distinct_char_rows(
    parts: Sequence[tuple[np.ndarray, OovTable]],
) -> tuple[np.ndarray, list[np.ndarray]]:
    """The distinct character rows of several id arrays and each array's index into them.

    ``parts``: ``(ids, table)`` pairs (ids ``-1`` for padding) -> ``(table [U, chars] int32,
    [index like ids] int32)``. The table is exactly :func:`elmojax.batching.distinct_tokens`'s on
    the gathered character rows: the rows in lexicographic order, all-zero row 0 always present.
    Each array is reduced to its distinct ids first, which are sorted by int keys
    (:meth:`OovTable.keys`); only unknown tokens' rows that match no vocabulary row are compared
    as rows.
    """
    # key 0 (first, before any part's) is the padding row
    uniques, inverses, keys, gaps = [], [], [np.zeros(1, np.int64)], [np.zeros(1, bool)]
    for ids, table in parts:
        u, inv = np.unique(ids, return_inverse=True)
        uniques.append(u)
        inverses.append(inv.reshape(ids.shape))
        k, gap = table.keys(u)
        keys.append(k)
        gaps.append(gap)
    in_gap = np.split(np.concatenate(gaps[1:]), bounds_of(uniques))
    keys, gaps = np.concatenate(keys), np.concatenate(gaps)
    if gaps.any():  # unknown rows between vocabulary rows: ordered among themselves by their bytes
        rows = [table.rows(u[g]) for u, g, (_, table) in zip(uniques, in_gap, parts, strict=True)]
        _, rank = np.unique(_as_void(np.concatenate(rows)), return_inverse=True)
        keys[gaps] |= rank.reshape(-1).astype(np.int64)
    _, first, where = np.unique(keys, return_index=True, return_inverse=True)
    where = where.reshape(-1).astype(np.int32)
    # the character rows of one id per distinct key: (part, position in its uniques)
    width = parts[0][1].vocab_chars.max_characters_per_token
    table = np.zeros((len(first), width), np.int32)
    bounds = np.cumsum([1] + [len(u) for u in uniques])
    for k, (u, (_, oov)) in enumerate(zip(uniques, parts, strict=True)):
        mine = (first >= bounds[k]) & (first < bounds[k + 1])
        table[mine] = oov.rows(u[first[mine] - bounds[k]])
    index = [where[bounds[k] : bounds[k + 1]][inv] for k, inv in enumerate(inverses)]
    return table, index
