"""What every corpus reader shares: its options, its counts, the progress bar, the reader protocol,
and the decoded lines of a file that may be compressed (:mod:`elmojax.data.compression`)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from elmojax.data.compression import (
    DECOMPRESSION_ERRORS,
    codec_of,
    decompression_error,
    open_decompressed,
)
from elmojax.fileio import read_text_lines


@dataclass(frozen=True)
class ReadOptions:
    """What every reader may need: the text column of tables and columnar files, the text key of
    records (dots reach into nested records), and what to do with invalid UTF-8 (``strict``: stop
    with the line and byte; ``replace``: U+FFFD). ``column_arg`` is the argument errors name for
    the column (``text_key`` where a dataset's field is read as a column)."""

    column: str | None = None
    text_key: str | None = None
    errors: str = "strict"
    column_arg: str = "column"


@dataclass
class ReadCounts:
    """What the readers saw: records read, records without text, lines whose bytes were replaced."""

    input_lines: int = 0
    skipped_empty: int = 0
    replaced_lines: int = 0


@dataclass
class Progress:
    """A progress bar over bytes on disk (files) or records (datasets), or nothing."""

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


def decoded_lines(
    path: Path, options: ReadOptions, counts: ReadCounts, progress: Progress
) -> Iterator[tuple[int, str]]:
    """(line number, text) of each physical line of a file, decompressed by its suffix; counts
    replaced lines and advances the bar by the bytes of the file on disk (compressed bytes for a
    compressed file). A damaged or cut compressed stream is one error naming the file."""
    if codec_of(path) is None:
        for line in read_text_lines(path, options.errors):
            progress.update(line.n_bytes)
            counts.replaced_lines += line.replaced
            yield line.number, line.text
        return
    number, reported = 0, 0
    with open_decompressed(path) as (stream, consumed):
        lines = read_text_lines(path, options.errors, stream=stream)
        while True:
            try:
                line = next(lines)
            except StopIteration:
                break
            except DECOMPRESSION_ERRORS as e:
                error = decompression_error(path, e, number)
                if error is None:
                    raise
                raise error from None
            number = line.number
            counts.replaced_lines += line.replaced
            now = consumed()
            progress.update(now - reported)
            reported = now
            yield line.number, line.text
