"""Corpus preparation: text, CSV/TSV, JSON Lines, Parquet (compressed or not), or a dataset on disk
(TFDS, Hugging Face) -> shards and vocabulary.

``prepare_corpus`` streams its inputs once (:mod:`elmojax.data.readers`), splits them into sentences
and tokens (:mod:`elmojax.data.tokenize`), shuffles the sentences with a seeded external shuffle
(random buckets on disk, each shuffled in memory, so the corpus is never held in memory) and writes::

    OUT/train/shard_00000.txt ...    one tokenized sentence a line, tokens separated by one space
    OUT/heldout/shard_00000.txt ...  the held-out share, same format
    OUT/vocab.txt                    <S>, </S>, <UNK>, then training tokens by descending count
    OUT/stats.json                   sentence and token counts, vocabulary size, skipped lines
"""

from __future__ import annotations

import ctypes
import json
import multiprocessing
import os
import queue
import shutil
import sys
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import BinaryIO

import numpy as np

from elmojax.data.dealing import N_BUCKETS, Failure, deal_chunk, seed_key, work
from elmojax.data.readers import ReadCounts, ReadOptions, read_dataset, read_files
from elmojax.data.tokenizers import DEFAULT, LONG_TOKEN_BYTES, get_tokenizer
from elmojax.data.vocab import SPECIALS
from elmojax.errors import ElmoError, InputTextError
from elmojax.fileio import check_input_file, check_writable_dir

#: what prepare writes into its output folder
OUTPUTS = frozenset({"train", "heldout", "vocab.txt", "stats.json", "tokenizer.json"})
#: share of long tokens above which prepare warns
LONG_TOKEN_WARN = 0.005
#: texts are handed to the tokenizer workers in chunks of about this many characters (or texts)
CHUNK_CHARS = 1 << 17  # small enough that the last chunks leave no core idle for long
CHUNK_TEXTS = 2048


class _Shards:
    """Numbered shards of ``per_shard`` sentences in ``directory``, written a block of lines at a
    time; counts the sentences, tokens and shards."""

    def __init__(self, directory: Path, per_shard: int) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.directory, self.per_shard = directory, per_shard
        self.n_sentences = self.n_tokens = self.n_shards = 0
        self.out: BinaryIO | None = None

    def write(self, lines: list[bytes]) -> None:
        """Append ``lines`` (UTF-8 sentences without their newline), opening shards as they fill."""
        at = 0
        while at < len(lines):
            if self.n_sentences % self.per_shard == 0:
                self.close()
                self.out = open(self.directory / f"shard_{self.n_shards:05d}.txt", "wb")
                self.n_shards += 1
            take = min(len(lines) - at, self.per_shard - self.n_sentences % self.per_shard)
            data = b"\n".join(lines[at : at + take]) + b"\n"
            self.out.write(data)
            self.n_tokens += data.count(b" ") + take
            self.n_sentences += take
            at += take

    def close(self) -> None:
        if self.out is not None:
            self.out.close()
            self.out = None


def _shuffled_buckets(bucket_dir: Path, seed: int) -> Iterator[list[bytes]]:
    """Each bucket's lines in a seeded random order, bucket after bucket: the shuffled corpus, one
    bucket (a 64th of it) in memory at a time."""
    for b in range(N_BUCKETS):
        lines = (bucket_dir / f"{b:02d}.txt").read_bytes().split(b"\n")[:-1]
        order = np.random.default_rng([seed, b]).permutation(len(lines))
        yield [lines[j] for j in order.tolist()]


