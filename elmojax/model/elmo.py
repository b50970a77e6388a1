"""ELMo inside a downstream flax model: the scalar mix of layers and an AllenNLP-style ``Elmo`` layer.

:class:`ScalarMix` is bilm-tf's ``weight_layers``: ``gamma * sum_k softmax(w)_k * h_k`` with
trainable ``w`` (zeros) and ``gamma`` (1.0), an optional layer norm of each layer over the
unmasked positions, ``use_top_only`` and an L2 penalty on ``w``. :class:`Elmo` is the equivalent
of AllenNLP's ``Elmo`` module: character ids in, ``num_output_representations`` mixed
representations out, with dropout and the mask. The biLM is frozen by default (no gradient
reaches it); ``fine_tune=True`` trains it too. Unlike AllenNLP, the biLM starts each call from zero
LSTM states, so a sentence's representation does not depend on earlier batches.
"""

from __future__ import annotations

from pathlib import Path

import flax.linen as nn
import jax
import jax.numpy as jnp

from elmojax.model.bilm import zero_state
from elmojax.model.lm import LanguageModel
from elmojax.model.start_state import rows_state, warmup_arrays
from elmojax.options import ElmoOptions

Array = jax.Array


class ScalarMix(nn.Module):
    """Softmax-weighted sum of biLM layers: ``[B, L + 1, T, D]``, ``mask [B, T]`` -> ``[B, T, D]``.

    Returns ``(mixed, regularization)`` where ``regularization = l2_coef * sum(w ** 2)`` is to be
    added to the downstream loss (bilm-tf's ``regularization_op``).
    """

    do_layer_norm: bool = False
    use_top_only: bool = False
    l2_coef: float = 0.0

    @nn.compact
    def __call__(self, layers: Array, mask: Array) -> tuple[Array, Array]:
        n_layers = layers.shape[1]
        gamma = self.param("gamma", nn.initializers.ones, (1,))
        m = mask[:, None, :, None].astype(layers.dtype)
        if self.do_layer_norm:
            # statistics of each layer over the unmasked positions only (padding would bias them)
            n = jnp.maximum(jnp.sum(m) * layers.shape[-1], 1.0)
            mean = jnp.sum(layers * m, axis=(0, 2, 3), keepdims=True) / n
            var = jnp.sum(((layers - mean) * m) ** 2, axis=(0, 2, 3), keepdims=True) / n
            layers = (layers - mean) * jax.lax.rsqrt(var + 1e-12)
        if self.use_top_only:
            return gamma * layers[:, -1], jnp.zeros(())
        w = self.param("w", nn.initializers.zeros, (n_layers,))
        weights = jax.nn.softmax(w)
        mixed = jnp.einsum("l,bltd->btd", weights, layers)
        return gamma * mixed, self.l2_coef * jnp.sum(w**2)


class Elmo(nn.Module):
    """AllenNLP-style ELMo layer for flax models.

    Input: shifted character ids ``[B, T + 2, chars]`` with BOS/EOS as :func:`elmojax.batch_to_ids`
    makes them (token ids ``[B, T + 2]`` for word-level models). Output: a dict with
    ``elmo_representations`` (a list of ``num_output_representations`` arrays ``[B, T, 2P]``),
    ``mask [B, T]`` and ``regularization`` (sum of the mixes' L2 penalties). Load pretrained biLM
    weights with :func:`with_pretrained_bilm`. ``start_state`` is ``warm`` (default) or ``zero``;
    word-level models' warm-up assumes ``<S>``, ``</S>``, ``<UNK>`` are their vocabulary's first
    three lines (see :func:`elmojax.model.start_state.warmup_arrays`).
    """

    options: ElmoOptions
    num_output_representations: int = 1
    dropout: float = 0.5
    do_layer_norm: bool = False
    l2_coef: float = 0.0
    fine_tune: bool = False
    start_state: str = "warm"

    @nn.compact
    def __call__(self, inputs: Array, deterministic: bool = True) -> dict:
        # the language model's variables are the biLM's, under "bilm" as a weights file names them
        lm = LanguageModel(self.options, name="bilm")
        if self.start_state == "warm":
            start = lm.warm_state(*(jnp.asarray(a) for a in warmup_arrays(self.options)))
            start = jax.lax.stop_gradient(rows_state(start, inputs.shape[0]))
        else:
            start = zero_state(self.options, inputs.shape[0])
        layers, mask, _ = lm.sentences(inputs, start)
        if not self.fine_tune:
            layers = jax.lax.stop_gradient(layers)
        reps, reg = [], jnp.zeros(())
        for k in range(self.num_output_representations):
            mixed, r = ScalarMix(self.do_layer_norm, l2_coef=self.l2_coef, name=f"scalar_mix_{k}")(
                layers, mask
            )
            reps.append(nn.Dropout(self.dropout)(mixed, deterministic=deterministic))
            reg = reg + r
        return {"elmo_representations": reps, "mask": mask, "regularization": reg}


def with_pretrained_bilm(variables: dict, weight_file: str | Path, options: ElmoOptions) -> dict:
    """Return ``variables`` of an :class:`Elmo` (or a model holding one at the top) with the biLM
    parameters replaced by those of a standard weights HDF5."""
    from elmojax.model.weights import load_weights

    params = dict(variables["params"])
    params["bilm"] = jax.tree_util.tree_map(jnp.asarray, load_weights(weight_file, options)["params"])
    return {**variables, "params": params}
