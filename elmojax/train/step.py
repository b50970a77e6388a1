"""The steps: ``train_step(state, batch, config) -> (state, metrics)`` and ``eval_step``, jitted once.

Both are pure functions of a hashable :class:`StepConfig` (a static jit argument, so equal
configs share compilations, as flax lm1b and big_vision write their steps) and of a typed
:class:`~elmojax.data.batches.StepBatch`. They are traced under the config's mesh
(:func:`elmojax.parallel.tracing`), which is how the kernels learn that the batch spans devices.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh

from elmojax import parallel
from elmojax.data.batches import StepBatch
from elmojax.errors import OptionsError
from elmojax.model.bilm import BiLM, LSTMState
from elmojax.model.numerics import Numerics
from elmojax.model.softmax import full_softmax_loss, sampled_softmax_loss
from elmojax.options import N_DIRECTIONS, ElmoOptions
from elmojax.train.optim import check_row_sparse, get_optimizer, make_optimizer
from elmojax.train.sparse import SparseView, gather_view, scatter_view, sparse_view
from elmojax.train.state import TrainState


@dataclasses.dataclass(frozen=True)
class StepConfig:
    """Everything static about the steps: a hashable jit argument, so equal configs share compilations.

    ``mesh`` (optional) is the device mesh the steps run on: the returned state is pinned to its
    shardings and the kernels contract a sharded batch without gathering it. ``optimizer`` names
    one of :data:`elmojax.train.optim.OPTIMIZERS`. ``sparse`` (the default) updates the softmax and
    a word-level token embedding only on the rows a step touches, which is exact for some
    optimisers only (a sparse config with another is refused); ``False`` is the plain dense update,
    kept as the reference the sparse one is tested against. ``sparse_fraction``: a step's distinct
    rows above this share of the table update it densely instead (the sparse gather/scatter then
    costs more than it saves).
    """

    options: ElmoOptions
    n_vocab: int
    numerics: Numerics = Numerics()
    mesh: Mesh | None = None
    sparse: bool = True
    optimizer: str = "adagrad"
    sparse_fraction: float = 0.25

    def __post_init__(self):
        if not 0 <= self.sparse_fraction <= 1:
            raise OptionsError(f"`sparse_fraction` must be between 0 and 1, not {self.sparse_fraction}")
        get_optimizer(self.optimizer)
        if self.sparse:
            check_row_sparse(self.optimizer)

    @property
    def model(self) -> BiLM:
        return BiLM(self.options, self.numerics)

    @property
    def sample_softmax(self) -> bool:
        """bilm-tf's sampled softmax, unless the vocabulary is not larger than the sample."""
        t = self.options.training
        return t.sample_softmax and t.n_negative_samples_batch < self.n_vocab

    @property
    def sparse_softmax(self) -> bool:
        """Whether the softmax may be updated on the rows a step touches only."""
        return self.sparse and self.sample_softmax

    @property
    def sparse_embedding(self) -> bool:
        """Whether a word-level model's token embedding may be updated on the step's rows only."""
        return self.sparse and self.options.char_cnn is None

    @property
    def vocab_rows(self) -> int:
        """Rows of the softmax: the vocabulary, padded to split evenly over the mesh's shards."""
        return parallel.vocab_rows(self.n_vocab, self.mesh)

    @property
    def embedding_rows(self) -> int | None:
        """Rows of a word-level model's token embedding (padding row 0 included), padded likewise;
        None for character models."""
        if self.options.char_cnn is not None:
            return None
        return parallel.vocab_rows(self.options.require_vocab_size() + 1, self.mesh)

    def view(self, params: dict, batch: StepBatch) -> tuple[SparseView, dict, StepBatch]:
        """The step's sparse view of ``params`` and ``batch`` (:func:`elmojax.train.sparse.sparse_view`)."""
        return sparse_view(
            params,
            batch,
            self.n_vocab,
            softmax=self.sparse_softmax,
            embedding=self.sparse_embedding,
            mesh=self.mesh,
            fraction=self.sparse_fraction,
        )


