"""The softmax split over 8 simulated devices: equal to the replicated step, no vocabulary-sized
collective, and a run resumed on another number of devices.

Run by ``tests/train/test_sharding.py`` as ``python -m tests.multidevice.sharded_softmax CHECK TMP``
with ``CHECK`` one of ``equality``, ``collectives``, ``resume``.
"""

from __future__ import annotations

import sys
from pathlib import Path

import jax
import numpy as np

from elmojax.compile_check import collective_arrays
from elmojax.data.chars import Batcher
from elmojax.data.negatives import sample_negatives
from elmojax.data.streams import BidirectionalStream
from elmojax.data.vocab import Vocabulary
from elmojax.errors import ElmoError
from elmojax.export import export_run
from elmojax.model.numerics import Numerics
from elmojax.model.weights import load_weights
from elmojax.options import load_options, options_from_dict
from elmojax.parallel import DataParallel, is_vocab_leaf, path_name
from elmojax.train.checkpoints import restore_params
from elmojax.train.loop import TrainConfig, train
from elmojax.train.state import init_state
from elmojax.train.step import StepConfig, jit_eval_step, jit_train_step
from tests.helpers import TRAIN_KEYS, tiny_options_dict, write_corpus

N_DEVICES = 8


def corpus(tmp: Path, rare: int) -> tuple[str, str]:
    """The tests' corpus with ``rare`` unused words appended to its vocabulary (a softmax whose
    rows steps mostly leave alone, and large against a step's rows)."""
    train_glob, vocab = write_corpus(tmp / "train")
    extended = tmp / f"vocab-{rare}.txt"
    extended.write_text(Path(vocab).read_text() + "".join(f"rare{i}\n" for i in range(rare)))
    return train_glob, str(extended)


def options_for(vocab: Vocabulary, word_level: bool, rows_per_device: int):
    d = tiny_options_dict(**{**TRAIN_KEYS, "batch_size": rows_per_device, "dropout": 0.0})
    if word_level:
        del d["char_cnn"]
    return options_from_dict(d).replace(n_tokens_vocab=len(vocab))


def valid_rows(tree, n_vocab: int):
    """The leaves of a state tree as numpy, vocabulary-sized ones without their padding rows."""

    def trim(path, x):
        x = np.asarray(x)
        if is_vocab_leaf(path_name(path)):
            return x[: n_vocab + (1 if "token_embedder" in path_name(path) else 0)]
        return x

    return jax.tree_util.tree_leaves(jax.tree_util.tree_map_with_path(trim, tree))


#: a step's 48 rows a direction: the full softmax scans several tiles of the vocabulary
TILED = Numerics(tile_logits=48 * 128)


def run(options, vocab, train_glob, shards: int, n_steps: int, sparse: bool = True):
    """``n_steps`` train steps on all devices with the softmax split ``shards`` ways."""
    par = DataParallel(options.training.batch_size, jax.devices(), softmax_shards=shards)
    config = StepConfig(options, len(vocab), mesh=par.mesh, sparse=sparse, numerics=TILED)
    batcher = Batcher(50, vocab) if options.char_cnn else None
    stream = BidirectionalStream(train_glob, vocab, par.local_rows, 6, batcher, seed=0)
    state = par.put_state(init_state(config, par.global_rows, jax.random.PRNGKey(3)))
    assert state.params["softmax"]["W"].shape[0] % shards == 0
    losses = []
    for step in range(n_steps):
        negatives = sample_negatives(0, step, len(vocab), options.training.n_negative_samples_batch)
        state, metrics = jit_train_step(state, par.batch(next(stream), options, negatives), config)
        losses.append(float(metrics["loss"]))
    return state, np.array(losses), config


def eval_full_softmax(options, vocab, train_glob, shards: int) -> np.ndarray:
    """Full-softmax loss sums of one batch from a fresh state, the softmax split ``shards`` ways."""
    par = DataParallel(options.training.batch_size, jax.devices(), softmax_shards=shards)
    config = StepConfig(options, len(vocab), mesh=par.mesh, numerics=TILED)
    batcher = Batcher(50, vocab) if options.char_cnn else None
    windows = next(BidirectionalStream(train_glob, vocab, par.local_rows, 6, batcher, seed=1))
    state = par.put_state(init_state(config, par.global_rows, jax.random.PRNGKey(0)))
    sums, counts, _ = jit_eval_step(state.params, state.lstm, par.batch(windows, options), config)
    assert int(counts.min()) > 0
    return np.asarray(sums)


def check_equality(tmp: Path) -> None:
    """8 shards and 2 x 4 equal the replicated softmax to 1e-6 over 3 steps, for the character and
    the word-level model, sparse (the default) and dense updates; and so does the full softmax of
    evaluation, scanned in tiles of 128 rows."""
    train_glob, vocab_file = corpus(tmp, rare=1000)
    vocab = Vocabulary.from_file(vocab_file)
    for word_level in (False, True):
        name = "word" if word_level else "char"
        options = options_for(vocab, word_level, rows_per_device=1)
        for sparse in (True, False) if not word_level else (True,):
            reference, ref_losses, _ = run(options, vocab, train_glob, 1, 3, sparse)
            for shards in (8, 4) if sparse else (8,):
                state, losses, _ = run(options, vocab, train_glob, shards, 3, sparse)
                np.testing.assert_allclose(losses, ref_losses, rtol=1e-6)
                pairs = zip(valid_rows(state, len(vocab)), valid_rows(reference, len(vocab)), strict=True)
                worst = max(float(np.abs(a - b).max()) for a, b in pairs)
                assert worst <= 1e-6, (word_level, sparse, shards, worst)
                print(f"{name} sparse={sparse} shards={shards}: max diff {worst:.1e}")
        sums = {shards: eval_full_softmax(options, vocab, train_glob, shards) for shards in (1, 8, 4)}
        for shards in (8, 4):
            np.testing.assert_allclose(sums[shards], sums[1], rtol=1e-6)
        print(f"{name} full softmax in tiles, split 8 and 4 ways: {sums[1]}")
    print("equality ok")


