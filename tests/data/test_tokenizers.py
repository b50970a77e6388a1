"""Tokenizers of every script: the default's words and sentence ends, format characters, every
`--tokenizer` choice, F1 on Universal Dependencies slices (tests/fixtures/ud, CC BY-SA)."""

import importlib.util
import json
import multiprocessing
import os
import sys
from pathlib import Path

import pytest

from elmojax.cli import main
from elmojax.data.prepare import prepare_corpus
from elmojax.data.tokenize import split_sentences
from elmojax.data.tokenizers import get_tokenizer, sentence_texts, tokenize_text
from elmojax.errors import ElmoError

ROOT = Path(__file__).resolve().parents[2]
UD = ROOT / "tests/fixtures/ud"


def _f1_bench():
    spec = importlib.util.spec_from_file_location("tokenizer_f1", ROOT / "experiments/bench/tokenizer_f1.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize(
    "text, expected",
    [
        ("我用iPhone 15拍照。", [["我", "用", "iPhone", "15", "拍照", "。"]]),  # Han, Latin, digits
        ("今天很好！你呢？", [["今天", "很好", "！"], ["你", "呢", "？"]]),
        (
            "日本語の文章を分割します。はい。",
            [["日本語", "の", "文章", "を", "分割", "し", "ます", "。"], ["はい", "。"]],
        ),
        ("한국어 문장입니다. 네", [["한국어", "문장입니다", "."], ["네"]]),  # Hangul: spaces, as written
        ("ภาษาไทยเป็นภาษาที่", [["ภาษา", "ไทย", "เป็น", "ภาษา", "ที่"]]),
        ("ພາສາລາວ ແມ່ນ", [["ພາສາ", "ລາວ", "ແມ່ນ"]]),
        ("ភាសាខ្មែរគឺជាភាសា", [["ភាសាខ្មែរ", "គឺជា", "ភាសា"]]),
        ("မြန်မာဘာသာစကား။ ဟုတ်", [["မြန်မာဘာသာ", "စကား", "။"], ["ဟုတ်"]]),
        ("नमस्ते दुनिया। कैसे हो?", [["नमस्ते", "दुनिया", "।"], ["कैसे", "हो", "?"]]),
        ("مرحبا بالعالم؟ نعم", [["مرحبا", "بالعالم", "؟"], ["نعم"]]),
        ("አማርኛ ነው። አዎ", [["አማርኛ", "ነው", "።"], ["አዎ"]]),
        ("Привет, мир! Как дела?", [["Привет", ",", "мир", "!"], ["Как", "дела", "?"]]),
        ("「はい。」と言った", [["「", "はい", "。", "」"], ["と", "言", "っ", "た"]]),  # closer stays
        ("𠮷野家で食べた", [["𠮷", "野家", "で", "食", "べた"]]),  # outside the BMP: UTF-16 offsets
        ("3.5 and U.S. e.g. Mr. Smith.", [["3.5", "and", "U.S.", "e.g.", "Mr.", "Smith", "."]]),
    ],
)
def test_default_tokenizer_segments_every_script(text, expected):
    assert split_sentences(text) == expected


def test_format_characters_dropped_joiners_kept():
    assert split_sentences("\ufeffHello wor\u00adld\u2060s") == [["Hello", "worlds"]]
    assert split_sentences("a\u200bb") == [["a", "b"]]  # a zero width space separates
    persian = "می\u200cخواهم"  # ZWNJ inside a Persian word
    assert split_sentences(persian) == [[persian]]
    hindi = "क्\u200dष"  # ZWJ after a virama
    assert split_sentences(f" \u200d{hindi}\u200c ") == [[hindi]]  # stray joiners are no tokens
    assert tokenize_text("\ufeffa b", "whitespace") == [["a", "b"]]


def test_a_dot_between_latin_words_is_not_a_cjk_sentence_end():
    assert split_sentences("3．5 ok") == [["3", "．", "5", "ok"]]
    assert split_sentences("版本。v2") == [["版本", "。"], ["v2"]]


