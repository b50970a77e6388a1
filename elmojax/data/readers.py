"""Corpus readers for ``prepare``: one table from input format to reader, every input streamed.

A reader turns one input into a stream of texts (a line of a text file, a cell of a CSV/TSV
column, a field of a dataset's examples), counting what it reads and advancing the progress bar
as it goes; nothing is held in memory beyond one record. :data:`FILE_READERS` maps a file format to
its reader and :func:`file_format` picks one for a path; :data:`DATASET_READERS` does the same for
datasets addressed by name (TensorFlow Datasets on disk). Bad input is an
:class:`~elmojax.errors.InputTextError` naming the file, line or row and the key, raised before
any work where it can be checked up front (a CSV header, a missing column).
"""

from __future__ import annotations

import csv
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np

from elmojax.errors import ElmoError, InputTextError
from elmojax.fileio import read_text_lines

#: file suffixes read as tables (the text in one column)
TABLE_SUFFIXES = (".csv", ".tsv", ".tab")


@dataclass(frozen=True)
class ReadOptions:
    """What every reader may need: the text column of tables, the text key of records, and what to
    do with invalid UTF-8 (``strict``: stop with the line and byte; ``replace``: U+FFFD)."""

    column: str | None = None
    text_key: str | None = None
    errors: str = "strict"


@dataclass
class ReadCounts:
    """What the readers saw: records read, records without text, lines whose bytes were replaced."""

    input_lines: int = 0
    skipped_empty: int = 0
    replaced_lines: int = 0


@dataclass
class Progress:
    """A progress bar over bytes (files) or records (datasets), or nothing."""

    total: int | None
    enabled: bool
    unit: str = "B"
    bar: object = field(init=False)

    def __post_init__(self) -> None:
        from tqdm import tqdm

        self.bar = tqdm(
            total=self.total,
            disable=not self.enabled,
            unit=self.unit,
            unit_scale=self.unit == "B",
            desc="reading",
            leave=False,
        )

    def update(self, n: int) -> None:
        self.bar.update(n)

    def close(self) -> None:
        self.bar.close()


class FileReader(Protocol):
    """Reads one file format."""

    def check(self, path: Path, options: ReadOptions) -> None:
        """Fail at once on what can be checked before reading (a header, a column name)."""

    def texts(
        self, path: Path, options: ReadOptions, counts: ReadCounts, progress: Progress
    ) -> Iterator[str]:
        """The file's texts, streamed."""


def _decoded_lines(
    path: Path, options: ReadOptions, counts: ReadCounts, progress: Progress
) -> Iterator[tuple[int, str]]:
    """(line number, text) of each physical line, counting replaced lines and advancing the bar."""
    for line in read_text_lines(path, options.errors):
        progress.update(line.n_bytes)
        counts.replaced_lines += line.replaced
        yield line.number, line.text


class TextReader:
    """Plain UTF-8 text: one paragraph (or sentence) a line."""

    def check(self, path: Path, options: ReadOptions) -> None:
        del path, options

    def texts(
        self, path: Path, options: ReadOptions, counts: ReadCounts, progress: Progress
    ) -> Iterator[str]:
        for _, line in _decoded_lines(path, options, counts, progress):
            counts.input_lines += 1
            yield line


class TableReader:
    """CSV/TSV with a header row; the text is the cell of ``column`` (quoted cells may span lines)."""

    def check(self, path: Path, options: ReadOptions) -> None:
        with open(path, "rb") as f:
            first = f.readline().decode("utf-8", errors="replace").removeprefix("\ufeff")
        self._header(path, first, options.column)

    @staticmethod
    def _delimiter(path: Path, header_line: str) -> str:
        suffix = path.suffix.lower()
        if suffix in (".tsv", ".tab"):
            return "\t"
        if suffix == ".csv":
            return ","
        return "\t" if "\t" in header_line and "," not in header_line else ","

    def _header(self, path: Path, first_line: str, column: str | None) -> tuple[str, int, int]:
        """(delimiter, index of ``column``, number of columns); errors list the columns found."""
        delimiter = self._delimiter(path, first_line)
        header = [h.strip() for h in next(csv.reader([first_line], delimiter=delimiter), [])]
        found = ", ".join(repr(h) for h in header) or "none"
        if column is None:
            raise InputTextError(
                f"{path}: is a CSV/TSV file; set `column` to the name of the text column "
                f"(columns found: {found})"
            )
        if column not in header:
            raise InputTextError(
                f"{path}: no column {column!r}; columns found: {found}. Choose one with `column`"
            )
        return delimiter, header.index(column), len(header)

    def texts(
        self, path: Path, options: ReadOptions, counts: ReadCounts, progress: Progress
    ) -> Iterator[str]:
        csv.field_size_limit(min(sys.maxsize, 2**31 - 1))  # paragraphs may be megabytes long
        lines = _decoded_lines(path, options, counts, progress)
        delimiter, index, n_columns = self._header(path, next(lines)[1], options.column)  # non-empty: checked
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


