"""Tokens as integers for the host pipeline: vocabulary ids and out-of-vocabulary ids with their rows.

The training streams work on int arrays, not strings: a token is its vocabulary id, or, when it
is not in the vocabulary, an id ``>= len(vocab)`` in an :class:`OovTable`, because the character
CNN must see an unknown token's real characters even though its *target* id is ``<UNK>``. The
character rows of all vocabulary words are computed once
(:class:`~elmojax.data.chars.VocabChars`), those of unknown tokens when they are first met, so a
batch's character inputs are a gather, and its distinct-token table a ``np.unique`` over ints
(:func:`~elmojax.data.chars.distinct_char_rows`).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from elmojax.data.chars import CHAR_DTYPE, VocabChars, char_rows, row_bytes
from elmojax.data.vocab import Vocabulary


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
        orders the rows within a gap (:func:`~elmojax.data.chars.distinct_char_rows`). Sorting ints
        instead of rows makes a batch's table a 1-D ``np.unique``. ``-1`` (padding) is 0.
        """
        assert self.vocab_chars is not None
        vc = self.vocab_chars
        if self._keys is None:
            mine = row_bytes(self._rows)
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
