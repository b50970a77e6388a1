"""Shared fixtures: the bilm-tf reference model, tiny option sets and compiled embedders.

The bilm-tf fixture lives in ``../shared/reference/bilm-tf-fixture`` beside the project root. Where
it is absent the tests that need it skip, except under ``CI=true``, where that is a failure.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import jax
import pytest

from elmojax.options import ElmoOptions, options_from_dict

ROOT = Path(__file__).resolve().parents[1]
FIXTURE_DIR = ROOT.parent / "shared" / "reference" / "bilm-tf-fixture"


def tiny_options_dict(**overrides) -> dict:
    """A tiny character model: fast to compile, every feature switched on."""
    d = {
        "lstm": {
            "dim": 12,
            "projection_dim": 6,
            "n_layers": 2,
            "cell_clip": 3,
            "proj_clip": 3,
            "use_skip_connections": True,
        },
        "char_cnn": {
            "activation": "relu",
            "embedding": {"dim": 4},
            "filters": [[1, 4], [2, 4], [3, 8]],
            "n_highway": 1,
            "n_characters": 262,
            "max_characters_per_token": 50,
        },
    }
    d.update(overrides)
    return d


@pytest.fixture(scope="session")
def fixture_dir() -> Path:
    if not FIXTURE_DIR.is_dir():
        if os.environ.get("CI") == "true":
            pytest.fail(f"bilm-tf fixture missing at {FIXTURE_DIR} (required under CI=true)")
        pytest.skip(f"bilm-tf fixture not found at {FIXTURE_DIR}")
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
