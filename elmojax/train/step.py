"""The steps: ``train_step(state, batch, config) -> (state, metrics)`` and ``eval_step``, jitted once.

Both are pure functions of a hashable :class:`StepConfig` (a static jit
argument, so equal configs share compilations, as flax lm1b and big_vision write their steps) and
of a typed :class:`~elmojax.data.batches.StepBatch`. The forward is the model's
(:class:`elmojax.model.lm.LanguageModel`, ``config.model``, which knows the mesh's batch layout);
a step adds the gradient, its clipping, the update and the sparse view's plumbing.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from elmojax import parallel
from elmojax.data.batches import StepBatch
from elmojax.model.bilm import LSTMState
from elmojax.model.lm import LanguageModel
from elmojax.train.optim import make_optimizer
from elmojax.train.sparse import SparseView, gather_view, scatter_view
from elmojax.train.state import TrainState
from elmojax.train.step_config import StepConfig

#: StepConfig is defined beside the train state's imports (elmojax.train.step_config) and
#: documented here, where programs import it from
__all__ = ["StepConfig", "eval_step", "jit_eval_step", "jit_train_step", "losses", "train_step"]


def losses(
    params: dict,
    lstm: LSTMState,
    batch: StepBatch,
    rng: jax.Array,
    config: StepConfig,
    train: bool,
    view: SparseView | None = None,
) -> tuple[jax.Array, jax.Array, LSTMState]:
    """Per-direction loss sums ``[2]``, token counts ``[2]`` and the new LSTM states of one batch:
    :meth:`elmojax.model.lm.LanguageModel.losses` of ``config.model``.

    With a sparse ``view``, ``params`` holds only the view's rows of the softmax (and of a word
    embedding), which the view locates (see :mod:`elmojax.train.sparse`).
    """
    return config.model.apply(
        {"params": params["bilm"]},
        params["softmax"],
        lstm,
        batch,
        train=train,
        embedding_view=view is not None and view.embedding,
        softmax_rows=view.softmax if view is not None else None,
        rngs={"dropout": rng} if train else None,
        method=LanguageModel.losses,
    )


def train_step(state: TrainState, batch: StepBatch, config: StepConfig) -> tuple[TrainState, dict]:
    """One optimisation step: ``(state, batch) -> (state, metrics)``.

    A non-finite loss or gradient leaves parameters, optimiser state and LSTM states as they were
    and counts a bad step. With ``config.sparse`` the softmax (and a word-level embedding) is
    differentiated, clipped and updated on the rows the step touches only, as TensorFlow's sparse
    Adagrad does (:mod:`elmojax.train.sparse`): the dense update without the ``[V, P]`` gradient
    and the passes over every row.
    """
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
    return losses(params, lstm, batch, jax.random.PRNGKey(0), config, train=False)


#: the jitted steps, shared by every run of a process with an equal :class:`StepConfig`
jit_train_step = jax.jit(train_step, static_argnames="config", donate_argnames="state")
jit_eval_step = jax.jit(eval_step, static_argnames="config")
