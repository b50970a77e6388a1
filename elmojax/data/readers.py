"""Corpus readers for ``prepare``: one table from input format to reader, every input streamed.

A reader turns one input into a stream of texts (a line of a text file, a cell of a CSV/TSV
column, a field of a JSON Lines record, a value of a Parquet or Arrow column, a field of a
dataset's examples), counting what it reads and advancing the progress bar as it goes; nothing is
held in memory beyond one record (or one batch of a columnar file). :data:`FILE_READERS` maps a
file format to its reader and :func:`file_format` picks one for a path by its suffix; text, CSV and
JSON Lines files may be compressed (:mod:`elmojax.data.compression`). :data:`DATASET_READERS` does
the same for datasets addressed by name (TensorFlow Datasets, Hugging Face datasets on disk). Bad
input is an :class:`~elmojax.errors.InputTextError` naming the file, line or row and the key, raised
before any work where it can be checked up front (a CSV header, a missing column, a key of the
first record, a compressed file's magic bytes).
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import json
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np

from elmojax.data.columnar import ArrowReader, ParquetReader
from elmojax.data.compression import check_compressed, codec_of, inner_suffix
from elmojax.data.hf_dataset import dataset_files
from elmojax.data.reading import FileReader, Progress, ReadCounts, ReadOptions, decoded_lines
from elmojax.errors import ElmoError, InputTextError, first_line

__all__ = [
    "DATASET_READERS",
    "FILE_READERS",
    "FileReader",
    "Progress",
    "ReadCounts",
    "ReadOptions",
    "file_format",
    "read_dataset",
    "read_files",
]

#: file suffix (after any compression suffix) -> format; other files are text, or tables with `column`
SUFFIX_FORMATS = {
    ".csv": "table",
    ".tsv": "table",
    ".tab": "table",
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".json": "jsonl",
    ".parquet": "parquet",
    ".arrow": "arrow",
}
#: formats that compress inside the file and cannot be read through a compression layer
_SELF_COMPRESSED = ("parquet", "arrow")


class TextReader:
    """Plain UTF-8 text: one paragraph (or sentence) a line."""

    def check(self, path: Path, options: ReadOptions) -> None:
        del path, options

    def texts(
        self, path: Path, options: ReadOptions, counts: ReadCounts, progress: Progress
    ) -> Iterator[str]:
        for _, line in decoded_lines(path, options, counts, progress):
            counts.input_lines += 1
            yield line


class TableReader:
    """CSV/TSV with a header row; the text is the cell of ``column`` (quoted cells may span lines)."""

    def check(self, path: Path, options: ReadOptions) -> None:
        self._header(
            path, next(decoded_lines(path, options, ReadCounts(), Progress(None, False)), None), options
        )

    @staticmethod
    def _delimiter(path: Path, header_line: str) -> str:
        suffix = inner_suffix(path)
        if suffix in (".tsv", ".tab"):
            return "\t"
        if suffix == ".csv":
            return ","
        return "\t" if "\t" in header_line and "," not in header_line else ","

    def _header(
        self, path: Path, first: tuple[int, str] | None, options: ReadOptions
    ) -> tuple[str, int, int]:
        """(delimiter, index of the text column, number of columns) from the file's first decoded
        line (None: an empty file inside a compressed one); errors list the columns found."""
        if first is None:
            raise InputTextError(f"{path}: holds no header row (the decompressed file is empty)")
        column, arg = options.column, options.column_arg
        delimiter = self._delimiter(path, first[1])
        header = [h.strip() for h in next(csv.reader([first[1]], delimiter=delimiter), [])]
        found = ", ".join(repr(h) for h in header) or "none"
        if column is None:
            raise InputTextError(
                f"{path}: is a CSV/TSV file; set `{arg}` to the name of the text column "
                f"(columns found: {found})"
            )
        if column not in header:
            raise InputTextError(
                f"{path}: no column {column!r}; columns found: {found}. Choose one with `{arg}`"
            )
        return delimiter, header.index(column), len(header)

    def texts(
        self, path: Path, options: ReadOptions, counts: ReadCounts, progress: Progress
    ) -> Iterator[str]:
        csv.field_size_limit(min(sys.maxsize, 2**31 - 1))  # paragraphs may be megabytes long
        lines = decoded_lines(path, options, counts, progress)
        delimiter, index, n_columns = self._header(path, next(lines, None), options)
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


_JSON_TYPES = {dict: "an object", list: "an array", str: "a string", bool: "a boolean", int: "a number",
               float: "a number", type(None): "null"}  # fmt: skip


def json_type(value: object) -> str:
    """The JSON name of a parsed value's type ("an object", "a number", ...)."""
    return _JSON_TYPES.get(type(value), type(value).__name__)


