"""The Embedder and `elmojax embed`, judged against the embeddings bilm-tf computed."""

import json
import subprocess
import sys

import h5py
import numpy as np
import pytest

from elmojax.cli import main
from elmojax.embed.dump import embed_file
from elmojax.embed.embedder import Embedder
from tests.helpers import ROOT, embed_argv, run_module

PARITY_ATOL = 1e-5  # the bound; bilm-tf's own test uses 1e-6, which we also meet (see below)


def test_fixture_parity_through_cli(fixture_dir, fixture_sentences, tmp_path, capsys):
    """bilm-tf's test: batch i = sentence i of each of the three lists, states carried row by row."""
    lines = [fixture_sentences[k][i] for i in range(10) for k in range(3)]
    inp = tmp_path / "sentences.txt"
    inp.write_text("\n".join(lines) + "\n")
    out = tmp_path / "emb.hdf5"
    status = main(
        [
            "embed",
            str(inp),
            str(out),
            "--options-file",
            str(fixture_dir / "options.json"),
            "--weight-file",
            str(fixture_dir / "lm_weights.hdf5"),
            "--vocab-file",
            str(fixture_dir / "vocab_test.txt"),
            "--stateful",
            "--batch-size",
            "3",
            "--top",
            "--no-progress",
        ]
    )
    assert status == 0
    max_diff = 0.0
    with h5py.File(out, "r") as f:
        index = json.loads(f["sentence_to_index"][0])
        assert len(f.keys()) == 31 and index[lines[4]] == "4"
        for i in range(10):
            for k in range(3):
                with h5py.File(fixture_dir / f"lm_embeddings_{k}.hdf5", "r") as ref:
                    expected = ref[str(i)][...]  # [2, T, P]: forward then backward
                top = f[str(3 * i + k)][...]  # [T, 2P]
                got = top.reshape(top.shape[0], 2, -1).transpose(1, 0, 2)
                assert got.shape == expected.shape
                max_diff = max(max_diff, float(np.abs(got - expected).max()))
    print(f"fixture parity: max |diff| = {max_diff:.3g}")
    assert max_diff <= PARITY_ATOL
    assert max_diff <= 1e-6  # bilm-tf's own tolerance


def test_stateless_is_independent_of_batch_and_history(tiny_embedder):
    target = ["the", "quick", "brown", "fox"]
    alone = tiny_embedder.embed_batch([target])[0]
    assert alone.shape == (3, 4, 12)
    tiny_embedder.embed_batch([["x"] * 30, ["y"]])
    mixed = tiny_embedder.embed_batch([["a"] * 20, ["b"], target, ["c", "d"]])
    np.testing.assert_allclose(mixed[2], alone, atol=1e-6)
    again = tiny_embedder.embed_batch([target, ["z"] * 9])[0]
    np.testing.assert_allclose(again, alone, atol=1e-6)


def test_bucketing_limits_compiles(tiny_embedder):
    rng = np.random.default_rng(0)
    words = [f"w{i}" for i in range(50)]
    sentences = [list(rng.choice(words, size=rng.integers(3, 25))) for _ in range(64)]
    out = list(tiny_embedder.embed_sentences(sentences, batch_size=8))
    assert [o.shape[1] for o in out] == [len(s) for s in sentences]
    assert len(tiny_embedder.shapes_compiled) <= 6


def test_pipelined_stream_equals_batch_by_batch(tiny_embedder, tiny_options, tiny_params):
    """embed_sentences dispatches a batch before fetching the previous one, across chunks too;
    results come out in input order and equal plain embed_batch calls, stateful or not."""
    rng = np.random.default_rng(1)
    sentences = [[f"w{j}" for j in rng.integers(0, 40, size=rng.integers(1, 12))] for _ in range(7)]
    out = list(tiny_embedder.embed_sentences(iter(sentences), batch_size=2, sort_window=2))
    for a, b in zip(out, tiny_embedder.embed_batch(sentences), strict=True):
        np.testing.assert_allclose(a, b, atol=1e-6)
    streamed = Embedder(tiny_options, tiny_params, stateful=True)
    out = list(streamed.embed_sentences(iter(sentences), batch_size=4))
    plain = Embedder(tiny_options, tiny_params, stateful=True)
    expected = plain.embed_batch(sentences[:4]) + plain.embed_batch(sentences[4:])  # input order
    assert len(out) == 7
    for a, b in zip(out, expected, strict=True):
        np.testing.assert_allclose(a, b, atol=1e-6)


def test_stateful_carries_rows_and_leaves_unused_rows_alone(tiny_options, tiny_params):
    emb = Embedder(tiny_options, tiny_params, stateful=True)
    first = emb.embed_batch([["a", "b"], ["c"], ["d", "e", "f"], ["g"]])
    state_before = [np.asarray(s)[:, :, 2:4].copy() for s in emb._state]
    emb.embed_batch([["h"], ["i", "j"]])
    for before, after in zip(state_before, emb._state, strict=True):
        np.testing.assert_array_equal(before, np.asarray(after)[:, :, 2:4])
    # row 0 of the next call continues from row 0's state: differs from a fresh start
    carried = emb.embed_batch([["a", "b"]])[0]
    assert np.abs(carried[1:] - first[0][1:]).max() > 1e-4
    np.testing.assert_allclose(carried[0], first[0][0], atol=1e-6)  # layer 0 has no state
    emb.reset_states()
    np.testing.assert_allclose(emb.embed_batch([["a", "b"]])[0], first[0], atol=1e-6)


