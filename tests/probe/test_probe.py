"""``elmojax probe``: CoNLL-U and BIO reading, conlleval's span F1, the feature cache, one-line errors,
and (e2e) a trained tiny biLM's LSTM layers holding a context-dependent tag that its word alone does not."""

from __future__ import annotations

import json

import pytest

from elmojax.cli import main
from elmojax.data.conll import (
    accuracy,
    most_frequent_tags,
    read_columns,
    read_conllu,
    span_counts,
    span_f1,
    spans,
)
from elmojax.errors import ElmoError
from elmojax.probe import format_table
from tests.helpers import ROOT

UD = ROOT / "tests" / "fixtures" / "ud-ewt"
DEV = UD / "en_ewt-ud-dev-head.conllu"
TEST = UD / "en_ewt-ud-test-head.conllu"

CONLLU = """\
# sent_id = 1
# text = I didn't go.
1\tI\tI\tPRON\tPRP\t_\t3\tnsubj\t_\t_
2-3\tdidn't\t_\t_\t_\t_\t_\t_\t_\t_
2\tdid\tdo\tAUX\tVBD\t_\t4\taux\t_\t_
3\tn't\tnot\tPART\tRB\t_\t4\tadvmod\t_\t_
3.1\tgone\tgo\tVERB\tVBN\t_\t_\t_\t_\t_
4\tgo\tgo\tVERB\tVB\t_\t0\troot\t_\t_
5\t.\t.\tPUNCT\t.\t_\t4\tpunct\t_\t_

1\tYes\tyes\tINTJ\tUH\t_\t0\troot\t_\t_

"""


def test_conllu_reads_syntactic_words_and_the_task_column(tmp_path):
    path = tmp_path / "a.conllu"
    path.write_text(CONLLU)
    upos = read_conllu(path, "upos")
    # the multi-word token line (2-3) and the empty node (3.1) are not words of their own
    assert upos.tokens == [["I", "did", "n't", "go", "."], ["Yes"]]
    assert upos.tags == [["PRON", "AUX", "PART", "VERB", "PUNCT"], ["INTJ"]]
    assert upos.lines == [[3, 5, 6, 8, 9], [11]]
    assert read_conllu(path, "xpos").tags[0] == ["PRP", "VBD", "RB", "VB", "."]
    assert read_conllu(path, "deprel").tags[0] == ["nsubj", "aux", "advmod", "root", "punct"]
    # the shipped EWT slice: 80 sentences, the first "From the AP comes this story :"
    ewt = read_conllu(DEV, "upos")
    assert len(ewt.tokens) == 80
    assert ewt.tokens[0] == ["From", "the", "AP", "comes", "this", "story", ":"]
    assert ewt.tags[0] == ["ADP", "DET", "PROPN", "VERB", "DET", "NOUN", "PUNCT"]


def test_bio_column_files(tmp_path):
    path = tmp_path / "a.bio"
    path.write_text(
        "-DOCSTART- -X- -X- O\n\nEU NNP B-NP B-ORG\nrejects VBZ B-VP O\nGerman JJ B-NP B-MISC\n\n"
        "Peter NNP B-NP B-PER\nBlackburn NNP I-NP I-PER\n"
    )
    data = read_columns(path)
    assert data.tokens == [["EU", "rejects", "German"], ["Peter", "Blackburn"]]
    assert data.tags == [["B-ORG", "O", "B-MISC"], ["B-PER", "I-PER"]]
    assert data.lines == [[3, 4, 5], [7, 8]]


