"""Held-out perplexity while training: each record equals ``evaluate`` on that step's checkpoint;
``keep_best`` keeps the best step out of the rotation; bad settings are one line."""

from __future__ import annotations

import json
import re
import shutil

import jax
import pytest

from elmojax.errors import ElmoError
from elmojax.evaluate import evaluate
from elmojax.train.heldout import BEST_DIR, keep_checkpoint, read_best
from elmojax.train.loop import TrainConfig, train

FIGURES = {
    "heldout_perplexity": "perplexity",
    "heldout_perplexity_forward": "forward_perplexity",
    "heldout_perplexity_backward": "backward_perplexity",
}


def heldout_records(run) -> dict[int, dict]:
    lines = (run / "metrics.jsonl").read_text().splitlines()
    return {r["step"]: r for r in map(json.loads, lines) if "heldout_perplexity" in r}


def evaluate_step(run, step, heldout, tmp_path) -> dict:
    """``evaluate`` on checkpoint ``step`` of ``run`` (a run directory holding that step alone)."""
    one = tmp_path / f"step{step}"
    shutil.copytree(run / "checkpoints" / str(step), one / "checkpoints" / str(step))
    for name in ("options.json", "vocab.txt"):
        shutil.copy(run / name, one / name)
    return evaluate(one, heldout, devices=jax.devices()[:1])


def assert_equal(record: dict, result: dict) -> None:
    assert record["heldout_tokens"] == result["n_tokens"]
    for key, figure in FIGURES.items():
        print(f"step {record['step']} {key}: relative difference {record[key] / result[figure] - 1:.1e}")
        assert record[key] == pytest.approx(result[figure], rel=1e-4), (key, record, result)


@pytest.mark.e2e
def test_heldout_records_equal_evaluate_and_keep_best_survives_rotation(tmp_path, corpus, train_options):
    run, devices = tmp_path / "run", jax.devices()[:1]
    common = dict(save_dir=str(run), progress=False, heldout_prefix=corpus.heldout, checkpoint_every=10)
    first = TrainConfig(
        train_prefix=corpus.train, vocab_file=corpus.vocab, max_steps=20, keep_best=True, **common
    )
    train(train_options, first, devices=devices)
    records = heldout_records(run)
    assert sorted(records) == [10, 20]  # eval_every defaults to checkpoint_every
    for step in (10, 20):
        assert_equal(records[step], evaluate_step(run, step, corpus.heldout, tmp_path))
    assert records[20]["heldout_perplexity"] < records[10]["heldout_perplexity"]

    # resumed on degenerate text, the held-out perplexity rises again; one checkpoint kept
    bad = tmp_path / "bad"
    bad.mkdir()
    for k in range(2):
        (bad / f"shard_{k}.txt").write_text("the the the the .\n" * 50)
    later = TrainConfig(
        train_prefix=str(bad / "shard_*.txt"), max_steps=40, keep_checkpoints=1, keep_best=True, **common
    )
    train(train_options, later, devices=devices)
    records = heldout_records(run)
    assert sorted(records) == [10, 20, 30, 40]
    assert_equal(records[40], evaluate(run, corpus.heldout, devices=devices))
    best = min(records, key=lambda s: records[s]["heldout_perplexity"])
    assert best < 40 and records[40]["heldout_perplexity"] > records[best]["heldout_perplexity"]
    assert [p.name for p in (run / "checkpoints").iterdir() if p.name.isdigit()] == ["40"]
    assert read_best(run) == records[best]
    kept = evaluate(run / BEST_DIR, corpus.heldout, devices=devices)  # best/ is a run directory
    assert kept["step"] == best
    assert_equal(records[best], kept)
    print({s: r["heldout_perplexity"] for s, r in records.items()}, "best", best)


def test_bad_heldout_settings_are_one_line(tmp_path, corpus, train_options):
    base = dict(save_dir=str(tmp_path / "run"), train_prefix=corpus.train, vocab_file=corpus.vocab)
    cases = {
        "`keep_best` needs `heldout_prefix`": dict(keep_best=True),
        "no files match": dict(heldout_prefix=str(tmp_path / "none*.txt")),
        "must be a multiple of `checkpoint_every` (4)": dict(
            heldout_prefix=corpus.heldout, eval_every=6, checkpoint_every=4, keep_best=True
        ),
    }
    for text, kw in cases.items():  # refused before the run starts: nothing written
        with pytest.raises(ElmoError, match=re.escape(text)):
            train(
                train_options,
                TrainConfig(**base, max_steps=1, progress=False, **kw),
                devices=jax.devices()[:1],
            )
        assert not (tmp_path / "run" / "options.json").exists()


def test_keep_checkpoint_replaces_the_best_whole(tmp_path):
    run = tmp_path / "run"
    for step in (4, 8):
        (run / "checkpoints" / str(step)).mkdir(parents=True)
        (run / "checkpoints" / str(step) / "data").write_text(f"step {step}")
    (run / "options.json").write_text("{}")
    (run / "vocab.txt").write_text("<S>\n")
    for step in (4, 8):
        keep_checkpoint(
            run, run / "checkpoints" / str(step), {"step": step, "heldout_perplexity": 10.0 - step}
        )
    assert [p.name for p in (run / BEST_DIR / "checkpoints").iterdir()] == ["8"]
    assert (run / BEST_DIR / "checkpoints" / "8" / "data").read_text() == "step 8"
    assert read_best(run)["step"] == 8 and (run / BEST_DIR / "vocab.txt").read_text() == "<S>\n"
    assert sorted(p.name for p in run.iterdir()) == ["best", "checkpoints", "options.json", "vocab.txt"]
