"""Training streams as bilm-tf builds them, with an exactly resumable position.

Each of the ``batch_size`` rows is an endless stream of sentences, each wrapped in its markers
(``<S> t1 .. tn </S>`` forward, ``</S> tn .. t1 <S>`` backward), cut into windows of
``unroll_steps``: inputs are the stream, targets the stream shifted by one, and a row pulls its
next sentence from a shared, per-direction sentence source whenever its current one is used up.
Sentences come shard by shard (one shard in memory at a time) in an order that is a pure
function of (seed, epoch), so a position is a few integers plus each row's unfinished sentence.
"""

from __future__ import annotations

import glob
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from elmojax.errors import ElmoError
from elmojax.options import N_DIRECTIONS
from elmojax.vocab import BOS, EOS, Batcher, Vocabulary


@dataclass
class Window:
    """One direction's batch: ``[B, U]`` arrays (and ``[B, U, chars]`` character ids)."""

    token_ids: np.ndarray  # [B, U] int32 vocabulary ids of the inputs
    char_ids: np.ndarray | None  # [B, U, chars] int32 shifted character ids (None for word models)
    targets: np.ndarray  # [B, U] int32 next-token ids
    mask: np.ndarray  # [B, U] bool: a real input/target pair (all True in training)


def resolve_files(pattern: str | Sequence[str]) -> list[str]:
    """The sorted files matching a glob (or a list of globs); an error names a pattern without any."""
    patterns = [pattern] if isinstance(pattern, str | Path) else list(pattern)
    files: set[str] = set()
    for p in patterns:
        found = [f for f in glob.glob(str(p)) if Path(f).is_file()]
        if not found:
            raise ElmoError(
                f"{p}: no files match this pattern; check --train-prefix/--test-prefix (quote the glob)"
            )
        files.update(found)
    return sorted(files)


def _read_shard(path: str) -> list[list[str]]:
    try:
        with open(path, encoding="utf-8") as f:
            return [toks for line in f if (toks := line.split())]
    except UnicodeDecodeError as e:
        raise ElmoError(
            f"{path}: not valid UTF-8 ({e.reason} at byte {e.start}); re-run elmojax prepare"
        ) from None


def count_tokens(pattern: str | Sequence[str]) -> int:
    """Whitespace tokens in all files of ``pattern`` (bilm-tf's ``n_train_tokens``; no markers)."""
    total = 0
    for path in resolve_files(pattern):
        with open(path, encoding="utf-8", errors="replace") as f:
            total += sum(len(line.split()) for line in f)
    return total


