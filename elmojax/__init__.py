"""elmojax: train ELMo bidirectional language models in JAX and compute contextual embeddings.

The public API mirrors what ELMo users know from bilm-tf and AllenNLP: :class:`Embedder` embeds
tokenized sentences with a model given as ``options.json`` + weights HDF5, :func:`batch_to_ids`
turns sentences into character ids, :class:`ScalarMix` and :class:`Elmo` put ELMo into a flax
model; :func:`prepare_corpus`, :class:`TrainConfig` with :func:`elmojax.train.train`,
:func:`elmojax.evaluate.evaluate` and :func:`export_run` are the command line's stages as
functions. Heavy modules are imported lazily so that ``import elmojax`` stays cheap.

The package is laid out by stage: ``data/`` (the host side, numpy only), ``model/`` (pure JAX),
``train/``, ``embed/`` and ``cli/``, with :mod:`elmojax.parallel` the one owner of meshes and
shardings.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

__version__ = "0.1.0"

_LAZY = {
    "Embedder": "elmojax.embed.embedder",
    "embed_file": "elmojax.embed.dump",
    "ElmoOptions": "elmojax.options",
    "load_options": "elmojax.options",
    "Numerics": "elmojax.model.numerics",
    "Batcher": "elmojax.data.chars",
    "batch_to_ids": "elmojax.data.chars",
    "TokenBatcher": "elmojax.data.vocab",
    "Vocabulary": "elmojax.data.vocab",
    "BiLM": "elmojax.model.bilm",
    "load_weights": "elmojax.model.weights",
    "save_weights": "elmojax.model.weights",
    "ElmoError": "elmojax.errors",
    "ScalarMix": "elmojax.model.elmo",
    "Elmo": "elmojax.model.elmo",
    "with_pretrained_bilm": "elmojax.model.elmo",
    "TrainConfig": "elmojax.train.loop",
    "export_run": "elmojax.export",
    "prepare_corpus": "elmojax.data.prepare",
}

__all__ = sorted(_LAZY) + ["__version__"]

if TYPE_CHECKING:  # pragma: no cover
    from elmojax.data.chars import Batcher, batch_to_ids  # noqa: F401
    from elmojax.data.prepare import prepare_corpus  # noqa: F401
    from elmojax.data.vocab import TokenBatcher, Vocabulary  # noqa: F401
    from elmojax.embed.dump import embed_file  # noqa: F401
    from elmojax.embed.embedder import Embedder  # noqa: F401
    from elmojax.errors import ElmoError  # noqa: F401
    from elmojax.export import export_run  # noqa: F401
    from elmojax.model.bilm import BiLM  # noqa: F401
    from elmojax.model.elmo import Elmo, ScalarMix, with_pretrained_bilm  # noqa: F401
    from elmojax.model.numerics import Numerics  # noqa: F401
    from elmojax.model.weights import load_weights, save_weights  # noqa: F401
    from elmojax.options import ElmoOptions, load_options  # noqa: F401
    from elmojax.train.loop import TrainConfig  # noqa: F401


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'elmojax' has no attribute {name!r}")
