"""Every tokenizer ``prepare`` and ``embed --tokenize`` can use: one table from name to builder.

A tokenizer turns one text (a line, a field) into sentences of tokens (``str -> list[list[str]]``).
It is named by a string, recorded with the prepared corpus (``stats.json``, ``tokenizer.json``) so
that the embedder cuts raw text as training did:

- ``elmojax`` (the default, :mod:`elmojax.data.tokenize`): today's rules for space-separated
  scripts, ICU dictionary word break for runs of Han, Kana, Thai, Lao, Khmer and Myanmar;
- ``whitespace`` (``--tokenized``): one sentence a text, tokens split on whitespace;
- ``icu`` or ``icu:LOCALE``: ICU's word break and sentence break for the locale (root by default);
- ``fugashi`` (Japanese, MeCab + UniDic), ``jieba`` (Chinese), ``pythainlp`` (Thai, newmm),
  ``spacy:MODEL`` (any installed spaCy pipeline): extras, sentences from the ``elmojax`` rules
  (spaCy: from the pipeline);
- ``module:function``: a user's callable from text to sentences of tokens.

Every tokenizer but a user's drops format characters (U+FEFF, U+200B, …; ZWJ/ZWNJ are kept).
"""

from __future__ import annotations

import functools
import importlib
import json
import logging
from collections.abc import Callable
from pathlib import Path

from elmojax.data.tokenize import clean, icu_words, sentences_from_text, split_sentences
from elmojax.errors import ElmoError
from elmojax.fileio import atomic_write_text

Tokenizer = Callable[[str], list[list[str]]]
DEFAULT = "elmojax"
#: a token longer than this many UTF-8 bytes is cut by the character CNN at the default
#: ``max_characters_per_token`` 50 (its bytes, less the begin- and end-of-word markers)
LONG_TOKEN_BYTES = 48


def _missing(extra: str, package: str) -> ElmoError:
    return ElmoError(
        f"`tokenizer` {extra}: {package} is not installed; pip install 'elmojax[{extra}]' (or choose "
        "another tokenizer: elmojax, whitespace, icu)"
    )


def sentence_texts(text: str) -> list[str]:
    """``text`` (format characters dropped) cut into sentence strings where the ``elmojax``
    tokenizer ends its sentences (each token's characters found in order)."""
    text = clean(text)
    pieces, at = [], 0
    for tokens in split_sentences(text):
        start = at
        for ch in "".join(tokens):
            while at < len(text) and text[at] != ch:
                at += 1
            at += 1
        pieces.append(text[start:at])
    if at < len(text):
        pieces.append(text[at:])
    return [p for p in pieces if p.strip()]


def _whitespace(text: str) -> list[list[str]]:
    return sentences_from_text(text, tokenized=True)


def _by_sentence(words: Callable[[str], list[str]]) -> Tokenizer:
    """A word segmenter applied to each sentence of the ``elmojax`` sentence split."""

    def tokenize(text: str) -> list[list[str]]:
        sentences = []
        for sentence in sentence_texts(text):
            tokens = [w for w in (w.strip() for w in words(sentence)) if w]
            if tokens:
                sentences.append(tokens)
        return sentences

    return tokenize


def _icu(locale: str) -> Tokenizer:
    import icu

    loc = icu.Locale(locale) if locale else icu.Locale.getRoot()
    words_it = icu.BreakIterator.createWordInstance(loc)
    sent_it = icu.BreakIterator.createSentenceInstance(loc)

    def tokenize(text: str) -> list[list[str]]:
        sentences = []
        for sentence in icu_words(clean(text), sent_it):
            tokens = [w for w in (w.strip() for w in icu_words(sentence, words_it)) if w]
            if tokens:
                sentences.append(tokens)
        return sentences

    return tokenize


def _fugashi(arg: str) -> Tokenizer:
    try:
        import fugashi
    except ImportError:
        raise _missing("fugashi", "fugashi (with unidic-lite)") from None
    try:
        tagger = fugashi.Tagger(arg) if arg else fugashi.Tagger()
    except RuntimeError as e:
        raise ElmoError(f"`tokenizer` fugashi: MeCab cannot start ({str(e).strip().splitlines()[0]}); "
                        "pip install unidic-lite") from None  # fmt: skip
    return _by_sentence(lambda s: [w.surface for w in tagger(s)])


def _jieba(arg: str) -> Tokenizer:
    del arg
    try:
        import jieba
    except ImportError:
        raise _missing("jieba", "jieba") from None
    jieba.setLogLevel(logging.WARNING)
    return _by_sentence(lambda s: jieba.lcut(s, HMM=True))


def _pythainlp(arg: str) -> Tokenizer:
    try:
        from pythainlp.tokenize import word_tokenize
    except ImportError:
        raise _missing("pythainlp", "pythainlp") from None
    engine = arg or "newmm"
    return _by_sentence(lambda s: word_tokenize(s, engine=engine, keep_whitespace=False))


def _spacy(arg: str) -> Tokenizer:
    try:
        import spacy
    except ImportError:
        raise _missing("spacy", "spaCy") from None
    if not arg:
        raise ElmoError("`tokenizer` spacy: name the pipeline, e.g. spacy:en_core_web_sm")
    try:
        nlp = spacy.load(arg)
    except OSError:
        raise ElmoError(f"`tokenizer` spacy:{arg}: no such spaCy pipeline installed; "
                        f"install it first (python -m spacy download {arg})") from None  # fmt: skip

    def tokenize(text: str) -> list[list[str]]:
        doc = nlp(clean(text))
        spans = doc.sents if doc.has_annotation("SENT_START") else [doc]
        out = [[t.text for t in s if not t.is_space] for s in spans]
        return [s for s in out if s]

    return tokenize


