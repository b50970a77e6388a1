"""``elmojax evaluate``: bilm-tf's ``run_test.py`` flags; one JSON object of perplexities."""

from __future__ import annotations

import argparse
import json
import sys

from elmojax.cli import flags
from elmojax.config import Numerics


def add(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "evaluate",
        help="held-out perplexity of a run (full softmax, every token counted)",
        description="Print one JSON object with perplexity (exp of the mean of both directions' "
        "cross-entropies, as bilm-tf reports it), forward_perplexity, backward_perplexity and n_tokens.",
    )
    flags.flag(p, "--save-dir", required=True, help="training run directory")
    flags.flag(p, "--test-prefix", required=True, help="glob of held-out files")
    flags.flag(p, "--vocab-file", default=None, help="vocabulary (default: the run's own)")
    flags.flag(
        p, "--batch-size", type=int, default=None, help="rows per batch (default: the run's batch_size)"
    )
    p.add_argument(
        "--per-sentence",
        action="store_true",
        help="also score every sentence on its own from the start state, as stateless embedding sees it",
    )
    flags.add_start_state(p, "where rows and sentences start")
    flags.add_knobs(p, "evaluate")  # --softmax-shards, the Numerics and process flags, --progress
    flags.add_compilation_cache(p)
    p.set_defaults(func=run)


#: forward and backward perplexities of a sound model agree closely (see ``docs/start-state.md``
#: and ``docs/evaluating.md``); beyond this ratio ``evaluate`` warns
DIRECTION_MARGIN = 1.25


def run(args: argparse.Namespace) -> None:
    numerics = flags.config_from_args(Numerics, args, "evaluate")
    flags.start_distributed(args)
    import jax

    from elmojax.evaluate import evaluate

    result = evaluate(
        args.save_dir,
        args.test_prefix,
        vocab_file=args.vocab_file,
        batch_size=args.batch_size,
        per_sentence=args.per_sentence,
        start=args.start_state,
        numerics=numerics,
        softmax_shards=args.softmax_shards,
        progress=flags.show_progress(args),
    )
    if jax.process_index() != 0:  # every process holds the same figures: one prints them
        return
    print(json.dumps(result))
    for name, r in (("", result), ("per-sentence ", result.get("per_sentence"))):
        if r is None:
            continue
        fwd, bwd = r["forward_perplexity"], r["backward_perplexity"]
        if max(fwd, bwd) > DIRECTION_MARGIN * min(fwd, bwd):
            print(
                f"elmojax evaluate: warning: {name}forward perplexity {fwd:.1f} and backward {bwd:.1f} "
                f"differ by more than {DIRECTION_MARGIN - 1:.0%}; a sound model scores held-out text about "
                "equally both ways: train longer, or compare --start-state warm/zero and --per-sentence",
                file=sys.stderr,
            )
