"""The character encoding: bilm-tf's ids by hand, and every fast path against the reference it equals.

The fast paths (:func:`char_rows`, :func:`distinct_char_rows` over token ids,
:func:`distinct_sentence_chars` over strings) are checked bit for bit against
:func:`token_char_ids` and :func:`distinct_tokens`, across shard and epoch boundaries, with unknown
and truncated tokens.
"""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from elmojax.data.batches import device_tables
from elmojax.data.chars import (
    Batcher,
    batch_to_ids,
    char_rows,
    distinct_char_rows,
    distinct_sentence_chars,
    distinct_tokens,
    token_char_ids,
    vocab_chars,
)
from elmojax.data.ids import OovTable
from elmojax.data.streams import BidirectionalStream, SentenceStream
from elmojax.data.vocab import Vocabulary

# shifted ids: byte b -> b + 1; BOS 257, EOS 258, BOW 259, EOW 260, PAD 261
BOW, EOW, PAD = 259, 260, 261


def expected(*ids):
    row = np.full(50, PAD, np.int32)
    row[: len(ids)] = ids
    return row


def test_ascii_token():
    np.testing.assert_array_equal(token_char_ids("ab"), expected(BOW, 98, 99, EOW))


def test_multibyte_utf8_token():
    # "é" is C3 A9, "€" is E2 82 AC in UTF-8
    np.testing.assert_array_equal(
        token_char_ids("é€"), expected(BOW, 0xC3 + 1, 0xA9 + 1, 0xE2 + 1, 0x82 + 1, 0xAC + 1, EOW)
    )


def test_long_token_truncated_to_48_bytes():
    ids = token_char_ids("x" * 60)
    assert ids[0] == BOW and ids[49] == EOW
    assert list(ids[1:49]) == [ord("x") + 1] * 48


def test_special_tokens():
    np.testing.assert_array_equal(token_char_ids("<S>"), expected(BOW, 257, EOW))
    np.testing.assert_array_equal(token_char_ids("</S>"), expected(BOW, 258, EOW))
    np.testing.assert_array_equal(
        token_char_ids("<UNK>"), expected(BOW, *(np.frombuffer(b"<UNK>", np.uint8) + 1), EOW)
    )


def test_batch_layout_and_padding():
    ids = batch_to_ids([["a", "b", "c"], ["d"]])
    assert ids.shape == (2, 5, 50) and ids.dtype == np.int32
    np.testing.assert_array_equal(ids[1, 0], token_char_ids("<S>"))
    np.testing.assert_array_equal(ids[1, 1], expected(BOW, ord("d") + 1, EOW))
    np.testing.assert_array_equal(ids[1, 2], token_char_ids("</S>"))
    assert not ids[1, 3:].any()
    np.testing.assert_array_equal(ids[0, 4], token_char_ids("</S>"))


@settings(max_examples=200, deadline=None)
@given(st.lists(st.lists(st.text(min_size=0, max_size=70), max_size=12), min_size=1, max_size=6))
def test_any_unicode_batches(sentences):
    ids = Batcher().batch_sentences(sentences)
    lengths = (ids > 0).any(axis=2).sum(axis=1)
    np.testing.assert_array_equal(lengths, [len(s) + 2 for s in sentences])
    assert ids.max() <= 261 and ids.shape[2] == 50
    table, index = distinct_tokens(ids, char=True)
    np.testing.assert_array_equal(table[index], ids)


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
def oov_corpus(tmp_path):
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
def test_windows_and_tables_equal_the_string_construction(oov_corpus, reverse):
    pattern, vocab = oov_corpus
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
        tables = device_tables(windows, devices, b // devices)
        for d, (table, index) in enumerate(zip(tables.tables, tables.index, strict=True)):
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
    got, (index,) = distinct_char_rows([(ids, table)])
    ref, ref_index = distinct_tokens(table.rows(ids).astype(np.int32), char=True)
    np.testing.assert_array_equal(got, ref)
    np.testing.assert_array_equal(index, ref_index)
    assert len(got) == 6 and not got[0].any()  # zero row, a, b, zz, <S>, </S>


@settings(max_examples=100, deadline=None)
@given(st.lists(st.lists(st.text(min_size=1, max_size=70), max_size=12), min_size=1, max_size=6))
def test_distinct_sentence_chars_equals_distinct_tokens_of_the_batch(sentences):
    """The Embedder's table from token strings is distinct_tokens' of the dense batch."""
    table, index = distinct_sentence_chars(sentences, 50)
    ref_table, ref_index = distinct_tokens(Batcher().batch_sentences(sentences), char=True)
    np.testing.assert_array_equal(table, ref_table)
    np.testing.assert_array_equal(index, ref_index)
    assert table.dtype == index.dtype == np.int32