#: tokenizer name -> builder of ``(argument after the colon) -> tokenizer``
TOKENIZERS: dict[str, Callable[[str], Tokenizer]] = {
    "elmojax": lambda arg: split_sentences,
    "whitespace": lambda arg: _whitespace,
    "icu": _icu,
    "fugashi": _fugashi,
    "jieba": _jieba,
    "pythainlp": _pythainlp,
    "spacy": _spacy,
}


def _user(spec: str) -> Tokenizer:
    module, _, name = spec.partition(":")
    try:
        fn = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as e:
        raise ElmoError(f"`tokenizer` {spec}: cannot import {name} from {module} ({e}); give module:function "
                        f"or one of {', '.join(TOKENIZERS)}") from None  # fmt: skip
    if not callable(fn):
        raise ElmoError(f"`tokenizer` {spec}: {name} is not callable; give a function text -> sentences "
                        "of tokens")  # fmt: skip

    def tokenize(text: str) -> list[list[str]]:
        try:
            result = fn(text)
        except ElmoError:
            raise
        except Exception as e:  # the user's code: one line naming it and the text, not a traceback
            raise ElmoError(f"`tokenizer` {spec} failed on {text[:40]!r}: {type(e).__name__}: {e}") from None
        if not isinstance(result, list) or not all(
            isinstance(s, list) and all(isinstance(t, str) for t in s) for s in result
        ):
            raise ElmoError(f"`tokenizer` {spec}: returned {type(result).__name__} for {text[:40]!r}; it "
                            "must return a list of sentences, each a list of str tokens")  # fmt: skip
        # a shard holds tokens separated by spaces: whitespace inside a token splits it
        return [tokens for s in result if (tokens := [p for t in s for p in t.split()])]

    return tokenize


@functools.cache
def get_tokenizer(spec: str | None = None) -> Tokenizer:
    """The tokenizer named ``spec`` (``NAME``, ``NAME:ARG`` or ``module:function``); an unknown
    name or a missing extra is an :class:`~elmojax.errors.ElmoError` naming it."""
    spec = spec or DEFAULT
    name, _, arg = spec.partition(":")
    if name in TOKENIZERS:
        if name in ("elmojax", "whitespace") and arg:
            raise ElmoError(f"`tokenizer` {spec}: {name} takes no argument")
        return TOKENIZERS[name](arg)
    if arg:
        return _user(spec)
    raise ElmoError(f"`tokenizer` {spec}: unknown; choose one of {', '.join(TOKENIZERS)} or module:function")


def tokenize_text(text: str, spec: str | None = None, *, lowercase: bool = False) -> list[list[str]]:
    """``text`` (lowercased first with ``lowercase``) into sentences of tokens by tokenizer ``spec``."""
    return get_tokenizer(spec)(text.lower() if lowercase else text)


#: the file beside a prepared corpus's vocabulary (and a run's, an export's) naming its tokenizer
RECORD = "tokenizer.json"


def read_record(*places: str | Path | None) -> tuple[str, bool] | None:
    """``(tokenizer, lowercase)`` from the first :data:`RECORD` found in ``places`` (directories, or
    files whose directory is searched); None where there is none."""
    for place in places:
        if place is None:
            continue
        path = Path(place)
        path = path / RECORD if path.is_dir() else path.parent / RECORD
        if path.is_file():
            try:
                record = json.loads(path.read_text(encoding="utf-8"))
                return str(record["tokenizer"]), bool(record.get("lowercase", False))
            except (ValueError, KeyError, TypeError):
                raise ElmoError(f"{path}: not a tokenizer record (a JSON object with key tokenizer); "
                                "delete it or write it again with `elmojax prepare`") from None  # fmt: skip
    return None


def copy_record(source: str | Path | None, directory: str | Path) -> None:
    """Copy the tokenizer record beside ``source`` (a file or directory) into ``directory``, if
    there is one: a run and an export keep the tokenizer their corpus was prepared with."""
    found = read_record(source)
    if found is not None:
        text = json.dumps({"tokenizer": found[0], "lowercase": found[1]}) + "\n"
        atomic_write_text(Path(directory) / RECORD, text)


def write_tokenized(
    source: str | Path, target: str | Path, spec: str, *, lowercase: bool = False, errors: str = "strict"
) -> int:
    """Write each line of raw text ``source`` as one line of its tokens (all its sentences, one
    space between tokens) to ``target``, for ``embed --tokenize``; a line without tokens is an
    error naming it. Returns the number of lines."""
    from elmojax.errors import InputTextError
    from elmojax.fileio import check_input_file, read_text_lines

    source = check_input_file(source)
    n = 0
    with open(target, "w", encoding="utf-8", newline="\n") as out:
        for line in read_text_lines(source, errors):
            tokens = [t for s in tokenize_text(line.text, spec, lowercase=lowercase) for t in s]
            if not tokens:
                raise InputTextError(f"{source}: line {line.number}: no tokens; every line must hold text")
            out.write(" ".join(tokens) + "\n")
            n += 1
    return n