def lookup(record: object, key: str, where: str) -> object:
    """``record[key]``, dots reaching into nested objects (a literal key with dots wins); errors name
    ``where`` (file and line) and list the keys found."""
    if not isinstance(record, dict):
        raise InputTextError(f"{where}: {json_type(record)} where a JSON object was expected; JSON Lines "
                             "hold one object a line")  # fmt: skip
    if key in record:
        return record[key]
    node, done = record, []
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            if isinstance(node, dict):
                keys = ", ".join(repr(k) for k in node) or "none"
            else:
                keys = f"none, {'.'.join(done)!r} is {json_type(node)}"
            inside = f" of {'.'.join(done)!r}" if done else ""
            raise InputTextError(
                f"{where}: no key {key!r} (keys{inside}: {keys}); choose one with `text_key`"
            )
        node = node[part]
        done.append(part)
    return node


class JsonlReader:
    """JSON Lines: one JSON object a line, the text under ``text_key`` (``meta.body`` for nested
    objects). A null is an empty text; blank lines are skipped and counted."""

    def check(self, path: Path, options: ReadOptions) -> None:
        first = self._first_record(path, options)
        if options.text_key is None:
            keys = ", ".join(repr(k) for k in first[1]) if first and isinstance(first[1], dict) else "none"
            raise InputTextError(
                f"{path}: is a JSON Lines file; set `text_key` to the key holding the text "
                f"(keys of the first record: {keys})"
            )
        if first is not None:
            self._text(first[1], options.text_key, f"{path}: line {first[0]}")

    def _first_record(self, path: Path, options: ReadOptions) -> tuple[int, object] | None:
        for number, line in decoded_lines(path, options, ReadCounts(), Progress(None, False)):
            if line.strip():
                return number, self._parse(line, f"{path}: line {number}")
        return None

    @staticmethod
    def _parse(line: str, where: str) -> object:
        try:
            return json.loads(line.rstrip("\r\n"))
        except json.JSONDecodeError as e:
            at = e.msg if e.msg.endswith(" at") else f"{e.msg} at"  # json's "... starting at"
            raise InputTextError(
                f"{where}: not valid JSON ({at} column {e.colno}); JSON Lines hold one JSON object a line"
            ) from None

    @staticmethod
    def _text(record: object, key: str, where: str) -> str:
        value = lookup(record, key, where)
        if value is None:
            return ""
        if not isinstance(value, str):
            raise InputTextError(
                f"{where}: key {key!r} holds {json_type(value)}, not text; choose a text key with `text_key`"
            )
        return value

    def texts(
        self, path: Path, options: ReadOptions, counts: ReadCounts, progress: Progress
    ) -> Iterator[str]:
        for number, line in decoded_lines(path, options, counts, progress):
            if not line.strip():
                counts.skipped_empty += 1
                continue
            where = f"{path}: line {number}"
            text = self._text(self._parse(line, where), options.text_key, where)
            counts.input_lines += 1
            yield text


#: file format -> reader
FILE_READERS: dict[str, FileReader] = {
    "text": TextReader(),
    "table": TableReader(),
    "jsonl": JsonlReader(),
    "parquet": ParquetReader(),
    "arrow": ArrowReader(),
}


