"""ScalarMix and the AllenNLP-style Elmo layer."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from elmojax.data.chars import batch_to_ids
from elmojax.model.elmo import Elmo, ScalarMix, with_pretrained_bilm
from elmojax.model.weights import save_weights

SENTENCES = [["the", "cat", "sat"], ["hello"]]


def test_scalar_mix_matches_manual_mix():
    rng = np.random.default_rng(0)
    layers = rng.normal(size=(2, 3, 4, 5)).astype(np.float32)
    mask = np.array([[1, 1, 1, 0], [1, 1, 0, 0]], bool)
    mix = ScalarMix(l2_coef=0.1)
    variables = mix.init(jax.random.PRNGKey(0), layers, mask)
    variables = {"params": {"w": jnp.array([0.5, -1.0, 2.0]), "gamma": jnp.array([1.5])}}
    out, reg = mix.apply(variables, layers, mask)
    s = np.exp([0.5, -1.0, 2.0]) / np.exp([0.5, -1.0, 2.0]).sum()
    np.testing.assert_allclose(out, 1.5 * np.einsum("l,bltd->btd", s, layers), atol=1e-5)
    np.testing.assert_allclose(reg, 0.1 * (0.25 + 1 + 4), rtol=1e-6)
    top, reg_top = ScalarMix(use_top_only=True).apply({"params": {"gamma": jnp.array([2.0])}}, layers, mask)
    np.testing.assert_allclose(top, 2 * layers[:, -1], atol=1e-6)
    assert float(reg_top) == 0.0


def test_scalar_mix_layer_norm_uses_unmasked_positions_only():
    rng = np.random.default_rng(1)
    layers = rng.normal(size=(2, 2, 4, 3)).astype(np.float32)
    mask = np.array([[1, 1, 0, 0], [1, 1, 1, 0]], bool)
    layers_padded = layers.copy()
    layers_padded[~np.broadcast_to(mask[:, None, :, None], layers.shape)] = 1000.0  # garbage in padding
    mix = ScalarMix(do_layer_norm=True)
    variables = mix.init(jax.random.PRNGKey(0), layers, mask)
    a, _ = mix.apply(variables, layers, mask)
    b, _ = mix.apply(variables, layers_padded, mask)
    np.testing.assert_allclose(np.asarray(a)[mask], np.asarray(b)[mask], atol=1e-5)
    sel = layers[:, 0][mask]  # layer 0, unmasked positions
    normed = (sel - sel.mean()) / sel.std()
    full = (np.asarray(layers)[:, 0] - sel.mean()) / sel.std()
    np.testing.assert_allclose(full[mask], normed, atol=1e-5)


@pytest.fixture(scope="module")
def elmo_setup(tiny_options, tiny_params, tmp_path_factory):
    path = tmp_path_factory.mktemp("elmo") / "w.hdf5"
    save_weights(tiny_params, tiny_options, path)
    ids = batch_to_ids(SENTENCES)
    model = Elmo(tiny_options, num_output_representations=2, dropout=0.0)
    variables = model.init(jax.random.PRNGKey(3), ids)
    variables = with_pretrained_bilm(variables, path, tiny_options)
    return model, variables, ids


def test_elmo_equals_manual_mix_of_embedder_layers(elmo_setup, tiny_embedder):
    model, variables, ids = elmo_setup
    params = jax.tree_util.tree_map(lambda x: x, variables["params"])
    params["scalar_mix_1"] = {"w": jnp.array([1.0, 0.0, -1.0]), "gamma": jnp.array([0.5])}
    out = model.apply({"params": params}, ids)
    layers = tiny_embedder.embed_batch(SENTENCES)
    s = np.exp([1.0, 0.0, -1.0]) / np.exp([1.0, 0.0, -1.0]).sum()
    for k, sent in enumerate(SENTENCES):
        n = len(sent)
        np.testing.assert_allclose(out["elmo_representations"][0][k, :n], layers[k].mean(0), atol=1e-5)
        np.testing.assert_allclose(
            out["elmo_representations"][1][k, :n], 0.5 * np.einsum("l,ltd->td", s, layers[k]), atol=1e-5
        )
    np.testing.assert_array_equal(out["mask"], [[1, 1, 1], [1, 0, 0]])


@pytest.mark.parametrize("fine_tune", [False, True])
def test_gradients_reach_mix_and_only_a_fine_tuned_bilm(elmo_setup, tiny_options, fine_tune):
    _, variables, ids = elmo_setup
    model = Elmo(tiny_options, num_output_representations=1, dropout=0.0, fine_tune=fine_tune)
    params = {k: v for k, v in variables["params"].items() if k != "scalar_mix_1"}

    def loss(p):
        rep = model.apply({"params": p}, ids)["elmo_representations"][0]
        return jnp.sum(rep * jnp.arange(rep.shape[-1]))

    grads = jax.grad(loss)(params)
    mix_norm = sum(float(jnp.abs(g).sum()) for g in jax.tree_util.tree_leaves(grads["scalar_mix_0"]))
    bilm_norm = sum(float(jnp.abs(g).sum()) for g in jax.tree_util.tree_leaves(grads["bilm"]))
    assert mix_norm > 1e-3
    assert (bilm_norm > 1e-3) if fine_tune else (bilm_norm == 0.0)
