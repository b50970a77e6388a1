"""Typed step batches, built on the host in one place, and the shape bucketing behind them.

The character CNN (or the word embedding) runs once per *distinct* token of a batch, not once per
position: a batch is a table of its distinct token inputs plus an index into it. Row 0 of every
table is the all-zero input that padding positions point at. Tables, time and rows are padded to a
few bucketed sizes so that a stream of ragged batches compiles a handful of shapes. Everything here
is numpy; :meth:`elmojax.parallel.DataParallel.place` puts a :class:`StepBatch` on the devices.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

from elmojax.data.chars import (
    Batcher,
    distinct_char_rows,
    distinct_sentence_chars,
    distinct_tokens,
    trim_char_ids,
)
from elmojax.data.streams import Window
from elmojax.data.vocab import TokenBatcher


class StepBatch(NamedTuple):
    """One training or evaluation step's inputs (numpy on the host, ``jax.Array`` on the devices).

    ``D`` devices (or blocks) of ``rows`` rows each, ``B = D * rows``, ``T`` steps, directions
    first (forward, backward):

    * ``table [D * U, chars]`` (or ``[D * U]`` token ids): each device's distinct token inputs,
      padded to ``U`` rows;
    * ``index [2, D, rows, T]``: each row's positions into its own device's block of ``table``;
    * ``targets [2, B, T]`` next-token ids, ``mask [2, B, T]`` real positions;
    * ``sampled [2, S]`` and ``num_tries [2]``: the sampled softmax's negatives (training with the
      sampled softmax only, else None).
    """

    table: np.ndarray
    index: np.ndarray
    targets: np.ndarray
    mask: np.ndarray
    sampled: np.ndarray | None = None
    num_tries: np.ndarray | None = None


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


def pad_table(table: np.ndarray, size: int) -> np.ndarray:
    """Pad a distinct-token table with zero rows to ``size`` rows."""
    return np.pad(table, [(0, size - len(table))] + [(0, 0)] * (table.ndim - 1))


@dataclass(frozen=True)
class DeviceTables:
    """Each local device's distinct-token table and its rows' index into it, before padding."""

    tables: list[np.ndarray]  # [U_d, chars] (or [U_d]) per local device
    index: list[np.ndarray]  # [2, rows, T] per local device


def device_tables(windows: Sequence[Window], n_local_devices: int, rows_per_device: int) -> DeviceTables:
    """Per local device, the distinct-token table of its rows of both directions' windows."""
    char = windows[0].table.vocab_chars is not None
    tables, index = [], []
    for d in range(n_local_devices):
        rows = slice(d * rows_per_device, (d + 1) * rows_per_device)
        if char:  # distinct ids first, then only their character rows (see distinct_char_rows)
            table, idx = distinct_char_rows([(w.inputs[rows], w.table) for w in windows])
            idx = np.stack(idx)
        else:
            table, idx = distinct_tokens(np.stack([w.token_ids[rows] + 1 for w in windows]), char=False)
        tables.append(table)
        index.append(idx)
    return DeviceTables(tables, index)


@dataclass(frozen=True)
class PendingBatch:
    """A step batch whose table shape several processes must agree on before it is assembled.

    Every process must compile the same shapes: each proposes its ``bucket`` (padded table rows)
    and ``keep`` (character columns), and all assemble with the maxima (see
    :meth:`elmojax.parallel.DataParallel.place`).
    """

    windows: tuple[Window, ...]
    tables: DeviceTables
    bucket: int
    keep: int
    sampled: np.ndarray | None = None
    num_tries: np.ndarray | None = None

    def assemble(self, bucket: int, keep: int) -> StepBatch:
        """The step batch with each device's table padded to ``bucket`` rows and ``keep`` columns."""
        tables = [pad_table(t[:, :keep] if keep else t, bucket) for t in self.tables.tables]
        return StepBatch(
            table=np.concatenate(tables),
            index=np.stack(self.tables.index, axis=1).astype(np.int32),
            targets=np.stack([w.targets for w in self.windows]).astype(np.int32),
            mask=np.stack([w.mask for w in self.windows]),
            sampled=self.sampled,
            num_tries=self.num_tries,
        )


def step_batch(
    windows: Sequence[Window],
    *,
    n_local_devices: int,
    rows_per_device: int,
    max_filter_width: int | None,
    fixed_size: int | None = None,
    negatives: tuple[np.ndarray, np.ndarray] | None = None,
    agree: bool = False,
) -> StepBatch | PendingBatch:
    """This process's rows of a step from its forward and backward windows.

    Each local device gets a table of its distinct tokens, padded to a bucket shared by all devices,
    and indices into it; no device reads another's table. ``fixed_size`` (see
    :func:`fixed_table_size`) gives every step that table size and all character columns.
    ``negatives`` (the sampled softmax's ids and tries) ride along. With ``agree`` (several
    processes and no fixed size) the shapes are left to agree on: a :class:`PendingBatch`.
    """
    tables = device_tables(windows, n_local_devices, rows_per_device)
    char = max_filter_width is not None
    if fixed_size is not None:
        bucket = fixed_size
        keep = windows[0].table.vocab_chars.max_characters_per_token if char else 0
    else:
        keep = max(trim_char_ids(t, max_filter_width).shape[-1] for t in tables.tables) if char else 0
        bucket = max(bucket_table(len(t)) for t in tables.tables)
    sampled, num_tries = negatives if negatives is not None else (None, None)
    pending = PendingBatch(tuple(windows), tables, bucket, keep, sampled, num_tries)
    return pending if agree and fixed_size is None else pending.assemble(bucket, keep)


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
        table, index = distinct_sentence_chars(sentences, batcher.max_characters_per_token)
        table = trim_char_ids(table, max_filter_width)
    else:
        table, index = distinct_tokens(batcher.batch_sentences(sentences), char=False)
    rows = round_up(pow2(len(sentences)), row_multiple)
    steps = bucket_time(index.shape[1])
    index = np.pad(index, ((0, rows - len(sentences)), (0, steps - index.shape[1])))
    return pad_table(table, round_up(bucket_count(len(table)), row_multiple)), index
