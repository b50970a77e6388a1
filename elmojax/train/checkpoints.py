"""Run directories and their orbax checkpoints: ``options.json``, ``vocab.txt``, ``checkpoints/``.

A checkpoint holds the whole train state (parameters, optimiser state, step, LSTM states, RNG key)
and every process's exact data-stream position. Restoring falls back from a damaged checkpoint
(a damaged disk, a copy cut short) to the one before it, one decision for all processes; one
written with other shapes (batch size, number of devices) is an error that says so. A checkpoint
that cannot be written because the disk is full is an error naming the last complete one; orbax
writes each step under a temporary name and renames it when complete (in the background: saves
are asynchronous), so nothing complete is lost and the same command resumes.
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
from jax.sharding import Mesh

from elmojax import parallel
from elmojax.data.vocab import Vocabulary
from elmojax.errors import ElmoError, first_line
from elmojax.fileio import DISK_FULL_TEXTS, is_disk_full
from elmojax.options import ElmoOptions, load_options


def checkpoint_manager(
    save_dir: str | Path, *, every: int = 1000, keep: int = 3, async_save: bool = False
) -> ocp.CheckpointManager:
    """The orbax manager of ``save_dir/checkpoints`` (atomic per step: written under a temporary
    name, renamed when complete). ``async_save`` writes in background threads once the arrays are
    copied to the host (training goes on meanwhile); saves are only ever forced by the caller, so
    orbax's own policies (a first checkpoint at once, its preemption check) never decide one."""
    options = ocp.CheckpointManagerOptions(
        save_interval_steps=every, max_to_keep=keep, enable_async_checkpointing=async_save, create=True
    )
    return ocp.CheckpointManager(
        Path(save_dir).absolute() / "checkpoints",
        options=options,
        item_handlers={"state": ocp.StandardCheckpointHandler(), "data": ocp.JsonCheckpointHandler()},
    )


def complete_steps(save_dir: str | Path) -> list[int]:
    """The steps of ``save_dir``'s complete checkpoints, read from the directory (a step's final
    name appears only when it is complete; temporary and moved-aside names are not steps)."""
    try:
        names = [p.name for p in (Path(save_dir) / "checkpoints").iterdir() if p.is_dir()]
    except OSError:
        return []
    return sorted(int(n) for n in names if n.isdigit())


def load_run(save_dir: str | Path) -> tuple[ElmoOptions, Vocabulary]:
    """Options and vocabulary of a training run directory."""
    save_dir = Path(save_dir)
    if not (save_dir / "options.json").exists():
        raise ElmoError(
            f"{save_dir}: not a training run directory (no options.json); run `elmojax train` first"
        )
    options = load_options(save_dir / "options.json")
    return options, Vocabulary.from_file(save_dir / "vocab.txt")


def check_run_compatible(save_dir: Path, options: ElmoOptions, ignore: tuple[str, ...] = ()) -> None:
    """Raise unless ``save_dir`` was written with these options (resuming must not change them),
    but for the top-level keys in ``ignore``."""
    saved, given = load_options(save_dir / "options.json").to_dict(), options.to_dict()
    for key in ignore:
        saved.pop(key, None), given.pop(key, None)
    if saved != given:
        diff = sorted(k for k in set(saved) | set(given) if saved.get(k) != given.get(k))
        raise ElmoError(
            f"{save_dir}: run directory was written with other options (differs in: {', '.join(diff)}); "
            "use a new `save_dir` or the same options file to resume"
        )


