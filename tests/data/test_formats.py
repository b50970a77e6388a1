"""`elmojax prepare` on the corpus formats people have: every format gives the bytes the same text
gives as a plain file; bad input is one line naming the file, line or row and the key, exit 2,
with the earlier output intact; compressed files stream and the bar counts their bytes on disk."""

from __future__ import annotations

import bz2
import gzip
import json
import lzma
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import zstandard

from elmojax.cli import main
from elmojax.data.hf_dataset import dataset_files, parse_spec, split_of
from elmojax.data.prepare import prepare_corpus
from elmojax.data.readers import FILE_READERS, ReadCounts, ReadOptions
from elmojax.errors import ElmoError, InputTextError
from tests.data.test_prepare import snapshot, write_text_corpus

PREPARE = dict(heldout_fraction=0.1, sentences_per_shard=50, seed=3)


def write_jsonl(path: Path, texts: list, key: str = "text") -> bytes:
    """One record a text; ``meta.body`` nests the text one level down."""

    def record(i, t):
        if key == "meta.body":
            return {"id": i, "meta": {"body": t}}
        return {"id": i, key: t}

    data = "".join(json.dumps(record(i, t), ensure_ascii=False) + "\n" for i, t in enumerate(texts))
    path.write_text(data, encoding="utf-8")
    return data.encode("utf-8")


@pytest.fixture(scope="module")
def formats(tmp_path_factory) -> tuple[Path, dict]:
    """One corpus (120 paragraphs, one empty) in every format, with the arguments that read it."""
    import datasets

    root = tmp_path_factory.mktemp("formats")
    text = root / "corpus.txt"
    texts = write_text_corpus(text)
    raw = text.read_bytes()
    jsonl = write_jsonl(root / "corpus.jsonl", texts, "meta.body")
    (root / "corpus.jsonl.gz").write_bytes(gzip.compress(jsonl))
    (root / "corpus.txt.gz").write_bytes(gzip.compress(raw))
    (root / "corpus.txt.bz2").write_bytes(bz2.compress(raw))
    (root / "corpus.txt.xz").write_bytes(lzma.compress(raw))
    (root / "corpus.txt.zst").write_bytes(zstandard.ZstdCompressor().compress(raw))
    table = pa.table({"id": list(range(len(texts))), "text": texts})
    pq.write_table(table, root / "corpus.parquet", row_group_size=50)  # three row groups
    saved = datasets.Dataset.from_dict({"id": list(range(len(texts))), "text": texts})
    saved.save_to_disk(root / "saved")
    datasets.DatasetDict({"train": saved, "test": saved.select(range(3))}).save_to_disk(root / "saved_dict")
    local = root / "local" / "data"
    local.mkdir(parents=True)
    pq.write_table(table, local / "train-00000-of-00001.parquet")
    write_jsonl(local / "test-00000-of-00001.jsonl", ["not the train split"])
    local_text = root / "local_text"
    local_text.mkdir()
    (local_text / "train.txt").write_bytes(raw)
    (local_text / "test.txt").write_text("not the train split\n")
    sources = {
        "text": ([text], {}),
        "jsonl-nested": ([root / "corpus.jsonl"], {"text_key": "meta.body"}),
        "jsonl.gz": ([root / "corpus.jsonl.gz"], {"text_key": "meta.body"}),
        "txt.gz": ([root / "corpus.txt.gz"], {}),
        "txt.bz2": ([root / "corpus.txt.bz2"], {}),
        "txt.xz": ([root / "corpus.txt.xz"], {}),
        "txt.zst": ([root / "corpus.txt.zst"], {}),
        "parquet": ([root / "corpus.parquet"], {"column": "text"}),
        "hf-save_to_disk": ([], {"hf_dataset": str(root / "saved"), "text_key": "text"}),
        "hf-dataset-dict": ([], {"hf_dataset": f"{root / 'saved_dict'}:train", "text_key": "text"}),
        "hf-local-folder": ([], {"hf_dataset": str(root / "local"), "text_key": "text"}),
        "hf-local-text": ([], {"hf_dataset": str(root / "local_text"), "text_key": "text"}),
    }
    return root, sources


FORMATS = ["jsonl-nested", "jsonl.gz", "txt.gz", "txt.bz2", "txt.xz", "txt.zst", "parquet"]
FORMATS += ["hf-save_to_disk", "hf-dataset-dict", "hf-local-folder", "hf-local-text"]


