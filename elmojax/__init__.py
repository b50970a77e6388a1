"""elmojax: train ELMo bidirectional language models in JAX and compute contextual embeddings.

The public API mirrors what ELMo users know from bilm-tf and AllenNLP: :class:`Embedder` embeds
tokenized sentences with a model given as ``options.json`` + weights HDF5, :func:`batch_to_ids`
turns sentences into character ids, :class:`ScalarMix` and :class:`Elmo` put ELMo into a flax
model. Heavy modules are imported lazily so that ``import elmojax`` stays cheap.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

__version__ = "0.1.0"

_LAZY = {
    "Embedder": "elmojax.embed",
    "embed_file": "elmojax.embed",
    "ElmoOptions": "elmojax.options",
    "load_options": "elmojax.options",
    "Batcher": "elmojax.vocab",
    "TokenBatcher": "elmojax.vocab",
    "Vocabulary": "elmojax.vocab",
    "batch_to_ids": "elmojax.vocab",
    "BiLM": "elmojax.model",
    "load_weights": "elmojax.weights",
    "save_weights": "elmojax.weights",
    "ElmoError": "elmojax.errors",
    "ScalarMix": "elmojax.elmo",
    "Elmo": "elmojax.elmo",
    "with_pretrained_bilm": "elmojax.elmo",
}

__all__ = sorted(_LAZY) + ["__version__"]

if TYPE_CHECKING:  # pragma: no cover
    from elmojax.elmo import Elmo, ScalarMix, with_pretrained_bilm  # noqa: F401
    from elmojax.embed import Embedder, embed_file  # noqa: F401
    from elmojax.errors import ElmoError  # noqa: F401
    from elmojax.model import BiLM  # noqa: F401
    from elmojax.options import ElmoOptions, load_options  # noqa: F401
    from elmojax.vocab import Batcher, TokenBatcher, Vocabulary, batch_to_ids  # noqa: F401
    from elmojax.weights import load_weights, save_weights  # noqa: F401


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'elmojax' has no attribute {name!r}")
