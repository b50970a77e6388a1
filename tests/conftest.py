"""Shared fixtures: the bilm-tf reference model, tiny option sets and compiled embedders.

The bilm-tf fixture (its test model and reference embeddings) ships in ``tests/fixtures/bilm-tf``,
so the parity tests run everywhere. Plain helpers live in :mod:`tests.helpers`.
"""

from __future__ import annotations

import json
from pathlib import Path

import jax
import pytest

from elmojax.options import ElmoOptions, options_from_dict
from tests.helpers import FIXTURE_DIR, tiny_options_dict


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
    from elmojax.model import init_params

    return init_params(tiny_options, jax.random.PRNGKey(0))


@pytest.fixture(scope="session")
def tiny_embedder(tiny_options, tiny_params):
    """One stateless embedder shared by the tests so its compiled shapes are reused."""
    from elmojax.embed import Embedder

    return Embedder(tiny_options, tiny_params, batch_size=8)