def test_span_f1_counts_as_conlleval():
    gold = [
        ["B-PER", "I-PER", "O", "B-LOC", "O"],
        ["B-ORG", "I-ORG", "O"],
        ["O", "B-MISC", "I-MISC"],
        ["B-PER", "I-LOC"],
        ["O", "O"],
    ]
    guessed = [
        ["B-PER", "I-PER", "O", "B-ORG", "O"],  # PER right; LOC guessed as ORG
        ["B-ORG", "O", "O"],  # ORG cut short: wrong
        ["O", "I-MISC", "I-MISC"],  # conlleval: an I- after O starts a chunk, so this one is right
        ["B-PER", "B-LOC"],  # gold's I-LOC after B-PER is a new chunk (the type changes): both right
        ["B-PER", "O"],  # a chunk that is not there
    ]
    assert spans(gold[3]) == {(0, 0, "PER"), (1, 1, "LOC")}
    assert spans(guessed[2]) == {(1, 2, "MISC")}
    # gold chunks: PER LOC | ORG | MISC | PER LOC | - = 6; guessed: PER ORG | ORG | MISC | PER LOC | PER = 7;
    # correct: PER, MISC, PER, LOC = 4. conlleval: precision 57.14%, recall 66.67%, FB1 61.54
    assert span_counts(gold, guessed) == (4, 7, 6)
    precision, recall = 4 / 7, 4 / 6
    assert span_f1(gold, guessed) == pytest.approx(2 * precision * recall / (precision + recall))
    assert span_f1(gold, guessed) == pytest.approx(8 / 13)
    assert round(100 * span_f1(gold, guessed), 2) == 61.54
    assert span_f1(gold, gold) == 1.0
    assert accuracy(gold, guessed) == pytest.approx(10 / 15)


def test_most_frequent_tag_baseline(tmp_path):
    path = tmp_path / "a.conllu"
    path.write_text(CONLLU)
    train = read_conllu(path, "upos")
    # known words get their tag, an unseen word the commonest tag overall (ties: the first seen)
    assert most_frequent_tags(train, [["go", "I", "zebra"]]) == [["VERB", "PRON", "PRON"]]


def _argv(export, train, test, cache, *extra):
    return [
        "probe",
        "--options-file", str(export.options_file),
        "--weight-file", str(export.weight_file),
        "--train", str(train),
        "--test", str(test),
        "--task", "upos",
        "--cache-dir", str(cache),
        "--steps", "40",
        "--no-progress",
        "--no-compilation-cache",
        *extra,
    ]  # fmt: skip


def test_probe_json_and_the_cache_is_reused(tiny_export, tmp_path, capsys, monkeypatch):
    """A second run reads the cached features (embedding is made to fail) and gives the same scores."""
    from elmojax.embed.embedder import Embedder

    cache = tmp_path / "cache"
    assert main(_argv(tiny_export, DEV, TEST, cache, "--json")) == 0
    first = json.loads(capsys.readouterr().out)
    assert first["task"] == "upos" and first["metric"] == "accuracy"
    assert set(first["layers"]) == {"0", "1", "2", "mean", "mix"}
    assert all(0.0 <= v <= 1.0 for v in first["layers"].values())
    assert abs(sum(first["mix_weights"]) - 1) < 1e-3
    # the most frequent tag of each word, counted by hand on these files, scores above 0.5
    assert first["baselines"]["most_frequent_tag"] > 0.5
    assert first["n_test_tokens"] == sum(len(s) for s in read_conllu(TEST, "upos").tokens)
    cached = sorted(p.name for p in cache.iterdir())
    assert len(cached) == 2  # one features file per data file

    def no_embedding(self, *a, **k):
        raise AssertionError("features were computed again")

    monkeypatch.setattr(Embedder, "embed_sentences", no_embedding)
    assert main(_argv(tiny_export, DEV, TEST, cache, "--json")) == 0
    second = json.loads(capsys.readouterr().out)
    assert second["layers"] == first["layers"]  # cached features, a seeded probe: the same figures
    assert second["baselines"] == first["baselines"]
    assert sorted(p.name for p in cache.iterdir()) == cached
    # the table names every representation
    table = format_table(second)
    assert table.splitlines()[1].split() == ["layer", "model"]
    assert [line.split()[0] for line in table.splitlines()[2:7]] == ["0", "1", "2", "mean", "mix"]


def _one_line_error(capsys, argv) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    return err


