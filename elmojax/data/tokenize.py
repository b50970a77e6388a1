"""The default tokenizer of ``prepare`` (``elmojax``): text into sentences of tokens, deterministic.

Text is split into numbers (``3.5``, ``1,000``, ``10:30``), dotted abbreviations (``U.S.``,
``e.g.``), words with inner apostrophes or hyphens (``don't``, ``e-mail``; letters, digits, ``_``,
combining marks, and ZWJ/ZWNJ between them), runs of sentence terminals, and any other single
non-space character. Inside a word, each run of a script written without spaces (Han, Hiragana,
Katakana, Thai, Lao, Khmer, Myanmar) is cut into words by ICU's dictionary-based word break
(``我用iPhone`` -> ``我 用 iPhone``); other scripts are left as they were.

A sentence ends at a run of terminals (Unicode's ``Sentence_Terminal`` property, e.g. ``. ! ?
。 ！ ？ । ؟ ።``, and ``…``) followed by whitespace or the end of the text; a terminal of a script
written without spaces between sentences (``。`` ``！`` ``।`` …, every terminal but ``.!?…``
and ``．``) ends it even when the next sentence follows at once. Closing quotes and brackets right
after the terminals stay in the sentence. A ``.`` right after a known abbreviation (``Mr``,
``Dr``, ``Jan`` …) or a single letter (an initial) joins that token (``Mr.``) instead.

Format characters (Unicode category Cf: U+FEFF, U+00AD, U+2060 …) are dropped, U+200B (zero
width space) counts as a space, ZWJ and ZWNJ stay inside words.
"""

from __future__ import annotations

import functools
import re
import threading
from typing import Any

import icu

ZW_JOINERS = "\u200c\u200d"
ABBREVIATIONS = frozenset(
    "mr mrs ms dr prof sr jr st mt vs etc inc ltd corp jan feb mar apr jun jul aug sep sept oct nov dec "
    "gen gov sen rep rev hon lt col capt sgt cmdr fig dept univ approx".split()
)
#: scripts written without spaces between words, cut by ICU's dictionaries (ISO 15924 codes)
NO_SPACE_SCRIPTS = ("Hani", "Hira", "Kana", "Thai", "Laoo", "Khmr", "Mymr")
#: terminals after which a sentence ends only before whitespace (they also sit inside numbers, URLs)
_SPACED_TERMINALS = frozenset(".!?…．")


def _ranges(uset: icu.UnicodeSet) -> str:
    """A regex character-class body for an ICU set."""
    parts = []
    for i in range(uset.getRangeCount()):
        a, b = (x if isinstance(x, int) else ord(x) for x in (uset.getRangeStart(i), uset.getRangeEnd(i)))
        parts.append(re.escape(chr(a)) if a == b else f"{re.escape(chr(a))}-{re.escape(chr(b))}")
    return "".join(parts)


@functools.cache
def terminals() -> str:
    """Every sentence terminal: Unicode's ``Sentence_Terminal`` property (from ICU) and ``…``."""
    return "".join(sorted({*icu.UnicodeSet("[:Sentence_Terminal:]"), "…"}))


@functools.cache
def closers() -> frozenset[str]:
    """Closing quotes and brackets (categories Pe, Pf) and ASCII quotes."""
    return frozenset({'"', "'", *icu.UnicodeSet("[[:Pe:][:Pf:]]")})


@functools.cache
def _patterns() -> tuple[re.Pattern[str], re.Pattern[str], re.Pattern[str]]:
    """(token pattern, no-space-script run, format characters)."""
    marks = _ranges(icu.UnicodeSet("[:M:]"))  # combining marks are not all \w in Python's re
    w = f"[\\w{marks}]"
    term = re.escape(terminals())
    token = re.compile(
        r"\d+(?:[.,:]\d+)+"  # 3.5  1,000  10:30
        r"|(?:[^\W\d_]\.){2,}"  # U.S.  e.g.  a.m.
        rf"|{w}+(?:(?:['’\-]|[{ZW_JOINERS}]+){w}+)*"  # don't  e-mail  naïve  می‌خواهم
        rf"|[{term}]+"
        rf"|[^\s{ZW_JOINERS}]"
    )
    scripts = "".join(f"[:scx={s}:]" for s in NO_SPACE_SCRIPTS)
    no_space = _ranges(icu.UnicodeSet(f"[[{scripts}]&[[:L:][:M:][:N:]]]"))
    run = re.compile(f"[{no_space}]+")
    fmt = _ranges(icu.UnicodeSet(f"[[:Cf:]-[{ZW_JOINERS}]]"))
    return token, run, re.compile(f"[{fmt}]")


