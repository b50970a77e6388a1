"""Token-tagging data for probes and downstream taggers: CoNLL-U and CoNLL/BIO column files, and
span F1 as ``conlleval`` counts it.

CoNLL-U (Universal Dependencies): ten tab-separated columns a word, ``#`` comment lines, a blank line
after each sentence; multi-word token lines (ID ``3-4``) and empty nodes (ID ``5.1``) are skipped, so
the tokens are the syntactic words the tags belong to. Column files (CoNLL-2000 chunking,
CoNLL-2003 NER): whitespace-separated columns, the word first and the tag last, a blank line after
each sentence, ``-DOCSTART-`` lines ignored; tags are ``O`` or ``B-TYPE``/``I-TYPE`` (``E-``/``S-``
as conlleval reads them). Every problem is an :class:`~elmojax.errors.ElmoError` naming the file
and line.

Host-side numpy/pure Python only (no JAX), like the rest of :mod:`elmojax.data`.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from elmojax.errors import ElmoError, InputTextError

#: the CoNLL-U column (0-based) each CoNLL-U task tags
CONLLU_COLUMNS = {"upos": 3, "xpos": 4, "deprel": 7}
#: tasks read from column files and scored by span F1
SPAN_TASKS = ("ner", "chunk")
TASKS = (*CONLLU_COLUMNS, *SPAN_TASKS)

_SPAN_TAG = re.compile(r"^(O|[BIES]-\S+)$")


@dataclass
class TaggedFile:
    """A tagged file's sentences: ``tokens[i][j]`` tagged ``tags[i][j]``, found on line ``lines[i][j]``."""

    path: Path
    tokens: list[list[str]] = field(default_factory=list)
    tags: list[list[str]] = field(default_factory=list)
    lines: list[list[int]] = field(default_factory=list)

    @property
    def n_tokens(self) -> int:
        return sum(len(s) for s in self.tokens)

    def add(self, tokens: list[str], tags: list[str], lines: list[int]) -> None:
        if tokens:
            self.tokens.append(tokens)
            self.tags.append(tags)
            self.lines.append(lines)


def _lines(path: Path) -> Iterator[tuple[int, str]]:
    """``(1-based line number, line without its newline)``; a bad byte is one line naming its place."""
    if not path.is_file():
        raise InputTextError(f"{path}: no such file")
    with open(path, "rb") as f:
        for number, raw in enumerate(f, 1):
            try:
                yield number, raw.decode("utf-8").rstrip("\r\n")
            except UnicodeDecodeError as e:
                raise InputTextError(
                    f"{path}:{number}: invalid UTF-8 at byte {e.start} of the line; save the file as UTF-8"
                ) from None


def read_conllu(path: str | Path, task: str) -> TaggedFile:
    """Read a CoNLL-U file's words and the tags of ``task`` (``upos``, ``xpos`` or ``deprel``)."""
    path = Path(path)
    column = CONLLU_COLUMNS[task]
    out = TaggedFile(path)
    tokens: list[str] = []
    tags: list[str] = []
    lines: list[int] = []
    for number, line in _lines(path):
        if not line.strip():
            out.add(tokens, tags, lines)
            tokens, tags, lines = [], [], []
            continue
        if line.startswith("#"):
            continue
        cols = line.split("\t")
        if len(cols) != 10:
            raise ElmoError(
                f"{path}:{number}: expected 10 tab-separated CoNLL-U columns, found {len(cols)}; "
                "is this a CoNLL-U file? (use --task ner or chunk for CoNLL/BIO column files)"
            )
        ident = cols[0]
        if "-" in ident or "." in ident:
            continue  # multi-word token or empty node: not one of the tagged syntactic words
        if not ident.isdigit():
            raise ElmoError(f"{path}:{number}: the ID column should be a word number, found {ident!r}")
        tag = cols[column]
        if tag in ("", "_"):
            raise ElmoError(
                f"{path}:{number}: no {task} tag (column {column + 1} is {tag!r}); pick a task this "
                "treebank annotates"
            )
        tokens.append(cols[1])
        tags.append(tag)
        lines.append(number)
    out.add(tokens, tags, lines)
    return out


def read_columns(path: str | Path) -> TaggedFile:
    """Read a CoNLL/BIO column file: the first column the word, the last its ``O``/``B-``/``I-`` tag."""
    path = Path(path)
    out = TaggedFile(path)
    tokens: list[str] = []
    tags: list[str] = []
    lines: list[int] = []
    for number, line in _lines(path):
        cols = line.split()
        if not cols:
            out.add(tokens, tags, lines)
            tokens, tags, lines = [], [], []
            continue
        if cols[0] == "-DOCSTART-":
            continue
        if len(cols) < 2:
            raise ElmoError(
                f"{path}:{number}: expected a word and its tag (whitespace-separated columns), found "
                f"{line.strip()!r}"
            )
        if not _SPAN_TAG.match(cols[-1]):
            raise ElmoError(
                f"{path}:{number}: the last column should be a BIO tag (O, B-TYPE or I-TYPE), found "
                f"{cols[-1]!r}"
            )
        tokens.append(cols[0])
        tags.append(cols[-1])
        lines.append(number)
    out.add(tokens, tags, lines)
    return out


