"""``elmojax probe``: linear probes of every biLM layer on a tagging task; a table or one JSON object."""

from __future__ import annotations

import argparse
import json
import sys

from elmojax.cli import flags
from elmojax.config import EmbedConfig, Numerics
from elmojax.data.conll import TASKS
from elmojax.errors import ElmoError


def add(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "probe",
        help="how much of a tagging task each layer holds: linear probes per layer, their mean and a mix",
        description="Train a softmax-regression probe on --train for each biLM layer, the mean of the layers "
        "and a learned scalar mix, and score it on --test (accuracy; span F1 as conlleval counts it for ner "
        "and chunk). Baselines: the most frequent tag of each word, and with --control the same options "
        "with random weights. Features are computed once and cached in --cache-dir.",
    )
    flags.flag(p, "--options-file", required=True, help="ELMo options.json")
    flags.flag(p, "--weight-file", required=True, help="ELMo weights HDF5 (bilm-tf dump_weights layout)")
    flags.flag(p, "--vocab-file", default=None, help="vocabulary (optional for character models)")
    p.add_argument("--train", required=True, help="tagged file the probes are trained on")
    p.add_argument("--test", required=True, help="tagged file the probes are scored on")
    p.add_argument(
        "--task",
        required=True,
        choices=TASKS,
        help="upos, xpos, deprel: a CoNLL-U column; ner, chunk: the last column of a BIO file (span F1)",
    )
    p.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    p.add_argument(
        "--control", action="store_true", help="also probe the same options with random weights (a baseline)"
    )
    flags.flag(
        p,
        "--cache-dir",
        default=None,
        help="where features are cached (default $XDG_CACHE_HOME/elmojax/probe or ~/.cache/elmojax/probe)",
    )
    p.add_argument(
        "--plot", default=None, metavar="PNG", help="also draw the scores per layer (needs matplotlib)"
    )
    p.add_argument(
        "--seed", type=int, default=0, help="seed of the probes and of --control's weights (default 0)"
    )
    p.add_argument("--l2", type=float, default=1e-4, help="L2 penalty on the probe's weights (default 1e-4)")
    p.add_argument("--steps", type=int, default=300, help="optimizer steps per probe (default 300)")
    flags.add_start_state(p, "stateless start of every sentence")
    flags.add_knobs(p, "probe")  # --batch-size, the Numerics flags, --progress
    flags.add_compilation_cache(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> None:
    config = flags.config_from_args(EmbedConfig, args, "probe")
    numerics = flags.config_from_args(Numerics, args, "probe")
    if args.steps < 1:
        raise ElmoError(f"`steps` must be >= 1, found {args.steps}")
    if args.l2 < 0:
        raise ElmoError(f"`l2` must be >= 0, found {args.l2}")
    if args.plot:
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            raise ElmoError("--plot needs matplotlib: pip install 'elmojax[plot]'") from None
    from elmojax.probe import format_table, plot, run_probe

    result = run_probe(
        args.options_file,
        args.weight_file,
        args.train,
        args.test,
        args.task,
        vocab_file=args.vocab_file,
        cache_dir=args.cache_dir,
        control=args.control,
        batch_size=config.batch_size,
        start_state=args.start_state,
        seed=args.seed,
        l2=args.l2,
        steps=args.steps,
        progress=flags.show_progress(args),
        embedder_kwargs={"numerics": numerics},
    )
    print(json.dumps(result) if args.json else format_table(result))
    if args.plot:
        plot(result, args.plot)
        print(f"wrote the plot to {args.plot}", file=sys.stderr)
