"""``elmojax export``: bilm-tf's ``dump_weights`` as a command, with ``options.json`` and ``vocab.txt``."""

from __future__ import annotations

import argparse
import sys

from elmojax.cli import flags


def add(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "export",
        help="write the standard ELMo files (weights HDF5, options.json, vocab.txt) of a run",
        description="Write the latest checkpoint of --save-dir as a bilm-tf layout weights HDF5, with "
        "options.json (n_characters 262) and vocab.txt beside it.",
    )
    flags.flag(p, "--save-dir", required=True, help="training run directory")
    flags.flag(p, "--outfile", required=True, help="weights HDF5 to write")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> None:
    from elmojax.export import export_run

    out = export_run(args.save_dir, args.outfile)
    print(f"wrote {out}, {out.parent / 'options.json'} and {out.parent / 'vocab.txt'}", file=sys.stderr)
