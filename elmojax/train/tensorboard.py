"""TensorBoard event files of a run, ``SAVE_DIR/tensorboard/``, written with tensorboardX (no TensorFlow).

Every number of a training record becomes the scalar ``train/KEY`` at the record's step (so the
events hold what ``metrics.jsonl`` holds, at TensorBoard's float32 precision), and ``evaluate``'s
perplexities ``eval/KEY`` at the step of the checkpoint it scored. A run resumed from checkpoint
``S`` opens its writer with tensorboardX's ``purge_step=S + 1``: the new event file starts with a
``SessionLog.START`` at that step, and TensorBoard hides every event of the earlier files at or after
it, so no step is shown twice (the files themselves are left as written). tensorboardX is optional
(the ``tensorboard`` extra); without it a one-line note says what to install and nothing else changes.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

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
    the order TensorBoard reads them in (so a later file's purge applies to the earlier ones). With
    ``purge_step``, TensorBoard drops the earlier files' events from that step on.
    """

    def __init__(self, directory: Path, prefix: str = "train", purge_step: int | None = None):
        from tensorboardX import SummaryWriter

        self.directory, self.prefix = directory, prefix
        # two writers in one second would share tensorboardX's default name; the suffix orders them
        self._writer = SummaryWriter(
            str(directory), purge_step=purge_step, filename_suffix=f".{time.time_ns()}"
        )

    def write(self, record: dict) -> None:
        step = int(record["step"])
        for key, value in record.items():
            if key != "step" and isinstance(value, int | float) and not isinstance(value, bool):
                self._writer.add_scalar(f"{self.prefix}/{key}", float(value), step)
        self._writer.flush()

    def close(self) -> None:
        self._writer.close()


def open_tensorboard(
    save_dir: Path, prefix: str = "train", purge_step: int | None = None
) -> TensorBoardWriter | None:
    """A writer into ``save_dir``'s event folder, or None (after the note) without tensorboardX.
    ``purge_step``: the first step a resumed run logs again (see :class:`TensorBoardWriter`)."""
    directory = save_dir / TENSORBOARD_DIR
    if not available():
        note_missing(directory)
        return None
    return TensorBoardWriter(directory, prefix, purge_step)


def clear_events(save_dir: Path) -> None:
    """Remove the event files of a run directory (a new run starts in it)."""
    directory = save_dir / TENSORBOARD_DIR
    for path in directory.glob(_EVENTS) if directory.is_dir() else ():
        path.unlink(missing_ok=True)
