"""Training, evaluation and export on a tiny model and a small synthetic corpus (CPU, seconds)."""

from __future__ import annotations

import glob
import hashlib
import json
from pathlib import Path

import jax
import numpy as np
import pytest

from elmojax.cli import main
from elmojax.embed.embedder import Embedder
from elmojax.errors import ElmoError
from elmojax.evaluate import evaluate
from elmojax.export import export_run
from elmojax.model.weights import load_weights, save_weights
from elmojax.options import load_options, options_from_dict
from elmojax.train.checkpoints import restore_params
from elmojax.train.loop import TrainConfig, train
from tests.helpers import TRAIN_KEYS, run_module, tiny_options_dict, train_argv


def config(save_dir, corpus, **kw):
    return TrainConfig(
        save_dir=str(save_dir), train_prefix=corpus.train, vocab_file=corpus.vocab, progress=False, **kw
    )


def flat_params(save_dir):
    params, step = restore_params(save_dir)
    return step, [np.asarray(x) for x in jax.tree_util.tree_leaves(params)]


def test_loss_falls_and_evaluate_counts_every_token(tmp_path, corpus, train_options):
    heldout = corpus.heldout
    run = tmp_path / "run"
    train(train_options, config(run, corpus, max_steps=1, checkpoint_every=100))
    before = evaluate(run, heldout)
    train(train_options, config(run, corpus, max_steps=150, checkpoint_every=50, log_every=25))
    after = evaluate(run, heldout)
    # every target counted: each sentence of n tokens has n + 1 targets (the last one is </S>)
    lines = [line for p in sorted(glob.glob(heldout)) for line in open(p) if line.strip()]
    n_targets = sum(len(line.split()) + 1 for line in lines)
    assert before["n_tokens"] == after["n_tokens"] == n_targets
    assert after["step"] == 150
    assert after["perplexity"] < 0.5 * before["perplexity"], (before, after)
    assert after["forward_perplexity"] < 8 and after["backward_perplexity"] < 8
    combined = np.exp((np.log(after["forward_perplexity"]) + np.log(after["backward_perplexity"])) / 2)
    assert after["perplexity"] == pytest.approx(combined, rel=1e-9)
    lines = (run / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(x)["step"] for x in lines] == [
        1,
        2,
        25,
        50,
        75,
        100,
        125,
        150,
    ]  # first step of each session too


def test_rows_change_speed_not_result(tmp_path, corpus, train_options):
    """Per-sentence scores do not depend on the batch; stream rows start from the warm state."""
    heldout = corpus.heldout
    run = tmp_path / "run"
    train(train_options, config(run, corpus, max_steps=60, checkpoint_every=60))
    one = evaluate(run, heldout, batch_size=1, per_sentence=True)
    eight = evaluate(run, heldout, batch_size=8, per_sentence=True)
    for key in ("forward_perplexity", "backward_perplexity"):
        assert eight["per_sentence"][key] == pytest.approx(one["per_sentence"][key], rel=1e-5)
        assert eight[key] == pytest.approx(one[key], rel=0.02)  # rows carry different context only
        # shuffled sentences: scoring each alone loses little against the one-row stream
        assert one["per_sentence"][key] == pytest.approx(one[key], rel=0.05)
    assert one["start_state"] == "warm"


def test_resume_is_exact(tmp_path, corpus, train_options):
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    train(train_options, config(straight, corpus, max_steps=8, checkpoint_every=4))
    train(train_options, config(resumed, corpus, max_steps=4, checkpoint_every=4))
    train(train_options, config(resumed, corpus, max_steps=8, checkpoint_every=4))
    step_a, a = flat_params(straight)
    step_b, b = flat_params(resumed)
    assert step_a == step_b == 8
    for x, y in zip(a, b, strict=True):
        if jax.default_backend() == "cpu":
            assert x.tobytes() == y.tobytes()  # bit for bit on CPU
        else:  # GPU reductions are not deterministic by default
            np.testing.assert_allclose(x, y, rtol=1e-4, atol=1e-6)


def test_bad_training_file_is_reported_from_the_prefetch_thread(tmp_path, corpus, train_options):
    bad = tmp_path / "bad.txt"
    bad.write_bytes(b"a b\n\xff c\n")
    cfg = TrainConfig(str(tmp_path / "run"), str(bad), vocab_file=corpus.vocab, progress=False, max_steps=2)
    with pytest.raises(ElmoError, match=r"bad.txt: not valid UTF-8 \(invalid start byte at byte 4\)"):
        train(train_options, cfg)


def test_other_options_in_existing_run_dir_is_an_error(tmp_path, corpus, train_options):
    run = tmp_path / "run"
    train(train_options, config(run, corpus, max_steps=1))
    other = train_options.replace_training(learning_rate=0.5)
    with pytest.raises(ElmoError, match="written with other options .*learning_rate"):
        train(other, config(run, corpus, max_steps=2))


def md5(path):
    return hashlib.md5(open(path, "rb").read()).hexdigest()


