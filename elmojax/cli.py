"""The ``elmojax`` command line: argument parsing only; every command calls one public function.

Flags mirror what ELMo users already type: bilm-tf's scripts for ``train``/``evaluate``/``export``
(``--save-dir``, ``--vocab-file``, ``--train-prefix``, ``--test-prefix``, ``--outfile``; the
underscore spellings work too) and AllenNLP's ``elmo`` command for ``embed``.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from elmojax.errors import ElmoError


def _flag(parser: argparse.ArgumentParser, name: str, *aliases: str, **kwargs) -> None:
    """Add ``--foo-bar`` together with its bilm-tf spelling ``--foo_bar``."""
    names = [name, *aliases]
    underscored = name.replace("-", "_")
    if name.startswith("--") and underscored[2:] != name[2:]:
        names.append("--" + underscored[2:])
    parser.add_argument(*names, **kwargs)


def _add_embed(sub) -> None:
    p = sub.add_parser(
        "embed",
        help="write contextual embeddings of a text file to HDF5 (as AllenNLP's `elmo` command)",
        description="Embed INPUT (one whitespace-tokenized sentence a line) into OUTPUT (HDF5): one dataset "
        "per line named by its 0-based index, plus `sentence_to_index` (JSON).",
    )
    p.add_argument("input_file", metavar="INPUT", help="text file, one tokenized sentence a line")
    p.add_argument("output_file", metavar="OUTPUT", help="HDF5 file to write (written atomically)")
    _flag(p, "--options-file", required=True, help="ELMo options.json")
    _flag(p, "--weight-file", required=True, help="ELMo weights HDF5 (bilm-tf dump_weights layout)")
    _flag(p, "--vocab-file", default=None, help="vocabulary (optional for character models)")
    fmt = p.add_mutually_exclusive_group()
    fmt.add_argument(
        "--all",
        dest="output_format",
        action="store_const",
        const="all",
        help="all layers, [n_layers + 1, n_tokens, 2P] per sentence (default)",
    )
    fmt.add_argument(
        "--top",
        dest="output_format",
        action="store_const",
        const="top",
        help="top layer only, [n_tokens, 2P]",
    )
    fmt.add_argument(
        "--average",
        dest="output_format",
        action="store_const",
        const="average",
        help="average of the layers, [n_tokens, 2P]",
    )
    p.set_defaults(output_format="all")
    _flag(p, "--batch-size", type=int, default=64, help="sentences per batch (default 64)")
    p.add_argument(
        "--stateful",
        action="store_true",
        help="carry LSTM states from batch to batch row by row, as bilm-tf and AllenNLP do "
        "(default: stateless, each sentence embedded independently)",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=_run_embed)


def _run_embed(args: argparse.Namespace) -> None:
    from elmojax.embed import Embedder, embed_file

    if args.batch_size < 1:
        raise ElmoError(f"--batch-size must be >= 1, found {args.batch_size}")
    embedder = Embedder.from_files(
        args.options_file,
        args.weight_file,
        args.vocab_file,
        batch_size=args.batch_size,
        stateful=args.stateful,
    )
    n = embed_file(
        embedder,
        args.input_file,
        args.output_file,
        output_format=args.output_format,
        batch_size=args.batch_size,
        progress=not args.no_progress,
    )
    print(f"wrote embeddings of {n} sentences to {args.output_file}", file=sys.stderr)


def build_parser() -> argparse.ArgumentParser:
    """The ``elmojax`` argument parser with all sub-commands."""
    parser = argparse.ArgumentParser(
        prog="elmojax",
        description="Train ELMo biLMs in JAX; contextual embeddings compatible with bilm-tf and AllenNLP.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_embed(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``elmojax`` and ``python -m elmojax``; returns the exit status."""
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except ElmoError as e:
        print(f"elmojax {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"elmojax {args.command}: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
