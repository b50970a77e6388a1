"""TensorBoard event files of a run, ``SAVE_DIR/tensorboard/``, written with tensorboardX (no TensorFlow).

Every number of a training record becomes the scalar ``train/KEY`` at the record's step (so the
events hold what ``metrics.jsonl`` holds, at TensorBoard's float32 precision), and ``evaluate``'s
perplexities ``eval/KEY`` at the step of the checkpoint it scored. A resumed run drops the events
logged after its checkpoint (:func:`truncate_events`, record by record, the way ``metrics.jsonl`` is
truncated), so no step is shown twice whatever reads the files. tensorboardX is optional (the
``tensorboard`` extra); without it a one-line note says what to install and nothing else changes.
"""

from __future__ import annotations

import struct
import sys
import time
from pathlib import Path

from elmojax.fileio import atomic_path

#: the folder of a run directory that holds the event files
TENSORBOARD_DIR = "tensorboard"
_EVENTS = "events.out.tfevents.*"
_noted: set[str] = set()


def available() -> bool:
    """Whether tensorboardX is installed."""
    try:
        import tensorboardX  # noqa: F401
    except ImportError:
        return False
    return True


def note_missing(directory: Path) -> None:
    """Say once per process that no events are written and what to install."""
    if "missing" not in _noted:
        _noted.add("missing")
        print(
            f"note: no TensorBoard events in {directory} (tensorboardX is not installed); "
            "pip install 'elmojax[tensorboard]' to write them",
            file=sys.stderr,
        )


class TensorBoardWriter:
    """Scalars ``PREFIX/KEY`` of each record's numbers at its ``step``, flushed as written.

    Each writer opens a new event file; names sort in the order the files were opened, which is
    the order TensorBoard reads them in.
    """

    def __init__(self, directory: Path, prefix: str = "train"):
        from tensorboardX import SummaryWriter

        self.directory, self.prefix = directory, prefix
        # two writers in one second would share tensorboardX's default name; the suffix orders them
        self._writer = SummaryWriter(str(directory), filename_suffix=f".{time.time_ns()}")

    def write(self, record: dict) -> None:
        step = int(record["step"])
        for key, value in record.items():
            if key != "step" and isinstance(value, int | float) and not isinstance(value, bool):
                self._writer.add_scalar(f"{self.prefix}/{key}", float(value), step)
        self._writer.flush()

    def close(self) -> None:
        self._writer.close()


def open_tensorboard(save_dir: Path, prefix: str = "train") -> TensorBoardWriter | None:
    """A writer into ``save_dir``'s event folder, or None (after the note) without tensorboardX."""
    directory = save_dir / TENSORBOARD_DIR
    if not available():
        note_missing(directory)
        return None
    return TensorBoardWriter(directory, prefix)


def _records(data: bytes) -> list[tuple[int, int]]:
    """(start, end) of each complete TFRecord in ``data``; a record cut by a kill ends the list.

    A TFRecord is a little-endian uint64 length, its 4-byte CRC, the payload and the payload's CRC.
    """
    spans, at = [], 0
    while at + 12 <= len(data):
        (length,) = struct.unpack_from("<Q", data, at)
        end = at + 12 + length + 4
        if end > len(data):
            break
        spans.append((at, end))
        at = end
    return spans


def _step(payload: bytes) -> int | None:
    """The ``step`` of an ``Event`` protobuf, or None when it is not a summary (the file header)."""
    from tensorboardX.proto.event_pb2 import Event

    event = Event()
    event.ParseFromString(payload)
    return event.step if event.HasField("summary") else None


def truncate_events(save_dir: Path, step: int) -> None:
    """Drop the events logged after ``step`` (the checkpoint a run resumes from: logged again) from
    every event file of the run; each file is rewritten under a temporary name and renamed."""
    directory = save_dir / TENSORBOARD_DIR
    if not directory.is_dir() or not available():
        return
    for path in sorted(directory.glob(_EVENTS)):
        data = path.read_bytes()
        keep = []
        for start, end in _records(data):
            event_step = _step(data[start + 12 : end - 4])
            if event_step is None or event_step <= step:
                keep.append(data[start:end])
        kept = b"".join(keep)
        if kept != data:
            with atomic_path(path) as tmp:
                tmp.write_bytes(kept)


def clear_events(save_dir: Path) -> None:
    """Remove the event files of a run directory (a new run starts in it)."""
    directory = save_dir / TENSORBOARD_DIR
    for path in directory.glob(_EVENTS) if directory.is_dir() else ():
        path.unlink(missing_ok=True)