@pytest.mark.parametrize(
    "treebank, tokenizer, at_least",
    [
        ("Chinese-GSD", "elmojax", 0.74),
        ("Japanese-GSD", "elmojax", 0.74),
        ("Thai-PUD", "elmojax", 0.74),
        ("English-EWT", "elmojax", 0.95),
        ("Chinese-GSD", "icu", 0.74),
        ("Japanese-GSD", "icu:ja", 0.74),
        ("Thai-PUD", "icu:th", 0.74),
        ("Japanese-GSD", "fugashi", 0.98),
        ("Chinese-GSD", "jieba", 0.74),
        ("Thai-PUD", "pythainlp", 0.64),
    ],
)
def test_ud_f1_on_the_shipped_slices(treebank, tokenizer, at_least):
    name = tokenizer.partition(":")[0]
    if name in ("fugashi", "jieba", "pythainlp") and importlib.util.find_spec(name) is None:
        pytest.skip(f"the {name} extra is not installed (pip install 'elmojax[{name}]')")
    bench = _f1_bench()
    (conllu,) = (UD / treebank).glob("*.conllu")
    sentences = list(bench.read_conllu(conllu))
    assert len(sentences) == 50
    result = bench.score(sentences, get_tokenizer(tokenizer))
    assert result["mismatched"] == 0
    assert result["f1"] >= at_least, result
    assert result["long_share"] <= 0.005, result


def test_english_slice_is_cut_as_before():
    """The English slice's tokens, counted before the ICU change (main at ad5cf83): 50 sentences."""
    bench = _f1_bench()
    (conllu,) = (UD / "English-EWT").glob("*.conllu")
    sentences = list(bench.read_conllu(conllu))
    result = bench.score(sentences, split_sentences)
    assert (result["precision"], result["recall"]) == (0.9608, 0.9706)


def test_every_tokenizer_choice():
    text = "我用iPhone 15拍照。今天很好！"
    assert tokenize_text(text, "whitespace") == [["我用iPhone", "15拍照。今天很好！"]]
    assert tokenize_text(text, "icu") == [["我", "用", "iPhone", "15", "拍照", "。"], ["今天", "很好", "！"]]
    assert tokenize_text("Hello World.", "elmojax", lowercase=True) == [["hello", "world", "."]]
    assert sentence_texts("今天很好！ 你呢？x") == ["今天很好！", " 你呢？", "x"]
    with pytest.raises(ElmoError, match="unknown; choose one of elmojax"):
        get_tokenizer("nonesuch")
    with pytest.raises(ElmoError, match="takes no argument"):
        get_tokenizer("whitespace:x")


def test_extras_cut_their_language():
    if importlib.util.find_spec("jieba") is None:
        pytest.skip("the jieba extra is not installed (pip install 'elmojax[jieba]')")
    assert tokenize_text("我用iPhone 15拍照。", "jieba") == [["我用", "iPhone", "15", "拍照", "。"]]


