"""bfloat16 compute against float32, and the sparse softmax/embedding update against the dense one."""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

import h5py
import jax
import numpy as np
import pytest

from elmojax.data.chars import Batcher
from elmojax.data.negatives import sample_negatives
from elmojax.data.streams import BidirectionalStream
from elmojax.data.vocab import Vocabulary
from elmojax.embed.embedder import Embedder
from elmojax.errors import OptionsError
from elmojax.evaluate import evaluate
from elmojax.export import export_run
from elmojax.model.numerics import Numerics
from elmojax.model.weights import load_weights
from elmojax.options import load_options, options_from_dict
from elmojax.parallel import DataParallel
from elmojax.train.loop import TrainConfig, train
from elmojax.train.sparse import SOFTMAX_B, SOFTMAX_W, WORD_EMBEDDING
from elmojax.train.state import init_state
from elmojax.train.step import StepConfig, jit_train_step
from tests.helpers import TRAIN_KEYS, tiny_options_dict

BF16 = Numerics(compute_dtype="bfloat16")


class RareCorpus(NamedTuple):
    train: str
    heldout: str
    vocab: str


@pytest.fixture(scope="module")
def rare(corpus, tmp_path_factory) -> RareCorpus:
    """The shared corpus with 1000 rare words added to its vocabulary: softmax rows steps seldom touch."""
    vocab = tmp_path_factory.mktemp("rare") / "vocab.txt"
    vocab.write_text(Path(corpus.vocab).read_text() + "".join(f"rare{i}\n" for i in range(1000)))
    return RareCorpus(corpus.train, corpus.heldout, str(vocab))


def options_for(rare: RareCorpus, word_level: bool = False):
    d = tiny_options_dict(**TRAIN_KEYS)
    if word_level:
        del d["char_cnn"]
        d["n_tokens_vocab"] = len(Vocabulary.from_file(rare.vocab))
    return options_from_dict(d, source="tiny")


def batches(options, rare: RareCorpus, n_steps):
    """The first ``n_steps`` device batches of a run (one device), negatives included. The tiny
    vocabulary keeps every table in one bucket, so each step configuration compiles once."""
    vocab = Vocabulary.from_file(rare.vocab)
    t = options.training
    par = DataParallel(t.batch_size, jax.devices()[:1])
    batcher = Batcher(50, vocab) if options.char_cnn else None
    stream = BidirectionalStream(rare.train, vocab, par.local_rows, t.unroll_steps, batcher, seed=0)
    out = []
    for step in range(n_steps):
        negatives = sample_negatives(0, step, len(vocab), t.n_negative_samples_batch)
        out.append(par.batch(next(stream), options, negatives))
    return par, len(vocab), out


def run_steps(config, par, batches_):
    state = par.put_state(init_state(config, par.global_rows, jax.random.PRNGKey(3)))
    losses = []
    for batch in batches_:
        state, metrics = jit_train_step(state, batch, config)
        losses.append(float(metrics["loss"]))
    return state, np.array(losses)


@pytest.mark.parametrize("word_level", [False, True], ids=["char", "word"])
def test_sparse_update_equals_dense(rare, word_level):
    """Softmax (and a word model's embedding) updated on the touched rows only == the dense update."""
    options = options_for(rare, word_level)
    par, n_vocab, bs = batches(options, rare, 3)
    sparse = StepConfig(options, n_vocab, sparse=True)
    init = init_state(sparse, par.global_rows, jax.random.PRNGKey(3))
    view, _, _ = sparse.view(init.params, bs[0])  # the sparse path is really taken
    assert set(view.rows) == {SOFTMAX_W, SOFTMAX_B} | ({WORD_EMBEDDING} if word_level else set())
    assert view.softmax is not None and view.embedding == word_level
    s_state, s_loss = run_steps(sparse, par, bs)
    d_state, d_loss = run_steps(StepConfig(options, n_vocab, sparse=False), par, bs)
    np.testing.assert_allclose(s_loss, d_loss, rtol=1e-6)
    trees = (s_state.params, s_state.opt_state), (d_state.params, d_state.opt_state)
    got, want = (jax.tree_util.tree_leaves(t) for t in trees)
    assert len(got) == len(want)
    for a, b in zip(got, want, strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-6, atol=1e-6)
    # rows no target and no negative touched are exactly as initialised
    touched = set()
    for b in bs:
        touched |= set(np.asarray(b.targets).ravel()) | set(np.asarray(b.sampled).ravel())
    untouched = sorted(set(range(n_vocab)) - touched)
    assert untouched, "the test needs rows no step touches"
    w0, w = np.asarray(init.params["softmax"]["W"]), np.asarray(s_state.params["softmax"]["W"])
    np.testing.assert_array_equal(w[untouched], w0[untouched])
    assert not np.array_equal(w[sorted(touched)], w0[sorted(touched)])


