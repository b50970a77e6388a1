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

from elmojax.data.chars import Batcher, VocabChars, vocab_chars
from elmojax.data.ids import OovTable
from elmojax.data.vocab import BOS, EOS, Vocabulary
from elmojax.errors import ElmoError
from elmojax.options import N_DIRECTIONS


@dataclass
class Window:
    """One direction's batch: ``[B, U]`` arrays; character inputs as ids into an :class:`OovTable`.

    ``inputs`` are the input tokens' ids in ``table`` (vocabulary ids, or ids beyond the vocabulary
    for unknown tokens, whose characters the CNN still reads; ``-1`` where ``mask`` is False);
    :attr:`char_ids` gathers their character rows.
    """

    token_ids: np.ndarray  # [B, U] int32 vocabulary ids of the inputs (<UNK> for unknown tokens)
    targets: np.ndarray  # [B, U] int32 next-token ids
    mask: np.ndarray  # [B, U] bool: a real input/target pair (all True in training)
    inputs: np.ndarray  # [B, U] int32 ids into `table`, -1 for padding
    table: OovTable

    def rows(self, rows: slice) -> Window:
        """The window of ``rows`` only (views, the same table)."""
        return Window(
            self.token_ids[rows], self.targets[rows], self.mask[rows], self.inputs[rows], self.table
        )

    @property
    def char_ids(self) -> np.ndarray | None:
        """``[B, U, chars]`` int32 shifted character ids (None for word models); zeros for padding."""
        if self.table.vocab_chars is None:
            return None
        return self.table.rows(self.inputs).astype(np.int32)


def resolve_files(pattern: str | Sequence[str], arg: str | None = None) -> list[str]:
    """The sorted files matching a glob (or a list of globs); an error names a pattern without any
    (and ``arg``, the argument that gave it)."""
    patterns = [pattern] if isinstance(pattern, str | Path) else list(pattern)
    files: set[str] = set()
    for p in patterns:
        found = [f for f in glob.glob(str(p)) if Path(f).is_file()]
        if not found:
            check = f"check `{arg}`" if arg else "check the pattern"
            raise ElmoError(f"{p}: no files match this pattern; {check} (quote the glob)")
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


def count_tokens(pattern: str | Sequence[str], markers: bool = False) -> int:
    """Whitespace tokens in all files of ``pattern`` (bilm-tf's ``n_train_tokens``); with
    ``markers`` each sentence (non-empty line) counts one more, its ``</S>`` target."""
    total = 0
    for path in resolve_files(pattern):
        with open(path, encoding="utf-8", errors="replace") as f:
            if markers:
                total += sum(len(tokens) + 1 for tokens in map(str.split, f) if tokens)
            else:
                total += sum(len(line.split()) for line in f)
    return total


def process_shards(files: Sequence[str], index: int, count: int) -> list[tuple[str, bool]]:
    """The shards process ``index`` of ``count`` reads, each with whether it takes only every
    ``count``-th sentence of it (from the ``index``-th on).

    Whole files are dealt out round-robin while every process gets one; the ``len(files) % count``
    left over are split by sentences over all processes. Dealing them whole would give some
    processes one shard more than others: with equal shards, those would see each of their
    sentences less often per epoch than the rest see theirs (the data replayed unevenly).
    """
    whole = len(files) - len(files) % count
    return [(f, False) for f in files[index:whole:count]] + [(f, True) for f in files[whole:]]


