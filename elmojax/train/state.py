"""The train state: everything a step changes, saved whole in each checkpoint."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import flax.struct
import jax
import jax.numpy as jnp

from elmojax.model.bilm import LSTMState, init_params, zero_state
from elmojax.model.softmax import init_softmax
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
    published model to continue training) replace the random biLM weights; the softmax is new."""
    options, numerics = config.options, config.numerics
    k_model, k_softmax, k_rng = jax.random.split(key, 3)
    bilm = bilm_params if bilm_params is not None else init_params(options, k_model, numerics)
    params = {
        "bilm": bilm["params"],
        "softmax": init_softmax(config.n_vocab, options.projection_dim, k_softmax, numerics.param_dtype),
    }
    params = jax.tree_util.tree_map(jnp.asarray, params)
    return TrainState(
        step=jnp.zeros((), jnp.int32),
        params=params,
        opt_state=make_optimizer(options, config.optimizer).init(params),
        lstm=zero_state(options, global_rows),
        rng=k_rng,
        bad_steps=jnp.zeros((), jnp.int32),
    )