def test_missing_extra_is_one_line(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "spacy", None)  # an import of spacy now fails
    src = tmp_path / "c.txt"
    src.write_text("a b\n", encoding="utf-8")
    assert main(["prepare", str(src), "--out", str(tmp_path / "o"), "--tokenizer", "spacy:xx_model"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "pip install 'elmojax[spacy]'" in err


def user_tokenizer(text: str) -> list[list[str]]:
    return [text.upper().split("-")]


def bad_tokenizer(text: str):
    return text.split()


def failing_tokenizer(text: str) -> list[list[str]]:
    if "bad" in text:
        raise ValueError("cannot cut this")
    return [text.split()]


def dying_tokenizer(text: str) -> list[list[str]]:
    if multiprocessing.parent_process() is not None:  # a spawned worker (the main process deals too)
        os._exit(3)  # as if the system killed it (out of memory)
    return [text.split()]


def test_a_worker_that_dies_is_one_line_and_leaves_no_output(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(Path(__file__).parent))
    src = tmp_path / "c.txt"
    src.write_text("".join(f"line {i}\n" for i in range(40)), encoding="utf-8")
    with pytest.raises(ElmoError, match=r"^a tokenizer worker stopped \(exit status 3\).*fewer --workers$"):
        prepare_corpus(
            [src], tmp_path / "o", tokenizer="test_tokenizers:dying_tokenizer", workers=2, chunk_texts=4
        )
    assert list(tmp_path.glob("o/*")) + list(tmp_path.glob(".o.prepare-*")) == []  # nothing left


def failing_in_a_worker(text: str) -> list[list[str]]:
    if multiprocessing.parent_process() is not None:  # only a spawned worker fails: its error is sent back
        raise ValueError("cannot cut this")
    return [text.split()]


@pytest.mark.parametrize(
    "tokenizer, where",
    [("failing_tokenizer", "'a bad line\\n'"), ("failing_in_a_worker", "'line 0\\n'")],
)
def test_a_failing_user_tokenizer_is_one_line_from_any_worker(
    tmp_path, monkeypatch, capsys, tokenizer, where
):
    import elmojax.data.prepare as prep

    monkeypatch.syspath_prepend(str(Path(__file__).parent))
    # ten chunks of the default size: a worker starts, and this process, which deals too and takes
    # back the chunks no worker has begun, waits for the worker's first chunk after eight
    src = tmp_path / "c.txt"
    src.write_text(
        "".join(f"line {i}\n" for i in range(prep.CHUNK_TEXTS * 10)) + "a bad line\n", encoding="utf-8"
    )
    argv = ["prepare", str(src), "--out", str(tmp_path / "o"), "--tokenizer", f"test_tokenizers:{tokenizer}"]
    assert main([*argv, "--workers", "2"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and f"failed on {where}: ValueError: cannot cut this" in err
    assert not (tmp_path / "o" / "vocab.txt").exists()


def test_user_tokenizer_module_function(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(Path(__file__).parent))
    assert tokenize_text("a-b", "test_tokenizers:user_tokenizer") == [["A", "B"]]
    with pytest.raises(ElmoError, match="must return a list of sentences"):
        tokenize_text("a b", "test_tokenizers:bad_tokenizer")
    with pytest.raises(ElmoError, match="cannot import nothing"):
        get_tokenizer("test_tokenizers:nothing")
    src = tmp_path / "c.txt"
    src.write_text("x-y\n", encoding="utf-8")
    stats = prepare_corpus(
        [src], tmp_path / "o", tokenizer="test_tokenizers:user_tokenizer", heldout_fraction=0
    )
    assert stats["tokenizer"] == "test_tokenizers:user_tokenizer"
    assert (tmp_path / "o/train/shard_00000.txt").read_text(encoding="utf-8") == "X Y\n"


def test_stats_and_record_name_the_tokenizer_and_count_long_tokens(tmp_path, capsys):
    src = tmp_path / "th.txt"
    thai = "ภาษาไทยเป็นภาษาที่มีระดับเสียงของคำแน่นอนหรือวรรณยุกต์เช่นเดียวกับภาษาจีน"
    src.write_text(f"{thai}\nhello world\n", encoding="utf-8")
    stats = prepare_corpus([src], tmp_path / "ws", tokenizer="whitespace", heldout_fraction=0)
    assert "longer than 48 UTF-8 bytes" in capsys.readouterr().err  # 1 of 3 tokens
    assert (stats["tokenizer"], stats["tokenized"], stats["n_long_tokens"], stats["long_token_bytes"]) == (
        "whitespace", True, 1, 48
    )  # fmt: skip
    assert json.loads((tmp_path / "ws/tokenizer.json").read_text()) == {
        "tokenizer": "whitespace",
        "lowercase": False,
    }
    stats = prepare_corpus([src], tmp_path / "d", heldout_fraction=0, lowercase=True)
    assert (stats["tokenizer"], stats["n_long_tokens"]) == ("elmojax", 0)
    assert capsys.readouterr().err == ""
    assert json.loads((tmp_path / "d/tokenizer.json").read_text()) == {
        "tokenizer": "elmojax",
        "lowercase": True,
    }
    with pytest.raises(ElmoError, match="cannot go with"):
        prepare_corpus([src], tmp_path / "x", tokenized=True, tokenizer="icu")


def test_output_is_the_same_for_any_number_of_workers_and_chunk_size(tmp_path):
    src = tmp_path / "mixed.txt"
    lines = [f"第{i}句话在这里。Sentence {i} is here! ภาษาไทย{i} 日本語{i}です。" for i in range(120)]
    src.write_text("\n".join(lines) + "\n\n", encoding="utf-8")
    outs = {}
    # (workers, chunk_texts, chunk_chars): one chunk in this process, many small chunks, odd sizes
    for workers, texts, chars in ((1, 4096, 1 << 18), (1, 7, 1 << 18), (2, 7, 1 << 18), (3, 5, 300)):
        out = tmp_path / f"w{workers}-{texts}-{chars}"
        stats = prepare_corpus(
            [src], out, workers=workers, heldout_fraction=0.1, sentences_per_shard=50,
            chunk_texts=texts, chunk_chars=chars,
        )  # fmt: skip
        outs[workers, texts] = {
            str(p.relative_to(out)): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()
        }
    first, *others = outs.values()
    assert all(other == first for other in others)
    assert (stats["n_train_sentences"], stats["n_heldout_sentences"]) == (324, 36)  # 3 a text
    assert [first[f"train/shard_{i:05d}.txt"].count(b"\n") for i in range(7)] == [50] * 6 + [24]
    assert first["heldout/shard_00000.txt"].count(b"\n") == 36 and len(first) == 7 + 1 + 3
    assert stats["skipped_empty_lines"] == 1 and stats["n_input_lines"] == 121
    vocab = first["vocab.txt"].decode("utf-8").split("\n")
    assert "这里" in vocab and "Sentence" in vocab and "ภาษา" in vocab
    with pytest.raises(ElmoError, match="`workers` 0"):
        prepare_corpus([src], tmp_path / "w0", workers=0)


def test_bom_inside_jsonl_and_parquet_fields_gives_the_plain_files_output(tmp_path):
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    texts = ["我用iPhone 15拍照。", "Hello there. Fine!", "ภาษาไทย"]
    plain = tmp_path / "plain.txt"
    plain.write_text("\n".join(texts) + "\n", encoding="utf-8")
    jsonl = tmp_path / "bom.jsonl"
    jsonl.write_text("".join(json.dumps({"text": "\ufeff" + t}) + "\n" for t in texts), encoding="utf-8")
    parquet = tmp_path / "bom.parquet"
    pq.write_table(pa.table({"text": ["\ufeff" + t for t in texts]}), parquet)
    outs = []
    for src, kw in ((plain, {}), (jsonl, {"text_key": "text"}), (parquet, {"column": "text"})):
        prepare_corpus([src], tmp_path / src.stem, **kw)
        outs.append(
            {n: (tmp_path / src.stem / n).read_bytes() for n in ("vocab.txt", "train/shard_00000.txt")}
        )
    assert outs[0] == outs[1] == outs[2]
    assert "\ufeff" not in outs[1]["vocab.txt"].decode("utf-8")


def test_embed_tokenize_equals_embedding_the_tokenized_text(tmp_path, tiny_export, capsys):
    import h5py
    import numpy as np

    from tests.helpers import embed_argv

    raw, pre = tmp_path / "raw.txt", tmp_path / "pre.txt"
    raw.write_text("我用iPhone 15拍照。\nHello, world!\n", encoding="utf-8")
    pre.write_text("我 用 iPhone 15 拍照 。\nHello , world !\n", encoding="utf-8")
    assert main(embed_argv(raw, tmp_path / "a.hdf5", tiny_export, "--tokenize")) == 0
    assert "no tokenizer.json beside the model files" in capsys.readouterr().err
    assert main(embed_argv(pre, tmp_path / "b.hdf5", tiny_export)) == 0
    capsys.readouterr()
    with h5py.File(tmp_path / "a.hdf5", "r") as a, h5py.File(tmp_path / "b.hdf5", "r") as b:
        assert a["sentence_to_index"][0] == b["sentence_to_index"][0]
        for key in ("0", "1"):
            np.testing.assert_array_equal(a[key][...], b[key][...])
    raw.write_text("fine\n\ufeff\n", encoding="utf-8")  # a line of only a format character
    assert main(embed_argv(raw, tmp_path / "c.hdf5", tiny_export, "--tokenize")) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "line 2: no tokens" in err
