import numpy as np

from elmojax.batching import bucket_table, distinct_tokens, sentence_arrays
from elmojax.vocab import Batcher, TokenBatcher, Vocabulary


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