def prepare_corpus(
    inputs: Sequence[str | Path],
    out: str | Path,
    *,
    column: str | None = None,
    heldout_fraction: float = 0.01,
    sentences_per_shard: int = 100_000,
    seed: int = 0,
    min_count: int = 1,
    lowercase: bool = False,
    tokenized: bool = False,
    tfds: str | None = None,
    text_key: str | None = None,
    tfds_data_dir: str | None = None,
    hf_dataset: str | None = None,
    errors: str = "strict",
    progress: bool = False,
    tokenizer: str | None = None,
    workers: int | None = None,
    chunk_chars: int = CHUNK_CHARS,
    chunk_texts: int = CHUNK_TEXTS,
) -> dict:
    """Tokenize, shuffle and shard ``inputs`` into ``out``; write the vocabulary and ``stats.json``.

    Inputs are read in order, each by its suffix (:mod:`elmojax.data.readers`): ``.csv``/``.tsv``
    files (or any other file when ``column`` is given) as tables whose ``column`` holds the text,
    ``.jsonl``/``.json``/``.ndjson`` as JSON Lines with the text under ``text_key`` (dots reach
    into nested objects), ``.parquet``/``.arrow`` with the text in ``column``, other files as one
    paragraph a line; text, CSV and JSON Lines may be compressed (``.gz``, ``.bz2``, ``.xz``,
    ``.zst``). Then, with ``tfds`` (``NAME[:SPLIT]``), the ``text_key`` feature of a TFDS dataset
    already on disk, and with ``hf_dataset`` (``PATH[:SPLIT]``), the ``text_key`` field of a
    Hugging Face dataset on disk (:mod:`elmojax.data.hf_dataset`). The same texts in the same order
    give the same bytes, whatever their format. Lines without tokens are skipped and counted. The
    shuffle and the held-out split depend only on the inputs and ``seed``. Everything is built in a
    temporary folder beside ``out`` and put in its place with one rename at the end (:func:`flip`),
    so an interrupted run leaves an earlier preparation intact, never new shards beside an old
    vocabulary; a folder holding other files too is built inside and its outputs replaced in turn.
    Returns the statistics written to ``stats.json``.

    ``tokenizer`` names the tokenizer (:mod:`elmojax.data.tokenizers`; default ``elmojax``,
    ``tokenized`` is ``whitespace``); it is recorded in ``stats.json`` and ``tokenizer.json`` (with
    ``lowercase``) so that embedding cuts raw text the same way. ``workers`` processes tokenize
    (default: every core), handed chunks of about ``chunk_chars`` characters or ``chunk_texts``
    texts; the output is the same for any number and any chunk size.
    """
    if not 0.0 <= heldout_fraction < 1.0:
        raise ElmoError(f"`heldout_fraction` {heldout_fraction}: must be at least 0 and below 1")
    if sentences_per_shard < 1:
        raise ElmoError(f"`sentences_per_shard` {sentences_per_shard}: must be at least 1")
    if min_count < 1:
        raise ElmoError(f"`min_count` {min_count}: must be at least 1")
    if errors not in ("strict", "replace"):
        raise ElmoError(f"`errors` {errors}: use strict or replace")
    if not inputs and not tfds and not hf_dataset:
        raise ElmoError("give at least one input file, a `tfds` dataset or an `hf_dataset`")
    if tokenized and tokenizer not in (None, "whitespace"):
        raise ElmoError(f"`tokenized` is the whitespace tokenizer; it cannot go with `tokenizer` {tokenizer}")
    tokenizer = "whitespace" if tokenized else (tokenizer or DEFAULT)
    get_tokenizer(tokenizer)  # an unknown name or a missing extra fails now, in one line
    workers = default_workers() if workers is None else workers
    if workers < 1:
        raise ElmoError(f"`workers` {workers}: must be at least 1")
    if chunk_chars < 1 or chunk_texts < 1:
        raise ElmoError(f"`chunk_chars` {chunk_chars}, `chunk_texts` {chunk_texts}: must be at least 1")

    out = check_writable_dir(out).resolve()
    # a folder holding only prepare's outputs is built beside it and flipped in one rename; one
    # holding other files too (say --out .) is built inside, and its outputs replaced one by one
    whole = set(os.listdir(out)) <= OUTPUTS and os.access(out.parent, os.W_OK) and out.parent != out
    base, prefix = (out.parent, f".{out.name}.prepare-") if whole else (out, ".prepare-tmp-")
    for stale in base.glob(prefix + "*"):
        shutil.rmtree(stale, ignore_errors=True)
    tmp = base / f"{prefix}{os.getpid()}"
    tmp.mkdir()
    try:
        stats = _prepare_into(
            tmp, inputs, ReadOptions(column, text_key, errors), heldout_fraction, sentences_per_shard,
            seed, min_count, lowercase, tokenizer, workers, tfds, tfds_data_dir, hf_dataset, progress,
            chunk_chars=chunk_chars, chunk_texts=chunk_texts,
        )  # fmt: skip
        if whole:
            flip(tmp, out, base / f"{prefix}old-{os.getpid()}")
        else:
            for name in ("train", "heldout"):
                if (out / name).exists():
                    os.replace(out / name, tmp / f"old-{name}")
                os.replace(tmp / name, out / name)
            for name in ("vocab.txt", "stats.json", "tokenizer.json"):
                os.replace(tmp / name, out / name)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.rmtree(base / f"{prefix}old-{os.getpid()}", ignore_errors=True)
    return stats