def test_sparse_updates_refuse_optimizers_they_are_not_exact_for(rare):
    """Adam updates rows without gradient too (its moments decay): a sparse step would be "lazy
    Adam", so it is refused by name; the dense update with Adam is allowed."""
    options = options_for(rare)
    with pytest.raises(
        OptionsError, match=r"optimizer 'adam' updates every row .* exact for adagrad, sgd only"
    ):
        StepConfig(options, 1003, optimizer="adam")
    assert StepConfig(options, 1003, optimizer="adam", sparse=False).optimizer == "adam"
    with pytest.raises(OptionsError, match="unknown optimizer 'lamb'; use one of adagrad, sgd, adam"):
        StepConfig(options, 1003, optimizer="lamb", sparse=False)


def test_bfloat16_loss_curve_follows_float32(rare):
    """The same 30 steps in bfloat16 and float32: every loss within 2% (and both fall)."""
    options = options_for(rare)
    par, n_vocab, bs = batches(options, rare, 30)
    _, f32 = run_steps(StepConfig(options, n_vocab), par, bs)
    _, bf16 = run_steps(StepConfig(options, n_vocab, numerics=BF16), par, bs)
    rel = np.abs(bf16 - f32) / f32
    print(f"bfloat16 vs float32 loss: max relative difference {rel.max():.2e} over {len(f32)} steps")
    assert rel.max() < 0.02, rel
    assert f32[-10:].mean() < 0.7 * f32[:10].mean() and bf16[-10:].mean() < 0.7 * bf16[:10].mean()
    assert not np.array_equal(f32, bf16)  # bfloat16 really was used


def test_bfloat16_embeddings_follow_float32(fixture_dir, fixture_sentences):
    """The bilm-tf fixture model embedded in bfloat16: within 2% of the largest float32 activation."""
    kwargs = dict(vocab=None, batch_size=8)
    options = load_options(fixture_dir / "options.json")
    params = load_weights(fixture_dir / "lm_weights.hdf5", options)
    f32 = Embedder(options, params, **kwargs).embed_sentences(fixture_sentences)
    bf16 = Embedder(options, params, numerics=BF16, **kwargs).embed_sentences(fixture_sentences)
    worst = 0.0
    for a, b in zip(f32, bf16, strict=True):
        assert b.dtype == np.float32 and a.shape == b.shape
        for layer in range(a.shape[0]):
            worst = max(worst, float(np.abs(a[layer] - b[layer]).max() / np.abs(a[layer]).max()))
    print(f"bfloat16 vs float32 embeddings: max |diff| / max |float32| per layer {worst:.2e}")
    assert 0 < worst < 0.02


def test_bfloat16_train_evaluate_export(tmp_path, rare):
    """``train``/``evaluate`` in bfloat16 run end to end; the exported weights are float32."""
    train_glob, heldout, vocab = rare
    options = options_for(rare)
    run = tmp_path / "run"
    cfg = TrainConfig(str(run), train_glob, vocab, max_steps=10, progress=False, numerics=BF16)
    train(options, cfg)
    bf16 = evaluate(run, heldout, numerics=BF16)
    f32 = evaluate(run, heldout)
    assert bf16["perplexity"] == pytest.approx(f32["perplexity"], rel=0.02)
    (tmp_path / "export").mkdir()
    out = export_run(run, tmp_path / "export" / "weights.hdf5")
    with h5py.File(out) as f:
        dtypes = set()
        f.visititems(lambda name, obj: dtypes.add(obj.dtype) if isinstance(obj, h5py.Dataset) else None)
    assert dtypes == {np.dtype("float32")}
