"""Step batches: distinct-token tables, bucketed shapes, one table shape per run on accelerators."""

import jax
import numpy as np

from elmojax.data.batches import bucket_table, fixed_table_size, sentence_arrays
from elmojax.data.chars import Batcher, distinct_tokens
from elmojax.data.streams import BidirectionalStream
from elmojax.data.vocab import TokenBatcher, Vocabulary
from elmojax.parallel import DataParallel


def test_unique_batch_matches_dense_batch():
    sents = [["the", "cat", "the"], ["a"], []]
    b = Batcher()
    table, index = distinct_tokens(b.batch_sentences(sents), char=True)
    np.testing.assert_array_equal(table[index], b.batch_sentences(sents))
    assert len(table) == 1 + 5  # padding row, <S>, the, cat, </S>, a
    assert not table[0].any()


def test_padding_row_comes_first_even_without_padding():
    ids = np.array([[3, 4], [4, 5]], np.int32)  # shifted word ids, no padding
    table, index = distinct_tokens(ids, char=False)
    np.testing.assert_array_equal(table, [0, 3, 4, 5])
    np.testing.assert_array_equal(table[index], ids)


def test_sentence_arrays_pad_to_buckets():
    vocab = Vocabulary(["<S>", "</S>", "<UNK>", "the", "cat"])
    sents = [["the", "cat"], ["the"], ["dog"]]
    table, index = sentence_arrays(sents, TokenBatcher(vocab), None, row_multiple=2)
    assert index.shape == (4, 16) and len(table) == 16  # rows: 3 -> 4; time: 4 -> 16; tokens -> 16
    np.testing.assert_array_equal(table[index[:3, :4]], TokenBatcher(vocab).batch_sentences(sents))
    assert not table[index[3]].any() and not table[index[:, 4:]].any()


def test_training_table_buckets():
    assert [bucket_table(n) for n in (1, 64, 65, 512, 513, 600, 1024, 1025)] == [
        64, 64, 128, 512, 576, 640, 1024, 1152,
    ]  # fmt: skip


def test_one_table_shape_per_run_on_accelerators(corpus, train_options):
    """On GPU/TPU every training step gets the same table shape (one compile per run); the CPU
    keeps its buckets. The platform is mocked: the decision follows the mesh's devices."""
    assert fixed_table_size("cpu", 4, 6) is None
    assert fixed_table_size("gpu", 4, 6) == fixed_table_size("tpu", 4, 6) == 64  # 2 * 4 * 6 + 1 -> 64
    vocab = Vocabulary.from_file(corpus.vocab)
    for platform, expect_fixed in (("cpu", False), ("gpu", True)):
        par = DataParallel(4, jax.devices()[:1])
        par.platform = platform
        stream = BidirectionalStream(corpus.train, vocab, 4, 6, Batcher(50, vocab), seed=0)
        shapes = {par.batch(next(stream), train_options).table.shape for _ in range(6)}
        assert (shapes == {(64, 50)}) == expect_fixed, (platform, shapes)
