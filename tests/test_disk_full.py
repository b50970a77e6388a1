"""A full disk: one line naming the directory or file, exit status 2, nothing complete lost, and the
same command resumes once space is freed. On a real small tmpfs where this machine lets the tests
mount one (root), and always with the error injected where orbax and h5py raise it."""

from __future__ import annotations

import contextlib
import json
import logging
import re
import shutil
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import h5py
import jax
import numpy as np
import pytest

from elmojax.cli import main
from elmojax.train.checkpoints import Checkpointer, checkpoint_manager, restore_params
from tests.helpers import ROOT, embed_argv, train_argv


@contextlib.contextmanager
def tmpfs(tmp_path: Path, size: str) -> Iterator[Path]:
    """A tmpfs of ``size`` (``2m``) mounted for the test (skipped where mounting is not allowed)."""
    mount = tmp_path / f"disk-{uuid.uuid4().hex[:6]}"
    mount.mkdir()
    r = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(mount)], capture_output=True
    )
    if r.returncode != 0:
        pytest.skip(
            f"cannot mount a tmpfs here ({r.stderr.decode().strip()[:80]}); the injected tests cover it"
        )
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], capture_output=True)


@pytest.fixture()
def small_disk(tmp_path):
    """A 2 MiB tmpfs mounted for the test."""
    with tmpfs(tmp_path, "2m") as mount:
        yield mount


@pytest.mark.e2e
def test_full_disk_with_the_quickstart_model_is_one_line_then_resumes_with_room(tmp_path):
    """The quickstart model's first checkpoint does not fit a 12 MB disk: orbax's background writers
    fail (and their event loops' callbacks with them), the run says so in one line and nothing else."""
    data = tmp_path / "data"
    prepare = subprocess.run(
        [sys.executable, "-m", "elmojax", "prepare", str(ROOT / "experiments" / "data" / "sample_corpus.csv"),
         "--column", "transcript", "--out", str(data), "--no-progress"],
        capture_output=True, text=True, cwd=ROOT,
    )  # fmt: skip
    assert prepare.returncode == 0, prepare.stderr[-2000:]
    with tmpfs(tmp_path, "12m") as disk:
        run = disk / "run"
        argv = [sys.executable, "-m", "elmojax", *train_argv(
            ROOT / "experiments" / "configs" / "quickstart.json", str(data / "train" / "shard_*.txt"),
            str(data / "vocab.txt"), run, "--max-steps", "2", "--checkpoint-every", "2")]  # fmt: skip
        full = subprocess.run(argv, capture_output=True, text=True, cwd=ROOT)
        assert full.returncode == 2, full.stderr[-3000:]
        lines = full.stderr.strip().splitlines()
        assert len(lines) <= 3 and "Traceback" not in full.stderr, full.stderr[-3000:]
        assert lines[-1] == (
            f"elmojax train: error: {run}: the disk is full (writing checkpoint 2); no checkpoint is "
            "complete yet. Free some space and run the same command again to resume"
        )
        assert [p.name for p in (run / "checkpoints").iterdir()] == []  # the incomplete step removed
        # room: the same filesystem, grown
        subprocess.run(["mount", "-o", "remount,size=64m", str(disk)], check=True)
        again = subprocess.run(argv, capture_output=True, text=True, cwd=ROOT)
        assert again.returncode == 0, again.stderr[-3000:]
        assert checkpoint_manager(run).all_steps() == [2]


def fill(disk: Path, leave: int) -> Path:
    """Fill ``disk`` up to ``leave`` free bytes with one file; returns it (delete it to free the space)."""
    filler = disk / "filler"
    with open(filler, "wb", buffering=0) as f:
        try:
            while True:
                f.write(b"\0" * 65536)
        except OSError:
            pass
    free = shutil.disk_usage(disk).free
    with open(filler, "r+b") as f:
        f.truncate(max(0, filler.stat().st_size - (leave - free)))
    return filler


def one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert err, "no error printed"
    assert "Traceback" not in "\n".join(err)
    return err[-1]


# orbax's writer threads leave a callback for a closed event loop behind after the failed save
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_full_disk_during_training_then_the_same_command_resumes(
    corpus, tmp_path, small_disk, capsys, caplog
):
    run = small_disk / "run"
    argv = train_argv(corpus.options_file, corpus.train, corpus.vocab, run, "--checkpoint-every", "2")
    assert main([*argv, "--max-steps", "2"]) == 0
    filler = fill(small_disk, leave=16 * 1024)  # room for metric lines, not for a checkpoint
    assert main([*argv, "--max-steps", "4"]) == 2
    err = one_line_error(capsys)
    assert f"{run}: the disk is full (writing checkpoint 4); the last complete checkpoint is step 2" in err
    steps = checkpoint_manager(run).all_steps()
    assert max(steps) == 2 and 4 not in steps  # the complete ones kept, the partial one removed
    assert not [p for p in (run / "checkpoints").iterdir() if "tmp" in p.name]
    assert not caplog.records, [r.getMessage()[:200] for r in caplog.records]  # no tracebacks from threads
    filler.unlink()
    assert main([*argv, "--max-steps", "4"]) == 0  # the same command, once there is room
    assert "resuming" in capsys.readouterr().err
    reference = tmp_path / "reference"
    assert (
        main([*train_argv(corpus.options_file, corpus.train, corpus.vocab, reference), "--max-steps", "4"])
        == 0
    )
    (a, step_a), (b, step_b) = restore_params(reference), restore_params(run)
    assert step_a == step_b == 4
    for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b), strict=True):
        assert np.asarray(x).tobytes() == np.asarray(y).tobytes()
    assert [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()] == [
        1,
        2,
        3,
        4,
    ]


