"""A Chinese corpus through prepare -> train (a few steps) -> export -> `embed --tokenize`: raw text
is cut at embedding time by the tokenizer recorded when the corpus was prepared."""

import json

import h5py
import numpy as np
import pytest

from elmojax.cli import main
from elmojax.data.prepare import prepare_corpus
from elmojax.data.tokenizers import tokenize_text
from elmojax.embed.embedder import Embedder
from tests.helpers import train_argv

SUBJECTS = ["我", "老师", "我的朋友", "他们"]
VERBS = ["喜欢", "看见", "找到", "帮助"]
OBJECTS = ["这本书", "那只猫", "花园", "一条河"]


@pytest.mark.e2e
def test_chinese_corpus_prepare_train_embed_tokenize(tmp_path, train_options, capsys):
    rng = np.random.default_rng(0)
    lines = [
        "".join(f"{rng.choice(SUBJECTS)}{rng.choice(VERBS)}{rng.choice(OBJECTS)}。" for _ in range(3))
        for _ in range(60)
    ]
    src = tmp_path / "zh.txt"
    src.write_text("\n".join(lines) + "\n", encoding="utf-8")
    data = tmp_path / "data"
    stats = prepare_corpus([src], data, heldout_fraction=0.1, workers=2)
    assert stats["tokenizer"] == "elmojax" and stats["n_long_tokens"] == 0
    assert stats["n_train_sentences"] + stats["n_heldout_sentences"] == 180  # 。 ends each sentence
    vocab = (data / "vocab.txt").read_text(encoding="utf-8").split("\n")
    assert {"老师", "喜欢", "花园", "。"} <= set(vocab)
    assert max(len(t) for t in vocab if t) <= 5  # words, not clauses

    options_file = tmp_path / "options.json"
    train_options.save(options_file)
    save = tmp_path / "run"
    argv = train_argv(options_file, str(data / "train/shard_*.txt"), str(data / "vocab.txt"), save)
    assert main([*argv, "--max-steps", "3"]) == 0
    assert json.loads((save / "tokenizer.json").read_text()) == {"tokenizer": "elmojax", "lowercase": False}
    export = tmp_path / "export"
    assert main(["export", "--save-dir", str(save), "--outfile", str(export / "w.hdf5")]) == 0
    assert (export / "tokenizer.json").exists()

    raw = tmp_path / "raw.txt"
    texts = ["我喜欢这本书。老师看见那只猫。", "他们找到花园。"]
    raw.write_text("\n".join(texts) + "\n", encoding="utf-8")
    out = tmp_path / "emb.hdf5"
    opts, weights = str(export / "options.json"), str(export / "w.hdf5")
    argv = ["embed", str(raw), str(out), "--options-file", opts, "--weight-file", weights, "--no-progress"]
    assert main([*argv, "--tokenize"]) == 0
    assert "tokenized" in capsys.readouterr().err
    embedder = Embedder.from_files(opts, weights)
    assert embedder.tokenizer == "elmojax"
    first = ["我", "喜欢", "这", "本", "书", "。", "老师", "看见", "那只", "猫", "。"]
    assert embedder.tokenize(texts[0]) == [t for s in tokenize_text(texts[0]) for t in s] == first
    direct = embedder.embed_texts(texts)
    with h5py.File(out, "r") as f:
        index = json.loads(f["sentence_to_index"][0])
        assert index[" ".join(first)] == "0"
        for i, emb in enumerate(direct):
            assert f[str(i)].shape == emb.shape == (3, len(embedder.tokenize(texts[i])), emb.shape[-1])
            np.testing.assert_allclose(f[str(i)][...], emb, atol=1e-5)
    assert main([*argv, "--tokenizer", "whitespace"]) == 2  # --tokenizer without --tokenize: one line
