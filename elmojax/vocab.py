"""Vocabulary files, character ids and batching of tokenized sentences.

Character ids follow bilm-tf's ``UnicodeCharsVocabulary``: a token's UTF-8 bytes truncated to
``max_characters_per_token - 2`` bytes, wrapped in begin/end-of-word ids and padded; the
sentence markers ``<S>``/``</S>`` are the special BOS/EOS "words". Everything this module returns
is already **shifted by +1** so that id 0 means "no token here" (batch padding): that is the
convention of bilm-tf's ``Batcher``, of AllenNLP's ``batch_to_ids`` and of every model in elmojax,
training included (the model's character table has the padding row 0; see docs/formats.md).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from itertools import repeat
from pathlib import Path

import numpy as np

from elmojax.errors import VocabularyError
from elmojax.options import BOS_CHAR, BOW_CHAR, EOS_CHAR, EOW_CHAR, PAD_CHAR

BOS, EOS, UNK = "<S>", "</S>", "<UNK>"
SPECIALS = (BOS, EOS, UNK)


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


class Vocabulary:
    """A token vocabulary file: one token a line, ids by line number.

    For training the file must hold ``<S>``, ``</S>`` and ``<UNK>`` (see :meth:`require_specials`)
    followed by the training tokens by descending count, because the sampled softmax draws
    negatives log-uniformly over ids.
    """

    def __init__(self, tokens: Sequence[str], source: str = "vocabulary"):
        self.source = source
        self.tokens: list[str] = list(tokens)
        self._ids: dict[str, int] = {}
        for i, tok in enumerate(self.tokens):
            if tok in self._ids:
                raise VocabularyError(
                    f"{source}: line {i + 1}: duplicate token {tok!r} (first on line {self._ids[tok] + 1}); "
                    "each token must appear once"
                )
            self._ids[tok] = i
        self.bos = self._ids.get(BOS, -1)
        self.eos = self._ids.get(EOS, -1)
        self.unk = self._ids.get(UNK, -1)

    @classmethod
    def from_file(cls, path: str | Path) -> Vocabulary:
        """Load a vocabulary file; blank lines and duplicates are errors naming the line."""
        path = Path(path)
        if not path.exists():
            raise VocabularyError(f"{path}: vocabulary file not found")
        if path.is_dir():
            raise VocabularyError(f"{path}: is a directory, expected a vocabulary file (one token a line)")
        try:
            text = path.read_text(encoding="utf-8-sig")
        except UnicodeDecodeError as e:
            line = path.read_bytes()[: e.start].count(b"\n") + 1
            raise VocabularyError(f"{path}: line {line}: not valid UTF-8 ({e.reason})") from None
        tokens = []
        for i, line in enumerate(text.splitlines()):
            tok = line.strip()
            if not tok:
                raise VocabularyError(f"{path}: line {i + 1}: blank line; remove it (one token a line)")
            if tok == "!!!MAXTERMID":  # bilm-tf skips this marker of the 1B Word Benchmark vocabulary
                continue
            tokens.append(tok)
        if not tokens:
            raise VocabularyError(f"{path}: vocabulary file is empty")
        return cls(tokens, source=str(path))

    def require_specials(self) -> Vocabulary:
        """Raise unless ``<S>``, ``</S>`` and ``<UNK>`` are present (needed for training)."""
        missing = [s for s in SPECIALS if s not in self._ids]
        if missing:
            raise VocabularyError(
                f"{self.source}: missing special token(s) {', '.join(missing)}; a training vocabulary starts "
                "with <S>, </S>, <UNK> (elmojax prepare writes one)"
            )
        return self

    def __len__(self) -> int:
        return len(self.tokens)

    def __contains__(self, token: str) -> bool:
        return token in self._ids

    def word_to_id(self, token: str) -> int:
        """The token's id, or the ``<UNK>`` id for unknown tokens."""
        return self._ids.get(token, self.unk)

    def lookup(self, tokens: Sequence[str]) -> np.ndarray:
        """int32 ids of ``tokens``, ``-1`` for tokens not in the vocabulary."""
        # map() over dict.get keeps the loop in C: about twice as fast as a generator
        return np.fromiter(map(self._ids.get, tokens, repeat(-1, len(tokens))), np.int32, len(tokens))

    def encode(self, tokens: Sequence[str], reverse: bool = False) -> np.ndarray:
        """Ids of one sentence wrapped in sentence markers, as bilm-tf's ``Vocabulary.encode``.

        With ``reverse`` the tokens are read backwards and the stream is ``[</S>, t_n .. t_1, <S>]``.
        """
        ids = [self._ids.get(t, self.unk) for t in tokens]
        if reverse:
            return np.array([self.eos, *ids[::-1], self.bos], dtype=np.int32)
        return np.array([self.bos, *ids, self.eos], dtype=np.int32)

    def save(self, path: str | Path) -> None:
        """Write one token a line, atomically."""
        from elmojax.fileio import atomic_write_text

        atomic_write_text(path, "".join(f"{t}\n" for t in self.tokens))


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
    is what :class:`~elmojax.model.CharCNN` relies on for trimmed input: short-token batches do
    far less work for the same maximum. ``[..., C] -> [..., K]``.
    """
    width = char_ids.shape[-1]
    real = (char_ids != PAD_CHAR + 1) & (char_ids != 0)
    longest = max(int(real.sum(axis=-1).max(initial=0)), 1)
    keep = -(-longest // multiple) * multiple + max_filter_width - 1
    return char_ids[..., : min(width, keep)]


class TokenBatcher:
    """Sentences -> shifted token ids ``[batch, max_len + 2]`` (0 = padding) for word-level models."""

    def __init__(self, vocab: Vocabulary):
        if vocab.unk < 0:
            raise VocabularyError(f"{vocab.source}: word-level models need <UNK> in the vocabulary")
        self.vocab = vocab

    def batch_sentences(self, sentences: Sequence[Sequence[str]]) -> np.ndarray:
        max_len = max((len(s) for s in sentences), default=0) + 2
        out = np.zeros((len(sentences), max_len), dtype=np.int32)
        for k, sent in enumerate(sentences):
            out[k, : len(sent) + 2] = self.vocab.encode(sent) + 1
        return out


def batch_to_ids(sentences: Sequence[Sequence[str]], max_characters_per_token: int = 50) -> np.ndarray:
    """AllenNLP-style helper: tokenized sentences -> ``[batch, max_len + 2, 50]`` character ids."""
    return Batcher(max_characters_per_token).batch_sentences(sentences)
