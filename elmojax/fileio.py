"""Text input checked line by line, and atomic file output.

Input: :func:`read_text_lines` decodes a UTF-8 file one physical line at a time, so invalid bytes
are reported with their line and byte offset (or replaced on request). Output: files are written
under a temporary name in the same directory, then renamed; a crash, ``kill -9`` or a full disk in
the middle of a write leaves the previous file (or nothing) under the final name, never a
half-written one, and a full disk is one error naming the file.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO, NamedTuple

from elmojax.errors import ElmoError, InputTextError


class TextLine(NamedTuple):
    """One physical line of a text file: 1-based ``number``, decoded ``text`` (with its newline),
    its size in bytes, and whether invalid UTF-8 in it was replaced."""

    number: int
    text: str
    n_bytes: int
    replaced: bool


def check_input_file(path: str | Path) -> Path:
    """Fail with a one-line error unless ``path`` is an existing, non-empty regular file."""
    path = Path(path)
    if not path.exists():
        raise InputTextError(f"{path}: input file not found")
    if path.is_dir():
        raise InputTextError(f"{path}: is a directory, expected a text file")
    if path.stat().st_size == 0:
        raise InputTextError(f"{path}: input file is empty")
    return path


def count_lines(path: str | Path) -> int:
    """Number of lines of a file as :func:`read_text_lines` yields them, read in blocks of 1 MiB."""
    n, last = 0, b"\n"
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            n += block.count(b"\n")
            last = block[-1:]
    return n + (last != b"\n")  # a last line without its newline


def read_text_lines(
    path: str | Path,
    errors: str = "strict",
    start: int = 0,
    stop: int | None = None,
    *,
    stream: BinaryIO | None = None,
) -> Iterator[TextLine]:
    """The lines of a UTF-8 file, a leading BOM removed; invalid UTF-8 is an error naming the line
    and byte offset unless ``errors="replace"``, which substitutes U+FFFD and goes on.

    ``start``/``stop`` (0-based, ``stop`` exclusive) yield only those lines; the others are
    skipped undecoded, so their bytes are not checked. ``stream`` reads the bytes from an open
    binary stream instead (a decompressed file), ``path`` naming it in errors.
    """
    offset = 0
    whole = "the decompressed text" if stream is not None else "the file"
    with contextlib.nullcontext(stream) if stream is not None else open(path, "rb") as f:
        for number, raw in enumerate(f, start=1):
            if number <= start:
                offset += len(raw)
                continue
            if stop is not None and number > stop:
                break
            replaced = False
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                if errors != "replace":
                    raise InputTextError(
                        f"{path}: line {number}: invalid UTF-8 at byte {e.start} of the line "
                        f"(byte {offset + e.start} of {whole}); re-encode the file as UTF-8 or set "
                        "`errors` to replace"
                    ) from None
                text, replaced = raw.decode("utf-8", errors="replace"), True
            offset += len(raw)
            if number == 1:
                text = text.removeprefix("\ufeff")
            yield TextLine(number, text, len(raw), replaced)


def check_writable_dir(directory: str | Path) -> Path:
    """Create ``directory`` if needed and fail early, with a clear message, if it is not writable."""
    directory = Path(directory)
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ElmoError(f"{directory}: cannot create output directory ({e.strerror})") from None
    if not os.access(directory, os.W_OK):
        raise ElmoError(f"{directory}: output directory is not writable; choose another location")
    return directory


def _default_mode() -> int:
    """The mode ``open(path, "w")`` would give a new file under the current umask."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it to ``path`` only if the block succeeds."""
    path = Path(path)
    check_writable_dir(path.parent)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    os.chmod(tmp_path, _default_mode())  # mkstemp makes 0600; outputs should read like any new file
    try:
        yield tmp_path
        with open(tmp_path, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp_path, path)
    except BaseException as e:
        tmp_path.unlink(missing_ok=True)
        if is_disk_full(e):
            raise disk_full(path) from None
        raise


def disk_full(path: Path, detail: str = "") -> ElmoError:
    """The one-line error for an output that does not fit on its disk."""
    return ElmoError(
        f"{path}: the disk is full{detail}; nothing was written under this name (an earlier file there "
        "is intact). Free some space and run again"
    )


def check_room(path: str | Path, n_bytes: int) -> None:
    """Raise :func:`disk_full` unless ``path``'s directory has ``n_bytes`` free.

    HDF5 cannot fail a write cleanly (a file it could not write crashes the process when closed),
    so writers of HDF5 files ask before they write.
    """
    path = Path(path)
    free = shutil.disk_usage(path.parent).free
    if n_bytes > free:
        raise disk_full(path, f" (about {n_bytes / 2**20:.1f} MiB to write, {free / 2**20:.1f} MiB free)")


#: how libraries that report errors as text (h5py, tensorstore) say the disk is full
DISK_FULL_TEXTS = ("No space left on device", "Disk quota exceeded")


def is_disk_full(error: BaseException) -> bool:
    """Whether ``error``, or an error it was raised from, says the disk is full (``ENOSPC`` or a
    quota), as an ``OSError`` or in the message of a library that reports it as text (h5py,
    tensorstore)."""
    for _ in range(10):
        if error is None:
            return False
        if isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        if any(text in str(error) for text in DISK_FULL_TEXTS):
            return True
        error = error.__cause__ or error.__context__
    return False


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