class SentenceStream:
    """Sentences (token lists with markers, in reading direction) in a seeded shard/sentence order.

    With ``loop`` it goes on epoch after epoch; without, it reads every sentence once and stops.
    ``process_index``/``process_count`` give each host its slice (:func:`process_shards`): whole
    shards dealt out while every process gets one, the remainder split sentence by sentence, so
    every process's epoch holds the same number of shards' worth of data.

    After :meth:`encode_with` each shard is encoded to int ids once, when it is loaded (markers
    included, in reading direction), and :meth:`next_ids` gives sentences as zero-copy id arrays;
    unknown tokens get ids in a new :class:`OovTable` per shard, which bounds its memory.
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
        max_targets: int | None = None,
    ):
        shards = process_shards(resolve_files(pattern), process_index, process_count)
        self.files = [f for f, _ in shards]
        self.split = [split for _, split in shards]  # per file: this process reads every count-th sentence
        self.seed, self.reverse, self.shuffle, self.loop = seed, reverse, shuffle, loop
        self.process_index, self.process_count = process_index, process_count
        # a bound on the targets read (a sentence of n tokens has n + 1): held-out subsets
        if max_targets is not None and (loop or shuffle):
            raise ValueError("max_targets bounds a single, ordered pass (loop=False, shuffle=False)")
        self.max_targets, self.n_targets = max_targets, 0
        self.epoch, self.shard_pos, self.sent_pos = 0, 0, 0
        self._loaded: tuple[int, int] | None = None
        self._sentences: list[list[str]] = []
        self._encoding: tuple[Vocabulary, VocabChars | None] | None = None
        self.table: OovTable | None = None  # the loaded shard's ids (after encode_with)
        self._ids = np.zeros(
            0, np.int32
        )  # the loaded shard, encoded: sentence k is _ids[_starts[k]:_ends[k]]
        self._starts = self._ends = np.zeros(0, np.int64)
        self._spans: tuple[list[int], list[int]] = ([], [])  # (start, end) in _ids by position
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
        shard = self._shard_order(self.epoch)[self.shard_pos]
        sentences = _read_shard(self.files[shard])
        if self.split[shard]:
            sentences = sentences[self.process_index :: self.process_count]
        n = len(sentences)
        if self._encoding is None:
            self._sentences = sentences
        else:
            self._encode(sentences)
        if self.shuffle:
            self._order = np.random.default_rng([self.seed, self.epoch, self.shard_pos, 1]).permutation(n)
        else:
            self._order = np.arange(n)
        if self._encoding is not None:  # each position's span as Python ints: next_ids is hot
            self._spans = (self._starts[self._order].tolist(), self._ends[self._order].tolist())
        self._loaded = key

    def encode_with(self, vocab: Vocabulary, chars: VocabChars | None) -> None:
        """From now on, hold shards as int ids of ``vocab`` (and character rows from ``chars``)."""
        self._encoding = (vocab, chars)
        self._loaded, self._sentences = None, []

    def _encode(self, sentences: list[list[str]]) -> None:
        vocab, chars = self._encoding
        table = OovTable(vocab, chars)
        lengths = np.fromiter((len(s) for s in sentences), np.int64, len(sentences)) + 2
        ends = np.cumsum(lengths)
        starts = ends - lengths
        ids = np.empty(int(ends[-1]) if len(ends) else 0, np.int32)
        bos, eos = table.encode([BOS, EOS])
        ids[starts], ids[ends - 1] = bos, eos
        inner = np.ones(len(ids), bool)
        inner[starts] = inner[ends - 1] = False
        ids[inner] = table.encode([t for s in sentences for t in s])
        if self.reverse:  # the whole shard backwards: each sentence reads </S> tn .. t1 <S>
            ids = ids[::-1].copy()
            starts, ends = len(ids) - ends, len(ids) - starts
        ids.flags.writeable = False  # rows hold views of it
        self.table, self._ids, self._starts, self._ends = table, ids, starts, ends

    def _advance(self) -> int:
        """The loaded shard's index of the next sentence; moves the position past it."""
        advanced = 0
        while True:
            self._load()
            if self.sent_pos < len(self._order):
                k = int(self._order[self.sent_pos])
                self.sent_pos += 1
                return k
            advanced += 1
            if advanced > len(self.files):
                raise ElmoError(f"{self.files[0]}: this process's shards hold no sentences")
            self.shard_pos, self.sent_pos = self.shard_pos + 1, 0
            if self.shard_pos == len(self.files):
                if not self.loop:
                    self.shard_pos, self.sent_pos = self.shard_pos - 1, len(self._order)
                    raise StopIteration
                self.epoch, self.shard_pos = self.epoch + 1, 0

    def __iter__(self) -> Iterator[list[str]]:
        return self

    def _bound(self, n_targets: int) -> None:
        """Stop before a sentence that would take the targets read past ``max_targets``."""
        if self.n_targets and self.n_targets + n_targets > self.max_targets:
            raise StopIteration
        self.n_targets += n_targets

    def __next__(self) -> list[str]:
        k = self._advance()
        if self.max_targets is not None:
            n = self._ends[k] - self._starts[k] - 1 if self._encoding else len(self._sentences[k]) + 1
            self._bound(int(n))
        if self._encoding is not None:
            return [self.table.token(int(i)) for i in self._ids[self._starts[k] : self._ends[k]]]
        tokens = self._sentences[k]
        if self.reverse:
            return [EOS, *tokens[::-1], BOS]
        return [BOS, *tokens, EOS]

    def next_ids(self) -> tuple[np.ndarray, OovTable]:
        """The next sentence as ids (a read-only view, markers included) and the table they index."""
        if self._encoding is None:
            raise ValueError("next_ids needs encode_with first")
        pos = self.sent_pos
        if self._loaded is not None and pos < len(self._order):  # the common case, kept short
            self.sent_pos = pos + 1
        else:
            self._advance()
            pos = self.sent_pos - 1
        start, end = self._spans[0][pos], self._spans[1][pos]
        if self.max_targets is not None:
            self._bound(end - start - 1)
        return self._ids[start:end], self.table

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "shard_pos": self.shard_pos, "sent_pos": self.sent_pos}

    def load_state_dict(self, d: dict) -> None:
        self.epoch, self.shard_pos, self.sent_pos = int(d["epoch"]), int(d["shard_pos"]), int(d["sent_pos"])
        self._loaded = None


