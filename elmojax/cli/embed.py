"""``elmojax embed``: AllenNLP's ``elmo`` command's flags, one dump or one part per process."""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

from elmojax.cli import flags
from elmojax.config import EmbedConfig, Numerics
from elmojax.embed.formats import OUTPUT_FORMATS
from elmojax.errors import ElmoError


def add(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "embed",
        help="write contextual embeddings of a text file to HDF5 (as AllenNLP's `elmo` command)",
        description="Embed INPUT (one whitespace-tokenized sentence a line) into OUTPUT (HDF5): one dataset "
        "per line named by its 0-based index, plus `sentence_to_index` (JSON).",
    )
    p.add_argument("input_file", metavar="INPUT", help="text file, one tokenized sentence a line")
    p.add_argument("output_file", metavar="OUTPUT", help="HDF5 file to write (written atomically)")
    flags.flag(p, "--options-file", required=True, help="ELMo options.json")
    flags.flag(p, "--weight-file", required=True, help="ELMo weights HDF5 (bilm-tf dump_weights layout)")
    flags.flag(p, "--vocab-file", default=None, help="vocabulary (optional for character models)")
    fmt = p.add_mutually_exclusive_group()
    for name, (help_text, _) in OUTPUT_FORMATS.items():
        fmt.add_argument(f"--{name}", dest="output_format", action="store_const", const=name, help=help_text)
    p.set_defaults(output_format="all")
    p.add_argument(
        "--tokenize",
        action="store_true",
        help="INPUT is raw text, one text a line: cut each line with the tokenizer the corpus was "
        "prepared with (tokenizer.json beside the options, weight or vocabulary file; else elmojax) "
        "and embed its tokens as one sequence",
    )
    flags.flag(
        p,
        "--tokenizer",
        default=None,
        metavar="NAME",
        help="with --tokenize: this tokenizer instead of the recorded one",
    )
    p.add_argument(
        "--stateful",
        action="store_true",
        help="carry LSTM states from batch to batch row by row, from zeros, as bilm-tf and AllenNLP do "
        "(default: stateless, each sentence embedded independently from the start state)",
    )
    flags.add_start_state(p, "stateless start of every sentence")
    p.add_argument(
        "--errors",
        choices=["strict", "replace"],
        default="strict",
        help="invalid UTF-8: stop with the line and byte offset (strict) or replace it and go on",
    )
    flags.add_knobs(p, "embed")  # --batch-size, --chunk-batches, the Numerics and process flags, --progress
    flags.add_compilation_cache(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> None:
    config = flags.config_from_args(EmbedConfig, args, "embed")
    numerics = flags.config_from_args(Numerics, args, "embed")
    if args.tokenizer and not args.tokenize:
        raise ElmoError("`tokenizer` applies to raw text: add --tokenize")
    flags.start_distributed(args)
    from elmojax.embed.embedder import Embedder

    embedder = Embedder.from_files(
        args.options_file,
        args.weight_file,
        args.vocab_file,
        batch_size=config.batch_size,
        stateful=args.stateful,
        start_state=args.start_state,
        numerics=numerics,
        tokenizer=args.tokenizer,
    )
    if args.tokenize:
        with tempfile.TemporaryDirectory(prefix="elmojax-tokenized-") as tmp:
            from elmojax.data.tokenizers import read_record, write_tokenized

            tokenized = Path(tmp) / Path(args.input_file).name
            write_tokenized(
                args.input_file,
                tokenized,
                embedder.tokenizer,
                lowercase=embedder.lowercase,
                errors=args.errors,
            )
            print(f"tokenized {args.input_file} with {embedder.tokenizer}", file=sys.stderr)
            if (
                args.tokenizer is None
                and read_record(args.options_file, args.weight_file, args.vocab_file) is None
            ):
                print(
                    "note: no tokenizer.json beside the model files: the default tokenizer was used; give "
                    "--tokenizer NAME if the corpus was prepared with another",
                    file=sys.stderr,
                )
            _embed(args, config, embedder, str(tokenized))
        return
    _embed(args, config, embedder, args.input_file)


def _embed(args: argparse.Namespace, config: EmbedConfig, embedder, input_file: str) -> None:
    from elmojax.embed.dump import embed_file
    from elmojax.embed.parts import embed_file_part, index_path

    kwargs = dict(
        output_format=args.output_format,
        batch_size=config.batch_size,
        chunk_batches=config.chunk_batches,
        errors=args.errors,
    )
    if not args.distributed:
        n = embed_file(embedder, input_file, args.output_file, progress=flags.show_progress(args), **kwargs)
        print(f"wrote embeddings of {n} sentences to {args.output_file}", file=sys.stderr)
        return
    import jax

    part, n = embed_file_part(
        embedder,
        input_file,
        args.output_file,
        process_index=jax.process_index(),
        process_count=jax.process_count(),
        progress=flags.show_progress(args) and jax.process_index() == 0,
        **kwargs,
    )
    print(f"wrote embeddings of {n} sentences to {part}", file=sys.stderr)
    if jax.process_index() == 0:
        print(f"wrote the index of all parts to {index_path(args.output_file)}", file=sys.stderr)
