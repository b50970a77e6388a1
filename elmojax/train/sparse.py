"""Row-sparse updates: a step differentiates and updates only the softmax rows it touches.

A sampled-softmax step reads the rows of its targets and negatives, a word-level model's step the
rows of its tokens: a few thousand of a vocabulary's ``V``. :func:`sparse_view` gathers those rows
(of the parameters, and of the optimiser state that mirrors them) and re-indexes the batch into
them; the step differentiates, clips and updates the view, and :func:`scatter_view` writes the
rows back. Each row appears once, so its gradient is the sum over its uses, as TensorFlow sums
``IndexedSlices`` before a sparse update. This equals the dense update only for optimisers that
are elementwise and leave a row without gradient untouched (:mod:`elmojax.train.optim` says which).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from jax.sharding import Mesh

from elmojax.data.batches import StepBatch
from elmojax.parallel import put_rows, take_rows

#: parameters that a step touches only a few rows of: the softmax, a word-level token embedding
SOFTMAX_W, SOFTMAX_B = ("softmax", "W"), ("softmax", "b")
WORD_EMBEDDING = ("bilm", "token_embedder", "embedding")

#: sparse updates are used when a step's row ids number at most this fraction of the vocabulary:
#: a row set about the size of the vocabulary saves nothing and costs a sort and a scatter
SPARSE_FRACTION = 0.25


class SoftmaxRows(NamedTuple):
    """Where a sparse step finds each target and each negative among its softmax rows."""

    targets: jax.Array  # [2, B, T]
    sampled: jax.Array  # [2, S]


class SparseView(NamedTuple):
    """What a sparse step reads instead of full parameters.

    ``rows`` maps a parameter path to the row ids taken (``[R]``, ascending and distinct, padded
    with distinct out-of-range ids: the gathers and scatters may say so, see :func:`pad_distinct`);
    ``softmax`` locates the batch's targets and negatives among the softmax rows (None: dense
    softmax); ``embedding`` says the batch's token table indexes the word embedding's rows.
    """

    rows: dict[tuple[str, ...], jax.Array]
    softmax: SoftmaxRows | None
    embedding: bool


def dict_keys(path) -> tuple:
    """The dict keys of a pytree path (dataclass and tuple levels skipped)."""
    return tuple(k.key for k in path if isinstance(k, jax.tree_util.DictKey))


def map_rows(fn: Callable, tree: Any, rows: dict[tuple, jax.Array], *others: Any) -> Any:
    """Apply ``fn(leaf, rows, *other_leaves)`` to the leaves of ``tree`` (params, or an optimiser
    state that mirrors them) whose dict-key path ends with one of ``rows``' keys."""

    def visit(path, leaf, *rest):
        keys = dict_keys(path)
        for name, r in rows.items():
            if keys[-len(name) :] == name:
                return fn(leaf, r, *rest)
        return leaf if not rest else rest[0]

    return jax.tree_util.tree_map_with_path(visit, tree, *others)


#: the largest id that pads a step's row set: out of range of every table, so it reads zeros and is dropped
PAD_ID = 2**31 - 1


def pad_distinct(uniq: jax.Array) -> jax.Array:
    """``jnp.unique``'s ascending row set ``[R]`` with its padding (:data:`PAD_ID`, repeated at the
    end) made distinct: ``PAD_ID - R + 1 + position``, still ascending and out of range of every
    table. Sorted, distinct ids let one device gather and scatter the rows without ordering or
    collision handling (XLA's ``indices_are_sorted``/``unique_indices``)."""
    n = uniq.shape[0]
    return jnp.where(uniq == PAD_ID, PAD_ID - n + 1 + jnp.arange(n, dtype=uniq.dtype), uniq)


def sparse_view(
    params: dict,
    batch: StepBatch,
    n_vocab: int,
    *,
    softmax: bool,
    embedding: bool,
    mesh: Mesh | None = None,
    fraction: float = 0.25,
) -> tuple[SparseView, dict, StepBatch]:
    """The rows of the sparse parameters a step touches, and the batch re-indexed into them.

    ``softmax``/``embedding`` say which parameters may be sparse. The softmax's rows are the
    distinct targets and sampled ids of both directions (``R = 2 B T + 2 S``, padded with the
    out-of-range :data:`PAD_ID`); a word-level embedding's are the distinct entries of the token
    table. Where ``R`` is not small against the vocabulary (more than ``fraction`` of it) the parameter
    stays dense. Rows split over ``mesh``'s shard axis are gathered from their owners
    (:func:`elmojax.parallel.take_rows`). ``-> (view, view params, view batch)``.
    """
    rows: dict[tuple, jax.Array] = {}
    softmax_rows = None
    n_ids = batch.targets.size + (batch.sampled.size if batch.sampled is not None else 0)
    if softmax and batch.sampled is not None and n_ids <= fraction * n_vocab:
        ids = jnp.concatenate([batch.targets.reshape(-1), batch.sampled.reshape(-1)])
        uniq, inverse = jnp.unique(ids, size=ids.size, fill_value=PAD_ID, return_inverse=True)
        inverse = inverse.reshape(-1)
        softmax_rows = SoftmaxRows(
            targets=inverse[: batch.targets.size].reshape(batch.targets.shape),
            sampled=inverse[batch.targets.size :].reshape(batch.sampled.shape),
        )
        rows[SOFTMAX_W] = rows[SOFTMAX_B] = pad_distinct(uniq)
    use_embedding = embedding and batch.table.size <= fraction * n_vocab
    if use_embedding:
        table = batch.table
        uniq, inverse = jnp.unique(table, size=table.size, fill_value=PAD_ID, return_inverse=True)
        batch = batch._replace(table=inverse.reshape(table.shape))
        rows[WORD_EMBEDDING] = pad_distinct(uniq)
    view = SparseView(rows, softmax_rows, use_embedding)
    return view, gather_view(params, view, mesh), batch


def gather_view(tree: Any, view: SparseView, mesh: Mesh | None = None) -> Any:
    """The view's rows of ``tree`` (params, or an optimiser state that mirrors them)."""
    if not view.rows:
        return tree
    return map_rows(lambda x, rows: take_rows(x, rows, mesh, sorted_unique=True), tree, view.rows)


def scatter_view(tree: Any, view: SparseView, updated: Any, mesh: Mesh | None = None) -> Any:
    """``tree`` (params or optimiser state) with the view's rows replaced by ``updated``'s."""
    if not view.rows:
        return updated
    return map_rows(
        lambda x, rows, values: put_rows(x, rows, values, mesh, sorted_unique=True), tree, view.rows, updated
    )
