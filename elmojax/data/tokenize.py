"""The tokenizer of ``prepare``: text into sentences of tokens, deterministic and documented.

Text is split into numbers (``3.5``, ``1,000``, ``10:30``), dotted abbreviations (``U.S.``,
``e.g.``), words with inner apostrophes or hyphens (``don't``, ``e-mail``; letters, digits, ``_``
and combining marks), runs of ``.``/``!``/``?``/``…``, and any other single non-space character. A
sentence ends at a run of ``.``/``!``/``?``/``…`` that is followed by whitespace or the end of the
text (closing quotes and brackets right after it stay in the sentence), except a ``.`` right after
a known abbreviation (``Mr``, ``Dr``, ``Jan`` …) or a single letter (an initial), which joins that
token (``Mr.``) instead.
"""

from __future__ import annotations

import functools
import re
import sys
import unicodedata

_ENDERS = frozenset(".!?…")
_CLOSERS = frozenset("\"'”’)]}»")
ABBREVIATIONS = frozenset(
    "mr mrs ms dr prof sr jr st mt vs etc inc ltd corp jan feb mar apr jun jul aug sep sept oct nov dec "
    "gen gov sen rep rev hon lt col capt sgt cmdr fig dept univ approx".split()
)


@functools.cache
def _token_pattern() -> re.Pattern[str]:
    # Combining marks (accents, Indic vowel signs) are not \w in Python's re; keep them inside words.
    marks: list[str] = []
    start = prev = None
    for cp in range(sys.maxunicode + 1):
        c = chr(cp)
        if unicodedata.category(c).startswith("M") and not c.isalnum() and c != "_":
            if prev is not None and cp == prev + 1:
                prev = cp
                continue
            if start is not None:
                marks.append(_range(start, prev))
            start = prev = cp
    if start is not None:
        marks.append(_range(start, prev))
    w = "[\\w" + "".join(marks) + "]"
    return re.compile(
        r"\d+(?:[.,:]\d+)+"  # 3.5  1,000  10:30
        r"|(?:[^\W\d_]\.){2,}"  # U.S.  e.g.  a.m.
        rf"|{w}+(?:['’\-]{w}+)*"  # don't  e-mail  naïve
        r"|[.!?…]+"
        r"|\S"
    )


def _range(a: int, b: int) -> str:
    return re.escape(chr(a)) if a == b else f"{re.escape(chr(a))}-{re.escape(chr(b))}"


def split_sentences(text: str) -> list[list[str]]:
    """Tokenize ``text`` and split it into sentences; returns one token list per non-empty sentence."""
    sentences: list[list[str]] = []
    current: list[str] = []
    matches = list(_token_pattern().finditer(text))
    i = 0
    while i < len(matches):
        m = matches[i]
        tok = m.group()
        if tok[0] in _ENDERS and all(c in _ENDERS for c in tok):
            prev = matches[i - 1] if i > 0 else None
            if (
                tok == "."
                and current
                and prev is not None
                and prev.end() == m.start()
                and (
                    current[-1].lower() in ABBREVIATIONS or (len(current[-1]) == 1 and current[-1].isalpha())
                )
            ):
                current[-1] += "."
                i += 1
                continue
            current.append(tok)
            end = m.end()
            while (
                i + 1 < len(matches) and matches[i + 1].start() == end and matches[i + 1].group() in _CLOSERS
            ):
                i += 1
                current.append(matches[i].group())
                end = matches[i].end()
            if end == len(text) or text[end].isspace():
                sentences.append(current)
                current = []
            i += 1
            continue
        current.append(tok)
        i += 1
    if current:
        sentences.append(current)
    return sentences


def sentences_from_text(text: str, *, tokenized: bool = False, lowercase: bool = False) -> list[list[str]]:
    """The sentences ``prepare`` makes of one input line or text field.

    With ``tokenized`` the text is one sentence whose tokens are its whitespace-separated words, kept
    as they are; otherwise it is tokenized and split as the module docstring describes. NUL bytes
    count as spaces. Returns an empty list for text without tokens.
    """
    text = text.replace("\x00", " ")
    if lowercase:
        text = text.lower()
    if tokenized:
        tokens = text.split()
        return [tokens] if tokens else []
    return split_sentences(text)
