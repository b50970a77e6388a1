"""Several processes as one job on localhost (one CPU device each, gloo collectives): training that
stops, resumes and equals an uninterrupted run; a stop request to one process stops all at the same
step; a killed process ends the others in one line; a damaged checkpoint skipped by all alike; a
locked run directory refused by all processes; a corpus embedded in parts equal to a single-process
dump."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import h5py
import jax
import numpy as np
import pytest

from elmojax.embed.dump import embed_file
from elmojax.embed.embedder import Embedder
from elmojax.embed.parts import index_path, locate, part_path
from elmojax.runtime import PEER_LOST_STATUS
from elmojax.train.checkpoints import checkpoint_manager, complete_steps, restore_params
from elmojax.train.loop import AGREE_EVERY
from elmojax.train.runlock import RunLock
from tests.helpers import ROOT, embed_argv, train_argv

#: what every process reports alike; tokens_per_s and compile_s are timings
SHARED_METRICS = ("step", "tokens", "train_perplexity", "loss_forward", "loss_backward", "grad_norm")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def start_processes(command: list[str], n: int = 2) -> list[subprocess.Popen]:
    """Start ``elmojax COMMAND --distributed`` as ``n`` processes on localhost."""
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}  # one CPU device per process
    env.update(JAX_PLATFORMS="cpu", PYTHONPATH=str(ROOT))
    address = f"localhost:{free_port()}"
    return [
        subprocess.Popen(
            [sys.executable, "-m", "elmojax", *command, "--distributed", "--coordinator-address", address]
            + ["--num-processes", str(n), "--process-id", str(i)],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(n)
    ]


def wait_processes(procs: list[subprocess.Popen], timeout: float = 240) -> list[subprocess.CompletedProcess]:
    """Wait for all of ``procs`` (killing the rest if one hangs); their outcomes in order."""
    try:
        outs = [p.communicate(timeout=timeout) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    return [
        subprocess.CompletedProcess(p.args, p.returncode, o, e) for p, (o, e) in zip(procs, outs, strict=True)
    ]


def run_processes(command: list[str], n: int = 2, timeout: float = 240) -> list[subprocess.CompletedProcess]:
    return wait_processes(start_processes(command, n), timeout)


def train_command(corpus, run, steps: int) -> list[str]:
    extra = ("--max-steps", str(steps), "--checkpoint-every", "2", "--log-every", "1")
    return train_argv(corpus.options_file, corpus.train, corpus.vocab, run, *extra)


def final_metrics(results: list[subprocess.CompletedProcess]) -> list[dict]:
    for r in results:
        assert r.returncode == 0, r.stderr[-3000:]
    return [{k: json.loads(r.stdout.strip().splitlines()[-1])[k] for k in SHARED_METRICS} for r in results]


@pytest.mark.e2e
def test_two_processes_stop_resume_and_equal_an_uninterrupted_run(corpus, tmp_path):
    run = tmp_path / "run"
    # one after the other: later runs read the compiled steps the first one cached
    reference = final_metrics(run_processes(train_command(corpus, tmp_path / "reference", 4)))
    first = final_metrics(run_processes(train_command(corpus, run, 2)))
    assert reference[0] == reference[1]  # both processes took the same global steps
    assert reference[0]["step"] == 4 and reference[0]["tokens"] == 4 * 2 * 4 * 6  # 2 devices x 4 rows
    assert first[0] == first[1] and first[0]["step"] == 2
    resumed = run_processes(train_command(corpus, run, 4))
    for r in resumed:
        assert "from step 2" in r.stderr, r.stderr[-2000:]
    resumed_metrics = final_metrics(resumed)
    assert resumed_metrics[0] == resumed_metrics[1] == reference[0]

    # the checkpointed parameters of the resumed run equal the uninterrupted run's, bit for bit
    (a, step_a), (b, step_b) = restore_params(tmp_path / "reference"), restore_params(run)
    assert step_a == step_b == 4
    for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b), strict=True):
        assert np.asarray(x).tobytes() == np.asarray(y).tobytes()
    # metrics.jsonl, written by process 0 alone, has each step once, as the reference has
    logged = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    expected = [
        json.loads(line) for line in (tmp_path / "reference" / "metrics.jsonl").read_text().splitlines()
    ]
    assert [m["step"] for m in logged] == [1, 2, 3, 4]
    assert [m["loss_forward"] for m in logged] == [m["loss_forward"] for m in expected]

    # one process cannot take over two processes' data positions: refused in one line
    one = subprocess.run(
        [sys.executable, "-m", "elmojax", *train_command(corpus, run, 6), "--batch-size", "8"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={**os.environ, "JAX_PLATFORMS": "cpu"},
    )
    assert one.returncode == 2, one.stderr[-2000:]
    assert (
        "was written by 2 process(es)" in one.stderr and "resume it with 2 process(es), not 1" in one.stderr
    )


#: steps of the runs that are stopped part way, and the steps between their checkpoints
LONG_STEPS, LONG_EVERY = 40, 5


@pytest.fixture(scope="module")
def long_reference(corpus, tmp_path_factory) -> Path:
    """An uninterrupted two-process run of ``LONG_STEPS`` steps."""
    run = tmp_path_factory.mktemp("long") / "reference"
    final_metrics(run_processes(long_command(corpus, run)))
    return run


def long_command(corpus, run) -> list[str]:
    extra = ("--max-steps", str(LONG_STEPS), "--checkpoint-every", str(LONG_EVERY), "--log-every", "1")
    return train_argv(corpus.options_file, corpus.train, corpus.vocab, run, *extra)


def logged_steps(run: Path) -> list[int]:
    try:
        return [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    except (FileNotFoundError, json.JSONDecodeError):
        return []


def wait_until(condition, procs, timeout: float = 240) -> None:
    deadline = time.time() + timeout
    while not condition() and time.time() < deadline and all(p.poll() is None for p in procs):
        time.sleep(0.01)
    assert condition(), "the run ended before the condition held"


def assert_equal_runs(reference: Path, run: Path) -> None:
    """Checkpointed parameters equal bit for bit, and the logged losses equal, step by step."""
    (a, step_a), (b, step_b) = restore_params(reference), restore_params(run)
    assert step_a == step_b
    for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b), strict=True):
        assert np.asarray(x).tobytes() == np.asarray(y).tobytes()
    lines = [(r / "metrics.jsonl").read_text().splitlines() for r in (reference, run)]
    expected, logged = ([json.loads(line) for line in ls] for ls in lines)
    assert [m["step"] for m in logged] == list(range(1, LONG_STEPS + 1))
    assert [m["loss_forward"] for m in logged] == [m["loss_forward"] for m in expected]


@pytest.mark.e2e
@pytest.mark.parametrize("service", ["jax-preemption-service", "no-service"])
def test_sigterm_to_one_process_stops_every_process_at_the_same_step(
    corpus, long_reference, tmp_path, monkeypatch, service
):
    """With JAX's preemption service (the default), and without it (the processes agree on their
    stop flags every few steps)."""
    if service == "no-service":
        monkeypatch.setenv("JAX_ENABLE_PREEMPTION_SERVICE", "false")
    run = tmp_path / "run"
    procs = start_processes(long_command(corpus, run))
    wait_until(lambda: len(logged_steps(run)) >= 4, procs)
    procs[1].send_signal(signal.SIGTERM)  # process 1 only: JAX's notifier tells process 0
    results = wait_processes(procs)
    stops = []
    for r in results:
        assert r.returncode == 0, r.stderr[-3000:]  # both exit 0 after the checkpoint, as one process does
        assert "Traceback" not in r.stderr and "internal error" not in r.stderr
        stops.append(
            int(re.search(r"stopped at step (\d+) .*checkpoint \1 saved by every process", r.stderr)[1])
        )
        assert json.loads(r.stdout.strip().splitlines()[-1])["preempted"] is True
    assert stops[0] == stops[1] < LONG_STEPS  # the same step on both
    if service == "no-service":
        assert stops[0] % AGREE_EVERY == 0
    assert complete_steps(run)[-1] == stops[0] == logged_steps(run)[-1]  # nothing logged is lost
    resumed = run_processes(long_command(corpus, run))
    for r in resumed:
        assert f"from step {stops[0]}" in r.stderr, r.stderr[-2000:]
    final_metrics(resumed)
    assert_equal_runs(long_reference, run)


@pytest.mark.e2e
def test_a_killed_process_ends_the_other_in_one_line_then_the_restart_resumes(
    corpus, long_reference, tmp_path
):
    run = tmp_path / "run"
    procs = start_processes(long_command(corpus, run))
    wait_until(lambda: complete_steps(run) and len(logged_steps(run)) >= LONG_EVERY + 3, procs)
    procs[1].send_signal(signal.SIGKILL)
    killed_at = time.time()
    survivor = wait_processes(procs, timeout=150)[0]
    assert time.time() - killed_at < 120  # the bound, by default
    assert survivor.returncode == PEER_LOST_STATUS, survivor.stderr[-3000:]
    last = complete_steps(run)[-1]
    lines = [line for line in survivor.stderr.splitlines() if not line.startswith("model: ")]
    assert lines == [
        f"elmojax train: error: process 0 of 2: another process of this job is gone (a collective with it "
        f"failed); {run}: the last complete checkpoint is step {last}. Restart all processes with the same "
        "command to resume"
    ]
    resumed = run_processes(long_command(corpus, run))  # the same command, on both
    for r in resumed:
        assert f"from step {last}" in r.stderr, r.stderr[-2000:]
    final_metrics(resumed)
    assert_equal_runs(long_reference, run)


@pytest.mark.e2e
def test_a_damaged_checkpoint_is_skipped_by_every_process_alike(corpus, tmp_path):
    run = tmp_path / "run"
    final_metrics(run_processes(train_command(corpus, run, 4)))
    # the data process 1 wrote for step 4 damaged (its rows of the LSTM states): only process 1 reads
    # them, process 0's read succeeds; both must still restore the same step
    damaged = [f for f in (run / "checkpoints" / "4" / "state" / "ocdbt.process_1" / "d").iterdir()]
    assert damaged
    for f in damaged:
        f.write_bytes(b"\0" * 7)
    results = run_processes(train_command(corpus, run, 6))
    final_metrics(results)
    for i, r in enumerate(results):
        assert "from step 2" in r.stderr, r.stderr[-2000:]
        warning = next(line for line in r.stderr.splitlines() if line.startswith("warning: "))
        assert re.fullmatch(
            rf"warning: {run}: checkpoint 4 is damaged \(process \d: a [a-z ]+\); trying an older one",
            warning,
        )
        assert ("note: moved the damaged checkpoint 4 aside" in r.stderr) == (i == 0)  # process 0 moves it
    assert len(list((run / "checkpoints").glob("4.damaged-*"))) == 1
    assert checkpoint_manager(run).all_steps() == [2, 4, 6]  # steps 4 and 6 written again


def test_locked_run_directory_stops_every_process(corpus, tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    with RunLock(run):  # this test process owns the directory
        results = run_processes(train_command(corpus, run, 2), timeout=120)
    assert [r.returncode for r in results] == [2, 2]
    err0 = results[0].stderr.strip().splitlines()[-1]
    assert err0.startswith("elmojax train: error:") and f"pid {os.getpid()}" in err0 and str(run) in err0
    assert "process 0 could not lock the run directory" in results[1].stderr
    assert not (run / "options.json").exists()


def read_dump(path) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    with h5py.File(path, "r") as f:
        arrays = {k: f[k][()] for k in f if k != "sentence_to_index"}
        return arrays, json.loads(f["sentence_to_index"][0])


def test_two_processes_embed_parts_equal_a_single_process_dump(tiny_export, tmp_path):
    rng = np.random.default_rng(0)
    words = ["the", "cat", "sees", "a", "dog", "river", "."]
    lines = [" ".join(rng.choice(words, size=1 + i % 9)) for i in range(23)]
    lines[15] = lines[14] = lines[3]  # a repeated sentence in each part and across parts
    (tmp_path / "in.txt").write_text("\n".join(lines) + "\n")
    out = tmp_path / "emb.h5"
    results = run_processes(embed_argv(tmp_path / "in.txt", out, tiny_export, "--batch-size", "4"))
    for r in results:
        assert r.returncode == 0, r.stderr[-3000:]
    embedder = Embedder.from_files(tiny_export.options_file, tiny_export.weight_file, batch_size=4)
    embed_file(embedder, tmp_path / "in.txt", tmp_path / "single.h5", batch_size=4)
    single, single_index = read_dump(tmp_path / "single.h5")

    parts = [read_dump(part_path(out, i, 2)) for i in range(2)]
    assert sorted(parts[0][0], key=int) == [str(i) for i in range(11)]  # lines 0-10, then 11-22
    assert sorted(parts[1][0], key=int) == [str(i) for i in range(11, 23)]
    union = {**parts[0][0], **parts[1][0]}
    assert union.keys() == single.keys()
    for key, array in single.items():  # bit for bit: a sentence's embedding ignores its batch mates
        assert union[key].shape == array.shape and union[key].tobytes() == array.tobytes(), key
    # each part's sentence_to_index names its own first dataset of each sentence, as a single file does
    assert parts[0][1][lines[3]] == "3" and parts[1][1][lines[3]] == "14"
    assert {**parts[1][1], **parts[0][1]} == single_index

    index = json.loads(index_path(out).read_text())
    assert index["n_sentences"] == 23 and [p["n_lines"] for p in index["parts"]] == [11, 12]
    for line in range(23):
        file, name = locate(index_path(out), line)
        with h5py.File(file, "r") as f:
            assert f[name].shape == single[str(line)].shape
    assert not out.exists()  # the parts and the index are the output