def exchange(a: Path, b: Path) -> bool:
    """Swap two paths in one atomic step (Linux renameat2 RENAME_EXCHANGE); False where the
    system or the file system cannot."""
    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd, rename_exchange = -100, 2
    return renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0


def flip(new: Path, out: Path, old: Path) -> None:
    """Put the folder ``new`` in the place of ``out`` in one rename: the shards, vocabulary and
    statistics are all old or all new, whenever the process stops. The old folder ends at ``new``
    (or ``old``, where the file system cannot exchange and two renames are needed)."""
    if not out.exists():
        os.rename(new, out)
    elif not exchange(new, out):
        os.rename(out, old)  # a stop between these two leaves the earlier preparation whole at `old`
        os.rename(new, out)


def _input_texts(
    inputs: Sequence[str | Path],
    options: ReadOptions,
    tfds: str | None,
    tfds_data_dir: str | None,
    hf_dataset: str | None,
    counts: ReadCounts,
    progress: bool,
) -> Iterator[str]:
    """Every input's texts in order: the files, the TFDS dataset, the Hugging Face dataset. All are
    opened and checked before the first text is read."""
    sources = [read_files([check_input_file(p) for p in inputs], options, counts, progress)]
    if tfds:
        sources.append(read_dataset("tfds", tfds, options, tfds_data_dir, counts, progress))
    if hf_dataset:
        sources.append(read_dataset("hf", hf_dataset, options, None, counts, progress))
    for texts in sources:
        yield from texts