class SentenceStream:
    """Sentences (token lists with markers, in reading direction) in a seeded shard/sentence order.

    With ``loop`` it goes on epoch after epoch; without, it reads every sentence once and stops.
    ``process_index``/``process_count`` give each host its slice: every ``process_count``-th shard,
    or every ``process_count``-th sentence when there are fewer shards than processes.
    """

    def __init__(
        self,
        pattern: str | Sequence[str],
        *,
        seed: int,
        reverse: bool,
        process_index: int = 0,
        process_count: int = 1,
        shuffle: bool = True,
        loop: bool = True,
    ):
        files = resolve_files(pattern)
        self.split_sentences = len(files) < process_count
        self.files = files if self.split_sentences else files[process_index::process_count]
        self.seed, self.reverse, self.shuffle, self.loop = seed, reverse, shuffle, loop
        self.process_index, self.process_count = process_index, process_count
        self.epoch, self.shard_pos, self.sent_pos = 0, 0, 0
        self._loaded: tuple[int, int] | None = None
        self._sentences: list[list[str]] = []
        self._order: np.ndarray = np.zeros(0, np.int64)
        if not any(Path(f).stat().st_size for f in self.files):
            raise ElmoError(f"{pattern}: all matching files are empty")

    def _shard_order(self, epoch: int) -> np.ndarray:
        if not self.shuffle:
            return np.arange(len(self.files))
        return np.random.default_rng([self.seed, epoch]).permutation(len(self.files))

    def _load(self) -> None:
        key = (self.epoch, self.shard_pos)
        if self._loaded == key:
            return
        path = self.files[self._shard_order(self.epoch)[self.shard_pos]]
        sentences = _read_shard(path)
        if self.split_sentences:
            sentences = sentences[self.process_index :: self.process_count]
        self._sentences = sentences
        n = len(sentences)
        if self.shuffle:
            self._order = np.random.default_rng([self.seed, self.epoch, self.shard_pos, 1]).permutation(n)
        else:
            self._order = np.arange(n)
        self._loaded = key

    def __iter__(self) -> Iterator[list[str]]:
        return self

    def __next__(self) -> list[str]:
        advanced = 0
        while True:
            self._load()
            if self.sent_pos < len(self._order):
                tokens = self._sentences[self._order[self.sent_pos]]
                self.sent_pos += 1
                if self.reverse:
                    return [EOS, *tokens[::-1], BOS]
                return [BOS, *tokens, EOS]
            advanced += 1
            if advanced > len(self.files):
                raise ElmoError(f"{self.files[0]}: this process's shards hold no sentences")
            self.shard_pos, self.sent_pos = self.shard_pos + 1, 0
            if self.shard_pos == len(self.files):
                if not self.loop:
                    self.shard_pos, self.sent_pos = self.shard_pos - 1, len(self._order)
                    raise StopIteration
                self.epoch, self.shard_pos = self.epoch + 1, 0

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "shard_pos": self.shard_pos, "sent_pos": self.sent_pos}

    def load_state_dict(self, d: dict) -> None:
        self.epoch, self.shard_pos, self.sent_pos = int(d["epoch"]), int(d["shard_pos"]), int(d["sent_pos"])
        self._loaded = None


class WindowStream:
    """bilm-tf's ``_get_batch`` over a :class:`SentenceStream`: windows ``[B, U]`` row by row.

    When the sentences run out (evaluation), the last windows are returned with ``mask`` False
    where no data is left, instead of being dropped as bilm-tf does.
    """

    def __init__(
        self,
        sentences: SentenceStream,
        vocab: Vocabulary,
        batch_size: int,
        unroll_steps: int,
        batcher: Batcher | None,
    ):
        self.sentences, self.vocab, self.batcher = sentences, vocab, batcher
        self.batch_size, self.unroll_steps = batch_size, unroll_steps
        self.rows: list[list[str] | None] = [None] * batch_size  # each row's unconsumed sentence tail
        self.exhausted = False
        self._ids: dict[str, int] = {}

    def _token_id(self, token: str) -> int:
        i = self._ids.get(token)
        if i is None:
            i = self._ids[token] = self.vocab.word_to_id(token)
        return i

    def __iter__(self) -> Iterator[Window]:
        return self

    def __next__(self) -> Window:
        b, u = self.batch_size, self.unroll_steps
        inputs: list[list[str]] = [[] for _ in range(b)]
        targets: list[list[str]] = [[] for _ in range(b)]
        for i in range(b):
            pos = 0
            while pos < u:
                cur = self.rows[i]
                if cur is None or len(cur) <= 1:
                    if self.exhausted:
                        self.rows[i] = None
                        break
                    try:
                        cur = self.rows[i] = next(self.sentences)
                    except StopIteration:
                        self.exhausted = True
                        self.rows[i] = None
                        break
                n = min(len(cur) - 1, u - pos)
                inputs[i].extend(cur[:n])
                targets[i].extend(cur[1 : n + 1])
                self.rows[i] = cur[n:]
                pos += n
        if self.exhausted and not any(inputs):
            raise StopIteration
        token_ids = np.zeros((b, u), np.int32)
        target_ids = np.zeros((b, u), np.int32)
        mask = np.zeros((b, u), bool)
        chars = None
        if self.batcher is not None:
            chars = np.zeros((b, u, self.batcher.max_characters_per_token), np.int32)
        for i in range(b):
            n = len(inputs[i])
            token_ids[i, :n] = [self._token_id(t) for t in inputs[i]]
            target_ids[i, :n] = [self._token_id(t) for t in targets[i]]
            mask[i, :n] = True
            if chars is not None and n:
                chars[i, :n] = [self.batcher.char_ids(t) for t in inputs[i]]
        return Window(token_ids, chars, target_ids, mask)

    def state_dict(self) -> dict:
        return {"sentences": self.sentences.state_dict(), "rows": self.rows, "exhausted": self.exhausted}

    def load_state_dict(self, d: dict) -> None:
        self.sentences.load_state_dict(d["sentences"])
        rows = d["rows"]
        if len(rows) != self.batch_size:
            raise ElmoError(
                f"checkpoint data position has {len(rows)} rows but this run has {self.batch_size}; "
                "resume with the same batch_size and number of devices"
            )
        self.rows = [list(r) if r is not None else None for r in rows]
        self.exhausted = bool(d.get("exhausted", False))


