"""Corpus preparation: raw text, a CSV/TSV column or a local TFDS dataset -> shards and vocabulary.

``prepare_corpus`` streams its inputs once, splits them into sentences and tokens, shuffles the
sentences with a seeded external shuffle (random buckets on disk, each shuffled in memory, so the
corpus is never held in memory) and writes::

    OUT/train/shard_00000.txt ...    one tokenized sentence a line, tokens separated by one space
    OUT/heldout/shard_00000.txt ...  the held-out share, same format
    OUT/vocab.txt                    <S>, </S>, <UNK>, then training tokens by descending count
    OUT/stats.json                   sentence and token counts, vocabulary size, skipped lines

Tokenizer (deterministic, documented in the README): text is split into numbers (``3.5``,
``1,000``), dotted abbreviations (``U.S.``, ``e.g.``), words with inner apostrophes or hyphens
(``don't``, ``e-mail``; letters, digits, ``_`` and combining marks), runs of ``.``/``!``/``?``/``…``,
and any other single non-space character. A sentence ends at a run of ``.``/``!``/``?``/``…`` that is
followed by whitespace or the end of the text (closing quotes and brackets right after it stay in the
sentence), except a ``.`` right after a known abbreviation (``Mr``, ``Dr``, ``Jan`` …) or a single
letter (an initial), which joins that token (``Mr.``) instead.
"""

from __future__ import annotations

import csv
import functools
import json
import os
import re
import shutil
import sys
import unicodedata
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from elmojax.errors import ElmoError, InputTextError
from elmojax.fileio import check_input_file, check_writable_dir, read_text_lines
from elmojax.vocab import SPECIALS

N_BUCKETS = 64  # fixed so that the shuffle depends only on the input and the seed
_ENDERS = frozenset(".!?…")
_CLOSERS = frozenset("\"'”’)]}»")
ABBREVIATIONS = frozenset(
    "mr mrs ms dr prof sr jr st mt vs etc inc ltd corp jan feb mar apr jun jul aug sep sept oct nov dec "
    "gen gov sen rep rev hon lt col capt sgt cmdr fig dept univ approx".split()
)


@functools.cache
def _token_pattern() -> re.Pattern[str]:
    # Combining marks (accents, Indic vowel signs) are not \w in Python's re; keep them inside words.
    marks: list[str] = []
    start = prev = None
    for cp in range(sys.maxunicode + 1):
        c = chr(cp)
        if unicodedata.category(c).startswith("M") and not c.isalnum() and c != "_":
            if prev is not None and cp == prev + 1:
                prev = cp
                continue
            if start is not None:
                marks.append(_range(start, prev))
            start = prev = cp
    if start is not None:
        marks.append(_range(start, prev))
    w = "[\\w" + "".join(marks) + "]"
    return re.compile(
        r"\d+(?:[.,:]\d+)+"  # 3.5  1,000  10:30
        r"|(?:[^\W\d_]\.){2,}"  # U.S.  e.g.  a.m.
        rf"|{w}+(?:['’\-]{w}+)*"  # don't  e-mail  naïve
        r"|[.!?…]+"
        r"|\S"
    )


def _range(a: int, b: int) -> str:
    return re.escape(chr(a)) if a == b else f"{re.escape(chr(a))}-{re.escape(chr(b))}"


def split_sentences(text: str) -> list[list[str]]:
    """Tokenize ``text`` and split it into sentences; returns one token list per non-empty sentence."""
    sentences: list[list[str]] = []
    current: list[str] = []
    matches = list(_token_pattern().finditer(text))
    i = 0
    while i < len(matches):
        m = matches[i]
        tok = m.group()
        if tok[0] in _ENDERS and all(c in _ENDERS for c in tok):
            prev = matches[i - 1] if i > 0 else None
            if (
                tok == "."
                and current
                and prev is not None
                and prev.end() == m.start()
                and (
                    current[-1].lower() in ABBREVIATIONS or (len(current[-1]) == 1 and current[-1].isalpha())
                )
            ):
                current[-1] += "."
                i += 1
                continue
            current.append(tok)
            end = m.end()
            while (
                i + 1 < len(matches) and matches[i + 1].start() == end and matches[i + 1].group() in _CLOSERS
            ):
                i += 1
                current.append(matches[i].group())
                end = matches[i].end()
            if end == len(text) or text[end].isspace():
                sentences.append(current)
                current = []
            i += 1
            continue
        current.append(tok)
        i += 1
    if current:
        sentences.append(current)
    return sentences