def restore_params(
    save_dir: str | Path, mesh: Mesh | None = None, options: ElmoOptions | None = None
) -> tuple[dict, int]:
    """Parameters ``{"bilm", "softmax"}`` of the latest complete checkpoint and its step.

    Only the parameters are needed, so the target is built from the checkpoint's own metadata:
    this works whatever batch size or number of devices the run was trained with. Without a
    ``mesh`` they come whole on every device, vocabulary-sized ones with exactly the vocabulary's
    rows; with one, laid out as training lays them out on it (rows split over its shard axis and
    padded to split evenly). ``options`` are the run's (read from ``save_dir`` when not given).
    """
    save_dir = Path(save_dir)
    mngr = checkpoint_manager(save_dir)
    step = mngr.latest_step()
    if step is None:
        raise ElmoError(f"{save_dir}: no complete checkpoint found; train first (`elmojax train`)")
    if options is None:
        options, _ = load_run(save_dir)
    n_vocab = options.require_vocab_size()
    meta = mngr.item_metadata(step)["state"]["params"]
    whole = parallel.replicated(parallel.data_mesh())

    def target(path, m):
        name = f"params/{parallel.path_name(path)}"
        shape = tuple(m.shape)
        if parallel.is_vocab_leaf(name):
            valid = n_vocab + (1 if "token_embedder" in name else 0)
            shape = (parallel.vocab_rows(valid, mesh) if mesh is not None else valid, *shape[1:])
        sharding = parallel.state_leaf_sharding(name, mesh) if mesh is not None else whole
        return jax.ShapeDtypeStruct(shape, m.dtype, sharding=sharding)

    abstract = {"params": jax.tree_util.tree_map_with_path(target, meta)}
    # the parameters alone (not the optimiser state), padding rows added or dropped as needed
    restore_args = jax.tree_util.tree_map(
        lambda t: ocp.ArrayRestoreArgs(sharding=t.sharding, global_shape=t.shape, strict=False), abstract
    )
    args = ocp.args.PyTreeRestore(item=abstract, restore_args=restore_args, partial_restore=True)
    restored = ocp.PyTreeCheckpointer().restore(Path(mngr.directory) / str(step) / "state", args=args)
    return restored["params"], step


def _leaves_by_name(tree: Any) -> dict[str, Any]:
    return {parallel.path_name(path): leaf for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]}


def _shape_mismatch(mngr: ocp.CheckpointManager, step: int, abstract_state: Any) -> tuple[str | None, bool]:
    """Where checkpoint ``step`` differs from the expected state in structure or shape (None if it
    fits), and whether only the padding rows of vocabulary-sized arrays differ (another shard
    count: restored by padding or dropping padding rows)."""
    found = _leaves_by_name(mngr.item_metadata(step)["state"])
    rows_differ = False
    for name, leaf in _leaves_by_name(abstract_state).items():
        if name not in found:
            return f"{name} is missing", rows_differ
        saved, needed = tuple(found[name].shape), tuple(leaf.shape)
        if saved == needed:
            continue
        if parallel.is_vocab_leaf(name) and saved[1:] == needed[1:]:
            rows_differ = True
            continue
        return f"{name} has shape {saved}, this run needs {needed}", rows_differ
    return None, rows_differ


def _batch_advice(found: Any, abstract_state: Any, n_devices: int | None) -> str:
    """What to do about a checkpoint of another global batch: the per-device batch size that matches."""
    saved = tuple(_leaves_by_name(found).get("lstm/c").shape)[2]
    needed = tuple(_leaves_by_name(abstract_state)["lstm/c"].shape)[2]
    if saved == needed or not n_devices:
        return "resume with the same options, batch size and number of devices"
    advice = f"it was trained with a global batch of {saved} rows, this run has {needed}"
    if saved % n_devices == 0:
        return (
            f"{advice}: on {n_devices} device(s) resume with `batch_size` {saved // n_devices} (per device)"
        )
    divisors = [k for k in range(1, saved + 1) if saved % k == 0]
    return (
        f"{advice}: no per-device batch size gives {saved} rows on {n_devices} devices; "
        f"resume on a number of devices in {divisors}"
    )


#: how storage libraries word a failure to reach data that is there (retried, never "damaged")
PASSING_IO_TEXTS = (
    "UNAVAILABLE", "DEADLINE_EXCEEDED", "RESOURCE_EXHAUSTED", "PERMISSION_DENIED", "Permission denied",
    "Input/output error", "Too many open files", "Cannot allocate memory", "timed out",
)  # fmt: skip


def _read_outcome(error: BaseException | None) -> str:
    """``ok``, ``damaged`` (data corrupt or missing: skip the step) or ``io`` (storage failing to
    answer, or out of memory: retry, then stop; never a reason to roll back)."""
    if error is None:
        return "ok"
    if isinstance(error, MemoryError) or any(s in str(error) for s in PASSING_IO_TEXTS):
        return "io"
    if isinstance(error, OSError) and not isinstance(error, FileNotFoundError):
        return "io"
    return "damaged"


