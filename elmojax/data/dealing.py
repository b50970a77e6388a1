"""The worker side of ``prepare``: tokenize a chunk of texts and deal its sentences into the shuffle
buckets (:mod:`elmojax.data.prepare` runs :func:`work` in spawned processes).

It imports the tokenizers and the standard library only (no numpy), so that a spawned worker is
ready in about a tenth of a second. A sentence's bucket depends on the seed, the index of its text
in the whole input and its index in the text, never on the chunking or the number of workers, so
that the shuffle is the same for any ``--workers``.
"""

from __future__ import annotations

import signal
from collections import Counter

from elmojax.data.tokenizers import get_tokenizer
from elmojax.errors import ElmoError

N_BUCKETS = 64  # fixed so that the shuffle depends only on the input and the seed
_BITS = 6  # log2(N_BUCKETS): one hash gives the buckets of ten sentences
_PER_HASH = 64 // _BITS
_MASK = (1 << 64) - 1


def _mix(x: int) -> int:
    """The splitmix64 finalizer of a 64-bit integer: every output bit depends on every input bit."""
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK
    return x ^ (x >> 31)


def seed_key(seed: int) -> int:
    """The 64-bit key of a seed that :func:`bucket_of` mixes into every hash."""
    return _mix(seed & _MASK)


def bucket_of(key: int, text_index: int, sentence_index: int) -> int:
    """The bucket (0 .. N_BUCKETS-1) of sentence ``sentence_index`` of text ``text_index``: 6-bit
    field ``sentence_index % 10`` of splitmix64(key ^ (text_index << 20 | sentence_index // 10)).
    (:func:`deal_chunk` computes the same inline.)"""
    h = _mix(key ^ (((text_index << 20) + sentence_index // _PER_HASH) & _MASK))
    return (h >> (_BITS * (sentence_index % _PER_HASH))) & (N_BUCKETS - 1)


def deal_chunk(
    start: int, texts: list[str], tokenizer: str, lowercase: bool, key: int, counter: Counter
) -> tuple[list[bytes], int, int]:
    """Tokenize one chunk (texts ``start``, ``start + 1``, ...) and deal its sentence lines into the
    buckets: (each bucket's UTF-8 lines, each ending in a newline, in text order; sentences; texts
    without tokens). Adds the lines' tokens, split on spaces as the shards will be read, to
    ``counter``. ``key`` is :func:`seed_key` of the seed."""
    tokenize = get_tokenizer(tokenizer)
    buckets: list[list[str]] = [[] for _ in range(N_BUCKETS)]
    lines: list[str] = []
    n_empty = 0
    top = N_BUCKETS - 1
    for i, text in enumerate(texts, start):
        sentences = tokenize(text.lower() if lowercase else text)
        if not sentences:
            n_empty += 1
            continue
        base = (i << 20) & _MASK
        h = 0
        for j, tokens in enumerate(sentences):
            shift = _BITS * (j % _PER_HASH)
            if shift == 0:
                h = _mix(key ^ ((base + j // _PER_HASH) & _MASK))
            line = " ".join(tokens)
            buckets[(h >> shift) & top].append(line)
            lines.append(line)
    if lines:
        counter.update(" ".join(lines).split(" "))
    parts = [("\n".join(b) + "\n").encode("utf-8") if b else b"" for b in buckets]
    return parts, len(lines), n_empty


class Failure:
    """An exception raised in a worker, sent back to be raised in the main process."""

    def __init__(self, error: Exception) -> None:
        # ours and Python's own exceptions cross processes as they are; another library's may not
        # be rebuilt on the other side (required arguments): its type and message then
        if not isinstance(error, ElmoError) and type(error).__module__ != "builtins":
            error = ElmoError(f"a tokenizer worker failed: {type(error).__name__}: {error}")
        self.error = error


def work(tasks, results, tokenizer: str, lowercase: bool, key: int) -> None:
    """A worker process: take ``(i, start, texts)`` chunks from the shared ``tasks`` queue and put
    ``(i, deal_chunk(...))`` on ``results`` until None, then put ``(None, its token counts)``; an
    error is put as a :class:`Failure`."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C stops the main process, which ends this one
    counter: Counter = Counter()
    try:
        while (task := tasks.get()) is not None:
            i, start, texts = task
            results.put((i, deal_chunk(start, texts, tokenizer, lowercase, key, counter)))
        results.put((None, counter))
    except Exception as e:
        results.put(Failure(e))
