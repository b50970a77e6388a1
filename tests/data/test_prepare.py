"""`elmojax prepare`: tokenizer, shards, vocabulary order, determinism, CSV/TSV/TFDS inputs, bad input."""

import csv
import json
from collections import Counter
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from elmojax.cli import main
from elmojax.data.prepare import prepare_corpus
from elmojax.data.streams import count_tokens
from elmojax.data.tokenize import sentences_from_text, split_sentences
from elmojax.data.vocab import Vocabulary
from elmojax.errors import ElmoError, InputTextError


def read_dir(directory: Path) -> list[list[str]]:
    sentences = []
    for shard in sorted(directory.glob("shard_*.txt")):
        sentences += [line.split() for line in shard.read_text(encoding="utf-8").splitlines()]
    return sentences


def all_sentences(out: Path) -> list[list[str]]:
    return read_dir(out / "train") + read_dir(out / "heldout")


def snapshot(out: Path) -> dict[str, bytes]:
    return {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}


@pytest.mark.parametrize(
    "text, expected",
    [
        (
            "Mr. Speaker, we met. It rained!",
            [["Mr.", "Speaker", ",", "we", "met", "."], ["It", "rained", "!"]],
        ),
        (
            'He said "Stop." Then he left...',
            [["He", "said", '"', "Stop", ".", '"'], ["Then", "he", "left", "..."]],
        ),
        (
            "The U.S. grew 3.5% in 1,000 days, e.g. in Jan. under Harry S. Truman; it isn't over?!",
            [
                ["The", "U.S.", "grew", "3.5", "%", "in", "1,000", "days", ",", "e.g.", "in", "Jan.", "under"]
                + ["Harry", "S.", "Truman", ";", "it", "isn't", "over", "?!"]
            ],
        ),
        ("carry on.Our leader", [["carry", "on", ".", "Our", "leader"]]),
        ("naïve café — e-mail", [["naïve", "café", "—", "e-mail"]]),
        ("नमस्ते दुनिया", [["नमस्ते", "दुनिया"]]),
        ("  \t ", []),
    ],
)
def test_tokenizer_and_sentence_splitter(text, expected):
    assert split_sentences(text) == expected


def test_tokenized_mode_keeps_whitespace_tokens_and_lowercase():
    assert sentences_from_text("Mr. X.Y  z\x00w", tokenized=True) == [["Mr.", "X.Y", "z", "w"]]
    assert sentences_from_text("Hello World.", lowercase=True) == [["hello", "world", "."]]


def write_text_corpus(path: Path, n: int = 120) -> list[str]:
    # Paragraph i has two sentences; counts are designed so that the vocabulary order is known.
    lines = [f"alpha beta w{i % 7}. gamma alpha!" for i in range(n)]
    lines[5] = ""  # skipped and counted
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return lines


def test_text_corpus_counts_order_and_determinism(tmp_path):
    src = tmp_path / "corpus.txt"
    write_text_corpus(src)
    stats = prepare_corpus([src], tmp_path / "a", heldout_fraction=0.1, sentences_per_shard=50, seed=3)
    out = tmp_path / "a"
    assert stats["n_train_sentences"] + stats["n_heldout_sentences"] == 2 * 119
    assert stats["n_heldout_sentences"] == round(2 * 119 * 0.1) == 24
    assert stats["skipped_empty_lines"] == 1 and stats["n_input_lines"] == 120
    assert stats["n_train_shards"] == 5 and len(list((out / "train").glob("shard_*.txt"))) == 5  # 214 / 50
    assert [len(read_dir(out / "train"))] == [stats["n_train_sentences"]]
    assert stats["n_train_tokens"] == count_tokens(str(out / "train" / "shard_*.txt"))
    assert stats["n_heldout_tokens"] == count_tokens(str(out / "heldout" / "shard_*.txt"))

    # Every sentence survives exactly once.
    expected = Counter()
    for i in range(120):
        if i != 5:
            expected[("alpha", "beta", f"w{i % 7}", ".")] += 1
            expected[("gamma", "alpha", "!")] += 1
    assert Counter(tuple(s) for s in all_sentences(out)) == expected

    # Vocabulary: specials, then training tokens by descending count, ties by token.
    train_counts = Counter(t for s in read_dir(out / "train") for t in s)
    vocab = (out / "vocab.txt").read_text(encoding="utf-8").splitlines()
    assert vocab[:3] == ["<S>", "</S>", "<UNK>"]
    assert vocab[3:] == sorted(train_counts, key=lambda t: (-train_counts[t], t))
    assert vocab[3] == "alpha" and len(vocab) == stats["vocab_size"] == 3 + 5 + 7
    Vocabulary.from_file(out / "vocab.txt").require_specials()
    assert json.loads((out / "stats.json").read_text()) == stats

    # Same seed: identical bytes. Other seed: same sentences, another order.
    prepare_corpus([src], tmp_path / "b", heldout_fraction=0.1, sentences_per_shard=50, seed=3)
    assert snapshot(out) == snapshot(tmp_path / "b")
    prepare_corpus([src], tmp_path / "c", heldout_fraction=0.1, sentences_per_shard=50, seed=4)
    assert read_dir(tmp_path / "c" / "train") != read_dir(out / "train")
    assert Counter(map(tuple, all_sentences(tmp_path / "c"))) == expected


