"""The language model assembles every forward: the Embedder's layers and evaluation's full-softmax
loss are the same computation, on the bilm-tf fixture model."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from elmojax import batch_to_ids
from elmojax.data.chars import Batcher
from elmojax.data.streams import sentence_windows
from elmojax.data.vocab import Vocabulary
from elmojax.embed.embedder import Embedder
from elmojax.model.bilm import BiLM, init_params, zero_state
from elmojax.model.lm import LanguageModel
from elmojax.model.numerics import Numerics
from elmojax.model.softmax import init_softmax
from elmojax.model.weights import load_weights
from elmojax.options import load_options
from elmojax.parallel import DataParallel
from elmojax.train.step import StepConfig, jit_eval_step

HIGHEST = Numerics(precision="highest")


@pytest.fixture(scope="module")
def model(fixture_dir, fixture_sentences):
    options = load_options(fixture_dir / "options.json")
    weights = load_weights(fixture_dir / "lm_weights.hdf5", options)
    return options, jax.tree_util.tree_map(jnp.asarray, weights), fixture_sentences[:3]


def test_the_models_variables_are_the_bilms(tiny_options):
    """No level is added to the parameter tree: checkpoints, weight files and Elmo's ``bilm`` load
    as they are."""
    x = jnp.ones((1, 3, tiny_options.char_cnn.max_characters_per_token), jnp.int32)
    lm = jax.eval_shape(
        lambda: LanguageModel(tiny_options).init(
            jax.random.PRNGKey(0), x, zero_state(tiny_options, 1), method=LanguageModel.sentences
        )
    )
    bilm = jax.eval_shape(lambda: init_params(tiny_options, jax.random.PRNGKey(0)))
    assert jax.tree_util.tree_structure(lm) == jax.tree_util.tree_structure(bilm)
    assert jax.tree_util.tree_map(lambda s: s.shape, lm) == jax.tree_util.tree_map(lambda s: s.shape, bilm)


def test_the_embedders_layers_are_the_models(model):
    """The Embedder (a distinct-token table on a device mesh, jitted) gives the model's layers of the
    sentences read directly, to 1e-6."""
    options, weights, sentences = model
    embedder = Embedder(options, weights, start_state="zero", numerics=HIGHEST)
    got = embedder.embed_batch(sentences)
    ids = jnp.asarray(batch_to_ids(sentences))
    layers, mask, _ = LanguageModel(options, HIGHEST).apply(
        weights, ids, zero_state(options, len(sentences)), method=LanguageModel.sentences
    )
    for k, sentence in enumerate(sentences):
        assert mask[k].sum() == len(sentence)
        np.testing.assert_allclose(got[k], np.asarray(layers[k, :, : len(sentence)]), atol=1e-6)


def test_the_evaluation_loss_is_the_full_softmax_of_the_models_layers(model, fixture_dir):
    """evaluate's step (per-direction windows, each device's rows) scores each sentence as the full
    softmax cross-entropy of the model's whole-sentence top layer, computed here in float64."""
    options, weights, sentences = model
    vocab = Vocabulary.from_file(fixture_dir / "vocab_test.txt")
    softmax = init_softmax(len(vocab), options.projection_dim, jax.random.PRNGKey(1))
    par = DataParallel(len(sentences), jax.devices()[:1])
    length = max(len(s) for s in sentences) + 1
    windows = sentence_windows(sentences, vocab, Batcher(50), length, par.local_rows)
    batch = par.batch(windows, options)
    config = StepConfig(options, len(vocab), numerics=HIGHEST, mesh=par.mesh)
    params = {"bilm": weights["params"], "softmax": softmax}
    sums, counts, _ = jit_eval_step(params, zero_state(options, len(sentences)), batch, config)

    # the same sentences read whole, with BOS/EOS: top layer [B, T + 2, 2P]
    ids = jnp.asarray(batch_to_ids(sentences))
    lm = LanguageModel(options, HIGHEST)
    vectors = lm.apply(weights, ids, method=LanguageModel.embed_tokens)
    mask = (ids > 0).any(-1)
    layers, _ = lm.apply(
        weights,
        vectors,
        mask,
        zero_state(options, len(sentences)),
        method=lambda m, *a: BiLM.__call__(m.bilm, *a),
    )
    top = np.asarray(layers[:, -1], np.float64)
    w, b = np.asarray(softmax["W"], np.float64), np.asarray(softmax["b"], np.float64)
    p, targets = options.projection_dim, np.asarray(batch.targets)
    expected = np.zeros(2)
    for k, sentence in enumerate(sentences):
        n = len(sentence)
        # forward: position t (BOS .. last token) predicts target t; backward: window position j
        # reads position n + 1 - j (EOS .. first token) and predicts target j
        for d, hidden in ((0, top[k, : n + 1, :p]), (1, top[k, n + 1 : 0 : -1, p:])):
            logits = hidden @ w.T + b
            lse = np.log(np.exp(logits - logits.max(1, keepdims=True)).sum(1)) + logits.max(1)
            expected[d] += np.sum(lse - logits[np.arange(n + 1), targets[d, k, : n + 1]])
    np.testing.assert_array_equal(np.asarray(counts), [sum(len(s) + 1 for s in sentences)] * 2)
    np.testing.assert_allclose(np.asarray(sums), expected, rtol=1e-5)
