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
import shutil
import sys
from collections import Counter, deque
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

import numpy as np

from elmojax.data.readers import ReadCounts, ReadOptions, read_dataset, read_files
from elmojax.data.tokenizers import DEFAULT, LONG_TOKEN_BYTES, get_tokenizer, tokenize_chunk
from elmojax.data.vocab import SPECIALS
from elmojax.errors import ElmoError, InputTextError
from elmojax.fileio import check_input_file, check_writable_dir

#: what prepare writes into its output folder
OUTPUTS = frozenset({"train", "heldout", "vocab.txt", "stats.json", "tokenizer.json"})
N_BUCKETS = 64  # fixed so that the shuffle depends only on the input and the seed
#: share of long tokens above which prepare warns
LONG_TOKEN_WARN = 0.005
#: texts are handed to the tokenizer workers in chunks of about this many characters (or texts)
CHUNK_CHARS = 1 << 18
CHUNK_TEXTS = 4096


def _write_shards(
    lines: Iterable[str], directory: Path, per_shard: int, count: bool = False
) -> tuple[int, int, int, Counter]:
    """Write ``lines`` into numbered shards; returns (sentences, tokens, shards, token counts if
    ``count``)."""
    directory.mkdir(parents=True, exist_ok=True)
    n_sent = n_tok = n_shards = 0
    counter: Counter = Counter()
    out = None
    try:
        for line in lines:
            if n_sent % per_shard == 0:
                if out is not None:
                    out.close()
                out = open(directory / f"shard_{n_shards:05d}.txt", "w", encoding="utf-8", newline="\n")
                n_shards += 1
            out.write(line + "\n")
            if count:
                counter.update(line.split(" "))
            n_sent += 1
            n_tok += line.count(" ") + 1
    finally:
        if out is not None:
            out.close()
    return n_sent, n_tok, n_shards, counter


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
    (default: every core); the output is the same for any number.
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
) -> dict:
    counts = ReadCounts()
    bucket_dir = tmp / "buckets"
    bucket_dir.mkdir()
    buckets = [
        open(bucket_dir / f"{b:02d}.txt", "w", encoding="utf-8", newline="\n") for b in range(N_BUCKETS)
    ]
    rng = np.random.default_rng(seed)
    draws = np.empty(0, dtype=np.int64)
    used = 0
    n_sentences = 0
    n_long = 0
    counter: Counter = Counter()  # every sentence's tokens; the held-out ones are taken out below
    try:
        texts = _input_texts(inputs, read_options, tfds, tfds_data_dir, hf_dataset, counts, progress)
        for lines, n_empty, chunk_counts, n_lng in tokenized_chunks(texts, tokenizer, lowercase, workers):
            counts.skipped_empty += n_empty
            counter.update(chunk_counts)
            n_long += n_lng
            picks = np.empty(len(lines), dtype=np.int64)
            at = 0
            while at < len(lines):  # the same draws, in the same order, however the texts were chunked
                if used == len(draws):
                    draws, used = rng.integers(0, N_BUCKETS, size=65_536), 0
                take = min(len(lines) - at, len(draws) - used)
                picks[at : at + take] = draws[used : used + take]
                at, used = at + take, used + take
            order = np.argsort(picks, kind="stable")
            bounds = np.searchsorted(picks[order], np.arange(N_BUCKETS + 1))
            for b in range(N_BUCKETS):
                if bounds[b + 1] > bounds[b]:
                    buckets[b].write("\n".join(lines[j] for j in order[bounds[b] : bounds[b + 1]]) + "\n")
            n_sentences += len(lines)
    finally:
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

    def shuffled() -> Iterator[str]:
        for b in range(N_BUCKETS):
            with open(bucket_dir / f"{b:02d}.txt", encoding="utf-8", newline="\n") as f:
                lines = f.read().split("\n")[:-1]
            order = np.random.default_rng([seed, b]).permutation(len(lines))
            for j in order:
                yield lines[j]

    stream = shuffled()
    held = (next(stream) for _ in range(n_heldout))
    n_held, n_held_tokens, n_held_shards, held_counter = _write_shards(
        held, tmp / "heldout", sentences_per_shard, count=True
    )
    counter.subtract(held_counter)
    n_train, n_train_tokens, n_train_shards, _ = _write_shards(stream, tmp / "train", sentences_per_shard)
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


def _chunks(texts: Iterable[str]) -> Iterator[list[str]]:
    chunk: list[str] = []
    size = 0
    for text in texts:
        chunk.append(text)
        size += len(text)
        if size >= CHUNK_CHARS or len(chunk) >= CHUNK_TEXTS:
            yield chunk
            chunk, size = [], 0
    if chunk:
        yield chunk


def tokenized_chunks(
    texts: Iterable[str], tokenizer: str, lowercase: bool, workers: int
) -> Iterator[tuple[list[str], int, dict[str, int], int]]:
    """:func:`~elmojax.data.tokenizers.tokenize_chunk` of every chunk of ``texts``, in order. With
    several workers the chunks go to a pool of processes (started only once a second chunk
    exists), at most two a worker in flight so that memory stays flat, while this process reads
    and writes."""
    chunks = _chunks(texts)
    head = [c for c in (next(chunks, None), next(chunks, None)) if c is not None]
    if workers == 1 or len(head) < 2:
        for chunk in [*head, *chunks]:
            yield tokenize_chunk(chunk, tokenizer, lowercase)
        return
    # spawn: safe beside threads (JAX, tqdm) and the same on every platform
    with multiprocessing.get_context("spawn").Pool(workers) as pool:
        pending: deque = deque()
        for chunk in _chain(head, chunks):
            pending.append(pool.apply_async(tokenize_chunk, (chunk, tokenizer, lowercase)))
            if len(pending) >= 2 * workers:
                yield pending.popleft().get()
        while pending:
            yield pending.popleft().get()


def _chain(head: list[list[str]], rest: Iterator[list[str]]) -> Iterator[list[str]]:
    yield from head
    yield from rest
