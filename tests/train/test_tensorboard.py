"""TensorBoard events of a run: read back with TensorBoard's own reader they equal metrics.jsonl,
a resumed run shows no step twice, evaluate adds its perplexities, and training runs without
tensorboardX."""

from __future__ import annotations

import json
import shutil
import sys

import numpy as np
import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from elmojax.evaluate import evaluate
from elmojax.train import tensorboard
from elmojax.train.loop import TrainConfig, train
from elmojax.train.metrics import Meter, open_writers


def config(save_dir, corpus, **kw):
    return TrainConfig(
        save_dir=str(save_dir), train_prefix=corpus.train, vocab_file=corpus.vocab, progress=False, **kw
    )


def scalars(run, purge: bool = True) -> dict[str, list[tuple[int, float]]]:
    """Every scalar of the run's events as TensorBoard loads them: with ``purge`` (TensorBoard's
    default) a resumed run's ``SessionLog.START`` hides the steps the earlier session logged from
    its step on; without it every event on disk shows."""
    events = EventAccumulator(
        str(run / tensorboard.TENSORBOARD_DIR), size_guidance={"scalars": 0}, purge_orphaned_data=purge
    )
    events.Reload()
    return {tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}


def session_starts(run) -> list[int]:
    """The steps of the purge records (``SessionLog.START``) in the run's event files, file by file."""
    from tensorboard.backend.event_processing.event_file_loader import EventFileLoader

    starts = []
    for path in sorted((run / tensorboard.TENSORBOARD_DIR).glob("events.out.tfevents.*")):
        for event in EventFileLoader(str(path)).Load():
            if event.HasField("session_log") and event.session_log.status == event.session_log.START:
                starts.append(event.step)
    return starts


def test_events_equal_metrics_jsonl_across_a_resume_and_hold_evaluate(tmp_path, corpus, train_options):
    run = tmp_path / "run"
    train(train_options, config(run, corpus, max_steps=8, checkpoint_every=4, log_every=3))
    # killed after logging step 8 but before its checkpoint: the resume starts from step 4 again
    shutil.rmtree(run / "checkpoints" / "8")
    train(train_options, config(run, corpus, max_steps=8, checkpoint_every=4, log_every=3))

    records = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 3, 5, 6, 8]  # 6 and 8 of the first session dropped
    # the files keep both sessions' steps 6 and 8; the resumed writer's purge record at step 5
    # (tensorboardX's purge_step) is what hides the first session's
    assert session_starts(run) == [5]
    assert [s for s, _ in scalars(run, purge=False)["train/grad_norm"]] == [1, 3, 6, 8, 5, 6, 8]
    logged = scalars(run)
    keys = [k for k in records[0] if k != "step"]
    assert sorted(logged) == sorted(f"train/{k}" for k in keys)
    assert "train/loss_forward" in logged and "train/model_tflops_per_s" in logged
    for key in keys:
        expected = [(r["step"], float(np.float32(r[key]))) for r in records]
        assert logged[f"train/{key}"] == expected, key  # each step once, the value of metrics.jsonl

    result = evaluate(run, corpus.heldout, batch_size=8, per_sentence=True)  # shapes test_train compiles
    logged = scalars(run)
    assert logged["eval/perplexity"] == [(8, pytest.approx(result["perplexity"], rel=1e-6))]
    assert logged["eval/forward_perplexity"] == [(8, pytest.approx(result["forward_perplexity"], rel=1e-6))]
    assert logged["eval/n_tokens"] == [(8, result["n_tokens"])]
    per_sentence = result["per_sentence"]["perplexity"]
    assert logged["eval/per_sentence/perplexity"] == [(8, pytest.approx(per_sentence, rel=1e-6))]
    assert len(logged["train/grad_norm"]) == 5  # evaluating added no training scalars


def test_training_without_tensorboardx_says_what_to_install(
    tmp_path, corpus, train_options, monkeypatch, capsys
):
    monkeypatch.setitem(sys.modules, "tensorboardX", None)  # import fails as if not installed
    monkeypatch.setattr(tensorboard, "_noted", set())
    run = tmp_path / "run"
    train(train_options, config(run, corpus, max_steps=1))
    err = capsys.readouterr().err
    assert "pip install 'elmojax[tensorboard]'" in err and err.count("tensorboardX is not installed") == 1
    assert (run / "metrics.jsonl").exists() and not (run / tensorboard.TENSORBOARD_DIR).exists()


def test_only_the_primary_process_writes_and_mfu_needs_a_known_peak(tmp_path):
    assert open_writers(tmp_path, primary=False).writers == []
    assert not (tmp_path / tensorboard.TENSORBOARD_DIR).exists()
    metrics = {"loss": 2.0, "loss_forward": 2.1, "loss_backward": 1.9, "grad_norm": 0.5}
    cpu = Meter(0, tokens_per_step=100, flops_per_token=1e9, learning_rate=0.2)
    chip = Meter(0, tokens_per_step=100, flops_per_token=1e9, learning_rate=0.2, peak_tflops=2.0)
    for meter in (cpu, chip):
        meter.step_done(metrics)
    assert "mfu" not in cpu.record(1)
    record = chip.record(1)
    assert record["mfu"] == pytest.approx(record["model_tflops_per_s"] / 2.0)
    assert record["train_perplexity"] == pytest.approx(np.exp(2.0)) and record["tokens"] == 100
