"""Run directories and their orbax checkpoints: ``options.json``, ``vocab.txt``, ``checkpoints/``.

A checkpoint holds the whole train state (parameters, optimiser state, step, LSTM states, RNG key)
and every process's exact data-stream position. Restoring falls back from an unreadable checkpoint
(a damaged disk, a copy cut short) to the one before it; one written with other shapes (batch size,
number of devices) is an error that says so. A checkpoint that cannot be written because the disk
is full is an error naming the last complete one; orbax writes each step under a temporary name
and renames it when complete, so nothing complete is lost and the same command resumes.
"""

from __future__ import annotations

import contextlib
import logging
import shutil
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jax
import orbax.checkpoint as ocp

from elmojax import parallel
from elmojax.data.vocab import Vocabulary
from elmojax.errors import ElmoError
from elmojax.fileio import is_disk_full
from elmojax.options import ElmoOptions, load_options


def checkpoint_manager(save_dir: str | Path, *, every: int = 1000, keep: int = 3) -> ocp.CheckpointManager:
    """The orbax manager of ``save_dir/checkpoints`` (synchronous, atomic per step)."""
    options = ocp.CheckpointManagerOptions(
        save_interval_steps=every, max_to_keep=keep, enable_async_checkpointing=False, create=True
    )
    return ocp.CheckpointManager(
        Path(save_dir).absolute() / "checkpoints",
        options=options,
        item_handlers={"state": ocp.StandardCheckpointHandler(), "data": ocp.JsonCheckpointHandler()},
    )


def load_run(save_dir: str | Path) -> tuple[ElmoOptions, Vocabulary]:
    """Options and vocabulary of a training run directory."""
    save_dir = Path(save_dir)
    if not (save_dir / "options.json").exists():
        raise ElmoError(
            f"{save_dir}: not a training run directory (no options.json); run `elmojax train` first"
        )
    options = load_options(save_dir / "options.json")
    return options, Vocabulary.from_file(save_dir / "vocab.txt")


def check_run_compatible(save_dir: Path, options: ElmoOptions) -> None:
    """Raise unless ``save_dir`` was written with these options (resuming must not change them)."""
    saved, given = load_options(save_dir / "options.json").to_dict(), options.to_dict()
    if saved != given:
        diff = sorted(k for k in set(saved) | set(given) if saved.get(k) != given.get(k))
        raise ElmoError(
            f"{save_dir}: run directory was written with other options (differs in: {', '.join(diff)}); "
            "use a new `save_dir` or the same options file to resume"
        )


def restore_params(save_dir: str | Path) -> tuple[dict, int]:
    """Parameters ``{"bilm", "softmax"}`` of the latest complete checkpoint and its step.

    Only the parameters are needed, so the target is built from the checkpoint's own metadata:
    this works whatever batch size or number of devices the run was trained with.
    """
    mngr = checkpoint_manager(save_dir)
    step = mngr.latest_step()
    if step is None:
        raise ElmoError(
            f"{save_dir}: no complete checkpoint found; train first (elmojax train --save-dir ...)"
        )
    sharding = parallel.replicated(parallel.data_mesh())
    meta = mngr.item_metadata(step)["state"]
    target = jax.tree_util.tree_map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=sharding), meta)
    restored = mngr.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(target)))
    return restored["state"]["params"], step


def _leaves_by_name(tree: Any) -> dict[str, Any]:
    return {parallel.path_name(path): leaf for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]}


def _shape_mismatch(mngr: ocp.CheckpointManager, step: int, abstract_state: Any) -> str | None:
    """Where checkpoint ``step`` differs from the expected state in structure or shape, else None."""
    found = _leaves_by_name(mngr.item_metadata(step)["state"])
    for name, leaf in _leaves_by_name(abstract_state).items():
        if name not in found:
            return f"{name} is missing"
        if tuple(found[name].shape) != tuple(leaf.shape):
            return f"{name} has shape {tuple(found[name].shape)}, this run needs {tuple(leaf.shape)}"
    return None


