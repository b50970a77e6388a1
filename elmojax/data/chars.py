"""The character encoding: bilm-tf's character ids, written once, with its fast paths beside it.

A token's characters are its UTF-8 bytes truncated to ``max_characters_per_token - 2``, wrapped in
begin/end-of-word ids and padded; ``<S>``/``</S>`` are the special BOS/EOS "words" (bilm-tf's
``UnicodeCharsVocabulary``). Every id is **shifted by +1** so that 0 means "no token here" (batch
padding), as in bilm-tf's ``Batcher``, AllenNLP's ``batch_to_ids`` and every model in elmojax
(docs/formats.md).

:func:`token_char_ids` is the reference, one token at a time. The host pipeline needs the same ids
for millions of tokens a second, so beside it are the fast paths, each tested equal to the
reference (``tests/data/test_chars.py``):

* :func:`char_rows`: many tokens at once from one concatenation of their bytes;
* the distinct-token table of a batch (the character CNN runs once per distinct token):
  :func:`distinct_tokens` is the reference, ``np.unique`` over rows; :func:`distinct_char_rows`
  builds the same table from token ids (training streams), :func:`distinct_sentence_chars` from
  token strings (the Embedder), both sorting only distinct tokens.
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Iterable, Sequence
from typing import Protocol

import numpy as np

from elmojax.data.vocab import BOS, EOS, Vocabulary
from elmojax.options import BOS_CHAR, BOW_CHAR, EOS_CHAR, EOW_CHAR, PAD_CHAR

#: character rows are stored as uint16 (ids go up to 262): half the memory of int32, and their
#: big-endian bytes sort as the rows do
CHAR_DTYPE = np.dtype(">u2")


# --- one token, and many -----------------------------------------------------------------------


def token_char_ids(token: str, max_characters_per_token: int = 50) -> np.ndarray:
    """Shifted character ids ``[max_characters_per_token]`` (int32) of one token.

    ``<S>`` and ``</S>`` are the sentence markers; any other string is encoded from its UTF-8
    bytes (invalid surrogates dropped as bilm-tf's ``encode('utf-8', 'ignore')`` does), truncated to
    ``max_characters_per_token - 2`` bytes.
    """
    code = np.full(max_characters_per_token, PAD_CHAR + 1, dtype=np.int32)
    code[0] = BOW_CHAR + 1
    if token == BOS or token == EOS:
        code[1] = (BOS_CHAR if token == BOS else EOS_CHAR) + 1
        code[2] = EOW_CHAR + 1
        return code
    raw = token.encode("utf-8", "ignore")[: max_characters_per_token - 2]
    code[1 : len(raw) + 1] = np.frombuffer(raw, dtype=np.uint8).astype(np.int32) + 1
    code[len(raw) + 1] = EOW_CHAR + 1
    return code


def char_rows(tokens: Sequence[str], max_characters_per_token: int) -> np.ndarray:
    """Shifted character ids ``[len(tokens), max_chars]`` of many tokens at once.

    Equal, row by row, to :func:`token_char_ids`, built from one concatenation of
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


def row_bytes(rows: np.ndarray) -> np.ndarray:
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
        self.sorted, rank = np.unique(row_bytes(self.rows), return_inverse=True)
        self.keys = (2 * rank.reshape(-1).astype(np.int64) + 2) << 32


_VOCAB_CHARS: weakref.WeakKeyDictionary[Vocabulary, dict[int, VocabChars]] = weakref.WeakKeyDictionary()
_VOCAB_CHARS_LOCK = threading.Lock()


def vocab_chars(vocab: Vocabulary, max_characters_per_token: int) -> VocabChars:
    """The :class:`VocabChars` of ``vocab``, computed on first use and kept as long as the
    vocabulary lives (a large vocabulary's rows are worth computing once)."""
    with _VOCAB_CHARS_LOCK:
        per_width = _VOCAB_CHARS.setdefault(vocab, {})
        if max_characters_per_token not in per_width:
            per_width[max_characters_per_token] = VocabChars(vocab, max_characters_per_token)
        return per_width[max_characters_per_token]


class Batcher:
    """Sentences of tokens -> padded shifted character ids ``[batch, max_len + 2, max_chars]``.

    Equivalent to bilm-tf's ``Batcher`` and AllenNLP's ``batch_to_ids``: every sentence gets
    ``<S>``/``</S>`` around it, positions after ``len + 2`` are all zeros. Character ids of tokens
    are cached, so the vocabulary file is optional (it only pre-fills the cache).
    """

    def __init__(self, max_characters_per_token: int = 50, vocab: Vocabulary | Iterable[str] | None = None):
        self.max_characters_per_token = max_characters_per_token
        self._cache: dict[str, np.ndarray] = {}
        for tok in (vocab.tokens if isinstance(vocab, Vocabulary) else vocab) or ():
            self.char_ids(tok)

    def char_ids(self, token: str) -> np.ndarray:
        """Shifted character ids of one token (cached)."""
        ids = self._cache.get(token)
        if ids is None:
            if len(self._cache) > 1_000_000:  # bound memory on endless streams of new tokens
                self._cache.clear()
            ids = self._cache[token] = token_char_ids(token, self.max_characters_per_token)
        return ids

    def batch_sentences(self, sentences: Sequence[Sequence[str]]) -> np.ndarray:
        """``[n_sentences, max_len + 2, max_chars]`` int32 shifted character ids."""
        max_len = max((len(s) for s in sentences), default=0) + 2
        out = np.zeros((len(sentences), max_len, self.max_characters_per_token), dtype=np.int32)
        for k, sent in enumerate(sentences):
            out[k, 0] = self.char_ids(BOS)
            for t, tok in enumerate(sent, start=1):
                out[k, t] = self.char_ids(tok)
            out[k, len(sent) + 1] = self.char_ids(EOS)
        return out


def trim_char_ids(char_ids: np.ndarray, max_filter_width: int, multiple: int = 4) -> np.ndarray:
    """Drop trailing character columns that cannot change the character CNN's output.

    Keeps ``longest token + widest filter - 1`` columns (the longest token rounded up to
    ``multiple``, to bound the number of compiled shapes), or all of them if that is not fewer.
    Every window that touches a real character then starts in the first ``longest`` columns, which
    is what :class:`~elmojax.model.bilm.CharCNN` relies on for trimmed input: short-token batches do
    far less work for the same maximum. ``[..., C] -> [..., K]``.
    """
    width = char_ids.shape[-1]
    real = (char_ids != PAD_CHAR + 1) & (char_ids != 0)
    longest = max(int(real.sum(axis=-1).max(initial=0)), 1)
    keep = -(-longest // multiple) * multiple + max_filter_width - 1
    return char_ids[..., : min(width, keep)]


def batch_to_ids(sentences: Sequence[Sequence[str]], max_characters_per_token: int = 50) -> np.ndarray:
    """AllenNLP-style helper: tokenized sentences -> ``[batch, max_len + 2, 50]`` character ids."""
    return Batcher(max_characters_per_token).batch_sentences(sentences)


# --- distinct tokens of a batch -----------------------------------------------------------------


def distinct_tokens(inputs: np.ndarray, char: bool) -> tuple[np.ndarray, np.ndarray]:
    """The distinct token inputs of a batch and the index into them.

    ``inputs [..., chars]`` shifted character ids (``char``) or ``[...]`` shifted token ids ->
    ``(table [U, chars] or [U], index [...])``, both int32, with ``table[index] == inputs``. Row 0
    of the table is the all-zero padding input, whether or not the batch has padding.
    """
    lead = inputs.shape[:-1] if char else inputs.shape
    flat = inputs.reshape(-1, inputs.shape[-1]) if char else inputs.reshape(-1)
    table, inverse = np.unique(flat, axis=0, return_inverse=True)
    inverse = inverse.reshape(lead)
    if len(table) == 0 or np.any(table[0] != 0):
        table = np.concatenate([np.zeros((1, *table.shape[1:]), table.dtype), table])
        inverse = inverse + 1
    return table.astype(np.int32), inverse.astype(np.int32)


def sorted_distinct_rows(rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``np.unique(rows, axis=0, return_inverse=True)`` for character rows, as int32, faster.

    ``rows [N, chars]`` (values below 2**16) -> ``(distinct rows [U, chars] in lexicographic
    order, where [N])``: big-endian uint16 bytes compare as the rows' values do, so the rows are
    sorted as opaque byte strings (one memcmp per comparison) instead of column by column.
    """
    distinct, where = np.unique(row_bytes(rows), return_inverse=True)
    table = distinct.view(CHAR_DTYPE).reshape(len(distinct), -1).astype(np.int32)
    return table, where.reshape(-1).astype(np.int32)


def bounds_of(arrays: Sequence[np.ndarray]) -> list[int]:
    """Where consecutive arrays' elements start in their concatenation (np.split's sections)."""
    return list(np.cumsum([len(a) for a in arrays])[:-1])


class CharTable(Protocol):
    """What :func:`distinct_char_rows` reads of an id table (:class:`elmojax.data.ids.OovTable`,
    which imports this module: named here by its shape, not imported)."""

    vocab_chars: VocabChars | None

    def keys(self, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]: ...

    def rows(self, ids: np.ndarray) -> np.ndarray: ...


def distinct_char_rows(
    parts: Sequence[tuple[np.ndarray, CharTable]],
) -> tuple[np.ndarray, list[np.ndarray]]:
    """The distinct character rows of several id arrays and each array's index into them.

    ``parts``: ``(ids, table)`` pairs (ids ``-1`` for padding) -> ``(table [U, chars] int32,
    [index like ids] int32)``. The table is exactly :func:`distinct_tokens`'s on
    the gathered character rows: the rows in lexicographic order, all-zero row 0 always present.
    Each array is reduced to its distinct ids first, which are sorted by int keys
    (:meth:`elmojax.data.ids.OovTable.keys`); only unknown tokens' rows that match no vocabulary
    row are compared as rows.
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
        _, rank = np.unique(row_bytes(np.concatenate(rows)), return_inverse=True)
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


def distinct_sentence_chars(
    sentences: Sequence[Sequence[str]], max_characters_per_token: int
) -> tuple[np.ndarray, np.ndarray]:
    """:func:`distinct_tokens` of ``Batcher(...).batch_sentences(sentences)``, without building it.

    ``-> (table [U, chars], index [n_sentences, longest + 2])``. Positions are mapped to distinct
    token strings (one dict lookup each); only the distinct tokens' character rows are built
    (:func:`char_rows`) and sorted.
    """
    lengths = np.array([len(s) + 2 for s in sentences], np.int64)
    flat: list[str] = []
    for sent in sentences:
        flat.append(BOS)
        flat.extend(sent)
        flat.append(EOS)
    distinct = dict.fromkeys(flat)
    ids = {t: i for i, t in enumerate(distinct, start=1)}  # 0: the padding row
    where_flat = np.fromiter(map(ids.__getitem__, flat), np.int64, len(flat))
    rows = np.zeros((len(distinct) + 1, max_characters_per_token), CHAR_DTYPE)
    rows[1:] = char_rows(list(distinct), max_characters_per_token)
    table, where = sorted_distinct_rows(rows)
    index = np.zeros((len(sentences), int(lengths.max(initial=0))), np.int32)
    index[np.arange(index.shape[1]) < lengths[:, None]] = where[where_flat]
    return table, index