def test_export_embed_and_init_from(tmp_path, corpus, train_options):
    run = tmp_path / "run"
    train(train_options, config(run, corpus, max_steps=3))
    out = tmp_path / "export" / "weights.hdf5"
    export_run(run, out)
    assert (out.parent / "options.json").exists() and (out.parent / "vocab.txt").exists()
    exported_opts = json.loads((out.parent / "options.json").read_text())
    assert exported_opts["char_cnn"]["n_characters"] == 262
    # export -> load -> export is bit for bit
    opts = load_options(out.parent / "options.json")
    again = tmp_path / "again.hdf5"
    save_weights(load_weights(out, opts), opts, again)
    assert md5(out) == md5(again)
    # the exported files embed, and equal the biLM of the checkpoint
    params, _ = restore_params(run)
    direct = Embedder(opts, {"params": params["bilm"]}).embed_batch([["the", "cat", "sees"]])[0]
    from_files = Embedder.from_files(out.parent / "options.json", out, out.parent / "vocab.txt")
    np.testing.assert_array_equal(from_files.embed_batch([["the", "cat", "sees"]])[0], direct)
    # --init-from starts a new run from the exported biLM (fresh softmax) and continues training
    run2 = tmp_path / "run2"
    train(train_options, config(run2, corpus, max_steps=1, init_from=str(out)))
    params2, _ = restore_params(run2)
    w_before = np.asarray(params["bilm"]["RNN_0"]["Cell0"]["W_0"])
    w_after = np.asarray(params2["bilm"]["RNN_0"]["Cell0"]["W_0"])
    assert 0 < np.abs(w_after - w_before).max() < 0.5  # started from the export, then one step


def test_word_level_options_take_the_vocabulary_size_from_the_vocabulary(tmp_path, corpus):
    """A word-level options file without n_tokens_vocab trains: the key is filled in from the
    vocabulary file, as the character models' are."""
    d = tiny_options_dict(**TRAIN_KEYS)
    del d["char_cnn"]
    (tmp_path / "word.json").write_text(json.dumps(d))
    run = tmp_path / "run"
    assert main(train_argv(tmp_path / "word.json", corpus.train, corpus.vocab, run, "--max-steps", "1")) == 0
    saved = json.loads((run / "options.json").read_text())
    assert "char_cnn" not in saved and saved["n_tokens_vocab"] == len(Path(corpus.vocab).read_text().split())


@pytest.mark.multidevice
def test_data_parallel_equals_single_device(tmp_path):
    """4 simulated devices: training equals one device, and neither the compiled train step nor the
    compiled eval step gathers activations across devices (tests/multidevice/data_parallel.py)."""
    r = run_module("tests.multidevice.data_parallel", tmp_path, devices=4)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    assert "maxdiff" in r.stdout and "no all-gather in train and eval" in r.stdout


@pytest.mark.parametrize("scale", [0.01, 100.0])  # below and above the clip
def test_optimizer_matches_optax_clip_then_adagrad(scale):
    """The step's optimiser (clip given the norm) equals optax's clip_by_global_norm + adagrad."""
    import optax

    from elmojax.train.optim import make_optimizer

    options = options_from_dict({**tiny_options_dict(), **TRAIN_KEYS}, source="t")
    rng = np.random.default_rng(0)
    jnp = jax.numpy
    params = {"a": jnp.asarray(rng.normal(size=(5, 3)), "float32"), "b": jnp.zeros(4)}
    grads = {"a": jnp.asarray(rng.normal(size=(5, 3)) * scale, "float32"), "b": jnp.ones(4) * scale}
    t = options.training
    reference = optax.chain(
        optax.clip_by_global_norm(t.all_clip_norm_val),
        optax.adagrad(t.learning_rate, initial_accumulator_value=1.0, eps=0.0),
    )
    ours = make_optimizer(options)
    # the same state tree as optax's clip + adagrad, so existing checkpoints still restore
    assert jax.tree_util.tree_structure(ours.init(params)) == jax.tree_util.tree_structure(
        reference.init(params)
    )
    norm = optax.tree.norm(grads)
    u_ref, s_ref = reference.update(grads, reference.init(params), params)
    u, s = ours.update(grads, ours.init(params), params, global_norm=norm, finite=jnp.array(True))
    for k in params:
        np.testing.assert_allclose(u[k], u_ref[k], rtol=1e-6, atol=1e-7)
        np.testing.assert_allclose(s[1][0].sum_of_squares[k], s_ref[1][0].sum_of_squares[k], rtol=1e-6)
    # a non-finite step leaves parameters and accumulators exactly as they were
    bad = {"a": grads["a"].at[0, 0].set(np.nan), "b": grads["b"]}
    u, s = ours.update(
        bad, ours.init(params), params, global_norm=optax.tree.norm(bad), finite=jnp.array(False)
    )
    assert all(np.all(np.asarray(u[k]) == 0) for k in params)
    assert all(np.all(np.asarray(s[1][0].sum_of_squares[k]) == 1.0) for k in params)