def test_full_disk_during_export_and_embed_keeps_what_was_there(
    corpus, tiny_export, small_disk, tmp_path, capsys
):
    run = tmp_path / "run"
    assert main([*train_argv(corpus.options_file, corpus.train, corpus.vocab, run), "--max-steps", "1"]) == 0
    out = small_disk / "export" / "weights.hdf5"
    out.parent.mkdir()
    out.write_bytes(b"an earlier export")
    fill(small_disk, leave=4 * 1024)
    assert main(["export", "--save-dir", str(run), "--outfile", str(out)]) == 2
    assert f"{out}: the disk is full; nothing was written under this name" in one_line_error(capsys)
    assert out.read_bytes() == b"an earlier export"
    assert sorted(p.name for p in out.parent.iterdir()) == ["weights.hdf5"]

    (tmp_path / "in.txt").write_text("\n".join(" ".join(["word"] * 40) for _ in range(200)) + "\n")
    dump = small_disk / "emb.hdf5"
    assert main(embed_argv(tmp_path / "in.txt", dump, tiny_export)) == 2
    assert re.search(
        rf"{dump}: the disk is full \(about .* MiB free\); nothing was written", one_line_error(capsys)
    )
    assert not dump.exists() and not list(small_disk.glob(".emb.hdf5.*"))


def test_injected_disk_full_in_a_checkpoint_write(corpus, tmp_path, monkeypatch, capsys):
    """Where no tmpfs can be mounted: orbax's error for a full disk, raised from its save."""
    import orbax.checkpoint as ocp

    run = tmp_path / "run"
    argv = train_argv(corpus.options_file, corpus.train, corpus.vocab, run, "--checkpoint-every", "2")
    assert main([*argv, "--max-steps", "2"]) == 0
    real_save = ocp.CheckpointManager.save

    def full(self, step, *args, **kwargs):
        (Path(self.directory) / f"{step}.orbax-checkpoint-tmp").mkdir()  # what a failed write leaves
        raise ValueError(
            'RESOURCE_EXHAUSTED: Error writing local file "_sharding": Failed to write 10576 bytes to file '
            "14: No space left on device [os_error_code='28']"
        )

    monkeypatch.setattr(ocp.CheckpointManager, "save", full)
    assert main([*argv, "--max-steps", "4"]) == 2
    err = one_line_error(capsys)
    assert f"{run}: the disk is full (writing checkpoint 4); the last complete checkpoint is step 2" in err
    assert not [p for p in (run / "checkpoints").iterdir() if "tmp" in p.name]
    assert checkpoint_manager(run).latest_step() == 2
    monkeypatch.setattr(ocp.CheckpointManager, "save", real_save)
    assert main([*argv, "--max-steps", "4"]) == 0
    assert checkpoint_manager(run).latest_step() == 4


def test_injected_disk_full_in_an_hdf5_dump(tiny_export, tmp_path, monkeypatch, capsys):
    real = h5py.Group.create_dataset

    def full(self, name, *args, **kwargs):
        if name == "3":
            raise OSError(28, "No space left on device")
        return real(self, name, *args, **kwargs)

    monkeypatch.setattr(h5py.Group, "create_dataset", full)
    (tmp_path / "in.txt").write_text("a b\nc d\ne f\ng h\n")
    dump = tmp_path / "emb.hdf5"
    dump.write_bytes(b"an earlier dump")
    assert main(embed_argv(tmp_path / "in.txt", dump, tiny_export)) == 2
    assert f"{dump}: the disk is full; nothing was written under this name" in one_line_error(capsys)
    assert dump.read_bytes() == b"an earlier dump"


def test_a_writer_task_reported_after_the_checkpointer_closed_says_nothing(tmp_path, caplog):
    """asyncio reports a failed writer task when the task is garbage-collected, which can be after
    the run's one-line error and the Checkpointer's close (at the interpreter's exit): still quiet."""
    (tmp_path / "run").mkdir()
    Checkpointer(tmp_path / "run", every=1, keep=1).close()
    logging.getLogger("asyncio").error(
        "Task exception was never retrieved\nfuture: <Task finished exception=ValueError("
        "'RESOURCE_EXHAUSTED: Failed to write 9502720 bytes to file 15: No space left on device')>"
    )
    logging.getLogger("asyncio").error("an unrelated asyncio error")
    assert [r.getMessage() for r in caplog.records] == ["an unrelated asyncio error"]


def test_files_a_failed_write_creates_after_the_failure_are_removed_at_close(tmp_path):
    """The failed save's first error reaches us while tensorstore's own threads (which no orbax call
    joins) may still create files under the temporary name: close() removes them once they stop."""
    run = tmp_path / "run"
    run.mkdir()
    ckpt = Checkpointer(run, every=1, keep=1)
    ckpt.incomplete.add(4)
    late = run / "checkpoints" / "4.orbax-checkpoint-tmp-1" / "state" / "d"

    def straggler():
        for _ in range(3):  # a writer that goes on for a moment after the error
            time.sleep(0.15)
            late.mkdir(parents=True, exist_ok=True)
            (late / "chunk").write_bytes(b"\0" * 10)

    writer = threading.Thread(target=straggler)
    writer.start()
    time.sleep(0.2)  # the first file exists when close() starts
    ckpt.close()
    writer.join()
    assert not list((run / "checkpoints").iterdir())
