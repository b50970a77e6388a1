"""``elmojax compile-check``: the collectives and memory read off compiled programs, the verdict and
its exit status; the real compile for a TPU topology where libtpu is installed."""

from __future__ import annotations

import importlib.util
import json
import sys

import pytest

from elmojax.cli import cli_message, main
from elmojax.compile_check import (
    CompileReport,
    _host_bounds_for,
    collectives,
    does_not_fit,
    hbm_bytes,
    out_of_memory,
    summary,
)
from tests.helpers import run_module

HAS_LIBTPU = importlib.util.find_spec("libtpu") is not None

#: collectives as the TPU compiler prints them: layouts, a tuple result with an index comment,
#: an async pair (counted once), a fusion that only uses a collective's result, a collective that
#: is the result of its computation (ROOT)
HLO = """
  %all-reduce.3 = (s32[12]{0:T(128)S(1)}, f32[96,4]{0:T(128)}, /*index=2*/bf16[8]{0}) all-reduce(%a)
  %all-gather-start.1 = (f32[16,512]{1,0}, f32[64,512]{1,0}) all-gather-start(%x), dimensions={0}
  %all-gather-done.1 = f32[64,512]{1,0} all-gather-done(%all-gather-start.1)
  %fusion.9 = f32[64,512]{1,0} fusion(%all-gather-done.1), kind=kLoop
  %reduce-scatter.2 = pred[4]{0} reduce-scatter(%y), dimensions={0}
  ROOT %all-to-all.7 = bf16[2,64]{1,0} all-to-all(%z), dimensions={0}
"""


def test_collectives_are_counted_with_their_bytes():
    got = collectives(HLO)
    assert got == {
        "all-gather": {"count": 1, "bytes": (16 * 512 + 64 * 512) * 4},
        "all-reduce": {"count": 1, "bytes": 12 * 4 + 96 * 4 * 4 + 8 * 2},
        "all-to-all": {"count": 1, "bytes": 2 * 64 * 2},
        "reduce-scatter": {"count": 1, "bytes": 4},
    }


def test_chip_memory_by_device_kind():
    assert hbm_bytes("TPU v5 lite") == 16 * 2**30 and hbm_bytes("TPU v5") == 95 * 2**30
    assert hbm_bytes("TPU v4") == 32 * 2**30 and hbm_bytes("cpu") is None


def test_a_step_xla_refuses_for_memory_is_reported_with_its_bytes():
    """What libtpu says for ``original`` with 4M words and the softmax on every chip (17.2 GB of
    state a chip): the step does not fit, with XLA's count in the line and the table."""
    message = (
        "RESOURCE_EXHAUSTED: Ran out of memory on HBM, the total memory required for HLO temporaries "
        "(17.93G) exceeds available HBM (15.75G)."
    )
    step = out_of_memory("train", message, state_bytes=17_160_000_000, compile_s=12.9)
    assert not step.placed and step.temporary_bytes == int(17.93 * 2**30)
    assert step.per_chip_bytes == int(17.93 * 2**30) and step.state_bytes == 17_160_000_000
    kw = dict(topology="v5e:4x4", chips=16, device_kind="TPU v5 lite", hbm_bytes=16 * 2**30)
    kw.update(softmax_shards=1, batch_size=128, n_vocab=4_000_000, compute_dtype="bfloat16")
    report = CompileReport(**kw, steps=[step], fits=False, per_chip_bytes=step.per_chip_bytes, compile_s=13.0)
    line = does_not_fit(report)
    assert line.startswith("v5e:4x4: the train step needs 19.25 GB per chip by XLA's count, which it")
    assert "(the state alone is 17.16 GB)" in line and "17.2 GB HBM" in line and "\n" not in line
    assert line.endswith(
        "use the softmax in more shards (`softmax_shards`, up to 16), more chips or a smaller `batch_size`"
    )
    assert "--softmax-shards, up to 16" in cli_message(line)
    assert "| train | 19.25 GB (XLA could not place it) | 17.16 GB |" in summary(report)
    assert "does NOT fit" in summary(report)
    # a message without a size: at least the state
    assert out_of_memory("eval", "RESOURCE_EXHAUSTED: out of memory", 5, 1.0).per_chip_bytes == 5


def test_without_libtpu_the_error_names_the_extra(corpus, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "libtpu", None)  # `import libtpu` fails, installed or not
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


def test_a_topology_smaller_than_a_host_gets_its_own_host_bounds():
    """libtpu's refusal of ``v5e:1x1`` names its default chips a host; the retry cuts them to size."""
    refused = (
        'INVALID_ARGUMENT: Topology layout "v5e:1x1" is not divisible by the given (or default) '
        'chips_per_host_bounds "2x2x1"'
    )
    assert _host_bounds_for("v5e:1x1", refused) == [1, 1, 1]
    assert _host_bounds_for("v6e:1x2", refused.replace("1x1", "1x2")) == [1, 2, 1]
    assert _host_bounds_for("v4:1x1x1", refused.replace("v5e:1x1", "v4:1x1x1")) == [1, 1, 1]
    assert _host_bounds_for("v5e:2x2", refused) is None  # the same bounds again: nothing to retry
    assert _host_bounds_for("v5e:1x1", "INVALID_ARGUMENT: unknown topology") is None


@pytest.mark.skipif(not HAS_LIBTPU, reason="needs libtpu (pip install 'elmojax[tpu]')")
def test_one_chip_topologies_compile_and_stderr_is_only_the_answer(corpus):
    """``v5e:1x1`` and ``v6e:1x1`` (one-chip TPU VMs) compile here, and nothing of libtpu's start-up
    (host bounds, worker hostnames, a Source Location Trace) reaches stderr: a configuration that
    fits writes nothing there, one that does not writes its one line."""
    argv = ["elmojax", "compile-check", "--options-file", corpus.options_file, "--steps", "init,eval"]
    r = run_module(*argv, "--topology", "v5e:1x1", "--vocab-file", corpus.vocab, "--json")
    assert r.returncode == 0 and r.stderr == "", r.stderr[-3000:]
    report = json.loads(r.stdout)
    assert report["fits"] and report["chips"] == 1 and report["device_kind"] == "TPU v5 lite"
    assert [s["name"] for s in report["steps"]] == ["init", "eval"]
    assert report["init"] == report["steps"][0] and report["eval"] == report["steps"][1]
    assert 0 < report["init"]["per_chip_bytes"] < 2**20 and report["init"]["placed"]
    # 2,000 million words: the init alone needs 112 GB a chip (W, b and their accumulators)
    r = run_module(*argv, "--topology", "v6e:1x1", "--vocab-size", "2000000000", "--steps", "init")
    assert r.returncode == 3, r.stderr[-3000:]
    assert "| init | " in r.stdout and "does NOT fit" in r.stdout
    lines = r.stderr.splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith("elmojax compile-check: v6e:1x1: the init step needs")
    assert "TPU v6 lite chip has 34.4 GB HBM" in lines[0]