@pytest.mark.parametrize("name", FORMATS)
def test_every_format_gives_the_bytes_of_the_plain_text(formats, tmp_path, name):
    root, sources = formats
    inputs, kwargs = sources["text"]
    reference = prepare_corpus(inputs, tmp_path / "text", **PREPARE)
    assert reference["n_input_lines"] == 120 and reference["skipped_empty_lines"] == 1
    assert reference["n_train_shards"] == 5
    inputs, kwargs = sources[name]
    stats = prepare_corpus(inputs, tmp_path / name, **PREPARE, **kwargs)
    assert stats == reference
    assert snapshot(tmp_path / name) == snapshot(tmp_path / "text")  # shards, vocab.txt, stats.json


def test_the_cli_reads_jsonl_parquet_and_hf_datasets(formats, tmp_path, capsys):
    root, _ = formats
    runs = {
        "jsonl": [str(root / "corpus.jsonl.gz"), "--text-key", "meta.body"],
        "parquet": [str(root / "corpus.parquet"), "--column", "text"],
        "hf": ["--hf_dataset", f"{root / 'saved_dict'}:train", "--text_key", "text"],  # bilm-tf spellings
    }
    for name, args in runs.items():
        assert main(["prepare", *args, "--out", str(tmp_path / name), "--seed", "3", "--no-progress"]) == 0
    printed = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert len(printed) == 3 and all(p == printed[0] for p in printed)
    assert snapshot(tmp_path / "jsonl") == snapshot(tmp_path / "parquet") == snapshot(tmp_path / "hf")