def test_bad_input_is_one_line_naming_file_and_line(tiny_export, tmp_path, capsys):
    bad = tmp_path / "bad.conllu"
    bad.write_text(CONLLU.replace("4\tgo\tgo\tVERB\tVB\t_\t0\troot\t_\t_", "4 go go VERB"))
    err = _one_line_error(capsys, _argv(tiny_export, bad, TEST, tmp_path))
    assert f"{bad}:8: expected 10 tab-separated CoNLL-U columns, found 1" in err
    # a tag of the test file the training file never shows: the probe could not predict it
    unseen = tmp_path / "unseen.conllu"
    unseen.write_text(CONLLU.replace("INTJ", "SYM"))
    err = _one_line_error(capsys, _argv(tiny_export, DEV, unseen, tmp_path))
    assert f"{unseen}:11: tag 'SYM' never occurs in the training file" in err
    bio = tmp_path / "a.bio"
    bio.write_text("EU B-ORG\nrejects OUT\n")
    argv = _argv(tiny_export, bio, bio, tmp_path)
    argv[argv.index("upos")] = "ner"
    assert f"{bio}:2: the last column should be a BIO tag" in _one_line_error(capsys, argv)
    with pytest.raises(ElmoError, match=r"a.bio:1: expected a word and its tag"):
        bio.write_text("EU\n")
        read_columns(bio)


def test_plot_without_matplotlib_is_one_line(tiny_export, tmp_path, capsys, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "matplotlib", None)  # as if not installed
    err = _one_line_error(capsys, _argv(tiny_export, DEV, TEST, tmp_path, "--plot", str(tmp_path / "p.png")))
    assert "--plot needs matplotlib: pip install 'elmojax[plot]'" in err
    assert not (tmp_path / "p.png").exists()


def test_the_cli_reference_lists_every_probe_flag():
    from elmojax.cli import build_parser

    section = (ROOT / "docs" / "cli.md").read_text()
    block = section[section.index("elmojax probe ") :].split("\nelmojax ")[0].split("```")[0]
    parser = build_parser()
    sub = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction").choices["probe"]
    flags = {o for a in sub._actions for o in a.option_strings if o.startswith("--") and "_" not in o}
    assert not sorted(f for f in flags - {"--help"} if f not in block)


@pytest.mark.e2e
def test_trained_lstm_layers_hold_the_context_the_word_lacks(tmp_path):
    """On the synthetic role task (``tests/probe/synthetic.py``) a tiny biLM trained 300 steps on the
    task's text: its LSTM layers beat layer 0 (the word alone) and the same options with random weights
    by a margin; the word alone stays below 0.75 (determiners, adjectives and nouns occur in both roles)."""
    from elmojax.export import export_run
    from elmojax.options import options_from_dict
    from elmojax.probe import run_probe
    from elmojax.train.loop import TrainConfig, train
    from tests.helpers import TRAIN_KEYS, tiny_options_dict
    from tests.probe.synthetic import write_conllu, write_text

    glob, vocab = write_text(tmp_path / "text", 400, seed=0)
    options = options_from_dict(
        tiny_options_dict(**{**TRAIN_KEYS, "batch_size": 16, "unroll_steps": 10}), source="synthetic"
    )
    train(options, TrainConfig(str(tmp_path / "run"), glob, vocab, max_steps=300, progress=False))
    weights = export_run(tmp_path / "run", tmp_path / "export" / "weights.hdf5")
    result = run_probe(
        weights.parent / "options.json",
        weights,
        write_conllu(tmp_path / "train.conllu", 200, seed=1),
        write_conllu(tmp_path / "test.conllu", 100, seed=2),
        "upos",
        vocab_file=weights.parent / "vocab.txt",
        cache_dir=tmp_path / "cache",
        control=True,
        batch_size=32,
    )
    layers, control = result["layers"], result["baselines"]["control"]
    assert layers["0"] < 0.75
    for k in ("1", "2"):
        assert layers[k] >= layers["0"] + 0.2, result
        assert layers[k] >= control[k] + 0.1, result
    assert layers["mix"] >= max(control.values()) + 0.1, result
