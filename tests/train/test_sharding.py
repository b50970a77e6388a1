"""The softmax split over devices (8 simulated ones, in tests/multidevice/sharded_softmax.py):
equal to the replicated step, no collective of the vocabulary's size, resumed on other device
counts; and the refusals of the command line."""

from __future__ import annotations

import pytest

from elmojax.cli import cli_message
from elmojax.errors import ElmoError
from elmojax.parallel import mesh_of, vocab_rows
from tests.helpers import run_module


def sharded(check: str, tmp_path) -> str:
    r = run_module("tests.multidevice.sharded_softmax", check, tmp_path, devices=8)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    return r.stdout


@pytest.mark.multidevice
def test_state_is_born_in_its_shardings(tmp_path):
    """8 devices, 40,003 words: every array of a fresh state is created in its sharding, equal to
    the unsharded init's values (exactly), and the compiled init's outputs per device are its shards."""
    r = run_module("tests.multidevice.sharded_init", "quick", tmp_path, devices=8)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "values char shards=8 init_from=True" in r.stdout and "values ok" in r.stdout
    assert "memory ok" in r.stdout


@pytest.mark.e2e
def test_state_is_born_in_its_shardings_for_every_layout(tmp_path):
    """Character and word-level models, 8 and 2 x 4 shards, random and ``--init-from`` weights."""
    r = run_module("tests.multidevice.sharded_init", "values", tmp_path, devices=8)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert r.stdout.count("values ") == 9 and "values word shards=4 init_from=True" in r.stdout


@pytest.mark.multidevice
def test_no_collective_moves_a_vocabulary_sized_array(tmp_path):
    out = sharded("collectives", tmp_path)
    assert out.count("largest collective dimension") == 4 and "collectives ok" in out


@pytest.mark.e2e
def test_sharded_steps_equal_the_replicated_one(tmp_path):
    out = sharded("equality", tmp_path)
    assert "char sparse=True shards=8" in out and "word sparse=True shards=4" in out and "equality ok" in out


@pytest.mark.e2e
def test_resume_on_another_number_of_devices(tmp_path):
    out = sharded("resume", tmp_path)
    assert "resumed 8x2 -> 4x4 -> 1x16" in out and "resume ok" in out


def test_vocabulary_rows_pad_to_the_shards():
    import jax

    mesh = mesh_of(jax.devices()[:1], 1)
    assert vocab_rows(793471, mesh) == 793471 and vocab_rows(7, None) == 7
    with pytest.raises(ElmoError, match=r"`softmax_shards` 3 must divide the number of devices \(1\)"):
        mesh_of(jax.devices()[:1], 3)
    # the command line names its flag
    error = ElmoError("`softmax_shards` 3 must divide the number of devices (8); use one of 1, 2, 4, 8")
    assert cli_message(error).startswith("--softmax-shards 3 must divide")