def truncated(data: bytes) -> bytes:
    return data[: len(data) // 2]


def corrupted_middle(data: bytes) -> bytes:
    middle = len(data) // 2
    return data[:middle] + bytes(b ^ 0x5A for b in data[middle : middle + 16]) + data[middle + 16 :]


def bad_input(tmp_path: Path, case: str) -> tuple[list[str], str, str]:
    """(prepare arguments, file named in the error, what the error says) of one bad input."""
    lines = [f"line {i} says something. And more!" for i in range(4000)]
    raw = ("\n".join(lines) + "\n").encode()
    records = [{"text": t} for t in lines[:5]]
    f = tmp_path / "in"
    if case == "jsonl-missing-key":
        p = f.with_suffix(".jsonl")
        p.write_text("".join(json.dumps(r) + "\n" for r in records[:2]) + '{"body": "x"}\n')
        return [str(p), "--text-key", "text"], str(p), "line 3: no key 'text' (keys: 'body')"
    if case == "jsonl-nested-missing":
        p = f.with_suffix(".jsonl")
        p.write_text('{"meta": {"title": "x"}}\n')
        return (
            [str(p), "--text-key", "meta.body"],
            str(p),
            "line 1: no key 'meta.body' (keys of 'meta': 'title')",
        )
    if case == "jsonl-not-text":
        p = f.with_suffix(".jsonl")
        p.write_text('{"text": "fine"}\n{"text": 3.5}\n')
        return [str(p), "--text-key", "text"], str(p), "line 2: key 'text' holds a number, not text"
    if case == "jsonl-bad-json":
        p = f.with_suffix(".jsonl")
        p.write_text('{"text": "fine"}\n{"text": "cut\n')
        return [str(p), "--text-key", "text"], str(p), "line 2: not valid JSON (Unterminated string"
    if case == "jsonl-no-key":
        p = f.with_suffix(".jsonl")
        p.write_text('{"text": "fine", "id": 1}\n')
        return (
            [str(p)],
            str(p),
            "set --text-key to the key holding the text (keys of the first record: 'text', 'id')",
        )
    if case == "gz-truncated":
        p = f.with_suffix(".txt.gz")
        p.write_bytes(truncated(gzip.compress(raw)))
        return [str(p)], str(p), "the gzip stream is truncated after line"
    if case == "gz-corrupt":
        p = f.with_suffix(".txt.gz")
        p.write_bytes(corrupted_middle(gzip.compress(raw)))
        return [str(p)], str(p), "corrupt gzip data after line"
    if case == "csv-gz-truncated":  # cut inside the header: found by the check, before any work
        p = f.with_suffix(".csv.gz")
        p.write_bytes(gzip.compress(b"speaker,transcript\n" + raw)[:20])
        return (
            [str(p), "--column", "transcript"],
            str(p),
            "the gzip stream is truncated before its first line",
        )
    if case == "gz-not-gzip":
        p = f.with_suffix(".jsonl.gz")
        p.write_bytes(raw)
        return (
            [str(p), "--text-key", "text"],
            str(p),
            "not gzip data (the file does not start with gzip's magic",
        )
    if case in ("xz-truncated", "bz2-truncated", "zst-truncated"):
        codec = case.split("-")[0]
        compress = {"xz": lzma.compress, "bz2": bz2.compress, "zst": zstandard.ZstdCompressor().compress}
        p = f.with_suffix(f".txt.{codec}")
        p.write_bytes(truncated(compress[codec](raw)))
        name = {"xz": "xz", "bz2": "bzip2", "zst": "zstd"}[codec]
        return [str(p)], str(p), f"the {name} stream is truncated"
    if case == "parquet-missing-column":
        p = f.with_suffix(".parquet")
        pq.write_table(pa.table({"body": ["x"]}), p)
        return (
            [str(p), "--column", "text"],
            str(p),
            "no column 'text'; columns found: 'body'. Choose one with --column",
        )
    if case == "parquet-not-text":
        p = f.with_suffix(".parquet")
        pq.write_table(pa.table({"text": [1, 2]}), p)
        return [str(p), "--column", "text"], str(p), "column 'text' holds int64, not text"
    if case == "parquet-corrupt":
        p = f.with_suffix(".parquet")
        p.write_bytes(raw[:5000])
        return [str(p), "--column", "text"], str(p), "not a readable Parquet file"
    if case == "hf-no-split":
        (tmp_path / "ds").mkdir()
        write_jsonl(tmp_path / "ds" / "train.jsonl", lines[:3])
        spec = f"{tmp_path / 'ds'}:test"
        return ["--hf-dataset", spec, "--text-key", "text"], spec, "no split 'test'; splits found: train"
    raise AssertionError(case)


BAD = ["jsonl-missing-key", "jsonl-nested-missing", "jsonl-not-text", "jsonl-bad-json", "jsonl-no-key"]
BAD += [
    "gz-truncated",
    "gz-corrupt",
    "csv-gz-truncated",
    "gz-not-gzip",
    "xz-truncated",
    "bz2-truncated",
    "zst-truncated",
]
BAD += ["parquet-missing-column", "parquet-not-text", "parquet-corrupt", "hf-no-split"]


@pytest.mark.parametrize("case", BAD)
def test_bad_input_is_one_line_exit_2_and_keeps_the_earlier_output(tmp_path, capsys, case):
    out = tmp_path / "out"
    good = tmp_path / "good.txt"
    write_text_corpus(good, 30)
    prepare_corpus([good], out)
    before = snapshot(out)
    args, named, message = bad_input(tmp_path, case)
    if "--column" not in args:  # a good file first (with --column it would be read as CSV)
        args = [str(good), *args]
    assert main(["prepare", *args, "--out", str(out), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and err.startswith("elmojax prepare: error: "), err
    assert named in err and message in err, err
    assert snapshot(out) == before
    assert not list(out.glob(".prepare-tmp-*"))


class Recorder:
    """A progress bar that remembers how far it was moved."""

    def __init__(self):
        self.n = 0

    def update(self, n: int) -> None:
        self.n += n


def test_compressed_files_stream_and_the_bar_counts_bytes_on_disk(tmp_path):
    rng = np.random.default_rng(0)
    words = np.array([f"w{i}" for i in range(5000)])
    n_lines = 12_000
    text = "".join(" ".join(row) + ".\n" for row in words[rng.integers(0, 5000, (n_lines, 12))])  # 800 kB
    codecs = {
        ".txt.gz": lambda b: gzip.compress(b, compresslevel=1),
        ".txt.xz": lambda b: lzma.compress(b, preset=0),
        ".txt.zst": zstandard.ZstdCompressor().compress,
    }
    for suffix, compress in codecs.items():
        path = tmp_path / f"big{suffix}"
        path.write_bytes(compress(text.encode()))
        size = path.stat().st_size
        bar = Recorder()
        texts = FILE_READERS["text"].texts(path, ReadOptions(), ReadCounts(), bar)
        assert next(texts) == text[: text.index("\n") + 1]
        assert 0 < bar.n < size / 2, (suffix, bar.n, size)  # read as a stream, not all at once
        assert sum(1 for _ in texts) == n_lines - 1
        assert bar.n == size, suffix  # compressed bytes: the bar ends at the file's size
    path = tmp_path / "rows.parquet"
    pq.write_table(pa.table({"text": text.splitlines()}), path, row_group_size=5_000)
    bar, counts = Recorder(), ReadCounts()
    texts = list(FILE_READERS["parquet"].texts(path, ReadOptions(column="text"), counts, bar))
    assert len(texts) == counts.input_lines == n_lines and bar.n == path.stat().st_size


def test_nulls_are_empty_texts_and_invalid_utf8_names_the_row(tmp_path):
    path = tmp_path / "n.parquet"
    pq.write_table(pa.table({"meta": [{"body": "one two"}, None, {"body": None}]}), path)
    counts = ReadCounts()
    texts = list(FILE_READERS["parquet"].texts(path, ReadOptions(column="meta.body"), counts, Recorder()))
    assert texts == ["one two", "", ""] and counts.input_lines == 3
    jsonl = tmp_path / "n.jsonl"
    jsonl.write_text('{"text": null}\n\n{"text": "x"}\n')
    counts = ReadCounts()
    assert list(FILE_READERS["jsonl"].texts(jsonl, ReadOptions(text_key="text"), counts, Recorder())) == [
        "",
        "x",
    ]
    assert (counts.input_lines, counts.skipped_empty) == (2, 1)
    bad = pa.Array.from_buffers(pa.string(), 2, pa.array([b"ok", b"caf\xe9"], pa.binary()).buffers())
    pq.write_table(pa.table({"text": bad}), tmp_path / "u.parquet")
    with pytest.raises(InputTextError, match=r"u.parquet: row 2: column 'text': invalid UTF-8 at byte 3"):
        list(FILE_READERS["parquet"].texts(tmp_path / "u.parquet", ReadOptions(column="text"), ReadCounts(),
                                           Recorder()))  # fmt: skip
    replaced = ReadCounts()
    options = ReadOptions(column="text", errors="replace")
    assert list(FILE_READERS["parquet"].texts(tmp_path / "u.parquet", options, replaced, Recorder())) == [
        "ok",
        "caf\ufffd",
    ]
    assert replaced.replaced_lines == 1


@pytest.mark.parametrize(
    "module, suffix, extra",
    [("zstandard", ".txt.zst", "zstd"), ("pyarrow", ".parquet", "parquet")],
)
def test_a_missing_extra_is_named(tmp_path, monkeypatch, module, suffix, extra):
    path = tmp_path / f"c{suffix}"
    path.write_bytes(b"\x28\xb5\x2f\xfd" + b"\0" * 20)
    monkeypatch.setitem(sys.modules, module, None)  # import fails as if not installed
    with pytest.raises(ElmoError, match=rf"pip install 'elmojax\[{extra}\]'"):
        prepare_corpus([path], tmp_path / "o", column="text")


def test_hugging_face_folder_conventions(tmp_path):
    assert parse_spec("/data/wiki:validation") == (Path("/data/wiki"), "validation")
    assert parse_spec("/data/wiki") == (Path("/data/wiki"), None)
    assert split_of(Path("data/train-00000-of-00002.parquet")) == "train"
    assert split_of(Path("dev.jsonl")) == "validation"
    assert split_of(Path("eval/part.csv")) == "test"
    assert split_of(Path("interval.jsonl")) is None and split_of(Path("trainee.jsonl")) is None
    for name in ("b.jsonl", "a.jsonl.gz", "README.md", ".cache/x.jsonl"):
        (tmp_path / name).parent.mkdir(exist_ok=True)
        (tmp_path / name).write_text("{}\n")
    assert [p.name for p in dataset_files(str(tmp_path))] == ["a.jsonl.gz", "b.jsonl"]  # no split: train
    with pytest.raises(ElmoError, match="no split 'test'; splits found: train"):
        dataset_files(f"{tmp_path}:test")
    with pytest.raises(ElmoError, match="is not a folder"):
        dataset_files(str(tmp_path / "b.jsonl"))
