"""``elmojax prepare``: a corpus into shards, a vocabulary and statistics."""

from __future__ import annotations

import argparse
import json

from elmojax.cli import flags
from elmojax.errors import ElmoError


def add(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "prepare",
        help="tokenize, shuffle and shard a corpus; write the vocabulary",
        description="Turn raw text, a CSV/TSV column or a local TFDS dataset into DIR/train/shard_*.txt, "
        "DIR/heldout/shard_*.txt (one tokenized sentence a line), DIR/vocab.txt and DIR/stats.json.",
    )
    p.add_argument("inputs", metavar="INPUT", nargs="*", help="text (.txt) or CSV/TSV files, UTF-8")
    flags.flag(p, "--out", required=True, help="output directory")
    flags.flag(p, "--column", default=None, help="CSV/TSV column holding the text (e.g. transcript)")
    flags.flag(
        p, "--heldout-fraction", type=float, default=0.01, help="share of sentences held out (default 0.01)"
    )
    flags.flag(p, "--sentences-per-shard", type=int, default=100_000, help="sentences per shard file")
    flags.flag(p, "--seed", type=int, default=0, help="shuffling seed (default 0)")
    flags.flag(p, "--min-count", type=int, default=1, help="minimum count for a vocabulary token (default 1)")
    p.add_argument("--lowercase", action="store_true", help="lowercase all text")
    p.add_argument(
        "--tokenized",
        action="store_true",
        help="input is already one tokenized sentence a line: split on whitespace only",
    )
    flags.flag(
        p,
        "--tfds",
        default=None,
        metavar="NAME[:SPLIT]",
        help="read a TensorFlow Datasets dataset already on disk (needs the tfds extra)",
    )
    flags.flag(p, "--text-key", default=None, help="feature holding the text in the TFDS dataset")
    flags.flag(
        p,
        "--tfds-data-dir",
        default=None,
        help="TFDS data directory (default: TFDS's own, ~/tensorflow_datasets)",
    )
    p.add_argument(
        "--errors",
        choices=["strict", "replace"],
        default="strict",
        help="invalid UTF-8: stop with the line and byte offset (strict) or replace it and go on",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> None:
    from elmojax.data.prepare import prepare_corpus

    if not args.inputs and not args.tfds:
        raise ElmoError("give at least one INPUT file or a `tfds` dataset")
    stats = prepare_corpus(
        args.inputs,
        args.out,
        column=args.column,
        heldout_fraction=args.heldout_fraction,
        sentences_per_shard=args.sentences_per_shard,
        seed=args.seed,
        min_count=args.min_count,
        lowercase=args.lowercase,
        tokenized=args.tokenized,
        tfds=args.tfds,
        text_key=args.text_key,
        tfds_data_dir=args.tfds_data_dir,
        errors=args.errors,
        progress=not args.no_progress,
    )
    print(json.dumps(stats))
