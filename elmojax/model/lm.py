"""The language model: the one place where the biLM's forward is assembled.

:class:`LanguageModel` owns every forward of the model: token vectors looked up for each device's
rows, the biLM's layers, and the softmax on top. Training (:meth:`~LanguageModel.losses` with
``train=True``: sampled softmax, dropout), held-out evaluation (the same with ``train=False``: the
full softmax), the :class:`~elmojax.embed.embedder.Embedder` and the flax
:class:`~elmojax.model.elmo.Elmo` layer (:meth:`~LanguageModel.sentences`) all apply it; the train
step (:mod:`elmojax.train.step`) only differentiates and updates.

Its variables are exactly :class:`~elmojax.model.bilm.BiLM`'s (it shares the biLM's scope), so a
train state's ``params["bilm"]``, a weights file's ``{"params": ...}`` and an ``Elmo`` layer's
``bilm`` parameters are its variables as they are. The softmax ``{"W" [V, P], "b" [V]}`` is an
argument: the train state creates it with padding rows for the mesh (:mod:`elmojax.train.state`).

The ``mesh`` (optional) is where the batch and the vocabulary-sized tables live: the kernels get
its :class:`~elmojax.parallel.BatchLayout` as a static setting, and the row-sharded lookups and the
sharded full softmax are :mod:`elmojax.parallel`'s collectives over it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.sharding import Mesh

from elmojax import parallel
from elmojax.model.bilm import BiLM, LSTMState, remove_sentence_boundaries
from elmojax.model.numerics import Numerics
from elmojax.model.softmax import full_softmax_loss, sampled_softmax_loss
from elmojax.options import N_DIRECTIONS, ElmoOptions

if TYPE_CHECKING:  # pragma: no cover
    from elmojax.data.batches import StepBatch

Array = jax.Array


def samples_softmax(options: ElmoOptions, n_vocab: int) -> bool:
    """Whether training uses bilm-tf's sampled softmax: enabled, and the vocabulary is larger than
    the sample."""
    t = options.training
    return t.sample_softmax and t.n_negative_samples_batch < n_vocab


class LanguageModel(nn.Module):
    """The biLM with its token lookup and softmax: ``LanguageModel(options, numerics, n_vocab, mesh)``.

    ``n_vocab`` is the softmax's number of classes (only :meth:`losses` needs it); ``mesh`` the
    device mesh the batch is split over (None: one device, or a computation that is not split).
    The parameters are the biLM's (see the module docstring).
    """

    options: ElmoOptions
    numerics: Numerics = Numerics()
    n_vocab: int | None = None
    mesh: Mesh | None = None

    def setup(self):
        self.bilm = BiLM(self.options, self.numerics, parallel.batch_layout(self.mesh))
        # the biLM's variables are this module's: no extra level in the parameter tree
        nn.share_scope(self, self.bilm)

    @property
    def sample_softmax(self) -> bool:
        """Whether :meth:`losses` with ``train=True`` uses the sampled softmax."""
        return samples_softmax(self.options, self.n_vocab)

    # -- token vectors ---------------------------------------------------------------------------

    def embed_tokens(self, tokens: Array) -> Array:
        """Shifted char ids ``[..., chars]`` (or token ids ``[...]``) -> token vectors ``[..., P]``."""
        return self.bilm.embed_tokens(tokens)

    def token_vectors(self, table: Array, *, embedding_view: bool = False) -> Array:
        """The vectors of a step's token table ``[D * U, ...]`` (each device's block of distinct
        tokens) -> ``[D * U, P]``, each device's rows where its block is.

        ``embedding_view``: the table holds rows of a word embedding that is itself a row view
        (a sparse step's, :mod:`elmojax.train.sparse`). A word embedding split over the mesh's
        shard axis is looked up from the rows' owners (:func:`elmojax.parallel.take_rows`). Both
        read the table directly: flax would refuse the view's or the padded table's shape, and the
        word embedder is this one lookup.
        """
        if embedding_view:
            return jnp.take(self._word_table(), table, axis=0)
        if parallel.row_shards(self.mesh) > 1 and self.options.char_cnn is None:
            return parallel.take_rows(self._word_table(), table, self.mesh, sharded_ids=True)
        return self.bilm.embed_tokens(table)

    def _word_table(self) -> Array:
        return self.variables["params"]["token_embedder"]["embedding"]

    def direction_inputs(self, vectors: Array, index: Array) -> list[Array]:
        """Each direction's LSTM input: ``vectors [D * U, P]``, ``index [2, D, rows, T]`` (each
        device's rows index its own block of the table) -> ``[D * rows, T, P]`` per direction."""
        if index.shape[1] == 1:  # one device: a plain lookup
            return [jnp.take(vectors, index[d, 0], axis=0) for d in range(N_DIRECTIONS)]
        # each device's rows look up its own block of the table: a batched gather over the device
        # axis, which the partitioner keeps local (a gather with global indices would all-gather
        # every device's token vectors to every device)
        blocks = parallel.constrain_blocks(vectors.reshape(index.shape[1], -1, vectors.shape[-1]), self.mesh)
        lookup = jax.vmap(lambda table, idx: jnp.take(table, idx, axis=0))
        n_rows, steps = index.shape[1] * index.shape[2], index.shape[3]
        return [lookup(blocks, index[d]).reshape(n_rows, steps, -1) for d in range(N_DIRECTIONS)]

    # -- training and evaluation -----------------------------------------------------------------

    def losses(
        self,
        softmax: dict,
        lstm: LSTMState,
        batch: StepBatch,
        *,
        train: bool,
        embedding_view: bool = False,
        softmax_rows: tuple[Array, Array] | None = None,
    ) -> tuple[Array, Array, LSTMState]:
        """Per-direction loss sums ``[2]``, token counts ``[2]`` and the new LSTM states of one
        step batch, from the LSTM states ``lstm`` (``c [2, L, B, H]``, ``h [2, L, B, P]``).

        ``softmax``: ``{"W": [V, P], "b": [V]}`` (rows padded for the mesh, or a sparse step's row
        view). ``train``: the sampled softmax (when :attr:`sample_softmax`) and dropout (a
        ``dropout`` rng); else the full softmax over every class. A sparse step passes
        ``softmax_rows`` (``targets [2, B, T]``, ``sampled [2, S]``: where each target and negative
        sits among the view's rows) and ``embedding_view`` (see :meth:`token_vectors`).
        """
        vectors = self.token_vectors(batch.table, embedding_view=embedding_view)
        xs = self.direction_inputs(vectors, batch.index)
        masks = [batch.mask[d] for d in range(N_DIRECTIONS)]
        outputs, new_lstm = self.bilm.lstm(xs, masks, lstm, deterministic=not train)
        sums, counts = [], []
        for d in range(N_DIRECTIONS):
            top = outputs[d][-1]
            per_token = self.softmax_loss(
                softmax,
                top.reshape(-1, top.shape[-1]),
                batch.targets[d].reshape(-1),
                batch,
                d,
                train=train,
                softmax_rows=softmax_rows,
            )
            m = masks[d].reshape(-1)
            sums.append(jnp.sum(jnp.where(m, per_token, 0.0)))
            counts.append(jnp.sum(m))
        return jnp.stack(sums), jnp.stack(counts), new_lstm

    def softmax_loss(
        self,
        softmax: dict,
        inputs: Array,
        labels: Array,
        batch: StepBatch,
        direction: int,
        *,
        train: bool,
        softmax_rows: tuple[Array, Array] | None = None,
    ) -> Array:
        """Per-token cross-entropy ``[N]`` of direction ``direction``'s top layer ``inputs [N, P]``
        and ``labels [N]``: sampled (training) or full (evaluation), see :meth:`losses`."""
        w, b, dot = softmax["W"], softmax["b"], self.numerics.dot
        if not (train and self.sample_softmax):
            return full_softmax_loss(
                w,
                b,
                inputs,
                labels,
                dot,
                n_classes=self.n_vocab,
                mesh=self.mesh,
                tile_logits=self.numerics.tile_logits,
            )
        rows = None
        if softmax_rows is not None:
            rows = (softmax_rows[0][direction].reshape(-1), softmax_rows[1][direction])
        elif parallel.row_shards(self.mesh) > 1:  # this direction's rows, from their owners
            # the negatives are read anew here: one value shared with the loss below would let the
            # partitioner split it over the batch and gather it back for the lookup
            ids = jnp.concatenate([labels, batch.sampled[direction]]).astype(jnp.int32)
            w, b = parallel.take_rows(w, ids, self.mesh), parallel.take_rows(b, ids, self.mesh)
            rows = (jnp.arange(labels.size), labels.size + jnp.arange(batch.sampled.shape[1]))
        return sampled_softmax_loss(
            w,
            b,
            inputs,
            labels,
            batch.sampled[direction],
            batch.num_tries[direction],
            dot,
            rows=rows,
            n_classes=self.n_vocab,
        )

    # -- whole sentences (embedding) -------------------------------------------------------------

    def sentences(
        self, tokens: Array, state: LSTMState, index: Array | None = None
    ) -> tuple[Array, Array, LSTMState]:
        """The layers of whole sentences with BOS/EOS, then without them.

        ``tokens``: shifted char ids ``[B, T, chars]`` or token ids ``[B, T]``; or, with ``index
        [B, T]`` (0: padding), a table of distinct token inputs ``[U, ...]`` that ``index`` points
        into. ``state``: ``c [2, L, B, H]``, ``h [2, L, B, P]``. ->
        ``(layers [B, L + 1, T - 2, 2P], mask [B, T - 2], new state)``; layer 0 is ``[x; x]``.
        """
        vectors = self.bilm.embed_tokens(tokens)
        if index is not None:
            vectors, mask = jnp.take(vectors, index, axis=0), index > 0  # [B, T, P]
        else:
            mask = (tokens > 0).any(-1) if tokens.ndim == 3 else tokens > 0
        layers, new_state = self.bilm(vectors, mask, state)
        layers, mask = remove_sentence_boundaries(layers, mask)
        return layers, mask, new_state

    def warm_state(self, table: Array, index: Array) -> LSTMState:
        """:meth:`elmojax.model.bilm.BiLM.warm_state`: the state after a warm-up row ``index [1, T]``."""
        return self.bilm.warm_state(table, index)