def file_format(path: Path, options: ReadOptions) -> str:
    """The format a file is read as: by its suffix (after any compression suffix), else a table
    when a column is named, else text."""
    fmt = SUFFIX_FORMATS.get(inner_suffix(path))
    if fmt in _SELF_COMPRESSED and codec_of(path) is not None:
        raise InputTextError(
            f"{path}: {fmt} files compress their own contents; decompress it to a plain .{fmt} file"
        )
    if fmt is not None:
        return fmt
    return "table" if options.column is not None else "text"


def read_files(paths: list[Path], options: ReadOptions, counts: ReadCounts, progress: bool) -> Iterator[str]:
    """The texts of every file in order, each by its format's reader; all are checked now, before
    the first text is read."""
    readers = [FILE_READERS[file_format(p, options)] for p in paths]
    for path, reader in zip(paths, readers, strict=True):
        check_compressed(path)
        reader.check(path, options)
    return _read_checked(paths, readers, options, counts, progress)


def _read_checked(
    paths: list[Path], readers: list[FileReader], options: ReadOptions, counts: ReadCounts, progress: bool
) -> Iterator[str]:
    bar = Progress(sum(p.stat().st_size for p in paths), progress)
    try:
        for path, reader in zip(paths, readers, strict=True):
            yield from reader.texts(path, options, counts, bar)
    finally:
        bar.close()


def read_tfds(
    spec: str, options: ReadOptions, data_dir: str | None, counts: ReadCounts, progress: bool
) -> Iterator[str]:
    """Text fields of a TensorFlow Datasets dataset ``NAME[:SPLIT]`` already on disk, with a progress
    bar over its records; never downloads. The dataset is opened now, before the first text."""
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
        reason = first_line(e)
        raise ElmoError(
            f"`tfds` {spec}: cannot read this dataset from disk ({reason}); build it first "
            f"(e.g. `tfds build {name} --file_format=array_record`) — elmojax never downloads"
        ) from None
    return _tfds_texts(spec, source, text_key, counts, progress)


def _tfds_texts(spec: str, source, text_key: str | None, counts: ReadCounts, progress: bool) -> Iterator[str]:
    with contextlib.closing(Progress(None, progress, unit="ex")) as bar:
        yield from _tfds_examples(spec, source, text_key, counts, bar)


def _tfds_examples(
    spec: str, source, text_key: str | None, counts: ReadCounts, bar: Progress
) -> Iterator[str]:
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
        bar.update(1)
        yield value


def read_hf(
    spec: str, options: ReadOptions, data_dir: str | None, counts: ReadCounts, progress: bool
) -> Iterator[str]:
    """The ``text_key`` field of a split of a Hugging Face dataset on disk (``PATH[:SPLIT]``: a
    ``save_to_disk`` folder or a local dataset folder, :mod:`elmojax.data.hf_dataset`), read by the
    file readers with a progress bar over its bytes; never downloads. Its files are found and
    checked now, before the first text."""
    del data_dir  # the path is the dataset
    files = dataset_files(spec)
    if options.text_key is None:
        raise ElmoError(f"`hf_dataset` {spec}: set `text_key` to the field holding the text")
    if all(inner_suffix(f) == ".txt" for f in files):
        # the Hub's text builder: every line an example whose one field is `text`
        if options.text_key != "text":
            raise ElmoError(f"`hf_dataset` {spec}: its text files have one field, text; use `text_key` text")
        return read_files(files, dataclasses.replace(options, column=None), counts, progress)
    by_key = dataclasses.replace(options, column=options.text_key, column_arg="text_key")
    return read_files(files, by_key, counts, progress)


DatasetReader = Callable[[str, ReadOptions, "str | None", ReadCounts, bool], Iterator[str]]
#: dataset kind -> reader of ``(spec, options, data_dir, counts, progress)``
DATASET_READERS: dict[str, DatasetReader] = {"tfds": read_tfds, "hf": read_hf}


def read_dataset(
    kind: str, spec: str, options: ReadOptions, data_dir: str | None, counts: ReadCounts, progress: bool
) -> Iterator[str]:
    """The texts of a dataset addressed by name, by its kind's reader (opened and checked now)."""
    return DATASET_READERS[kind](spec, options, data_dir, counts, progress)
