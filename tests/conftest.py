"""Shared fixtures: the bilm-tf reference model, tiny option sets, one training corpus, one tiny
export and compiled embedders.

The bilm-tf fixture (its test model and reference embeddings) ships in ``tests/fixtures/bilm-tf``,
so the parity tests run everywhere. Plain helpers live in :mod:`tests.helpers`; programs that need
simulated devices live in ``tests/multidevice`` and run through ``helpers.run_module``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import NamedTuple

import jax
import pytest

from elmojax.options import ElmoOptions, options_from_dict
from elmojax.runtime import skip_absent_tpu
from tests.helpers import FIXTURE_DIR, TRAIN_KEYS, tiny_options_dict, write_corpus

# as the command line does: libtpu (installed for compile-check) would probe for TPU chips
skip_absent_tpu()


@pytest.fixture(scope="session", autouse=True)
def compilation_cache(tmp_path_factory) -> Path:
    """One persistent compilation cache for the test session, in a temporary directory.

    The tests start many processes that compile the same tiny steps (the CLI, killed and resumed
    runs, several hosts); with one cache they compile each once, and no test writes to the user's
    own cache. Results do not depend on it: a cached executable is the one the compiler made. The
    test of the cache itself points its processes elsewhere.
    """
    path = tmp_path_factory.mktemp("jax-compilation-cache")
    os.environ["JAX_COMPILATION_CACHE_DIR"] = str(path)
    jax.config.update("jax_compilation_cache_dir", str(path))
    return path


@pytest.fixture(scope="session")
def fixture_dir() -> Path:
    return FIXTURE_DIR


@pytest.fixture(scope="session")
def fixture_sentences(fixture_dir) -> list[list[str]]:
    return json.loads((fixture_dir / "lm_embeddings_sentences.json").read_text())


@pytest.fixture(scope="session")
def tiny_options() -> ElmoOptions:
    return options_from_dict(tiny_options_dict(), source="tiny")


@pytest.fixture(scope="session")
def tiny_params(tiny_options):
    from elmojax.model.bilm import init_params

    return init_params(tiny_options, jax.random.PRNGKey(0))


@pytest.fixture(scope="session")
def tiny_embedder(tiny_options, tiny_params):
    """One stateless embedder shared by the tests so its compiled shapes are reused."""
    from elmojax.embed.embedder import Embedder

    return Embedder(tiny_options, tiny_params, batch_size=8)


class Corpus(NamedTuple):
    """The shared training corpus: shard globs, its vocabulary and the tiny training options file."""

    root: Path
    train: str  # glob of the training shards
    heldout: str  # glob of the held-out shards
    vocab: str  # vocab.txt of the training shards
    options_file: Path  # the tiny character model with TRAIN_KEYS


@pytest.fixture(scope="session")
def train_options() -> ElmoOptions:
    """The tiny character model with the tests' training keys (``helpers.TRAIN_KEYS``)."""
    return options_from_dict(tiny_options_dict(**TRAIN_KEYS), source="tiny-train")


@pytest.fixture(scope="session")
def corpus(tmp_path_factory, train_options) -> Corpus:
    """A small learnable corpus (``helpers.write_corpus``): 300 training and 40 held-out sentences."""
    root = tmp_path_factory.mktemp("corpus")
    train_glob, vocab = write_corpus(root / "train")
    heldout_glob, _ = write_corpus(root / "heldout" / "x", n_sentences=40, seed=1)
    train_options.save(root / "options.json")
    return Corpus(root, train_glob, heldout_glob, vocab, root / "options.json")


class Export(NamedTuple):
    """A model as ``elmojax export`` leaves it: ``options.json`` and the weights HDF5."""

    dir: Path
    options_file: Path
    weight_file: Path


@pytest.fixture(scope="session")
def tiny_export(tmp_path_factory, tiny_options, tiny_params) -> Export:
    """The tiny model's standard files, for the embedding command's tests."""
    from elmojax.model.weights import save_weights

    root = tmp_path_factory.mktemp("export")
    tiny_options.save(root / "options.json", for_export=True)
    save_weights(tiny_params, tiny_options, root / "w.hdf5")
    return Export(root, root / "options.json", root / "w.hdf5")