@dataclass(frozen=True)
class WindowPosition:
    """A :class:`WindowStream` position taken between windows; the row tails are shared, not copied
    (the stream never changes an array it handed out), so taking one per step costs next to nothing."""

    sentences: dict
    rows: tuple[np.ndarray | None, ...]
    table: OovTable
    exhausted: bool

    def to_dict(self) -> dict:
        """The JSON state: the sentence stream's position and each row's unfinished sentence as tokens."""
        token = self.table.token
        rows = [[token(int(i)) for i in r] if r is not None else None for r in self.rows]
        return {"sentences": dict(self.sentences), "rows": rows, "exhausted": self.exhausted}


class WindowStream:
    """bilm-tf's ``_get_batch`` over a :class:`SentenceStream`: windows ``[B, U]`` row by row.

    Works on int ids (see :meth:`SentenceStream.next_ids`): each row's unfinished sentence is an id
    array, a window a few slice copies per row. When the sentences run out (evaluation), the last
    windows are returned with ``mask`` False where no data is left, instead of being dropped as
    bilm-tf does.
    """

    def __init__(
        self,
        sentences: SentenceStream,
        vocab: Vocabulary,
        batch_size: int,
        unroll_steps: int,
        batcher: Batcher | None,
        *,
        chars: VocabChars | None = None,
    ):
        self.sentences, self.vocab, self.batcher = sentences, vocab, batcher
        self.batch_size, self.unroll_steps = batch_size, unroll_steps
        if batcher is not None and chars is None:
            chars = vocab_chars(vocab, batcher.max_characters_per_token)
        self.chars = chars if batcher is not None else None
        sentences.encode_with(vocab, self.chars)
        # each row's unconsumed sentence tail, as ids into self.table
        self.rows: list[np.ndarray | None] = [None] * batch_size
        self.table = OovTable(vocab, self.chars)
        self.exhausted = False

    def __iter__(self) -> Iterator[Window]:
        return self

    def _switch_table(self, table: OovTable, held: Sequence[np.ndarray]) -> None:
        """Re-encode the row tails and ``held`` (filled in place) from ``self.table`` into ``table``.

        A new shard brings a new table; only the unknown tokens still in use move over.
        """
        old, n_vocab = self.table, self.table.n_vocab
        self.table = table
        arrays = [r for r in self.rows if r is not None] + list(held)
        if not old.tokens or not arrays:
            return
        used = np.unique(np.concatenate([a.reshape(-1) for a in arrays]))
        used = used[used >= n_vocab]
        if not len(used):
            return
        new_ids = table.add([old.token(int(i)) for i in used])

        def remap(a: np.ndarray, copy: bool) -> np.ndarray:
            unknown = a >= n_vocab
            if unknown.any():
                a = a.copy() if copy else a
                a[unknown] = new_ids[np.searchsorted(used, a[unknown])]
            return a

        # row tails are copied, never changed: positions taken earlier share them
        self.rows = [remap(r, copy=True) if r is not None else None for r in self.rows]
        for a in held:
            remap(a, copy=False)

    def __next__(self) -> Window:
        b, u = self.batch_size, self.unroll_steps
        inputs = np.full((b, u), -1, np.int32)
        targets = np.full((b, u), -1, np.int32)
        filled = np.zeros(b, np.int64)
        rows = self.rows
        next_ids = self.sentences.next_ids
        for i in range(b):
            pos = 0
            cur = rows[i]
            row_in, row_tg = inputs[i], targets[i]
            while pos < u:
                if cur is None or len(cur) <= 1:
                    if self.exhausted:
                        cur = None
                        break
                    try:
                        cur, table = next_ids()
                    except StopIteration:
                        self.exhausted = True
                        cur = None
                        break
                    if table is not self.table:
                        rows[i] = None
                        self._switch_table(table, (inputs, targets))
                        rows = self.rows
                n = len(cur) - 1
                if n > u - pos:
                    n = u - pos
                row_in[pos : pos + n] = cur[:n]
                row_tg[pos : pos + n] = cur[1 : n + 1]
                cur = cur[n:]
                pos += n
            rows[i] = cur
            filled[i] = pos
        if self.exhausted and not filled.any():
            raise StopIteration
        mask = np.arange(u) < filled[:, None]
        word = self.table.word_ids
        token_ids = np.where(mask, word(inputs), 0).astype(np.int32)
        target_ids = np.where(mask, word(targets), 0).astype(np.int32)
        return Window(token_ids, target_ids, mask, inputs, self.table)

    def position(self) -> WindowPosition:
        """The current position, cheaply (no strings): :meth:`WindowPosition.to_dict` is the state."""
        return WindowPosition(self.sentences.state_dict(), tuple(self.rows), self.table, self.exhausted)

    def state_dict(self) -> dict:
        """The position: the sentence stream's and each row's unfinished sentence as tokens."""
        return self.position().to_dict()

    def load_state_dict(self, d: dict) -> None:
        self.sentences.load_state_dict(d["sentences"])
        rows = d["rows"]
        if len(rows) != self.batch_size:
            raise ElmoError(
                f"checkpoint data position has {len(rows)} rows but this run has {self.batch_size}; "
                "resume with the same batch_size and number of devices"
            )
        self.table = OovTable(self.vocab, self.chars)
        self.rows = [self.table.encode(list(r)) if r is not None else None for r in rows]
        self.exhausted = bool(d.get("exhausted", False))


