"""Held-out perplexity with the full softmax, every token counted.

The stream figure is bilm-tf's ``run_test.py``: the held-out files are read once, in order, as row
streams whose LSTM states carry from window to window; the loss is the full-softmax cross-entropy
of each next token. Unlike bilm-tf, the last incomplete batch is not dropped (its unused positions
are masked, so every target of every sentence counts exactly once), and every row starts from the
model's start state (:mod:`elmojax.model.start_state`, ``warm`` by default) rather than from zeros, so the
number of rows changes the speed, not the result, beyond the cross-sentence context a row carries.

The per-sentence figure scores each sentence on its own from that same start state, as the
stateless :class:`~elmojax.embed.embedder.Embedder` sees it: the figure that matters for embeddings.
"""

from __future__ import annotations

import math
from pathlib import Path

import jax
import numpy as np
from tqdm import tqdm

from elmojax.data.batches import bucket_time
from elmojax.data.chars import Batcher
from elmojax.data.streams import (
    BidirectionalStream,
    SentenceStream,
    count_tokens,
    resolve_files,
    sentence_windows,
)
from elmojax.data.vocab import TokenBatcher, Vocabulary
from elmojax.errors import ElmoError
from elmojax.model.bilm import BiLM
from elmojax.model.numerics import Numerics
from elmojax.model.start_state import rows_state, start_state
from elmojax.options import N_DIRECTIONS, ElmoOptions
from elmojax.parallel import DataParallel
from elmojax.train.checkpoints import load_run, restore_params
from elmojax.train.metrics import log_evaluation
from elmojax.train.step import StepConfig, jit_eval_step