@pytest.mark.parametrize("fmt, shape", [("--all", (3, 2, 12)), ("--top", (2, 12)), ("--average", (2, 12))])
def test_cli_formats(tiny_options, tiny_params, tiny_export, tmp_path, fmt, shape):
    (tmp_path / "in.txt").write_text("hello world\nsecond  sentence here\n")
    assert main(embed_argv(tmp_path / "in.txt", tmp_path / "o.hdf5", tiny_export, fmt)) == 0
    with h5py.File(tmp_path / "o.hdf5", "r") as f:
        assert f["0"].shape == shape and f["1"].shape[-2] == 3
        full = Embedder(tiny_options, tiny_params).embed_batch([["hello", "world"]])[0]
        ref = {"--all": full, "--top": full[-1], "--average": full.mean(0)}[fmt]
        np.testing.assert_allclose(f["0"][...], ref, atol=1e-6)


def test_cli_errors_are_one_line(tiny_export, tmp_path, capsys):
    (tmp_path / "in.txt").write_text("one\n\nthree\n")
    out = tmp_path / "o.hdf5"
    out.write_text("precious")
    assert main(embed_argv(tmp_path / "in.txt", out, tiny_export)) == 2
    err = capsys.readouterr().err.strip()
    assert err.endswith("in.txt: line 2: empty line; every line must hold one sentence")
    assert "\n" not in err and out.read_text() == "precious"  # nothing already written is lost
    assert main(embed_argv(tmp_path / "missing.txt", out, tiny_export)) == 2
    assert "missing.txt: input file not found" in capsys.readouterr().err
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_python_dash_m_help():
    r = subprocess.run(
        [sys.executable, "-m", "elmojax", "embed", "--help"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        check=True,
    )
    for flag in [
        "--options-file",
        "--weight-file",
        "--vocab-file",
        "--all",
        "--top",
        "--average",
        "--batch-size",
        "--stateful",
    ]:
        assert flag in r.stdout


@pytest.mark.multidevice
def test_sharded_embedder_equals_single_device():
    """4 simulated devices, stateless and stateful: equal to one device (tests/multidevice/embedder.py)."""
    r = run_module("tests.multidevice.embedder", devices=4)
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.strip() == "ok 4"


def test_stateless_start_is_the_state_after_the_warmup_text(tiny_options, tiny_params, tiny_embedder):
    """A stateless sentence starts where a stateful embedder stands after reading the warm-up text:
    in order for the forward LSTM, in reverse order for the backward one (it reads the text reversed)."""
    from elmojax.model.start_state import WARMUP

    target = ["the", "quick", "brown", "fox"]
    stateless = tiny_embedder.embed_batch([target])[0]  # [L + 1, T, 2P]: forward half, backward half
    p = tiny_options.projection_dim
    for order, half in ((WARMUP, slice(0, p)), (WARMUP[::-1], slice(p, 2 * p))):
        stateful = Embedder(tiny_options, tiny_params, stateful=True)
        for sentence in order:
            stateful.embed_batch([list(sentence)])
        carried = stateful.embed_batch([target])[0]
        np.testing.assert_allclose(carried[1:, :, half], stateless[1:, :, half], atol=1e-6)
    zero = Embedder(tiny_options, tiny_params, start_state="zero").embed_batch([target])[0]
    assert np.abs(zero[1:] - stateless[1:]).max() > 1e-4  # the start matters


@pytest.mark.parametrize("stateful", [False, True])
def test_embed_file_streams_in_chunks_with_the_same_result(tiny_options, tiny_params, tmp_path, stateful):
    """Chunked reading (constant host memory) changes nothing: neither the stateless batching nor
    the rows a stateful embedder carries from chunk to chunk."""
    from elmojax.fileio import count_lines

    lines = [" ".join([f"w{i % 5}"] * (1 + i % 6)) for i in range(19)]
    (tmp_path / "in.txt").write_text("\n".join(lines))  # no newline after the last line
    assert count_lines(tmp_path / "in.txt") == 19
    dumps = []
    for chunk_batches in (64, 1):
        embedder = Embedder(tiny_options, tiny_params, batch_size=4, stateful=stateful)
        out = tmp_path / f"out{chunk_batches}.h5"
        assert embed_file(embedder, tmp_path / "in.txt", out, batch_size=4, chunk_batches=chunk_batches) == 19
        with h5py.File(out, "r") as f:
            dumps.append({k: f[k][()] for k in f if k != "sentence_to_index"})
    assert dumps[0].keys() == dumps[1].keys() == {str(i) for i in range(19)}
    for k in dumps[0]:
        assert dumps[0][k].tobytes() == dumps[1][k].tobytes(), k
