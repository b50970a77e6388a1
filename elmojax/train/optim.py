"""The optimisers a run can use: bilm-tf's Adagrad, and which of them sparse row updates are exact for.

Every optimiser is global-norm clipping (bilm-tf's ``all_clip_norm_val``) followed by an update
rule, with the learning rate of the options. A step that updates the softmax only on the rows it
touches (:mod:`elmojax.train.sparse`) gathers those rows of the parameters *and of the optimiser
state*, updates them, and scatters them back; that equals the dense update only when the rule is
elementwise and leaves a row whose gradient is zero exactly as it is. Adagrad and plain SGD are;
Adam is not (its moments decay on every row every step, and its bias correction depends on the
step count, so a row-sparse Adam is "lazy Adam", a different optimiser): :data:`OPTIMIZERS` says
which is which, and the step refuses a sparse update for the others.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import jax
import jax.numpy as jnp
import optax

from elmojax.errors import OptionsError
from elmojax.options import ElmoOptions


@dataclass(frozen=True)
class Optimizer:
    """An update rule by name: ``make(learning_rate)``, and whether row-sparse updates are exact for it."""

    make: Callable[[float], optax.GradientTransformation]
    row_sparse_exact: bool
    description: str


#: name -> update rule; ``adagrad`` is bilm-tf's (TensorFlow's Adagrad: initial accumulator 1.0 and
#: no epsilon inside the square root)
OPTIMIZERS: dict[str, Optimizer] = {
    "adagrad": Optimizer(
        lambda lr: optax.adagrad(lr, initial_accumulator_value=1.0, eps=0.0),
        row_sparse_exact=True,
        description="bilm-tf's Adagrad (initial accumulator 1.0)",
    ),
    "sgd": Optimizer(optax.sgd, row_sparse_exact=True, description="plain gradient descent"),
    "adam": Optimizer(optax.adam, row_sparse_exact=False, description="Adam (optax defaults)"),
}


def get_optimizer(name: str) -> Optimizer:
    """The optimiser called ``name``; an unknown name is an error listing the known ones."""
    try:
        return OPTIMIZERS[name]
    except KeyError:
        raise OptionsError(f"unknown optimizer {name!r}; use one of {', '.join(OPTIMIZERS)}") from None


def check_row_sparse(name: str) -> None:
    """Raise unless sparse row updates with optimiser ``name`` equal the dense update."""
    if not get_optimizer(name).row_sparse_exact:
        exact = ", ".join(n for n, o in OPTIMIZERS.items() if o.row_sparse_exact)
        raise OptionsError(
            f"optimizer {name!r} updates every row at every step (its state decays even where the "
            f"gradient is zero), so updating only the rows a step touches would change the result; "
            f"sparse row updates are exact for {exact} only: turn sparse updates off for {name!r}"
        )


def make_optimizer(options: ElmoOptions, name: str = "adagrad") -> optax.GradientTransformationExtraArgs:
    """Global-norm clipping, then the update rule ``name`` (bilm-tf's Adagrad by default).

    ``update`` takes two extra keyword arguments, ``global_norm`` (of the gradients) and ``finite``
    (whether the step's loss and gradients are finite); see :func:`clip_by_known_global_norm`.
    """
    t = options.training
    return optax.chain(
        clip_by_known_global_norm(t.all_clip_norm_val), get_optimizer(name).make(t.learning_rate)
    )


def clip_by_known_global_norm(max_norm: float) -> optax.GradientTransformationExtraArgs:
    """``optax.clip_by_global_norm`` given the norm, which also zeroes a non-finite step's gradients.

    The step has already reduced the gradients to their global norm (a metric, and the finiteness
    check); computing it again inside the optimiser, as ``optax.clip_by_global_norm`` does, and
    zeroing separately would cost two more passes over every gradient. A zero gradient leaves
    Adagrad's parameters and accumulators exactly as they were. The state is ``optax.EmptyState``,
    as ``optax.clip_by_global_norm``'s is, so checkpoints are unchanged.
    """

    def init(params):
        del params
        return optax.EmptyState()

    def update(updates, state, params=None, *, global_norm, finite, **extra):
        del params, extra
        scale = jnp.where(finite, max_norm / jnp.maximum(global_norm, max_norm), 0.0)
        return jax.tree_util.tree_map(lambda g: jnp.where(finite, g, 0.0) * scale, updates), state

    return optax.GradientTransformationExtraArgs(init, update)