def evaluate(
    save_dir: str | Path,
    test_prefix: str,
    *,
    vocab_file: str | Path | None = None,
    batch_size: int | None = None,
    devices: list | None = None,
    per_sentence: bool = False,
    start: str = "warm",
    numerics: Numerics | None = None,
    softmax_shards: int | None = None,
    max_tokens: int | None = None,
    progress: bool = False,
) -> dict:
    """Perplexities of the latest checkpoint in ``save_dir`` on the files matching ``test_prefix``.

    Returns ``perplexity`` (bilm-tf's figure: exp of the mean of the two directions'
    cross-entropies), ``forward_perplexity``, ``backward_perplexity``, ``n_tokens`` (targets per
    direction), the ``step`` of the checkpoint and the ``start_state``; with ``per_sentence`` also
    ``per_sentence``: the same three perplexities with every sentence scored on its own.
    ``numerics`` sets the compute dtype (e.g. ``Numerics(compute_dtype="bfloat16")``);
    ``softmax_shards`` splits the softmax over devices as training does (default: one slice or
    host's devices), so no device holds the whole vocabulary; the full softmax is computed in
    vocabulary tiles (:func:`elmojax.model.softmax.full_softmax_loss`), so memory stays bounded.
    ``max_tokens`` scores only the first sentences of the files, in order, while their targets
    number at most that many (at least one sentence). ``progress`` shows a bar over the target
    tokens. The perplexities also go to the run's TensorBoard events at the checkpoint's step
    (:func:`elmojax.train.metrics.log_evaluation`; process 0 only).

    With several processes (after :func:`elmojax.parallel.initialize`) every process calls it
    alike; the result is the one a single process with the same global batch computes
    (:func:`heldout_perplexity`).
    """
    options, vocab = load_run(save_dir)
    resolve_files(test_prefix, arg="test_prefix")
    if vocab_file is not None:
        given = Vocabulary.from_file(vocab_file)
        if given.tokens != vocab.tokens:
            raise ElmoError(
                f"{vocab_file}: differs from the vocabulary the run was trained with ({vocab.source}); "
                "evaluation needs the training vocabulary (or leave `vocab_file` out)"
            )
    options.check_trainable()
    n_dev = len(devices) if devices is not None else jax.device_count()
    rows_per_device = options.training.batch_size
    if batch_size is not None:
        if batch_size < 1:
            raise ElmoError(f"`batch_size` must be >= 1, found {batch_size}")
        rows_per_device = -(-batch_size // n_dev)
    par = DataParallel(rows_per_device, devices, softmax_shards)
    config = StepConfig(options, len(vocab), numerics=numerics or Numerics(), mesh=par.mesh)
    params, step = restore_params(save_dir, mesh=par.mesh, options=options)
    result = heldout_perplexity(
        params,
        config,
        par,
        vocab,
        test_prefix,
        start=start,
        per_sentence=per_sentence,
        max_tokens=max_tokens,
        progress=progress,
    )
    per = result.pop("per_sentence", None)
    result = {**result, "step": step, "start_state": start}
    if per is not None:
        result["per_sentence"] = per
    if jax.process_index() == 0:
        log_evaluation(Path(save_dir), result)
    return result


def heldout_perplexity(
    params: dict,
    config: StepConfig,
    par: DataParallel,
    vocab: Vocabulary,
    test_prefix: str,
    *,
    start: str = "warm",
    per_sentence: bool = False,
    max_tokens: int | None = None,
    progress: bool = False,
) -> dict:
    """:func:`evaluate`'s figures for ``params`` as they are (a checkpoint's, or a training run's
    in memory), laid out on ``par``'s mesh as training lays them out.

    Across processes every process reads all of the held-out text and builds the same global
    batches (``par.global_rows`` rows), then places only its own rows: every process runs the
    same number of batches with the same shapes, whatever the files' sizes, and the rows hold
    exactly what one process's rows would, so the result equals one process's with the same
    global batch (to float summation order). Held-out sets are small next to training data; the
    price is that every host reads all of it.
    """
    options = config.options
    resolve_files(test_prefix, arg="test_prefix")
    batcher = Batcher(options.char_cnn.max_characters_per_token) if options.char_cnn else None
    # one warm-up row on one device: the biLM without the mesh's layout
    start_lstm = start_state(
        BiLM(options, config.numerics),
        {"params": model_params(params, options)},
        start,
        batcher or TokenBatcher(vocab),
    )
    # this process's rows of every global batch: devices of lower processes come first
    mine = par.rows_per_device * sum(d.process_index < jax.process_index() for d in par.mesh.devices.flat)
    rows = slice(mine, mine + par.local_rows)
    stream = BidirectionalStream(
        test_prefix,
        vocab,
        par.global_rows,
        options.training.unroll_steps,
        batcher,
        seed=0,
        loop=False,
        shuffle=False,
        max_targets=max_tokens,
    )
    start_rows = par.put_lstm(rows_state(start_lstm, par.global_rows))
    lstm = start_rows
    sums = np.zeros(N_DIRECTIONS, np.float64)
    counts = np.zeros(N_DIRECTIONS, np.int64)
    bar = _token_bar(test_prefix, per_sentence, max_tokens, progress and jax.process_index() == 0)
    for windows in stream:
        local = [w.rows(rows) for w in windows]
        s, c, lstm = jit_eval_step(params, lstm, par.batch(local, options), config)
        sums += np.asarray(s, np.float64)
        counts += np.asarray(c)
        bar.update(int(np.asarray(c)[0]))
    if counts.min() == 0:
        raise ElmoError(f"{test_prefix}: no tokens to evaluate")
    result = {**_perplexities(sums, counts), "n_tokens": int(counts[0])}

    if per_sentence:
        sentences = SentenceStream(
            test_prefix, seed=0, reverse=False, shuffle=False, loop=False, max_targets=max_tokens
        )
        held_out = sorted((s[1:-1] for s in sentences), key=len)  # similar lengths share a batch
        sums[:], counts[:] = 0, 0
        for i in range(0, len(held_out), par.global_rows):
            chunk = held_out[i : i + par.global_rows]
            length = bucket_time(len(chunk[-1]) + 1)  # the global batch's: the same on every process
            windows = sentence_windows(chunk[rows], vocab, batcher, length, par.local_rows)
            s, c, _ = jit_eval_step(params, start_rows, par.batch(windows, options), config)
            sums += np.asarray(s, np.float64)
            counts += np.asarray(c)
            bar.update(int(np.asarray(c)[0]))
        result["per_sentence"] = _perplexities(sums, counts)
    bar.close()
    return result


def model_params(params: dict, options: ElmoOptions) -> dict:
    """The biLM's parameters as the linen model takes them: a word embedding without its padding rows."""
    if options.char_cnn is not None:
        return params["bilm"]
    embedder = dict(params["bilm"]["token_embedder"])
    embedder["embedding"] = embedder["embedding"][: options.require_vocab_size() + 1]
    return {**params["bilm"], "token_embedder": embedder}


def _token_bar(test_prefix: str, per_sentence: bool, max_tokens: int | None, enabled: bool) -> tqdm:
    """A bar over the targets to score (each token and each sentence's ``</S>``, per pass)."""
    total = None
    if enabled:  # one read of the held-out text, only when the bar is shown
        total = count_tokens(test_prefix, markers=True)
        total = min(total, max_tokens or total) * (2 if per_sentence else 1)
    return tqdm(total=total, disable=not enabled, unit="tok", unit_scale=True, desc="evaluating", leave=False)


def _perplexities(sums: np.ndarray, counts: np.ndarray) -> dict[str, float]:
    ce = sums / counts
    return {
        "perplexity": math.exp(float(ce.mean())),
        "forward_perplexity": math.exp(float(ce[0])),
        "backward_perplexity": math.exp(float(ce[1])),
    }
