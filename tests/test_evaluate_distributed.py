"""``evaluate`` across processes: two local processes (one CPU device each, gloo collectives) on
held-out shards of very different sizes give one process's figures with the same global batch."""

from __future__ import annotations

import json

import jax
import numpy as np
import pytest

from elmojax.evaluate import evaluate
from elmojax.train.loop import TrainConfig, train
from tests.helpers import train_argv
from tests.test_distributed import run_processes

FIGURES = ("perplexity", "forward_perplexity", "backward_perplexity")


def uneven_shards(directory, sizes=(3, 11, 26)) -> str:
    """Held-out shards of ``sizes`` sentences: two processes dealing them whole would get 29 and 11."""
    rng = np.random.default_rng(5)
    words = ["the", "cat", "sees", "a", "dog", "river", "likes", "bread", ".", "zebra"]  # zebra: <UNK>
    directory.mkdir()
    for i, n in enumerate(sizes):
        lines = [" ".join(rng.choice(words, size=int(rng.integers(1, 12)))) for _ in range(n)]
        (directory / f"heldout_{i}.txt").write_text("\n".join(lines) + "\n")
    return str(directory / "heldout_*.txt")


@pytest.mark.e2e
def test_two_processes_evaluate_uneven_shards_as_one_process(tmp_path, corpus, train_options):
    run = tmp_path / "run"
    config = TrainConfig(
        str(run), corpus.train, corpus.vocab, max_steps=6, checkpoint_every=6, progress=False
    )
    train(train_options, config, devices=jax.devices()[:1])
    heldout = uneven_shards(tmp_path / "heldout")

    # 2 processes x 1 device x 2 rows against 1 device x 4 rows: the same global batch
    command = ["evaluate", "--save-dir", str(run), "--test-prefix", heldout, "--batch-size", "4"]
    results = run_processes([*command, "--per-sentence", "--no-progress"], timeout=300)
    for r in results:
        assert r.returncode == 0, r.stderr[-3000:]
    assert "perplexity" not in results[1].stdout  # process 0 prints (gloo's own lines aside)
    two = json.loads(results[0].stdout.strip().splitlines()[-1])
    one = evaluate(run, heldout, batch_size=4, per_sentence=True, devices=jax.devices()[:1])

    lines = [line for i in range(3) for line in open(tmp_path / "heldout" / f"heldout_{i}.txt")]
    assert one["n_tokens"] == two["n_tokens"] == sum(len(line.split()) + 1 for line in lines)
    assert two["step"] == one["step"] == 6
    for figure in FIGURES:
        assert two[figure] == pytest.approx(one[figure], rel=1e-5), figure
        assert two["per_sentence"][figure] == pytest.approx(one["per_sentence"][figure], rel=1e-5), figure
        print(f"{figure}: relative difference {two[figure] / one[figure] - 1:.1e}", end="; ")
        print(f"per sentence {two['per_sentence'][figure] / one['per_sentence'][figure] - 1:.1e}")


@pytest.mark.e2e
def test_two_processes_training_heldout_record_equals_one_process_evaluate(tmp_path, corpus):
    run = tmp_path / "run"
    heldout = uneven_shards(tmp_path / "heldout")
    extra = (
        "--max-steps",
        "4",
        "--checkpoint-every",
        "4",
        "--heldout-prefix",
        heldout,
        "--heldout-tokens",
        "150",
    )
    results = run_processes(
        train_argv(corpus.options_file, corpus.train, corpus.vocab, run, *extra), timeout=300
    )
    for r in results:
        assert r.returncode == 0, r.stderr[-3000:]
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    (record,) = [r for r in records if "heldout_perplexity" in r]
    # 2 processes x 4 rows: one device with 8 rows scores the same text the same way
    one = evaluate(run, heldout, batch_size=8, max_tokens=150, devices=jax.devices()[:1])
    assert record["step"] == one["step"] == 4
    assert record["heldout_tokens"] == one["n_tokens"] <= 150
    pairs = zip(
        ("heldout_perplexity", "heldout_perplexity_forward", "heldout_perplexity_backward"),
        FIGURES,
        strict=True,
    )
    for key, figure in pairs:
        assert record[key] == pytest.approx(one[figure], rel=1e-5), key
        print(f"{key}: relative difference {record[key] / one[figure] - 1:.1e}")