#: file format -> reader
FILE_READERS: dict[str, FileReader] = {"text": TextReader(), "table": TableReader()}


def file_format(path: Path, options: ReadOptions) -> str:
    """The format a file is read as: a table when a column is named or by its suffix, else text."""
    if options.column is not None or path.suffix.lower() in TABLE_SUFFIXES:
        return "table"
    return "text"


def read_files(paths: list[Path], options: ReadOptions, counts: ReadCounts, progress: bool) -> Iterator[str]:
    """The texts of every file in order, each by its format's reader; all are checked first."""
    readers = [FILE_READERS[file_format(p, options)] for p in paths]
    for path, reader in zip(paths, readers, strict=True):
        reader.check(path, options)
    bar = Progress(sum(p.stat().st_size for p in paths), progress)
    try:
        for path, reader in zip(paths, readers, strict=True):
            yield from reader.texts(path, options, counts, bar)
    finally:
        bar.close()


def read_tfds(spec: str, options: ReadOptions, data_dir: str | None, counts: ReadCounts) -> Iterator[str]:
    """Text fields of a TensorFlow Datasets dataset ``NAME[:SPLIT]`` already on disk; never downloads."""
    try:
        import tensorflow_datasets as tfds
    except ImportError:
        raise ElmoError(
            f"`tfds` {spec}: TensorFlow Datasets is not installed; pip install 'elmojax[tfds]'"
        ) from None
    name, _, split = spec.partition(":")
    split = split or "train"
    text_key = options.text_key
    try:
        source = tfds.data_source(name, split=split, data_dir=data_dir, download=False)
    except Exception as e:  # tfds raises many types (not found, not built, wrong format)
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ElmoError(
            f"`tfds` {spec}: cannot read this dataset from disk ({reason}); build it first "
            f"(e.g. `tfds build {name} --file_format=array_record`) — elmojax never downloads"
        ) from None
    for i, example in enumerate(source):
        if i == 0:
            text_fields = [k for k, v in example.items() if isinstance(v, str | bytes)]
            if text_key is None:
                if len(text_fields) != 1:
                    raise ElmoError(
                        f"`tfds` {spec}: set `text_key`; features found: {', '.join(sorted(example))}"
                    )
                text_key = text_fields[0]
            elif text_key not in example:
                raise ElmoError(
                    f"`tfds` {spec}: no feature {text_key!r}; features found: {', '.join(sorted(example))}"
                )
        value = example[text_key]
        if isinstance(value, bytes | np.bytes_):
            value = value.decode("utf-8", errors="replace")
        elif not isinstance(value, str):
            raise ElmoError(f"`tfds` {spec}: feature {text_key!r} is not text (found {type(value).__name__})")
        counts.input_lines += 1
        yield value


DatasetReader = Callable[[str, ReadOptions, "str | None", ReadCounts], Iterator[str]]
#: dataset kind -> reader of ``(spec, options, data_dir, counts)``
DATASET_READERS: dict[str, DatasetReader] = {"tfds": read_tfds}


def read_dataset(
    kind: str, spec: str, options: ReadOptions, data_dir: str | None, counts: ReadCounts, progress: bool
) -> Iterator[str]:
    """The texts of a dataset addressed by name, with a progress bar over its records."""
    bar = Progress(None, progress, unit="ex")
    try:
        for text in DATASET_READERS[kind](spec, options, data_dir, counts):
            bar.update(1)
            yield text
    finally:
        bar.close()