class BidirectionalStream:
    """Forward and backward windows from independently ordered streams (bilm-tf's BidirectionalLMDataset)."""

    def __init__(
        self,
        pattern: str | Sequence[str],
        vocab: Vocabulary,
        batch_size: int,
        unroll_steps: int,
        batcher: Batcher | None,
        *,
        seed: int,
        process_index: int = 0,
        process_count: int = 1,
        loop: bool = True,
        shuffle: bool = True,
    ):
        def make(direction: int) -> WindowStream:
            sentences = SentenceStream(
                pattern,
                seed=seed * 2 + direction,
                reverse=direction == 1,
                process_index=process_index,
                process_count=process_count,
                shuffle=shuffle,
                loop=loop,
            )
            return WindowStream(sentences, vocab, batch_size, unroll_steps, batcher)

        self.streams = [make(d) for d in range(N_DIRECTIONS)]

    def __iter__(self) -> Iterator[tuple[Window, Window]]:
        return self

    def __next__(self) -> tuple[Window, Window]:
        forward, backward = [next(s) for s in self.streams]
        return forward, backward

    def state_dict(self) -> dict:
        return {"directions": [s.state_dict() for s in self.streams]}

    def load_state_dict(self, d: dict) -> None:
        for s, sd in zip(self.streams, d["directions"], strict=True):
            s.load_state_dict(sd)


def sentence_windows(
    sentences: Sequence[Sequence[str]], vocab: Vocabulary, batcher: Batcher | None, length: int, rows: int
) -> tuple[Window, Window]:
    """Forward and backward windows that hold one whole sentence a row, for per-sentence scoring.

    Row ``k`` of the forward window reads ``<S> t1 .. tn`` and predicts ``t1 .. tn </S>``; of the
    backward one reads ``</S> tn .. t1`` and predicts ``tn .. t1 <S>``. Rows are padded (mask
    False) to ``length`` positions, which must be at least the longest sentence plus one, and
    empty rows are added up to ``rows``.
    """
    out = []
    for direction in range(N_DIRECTIONS):
        b = rows
        token_ids = np.zeros((b, length), np.int32)
        targets = np.zeros((b, length), np.int32)
        mask = np.zeros((b, length), bool)
        chars = None if batcher is None else np.zeros((b, length, batcher.max_characters_per_token), np.int32)
        for i, sent in enumerate(sentences):
            ids = vocab.encode(sent, reverse=direction == 1)
            n = len(ids) - 1
            token_ids[i, :n], targets[i, :n], mask[i, :n] = ids[:-1], ids[1:], True
            if chars is not None:
                marked = [EOS, *sent[::-1]] if direction == 1 else [BOS, *sent]
                chars[i, :n] = [batcher.char_ids(t) for t in marked]
        out.append(Window(token_ids, chars, targets, mask))
    return out[0], out[1]