def sentences_from_text(text: str, *, tokenized: bool = False, lowercase: bool = False) -> list[list[str]]:
    """The sentences ``prepare`` makes of one input line or text field.

    With ``tokenized`` the text is one sentence whose tokens are its whitespace-separated words, kept
    as they are; otherwise it is tokenized and split as the module docstring describes. NUL bytes
    count as spaces. Returns an empty list for text without tokens.
    """
    text = text.replace("\x00", " ")
    if lowercase:
        text = text.lower()
    if tokenized:
        tokens = text.split()
        return [tokens] if tokens else []
    return split_sentences(text)


@dataclass
class _Counts:
    input_lines: int = 0
    skipped_empty: int = 0
    replaced_lines: int = 0


class _Progress:
    """Byte-count progress over all inputs (tqdm), or nothing."""

    def __init__(self, total: int | None, enabled: bool, unit: str = "B") -> None:
        from tqdm import tqdm

        self.bar = tqdm(
            total=total, disable=not enabled, unit=unit, unit_scale=unit == "B", desc="reading", leave=False
        )

    def update(self, n: int) -> None:
        self.bar.update(n)

    def close(self) -> None:
        self.bar.close()


def _decoded_lines(
    path: Path, errors: str, counts: _Counts, progress: _Progress
) -> Iterator[tuple[int, str]]:
    """(line number, text) of each physical line, counting replaced lines and advancing the bar."""
    for line in read_text_lines(path, errors):
        progress.update(line.n_bytes)
        counts.replaced_lines += line.replaced
        yield line.number, line.text


def _delimiter(path: Path, header_line: str) -> str:
    suffix = path.suffix.lower()
    if suffix in (".tsv", ".tab"):
        return "\t"
    if suffix == ".csv":
        return ","
    return "\t" if "\t" in header_line and "," not in header_line else ","


def _is_table(path: Path) -> bool:
    return path.suffix.lower() in (".csv", ".tsv", ".tab")


def _table_header(path: Path, first_line: str, column: str | None) -> tuple[str, int, int]:
    """(delimiter, index of ``column``, number of columns); errors list the columns found."""
    delimiter = _delimiter(path, first_line)
    header = [h.strip() for h in next(csv.reader([first_line], delimiter=delimiter), [])]
    found = ", ".join(repr(h) for h in header) or "none"
    if column is None:
        raise InputTextError(
            f"{path}: is a CSV/TSV file; pass --column NAME to choose the text column "
            f"(columns found: {found})"
        )
    if column not in header:
        raise InputTextError(
            f"{path}: no column {column!r}; columns found: {found}. Choose one with --column"
        )
    return delimiter, header.index(column), len(header)


def _check_table(path: Path, column: str | None) -> None:
    """Validate a table's header before any work starts, so a typo in --column fails at once."""
    with open(path, "rb") as f:
        first = f.readline().decode("utf-8", errors="replace").removeprefix("\ufeff")
    _table_header(path, first, column)


def _csv_texts(
    path: Path, column: str | None, errors: str, counts: _Counts, progress: _Progress
) -> Iterator[str]:
    lines = _decoded_lines(path, errors, counts, progress)
    delimiter, index, n_columns = _table_header(path, next(lines)[1], column)  # non-empty: checked
    physical = [1]  # last physical line handed to the csv reader

    def feed() -> Iterator[str]:
        for lineno, text in lines:
            physical[0] = lineno
            yield text

    reader = csv.reader(feed(), delimiter=delimiter)
    n_rows = 0
    while True:
        row_start = physical[0] + 1
        try:
            row = next(reader)
        except StopIteration:
            break
        except csv.Error as e:
            raise InputTextError(
                f"{path}: line {row_start}: malformed CSV ({e}); check the quoting of this row"
            ) from None
        if not row or (len(row) == 1 and not row[0].strip()):
            counts.skipped_empty += 1
            continue
        n_rows += 1
        if len(row) != n_columns:
            raise InputTextError(
                f"{path}: line {row_start}: {len(row)} fields where the header has {n_columns}; "
                "fix the row or quote fields that contain the delimiter"
            )
        counts.input_lines += 1
        yield row[index]
    if n_rows == 0:
        raise InputTextError(f"{path}: has a header but no rows of text")