def test_min_count_and_lowercase(tmp_path):
    src = tmp_path / "c.txt"
    src.write_text("The cat. the dog. THE rare\n" * 3 + "unique words here\n", encoding="utf-8")
    prepare_corpus([src], tmp_path / "o", heldout_fraction=0.0, min_count=2, lowercase=True)
    vocab = (tmp_path / "o" / "vocab.txt").read_text().splitlines()
    assert vocab == ["<S>", "</S>", "<UNK>", "the", ".", "cat", "dog", "rare"]


def write_csv(path: Path, rows, delimiter=","):
    with open(path, "w", encoding="utf-8", newline="") as f:
        w = csv.writer(f, delimiter=delimiter)
        w.writerow(["speaker", "transcript"])
        w.writerows(rows)


@pytest.mark.parametrize("delimiter, suffix", [(",", ".csv"), ("\t", ".tsv")])
def test_csv_and_tsv_columns(tmp_path, delimiter, suffix):
    src = tmp_path / f"calls{suffix}"
    rows = [
        ["A", "uh, we had a claim. it was denied"],
        ["B", 'so "the adjuster" said\nwait, two lines'],  # quoted newline: one row
        ["A", ""],  # empty cell: skipped
        ["B", "okay, thanks"],
    ]
    write_csv(src, rows, delimiter)
    stats = prepare_corpus([src], tmp_path / "o", column="transcript", heldout_fraction=0.0)
    got = Counter(map(tuple, all_sentences(tmp_path / "o")))
    assert got == Counter(
        [
            ("uh", ",", "we", "had", "a", "claim", "."),
            ("it", "was", "denied"),
            ("so", '"', "the", "adjuster", '"', "said", "wait", ",", "two", "lines"),
            ("okay", ",", "thanks"),
        ]
    )
    assert stats["n_input_lines"] == 4 and stats["skipped_empty_lines"] == 1


def test_bundled_corpus_slice_prepares(tmp_path):
    from tests.helpers import ROOT

    lines = (ROOT / "experiments" / "data" / "sample_corpus.csv").read_text(encoding="utf-8").splitlines()
    src = tmp_path / "slice.csv"
    src.write_text("\n".join(lines[:200]) + "\n", encoding="utf-8")
    stats = prepare_corpus([src], tmp_path / "o", column="transcript", heldout_fraction=0.05)
    assert stats["n_input_lines"] == 199 and stats["n_train_sentences"] > 199
    assert stats["n_heldout_sentences"] > 0 and stats["vocab_size"] > 1000


@pytest.mark.parametrize(
    "content, column, message",
    [
        ("speaker,text\nA,hello\n", "transcript", "no column 'transcript'; columns found: 'speaker', 'text'"),
        ("speaker,transcript\n", "transcript", "has a header but no rows"),
        ("speaker,transcript\nA,hi\nB,hi,extra\n", "transcript", "line 3: 3 fields where the header has 2"),
        ("speaker,transcript\nA,hi\n", None, "set `column` to the name of the text column"),
        ("", "transcript", "input file is empty"),
    ],
    ids=["missing-column", "header-only", "ragged", "no-column-flag", "empty"],
)
def test_csv_errors_name_file_and_problem(tmp_path, content, column, message):
    src = tmp_path / "calls.csv"
    src.write_text(content, encoding="utf-8")
    with pytest.raises(InputTextError) as e:
        prepare_corpus([src], tmp_path / "o", column=column)
    assert str(src) in str(e.value) and message in str(e.value)


def test_bad_text_inputs(tmp_path):
    with pytest.raises(InputTextError, match="nope.txt: input file not found"):
        prepare_corpus([tmp_path / "nope.txt"], tmp_path / "o")
    with pytest.raises(InputTextError, match="is a directory"):
        prepare_corpus([tmp_path], tmp_path / "o")
    blank = tmp_path / "blank.txt"
    blank.write_text("\n  \n\t\n", encoding="utf-8")
    with pytest.raises(InputTextError, match="no text found"):
        prepare_corpus([blank], tmp_path / "o")
    bad = tmp_path / "latin1.txt"
    bad.write_bytes(b"first line\n" + "caf\xe9 au lait\n".encode("latin-1"))
    with pytest.raises(InputTextError) as e:
        prepare_corpus([bad], tmp_path / "o")
    assert "latin1.txt: line 2: invalid UTF-8 at byte 3 of the line (byte 14 of the file)" in str(e.value)
    assert "set `errors` to replace" in str(e.value)
    stats = prepare_corpus([bad], tmp_path / "o", errors="replace", heldout_fraction=0)
    assert stats["lines_with_replaced_bytes"] == 1
    assert ["caf", "\ufffd", "au", "lait"] in read_dir(tmp_path / "o" / "train")
    with pytest.raises(ElmoError, match="`heldout_fraction` 1.0"):
        prepare_corpus([bad], tmp_path / "o", heldout_fraction=1.0)


