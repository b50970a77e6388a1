"""The README's first command, on a tiny slice of the bundled corpus and a tiny model (seconds)."""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest

from tests.helpers import ROOT, tiny_options_dict


@pytest.mark.e2e
def test_quickstart_script_on_a_corpus_slice(tmp_path):
    mpl_image = pytest.importorskip("matplotlib.image")  # the script draws the training curve with it
    lines = (ROOT / "experiments" / "data" / "sample_corpus.csv").read_text(encoding="utf-8").splitlines()
    corpus = tmp_path / "slice.csv"
    corpus.write_text("\n".join(lines[:150]) + "\n", encoding="utf-8")
    options = tmp_path / "tiny.json"
    options.write_text(
        json.dumps(
            tiny_options_dict(
                batch_size=4, unroll_steps=5, n_negative_samples_batch=16, n_epochs=1, dropout=0.1
            )
        )
    )
    out = tmp_path / "qs"
    env = dict(os.environ, CORPUS=str(corpus), OPTIONS=str(options))
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"
    proc = subprocess.run(
        ["bash", str(ROOT / "experiments" / "quickstart.sh"), str(out), "6"],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]

    stats = json.loads((out / "prepare_stats.json").read_text())
    assert stats["n_input_lines"] == 149 and stats["n_heldout_sentences"] > 0
    metrics = [json.loads(line) for line in (out / "run" / "metrics.jsonl").read_text().splitlines()]
    assert metrics[-1]["step"] == 6
    ppl = json.loads((out / "perplexity.json").read_text())
    assert math.isfinite(ppl["perplexity"]) and ppl["n_tokens"] > 0
    assert ppl["perplexity"] == pytest.approx(
        math.sqrt(ppl["forward_perplexity"] * ppl["backward_perplexity"])
    )

    export = json.loads((out / "export" / "options.json").read_text())
    assert export["char_cnn"]["n_characters"] == 262
    n_sentences = len((out / "sentences.txt").read_text(encoding="utf-8").splitlines())
    with h5py.File(out / "embeddings.hdf5", "r") as f:
        assert len(f) == n_sentences + 1  # one dataset per line + sentence_to_index
        first = f["0"][...]
        assert first.shape[0] == 3 and first.shape[2] == 2 * 6 and np.isfinite(first).all()

    sim = json.loads((out / "similarity.json").read_text())
    values = [v for pair in sim["pairs"].values() for d in pair.values() for v in d]
    assert len(values) == 3 * 2 * 3 and all(math.isfinite(v) for v in values)
    assert "perplexity" in proc.stdout and "cosine distance" in proc.stdout

    png = out / "training_curve.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert mpl_image.imread(png).shape[:2] == (400, 700)


@pytest.mark.slow
def test_readme_quickstart_end_to_end(tmp_path):
    """The README's first command as a user runs it (bundled corpus, 2,000 steps; about 7 minutes on
    2 cores): the perplexities it promises, both directions agreeing, per-sentence scores close to
    the stream. (The "dress" neighbours hold for some seeds only, so they are not asserted.)"""
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    out = tmp_path / "qs"
    proc = subprocess.run(
        ["bash", str(ROOT / "experiments" / "quickstart.sh"), str(out)],
        env=env,
        capture_output=True,
        text=True,
        timeout=1800,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    ppl = json.loads((out / "perplexity.json").read_text())
    assert ppl["n_tokens"] == 8284
    assert 120 < ppl["perplexity"] < 160, ppl
    fwd, bwd = ppl["forward_perplexity"], ppl["backward_perplexity"]
    assert max(fwd, bwd) < 1.25 * min(fwd, bwd), ppl  # what `evaluate` warns about
    assert "warning" not in proc.stderr
    assert ppl["per_sentence"]["perplexity"] == pytest.approx(ppl["perplexity"], rel=0.05)
    distances = json.loads((out / "similarity.json").read_text())["pairs"].values()
    assert all(0 <= d <= 2 for pair in distances for d in pair["cosine"])
