"""``--profile-steps A:B``: a training run writes a jax.profiler trace of those steps that TensorBoard's
profile plugin and Perfetto read; a bad window is one line."""

from __future__ import annotations

import gzip
import json

import pytest

from elmojax.cli import main
from elmojax.config import parse_profile_steps as parse_steps
from elmojax.errors import ElmoError
from elmojax.train.loop import TrainConfig, train
from elmojax.train.profiler import PROFILE_DIR


def test_profile_steps_writes_a_trace_that_holds_the_steps(tmp_path, corpus, train_options, capsys):
    run = tmp_path / "run"
    config = TrainConfig(
        save_dir=str(run),
        train_prefix=corpus.train,
        vocab_file=corpus.vocab,
        progress=False,
        max_steps=4,
        profile_steps=(2, 3),
    )
    train(train_options, config)
    assert f"profile of steps 2:3 written to {run / PROFILE_DIR}" in capsys.readouterr().err
    # the layout of TensorBoard's profile plugin: one trace, plugins/profile/<time>/<host>.xplane.pb
    (trace,) = (run / PROFILE_DIR / "plugins" / "profile").iterdir()
    assert len(list(trace.glob("*.xplane.pb"))) == 1
    with gzip.open(trace / "perfetto_trace.json.gz") as f:
        events = json.load(f)["traceEvents"]
    # the steps marked for TensorBoard's step view: 2 and 3 only, and each dispatched the jitted
    # training step (the XLA computation ran in the trace: its ops, the LSTM scan's while loops)
    marked = {int(e["args"]["step_num"]): e for e in events if e.get("name") == "train" and "args" in e}
    assert sorted(marked) == [2, 3], sorted(marked)
    dispatches = [e["ts"] for e in events if e.get("name") == "PjitFunction(train_step)"]
    for step, span in marked.items():
        assert any(span["ts"] <= t <= span["ts"] + span["dur"] for t in dispatches), step
    assert any(str(e.get("name")).startswith("while") for e in events)


@pytest.mark.parametrize("text", ["3:2", "0:2", "2", "a:b", "2:3:4", "1.5:2"])
def test_a_bad_window_is_one_line(text, tmp_path, capsys):
    with pytest.raises(ElmoError, match="profile.steps"):  # the text, or the window it names
        TrainConfig(save_dir="s", train_prefix="t", profile_steps=parse_steps(text))
    argv = ["train", "--options-file", "o", "--train-prefix", "t", "--save-dir", str(tmp_path)]
    assert main([*argv, "--profile-steps", text, "--no-compilation-cache"]) == 2
    err = capsys.readouterr().err.strip()
    assert "--profile-steps" in err and "\n" not in err
    assert parse_steps("2:2") == (2, 2) and parse_steps("10:12") == (10, 12)


def test_the_flag_reaches_the_train_config(tmp_path, monkeypatch):
    import elmojax.train as train_package

    configs = []
    monkeypatch.setattr(train_package, "options_with_overrides", lambda *a, **k: None)
    monkeypatch.setattr(train_package, "train", lambda options, config: configs.append(config) or {})
    argv = ["train", "--options-file", "o", "--train-prefix", "t", "--save-dir", str(tmp_path)]
    assert main([*argv, "--profile_steps", "4:6", "--no-compilation-cache"]) == 0  # bilm-tf spelling too
    assert main([*argv, "--no-compilation-cache"]) == 0
    assert [c.profile_steps for c in configs] == [(4, 6), None]
