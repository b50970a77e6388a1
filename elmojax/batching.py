"""Host-side step arrays: distinct-token tables (one way to build them), shape bucketing, negatives.

The character CNN (or the word embedding) runs once per *distinct* token of a batch, not once per
position: a batch is a table of its distinct token inputs plus an index into it. Row 0 of every
table is the all-zero input that padding positions point at. Tables, time and rows are padded to a
few bucketed sizes so that a stream of ragged batches compiles a handful of shapes. Everything here
is numpy; placing the arrays on devices is the caller's business.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from elmojax.data import Window
from elmojax.softmax import sample_log_uniform
from elmojax.tokens import distinct_char_rows, sorted_distinct_rows
from elmojax.vocab import BOS, EOS, Batcher, TokenBatcher, trim_char_ids


def round_up(n: int, multiple: int) -> int:
    """``n`` rounded up to a multiple of ``multiple``."""
    return -(-n // multiple) * multiple


def pow2(n: int, minimum: int = 1) -> int:
    """The smallest power of two ``>= n`` (and ``>= minimum``)."""
    return max(minimum, 1 << max(0, n - 1).bit_length())


def bucket_table(n: int) -> int:
    """Training table sizes: multiples of 64 up to 512, then eight steps per doubling.

    At most 12.5% padding (about 6% on average) for at most eight compiled shapes per octave;
    batches of one corpus vary by a few percent, so a run sees only a handful of them.
    """
    if n <= 512:
        return round_up(max(n, 1), 64)
    step = 1 << (n.bit_length() - 4)
    return round_up(n, step)


def bucket_time(n: int) -> int:
    """Embedding sequence lengths: multiples of 16 up to 64, then powers of two."""
    return round_up(max(n, 1), 16) if n <= 64 else pow2(n)


def bucket_count(n: int) -> int:
    """Embedding table sizes: powers of two up to 256, then multiples of 256."""
    return pow2(n, 16) if n <= 256 else round_up(n, 256)


def fixed_table_size(platform: str, rows_per_device: int, unroll_steps: int) -> int | None:
    """The one training table size on accelerators, or None on the CPU (which keeps its buckets).

    A GPU or TPU compiles for minutes over a run's handful of bucketed shapes, and pays little for
    padding; one size that always fits (every position of both directions' windows distinct, plus
    the padding row) compiles the step once per run.
    """
    if platform == "cpu":
        return None
    return round_up(2 * rows_per_device * unroll_steps + 1, 64)


def distinct_tokens(inputs: np.ndarray, char: bool) -> tuple[np.ndarray, np.ndarray]:
    """The distinct token inputs of a batch and the index into them.

    ``inputs [..., chars]`` shifted character ids (``char``) or ``[...]`` shifted token ids ->
    ``(table [U, chars] or [U], index [...])``, both int32, with ``table[index] == inputs``. Row 0
    of the table is the all-zero padding input, whether or not the batch has padding.
    """
    lead = inputs.shape[:-1] if char else inputs.shape
    flat = inputs.reshape(-1, inputs.shape[-1]) if char else inputs.reshape(-1)
    table, inverse = np.unique(flat, axis=0, return_inverse=True)
    inverse = inverse.reshape(lead)
    if len(table) == 0 or np.any(table[0] != 0):
        table = np.concatenate([np.zeros((1, *table.shape[1:]), table.dtype), table])
        inverse = inverse + 1
    return table.astype(np.int32), inverse.astype(np.int32)


def pad_table(table: np.ndarray, size: int) -> np.ndarray:
    """Pad a distinct-token table with zero rows to ``size`` rows."""
    return np.pad(table, [(0, size - len(table))] + [(0, 0)] * (table.ndim - 1))


def train_arrays(
    windows: Sequence[Window],
    n_local_devices: int,
    rows_per_device: int,
    max_filter_width: int | None,
    fixed_size: int | None = None,
) -> tuple[list[tuple[np.ndarray, np.ndarray]], int, int]:
    """Per local device, the distinct-token table and index of its rows of both directions' windows.

    Returns ``([(table, index [dirs, rows, T])] per device, bucket, keep)``: ``bucket`` is the
    padded table size this process needs, ``keep`` the character columns it needs (0 for word
    models). Multi-host callers agree on the maxima first, since every process must compile the
    same shapes; then :func:`assemble_train_batch` builds the arrays. With ``fixed_size`` (see
    :func:`fixed_table_size`) every step has that table size and all character columns.
    """
    char = max_filter_width is not None
    per_device = []
    for d in range(n_local_devices):
        rows = slice(d * rows_per_device, (d + 1) * rows_per_device)
        if char:  # distinct ids first, then only their character rows (see distinct_char_rows)
            table, index = distinct_char_rows([(w.inputs[rows], w.table) for w in windows])
            per_device.append((table, np.stack(index)))
        else:
            per_device.append(distinct_tokens(np.stack([w.token_ids[rows] + 1 for w in windows]), char))
    if fixed_size is not None:
        return per_device, fixed_size, windows[0].table.vocab_chars.max_characters_per_token if char else 0
    keep = max(trim_char_ids(t, max_filter_width).shape[-1] for t, _ in per_device) if char else 0
    bucket = max(bucket_table(len(t)) for t, _ in per_device)
    return per_device, bucket, keep


def assemble_train_batch(
    windows: Sequence[Window],
    per_device: list[tuple[np.ndarray, np.ndarray]],
    bucket: int,
    keep: int,
) -> dict[str, np.ndarray]:
    """This process's rows of a step: ``table [local_devices * bucket, ...]`` (each device's table
    padded to ``bucket``), ``index [dirs, local_devices, rows, T]`` (each device's rows into its
    own table, so the lookup never crosses devices), ``targets`` and ``mask [dirs, local_rows, T]``."""
    tables, index = [], []
    for table, inv in per_device:
        if keep:
            table = table[:, :keep]
        tables.append(pad_table(table, bucket))
        index.append(inv)
    return {
        "table": np.concatenate(tables),
        "index": np.stack(index, axis=1).astype(np.int32),
        "targets": np.stack([w.targets for w in windows]).astype(np.int32),
        "mask": np.stack([w.mask for w in windows]),
    }


def sample_negatives(seed: int, step: int, n_vocab: int, n_sampled: int) -> tuple[np.ndarray, np.ndarray]:
    """Each direction's sampled softmax negatives for a step, a pure function of ``(seed, step)``:
    ``(ids int32 [2, S], num_tries float32 [2])``."""
    rng = np.random.default_rng([seed, step, 7])
    draws = [sample_log_uniform(rng, n_vocab, n_sampled) for _ in range(2)]
    return np.stack([d[0] for d in draws]), np.array([d[1] for d in draws], np.float32)


def sentence_arrays(
    sentences: Sequence[Sequence[str]],
    batcher: Batcher | TokenBatcher,
    max_filter_width: int | None,
    row_multiple: int,
) -> tuple[np.ndarray, np.ndarray]:
    """Embedding inputs for a batch of sentences, padded to bucketed shapes.

    ``(table [U, chars] or [U], index [rows, T])``: ``rows`` is the number of sentences rounded up
    to a power of two and to ``row_multiple`` (the number of devices), ``T`` the longest sentence
    plus BOS/EOS, bucketed, ``U`` the distinct tokens, bucketed (and a multiple of ``row_multiple``).
    Index 0 (padding) points at the zero row.
    """
    if max_filter_width is not None:
        table, index = _distinct_sentence_chars(sentences, batcher)
        table = trim_char_ids(table, max_filter_width)
    else:
        table, index = distinct_tokens(batcher.batch_sentences(sentences), char=False)
    rows = round_up(pow2(len(sentences)), row_multiple)
    steps = bucket_time(index.shape[1])
    index = np.pad(index, ((0, rows - len(sentences)), (0, steps - index.shape[1])))
    return pad_table(table, round_up(bucket_count(len(table)), row_multiple)), index


def _distinct_sentence_chars(
    sentences: Sequence[Sequence[str]], batcher: Batcher
) -> tuple[np.ndarray, np.ndarray]:
    """:func:`distinct_tokens` of ``batcher.batch_sentences(sentences)``, without building it.

    Positions are mapped to distinct token strings (one dict lookup each); only the distinct
    tokens' character rows are gathered and sorted.
    """
    lengths = np.array([len(s) + 2 for s in sentences], np.int64)
    flat: list[str] = []
    for sent in sentences:
        flat.append(BOS)
        flat.extend(sent)
        flat.append(EOS)
    distinct = {t: i for i, t in enumerate(dict.fromkeys(flat), start=1)}  # 0: the padding row
    ids = np.fromiter(map(distinct.__getitem__, flat), np.int64, len(flat))
    width = batcher.max_characters_per_token
    rows = np.zeros((len(distinct) + 1, width), np.int32)
    for t, i in distinct.items():
        rows[i] = batcher.char_ids(t)
    table, where = sorted_distinct_rows(rows)
    index = np.zeros((len(sentences), int(lengths.max(initial=0))), np.int32)
    index[np.arange(index.shape[1]) < lengths[:, None]] = where[ids]
    return table, index
