"""Embedding one input file with several processes: each writes its own part, plus one index.

Process ``i`` of ``N`` embeds the contiguous block of lines ``[i * n // N, (i + 1) * n // N)``
(blocks differ by at most one line) into ``OUTPUT``'s part file, ``emb.h5`` ->
``emb.part-00000-of-00002.h5`` (the ``.h5`` suffix kept, so tools still see HDF5). Each part has
the layout of AllenNLP's ``elmo`` command: datasets named by the **global** 0-based line number, and
its own ``sentence_to_index``. When every process has finished, process 0 writes the index,
``emb.index.json``, naming each part (relative to the index) and its block of lines, so the union
of the parts is exactly a single-process dump. Contiguous blocks keep the index a few lines long
whatever the input size; the price is one counting pass over the input per process.

Blocks of different sizes are safe here, unlike the batches of a step over a global mesh: each
process embeds on its own devices (:class:`~elmojax.embed.embedder.Embedder`'s mesh is local), so
its batches' number and shapes are its own; the one collective is the end's
:func:`elmojax.parallel.all_succeeded`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from elmojax.errors import ElmoError
from elmojax.fileio import atomic_write_text, check_input_file, count_lines

if TYPE_CHECKING:
    from elmojax.embed.embedder import Embedder

#: what ``format`` says in an index file
INDEX_FORMAT = "elmojax-embed-parts"


def part_path(output_file: str | Path, index: int, count: int) -> Path:
    """The part file of process ``index`` of ``count``: ``emb.h5`` -> ``emb.part-00000-of-00002.h5``."""
    output_file = Path(output_file)
    return output_file.with_name(f"{output_file.stem}.part-{index:05d}-of-{count:05d}{output_file.suffix}")


def index_path(output_file: str | Path) -> Path:
    """The index of a distributed dump: ``emb.h5`` -> ``emb.index.json``."""
    output_file = Path(output_file)
    return output_file.with_name(f"{output_file.stem}.index.json")


def line_block(n_lines: int, index: int, count: int) -> range:
    """The 0-based lines process ``index`` of ``count`` embeds: a contiguous, balanced block."""
    return range(index * n_lines // count, (index + 1) * n_lines // count)


def embed_file_part(
    embedder: Embedder,
    input_file: str | Path,
    output_file: str | Path,
    *,
    process_index: int,
    process_count: int,
    **embed_kwargs: Any,
) -> tuple[Path, int]:
    """Embed this process's block of ``input_file`` into its part of ``output_file``; process 0 then
    writes the index. Every process must call it (the end is a collective); returns this process's
    part file and its number of sentences. ``embed_kwargs`` go to :func:`elmojax.embed.dump.embed_file`.

    A process that fails makes all of them fail (each with its own error, or one naming the
    failed processes), and no index is written.
    """
    from elmojax.embed.dump import embed_file
    from elmojax.parallel import all_succeeded

    if embedder.stateful:
        raise ElmoError(
            "`stateful` embedding carries LSTM states through the whole file in order; it cannot be split "
            "over processes: drop `stateful` (stateless embedding) or run one process"
        )
    n_lines = count_lines(check_input_file(input_file))
    lines = line_block(n_lines, process_index, process_count)
    part = part_path(output_file, process_index, process_count)
    error: BaseException | None = None
    n = 0
    try:
        n = embed_file(embedder, input_file, part, lines=lines, **embed_kwargs)
    except Exception as e:  # noqa: BLE001 - re-raised below, after the others know
        error = e
    ok = all_succeeded(error is None)
    if error is not None:
        raise error
    if not all(ok):
        failed = ", ".join(str(i) for i, good in enumerate(ok) if not good)
        raise ElmoError(f"{output_file}: process(es) {failed} failed (see their errors); no index written")
    if process_index == 0:
        write_index(output_file, input_file, n_lines, process_count, embed_kwargs.get("output_format", "all"))
    return part, n


def write_index(
    output_file: str | Path, input_file: str | Path, n_lines: int, count: int, output_format: str
) -> Path:
    """Write the JSON index of a ``count``-part dump of ``input_file`` (atomically)."""
    path = index_path(output_file)
    index = {
        "format": INDEX_FORMAT,
        "version": 1,
        "input": str(Path(input_file).absolute()),
        "n_sentences": n_lines,
        "output_format": output_format,
        "dataset": "the 0-based line number as a decimal string, as in a single-file dump",
        "parts": [
            {
                "file": part_path(output_file, i, count).name,
                "first_line": line_block(n_lines, i, count).start,
                "n_lines": len(line_block(n_lines, i, count)),
            }
            for i in range(count)
        ],
    }
    atomic_write_text(path, json.dumps(index, indent=1) + "\n")
    return path


def locate(index_file: str | Path, line: int) -> tuple[Path, str]:
    """The part file and dataset name holding 0-based ``line`` of a distributed dump."""
    index_file = Path(index_file)
    index = json.loads(index_file.read_text(encoding="utf-8"))
    if index.get("format") != INDEX_FORMAT:
        raise ElmoError(f"{index_file}: not an elmojax embedding index (format {index.get('format')!r})")
    for part in index["parts"]:
        if part["first_line"] <= line < part["first_line"] + part["n_lines"]:
            return index_file.parent / part["file"], str(line)
    raise ElmoError(f"{index_file}: line {line} is outside the {index['n_sentences']} embedded lines")
