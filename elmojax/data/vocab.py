"""Vocabulary files: one token a line, ids by line number; the sentence markers and ``<UNK>``.

Word-level models read token ids (:class:`TokenBatcher`), **shifted by +1** so that id 0 means
"no token here" (batch padding), as everywhere in elmojax; character ids are
:mod:`elmojax.data.chars`'.
"""

from __future__ import annotations

from collections.abc import Sequence
from itertools import repeat
from pathlib import Path

import numpy as np

from elmojax.errors import VocabularyError

BOS, EOS, UNK = "<S>", "</S>", "<UNK>"
SPECIALS = (BOS, EOS, UNK)


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
        # map() over dict.get keeps the loop in C, unlike a generator expression
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