def restore_latest(
    mngr: ocp.CheckpointManager, abstract_state: Any, save_dir: Path
) -> tuple[dict | None, int | None]:
    """Restore the newest readable checkpoint as ``{"state", "data"}`` and its step, or ``(None, None)``.

    An unreadable one is skipped with a warning in favour of the one before it and moved aside (not
    deleted), so that training can write that step again. One that reads but does not fit this
    run's shapes is an error.
    """
    steps = sorted(mngr.all_steps(), reverse=True)
    unreadable: list[int] = []
    for step in steps:
        try:
            mismatch = _shape_mismatch(mngr, step, abstract_state)
        except Exception:  # noqa: BLE001 - unreadable metadata: the restore below reports it
            mismatch = None
        if mismatch is not None:
            raise ElmoError(
                f"{save_dir}: checkpoint {step} does not fit this run ({mismatch}); "
                "resume with the same options, batch size and number of devices"
            )
        try:
            restored = mngr.restore(
                step,
                args=ocp.args.Composite(
                    state=ocp.args.StandardRestore(abstract_state), data=ocp.args.JsonRestore()
                ),
            )
        except Exception as e:  # noqa: BLE001 - any damage to one step must not lose the run
            unreadable.append(step)
            first = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
            print(
                f"warning: {save_dir}: checkpoint {step} is unreadable ({first}); trying an older one",
                file=sys.stderr,
            )
            continue
        for bad in unreadable:
            src = Path(mngr.directory) / str(bad)
            src.rename(src.with_name(f"{bad}.unreadable-{int(time.time())}"))
        mngr.reload()
        return restored, step
    if steps:
        raise ElmoError(f"{save_dir}: no readable checkpoint among steps {steps}; use a new `save_dir`")
    return None, None


def disk_full_error(save_dir: Path, what: str, latest: int | None) -> ElmoError:
    """The one-line error for a full disk in a run directory."""
    last = (
        f"the last complete checkpoint is step {latest}"
        if latest is not None
        else "no checkpoint is complete yet"
    )
    return ElmoError(
        f"{save_dir}: the disk is full ({what}); {last}. Free some space and run the same command again "
        "to resume"
    )


@contextlib.contextmanager
def _quiet_disk_full(logger: logging.Logger) -> Iterator[None]:
    """Drop ``logger``'s records of a full disk while the block runs: orbax's writer threads each log
    the failure with a traceback before the save raises it, and the save's error says it once."""

    def keep(record: logging.LogRecord) -> bool:
        return not any(s in record.getMessage() for s in ("No space left on device", "Disk quota exceeded"))

    logger.addFilter(keep)
    try:
        yield
    finally:
        logger.removeFilter(keep)


class Checkpointer:
    """The checkpoints of one training run: save the state with every process's data position, restore.

    ``every`` steps between checkpoints, ``keep`` kept. :meth:`save` turns a full disk into
    :func:`disk_full_error`, after removing the incomplete step orbax left under its temporary name.
    """

    def __init__(self, save_dir: Path, *, every: int, keep: int):
        self.save_dir = save_dir
        self.manager = checkpoint_manager(save_dir, every=every, keep=keep)

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def due(self, step: int) -> bool:
        """Whether ``step`` is a checkpoint step (every ``every`` steps)."""
        return self.manager.should_save(step)

    def restore(self, abstract_state: Any) -> tuple[dict | None, int | None]:
        """The newest readable checkpoint (see :func:`restore_latest`) and its step, or ``(None, None)``."""
        return restore_latest(self.manager, abstract_state, self.save_dir)

    def save(self, step: int, state: Any, position: dict, *, force: bool = False) -> None:
        """Save ``state`` and this process's data-stream ``position`` (all processes call it)."""
        if self.manager.latest_step() == step or not (force or self.manager.should_save(step)):
            return
        data = {"process": parallel.all_gather_json(position)}
        args = ocp.args.Composite(state=ocp.args.StandardSave(state), data=ocp.args.JsonSave(data))
        try:
            with _quiet_disk_full(logging.getLogger("absl")):
                self.manager.save(step, args=args, force=force)
                self.manager.wait_until_finished()
        except Exception as e:
            if not is_disk_full(e):
                raise
            self._remove_incomplete(step)
            raise disk_full_error(
                self.save_dir, f"writing checkpoint {step}", self._latest_complete()
            ) from None

    def _latest_complete(self) -> int | None:
        self.manager.reload()
        return self.manager.latest_step()

    def _remove_incomplete(self, step: int) -> None:
        for tmp in (Path(self.manager.directory)).glob(f"{step}.orbax-checkpoint-tmp*"):
            shutil.rmtree(tmp, ignore_errors=True)

    def close(self) -> None:
        self.manager.wait_until_finished()
        self.manager.close()