class _WordBreak(threading.local):
    """One ICU word-break iterator per thread (an iterator holds its text)."""

    def __init__(self) -> None:
        self.it = icu.BreakIterator.createWordInstance(icu.Locale.getRoot())


_word_break = _WordBreak()


def icu_words(run: str, it: Any = None) -> list[str]:
    """``run`` cut at ICU's word boundaries (dictionary-based for Han, Kana, Thai, Lao, Khmer,
    Myanmar), or at the boundaries of the ICU break iterator ``it``; every piece, spaces
    included, in order."""
    it = it or _word_break.it
    it.setText(run)
    bounds = [0, *it]
    if any(ord(c) > 0xFFFF for c in run):  # ICU counts UTF-16 code units
        units = run.encode("utf-16-le")
        bounds = [len(units[: 2 * b].decode("utf-16-le")) for b in bounds]
    return [run[a:b] for a, b in zip(bounds, bounds[1:], strict=False) if b > a]


def clean(text: str) -> str:
    """``text`` without format characters (ZWJ/ZWNJ kept) and NULs; U+200B and NUL count as spaces."""
    text = text.replace("\x00", " ")
    if text.isascii():  # no format character is ASCII; most lines of most corpora are
        return text
    fmt = _patterns()[2]
    if fmt.search(text):
        text = fmt.sub(lambda m: " " if m.group() == "\u200b" else "", text)
    return text


def _segment(tok: str, run: re.Pattern[str]) -> list[str]:
    """A word cut into ICU words wherever it holds a run of a no-space script."""
    pieces, at = [], 0
    for m in run.finditer(tok):
        if m.start() > at:
            pieces.append(tok[at : m.start()])
        pieces.extend(icu_words(m.group()))
        at = m.end()
    if at < len(tok):
        pieces.append(tok[at:])
    return pieces


def split_sentences(text: str) -> list[list[str]]:
    """Tokenize ``text`` and split it into sentences; returns one token list per non-empty sentence."""
    token, run, _ = _patterns()
    text = clean(text)
    term, close = terminals(), closers()
    sentences: list[list[str]] = []
    current: list[str] = []
    matches = list(token.finditer(text))
    segment = not text.isascii() and run.search(text) is not None
    i = 0
    while i < len(matches):
        m = matches[i]
        tok = m.group()
        if tok[0] in term and all(c in term for c in tok):
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
            while i + 1 < len(matches) and matches[i + 1].start() == end and matches[i + 1].group() in close:
                i += 1
                current.append(matches[i].group())
                end = matches[i].end()
            if end == len(text) or text[end].isspace() or any(c not in _SPACED_TERMINALS for c in tok):
                sentences.append(current)
                current = []
            i += 1
            continue
        if segment and run.search(tok):
            current.extend(_segment(tok, run))
        else:
            current.append(tok)
        i += 1
    if current:
        sentences.append(current)
    return sentences


def sentences_from_text(text: str, *, tokenized: bool = False, lowercase: bool = False) -> list[list[str]]:
    """The sentences ``prepare``'s default tokenizer makes of one input line or text field.

    With ``tokenized`` (the ``whitespace`` tokenizer) the text is one sentence whose tokens are its
    whitespace-separated words, kept as they are (format characters dropped); otherwise it is
    tokenized and split as the module docstring describes. NUL bytes count as spaces. Returns an
    empty list for text without tokens.
    """
    if lowercase:
        text = text.lower()
    if tokenized:
        tokens = clean(text).split()
        return [tokens] if tokens else []
    return split_sentences(text)
