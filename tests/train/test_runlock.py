"""A run directory belongs to one run: a second `train` on it stops at once naming the owner; the
lock of a killed run does not block the resume; filesystems without flock fall back to host + pid."""

from __future__ import annotations

import errno
import json
import os
import signal
import socket
import subprocess
import sys
import time

import pytest

from elmojax.cli import main
from elmojax.errors import ElmoError
from elmojax.options import options_from_dict
from elmojax.train.loop import TrainConfig, train
from elmojax.train.runlock import LOCK_NAME, RunLock
from tests.helpers import ROOT, TRAIN_KEYS, tiny_options_dict, train_argv, write_corpus

HOLD_LOCK = (
    "import sys, time; from elmojax.train.runlock import RunLock; "
    "RunLock(sys.argv[1]); print('held', flush=True); time.sleep(600)"
)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("lock")
    train_glob, vocab = write_corpus(root / "train")
    options = options_from_dict(tiny_options_dict(**TRAIN_KEYS))
    options.save(root / "options.json")
    return root, train_glob, vocab, options


def train_args(corpus, run, steps=1):
    root, train_glob, vocab, _ = corpus
    extra = ("--max-steps", str(steps), "--no-compilation-cache")
    return train_argv(root / "options.json", train_glob, vocab, run, *extra)


def hold_lock_in_subprocess(run) -> subprocess.Popen:
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLD_LOCK, str(run)],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout.readline().strip() == "held"
    return proc


def test_second_train_on_a_locked_directory_stops_at_once_naming_the_owner(corpus, tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    with RunLock(run):  # a running training, as far as the directory can tell
        t0 = time.time()
        assert main(train_args(corpus, run)) == 2
        elapsed = time.time() - t0
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and err.startswith("elmojax train: error: ")
    assert str(run) in err and "in use by another training run" in err
    assert f"host {socket.gethostname()}, pid {os.getpid()}, started 20" in err
    assert elapsed < 5, elapsed  # refused before any data, model or compilation work
    assert sorted(p.name for p in run.iterdir()) == [LOCK_NAME]  # nothing else written
    assert (run / LOCK_NAME).read_text() == ""  # released: the owner file emptied


def test_lock_of_a_killed_run_does_not_block_the_resume(corpus, tmp_path, capsys):
    _, train_glob, vocab, options = corpus
    run = tmp_path / "run"

    def config(steps):
        return TrainConfig(
            save_dir=str(run), train_prefix=train_glob, vocab_file=vocab, max_steps=steps, progress=False
        )

    train(options, config(1))
    holder = hold_lock_in_subprocess(run)
    try:
        with pytest.raises(ElmoError, match=f"pid {holder.pid}, started"):
            train(options, config(2))
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    assert json.loads((run / LOCK_NAME).read_text())["pid"] == holder.pid  # the dead owner is still named
    capsys.readouterr()
    last = train(options, config(2))  # the OS dropped the flock with the process: resume
    assert last["step"] == 2 and f"resuming {run} from step 1" in capsys.readouterr().err


def test_without_flock_the_owner_file_decides(tmp_path, monkeypatch, capsys):
    def no_flock(fd, op):
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr("elmojax.train.runlock.fcntl.flock", no_flock)
    lock_file = tmp_path / LOCK_NAME
    host = socket.gethostname()

    with RunLock(tmp_path):
        assert json.loads(lock_file.read_text())["pid"] == os.getpid()
    assert "does not support flock" in capsys.readouterr().err
    assert lock_file.read_text() == ""  # a clean end frees the directory

    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    try:
        lock_file.write_text(json.dumps({"host": host, "pid": sleeper.pid, "started": "x"}))
        with pytest.raises(ElmoError, match=rf"pid {sleeper.pid}.*delete {lock_file}"):
            RunLock(tmp_path)
    finally:
        sleeper.kill()
        sleeper.wait()
    RunLock(tmp_path).release()  # the same owner, now dead: taken over

    lock_file.write_text(json.dumps({"host": "other-node", "pid": 1, "started": "x"}))
    with pytest.raises(ElmoError, match="host other-node, pid 1"):
        RunLock(tmp_path)  # cannot be checked from here: blocks until removed
    lock_file.unlink()
    RunLock(tmp_path).release()
