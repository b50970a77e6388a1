"""Softmax losses of the biLM: TensorFlow's sampled softmax (as bilm-tf trains) and the full softmax.

The negatives come from TensorFlow's default sampler for ``sampled_softmax_loss``, log-uniform
(Zipf) over ids ``0..V-1`` with ``P(k) = log((k + 2) / (k + 1)) / log(V + 1)``, drawn on the host
until ``S`` distinct ids are found (:mod:`elmojax.data.negatives`). Under unique sampling the
expected count of class ``k`` is ``1 - (1 - P(k)) ** num_tries``; true and sampled logits are
corrected by its log, and sampled ids equal to a row's label ("accidental hits") are removed.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from elmojax.model.kernels.dot import DEFAULT, Dot

Array = jax.Array

#: added to the logits of accidental hits; finite so that gradients stay finite
_ACCIDENTAL_HIT = -1e30


def log_expected_count(ids: Array, num_tries: Array | int, n_classes: int) -> Array:
    """``log(1 - (1 - P(k)) ** num_tries)`` for each id, computed stably in float32."""
    ids = jnp.asarray(ids, jnp.float32)
    p = (jnp.log1p(1.0 / (ids + 1.0))) / jnp.log(n_classes + 1.0)
    return jnp.log(-jnp.expm1(jnp.asarray(num_tries, jnp.float32) * jnp.log1p(-p)))


def init_softmax(n_vocab: int, dim: int, key: Array, dtype=jnp.float32) -> dict:
    """Softmax ``W [V, P]`` ~ N(0, 1/sqrt(P)) and ``b [V]`` = 0, as bilm-tf initialises them."""
    return {
        "W": jax.random.normal(key, (n_vocab, dim), dtype) / np.sqrt(dim),
        "b": jnp.zeros((n_vocab,), dtype),
    }


def sampled_softmax_loss(
    weights: Array,
    biases: Array,
    inputs: Array,
    labels: Array,
    sampled_ids: Array,
    num_tries: Array | int,
    dot: Dot = DEFAULT,
    *,
    rows: tuple[Array, Array] | None = None,
    n_classes: int | None = None,
) -> Array:
    """Per-row sampled softmax cross-entropy (TensorFlow's ``sampled_softmax_loss``).

    ``weights [V, P]``, ``biases [V]``, ``inputs [N, P]``, ``labels [N]``, ``sampled_ids [S]`` ->
    ``[N]``. Only the ``S`` sampled rows and the label rows of ``weights`` are touched. A sparse
    step passes only those rows (``weights [R, P]``, ``biases [R]``), with ``rows = (label_rows [N],
    sampled_rows [S])`` locating each label and sampled id among them and ``n_classes`` the
    vocabulary size. The logits' products use ``dot``; the rest is float32.
    """
    n_classes = weights.shape[0] if n_classes is None else n_classes
    labels = labels.astype(jnp.int32)
    label_rows, sampled_rows = (labels, sampled_ids) if rows is None else rows
    true_w = jnp.take(weights, label_rows, axis=0)  # [N, P]
    true_logit = jnp.sum(inputs * true_w, axis=-1) + jnp.take(biases, label_rows)
    true_logit = true_logit - log_expected_count(labels, num_tries, n_classes)
    sampled_w = jnp.take(weights, sampled_rows, axis=0)  # [S, P]
    sampled_logits = dot.nt(inputs, sampled_w) + jnp.take(biases, sampled_rows)
    sampled_logits = sampled_logits - log_expected_count(sampled_ids, num_tries, n_classes)
    hits = labels[:, None] == sampled_ids[None, :]
    sampled_logits = jnp.where(hits, sampled_logits + _ACCIDENTAL_HIT, sampled_logits)
    # log(exp(true) + sum(exp(sampled))) - true, without building the [N, 1 + S] concatenation
    return jax.nn.softplus(jax.nn.logsumexp(sampled_logits, axis=1) - true_logit)


def full_softmax_loss(
    weights: Array, biases: Array, inputs: Array, labels: Array, dot: Dot = DEFAULT
) -> Array:
    """Per-row cross-entropy over the whole vocabulary: ``[N, P]``, ``[N]`` -> ``[N]``."""
    logits = dot.nt(inputs, weights) + biases
    true_logit = jnp.take_along_axis(logits, labels.astype(jnp.int32)[:, None], axis=1)[:, 0]
    return jax.nn.logsumexp(logits, axis=1) - true_logit
