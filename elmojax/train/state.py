"""The train state: everything a step changes, saved whole in each checkpoint."""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING, Any

import flax.struct
import jax
import jax.numpy as jnp

from elmojax.model.bilm import LSTMState, init_params, zero_state
from elmojax.model.numerics import Numerics
from elmojax.model.softmax import init_softmax
from elmojax.options import ElmoOptions
from elmojax.train.optim import make_optimizer

if TYPE_CHECKING:  # pragma: no cover
    from elmojax.train.step import StepConfig


@flax.struct.dataclass
class TrainState:
    """Parameters, optimiser state, carried LSTM states, the step, the RNG key, the bad-step count."""

    step: jax.Array
    params: Any  # {"bilm": ..., "softmax": {"W": [V, P], "b": [V]}}
    opt_state: Any
    lstm: LSTMState  # c [2, L, B, H], h [2, L, B, P]
    rng: jax.Array
    bad_steps: jax.Array  # consecutive steps skipped for a non-finite loss or gradient


def init_state(
    config: StepConfig, global_rows: int, key: jax.Array, bilm_params: dict | None = None
) -> TrainState:
    """A fresh train state for ``global_rows`` rows; ``bilm_params`` (``{"params": ...}``, e.g. a
    published model to continue training) replace the random biLM weights; the softmax is new.
    Vocabulary-sized arrays get the rows of ``config.mesh`` (:func:`pad_rows`)."""
    if bilm_params is not None:
        bilm_params = jax.tree_util.tree_map(jnp.asarray, bilm_params)
    layout = (config.vocab_rows, config.embedding_rows)
    n = config.numerics
    return _init_state(
        config.options, config.n_vocab, layout, config.optimizer, n.param_dtype, global_rows, key, bilm_params
    )


@functools.partial(jax.jit, static_argnums=(0, 1, 2, 3, 4, 5))
def _init_state(
    options: ElmoOptions,
    n_vocab: int,
    layout: tuple[int, int | None],
    optimizer: str,
    param_dtype: str,
    global_rows: int,
    key: jax.Array,
    bilm_params: dict | None,
) -> TrainState:
    # one compiled program per model and layout, shared by every step configuration of it (compute
    # dtype, sparse or dense): the initialisers' random draws are many small programs
    k_model, k_softmax, k_rng = jax.random.split(key, 3)
    if bilm_params is None:
        bilm_params = init_params(options, k_model, Numerics(param_dtype=param_dtype))
    softmax = init_softmax(n_vocab, options.projection_dim, k_softmax, param_dtype)
    params = {
        "bilm": bilm_params["params"],
        "softmax": {k: pad_rows(v, layout[0]) for k, v in softmax.items()},
    }
    if layout[1] is not None:  # a word-level model's token embedding
        embedder = dict(params["bilm"]["token_embedder"])
        embedder["embedding"] = pad_rows(embedder["embedding"], layout[1])
        params["bilm"] = {**params["bilm"], "token_embedder": embedder}
    return TrainState(
        step=jnp.zeros((), jnp.int32),
        params=params,
        opt_state=make_optimizer(options, optimizer).init(params),
        lstm=zero_state(options, global_rows),
        rng=k_rng,
        bad_steps=jnp.zeros((), jnp.int32),
    )


def pad_rows(x: jax.Array, n_rows: int) -> jax.Array:
    """``x`` with zero rows appended up to ``n_rows``: a vocabulary-sized array split evenly over the
    shard axis. Padding rows are never a target, a sample or a token, so they stay zero."""
    if x.shape[0] == n_rows:
        return x
    return jnp.pad(x, [(0, n_rows - x.shape[0])] + [(0, 0)] * (x.ndim - 1))
