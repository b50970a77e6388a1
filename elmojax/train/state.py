"""The train state: everything a step changes, saved whole in each checkpoint."""

from __future__ import annotations

import functools
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp

from elmojax import parallel
from elmojax.model.bilm import LSTMState, init_params, zero_state
from elmojax.model.numerics import Numerics
from elmojax.model.softmax import init_softmax
from elmojax.options import ElmoOptions
from elmojax.train.optim import make_optimizer
from elmojax.train.step_config import StepConfig


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
    Vocabulary-sized arrays get the rows of ``config.mesh`` (:func:`pad_rows`). With a mesh, every
    array is created in its sharding (:func:`init_program`): the ``[V, P]`` softmax and its optimiser
    state are never whole on one device."""
    if config.mesh is None:
        if bilm_params is not None:
            bilm_params = jax.tree_util.tree_map(jnp.asarray, bilm_params)
        return _init_state(*_static(config, global_rows), key, bilm_params)
    return init_program(config, global_rows)(key, bilm_params)


def init_program(config: StepConfig, global_rows: int) -> InitProgram:
    """The init of :func:`init_state` on ``config.mesh``, jitted with the state's shardings
    (:data:`elmojax.parallel.STATE_RULES`) as its outputs, as flax's lm1b and big_vision do: the
    shapes come from ``jax.eval_shape`` of the init, and XLA creates each device's rows only.
    ``(key, bilm_params or None) -> TrainState``; the inputs are replicated (host arrays are fine,
    the same on every process). ``.lower`` compiles it for a topology without devices
    (:mod:`elmojax.compile_check`). The random values equal the unsharded init's: JAX's
    partitionable threefry draws each element the same wherever it is computed."""
    return _init_program(*_static(config, global_rows), config.mesh)


def _static(config: StepConfig, global_rows: int) -> tuple:
    layout = (config.vocab_rows, config.embedding_rows)
    return (
        config.options,
        config.n_vocab,
        layout,
        config.optimizer,
        config.numerics.param_dtype,
        global_rows,
    )


class InitProgram:
    """:func:`init_state`'s program on one mesh: ``(key, bilm_params or None) -> TrainState``, each
    output in its sharding; :meth:`lower` for a topology without devices."""

    def __init__(self, static: tuple, mesh: jax.sharding.Mesh):
        self.init = functools.partial(_init_fn, *static)
        self.static, self.mesh = static, mesh

    @functools.cache  # noqa: B019 - one program per variant; the instances are cached themselves
    def jitted(self, with_bilm: bool) -> Any:
        """The jitted init; ``with_bilm``: the biLM's weights are an input (``--init-from``)."""
        options, param_dtype = self.static[0], self.static[4]
        bilm = None
        if with_bilm:  # the given weights have the random init's shapes (load_weights checks them)
            bilm = jax.eval_shape(
                lambda k: init_params(options, k, Numerics(param_dtype=param_dtype)), jax.random.PRNGKey(0)
            )
        shapes = jax.eval_shape(self.init, jax.random.PRNGKey(0), bilm)
        out = parallel.state_shardings(shapes, self.mesh)
        return jax.jit(self.init, in_shardings=parallel.replicated(self.mesh), out_shardings=out)

    def __call__(self, key: jax.Array, bilm_params: dict | None = None) -> TrainState:
        return self.jitted(bilm_params is not None)(key, bilm_params)

    def lower(self, key: Any, bilm_params: Any = None) -> Any:
        """``jax.jit(...).lower`` of the program (abstract ``key`` and weights are fine)."""
        return self.jitted(bilm_params is not None).lower(key, bilm_params)


@functools.lru_cache(maxsize=8)
def _init_program(*static_and_mesh) -> InitProgram:
    return InitProgram(static_and_mesh[:-1], static_and_mesh[-1])


def _init_fn(
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


#: the init without a mesh (one device)
_init_state = jax.jit(_init_fn, static_argnums=(0, 1, 2, 3, 4, 5))


def pad_rows(x: jax.Array, n_rows: int) -> jax.Array:
    """``x`` with zero rows appended up to ``n_rows``: a vocabulary-sized array split evenly over the
    shard axis. Padding rows are never a target, a sample or a token, so they stay zero."""
    if x.shape[0] == n_rows:
        return x
    return jnp.pad(x, [(0, n_rows - x.shape[0])] + [(0, 0)] * (x.ndim - 1))