def read_tagged(path: str | Path, task: str) -> TaggedFile:
    """The sentences of ``path`` for ``task`` (``upos``, ``xpos``, ``deprel``, ``ner`` or ``chunk``);
    an empty file is an error."""
    if task not in TASKS:
        raise ElmoError(f"unknown `task` {task!r}; choose one of {', '.join(TASKS)}")
    data = read_conllu(path, task) if task in CONLLU_COLUMNS else read_columns(path)
    if not data.tokens:
        raise ElmoError(f"{path}: no tagged sentences found")
    return data


def check_known_tags(train: TaggedFile, test: TaggedFile) -> None:
    """One line naming the first tag of ``test`` that ``train`` never shows (a probe cannot predict it)."""
    known = {t for sent in train.tags for t in sent}
    for sent_tags, sent_lines in zip(test.tags, test.lines, strict=True):
        for tag, number in zip(sent_tags, sent_lines, strict=True):
            if tag not in known:
                raise ElmoError(
                    f"{test.path}:{number}: tag {tag!r} never occurs in the training file {train.path}; "
                    "train on a file that has every tag of the test file"
                )


def most_frequent_tags(train: TaggedFile, sentences: Sequence[Sequence[str]]) -> list[list[str]]:
    """The most-frequent-tag baseline: each word's commonest training tag; unseen words get the
    commonest tag overall. Ties go to the tag that is commoner overall, then the first seen."""
    overall = Counter(t for sent in train.tags for t in sent)
    rank = {tag: i for i, (tag, _) in enumerate(overall.most_common())}
    per_word: dict[str, Counter] = {}
    for toks, tags in zip(train.tokens, train.tags, strict=True):
        for tok, tag in zip(toks, tags, strict=True):
            per_word.setdefault(tok, Counter())[tag] += 1
    best = {w: min(c, key=lambda t: (-c[t], rank[t])) for w, c in per_word.items()}
    default = overall.most_common(1)[0][0]
    return [[best.get(tok, default) for tok in sent] for sent in sentences]


# -- span F1 as conlleval counts it ------------------------------------------------------------------


def _split(tag: str) -> tuple[str, str]:
    """``B-PER`` -> ``("B", "PER")``; ``O`` -> ``("O", "")``."""
    if tag == "O":
        return "O", ""
    prefix, _, kind = tag.partition("-")
    return prefix, kind


def _end_of_chunk(prev_tag: str, tag: str, prev_type: str, kind: str) -> bool:
    # conlleval.pl's endOfChunk, rule by rule
    return (
        (prev_tag, tag)
        in {("B", "B"), ("B", "O"), ("I", "B"), ("I", "O"), ("E", "E"), ("E", "I"), ("E", "O")}
        or (prev_tag not in ("O", ".") and prev_type != kind)
        or prev_tag in ("[", "]")
    )


def _start_of_chunk(prev_tag: str, tag: str, prev_type: str, kind: str) -> bool:
    # conlleval.pl's startOfChunk, rule by rule
    return (
        (prev_tag, tag)
        in {("B", "B"), ("I", "B"), ("O", "B"), ("O", "I"), ("E", "E"), ("E", "I"), ("O", "E")}
        or (tag not in ("O", ".") and prev_type != kind)
        or tag in ("[", "]")
    )


def spans(tags: Sequence[str]) -> set[tuple[int, int, str]]:
    """The chunks of one sentence as conlleval delimits them: ``(first, last, type)`` positions.

    A sentence boundary is an ``O`` on both sides, as conlleval treats the blank line.
    """
    out = set()
    prev_tag, prev_type, start = "O", "", None
    for i, full in enumerate([*tags, "O"]):
        tag, kind = _split(full)
        if start is not None and _end_of_chunk(prev_tag, tag, prev_type, kind):
            out.add((start, i - 1, prev_type))
            start = None
        if _start_of_chunk(prev_tag, tag, prev_type, kind):
            start = i
        prev_tag, prev_type = tag, kind
    return out


def span_counts(gold: Sequence[Sequence[str]], guessed: Sequence[Sequence[str]]) -> tuple[int, int, int]:
    """``(correct chunks, found guessed, found correct)`` over sentences, conlleval's three counts."""
    correct = found_guessed = found_correct = 0
    for g, p in zip(gold, guessed, strict=True):
        gs, ps = spans(g), spans(p)
        correct += len(gs & ps)
        found_guessed += len(ps)
        found_correct += len(gs)
    return correct, found_guessed, found_correct


def span_f1(gold: Sequence[Sequence[str]], guessed: Sequence[Sequence[str]]) -> float:
    """Overall FB1 of conlleval as a fraction (conlleval prints it times 100): ``2PR / (P + R)``."""
    correct, found_guessed, found_correct = span_counts(gold, guessed)
    precision = correct / found_guessed if found_guessed else 0.0
    recall = correct / found_correct if found_correct else 0.0
    return 2 * precision * recall / (precision + recall) if precision + recall else 0.0


def accuracy(gold: Sequence[Sequence[str]], guessed: Sequence[Sequence[str]]) -> float:
    """The fraction of tokens tagged right."""
    right = total = 0
    for g, p in zip(gold, guessed, strict=True):
        right += sum(a == b for a, b in zip(g, p, strict=True))
        total += len(g)
    return right / total if total else 0.0
