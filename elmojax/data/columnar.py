"""Columnar corpora through pyarrow: Parquet files by row group, Arrow IPC files (what Hugging Face
``datasets`` writes with ``save_to_disk``) by record batch.

The text is one column, named by ``column``; dots reach into struct columns (``meta.body``). Only
that column is read, one batch at a time, so memory does not grow with the file. A null value is an
empty text (skipped and counted); a column that is not a string type is an error before any work.
pyarrow comes with the ``parquet`` and ``hf`` extras.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from elmojax.data.reading import Progress, ReadCounts, ReadOptions
from elmojax.errors import ElmoError, InputTextError, first_line

#: rows decoded at a time from a Parquet row group
BATCH_ROWS = 4096
_ARROW_FILE_MAGIC = b"ARROW1"


def _pyarrow(path: Path, what: str, extra: str):
    try:
        import pyarrow
        import pyarrow.compute  # noqa: F401
        import pyarrow.ipc  # noqa: F401
        import pyarrow.parquet  # noqa: F401
    except ImportError:
        raise ElmoError(f"{path}: reading {what} needs pyarrow; pip install 'elmojax[{extra}]'") from None
    return pyarrow


def column_path(pa, schema, options: ReadOptions, path: Path, kind: str) -> list[str]:
    """The field names from a top-level column down to the text (a literal column name wins over a
    dotted path); errors list the columns found and name the key."""
    key, arg = options.column, options.column_arg
    found = ", ".join(repr(n) for n in schema.names) or "none"
    if key is None:
        raise InputTextError(
            f"{path}: is a {kind} file; set `{arg}` to the column holding the text (columns found: {found})"
        )
    parts = [key] if key in schema.names else key.split(".")
    if parts[0] not in schema.names:
        raise InputTextError(f"{path}: no column {key!r}; columns found: {found}. Choose one with `{arg}`")
    field = schema.field(parts[0])
    for i, name in enumerate(parts[1:], start=1):
        if not pa.types.is_struct(field.type) or field.type.get_field_index(name) < 0:
            inner = (
                [field.type.field(j).name for j in range(field.type.num_fields)]
                if pa.types.is_struct(field.type)
                else []
            )
            fields = ", ".join(repr(n) for n in inner) or f"none ({'.'.join(parts[:i])} is {field.type})"
            raise InputTextError(
                f"{path}: no column {key!r}; fields of {'.'.join(parts[:i])!r}: {fields}. Choose one with "
                f"`{arg}`"
            )
        field = field.type.field(name)
    t = field.type
    if not (pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_string_view(t)):
        raise InputTextError(f"{path}: column {key!r} holds {t}, not text; choose a text column with `{arg}`")
    return parts


def _values(pa, array, parts: list[str]):
    import pyarrow.compute as pc

    return pc.struct_field(array, parts[1:]) if len(parts) > 1 else array


def _texts(
    pa, array, path: Path, key: str, first_row: int, options: ReadOptions, counts: ReadCounts
) -> Iterator[str]:
    """The batch's texts; nulls are empty texts; invalid UTF-8 names its row."""
    try:
        values = array.to_pylist()
    except UnicodeDecodeError:
        values = []
        for i, raw in enumerate(array.cast(pa.binary()).to_pylist()):
            if raw is None:
                values.append(None)
                continue
            try:
                values.append(raw.decode("utf-8"))
            except UnicodeDecodeError as e:
                if options.errors != "replace":
                    raise InputTextError(
                        f"{path}: row {first_row + i}: column {key!r}: invalid UTF-8 at byte {e.start}; "
                        "set `errors` to replace"
                    ) from None
                values.append(raw.decode("utf-8", errors="replace"))
                counts.replaced_lines += 1
    for value in values:
        counts.input_lines += 1
        yield "" if value is None else value


