"""The downstream tagger of ``experiments/downstream/tagger.py`` trains: its loss falls."""

from __future__ import annotations

import importlib.util
import sys

import pytest

from tests.helpers import ROOT

UD = ROOT / "tests" / "fixtures" / "ud-ewt"


def tagger_module():
    if "downstream_tagger" in sys.modules:
        return sys.modules["downstream_tagger"]
    path = ROOT / "experiments" / "downstream" / "tagger.py"
    spec = importlib.util.spec_from_file_location("downstream_tagger", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # flax's dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def run(tiny_export, *extra):
    tagger = tagger_module()
    # 16 sentences in one batch, 8 epochs: each step sees the same batch, so its loss must fall
    # (seeded: 2.71 to 2.24 with frozen ELMo)
    args = tagger.parser().parse_args(
        [
            "--train", str(UD / "en_ewt-ud-dev-head.conllu"),
            "--test", str(UD / "en_ewt-ud-test-head.conllu"),
            "--task", "upos",
            "--options-file", str(tiny_export.options_file),
            "--weight-file", str(tiny_export.weight_file),
            "--max-sentences", "16", "--batch-size", "16", "--epochs", "8",
            "--lr", "0.01", "--dropout", "0.1", "--hidden", "16",
            *extra,
        ]
    )  # fmt: skip
    return tagger.train_tagger(args)


def test_the_tagger_over_frozen_elmo_learns(tiny_export):
    result = run(tiny_export)
    losses = result["step_loss"]
    assert len(losses) == 8 and result["elmo"] == "frozen"
    assert losses[-1] < 0.9 * losses[0], losses
    assert 0.0 <= result["score"] <= 1.0 and result["metric"] == "accuracy"
    assert abs(sum(result["mix_weights"]) - 1) < 1e-2


@pytest.mark.e2e
@pytest.mark.parametrize("mode", ["--no-elmo", "--fine-tune"])
def test_the_tagger_without_elmo_and_fine_tuned_learns(tiny_export, mode):
    result = run(tiny_export, mode)
    losses = result["step_loss"]
    assert result["elmo"] == {"--no-elmo": "none", "--fine-tune": "fine-tuned"}[mode]
    assert losses[-1] < 0.9 * losses[0], losses
