"""The int-id host pipeline against the string-based construction it replaced, bit for bit."""

import numpy as np
import pytest

from elmojax.batching import distinct_tokens, train_arrays
from elmojax.data import BidirectionalStream, SentenceStream
from elmojax.tokens import OovTable, char_rows, vocab_chars
from elmojax.vocab import Batcher, Vocabulary, token_char_ids


def reference_windows(sentences, vocab, batcher, b, u, n):
    """The window construction before int ids: token strings per row, characters per token."""
    rows = [None] * b
    out = []
    for _ in range(n):
        inputs, targets = [[] for _ in range(b)], [[] for _ in range(b)]
        for i in range(b):
            pos = 0
            while pos < u:
                cur = rows[i]
                if cur is None or len(cur) <= 1:
                    cur = rows[i] = next(sentences)
                k = min(len(cur) - 1, u - pos)
                inputs[i].extend(cur[:k])
                targets[i].extend(cur[1 : k + 1])
                rows[i] = cur[k:]
                pos += k
        out.append(
            (
                np.array([[vocab.word_to_id(t) for t in r] for r in inputs], np.int32),
                np.array([[batcher.char_ids(t) for t in r] for r in inputs], np.int32),
                np.array([[vocab.word_to_id(t) for t in r] for r in targets], np.int32),
            )
        )
    return out, rows


LONG = "x" * 60  # truncated to 48 bytes: shares its character row with LONG + "y" and LONG + "z"


@pytest.fixture()
def corpus(tmp_path):
    rng = np.random.default_rng(0)
    words = ["a", "bb", "ccc", "dé", "€uro", LONG, LONG + "y", LONG + "z", "<S>"]
    words += [f"w{i}" for i in range(30)]
    for k in range(3):
        lines = [" ".join(rng.choice(words, size=rng.integers(1, 9))) for _ in range(11)]
        (tmp_path / f"s{k}.txt").write_text("\n".join(lines) + "\n")
    # half the words are unknown, among them two long ones whose rows equal a known one
    known = ["<S>", "</S>", "<UNK>", "a", "ccc", "dé", LONG + "z", *(f"w{i}" for i in range(0, 30, 2))]
    vocab = Vocabulary(known)
    return str(tmp_path / "s*.txt"), vocab


def test_char_rows_equal_token_char_ids():
    tokens = ["a", "<S>", "</S>", "<UNK>", "dé€", LONG, "\udcff", "z" * 48, "z" * 49]
    rows = char_rows(tokens, 50)
    for t, r in zip(tokens, rows, strict=True):
        np.testing.assert_array_equal(r.astype(np.int32), token_char_ids(t, 50))


@pytest.mark.parametrize("reverse", [False, True])
def test_windows_and_tables_equal_the_string_construction(corpus, reverse):
    pattern, vocab = corpus
    b, u, n, devices = 6, 5, 40, 3  # 40 windows cross shard and epoch boundaries
    batcher = Batcher(50, vocab)
    direction = int(reverse)
    stream = BidirectionalStream(pattern, vocab, b, u, batcher, seed=3)
    got = [next(stream) for _ in range(n)]
    sentences = SentenceStream(pattern, seed=3 * 2 + direction, reverse=reverse)
    expected, tails = reference_windows(sentences, vocab, batcher, b, u, n)
    unknown = 0
    for (token_ids, chars, targets), windows in zip(expected, got, strict=True):
        w = windows[direction]
        np.testing.assert_array_equal(w.token_ids, token_ids)
        np.testing.assert_array_equal(w.targets, targets)
        np.testing.assert_array_equal(w.char_ids, chars)
        assert w.mask.all()
        unknown += int((w.inputs >= len(vocab)).sum())
        # the per-device tables and indices are the ones distinct_tokens gives on character rows
        per_device, _, _ = train_arrays(windows, devices, b // devices, 7)
        for d, (table, index) in enumerate(per_device):
            rows = slice(d * (b // devices), (d + 1) * (b // devices))
            ref_table, ref_index = distinct_tokens(np.stack([x.char_ids[rows] for x in windows]), char=True)
            np.testing.assert_array_equal(table, ref_table)
            np.testing.assert_array_equal(index, ref_index)
            assert table.dtype == index.dtype == np.int32
    assert unknown > 50  # the corpus does exercise unknown tokens
    # the checkpointed position holds the same row tails as the string construction
    assert stream.state_dict()["directions"][direction]["rows"] == tails


def test_distinct_tokens_keeps_padding_row_and_sorts_rows():
    vocab = Vocabulary(["<S>", "</S>", "b", "a"])
    table = OovTable(vocab, vocab_chars(vocab, 50))
    ids = table.encode(["a", "b", "zz", "a", "<S>"]).reshape(1, 5)
    ids = np.concatenate([ids, [[-1, -1, 0, 1, 2]]])
    from elmojax.tokens import distinct_char_rows

    got, (index,) = distinct_char_rows([(ids, table)])
    ref, ref_index = distinct_tokens(table.rows(ids).astype(np.int32), char=True)
    np.testing.assert_array_equal(got, ref)
    np.testing.assert_array_equal(index, ref_index)
    assert len(got) == 6 and not got[0].any()  # zero row, a, b, zz, <S>, </S>
