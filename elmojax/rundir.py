"""Run directories: ``options.json``, ``vocab.txt``, ``metrics.jsonl`` and orbax checkpoints.

A checkpoint holds the whole train state (parameters, optimiser state, step, LSTM states, RNG key)
and every process's exact data-stream position. Restoring falls back from an unreadable checkpoint
(a damaged disk, a copy cut short) to the one before it; one written with other shapes (batch size,
number of devices) is an error that says so. Export writes the standard ELMo files of a run.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from elmojax.errors import ElmoError
from elmojax.fileio import atomic_write_text, check_writable_dir
from elmojax.options import ElmoOptions, load_options
from elmojax.vocab import Vocabulary


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
            "use a new --save-dir or the same options file to resume"
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
    sharding = NamedSharding(Mesh(np.array(jax.devices()), ("data",)), P())
    meta = mngr.item_metadata(step)["state"]
    target = jax.tree_util.tree_map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=sharding), meta)
    restored = mngr.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(target)))
    return restored["state"]["params"], step


def _leaves_by_name(tree: Any) -> dict[str, Any]:
    # dataclass fields, dict keys and tuple positions alike, as the checkpoint metadata names them
    def name(path) -> str:
        return "/".join(str(getattr(k, "name", getattr(k, "key", getattr(k, "idx", k)))) for k in path)

    return {name(path): leaf for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]}


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
        raise ElmoError(f"{save_dir}: no readable checkpoint among steps {steps}; use a new --save-dir")
    return None, None


def gather_positions(position: dict) -> dict[str, dict]:
    """Every process's data-stream position, keyed by process index (one collective on multi-host)."""
    if jax.process_count() == 1:
        return {"0": position}
    raw = np.frombuffer(json.dumps(position).encode(), np.uint8)
    size = int(multihost_utils.process_allgather(np.array(len(raw))).max())
    gathered = multihost_utils.process_allgather(np.pad(raw, (0, size - len(raw)), constant_values=32))
    return {str(i): json.loads(bytes(p).decode()) for i, p in enumerate(gathered)}


def truncate_metrics(path: Path, step: int) -> None:
    """Drop metric lines logged after the checkpoint we resume from (they will be logged again)."""
    if not path.exists():
        return
    keep = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            if json.loads(line)["step"] <= step:
                keep.append(line)
        except (ValueError, KeyError):
            continue  # a line cut by a kill
    atomic_write_text(path, "".join(f"{x}\n" for x in keep))


def export_run(save_dir: str | Path, outfile: str | Path) -> Path:
    """Write the standard ELMo files of a run: weights HDF5 + ``options.json`` + ``vocab.txt`` beside it."""
    from elmojax.weights import save_weights

    options, vocab = load_run(save_dir)
    params, step = restore_params(save_dir)
    outfile = Path(outfile)
    check_writable_dir(outfile.parent if str(outfile.parent) else Path("."))
    save_weights({"params": jax.device_get(params["bilm"])}, options, outfile)
    options.save(outfile.parent / "options.json", for_export=True)
    vocab.save(outfile.parent / "vocab.txt")
    return outfile