@dataclass(frozen=True)
class BidirectionalPosition:
    """A :class:`BidirectionalStream` position (see :class:`WindowPosition`)."""

    directions: tuple[WindowPosition, ...]

    def to_dict(self) -> dict:
        return {"directions": [d.to_dict() for d in self.directions]}


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
        max_targets: int | None = None,
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
                max_targets=max_targets,
            )
            return WindowStream(sentences, vocab, batch_size, unroll_steps, batcher)

        self.streams = [make(d) for d in range(N_DIRECTIONS)]

    def __iter__(self) -> Iterator[tuple[Window, Window]]:
        return self

    def __next__(self) -> tuple[Window, Window]:
        forward, backward = [next(s) for s in self.streams]
        return forward, backward

    def position(self) -> BidirectionalPosition:
        """Both directions' positions, cheaply; ``.to_dict()`` is :meth:`state_dict`."""
        return BidirectionalPosition(tuple(s.position() for s in self.streams))

    def state_dict(self) -> dict:
        return self.position().to_dict()

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
    chars = vocab_chars(vocab, batcher.max_characters_per_token) if batcher is not None else None
    table = OovTable(vocab, chars)
    out = []
    for direction in range(N_DIRECTIONS):
        inputs = np.full((rows, length), -1, np.int32)
        targets = np.full((rows, length), -1, np.int32)
        for i, sent in enumerate(sentences):
            ids = table.encode([EOS, *sent[::-1], BOS] if direction == 1 else [BOS, *sent, EOS])
            inputs[i, : len(ids) - 1], targets[i, : len(ids) - 1] = ids[:-1], ids[1:]
        mask = inputs >= 0
        token_ids = np.where(mask, table.word_ids(inputs), 0).astype(np.int32)
        out.append(
            Window(
                token_ids, np.where(mask, table.word_ids(targets), 0).astype(np.int32), mask, inputs, table
            )
        )
    return out[0], out[1]