def _try_restore(mngr: ocp.CheckpointManager, step: int, abstract_state: Any, rows_differ: bool):
    """Read checkpoint ``step`` in this process: ``(restored or None, the error or None)``.

    The items are read with their handlers directly: a process whose read fails must not leave the
    others waiting at the manager's closing barrier; the processes agree on the outcome instead.
    """
    directory = Path(mngr.directory) / str(step)
    try:
        state = ocp.StandardCheckpointHandler().restore(
            directory / "state", args=ocp.args.StandardRestore(abstract_state, strict=not rows_differ)
        )
        data = ocp.JsonCheckpointHandler().restore(directory / "data", args=ocp.args.JsonRestore())
        return {"state": state, "data": data}, None
    except Exception as e:  # noqa: BLE001 - classified, agreed on and reported by the caller
        return None, e


def _agreed_outcome(step: int, error: BaseException | None) -> tuple[str, str]:
    """Every process's outcome of reading ``step``, combined as process 0 decides it for all: ``ok``
    if every read succeeded, else ``io`` if any failed without damage, else ``damaged``; and the
    reason of the first process that failed (one collective)."""
    mine = {"outcome": _read_outcome(error), "reason": _reason(error) if error is not None else ""}
    everyone = [v for _, v in sorted(parallel.all_gather_json(mine).items(), key=lambda kv: int(kv[0]))]
    outcomes = {v["outcome"] for v in everyone}
    decision = "ok" if outcomes == {"ok"} else "io" if "io" in outcomes else "damaged"
    failed = [f"process {i}: {v['reason']}" if len(everyone) > 1 else v["reason"]
              for i, v in enumerate(everyone) if v["outcome"] != "ok"]  # fmt: skip
    return decision, failed[0] if failed else ""


def _reason(error: BaseException) -> str:
    """A short plain reason for a failed checkpoint read (never a library's object repr)."""
    text = str(error)
    if _read_outcome(error) == "io":
        return f"the storage did not answer ({first_line(error, 80).split(':')[0]})"
    if isinstance(error, FileNotFoundError) or "NOT_FOUND" in text or "not found" in text.lower():
        return "a file of it is missing"
    if isinstance(error, (UnicodeDecodeError, ValueError)) and ("JSON" in text or "Expecting" in text):
        return "a metadata file cannot be parsed"
    if any(s in text.lower() for s in ("data_loss", "corrupt", "decod", "error reading")):
        return "a data file cannot be decoded"
    return f"{type(error).__name__} while reading it"


def restore_latest(
    mngr: ocp.CheckpointManager,
    abstract_state: Any,
    save_dir: Path,
    n_devices: int | None = None,
    *,
    retry_after_s: float = 2.0,
) -> tuple[dict | None, int | None]:
    """Restore the newest readable checkpoint as ``{"state", "data"}`` and its step, or ``(None, None)``.

    Every process reads its part; whether a step is used is one decision, the same on every process
    (every read must succeed). A damaged step (corrupt or missing data) is skipped with a warning
    for the one before it and moved aside (not deleted; by process 0 only), so that training can
    write that step again. A read that fails without damage (storage not answering) is retried once
    after ``retry_after_s`` seconds (``restore_retry_s`` of :class:`~elmojax.config.TrainConfig`), then
    stops the run in one line: it never rolls the run back. One that reads but does not fit
    this run's shapes is an error (for another global batch, naming the per-device batch size of
    this run's ``n_devices`` that would fit); one written on another number of shards is restored
    into this run's layout (the vocabulary's padding rows added or dropped).
    """
    steps = sorted(mngr.all_steps(), reverse=True)
    damaged: list[int] = []
    for step in steps:
        try:
            mismatch, rows_differ = _shape_mismatch(mngr, step, abstract_state)
        except Exception:  # noqa: BLE001 - unreadable metadata: the read below reports it
            mismatch, rows_differ = None, False
        if mismatch is not None:
            advice = _batch_advice(mngr.item_metadata(step)["state"], abstract_state, n_devices)
            raise ElmoError(f"{save_dir}: checkpoint {step} does not fit this run ({mismatch}); {advice}")
        restored, error = _try_restore(mngr, step, abstract_state, rows_differ)
        decision, reason = _agreed_outcome(step, error)
        if decision == "io":  # once more, after a pause: storage that stalled may answer now
            time.sleep(retry_after_s)
            restored, error = _try_restore(mngr, step, abstract_state, rows_differ)
            decision, reason = _agreed_outcome(step, error)
        if decision == "io":
            raise ElmoError(
                f"{save_dir}: checkpoint {step} could not be read ({reason}), twice; nothing was moved "
                "or lost. Check the storage, then run the same command again"
            )
        if decision == "damaged":
            damaged.append(step)
            print(
                f"warning: {save_dir}: checkpoint {step} is damaged ({reason}); trying an older one",
                file=sys.stderr,
            )
            continue
        _move_aside(mngr, damaged)
        return restored, step
    if steps:
        raise ElmoError(f"{save_dir}: no readable checkpoint among steps {steps}; use a new `save_dir`")
    return None, None


