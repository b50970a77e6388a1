"""Helpers shared by the tests: paths, tiny option sets, a small learnable corpus."""

from __future__ import annotations

from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
FIXTURE_DIR = ROOT / "tests" / "fixtures" / "bilm-tf"


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


TRAIN_KEYS = {
    "batch_size": 4,
    "unroll_steps": 6,
    "n_negative_samples_batch": 12,
    "dropout": 0.1,
    "n_epochs": 1,
}


def write_corpus(directory, n_sentences=300, seed=0):
    """A corpus with learnable structure: subject-verb-object sentences from small word lists."""
    rng = np.random.default_rng(seed)
    subjects = ["the cat", "a dog", "my friend", "the teacher", "our neighbour"]
    verbs = ["sees", "likes", "finds", "helps"]
    objects = ["the ball", "a book", "the garden", "some bread", "the river"]
    directory.mkdir(parents=True, exist_ok=True)
    lines = [
        f"{rng.choice(subjects)} {rng.choice(verbs)} {rng.choice(objects)} ." for _ in range(n_sentences)
    ]
    half = n_sentences // 2
    (directory / "shard_0.txt").write_text("\n".join(lines[:half]) + "\n")
    (directory / "shard_1.txt").write_text("\n".join(lines[half:]) + "\n")
    counts: dict[str, int] = {}
    for line in lines:
        for tok in line.split():
            counts[tok] = counts.get(tok, 0) + 1
    vocab = ["<S>", "</S>", "<UNK>"] + sorted(counts, key=lambda t: (-counts[t], t))
    (directory.parent / "vocab.txt").write_text("\n".join(vocab) + "\n")
    return str(directory / "shard_*.txt"), str(directory.parent / "vocab.txt")


def train_argv(options_file, train_glob: str, vocab: str, save_dir, *extra: str) -> list[str]:
    """``elmojax train`` arguments of a test run (no progress bar), ``extra`` flags appended."""
    return [
        "train",
        "--options-file",
        str(options_file),
        "--train-prefix",
        train_glob,
        "--vocab-file",
        vocab,
        "--save-dir",
        str(save_dir),
        "--no-progress",
        *extra,
    ]


def embed_argv(input_file, output_file, export, *extra: str) -> list[str]:
    """``elmojax embed`` arguments for a test export (see the ``tiny_export`` fixture), no progress bar."""
    return [
        "embed",
        str(input_file),
        str(output_file),
        "--options-file",
        str(export.options_file),
        "--weight-file",
        str(export.weight_file),
        "--no-progress",
        *extra,
    ]


def run_module(module: str, *args: str, devices: int | None = None, timeout: float = 600):
    """Run ``python -m module args`` from the repository root (a test program in ``tests/multidevice``,
    or the CLI); ``devices`` simulates that many CPU devices. Returns the completed process."""
    import os
    import subprocess
    import sys

    env = dict(os.environ)
    if devices is not None:
        env.update(XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}", JAX_PLATFORMS="cpu")
    return subprocess.run(
        [sys.executable, "-m", module, *map(str, args)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=env,
        timeout=timeout,
    )