def largest_collective_dim(hlo: str) -> tuple[int, tuple]:
    """The largest dimension of any array a collective in ``hlo`` produces, and that array."""
    arrays = collective_arrays(hlo)
    assert arrays, "no collective found: the check would be vacuous"
    kind, shape, _ = max(arrays, key=lambda a: max(a[1], default=0))
    return max(shape, default=0), (kind, shape)


def check_collectives(tmp: Path) -> None:
    """With a 40,000-word softmax over 8 shards (5,000 rows each), no collective of the compiled
    train or eval step has a dimension near a shard's rows: only the step's rows move."""
    train_glob, vocab_file = corpus(tmp, rare=40000)
    vocab = Vocabulary.from_file(vocab_file)
    for word_level in (False, True):
        options = options_for(vocab, word_level, rows_per_device=1)
        par = DataParallel(1, jax.devices(), softmax_shards=N_DEVICES)
        config = StepConfig(options, len(vocab), mesh=par.mesh)
        batcher = Batcher(50, vocab) if options.char_cnn else None
        windows = next(BidirectionalStream(train_glob, vocab, par.local_rows, 6, batcher, seed=0))
        negatives = sample_negatives(0, 0, len(vocab), options.training.n_negative_samples_batch)
        state = par.put_state(init_state(config, par.global_rows, jax.random.PRNGKey(0)))
        shard_rows = config.vocab_rows // N_DEVICES
        w = state.params["softmax"]["W"]
        assert w.sharding.shard_shape(w.shape)[0] == shard_rows  # each device holds 1/8 of the softmax
        train_hlo = (
            jit_train_step.lower(state, par.batch(windows, options, negatives), config).compile().as_text()
        )
        eval_hlo = jit_eval_step.lower(state.params, state.lstm, par.batch(windows, options), config)
        eval_hlo = eval_hlo.compile().as_text()
        for name, hlo in (("train", train_hlo), ("eval", eval_hlo)):
            worst, array = largest_collective_dim(hlo)
            assert worst < shard_rows // 4, f"{name} step moves a vocabulary-sized array: {array}"
            print(f"{'word' if word_level else 'char'} {name}: largest collective dimension {worst}")
    print("collectives ok")


def check_resume(tmp: Path) -> None:
    """8 devices x 2 rows -> 4 x 4 -> 1 x 16 (the softmax split 8, 4 and 1 ways) ends within 1e-5
    of the uninterrupted run; a checkpoint of another global batch is refused with the batch size
    that would fit."""
    train_glob, vocab_file = corpus(tmp, rare=100)
    devices = jax.devices()
    base = options_from_dict(tiny_options_dict(**{**TRAIN_KEYS, "dropout": 0.0}))

    def leg(save_dir: Path, n_devices: int, steps: int):
        options = base.replace_training(batch_size=16 // n_devices)
        config = TrainConfig(
            str(save_dir), train_glob, vocab_file, max_steps=steps, checkpoint_every=2, progress=False
        )
        return train(options, config, devices=devices[:n_devices])

    leg(tmp / "straight", 8, 6)
    for n_devices, steps in ((8, 2), (4, 4), (1, 6)):
        leg(tmp / "resumed", n_devices, steps)
    n_vocab = len(Vocabulary.from_file(vocab_file))
    (a, step_a), (b, step_b) = restore_params(tmp / "straight"), restore_params(tmp / "resumed")
    assert step_a == step_b == 6
    worst = max(
        float(np.abs(x - y).max())
        for x, y in zip(valid_rows(a, n_vocab), valid_rows(b, n_vocab), strict=True)
    )
    print(f"resumed 8x2 -> 4x4 -> 1x16: max diff {worst:.1e}")
    assert worst <= 1e-5, worst
    # the export of a run trained with the softmax split 8 ways holds exactly its biLM's parameters
    out = export_run(tmp / "straight", tmp / "export" / "weights.hdf5")
    exported = load_weights(out, load_options(out.parent / "options.json"))["params"]
    restored = jax.tree_util.tree_leaves(a["bilm"])
    assert all(
        np.asarray(x).tobytes() == np.asarray(y).tobytes()
        for x, y in zip(jax.tree_util.tree_leaves(exported), restored, strict=True)
    )
    try:  # 4 devices x 2 rows = 8 rows against a checkpoint of 16
        train(base.replace_training(batch_size=2), TrainConfig(str(tmp / "resumed"), train_glob, vocab_file,
              max_steps=8, progress=False), devices=devices[:4])  # fmt: skip
    except ElmoError as e:
        assert "global batch of 16 rows, this run has 8" in str(
            e
        ) and "resume with `batch_size` 4 (per device)" in str(e), e
        print("refused:", e)
    else:
        raise AssertionError("a checkpoint of another global batch was accepted")
    print("resume ok")


if __name__ == "__main__":
    assert jax.device_count() == N_DEVICES, jax.devices()
    {"equality": check_equality, "collectives": check_collectives, "resume": check_resume}[sys.argv[1]](
        Path(sys.argv[2])
    )