def _text_lines(path: Path, errors: str, counts: _Counts, progress: _Progress) -> Iterator[str]:
    for _, line in _decoded_lines(path, errors, counts, progress):
        counts.input_lines += 1
        yield line


def _tfds_texts(spec: str, text_key: str | None, data_dir: str | None, counts: _Counts) -> Iterator[str]:
    """Text fields of a TFDS dataset that is already on disk; never downloads."""
    try:
        import tensorflow_datasets as tfds
    except ImportError:
        raise ElmoError(
            f"--tfds {spec}: TensorFlow Datasets is not installed; pip install 'elmojax[tfds]'"
        ) from None
    name, _, split = spec.partition(":")
    split = split or "train"
    try:
        source = tfds.data_source(name, split=split, data_dir=data_dir, download=False)
    except Exception as e:  # tfds raises many types (not found, not built, wrong format)
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ElmoError(
            f"--tfds {spec}: cannot read this dataset from disk ({reason}); build it first "
            f"(e.g. `tfds build {name} --file_format=array_record`) — elmojax never downloads"
        ) from None
    for i, example in enumerate(source):
        if i == 0:
            text_fields = [k for k, v in example.items() if isinstance(v, str | bytes)]
            if text_key is None:
                if len(text_fields) != 1:
                    raise ElmoError(
                        f"--tfds {spec}: pass --text-key; features found: {', '.join(sorted(example))}"
                    )
                text_key = text_fields[0]
            elif text_key not in example:
                raise ElmoError(
                    f"--tfds {spec}: no feature {text_key!r}; features found: {', '.join(sorted(example))}"
                )
        value = example[text_key]
        if isinstance(value, bytes | np.bytes_):
            value = value.decode("utf-8", errors="replace")
        elif not isinstance(value, str):
            raise ElmoError(f"--tfds {spec}: feature {text_key!r} is not text (found {type(value).__name__})")
        counts.input_lines += 1
        yield value


def _input_texts(
    inputs: Sequence[str | Path],
    column: str | None,
    errors: str,
    tfds: str | None,
    text_key: str | None,
    tfds_data_dir: str | None,
    counts: _Counts,
    progress: bool,
) -> Iterator[str]:
    paths = [check_input_file(p) for p in inputs]
    tables = [column is not None or _is_table(p) for p in paths]
    for path, table in zip(paths, tables, strict=True):
        if table:
            _check_table(path, column)
    bar = _Progress(sum(p.stat().st_size for p in paths), progress)
    try:
        for path, table in zip(paths, tables, strict=True):
            if table:
                yield from _csv_texts(path, column, errors, counts, bar)
            else:
                yield from _text_lines(path, errors, counts, bar)
    finally:
        bar.close()
    if tfds:
        ex_bar = _Progress(None, progress, unit="ex")
        try:
            for text in _tfds_texts(tfds, text_key, tfds_data_dir, counts):
                ex_bar.update(1)
                yield text
        finally:
            ex_bar.close()


