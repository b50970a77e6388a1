"""``elmojax compile-check``: compile the real steps for a TPU topology here, and say whether they fit."""

from __future__ import annotations

import argparse
import json
import os
import sys

from elmojax.cli import flags
from elmojax.config import Numerics
from elmojax.errors import ElmoError

#: the exit status of a configuration that does not fit (2 is bad input)
DOES_NOT_FIT = 3


def add(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "compile-check",
        help="compile the init, train, evaluation and embedding programs for a TPU topology (no TPU needed) "
        "and report per-chip memory, collectives and FLOPs",
        description="Compile the programs exactly as `train` (its init and step), `evaluate` and `embed` "
        "run them for a TPU topology (e.g. v5e:4x4, or v5e:1x1 for one chip) on this machine, with "
        "libtpu installed (pip install 'elmojax[tpu]'), "
        "and report what each chip needs. Exits 0 when every program fits the chip's memory, 3 when not.",
    )
    flags.flag(
        p,
        "--topology",
        required=True,
        help="TPU topology, e.g. v5e:1x1, v5e:2x2, v5e:4x4, v4:2x2x2, v5p:2x2x2, v6e:1x1",
    )
    flags.flag(p, "--options-file", required=True, help="options.json with the model and training keys")
    vocab = p.add_mutually_exclusive_group(required=True)
    flags.flag(vocab, "--vocab-file", default=None, help="the vocabulary the run would train with")
    flags.flag(vocab, "--vocab-size", type=int, default=None, help="or just its size, in words")
    flags.flag(
        p, "--batch-size", type=int, default=None, help="rows per chip (default: the options' batch_size)"
    )
    flags.add_knobs(p, "compile-check")  # --softmax-shards and the Numerics flags
    flags.flag(
        p,
        "--steps",
        default="init,train,eval,embed",
        help="which programs to compile (default init,train,eval,embed)",
    )
    p.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    numerics = flags.config_from_args(Numerics, args, "compile-check")
    # compiling for TPUs needs no TPU: JAX itself runs on the CPU here, and libtpu is only a
    # compiler, so several checks may load it at once (it locks a TPU for one process otherwise)
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
    from elmojax.compile_check import check, does_not_fit, summary
    from elmojax.data.vocab import Vocabulary
    from elmojax.train.loop import options_with_overrides

    options = options_with_overrides(args.options_file, batch_size=args.batch_size)
    n_vocab = len(Vocabulary.from_file(args.vocab_file)) if args.vocab_file else args.vocab_size
    if n_vocab is None or n_vocab < 2:
        raise ElmoError(f"`vocab_size` must be at least 2, found {n_vocab}")
    steps = tuple(s.strip() for s in args.steps.split(",") if s.strip())
    report = check(
        options,
        n_vocab,
        topology=args.topology,
        batch_size=options.training.batch_size,
        numerics=numerics,
        softmax_shards=args.softmax_shards,
        steps=steps,
    )
    print(json.dumps(report.to_dict()) if args.json else summary(report))
    if report.fits:
        return 0
    print(f"elmojax compile-check: {flags.cli_message(does_not_fit(report))}", file=sys.stderr)
    return DOES_NOT_FIT
