"""Custom ops of the biLM, each a ``jax.custom_vjp`` with a plain reference beside it; no flax code.

The model picks one implementation set by name (``Numerics.kernels``): a GPU or TPU kernel is one
new file here and one entry in :data:`KERNELS`, tested against the reference implementations.

* ``lstm(xs, masks, c0s, h0s, weights, cell_clip, proj_clip, dot) -> (ys, cs, hs)``: one LSTM
  layer per direction, all directions in one time loop (see :func:`elmojax.model.kernels.lstm.lstm_layers`).
* ``conv_max_pool(x, w, dot) -> y``: valid 1-D convolution, then max over positions.

``dot`` (:class:`elmojax.model.kernels.dot.Dot`) says how every product is computed: precision, operand
dtype (float32 or bfloat16), float32 results.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

from elmojax.errors import OptionsError
from elmojax.model.kernels.conv import conv_max_pool, conv_max_pool_reference
from elmojax.model.kernels.lstm import lstm_layers, lstm_reference


class Kernels(NamedTuple):
    """One implementation of each custom op."""

    lstm: Callable
    conv_max_pool: Callable


#: ``xla``: hand-written gradients (the default, fastest on CPU and GPU); ``reference``: the plain
#: formulations differentiated by JAX.
KERNELS: dict[str, Kernels] = {
    "xla": Kernels(lstm=lstm_layers, conv_max_pool=conv_max_pool),
    "reference": Kernels(lstm=lstm_reference, conv_max_pool=conv_max_pool_reference),
}


def get_kernels(name: str) -> Kernels:
    """The kernel set called ``name``; an unknown name is an error listing the known ones."""
    try:
        return KERNELS[name]
    except KeyError:
        raise OptionsError(f"numerics: unknown kernels {name!r}; use one of {', '.join(KERNELS)}") from None