def _prepare_into(
    tmp: Path,
    inputs: Sequence[str | Path],
    read_options: ReadOptions,
    heldout_fraction: float,
    sentences_per_shard: int,
    seed: int,
    min_count: int,
    lowercase: bool,
    tokenizer: str,
    workers: int,
    tfds: str | None,
    tfds_data_dir: str | None,
    hf_dataset: str | None,
    progress: bool,
    *,
    chunk_chars: int = CHUNK_CHARS,
    chunk_texts: int = CHUNK_TEXTS,
) -> dict:
    counts = ReadCounts()
    bucket_dir = tmp / "buckets"
    bucket_dir.mkdir()
    buckets = [open(bucket_dir / f"{b:02d}.txt", "wb") for b in range(N_BUCKETS)]
    n_sentences = 0
    counter: Counter = Counter()  # every sentence's tokens; the held-out ones are taken out below
    texts = _input_texts(inputs, read_options, tfds, tfds_data_dir, hf_dataset, counts, progress)
    dealt = tokenized_chunks(
        texts, tokenizer, lowercase, workers, seed, counter, chunk_chars=chunk_chars, chunk_texts=chunk_texts
    )
    try:
        for parts, n_lines, n_empty in dealt:
            counts.skipped_empty += n_empty
            n_sentences += n_lines
            for f, part in zip(buckets, parts, strict=True):
                if part:
                    f.write(part)
    finally:
        dealt.close()  # a failure here (a full disk) stops the workers now, not when the traceback goes
        for f in buckets:
            f.close()
    if n_sentences == 0:
        where = ", ".join(
            [*map(str, inputs), *(f"`{k}` {v}" for k, v in (("tfds", tfds), ("hf_dataset", hf_dataset)) if v)]
        )
        raise InputTextError(f"{where}: no text found (every line was empty); check the input and `column`")

    n_heldout = int(round(n_sentences * heldout_fraction))
    if heldout_fraction > 0 and n_sentences >= 2:
        n_heldout = max(n_heldout, 1)
    n_heldout = min(n_heldout, n_sentences - 1)

    limit = LONG_TOKEN_BYTES  # counted over every sentence, the held-out ones too
    n_long = sum(c for t, c in counter.items() if len(t) > limit // 4 and len(t.encode("utf-8")) > limit)
    held, train = _Shards(tmp / "heldout", sentences_per_shard), _Shards(tmp / "train", sentences_per_shard)
    try:
        for lines in _shuffled_buckets(bucket_dir, seed):
            if held.n_sentences < n_heldout:  # the first sentences of the shuffled stream
                take = lines[: n_heldout - held.n_sentences]
                lines = lines[len(take) :]
                held.write(take)
                counter.subtract(Counter(b" ".join(take).decode("utf-8").split(" ")))
            train.write(lines)
    finally:
        held.close()
        train.close()
    n_held, n_held_tokens, n_held_shards = held.n_sentences, held.n_tokens, held.n_shards
    n_train, n_train_tokens, n_train_shards = train.n_sentences, train.n_tokens, train.n_shards
    shutil.rmtree(bucket_dir)

    for special in SPECIALS:
        counter.pop(special, None)
    vocab = [
        tok for tok, c in sorted(counter.items(), key=lambda kv: (-kv[1], kv[0])) if c >= max(min_count, 1)
    ]
    with open(tmp / "vocab.txt", "w", encoding="utf-8", newline="\n") as f:
        f.write("\n".join([*SPECIALS, *vocab]) + "\n")
    stats = {
        "n_train_sentences": n_train,
        "n_heldout_sentences": n_held,
        "n_train_tokens": n_train_tokens,
        "n_heldout_tokens": n_held_tokens,
        "vocab_size": len(SPECIALS) + len(vocab),
        "n_train_shards": n_train_shards,
        "n_heldout_shards": n_held_shards,
        "n_input_lines": counts.input_lines,
        "skipped_empty_lines": counts.skipped_empty,
        "lines_with_replaced_bytes": counts.replaced_lines,
        "seed": seed,
        "lowercase": lowercase,
        "tokenized": tokenizer == "whitespace",
        "tokenizer": tokenizer,
        "long_token_bytes": LONG_TOKEN_BYTES,
        "n_long_tokens": n_long,
    }
    n_tokens = n_train_tokens + n_held_tokens
    share = n_long / max(n_tokens, 1)
    if share > LONG_TOKEN_WARN:
        print(
            f"warning: {share:.1%} of the tokens ({n_long} of {n_tokens}) are longer than {LONG_TOKEN_BYTES} "
            "UTF-8 bytes and will be cut by the character CNN; choose a tokenizer for the language "
            "(docs/languages.md) or raise max_characters_per_token",
            file=sys.stderr,
        )
    (tmp / "stats.json").write_text(json.dumps(stats, indent=2) + "\n", encoding="utf-8")
    record = {"tokenizer": tokenizer, "lowercase": lowercase}
    (tmp / "tokenizer.json").write_text(json.dumps(record) + "\n", encoding="utf-8")
    return stats


def default_workers() -> int:
    """Every core this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def _chunks(texts: Iterable[str], chunk_chars: int, chunk_texts: int) -> Iterator[tuple[int, list[str]]]:
    """(index of the first text, texts) of chunks of about ``chunk_chars`` characters or
    ``chunk_texts`` texts."""
    chunk: list[str] = []
    start = size = 0
    for text in texts:
        chunk.append(text)
        size += len(text)
        if size >= chunk_chars or len(chunk) >= chunk_texts:
            yield start, chunk
            start, chunk, size = start + len(chunk), [], 0
    if chunk:
        yield start, chunk


def tokenized_chunks(
    texts: Iterable[str],
    tokenizer: str,
    lowercase: bool,
    workers: int,
    seed: int,
    counter: Counter,
    *,
    chunk_chars: int = CHUNK_CHARS,
    chunk_texts: int = CHUNK_TEXTS,
) -> Iterator[tuple[list[bytes], int, int]]:
    """:func:`~elmojax.data.dealing.deal_chunk` of every chunk of ``texts``, in order; when the
    iterator is done, ``counter`` holds the token counts of every chunk.

    With ``workers`` > 1 (and a second chunk), this process and ``workers - 1`` spawned ones deal:
    each spawned worker is kept two chunks ahead, and this process, between reading and writing,
    deals the chunks that find them all busy (so its share shrinks with its own work and nothing
    waits while the workers start). Each spawned worker keeps its own counts and sends them once
    at the end. At most a few chunks a worker are held, so memory stays flat."""
    key = seed_key(seed)
    chunks = _chunks(texts, chunk_chars, chunk_texts)
    head = [c for c in (next(chunks, None), next(chunks, None)) if c is not None]
    if workers == 1 or len(head) < 2:
        for start, chunk in [*head, *chunks]:
            yield deal_chunk(start, chunk, tokenizer, lowercase, key, counter)
        return
    ahead, most = 2 * (workers - 1), 4 * workers  # chunks at the workers; chunks not yet yielded
    with _Workers(workers - 1, tokenizer, lowercase, key) as pool:
        ready: dict[int, tuple] = {}
        done = 0
        for i, (start, chunk) in enumerate(_chain(head, chunks)):
            while (got := pool.take(block=i - done >= most and done not in ready)) is not None:
                ready[got[0]] = got[1]
            if pool.in_flight < ahead:
                pool.send(i, (start, chunk))
            else:
                ready[i] = deal_chunk(start, chunk, tokenizer, lowercase, key, counter)
            while done in ready:
                yield ready.pop(done)
                done += 1
        while pool.in_flight:  # the input is read: take back the chunks no worker has begun
            if (task := pool.steal()) is not None:
                ready[task[0]] = deal_chunk(*task[1:], tokenizer, lowercase, key, counter)
            else:
                j, result = pool.take(block=True)
                ready[j] = result
            while done in ready:
                yield ready.pop(done)
                done += 1
        for worker_counts in pool.finish():
            counter.update(worker_counts)


def _chain(head: list, rest: Iterator) -> Iterator:
    yield from head
    yield from rest


class _Workers:
    """``n`` spawned worker processes (spawn: safe beside threads such as JAX's and tqdm's, and the
    same on every platform) running :func:`~elmojax.data.dealing.work`: chunks go on one shared
    queue (a busy or slow worker takes fewer), results come back tagged with the chunk's number."""

    def __init__(self, n: int, tokenizer: str, lowercase: bool, key: int) -> None:
        ctx = multiprocessing.get_context("spawn")
        self.tasks, self.results = ctx.Queue(), ctx.Queue()
        self.procs = [
            ctx.Process(target=work, args=(self.tasks, self.results, tokenizer, lowercase, key), daemon=True)
            for _ in range(n)
        ]
        for p in self.procs:
            p.start()
        self.in_flight = 0  # chunks sent whose results have not been taken

    def __enter__(self) -> _Workers:
        return self

    def send(self, i: int, task: tuple[int, list[str]]) -> None:
        self.tasks.put((i, *task))
        self.in_flight += 1

    def steal(self) -> tuple[int, int, list[str]] | None:
        """A chunk sent but not yet begun by a worker, taken back; None where there is none."""
        try:
            task = self.tasks.get_nowait()
        except queue.Empty:  # none waiting, or an idle worker is waiting for one
            return None
        self.in_flight -= 1
        return task

    def take(self, block: bool) -> tuple[int, tuple] | None:
        """(chunk number, result) of the next chunk any worker finished; None if none has and not
        ``block`` (or none is in flight)."""
        if not self.in_flight:
            return None
        if block:
            out = self._next()
        else:
            try:
                out = self._check(self.results.get_nowait())
            except queue.Empty:
                return None
        self.in_flight -= 1
        return out

    def _check(self, out: object) -> tuple:
        if isinstance(out, Failure):
            raise out.error
        return out  # type: ignore[return-value]

    def _next(self) -> tuple:
        """The next message of any worker; its error raised here; one line where one died."""
        while True:
            try:
                return self._check(self.results.get(timeout=1.0))
            except queue.Empty:
                dead = [p for p in self.procs if p.exitcode not in (None, 0)]
                if not dead:
                    continue
            try:  # what a stopped worker sent is in the pipe already
                return self._check(self.results.get(timeout=1.0))
            except queue.Empty:
                raise ElmoError(
                    f"a tokenizer worker stopped (exit status {dead[0].exitcode}), perhaps out of memory; "
                    "run again with fewer --workers"
                ) from None

    def finish(self) -> list[Counter]:
        """Every worker's token counts (each worker takes one None and stops); the workers end."""
        for _ in self.procs:
            self.tasks.put(None)
        return [self._next()[1] for _ in self.procs]

    def __exit__(self, *exc: object) -> None:
        if exc[0] is not None:
            for p in self.procs:
                if p.is_alive():
                    p.terminate()
        self.tasks.cancel_join_thread()  # nothing more is read from it
        self.tasks.close()
        for p in self.procs:
            p.join()