def losses(
    params: dict,
    lstm: LSTMState,
    batch: StepBatch,
    rng: jax.Array,
    config: StepConfig,
    train: bool,
    view: SparseView | None = None,
) -> tuple[jax.Array, jax.Array, LSTMState]:
    """Per-direction loss sums ``[2]``, token counts ``[2]`` and the new LSTM states of one batch.

    Training uses the sampled softmax (when enabled) and dropout; evaluation the full softmax. With
    a sparse ``view``, ``params`` holds only the view's rows of the softmax (and of a word
    embedding), which the view locates (see :mod:`elmojax.train.sparse`).
    """
    model, mesh = config.model, config.mesh
    sharded = parallel.row_shards(mesh) > 1
    variables = {"params": params["bilm"]}
    if view is not None and view.embedding:
        # the step's rows of the word embedding; flax would refuse the row view's shape, and the
        # word embedder is this one lookup
        vectors = jnp.take(params["bilm"]["token_embedder"]["embedding"], batch.table, axis=0)
    elif sharded and config.options.char_cnn is None:  # each device's tokens, from the rows' owners
        table = params["bilm"]["token_embedder"]["embedding"]
        vectors = parallel.take_rows(table, batch.table, mesh, sharded_ids=True)
    else:
        vectors = model.apply(variables, batch.table, method=BiLM.embed_tokens)  # [D * U, P]
    # each device's rows look up its own block of the table: a batched gather over the device
    # axis, which the partitioner keeps local (a gather with global indices would all-gather
    # every device's token vectors to every device)
    index = batch.index  # [2, D, rows, T]
    if index.shape[1] == 1:  # one device: a plain lookup
        xs = [jnp.take(vectors, index[d, 0], axis=0) for d in range(N_DIRECTIONS)]
    else:
        blocks = parallel.constrain_blocks(
            vectors.reshape(index.shape[1], -1, vectors.shape[-1]), config.mesh
        )
        lookup = jax.vmap(lambda table, idx: jnp.take(table, idx, axis=0))
        n_rows, steps = index.shape[1] * index.shape[2], index.shape[3]
        xs = [lookup(blocks, index[d]).reshape(n_rows, steps, -1) for d in range(N_DIRECTIONS)]
    masks = [batch.mask[d] for d in range(N_DIRECTIONS)]
    outputs, new_lstm = model.apply(
        variables, xs, masks, lstm, deterministic=not train, method=BiLM.lstm, rngs={"dropout": rng}
    )
    w, b = params["softmax"]["W"], params["softmax"]["b"]
    dot = config.numerics.dot
    sums, counts = [], []
    for d in range(N_DIRECTIONS):
        top = outputs[d][-1]
        flat = top.reshape(-1, top.shape[-1])
        labels = batch.targets[d].reshape(-1)
        if train and config.sample_softmax:
            rows, w_d, b_d = None, w, b
            if view is not None and view.softmax is not None:
                rows = (view.softmax.targets[d].reshape(-1), view.softmax.sampled[d])
            elif sharded:  # the rows of this direction's targets and negatives, from their owners
                ids = jnp.concatenate([labels, batch.sampled[d]]).astype(jnp.int32)
                w_d, b_d = parallel.take_rows(w, ids, mesh), parallel.take_rows(b, ids, mesh)
                rows = (jnp.arange(labels.size), labels.size + jnp.arange(batch.sampled.shape[1]))
            per_token = sampled_softmax_loss(
                w_d,
                b_d,
                flat,
                labels,
                batch.sampled[d],
                batch.num_tries[d],
                dot,
                rows=rows,
                n_classes=config.n_vocab,
            )
        else:
            per_token = full_softmax_loss(
                w,
                b,
                flat,
                labels,
                dot,
                n_classes=config.n_vocab,
                mesh=mesh,
                tile_logits=config.numerics.tile_logits,
            )
        m = masks[d].reshape(-1)
        sums.append(jnp.sum(jnp.where(m, per_token, 0.0)))
        counts.append(jnp.sum(m))
    return jnp.stack(sums), jnp.stack(counts), new_lstm


def train_step(state: TrainState, batch: StepBatch, config: StepConfig) -> tuple[TrainState, dict]:
    """One optimisation step: ``(state, batch) -> (state, metrics)``.

    A non-finite loss or gradient leaves parameters, optimiser state and LSTM states as they were
    and counts a bad step. With ``config.sparse`` the softmax (and a word-level embedding) is
    differentiated, clipped and updated on the rows the step touches only, as TensorFlow's sparse
    Adagrad does (:mod:`elmojax.train.sparse`): the dense update without the ``[V, P]`` gradient
    and the passes over every row.
    """
    with parallel.tracing(config.mesh):
        rng = jax.random.fold_in(state.rng, state.step)
        unroll = config.options.training.unroll_steps
        view, params, batch = config.view(state.params, batch)
        opt_state = gather_view(state.opt_state, view, config.mesh)

        def loss_fn(params):
            sums, counts, new_lstm = losses(params, state.lstm, batch, rng, config, train=True, view=view)
            per_dir = sums / jnp.maximum(counts, 1)
            total = jnp.mean(per_dir)
            # bilm-tf differentiates total_loss * unroll_steps; with Adagrad's initial accumulator
            # and the clip this factor changes the dynamics, so we keep it
            return total * unroll, (total, per_dir, new_lstm)

        grads, (total, per_dir, new_lstm) = jax.grad(loss_fn, has_aux=True)(params)
        grad_norm = optax.tree.norm(grads)
        ok = jnp.isfinite(total) & jnp.isfinite(grad_norm)
        # a non-finite step becomes a zero gradient inside the optimiser's clip, which leaves the
        # parameters and Adagrad's accumulators exactly as they were; cheaper than selecting
        # between two whole states
        updates, opt_state = make_optimizer(config.options, config.optimizer).update(
            grads, opt_state, params, global_norm=grad_norm, finite=ok
        )
        params = optax.apply_updates(params, updates)
        new_state = TrainState(
            step=state.step + 1,
            params=scatter_view(state.params, view, params, config.mesh),
            opt_state=scatter_view(state.opt_state, view, opt_state, config.mesh),
            lstm=jax.tree_util.tree_map(
                lambda a, b: jnp.where(ok, jax.lax.stop_gradient(a), b), new_lstm, state.lstm
            ),
            rng=state.rng,
            bad_steps=jnp.where(ok, 0, state.bad_steps + 1),
        )
        new_state = parallel.constrain(new_state, config.mesh, parallel.STATE_RULES)
        metrics = {
            "loss": total,
            "loss_forward": per_dir[0],
            "loss_backward": per_dir[1],
            "grad_norm": grad_norm,
        }
        return new_state, metrics


def eval_step(
    params: dict, lstm: LSTMState, batch: StepBatch, config: StepConfig
) -> tuple[jax.Array, jax.Array, LSTMState]:
    """Full-softmax loss sums ``[2]``, token counts ``[2]`` and the carried LSTM states."""
    with parallel.tracing(config.mesh):
        return losses(params, lstm, batch, jax.random.PRNGKey(0), config, train=False)


#: the jitted steps, shared by every run of a process with an equal :class:`StepConfig`
jit_train_step = jax.jit(train_step, static_argnames="config", donate_argnames="state")
jit_eval_step = jax.jit(eval_step, static_argnames="config")
