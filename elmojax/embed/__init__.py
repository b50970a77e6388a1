"""Contextual embeddings: the :class:`Embedder`, HDF5 dumps as AllenNLP's ``elmo`` command writes
them, and distributed dumps in parts. Imported lazily, so that the command line can read
:data:`elmojax.embed.formats.OUTPUT_FORMATS` before JAX starts."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

_LAZY = {
    "Embedder": "elmojax.embed.embedder",
    "embed_file": "elmojax.embed.dump",
    "iter_sentences": "elmojax.embed.dump",
    "read_sentences": "elmojax.embed.dump",
    "embed_file_part": "elmojax.embed.parts",
}

__all__ = sorted(_LAZY)

if TYPE_CHECKING:  # pragma: no cover
    from elmojax.embed.dump import embed_file, iter_sentences, read_sentences  # noqa: F401
    from elmojax.embed.embedder import Embedder  # noqa: F401
    from elmojax.embed.parts import embed_file_part  # noqa: F401


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'elmojax.embed' has no attribute {name!r}")
