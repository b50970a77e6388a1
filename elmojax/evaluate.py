"""Held-out perplexity with the full softmax, every token counted.

As bilm-tf's ``run_test.py``: the held-out files are read once, in order, as row streams whose LSTM
states carry from window to window; the loss is the full-softmax cross-entropy of each next token.
Unlike bilm-tf, the last incomplete batch is not dropped: its unused positions are masked, so
every target of every sentence counts exactly once.
"""

from __future__ import annotations

import math
from pathlib import Path

import jax
import numpy as np

from elmojax.data import BidirectionalStream
from elmojax.errors import ElmoError
from elmojax.model import zero_state
from elmojax.options import N_DIRECTIONS
from elmojax.rundir import load_run, restore_params
from elmojax.train import DataParallel, StepConfig, jit_eval_step
from elmojax.vocab import Batcher, Vocabulary


def evaluate(
    save_dir: str | Path,
    test_prefix: str,
    *,
    vocab_file: str | Path | None = None,
    batch_size: int | None = None,
    devices: list | None = None,
) -> dict:
    """Perplexities of the latest checkpoint in ``save_dir`` on the files matching ``test_prefix``.

    Returns ``perplexity`` (bilm-tf's figure: exp of the mean of the two directions'
    cross-entropies), ``forward_perplexity``, ``backward_perplexity``, ``n_tokens`` (targets per
    direction) and the ``step`` of the checkpoint.
    """
    options, vocab = load_run(save_dir)
    if vocab_file is not None:
        given = Vocabulary.from_file(vocab_file)
        if given.tokens != vocab.tokens:
            raise ElmoError(
                f"{vocab_file}: differs from the vocabulary the run was trained with ({vocab.source}); "
                "evaluation needs the training vocabulary (or leave --vocab-file out)"
            )
    options.check_trainable()
    n_dev = len(devices) if devices is not None else jax.device_count()
    rows_per_device = options.training.batch_size
    if batch_size is not None:
        if batch_size < 1:
            raise ElmoError(f"--batch-size must be >= 1, found {batch_size}")
        rows_per_device = -(-batch_size // n_dev)
    par = DataParallel(rows_per_device, devices)
    config = StepConfig(options, len(vocab))
    params, step = restore_params(save_dir)
    batcher = Batcher(options.char_cnn.max_characters_per_token, vocab) if options.char_cnn else None
    stream = BidirectionalStream(
        test_prefix,
        vocab,
        par.local_rows,
        options.training.unroll_steps,
        batcher,
        seed=0,
        process_index=jax.process_index(),
        process_count=jax.process_count(),
        loop=False,
        shuffle=False,
    )
    lstm = par.put_lstm(zero_state(options, par.global_rows))
    sums = np.zeros(N_DIRECTIONS, np.float64)
    counts = np.zeros(N_DIRECTIONS, np.int64)
    for windows in stream:
        s, c, lstm = jit_eval_step(params, lstm, par.batch(windows, options), config)
        sums += np.asarray(s, np.float64)
        counts += np.asarray(c)
    if counts.min() == 0:
        raise ElmoError(f"{test_prefix}: no tokens to evaluate")
    ce = sums / counts
    result = {
        "perplexity": math.exp(float(ce.mean())),
        "forward_perplexity": math.exp(float(ce[0])),
        "backward_perplexity": math.exp(float(ce[1])),
        "n_tokens": int(counts[0]),
        "step": step,
    }
    return result
