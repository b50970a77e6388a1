"""Vocabulary files: ids by line, sentence markers, word-level batches, one-line errors."""

import numpy as np
import pytest

from elmojax.data.vocab import TokenBatcher, Vocabulary
from elmojax.errors import VocabularyError


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
