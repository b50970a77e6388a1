"""Faults and bad input: kills, preemption, non-finite steps, damaged checkpoints, unwritable outputs."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import jax
import numpy as np
import pytest

from elmojax.cli import main
from elmojax.errors import ElmoError
from elmojax.model.weights import save_weights
from elmojax.options import options_from_dict
from elmojax.train.checkpoints import checkpoint_manager, restore_params
from elmojax.train.loop import TrainConfig, train
from tests.helpers import ROOT, embed_argv, train_argv

KILL_STEPS = 24


def cli_train(corpus, run, steps, every):
    """``python -m elmojax train`` on the shared corpus (bilm-tf's ``--vocab_file`` spelling)."""
    extra = ("--max-steps", str(steps), "--checkpoint-every", str(every), "--log-every", "1")
    argv = train_argv(corpus.options_file, corpus.train, corpus.vocab, run, *extra)
    return [sys.executable, "-m", "elmojax", *[a.replace("--vocab-file", "--vocab_file") for a in argv]]


def leaves(run):
    step, params = restore_params(run)[1], restore_params(run)[0]
    return step, [np.asarray(x) for x in jax.tree_util.tree_leaves(params)]


def logged_step(run: Path) -> int:
    try:
        lines = (run / "metrics.jsonl").read_text().splitlines()
    except FileNotFoundError:
        return 0
    steps = [int(m.group(1)) for line in lines if (m := re.match(r'\{"step": (\d+)', line))]
    return max(steps, default=0)


def run_until(cmd, run: Path, kill_when, timeout=120.0) -> tuple[str, int]:
    """Start ``cmd``; SIGKILL it as soon as ``kill_when(run)`` is true. Returns (what happened, rc)."""
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.time() + timeout
    while proc.poll() is None and time.time() < deadline:
        if kill_when(run):
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            return "killed", proc.returncode
        time.sleep(0.001)
    proc.wait(timeout=5)
    return "finished", proc.returncode


def saving_now(run: Path) -> bool:
    ckpt = run / "checkpoints"
    return ckpt.exists() and any("tmp" in p.name for p in ckpt.iterdir())


@pytest.mark.e2e
def test_kill_9_at_several_points_then_resume_is_bit_exact(corpus, tmp_path):
    reference = tmp_path / "reference"
    subprocess.run(
        cli_train(corpus, reference, KILL_STEPS, 2),
        cwd=ROOT,
        check=True,
        capture_output=True,
    )
    run = tmp_path / "killed"
    cmd = cli_train(corpus, run, KILL_STEPS, 2)
    kills = 0
    caught_in_save = False
    for condition in (
        lambda r: logged_step(r) >= 3,  # early, between checkpoints
        saving_now,  # while orbax is writing a checkpoint
        lambda r: logged_step(r) >= 16,
    ):
        outcome, rc = run_until(cmd, run, condition)
        if outcome == "killed":
            kills += 1
            caught_in_save |= condition is saving_now
            # a kill never leaves a partial checkpoint under a final step name
            for step in checkpoint_manager(run).all_steps():
                assert (run / "checkpoints" / str(step) / "state").is_dir()
    assert kills >= 2, "the run finished before the kills could happen"
    subprocess.run(cmd, cwd=ROOT, check=True, capture_output=True)
    step_a, a = leaves(reference)
    step_b, b = leaves(run)
    assert step_a == step_b == KILL_STEPS
    for x, y in zip(a, b, strict=True):
        assert x.tobytes() == y.tobytes()
    print(f"kills survived: {kills}, one during a checkpoint write: {caught_in_save}")


def test_sigterm_saves_a_checkpoint_and_exits_0(corpus, tmp_path):
    run = tmp_path / "run"
    proc = subprocess.Popen(
        cli_train(corpus, run, 100000, 1000),
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.time() + 120
    while logged_step(run) < 5 and time.time() < deadline and proc.poll() is None:
        time.sleep(0.01)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err[-2000:]
    assert "again to resume" in err
    saved = checkpoint_manager(run).latest_step()
    assert saved is not None and saved >= 5
    assert f"stopped at step {saved} (signal 15); checkpoint {saved} saved" in err
    assert checkpoint_manager(run).all_steps() == [saved]  # no checkpoint forced at step 1


def test_non_finite_steps_are_skipped_then_stop_with_the_step(corpus, train_options, tmp_path, monkeypatch):
    options = train_options
    run = tmp_path / "run"
    cfg = TrainConfig(
        save_dir=str(run),
        train_prefix=corpus.train,
        vocab_file=corpus.vocab,
        progress=False,
        checkpoint_every=2,
        log_every=1,
        max_bad_steps=3,
    )
    train(options, cfg.__class__(**{**cfg.__dict__, "max_steps": 4}))
    before = leaves(run)
    import elmojax.train.loop as loop

    # a NaN in the sampler's tries makes every later step's loss non-finite (no recompilation)
    sample = loop.sample_negatives
    monkeypatch.setattr(loop, "sample_negatives", lambda *a: (sample(*a)[0], np.full(2, np.nan, "f4")))
    with pytest.raises(
        ElmoError, match=r"3 consecutive steps up to step 7 had a non-finite .* checkpoint is step 4"
    ):
        train(options, cfg.__class__(**{**cfg.__dict__, "max_steps": 20}))
    after = leaves(run)
    assert after[0] == 4
    for x, y in zip(before[1], after[1], strict=True):
        assert x.tobytes() == y.tobytes()


def test_damaged_latest_checkpoint_falls_back_to_previous(corpus, train_options, tmp_path, capsys):
    options = train_options
    run = tmp_path / "run"
    cfg = dict(
        save_dir=str(run),
        train_prefix=corpus.train,
        vocab_file=corpus.vocab,
        progress=False,
        checkpoint_every=2,
    )
    train(options, TrainConfig(**cfg, max_steps=4))
    # a half-written step as a kill leaves it (orbax's temporary name) is ignored ...
    (run / "checkpoints" / "6.orbax-checkpoint-tmp-123").mkdir()
    assert checkpoint_manager(run).latest_step() == 4
    # ... and a finalised but damaged one is skipped for the one before
    for f in (run / "checkpoints" / "4" / "state").rglob("*"):
        if f.is_file() and f.stat().st_size > 0:
            f.write_bytes(b"\0" * 7)
    train(options, TrainConfig(**cfg, max_steps=6))
    err = capsys.readouterr().err
    warning = next(line for line in err.splitlines() if line.startswith("warning: "))
    assert re.fullmatch(
        rf"warning: {run}: checkpoint 4 is damaged \(a [a-z ]+\); trying an older one", warning
    )
    assert [p.name.split(".")[1].split("-")[0] for p in (run / "checkpoints").glob("4.*")] == ["damaged"]
    assert checkpoint_manager(run).latest_step() == 6


def test_a_passing_read_error_is_retried_never_a_rollback(corpus, train_options, tmp_path, monkeypatch):
    import orbax.checkpoint as ocp

    run = tmp_path / "run"
    cfg = dict(save_dir=str(run), train_prefix=corpus.train, vocab_file=corpus.vocab, progress=False)
    train(train_options, TrainConfig(**cfg, checkpoint_every=2, max_steps=4))
    cfg["restore_retry_s"] = 0.01  # the pause before the one retry
    real, failures = ocp.StandardCheckpointHandler.restore, []

    def stalled(self, *args, **kwargs):  # the storage does not answer (n times)
        if len(failures) < n:
            failures.append(time.monotonic())
            raise ValueError("UNAVAILABLE: Error reading local file: connection timed out")
        return real(self, *args, **kwargs)

    monkeypatch.setattr(ocp.StandardCheckpointHandler, "restore", stalled)
    n = 2  # fails, and fails again: one line, nothing moved or rolled back
    with pytest.raises(
        ElmoError, match=r"checkpoint 4 could not be read \(the storage did not answer .*twice"
    ):
        train(train_options, TrainConfig(**cfg, checkpoint_every=2, max_steps=6))
    assert checkpoint_manager(run).all_steps() == [2, 4] and not list(
        (run / "checkpoints").glob("*.damaged*")
    )
    assert 0.01 <= failures[1] - failures[0] < 1.5  # restore_retry_s, not the default 2 s
    failures.clear()
    n = 1  # fails once: the retry reads it
    last = train(train_options, TrainConfig(**cfg, checkpoint_every=2, max_steps=6))
    assert last["step"] == 6 and len(failures) == 1
    assert logged_step(run) == 6 and checkpoint_manager(run).all_steps() == [2, 4, 6]


def test_unwritable_output_is_reported_before_work(corpus, tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    assert main(train_argv(corpus.options_file, corpus.train, corpus.vocab, blocker / "run")) == 2
    err = capsys.readouterr().err
    assert "cannot create output directory" in err and "file/run" in err and "Traceback" not in err


@pytest.mark.parametrize(
    "content, expected",
    [
        (b"ok line\n\xff\xfe bad\n", "line 2: invalid UTF-8 at byte 0"),
        (b"one\n\n", "line 2: empty line"),
        (b"", "input file is empty"),
    ],
)
def test_embed_bad_input_text(tiny_export, tmp_path, capsys, content, expected):
    (tmp_path / "in.txt").write_bytes(content)
    args = embed_argv(tmp_path / "in.txt", tmp_path / "out.hdf5", tiny_export)
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert expected in err and "in.txt" in err and "\n" not in err
    assert not (tmp_path / "out.hdf5").exists()
    if b"\xff" in content:  # --errors replace goes on, with U+FFFD in place of the bad bytes
        assert main([*args, "--errors", "replace"]) == 0
        with h5py.File(tmp_path / "out.hdf5", "r") as f:
            index = json.loads(f["sentence_to_index"][0])
            assert set(index) == {"ok line", "\ufffd\ufffd bad"} and f["1"].shape[1] == 2


def test_embed_tolerates_bom_crlf_nul_and_long_tokens(tiny_export, tmp_path):
    long_token = "x" * 300
    (tmp_path / "in.txt").write_bytes(
        b"\xef\xbb\xbfhello world\r\nnul\x00sep " + long_token.encode() + b"\r\n"
    )
    assert main(embed_argv(tmp_path / "in.txt", tmp_path / "out.hdf5", tiny_export)) == 0
    with h5py.File(tmp_path / "out.hdf5") as f:
        assert f["0"].shape[1] == 2 and f["1"].shape[1] == 3
        assert np.isfinite(f["1"][...]).all()


def test_no_pickle_anywhere_in_the_library():
    """Loading untrusted files never executes code: only JSON, HDF5 and orbax checkpoints."""
    for path in (ROOT / "elmojax").rglob("*.py"):
        text = path.read_text()
        assert "pickle" not in text and "allow_pickle=True" not in text, path


def test_options_unknown_key_warns_but_bad_type_fails_cleanly_from_cli(tmp_path, capsys):
    (tmp_path / "o.json").write_text('{"lstm": {"dim": "big"}}')
    (tmp_path / "in.txt").write_text("a\n")
    assert (
        main(
            [
                "embed",
                str(tmp_path / "in.txt"),
                str(tmp_path / "x.hdf5"),
                "--options-file",
                str(tmp_path / "o.json"),
                "--weight-file",
                str(tmp_path / "w.hdf5"),
            ]
        )
        == 2
    )
    err = capsys.readouterr().err
    assert "o.json: key 'lstm.dim' must be int" in err and "Traceback" not in err


def test_exports_go_through_a_temporary_name(tiny_options, tiny_params, tmp_path, monkeypatch):
    """A failure while the HDF5 is built, or a full disk while it is written: the earlier export
    is intact and nothing is left beside it."""
    import h5py

    target = tmp_path / "w.hdf5"
    target.write_bytes(b"previous export")
    real = h5py.File.create_dataset

    def fail_midway(self, name, *a, **k):
        if name.startswith("RNN_1"):
            raise OSError(5, "Input/output error")
        return real(self, name, *a, **k)

    with monkeypatch.context() as m:
        m.setattr(h5py.Group, "create_dataset", fail_midway)
        with pytest.raises(OSError, match="Input/output error"):
            save_weights(tiny_params, tiny_options, target)
    assert target.read_bytes() == b"previous export"
    assert [p.name for p in tmp_path.iterdir()] == ["w.hdf5"]

    def half_then_full(self, data):
        with open(self, "wb") as f:
            f.write(bytes(data)[: len(data) // 2])
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(Path, "write_bytes", half_then_full)
    with pytest.raises(ElmoError, match=r"w.hdf5: the disk is full; nothing was written under this name"):
        save_weights(tiny_params, tiny_options, target)
    assert target.read_bytes() == b"previous export"
    assert [p.name for p in tmp_path.iterdir()] == ["w.hdf5"]


def test_atomic_outputs_get_the_usual_file_mode(tiny_options, tiny_params, tmp_path):
    """Temporary files are 0600; the renamed output must read like any new file under the umask."""
    import os

    from elmojax.fileio import atomic_write_text

    mask = os.umask(0o022)
    try:
        save_weights(tiny_params, tiny_options, tmp_path / "w.hdf5")
        atomic_write_text(tmp_path / "options.json", "{}")
    finally:
        os.umask(mask)
    for name in ("w.hdf5", "options.json"):
        assert (tmp_path / name).stat().st_mode & 0o777 == 0o644


def test_kill_9_during_embed_leaves_no_partial_output(tiny_export, tmp_path):
    """SIGKILL while the HDF5 is being written: nothing appears under the final name."""
    lines = [" ".join(f"w{(i * 7 + j) % 50}" for j in range(3 + i % 20)) for i in range(4000)]
    (tmp_path / "in.txt").write_text("\n".join(lines) + "\n")
    out = tmp_path / "out" / "emb.hdf5"
    out.parent.mkdir()
    argv = embed_argv(tmp_path / "in.txt", out, tiny_export, "--top", "--batch-size", "8")
    cmd = [sys.executable, "-m", "elmojax", *argv]

    def writing(_):
        return any(p.name.endswith(".tmp") and p.stat().st_size > 0 for p in out.parent.iterdir())

    outcome, _ = run_until(cmd, tmp_path, writing)
    assert outcome == "killed", "embed finished before the kill"
    assert not out.exists()


def test_checkpoint_of_other_shapes_is_an_error_naming_the_array(corpus, train_options, tmp_path):
    """A checkpoint written with other shapes (here: twice the rows, as with twice the devices) is
    refused with the array and both shapes, not taken for a damaged one and skipped."""
    from elmojax.train.checkpoints import restore_latest
    from elmojax.train.state import init_state
    from elmojax.train.step import StepConfig

    options = train_options
    run = tmp_path / "run"
    train(options, TrainConfig(str(run), corpus.train, corpus.vocab, max_steps=2, progress=False))
    saved = json.loads((run / "options.json").read_text())
    config = StepConfig(options_from_dict(saved), len((run / "vocab.txt").read_text().split()))
    rows = 2 * options.training.batch_size
    abstract = jax.eval_shape(lambda: init_state(config, rows, jax.random.PRNGKey(0)))
    expected = r"checkpoint 2 does not fit this run \(lstm/c has shape \(2, 2, 4, 12\), this run needs"
    with pytest.raises(ElmoError, match=expected):
        restore_latest(checkpoint_manager(run), abstract, run)
    assert checkpoint_manager(run).latest_step() == 2  # nothing moved aside
