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
        description="Turn text, CSV/TSV, JSON Lines or Parquet files (text, CSV and JSON Lines also "
        "compressed: .gz, .bz2, .xz, .zst), a local TFDS dataset or a Hugging Face dataset on disk into "
        "DIR/train/shard_*.txt, DIR/heldout/shard_*.txt (one tokenized sentence a line), DIR/vocab.txt "
        "and DIR/stats.json. The format is chosen by the file's suffix.",
    )
    p.add_argument(
        "inputs",
        metavar="INPUT",
        nargs="*",
        help="UTF-8 text (one paragraph a line), .csv/.tsv, .jsonl/.json/.ndjson, .parquet or .arrow "
        "files; text, CSV and JSON Lines may end in .gz, .bz2, .xz or .zst (.zst needs the zstd extra)",
    )
    flags.flag(p, "--out", required=True, help="output directory")
    flags.flag(
        p,
        "--column",
        default=None,
        help="CSV/TSV or Parquet/Arrow column holding the text (e.g. transcript; dots reach into struct "
        "columns); any other file given with --column is read as CSV",
    )
    flags.flag(
        p, "--heldout-fraction", type=float, default=0.01, help="share of sentences held out (default 0.01)"
    )
    flags.flag(p, "--sentences-per-shard", type=int, default=100_000, help="sentences per shard file")
    flags.flag(p, "--seed", type=int, default=0, help="shuffling seed (default 0)")
    flags.flag(p, "--min-count", type=int, default=1, help="minimum count for a vocabulary token (default 1)")
    p.add_argument("--lowercase", action="store_true", help="lowercase all text")
    flags.flag(
        p,
        "--tokenizer",
        default=None,
        metavar="NAME",
        help="elmojax (default: every script, ICU word break for Chinese, Japanese, Thai, Lao, Khmer, "
        "Burmese), whitespace, icu[:LOCALE], fugashi, jieba, pythainlp, spacy:MODEL (extras) or "
        "module:function; recorded in stats.json and tokenizer.json (docs/languages.md)",
    )
    p.add_argument(
        "--tokenized",
        action="store_true",
        help="input is already one tokenized sentence a line: the same as --tokenizer whitespace",
    )
    flags.flag(
        p,
        "--workers",
        type=int,
        default=None,
        help="tokenizer processes (default: every core); the output is the same for any number",
    )
    flags.flag(
        p,
        "--tfds",
        default=None,
        metavar="NAME[:SPLIT]",
        help="read a TensorFlow Datasets dataset already on disk (needs the tfds extra)",
    )
    flags.flag(
        p,
        "--text-key",
        default=None,
        help="key holding the text: in JSON Lines records (dots reach into nested objects, e.g. "
        "meta.body), or the feature/field of the --tfds or --hf-dataset dataset",
    )
    flags.flag(
        p,
        "--tfds-data-dir",
        default=None,
        help="TFDS data directory (default: TFDS's own, ~/tensorflow_datasets)",
    )
    flags.flag(
        p,
        "--hf-dataset",
        default=None,
        metavar="PATH[:SPLIT]",
        help="read a Hugging Face dataset on disk: a folder written by save_to_disk or a local dataset "
        "folder of JSON Lines/Parquet/CSV/text files (split default train; needs the hf extra for "
        "Arrow and Parquet files; nothing is downloaded); the text is the --text-key field",
    )
    p.add_argument(
        "--errors",
        choices=["strict", "replace"],
        default="strict",
        help="invalid UTF-8: stop with the line and byte offset (strict) or replace it and go on",
    )
    flags.add_knobs(p, "prepare")  # --progress / --no-progress
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> None:
    from elmojax.data.prepare import prepare_corpus

    if not args.inputs and not args.tfds and not args.hf_dataset:
        raise ElmoError("give at least one INPUT file, a `tfds` dataset or an `hf_dataset`")
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
        hf_dataset=args.hf_dataset,
        errors=args.errors,
        progress=flags.show_progress(args),
        tokenizer=args.tokenizer,
        workers=args.workers,
    )
    print(json.dumps(stats))
