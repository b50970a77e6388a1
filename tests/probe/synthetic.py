"""A synthetic tagging task whose tags depend on the context, and a tiny biLM trained on its text.

Sentences are ``DET ADJ* NOUN VERB DET ADJ* NOUN .`` with the same determiners, adjectives and
nouns in both noun phrases; a word is tagged by its role, ``S`` (in the subject) or ``O`` (in the
object), the verb ``V`` and the full stop ``P``. A word alone (layer 0) cannot tell subject from
object; whether a verb came before it can, and a language model has to know it to predict what
follows a noun (a verb or the full stop).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

DETS = ["the", "a", "my", "one"]
ADJS = ["big", "red", "old", "small", "green"]
NOUNS = ["cat", "dog", "ball", "book", "tree", "river", "car"]
VERBS = ["sees", "likes", "finds", "helps", "takes"]


def sentences(n: int, seed: int) -> list[tuple[list[str], list[str]]]:
    """``n`` sentences as (words, role tags)."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        words, tags = [], []
        for role in ("S", "O"):
            phrase = [rng.choice(DETS), *rng.choice(ADJS, size=rng.integers(0, 3)), rng.choice(NOUNS)]
            words += [str(w) for w in phrase]
            tags += [role] * len(phrase)
            if role == "S":
                words.append(str(rng.choice(VERBS)))
                tags.append("V")
        out.append((words + ["."], tags + ["P"]))
    return out


def write_text(directory: Path, n: int, seed: int) -> tuple[str, str]:
    """The sentences' text as training shards and a vocabulary: ``(shard glob, vocab file)``."""
    directory.mkdir(parents=True, exist_ok=True)
    sents = sentences(n, seed)
    (directory / "shard_0.txt").write_text("".join(" ".join(w) + "\n" for w, _ in sents))
    counts: dict[str, int] = {}
    for w, _ in sents:
        for tok in w:
            counts[tok] = counts.get(tok, 0) + 1
    vocab = ["<S>", "</S>", "<UNK>", *sorted(counts, key=lambda t: (-counts[t], t))]
    (directory / "vocab.txt").write_text("\n".join(vocab) + "\n")
    return str(directory / "shard_*.txt"), str(directory / "vocab.txt")


def write_conllu(path: Path, n: int, seed: int) -> Path:
    """The sentences as CoNLL-U, the role in the UPOS column."""
    blocks = []
    for words, tags in sentences(n, seed):
        rows = [
            f"{i}\t{w}\t{w}\t{t}\t_\t_\t0\tdep\t_\t_\n"
            for i, (w, t) in enumerate(zip(words, tags, strict=True), 1)
        ]
        blocks.append("".join(rows) + "\n")
    path.write_text("".join(blocks))
    return path
