"""Softmax losses of the biLM: TensorFlow's sampled softmax (as bilm-tf trains) and the full softmax.

The negatives come from TensorFlow's default sampler for ``sampled_softmax_loss``, log-uniform
(Zipf) over ids ``0..V-1`` with ``P(k) = log((k + 2) / (k + 1)) / log(V + 1)``, drawn on the host
until ``S`` distinct ids are found (:mod:`elmojax.data.negatives`). Under unique sampling the
expected count of class ``k`` is ``1 - (1 - P(k)) ** num_tries``; true and sampled logits are
corrected by its log, and sampled ids equal to a row's label ("accidental hits") are removed.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from elmojax.model.kernels.dot import DEFAULT, Dot
from elmojax.model.numerics import Numerics
from elmojax.parallel import row_shards, vocab_sharded

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
    weights: Array,
    biases: Array,
    inputs: Array,
    labels: Array,
    dot: Dot = DEFAULT,
    *,
    n_classes: int | None = None,
    mesh: Mesh | None = None,
    tile_logits: int = Numerics.tile_logits,
) -> Array:
    """Per-row cross-entropy over the whole vocabulary: ``[N, P]``, ``[N]`` -> ``[N]``.

    ``weights [V, P]`` and ``biases [V]`` may hold padding rows past ``n_classes`` (they never
    count) and may have their rows split over ``mesh``'s shard axis. A small vocabulary on one
    shard is one product; otherwise each shard scans its rows in tiles of at most
    ``tile_logits`` logits (``[rows, tile]`` float32; evaluation's memory does not grow with the
    vocabulary) with a running log-sum-exp, and the shards' partial sums are combined
    (:func:`elmojax.parallel.vocab_sharded`): neither the logits nor the weights are ever whole.
    """
    n_classes = weights.shape[0] if n_classes is None else n_classes
    if row_shards(mesh) == 1 and weights.shape[0] == n_classes and inputs.shape[0] * n_classes <= tile_logits:
        logits = dot.nt(inputs, weights) + biases
        true_logit = jnp.take_along_axis(logits, labels.astype(jnp.int32)[:, None], axis=1)[:, 0]
        return jax.nn.logsumexp(logits, axis=1) - true_logit
    per_shard = functools.partial(_block_logsumexp, n_classes=n_classes, dot=dot, tile_logits=tile_logits)
    lse, true_logit = vocab_sharded(per_shard, weights, biases, inputs, labels.astype(jnp.int32), mesh)
    return lse - true_logit


def _tile_rows(n_inputs: int, n_rows: int, tile_logits: int) -> int:
    """Vocabulary rows per tile: a power of two (at least 128) whose logits fit ``tile_logits``."""
    budget = max(tile_logits // max(n_inputs, 1), 128)
    return min(n_rows, 1 << (budget.bit_length() - 1))


def _block_logsumexp(
    w: Array,
    b: Array,
    x: Array,
    labels: Array,
    first_row: Array | int,
    *,
    n_classes: int,
    dot: Dot,
    tile_logits: int,
) -> tuple[Array, Array]:
    """One shard's part: ``(log-sum-exp [M], true logit [M])`` of ``x [M, P]`` over the rows ``w
    [V_s, P]`` (ids ``first_row ..``; padding past ``n_classes`` excluded), -inf / 0 where none."""
    n_rows = w.shape[0]
    tile = _tile_rows(x.shape[0], n_rows, tile_logits)
    xc = dot.cast(x)  # cast once, not per tile

    def tile_logits(t):
        start = jnp.minimum(t * tile, n_rows - tile)  # the last tile overlaps the one before
        rows = start + jnp.arange(tile)
        logits = dot.nt(xc, jax.lax.dynamic_slice_in_dim(w, start, tile))
        logits = logits + jax.lax.dynamic_slice_in_dim(b, start, tile)
        valid = (rows >= t * tile) & (first_row + rows < n_classes)
        return jnp.where(valid[None, :], logits, -jnp.inf)

    def accumulate(top, total, logits):
        new_top = jnp.maximum(top, jnp.max(logits, axis=1))
        shift = jnp.where(jnp.isfinite(new_top), new_top, 0.0)
        return new_top, total * jnp.exp(top - shift) + jnp.sum(jnp.exp(logits - shift[:, None]), axis=1)

    # the first tile starts the running sums (so they carry its sharding), the scan adds the rest,
    # each tile rematerialised: differentiating keeps no [M, tile] logits of any tile
    first = tile_logits(0)
    carry = accumulate(jnp.full_like(first[:, 0], -jnp.inf), jnp.zeros_like(first[:, 0]), first)
    step = jax.checkpoint(lambda carry, t: (accumulate(*carry, tile_logits(t)), None))
    (top, total), _ = jax.lax.scan(step, carry, jnp.arange(1, -(-n_rows // tile)))
    lse = jnp.log(total) + jnp.where(jnp.isfinite(top), top, 0.0)
    local = labels - first_row
    own = (local >= 0) & (local < n_rows)
    local = jnp.where(own, local, 0)
    true_logit = dot.rows(xc, jnp.take(w, local, axis=0)) + jnp.take(b, local)
    return lse, jnp.where(own, true_logit, 0.0)