def _move_aside(mngr: ocp.CheckpointManager, damaged: list[int]) -> None:
    """Rename the damaged steps to ``STEP.damaged-TIME`` (process 0 only; the others wait for it),
    so that the run can write those steps again."""
    if damaged and jax.process_index() == 0:
        stamp = int(time.time())
        for bad in damaged:
            src = Path(mngr.directory) / str(bad)
            src.rename(src.with_name(f"{bad}.damaged-{stamp}"))
            print(f"note: moved the damaged checkpoint {bad} aside to {src.name}.damaged-{stamp}",
                  file=sys.stderr)  # fmt: skip
    if damaged:
        parallel.all_succeeded(True)  # no process looks at the directory before the renames
    mngr.reload()


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


#: orbax's log lines that a one-line outcome already says (preemption: the stop line says it)
_SAID_ELSEWHERE = ("Reached preemption sync point",)


def _not_said_elsewhere(record: logging.LogRecord) -> bool:
    """A log filter: drop the records of orbax's writers about a full disk (the run says it in one
    line) and the preemption notes (the stop line says them)."""
    text = record.getMessage()
    if record.exc_info and record.exc_info[1] is not None:
        text += str(record.exc_info[1])
    return not any(s in text for s in (*DISK_FULL_TEXTS, *_SAID_ELSEWHERE))


@contextlib.contextmanager
def quiet_writer_noise() -> Iterator[None]:
    """While the block runs, drop what orbax's background writers report about a full disk on their
    own: their log records (with tracebacks) of the failed write, and the ``Event loop is closed``
    tracebacks that TensorStore's callbacks print when the writer's event loop was closed by the
    failure. The save or wait that meets the failure raises it once, as the run's one-line error.
    asyncio's filter stays after the block: it reports a failed writer task ("Task exception was
    never retrieved") when the task is garbage-collected, which can be at the interpreter's exit."""

    def closed_loop(error: BaseException | None) -> bool:
        return isinstance(error, RuntimeError) and str(error) == "Event loop is closed"

    old_excepthook, old_unraisable = sys.excepthook, sys.unraisablehook

    def excepthook(kind, error, tb):
        if not closed_loop(error):
            old_excepthook(kind, error, tb)

    def unraisablehook(unraisable):
        if not closed_loop(unraisable.exc_value):
            old_unraisable(unraisable)

    loggers = [logging.getLogger(name) for name in ("absl", "concurrent.futures")]
    for logger in loggers:
        logger.addFilter(_not_said_elsewhere)
    logging.getLogger("asyncio").addFilter(_not_said_elsewhere)  # once: a filter is added once
    sys.excepthook, sys.unraisablehook = excepthook, unraisablehook
    try:
        yield
    finally:
        sys.excepthook, sys.unraisablehook = old_excepthook, old_unraisable
        for logger in loggers:
            logger.removeFilter(_not_said_elsewhere)


