"""Metric records are means over the logging interval: equal to the mean of the per-step values
of a run logging every step, over the same steps in an uninterrupted and a resumed run, with
non-finite steps counted and left out of the means."""

from __future__ import annotations

import json
import math
import shutil

import numpy as np
import pytest

from elmojax.train.loop import TrainConfig, train
from elmojax.train.metrics import Meter


def config(save_dir, corpus, **kw):
    return TrainConfig(
        save_dir=str(save_dir), train_prefix=corpus.train, vocab_file=corpus.vocab, progress=False, **kw
    )


def records(run) -> dict[int, dict]:
    return {r["step"]: r for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines())}


def test_interval_means_equal_the_mean_of_the_per_step_losses_across_a_resume(
    tmp_path, corpus, train_options
):
    every_step = tmp_path / "every-step"
    train(train_options, config(every_step, corpus, max_steps=8, checkpoint_every=4, log_every=1))
    per_step = records(every_step)
    assert sorted(per_step) == list(range(1, 9)) and all(r["interval_steps"] == 1 for r in per_step.values())

    run = tmp_path / "every-4"
    train(train_options, config(run, corpus, max_steps=6, checkpoint_every=4, log_every=4))
    shutil.rmtree(run / "checkpoints" / "6")  # killed after step 6: resumed from step 4
    train(train_options, config(run, corpus, max_steps=8, checkpoint_every=4, log_every=4))
    logged = records(run)
    # the first step of each session is logged too, without ending the interval: step 8's mean
    # covers steps 5..8 in the resumed run as in an uninterrupted one
    assert sorted(logged) == [1, 4, 5, 8]
    spans = {1: [1], 4: [1, 2, 3, 4], 5: [5], 8: [5, 6, 7, 8]}
    for step, span in spans.items():
        record = logged[step]
        assert record["interval_steps"] == len(span) and record["bad_steps"] == 0
        for key in ("loss_forward", "loss_backward", "grad_norm"):
            mean = np.mean([per_step[s][key] for s in span])
            assert record[key] == pytest.approx(mean, rel=1e-6), (step, key)
        assert record["grad_norm_max"] == pytest.approx(max(per_step[s]["grad_norm"] for s in span), rel=1e-6)
        losses = [np.log(per_step[s]["train_perplexity"]) for s in span]
        assert record["train_perplexity"] == pytest.approx(np.exp(np.mean(losses)), rel=1e-5)
    assert logged[4]["loss_forward"] != pytest.approx(per_step[4]["loss_forward"], rel=1e-3)  # not step 4's
    assert logged[8]["tokens"] == per_step[8]["tokens"]


def test_non_finite_steps_are_counted_and_left_out_of_the_means():
    meter = Meter(0, tokens_per_step=10, flops_per_token=1.0, learning_rate=0.1)
    steps = [(2.0, 1.0, 0), (math.nan, math.nan, 1), (4.0, 3.0, 0)]  # (loss, grad norm, bad count after)
    for loss, norm, bad in steps[:1]:
        meter.step_done({"loss": loss, "loss_forward": loss, "loss_backward": loss, "grad_norm": norm}, bad)
    first = meter.record(1, restart=False)  # a session's first step: the interval goes on
    assert first["loss_forward"] == 2.0 and first["interval_steps"] == 1
    for loss, norm, bad in steps[1:]:
        meter.step_done({"loss": loss, "loss_forward": loss, "loss_backward": loss, "grad_norm": norm}, bad)
    record = meter.record(3)
    assert record["interval_steps"] == 3 and record["bad_steps"] == 1
    assert record["loss_forward"] == record["loss_backward"] == 3.0  # (2 + 4) / 2: the NaN left out
    assert record["train_perplexity"] == pytest.approx(math.exp(3.0))
    assert record["grad_norm"] == 2.0 and record["grad_norm_max"] == 3.0
    assert record["tokens"] == 30
    # a new interval of bad steps only: no mean to give
    meter.step_done({"loss": math.nan, "loss_forward": math.nan, "loss_backward": 1.0, "grad_norm": 1.0}, 2)
    empty = meter.record(4)
    assert empty["interval_steps"] == 1 and empty["bad_steps"] == 1
    assert math.isnan(empty["loss_forward"]) and math.isnan(empty["grad_norm_max"])
