"""Word segmentation F1 of prepare's tokenizers on Universal Dependencies treebanks.

Each sentence's raw ``# text`` line goes through a tokenizer; its tokens are scored against the
treebank's gold tokens (the surface tokens: a multiword-token line ``3-4`` counts once, with its
form, and its words are not counted again; empty nodes ``8.1`` are not tokens). Both token lists
are turned into character spans over the sentence with all whitespace removed; a predicted token
is correct when its span is exactly a gold token's span (both its ends are gold boundaries with no
gold boundary between them). Precision = correct / predicted tokens, recall = correct / gold
tokens, F1 their harmonic mean, all summed over the file (micro average). A sentence whose
predicted characters differ from the gold ones (a tokenizer that changes text) counts all its
gold tokens as missed. ``long`` is the share of predicted tokens over 50 UTF-8 bytes.

    python experiments/bench/tokenizer_f1.py FILE.conllu ... --tokenizer elmojax icu jieba \\
        [--baseline OLD/elmojax/data/tokenize.py] [--sentences N]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
from collections.abc import Callable, Iterator
from pathlib import Path


def read_conllu(path: str | Path) -> Iterator[tuple[str, list[str]]]:
    """(raw text, gold surface tokens) of every sentence of a CoNLL-U file."""
    text, tokens, skip_to = None, [], 0
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        if line.startswith("# text = "):
            text = line[len("# text = ") :]
        elif line.startswith("#"):
            continue
        elif not line.strip():
            if text is not None and tokens:
                yield text, tokens
            text, tokens, skip_to = None, [], 0
        else:
            cols = line.split("\t")
            ident = cols[0]
            if "." in ident:
                continue
            if "-" in ident:
                first, last = ident.split("-")
                tokens.append(cols[1])
                skip_to = int(last)
                continue
            if int(ident) <= skip_to:
                continue
            tokens.append(cols[1])
    if text is not None and tokens:
        yield text, tokens


def spans(tokens: list[str]) -> tuple[str, set[tuple[int, int]]]:
    """(the tokens' characters without whitespace, their spans in that string)."""
    out, at, chars = set(), 0, []
    for tok in tokens:
        t = "".join(tok.split())
        if t:
            out.add((at, at + len(t)))
            chars.append(t)
            at += len(t)
    return "".join(chars), out


def score(sentences: list[tuple[str, list[str]]], tokenize: Callable[[str], list[list[str]]]) -> dict:
    """Precision, recall, F1 and the share of tokens over 50 bytes of ``tokenize`` on ``sentences``."""
    correct = n_pred = n_gold = n_long = 0
    mismatched = 0
    for text, gold in sentences:
        pred = [t for s in tokenize(text) for t in s]
        gold_chars, gold_spans = spans(gold)
        pred_chars, pred_spans = spans(pred)
        n_gold += len(gold_spans)
        n_pred += len(pred_spans)
        n_long += sum(len(t.encode("utf-8")) > 50 for t in pred)
        if pred_chars != gold_chars:
            mismatched += 1
            continue
        correct += len(gold_spans & pred_spans)
    p = correct / max(n_pred, 1)
    r = correct / max(n_gold, 1)
    return {
        "precision": round(p, 4),
        "recall": round(r, 4),
        "f1": round(2 * p * r / max(p + r, 1e-12), 4),
        "long_share": round(n_long / max(n_pred, 1), 4),
        "sentences": len(sentences),
        "mismatched": mismatched,
    }


def _baseline(path: str) -> Callable[[str], list[list[str]]]:
    spec = importlib.util.spec_from_file_location("baseline_tokenize", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.split_sentences


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("files", nargs="+", help="CoNLL-U files")
    ap.add_argument("--tokenizer", nargs="+", default=["elmojax"], help="tokenizer names")
    ap.add_argument("--baseline", default=None, help="an older tokenize.py, scored as baseline")
    ap.add_argument("--sentences", type=int, default=None, help="first N sentences of each file")
    args = ap.parse_args()
    from elmojax.data.tokenizers import get_tokenizer

    for f in args.files:
        sentences = list(read_conllu(f))[: args.sentences]
        names = (["baseline"] if args.baseline else []) + args.tokenizer
        for name in names:
            tok = _baseline(args.baseline) if name == "baseline" else get_tokenizer(name)
            print(json.dumps({"file": Path(f).name, "tokenizer": name, **score(sentences, tok)}), flush=True)


if __name__ == "__main__":
    sys.exit(main())