def test_bom_crlf_nul_long_tokens_and_a_10mb_line(tmp_path):
    src = tmp_path / "odd.txt"
    long_token = "x" * 400
    big_line = ("word " * 2_000_000).encode()  # 10 MB, one paragraph without sentence ends
    src.write_bytes(
        b"\xef\xbb\xbfHello there\r\nnul\x00byte " + long_token.encode() + b"\r\n" + big_line + b"\n"
    )
    stats = prepare_corpus([src], tmp_path / "o", heldout_fraction=0, progress=False)
    sentences = read_dir(tmp_path / "o" / "train")
    assert ["Hello", "there"] in sentences and ["nul", "byte", long_token] in sentences
    assert stats["n_train_tokens"] == 2 + 3 + 2_000_000
    vocab = (tmp_path / "o" / "vocab.txt").read_text(encoding="utf-8").splitlines()
    assert vocab[3] == "word" and "\ufeffHello" not in vocab


def test_failed_prepare_keeps_the_earlier_output(tmp_path):
    src = tmp_path / "ok.txt"
    write_text_corpus(src, 30)
    out = tmp_path / "o"
    prepare_corpus([src], out, seed=1)
    before = snapshot(out)
    bad = tmp_path / "bad.csv"
    bad.write_text("a,b\n1,2\n", encoding="utf-8")
    with pytest.raises(InputTextError):
        prepare_corpus([src, bad], out, column="transcript")
    assert snapshot(out) == before
    assert not list(out.glob(".prepare-tmp-*"))
    prepare_corpus([src], out, seed=2)  # a re-run replaces everything
    assert snapshot(out) != before and read_dir(out / "train")