def _batch_texts(
    pa,
    batches,
    column: int,
    parts,
    kind: str,
    path: Path,
    options: ReadOptions,
    counts: ReadCounts,
    progress: Progress,
    position,
) -> Iterator[str]:
    """The texts of record ``batches``' column ``column``; a batch that cannot be read is an error
    naming its first row, and the bar moves to ``position(rows read)`` after each batch."""
    rows = reported = 0
    while True:
        try:
            batch = next(batches)
        except StopIteration:
            return
        except (pa.ArrowException, OSError) as e:
            raise InputTextError(
                f"{path}: row {rows + 1}: corrupt {kind} data ({first_line(e, 200)}); the file is damaged"
            ) from None
        yield from _texts(pa, _values(pa, batch.column(column), parts), path, options.column, rows + 1,
                          options, counts)  # fmt: skip
        rows += batch.num_rows
        now = position(rows)
        progress.update(now - reported)
        reported = now


class ParquetReader:
    """A Parquet file, streamed row group by row group (``pyarrow.parquet.ParquetFile.iter_batches``)."""

    def _open(self, path: Path):
        pa = _pyarrow(path, "Parquet", "parquet")
        try:
            return pa, pa.parquet.ParquetFile(path)
        except (pa.ArrowException, OSError) as e:
            raise InputTextError(f"{path}: not a readable Parquet file ({first_line(e, 200)})") from None

    def check(self, path: Path, options: ReadOptions) -> None:
        pa, pf = self._open(path)
        column_path(pa, pf.schema_arrow, options, path, "Parquet")

    def texts(
        self, path: Path, options: ReadOptions, counts: ReadCounts, progress: Progress
    ) -> Iterator[str]:
        pa, pf = self._open(path)
        parts = column_path(pa, pf.schema_arrow, options, path, "Parquet")
        size, n_rows = path.stat().st_size, max(pf.metadata.num_rows, 1)
        batches = pf.iter_batches(batch_size=BATCH_ROWS, columns=[parts[0]])
        # the bar moves through the file as its rows are read
        position = lambda rows: size * rows // n_rows  # noqa: E731
        yield from _batch_texts(pa, batches, 0, parts, "Parquet", path, options, counts, progress, position)


class ArrowReader:
    """An Arrow IPC stream or file (``.arrow``), streamed record batch by record batch from a memory map."""

    @staticmethod
    def _batches(pa, source, path: Path):
        """(schema, batches, position): ``position()`` is how far into the file the batches are."""
        try:
            if source.read(len(_ARROW_FILE_MAGIC)) == _ARROW_FILE_MAGIC:
                source.seek(0)
                reader = pa.ipc.open_file(source)
                n = max(reader.num_record_batches, 1)
                done = [0]

                def batches():
                    for i in range(reader.num_record_batches):
                        done[0] = i + 1
                        yield reader.get_batch(i)

                return reader.schema, batches(), lambda: source.size() * done[0] // n
            source.seek(0)
            reader = pa.ipc.open_stream(source)
            return reader.schema, iter(reader), source.tell
        except (pa.ArrowException, OSError) as e:
            raise InputTextError(f"{path}: not a readable Arrow file ({first_line(e, 200)})") from None

    def check(self, path: Path, options: ReadOptions) -> None:
        pa = _pyarrow(path, "Arrow files (Hugging Face datasets)", "hf")
        with pa.memory_map(str(path)) as source:
            schema, _, _ = self._batches(pa, source, path)
            column_path(pa, schema, options, path, "Arrow")

    def texts(
        self, path: Path, options: ReadOptions, counts: ReadCounts, progress: Progress
    ) -> Iterator[str]:
        pa = _pyarrow(path, "Arrow files (Hugging Face datasets)", "hf")
        with pa.memory_map(str(path)) as source:
            schema, batches, position = self._batches(pa, source, path)
            parts = column_path(pa, schema, options, path, "Arrow")
            index = schema.get_field_index(parts[0])
            yield from _batch_texts(
                pa, batches, index, parts, "Arrow", path, options, counts, progress, lambda _: position()
            )
