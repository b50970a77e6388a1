"""``elmojax compile-check``: the collectives and memory read off compiled programs, the verdict and
its exit status; the real compile for a TPU topology where libtpu is installed."""

from __future__ import annotations

import importlib.util
import json

import pytest

from elmojax.cli import main
from elmojax.compile_check import collectives, hbm_bytes

HAS_LIBTPU = importlib.util.find_spec("libtpu") is not None

#: collectives as the TPU compiler prints them: layouts, a tuple result with an index comment,
#: an async pair (counted once), a fusion that only uses a collective's result
HLO = """
  %all-reduce.3 = (s32[12]{0:T(128)S(1)}, f32[96,4]{0:T(128)}, /*index=2*/bf16[8]{0}) all-reduce(%a)
  %all-gather-start.1 = (f32[16,512]{1,0}, f32[64,512]{1,0}) all-gather-start(%x), dimensions={0}
  %all-gather-done.1 = f32[64,512]{1,0} all-gather-done(%all-gather-start.1)
  %fusion.9 = f32[64,512]{1,0} fusion(%all-gather-done.1), kind=kLoop
  %reduce-scatter.2 = pred[4]{0} reduce-scatter(%y), dimensions={0}
"""


def test_collectives_are_counted_with_their_bytes():
    got = collectives(HLO)
    assert got == {
        "all-gather": {"count": 1, "bytes": (16 * 512 + 64 * 512) * 4},
        "all-reduce": {"count": 1, "bytes": 12 * 4 + 96 * 4 * 4 + 8 * 2},
        "reduce-scatter": {"count": 1, "bytes": 4},
    }


def test_chip_memory_by_device_kind():
    assert hbm_bytes("TPU v5 lite") == 16 * 2**30 and hbm_bytes("TPU v5") == 95 * 2**30
    assert hbm_bytes("TPU v4") == 32 * 2**30 and hbm_bytes("cpu") is None


@pytest.mark.skipif(HAS_LIBTPU, reason="libtpu is installed")
def test_without_libtpu_the_error_names_the_extra(corpus, capsys):
    argv = ["compile-check", "--topology", "v5e:2x2", "--options-file", str(corpus.options_file)]
    assert main([*argv, "--vocab-file", corpus.vocab]) == 2
    err = capsys.readouterr().err.strip()
    assert "needs libtpu" in err and "pip install 'elmojax[tpu]'" in err and "\n" not in err


@pytest.mark.e2e
@pytest.mark.skipif(not HAS_LIBTPU, reason="needs libtpu (pip install 'elmojax[tpu]')")
def test_tiny_config_on_a_small_topology_fits_and_a_huge_vocabulary_does_not(corpus, capsys):
    argv = ["compile-check", "--topology", "v5e:2x2", "--options-file", str(corpus.options_file), "--json"]
    assert main([*argv, "--vocab-file", corpus.vocab, "--steps", "train,eval"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["fits"] and report["chips"] == 4 and report["softmax_shards"] == 4
    assert report["hbm_bytes"] == 16 * 2**30 and 0 < report["per_chip_bytes"] < 2**30
    train, evaluate = report["steps"]
    assert train["name"] == "train" and "all-reduce" in train["collectives"]  # the gradients
    assert train["aliased_bytes"] > 0 and train["model_flops"] > 0 and train["compile_s"] > 0
    assert "all-gather" in evaluate["collectives"]  # the shard group's inputs for the full softmax
    # 2,000 million words: the softmax and its accumulator alone are 24 GB a chip
    assert main([*argv, "--vocab-size", "2000000000", "--steps", "train"]) == 3
    err = capsys.readouterr().err.strip()
    assert err.startswith("elmojax compile-check: v5e:2x2: the train step needs") and "16.0 GB HBM" not in err
    assert "17.2 GB HBM" in err and "\n" not in err