def test_cli_prepare_prints_stats_and_one_line_errors(tmp_path, capsys):
    src = tmp_path / "calls.csv"
    write_csv(src, [["A", "hello there. general kenobi"]] * 10)
    assert (
        main(["prepare", str(src), "--column", "transcript", "--out", str(tmp_path / "o"), "--no-progress"])
        == 0
    )
    stats = json.loads(capsys.readouterr().out)
    assert stats["n_train_sentences"] + stats["n_heldout_sentences"] == 20
    assert main(["prepare", str(src), "--column", "text", "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("elmojax prepare: error:") and "no column 'text'" in err and "\n" not in err


def test_tfds_source_with_tfds_mocking(tmp_path):
    tfds = pytest.importorskip("tensorflow_datasets")
    examples = [{"text": b"First doc. Two sentences!", "label": 0}, {"text": "second doc", "label": 1}]

    def fake_source(self, *args, **kwargs):
        return examples

    with tfds.testing.mock_data(as_data_source_fn=fake_source):
        stats = prepare_corpus([], tmp_path / "o", tfds="lm1b:train", text_key="text", heldout_fraction=0)
        assert Counter(map(tuple, read_dir(tmp_path / "o" / "train"))) == Counter(
            [("First", "doc", "."), ("Two", "sentences", "!"), ("second", "doc")]
        )
        assert stats["n_input_lines"] == 2
        with pytest.raises(ElmoError, match="no feature 'body'; features found: label, text"):
            prepare_corpus([], tmp_path / "o", tfds="lm1b", text_key="body")


def test_tfds_dataset_not_on_disk_is_a_clear_error(tmp_path):
    pytest.importorskip("tensorflow_datasets")
    with pytest.raises(ElmoError) as e:
        prepare_corpus([], tmp_path / "o", tfds="lm1b:train", text_key="text", tfds_data_dir=str(tmp_path))
    assert "`tfds` lm1b:train: cannot read this dataset from disk" in str(e.value)
    assert "never downloads" in str(e.value)


_line = st.text(
    alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\n\ufeff"), max_size=60
)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(lines=st.lists(_line, min_size=1, max_size=12), tokenized=st.booleans(), lowercase=st.booleans())
def test_fuzz_prepare_round_trips_sentences_and_tokens(tmp_path_factory, lines, tokenized, lowercase):
    tmp = tmp_path_factory.mktemp("fuzz")
    src = tmp / "in.txt"
    src.write_bytes("\n".join(lines).encode("utf-8"))
    expected = [
        s for line in lines for s in sentences_from_text(line, tokenized=tokenized, lowercase=lowercase)
    ]
    if not expected:
        with pytest.raises(InputTextError, match="no text found|input file is empty"):
            prepare_corpus([src], tmp / "o", tokenized=tokenized, lowercase=lowercase)
        return
    stats = prepare_corpus([src], tmp / "o", tokenized=tokenized, lowercase=lowercase, heldout_fraction=0.3)
    assert Counter(map(tuple, all_sentences(tmp / "o"))) == Counter(map(tuple, expected))
    assert stats["n_train_tokens"] + stats["n_heldout_tokens"] == sum(map(len, expected))
    assert stats["n_train_sentences"] + stats["n_heldout_sentences"] == len(expected)


def test_prepare_flips_the_whole_output_in_one_rename(tmp_path, monkeypatch):
    import os

    import elmojax.data.prepare as prep

    first, second = tmp_path / "a.txt", tmp_path / "b.txt"
    first.write_text("one two.\nthree four.\n", encoding="utf-8")
    second.write_text("five six seven.\n", encoding="utf-8")
    out = tmp_path / "data"
    prepare_corpus([first], out, heldout_fraction=0.5)
    before = snapshot(out)
    assert set(before) >= {"vocab.txt", "stats.json", "tokenizer.json", "train/shard_00000.txt"}

    def stop(*args):
        raise KeyboardInterrupt

    with monkeypatch.context() as m:  # stopped at the flip: nothing new is visible, nothing is left
        m.setattr(prep, "flip", stop)
        with pytest.raises(KeyboardInterrupt):
            prepare_corpus([second], out, heldout_fraction=0)
    assert snapshot(out) == before
    renames = []
    real_rename = os.rename
    monkeypatch.setattr(os, "rename", lambda a, b: (renames.append(b), real_rename(a, b))[1])
    prepare_corpus([second], out, heldout_fraction=0)
    assert read_dir(out / "train") == [["five", "six", "seven", "."]]
    assert renames == [] and prep.exchange(first, second) and prep.exchange(first, second)  # one swap
    assert not list(tmp_path.glob(".data.prepare-*"))
    monkeypatch.setattr(prep, "exchange", lambda a, b: False)  # no renameat2: two renames
    prepare_corpus([first], out, heldout_fraction=0.5)
    assert snapshot(out) == before and renames == [tmp_path / f".data.prepare-old-{os.getpid()}", out]
    (out / "notes.txt").write_text("mine", encoding="utf-8")  # a folder with other files: kept
    prepare_corpus([second], out, heldout_fraction=0)
    assert (out / "notes.txt").read_text(encoding="utf-8") == "mine"
    assert read_dir(out / "train") == [["five", "six", "seven", "."]]


def test_shuffle_buckets_are_even_seeded_and_by_position():
    from elmojax.data.dealing import N_BUCKETS, bucket_of, deal_chunk, seed_key

    def picks(seed: int, n_texts: int, per_text: int) -> list[int]:
        key = seed_key(seed)
        return [bucket_of(key, i, j) for i in range(n_texts) for j in range(per_text)]

    p0 = picks(0, 2000, 16)  # 32000 sentences; 16 a text: the hash of a text's 11th sentence too
    per_bucket = Counter(p0)  # 500 each expected, sd about 22
    assert sorted(per_bucket) == list(range(N_BUCKETS))
    assert min(per_bucket.values()) > 400 and max(per_bucket.values()) < 600
    assert p0 == picks(0, 2000, 16)
    assert sum(a != b for a, b in zip(p0, picks(1, 2000, 16), strict=True)) > 0.95 * len(p0)  # another seed
    # a text's sentences go apart
    assert sum(a != b for a, b in zip(p0[::16], p0[1::16], strict=True)) > 0.95 * 2000
    # the key is the position, not the sentence: copies of one line are spread over the shuffle
    assert len(set(picks(7, 1000, 1))) == N_BUCKETS

    # deal_chunk puts sentence j of text i (counted from `start`) in bucket_of(key, i, j)
    texts = [" ".join(f"s{i}x{j} ." for j in range(12)) for i in range(30)] + [""]
    counter: Counter = Counter()
    parts, n_lines, n_empty = deal_chunk(100, texts, "elmojax", False, seed_key(5), counter)
    assert (n_lines, n_empty, counter["."]) == (30 * 12, 1, 30 * 12)
    where = {line: b for b, part in enumerate(parts) for line in part.decode().split("\n")[:-1]}
    assert len(where) == 360
    assert all(
        where[f"s{i}x{j} ."] == bucket_of(seed_key(5), 100 + i, j) for i in range(30) for j in range(12)
    )
