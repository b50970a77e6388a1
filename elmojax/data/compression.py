"""Compressed corpus files, decoded as a stream under the text, JSON Lines and CSV readers.

The codec is chosen by the last suffix (``.gz`` gzip, ``.bz2`` bzip2, ``.xz`` xz/lzma, ``.zst``
Zstandard through the ``zstandard`` package, the ``zstd`` extra). :func:`check_compressed` checks a
file's magic bytes before any work; :func:`open_decompressed` yields the decompressed bytes and how
many bytes of the file on disk have been consumed (what the progress bar counts). A damaged or cut
stream surfaces while reading; :func:`decompression_error` turns it into one line naming the file.
"""

from __future__ import annotations

import bz2
import contextlib
import gzip
import io
import lzma
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import BinaryIO

from elmojax.errors import ElmoError, InputTextError, first_line

#: file suffix -> codec name
CODECS = {".gz": "gzip", ".bz2": "bzip2", ".xz": "xz", ".zst": "zstd"}
#: the bytes each codec's files start with
MAGIC = {"gzip": b"\x1f\x8b", "bzip2": b"BZh", "xz": b"\xfd7zXZ\x00", "zstd": b"\x28\xb5\x2f\xfd"}
_CHUNK = 1 << 16


def codec_of(path: Path) -> str | None:
    """The codec a file is compressed with, by its last suffix; None for an uncompressed file."""
    return CODECS.get(path.suffix.lower())


def inner_suffix(path: Path) -> str:
    """The suffix that tells the format of the decompressed content (``a.jsonl.gz`` -> ``.jsonl``)."""
    if codec_of(path) is not None:
        path = path.with_suffix("")
    return path.suffix.lower()


def _zstandard():
    try:
        import zstandard
    except ImportError:
        raise ElmoError(
            "reading .zst files needs the zstandard package; pip install 'elmojax[zstd]'"
        ) from None
    return zstandard


def check_compressed(path: Path) -> None:
    """Fail at once when a file named as compressed does not start with its codec's magic bytes
    (or its codec's package is missing)."""
    codec = codec_of(path)
    if codec is None:
        return
    if codec == "zstd":
        _zstandard()
    with open(path, "rb") as f:
        head = f.read(len(MAGIC[codec]))
    if head != MAGIC[codec]:
        raise InputTextError(
            f"{path}: not {codec} data (the file does not start with {codec}'s magic bytes); "
            f"decompress it or give it the suffix of its real format"
        )


class CorruptStream(Exception):
    """Damaged Zstandard data (``zstandard`` raises its own error type)."""


class _ZstdStream(io.RawIOBase):
    """Zstandard frames decoded one chunk at a time; a stream cut inside a frame is an ``EOFError``
    (``zstandard``'s own reader ends such a stream silently)."""

    def __init__(self, raw: BinaryIO):
        self._raw = raw
        zstandard = _zstandard()
        self._new, self._error = zstandard.ZstdDecompressor().decompressobj, zstandard.ZstdError
        self._d = self._new()
        self._in_frame = False
        self._pending = b""

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        while not self._pending:
            data = self._raw.read(_CHUNK)
            if not data:
                if self._in_frame:
                    raise EOFError("Compressed file ended before the end-of-stream marker was reached")
                return 0
            while data:
                self._in_frame = True
                try:
                    self._pending += self._d.decompress(data)
                except self._error as e:
                    raise CorruptStream(str(e)) from None
                if not self._d.eof:
                    break
                data, self._d, self._in_frame = self._d.unused_data, self._new(), False  # next frame
        n = min(len(buffer), len(self._pending))
        buffer[:n] = self._pending[:n]
        self._pending = self._pending[n:]
        return n


@contextlib.contextmanager
def open_decompressed(path: Path) -> Iterator[tuple[BinaryIO, Callable[[], int]]]:
    """``(stream, consumed)``: the file's decompressed bytes, and a function giving the bytes of the
    file on disk read so far. An uncompressed file is its own stream."""
    with open(path, "rb") as raw:
        codec = codec_of(path)
        if codec is None:
            yield raw, raw.tell
        elif codec == "gzip":
            with gzip.GzipFile(fileobj=raw, mode="rb") as f:
                yield f, raw.tell
        elif codec == "bzip2":
            with bz2.BZ2File(raw, "rb") as f:
                yield f, raw.tell
        elif codec == "xz":
            with lzma.LZMAFile(raw, "rb") as f:
                yield f, raw.tell
        else:
            with io.BufferedReader(_ZstdStream(raw), _CHUNK) as f:
                yield f, raw.tell


#: what the codecs raise on damaged data (gzip: OSError/zlib.error; bzip2: OSError; xz: LZMAError;
#: a cut stream: EOFError)
DECOMPRESSION_ERRORS: tuple[type[BaseException], ...] = (
    EOFError,
    OSError,
    zlib.error,
    lzma.LZMAError,
    CorruptStream,
)


def decompression_error(path: Path, error: BaseException, lines_read: int) -> InputTextError | None:
    """The one-line error for a damaged or cut compressed stream, or None when ``error`` is not one
    (e.g. an ``OSError`` of an uncompressed file)."""
    codec = codec_of(path)
    if codec is None or not isinstance(error, DECOMPRESSION_ERRORS):
        return None
    if isinstance(error, OSError) and error.errno is not None:
        return None  # a real I/O error (permissions, a vanished file): reported as such
    where = f"after line {lines_read}" if lines_read else "before its first line"
    if isinstance(error, EOFError):
        return InputTextError(
            f"{path}: the {codec} stream is truncated {where} (it ends before its end-of-stream marker); "
            "the file was cut short: copy or download it again"
        )
    reason = first_line(error)
    return InputTextError(
        f"{path}: corrupt {codec} data {where} ({reason}); the file is damaged: copy or download it again"
    )
