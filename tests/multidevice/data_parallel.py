"""Data parallelism on 4 simulated devices: training (the softmax split four ways, the default)
equals one device; with the softmax on every device, no step gathers anything.

Run by ``tests/train/test_train.py::test_data_parallel_equals_single_device`` as
``python -m tests.multidevice.data_parallel TMP_DIR``.
"""

from __future__ import annotations

import sys
from pathlib import Path

import jax
import numpy as np

from elmojax.compile_check import collectives
from elmojax.data.chars import Batcher
from elmojax.data.negatives import sample_negatives
from elmojax.data.streams import BidirectionalStream
from elmojax.data.vocab import Vocabulary
from elmojax.model.bilm import zero_state
from elmojax.model.numerics import Numerics
from elmojax.model.start_state import rows_state
from elmojax.options import options_from_dict
from elmojax.parallel import DataParallel
from elmojax.train.checkpoints import restore_params
from elmojax.train.loop import TrainConfig, train
from elmojax.train.state import init_state
from elmojax.train.step import StepConfig, jit_eval_step, jit_train_step
from tests.helpers import TRAIN_KEYS, tiny_options_dict, write_corpus


def main(tmp: Path) -> None:
    assert jax.local_device_count() == 4, jax.local_devices()
    train_glob, vocab_file = write_corpus(tmp / "train")
    devices = jax.devices()
    runs = {}
    for name, per_device, devs in (("one", 4, devices[:1]), ("four", 1, devices)):
        options = options_from_dict(
            tiny_options_dict(**{**TRAIN_KEYS, "batch_size": per_device, "dropout": 0.0})
        )
        config = TrainConfig(str(tmp / name), train_glob, vocab_file, max_steps=2, progress=False)
        train(options, config, devices=devs)
        runs[name] = jax.tree_util.tree_leaves(restore_params(tmp / name)[0])
    diff = max(
        float(np.abs(np.asarray(a) - np.asarray(b)).max()) for a, b in zip(*runs.values(), strict=True)
    )
    print("maxdiff", diff)
    assert diff <= 1e-6, diff

    # plain data parallelism (the softmax on every device): no device receives another's
    # activations or token vectors, in training or in evaluation, also with the character CNN
    # over its table in blocks (as over an accelerator's fixed table)
    vocab = Vocabulary.from_file(vocab_file)
    par = DataParallel(options.training.batch_size, devices, softmax_shards=1)
    options = options.replace(n_tokens_vocab=len(vocab))
    step_config = StepConfig(options, len(vocab), mesh=par.mesh, numerics=Numerics(conv_tokens=16))
    t = options.training
    stream = BidirectionalStream(
        train_glob, vocab, par.local_rows, t.unroll_steps, Batcher(50, vocab), seed=0
    )
    windows = next(stream)
    negatives = sample_negatives(0, 0, len(vocab), t.n_negative_samples_batch)
    state = par.put_state(init_state(step_config, par.global_rows, jax.random.PRNGKey(0)))
    train_hlo = jit_train_step.lower(state, par.batch(windows, options, negatives), step_config)
    assert "all-gather" not in collectives(train_hlo.compile().as_text()), "the train step gathers"
    lstm = par.put_lstm(rows_state(zero_state(options, 1), par.global_rows))
    eval_hlo = jit_eval_step.lower(state.params, lstm, par.batch(windows, options), step_config)
    assert "all-gather" not in collectives(eval_hlo.compile().as_text()), "the eval step gathers"
    print("no all-gather in train and eval")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