class Checkpointer:
    """The checkpoints of one training run: save the state with every process's data position, restore.

    ``every`` steps between checkpoints, ``keep`` kept; a read the storage did not answer is
    retried once after ``retry_after_s`` seconds (:func:`restore_latest`). Saves are
    asynchronous: :meth:`save` returns once the arrays are copied to the host and the files are
    written in the background while training goes on; the next save, :meth:`wait` and
    :meth:`close` wait for it. A full disk, met by the save or by its background writing, is
    :func:`disk_full_error`, after removing the incomplete step orbax left under its temporary name.
    """

    def __init__(
        self, save_dir: Path, *, every: int, keep: int, async_save: bool = True, retry_after_s: float = 2.0
    ):
        self.save_dir, self.every, self.retry_after_s = save_dir, every, retry_after_s
        self.manager = checkpoint_manager(save_dir, every=every, keep=keep, async_save=async_save)
        self._quiet = quiet_writer_noise()  # for as long as writer threads may run: until close()
        self._quiet.__enter__()
        self.pending: int | None = None  # the step being written in the background
        self.incomplete: set[int] = set()  # steps a full disk cut short, removed again at close()
        self.saved: int | None = self.manager.latest_step()

    def latest_step(self) -> int | None:
        """The newest complete checkpoint on disk (one being written does not count)."""
        steps = complete_steps(self.save_dir)
        return steps[-1] if steps else None

    def due(self, step: int) -> bool:
        """Whether ``step`` is a checkpoint step (every ``every`` steps; not the first, as orbax's
        own policy would have it)."""
        return step % self.every == 0

    def restore(self, abstract_state: Any, n_devices: int | None = None) -> tuple[dict | None, int | None]:
        """The newest readable checkpoint (see :func:`restore_latest`) and its step, or ``(None, None)``."""
        restored, step = restore_latest(
            self.manager, abstract_state, self.save_dir, n_devices, retry_after_s=self.retry_after_s
        )
        self.saved = step
        return restored, step

    def save(self, step: int, state: Any, position: dict) -> None:
        """Start saving ``state`` and this process's data-stream ``position`` at ``step`` (all
        processes call it at the same step); returns while it is written, after the previous one."""
        if self.saved == step:
            return
        self.wait()
        data = {"process": parallel.all_gather_json(position)}
        args = ocp.args.Composite(state=ocp.args.StandardSave(state), data=ocp.args.JsonSave(data))
        with self._disk_full_is_one_line(step):
            self.manager.save(step, args=args, force=True)
        self.pending, self.saved = step, step

    def wait(self) -> None:
        """Wait until the checkpoint being written (if any) is complete."""
        if self.pending is None:
            return
        step, self.pending = self.pending, None
        with self._disk_full_is_one_line(step):
            self.manager.wait_until_finished()

    @contextlib.contextmanager
    def _disk_full_is_one_line(self, step: int) -> Iterator[None]:
        try:
            yield
        except Exception as e:
            if not is_disk_full(e):
                raise
            self._remove_incomplete(step)
            raise disk_full_error(self.save_dir, f"writing checkpoint {step}", self.latest_step()) from None

    def _remove_incomplete(self, step: int) -> None:
        # the save's other writer threads may still be creating files under the temporary name:
        # let them end (each meets the same full disk) before removing what they leave
        self.pending = None
        self.incomplete.add(step)
        with contextlib.suppress(Exception):
            self.manager.wait_until_finished()
        self._remove_temporary()
        with contextlib.suppress(Exception):
            self.manager.reload()

    def _remove_temporary(self, settle_s: float = 0.0) -> None:
        # tensorstore's own threads, which no orbax call joins, may still create files of a failed
        # write for a moment: with ``settle_s``, remove until a pass finds nothing for that long
        now = time.monotonic()
        settled, deadline = now + settle_s, now + 10.0
        while True:
            found = [
                tmp
                for step in self.incomplete
                for tmp in Path(self.manager.directory).glob(f"{step}.orbax-checkpoint-tmp*")
            ]
            for tmp in found:
                shutil.rmtree(tmp, ignore_errors=True)
            now = time.monotonic()
            if found:
                settled = now + settle_s
            if now >= settled or now >= deadline:
                return
            time.sleep(0.05)

    def close(self) -> None:
        """Wait for the checkpoint being written, then release orbax's threads."""
        try:
            self.wait()
        finally:
            with contextlib.suppress(Exception):
                self.manager.close()
            if self.incomplete:  # wait_until_finished returns at the first writer's failure
                self._remove_temporary(settle_s=0.5)
            self._quiet.__exit__(None, None, None)