def _write_shards(lines: Iterable[str], directory: Path, per_shard: int) -> tuple[int, int, int, Counter]:
    """Write ``lines`` into numbered shards; returns (sentences, tokens, shards, token counts)."""
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
            tokens = line.split(" ")
            counter.update(tokens)
            n_sent += 1
            n_tok += len(tokens)
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
    errors: str = "strict",
    progress: bool = False,
) -> dict:
    """Tokenize, shuffle and shard ``inputs`` into ``out``; write the vocabulary and ``stats.json``.

    Inputs are read in order: ``.csv``/``.tsv`` files (or any file when ``column`` is given) as
    tables whose ``column`` holds the text, other files as one paragraph a line; then, with ``tfds``
    (``NAME[:SPLIT]``), the ``text_key`` feature of a TFDS dataset already on disk. Lines without
    tokens are skipped and counted. The shuffle and the held-out split depend only on the inputs and
    ``seed``. Everything is built in a temporary directory inside ``out`` and moved into place at the
    end, so an interrupted run leaves an earlier preparation intact. Returns the statistics written
    to ``stats.json``.
    """
    if not 0.0 <= heldout_fraction < 1.0:
        raise ElmoError(f"--heldout-fraction {heldout_fraction}: must be at least 0 and below 1")
    if sentences_per_shard < 1:
        raise ElmoError(f"--sentences-per-shard {sentences_per_shard}: must be at least 1")
    if min_count < 1:
        raise ElmoError(f"--min-count {min_count}: must be at least 1")
    if errors not in ("strict", "replace"):
        raise ElmoError(f"--errors {errors}: use strict or replace")
    if not inputs and not tfds:
        raise ElmoError("give at least one INPUT file or --tfds NAME")
    csv.field_size_limit(min(sys.maxsize, 2**31 - 1))  # paragraphs may be megabytes long

    out = check_writable_dir(out)
    for stale in out.glob(".prepare-tmp-*"):
        shutil.rmtree(stale, ignore_errors=True)
    tmp = out / f".prepare-tmp-{os.getpid()}"
    tmp.mkdir()
    try:
        stats = _prepare_into(
            tmp, inputs, column, heldout_fraction, sentences_per_shard, seed, min_count, lowercase,
            tokenized, tfds, text_key, tfds_data_dir, errors, progress,
        )  # fmt: skip
        for name in ("train", "heldout"):
            if (out / name).exists():
                os.replace(out / name, tmp / f"old-{name}")
            os.replace(tmp / name, out / name)
        for name in ("vocab.txt", "stats.json"):
            os.replace(tmp / name, out / name)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return stats


def _prepare_into(
    tmp: Path,
    inputs: Sequence[str | Path],
    column: str | None,
    heldout_fraction: float,
    sentences_per_shard: int,
    seed: int,
    min_count: int,
    lowercase: bool,
    tokenized: bool,
    tfds: str | None,
    text_key: str | None,
    tfds_data_dir: str | None,
    errors: str,
    progress: bool,
) -> dict:
    counts = _Counts()
    bucket_dir = tmp / "buckets"
    bucket_dir.mkdir()
    buckets = [
        open(bucket_dir / f"{b:02d}.txt", "w", encoding="utf-8", newline="\n") for b in range(N_BUCKETS)
    ]
    rng = np.random.default_rng(seed)
    draws = np.empty(0, dtype=np.int64)
    used = 0
    n_sentences = 0
    try:
        for text in _input_texts(inputs, column, errors, tfds, text_key, tfds_data_dir, counts, progress):
            sentences = sentences_from_text(text, tokenized=tokenized, lowercase=lowercase)
            if not sentences:
                counts.skipped_empty += 1
                continue
            for tokens in sentences:
                if used == len(draws):
                    draws, used = rng.integers(0, N_BUCKETS, size=65_536), 0
                buckets[draws[used]].write(" ".join(tokens) + "\n")
                used += 1
                n_sentences += 1
    finally:
        for f in buckets:
            f.close()
    if n_sentences == 0:
        where = ", ".join(str(p) for p in inputs) or f"--tfds {tfds}"
        raise InputTextError(f"{where}: no text found (every line was empty); check the input and --column")

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
    n_held, n_held_tokens, n_held_shards, _ = _write_shards(held, tmp / "heldout", sentences_per_shard)
    n_train, n_train_tokens, n_train_shards, counter = _write_shards(
        stream, tmp / "train", sentences_per_shard
    )
    shutil.rmtree(bucket_dir)

    for special in SPECIALS:
        counter.pop(special, None)
    vocab = [tok for tok, c in sorted(counter.items(), key=lambda kv: (-kv[1], kv[0])) if c >= min_count]
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
        "tokenized": tokenized,
    }
    (tmp / "stats.json").write_text(json.dumps(stats, indent=2) + "\n", encoding="utf-8")
    return stats
