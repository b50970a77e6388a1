"""What an embedding HDF5 dump holds per sentence: the one table behind ``embed``'s output flags.

Kept free of JAX so that the command line can build its flags from it before JAX is imported.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

#: name -> (description, ``[L + 1, T, 2P]`` layers -> the array written for a sentence)
OUTPUT_FORMATS: dict[str, tuple[str, Callable[[np.ndarray], np.ndarray]]] = {
    "all": ("all layers, [n_layers + 1, n_tokens, 2P] per sentence (default)", lambda e: e),
    "top": ("top layer only, [n_tokens, 2P]", lambda e: e[-1]),
    "average": ("average of the layers, [n_tokens, 2P]", lambda e: e.mean(axis=0)),
}
