"""Several processes as one job on localhost (one CPU device each, gloo collectives): training that
stops, resumes and equals an uninterrupted run; a locked run directory refused by all processes;
a corpus embedded in parts equal to a single-process dump."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import h5py
import jax
import numpy as np
import pytest

from elmojax.embed.dump import embed_file
from elmojax.embed.embedder import Embedder
from elmojax.embed.parts import index_path, locate, part_path
from elmojax.train.checkpoints import restore_params
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
