"""Embedding dumps: every line of a text file embedded into HDF5, as AllenNLP's ``elmo`` command writes it.

Dataset ``str(line_index)`` holds one sentence's layers in the chosen output format
(:data:`elmojax.embed.formats.OUTPUT_FORMATS`), and ``sentence_to_index`` the JSON map from sentence
text to dataset name. The file is written under a temporary name and renamed when complete.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import h5py
import numpy as np

from elmojax.embed.formats import OUTPUT_FORMATS
from elmojax.errors import ElmoError, InputTextError
from elmojax.fileio import atomic_path, check_input_file, check_room, read_text_lines

if TYPE_CHECKING:  # pragma: no cover
    from elmojax.embed.embedder import Embedder


#: room an HDF5 dataset takes beyond its values (object header, B-tree and heap entries), with margin
DATASET_OVERHEAD = 4096

#: the default of :func:`embed_file`'s ``chunk_batches``
#: (``chunk_batches`` of :class:`elmojax.config.EmbedConfig`, ``--chunk-batches``)
CHUNK_BATCHES = 64


def iter_sentences(
    path: str | Path, errors: str = "strict", lines: range | None = None
) -> Iterator[tuple[int, list[str]]]:
    """``(0-based line index, tokens)`` of each line (of ``lines`` only, if given), read lazily.

    An empty line is an error naming it; invalid UTF-8 is an error naming the line and byte unless
    ``errors="replace"``, which replaces the bytes with U+FFFD and goes on.
    """
    path = check_input_file(path)
    start, stop = (lines.start, lines.stop) if lines is not None else (0, None)
    for line in read_text_lines(path, errors, start, stop):
        tokens = line.text.replace("\x00", " ").split()
        if not tokens:
            raise InputTextError(f"{path}: line {line.number}: empty line; every line must hold one sentence")
        yield line.number - 1, tokens


def read_sentences(path: str | Path, errors: str = "strict") -> list[list[str]]:
    """Read one whitespace-tokenized sentence a line into memory (see :func:`iter_sentences`)."""
    return [tokens for _, tokens in iter_sentences(path, errors)]


def embed_file(
    embedder: Embedder,
    input_file: str | Path,
    output_file: str | Path,
    *,
    output_format: str = "all",
    batch_size: int = 64,
    errors: str = "strict",
    progress: bool = False,
    lines: range | None = None,
    chunk_batches: int = CHUNK_BATCHES,
) -> int:
    """Write embeddings of every line of ``input_file`` to HDF5 as AllenNLP's ``elmo`` command does.

    Dataset ``str(line_index)`` holds ``[L + 1, T, 2P]`` (``all``), the top layer ``[T, 2P]``
    (``top``) or the layer average ``[T, 2P]`` (``average``); ``sentence_to_index`` holds the JSON map
    from sentence text to dataset name. ``lines`` (0-based) embeds only those lines, keeping their
    indices as dataset names (one part of a distributed run). The input is read twice, streamed:
    once to check every line, then in chunks of ``chunk_batches`` batches to embed them, so host
    memory stays constant on any input (a multiple of the stateless sort window, 8 batches, groups
    sentences into batches exactly as streaming the whole file at once would).
    Returns the number of sentences written.
    """
    if chunk_batches < 1:
        raise ElmoError(f"`chunk_batches` must be >= 1, found {chunk_batches}")
    if output_format not in OUTPUT_FORMATS:
        raise ElmoError(f"unknown output format {output_format!r}; use one of {', '.join(OUTPUT_FORMATS)}")
    select = OUTPUT_FORMATS[output_format][1]
    input_file = check_input_file(input_file)
    from tqdm import tqdm

    # a first pass checks every line, so bad input fails before any work, and counts them
    total = n_tokens = 0
    for _, tokens in iter_sentences(input_file, errors, lines):
        total, n_tokens = total + 1, n_tokens + len(tokens)
    # one token's bytes in the chosen format, from the format's own selection of [L + 1, T, 2P]
    o = embedder.options
    token_bytes = select(np.zeros((o.lstm.n_layers + 1, 1, o.output_dim), np.float32)).nbytes
    check_room(output_file, n_tokens * token_bytes + total * DATASET_OVERHEAD)
    sentences = iter_sentences(input_file, errors, lines)
    sentence_to_index: dict[str, str] = {}
    n = 0
    with (
        atomic_path(output_file) as tmp,
        h5py.File(tmp, "w") as fout,
        tqdm(total=total, disable=not progress, unit="sent") as bar,
    ):
        while chunk := list(itertools.islice(sentences, chunk_batches * batch_size)):
            # the disk may have filled since the first check: ask again before HDF5 writes
            chunk_tokens = sum(len(tokens) for _, tokens in chunk)
            check_room(output_file, chunk_tokens * token_bytes + len(chunk) * DATASET_OVERHEAD)
            stream = embedder.embed_sentences([tokens for _, tokens in chunk], batch_size)
            for (i, tokens), emb in zip(chunk, stream, strict=True):
                fout.create_dataset(str(i), data=select(emb).astype(np.float32))
                sentence_to_index.setdefault(" ".join(tokens), str(i))
            n += len(chunk)
            bar.update(len(chunk))
        ds = fout.create_dataset("sentence_to_index", (1,), dtype=h5py.string_dtype())
        ds[0] = json.dumps(sentence_to_index)
    return n
