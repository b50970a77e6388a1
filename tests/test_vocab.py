import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from elmojax.batching import distinct_tokens
from elmojax.errors import VocabularyError
from elmojax.vocab import Batcher, TokenBatcher, Vocabulary, batch_to_ids, token_char_ids

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


def test_vocabulary_file(tmp_path):
    p = tmp_path / "vocab.txt"
    p.write_text("<S>\n</S>\n<UNK>\nthe\ncat\n")
    v = Vocabulary.from_file(p).require_specials()
    assert (v.bos, v.eos, v.unk, len(v)) == (0, 1, 2, 5)
    np.testing.assert_array_equal(v.encode(["the", "dog"]), [0, 3, 2, 1])
    np.testing.assert_array_equal(v.encode(["the", "cat"], reverse=True), [1, 4, 3, 0])
    tb = TokenBatcher(v).batch_sentences([["cat"], ["the", "zzz"]])
    np.testing.assert_array_equal(tb, [[1, 5, 2, 0], [1, 4, 3, 2]])


@pytest.mark.parametrize(
    "text, problem",
    [
        ("<S>\n</S>\n<UNK>\nthe\nthe\n", "line 5: duplicate token 'the' \\(first on line 4\\)"),
        ("<S>\n</S>\n\n<UNK>\n", "line 3: blank line"),
        ("", "empty"),
    ],
)
def test_bad_vocabulary_files(tmp_path, text, problem):
    p = tmp_path / "v.txt"
    p.write_text(text)
    with pytest.raises(VocabularyError, match=problem) as e:
        Vocabulary.from_file(p)
    assert str(p) in str(e.value)


def test_training_vocabulary_needs_specials(tmp_path):
    p = tmp_path / "v.txt"
    p.write_text("<S>\nthe\n")
    with pytest.raises(VocabularyError, match=r"missing special token\(s\) </S>, <UNK>"):
        Vocabulary.from_file(p).require_specials()


@settings(max_examples=200, deadline=None)
@given(st.lists(st.lists(st.text(min_size=0, max_size=70), max_size=12), min_size=1, max_size=6))
def test_any_unicode_batches(sentences):
    ids = Batcher().batch_sentences(sentences)
    lengths = (ids > 0).any(axis=2).sum(axis=1)
    np.testing.assert_array_equal(lengths, [len(s) + 2 for s in sentences])
    assert ids.max() <= 261 and ids.shape[2] == 50
    table, index = distinct_tokens(ids, char=True)
    np.testing.assert_array_equal(table[index], ids)
